//! `revtun-perf`: the perf lab.
//!
//! Each scenario runs on loopback and reports medians over repetitions.
//! Every figure of a tunnel scenario is to be read as a ratio against the
//! `baseline` measured in the same run (raw loopback TCP), never as a bare
//! number: absolute figures drift 10-30% between runs on shared machines.
//!
//! Scenarios: `baseline` (raw loopback TCP), `throughput`, `latency`,
//! `connect` (tunnel vs raw, same run), `idle` (memory per idle tunnel),
//! `handshake` (control's rates, data plane under a handshake flood),
//! `fanout`, `storm`, `faults` (the fault lab: cuts, a flipped byte, a
//! black hole, long round trips and a cut storm through an impairment
//! proxy), `peers` (revtun beside rathole and bore when installed),
//! `fleet` (three hosts on a real etcd, agents with two tunnels each, the
//! cost of a peer-link hop, SIGKILL of one host).

mod baseline;
mod demo;
mod fanout;
mod faults;
mod fleet;
mod handshake;
mod idle;
mod multi;
mod peers;
mod report;
mod storm;
mod tunnel;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use std::path::PathBuf;

/// revtun perf lab.
#[derive(Debug, Parser)]
#[command(name = "revtun-perf", version)]
struct Args {
    /// Scenario to run (baseline, throughput, latency, connect, idle, handshake, fanout, storm, faults, peers, fleet), 'all', or 'demo' (the guided tour).
    scenario: Option<String>,
    /// Run each scenario briefly (checks the lab works; figures are rough).
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON to this file (and an SVG report beside it).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Render the SVG report from an existing JSON results file and exit.
    #[arg(long)]
    render: Option<PathBuf>,
    /// fanout: viewer counts to step through (default 10,100,250,500,1000,1500).
    #[arg(long, value_delimiter = ',')]
    viewers: Vec<usize>,
    /// fanout: host data-plane shards (default: one per CPU).
    #[arg(long)]
    shards: Option<usize>,
    /// fanout: viewers' transports, tcp, udp and/or multicast (default tcp
    /// and udp, in one run; multicast runs the lab in a network namespace).
    #[arg(long, value_delimiter = ',', value_parser = parse_transport)]
    transport: Vec<fanout::Transport>,
    /// storm and fleet: site agents (processes) to run (default 1000; 20
    /// for storm and 24 for fleet with --quick).
    #[arg(long)]
    sites: Option<usize>,
}

fn parse_transport(s: &str) -> Result<fanout::Transport, String> {
    match s {
        "tcp" => Ok(fanout::Transport::Tcp),
        "udp" => Ok(fanout::Transport::Udp),
        "multicast" => Ok(fanout::Transport::Multicast),
        _ => Err(format!("{s:?}: tcp or udp")),
    }
}

/// Host flags of scenarios that simulate many sites from one address
/// (127.0.0.1): one shard, quiet logs, and no per-prefix handshake rate
/// limit (it is for real deployments).
pub const MANY_SITES_HOST_FLAGS: &[&str] = &[
    "--shards",
    "1",
    "--log-level",
    "warn",
    "--handshake-rate-per-prefix",
    "0",
];

/// Scenario names in the order `all` runs them.
const SCENARIOS: &[&str] = &[
    "baseline",
    "throughput",
    "latency",
    "connect",
    "idle",
    "handshake",
    "fanout",
    "storm",
    "faults",
    "peers",
    "fleet",
];

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("revtun-perf: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(path) = &args.render {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let out = path.with_extension("svg");
        std::fs::write(&out, report::svg(&v))?;
        println!("report: {}", out.display());
        return Ok(());
    }
    let Some(scenario) = args.scenario.as_deref() else {
        bail!("name a scenario ({} or all)", SCENARIOS.join(", "));
    };
    if scenario == "demo" {
        // The tour is interactive output, not a lab scenario.
        demo::run(args.quick)?;
        return Ok(());
    }
    let names: Vec<&str> = match scenario {
        "all" => SCENARIOS.to_vec(),
        s if SCENARIOS.contains(&s) => vec![s],
        other => bail!(
            "unknown scenario {other:?}; available: {} or all",
            SCENARIOS.join(", ")
        ),
    };
    let mut results = serde_json::Map::new();
    for name in names {
        eprintln!("== {name}");
        let value: Value = match name {
            "baseline" => baseline::run(args.quick)?,
            "throughput" => tunnel::throughput(args.quick)?,
            "latency" => tunnel::latency(args.quick)?,
            "connect" => tunnel::connect_time(args.quick)?,
            "idle" => idle::run(args.quick)?,
            "handshake" => handshake::run(args.quick)?,
            "fanout" => fanout::run(args.quick, &args.viewers, args.shards, &args.transport)?,
            "storm" => storm::run(args.quick, args.sites)?,
            "faults" => faults::run(args.quick)?,
            "peers" => peers::run(args.quick)?,
            "fleet" => fleet::run(args.quick, args.sites)?,
            _ => unreachable!("names are checked above"),
        };
        println!("{name}: {}", serde_json::to_string_pretty(&value)?);
        results.insert(name.to_string(), value);
    }
    let report = json!({
        "quick": args.quick,
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "scenarios": results,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let svg = path.with_extension("svg");
        std::fs::write(&svg, report::svg(&report))
            .with_context(|| format!("writing {}", svg.display()))?;
        eprintln!("results: {} and {}", path.display(), svg.display());
    }
    Ok(())
}
