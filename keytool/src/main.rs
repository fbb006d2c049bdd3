//! `revtun-keytool`: provisioning for the host (the Reverse Tunnel Server
//! role): initialise the host identity, issue keyfiles, list, inspect,
//! revoke; and the viewers of the host's RTSP port and their stream tokens.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use revtun_control::clock::{format_ms, to_datetime, Clock, SystemClock};
use revtun_control::fleet::FleetConfig;
use revtun_control::{provision, state, HostState};
use revtun_proto::keyfile::Endpoint;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// revtun provisioning tool.
#[derive(Debug, Parser)]
#[command(name = "revtun-keytool", version)]
struct Args {
    /// Host state directory.
    #[arg(long, global = true, env = "REVTUN_STATE_DIR", default_value = state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Use the fleet's store in this etcd (client URLs, comma-separated)
    /// instead of what the state directory says (its fleet.toml, else
    /// sites.db).
    #[arg(long, global = true, value_name = "URL[,URL...]", value_parser = parse_fleet)]
    fleet: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The `--fleet` override, set once in [`run`].
static FLEET: std::sync::OnceLock<Option<FleetConfig>> = std::sync::OnceLock::new();

/// Loads the host state with its store: `--fleet`, else the directory's
/// fleet.toml, else sites.db.
fn load(dir: &Path) -> anyhow::Result<HostState> {
    Ok(HostState::load_with(dir, FLEET.get().cloned().flatten())?)
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the host identity (CA, listener certificate, site store).
    Init {
        /// Replace an existing identity. Every keyfile and site
        /// certificate issued under the old one stops working.
        #[arg(long)]
        force: bool,
    },
    /// Issue a keyfile for a site (mode 0600).
    Issue {
        /// Site name: lowercase letters, digits, '-'.
        #[arg(long)]
        site: String,
        /// Host endpoint the site dials, HOST[:PORT] (default port 5500).
        /// Repeat for fallbacks, tried in order.
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// Token lifetime.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Where to write the keyfile. It must not exist yet.
        #[arg(long)]
        out: PathBuf,
        /// Let an already enrolled site enroll again (lost state).
        #[arg(long)]
        reissue: bool,
    },
    /// List sites: pending, enrolled, revoked or lapsed, and whether each
    /// is connected now (asked of the running host; '?' when it does not
    /// answer; in a fleet, the hosts holding its tunnels, from etcd).
    List,
    /// The running host's connected sites (shard, since, peer address,
    /// bytes each way, open streams, live cameras, viewers) and totals,
    /// from control's status socket (STATE_DIR/status.sock).
    Status {
        /// Print the JSON the host answers instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what a keyfile holds (never the token).
    Inspect {
        /// The keyfile.
        file: PathBuf,
    },
    /// Revoke a site: its certificate and tokens stop working and its live
    /// tunnel is closed.
    Revoke {
        /// Site name.
        #[arg(long)]
        site: String,
    },
    /// Viewers of the host's RTSP port: who may watch which cameras.
    #[command(subcommand)]
    Viewer(ViewerCmd),
    /// A fleet of hosts sharing one store in etcd (docs/fleet.md).
    #[command(subcommand)]
    Fleet(FleetCmd),
}

#[derive(Debug, Subcommand)]
enum FleetCmd {
    /// Write what a new host of this fleet needs (the CA and its key, the
    /// stream-token key, the etcd endpoints) to FILE, mode 0600. Keep it
    /// like ca.key; delete it once imported.
    Export {
        /// Where to write the bundle. It must not exist yet.
        #[arg(long)]
        out: PathBuf,
    },
    /// Prepare this state directory as a host of the bundle's fleet (the
    /// fleet's CA, a listener certificate of its own, fleet.toml).
    Import {
        /// The bundle from 'fleet export' (mode 0600).
        file: PathBuf,
    },
    /// The hosts registered in etcd now and the sites whose tunnels each
    /// holds.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ViewerCmd {
    /// Add a viewer (or change one with --update). Prints the generated
    /// password on the last line unless --password-file is given.
    Add {
        /// Viewer name: lowercase letters, digits, '.', '-'.
        name: String,
        /// What it may watch: SITE/CAM, SITE/* or *. Repeatable.
        #[arg(long = "allow", required = true)]
        allow: Vec<String>,
        /// Read the password from this file (first line) instead of
        /// generating one.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Replace an existing viewer's permissions (and its password if
        /// --password-file is given); its live sessions that lose their
        /// permission are ended.
        #[arg(long)]
        update: bool,
    },
    /// List viewers and their permissions.
    List,
    /// Remove a viewer; its live sessions end within a few seconds.
    Remove {
        /// Viewer name.
        name: String,
    },
    /// Print a URL that opens one camera (SITE/CAM) or any camera of one
    /// site (SITE/*) until it expires; no viewer account needed.
    Token {
        /// SITE/CAM or SITE/*.
        #[arg(long)]
        allow: String,
        /// How long the URL opens streams.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// The host's RTSP address, rtsp://HOST:PORT or rtsps://HOST:PORT.
        #[arg(long)]
        url: String,
    },
}

fn parse_fleet(s: &str) -> Result<String, String> {
    revtun_control::fleet::parse_endpoints(s).map(|v| v.join(","))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = revtun_proto::duration::parse(s)?;
    if d.is_zero() {
        return Err("duration must be positive".into());
    }
    Ok(d)
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("revtun-keytool: {}", revtun_proto::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let clock = SystemClock::default();
    let urls = args
        .fleet
        .as_deref()
        .map(revtun_control::fleet::parse_endpoints)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let _ = FLEET.set(urls.map(FleetConfig::new));
    match args.cmd {
        Cmd::Fleet(cmd) => fleet(&args.state_dir, &clock, cmd)?,
        Cmd::Init { force } => {
            let st = HostState::init(&args.state_dir, force, clock.now_ms())?;
            println!("host identity created in {}", args.state_dir.display());
            println!("CA fingerprint: {}", st.ca.fingerprint());
        }
        Cmd::Issue {
            site,
            endpoints,
            ttl,
            out,
            reissue,
        } => issue(
            &args.state_dir,
            &clock,
            &site,
            &endpoints,
            ttl,
            &out,
            reissue,
        )?,
        Cmd::List => list(&args.state_dir, &clock)?,
        Cmd::Status { json } => status(&args.state_dir, json)?,
        Cmd::Inspect { file } => inspect(&file, &clock)?,
        Cmd::Viewer(cmd) => viewer(&args.state_dir, &clock, cmd)?,
        Cmd::Revoke { site } => {
            let st = load(&args.state_dir)?;
            st.store.revoke_site(&site, clock.now_ms())?;
            println!(
                "site {site} revoked; a running control closes its tunnel within a few seconds"
            );
        }
    }
    Ok(())
}

fn issue(
    dir: &Path,
    clock: &SystemClock,
    site: &str,
    endpoints: &[String],
    ttl: Duration,
    out: &Path,
    reissue: bool,
) -> anyhow::Result<()> {
    revtun_proto::validate_site_name(site).map_err(|r| anyhow::anyhow!("--site: {r}"))?;
    if endpoints.len() > revtun_proto::keyfile::MAX_ENDPOINTS {
        bail!(
            "--endpoint: at most {} endpoints",
            revtun_proto::keyfile::MAX_ENDPOINTS
        );
    }
    let endpoints = endpoints
        .iter()
        .map(|e| Endpoint::parse(e).map_err(|r| anyhow::anyhow!("--endpoint: {r}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if out.exists() {
        bail!(
            "--out {}: file exists; choose another path or remove it",
            out.display()
        );
    }
    let st = load(dir)?;
    // Create the file first (create_new, 0600) so a path problem leaves no
    // live token behind; record the token; then write the contents.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("--out {}", out.display()))?;
    let kf = match provision::issue(&st, site, endpoints, ttl, reissue, clock.now_ms()) {
        Ok(kf) => kf,
        Err(e) => {
            let _ = std::fs::remove_file(out);
            return Err(e.into());
        }
    };
    f.write_all(kf.to_text().as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    let file_expires = kf.expires.unix_timestamp() * 1000;
    println!(
        "keyfile for site {site} written to {} (expires {})",
        out.display(),
        format_ms(file_expires)
    );
    Ok(())
}

/// The running host's status (JSON), from its status socket.
fn host_status(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let sock = dir.join("status.sock");
    let text = revtun_dataplane::status::request(&sock).with_context(|| {
        format!(
            "cannot reach the host's status socket {} (is revtun-control running on this state directory?)",
            sock.display()
        )
    })?;
    serde_json::from_str(&text).context("the host's status answer is not JSON")
}

fn status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let v = host_status(dir)?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let n = |x: &serde_json::Value, k: &str| x[k].as_u64().unwrap_or(0);
    println!(
        "{:<24} {:>5} {:<20} {:<22} {:>14} {:>14} {:>7} {:>7} {:>7}",
        "SITE", "SHARD", "SINCE", "PEER", "BYTES-IN", "BYTES-OUT", "STREAMS", "CAMERAS", "VIEWERS"
    );
    for s in v["sites"].as_array().into_iter().flatten() {
        let since = i64::try_from(n(s, "since"))
            .unwrap_or(0)
            .saturating_mul(1000);
        println!(
            "{:<24} {:>5} {:<20} {:<22} {:>14} {:>14} {:>7} {:>7} {:>7}",
            s["site"].as_str().unwrap_or("?"),
            n(s, "shard"),
            format_ms(since),
            s["peer"].as_str().unwrap_or("?"),
            n(s, "bytes_in"),
            n(s, "bytes_out"),
            n(s, "streams"),
            n(s, "cameras"),
            n(s, "viewers")
        );
    }
    let t = &v["totals"];
    println!(
        "total: {} sites connected, {} bytes in, {} bytes out, {} streams, {} cameras, {} viewers",
        n(t, "sites"),
        n(t, "bytes_in"),
        n(t, "bytes_out"),
        n(t, "streams"),
        n(t, "cameras"),
        n(t, "viewers")
    );
    Ok(())
}

fn list(dir: &Path, clock: &SystemClock) -> anyhow::Result<()> {
    let st = load(dir)?;
    let rows = st.store.list(clock.now_ms())?;
    // In a fleet: the hosts holding each site's tunnels, from etcd.
    let fleet_view = match st.store.fleet() {
        Some(f) => Some(f.read_registry()?),
        None => None,
    };
    // Connected sites, if the host answers.
    let connected: Option<Vec<String>> = host_status(dir).ok().map(|v| {
        v["sites"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["site"].as_str().map(str::to_string))
            .collect()
    });
    let opt = |t: Option<i64>| t.map(format_ms).unwrap_or_else(|| "-".into());
    println!(
        "{:<24} {:<9} {:<21} {:<21} {:<21} {:<9}",
        "SITE", "STATE", "CERT-EXPIRES", "TOKEN-EXPIRES", "LAST-SEEN", "CONNECTED"
    );
    for r in rows {
        let up = match (&fleet_view, &connected) {
            (Some(v), _) => v
                .tunnels
                .get(&r.name)
                .map(|hs| hs.iter().cloned().collect::<Vec<_>>().join(","))
                .unwrap_or_else(|| "no".into()),
            (None, Some(c)) if c.contains(&r.name) => "yes".into(),
            (None, Some(_)) => "no".into(),
            (None, None) => "?".into(),
        };
        println!(
            "{:<24} {:<9} {:<21} {:<21} {:<21} {:<9}",
            r.name,
            r.state.as_str(),
            opt(r.cert_not_after),
            opt(r.token_expires),
            opt(r.last_seen),
            up
        );
    }
    Ok(())
}

fn fleet(dir: &Path, clock: &SystemClock, cmd: FleetCmd) -> anyhow::Result<()> {
    match cmd {
        FleetCmd::Export { out } => {
            let st = load(dir)?;
            st.export_fleet(&out)?;
            println!(
                "fleet bundle written to {} (mode 0600): it holds the fleet's CA key; \
                 import it on the new host with 'revtun-keytool --state-dir DIR fleet import FILE', then delete it",
                out.display()
            );
        }
        FleetCmd::Import { file } => {
            let st = HostState::import_fleet(dir, &file, clock.now_ms())?;
            let f = st
                .store
                .fleet()
                .context("the imported directory is not in a fleet")?;
            if !f.join(&st.ca.fingerprint())? {
                eprintln!("warning: etcd cannot be reached now; the fleet's CA is checked when control starts");
            }
            println!(
                "{} is a host of the fleet at {} (CA {}); start revtun-control on it with --host-id NAME",
                dir.display(),
                f.config().endpoints.join(","),
                st.ca.fingerprint()
            );
        }
        FleetCmd::Status { json } => {
            let st = load(dir)?;
            let f = st.store.fleet().context(
                "this state directory is not in a fleet (no fleet.toml; pass --fleet URL)",
            )?;
            let v = f.read_registry()?;
            if json {
                let hosts: serde_json::Map<String, serde_json::Value> = v
                    .hosts
                    .iter()
                    .map(|(id, h)| {
                        let sites: Vec<&String> = v
                            .tunnels
                            .iter()
                            .filter(|(_, hs)| hs.contains(id))
                            .map(|(s, _)| s)
                            .collect();
                        (id.clone(), serde_json::json!({"listen": h.listen, "since": h.since, "sites": sites}))
                    })
                    .collect();
                let tunnels: serde_json::Map<String, serde_json::Value> = v
                    .tunnels
                    .iter()
                    .map(|(s, hs)| (s.clone(), serde_json::json!(hs)))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"hosts": hosts, "tunnels": tunnels})
                );
            } else {
                println!(
                    "{:<24} {:<24} {:<21} {:<6}",
                    "HOST", "LISTEN", "SINCE", "SITES"
                );
                for (id, h) in &v.hosts {
                    let n = v.tunnels.values().filter(|hs| hs.contains(id)).count();
                    println!(
                        "{:<24} {:<24} {:<21} {:<6}",
                        id,
                        h.listen,
                        format_ms(h.since),
                        n
                    );
                }
                for (site, hs) in &v.tunnels {
                    println!(
                        "site {site}: {}",
                        hs.iter().cloned().collect::<Vec<_>>().join(" ")
                    );
                }
            }
        }
    }
    Ok(())
}

fn inspect(file: &Path, clock: &SystemClock) -> anyhow::Result<()> {
    let (kf, _ca_der) = revtun_dataplane::site::load_keyfile(file)?;
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let now = to_datetime(clock.now_ms());
    println!("keyfile:        {}", file.display());
    println!("site:           {}", kf.site);
    for e in &kf.endpoints {
        println!("endpoint:       {e}");
    }
    println!("created:        {}", rfc(kf.created));
    let status = if now >= kf.expires { " (EXPIRED)" } else { "" };
    println!("expires:        {}{status}", rfc(kf.expires));
    println!(
        "ca-fingerprint: {} (matches the certificate)",
        kf.ca_fingerprint
    );
    println!("token:          present (not shown)");
    Ok(())
}

fn viewer(dir: &Path, clock: &SystemClock, cmd: ViewerCmd) -> anyhow::Result<()> {
    use revtun_proto::viewer::{self, Allow};
    let parse_allow = |list: &[String]| -> anyhow::Result<Vec<String>> {
        if list.len() > viewer::MAX_ALLOW {
            bail!("--allow: at most {} permissions", viewer::MAX_ALLOW);
        }
        list.iter()
            .map(|a| {
                Allow::parse(a)
                    .map(|a| a.to_string())
                    .map_err(|e| anyhow::anyhow!("--allow: {e}"))
            })
            .collect()
    };
    match cmd {
        ViewerCmd::Add {
            name,
            allow,
            password_file,
            update,
        } => {
            viewer::validate_viewer_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let allow = parse_allow(&allow)?;
            let (password, generated) = match &password_file {
                Some(f) => {
                    let text = zeroize::Zeroizing::new(
                        std::fs::read_to_string(f)
                            .with_context(|| format!("--password-file {}", f.display()))?,
                    );
                    let line = text.lines().next().unwrap_or("").to_string();
                    viewer::validate_password(&line)
                        .map_err(|e| anyhow::anyhow!("--password-file {}: {e}", f.display()))?;
                    (Some(zeroize::Zeroizing::new(line)), false)
                }
                None if update => (None, false),
                None => (Some(generate_password()?), true),
            };
            let st = load(dir)?;
            let ha1 = password.as_ref().map(|p| viewer::ha1(&name, p));
            st.store
                .put_viewer(&name, ha1, &allow, update, clock.now_ms())?;
            println!(
                "viewer {name} {} (allowed: {})",
                if update { "updated" } else { "added" },
                allow.join(" ")
            );
            if generated {
                if let Some(p) = &password {
                    println!("password (shown once):");
                    println!("{}", p.as_str());
                }
            }
        }
        ViewerCmd::List => {
            let st = load(dir)?;
            println!("{:<24} {:<21} ALLOW", "VIEWER", "UPDATED");
            for v in st.store.viewers()? {
                println!(
                    "{:<24} {:<21} {}",
                    v.name,
                    format_ms(v.updated_at),
                    v.allow.join(" ")
                );
            }
        }
        ViewerCmd::Remove { name } => {
            let st = load(dir)?;
            st.store.remove_viewer(&name)?;
            println!(
                "viewer {name} removed; a running control ends its sessions within a few seconds"
            );
        }
        ViewerCmd::Token { allow, ttl, url } => {
            let scope = Allow::parse(&allow).map_err(|e| anyhow::anyhow!("--allow: {e}"))?;
            let base = url.trim_end_matches('/');
            let authority = base
                .strip_prefix("rtsp://")
                .or_else(|| base.strip_prefix("rtsps://"))
                .ok_or_else(|| {
                    anyhow::anyhow!("--url {url:?}: must start with rtsp:// or rtsps://")
                })?;
            if authority.is_empty()
                || authority.contains(['/', '@', '?', '#'])
                || authority.chars().any(char::is_whitespace)
            {
                bail!("--url {url:?}: give only rtsp://HOST:PORT (no user, no path)");
            }
            let scheme = &base[..base.len() - authority.len()];
            let st = load(dir)?;
            let key = viewer::TokenKey::new(st.token_key());
            let expires = (clock.now_ms() / 1000) as u64 + ttl.as_secs().max(1);
            let (user, password) = key
                .issue(&scope, expires)
                .map_err(|e| anyhow::anyhow!("--allow: {e}"))?;
            let path = match &scope {
                Allow::Camera(site, cam) => format!("{site}/{cam}"),
                Allow::Site(site) => {
                    println!(
                        "opens any camera of site {site}: put the camera name after the last '/'"
                    );
                    format!("{site}/")
                }
                Allow::All => bail!("--allow: a stream token opens one camera or one site"),
            };
            println!("valid until {}", format_ms(expires as i64 * 1000));
            println!("{scheme}{user}:{password}@{authority}/{path}");
        }
    }
    Ok(())
}

/// 18 random bytes as base64url: 24 characters, 144 bits.
fn generate_password() -> anyhow::Result<zeroize::Zeroizing<String>> {
    use base64::Engine as _;
    let mut raw = zeroize::Zeroizing::new([0u8; 18]);
    aws_lc_rs::rand::fill(&mut raw[..]).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(zeroize::Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..]),
    ))
}
