//! The tunnel end to end: real control, data plane and site agent on
//! loopback, real TCP clients at the host port, a real service at the site.

use anyhow::{bail, Result};
use revtun_tests::service::{expected, Hasher};
use revtun_tests::{download, free_port, upload, Bench, Host};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;

#[test]
fn one_gib_each_way_with_equal_sha256() -> Result<()> {
    let b = Bench::start(&[], &[])?;
    let reply = upload(&b, GIB, 7)?;
    assert_eq!(reply, format!("{GIB} {}", expected(GIB, 7)), "upload");
    let (n, digest) = download(&b, GIB, 9)?;
    assert_eq!(n, GIB);
    assert_eq!(digest, expected(GIB, 9), "download");
    Ok(())
}

#[test]
fn hundred_concurrent_streams_each_verified() -> Result<()> {
    let b = std::sync::Arc::new(Bench::start(&[], &[])?);
    let threads: Vec<_> = (0..100u64)
        .map(|i| {
            let b = b.clone();
            std::thread::spawn(move || -> Result<()> {
                let len = 256 * 1024 + i * 4099;
                if i % 2 == 0 {
                    let reply = upload(&b, len, i + 1)?;
                    if reply != format!("{len} {}", expected(len, i + 1)) {
                        bail!("stream {i}: upload mismatch {reply}");
                    }
                } else {
                    let (n, d) = download(&b, len, i + 1)?;
                    if n != len || d != expected(len, i + 1) {
                        bail!("stream {i}: download mismatch");
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("panicked"))??;
    }
    Ok(())
}

#[test]
fn half_close_still_reads_the_reply() -> Result<()> {
    let b = Bench::start(&[], &[])?;
    // The SINK service answers only after our EOF arrives through the tunnel.
    let reply = b.sink_roundtrip(b"half-closed but listening")?;
    let mut h = Hasher::default();
    h.update(b"half-closed but listening");
    assert_eq!(
        reply,
        format!("25 {}", h.hex()),
        "host log:\n{}\nagent log:\n{}",
        b.host.control.log(),
        b.agent.log()
    );
    // Echo after half-close: everything sent comes back, then EOF.
    let mut s = b.connect()?;
    s.write_all(b"ECHO\nabc")?;
    s.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    assert_eq!(got, b"abc");
    Ok(())
}

#[test]
fn a_refusing_target_fails_only_its_stream() -> Result<()> {
    // One site with two services: svc works, dead points at a closed port.
    let dead = free_port()?;
    let target = revtun_tests::service::start()?;
    let (p1, p2) = (free_port()?, free_port()?);
    let host = Host::start(&[
        "--expose",
        &format!("x/svc=127.0.0.1:{p1}"),
        "--expose",
        &format!("x/dead=127.0.0.1:{p2}"),
    ])?;
    let dir = host.enroll("x")?;
    let agent = revtun_tests::Proc::spawn(
        std::process::Command::new(revtun_tests::bin("revtun-site")).args([
            "run",
            "--state-dir",
            &dir.to_string_lossy(),
            &format!("--service=svc={target}"),
            &format!("--service=dead=127.0.0.1:{dead}"),
        ]),
    )?;
    agent.wait_stdout("tunnel up", Duration::from_secs(10))?;
    host.control
        .wait_log("tunnel started", Duration::from_secs(10))?;
    // A long transfer on svc runs while dead is tried repeatedly.
    let long = std::thread::spawn(move || -> Result<String> {
        let mut s = TcpStream::connect(format!("127.0.0.1:{p1}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        writeln!(s, "SOURCE {} 5", 64 << 20)?;
        let mut h = Hasher::default();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.hex())
    });
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let mut s = TcpStream::connect(format!("127.0.0.1:{p2}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let _ = s.write_all(b"SINK\n");
        let mut buf = [0u8; 16];
        let r = s.read(&mut buf);
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "refused target must close the client: {r:?}"
        );
    }
    assert_eq!(
        long.join().map_err(|_| anyhow::anyhow!("panicked"))??,
        expected(64 << 20, 5)
    );
    assert!(agent.try_wait().is_none(), "agent survived");
    Ok(())
}

#[test]
fn offline_site_port_refuses_at_once() -> Result<()> {
    let port = free_port()?;
    let _host = Host::start(&["--expose", &format!("nobody/svc=127.0.0.1:{port}")])?;
    let start = Instant::now();
    let mut s = loop {
        match TcpStream::connect(format!("127.0.0.1:{port}")) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(e.into()),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let t = Instant::now();
    let mut buf = [0u8; 8];
    let r = s.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        t.elapsed()
    );
    Ok(())
}

#[test]
fn a_frozen_site_is_detected_by_heartbeat_and_comes_back() -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut b = Bench::start(
        &["--heartbeat", "200ms", "--dead-after", "1s"],
        &["--heartbeat=200ms", "--dead-after=1s"],
    )?;
    let pid = Pid::from_raw(b.agent.pid() as i32);
    // Freeze the agent: no FIN, no RST, just silence.
    kill(pid, Signal::SIGSTOP)?;
    let frozen = Instant::now();
    b.host
        .control
        .wait_log("peer silent for", Duration::from_secs(5))?;
    let noticed = frozen.elapsed();
    assert!(
        noticed < Duration::from_secs(3),
        "noticed after {noticed:?}"
    );
    // Kill it and start a new agent: the service is back within 3 s.
    kill(pid, Signal::SIGKILL)?;
    kill(pid, Signal::SIGCONT).ok();
    let t = Instant::now();
    b.restart_agent()?;
    b.wait_ready(Duration::from_secs(3))?;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "back after {:?}",
        t.elapsed()
    );
    Ok(())
}

#[test]
fn killing_the_data_plane_recovers_within_3s() -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let b = Bench::start(&[], &[])?;
    let pid = b
        .host
        .dataplane_pid()
        .ok_or_else(|| anyhow::anyhow!("no data plane pid"))?;
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    let t = Instant::now();
    // Wait until the new data plane runs, then until the service answers.
    b.host
        .control
        .wait_log("data plane exited", Duration::from_secs(3))?;
    b.wait_ready(Duration::from_secs(3))?;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "service back after {took:?}");
    let new_pid = b.host.dataplane_pid();
    assert!(
        new_pid.is_some_and(|p| p != pid),
        "a new data plane was started"
    );
    assert_eq!(
        b.sink_roundtrip(b"after restart")?.split(' ').next(),
        Some("13")
    );
    Ok(())
}

#[test]
fn a_stalled_reader_does_not_stall_another_stream_and_memory_stays_bounded() -> Result<()> {
    // Small windows: a stalled stream may park at most 1 MiB in the host.
    let b = Bench::start(revtun_tests::SMALL_WINDOWS, &[])?;
    let dp = b
        .host
        .dataplane_pid()
        .ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let before = revtun_tests::rss_kib(dp);
    // Stream A asks for 1 GiB and never reads.
    let mut stalled = b.connect()?;
    writeln!(stalled, "SOURCE {} 3", GIB)?;
    std::thread::sleep(Duration::from_millis(500));
    // Stream B moves 256 MiB meanwhile.
    let (n, d) = download(&b, 256 << 20, 4)?;
    assert_eq!(n, 256 << 20);
    assert_eq!(d, expected(256 << 20, 4));
    let after = revtun_tests::rss_kib(dp);
    let grew = after.saturating_sub(before);
    // Windows (1 + 8 MiB) plus receive chunks and allocator slack.
    assert!(grew < 48 * 1024, "data plane grew by {grew} KiB");
    // A is still alive and resumes when read.
    let mut buf = vec![0u8; 1 << 16];
    stalled.set_read_timeout(Some(Duration::from_secs(5)))?;
    assert!(stalled.read(&mut buf)? > 0);
    Ok(())
}

#[test]
fn sigterm_stops_the_agent_cleanly() -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let b = Bench::start(&[], &[])?;
    kill(Pid::from_raw(b.agent.pid() as i32), Signal::SIGTERM)?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = b.agent.try_wait() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "agent ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "agent exit status {status}");
    b.agent.wait_stdout("stopped", Duration::from_secs(1))?;
    // The host heard a GOAWAY, not a dropped connection.
    b.host
        .control
        .wait_log("the peer is going away", Duration::from_secs(3))?;
    Ok(())
}

#[test]
fn malformed_records_close_only_that_tunnel() -> Result<()> {
    use revtun_dataplane::site::{hello, Identity};
    let b = Bench::start(&[], &[])?;
    let cases: [(&str, Vec<u8>); 3] = [
        ("oversized length", u32::MAX.to_be_bytes().to_vec()),
        ("forged record", {
            let mut v = 64u32.to_be_bytes().to_vec();
            v.extend_from_slice(&[0x5a; 64]);
            v
        }),
        ("too short for a tag", 3u32.to_be_bytes().to_vec()),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let dir = b.host.enroll(&format!("evil-{i}"))?;
        let mut s = hello(&Identity::load(&dir)?)?;
        b.host
            .control
            .wait_log(&format!("site=evil-{i} conn_id"), Duration::from_secs(5))?;
        s.stream.write_all(bytes)?;
        s.stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        // The host closes this tunnel (its SETTINGS may arrive first).
        let mut sink = vec![0u8; 4096];
        let closed = loop {
            match s.stream.read(&mut sink) {
                Ok(0) | Err(_) => break true,
                Ok(_) => continue,
            }
        };
        assert!(closed, "{what}: tunnel not closed");
        b.host
            .control
            .wait_log("peer misbehaved", Duration::from_secs(5))?;
        // The good site's tunnel is untouched.
        assert_eq!(
            b.sink_roundtrip(what.as_bytes())?.split(' ').next(),
            Some(&*what.len().to_string()),
            "{what}"
        );
    }
    assert!(!b.host.control.log().contains("panicked"));
    Ok(())
}

#[test]
fn two_agents_sharing_an_identity_are_detected_not_left_flapping() -> Result<()> {
    let b = Bench::start(&[], &[])?;
    // A copied site identity: a second agent with the same certificate.
    let copy = b.host.path("bench-site-copy");
    std::fs::create_dir_all(&copy)?;
    for f in ["site.conf", "ca.crt", "site.crt", "site.key"] {
        std::fs::copy(b.site_dir.join(f), copy.join(f))?;
    }
    let twin = revtun_tests::Proc::spawn(
        std::process::Command::new(revtun_tests::bin("revtun-site")).args([
            "run",
            "--state-dir",
            &copy.to_string_lossy(),
            &format!("--service=svc={}", b.target),
        ]),
    )?;
    b.host.control.wait_log(
        "two agents appear to share the identity",
        Duration::from_secs(15),
    )?;
    // Once detected, the replacing stops: no new tunnel for this site.
    let count = |log: &str| log.matches("tunnel started shard").count();
    let before = count(&b.host.control.log());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count(&b.host.control.log()),
        before,
        "tunnels still replacing each other"
    );
    // One agent keeps serving.
    assert_eq!(
        b.sink_roundtrip(b"still served")?.split(' ').next(),
        Some("12")
    );
    drop(twin);
    Ok(())
}
