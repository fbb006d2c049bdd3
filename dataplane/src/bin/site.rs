//! `revtun-site`: the site agent (the Reverse Tunnel role).

use anyhow::Context;
use clap::{Parser, Subcommand};
use revtun_dataplane::agent::{self, AgentConfig};
use revtun_dataplane::config::{parse_service, TunnelArgs};
use revtun_dataplane::site::{self, Identity, SiteError, DEFAULT_SITE_STATE_DIR};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// revtun site agent: enrolls with a keyfile, then holds the tunnel to the
/// host over one outbound connection.
#[derive(Debug, Parser)]
#[command(name = "revtun-site", version)]
struct Args {
    /// Log filter (error, warn, info, debug, trace).
    #[arg(long, global = true, env = "REVTUN_LOG", default_value = "info")]
    log_level: String,
    /// Log line format: text, or json (one object per line).
    #[arg(long, global = true, env = "REVTUN_LOG_FORMAT", value_enum, default_value_t = revtun_dataplane::logging::LogFormat::Text)]
    log_format: revtun_dataplane::logging::LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start: the size of `Run` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Spend the keyfile's token, store the site identity, exit.
    Enroll {
        /// Keyfile issued by the host ('revtun-keytool issue').
        #[arg(long)]
        keyfile: PathBuf,
        /// Site state directory.
        #[arg(long, env = "REVTUN_SITE_STATE_DIR", default_value = DEFAULT_SITE_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Whether this site's tunnel is up and since when (exit 0 when up, 1
    /// otherwise), from the running agent's STATE_DIR/status.
    Status {
        /// Site state directory.
        #[arg(long, env = "REVTUN_SITE_STATE_DIR", default_value = DEFAULT_SITE_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Authenticate once with the site certificate and exit (0 if accepted).
    Check {
        /// Site state directory.
        #[arg(long, env = "REVTUN_SITE_STATE_DIR", default_value = DEFAULT_SITE_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Enroll first if needed, then hold the tunnel, reconnecting with
    /// backoff until stopped.
    Run {
        /// Settings from a TOML file: each key is a flag's name with '_'
        /// (`camera = ["door=rtsp://..."]`); flags given here override it.
        /// A file holding a camera password must be mode 0600
        /// (examples/site.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Check the flags and the --config file, print the result and exit
        /// 0 (valid) or 1, without connecting.
        #[arg(long)]
        check_config: bool,
        /// Site state directory.
        #[arg(long, env = "REVTUN_SITE_STATE_DIR", default_value = DEFAULT_SITE_STATE_DIR)]
        state_dir: PathBuf,
        /// Keyfile, used only when the state directory has no identity yet.
        #[arg(long)]
        keyfile: Option<PathBuf>,
        /// Longest wait between reconnect attempts.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        max_backoff: Duration,
        /// A site service the host may open, NAME=HOST:PORT (repeatable).
        #[arg(long = "service", value_parser = parse_service)]
        services: Vec<(String, String)>,
        #[command(flatten)]
        tunnel: TunnelArgs,
        /// A camera for the site redirector, NAME=rtsp://[USER:PASSWORD@]HOST:PORT/PATH
        /// (repeatable; %-encode reserved characters of the user and password);
        /// viewers reach it at the host as rtsp://HOST:PORT/SITE/NAME.
        // Checked after parsing (parse_camera), not by clap, whose errors
        // would echo the value and so the password.
        #[arg(long = "camera", value_name = "NAME=URL")]
        cameras: Vec<String>,
        /// The password of camera NAME, first line of FILE (mode 0600,
        /// re-read on reload), so it is in no command line or settings
        /// file; the camera's URL names the user only,
        /// rtsp://USER@HOST:PORT/PATH (repeatable).
        #[arg(long = "camera-password-file", value_name = "NAME=FILE")]
        camera_password_files: Vec<String>,
        /// A camera that does not answer an RTSP request, or sends nothing
        /// after PLAY, for this long is given up on (the viewer is told).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        camera_timeout: Duration,
        /// A service target that neither accepts nor refuses a connection
        /// for this long is given up on (the host's client gets a reset).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        connect_timeout: Duration,
        /// Tunnels to hold, each to a different host of the keyfile's
        /// endpoints (a fleet, or one load-balanced name in front of
        /// several hosts); each reconnects on its own. Hosts are told apart
        /// by their certificate; with fewer hosts than N, the extra tunnels
        /// try again every 30 s to 5 min.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
        tunnels: u16,
        /// Pin the agent to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
        /// Busy-poll this long before the idle agent sleeps (lower latency, more CPU).
        #[arg(long, default_value = "0ms", value_parser = parse_duration)]
        spin: Duration,
    },
}

/// Checks a `--camera NAME=URL`; errors show the URL with its password
/// redacted.
fn parse_camera(s: &str) -> Result<(String, String), String> {
    use revtun_proto::rtsp_auth::{redact, split_credentials};
    let (name, url) = s.split_once('=').ok_or_else(|| {
        format!(
            "--camera {:?} is not NAME=rtsp://[USER:PASSWORD@]HOST:PORT/PATH",
            redact(s)
        )
    })?;
    if let Err(e) = revtun_proto::viewer::validate_camera_name(name) {
        return Err(format!("camera name {:?}: {e}", redact(name)));
    }
    split_credentials(url).map_err(|e| format!("camera {name} ({}): {e}", redact(url)))?;
    Ok((name.to_string(), url.to_string()))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    revtun_proto::duration::parse(s)
}

/// Whether a site configuration text holds a camera password (then the
/// file must be readable by its owner only).
fn holds_secrets(text: &str) -> bool {
    let Ok(t) = text.parse::<toml::Table>() else {
        return false;
    };
    let cams: Vec<&str> = match t.get("camera") {
        Some(toml::Value::Array(a)) => a.iter().filter_map(toml::Value::as_str).collect(),
        Some(toml::Value::String(s)) => vec![s.as_str()],
        _ => return false,
    };
    cams.iter().any(|c| {
        let url = c.split_once('=').map_or(*c, |(_, u)| u);
        // A password in the URL (`user:pass@`); a user alone is no secret
        // (its password may come from --camera-password-file).
        revtun_proto::rtsp_auth::split_credentials(url)
            .map_or(true, |_| revtun_proto::rtsp_auth::redact(url) != url)
    })
}

/// Why the command line (with its `--config` file) did not parse.
enum Parsed {
    File(String),
    Clap(clap::Error),
}

/// Parses `argv`, with the `--config` file of `run`.
fn parse_args(argv: Vec<std::ffi::OsString>) -> Result<Args, Parsed> {
    use clap::CommandFactory;
    // Built, so the global flags (--log-level) are among run's.
    let mut top = Args::command();
    top.build();
    let argv = match top.find_subcommand("run") {
        Some(run_cmd) if argv.iter().any(|a| a == "run") => revtun_dataplane::config_file::expand(
            argv,
            run_cmd,
            Some("run"),
            &["camera"],
            holds_secrets,
        )
        .map_err(|e| Parsed::File(e.to_string()))?,
        _ => argv,
    };
    Args::try_parse_from(argv).map_err(Parsed::Clap)
}

/// The services and cameras of `run`, checked, with each camera's
/// password file read into its URL (a camera's password is never in an
/// error).
fn offer(
    services: Vec<(String, String)>,
    cameras: &[String],
    password_files: &[String],
) -> Result<agent::Offer, String> {
    let mut cameras = cameras
        .iter()
        .map(|c| parse_camera(c))
        .collect::<Result<HashMap<_, _>, _>>()?;
    for pf in password_files {
        let (name, file) = pf
            .split_once('=')
            .ok_or_else(|| format!("--camera-password-file {pf:?} is not NAME=FILE"))?;
        let url = cameras
            .get_mut(name)
            .ok_or_else(|| format!("--camera-password-file {name}: no --camera {name}"))?;
        *url = with_password(name, url, std::path::Path::new(file))?;
    }
    let mut map = HashMap::new();
    for (name, target) in services {
        if map.insert(name.clone(), target).is_some() {
            return Err(format!("--service {name} given twice"));
        }
    }
    Ok((map, cameras))
}

/// `rtsp://USER@REST` with the password from `file` (first line; the file
/// must be readable by its owner only) put in, %-encoded.
fn with_password(name: &str, url: &str, file: &std::path::Path) -> Result<String, String> {
    let rest = url.strip_prefix("rtsp://").unwrap_or(url);
    let end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..end].rfind('@') else {
        return Err(format!(
            "camera {name}: a password file needs the user in the URL (rtsp://USER@HOST:PORT/PATH)"
        ));
    };
    let user = &rest[..at];
    if user.contains(':') {
        return Err(format!(
            "camera {name}: the URL has a password and a password file is given; keep one"
        ));
    }
    let text = zeroize::Zeroizing::new(
        revtun_dataplane::config_file::read(file, true).map_err(|e| e.to_string())?,
    );
    let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if password.is_empty() {
        return Err(format!("{}: empty password", file.display()));
    }
    let mut enc = String::new();
    for b in password.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            enc.push(char::from(b));
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    let out = format!("rtsp://{user}:{enc}@{}", &rest[at + 1..]);
    zeroize::Zeroize::zeroize(&mut enc);
    // The same checks as a URL given whole.
    parse_camera(&format!("{name}={out}")).map(|(_, u)| u)
}

/// Reads the services and cameras of `argv` again (SIGHUP).
fn reread(argv: &[std::ffi::OsString]) -> Result<agent::Offer, String> {
    match parse_args(argv.to_vec()) {
        Ok(Args {
            cmd:
                Cmd::Run {
                    services,
                    cameras,
                    camera_password_files,
                    ..
                },
            ..
        }) => offer(services, &cameras, &camera_password_files),
        Ok(_) => Err("not a run command".into()),
        Err(Parsed::File(e)) => Err(e),
        Err(Parsed::Clap(e)) => Err(e.to_string().trim_end().to_string()),
    }
}

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let checking = argv.iter().any(|a| a == "--check-config");
    let fail = |e: String| -> ! {
        let what = if checking {
            "configuration invalid: "
        } else {
            ""
        };
        eprintln!("revtun-site: {what}{}", e.trim_end());
        std::process::exit(if checking { 1 } else { 2 });
    };
    let args = match parse_args(argv.clone()) {
        Ok(a) => a,
        Err(Parsed::File(e)) => fail(e),
        Err(Parsed::Clap(e)) if checking => fail(e.to_string()),
        Err(Parsed::Clap(e)) => e.exit(),
    };
    if let Cmd::Run {
        check_config: true,
        cameras,
        services,
        camera_password_files,
        ..
    } = &args.cmd
    {
        if let Err(e) = offer(services.clone(), cameras, camera_password_files) {
            fail(e);
        }
        println!("configuration ok");
        return;
    }
    revtun_dataplane::logging::init("revtun-site", &args.log_level, args.log_format);
    if let Err(e) = run(args.cmd, argv) {
        eprintln!("revtun-site: {}", revtun_proto::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

/// Prints the agent's tunnel state; whether the tunnel is up.
fn site_status(dir: &Path) -> anyhow::Result<bool> {
    let file = dir.join("status");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("not running: no agent has run on {}", dir.display());
            return Ok(false);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .unwrap_or("")
            .to_string()
    };
    let since = field("since")
        .parse::<i64>()
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "?".into());
    let pid: i32 = field("pid").parse().unwrap_or(0);
    // The agent that wrote it must still run (signal 0 checks).
    let alive = pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let (state, detail) = (field("state"), field("detail"));
    if state == "stopped" {
        println!("not running: the agent (pid {pid}) stopped at {since}");
        return Ok(false);
    }
    if !alive {
        println!(
            "not running: the agent (pid {pid}) is gone; its tunnel was {state} since {since}"
        );
        return Ok(false);
    }
    match state.as_str() {
        "up" => {
            println!("tunnel up since {since} via {detail} (pid {pid})");
            Ok(true)
        }
        _ => {
            println!("tunnel down since {since}: {detail}; reconnecting (pid {pid})");
            Ok(false)
        }
    }
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn do_enroll(keyfile: &Path, state_dir: &Path) -> Result<Identity, SiteError> {
    let id = site::enroll(keyfile, state_dir, now())?;
    println!(
        "enrolled site {} ; identity stored in {}",
        id.site,
        state_dir.display()
    );
    Ok(id)
}

fn run(cmd: Cmd, argv: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    match cmd {
        Cmd::Enroll { keyfile, state_dir } => {
            do_enroll(&keyfile, &state_dir)?;
        }
        Cmd::Status { state_dir } => {
            if !site_status(&state_dir)? {
                std::process::exit(1);
            }
        }
        Cmd::Check { state_dir } => {
            let id = Identity::load(&state_dir)?;
            let s = site::hello(&id)?;
            println!("site {} authenticated at {}", id.site, s.endpoint);
        }
        Cmd::Run {
            config: _,
            check_config: _,
            state_dir,
            keyfile,
            max_backoff,
            services,
            tunnel,
            cameras,
            camera_password_files,
            camera_timeout,
            connect_timeout,
            tunnels,
            cpu,
            spin,
        } => {
            let (map, cameras) =
                offer(services, &cameras, &camera_password_files).map_err(anyhow::Error::msg)?;
            let id = if Identity::exists(&state_dir) {
                Identity::load(&state_dir)?
            } else {
                let kf = keyfile.ok_or(SiteError::NotEnrolled(state_dir.clone()))?;
                do_enroll(&kf, &state_dir)?
            };
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, stop.clone())
                    .context("installing signal handlers")?;
            }
            let hup = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
                .context("installing signal handlers")?;
            let reload = agent::Reload {
                requested: hup,
                read: Arc::new(move || reread(&argv)),
            };
            let cfg = AgentConfig {
                services: map,
                tunnel: tunnel.config(),
                max_backoff,
                stop,
                cpu,
                spin,
                cameras,
                camera_timeout,
                connect_timeout,
                reload: Some(reload),
                status_file: Some(state_dir.join("status")),
                tunnels: usize::from(tunnels),
            };
            // systemd (`Type=notify`): ready once the identity is loaded
            // and the agent runs (connected or retrying); the watchdog is
            // fed while the process lives.
            revtun_dataplane::notify::notify("READY=1\nSTATUS=holding the tunnel");
            if let Some(every) = revtun_dataplane::notify::watchdog_interval() {
                let _ = std::thread::Builder::new()
                    .name("watchdog".into())
                    .spawn(move || loop {
                        revtun_dataplane::notify::notify("WATCHDOG=1");
                        std::thread::sleep(every);
                    });
            }
            agent::run(id, cfg).context("tunnel")?;
            agent::write_status(&state_dir.join("status"), "stopped", "");
            println!("stopped");
        }
    }
    Ok(())
}
