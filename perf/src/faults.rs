//! `faults`: the fault lab. Site and host talk through the impairment
//! proxy (`revtun_tests::impair`, user space: this kernel has no netem)
//! and each scenario checks a correctness property while it measures:
//!
//! - `integrity`: transfers both ways while the tunnel is cut again and
//!   again; every transfer arrives intact or fails with an error (a reset),
//!   never a clean end with missing or altered bytes (fails the run);
//! - `flip`: one flipped byte on the wire fails record authentication and
//!   closes only that tunnel; another site loses nothing; time to recover;
//! - `blackhole`: the first of two paths starts dropping everything; time
//!   until the heartbeat notices and the site is back on the second path;
//! - `rtt`: one stream across 50 and 150 ms of added round trip on a
//!   1 Gbit/s path, against raw TCP over the same path in the same run,
//!   and what the stream window allows there;
//! - `storm`: every tunnel through the proxy is cut at once; time for all
//!   sites to return;
//! - `bandwidth`: a kernel-enforced limit instead of the proxy's: in a
//!   network namespace of its own, the tunnel's TCP connection (and, for
//!   the baseline, raw TCP to a sink) go through a `tbf` qdisc on the
//!   loopback at 100 Mbit/s and 1 Gbit/s; one stream through the tunnel
//!   against raw TCP on the same limit.
//!
//! Heartbeat 1 s and dead-after 3 s (stated in the results) keep the run
//! short; detection scales with `--dead-after`.

use anyhow::{bail, Context, Result};
use revtun_tests::impair::{Impair, Mode};
use revtun_tests::service::expected;
use revtun_tests::{bin, download, free_port, upload, Bench, Host, Proc};
use serde_json::{json, Value};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIVENESS: &[&str] = &["--heartbeat", "1s", "--dead-after", "3s"];

/// Runs every fault scenario.
pub fn run(quick: bool) -> Result<Value> {
    let mut out = serde_json::Map::new();
    out.insert(
        "what".into(),
        "fault lab: site and host through a user-space impairment proxy; heartbeat 1 s, dead after 3 s".into(),
    );
    let scenarios: [(&str, &dyn Fn() -> Result<Value>); 6] = [
        ("integrity", &|| integrity(quick)),
        ("flip", &flip),
        ("blackhole", &blackhole),
        ("rtt", &|| rtt(quick)),
        ("storm", &|| storm(quick)),
        ("bandwidth", &|| bandwidth(quick)),
    ];
    for (name, f) in scenarios {
        let v = f().with_context(|| format!("faults/{name}"))?;
        eprintln!("faults/{name}: {v}");
        out.insert(name.into(), v);
    }
    Ok(Value::Object(out))
}

/// A bench whose site dials through one proxy per entry of `paths`.
fn bench_through(
    paths: usize,
    host_extra: &[&str],
    site_extra: &[&str],
) -> Result<(Bench, Vec<Impair>)> {
    let mut proxies = Vec::new();
    let mut host = LIVENESS.to_vec();
    host.extend_from_slice(&["--log-level", "info"]);
    host.extend_from_slice(host_extra);
    let mut site = LIVENESS.to_vec();
    site.extend_from_slice(&["--max-backoff", "1s"]);
    site.extend_from_slice(site_extra);
    let b = Bench::start_via(&host, &site, |addr| {
        for _ in 0..paths {
            proxies.push(Impair::start(addr)?);
        }
        Ok(proxies.iter().map(Impair::addr).collect())
    })?;
    Ok((b, proxies))
}

/// Outcome counts of transfers under faults.
#[derive(Default)]
struct Tally {
    intact: AtomicU64,
    reset: AtomicU64,
    bad: AtomicU64,
    bytes: AtomicU64,
}

/// One transfer: intact (true), failed with an error (false), or wrong
/// without an error (Err: truncated or altered, a correctness failure).
fn transfer(b: &Bench, up: bool, len: u64, seed: u64) -> Result<bool, String> {
    if up {
        match upload(b, len, seed) {
            Ok(reply) if reply == format!("{len} {}", expected(len, seed)) => Ok(true),
            Ok(reply) => Err(format!("upload of {len} answered {reply:?}")),
            Err(_) => Ok(false),
        }
    } else {
        match download(b, len, seed) {
            Ok((n, digest)) if n == len && digest == expected(len, seed) => Ok(true),
            Ok((n, _)) => Err(format!(
                "download of {len} ended cleanly after {n} bytes or altered"
            )),
            Err(_) => Ok(false),
        }
    }
}

fn integrity(quick: bool) -> Result<Value> {
    let (b, proxies) = bench_through(1, &[], &[])?;
    let b = Arc::new(b);
    let (workers, cuts) = if quick { (4, 3) } else { (12, 15) };
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let bad_text = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (b, tally, stop, bad_text) =
                (b.clone(), tally.clone(), stop.clone(), bad_text.clone());
            std::thread::spawn(move || {
                let mut seed = 1 + w as u64 * 1_000_003;
                while !stop.load(Ordering::Relaxed) {
                    seed += 1;
                    let len = 64 * 1024 + (seed * 7919) % (4 << 20);
                    match transfer(&b, seed.is_multiple_of(2), len, seed) {
                        Ok(true) => {
                            tally.intact.fetch_add(1, Ordering::Relaxed);
                            tally.bytes.fetch_add(len, Ordering::Relaxed);
                        }
                        Ok(false) => {
                            tally.reset.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            tally.bad.fetch_add(1, Ordering::Relaxed);
                            bad_text.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                        }
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    for _ in 0..cuts {
        std::thread::sleep(Duration::from_millis(700));
        proxies[0].cut();
    }
    // Let the site come back and traffic flow again before stopping.
    b.wait_ready(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let bad = tally.bad.load(Ordering::Relaxed);
    if bad > 0 {
        bail!(
            "{bad} transfers ended without an error but truncated or altered: {:?}",
            bad_text.lock().unwrap_or_else(|p| p.into_inner())
        );
    }
    let intact = tally.intact.load(Ordering::Relaxed);
    if intact == 0 {
        bail!("no transfer completed under cuts");
    }
    Ok(json!({
        "cuts": cuts,
        "seconds": start.elapsed().as_secs_f64(),
        "transfers_intact": intact,
        "transfers_reset": tally.reset.load(Ordering::Relaxed),
        "transfers_truncated_or_altered": bad,
        "intact_mib": tally.bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
    }))
}

fn flip() -> Result<Value> {
    let steady_port = free_port()?;
    let (b, proxies) = bench_through(
        1,
        &["--expose", &format!("steady/svc=127.0.0.1:{steady_port}")],
        &[],
    )?;
    // A second site, straight to the host: it must not notice.
    let dir = b.host.enroll("steady")?;
    let steady = Proc::spawn(Command::new(bin("revtun-site")).args([
        "run",
        "--state-dir",
        &dir.to_string_lossy(),
        &format!("--service=svc={}", b.target),
    ]))?;
    steady.wait_stdout("tunnel up", Duration::from_secs(10))?;
    let steady_addr = format!("127.0.0.1:{steady_port}");
    let steady_ok = Arc::new(AtomicU64::new(0));
    let steady_failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (ok, failed, stop, addr) = (
            steady_ok.clone(),
            steady_failed.clone(),
            stop.clone(),
            steady_addr.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match sink_at(&addr) {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // The next connection through the proxy gets one bit flipped 256 KiB
    // into the site-to-host direction (past the TLS handshake: inside a
    // sealed data-channel record).
    proxies[0].flip_next(true, 256 * 1024);
    proxies[0].cut();
    let reconnected = b.wait_ready(Duration::from_secs(30))?;
    let armed = Instant::now();
    // Traffic from the site carries the flip; the transfer fails.
    let _ = download(&b, 4 << 20, 3);
    b.host
        .control
        .wait_log("record failed authentication", Duration::from_secs(10))?;
    let detected = armed.elapsed();
    let back = b.wait_ready(Duration::from_secs(30))?;
    stop.store(true, Ordering::Relaxed);
    let _ = prober.join();
    let failed = steady_failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("the other site lost {failed} requests while one tunnel saw a flipped byte");
    }
    drop(steady);
    Ok(json!({
        "reconnect_s": reconnected.as_secs_f64(),
        "detected_s": detected.as_secs_f64(),
        "served_again_s": (detected + back).as_secs_f64(),
        "other_site_requests_ok": steady_ok.load(Ordering::Relaxed),
        "other_site_requests_failed": failed,
    }))
}

/// One SINK round trip to `addr`.
fn sink_at(addr: &str) -> Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"SINK\nx")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    anyhow::ensure!(reply.starts_with("1 "), "reply {reply:?}");
    Ok(())
}

fn blackhole() -> Result<Value> {
    let (b, proxies) = bench_through(2, &[], &[])?;
    anyhow::ensure!(
        proxies[0].accepted() >= 1 && proxies[1].accepted() == 0,
        "the site should hold its tunnel through the first path"
    );
    let hole = Instant::now();
    proxies[0].set_mode(Mode::BlackHole);
    b.host
        .control
        .wait_log("peer silent for", Duration::from_secs(20))
        .context("host did not notice the black hole")?;
    let host_noticed = hole.elapsed();
    b.wait_ready(Duration::from_secs(60))?;
    let served_again = hole.elapsed();
    Ok(json!({
        "host_noticed_s": host_noticed.as_secs_f64(),
        "served_again_s": served_again.as_secs_f64(),
        "second_path_used": proxies[1].accepted() >= 1,
        "bound_s": "dead-after (3 s) + the site's handshake timeout on the black-holed path (10 s) + a backoff step",
    }))
}

/// Path of the `rtt` scenario: 1 Gbit/s each way.
const PATH_RATE: u64 = 125_000_000;

/// Runs `tc` with `args`.
fn tc(args: &[&str]) -> Result<()> {
    revtun_tests::run_ok(Command::new("tc").args(args), Duration::from_secs(10)).map(drop)
}

/// Loopback traffic to or from `ports` goes through one `tbf` of `mbit`
/// Mbit/s (an `htb` root classifies it; everything else is not limited).
fn limit_ports(ports: &[u16], mbit: u32) -> Result<()> {
    tc(&[
        "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10",
    ])?;
    for class in ["1:10", "1:20"] {
        tc(&[
            "class", "add", "dev", "lo", "parent", "1:", "classid", class, "htb", "rate", "100gbit",
        ])?;
    }
    set_tbf("add", mbit)?;
    for port in ports {
        limit_port(*port)?;
    }
    Ok(())
}

/// Adds (`add`) or changes (`change`) the limiting `tbf`: `mbit` Mbit/s.
fn set_tbf(verb: &str, mbit: u32) -> Result<()> {
    let rate = format!("{mbit}mbit");
    tc(&[
        "qdisc", verb, "dev", "lo", "parent", "1:20", "handle", "20:", "tbf", "rate", &rate,
        "burst", "512kb", "latency", "50ms",
    ])
}

/// Sends loopback traffic to or from `port` through the limiting class.
fn limit_port(port: u16) -> Result<()> {
    let p = port.to_string();
    for dir in ["dport", "sport"] {
        tc(&[
            "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
            "match", "ip", dir, &p, "0xffff", "flowid", "1:20",
        ])?;
    }
    Ok(())
}

fn bandwidth(quick: bool) -> Result<Value> {
    // Its own thread in its own namespace: the limit on that loopback
    // must not follow the other scenarios.
    std::thread::spawn(move || -> Result<Value> {
        let _ns = revtun_tests::Netns::enter_new()?;
        let dur = if quick { Duration::from_secs(2) } else { Duration::from_secs(6) };
        // Two sinks: the raw baseline's port is limited; the site's
        // target is not (the tunnel crosses the limit once, like raw).
        let (raw_sink, site_sink) = (crate::multi::start_sink()?, crate::multi::start_sink()?);
        let port = free_port()?;
        let expose = format!("bench/sink=127.0.0.1:{port}");
        let mut host = vec!["--log-level", "warn", "--expose", &expose];
        host.extend_from_slice(LIVENESS);
        let service = format!("--service=sink={site_sink}");
        let rates: &[u32] = if quick { &[100] } else { &[100, 1000] };
        let mut rows = Vec::new();
        for (i, &mbit) in rates.iter().enumerate() {
            let b = Bench::start_via(&host, &[&service], |addr| {
                if i == 0 {
                    limit_ports(&[raw_sink.port(), addr.port()], mbit)?;
                }
                Ok(vec![addr])
            })?;
            if i > 0 {
                set_tbf("change", mbit)?;
                // The new host listens on another port: limit it too.
                limit_port(b.host.addr.port())?;
            }
            let tunnel_addr = format!("127.0.0.1:{port}").parse()?;
            let raw = crate::multi::push(raw_sink, 1, dur)?[0] * 1000.0;
            let tun = crate::multi::push(tunnel_addr, 1, dur)?[0] * 1000.0;
            rows.push(json!({
                "limit_mbit_s": mbit,
                "raw_mbit_s": raw,
                "tunnel_mbit_s": tun,
                "ratio": if raw > 0.0 { tun / raw } else { 0.0 },
            }));
            drop(b);
        }
        Ok(json!({
            "what": "tbf on the loopback of a namespace the lab makes, on the tunnel's TCP connection and on raw TCP to a sink; one stream each",
            "seconds_per_run": dur.as_secs_f64(),
            "runs": rows,
        }))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the bandwidth scenario panicked"))?
}

fn rtt(quick: bool) -> Result<Value> {
    let dur = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(8)
    };
    let sink = crate::multi::start_sink()?;
    let defaults = revtun_proto::tunnel::Config::default();
    let (window, max_window) = (defaults.stream_window, defaults.max_stream_window);
    let mut rows = Vec::new();
    for one_way_ms in [25u64, 75] {
        let delay = Duration::from_millis(one_way_ms);
        let path = (PATH_RATE as f64 * delay.as_secs_f64()) as usize + (256 << 10);
        let shape = |p: &Impair| {
            p.set_delay(delay, Duration::ZERO);
            p.set_rate(PATH_RATE);
        };
        let raw_path = Impair::with_path(sink, path)?;
        shape(&raw_path);
        let port = free_port()?;
        let mut proxies = Vec::new();
        let mut host = LIVENESS.to_vec();
        let expose = format!("bench/sink=127.0.0.1:{port}");
        host.extend_from_slice(&["--log-level", "warn", "--expose", &expose]);
        let service = format!("--service=sink={sink}");
        let b = Bench::start_via(&host, &[&service], |addr| {
            let p = Impair::with_path(addr, path)?;
            shape(&p);
            proxies.push(p);
            Ok(proxies.iter().map(Impair::addr).collect())
        })?;
        let tunnel_addr = format!("127.0.0.1:{port}").parse()?;
        let raw = crate::multi::push(raw_path.addr(), 1, dur)?[0] * 1000.0;
        let tun = crate::multi::push(tunnel_addr, 1, dur)?[0] * 1000.0;
        let rtt_s = 2.0 * delay.as_secs_f64();
        rows.push(json!({
            "rtt_ms": 2 * one_way_ms,
            "path_mbit_s": PATH_RATE as f64 * 8.0 / 1e6,
            "raw_mbit_s": raw,
            "tunnel_mbit_s": tun,
            "ratio": if raw > 0.0 { tun / raw } else { 0.0 },
            "initial_stream_window_allows_mbit_s": f64::from(window) * 8.0 / rtt_s / 1e6,
            "largest_stream_window_allows_mbit_s": f64::from(max_window) * 8.0 / rtt_s / 1e6,
        }));
        drop(b);
    }
    Ok(json!({ "seconds_per_run": dur.as_secs_f64(), "runs": rows }))
}

fn storm(quick: bool) -> Result<Value> {
    let n = if quick { 10 } else { 200 };
    let mut flags = crate::MANY_SITES_HOST_FLAGS.to_vec();
    flags.extend_from_slice(LIVENESS);
    let host = Host::start(&flags)?;
    let proxy = Impair::start(host.addr)?;
    let agents: Vec<Proc> = (0..n)
        .map(|i| {
            let dir = host.enroll_to(&format!("cut-{i}"), &[proxy.addr()])?;
            let mut cmd = Command::new(bin("revtun-site"));
            cmd.args([
                "run",
                "--state-dir",
                &dir.to_string_lossy(),
                "--log-level=error",
            ])
            .args(LIVENESS);
            Proc::spawn(&mut cmd)
        })
        .collect::<Result<_>>()?;
    let up = Instant::now();
    while agents.iter().any(|a| a.count_stdout("tunnel up") < 1) {
        if up.elapsed() > Duration::from_secs(60) {
            bail!("not every site came up through the proxy");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cut = Instant::now();
    proxy.cut();
    let mut back: Vec<Option<f64>> = vec![None; n];
    while back.iter().any(Option::is_none) && cut.elapsed() < Duration::from_secs(90) {
        for (i, a) in agents.iter().enumerate() {
            if back[i].is_none() && a.count_stdout("tunnel up") >= 2 {
                back[i] = Some(cut.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut times: Vec<f64> = back.iter().flatten().copied().collect();
    if times.len() < n {
        bail!(
            "only {} of {n} sites came back within 90 s of the cut",
            times.len()
        );
    }
    times.sort_by(f64::total_cmp);
    Ok(json!({
        "sites": n,
        "back_p50_s": times[n / 2],
        "back_all_s": times[n - 1],
    }))
}
