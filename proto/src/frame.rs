//! Tunnel frames: the units inside a sealed data-channel record.
//!
//! Wire form: `type: u8 | stream: u32 BE | len: u32 BE | len bytes`.
//! `len` is checked against [`MAX_FRAME_PAYLOAD`] from the header alone,
//! before anything is allocated; every body is checked against its type's
//! exact layout. Decoding borrows from the input: a DATA payload is
//! returned as a range, so the caller can hand out slices of its own
//! (reference-counted) buffer without copying.

use std::ops::Range;

/// Frame header length.
pub const FRAME_HEADER_LEN: usize = 9;
/// Largest frame payload accepted (a DATA frame carries at most this much).
pub const MAX_FRAME_PAYLOAD: usize = 256 * 1024;
/// Longest service name.
pub const MAX_SERVICE_NAME: usize = 64;
/// Most services one SERVICES frame lists.
pub const MAX_SERVICES: usize = 256;

/// Stream identifier. 0 names the tunnel itself (WINDOW on 0 is tunnel credit).
pub type StreamId = u32;

/// Frame type bytes.
pub mod kind {
    /// Receiver limits, first frame in each direction.
    pub const SETTINGS: u8 = 1;
    /// The site's service names.
    pub const SERVICES: u8 = 2;
    /// Open a stream to a named service.
    pub const OPEN: u8 = 3;
    /// Stream bytes.
    pub const DATA: u8 = 4;
    /// Credit: the sender may send `increment` more bytes.
    pub const WINDOW: u8 = 5;
    /// Half-close: no more DATA from the sender on this stream.
    pub const END: u8 = 6;
    /// Abort a stream.
    pub const RESET: u8 = 7;
    /// Liveness probe.
    pub const PING: u8 = 8;
    /// Answer to PING.
    pub const PONG: u8 = 9;
    /// The sender is closing the tunnel.
    pub const GOAWAY: u8 = 10;
}

/// Why a stream was reset or a tunnel is going away: the wire code as a
/// type (as h2's `Reason`), so every end can be named, counted and matched.
/// Codes this version does not know are kept as they are, never refused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reason(u8);

impl Reason {
    /// No error (clean close; a reader that went away).
    pub const NORMAL: Reason = Reason(0);
    /// The service is unknown or its target refused the connection.
    pub const REFUSED: Reason = Reason(1);
    /// Too many streams.
    pub const LIMIT: Reason = Reason(2);
    /// The local side of the stream failed (its socket errored or reset).
    pub const LOCAL_ERROR: Reason = Reason(3);
    /// The peer broke the protocol.
    pub const PROTOCOL: Reason = Reason(4);
    /// Shutting down.
    pub const SHUTDOWN: Reason = Reason(5);
    /// The service target did not answer in time.
    pub const TIMEOUT: Reason = Reason(6);
    /// This end has used up its stream ids: open a new tunnel.
    pub const IDS_EXHAUSTED: Reason = Reason(7);
    /// Every named reason, for metrics.
    pub const ALL: [Reason; 8] = [
        Reason::NORMAL,
        Reason::REFUSED,
        Reason::LIMIT,
        Reason::LOCAL_ERROR,
        Reason::PROTOCOL,
        Reason::SHUTDOWN,
        Reason::TIMEOUT,
        Reason::IDS_EXHAUSTED,
    ];

    /// The reason a wire byte names.
    pub const fn from_wire(b: u8) -> Reason {
        Reason(b)
    }

    /// The wire byte.
    pub const fn wire(self) -> u8 {
        self.0
    }

    /// A short name for logs and metric labels (`other` for codes this
    /// version does not know).
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "normal",
            1 => "refused",
            2 => "limit",
            3 => "local_error",
            4 => "protocol",
            5 => "shutdown",
            6 => "timeout",
            7 => "ids_exhausted",
            _ => "other",
        }
    }
}

impl std::fmt::Debug for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            "other" => write!(f, "Reason({})", self.0),
            n => f.write_str(n),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Receiver limits announced by SETTINGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Protocol version (1).
    pub version: u8,
    /// Initial credit per stream, bytes.
    pub stream_window: u32,
    /// Initial credit for the whole tunnel, bytes.
    pub tunnel_window: u32,
    /// Most concurrent streams the sender of SETTINGS accepts.
    pub max_streams: u32,
}

/// A decoded frame, borrowing from the record it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Limits.
    Settings(Settings),
    /// Service names the site offers.
    Services(Vec<&'a str>),
    /// Open `stream` to `service`.
    Open {
        /// New stream id.
        stream: StreamId,
        /// Service name.
        service: &'a str,
    },
    /// Payload bytes, as a range of the input given to [`decode`].
    Data {
        /// Stream.
        stream: StreamId,
        /// Where the payload sits in the decoded buffer.
        payload: Range<usize>,
    },
    /// Credit.
    Window {
        /// Stream, or 0 for the tunnel.
        stream: StreamId,
        /// Bytes granted.
        increment: u32,
    },
    /// Half-close.
    End {
        /// Stream.
        stream: StreamId,
    },
    /// Abort.
    Reset {
        /// Stream.
        stream: StreamId,
        /// Why.
        code: Reason,
    },
    /// Probe.
    Ping(u64),
    /// Answer.
    Pong(u64),
    /// Closing.
    GoAway(Reason),
}

/// A frame the peer should not have sent. Closes the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Declared payload above [`MAX_FRAME_PAYLOAD`].
    #[error("frame payload {0} exceeds the limit of {MAX_FRAME_PAYLOAD}")]
    TooLong(u32),
    /// Unknown type byte.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// Body does not match the type.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// The record ended inside a frame.
    #[error("record ends inside a frame")]
    Truncated,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn name<'a>(raw: &'a [u8], what: &'static str) -> Result<&'a str, FrameError> {
    let s = std::str::from_utf8(raw).map_err(|_| FrameError::Malformed(what))?;
    if s.is_empty() || s.len() > MAX_SERVICE_NAME || !valid_service_name(s) {
        return Err(FrameError::Malformed(what));
    }
    Ok(s)
}

/// The name an OPEN frame carries: a service name, or over a fleet's
/// peer link `SITE/SERVICE` (a valid site name, a valid service name).
pub fn valid_open_name(s: &str) -> bool {
    match s.split_once('/') {
        None => valid_service_name(s),
        Some((site, service)) => {
            crate::validate_site_name(site).is_ok() && valid_service_name(service)
        }
    }
}

fn open_name(raw: &[u8]) -> Result<&str, FrameError> {
    let s = std::str::from_utf8(raw).map_err(|_| FrameError::Malformed("open"))?;
    if !valid_open_name(s) {
        return Err(FrameError::Malformed("open"));
    }
    Ok(s)
}

/// A service name: 1..=64 of `[A-Za-z0-9._-]`.
pub fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SERVICE_NAME
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Decodes the frame at `buf[at..]`. Returns the frame and where the next
/// one starts. A record must hold whole frames, so a short input is an error.
pub fn decode(buf: &[u8], at: usize) -> Result<(Frame<'_>, usize), FrameError> {
    let hdr = buf
        .get(at..at + FRAME_HEADER_LEN)
        .ok_or(FrameError::Truncated)?;
    let (ty, stream, len) = (hdr[0], be32(&hdr[1..5]), be32(&hdr[5..9]));
    if len as usize > MAX_FRAME_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    let start = at + FRAME_HEADER_LEN;
    let end = start + len as usize;
    let body = buf.get(start..end).ok_or(FrameError::Truncated)?;
    let exact = |n: usize, what| {
        if body.len() == n {
            Ok(())
        } else {
            Err(FrameError::Malformed(what))
        }
    };
    let on_stream = |what| {
        if stream != 0 {
            Ok(())
        } else {
            Err(FrameError::Malformed(what))
        }
    };
    let on_tunnel = |what| {
        if stream == 0 {
            Ok(())
        } else {
            Err(FrameError::Malformed(what))
        }
    };
    let frame = match ty {
        kind::SETTINGS => {
            on_tunnel("settings")?;
            exact(13, "settings")?;
            Frame::Settings(Settings {
                version: body[0],
                stream_window: be32(&body[1..5]),
                tunnel_window: be32(&body[5..9]),
                max_streams: be32(&body[9..13]),
            })
        }
        kind::SERVICES => {
            on_tunnel("services")?;
            let mut names = Vec::new();
            let mut rest = body;
            while let Some((&n, tail)) = rest.split_first() {
                let raw = tail
                    .get(..usize::from(n))
                    .ok_or(FrameError::Malformed("services"))?;
                if names.len() == MAX_SERVICES {
                    return Err(FrameError::Malformed("services"));
                }
                names.push(name(raw, "services")?);
                rest = &tail[usize::from(n)..];
            }
            Frame::Services(names)
        }
        kind::OPEN => {
            on_stream("open")?;
            Frame::Open {
                stream,
                service: open_name(body)?,
            }
        }
        kind::DATA => {
            on_stream("data")?;
            Frame::Data {
                stream,
                payload: start..end,
            }
        }
        kind::WINDOW => {
            exact(4, "window")?;
            let increment = be32(body);
            if increment == 0 {
                return Err(FrameError::Malformed("window"));
            }
            Frame::Window { stream, increment }
        }
        kind::END => {
            on_stream("end")?;
            exact(0, "end")?;
            Frame::End { stream }
        }
        kind::RESET => {
            on_stream("reset")?;
            exact(1, "reset")?;
            Frame::Reset {
                stream,
                code: Reason::from_wire(body[0]),
            }
        }
        kind::PING | kind::PONG => {
            on_tunnel("ping")?;
            exact(8, "ping")?;
            let v = u64::from_be_bytes([
                body[0], body[1], body[2], body[3], body[4], body[5], body[6], body[7],
            ]);
            if ty == kind::PING {
                Frame::Ping(v)
            } else {
                Frame::Pong(v)
            }
        }
        kind::GOAWAY => {
            on_tunnel("goaway")?;
            exact(1, "goaway")?;
            Frame::GoAway(Reason::from_wire(body[0]))
        }
        other => return Err(FrameError::UnknownType(other)),
    };
    Ok((frame, end))
}

/// Writes a frame header into `out` (exactly [`FRAME_HEADER_LEN`] bytes).
pub fn write_header(out: &mut [u8], ty: u8, stream: StreamId, len: usize) {
    out[0] = ty;
    out[1..5].copy_from_slice(&stream.to_be_bytes());
    out[5..9].copy_from_slice(&(len as u32).to_be_bytes());
}

/// Appends a frame without a DATA payload to `out`. Returns the bytes added.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let mut hdr = [0u8; FRAME_HEADER_LEN];
    let mut body: Vec<u8> = Vec::new();
    let (ty, stream) = match frame {
        Frame::Settings(s) => {
            body.push(s.version);
            body.extend_from_slice(&s.stream_window.to_be_bytes());
            body.extend_from_slice(&s.tunnel_window.to_be_bytes());
            body.extend_from_slice(&s.max_streams.to_be_bytes());
            (kind::SETTINGS, 0)
        }
        Frame::Services(names) => {
            for n in names
                .iter()
                .filter(|n| valid_service_name(n))
                .take(MAX_SERVICES)
            {
                body.push(n.len() as u8);
                body.extend_from_slice(n.as_bytes());
            }
            (kind::SERVICES, 0)
        }
        Frame::Open { stream, service } => {
            body.extend_from_slice(service.as_bytes());
            (kind::OPEN, *stream)
        }
        Frame::Data { stream, payload } => {
            // Only the header: the caller places the payload itself.
            write_header(&mut hdr, kind::DATA, *stream, payload.len());
            out.extend_from_slice(&hdr);
            return FRAME_HEADER_LEN;
        }
        Frame::Window { stream, increment } => {
            body.extend_from_slice(&increment.to_be_bytes());
            (kind::WINDOW, *stream)
        }
        Frame::End { stream } => (kind::END, *stream),
        Frame::Reset { stream, code } => {
            body.push(code.wire());
            (kind::RESET, *stream)
        }
        Frame::Ping(v) => {
            body.extend_from_slice(&v.to_be_bytes());
            (kind::PING, 0)
        }
        Frame::Pong(v) => {
            body.extend_from_slice(&v.to_be_bytes());
            (kind::PONG, 0)
        }
        Frame::GoAway(c) => {
            body.push(c.wire());
            (kind::GOAWAY, 0)
        }
    };
    write_header(&mut hdr, ty, stream, body.len());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(&body);
    out.len() - start
}

/// Appends a whole DATA frame (header and payload) to `out`. For tests and
/// small writes; the data plane reads payloads straight into its buffer.
pub fn encode_data(stream: StreamId, payload: &[u8], out: &mut Vec<u8>) {
    let mut hdr = [0u8; FRAME_HEADER_LEN];
    write_header(&mut hdr, kind::DATA, stream, payload.len());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests;
