//! Messages from control to a data-plane shard over its Unix socket.
//!
//! One SOCK_SEQPACKET message each. A hand-off carries the tunnel socket
//! as `SCM_RIGHTS` beside these bytes. Only session material crosses: the
//! exported data-channel secrets of this one connection, never a long-term
//! key.

use crate::record::EXPORTER_LEN;
use zeroize::Zeroizing;

/// Largest message.
pub const MAX_HANDOFF_LEN: usize = 256;

const T_TUNNEL: u8 = 1;
const T_REVOKE: u8 = 2;

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
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handoff::Tunnel { site, conn_id, .. } => {
                write!(f, "Tunnel {{ site: {site}, conn_id: {conn_id} }}")
            }
            Handoff::Revoke { site } => write!(f, "Revoke {{ site: {site} }}"),
        }
    }
}

impl Handoff {
    /// Encodes the message (the buffer is wiped when dropped: it may hold
    /// secrets).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(MAX_HANDOFF_LEN));
        let (t, site) = match self {
            Handoff::Tunnel { site, .. } => (T_TUNNEL, site),
            Handoff::Revoke { site } => (T_REVOKE, site),
        };
        out.push(t);
        let name = &site.as_bytes()[..site.len().min(crate::MAX_SITE_NAME_LEN)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        if let Handoff::Tunnel {
            secrets, conn_id, ..
        } = self
        {
            out.extend_from_slice(&secrets[..]);
            out.extend_from_slice(&conn_id.to_be_bytes());
        }
        out
    }

    /// Decodes a message; `None` if malformed.
    pub fn decode(buf: &[u8]) -> Option<Handoff> {
        let (&t, rest) = buf.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let name = rest.get(..usize::from(n))?;
        let site = std::str::from_utf8(name).ok()?;
        crate::validate_site_name(site).ok()?;
        let rest = &rest[usize::from(n)..];
        match t {
            T_TUNNEL if rest.len() == EXPORTER_LEN + 8 => {
                let mut secrets = Zeroizing::new([0u8; EXPORTER_LEN]);
                secrets.copy_from_slice(&rest[..EXPORTER_LEN]);
                let mut id = [0u8; 8];
                id.copy_from_slice(&rest[EXPORTER_LEN..]);
                Some(Handoff::Tunnel {
                    site: site.to_string(),
                    secrets,
                    conn_id: u64::from_be_bytes(id),
                })
            }
            T_REVOKE if rest.is_empty() => Some(Handoff::Revoke {
                site: site.to_string(),
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
        for m in [a, b] {
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
