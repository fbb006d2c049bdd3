//! `handshake`: enrollments and re-authentications per second that
//! control sustains, and the data plane's throughput while control is
//! flooded with handshakes (the flood must cost control CPU, not tunnel
//! bytes; the tunnel must not drop).

use crate::idle::enroll_many;
use anyhow::{anyhow, Result};
use revtun_dataplane::site::{self, new_key_and_csr, send_raw_enroll};
use revtun_proto::keyfile::Endpoint;
use revtun_proto::token::Token;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs `threads` workers calling `f` until `dur` passes; returns calls/s
/// and the error count.
fn hammer(
    threads: usize,
    dur: Duration,
    f: impl Fn() -> bool + Send + Sync + 'static,
) -> (f64, u64) {
    let f = Arc::new(f);
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (f, ok, bad) = (f.clone(), ok.clone(), bad.clone());
            std::thread::spawn(move || {
                while start.elapsed() < dur {
                    if f() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    (
        ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        bad.load(Ordering::Relaxed),
    )
}

/// Runs the scenario.
pub fn run(quick: bool) -> Result<Value> {
    let sink = crate::multi::start_sink()?;
    let port: SocketAddr = format!("127.0.0.1:{}", revtun_tests::free_port()?).parse()?;
    let b = crate::tunnel::bench_with(
        &[
            "--expose",
            &format!("bench/sink={port}"),
            "--max-pending-per-addr",
            "4096",
            "--max-pending-per-prefix",
            "4096",
            "--max-pending",
            "4096",
            // Every lab client comes from 127.0.0.1: measure capacity, not
            // the per-prefix rate limit.
            "--handshake-rate-per-prefix",
            "0",
        ],
        &[&format!("--service=sink={sink}")],
    )?;
    let (n_enroll, dur) = if quick {
        (20, Duration::from_millis(500))
    } else {
        (300, Duration::from_secs(3))
    };
    // Enrollment rate (TLS handshake, token check, CSR signing, SQLite commit).
    let t = Instant::now();
    let ids = enroll_many(&b.host, n_enroll)?;
    let enroll_per_s = ids.len() as f64 / t.elapsed().as_secs_f64();
    // Re-authentication rate: full mutual-TLS hello and hand-off.
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let (reauth_per_s, reauth_errors) = {
        let (ids, next) = (ids.clone(), next.clone());
        hammer(4, dur, move || {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize % ids.len();
            site::hello(&ids[i]).is_ok()
        })
    };
    // Data-plane throughput alone, then under a refused-enrollment flood.
    let quiet = crate::multi::push(port, 1, dur)?[0];
    let eps = vec![Endpoint {
        host: "127.0.0.1".into(),
        port: b.host.addr.port(),
    }];
    let ca = std::fs::read_to_string(b.host.state().join("ca.crt"))?;
    let ca_der = revtun_control::pki::pem_to_der(&ca).ok_or_else(|| anyhow!("ca.crt"))?;
    let (_k, csr) = new_key_and_csr("flood")?;
    let stop = Arc::new(AtomicBool::new(false));
    let flooded = Arc::new(AtomicU64::new(0));
    let floods: Vec<_> = (0..8)
        .map(|_| {
            let (eps, ca_der, csr, stop, flooded) = (
                eps.clone(),
                ca_der.clone(),
                csr.clone(),
                stop.clone(),
                flooded.clone(),
            );
            std::thread::spawn(move || {
                let bogus = Token {
                    id: [7; 16],
                    secret: [9; 32],
                };
                while !stop.load(Ordering::Relaxed) {
                    if send_raw_enroll(&eps, &ca_der, "flood", &bogus, &csr).is_ok() {
                        flooded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let under = crate::multi::push(port, 1, dur);
    let flood_secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        let _ = f.join();
    }
    let under = under?[0];
    Ok(json!({
        "what": "enrollments/s (4 threads), mutual-TLS re-authentications/s (4 threads), data-plane single-stream throughput alone and while 8 threads flood control with refused enrollments",
        "enrollments": n_enroll,
        "enrollments_per_s": enroll_per_s,
        "reauth_per_s": reauth_per_s,
        "reauth_errors": reauth_errors,
        "flood_handshakes_per_s": flooded.load(Ordering::Relaxed) as f64 / flood_secs,
        "tunnel_gbit_s_quiet": quiet,
        "tunnel_gbit_s_flooded": under,
        "flooded_over_quiet": under / quiet,
        "note": "control floats on both cores at nice 10 (its default --nice); the data plane shard is pinned to CPU 0 and the site to CPU 1; the flooding clients run in this process at nice 19, standing in for remote attackers; all clients come from 127.0.0.1, so the per-prefix handshake rate limit is off (--handshake-rate-per-prefix 0) to measure capacity",
    }))
}
