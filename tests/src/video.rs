//! Video test helpers shared by the end-to-end tests: the GStreamer test
//! camera (tests/peers/camera.py), ffprobe as a counting viewer, and a
//! bounded reader of a playing raw viewer.

use crate::{run, stderr, Proc};
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The test camera script.
pub fn camera_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/camera.py")
}

/// The test camera on `port` showing `pattern` (`ball`: about 150 kbit/s;
/// `snow`: about 1 Mbit/s) at 25 fps with a keyframe every `keyint`
/// frames, serving.
pub fn start_camera(port: u16, pattern: &str, keyint: u32, extra: &[&str]) -> Result<Proc> {
    let camera = Proc::spawn(
        Command::new("/usr/bin/python3")
            .arg(camera_script())
            .args([&port.to_string(), pattern, &keyint.to_string()])
            .args(extra),
    )?;
    camera
        .wait_stdout("ready", Duration::from_secs(20))
        .context("camera (GStreamer RTSP server) did not start")?;
    Ok(camera)
}

/// VLC's own RTSP server as a camera on `port` (path `/cam`): H.264 and
/// AAC from a clip ffmpeg makes in `dir`, looped. VLC's server streams
/// only RTP over UDP (a TCP SETUP gets 461), as many encoders do. VLC
/// refuses to run as root, so it runs as `nobody` (`setpriv` execs it: the
/// PID killed at the end is VLC's own).
pub fn start_vlc_camera(port: u16, dir: &std::path::Path) -> Result<Proc> {
    let clip = dir.join("clip.mp4");
    let o = run(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240:rate=25",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-t",
                "10",
                "-c:v",
                "libx264",
                "-g",
                "25",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-b:a",
                "64k",
            ])
            .arg(&clip),
        Duration::from_secs(60),
    )?;
    anyhow::ensure!(
        o.status.success(),
        "ffmpeg could not make the clip: {}",
        stderr(&o)
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&clip, std::fs::Permissions::from_mode(0o644))?;
    let mut cmd = if nix_is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "cvlc",
        ]);
        c
    } else {
        Command::new("cvlc")
    };
    let vlc = Proc::spawn(
        cmd.env("HOME", dir)
            .args(["-I", "dummy", "--loop", "--rtsp-host=127.0.0.1"])
            .arg(&clip)
            .arg(format!("--sout=#rtp{{sdp=rtsp://127.0.0.1:{port}/cam}}")),
    )?;
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < end,
            "VLC did not listen on {port}: {}",
            vlc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(vlc)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            Some(line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Frames ffprobe decodes from `url` (RTSP over TCP) in `secs`, and its
/// stderr.
pub fn ffprobe_frames(url: &str, secs: u32) -> Result<(u64, String)> {
    ffprobe_frames_via(url, secs, Some("tcp"))
}

/// As [`ffprobe_frames`] with `-rtsp_transport TRANSPORT` (`udp`, `tcp`),
/// or ffprobe's default order (UDP, then TCP) when `None`.
pub fn ffprobe_frames_via(url: &str, secs: u32, transport: Option<&str>) -> Result<(u64, String)> {
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error"]);
    if let Some(t) = transport {
        cmd.args(["-rtsp_transport", t]);
    }
    let o = run(
        cmd.args([
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

/// Reads a playing viewer for `secs` (its read timeout short enough to
/// see the end); the bytes received.
pub fn drain_for(mut s: impl Read, secs: u64) -> Result<u64> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(total)
}

/// A raw RTSP viewer's DESCRIBE, SETUP (interleaved) and PLAY of `url`
/// over `s` (plain or TLS), each with `header` (e.g. an `Authorization`
/// line) if given; fails unless each is answered 200. Each reply must fit
/// one read (the PLAY reply is read alone before media flows).
pub fn play_over<S: Read + Write>(s: &mut S, url: &str, header: Option<&str>) -> Result<()> {
    let extra = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    let mut reply = vec![0u8; 8192];
    for (i, req) in [
        format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n{extra}\r\n"),
        format!("SETUP {url}/stream=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n{extra}\r\n"),
        format!("PLAY {url} RTSP/1.0\r\nCSeq: 3\r\n{extra}\r\n"),
    ]
    .iter()
    .enumerate()
    {
        s.write_all(req.as_bytes())?;
        let n = s.read(&mut reply)?;
        let text = String::from_utf8_lossy(&reply[..n]).to_string();
        anyhow::ensure!(text.starts_with("RTSP/1.0 200"), "request {i}: {text}");
    }
    Ok(())
}
