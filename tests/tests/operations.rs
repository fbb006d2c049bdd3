//! Operations (issue 11): how the host and the site are run and watched.

use anyhow::{Context, Result};
use revtun_tests::Host;
use std::time::{Duration, Instant};

/// `--log-format json`: every line control and its data plane write to
/// stderr is one JSON object with a level, a target and a message, so a
/// log shipper needs no parser of its own.
#[test]
fn json_logs_are_one_object_per_line_from_control_and_the_data_plane() -> Result<()> {
    let host = Host::start(&["--log-format", "json", "--rtsp-listen", "127.0.0.1:0"])?;
    host.control
        .wait_stdout("rtsp listening on", Duration::from_secs(10))?;
    // Control's own lines and the data plane's both arrive.
    let start = Instant::now();
    loop {
        let log = host.control.log();
        if log.contains("revtun_dataplane::host") && log.contains("revtun_control") {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "no data plane and control lines: {log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = host.control.log();
    let mut n = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
        assert!(v["level"].is_string(), "{line}");
        assert!(v["target"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
        n += 1;
    }
    assert!(n >= 3, "only {n} lines");
    Ok(())
}

/// Control's counters are in the data plane's `/metrics`, a refused
/// enrollment among them; `/healthz` answers and `/ready` says ready once
/// every shard and control have reported (no token needed for those two).
#[test]
fn control_counters_and_health_are_served_beside_the_data_planes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("metrics.token");
    std::fs::write(&token, "s3cret-scrape\n")?;
    let host = Host::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--metrics-token-file",
        &token.to_string_lossy(),
    ])?;
    let addr = host.metrics_addr()?;
    // A keyfile spent once, then presented again: one refusal.
    let kf = host.issue("twice", &[])?;
    for state in ["a", "b"] {
        let d = host.path(state);
        let _ = revtun_tests::site(&[
            "enroll",
            "--keyfile",
            &kf.to_string_lossy(),
            "--state-dir",
            &d.to_string_lossy(),
        ])?;
    }
    let start = Instant::now();
    let text = loop {
        let text = scrape(&addr, "/metrics", Some("s3cret-scrape"))?;
        if text.contains("revtun_control_refusals_total{reason=\"token_already_spent\"} 1") {
            break text;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "no refusal counted: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        text.contains("revtun_control_messages_total{kind=\"enroll\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("revtun_control_messages_total{kind=\"enroll\",outcome=\"refused\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("revtun_control_handshakes_total{outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("revtun_control_pending_handshakes 0"),
        "{text}"
    );
    assert!(
        text.contains("revtun_control_dataplane_restarts_total 0"),
        "{text}"
    );
    // The data plane's own metrics are still there.
    assert!(text.contains("revtun_shard_up"), "{text}");
    assert!(scrape(&addr, "/metrics", None)?.starts_with("HTTP/1.1 401"));
    assert!(scrape(&addr, "/healthz", None)?.starts_with("HTTP/1.1 200"));
    let ready = scrape(&addr, "/ready", None)?;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    Ok(())
}

/// One HTTP GET of `path` (status line, headers and body).
fn scrape(addr: &str, path: &str, token: Option<&str>) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

fn examples() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `--check-config` on a file: (exit code, stdout + stderr).
fn check(bin: &str, pre: &[&str], file: &std::path::Path) -> Result<(i32, String)> {
    let o = revtun_tests::run(
        std::process::Command::new(revtun_tests::bin(bin))
            .args(pre)
            .arg("--config")
            .arg(file)
            .arg("--check-config"),
        Duration::from_secs(20),
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        revtun_tests::stderr(&o)
    );
    Ok((o.status.code().unwrap_or(-1), text))
}

#[test]
fn the_example_files_check_and_bad_keys_are_named_with_their_line() -> Result<()> {
    let (code, out) = check("revtun-control", &[], &examples().join("host.toml"))?;
    assert_eq!(code, 0, "{out}");
    let (code, out) = check("revtun-site", &["run"], &examples().join("site.toml"))?;
    assert_eq!(code, 0, "{out}");
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("host.toml");
    std::fs::write(
        &bad,
        "listen = \"0.0.0.0:5500\"\n\nrtsp_lisen = \"0.0.0.0:8554\"\n",
    )?;
    let (code, out) = check("revtun-control", &[], &bad)?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("host.toml:3: key `rtsp_lisen`: unknown key"),
        "{out}"
    );
    std::fs::write(&bad, "max_site_streams = \"lots\"\n")?;
    let (code, out) = check("revtun-control", &[], &bad)?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("host.toml:1: key `max_site_streams`"), "{out}");
    // A site file with a camera password that others may read: refused,
    // and the password is not printed; owner-only, accepted.
    let site = dir.path().join("site.toml");
    std::fs::write(
        &site,
        "camera = [\"door=rtsp://u:hunter2@127.0.0.1:554/x\"]\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o644))?;
    let (code, out) = check("revtun-site", &["run"], &site)?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("chmod 600") && !out.contains("hunter2"),
        "{out}"
    );
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o600))?;
    let (code, out) = check("revtun-site", &["run"], &site)?;
    assert_eq!(code, 0, "{out}");
    Ok(())
}

/// A host state directory `dir/host`, initialised.
fn init_state(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let state = dir.join("host");
    let o = revtun_tests::keytool(&state, &["init"])?;
    anyhow::ensure!(o.status.success(), "init: {}", revtun_tests::stderr(&o));
    Ok(state)
}

/// `revtun-control --config FILE` plus `extra` flags; its tunnel address.
fn control_from_file(
    file: &std::path::Path,
    extra: &[&str],
) -> Result<(revtun_tests::Proc, String)> {
    let control = revtun_tests::Proc::spawn(
        std::process::Command::new(revtun_tests::bin("revtun-control"))
            .arg("--config")
            .arg(file)
            .args(extra),
    )?;
    let line = control.wait_stdout_prefix("listening on ", Duration::from_secs(20))?;
    let addr = line.trim_start_matches("listening on ").trim().to_string();
    Ok((control, addr))
}

/// A keyfile for site `paris` dialling `addr`, at `dir/paris.keyfile`.
fn paris_keyfile(
    state: &std::path::Path,
    addr: &str,
    dir: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let kf = dir.join("paris.keyfile");
    let o = revtun_tests::keytool(
        state,
        &[
            "issue",
            "--site",
            "paris",
            "--endpoint",
            addr,
            "--out",
            &kf.to_string_lossy(),
        ],
    )?;
    anyhow::ensure!(o.status.success(), "issue: {}", revtun_tests::stderr(&o));
    Ok(kf)
}

/// `revtun-site run --config FILE`, once its tunnel is up.
fn site_from_file(file: &std::path::Path) -> Result<revtun_tests::Proc> {
    let agent = revtun_tests::Proc::spawn(
        std::process::Command::new(revtun_tests::bin("revtun-site"))
            .args(["run", "--config"])
            .arg(file),
    )?;
    agent.wait_stdout("tunnel up", Duration::from_secs(15))?;
    Ok(agent)
}

/// A host and a site configured by TOML files only (an expose, a service,
/// a camera) carry a transfer and a viewer; a flag overrides its key.
#[test]
fn a_host_and_a_site_configured_by_files_only_carry_a_transfer_and_a_viewer() -> Result<()> {
    use revtun_tests::video::{ffprobe_frames, start_camera};
    use revtun_tests::{free_port, keytool};
    let dir = tempfile::tempdir()?;
    let state = init_state(dir.path())?;
    let target = revtun_tests::service::start()?;
    let cam_port = free_port()?;
    let _camera = start_camera(cam_port, "ball", 25, &[])?;
    let (web, rtsp) = (free_port()?, free_port()?);
    let host_toml = dir.path().join("host.toml");
    std::fs::write(
        &host_toml,
        format!(
            "state_dir = {state:?}\nlisten = \"127.0.0.1:1\"\nexpose = [\"paris/svc=127.0.0.1:{web}\"]\n\
             rtsp_listen = \"127.0.0.1:{rtsp}\"\nrtp_port = 0\nrtcp_port = 0\nlog_level = \"info\"\n"
        ),
    )?;
    // The command line's --listen overrides the file's (port 1 would fail).
    let (control, addr) = control_from_file(&host_toml, &["--listen", "127.0.0.1:0"])?;
    control.wait_stdout("rtsp listening on", Duration::from_secs(10))?;
    let kf = paris_keyfile(&state, &addr, dir.path())?;
    let site_toml = dir.path().join("site.toml");
    std::fs::write(
        &site_toml,
        format!(
            "state_dir = {:?}\nkeyfile = {kf:?}\nservice = [\"svc={target}\"]\n\
             camera = [\"door=rtsp://127.0.0.1:{cam_port}/test\"]\n",
            dir.path().join("site")
        ),
    )?;
    let _agent = site_from_file(&site_toml)?;
    // The site's "tunnel up" can come before the host took the tunnel.
    control.wait_log("tunnel started", Duration::from_secs(10))?;
    // The transfer through the file-configured expose port.
    let sent = revtun_tests::sink_roundtrip_over(
        std::net::TcpStream::connect(("127.0.0.1", web))?,
        b"from a file",
    )?;
    assert!(sent.starts_with("11 "), "{sent}");
    // The viewer, with an account.
    let o = keytool(&state, &["viewer", "add", "ops", "--allow", "paris/*"])?;
    anyhow::ensure!(o.status.success(), "viewer add");
    let pw = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    control.wait_log("viewer table updated viewers=1", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(200));
    let (frames, err) = ffprobe_frames(&format!("rtsp://ops:{pw}@127.0.0.1:{rtsp}/paris/door"), 3)?;
    assert!(frames >= 50, "{frames} frames: {err}");
    Ok(())
}

/// docs/config.md lists every key: every flag of `revtun-control --help`
/// and `revtun-site run --help` (regenerate with scripts/config-keys.py).
#[test]
fn docs_config_lists_every_key() -> Result<()> {
    let doc = std::fs::read_to_string(examples().join("../docs/config.md"))?;
    for (bin, pre) in [("revtun-control", vec![]), ("revtun-site", vec!["run"])] {
        let o = revtun_tests::run(
            std::process::Command::new(revtun_tests::bin(bin))
                .args(&pre)
                .arg("--help"),
            Duration::from_secs(20),
        )?;
        let help = String::from_utf8_lossy(&o.stdout);
        let mut n = 0;
        for line in help.lines() {
            let t = line.trim_start();
            let Some(flag) = t
                .strip_prefix("--")
                .or_else(|| t.get(4..)?.strip_prefix("--"))
            else {
                continue;
            };
            let name = flag.split([' ', '.']).next().unwrap_or("");
            if ["config", "check-config", "help", "version", ""].contains(&name) {
                continue;
            }
            let key = format!("`{}`", name.replace('-', "_"));
            assert!(
                doc.contains(&key),
                "docs/config.md does not list {key} of {bin}"
            );
            n += 1;
        }
        assert!(n > 10, "{bin}: only {n} flags found in --help");
        // And the table is the generated one (defaults, reload column).
        let o = revtun_tests::run(
            std::process::Command::new("python3")
                .arg(examples().join("../scripts/config-keys.py"))
                .arg(revtun_tests::bin(bin))
                .args(&pre),
            Duration::from_secs(20),
        )?;
        let table = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && table.contains("| live |"), "{table}");
        assert!(
            doc.contains(table.as_ref()),
            "docs/config.md's {bin} table is stale: run scripts/config-keys.py"
        );
    }
    Ok(())
}

/// Every data-plane setting given to control reaches the data plane (the
/// `--spin` defect: a flag parsed by control and never passed on). The
/// flags come from `revtun-dataplane --help`, so a new data-plane flag
/// fails this test until it is given a value here, and is then checked.
#[test]
fn every_data_plane_setting_given_to_control_reaches_the_data_plane() -> Result<()> {
    use revtun_tests::{bin, run};
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n")?;
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.signing_key.serialize_pem())?;
    let p = |f: &std::path::Path| f.to_string_lossy().into_owned();
    // A non-default value for each flag (a switch: "").
    let values: Vec<(&str, String)> = vec![
        ("expose", "s1/web=127.0.0.1:0".into()),
        ("rtsp-listen", "127.0.0.1:0".into()),
        ("rtsps-listen", "127.0.0.1:0".into()),
        ("rtsps-cert", p(&cert)),
        ("rtsps-key", p(&key)),
        ("pin", "".into()),
        ("spin", "7ms".into()),
        ("stream-window", "1000001".into()),
        ("tunnel-window", "2000003".into()),
        ("max-stream-window", "3000005".into()),
        ("max-tunnel-window", "4000007".into()),
        ("max-streams", "511".into()),
        ("heartbeat", "4s".into()),
        ("dead-after", "16s".into()),
        ("max-stream-churn", "7777".into()),
        ("max-stream-opens", "3333".into()),
        ("max-site-streams", "7".into()),
        ("max-site-bandwidth", "40M".into()),
        ("viewer-queue-bytes", "1048577".into()),
        ("viewer-queue-age", "3s".into()),
        ("viewer-stuck", "9s".into()),
        ("video-linger", "6s".into()),
        ("allow-anonymous-viewers", "".into()),
        ("max-rtsp-sessions", "999".into()),
        ("max-rtsp-sessions-per-addr", "33".into()),
        ("max-viewers-per-camera", "444".into()),
        ("rtp-port", "0".into()),
        ("rtcp-port", "0".into()),
        ("tcp-only-viewers", "".into()),
        ("rtp-mtu", "1200".into()),
        ("rtp-timeout", "30s".into()),
        ("multicast-range", "239.255.3.0/28".into()),
        ("multicast-ttl", "2".into()),
        ("multicast-port", "9002".into()),
        ("rtsp-request-timeout", "7s".into()),
        ("metrics-listen", "127.0.0.1:0".into()),
        ("metrics-token-file", p(&token)),
        ("log-level", "info,revtun_control=info".into()),
        ("log-format", "json".into()),
    ];
    let help = run(
        std::process::Command::new(bin("revtun-dataplane")).arg("--help"),
        Duration::from_secs(20),
    )?;
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|f| f.split([' ', '.']).next().unwrap_or(""))
        .filter(|f| {
            ![
                "control-fd",
                "status-fd",
                "config",
                "check-config",
                "help",
                "version",
                "",
            ]
            .contains(f)
        })
        .collect();
    for f in &flags {
        assert!(
            values.iter().any(|(k, _)| k == f),
            "revtun-dataplane has --{f}: give it a value in this test (and make sure control passes it)"
        );
    }
    let mut args: Vec<String> = Vec::new();
    for (k, v) in &values {
        args.push(if v.is_empty() {
            format!("--{k}")
        } else {
            format!("--{k}={v}")
        });
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = Host::start(&args)?;
    host.control
        .wait_stdout("rtsps listening on", Duration::from_secs(20))
        .context("the data plane did not start with these settings")?;
    let file = host.state().join("dataplane.toml");
    let text = std::fs::read_to_string(&file)?;
    let table: toml::Table = text.parse()?;
    for (k, v) in &values {
        let key = k.replace('-', "_");
        let got = table
            .get(&key)
            .with_context(|| format!("{key} not passed on:\n{text}"))?;
        let ok = match got {
            toml::Value::Boolean(b) => *b && v.is_empty(),
            toml::Value::Array(a) => a.iter().any(|x| x.as_str() == Some(v.as_str())),
            toml::Value::String(s) => {
                s == v || std::path::Path::new(s) == std::path::absolute(v)?.as_path()
            }
            _ => false,
        };
        assert!(
            ok,
            "{key}: control was given {v:?}, the data plane got {got}"
        );
    }
    let o = run(
        std::process::Command::new(bin("revtun-dataplane"))
            .arg("--config")
            .arg(&file)
            .arg("--check-config"),
        Duration::from_secs(20),
    )?;
    assert!(o.status.success(), "{}", revtun_tests::stderr(&o));
    Ok(())
}

fn units() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

/// The systemd units pass `systemd-analyze verify` (with their ExecStart
/// pointing at the binaries built here instead of /usr/bin).
#[test]
fn the_systemd_units_verify() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for unit in ["revtun-control.service", "revtun-site.service"] {
        let text = std::fs::read_to_string(units().join(unit))?;
        for needed in [
            "Type=notify",
            "WatchdogSec=",
            "StateDirectoryMode=0700",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "User=",
        ] {
            assert!(text.contains(needed), "{unit} lacks {needed}");
        }
        let local = text
            .replace(
                "/usr/bin/revtun-control",
                &revtun_tests::bin("revtun-control").to_string_lossy(),
            )
            .replace(
                "/usr/bin/revtun-site",
                &revtun_tests::bin("revtun-site").to_string_lossy(),
            );
        let path = dir.path().join(unit);
        std::fs::write(&path, local)?;
        let o = revtun_tests::run(
            std::process::Command::new("systemd-analyze")
                .arg("verify")
                .arg(&path),
            Duration::from_secs(60),
        )?;
        let err = revtun_tests::stderr(&o);
        assert!(o.status.success(), "{unit}: {err}");
        assert!(!err.contains(unit), "{unit}: {err}");
    }
    Ok(())
}

/// Under systemd (`Type=notify`), control says READY=1 once its listener
/// is bound and the data plane took its first report, and feeds the
/// watchdog; the site agent says READY=1 and feeds it too.
#[test]
fn control_and_site_notify_systemd_and_feed_the_watchdog() -> Result<()> {
    use revtun_tests::{bin, Proc};
    let dir = tempfile::tempdir()?;
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path)?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    let state = dir.path().join("host");
    let o = revtun_tests::keytool(&state, &["init"])?;
    anyhow::ensure!(o.status.success(), "init");
    let control = Proc::spawn(
        std::process::Command::new(bin("revtun-control"))
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", "127.0.0.1:0"])
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "1000000"),
    )?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let start = Instant::now();
    while !(got.iter().any(|m: &String| m.starts_with("READY=1"))
        && got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2)
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "from control: {got:?}"
        );
        let n = sock.recv(&mut buf)?;
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // Ready came after the listener was bound.
    let line = control.wait_stdout_prefix("listening on ", Duration::from_secs(1))?;
    let addr: std::net::SocketAddr = line.trim_start_matches("listening on ").trim().parse()?;
    let kf = dir.path().join("s.keyfile");
    let o = revtun_tests::keytool(
        &state,
        &[
            "issue",
            "--site",
            "s",
            "--endpoint",
            &addr.to_string(),
            "--out",
            &kf.to_string_lossy(),
        ],
    )?;
    anyhow::ensure!(o.status.success(), "issue");
    let site_sock_path = dir.path().join("site.sock");
    let site_sock = std::os::unix::net::UnixDatagram::bind(&site_sock_path)?;
    site_sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    let _agent = Proc::spawn(
        std::process::Command::new(bin("revtun-site"))
            .arg("run")
            .arg("--state-dir")
            .arg(dir.path().join("site"))
            .arg("--keyfile")
            .arg(&kf)
            .env("NOTIFY_SOCKET", &site_sock_path)
            .env("WATCHDOG_USEC", "1000000"),
    )?;
    let mut site_got = Vec::new();
    while !(site_got.iter().any(|m: &String| m.starts_with("READY=1"))
        && site_got.iter().any(|m| m == "WATCHDOG=1"))
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(40),
            "from the site: {site_got:?}"
        );
        let n = site_sock.recv(&mut buf)?;
        site_got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    Ok(())
}

/// Sends SIGHUP to `pid` (a process this test started).
fn hup(pid: u32) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )?;
    Ok(())
}

/// SIGHUP on both ends, configured by files: the host adds one service
/// port and removes another, the site adds the service behind the new
/// port, while 1 GiB flows through a third port and arrives intact on the
/// same tunnel; a bad file on reload is refused naming its key and line,
/// and the running settings stay; a restart-only change is named.
#[test]
fn a_reload_adds_and_removes_service_ports_while_a_transfer_goes_on() -> Result<()> {
    use revtun_tests::{free_port, service};
    use std::io::{Read, Write};
    let dir = tempfile::tempdir()?;
    let state = init_state(dir.path())?;
    let target = service::start()?;
    let (keep, gone, added) = (free_port()?, free_port()?, free_port()?);
    let host_toml = dir.path().join("host.toml");
    let host_file = |exposes: &[String], extra: &str| {
        let list: Vec<String> = exposes.iter().map(|e| format!("{e:?}")).collect();
        format!(
            "state_dir = {state:?}\nlisten = \"127.0.0.1:0\"\nexpose = [{}]\n{extra}",
            list.join(", ")
        )
    };
    let e_keep = format!("paris/svc=127.0.0.1:{keep}");
    let e_gone = format!("paris/svc=127.0.0.1:{gone}");
    let e_added = format!("paris/svc2=127.0.0.1:{added}");
    std::fs::write(&host_toml, host_file(&[e_keep.clone(), e_gone.clone()], ""))?;
    let (control, addr) = control_from_file(&host_toml, &[])?;
    control.wait_stdout(&format!("on 127.0.0.1:{gone}"), Duration::from_secs(10))?;
    let kf = paris_keyfile(&state, &addr, dir.path())?;
    let site_toml = dir.path().join("site.toml");
    let site_file = |services: &str| {
        format!(
            "state_dir = {:?}\nkeyfile = {kf:?}\nservice = [{services}]\n",
            dir.path().join("site")
        )
    };
    std::fs::write(&site_toml, site_file(&format!("\"svc={target}\"")))?;
    let agent = site_from_file(&site_toml)?;
    let roundtrip = |port: u16| -> Result<String> {
        revtun_tests::sink_roundtrip_over(
            std::net::TcpStream::connect(("127.0.0.1", port))?,
            b"hello",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while roundtrip(keep).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the service port never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(roundtrip(gone)?.starts_with("5 "));

    // 1 GiB from the site through `keep`: 64 MiB read, then the reader
    // pauses (the stream window fills) while both ends reload.
    const LEN: u64 = 1 << 30;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", keep))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    writeln!(s, "SOURCE {LEN} 7")?;
    let mut h = service::Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    while total < 64 << 20 {
        let n = s.read(&mut buf)?;
        anyhow::ensure!(n > 0, "the transfer ended after {total} bytes");
        h.update(&buf[..n]);
        total += n as u64;
    }

    // The host: `gone` removed, `added` added, the log level changed, a
    // restart-only setting changed (named, not applied).
    std::fs::write(
        &host_toml,
        host_file(
            &[e_keep.clone(), e_added.clone()],
            "log_level = \"debug\"\nshards = 1\n",
        ),
    )?;
    hup(control.pid())?;
    let said = control.wait_stdout("reloaded 1:", Duration::from_secs(10))?;
    assert!(said.contains("+1 -1"), "{said}");
    assert!(said.contains("--shards"), "{said}");
    control.wait_stdout(
        &format!("unexposed paris/svc on 127.0.0.1:{gone}"),
        Duration::from_secs(10),
    )?;
    control.wait_stdout(
        &format!("exposing paris/svc2 on 127.0.0.1:{added}"),
        Duration::from_secs(10),
    )?;
    // The site: the service behind the new port.
    std::fs::write(
        &site_toml,
        site_file(&format!("\"svc={target}\", \"svc2={target}\"")),
    )?;
    hup(agent.pid())?;
    agent.wait_stdout("reloaded: svc svc2", Duration::from_secs(10))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match roundtrip(added) {
            Ok(r) if r.starts_with("5 ") => break,
            r => anyhow::ensure!(Instant::now() < deadline, "the added port: {r:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = std::net::TcpStream::connect(("127.0.0.1", gone));
    assert!(refused.is_err(), "the removed port still accepts");

    // A bad file: refused, named; the running settings stay.
    std::fs::write(
        &host_toml,
        host_file(std::slice::from_ref(&e_keep), "max_pendin = 3\n"),
    )?;
    hup(control.pid())?;
    let said = control.wait_stdout("reload refused:", Duration::from_secs(10))?;
    assert!(
        said.contains("max_pendin") && said.contains(":4:"),
        "{said}"
    );
    std::fs::write(&site_toml, site_file("\"svc\""))?;
    hup(agent.pid())?;
    agent.wait_stdout("reload refused:", Duration::from_secs(10))?;
    assert!(
        roundtrip(added)?.starts_with("5 "),
        "the added port went away"
    );

    // The transfer resumes and arrives whole, on the first tunnel.
    total += revtun_tests::read_hashing(&mut s, &mut h)?;
    assert_eq!(total, LEN);
    assert_eq!(h.hex(), service::expected(LEN, 7));
    assert_eq!(agent.count_stdout("tunnel up"), 1, "the tunnel was dropped");
    Ok(())
}

/// `revtun-keytool status` lists the connected site with byte counters
/// that move as traffic flows, `list` marks it connected, and
/// `revtun-site status` says whether the tunnel is up.
#[test]
fn status_lists_the_connected_site_with_moving_byte_counters() -> Result<()> {
    use revtun_tests::{keytool, site, Bench};
    let b = Bench::start(&[], &[])?;
    let status = |b: &Bench| -> Result<serde_json::Value> {
        let o = keytool(&b.host.state(), &["status", "--json"])?;
        anyhow::ensure!(o.status.success(), "status: {}", revtun_tests::stderr(&o));
        Ok(serde_json::from_slice(&o.stdout)?)
    };
    let bench = |v: &serde_json::Value| -> Option<serde_json::Value> {
        v["sites"]
            .as_array()?
            .iter()
            .find(|s| s["site"] == "bench")
            .cloned()
    };
    // Posted each second: wait for the site to show.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(s) = bench(&status(&b)?) {
            break s;
        }
        anyhow::ensure!(Instant::now() < deadline, "the site never showed in status");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        first["peer"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:"),
        "{first}"
    );
    assert!(
        first["since"].as_u64().unwrap_or(0) > 1_700_000_000,
        "{first}"
    );
    // 8 MiB from the site: the host's bytes in grow by at least that.
    let (n, _) = revtun_tests::download(&b, 8 << 20, 1)?;
    assert_eq!(n, 8 << 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = status(&b)?;
        let s = bench(&now).context("the site left the status")?;
        let grew = s["bytes_in"].as_u64().unwrap_or(0) - first["bytes_in"].as_u64().unwrap_or(0);
        if grew >= 8 << 20 {
            assert_eq!(now["totals"]["sites"], 1, "{now}");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "bytes_in did not move: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The table and the list.
    let o = keytool(&b.host.state(), &["status"])?;
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(table.lines().any(|l| l.starts_with("bench ")), "{table}");
    assert!(table.contains("total: 1 sites connected"), "{table}");
    let o = keytool(&b.host.state(), &["list"])?;
    let list = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        list.lines()
            .any(|l| l.starts_with("bench ") && l.trim_end().ends_with("yes")),
        "{list}"
    );
    // The site's view.
    let dir = b.site_dir.to_string_lossy().into_owned();
    let o = site(&["status", "--state-dir", &dir])?;
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && said.starts_with("tunnel up since "),
        "{said}"
    );
    b.agent.kill();
    let o = site(&["status", "--state-dir", &dir])?;
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        !o.status.success() && said.starts_with("not running"),
        "{said}"
    );
    // A host that is not running: a clear error.
    let o = keytool(&b.host.path("nowhere"), &["status"])?;
    assert!(!o.status.success());
    Ok(())
}

/// A camera's password in its own file (`--camera-password-file`, mode
/// 0600): the site file holds no secret and may be world-readable, the
/// camera is pulled with the password, which is in no argv, file error or
/// log; a password file others may read is refused.
#[test]
fn a_camera_password_file_keeps_the_password_out_of_argv_and_settings() -> Result<()> {
    use revtun_tests::video::{ffprobe_frames, start_camera};
    use revtun_tests::{free_port, Host};
    use std::os::unix::fs::PermissionsExt;
    const PW: &str = "p4ss:w/rd@x";
    let cam_port = free_port()?;
    let _camera = start_camera(
        cam_port,
        "ball",
        25,
        &["--auth", "digest", "--user", "admin", "--password", PW],
    )?;
    let rtsp = revtun_tests::reserved_port()?;
    let listen = format!("127.0.0.1:{rtsp}");
    let host = Host::start(&["--rtsp-listen", &listen, "--allow-anonymous-viewers"])?;
    let dir = host.enroll("s1")?;
    let pw_file = host.path("door.pw");
    std::fs::write(&pw_file, format!("{PW}\n"))?;
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o644))?;
    let site_toml = host.path("site.toml");
    std::fs::write(
        &site_toml,
        format!(
            "state_dir = {dir:?}\ncamera = [\"door=rtsp://admin@127.0.0.1:{cam_port}/test\"]\n\
             camera_password_file = [\"door={}\"]\n",
            pw_file.display()
        ),
    )?;
    std::fs::set_permissions(&site_toml, std::fs::Permissions::from_mode(0o644))?;
    // Readable by others: refused, naming the file, never the password.
    let (code, out) = check("revtun-site", &["run"], &site_toml)?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("door.pw") && out.contains("chmod 600") && !out.contains("p4ss"),
        "{out}"
    );
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600))?;
    let (code, out) = check("revtun-site", &["run"], &site_toml)?;
    assert_eq!(code, 0, "{out}");
    let agent = site_from_file(&site_toml)?;
    host.control
        .wait_stdout("rtsp listening on", Duration::from_secs(10))?;
    host.control
        .wait_log("tunnel started", Duration::from_secs(10))?;
    let (frames, err) = ffprobe_frames(&format!("rtsp://127.0.0.1:{rtsp}/s1/door"), 4)?;
    assert!(frames >= 50, "{frames} frames: {err}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid()))?;
    assert!(!String::from_utf8_lossy(&cmdline).contains("p4ss"));
    assert!(!agent.log().contains("p4ss"), "password in the site log");
    Ok(())
}
