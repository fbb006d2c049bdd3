//! RTSP/1.0 messages (RFC 2326), sans-IO: requests parsed from bytes,
//! responses built as bytes. TCP interleaved transport only.
//!
//! Limits are checked before anything grows: a request head is at most
//! [`MAX_HEAD`] bytes with at most [`MAX_HEADERS`] headers, and a body
//! (rare in requests) at most [`MAX_BODY`]. Malformed input yields an
//! [`RtspError`] that maps to the status code to answer with, never a panic.

/// Largest request line plus headers.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;
/// Largest request body (SET_PARAMETER and friends).
pub const MAX_BODY: usize = 4 * 1024;

/// RTSP methods this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// OPTIONS
    Options,
    /// DESCRIBE
    Describe,
    /// SETUP
    Setup,
    /// PLAY
    Play,
    /// PAUSE
    Pause,
    /// TEARDOWN
    Teardown,
    /// GET_PARAMETER (keep-alive)
    GetParameter,
    /// SET_PARAMETER
    SetParameter,
}

impl Method {
    fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "OPTIONS" => Method::Options,
            "DESCRIBE" => Method::Describe,
            "SETUP" => Method::Setup,
            "PLAY" => Method::Play,
            "PAUSE" => Method::Pause,
            "TEARDOWN" => Method::Teardown,
            "GET_PARAMETER" => Method::GetParameter,
            "SET_PARAMETER" => Method::SetParameter,
            _ => return None,
        })
    }

    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Options => "OPTIONS",
            Method::Describe => "DESCRIBE",
            Method::Setup => "SETUP",
            Method::Play => "PLAY",
            Method::Pause => "PAUSE",
            Method::Teardown => "TEARDOWN",
            Method::GetParameter => "GET_PARAMETER",
            Method::SetParameter => "SET_PARAMETER",
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Request URI as sent (`rtsp://host:port/site/camera/...` or `*`).
    pub uri: String,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body bytes (Content-Length).
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The CSeq, which every response must echo.
    pub fn cseq(&self) -> Option<&str> {
        self.header("CSeq")
    }

    /// The path segments of the URI after the authority:
    /// `rtsp://h:1/site/cam/trackID=0` -> `["site", "cam", "trackID=0"]`.
    pub fn path(&self) -> Vec<&str> {
        let rest = self
            .uri
            .strip_prefix("rtsp://")
            .or_else(|| self.uri.strip_prefix("rtsps://"));
        let path = match rest {
            Some(r) => r.split_once('/').map_or("", |(_, p)| p),
            None => self.uri.trim_start_matches('/'),
        };
        let path = path.split(['?', '#']).next().unwrap_or("");
        path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

/// Why a request could not be parsed, and the status to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtspError {
    /// Request head above [`MAX_HEAD`] (431-like; RTSP answers 400).
    #[error("request head too large")]
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] headers.
    #[error("too many headers")]
    TooManyHeaders,
    /// Body above [`MAX_BODY`] (413).
    #[error("request body too large")]
    BodyTooLarge,
    /// Not `METHOD URI RTSP/1.0` or a header without a colon (400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// A method this server does not implement (501).
    #[error("method not implemented")]
    NotImplemented,
    /// Not RTSP/1.0 (505).
    #[error("RTSP version not supported")]
    Version,
}

impl RtspError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            RtspError::BodyTooLarge => 413,
            RtspError::NotImplemented => 501,
            RtspError::Version => 505,
            _ => 400,
        }
    }
}

/// A message head split from the front of a buffer.
struct Head<'a> {
    first: &'a str,
    headers: Vec<(String, String)>,
    body: &'a [u8],
    used: usize,
}

/// Splits the start line, headers and body (by Content-Length, at most
/// `max_body`) from the front of `buf`; `Ok(None)` when more bytes are needed.
fn split_head(buf: &[u8], max_body: usize) -> Result<Option<Head<'_>>, RtspError> {
    let window = &buf[..buf.len().min(MAX_HEAD + 4)];
    let Some(end) = find(window, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(RtspError::HeadTooLarge);
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| RtspError::Malformed("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(RtspError::TooManyHeaders);
        }
        let (k, v) = line
            .split_once(':')
            .ok_or(RtspError::Malformed("header without ':'"))?;
        if k.is_empty() || k.contains(' ') {
            return Err(RtspError::Malformed("header name"));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let body_len = match headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
    {
        Some((_, v)) => v
            .parse::<usize>()
            .map_err(|_| RtspError::Malformed("Content-Length"))?,
        None => 0,
    };
    if body_len > max_body {
        return Err(RtspError::BodyTooLarge);
    }
    let start = end + 4;
    let Some(body) = buf.get(start..start + body_len) else {
        return Ok(None);
    };
    Ok(Some(Head {
        first,
        headers,
        body,
        used: start + body_len,
    }))
}

/// Whether `uri` holds a %-encoded control character (`%00`-`%1F`, `%7F`).
fn has_encoded_control(uri: &str) -> bool {
    uri.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1].to_ascii_uppercase(), w[2].to_ascii_uppercase()),
                (b'0' | b'1', b'0'..=b'9' | b'A'..=b'F') | (b'7', b'F')
            )
    })
}

/// Parses one request from the front of `buf`: `Ok(None)` when more bytes
/// are needed, else the request and the bytes it used.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, RtspError> {
    let Some(h) = split_head(buf, MAX_BODY)? else {
        return Ok(None);
    };
    let mut parts = h.first.split(' ');
    let (m, uri, ver) = (parts.next(), parts.next(), parts.next());
    let (Some(m), Some(uri), Some(ver), None) = (m, uri, ver, parts.next()) else {
        return Err(RtspError::Malformed("request line"));
    };
    if !ver.starts_with("RTSP/") {
        return Err(RtspError::Malformed("request line"));
    }
    if ver != "RTSP/1.0" {
        return Err(RtspError::Version);
    }
    let method = Method::parse(m).ok_or(RtspError::NotImplemented)?;
    if uri.is_empty() {
        return Err(RtspError::Malformed("empty URI"));
    }
    // URIs reach logs and replies: no control characters (raw or
    // %-encoded), which also keeps them out of camera names.
    if uri.chars().any(char::is_control) || has_encoded_control(uri) {
        return Err(RtspError::Malformed("control character in URI"));
    }
    let req = Request {
        method,
        uri: uri.to_string(),
        headers: h.headers,
        body: h.body.to_vec(),
    };
    Ok(Some((req, h.used)))
}

/// A parsed response (the site redirector talks to cameras).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body (the SDP of a DESCRIBE).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Largest response body accepted from a camera (an SDP is ~1 KiB).
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Parses one response from the front of `buf`, like [`parse_request`].
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, RtspError> {
    let Some(h) = split_head(buf, MAX_RESPONSE_BODY)? else {
        return Ok(None);
    };
    let mut parts = h.first.splitn(3, ' ');
    if parts.next() != Some("RTSP/1.0") {
        return Err(RtspError::Malformed("status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or(RtspError::Malformed("status code"))?;
    Ok(Some((
        Response {
            status,
            headers: h.headers,
            body: h.body.to_vec(),
        },
        h.used,
    )))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reason phrase for the status codes this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Request Entity Too Large",
        453 => "Not Enough Bandwidth",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        459 => "Aggregate Operation Not Allowed",
        461 => "Unsupported Transport",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "RTSP Version Not Supported",
        _ => "Error",
    }
}

/// Builds a response: status line, `CSeq` (when known), extra headers,
/// `Content-Length` and the body.
pub fn response(status: u16, cseq: Option<&str>, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("RTSP/1.0 {status} {}\r\n", reason(status));
    if let Some(c) = cseq {
        // A CSeq is echoed only if it is a plain number (no header injection).
        if !c.is_empty() && c.len() <= 10 && c.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("CSeq: {c}\r\n"));
        }
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The `interleaved=a-b` channels of a `Transport` header, if it asks for
/// RTP over the RTSP connection (`RTP/AVP/TCP`).
pub fn interleaved_channels(transport: &str) -> Option<(u8, u8)> {
    let spec = transport.split(',').next()?;
    let mut parts = spec.split(';');
    if !parts.next()?.trim().eq_ignore_ascii_case("RTP/AVP/TCP") {
        return None;
    }
    for p in parts {
        if let Some(v) = p.trim().strip_prefix("interleaved=") {
            let (a, b) = v.split_once('-').unwrap_or((v, ""));
            let a: u8 = a.parse().ok()?;
            let b: u8 = if b.is_empty() {
                a.checked_add(1)?
            } else {
                b.parse().ok()?
            };
            return Some((a, b));
        }
    }
    Some((0, 1))
}

#[cfg(test)]
mod tests;
