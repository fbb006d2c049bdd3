//! The site store: sites, tokens (digests only), issued certificates,
//! and the viewers of the host's RTSP port (password in Digest `HA1` form
//! only, permissions as text).
//!
//! One SQLite file under the host state directory. Every decision that
//! matters is one statement: spending a token is a single conditional
//! `UPDATE ... WHERE used_at IS NULL AND expires_at > now`, so two racing
//! enrollments cannot both win (threat 2); there is no cache of "unused".
//!
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] runs
//! in order from the stored version. A fleet of hosts keeps the same
//! interface in etcd ([`crate::fleet`]); [`Store`] is either.

use crate::clock::UnixMillis;
use revtun_proto::token::Token;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Schema migrations; entry `i` upgrades version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE sites (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    last_seen   INTEGER
);
CREATE TABLE tokens (
    id              BLOB PRIMARY KEY,
    site            TEXT NOT NULL REFERENCES sites(name),
    secret_sha256   BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    used_at         INTEGER,
    invalidated_at  INTEGER
);
CREATE INDEX tokens_site ON tokens(site);
CREATE TABLE certs (
    serial      BLOB PRIMARY KEY,
    site        TEXT NOT NULL REFERENCES sites(name),
    token_id    BLOB,
    issued_at   INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX certs_site ON certs(site);
"#,
    r#"
CREATE TABLE viewers (
    name        TEXT PRIMARY KEY,
    ha1         BLOB NOT NULL,
    allow       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
"#,
];

/// How long a writer waits for another process (keytool vs control).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Store failures that are the host's problem, not the peer's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("site store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The file was written by a newer revtun.
    #[error("site store schema version {0} is newer than this build knows ({1})")]
    TooNew(u32, u32),
    /// An operator asked for something the state forbids.
    #[error("{0}")]
    Refused(String),
    /// The fleet's etcd could not be reached or answered badly.
    #[error("{0}")]
    Fleet(String),
}

/// Why an enrollment or hello is refused. Logged precisely, never sent:
/// the wire carries one generic refusal for all of these (threat 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token with this id.
    #[error("unknown token")]
    UnknownToken,
    /// The id exists but the secret does not match.
    #[error("bad token secret")]
    BadSecret,
    /// The token was issued for another site.
    #[error("token issued for another site")]
    WrongSite,
    /// The token is past its expiry.
    #[error("token expired")]
    Expired,
    /// The token was already used.
    #[error("token already spent")]
    Spent,
    /// A newer token replaced it, or the site was revoked.
    #[error("token invalidated")]
    Invalidated,
    /// The site is revoked.
    #[error("site revoked")]
    SiteRevoked,
    /// The certificate's serial is not in the store.
    #[error("unknown certificate")]
    UnknownCert,
    /// The certificate was revoked.
    #[error("certificate revoked")]
    CertRevoked,
    /// The certificate names another site than the hello.
    #[error("certificate does not match the site named")]
    CertSiteMismatch,
    /// The certificate is past its validity.
    #[error("certificate expired")]
    CertExpired,
}

/// The rules both stores (SQLite and the fleet's etcd) apply, in one
/// place: the stores only gather the facts.
pub mod rules {
    use super::{Refusal, SiteState, StoreError};

    /// What is known about a presented token.
    #[derive(Debug, Clone, Copy)]
    pub struct TokenFacts {
        /// The secret's digest matched (compared in constant time).
        pub secret_ok: bool,
        /// It was issued for the site that presents it.
        pub same_site: bool,
        /// Its site is revoked.
        pub site_revoked: bool,
        /// Already spent.
        pub spent: bool,
        /// Replaced by a newer token, or its site revoked.
        pub invalidated: bool,
        /// Past its expiry.
        pub expired: bool,
    }

    /// The verdict on a token, the first failing check in a fixed order.
    pub fn token(f: TokenFacts) -> Result<(), Refusal> {
        if !f.secret_ok {
            Err(Refusal::BadSecret)
        } else if !f.same_site {
            Err(Refusal::WrongSite)
        } else if f.site_revoked {
            Err(Refusal::SiteRevoked)
        } else if f.spent {
            Err(Refusal::Spent)
        } else if f.invalidated {
            Err(Refusal::Invalidated)
        } else if f.expired {
            Err(Refusal::Expired)
        } else {
            Ok(())
        }
    }

    /// What is known about a presented site certificate.
    #[derive(Debug, Clone, Copy)]
    pub struct CertFacts {
        /// It names the site of the hello.
        pub same_site: bool,
        /// Its site is revoked.
        pub site_revoked: bool,
        /// It is revoked.
        pub cert_revoked: bool,
        /// Past its validity.
        pub expired: bool,
    }

    /// The verdict on a certificate.
    pub fn cert(f: CertFacts) -> Result<(), Refusal> {
        if !f.same_site {
            Err(Refusal::CertSiteMismatch)
        } else if f.site_revoked {
            Err(Refusal::SiteRevoked)
        } else if f.cert_revoked {
            Err(Refusal::CertRevoked)
        } else if f.expired {
            Err(Refusal::CertExpired)
        } else {
            Ok(())
        }
    }

    /// A site's state for `list`.
    pub fn site_state(revoked: bool, live_cert: bool, live_token: bool) -> SiteState {
        if revoked {
            SiteState::Revoked
        } else if live_cert {
            SiteState::Enrolled
        } else if live_token {
            SiteState::Pending
        } else {
            SiteState::Lapsed
        }
    }

    /// Whether a new token may be issued for a known site.
    pub fn new_token(
        site: &str,
        revoked: bool,
        enrolled: bool,
        reissue: bool,
    ) -> Result<(), StoreError> {
        if revoked {
            Err(StoreError::Refused(format!(
                "site {site:?} is revoked; issue a keyfile under a new site name"
            )))
        } else if enrolled && !reissue {
            Err(StoreError::Refused(format!(
                "site {site:?} is already enrolled; pass --reissue to let it enroll again \
                 (its current certificate stays valid until revoked)"
            )))
        } else {
            Ok(())
        }
    }

    /// Why a revocation did nothing.
    pub fn not_revocable(site: &str, exists: bool) -> StoreError {
        StoreError::Refused(if exists {
            format!("site {site:?} is already revoked")
        } else {
            format!("no site named {site:?}")
        })
    }

    /// Whether a viewer may be added (`update` false) or changed.
    pub fn viewer_change(
        name: &str,
        exists: bool,
        update: bool,
        has_password: bool,
    ) -> Result<(), StoreError> {
        match (exists, update) {
            (true, false) => Err(StoreError::Refused(format!(
                "viewer {name:?} exists; pass --update to change it, or remove it first"
            ))),
            (false, true) => Err(StoreError::Refused(format!("no viewer named {name:?}"))),
            (false, false) if !has_password => {
                Err(StoreError::Refused("a new viewer needs a password".into()))
            }
            _ => Ok(()),
        }
    }
}

/// Lifecycle state of a site, for `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteState {
    /// A token is outstanding and nothing was enrolled yet.
    Pending,
    /// Holds a valid certificate.
    Enrolled,
    /// Revoked by the operator.
    Revoked,
    /// Neither: its tokens expired unused or its certificates lapsed.
    Lapsed,
}

impl SiteState {
    /// Word shown by `list`.
    pub fn as_str(self) -> &'static str {
        match self {
            SiteState::Pending => "pending",
            SiteState::Enrolled => "enrolled",
            SiteState::Revoked => "revoked",
            SiteState::Lapsed => "lapsed",
        }
    }
}

/// One row of `list`.
#[derive(Debug, Clone)]
pub struct SiteSummary {
    /// Site name.
    pub name: String,
    /// Current state.
    pub state: SiteState,
    /// Latest expiry of a live certificate.
    pub cert_not_after: Option<UnixMillis>,
    /// Expiry of the outstanding token.
    pub token_expires: Option<UnixMillis>,
    /// Last successful hello.
    pub last_seen: Option<UnixMillis>,
}

/// A token spent successfully: what enrollment records next to the cert.
#[derive(Debug)]
pub struct NewCert<'a> {
    /// Serial of the certificate being issued.
    pub serial: &'a [u8],
    /// Its expiry.
    pub not_after: UnixMillis,
}

/// The single-host store. One connection behind a mutex; SQLite
/// serialises writers across processes with its own locks.
#[derive(Debug)]
pub struct Sqlite {
    conn: Mutex<Connection>,
}

/// The site store: SQLite on one host, etcd in a fleet
/// ([`crate::fleet`]). The same calls and the same guarantees.
#[derive(Debug)]
pub enum Store {
    /// `STATE_DIR/sites.db`.
    Sqlite(Sqlite),
    /// The fleet's etcd.
    Fleet(Box<crate::fleet::FleetStore>),
}

/// Calls the same method on whichever store this is.
macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e,
            Store::Fleet($s) => $e,
        }
    };
}

impl Store {
    /// Opens (creating if needed) and migrates the SQLite store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Sqlite::open(path).map(Store::Sqlite)
    }

    /// The fleet store, if this host is in a fleet.
    pub fn fleet(&self) -> Option<&crate::fleet::FleetStore> {
        match self {
            Store::Fleet(f) => Some(f),
            Store::Sqlite(_) => None,
        }
    }

    /// Schema version (SQLite `user_version`; the fleet's key layout).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        match self {
            Store::Sqlite(s) => s.schema_version(),
            Store::Fleet(_) => Ok(1),
        }
    }

    /// Records a new token for `site`, creating the site if it is new and
    /// invalidating its older unused tokens. Refuses revoked sites, and
    /// enrolled ones unless `reissue` (a site that lost its state).
    pub fn add_token(
        &self,
        site: &str,
        token: &Token,
        now: UnixMillis,
        expires: UnixMillis,
        reissue: bool,
    ) -> Result<(), StoreError> {
        both!(self, s => s.add_token(site, token, now, expires, reissue))
    }

    /// Checks a token without spending it (constant-time digest compare).
    pub fn check_token(
        &self,
        site: &str,
        token: &Token,
        now: UnixMillis,
    ) -> Result<Result<(), Refusal>, StoreError> {
        both!(self, s => s.check_token(site, token, now))
    }

    /// Spends the token and records the certificate, atomically: of any
    /// number of racing callers (on any host of a fleet), exactly one sees
    /// `Ok(Ok(()))`.
    pub fn spend_token(
        &self,
        site: &str,
        token: &Token,
        cert: NewCert<'_>,
        now: UnixMillis,
    ) -> Result<Result<(), Refusal>, StoreError> {
        both!(self, s => s.spend_token(site, token, cert, now))
    }

    /// Checks a presented site certificate and records the visit.
    pub fn check_cert(
        &self,
        site: &str,
        serial: &[u8],
        now: UnixMillis,
    ) -> Result<Result<(), Refusal>, StoreError> {
        both!(self, s => s.check_cert(site, serial, now))
    }

    /// Revokes a site: its certificates and unused tokens stop working.
    pub fn revoke_site(&self, site: &str, now: UnixMillis) -> Result<(), StoreError> {
        both!(self, s => s.revoke_site(site, now))
    }

    /// True when the site is revoked.
    pub fn is_revoked(&self, site: &str) -> Result<bool, StoreError> {
        both!(self, s => s.is_revoked(site))
    }

    /// Where a revocation poll starts: now.
    pub fn revocation_cursor(&self, now: UnixMillis) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(now),
            Store::Fleet(f) => f.revision(),
        }
    }

    /// Sites revoked since `cursor`, and the next cursor. SQLite: times,
    /// overlapping by `overlap` so a revocation committed during the query
    /// is not missed; etcd: revisions (clocks of hosts may disagree). A
    /// site may be named twice; revoking twice is harmless.
    pub fn revocations_after(
        &self,
        cursor: i64,
        now: UnixMillis,
        overlap: Duration,
    ) -> Result<(Vec<String>, i64), StoreError> {
        match self {
            Store::Sqlite(s) => Ok((
                s.revoked_since(cursor)?
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect(),
                now - overlap.as_millis() as i64,
            )),
            Store::Fleet(f) => f.revocations_after(cursor),
        }
    }

    /// Every site with its state, for `list`.
    pub fn list(&self, now: UnixMillis) -> Result<Vec<SiteSummary>, StoreError> {
        both!(self, s => s.list(now))
    }

    /// Adds a viewer, or with `update` changes one.
    pub fn put_viewer(
        &self,
        name: &str,
        ha1: Option<[u8; 16]>,
        allow: &[String],
        update: bool,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        both!(self, s => s.put_viewer(name, ha1, allow, update, now))
    }

    /// Removes a viewer.
    pub fn remove_viewer(&self, name: &str) -> Result<(), StoreError> {
        both!(self, s => s.remove_viewer(name))
    }

    /// Every viewer, by name.
    pub fn viewers(&self) -> Result<Vec<ViewerRow>, StoreError> {
        both!(self, s => s.viewers())
    }
}

/// (site, secret digest, expires_at, used_at, invalidated_at, site revoked_at)
type TokenRow = (String, Vec<u8>, i64, Option<i64>, Option<i64>, Option<i64>);

fn digest(secret: &[u8]) -> [u8; 32] {
    crate::pki::sha256(secret)
}

impl Sqlite {
    /// Opens (creating if needed) and migrates the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let store = Sqlite {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so a poisoned lock is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as u32;
        if version > known {
            return Err(StoreError::TooNew(version, known));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Schema version in the file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Records a new token for `site`, creating the site if it is new and
    /// invalidating its older unused tokens. Refuses revoked sites, and
    /// enrolled ones unless `reissue` (a site that lost its state).
    pub fn add_token(
        &self,
        site: &str,
        token: &Token,
        now: UnixMillis,
        expires: UnixMillis,
        reissue: bool,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let revoked: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked_at FROM sites WHERE name = ?1",
                [site],
                |r| r.get(0),
            )
            .optional()?;
        match revoked {
            Some(revoked_at) => {
                let live: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM certs WHERE site = ?1 AND revoked_at IS NULL AND not_after > ?2",
                    params![site, now],
                    |r| r.get(0),
                )?;
                rules::new_token(site, revoked_at.is_some(), live > 0, reissue)?;
            }
            None => {
                tx.execute(
                    "INSERT INTO sites (name, created_at) VALUES (?1, ?2)",
                    params![site, now],
                )?;
            }
        }
        tx.execute(
            "UPDATE tokens SET invalidated_at = ?2 WHERE site = ?1 AND used_at IS NULL AND invalidated_at IS NULL",
            params![site, now],
        )?;
        tx.execute(
            "INSERT INTO tokens (id, site, secret_sha256, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![&token.id[..], site, &digest(&token.secret)[..], now, expires],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Checks a token without spending it: the cheap gate before any
    /// signing work. The secret digest is compared in constant time.
    pub fn check_token(
        &self,
        site: &str,
        token: &Token,
        now: UnixMillis,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let conn = self.lock();
        let row: Option<TokenRow> = conn
            .query_row(
                "SELECT t.site, t.secret_sha256, t.expires_at, t.used_at, t.invalidated_at, s.revoked_at \
                 FROM tokens t JOIN sites s ON s.name = t.site WHERE t.id = ?1",
                [&token.id[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()?;
        let Some((bound_site, stored, expires_at, used_at, invalidated_at, site_revoked)) = row
        else {
            return Ok(Err(Refusal::UnknownToken));
        };
        let secret_ok: bool = digest(&token.secret).ct_eq(stored.as_slice()).into();
        Ok(rules::token(rules::TokenFacts {
            secret_ok,
            same_site: bound_site == site,
            site_revoked: site_revoked.is_some(),
            spent: used_at.is_some(),
            invalidated: invalidated_at.is_some(),
            expired: now >= expires_at,
        }))
    }

    /// Spends the token and records the certificate, atomically. The
    /// conditional update is the only authority: of any number of racing
    /// callers, exactly one sees `Ok(Ok(()))`.
    pub fn spend_token(
        &self,
        site: &str,
        token: &Token,
        cert: NewCert<'_>,
        now: UnixMillis,
    ) -> Result<Result<(), Refusal>, StoreError> {
        if let Err(r) = self.check_token(site, token, now)? {
            return Ok(Err(r));
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE tokens SET used_at = ?3 \
             WHERE id = ?1 AND site = ?2 AND used_at IS NULL AND invalidated_at IS NULL AND expires_at > ?3 \
             AND secret_sha256 = ?4 \
             AND NOT EXISTS (SELECT 1 FROM sites WHERE name = ?2 AND revoked_at IS NOT NULL)",
            params![&token.id[..], site, now, &digest(&token.secret)[..]],
        )?;
        if changed != 1 {
            // Lost a race, or the state changed since the check: classify.
            drop(tx);
            drop(conn);
            return Ok(Err(self
                .check_token(site, token, now)?
                .err()
                .unwrap_or(Refusal::Spent)));
        }
        tx.execute(
            "INSERT INTO certs (serial, site, token_id, issued_at, not_after) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![cert.serial, site, &token.id[..], now, cert.not_after],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    /// Checks a presented site certificate (every hello, threat 3) and
    /// records the visit.
    pub fn check_cert(
        &self,
        site: &str,
        serial: &[u8],
        now: UnixMillis,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let conn = self.lock();
        let row: Option<(String, i64, Option<i64>, Option<i64>)> = conn
            .query_row(
                "SELECT c.site, c.not_after, c.revoked_at, s.revoked_at FROM certs c \
                 JOIN sites s ON s.name = c.site WHERE c.serial = ?1",
                [serial],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((cert_site, not_after, cert_revoked, site_revoked)) = row else {
            return Ok(Err(Refusal::UnknownCert));
        };
        let verdict = rules::cert(rules::CertFacts {
            same_site: cert_site == site,
            site_revoked: site_revoked.is_some(),
            cert_revoked: cert_revoked.is_some(),
            expired: now >= not_after,
        });
        if verdict.is_ok() {
            conn.execute(
                "UPDATE sites SET last_seen = ?2 WHERE name = ?1",
                params![site, now],
            )?;
        }
        Ok(verdict)
    }

    /// Revokes a site: its certificates and unused tokens stop working.
    pub fn revoke_site(&self, site: &str, now: UnixMillis) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE sites SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            params![site, now],
        )?;
        if changed == 0 {
            let exists: bool = tx
                .query_row("SELECT 1 FROM sites WHERE name = ?1", [site], |_| Ok(()))
                .optional()?
                .is_some();
            return Err(rules::not_revocable(site, exists));
        }
        tx.execute(
            "UPDATE certs SET revoked_at = ?2 WHERE site = ?1 AND revoked_at IS NULL",
            params![site, now],
        )?;
        tx.execute(
            "UPDATE tokens SET invalidated_at = ?2 WHERE site = ?1 AND used_at IS NULL AND invalidated_at IS NULL",
            params![site, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// True when the site is revoked (polled by held tunnels).
    pub fn is_revoked(&self, site: &str) -> Result<bool, StoreError> {
        let conn = self.lock();
        let r: Option<Option<i64>> = conn
            .query_row(
                "SELECT revoked_at FROM sites WHERE name = ?1",
                [site],
                |r| r.get(0),
            )
            .optional()?;
        Ok(!matches!(r, Some(None)))
    }

    /// Sites revoked at or after `since`, with their revocation time.
    pub fn revoked_since(
        &self,
        since: UnixMillis,
    ) -> Result<Vec<(String, UnixMillis)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT name, revoked_at FROM sites WHERE revoked_at >= ?1")?;
        let rows = stmt.query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every site with its state, for `list`.
    pub fn list(&self, now: UnixMillis) -> Result<Vec<SiteSummary>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT s.name, s.revoked_at, s.last_seen, \
               (SELECT MAX(not_after) FROM certs c WHERE c.site = s.name AND c.revoked_at IS NULL AND c.not_after > ?1), \
               (SELECT MAX(expires_at) FROM tokens t WHERE t.site = s.name AND t.used_at IS NULL \
                  AND t.invalidated_at IS NULL AND t.expires_at > ?1) \
             FROM sites s ORDER BY s.name",
        )?;
        let rows = stmt.query_map([now], |r| {
            let revoked: Option<i64> = r.get(1)?;
            let cert: Option<i64> = r.get(3)?;
            let token: Option<i64> = r.get(4)?;
            let state = rules::site_state(revoked.is_some(), cert.is_some(), token.is_some());
            Ok(SiteSummary {
                name: r.get(0)?,
                state,
                cert_not_after: cert,
                token_expires: token,
                last_seen: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// One viewer as stored: what the data plane needs to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerRow {
    /// Viewer name.
    pub name: String,
    /// `MD5(name:realm:password)`.
    pub ha1: [u8; 16],
    /// Permissions (`SITE/CAM`, `SITE/*`, `*`).
    pub allow: Vec<String>,
    /// Last change.
    pub updated_at: UnixMillis,
}

impl Sqlite {
    /// Adds a viewer, or with `update` replaces an existing viewer's
    /// permissions (and its password when `ha1` is given). Names and
    /// permissions are checked by the caller.
    pub fn put_viewer(
        &self,
        name: &str,
        ha1: Option<[u8; 16]>,
        allow: &[String],
        update: bool,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        let allow = allow.join(" ");
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row("SELECT 1 FROM viewers WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some();
        rules::viewer_change(name, exists, update, ha1.is_some())?;
        match (exists, ha1) {
            // Refused above; asked again rather than assumed.
            (false, None) => return rules::viewer_change(name, exists, update, false),
            (false, Some(h)) => {
                tx.execute(
                    "INSERT INTO viewers (name, ha1, allow, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![name, &h[..], allow, now],
                )?;
            }
            (true, Some(h)) => {
                tx.execute(
                    "UPDATE viewers SET ha1 = ?2, allow = ?3, updated_at = ?4 WHERE name = ?1",
                    params![name, &h[..], allow, now],
                )?;
            }
            (true, None) => {
                tx.execute(
                    "UPDATE viewers SET allow = ?2, updated_at = ?3 WHERE name = ?1",
                    params![name, allow, now],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes a viewer.
    pub fn remove_viewer(&self, name: &str) -> Result<(), StoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM viewers WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(StoreError::Refused(format!("no viewer named {name:?}")));
        }
        Ok(())
    }

    /// Every viewer, by name.
    pub fn viewers(&self) -> Result<Vec<ViewerRow>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT name, ha1, allow, updated_at FROM viewers ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            let (name, ha1, allow, updated_at): (String, Vec<u8>, String, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            // A damaged password form is skipped, never read as a known
            // value (zeros) that anyone could answer.
            Ok(<[u8; 16]>::try_from(ha1.as_slice())
                .ok()
                .map(|ha1| ViewerRow {
                    name,
                    ha1,
                    allow: allow.split_whitespace().map(str::to_string).collect(),
                    updated_at,
                }))
        })?;
        let rows: Vec<Option<ViewerRow>> = rows.collect::<Result<_, _>>()?;
        Ok(rows.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests;
