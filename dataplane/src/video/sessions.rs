//! Caps on RTSP connections, shared by every shard of the process (the
//! kernel spreads one client's connections over the shards): in total,
//! per source (an IPv4 address, an IPv6 /64), and viewers per camera.
//! Each admitted connection holds a [`SessionGuard`] that gives its slot
//! back when dropped, however the session ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Descriptors kept out of reach of RTSP clients: tunnels, hand-offs,
/// service ports and their clients need them.
pub const FD_RESERVE: u64 = 256;

/// Limits of the RTSP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// RTSP connections at once, all sources.
    pub total: usize,
    /// RTSP connections at once from one source (0: no limit).
    pub per_source: usize,
    /// Viewers playing one camera at once (0: no limit).
    pub per_camera: usize,
}

impl SessionLimits {
    /// These limits under a descriptor limit of `nofile`: RTSP clients may
    /// use at most half of what is left after [`FD_RESERVE`], so a flood of
    /// them never takes the descriptors a site's hand-off needs.
    pub fn within(self, nofile: u64) -> SessionLimits {
        let room = (nofile.saturating_sub(FD_RESERVE) / 2).max(16) as usize;
        SessionLimits {
            total: self.total.min(room),
            ..self
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    by_camera: HashMap<(String, String), usize>,
}

/// The shared counters.
#[derive(Debug)]
pub struct Sessions {
    limits: Mutex<SessionLimits>,
    counts: Mutex<Counts>,
}

/// The source key of `ip`: the address for IPv4, its /64 for IPv6.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = a.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Why a connection or a viewer was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The total cap.
    Total,
    /// The source's cap.
    Source,
    /// The camera's viewer cap.
    Camera,
}

impl Sessions {
    /// Counters under `limits`.
    pub fn new(limits: SessionLimits) -> Arc<Sessions> {
        Arc::new(Sessions {
            limits: Mutex::new(limits),
            counts: Mutex::default(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> SessionLimits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the limits (a reload): connections and viewers already
    /// admitted stay; new ones are checked against these.
    pub fn set_limits(&self, limits: SessionLimits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip`, or says which cap is full.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<SessionGuard, Full> {
        let key = source(ip);
        let limits = self.limits();
        let mut c = self.lock();
        if c.total >= limits.total {
            return Err(Full::Total);
        }
        let n = c.by_source.get(&key).copied().unwrap_or(0);
        if limits.per_source > 0 && n >= limits.per_source {
            return Err(Full::Source);
        }
        c.total += 1;
        c.by_source.insert(key, n + 1);
        Ok(SessionGuard {
            sessions: self.clone(),
            key,
            camera: None,
        })
    }
}

/// One admitted connection (and, once playing, one viewer of a camera).
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    key: IpAddr,
    camera: Option<(String, String)>,
}

impl SessionGuard {
    /// Counts this connection as a viewer of `site`/`cam`, if the camera
    /// has room.
    pub fn play(&mut self, site: &str, cam: &str) -> Result<(), Full> {
        if self.camera.is_some() {
            return Ok(());
        }
        let cap = self.sessions.limits().per_camera;
        let key = (site.to_string(), cam.to_string());
        let mut c = self.sessions.lock();
        let n = c.by_camera.get(&key).copied().unwrap_or(0);
        if cap > 0 && n >= cap {
            return Err(Full::Camera);
        }
        c.by_camera.insert(key.clone(), n + 1);
        drop(c);
        self.camera = Some(key);
        Ok(())
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut c = self.sessions.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.key);
            }
        }
        if let Some(key) = self.camera.take() {
            if let Some(n) = c.by_camera.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    c.by_camera.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_slots_come_back() {
        let s = Sessions::new(SessionLimits {
            total: 3,
            per_source: 2,
            per_camera: 1,
        });
        let a: IpAddr = "10.0.0.1".parse().expect("test");
        let b: IpAddr = "10.0.0.2".parse().expect("test");
        let g1 = s.admit(a).expect("test");
        let mut g2 = s.admit(a).expect("test");
        assert_eq!(s.admit(a).expect_err("test"), Full::Source);
        let mut g3 = s.admit(b).expect("test");
        assert_eq!(s.admit(b).expect_err("test"), Full::Total);
        g2.play("s", "c").expect("test");
        assert_eq!(g3.play("s", "c").expect_err("test"), Full::Camera);
        g3.play("s", "d").expect("test");
        drop(g2);
        g3 = s.admit(a).expect("test");
        g3.play("s", "c").expect("test");
        drop((g1, g3));
        let c = s.lock();
        assert_eq!(c.total, 0);
        assert!(c.by_source.is_empty() && c.by_camera.is_empty());
    }

    #[test]
    fn one_ipv6_slash_64_is_one_source() {
        let s = Sessions::new(SessionLimits {
            total: 100,
            per_source: 2,
            per_camera: 0,
        });
        let _a = s.admit("2001:db8::1".parse().expect("test")).expect("test");
        let _b = s
            .admit("2001:db8::ffff:2".parse().expect("test"))
            .expect("test");
        assert_eq!(
            s.admit("2001:db8::3:4:5".parse().expect("test"))
                .expect_err("test"),
            Full::Source
        );
        let _c = s
            .admit("2001:db8:0:1::1".parse().expect("test"))
            .expect("test");
    }

    #[test]
    fn the_descriptor_limit_leaves_a_reserve() {
        let l = SessionLimits {
            total: 10_000,
            per_source: 64,
            per_camera: 0,
        };
        assert_eq!(l.within(1024).total, 384);
        assert_eq!(l.within(1 << 20).total, 10_000);
    }
}
