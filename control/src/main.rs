//! `revtun-control`: the host control process.

use anyhow::Context;
use clap::Parser;
use revtun_control::clock::SystemClock;
use revtun_control::dataplane::{DataPlane, Launch};
use revtun_control::server::{self, ServerOptions};
use revtun_control::{limits, state, HostState};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// revtun host control: accepts sites on the tunnel port (TLS 1.3), spends
/// enrollment tokens, checks site certificates.
#[derive(Debug, Parser)]
#[command(name = "revtun-control", version)]
struct Args {
    /// Settings from a TOML file: each key is a flag's name with '_'
    /// (`rtsp_listen = "0.0.0.0:8554"`), repeatable flags take arrays;
    /// flags given here override it (examples/host.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the flags and the --config file (every key and value), print
    /// the result and exit 0 (valid) or 1, without starting anything.
    #[arg(long)]
    check_config: bool,
    /// Host state directory (created by 'revtun-keytool init').
    #[arg(long, env = "REVTUN_STATE_DIR", default_value = state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Address of the tunnel listener. Port 0 picks a free port; the bound
    /// address is printed on stdout as 'listening on ADDR'.
    #[arg(long, default_value = "0.0.0.0:5500")]
    listen: SocketAddr,
    /// Total deadline for TLS plus enrollment or hello.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// A connection that sends nothing for this long after accept is
    /// closed (within --handshake-timeout).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    first_byte_timeout: Duration,
    /// Handshakes in progress at once, overall.
    #[arg(long, default_value_t = limits::MAX_PENDING_HANDSHAKES)]
    max_pending: usize,
    /// Handshakes in progress at once from one source address.
    #[arg(long, default_value_t = limits::MAX_PENDING_PER_ADDR)]
    max_pending_per_addr: usize,
    /// Handshakes in progress at once from one source prefix: an IPv4 /24
    /// or an IPv6 /64 (IPv4-mapped IPv6 addresses count as IPv4).
    #[arg(long, default_value_t = limits::MAX_PENDING_PER_PREFIX)]
    max_pending_per_prefix: usize,
    /// Handshakes one source prefix (/24, /64) may start per second, in
    /// bursts of as many; more are closed at once (0: no limit). Also
    /// accepted under its old name, --handshake-rate-per-addr.
    #[arg(long, alias = "handshake-rate-per-addr", default_value_t = limits::HANDSHAKES_PER_PREFIX_PER_SEC)]
    handshake_rate_per_prefix: u32,
    /// Validity of site certificates issued at enrollment.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    site_cert_ttl: Duration,
    /// Host port for a site's TCP service: SITE/SERVICE=ADDR:PORT (repeatable).
    /// A client connecting there reaches SERVICE at SITE through its tunnel.
    #[arg(long, value_parser = revtun_proto::expose::parse_expose)]
    expose: Vec<revtun_proto::expose::Expose>,
    /// Host redirector (RTSP) address: viewers open rtsp://ADDR/SITE/CAMERA.
    #[arg(long)]
    rtsp_listen: Option<SocketAddr>,
    /// Host redirector over TLS (RTSPS) address: viewers open
    /// rtsps://ADDR/SITE/CAMERA. Needs --rtsps-cert and --rtsps-key.
    #[arg(long)]
    rtsps_listen: Option<SocketAddr>,
    /// RTSPS certificate chain, PEM (leaf first); the data plane reads it
    /// at each start.
    #[arg(long, value_name = "FILE")]
    rtsps_cert: Option<PathBuf>,
    /// RTSPS private key, PEM (PKCS#8, PKCS#1 or SEC1); the data plane
    /// reads it at each start (only its path is passed on).
    #[arg(long, value_name = "FILE")]
    rtsps_key: Option<PathBuf>,
    /// Data-plane metrics (Prometheus text) at http://ADDR/metrics; bind
    /// it to loopback or a management network.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Require `Authorization: Bearer TOKEN` for metrics; the token is the
    /// first line of this file (never on the command line).
    #[arg(long)]
    metrics_token_file: Option<PathBuf>,
    /// Tunnel settings (both ends; the data plane gets them).
    #[command(flatten)]
    tunnel: revtun_dataplane::config::TunnelArgs,
    /// Redirector settings (the data plane gets them).
    #[command(flatten)]
    video: revtun_dataplane::config::VideoArgs,
    /// Data-plane shards (one glommio executor each); default: one per CPU.
    #[arg(long)]
    shards: Option<usize>,
    /// Pin data-plane shard k to CPU k.
    #[arg(long)]
    pin: bool,
    /// Data-plane shards busy-poll this long before sleeping (lower latency, more CPU).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    spin: Duration,
    /// Path of revtun-dataplane (default: next to this binary).
    #[arg(long)]
    dataplane: Option<PathBuf>,
    /// Nice value for control's own threads after the data plane started
    /// (handshake floods then cost control CPU, not data-plane CPU).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    nice: i32,
    /// Fleet mode: the site store lives in this etcd (client URLs,
    /// comma-separated), shared by every host of the fleet; written to
    /// STATE_DIR/fleet.toml so the keytool follows. Without it, a state
    /// directory with a fleet.toml is in that fleet; with neither, the
    /// store is STATE_DIR/sites.db (docs/fleet.md).
    #[arg(long, value_name = "URL[,URL...]", value_parser = parse_fleet)]
    fleet: Option<String>,
    /// This host's name in the fleet (its registrations in etcd); default:
    /// the machine's hostname.
    #[arg(long, value_parser = parse_host_id)]
    host_id: Option<String>,
    /// In a fleet: where this host takes peer links from the other hosts
    /// (mutual TLS with host certificates of the fleet CA); expose-port
    /// clients and viewers on other hosts reach this host's sites through
    /// it. Without it this host still forwards to the others but is not
    /// forwarded to. Keep it on the fleet's own network.
    #[arg(long, value_name = "ADDR:PORT")]
    peer_listen: Option<std::net::SocketAddr>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env = "REVTUN_LOG", default_value = "info")]
    log_level: String,
    /// Log line format: text, or json (one object per line; the data
    /// plane logs the same way).
    #[arg(long, env = "REVTUN_LOG_FORMAT", value_enum, default_value_t = revtun_dataplane::logging::LogFormat::Text)]
    log_format: revtun_dataplane::logging::LogFormat,
}

fn parse_fleet(s: &str) -> Result<String, String> {
    revtun_control::fleet::parse_endpoints(s).map(|v| v.join(","))
}

fn parse_host_id(s: &str) -> Result<String, String> {
    revtun_proto::validate_host_id(s).map(|()| s.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    revtun_proto::duration::parse(s)
}

fn main() {
    use clap::CommandFactory;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let checking = argv.iter().any(|a| a == "--check-config");
    let fail = |e: String| -> ! {
        if checking {
            eprintln!("revtun-control: configuration invalid: {}", e.trim_end());
        } else {
            eprintln!("revtun-control: {}", e.trim_end());
        }
        std::process::exit(if checking { 1 } else { 2 });
    };
    let expanded =
        revtun_dataplane::config_file::expand(argv.clone(), &Args::command(), None, &[], |_| false)
            .unwrap_or_else(|e| fail(e.to_string()));
    let parsed = Args::command()
        .try_get_matches_from(expanded)
        .and_then(|m| clap::FromArgMatches::from_arg_matches(&m).map(|a: Args| (a, m)));
    let (args, matches) = match parsed {
        Ok(x) => x,
        Err(e) if checking => fail(e.to_string()),
        Err(e) => e.exit(),
    };
    if let Err(e) = server_options(&args) {
        fail(format!("{e:#}"));
    }
    if args.check_config {
        println!("configuration ok");
        return;
    }
    if let Err(e) = run(args, matches, argv) {
        eprintln!("revtun-control: {}", revtun_proto::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

fn launch(args: &Args, matches: &clap::ArgMatches) -> anyhow::Result<(Launch, Paths)> {
    let program = match &args.dataplane {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("revtun-dataplane"))
            .context("cannot locate revtun-dataplane; pass --dataplane")?,
    };
    if !program.exists() {
        anyhow::bail!("{} not found; pass --dataplane PATH", program.display());
    }
    let shards = args.shards.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if shards == 0 || shards > 256 {
        anyhow::bail!("--shards must be between 1 and 256");
    }
    // The data plane binds these; a taken address is reported here, once,
    // and control exits non-zero, instead of running on without the port
    // or with a data plane that keeps failing.
    let mut wanted: Vec<(std::net::SocketAddr, String)> = Vec::new();
    for (addr, what) in [
        (args.rtsp_listen, "RTSP"),
        (args.rtsps_listen, "RTSPS"),
        (args.metrics_listen, "metrics"),
    ] {
        if let Some(a) = addr {
            wanted.push((a, what.to_string()));
        }
    }
    for e in &args.expose {
        wanted.push((
            e.listen,
            format!("the service port {}/{}", e.site, e.service),
        ));
    }
    for (a, what) in wanted.iter().filter(|(a, _)| a.port() != 0) {
        bindable(*a).with_context(|| format!("cannot listen for {what} on {a}"))?;
    }
    if let (Some(rtsp), false) = (
        args.rtsp_listen.or(args.rtsps_listen),
        args.video.tcp_only_viewers,
    ) {
        for (port, what) in [(args.video.rtp_port, "RTP"), (args.video.rtcp_port, "RTCP")] {
            if port != 0 {
                let a = SocketAddr::new(rtsp.ip(), port);
                std::net::UdpSocket::bind(a).with_context(|| {
                    format!("cannot bind the {what} port for UDP viewers on {a} (--{}-port; --tcp-only-viewers turns UDP off)", what.to_lowercase())
                })?;
            }
        }
    }
    let mut paths: Paths = Vec::new();
    match (args.rtsps_listen, &args.rtsps_cert, &args.rtsps_key) {
        (None, None, None) => {}
        (Some(_), Some(cert), Some(key)) => {
            // Checked here, so a bad file stops control at start instead
            // of a data plane that keeps exiting. Only the paths go on.
            revtun_control::tls::check_rtsps_files(cert, key).map_err(anyhow::Error::msg)?;
            paths.push((
                "rtsps-cert",
                std::path::absolute(cert)?.display().to_string(),
            ));
            paths.push(("rtsps-key", std::path::absolute(key)?.display().to_string()));
        }
        _ => anyhow::bail!(
            "--rtsps-listen, --rtsps-cert and --rtsps-key go together; give all three or none"
        ),
    }
    if let Some(f) = &args.metrics_token_file {
        // Checked here, so a bad file stops control at start.
        let token = zeroize::Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("--metrics-token-file {}", f.display()))?,
        );
        if token.lines().next().unwrap_or("").trim().is_empty() {
            anyhow::bail!("--metrics-token-file {}: empty token", f.display());
        }
        paths.push((
            "metrics-token-file",
            std::path::absolute(f)?.display().to_string(),
        ));
    }
    // One serialized message: every data-plane flag that control has, with
    // the value control was given (or its default), as the settings file
    // the data plane reads. A flag declared on both flows with no code here.
    let text = dataplane_settings(matches, matches, &paths);
    let file = args.state_dir.join("dataplane.toml");
    revtun_control::state::write_file(&file, text.as_bytes(), 0o600)?;
    let extra = vec![format!(
        "--config={}",
        std::path::absolute(&file)?.display()
    )];
    Ok((
        Launch {
            program,
            shards,
            args: extra,
        },
        paths,
    ))
}

/// Makes `STATE_DIR/status.sock` (mode 0600) for `revtun-keytool status`;
/// every data plane inherits it. A socket left by an earlier run is
/// replaced.
fn status_socket(dir: &std::path::Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("status.sock");
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the old {}", path.display()))
        }
        _ => {}
    }
    let l = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot make {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    // The data plane inherits it (only the supervisor forks).
    nix::fcntl::fcntl(
        &l,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )?;
    Ok(l)
}

/// Whether the data plane can bind `a`: a bind as its listeners do it
/// (`SO_REUSEADDR`, so TIME_WAIT does not count; `SO_REUSEPORT`, so a
/// port this user holds for sharing does not either), released at once.
fn bindable(a: SocketAddr) -> std::io::Result<()> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    let family = if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::ReusePort, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(a))?;
    Ok(())
}

/// Files handed to the data plane by absolute path: (flag, path).
type Paths = Vec<(&'static str, String)>;

/// Settings that change only at a restart: on reload their running values
/// stay (in control and in the data plane's file) and the log names them.
const RESTART_ONLY: &[&str] = &[
    "listen",
    "fleet",
    "host-id",
    "peer-listen",
    "state-dir",
    "rtsp-listen",
    "rtsps-listen",
    "rtsps-cert",
    "rtsps-key",
    "metrics-listen",
    "metrics-token-file",
    "shards",
    "pin",
    "spin",
    "dataplane",
    "nice",
    "log-format",
    "rtp-port",
    "rtcp-port",
    "tcp-only-viewers",
    "multicast-range",
    "multicast-ttl",
    "multicast-port",
];

/// The raw values of control's flag `--long` in `m`.
fn raw_values(m: &clap::ArgMatches, long: &str) -> Option<Vec<String>> {
    use clap::CommandFactory;
    let cmd = Args::command();
    let arg = cmd.get_arguments().find(|a| a.get_long() == Some(long))?;
    let raw = m.get_raw(arg.get_id().as_str())?;
    Some(raw.map(|v| v.to_string_lossy().into_owned()).collect())
}

/// The pending-handshake limits and deadlines, checked.
fn server_options(args: &Args) -> anyhow::Result<ServerOptions> {
    if args.max_pending == 0 || args.max_pending_per_addr == 0 || args.max_pending_per_prefix == 0 {
        anyhow::bail!(
            "--max-pending, --max-pending-per-addr and --max-pending-per-prefix must be at least 1"
        );
    }
    if args.first_byte_timeout.is_zero() || args.handshake_timeout.is_zero() {
        anyhow::bail!("--first-byte-timeout and --handshake-timeout must be more than 0");
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        anyhow::bail!("bad --log-level {:?}: {e}", args.log_level);
    }
    Ok(ServerOptions {
        handshake_timeout: args.handshake_timeout,
        first_byte_timeout: args.first_byte_timeout,
        max_pending: args.max_pending,
        max_pending_per_addr: args.max_pending_per_addr,
        max_pending_per_prefix: args.max_pending_per_prefix,
        handshake_rate_per_prefix: args.handshake_rate_per_prefix,
        site_cert_ttl: args.site_cert_ttl,
    })
}

/// SIGHUP: what control needs to read its settings again and apply them.
struct Reloader {
    /// The command line control was started with.
    argv: Vec<std::ffi::OsString>,
    /// The settings control started with (restart-only values come from it).
    base: clap::ArgMatches,
    /// The service ports in force.
    exposes: Vec<revtun_proto::expose::Expose>,
    paths: Paths,
    file: PathBuf,
}

impl Reloader {
    /// Parses the command line and its file again and, if every value is
    /// good and every new service port binds, rewrites the data plane's
    /// settings file and sets control's log level; returns the options to
    /// apply and a summary. On error nothing changed.
    fn reload(&mut self) -> Result<(ServerOptions, String), String> {
        use clap::CommandFactory;
        let expanded = revtun_dataplane::config_file::expand(
            self.argv.clone(),
            &Args::command(),
            None,
            &[],
            |_| false,
        )
        .map_err(|e| e.to_string())?;
        let m = Args::command()
            .try_get_matches_from(expanded)
            .map_err(|e| e.to_string().trim_end().to_string())?;
        let args: Args = clap::FromArgMatches::from_arg_matches(&m).map_err(|e| e.to_string())?;
        let opts = server_options(&args).map_err(|e| format!("{e:#}"))?;
        let added: Vec<&revtun_proto::expose::Expose> = args
            .expose
            .iter()
            .filter(|e| !self.exposes.contains(e))
            .collect();
        let removed = self
            .exposes
            .iter()
            .filter(|e| !args.expose.contains(e))
            .count();
        for e in added.iter().filter(|e| e.listen.port() != 0) {
            bindable(e.listen).map_err(|err| {
                format!(
                    "cannot listen for the service port {}/{} on {}: {err}",
                    e.site, e.service, e.listen
                )
            })?;
        }
        let text = dataplane_settings(&m, &self.base, &self.paths);
        revtun_control::state::write_file(&self.file, text.as_bytes(), 0o600)
            .map_err(|e| e.to_string())?;
        revtun_dataplane::logging::set_level(&args.log_level)?;
        let frozen: Vec<String> = RESTART_ONLY
            .iter()
            .filter(|l| raw_values(&m, l) != raw_values(&self.base, l))
            .map(|l| format!("--{l}"))
            .collect();
        let mut summary = format!("service ports +{} -{}", added.len(), removed);
        if !frozen.is_empty() {
            summary.push_str(&format!(
                "; changed but applied only at a restart: {}",
                frozen.join(" ")
            ));
        }
        self.exposes = args.expose;
        Ok((opts, summary))
    }
}

/// The data plane's settings file: for each flag of `revtun-dataplane`
/// that control also has, control's value (`paths` replaces a value, for
/// files made absolute).
/// For restart-only flags ([`RESTART_ONLY`]) the value comes from `base`
/// (the settings control started with).
fn dataplane_settings(
    m: &clap::ArgMatches,
    base: &clap::ArgMatches,
    paths: &[(&str, String)],
) -> String {
    use clap::{ArgAction, CommandFactory};
    let control = Args::command();
    let mut out =
        String::from("# Written by revtun-control for its data plane at each start and reload.\n");
    for arg in revtun_dataplane::args::DataPlaneArgs::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "control-fd" | "status-fd" | "config" | "check-config") {
            continue;
        }
        let key = long.replace('-', "_");
        if let Some((_, v)) = paths.iter().find(|(k, _)| *k == long) {
            out.push_str(&format!("{key} = {}\n", toml::Value::String(v.clone())));
            continue;
        }
        let Some(ours) = control.get_arguments().find(|a| a.get_long() == Some(long)) else {
            continue;
        };
        let from = if RESTART_ONLY.contains(&long) {
            base
        } else {
            m
        };
        let Some(raw) = from.get_raw(ours.get_id().as_str()) else {
            continue;
        };
        let values: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let line = match arg.get_action() {
            ArgAction::SetTrue => format!("{key} = {}", values.iter().any(|v| v == "true")),
            ArgAction::Append => format!(
                "{key} = {}",
                toml::Value::Array(values.into_iter().map(toml::Value::String).collect())
            ),
            _ => match values.into_iter().next() {
                Some(v) => format!("{key} = {}", toml::Value::String(v)),
                None => continue,
            },
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn run(args: Args, matches: clap::ArgMatches, argv: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    // First: SIGHUP's default action would end control.
    let hup = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("installing the SIGHUP handler")?;
    revtun_dataplane::logging::init("revtun-control", &args.log_level, args.log_format);
    let opts = server_options(&args)?;
    if args.max_pending_per_prefix.saturating_mul(4) > args.max_pending {
        tracing::warn!(
            max_pending = args.max_pending,
            max_pending_per_prefix = args.max_pending_per_prefix,
            "one source prefix may hold more than a quarter of the pending handshakes"
        );
    }
    let fleet = args
        .fleet
        .as_deref()
        .map(revtun_control::fleet::parse_endpoints)
        .transpose()
        .map_err(anyhow::Error::msg)?
        .map(revtun_control::fleet::FleetConfig::new);
    if let Some(f) = &fleet {
        // The keytool on this directory follows the fleet from now on.
        let current = revtun_control::fleet::FleetConfig::load(&args.state_dir)
            .map_err(anyhow::Error::msg)?;
        if current.as_ref() != Some(f) {
            f.save(&args.state_dir)?;
        }
    }
    let state = Arc::new(HostState::load_with(&args.state_dir, fleet)?);
    if let Some(f) = state.store.fleet() {
        match f.join(&state.ca.fingerprint()) {
            Ok(true) => {
                tracing::info!(endpoints = ?f.config().endpoints, "fleet mode: the site store is in etcd")
            }
            Ok(false) => {
                tracing::warn!(endpoints = ?f.config().endpoints, "fleet mode: etcd cannot be reached now; serving, and registering when it can")
            }
            Err(e) => anyhow::bail!(e),
        }
    }
    let listener =
        server::bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let status = status_socket(&args.state_dir)?;
    let (mut how, paths) = launch(&args, &matches)?;
    how.args.push(format!("--status-fd={}", status.as_raw_fd()));
    let dataplane = DataPlane::start(how).context("starting the data plane")?;
    if let Some(f) = state.store.fleet() {
        let host_id = match &args.host_id {
            Some(h) => h.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(|h| parse_host_id(&h.trim().to_ascii_lowercase()).ok())
                .context("this machine's hostname is not a usable host id; pass --host-id")?,
        };
        tracing::info!(host = %host_id, "fleet host id");
        let peer_listener = args
            .peer_listen
            .map(|a| {
                revtun_control::peer::bind(a)
                    .with_context(|| format!("cannot listen for peer links on {a}"))
            })
            .transpose()?;
        let peer_addr = peer_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        if let Some(a) = peer_addr {
            tracing::info!(listen = %a, "peer links listening");
            let mut out = std::io::stdout().lock();
            writeln!(out, "peer links listening on {a}")?;
            out.flush()?;
        }
        f.start_presence(
            host_id.clone(),
            (
                local.to_string(),
                peer_addr.map(|a| a.to_string()),
                dataplane.shards() as u16,
            ),
            args.state_dir.join("status.sock"),
        );
        revtun_control::peer::start(
            host_id,
            state.clone(),
            dataplane.clone(),
            peer_listener,
            args.state_dir.join("status.sock"),
        )?;
    } else if args.peer_listen.is_some() {
        anyhow::bail!("--peer-listen needs a fleet (--fleet, or a state directory in one)");
    }
    let mut reloader = Reloader {
        file: args.state_dir.join("dataplane.toml"),
        argv,
        base: matches,
        exposes: args.expose.clone(),
        paths,
    };
    // The supervisor thread started above keeps the default priority, so
    // restarted data planes do too; only control's handshake threads (this
    // one and those it spawns from now on) yield to the data plane.
    revtun_control::priority::lower_this_thread(args.nice);
    tracing::info!(listen = %local, ca = %state.ca.fingerprint(), "control listening");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}")?;
        out.flush()?;
    }
    server::serve(
        listener,
        state,
        Arc::new(SystemClock::default()),
        opts,
        dataplane,
        server::Reload {
            requested: hup,
            apply: Box::new(move || reloader.reload()),
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_defaults_are_the_named_limits() {
        let a = Args::parse_from(["revtun-control"]);
        assert_eq!(a.handshake_timeout, limits::HANDSHAKE_TIMEOUT);
        assert_eq!(a.first_byte_timeout, limits::FIRST_BYTE_TIMEOUT);
        assert_eq!(a.max_pending_per_prefix, limits::MAX_PENDING_PER_PREFIX);
        assert_eq!(
            a.handshake_rate_per_prefix,
            limits::HANDSHAKES_PER_PREFIX_PER_SEC
        );
    }

    #[test]
    fn the_old_rate_flag_name_still_works() {
        let a = Args::parse_from(["revtun-control", "--handshake-rate-per-addr", "7"]);
        assert_eq!(a.handshake_rate_per_prefix, 7);
    }
}
