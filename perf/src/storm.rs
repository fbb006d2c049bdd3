//! `storm`: reconnect storm (THREATS.md row 10). N real site agents
//! (`revtun-site run` processes) hold tunnels to one host; the host goes
//! down for a while (control killed, so its data plane exits and every
//! tunnel drops) and comes back on the same address. Each agent retries
//! with full-jitter exponential backoff (capped at its `--max-backoff`,
//! default 30 s). The scenario records when each site is back and reports
//! how long the last one took and the largest share of sites that came
//! back within any 100 ms (a synchronised wave would put most of them in
//! one bucket).

use anyhow::{bail, Context, Result};
use revtun_tests::{bin, Host, Proc};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::MANY_SITES_HOST_FLAGS as HOST_FLAGS;

/// Runs the scenario with `sites` agents (default 1,000 as in THREATS.md;
/// 20 with `quick`). Fails if a site is not back within 90 s of the host's
/// return (a correctness bound, not a speed figure).
pub fn run(quick: bool, sites: Option<usize>) -> Result<Value> {
    let n = sites.unwrap_or(if quick { 20 } else { 1000 });
    let outage = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(30)
    };
    let mut host = Host::start(HOST_FLAGS)?;
    let dirs = enroll(&host, n)?;
    let agents: Vec<Proc> = dirs
        .iter()
        .map(|d| {
            Proc::spawn(Command::new(bin("revtun-site")).args([
                "run",
                "--state-dir",
                &d.to_string_lossy(),
                "--log-level=error",
            ]))
        })
        .collect::<Result<_>>()?;
    let up = Instant::now();
    while agents.iter().any(|a| a.count_stdout("tunnel up") < 1) {
        if up.elapsed() > Duration::from_secs(120) {
            bail!("not every site came up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A tunnel that stayed up this long resets the agent's backoff, as
    // for sites that were connected for a while before an outage.
    if !quick {
        std::thread::sleep(revtun_dataplane::agent::STABLE_AFTER + Duration::from_secs(1));
    }
    host.restart_control(outage, HOST_FLAGS)
        .context("restarting control")?;
    let back_at = Instant::now();
    let limit = outage + Duration::from_secs(90);
    let mut back: Vec<Option<Duration>> = vec![None; n];
    while back.iter().any(Option::is_none) && back_at.elapsed() < limit {
        for (i, a) in agents.iter().enumerate() {
            if back[i].is_none() && a.count_stdout("tunnel up") >= 2 {
                back[i] = Some(back_at.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut times: Vec<f64> = back.iter().flatten().map(Duration::as_secs_f64).collect();
    times.sort_by(f64::total_cmp);
    let returned = times.len();
    let pct = |q: f64| {
        times
            .get(((returned as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    // Returns per 100 ms bucket: the largest is the wave.
    let mut buckets = std::collections::HashMap::<u64, usize>::new();
    for t in &times {
        *buckets.entry((t * 10.0) as u64).or_default() += 1;
    }
    let peak = buckets.values().copied().max().unwrap_or(0);
    drop(agents);
    if returned < n {
        bail!("only {returned} of {n} sites came back within {limit:?} of the host's return");
    }
    Ok(json!({
        "what": "N real site agents; the host is down for the outage (control killed, tunnels drop) and returns on the same address; time for each site to hold a tunnel again (full-jitter backoff, cap 30 s)",
        "sites": n,
        "outage_s": outage.as_secs_f64(),
        "sites_back": returned,
        "back_p50_s": pct(0.5),
        "back_p99_s": pct(0.99),
        "back_all_s": times.last().copied().unwrap_or(0.0),
        "peak_returns_per_100ms": peak,
        "peak_share_per_100ms": peak as f64 / n.max(1) as f64,
        "targets": { "all_back_within_s": 60.0 },
    }))
}

/// Enrolls `n` sites (four at a time); their state directories.
fn enroll(host: &Host, n: usize) -> Result<Vec<std::path::PathBuf>> {
    let names: Vec<String> = (0..n).map(|i| format!("storm-{i}")).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(n.div_ceil(4).max(1))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|c| host.enroll(c))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut dirs = Vec::new();
        for h in handles {
            dirs.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("enroll thread panicked"))??,
            );
        }
        Ok(dirs)
    })
}
