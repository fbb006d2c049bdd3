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
