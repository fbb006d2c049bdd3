//! Host redirector: an RTSP server (TCP interleaved). The first viewer of
//! `rtsp://HOST:PORT/SITE/CAMERA` opens the camera's stream through the
//! site's tunnel; later viewers share it; the last one leaving closes it
//! after a short linger. Each access unit is one reference-counted buffer;
//! every viewer gets the same buffer through its own bounded queue
//! ([`ViewerQueue`]), so a slow viewer costs only itself.
//!
//! Scope today: the RTSP listener runs on shard 0 and serves sites whose
//! tunnel lives on shard 0 (run the host with `--shards 1` for video);
//! viewers of sites on other shards get 503.

use crate::signal::Signal;
use crate::tunnel::Tunnel;
use bytes::{Bytes, BytesMut};
use glommio::net::{TcpListener, TcpStream};
use revtun_proto::fanout::{KeyframeCache, Meta, Offer, ViewerQueue};
use revtun_proto::rtsp::{self, Method};
use revtun_proto::video::{self, FLAG_KEY};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;
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
    /// Time a feed stays open after its last viewer left.
    pub linger: Duration,
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
            linger: Duration::from_secs(5),
        }
    }
}

/// One access unit, shared by every viewer.
#[derive(Debug)]
struct Frame {
    msg: Bytes,
    packets: Vec<Range<usize>>,
}

struct Viewer {
    queue: RefCell<ViewerQueue<Rc<Frame>>>,
    sig: Signal,
    gone: Cell<bool>,
    /// RTSP replies after PLAY: the writer sends them between access
    /// units, so they never land inside an interleaved frame.
    replies: RefCell<Vec<u8>>,
}

struct Feed {
    sdp: RefCell<Option<String>>,
    ready: Signal,
    viewers: RefCell<Vec<Rc<Viewer>>>,
    cache: RefCell<KeyframeCache<Rc<Frame>>>,
    closed: RefCell<Option<String>>,
    last_viewer_left: Cell<Option<Instant>>,
}

type Registry = Rc<RefCell<HashMap<String, Tunnel>>>;

/// The redirector of one shard.
pub struct Redirector {
    registry: Registry,
    feeds: RefCell<HashMap<(String, String), Rc<Feed>>>,
    cfg: VideoConfig,
}

impl std::fmt::Debug for Redirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirector")
            .field("feeds", &self.feeds.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Redirector {
    /// A redirector over the shard's tunnels.
    pub fn new(registry: Registry, cfg: VideoConfig) -> Rc<Self> {
        Rc::new(Redirector {
            registry,
            feeds: RefCell::default(),
            cfg,
        })
    }

    /// Accepts viewers forever.
    pub async fn serve(self: Rc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok(c) => {
                    let _ = c.set_nodelay(true);
                    glommio::spawn_local(self.clone().session(c)).detach();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rtsp accept failed");
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn feed(self: &Rc<Self>, site: &str, cam: &str) -> Result<Rc<Feed>, (u16, String)> {
        let key = (site.to_string(), cam.to_string());
        if let Some(f) = self
            .feeds
            .borrow()
            .get(&key)
            .filter(|f| f.closed.borrow().is_none())
        {
            return Ok(f.clone());
        }
        let tunnel = self
            .registry
            .borrow()
            .get(site)
            .filter(|t| !t.is_closed())
            .cloned()
            .ok_or((404, format!("site {site} is not connected here")))?;
        let live = self
            .feeds
            .borrow()
            .keys()
            .filter(|(s, _)| s == site)
            .count();
        if live >= self.cfg.max_streams_per_site {
            return Err((453, format!("site {site} already has {live} live streams")));
        }
        let pipe = tunnel
            .open_pipe(&format!("{}{cam}", super::site::CAMERA_PREFIX))
            .map_err(|e| (404, format!("camera {cam} of site {site}: {e}")))?;
        let feed = Rc::new(Feed {
            sdp: RefCell::new(None),
            ready: Signal::default(),
            viewers: RefCell::default(),
            cache: RefCell::new(KeyframeCache::new(
                self.cfg.cache_bytes,
                self.cfg.cache_frames,
            )),
            closed: RefCell::new(None),
            last_viewer_left: Cell::new(Some(Instant::now())),
        });
        self.feeds.borrow_mut().insert(key.clone(), feed.clone());
        let me = self.clone();
        let f = feed.clone();
        glommio::spawn_local(async move {
            let reason = me.pump(&f, pipe).await;
            tracing::info!(site = %key.0, camera = %key.1, %reason, "feed closed");
            *f.closed.borrow_mut() = Some(reason);
            f.ready.notify();
            for v in f.viewers.borrow().iter() {
                v.gone.set(true);
                v.sig.notify();
            }
            let mut feeds = me.feeds.borrow_mut();
            if feeds.get(&key).is_some_and(|cur| Rc::ptr_eq(cur, &f)) {
                feeds.remove(&key);
            }
        })
        .detach();
        Ok(feed)
    }

    /// Reads the feed from the tunnel and fans it out.
    async fn pump(&self, feed: &Rc<Feed>, pipe: crate::tunnel::Pipe) -> String {
        let mut acc = BytesMut::new();
        let mut check = Instant::now();
        loop {
            let recv =
                glommio::timer::timeout(Duration::from_secs(1), async { Ok(pipe.recv().await) })
                    .await;
            let chunk = match recv {
                Ok(Some(c)) => Some(c),
                Ok(None) => return "the site ended the stream".into(),
                Err(_) => None,
            };
            if let Some(c) = chunk {
                acc.extend_from_slice(&c);
            }
            loop {
                let size = match video::message_size(&acc) {
                    Ok(Some(n)) if acc.len() >= n => n,
                    Ok(_) => break,
                    Err(e) => return format!("bad feed: {e}"),
                };
                let msg = acc.split_to(size).freeze();
                match msg[4] {
                    video::KIND_SDP => {
                        *feed.sdp.borrow_mut() =
                            Some(String::from_utf8_lossy(&msg[5..]).into_owned());
                        feed.ready.notify();
                    }
                    video::KIND_UNIT => {
                        let unit = match video::decode_unit(&msg) {
                            Ok(u) => u,
                            Err(e) => return format!("bad feed: {e}"),
                        };
                        let meta = Meta {
                            keyframe: unit.flags & FLAG_KEY != 0,
                            bytes: msg.len(),
                            at: Instant::now(),
                        };
                        let frame = Rc::new(Frame {
                            msg,
                            packets: unit.packets,
                        });
                        feed.cache.borrow_mut().push(meta, &frame);
                        for v in feed.viewers.borrow().iter() {
                            if v.queue.borrow_mut().offer(meta, frame.clone()) != Offer::Skipped {
                                v.sig.notify();
                            }
                        }
                    }
                    video::KIND_GONE => {
                        return format!("camera gone: {}", String::from_utf8_lossy(&msg[5..]));
                    }
                    _ => return "bad feed: unknown message".into(),
                }
            }
            // Linger: close when nobody watched for a while.
            if check.elapsed() >= Duration::from_millis(500) {
                check = Instant::now();
                feed.viewers.borrow_mut().retain(|v| !v.gone.get());
                if feed.viewers.borrow().is_empty() {
                    let since = feed
                        .last_viewer_left
                        .get()
                        .get_or_insert(Instant::now())
                        .elapsed();
                    if since >= self.cfg.linger {
                        return "no viewers".into();
                    }
                } else {
                    feed.last_viewer_left.set(None);
                }
            }
        }
    }

    /// One RTSP client connection.
    async fn session(self: Rc<Self>, conn: TcpStream) {
        let conn = Rc::new(RefCell::new(conn));
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 8192];
        let session_id = format!("{:016x}", rand_u64());
        let mut setup: Option<(Rc<Feed>, u8)> = None;
        let mut viewer: Option<Rc<Viewer>> = None;
        loop {
            // Interleaved RTCP from the viewer is skipped.
            while buf.first() == Some(&b'$') {
                match revtun_proto::rtp::interleaved(&buf) {
                    Ok(Some((_, _, used))) => {
                        buf.drain(..used);
                    }
                    _ => break,
                }
            }
            let parsed = rtsp::parse_request(&buf);
            let (req, used) = match parsed {
                Ok(Some(x)) => x,
                Ok(None) => {
                    // The writer task shares the socket: borrow only per poll.
                    let n = std::future::poll_fn(|cx| {
                        futures_lite::AsyncRead::poll_read(
                            std::pin::Pin::new(&mut *conn.borrow_mut()),
                            cx,
                            &mut chunk,
                        )
                    })
                    .await
                    .unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e) => {
                    let reply = rtsp::response(e.status(), None, &[], b"");
                    let _ = write_all(&conn, &reply).await;
                    break;
                }
            };
            buf.drain(..used);
            let cseq = req.cseq().map(str::to_string);
            let path = req.path();
            let sess: &[(&str, &str)] = &[("Session", &session_id)];
            let reply = match req.method {
                Method::Options => rtsp::response(
                    200,
                    cseq.as_deref(),
                    &[(
                        "Public",
                        "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER, SET_PARAMETER",
                    )],
                    b"",
                ),
                Method::Describe => match path.as_slice() {
                    [site, cam, ..] => match self.describe(site, cam).await {
                        Ok((feed, sdp)) => {
                            let base = format!("{}/", req.uri.trim_end_matches('/'));
                            setup = Some((feed, 0));
                            rtsp::response(
                                200,
                                cseq.as_deref(),
                                &[("Content-Type", "application/sdp"), ("Content-Base", &base)],
                                sdp.as_bytes(),
                            )
                        }
                        Err((status, why)) => {
                            tracing::info!(uri = %req.uri, status, %why, "describe refused");
                            rtsp::response(status, cseq.as_deref(), &[], b"")
                        }
                    },
                    _ => rtsp::response(404, cseq.as_deref(), &[], b""),
                },
                Method::Setup => {
                    let transport = req.header("Transport").unwrap_or("");
                    match (rtsp::interleaved_channels(transport), &setup) {
                        (None, _) => rtsp::response(461, cseq.as_deref(), &[], b""),
                        (Some(_), None) => match path.as_slice() {
                            [site, cam, ..] => match self.describe(site, cam).await {
                                Ok((feed, _)) => {
                                    setup = Some((feed, 0));
                                    self.setup_reply(
                                        &mut setup,
                                        transport,
                                        cseq.as_deref(),
                                        &session_id,
                                    )
                                }
                                Err((status, _)) => {
                                    rtsp::response(status, cseq.as_deref(), &[], b"")
                                }
                            },
                            _ => rtsp::response(404, cseq.as_deref(), &[], b""),
                        },
                        (Some(_), Some(_)) => {
                            self.setup_reply(&mut setup, transport, cseq.as_deref(), &session_id)
                        }
                    }
                }
                Method::Play => match &setup {
                    Some((feed, channel)) if viewer.is_none() => {
                        let v = Rc::new(Viewer {
                            queue: RefCell::new(ViewerQueue::new(
                                self.cfg.viewer_max_bytes,
                                self.cfg.viewer_max_age,
                                Instant::now(),
                            )),
                            sig: Signal::default(),
                            gone: Cell::new(false),
                            replies: RefCell::default(),
                        });
                        // A new viewer starts at the cached keyframe at once.
                        // Their age counts from now: they enter this
                        // viewer's queue now, however old the group is.
                        let now = Instant::now();
                        for (meta, f) in feed.cache.borrow().frames() {
                            v.queue
                                .borrow_mut()
                                .offer(Meta { at: now, ..*meta }, f.clone());
                        }
                        feed.viewers.borrow_mut().push(v.clone());
                        feed.last_viewer_left.set(None);
                        viewer = Some(v.clone());
                        let reply = rtsp::response(200, cseq.as_deref(), sess, b"");
                        if write_all(&conn, &reply).await.is_err() {
                            break;
                        }
                        glommio::spawn_local(writer(
                            conn.clone(),
                            v,
                            *channel,
                            self.cfg.viewer_stuck,
                        ))
                        .detach();
                        continue;
                    }
                    Some(_) => rtsp::response(200, cseq.as_deref(), sess, b""),
                    None => rtsp::response(455, cseq.as_deref(), &[], b""),
                },
                Method::GetParameter | Method::SetParameter => {
                    rtsp::response(200, cseq.as_deref(), sess, b"")
                }
                Method::Teardown => {
                    let reply = rtsp::response(200, cseq.as_deref(), sess, b"");
                    match &viewer {
                        // The writer sends it, then closes.
                        Some(v) => v.replies.borrow_mut().extend_from_slice(&reply),
                        None => {
                            let _ = write_all(&conn, &reply).await;
                        }
                    }
                    break;
                }
                Method::Pause => rtsp::response(
                    405,
                    cseq.as_deref(),
                    &[(
                        "Allow",
                        "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER",
                    )],
                    b"",
                ),
            };
            if let Some(v) = &viewer {
                v.replies.borrow_mut().extend_from_slice(&reply);
                v.sig.notify();
            } else if write_all(&conn, &reply).await.is_err() {
                break;
            }
        }
        if let Some(v) = viewer {
            v.gone.set(true);
            v.sig.notify();
        }
    }

    fn setup_reply(
        &self,
        setup: &mut Option<(Rc<Feed>, u8)>,
        transport: &str,
        cseq: Option<&str>,
        sid: &str,
    ) -> Vec<u8> {
        let (a, b) = rtsp::interleaved_channels(transport).unwrap_or((0, 1));
        if let Some((_, ch)) = setup.as_mut() {
            *ch = a;
        }
        let t = format!("RTP/AVP/TCP;unicast;interleaved={a}-{b}");
        rtsp::response(200, cseq, &[("Transport", &t), ("Session", sid)], b"")
    }

    async fn describe(
        self: &Rc<Self>,
        site: &str,
        cam: &str,
    ) -> Result<(Rc<Feed>, String), (u16, String)> {
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
            if let Some(why) = feed.closed.borrow().clone() {
                return Err((404, why));
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

async fn write_all(conn: &Rc<RefCell<TcpStream>>, data: &[u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        let n = std::future::poll_fn(|cx| {
            futures_lite::AsyncWrite::poll_write(
                std::pin::Pin::new(&mut *conn.borrow_mut()),
                cx,
                &data[off..],
            )
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        off += n;
    }
    Ok(())
}

/// Writes `parts` in order with as few system calls as the socket allows:
/// a non-blocking `sendmsg` of all remaining parts at once, and, when the
/// socket is full, glommio's write of the next part (which waits for room).
async fn write_vectored_all(conn: &Rc<RefCell<TcpStream>>, parts: &[&[u8]]) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, MsgFlags};
    use std::io::IoSlice;
    let (mut idx, mut off) = (0usize, 0usize);
    while idx < parts.len() {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*conn.borrow());
        let iov: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&parts[idx][off..]))
            .chain(parts[idx + 1..].iter().take(1023).map(|p| IoSlice::new(p)))
            .collect();
        let n = match sendmsg::<()>(
            fd,
            &iov,
            &[],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => {
                // Full: let glommio wait for room while writing the next part.
                std::future::poll_fn(|cx| {
                    futures_lite::AsyncWrite::poll_write(
                        std::pin::Pin::new(&mut *conn.borrow_mut()),
                        cx,
                        &parts[idx][off..],
                    )
                })
                .await?
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // Advance over what was written.
        let mut left = n;
        while left > 0 && idx < parts.len() {
            let here = parts[idx].len() - off;
            if left >= here {
                left -= here;
                idx += 1;
                off = 0;
            } else {
                off += left;
                left = 0;
            }
        }
    }
    Ok(())
}

/// Writes queued access units to one viewer: per packet a 4-byte `$`
/// header of this viewer and the packet straight from the shared buffer,
/// a whole access unit per `sendmsg` where the socket takes it.
async fn writer(conn: Rc<RefCell<TcpStream>>, v: Rc<Viewer>, channel: u8, stuck: Duration) {
    let close = |conn: &Rc<RefCell<TcpStream>>| {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*conn.borrow());
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    };
    loop {
        let wake = v.sig.wait();
        let replies = std::mem::take(&mut *v.replies.borrow_mut());
        if !replies.is_empty() && write_all(&conn, &replies).await.is_err() {
            v.gone.set(true);
        }
        if v.gone.get() {
            // The feed ended (camera gone, site offline) or the viewer
            // left: close the connection so the player sees the end.
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
                close(&conn);
                return;
            }
            continue;
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
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * headers.len());
        for (h, r) in headers.iter().zip(&frame.packets) {
            parts.push(h);
            parts.push(&frame.msg[r.clone()]);
        }
        let sent = glommio::timer::timeout(stuck, async {
            write_vectored_all(&conn, &parts)
                .await
                .map_err(glommio::GlommioError::IoError)
        })
        .await;
        match sent {
            Ok(()) => v.queue.borrow_mut().progressed(Instant::now()),
            Err(_) => {
                let stats = v.queue.borrow().stats;
                tracing::info!(
                    sent = stats.sent,
                    dropped = stats.dropped,
                    resyncs = stats.resyncs,
                    "viewer stuck or gone; disconnecting"
                );
                v.gone.set(true);
                close(&conn);
                return;
            }
        }
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b)
}
