//! The keyfile: what a host hands to a site to let it enroll once.
//!
//! A versioned, human-inspectable text file (see `docs/keyfile.md`):
//!
//! ```text
//! # comment lines start with '#'
//! revtun-keyfile: 1
//! site: site-a
//! endpoint: host.example:5500
//! endpoint: 192.0.2.7:5500
//! created: 2026-11-25T13:00:00Z
//! expires: 2026-11-26T13:00:00Z
//! ca-fingerprint: sha256:<64 hex>
//! token: rvt1-<32 hex>-<64 hex>
//! -----BEGIN CERTIFICATE-----
//! ... the host CA certificate ...
//! -----END CERTIFICATE-----
//! ```
//!
//! The parser is pure: it checks syntax and shape, names the field at fault,
//! and leaves the cryptographic check (that `ca-fingerprint` matches the
//! certificate) to the caller, who has a hash function.

use crate::token::{Token, TokenFormatError};
use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Keyfile format version this code writes and reads.
pub const KEYFILE_VERSION: u32 = 1;
/// Largest keyfile accepted, in bytes (a real one is about 1.5 KiB).
pub const MAX_KEYFILE_LEN: usize = 64 * 1024;
/// Most endpoints one keyfile may list.
pub const MAX_ENDPOINTS: usize = 16;

const BEGIN_CERT: &str = "-----BEGIN CERTIFICATE-----";
const END_CERT: &str = "-----END CERTIFICATE-----";

/// A host endpoint to dial: host name or address, and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name, IPv4 address, or IPv6 address without brackets.
    pub host: String,
    /// TCP port (default [`crate::DEFAULT_PORT`]).
    pub port: u16,
}

impl Endpoint {
    /// Parses `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("endpoint is empty".into());
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("endpoint {text:?} has '[' without ']'"))?;
            match after {
                "" => (host, None),
                p if p.starts_with(':') => (host, Some(&p[1..])),
                _ => return Err(format!("endpoint {text:?} has junk after ']'")),
            }
        } else if text.matches(':').count() > 1 {
            return Err(format!(
                "endpoint {text:?} looks like an IPv6 address; write it as [ADDR]:PORT"
            ));
        } else {
            match text.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (text, None),
            }
        };
        if host.is_empty() {
            return Err(format!("endpoint {text:?} has no host"));
        }
        if host.len() > 253
            || host
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_')))
        {
            return Err(format!("endpoint {text:?} has an invalid host"));
        }
        let port = match port {
            None => crate::DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("endpoint {text:?} has an invalid port")),
                Ok(p) => p,
            },
        };
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A parsed keyfile.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyfile {
    /// The site this keyfile enrolls.
    pub site: String,
    /// Host endpoints, tried in order.
    pub endpoints: Vec<Endpoint>,
    /// When the host issued it.
    pub created: OffsetDateTime,
    /// When the token stops being accepted.
    pub expires: OffsetDateTime,
    /// `sha256:<hex>` of the CA certificate's DER, as the host computed it.
    pub ca_fingerprint: String,
    /// The one-time token.
    pub token: Token,
    /// The host CA certificate, PEM, the only trust anchor of the site.
    pub ca_cert_pem: String,
}

impl fmt::Debug for Keyfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyfile")
            .field("site", &self.site)
            .field("endpoints", &self.endpoints)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a keyfile. Every variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyfileError {
    /// Larger than [`MAX_KEYFILE_LEN`].
    #[error("keyfile is {0} bytes; the maximum is {MAX_KEYFILE_LEN} (is this a keyfile?)")]
    TooLarge(usize),
    /// Not UTF-8 text.
    #[error("keyfile is not UTF-8 text (is this a keyfile?)")]
    NotText,
    /// The first field is not `revtun-keyfile: N`.
    #[error(
        "keyfile does not start with 'revtun-keyfile: {KEYFILE_VERSION}' (is this a keyfile?)"
    )]
    NotAKeyfile,
    /// A version this code does not read.
    #[error("keyfile version {0} is not supported (this build reads version {KEYFILE_VERSION})")]
    Version(String),
    /// A required field is absent (typically a truncated file).
    #[error("keyfile field '{0}' is missing (truncated file?)")]
    Missing(&'static str),
    /// A single-valued field appears twice.
    #[error("keyfile line {line}: field '{field}' appears twice")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// Field name.
        field: &'static str,
    },
    /// A field's value does not parse.
    #[error("keyfile line {line}: field '{field}': {reason}")]
    Invalid {
        /// 1-based line number.
        line: usize,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A line that is no known field.
    #[error("keyfile line {line}: unknown or garbled line {text:?}")]
    Garbled {
        /// 1-based line number.
        line: usize,
        /// The start of the line (never the token field).
        text: String,
    },
    /// The certificate block is missing its end line.
    #[error("keyfile field 'ca-certificate': no '{END_CERT}' line (truncated file?)")]
    CertTruncated,
}

fn invalid(line: usize, field: &'static str, reason: impl Into<String>) -> KeyfileError {
    KeyfileError::Invalid {
        line,
        field,
        reason: reason.into(),
    }
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    line: usize,
    field: &'static str,
) -> Result<(), KeyfileError> {
    if slot.is_some() {
        return Err(KeyfileError::Duplicate { line, field });
    }
    *slot = Some(value);
    Ok(())
}

fn parse_time(line: usize, field: &'static str, v: &str) -> Result<OffsetDateTime, KeyfileError> {
    OffsetDateTime::parse(v, &Rfc3339)
        .map_err(|_| invalid(line, field, format!("{v:?} is not an RFC 3339 time")))
}

impl Keyfile {
    /// Parses a keyfile from its bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyfileError> {
        if bytes.len() > MAX_KEYFILE_LEN {
            return Err(KeyfileError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| KeyfileError::NotText)?;
        let mut version_seen = false;
        let (mut site, mut created, mut expires, mut fpr, mut token, mut pem) =
            (None, None, None, None, None, None);
        let mut endpoints = Vec::new();
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end()));
        while let Some((n, line)) = lines.next() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            if line == BEGIN_CERT {
                let mut block = String::from(BEGIN_CERT);
                block.push('\n');
                let mut ended = false;
                for (_, l) in lines.by_ref() {
                    block.push_str(l);
                    block.push('\n');
                    if l == END_CERT {
                        ended = true;
                        break;
                    }
                }
                if !ended {
                    return Err(KeyfileError::CertTruncated);
                }
                set_once(&mut pem, block, n, "ca-certificate")?;
                continue;
            }
            let split = line.split_once(':');
            if !version_seen {
                let Some(("revtun-keyfile", value)) = split else {
                    return Err(KeyfileError::NotAKeyfile);
                };
                let value = value.trim();
                if value != KEYFILE_VERSION.to_string() {
                    return Err(KeyfileError::Version(value.chars().take(16).collect()));
                }
                version_seen = true;
                continue;
            }
            let Some((key, value)) = split else {
                return Err(garbled(n, line));
            };
            let value = value.trim();
            match key {
                "site" => {
                    crate::validate_site_name(value).map_err(|r| invalid(n, "site", r))?;
                    set_once(&mut site, value.to_string(), n, "site")?;
                }
                "endpoint" => {
                    if endpoints.len() == MAX_ENDPOINTS {
                        return Err(invalid(n, "endpoint", format!("more than {MAX_ENDPOINTS}")));
                    }
                    endpoints.push(Endpoint::parse(value).map_err(|r| invalid(n, "endpoint", r))?);
                }
                "created" => {
                    set_once(&mut created, parse_time(n, "created", value)?, n, "created")?
                }
                "expires" => {
                    set_once(&mut expires, parse_time(n, "expires", value)?, n, "expires")?
                }
                "ca-fingerprint" => {
                    let ok = value
                        .strip_prefix("sha256:")
                        .and_then(crate::hex::decode_exact::<32>)
                        .is_some();
                    if !ok {
                        return Err(invalid(
                            n,
                            "ca-fingerprint",
                            "expected sha256:<64 hex digits>",
                        ));
                    }
                    set_once(&mut fpr, value.to_ascii_lowercase(), n, "ca-fingerprint")?;
                }
                "token" => {
                    let t = Token::parse(value)
                        .map_err(|e: TokenFormatError| invalid(n, "token", e.to_string()))?;
                    set_once(&mut token, t, n, "token")?;
                }
                "revtun-keyfile" => {
                    return Err(KeyfileError::Duplicate {
                        line: n,
                        field: "revtun-keyfile",
                    })
                }
                _ => return Err(garbled(n, line)),
            }
        }
        if !version_seen {
            return Err(KeyfileError::NotAKeyfile);
        }
        let kf = Keyfile {
            site: site.ok_or(KeyfileError::Missing("site"))?,
            endpoints: if endpoints.is_empty() {
                return Err(KeyfileError::Missing("endpoint"));
            } else {
                endpoints
            },
            created: created.ok_or(KeyfileError::Missing("created"))?,
            expires: expires.ok_or(KeyfileError::Missing("expires"))?,
            ca_fingerprint: fpr.ok_or(KeyfileError::Missing("ca-fingerprint"))?,
            token: token.ok_or(KeyfileError::Missing("token"))?,
            ca_cert_pem: pem.ok_or(KeyfileError::Missing("ca-certificate"))?,
        };
        if kf.expires <= kf.created {
            return Err(invalid(0, "expires", "is not after 'created'"));
        }
        Ok(kf)
    }

    /// Serialises to the text form (the exact bytes `parse` reads back).
    pub fn to_text(&self) -> String {
        let fmt = |t: &OffsetDateTime| t.format(&Rfc3339).unwrap_or_else(|_| t.to_string());
        let mut out = String::new();
        out.push_str(
            "# revtun keyfile. It holds a one-time secret: keep it private (mode 0600),\n",
        );
        out.push_str(
            "# give it only to the site named below, and delete it once the site enrolled.\n",
        );
        out.push_str(&format!("revtun-keyfile: {KEYFILE_VERSION}\n"));
        out.push_str(&format!("site: {}\n", self.site));
        for e in &self.endpoints {
            out.push_str(&format!("endpoint: {e}\n"));
        }
        out.push_str(&format!("created: {}\n", fmt(&self.created)));
        out.push_str(&format!("expires: {}\n", fmt(&self.expires)));
        out.push_str(&format!("ca-fingerprint: {}\n", self.ca_fingerprint));
        out.push_str(&format!("token: {}\n", self.token.to_text()));
        out.push_str(self.ca_cert_pem.trim_end());
        out.push('\n');
        out
    }
}

fn garbled(line: usize, text: &str) -> KeyfileError {
    // Never echo a token line back, even a garbled one.
    let shown = if text.contains("rvt") {
        "<redacted>".to_string()
    } else {
        text.chars().take(40).collect()
    };
    KeyfileError::Garbled { line, text: shown }
}

#[cfg(test)]
mod tests;
