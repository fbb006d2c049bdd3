//! Handshakes in progress on the control listener, counted overall, per
//! source address and per source prefix (threat 5), sans-IO.
//!
//! The overall cap bounds control's memory; the per-source caps keep one
//! party from filling it. The per-prefix cap is the one that matters
//! against a party owning many addresses (see [`crate::source`]): with
//! the defaults, one /24 or one /64 holds at most 64 of the 1,024 slots,
//! so filling them takes 16 prefixes. The per-address cap below it keeps
//! one address from taking its whole prefix's share from the neighbours
//! it shares a /24 with.
//!
//! Both tables hold only sources with a handshake in progress (an entry
//! goes when its count reaches zero), so each has at most `max_total`
//! entries.

use crate::source::{canonical, Prefix};
use std::collections::HashMap;
use std::net::IpAddr;

/// The three caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Handshakes in progress overall.
    pub total: usize,
    /// From one source address.
    pub per_addr: usize,
    /// From one source prefix (/24 or /64).
    pub per_prefix: usize,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The overall cap.
    Total,
    /// The source prefix's cap.
    Prefix,
    /// The source address's cap.
    Addr,
}

impl Full {
    /// For the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Full::Total => "overall",
            Full::Prefix => "per prefix",
            Full::Addr => "per address",
        }
    }
}

/// The counts.
#[derive(Debug)]
pub struct Pending {
    caps: Caps,
    total: usize,
    per_addr: HashMap<IpAddr, usize>,
    per_prefix: HashMap<Prefix, usize>,
}

impl Pending {
    /// Empty, with these caps.
    pub fn new(caps: Caps) -> Self {
        Pending {
            caps,
            total: 0,
            per_addr: HashMap::new(),
            per_prefix: HashMap::new(),
        }
    }

    /// Replaces the caps (a reload): handshakes in progress keep their
    /// slots; new ones are checked against these.
    pub fn set_caps(&mut self, caps: Caps) {
        self.caps = caps;
    }

    /// Takes a slot for a handshake from `ip`, or says which cap is full.
    /// Every `Ok` must be matched by one [`Pending::release`] of the same
    /// address.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Full> {
        let ip = canonical(ip);
        let prefix = Prefix::of(ip);
        if self.total >= self.caps.total {
            return Err(Full::Total);
        }
        if self.per_prefix.get(&prefix).copied().unwrap_or(0) >= self.caps.per_prefix {
            return Err(Full::Prefix);
        }
        if self.per_addr.get(&ip).copied().unwrap_or(0) >= self.caps.per_addr {
            return Err(Full::Addr);
        }
        self.total += 1;
        *self.per_prefix.entry(prefix).or_insert(0) += 1;
        *self.per_addr.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    /// Gives back the slot an [`Pending::admit`] of `ip` took.
    pub fn release(&mut self, ip: IpAddr) {
        let ip = canonical(ip);
        self.total = self.total.saturating_sub(1);
        decrement(&mut self.per_prefix, Prefix::of(ip));
        decrement(&mut self.per_addr, ip);
    }

    /// Handshakes in progress overall.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Handshakes in progress from `ip`'s prefix.
    pub fn of_prefix(&self, ip: IpAddr) -> usize {
        self.per_prefix.get(&Prefix::of(ip)).copied().unwrap_or(0)
    }

    /// Entries in the two tables (sources with a handshake in progress).
    pub fn tracked(&self) -> (usize, usize) {
        (self.per_addr.len(), self.per_prefix.len())
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Caps = Caps {
        total: 1024,
        per_addr: 32,
        per_prefix: 64,
    };

    fn v4(c: u8, d: u8) -> IpAddr {
        IpAddr::from([127, 0, c, d])
    }

    #[test]
    fn one_prefix_holds_its_share_and_no_more() {
        let mut p = Pending::new(DEFAULTS);
        // 64 addresses of one /24, 20 attempts each: 1,280 attempts, more
        // than the overall cap; only the prefix's 64 get a slot.
        let admitted = (1..=64)
            .flat_map(|d| (0..20).map(move |_| v4(5, d)))
            .filter(|&ip| p.admit(ip).is_ok())
            .count();
        assert_eq!(admitted, 64);
        assert_eq!(p.admit(v4(5, 200)), Err(Full::Prefix));
        // Another /24 still gets in, up to its address's cap.
        let other = (0..40).filter(|_| p.admit(v4(9, 1)).is_ok()).count();
        assert_eq!(other, 32);
        assert_eq!(p.admit(v4(9, 1)), Err(Full::Addr));
        assert!(p.admit(v4(9, 2)).is_ok());
        assert_eq!(p.total(), 64 + 32 + 1);
    }

    #[test]
    fn the_overall_cap_needs_many_prefixes() {
        let mut p = Pending::new(DEFAULTS);
        // Every address of 256 /24s, once each, until the overall cap.
        let mut refused_total = 0;
        for c in 0..=255u8 {
            for d in 1..=255u8 {
                match p.admit(v4(c, d)) {
                    Ok(()) | Err(Full::Prefix) => {}
                    Err(Full::Total) => refused_total += 1,
                    Err(Full::Addr) => panic!("one attempt per address"),
                }
            }
        }
        assert_eq!(p.total(), 1024);
        assert!(refused_total > 0);
        // Sixteen prefixes of 64 each hold it.
        assert_eq!(p.tracked(), (1024, 1024 / 64));
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_by_24() {
        let mut p = Pending::new(DEFAULTS);
        let in_64 = |n: u16| IpAddr::from([0x2001, 0xdb8, 0, 7, n, n, n, n]);
        let admitted = (0..1000).filter(|&n| p.admit(in_64(n)).is_ok()).count();
        assert_eq!(admitted, 64);
        let mapped = |d: u8| IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 0x0500 | u16::from(d)]);
        for d in 1..=40 {
            p.admit(v4(5, d)).expect("room in 127.0.5.0/24");
        }
        // ::ffff:127.0.5.x shares the IPv4 /24's count.
        let more = (41..=100).filter(|&d| p.admit(mapped(d)).is_ok()).count();
        assert_eq!(more, 24);
        assert_eq!(p.of_prefix(v4(5, 1)), 64);
        // Released through the other spelling, the count is the same key.
        p.release(mapped(1));
        assert_eq!(p.of_prefix(v4(5, 1)), 63);
    }

    #[test]
    fn releases_empty_the_tables() {
        let mut p = Pending::new(DEFAULTS);
        let ips: Vec<IpAddr> = (0..=255u8)
            .flat_map(|c| (1..=3).map(move |d| v4(c, d)))
            .collect();
        let ok: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|&ip| p.admit(ip).is_ok())
            .collect();
        assert_eq!(ok.len(), ips.len());
        assert!(p.tracked().0 <= DEFAULTS.total && p.tracked().1 <= DEFAULTS.total);
        for ip in ok {
            p.release(ip);
        }
        assert_eq!((p.total(), p.tracked()), (0, (0, 0)));
        // A stray release (a caller bug) neither panics nor goes negative.
        p.release(v4(1, 1));
        assert_eq!(p.total(), 0);
    }
}
