//! `revtun-dataplane`: the host data plane. Started and supervised by
//! `revtun-control`, which hands it authenticated tunnel sockets.

use clap::Parser;
use revtun_dataplane::config::{parse_expose, Expose, TunnelArgs, VideoArgs};
use revtun_dataplane::host::{self, HostConfig};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// revtun host data plane (started by revtun-control; not run by hand).
#[derive(Debug, Parser)]
#[command(name = "revtun-dataplane", version)]
struct Args {
    /// Unix socket to control, one per shard (inherited descriptor numbers).
    #[arg(long = "control-fd", required = true)]
    control_fds: Vec<RawFd>,
    /// Host port for a site's TCP service, SITE/SERVICE=ADDR:PORT.
    #[arg(long, value_parser = parse_expose)]
    expose: Vec<Expose>,
    /// Host redirector (RTSP) listen address.
    #[arg(long)]
    rtsp_listen: Option<std::net::SocketAddr>,
    /// Host redirector over TLS (RTSPS) listen address; with --rtsps-cert
    /// and --rtsps-key.
    #[arg(long)]
    rtsps_listen: Option<std::net::SocketAddr>,
    /// RTSPS certificate chain, PEM (leaf first).
    #[arg(long, value_name = "FILE")]
    rtsps_cert: Option<std::path::PathBuf>,
    /// RTSPS private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    rtsps_key: Option<std::path::PathBuf>,
    /// Pin shard k to CPU k.
    #[arg(long)]
    pin: bool,
    /// Busy-poll this long before an idle shard sleeps (lower latency, more CPU).
    #[arg(long, default_value = "0ms", value_parser = revtun_dataplane::config::parse_duration)]
    spin: std::time::Duration,
    #[command(flatten)]
    tunnel: TunnelArgs,
    #[command(flatten)]
    video: VideoArgs,
    /// Serve metrics (Prometheus text) on this address.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Require `Authorization: Bearer TOKEN` on metrics requests; the
    /// token is the first line of this file.
    #[arg(long)]
    metrics_token_file: Option<std::path::PathBuf>,
    /// Log filter.
    #[arg(long, env = "REVTUN_LOG", default_value = "info")]
    log_level: String,
    /// Log line format: text, or json (one object per line).
    #[arg(long, env = "REVTUN_LOG_FORMAT", value_enum, default_value_t = revtun_dataplane::logging::LogFormat::Text)]
    log_format: revtun_dataplane::logging::LogFormat,
}

fn main() {
    let args = Args::parse();
    revtun_dataplane::logging::init("revtun-dataplane", &args.log_level, args.log_format);
    // Checked first: a bad file is a bad flag, whoever started this.
    let rtsps = match (args.rtsps_listen, &args.rtsps_cert, &args.rtsps_key) {
        (None, None, None) => None,
        (Some(listen), Some(cert), Some(key)) => {
            match revtun_dataplane::video::wire::server_config(cert, key) {
                Ok(tls) => Some(host::Rtsps { listen, tls }),
                Err(e) => {
                    eprintln!("revtun-dataplane: {e}");
                    std::process::exit(2);
                }
            }
        }
        _ => {
            eprintln!(
                "revtun-dataplane: --rtsps-listen, --rtsps-cert and --rtsps-key go together; give all three or none"
            );
            std::process::exit(2);
        }
    };
    let mut fds = Vec::new();
    for raw in &args.control_fds {
        if *raw < 3 || !std::path::Path::new(&format!("/proc/self/fd/{raw}")).exists() {
            eprintln!("revtun-dataplane: --control-fd {raw} is not an open descriptor (this binary is started by revtun-control)");
            std::process::exit(2);
        }
        // SAFETY: the descriptor is open (checked above) and was passed to
        // this process for its exclusive use by revtun-control.
        fds.push(unsafe { OwnedFd::from_raw_fd(*raw) });
    }
    let metrics_access = match &args.metrics_token_file {
        Some(path) => match revtun_dataplane::metrics::Access::from_token_file(path) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("revtun-dataplane: --metrics-token-file: {e}");
                std::process::exit(2);
            }
        },
        None => revtun_dataplane::metrics::Access::default(),
    };
    let cfg = HostConfig {
        exposes: args.expose,
        tunnel: args.tunnel.config(),
        pin: args.pin,
        spin: args.spin,
        rtsp_listen: args.rtsp_listen,
        rtsps,
        video: args.video.config(),
        metrics_listen: args.metrics_listen,
        metrics_access,
    };
    if let Err(e) = host::run(fds, cfg) {
        eprintln!("revtun-dataplane: {e:#}");
        std::process::exit(1);
    }
}
