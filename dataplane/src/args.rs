//! The data plane's flags: what control hands it (serialized as a TOML
//! settings file, [`crate::config_file`]) and what `revtun-dataplane`
//! parses.

use crate::config::{parse_expose, Expose, TunnelArgs, VideoArgs};
use clap::Parser;
use std::os::fd::RawFd;

/// revtun host data plane (started by revtun-control; not run by hand).
#[derive(Debug, Parser)]
#[command(name = "revtun-dataplane", version)]
pub struct DataPlaneArgs {
    /// Unix socket to control, one per shard (inherited descriptor numbers).
    #[arg(long = "control-fd", required_unless_present = "check_config")]
    pub control_fds: Vec<RawFd>,
    /// Listening status socket (inherited descriptor) that control made;
    /// `revtun-keytool status` asks it.
    #[arg(long = "status-fd")]
    pub status_fd: Option<RawFd>,
    /// Settings from a TOML file (keys: these flags' names with '_');
    /// control writes one for each data plane it starts
    /// (`STATE_DIR/dataplane.toml`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Check the flags and the --config file, print the result and exit 0
    /// (valid) or 1.
    #[arg(long)]
    pub check_config: bool,
    /// Host port for a site's TCP service, SITE/SERVICE=ADDR:PORT.
    #[arg(long, value_parser = parse_expose)]
    pub expose: Vec<Expose>,
    /// Host redirector (RTSP) listen address.
    #[arg(long)]
    pub rtsp_listen: Option<std::net::SocketAddr>,
    /// Host redirector over TLS (RTSPS) listen address; with --rtsps-cert
    /// and --rtsps-key.
    #[arg(long)]
    pub rtsps_listen: Option<std::net::SocketAddr>,
    /// RTSPS certificate chain, PEM (leaf first).
    #[arg(long, value_name = "FILE")]
    pub rtsps_cert: Option<std::path::PathBuf>,
    /// RTSPS private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    pub rtsps_key: Option<std::path::PathBuf>,
    /// Pin shard k to CPU k.
    #[arg(long)]
    pub pin: bool,
    /// Busy-poll this long before an idle shard sleeps (lower latency, more CPU).
    #[arg(long, default_value = "0ms", value_parser = crate::config::parse_duration)]
    pub spin: std::time::Duration,
    #[command(flatten)]
    pub tunnel: TunnelArgs,
    #[command(flatten)]
    pub video: VideoArgs,
    /// Serve metrics (Prometheus text) on this address.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Require `Authorization: Bearer TOKEN` on metrics requests; the
    /// token is the first line of this file.
    #[arg(long)]
    pub metrics_token_file: Option<std::path::PathBuf>,
    /// Log filter.
    #[arg(long, env = "REVTUN_LOG", default_value = "info")]
    pub log_level: String,
    /// Log line format: text, or json (one object per line).
    #[arg(long, env = "REVTUN_LOG_FORMAT", value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
}

impl DataPlaneArgs {
    /// Parses `argv` with its `--config` file; the error is one text.
    pub fn parse_with_file(argv: Vec<std::ffi::OsString>) -> Result<DataPlaneArgs, String> {
        use clap::CommandFactory;
        let argv =
            crate::config_file::expand(argv, &DataPlaneArgs::command(), None, &[], |_| false)
                .map_err(|e| e.to_string())?;
        DataPlaneArgs::try_parse_from(argv).map_err(|e| e.to_string().trim_end().to_string())
    }
}
