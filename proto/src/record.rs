//! Data-channel records: frames sealed with AES-128-GCM.
//!
//! Wire form: `len: u32 BE | ciphertext | tag(16)` where `len` counts the
//! ciphertext and the tag and is checked against [`MAX_RECORD_LEN`] from
//! the header alone. The 4 header bytes are the AEAD's associated data.
//!
//! Keys: after the TLS handshake both ends export 64 bytes with label
//! [`EXPORTER_LABEL`] (RFC 8446 section 7.5): the first 32 are the
//! host-to-site secret, the last 32 the site-to-host secret. Each
//! direction's AES key is HKDF-Expand(secret, "revtun key"); the nonce is
//! the record counter within the current epoch (96 bits, big-endian). Every
//! `ratchet_interval` records both ends replace the secret with
//! HKDF-Expand(secret, "revtun ratchet") and restart the counter, so no
//! message is needed to rekey and old keys cannot be recomputed.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use aws_lc_rs::hkdf::{KeyType, Prk, HKDF_SHA256};
use zeroize::{Zeroize, Zeroizing};

/// TLS exporter label for the data-channel secrets.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-revtun-data-channel-v1";
/// Bytes to export: two 32-byte secrets.
pub const EXPORTER_LEN: usize = 64;
/// Record header length.
pub const RECORD_HEADER_LEN: usize = 4;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// Largest plaintext in one record.
pub const MAX_RECORD_PLAINTEXT: usize = 512 * 1024;
/// Largest `len` accepted in a record header.
pub const MAX_RECORD_LEN: usize = MAX_RECORD_PLAINTEXT + TAG_LEN;
/// Default number of records sealed under one key before ratcheting.
pub const RATCHET_INTERVAL: u64 = 1 << 20;
/// Bytes (ciphertext and tag) sealed under one key before ratcheting,
/// whatever the record count: 2^34 bytes is 2^30 AES blocks, well inside
/// RFC 8446 section 5.5's margin for AES-GCM (about 2^34.5 blocks per key
/// for a 2^-57 advantage). Both ends count the same records, so they
/// ratchet at the same one.
pub const RATCHET_BYTES: u64 = 1 << 34;

/// A record the peer should not have sent, or a key failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Header `len` above [`MAX_RECORD_LEN`] or below the tag length.
    #[error("record length {0} is out of bounds")]
    BadLength(u32),
    /// Authentication failed: corrupted, reordered, replayed or forged.
    #[error("record failed authentication")]
    Auth,
}

struct Len(usize);
impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(secret: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let prk = Prk::new_less_safe(HKDF_SHA256, secret);
    let mut out = Zeroizing::new([0u8; 32]);
    // Expanding 32 bytes from SHA-256 cannot fail (limit is 255 * 32).
    if let Ok(okm) = prk.expand(&[label], Len(32)) {
        let _ = okm.fill(&mut out[..]);
    }
    out
}

/// One direction's key schedule.
struct Direction {
    secret: Zeroizing<[u8; 32]>,
    key: LessSafeKey,
    counter: u64,
    interval: u64,
    /// Bytes processed under the current key, and the most allowed.
    bytes: u64,
    byte_limit: u64,
    /// Epochs completed (for tests and metrics).
    epoch: u64,
}

impl Direction {
    fn new(secret: Zeroizing<[u8; 32]>, interval: u64, byte_limit: u64) -> Self {
        let key = Self::key_for(&secret);
        Direction {
            secret,
            key,
            counter: 0,
            interval: interval.max(1),
            bytes: 0,
            byte_limit: byte_limit.max(1),
            epoch: 0,
        }
    }

    fn key_for(secret: &[u8; 32]) -> LessSafeKey {
        let raw = expand(secret, b"revtun key");
        // A 16-byte slice is always a valid AES-128 key.
        let unbound = UnboundKey::new(&AES_128_GCM, &raw[..16]).expect("16-byte AES-128 key");
        LessSafeKey::new(unbound)
    }

    /// The nonce for the next record of `len` bytes (ciphertext and tag),
    /// ratcheting first when the record or byte budget of the key is spent.
    fn next_nonce(&mut self, len: usize) -> Nonce {
        if self.counter == self.interval || self.bytes >= self.byte_limit {
            self.secret = expand(&self.secret, b"revtun ratchet");
            self.key = Self::key_for(&self.secret);
            self.counter = 0;
            self.bytes = 0;
            self.epoch += 1;
        }
        self.bytes += len as u64;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        Nonce::assume_unique_for_key(n)
    }
}

/// Seals outgoing records.
pub struct Sealer(Direction);
/// Opens incoming records.
pub struct Opener(Direction);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealer(epoch {}, counter {})",
            self.0.epoch, self.0.counter
        )
    }
}
impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Opener(epoch {}, counter {})",
            self.0.epoch, self.0.counter
        )
    }
}

/// Which end of the tunnel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The host (control / data plane).
    Host,
    /// The site agent.
    Site,
}

/// Builds this side's sealer and opener from the exported secrets,
/// ratcheting every `interval` records or [`RATCHET_BYTES`] bytes.
/// The caller should wipe `exported` afterwards (it is copied here into
/// buffers that are wiped on drop).
pub fn keys(exported: &[u8; EXPORTER_LEN], side: Side, interval: u64) -> (Sealer, Opener) {
    keys_with_byte_limit(exported, side, interval, RATCHET_BYTES)
}

/// [`keys`] with another byte budget per key (tests).
pub fn keys_with_byte_limit(
    exported: &[u8; EXPORTER_LEN],
    side: Side,
    interval: u64,
    byte_limit: u64,
) -> (Sealer, Opener) {
    let mut h2s = Zeroizing::new([0u8; 32]);
    let mut s2h = Zeroizing::new([0u8; 32]);
    h2s.copy_from_slice(&exported[..32]);
    s2h.copy_from_slice(&exported[32..]);
    let (tx, rx) = match side {
        Side::Host => (h2s, s2h),
        Side::Site => (s2h, h2s),
    };
    (
        Sealer(Direction::new(tx, interval, byte_limit)),
        Opener(Direction::new(rx, interval, byte_limit)),
    )
}

/// Wipes exported secrets once the keys are built.
pub fn wipe(exported: &mut [u8; EXPORTER_LEN]) {
    exported.zeroize();
}

impl Sealer {
    /// Seals `record` in place. Layout on entry: `[4 spare bytes][plaintext]
    /// [16 spare bytes]`; on return the header holds the length and the
    /// tail holds the tag. `record.len()` must not exceed
    /// `RECORD_HEADER_LEN + MAX_RECORD_PLAINTEXT + TAG_LEN`.
    pub fn seal(&mut self, record: &mut [u8]) {
        let len = (record.len() - RECORD_HEADER_LEN) as u32;
        record[..RECORD_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        let (hdr, rest) = record.split_at_mut(RECORD_HEADER_LEN);
        let split = rest.len() - TAG_LEN;
        let (body, tag_out) = rest.split_at_mut(split);
        let nonce = self.0.next_nonce(len as usize);
        // Sealing only fails for inputs beyond AES-GCM's 64 GiB limit.
        let tag = self
            .0
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*hdr), body)
            .expect("record within AES-GCM limits");
        tag_out.copy_from_slice(tag.as_ref());
    }

    /// Records sealed in the current epoch.
    pub fn counter(&self) -> u64 {
        self.0.counter
    }

    /// Key epochs completed.
    pub fn epoch(&self) -> u64 {
        self.0.epoch
    }
}

/// Reads a record header: the total record size (header included) once
/// the 4 bytes are there, after checking the bound.
pub fn record_size(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(h) = buf.get(..RECORD_HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if (len as usize) > MAX_RECORD_LEN || (len as usize) < TAG_LEN {
        return Err(RecordError::BadLength(len));
    }
    Ok(Some(RECORD_HEADER_LEN + len as usize))
}

impl Opener {
    /// Opens a whole record (header included) in place; returns the
    /// plaintext range within `record`.
    pub fn open(&mut self, record: &mut [u8]) -> Result<std::ops::Range<usize>, RecordError> {
        let (hdr, rest) = record.split_at_mut(RECORD_HEADER_LEN);
        let nonce = self.0.next_nonce(rest.len());
        let plain = self
            .0
            .key
            .open_in_place(nonce, Aad::from(&*hdr), rest)
            .map_err(|_| RecordError::Auth)?;
        Ok(RECORD_HEADER_LEN..RECORD_HEADER_LEN + plain.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(interval: u64) -> (Sealer, Opener) {
        let secrets = secrets();
        let (host_tx, _) = keys(&secrets, Side::Host, interval);
        let (_, site_rx) = keys(&secrets, Side::Site, interval);
        (host_tx, site_rx)
    }

    fn secrets() -> [u8; 64] {
        std::array::from_fn(|i| i as u8)
    }

    fn record(plain: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_HEADER_LEN];
        r.extend_from_slice(plain);
        r.extend_from_slice(&[0; TAG_LEN]);
        r
    }

    #[test]
    fn seal_open_across_ratchets() {
        let (mut tx, mut rx) = pair(3);
        for i in 0..20u8 {
            let mut r = record(&[i; 100]);
            tx.seal(&mut r);
            assert_ne!(&r[4..104], &[i; 100][..], "encrypted");
            assert_eq!(record_size(&r), Ok(Some(r.len())));
            let range = rx.open(&mut r).expect("opens");
            assert_eq!(&r[range], &[i; 100][..]);
        }
        assert_eq!(tx.epoch(), 6);
    }

    #[test]
    fn keys_ratchet_by_bytes_as_well_as_records() {
        let secrets = secrets();
        let (mut tx, _) = keys_with_byte_limit(&secrets, Side::Host, 1_000_000, 1000);
        let (_, mut rx) = keys_with_byte_limit(&secrets, Side::Site, 1_000_000, 1000);
        // Records of 116 bytes: a new key after every ninth (9 * 116 >= 1000).
        for i in 0..40u8 {
            let mut r = record(&[i; 100]);
            tx.seal(&mut r);
            let range = rx
                .open(&mut r)
                .expect("both ends ratchet at the same record");
            assert_eq!(&r[range], &[i; 100][..]);
        }
        assert_eq!(tx.epoch(), 4);
        assert_eq!(tx.counter(), 4);
        // The default budget keeps a key within RFC 8446's AES-GCM margin.
        const { assert!(RATCHET_BYTES / 16 <= 1 << 34) };
    }

    #[test]
    fn tampering_reordering_and_wrong_direction_fail() {
        let (mut tx, mut rx) = pair(1000);
        let mut a = record(b"first");
        let mut b = record(b"second");
        tx.seal(&mut a);
        tx.seal(&mut b);
        let mut flipped = a.clone();
        flipped[6] ^= 1;
        // A failed open is fatal for the tunnel; each case uses a fresh opener.
        assert_eq!(rx.open(&mut flipped), Err(RecordError::Auth));
        // Skipping `a` (reorder) fails: the counter is the nonce.
        let (_, mut rx2) = pair(1000);
        assert_eq!(rx2.open(&mut b.clone()), Err(RecordError::Auth));
        let (_, mut rx3) = pair(1000);
        assert!(rx3.open(&mut a).is_ok());
        assert!(rx3.open(&mut b).is_ok());
        // A record sealed by the site cannot be opened as if from the host.
        let (_, mut host_rx) = keys(&secrets(), Side::Host, 1000);
        let mut c = record(b"x");
        let (mut host_tx, _) = keys(&secrets(), Side::Host, 1000);
        host_tx.seal(&mut c);
        assert_eq!(host_rx.open(&mut c), Err(RecordError::Auth));
    }

    #[test]
    fn header_bounds() {
        assert_eq!(record_size(&[0, 0]), Ok(None));
        assert_eq!(record_size(&[0, 0, 0, 15]), Err(RecordError::BadLength(15)));
        let max = (MAX_RECORD_LEN as u32).to_be_bytes();
        assert_eq!(record_size(&max), Ok(Some(MAX_RECORD_LEN + 4)));
        let over = (MAX_RECORD_LEN as u32 + 1).to_be_bytes();
        assert!(record_size(&over).is_err());
        assert!(record_size(&u32::MAX.to_be_bytes()).is_err());
    }
}
