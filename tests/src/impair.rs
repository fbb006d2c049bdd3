//! An impairment proxy for the fault lab: a TCP relay on loopback between
//! a site and its host that can add delay and jitter, cap bandwidth, stall
//! without closing, black-hole, cut abruptly and flip a byte. This kernel
//! has no `netem`, so the impairments live here, in user space.
//!
//! Every connection accepted on [`Impair::addr`] is relayed to the
//! upstream address; the impairment in force applies to every connection
//! and can be changed at any time through the [`Impair`] handle. Each
//! direction is a reader thread and a writer thread joined by a bounded
//! queue (the "path": its capacity is what the link holds in flight), so a
//! delayed link still moves bytes at full rate once its pipe is full.

use anyhow::Result;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What happens to bytes in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay (with the configured delay, jitter and rate).
    Pass,
    /// Relay nothing and read nothing; connections stay open (buffers fill).
    Stall,
    /// Read and drop everything; connections stay open, nothing arrives.
    BlackHole,
}

/// Settings in force (shared by every connection).
#[derive(Debug)]
struct Settings {
    mode: Mutex<Mode>,
    /// One-way delay and jitter (uniform in 0..jitter), microseconds.
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
    /// Bytes per second per direction and connection (0: no cap).
    rate: AtomicU64,
    /// Flip one byte at this offset of the next connection's host-bound
    /// (`up`) direction once (u64::MAX: never).
    flip_up_at: AtomicU64,
    /// Likewise for the site-bound direction.
    flip_down_at: AtomicU64,
    /// Most bytes one direction holds in flight.
    path_bytes: usize,
}

/// A running proxy. Dropping it stops accepting; live relays end when
/// their sockets close.
#[derive(Debug)]
pub struct Impair {
    addr: SocketAddr,
    s: Arc<Settings>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
}

/// Most bytes in flight per direction by default (a long fat path holds
/// about bandwidth x delay).
pub const PATH_BYTES: usize = 64 << 20;

impl Impair {
    /// A proxy on a kernel-chosen loopback port relaying to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Impair> {
        Self::with_path(upstream, PATH_BYTES)
    }

    /// [`Impair::start`] with another in-flight capacity per direction.
    pub fn with_path(upstream: SocketAddr, path_bytes: usize) -> Result<Impair> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let s = Arc::new(Settings {
            mode: Mutex::new(Mode::Pass),
            delay_us: AtomicU64::new(0),
            jitter_us: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            flip_up_at: AtomicU64::new(u64::MAX),
            flip_down_at: AtomicU64::new(u64::MAX),
            path_bytes,
        });
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (s2, c2, st2, a2) = (s.clone(), conns.clone(), stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            while !st2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((down, _)) => {
                        a2.fetch_add(1, Ordering::Relaxed);
                        let _ = down.set_nonblocking(false);
                        let Ok(up) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        let _ = up.set_nodelay(true);
                        let _ = down.set_nodelay(true);
                        let flip_up = s2.flip_up_at.swap(u64::MAX, Ordering::Relaxed);
                        let flip_down = s2.flip_down_at.swap(u64::MAX, Ordering::Relaxed);
                        if let (Ok(d2), Ok(u2)) = (down.try_clone(), up.try_clone()) {
                            let mut g = c2.lock().unwrap_or_else(|p| p.into_inner());
                            g.retain(|c: &TcpStream| c.peer_addr().is_ok());
                            g.push(d2);
                            g.push(u2);
                        }
                        relay(&down, &up, s2.clone(), flip_up);
                        relay(&up, &down, s2.clone(), flip_down);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Impair {
            addr,
            s,
            conns,
            stop,
            accepted,
        })
    }

    /// Where sites should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Sets what happens to bytes in flight.
    pub fn set_mode(&self, m: Mode) {
        *self.s.mode.lock().unwrap_or_else(|p| p.into_inner()) = m;
    }

    /// One-way delay and jitter (each direction gets both: the round trip
    /// grows by twice `delay`).
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        self.s
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
        self.s
            .jitter_us
            .store(jitter.as_micros() as u64, Ordering::Relaxed);
    }

    /// Caps each direction of each connection at `bytes_per_sec` (0: none).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.s.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Flips one byte at `offset` of the next connection, towards the host
    /// (`up`) or towards the site.
    pub fn flip_next(&self, up: bool, offset: u64) {
        let f = if up {
            &self.s.flip_up_at
        } else {
            &self.s.flip_down_at
        };
        f.store(offset, Ordering::Relaxed);
    }

    /// Cuts every live connection abruptly (a reset both ways).
    pub fn cut(&self) {
        let mut g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for c in g.drain(..) {
            let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Impair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

/// A chunk in flight and when it may leave.
struct Flight {
    due: Instant,
    bytes: Vec<u8>,
}

/// The bounded queue of one direction.
struct Path {
    q: Mutex<(VecDeque<Flight>, usize, bool)>,
    cv: Condvar,
}

/// Relays `from` -> `to` on two threads until either side ends.
fn relay(from: &TcpStream, to: &TcpStream, s: Arc<Settings>, flip_at: u64) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let path = Arc::new(Path {
        q: Mutex::new((VecDeque::new(), 0, false)),
        cv: Condvar::new(),
    });
    let (p2, s2) = (path.clone(), s.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut offset = 0u64;
        let mut last_due = Instant::now();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
        loop {
            let mode = *s2.mode.lock().unwrap_or_else(|p| p.into_inner());
            if mode == Mode::Stall {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    if *s2.mode.lock().unwrap_or_else(|p| p.into_inner()) == Mode::BlackHole {
                        // A black hole passes nothing on, not even the end.
                        return;
                    }
                    break;
                }
                Ok(n) => n,
            };
            let mode = *s2.mode.lock().unwrap_or_else(|p| p.into_inner());
            if mode == Mode::BlackHole {
                offset += n as u64;
                continue;
            }
            let mut bytes = buf[..n].to_vec();
            if (offset..offset + n as u64).contains(&flip_at) {
                bytes[(flip_at - offset) as usize] ^= 0x01;
            }
            offset += n as u64;
            let delay = s2.delay_us.load(Ordering::Relaxed);
            let jitter = s2.jitter_us.load(Ordering::Relaxed);
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let extra = if jitter > 0 { rng % jitter } else { 0 };
            // Order is kept: a chunk never leaves before the one before it.
            let due = (Instant::now() + Duration::from_micros(delay + extra)).max(last_due);
            last_due = due;
            let mut g = p2.q.lock().unwrap_or_else(|p| p.into_inner());
            while g.1 + n > s2.path_bytes && !g.2 {
                g = p2.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            if g.2 {
                break;
            }
            g.1 += n;
            g.0.push_back(Flight { due, bytes });
            p2.cv.notify_all();
        }
        let mut g = p2.q.lock().unwrap_or_else(|p| p.into_inner());
        g.2 = true;
        p2.cv.notify_all();
    });
    std::thread::spawn(move || {
        let mut sent_since = Instant::now();
        let mut sent = 0u64;
        loop {
            let f = {
                let mut g = path.q.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if let Some(f) = g.0.pop_front() {
                        g.1 -= f.bytes.len();
                        path.cv.notify_all();
                        break Some(f);
                    }
                    if g.2 {
                        break None;
                    }
                    g = path.cv.wait(g).unwrap_or_else(|p| p.into_inner());
                }
            };
            let Some(f) = f else {
                let _ = to.shutdown(Shutdown::Write);
                break;
            };
            let now = Instant::now();
            if f.due > now {
                std::thread::sleep(f.due - now);
            }
            while *s.mode.lock().unwrap_or_else(|p| p.into_inner()) == Mode::Stall {
                std::thread::sleep(Duration::from_millis(5));
            }
            if to.write_all(&f.bytes).is_err() {
                let mut g = path.q.lock().unwrap_or_else(|p| p.into_inner());
                g.2 = true;
                path.cv.notify_all();
                break;
            }
            let rate = s.rate.load(Ordering::Relaxed);
            if rate > 0 {
                sent += f.bytes.len() as u64;
                let want = Duration::from_secs_f64(sent as f64 / rate as f64);
                let spent = sent_since.elapsed();
                if want > spent {
                    std::thread::sleep(want - spent);
                }
                if spent > Duration::from_secs(1) {
                    sent_since = Instant::now();
                    sent = 0;
                }
            }
        }
    });
}
