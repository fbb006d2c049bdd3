//! `demo`: the one-command tour. A complete host (control + data plane)
//! and a site agent on loopback, the site provisioned with the keytool,
//! a TCP service and a synthetic camera exposed through the tunnel, bulk
//! traffic and video viewers for a bounded time with a live progress line
//! each second, then a summary. Everything stops when it returns.

use anyhow::Result;
use revtun_tests::{free_port, rss_kib};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

/// Runs the tour (`quick`: fewer seconds).
pub fn run(quick: bool) -> Result<Value> {
    let secs = if quick { 2 } else { 5 };
    println!("demo: starting a host (control + data plane) on loopback");
    let sink = crate::multi::start_sink()?;
    let svc_port: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    println!("demo: issuing a keyfile for site 'demo' and enrolling it (one-time token)");
    let (host, agent, rtsp, login) = crate::fanout::video_lab(
        "demo",
        &["--expose", &format!("demo/sink={svc_port}")],
        &[format!("--service=sink={sink}")],
    )?;
    println!(
        "demo: host listening on {}, service port {svc_port}, RTSP on 127.0.0.1:{rtsp}",
        host.addr
    );
    println!("demo: site connected out to the host; tunnel up");
    println!(
        "demo: viewer account '{}' added with the keytool (allowed demo/*); viewers answer the host's RTSP Digest challenge",
        login.user
    );

    println!("demo: bulk TCP through the tunnel, {secs} s (one stream, then 8)");
    let mut bulk = Vec::new();
    for s in 0..secs {
        let streams = if s < secs / 2 { 1 } else { 8 };
        let per = crate::multi::push(svc_port, streams, Duration::from_secs(1))?;
        let total: f64 = per.iter().sum();
        println!("  [{:>2}s] {streams} stream(s): {total:6.2} Gbit/s", s + 1);
        bulk.push((streams, total));
    }

    let viewers = if quick { 5 } else { 20 };
    println!("demo: {viewers} viewers of the camera (8 Mbit/s, crosses the tunnel once), {secs} s");
    let mut worst_p99 = 0.0f64;
    let mut p50s = Vec::new();
    let mut drops = 0;
    let mut frames = 0;
    for s in 0..secs {
        let (min_frames, d, lat) =
            crate::fanout::round(rtsp, "demo/cam", &login, viewers, Duration::from_secs(1))?;
        let (p50, p99) = (
            lat.value_at_quantile(0.5) as f64 / 1e6,
            lat.value_at_quantile(0.99) as f64 / 1e6,
        );
        println!("  [{:>2}s] {viewers} viewers: >= {min_frames} frames each, {d} dropped, latency p50 {p50:.2} ms p99 {p99:.2} ms", s + 1);
        worst_p99 = worst_p99.max(p99);
        p50s.push(p50);
        drops += d;
        frames += min_frames;
    }
    let dp = host.dataplane_pid().map(rss_kib).unwrap_or(0);
    let ctl = rss_kib(host.control.pid() as i32);
    let one = bulk
        .iter()
        .filter(|(n, _)| *n == 1)
        .map(|(_, g)| *g)
        .fold(0.0, f64::max);
    let eight = bulk
        .iter()
        .filter(|(n, _)| *n == 8)
        .map(|(_, g)| *g)
        .fold(0.0, f64::max);
    p50s.sort_by(|a, b| a.total_cmp(b));
    let p50 = p50s.get(p50s.len() / 2).copied().unwrap_or(0.0);
    println!("demo: summary");
    println!("  throughput through the encrypted tunnel: {one:.2} Gbit/s (1 stream), {eight:.2} Gbit/s (8 streams)");
    println!("  video: {viewers} viewers, >= {frames} frames each over {secs} s, {drops} dropped packets, latency p50 {p50:.2} ms, worst p99 {worst_p99:.2} ms");
    println!(
        "  memory: data plane {:.1} MiB, control {:.1} MiB resident",
        dp as f64 / 1024.0,
        ctl as f64 / 1024.0
    );
    println!("demo: stopping everything");
    drop(agent);
    drop(host);
    Ok(json!({
        "gbit_s_one_stream": one,
        "gbit_s_eight_streams": eight,
        "viewers": viewers,
        "min_frames_per_viewer_total": frames,
        "dropped_packets": drops,
        "latency_p50_ms": p50,
        "latency_worst_p99_ms": worst_p99,
        "dataplane_rss_kib": dp,
        "control_rss_kib": ctl,
    }))
}
