//! `revtun-keytool`: provisioning for the host (the Reverse Tunnel Server
//! role): initialise the host identity, issue keyfiles, list, inspect,
//! revoke.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use revtun_control::clock::{format_ms, to_datetime, Clock, SystemClock};
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
    #[command(subcommand)]
    cmd: Cmd,
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
    /// List sites: pending, enrolled, revoked or lapsed.
    List,
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
    match args.cmd {
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
        Cmd::Inspect { file } => inspect(&file, &clock)?,
        Cmd::Revoke { site } => {
            let st = HostState::load(&args.state_dir)?;
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
    let st = HostState::load(dir)?;
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

fn list(dir: &Path, clock: &SystemClock) -> anyhow::Result<()> {
    let st = HostState::load(dir)?;
    let rows = st.store.list(clock.now_ms())?;
    let opt = |t: Option<i64>| t.map(format_ms).unwrap_or_else(|| "-".into());
    println!(
        "{:<24} {:<9} {:<21} {:<21} {:<21}",
        "SITE", "STATE", "CERT-EXPIRES", "TOKEN-EXPIRES", "LAST-SEEN"
    );
    for r in rows {
        println!(
            "{:<24} {:<9} {:<21} {:<21} {:<21}",
            r.name,
            r.state.as_str(),
            opt(r.cert_not_after),
            opt(r.token_expires),
            opt(r.last_seen)
        );
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
