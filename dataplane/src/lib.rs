//! revtun data plane and site agent.
//!
//! - [`site`]: the site side of the handshake (keyfile loading, pinned TLS,
//!   enrollment, hello) and the site's own state directory.
//! - [`backoff`]: full-jitter exponential backoff for reconnects.

pub mod agent;
pub mod args;
pub mod backoff;
pub mod config;
pub mod config_file;
pub mod host;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod signal;
pub mod site;
pub mod status;
pub mod tunnel;
pub mod video;

/// The socket type glommio streams convert from (for callers building
/// tunnels from std sockets, like the perf lab).
pub use socket2::Socket as Socket2;
