//! Messages exchanged inside TLS before the tunnel starts.
//!
//! The exchange is lock-step: the site sends exactly one [`ClientMsg`] and
//! waits; control answers with exactly one [`ServerMsg`]. Neither side sends
//! anything else until it has read the other's message, so when control
//! answers `Ready` the socket holds no unread bytes and can be handed over.
//!
//! Wire form of every message: `type: u8`, `len: u32` big-endian, `len`
//! bytes of body. `len` is checked against [`MAX_MESSAGE_LEN`] from the
//! header alone, before anything is allocated.

use crate::token::{Token, TOKEN_ID_LEN, TOKEN_SECRET_LEN};

/// Largest message body accepted (a CSR or certificate is well under 1 KiB).
pub const MAX_MESSAGE_LEN: usize = 8 * 1024;
/// Largest certificate signing request accepted, in DER bytes.
pub const MAX_CSR_LEN: usize = 4 * 1024;
/// Header length: type byte and 32-bit length.
pub const HEADER_LEN: usize = 5;

const T_ENROLL: u8 = 0x01;
const T_HELLO: u8 = 0x02;
const T_ENROLLED: u8 = 0x81;
const T_READY: u8 = 0x82;
const T_REFUSED: u8 = 0x8f;
const T_UNAVAILABLE: u8 = 0x8e;

/// The one generic refusal, the same bytes whatever the reason: unknown
/// site, bad token, expired token, spent token, revoked certificate.
pub const REFUSED_BYTES: [u8; HEADER_LEN] = [T_REFUSED, 0, 0, 0, 0];

/// What a site sends after the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// First run: spend `token` for `site` and have `csr_der` signed.
    Enroll {
        /// The site the token was issued for.
        site: String,
        /// The one-time token from the keyfile.
        token: Token,
        /// PKCS#10 request for a key the site generated itself.
        csr_der: Vec<u8>,
    },
    /// Later runs: the site authenticated with its certificate in TLS.
    Hello {
        /// The site name, which must match the certificate.
        site: String,
    },
}

/// What control answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// Enrollment done: the site's certificate, DER.
    Enrolled {
        /// The signed site certificate.
        cert_der: Vec<u8>,
    },
    /// Hello accepted: the tunnel starts on this connection.
    Ready {
        /// Data-channel protocol version control will speak.
        data_version: u8,
    },
    /// Refused, for a reason only the host log tells.
    Refused,
    /// The host cannot decide now (a fleet host whose store is
    /// unreachable): nothing was spent or checked; try again later. Says
    /// nothing about the token or the certificate.
    Unavailable,
}

/// Why a message could not be decoded. All of these mean "peer misbehaved".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// Unknown message type byte.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// Declared length above [`MAX_MESSAGE_LEN`].
    #[error("message length {0} exceeds the limit of {MAX_MESSAGE_LEN}")]
    TooLong(u32),
    /// The body does not match its type's layout.
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// Reads a header and returns (type, body length) once enough bytes exist.
fn header(buf: &[u8]) -> Result<Option<(u8, usize)>, MsgError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len as usize > MAX_MESSAGE_LEN {
        return Err(MsgError::TooLong(len));
    }
    Ok(Some((h[0], len as usize)))
}

/// A cursor over a body that fails with `Malformed(what)` when short.
struct Body<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MsgError> {
        if self.rest.len() < n {
            return Err(MsgError::Malformed(self.what));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, MsgError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MsgError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn site(&mut self) -> Result<String, MsgError> {
        let len = self.u8()? as usize;
        let raw = self.take(len)?;
        let s = std::str::from_utf8(raw).map_err(|_| MsgError::Malformed(self.what))?;
        crate::validate_site_name(s).map_err(|_| MsgError::Malformed(self.what))?;
        Ok(s.to_string())
    }
    fn end(self) -> Result<(), MsgError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(MsgError::Malformed(self.what))
        }
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn put_site(body: &mut Vec<u8>, site: &str) {
    let bytes = &site.as_bytes()[..site.len().min(crate::MAX_SITE_NAME_LEN)];
    body.push(bytes.len() as u8);
    body.extend_from_slice(bytes);
}

impl ClientMsg {
    /// The message kind and the site it names, safe to log.
    pub fn summary(&self) -> (&'static str, &str) {
        match self {
            ClientMsg::Enroll { site, .. } => ("enroll", site),
            ClientMsg::Hello { site } => ("hello", site),
        }
    }

    /// Encodes the message. A CSR above [`MAX_CSR_LEN`] is the caller's bug.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            ClientMsg::Enroll {
                site,
                token,
                csr_der,
            } => {
                put_site(&mut body, site);
                body.extend_from_slice(&token.id);
                body.extend_from_slice(&token.secret);
                let csr = &csr_der[..csr_der.len().min(MAX_CSR_LEN)];
                body.extend_from_slice(&(csr.len() as u16).to_be_bytes());
                body.extend_from_slice(csr);
                frame(T_ENROLL, &body)
            }
            ClientMsg::Hello { site } => {
                put_site(&mut body, site);
                frame(T_HELLO, &body)
            }
        }
    }

    /// Decodes one message from the front of `buf`: `Ok(None)` when more
    /// bytes are needed, otherwise the message and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, MsgError> {
        let Some((kind, len)) = header(buf)? else {
            return Ok(None);
        };
        if kind != T_ENROLL && kind != T_HELLO {
            return Err(MsgError::UnknownType(kind));
        }
        let Some(raw) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let msg = if kind == T_ENROLL {
            let mut b = Body {
                rest: raw,
                what: "enroll",
            };
            let site = b.site()?;
            let mut token = Token {
                id: [0; TOKEN_ID_LEN],
                secret: [0; TOKEN_SECRET_LEN],
            };
            token.id.copy_from_slice(b.take(TOKEN_ID_LEN)?);
            token.secret.copy_from_slice(b.take(TOKEN_SECRET_LEN)?);
            let csr_len = b.u16()? as usize;
            if csr_len > MAX_CSR_LEN {
                return Err(MsgError::Malformed("enroll"));
            }
            let csr_der = b.take(csr_len)?.to_vec();
            b.end()?;
            ClientMsg::Enroll {
                site,
                token,
                csr_der,
            }
        } else {
            let mut b = Body {
                rest: raw,
                what: "hello",
            };
            let site = b.site()?;
            b.end()?;
            ClientMsg::Hello { site }
        };
        Ok(Some((msg, HEADER_LEN + len)))
    }
}

impl ServerMsg {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ServerMsg::Enrolled { cert_der } => frame(T_ENROLLED, cert_der),
            ServerMsg::Ready { data_version } => frame(T_READY, &[*data_version]),
            ServerMsg::Refused => REFUSED_BYTES.to_vec(),
            ServerMsg::Unavailable => frame(T_UNAVAILABLE, &[]),
        }
    }

    /// Decodes one message from the front of `buf`, like [`ClientMsg::decode`].
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, MsgError> {
        let Some((kind, len)) = header(buf)? else {
            return Ok(None);
        };
        if !matches!(kind, T_ENROLLED | T_READY | T_REFUSED | T_UNAVAILABLE) {
            return Err(MsgError::UnknownType(kind));
        }
        let Some(raw) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let msg = match kind {
            T_ENROLLED if !raw.is_empty() => ServerMsg::Enrolled {
                cert_der: raw.to_vec(),
            },
            T_READY if raw.len() == 1 => ServerMsg::Ready {
                data_version: raw[0],
            },
            T_REFUSED if raw.is_empty() => ServerMsg::Refused,
            T_UNAVAILABLE if raw.is_empty() => ServerMsg::Unavailable,
            _ => return Err(MsgError::Malformed("server")),
        };
        Ok(Some((msg, HEADER_LEN + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enroll() -> ClientMsg {
        ClientMsg::Enroll {
            site: "s1".into(),
            token: Token {
                id: [3; 16],
                secret: [4; 32],
            },
            csr_der: vec![9; 300],
        }
    }

    #[test]
    fn round_trips_and_split_headers() {
        for msg in [enroll(), ClientMsg::Hello { site: "abc".into() }] {
            let bytes = msg.encode();
            for cut in 0..bytes.len() {
                assert_eq!(ClientMsg::decode(&bytes[..cut]), Ok(None), "cut {cut}");
            }
            assert_eq!(ClientMsg::decode(&bytes), Ok(Some((msg, bytes.len()))));
        }
        for msg in [
            ServerMsg::Enrolled {
                cert_der: vec![1, 2, 3],
            },
            ServerMsg::Ready { data_version: 1 },
            ServerMsg::Refused,
            ServerMsg::Unavailable,
        ] {
            let bytes = msg.encode();
            assert_eq!(ServerMsg::decode(&bytes), Ok(Some((msg, bytes.len()))));
        }
    }

    #[test]
    fn lengths_checked_from_header() {
        for len in [MAX_MESSAGE_LEN as u32 + 1, u32::MAX] {
            let mut h = vec![T_ENROLL];
            h.extend_from_slice(&len.to_be_bytes());
            assert_eq!(ClientMsg::decode(&h), Err(MsgError::TooLong(len)));
        }
        let mut h = vec![T_HELLO];
        h.extend_from_slice(&(MAX_MESSAGE_LEN as u32).to_be_bytes());
        assert_eq!(ClientMsg::decode(&h), Ok(None));
        assert_eq!(
            ClientMsg::decode(&[0x55, 0, 0, 0, 0]),
            Err(MsgError::UnknownType(0x55))
        );
        assert_eq!(
            ClientMsg::decode(&[T_HELLO, 0, 0, 0, 0]),
            Err(MsgError::Malformed("hello"))
        );
        let mut trailing = ClientMsg::Hello { site: "a".into() }.encode();
        trailing[4] += 1;
        trailing.push(0);
        assert_eq!(
            ClientMsg::decode(&trailing),
            Err(MsgError::Malformed("hello"))
        );
    }

    #[test]
    fn refusal_is_one_constant() {
        assert_eq!(ServerMsg::Refused.encode(), REFUSED_BYTES);
    }
}
