//! Random sequences of stream operations on an in-memory tunnel pair
//! (through real framing and sealing): well-behaved ends never see a
//! protocol error, nothing panics, every byte arrives in order, and the
//! credit invariant holds: once every stream has ended (however: reset by
//! either side, ended with bytes still held, dropped by the driver), both
//! tunnel windows are whole again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::channel::{Deframer, Framer};
use revtun_proto::frame::Reason;
use revtun_proto::record::{keys, Side};
use revtun_proto::tunnel::{Config, Event, Tunnel};
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct End {
    t: Tunnel,
    f: Framer,
    d: Deframer,
    sent: HashMap<u32, u64>,
    got: HashMap<u32, u64>,
    /// Bytes received and not yet written out by the "driver".
    held: HashMap<u32, usize>,
    open: Vec<u32>,
}

fn end(side: Side, now: Instant, w: u32) -> End {
    let (tx, rx) = keys(&[5u8; 64], side, 4);
    let cfg = Config { stream_window: w, tunnel_window: w * 3, max_streams: 8, ..Config::default() };
    End { t: Tunnel::new(side, cfg, now), f: Framer::new(tx), d: Deframer::new(rx), sent: HashMap::new(), got: HashMap::new(), held: HashMap::new(), open: Vec::new() }
}

fn deliver(from: &mut End, to: &mut End, split: usize, now: Instant, hold: bool) {
    let mut frames = Vec::new();
    from.t.take_frames(&mut frames);
    from.f.push_encoded(&frames);
    let (buf, len) = from.f.take(Vec::new());
    let wire = &buf[..len];
    for chunk in wire.chunks(split.max(1)) {
        to.d.push(chunk);
        while let Some((rec, range)) = to.d.next_record().expect("authentic") {
            to.t.handle_record(&rec[range.clone()], range.start, now).expect("well-behaved peer");
            while let Some(ev) = to.t.poll_event() {
                match ev {
                    Event::Data { id, range } => {
                        let n = range.len() as u64;
                        // Bytes carry their stream offset modulo 251.
                        let start = *to.got.get(&id).unwrap_or(&0);
                        for (i, b) in rec[range.clone()].iter().enumerate() {
                            assert_eq!(*b, ((start + i as u64) % 251) as u8, "in order");
                        }
                        *to.got.entry(id).or_default() += n;
                        if hold {
                            *to.held.entry(id).or_default() += n as usize;
                        } else {
                            to.t.consumed(id, n as usize);
                        }
                    }
                    Event::Opened { id, .. } => to.open.push(id),
                    Event::Reset { id, .. } => {
                        to.open.retain(|x| *x != id);
                        to.held.remove(&id);
                    }
                    _ => {}
                }
            }
        }
    }
}

fn send(e: &mut End, id: u32, n: usize) {
    let mut frames = Vec::new();
    e.t.take_frames(&mut frames);
    e.f.push_encoded(&frames);
    let credit = e.t.send_credit(id).min(n);
    if credit == 0 {
        return;
    }
    let start = *e.sent.get(&id).unwrap_or(&0);
    let slot = e.f.data_slot(id, credit);
    let k = slot.len().min(credit);
    for (i, b) in slot[..k].iter_mut().enumerate() {
        *b = ((start + i as u64) % 251) as u8;
    }
    e.f.commit_data(id, k);
    e.t.sent(id, k);
    *e.sent.entry(id).or_default() += k as u64;
}

fn drain(e: &mut End, id: u32, n: usize) {
    let held = e.held.get(&id).copied().unwrap_or(0);
    let k = held.min(n);
    if k > 0 {
        e.t.consumed(id, k);
        e.held.insert(id, held - k);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let w = 16 + u32::from(data.first().copied().unwrap_or(0));
    let hold = data.get(1).is_some_and(|b| b & 1 == 1);
    let mut host = end(Side::Host, now, w);
    let mut site = end(Side::Site, now, w);
    let mut ids: Vec<u32> = Vec::new();
    for op in data.chunks(3) {
        let (a, b) = (op.first().copied().unwrap_or(0), op.get(1).copied().unwrap_or(0) as usize);
        match a % 11 {
            0 => {
                if let Ok(id) = host.t.open("svc") {
                    host.open.push(id);
                    ids.push(id);
                }
            }
            1 | 2 => {
                if let Some(&id) = host.open.get(b % host.open.len().max(1)) {
                    send(&mut host, id, b * 37 + 1);
                }
            }
            3 => {
                if let Some(&id) = site.open.get(b % site.open.len().max(1)) {
                    send(&mut site, id, b * 41 + 1);
                }
            }
            4 => {
                if let Some(&id) = host.open.get(b % host.open.len().max(1)) {
                    host.t.end(id);
                }
            }
            5 => {
                if let Some(&id) = site.open.get(b % site.open.len().max(1)) {
                    site.t.reset(id, Reason::NORMAL);
                    site.open.retain(|x| *x != id);
                    site.held.remove(&id);
                }
            }
            6 => {
                now += Duration::from_millis(b as u64);
                let _ = host.t.handle_timeout(now);
                let _ = site.t.handle_timeout(now);
            }
            7 => {
                if let Some(&id) = ids.get(b % ids.len().max(1)) {
                    drain(&mut host, id, b * 13 + 1);
                    drain(&mut site, id, b * 13 + 1);
                }
            }
            8 => {
                // The host's driver drops a stream whose bytes it holds.
                if let Some(&id) = host.open.get(b % host.open.len().max(1)) {
                    host.t.reset(id, Reason::LOCAL_ERROR);
                    host.open.retain(|x| *x != id);
                    host.held.remove(&id);
                }
            }
            9 => {
                if let Some(&id) = site.open.get(b % site.open.len().max(1)) {
                    site.t.end(id);
                }
            }
            _ => {
                deliver(&mut host, &mut site, b + 1, now, hold);
                deliver(&mut site, &mut host, b + 1, now, hold);
            }
        }
    }
    deliver(&mut host, &mut site, 4096, now, hold);
    deliver(&mut site, &mut host, 4096, now, hold);
    // Every stream ends: even ones reset, odd ones ended by both sides and
    // drained. Then both windows must be whole.
    for _ in 0..6 {
        for (k, &id) in ids.iter().enumerate() {
            for e in [&mut host, &mut site] {
                if k % 2 == 0 {
                    e.t.reset(id, Reason::NORMAL);
                    e.held.remove(&id);
                } else {
                    e.t.end(id);
                }
            }
        }
        deliver(&mut host, &mut site, 4096, now, hold);
        deliver(&mut site, &mut host, 4096, now, hold);
        for e in [&mut host, &mut site] {
            let held: Vec<_> = e.held.drain().collect();
            for (id, n) in held {
                e.t.consumed(id, n);
                e.t.finished(id);
            }
        }
        deliver(&mut host, &mut site, 4096, now, hold);
        deliver(&mut site, &mut host, 4096, now, hold);
    }
    let (h, s) = (host.t.windows(), site.t.windows());
    assert!(h.whole(), "host window not whole: {h:?}");
    assert!(s.whole(), "site window not whole: {s:?}");
    assert_eq!(h.send_credit, s.recv_allowed);
    assert_eq!(s.send_credit, h.recv_allowed);
    assert_eq!(host.t.stream_count(), 0);
    assert_eq!(site.t.stream_count(), 0);
});
