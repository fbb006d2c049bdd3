//! Video end to end with real third-party peers on loopback: GStreamer's
//! RTSP server as the camera at the site (tests/peers/camera.py), ffprobe
//! and ffmpeg as viewers at the host.

use anyhow::{Context, Result};
use revtun_tests::{bin, free_port, run, stderr, Host, Proc};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

struct Video {
    host: Host,
    camera: Proc,
    agent: Proc,
    rtsp: u16,
}

fn camera_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/camera.py")
}

impl Video {
    /// A camera without credentials, as `cam1` of site `s1`.
    fn start(keyint: u32) -> Result<Video> {
        Video::start_with(keyint, &[], |port| format!("rtsp://127.0.0.1:{port}/test"))
    }

    /// A camera started with extra `camera_args` (`--auth digest ...`),
    /// configured at the site as `camera_url(camera port)`.
    fn start_with(
        keyint: u32,
        camera_args: &[&str],
        camera_url: impl Fn(u16) -> String,
    ) -> Result<Video> {
        let cam_port = free_port()?;
        let camera = Proc::spawn(
            Command::new("/usr/bin/python3")
                .arg(camera_script())
                .args([&cam_port.to_string(), "ball", &keyint.to_string()])
                .args(camera_args),
        )?;
        camera
            .wait_stdout("ready", Duration::from_secs(20))
            .context("camera (GStreamer RTSP server) did not start")?;
        let rtsp = free_port()?;
        let host = Host::start(&[
            "--shards",
            "1",
            "--rtsp-listen",
            &format!("127.0.0.1:{rtsp}"),
        ])?;
        let dir = host.enroll("s1")?;
        let agent = Proc::spawn(Command::new(bin("revtun-site")).args([
            "run",
            "--state-dir",
            &dir.to_string_lossy(),
            &format!("--camera=cam1={}", camera_url(cam_port)),
        ]))?;
        agent.wait_stdout("tunnel up", Duration::from_secs(10))?;
        host.control
            .wait_stdout("rtsp listening on", Duration::from_secs(10))?;
        Ok(Video {
            host,
            camera,
            agent,
            rtsp,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{path}", self.rtsp)
    }

    fn camera_clients(&self) -> usize {
        self.camera
            .stdout
            .lock()
            .map(|l| l.iter().filter(|x| x.contains("client connected")).count())
            .unwrap_or(0)
    }
}

fn ffprobe_frames(url: &str, secs: u32) -> Result<(u64, String)> {
    let o = run(
        Command::new("ffprobe").args([
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-read_intervals",
            &format!("%+{secs}"),
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
            url,
        ]),
        Duration::from_secs(u64::from(secs) + 30),
    )?;
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    Ok((out.parse().unwrap_or(0), stderr(&o)))
}

#[test]
fn ten_viewers_decode_and_the_stream_crosses_once() -> Result<()> {
    let v = Video::start(25)?;
    let url = v.url("s1/cam1");
    let probes: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || ffprobe_frames(&url, 10))
        })
        .collect();
    let decoders: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                run(
                    Command::new("ffmpeg").args([
                        "-v",
                        "error",
                        "-rtsp_transport",
                        "tcp",
                        "-i",
                        &url,
                        "-t",
                        "10",
                        "-f",
                        "null",
                        "-",
                    ]),
                    Duration::from_secs(40),
                )
            })
        })
        .collect();
    for p in probes {
        let (frames, err) = p.join().map_err(|_| anyhow::anyhow!("panicked"))??;
        // About 250 at 25 fps; the first second may go to connection setup.
        assert!(
            frames >= 200,
            "viewer decoded {frames} frames; stderr: {err}"
        );
        assert!(err.trim().is_empty(), "decode errors: {err}");
    }
    for d in decoders {
        let o = d.join().map_err(|_| anyhow::anyhow!("panicked"))??;
        assert!(o.status.success(), "ffmpeg failed: {}", stderr(&o));
        assert!(
            stderr(&o).trim().is_empty(),
            "ffmpeg reported errors: {}",
            stderr(&o)
        );
    }
    assert_eq!(
        v.camera_clients(),
        1,
        "the camera served more than one pull: the stream crossed more than once"
    );
    Ok(())
}

#[test]
fn a_joining_viewer_gets_a_picture_without_waiting_for_the_next_keyframe() -> Result<()> {
    // One keyframe every 10 s: without the cache a joiner waits up to 10 s.
    let v = Video::start(250)?;
    let url = v.url("s1/cam1");
    let first = {
        let url = url.clone();
        std::thread::spawn(move || ffprobe_frames(&url, 12))
    };
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let o = run(
        Command::new("ffmpeg").args([
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-probesize",
            "32768",
            "-analyzeduration",
            "0",
            "-i",
            &url,
            "-frames:v",
            "1",
            "-f",
            "null",
            "-",
        ]),
        Duration::from_secs(30),
    )?;
    let took = t.elapsed();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        took < Duration::from_secs(4),
        "first picture after {took:?}: the joiner waited for a keyframe"
    );
    let (frames, _) = first.join().map_err(|_| anyhow::anyhow!("panicked"))??;
    assert!(frames > 200, "first viewer decoded {frames}");
    assert_eq!(v.camera_clients(), 1);
    Ok(())
}

#[test]
fn unknown_site_or_camera_is_404_and_bad_requests_get_rtsp_errors() -> Result<()> {
    use std::io::{Read, Write};
    let v = Video::start(25)?;
    for path in ["nosite/cam1", "s1/nocam"] {
        let (frames, err) = ffprobe_frames(&v.url(path), 2)?;
        assert_eq!(frames, 0);
        assert!(err.contains("404"), "{path}: {err}");
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", v.rtsp))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GARBAGE / HTTP/1.1\r\n\r\n")?;
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("RTSP/1.0 400"), "{reply}");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", v.rtsp))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf)?;
    assert!(String::from_utf8_lossy(&buf[..n]).contains("Public: OPTIONS, DESCRIBE"));
    assert!(!v.host.control.log().contains("panicked"));
    Ok(())
}

#[test]
fn a_stalled_viewer_costs_only_itself() -> Result<()> {
    use std::io::{Read, Write};
    let v = Video::start(25)?;
    let dp = v.host.dataplane_pid().context("data plane pid")?;
    // A viewer that sets up, plays, then never reads.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", v.rtsp))?;
    stalled.set_read_timeout(Some(Duration::from_secs(10)))?;
    let url = v.url("s1/cam1");
    let mut reply = vec![0u8; 8192];
    for (i, req) in [
        format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n"),
        format!("SETUP {url}/stream=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"),
        format!("PLAY {url} RTSP/1.0\r\nCSeq: 3\r\n\r\n"),
    ]
    .iter()
    .enumerate()
    {
        stalled.write_all(req.as_bytes())?;
        let n = stalled.read(&mut reply)?;
        let text = String::from_utf8_lossy(&reply[..n]).to_string();
        assert!(text.starts_with("RTSP/1.0 200"), "request {i}: {text}");
    }
    let before = revtun_tests::rss_kib(dp);
    // Meanwhile a real viewer keeps every frame for 10 s.
    let (frames, err) = ffprobe_frames(&url, 10)?;
    assert!(frames >= 200, "healthy viewer decoded {frames}: {err}");
    assert!(err.trim().is_empty(), "{err}");
    let grew = revtun_tests::rss_kib(dp).saturating_sub(before);
    assert!(
        grew < 32 * 1024,
        "data plane grew {grew} KiB while a viewer stalled"
    );
    // The stalled viewer is either cut off or resumes at a keyframe; it
    // never blocked the camera or the other viewer.
    assert_eq!(v.camera_clients(), 1);
    drop(stalled);
    Ok(())
}

#[test]
fn a_camera_that_requires_digest_credentials_is_pulled_with_them() -> Result<()> {
    let v = Video::start_with(
        25,
        &["--auth", "digest", "--user", "user", "--password", "secret"],
        |port| format!("rtsp://user:secret@127.0.0.1:{port}/test"),
    )?;
    let (frames, err) = ffprobe_frames(&v.url("s1/cam1"), 6)?;
    // About 150 at 25 fps; the first second may go to connection setup.
    assert!(
        frames >= 100,
        "viewer decoded {frames} frames; stderr: {err}"
    );
    assert!(err.trim().is_empty(), "decode errors: {err}");
    assert_eq!(v.camera_clients(), 1);
    let log = v.agent.log();
    assert!(
        log.contains("user:***@127.0.0.1"),
        "the site should log the camera URL, redacted:\n{log}"
    );
    assert!(!log.contains("secret"), "password in the site log:\n{log}");
    assert!(!v.host.control.log().contains("secret"));
    Ok(())
}

#[test]
fn a_camera_that_requires_basic_credentials_is_pulled_with_them() -> Result<()> {
    // Reserved characters in the password are %-encoded in the URL.
    let v = Video::start_with(
        25,
        &[
            "--auth",
            "basic",
            "--user",
            "user",
            "--password",
            "s3cr:t@/x",
        ],
        |port| format!("rtsp://user:s3cr%3At%40%2Fx@127.0.0.1:{port}/test"),
    )?;
    let (frames, err) = ffprobe_frames(&v.url("s1/cam1"), 4)?;
    assert!(
        frames >= 50,
        "viewer decoded {frames} frames; stderr: {err}"
    );
    let log = v.agent.log();
    assert!(!log.contains("s3cr"), "password in the site log:\n{log}");
    Ok(())
}

#[test]
fn a_wrong_camera_password_is_refused_and_never_logged() -> Result<()> {
    let v = Video::start_with(
        25,
        &["--auth", "digest", "--user", "user", "--password", "secret"],
        |port| format!("rtsp://user:wr0ng-pass@127.0.0.1:{port}/test"),
    )?;
    let (frames, err) = ffprobe_frames(&v.url("s1/cam1"), 2)?;
    assert_eq!(frames, 0, "{err}");
    assert!(err.contains("DESCRIBE failed"), "viewer error: {err}");
    v.agent
        .wait_log("credentials refused", Duration::from_secs(10))?;
    let log = v.agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("credentials refused"))
        .unwrap_or_default();
    assert!(line.contains("cam1"), "the error names no camera: {line}");
    assert!(
        line.contains("Digest"),
        "Digest was not the scheme tried: {line}"
    );
    assert!(
        log.contains("user:***@127.0.0.1"),
        "the site should log the camera URL, redacted:\n{log}"
    );
    assert!(!log.contains("wr0ng"), "password in the site log:\n{log}");
    assert!(!v.host.control.log().contains("wr0ng"));
    assert!(!log.contains("panicked") && !v.host.control.log().contains("panicked"));
    Ok(())
}
