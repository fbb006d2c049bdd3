//! Video end to end with real third-party peers on loopback: GStreamer's
//! RTSP server as the camera at the site (tests/peers/camera.py), ffprobe
//! and ffmpeg as viewers at the host.

use anyhow::{Context, Result};
use revtun_tests::video::{drain_for, ffprobe_frames, start_camera};
use revtun_tests::{
    bin, free_port, http_get, metric_sum, rtsp_status, run, stderr, Host, Proc, RtspClient,
};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

struct Video {
    cam_port: u16,
    host: Host,
    camera: Proc,
    agent: Proc,
    rtsp: u16,
    /// The camera's files (VLC's clip), removed at the end.
    _files: Option<tempfile::TempDir>,
}

impl Video {
    /// Camera, host with the default shards (one per CPU) and one site
    /// with camera `cam1`.
    fn start(keyint: u32) -> Result<Video> {
        Video::start_with(keyint, &[], &["cam1"])
    }

    /// As [`Video::start`] with extra host flags and these camera names
    /// (all pulling the same test camera).
    /// These tests are about the redirector, not about who may watch:
    /// viewers need no credentials here (`tests/tests/viewers.rs` covers
    /// authentication).
    fn start_with(keyint: u32, host_flags: &[&str], cams: &[&str]) -> Result<Video> {
        let mut flags = vec!["--allow-anonymous-viewers"];
        flags.extend_from_slice(host_flags);
        Video::start_full(keyint, &flags, &[], cams, |port| {
            format!("rtsp://127.0.0.1:{port}/test")
        })
    }

    /// A camera started with extra `camera_args` (`--auth digest ...`),
    /// configured at the site as `cam1` = `camera_url(camera port)`.
    fn start_cam(
        keyint: u32,
        camera_args: &[&str],
        camera_url: impl Fn(u16) -> String,
    ) -> Result<Video> {
        Video::start_full(
            keyint,
            &["--allow-anonymous-viewers"],
            camera_args,
            &["cam1"],
            camera_url,
        )
    }

    fn start_full(
        keyint: u32,
        host_flags: &[&str],
        camera_args: &[&str],
        cams: &[&str],
        camera_url: impl Fn(u16) -> String,
    ) -> Result<Video> {
        Video::start_limited(None, keyint, host_flags, camera_args, cams, camera_url)
    }

    /// As [`Video::start_full`] with the host under a descriptor limit.
    fn start_limited(
        nofile: Option<u64>,
        keyint: u32,
        host_flags: &[&str],
        camera_args: &[&str],
        cams: &[&str],
        camera_url: impl Fn(u16) -> String,
    ) -> Result<Video> {
        let cam_port = free_port()?;
        let camera = start_camera(cam_port, "ball", keyint, camera_args)?;
        Video::around(camera, cam_port, nofile, host_flags, cams, camera_url)
    }

    /// VLC's RTSP server as `cam1` (it streams only over UDP), behind the
    /// site of a host that needs no viewer credentials.
    fn start_vlc() -> Result<Video> {
        let files = tempfile::tempdir()?;
        let cam_port = free_port()?;
        let camera = revtun_tests::video::start_vlc_camera(cam_port, files.path())?;
        let mut v = Video::around(
            camera,
            cam_port,
            None,
            &["--allow-anonymous-viewers"],
            &["cam1"],
            |port| format!("rtsp://127.0.0.1:{port}/cam"),
        )?;
        v._files = Some(files);
        Ok(v)
    }

    /// Host and site around a running camera on `cam_port`.
    fn around(
        camera: Proc,
        cam_port: u16,
        nofile: Option<u64>,
        host_flags: &[&str],
        cams: &[&str],
        camera_url: impl Fn(u16) -> String,
    ) -> Result<Video> {
        let rtsp = revtun_tests::reserved_port()?;
        let listen = format!("127.0.0.1:{rtsp}");
        let mut flags = vec!["--rtsp-listen", &listen];
        flags.extend_from_slice(host_flags);
        let host = Host::start_limited(nofile, &flags)?;
        let dir = host.enroll("s1")?;
        let mut site = Command::new(bin("revtun-site"));
        site.args(["run", "--state-dir", &dir.to_string_lossy()]);
        for cam in cams {
            site.arg(format!("--camera={cam}={}", camera_url(cam_port)));
        }
        let agent = Proc::spawn(&mut site)?;
        agent.wait_stdout("tunnel up", Duration::from_secs(10))?;
        host.control
            .wait_stdout("rtsp listening on", Duration::from_secs(10))?;
        // The site's "tunnel up" can come before the host's data plane took
        // the tunnel: a viewer then would get 404 (site not connected).
        host.control
            .wait_log("tunnel started", Duration::from_secs(10))?;
        Ok(Video {
            cam_port,
            host,
            camera,
            agent,
            rtsp,
            _files: None,
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

/// A raw RTSP viewer: DESCRIBE, SETUP (interleaved), PLAY; returns the
/// connection positioned after the PLAY reply.
fn play_raw(port: u16, url: &str) -> Result<std::net::TcpStream> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    revtun_tests::video::play_over(&mut s, url, None)?;
    Ok(s)
}

#[test]
fn ten_viewers_decode_and_the_stream_crosses_once() -> Result<()> {
    // Two shards: viewers land on either (SO_REUSEPORT); those on the
    // shard without the site's tunnel get the frames by message.
    let v = Video::start_with(
        25,
        &["--shards", "2", "--metrics-listen", "127.0.0.1:0"],
        &["cam1"],
    )?;
    let metrics = v.host.metrics_addr()?;
    let url = v.url("s1/cam1");
    // Twenty more raw viewers, so both shards surely get some.
    let raws: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            let port = v.rtsp;
            std::thread::spawn(move || drain_for(play_raw(port, &url)?, 8))
        })
        .collect();
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
    for r in raws {
        let bytes = r.join().map_err(|_| anyhow::anyhow!("panicked"))??;
        // The test camera sends about 150 kbit/s: 8 s is about 150 kB.
        assert!(bytes > 60_000, "raw viewer received only {bytes} bytes");
    }
    assert_eq!(
        v.camera_clients(),
        1,
        "the camera served more than one pull: the stream crossed more than once"
    );
    let m = http_get(&metrics, "/metrics")?;
    let origin = metric_sum(&m, "revtun_video_bytes_total", &["role=\"origin\""]);
    let tunnel_in = metric_sum(&m, "revtun_tunnel_bytes_in_total", &["site=\"s1\""]);
    assert!(origin > 100_000, "origin feed bytes {origin}\n{m}");
    // The tunnel carried the stream once (plus framing), not once per viewer.
    assert!(
        tunnel_in < origin + origin / 5,
        "tunnel carried {tunnel_in} bytes for a {origin}-byte stream\n{m}"
    );
    assert_eq!(
        metric_sum(&m, "revtun_video_viewers_total", &["camera=\"cam1\""]),
        30,
        "{m}"
    );
    // The host's own latency figures (arrival to viewer socket) are there.
    assert!(
        metric_sum(&m, "revtun_video_send_latency_frames", &[]) > 0,
        "{m}"
    );
    assert!(
        m.contains("revtun_video_send_latency_us{quantile=\"0.99\""),
        "{m}"
    );
    // Some viewers were on the other shard and were served by its mirror.
    assert!(
        metric_sum(&m, "revtun_video_viewers_total", &["role=\"mirror\""]) > 0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "revtun_video_units_total", &["role=\"mirror\""]) > 100,
        "{m}"
    );
    Ok(())
}

#[test]
fn admission_refuses_streams_beyond_the_site_limits_with_453() -> Result<()> {
    // At most one stream per site: the second camera is refused at once.
    let v = Video::start_with(25, &["--max-site-streams", "1"], &["cam1", "cam2"])?;
    let first = play_raw(v.rtsp, &v.url("s1/cam1"))?;
    let (frames, err) = ffprobe_frames(&v.url("s1/cam2"), 2)?;
    assert_eq!(frames, 0);
    assert!(err.contains("453"), "{err}");
    drop(first);
    drop(v);
    // Bandwidth: the camera sends about 150 kbit/s, the site may use 50 kbit/s.
    let v = Video::start_with(25, &["--max-site-bandwidth", "50k"], &["cam1", "cam2"])?;
    let first = play_raw(v.rtsp, &v.url("s1/cam1"))?;
    let reader = std::thread::spawn(move || drain_for(first, 6));
    // The rate is measured over a whole second of the live stream.
    std::thread::sleep(Duration::from_secs(3));
    let (frames, err) = ffprobe_frames(&v.url("s1/cam2"), 2)?;
    assert_eq!(frames, 0);
    assert!(err.contains("453"), "{err}");
    let bytes = reader.join().map_err(|_| anyhow::anyhow!("panicked"))??;
    assert!(
        bytes > 40_000,
        "the admitted stream kept flowing: {bytes} bytes"
    );
    assert!(
        v.host.control.log().contains("bit/s"),
        "refusal reason logged"
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
fn stalled_and_slow_viewers_cost_only_themselves() -> Result<()> {
    let v = Video::start(25)?;
    let dp = v.host.dataplane_pid().context("data plane pid")?;
    // A viewer that sets up, plays, then never reads.
    let url = v.url("s1/cam1");
    let stalled = play_raw(v.rtsp, &url)?;
    // And one that reads at 10 KiB/s (THREATS.md row 9), for 12 s.
    let mut slow = play_raw(v.rtsp, &url)?;
    let slow_reader = std::thread::spawn(move || -> Result<u64> {
        let mut buf = [0u8; 1024];
        let mut got = 0u64;
        let end = Instant::now() + Duration::from_secs(12);
        while Instant::now() < end {
            got += slow.read(&mut buf)? as u64;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(got)
    });
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
    // The slow viewer got what it asked for, at its pace.
    let slow_got = slow_reader
        .join()
        .map_err(|_| anyhow::anyhow!("panicked"))??;
    assert!(slow_got > 60 * 1024, "slow viewer read {slow_got} bytes");
    // The stalled viewer is either cut off or resumes at a keyframe; it
    // never blocked the camera or the other viewers.
    assert_eq!(v.camera_clients(), 1);
    drop(stalled);
    Ok(())
}

#[test]
fn a_camera_that_goes_away_ends_the_stream_and_is_retried_when_asked_again() -> Result<()> {
    let mut v = Video::start(25)?;
    let url = v.url("s1/cam1");
    let mut viewer = play_raw(v.rtsp, &url)?;
    let mut buf = vec![0u8; 64 * 1024];
    viewer.set_read_timeout(Some(Duration::from_secs(5)))?;
    anyhow::ensure!(
        viewer.read(&mut buf)? > 0,
        "no video before the camera went away"
    );
    // The camera goes away (killed by PID, it was started by this test).
    let gone = Instant::now();
    v.camera = Proc::spawn(&mut Command::new("true"))?;
    // The viewer sees its stream end: the connection closes.
    viewer.set_read_timeout(Some(Duration::from_millis(500)))?;
    let closed = loop {
        match viewer.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break true,
        }
        if gone.elapsed() > Duration::from_secs(20) {
            break false;
        }
    };
    assert!(closed, "the viewer was not told the camera went away");
    // Asked again while the camera is away: a clear refusal, no hang.
    let (frames, err) = ffprobe_frames(&url, 2)?;
    assert_eq!(frames, 0);
    // A known camera that cannot be pulled: 503, not 404.
    assert!(err.contains("503"), "{err}");
    // The camera is back: the next viewer gets video again.
    v.camera = start_camera(v.cam_port, "ball", 25, &[])?;
    let (frames, err) = ffprobe_frames(&url, 4)?;
    assert!(
        frames > 50,
        "after the camera came back: {frames} frames; {err}"
    );
    assert!(!v.host.control.log().contains("panicked"));
    Ok(())
}

#[test]
fn a_camera_that_requires_digest_credentials_is_pulled_with_them() -> Result<()> {
    let v = Video::start_cam(
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
    let v = Video::start_cam(
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
    let v = Video::start_cam(
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

#[test]
fn a_camera_that_accepts_and_never_answers_is_given_up_and_served_once_it_answers() -> Result<()> {
    // A "camera" that takes the connection and says nothing.
    use std::sync::atomic::{AtomicBool, Ordering};
    let mute = std::net::TcpListener::bind("127.0.0.1:0")?;
    let cam_port = mute.local_addr()?.port();
    mute.set_nonblocking(true)?;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let mute_thread = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            if let Ok((c, _)) = mute.accept() {
                held.push(c);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The listener and every connection close here.
    });
    let rtsp = free_port()?;
    let host = Host::start(&[
        "--rtsp-listen",
        &format!("127.0.0.1:{rtsp}"),
        "--allow-anonymous-viewers",
    ])?;
    let dir = host.enroll("s1")?;
    let agent = Proc::spawn(Command::new(bin("revtun-site")).args([
        "run",
        "--state-dir",
        &dir.to_string_lossy(),
        &format!("--camera=cam1=rtsp://127.0.0.1:{cam_port}/test"),
        "--camera-timeout",
        "1s",
    ]))?;
    agent.wait_stdout("tunnel up", Duration::from_secs(10))?;
    host.control
        .wait_stdout("rtsp listening on", Duration::from_secs(10))?;
    host.control
        .wait_log("tunnel started", Duration::from_secs(10))?;
    let url = format!("rtsp://127.0.0.1:{rtsp}/s1/cam1");
    // The viewer gets a clear refusal, not a hang; the site says why.
    let (frames, err) = ffprobe_frames(&url, 2)?;
    assert_eq!(frames, 0);
    // A known camera that cannot be pulled: 503, not 404.
    assert!(err.contains("503"), "{err}");
    agent.wait_log("did not answer DESCRIBE within 1s", Duration::from_secs(5))?;
    // The camera starts answering (a real RTSP server on the same port).
    stop.store(true, Ordering::Relaxed);
    let _ = mute_thread.join();
    let _camera = start_camera(cam_port, "ball", 25, &[])?;
    let (frames, err) = ffprobe_frames(&url, 3)?;
    assert!(
        frames > 25,
        "once the camera answers: {frames} frames; {err}"
    );
    assert!(!agent.log().contains("panicked"));
    Ok(())
}

// ---------------------------------------------------------------------
// Viewers and permissions (issue 10): every request is authenticated.

/// A camera and host that require credentials (no anonymous viewers),
/// the site `s1` with cameras `cam1` and `cam2`.
fn secure_video() -> Result<Video> {
    Video::start_full(25, &[], &[], &["cam1", "cam2"], |port| {
        format!("rtsp://127.0.0.1:{port}/test")
    })
}

/// `revtun-keytool viewer ARGS` on the host's state; its stdout.
fn viewer_cmd(v: &Video, args: &[&str]) -> Result<String> {
    let mut all = vec!["viewer"];
    all.extend_from_slice(args);
    let o = revtun_tests::keytool(&v.host.state(), &all)?;
    anyhow::ensure!(o.status.success(), "keytool {args:?}: {}", stderr(&o));
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").trim().to_string()
}

/// Waits until a viewer table holding `n` viewers reached the data plane.
/// (Every shard logs it once.)
fn wait_table(v: &Video, n: usize) -> Result<()> {
    let needle = format!("viewer table updated viewers={n}");
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    while v.host.control.log().matches(&needle).count() < shards {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "no {needle:?} from every shard; log:\n{}",
            v.host.control.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The decoded frames of a GStreamer viewer of `url` (rtspsrc, TCP): it
/// exits 0 once 200 frames were decoded.
fn gst_decodes_200(url: &str) -> Result<bool> {
    gst_decodes_200_over(url, "tcp")
}

/// As [`gst_decodes_200`] with rtspsrc's `protocols` (`udp`, `tcp`).
fn gst_decodes_200_over(url: &str, protocols: &str) -> Result<bool> {
    let o = run(
        Command::new("gst-launch-1.0").args([
            "-q",
            "rtspsrc",
            &format!("location={url}"),
            &format!("protocols={protocols}"),
            "!",
            "rtph264depay",
            "!",
            "h264parse",
            "!",
            "avdec_h264",
            "!",
            "identity",
            "eos-after=200",
            "!",
            "fakesink",
            "sync=true",
        ]),
        Duration::from_secs(25),
    )?;
    Ok(o.status.success())
}

#[test]
fn viewers_need_credentials_and_a_permission_for_the_camera() -> Result<()> {
    let v = secure_video()?;
    let out = viewer_cmd(&v, &["add", "alice", "--allow", "s1/cam1"])?;
    let password = last_line(&out);
    assert_eq!(password.len(), 24, "{out}");
    wait_table(&v, 1)?;
    let listed = viewer_cmd(&v, &["list"])?;
    assert!(
        listed.contains("alice") && listed.contains("s1/cam1"),
        "{listed}"
    );
    assert!(!listed.contains(&password));

    // Anonymous: 401, and the site pulls nothing.
    let (frames, err) = ffprobe_frames(&v.url("s1/cam1"), 2)?;
    assert_eq!(frames, 0);
    assert!(err.contains("401"), "{err}");
    let mut anon = RtspClient::connect(v.rtsp, None)?;
    let reply = anon.request("DESCRIBE", &v.url("s1/cam1"), &[])?;
    assert_eq!(rtsp_status(&reply), 401, "{reply}");
    assert!(
        reply.contains("WWW-Authenticate: Digest realm=\"revtun\""),
        "{reply}"
    );
    assert!(
        !reply.contains("Basic"),
        "Basic offered over plain TCP: {reply}"
    );
    assert_eq!(
        v.camera_clients(),
        0,
        "an anonymous request made the site pull the camera"
    );

    // Unknown viewer and wrong password: byte-identical 401s (fresh
    // connections, same CSeq).
    let attempt = |user: &str, pass: &str| -> Result<String> {
        let mut c = RtspClient::connect(v.rtsp, Some((user, pass)))?;
        c.request("DESCRIBE", &v.url("s1/cam1"), &[])
    };
    let unknown = attempt("mallory", &password)?;
    let wrong = attempt("alice", "not-the-password")?;
    assert_eq!(rtsp_status(&unknown), 401, "{unknown}");
    assert_eq!(
        unknown, wrong,
        "an unknown viewer and a wrong password must look the same"
    );
    assert_eq!(v.camera_clients(), 0);

    // Not allowed: 403 on another camera and another site, no pull.
    let mut alice = RtspClient::connect(v.rtsp, Some(("alice", &password)))?;
    let r = alice.request("DESCRIBE", &v.url("s1/cam2"), &[])?;
    assert_eq!(rtsp_status(&r), 403, "{r}");
    let r = alice.request("DESCRIBE", &v.url("lyon/cam1"), &[])?;
    assert_eq!(rtsp_status(&r), 403, "{r}");
    assert_eq!(v.camera_clients(), 0);

    // With credentials: ffprobe and GStreamer decode.
    let url = format!("rtsp://alice:{password}@127.0.0.1:{}/s1/cam1", v.rtsp);
    let (frames, err) = ffprobe_frames(&url, 10)?;
    assert!(
        frames >= 200,
        "ffprobe with credentials decoded {frames} frames: {err}"
    );
    assert!(
        gst_decodes_200(&url)?,
        "GStreamer with credentials did not decode 200 frames"
    );
    let log = v.host.control.log();
    assert!(
        !log.contains(&password),
        "a viewer password reached the log"
    );
    Ok(())
}

#[test]
fn stream_tokens_open_one_camera_until_they_expire() -> Result<()> {
    let v = secure_video()?;
    // Any table (even empty) must have reached the data plane.
    wait_table(&v, 0)?;
    let base = format!("rtsp://127.0.0.1:{}", v.rtsp);
    let out = viewer_cmd(
        &v,
        &["token", "--allow", "s1/cam1", "--ttl", "5m", "--url", &base],
    )?;
    let url = last_line(&out);
    assert!(
        url.starts_with("rtsp://tok_") && url.ends_with("/s1/cam1"),
        "{out}"
    );
    let (frames, err) = ffprobe_frames(&url, 3)?;
    assert!(frames >= 50, "token URL decoded {frames} frames: {err}");
    // Another camera with the same token: 403.
    let other = url.replace("/s1/cam1", "/s1/cam2");
    let (frames, err) = ffprobe_frames(&other, 2)?;
    assert_eq!(frames, 0);
    assert!(err.contains("403"), "{err}");
    // Tampered: one character of the password changed.
    let at = url.find('@').context("no @")?;
    let mut t = url.clone().into_bytes();
    t[at - 1] = if t[at - 1] == b'A' { b'B' } else { b'A' };
    let (frames, err) = ffprobe_frames(&String::from_utf8(t)?, 2)?;
    assert_eq!(frames, 0);
    assert!(err.contains("401"), "{err}");
    // Expired: a 1 s token, tried after 2 s.
    let out = viewer_cmd(
        &v,
        &["token", "--allow", "s1/*", "--ttl", "1s", "--url", &base],
    )?;
    let site_url = format!("{}cam1", last_line(&out));
    std::thread::sleep(Duration::from_millis(2200));
    let (frames, err) = ffprobe_frames(&site_url, 2)?;
    assert_eq!(frames, 0);
    assert!(err.contains("401"), "{err}");
    Ok(())
}

#[test]
fn removing_a_viewer_or_its_permission_ends_its_session() -> Result<()> {
    let v = secure_video()?;
    let pw = last_line(&viewer_cmd(&v, &["add", "bob", "--allow", "s1/*"])?);
    let pw2 = last_line(&viewer_cmd(&v, &["add", "carol", "--allow", "s1/cam1"])?);
    wait_table(&v, 2)?;
    let mut bob = RtspClient::connect(v.rtsp, Some(("bob", &pw)))?;
    assert_eq!(bob.play(&v.url("s1/cam1"))?, 200);
    let mut carol = RtspClient::connect(v.rtsp, Some(("carol", &pw2)))?;
    assert_eq!(carol.play(&v.url("s1/cam1"))?, 200);
    // Both receive media.
    let mut buf = vec![0u8; 64 * 1024];
    for c in [&mut bob, &mut carol] {
        c.conn.read_exact(&mut buf[..4096])?;
    }
    // Carol loses her permission for cam1, bob is removed.
    viewer_cmd(&v, &["add", "carol", "--allow", "s1/cam2", "--update"])?;
    viewer_cmd(&v, &["remove", "bob"])?;
    let start = Instant::now();
    for (name, c) in [("bob", &mut bob), ("carol", &mut carol)] {
        c.conn.set_read_timeout(Some(Duration::from_millis(500)))?;
        loop {
            match c.conn.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
            assert!(
                start.elapsed() < Duration::from_secs(8),
                "{name}'s session still runs 8 s after the change"
            );
        }
    }
    eprintln!("sessions ended {:?} after the change", start.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------
// The RTSP port under abuse (issue 10, item 5).

/// A TCP connection from `src` (a loopback address) to the host's port.
fn connect_from(src: &str, port: u16, rcvbuf: Option<usize>) -> Result<std::net::TcpStream> {
    revtun_tests::connect_from_with(src.parse()?, ([127, 0, 0, 1], port).into(), rcvbuf)
}

#[test]
fn idle_and_dribbling_rtsp_floods_leave_viewers_and_sites_served_at_1024_descriptors() -> Result<()>
{
    // Control and the data plane get 1,024 descriptors, hard: raising the
    // soft limit cannot help; only the caps and the reserve do.
    let v = Video::start_limited(Some(1024), 25, &[], &[], &["cam1"], |port| {
        format!("rtsp://127.0.0.1:{port}/test")
    })?;
    let pw = last_line(&viewer_cmd(&v, &["add", "watch", "--allow", "s1/cam1"])?);
    wait_table(&v, 1)?;
    // The flood, from 127.0.0.2: 2,000 connections that send nothing and
    // 200 that dribble a request one byte at a time (bounded: 15 s).
    let port = v.rtsp;
    let flood = std::thread::spawn(move || -> (usize, usize) {
        let mut idle = Vec::new();
        let began = Instant::now();
        for _ in 0..2_000 {
            if began.elapsed() > Duration::from_secs(8) {
                break;
            }
            if let Ok(c) = connect_from("127.0.0.2", port, None) {
                idle.push(c);
            }
        }
        let mut dribble: Vec<std::net::TcpStream> = (0..200)
            .take_while(|_| began.elapsed() < Duration::from_secs(10))
            .filter_map(|_| connect_from("127.0.0.2", port, None).ok())
            .collect();
        let (opened_idle, opened_dribble) = (idle.len(), dribble.len());
        let req = format!("OPTIONS rtsp://127.0.0.1:{port}/s1/cam1 RTSP/1.0\r\nCSeq: 1\r\n\r\n");
        let end = Instant::now() + Duration::from_secs(15);
        let mut at = 0;
        while Instant::now() < end && at < req.len() {
            for c in &mut dribble {
                let _ = c.write(&req.as_bytes()[at..at + 1]);
            }
            at = (at + 1) % (req.len() - 4);
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(idle);
        (opened_idle, opened_dribble)
    });
    std::thread::sleep(Duration::from_secs(3));
    // A real viewer from 127.0.0.1 decodes meanwhile.
    let url = format!("rtsp://watch:{pw}@127.0.0.1:{}/s1/cam1", v.rtsp);
    let (frames, err) = ffprobe_frames(&url, 5)?;
    assert!(
        frames >= 100,
        "the viewer decoded {frames} frames during the flood: {err}"
    );
    // And a new site enrolls and gets its tunnel (its hand-off needs a
    // descriptor in the data plane).
    let dir = v.host.enroll("s2")?;
    let s2 = Proc::spawn(Command::new(bin("revtun-site")).args([
        "run",
        "--state-dir",
        &dir.to_string_lossy(),
        "--service=x=127.0.0.1:9",
    ]))?;
    s2.wait_stdout("tunnel up", Duration::from_secs(15))?;
    let (idle, dribble) = flood.join().map_err(|_| anyhow::anyhow!("flood thread"))?;
    eprintln!("flood: {idle} idle and {dribble} dribbling connections opened");
    let log = v.host.control.log();
    assert!(log.contains("rtsp session limits total=384"), "{log}");
    assert!(!log.contains("MSG_CTRUNC"), "a hand-off lost its socket");
    assert!(
        !log.contains("Too many open files"),
        "the data plane ran out of descriptors"
    );
    Ok(())
}

#[test]
fn a_viewer_that_pipelines_requests_and_never_reads_is_cut_with_bounded_memory() -> Result<()> {
    let v = Video::start_with(25, &["--viewer-stuck", "2s"], &["cam1"])?;
    let pid = v.host.dataplane_pid().context("data plane pid")?;
    // A healthy viewer first, so the feed is open and warm.
    let healthy = play_raw(v.rtsp, &v.url("s1/cam1"))?;
    std::thread::sleep(Duration::from_secs(1));
    let before = revtun_tests::rss_kib(pid);
    let mut bad = RtspClient::over(connect_from("127.0.0.1", v.rtsp, Some(4096))?, None)?;
    assert_eq!(bad.play(&v.url("s1/cam1"))?, 200);
    bad.conn.set_nonblocking(true)?;
    let req = format!(
        "GET_PARAMETER {} RTSP/1.0\r\nCSeq: 9\r\n\r\n",
        v.url("s1/cam1")
    );
    let start = Instant::now();
    let (mut sent, mut peak) = (0usize, 0u64);
    let cut = loop {
        match bad.conn.write(req.as_bytes()) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => break true,
        }
        peak = peak.max(revtun_tests::rss_kib(pid));
        if start.elapsed() > Duration::from_secs(20) {
            break false;
        }
    };
    let grew = peak.saturating_sub(before);
    eprintln!(
        "pipelined {sent} request bytes; cut after {:?}; data plane grew {grew} KiB",
        start.elapsed()
    );
    assert!(cut, "a viewer that never reads was not cut in 20 s");
    assert!(grew < 32 * 1024, "the data plane grew {grew} KiB");
    // The healthy viewer never noticed: past its backlog, the live
    // stream (about 150 kbit/s) still flows.
    let mut healthy = healthy;
    let backlog = drain_for(&mut healthy, 1)?;
    let live = drain_for(&mut healthy, 2)?;
    assert!(
        backlog > 0 && live > 20_000,
        "the healthy viewer got {backlog} then {live} bytes"
    );
    Ok(())
}

/// Two UDP sockets on loopback (RTP, RTCP) with short read timeouts.
fn udp_pair() -> Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let rtcp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    for s in [&rtp, &rtcp] {
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
    }
    Ok((rtp, rtcp))
}

/// A header's value in an RTSP reply.
fn header<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    reply.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `key=value` from a `;`-separated header value.
fn param<'a>(value: &'a str, key: &str) -> Option<&'a str> {
    value
        .split([';', ','])
        .find_map(|p| p.trim().strip_prefix(key)?.strip_prefix('='))
}

/// DESCRIBE, SETUP with `transport`, PLAY of `url`: the SETUP and PLAY
/// replies (each must be 200).
fn setup_and_play(c: &mut RtspClient, url: &str, transport: &str) -> Result<(String, String)> {
    let d = c.request("DESCRIBE", url, &["Accept: application/sdp"])?;
    anyhow::ensure!(rtsp_status(&d) == 200, "{d}");
    let track = format!("{url}/trackID=0");
    let setup = c.request("SETUP", &track, &[&format!("Transport: {transport}")])?;
    anyhow::ensure!(rtsp_status(&setup) == 200, "{setup}");
    let session = header(&setup, "Session").context("no Session")?;
    let id = session.split(';').next().unwrap_or("").to_string();
    let play = c.request(
        "PLAY",
        url,
        &[&format!("Session: {id}"), "Range: npt=0.000-"],
    )?;
    anyhow::ensure!(rtsp_status(&play) == 200, "{play}");
    Ok((setup, play))
}

/// ffprobe and GStreamer with their default or UDP transports get RTP
/// over UDP and decode; the host's metrics count a UDP viewer.
#[test]
fn players_get_rtp_over_udp_with_their_default_transport_order() -> Result<()> {
    use revtun_tests::video::ffprobe_frames_via;
    let v = Video::start_with(25, &["--metrics-listen", "127.0.0.1:0"], &["cam1"])?;
    let metrics = v.host.metrics_addr()?;
    let url = v.url("s1/cam1");
    let probe = {
        let url = url.clone();
        std::thread::spawn(move || ffprobe_frames_via(&url, 10, None))
    };
    // While it plays, the metrics show it as a UDP viewer.
    let start = Instant::now();
    let mut seen = 0;
    while start.elapsed() < Duration::from_secs(9) && seen == 0 {
        seen = metric_sum(
            &http_get(&metrics, "/metrics")?,
            "revtun_video_udp_viewers",
            &[],
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (frames, err) = probe
        .join()
        .map_err(|_| anyhow::anyhow!("ffprobe thread"))??;
    assert!(seen >= 1, "no UDP viewer in the metrics");
    assert!(frames >= 200, "default transport: {frames} frames; {err}");
    let m = http_get(&metrics, "/metrics")?;
    assert!(
        metric_sum(&m, "revtun_video_udp_packets_total", &[]) >= 200,
        "{m}"
    );
    let (frames, err) = ffprobe_frames_via(&url, 6, Some("udp"))?;
    assert!(frames >= 100, "-rtsp_transport udp: {frames} frames; {err}");
    assert!(
        gst_decodes_200_over(&url, "udp")?,
        "GStreamer protocols=udp"
    );
    Ok(())
}

/// A raw UDP viewer: the first transport it lists that the host offers is
/// taken; RTP comes to the address of its RTSP connection only (never to
/// a `destination=` it names), in datagrams that fit the MTU, with the
/// SSRC of the SETUP reply; the first packet is the one `RTP-Info` names;
/// sender reports reach its RTCP port.
#[test]
fn a_udp_viewer_gets_rtp_where_it_connected_from_as_rtp_info_says() -> Result<()> {
    let v = Video::start(25)?;
    let url = v.url("s1/cam1");
    let (rtp, rtcp) = udp_pair()?;
    let (a, b) = (rtp.local_addr()?.port(), rtcp.local_addr()?.port());
    // A third party at the address the client names, on the same port.
    let elsewhere = std::net::UdpSocket::bind(("127.0.0.9", a))?;
    elsewhere.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut c = RtspClient::connect(v.rtsp, None)?;
    let (setup, play) = setup_and_play(
        &mut c,
        &url,
        &format!(
            "RTP/AVP;unicast;destination=127.0.0.9;client_port={a}-{b},RTP/AVP/TCP;unicast;interleaved=0-1"
        ),
    )?;
    let t = header(&setup, "Transport").context("no Transport")?;
    assert!(t.starts_with("RTP/AVP;unicast;"), "{t}");
    assert!(
        !t.contains("destination") && param(t, "server_port").is_some(),
        "{t}"
    );
    let ssrc = u32::from_str_radix(param(t, "ssrc").context("no ssrc")?, 16)?;
    assert!(
        header(&setup, "Session").is_some_and(|s| s.contains(";timeout=")),
        "{setup}"
    );
    let info = header(&play, "RTP-Info").context("no RTP-Info")?;
    assert_eq!(header(&play, "Range"), Some("npt=now-"), "{play}");
    let seq: u16 = param(info, "seq").context("no seq")?.parse()?;
    let rtptime: u32 = param(info, "rtptime").context("no rtptime")?.parse()?;
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first = None;
    let mut packets = 0;
    let mut last_seq = None;
    while Instant::now() < deadline && packets < 300 {
        let Ok(n) = rtp.recv(&mut buf) else { continue };
        let h = revtun_proto::rtp::parse(&buf[..n]).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(n <= 1400 + 12, "a datagram of {n} bytes");
        assert_eq!(h.ssrc, ssrc);
        if first.is_none() {
            first = Some((h.seq, h.timestamp));
        }
        // Sequence numbers count up without gaps on loopback.
        if let Some(p) = last_seq {
            assert_eq!(h.seq, u16::wrapping_add(p, 1));
        }
        last_seq = Some(h.seq);
        packets += 1;
    }
    assert_eq!(first, Some((seq, rtptime)), "RTP-Info: {info}");
    assert!(packets >= 100, "{packets} packets");
    // A sender report within its interval (5 s), then the third party
    // got nothing.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut sr = None;
    while Instant::now() < deadline && sr.is_none() {
        if let Ok(n) = rtcp.recv(&mut buf) {
            sr = revtun_proto::rtcp::parse(&buf[..n]).and_then(|c| c.senders.first().copied());
        }
        let _ = rtp.recv(&mut buf);
    }
    let sr = sr.context("no sender report")?;
    assert_eq!(sr.ssrc, ssrc);
    assert!(sr.packets > 0 && sr.ntp >> 32 > revtun_proto::rtcp::NTP_UNIX_OFFSET);
    assert!(
        elsewhere.recv(&mut buf).is_err(),
        "RTP went to the named destination"
    );
    // Without UDP on offer, the same list gets TCP.
    Ok(())
}

/// With `--tcp-only-viewers` a UDP-then-TCP list is answered with TCP;
/// a TCP viewer gets `RTP-Info` naming its first packet and sender
/// reports on its RTCP channel.
#[test]
fn tcp_viewers_get_rtp_info_and_sender_reports_on_their_rtcp_channel() -> Result<()> {
    let v = Video::start_with(25, &["--tcp-only-viewers"], &["cam1"])?;
    let url = v.url("s1/cam1");
    let mut c = RtspClient::connect(v.rtsp, None)?;
    let (setup, play) = setup_and_play(
        &mut c,
        &url,
        "RTP/AVP;unicast;client_port=5000-5001,RTP/AVP/TCP;unicast;interleaved=2-3",
    )?;
    let t = header(&setup, "Transport").context("no Transport")?;
    assert!(t.starts_with("RTP/AVP/TCP;unicast;interleaved=2-3"), "{t}");
    let info = header(&play, "RTP-Info").context("no RTP-Info")?;
    let seq: u16 = param(info, "seq").context("no seq")?.parse()?;
    let rtptime: u32 = param(info, "rtptime").context("no rtptime")?.parse()?;
    let mut first = None;
    let mut sr = None;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(9);
    while Instant::now() < deadline && sr.is_none() {
        let n = c.conn.read(&mut buf)?;
        anyhow::ensure!(n > 0, "the viewer's connection closed");
        got.extend_from_slice(&buf[..n]);
        while let Ok(Some((ch, range, used))) = revtun_proto::rtp::interleaved(&got) {
            let pkt = got[range].to_vec();
            got.drain(..used);
            match ch {
                2 if first.is_none() => {
                    let h = revtun_proto::rtp::parse(&pkt).map_err(|e| anyhow::anyhow!("{e}"))?;
                    first = Some((h.seq, h.timestamp, h.ssrc));
                }
                3 => sr = revtun_proto::rtcp::parse(&pkt).and_then(|c| c.senders.first().copied()),
                _ => {}
            }
        }
    }
    let (s, ts, ssrc) = first.context("no RTP")?;
    assert_eq!((s, ts), (seq, rtptime), "RTP-Info: {info}");
    let sr = sr.context("no sender report on channel 3")?;
    assert_eq!(sr.ssrc, ssrc, "the report is the camera stream's");
    // A SETUP offering only UDP: 461.
    let mut c = RtspClient::connect(v.rtsp, None)?;
    let d = c.request("DESCRIBE", &url, &[])?;
    assert_eq!(rtsp_status(&d), 200);
    let r = c.request(
        "SETUP",
        &format!("{url}/trackID=0"),
        &["Transport: RTP/AVP;unicast;client_port=5000-5001"],
    )?;
    assert_eq!(rtsp_status(&r), 461, "{r}");
    Ok(())
}

/// A UDP viewer that sends neither RTSP requests nor receiver reports is
/// dropped after `--rtp-timeout`; one with a tiny receive buffer loses
/// packets while another viewer of the same camera keeps every one.
#[test]
fn silent_udp_viewers_are_dropped_and_a_slow_one_costs_another_nothing() -> Result<()> {
    let v = Video::start_with(25, &["--rtp-timeout", "2s"], &["cam1"])?;
    let url = v.url("s1/cam1");
    // The good viewer keeps itself alive with GET_PARAMETER.
    let (good, good_rtcp) = udp_pair()?;
    let mut gc = RtspClient::connect(v.rtsp, None)?;
    let ports = |s: &std::net::UdpSocket, r: &std::net::UdpSocket| -> Result<String> {
        Ok(format!(
            "RTP/AVP;unicast;client_port={}-{}",
            s.local_addr()?.port(),
            r.local_addr()?.port()
        ))
    };
    let (setup, _) = setup_and_play(&mut gc, &url, &ports(&good, &good_rtcp)?)?;
    let session = header(&setup, "Session")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    // The slow one: a tiny buffer, not read for a while (kept alive).
    let slow = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    slow.set_recv_buffer_size(1024)?;
    slow.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let slow: std::net::UdpSocket = slow.into();
    slow.set_read_timeout(Some(Duration::from_millis(300)))?;
    let slow_rtcp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut sc = RtspClient::connect(v.rtsp, None)?;
    let (setup, _) = setup_and_play(&mut sc, &url, &ports(&slow, &slow_rtcp)?)?;
    let slow_session = header(&setup, "Session")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    // The silent one: no requests, no reports.
    let (quiet, quiet_rtcp) = udp_pair()?;
    let mut qc = RtspClient::connect(v.rtsp, None)?;
    setup_and_play(&mut qc, &url, &ports(&quiet, &quiet_rtcp)?)?;
    let mut buf = [0u8; 2048];
    let mut last = None;
    let mut good_packets = 0;
    let start = Instant::now();
    let mut asked = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        if asked.elapsed() > Duration::from_secs(1) {
            for (c, id) in [(&mut gc, &session), (&mut sc, &slow_session)] {
                let r = c.request("GET_PARAMETER", &url, &[&format!("Session: {id}")])?;
                assert_eq!(rtsp_status(&r), 200);
            }
            asked = Instant::now();
        }
        let Ok(n) = good.recv(&mut buf) else { continue };
        let h = revtun_proto::rtp::parse(&buf[..n]).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(p) = last {
            assert_eq!(
                h.seq,
                u16::wrapping_add(p, 1),
                "the good viewer lost a packet"
            );
        }
        last = Some(h.seq);
        good_packets += 1;
    }
    assert!(good_packets >= 100, "{good_packets}");
    // The slow viewer's kernel buffer overflowed: what it held, then a
    // jump to the packets sent now.
    let mut seqs = Vec::new();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Ok(n) = slow.recv(&mut buf) {
            if let Ok(h) = revtun_proto::rtp::parse(&buf[..n]) {
                seqs.push(h.seq);
            }
        }
    }
    let gaps = seqs
        .windows(2)
        .filter(|w| w[1] != w[0].wrapping_add(1))
        .count();
    assert!(
        seqs.len() > 2 && gaps > 0,
        "the slow viewer lost nothing: {seqs:?}"
    );
    // Silent for over 2 s: the host closed its RTSP connection and sends
    // it nothing more.
    qc.conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let n = qc.conn.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the silent viewer was not dropped");
    while quiet.recv(&mut buf).is_ok() {}
    assert!(quiet.recv(&mut buf).is_err(), "packets after the drop");
    Ok(())
}

/// UDP viewers pass the same gate as TCP ones: no credentials, 401 and
/// nothing sent; with them, ffprobe decodes over UDP.
#[test]
fn udp_viewers_need_credentials_like_tcp_ones() -> Result<()> {
    use revtun_tests::video::ffprobe_frames_via;
    let v = secure_video()?;
    let out = viewer_cmd(&v, &["add", "udpv", "--allow", "s1/cam1"])?;
    let password = last_line(&out);
    wait_table(&v, 1)?;
    let url = v.url("s1/cam1");
    let (rtp, rtcp) = udp_pair()?;
    let mut c = RtspClient::connect(v.rtsp, None)?;
    let r = c.request(
        "SETUP",
        &format!("{url}/trackID=0"),
        &[&format!(
            "Transport: RTP/AVP;unicast;client_port={}-{}",
            rtp.local_addr()?.port(),
            rtcp.local_addr()?.port()
        )],
    )?;
    assert_eq!(rtsp_status(&r), 401, "{r}");
    let mut buf = [0u8; 2048];
    assert!(rtp.recv(&mut buf).is_err());
    let authed = format!("rtsp://udpv:{password}@127.0.0.1:{}/s1/cam1", v.rtsp);
    let (frames, err) = ffprobe_frames_via(&authed, 4, Some("udp"))?;
    assert!(frames >= 50, "{frames}: {err}");
    let (frames, _) = ffprobe_frames_via(&v.url("s1/cam2"), 2, Some("udp"))?;
    assert_eq!(frames, 0);
    Ok(())
}

/// Multicast, inside a network namespace this test makes (its loopback
/// carries multicast): ffprobe decodes from the group; two raw members of
/// one camera share one group, and the host sends each packet once for
/// both; the group is released when the last member leaves.
#[test]
fn multicast_viewers_share_one_group_and_one_send() -> Result<()> {
    use revtun_tests::video::ffprobe_frames_via;
    let _ns = revtun_tests::Netns::enter_new()?;
    let v = Video::start_with(
        25,
        &[
            "--shards",
            "1",
            "--multicast-range",
            "239.255.7.0/29",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &["cam1"],
    )?;
    let metrics = v.host.metrics_addr()?;
    let url = v.url("s1/cam1");
    let (frames, err) = ffprobe_frames_via(&url, 4, Some("udp_multicast"))?;
    assert!(
        frames >= 50,
        "ffprobe over multicast: {frames} frames; {err}"
    );
    // Two members.
    let mut members = Vec::new();
    let mut group = None;
    for _ in 0..2 {
        let mut c = RtspClient::connect(v.rtsp, None)?;
        let (setup, _) = setup_and_play(&mut c, &url, "RTP/AVP;multicast")?;
        let t = header(&setup, "Transport")
            .context("no Transport")?
            .to_string();
        assert!(t.starts_with("RTP/AVP;multicast;"), "{t}");
        let dest: std::net::Ipv4Addr = param(&t, "destination")
            .context("no destination")?
            .parse()?;
        let port: u16 = param(&t, "port")
            .context("no port")?
            .split('-')
            .next()
            .unwrap_or("")
            .parse()?;
        assert!(dest.octets()[..3] == [239, 255, 7], "{t}");
        if let Some(g) = group {
            assert_eq!(g, (dest, port), "the second member got another group");
        }
        group = Some((dest, port));
        members.push(c);
    }
    let (dest, port) = group.context("no group")?;
    let rx = std::net::UdpSocket::bind((dest, port))?;
    rx.join_multicast_v4(&dest, &std::net::Ipv4Addr::LOCALHOST)?;
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    let sent = |m: &str| metric_sum(m, "revtun_video_multicast_packets_total", &[]);
    // Counted over the same span: what the group carried, what the host sent.
    std::thread::sleep(Duration::from_millis(1500));
    let before = sent(&http_get(&metrics, "/metrics")?);
    let mut buf = [0u8; 2048];
    let (mut got, start) = (0u64, Instant::now());
    while start.elapsed() < Duration::from_secs(4) {
        if rx.recv(&mut buf).is_ok() {
            got += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let m = http_get(&metrics, "/metrics")?;
    let delta = sent(&m) - before;
    assert_eq!(
        metric_sum(&m, "revtun_video_multicast_members", &[]),
        2,
        "{m}"
    );
    assert!(got >= 50, "{got} packets on the group");
    // One send per packet for both members: the host's count is about
    // what one receiver saw (the windows differ by up to a second of
    // posting), far from twice.
    assert!(
        delta as f64 <= got as f64 * 1.6 && delta as f64 >= got as f64 * 0.5,
        "host sent {delta} packets while one member received {got}"
    );
    drop(members);
    v.host
        .control
        .wait_log("multicast group closed", Duration::from_secs(10))?;
    Ok(())
}

/// The tracks ffprobe reads from `url` for 4 s over `transport`: its
/// output (`codec_type,codec_name,frames` lines) and the frames of the
/// video and audio tracks.
fn probe_tracks(url: &str, transport: &str) -> Result<(String, u64, u64)> {
    let o = run(
        Command::new("ffprobe").args([
            "-v",
            "error",
            "-rtsp_transport",
            transport,
            "-count_frames",
            "-read_intervals",
            "%+4",
            "-show_entries",
            "stream=codec_type,codec_name,nb_read_frames",
            "-of",
            "csv=p=0",
            url,
        ]),
        Duration::from_secs(40),
    )?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let frames = |kind: &str| -> u64 {
        out.lines()
            .find(|l| l.contains(kind))
            .and_then(|l| l.rsplit(',').next()?.trim().parse().ok())
            .unwrap_or(0)
    };
    let (video, audio) = (frames("video"), frames("audio"));
    Ok((format!("{out} {}", stderr(&o)), video, audio))
}

/// ffprobe reads H.264 and `audio` from `cam1`, at least 50 frames of
/// each, over TCP and over UDP.
fn both_tracks_decode_over_tcp_and_udp(v: &Video, audio: &str) -> Result<()> {
    for transport in ["tcp", "udp"] {
        let (out, v_frames, a_frames) = probe_tracks(&v.url("s1/cam1"), transport)?;
        assert!(
            out.contains("h264") && out.contains(audio),
            "{transport}: {out}"
        );
        assert!(v_frames >= 50, "{transport}: video {v_frames}: {out}");
        assert!(a_frames >= 50, "{transport}: audio {a_frames}: {out}");
    }
    Ok(())
}

/// A camera that streams only over UDP (GStreamer's RTSP server set to
/// UDP, as many encoders are: RTP over TCP gets 461) is pulled by the
/// site over UDP on its network, video and audio, and both decode at the
/// host.
#[test]
fn a_camera_that_only_streams_over_udp_is_pulled_over_udp() -> Result<()> {
    let v = Video::start_cam(25, &["--udp-only", "--audio", "opus"], |port| {
        format!("rtsp://127.0.0.1:{port}/test")
    })?;
    let (frames, err) = ffprobe_frames(&v.url("s1/cam1"), 6)?;
    assert!(frames >= 100, "{frames} frames through a UDP camera: {err}");
    v.agent
        .wait_log("pulling it over UDP", Duration::from_secs(5))?;
    let (out, video, audio) = probe_tracks(&v.url("s1/cam1"), "tcp")?;
    assert!(out.contains("h264") && out.contains("opus"), "{out}");
    assert!(
        video >= 50 && audio >= 50,
        "video {video}, audio {audio}: {out}"
    );
    v.agent
        .wait_log("relaying the camera's audio", Duration::from_secs(5))?;
    Ok(())
}

/// VLC's own RTSP server, which streams only over UDP, as the camera:
/// the site pulls its H.264 and AAC over UDP and a viewer at the host
/// decodes both, over TCP and over UDP.
#[test]
fn vlc_as_the_camera_is_pulled_over_udp_with_its_audio() -> Result<()> {
    let v = Video::start_vlc()?;
    both_tracks_decode_over_tcp_and_udp(&v, "aac")?;
    v.agent
        .wait_log("pulling it over UDP", Duration::from_secs(5))?;
    Ok(())
}

/// A camera with H.264 and AAC: a viewer gets both tracks and decodes
/// both, over TCP and over UDP.
#[test]
fn a_camera_with_video_and_audio_gives_viewers_both_tracks() -> Result<()> {
    let v = Video::start_cam(25, &["--audio", "aac"], |port| {
        format!("rtsp://127.0.0.1:{port}/test")
    })?;
    both_tracks_decode_over_tcp_and_udp(&v, "aac")?;
    v.agent
        .wait_log("relaying the camera's audio", Duration::from_secs(5))?;
    Ok(())
}

/// Multicast members pass the same gate as every viewer: no credentials,
/// 401; a camera not allowed, 403; allowed, the group; and removing the
/// viewer ends its membership (its session closes and, as the last
/// member, the group with it).
#[test]
fn multicast_members_need_credentials_and_lose_the_group_with_their_permission() -> Result<()> {
    let _ns = revtun_tests::Netns::enter_new()?;
    let v = Video::start_full(
        25,
        &["--shards", "1", "--multicast-range", "239.255.9.0/29"],
        &[],
        &["cam1", "cam2"],
        |port| format!("rtsp://127.0.0.1:{port}/test"),
    )?;
    let out = viewer_cmd(&v, &["add", "mcv", "--allow", "s1/cam1"])?;
    let password = last_line(&out);
    // One shard here.
    v.host
        .control
        .wait_log("viewer table updated viewers=1", Duration::from_secs(10))?;
    let setup = |c: &mut RtspClient, cam: &str| -> Result<String> {
        let url = v.url(&format!("s1/{cam}"));
        let d = c.request("DESCRIBE", &url, &[])?;
        if rtsp_status(&d) != 200 {
            return Ok(d);
        }
        c.request(
            "SETUP",
            &format!("{url}/track0"),
            &["Transport: RTP/AVP;multicast"],
        )
    };
    let mut anon = RtspClient::connect(v.rtsp, None)?;
    assert_eq!(rtsp_status(&setup(&mut anon, "cam1")?), 401);
    let mut other = RtspClient::connect(v.rtsp, Some(("mcv", &password)))?;
    assert_eq!(rtsp_status(&setup(&mut other, "cam2")?), 403);
    let mut c = RtspClient::connect(v.rtsp, Some(("mcv", &password)))?;
    let url = v.url("s1/cam1");
    let (reply, _) = setup_and_play(&mut c, &url, "RTP/AVP;multicast")?;
    assert!(
        header(&reply, "Transport").is_some_and(|t| t.contains("multicast")),
        "{reply}"
    );
    viewer_cmd(&v, &["remove", "mcv"])?;
    c.conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        match c.conn.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => anyhow::ensure!(
                start.elapsed() < Duration::from_secs(10),
                "the member was not cut"
            ),
            Err(e) => anyhow::bail!("the member was not cut: {e}"),
        }
    }
    v.host
        .control
        .wait_log("multicast group closed", Duration::from_secs(10))?;
    Ok(())
}

/// DESCRIBE, SETUP of both tracks (`video` and `audio` transports) and
/// PLAY; the SETUP replies' `Transport` headers.
fn setup_both_and_play(
    c: &mut RtspClient,
    url: &str,
    video: &str,
    audio: &str,
) -> Result<(String, String)> {
    let d = c.request("DESCRIBE", url, &["Accept: application/sdp"])?;
    anyhow::ensure!(rtsp_status(&d) == 200 && d.contains("track1"), "{d}");
    let v = c.request(
        "SETUP",
        &format!("{url}/track0"),
        &[&format!("Transport: {video}")],
    )?;
    anyhow::ensure!(rtsp_status(&v) == 200, "{v}");
    let session = header(&v, "Session").context("no Session")?;
    let id = session.split(';').next().unwrap_or("").to_string();
    let a = c.request(
        "SETUP",
        &format!("{url}/track1"),
        &[&format!("Transport: {audio}"), &format!("Session: {id}")],
    )?;
    anyhow::ensure!(rtsp_status(&a) == 200, "{a}");
    let play = c.request("PLAY", url, &[&format!("Session: {id}")])?;
    anyhow::ensure!(rtsp_status(&play) == 200, "{play}");
    let info = header(&play, "RTP-Info").context("no RTP-Info")?;
    anyhow::ensure!(
        info.contains("/track0") && info.contains(",url=") && info.contains("/track1"),
        "{info}"
    );
    let t = |r: &str| {
        header(r, "Transport")
            .map(str::to_string)
            .context("no Transport")
    };
    Ok((t(&v)?, t(&a)?))
}

/// The audio track is a track like the video: its own sender reports
/// (with the audio SSRC and clock) over TCP and UDP, its own group ports
/// for multicast members (ffprobe decodes both tracks from the group);
/// and each viewer has its own counters in the metrics.
#[test]
fn audio_gets_sender_reports_and_reaches_multicast_members() -> Result<()> {
    let _ns = revtun_tests::Netns::enter_new()?;
    let v = Video::start_full(
        25,
        &[
            "--allow-anonymous-viewers",
            "--shards",
            "1",
            "--multicast-range",
            "239.255.9.0/29",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &["--audio", "aac"],
        &["cam1"],
        |port| format!("rtsp://127.0.0.1:{port}/test"),
    )?;
    let metrics = v.host.metrics_addr()?;
    let url = v.url("s1/cam1");
    // A UDP viewer of both tracks.
    let (vrtp, vrtcp) = udp_pair()?;
    let (artp, artcp) = udp_pair()?;
    let ports = |a: &std::net::UdpSocket, b: &std::net::UdpSocket| -> Result<String> {
        Ok(format!(
            "{}-{}",
            a.local_addr()?.port(),
            b.local_addr()?.port()
        ))
    };
    let mut udp = RtspClient::connect(v.rtsp, None)?;
    let (_, at) = setup_both_and_play(
        &mut udp,
        &url,
        &format!("RTP/AVP;unicast;client_port={}", ports(&vrtp, &vrtcp)?),
        &format!("RTP/AVP;unicast;client_port={}", ports(&artp, &artcp)?),
    )?;
    let audio_ssrc = u32::from_str_radix(param(&at, "ssrc").context("no ssrc")?, 16)?;
    // A TCP viewer of both tracks.
    let mut tcp = RtspClient::connect(v.rtsp, None)?;
    setup_both_and_play(
        &mut tcp,
        &url,
        "RTP/AVP/TCP;unicast;interleaved=0-1",
        "RTP/AVP/TCP;unicast;interleaved=2-3",
    )?;
    let deadline = Instant::now() + Duration::from_secs(12);
    let (mut udp_sr, mut udp_audio) = (None, 0u32);
    let (mut tcp_sr, mut tcp_audio_ssrc) = (None, None);
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    tcp.conn.set_read_timeout(Some(Duration::from_millis(20)))?;
    for s in [&vrtp, &artp, &artcp] {
        s.set_read_timeout(Some(Duration::from_millis(5)))?;
    }
    while Instant::now() < deadline && (udp_sr.is_none() || tcp_sr.is_none() || udp_audio < 20) {
        while vrtp.recv(&mut buf).is_ok() {}
        while let Ok(n) = artp.recv(&mut buf) {
            let h = revtun_proto::rtp::parse(&buf[..n]).map_err(|e| anyhow::anyhow!("{e}"))?;
            assert_eq!(h.ssrc, audio_ssrc, "audio RTP with the SSRC of its SETUP");
            udp_audio += 1;
        }
        if let Ok(n) = artcp.recv(&mut buf) {
            udp_sr = revtun_proto::rtcp::parse(&buf[..n]).and_then(|c| c.senders.first().copied());
        }
        match tcp.conn.read(&mut buf) {
            Ok(0) => anyhow::bail!("the TCP viewer's connection closed"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        while let Ok(Some((ch, range, used))) = revtun_proto::rtp::interleaved(&got) {
            let pkt = got[range].to_vec();
            got.drain(..used);
            match ch {
                2 => {
                    let h = revtun_proto::rtp::parse(&pkt).map_err(|e| anyhow::anyhow!("{e}"))?;
                    tcp_audio_ssrc = Some(h.ssrc);
                }
                3 => {
                    tcp_sr =
                        revtun_proto::rtcp::parse(&pkt).and_then(|c| c.senders.first().copied())
                }
                _ => {}
            }
        }
    }
    let sr = udp_sr.context("no sender report on the UDP viewer's audio RTCP port")?;
    assert_eq!(sr.ssrc, audio_ssrc);
    assert!(
        udp_audio >= 20 && sr.packets > 0,
        "{udp_audio} audio packets, {sr:?}"
    );
    let sr = tcp_sr.context("no sender report on the TCP viewer's audio RTCP channel")?;
    assert_eq!(
        Some(sr.ssrc),
        tcp_audio_ssrc,
        "the report is the camera's audio stream's"
    );
    // Each viewer's own counters (shards post their metrics once a
    // second).
    let per_viewer = |m: &str, t: &str| {
        let transport = format!("transport=\"{t}\"");
        metric_sum(
            m,
            "revtun_video_viewer_packets_total",
            &[&transport, "viewer=\"anonymous\""],
        )
    };
    let end = Instant::now() + Duration::from_secs(5);
    let mut m = http_get(&metrics, "/metrics")?;
    while Instant::now() < end && (per_viewer(&m, "udp") == 0 || per_viewer(&m, "tcp") == 0) {
        std::thread::sleep(Duration::from_millis(200));
        m = http_get(&metrics, "/metrics")?;
    }
    for t in ["udp", "tcp"] {
        let transport = format!("transport=\"{t}\"");
        let n = metric_sum(
            &m,
            "revtun_video_viewer_packets_total",
            &[&transport, "viewer=\"anonymous\""],
        );
        assert!(n > 0, "{t} viewer: {n} packets in its metrics: {m}");
        let n = metric_sum(&m, "revtun_video_viewer_frames_sent_total", &[&transport]);
        assert!(n > 0, "{t} viewer: {n} frames in its metrics");
    }
    drop((udp, tcp));
    // Multicast members get both tracks from the group (a raw member
    // keeps the group, and its sender's counters, alive throughout).
    let mut member = RtspClient::connect(v.rtsp, None)?;
    setup_both_and_play(&mut member, &url, "RTP/AVP;multicast", "RTP/AVP;multicast")?;
    let (out, video, audio) = probe_tracks(&url, "udp_multicast")?;
    assert!(out.contains("h264") && out.contains("aac"), "{out}");
    assert!(
        video >= 50 && audio >= 50,
        "multicast: video {video}, audio {audio}: {out}"
    );
    let group = |m: &str| {
        metric_sum(
            m,
            "revtun_video_viewer_packets_total",
            &["viewer=\"group\"", "transport=\"multicast\""],
        )
    };
    let end = Instant::now() + Duration::from_secs(5);
    let mut m = http_get(&metrics, "/metrics")?;
    while Instant::now() < end && group(&m) == 0 {
        std::thread::sleep(Duration::from_millis(200));
        m = http_get(&metrics, "/metrics")?;
    }
    assert!(
        group(&m) > 0,
        "the group's sender has its own counters: {m}"
    );
    drop(member);
    Ok(())
}
