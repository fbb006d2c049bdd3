//! Handshake rate per source address (threat 6): a token bucket per
//! address, sans-IO (the caller passes the time). The concurrency caps
//! bound how many handshakes one address holds at once; this bounds how
//! many it may start per second, so one address cannot take the
//! handshake capacity of control for itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Addresses tracked at once; beyond this, idle (full) buckets are
/// forgotten, and if none is idle a new address is let through untracked
/// (the overall pending cap still holds): an attacker with many addresses
/// must not be able to lock out addresses it does not own.
pub const MAX_TRACKED: usize = 65_536;

/// Per-address token buckets.
#[derive(Debug)]
pub struct PerAddrRate {
    per_sec: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    max_tracked: usize,
}

impl PerAddrRate {
    /// `per_sec` handshakes per second per address, bursts of as many
    /// (0 turns the limit off).
    pub fn new(per_sec: u32) -> Self {
        Self::with_capacity(per_sec, MAX_TRACKED)
    }

    /// As [`PerAddrRate::new`] tracking at most `max_tracked` addresses.
    pub fn with_capacity(per_sec: u32, max_tracked: usize) -> Self {
        PerAddrRate {
            per_sec: f64::from(per_sec),
            burst: f64::from(per_sec),
            buckets: HashMap::new(),
            max_tracked: max_tracked.max(1),
        }
    }

    /// Whether `addr` may start a handshake at `now` (and spends it).
    pub fn allow(&mut self, addr: IpAddr, now: Instant) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        if !self.buckets.contains_key(&addr) && self.buckets.len() >= self.max_tracked {
            let (per_sec, burst) = (self.per_sec, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < burst
            });
            if self.buckets.len() >= self.max_tracked {
                return true;
            }
        }
        let (tokens, at) = self.buckets.entry(addr).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = PerAddrRate::new(10);
        assert_eq!((0..15).filter(|_| r.allow(ip(1), t0)).count(), 10);
        // Another address has its own bucket.
        assert!(r.allow(ip(2), t0));
        // 100 ms later: one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(r.allow(ip(1), t1));
        assert!(!r.allow(ip(1), t1));
        // After a long pause the bucket is full again, not more.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..30).filter(|_| r.allow(ip(1), t2)).count(), 10);
    }

    #[test]
    fn zero_is_off() {
        let mut r = PerAddrRate::new(0);
        let t = Instant::now();
        assert!((0..10_000).all(|_| r.allow(ip(1), t)));
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn memory_is_bounded_and_full_table_fails_open() {
        let t0 = Instant::now();
        let mut r = PerAddrRate::with_capacity(1, 4);
        for n in 1..=4 {
            assert!(r.allow(ip(n), t0));
        }
        // Table full of busy buckets: a new address passes untracked.
        assert!(r.allow(ip(9), t0));
        assert_eq!(r.tracked(), 4);
        // Once the old buckets refilled they are forgotten for new ones.
        let t1 = t0 + Duration::from_secs(2);
        assert!(r.allow(ip(10), t1));
        assert!(r.tracked() <= 4);
        // Time going backwards (a caller bug) neither panics nor refills.
        assert!(!r.allow(ip(10), t0) || r.tracked() <= 4);
    }
}
