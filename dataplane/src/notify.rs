//! systemd's service notification protocol (`sd_notify(3)`), without
//! libsystemd: one datagram to `$NOTIFY_SOCKET` (a path, or an abstract
//! name starting with `@`). Outside systemd (no socket) every call is a
//! no-op.

use std::time::Duration;

/// Sends `state` (`READY=1`, `WATCHDOG=1`, `STATUS=...`); whether a
/// notification socket took it.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
        }
        None => std::os::unix::net::SocketAddr::from_pathname(&path),
    };
    match addr {
        Ok(a) => sock.send_to_addr(state.as_bytes(), &a).is_ok(),
        Err(_) => false,
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC` when systemd
/// set a watchdog for this process (`$WATCHDOG_PID`, if set, is ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
