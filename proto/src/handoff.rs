//! Messages from control to a data-plane shard over its Unix socket.
//!
//! One SOCK_SEQPACKET message each. A hand-off carries the tunnel socket
//! as `SCM_RIGHTS` beside these bytes. Only session material crosses: the
//! exported data-channel secrets of this one connection, never a long-term
//! key.

use crate::record::EXPORTER_LEN;
use zeroize::Zeroizing;

/// Largest message (a viewer with [`crate::viewer::MAX_ALLOW`] long
/// permissions fits).
pub const MAX_HANDOFF_LEN: usize = 4096;

const T_TUNNEL: u8 = 1;
const T_REVOKE: u8 = 2;
const T_VIEWERS_BEGIN: u8 = 3;
const T_VIEWER: u8 = 4;
const T_VIEWERS_END: u8 = 5;
const T_CONTROL_METRICS: u8 = 6;
const T_RELOAD: u8 = 7;
const T_PEER_LINK: u8 = 8;
const T_PEER_ACCEPTED: u8 = 9;
const T_ROUTES_BEGIN: u8 = 10;
const T_ROUTE: u8 = 11;
const T_ROUTES_END: u8 = 12;

/// Most hosts named by one [`Handoff::Route`].
pub const MAX_ROUTE_HOSTS: usize = 16;

/// Longest text of [`Handoff::ControlMetrics`].
pub const MAX_CONTROL_METRICS: usize = MAX_HANDOFF_LEN - 3;

/// Longest permission text (`SITE/CAM`).
const MAX_ALLOW_TEXT: usize = crate::MAX_SITE_NAME_LEN + 1 + crate::viewer::MAX_CAMERA_NAME_LEN;

/// A control-to-shard message.
#[derive(Clone, PartialEq, Eq)]
pub enum Handoff {
    /// Take over the attached socket as `site`'s tunnel.
    Tunnel {
        /// The authenticated site.
        site: String,
        /// Exported data-channel secrets (wiped when dropped).
        secrets: Zeroizing<[u8; EXPORTER_LEN]>,
        /// Connection number, for logs.
        conn_id: u64,
    },
    /// Close `site`'s tunnel now (revoked).
    Revoke {
        /// The site.
        site: String,
    },
    /// A new viewer table follows: `count` [`Handoff::Viewer`] messages,
    /// then [`Handoff::ViewersEnd`]. Carries the stream-token key.
    ViewersBegin {
        /// Key that signs stream tokens (wiped when dropped).
        token_key: Zeroizing<[u8; 32]>,
        /// Viewers that follow.
        count: u32,
    },
    /// One viewer of the table being sent.
    Viewer {
        /// Viewer name.
        name: String,
        /// Stored password form (`MD5(name:realm:password)`).
        ha1: [u8; 16],
        /// Permissions as text (`SITE/CAM`, `SITE/*`, `*`).
        allow: Vec<String>,
    },
    /// The table is complete: it replaces the previous one.
    ViewersEnd,
    /// Control's own counters, as Prometheus exposition text, for the
    /// data plane's metrics endpoint (sent each second; printable ASCII
    /// and newlines only).
    ControlMetrics(String),
    /// Control re-read its settings (SIGHUP) and rewrote the data plane's
    /// settings file: read it again and apply what can change live.
    Reload {
        /// Reloads so far, for logs.
        generation: u64,
    },
    /// Take over the attached socket as a peer link this host dialed to
    /// fleet host `host` (this end opens streams on it).
    PeerLink {
        /// The host at the other end (authenticated by its certificate).
        host: String,
        /// The shard of `host` that took the link.
        remote_shard: u16,
        /// Exported data-channel secrets (wiped when dropped).
        secrets: Zeroizing<[u8; EXPORTER_LEN]>,
    },
    /// Take over the attached socket as a peer link fleet host `host`
    /// dialed to this one: its streams are relayed to this shard's sites.
    PeerAccepted {
        /// The host at the other end (authenticated by its certificate).
        host: String,
        /// Exported data-channel secrets (wiped when dropped).
        secrets: Zeroizing<[u8; EXPORTER_LEN]>,
    },
    /// A new route table follows: `count` [`Handoff::Route`] messages,
    /// then [`Handoff::RoutesEnd`].
    RoutesBegin {
        /// Routes that follow.
        count: u32,
    },
    /// The other hosts holding a tunnel of `site`, with their shard counts.
    Route {
        /// The site.
        site: String,
        /// (host id, that host's shard count), at most [`MAX_ROUTE_HOSTS`].
        hosts: Vec<(String, u16)>,
    },
    /// The route table is complete: it replaces the previous one.
    RoutesEnd,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handoff::Tunnel { site, conn_id, .. } => {
                write!(f, "Tunnel {{ site: {site}, conn_id: {conn_id} }}")
            }
            Handoff::Revoke { site } => write!(f, "Revoke {{ site: {site} }}"),
            Handoff::ViewersBegin { count, .. } => write!(f, "ViewersBegin {{ count: {count} }}"),
            Handoff::Viewer { name, allow, .. } => {
                write!(f, "Viewer {{ name: {name}, allow: {allow:?} }}")
            }
            Handoff::ViewersEnd => f.write_str("ViewersEnd"),
            Handoff::ControlMetrics(t) => write!(f, "ControlMetrics({} bytes)", t.len()),
            Handoff::Reload { generation } => write!(f, "Reload {{ generation: {generation} }}"),
            Handoff::PeerLink {
                host, remote_shard, ..
            } => write!(
                f,
                "PeerLink {{ host: {host}, remote_shard: {remote_shard} }}"
            ),
            Handoff::PeerAccepted { host, .. } => write!(f, "PeerAccepted {{ host: {host} }}"),
            Handoff::RoutesBegin { count } => write!(f, "RoutesBegin {{ count: {count} }}"),
            Handoff::Route { site, hosts } => {
                write!(f, "Route {{ site: {site}, hosts: {hosts:?} }}")
            }
            Handoff::RoutesEnd => f.write_str("RoutesEnd"),
        }
    }
}

impl Handoff {
    /// Encodes the message (the buffer is wiped when dropped: it may hold
    /// secrets).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(MAX_HANDOFF_LEN));
        let short = |out: &mut Vec<u8>, text: &str, max: usize| {
            let b = &text.as_bytes()[..text.len().min(max).min(255)];
            out.push(b.len() as u8);
            out.extend_from_slice(b);
        };
        match self {
            Handoff::Tunnel {
                site,
                secrets,
                conn_id,
            } => {
                out.push(T_TUNNEL);
                short(&mut out, site, crate::MAX_SITE_NAME_LEN);
                out.extend_from_slice(&secrets[..]);
                out.extend_from_slice(&conn_id.to_be_bytes());
            }
            Handoff::Revoke { site } => {
                out.push(T_REVOKE);
                short(&mut out, site, crate::MAX_SITE_NAME_LEN);
            }
            Handoff::ViewersBegin { token_key, count } => {
                out.push(T_VIEWERS_BEGIN);
                out.extend_from_slice(&token_key[..]);
                out.extend_from_slice(&count.to_be_bytes());
            }
            Handoff::Viewer { name, ha1, allow } => {
                out.push(T_VIEWER);
                short(&mut out, name, crate::viewer::MAX_VIEWER_NAME_LEN);
                out.extend_from_slice(ha1);
                let allow = &allow[..allow.len().min(crate::viewer::MAX_ALLOW)];
                out.push(allow.len() as u8);
                for a in allow {
                    short(&mut out, a, MAX_ALLOW_TEXT);
                }
            }
            Handoff::ViewersEnd => out.push(T_VIEWERS_END),
            Handoff::ControlMetrics(text) => {
                let b = &text.as_bytes()[..text.len().min(MAX_CONTROL_METRICS)];
                out.push(T_CONTROL_METRICS);
                out.extend_from_slice(&(b.len() as u16).to_be_bytes());
                out.extend_from_slice(b);
            }
            Handoff::Reload { generation } => {
                out.push(T_RELOAD);
                out.extend_from_slice(&generation.to_be_bytes());
            }
            Handoff::PeerLink {
                host,
                remote_shard,
                secrets,
            } => {
                out.push(T_PEER_LINK);
                short(&mut out, host, crate::MAX_HOST_ID_LEN);
                out.extend_from_slice(&remote_shard.to_be_bytes());
                out.extend_from_slice(&secrets[..]);
            }
            Handoff::PeerAccepted { host, secrets } => {
                out.push(T_PEER_ACCEPTED);
                short(&mut out, host, crate::MAX_HOST_ID_LEN);
                out.extend_from_slice(&secrets[..]);
            }
            Handoff::RoutesBegin { count } => {
                out.push(T_ROUTES_BEGIN);
                out.extend_from_slice(&count.to_be_bytes());
            }
            Handoff::Route { site, hosts } => {
                out.push(T_ROUTE);
                short(&mut out, site, crate::MAX_SITE_NAME_LEN);
                let hosts = &hosts[..hosts.len().min(MAX_ROUTE_HOSTS)];
                out.push(hosts.len() as u8);
                for (h, shards) in hosts {
                    short(&mut out, h, crate::MAX_HOST_ID_LEN);
                    out.extend_from_slice(&shards.to_be_bytes());
                }
            }
            Handoff::RoutesEnd => out.push(T_ROUTES_END),
        }
        out
    }

    /// Decodes a message; `None` if malformed.
    pub fn decode(buf: &[u8]) -> Option<Handoff> {
        fn short(buf: &[u8]) -> Option<(&str, &[u8])> {
            let (&n, rest) = buf.split_first()?;
            let text = std::str::from_utf8(rest.get(..usize::from(n))?).ok()?;
            Some((text, &rest[usize::from(n)..]))
        }
        let (&t, rest) = buf.split_first()?;
        match t {
            T_TUNNEL | T_REVOKE => {
                let (site, rest) = short(rest)?;
                crate::validate_site_name(site).ok()?;
                let site = site.to_string();
                match t {
                    T_TUNNEL if rest.len() == EXPORTER_LEN + 8 => {
                        let mut secrets = Zeroizing::new([0u8; EXPORTER_LEN]);
                        secrets.copy_from_slice(&rest[..EXPORTER_LEN]);
                        let mut id = [0u8; 8];
                        id.copy_from_slice(&rest[EXPORTER_LEN..]);
                        Some(Handoff::Tunnel {
                            site,
                            secrets,
                            conn_id: u64::from_be_bytes(id),
                        })
                    }
                    T_REVOKE if rest.is_empty() => Some(Handoff::Revoke { site }),
                    _ => None,
                }
            }
            T_VIEWERS_BEGIN if rest.len() == 36 => {
                let mut token_key = Zeroizing::new([0u8; 32]);
                token_key.copy_from_slice(&rest[..32]);
                let count = u32::from_be_bytes(rest[32..].try_into().ok()?);
                Some(Handoff::ViewersBegin { token_key, count })
            }
            T_VIEWER => {
                let (name, rest) = short(rest)?;
                crate::viewer::validate_viewer_name(name).ok()?;
                let ha1: [u8; 16] = rest.get(..16)?.try_into().ok()?;
                let (&n, mut rest) = rest[16..].split_first()?;
                if usize::from(n) > crate::viewer::MAX_ALLOW {
                    return None;
                }
                let mut allow = Vec::with_capacity(usize::from(n));
                for _ in 0..n {
                    let (a, r) = short(rest)?;
                    crate::viewer::Allow::parse(a).ok()?;
                    allow.push(a.to_string());
                    rest = r;
                }
                rest.is_empty().then(|| Handoff::Viewer {
                    name: name.to_string(),
                    ha1,
                    allow,
                })
            }
            T_VIEWERS_END if rest.is_empty() => Some(Handoff::ViewersEnd),
            T_CONTROL_METRICS => {
                let n = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
                let text = rest.get(2..)?;
                let ok = text.len() == n
                    && text
                        .iter()
                        .all(|&b| b == b'\n' || (0x20..0x7f).contains(&b));
                ok.then(|| Handoff::ControlMetrics(String::from_utf8_lossy(text).into_owned()))
            }
            T_RELOAD if rest.len() == 8 => Some(Handoff::Reload {
                generation: u64::from_be_bytes(rest.try_into().ok()?),
            }),
            T_PEER_LINK | T_PEER_ACCEPTED => {
                let (host, rest) = short(rest)?;
                crate::validate_host_id(host).ok()?;
                let host = host.to_string();
                let (remote_shard, rest) = if t == T_PEER_LINK {
                    let s = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
                    (s, &rest[2..])
                } else {
                    (0, rest)
                };
                if rest.len() != EXPORTER_LEN {
                    return None;
                }
                let mut secrets = Zeroizing::new([0u8; EXPORTER_LEN]);
                secrets.copy_from_slice(rest);
                Some(if t == T_PEER_LINK {
                    Handoff::PeerLink {
                        host,
                        remote_shard,
                        secrets,
                    }
                } else {
                    Handoff::PeerAccepted { host, secrets }
                })
            }
            T_ROUTES_BEGIN if rest.len() == 4 => Some(Handoff::RoutesBegin {
                count: u32::from_be_bytes(rest.try_into().ok()?),
            }),
            T_ROUTE => {
                let (site, rest) = short(rest)?;
                crate::validate_site_name(site).ok()?;
                let (&n, mut rest) = rest.split_first()?;
                if usize::from(n) > MAX_ROUTE_HOSTS {
                    return None;
                }
                let mut hosts = Vec::with_capacity(usize::from(n));
                for _ in 0..n {
                    let (h, r) = short(rest)?;
                    crate::validate_host_id(h).ok()?;
                    let shards = u16::from_be_bytes(r.get(..2)?.try_into().ok()?);
                    if shards == 0 {
                        return None;
                    }
                    hosts.push((h.to_string(), shards));
                    rest = &r[2..];
                }
                rest.is_empty().then(|| Handoff::Route {
                    site: site.to_string(),
                    hosts,
                })
            }
            T_ROUTES_END if rest.is_empty() => Some(Handoff::RoutesEnd),
            _ => None,
        }
    }
}

/// The shard that owns `site`'s tunnel and service ports (FNV-1a), so a
/// service port and its tunnel always live on the same core.
pub fn shard_for(site: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in site.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let a = Handoff::Tunnel {
            site: "s-1".into(),
            secrets: Zeroizing::new([9; 64]),
            conn_id: 77,
        };
        let b = Handoff::Revoke { site: "s-1".into() };
        let c = Handoff::ViewersBegin {
            token_key: Zeroizing::new([5; 32]),
            count: 2,
        };
        let d = Handoff::Viewer {
            name: "alice".into(),
            ha1: [1; 16],
            allow: vec!["*".into(), "paris/cam1".into(), "lyon/*".into()],
        };
        let longest = Handoff::Viewer {
            name: "v".repeat(crate::viewer::MAX_VIEWER_NAME_LEN),
            ha1: [2; 16],
            allow: (0..crate::viewer::MAX_ALLOW)
                .map(|i| format!("{}/{i:0>60}", "s".repeat(crate::MAX_SITE_NAME_LEN)))
                .collect(),
        };
        assert!(longest.encode().len() <= MAX_HANDOFF_LEN);
        let e = Handoff::ControlMetrics("revtun_control_up 1\n".into());
        assert_eq!(
            Handoff::decode(&Handoff::ControlMetrics("bad\u{1b}".into()).encode()),
            None
        );
        for m in [
            a,
            b,
            c,
            d,
            longest,
            Handoff::ViewersEnd,
            e,
            Handoff::Reload { generation: 3 },
            Handoff::PeerLink {
                host: "host-b.example".into(),
                remote_shard: 3,
                secrets: Zeroizing::new([7; 64]),
            },
            Handoff::PeerAccepted {
                host: "c".into(),
                secrets: Zeroizing::new([8; 64]),
            },
            Handoff::RoutesBegin { count: 1000 },
            Handoff::Route {
                site: "s-1".into(),
                hosts: vec![("a".into(), 2), ("b".into(), 64)],
            },
            Handoff::Route {
                site: "s".repeat(crate::MAX_SITE_NAME_LEN),
                hosts: (0..MAX_ROUTE_HOSTS)
                    .map(|i| (format!("{i:x>63}"), u16::MAX))
                    .collect(),
            },
            Handoff::RoutesEnd,
        ] {
            assert_eq!(Handoff::decode(&m.encode()), Some(m.clone()));
            let e = m.encode();
            for cut in 0..e.len() {
                assert_eq!(Handoff::decode(&e[..cut]), None);
            }
        }
        assert!(!format!(
            "{:?}",
            Handoff::Tunnel {
                site: "s".into(),
                secrets: Zeroizing::new([0xab; 64]),
                conn_id: 1
            }
        )
        .contains("171"));
        assert!(shard_for("abc", 4) < 4);
        assert_eq!(shard_for("abc", 1), 0);
    }
}
