//! RTSP client authentication, sans-IO: camera credentials from the URL,
//! `WWW-Authenticate` challenges, and the `Authorization` header to answer
//! them with (RFC 2326 / RFC 7826 borrow HTTP authentication: Basic per
//! RFC 7617, Digest per RFC 2617 with MD5 and `qop` absent or `auth`).
//!
//! Nothing here draws randomness: the Digest client nonce (`cnonce`) is a
//! parameter. Challenges come from the camera, so parsing is bounded
//! ([`MAX_CHALLENGES`], [`MAX_PARAMS`], [`MAX_VALUE`]) and skips what it
//! cannot use instead of failing; it never panics.
//!
//! Passwords are kept out of text: [`Credentials`] prints no password and
//! [`redact`] hides the one in a URL.

use base64::Engine as _;
use md5::{Digest as _, Md5};

/// Most challenges read from one response (all `WWW-Authenticate` headers).
pub const MAX_CHALLENGES: usize = 8;
/// Most parameters in one challenge.
pub const MAX_PARAMS: usize = 16;
/// Longest parameter name or value (a realm, nonce or opaque) accepted.
pub const MAX_VALUE: usize = 512;

/// A user name and password for a camera. `Debug` shows the user only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

impl Credentials {
    /// Credentials from plain (already decoded) text: the user must be
    /// non-empty and neither may hold control characters.
    pub fn new(user: &str, password: &str) -> Result<Credentials, UrlError> {
        if user.is_empty() {
            return Err(UrlError::EmptyUser);
        }
        if user.chars().chain(password.chars()).any(char::is_control) {
            return Err(UrlError::ControlCharacter);
        }
        Ok(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }
}

/// Why a camera URL was refused. The text never includes the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `rtsp://...`.
    #[error("the camera URL must start with rtsp://")]
    NotRtsp,
    /// No host after the credentials.
    #[error("the camera URL has no host")]
    NoHost,
    /// A `%` not followed by two hex digits.
    #[error("the user name or password has a bad %-escape")]
    BadEscape,
    /// Decoded user name or password is not UTF-8.
    #[error("the user name or password is not UTF-8 once %-decoded")]
    NotUtf8,
    /// Control characters (CR, LF, ...) in the user name or password.
    #[error("the user name or password holds control characters")]
    ControlCharacter,
    /// `rtsp://:pass@host`.
    #[error("the camera URL has a password but no user name")]
    EmptyUser,
}

/// A camera URL split into the URL to send requests to (no user info) and
/// the credentials it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraUrl {
    /// `rtsp://host[:port]/path`: the URL without `user:pass@`.
    pub url: String,
    /// `host[:port]`.
    pub authority: String,
    /// Percent-decoded credentials, if the URL had any.
    pub credentials: Option<Credentials>,
}

/// Splits `rtsp://[user[:password]@]host[:port]/path`. The user info ends
/// at the last `@` before the first `/` (so `/`, `?` and `#` in a password
/// must be written `%2F`, `%3F`, `%23`); the user ends at the first `:`.
pub fn split_credentials(url: &str) -> Result<CameraUrl, UrlError> {
    let rest = url.strip_prefix("rtsp://").ok_or(UrlError::NotRtsp)?;
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let (credentials, host) = match authority.rfind('@') {
        None => (None, authority),
        Some(at) => {
            let userinfo = &authority[..at];
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let creds = Credentials::new(&percent_decode(user)?, &percent_decode(password)?)?;
            (Some(creds), &authority[at + 1..])
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    Ok(CameraUrl {
        url: format!("rtsp://{host}{path}"),
        authority: host.to_string(),
        credentials,
    })
}

fn percent_decode(s: &str) -> Result<String, UrlError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = b.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = b.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(UrlError::BadEscape);
            };
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::NotUtf8)
}

/// The URL with its password (if any) replaced by `***`, for logs and
/// errors. Works on any `scheme://` text, valid or not.
pub fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let Some(at) = url[start..end].rfind('@').map(|i| start + i) else {
        return url.to_string();
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_string(),
    }
}

/// A challenge this client can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`.
    Basic {
        /// The realm (empty if the camera sent none).
        realm: String,
    },
    /// `Digest realm="..", nonce="..", ...` with MD5 and qop absent or auth.
    Digest(DigestChallenge),
}

/// The parameters of a usable Digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestChallenge {
    /// Realm.
    pub realm: String,
    /// Server nonce.
    pub nonce: String,
    /// Opaque value to echo, if any.
    pub opaque: Option<String>,
    /// The camera named `algorithm=MD5` (echoed back if so).
    pub algorithm: bool,
    /// The camera offered `qop=auth` (then nc and cnonce are sent).
    pub qop_auth: bool,
    /// `stale=true`: the nonce expired, the credentials were fine.
    pub stale: bool,
}

/// Parses one `WWW-Authenticate` value, which may hold several challenges
/// (`Digest realm="a", nonce="b", Basic realm="a"`). Challenges with other
/// schemes, algorithms or qops, or missing Digest parameters, are skipped;
/// malformed text ends the parse, keeping the challenges before it.
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut p = Cursor {
        s: value.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    while out.len() < MAX_CHALLENGES {
        p.skip(|c| c == b' ' || c == b'\t' || c == b',');
        if p.done() {
            break;
        }
        let Some(scheme) = p.token() else { break };
        let Some(params) = p.params() else { break };
        if let Some(c) = challenge(scheme, &params) {
            out.push(c);
        }
    }
    out
}

/// The scheme and `name=value` parameters of one credentials value in
/// Digest form (`Digest username="a", ...`), parsed as the challenges are
/// (bounded, never panics); `None` if malformed or followed by more.
pub fn parse_digest_params(value: &str) -> Option<Vec<(String, String)>> {
    let mut p = Cursor {
        s: value.as_bytes(),
        i: 0,
    };
    p.ws();
    let scheme = p.token()?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let params = p.params()?;
    p.skip(|c| c == b' ' || c == b'\t' || c == b',');
    if !p.done() {
        return None;
    }
    Some(
        params
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
    )
}

/// The challenge to answer among all `WWW-Authenticate` values of a
/// response: the first usable Digest, else the first Basic.
pub fn choose<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let mut basic = None;
    for c in values
        .into_iter()
        .flat_map(parse_challenges)
        .take(MAX_CHALLENGES)
    {
        match c {
            Challenge::Digest(_) => return Some(c),
            Challenge::Basic { .. } if basic.is_none() => basic = Some(c),
            Challenge::Basic { .. } => {}
        }
    }
    basic
}

fn challenge(scheme: &str, params: &[(&str, String)]) -> Option<Challenge> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if scheme.eq_ignore_ascii_case("Basic") {
        return Some(Challenge::Basic {
            realm: get("realm").unwrap_or("").to_string(),
        });
    }
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let algorithm = match get("algorithm") {
        None => false,
        Some(a) if a.eq_ignore_ascii_case("MD5") => true,
        Some(_) => return None,
    };
    let qop_auth = match get("qop") {
        None => false,
        Some(q) if q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")) => true,
        Some(_) => return None,
    };
    let nonce = get("nonce").filter(|n| !n.is_empty())?;
    Some(Challenge::Digest(DigestChallenge {
        realm: get("realm")?.to_string(),
        nonce: nonce.to_string(),
        opaque: get("opaque").map(str::to_string),
        algorithm,
        qop_auth,
        stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
    }))
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, what: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&what) {
            self.i += 1;
        }
    }

    fn ws(&mut self) {
        self.skip(|c| c == b' ' || c == b'\t');
    }

    /// An RFC 7230 token, at most [`MAX_VALUE`] bytes.
    fn token(&mut self) -> Option<&'a str> {
        let start = self.i;
        self.skip(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
        let t = &self.s[start..self.i];
        if t.is_empty() || t.len() > MAX_VALUE {
            return None;
        }
        std::str::from_utf8(t).ok()
    }

    /// A quoted string (backslash escapes), unquoted; no control characters.
    fn quoted(&mut self) -> Option<String> {
        if self.peek() != Some(b'"') {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            let c = match c {
                b'"' => break,
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    e
                }
                c => c,
            };
            if (c < 0x20 && c != b'\t') || c == 0x7f || out.len() == MAX_VALUE {
                return None;
            }
            out.push(c);
        }
        String::from_utf8(out).ok()
    }

    /// The `name=value` list after a scheme, up to the next challenge (a
    /// token not followed by `=`) or the end. `None` if malformed.
    fn params(&mut self) -> Option<Vec<(&'a str, String)>> {
        let mut params: Vec<(&'a str, String)> = Vec::new();
        loop {
            let save = self.i;
            self.skip(|c| c == b' ' || c == b'\t' || c == b',');
            if self.done() {
                return Some(params);
            }
            let name = self.token()?;
            self.ws();
            if self.peek() != Some(b'=') {
                // The next challenge's scheme.
                self.i = save;
                return Some(params);
            }
            self.i += 1;
            self.ws();
            let value = if self.peek() == Some(b'"') {
                self.quoted()?
            } else {
                self.token()?.to_string()
            };
            if params.len() == MAX_PARAMS
                || params.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
            {
                return None;
            }
            params.push((name, value));
        }
    }
}

/// Answers a chosen challenge for every request of a session: the Digest
/// response is computed per method and URI, with a growing `nc` under
/// `qop=auth`.
#[derive(Debug, Clone)]
pub struct Authenticator {
    creds: Credentials,
    challenge: Challenge,
    nc: u32,
}

impl Authenticator {
    /// Starts answering `challenge` with `creds`.
    pub fn new(creds: Credentials, challenge: Challenge) -> Authenticator {
        Authenticator {
            creds,
            challenge,
            nc: 0,
        }
    }

    /// `"Basic"` or `"Digest"`.
    pub fn scheme(&self) -> &'static str {
        match self.challenge {
            Challenge::Basic { .. } => "Basic",
            Challenge::Digest(_) => "Digest",
        }
    }

    /// The `Authorization` value for a request with this method and
    /// request URI (exactly as on the request line). `cnonce` is a fresh
    /// random client nonce (used with `qop=auth` only).
    pub fn authorization(&mut self, method: &str, uri: &str, cnonce: &str) -> String {
        match &self.challenge {
            Challenge::Basic { .. } => {
                let pair = format!("{}:{}", self.creds.user, self.creds.password);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            Challenge::Digest(d) => {
                let nc = d.qop_auth.then(|| {
                    self.nc = self.nc.wrapping_add(1);
                    self.nc
                });
                digest_authorization(&self.creds, d, method, uri, nc.map(|n| (n, cnonce)))
            }
        }
    }
}

/// The Digest `response` value (RFC 2617 §3.2.2.1, MD5): with `qop=auth`
/// when `nc_cnonce` is given, else the RFC 2069 form.
pub fn digest_response(
    creds: &Credentials,
    realm: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    nc_cnonce: Option<(u32, &str)>,
) -> String {
    let ha1 = md5_hex(&format!("{}:{realm}:{}", creds.user, creds.password));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match nc_cnonce {
        Some((nc, cnonce)) => md5_hex(&format!("{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")),
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

fn digest_authorization(
    creds: &Credentials,
    d: &DigestChallenge,
    method: &str,
    uri: &str,
    nc_cnonce: Option<(u32, &str)>,
) -> String {
    let response = digest_response(creds, &d.realm, &d.nonce, method, uri, nc_cnonce);
    let mut out = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\"",
        quote(&creds.user),
        quote(&d.realm),
        quote(&d.nonce),
        quote(uri),
    );
    if d.algorithm {
        out.push_str(", algorithm=MD5");
    }
    if let Some(o) = &d.opaque {
        out.push_str(&format!(", opaque={}", quote(o)));
    }
    if let Some((nc, cnonce)) = nc_cnonce {
        out.push_str(&format!(
            ", qop=auth, nc={nc:08x}, cnonce={}",
            quote(cnonce)
        ));
    }
    out
}

fn md5_hex(s: &str) -> String {
    crate::hex::encode(&Md5::digest(s.as_bytes()))
}

/// A quoted string with `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests;
