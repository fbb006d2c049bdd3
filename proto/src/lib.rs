//! Sans-IO pieces of revtun: no sockets, no clock reads, no randomness.
//!
//! Everything here takes its input as bytes (and, where time matters, the
//! current time as a parameter), so that tests and fuzzers need no kernel.
//!
//! - [`keyfile`]: the versioned text file a host hands to a site.
//! - [`token`]: the one-time enrollment token and its text form.
//! - [`enroll`]: the messages exchanged inside TLS before the tunnel starts.
//! - [`duration`]: human durations (`24h`, `10s`) for command lines.
//! - [`hex`]: the small hex codec the formats above share.

pub mod channel;
pub mod duration;
pub mod enroll;
pub mod expose;
pub mod fanout;
pub mod frame;
pub mod handoff;
pub mod hex;
pub mod keyfile;
pub mod record;
pub mod rtcp;
pub mod rtp;
pub mod rtsp;
pub mod rtsp_auth;
pub mod rtsp_session;
pub mod token;
pub mod transport;
pub mod tunnel;
pub mod video;
pub mod viewer;

/// TLS server name every control listener certificate carries.
///
/// The site pins the host CA from its keyfile, so identity comes from the
/// CA, not from DNS. The fixed name (with the `serverAuth` usage) keeps a
/// site certificate, issued by the same CA, from passing as the host.
pub const CONTROL_SERVER_NAME: &str = "revtun-control";

/// The TLS server name of a fleet host's peer listener: host certificates
/// (and only they) carry it, beside the `serverAuth` and `clientAuth`
/// usages (listener certificates carry [`CONTROL_SERVER_NAME`], site
/// certificates no name at all).
pub const PEER_SERVER_NAME: &str = "revtun-host";

/// Longest fleet host id.
pub const MAX_HOST_ID_LEN: usize = 63;

/// Checks a fleet host id: 1..=63 of `[a-z0-9.-]`.
pub fn validate_host_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_HOST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err("a host id is 1-63 of a-z, 0-9, '-', '.'".into())
    }
}

/// Default TCP port of the control listener.
pub const DEFAULT_PORT: u16 = 5500;

/// Longest site name accepted anywhere (it is a certificate common name and
/// a URL path segment).
pub const MAX_SITE_NAME_LEN: usize = 63;

/// Checks a site name: 1..=63 of `[a-z0-9-]`, starting with a letter or digit.
pub fn validate_site_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("site name is empty".into());
    }
    if name.len() > MAX_SITE_NAME_LEN {
        return Err(format!(
            "site name is {} bytes long; the maximum is {MAX_SITE_NAME_LEN}",
            name.len()
        ));
    }
    if name.starts_with('-') {
        return Err("site name must start with a letter or digit".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "site name contains {c:?}; use lowercase letters, digits and '-'"
        ));
    }
    Ok(())
}

/// Formats an error and its causes on one line, skipping a cause whose text
/// the message before it already includes (as `#[error("...: {0}")]`
/// variants do), so command-line errors read once, not twice.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::validate_site_name;

    #[test]
    fn site_names() {
        assert!(validate_site_name("site-1").is_ok());
        assert!(validate_site_name("a").is_ok());
        assert!(validate_site_name("").is_err());
        assert!(validate_site_name("-a").is_err());
        assert!(validate_site_name("Site").is_err());
        assert!(validate_site_name("a/b").is_err());
        assert!(validate_site_name(&"a".repeat(63)).is_ok());
        assert!(validate_site_name(&"a".repeat(64)).is_err());
    }
}
