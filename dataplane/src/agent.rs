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
async fn reloads(
    hook: Reload,
    offered: Rc<Offered>,
    current: Rc<std::cell::RefCell<Option<Tunnel>>>,
) {
    loop {
        glommio::timer::sleep(Duration::from_millis(200)).await;
        if !hook.requested.swap(false, Ordering::SeqCst) {
            continue;
        }
        match (hook.read)() {
            Ok((services, cameras)) => {
                offered.set(services, &cameras);
                let names = offered.names();
                if let Some(t) = current.borrow().as_ref().filter(|t| !t.is_closed()) {
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

async fn agent_loop(id: Identity, cfg: AgentConfig) -> Result<(), SiteError> {
    let offered = Rc::new(Offered {
        services: Rc::default(),
        handlers: Rc::default(),
        camera_timeout: cfg.camera_timeout,
    });
    offered.set(cfg.services.clone(), &cfg.cameras);
    let current: Rc<std::cell::RefCell<Option<Tunnel>>> = Rc::default();
    if let Some(hook) = cfg.reload.clone() {
        glommio::spawn_local(reloads(hook, offered.clone(), current.clone())).detach();
    }
    let mut backoff = Backoff::new(BACKOFF_BASE, cfg.max_backoff);
    let mut down = false;
    loop {
        if cfg.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let started = Instant::now();
        match site::hello(&id) {
            Ok(session) => {
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
                tracing::info!(site = %id.site, endpoint = %session.endpoint, "tunnel up");
                println!("tunnel up via {}", session.endpoint);
                if let Some(f) = &cfg.status_file {
                    write_status(f, "up", &session.endpoint.to_string());
                }
                let _ = std::io::stdout().flush();
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
                *current.borrow_mut() = Some(t.clone());
                let reason = t.closed().await;
                *current.borrow_mut() = None;
                if let Some(f) = &cfg.status_file {
                    write_status(f, "down", &format!("tunnel closed: {reason}"));
                }
                down = true;
                tracing::warn!(site = %id.site, %reason, "tunnel closed");
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "cannot reach the host");
                // Down since the first failure, not the latest.
                if let Some(f) = cfg.status_file.as_ref().filter(|_| !down) {
                    write_status(f, "down", &format!("cannot reach the host: {e}"));
                }
                down = true;
            }
            Err(e) => return Err(e),
        }
        if cfg.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        let delay = backoff.next_delay(random_unit());
        tracing::info!(?delay, "reconnecting");
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
        };
        let text = format!("{cfg:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("admin:***@192.0.2.1"), "{text}");
    }
}
