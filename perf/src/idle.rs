//! `idle`: host memory per idle tunnel. Enrolls N sites, opens N tunnels
//! (their site ends run in this process on one glommio executor), and
//! reads the data plane's resident memory before and after.

use anyhow::{anyhow, Context, Result};
use revtun_control::clock::{Clock, SystemClock};
use revtun_control::{provision, HostState};
use revtun_dataplane::site::{self, Identity};
use revtun_dataplane::tunnel::{Role, Spec, Tunnel};
use revtun_proto::keyfile::Endpoint;
use revtun_proto::record::{Side, EXPORTER_LABEL, EXPORTER_LEN, RATCHET_INTERVAL};
use revtun_proto::tunnel::Config;
use revtun_tests::{rss_kib, Host};
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Issues and enrolls `n` sites in this process (4 threads).
pub fn enroll_many(host: &Host, n: usize) -> Result<Vec<Identity>> {
    let state = HostState::load(&host.state())?;
    let ep = vec![Endpoint {
        host: "127.0.0.1".into(),
        port: host.addr.port(),
    }];
    let mut jobs = Vec::new();
    for i in 0..n {
        let site = format!("lab-{}-{i}", revtun_tests::unique());
        let kf = provision::issue(
            &state,
            &site,
            ep.clone(),
            Duration::from_secs(3600),
            false,
            SystemClock::default().now_ms(),
        )?;
        let path = host.path(&format!("{site}.keyfile"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(kf.to_text().as_bytes())?;
        jobs.push((path, host.path(&format!("{site}-state"))));
    }
    // Enroll on a few threads (control caps pending handshakes per address).
    let chunks: Vec<Vec<_>> = jobs
        .chunks(n.div_ceil(4).max(1))
        .map(|c| c.to_vec())
        .collect();
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|c| {
            std::thread::spawn(move || -> Result<Vec<Identity>> {
                c.iter()
                    .map(|(kf, dir)| {
                        site::enroll(kf, dir, time::OffsetDateTime::now_utc())
                            .map_err(|e| anyhow!("{e}"))
                    })
                    .collect()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in threads {
        ids.extend(t.join().map_err(|_| anyhow!("enroll thread panicked"))??);
    }
    Ok(ids)
}

/// Runs the scenario.
pub fn run(quick: bool) -> Result<Value> {
    let n = if quick { 50 } else { 1000 };
    let host = Host::start(crate::MANY_SITES_HOST_FLAGS)?;
    let dp = host.dataplane_pid().context("no data plane pid")?;
    let t0 = Instant::now();
    let ids = enroll_many(&host, n)?;
    let enroll_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(dp);
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let site_thread = std::thread::spawn(move || -> Result<()> {
        let ex = glommio::LocalExecutorBuilder::default()
            .make()
            .map_err(|e| anyhow!("{e}"))?;
        ex.run(async move {
            let mut tunnels = Vec::new();
            for id in &ids {
                let s = site::hello(id).map_err(|e| anyhow!("hello {}: {e}", id.site))?;
                let secrets =
                    s.tls
                        .export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)?;
                s.stream.set_nonblocking(true)?;
                let sock = glommio::net::TcpStream::from(socket2_from(s.stream));
                let spec = Spec {
                    side: Side::Site,
                    cfg: Config::default(),
                    ratchet_interval: RATCHET_INTERVAL,
                    name: id.site.clone(),
                };
                tunnels.push(Tunnel::start(
                    sock,
                    &secrets,
                    spec,
                    Role::Site {
                        services: Rc::default(),
                        handlers: Rc::default(),
                        connect_timeout: revtun_dataplane::tunnel::CONNECT_TIMEOUT,
                    },
                    &[],
                    None,
                ));
            }
            glommio::timer::sleep(Duration::from_secs(2)).await;
            let live = tunnels.iter().filter(|t| !t.is_closed()).count() as u64;
            let _ = tx.send(live);
            while stop_rx.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        })
    });
    let live = rx
        .recv_timeout(Duration::from_secs(300))
        .context("tunnels did not come up")?;
    let after = rss_kib(dp);
    // What the idle tunnels cost the data plane's cores: CPU time and
    // wake-ups (voluntary context switches, all its threads) over a
    // window with nothing but pings.
    let window = Duration::from_secs(if quick { 1 } else { 5 });
    let (cpu0, wake0) = cpu_and_wakeups(dp);
    std::thread::sleep(window);
    let (cpu1, wake1) = cpu_and_wakeups(dp);
    let secs = window.as_secs_f64();
    let cpu_ms_per_s = (cpu1 - cpu0) * 1000.0 / secs;
    let wakeups_per_s = (wake1.saturating_sub(wake0)) as f64 / secs;
    let control_rss = rss_kib(host.control.pid() as i32);
    let _ = stop_tx.send(());
    site_thread
        .join()
        .map_err(|_| anyhow!("site thread panicked"))??;
    let per = (after.saturating_sub(before)) as f64 / live.max(1) as f64;
    Ok(json!({
        "what": "idle tunnels (SETTINGS exchanged, pings flowing, no streams); data plane resident memory before and after",
        "tunnels": n,
        "tunnels_live": live,
        "enroll_seconds": enroll_s,
        "dataplane_rss_before_kib": before,
        "dataplane_rss_after_kib": after,
        "kib_per_tunnel": per,
        "control_rss_kib": control_rss,
        "idle_window_s": secs,
        "dataplane_cpu_ms_per_s": cpu_ms_per_s,
        "dataplane_wakeups_per_s": wakeups_per_s,
        "wakeups_per_tunnel_per_s": wakeups_per_s / live.max(1) as f64,
        "target_kib_per_tunnel": 64,
    }))
}

/// CPU seconds (user + system) and voluntary context switches of all
/// threads of `pid` so far.
fn cpu_and_wakeups(pid: i32) -> (f64, u64) {
    // /proc counts in USER_HZ, 100 on Linux.
    let ticks = 100.0;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some((f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?) as f64 / ticks)
        })
        .unwrap_or(0.0);
    let wakeups = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
                .filter_map(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .sum()
        })
        .unwrap_or(0);
    (cpu, wakeups)
}

fn socket2_from(s: std::net::TcpStream) -> revtun_dataplane::Socket2 {
    revtun_dataplane::Socket2::from(s)
}
