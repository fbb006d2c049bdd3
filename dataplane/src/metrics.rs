//! Metrics of the host data plane in the Prometheus text format, served
//! over HTTP (`--metrics-listen`).
//!
//! The shards never share counters: once a second each shard renders a
//! snapshot of its own tunnels and feeds and posts it to its slot on the
//! [`Board`] (one message per second per shard, through a mutex the data
//! path never touches). A plain thread serves the latest snapshots, so a
//! scrape costs the shards nothing and values are at most a second old.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One sample: metric name, label text (`a="b",c="d"`), value.
pub type Sample = (&'static str, String, u64);

/// Metric names with their help text and type, in output order.
pub const METRICS: &[(&str, &str, &str)] = &[
    ("revtun_shard_up", "gauge", "Data-plane shard alive (1)."),
    (
        "revtun_tunnel_up",
        "gauge",
        "Site tunnel connected to this shard (1).",
    ),
    (
        "revtun_tunnel_bytes_in_total",
        "counter",
        "Bytes read from the site's tunnel socket (this connection).",
    ),
    (
        "revtun_tunnel_bytes_out_total",
        "counter",
        "Bytes written to the site's tunnel socket (this connection).",
    ),
    (
        "revtun_tunnel_streams",
        "gauge",
        "Streams open on the site's tunnel.",
    ),
    (
        "revtun_tunnel_streams_opened_total",
        "counter",
        "Streams opened on the site's tunnel (this connection).",
    ),
    (
        "revtun_tunnel_closes_total",
        "counter",
        "Tunnels closed on this shard, by cause (peer_*, dead, write_stalled and io_error: the peer or the path; the rest: this host).",
    ),
    (
        "revtun_stream_resets_total",
        "counter",
        "Streams reset on this shard, by reason and by who reset them (us or the peer).",
    ),
    (
        "revtun_video_viewers",
        "gauge",
        "RTSP viewers of the camera on this shard.",
    ),
    (
        "revtun_video_viewers_total",
        "counter",
        "RTSP viewers of the camera ever attached on this shard (this stream).",
    ),
    (
        "revtun_video_viewers_cut_total",
        "counter",
        "Viewers disconnected for not reading (this stream).",
    ),
    (
        "revtun_video_units_total",
        "counter",
        "Access units received for the camera on this shard (role origin: through the tunnel).",
    ),
    (
        "revtun_video_bytes_total",
        "counter",
        "Feed bytes received for the camera on this shard.",
    ),
    (
        "revtun_video_bitrate_bps",
        "gauge",
        "Camera stream bit rate over the last second.",
    ),
    (
        "revtun_video_frames_sent_total",
        "counter",
        "Access units handed to consumers' sockets or other shards.",
    ),
    (
        "revtun_video_frames_dropped_total",
        "counter",
        "Access units dropped for consumers that fell behind (or waited for a keyframe).",
    ),
    (
        "revtun_video_resyncs_total",
        "counter",
        "Times a consumer overflowed and resumed at a keyframe.",
    ),
    (
        "revtun_video_udp_viewers",
        "gauge",
        "Viewers of the camera on this shard served RTP over UDP.",
    ),
    (
        "revtun_video_udp_packets_total",
        "counter",
        "RTP packets sent to UDP viewers of the camera (re-packetised to --rtp-mtu).",
    ),
    (
        "revtun_video_udp_reported_lost_total",
        "counter",
        "Packets UDP viewers of the camera reported lost in RTCP receiver reports.",
    ),
    (
        "revtun_video_multicast_members",
        "gauge",
        "Viewers of the camera on this shard in its multicast group.",
    ),
    (
        "revtun_video_multicast_packets_total",
        "counter",
        "RTP packets sent to the camera's multicast group on this shard (once per packet, whatever the members).",
    ),
    (
        "revtun_video_viewer_frames_sent_total",
        "counter",
        "Per viewer (labels viewer, session, transport; a multicast group's sender is viewer \"group\"): access units handed to its socket.",
    ),
    (
        "revtun_video_viewer_frames_dropped_total",
        "counter",
        "Per viewer: access units dropped because it fell behind (or waited for a keyframe).",
    ),
    (
        "revtun_video_viewer_packets_total",
        "counter",
        "Per viewer: RTP packets sent to it, video and audio.",
    ),
    (
        "revtun_video_viewer_reported_lost_total",
        "counter",
        "Per viewer: packets it reported lost in RTCP receiver reports (UDP viewers).",
    ),
    (
        "revtun_video_send_latency_us",
        "gauge",
        "Host-added latency on this shard: access unit arrival at the host to its last byte in a viewer's socket, microseconds, quantiles of the last one-second window with frames.",
    ),
    (
        "revtun_video_send_latency_frames",
        "gauge",
        "Viewer writes in that window.",
    ),
];

/// A shard or control that has not posted for this long is not ready.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// The latest snapshot of every shard, and control's own counters.
#[derive(Debug)]
pub struct Board {
    slots: Mutex<Vec<(Option<std::time::Instant>, Vec<Sample>)>>,
    status: Mutex<Vec<crate::status::ShardStatus>>,
    control: Mutex<Option<(std::time::Instant, String)>>,
}

impl Board {
    /// A board for `shards` shards.
    pub fn new(shards: usize) -> Arc<Board> {
        Arc::new(Board {
            slots: Mutex::new(vec![(None, Vec::new()); shards]),
            status: Mutex::new(vec![crate::status::ShardStatus::default(); shards]),
            control: Mutex::new(None),
        })
    }

    /// Replaces shard `k`'s snapshot.
    pub fn post(&self, k: usize, samples: Vec<Sample>) {
        if let Ok(mut s) = self.slots.lock() {
            if let Some(slot) = s.get_mut(k) {
                *slot = (Some(std::time::Instant::now()), samples);
            }
        }
    }

    /// Replaces shard `k`'s status (its connected sites and video).
    pub fn post_status(&self, k: usize, status: crate::status::ShardStatus) {
        if let Ok(mut s) = self.status.lock() {
            if let Some(slot) = s.get_mut(k) {
                *slot = status;
            }
        }
    }

    /// The latest status of every shard.
    pub fn status(&self) -> Vec<crate::status::ShardStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Replaces control's counters (exposition text control renders;
    /// appended to every scrape).
    pub fn post_control(&self, text: String) {
        if let Ok(mut c) = self.control.lock() {
            *c = Some((std::time::Instant::now(), text));
        }
    }

    /// Why the host is not ready, if it is not: a shard that has not
    /// posted within [`STALE_AFTER`], or no word from control as long.
    pub fn not_ready(&self) -> Option<String> {
        let fresh = |t: &Option<std::time::Instant>| t.is_some_and(|t| t.elapsed() < STALE_AFTER);
        if let Ok(s) = self.slots.lock() {
            if let Some(k) = s.iter().position(|(t, _)| !fresh(t)) {
                return Some(format!("shard {k} has not reported"));
            }
        }
        let control = self
            .control
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|(t, _)| *t));
        if !fresh(&control) {
            return Some("control has not reported".into());
        }
        None
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let slots: Vec<Vec<Sample>> = match self.slots.lock() {
            Ok(s) => s.iter().map(|(_, v)| v.clone()).collect(),
            Err(_) => Vec::new(),
        };
        let mut out = String::new();
        for (name, kind, help) in METRICS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (n, labels, v) in slots.iter().flatten() {
                if n == name {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
        if let Some((_, text)) = self.control.lock().ok().as_deref().and_then(Option::as_ref) {
            out.push_str(text);
        }
        out
    }
}

/// Escapes a label value (names here are already restricted, but the
/// format must hold whatever comes).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Requests served at once; more connections are closed at once (a scrape
/// needs one; a handful of slow clients cannot hold the endpoint).
pub const MAX_CLIENTS: usize = 8;
/// Total time one request may take, read and answer together.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Who may read the metrics.
#[derive(Clone, Default)]
pub struct Access {
    /// When set, requests must carry `Authorization: Bearer <token>`.
    pub token: Option<Arc<zeroize::Zeroizing<String>>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Access {
    /// Reads the bearer token from `path` (first line; the file, not the
    /// command line, holds the secret).
    pub fn from_token_file(path: &std::path::Path) -> std::io::Result<Access> {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            return Err(std::io::Error::other(format!(
                "{}: empty token",
                path.display()
            )));
        }
        Ok(Access {
            token: Some(Arc::new(zeroize::Zeroizing::new(token))),
        })
    }
}

/// Serves `GET /metrics` on `addr`; returns the bound address. Each
/// connection gets its own thread, at most [`MAX_CLIENTS`] at once, and
/// one total deadline ([`REQUEST_DEADLINE`]), so one slow client cannot
/// stall scrapes. Bind it to loopback or a management network.
pub fn serve(addr: SocketAddr, board: Arc<Board>, access: Access) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("revtun-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        use std::sync::atomic::Ordering;
                        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                            busy.fetch_sub(1, Ordering::AcqRel);
                            drop(c);
                            continue;
                        }
                        let (board, access, done) = (board.clone(), access.clone(), busy.clone());
                        let spawned = std::thread::Builder::new()
                            .name("revtun-metrics-req".into())
                            .spawn(move || {
                                if let Err(e) = answer(c, &board, &access) {
                                    tracing::debug!(error = %e, "metrics request failed");
                                }
                                done.fetch_sub(1, Ordering::AcqRel);
                            });
                        if spawned.is_err() {
                            busy.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        })?;
    Ok(bound)
}

/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

fn answer(mut c: TcpStream, board: &Board, access: &Access) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + REQUEST_DEADLINE;
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    c.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if std::time::Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request deadline",
            ));
        }
        c.set_read_timeout(Some(left()))?;
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut c,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let line = lines.next().unwrap_or("").trim().to_string();
    // Health checks need no token (they say nothing but up or ready).
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/healthz")) => {
            return respond(&mut c, "200 OK", "text/plain", "ok\n");
        }
        (Some("GET"), Some("/ready")) => {
            return match board.not_ready() {
                None => respond(&mut c, "200 OK", "text/plain", "ready\n"),
                Some(why) => respond(
                    &mut c,
                    "503 Service Unavailable",
                    "text/plain",
                    &format!("{why}\n"),
                ),
            };
        }
        _ => {}
    }
    if let Some(token) = &access.token {
        let given = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.trim().strip_prefix("Bearer "))
            .unwrap_or("");
        use subtle::ConstantTimeEq;
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return respond(&mut c, "401 Unauthorized", "text/plain", "");
        }
    }
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => respond(
            &mut c,
            "200 OK",
            "text/plain; version=0.0.4",
            &board.render(),
        ),
        (Some("GET"), Some(_)) => respond(
            &mut c,
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /ready\n",
        ),
        _ => respond(&mut c, "400 Bad Request", "text/plain", ""),
    }
}

fn respond(c: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    c.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_metric_once_with_all_shards() {
        let b = Board::new(2);
        b.post(0, vec![("revtun_shard_up", "shard=\"0\"".into(), 1)]);
        b.post(1, vec![("revtun_shard_up", "shard=\"1\"".into(), 1)]);
        b.post(7, vec![("revtun_shard_up", "shard=\"7\"".into(), 1)]);
        let text = b.render();
        assert_eq!(text.matches("# TYPE revtun_shard_up gauge").count(), 1);
        assert!(text.contains("revtun_shard_up{shard=\"0\"} 1\n"));
        assert!(text.contains("revtun_shard_up{shard=\"1\"} 1\n"));
        assert!(!text.contains("shard=\"7\""));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
