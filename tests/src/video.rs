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
