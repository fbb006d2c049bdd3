//! Peer links between the hosts of a fleet (docs/fleet.md, "Peer links").
//!
//! Each host has a host certificate signed by the fleet CA at start (in
//! memory only; common name the host id, DNS name
//! [`revtun_proto::PEER_SERVER_NAME`], server and client authentication),
//! so site and listener certificates can never pass for a host. Control
//! does every TLS handshake here, as it does for sites, and hands the
//! socket with the exported data-channel secrets to the data plane:
//!
//! - the **dialer** keeps one link from each local shard `k` to each
//!   shard `j` of every other host that a site can hash to on both
//!   (`k ≡ j mod gcd(shards here, shards there)`), redialing a missing
//!   one with backoff; the data plane opens streams named `SITE/SERVICE`
//!   on it;
//! - the **listener** (`--peer-listen`) takes links from other hosts and
//!   hands each to the shard its hello names; there each stream is
//!   relayed to that site's tunnel;
//! - the **route pusher** sends every shard, when it changes, the table
//!   of which other hosts hold a tunnel of each site, from the in-memory
//!   fleet view (nothing on a request path asks etcd).
//!
//! The exchange after TLS is one message each way: the dialer's hello
//! `'P' 1 | shard u16 | id len u8 | id`, the listener's reply
//! `'R' 1 | shards u16`; a refusal closes the connection. TLS records are
//! read whole, so nothing after the reply is swallowed by rustls.

use crate::dataplane::DataPlane;
use crate::fleet::View;
use crate::state::HostState;
use revtun_proto::handoff::{Handoff, MAX_ROUTE_HOSTS};
use revtun_proto::record::{EXPORTER_LABEL, EXPORTER_LEN};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Total time for one peer handshake (TCP connect, TLS, hello, reply).
pub const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Peer handshakes in progress at once on the listener; more are closed.
pub const MAX_PENDING_PEERS: usize = 32;
/// Of those, from one source address.
pub const MAX_PENDING_PEERS_PER_ADDR: usize = 4;
/// How often the dialer and the route pusher look at the fleet view.
pub const PEER_TICK: Duration = Duration::from_millis(500);
/// Longest wait before redialing a link that failed.
pub const MAX_REDIAL: Duration = Duration::from_secs(30);
/// Lifetime of a host certificate; a new one is made every day.
pub const HOST_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const HOST_CERT_RENEW: Duration = Duration::from_secs(24 * 3600);
/// Largest TLS record body accepted.
const MAX_RECORD_LEN: usize = 16 * 1024 + 256;

/// The TLS configurations of the peer links, from this host's certificate.
struct Tls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    made: Instant,
}

impl Tls {
    fn new(state: &HostState, host_id: &str) -> anyhow::Result<Tls> {
        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock::default());
        let (cert, key) = state.ca.issue_host(host_id, now, HOST_CERT_TTL)?;
        let provider = crate::tls::provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(state.ca.cert_der.clone()))?;
        let roots = Arc::new(roots);
        let chain = vec![CertificateDer::from(cert)];
        let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key())?;
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.max_early_data_size = 0;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key())?;
        client.resumption = rustls::client::Resumption::disabled();
        client.enable_early_data = false;
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
            made: Instant::now(),
        })
    }
}

/// What the peer threads share.
struct Ctx {
    host_id: String,
    state: Arc<HostState>,
    dp: Arc<DataPlane>,
    tls: RwLock<Arc<Tls>>,
    pending: AtomicUsize,
    pending_by_addr: Mutex<HashMap<IpAddr, usize>>,
}

impl Ctx {
    fn tls(&self) -> Arc<Tls> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn view(&self) -> View {
        self.state
            .store
            .fleet()
            .map(|f| f.view())
            .unwrap_or_default()
    }
}

/// Binds the peer listener (at start, so a bad address fails there).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Starts the peer threads of host `host_id`: the listener on `listener`
/// (if this host takes links), the dialer and the route pusher.
/// `status_sock` is the data plane's status socket (the links it holds).
pub fn start(
    host_id: String,
    state: Arc<HostState>,
    dp: Arc<DataPlane>,
    listener: Option<TcpListener>,
    status_sock: std::path::PathBuf,
) -> anyhow::Result<()> {
    let tls = Tls::new(&state, &host_id)?;
    let ctx = Arc::new(Ctx {
        host_id,
        state,
        dp,
        tls: RwLock::new(Arc::new(tls)),
        pending: AtomicUsize::new(0),
        pending_by_addr: Mutex::new(HashMap::new()),
    });
    if let Some(l) = listener {
        let c = ctx.clone();
        std::thread::Builder::new()
            .name("peer-listen".into())
            .spawn(move || accept_loop(l, c))?;
    }
    let c = ctx.clone();
    std::thread::Builder::new()
        .name("peer-dial".into())
        .spawn(move || dial_loop(c, status_sock))?;
    std::thread::Builder::new()
        .name("peer-routes".into())
        .spawn(move || route_loop(ctx))?;
    Ok(())
}

// --- the exchange ---------------------------------------------------------

fn flush<D>(sock: &mut TcpStream, conn: &mut ConnectionCommon<D>) -> Result<(), String> {
    while conn.wants_write() {
        conn.write_tls(sock).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Reads exactly one TLS record, within `deadline`, and processes it.
fn read_record<D>(
    sock: &mut TcpStream,
    conn: &mut ConnectionCommon<D>,
    deadline: Instant,
) -> Result<(), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("handshake deadline passed".into());
    }
    sock.set_read_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 5];
    sock.read_exact(&mut head).map_err(|e| e.to_string())?;
    let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
    if len > MAX_RECORD_LEN {
        return Err("oversized TLS record".into());
    }
    let mut rec = vec![0u8; 5 + len];
    rec[..5].copy_from_slice(&head);
    sock.read_exact(&mut rec[5..]).map_err(|e| e.to_string())?;
    let mut slice = &rec[..];
    while !slice.is_empty() {
        conn.read_tls(&mut slice).map_err(|e| e.to_string())?;
    }
    conn.process_new_packets().map_err(|e| e.to_string())?;
    Ok(())
}

fn handshake<D>(
    sock: &mut TcpStream,
    conn: &mut ConnectionCommon<D>,
    deadline: Instant,
) -> Result<(), String> {
    while conn.is_handshaking() {
        flush(sock, conn)?;
        if conn.is_handshaking() {
            read_record(sock, conn, deadline)?;
        }
    }
    flush(sock, conn)
}

/// Reads plaintext until `done` says how long the message is.
fn read_message<D>(
    sock: &mut TcpStream,
    conn: &mut ConnectionCommon<D>,
    deadline: Instant,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Result<Vec<u8>, String> {
    let mut acc = Vec::new();
    loop {
        let mut chunk = [0u8; 256];
        loop {
            match conn.reader().read(&mut chunk) {
                Ok(0) => return Err("closed before the message".into()),
                Ok(n) => acc.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        if let Some(n) = done(&acc) {
            if acc.len() != n {
                return Err("bytes after the message".into());
            }
            return Ok(acc);
        }
        if acc.len() > 5 + revtun_proto::MAX_HOST_ID_LEN {
            return Err("oversized message".into());
        }
        read_record(sock, conn, deadline)?;
    }
}

fn hello_len(b: &[u8]) -> Option<usize> {
    (b.len() >= 5).then(|| 5 + usize::from(b[4]))
}

fn exported<D>(conn: &ConnectionCommon<D>) -> Result<zeroize::Zeroizing<[u8; 64]>, String> {
    conn.export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| e.to_string())
}

// --- the listener ---------------------------------------------------------

fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    for conn in listener.incoming() {
        let sock = match conn {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "peer accept failed");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let Ok(from) = sock.peer_addr() else { continue };
        if !admit(&ctx, from.ip()) {
            debug!(%from, "peer handshake refused: too many in progress");
            continue;
        }
        let c = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("peer-accept".into())
            .spawn(move || {
                match accept_one(sock, &c) {
                    Ok((host, shard)) => info!(%host, shard, %from, "peer link accepted"),
                    Err(e) => info!(%from, error = %e, "peer link refused"),
                }
                release(&c, from.ip());
            });
        if spawned.is_err() {
            release(&ctx, from.ip());
        }
    }
}

fn admit(ctx: &Ctx, ip: IpAddr) -> bool {
    let mut by = ctx
        .pending_by_addr
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let n = by.entry(ip).or_default();
    if *n >= MAX_PENDING_PEERS_PER_ADDR || ctx.pending.load(Ordering::SeqCst) >= MAX_PENDING_PEERS {
        return false;
    }
    *n += 1;
    ctx.pending.fetch_add(1, Ordering::SeqCst);
    true
}

fn release(ctx: &Ctx, ip: IpAddr) {
    let mut by = ctx
        .pending_by_addr
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(n) = by.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            by.remove(&ip);
        }
    }
    ctx.pending.fetch_sub(1, Ordering::SeqCst);
}

/// One link offered by another host; returns (its id, the shard it took).
fn accept_one(mut sock: TcpStream, ctx: &Ctx) -> Result<(String, usize), String> {
    let deadline = Instant::now() + PEER_HANDSHAKE_TIMEOUT;
    sock.set_write_timeout(Some(PEER_HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut conn = ServerConnection::new(ctx.tls().server.clone()).map_err(|e| e.to_string())?;
    handshake(&mut sock, &mut conn, deadline)?;
    // The chain is the fleet CA's (the verifier); only a host
    // certificate names a host.
    let id = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::pki::host_cert_id(c))
        .ok_or("not a host certificate")?;
    let hello = read_message(&mut sock, &mut conn, deadline, hello_len)?;
    if hello[0] != b'P' || hello[1] != 1 {
        return Err("not a peer hello".into());
    }
    let shard = usize::from(u16::from_be_bytes([hello[2], hello[3]]));
    let claimed = std::str::from_utf8(&hello[5..]).map_err(|_| "bad host id")?;
    if claimed != id {
        return Err(format!(
            "the hello names host {claimed:?}, its certificate {id:?}"
        ));
    }
    if id == ctx.host_id {
        return Err("a link from this host to itself".into());
    }
    if shard >= ctx.dp.shards() {
        return Err(format!("no shard {shard} here"));
    }
    let shards = ctx.dp.shards() as u16;
    let mut reply = vec![b'R', 1];
    reply.extend_from_slice(&shards.to_be_bytes());
    conn.writer().write_all(&reply).map_err(|e| e.to_string())?;
    flush(&mut sock, &mut conn)?;
    let secrets = exported(&conn)?;
    sock.set_read_timeout(None).map_err(|e| e.to_string())?;
    sock.set_write_timeout(None).map_err(|e| e.to_string())?;
    let _ = sock.set_nodelay(true);
    ctx.dp
        .send_on(
            shard,
            &Handoff::PeerAccepted {
                host: id.clone(),
                secrets,
            },
            Some(sock.as_raw_fd()),
        )
        .map_err(|e| e.to_string())?;
    Ok((id, shard))
}

// --- the dialer -----------------------------------------------------------

/// One link to dial: (host, local shard, remote shard).
type LinkKey = (String, usize, usize);
/// Dials that ended since the last round, and how.
type Outcomes = Arc<Mutex<Vec<(LinkKey, Result<(), String>)>>>;
/// Site -> (other host, its shards).
pub type Routes = BTreeMap<String, Vec<(String, u16)>>;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The shard pairs a site can hash to on both hosts: `k ≡ j (mod g)`.
pub fn shard_pairs(here: usize, there: usize) -> Vec<(usize, usize)> {
    let g = gcd(here, there).max(1);
    (0..here)
        .flat_map(|k| {
            (0..there)
                .filter(move |j| k % g == j % g)
                .map(move |j| (k, j))
        })
        .collect()
}

/// The links the data plane holds that this host dialed, from its
/// status socket; `None` while it does not answer.
fn held_links(sock: &std::path::Path) -> Option<HashSet<LinkKey>> {
    let text = revtun_dataplane::status::request(sock).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(
        v["peers"]
            .as_array()?
            .iter()
            .filter_map(|p| {
                Some((
                    p["host"].as_str()?.to_string(),
                    p["shard"].as_u64()? as usize,
                    p["remote_shard"].as_u64()? as usize,
                ))
            })
            .collect(),
    )
}

struct Redial {
    next: Instant,
    wait: Duration,
    failing: bool,
}

fn dial_loop(ctx: Arc<Ctx>, status_sock: std::path::PathBuf) {
    let inflight: Arc<Mutex<HashSet<LinkKey>>> = Arc::default();
    let outcome: Outcomes = Arc::default();
    let mut redial: HashMap<LinkKey, Redial> = HashMap::new();
    loop {
        std::thread::sleep(PEER_TICK);
        if ctx.tls().made.elapsed() >= HOST_CERT_RENEW {
            match Tls::new(&ctx.state, &ctx.host_id) {
                Ok(t) => *ctx.tls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(t),
                Err(e) => warn!(error = %e, "cannot renew the host certificate"),
            }
        }
        let now = Instant::now();
        for (key, r) in std::mem::take(&mut *outcome.lock().unwrap_or_else(|p| p.into_inner())) {
            let e = redial.entry(key.clone()).or_insert(Redial {
                next: now,
                wait: PEER_TICK,
                failing: false,
            });
            match r {
                // Up: the status socket shows it within a second.
                Ok(()) => {
                    if e.failing {
                        info!(host = %key.0, shard = key.1, remote_shard = key.2, "peer link up again");
                    }
                    *e = Redial {
                        next: now + Duration::from_secs(3),
                        wait: PEER_TICK,
                        failing: false,
                    };
                }
                Err(err) => {
                    if !e.failing {
                        warn!(host = %key.0, shard = key.1, remote_shard = key.2, error = %err, "cannot dial the peer link; retrying with backoff");
                    }
                    e.failing = true;
                    e.next = now + e.wait;
                    e.wait = (e.wait * 2).min(MAX_REDIAL);
                }
            }
        }
        let Some(held) = held_links(&status_sock) else {
            continue;
        };
        let view = ctx.view();
        let here = ctx.dp.shards();
        let mut wanted = HashSet::new();
        for (host, rec) in &view.hosts {
            let (Some(addr), true) = (&rec.peer, rec.shards > 0 && *host != ctx.host_id) else {
                continue;
            };
            for (k, j) in shard_pairs(here, usize::from(rec.shards)) {
                let key = (host.clone(), k, j);
                wanted.insert(key.clone());
                if held.contains(&key)
                    || redial.get(&key).is_some_and(|r| r.next > now)
                    || !inflight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.clone())
                {
                    continue;
                }
                let (c, addr, inflight, outcome) =
                    (ctx.clone(), addr.clone(), inflight.clone(), outcome.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("peer-dial".into())
                        .spawn(move || {
                            let r = dial(&c, &key, &addr);
                            inflight
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&key);
                            outcome
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((key, r));
                        });
                if let Err(e) = spawned {
                    warn!(error = %e, "cannot start a peer dial");
                }
            }
        }
        redial.retain(|k, _| wanted.contains(k));
    }
}

/// Dials one link and hands it to the local shard.
fn dial(ctx: &Ctx, (host, k, j): &LinkKey, addr: &str) -> Result<(), String> {
    let deadline = Instant::now() + PEER_HANDSHAKE_TIMEOUT;
    let to: SocketAddr = addr
        .parse()
        .map_err(|_| format!("bad peer address {addr:?}"))?;
    let mut sock = TcpStream::connect_timeout(&to, PEER_HANDSHAKE_TIMEOUT)
        .map_err(|e| format!("{addr}: {e}"))?;
    let _ = sock.set_nodelay(true);
    sock.set_write_timeout(Some(PEER_HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(revtun_proto::PEER_SERVER_NAME).map_err(|e| e.to_string())?;
    let mut conn =
        ClientConnection::new(ctx.tls().client.clone(), name).map_err(|e| e.to_string())?;
    handshake(&mut sock, &mut conn, deadline)?;
    let id = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::pki::host_cert_id(c))
        .ok_or("the peer's certificate is not a host certificate")?;
    if id != *host {
        return Err(format!("{addr} is host {id:?}, not {host:?}"));
    }
    let mut hello = vec![b'P', 1];
    hello.extend_from_slice(&(*j as u16).to_be_bytes());
    hello.push(ctx.host_id.len() as u8);
    hello.extend_from_slice(ctx.host_id.as_bytes());
    conn.writer().write_all(&hello).map_err(|e| e.to_string())?;
    flush(&mut sock, &mut conn)?;
    let reply = read_message(&mut sock, &mut conn, deadline, |b| {
        (b.len() >= 4).then_some(4)
    })?;
    if reply[..2] != [b'R', 1] {
        return Err("not a peer reply".into());
    }
    let secrets = exported(&conn)?;
    sock.set_read_timeout(None).map_err(|e| e.to_string())?;
    sock.set_write_timeout(None).map_err(|e| e.to_string())?;
    ctx.dp
        .send_on(
            *k,
            &Handoff::PeerLink {
                host: host.clone(),
                remote_shard: *j as u16,
                secrets,
            },
            Some(sock.as_raw_fd()),
        )
        .map_err(|e| e.to_string())?;
    info!(%host, shard = k, remote_shard = j, "peer link dialed");
    Ok(())
}

// --- routes ---------------------------------------------------------------

/// Site -> the other hosts (that take peer links) holding its tunnel.
pub fn routes(view: &View, me: &str) -> Routes {
    view.tunnels
        .iter()
        .filter(|(site, _)| revtun_proto::validate_site_name(site).is_ok())
        .filter_map(|(site, hosts)| {
            let v: Vec<(String, u16)> = hosts
                .iter()
                .filter(|h| h.as_str() != me && revtun_proto::validate_host_id(h).is_ok())
                .filter_map(|h| {
                    let r = view.hosts.get(h)?;
                    (r.peer.is_some() && r.shards > 0).then(|| (h.clone(), r.shards))
                })
                .take(MAX_ROUTE_HOSTS)
                .collect();
            (!v.is_empty()).then(|| (site.clone(), v))
        })
        .collect()
}

fn route_loop(ctx: Arc<Ctx>) {
    let mut sent: Option<(u64, Routes)> = None;
    loop {
        std::thread::sleep(PEER_TICK);
        let table = routes(&ctx.view(), &ctx.host_id);
        let epoch = ctx.dp.epoch();
        if sent
            .as_ref()
            .is_some_and(|(e, t)| *e == epoch && *t == table)
        {
            continue;
        }
        let mut msgs = Vec::with_capacity(table.len() + 2);
        msgs.push(Handoff::RoutesBegin {
            count: table.len() as u32,
        });
        msgs.extend(table.iter().map(|(site, hosts)| Handoff::Route {
            site: site.clone(),
            hosts: hosts.clone(),
        }));
        msgs.push(Handoff::RoutesEnd);
        match ctx.dp.broadcast(&msgs, Duration::from_secs(1)) {
            Ok(()) => {
                debug!(routes = table.len(), "route table sent to the data plane");
                sent = Some((epoch, table));
            }
            Err(e) => debug!(error = %e, "route table not sent; next round"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_pairs_are_those_a_site_can_hash_to_on_both_hosts() {
        assert_eq!(shard_pairs(2, 2), vec![(0, 0), (1, 1)]);
        assert_eq!(shard_pairs(1, 3), vec![(0, 0), (0, 1), (0, 2)]);
        assert_eq!(shard_pairs(2, 4), vec![(0, 0), (0, 2), (1, 1), (1, 3)]);
        // Every site's pair of home shards is among them.
        for (a, b) in [(2, 4), (3, 2), (4, 6)] {
            let pairs = shard_pairs(a, b);
            for i in 0..500 {
                let site = format!("site-{i}");
                let p = (
                    revtun_proto::handoff::shard_for(&site, a),
                    revtun_proto::handoff::shard_for(&site, b),
                );
                assert!(pairs.contains(&p), "{a} {b} {p:?}");
            }
        }
    }
}
