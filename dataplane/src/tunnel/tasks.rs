//! The tasks of one tunnel. See the module documentation of `tunnel`.

use super::{pump_frames, LocalStream, Role, Tunnel, MAX_QUEUED_CONTROL};
use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use revtun_proto::frame::Reason;
use revtun_proto::tunnel::{CloseReason, Event};
use std::cell::RefCell;
use std::future::poll_fn;
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

/// How often a thread looks at each stop flag its tunnels share.
const TICK: Duration = Duration::from_millis(100);

/// The tunnels of one thread that share a stop flag.
struct StopWatch {
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tunnels: RefCell<Vec<std::rc::Weak<super::Inner>>>,
}

thread_local! {
    static STOP_WATCHES: RefCell<Vec<Rc<StopWatch>>> = RefCell::default();
}

/// Has `inner`'s timer woken within [`TICK`] of `flag` being set (it is
/// set from another thread, on SIGTERM). One task per flag and thread
/// looks at it, not one per tunnel: an idle tunnel's timer then wakes
/// only for its own deadlines (a ping every few seconds), so a host's
/// idle cost does not grow by ten wake-ups a second per tunnel.
pub(super) fn watch_stop(
    flag: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    inner: &Rc<super::Inner>,
) {
    STOP_WATCHES.with(|w| {
        let mut w = w.borrow_mut();
        if let Some(watch) = w.iter().find(|x| std::sync::Arc::ptr_eq(&x.flag, flag)) {
            watch.tunnels.borrow_mut().push(Rc::downgrade(inner));
            return;
        }
        let watch = Rc::new(StopWatch {
            flag: flag.clone(),
            tunnels: RefCell::new(vec![Rc::downgrade(inner)]),
        });
        w.push(watch.clone());
        glommio::spawn_local(async move {
            let mut ticks = 0u32;
            while !watch.flag.load(Ordering::Relaxed) {
                glommio::timer::sleep(TICK).await;
                ticks = ticks.wrapping_add(1);
                // Forget closed tunnels now and then (a bounded list).
                if ticks.is_multiple_of(64) {
                    watch.tunnels.borrow_mut().retain(|t| t.strong_count() > 0);
                }
            }
            for t in watch
                .tunnels
                .borrow()
                .iter()
                .filter_map(std::rc::Weak::upgrade)
            {
                t.timer_wake.notify();
            }
            STOP_WATCHES.with(|w| w.borrow_mut().retain(|x| !Rc::ptr_eq(x, &watch)));
        })
        .detach();
    });
}

/// Tunnel socket -> records -> protocol events.
pub(super) async fn tunnel_reader(tun: Tunnel) {
    let inner = tun.inner.clone();
    loop {
        let read = poll_fn(|cx| {
            let mut st = inner.st.borrow_mut();
            if st.closed.is_some() {
                return Poll::Ready(Ok(0));
            }
            if st.t.queued_len() > MAX_QUEUED_CONTROL {
                // The peer does not read what we owe it (replies to its
                // frames): stop reading until the writer makes room. A
                // peer that never reads is then ended by the heartbeat or
                // the write deadline, and what it made us queue is bounded.
                inner.room.register(cx);
                inner.writer_wake.notify();
                return Poll::Pending;
            }
            let buf = st.deframer.read_buf();
            match Pin::new(&mut *inner.sock.borrow_mut()).poll_read(cx, buf) {
                Poll::Ready(Ok(n)) => {
                    st.deframer.advance(n);
                    st.stats.bytes_in += n as u64;
                    Poll::Ready(Ok(n))
                }
                other => other,
            }
        })
        .await;
        match read {
            Ok(0) => return tun.close(CloseReason::PeerClosed),
            Err(e) => return tun.close(CloseReason::Io(format!("read: {e}"))),
            Ok(_) => {}
        }
        if let Err(reason) = process_records(&tun) {
            tracing::warn!(site = %inner.name, %reason, "closing tunnel: peer misbehaved");
            return tun.close(CloseReason::PeerMisbehaved(reason));
        }
        tun.pump();
    }
}

/// Opens every whole record received so far and acts on its events.
fn process_records(tun: &Tunnel) -> Result<(), String> {
    let inner = &tun.inner;
    let now = Instant::now();
    loop {
        let mut st = inner.st.borrow_mut();
        let Some((rec, range)) = st.deframer.next_record().map_err(|e| e.to_string())? else {
            return Ok(());
        };
        st.t.handle_record(&rec[range.clone()], range.start, now)
            .map_err(|e| e.to_string())?;
        while let Some(ev) = st.t.poll_event() {
            match ev {
                Event::Data { id, range } => match st.streams.get(&id) {
                    Some(ls) if !ls.reset.get() => {
                        // A slice pins the whole receive chunk (up to 2 MiB)
                        // while it waits: bytes for a local side that is
                        // not keeping up are copied out instead.
                        let chunk = if ls.lagging() {
                            Bytes::copy_from_slice(&rec[range])
                        } else {
                            rec.slice(range)
                        };
                        ls.push(chunk);
                        ls.sig.notify();
                    }
                    // The local side is gone: the bytes are dropped, their credit returned.
                    _ => st.t.consumed(id, range.len()),
                },
                Event::Opened { id, service } => match &inner.role {
                    Role::Site { handlers, .. } if handlers.borrow().contains_key(&service) => {
                        let ls = LocalStream::new(id, None);
                        st.streams.insert(id, ls.clone());
                        st.stats.streams_opened += 1;
                        let h = handlers.borrow().get(&service).cloned();
                        if let Some(h) = h {
                            h(super::Pipe::new(tun.clone(), ls));
                        }
                    }
                    Role::Site {
                        services,
                        connect_timeout,
                        ..
                    } => match services.borrow().get(&service) {
                        Some(target) => {
                            let ls = LocalStream::new(id, None);
                            st.streams.insert(id, ls.clone());
                            st.stats.streams_opened += 1;
                            glommio::spawn_local(connect_target(
                                tun.clone(),
                                ls,
                                target.clone(),
                                *connect_timeout,
                            ))
                            .detach();
                        }
                        None => {
                            tracing::info!(site = %inner.name, %service, "host asked for an unknown service");
                            st.t.reset(id, Reason::REFUSED);
                            super::count_reset(Reason::REFUSED, false);
                        }
                    },
                    Role::Relay { registry } => {
                        let ls = LocalStream::new(id, None);
                        st.streams.insert(id, ls.clone());
                        st.stats.streams_opened += 1;
                        let pipe = super::Pipe::new(tun.clone(), ls);
                        glommio::spawn_local(super::relay(pipe, registry.clone(), service))
                            .detach();
                    }
                    Role::Host | Role::Peer => {
                        st.t.reset(id, Reason::REFUSED);
                        super::count_reset(Reason::REFUSED, false);
                    }
                },
                Event::Ended { id } => {
                    if let Some(ls) = st.streams.get(&id) {
                        ls.peer_ended.set(true);
                        ls.sig.notify();
                    }
                }
                Event::Reset { id, code } => {
                    if let Some(ls) = st.streams.remove(&id) {
                        tracing::debug!(site = %inner.name, stream = id, %code, "stream reset by peer");
                        super::count_reset(code, true);
                        ls.reset.set(true);
                        // The core already returned these bytes' credit.
                        ls.clear();
                        ls.abort();
                        ls.sig.notify();
                    }
                }
                Event::Credit { id: 0 } | Event::Ready => {
                    for ls in st.streams.values() {
                        ls.sig.notify();
                    }
                    inner.ready_sig.notify();
                }
                Event::Credit { id } => {
                    if let Some(ls) = st.streams.get(&id) {
                        ls.sig.notify();
                    }
                }
                Event::Services(list) => st.services = list,
                Event::GoAway(c) => {
                    drop(st);
                    tun.close(CloseReason::PeerGoAway(c));
                    return Ok(());
                }
            }
        }
    }
}

/// Sealed batches -> tunnel socket.
pub(super) async fn tunnel_writer(tun: Tunnel) {
    let inner = tun.inner.clone();
    loop {
        let wake = inner.writer_wake.wait();
        let batch = {
            let mut st = inner.st.borrow_mut();
            if st.closed.is_some() {
                return;
            }
            pump_frames(&mut st);
            if st.framer.is_empty() {
                None
            } else {
                let spare = std::mem::take(&mut st.spare);
                Some(st.framer.take(spare))
            }
        };
        let Some((batch, len)) = batch else {
            wake.await;
            continue;
        };
        inner.room.notify();
        let mut off = 0;
        while off < len {
            let r = poll_fn(|cx| {
                Pin::new(&mut *inner.sock.borrow_mut()).poll_write(cx, &batch[off..len])
            })
            .await;
            match r {
                Ok(0) => return tun.close(CloseReason::Io("write returned 0".into())),
                Ok(n) => off += n,
                // The socket's write timeout (the heartbeat's `dead_after`)
                // fired: the peer took nothing for that long.
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return tun.close(CloseReason::WriteStalled(inner.dead_after))
                }
                Err(e) => return tun.close(CloseReason::Io(format!("write: {e}"))),
            }
        }
        let mut st = inner.st.borrow_mut();
        st.stats.bytes_out += len as u64;
        st.spare = batch;
    }
}

/// Pings, dead-peer detection and stop requests.
pub(super) async fn timer(tun: Tunnel) {
    let inner = tun.inner.clone();
    // Socket bytes both ways at the last wake: a tunnel that moved no
    // more than its pings since then gives its buffers back.
    let mut seen = (0u64, 0u64);
    loop {
        let woken = inner.timer_wake.wait();
        let closed = inner.closed_sig.wait();
        if inner.st.borrow().closed.is_some() {
            return;
        }
        // Also seen here for a tunnel that starts after the flag was set
        // (its thread's watch has ended).
        if inner
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
        {
            return tun.close_gracefully(CloseReason::Shutdown).await;
        }
        let verdict = inner.st.borrow_mut().t.handle_timeout(Instant::now());
        if let Err(e) = verdict {
            tracing::warn!(site = %inner.name, reason = %e, "closing tunnel");
            let reason = match e {
                revtun_proto::tunnel::TunnelError::Dead(d) => CloseReason::Dead(d),
                other => CloseReason::PeerMisbehaved(other.to_string()),
            };
            return tun.close(reason);
        }
        {
            let mut st = inner.st.borrow_mut();
            let now = (st.stats.bytes_in, st.stats.bytes_out);
            if now.0 - seen.0 + now.1 - seen.1 <= IDLE_BYTES {
                release_buffers(&mut st);
            }
            seen = now;
        }
        tun.pump();
        // Until the next ping or heartbeat deadline, or until woken: an
        // idle tunnel's timer wakes for its own deadlines only.
        let due = inner.st.borrow().t.poll_timeout();
        let nap = due.saturating_duration_since(Instant::now());
        let sleep = async {
            glommio::timer::sleep(nap.max(Duration::from_millis(1))).await;
        };
        futures_lite::future::or(sleep, futures_lite::future::or(woken, closed)).await;
    }
}

/// Socket bytes (both ways) between two timer wakes under which a tunnel
/// counts as idle: a few pings and pongs.
const IDLE_BYTES: u64 = 1024;

/// Frees an idle tunnel's batch and receive buffers (up to about 2 MiB
/// each once it has carried bulk data); the next data grows them again.
/// Without this every tunnel that ever carried a stream would keep them,
/// and a host's memory would grow with the number of sites used, not
/// with the number busy now.
fn release_buffers(st: &mut super::State) {
    st.framer.release();
    st.spare = Vec::new();
    st.deframer.release();
}

enum Step {
    Data,
    Eof,
    Failed,
    Stop,
}

/// Local socket -> DATA frames, read straight into the outgoing batch.
pub(super) async fn stream_reader(tun: Tunnel, ls: Rc<LocalStream>) {
    let inner = tun.inner.clone();
    let id = ls.id;
    loop {
        let step = poll_fn(|cx| {
            let mut st = inner.st.borrow_mut();
            let max = match super::reserve(&inner, &mut st, &ls, cx) {
                Poll::Ready(Some(max)) => max,
                Poll::Ready(None) => return Poll::Ready(Step::Stop),
                Poll::Pending => return Poll::Pending,
            };
            let mut sock = ls.sock.borrow_mut();
            let Some(sock) = sock.as_mut() else {
                return Poll::Ready(Step::Stop);
            };
            let slot = st.framer.data_slot(id, max);
            match Pin::new(sock).poll_read(cx, slot) {
                Poll::Ready(Ok(0)) => {
                    st.framer.commit_data(id, 0);
                    st.t.end(id);
                    Poll::Ready(Step::Eof)
                }
                Poll::Ready(Ok(n)) => {
                    st.framer.commit_data(id, n);
                    st.t.sent(id, n);
                    Poll::Ready(Step::Data)
                }
                Poll::Ready(Err(_)) => {
                    st.framer.commit_data(id, 0);
                    Poll::Ready(Step::Failed)
                }
                Poll::Pending => {
                    st.framer.commit_data(id, 0);
                    Poll::Pending
                }
            }
        })
        .await;
        match step {
            Step::Data => inner.writer_wake.notify(),
            Step::Eof => {
                tun.pump();
                ls.reader_done.set(true);
                tun.maybe_finish(&ls);
                return;
            }
            Step::Failed => return tun.reset_stream(&ls, Reason::LOCAL_ERROR),
            Step::Stop => {
                ls.reader_done.set(true);
                return;
            }
        }
    }
}

/// Queued payloads -> local socket; credit goes back as bytes leave.
pub(super) async fn stream_writer(tun: Tunnel, ls: Rc<LocalStream>) {
    let inner = tun.inner.clone();
    loop {
        let wake = ls.sig.wait();
        let next = ls.pop();
        let Some(chunk) = next else {
            if ls.reset.get() || inner.st.borrow().closed.is_some() {
                ls.writer_done.set(true);
                return;
            }
            if ls.peer_ended.get() {
                ls.shutdown(Shutdown::Write);
                ls.writer_done.set(true);
                tun.maybe_finish(&ls);
                return;
            }
            ls.blocked.set(false);
            wake.await;
            continue;
        };
        let len = chunk.len();
        // What is left of the chunk to write.
        let rest = RefCell::new(chunk);
        while !rest.borrow().is_empty() {
            let r = poll_fn(|cx| {
                if ls.reset.get() {
                    return Poll::Ready(Err(std::io::Error::other("reset")));
                }
                let mut sock = ls.sock.borrow_mut();
                let Some(s) = sock.as_mut() else {
                    return Poll::Ready(Err(std::io::Error::other("not connected")));
                };
                let p = Pin::new(s).poll_write(cx, &rest.borrow());
                if p.is_pending() && !ls.blocked.get() {
                    // The local side stopped taking bytes: from now on what
                    // waits for it is held in its own buffers, not in
                    // slices pinning shared receive chunks.
                    ls.blocked.set(true);
                    ls.compact();
                    let own = Bytes::copy_from_slice(&rest.borrow());
                    *rest.borrow_mut() = own;
                }
                p
            })
            .await;
            match r {
                Ok(n) if n > 0 => {
                    let mut b = rest.borrow_mut();
                    *b = b.slice(n..);
                }
                _ => {
                    ls.writer_done.set(true);
                    if !ls.reset.get() {
                        tun.reset_stream(&ls, Reason::LOCAL_ERROR);
                    }
                    return;
                }
            }
        }
        inner
            .st
            .borrow_mut()
            .t
            .consumed_at(ls.id, len, Instant::now());
        tun.pump();
    }
}

/// Site side: connects an opened stream to its target, then starts it. A
/// target that neither accepts nor refuses within `limit` is given up on
/// (the stream is reset with [`Reason::TIMEOUT`]).
async fn connect_target(tun: Tunnel, ls: Rc<LocalStream>, target: String, limit: Duration) {
    let attempt =
        glommio::timer::timeout(limit, glommio::net::TcpStream::connect(target.as_str())).await;
    match attempt {
        Ok(s) => {
            if ls.reset.get() || tun.is_closed() {
                return;
            }
            let _ = s.set_nodelay(true);
            *ls.sock.borrow_mut() = Some(s);
            tun.spawn_stream(ls);
        }
        Err(e) => {
            let why = match e {
                glommio::GlommioError::TimedOut(_) => Reason::TIMEOUT,
                _ => Reason::REFUSED,
            };
            tracing::info!(site = %tun.inner.name, stream = ls.id, %target, error = %e, reason = %why,
                "service target unreachable");
            ls.reader_done.set(true);
            ls.writer_done.set(true);
            tun.reset_stream(&ls, why);
        }
    }
}
