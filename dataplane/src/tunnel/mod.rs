//! The tunnel driver: runs [`revtun_proto::tunnel::Tunnel`] over one TCP
//! connection on the current glommio executor.
//!
//! Tasks per tunnel: a reader (tunnel socket -> records -> events), a
//! writer (sealed batches -> tunnel socket), a timer (pings, dead-peer
//! detection, stop requests), and two per stream (local socket -> DATA
//! frames, queued payloads -> local socket). All share one `RefCell`ed
//! state; no borrow is ever held across an `.await`, so there are no locks
//! and no contention: the tunnel lives on one core for its whole life.
//!
//! Copies per byte: the local read lands directly in the outgoing batch
//! (`Framer::data_slot`), is sealed in place and written from there; on
//! the other side the tunnel read lands in the receive chunk, is opened in
//! place and written to the local socket from a reference-counted slice of
//! that chunk. User space copies nothing; see `docs/data-plane.md`.

mod pipe;
mod tasks;

pub use pipe::Pipe;

use crate::signal::Signal;
use bytes::Bytes;
use glommio::net::TcpStream;
use revtun_proto::channel::{Deframer, Framer, BATCH_LIMIT};
use revtun_proto::frame::{Reason, StreamId};
use revtun_proto::record::{keys, Side, EXPORTER_LEN};
use revtun_proto::tunnel::{CloseReason, Config, OpenError, Tunnel as Proto};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest DATA payload read from a local socket in one go. Moderate
/// frames keep streams fair; batches of many frames keep system calls few.
pub const READ_CHUNK: usize = 128 * 1024;
/// A stream reader waits when the outgoing batch has less room than this.
pub const MIN_ROOM: usize = 16 * 1024;
/// Most bytes of protocol frames (replies the peer's frames call for:
/// RESETs, WINDOWs, a PONG) that may wait unsent before the tunnel stops
/// reading its socket. A peer that sends and never reads makes us queue at
/// most this plus what one receive chunk's records call for.
pub const MAX_QUEUED_CONTROL: usize = 64 * 1024;
/// A local side with this many bytes already queued is lagging: what
/// arrives for it is copied out of the receive chunk instead of pinning it.
pub const COPY_QUEUED: usize = 64 * 1024;
/// How long the site waits for a service target to accept a connection,
/// by default (`revtun-site run --connect-timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A shard's live site tunnels, by site name.
pub type Registry = Rc<RefCell<HashMap<String, Tunnel>>>;

/// What this end does with streams the peer opens.
#[derive(Clone)]
pub enum Role {
    /// The host: opens streams, accepts none.
    Host,
    /// A peer link this host dialed to another fleet host: opens streams
    /// named `SITE/SERVICE` (the other host checks them), accepts none.
    Peer,
    /// A peer link another fleet host dialed to this one: each stream it
    /// opens, named `SITE/SERVICE`, is relayed to that site's tunnel in
    /// `registry` ([`relay`]).
    Relay {
        /// This shard's site tunnels.
        registry: Registry,
    },
    /// The site: connects each opened stream to its service's target.
    Site {
        /// Service name -> local target `HOST:PORT` (replaced on reload;
        /// streams already open keep their target).
        services: Rc<RefCell<HashMap<String, String>>>,
        /// Services served in process (cameras): name -> handler, which
        /// gets the stream's pipe (replaced on reload too).
        handlers: Rc<RefCell<HashMap<String, PipeHandler>>>,
        /// Longest wait for a service target to accept a connection
        /// (default [`CONNECT_TIMEOUT`]).
        connect_timeout: Duration,
    },
}

impl std::fmt::Debug for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Host => f.write_str("Host"),
            Role::Peer => f.write_str("Peer"),
            Role::Relay { .. } => f.write_str("Relay"),
            Role::Site {
                services,
                handlers,
                connect_timeout,
            } => f
                .debug_struct("Site")
                .field("services", services)
                .field("handlers", &handlers.borrow().keys().collect::<Vec<_>>())
                .field("connect_timeout", connect_timeout)
                .finish(),
        }
    }
}

/// Serves a stream opened to an in-process service.
pub type PipeHandler = Rc<dyn Fn(Pipe)>;

/// How to run one tunnel.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Which end this is.
    pub side: Side,
    /// Windows and timers.
    pub cfg: Config,
    /// Records per key before the ratchet.
    pub ratchet_interval: u64,
    /// Site name, for logs.
    pub name: String,
}

/// Counters of one tunnel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Bytes read from the tunnel socket.
    pub bytes_in: u64,
    /// Bytes written to the tunnel socket.
    pub bytes_out: u64,
    /// Streams opened (either side).
    pub streams_opened: u64,
}

/// The local side of one stream.
#[derive(Debug)]
struct LocalStream {
    id: StreamId,
    sock: RefCell<Option<TcpStream>>,
    /// Payloads from the peer waiting to be written locally.
    queue: RefCell<VecDeque<Bytes>>,
    /// Bytes in `queue`.
    queued: Cell<usize>,
    /// The local socket stopped taking bytes: what waits is copied into
    /// buffers of its own instead of pinning receive chunks.
    blocked: Cell<bool>,
    /// Wakes this stream's reader and writer.
    sig: Signal,
    peer_ended: Cell<bool>,
    reset: Cell<bool>,
    reader_done: Cell<bool>,
    writer_done: Cell<bool>,
}

impl LocalStream {
    fn new(id: StreamId, sock: Option<TcpStream>) -> Rc<Self> {
        Rc::new(LocalStream {
            id,
            sock: RefCell::new(sock),
            queue: RefCell::default(),
            queued: Cell::new(0),
            blocked: Cell::new(false),
            sig: Signal::default(),
            peer_ended: Cell::new(false),
            reset: Cell::new(false),
            reader_done: Cell::new(false),
            writer_done: Cell::new(false),
        })
    }

    fn push(&self, b: Bytes) {
        self.queued.set(self.queued.get() + b.len());
        self.queue.borrow_mut().push_back(b);
    }

    fn pop(&self) -> Option<Bytes> {
        let b = self.queue.borrow_mut().pop_front()?;
        self.queued.set(self.queued.get() - b.len());
        Some(b)
    }

    /// Drops what waits (the core returns its credit when the stream ends).
    fn clear(&self) {
        self.queue.borrow_mut().clear();
        self.queued.set(0);
    }

    /// True when this stream's local side is not keeping up.
    fn lagging(&self) -> bool {
        self.blocked.get() || self.queued.get() >= COPY_QUEUED
    }

    /// Copies every queued slice into one buffer of the stream's own, so
    /// the receive chunks they pointed into can be reused.
    fn compact(&self) {
        let mut q = self.queue.borrow_mut();
        if q.is_empty() {
            return;
        }
        let mut own = bytes::BytesMut::with_capacity(self.queued.get());
        for b in q.drain(..) {
            own.extend_from_slice(&b);
        }
        q.push_back(own.freeze());
    }

    /// Ends the local side of a stream that did not end cleanly (reset by
    /// either side, or the tunnel lost): the local peer gets a TCP reset,
    /// not an end of file, so a truncated transfer never looks complete.
    /// The stream's tasks see no socket and stop.
    fn abort(&self) {
        if let Some(s) = self.sock.borrow_mut().take() {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    }

    /// Shuts the local socket down so pending reads and writes finish.
    fn shutdown(&self, how: Shutdown) {
        if let Some(s) = self.sock.borrow().as_ref() {
            let how = match how {
                Shutdown::Read => nix::sys::socket::Shutdown::Read,
                Shutdown::Write => nix::sys::socket::Shutdown::Write,
                Shutdown::Both => nix::sys::socket::Shutdown::Both,
            };
            let _ = nix::sys::socket::shutdown(s.as_raw_fd(), how);
        }
    }
}

struct State {
    t: Proto,
    framer: Framer,
    deframer: Deframer,
    spare: Vec<u8>,
    streams: HashMap<StreamId, Rc<LocalStream>>,
    services: Vec<String>,
    closed: Option<CloseReason>,
    stats: Stats,
}

struct Inner {
    st: RefCell<State>,
    sock: RefCell<TcpStream>,
    role: Role,
    name: String,
    /// Wakes the writer: there is something to send.
    writer_wake: Signal,
    /// The outgoing batch was taken: readers waiting for room may go on.
    room: Signal,
    /// The tunnel closed.
    closed_sig: Signal,
    /// The peer's SETTINGS (and, from a site, its SERVICES) arrived.
    ready_sig: Signal,
    /// Set from outside (SIGTERM) to close cleanly.
    stop: Option<Arc<AtomicBool>>,
    /// Wakes the timer: `stop` was set ([`tasks::watch_stop`]).
    timer_wake: Signal,
    /// The heartbeat bound, also the write deadline of the tunnel socket.
    dead_after: Duration,
    /// The peer's address, and when the tunnel started (for status).
    peer: Option<std::net::SocketAddr>,
    since: std::time::SystemTime,
}

/// A running tunnel. Cheap to clone; all clones drive the same tunnel.
#[derive(Clone)]
pub struct Tunnel {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// Why a host-side open failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The tunnel is closed.
    #[error("tunnel closed")]
    Closed,
    /// The site does not offer this service.
    #[error("service {0:?} is not offered by the site")]
    UnknownService(String),
    /// Too many streams.
    #[error(transparent)]
    Open(#[from] OpenError),
}

impl Tunnel {
    /// Starts the tunnel tasks on the current executor.
    pub fn start(
        sock: TcpStream,
        secrets: &[u8; EXPORTER_LEN],
        spec: Spec,
        role: Role,
        advertise: &[String],
        stop: Option<Arc<AtomicBool>>,
    ) -> Tunnel {
        let _ = sock.set_nodelay(true);
        let peer = sock.peer_addr().ok();
        // A peer that stops reading: nothing written for `dead_after`
        // while data waits fails the write and closes the tunnel.
        let _ = sock.set_write_timeout(Some(spec.cfg.dead_after));
        let dead_after = spec.cfg.dead_after;
        let (sealer, opener) = keys(secrets, spec.side, spec.ratchet_interval);
        let mut t = Proto::new(spec.side, spec.cfg, Instant::now());
        if !advertise.is_empty() {
            t.advertise(advertise);
        }
        let inner = Rc::new(Inner {
            st: RefCell::new(State {
                t,
                framer: Framer::new(sealer),
                deframer: Deframer::new(opener),
                spare: Vec::new(),
                streams: HashMap::new(),
                services: Vec::new(),
                closed: None,
                stats: Stats::default(),
            }),
            sock: RefCell::new(sock),
            role,
            name: spec.name,
            writer_wake: Signal::default(),
            room: Signal::default(),
            closed_sig: Signal::default(),
            ready_sig: Signal::default(),
            stop,
            timer_wake: Signal::default(),
            dead_after,
            peer,
            since: std::time::SystemTime::now(),
        });
        if let Some(flag) = &inner.stop {
            tasks::watch_stop(flag, &inner);
        }
        let tunnel = Tunnel { inner };
        glommio::spawn_local(tasks::tunnel_reader(tunnel.clone())).detach();
        glommio::spawn_local(tasks::tunnel_writer(tunnel.clone())).detach();
        glommio::spawn_local(tasks::timer(tunnel.clone())).detach();
        tunnel.pump();
        tunnel
    }

    /// True when both handles drive the same tunnel.
    pub fn same(&self, other: &Tunnel) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }

    /// Site name (for logs).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The peer's address, if the socket knew it.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.inner.peer
    }

    /// When this tunnel started.
    pub fn since(&self) -> std::time::SystemTime {
        self.inner.since
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.inner.st.borrow().closed.is_some()
    }

    /// Waits (at most `limit`) until the peer's first record arrived, so
    /// its settings and services are known; false if it did not in time
    /// or the tunnel closed. A client that connects in the instant after a
    /// site's hello is then served instead of refused.
    pub async fn ready(&self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let wait = self.inner.ready_sig.wait();
            {
                let st = self.inner.st.borrow();
                if st.closed.is_some() {
                    return false;
                }
                if st.t.peer_settings().is_some() {
                    return true;
                }
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = glommio::timer::timeout(left, async {
                wait.await;
                Ok(())
            })
            .await;
        }
    }

    /// Waits until the tunnel closes; returns why.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let w = self.inner.closed_sig.wait();
            if let Some(r) = self.inner.st.borrow().closed.clone() {
                return r;
            }
            w.await;
        }
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.inner.st.borrow().stats
    }

    /// Live streams.
    pub fn stream_count(&self) -> usize {
        self.inner.st.borrow().streams.len()
    }

    /// Announces `names` as this site's services, replacing the list the
    /// host has (a reload changed them).
    pub fn advertise(&self, names: &[String]) {
        {
            let mut st = self.inner.st.borrow_mut();
            if st.closed.is_some() {
                return;
            }
            st.t.advertise(names);
        }
        self.pump();
    }

    /// Services the site advertised.
    pub fn services(&self) -> Vec<String> {
        self.inner.st.borrow().services.clone()
    }

    /// Opens a stream to `service` whose local end is in this process.
    pub fn open_pipe(&self, service: &str) -> Result<Pipe, StreamError> {
        let ls = {
            let mut st = self.inner.st.borrow_mut();
            if st.closed.is_some() {
                return Err(StreamError::Closed);
            }
            if !self.offers(&st, service) {
                return Err(StreamError::UnknownService(service.to_string()));
            }
            let id = match st.t.open_at(service, Instant::now()) {
                Ok(id) => id,
                Err(e) => {
                    drop(st);
                    self.refused_open(&e);
                    return Err(e.into());
                }
            };
            st.stats.streams_opened += 1;
            let ls = LocalStream::new(id, None);
            st.streams.insert(id, ls.clone());
            ls
        };
        self.pump();
        Ok(Pipe::new(self.clone(), ls))
    }

    /// Opens a stream to `service` carrying `local` (host side).
    pub fn open_stream(&self, service: &str, local: TcpStream) -> Result<StreamId, StreamError> {
        let ls = {
            let mut st = self.inner.st.borrow_mut();
            let refused = if st.closed.is_some() {
                Some(StreamError::Closed)
            } else if !self.offers(&st, service) {
                Some(StreamError::UnknownService(service.to_string()))
            } else {
                None
            };
            if let Some(e) = refused {
                reject(local);
                return Err(e);
            }
            let id = match st.t.open_at(service, Instant::now()) {
                Ok(id) => id,
                Err(e) => {
                    reject(local);
                    drop(st);
                    self.refused_open(&e);
                    return Err(e.into());
                }
            };
            st.stats.streams_opened += 1;
            let _ = local.set_nodelay(true);
            let ls = LocalStream::new(id, Some(local));
            st.streams.insert(id, ls.clone());
            ls
        };
        let id = ls.id;
        self.spawn_stream(ls);
        self.pump();
        Ok(id)
    }

    /// True when the peer offers `service`: a site lists its services;
    /// over a peer link the other host checks the `SITE/SERVICE` name.
    fn offers(&self, st: &State, service: &str) -> bool {
        matches!(self.inner.role, Role::Peer) || st.services.iter().any(|s| s == service)
    }

    /// True for a peer link between fleet hosts (either end).
    pub fn is_peer_link(&self) -> bool {
        matches!(self.inner.role, Role::Peer | Role::Relay { .. })
    }

    /// After a refused open: when our stream ids ran out the core has
    /// queued GOAWAY; the tunnel closes once it is flushed and the site
    /// reconnects with fresh ids.
    fn refused_open(&self, e: &OpenError) {
        if *e == OpenError::Exhausted {
            let t = self.clone();
            glommio::spawn_local(
                async move { t.close_after_flush(CloseReason::IdsExhausted).await },
            )
            .detach();
        }
    }

    fn spawn_stream(&self, ls: Rc<LocalStream>) {
        glommio::spawn_local(tasks::stream_reader(self.clone(), ls.clone())).detach();
        glommio::spawn_local(tasks::stream_writer(self.clone(), ls)).detach();
    }

    /// Moves pending protocol frames into the outgoing batch and wakes the
    /// writer if anything waits.
    fn pump(&self) {
        let mut st = self.inner.st.borrow_mut();
        pump_frames(&mut st);
        if !st.framer.is_empty() {
            self.inner.writer_wake.notify();
        }
    }

    /// Closes the tunnel now; every stream is reset. Idempotent.
    pub fn close(&self, reason: CloseReason) {
        let streams = {
            let mut st = self.inner.st.borrow_mut();
            if st.closed.is_some() {
                return;
            }
            tracing::info!(site = %self.inner.name, %reason, cause = reason.name(),
                by_peer = reason.by_peer(), bytes_in = st.stats.bytes_in,
                bytes_out = st.stats.bytes_out, "tunnel closed");
            count_close(&reason);
            st.closed = Some(reason);
            std::mem::take(&mut st.streams)
        };
        for ls in streams.values() {
            ls.reset.set(true);
            ls.clear();
            ls.abort();
            ls.sig.notify();
        }
        let fd = self.inner.sock.borrow().as_raw_fd();
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
        self.inner.writer_wake.notify();
        self.inner.room.notify();
        self.inner.closed_sig.notify();
        self.inner.ready_sig.notify();
    }

    /// Sends GOAWAY, gives the writer a moment to flush, then closes.
    pub async fn close_gracefully(&self, reason: CloseReason) {
        {
            let mut st = self.inner.st.borrow_mut();
            if st.closed.is_some() {
                return;
            }
            st.t.go_away(Reason::SHUTDOWN);
        }
        self.close_after_flush(reason).await;
    }

    /// Gives the writer a moment to flush what is queued, then closes.
    async fn close_after_flush(&self, reason: CloseReason) {
        self.pump();
        for _ in 0..20 {
            let flushed = {
                let st = self.inner.st.borrow();
                st.closed.is_some() || (st.framer.is_empty() && !st.t.has_frames())
            };
            if flushed {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.close(reason);
    }

    /// Drops a stream from the driver once both of its tasks are done.
    fn maybe_finish(&self, ls: &LocalStream) {
        if ls.reader_done.get() && ls.writer_done.get() {
            let mut st = self.inner.st.borrow_mut();
            st.streams.remove(&ls.id);
            st.t.finished(ls.id);
        }
    }

    /// Aborts one stream (local failure or refusal) and tells the peer.
    /// Payloads still queued for the local side are dropped; the core
    /// returns their credit to the tunnel window.
    fn reset_stream(&self, ls: &LocalStream, why: Reason) {
        count_reset(why, false);
        ls.reset.set(true);
        ls.clear();
        ls.abort();
        ls.sig.notify();
        {
            let mut st = self.inner.st.borrow_mut();
            st.streams.remove(&ls.id);
            st.t.reset(ls.id, why);
        }
        self.pump();
    }
}

/// Relays one stream a fleet peer opened on a peer link (`inbound`,
/// named `SITE/SERVICE`) to a new stream of that site's tunnel on this
/// shard, both ways, until both ends have ended it; a reset or a closed
/// tunnel on either side resets the other. A site that is not here, or a
/// service it does not offer, resets the inbound stream at once. A camera
/// (`SITE/cam.NAME`) on a host with an RTSP listener is served from this
/// host's own feed of it instead ([`crate::video::host::Redirector::serve_peer`]).
pub async fn relay(inbound: Pipe, registry: Registry, name: String) {
    // Started from the reader while it holds the tunnel's state: touch
    // nothing of it before the reader has let go.
    futures_lite::future::yield_now().await;
    let Some((site, service)) = name.split_once('/') else {
        inbound.abort();
        return;
    };
    let tunnel = registry
        .borrow()
        .get(site)
        .filter(|t| !t.is_closed())
        .cloned();
    let Some(t) = tunnel else {
        tracing::debug!(%site, %service, "peer asked for a site not held here");
        inbound.abort();
        return;
    };
    if !t.ready(crate::host::READY_WAIT).await {
        inbound.abort();
        return;
    }
    // A camera, on a host with a redirector: served from this host's
    // feed, so the site sends it once whatever the number of hosts
    // watching.
    if let Some(cam) = service.strip_prefix(crate::video::site::CAMERA_PREFIX) {
        if let Some(r) = crate::peer::shard().redirector() {
            r.serve_peer(&inbound, site, cam).await;
            return;
        }
    }
    let outbound = match t.open_pipe(service) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(%site, %service, error = %e, "relayed stream refused");
            inbound.abort();
            return;
        }
    };
    futures_lite::future::zip(
        Pipe::copy(&inbound, &outbound),
        Pipe::copy(&outbound, &inbound),
    )
    .await;
}

/// Closes a client connection with a reset, so the client fails at once.
pub fn reject(conn: TcpStream) {
    let _ = socket2::SockRef::from(&conn).set_linger(Some(std::time::Duration::ZERO));
    drop(conn);
}

/// How many bytes stream `ls` may put into the outgoing batch now:
/// `Ready(None)` when it must stop (tunnel closed, stream reset), `Pending`
/// (with the waker registered) while it lacks credit or batch room.
/// Protocol frames waiting (the OPEN above all) are moved in first.
fn reserve(
    inner: &Inner,
    st: &mut State,
    ls: &LocalStream,
    cx: &std::task::Context<'_>,
) -> std::task::Poll<Option<usize>> {
    use std::task::Poll;
    if st.closed.is_some() || ls.reset.get() {
        return Poll::Ready(None);
    }
    let credit = st.t.send_credit(ls.id);
    if credit == 0 {
        ls.sig.register(cx);
        return Poll::Pending;
    }
    let room = st.framer.room();
    if room < MIN_ROOM {
        inner.room.register(cx);
        inner.writer_wake.notify();
        return Poll::Pending;
    }
    pump_frames(st);
    Poll::Ready(Some(credit.min(room - 1024).min(READ_CHUNK)))
}

/// Moves the core's frames into the outgoing batch unless a full batch
/// already waits (the peer is slow to read): then they wait in the core,
/// where [`MAX_QUEUED_CONTROL`] bounds them. Every DATA write calls this
/// with room in the batch first, so frames keep their order.
fn pump_frames(st: &mut State) {
    if st.t.has_frames() && st.framer.len() < BATCH_LIMIT {
        let mut frames = Vec::new();
        st.t.take_frames(&mut frames);
        st.framer.push_encoded(&frames);
    }
}

/// How tunnels and streams ended on this shard (each executor thread is a
/// shard), by cause: for the metrics and for tests.
#[derive(Debug, Default, Clone)]
pub struct Ends {
    /// Tunnel closes by [`CloseReason::name`], in [`CloseReason::NAMES`] order.
    pub tunnels: [u64; CloseReason::NAMES.len()],
    /// Stream resets we sent, by [`Reason::ALL`] index (last: other codes).
    pub resets_sent: [u64; Reason::ALL.len() + 1],
    /// Stream resets the peer sent, likewise.
    pub resets_received: [u64; Reason::ALL.len() + 1],
}

thread_local! {
    static ENDS: RefCell<Ends> = RefCell::default();
}

/// This shard's counts of tunnel and stream ends.
pub fn ends() -> Ends {
    ENDS.with(|e| e.borrow().clone())
}

fn reason_slot(r: Reason) -> usize {
    Reason::ALL
        .iter()
        .position(|x| *x == r)
        .unwrap_or(Reason::ALL.len())
}

fn count_reset(r: Reason, by_peer: bool) {
    ENDS.with(|e| {
        let mut e = e.borrow_mut();
        let slot = reason_slot(r);
        if by_peer {
            e.resets_received[slot] += 1;
        } else {
            e.resets_sent[slot] += 1;
        }
    });
}

fn count_close(r: &CloseReason) {
    let slot = CloseReason::NAMES
        .iter()
        .position(|n| *n == r.name())
        .unwrap_or(0);
    ENDS.with(|e| e.borrow_mut().tunnels[slot] += 1);
}

/// This shard's end counts as metric samples (`revtun_tunnel_closes_total`
/// by cause, `revtun_stream_resets_total` by reason and direction).
pub fn end_samples(shard: &str) -> Vec<crate::metrics::Sample> {
    let e = ends();
    let mut out = Vec::new();
    for (name, n) in CloseReason::NAMES.iter().zip(e.tunnels) {
        out.push((
            "revtun_tunnel_closes_total",
            format!("cause=\"{name}\",{shard}"),
            n,
        ));
    }
    let names = Reason::ALL.iter().map(|r| r.name()).chain(["other"]);
    for (i, name) in names.enumerate() {
        for (by, counts) in [("us", &e.resets_sent), ("peer", &e.resets_received)] {
            out.push((
                "revtun_stream_resets_total",
                format!("reason=\"{name}\",by=\"{by}\",{shard}"),
                counts[i],
            ));
        }
    }
    out
}
