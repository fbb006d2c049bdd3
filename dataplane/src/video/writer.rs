//! Writing to RTSP viewers: replies, and access units as vectored
//! non-blocking `sendmsg` calls of this viewer's `$` headers interleaved
//! with the packets of the shared buffer (through TLS for RTSPS viewers;
//! the socket side is in [`super::wire`]).

use super::feed::{SendLatency, Viewer};
use super::wire::Wire;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub use super::wire::write_all;

/// Sends the replies queued for `v` on its RTSP connection. A viewer that
/// takes no replies is stuck like one that takes no media: it is marked
/// gone (and cut, on the deadline).
async fn flush_replies(conn: &Wire, v: &Viewer, stuck: Duration) {
    let replies = std::mem::take(&mut *v.replies.borrow_mut());
    if replies.is_empty() {
        return;
    }
    v.drained.notify();
    let sent = glommio::timer::timeout(stuck, async {
        write_all(conn, &replies)
            .await
            .map_err(glommio::GlommioError::IoError)
    })
    .await;
    if let Err(e) = sent {
        v.cut.set(matches!(e, glommio::GlommioError::TimedOut(_)));
        v.gone.set(true);
    }
}

/// How often a viewer gets an RTCP sender report.
pub const SR_INTERVAL: Duration = Duration::from_secs(5);

/// RTP clock of the video payloads relayed (H.264, H.265).
pub const VIDEO_CLOCK: u64 = 90_000;

/// What the sender reports of one track of one viewer need: the last
/// frame sent (its RTP time and arrival, to map wall-clock time to RTP
/// time), the track's RTP clock and the counts sent so far.
#[derive(Debug)]
pub struct Reports {
    clock: u64,
    last: Option<(u32, Instant)>,
    sent_at: Option<Instant>,
    /// RTP packets sent.
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

impl Default for Reports {
    /// A video track's (90 kHz).
    fn default() -> Reports {
        Reports::new(VIDEO_CLOCK as u32)
    }
}

impl Reports {
    /// Reports of a track whose RTP clock runs at `clock` Hz.
    pub fn new(clock: u32) -> Reports {
        Reports {
            clock: u64::from(clock.max(1)),
            last: None,
            sent_at: None,
            packets: 0,
            octets: 0,
        }
    }

    /// Notes a frame of RTP time `ts` that arrived at `arrived`.
    pub fn sent(&mut self, ts: u32, arrived: Instant, packets: usize, octets: usize) {
        self.last = Some((ts, arrived));
        self.packets = self.packets.wrapping_add(packets as u32);
        self.octets = self.octets.wrapping_add(octets as u32);
    }

    /// A sender report of `ssrc` if one is due at `now`.
    pub fn due(&mut self, ssrc: u32, now: Instant) -> Option<Vec<u8>> {
        let (ts, arrived) = self.last?;
        if self
            .sent_at
            .is_some_and(|t| now.duration_since(t) < SR_INTERVAL)
        {
            return None;
        }
        self.sent_at = Some(now);
        let since = now.saturating_duration_since(arrived);
        let rtp = ts.wrapping_add((since.as_micros() as u64 * self.clock / 1_000_000) as u32);
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Some(revtun_proto::rtcp::sender_report(
            ssrc,
            revtun_proto::rtcp::ntp(wall),
            rtp,
            self.packets,
            self.octets,
            "revtun",
        ))
    }
}

/// The RTP timestamp and SSRC of a frame (from its first packet).
fn frame_rtp(frame: &super::feed::Frame) -> Option<(u32, u32)> {
    let r = frame.packets.first()?;
    let h = revtun_proto::rtp::parse(frame.msg.get(r.clone())?).ok()?;
    Some((h.timestamp, h.ssrc))
}

/// Writes queued access units to one viewer: per packet a 4-byte `$`
/// header of this viewer and the packet straight from the shared buffer,
/// a whole access unit per `sendmsg` where the socket takes it; every
/// [`SR_INTERVAL`] an RTCP sender report on the RTCP channel.
///
/// Audio packets go on the audio track's channels when the viewer set it
/// up (and are skipped when it did not), with sender reports of their own
/// when the audio clock is known.
pub async fn writer(
    conn: Rc<Wire>,
    v: Rc<Viewer>,
    ((channel, rtcp_channel), audio): ((u8, u8), Option<TcpAudio>),
    stuck: Duration,
    latency: Rc<SendLatency>,
) {
    let mut reports = Reports::default();
    let mut audio_reports = audio.and_then(|a| a.clock).map(Reports::new);
    let mut camera_ssrc = 0u32;
    let mut camera_audio_ssrc = 0u32;
    let close = |conn: &Wire| conn.close();
    loop {
        let wake = v.sig.wait();
        flush_replies(&conn, &v, stuck).await;
        if v.gone.get() {
            // The feed ended (camera gone, site offline) or the viewer
            // left: close the connection so the player sees the end.
            v.drained.notify();
            close(&conn);
            return;
        }
        let next = v.queue.borrow_mut().pop(Instant::now());
        let Some(frame) = next else {
            let idle = glommio::timer::timeout(stuck, async {
                wake.await;
                Ok(())
            })
            .await;
            if idle.is_err() && v.queue.borrow().stuck(Instant::now(), stuck) {
                v.gone.set(true);
                v.cut.set(true);
                v.drained.notify();
                close(&conn);
                return;
            }
            continue;
        };
        let (channel, rtcp_channel) = match (frame.audio, audio) {
            (false, _) => (channel, rtcp_channel),
            (true, Some(a)) => a.channels,
            (true, None) => continue,
        };
        // This viewer's `$` headers; the packets come from the shared buffer.
        let headers: Vec<[u8; 4]> = frame
            .packets
            .iter()
            .map(|r| {
                let len = (r.end - r.start) as u16;
                [b'$', channel, (len >> 8) as u8, len as u8]
            })
            .collect();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * headers.len() + 2);
        // The report describes what was sent before this frame, on the
        // frame's track.
        let sr = if frame.audio {
            audio_reports
                .as_mut()
                .and_then(|r| r.due(camera_audio_ssrc, Instant::now()))
        } else {
            reports.due(camera_ssrc, Instant::now())
        };
        let sr_head = sr.as_ref().map(|p| {
            let len = p.len() as u16;
            [b'$', rtcp_channel, (len >> 8) as u8, len as u8]
        });
        if let (Some(h), Some(p)) = (&sr_head, &sr) {
            parts.push(h);
            parts.push(p);
        }
        for (h, r) in headers.iter().zip(&frame.packets) {
            parts.push(h);
            parts.push(&frame.msg[r.clone()]);
        }
        let sent = match conn.write_now(&parts) {
            Ok(None) => Ok(()),
            // The socket is full: wait for room, up to the stuck limit.
            Ok(Some(pos)) => {
                glommio::timer::timeout(stuck, async {
                    conn.write_from(&parts, pos)
                        .await
                        .map_err(glommio::GlommioError::IoError)
                })
                .await
            }
            Err(e) => Err(glommio::GlommioError::IoError(e)),
        };
        match sent {
            Ok(()) => {
                latency.record(frame.arrived);
                v.queue.borrow_mut().progressed(Instant::now());
                v.packets.set(v.packets.get() + frame.packets.len() as u64);
                if let Some((ts, ssrc)) = frame_rtp(&frame) {
                    let octets: usize = frame
                        .packets
                        .iter()
                        .map(|r| r.len().saturating_sub(12))
                        .sum();
                    let r = if frame.audio {
                        camera_audio_ssrc = ssrc;
                        audio_reports.as_mut()
                    } else {
                        camera_ssrc = ssrc;
                        Some(&mut reports)
                    };
                    if let Some(r) = r {
                        r.sent(ts, frame.arrived, frame.packets.len(), octets);
                    }
                }
            }
            Err(e) => {
                let stuck = matches!(e, glommio::GlommioError::TimedOut(_));
                let stats = v.queue.borrow().stats;
                tracing::info!(
                    sent = stats.sent,
                    dropped = stats.dropped,
                    resyncs = stats.resyncs,
                    stuck,
                    "viewer stuck or gone; disconnecting"
                );
                v.gone.set(true);
                v.cut.set(stuck);
                v.drained.notify();
                close(&conn);
                return;
            }
        }
    }
}

/// The audio track of a TCP viewer: its interleaved channels (RTP,
/// RTCP) and the track's RTP clock, if known (for sender reports).
#[derive(Debug, Clone, Copy)]
pub struct TcpAudio {
    /// RTP and RTCP channels.
    pub channels: (u8, u8),
    /// RTP clock rate.
    pub clock: Option<u32>,
}

/// Where the audio track of a UDP viewer (or multicast group) goes.
#[derive(Debug, Clone, Copy)]
pub struct UdpAudio {
    /// Its RTP address.
    pub rtp: std::net::SocketAddr,
    /// Its RTCP address (sender reports).
    pub rtcp: std::net::SocketAddr,
    /// Our SSRC for the track.
    pub ssrc: u32,
    /// The next sequence number.
    pub seq: u16,
    /// The track's RTP clock rate, if known (no reports without it).
    pub clock: Option<u32>,
}

/// Where and how one UDP viewer is served.
#[derive(Debug)]
pub struct UdpViewer {
    /// The process's RTP and RTCP sockets.
    pub udp: std::sync::Arc<super::udp::Udp>,
    /// The viewer's RTP address (its RTSP connection's IP, its port).
    pub rtp: std::net::SocketAddr,
    /// Its RTCP address.
    pub rtcp: std::net::SocketAddr,
    /// Our SSRC towards it (told in SETUP).
    pub ssrc: u32,
    /// The next sequence number (the first one is told in RTP-Info).
    pub seq: u16,
    /// The camera's codec, for packetising.
    pub codec: revtun_proto::rtp::Codec,
    /// Largest RTP payload per datagram.
    pub mtu: usize,
    /// Dropped after this long with neither an RTSP request nor a report
    /// (`None`: a multicast group, which lives while it has members).
    pub timeout: Option<Duration>,
    /// When its RTSP connection last brought a request.
    pub last_request: Rc<std::cell::Cell<Instant>>,
    /// Its audio track, if it set one up.
    pub audio: Option<UdpAudio>,
}

/// Sends the replies of a multicast member on its RTSP connection (its
/// media goes to the group, [`udp_writer`]) and closes the connection
/// once the member is gone (TEARDOWN, permission removed).
pub async fn member_writer(conn: Rc<Wire>, v: Rc<Viewer>, stuck: Duration) {
    loop {
        let wake = v.sig.wait();
        flush_replies(&conn, &v, stuck).await;
        if v.gone.get() {
            v.drained.notify();
            conn.close();
            return;
        }
        wake.await;
    }
}

/// Writes queued access units to one UDP viewer: each packetised once
/// for every UDP viewer ([`super::feed::Frame::udp`]); per packet this
/// viewer's 12-byte RTP header (its sequence numbers, its SSRC) and the
/// payload straight from the shared buffer, [`super::udp::BATCH`] packets
/// per `sendmmsg`. Replies still go on the RTSP connection; sender
/// reports go to its RTCP port every [`SR_INTERVAL`].
///
/// A multicast group is one such "viewer" with no RTSP connection of its
/// own (`conn` is `None`): its packets go once to the group, whatever
/// the number of members.
pub async fn udp_writer(
    conn: Option<Rc<Wire>>,
    v: Rc<Viewer>,
    mut d: UdpViewer,
    feed: Rc<super::feed::Feed>,
    stuck: Duration,
    latency: Rc<SendLatency>,
) {
    let unicast = d.timeout.is_some();
    if unicast {
        d.udp.register(d.rtcp);
    }
    let mut reports = Reports::default();
    let mut audio_reports = d.audio.and_then(|a| a.clock).map(Reports::new);
    let mut lost = 0u32;
    let mut checked = Instant::now();
    let why = loop {
        let wake = v.sig.wait();
        if let Some(conn) = &conn {
            flush_replies(conn, &v, stuck).await;
        }
        if v.gone.get() {
            break "left";
        }
        let now = Instant::now();
        // Liveness and reported loss: once a second, not per frame (the
        // report table is shared with the RTCP reader).
        let check = now.saturating_duration_since(checked) >= Duration::from_secs(1);
        if let Some(timeout) = d.timeout.filter(|_| check) {
            checked = now;
            let report = d.udp.report(d.rtcp);
            if report.lost > lost {
                feed.counters.borrow_mut().udp_lost += u64::from(report.lost - lost);
                lost = report.lost;
                v.lost.set(u64::from(lost));
            }
            if revtun_proto::rtsp_session::expired(d.last_request.get(), report.seen, now, timeout)
            {
                break "silent: no RTSP request and no receiver report within the timeout";
            }
        }
        if let Some(sr) = reports.due(d.ssrc, now) {
            d.udp.send_rtcp(&sr, d.rtcp);
        }
        if let (Some(r), Some(a)) = (audio_reports.as_mut(), d.audio) {
            if let Some(sr) = r.due(a.ssrc, now) {
                d.udp.send_rtcp(&sr, a.rtcp);
            }
        }
        let next = v.queue.borrow_mut().pop(now);
        let Some(frame) = next else {
            let _ = glommio::timer::timeout(stuck.min(Duration::from_secs(1)), async {
                wake.await;
                Ok(())
            })
            .await;
            continue;
        };
        let pkts = frame.udp.get_or_init(|| {
            if frame.audio {
                revtun_proto::rtp::as_is(&frame.msg, &frame.packets)
            } else {
                revtun_proto::rtp::packetize(d.codec, &frame.msg, &frame.packets, d.mtu)
            }
        });
        // Audio has its own destination, SSRC and sequence numbers.
        let (to, ssrc, seq) = match (frame.audio, d.audio.as_mut()) {
            (false, _) => (d.rtp, d.ssrc, &mut d.seq),
            (true, Some(a)) => (a.rtp, a.ssrc, &mut a.seq),
            (true, None) => continue,
        };
        let headers: Vec<[u8; 12]> = pkts
            .iter()
            .map(|p| {
                let mut h = [0u8; 12];
                h[0] = 0x80;
                h[1] = (u8::from(p.marker) << 7) | (p.payload_type & 0x7f);
                h[2..4].copy_from_slice(&seq.to_be_bytes());
                h[4..8].copy_from_slice(&p.timestamp.to_be_bytes());
                h[8..12].copy_from_slice(&ssrc.to_be_bytes());
                *seq = seq.wrapping_add(1);
                h
            })
            .collect();
        let msgs: Vec<[std::io::IoSlice<'_>; 3]> = pkts
            .iter()
            .zip(&headers)
            .map(|(p, h)| {
                [
                    std::io::IoSlice::new(h),
                    std::io::IoSlice::new(p.prefix()),
                    std::io::IoSlice::new(&frame.msg[p.body.clone()]),
                ]
            })
            .collect();
        // The socket is the host's, shared by every UDP viewer: when it is
        // full, wait for room, up to the stuck limit.
        let started = Instant::now();
        let mut at = 0;
        let mut failed = None;
        let size = |i: usize| 12 + pkts[i].payload_len();
        while at < msgs.len() {
            // A run of datagrams of one size (the last may be shorter)
            // goes in one segmented send where the kernel offers it.
            let mut end = at + 1;
            let mut bytes = size(at);
            while end < msgs.len()
                && end - at < super::udp::GSO_SEGMENTS
                && bytes + size(end) <= super::udp::GSO_BYTES
                && size(end) <= size(at)
                && size(end - 1) == size(at)
            {
                bytes += size(end);
                end += 1;
            }
            let sent = if end - at > 1 {
                let iov: Vec<std::io::IoSlice<'_>> = msgs[at..end]
                    .iter()
                    .flat_map(|m| m.iter().copied())
                    .collect();
                d.udp
                    .send_segmented(&iov, size(at) as u16, end - at, to)
                    .map(|s| match s {
                        super::udp::Sent::Datagrams(n) => Some(n),
                        super::udp::Sent::Full => Some(0),
                        super::udp::Sent::NoGso => None,
                    })
            } else {
                Ok(None)
            };
            let sent = match sent {
                Ok(Some(n)) => Ok(n),
                Ok(None) => {
                    let end = (at + super::udp::BATCH).min(msgs.len());
                    d.udp.send_rtp(&msgs[at..end], to)
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(0) if started.elapsed() < stuck => {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                Ok(0) => {
                    failed = Some("the host's RTP socket stayed full");
                    break;
                }
                Ok(n) => at += n,
                // ICMP port unreachable from an earlier datagram (the
                // viewer's port closed), or worse: the viewer is gone.
                Err(e) => {
                    tracing::debug!(error = %e, to = %d.rtp, "udp send failed");
                    failed = Some("sending to it failed");
                    break;
                }
            }
        }
        if let Some(why) = failed {
            break why;
        }
        latency.record(frame.arrived);
        v.queue.borrow_mut().progressed(Instant::now());
        let octets: usize = pkts.iter().map(|p| p.payload_len()).sum();
        let r = if frame.audio {
            audio_reports.as_mut()
        } else {
            Some(&mut reports)
        };
        if let (Some(p), Some(r)) = (pkts.first(), r) {
            r.sent(p.timestamp, frame.arrived, pkts.len(), octets);
        }
        v.packets.set(v.packets.get() + pkts.len() as u64);
        let mut c = feed.counters.borrow_mut();
        if unicast {
            c.udp_packets += pkts.len() as u64;
        } else {
            c.multicast_packets += pkts.len() as u64;
        }
    };
    if unicast {
        d.udp.unregister(d.rtcp);
    }
    let stats = v.queue.borrow().stats;
    tracing::info!(to = %d.rtp, sent = stats.sent, dropped = stats.dropped, lost, %why, "udp viewer ended");
    v.gone.set(true);
    v.drained.notify();
    if let Some(conn) = conn {
        conn.close();
    }
}
