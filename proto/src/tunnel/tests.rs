//! The tunnel on an in-memory pair with simulated time, through the real
//! framing and sealing, at absurd settings.

use super::*;
use crate::channel::{Deframer, Framer};
use crate::record::keys;
use std::collections::{HashMap, HashSet};

struct End {
    t: Tunnel,
    framer: Framer,
    deframer: Deframer,
    received: HashMap<StreamId, Vec<u8>>,
    /// Received but not yet consumed (stalled streams).
    held: HashMap<StreamId, usize>,
    stalled: HashSet<StreamId>,
    /// Hold every stream's bytes until the test consumes them.
    hold_all: bool,
    ended: HashSet<StreamId>,
    resets: Vec<(StreamId, Reason)>,
    opened: Vec<(StreamId, String)>,
    goaways: Vec<Reason>,
    services: Vec<String>,
}

struct Pair {
    host: End,
    site: End,
    now: Instant,
    /// Deliver wire bytes in chunks of this size (1 = byte by byte).
    split: usize,
}

fn end(side: Side, cfg: Config, now: Instant) -> End {
    let secrets: [u8; 64] = std::array::from_fn(|i| (i * 7) as u8);
    let (tx, rx) = keys(&secrets, side, 3);
    End {
        t: Tunnel::new(side, cfg, now),
        framer: Framer::new(tx),
        deframer: Deframer::new(rx),
        received: HashMap::new(),
        held: HashMap::new(),
        stalled: HashSet::new(),
        hold_all: false,
        ended: HashSet::new(),
        resets: Vec::new(),
        opened: Vec::new(),
        goaways: Vec::new(),
        services: Vec::new(),
    }
}

fn cfg(stream_window: u32, tunnel_window: u32) -> Config {
    Config {
        stream_window,
        tunnel_window,
        ..Config::default()
    }
}

impl Pair {
    fn new(host: Config, site: Config, split: usize) -> Pair {
        let now = Instant::now();
        let mut p = Pair {
            host: end(Side::Host, host, now),
            site: end(Side::Site, site, now),
            now,
            split,
        };
        p.settle().expect("settings exchange");
        p
    }

    /// Moves everything both ways until quiet.
    fn settle(&mut self) -> Result<(), TunnelError> {
        for _ in 0..10_000 {
            let a = Self::flush(&mut self.host, &mut self.site, self.now, self.split)?;
            let b = Self::flush(&mut self.site, &mut self.host, self.now, self.split)?;
            if !a && !b {
                return Ok(());
            }
        }
        panic!("did not settle");
    }

    fn flush(
        from: &mut End,
        to: &mut End,
        now: Instant,
        split: usize,
    ) -> Result<bool, TunnelError> {
        let mut frames = Vec::new();
        from.t.take_frames(&mut frames);
        from.framer.push_encoded(&frames);
        if from.framer.is_empty() {
            return Ok(false);
        }
        let (buf, len) = from.framer.take(Vec::new());
        let wire = &buf[..len];
        for chunk in wire.chunks(split) {
            to.deframer.push(chunk);
            while let Some((rec, range)) = to.deframer.next_record().expect("authentic records") {
                to.t.handle_record(&rec[range.clone()], range.start, now)?;
                while let Some(ev) = to.t.poll_event() {
                    match ev {
                        Event::Data { id, range } => {
                            to.received
                                .entry(id)
                                .or_default()
                                .extend_from_slice(&rec[range.clone()]);
                            if to.hold_all || to.stalled.contains(&id) {
                                *to.held.entry(id).or_default() += range.len();
                            } else {
                                to.t.consumed(id, range.len());
                            }
                        }
                        Event::Ended { id } => {
                            to.ended.insert(id);
                        }
                        Event::Reset { id, code } => {
                            // The driver drops what it held for `id`.
                            to.held.remove(&id);
                            to.resets.push((id, code));
                        }
                        Event::Opened { id, service } => to.opened.push((id, service)),
                        Event::Services(s) => to.services = s,
                        Event::GoAway(r) => to.goaways.push(r),
                        _ => {}
                    }
                }
            }
        }
        Ok(true)
    }
}

/// Sends as much of `data` as credit allows; returns the count sent.
fn send(e: &mut End, id: StreamId, data: &[u8]) -> usize {
    // Control frames (OPEN first of all) precede the data they concern.
    let mut frames = Vec::new();
    e.t.take_frames(&mut frames);
    e.framer.push_encoded(&frames);
    let mut sent = 0;
    while sent < data.len() {
        let credit = e.t.send_credit(id);
        if credit == 0 {
            break;
        }
        let slot = e.framer.data_slot(id, credit.min(data.len() - sent));
        let n = slot.len().min(data.len() - sent);
        slot[..n].copy_from_slice(&data[sent..sent + n]);
        e.framer.commit_data(id, n);
        e.t.sent(id, n);
        sent += n;
    }
    sent
}

/// Sends all of `data` from `host` (or site), settling whenever credit runs out.
fn transfer(p: &mut Pair, from_host: bool, id: StreamId, data: &[u8]) {
    let mut at = 0;
    let mut rounds = 0;
    while at < data.len() {
        let e = if from_host { &mut p.host } else { &mut p.site };
        at += send(e, id, &data[at..]);
        p.settle().expect("no protocol error");
        rounds += 1;
        assert!(rounds < 1_000_000, "transfer stalled at {at}");
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn absurd_windows_byte_by_byte_both_directions_with_half_close() {
    let mut p = Pair::new(cfg(37, 101), cfg(37, 101), 1);
    p.site.t.advertise(&["echo".to_string()]);
    p.settle().expect("advertise");
    assert_eq!(p.host.services, vec!["echo".to_string()]);
    let id = p.host.t.open("echo").expect("open");
    p.settle().expect("open");
    assert_eq!(p.site.opened, vec![(id, "echo".to_string())]);
    let up = pattern(5_000, 1);
    transfer(&mut p, true, id, &up);
    p.host.t.end(id);
    p.settle().expect("end");
    assert!(p.site.ended.contains(&id));
    // Half-closed: the reply still flows.
    let down = pattern(3_000, 2);
    transfer(&mut p, false, id, &down);
    p.site.t.end(id);
    p.settle().expect("end");
    assert_eq!(p.site.received[&id], up);
    assert_eq!(p.host.received[&id], down);
    assert!(p.host.ended.contains(&id));
    assert_eq!(p.host.t.stream_count(), 0);
    assert_eq!(p.site.t.stream_count(), 0);
}

#[test]
fn many_streams_interleaved_split_at_odd_sizes() {
    let mut p = Pair::new(cfg(1000, 5000), cfg(1000, 5000), 7);
    let ids: Vec<StreamId> = (0..20)
        .map(|_| p.host.t.open("svc").expect("open"))
        .collect();
    let data: Vec<Vec<u8>> = (0..20).map(|i| pattern(3_000 + i * 13, i as u8)).collect();
    let mut at = [0usize; 20];
    while at.iter().zip(&data).any(|(a, d)| *a < d.len()) {
        for i in 0..20 {
            at[i] += send(&mut p.host, ids[i], &data[i][at[i]..]);
        }
        p.settle().expect("settle");
    }
    for i in 0..20 {
        assert_eq!(p.site.received[&ids[i]], data[i], "stream {i}");
    }
}

#[test]
fn a_stalled_stream_does_not_stall_another_and_memory_stays_bounded() {
    let mut p = Pair::new(cfg(64, 4096), cfg(64, 4096), 3);
    let a = p.host.t.open("svc").expect("open");
    let b = p.host.t.open("svc").expect("open");
    p.settle().expect("open");
    p.site.stalled.insert(a);
    // A fills its window and stops.
    let stuck = pattern(10_000, 9);
    let mut sent_a = 0;
    for _ in 0..100 {
        sent_a += send(&mut p.host, a, &stuck[sent_a..]);
        p.settle().expect("settle");
    }
    assert_eq!(
        sent_a, 64,
        "a stalled stream gets exactly one window through"
    );
    assert_eq!(p.site.held[&a], 64);
    // B moves 50 KB regardless.
    let other = pattern(50_000, 4);
    transfer(&mut p, true, b, &other);
    assert_eq!(p.site.received[&b], other);
    // A resumes when its reader drains.
    p.site.stalled.remove(&a);
    let held = p.site.held.remove(&a).unwrap_or(0);
    p.site.t.consumed(a, held);
    p.settle().expect("settle");
    transfer(&mut p, true, a, &stuck[sent_a..]);
    assert_eq!(p.site.received[&a], stuck);
}

#[test]
fn sending_beyond_credit_closes_the_tunnel() {
    let mut p = Pair::new(cfg(100, 1000), cfg(100, 1000), 1000);
    let id = p.host.t.open("svc").expect("open");
    p.settle().expect("open");
    // Bypass the credit check.
    let slot = p.host.framer.data_slot(id, 101);
    slot.fill(1);
    p.host.framer.commit_data(id, 101);
    assert_eq!(p.settle(), Err(TunnelError::FlowControl(id)));
}

fn raw_frames(p: &mut Pair, frames: &[Frame<'_>]) -> Result<(), TunnelError> {
    for f in frames {
        p.host.framer.push_frame(f);
    }
    p.settle()
}

#[test]
fn stream_limit_reuse_and_unknown_streams() {
    let mut site_cfg = cfg(100, 1000);
    site_cfg.max_streams = 2;
    let mut p = Pair::new(cfg(100, 1000), site_cfg, 1000);
    // The host respects the site's limit locally...
    p.host.t.open("a").expect("1");
    p.host.t.open("a").expect("2");
    assert_eq!(p.host.t.open("a"), Err(OpenError::Limit));
    p.settle().expect("opens");
    // ...and the site enforces it: a third OPEN is reset, not fatal.
    raw_frames(
        &mut p,
        &[Frame::Open {
            stream: 5,
            service: "a",
        }],
    )
    .expect("refused politely");
    assert_eq!(p.site.t.stream_count(), 2);
    assert!(!p.site.opened.iter().any(|(id, _)| *id == 5));
    // Reusing an id, opening with the wrong parity, data on a never-opened stream: fatal.
    let mut q = Pair::new(cfg(100, 1000), cfg(100, 1000), 1000);
    assert!(raw_frames(
        &mut q,
        &[
            Frame::Open {
                stream: 1,
                service: "a"
            },
            Frame::Open {
                stream: 1,
                service: "a"
            }
        ]
    )
    .is_err());
    let mut q = Pair::new(cfg(100, 1000), cfg(100, 1000), 1000);
    assert!(raw_frames(
        &mut q,
        &[Frame::Open {
            stream: 2,
            service: "a"
        }]
    )
    .is_err());
    let mut q = Pair::new(cfg(100, 1000), cfg(100, 1000), 1000);
    assert!(raw_frames(&mut q, &[Frame::End { stream: 9 }]).is_err());
    assert_eq!(p.host.t.open("bad name"), Err(OpenError::BadName));
}

#[test]
fn data_racing_a_reset_returns_its_tunnel_credit() {
    let mut p = Pair::new(cfg(100, 300), cfg(100, 300), 1000);
    let ids: Vec<_> = (0..3)
        .map(|_| p.host.t.open("svc").expect("open"))
        .collect();
    p.settle().expect("open");
    // The site resets each stream while the host's data is in flight.
    for &id in &ids {
        p.site.t.reset(id, Reason::LOCAL_ERROR);
        assert_eq!(send(&mut p.host, id, &[7; 100]), 100);
    }
    p.settle()
        .expect("data after our reset is dropped, not fatal");
    // Tunnel credit came back: a new stream can still send a full window.
    let id = p.host.t.open("svc").expect("open");
    p.settle().expect("open");
    transfer(&mut p, true, id, &[1; 1000]);
}

#[test]
fn silence_is_detected_and_pings_keep_it_alive() {
    let host = Config {
        ping_interval: Duration::from_millis(100),
        dead_after: Duration::from_millis(350),
        ..Config::default()
    };
    let mut p = Pair::new(host.clone(), host, 1000);
    // With pings flowing, 10 simulated seconds pass without a verdict.
    for _ in 0..100 {
        p.now += Duration::from_millis(100);
        p.host.t.handle_timeout(p.now).expect("alive");
        p.site.t.handle_timeout(p.now).expect("alive");
        p.settle().expect("pings");
    }
    // The site goes silent: the host declares it dead at the bound.
    let start = p.now;
    loop {
        p.now = p
            .host
            .t
            .poll_timeout()
            .max(p.now + Duration::from_millis(1));
        let _ = Pair::flush(&mut p.site, &mut p.host, p.now, 1000); // drain nothing new
        p.host.t.take_frames(&mut Vec::new()); // host pings vanish
        if let Err(e) = p.host.t.handle_timeout(p.now) {
            assert!(matches!(e, TunnelError::Dead(_)));
            break;
        }
        assert!(p.now - start < Duration::from_secs(1), "not detected");
    }
    assert!(p.now - start >= Duration::from_millis(350));
}

#[test]
fn open_reset_churn_keeps_memory_flat() {
    let unlimited = Config {
        max_opens_per_sec: 0,
        ..cfg(100, 1000)
    };
    let mut p = Pair::new(unlimited.clone(), unlimited, 4096);
    for round in 0..2_000 {
        for _ in 0..100 {
            let id = p.host.t.open("svc").expect("open");
            p.host.t.reset(id, Reason::NORMAL);
        }
        // 100 opens and resets per 20 ms: 10,000 of each per second, the
        // most the default churn limit (20,000 per second) allows.
        p.now += Duration::from_millis(20);
        p.settle().expect("churn");
        assert_eq!(p.host.t.stream_count(), 0, "round {round}");
        assert_eq!(p.site.t.stream_count(), 0, "round {round}");
    }
}

#[test]
fn a_peer_churning_streams_past_the_limit_closes_the_tunnel() {
    let limit = Config {
        max_churn_per_sec: 1_000,
        max_opens_per_sec: 0,
        ..cfg(100, 1000)
    };
    let mut p = Pair::new(limit.clone(), limit, 4096);
    // Up to the limit within one second: fine (500 opens + 500 resets).
    for _ in 0..500 {
        let id = p.host.t.open("svc").expect("open");
        p.host.t.reset(id, Reason::NORMAL);
    }
    p.settle().expect("at the limit");
    // A second later the budget is back.
    p.now += Duration::from_secs(1);
    for _ in 0..500 {
        let id = p.host.t.open("svc").expect("open");
        p.host.t.reset(id, Reason::NORMAL);
    }
    p.settle().expect("next second");
    // One more in the same second is too many.
    let id = p.host.t.open("svc").expect("open");
    p.host.t.reset(id, Reason::NORMAL);
    match p.settle() {
        Err(TunnelError::Protocol(why)) => assert!(why.contains("churn"), "{why}"),
        other => panic!("expected the churn limit, got {other:?}"),
    }
}

#[test]
fn stream_ids_run_out_with_one_goaway_never_wrapping() {
    for host in [true, false] {
        let mut p = Pair::new(cfg(100, 1000), cfg(100, 1000), 1000);
        let (me, peer) = if host {
            (&mut p.host, &mut p.site)
        } else {
            (&mut p.site, &mut p.host)
        };
        me.t.skip_ids(2);
        me.t.open("svc").expect("the last but one id");
        let last = me.t.open("svc").expect("the last id");
        assert_eq!(last, if host { u32::MAX } else { u32::MAX - 1 });
        assert_eq!(me.t.open("svc"), Err(OpenError::Exhausted));
        assert_eq!(me.t.open("svc"), Err(OpenError::Exhausted));
        Pair::flush(me, peer, p.now, 1000).expect("a clean end");
        assert_eq!(peer.goaways, vec![Reason::IDS_EXHAUSTED], "one GOAWAY");
        assert_eq!(peer.opened.len(), 2);
    }
}

#[test]
fn a_ping_flood_is_answered_by_one_pong_and_past_the_limit_closes() {
    let no_limit = Config {
        max_pings_per_sec: 0,
        ..cfg(100, 1000)
    };
    let mut p = Pair::new(cfg(100, 1000), no_limit, 1000);
    for i in 0..10_000 {
        p.host.framer.push_frame(&Frame::Ping(i));
    }
    Pair::flush(&mut p.host, &mut p.site, p.now, 4096).expect("pings");
    let mut out = Vec::new();
    p.site.t.take_frames(&mut out);
    let (f, end) = frame::decode(&out, 0).expect("one frame");
    assert_eq!(f, Frame::Pong(9_999), "the latest ping is answered");
    assert_eq!(end, out.len(), "and only it");
    // With the default limit (1,000 a second), the same flood is fatal.
    let mut p = Pair::new(cfg(100, 1000), cfg(100, 1000), 1000);
    // The opening PING of the round-trip measure counts too.
    for i in 0..999 {
        p.host.framer.push_frame(&Frame::Ping(i));
    }
    p.settle().expect("at the limit");
    p.host.framer.push_frame(&Frame::Ping(1));
    match p.settle() {
        Err(TunnelError::Protocol(why)) => assert!(why.contains("ping flood"), "{why}"),
        other => panic!("expected the ping limit, got {other:?}"),
    }
}

/// A pair with windows of 1,000 bytes per stream and 4,000 per tunnel at
/// first, growing to these at most, and one stream open from the host.
fn small_windows(max_stream_window: u32, max_tunnel_window: u32) -> (Pair, StreamId) {
    let c = Config {
        stream_window: 1_000,
        tunnel_window: 4_000,
        max_stream_window,
        max_tunnel_window,
        ping_interval: Duration::from_millis(100),
        dead_after: Duration::from_secs(60),
        ..Config::default()
    };
    let mut p = Pair::new(c.clone(), c, 100_000);
    let id = p.host.t.open("svc").expect("open");
    (p, id)
}

#[test]
fn windows_grow_to_fill_a_long_path_and_no_further() {
    let (mut p, id) = small_windows(16_000, 64_000);
    let data = vec![5u8; 1 << 20];
    let mut per_round = Vec::new();
    // A path of 50 ms each way: one round = send, 50 ms, deliver, 50 ms,
    // credit and PONGs back.
    for _ in 0..60 {
        p.host.t.handle_timeout(p.now).expect("alive");
        p.site.t.handle_timeout(p.now).expect("alive");
        per_round.push(send(&mut p.host, id, &data));
        p.now += Duration::from_millis(50);
        Pair::flush(&mut p.host, &mut p.site, p.now, 100_000).expect("deliver");
        p.now += Duration::from_millis(50);
        Pair::flush(&mut p.site, &mut p.host, p.now, 100_000).expect("credit");
    }
    assert_eq!(p.host.t.rtt(), Some(Duration::from_millis(100)));
    assert_eq!(
        per_round[0], 1_000,
        "the first round trip carries the initial window"
    );
    let last = *per_round.last().expect("rounds");
    assert!(
        last > 8_000,
        "the window grew to fill the path: {per_round:?}"
    );
    assert!(
        per_round.iter().all(|&n| n <= 16_000),
        "never beyond the most: {per_round:?}"
    );
    // A stream that stalls now holds at most the largest window.
    p.site.stalled.insert(id);
    for _ in 0..10 {
        send(&mut p.host, id, &data);
        p.now += Duration::from_millis(50);
        p.settle().expect("settle");
    }
    assert!(p.site.held[&id] <= 16_000, "held {}", p.site.held[&id]);
    assert!(p.site.t.windows().window <= 64_000);
}

/// With a largest stream window as large as the tunnel's, a stream that
/// stalls still holds at most half the tunnel window, and another stream
/// keeps flowing.
#[test]
fn a_stalled_stream_never_holds_more_than_half_the_tunnel_window() {
    let (mut p, id) = small_windows(64_000, 8_000);
    let data = vec![5u8; 1 << 20];
    for _ in 0..40 {
        p.host.t.handle_timeout(p.now).expect("alive");
        p.site.t.handle_timeout(p.now).expect("alive");
        send(&mut p.host, id, &data);
        p.now += Duration::from_millis(50);
        Pair::flush(&mut p.host, &mut p.site, p.now, 100_000).expect("deliver");
        p.now += Duration::from_millis(50);
        Pair::flush(&mut p.site, &mut p.host, p.now, 100_000).expect("credit");
    }
    p.site.stalled.insert(id);
    for _ in 0..10 {
        send(&mut p.host, id, &data);
        p.now += Duration::from_millis(50);
        p.settle().expect("settle");
    }
    let window = p.site.t.windows().window;
    assert!(
        p.site.held[&id] as u64 <= window / 2,
        "held {} of {window}",
        p.site.held[&id]
    );
    let other = p.host.t.open("svc").expect("open");
    let got = send(&mut p.host, other, &data[..500]);
    assert_eq!(got, 500, "the other stream is blocked");
}

#[test]
fn our_own_opens_are_capped_per_second() {
    let c = Config {
        max_opens_per_sec: 100,
        max_streams: 1_000,
        ..cfg(100, 1000)
    };
    let mut p = Pair::new(c.clone(), c, 4096);
    for _ in 0..100 {
        let id = p.host.t.open("svc").expect("within the rate");
        p.host.t.reset(id, Reason::NORMAL);
    }
    assert_eq!(p.host.t.open("svc"), Err(OpenError::RateLimited));
    p.settle().expect("the site sees no more than the rate");
    // A second later the budget is back.
    // A second later the budget is back, even when nothing else happened
    // on the tunnel in between (no frame, no timer: the clock of the last
    // event is still in the full second).
    p.now += Duration::from_secs(1);
    assert_eq!(p.host.t.open("svc"), Err(OpenError::RateLimited));
    p.host.t.open_at("svc", p.now).expect("next second");
}

mod credit;
