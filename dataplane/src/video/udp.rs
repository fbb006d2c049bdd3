//! RTP over UDP to viewers: the process's RTP and RTCP sockets (one pair,
//! `--rtp-port` / `--rtcp-port`, shared by every shard: sending on one
//! UDP socket from several threads is safe and keeps the `server_port`
//! every viewer is told the same), and the receiver reports viewers send.
//!
//! Packets go only to the address of the viewer's RTSP connection, at the
//! ports its SETUP named: never to a `destination=` (no reflection to a
//! third party). A thread reads the RTCP socket and notes, for each
//! registered viewer's RTCP address, when it last reported and how many
//! packets it lost; reports from addresses that are not viewers are
//! dropped, so the table is bounded by the UDP viewers.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Send buffer asked for each socket: bursts of many viewers' packets
/// wait there instead of failing.
pub const SEND_BUFFER: usize = 4 << 20;

/// Packets handed to one `sendmmsg` at most.
pub const BATCH: usize = 64;

/// What a viewer's receiver reports said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// When the last one arrived.
    pub seen: Option<Instant>,
    /// Cumulative packets lost it reported.
    pub lost: u32,
}

/// Multicast groups handed out from `--multicast-range`: one per camera
/// per shard, back to the pool when its last viewer leaves.
#[derive(Debug)]
pub struct Multicast {
    first: u32,
    count: u32,
    /// TTL of multicast packets.
    pub ttl: u8,
    /// Destination ports (RTP, RTCP) of every group's video.
    pub ports: (u16, u16),
    /// Destination ports (RTP, RTCP) of every group's audio: the two
    /// after the video's.
    pub audio_ports: (u16, u16),
    used: Mutex<std::collections::HashSet<u32>>,
}

impl Multicast {
    /// Groups `first`, `first + 1` ... (`count` of them), sent with `ttl`
    /// to `port` (RTP) and `port + 1` (RTCP), audio to the two after.
    pub fn new(first: std::net::Ipv4Addr, count: u32, ttl: u8, port: u16) -> Multicast {
        Multicast {
            first: u32::from(first),
            count,
            ttl,
            ports: (port, port.saturating_add(1)),
            audio_ports: (port.saturating_add(2), port.saturating_add(3)),
            used: Mutex::default(),
        }
    }

    /// A free group, if any is left.
    pub fn take(&self) -> Option<std::net::Ipv4Addr> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let g = (0..self.count)
            .map(|i| self.first + i)
            .find(|g| !used.contains(g))?;
        used.insert(g);
        Some(std::net::Ipv4Addr::from(g))
    }

    /// Gives `group` back.
    pub fn give_back(&self, group: std::net::Ipv4Addr) {
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&u32::from(group));
    }
}

/// The RTP and RTCP sockets.
#[derive(Debug)]
pub struct Udp {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// Local ports (RTP, RTCP), told to viewers as `server_port`.
    pub ports: (u16, u16),
    reports: Mutex<HashMap<SocketAddr, Report>>,
    /// Multicast, when `--multicast-range` is given.
    pub multicast: Option<Multicast>,
    /// UDP segmentation offload works here (cleared at its first refusal).
    gso: std::sync::atomic::AtomicBool,
}

/// Most datagrams one GSO send may make.
pub const GSO_SEGMENTS: usize = 64;
/// Most bytes one GSO send may carry (a UDP datagram's limit).
pub const GSO_BYTES: usize = 65_000;

/// What one send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// These many datagrams left.
    Datagrams(usize),
    /// The socket is full: nothing left.
    Full,
    /// Segmentation offload is not available: send them one by one.
    NoGso,
}

fn bind(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddr::new(ip, port))?;
    s.set_nonblocking(true)?;
    let _ = socket2::SockRef::from(&s).set_send_buffer_size(SEND_BUFFER);
    Ok(s)
}

impl Udp {
    /// Binds both sockets on `ip` and starts the RTCP reader thread;
    /// with `multicast`, multicast packets leave with its TTL (through the
    /// interface of `ip` when it is not the wildcard).
    pub fn bind(
        ip: IpAddr,
        rtp_port: u16,
        rtcp_port: u16,
        multicast: Option<Multicast>,
    ) -> std::io::Result<Arc<Udp>> {
        let rtp = bind(ip, rtp_port)?;
        let rtcp = bind(ip, rtcp_port)?;
        if let Some(m) = &multicast {
            for s in [&rtp, &rtcp] {
                s.set_multicast_ttl_v4(u32::from(m.ttl))?;
                s.set_multicast_loop_v4(true)?;
                if let IpAddr::V4(v4) = ip {
                    if !v4.is_unspecified() {
                        socket2::SockRef::from(s).set_multicast_if_v4(&v4)?;
                    }
                }
            }
        }
        let ports = (rtp.local_addr()?.port(), rtcp.local_addr()?.port());
        let udp = Arc::new(Udp {
            rtp,
            rtcp,
            ports,
            reports: Mutex::default(),
            multicast,
            gso: std::sync::atomic::AtomicBool::new(true),
        });
        let reader = udp.clone();
        std::thread::Builder::new()
            .name("revtun-rtcp".into())
            .spawn(move || reader.read_reports())?;
        Ok(udp)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Report>> {
        self.reports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts noting the reports of the viewer whose RTCP address is `rtcp`.
    pub fn register(&self, rtcp: SocketAddr) {
        self.lock().entry(rtcp).or_default();
    }

    /// Stops noting them.
    pub fn unregister(&self, rtcp: SocketAddr) {
        self.lock().remove(&rtcp);
    }

    /// What the viewer at `rtcp` reported so far.
    pub fn report(&self, rtcp: SocketAddr) -> Report {
        self.lock().get(&rtcp).copied().unwrap_or_default()
    }

    /// Sends `msgs` (each the iovecs of one datagram) to `to` from the RTP
    /// socket without waiting: how many went (0 when the socket is full).
    pub fn send_rtp(&self, msgs: &[[IoSlice<'_>; 3]], to: SocketAddr) -> std::io::Result<usize> {
        use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
        if msgs.is_empty() {
            return Ok(0);
        }
        let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(msgs.len(), None);
        let addrs: Vec<Option<SockaddrStorage>> = vec![Some(SockaddrStorage::from(to)); msgs.len()];
        match sendmmsg(
            self.rtp.as_raw_fd(),
            &mut hdrs,
            msgs,
            &addrs,
            [],
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(r) => Ok(r.count()),
            Err(nix::errno::Errno::EAGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends `segments` datagrams of `size` bytes each (the last may be
    /// shorter) to `to` in one call, the kernel cutting the buffer
    /// `iov` into them (UDP GSO, `UDP_SEGMENT`): one trip through the
    /// stack for a whole access unit instead of one per datagram.
    pub fn send_segmented(
        &self,
        iov: &[IoSlice<'_>],
        size: u16,
        segments: usize,
        to: SocketAddr,
    ) -> std::io::Result<Sent> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
        use std::sync::atomic::Ordering;
        if !self.gso.load(Ordering::Relaxed) {
            return Ok(Sent::NoGso);
        }
        let addr = SockaddrStorage::from(to);
        let cmsg = [ControlMessage::UdpGsoSegments(&size)];
        match sendmsg(
            self.rtp.as_raw_fd(),
            iov,
            &cmsg,
            MsgFlags::MSG_DONTWAIT,
            Some(&addr),
        ) {
            Ok(_) => Ok(Sent::Datagrams(segments)),
            Err(nix::errno::Errno::EAGAIN) => Ok(Sent::Full),
            Err(
                e @ (nix::errno::Errno::EIO
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::ENOPROTOOPT
                | nix::errno::Errno::EOPNOTSUPP),
            ) => {
                tracing::info!(error = %e, "UDP segmentation offload refused; sending datagrams one by one");
                self.gso.store(false, Ordering::Relaxed);
                Ok(Sent::NoGso)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends one RTCP packet to `to` (dropped if the socket is full).
    pub fn send_rtcp(&self, pkt: &[u8], to: SocketAddr) {
        let _ = self.rtcp.send_to(pkt, to);
    }

    fn read_reports(&self) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut buf = [0u8; revtun_proto::rtcp::MAX_COMPOUND];
        loop {
            let mut fds = [PollFd::new(self.rtcp.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(1000u16)).is_err() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            while let Ok((n, from)) = self.rtcp.recv_from(&mut buf) {
                let Some(c) = revtun_proto::rtcp::parse(&buf[..n]) else {
                    continue;
                };
                if let Some(r) = self.lock().get_mut(&from) {
                    r.seen = Some(Instant::now());
                    if let Some(b) = c.blocks.first() {
                        r.lost = b.cumulative_lost;
                    }
                }
            }
        }
    }
}
