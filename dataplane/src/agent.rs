//! The site agent (the Reverse Tunnel role): authenticate, run the tunnel,
//! reconnect with full-jitter backoff across the endpoints, stop cleanly.

use crate::backoff::{random_unit, Backoff};
use crate::site::{self, Identity, SiteError};
use crate::tunnel::{Role, Spec, Tunnel};
use revtun_proto::record::{Side, EXPORTER_LABEL, EXPORTER_LEN, RATCHET_INTERVAL};
use revtun_proto::tunnel::Config;
use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection that stayed up this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// First backoff step.
pub const BACKOFF_BASE: Duration = Duration::from_millis(200);

/// How the agent runs. `Debug` shows camera URLs with their passwords
/// redacted.
#[derive(Clone)]
pub struct AgentConfig {
    /// Service name -> local target.
    pub services: HashMap<String, String>,
    /// Tunnel windows and timers.
    pub tunnel: Config,
    /// Longest wait between reconnects.
    pub max_backoff: Duration,
    /// Set to stop (SIGTERM).
    pub stop: Arc<AtomicBool>,
    /// Pin the agent's executor to this CPU (perf lab placement).
    pub cpu: Option<usize>,
    /// Busy-poll this long before the idle executor sleeps.
    pub spin: Duration,
    /// Camera name -> RTSP URL (site redirector).
    pub cameras: HashMap<String, String>,
    /// Longest wait for a camera's answer to a request, or for its next
    /// bytes after PLAY.
    pub camera_timeout: Duration,
    /// Longest wait for a service target to accept a connection.
    pub connect_timeout: Duration,
    /// SIGHUP: how to read the services and cameras again.
    pub reload: Option<Reload>,
    /// Where the tunnel's state is written for `revtun-site status`
    /// (`STATE_DIR/status`).
    pub status_file: Option<std::path::PathBuf>,
    /// Tunnels to hold, each to a different host (`--tunnels`).
    pub tunnels: usize,
}

/// Writes `STATE_DIR/status`: `up|down|stopped`, since (Unix seconds),
/// this process, and the endpoint or the reason (replaced atomically).
pub fn write_status(file: &std::path::Path, state: &str, detail: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = format!(
        "state={state}\nsince={since}\npid={}\ndetail={}\n",
        std::process::id(),
        detail.replace('\n', " ")
    );
    let tmp = file.with_extension("tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|_| std::fs::rename(&tmp, file));
    if let Err(e) = written {
        tracing::debug!(file = %file.display(), error = %e, "cannot write the status file");
    }
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload").finish_non_exhaustive()
    }
}

/// Services (name -> target) and cameras (name -> URL) read on reload.
pub type Offer = (HashMap<String, String>, HashMap<String, String>);

/// How the agent reloads its services and cameras (SIGHUP).
#[derive(Clone)]
pub struct Reload {
    /// Set by the signal handler.
    pub requested: Arc<AtomicBool>,
    /// Reads the settings again; an error changes nothing.
    pub read: Arc<dyn Fn() -> Result<Offer, String> + Send + Sync>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cameras: HashMap<&String, String> = self
            .cameras
            .iter()
            .map(|(k, v)| (k, revtun_proto::rtsp_auth::redact(v)))
            .collect();
        f.debug_struct("AgentConfig")
            .field("services", &self.services)
            .field("tunnel", &self.tunnel)
            .field("max_backoff", &self.max_backoff)
            .field("cpu", &self.cpu)
            .field("spin", &self.spin)
            .field("cameras", &cameras)
            .field("camera_timeout", &self.camera_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// Runs the agent until stopped or definitively refused.
pub fn run(id: Identity, cfg: AgentConfig) -> Result<(), SiteError> {
    let placement = match cfg.cpu {
        Some(c) => glommio::Placement::Fixed(c),
        None => glommio::Placement::Unbound,
    };
    let ex = glommio::LocalExecutorBuilder::new(placement)
        .name("revtun-site")
        // One thread per tunnel slot for the blocking TLS handshakes, so
        // a host that stalls one hello delays neither the other slots'
        // hellos nor any live tunnel.
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(cfg.tunnels.max(1)))
        .spin_before_park(cfg.spin)
        // glommio's registered buffers serve its file I/O, which the agent
        // does not use; its 10 MiB default was most of an idle agent's RSS.
        .io_memory(crate::config::GLOMMIO_IO_MEMORY)
        .make()
        .map_err(|e| SiteError::Local(format!("cannot start the executor: {e}")))?;
    ex.run(agent_loop(id, cfg))
}

/// What the agent offers the host: services, camera handlers, and the
/// names it announces; replaced on reload.
struct Offered {
    services: Rc<std::cell::RefCell<HashMap<String, String>>>,
    handlers: Rc<std::cell::RefCell<HashMap<String, crate::tunnel::PipeHandler>>>,
    camera_timeout: Duration,
}

impl Offered {
    fn set(&self, services: HashMap<String, String>, cameras: &HashMap<String, String>) {
        *self.handlers.borrow_mut() = crate::video::site::handlers(cameras, self.camera_timeout);
        *self.services.borrow_mut() = services;
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .services
            .borrow()
            .keys()
            .cloned()
            .chain(self.handlers.borrow().keys().cloned())
            .collect();
        v.sort();
        v
    }
}

/// Applies reloads within a fifth of a second of SIGHUP: the new
/// services and cameras take the next streams, and the live tunnel
/// announces them; streams already open go on.
async fn reloads(hook: Reload, offered: Rc<Offered>, live: Rc<std::cell::RefCell<Vec<Tunnel>>>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(200)).await;
        if !hook.requested.swap(false, Ordering::SeqCst) {
            continue;
        }
        match (hook.read)() {
            Ok((services, cameras)) => {
                offered.set(services, &cameras);
                let names = offered.names();
                for t in live.borrow().iter().filter(|t| !t.is_closed()) {
                    t.advertise(&names);
                }
                tracing::info!(services = ?names, "settings reloaded (services and cameras; other settings apply at a restart)");
                println!("reloaded: {}", names.join(" "));
            }
            Err(e) => {
                tracing::warn!(error = %e, "reload refused; the running settings stay");
                println!("reload refused: {}", e.lines().next().unwrap_or(""));
            }
        }
        let _ = std::io::stdout().flush();
    }
}

/// What the agent's tunnel slots share.
struct Slots {
    /// Fingerprint of the host each slot holds (or is saying hello to):
    /// claimed under the lock before the hello, so two slots never hold
    /// tunnels to one host.
    claims: Arc<std::sync::Mutex<Vec<Option<[u8; 32]>>>>,
    /// Endpoint of each slot's live tunnel (for the status file).
    up: std::cell::RefCell<Vec<Option<String>>>,
    /// Live tunnels (reloads announce to each).
    live: Rc<std::cell::RefCell<Vec<Tunnel>>>,
    /// Slot 0 made its first attempt (the others start after it).
    first_done: std::cell::Cell<bool>,
    /// A definitive refusal seen by any slot: the agent stops with it.
    fatal: std::cell::RefCell<Option<SiteError>>,
    /// Down since the first failure with no tunnel up.
    down: std::cell::Cell<bool>,
}

impl Slots {
    fn write_status(&self, cfg: &AgentConfig, why_down: Option<&str>) {
        let Some(f) = &cfg.status_file else { return };
        let up: Vec<String> = self.up.borrow().iter().flatten().cloned().collect();
        if !up.is_empty() {
            write_status(f, "up", &up.join(" "));
        } else if let Some(why) = why_down {
            write_status(f, "down", why);
        }
    }
}

/// Longest wait of a slot that finds every reachable host already held by
/// another slot (a single host, or fewer hosts than --tunnels).
const HELD_WAIT_MAX: Duration = Duration::from_secs(300);

async fn agent_loop(id: Identity, cfg: AgentConfig) -> Result<(), SiteError> {
    let offered = Rc::new(Offered {
        services: Rc::default(),
        handlers: Rc::default(),
        camera_timeout: cfg.camera_timeout,
    });
    offered.set(cfg.services.clone(), &cfg.cameras);
    let n = cfg.tunnels.max(1);
    let slots = Rc::new(Slots {
        claims: Arc::new(std::sync::Mutex::new(vec![None; n])),
        up: std::cell::RefCell::new(vec![None; n]),
        live: Rc::default(),
        first_done: std::cell::Cell::new(false),
        fatal: std::cell::RefCell::new(None),
        down: std::cell::Cell::new(false),
    });
    if let Some(hook) = cfg.reload.clone() {
        glommio::spawn_local(reloads(hook, offered.clone(), slots.live.clone())).detach();
    }
    let id = Rc::new(id);
    let tasks: Vec<_> = (1..n)
        .map(|i| {
            glommio::spawn_local(slot(
                i,
                id.clone(),
                cfg.clone(),
                offered.clone(),
                slots.clone(),
            ))
        })
        .collect();
    slot(0, id, cfg.clone(), offered, slots.clone()).await;
    for t in tasks {
        t.await;
    }
    let fatal = slots.fatal.borrow_mut().take();
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// SHA-256 of the server's certificate: which host a connection reached.
fn host_fingerprint(conn: &rustls::ClientConnection) -> Option<[u8; 32]> {
    let cert = conn.peer_certificates()?.first()?;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    d.as_ref().try_into().ok()
}

/// One tunnel slot: holds a tunnel to a host no other slot holds,
/// reconnecting with its own backoff. Slot `i` tries the endpoints from
/// the `i`-th on.
async fn slot(
    i: usize,
    id: Rc<Identity>,
    cfg: AgentConfig,
    offered: Rc<Offered>,
    slots: Rc<Slots>,
) {
    if i > 0 {
        while !slots.first_done.get() && !cfg.stop.load(Ordering::Relaxed) {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut backoff = Backoff::new(BACKOFF_BASE, cfg.max_backoff);
    let mut held_wait = cfg.max_backoff.max(Duration::from_secs(30));
    loop {
        if cfg.stop.load(Ordering::Relaxed) {
            return;
        }
        let started = Instant::now();
        let attempt = {
            let (id, claims) = ((*id).clone(), slots.claims.clone());
            glommio::executor()
                .spawn_blocking(move || {
                    let gate = |conn: &rustls::ClientConnection, endpoint: &str| {
                        let fp = host_fingerprint(conn);
                        let mut c = claims.lock().unwrap_or_else(|p| p.into_inner());
                        if fp.is_some() && c.iter().enumerate().any(|(j, h)| j != i && *h == fp) {
                            return Err(SiteError::HostAlreadyHeld(endpoint.to_string()));
                        }
                        c[i] = fp;
                        Ok(())
                    };
                    let r = site::hello_from(&id, i, Some(&gate));
                    if r.is_err() {
                        claims.lock().unwrap_or_else(|p| p.into_inner())[i] = None;
                    }
                    r
                })
                .await
        };
        slots.first_done.set(true);
        let mut wait = None;
        match attempt {
            Ok(session) => {
                held_wait = cfg.max_backoff.max(Duration::from_secs(30));
                if let Err(e) = hold(i, session, &id, &cfg, &offered, &slots).await {
                    *slots.fatal.borrow_mut() = Some(e);
                    cfg.stop.store(true, Ordering::SeqCst);
                    return;
                }
            }
            Err(SiteError::HostAlreadyHeld(ep)) => {
                tracing::info!(slot = i, endpoint = %ep, wait = ?held_wait, "every reachable host already holds one of this site's tunnels; trying again later");
                wait = Some(held_wait);
                held_wait = (held_wait * 2).min(HELD_WAIT_MAX);
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(slot = i, error = %e, "cannot reach the host");
                // Down since the first failure, not the latest.
                if !slots.down.get() {
                    slots.write_status(&cfg, Some(&format!("cannot reach the host: {e}")));
                }
                slots.down.set(true);
            }
            Err(e) => {
                *slots.fatal.borrow_mut() = Some(e);
                cfg.stop.store(true, Ordering::SeqCst);
                return;
            }
        }
        if cfg.stop.load(Ordering::Relaxed) {
            return;
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        let delay = wait.unwrap_or_else(|| backoff.next_delay(random_unit()));
        tracing::info!(slot = i, ?delay, "reconnecting");
        let until = Instant::now() + delay;
        while Instant::now() < until && !cfg.stop.load(Ordering::Relaxed) {
            glommio::timer::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            )
            .await;
        }
    }
}

/// Runs one authenticated connection as a tunnel until it closes.
async fn hold(
    i: usize,
    session: site::Session,
    id: &Identity,
    cfg: &AgentConfig,
    offered: &Rc<Offered>,
    slots: &Rc<Slots>,
) -> Result<(), SiteError> {
    let secrets = session
        .tls
        .export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| SiteError::Local(format!("key export: {e}")))?;
    session
        .stream
        .set_nonblocking(true)
        .map_err(|e| SiteError::Local(e.to_string()))?;
    let sock = glommio::net::TcpStream::from(socket2::Socket::from(session.stream));
    tracing::info!(site = %id.site, slot = i, endpoint = %session.endpoint, "tunnel up");
    println!("tunnel up via {}", session.endpoint);
    let _ = std::io::stdout().flush();
    slots.up.borrow_mut()[i] = Some(session.endpoint.clone());
    slots.down.set(false);
    slots.write_status(cfg, None);
    let spec = Spec {
        side: Side::Site,
        cfg: cfg.tunnel.clone(),
        ratchet_interval: RATCHET_INTERVAL,
        name: id.site.clone(),
    };
    let t = Tunnel::start(
        sock,
        &secrets,
        spec,
        Role::Site {
            services: offered.services.clone(),
            handlers: offered.handlers.clone(),
            connect_timeout: cfg.connect_timeout,
        },
        &offered.names(),
        Some(cfg.stop.clone()),
    );
    slots.live.borrow_mut().push(t.clone());
    let reason = t.closed().await;
    slots.live.borrow_mut().retain(|x| !x.is_closed());
    slots.up.borrow_mut()[i] = None;
    slots.claims.lock().unwrap_or_else(|p| p.into_inner())[i] = None;
    let why = format!("tunnel closed: {reason}");
    if slots.up.borrow().iter().all(Option::is_none) {
        slots.down.set(true);
    }
    slots.write_status(cfg, Some(&why));
    tracing::warn!(site = %id.site, slot = i, %reason, "tunnel closed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_camera_passwords() {
        let cfg = AgentConfig {
            services: HashMap::new(),
            tunnel: Config::default(),
            max_backoff: Duration::from_secs(1),
            stop: Arc::default(),
            cpu: None,
            spin: Duration::ZERO,
            cameras: HashMap::from([(
                "door".to_string(),
                "rtsp://admin:hunter2@192.0.2.1:554/live".to_string(),
            )]),
            camera_timeout: crate::video::site::CAMERA_TIMEOUT,
            connect_timeout: crate::tunnel::CONNECT_TIMEOUT,
            reload: None,
            status_file: None,
            tunnels: 1,
        };
        let text = format!("{cfg:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("admin:***@192.0.2.1"), "{text}");
    }
}
