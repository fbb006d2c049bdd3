//! The site side of provisioning: load a keyfile, dial the host trusting
//! only the CA it carries, enroll once, then say hello with the site's own
//! certificate.
//!
//! Blocking I/O: the handshake is a handful of round trips on one thread
//! before the data plane takes over the socket.

mod error;
mod identity;
mod keyfile;
mod session;
mod tls;

pub use error::SiteError;
pub use identity::{Identity, DEFAULT_SITE_STATE_DIR};
pub use keyfile::load_keyfile;
pub use session::{
    dial, enroll, hello, hello_from, new_key_and_csr, send_raw_enroll, Gate, Session,
    HANDSHAKE_TIMEOUT,
};
