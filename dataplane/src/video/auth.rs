//! Who may watch: the viewer gate of one shard's RTSP port.
//!
//! Every request is checked before anything else happens (no feed is
//! opened, so no site pulls a camera for an unauthenticated client):
//! RTSP Digest (MD5, the nonce of [`Nonces`]), Basic only over TLS, or a
//! stream token (see [`revtun_proto::viewer`]). Missing or wrong
//! credentials get the same 401 whether the viewer is unknown or its
//! password wrong; a known viewer without the camera's permission gets
//! 403. Wrong credentials are counted per source address and, past
//! [`FAILURES_PER_WINDOW`] in [`FAILURE_WINDOW`], the connection is closed
//! without a reply.
//!
//! The viewer table comes from control (the store is control's), whole,
//! whenever it changes; live sessions whose viewer or permission went away
//! are ended then.

use super::feed::Viewer;
use crate::signal::Signal;
use revtun_proto::handoff::Handoff;
use revtun_proto::rtsp::{self, Request};
use revtun_proto::viewer::{
    self, Allow, NonceState, Nonces, Presented, TokenGrant, TokenKey, REALM,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Window over which wrong credentials are counted per address.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// Wrong credentials one address may present per window.
pub const FAILURES_PER_WINDOW: u32 = 20;
/// Addresses whose failures are tracked at once; beyond this, untracked
/// addresses share one budget of ten times the per-address one.
pub const MAX_TRACKED: usize = 4096;
/// How long a request waits for control's first viewer table after the
/// data plane started.
pub const TABLE_WAIT: Duration = Duration::from_secs(5);

/// Who a request was made by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Nobody: `--allow-anonymous-viewers`.
    Anonymous,
    /// A viewer of the table (its stored password form, to notice a
    /// changed password).
    Viewer {
        /// Name.
        name: String,
        /// Stored password form when it authenticated.
        ha1: [u8; 16],
    },
    /// A stream token.
    Token(TokenGrant),
}

impl Who {
    /// For logs.
    pub fn label(&self) -> String {
        match self {
            Who::Anonymous => "anonymous".into(),
            Who::Viewer { name, .. } => name.clone(),
            Who::Token(g) => format!("token:{}", g.allow),
        }
    }
}

/// The outcome of checking one request.
#[derive(Debug)]
pub enum Verdict {
    /// Authenticated (permissions are checked per camera).
    Pass(Who),
    /// Answer 401 with a challenge (`stale`: the nonce expired, the
    /// credentials were right).
    Challenge {
        /// `stale=true`.
        stale: bool,
    },
    /// No viewer table yet: answer 503.
    NotReady,
    /// Too many wrong credentials from this address: close, no reply.
    Refuse,
}

/// What one connection has proven so far: a connection that
/// authenticated keeps its nonce (and a token its expiry) for the rest of
/// its requests, so a long session is not cut by a nonce window.
#[derive(Debug, Default)]
pub struct ConnAuth {
    proven: Option<(String, String)>,
}

#[derive(Debug)]
struct Entry {
    ha1: [u8; 16],
    allow: Vec<Allow>,
}

#[derive(Debug, Default)]
struct Table {
    viewers: HashMap<String, Entry>,
    token: Option<TokenKey>,
}

/// A live session to re-check when the table changes.
#[derive(Debug)]
struct Live {
    viewer: Weak<Viewer>,
    name: String,
    ha1: [u8; 16],
    site: String,
    cam: String,
}

#[derive(Debug, Default)]
struct Failures {
    by_addr: HashMap<IpAddr, (Instant, u32)>,
    untracked: (Option<Instant>, u32),
}

impl Failures {
    /// Records one failure of `ip`; whether it is still within budget.
    fn record(&mut self, ip: IpAddr, now: Instant) -> bool {
        let fresh = |start: Instant| now.saturating_duration_since(start) < FAILURE_WINDOW;
        if !self.by_addr.contains_key(&ip) && self.by_addr.len() >= MAX_TRACKED {
            self.by_addr.retain(|_, (start, _)| fresh(*start));
            if self.by_addr.len() >= MAX_TRACKED {
                let (start, n) = &mut self.untracked;
                if !start.is_some_and(fresh) {
                    *start = Some(now);
                    *n = 0;
                }
                *n += 1;
                return *n <= 10 * FAILURES_PER_WINDOW;
            }
        }
        let (start, n) = self.by_addr.entry(ip).or_insert((now, 0));
        if !fresh(*start) {
            *start = now;
            *n = 0;
        }
        *n += 1;
        if *n == FAILURES_PER_WINDOW + 1 {
            tracing::info!(%ip, window = ?FAILURE_WINDOW, "too many wrong viewer credentials from this address; closing its connections for a while");
        }
        *n <= FAILURES_PER_WINDOW
    }

    fn exceeded(&self, ip: IpAddr, now: Instant) -> bool {
        self.by_addr.get(&ip).is_some_and(|(start, n)| {
            now.saturating_duration_since(*start) < FAILURE_WINDOW && *n > FAILURES_PER_WINDOW
        })
    }
}

/// The viewer gate of one shard.
#[derive(Debug)]
pub struct Gate {
    anonymous: std::cell::Cell<bool>,
    nonces: Arc<Nonces>,
    table: RefCell<Option<Table>>,
    building: RefCell<Option<(Table, u32)>>,
    ready: Signal,
    failures: RefCell<Failures>,
    live: RefCell<Vec<Live>>,
    live_clean_at: Cell<usize>,
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Gate {
    /// A gate; `anonymous` lets every request through.
    pub fn new(anonymous: bool, nonces: Arc<Nonces>) -> Rc<Gate> {
        Rc::new(Gate {
            anonymous: std::cell::Cell::new(anonymous),
            nonces,
            table: RefCell::default(),
            building: RefCell::default(),
            ready: Signal::default(),
            failures: RefCell::default(),
            live: RefCell::default(),
            live_clean_at: Cell::new(64),
        })
    }

    /// Whether viewers need no credentials.
    pub fn anonymous(&self) -> bool {
        self.anonymous.get()
    }

    /// Turns `--allow-anonymous-viewers` on or off (a reload); sessions
    /// already playing are not re-checked.
    pub fn set_anonymous(&self, on: bool) {
        self.anonymous.set(on);
    }

    /// Takes a viewer-table message from control; true if it was one.
    pub fn on_handoff(&self, msg: &Handoff) -> bool {
        match msg {
            Handoff::ViewersBegin { token_key, count } => {
                let table = Table {
                    viewers: HashMap::with_capacity((*count as usize).min(1 << 16)),
                    token: Some(TokenKey::new(token_key)),
                };
                *self.building.borrow_mut() = Some((table, *count));
            }
            Handoff::Viewer { name, ha1, allow } => {
                if let Some((t, _)) = self.building.borrow_mut().as_mut() {
                    let allow = allow.iter().filter_map(|a| Allow::parse(a).ok()).collect();
                    t.viewers.insert(name.clone(), Entry { ha1: *ha1, allow });
                }
            }
            Handoff::ViewersEnd => {
                let Some((t, count)) = self.building.borrow_mut().take() else {
                    return true;
                };
                if t.viewers.len() != count as usize {
                    tracing::error!(
                        expected = count,
                        got = t.viewers.len(),
                        "incomplete viewer table from control; keeping the previous one"
                    );
                    return true;
                }
                tracing::info!(viewers = count, "viewer table updated");
                *self.table.borrow_mut() = Some(t);
                self.ready.notify();
                self.recheck();
            }
            _ => return false,
        }
        true
    }

    /// Ends live sessions whose viewer is gone, changed its password or
    /// lost the permission for what it watches.
    fn recheck(&self) {
        let table = self.table.borrow();
        let Some(t) = table.as_ref() else { return };
        self.live.borrow_mut().retain(|l| {
            let Some(v) = l.viewer.upgrade() else {
                return false;
            };
            if v.gone.get() {
                return false;
            }
            let ok = t.viewers.get(&l.name).is_some_and(|e| {
                e.ha1 == l.ha1 && viewer::allowed(&e.allow, &l.site, &l.cam)
            });
            if !ok {
                tracing::info!(viewer = %l.name, site = %l.site, camera = %l.cam, "viewer removed or no longer allowed: ending its session");
                v.gone.set(true);
                v.sig.notify();
            }
            ok
        });
    }

    /// Remembers a playing session so that a later table can end it.
    pub fn watch(&self, who: &Who, site: &str, cam: &str, v: &Rc<Viewer>) {
        let Who::Viewer { name, ha1 } = who else {
            return;
        };
        let mut live = self.live.borrow_mut();
        if live.len() >= self.live_clean_at.get() {
            live.retain(|l| l.viewer.strong_count() > 0);
            self.live_clean_at.set((live.len() * 2).max(64));
        }
        live.push(Live {
            viewer: Rc::downgrade(v),
            name: name.clone(),
            ha1: *ha1,
            site: site.to_string(),
            cam: cam.to_string(),
        });
    }

    /// Whether `who` may watch `site`/`cam` now.
    pub fn allows(&self, who: &Who, site: &str, cam: &str) -> bool {
        match who {
            Who::Anonymous => true,
            Who::Token(g) => g.allow.covers(site, cam),
            Who::Viewer { name, ha1 } => self.table.borrow().as_ref().is_some_and(|t| {
                t.viewers
                    .get(name)
                    .is_some_and(|e| e.ha1 == *ha1 && viewer::allowed(&e.allow, site, cam))
            }),
        }
    }

    /// Checks the credentials of `req` from `ip`.
    pub async fn check(
        &self,
        req: &Request,
        ip: IpAddr,
        tls: bool,
        conn: &mut ConnAuth,
    ) -> Verdict {
        if self.anonymous.get() {
            return Verdict::Pass(Who::Anonymous);
        }
        let now = Instant::now();
        if self.failures.borrow().exceeded(ip, now) {
            return Verdict::Refuse;
        }
        let Some(presented) = req
            .header("Authorization")
            .and_then(viewer::parse_authorization)
        else {
            // No (usable) credentials: the normal first request of a player.
            return if req.header("Authorization").is_some()
                && !self.failures.borrow_mut().record(ip, now)
            {
                Verdict::Refuse
            } else {
                Verdict::Challenge { stale: false }
            };
        };
        if self.table.borrow().is_none() {
            let _ = glommio::timer::timeout(TABLE_WAIT, async {
                self.ready.wait().await;
                Ok(())
            })
            .await;
            if self.table.borrow().is_none() {
                return Verdict::NotReady;
            }
        }
        if matches!(presented, Presented::Basic { .. }) && !tls {
            // Basic over plain TCP is never checked: no oracle for a
            // password sent in the clear. Offer Digest instead.
            return Verdict::Challenge { stale: false };
        }
        match self.verify(&presented, req, ip, conn) {
            Ok(who) => Verdict::Pass(who),
            Err(Stale) => Verdict::Challenge { stale: true },
            Err(Wrong) => {
                if self.failures.borrow_mut().record(ip, now) {
                    Verdict::Challenge { stale: false }
                } else {
                    Verdict::Refuse
                }
            }
        }
    }

    fn verify(
        &self,
        presented: &Presented,
        req: &Request,
        ip: IpAddr,
        conn: &mut ConnAuth,
    ) -> Result<Who, Failure> {
        let table = self.table.borrow();
        let t = table.as_ref().ok_or(Wrong)?;
        let user = presented.user();
        // The stored password form of the user, whether a viewer or a
        // token; an unknown user is checked against a dummy value, so
        // that it costs the same as a wrong password.
        let grant = viewer::token_claims(user);
        let (ha1, known) = match (&grant, &t.token, t.viewers.get(user)) {
            (Some(_), Some(key), _) => (viewer::ha1(user, &key.password(user)), true),
            (None, _, Some(e)) => (e.ha1, true),
            _ => ([0u8; 16], false),
        };
        let proven = conn.proven.as_ref().is_some_and(|(u, n)| {
            u == user && matches!(presented, Presented::Digest(d) if &d.nonce == n)
        });
        let (right, nonce) = match presented {
            Presented::Digest(d) => {
                let ok = viewer::digest_ok(&ha1, d, req.method.as_str())
                    && d.realm == REALM
                    && viewer::same_resource(&d.uri, &req.uri);
                (ok, Some(d.nonce.as_str()))
            }
            Presented::Basic { user, password } => {
                (viewer::password_ok(&ha1, user, password), None)
            }
        };
        if !(right && known) {
            return Err(Wrong);
        }
        if let Some(n) = nonce {
            if !proven {
                match self.nonces.check(n, ip, unix_secs()) {
                    NonceState::Fresh => {}
                    NonceState::Stale => return Err(Stale),
                    NonceState::Bad => return Err(Wrong),
                }
            }
        }
        let who = match grant {
            Some(g) => {
                if !proven && g.expires <= unix_secs() {
                    return Err(Wrong);
                }
                Who::Token(g)
            }
            None => Who::Viewer {
                name: user.to_string(),
                ha1,
            },
        };
        if let Some(n) = nonce {
            conn.proven = Some((user.to_string(), n.to_string()));
        }
        Ok(who)
    }

    /// The 401 reply for `ip`: byte-identical for every failed request
    /// with the same CSeq from one address within a nonce window.
    pub fn challenge(&self, ip: IpAddr, cseq: Option<&str>, stale: bool, tls: bool) -> Vec<u8> {
        let nonce = self.nonces.issue(ip, unix_secs());
        let values = viewer::challenge(&nonce, stale, tls);
        let headers: Vec<(&str, &str)> = values
            .iter()
            .map(|v| ("WWW-Authenticate", v.as_str()))
            .collect();
        rtsp::response(401, cseq, &headers, b"")
    }
}

/// Why credentials did not pass.
#[derive(Debug)]
enum Failure {
    Wrong,
    Stale,
}
use Failure::{Stale, Wrong};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_bounded_per_address_and_in_total() {
        let mut f = Failures::default();
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().expect("test");
        for _ in 0..FAILURES_PER_WINDOW {
            assert!(f.record(a, t));
        }
        assert!(!f.record(a, t));
        assert!(f.exceeded(a, t));
        assert!(!f.exceeded(a, t + FAILURE_WINDOW));
        assert!(f.record(a, t + FAILURE_WINDOW));
        // Many addresses: the table stays bounded.
        for i in 0..(MAX_TRACKED as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            f.record(ip, t);
        }
        assert!(f.by_addr.len() <= MAX_TRACKED);
    }
}
