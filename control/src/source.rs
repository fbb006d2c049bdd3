//! Who a connection comes from, for the per-source limits of the control
//! listener (threats 5, 6): its address, and the prefix the address
//! belongs to.
//!
//! One party commonly holds a whole prefix: an IPv6 subscriber is given at
//! least a /64 and picks any address in it; an IPv4 /24 is the smallest
//! block routed on the internet, often one hosting customer or one NAT
//! pool. Caps keyed by the full address would let such a party multiply
//! its share by the number of addresses it owns, so control also keys its
//! caps by prefix: /24 for IPv4 and /64 for IPv6. An IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`, what a dual-stack listener reports for an
//! IPv4 peer) counts as the IPv4 address it maps.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Prefix length that groups IPv4 sources.
pub const IPV4_PREFIX_LEN: u8 = 24;

/// Prefix length that groups IPv6 sources.
pub const IPV6_PREFIX_LEN: u8 = 64;

/// The address a limit sees: IPv4-mapped IPv6 addresses become IPv4, so
/// one peer has one key whichever way the listener was bound.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A source prefix: the first 24 bits of an IPv4 address or the first 64
/// of an IPv6 one. Nine bytes, so a table keyed by it stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    /// An IPv4 /24.
    V4([u8; 3]),
    /// An IPv6 /64.
    V6([u8; 8]),
}

impl Prefix {
    /// The prefix `ip` belongs to (after [`canonical`]).
    pub fn of(ip: IpAddr) -> Prefix {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Prefix::V4([a, b, c])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let mut p = [0u8; 8];
                p.copy_from_slice(&o[..8]);
                Prefix::V6(p)
            }
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Prefix::V4([a, b, c]) => {
                write!(f, "{}/{IPV4_PREFIX_LEN}", Ipv4Addr::new(a, b, c, 0))
            }
            Prefix::V6(p) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(&p);
                write!(f, "{}/{IPV6_PREFIX_LEN}", Ipv6Addr::from(o))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn ipv4_groups_by_24() {
        assert_eq!(Prefix::of(ip("127.0.5.1")), Prefix::of(ip("127.0.5.64")));
        assert_eq!(Prefix::of(ip("127.0.5.0")), Prefix::of(ip("127.0.5.255")));
        assert_ne!(Prefix::of(ip("127.0.5.1")), Prefix::of(ip("127.0.6.1")));
        assert_ne!(Prefix::of(ip("127.0.5.1")), Prefix::of(ip("128.0.5.1")));
        assert_eq!(Prefix::of(ip("192.0.2.77")).to_string(), "192.0.2.0/24");
    }

    #[test]
    fn ipv6_groups_by_64() {
        let a = Prefix::of(ip("2001:db8:1:2::1"));
        assert_eq!(a, Prefix::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(a, Prefix::of(ip("2001:db8:1:3::1")));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn ipv4_mapped_counts_as_ipv4() {
        assert_eq!(canonical(ip("::ffff:127.0.5.9")), ip("127.0.5.9"));
        assert_eq!(
            Prefix::of(ip("::ffff:127.0.5.9")),
            Prefix::of(ip("127.0.5.200"))
        );
        // Not mapped: IPv4-compatible (deprecated) and NAT64 addresses are
        // IPv6 sources like any other.
        assert_eq!(canonical(ip("::127.0.5.9")), ip("::127.0.5.9"));
        assert!(matches!(Prefix::of(ip("64:ff9b::7f00:1")), Prefix::V6(_)));
        // The families never collide.
        assert_ne!(Prefix::of(ip("0.0.0.1")), Prefix::of(ip("::1")));
    }
}
