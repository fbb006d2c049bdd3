//! Starting, supervising and feeding the data-plane process.
//!
//! Control creates one SOCK_SEQPACKET socket pair per shard, starts
//! `revtun-dataplane` with the child ends, and keeps the parent ends. A
//! hand-off is one message with the tunnel socket attached (`SCM_RIGHTS`)
//! on the socket of the shard that owns the site. If the data plane exits,
//! the supervisor starts a new one with fresh sockets; the tunnels it held
//! died with it and their sites reconnect.

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use revtun_proto::handoff::{shard_for, Handoff};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pause before restarting a data plane that exited.
const RESTART_DELAY: Duration = Duration::from_millis(100);

/// Why a hand-off failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// No data plane is running right now (starting or restarting).
    #[error("the data plane is not running")]
    NotRunning,
    /// The message could not be sent.
    #[error("sending to the data plane: {0}")]
    Send(#[from] nix::Error),
}

/// The data plane as control sees it.
#[derive(Debug)]
pub struct DataPlane {
    shards: usize,
    /// Parent ends of the shard sockets of the running data plane.
    sockets: Mutex<Option<Vec<OwnedFd>>>,
    /// Data planes started so far: state sent to one (the viewer table)
    /// must be sent again to the next.
    epoch: std::sync::atomic::AtomicU64,
}

/// How to start the data plane.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Path of `revtun-dataplane`.
    pub program: PathBuf,
    /// Shards (executors).
    pub shards: usize,
    /// Extra arguments (exposes, windows, log level).
    pub args: Vec<String>,
}

impl DataPlane {
    /// Starts the data plane and a thread that restarts it when it exits.
    pub fn start(launch: Launch) -> std::io::Result<Arc<DataPlane>> {
        let dp = Arc::new(DataPlane {
            shards: launch.shards.max(1),
            sockets: Mutex::new(None),
            epoch: std::sync::atomic::AtomicU64::new(0),
        });
        let first = dp.spawn_once(&launch)?;
        let sup = dp.clone();
        std::thread::Builder::new()
            .name("dataplane-supervisor".into())
            .spawn(move || {
                let mut child = Some(first);
                loop {
                    if let Some(mut c) = child.take() {
                        let status = c.wait();
                        *sup.lock() = None;
                        tracing::warn!(pid = c.id(), ?status, "data plane exited; restarting");
                    }
                    std::thread::sleep(RESTART_DELAY);
                    match sup.spawn_once(&launch) {
                        Ok(c) => child = Some(c),
                        Err(e) => tracing::error!(error = %e, "cannot start the data plane"),
                    }
                }
            })?;
        Ok(dp)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<OwnedFd>>> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn_once(&self, launch: &Launch) -> std::io::Result<std::process::Child> {
        let mut parents = Vec::new();
        let mut children = Vec::new();
        for _ in 0..self.shards {
            let (p, c) = socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )?;
            // The child end must survive exec; only the supervisor forks.
            fcntl(&c, FcntlArg::F_SETFD(FdFlag::empty()))?;
            parents.push(p);
            children.push(c);
        }
        let mut cmd = Command::new(&launch.program);
        for c in &children {
            cmd.arg(format!("--control-fd={}", c.as_raw_fd()));
        }
        cmd.args(&launch.args).stdin(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("starting {}: {e}", launch.program.display()),
            )
        })?;
        drop(children);
        tracing::info!(pid = child.id(), shards = self.shards, "data plane started");
        // On stdout too, whatever the log level: operators and the test
        // harness find the process by it.
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "data plane started pid={}", child.id());
            let _ = out.flush();
        }
        *self.lock() = Some(parents);
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(child)
    }

    /// How many data planes were started (changes when one restarts).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sends `msgs` in order to every shard (blocking: call from a worker
    /// thread). A full socket is retried for up to `limit` per message,
    /// holding the socket lock only per attempt, so hand-offs go on.
    pub fn broadcast(&self, msgs: &[Handoff], limit: Duration) -> Result<(), HandoffError> {
        for shard in 0..self.shards {
            for m in msgs {
                let bytes = m.encode();
                let deadline = std::time::Instant::now() + limit;
                loop {
                    let sent = {
                        let guard = self.lock();
                        let sockets = guard.as_ref().ok_or(HandoffError::NotRunning)?;
                        sendmsg::<()>(
                            sockets[shard].as_raw_fd(),
                            &[IoSlice::new(&bytes)],
                            &[],
                            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                            None,
                        )
                    };
                    match sent {
                        Ok(_) => break,
                        Err(nix::errno::Errno::EAGAIN) if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(())
    }

    fn send(&self, site: &str, msg: &Handoff, fd: Option<RawFd>) -> Result<usize, HandoffError> {
        self.send_on(shard_for(site, self.shards), msg, fd)
    }

    /// Shards of the data plane.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Sends `msg` (and `fd`, if any) to shard `shard`; returns it.
    pub fn send_on(
        &self,
        shard: usize,
        msg: &Handoff,
        fd: Option<RawFd>,
    ) -> Result<usize, HandoffError> {
        let guard = self.lock();
        let sockets = guard.as_ref().ok_or(HandoffError::NotRunning)?;
        let sock = sockets.get(shard).ok_or(HandoffError::NotRunning)?;
        let bytes = msg.encode();
        let iov = [IoSlice::new(&bytes)];
        let fds = fd.map(|f| [f]);
        let cmsgs: Vec<ControlMessage<'_>> = fds
            .as_ref()
            .map(|f| vec![ControlMessage::ScmRights(f)])
            .unwrap_or_default();
        sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(shard)
    }

    /// Hands a tunnel socket over; returns the shard that took it.
    pub fn hand_off(
        &self,
        site: &str,
        secrets: zeroize::Zeroizing<[u8; 64]>,
        conn_id: u64,
        fd: RawFd,
    ) -> Result<usize, HandoffError> {
        self.send(
            site,
            &Handoff::Tunnel {
                site: site.to_string(),
                secrets,
                conn_id,
            },
            Some(fd),
        )
    }

    /// Tells the shard owning `site` to close its tunnel.
    pub fn revoke(&self, site: &str) -> Result<usize, HandoffError> {
        self.send(
            site,
            &Handoff::Revoke {
                site: site.to_string(),
            },
            None,
        )
    }
}
