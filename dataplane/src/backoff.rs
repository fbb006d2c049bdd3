//! Full-jitter exponential backoff (threat 10): the delay before attempt
//! `n` is uniform in `[0, min(cap, base * 2^n)]`, so a thousand sites that
//! lost the host together do not return together.

use std::time::Duration;

/// Backoff state. Randomness is passed in so tests are exact.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base`, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a uniform random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self
            .base
            .checked_mul(1u32 << self.attempt.min(20))
            .map_or(self.cap, |d| d.min(self.cap));
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Back to the first step (after a connection that stayed up).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A uniform random number in `[0, 1)` from the system generator.
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(200));
        assert_eq!(b.next_delay(0.5), Duration::from_millis(200));
        for _ in 0..40 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(5));
        }
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
