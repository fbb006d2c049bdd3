//! A real etcd on loopback (Debian's `etcd-server`) and fleet hosts on it.

use crate::{bin, free_port, keytool, stderr, udp_ports, unique, Proc};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One etcd member with a temporary data directory, on two loopback
/// ports picked free; stopped (SIGKILL, by its PID) when dropped.
#[derive(Debug)]
pub struct Etcd {
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
    proc: Option<Proc>,
}

impl Etcd {
    /// Starts etcd and waits until it answers `/health`.
    pub fn start() -> Result<Etcd> {
        let mut e = Etcd {
            dir: tempfile::tempdir()?,
            client: free_port()?,
            peer: free_port()?,
            proc: None,
        };
        e.restart()?;
        Ok(e)
    }

    /// The client URL (`--fleet`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// Kills etcd (the fleet's store is gone; its data stays).
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let client = format!("http://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let p = Proc::spawn(
            Command::new("etcd")
                .arg("--data-dir")
                .arg(self.dir.path().join("data"))
                .args(["--name", "t"])
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("t={peer}")])
                .args(["--log-level", "warn"]),
        )
        .context("starting etcd (Debian package etcd-server)")?;
        let start = Instant::now();
        loop {
            if crate::http_get(&format!("127.0.0.1:{}", self.client), "/health")
                .is_ok_and(|b| b.contains("\"health\":\"true\""))
            {
                break;
            }
            if let Some(s) = p.try_wait() {
                bail!("etcd exited ({s}): {}", p.log());
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("etcd not healthy within 20 s: {}", p.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc = Some(p);
        Ok(())
    }
}

/// A host of a fleet: its own state directory (the first one made with
/// `init`, the others with `fleet import` of the first's bundle) and
/// control with `--fleet` and `--host-id`.
#[derive(Debug)]
pub struct FleetHost {
    /// Host id.
    pub id: String,
    /// Its state directory.
    pub state: PathBuf,
    /// Control.
    pub control: Proc,
    /// Where control listens for sites.
    pub addr: SocketAddr,
}

impl FleetHost {
    /// Starts host `id` in `dir/id`; `from` is an existing host to copy
    /// the fleet's CA from (none for the first host). Every host takes
    /// peer links (`--peer-listen` on a port of its own); `extra` may
    /// name `--listen`.
    pub fn start(
        dir: &Path,
        id: &str,
        etcd: &Etcd,
        from: Option<&FleetHost>,
        extra: &[&str],
    ) -> Result<FleetHost> {
        let state = dir.join(id);
        match from {
            None => {
                let o = keytool(&state, &["init"])?;
                if !o.status.success() {
                    bail!("init: {}", stderr(&o));
                }
            }
            Some(f) => {
                let bundle = dir.join(format!("bundle-{id}-{}", unique()));
                let o = keytool(
                    &f.state,
                    &["fleet", "export", "--out", &bundle.to_string_lossy()],
                )?;
                if !o.status.success() {
                    bail!("fleet export: {}", stderr(&o));
                }
                let o = keytool(&state, &["fleet", "import", &bundle.to_string_lossy()])?;
                if !o.status.success() {
                    bail!("fleet import: {}", stderr(&o));
                }
                std::fs::remove_file(&bundle)?;
            }
        }
        let control = Proc::spawn(
            Command::new(bin("revtun-control"))
                .arg("--state-dir")
                .arg(&state)
                .args(if extra.contains(&"--listen") {
                    &[][..]
                } else {
                    &["--listen", "127.0.0.1:0"][..]
                })
                .args(["--fleet", &etcd.url(), "--host-id", id, "--shards", "1"])
                .args(["--peer-listen", "127.0.0.1:0"])
                .args(udp_ports(extra))
                .args(extra),
        )?;
        let line = control.wait_stdout_prefix("listening on ", Duration::from_secs(20))?;
        let addr = line.trim_start_matches("listening on ").parse()?;
        Ok(FleetHost {
            id: id.to_string(),
            state,
            control,
            addr,
        })
    }

    /// `revtun-keytool --state-dir STATE ARGS` on this host; fails
    /// unless it succeeds.
    pub fn keytool_ok(&self, args: &[&str]) -> Result<String> {
        let o = keytool(&self.state, args)?;
        if !o.status.success() {
            bail!("keytool {args:?}: {}", stderr(&o));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// The registry as etcd holds it: site → host ids.
    pub fn registry(&self) -> Result<serde_json::Value> {
        let out = self.keytool_ok(&["fleet", "status", "--json"])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Hosts holding a tunnel of `site`, from the registry.
    pub fn holders(&self, site: &str) -> Result<Vec<String>> {
        Ok(self.registry()?["tunnels"][site]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until the registry says `site`'s tunnels are on exactly
    /// `hosts` (sorted); returns how long it took.
    pub fn wait_holders(&self, site: &str, hosts: &[&str], limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let now = self.holders(site).unwrap_or_default();
            if now == hosts {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("site {site}: holders {now:?}, not {hosts:?}, after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
