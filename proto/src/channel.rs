//! Record framing for the data channel, with caller-visible buffers.
//!
//! [`Framer`] builds outgoing bytes: frames are appended to an open record,
//! DATA payloads are read by the caller straight into the slot the framer
//! hands out (no copy), records are sealed in place when full or when the
//! batch is taken, and one batch holds several records so one `write`
//! moves up to [`BATCH_LIMIT`] bytes.
//!
//! [`Deframer`] takes incoming bytes (the caller reads into
//! [`Deframer::read_buf`]), splits off whole records, opens them in place
//! and returns each as a frozen reference-counted buffer, so DATA payloads
//! can be handed on as slices without copying.

use crate::frame::{self, Frame, StreamId, FRAME_HEADER_LEN};
use crate::record::{
    self, Opener, RecordError, Sealer, MAX_RECORD_PLAINTEXT, RECORD_HEADER_LEN, TAG_LEN,
};
use bytes::{Bytes, BytesMut};
use std::ops::Range;

/// Most bytes one taken batch holds (several records).
pub const BATCH_LIMIT: usize = 1024 * 1024;
/// Receive chunk of a new tunnel (grows while reads fill it).
pub const FIRST_CHUNK: usize = 4 * 1024;
/// Largest receive chunk.
pub const RX_CHUNK: usize = 2 * 1024 * 1024;

/// Builds sealed outgoing batches.
///
/// The buffer keeps its full length between batches (a cursor marks the
/// filled part), so handing out a data slot never zero-fills memory.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` that belong to the current batch.
    filled: usize,
    /// Start of the open record, if one is open.
    open: Option<usize>,
    /// Where the last data slot's header sits.
    slot: Option<usize>,
    sealer: Sealer,
    /// Records sealed so far (metrics).
    pub records: u64,
}

/// Size a batch buffer grows to: the batch limit plus one maximal frame,
/// record header and tag.
const BATCH_BUF: usize = BATCH_LIMIT + MAX_RECORD_PLAINTEXT + 64;

impl Framer {
    /// A framer sealing with `sealer`. Its buffer grows on first use, so an
    /// idle tunnel costs no batch memory.
    pub fn new(sealer: Sealer) -> Self {
        Framer {
            buf: Vec::new(),
            filled: 0,
            open: None,
            slot: None,
            sealer,
            records: 0,
        }
    }

    /// Bytes waiting to be taken.
    pub fn len(&self) -> usize {
        self.filled
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Bytes that can still be added before the batch is full.
    pub fn room(&self) -> usize {
        BATCH_LIMIT.saturating_sub(self.filled)
    }

    fn ensure(&mut self, need: usize) {
        let want = self.filled + need;
        if self.buf.len() < want {
            // Small batches (control frames) stay small; data doubles the
            // buffer up to its full size, so a tunnel carrying a little
            // (a request, a reply) does not hold a whole batch buffer.
            let size = if want <= 4096 {
                4096
            } else {
                (self.buf.len() * 2)
                    .max(want.next_power_of_two())
                    .min(BATCH_BUF)
                    .max(want)
            };
            self.buf.resize(size, 0);
        }
    }

    /// Frees the batch buffer when nothing waits in it (an idle tunnel):
    /// the next frame grows it again. True when it was freed.
    pub fn release(&mut self) -> bool {
        if self.filled != 0 || self.open.is_some() || self.slot.is_some() {
            return false;
        }
        self.buf = Vec::new();
        true
    }

    /// Bytes held by the batch buffer.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn open_record(&mut self, need: usize) {
        if let Some(start) = self.open {
            let plain = self.filled - start - RECORD_HEADER_LEN;
            if plain + need <= MAX_RECORD_PLAINTEXT {
                return;
            }
            self.close_record();
        }
        self.ensure(RECORD_HEADER_LEN + need + TAG_LEN);
        self.open = Some(self.filled);
        self.filled += RECORD_HEADER_LEN;
    }

    fn close_record(&mut self) {
        if let Some(start) = self.open.take() {
            self.ensure(TAG_LEN);
            self.filled += TAG_LEN;
            self.sealer.seal(&mut self.buf[start..self.filled]);
            self.records += 1;
        }
    }

    /// Appends a non-DATA frame.
    pub fn push_frame(&mut self, f: &Frame<'_>) {
        let mut tmp = Vec::new();
        frame::encode(f, &mut tmp);
        self.push_encoded(&tmp);
    }

    /// Appends already-encoded frames (as produced by [`crate::tunnel::Tunnel`]).
    pub fn push_encoded(&mut self, frames: &[u8]) {
        if frames.is_empty() {
            return;
        }
        self.open_record(frames.len());
        self.ensure(frames.len() + TAG_LEN);
        self.buf[self.filled..self.filled + frames.len()].copy_from_slice(frames);
        self.filled += frames.len();
    }

    /// Opens a DATA frame for `stream` with room for up to `max` payload
    /// bytes and returns that room. Call [`Framer::commit_data`] next.
    pub fn data_slot(&mut self, stream: StreamId, max: usize) -> &mut [u8] {
        let max = max
            .min(frame::MAX_FRAME_PAYLOAD)
            .min(MAX_RECORD_PLAINTEXT - FRAME_HEADER_LEN);
        self.open_record(FRAME_HEADER_LEN + max);
        self.ensure(FRAME_HEADER_LEN + max + TAG_LEN);
        let at = self.filled;
        frame::write_header(&mut self.buf[at..], frame::kind::DATA, stream, 0);
        self.slot = Some(at);
        &mut self.buf[at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + max]
    }

    /// Keeps `n` bytes of the last data slot (0 removes the frame).
    pub fn commit_data(&mut self, stream: StreamId, n: usize) {
        let Some(at) = self.slot.take() else { return };
        if n == 0 {
            if self.open == Some(at - RECORD_HEADER_LEN) && self.filled == at {
                // The record holds nothing: drop its header too.
                self.filled = at - RECORD_HEADER_LEN;
                self.open = None;
            }
            return;
        }
        frame::write_header(&mut self.buf[at..], frame::kind::DATA, stream, n);
        self.filled = at + FRAME_HEADER_LEN + n;
    }

    /// Seals the open record and returns the batch buffer and how many of
    /// its bytes to send. `spare` (a buffer returned from an earlier batch)
    /// takes its place, so buffers are reused without zero-filling.
    pub fn take(&mut self, spare: Vec<u8>) -> (Vec<u8>, usize) {
        self.close_record();
        let len = std::mem::take(&mut self.filled);
        (std::mem::replace(&mut self.buf, spare), len)
    }

    /// The sealer (for metrics).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }
}

/// Splits and opens incoming records.
#[derive(Debug)]
pub struct Deframer {
    buf: BytesMut,
    filled: usize,
    /// Size of the next chunk; doubles with use up to [`RX_CHUNK`].
    chunk: usize,
    opener: Opener,
}

impl Deframer {
    /// A deframer opening with `opener`.
    pub fn new(opener: Opener) -> Self {
        Deframer {
            buf: BytesMut::new(),
            filled: 0,
            chunk: FIRST_CHUNK,
            opener,
        }
    }

    /// Space to read into; call [`Deframer::advance`] with the count read.
    ///
    /// When the chunk runs out, its allocation is reclaimed if every record
    /// handed out from it has been dropped (the usual case once the data
    /// was written on), else a new chunk is allocated; the partial record
    /// at the end moves to the front either way.
    pub fn read_buf(&mut self) -> &mut [u8] {
        let min_free = (self.chunk / 4).max(1024);
        let need = match record::record_size(&self.buf[..self.filled]) {
            Ok(Some(size)) => size.max(self.filled + min_free),
            _ => self.filled + min_free,
        };
        if self.buf.len() < need {
            let size = need.max(self.chunk);
            self.buf.truncate(self.filled);
            self.buf.reserve(size - self.filled);
            self.buf.resize(size, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// Records that `n` bytes were read into [`Deframer::read_buf`].
    pub fn advance(&mut self, n: usize) {
        let offered = self.buf.len() - self.filled;
        if n == offered {
            // The read filled all the space: a busy tunnel gets big chunks,
            // an idle one stays at a few KiB.
            self.chunk = (self.chunk * 2).min(RX_CHUNK);
        }
        self.filled = (self.filled + n).min(self.buf.len());
    }

    /// Frees the receive chunk when no partial record waits in it (an
    /// idle tunnel) and starts again from the first, small chunk. Records
    /// already handed out keep their own part of the old chunk alive until
    /// they are dropped. True when it was freed.
    pub fn release(&mut self) -> bool {
        if self.filled != 0 {
            return false;
        }
        self.buf = BytesMut::new();
        self.chunk = FIRST_CHUNK;
        true
    }

    /// Bytes held by the receive chunk.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Copies bytes in (tests and fuzzing; the data plane reads in place).
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = self.read_buf();
            let n = room.len().min(data.len());
            room[..n].copy_from_slice(&data[..n]);
            self.advance(n);
            data = &data[n..];
        }
    }

    /// Bytes buffered but not yet a whole record.
    pub fn pending(&self) -> usize {
        self.filled
    }

    /// The next whole record, opened: the buffer and its plaintext range.
    pub fn next_record(&mut self) -> Result<Option<(Bytes, Range<usize>)>, RecordError> {
        let Some(size) = record::record_size(&self.buf[..self.filled])? else {
            return Ok(None);
        };
        if self.filled < size {
            return Ok(None);
        }
        let mut rec = self.buf.split_to(size);
        self.filled -= size;
        let range = self.opener.open(&mut rec)?;
        Ok(Some((rec.freeze(), range)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{keys, Side};

    fn pair() -> (Framer, Deframer) {
        let secrets: [u8; 64] = std::array::from_fn(|i| i as u8);
        let (tx, _) = keys(&secrets, Side::Host, 5);
        let (_, rx) = keys(&secrets, Side::Site, 5);
        (Framer::new(tx), Deframer::new(rx))
    }

    #[test]
    fn a_small_exchange_keeps_small_buffers_and_an_idle_tunnel_frees_them() {
        let (mut f, mut d) = pair();
        // One small DATA frame: the batch buffer grows to what one frame
        // slot needs, not to a whole batch.
        let slot = f.data_slot(1, 100);
        slot[..5].copy_from_slice(b"hello");
        f.commit_data(1, 5);
        assert!(f.capacity() < BATCH_LIMIT / 8, "{}", f.capacity());
        // Not while something waits in it.
        assert!(!f.release());
        let (batch, len) = f.take(Vec::new());
        assert!(f.release());
        assert_eq!(f.capacity(), 0);
        // Half a record waits: the deframer keeps it.
        d.push(&batch[..len - 1]);
        assert!(!d.release());
        d.push(&batch[len - 1..len]);
        let (rec, range) = d.next_record().expect("authentic").expect("a record");
        assert!(d.release());
        assert_eq!(d.capacity(), 0);
        // What was handed out is intact, and both ends work on after.
        let (fr, _) = frame::decode(&rec[..range.end], range.start).expect("frame");
        assert!(
            matches!(fr, Frame::Data { stream: 1, payload } if &rec[payload.clone()] == b"hello")
        );
        f.push_frame(&Frame::Ping(7));
        let (batch, len) = f.take(Vec::new());
        d.push(&batch[..len]);
        assert!(d.next_record().expect("authentic").is_some());
        // Bulk data still grows the buffer to a whole batch.
        while f.room() > 0 {
            let slot = f.data_slot(1, 1 << 20);
            let n = slot.len().min(f.room());
            f.commit_data(1, n);
        }
        assert!(f.capacity() >= BATCH_LIMIT, "{}", f.capacity());
    }

    #[test]
    fn batches_split_byte_by_byte() {
        let (mut f, mut d) = pair();
        let mut sent = Vec::new();
        for i in 0..40u32 {
            let slot = f.data_slot(i + 1, 100_000);
            let n = (i as usize * 7919) % slot.len();
            slot[..n].fill(i as u8);
            f.commit_data(i + 1, n);
            sent.push((i + 1, n));
            f.push_frame(&Frame::Ping(u64::from(i)));
        }
        let (batch, len) = f.take(Vec::new());
        assert!(f.records > 1, "several records in one batch");
        let mut got = Vec::new();
        for &b in &batch[..len] {
            d.push(&[b]);
            while let Some((rec, range)) = d.next_record().expect("authentic") {
                let mut at = range.start;
                while at < range.end {
                    let (fr, next) = frame::decode(&rec[..range.end], at).expect("frame");
                    if let Frame::Data { stream, payload } = fr {
                        assert!(rec[payload.clone()]
                            .iter()
                            .all(|&x| x == (stream - 1) as u8));
                        got.push((stream, payload.len()));
                    }
                    at = next;
                }
            }
        }
        assert_eq!(d.pending(), 0);
        assert_eq!(
            got,
            sent.into_iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>()
        );
    }

    #[test]
    fn empty_slot_leaves_nothing() {
        let (mut f, _) = pair();
        let _ = f.data_slot(1, 10);
        f.commit_data(1, 0);
        assert!(f.is_empty());
    }

    #[test]
    fn oversized_header_is_refused_before_allocating() {
        let (_, mut d) = pair();
        d.push(&u32::MAX.to_be_bytes());
        assert!(d.next_record().is_err());
    }
}
