//! revtun host control: the host CA, the site store, the TLS listener on
//! 5500 and enrollment.
//!
//! Control owns every long-term secret of the host (CA key, token digests,
//! the site store). It runs TLS handshakes, spends tokens, checks site
//! certificates, and never moves bulk bytes.

pub mod clock;
pub mod dataplane;
pub mod fleet;
pub mod limits;
pub mod peer;
pub mod pending;
pub mod pki;
pub mod priority;
pub mod provision;
pub mod ratelimit;
pub mod server;
pub mod source;
pub mod state;
pub mod stats;
pub mod store;
pub mod tls;

pub use state::HostState;
pub use store::Store;
