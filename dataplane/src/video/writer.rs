//! Writing to RTSP viewers: replies, and access units as vectored
//! non-blocking `sendmsg` calls of this viewer's `$` headers interleaved
//! with the packets of the shared buffer.

use super::feed::{SendLatency, Viewer};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Writes `data` whole (RTSP replies), waiting for room as needed.
pub async fn write_all(conn: &Rc<RefCell<TcpStream>>, data: &[u8]) -> std::io::Result<()> {
    write_vectored_from(conn, &[data], (0, 0)).await
}

/// Where a vectored write stands: part index, offset in that part.
type Pos = (usize, usize);

/// One non-blocking `sendmsg` of everything from `pos` on (up to 1024
/// parts); the bytes written, or `EAGAIN` when the socket is full.
fn send_from(fd: std::os::fd::RawFd, parts: &[&[u8]], pos: Pos) -> nix::Result<usize> {
    use nix::sys::socket::{sendmsg, MsgFlags};
    use std::io::IoSlice;
    let (idx, off) = pos;
    let iov: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&parts[idx][off..]))
        .chain(parts[idx + 1..].iter().take(1023).map(|p| IoSlice::new(p)))
        .collect();
    sendmsg::<()>(
        fd,
        &iov,
        &[],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
}

/// Moves `pos` over `n` written bytes.
fn advance(parts: &[&[u8]], (mut idx, mut off): Pos, n: usize) -> Pos {
    let mut left = n;
    while left > 0 && idx < parts.len() {
        let here = parts[idx].len() - off;
        if left >= here {
            left -= here;
            idx += 1;
            off = 0;
        } else {
            off += left;
            left = 0;
        }
    }
    (idx, off)
}

/// Writes what the socket takes right now, without waiting: the common
/// case (a viewer keeping up) finishes here with no timer and no wake-up.
fn write_now(conn: &Rc<RefCell<TcpStream>>, parts: &[&[u8]]) -> std::io::Result<Pos> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&*conn.borrow());
    let mut pos = (0, 0);
    while pos.0 < parts.len() {
        match send_from(fd, parts, pos) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => pos = advance(parts, pos, n),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pos)
}

/// Writes `parts` from `pos` on with as few system calls as the socket
/// allows: a non-blocking `sendmsg` of all remaining parts at once, and,
/// when the socket is full, glommio's write of the next part (which waits
/// for room).
async fn write_vectored_from(
    conn: &Rc<RefCell<TcpStream>>,
    parts: &[&[u8]],
    mut pos: Pos,
) -> std::io::Result<()> {
    while pos.0 < parts.len() {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*conn.borrow());
        let n = match send_from(fd, parts, pos) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => {
                // Full: let glommio wait for room while writing the next part.
                let (idx, off) = pos;
                std::future::poll_fn(|cx| {
                    futures_lite::AsyncWrite::poll_write(
                        std::pin::Pin::new(&mut *conn.borrow_mut()),
                        cx,
                        &parts[idx][off..],
                    )
                })
                .await?
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        pos = advance(parts, pos, n);
    }
    Ok(())
}

/// Writes queued access units to one viewer: per packet a 4-byte `$`
/// header of this viewer and the packet straight from the shared buffer,
/// a whole access unit per `sendmsg` where the socket takes it.
pub async fn writer(
    conn: Rc<RefCell<TcpStream>>,
    v: Rc<Viewer>,
    channel: u8,
    stuck: Duration,
    latency: Rc<SendLatency>,
) {
    let close = |conn: &Rc<RefCell<TcpStream>>| {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*conn.borrow());
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    };
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
        let sent = match write_now(&conn, &parts) {
            Ok(pos) if pos.0 == parts.len() => Ok(()),
            // The socket is full: wait for room, up to the stuck limit.
            Ok(pos) => {
                glommio::timer::timeout(stuck, async {
                    write_vectored_from(&conn, &parts, pos)
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
