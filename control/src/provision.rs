//! Issuing keyfiles: the one place a token is made.

use crate::clock::{to_datetime, UnixMillis};
use crate::pki::{self, PkiError};
use crate::state::HostState;
use crate::store::StoreError;
use revtun_proto::keyfile::{Endpoint, Keyfile};
use revtun_proto::token::Token;
use std::time::Duration;

/// Why issuing failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// Random generation failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The store refused (revoked or enrolled site) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Makes a keyfile for `site` and records its token. The expiry is
/// truncated to whole seconds, as the keyfile shows it, and the store
/// enforces exactly that instant. The caller writes the file (mode 0600).
pub fn issue(
    state: &HostState,
    site: &str,
    endpoints: Vec<Endpoint>,
    ttl: Duration,
    reissue: bool,
    now: UnixMillis,
) -> Result<Keyfile, IssueError> {
    let expires = now.saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64);
    let whole = |ms: UnixMillis| to_datetime(ms - ms.rem_euclid(1000));
    let kf = Keyfile {
        site: site.to_string(),
        endpoints,
        created: whole(now),
        expires: whole(expires),
        ca_fingerprint: state.ca.fingerprint(),
        token: Token {
            id: pki::random_bytes()?,
            secret: pki::random_bytes()?,
        },
        ca_cert_pem: state.ca_cert_pem.clone(),
    };
    let file_expires = kf.expires.unix_timestamp() * 1000;
    state
        .store
        .add_token(site, &kf.token, now, file_expires, reissue)?;
    Ok(kf)
}
