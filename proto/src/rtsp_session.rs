//! One viewer's RTSP session at the host redirector, sans-IO: which
//! requests are valid in which state, the transport each track gets, the
//! replies (`Transport`, `Session` with its timeout, `RTP-Info`, `Range`),
//! and the deadlines. Time is passed in; the driver
//! (`dataplane/src/video/host.rs`) does the I/O, checks credentials, finds
//! feeds and multicast groups, and answers the [`Step`]s that need them.
//!
//! States: a session starts *idle*; DESCRIBE or SETUP names its camera;
//! SETUP of the video track (`track0`, or any URL but `track1`) and of
//! the audio track (`track1`) choose one transport each (both tracks of a
//! session use the same kind); PLAY of a session with its video set up
//! starts *playing*; TEARDOWN ends it. Before PLAY each request must
//! arrive within the request limit, and the whole session within six
//! times it; once playing, a UDP viewer lives while it sends requests or
//! receiver reports within the session timeout ([`expired`]).

use crate::rtsp::{self, Method, Request};
use crate::transport::{self, Offered, Wanted};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Methods a viewer may use (the `Public` header of OPTIONS).
pub const PUBLIC: &str = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER, SET_PARAMETER";
/// Methods allowed on a session (the `Allow` header of a 405).
pub const ALLOW: &str = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER";

/// What the host offers and how long it waits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Transports offered besides TCP.
    pub offered: Offered,
    /// The host's RTP and RTCP ports (`server_port` of UDP replies).
    pub udp_ports: (u16, u16),
    /// Time for each request before PLAY (six times it to PLAY).
    pub request: Duration,
    /// The session timeout told to clients (`Session: ID;timeout=N`).
    pub timeout: Duration,
}

/// A track of the relayed camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// The video track (`track0`).
    Video,
    /// The audio track (`track1`).
    Audio,
}

/// A track set up: its transport and the URL it was set up with (named in
/// `RTP-Info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetUp {
    /// The transport chosen.
    pub transport: Wanted,
    /// The URL of its SETUP.
    pub url: String,
}

/// What the driver does next for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this reply.
    Reply(Vec<u8>),
    /// Send this reply, then end the session.
    Close(Vec<u8>),
    /// Find the camera's feed and its SDP, then call
    /// [`Session::described`].
    Describe {
        /// Site name.
        site: String,
        /// Camera name.
        cam: String,
    },
    /// Find the camera's feed (and, for multicast, its group), then call
    /// [`Session::set_up`].
    Setup {
        /// Site name.
        site: String,
        /// Camera name.
        cam: String,
        /// The track.
        track: Track,
        /// The transport chosen for it.
        transport: Wanted,
    },
    /// Start sending the tracks set up, then call [`Session::played`]
    /// with the first packet the viewer gets.
    Play {
        /// Site name.
        site: String,
        /// Camera name.
        cam: String,
    },
}

/// What the driver found for a SETUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The feed, for a unicast transport (TCP or UDP).
    Unicast,
    /// The feed and its multicast group: address, the track's ports, TTL
    /// and the group's SSRC for the track.
    Group {
        /// Group address.
        ip: Ipv4Addr,
        /// The track's RTP and RTCP ports.
        ports: (u16, u16),
        /// TTL.
        ttl: u8,
        /// SSRC of the group's packets of the track.
        ssrc: u32,
    },
}

/// The request waiting for the driver's answer.
#[derive(Debug, Clone)]
struct Pending {
    cseq: Option<String>,
    uri: String,
    camera: (String, String),
    setup: Option<(Track, Wanted)>,
}

/// One RTSP session (one viewer connection).
#[derive(Debug, Clone)]
pub struct Session {
    header: String,
    limits: Limits,
    ssrc: u32,
    audio_ssrc: u32,
    camera: Option<(String, String)>,
    video: Option<SetUp>,
    audio: Option<SetUp>,
    playing: bool,
    pending: Option<Pending>,
    opened: Instant,
    last_request: Instant,
}

impl Session {
    /// A session opened at `now` with id `id` and our SSRCs for the video
    /// and audio tracks (told in SETUP replies of unicast transports).
    pub fn new(id: u64, (ssrc, audio_ssrc): (u32, u32), limits: Limits, now: Instant) -> Session {
        let secs = limits.timeout.as_secs().max(1);
        Session {
            header: format!("{id:016x};timeout={secs}"),
            limits,
            ssrc,
            audio_ssrc,
            camera: None,
            video: None,
            audio: None,
            playing: false,
            pending: None,
            opened: now,
            last_request: now,
        }
    }

    /// The `Session` header value (`ID;timeout=N`).
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The session id.
    pub fn id(&self) -> &str {
        self.header.split(';').next().unwrap_or("")
    }

    /// The camera the session is about, once DESCRIBE or SETUP named it.
    pub fn camera(&self) -> Option<(&str, &str)> {
        self.camera.as_ref().map(|(s, c)| (s.as_str(), c.as_str()))
    }

    /// The video track's setup.
    pub fn video(&self) -> Option<&SetUp> {
        self.video.as_ref()
    }

    /// The audio track's setup.
    pub fn audio(&self) -> Option<&SetUp> {
        self.audio.as_ref()
    }

    /// Our SSRCs for the video and audio tracks.
    pub fn ssrcs(&self) -> (u32, u32) {
        (self.ssrc, self.audio_ssrc)
    }

    /// Whether PLAY started the media.
    pub fn playing(&self) -> bool {
        self.playing
    }

    /// When the next request must have arrived whole (before PLAY); `None`
    /// once playing.
    pub fn deadline(&self) -> Option<Instant> {
        if self.playing {
            return None;
        }
        let each = self.last_request + self.limits.request;
        Some(each.min(self.opened + 6 * self.limits.request))
    }

    /// Notes a request at `now` that the driver answered itself (a 401,
    /// 403 or 404 before the session saw it): the next request's
    /// deadline counts from it, as from any other.
    pub fn heard(&mut self, now: Instant) {
        self.last_request = now;
    }

    /// The camera a request is about, for the driver's permission check:
    /// the one named in a DESCRIBE or SETUP URI, or the session's for
    /// PLAY. `Err(404)` for names that cannot be a site and camera.
    pub fn concerns<'a>(&'a self, req: &'a Request) -> Result<Option<(&'a str, &'a str)>, u16> {
        let named = match (req.method, self.camera()) {
            (Method::Play, Some(c)) => Some(c),
            (Method::Describe | Method::Setup, _) => match req.path().as_slice() {
                [site, cam, ..] => Some((*site, *cam)),
                _ => None,
            },
            _ => None,
        };
        if let Some((site, cam)) = named {
            if crate::validate_site_name(site).is_err()
                || crate::viewer::validate_camera_name(cam).is_err()
            {
                return Err(404);
            }
        }
        Ok(named)
    }

    /// The next step for a request that passed the driver's gate, arrived
    /// at `now`.
    pub fn request(&mut self, req: &Request, now: Instant) -> Step {
        self.last_request = now;
        self.pending = None;
        let cseq = req.cseq();
        let sess: &[(&str, &str)] = &[("Session", &self.header)];
        let reply = |status| Step::Reply(rtsp::response(status, cseq, &[], b""));
        let named = match req.path().as_slice() {
            [site, cam, ..] => Some((site.to_string(), cam.to_string())),
            _ => None,
        };
        match req.method {
            Method::Options => Step::Reply(rtsp::response(200, cseq, &[("Public", PUBLIC)], b"")),
            Method::Describe => match named {
                Some((site, cam)) => {
                    self.pending = Some(Pending {
                        cseq: cseq.map(str::to_string),
                        uri: req.uri.clone(),
                        camera: (site.clone(), cam.clone()),
                        setup: None,
                    });
                    Step::Describe { site, cam }
                }
                None => reply(404),
            },
            Method::Setup => {
                if self.playing {
                    // Tracks cannot change under a playing session.
                    return reply(455);
                }
                let audio =
                    self.camera.is_some() && req.uri.trim_end_matches('/').ends_with("/track1");
                let track = if audio { Track::Audio } else { Track::Video };
                let offered = self.limits.offered;
                let header = req.header("Transport").unwrap_or("");
                // Both tracks use one kind of transport: the other track's,
                // if it is set up.
                let other = match track {
                    Track::Video => self.audio.as_ref(),
                    Track::Audio => self.video.as_ref(),
                };
                let wanted = transport::wanted(header).into_iter().find(|w| {
                    offered.allows(*w) && other.is_none_or(|o| same_kind(o.transport, *w))
                });
                let Some(w) = wanted else {
                    return reply(461);
                };
                let camera = match (&self.camera, named) {
                    (Some(c), _) => c.clone(),
                    (None, Some(c)) => c,
                    (None, None) => return reply(404),
                };
                self.pending = Some(Pending {
                    cseq: cseq.map(str::to_string),
                    uri: req.uri.clone(),
                    camera: camera.clone(),
                    setup: Some((track, w)),
                });
                Step::Setup {
                    site: camera.0,
                    cam: camera.1,
                    track,
                    transport: w,
                }
            }
            Method::Play => match (&self.camera, &self.video) {
                (Some(_), Some(_)) if self.playing => {
                    Step::Reply(rtsp::response(200, cseq, sess, b""))
                }
                (Some((site, cam)), Some(_)) => {
                    let (site, cam) = (site.clone(), cam.clone());
                    self.pending = Some(Pending {
                        cseq: cseq.map(str::to_string),
                        uri: req.uri.clone(),
                        camera: (site.clone(), cam.clone()),
                        setup: None,
                    });
                    Step::Play { site, cam }
                }
                _ => reply(455),
            },
            Method::GetParameter | Method::SetParameter => {
                Step::Reply(rtsp::response(200, cseq, sess, b""))
            }
            Method::Teardown => Step::Close(rtsp::response(200, cseq, sess, b"")),
            Method::Pause => Step::Reply(rtsp::response(405, cseq, &[("Allow", ALLOW)], b"")),
        }
    }

    /// The DESCRIBE reply: the viewers' SDP of the camera, or the status
    /// the driver found (404 unknown, 503 cannot be pulled ...).
    pub fn described(&mut self, found: Result<&str, u16>) -> Step {
        let Some(p) = self.pending.take() else {
            return Step::Close(rtsp::response(500, None, &[], b""));
        };
        match found {
            Ok(sdp) => {
                self.camera.get_or_insert(p.camera);
                let base = format!("{}/", p.uri.trim_end_matches('/'));
                Step::Reply(rtsp::response(
                    200,
                    p.cseq.as_deref(),
                    &[("Content-Type", "application/sdp"), ("Content-Base", &base)],
                    sdp.as_bytes(),
                ))
            }
            Err(status) => Step::Reply(rtsp::response(status, p.cseq.as_deref(), &[], b"")),
        }
    }

    /// The SETUP reply once the driver found the feed (and the group of a
    /// multicast setup), or the status it found instead (a 453 when no
    /// group is left).
    pub fn set_up(&mut self, found: Result<Found, u16>) -> Step {
        let Some(Pending {
            cseq,
            uri,
            camera,
            setup: Some((track, w)),
        }) = self.pending.take()
        else {
            return Step::Close(rtsp::response(500, None, &[], b""));
        };
        let cseq = cseq.as_deref();
        let found = match found {
            Ok(f) => f,
            Err(status) => return Step::Reply(rtsp::response(status, cseq, &[], b"")),
        };
        let ssrc = match track {
            Track::Video => self.ssrc,
            Track::Audio => self.audio_ssrc,
        };
        let t = match (w, found) {
            (Wanted::Tcp { channels }, Found::Unicast) => transport::reply_tcp(channels, ssrc),
            (Wanted::Udp { client_ports }, Found::Unicast) => {
                transport::reply_udp(client_ports, self.limits.udp_ports, ssrc)
            }
            (
                Wanted::Multicast,
                Found::Group {
                    ip,
                    ports,
                    ttl,
                    ssrc,
                },
            ) => transport::reply_multicast(ip, ports, ttl, ssrc),
            // The driver answered another transport than was chosen.
            _ => return Step::Reply(rtsp::response(461, cseq, &[], b"")),
        };
        self.camera.get_or_insert(camera);
        let s = SetUp {
            transport: w,
            url: uri,
        };
        match track {
            Track::Video => self.video = Some(s),
            Track::Audio => self.audio = Some(s),
        }
        Step::Reply(rtsp::response(
            200,
            cseq,
            &[("Transport", &t), ("Session", &self.header)],
            b"",
        ))
    }

    /// The PLAY reply once the driver started the media: `RTP-Info` names
    /// the sequence number and RTP time of the first video packet the
    /// viewer gets, if known; or the status that ends the session (the
    /// feed ended, the camera's viewer cap).
    pub fn played(&mut self, first: Result<Option<(u16, u32)>, u16>) -> Step {
        let Some(p) = self.pending.take() else {
            return Step::Close(rtsp::response(500, None, &[], b""));
        };
        let first = match first {
            Ok(f) => f,
            Err(status) => return Step::Close(rtsp::response(status, p.cseq.as_deref(), &[], b"")),
        };
        let Some(video) = &self.video else {
            return Step::Reply(rtsp::response(455, p.cseq.as_deref(), &[], b""));
        };
        self.playing = true;
        let mut info = format!("url={}", video.url);
        if let Some((seq, ts)) = first {
            info.push_str(&format!(";seq={seq};rtptime={ts}"));
        }
        if let Some(a) = &self.audio {
            info.push_str(&format!(",url={}", a.url));
        }
        Step::Reply(rtsp::response(
            200,
            p.cseq.as_deref(),
            &[
                ("Session", &self.header),
                ("Range", "npt=now-"),
                ("RTP-Info", &info),
            ],
            b"",
        ))
    }
}

/// Both TCP, both UDP unicast, or both multicast.
fn same_kind(a: Wanted, b: Wanted) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b)
}

/// Whether a playing UDP viewer is gone at `now`: neither an RTSP request
/// (`last_request`) nor a receiver report (`last_report`) within
/// `timeout`.
pub fn expired(
    last_request: Instant,
    last_report: Option<Instant>,
    now: Instant,
    timeout: Duration,
) -> bool {
    let alive = last_report.map_or(last_request, |t| t.max(last_request));
    now.saturating_duration_since(alive) > timeout
}

/// The next request in `buf`, skipping the interleaved frames (RTCP
/// receiver reports) a TCP viewer sends between requests; the bytes used.
/// `Ok(None)`: more bytes are needed.
pub fn next_request(buf: &[u8]) -> Result<Option<(Request, usize)>, rtsp::RtspError> {
    let mut skipped = 0;
    while buf.get(skipped) == Some(&b'$') {
        match crate::rtp::interleaved(&buf[skipped..]) {
            Ok(Some((_, _, used))) => skipped += used,
            _ => return Ok(None),
        }
    }
    Ok(rtsp::parse_request(&buf[skipped..])?.map(|(r, used)| (r, skipped + used)))
}

#[cfg(test)]
mod tests;
