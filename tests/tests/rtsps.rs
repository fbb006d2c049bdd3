//! RTSPS (RTSP over TLS) at the host, end to end with real peers on
//! loopback: GStreamer's RTSP server as the camera at the site, ffprobe
//! (GnuTLS) and rustls clients (TLS 1.3 and 1.2) as viewers at the host,
//! a self-signed certificate from rcgen.

use anyhow::{Context, Result};
use revtun_tests::video::{drain_for, ffprobe_frames, start_camera};
use revtun_tests::{bin, free_port, keytool, run, stderr, Host, Proc};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A certificate for 127.0.0.1 and localhost and its key, as PEM files.
struct Cert {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
    key_pem: String,
}

impl Cert {
    fn new() -> Result<Cert> {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])?;
        let dir = tempfile::tempdir()?;
        let cert = dir.path().join("rtsps.crt");
        let key = dir.path().join("rtsps.key");
        std::fs::write(&cert, ck.cert.pem())?;
        let key_pem = ck.signing_key.serialize_pem();
        std::fs::write(&key, &key_pem)?;
        Ok(Cert {
            dir,
            cert,
            key,
            der: ck.cert.der().clone(),
            key_pem,
        })
    }

    /// The base64 lines of the key: none may show up in logs or argv.
    fn key_lines(&self) -> Vec<&str> {
        self.key_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16)
            .collect()
    }

    fn flags(&self) -> Vec<String> {
        vec![
            "--rtsps-listen".into(),
            "127.0.0.1:0".into(),
            "--rtsps-cert".into(),
            self.cert.to_string_lossy().into_owned(),
            "--rtsps-key".into(),
            self.key.to_string_lossy().into_owned(),
        ]
    }
}

/// The viewer account of these tests.
const USER: &str = "tls";
const PASSWORD: &str = "rtsps-test-password";
const LOGIN: &str = "tls:rtsps-test-password";

/// `Authorization: Basic` credentials of [`USER`].
fn basic() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
}

struct Video {
    host: Host,
    camera: Proc,
    _agent: Proc,
    rtsp: u16,
    rtsps: u16,
}

/// The port of a "KIND listening on ADDR" line of the host's stdout.
fn listening_port(host: &Host, kind: &str) -> Result<u16> {
    let line = host
        .control
        .wait_stdout(&format!("{kind} listening on "), Duration::from_secs(10))?;
    let addr: std::net::SocketAddr = line
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("bad line {line:?}"))?;
    Ok(addr.port())
}

impl Video {
    /// Camera, a host with two shards serving RTSP and RTSPS (both on
    /// ports the kernel picks), one site with camera `cam1`.
    fn start(cert: &Cert) -> Result<Video> {
        Video::start_with(cert, "ball", &[])
    }

    /// As [`Video::start`] with the camera showing `pattern` (`ball`:
    /// about 150 kbit/s; `snow`: about 1 Mbit/s) and extra host flags.
    fn start_with(cert: &Cert, pattern: &str, extra: &[&str]) -> Result<Video> {
        let cam_port = free_port()?;
        let camera = start_camera(cam_port, pattern, 25, &[])?;
        let mut flags = vec![
            "--rtsp-listen".to_string(),
            "127.0.0.1:0".into(),
            "--shards".into(),
            "2".into(),
        ];
        flags.extend(cert.flags());
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let host = Host::start(&flags)?;
        // A viewer account every test here uses (authentication itself is
        // tested in video.rs; here it runs over TLS).
        let pw = host.path("viewer.pw");
        std::fs::write(&pw, format!("{PASSWORD}\n"))?;
        let o = revtun_tests::keytool(
            &host.state(),
            &[
                "viewer",
                "add",
                USER,
                "--allow",
                "s1/*",
                "--password-file",
                &pw.to_string_lossy(),
            ],
        )?;
        anyhow::ensure!(
            o.status.success(),
            "viewer add: {}",
            revtun_tests::stderr(&o)
        );
        // Both shards (`--shards 2`) hold the table.
        let t0 = Instant::now();
        while host
            .control
            .log()
            .matches("viewer table updated viewers=1")
            .count()
            < 2
        {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "no viewer table");
            std::thread::sleep(Duration::from_millis(20));
        }
        let dir = host.enroll("s1")?;
        let agent = Proc::spawn(Command::new(bin("revtun-site")).args([
            "run",
            "--state-dir",
            &dir.to_string_lossy(),
            &format!("--camera=cam1=rtsp://127.0.0.1:{cam_port}/test"),
        ]))?;
        agent.wait_stdout("tunnel up", Duration::from_secs(10))?;
        host.control
            .wait_log("tunnel started", Duration::from_secs(10))?;
        let rtsp = listening_port(&host, "rtsp")?;
        let rtsps = listening_port(&host, "rtsps")?;
        Ok(Video {
            host,
            camera,
            _agent: agent,
            rtsp,
            rtsps,
        })
    }

    fn camera_clients(&self) -> usize {
        self.camera.count_stdout("client connected")
    }
}

/// A rustls client trusting only `ca`, speaking only `version`.
fn client_config(
    ca: &CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[version])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A raw RTSPS viewer (certificate verified for 127.0.0.1): DESCRIBE,
/// SETUP (interleaved), PLAY; returns the connection after the PLAY reply.
fn play_tls(port: u16, path: &str, cfg: Arc<rustls::ClientConfig>) -> Result<TlsStream> {
    play_tls_on(TcpStream::connect(("127.0.0.1", port))?, port, path, cfg)
}

/// [`play_tls`] over a connected socket.
fn play_tls_on(
    sock: TcpStream,
    port: u16,
    path: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<TlsStream> {
    sock.set_read_timeout(Some(Duration::from_secs(15)))?;
    let name = ServerName::try_from("127.0.0.1")?.to_owned();
    let conn = rustls::ClientConnection::new(cfg, name)?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    let url = format!("rtsps://127.0.0.1:{port}/{path}");
    // Basic, which the host accepts over TLS only.
    let auth = format!("Authorization: Basic {}", basic());
    revtun_tests::video::play_over(&mut s, &url, Some(&auth))?;
    Ok(s)
}

fn join<T>(h: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join().map_err(|_| anyhow::anyhow!("panicked"))?
}

#[test]
fn rtsps_viewers_decode_over_tls_1_3_and_1_2_next_to_plain_rtsp() -> Result<()> {
    let cert = Cert::new()?;
    let v = Video::start(&cert)?;
    let tls_url = format!("rtsps://{LOGIN}@127.0.0.1:{}/s1/cam1", v.rtsps);
    let plain_url = format!("rtsp://{LOGIN}@127.0.0.1:{}/s1/cam1", v.rtsp);
    // Raw viewers that verify the certificate, one per TLS version.
    let raws: Vec<_> = [&rustls::version::TLS13, &rustls::version::TLS12]
        .into_iter()
        .map(|version| {
            let cfg = client_config(&cert.der, version)?;
            let port = v.rtsps;
            Ok(std::thread::spawn(move || -> Result<(u64, String)> {
                let s = play_tls(port, "s1/cam1", cfg)?;
                let got = format!("{:?}", s.conn.protocol_version());
                s.sock.set_read_timeout(Some(Duration::from_millis(500)))?;
                Ok((drain_for(s, 8)?, got))
            }))
        })
        .collect::<Result<_>>()?;
    // ffprobe (GnuTLS) over RTSPS on both shards, and one over plain RTSP.
    let probes: Vec<_> = (0..4)
        .map(|_| tls_url.clone())
        .chain(std::iter::once(plain_url))
        .map(|url| std::thread::spawn(move || ffprobe_frames(&url, 10)))
        .collect();
    for p in probes {
        let (frames, err) = join(p)?;
        eprintln!("viewer decoded {frames} frames in 10 s");
        // About 250 at 25 fps; the first second may go to connection setup.
        assert!(
            frames >= 200,
            "viewer decoded {frames} frames; stderr: {err}"
        );
        assert!(err.trim().is_empty(), "decode errors: {err}");
    }
    for (r, want) in raws.into_iter().zip(["TLSv1_3", "TLSv1_2"]) {
        let (bytes, version) = join(r)?;
        eprintln!("{version} viewer received {bytes} bytes in 8 s");
        assert!(version.contains(want), "negotiated {version}");
        // The test camera sends about 150 kbit/s: 8 s is about 150 kB.
        assert!(bytes > 60_000, "{want} viewer received only {bytes} bytes");
    }
    assert_eq!(v.camera_clients(), 1, "the stream crossed more than once");
    // Basic over plain RTSP is never checked: answered with the Digest
    // challenge, while over TLS it plays (the raw viewers above).
    let mut plain = TcpStream::connect(("127.0.0.1", v.rtsp))?;
    plain.set_read_timeout(Some(Duration::from_secs(5)))?;
    plain.write_all(
        format!(
            "DESCRIBE rtsp://127.0.0.1:{}/s1/cam1 RTSP/1.0\r\nCSeq: 1\r\nAuthorization: Basic {}\r\n\r\n",
            v.rtsp,
            basic()
        )
        .as_bytes(),
    )?;
    let reply = revtun_tests::read_rtsp_response(&mut plain)?;
    assert_eq!(revtun_tests::rtsp_status(&reply), 401, "{reply}");
    assert!(
        !reply.contains("Basic"),
        "Basic offered over plain RTSP: {reply}"
    );
    // A rustls viewer trusting another CA is refused by its own check:
    // the certificate served is the one given.
    let stranger = Cert::new()?;
    let cfg = client_config(&stranger.der, &rustls::version::TLS13)?;
    assert!(play_tls(v.rtsps, "s1/cam1", cfg).is_err());
    // The key's contents are in no log and no command line.
    let log = v.host.control.log();
    let dp = v.host.dataplane_pid().context("data plane pid")?;
    let argv = std::fs::read(format!("/proc/{dp}/cmdline"))?;
    let argv = String::from_utf8_lossy(&argv);
    // The data plane's settings file names the key file, never its contents.
    let settings = std::fs::read_to_string(v.host.state().join("dataplane.toml"))?;
    assert!(settings.contains("rtsps_key = "), "{settings}");
    for line in cert.key_lines() {
        assert!(!log.contains(line), "key material in the host log");
        assert!(
            !argv.contains(line),
            "key material in the data plane's argv"
        );
        assert!(
            !settings.contains(line),
            "key material in the data plane's settings"
        );
    }
    assert!(!log.contains("panicked"), "{log}");
    Ok(())
}

#[test]
fn plaintext_and_silent_clients_on_the_rtsps_port_are_closed_without_harming_viewers() -> Result<()>
{
    let cert = Cert::new()?;
    let v = Video::start(&cert)?;
    let cfg = client_config(&cert.der, &rustls::version::TLS13)?;
    let viewer = play_tls(v.rtsps, "s1/cam1", cfg)?;
    viewer
        .sock
        .set_read_timeout(Some(Duration::from_millis(500)))?;
    let watching = std::thread::spawn(move || drain_for(viewer, 16));
    // Clients that open TCP and never handshake, or stop half-way
    // through a ClientHello: closed at the handshake deadline (10 s).
    let opened = Instant::now();
    let mut silent = Vec::new();
    for i in 0..6 {
        let mut s = TcpStream::connect(("127.0.0.1", v.rtsps))?;
        if i % 2 == 1 {
            // A handshake record header announcing 512 bytes, and 3 of them.
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])?;
        }
        s.set_read_timeout(Some(Duration::from_secs(25)))?;
        silent.push(s);
    }
    // Plaintext RTSP on the RTSPS port: refused at once, never answered.
    for _ in 0..10 {
        let mut s = TcpStream::connect(("127.0.0.1", v.rtsps))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")?;
        let mut got = Vec::new();
        // Ends (EOF or reset) well before the read timeout.
        match s.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => anyhow::bail!("plaintext client not closed: {e}"),
        }
        assert!(
            !String::from_utf8_lossy(&got).contains("RTSP/1.0"),
            "a plaintext client was answered: {got:?}"
        );
    }
    let (frames, err) =
        ffprobe_frames(&format!("rtsp://{LOGIN}@127.0.0.1:{}/s1/cam1", v.rtsps), 2)?;
    assert_eq!(frames, 0, "plain RTSP decoded on the RTSPS port: {err}");
    // While the silent clients wait out their deadline, new viewers
    // handshake and decode on the same shards.
    let (frames, err) =
        ffprobe_frames(&format!("rtsps://{LOGIN}@127.0.0.1:{}/s1/cam1", v.rtsps), 5)?;
    assert!(frames >= 100, "viewer decoded {frames} frames; {err}");
    assert!(err.trim().is_empty(), "decode errors: {err}");
    for mut s in silent {
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => anyhow::bail!("a client that never handshook was not closed: {e}"),
        }
        let at = opened.elapsed();
        assert!(
            at >= Duration::from_secs(9),
            "a silent client was closed after {at:?}, before the 10 s deadline"
        );
    }
    let bytes = join(watching)?;
    // About 150 kbit/s for 16 s, whatever the other clients did.
    assert!(bytes > 150_000, "the playing viewer received only {bytes}");
    assert_eq!(v.camera_clients(), 1);
    assert!(!v.host.control.log().contains("panicked"));
    Ok(())
}

#[test]
fn a_stalled_rtsps_viewer_is_cut_and_costs_only_itself() -> Result<()> {
    let cert = Cert::new()?;
    // Noise: about 1 Mbit/s, so the kernel's send buffers (up to 4 MiB
    // each on loopback) fill within a minute.
    let v = Video::start_with(
        &cert,
        "snow",
        &["--viewer-stuck", "1s", "--metrics-listen", "127.0.0.1:0"],
    )?;
    let metrics = v.host.metrics_addr()?;
    let dp = v.host.dataplane_pid().context("data plane pid")?;
    let cfg = client_config(&cert.der, &rustls::version::TLS13)?;
    // Viewers that play, then never read, with a small receive buffer so
    // their sockets fill soon.
    let stalled: Vec<TlsStream> = (0..4)
        .map(|_| {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            sock.set_recv_buffer_size(4096)?;
            let addr: std::net::SocketAddr = format!("127.0.0.1:{}", v.rtsps).parse()?;
            sock.connect(&addr.into())?;
            play_tls_on(sock.into(), v.rtsps, "s1/cam1", cfg.clone())
        })
        .collect::<Result<_>>()?;
    let before = revtun_tests::rss_kib(dp);
    // A viewer that keeps up decodes every frame meanwhile.
    let (frames, err) = ffprobe_frames(
        &format!("rtsps://{LOGIN}@127.0.0.1:{}/s1/cam1", v.rtsps),
        10,
    )?;
    assert!(frames >= 200, "healthy viewer decoded {frames}: {err}");
    assert!(err.trim().is_empty(), "{err}");
    // Each stalled viewer fills its socket and rustls's 64 KiB, then is
    // cut once its writer waited --viewer-stuck for room.
    let start = Instant::now();
    let cut = loop {
        let m = revtun_tests::http_get(&metrics, "/metrics")?;
        let cut = revtun_tests::metric_sum(&m, "revtun_video_viewers_cut_total", &[]);
        if cut >= 4 || start.elapsed() > Duration::from_secs(120) {
            break cut;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "stalled RTSPS viewers cut: {cut} of 4, {:?} after the healthy viewer ended",
        start.elapsed()
    );
    assert_eq!(cut, 4, "stalled RTSPS viewers were not all cut");
    let grew = revtun_tests::rss_kib(dp).saturating_sub(before);
    eprintln!("data plane RSS grew {grew} KiB");
    assert!(
        grew < 32 * 1024,
        "data plane grew {grew} KiB while viewers stalled"
    );
    drop(stalled);
    assert_eq!(v.camera_clients(), 1);
    Ok(())
}

/// Runs control (on an initialised state directory) with `flags`; it must
/// exit non-zero at start. Returns its stderr.
/// `revtun-dataplane` started by hand (not by control) with `flags`.
fn dataplane_alone(flags: &[&str]) -> Result<std::process::Output> {
    run(
        Command::new(bin("revtun-dataplane"))
            .args(["--control-fd", "99"])
            .args(flags),
        Duration::from_secs(20),
    )
}

fn control_fails(state: &Path, flags: &[&str]) -> Result<String> {
    let o = run(
        Command::new(bin("revtun-control"))
            .arg("--state-dir")
            .arg(state)
            .args(["--listen", "127.0.0.1:0", "--shards", "1"])
            .args(["--rtp-port=0", "--rtcp-port=0"])
            .args(flags),
        Duration::from_secs(20),
    )?;
    let err = stderr(&o);
    anyhow::ensure!(!o.status.success(), "control started with {flags:?}: {err}");
    anyhow::ensure!(
        !String::from_utf8_lossy(&o.stdout).contains("data plane started"),
        "a data plane was started with {flags:?}"
    );
    Ok(err)
}

#[test]
fn bad_rtsps_files_or_flags_stop_control_and_the_data_plane_naming_the_file() -> Result<()> {
    let cert = Cert::new()?;
    let other = Cert::new()?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("host");
    let o = keytool(&state, &["init"])?;
    anyhow::ensure!(o.status.success(), "keytool init: {}", stderr(&o));
    let missing = dir.path().join("no-such-cert.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 !!\n")?;
    let (c, k) = (cert.cert.to_string_lossy(), cert.key.to_string_lossy());
    let m = missing.to_string_lossy();
    let g = garbage.to_string_lossy();
    let ok = other.key.to_string_lossy();
    let listen = ["--rtsps-listen", "127.0.0.1:0"];
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--rtsps-cert", &m, "--rtsps-key", &k], vec![&m]),
        (vec!["--rtsps-cert", &c, "--rtsps-key", &m], vec![&m]),
        (vec!["--rtsps-cert", &g, "--rtsps-key", &k], vec![&g]),
        // The certificate as the key: no private key in it.
        (
            vec!["--rtsps-cert", &c, "--rtsps-key", &c],
            vec![&c, "private key"],
        ),
        // Another certificate's key.
        (vec!["--rtsps-cert", &c, "--rtsps-key", &ok], vec![&c, &ok]),
    ];
    for (files, want) in &cases {
        let flags: Vec<&str> = listen.iter().chain(files).copied().collect();
        let err = control_fails(&state, &flags)?;
        for w in want {
            assert!(
                err.contains(w),
                "{flags:?}: the error does not name {w}: {err}"
            );
        }
        for line in cert.key_lines().into_iter().chain(other.key_lines()) {
            assert!(!err.contains(line), "key material in {err}");
        }
        // The data plane, started by hand, checks the same before anything else.
        let o = dataplane_alone(&flags)?;
        let dp_err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {dp_err}");
        for w in want {
            assert!(dp_err.contains(w), "{flags:?}: {dp_err}");
        }
    }
    // Only some of the three flags.
    for flags in [
        vec!["--rtsps-listen", "127.0.0.1:0"],
        vec!["--rtsps-listen", "127.0.0.1:0", "--rtsps-cert", &c],
        vec!["--rtsps-cert", &c, "--rtsps-key", &k],
    ] {
        let err = control_fails(&state, &flags)?;
        assert!(err.contains("go together"), "{flags:?}: {err}");
        let o = dataplane_alone(&flags)?;
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("go together"), "{}", stderr(&o));
    }
    // An RTSPS address already taken stops control at start too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let err = control_fails(
        &state,
        &[
            "--rtsps-listen",
            &addr,
            "--rtsps-cert",
            &c,
            "--rtsps-key",
            &k,
        ],
    )?;
    assert!(err.contains("RTSPS") && err.contains(&addr), "{err}");
    drop(cert.dir);
    Ok(())
}
