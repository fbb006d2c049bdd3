//! Writing to RTSP viewers: replies, and access units as vectored
//! non-blocking `sendmsg` calls of this viewer's `$` headers interleaved
//! with the packets of the shared buffer (through TLS for RTSPS viewers;
//! the socket side is in [`super::wire`]).

use super::feed::{SendLatency, Viewer};
use super::wire::Wire;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub use super::wire::write_all;

/// Writes queued access units to one viewer: per packet a 4-byte `$`
/// header of this viewer and the packet straight from the shared buffer,
/// a whole access unit per `sendmsg` where the socket takes it.
pub async fn writer(
    conn: Rc<Wire>,
    v: Rc<Viewer>,
    channel: u8,
    stuck: Duration,
    latency: Rc<SendLatency>,
) {
    let close = |conn: &Wire| conn.close();
    loop {
        let wake = v.sig.wait();
        let replies = std::mem::take(&mut *v.replies.borrow_mut());
        if !replies.is_empty() {
            v.drained.notify();
            // A viewer that takes no replies is stuck like one that takes
            // no media.
            let sent = glommio::timer::timeout(stuck, async {
                write_all(&conn, &replies)
                    .await
                    .map_err(glommio::GlommioError::IoError)
            })
            .await;
            if let Err(e) = sent {
                v.cut.set(matches!(e, glommio::GlommioError::TimedOut(_)));
                v.gone.set(true);
            }
        }
        if v.gone.get() {
            // The feed ended (camera gone, site offline) or the viewer
            // left: close the connection so the player sees the end.
            v.drained.notify();
            close(&conn);
            return;
        }
        let next = v.queue.borrow_mut().pop(Instant::now());
        let Some(frame) = next else {
            let idle = glommio::timer::timeout(stuck, async {
                wake.await;
                Ok(())
            })
            .await;
            if idle.is_err() && v.queue.borrow().stuck(Instant::now(), stuck) {
                v.gone.set(true);
                v.cut.set(true);
                v.drained.notify();
                close(&conn);
                return;
            }
            continue;
        };
        // This viewer's `$` headers; the packets come from the shared buffer.
        let headers: Vec<[u8; 4]> = frame
            .packets
            .iter()
            .map(|r| {
                let len = (r.end - r.start) as u16;
                [b'$', channel, (len >> 8) as u8, len as u8]
            })
            .collect();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * headers.len());
        for (h, r) in headers.iter().zip(&frame.packets) {
            parts.push(h);
            parts.push(&frame.msg[r.clone()]);
        }
        let sent = match conn.write_now(&parts) {
            Ok(None) => Ok(()),
            // The socket is full: wait for room, up to the stuck limit.
            Ok(Some(pos)) => {
                glommio::timer::timeout(stuck, async {
                    conn.write_from(&parts, pos)
                        .await
                        .map_err(glommio::GlommioError::IoError)
                })
                .await
            }
            Err(e) => Err(glommio::GlommioError::IoError(e)),
        };
        match sent {
            Ok(()) => {
                latency.record(frame.arrived);
                v.queue.borrow_mut().progressed(Instant::now());
            }
            Err(e) => {
                let stuck = matches!(e, glommio::GlommioError::TimedOut(_));
                let stats = v.queue.borrow().stats;
                tracing::info!(
                    sent = stats.sent,
                    dropped = stats.dropped,
                    resyncs = stats.resyncs,
                    stuck,
                    "viewer stuck or gone; disconnecting"
                );
                v.gone.set(true);
                v.cut.set(stuck);
                v.drained.notify();
                close(&conn);
                return;
            }
        }
    }
}
