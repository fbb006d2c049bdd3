//! Every limit of the control process, named, with its default and its cost.

use std::time::Duration;

/// Total time for TLS handshake plus enrollment or hello (threat 5).
/// A silent or dribbling connection is closed when it runs out.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once, over all peers (threats 5, 6). Each costs
/// a rustls server connection and a 16 KiB read buffer: about 64 KiB at
/// worst, so 1,024 pending handshakes cost about 64 MiB.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Time from accept to the first byte from the peer (threat 5). A TLS
/// client sends its ClientHello as soon as TCP connects, so a legitimate
/// site's first byte arrives within a round trip or two (a lost segment
/// is resent within about a second); a connection that says nothing for
/// this long is closed, instead of holding a pending slot for the whole
/// [`HANDSHAKE_TIMEOUT`]. Never longer than that deadline.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);

/// Handshakes in progress at once from one source address (threat 5):
/// half of its prefix's share, so one address of a shared /24 cannot take
/// all of it.
pub const MAX_PENDING_PER_ADDR: usize = 32;

/// Handshakes in progress at once from one source prefix, an IPv4 /24 or
/// an IPv6 /64 (threat 5; `crate::source`). 1/16 of
/// [`MAX_PENDING_HANDSHAKES`]: one prefix holds at most 6.25% of the slots
/// (about 4 MiB), and filling them all takes 16 prefixes, not the 32
/// addresses of one /24 or any one /64. A site needs one slot for
/// milliseconds, so 64 serve many sites behind one NAT pool.
pub const MAX_PENDING_PER_PREFIX: usize = 64;

/// Handshakes one source prefix (/24, /64) may start per second, in
/// bursts of as many (threat 6; `crate::ratelimit` says why per prefix).
/// A site connects a few times a day; labs simulating many sites from one
/// address turn it off with 0.
pub const HANDSHAKES_PER_PREFIX_PER_SEC: u32 = 100;

/// Read buffer for one handshaking connection.
pub const HANDSHAKE_READ_BUF: usize = 16 * 1024;

/// Plaintext bytes a peer may send before its one message is complete.
pub const MAX_PLAINTEXT_BEFORE_MESSAGE: usize =
    revtun_proto::enroll::MAX_MESSAGE_LEN + revtun_proto::enroll::HEADER_LEN;

/// Validity of a site certificate issued at enrollment.
pub const SITE_CERT_TTL: Duration = Duration::from_secs(365 * 86_400);

/// Validity of the host CA certificate.
pub const CA_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Validity of the control listener certificate.
pub const LISTENER_CERT_TTL: Duration = Duration::from_secs(2 * 365 * 86_400);

/// Default token lifetime for `issue` when `--ttl` is not given.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// How often a held tunnel re-checks revocation of its site.
pub const REVOCATION_POLL: Duration = Duration::from_secs(1);

/// How often control compares the store's viewers with what the data
/// plane holds (a removed viewer's sessions end within about this).
pub const VIEWER_POLL: Duration = Duration::from_secs(1);
