//! Single-threaded load for multi-stream throughput, as iperf3 does: one
//! thread drives all client streams and one thread serves all of them, so
//! going from 1 to 8 streams adds no load-generator threads competing with
//! the tunnel for this machine's two cores.

use anyhow::{bail, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

const CHUNK: usize = 1 << 20;

/// A sink on its own thread: counts each connection's bytes and answers
/// `<count>\n` at its EOF.
pub fn start_sink() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || sink_loop(listener));
    Ok(addr)
}

fn sink_loop(listener: TcpListener) {
    let mut conns: Vec<(TcpStream, u64)> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            conns
                .iter()
                .map(|(c, _)| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
        );
        if poll(&mut fds, PollTimeout::from(1000u16)).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            while let Ok((c, _)) = listener.accept() {
                let _ = c.set_nonblocking(true);
                conns.push((c, 0));
            }
        }
        let mut done = Vec::new();
        for (i, (c, count)) in conns.iter_mut().enumerate() {
            // Connections accepted in this round are polled next round.
            if !ready.get(i + 1).copied().unwrap_or(false) {
                continue;
            }
            loop {
                match c.read(&mut buf) {
                    Ok(0) => {
                        let _ = c.set_nonblocking(false);
                        let _ = writeln!(c, "{count}");
                        done.push(i);
                        break;
                    }
                    Ok(n) => *count += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        done.push(i);
                        break;
                    }
                }
            }
        }
        for i in done.into_iter().rev() {
            conns.swap_remove(i);
        }
    }
}

/// Pushes zeros on `n` connections to `addr` from one thread for `dur`;
/// returns each stream's Gbit/s as confirmed by the sink.
pub fn push(addr: SocketAddr, n: usize, dur: Duration) -> Result<Vec<f64>> {
    let mut socks = Vec::new();
    for _ in 0..n {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        socks.push(s);
    }
    let buf = vec![0u8; CHUNK];
    let start = Instant::now();
    while start.elapsed() < dur {
        let mut fds: Vec<PollFd<'_>> = socks
            .iter()
            .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLOUT))
            .collect();
        poll(&mut fds, PollTimeout::from(100u16))?;
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLOUT)))
            .collect();
        drop(fds);
        for (s, r) in socks.iter_mut().zip(ready) {
            if r {
                match s.write(&buf) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => bail!("write: {e}"),
                }
            }
        }
    }
    let mut out = Vec::new();
    for mut s in socks {
        s.set_nonblocking(false)?;
        s.shutdown(Shutdown::Write)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let bytes: u64 = reply
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("bad sink reply {reply:?}"))?;
        out.push(bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9);
    }
    Ok(out)
}
