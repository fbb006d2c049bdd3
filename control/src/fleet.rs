//! Fleet mode: several hosts share one site store in **etcd**, and each
//! host says in etcd which site tunnels it holds (docs/fleet.md).
//!
//! Keys, under a versioned prefix (default `/revtun/v1/`):
//!
//! | key | value | written |
//! |---|---|---|
//! | `fleet/ca` | `sha256:…` of the fleet CA certificate | once, by the first host (create-if-absent) |
//! | `sites/NAME` | the site record: tokens (digests), certificates, revocation | one compare-and-set on its `mod_revision` per change |
//! | `tokens/ID` | the site a token id belongs to | with the site record, create-if-absent |
//! | `certs/SERIAL` | the site a certificate belongs to | with the site record |
//! | `revoked/NAME` | revocation time | with the site record |
//! | `seen/NAME` | last hello, ms | plain put (not exclusive) |
//! | `viewers/NAME` | Digest `HA1` and permissions | create-if-absent or compare-and-set |
//! | `hosts/ID` | the host's tunnel listener | under the host's lease |
//! | `tunnels/SITE/HOST` | when and from where | under the holding host's lease |
//!
//! Every decision that must be exclusive touches the one `sites/NAME` key
//! in a transaction that compares its `mod_revision` with the one read:
//! of any number of hosts spending one token at once, exactly one
//! transaction succeeds and the others re-read and see it spent.
//!
//! The calls here are blocking (control runs them on its blocking pool;
//! the keytool calls them directly): the etcd client runs on a small
//! tokio runtime of its own, and every call has a deadline
//! ([`OP_TIMEOUT`]), so an unreachable etcd is an error within seconds,
//! never a hang.

use crate::clock::UnixMillis;
use crate::store::{rules, NewCert, Refusal, SiteSummary, StoreError, ViewerRow};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use revtun_proto::hex;
use revtun_proto::token::Token;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tracing::{error, info, warn};

/// The fleet settings file in a host state directory.
pub const FLEET_FILE: &str = "fleet.toml";
/// Key prefix of this layout.
pub const DEFAULT_PREFIX: &str = "/revtun/v1/";
/// Deadline of one etcd call.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// TTL of a host's lease: a dead host's registrations vanish within it.
pub const LEASE_TTL_SECS: i64 = 10;
/// How often the lease is kept alive.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(3);
/// How often a host compares the tunnels it holds with the registry.
pub const REGISTER_EVERY: Duration = Duration::from_secs(1);
/// Tokens kept per site record (spent, replaced and expired ones are
/// dropped oldest first beyond this; a dropped id is "unknown").
const MAX_TOKENS_KEPT: usize = 16;
/// Compare-and-set attempts before giving up on a contended record.
const CAS_RETRIES: usize = 32;
/// Certificates remembered as valid for hellos while etcd is away.
const MAX_CACHED_CERTS: usize = 100_000;

/// Where the fleet's etcd is, as kept in `STATE_DIR/fleet.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// etcd client URLs (`http://HOST:2379`).
    pub endpoints: Vec<String>,
    /// Key prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_string()
}

/// Parses `--fleet URL[,URL...]`.
pub fn parse_endpoints(s: &str) -> Result<Vec<String>, String> {
    let v: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    if v.is_empty() {
        return Err("no etcd endpoint given".into());
    }
    for e in &v {
        let rest = e
            .strip_prefix("http://")
            .ok_or_else(|| format!("{e}: an etcd endpoint is http://HOST:PORT"))?;
        let ok = rest
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok || rest.contains('/') {
            return Err(format!("{e}: an etcd endpoint is http://HOST:PORT"));
        }
    }
    Ok(v)
}

impl FleetConfig {
    /// A configuration for these endpoints with the default prefix.
    pub fn new(endpoints: Vec<String>) -> Self {
        FleetConfig {
            endpoints,
            prefix: default_prefix(),
        }
    }

    /// Path of the file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FLEET_FILE)
    }

    /// Reads `dir/fleet.toml` if the directory belongs to a fleet.
    pub fn load(dir: &Path) -> Result<Option<Self>, String> {
        let p = Self::path(dir);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", p.display())),
        };
        let cfg: FleetConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        parse_endpoints(&cfg.endpoints.join(",")).map_err(|e| format!("{}: {e}", p.display()))?;
        if !cfg.prefix.starts_with('/') || !cfg.prefix.ends_with('/') {
            return Err(format!(
                "{}: prefix must start and end with '/'",
                p.display()
            ));
        }
        Ok(Some(cfg))
    }

    /// Writes `dir/fleet.toml` (0600).
    pub fn save(&self, dir: &Path) -> Result<(), crate::state::StateError> {
        let text = toml::to_string(self).map_err(|e| crate::state::StateError::Io {
            path: Self::path(dir).display().to_string(),
            error: std::io::Error::other(e),
        })?;
        crate::state::write_file(&Self::path(dir), text.as_bytes(), 0o600)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SiteRec {
    created_at: i64,
    revoked_at: Option<i64>,
    tokens: Vec<TokenRec>,
    certs: Vec<CertRec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRec {
    id: String,
    secret_sha256: String,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
    invalidated_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CertRec {
    serial: String,
    token_id: String,
    issued_at: i64,
    not_after: i64,
    revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ViewerRec {
    ha1: String,
    allow: Vec<String>,
    created_at: i64,
    updated_at: i64,
}

/// A host as registered under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRec {
    /// The host's tunnel listener address.
    pub listen: String,
    /// When this registration was made, ms.
    pub since: i64,
    /// Its peer listener (`--peer-listen`), if it takes peer links.
    #[serde(default)]
    pub peer: Option<String>,
    /// Its data-plane shards (peer links go shard to shard).
    #[serde(default)]
    pub shards: u16,
}

/// One tunnel as registered by the host that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRec {
    /// When the tunnel started, seconds since the epoch.
    pub since: u64,
    /// The site's address as the host sees it.
    pub peer: String,
}

/// A host's picture of the fleet: kept from one prefix read plus a watch,
/// never asked of etcd on a request path.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Live hosts by id.
    pub hosts: BTreeMap<String, HostRec>,
    /// Site → the hosts holding one of its tunnels.
    pub tunnels: BTreeMap<String, BTreeSet<String>>,
    /// True while etcd cannot be reached (the view may be out of date).
    pub stale: bool,
    /// Tunnels this host has registered.
    pub registered: usize,
    /// Times the host (re)registered after etcd was away.
    pub registrations: u64,
}

impl View {
    /// Prometheus lines for control's metrics.
    pub fn render(&self) -> String {
        format!(
            "# HELP revtun_fleet_view_stale 1 while etcd cannot be reached and the fleet view may be out of date.\n\
             # TYPE revtun_fleet_view_stale gauge\nrevtun_fleet_view_stale {}\n\
             # HELP revtun_fleet_hosts Live hosts in the fleet view.\n# TYPE revtun_fleet_hosts gauge\nrevtun_fleet_hosts {}\n\
             # HELP revtun_fleet_sites Sites with a tunnel on some host, in the fleet view.\n# TYPE revtun_fleet_sites gauge\nrevtun_fleet_sites {}\n\
             # HELP revtun_fleet_tunnels_registered Tunnels this host has registered.\n# TYPE revtun_fleet_tunnels_registered gauge\nrevtun_fleet_tunnels_registered {}\n\
             # HELP revtun_fleet_registrations_total Times this host registered with etcd (1 + returns after an outage).\n# TYPE revtun_fleet_registrations_total counter\nrevtun_fleet_registrations_total {}\n",
            u8::from(self.stale),
            self.hosts.len(),
            self.tunnels.len(),
            self.registered,
            self.registrations
        )
    }

    fn apply(&mut self, prefix: &str, key: &str, value: Option<&[u8]>) {
        let Some(rest) = key.strip_prefix(prefix) else {
            return;
        };
        if let Some(id) = rest.strip_prefix("hosts/") {
            match value.and_then(|v| serde_json::from_slice::<HostRec>(v).ok()) {
                Some(h) => {
                    self.hosts.insert(id.to_string(), h);
                }
                None => {
                    self.hosts.remove(id);
                }
            }
        } else if let Some((site, host)) = rest
            .strip_prefix("tunnels/")
            .and_then(|r| r.split_once('/'))
        {
            if value.is_some() {
                self.tunnels
                    .entry(site.to_string())
                    .or_default()
                    .insert(host.to_string());
            } else if let Some(set) = self.tunnels.get_mut(site) {
                set.remove(host);
                if set.is_empty() {
                    self.tunnels.remove(site);
                }
            }
        }
    }
}

/// The site store in etcd.
pub struct FleetStore {
    rt: tokio::runtime::Runtime,
    client: Client,
    cfg: FleetConfig,
    /// Certificates last seen valid (serial → site, not_after): a site
    /// whose tunnel blips while etcd is away can come back.
    certs_ok: Mutex<HashMap<Vec<u8>, (String, i64)>>,
    view: Arc<Mutex<View>>,
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStore")
            .field("endpoints", &self.cfg.endpoints)
            .field("prefix", &self.cfg.prefix)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn digest_hex(secret: &[u8]) -> String {
    hex::encode(&crate::pki::sha256(secret))
}

fn opts() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(OP_TIMEOUT)
        .with_timeout(OP_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), OP_TIMEOUT)
}

impl FleetStore {
    /// Connects (lazily: an unreachable etcd fails the first call, not
    /// this one).
    pub fn open(cfg: FleetConfig) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("revtun-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Fleet(format!("cannot start the etcd client: {e}")))?;
        let client = rt
            .block_on(async {
                tokio::time::timeout(OP_TIMEOUT, Client::connect(&cfg.endpoints, Some(opts())))
                    .await
            })
            .map_err(|_| unreachable_err(&cfg, "connect timed out"))?
            .map_err(|e| unreachable_err(&cfg, &e.to_string()))?;
        Ok(FleetStore {
            rt,
            client,
            cfg,
            certs_ok: Mutex::new(HashMap::new()),
            view: Arc::default(),
        })
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.cfg.prefix)
    }

    fn call<T, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let fut = f(self.client.clone());
        self.rt
            .block_on(async { tokio::time::timeout(OP_TIMEOUT, fut).await })
            .map_err(|_| unreachable_err(&self.cfg, "no answer within 3 s"))?
            .map_err(|e| unreachable_err(&self.cfg, &e.to_string()))
    }

    /// One key's JSON value and its `mod_revision` (0: absent).
    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        rest: &str,
    ) -> Result<(Option<T>, i64), StoreError> {
        let key = self.key(rest);
        let resp = self.call(|mut c| async move { c.get(key, None).await })?;
        match resp.kvs().first() {
            None => Ok((None, 0)),
            Some(kv) => Ok((
                Some(serde_json::from_slice(kv.value()).map_err(|e| {
                    StoreError::Fleet(format!("{}{rest}: damaged record: {e}", self.cfg.prefix))
                })?),
                kv.mod_revision(),
            )),
        }
    }

    fn get_str(&self, rest: &str) -> Result<Option<String>, StoreError> {
        let key = self.key(rest);
        let resp = self.call(|mut c| async move { c.get(key, None).await })?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Every (key without prefix, value, mod_revision) under `rest`.
    fn range(&self, rest: &str) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError> {
        let key = self.key(rest);
        let resp = self
            .call(|mut c| async move { c.get(key, Some(GetOptions::new().with_prefix())).await })?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key())
                        .trim_start_matches(self.cfg.prefix.as_str())
                        .to_string(),
                    kv.value().to_vec(),
                    kv.mod_revision(),
                )
            })
            .collect())
    }

    fn txn(&self, txn: Txn) -> Result<bool, StoreError> {
        Ok(self
            .call(|mut c| async move { c.txn(txn).await })?
            .succeeded())
    }

    fn json<T: Serialize>(v: &T) -> Vec<u8> {
        // Plain data structs: serialization cannot fail.
        serde_json::to_vec(v).unwrap_or_default()
    }

    /// Records this host's CA in the fleet, or checks it is the fleet's.
    /// `Ok(false)` when etcd cannot be reached now.
    pub fn join(&self, ca_fingerprint: &str) -> Result<bool, StoreError> {
        let key = self.key("fleet/ca");
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, ca_fingerprint, None)]);
        match self.txn(txn) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(StoreError::Fleet(e)) => {
                warn!(error = %e, "cannot check the fleet's CA now");
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let theirs = self.get_str("fleet/ca")?.unwrap_or_default();
        if theirs != ca_fingerprint {
            return Err(StoreError::Refused(format!(
                "this host's CA ({ca_fingerprint}) is not the fleet's ({theirs}); prepare the state directory \
                 with 'revtun-keytool fleet import' from a bundle made by 'revtun-keytool fleet export' on a fleet host"
            )));
        }
        Ok(true)
    }

    fn site(&self, site: &str) -> Result<(Option<SiteRec>, i64), StoreError> {
        self.get_json(&format!("sites/{site}"))
    }

    /// Writes `rec` if `sites/NAME` still has `rev`, with `extra` ops.
    fn cas_site(
        &self,
        site: &str,
        rev: i64,
        rec: &SiteRec,
        extra_when: Vec<Compare>,
        extra: Vec<TxnOp>,
    ) -> Result<bool, StoreError> {
        let key = self.key(&format!("sites/{site}"));
        let mut when = vec![Compare::mod_revision(key.clone(), CompareOp::Equal, rev)];
        when.extend(extra_when);
        let mut ops = vec![TxnOp::put(key, Self::json(rec), None)];
        ops.extend(extra);
        self.txn(Txn::new().when(when).and_then(ops))
    }

    /// See [`crate::store::Store::add_token`].
    pub fn add_token(
        &self,
        site: &str,
        token: &Token,
        now: UnixMillis,
        expires: UnixMillis,
        reissue: bool,
    ) -> Result<(), StoreError> {
        let id = hex::encode(&token.id);
        for _ in 0..CAS_RETRIES {
            let (rec, rev) = self.site(site)?;
            let mut rec = match rec {
                Some(r) => {
                    let live = r
                        .certs
                        .iter()
                        .any(|c| c.revoked_at.is_none() && c.not_after > now);
                    rules::new_token(site, r.revoked_at.is_some(), live, reissue)?;
                    r
                }
                None => SiteRec {
                    created_at: now,
                    ..SiteRec::default()
                },
            };
            for t in rec.tokens.iter_mut() {
                if t.used_at.is_none() && t.invalidated_at.is_none() {
                    t.invalidated_at = Some(now);
                }
            }
            rec.tokens.push(TokenRec {
                id: id.clone(),
                secret_sha256: digest_hex(&token.secret),
                created_at: now,
                expires_at: expires,
                used_at: None,
                invalidated_at: None,
            });
            let mut extra = Vec::new();
            while rec.tokens.len() > MAX_TOKENS_KEPT {
                let old = rec.tokens.remove(0);
                extra.push(TxnOp::delete(self.key(&format!("tokens/{}", old.id)), None));
            }
            let tok_key = self.key(&format!("tokens/{id}"));
            extra.push(TxnOp::put(tok_key.clone(), site, None));
            let when = vec![Compare::version(tok_key, CompareOp::Equal, 0)];
            if self.cas_site(site, rev, &rec, when, extra)? {
                return Ok(());
            }
        }
        Err(contended(site))
    }

    fn judge_token(
        rec: &SiteRec,
        bound_site: &str,
        site: &str,
        token: &Token,
        now: UnixMillis,
    ) -> Result<usize, Refusal> {
        let id = hex::encode(&token.id);
        let Some(i) = rec.tokens.iter().position(|t| t.id == id) else {
            return Err(Refusal::UnknownToken);
        };
        let t = &rec.tokens[i];
        let secret_ok: bool = digest_hex(&token.secret)
            .as_bytes()
            .ct_eq(t.secret_sha256.as_bytes())
            .into();
        rules::token(rules::TokenFacts {
            secret_ok,
            same_site: bound_site == site,
            site_revoked: rec.revoked_at.is_some(),
            spent: t.used_at.is_some(),
            invalidated: t.invalidated_at.is_some(),
            expired: now >= t.expires_at,
        })
        .map(|()| i)
    }

    /// The site a token id belongs to and that site's record.
    fn token_site(&self, token: &Token) -> Result<Option<(String, SiteRec, i64)>, StoreError> {
        let Some(bound) = self.get_str(&format!("tokens/{}", hex::encode(&token.id)))? else {
            return Ok(None);
        };
        let (rec, rev) = self.site(&bound)?;
        Ok(rec.map(|r| (bound, r, rev)))
    }

    /// See [`crate::store::Store::check_token`].
    pub fn check_token(
        &self,
        site: &str,
        token: &Token,
        now: UnixMillis,
    ) -> Result<Result<(), Refusal>, StoreError> {
        Ok(match self.token_site(token)? {
            None => Err(Refusal::UnknownToken),
            Some((bound, rec, _)) => Self::judge_token(&rec, &bound, site, token, now).map(|_| ()),
        })
    }

    /// See [`crate::store::Store::spend_token`]: one compare-and-set on
    /// the site record; a loser re-reads and sees the token spent.
    pub fn spend_token(
        &self,
        site: &str,
        token: &Token,
        cert: NewCert<'_>,
        now: UnixMillis,
    ) -> Result<Result<(), Refusal>, StoreError> {
        for _ in 0..CAS_RETRIES {
            let Some((bound, mut rec, rev)) = self.token_site(token)? else {
                return Ok(Err(Refusal::UnknownToken));
            };
            let i = match Self::judge_token(&rec, &bound, site, token, now) {
                Ok(i) => i,
                Err(r) => return Ok(Err(r)),
            };
            rec.tokens[i].used_at = Some(now);
            let serial = hex::encode(cert.serial);
            rec.certs.push(CertRec {
                serial: serial.clone(),
                token_id: rec.tokens[i].id.clone(),
                issued_at: now,
                not_after: cert.not_after,
                revoked_at: None,
            });
            let extra = vec![TxnOp::put(self.key(&format!("certs/{serial}")), site, None)];
            if self.cas_site(site, rev, &rec, Vec::new(), extra)? {
                return Ok(Ok(()));
            }
        }
        Err(contended(site))
    }

    /// See [`crate::store::Store::check_cert`]. While etcd cannot be
    /// reached, a certificate this host saw valid before (and that no
    /// revocation poll has since named) is admitted from memory: a site
    /// whose tunnel blips during an outage comes back.
    pub fn check_cert(
        &self,
        site: &str,
        serial: &[u8],
        now: UnixMillis,
    ) -> Result<Result<(), Refusal>, StoreError> {
        match self.check_cert_live(site, serial, now) {
            Err(StoreError::Fleet(e)) => {
                let cached = lock(&self.certs_ok).get(serial).cloned();
                match cached {
                    Some((s, not_after)) if s == site && now < not_after => {
                        warn!(%site, error = %e, "fleet store unreachable: hello admitted from this host's last view");
                        Ok(Ok(()))
                    }
                    _ => Err(StoreError::Fleet(e)),
                }
            }
            other => other,
        }
    }

    fn check_cert_live(
        &self,
        site: &str,
        serial: &[u8],
        now: UnixMillis,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let hex_serial = hex::encode(serial);
        let Some(cert_site) = self.get_str(&format!("certs/{hex_serial}"))? else {
            return Ok(Err(Refusal::UnknownCert));
        };
        let (rec, _) = self.site(&cert_site)?;
        let Some(c) = rec
            .as_ref()
            .and_then(|r| r.certs.iter().find(|c| c.serial == hex_serial))
        else {
            return Ok(Err(Refusal::UnknownCert));
        };
        let verdict = rules::cert(rules::CertFacts {
            same_site: cert_site == site,
            site_revoked: rec.as_ref().is_some_and(|r| r.revoked_at.is_some()),
            cert_revoked: c.revoked_at.is_some(),
            expired: now >= c.not_after,
        });
        let mut cache = lock(&self.certs_ok);
        if verdict.is_ok() {
            if cache.len() >= MAX_CACHED_CERTS {
                cache.clear();
            }
            cache.insert(serial.to_vec(), (site.to_string(), c.not_after));
            drop(cache);
            let key = self.key(&format!("seen/{site}"));
            // Not exclusive, and not worth failing a hello over.
            if let Err(e) =
                self.call(|mut c| async move { c.put(key, now.to_string(), None).await })
            {
                warn!(%site, error = %e, "cannot record the visit");
            }
        } else {
            cache.remove(serial);
        }
        Ok(verdict)
    }

    /// See [`crate::store::Store::revoke_site`].
    pub fn revoke_site(&self, site: &str, now: UnixMillis) -> Result<(), StoreError> {
        for _ in 0..CAS_RETRIES {
            let (rec, rev) = self.site(site)?;
            let Some(mut rec) = rec.filter(|r| r.revoked_at.is_none()) else {
                return Err(rules::not_revocable(site, rev != 0));
            };
            rec.revoked_at = Some(now);
            for c in rec.certs.iter_mut().filter(|c| c.revoked_at.is_none()) {
                c.revoked_at = Some(now);
            }
            for t in rec
                .tokens
                .iter_mut()
                .filter(|t| t.used_at.is_none() && t.invalidated_at.is_none())
            {
                t.invalidated_at = Some(now);
            }
            let extra = vec![TxnOp::put(
                self.key(&format!("revoked/{site}")),
                now.to_string(),
                None,
            )];
            if self.cas_site(site, rev, &rec, Vec::new(), extra)? {
                return Ok(());
            }
        }
        Err(contended(site))
    }

    /// See [`crate::store::Store::is_revoked`].
    pub fn is_revoked(&self, site: &str) -> Result<bool, StoreError> {
        let (rec, _) = self.site(site)?;
        Ok(!matches!(rec, Some(r) if r.revoked_at.is_none()))
    }

    /// The store's revision now (the start of a revocation cursor).
    pub fn revision(&self) -> Result<i64, StoreError> {
        let key = self.key("fleet/ca");
        let resp = self.call(|mut c| async move { c.get(key, None).await })?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Sites revoked after revision `cursor`, and the new cursor. Revision
    /// order, not clocks: hosts' clocks may disagree.
    pub fn revocations_after(&self, cursor: i64) -> Result<(Vec<String>, i64), StoreError> {
        let key = self.key("revoked/");
        let resp = self.call(|mut c| async move {
            c.get(
                key,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_min_mod_revision(cursor + 1),
                ),
            )
            .await
        })?;
        let next = resp.header().map_or(cursor, |h| h.revision());
        let sites: Vec<String> = resp
            .kvs()
            .iter()
            .map(|kv| {
                String::from_utf8_lossy(kv.key())
                    .trim_start_matches(&format!("{}revoked/", self.cfg.prefix))
                    .to_string()
            })
            .collect();
        if !sites.is_empty() {
            lock(&self.certs_ok).retain(|_, (s, _)| !sites.contains(s));
        }
        Ok((sites, next))
    }

    /// See [`crate::store::Store::list`].
    pub fn list(&self, now: UnixMillis) -> Result<Vec<SiteSummary>, StoreError> {
        let seen: HashMap<String, i64> = self
            .range("seen/")?
            .into_iter()
            .filter_map(|(k, v, _)| {
                Some((
                    k.strip_prefix("seen/")?.to_string(),
                    String::from_utf8_lossy(&v).parse().ok()?,
                ))
            })
            .collect();
        let mut out = Vec::new();
        for (k, v, _) in self.range("sites/")? {
            let name = k.trim_start_matches("sites/").to_string();
            let Ok(rec) = serde_json::from_slice::<SiteRec>(&v) else {
                warn!(site = %name, "damaged site record skipped");
                continue;
            };
            let cert = rec
                .certs
                .iter()
                .filter(|c| c.revoked_at.is_none() && c.not_after > now)
                .map(|c| c.not_after)
                .max();
            let token = rec
                .tokens
                .iter()
                .filter(|t| t.used_at.is_none() && t.invalidated_at.is_none() && t.expires_at > now)
                .map(|t| t.expires_at)
                .max();
            let state =
                rules::site_state(rec.revoked_at.is_some(), cert.is_some(), token.is_some());
            out.push(SiteSummary {
                last_seen: seen.get(&name).copied(),
                name,
                state,
                cert_not_after: cert,
                token_expires: token,
            });
        }
        Ok(out)
    }

    /// See [`crate::store::Store::put_viewer`].
    pub fn put_viewer(
        &self,
        name: &str,
        ha1: Option<[u8; 16]>,
        allow: &[String],
        update: bool,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        let rest = format!("viewers/{name}");
        for _ in 0..CAS_RETRIES {
            let (old, rev) = self.get_json::<ViewerRec>(&rest)?;
            rules::viewer_change(name, old.is_some(), update, ha1.is_some())?;
            let rec = match (old, ha1) {
                // Refused above; asked again rather than assumed.
                (None, None) => return rules::viewer_change(name, false, update, false),
                (None, Some(h)) => ViewerRec {
                    ha1: hex::encode(&h),
                    allow: allow.to_vec(),
                    created_at: now,
                    updated_at: now,
                },
                (Some(o), h) => ViewerRec {
                    ha1: h.map_or(o.ha1, |h| hex::encode(&h)),
                    allow: allow.to_vec(),
                    created_at: o.created_at,
                    updated_at: now,
                },
            };
            let key = self.key(&rest);
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::put(key, Self::json(&rec), None)]);
            if self.txn(txn)? {
                return Ok(());
            }
        }
        Err(contended(name))
    }

    /// See [`crate::store::Store::remove_viewer`].
    pub fn remove_viewer(&self, name: &str) -> Result<(), StoreError> {
        let key = self.key(&format!("viewers/{name}"));
        let resp = self.call(|mut c| async move { c.delete(key, None).await })?;
        if resp.deleted() == 0 {
            return Err(StoreError::Refused(format!("no viewer named {name:?}")));
        }
        Ok(())
    }

    /// See [`crate::store::Store::viewers`].
    pub fn viewers(&self) -> Result<Vec<ViewerRow>, StoreError> {
        Ok(self
            .range("viewers/")?
            .into_iter()
            .filter_map(|(k, v, _)| {
                let rec: ViewerRec = serde_json::from_slice(&v).ok()?;
                // A damaged password form is skipped, never read as zeros.
                Some(ViewerRow {
                    name: k.strip_prefix("viewers/")?.to_string(),
                    ha1: hex::decode_exact::<16>(&rec.ha1)?,
                    allow: rec.allow,
                    updated_at: rec.updated_at,
                })
            })
            .collect())
    }

    /// The fleet as this host sees it now.
    pub fn view(&self) -> View {
        lock(&self.view).clone()
    }

    /// Every host and tunnel registered now, read from etcd (for
    /// `revtun-keytool fleet status`).
    pub fn read_registry(&self) -> Result<View, StoreError> {
        let mut v = View::default();
        for rest in ["hosts/", "tunnels/"] {
            for (k, val, _) in self.range(rest)? {
                v.apply("", &k, Some(&val));
            }
        }
        Ok(v)
    }

    /// Starts this host's presence: a lease kept alive, `hosts/ID` and
    /// one `tunnels/SITE/ID` per tunnel the data plane reports on the
    /// status socket (compared each [`REGISTER_EVERY`]), and the watch
    /// that keeps [`FleetStore::view`]. When etcd goes away the view is
    /// marked stale and the host goes on serving its own sites; when it
    /// returns the host registers again.
    pub fn start_presence(
        &self,
        host_id: String,
        (listen, peer, shards): (String, Option<String>, u16),
        status_sock: PathBuf,
    ) {
        let p = Presence {
            client: self.client.clone(),
            prefix: self.cfg.prefix.clone(),
            host_id,
            listen,
            peer,
            shards,
            status_sock,
            view: self.view.clone(),
        };
        self.rt.spawn(p.run());
    }
}

fn unreachable_err(cfg: &FleetConfig, e: &str) -> StoreError {
    StoreError::Fleet(format!(
        "fleet store (etcd at {}) unreachable: {e}; exclusive writes (enrollment, issue, revoke, viewers) \
         are refused until it is back",
        cfg.endpoints.join(",")
    ))
}

fn contended(what: &str) -> StoreError {
    StoreError::Fleet(format!(
        "fleet store: {what:?} kept changing under this write; try again"
    ))
}

struct Presence {
    client: Client,
    prefix: String,
    host_id: String,
    listen: String,
    peer: Option<String>,
    shards: u16,
    status_sock: PathBuf,
    view: Arc<Mutex<View>>,
}

impl Presence {
    async fn run(self) {
        let mut stale_logged = false;
        loop {
            let err = self.session(&mut stale_logged).await;
            {
                let mut v = lock(&self.view);
                v.stale = true;
                v.registered = 0;
            }
            if !stale_logged {
                warn!(error = %err, "fleet store unreachable: serving this host's own sites; the fleet view is stale");
                stale_logged = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    async fn within<T>(
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(OP_TIMEOUT, f).await {
            Err(_) => Err("no answer within 3 s".into()),
            Ok(r) => r.map_err(|e| e.to_string()),
        }
    }

    /// One registration, until etcd fails; returns why.
    async fn session(&self, stale_logged: &mut bool) -> String {
        match self.session_inner(stale_logged).await {
            Ok(()) => "the watch ended".into(),
            Err(e) => e,
        }
    }

    async fn session_inner(&self, stale_logged: &mut bool) -> Result<(), String> {
        let mut c = self.client.clone();
        let lease = Self::within(c.lease_grant(LEASE_TTL_SECS, None))
            .await?
            .id();
        let (mut keeper, mut acks) = Self::within(c.lease_keep_alive(lease)).await?;
        let lease_opts = || Some(PutOptions::new().with_lease(lease));
        let me = HostRec {
            listen: self.listen.clone(),
            since: crate::clock::SystemClock::default().now_ms(),
            peer: self.peer.clone(),
            shards: self.shards,
        };
        Self::within(c.put(
            self.key(&format!("hosts/{}", self.host_id)),
            FleetStore::json(&me),
            lease_opts(),
        ))
        .await?;
        // The view: one read of each prefix, then watches from there.
        let mut view = View::default();
        let mut rev = 0;
        for rest in ["hosts/", "tunnels/"] {
            let resp =
                Self::within(c.get(self.key(rest), Some(GetOptions::new().with_prefix()))).await?;
            rev = rev.max(resp.header().map_or(0, |h| h.revision()));
            for kv in resp.kvs() {
                view.apply(
                    &self.prefix,
                    &String::from_utf8_lossy(kv.key()),
                    Some(kv.value()),
                );
            }
        }
        let watch = |rest: &str| {
            let mut c = self.client.clone();
            let key = self.key(rest);
            async move {
                c.watch(
                    key,
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(rev + 1),
                    ),
                )
                .await
            }
        };
        let (_w1, mut hosts) = Self::within(watch("hosts/")).await?;
        let (_w2, mut tunnels) = Self::within(watch("tunnels/")).await?;
        {
            let mut v = lock(&self.view);
            let registrations = v.registrations + 1;
            *v = View {
                registrations,
                ..view
            };
        }
        info!(host = %self.host_id, lease, "registered with the fleet store");
        *stale_logged = false;
        let mut registered: BTreeMap<String, TunnelRec> = BTreeMap::new();
        let mut keepalive = tokio::time::interval(KEEPALIVE_EVERY);
        let mut compare = tokio::time::interval(REGISTER_EVERY);
        loop {
            tokio::select! {
                _ = keepalive.tick() => Self::within(keeper.keep_alive()).await?,
                ack = acks.message() => match ack {
                    Ok(Some(a)) if a.ttl() > 0 => {}
                    Ok(Some(_)) => return Err("the host's lease expired".into()),
                    Ok(None) => return Err("the lease keep-alive stream ended".into()),
                    Err(e) => return Err(e.to_string()),
                },
                _ = compare.tick() => self.register(&mut c, lease, &mut registered).await?,
                m = hosts.message() => self.apply_watch(m)?,
                m = tunnels.message() => self.apply_watch(m)?,
            }
        }
    }

    fn apply_watch(
        &self,
        m: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    ) -> Result<(), String> {
        let resp = m.map_err(|e| e.to_string())?.ok_or("the watch ended")?;
        if resp.canceled() {
            return Err(format!("the watch was cancelled: {}", resp.cancel_reason()));
        }
        let mut v = lock(&self.view);
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            match ev.event_type() {
                EventType::Put => v.apply(&self.prefix, &key, Some(kv.value())),
                EventType::Delete => v.apply(&self.prefix, &key, None),
            }
        }
        Ok(())
    }

    /// Puts and deletes `tunnels/SITE/ID` so they match the tunnels the
    /// data plane reports. A data plane that does not answer (restarting)
    /// changes nothing this round.
    async fn register(
        &self,
        c: &mut Client,
        lease: i64,
        registered: &mut BTreeMap<String, TunnelRec>,
    ) -> Result<(), String> {
        let sock = self.status_sock.clone();
        let now = match tokio::task::spawn_blocking(move || held_tunnels(&sock)).await {
            Ok(Some(t)) => t,
            _ => return Ok(()),
        };
        for (site, rec) in &now {
            if registered.get(site) != Some(rec) {
                let key = self.key(&format!("tunnels/{site}/{}", self.host_id));
                Self::within(c.put(
                    key,
                    FleetStore::json(rec),
                    Some(PutOptions::new().with_lease(lease)),
                ))
                .await?;
                registered.insert(site.clone(), rec.clone());
            }
        }
        let gone: Vec<String> = registered
            .keys()
            .filter(|s| !now.contains_key(*s))
            .cloned()
            .collect();
        for site in gone {
            let key = self.key(&format!("tunnels/{site}/{}", self.host_id));
            Self::within(c.delete(key, None::<DeleteOptions>)).await?;
            registered.remove(&site);
        }
        let mut v = lock(&self.view);
        v.registered = registered.len();
        v.stale = false;
        Ok(())
    }
}

/// The tunnels the data plane holds, from the status socket.
fn held_tunnels(sock: &Path) -> Option<BTreeMap<String, TunnelRec>> {
    let text = revtun_dataplane::status::request(sock).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(
        v["sites"]
            .as_array()?
            .iter()
            .filter_map(|s| {
                Some((
                    s["site"].as_str()?.to_string(),
                    TunnelRec {
                        since: s["since"].as_u64()?,
                        peer: s["peer"].as_str()?.to_string(),
                    },
                ))
            })
            .collect(),
    )
}

/// Reports a fatal fleet misconfiguration and stops the process.
pub fn fatal(e: &StoreError) -> ! {
    error!(error = %e, "fleet store");
    eprintln!("revtun-control: {e}");
    std::process::exit(1)
}

use crate::clock::Clock;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_urls_with_a_port() {
        assert_eq!(
            parse_endpoints("http://127.0.0.1:2379,http://h:1").expect("ok"),
            vec!["http://127.0.0.1:2379", "http://h:1"]
        );
        for bad in [
            "",
            "127.0.0.1:2379",
            "http://h",
            "http://h:0",
            "https://h:1",
            "http://h:1/x",
        ] {
            assert!(parse_endpoints(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_view_follows_puts_and_deletes() {
        let mut v = View::default();
        let p = "/revtun/v1/";
        v.apply(p, "/revtun/v1/tunnels/s1/a", Some(b"{}"));
        v.apply(p, "/revtun/v1/tunnels/s1/b", Some(b"{}"));
        v.apply(
            p,
            "/revtun/v1/hosts/a",
            Some(br#"{"listen":"x","since":1}"#),
        );
        assert_eq!(v.tunnels["s1"].len(), 2);
        assert_eq!(v.hosts.len(), 1);
        v.apply(p, "/revtun/v1/tunnels/s1/a", None);
        v.apply(p, "/revtun/v1/tunnels/s1/b", None);
        v.apply(p, "/revtun/v1/hosts/a", None);
        v.apply(p, "/other/tunnels/s2/a", Some(b"{}"));
        assert!(v.tunnels.is_empty() && v.hosts.is_empty());
    }

    #[test]
    fn a_token_is_judged_like_the_sqlite_store_does() {
        let token = Token {
            id: [1; 16],
            secret: [2; 32],
        };
        let mut rec = SiteRec::default();
        rec.tokens.push(TokenRec {
            id: hex::encode(&token.id),
            secret_sha256: digest_hex(&token.secret),
            created_at: 0,
            expires_at: 100,
            used_at: None,
            invalidated_at: None,
        });
        let judge = |rec: &SiteRec, site: &str, t: &Token, now| {
            FleetStore::judge_token(rec, "s", site, t, now)
        };
        assert_eq!(judge(&rec, "s", &token, 10), Ok(0));
        assert_eq!(judge(&rec, "s", &token, 100), Err(Refusal::Expired));
        assert_eq!(judge(&rec, "x", &token, 10), Err(Refusal::WrongSite));
        let bad = Token {
            id: token.id,
            secret: [3; 32],
        };
        assert_eq!(judge(&rec, "s", &bad, 10), Err(Refusal::BadSecret));
        rec.tokens[0].used_at = Some(5);
        assert_eq!(judge(&rec, "s", &token, 10), Err(Refusal::Spent));
        rec.tokens[0].used_at = None;
        rec.revoked_at = Some(5);
        assert_eq!(judge(&rec, "s", &token, 10), Err(Refusal::SiteRevoked));
    }
}
