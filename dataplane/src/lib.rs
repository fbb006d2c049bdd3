//! revtun data plane and site agent.
//!
//! - [`site`]: the site side of the handshake (keyfile loading, pinned TLS,
//!   enrollment, hello) and the site's own state directory.
//! - [`backoff`]: full-jitter exponential backoff for reconnects.

pub mod backoff;
pub mod signal;
pub mod tunnel;
pub mod site;
