//! A site service for tests: a loopback TCP server that obeys a one-line
//! command from each client.
//!
//! - `SINK\n`: reads until EOF, then answers `<bytes> <sha256 hex>\n`
//!   (so the client can half-close and still read the reply).
//! - `SOURCE <bytes> <seed>\n`: sends `<bytes>` of [`fill`] data, closes.
//! - `ECHO\n`: echoes everything until EOF.
//! - `DISCARD\n`: reads until EOF, answers `<bytes>\n` (perf: no hashing).
//! - `ZEROS <bytes>\n`: sends `<bytes>` zero bytes, closes (perf: no generation).
//! - `STALL <ms>\n`: reads nothing for `<ms>`, then dies abortively (a
//!   reset, as a crashed target's kernel sends), whatever was sent to it.
//! - `SOURCE_DIE <bytes>\n`: sends `<bytes>`, then dies abortively (a reset).
//! - `DRIP <writes> <bytes> <gap_us>\n`: sends `<writes>` separate writes
//!   of `<bytes>` each (small frames through the tunnel), `<gap_us>`
//!   microseconds apart, closes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Deterministic, incompressible test bytes: xorshift64 from `seed`.
pub fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// SHA-256 over a stream of chunks.
#[allow(missing_debug_implementations)]
#[derive(Default)]
pub struct Hasher(Option<aws_lc_rs::digest::Context>);

impl Hasher {
    /// Adds bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.0
            .get_or_insert_with(|| aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
            .update(b);
    }
    /// The hex digest.
    pub fn hex(self) -> String {
        let ctx = self
            .0
            .unwrap_or_else(|| aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256));
        revtun_proto::hex::encode(ctx.finish().as_ref())
    }
}

/// Digest of `len` bytes of [`fill`] data from `seed`.
pub fn expected(len: u64, seed: u64) -> String {
    let mut h = Hasher::default();
    let mut state = seed.max(1);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill(&mut buf[..n], &mut state);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    h.hex()
}

/// Starts the service on a kernel-chosen loopback port.
pub fn start() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = serve(c);
            });
        }
    });
    Ok(addr)
}

fn serve(c: TcpStream) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(1 << 20, c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut w = c;
    let parts: Vec<&str> = line.split_whitespace().collect();
    match parts.as_slice() {
        ["SINK"] => {
            let mut h = Hasher::default();
            let mut total = 0u64;
            loop {
                let buf = r.fill_buf()?;
                if buf.is_empty() {
                    break;
                }
                h.update(buf);
                total += buf.len() as u64;
                let n = buf.len();
                r.consume(n);
            }
            writeln!(w, "{total} {}", h.hex())?;
        }
        ["SOURCE", n, seed] => {
            let mut left: u64 = n.parse().unwrap_or(0);
            let mut state: u64 = seed.parse::<u64>().unwrap_or(1).max(1);
            let mut buf = vec![0u8; 1 << 20];
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                fill(&mut buf[..k], &mut state);
                w.write_all(&buf[..k])?;
                left -= k as u64;
            }
        }
        ["DISCARD"] => {
            let mut total = r.buffer().len() as u64;
            let mut inner = r.into_inner();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = inner.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            writeln!(w, "{total}")?;
        }
        ["ZEROS", n] => {
            let mut left: u64 = n.parse().unwrap_or(0);
            let buf = vec![0u8; 1 << 20];
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                w.write_all(&buf[..k])?;
                left -= k as u64;
            }
        }
        ["SOURCE_DIE", n] => {
            let buf = vec![0x33u8; n.parse().unwrap_or(0)];
            w.write_all(&buf)?;
            std::thread::sleep(std::time::Duration::from_millis(100));
            let _ = socket2::SockRef::from(&w).set_linger(Some(std::time::Duration::ZERO));
        }
        ["STALL", ms] => {
            std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(1000)));
            let _ = socket2::SockRef::from(&w).set_linger(Some(std::time::Duration::ZERO));
        }
        ["DRIP", writes, size, gap] => {
            let buf = vec![0x5au8; size.parse().unwrap_or(100)];
            let gap = std::time::Duration::from_micros(gap.parse().unwrap_or(1000));
            w.set_nodelay(true)?;
            for _ in 0..writes.parse::<u64>().unwrap_or(0) {
                w.write_all(&buf)?;
                std::thread::sleep(gap);
            }
        }
        ["ECHO"] => {
            let mut buf = vec![0u8; 64 * 1024];
            // Whatever the reader buffered after the command line first.
            let pending = r.buffer().to_vec();
            w.write_all(&pending)?;
            let mut inner = r.into_inner();
            loop {
                let n = inner.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n])?;
            }
        }
        _ => writeln!(w, "ERR unknown command")?,
    }
    Ok(())
}
