//! Control's port 5500 under silent connections (threat 5; issue 10,
//! item 7): pending handshakes are capped per source prefix, and a
//! connection that sends nothing is closed at the first-byte deadline.
//! Real binaries on loopback; every load loop is bounded in count and time.

use anyhow::{bail, ensure, Result};
use revtun_tests::{connect_from, free_port, service, site, stderr, Host, Proc};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether control has closed `s` (EOF or reset), without blocking.
fn is_closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Polls `conns` until `want` are closed or `limit` passes; returns how
/// many are closed.
fn wait_closed(conns: &mut [TcpStream], want: usize, limit: Duration) -> Result<usize> {
    for c in conns.iter() {
        c.set_nonblocking(true)?;
    }
    let mut closed = vec![false; conns.len()];
    let start = Instant::now();
    loop {
        for (c, done) in conns.iter_mut().zip(closed.iter_mut()) {
            if !*done {
                *done = is_closed(c);
            }
        }
        let n = closed.iter().filter(|&&d| d).count();
        if n >= want || start.elapsed() > limit {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn silent_connections_from_64_addresses_of_one_24_do_not_keep_a_site_from_another_address_out(
) -> Result<()> {
    // Default caps (1,024 overall, 32 per address, 64 per prefix). The
    // deadlines are long so the silent connections hold what they get for
    // the whole test, and the rate limit is off so only the caps decide.
    let target = service::start()?;
    let port: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let expose = format!("victim/svc={port}");
    let host = Host::start(&[
        "--expose",
        &expose,
        "--handshake-timeout",
        "60s",
        "--first-byte-timeout",
        "60s",
        "--handshake-rate-per-prefix",
        "0",
        "--log-level",
        "info,revtun_control::server=debug",
    ])?;
    // 20 silent connections from each of 127.0.5.1..=127.0.5.64: 1,280,
    // within each address's cap of 32. Capped per address only they would
    // take all 1,024 slots.
    let start = Instant::now();
    let mut silent = Vec::new();
    'open: for d in 1..=64u8 {
        for _ in 0..20 {
            if start.elapsed() > Duration::from_secs(60) {
                break 'open;
            }
            silent.push(connect_from(IpAddr::from([127, 0, 5, d]), host.addr)?);
        }
    }
    ensure!(silent.len() == 1280, "opened {} connections", silent.len());
    // Control keeps 64 of them (its prefix's share) and closes the rest.
    let closed = wait_closed(&mut silent, 1280 - 64, Duration::from_secs(30))?;
    assert_eq!(closed, 1280 - 64, "control should hold exactly 64");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(wait_closed(&mut silent, 0, Duration::ZERO)?, 1280 - 64);
    host.control
        .wait_log("pending handshake cap reached", Duration::from_secs(5))?;
    assert!(
        host.control.log().contains("per prefix"),
        "{}",
        host.control.log()
    );
    // While they hold on, a site from 127.0.0.1 (another /24) enrolls,
    // connects and gets its tunnel.
    let dir = host.enroll("victim")?;
    let agent = Proc::spawn(
        Command::new(revtun_tests::bin("revtun-site"))
            .args(["run", "--state-dir"])
            .arg(&dir)
            .arg(format!("--service=svc={target}")),
    )?;
    agent.wait_stdout("tunnel up", Duration::from_secs(20))?;
    let reply = sink_roundtrip(port, b"through the tunnel", Duration::from_secs(10))?;
    assert!(reply.starts_with("18 "), "{reply}");
    let o = site(&["check", "--state-dir", &dir.to_string_lossy()])?;
    assert!(o.status.success(), "{}", stderr(&o));
    // The silent connections were held all along, not timed out.
    assert_eq!(wait_closed(&mut silent, 0, Duration::ZERO)?, 1280 - 64);
    drop(silent);
    Ok(())
}

/// SINK `data` through the tunnel to the service; retries until `limit`
/// (the data plane may still be installing the tunnel).
fn sink_roundtrip(port: SocketAddr, data: &[u8], limit: Duration) -> Result<String> {
    let start = Instant::now();
    loop {
        let attempt = || -> Result<String> {
            revtun_tests::sink_roundtrip_over(TcpStream::connect(port)?, data)
        };
        match attempt() {
            Ok(r) => return Ok(r),
            Err(e) if start.elapsed() > limit => bail!("no reply through the tunnel: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn silent_connections_are_closed_at_the_first_byte_deadline_and_free_their_slots() -> Result<()> {
    // Default first-byte deadline (2 s) inside a 5 s handshake deadline.
    let host = Host::start(&["--handshake-timeout", "5s"])?;
    let start = Instant::now();
    // 64 silent connections from one /24: they fill its share.
    let mut silent: Vec<TcpStream> = (1..=64u8)
        .map(|d| connect_from(IpAddr::from([127, 0, 6, d]), host.addr))
        .collect::<Result<_>>()?;
    // One that sends a single byte (the start of a TLS record), then
    // nothing: past the first byte, only the whole deadline applies.
    let mut dribbler = connect_from(IpAddr::from([127, 0, 7, 1]), host.addr)?;
    dribbler.write_all(&[0x16])?;
    // One more from the full /24 is closed at once.
    let mut extra = vec![connect_from(IpAddr::from([127, 0, 6, 200]), host.addr)?];
    assert_eq!(wait_closed(&mut extra, 1, Duration::from_secs(5))?, 1);

    let closed = wait_closed(&mut silent, 64, Duration::from_secs(10))?;
    let at = start.elapsed();
    assert_eq!(closed, 64);
    assert!(
        at >= Duration::from_millis(1900),
        "closed too early: {at:?}"
    );
    assert!(
        at < Duration::from_millis(4500),
        "closed at {at:?}: the first-byte deadline is 2 s, the whole one 5 s"
    );
    host.control
        .wait_log("first-byte deadline passed", Duration::from_secs(2))?;
    // The dribbler is still open, and the prefix's slots are free again.
    assert_eq!(
        wait_closed(std::slice::from_mut(&mut dribbler), 0, Duration::ZERO)?,
        0
    );
    let mut again = vec![connect_from(IpAddr::from([127, 0, 6, 201]), host.addr)?];
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(wait_closed(&mut again, 0, Duration::ZERO)?, 0);

    let closed = wait_closed(
        std::slice::from_mut(&mut dribbler),
        1,
        Duration::from_secs(10),
    )?;
    let at = start.elapsed();
    assert_eq!(closed, 1);
    assert!(
        at >= Duration::from_millis(4800),
        "dribbler closed at {at:?}"
    );
    host.control
        .wait_log("handshake deadline passed", Duration::from_secs(2))?;
    Ok(())
}
