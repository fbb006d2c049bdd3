//! `revtun-control`: the host control process.

use anyhow::Context;
use clap::Parser;
use revtun_control::clock::SystemClock;
use revtun_control::dataplane::{DataPlane, Launch};
use revtun_control::server::{self, ServerOptions};
use revtun_control::{limits, state, HostState};
use std::io::Write;
use std::net::SocketAddr;
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
    /// Serve RTSP viewers without credentials: anyone who reaches the RTSP
    /// port watches every camera of every site. Off by default; viewers
    /// are added with `revtun-keytool viewer add`.
    #[arg(long)]
    allow_anonymous_viewers: bool,
    /// RTSP connections at once, all sources (data plane default 10,000,
    /// capped to half the descriptors left after a reserve).
    #[arg(long)]
    max_rtsp_sessions: Option<usize>,
    /// RTSP connections at once from one address (default 64; 0 = no limit).
    #[arg(long)]
    max_rtsp_sessions_per_addr: Option<usize>,
    /// Viewers of one camera at once (default 2,000; 0 = no limit).
    #[arg(long)]
    max_viewers_per_camera: Option<usize>,
    /// Deadline of each RTSP request and reply before PLAY (default 10s).
    #[arg(long, value_parser = parse_duration)]
    rtsp_request_timeout: Option<Duration>,
    /// Live camera streams per site; more are refused with RTSP 453 [default: 16].
    #[arg(long)]
    max_site_streams: Option<usize>,
    /// Bit rate a site's live camera streams may use together before new
    /// streams are refused with RTSP 453, e.g. 40M [default: 0 = no limit].
    #[arg(long, value_parser = revtun_proto::duration::parse_rate)]
    max_site_bandwidth: Option<u64>,
    /// Bytes queued per viewer before it skips to the next keyframe [default: 8 MiB].
    #[arg(long)]
    viewer_queue_bytes: Option<usize>,
    /// Age of a viewer's oldest queued frame before it skips to the next keyframe [default: 2s].
    #[arg(long, value_parser = parse_duration)]
    viewer_queue_age: Option<Duration>,
    /// A viewer whose socket takes nothing for this long is disconnected [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    viewer_stuck: Option<Duration>,
    /// A camera stream stays open this long after its last viewer left [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    video_linger: Option<Duration>,
    /// Data-plane shards (one glommio executor each); default: one per CPU.
    #[arg(long)]
    shards: Option<usize>,
    /// Pin data-plane shard k to CPU k.
    #[arg(long)]
    pin: bool,
    /// Data-plane shards busy-poll this long before sleeping (lower latency, more CPU).
    #[arg(long, value_parser = parse_duration)]
    spin: Option<Duration>,
    /// Path of revtun-dataplane (default: next to this binary).
    #[arg(long)]
    dataplane: Option<PathBuf>,
    /// Tunnel receive window per stream, bytes.
    #[arg(long)]
    stream_window: Option<u32>,
    /// Tunnel receive window per tunnel, bytes.
    #[arg(long)]
    tunnel_window: Option<u32>,
    /// Largest a stream's receive window grows to, bytes.
    #[arg(long)]
    max_stream_window: Option<u32>,
    /// Largest a tunnel's receive window grows to, bytes.
    #[arg(long)]
    max_tunnel_window: Option<u32>,
    /// Streams a site may have open at once.
    #[arg(long)]
    max_streams: Option<u32>,
    /// New streams per second per site tunnel at most (expose-port clients
    /// beyond get a reset); under half the site's --max-stream-churn.
    #[arg(long)]
    max_stream_opens: Option<u32>,
    /// Tunnel heartbeat interval.
    #[arg(long, value_parser = parse_duration)]
    heartbeat: Option<Duration>,
    /// Declare a tunnel dead after this long without a frame.
    #[arg(long, value_parser = parse_duration)]
    dead_after: Option<Duration>,
    /// Nice value for control's own threads after the data plane started
    /// (handshake floods then cost control CPU, not data-plane CPU).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    nice: i32,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env = "REVTUN_LOG", default_value = "info")]
    log_level: String,
    /// Log line format: text, or json (one object per line; the data
    /// plane logs the same way).
    #[arg(long, env = "REVTUN_LOG_FORMAT", value_enum, default_value_t = revtun_dataplane::logging::LogFormat::Text)]
    log_format: revtun_dataplane::logging::LogFormat,
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
        revtun_dataplane::config_file::expand(argv, &Args::command(), None, &[], |_| false)
            .unwrap_or_else(|e| fail(e.to_string()));
    let args = match Args::try_parse_from(expanded) {
        Ok(a) => a,
        Err(e) if checking => fail(e.to_string()),
        Err(e) => e.exit(),
    };
    if args.check_config {
        println!("configuration ok");
        return;
    }
    if let Err(e) = run(args) {
        eprintln!("revtun-control: {}", revtun_proto::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

fn launch(args: &Args) -> anyhow::Result<Launch> {
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
    let mut extra: Vec<String> = args
        .expose
        .iter()
        .map(|e| format!("--expose={e}"))
        .collect();
    extra.push(format!("--log-level={}", args.log_level));
    extra.push(format!("--log-format={}", args.log_format.as_str()));
    if args.pin {
        extra.push("--pin".into());
    }
    // The data plane binds these; a taken address is reported here, once,
    // and control exits non-zero, instead of running on without the port
    // or with a data plane that keeps failing. (std binds with
    // SO_REUSEADDR, as the data plane does: TIME_WAIT does not count.)
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
        std::net::TcpListener::bind(a)
            .with_context(|| format!("cannot listen for {what} on {a}"))?;
    }
    if let Some(a) = args.rtsp_listen {
        extra.push(format!("--rtsp-listen={a}"));
    }
    match (args.rtsps_listen, &args.rtsps_cert, &args.rtsps_key) {
        (None, None, None) => {}
        (Some(a), Some(cert), Some(key)) => {
            // Checked here, so a bad file stops control at start instead
            // of a data plane that keeps exiting. Only the paths go on.
            revtun_control::tls::check_rtsps_files(cert, key).map_err(anyhow::Error::msg)?;
            extra.push(format!("--rtsps-listen={a}"));
            extra.push(format!(
                "--rtsps-cert={}",
                std::path::absolute(cert)?.display()
            ));
            extra.push(format!(
                "--rtsps-key={}",
                std::path::absolute(key)?.display()
            ));
        }
        _ => anyhow::bail!(
            "--rtsps-listen, --rtsps-cert and --rtsps-key go together; give all three or none"
        ),
    }
    if let Some(a) = args.metrics_listen {
        extra.push(format!("--metrics-listen={a}"));
    }
    if args.allow_anonymous_viewers {
        extra.push("--allow-anonymous-viewers".into());
    }
    extra.extend(
        [
            opt_num("max-rtsp-sessions", args.max_rtsp_sessions),
            opt_num(
                "max-rtsp-sessions-per-addr",
                args.max_rtsp_sessions_per_addr,
            ),
            opt_num("max-viewers-per-camera", args.max_viewers_per_camera),
            args.rtsp_request_timeout
                .map(|d| format!("--rtsp-request-timeout={}ms", d.as_millis())),
        ]
        .into_iter()
        .flatten(),
    );
    if let Some(f) = &args.metrics_token_file {
        // Checked here, so a bad file stops control at start.
        let token = zeroize::Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("--metrics-token-file {}", f.display()))?,
        );
        if token.lines().next().unwrap_or("").trim().is_empty() {
            anyhow::bail!("--metrics-token-file {}: empty token", f.display());
        }
        extra.push(format!("--metrics-token-file={}", f.display()));
    }
    let ms = |d: Option<Duration>| d.map(|d| format!("{}ms", d.as_millis()));
    let opt = |name: &str, v: Option<String>| v.map(|v| format!("--{name}={v}"));
    extra.extend(
        [
            opt("stream-window", args.stream_window.map(|v| v.to_string())),
            opt("tunnel-window", args.tunnel_window.map(|v| v.to_string())),
            opt(
                "max-stream-window",
                args.max_stream_window.map(|v| v.to_string()),
            ),
            opt(
                "max-tunnel-window",
                args.max_tunnel_window.map(|v| v.to_string()),
            ),
            opt("max-streams", args.max_streams.map(|v| v.to_string())),
            opt(
                "max-stream-opens",
                args.max_stream_opens.map(|v| v.to_string()),
            ),
            opt(
                "heartbeat",
                args.heartbeat.map(|d| format!("{}ms", d.as_millis())),
            ),
            opt(
                "dead-after",
                args.dead_after.map(|d| format!("{}ms", d.as_millis())),
            ),
            opt(
                "max-site-streams",
                args.max_site_streams.map(|v| v.to_string()),
            ),
            opt(
                "max-site-bandwidth",
                args.max_site_bandwidth.map(|v| v.to_string()),
            ),
            opt(
                "viewer-queue-bytes",
                args.viewer_queue_bytes.map(|v| v.to_string()),
            ),
            opt("viewer-queue-age", ms(args.viewer_queue_age)),
            opt("viewer-stuck", ms(args.viewer_stuck)),
            opt("video-linger", ms(args.video_linger)),
        ]
        .into_iter()
        .flatten(),
    );
    Ok(Launch {
        program,
        shards,
        args: extra,
    })
}

fn opt_num(name: &str, v: Option<usize>) -> Option<String> {
    v.map(|v| format!("--{name}={v}"))
}

fn run(args: Args) -> anyhow::Result<()> {
    revtun_dataplane::logging::init("revtun-control", &args.log_level, args.log_format);
    if args.max_pending == 0 || args.max_pending_per_addr == 0 || args.max_pending_per_prefix == 0 {
        anyhow::bail!(
            "--max-pending, --max-pending-per-addr and --max-pending-per-prefix must be at least 1"
        );
    }
    if args.first_byte_timeout.is_zero() || args.handshake_timeout.is_zero() {
        anyhow::bail!("--first-byte-timeout and --handshake-timeout must be more than 0");
    }
    if args.max_pending_per_prefix.saturating_mul(4) > args.max_pending {
        tracing::warn!(
            max_pending = args.max_pending,
            max_pending_per_prefix = args.max_pending_per_prefix,
            "one source prefix may hold more than a quarter of the pending handshakes"
        );
    }
    let state = Arc::new(HostState::load(&args.state_dir)?);
    let listener =
        server::bind(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let opts = ServerOptions {
        handshake_timeout: args.handshake_timeout,
        first_byte_timeout: args.first_byte_timeout,
        max_pending: args.max_pending,
        max_pending_per_addr: args.max_pending_per_addr,
        max_pending_per_prefix: args.max_pending_per_prefix,
        handshake_rate_per_prefix: args.handshake_rate_per_prefix,
        site_cert_ttl: args.site_cert_ttl,
    };
    let dataplane = DataPlane::start(launch(&args)?).context("starting the data plane")?;
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
