//! Handshake rate per source prefix (threat 6): a token bucket per key,
//! sans-IO (the caller passes the time). The concurrency caps bound how
//! many handshakes one source holds at once; this bounds how many it may
//! start per second, so one source cannot take the handshake capacity of
//! control for itself.
//!
//! Control keys it by source prefix ([`Prefix`]: /24, /64), not by
//! address. Per address, an IPv6 /64 (one subscriber) would have 2^64
//! fresh buckets and no limit at all, and one IPv4 /24 would start 256
//! times the rate: at the default 100/s that is 25,600 handshakes a
//! second, far past what control can run (docs/performance.md measures
//! 570 enrollments and 1,615 re-authentications a second). Per prefix, a
//! /24 gets 100/s, a sixth of the enrollment capacity. What it costs:
//! sites that share one /24 (a NAT pool, a hosting block) share its 100
//! handshakes a second; a site connects a few times a day, and a
//! reconnect storm spreads its agents over seconds of backoff jitter.
//!
//! # Bounded work and memory
//!
//! At most `max_tracked` keys are tracked. A bucket that has refilled
//! (it is full) is the same as no bucket, so forgetting it changes no
//! answer; the table forgets such idle keys incrementally, never with a
//! full scan: every tracked key sits once in a queue, and each call looks
//! at the [`SWEEP_PER_CALL`] keys at its front, forgetting those that are
//! idle and sending the others to the back. When a new key finds the
//! table full, up to [`EVICT_SCAN`] more are looked at; if none of them is
//! idle the new key is let through untracked (a fresh key's bucket is
//! full, so it would have been let through anyway; the overall pending
//! cap still holds; past `max_tracked` busy prefixes, the others' rate
//! goes unchecked). An attacker with many prefixes therefore cannot lock
//! out a prefix it does not own: a key is refused only when its own
//! handshakes emptied its bucket, so a source that keeps to its rate is
//! never refused, whatever the other sources do.

use crate::source::Prefix;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Keys tracked at once. Each costs a hash-table slot (a 9-byte prefix and
/// a 16-byte time, 32 bytes aligned, in a table of up to twice as many
/// slots) and a 9-byte queue entry: about 5 MiB at worst.
pub const MAX_TRACKED: usize = 65_536;

/// Keys at the front of the queue every call looks at.
pub const SWEEP_PER_CALL: usize = 2;

/// Further keys a new key looks at, at most, to find room in a full table.
pub const EVICT_SCAN: usize = 32;

/// Per-source token buckets, kept as the generic cell rate algorithm: one
/// time per key, the instant its bucket will be full again (its
/// "theoretical arrival time"). A key whose time has passed is idle. In
/// integer nanoseconds, so every answer is exact whatever the history of
/// calls (floating-point tokens are not).
#[derive(Debug)]
pub struct PerSourceRate<K = Prefix> {
    /// Time one handshake refills (1 s / rate); `None`: no limit.
    interval: Option<Duration>,
    /// How far ahead of now a bucket may be full again: burst x interval.
    window: Duration,
    full_at: HashMap<K, Instant>,
    /// Every key of `full_at` exactly once, in the order the sweep visits
    /// them (front first).
    queue: VecDeque<K>,
    max_tracked: usize,
    /// Queue entries looked at so far (for tests of the work bound).
    examined: u64,
}

impl<K: Copy + Eq + Hash> PerSourceRate<K> {
    /// `per_sec` handshakes per second per key, bursts of as many (0
    /// turns the limit off).
    pub fn new(per_sec: u32) -> Self {
        Self::with_capacity(per_sec, MAX_TRACKED)
    }

    /// As [`PerSourceRate::new`] tracking at most `max_tracked` keys.
    pub fn with_capacity(per_sec: u32, max_tracked: usize) -> Self {
        let interval = (per_sec > 0).then(|| Duration::from_secs(1) / per_sec);
        PerSourceRate {
            interval,
            window: interval.unwrap_or_default() * per_sec,
            full_at: HashMap::new(),
            queue: VecDeque::new(),
            max_tracked: max_tracked.max(1),
            examined: 0,
        }
    }

    /// Whether `key` may start a handshake at `now` (and spends it).
    /// Looks at no more than [`SWEEP_PER_CALL`] + [`EVICT_SCAN`] other keys.
    pub fn allow(&mut self, key: K, now: Instant) -> bool {
        let Some(interval) = self.interval else {
            return true;
        };
        self.sweep(now, SWEEP_PER_CALL);
        let tracked = self.full_at.get(&key).copied();
        // Untracked is the same as idle: the bucket is full.
        let next = match tracked.unwrap_or(now).max(now).checked_add(interval) {
            Some(t) => t,
            None => return true,
        };
        if next.saturating_duration_since(now) > self.window {
            return false;
        }
        if tracked.is_none() {
            if self.full_at.len() >= self.max_tracked {
                self.sweep(now, EVICT_SCAN);
            }
            if self.full_at.len() >= self.max_tracked {
                // Every key looked at is busy: let this one through
                // untracked rather than refuse a source for others' sake.
                return true;
            }
            self.queue.push_back(key);
        }
        self.full_at.insert(key, next);
        true
    }

    /// Looks at up to `budget` keys at the front of the queue: forgets the
    /// idle ones, sends the others to the back.
    fn sweep(&mut self, now: Instant, budget: usize) {
        for _ in 0..budget.min(self.queue.len()) {
            let Some(key) = self.queue.pop_front() else {
                break;
            };
            self.examined += 1;
            if self.full_at.get(&key).is_none_or(|&t| t <= now) {
                self.full_at.remove(&key);
            } else {
                self.queue.push_back(key);
            }
        }
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.full_at.len()
    }

    /// Queue entries looked at since creation.
    pub fn examined(&self) -> u64 {
        self.examined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = PerSourceRate::<u32>::new(10);
        assert_eq!((0..15).filter(|_| r.allow(1, t0)).count(), 10);
        // Another key has its own bucket.
        assert!(r.allow(2, t0));
        // 100 ms later: one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(r.allow(1, t1));
        assert!(!r.allow(1, t1));
        // After a long pause the bucket is full again, not more.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..30).filter(|_| r.allow(1, t2)).count(), 10);
    }

    #[test]
    fn zero_is_off() {
        let mut r = PerSourceRate::<u32>::new(0);
        let t = Instant::now();
        assert!((0..10_000).all(|_| r.allow(1, t)));
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn keyed_by_prefix_one_24_shares_one_bucket() {
        use std::net::IpAddr;
        let t = Instant::now();
        let mut r = PerSourceRate::<Prefix>::new(10);
        let ip = |c: u8, d: u8| Prefix::of(IpAddr::from([127, 0, c, d]));
        // 64 addresses of one /24 get the burst of one source, not 64.
        assert_eq!((1..=64).filter(|&d| r.allow(ip(5, d), t)).count(), 10);
        assert!(r.allow(ip(9, 1), t));
        assert_eq!(r.tracked(), 2);
    }

    #[test]
    fn the_table_stays_bounded_and_each_call_does_bounded_work() {
        let t0 = Instant::now();
        let mut r = PerSourceRate::<u32>::with_capacity(1, 64);
        for key in 0..10_000u32 {
            let before = r.examined();
            // A fresh key has a full bucket: let through, tracked or not.
            assert!(r.allow(key, t0));
            assert!(r.tracked() <= 64);
            assert!(r.examined() - before <= (SWEEP_PER_CALL + EVICT_SCAN) as u64);
        }
        assert_eq!(r.tracked(), 64);
        assert_eq!(r.queue.len(), r.full_at.len());
    }

    #[test]
    fn many_sources_cannot_lock_out_a_fresh_one() {
        let t0 = Instant::now();
        let cap = 64;
        let mut r = PerSourceRate::<u32>::with_capacity(1, cap);
        // An attacker with 10,000 sources hammers, several rounds at once:
        // the table is full of empty buckets.
        for _ in 0..5 {
            for key in 0..10_000u32 {
                r.allow(key, t0);
            }
        }
        assert_eq!(r.tracked(), cap);
        // The tracked attacker sources are held to their rate...
        let held = (0..10_000u32).filter(|&k| !r.allow(k, t0)).count();
        assert_eq!(held, cap);
        // ...and a fresh source is let through, every time it is fresh.
        for fresh in 1_000_000..1_000_100u32 {
            assert!(r.allow(fresh, t0));
        }
        // Once the attacker's buckets refilled they are forgotten for new
        // sources, which are then tracked (and held to their own rate).
        let t1 = t0 + Duration::from_secs(2);
        assert!(r.allow(2_000_000, t1));
        assert!(!r.allow(2_000_000, t1));
        assert!(r.tracked() <= cap);
    }

    #[test]
    fn idle_sources_are_forgotten_without_a_full_table() {
        let t0 = Instant::now();
        let mut r = PerSourceRate::<u32>::with_capacity(10, 1_000);
        for key in 0..500u32 {
            r.allow(key, t0);
        }
        assert_eq!(r.tracked(), 500);
        // One source keeps connecting after the others went quiet: the
        // sweep forgets the refilled buckets as it goes, a few per call.
        let t1 = t0 + Duration::from_secs(5);
        for i in 0..300u32 {
            r.allow(7, t1 + Duration::from_millis(u64::from(i) * 100));
        }
        assert_eq!(r.tracked(), 1);
    }

    /// A small deterministic generator (no timing, no randomness source).
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *state >> 33
    }

    #[test]
    fn a_source_within_its_rate_is_never_refused_whatever_others_do() {
        // Tables that fit the busy keys and tables far too small for them.
        for cap in [4, 16, 1_000] {
            let t0 = Instant::now();
            let mut r = PerSourceRate::<u32>::with_capacity(5, cap);
            let (steady, bursty) = (1_000_000, 1_000_001);
            let mut s = 42;
            let mut attacker_refused = 0;
            // 60 s in 10 ms steps; at each step 20 calls from an attacker
            // with 10,000 keys, a few of them hot.
            for step in 0..6_000u64 {
                let now = t0 + Duration::from_millis(step * 10);
                for _ in 0..20 {
                    let key = if lcg(&mut s) & 1 == 0 {
                        (lcg(&mut s) % 4) as u32
                    } else {
                        (lcg(&mut s) % 10_000) as u32
                    };
                    attacker_refused += usize::from(!r.allow(key, now));
                    assert!(r.tracked() <= cap);
                }
                // One handshake every 200 ms: exactly the rate.
                if step % 20 == 0 {
                    assert!(r.allow(steady, now), "cap {cap}, step {step}");
                }
                // The whole burst at once, once a second.
                if step % 100 == 50 {
                    for _ in 0..5 {
                        assert!(r.allow(bursty, now), "cap {cap}, step {step}");
                    }
                }
            }
            // The attacker's hot keys are held to their rate all along.
            assert!(attacker_refused > 50_000, "cap {cap}: {attacker_refused}");
        }
    }

    #[test]
    fn time_going_backwards_neither_panics_nor_refills() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut r = PerSourceRate::<u32>::with_capacity(1, 4);
        assert!(r.allow(1, t0));
        assert!(!r.allow(1, t0 - Duration::from_secs(5)));
        assert!(r.tracked() <= 4);
    }
}
