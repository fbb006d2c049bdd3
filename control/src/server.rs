//! The control listener (default port 5500).
//!
//! The accept loop only accepts: each connection is checked against its
//! source prefix's handshake rate and the pending-handshake caps (overall,
//! per source prefix, per source address; [`crate::pending`]), then handed
//! to its own task with a short deadline to the peer's first byte and one
//! total deadline for TLS plus enrollment or hello (threat 5). Failures
//! send one generic refusal and log the reason.
//!
//! I/O runs on tokio-uring; rustls is sans-IO, so [`TlsIo`] feeds it the
//! bytes io_uring reads and writes what it produces.

use crate::clock::Clock;
use crate::dataplane::DataPlane;
use crate::limits;
use crate::pending::{Caps, Pending};
use crate::pki;
use crate::source::Prefix;
use crate::state::HostState;
use crate::store::{NewCert, Refusal, StoreError};
use revtun_proto::enroll::{ClientMsg, MsgError, ServerMsg};
use revtun_proto::record::{EXPORTER_LABEL, EXPORTER_LEN};
use rustls::{ServerConfig, ServerConnection};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio_uring::net::{TcpListener, TcpStream};
use tracing::{debug, info, trace, warn};

/// Data-channel protocol version announced in `Ready`.
pub const DATA_VERSION: u8 = 1;

/// Listener settings (command-line flags of `revtun-control`).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Total deadline for TLS plus enrollment or hello.
    pub handshake_timeout: Duration,
    /// Deadline from accept to the peer's first byte (within the total).
    pub first_byte_timeout: Duration,
    /// Pending handshakes overall.
    pub max_pending: usize,
    /// Pending handshakes per source address.
    pub max_pending_per_addr: usize,
    /// Pending handshakes per source prefix (/24, /64).
    pub max_pending_per_prefix: usize,
    /// Handshakes one source prefix may start per second (0: no limit).
    pub handshake_rate_per_prefix: u32,
    /// Validity of site certificates issued at enrollment.
    pub site_cert_ttl: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            handshake_timeout: limits::HANDSHAKE_TIMEOUT,
            first_byte_timeout: limits::FIRST_BYTE_TIMEOUT,
            max_pending: limits::MAX_PENDING_HANDSHAKES,
            max_pending_per_addr: limits::MAX_PENDING_PER_ADDR,
            max_pending_per_prefix: limits::MAX_PENDING_PER_PREFIX,
            handshake_rate_per_prefix: limits::HANDSHAKES_PER_PREFIX_PER_SEC,
            site_cert_ttl: limits::SITE_CERT_TTL,
        }
    }
}

/// SIGHUP: a flag set by the signal handler and what applies a reload.
pub struct Reload {
    /// Set by the SIGHUP handler.
    pub requested: Arc<std::sync::atomic::AtomicBool>,
    /// Reads the settings again and prepares the data plane's file; the
    /// listener options to apply and a summary, or why nothing changed.
    pub apply: Box<dyn FnMut() -> Result<(ServerOptions, String), String>>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload").finish_non_exhaustive()
    }
}

/// Why one connection ended without success. Logged, never sent.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("peer closed the connection during the handshake")]
    Eof,
    #[error("peer sent nothing within the first-byte deadline")]
    Silent,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("bad message: {0}")]
    Msg(#[from] MsgError),
    #[error("peer sent more than one message before the reply")]
    LockStep,
    #[error("peer sent {0} bytes without completing a message")]
    Oversized(usize),
    #[error("hello without a client certificate")]
    NoClientCert,
    #[error("client certificate has no readable serial or name")]
    BadClientCert,
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("bad certificate signing request: {0}")]
    BadCsr(pki::PkiError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

/// What a successful handshake leads to.
enum Outcome {
    Enrolled { site: String },
    Ready { site: String, io: Box<TlsIo> },
}

/// Releases one pending slot when the handshake phase ends, however it ends.
struct PendingGuard {
    pending: Rc<RefCell<Pending>>,
    addr: IpAddr,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending.borrow_mut().release(self.addr);
    }
}

/// Everything a connection task needs.
struct Ctx {
    state: Arc<HostState>,
    tls: Arc<ServerConfig>,
    clock: Arc<dyn Clock>,
    /// Replaced on reload.
    opts: RefCell<ServerOptions>,
    pending: Rc<RefCell<Pending>>,
    dataplane: Arc<DataPlane>,
    conn_ids: std::cell::Cell<u64>,
    stats: crate::stats::Stats,
}

impl Ctx {
    /// The listener options in force.
    fn opts(&self) -> ServerOptions {
        self.opts.borrow().clone()
    }
}

/// A rustls server connection driven over a tokio-uring socket.
struct TlsIo {
    stream: Rc<TcpStream>,
    conn: ServerConnection,
    buf: Vec<u8>,
}

impl TlsIo {
    async fn flush(&mut self) -> Result<(), ConnError> {
        while self.conn.wants_write() {
            let mut out = Vec::with_capacity(4096);
            self.conn.write_tls(&mut out)?;
            let (r, _) = self.stream.write_all(out).await;
            r?;
        }
        Ok(())
    }

    /// Reads once from the socket and processes what arrived.
    async fn read_some(&mut self) -> Result<(), ConnError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let (r, buf) = self.stream.read(buf).await;
        let n = r?;
        if n == 0 {
            return Err(ConnError::Eof);
        }
        let mut slice = &buf[..n];
        while !slice.is_empty() {
            self.conn.read_tls(&mut slice)?;
            if let Err(e) = self.conn.process_new_packets() {
                // Send the alert, then fail.
                let _ = self.flush().await;
                return Err(e.into());
            }
        }
        self.buf = buf;
        Ok(())
    }

    /// Waits up to `deadline` for the peer's first bytes (its ClientHello)
    /// and processes them.
    async fn first_read(&mut self, deadline: Duration) -> Result<(), ConnError> {
        tokio::time::timeout(deadline, self.read_some())
            .await
            .map_err(|_| ConnError::Silent)?
    }

    /// Completes the TLS handshake.
    async fn handshake(&mut self) -> Result<(), ConnError> {
        while self.conn.is_handshaking() {
            self.flush().await?;
            self.read_some().await?;
        }
        self.flush().await
    }

    /// Reads exactly one client message (lock-step: nothing may follow it).
    async fn read_message(&mut self) -> Result<ClientMsg, ConnError> {
        let mut acc = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            loop {
                match self.conn.reader().read(&mut chunk) {
                    Ok(0) => return Err(ConnError::Eof),
                    Ok(n) => {
                        acc.extend_from_slice(&chunk[..n]);
                        if acc.len() > limits::MAX_PLAINTEXT_BEFORE_MESSAGE {
                            return Err(ConnError::Oversized(acc.len()));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
            if let Some((msg, used)) = ClientMsg::decode(&acc)? {
                if used != acc.len() {
                    return Err(ConnError::LockStep);
                }
                return Ok(msg);
            }
            self.read_some().await?;
        }
    }

    async fn send(&mut self, msg: &ServerMsg) -> Result<(), ConnError> {
        self.conn.writer().write_all(&msg.encode())?;
        self.flush().await
    }

    async fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush().await;
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Binds the listener. Separate from [`serve`] so a caller can learn the
/// port (when binding port 0) before serving.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves the listener forever on a tokio-uring runtime (this thread).
pub fn serve(
    listener: std::net::TcpListener,
    state: Arc<HostState>,
    clock: Arc<dyn Clock>,
    opts: ServerOptions,
    dataplane: Arc<DataPlane>,
    reload: Reload,
) -> Result<(), crate::tls::TlsSetupError> {
    let tls = crate::tls::server_config(&state)?;
    tokio_uring::start(async move {
        let listener = TcpListener::from_std(listener);
        let ctx = Rc::new(Ctx {
            state,
            tls,
            clock,
            pending: Rc::new(RefCell::new(Pending::new(Caps {
                total: opts.max_pending,
                per_addr: opts.max_pending_per_addr,
                per_prefix: opts.max_pending_per_prefix,
            }))),
            opts: RefCell::new(opts),
            dataplane,
            conn_ids: std::cell::Cell::new(0),
            stats: crate::stats::Stats::default(),
        });
        tokio_uring::spawn(revocations(ctx.clone()));
        tokio_uring::spawn(viewers(ctx.clone()));
        tokio_uring::spawn(report_stats(ctx.clone()));
        tokio_uring::spawn(reloads(ctx.clone(), reload));
        accept_loop(listener, ctx).await;
    });
    Ok(())
}

/// Applies a reload within a fifth of a second of SIGHUP: control's
/// listener options at once, and the data plane re-reads its settings
/// file. A reload that fails changes nothing; the log and stdout say why.
async fn reloads(ctx: Rc<Ctx>, mut reload: Reload) {
    use std::sync::atomic::Ordering;
    let mut generation = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !reload.requested.swap(false, Ordering::SeqCst) {
            continue;
        }
        generation += 1;
        let (opts, summary) = match (reload.apply)() {
            Ok(x) => x,
            Err(e) => {
                warn!(generation, error = %e, "reload refused; the running settings stay");
                say(&format!(
                    "reload refused: {}",
                    e.lines().next().unwrap_or("")
                ));
                continue;
            }
        };
        ctx.pending.borrow_mut().set_caps(Caps {
            total: opts.max_pending,
            per_addr: opts.max_pending_per_addr,
            per_prefix: opts.max_pending_per_prefix,
        });
        *ctx.opts.borrow_mut() = opts;
        let dp = ctx.dataplane.clone();
        let msg = [revtun_proto::handoff::Handoff::Reload { generation }];
        match blocking(move || dp.broadcast(&msg, Duration::from_secs(1))).await {
            Ok(Ok(())) => {}
            // A data plane (re)starting reads the new file anyway.
            other => {
                warn!(generation, result = ?other.map(|r| r.map_err(|e| e.to_string())), "the data plane did not take the reload now; it reads the file when it starts")
            }
        }
        info!(generation, %summary, "settings reloaded");
        say(&format!("reloaded {generation}: {summary}"));
    }
}

/// One line on stdout (operators and the tests follow it).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Tells the data plane to close the tunnels of revoked sites, within one
/// [`limits::REVOCATION_POLL`] of `revtun-keytool revoke`.
async fn revocations(ctx: Rc<Ctx>) {
    let mut cursor = None;
    loop {
        tokio::time::sleep(limits::REVOCATION_POLL).await;
        let (state, now) = (ctx.state.clone(), ctx.clock.now_ms());
        let polled = blocking(move || -> Result<_, StoreError> {
            let from = match cursor {
                Some(c) => c,
                None => state.store.revocation_cursor(now)?,
            };
            state
                .store
                .revocations_after(from, now, limits::REVOCATION_POLL)
        })
        .await;
        match polled {
            Ok(Ok((sites, next))) => {
                for site in sites {
                    match ctx.dataplane.revoke(&site) {
                        Ok(shard) => info!(%site, shard, "site revoked; closing its tunnel"),
                        Err(e) => {
                            warn!(%site, error = %e, "cannot tell the data plane about a revocation")
                        }
                    }
                }
                cursor = Some(next);
            }
            Ok(Err(e)) => warn!(error = %e, "revocation poll failed"),
            Err(e) => warn!(error = %e, "revocation poll failed"),
        }
    }
}

/// Keeps the data plane's viewer table equal to the store's: the whole
/// table is sent when it changed (`revtun-keytool viewer ...`) or a new
/// data plane started, within one [`limits::VIEWER_POLL`].
async fn viewers(ctx: Rc<Ctx>) {
    let mut sent: Option<(u64, Vec<crate::store::ViewerRow>)> = None;
    loop {
        let state = ctx.state.clone();
        let dp = ctx.dataplane.clone();
        let epoch = dp.epoch();
        match blocking(move || state.store.viewers()).await {
            Ok(Ok(rows)) if sent.as_ref() != Some(&(epoch, rows.clone())) => {
                let mut msgs = Vec::with_capacity(rows.len() + 2);
                msgs.push(revtun_proto::handoff::Handoff::ViewersBegin {
                    token_key: zeroize::Zeroizing::new(*ctx.state.token_key()),
                    count: rows.len() as u32,
                });
                msgs.extend(rows.iter().map(|v| revtun_proto::handoff::Handoff::Viewer {
                    name: v.name.clone(),
                    ha1: v.ha1,
                    allow: v.allow.clone(),
                }));
                msgs.push(revtun_proto::handoff::Handoff::ViewersEnd);
                let n = rows.len();
                match blocking(move || dp.broadcast(&msgs, limits::VIEWER_POLL)).await {
                    Ok(Ok(())) => {
                        info!(viewers = n, "viewer table sent to the data plane");
                        sent = Some((epoch, rows));
                    }
                    Ok(Err(e)) => warn!(error = %e, "cannot send the viewer table; retrying"),
                    Err(e) => warn!(error = %e, "cannot send the viewer table; retrying"),
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "viewer poll failed"),
            Err(e) => warn!(error = %e, "viewer poll failed"),
        }
        tokio::time::sleep(limits::VIEWER_POLL).await;
    }
}

/// Sends control's counters to the data plane each second (its metrics
/// endpoint serves them; its `/ready` wants them).
/// Also tells systemd (`Type=notify`) that control is ready once the data
/// plane took the first report, and keeps its watchdog fed from this
/// loop, so a control whose event loop hangs is restarted.
async fn report_stats(ctx: Rc<Ctx>) {
    use revtun_proto::handoff::{Handoff, MAX_CONTROL_METRICS};
    let mut ready = false;
    let watchdog = revtun_dataplane::notify::watchdog_interval();
    loop {
        let restarts = ctx.dataplane.epoch().saturating_sub(1);
        let mut text = ctx.stats.render(ctx.pending.borrow().total(), restarts);
        if let Some(f) = ctx.state.store.fleet() {
            text.push_str(&f.view().render());
        }
        if text.len() > MAX_CONTROL_METRICS {
            let cut = text[..MAX_CONTROL_METRICS].rfind('\n').map_or(0, |i| i + 1);
            text.truncate(cut);
        }
        let dp = ctx.dataplane.clone();
        let msg = [Handoff::ControlMetrics(text)];
        // A data plane starting or restarting gets the next one.
        let sent = blocking(move || dp.broadcast(&msg, Duration::from_millis(50))).await;
        if !ready && matches!(sent, Ok(Ok(()))) {
            ready = true;
            if revtun_dataplane::notify::notify("READY=1\nSTATUS=accepting sites") {
                info!("told systemd: ready");
            }
        }
        if watchdog.is_some() {
            revtun_dataplane::notify::notify("WATCHDOG=1");
        }
        let pause = watchdog.map_or(Duration::from_secs(1), |w| w.min(Duration::from_secs(1)));
        tokio::time::sleep(pause).await;
    }
}

async fn accept_loop(listener: TcpListener, ctx: Rc<Ctx>) {
    let mut per_sec = ctx.opts().handshake_rate_per_prefix;
    let mut rate = crate::ratelimit::PerSourceRate::new(per_sec);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if ctx.opts().handshake_rate_per_prefix != per_sec {
            // A reload changed the rate: buckets start full again.
            per_sec = ctx.opts().handshake_rate_per_prefix;
            rate = crate::ratelimit::PerSourceRate::new(per_sec);
        }
        let prefix = Prefix::of(peer.ip());
        if !rate.allow(prefix, std::time::Instant::now()) {
            debug!(%peer, %prefix, "handshake rate of this prefix exceeded; closing");
            ctx.stats.inc(
                "revtun_control_closed_at_accept_total",
                "why=\"rate\"".into(),
            );
            drop(stream);
            continue;
        }
        let admitted = ctx.pending.borrow_mut().admit(peer.ip());
        if let Err(full) = admitted {
            let p = ctx.pending.borrow();
            debug!(
                %peer,
                %prefix,
                cap = full.as_str(),
                total = p.total(),
                of_prefix = p.of_prefix(peer.ip()),
                "pending handshake cap reached; closing"
            );
            drop(p);
            ctx.stats.inc(
                "revtun_control_closed_at_accept_total",
                "why=\"pending_cap\"".into(),
            );
            drop(stream);
            continue;
        }
        let guard = PendingGuard {
            pending: ctx.pending.clone(),
            addr: peer.ip(),
        };
        trace!(%peer, "accepted");
        tokio_uring::spawn(serve_conn(ctx.clone(), stream, peer, guard));
    }
}

async fn serve_conn(ctx: Rc<Ctx>, stream: TcpStream, peer: SocketAddr, guard: PendingGuard) {
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(stream);
    let io = TlsIo {
        stream: stream.clone(),
        conn: match ServerConnection::new(ctx.tls.clone()) {
            Ok(c) => c,
            Err(e) => {
                warn!(%peer, error = %e, "cannot create TLS session");
                return;
            }
        },
        buf: Vec::with_capacity(limits::HANDSHAKE_READ_BUF),
    };
    let result =
        tokio::time::timeout(ctx.opts().handshake_timeout, handshake(&ctx, io, peer)).await;
    drop(guard);
    let outcome = match &result {
        Err(_) => "timeout",
        Ok(Err(ConnError::Silent)) => "silent",
        Ok(Err(ConnError::Eof)) => "eof",
        Ok(Err(ConnError::Refused(_))) => "refused",
        Ok(Err(_)) => "failed",
        Ok(Ok(_)) => "ok",
    };
    ctx.stats.inc(
        "revtun_control_handshakes_total",
        format!("outcome=\"{outcome}\""),
    );
    match result {
        Err(_) => {
            info!(%peer, timeout = ?ctx.opts().handshake_timeout, "handshake deadline passed; closing");
            let _ = stream.shutdown(Shutdown::Both);
        }
        Ok(Err(ConnError::Silent)) => {
            info!(%peer, timeout = ?ctx.opts().first_byte_timeout, "first-byte deadline passed; closing");
            let _ = stream.shutdown(Shutdown::Both);
        }
        Ok(Err(ConnError::Refused(_))) => {
            // Already logged with the site name where the refusal was made.
            let _ = stream.shutdown(Shutdown::Both);
        }
        Ok(Err(e)) => {
            info!(%peer, reason = %e, "connection failed");
            let _ = stream.shutdown(Shutdown::Both);
        }
        Ok(Ok(Outcome::Enrolled { site })) => info!(%peer, %site, "site enrolled"),
        Ok(Ok(Outcome::Ready { site, io })) => hand_off(&ctx, *io, &site, peer),
    }
}

/// Runs TLS and the one message exchange. On a refusal it has already sent
/// the generic reply.
async fn handshake(ctx: &Rc<Ctx>, mut io: TlsIo, peer: SocketAddr) -> Result<Outcome, ConnError> {
    io.first_read(ctx.opts().first_byte_timeout).await?;
    io.handshake().await?;
    debug!(%peer, client_cert = io.conn.peer_certificates().is_some(), "TLS handshake complete");
    let msg = io.read_message().await?;
    let (kind, site) = msg.summary();
    debug!(%peer, kind, site, "message received");
    let verdict = match &msg {
        ClientMsg::Enroll {
            site,
            token,
            csr_der,
        } => enroll(ctx, site, token, csr_der)
            .await
            .map(|cert_der| ServerMsg::Enrolled { cert_der }),
        ClientMsg::Hello { site } => hello(ctx, &io, site).await.map(|()| ServerMsg::Ready {
            data_version: DATA_VERSION,
        }),
    };
    let (kind, _) = msg.summary();
    ctx.stats.inc(
        "revtun_control_messages_total",
        format!(
            "kind=\"{}\",outcome=\"{}\"",
            crate::stats::reason_label(kind),
            if verdict.is_ok() { "ok" } else { "refused" }
        ),
    );
    if let Err(e) = &verdict {
        let reason = match e {
            ConnError::Refused(r) => crate::stats::reason_label(&r.to_string()),
            _ => "error".to_string(),
        };
        ctx.stats.inc(
            "revtun_control_refusals_total",
            format!("reason=\"{reason}\""),
        );
    }
    match verdict {
        Ok(reply) => {
            io.send(&reply).await?;
            match msg {
                ClientMsg::Enroll { site, .. } => {
                    io.close().await;
                    Ok(Outcome::Enrolled { site })
                }
                ClientMsg::Hello { site } => Ok(Outcome::Ready {
                    site,
                    io: Box::new(io),
                }),
            }
        }
        Err(e) => {
            let (kind, site) = msg.summary();
            warn!(%peer, site, kind, reason = %e, "refused");
            // A fleet store that cannot be reached is not a verdict on the
            // token or certificate: say "try later", nothing more.
            let reply = match &e {
                ConnError::Store(StoreError::Fleet(_)) => ServerMsg::Unavailable,
                _ => ServerMsg::Refused,
            };
            io.send(&reply).await?;
            io.close().await;
            Err(e)
        }
    }
}

/// Runs blocking store or signing work off the I/O thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ConnError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConnError::Internal(e.to_string()))
}

async fn enroll(
    ctx: &Rc<Ctx>,
    site: &str,
    token: &revtun_proto::token::Token,
    csr_der: &[u8],
) -> Result<Vec<u8>, ConnError> {
    let (state, clock, ttl) = (
        ctx.state.clone(),
        ctx.clock.clone(),
        ctx.opts().site_cert_ttl,
    );
    let (site, token, csr) = (site.to_string(), token.clone(), csr_der.to_vec());
    blocking(move || -> Result<Vec<u8>, ConnError> {
        let now = clock.now_ms();
        // Cheap gate first: no signing work for a bad token.
        state
            .store
            .check_token(&site, &token, now)?
            .map_err(ConnError::Refused)?;
        let serial = pki::random_serial().map_err(|e| ConnError::Internal(e.to_string()))?;
        let cert = state
            .ca
            .sign_site(&site, &csr, &serial, now, ttl)
            .map_err(ConnError::BadCsr)?;
        let not_after = now.saturating_add(ttl.as_millis() as i64);
        state
            .store
            .spend_token(
                &site,
                &token,
                NewCert {
                    serial: &pki::normalize_serial(&serial),
                    not_after,
                },
                now,
            )?
            .map_err(ConnError::Refused)?;
        Ok(cert)
    })
    .await?
}

async fn hello(ctx: &Rc<Ctx>, io: &TlsIo, site: &str) -> Result<(), ConnError> {
    let cert = io
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(ConnError::NoClientCert)?;
    let info = pki::site_cert_info(cert).ok_or(ConnError::BadClientCert)?;
    if info.site != site {
        return Err(ConnError::Refused(Refusal::CertSiteMismatch));
    }
    let (state, clock, site) = (ctx.state.clone(), ctx.clock.clone(), site.to_string());
    blocking(move || state.store.check_cert(&site, &info.serial, clock.now_ms()))
        .await??
        .map_err(ConnError::Refused)
}

/// Passes an authenticated connection to the data plane with its session
/// keys. Control's own descriptor closes when `io` drops; the socket lives
/// on in the data plane.
fn hand_off(ctx: &Ctx, io: TlsIo, site: &str, peer: SocketAddr) {
    use std::os::fd::AsRawFd;
    let conn_id = ctx.conn_ids.get() + 1;
    ctx.conn_ids.set(conn_id);
    let secrets = match io
        .conn
        .export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
    {
        Ok(s) => zeroize::Zeroizing::new(s),
        Err(e) => {
            warn!(%peer, %site, error = %e, "key export failed; closing");
            let _ = io.stream.shutdown(Shutdown::Both);
            return;
        }
    };
    match ctx
        .dataplane
        .hand_off(site, secrets, conn_id, io.stream.as_raw_fd())
    {
        Ok(shard) => {
            info!(%peer, %site, conn_id, shard, "site authenticated; tunnel handed to the data plane")
        }
        Err(e) => {
            warn!(%peer, %site, error = %e, "hand-off failed; closing");
            let _ = io.stream.shutdown(Shutdown::Both);
        }
    }
}
