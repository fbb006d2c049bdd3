//! One camera stream at the host and the viewers sharing it.
//!
//! A feed is either the *origin* (on the shard that owns the site's tunnel,
//! reading the stream from the tunnel) or a *mirror* (on another shard,
//! receiving the origin's shared buffers by message). Both hand every
//! access unit to their viewers the same way: one reference-counted
//! [`Frame`], queued per viewer without copying.

use crate::signal::Signal;
use bytes::Bytes;
use revtun_proto::fanout::{KeyframeCache, Meta, Offer, ViewerQueue, ViewerStats};
use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One access unit as it came through the tunnel: the feed message and
/// where its RTP packets are. Shared by every viewer on every shard.
#[derive(Debug)]
pub struct Frame {
    /// The whole feed message (one allocation, never copied per viewer).
    pub msg: Bytes,
    /// RTP packets inside `msg`.
    pub packets: Vec<Range<usize>>,
    /// Starts a decodable picture.
    pub keyframe: bool,
    /// One packet of the camera's audio track (not video).
    pub audio: bool,
    /// When it arrived at the host (on its origin shard).
    pub arrived: Instant,
    /// Its packets for UDP viewers, made once by the first UDP viewer
    /// that sends it (on any shard) and shared by all.
    pub udp: std::sync::OnceLock<Vec<revtun_proto::rtp::UdpPacket>>,
}

impl Frame {
    /// Policy view of this frame, arriving now.
    pub fn meta(&self, at: Instant) -> Meta {
        Meta {
            keyframe: self.keyframe,
            bytes: self.msg.len(),
            at,
        }
    }
}

/// A frame handle that can cross cores.
pub type Shared = Arc<Frame>;

/// A consumer of a feed: an RTSP viewer, or (on the origin) another shard.
#[derive(Debug)]
pub struct Viewer {
    /// Frames waiting for this consumer.
    pub queue: RefCell<ViewerQueue<Shared>>,
    /// Woken when there is something to do.
    pub sig: Rc<Signal>,
    /// The consumer left or must be closed.
    pub gone: Cell<bool>,
    /// RTSP replies after PLAY: the writer sends them between access
    /// units, so they never land inside an interleaved frame.
    pub replies: RefCell<Vec<u8>>,
    /// Notified when the writer took the queued replies, or gave up.
    pub drained: Signal,
    /// Disconnected for not reading.
    pub cut: Cell<bool>,
    /// Another shard's mirror of this feed, not an RTSP viewer.
    pub remote: bool,
    /// Served over UDP (for metrics).
    pub udp: Cell<bool>,
    /// Who it is, for its own metrics (set at PLAY).
    pub label: RefCell<Option<ViewerLabel>>,
    /// RTP packets sent to it (video and audio).
    pub packets: Cell<u64>,
    /// Packets it reported lost (RTCP receiver reports, UDP viewers).
    pub lost: Cell<u64>,
}

/// The labels of one viewer's metrics.
#[derive(Debug, Clone)]
pub struct ViewerLabel {
    /// The viewer's name (`anonymous`, `token:SCOPE`; `group` for a
    /// multicast group's sender).
    pub name: String,
    /// Its RTSP session id (the group's address for a multicast group).
    pub session: String,
    /// `tcp`, `udp` or `multicast`.
    pub transport: &'static str,
}

/// Counters of one feed (exported as metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedCounters {
    /// Access units received.
    pub units: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Viewers ever attached.
    pub viewers_total: u64,
    /// Viewers disconnected for not reading.
    pub viewers_cut: u64,
    /// Per-viewer totals of viewers that left.
    pub departed: ViewerStats,
    /// RTP packets sent to UDP viewers.
    pub udp_packets: u64,
    /// Packets UDP viewers reported lost (RTCP receiver reports).
    pub udp_lost: u64,
    /// RTP packets sent to multicast groups (once per packet per group).
    pub multicast_packets: u64,
}

/// Bits per second over the last whole second.
#[derive(Debug, Clone, Copy)]
struct Rate {
    start: Instant,
    bytes: u64,
    last_bps: u64,
}

/// One camera stream at this shard.
#[derive(Debug)]
pub struct Feed {
    /// Site name.
    pub site: String,
    /// Camera name.
    pub cam: String,
    /// The camera's SDP, once known.
    pub sdp: RefCell<Option<String>>,
    /// Notified when the SDP arrives or the feed closes.
    pub ready: Signal,
    /// Current consumers.
    pub viewers: RefCell<Vec<Rc<Viewer>>>,
    cache: RefCell<KeyframeCache<Shared>>,
    /// RTSP status and reason once closed.
    pub closed: RefCell<Option<(u16, String)>>,
    last_viewer_left: Cell<Option<Instant>>,
    rate: Cell<Rate>,
    /// Counters.
    pub counters: RefCell<FeedCounters>,
    /// The video codec (from the SDP), for UDP viewers' packetising.
    pub codec: Cell<Option<revtun_proto::rtp::Codec>>,
    /// The audio track's RTP clock rate (from the SDP), for its sender
    /// reports; `None` without audio or when the SDP does not say.
    pub audio_clock: Cell<Option<u32>>,
}

impl Feed {
    /// A feed with no viewers yet (its linger clock starts now).
    pub fn new(site: &str, cam: &str, cache_bytes: usize, cache_frames: usize) -> Rc<Feed> {
        let now = Instant::now();
        Rc::new(Feed {
            site: site.to_string(),
            cam: cam.to_string(),
            sdp: RefCell::new(None),
            ready: Signal::default(),
            viewers: RefCell::default(),
            cache: RefCell::new(KeyframeCache::new(cache_bytes, cache_frames)),
            closed: RefCell::new(None),
            last_viewer_left: Cell::new(Some(now)),
            rate: Cell::new(Rate {
                start: now,
                bytes: 0,
                last_bps: 0,
            }),
            counters: RefCell::default(),
            codec: Cell::new(None),
            audio_clock: Cell::new(None),
        })
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    /// Records the camera's SDP (and its video codec, for UDP viewers).
    pub fn set_sdp(&self, sdp: String) {
        self.codec
            .set(revtun_proto::video::video_track(&sdp).map(|t| t.codec));
        self.audio_clock
            .set(revtun_proto::video::audio_track(&sdp).and_then(|t| t.clock_rate()));
        *self.sdp.borrow_mut() = Some(sdp);
        self.ready.notify();
    }

    /// Hands one access unit to every consumer; never waits.
    pub fn deliver(&self, frame: Shared) {
        let now = Instant::now();
        let meta = frame.meta(now);
        {
            let mut c = self.counters.borrow_mut();
            c.units += 1;
            c.bytes += meta.bytes as u64;
        }
        let mut r = self.rate.get();
        r.bytes += meta.bytes as u64;
        let span = now.duration_since(r.start);
        if span >= Duration::from_secs(1) {
            r.last_bps = (r.bytes as f64 * 8.0 / span.as_secs_f64()) as u64;
            r.start = now;
            r.bytes = 0;
        }
        self.rate.set(r);
        self.cache.borrow_mut().push(meta, &frame);
        for v in self.viewers.borrow().iter() {
            if v.queue.borrow_mut().offer(meta, frame.clone()) != Offer::Skipped {
                v.sig.notify();
            }
        }
    }

    /// Measured bit rate (last whole second; 0 until a second has passed,
    /// and 0 again when nothing arrived for a second).
    pub fn bps(&self) -> u64 {
        let r = self.rate.get();
        if r.start.elapsed() > Duration::from_secs(2) {
            0
        } else {
            r.last_bps
        }
    }

    /// A viewer attached to no feed: a multicast member, whose media goes
    /// to its group (its queue stays empty; it carries the replies and the
    /// "gone" signal of one RTSP session).
    pub fn detached(max_bytes: usize, max_age: Duration) -> Rc<Viewer> {
        Rc::new(Viewer {
            queue: RefCell::new(ViewerQueue::new(max_bytes, max_age, Instant::now())),
            sig: Rc::new(Signal::default()),
            gone: Cell::new(false),
            replies: RefCell::default(),
            drained: Signal::default(),
            cut: Cell::new(false),
            remote: false,
            udp: Cell::new(false),
            label: RefCell::default(),
            packets: Cell::new(0),
            lost: Cell::new(0),
        })
    }

    /// Adds a consumer that starts at the cached keyframe at once.
    pub fn attach(
        &self,
        sig: Rc<Signal>,
        max_bytes: usize,
        max_age: Duration,
        remote: bool,
    ) -> Rc<Viewer> {
        let now = Instant::now();
        let v = Rc::new(Viewer {
            queue: RefCell::new(ViewerQueue::new(max_bytes, max_age, now)),
            sig,
            gone: Cell::new(false),
            replies: RefCell::default(),
            drained: Signal::default(),
            cut: Cell::new(false),
            remote,
            udp: Cell::new(false),
            label: RefCell::default(),
            packets: Cell::new(0),
            lost: Cell::new(0),
        });
        // The cached frames' age counts from now: they enter this queue
        // now, however old the group is.
        for (meta, f) in self.cache.borrow().frames() {
            v.queue
                .borrow_mut()
                .offer(Meta { at: now, ..*meta }, f.clone());
        }
        self.viewers.borrow_mut().push(v.clone());
        self.last_viewer_left.set(None);
        self.counters.borrow_mut().viewers_total += u64::from(!remote);
        v
    }

    /// Ends the feed for every consumer.
    pub fn close(&self, status: u16, reason: String) {
        if self.closed.borrow().is_some() {
            return;
        }
        *self.closed.borrow_mut() = Some((status, reason));
        self.ready.notify();
        for v in self.viewers.borrow().iter() {
            v.gone.set(true);
            v.sig.notify();
        }
    }

    /// Forgets departed consumers; true when nobody has watched for `linger`.
    pub fn idle_for(&self, linger: Duration) -> bool {
        let mut departed = Vec::new();
        self.viewers.borrow_mut().retain(|v| {
            if v.gone.get() {
                departed.push(v.clone());
                false
            } else {
                true
            }
        });
        {
            let mut c = self.counters.borrow_mut();
            for v in departed {
                c.departed += v.queue.borrow().stats;
                c.viewers_cut += u64::from(v.cut.get());
            }
        }
        if !self.viewers.borrow().is_empty() {
            self.last_viewer_left.set(None);
            return false;
        }
        let since = match self.last_viewer_left.get() {
            Some(t) => t,
            None => {
                let now = Instant::now();
                self.last_viewer_left.set(Some(now));
                now
            }
        };
        since.elapsed() >= linger
    }

    /// RTSP viewers attached now (other shards' mirrors not counted).
    pub fn viewer_count(&self) -> usize {
        self.viewers
            .borrow()
            .iter()
            .filter(|v| !v.remote && !v.gone.get())
            .count()
    }

    /// Totals over departed and current consumers.
    pub fn viewer_totals(&self) -> ViewerStats {
        let mut t = self.counters.borrow().departed;
        for v in self.viewers.borrow().iter() {
            t += v.queue.borrow().stats;
        }
        t
    }
}

/// Host-added latency of one shard: from an access unit's arrival at the
/// host to its last byte handed to a viewer's socket, in microseconds,
/// over one-second windows (the last window with frames is kept for
/// metrics).
#[derive(Debug)]
pub struct SendLatency {
    current: RefCell<hdrhistogram::Histogram<u64>>,
    last: Cell<Option<LatencySummary>>,
}

/// Quantiles of one window, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Frames sent in the window.
    pub count: u64,
}

impl Default for SendLatency {
    fn default() -> Self {
        SendLatency {
            current: RefCell::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
                    .expect("static histogram bounds are valid"),
            ),
            last: Cell::new(None),
        }
    }
}

impl SendLatency {
    /// Records one frame handed to a viewer's socket.
    pub fn record(&self, arrived: Instant) {
        let us = arrived.elapsed().as_micros().clamp(1, 60_000_000) as u64;
        let _ = self.current.borrow_mut().record(us);
    }

    /// Closes the current window (if it saw frames) and starts the next.
    pub fn roll(&self) {
        let mut h = self.current.borrow_mut();
        if h.is_empty() {
            return;
        }
        self.last.set(Some(LatencySummary {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
        }));
        h.reset();
    }

    /// The last window with frames.
    pub fn last(&self) -> Option<LatencySummary> {
        self.last.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_latency_keeps_the_last_window_with_frames() {
        let l = SendLatency::default();
        l.roll();
        assert_eq!(l.last(), None, "no frames, no window");
        let t = Instant::now() - Duration::from_millis(3);
        for _ in 0..100 {
            l.record(t);
        }
        l.roll();
        let w = l.last().expect("a window");
        assert_eq!(w.count, 100);
        assert!(w.p50 >= 3_000 && w.p99 >= w.p50 && w.max >= w.p999, "{w:?}");
        // An empty second keeps the previous figures.
        l.roll();
        assert_eq!(l.last(), Some(w));
    }
}
