//! Host redirector: an RTSP server (TCP interleaved). The first viewer of
//! `rtsp://HOST:PORT/SITE/CAMERA` opens the camera's stream through the
//! site's tunnel; later viewers share it; the last one leaving closes it
//! after a short linger. Each access unit is one reference-counted buffer;
//! every viewer gets the same buffer through its own bounded queue
//! ([`ViewerQueue`](revtun_proto::fanout::ViewerQueue)), so a slow viewer
//! costs only itself.
//!
//! Every shard accepts viewers on the same port (`SO_REUSEPORT`, the
//! kernel spreads connections), and RTSPS viewers (RTSP over TLS,
//! [`super::wire`]) on another port the same way. A viewer of a site
//! whose tunnel lives on another shard is served from a mirror of the
//! feed that receives the shared buffers by message ([`super::mesh`]).

use super::feed::{Feed, Frame, Viewer};
use super::mesh::{Link, MeshEnd, Msg};
use super::wire::Wire;
use super::writer::{write_all, writer};
use crate::signal::Signal;
use crate::tunnel::Tunnel;
use bytes::{Buf, Bytes, BytesMut};
use glommio::net::TcpListener;
use revtun_proto::handoff::shard_for;
use revtun_proto::rtsp;
use revtun_proto::rtsp_session::{next_request, Found, Limits, Session, Step, Track};
use revtun_proto::transport::Wanted;
use revtun_proto::video::{self, FLAG_KEY};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Redirector limits.
#[derive(Debug, Clone)]
pub struct VideoConfig {
    /// Bytes queued per viewer before it skips to the next keyframe.
    pub viewer_max_bytes: usize,
    /// Age of the oldest queued frame before it skips.
    pub viewer_max_age: Duration,
    /// A viewer whose socket takes nothing for this long is disconnected.
    pub viewer_stuck: Duration,
    /// Keyframe cache bound, bytes and frames.
    pub cache_bytes: usize,
    /// Keyframe cache bound, frames.
    pub cache_frames: usize,
    /// Live camera streams per site.
    pub max_streams_per_site: usize,
    /// A site's live streams together may use this many bits per second
    /// before new streams are refused (0: no limit).
    pub max_site_bps: u64,
    /// Time a feed stays open after its last viewer left.
    pub linger: Duration,
    /// Viewers need no credentials (`--allow-anonymous-viewers`).
    pub allow_anonymous: bool,
    /// Connection caps of the RTSP port.
    pub sessions: super::sessions::SessionLimits,
    /// Deadline of each request and reply before PLAY.
    pub request_timeout: Duration,
    /// Largest RTP payload of a UDP datagram (re-packetised to fit).
    pub rtp_mtu: usize,
    /// A UDP viewer with neither an RTSP request nor an RTCP receiver
    /// report for this long is dropped.
    pub rtp_timeout: Duration,
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig {
            viewer_max_bytes: 8 * 1024 * 1024,
            viewer_max_age: Duration::from_secs(2),
            viewer_stuck: Duration::from_secs(10),
            // Below the viewer bound, so a joiner's queue takes the whole group.
            cache_bytes: 4 * 1024 * 1024,
            cache_frames: 300,
            max_streams_per_site: 16,
            max_site_bps: 0,
            linger: Duration::from_secs(5),
            allow_anonymous: false,
            sessions: super::sessions::SessionLimits {
                total: 10_000,
                per_source: 64,
                per_camera: 2_000,
            },
            request_timeout: Duration::from_secs(10),
            rtp_mtu: 1400,
            rtp_timeout: Duration::from_secs(60),
        }
    }
}

type Registry = Rc<RefCell<HashMap<String, Tunnel>>>;
type Refusal = (u16, String);

/// One camera's multicast group on one shard: its address, and the one
/// sender (a consumer of the feed) that serves every member. Held by its
/// members' sessions; when the last one ends, the sender stops and the
/// address goes back to the range.
#[derive(Debug)]
pub struct Group {
    ip: std::net::Ipv4Addr,
    udp: Arc<super::udp::Udp>,
    ssrc: u32,
    audio_ssrc: u32,
    sender: RefCell<Option<Rc<Viewer>>>,
    site: String,
    cam: String,
}

impl Group {
    /// Starts the group's sender on `feed` if it is not running yet.
    fn start(
        &self,
        feed: &Rc<Feed>,
        codec: revtun_proto::rtp::Codec,
        cfg: &VideoConfig,
        latency: Rc<super::feed::SendLatency>,
    ) {
        if self.sender.borrow().as_ref().is_some_and(|v| !v.gone.get()) {
            return;
        }
        let v = feed.attach(
            Rc::new(Signal::default()),
            cfg.viewer_max_bytes,
            cfg.viewer_max_age,
            true,
        );
        let ((rtp, rtcp), (audio_rtp, audio_rtcp)) = self
            .udp
            .multicast
            .as_ref()
            .map_or((self.udp.ports, self.udp.ports), |m| {
                (m.ports, m.audio_ports)
            });
        *v.label.borrow_mut() = Some(super::feed::ViewerLabel {
            name: "group".into(),
            session: self.ip.to_string(),
            transport: "multicast",
        });
        let d = super::writer::UdpViewer {
            udp: self.udp.clone(),
            rtp: std::net::SocketAddr::new(self.ip.into(), rtp),
            rtcp: std::net::SocketAddr::new(self.ip.into(), rtcp),
            ssrc: self.ssrc,
            seq: rand_u64() as u16,
            codec,
            mtu: cfg.rtp_mtu,
            timeout: None,
            last_request: Rc::new(Cell::new(Instant::now())),
            // The camera's audio goes to the group's audio ports (sent
            // only when the feed has audio).
            audio: Some(super::writer::UdpAudio {
                rtp: std::net::SocketAddr::new(self.ip.into(), audio_rtp),
                rtcp: std::net::SocketAddr::new(self.ip.into(), audio_rtcp),
                ssrc: self.audio_ssrc,
                seq: rand_u64() as u16,
                clock: feed.audio_clock.get(),
            }),
        };
        glommio::spawn_local(super::writer::udp_writer(
            None,
            v.clone(),
            d,
            feed.clone(),
            cfg.viewer_stuck,
            latency,
        ))
        .detach();
        *self.sender.borrow_mut() = Some(v);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(v) = self.sender.borrow_mut().take() {
            v.gone.set(true);
            v.sig.notify();
        }
        if let Some(m) = &self.udp.multicast {
            m.give_back(self.ip);
        }
        tracing::info!(site = %self.site, camera = %self.cam, group = %self.ip, "multicast group closed");
    }
}

/// The redirector of one shard.
pub struct Redirector {
    shard: usize,
    shards: usize,
    registry: Registry,
    /// Origin feeds of this shard's sites and mirrors of other shards'.
    feeds: RefCell<HashMap<(String, String), Rc<Feed>>>,
    /// Mirrors by subscription id.
    mirrors: RefCell<HashMap<u64, Rc<Feed>>>,
    links: Vec<Option<Rc<Link>>>,
    next_sub: Cell<u64>,
    /// Limits; replaced on reload ([`Redirector::set_config`]).
    cfg: RefCell<Rc<VideoConfig>>,
    /// Host-added latency of this shard's viewer writes.
    latency: Rc<super::feed::SendLatency>,
    /// Who may watch what.
    gate: Rc<super::auth::Gate>,
    /// Connection caps (shared by every shard).
    sessions: Arc<super::sessions::Sessions>,
    /// RTP over UDP, when its sockets are bound.
    udp: Option<Arc<super::udp::Udp>>,
    /// This shard's multicast groups, by camera.
    groups: RefCell<HashMap<(String, String), std::rc::Weak<Group>>>,
}

impl std::fmt::Debug for Redirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirector")
            .field("shard", &self.shard)
            .field("feeds", &self.feeds.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Redirector {
    /// The limits in force.
    fn cfg(&self) -> Rc<VideoConfig> {
        self.cfg.borrow().clone()
    }

    /// Replaces the limits (a reload): they apply to feeds, viewers and
    /// requests from now on; the RTSP connection caps and the anonymous
    /// switch live in [`super::sessions::Sessions`] and the gate.
    pub fn set_config(&self, cfg: VideoConfig) {
        *self.cfg.borrow_mut() = Rc::new(cfg);
    }

    /// The redirector of shard `shard` of `shards`, over that shard's tunnels.
    pub fn new(
        shard: usize,
        shards: usize,
        registry: Registry,
        cfg: VideoConfig,
        gate: Rc<super::auth::Gate>,
        sessions: Arc<super::sessions::Sessions>,
        udp: Option<Arc<super::udp::Udp>>,
    ) -> Rc<Self> {
        Rc::new(Redirector {
            shard,
            shards,
            registry,
            feeds: RefCell::default(),
            mirrors: RefCell::default(),
            links: (0..shards)
                .map(|p| (p != shard).then(|| Rc::new(Link::default())))
                .collect(),
            next_sub: Cell::new(1),
            cfg: RefCell::new(Rc::new(cfg)),
            latency: Rc::default(),
            gate,
            sessions,
            udp,
            groups: RefCell::default(),
        })
    }

    /// Connects this shard's ends of the mesh and serves the peers'
    /// messages (call once, when there is more than one shard).
    pub fn join_mesh(self: &Rc<Self>, end: MeshEnd) {
        for (peer, tx) in end.senders.into_iter().enumerate() {
            let (Some(tx), Some(link)) = (tx, self.links[peer].clone()) else {
                continue;
            };
            glommio::spawn_local(async move { link.run(tx.connect().await).await }).detach();
        }
        for (peer, rx) in end.receivers.into_iter().enumerate() {
            let Some(rx) = rx else { continue };
            let me = self.clone();
            glommio::spawn_local(async move {
                let rx = rx.connect().await;
                while let Some(m) = rx.recv().await {
                    me.on_msg(peer, m);
                }
            })
            .detach();
        }
    }

    fn link(&self, peer: usize) -> Option<&Rc<Link>> {
        self.links.get(peer).and_then(Option::as_ref)
    }

    fn on_msg(self: &Rc<Self>, peer: usize, m: Msg) {
        let Some(link) = self.link(peer).cloned() else {
            return;
        };
        match m {
            Msg::Subscribe { sub, site, cam } => {
                let me = self.clone();
                glommio::spawn_local(async move {
                    match me.describe(&site, &cam).await {
                        Ok((feed, sdp)) => {
                            let v = feed.attach(
                                link.sig.clone(),
                                me.cfg().viewer_max_bytes,
                                me.cfg().viewer_max_age,
                                true,
                            );
                            link.add(sub, v, feed, sdp);
                        }
                        Err((status, why)) => link.refuse(sub, status, why),
                    }
                })
                .detach();
            }
            Msg::Unsubscribe { sub } => link.remove(sub),
            Msg::Sdp { sub, sdp } => {
                if let Some(f) = self.mirrors.borrow().get(&sub) {
                    f.set_sdp(sdp);
                }
            }
            Msg::Unit { sub, frame } => {
                let f = self.mirrors.borrow().get(&sub).cloned();
                if let Some(f) = f {
                    f.deliver(frame);
                }
            }
            Msg::Closed {
                sub,
                status,
                reason,
            } => {
                let f = self.mirrors.borrow_mut().remove(&sub);
                if let Some(f) = f {
                    f.close(status, reason);
                }
            }
        }
    }

    /// Metrics samples of this shard's feeds (`shard` is its label text).
    pub fn samples(&self, shard: &str) -> Vec<crate::metrics::Sample> {
        use crate::metrics::label;
        let mut out = Vec::new();
        self.latency.roll();
        if let Some(l) = self.latency.last() {
            for (q, v) in [
                ("0.5", l.p50),
                ("0.99", l.p99),
                ("0.999", l.p999),
                ("1", l.max),
            ] {
                out.push((
                    "revtun_video_send_latency_us",
                    format!("quantile=\"{q}\",{shard}"),
                    v,
                ));
            }
            out.push((
                "revtun_video_send_latency_frames",
                shard.to_string(),
                l.count,
            ));
        }
        for ((site, cam), f) in self.feeds.borrow().iter() {
            let owner = shard_for(site, self.shards) == self.shard;
            let l = format!(
                "site=\"{}\",camera=\"{}\",role=\"{}\",{shard}",
                label(site),
                label(cam),
                if owner { "origin" } else { "mirror" }
            );
            let c = f.counters.borrow().clone();
            let t = f.viewer_totals();
            out.extend([
                ("revtun_video_viewers", l.clone(), f.viewer_count() as u64),
                ("revtun_video_viewers_total", l.clone(), c.viewers_total),
                ("revtun_video_viewers_cut_total", l.clone(), c.viewers_cut),
                ("revtun_video_units_total", l.clone(), c.units),
                ("revtun_video_bytes_total", l.clone(), c.bytes),
                ("revtun_video_bitrate_bps", l.clone(), f.bps()),
                ("revtun_video_frames_sent_total", l.clone(), t.sent),
                ("revtun_video_frames_dropped_total", l.clone(), t.dropped),
                ("revtun_video_resyncs_total", l.clone(), t.resyncs),
                (
                    "revtun_video_udp_viewers",
                    l.clone(),
                    f.viewers.borrow().iter().filter(|v| v.udp.get()).count() as u64,
                ),
                ("revtun_video_udp_packets_total", l.clone(), c.udp_packets),
                (
                    "revtun_video_udp_reported_lost_total",
                    l.clone(),
                    c.udp_lost,
                ),
                (
                    "revtun_video_multicast_members",
                    l.clone(),
                    self.groups
                        .borrow()
                        .get(&(site.clone(), cam.clone()))
                        .map_or(0, |w| w.strong_count() as u64),
                ),
                (
                    "revtun_video_multicast_packets_total",
                    l,
                    c.multicast_packets,
                ),
            ]);
            // Each viewer's own counters (a multicast group's sender is
            // one "viewer" named `group`; members have no media of their
            // own).
            for v in f.viewers.borrow().iter() {
                let Some(who) = v.label.borrow().clone() else {
                    continue;
                };
                let l = format!(
                    "site=\"{}\",camera=\"{}\",viewer=\"{}\",session=\"{}\",transport=\"{}\",{shard}",
                    label(site),
                    label(cam),
                    label(&who.name),
                    label(&who.session),
                    who.transport
                );
                let stats = v.queue.borrow().stats;
                out.extend([
                    (
                        "revtun_video_viewer_frames_sent_total",
                        l.clone(),
                        stats.sent,
                    ),
                    (
                        "revtun_video_viewer_frames_dropped_total",
                        l.clone(),
                        stats.dropped,
                    ),
                    (
                        "revtun_video_viewer_packets_total",
                        l.clone(),
                        v.packets.get(),
                    ),
                    ("revtun_video_viewer_reported_lost_total", l, v.lost.get()),
                ]);
            }
        }
        out
    }

    /// Cameras streaming (origin feeds) and viewers (multicast members
    /// included) on this shard, by site.
    pub fn video_status(&self) -> Vec<crate::status::VideoStatus> {
        let mut by_site: HashMap<String, (u64, u64)> = HashMap::new();
        for ((site, _), f) in self.feeds.borrow().iter() {
            let e = by_site.entry(site.clone()).or_default();
            if shard_for(site, self.shards) == self.shard {
                e.0 += 1;
            }
            e.1 += f.viewer_count() as u64;
        }
        // Multicast members watch through their group's one sender.
        for ((site, _), g) in self.groups.borrow().iter() {
            by_site.entry(site.clone()).or_default().1 += g.strong_count() as u64;
        }
        by_site
            .into_iter()
            .map(|(site, (cameras, viewers))| crate::status::VideoStatus {
                site,
                cameras,
                viewers,
            })
            .collect()
    }

    /// Accepts viewers forever.
    pub async fn serve(self: Rc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok(c) => {
                    let ip = peer_ip(&c);
                    match self.sessions.admit(ip) {
                        Ok(guard) => {
                            let _ = c.set_nodelay(true);
                            glommio::spawn_local(self.clone().session(Wire::plain(c), ip, guard))
                                .detach();
                        }
                        // One line per refused connection would be a log
                        // flood: debug only.
                        Err(full) => {
                            tracing::debug!(%ip, ?full, "rtsp connection refused: session cap");
                            crate::tunnel::reject(c);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rtsp accept failed");
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Accepts RTSPS viewers forever: each one's TLS handshake runs in a
    /// task of its own, within [`super::wire::TLS_HANDSHAKE_DEADLINE`].
    pub async fn serve_tls(self: Rc<Self>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        loop {
            match listener.accept().await {
                Ok(c) => {
                    // The caps count TLS connections from accept on, so
                    // handshakes in progress are bounded too.
                    let ip = peer_ip(&c);
                    let guard = match self.sessions.admit(ip) {
                        Ok(g) => g,
                        Err(full) => {
                            tracing::debug!(%ip, ?full, "rtsps connection refused: session cap");
                            crate::tunnel::reject(c);
                            continue;
                        }
                    };
                    let _ = c.set_nodelay(true);
                    let me = self.clone();
                    let tls = tls.clone();
                    glommio::spawn_local(async move {
                        let deadline = super::wire::TLS_HANDSHAKE_DEADLINE;
                        match Wire::accept_tls(c, tls, deadline).await {
                            Ok(w) => {
                                tracing::debug!(version = ?w.tls_version(), "rtsps viewer connected");
                                me.session(w, ip, guard).await;
                            }
                            Err(e) => tracing::debug!(error = %e, "rtsps handshake failed"),
                        }
                    })
                    .detach();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rtsps accept failed");
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// The live feed of `site`/`cam` at this shard, opening it if needed.
    fn feed(self: &Rc<Self>, site: &str, cam: &str) -> Result<Rc<Feed>, Refusal> {
        let key = (site.to_string(), cam.to_string());
        if let Some(f) = self.feeds.borrow().get(&key).filter(|f| !f.is_closed()) {
            return Ok(f.clone());
        }
        let owner = shard_for(site, self.shards);
        if owner != self.shard {
            return Ok(self.mirror(key, owner));
        }
        let service = format!("{}{cam}", super::site::CAMERA_PREFIX);
        let local = self
            .registry
            .borrow()
            .get(site)
            .filter(|t| !t.is_closed())
            .cloned();
        // Not here: another host of the fleet holds the site, and its
        // camera comes over the peer link (once for this host).
        let (tunnel, service) = match local {
            Some(t) => (t, service),
            None => (
                crate::peer::shard()
                    .route(site)
                    .ok_or((404, format!("site {site} is not connected")))?,
                format!("{site}/{service}"),
            ),
        };
        self.admit(site)?;
        let pipe = tunnel.open_pipe(&service).map_err(|e| {
            // 404 only for a camera the site does not have; a known
            // one that cannot be opened now is unavailable.
            let status = match e {
                crate::tunnel::StreamError::UnknownService(_) => 404,
                _ => 503,
            };
            (status, format!("camera {cam} of site {site}: {e}"))
        })?;
        let feed = Feed::new(site, cam, self.cfg().cache_bytes, self.cfg().cache_frames);
        self.feeds.borrow_mut().insert(key.clone(), feed.clone());
        let me = self.clone();
        let f = feed.clone();
        glommio::spawn_local(async move {
            let (status, reason) = me.pump(&f, pipe).await;
            tracing::info!(site = %key.0, camera = %key.1, %reason, "feed closed");
            f.close(status, reason);
            me.forget(&key, &f);
        })
        .detach();
        Ok(feed)
    }

    /// Drops `feed` from the map of live feeds, unless a newer feed of the
    /// same camera has taken its place.
    fn forget(&self, key: &(String, String), feed: &Rc<Feed>) {
        let mut feeds = self.feeds.borrow_mut();
        if feeds.get(key).is_some_and(|cur| Rc::ptr_eq(cur, feed)) {
            feeds.remove(key);
        }
    }

    /// Admission of one more stream of `site` (streams and bandwidth).
    fn admit(&self, site: &str) -> Result<(), Refusal> {
        let feeds = self.feeds.borrow();
        let live: Vec<&Rc<Feed>> = feeds
            .iter()
            .filter(|((s, _), f)| s == site && !f.is_closed())
            .map(|(_, f)| f)
            .collect();
        if live.len() >= self.cfg().max_streams_per_site {
            return Err((
                453,
                format!("site {site} already has {} live streams", live.len()),
            ));
        }
        let bps: u64 = live.iter().map(|f| f.bps()).sum();
        if self.cfg().max_site_bps > 0 && bps >= self.cfg().max_site_bps {
            return Err((
                453,
                format!(
                    "site {site} already uses {bps} bit/s of its {} bit/s",
                    self.cfg().max_site_bps
                ),
            ));
        }
        Ok(())
    }

    /// A mirror of a feed whose site lives on shard `owner`.
    fn mirror(self: &Rc<Self>, key: (String, String), owner: usize) -> Rc<Feed> {
        let sub = self.next_sub.get();
        self.next_sub.set(sub + 1);
        let feed = Feed::new(
            &key.0,
            &key.1,
            self.cfg().cache_bytes,
            self.cfg().cache_frames,
        );
        self.feeds.borrow_mut().insert(key.clone(), feed.clone());
        self.mirrors.borrow_mut().insert(sub, feed.clone());
        let Some(link) = self.link(owner).cloned() else {
            feed.close(503, "no route to the shard of this site".into());
            return feed;
        };
        link.post(Msg::Subscribe {
            sub,
            site: key.0.clone(),
            cam: key.1.clone(),
        });
        let me = self.clone();
        let f = feed.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(250)).await;
                if f.is_closed() {
                    break;
                }
                if f.idle_for(me.cfg().linger) {
                    link.post(Msg::Unsubscribe { sub });
                    f.close(404, "no viewers".into());
                    break;
                }
            }
            me.mirrors.borrow_mut().remove(&sub);
            me.forget(&key, &f);
        })
        .detach();
        feed
    }

    /// Reads the feed from the tunnel and fans it out; returns why it ended.
    async fn pump(&self, feed: &Rc<Feed>, pipe: crate::tunnel::Pipe) -> Refusal {
        let mut acc = BytesMut::new();
        let mut check = Instant::now();
        loop {
            let recv =
                glommio::timer::timeout(Duration::from_secs(1), async { Ok(pipe.recv().await) })
                    .await;
            let chunk = match recv {
                Ok(Some(c)) => Some(c),
                Ok(None) => return (503, "the site ended the stream".into()),
                Err(_) => None,
            };
            if let Some(c) = chunk {
                acc.extend_from_slice(&c);
            }
            loop {
                let size = match video::message_size(&acc) {
                    Ok(Some(n)) if acc.len() >= n => n,
                    Ok(_) => break,
                    Err(e) => return (502, format!("bad feed: {e}")),
                };
                // Each message gets an allocation of its own size: frames
                // live on in viewer queues and the keyframe cache, and a
                // slice of `acc` would pin its whole (growing) buffer for
                // as long, so those bounds would not hold. One copy per
                // access unit at the host, never per viewer.
                let msg = Bytes::copy_from_slice(&acc[..size]);
                acc.advance(size);
                match msg[4] {
                    video::KIND_SDP => {
                        let sdp = String::from_utf8_lossy(&msg[5..]);
                        match video::video_only_sdp(&sdp) {
                            Some(sdp) => feed.set_sdp(sdp),
                            None => {
                                return (415, "the camera offers no H.264 or H.265 video".into())
                            }
                        }
                    }
                    video::KIND_UNIT => {
                        let unit = match video::decode_unit(&msg) {
                            Ok(u) => u,
                            Err(e) => return (502, format!("bad feed: {e}")),
                        };
                        let audio = unit.flags & video::FLAG_AUDIO != 0;
                        feed.deliver(Arc::new(Frame {
                            arrived: Instant::now(),
                            keyframe: unit.flags & FLAG_KEY != 0 && !audio,
                            audio,
                            msg,
                            packets: unit.packets,
                            udp: std::sync::OnceLock::new(),
                        }));
                    }
                    // The site has the camera but cannot pull it (down,
                    // refusing, unsupported transport): unavailable.
                    video::KIND_GONE => {
                        return (
                            503,
                            format!("camera gone: {}", String::from_utf8_lossy(&msg[5..])),
                        );
                    }
                    _ => return (502, "bad feed: unknown message".into()),
                }
            }
            // Linger: close when nobody watched for a while.
            if check.elapsed() >= Duration::from_millis(500) {
                check = Instant::now();
                if feed.idle_for(self.cfg().linger) {
                    return (404, "no viewers".into());
                }
            }
        }
    }

    /// One RTSP client connection.
    /// One viewer connection: reads requests, checks each at the gate,
    /// and answers them through the sans-IO session
    /// ([`revtun_proto::rtsp_session`]), doing what its steps ask: find
    /// the feed, join a multicast group, start the media.
    async fn session(
        self: Rc<Self>,
        conn: Wire,
        peer_ip: std::net::IpAddr,
        mut guard: super::sessions::SessionGuard,
    ) {
        let tls = conn.is_tls();
        let cfg = self.cfg();
        let limit = cfg.request_timeout;
        let mut conn_auth = super::auth::ConnAuth::default();
        let mut who = super::auth::Who::Anonymous;
        let conn = Rc::new(conn);
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 8192];
        let limits = Limits {
            offered: revtun_proto::transport::Offered {
                udp: self.udp.is_some(),
                multicast: self.udp.as_ref().is_some_and(|u| u.multicast.is_some()),
            },
            udp_ports: self.udp.as_ref().map_or((0, 0), |u| u.ports),
            request: limit,
            timeout: cfg.rtp_timeout,
        };
        let mut sess = Session::new(
            rand_u64(),
            (rand_u64() as u32, rand_u64() as u32),
            limits,
            Instant::now(),
        );
        let mut feed: Option<Rc<Feed>> = None;
        let mut viewer: Option<Rc<Viewer>> = None;
        // The multicast group this session joined at SETUP (it leaves it
        // when the session ends; the group ends with its last member).
        let mut group: Option<Rc<Group>> = None;
        let last_request = Rc::new(Cell::new(Instant::now()));
        loop {
            let (req, used) = match next_request(&buf) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    if let Some(v) = &viewer {
                        // Replies wait for a viewer that does not read:
                        // read no more requests until they leave.
                        loop {
                            let drained = v.drained.wait();
                            if v.gone.get() || v.replies.borrow().len() < MAX_QUEUED_REPLIES {
                                break;
                            }
                            drained.await;
                        }
                        if v.gone.get() {
                            break;
                        }
                    }
                    let n = match sess.deadline() {
                        None => conn.read(&mut chunk).await.unwrap_or(0),
                        Some(deadline) => {
                            let left = deadline.saturating_duration_since(Instant::now());
                            let read = async { Ok(conn.read(&mut chunk).await) };
                            match glommio::timer::timeout(left, read).await {
                                Ok(r) => r.unwrap_or(0),
                                Err(_) => {
                                    tracing::debug!(ip = %peer_ip, "rtsp client too slow to send a request; closing");
                                    0
                                }
                            }
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e) => {
                    let reply = rtsp::response(e.status(), None, &[], b"");
                    let _ = write_timed(&conn, &reply, limit).await;
                    break;
                }
            };
            buf.drain(..used);
            let now = Instant::now();
            last_request.set(now);
            let cseq = req.cseq();
            // Credentials first: nothing below runs (no feed opens, no
            // site pulls a camera) for a request that does not pass.
            let denied = match self.gate.check(&req, peer_ip, tls, &mut conn_auth).await {
                super::auth::Verdict::Pass(w) => {
                    who = w;
                    None
                }
                super::auth::Verdict::Challenge { stale } => {
                    Some(self.gate.challenge(peer_ip, cseq, stale, tls))
                }
                super::auth::Verdict::NotReady => Some(rtsp::response(503, cseq, &[], b"")),
                super::auth::Verdict::Refuse => break,
            };
            // A request for a camera: names checked, then permission.
            let refused = denied.or_else(|| match sess.concerns(&req) {
                Err(status) => Some(rtsp::response(status, cseq, &[], b"")),
                Ok(Some((site, cam))) if !self.gate.allows(&who, site, cam) => {
                    tracing::info!(viewer = %who.label(), %site, camera = %cam, "viewer not allowed this camera");
                    Some(rtsp::response(403, cseq, &[], b""))
                }
                Ok(_) => None,
            });
            let step = match refused {
                Some(r) => {
                    sess.heard(now);
                    Step::Reply(r)
                }
                None => sess.request(&req, now),
            };
            let step = match step {
                Step::Describe { site, cam } => match self.describe(&site, &cam).await {
                    Ok((f, sdp)) => {
                        let step = sess.described(Ok(&sdp));
                        if sess.camera() == Some((f.site.as_str(), f.cam.as_str())) {
                            feed = Some(f);
                        }
                        step
                    }
                    Err((status, why)) => {
                        tracing::info!(uri = %req.uri, status, %why, "describe refused");
                        sess.described(Err(status))
                    }
                },
                Step::Setup {
                    site,
                    cam,
                    track,
                    transport,
                } => {
                    let f = match &feed {
                        Some(f) => Ok(f.clone()),
                        None => self.describe(&site, &cam).await.map(|(f, _)| f),
                    };
                    match f {
                        Ok(f) => {
                            feed = Some(f.clone());
                            let found = match transport {
                                Wanted::Multicast => self.join(&f, track, &mut group),
                                _ => Ok(Found::Unicast),
                            };
                            sess.set_up(found)
                        }
                        Err((status, why)) => {
                            tracing::info!(uri = %req.uri, status, %why, "setup refused");
                            sess.set_up(Err(status))
                        }
                    }
                }
                Step::Play { .. } => {
                    let Some(f) = feed.clone() else { break };
                    let started = self
                        .play(
                            &conn,
                            &mut sess,
                            &f,
                            &mut guard,
                            (&who, peer_ip),
                            (&group, &last_request),
                        )
                        .await;
                    match started {
                        Some(v) => {
                            viewer = Some(v);
                            continue;
                        }
                        None => break,
                    }
                }
                other => other,
            };
            let (reply, close) = match step {
                Step::Reply(r) => (r, false),
                Step::Close(r) => (r, true),
                // Every driver step was answered above.
                Step::Describe { .. } | Step::Setup { .. } | Step::Play { .. } => break,
            };
            match &viewer {
                // The writer sends it between access units (then closes,
                // for a reply that ends the session).
                Some(v) => {
                    v.replies.borrow_mut().extend_from_slice(&reply);
                    v.sig.notify();
                }
                None => {
                    if write_timed(&conn, &reply, limit).await.is_err() {
                        break;
                    }
                }
            }
            if close {
                break;
            }
        }
        if let Some(v) = viewer {
            v.gone.set(true);
            v.sig.notify();
        }
    }

    /// Joins this session to the multicast group of `feed` (the group's
    /// ports for `track`).
    fn join(
        &self,
        feed: &Rc<Feed>,
        track: Track,
        group: &mut Option<Rc<Group>>,
    ) -> Result<Found, u16> {
        let Some(udp) = &self.udp else {
            return Err(461);
        };
        let Some(m) = udp.multicast.as_ref() else {
            return Err(461);
        };
        let Some(g) = group
            .clone()
            .or_else(|| self.group(&feed.site, &feed.cam, udp))
        else {
            tracing::warn!(site = %feed.site, camera = %feed.cam, "no multicast group left in --multicast-range");
            return Err(453);
        };
        let (ports, ssrc) = match track {
            Track::Video => (m.ports, g.ssrc),
            Track::Audio => (m.audio_ports, g.audio_ssrc),
        };
        let found = Found::Group {
            ip: g.ip,
            ports,
            ttl: m.ttl,
            ssrc,
        };
        *group = Some(g);
        Ok(found)
    }

    /// PLAY: checks the feed and the camera's viewer cap, attaches the
    /// viewer, sends the reply (its `RTP-Info` naming the first packet
    /// the viewer gets) and starts its writer. `None` when the session
    /// ends instead (the refusal was sent).
    async fn play(
        &self,
        conn: &Rc<Wire>,
        sess: &mut Session,
        feed: &Rc<Feed>,
        guard: &mut super::sessions::SessionGuard,
        (who, peer_ip): (&super::auth::Who, std::net::IpAddr),
        (group, last_request): (&Option<Rc<Group>>, &Rc<Cell<Instant>>),
    ) -> Option<Rc<Viewer>> {
        let cfg = self.cfg();
        let limit = cfg.request_timeout;
        let refuse = |sess: &mut Session, status| match sess.played(Err(status)) {
            Step::Reply(r) | Step::Close(r) => r,
            _ => Vec::new(),
        };
        let closed = feed.closed.borrow().clone();
        if let Some((status, why)) = closed {
            tracing::info!(site = %feed.site, camera = %feed.cam, status, %why, "play refused: the feed ended");
            let _ = write_timed(conn, &refuse(sess, status), limit).await;
            return None;
        }
        if guard.play(&feed.site, &feed.cam).is_err() {
            tracing::info!(site = %feed.site, camera = %feed.cam, "play refused: the camera's viewer cap is reached");
            let _ = write_timed(conn, &refuse(sess, 453), limit).await;
            return None;
        }
        let video = sess.video()?.transport;
        let audio = sess.audio().map(|a| a.transport);
        let (ssrc, audio_ssrc) = sess.ssrcs();
        let v = if matches!(video, Wanted::Multicast) {
            // RTP-Info below names no packet: the group's sender is this
            // feed's consumer, not us.
            Feed::detached(cfg.viewer_max_bytes, cfg.viewer_max_age)
        } else {
            feed.attach(
                Rc::new(Signal::default()),
                cfg.viewer_max_bytes,
                cfg.viewer_max_age,
                false,
            )
        };
        *v.label.borrow_mut() = Some(super::feed::ViewerLabel {
            name: who.label(),
            session: sess.id().to_string(),
            transport: match video {
                Wanted::Tcp { .. } => "tcp",
                Wanted::Udp { .. } => "udp",
                Wanted::Multicast => "multicast",
            },
        });
        self.gate.watch(who, &feed.site, &feed.cam, &v);
        let udp_seq = rand_u64() as u16;
        // RTP-Info names the first packet this viewer gets: the cached
        // keyframe's, or the next one's (waited for briefly); over UDP
        // with our sequence numbers.
        let first = match video {
            Wanted::Multicast => None,
            Wanted::Udp { .. } => first_packet(&v, READY_FOR_PLAY)
                .await
                .map(|(_, ts)| (udp_seq, ts)),
            Wanted::Tcp { .. } => first_packet(&v, READY_FOR_PLAY).await,
        };
        let reply = match sess.played(Ok(first)) {
            Step::Reply(r) => r,
            _ => return None,
        };
        if write_timed(conn, &reply, limit).await.is_err() {
            v.gone.set(true);
            return None;
        }
        let clock = feed.audio_clock.get();
        match (video, &self.udp, feed.codec.get()) {
            (Wanted::Udp { client_ports }, Some(udp), Some(codec)) => {
                v.udp.set(true);
                let d = super::writer::UdpViewer {
                    udp: udp.clone(),
                    rtp: std::net::SocketAddr::new(peer_ip, client_ports.0),
                    rtcp: std::net::SocketAddr::new(peer_ip, client_ports.1),
                    ssrc,
                    seq: udp_seq,
                    codec,
                    mtu: cfg.rtp_mtu,
                    timeout: Some(cfg.rtp_timeout),
                    last_request: last_request.clone(),
                    audio: match audio {
                        Some(Wanted::Udp { client_ports }) => Some(super::writer::UdpAudio {
                            rtp: std::net::SocketAddr::new(peer_ip, client_ports.0),
                            rtcp: std::net::SocketAddr::new(peer_ip, client_ports.1),
                            ssrc: audio_ssrc,
                            seq: rand_u64() as u16,
                            clock,
                        }),
                        _ => None,
                    },
                };
                glommio::spawn_local(super::writer::udp_writer(
                    Some(conn.clone()),
                    v.clone(),
                    d,
                    feed.clone(),
                    cfg.viewer_stuck,
                    self.latency.clone(),
                ))
                .detach();
            }
            (Wanted::Multicast, Some(_), Some(codec)) => {
                // This session is a member: its media is the group's,
                // sent once for all members.
                let g = group.as_ref()?;
                g.start(feed, codec, &cfg, self.latency.clone());
                v.udp.set(true);
                glommio::spawn_local(super::writer::member_writer(
                    conn.clone(),
                    v.clone(),
                    cfg.viewer_stuck,
                ))
                .detach();
            }
            (Wanted::Tcp { channels }, _, _) => {
                let audio = match audio {
                    Some(Wanted::Tcp { channels }) => {
                        Some(super::writer::TcpAudio { channels, clock })
                    }
                    _ => None,
                };
                glommio::spawn_local(writer(
                    conn.clone(),
                    v.clone(),
                    (channels, audio),
                    cfg.viewer_stuck,
                    self.latency.clone(),
                ))
                .detach();
            }
            _ => {
                tracing::warn!(site = %feed.site, camera = %feed.cam, "play over a transport this feed cannot serve");
                v.gone.set(true);
                return None;
            }
        }
        Some(v)
    }

    /// This shard's multicast group of `site`/`cam`: the live one, or a new
    /// one from the range (`None` when the range is used up).
    fn group(&self, site: &str, cam: &str, udp: &Arc<super::udp::Udp>) -> Option<Rc<Group>> {
        let key = (site.to_string(), cam.to_string());
        if let Some(g) = self
            .groups
            .borrow()
            .get(&key)
            .and_then(std::rc::Weak::upgrade)
        {
            return Some(g);
        }
        let ip = udp.multicast.as_ref()?.take()?;
        tracing::info!(%site, camera = %cam, group = %ip, "multicast group opened");
        let g = Rc::new(Group {
            ip,
            udp: udp.clone(),
            ssrc: rand_u64() as u32,
            audio_ssrc: rand_u64() as u32,
            sender: RefCell::new(None),
            site: site.to_string(),
            cam: cam.to_string(),
        });
        let mut groups = self.groups.borrow_mut();
        groups.retain(|_, w| w.strong_count() > 0);
        groups.insert(key, Rc::downgrade(&g));
        Some(g)
    }

    /// Serves camera `cam` of `site` (held on this shard) to a fleet peer
    /// that asked for it over a peer link: the feed messages of this
    /// host's own feed (opened for it if nobody watches here yet), in the
    /// site's wire format, so the peer's redirector reads them as it
    /// would the site's. The peer is one consumer of the feed like a
    /// viewer (its queue bounded by the viewer limits; a peer that falls
    /// behind skips to the next keyframe), so the camera crosses the
    /// site's uplink once however many hosts watch it. Ends when the
    /// feed closes (a GONE message with the reason, then END) or when
    /// the peer ends or resets the stream.
    pub async fn serve_peer(self: &Rc<Self>, pipe: &crate::tunnel::Pipe, site: &str, cam: &str) {
        let gone = |reason: &str| {
            let mut m = Vec::with_capacity(reason.len() + 5);
            video::header(video::KIND_GONE, reason.len(), &mut m);
            m.extend_from_slice(reason.as_bytes());
            m
        };
        let (feed, sdp) = match self.describe(site, cam).await {
            Ok(x) => x,
            Err((status, why)) => {
                tracing::debug!(%site, camera = %cam, status, %why, "camera refused to a peer");
                if pipe.send(&gone(&why)).await.is_ok() {
                    pipe.finish();
                }
                return;
            }
        };
        let sig = Rc::new(Signal::default());
        let cfg = self.cfg();
        let v = feed.attach(sig.clone(), cfg.viewer_max_bytes, cfg.viewer_max_age, true);
        /// Marks the consumer gone however this ends.
        struct Leave(Rc<Viewer>);
        impl Drop for Leave {
            fn drop(&mut self) {
                self.0.gone.set(true);
            }
        }
        let _leave = Leave(v.clone());
        tracing::info!(%site, camera = %cam, "camera served to a fleet peer");
        let send = async {
            let mut m = Vec::with_capacity(sdp.len() + 5);
            video::header(video::KIND_SDP, sdp.len(), &mut m);
            m.extend_from_slice(sdp.as_bytes());
            if pipe.send(&m).await.is_err() {
                return;
            }
            loop {
                let wake = sig.wait();
                if v.gone.get() {
                    let reason = feed.closed.borrow().clone().map(|(_, r)| r);
                    if pipe
                        .send(&gone(reason.as_deref().unwrap_or("feed closed")))
                        .await
                        .is_ok()
                    {
                        pipe.finish();
                    }
                    return;
                }
                let mut progress = false;
                loop {
                    let next = v.queue.borrow_mut().pop(Instant::now());
                    let Some(frame) = next else { break };
                    if pipe.send(&frame.msg).await.is_err() {
                        return;
                    }
                    v.queue.borrow_mut().progressed(Instant::now());
                    progress = true;
                }
                if !progress {
                    wake.await;
                }
            }
        };
        // The peer sends nothing after its request: its END or reset is
        // the end of its interest.
        let watch = async { while pipe.recv().await.is_some() {} };
        futures_lite::future::or(send, watch).await;
    }

    async fn describe(
        self: &Rc<Self>,
        site: &str,
        cam: &str,
    ) -> Result<(Rc<Feed>, String), Refusal> {
        // A site that has just connected: wait for its services to be known.
        let tunnel = self.registry.borrow().get(site).cloned();
        if let Some(t) = tunnel {
            t.ready(crate::host::READY_WAIT).await;
        }
        let feed = self.feed(site, cam)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let wait = feed.ready.wait();
            if let Some(sdp) = feed.sdp.borrow().clone() {
                return Ok((feed.clone(), sdp));
            }
            if let Some(refusal) = feed.closed.borrow().clone() {
                return Err(refusal);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err((503, "camera did not answer in time".into()));
            }
            let _ = glommio::timer::timeout(left, async {
                wait.await;
                Ok(())
            })
            .await;
        }
    }
}

/// The client address of an accepted connection (0.0.0.0 if unknown).
fn peer_ip(c: &glommio::net::TcpStream) -> std::net::IpAddr {
    c.peer_addr()
        .map_or(std::net::IpAddr::from([0u8; 4]), |a| a.ip())
}

/// How long PLAY waits for a first frame to name in `RTP-Info`.
const READY_FOR_PLAY: Duration = Duration::from_secs(2);

/// The sequence number and RTP time of the first packet `v` will get,
/// waiting up to `limit` for a frame.
async fn first_packet(v: &Rc<Viewer>, limit: Duration) -> Option<(u16, u32)> {
    let deadline = Instant::now() + limit;
    loop {
        let wake = v.sig.wait();
        let first = v.queue.borrow().front().and_then(|f| {
            let r = f.packets.first()?;
            let h = revtun_proto::rtp::parse(f.msg.get(r.clone())?).ok()?;
            Some((h.seq, h.timestamp))
        });
        let left = deadline.saturating_duration_since(Instant::now());
        if first.is_some() || left.is_zero() {
            return first;
        }
        let _ = glommio::timer::timeout(left, async {
            wake.await;
            Ok(())
        })
        .await;
    }
}

/// Replies queued for a playing viewer before its requests are no longer
/// read (a viewer that pipelines requests and never reads costs this).
pub const MAX_QUEUED_REPLIES: usize = 64 * 1024;

/// Writes a reply before PLAY, within `limit`.
async fn write_timed(conn: &Rc<Wire>, data: &[u8], limit: Duration) -> std::io::Result<()> {
    glommio::timer::timeout(limit, async {
        write_all(conn, data)
            .await
            .map_err(glommio::GlommioError::IoError)
    })
    .await
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::TimedOut, e.to_string()))
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b)
}
