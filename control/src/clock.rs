//! The wall clock, injected where logic depends on it (token expiry,
//! certificate validity) so tests can be exact.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> UnixMillis;
}

/// The system clock, optionally shifted (for acceptance tests that need to
/// see a token expire without waiting; see `--clock-offset`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock {
    /// Added to the system time, in milliseconds.
    pub offset_ms: i64,
}

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        now.saturating_add(self.offset_ms)
    }
}

/// Converts epoch milliseconds to a `time` value (for certificates and text).
pub fn to_datetime(ms: UnixMillis) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Formats epoch milliseconds as RFC 3339 (UTC), for people.
pub fn format_ms(ms: UnixMillis) -> String {
    use time::format_description::well_known::Rfc3339;
    let t = to_datetime(ms)
        .replace_nanosecond(0)
        .unwrap_or(to_datetime(ms));
    t.format(&Rfc3339).unwrap_or_else(|_| ms.to_string())
}
