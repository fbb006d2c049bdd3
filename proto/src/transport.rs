//! RTSP `Transport` negotiation (RFC 2326 section 12.39): a client lists
//! the transports it accepts in order of preference, separated by commas;
//! the server takes the first one it offers and answers with that one
//! alone. Sans-IO: the redirector says what it offers, this picks.

/// One transport a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// RTP interleaved in the RTSP connection (`RTP/AVP/TCP`), on these
    /// channels (RTP, RTCP).
    Tcp {
        /// RTP and RTCP channels.
        channels: (u8, u8),
    },
    /// RTP over UDP to the client's ports (RTP, RTCP), at the address of
    /// its RTSP connection (a `destination=` is never followed).
    Udp {
        /// The client's RTP and RTCP ports.
        client_ports: (u16, u16),
    },
    /// RTP over UDP multicast.
    Multicast,
}

/// Parses one transport spec; `None` for one this server cannot serve
/// (another profile, a unicast UDP spec without ports, bad numbers).
fn spec(s: &str) -> Option<Wanted> {
    let mut parts = s.split(';').map(str::trim);
    let profile = parts.next()?.to_ascii_uppercase();
    let params: Vec<&str> = parts.collect();
    let value = |name: &str| {
        params.iter().find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let flag = |name: &str| params.iter().any(|p| p.eq_ignore_ascii_case(name));
    fn pair<T: std::str::FromStr + Copy>(v: &str, next: impl Fn(T) -> Option<T>) -> Option<(T, T)> {
        let (a, b) = v.split_once('-').unwrap_or((v, ""));
        let a: T = a.trim().parse().ok()?;
        let b: T = if b.is_empty() {
            next(a)?
        } else {
            b.trim().parse().ok()?
        };
        Some((a, b))
    }
    match profile.as_str() {
        "RTP/AVP/TCP" => {
            let channels = match value("interleaved") {
                Some(v) => pair::<u8>(v, |a| a.checked_add(1))?,
                None => (0, 1),
            };
            Some(Wanted::Tcp { channels })
        }
        "RTP/AVP" | "RTP/AVP/UDP" => {
            if flag("multicast") {
                return Some(Wanted::Multicast);
            }
            let (a, b) = pair::<u16>(value("client_port")?, |a| a.checked_add(1))?;
            // Port 0 cannot be sent to.
            (a != 0 && b != 0).then_some(Wanted::Udp {
                client_ports: (a, b),
            })
        }
        _ => None,
    }
}

/// Every transport of a `Transport` header this server can parse, in the
/// client's order (at most 16 are looked at).
pub fn wanted(header: &str) -> Vec<Wanted> {
    header.split(',').take(16).filter_map(spec).collect()
}

/// What the server offers besides TCP (always offered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offered {
    /// UDP unicast.
    pub udp: bool,
    /// UDP multicast.
    pub multicast: bool,
}

impl Offered {
    /// Whether `w` is offered (TCP always is).
    pub fn allows(self, w: Wanted) -> bool {
        match w {
            Wanted::Tcp { .. } => true,
            Wanted::Udp { .. } => self.udp,
            Wanted::Multicast => self.multicast,
        }
    }
}

/// The first transport of `header` that `offered` allows; `None` means
/// 461 Unsupported Transport.
pub fn choose(header: &str, offered: Offered) -> Option<Wanted> {
    wanted(header).into_iter().find(|w| offered.allows(*w))
}

/// The `Transport` header of a SETUP reply for TCP.
pub fn reply_tcp(channels: (u8, u8), ssrc: u32) -> String {
    format!(
        "RTP/AVP/TCP;unicast;interleaved={}-{};ssrc={ssrc:08X}",
        channels.0, channels.1
    )
}

/// The `Transport` header of a SETUP reply for UDP unicast.
pub fn reply_udp(client: (u16, u16), server: (u16, u16), ssrc: u32) -> String {
    format!(
        "RTP/AVP;unicast;client_port={}-{};server_port={}-{};ssrc={ssrc:08X}",
        client.0, client.1, server.0, server.1
    )
}

/// The `Transport` header of a SETUP reply for multicast.
pub fn reply_multicast(group: std::net::Ipv4Addr, ports: (u16, u16), ttl: u8, ssrc: u32) -> String {
    format!(
        "RTP/AVP;multicast;destination={group};port={}-{};ttl={ttl};ssrc={ssrc:08X}",
        ports.0, ports.1
    )
}

/// Parses `--multicast-range`: an IPv4 CIDR inside 224.0.0.0/4 of at
/// least one address beyond the network's (`239.255.0.0/24`): (first
/// address, count). The network address itself is never handed out.
pub fn parse_multicast_range(s: &str) -> Result<(std::net::Ipv4Addr, u32), String> {
    let (ip, bits) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not ADDRESS/BITS (e.g. 239.255.0.0/24)"))?;
    let ip: std::net::Ipv4Addr = ip
        .trim()
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let bits: u32 = bits
        .trim()
        .parse()
        .map_err(|_| format!("{bits:?} is not a prefix length"))?;
    if !(4..=31).contains(&bits) {
        return Err(format!("/{bits}: the prefix length must be 4 to 31"));
    }
    if !ip.is_multicast() {
        return Err(format!("{ip} is not a multicast address (224.0.0.0/4)"));
    }
    let mask = u32::MAX << (32 - bits);
    let net = u32::from(ip) & mask;
    let size = 1u32 << (32 - bits);
    Ok((std::net::Ipv4Addr::from(net + 1), size - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multicast_ranges() {
        assert_eq!(
            parse_multicast_range("239.255.0.0/24"),
            Ok((std::net::Ipv4Addr::new(239, 255, 0, 1), 255))
        );
        assert_eq!(
            parse_multicast_range("239.1.2.77/30"),
            Ok((std::net::Ipv4Addr::new(239, 1, 2, 77), 3))
        );
        for bad in [
            "10.0.0.0/24",
            "239.0.0.0",
            "239.0.0.0/32",
            "239.0.0.0/2",
            "x/24",
        ] {
            assert!(parse_multicast_range(bad).is_err(), "{bad}");
        }
    }

    const BOTH: Offered = Offered {
        udp: true,
        multicast: true,
    };

    #[test]
    fn the_first_offered_transport_wins() {
        let cases: &[(&str, Offered, Option<Wanted>)] = &[
            // ffmpeg's UDP SETUP.
            (
                "RTP/AVP/UDP;unicast;client_port=5000-5001",
                BOTH,
                Some(Wanted::Udp {
                    client_ports: (5000, 5001),
                }),
            ),
            // GStreamer: UDP first, then TCP.
            (
                "RTP/AVP;unicast;client_port=5000-5001,RTP/AVP/TCP;unicast;interleaved=0-1",
                BOTH,
                Some(Wanted::Udp {
                    client_ports: (5000, 5001),
                }),
            ),
            (
                "RTP/AVP;unicast;client_port=5000-5001,RTP/AVP/TCP;unicast;interleaved=0-1",
                Offered::default(),
                Some(Wanted::Tcp { channels: (0, 1) }),
            ),
            // Multicast first, not offered: the next one.
            (
                "RTP/AVP;multicast, RTP/AVP;unicast;client_port=7000",
                Offered {
                    udp: true,
                    multicast: false,
                },
                Some(Wanted::Udp {
                    client_ports: (7000, 7001),
                }),
            ),
            ("RTP/AVP;multicast", BOTH, Some(Wanted::Multicast)),
            (
                "RTP/AVP/TCP;interleaved=4",
                BOTH,
                Some(Wanted::Tcp { channels: (4, 5) }),
            ),
            (
                "rtp/avp/tcp;unicast",
                BOTH,
                Some(Wanted::Tcp { channels: (0, 1) }),
            ),
            // Nothing this server serves: 461.
            ("RTP/AVP;unicast", BOTH, None),
            ("RAW/RAW/UDP;unicast;client_port=1-2", BOTH, None),
            ("RTP/AVP;unicast;client_port=0-1", BOTH, None),
            ("RTP/AVP;unicast;client_port=65535", BOTH, None),
            ("RTP/AVP/TCP;interleaved=255", BOTH, None),
            ("", BOTH, None),
        ];
        for (header, offered, want) in cases {
            assert_eq!(choose(header, *offered), *want, "{header:?}");
        }
    }

    #[test]
    fn a_destination_is_never_taken() {
        let w = choose(
            "RTP/AVP;unicast;destination=192.0.2.9;client_port=9000-9001",
            BOTH,
        );
        assert_eq!(
            w,
            Some(Wanted::Udp {
                client_ports: (9000, 9001)
            })
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            reply_udp((5000, 5001), (8000, 8001), 0xAB),
            "RTP/AVP;unicast;client_port=5000-5001;server_port=8000-8001;ssrc=000000AB"
        );
        assert_eq!(
            reply_tcp((0, 1), 1),
            "RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=00000001"
        );
    }
}
