//! A shard's side of the fleet's host-to-host forwarding: the peer links
//! control dialed to other hosts (this end opens streams), the ones other
//! hosts dialed here (their streams are relayed to this shard's sites,
//! [`crate::tunnel::relay`]), and the route table control sends: which
//! other hosts hold a tunnel of each site. Nothing here asks etcd: the
//! table is control's in-memory view of the registry.

use crate::tunnel::{Role, Spec, Tunnel};
use revtun_proto::handoff::{shard_for, Handoff};
use revtun_proto::record::{Side, RATCHET_INTERVAL};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::rc::Rc;

/// Most routes one table may hold (a table announcing more is cut there).
pub const MAX_ROUTES: usize = 1 << 20;

/// A peer link may hold this many times the streams of a site tunnel.
pub const PEER_STREAMS_FACTOR: u32 = 16;

/// Other hosts of a site: (host id, its shard count).
type Hosts = Vec<(String, u16)>;

thread_local! {
    /// This shard's peer links and routes (one executor per thread).
    static SHARD: Rc<Peers> = Rc::default();
}

/// The current shard's peer links and routes.
pub fn shard() -> Rc<Peers> {
    SHARD.with(Rc::clone)
}

/// One shard's peer links and routes.
#[derive(Debug, Default)]
pub struct Peers {
    /// Links this host dialed, by (host, the remote shard that took it).
    links: RefCell<HashMap<(String, u16), Tunnel>>,
    /// Links other hosts dialed to this shard.
    accepted: RefCell<Vec<(String, Tunnel)>>,
    /// Site -> the other hosts holding one of its tunnels.
    routes: RefCell<HashMap<String, Hosts>>,
    /// A table being received: (routes announced, routes so far).
    building: RefCell<Option<(usize, HashMap<String, Hosts>)>>,
    /// Spreads a site's streams over the hosts that hold it.
    turn: Cell<usize>,
    /// This shard's video redirector, when the host has an RTSP
    /// listener: a camera a peer asks for is served from its feed here.
    redirector: RefCell<Option<Rc<crate::video::host::Redirector>>>,
}

/// A peer link as the status socket reports it (control redials the
/// links it dialed that are missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// The host at the other end.
    pub host: String,
    /// The remote shard, for a link this host dialed; `None` for one the
    /// other host dialed.
    pub remote_shard: Option<u16>,
    /// Streams open on it now.
    pub streams: u64,
    /// Bytes read and written on its socket.
    pub bytes: (u64, u64),
}

impl Peers {
    /// Serve cameras asked for over peer links from `r`'s feeds.
    pub fn set_redirector(&self, r: Rc<crate::video::host::Redirector>) {
        *self.redirector.borrow_mut() = Some(r);
    }

    /// The redirector that serves cameras to peers, if any.
    pub fn redirector(&self) -> Option<Rc<crate::video::host::Redirector>> {
        self.redirector.borrow().clone()
    }

    /// The link that reaches `site` on another host, if one holds it:
    /// the service `S` of the site is then `SITE/S` on that link.
    pub fn route(&self, site: &str) -> Option<Tunnel> {
        let routes = self.routes.borrow();
        let hosts = routes.get(site)?;
        let links = self.links.borrow();
        let n = hosts.len();
        let start = self.turn.get();
        self.turn.set(start.wrapping_add(1));
        (0..n).find_map(|i| {
            let (host, shards) = &hosts[(start + i) % n];
            let remote = shard_for(site, usize::from(*shards)) as u16;
            links
                .get(&(host.clone(), remote))
                .filter(|t| !t.is_closed())
                .cloned()
        })
    }

    /// Takes a peer hand-off (and its socket from `fd`) or a route
    /// message; gives back any other message. `registry` is this shard's site tunnels (for relaying).
    pub fn on_handoff(
        &self,
        k: usize,
        msg: Handoff,
        fd: &mut Option<OwnedFd>,
        registry: &crate::tunnel::Registry,
        cfg: &revtun_proto::tunnel::Config,
    ) -> Option<Handoff> {
        match msg {
            Handoff::PeerLink {
                host,
                remote_shard,
                secrets,
            } => {
                let sock = fd.take().and_then(socket)?;
                let t = start(sock, &secrets, Side::Host, Role::Peer, &host, cfg);
                tracing::info!(shard = k, %host, remote_shard, "peer link up (dialed)");
                if let Some(old) = self
                    .links
                    .borrow_mut()
                    .insert((host.clone(), remote_shard), t)
                {
                    old.close(revtun_proto::tunnel::CloseReason::Replaced);
                }
            }
            Handoff::PeerAccepted { host, secrets } => {
                let sock = fd.take().and_then(socket)?;
                let role = Role::Relay {
                    registry: registry.clone(),
                };
                let t = start(sock, &secrets, Side::Site, role, &host, cfg);
                tracing::info!(shard = k, %host, "peer link up (accepted)");
                let mut acc = self.accepted.borrow_mut();
                acc.retain(|(_, t)| !t.is_closed());
                acc.push((host, t));
            }
            Handoff::RoutesBegin { count } => {
                let count = (count as usize).min(MAX_ROUTES);
                *self.building.borrow_mut() =
                    Some((count, HashMap::with_capacity(count.min(4096))));
            }
            Handoff::Route { site, hosts } => {
                if let Some((count, table)) = self.building.borrow_mut().as_mut() {
                    if table.len() < *count {
                        table.insert(site, hosts);
                    }
                }
            }
            Handoff::RoutesEnd => {
                if let Some((_, table)) = self.building.borrow_mut().take() {
                    tracing::debug!(shard = k, routes = table.len(), "route table replaced");
                    *self.routes.borrow_mut() = table;
                }
            }
            other => return Some(other),
        }
        None
    }

    /// The live links, for the status socket.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.links.borrow_mut().retain(|_, t| !t.is_closed());
        self.accepted.borrow_mut().retain(|(_, t)| !t.is_closed());
        let one = |host: &str, remote_shard, t: &Tunnel| {
            let st = t.stats();
            LinkStatus {
                host: host.to_string(),
                remote_shard,
                streams: t.stream_count() as u64,
                bytes: (st.bytes_in, st.bytes_out),
            }
        };
        let mut out: Vec<LinkStatus> = self
            .links
            .borrow()
            .iter()
            .map(|((h, r), t)| one(h, Some(*r), t))
            .collect();
        out.extend(self.accepted.borrow().iter().map(|(h, t)| one(h, None, t)));
        out
    }
}

/// The handed-over descriptor as a glommio socket (`None`, logged, if unusable).
fn socket(fd: OwnedFd) -> Option<glommio::net::TcpStream> {
    let std = std::net::TcpStream::from(fd);
    if let Err(e) = std.set_nonblocking(true) {
        tracing::warn!(error = %e, "handed-off peer socket unusable");
        return None;
    }
    Some(glommio::net::TcpStream::from(socket2::Socket::from(std)))
}

fn start(
    sock: glommio::net::TcpStream,
    secrets: &[u8; revtun_proto::record::EXPORTER_LEN],
    side: Side,
    role: Role,
    host: &str,
    cfg: &revtun_proto::tunnel::Config,
) -> Tunnel {
    // A link carries the streams of many sites, each already bounded by
    // its site's tunnel on the far host, between two hosts of one fleet.
    let mut cfg = cfg.clone();
    cfg.max_streams = cfg.max_streams.saturating_mul(PEER_STREAMS_FACTOR);
    cfg.max_churn_per_sec = 0;
    cfg.max_opens_per_sec = 0;
    let spec = Spec {
        side,
        cfg,
        ratchet_interval: RATCHET_INTERVAL,
        name: format!("peer:{host}"),
    };
    Tunnel::start(sock, secrets, spec, role, &[], None)
}
