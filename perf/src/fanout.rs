//! `fanout`: one camera stream through the tunnel to N viewers at the host.
//!
//! The camera is synthetic (this process): an RTSP server sending an
//! H.264-shaped RTP stream at 8 Mbit/s, 25 fps, a keyframe every second,
//! with its send time stamped into the first packet of each frame, so no
//! encoder competes for the CPU. Viewers are raw RTSP clients on one
//! threads (epoll), counting frames, sequence gaps (drops) and the latency
//! from the camera's send to the viewer's receive. N steps up until a
//! viewer that keeps up loses frames.

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use revtun_proto::{rtsp, rtsp_auth};
use revtun_tests::{bin, free_port, Host, Proc};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FPS: u64 = 25;
const BITRATE: u64 = 8_000_000;
const PACKET: usize = 1400;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The synthetic camera: serves rtsp://127.0.0.1:PORT/test.
pub fn start_camera() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = camera_session(c);
            });
        }
    });
    Ok(port)
}

fn camera_session(mut c: TcpStream) -> Result<()> {
    c.set_nodelay(true)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let (req, used) = loop {
            if let Some(x) = rtsp::parse_request(&buf).map_err(|e| anyhow::anyhow!("{e}"))? {
                break x;
            }
            let n = c.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..used);
        let cseq = req.cseq().map(str::to_string);
        let reply = match req.method {
            rtsp::Method::Describe => {
                let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=synthetic\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:track0\r\n";
                rtsp::response(
                    200,
                    cseq.as_deref(),
                    &[("Content-Type", "application/sdp")],
                    sdp.as_bytes(),
                )
            }
            rtsp::Method::Setup => rtsp::response(
                200,
                cseq.as_deref(),
                &[
                    ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1"),
                    ("Session", "1"),
                ],
                b"",
            ),
            rtsp::Method::Play => {
                c.write_all(&rtsp::response(
                    200,
                    cseq.as_deref(),
                    &[("Session", "1")],
                    b"",
                ))?;
                return stream(c);
            }
            _ => rtsp::response(200, cseq.as_deref(), &[], b""),
        };
        c.write_all(&reply)?;
    }
}

/// Sends frames forever (until the peer goes away).
fn stream(mut c: TcpStream) -> Result<()> {
    let per_frame = (BITRATE / 8 / FPS) as usize;
    let packets = per_frame.div_ceil(PACKET);
    let start = Instant::now();
    let mut seq: u16 = 0;
    let mut out = Vec::with_capacity(per_frame + packets * 16);
    for frame in 0u64.. {
        let due = start + Duration::from_nanos(frame * 1_000_000_000 / FPS);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let key = frame % FPS == 0;
        let ts = (frame * 90_000 / FPS) as u32;
        out.clear();
        for p in 0..packets {
            let last = p + 1 == packets;
            let mut rtp = vec![0x80, if last { 0x80 | 96 } else { 96 }];
            rtp.extend_from_slice(&seq.to_be_bytes());
            rtp.extend_from_slice(&ts.to_be_bytes());
            rtp.extend_from_slice(&0x5eed_u32.to_be_bytes());
            // FU-A: indicator 28, header with start/end bits and type 5 (IDR) or 1.
            let nal = if key { 5 } else { 1 };
            rtp.push(0x7c);
            rtp.push(nal | if p == 0 { 0x80 } else { 0 } | if last { 0x40 } else { 0 });
            rtp.extend_from_slice(&now_ns().to_be_bytes());
            rtp.resize(PACKET, 0xab);
            seq = seq.wrapping_add(1);
            out.extend_from_slice(&[b'$', 0]);
            out.extend_from_slice(&(rtp.len() as u16).to_be_bytes());
            out.extend_from_slice(&rtp);
        }
        c.write_all(&out)?;
    }
    Ok(())
}

/// How the lab's viewers take the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RTP inside the RTSP connection.
    Tcp,
    /// RTP over UDP unicast.
    Udp,
    /// RTP over UDP multicast (the lab then runs in a network namespace
    /// of its own, whose loopback carries multicast).
    Multicast,
}

impl Transport {
    /// The name in reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Multicast => "multicast",
        }
    }
}

struct Viewer {
    sock: TcpStream,
    /// The RTP socket of a UDP viewer (its RTCP socket beside it).
    udp: Option<(std::net::UdpSocket, std::net::UdpSocket)>,
    /// Fixed receive buffer: bytes `..filled` are unparsed.
    buf: Vec<u8>,
    filled: usize,
    frames: u64,
    drops: u64,
    last_seq: Option<u16>,
}

/// The lab's viewer account: the lab measures with authentication on,
/// as a host runs by default.
#[derive(Debug, Clone)]
pub struct Login {
    /// Viewer name.
    pub user: String,
    /// Its password.
    pub password: String,
}

/// Sends `METHOD url` (with `extra` header lines and the session's
/// `Authorization`, if any) and reads the reply head; returns the status
/// and the bytes after the reply (media after PLAY).
fn rtsp_call(
    s: &mut TcpStream,
    method: &str,
    url: &str,
    extra: &str,
    cseq: u32,
    auth: &mut Option<rtsp_auth::Authenticator>,
) -> Result<(rtsp::Response, Vec<u8>)> {
    let authz = auth
        .as_mut()
        .map(|a| format!("Authorization: {}\r\n", a.authorization(method, url, "1ab")))
        .unwrap_or_default();
    s.write_all(
        format!("{method} {url} RTSP/1.0\r\nCSeq: {cseq}\r\n{extra}{authz}\r\n").as_bytes(),
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some((resp, used)) =
            rtsp::parse_response(&buf).map_err(|e| anyhow::anyhow!("{e}"))?
        {
            buf.drain(..used);
            return Ok((resp, buf));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("closed during RTSP {method}");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Receive buffer asked for each UDP viewer socket (root may exceed
/// `rmem_max`).
const UDP_RCVBUF: usize = 4 << 20;

fn udp_socket() -> Result<std::net::UdpSocket> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    // SO_RCVBUFFORCE when allowed (root), else what rmem_max gives.
    if nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &UDP_RCVBUF)
        .is_err()
    {
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(UDP_RCVBUF);
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A socket receiving multicast group `group` on `port` (shared by every
/// member viewer of the lab: each gets its own copy from the kernel).
fn group_socket(group: std::net::Ipv4Addr, port: u16) -> Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SO_REUSEADDR: every member binds the group's port; each socket
    // gets its own copy of each datagram.
    s.set_reuse_address(true)?;
    s.bind(&std::net::SocketAddr::from((group, port)).into())?;
    let s: std::net::UdpSocket = s.into();
    s.join_multicast_v4(&group, &std::net::Ipv4Addr::LOCALHOST)?;
    if nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &UDP_RCVBUF)
        .is_err()
    {
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(UDP_RCVBUF);
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

fn open_viewer(port: u16, path: &str, login: &Login) -> Result<Viewer> {
    open_viewer_over(port, path, login, Transport::Tcp)
}

fn open_viewer_over(port: u16, path: &str, login: &Login, how: Transport) -> Result<Viewer> {
    let url = format!("rtsp://127.0.0.1:{port}/{path}");
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut auth = None;
    // The first DESCRIBE carries no credentials; its 401 the challenge.
    let (first, _) = rtsp_call(&mut s, "DESCRIBE", &url, "", 1, &mut auth)?;
    if first.status == 401 {
        let challenge = rtsp_auth::choose(
            first
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("WWW-Authenticate"))
                .map(|(_, v)| v.as_str()),
        )
        .context("401 without a usable challenge")?;
        let creds = rtsp_auth::Credentials::new(&login.user, &login.password)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        auth = Some(rtsp_auth::Authenticator::new(creds, challenge));
    }
    let mut udp = match how {
        Transport::Udp => Some((udp_socket()?, udp_socket()?)),
        Transport::Tcp | Transport::Multicast => None,
    };
    let transport = match (&udp, how) {
        (Some((rtp, rtcp)), _) => format!(
            "Transport: RTP/AVP;unicast;client_port={}-{}\r\n",
            rtp.local_addr()?.port(),
            rtcp.local_addr()?.port()
        ),
        (None, Transport::Multicast) => "Transport: RTP/AVP;multicast\r\n".to_string(),
        (None, _) => "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n".to_string(),
    };
    let calls = [
        ("DESCRIBE", url.clone(), String::new()),
        ("SETUP", format!("{url}/track0"), transport),
        ("PLAY", url.clone(), String::new()),
    ];
    let mut buf = Vec::new();
    for (i, (m, u, extra)) in calls.iter().enumerate() {
        if i == 0 && first.status == 200 {
            continue;
        }
        let (resp, rest) = rtsp_call(&mut s, m, u, extra, 2 + i as u32, &mut auth)?;
        if resp.status != 200 {
            bail!("{m} answered {}", resp.status);
        }
        if *m == "SETUP" && how == Transport::Multicast {
            let t = resp.header("Transport").context("no Transport")?;
            let value = |k: &str| {
                t.split(';')
                    .find_map(|p| p.trim().strip_prefix(k)?.strip_prefix('='))
                    .map(str::to_string)
            };
            let group: std::net::Ipv4Addr =
                value("destination").context("no destination")?.parse()?;
            let port: u16 = value("port")
                .context("no port")?
                .split('-')
                .next()
                .unwrap_or("")
                .parse()?;
            udp = Some((group_socket(group, port)?, udp_socket()?));
        }
        // PLAY's reply may be followed at once by cached frames.
        buf = rest;
    }
    s.set_nonblocking(true)?;
    let filled = buf.len();
    buf.resize(VIEWER_BUF.max(filled), 0);
    Ok(Viewer {
        sock: s,
        udp,
        buf,
        filled,
        frames: 0,
        drops: 0,
        last_seq: None,
    })
}

/// Receive buffer per viewer (RTP packets are far smaller).
const VIEWER_BUF: usize = 128 * 1024;

/// Reads everything available straight into the viewer's buffer and
/// parses as it goes (no copy in the load generator beyond moving a
/// partial packet to the front); records frames, drops and latencies.
fn drain(v: &mut Viewer, lat: &mut Histogram<u64>, record: bool) -> Result<bool> {
    if let Some((rtp, _)) = &v.udp {
        loop {
            match rtp.recv(&mut v.buf) {
                Ok(n) => {
                    let (buf, frames, drops, last) =
                        (&v.buf[..n], &mut v.frames, &mut v.drops, &mut v.last_seq);
                    count_packet(buf, (frames, drops, last), lat, record);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e.into()),
            }
        }
    }
    loop {
        match v.sock.read(&mut v.buf[v.filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => v.filled += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        let mut at = 0;
        while let Ok(Some((channel, range, used))) =
            revtun_proto::rtp::interleaved(&v.buf[at..v.filled])
        {
            // Channel 1 carries the host's RTCP sender reports.
            if channel == 0 {
                let pkt = &v.buf[at + range.start..at + range.end];
                count_packet(
                    pkt,
                    (&mut v.frames, &mut v.drops, &mut v.last_seq),
                    lat,
                    record,
                );
            }
            at += used;
        }
        v.buf.copy_within(at..v.filled, 0);
        v.filled -= at;
        if v.filled == v.buf.len() {
            bail!("a viewer got an interleaved packet larger than its buffer");
        }
    }
}

/// Counts one RTP packet of the synthetic camera: sequence gaps as drops,
/// and for a frame's first packet (stamped with the camera's send time)
/// one frame and its latency.
fn count_packet(
    pkt: &[u8],
    (frames, drops, last_seq): (&mut u64, &mut u64, &mut Option<u16>),
    lat: &mut Histogram<u64>,
    record: bool,
) {
    if pkt.len() < 22 {
        return;
    }
    let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
    if let Some(prev) = *last_seq {
        let gap = seq.wrapping_sub(prev).wrapping_sub(1);
        if gap != 0 && gap < 0x8000 && record {
            *drops += u64::from(gap);
        }
    }
    *last_seq = Some(seq);
    if pkt[13] & 0x80 != 0 {
        // First packet of a frame: stamped by the camera.
        let sent = u64::from_be_bytes([
            pkt[14], pkt[15], pkt[16], pkt[17], pkt[18], pkt[19], pkt[20], pkt[21],
        ]);
        if record {
            *frames += 1;
            let _ = lat.record(now_ns().saturating_sub(sent).max(1));
        }
    }
}

/// Viewer threads of the load generator.
const VIEWER_THREADS: usize = 2;

/// Watches with `n` viewers for `dur` (after 1 s of warm-up), spread over
/// [`VIEWER_THREADS`] threads each waiting on its own epoll set (only
/// sockets with data are touched); returns (frames per viewer min, total
/// drops, latency histogram).
pub fn round(
    port: u16,
    path: &str,
    login: &Login,
    n: usize,
    dur: Duration,
) -> Result<(u64, u64, Histogram<u64>)> {
    round_over(port, path, login, n, dur, Transport::Tcp)
}

/// [`round`] with viewers taking the stream over `how`.
pub fn round_over(
    port: u16,
    path: &str,
    login: &Login,
    n: usize,
    dur: Duration,
    how: Transport,
) -> Result<(u64, u64, Histogram<u64>)> {
    let viewers: Vec<Viewer> = (0..n)
        .map(|_| open_viewer_over(port, path, login, how))
        .collect::<Result<_>>()?;
    let warm = Instant::now() + Duration::from_secs(1);
    let end = warm + dur;
    let mut groups: Vec<Vec<Viewer>> = (0..VIEWER_THREADS).map(|_| Vec::new()).collect();
    for (i, v) in viewers.into_iter().enumerate() {
        groups[i % VIEWER_THREADS].push(v);
    }
    let handles: Vec<_> = groups
        .into_iter()
        .map(|g| std::thread::spawn(move || watch(g, warm, end)))
        .collect();
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut min, mut drops) = (u64::MAX, 0);
    for h in handles {
        let (m, d, l) = h
            .join()
            .map_err(|_| anyhow::anyhow!("viewer thread panicked"))??;
        min = min.min(m);
        drops += d;
        lat.add(&l)?;
    }
    Ok((if min == u64::MAX { 0 } else { min }, drops, lat))
}

/// One viewer thread: epoll over its viewers until `end`.
fn watch(
    mut viewers: Vec<Viewer>,
    warm: Instant,
    end: Instant,
) -> Result<(u64, u64, Histogram<u64>)> {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (i, v) in viewers.iter().enumerate() {
        let ev = EpollEvent::new(EpollFlags::EPOLLIN, i as u64);
        match &v.udp {
            Some((rtp, _)) => ep.add(rtp, ev)?,
            None => ep.add(&v.sock, ev)?,
        }
    }
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut events = vec![EpollEvent::empty(); 256];
    while Instant::now() < end {
        let record = Instant::now() >= warm;
        let n = ep.wait(&mut events, EpollTimeout::from(50u16))?;
        for e in &events[..n] {
            let v = &mut viewers[e.data() as usize];
            if !drain(v, &mut lat, record)? {
                bail!("a viewer was disconnected");
            }
        }
    }
    let min = viewers.iter().map(|v| v.frames).min().unwrap_or(u64::MAX);
    let drops = viewers.iter().map(|v| v.drops).sum();
    Ok((min, drops, lat))
}

/// A video lab: the synthetic camera, a host (shards pinned, one per CPU
/// unless `host_extra` says `--shards`; RTSP on a free port) and site `site` enrolled and
/// running on CPU 1 with camera `cam` (and `site_extra` flags). Returns the
/// host, the agent, the RTSP port and a viewer account once viewers can
/// connect.
pub fn video_lab(
    site: &str,
    host_extra: &[&str],
    site_extra: &[String],
) -> Result<(Host, Proc, u16, Login)> {
    let cam = start_camera()?;
    let rtsp = free_port()?;
    let rtsp_arg = format!("127.0.0.1:{rtsp}");
    let mut flags = vec![
        "--pin",
        "--log-level",
        "warn",
        "--rtsp-listen",
        &rtsp_arg,
        "--rtp-port",
        "0",
        "--rtcp-port",
        "0",
        "--metrics-listen",
        "127.0.0.1:0",
        // Every viewer of the lab comes from 127.0.0.1: the per-address
        // and per-camera caps (64 and 2,000 by default) would stop the
        // lab, not measure the host.
        "--max-rtsp-sessions-per-addr",
        "0",
        "--max-viewers-per-camera",
        "0",
    ];
    flags.extend_from_slice(host_extra);
    let host = Host::start(&flags)?;
    let dir = host.enroll(site)?;
    let agent = Proc::spawn(
        Command::new(bin("revtun-site"))
            .args([
                "run",
                "--state-dir",
                &dir.to_string_lossy(),
                "--cpu=1",
                "--log-level=warn",
            ])
            .arg(format!("--camera=cam=rtsp://127.0.0.1:{cam}/test"))
            .args(site_extra),
    )?;
    agent
        .wait_stdout("tunnel up", Duration::from_secs(10))
        .context("site agent")?;
    host.control
        .wait_stdout("rtsp listening on", Duration::from_secs(10))?;
    // A viewer account for the lab's viewers (the host requires one).
    let out = revtun_tests::keytool(
        &host.state(),
        &["viewer", "add", "lab", "--allow", &format!("{site}/*")],
    )?;
    if !out.status.success() {
        bail!("keytool viewer add: {}", revtun_tests::stderr(&out));
    }
    let login = Login {
        user: "lab".into(),
        password: String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string(),
    };
    // Ready once the account has reached the data plane (control sends
    // the viewer table within a second) and the camera answers.
    let start = Instant::now();
    loop {
        match open_viewer(rtsp, &format!("{site}/cam"), &login) {
            Ok(_) => break,
            Err(e) if start.elapsed() > Duration::from_secs(15) => {
                return Err(e.context("the lab's first viewer"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    Ok((host, agent, rtsp, login))
}

/// CPU seconds (user + system) process `pid` used so far.
fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th of them, in clock ticks.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // USER_HZ: 100 on every Linux this runs on.
    f.iter().sum::<u64>() as f64 / 100.0
}

/// The rounds of one transport: N steps up until a viewer that keeps up
/// loses frames; (rows, most viewers that all kept up).
fn rounds(
    (host, rtsp, login): (&Host, u16, &Login),
    steps: &[usize],
    dur: Duration,
    how: Transport,
) -> Result<(Vec<Value>, usize)> {
    let metrics = host.metrics_addr()?;
    let pid = host.dataplane_pid().unwrap_or(0);
    let mut rows = Vec::new();
    let mut best = 0;
    for &n in steps {
        let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
        let (min_frames, drops, lat) = round_over(rtsp, "lab/cam", login, n, dur, how)
            .with_context(|| format!("{n} viewers over {}", how.as_str()))?;
        let (cpu, wall) = (cpu_seconds(pid) - cpu0, t0.elapsed().as_secs_f64());
        let expected = FPS * dur.as_secs();
        let kept_up = drops == 0 && min_frames + 2 >= expected;
        // The host's own view: arrival at the host to the viewer's socket,
        // over the round's last second (shards post once a second).
        std::thread::sleep(Duration::from_millis(1500));
        let text = revtun_tests::http_get(&metrics, "/metrics").unwrap_or_default();
        let host_q = |q: &str| {
            let prefix = format!("revtun_video_send_latency_us{{quantile=\"{q}\"");
            text.lines()
                .filter(|l| l.starts_with(&prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .fold(0.0f64, f64::max)
                / 1000.0
        };
        rows.push(json!({
            "transport": how.as_str(),
            "host_send_p50_ms": host_q("0.5"),
            "host_send_p99_ms": host_q("0.99"),
            "viewers": n,
            "min_frames_per_viewer": min_frames,
            "expected_frames": expected,
            "dropped_packets": drops,
            "latency_p50_ms": lat.value_at_quantile(0.5) as f64 / 1e6,
            "latency_p99_ms": lat.value_at_quantile(0.99) as f64 / 1e6,
            "all_kept_up": kept_up,
            "host_cpu_share": cpu / wall,
            "host_cpu_us_per_viewer_s": cpu * 1e6 / (n as f64 * wall),
        }));
        if !kept_up {
            break;
        }
        best = n;
    }
    Ok((rows, best))
}

/// Runs the scenario over each transport of `transports` (default TCP
/// and UDP), the same camera and host for all, in one run.
pub fn run(
    quick: bool,
    viewers: &[usize],
    shards: Option<usize>,
    transports: &[Transport],
) -> Result<Value> {
    let shards_arg = shards.map(|n| n.to_string());
    let mut host_flags = Vec::new();
    if let Some(n) = &shards_arg {
        host_flags.extend(["--shards", n.as_str()]);
    }
    // Multicast needs a loopback that carries it: the whole lab (host,
    // site, camera, viewers) then runs in a network namespace of its own.
    let _ns = if transports.contains(&Transport::Multicast) {
        host_flags.extend(["--multicast-range", "239.255.42.0/28"]);
        Some(revtun_tests::Netns::enter_new().context("a network namespace for multicast")?)
    } else {
        None
    };
    // `host` keeps control running until the scenario returns.
    let (host, agent, rtsp, login) = video_lab("lab", &host_flags, &[])?;
    let steps: &[usize] = if !viewers.is_empty() {
        viewers
    } else if quick {
        &[10]
    } else {
        &[10, 100, 250, 500, 1000, 1500]
    };
    let dur = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    let transports: &[Transport] = if transports.is_empty() {
        &[Transport::Tcp, Transport::Udp]
    } else {
        transports
    };
    let mut by_transport = serde_json::Map::new();
    let mut first: Option<(Vec<Value>, usize)> = None;
    for &how in transports {
        let (rows, best) = rounds((&host, rtsp, &login), steps, dur, how)?;
        by_transport.insert(
            how.as_str().into(),
            json!({ "max_viewers_all_keeping_up": best, "rounds": rows }),
        );
        first.get_or_insert((rows, best));
    }
    drop(agent);
    let (rows, best) = first.unwrap_or_default();
    Ok(json!({
        "what": "synthetic 8 Mbit/s H.264-shaped camera at the site, one tunnel crossing, N raw RTSP viewers at the host on two epoll threads, over each transport (RTP inside RTSP/TCP, RTP over UDP, and with --transport multicast RTP over multicast, the lab in a network namespace); latency = camera send to viewer receive; host_send = arrival at the host to the last byte in the viewer's socket (the host's own histogram, worst shard, the round's last second); host_cpu = the data plane's CPU time over the round",
        "stream_mbit_s": BITRATE / 1_000_000,
        "host_shards": shards.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        "max_viewers_all_keeping_up": best,
        "rounds": rows,
        "transports": by_transport,
        "targets": { "viewers": 1000, "p99_ms": 5.0 },
    }))
}
