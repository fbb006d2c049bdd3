//! The host data plane: one glommio executor per shard. A shard owns the
//! tunnels of the sites that hash to it and those sites' service ports, so
//! a client connection and its tunnel always meet on one core.
//!
//! Each shard reads hand-offs from its own Unix socket to control
//! (SOCK_SEQPACKET): a tunnel socket (`SCM_RIGHTS`) with its session
//! secrets, or a revocation. When control goes away the shard exits, and so
//! does the process; control restarts it.

use crate::config::Expose;
use crate::metrics::{Board, Sample};
use crate::tunnel::{Role, Spec, StreamError, Tunnel};
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use revtun_proto::handoff::{shard_for, Handoff, MAX_HANDOFF_LEN};
use revtun_proto::record::{Side, RATCHET_INTERVAL};
use revtun_proto::tunnel::{Config, OpenError};
use std::collections::{HashMap, VecDeque};
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Host data-plane settings.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Service ports.
    pub exposes: Vec<Expose>,
    /// Tunnel windows and timers.
    pub tunnel: Config,
    /// Pin shard `k` to CPU `k` (perf lab placement).
    pub pin: bool,
    /// Busy-poll this long before parking an idle executor (latency vs CPU).
    pub spin: std::time::Duration,
    /// Host redirector (RTSP) address, served by every shard (`SO_REUSEPORT`).
    pub rtsp_listen: Option<std::net::SocketAddr>,
    /// Host redirector over TLS (RTSPS), served by every shard too.
    pub rtsps: Option<Rtsps>,
    /// Redirector limits.
    pub video: crate::video::host::VideoConfig,
    /// RTP and RTCP ports for UDP viewers (`None`: TCP only).
    pub udp_ports: Option<(u16, u16)>,
    /// Multicast groups (first, count), TTL and destination port, if enabled.
    pub multicast: Option<(std::net::Ipv4Addr, u32, u8, u16)>,
    /// Metrics (Prometheus text over HTTP) address.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Who may read the metrics.
    pub metrics_access: crate::metrics::Access,
    /// The command line this process was started with: on a reload
    /// ([`Handoff::Reload`]) it is parsed again, with its `--config` file.
    pub argv: Vec<std::ffi::OsString>,
    /// The soft descriptor limit in force (set by [`run`]; RTSP caps are
    /// kept within it).
    pub nofile: u64,
}

/// The RTSPS listener: its address and TLS configuration (certificate
/// and key loaded at start, [`crate::video::wire::server_config`]).
#[derive(Debug, Clone)]
pub struct Rtsps {
    /// Listen address.
    pub listen: std::net::SocketAddr,
    /// TLS configuration shared by all shards.
    pub tls: Arc<rustls::ServerConfig>,
}

/// Raises this process's soft descriptor limit to its hard limit (a
/// systemd service starts with a soft limit of 1,024, which a few hundred
/// viewers and sites use up); returns the limits (soft, hard) in force.
pub fn raise_nofile() -> (u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (0, 0);
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return (hard, hard);
    }
    (soft, hard)
}

/// Runs one executor per control socket until control goes away.
/// `status` is the listening status socket control made
/// (`STATE_DIR/status.sock`), if any.
pub fn run(
    control_fds: Vec<OwnedFd>,
    mut cfg: HostConfig,
    status: Option<std::os::unix::net::UnixListener>,
) -> anyhow::Result<()> {
    let (soft, hard) = raise_nofile();
    tracing::info!(soft, hard, "descriptor limit");
    let shards = control_fds.len();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Every shard listens for RTSP on the same port; with port 0 the port
    // is chosen once here and held (bound, not listening, so it takes no
    // connections) for the life of the process.
    let _rtsp_port_hold = match cfg.rtsp_listen {
        Some(addr) if addr.port() == 0 && shards > 1 => {
            let (sock, bound) = reserve_port(addr)
                .map_err(|e| anyhow::anyhow!("cannot bind the RTSP port {addr}: {e}"))?;
            cfg.rtsp_listen = Some(bound);
            Some(sock)
        }
        _ => None,
    };
    let _rtsps_port_hold = match &mut cfg.rtsps {
        Some(r) if r.listen.port() == 0 && shards > 1 => {
            let (sock, bound) = reserve_port(r.listen)
                .map_err(|e| anyhow::anyhow!("cannot bind the RTSPS port {}: {e}", r.listen))?;
            r.listen = bound;
            Some(sock)
        }
        _ => None,
    };
    let mut mesh: Vec<Option<crate::video::mesh::MeshEnd>> =
        if (cfg.rtsp_listen.is_some() || cfg.rtsps.is_some()) && shards > 1 {
            crate::video::mesh::mesh(shards)
                .into_iter()
                .map(Some)
                .collect()
        } else {
            (0..shards).map(|_| None).collect()
        };
    // Always kept: the status socket reads it too.
    let board = Board::new(shards);
    if let Some(addr) = cfg.metrics_listen {
        match crate::metrics::serve(addr, board.clone(), cfg.metrics_access.clone()) {
            Ok(bound) => {
                tracing::info!(listen = %bound, "metrics listening");
                println!("metrics listening on {bound}");
                let _ = std::io::stdout().flush();
            }
            // Tunnels matter more than metrics: serve without them.
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen for metrics; running without")
            }
        }
    }
    if let Some(l) = status {
        if let Err(e) = crate::status::serve(l, board.clone()) {
            tracing::error!(error = %e, "cannot serve the status socket; running without");
        }
    }
    // One nonce key for the process: a player's next connection may land
    // on another shard.
    let nonces = {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut key[..])
            .map_err(|_| anyhow::anyhow!("no randomness for RTSP nonces"))?;
        Arc::new(revtun_proto::viewer::Nonces::new(&key))
    };
    let sessions = crate::video::sessions::Sessions::new(cfg.video.sessions.within(soft));
    // UDP viewers: one RTP and one RTCP socket for the process, on the
    // RTSP listener's address.
    let udp = match (
        cfg.udp_ports,
        cfg.rtsp_listen.or(cfg.rtsps.as_ref().map(|r| r.listen)),
    ) {
        (Some((rtp, rtcp)), Some(listen)) => {
            match crate::video::udp::Udp::bind(
                listen.ip(),
                rtp,
                rtcp,
                cfg.multicast.map(|(first, n, ttl, port)| {
                    crate::video::udp::Multicast::new(first, n, ttl, port)
                }),
            ) {
                Ok(u) => {
                    tracing::info!(rtp = u.ports.0, rtcp = u.ports.1, "rtp over udp");
                    println!("rtp udp ports {}-{}", u.ports.0, u.ports.1);
                    let _ = std::io::stdout().flush();
                    Some(u)
                }
                Err(e) => {
                    tracing::error!(rtp, rtcp, error = %e, "cannot bind the RTP/RTCP ports; viewers get RTP over TCP only");
                    None
                }
            }
        }
        _ => None,
    };
    cfg.nofile = soft;
    if cfg.rtsp_listen.is_some() {
        let l = sessions.limits();
        tracing::info!(
            total = l.total,
            per_source = l.per_source,
            per_camera = l.per_camera,
            "rtsp session limits"
        );
    }
    if cfg.rtsp_listen.is_some() && cfg.video.allow_anonymous {
        tracing::warn!("--allow-anonymous-viewers: RTSP viewers need no credentials; anyone who reaches the port watches every camera");
    }
    let mut handles = Vec::new();
    for (k, fd) in control_fds.into_iter().enumerate() {
        let cfg = cfg.clone();
        let nonces = nonces.clone();
        let sessions = sessions.clone();
        let udp = udp.clone();
        let mesh_end = mesh[k].take();
        let board = Some(board.clone());
        let placement = if cfg.pin {
            glommio::Placement::Fixed(k % cpus)
        } else {
            glommio::Placement::Unbound
        };
        let h = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("revtun-dp{k}"))
            .spin_before_park(cfg.spin)
            // No file I/O on the data plane: glommio's registered buffers
            // (10 MiB by default) would only be resident memory.
            .io_memory(crate::config::GLOMMIO_IO_MEMORY)
            .spawn(move || shard(k, shards, fd, cfg, mesh_end, board, (nonces, sessions, udp)))
            .map_err(|e| anyhow::anyhow!("cannot start shard {k}: {e}"))?;
        handles.push(h);
    }
    for h in handles {
        h.join().map_err(|e| anyhow::anyhow!("shard failed: {e}"))?;
    }
    Ok(())
}

use crate::tunnel::Registry;

/// How long a client waits for a tunnel that was just handed over to
/// show its services (its first record), instead of being refused.
pub const READY_WAIT: Duration = Duration::from_secs(2);

/// Replacements of a site's live tunnel within [`FLAP_WINDOW`] that mean
/// two agents share one identity (threat 3).
pub const FLAP_LIMIT: usize = 4;
/// Window over which replacements are counted.
pub const FLAP_WINDOW: Duration = Duration::from_secs(60);
/// How long new connections of a flapping site are refused while its
/// current tunnel is kept.
pub const FLAP_COOLDOWN: Duration = Duration::from_secs(60);

/// Per-site record of tunnels replacing each other.
#[derive(Debug, Default)]
struct Flaps {
    replaced: VecDeque<Instant>,
    quarantined_until: Option<Instant>,
}

impl Flaps {
    /// Decides whether a new connection may replace the live tunnel.
    fn admit(&mut self, site: &str, now: Instant) -> bool {
        if self.quarantined_until.is_some_and(|t| now < t) {
            tracing::warn!(%site, "refusing a connection: this site's identity is in use by another agent");
            return false;
        }
        while self
            .replaced
            .front()
            .is_some_and(|t| now.duration_since(*t) > FLAP_WINDOW)
        {
            self.replaced.pop_front();
        }
        self.replaced.push_back(now);
        if self.replaced.len() >= FLAP_LIMIT {
            tracing::error!(
                %site,
                replacements = self.replaced.len(),
                window = ?FLAP_WINDOW,
                "connections of this site keep replacing each other: two agents appear to share the identity; \
                 keeping the current tunnel and refusing new connections for a while (revoke and re-issue if the identity was copied)"
            );
            self.quarantined_until = Some(now + FLAP_COOLDOWN);
            self.replaced.clear();
            return false;
        }
        true
    }
}

/// Binds `addr` with `SO_REUSEPORT` without listening: the port is ours,
/// and the shards' listeners can share it.
fn reserve_port(
    addr: std::net::SocketAddr,
) -> std::io::Result<(socket2::Socket, std::net::SocketAddr)> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_port(true)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    let bound = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an inet address"))?;
    Ok((sock, bound))
}

/// Listens on `addr` with `SO_REUSEADDR` (an address still holding
/// TIME_WAIT sockets, of this host's last run or of the program it
/// replaces, binds) and `SO_REUSEPORT` (every shard listens on the RTSP
/// port). Must run on a glommio executor.
fn listen_reusable(addr: std::net::SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    // SAFETY: the descriptor is a listening TCP socket we own; ownership
    // moves into the glommio listener, which closes it on drop.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(sock.into_raw_fd()) })
}

/// Listens for viewers (`what`: rtsp, rtsps) on `addr`; shard 0 prints
/// the bound address. A failure is logged (control checked the address at
/// start).
fn redirector_listener(
    k: usize,
    addr: std::net::SocketAddr,
    what: &str,
) -> Option<glommio::net::TcpListener> {
    match listen_reusable(addr) {
        Ok(l) => {
            let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(shard = k, listen = %bound, "{what} redirector listening");
            if k == 0 {
                println!("{what} listening on {bound}");
                let _ = std::io::stdout().flush();
            }
            Some(l)
        }
        Err(err) => {
            tracing::error!(shard = k, %addr, error = %err, "cannot listen for {what}");
            None
        }
    }
}

/// This shard's service ports, by their `SITE/SERVICE=ADDR` text; each
/// listener's accept task closes the port when dropped.
#[derive(Default)]
struct Ports {
    open: HashMap<String, (Expose, glommio::Task<()>)>,
}

impl Ports {
    /// Makes the open ports those of `exposes` owned by shard `k`: ports
    /// no longer listed stop taking clients (streams they started go on),
    /// new ones listen. A port that cannot be bound is logged and left out.
    fn apply(&mut self, k: usize, shards: usize, exposes: &[Expose], registry: &Registry) {
        let wanted: Vec<&Expose> = exposes
            .iter()
            .filter(|e| shard_for(&e.site, shards) == k)
            .collect();
        let keep: std::collections::HashSet<String> =
            wanted.iter().map(|e| e.to_string()).collect();
        self.open.retain(|key, (e, _)| {
            let stays = keep.contains(key);
            if !stays {
                tracing::info!(shard = k, expose = %e, "service port closed (reload)");
                println!("unexposed {}/{} on {}", e.site, e.service, e.listen);
                let _ = std::io::stdout().flush();
            }
            stays
        });
        for e in wanted {
            let key = e.to_string();
            if self.open.contains_key(&key) {
                continue;
            }
            match listen_reusable(e.listen) {
                Ok(l) => {
                    let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    tracing::info!(shard = k, expose = %e, "service port listening");
                    println!("exposing {}/{} on {addr}", e.site, e.service);
                    let _ = std::io::stdout().flush();
                    let task = glommio::spawn_local(serve_port(l, e.clone(), registry.clone()));
                    self.open.insert(key, (e.clone(), task));
                }
                Err(err) => {
                    tracing::error!(shard = k, expose = %e, error = %err, "cannot listen")
                }
            }
        }
    }
}

/// What a reload changes on a shard.
struct Live {
    /// Settings of tunnels started from now on.
    tunnel: Config,
    ports: Ports,
    gate: Rc<crate::video::auth::Gate>,
    redirector: Option<Rc<crate::video::host::Redirector>>,
    sessions: Arc<crate::video::sessions::Sessions>,
}

impl Live {
    /// Reads the settings file again and applies what changes live:
    /// service ports, tunnel settings (for tunnels started from now on),
    /// redirector limits, RTSP caps, the anonymous switch, the log
    /// level. Listen addresses, RTSPS files, metrics, placement and the
    /// log format stay (control names them; it keeps their running
    /// values in the file). A file that does not parse changes nothing.
    fn reload(
        &mut self,
        (k, shards): (usize, usize),
        generation: u64,
        cfg: &HostConfig,
        registry: &Registry,
    ) {
        let a = match crate::args::DataPlaneArgs::parse_with_file(cfg.argv.clone()) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(shard = k, generation, error = %e, "reload: cannot read the settings; the running ones stay");
                return;
            }
        };
        self.ports.apply(k, shards, &a.expose, registry);
        self.tunnel = a.tunnel.config();
        let video = a.video.config();
        self.sessions.set_limits(video.sessions.within(cfg.nofile));
        self.gate.set_anonymous(video.allow_anonymous);
        if let Some(r) = &self.redirector {
            r.set_config(video);
        }
        if k == 0 {
            if let Err(e) = crate::logging::set_level(&a.log_level) {
                tracing::error!(error = %e, "reload: bad log level; the running one stays");
            }
        }
        tracing::info!(
            shard = k,
            generation,
            ports = self.ports.open.len(),
            "settings reloaded"
        );
    }
}

async fn shard(
    k: usize,
    shards: usize,
    control: OwnedFd,
    cfg: HostConfig,
    mesh: Option<crate::video::mesh::MeshEnd>,
    board: Option<Arc<Board>>,
    (nonces, sessions, udp): (
        Arc<revtun_proto::viewer::Nonces>,
        Arc<crate::video::sessions::Sessions>,
        Option<Arc<crate::video::udp::Udp>>,
    ),
) {
    let registry: Registry = Rc::default();
    let gate = crate::video::auth::Gate::new(cfg.video.allow_anonymous, nonces);
    let mut flaps: HashMap<String, Flaps> = HashMap::new();
    let mut ports = Ports::default();
    ports.apply(k, shards, &cfg.exposes, &registry);
    let mut redirector = None;
    if cfg.rtsp_listen.is_some() || cfg.rtsps.is_some() {
        let r = crate::video::host::Redirector::new(
            k,
            shards,
            registry.clone(),
            cfg.video.clone(),
            gate.clone(),
            sessions.clone(),
            udp,
        );
        redirector = Some(r.clone());
        crate::peer::shard().set_redirector(r.clone());
        if let Some(end) = mesh {
            r.join_mesh(end);
        }
        if let Some(l) = cfg
            .rtsp_listen
            .and_then(|a| redirector_listener(k, a, "rtsp"))
        {
            glommio::spawn_local(r.clone().serve(l)).detach();
        }
        if let Some(tls) = &cfg.rtsps {
            if let Some(l) = redirector_listener(k, tls.listen, "rtsps") {
                glommio::spawn_local(r.clone().serve_tls(l, tls.tls.clone())).detach();
            }
        }
    }
    if let Some(board) = board.clone() {
        glommio::spawn_local(publish(k, board, registry.clone(), redirector.clone())).detach();
    }
    // SAFETY: `control` is an open socket we own; ownership moves into the
    // glommio stream, which closes it on drop.
    let ctl_fd = control.as_raw_fd();
    let ctl = unsafe { glommio::net::UnixStream::from_raw_fd(control.into_raw_fd()) };
    let mut probe = [0u8; 1];
    let mut live = Live {
        tunnel: cfg.tunnel.clone(),
        ports,
        gate: gate.clone(),
        redirector: redirector.clone(),
        sessions: sessions.clone(),
    };
    loop {
        match ctl.peek(&mut probe).await {
            Ok(0) | Err(_) => {
                tracing::info!(shard = k, "control went away; data plane exiting");
                std::process::exit(0);
            }
            Ok(_) => {}
        }
        loop {
            match recv_handoff(ctl_fd) {
                Ok(Some((msg, fd))) => handle(
                    (k, shards),
                    &registry,
                    &mut flaps,
                    msg,
                    fd,
                    (&cfg, &mut live),
                    board.as_deref(),
                ),
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(shard = k, error = %e, "control socket failed; exiting");
                    std::process::exit(1);
                }
            }
        }
    }
}

fn handle(
    (k, shards): (usize, usize),
    registry: &Registry,
    flaps: &mut HashMap<String, Flaps>,
    msg: zeroize::Zeroizing<Vec<u8>>,
    fd: Option<OwnedFd>,
    (cfg, live): (&HostConfig, &mut Live),
    board: Option<&Board>,
) {
    let decoded = Handoff::decode(&msg);
    if let Some(m) = &decoded {
        if live.gate.on_handoff(m) {
            return;
        }
    }
    let mut fd = fd;
    let decoded = match decoded {
        Some(m) => match crate::peer::shard().on_handoff(k, m, &mut fd, registry, &live.tunnel) {
            None => return,
            other => other,
        },
        None => None,
    };
    match (decoded, fd) {
        (
            Some(Handoff::Tunnel {
                site,
                secrets,
                conn_id,
            }),
            Some(fd),
        ) => {
            let std = std::net::TcpStream::from(fd);
            if let Err(e) = std.set_nonblocking(true) {
                tracing::warn!(%site, error = %e, "handed-off socket unusable");
                return;
            }
            let connected = registry.borrow().get(&site).is_some_and(|t| !t.is_closed());
            if connected
                && !flaps
                    .entry(site.clone())
                    .or_default()
                    .admit(&site, Instant::now())
            {
                return; // dropping `std` closes the refused connection
            }
            let sock = glommio::net::TcpStream::from(socket2::Socket::from(std));
            if let Some(old) = registry.borrow_mut().remove(&site) {
                tracing::warn!(%site, conn_id, "a second connection for this site: replacing the old tunnel");
                old.close(revtun_proto::tunnel::CloseReason::Replaced);
            }
            let spec = Spec {
                side: Side::Host,
                cfg: live.tunnel.clone(),
                ratchet_interval: RATCHET_INTERVAL,
                name: site.clone(),
            };
            let t = Tunnel::start(sock, &secrets, spec, Role::Host, &[], None);
            tracing::info!(shard = k, %site, conn_id, "tunnel started");
            registry.borrow_mut().insert(site.clone(), t.clone());
            let registry = registry.clone();
            glommio::spawn_local(async move {
                t.closed().await;
                let mut r = registry.borrow_mut();
                if r.get(&site).is_some_and(|cur| cur.same(&t)) {
                    r.remove(&site);
                }
            })
            .detach();
        }
        (Some(Handoff::ControlMetrics(text)), _) => {
            if let Some(b) = board {
                b.post_control(text);
            }
        }
        (Some(Handoff::Reload { generation }), _) => {
            live.reload((k, shards), generation, cfg, registry);
        }
        (Some(Handoff::Revoke { site }), _) => {
            if let Some(t) = registry.borrow_mut().remove(&site) {
                tracing::info!(%site, "site revoked: closing its tunnel");
                t.close(revtun_proto::tunnel::CloseReason::Revoked);
            }
        }
        (decoded, _) => tracing::error!(
            shard = k,
            ?decoded,
            "malformed hand-off from control; ignored"
        ),
    }
}

/// Posts this shard's metrics snapshot to the board once a second.
async fn publish(
    k: usize,
    board: Arc<Board>,
    registry: Registry,
    redirector: Option<Rc<crate::video::host::Redirector>>,
) {
    loop {
        let shard = format!("shard=\"{k}\"");
        let mut samples: Vec<Sample> = vec![("revtun_shard_up", shard.clone(), 1)];
        for (site, t) in registry.borrow().iter().filter(|(_, t)| !t.is_closed()) {
            let l = format!("site=\"{}\",{shard}", crate::metrics::label(site));
            let st = t.stats();
            samples.extend([
                ("revtun_tunnel_up", l.clone(), 1),
                ("revtun_tunnel_bytes_in_total", l.clone(), st.bytes_in),
                ("revtun_tunnel_bytes_out_total", l.clone(), st.bytes_out),
                ("revtun_tunnel_streams", l.clone(), t.stream_count() as u64),
                ("revtun_tunnel_streams_opened_total", l, st.streams_opened),
            ]);
        }
        samples.extend(crate::tunnel::end_samples(&shard));
        let epoch = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let status = crate::status::ShardStatus {
            tunnels: registry
                .borrow()
                .iter()
                .filter(|(_, t)| !t.is_closed())
                .map(|(site, t)| {
                    let st = t.stats();
                    crate::status::TunnelStatus {
                        site: site.clone(),
                        shard: k,
                        since: epoch(t.since()),
                        peer: t.peer().map(|p| p.to_string()).unwrap_or_default(),
                        bytes_in: st.bytes_in,
                        bytes_out: st.bytes_out,
                        streams: t.stream_count() as u64,
                    }
                })
                .collect(),
            video: redirector
                .as_ref()
                .map(|r| r.video_status())
                .unwrap_or_default(),
            peers: crate::peer::shard().status(),
        };
        board.post_status(k, status);
        if let Some(r) = &redirector {
            samples.extend(r.samples(&shard));
        }
        board.post(k, samples);
        glommio::timer::sleep(Duration::from_secs(1)).await;
    }
}

/// A control message (wiped when dropped) and the socket attached to it.
type Received = (zeroize::Zeroizing<Vec<u8>>, Option<OwnedFd>);

/// Receives one message and the socket attached to it, if any.
fn recv_handoff(fd: RawFd) -> nix::Result<Option<Received>> {
    // The message may carry session secrets: received into a buffer that
    // is wiped when dropped.
    let mut buf = zeroize::Zeroizing::new([0u8; MAX_HANDOFF_LEN]);
    let mut iov = [IoSliceMut::new(&mut buf[..])];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = match recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Err(Errno::EAGAIN) => return Ok(None),
        r => r?,
    };
    let n = msg.bytes;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        // The kernel could not install the attached descriptor (ours are
        // used up): the site's connection is lost, and the log says so.
        tracing::error!(
            "hand-off lost its socket: this process's descriptor table is full (MSG_CTRUNC); \
             raise the data plane's RLIMIT_NOFILE"
        );
    }
    let mut owned: Option<OwnedFd> = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel installed `raw` in our table for this
                // message; nothing else refers to it, so we take ownership
                // (extra descriptors are closed by dropping them).
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                if owned.is_none() {
                    owned = Some(fd);
                }
            }
        }
    }
    if n == 0 && owned.is_none() {
        return Err(Errno::ECONNRESET);
    }
    Ok(Some((zeroize::Zeroizing::new(buf[..n].to_vec()), owned)))
}

/// Accepts clients on a service port and opens a stream for each.
async fn serve_port(listener: glommio::net::TcpListener, e: Expose, registry: Registry) {
    loop {
        let conn = match listener.accept().await {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(expose = %e, error = %err, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let tunnel = registry
            .borrow()
            .get(&e.site)
            .filter(|t| !t.is_closed())
            .cloned();
        match tunnel {
            Some(t) if !t.ready(READY_WAIT).await => {
                tracing::info!(expose = %e, "site connected but silent: client refused");
                crate::tunnel::reject(conn);
            }
            Some(t) => match t.open_stream(&e.service, conn) {
                Ok(_) => {}
                // A flood: one line per refused client would be a log flood.
                Err(StreamError::Open(OpenError::RateLimited)) => {
                    tracing::debug!(expose = %e, "client reset: new-stream rate of the site reached")
                }
                Err(err) => tracing::info!(expose = %e, error = %err, "client refused"),
            },
            // Held by another host of the fleet: over the peer link.
            None => match crate::peer::shard().route(&e.site) {
                Some(link) => {
                    let name = format!("{}/{}", e.site, e.service);
                    if let Err(err) = link.open_stream(&name, conn) {
                        tracing::info!(expose = %e, peer = link.name(), error = %err, "client refused");
                    }
                }
                None => {
                    tracing::info!(expose = %e, "site offline: client refused");
                    crate::tunnel::reject(conn);
                }
            },
        }
    }
}
