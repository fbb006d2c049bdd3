//! Random sequences of stream operations on an in-memory tunnel pair
//! (through real framing and sealing): well-behaved ends never see a
//! protocol error, nothing panics, and every byte arrives in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use revtun_proto::channel::{Deframer, Framer};
use revtun_proto::frame::code;
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
    open: Vec<u32>,
}

fn end(side: Side, now: Instant, w: u32) -> End {
    let (tx, rx) = keys(&[5u8; 64], side, 4);
    let cfg = Config { stream_window: w, tunnel_window: w * 3, max_streams: 8, ..Config::default() };
    End { t: Tunnel::new(side, cfg, now), f: Framer::new(tx), d: Deframer::new(rx), sent: HashMap::new(), got: HashMap::new(), open: Vec::new() }
}

fn deliver(from: &mut End, to: &mut End, split: usize, now: Instant) {
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
                        to.t.consumed(id, n as usize);
                    }
                    Event::Opened { id, .. } => to.open.push(id),
                    Event::Reset { id, .. } => to.open.retain(|x| *x != id),
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

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let w = 16 + u32::from(data.first().copied().unwrap_or(0));
    let mut host = end(Side::Host, now, w);
    let mut site = end(Side::Site, now, w);
    for op in data.chunks(3) {
        let (a, b) = (op.first().copied().unwrap_or(0), op.get(1).copied().unwrap_or(0) as usize);
        match a % 8 {
            0 => {
                if let Ok(id) = host.t.open("svc") {
                    host.open.push(id);
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
                    site.t.reset(id, code::NORMAL);
                    site.open.retain(|x| *x != id);
                }
            }
            6 => {
                now += Duration::from_millis(b as u64);
                let _ = host.t.handle_timeout(now);
                let _ = site.t.handle_timeout(now);
            }
            _ => {
                deliver(&mut host, &mut site, b + 1, now);
                deliver(&mut site, &mut host, b + 1, now);
            }
        }
    }
    deliver(&mut host, &mut site, 4096, now);
    deliver(&mut site, &mut host, 4096, now);
});
