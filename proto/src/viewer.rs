//! Viewer authentication at the host's RTSP port, sans-IO: viewer and
//! camera names, permissions (`SITE/CAM`, `SITE/*`, `*`), the stored form
//! of a password (the Digest `HA1`), server nonces that expire, the
//! `Authorization` header a player sends, and stream tokens.
//!
//! **Stream tokens** are credentials that carry their own permission and
//! expiry and need no store: the user name is `tok_` and the base64url of
//! the expiry (Unix seconds) and the scope; the password is a truncated
//! HMAC-SHA256 of the user name under the host's token key. A player opens
//! `rtsp://USER:PASSWORD@HOST:PORT/SITE/CAM` as it would with a viewer's
//! credentials, Digest and all; the host recomputes the password from the
//! user name, so a tampered scope or expiry fails like a wrong password.
//!
//! Nothing here reads the clock or draws randomness: the time and keys are
//! parameters. Header text comes from anonymous clients: parsing is
//! bounded and never panics.

use aws_lc_rs::{constant_time, hmac};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use md5::{Digest as _, Md5};
use std::net::IpAddr;

/// The Digest realm of every host (part of the stored `HA1`: changing it
/// would invalidate every viewer's password).
pub const REALM: &str = "revtun";

/// Longest viewer name.
pub const MAX_VIEWER_NAME_LEN: usize = 64;
/// Longest camera name (a service name at the site).
pub const MAX_CAMERA_NAME_LEN: usize = 60;
/// Most permissions one viewer holds.
pub const MAX_ALLOW: usize = 24;
/// Longest password accepted (generated ones are 24 characters).
pub const MAX_PASSWORD_LEN: usize = 256;
/// Prefix of a stream token's user name (`_` is not allowed in viewer
/// names, so the two never collide).
pub const TOKEN_PREFIX: &str = "tok_";
/// A nonce is issued for a window of this many seconds and accepted for
/// that window and the next one: between 5 and 10 minutes.
pub const NONCE_WINDOW_SECS: u64 = 300;

/// Checks a viewer name: 1..=64 of `[a-z0-9.-]`, starting with a letter or
/// digit (it appears in URLs as the user and in logs).
pub fn validate_viewer_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("viewer name is empty".into());
    }
    if name.len() > MAX_VIEWER_NAME_LEN {
        return Err(format!(
            "viewer name is {} bytes long; the maximum is {MAX_VIEWER_NAME_LEN}",
            name.len()
        ));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("viewer name must start with a letter or digit".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "viewer name contains {c:?}; use lowercase letters, digits, '.' and '-'"
        ));
    }
    Ok(())
}

/// Checks a camera name: 1..=60 of `A-Z a-z 0-9 . _ -`.
pub fn validate_camera_name(name: &str) -> Result<(), String> {
    if !crate::frame::valid_service_name(name) || name.len() > MAX_CAMERA_NAME_LEN {
        return Err(format!(
            "camera name must be 1-{MAX_CAMERA_NAME_LEN} of A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

/// A password as an operator may give it: 1..=256 bytes, no control
/// characters.
pub fn validate_password(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("the password is empty".into());
    }
    if p.len() > MAX_PASSWORD_LEN {
        return Err(format!(
            "the password is longer than {MAX_PASSWORD_LEN} bytes"
        ));
    }
    if p.chars().any(char::is_control) {
        return Err("the password holds control characters".into());
    }
    Ok(())
}

/// One permission: every camera, every camera of a site, or one camera.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Allow {
    /// `*`
    All,
    /// `SITE/*`
    Site(String),
    /// `SITE/CAM`
    Camera(String, String),
}

impl Allow {
    /// Parses `*`, `SITE/*` or `SITE/CAM` (names checked).
    pub fn parse(s: &str) -> Result<Allow, String> {
        if s == "*" {
            return Ok(Allow::All);
        }
        let (site, cam) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not SITE/CAM, SITE/* or *"))?;
        crate::validate_site_name(site).map_err(|e| format!("{s:?}: {e}"))?;
        if cam == "*" {
            return Ok(Allow::Site(site.to_string()));
        }
        validate_camera_name(cam).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Allow::Camera(site.to_string(), cam.to_string()))
    }

    /// Whether this permission covers `site`/`cam`.
    pub fn covers(&self, site: &str, cam: &str) -> bool {
        match self {
            Allow::All => true,
            Allow::Site(s) => s == site,
            Allow::Camera(s, c) => s == site && c == cam,
        }
    }
}

impl std::fmt::Display for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allow::All => f.write_str("*"),
            Allow::Site(s) => write!(f, "{s}/*"),
            Allow::Camera(s, c) => write!(f, "{s}/{c}"),
        }
    }
}

/// Whether any of `allow` covers `site`/`cam`.
pub fn allowed(allow: &[Allow], site: &str, cam: &str) -> bool {
    allow.iter().any(|a| a.covers(site, cam))
}

/// The stored form of a password: `MD5(user:realm:password)`, what Digest
/// verification needs (and Basic, over TLS, compares against).
pub fn ha1(user: &str, password: &str) -> [u8; 16] {
    Md5::digest(format!("{user}:{REALM}:{password}").as_bytes()).into()
}

fn md5_hex(s: &str) -> String {
    crate::hex::encode(&Md5::digest(s.as_bytes()))
}

/// Issues and checks server nonces: the window number and an HMAC of it
/// and the client's address, so nothing is stored per nonce, a nonce
/// expires, and one address cannot use another's. Within a window every
/// challenge to one address carries the same nonce, so 401 replies do not
/// tell an unknown viewer from a wrong password.
pub struct Nonces {
    key: hmac::Key,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nonces")
    }
}

/// What a presented nonce is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    /// Issued to this address in this window or the one before.
    Fresh,
    /// Issued to this address, but expired (answer `stale=true`).
    Stale,
    /// Not one of ours.
    Bad,
}

impl Nonces {
    /// Nonces under a 32-byte secret (random per data-plane process).
    pub fn new(secret: &[u8; 32]) -> Nonces {
        Nonces {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn mac(&self, window: u64, ip: IpAddr) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"revtun-rtsp-nonce");
        ctx.update(&window.to_be_bytes());
        match ip {
            IpAddr::V4(a) => ctx.update(&a.octets()),
            IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        crate::hex::encode(&ctx.sign().as_ref()[..12])
    }

    /// The nonce for `ip` at `now_secs` (Unix seconds).
    pub fn issue(&self, ip: IpAddr, now_secs: u64) -> String {
        let w = now_secs / NONCE_WINDOW_SECS;
        format!("{w:010x}{}", self.mac(w, ip))
    }

    /// Checks a nonce presented by `ip` at `now_secs`.
    pub fn check(&self, nonce: &str, ip: IpAddr, now_secs: u64) -> NonceState {
        if nonce.len() != 34 || !nonce.is_ascii() {
            return NonceState::Bad;
        }
        let Ok(w) = u64::from_str_radix(&nonce[..10], 16) else {
            return NonceState::Bad;
        };
        let mac = self.mac(w, ip);
        if constant_time::verify_slices_are_equal(mac.as_bytes(), &nonce.as_bytes()[10..]).is_err()
        {
            return NonceState::Bad;
        }
        let now = now_secs / NONCE_WINDOW_SECS;
        if w == now || w + 1 == now {
            NonceState::Fresh
        } else if w < now {
            NonceState::Stale
        } else {
            NonceState::Bad
        }
    }
}

/// Digest parameters a player sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestAnswer {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri`.
    pub uri: String,
    /// `response` (hex).
    pub response: String,
    /// `qop=auth` with its `nc` and `cnonce`, if used.
    pub qop: Option<(String, String)>,
}

/// Credentials in an `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    /// `Digest ...`
    Digest(DigestAnswer),
    /// `Basic ...` (only honoured over TLS).
    Basic {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presented::Digest(d) => write!(f, "Digest({})", d.username),
            Presented::Basic { user, .. } => write!(f, "Basic({user})"),
        }
    }
}

impl Presented {
    /// The user name presented.
    pub fn user(&self) -> &str {
        match self {
            Presented::Digest(d) => &d.username,
            Presented::Basic { user, .. } => user,
        }
    }
}

/// Parses an `Authorization` value; `None` if it is neither a complete
/// Digest answer (MD5, `qop` absent or `auth`) nor Basic.
pub fn parse_authorization(value: &str) -> Option<Presented> {
    let v = value.trim();
    if let Some(b64) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (user, password) = text.split_once(':')?;
        if user.is_empty() || text.chars().any(char::is_control) {
            return None;
        }
        return Some(Presented::Basic {
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    let params = crate::rtsp_auth::parse_digest_params(v)?;
    let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if let Some(a) = get("algorithm") {
        if !a.eq_ignore_ascii_case("MD5") {
            return None;
        }
    }
    let qop = match get("qop") {
        None => None,
        Some(q) if q.eq_ignore_ascii_case("auth") => Some((get("nc")?, get("cnonce")?)),
        Some(_) => return None,
    };
    let answer = DigestAnswer {
        username: get("username")?,
        realm: get("realm")?,
        nonce: get("nonce")?,
        uri: get("uri")?,
        response: get("response")?,
        qop,
    };
    if answer.username.is_empty() || answer.response.len() != 32 {
        return None;
    }
    Some(Presented::Digest(answer))
}

/// Whether a Digest answer is right for `ha1` and `method` (the `uri` is
/// the one the player signed; the caller checks it names the request's
/// resource). Compared in constant time.
pub fn digest_ok(ha1: &[u8; 16], d: &DigestAnswer, method: &str) -> bool {
    let ha1 = crate::hex::encode(ha1);
    let ha2 = md5_hex(&format!("{method}:{}", d.uri));
    let expected = match &d.qop {
        Some((nc, cnonce)) => md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", d.nonce)),
        None => md5_hex(&format!("{ha1}:{}:{ha2}", d.nonce)),
    };
    let got = d.response.to_ascii_lowercase();
    constant_time::verify_slices_are_equal(expected.as_bytes(), got.as_bytes()).is_ok()
}

/// Whether a password matches a stored `HA1` (Basic over TLS), in
/// constant time.
pub fn password_ok(stored: &[u8; 16], user: &str, password: &str) -> bool {
    constant_time::verify_slices_are_equal(stored, &ha1(user, password)).is_ok()
}

/// The `WWW-Authenticate` values of a challenge: Digest always, Basic
/// beside it over TLS.
pub fn challenge(nonce: &str, stale: bool, tls: bool) -> Vec<String> {
    let mut out = vec![format!(
        "Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=MD5{}",
        if stale { ", stale=true" } else { "" }
    )];
    if tls {
        out.push(format!("Basic realm=\"{REALM}\""));
    }
    out
}

/// A stream token's key (32 bytes, from the host state directory).
pub struct TokenKey {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey")
    }
}

/// A stream token that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// What it opens (`SITE/CAM` or `SITE/*`).
    pub allow: Allow,
    /// Expiry, Unix seconds.
    pub expires: u64,
}

impl TokenKey {
    /// The key from its 32 secret bytes.
    pub fn new(secret: &[u8; 32]) -> TokenKey {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The password of token user name `user`.
    pub fn password(&self, user: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"revtun-stream-token-v1\0");
        ctx.update(user.as_bytes());
        URL_SAFE_NO_PAD.encode(&ctx.sign().as_ref()[..16])
    }

    /// A token's user name and password for `allow` (not `*`: a token
    /// opens one camera or one site) until `expires` (Unix seconds).
    pub fn issue(&self, allow: &Allow, expires: u64) -> Result<(String, String), String> {
        if *allow == Allow::All {
            return Err("a stream token opens one camera or one site, not \"*\"".into());
        }
        let mut payload = expires.to_be_bytes().to_vec();
        payload.extend_from_slice(allow.to_string().as_bytes());
        let user = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(payload));
        let password = self.password(&user);
        Ok((user, password))
    }
}

/// The scope and expiry a token user name claims (not yet checked: its
/// password proves it).
pub fn token_claims(user: &str) -> Option<TokenGrant> {
    let b64 = user.strip_prefix(TOKEN_PREFIX)?;
    if b64.len() > 256 {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(b64).ok()?;
    if raw.len() < 9 {
        return None;
    }
    let (exp, scope) = raw.split_at(8);
    let expires = u64::from_be_bytes(exp.try_into().ok()?);
    let allow = Allow::parse(std::str::from_utf8(scope).ok()?).ok()?;
    (allow != Allow::All).then_some(TokenGrant { allow, expires })
}

/// Whether the `uri` a player signed names the same resource as the
/// request URI (absolute or path-only forms; query and trailing `/`
/// ignored), so an answer for one camera does not open another.
pub fn same_resource(signed: &str, request: &str) -> bool {
    fn path(u: &str) -> &str {
        let rest = u
            .strip_prefix("rtsp://")
            .or_else(|| u.strip_prefix("rtsps://"))
            .map_or(u, |r| r.split_once('/').map_or("", |(_, p)| p));
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        rest.trim_matches('/')
    }
    signed == request || path(signed) == path(request)
}

#[cfg(test)]
mod tests;
