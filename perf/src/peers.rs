//! `peers`: the same scenarios through revtun, raw loopback and the other
//! reverse tunnels when they are installed (rathole over TLS and over
//! plain TCP, bore), interleaved in one run: one stream and 8 streams of
//! bulk throughput, 64-byte round trips, and new connections. Every tool
//! runs with its default settings and placement (no pinning), as a user
//! starts it; revtun as `revtun-control` and `revtun-site run` start with
//! no tuning flag.
//!
//! Install the peers with `cargo install --locked rathole bore-cli`
//! (rathole's TLS needs `libssl-dev` and `pkg-config` to build, and the
//! `openssl` command for the lab to make its certificate). A peer that is
//! not installed is skipped and named in the results; the scenario never
//! fails for a missing peer.
//!
//! The whole scenario runs in a network namespace it creates (bore's
//! server listens on its fixed control port, 7835; nothing here touches
//! the machine's own network).

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use revtun_tests::{free_port, Bench, Proc};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One tool under test: where its forwarded echo and sink services are.
struct Tool {
    name: &'static str,
    encrypted: bool,
    echo: SocketAddr,
    sink: SocketAddr,
    _procs: Vec<Proc>,
    _bench: Option<Bench>,
}

/// Looks for an installed binary on `PATH` or in `~/.cargo/bin`.
fn find(bin: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(bin)).find(|p| p.is_file())
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until an ECHO round trip through `echo` works.
/// Connects to `echo` (the test service's `ECHO`), sends `msg` and reads
/// it back, each step within `timeout`; the stream stays open.
pub fn echo_once(echo: SocketAddr, timeout: Duration, msg: &[u8]) -> Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&echo, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"ECHO\n")?;
    s.write_all(msg)?;
    let mut b = vec![0u8; msg.len()];
    s.read_exact(&mut b)?;
    anyhow::ensure!(b == msg, "echo mismatch");
    Ok(s)
}

fn wait_echo(echo: SocketAddr, limit: Duration, who: &str) -> Result<()> {
    let end = Instant::now() + limit;
    loop {
        let ok = echo_once(echo, Duration::from_secs(1), b"ping").map(drop);
        match ok {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > end => bail!("{who} did not forward within {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// revtun with default settings: the echo service on `bench/svc`, the
/// sink on `bench/sink`.
fn revtun(sink: SocketAddr) -> Result<Tool> {
    let port = addr(free_port()?);
    let expose = format!("bench/sink={port}");
    let service = format!("--service=sink={sink}");
    let b = Bench::start(&["--expose", &expose], &[&service])?;
    let echo = b.port;
    Ok(Tool {
        name: "revtun",
        encrypted: true,
        echo,
        sink: port,
        _procs: Vec::new(),
        _bench: Some(b),
    })
}

/// A CA and a server certificate for `localhost` as PKCS#12 (rathole's
/// TLS server wants one), made with the `openssl` command in `dir`.
fn rathole_identity(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let sh = |args: &[&str]| -> Result<()> {
        let cmd = &mut Command::new("openssl");
        revtun_tests::run_ok(cmd.args(args).current_dir(dir), Duration::from_secs(30)).map(drop)
    };
    // A P-256 key (and a request or self-signed certificate) for `cn`.
    let key = |extra: &[&str], key: &str, out: &str, cn: &str| -> Result<()> {
        let mut args = vec!["req"];
        args.extend_from_slice(extra);
        let subj = format!("/CN={cn}");
        args.extend_from_slice(&[
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            out,
            "-subj",
            &subj,
        ]);
        sh(&args)
    };
    key(&["-x509", "-days", "2"], "ca.key", "ca.pem", "perf-ca")?;
    key(&[], "server.key", "server.csr", "localhost")?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n")?;
    sh(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ])?;
    sh(&[
        "pkcs12",
        "-export",
        "-out",
        "identity.pfx",
        "-inkey",
        "server.key",
        "-in",
        "server.pem",
        "-certfile",
        "ca.pem",
        "-passout",
        "pass:perf",
    ])?;
    Ok((dir.join("identity.pfx"), dir.join("ca.pem")))
}

/// rathole, server and client, forwarding echo and sink; over TLS or
/// plain TCP.
fn rathole(
    bin: &Path,
    tls: bool,
    dir: &Path,
    echo_target: SocketAddr,
    sink_target: SocketAddr,
) -> Result<Tool> {
    let control = free_port()?;
    let (echo, sink) = (addr(free_port()?), addr(free_port()?));
    let (server_tls, client_tls) = if tls {
        let (pfx, ca) = rathole_identity(dir)?;
        (
            format!(
                "[server.transport]\ntype = \"tls\"\n[server.transport.tls]\npkcs12 = \"{}\"\npkcs12_password = \"perf\"\n",
                pfx.display()
            ),
            format!(
                "[client.transport]\ntype = \"tls\"\n[client.transport.tls]\ntrusted_root = \"{}\"\nhostname = \"localhost\"\n",
                ca.display()
            ),
        )
    } else {
        (
            "[server.transport]\ntype = \"tcp\"\n".to_string(),
            "[client.transport]\ntype = \"tcp\"\n".to_string(),
        )
    };
    let server = format!(
        "[server]\nbind_addr = \"127.0.0.1:{control}\"\ndefault_token = \"perf-lab-token\"\n{server_tls}\
         [server.services.echo]\nbind_addr = \"{echo}\"\n[server.services.sink]\nbind_addr = \"{sink}\"\n"
    );
    let client = format!(
        "[client]\nremote_addr = \"localhost:{control}\"\ndefault_token = \"perf-lab-token\"\n{client_tls}\
         [client.services.echo]\nlocal_addr = \"{echo_target}\"\n[client.services.sink]\nlocal_addr = \"{sink_target}\"\n"
    );
    let (s, c) = (dir.join("server.toml"), dir.join("client.toml"));
    std::fs::write(&s, server)?;
    std::fs::write(&c, client)?;
    let quiet = |cmd: &mut Command| {
        cmd.env("RUST_LOG", "warn");
    };
    let mut sc = Command::new(bin);
    sc.arg("--server").arg(&s);
    quiet(&mut sc);
    let server = Proc::spawn(&mut sc)?;
    std::thread::sleep(Duration::from_millis(200));
    let mut cc = Command::new(bin);
    cc.arg("--client").arg(&c);
    quiet(&mut cc);
    let client = Proc::spawn(&mut cc)?;
    let name = if tls { "rathole_tls" } else { "rathole_tcp" };
    wait_echo(echo, Duration::from_secs(20), name)
        .with_context(|| format!("server: {}\nclient: {}", server.log(), client.log()))?;
    Ok(Tool {
        name,
        encrypted: tls,
        echo,
        sink,
        _procs: vec![server, client],
        _bench: None,
    })
}

/// bore (plaintext): its server and one `bore local` per service.
fn bore(bin: &Path, echo_target: SocketAddr, sink_target: SocketAddr) -> Result<Tool> {
    let server = Proc::spawn(Command::new(bin).args([
        "server",
        "--bind-addr",
        "127.0.0.1",
        "--min-port",
        "1024",
        "--max-port",
        "65535",
    ]))?;
    std::thread::sleep(Duration::from_millis(200));
    let mut procs = vec![server];
    let mut ports = Vec::new();
    for target in [echo_target, sink_target] {
        let port = free_port()?;
        let p = Proc::spawn(Command::new(bin).args([
            "local",
            &target.port().to_string(),
            "--local-host",
            "127.0.0.1",
            "--to",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]))?;
        procs.push(p);
        ports.push(addr(port));
    }
    wait_echo(ports[0], Duration::from_secs(20), "bore")?;
    Ok(Tool {
        name: "bore",
        encrypted: false,
        echo: ports[0],
        sink: ports[1],
        _procs: procs,
        _bench: None,
    })
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// 64-byte round trips on one connection: the simplest client (one
/// thread, blocking socket, `TCP_NODELAY`).
pub fn round_trips(echo: SocketAddr, n: usize) -> Result<Histogram<u64>> {
    let mut s = TcpStream::connect(echo)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"ECHO\n")?;
    let msg = [0x42u8; 64];
    let mut back = [0u8; 64];
    let mut h = hist();
    for i in 0..n + n / 10 {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        // The first tenth warms up and is not recorded.
        if i >= n / 10 {
            h.record(t.elapsed().as_nanos().max(1) as u64)?;
        }
    }
    anyhow::ensure!(back == msg, "echo mismatch");
    Ok(h)
}

/// New connection, `ECHO` and a 1-byte round trip, `n` times.
pub fn connects(echo: SocketAddr, n: usize) -> Result<Histogram<u64>> {
    let mut h = hist();
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect(echo)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(b"ECHO\nx")?;
        let mut c = [0u8; 1];
        s.read_exact(&mut c)?;
        h.record(t.elapsed().as_nanos().max(1) as u64)?;
    }
    Ok(h)
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[derive(Default)]
struct Figures {
    one: Vec<f64>,
    eight: Vec<f64>,
    fair: Vec<f64>,
    rtt: Option<Histogram<u64>>,
    connect: Option<Histogram<u64>>,
}

/// Runs the scenario.
pub fn run(quick: bool) -> Result<Value> {
    let _ns = revtun_tests::Netns::enter_new().context("a network namespace for the peers lab")?;
    let work = tempfile::tempdir()?;
    let sink = crate::multi::start_sink()?;
    let echo = revtun_tests::service::start()?;
    let mut tools = vec![Tool {
        name: "raw",
        encrypted: false,
        echo,
        sink,
        _procs: Vec::new(),
        _bench: None,
    }];
    tools.push(revtun(sink)?);
    let mut skipped = Vec::new();
    match find("rathole") {
        Some(bin) => {
            for tls in [true, false] {
                let dir = work
                    .path()
                    .join(if tls { "rathole-tls" } else { "rathole-tcp" });
                std::fs::create_dir_all(&dir)?;
                match rathole(&bin, tls, &dir, echo, sink) {
                    Ok(t) => tools.push(t),
                    Err(e) => skipped.push(format!(
                        "rathole ({}): {e:#}",
                        if tls { "tls" } else { "tcp" }
                    )),
                }
            }
        }
        None => skipped.push("rathole: not installed (cargo install --locked rathole)".to_string()),
    }
    match find("bore") {
        Some(bin) => match bore(&bin, echo, sink) {
            Ok(t) => tools.push(t),
            Err(e) => skipped.push(format!("bore: {e:#}")),
        },
        None => skipped.push("bore: not installed (cargo install --locked bore-cli)".to_string()),
    }
    for s in &skipped {
        eprintln!("peers: skipped {s}");
    }
    let (reps, dur, n_rtt, n_conn) = if quick {
        (1, Duration::from_millis(400), 2_000, 50)
    } else {
        (3, Duration::from_secs(2), 20_000, 500)
    };
    let mut figs: Vec<Figures> = tools.iter().map(|_| Figures::default()).collect();
    // Interleaved: each round measures every tool once, so drift in the
    // machine hits them alike.
    for _ in 0..reps {
        for (t, f) in tools.iter().zip(figs.iter_mut()) {
            f.one.push(crate::multi::push(t.sink, 1, dur)?[0]);
            let per = crate::multi::push(t.sink, 8, dur)?;
            let total: f64 = per.iter().sum();
            let share = total / 8.0;
            f.fair.push(
                per.iter()
                    .map(|x| (x - share).abs() / share)
                    .fold(0.0, f64::max),
            );
            f.eight.push(total);
            let h = round_trips(t.echo, n_rtt)?;
            f.rtt.get_or_insert_with(hist).add(&h)?;
            let h = connects(t.echo, n_conn)?;
            f.connect.get_or_insert_with(hist).add(&h)?;
        }
    }
    let median = crate::tunnel::median;
    let mut out = Map::new();
    for (t, f) in tools.iter().zip(&figs) {
        let (rtt, conn) = (
            f.rtt.clone().unwrap_or_else(hist),
            f.connect.clone().unwrap_or_else(hist),
        );
        out.insert(
            t.name.to_string(),
            json!({
                "encrypted": t.encrypted,
                "one_stream_gbit_s": median(f.one.clone()),
                "eight_streams_gbit_s": median(f.eight.clone()),
                "eight_worst_deviation_from_fair_share": median(f.fair.clone()),
                "round_trip_p50_us": us(&rtt, 0.5),
                "round_trip_p99_us": us(&rtt, 0.99),
                "connect_p50_us": us(&conn, 0.5),
                "connect_p99_us": us(&conn, 0.99),
                "samples": { "one": f.one, "eight": f.eight },
            }),
        );
    }
    let targets = verdicts(&out);
    Ok(json!({
        "what": "the same client and services through each tool, default settings and placement, interleaved rounds; raw = straight to the services",
        "repetitions": reps,
        "seconds_each": dur.as_secs_f64(),
        "round_trips_each": n_rtt,
        "connections_each": n_conn,
        "tools": out,
        "skipped": skipped,
        "targets": targets,
    }))
}

/// The targets of issue 13 against the best peer of this run (only when
/// at least one peer ran).
fn verdicts(tools: &Map<String, Value>) -> Value {
    let get = |t: &str, k: &str| tools.get(t).and_then(|v| v.get(k)).and_then(Value::as_f64);
    let peers: Vec<&String> = tools
        .keys()
        .filter(|k| *k != "raw" && *k != "revtun")
        .collect();
    if peers.is_empty() {
        return json!("no peer ran");
    }
    let best = |k: &str, lower: bool, only: &dyn Fn(&str) -> bool| -> Option<(String, f64)> {
        peers
            .iter()
            .filter(|p| only(p))
            .filter_map(|p| Some(((*p).clone(), get(p, k)?)))
            .reduce(|a, b| if (b.1 < a.1) == lower { b } else { a })
    };
    let plaintext = |p: &str| {
        tools
            .get(p)
            .and_then(|v| v.get("encrypted"))
            .and_then(Value::as_bool)
            == Some(false)
    };
    let any = |_: &str| true;
    let mut v = Map::new();
    let mut check = |name: &str, key: &str, lower: bool, only: &dyn Fn(&str) -> bool| {
        if let (Some((peer, theirs)), Some(ours)) = (best(key, lower, only), get("revtun", key)) {
            let met = if lower {
                ours <= theirs
            } else {
                ours >= theirs
            };
            v.insert(
                name.into(),
                json!({ "revtun": ours, "best_peer": peer, "theirs": theirs, "met": met }),
            );
        }
    };
    check(
        "round_trip_p50_at_or_below_best_peer",
        "round_trip_p50_us",
        true,
        &any,
    );
    check(
        "round_trip_p99_at_or_below_best_peer",
        "round_trip_p99_us",
        true,
        &any,
    );
    check(
        "one_stream_at_or_above_best_plaintext_peer",
        "one_stream_gbit_s",
        false,
        &plaintext,
    );
    check(
        "connect_at_or_below_best_peer",
        "connect_p50_us",
        true,
        &any,
    );
    if let (Some(one), Some(eight)) = (
        get("revtun", "one_stream_gbit_s"),
        get("revtun", "eight_streams_gbit_s"),
    ) {
        v.insert(
            "eight_streams_at_least_one".into(),
            json!({ "one": one, "eight": eight, "met": eight >= one }),
        );
    }
    Value::Object(v)
}
