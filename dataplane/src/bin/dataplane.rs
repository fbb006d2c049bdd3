//! `revtun-dataplane`: the host data plane. Started and supervised by
//! `revtun-control`, which hands it authenticated tunnel sockets.

use revtun_dataplane::args::DataPlaneArgs;
use revtun_dataplane::host::{self, HostConfig};
use std::os::fd::{FromRawFd, OwnedFd};

fn main() {
    use clap::{CommandFactory, Parser};
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let checking = argv.iter().any(|a| a == "--check-config");
    let expanded = revtun_dataplane::config_file::expand(
        argv.clone(),
        &DataPlaneArgs::command(),
        None,
        &[],
        |_| false,
    )
    .unwrap_or_else(|e| {
        eprintln!("revtun-dataplane: {e}");
        std::process::exit(if checking { 1 } else { 2 });
    });
    let args = match DataPlaneArgs::try_parse_from(expanded) {
        Ok(a) => a,
        Err(e) if checking => {
            eprintln!(
                "revtun-dataplane: configuration invalid: {}",
                e.to_string().trim_end()
            );
            std::process::exit(1);
        }
        Err(e) => e.exit(),
    };
    if args.check_config {
        println!("configuration ok");
        return;
    }
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
        udp_ports: (!args.video.tcp_only_viewers)
            .then_some((args.video.rtp_port, args.video.rtcp_port)),
        multicast: args.video.multicast_range.as_deref().and_then(|r| {
            let (first, n) = revtun_proto::transport::parse_multicast_range(r).ok()?;
            Some((
                first,
                n,
                args.video.multicast_ttl,
                args.video.multicast_port,
            ))
        }),
        metrics_listen: args.metrics_listen,
        metrics_access,
        argv,
        nofile: 0,
    };
    let status = match args.status_fd {
        Some(raw) if raw < 3 || !std::path::Path::new(&format!("/proc/self/fd/{raw}")).exists() => {
            eprintln!("revtun-dataplane: --status-fd {raw} is not an open descriptor");
            std::process::exit(2);
        }
        // SAFETY: the descriptor is open (checked above): the listening
        // status socket revtun-control made and passed to this process.
        Some(raw) => Some(unsafe { std::os::unix::net::UnixListener::from_raw_fd(raw) }),
        None => None,
    };
    if let Err(e) = host::run(fds, cfg, status) {
        eprintln!("revtun-dataplane: {e:#}");
        std::process::exit(1);
    }
}
