//! In-process stream ends: a stream whose local side is a task in this
//! data plane (a video feed) instead of a TCP socket.

use super::{LocalStream, StreamError, Tunnel};
use bytes::Bytes;
use revtun_proto::frame::Reason;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

/// One end of a stream, driven from inside the data plane.
#[derive(Debug)]
pub struct Pipe {
    tun: Tunnel,
    ls: Rc<LocalStream>,
    finished: std::cell::Cell<bool>,
}

impl Pipe {
    pub(super) fn new(tun: Tunnel, ls: Rc<LocalStream>) -> Pipe {
        Pipe {
            tun,
            ls,
            finished: std::cell::Cell::new(false),
        }
    }

    /// The next chunk from the peer, without copying; `None` at the peer's
    /// END, on reset, or when the tunnel closes. Credit goes back as chunks
    /// are taken.
    pub async fn recv(&self) -> Option<Bytes> {
        loop {
            let wake = self.ls.sig.wait();
            let next = self.ls.pop();
            if let Some(chunk) = next {
                self.tun.inner.st.borrow_mut().t.consumed_at(
                    self.ls.id,
                    chunk.len(),
                    std::time::Instant::now(),
                );
                self.tun.pump();
                return Some(chunk);
            }
            if self.ls.reset.get() || self.ls.peer_ended.get() || self.tun.is_closed() {
                return None;
            }
            wake.await;
        }
    }

    /// Sends `data` as it gets credit (one copy into the outgoing batch).
    pub async fn send(&self, data: &[u8]) -> Result<(), StreamError> {
        let inner = self.tun.inner.clone();
        let id = self.ls.id;
        let mut off = 0;
        while off < data.len() {
            let n = poll_fn(|cx| {
                let mut st = inner.st.borrow_mut();
                let max = match super::reserve(&inner, &mut st, &self.ls, cx) {
                    Poll::Ready(Some(max)) => max.min(data.len() - off),
                    Poll::Ready(None) => return Poll::Ready(Err(StreamError::Closed)),
                    Poll::Pending => return Poll::Pending,
                };
                let slot = st.framer.data_slot(id, max);
                let n = slot.len().min(max);
                slot[..n].copy_from_slice(&data[off..off + n]);
                st.framer.commit_data(id, n);
                st.t.sent(id, n);
                Poll::Ready(Ok(n))
            })
            .await?;
            off += n;
            inner.writer_wake.notify();
        }
        Ok(())
    }

    /// True once the stream was reset (by either side) or its tunnel
    /// closed; false after a clean END from the peer.
    pub fn was_reset(&self) -> bool {
        self.ls.reset.get() || self.tun.is_closed()
    }

    /// Resets the stream now (the peer sees RESET; queued bytes dropped).
    pub fn abort(&self) {
        if !self.ls.reset.get() && !self.tun.is_closed() {
            self.tun.reset_stream(&self.ls, Reason::NORMAL);
        }
    }

    /// Copies everything `src` receives to `dst` (one copy into `dst`'s
    /// outgoing batch), then passes `src`'s END on as `dst`'s, or resets
    /// `dst` when `src` was reset; a `dst` that fails resets `src`.
    pub async fn copy(src: &Pipe, dst: &Pipe) {
        while let Some(chunk) = src.recv().await {
            if dst.send(&chunk).await.is_err() {
                src.abort();
                return;
            }
        }
        if src.was_reset() {
            dst.abort();
        } else {
            dst.finish();
        }
    }

    /// Half-closes: the peer sees END after the bytes sent so far.
    pub fn finish(&self) {
        if !self.finished.get() {
            self.finished.set(true);
            self.ls.reader_done.set(true);
            self.tun.inner.st.borrow_mut().t.end(self.ls.id);
            self.tun.pump();
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.ls.writer_done.set(true);
        self.ls.reader_done.set(true);
        if !self.ls.reset.get() && !self.tun.is_closed() {
            // Nobody reads this stream any more: the peer is told to stop
            // (unless both sides had ended it) and whatever it still held
            // goes back to the tunnel window.
            self.tun.reset_stream(&self.ls, Reason::NORMAL);
        }
    }
}
