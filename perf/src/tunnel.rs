//! Tunnel scenarios: each measures the tunnel and raw loopback TCP (the
//! same client, the same service, no tunnel) in the same run, interleaved.
//!
//! Placement: the host data plane runs one shard pinned to CPU 0, the site
//! agent is pinned to CPU 1 (PERF_NOTES: both ends on one core costs a
//! third of the throughput); control, clients and the service float.

use anyhow::Result;
use hdrhistogram::Histogram;
use revtun_tests::Bench;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Starts a host and site placed on different cores.
pub fn bench() -> Result<Bench> {
    bench_with(&[], &[])
}

/// [`bench`] with extra host and site flags.
pub fn bench_with(host_extra: &[&str], site_extra: &[&str]) -> Result<Bench> {
    let spin = std::env::var("REVTUN_PERF_SPIN").unwrap_or_else(|_| "0us".into());
    let pin = std::env::var("REVTUN_PERF_PIN")
        .map(|v| v != "0")
        .unwrap_or(true);
    let mut host = vec!["--shards", "1", "--log-level", "warn", "--spin", &spin];
    let site_spin = format!("--spin={spin}");
    let mut site = vec!["--log-level=warn", &site_spin];
    if pin {
        host.push("--pin");
        site.push("--cpu=1");
    }
    host.extend_from_slice(host_extra);
    site.extend_from_slice(site_extra);
    Bench::start(&host, &site)
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    Ok(s)
}

/// Median of a sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `throughput`: one stream and 8 streams, tunnel vs raw. One thread
/// drives all streams and one thread sinks them (see `multi`).
pub fn throughput(quick: bool) -> Result<Value> {
    let sink = crate::multi::start_sink()?;
    let port: SocketAddr = format!("127.0.0.1:{}", revtun_tests::free_port()?).parse()?;
    let b = bench_with(
        &["--expose", &format!("bench/sink={port}")],
        &[&format!("--service=sink={sink}")],
    )?;
    let (reps, dur) = if quick {
        (1, Duration::from_millis(500))
    } else {
        (5, Duration::from_secs(3))
    };
    let (mut raw1, mut tun1, mut raw8, mut tun8, mut fair) =
        (vec![], vec![], vec![], vec![], vec![]);
    let push = crate::multi::push;
    for _ in 0..reps {
        raw1.push(push(sink, 1, dur)?[0]);
        tun1.push(push(port, 1, dur)?[0]);
        raw8.push(push(sink, 8, dur)?.iter().sum());
        let per = push(port, 8, dur)?;
        let total: f64 = per.iter().sum();
        let share = total / 8.0;
        fair.push(
            per.iter()
                .map(|x| (x - share).abs() / share)
                .fold(0.0, f64::max),
        );
        tun8.push(total);
    }
    drop(b);
    let (r1, t1, r8, t8) = (
        median(raw1.clone()),
        median(tun1.clone()),
        median(raw8.clone()),
        median(tun8.clone()),
    );
    Ok(json!({
        "what": "host port -> tunnel -> site sink; raw = the same client straight to the sink. One client thread and one sink thread for all streams, 1 MiB writes",
        "placement": "data plane shard pinned to CPU 0, site agent to CPU 1; client, sink and control float",
        "repetitions": reps,
        "seconds_each": dur.as_secs_f64(),
        "raw_one_gbit_s": r1,
        "tunnel_one_gbit_s": t1,
        "ratio_one": t1 / r1,
        "raw_eight_gbit_s": r8,
        "tunnel_eight_gbit_s": t8,
        "ratio_eight": t8 / r8,
        "eight_over_one": t8 / t1,
        "eight_worst_deviation_from_fair_share": median(fair.clone()),
        "targets": { "ratio_one": 0.40, "eight_over_one": 1.0, "fair_share_deviation": 0.20 },
        "samples": { "raw_one": raw1, "tunnel_one": tun1, "raw_eight": raw8, "tunnel_eight": tun8, "fairness": fair },
    }))
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn pct(h: &Histogram<u64>) -> Value {
    json!({
        "p50_us": h.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_us": h.value_at_quantile(0.99) as f64 / 1000.0,
        "p999_us": h.value_at_quantile(0.999) as f64 / 1000.0,
        "max_us": h.max() as f64 / 1000.0,
        "count": h.len(),
    })
}

fn ratios(t: &Histogram<u64>, r: &Histogram<u64>) -> Value {
    let q = |h: &Histogram<u64>, p| h.value_at_quantile(p) as f64;
    json!({
        "p50": q(t, 0.5) / q(r, 0.5),
        "p99": q(t, 0.99) / q(r, 0.99),
        "p999": q(t, 0.999) / q(r, 0.999),
    })
}

/// Histogram as (value_us, cumulative fraction) points for the report.
pub fn cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    [
        0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999,
    ]
    .iter()
    .map(|&q| (h.value_at_quantile(q) as f64 / 1000.0, q))
    .collect()
}

/// Round trips through `b` and straight to its service, interleaved.
fn round_trips_both(b: &Bench, n: usize, reps: usize) -> Result<(Histogram<u64>, Histogram<u64>)> {
    let (mut raw, mut tun) = (hist(), hist());
    for _ in 0..reps {
        raw.add(crate::peers::round_trips(b.target, n)?)?;
        tun.add(crate::peers::round_trips(b.port, n)?)?;
    }
    Ok((raw, tun))
}

/// `latency`: 64-byte request/response round trips, tunnel vs direct,
/// with the simplest client (one thread, blocking socket, `TCP_NODELAY`),
/// so the direct figure is this machine's floor. The headline is the
/// default placement (host and site started with no tuning flag); the
/// placement of the other scenarios (shard pinned to CPU 0, site to CPU
/// 1) is the second line.
pub fn latency(quick: bool) -> Result<Value> {
    let n = if quick { 2_000 } else { 50_000 };
    let reps = if quick { 1 } else { 3 };
    let b = Bench::start(&[], &[])?;
    let (raw, tun) = round_trips_both(&b, n, reps)?;
    drop(b);
    let b = bench()?;
    let (praw, ptun) = round_trips_both(&b, n, reps)?;
    drop(b);
    Ok(json!({
        "what": "64-byte ping-pong over one connection (ECHO service), simplest client; default placement (no tuning flags)",
        "round_trips_each": n * reps,
        "raw": pct(&raw),
        "tunnel": pct(&tun),
        "ratio": ratios(&tun, &raw),
        "added_p50_us": (tun.value_at_quantile(0.5) as f64 - raw.value_at_quantile(0.5) as f64) / 1000.0,
        "pinned": {
            "placement": "data plane shard pinned to CPU 0, site agent to CPU 1",
            "raw": pct(&praw),
            "tunnel": pct(&ptun),
            "ratio": ratios(&ptun, &praw),
        },
        "targets": { "p50": 1.6, "p99": 2.0, "peers": "issue 13: at or below the best peer's in the same run (revtun-perf peers)" },
        "cdf_us": { "raw": cdf(&raw), "tunnel": cdf(&tun) },
    }))
}

/// `connect`: new connection + first round trip, tunnel vs direct.
pub fn connect_time(quick: bool) -> Result<Value> {
    let b = bench()?;
    let n = if quick { 50 } else { 2_000 };
    let one = |addr: SocketAddr| -> Result<u64> {
        let t = Instant::now();
        let mut s = connect(addr)?;
        s.write_all(b"ECHO\nx")?;
        let mut c = [0u8; 1];
        s.read_exact(&mut c)?;
        Ok(t.elapsed().as_nanos() as u64)
    };
    let (mut raw, mut tun) = (hist(), hist());
    for _ in 0..n {
        raw.record(one(b.target)?)?;
        tun.record(one(b.port)?)?;
    }
    Ok(json!({
        "what": "TCP connect, 'ECHO' and a 1-byte round trip on a new connection (a new stream through the tunnel)",
        "connections_each": n,
        "raw": pct(&raw),
        "tunnel": pct(&tun),
        "ratio": ratios(&tun, &raw),
    }))
}
