//! Bad input at the site and at the keytool: clear, specific errors naming
//! the problem, non-zero exits, never a panic.

use anyhow::Result;
use revtun_tests::{bin, keytool, run, site, stderr, Host};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn fails_with(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = stderr(o);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
}

fn enroll(kf: &Path, dir: &Path) -> Result<Output> {
    site(&["enroll", "--keyfile", &s(kf), "--state-dir", &s(dir)])
}

fn write_keyfile(host: &Host, name: &str, text: &str) -> Result<std::path::PathBuf> {
    let p = host.path(name);
    std::fs::write(&p, text)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    Ok(p)
}

#[test]
fn keyfile_problems_are_named() -> Result<()> {
    let host = Host::start(&[])?;
    let kf = host.issue("bad-1", &[])?;
    let text = std::fs::read_to_string(&kf)?;
    let dir = host.path("bad-site");

    // Readable by others.
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644))?;
    fails_with(&enroll(&kf, &dir)?, "chmod 600");
    fails_with(
        &keytool(&host.state(), &["inspect", &s(&kf)])?,
        "readable by group or others",
    );
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600))?;

    // Truncated before the token line.
    let cut = &text[..text.find("token:").unwrap_or(text.len() / 2)];
    let p = write_keyfile(&host, "truncated.keyfile", cut)?;
    fails_with(&enroll(&p, &dir)?, "field 'token' is missing");
    fails_with(
        &keytool(&host.state(), &["inspect", &s(&p)])?,
        "field 'token' is missing",
    );

    // Truncated inside the certificate.
    let cut = &text[..text.len() - 40];
    let p = write_keyfile(&host, "truncated2.keyfile", cut)?;
    fails_with(&enroll(&p, &dir)?, "ca-certificate");

    // Wrong version.
    let p = write_keyfile(
        &host,
        "v9.keyfile",
        &text.replace("revtun-keyfile: 1", "revtun-keyfile: 9"),
    )?;
    fails_with(&enroll(&p, &dir)?, "version 9 is not supported");

    // Garbled field.
    let p = write_keyfile(
        &host,
        "garbled.keyfile",
        &text.replace("expires: ", "expires: not-a-time "),
    )?;
    fails_with(&enroll(&p, &dir)?, "field 'expires'");

    // Tampered CA certificate (fingerprint no longer matches).
    let fp_line = text
        .lines()
        .find(|l| l.starts_with("ca-fingerprint:"))
        .unwrap_or_default();
    let p = write_keyfile(
        &host,
        "tampered.keyfile",
        &text.replace(
            fp_line,
            &format!("ca-fingerprint: sha256:{}", "0".repeat(64)),
        ),
    )?;
    fails_with(&enroll(&p, &dir)?, "does not match 'ca-fingerprint'");

    // Not a keyfile at all.
    let p = write_keyfile(&host, "binary.keyfile", "\u{7f}ELF\u{2}\u{1}")?;
    fails_with(&enroll(&p, &dir)?, "is this a keyfile?");

    // Missing file.
    fails_with(
        &enroll(&host.path("nope.keyfile"), &dir)?,
        "cannot read keyfile",
    );
    assert!(!dir.join("site.crt").exists());
    Ok(())
}

#[test]
fn unreachable_endpoint_is_reported() -> Result<()> {
    let host = Host::start(&[])?;
    // A port nobody listens on: bind, learn it, close it.
    let free = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let kf = host.path("unreachable.keyfile");
    let o = keytool(
        &host.state(),
        &[
            "issue",
            "--site",
            "far",
            "--endpoint",
            &format!("127.0.0.1:{free}"),
            "--out",
            &s(&kf),
        ],
    )?;
    assert!(o.status.success(), "{}", stderr(&o));
    fails_with(&enroll(&kf, &host.path("far"))?, "cannot reach the host");
    Ok(())
}

#[test]
fn keytool_rejects_bad_arguments() -> Result<()> {
    let host = Host::start(&[])?;
    let st = host.state();
    let out = s(&host.path("k.keyfile"));
    fails_with(
        &keytool(
            &st,
            &[
                "issue",
                "--site",
                "Bad/Name",
                "--endpoint",
                "h:1",
                "--out",
                &out,
            ],
        )?,
        "--site",
    );
    fails_with(
        &keytool(
            &st,
            &[
                "issue",
                "--site",
                "ok",
                "--endpoint",
                "h:99999",
                "--out",
                &out,
            ],
        )?,
        "invalid port",
    );
    fails_with(
        &keytool(
            &st,
            &[
                "issue",
                "--site",
                "ok",
                "--endpoint",
                "h:1",
                "--ttl",
                "soon",
                "--out",
                &out,
            ],
        )?,
        "--ttl",
    );
    fails_with(
        &keytool(&st, &["issue", "--site", "ok", "--out", &out])?,
        "--endpoint",
    );
    let o = keytool(
        &st,
        &["issue", "--site", "ok", "--endpoint", "h", "--out", &out],
    )?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::read_to_string(&out)?.contains("endpoint: h:5500"),
        "default port"
    );
    fails_with(
        &keytool(
            &st,
            &["issue", "--site", "ok2", "--endpoint", "h", "--out", &out],
        )?,
        "file exists",
    );
    fails_with(
        &keytool(&st, &["revoke", "--site", "ghost"])?,
        "no site named",
    );
    fails_with(&keytool(&st, &["init"])?, "--force");
    fails_with(&keytool(&host.path("empty"), &["list"])?, "init' first");
    fails_with(&keytool(&st, &["frobnicate"])?, "unrecognized subcommand");
    Ok(())
}

#[test]
fn site_agent_without_identity_says_so() -> Result<()> {
    let dir = tempfile::tempdir()?;
    fails_with(
        &site(&["run", "--state-dir", &s(dir.path())])?,
        "holds no site identity",
    );
    fails_with(
        &site(&["check", "--state-dir", &s(dir.path())])?,
        "holds no site identity",
    );
    fails_with(
        &site(&["enroll", "--state-dir", &s(dir.path())])?,
        "--keyfile",
    );
    Ok(())
}

#[test]
fn every_binary_has_help_and_rejects_bad_flags() -> Result<()> {
    for name in ["revtun-keytool", "revtun-control", "revtun-site"] {
        let o = run(
            Command::new(bin(name)).arg("--help"),
            Duration::from_secs(10),
        )?;
        assert!(o.status.success(), "{name} --help");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Usage"),
            "{name} --help"
        );
        let o = run(
            Command::new(bin(name)).arg("--no-such-flag"),
            Duration::from_secs(10),
        )?;
        assert!(!o.status.success(), "{name} accepted a bad flag");
    }
    let o = run(
        Command::new(bin("revtun-control")).args([
            "--state-dir",
            "/nonexistent/x",
            "--listen",
            "127.0.0.1:0",
        ]),
        Duration::from_secs(10),
    )?;
    fails_with(&o, "init' first");
    Ok(())
}

#[test]
fn control_refuses_taken_or_bad_video_and_metrics_settings() -> Result<()> {
    let host_dir = tempfile::tempdir()?;
    let state = host_dir.path().join("host");
    let o = run(
        Command::new(bin("revtun-keytool")).args(["--state-dir", &s(&state), "init"]),
        Duration::from_secs(20),
    )?;
    assert!(o.status.success());
    // A port that is already taken: control says so and exits, instead of
    // leaving a data plane that keeps failing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    for flag in ["--metrics-listen", "--rtsp-listen"] {
        let o = run(
            Command::new(bin("revtun-control")).args([
                "--state-dir",
                &s(&state),
                "--listen",
                "127.0.0.1:0",
                flag,
                &addr,
            ]),
            Duration::from_secs(10),
        )?;
        fails_with(&o, &format!("on {addr}"));
    }
    for (flag, value, needle) in [
        ("--max-site-bandwidth", "fast", "not a bit rate"),
        ("--viewer-stuck", "soon", "--viewer-stuck"),
        ("--metrics-listen", "localhost", "--metrics-listen"),
    ] {
        let o = run(
            Command::new(bin("revtun-control")).args(["--state-dir", &s(&state), flag, value]),
            Duration::from_secs(10),
        )?;
        fails_with(&o, needle);
    }
    Ok(())
}
