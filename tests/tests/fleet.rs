//! A fleet of hosts on a real etcd (Debian's etcd-server, started here on
//! loopback with a temporary data directory): one store, tokens spent
//! once across hosts, revocation across hosts, sites holding tunnels to
//! two hosts, host-to-host forwarding over peer links, and etcd going
//! away and coming back.

use anyhow::{bail, Context, Result};
use revtun_tests::fleet::{Etcd, FleetHost};
use revtun_tests::video::{ffprobe_frames, start_camera};
use revtun_tests::{
    bin, free_port, http_get, metric_sum, reserved_port, service, sink_roundtrip_over, site,
    stderr, Proc,
};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Issues a keyfile for `site` on `host` naming `endpoints`.
fn issue(host: &FleetHost, dir: &Path, site: &str, endpoints: &[SocketAddr]) -> Result<PathBuf> {
    revtun_tests::issue_keyfile(&host.state, dir, site, endpoints, &[])
}

/// Enrolls with `keyfile` into a new site directory.
fn enroll(dir: &Path, keyfile: &Path) -> Result<PathBuf> {
    revtun_tests::enroll_keyfile(keyfile, dir)
}

fn agent(site_dir: &Path, target: SocketAddr, extra: &[&str]) -> Result<Proc> {
    let p = Proc::spawn(
        Command::new(bin("revtun-site"))
            .arg("run")
            .arg("--state-dir")
            .arg(site_dir)
            .arg(format!("--service=svc={target}"))
            .args(extra),
    )?;
    p.wait_stdout("tunnel up", Duration::from_secs(15))?;
    Ok(p)
}

/// A camera (GStreamer's RTSP server) and an agent of `site_dir` with one
/// tunnel, serving it as `cam1` and the test service as `svc`.
fn camera_agent(site_dir: &Path) -> Result<(Proc, Proc)> {
    let cam_port = free_port()?;
    let camera = start_camera(cam_port, "ball", 25, &[])?;
    let target = service::start()?;
    let agent = agent(
        site_dir,
        target,
        &[
            "--tunnels",
            "1",
            &format!("--camera=cam1=rtsp://127.0.0.1:{cam_port}/test"),
        ],
    )?;
    Ok((camera, agent))
}

/// A round trip of `len` bytes through a host's service port.
fn through(port: SocketAddr, len: usize) -> Result<String> {
    let s = TcpStream::connect(port)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    let reply = sink_roundtrip_over(s, &data)?;
    if !reply.starts_with(&format!("{len} ")) {
        bail!("through {port}: reply {reply:?}");
    }
    Ok(reply)
}

fn wait_through(port: SocketAddr, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        match through(port, 1024) {
            Ok(_) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() > limit => return Err(e.context(format!("after {limit:?}"))),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn metrics(host: &FleetHost) -> Result<String> {
    let line = host
        .control
        .wait_stdout("metrics listening on", Duration::from_secs(10))?;
    let addr = line.rsplit(' ').next().unwrap_or_default().to_string();
    http_get(&addr, "/metrics")
}

fn wait_metric(host: &FleetHost, name: &str, want: u64, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let text = metrics(host).unwrap_or_default();
        if text.contains(name) && metric_sum(&text, name, &[]) == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("{name} is not {want} after {limit:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_token_is_spent_exactly_once_by_64_enrollments_spread_over_three_hosts() -> Result<()> {
    use revtun_dataplane::site::{load_keyfile, new_key_and_csr, send_raw_enroll};
    use revtun_proto::enroll::ServerMsg;
    let etcd = Etcd::start()?;
    let dir = tempfile::tempdir()?;
    let a = FleetHost::start(dir.path(), "a", &etcd, None, &[])?;
    let b = FleetHost::start(dir.path(), "b", &etcd, Some(&a), &[])?;
    let c = FleetHost::start(dir.path(), "c", &etcd, Some(&a), &[])?;
    let kf = issue(&a, dir.path(), "racer", &[a.addr])?;
    let (keyfile, ca_der) = load_keyfile(&kf)?;
    let hosts = [a.addr, b.addr, c.addr];
    let (_, csr) = new_key_and_csr("racer")?;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(64));
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let (ep, ca, token, csr, barrier) = (
                hosts[i % 3],
                ca_der.clone(),
                keyfile.token.clone(),
                csr.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || -> Result<ServerMsg> {
                let endpoint = revtun_proto::keyfile::Endpoint {
                    host: ep.ip().to_string(),
                    port: ep.port(),
                };
                barrier.wait();
                let raw = send_raw_enroll(&[endpoint], &ca, "racer", &token, &csr)?;
                Ok(ServerMsg::decode(&raw)?.context("no reply")?.0)
            })
        })
        .collect();
    let mut won = Vec::new();
    let mut refused = 0;
    for (i, t) in threads.into_iter().enumerate() {
        match t.join().map_err(|_| anyhow::anyhow!("thread panicked"))?? {
            ServerMsg::Enrolled { .. } => won.push(i % 3),
            ServerMsg::Refused => refused += 1,
            other => bail!("attempt {i}: {other:?}"),
        }
    }
    assert_eq!(won.len(), 1, "winners by host {won:?}");
    assert_eq!(refused, 63);
    // Every host's log says why the others lost; one winner in the store.
    let list = c.keytool_ok(&["list"])?;
    assert!(
        list.lines()
            .any(|l| l.starts_with("racer ") && l.contains("enrolled")),
        "{list}"
    );
    let spent = [&a, &b, &c]
        .iter()
        .map(|h| h.control.log().matches("token already spent").count())
        .sum::<usize>();
    assert!(spent >= 1, "no host logged a spent token");
    println!(
        "64 enrollments over 3 hosts: 1 won (host {}), 63 refused",
        ["a", "b", "c"][won[0]]
    );
    Ok(())
}

#[test]
fn a_site_enrolled_through_one_host_and_revoked_through_another_loses_its_tunnel() -> Result<()> {
    let etcd = Etcd::start()?;
    let dir = tempfile::tempdir()?;
    let a = FleetHost::start(dir.path(), "a", &etcd, None, &[])?;
    let port_b = SocketAddr::from(([127, 0, 0, 1], reserved_port()?));
    let expose = format!("far/svc={port_b}");
    let b = FleetHost::start(dir.path(), "b", &etcd, Some(&a), &["--expose", &expose])?;
    let c = FleetHost::start(dir.path(), "c", &etcd, Some(&a), &[])?;
    // Issued on A, enrolled and connected through B.
    let kf = issue(&a, dir.path(), "far", &[b.addr])?;
    let sd = enroll(dir.path(), &kf)?;
    let target = service::start()?;
    let agent = agent(&sd, target, &["--tunnels", "1"])?;
    wait_through(port_b, Duration::from_secs(10))?;
    // Every host's keytool sees the one registry.
    c.wait_holders("far", &["b"], Duration::from_secs(5))?;
    let t0 = Instant::now();
    // The keytool of A's directory follows the fleet with no flag.
    a.keytool_ok(&["revoke", "--site", "far"])?;
    b.control
        .wait_log("site revoked; closing its tunnel", Duration::from_secs(5))?;
    let closed = loop {
        if through(port_b, 16).is_err() && agent.count_stdout("tunnel up") == 1 {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(5) {
            bail!("the revoked site's tunnel on b still serves");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The agent is refused from then on, and says so.
    let start = Instant::now();
    while agent.try_wait().is_none() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        agent.log().contains("refused this site's certificate"),
        "{}",
        agent.log()
    );
    c.wait_holders("far", &[], Duration::from_secs(5))?;
    println!("revoked through a, tunnel on b closed after {closed:?}");
    Ok(())
}

#[test]
fn killing_the_host_of_one_of_two_tunnels_leaves_the_site_reachable_and_back_on_two() -> Result<()>
{
    let etcd = Etcd::start()?;
    let dir = tempfile::tempdir()?;
    let ports: Vec<SocketAddr> = (0..3)
        .map(|_| Ok(SocketAddr::from(([127, 0, 0, 1], reserved_port()?))))
        .collect::<Result<_>>()?;
    let flags: Vec<String> = ports.iter().map(|p| format!("two/svc={p}")).collect();
    let a = FleetHost::start(dir.path(), "a", &etcd, None, &["--expose", &flags[0]])?;
    let b = FleetHost::start(dir.path(), "b", &etcd, Some(&a), &["--expose", &flags[1]])?;
    let c = FleetHost::start(dir.path(), "c", &etcd, Some(&a), &["--expose", &flags[2]])?;
    let kf = issue(&a, dir.path(), "two", &[a.addr, b.addr, c.addr])?;
    let sd = enroll(dir.path(), &kf)?;
    let target = service::start()?;
    // Default --tunnels 2: slot 0 from the first endpoint (a), slot 1
    // from the second (b).
    let agent = agent(&sd, target, &[])?;
    b.wait_holders("two", &["a", "b"], Duration::from_secs(10))?;
    let list = c.keytool_ok(&["list"])?;
    assert!(
        list.lines()
            .any(|l| l.starts_with("two ") && l.trim_end().ends_with(" a,b")),
        "{list}"
    );
    wait_through(ports[0], Duration::from_secs(5))?;
    wait_through(ports[1], Duration::from_secs(5))?;
    a.control.kill();
    let killed = Instant::now();
    // At once, through the other host that holds a tunnel: 8 MiB.
    through(ports[1], 8 << 20)?;
    let first = killed.elapsed();
    // The lost slot comes back on the host nobody holds (c); a's lease
    // takes its entry away within its TTL.
    agent.wait_stdout(
        &format!("tunnel up via {}", c.addr),
        Duration::from_secs(15),
    )?;
    let reconnected = killed.elapsed();
    wait_through(ports[2], Duration::from_secs(5))?;
    b.wait_holders("two", &["b", "c"], Duration::from_secs(15))?;
    let registry = killed.elapsed();
    println!(
        "after SIGKILL of a: 8 MiB through b in {first:?}; second tunnel up on c after {reconnected:?}; \
         registry says b and c after {registry:?}"
    );
    assert!(
        registry < Duration::from_secs(15),
        "registry converged after {registry:?}"
    );
    Ok(())
}

#[test]
fn a_client_and_a_viewer_on_a_third_host_reach_a_site_whose_tunnel_is_on_another() -> Result<()> {
    let etcd = Etcd::start()?;
    let dir = tempfile::tempdir()?;
    // b's address is in the keyfile first, but b is not up yet: the
    // enrollment goes through a (the next endpoint).
    let b_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let port_c = SocketAddr::from(([127, 0, 0, 1], reserved_port()?));
    let rtsp_c = format!("127.0.0.1:{}", reserved_port()?);
    let a = FleetHost::start(dir.path(), "a", &etcd, None, &[])?;
    let kf = issue(&a, dir.path(), "far", &[b_addr, a.addr])?;
    let sd = enroll(dir.path(), &kf)?;
    a.control
        .wait_log("site enrolled", Duration::from_secs(5))?;
    let b_listen = b_addr.to_string();
    let b = FleetHost::start(dir.path(), "b", &etcd, Some(&a), &["--listen", &b_listen])?;
    let expose = format!("far/svc={port_c}");
    let c = FleetHost::start(
        dir.path(),
        "c",
        &etcd,
        Some(&a),
        &["--expose", &expose, "--rtsp-listen", &rtsp_c],
    )?;
    let password = last_line(&c.keytool_ok(&["viewer", "add", "alice", "--allow", "far/*"])?);
    let started = Instant::now();
    let (_camera, _agent) = camera_agent(&sd)?;
    c.wait_holders("far", &["b"], Duration::from_secs(10))?;
    // c holds no tunnel of the site: its client goes over the peer link
    // to b, and b relays it to the site.
    let reachable = wait_through(port_c, Duration::from_secs(15)).map_err(|e| {
        e.context(format!(
            "c's log:\n{}\nb's log:\n{}",
            c.control.log(),
            b.control.log()
        ))
    })?;
    let reply = through(port_c, 8 << 20)?;
    let sent = Instant::now();
    through(port_c, 8 << 20)?;
    let transfer = sent.elapsed();
    let status = c.keytool_ok(&["status", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&status)?;
    assert!(
        v["sites"].as_array().is_some_and(|s| s.is_empty()),
        "c holds no tunnel: {status}"
    );
    assert!(
        v["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|l| l["host"] == "b" && l["remote_shard"] == 0)),
        "c has a link to b: {status}"
    );
    let b_status: serde_json::Value = serde_json::from_str(&b.keytool_ok(&["status", "--json"])?)?;
    assert!(
        b_status["peers"].as_array().is_some_and(|p| p
            .iter()
            .any(|l| l["host"] == "c" && l["remote_shard"].is_null())),
        "b took a link from c: {b_status}"
    );
    // A viewer on c decodes the camera, pulled over the same link.
    let url = format!("rtsp://alice:{password}@{rtsp_c}/far/cam1");
    let (frames, err) = ffprobe_frames(&url, 4)?;
    assert!(frames >= 25, "ffprobe on c decoded {frames} frames: {err}");
    println!(
        "site far (tunnel on b) from c: reachable {reachable:?} after the agent started          ({:?} in all); 8 MiB through c in {transfer:?} ({reply}); ffprobe on c: {frames} frames",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn a_camera_watched_on_two_hosts_crosses_the_site_uplink_once() -> Result<()> {
    let etcd = Etcd::start()?;
    let dir = tempfile::tempdir()?;
    let rtsp_b = format!("127.0.0.1:{}", reserved_port()?);
    let rtsp_c = format!("127.0.0.1:{}", reserved_port()?);
    let port_c = SocketAddr::from(([127, 0, 0, 1], reserved_port()?));
    let expose = format!("cams/svc={port_c}");
    let b = FleetHost::start(dir.path(), "b", &etcd, None, &["--rtsp-listen", &rtsp_b])?;
    let c = FleetHost::start(
        dir.path(),
        "c",
        &etcd,
        Some(&b),
        &["--rtsp-listen", &rtsp_c, "--expose", &expose],
    )?;
    let kf = issue(&b, dir.path(), "cams", &[b.addr])?;
    let sd = enroll(dir.path(), &kf)?;
    let password = last_line(&b.keytool_ok(&["viewer", "add", "alice", "--allow", "cams/*"])?);
    let (_camera, agent) = camera_agent(&sd)?;
    c.wait_holders("cams", &["b"], Duration::from_secs(10))?;
    // c's data plane has the route to b (control sends it a moment
    // after etcd has the entry) once its expose port reaches the site.
    wait_through(port_c, Duration::from_secs(10))?;
    // A viewer on each host at once: c holds no tunnel of the site, so
    // its redirector pulls the camera over the peer link, from b's feed.
    let url_b = format!("rtsp://alice:{password}@{rtsp_b}/cams/cam1");
    let url_c = format!("rtsp://alice:{password}@{rtsp_c}/cams/cam1");
    let on_c = std::thread::spawn(move || ffprobe_frames(&url_c, 5));
    let (frames_b, err_b) = ffprobe_frames(&url_b, 5)?;
    let (frames_c, err_c) = on_c
        .join()
        .map_err(|_| anyhow::anyhow!("ffprobe thread panicked"))??;
    assert!(
        frames_b >= 25,
        "ffprobe on b decoded {frames_b} frames: {err_b}"
    );
    assert!(
        frames_c >= 25,
        "ffprobe on c decoded {frames_c} frames: {err_c}\nc's log:\n{}",
        c.control.log()
    );
    // The site pulled the camera once, and sent it once: b serves c from
    // its own feed.
    let pulls = agent.log().matches("pulling camera").count();
    assert_eq!(
        pulls,
        1,
        "the site pulled the camera {pulls} times:\n{}",
        agent.log()
    );
    b.control
        .wait_log("camera served to a fleet peer", Duration::from_secs(1))?;
    println!("one camera, viewers on b and c: {frames_b} and {frames_c} frames, {pulls} pull at the site");
    Ok(())
}

#[test]
fn a_site_certificate_cannot_open_a_peer_link() -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read, Write};
    let etcd = Etcd::start()?;
    let dir = tempfile::tempdir()?;
    let a = FleetHost::start(dir.path(), "a", &etcd, None, &[])?;
    let line = a
        .control
        .wait_stdout_prefix("peer links listening on ", Duration::from_secs(10))?;
    let peer: SocketAddr = line
        .trim_start_matches("peer links listening on ")
        .parse()?;
    let sd = enroll(dir.path(), &issue(&a, dir.path(), "sneaky", &[a.addr])?)?;
    // The site's own certificate and key, chained to the fleet CA, with
    // the server name a host uses: TLS accepts the chain, the listener
    // refuses anything that is not a host certificate.
    let ca = CertificateDer::from_pem_file(sd.join("ca.crt"))?;
    let cert = CertificateDer::from_pem_file(sd.join("site.crt"))?;
    let key = PrivateKeyDer::from_pem_file(sd.join("site.key"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca)?;
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_client_auth_cert(vec![cert], key)?;
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(cfg),
        ServerName::try_from(revtun_proto::PEER_SERVER_NAME)?,
    )?;
    let sock = TcpStream::connect(peer)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut hello = vec![b'P', 1, 0, 0, 6];
    hello.extend_from_slice(b"sneaky");
    let _ = tls.write_all(&hello).and_then(|()| tls.flush());
    let mut reply = [0u8; 4];
    let got = tls.read(&mut reply);
    assert!(
        !matches!(got, Ok(n) if n > 0),
        "the peer port answered a site certificate: {got:?} {reply:?}"
    );
    a.control
        .wait_log("not a host certificate", Duration::from_secs(5))?;
    let status: serde_json::Value = serde_json::from_str(&a.keytool_ok(&["status", "--json"])?)?;
    assert_eq!(status["peers"], serde_json::json!([]), "{status}");
    Ok(())
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or_default().trim().to_string()
}

#[test]
fn while_etcd_is_away_connected_sites_work_and_enrollment_is_refused_clearly() -> Result<()> {
    let mut etcd = Etcd::start()?;
    let dir = tempfile::tempdir()?;
    let a = FleetHost::start(dir.path(), "a", &etcd, None, &[])?;
    let port = SocketAddr::from(([127, 0, 0, 1], reserved_port()?));
    let expose = format!("kept/svc={port}");
    let b = FleetHost::start(
        dir.path(),
        "b",
        &etcd,
        Some(&a),
        &["--expose", &expose, "--metrics-listen", "127.0.0.1:0"],
    )?;
    let sd = enroll(dir.path(), &issue(&a, dir.path(), "kept", &[b.addr])?)?;
    let later = issue(&a, dir.path(), "later", &[b.addr])?;
    let target = service::start()?;
    let mut agent = agent(&sd, target, &["--tunnels", "1"])?;
    wait_through(port, Duration::from_secs(10))?;
    b.wait_holders("kept", &["b"], Duration::from_secs(5))?;
    wait_metric(&b, "revtun_fleet_view_stale", 0, Duration::from_secs(5))?;

    etcd.stop();
    let stale = wait_metric(&b, "revtun_fleet_view_stale", 1, Duration::from_secs(15))?;
    through(port, 4 << 20)?;
    // A new site cannot enroll, and is told why.
    let o = site(&[
        "enroll",
        "--keyfile",
        &later.to_string_lossy(),
        "--state-dir",
        &dir.path().join("later-site").to_string_lossy(),
    ])?;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("fleet store is unreachable (nothing was spent)"),
        "{}",
        stderr(&o)
    );
    // Nor can the operator issue, with a clear error.
    let out = dir.path().join("x.keyfile");
    let o = revtun_tests::keytool(
        &a.state,
        &[
            "issue",
            "--site",
            "x",
            "--endpoint",
            "127.0.0.1:1",
            "--out",
            &out.to_string_lossy(),
        ],
    )?;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unreachable"), "{}", stderr(&o));
    // A site whose tunnel drops comes back: the host admits the
    // certificate it saw valid before.
    agent.kill();
    agent = self::agent(&sd, target, &["--tunnels", "1"])?;
    wait_through(port, Duration::from_secs(10))?;

    etcd.restart()?;
    let back = Instant::now();
    wait_metric(&b, "revtun_fleet_view_stale", 0, Duration::from_secs(20))?;
    b.wait_holders("kept", &["b"], Duration::from_secs(10))?;
    let converged = back.elapsed();
    assert!(metric_sum(&metrics(&b)?, "revtun_fleet_registrations_total", &[]) >= 2);
    // The token was not spent while etcd was away: it works now.
    enroll(dir.path(), &later)?;
    println!("etcd stopped: stale after {stale:?}; back: registered again and converged after {converged:?}");
    drop(agent);
    Ok(())
}

#[test]
fn fleet_settings_are_checked() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("h");
    for bad in ["etcd-without-scheme", "http://h", "https://h:1"] {
        let o = revtun_tests::run(
            Command::new(bin("revtun-control"))
                .arg("--state-dir")
                .arg(&state)
                .args(["--fleet", bad]),
            Duration::from_secs(10),
        )?;
        assert!(!o.status.success());
        assert!(stderr(&o).contains("http://HOST:PORT"), "{}", stderr(&o));
    }
    // A bundle readable by others is refused.
    let bundle = dir.path().join("bundle");
    std::fs::write(&bundle, "{}")?;
    let o = revtun_tests::keytool(&state, &["fleet", "import", &bundle.to_string_lossy()])?;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
    // Export needs a fleet.
    let plain = dir.path().join("plain");
    revtun_tests::keytool(&plain, &["init"])?;
    let o = revtun_tests::keytool(
        &plain,
        &[
            "fleet",
            "export",
            "--out",
            &dir.path().join("b2").to_string_lossy(),
        ],
    )?;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not in a fleet"), "{}", stderr(&o));
    Ok(())
}

#[test]
fn a_host_with_another_ca_cannot_join_the_fleet() -> Result<()> {
    let etcd = Etcd::start()?;
    let dir = tempfile::tempdir()?;
    let _a = FleetHost::start(dir.path(), "a", &etcd, None, &[])?;
    // A separately initialised host (its own CA) pointed at the fleet.
    let err = FleetHost::start(dir.path(), "stranger", &etcd, None, &[])
        .err()
        .context("a host with another CA joined the fleet")?;
    assert!(format!("{err:#}").contains("is not the fleet's"), "{err:#}");
    Ok(())
}
