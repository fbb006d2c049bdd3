//! The tunnel protocol state: streams, credit windows, liveness. No I/O,
//! no clock reads: time comes in as `now`, bytes come in as opened record
//! plaintext, and frames to send go out through [`Tunnel::take_frames`].
//!
//! Call order for a driver (as quinn-proto documents its own):
//! 1. [`Tunnel::handle_record`] for each opened record, then drain
//!    [`Tunnel::poll_event`].
//! 2. Before sending stream bytes, ask [`Tunnel::send_credit`]; after
//!    writing a DATA frame of `n` bytes, call [`Tunnel::sent`].
//! 3. After delivering `n` received bytes to the local socket, call
//!    [`Tunnel::consumed`] (this returns credit to the peer).
//! 4. After any call, move [`Tunnel::take_frames`] into the outgoing record.
//! 5. At [`Tunnel::poll_timeout`], call [`Tunnel::handle_timeout`].

use crate::frame::{self, Frame, FrameError, Reason, Settings, StreamId};
use crate::record::Side;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Data-channel protocol version.
pub const VERSION: u8 = 1;

/// Tunnel limits and timers. Every field is a bound on memory or time.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes the peer may send on one stream before we grant more: the
    /// most a stalled stream can hold in our memory.
    pub stream_window: u32,
    /// Bytes the peer may send on all streams together before we grant
    /// more, at first.
    pub tunnel_window: u32,
    /// The most a stream's window grows to. A window that is used up in
    /// less than two round trips (so it, not the path, limits the stream)
    /// doubles at its next grant, up to this: the most a stalled stream
    /// can hold in our memory.
    pub max_stream_window: u32,
    /// Likewise for the tunnel window: the most the tunnel's receive side
    /// can hold in our memory.
    pub max_tunnel_window: u32,
    /// Streams the peer may have open at once.
    pub max_streams: u32,
    /// Send a PING after this long.
    pub ping_interval: Duration,
    /// Declare the tunnel dead when nothing arrived for this long.
    pub dead_after: Duration,
    /// Stream opens and resets the peer may send per second (threat 8);
    /// more within one second closes the tunnel. 0: no limit.
    pub max_churn_per_sec: u32,
    /// PINGs the peer may send per second; more within one second closes
    /// the tunnel (a heartbeat needs one every few seconds). Each is
    /// answered, if only by the one coalesced PONG. 0: no limit.
    pub max_pings_per_sec: u32,
    /// Streams this end may open per second (0: no limit). The host keeps
    /// this under half the site's churn limit, so however fast clients
    /// connect and reset, its opens and resets never close the tunnel.
    pub max_opens_per_sec: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stream_window: 4 * 1024 * 1024,
            tunnel_window: 32 * 1024 * 1024,
            max_stream_window: 32 * 1024 * 1024,
            max_tunnel_window: 64 * 1024 * 1024,
            max_streams: 1024,
            ping_interval: Duration::from_secs(5),
            dead_after: Duration::from_secs(15),
            max_churn_per_sec: 20_000,
            max_pings_per_sec: 1_000,
            max_opens_per_sec: 5_000,
        }
    }
}

/// PINGs whose send time is kept for the round-trip measure.
const PINGS_REMEMBERED: usize = 4;

/// How much a receive window of `window` bytes grows at a grant at `now`:
/// it doubles (up to `max`) when the last grant was less than two round
/// trips ago, i.e. when the window, not the path, limits the sender.
fn growth(
    window: u64,
    max: u64,
    last: Option<Instant>,
    rtt: Option<Duration>,
    now: Instant,
) -> u64 {
    match (last, rtt) {
        (Some(last), Some(rtt)) if now.saturating_duration_since(last) < 2 * rtt => {
            window.min(max.saturating_sub(window))
        }
        _ => 0,
    }
}

/// Tunnel-level credit of one end (see [`Tunnel::windows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Bytes we may still send on all streams together.
    pub send_credit: u64,
    /// Bytes the peer may still send us.
    pub recv_allowed: u64,
    /// Bytes delivered (or dropped) but not yet granted back.
    pub recv_unacked: u64,
    /// Bytes received that the driver still holds.
    pub held: u64,
    /// Our tunnel window.
    pub window: u64,
}

impl Windows {
    /// True when nothing received is held and the receive window is whole.
    pub fn whole(&self) -> bool {
        self.held == 0 && self.recv_allowed + self.recv_unacked == self.window
    }
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer's settings arrived; streams may now send.
    Ready,
    /// The site's services.
    Services(Vec<String>),
    /// The peer opened a stream to `service`.
    Opened {
        /// Stream.
        id: StreamId,
        /// Service name.
        service: String,
    },
    /// Stream bytes at `range` of the plaintext buffer given to `handle_record`.
    Data {
        /// Stream.
        id: StreamId,
        /// Payload location.
        range: Range<usize>,
    },
    /// The peer will send no more on `id`.
    Ended {
        /// Stream.
        id: StreamId,
    },
    /// The peer aborted `id`.
    Reset {
        /// Stream.
        id: StreamId,
        /// Why.
        code: Reason,
    },
    /// `id` (0: every stream) may send more.
    Credit {
        /// Stream, or 0.
        id: StreamId,
    },
    /// The peer is closing the tunnel.
    GoAway(Reason),
}

/// Why the tunnel must close. Each closes only this tunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// A frame did not decode.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer sent more than its credit.
    #[error("flow control violated on stream {0}")]
    FlowControl(StreamId),
    /// The peer broke a protocol rule.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// Nothing arrived within `dead_after`.
    #[error("peer silent for {0:?}; tunnel dead")]
    Dead(Duration),
}

/// Why a tunnel ended: who closed it and why, for logs, metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed the connection (end of file).
    PeerClosed,
    /// The peer sent GOAWAY.
    PeerGoAway(Reason),
    /// The peer broke the protocol (bad record, frame, credit or churn).
    PeerMisbehaved(String),
    /// Nothing arrived for this long (heartbeat).
    Dead(Duration),
    /// The peer stopped reading: nothing could be written for this long
    /// while data waited.
    WriteStalled(Duration),
    /// Reading or writing the tunnel socket failed.
    Io(String),
    /// We sent GOAWAY: shutting down.
    Shutdown,
    /// We sent GOAWAY: our stream ids ran out.
    IdsExhausted,
    /// The site was revoked.
    Revoked,
    /// A newer connection of the same site replaced this one.
    Replaced,
}

impl CloseReason {
    /// A short name for metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::PeerGoAway(_) => "peer_goaway",
            CloseReason::PeerMisbehaved(_) => "peer_misbehaved",
            CloseReason::Dead(_) => "dead",
            CloseReason::WriteStalled(_) => "write_stalled",
            CloseReason::Io(_) => "io_error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::IdsExhausted => "ids_exhausted",
            CloseReason::Revoked => "revoked",
            CloseReason::Replaced => "replaced",
        }
    }

    /// Every name, for metrics.
    pub const NAMES: [&'static str; 10] = [
        "peer_closed",
        "peer_goaway",
        "peer_misbehaved",
        "dead",
        "write_stalled",
        "io_error",
        "shutdown",
        "ids_exhausted",
        "revoked",
        "replaced",
    ];

    /// True when the peer (or the path to it) ended the tunnel, false when
    /// this end chose to.
    pub fn by_peer(&self) -> bool {
        matches!(
            self,
            CloseReason::PeerClosed
                | CloseReason::PeerGoAway(_)
                | CloseReason::PeerMisbehaved(_)
                | CloseReason::Dead(_)
                | CloseReason::WriteStalled(_)
                | CloseReason::Io(_)
        )
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("the peer closed the connection"),
            CloseReason::PeerGoAway(r) => write!(f, "the peer is going away ({r})"),
            CloseReason::PeerMisbehaved(why) => write!(f, "the peer misbehaved: {why}"),
            CloseReason::Dead(d) => write!(f, "peer silent for {d:?}; tunnel dead"),
            CloseReason::WriteStalled(d) => {
                write!(f, "the peer stopped reading: nothing written for {d:?}")
            }
            CloseReason::Io(e) => write!(f, "tunnel socket failed: {e}"),
            CloseReason::Shutdown => f.write_str("shutting down"),
            CloseReason::IdsExhausted => f.write_str("stream ids exhausted; going away"),
            CloseReason::Revoked => f.write_str("site revoked"),
            CloseReason::Replaced => f.write_str("replaced by a newer connection of the same site"),
        }
    }
}

/// Why a local open failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The peer's stream limit is reached.
    #[error("the peer's stream limit is reached")]
    Limit,
    /// The service name is not valid.
    #[error("invalid service name")]
    BadName,
    /// This end opened `max_opens_per_sec` streams in the current second.
    #[error("too many new streams this second")]
    RateLimited,
    /// Every stream id of this end was used: the tunnel is going away
    /// (GOAWAY queued) and a new one must be opened. Ids are never reused.
    #[error("stream ids exhausted; the tunnel is going away")]
    Exhausted,
}

#[derive(Debug)]
struct Stream {
    /// Bytes we may still send.
    send_credit: u64,
    /// Bytes the peer may still send (enforced).
    recv_allowed: u64,
    /// Bytes delivered locally but not yet granted back.
    recv_unacked: u64,
    /// The stream's receive window now (grows, see `Config`).
    window: u64,
    /// When credit was last granted (window growth).
    last_grant: Option<Instant>,
    /// Bytes reported in [`Event::Data`] that the driver has not yet
    /// [`Tunnel::consumed`]: they sit in our memory and are charged to both
    /// windows. However the stream ends, they go back to the tunnel window.
    held: u64,
    local_ended: bool,
    remote_ended: bool,
}

/// One end of a tunnel.
#[derive(Debug)]
pub struct Tunnel {
    side: Side,
    cfg: Config,
    peer: Option<Settings>,
    streams: BTreeMap<StreamId, Stream>,
    /// Our next stream id; past `StreamId::MAX` our ids are used up.
    next_local: u64,
    /// GOAWAY was queued because our ids ran out.
    ids_exhausted: bool,
    last_peer: StreamId,
    tunnel_send_credit: u64,
    tunnel_recv_allowed: u64,
    tunnel_recv_unacked: u64,
    /// The tunnel's receive window now (grows, see `Config`).
    recv_window: u64,
    /// When tunnel credit was last granted.
    last_tunnel_grant: Option<Instant>,
    /// The latest round trip measured (PING to its PONG).
    rtt: Option<Duration>,
    /// The latest PINGs sent and when they left (a few: the peer answers
    /// the latest it saw, which may be older than our latest).
    pings_sent: VecDeque<(u64, Instant)>,
    /// The latest time the driver gave us.
    clock: Instant,
    /// Streams both sides ended whose received bytes are still held: they
    /// stay in `streams` until delivered but no longer count as open.
    draining: usize,
    out: Vec<u8>,
    events: VecDeque<Event>,
    last_rx: Instant,
    next_ping: Instant,
    ping_seq: u64,
    /// The latest PING to answer: a peer's pings are answered by one PONG
    /// per batch however many arrived, so a peer that floods PINGs and
    /// never reads cannot grow `out`.
    pong: Option<u64>,
    /// Start of the current rate second, and the opens and resets, and the
    /// pings, the peer sent in it.
    churn_since: Instant,
    churn: u32,
    pings: u32,
    /// Start of the current second of our own opens, and their count.
    opens_since: Instant,
    opens: u32,
}

impl Tunnel {
    /// A tunnel end; queues its SETTINGS.
    pub fn new(side: Side, cfg: Config, now: Instant) -> Self {
        let mut t = Tunnel {
            side,
            peer: None,
            streams: BTreeMap::new(),
            // Host-opened streams are odd, site-opened even.
            next_local: if side == Side::Host { 1 } else { 2 },
            ids_exhausted: false,
            last_peer: 0,
            tunnel_send_credit: 0,
            tunnel_recv_allowed: u64::from(cfg.tunnel_window),
            tunnel_recv_unacked: 0,
            recv_window: u64::from(cfg.tunnel_window),
            last_tunnel_grant: None,
            rtt: None,
            pings_sent: VecDeque::from([(1, now)]),
            clock: now,
            draining: 0,
            out: Vec::new(),
            events: VecDeque::new(),
            last_rx: now,
            next_ping: now + cfg.ping_interval,
            ping_seq: 1,
            pong: None,
            churn_since: now,
            churn: 0,
            pings: 0,
            opens_since: now,
            opens: 0,
            cfg,
        };
        let s = Settings {
            version: VERSION,
            stream_window: t.cfg.stream_window,
            tunnel_window: t.cfg.tunnel_window,
            max_streams: t.cfg.max_streams,
        };
        t.queue(&Frame::Settings(s));
        // A first PING measures the round trip (window growth needs it).
        t.queue(&Frame::Ping(1));
        t
    }

    fn queue(&mut self, f: &Frame<'_>) {
        frame::encode(f, &mut self.out);
    }

    /// Announces the services this end offers (the site does).
    pub fn advertise(&mut self, names: &[String]) {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.queue(&Frame::Services(refs));
    }

    /// Opens a stream to `service` at the time of the last event seen.
    pub fn open(&mut self, service: &str) -> Result<StreamId, OpenError> {
        self.open_at(service, self.clock)
    }

    /// Opens a stream to `service` at `now`. Drivers use this one: the
    /// per-second open budget is measured against `now`, so an idle tunnel
    /// (no frame, no timer since a burst of opens) does not keep refusing
    /// on the clock of its last event.
    pub fn open_at(&mut self, service: &str, now: Instant) -> Result<StreamId, OpenError> {
        self.clock = self.clock.max(now);
        if !frame::valid_open_name(service) {
            return Err(OpenError::BadName);
        }
        let limit = self.peer.map_or(1, |p| p.max_streams) as usize;
        if self.open_streams() >= limit {
            return Err(OpenError::Limit);
        }
        if self.cfg.max_opens_per_sec > 0 {
            if self.clock.saturating_duration_since(self.opens_since) >= Duration::from_secs(1) {
                self.opens_since = self.clock;
                self.opens = 0;
            }
            if self.opens >= self.cfg.max_opens_per_sec {
                return Err(OpenError::RateLimited);
            }
            self.opens += 1;
        }
        let Ok(id) = StreamId::try_from(self.next_local) else {
            if !self.ids_exhausted {
                self.ids_exhausted = true;
                self.go_away(Reason::IDS_EXHAUSTED);
            }
            return Err(OpenError::Exhausted);
        };
        self.next_local += 2;
        let send_credit = self.peer.map_or(0, |p| u64::from(p.stream_window));
        self.streams.insert(id, self.new_stream(send_credit));
        self.queue(&Frame::Open {
            stream: id,
            service,
        });
        Ok(id)
    }

    fn new_stream(&self, send_credit: u64) -> Stream {
        Stream {
            send_credit,
            recv_allowed: u64::from(self.cfg.stream_window),
            recv_unacked: 0,
            window: u64::from(self.cfg.stream_window),
            last_grant: None,
            held: 0,
            local_ended: false,
            remote_ended: false,
        }
    }

    /// Bytes `id` may send now.
    pub fn send_credit(&self, id: StreamId) -> usize {
        match self.streams.get(&id) {
            Some(s) if !s.local_ended => s.send_credit.min(self.tunnel_send_credit) as usize,
            _ => 0,
        }
    }

    /// Records that a DATA frame of `n` bytes was written for `id`.
    pub fn sent(&mut self, id: StreamId, n: usize) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.send_credit = s.send_credit.saturating_sub(n as u64);
        }
        self.tunnel_send_credit = self.tunnel_send_credit.saturating_sub(n as u64);
    }

    /// Records that `n` received bytes of `id` left our memory; grants
    /// credit back once half a window has been consumed. Bytes of a stream
    /// that already ended (reset, or finished) were credited back when it
    /// ended, so consuming them again is a no-op. Uses the latest time
    /// given; [`Tunnel::consumed_at`] takes the time.
    pub fn consumed(&mut self, id: StreamId, n: usize) {
        self.consumed_at(id, n, self.clock);
    }

    /// [`Tunnel::consumed`] at `now` (window growth compares grant times
    /// with the round trip).
    pub fn consumed_at(&mut self, id: StreamId, n: usize, now: Instant) {
        self.clock = self.clock.max(now);
        let now = self.clock;
        // A stream's window grows to at most half the tunnel's receive
        // window in force: a stream that stalls with its window full
        // always leaves the other half to the other streams.
        let max = u64::from(self.cfg.max_stream_window).min(self.recv_window / 2);
        let rtt = self.rtt;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let n = (n as u64).min(s.held);
        s.held -= n;
        let grant = if s.remote_ended {
            None
        } else {
            s.recv_unacked += n;
            if s.recv_unacked >= (s.window / 2).max(1) {
                let grow = growth(s.window, max, s.last_grant, rtt, now);
                s.window += grow;
                s.last_grant = Some(now);
                let inc = std::mem::take(&mut s.recv_unacked) + grow;
                s.recv_allowed += inc;
                Some(inc)
            } else {
                None
            }
        };
        let drained = s.local_ended && s.remote_ended && s.held == 0;
        if let Some(inc) = grant {
            self.queue(&Frame::Window {
                stream: id,
                increment: inc as u32,
            });
        }
        self.release(n);
        if drained {
            self.streams.remove(&id);
            self.draining -= 1;
        }
    }

    /// Returns `n` received bytes to the tunnel window.
    fn release(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.tunnel_recv_unacked += n;
        if self.tunnel_recv_unacked >= self.recv_window / 2 {
            let grow = growth(
                self.recv_window,
                u64::from(self.cfg.max_tunnel_window),
                self.last_tunnel_grant,
                self.rtt,
                self.clock,
            );
            self.recv_window += grow;
            self.last_tunnel_grant = Some(self.clock);
            let inc = std::mem::take(&mut self.tunnel_recv_unacked) + grow;
            self.tunnel_recv_allowed += inc;
            self.queue(&Frame::Window {
                stream: 0,
                increment: inc as u32,
            });
        }
    }

    /// The latest round trip measured, if any.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Forgets `id`, returning the bytes it still held to the tunnel window.
    fn remove(&mut self, id: StreamId) -> Option<Stream> {
        let s = self.streams.remove(&id)?;
        if s.local_ended && s.remote_ended {
            self.draining -= 1;
        }
        self.release(s.held);
        Some(s)
    }

    /// Marks one more end of `id`; a stream both sides ended is forgotten
    /// once nothing it received is held, else it drains.
    fn ended(&mut self, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if s.local_ended && s.remote_ended {
            if s.held == 0 {
                self.streams.remove(&id);
            } else {
                self.draining += 1;
            }
        }
    }

    /// Streams open in the protocol's sense (not both ended).
    fn open_streams(&self) -> usize {
        self.streams.len() - self.draining
    }

    /// Half-closes `id`: we send no more.
    pub fn end(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.local_ended {
            return;
        }
        s.local_ended = true;
        self.queue(&Frame::End { stream: id });
        self.ended(id);
    }

    /// Aborts `id`: the peer is told (unless both sides had already ended
    /// it) and everything it still held goes back to the tunnel window.
    pub fn reset(&mut self, id: StreamId, why: Reason) {
        if let Some(s) = self.remove(id) {
            if !(s.local_ended && s.remote_ended) {
                self.queue(&Frame::Reset {
                    stream: id,
                    code: why,
                });
            }
        }
    }

    /// Forgets a stream both sides ended, returning what it still held to
    /// the tunnel window (the driver calls this when it is done with `id`).
    pub fn finished(&mut self, id: StreamId) {
        if matches!(self.streams.get(&id), Some(s) if s.local_ended && s.remote_ended) {
            self.remove(id);
        }
    }

    /// The credit state, for invariant checks and metrics: once every
    /// stream has ended and all frames are delivered, `held` is 0,
    /// `recv_allowed + recv_unacked` is the whole tunnel window, and the
    /// peer's `send_credit` equals our `recv_allowed`.
    pub fn windows(&self) -> Windows {
        Windows {
            send_credit: self.tunnel_send_credit,
            recv_allowed: self.tunnel_recv_allowed,
            recv_unacked: self.tunnel_recv_unacked,
            held: self.streams.values().map(|s| s.held).sum(),
            window: self.recv_window,
        }
    }

    /// Starts a clean close.
    pub fn go_away(&mut self, why: Reason) {
        self.queue(&Frame::GoAway(why));
    }

    /// Skips our stream ids ahead so that `left` opens remain (tests of id
    /// exhaustion; keeps parity).
    #[doc(hidden)]
    pub fn skip_ids(&mut self, left: u64) {
        let last = u64::from(StreamId::MAX) - u64::from(self.side == Side::Site);
        self.next_local = last + 2 - 2 * left;
    }

    /// Live streams.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// True when `id` is open (not reset, not fully ended).
    pub fn is_open(&self, id: StreamId) -> bool {
        self.streams.contains_key(&id)
    }

    /// The peer's settings, once known.
    pub fn peer_settings(&self) -> Option<Settings> {
        self.peer
    }

    /// Processes one opened record's plaintext. `base` is added to every
    /// reported data range (the plaintext's offset in the caller's buffer).
    pub fn handle_record(
        &mut self,
        plain: &[u8],
        base: usize,
        now: Instant,
    ) -> Result<(), TunnelError> {
        self.last_rx = now;
        self.clock = self.clock.max(now);
        let mut at = 0;
        while at < plain.len() {
            let (f, next) = frame::decode(plain, at)?;
            self.handle_frame(f, base)?;
            at = next;
        }
        Ok(())
    }

    /// Starts a new rate second when the last one is over.
    fn rate_window(&mut self) {
        // `last_rx` is the time of the record being handled.
        if self.last_rx.saturating_duration_since(self.churn_since) >= Duration::from_secs(1) {
            self.churn_since = self.last_rx;
            self.churn = 0;
            self.pings = 0;
        }
    }

    /// Counts one peer OPEN or RESET (`ping` false) or PING (`ping` true)
    /// against its per-second limit; past it the tunnel must close.
    fn rated(&mut self, ping: bool) -> Result<(), TunnelError> {
        let (limit, why) = if ping {
            (
                self.cfg.max_pings_per_sec,
                "ping flood: too many PINGs per second",
            )
        } else {
            (
                self.cfg.max_churn_per_sec,
                "stream churn limit: too many opens and resets per second",
            )
        };
        if limit == 0 {
            return Ok(());
        }
        self.rate_window();
        let n = if ping {
            &mut self.pings
        } else {
            &mut self.churn
        };
        *n += 1;
        if *n > limit {
            return Err(TunnelError::Protocol(why));
        }
        Ok(())
    }

    fn handle_frame(&mut self, f: Frame<'_>, base: usize) -> Result<(), TunnelError> {
        match f {
            Frame::Settings(s) => {
                if self.peer.is_some() {
                    return Err(TunnelError::Protocol("second SETTINGS"));
                }
                if s.version != VERSION {
                    return Err(TunnelError::Protocol("unsupported data-channel version"));
                }
                self.peer = Some(s);
                self.tunnel_send_credit += u64::from(s.tunnel_window);
                for st in self.streams.values_mut() {
                    st.send_credit += u64::from(s.stream_window);
                }
                self.events.push_back(Event::Ready);
                self.events.push_back(Event::Credit { id: 0 });
            }
            Frame::Services(names) => {
                self.events.push_back(Event::Services(
                    names.into_iter().map(str::to_string).collect(),
                ));
            }
            Frame::Open { stream, service } => {
                self.rated(false)?;
                let peer_parity = if self.side == Side::Host { 0 } else { 1 };
                if stream % 2 != peer_parity || stream <= self.last_peer {
                    return Err(TunnelError::Protocol(
                        "stream id reused or of the wrong side",
                    ));
                }
                self.last_peer = stream;
                if self.open_streams() >= self.cfg.max_streams as usize {
                    self.queue(&Frame::Reset {
                        stream,
                        code: Reason::LIMIT,
                    });
                    return Ok(());
                }
                let send_credit = self.peer.map_or(0, |p| u64::from(p.stream_window));
                self.streams.insert(stream, self.new_stream(send_credit));
                self.events.push_back(Event::Opened {
                    id: stream,
                    service: service.to_string(),
                });
            }
            Frame::Data { stream, payload } => {
                let n = payload.len() as u64;
                if n > self.tunnel_recv_allowed {
                    return Err(TunnelError::FlowControl(0));
                }
                self.tunnel_recv_allowed -= n;
                let known = self.known(stream);
                match self.streams.get_mut(&stream) {
                    Some(s) => {
                        if s.remote_ended {
                            return Err(TunnelError::Protocol("DATA after END"));
                        }
                        if n > s.recv_allowed {
                            return Err(TunnelError::FlowControl(stream));
                        }
                        s.recv_allowed -= n;
                        s.held += n;
                        if n > 0 {
                            self.events.push_back(Event::Data {
                                id: stream,
                                range: base + payload.start..base + payload.end,
                            });
                        }
                    }
                    None if known => {
                        // A stream we already ended: drop the bytes but
                        // give their tunnel credit back.
                        self.release(n);
                    }
                    None => return Err(TunnelError::Protocol("DATA on a stream never opened")),
                }
            }
            Frame::Window {
                stream: 0,
                increment,
            } => {
                self.tunnel_send_credit += u64::from(increment);
                if self.tunnel_send_credit > u64::from(u32::MAX) * 4 {
                    return Err(TunnelError::FlowControl(0));
                }
                self.events.push_back(Event::Credit { id: 0 });
            }
            Frame::Window { stream, increment } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.send_credit += u64::from(increment);
                    if s.send_credit > u64::from(u32::MAX) * 4 {
                        return Err(TunnelError::FlowControl(stream));
                    }
                    self.events.push_back(Event::Credit { id: stream });
                } else if !self.known(stream) {
                    return Err(TunnelError::Protocol("WINDOW on a stream never opened"));
                }
            }
            Frame::End { stream } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    if s.remote_ended {
                        return Err(TunnelError::Protocol("second END"));
                    }
                    s.remote_ended = true;
                    self.ended(stream);
                    self.events.push_back(Event::Ended { id: stream });
                } else if !self.known(stream) {
                    return Err(TunnelError::Protocol("END on a stream never opened"));
                }
            }
            Frame::Reset { stream, code } => {
                self.rated(false)?;
                if self.remove(stream).is_some() {
                    self.events.push_back(Event::Reset { id: stream, code });
                }
            }
            Frame::Ping(v) => {
                self.rated(true)?;
                self.pong = Some(v);
            }
            Frame::Pong(v) => {
                if let Some(i) = self.pings_sent.iter().position(|(seq, _)| *seq == v) {
                    let at = self.pings_sent[i].1;
                    self.rtt = Some(self.last_rx.saturating_duration_since(at));
                    self.pings_sent.drain(..=i);
                }
            }
            Frame::GoAway(c) => self.events.push_back(Event::GoAway(c)),
        }
        Ok(())
    }

    /// True when `id` was opened at some point by either side.
    fn known(&self, id: StreamId) -> bool {
        if u64::from(id) % 2 == self.next_local % 2 {
            u64::from(id) < self.next_local
        } else {
            id <= self.last_peer
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Moves encoded frames waiting to be sent into `out`.
    pub fn take_frames(&mut self, out: &mut Vec<u8>) {
        if let Some(v) = self.pong.take() {
            self.queue(&Frame::Pong(v));
        }
        out.append(&mut self.out);
    }

    /// True when frames wait to be sent.
    pub fn has_frames(&self) -> bool {
        !self.out.is_empty() || self.pong.is_some()
    }

    /// Bytes of encoded frames waiting to be taken. The driver stops
    /// reading the tunnel while this is above its bound (the peer is not
    /// reading our replies), so what the peer can make us queue is bounded.
    pub fn queued_len(&self) -> usize {
        self.out.len()
    }

    /// When [`Tunnel::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_ping.min(self.last_rx + self.cfg.dead_after)
    }

    /// Sends pings and detects a dead peer.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), TunnelError> {
        self.clock = self.clock.max(now);
        let silent = now.saturating_duration_since(self.last_rx);
        if silent >= self.cfg.dead_after {
            return Err(TunnelError::Dead(silent));
        }
        if now >= self.next_ping {
            self.ping_seq += 1;
            let seq = self.ping_seq;
            self.queue(&Frame::Ping(seq));
            if self.pings_sent.len() == PINGS_REMEMBERED {
                self.pings_sent.pop_front();
            }
            self.pings_sent.push_back((seq, now));
            self.next_ping = now + self.cfg.ping_interval;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
