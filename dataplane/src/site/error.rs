//! Errors of the site side, each worded for the operator at the site.

use std::path::PathBuf;

/// What went wrong at the site.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// The keyfile could not be read.
    #[error("cannot read keyfile {path}: {error}")]
    KeyfileIo {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The keyfile is readable by others: it holds a secret.
    #[error(
        "keyfile {path} is readable by group or others (mode {mode:04o}); run 'chmod 600 {path}'"
    )]
    KeyfilePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The keyfile does not parse; the message names the field.
    #[error("keyfile {path}: {error}")]
    Keyfile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: revtun_proto::keyfile::KeyfileError,
    },
    /// The CA certificate does not match the fingerprint beside it.
    #[error("keyfile {0}: field 'ca-certificate' does not match 'ca-fingerprint' (damaged or tampered keyfile)")]
    Fingerprint(PathBuf),
    /// The CA certificate in the keyfile is not a usable certificate.
    #[error("keyfile {0}: field 'ca-certificate' is not a valid certificate")]
    BadCaCert(PathBuf),
    /// The token's expiry has passed (checked before dialing).
    #[error("the keyfile's token expired at {0}; ask the host operator for a new keyfile")]
    TokenExpired(String),
    /// `enroll` on a state directory that already has an identity.
    #[error(
        "{0} already holds an enrolled site identity; use 'revtun-site run', or a new --state-dir"
    )]
    AlreadyEnrolled(PathBuf),
    /// `run` without an identity and without a keyfile.
    #[error("{0} holds no site identity; pass --keyfile to enroll first")]
    NotEnrolled(PathBuf),
    /// The site state directory is damaged.
    #[error("site state {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No endpoint accepted a TCP connection.
    #[error("cannot reach the host at any endpoint: {0}")]
    Unreachable(String),
    /// The server is not the host of this keyfile (man in the middle, wrong
    /// host, expired host certificate). Nothing secret was sent.
    #[error("the server at {endpoint} is not trusted: {reason} (nothing secret was sent)")]
    ServerNotTrusted {
        /// Where.
        endpoint: String,
        /// rustls's verdict.
        reason: String,
    },
    /// The host refused the token. The host log says exactly why.
    #[error("the host refused enrollment: the token is unknown, already spent, expired, or the site is revoked (the host's log says which)")]
    EnrollRefused,
    /// The host refused the site certificate.
    #[error("the host refused this site's certificate: the site is revoked or unknown to this host (the host's log says which)")]
    HelloRefused,
    /// The host could not decide now (a fleet host whose store is
    /// unreachable); nothing was spent.
    #[error("the host at {0} cannot decide now: its fleet store is unreachable (nothing was spent); try again later")]
    HostUnavailable(String),
    /// The host at this endpoint already holds another of this agent's
    /// tunnels (`--tunnels`): skipped before the hello.
    #[error("the host at {0} already holds one of this site's tunnels")]
    HostAlreadyHeld(String),
    /// The handshake did not finish in time.
    #[error("the host at {0} did not complete the handshake in time")]
    Timeout(String),
    /// The host broke the protocol or the connection dropped.
    #[error("protocol error with {endpoint}: {reason}")]
    Protocol {
        /// Where.
        endpoint: String,
        /// What happened.
        reason: String,
    },
    /// Key generation or a local file operation failed.
    #[error("{0}")]
    Local(String),
}

impl SiteError {
    /// True when retrying later may help (network trouble), false when the
    /// host gave a definite answer or the local setup is wrong.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SiteError::Unreachable(_)
                | SiteError::Timeout(_)
                | SiteError::Protocol { .. }
                | SiteError::HostUnavailable(_)
                | SiteError::HostAlreadyHeld(_)
        )
    }
}
