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
