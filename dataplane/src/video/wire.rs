//! The connection to one RTSP viewer: plain TCP, or TLS (RTSPS) over the
//! same kind of socket. The session task reads requests from it and the
//! writer task writes replies and media to it, each through a shared
//! `Rc<Wire>`; every borrow inside lasts one synchronous step, never
//! across an await.
//!
//! Plain TCP writes are non-blocking vectored `sendmsg` calls of this
//! viewer's `$` headers interleaved with the packets of the shared buffer
//! (no copy), falling back to glommio's `poll_write` to wait for room.
//!
//! TLS uses a sans-IO [`rustls::ServerConnection`]: plaintext goes into
//! rustls (`writer()`, one vectored write of the whole access unit, cut
//! into full-size records), ciphertext comes out with `write_tls` through
//! the same non-blocking `sendmsg`. rustls holds at most [`TLS_BUFFER`]
//! of ciphertext per viewer (`set_buffer_limit`): a viewer that stops
//! reading holds that much and no more, and its writer waits for room as
//! a plain one does, under the same stuck limit.

use glommio::net::TcpStream;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Ciphertext rustls queues per TLS viewer at most (and plaintext before
/// the handshake ends, which the host never writes).
pub const TLS_BUFFER: usize = 64 * 1024;

/// A client of the RTSPS port that has not finished its TLS handshake
/// within this is closed.
pub const TLS_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Ciphertext read from the socket at a time. rustls holds at most
/// 16 KiB of received plaintext; a read is fed to it whole only when it
/// holds none, and this much ciphertext decrypts to less than that.
const TLS_READ: usize = 8 * 1024;

/// Where a vectored write stands: part index, offset in that part.
pub type Pos = (usize, usize);

/// One viewer's connection.
pub struct Wire {
    sock: RefCell<TcpStream>,
    /// The socket's descriptor (it lives as long as `sock`).
    fd: RawFd,
    /// The TLS state of an RTSPS viewer.
    tls: Option<RefCell<ServerConnection>>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("fd", &self.fd)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Writes `data` whole (RTSP replies), waiting for room as needed.
pub async fn write_all(conn: &Wire, data: &[u8]) -> io::Result<()> {
    conn.write_from(&[data], (0, 0)).await
}

impl Wire {
    /// A plain TCP viewer.
    pub fn plain(sock: TcpStream) -> Wire {
        let fd = sock.as_raw_fd();
        Wire {
            sock: RefCell::new(sock),
            fd,
            tls: None,
        }
    }

    /// Runs the TLS handshake of an RTSPS viewer, within `deadline`.
    pub async fn accept_tls(
        sock: TcpStream,
        cfg: Arc<ServerConfig>,
        deadline: Duration,
    ) -> io::Result<Wire> {
        let mut conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(TLS_BUFFER));
        let fd = sock.as_raw_fd();
        let wire = Wire {
            sock: RefCell::new(sock),
            fd,
            tls: Some(RefCell::new(conn)),
        };
        let shake = glommio::timer::timeout(deadline, async {
            wire.handshake()
                .await
                .map_err(glommio::GlommioError::IoError)
        });
        match shake.await {
            Ok(()) => Ok(wire),
            Err(glommio::GlommioError::IoError(e)) => Err(e),
            Err(glommio::GlommioError::TimedOut(_)) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no TLS handshake within {deadline:?}"),
            )),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }

    /// Whether this is an RTSPS viewer.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The negotiated TLS version, for logs.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.as_ref()?.borrow().protocol_version()
    }

    async fn handshake(&self) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let mut buf = vec![0u8; TLS_READ];
        loop {
            self.flush_tls(tls).await?;
            if !tls.borrow().is_handshaking() {
                return Ok(());
            }
            let n = self.recv(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the TLS handshake",
                ));
            }
            self.feed(tls, &buf[..n])?;
        }
    }

    /// Reads bytes of the RTSP stream from the viewer; 0 at its end.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return self.recv(buf).await;
        };
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match tls.borrow_mut().reader().read(buf) {
                // 0: the viewer sent close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without close_notify, or a TLS error.
                Err(e) => return Err(e),
            }
            // No plaintext: read ciphertext (into the caller's buffer) and
            // give it to rustls; 0 bytes tells it the connection ended.
            let want = buf.len().min(TLS_READ);
            let n = self.recv(&mut buf[..want]).await?;
            self.feed(tls, &buf[..n])?;
        }
    }

    /// One read from the socket. The writer task shares it: borrowed
    /// only per poll.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            futures_lite::AsyncRead::poll_read(Pin::new(&mut *self.sock.borrow_mut()), cx, buf)
        })
        .await
    }

    /// Gives ciphertext read from the socket to rustls and processes it;
    /// anything rustls has to send in answer (a KeyUpdate, an alert) goes
    /// out if the socket takes it now (else with the next write).
    fn feed(&self, tls: &RefCell<ServerConnection>, mut data: &[u8]) -> io::Result<()> {
        let mut t = tls.borrow_mut();
        loop {
            let took = t.read_tls(&mut data)?;
            if let Err(e) = t.process_new_packets() {
                let _ = send_now(&mut t, self.fd);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // `took` is 0 at the end of the stream and after close_notify
            // (whatever follows it is ignored).
            if data.is_empty() || took == 0 {
                break;
            }
        }
        send_now(&mut t, self.fd)?;
        Ok(())
    }

    /// Writes what the socket takes right now, without waiting: `None`
    /// when all of `parts` is written, else where to go on from with
    /// [`Wire::write_from`]. The common case (a viewer keeping up)
    /// finishes here with no timer and no wake-up.
    pub fn write_now(&self, parts: &[&[u8]]) -> io::Result<Option<Pos>> {
        if let Some(tls) = &self.tls {
            let (pos, flushed) = tls_write_now(&mut tls.borrow_mut(), self.fd, parts, (0, 0))?;
            return Ok((!(flushed && pos.0 >= parts.len())).then_some(pos));
        }
        let mut pos = (0, 0);
        while pos.0 < parts.len() {
            match send_from(self.fd, parts, pos) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => pos = advance(parts, pos, n),
                Err(nix::errno::Errno::EAGAIN) => return Ok(Some(pos)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// Writes `parts` from `pos` on with as few system calls as the socket
    /// allows: a non-blocking `sendmsg` of all remaining parts at once,
    /// and, when the socket is full, glommio's write (which waits for
    /// room). With TLS, `pos` may be the end of `parts`, and what rustls
    /// still holds is written.
    pub async fn write_from(&self, parts: &[&[u8]], mut pos: Pos) -> io::Result<()> {
        if let Some(tls) = &self.tls {
            loop {
                let (p, flushed) = tls_write_now(&mut tls.borrow_mut(), self.fd, parts, pos)?;
                pos = p;
                if flushed && pos.0 >= parts.len() {
                    return Ok(());
                }
                // Full: wait for room while writing what rustls holds.
                self.flush_tls(tls).await?;
            }
        }
        while pos.0 < parts.len() {
            let n = match send_from(self.fd, parts, pos) {
                Ok(n) => n,
                Err(nix::errno::Errno::EAGAIN) => {
                    // Full: let glommio wait for room while writing the next part.
                    let (idx, off) = pos;
                    std::future::poll_fn(|cx| {
                        futures_lite::AsyncWrite::poll_write(
                            Pin::new(&mut *self.sock.borrow_mut()),
                            cx,
                            &parts[idx][off..],
                        )
                    })
                    .await?
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            pos = advance(parts, pos, n);
        }
        Ok(())
    }

    /// Writes all the ciphertext rustls holds, waiting for room.
    async fn flush_tls(&self, tls: &RefCell<ServerConnection>) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut sock = self.sock.borrow_mut();
            let mut t = tls.borrow_mut();
            while t.wants_write() {
                let mut out = PollSend {
                    fd: self.fd,
                    sock: &mut sock,
                    cx: &mut *cx,
                };
                match t.write_tls(&mut out) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(_) => {}
                    // glommio wakes this task when there is room.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Ends the connection so the viewer sees the end: TLS close_notify
    /// if the socket takes it now, then a shutdown of both directions.
    pub fn close(&self) {
        if let Some(tls) = &self.tls {
            if let Ok(mut t) = tls.try_borrow_mut() {
                t.send_close_notify();
                let _ = send_now(&mut t, self.fd);
            }
        }
        let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both);
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        // A session that ends without a writer (a refusal, a bad request):
        // tell a TLS viewer it is the end, not a truncation.
        if let Some(tls) = &self.tls {
            if let Ok(mut t) = tls.try_borrow_mut() {
                t.send_close_notify();
                let _ = send_now(&mut t, self.fd);
            }
        }
    }
}

/// Puts plaintext from `pos` on into rustls as far as its buffer limit
/// allows, and writes ciphertext while the socket takes it, without
/// waiting. Returns where the plaintext stands and whether rustls holds
/// no ciphertext any more.
fn tls_write_now(
    t: &mut ServerConnection,
    fd: RawFd,
    parts: &[&[u8]],
    mut pos: Pos,
) -> io::Result<(Pos, bool)> {
    loop {
        while pos.0 < parts.len() {
            if parts[pos.0].len() == pos.1 {
                pos = (pos.0 + 1, 0);
                continue;
            }
            let iov: Vec<IoSlice<'_>> = iovecs(parts, pos).collect();
            let n = t.writer().write_vectored(&iov)?;
            if n == 0 {
                if !t.wants_write() {
                    // Refused with nothing queued: it would never take it.
                    return Err(io::ErrorKind::WriteZero.into());
                }
                break; // the buffer limit: write some out first
            }
            pos = advance(parts, pos, n);
        }
        if !t.wants_write() {
            return Ok((pos, true));
        }
        match t.write_tls(&mut RawSend(fd)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((pos, false)),
            Err(e) => return Err(e),
        }
    }
}

/// Writes what rustls holds while the socket takes it, without waiting.
fn send_now(t: &mut ServerConnection, fd: RawFd) -> io::Result<()> {
    while t.wants_write() {
        match t.write_tls(&mut RawSend(fd)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The socket as rustls's output: non-blocking `sendmsg`, `WouldBlock`
/// when full.
struct RawSend(RawFd);

impl Write for RawSend {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        use nix::sys::socket::{sendmsg, MsgFlags};
        Ok(sendmsg::<()>(
            self.0,
            bufs,
            &[],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        )?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// [`RawSend`] that, when the socket is full, has glommio wake the task
/// of `cx` once there is room (glommio's write tries once more first).
struct PollSend<'a, 'b> {
    fd: RawFd,
    sock: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Write for PollSend<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match RawSend(self.fd).write_vectored(bufs) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let first: &[u8] = bufs
                    .iter()
                    .map(|b| &**b)
                    .find(|b| !b.is_empty())
                    .unwrap_or(&[]);
                match futures_lite::AsyncWrite::poll_write(
                    Pin::new(&mut *self.sock),
                    self.cx,
                    first,
                ) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            r => r,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Everything from `pos` on, up to 1024 parts.
fn iovecs<'a>(parts: &'a [&'a [u8]], (idx, off): Pos) -> impl Iterator<Item = IoSlice<'a>> {
    std::iter::once(IoSlice::new(&parts[idx][off..]))
        .chain(parts[idx + 1..].iter().take(1023).map(|p| IoSlice::new(p)))
}

/// One non-blocking `sendmsg` of everything from `pos` on (up to 1024
/// parts); the bytes written, or `EAGAIN` when the socket is full.
fn send_from(fd: RawFd, parts: &[&[u8]], pos: Pos) -> nix::Result<usize> {
    use nix::sys::socket::{sendmsg, MsgFlags};
    let iov: Vec<IoSlice<'_>> = iovecs(parts, pos).collect();
    sendmsg::<()>(
        fd,
        &iov,
        &[],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
}

/// Moves `pos` over `n` written bytes.
fn advance(parts: &[&[u8]], (mut idx, mut off): Pos, n: usize) -> Pos {
    let mut left = n;
    while left > 0 && idx < parts.len() {
        let here = parts[idx].len() - off;
        if left >= here {
            left -= here;
            idx += 1;
            off = 0;
        } else {
            off += left;
            left = 0;
        }
    }
    (idx, off)
}

/// The RTSPS server configuration (TLS 1.3 and 1.2, no client
/// certificates) from a PEM certificate chain (leaf first) and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1). Errors name the file and the
/// flag, and never quote what is in the file.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    use rustls::pki_types::pem::{Error as PemError, PemObject};
    let why = |e: PemError, what: &str| match e {
        PemError::Io(e) => format!("cannot read it: {e}"),
        PemError::NoItemsFound => format!("no PEM {what} in it"),
        _ => format!("not a valid PEM {what} file"),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("--rtsps-cert {}: {}", cert.display(), why(e, "certificate")))?;
    if chain.is_empty() {
        return Err(format!(
            "--rtsps-cert {}: no PEM certificate (BEGIN CERTIFICATE) in it",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "--rtsps-key {}: {}",
            key.display(),
            why(e, "private key (PKCS#8, PKCS#1 or SEC1)")
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("RTSPS TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            format!(
                "--rtsps-cert {} with --rtsps-key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("self-signed certificate");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).expect("write cert");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
        (cert, key, ck.cert.pem())
    }

    /// A reply and a stream of access units (4 MiB in 2,000 parts of
    /// 1-4,000 bytes, 200 parts per unit) through a socket the client
    /// leaves unread for a while, so writes wait for room; the client
    /// gets every byte in order, and over TLS a clean close_notify.
    fn carries(tls: bool) {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, _) = pair(dir.path());
        let cfg = server_config(&cert, &key).expect("config");
        let ca = {
            use rustls::pki_types::pem::PemObject;
            CertificateDer::from_pem_file(&cert).expect("cert")
        };
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let lens: Vec<usize> = (0..2000).map(|_| 1 + (next() % 4000) as usize).collect();
        let data: Vec<u8> = (0..lens.iter().sum::<usize>())
            .map(|_| next() as u8)
            .collect();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::thread::spawn(move || -> io::Result<Vec<u8>> {
            // Small buffers at both ends, so the socket fills.
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            sock.set_recv_buffer_size(8 * 1024)?;
            sock.connect(&addr.into())?;
            let sock = std::net::TcpStream::from(sock);
            sock.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut s: Box<dyn ReadWrite> = if tls {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca).map_err(io::Error::other)?;
                let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(io::Error::other)?
                .with_root_certificates(roots)
                .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(io::Error::other)?;
                let conn =
                    rustls::ClientConnection::new(Arc::new(cfg), name).map_err(io::Error::other)?;
                Box::new(rustls::StreamOwned::new(conn, sock))
            } else {
                Box::new(sock)
            };
            s.write_all(b"PLAY")?;
            std::thread::sleep(Duration::from_millis(300));
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            Ok(got)
        });
        let sent = data.clone();
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(crate::config::GLOMMIO_IO_MEMORY)
            .spawn(move || async move {
                // SAFETY: a listening socket we own, handed to glommio.
                let l = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
                let c = l.accept().await.expect("accept");
                socket2::SockRef::from(&c)
                    .set_send_buffer_size(16 * 1024)
                    .expect("send buffer");
                let wire = if tls {
                    Wire::accept_tls(c, cfg, TLS_HANDSHAKE_DEADLINE)
                        .await
                        .expect("handshake")
                } else {
                    Wire::plain(c)
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 64];
                while req.len() < 4 {
                    let n = wire.read(&mut buf).await.expect("read");
                    assert!(n > 0, "request cut short");
                    req.extend_from_slice(&buf[..n]);
                }
                assert_eq!(req, b"PLAY");
                write_all(&wire, b"RTSP/1.0 200 OK\r\n\r\n")
                    .await
                    .expect("reply");
                let mut parts: Vec<&[u8]> = Vec::new();
                let mut at = 0;
                for n in &lens {
                    parts.push(&sent[at..at + n]);
                    at += n;
                }
                for unit in parts.chunks(200) {
                    if let Some(pos) = wire.write_now(unit).expect("write now") {
                        wire.write_from(unit, pos).await.expect("write");
                    }
                }
                wire.close();
            })
            .expect("executor");
        ex.join().expect("server");
        let got = client.join().expect("client").expect("client io");
        let head = b"RTSP/1.0 200 OK\r\n\r\n";
        assert!(got.starts_with(head));
        assert!(got[head.len()..] == data[..], "bytes differ");
    }

    trait ReadWrite: Read + Write {}
    impl<T: Read + Write> ReadWrite for T {}

    #[test]
    fn plain_writes_arrive_whole_through_a_full_socket() {
        carries(false);
    }

    #[test]
    fn tls_writes_arrive_whole_through_a_full_socket() {
        carries(true);
    }

    #[test]
    fn advance_moves_over_parts() {
        let parts: &[&[u8]] = &[b"abcd", b"", b"ef", b"ghi"];
        assert_eq!(advance(parts, (0, 0), 0), (0, 0));
        assert_eq!(advance(parts, (0, 0), 3), (0, 3));
        assert_eq!(advance(parts, (0, 0), 4), (1, 0));
        assert_eq!(advance(parts, (0, 3), 2), (2, 1));
        assert_eq!(advance(parts, (0, 0), 9), (4, 0));
        assert_eq!(advance(parts, (0, 0), 100), (4, 0));
    }

    #[test]
    fn pem_errors_name_the_file_and_quote_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, cert_pem) = pair(dir.path());
        assert!(server_config(&cert, &key).is_ok());

        let missing = dir.path().join("nope.pem");
        let e = server_config(&missing, &key).expect_err("missing cert");
        assert!(e.contains("--rtsps-cert") && e.contains("nope.pem"), "{e}");
        let e = server_config(&cert, &missing).expect_err("missing key");
        assert!(e.contains("--rtsps-key") && e.contains("nope.pem"), "{e}");

        // The certificate given as the key, and the key as the certificate.
        let e = server_config(&cert, &cert).expect_err("no key");
        assert!(
            e.contains("--rtsps-key") && e.contains("private key"),
            "{e}"
        );
        let e = server_config(&key, &key).expect_err("no cert");
        assert!(e.contains("--rtsps-cert"), "{e}");

        // A truncated key: its text is not in the error.
        let key_text = std::fs::read_to_string(&key).expect("key");
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, &key_text[..key_text.len() / 2]).expect("write");
        let e = server_config(&cert, &bad).expect_err("bad key");
        assert!(e.contains("bad.pem"), "{e}");
        for line in key_text.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!e.contains(line), "key material in {e}");
        }

        // Another certificate's key.
        let other = tempfile::tempdir().expect("tempdir");
        let (_, other_key, _) = pair(other.path());
        let e = server_config(&cert, &other_key).expect_err("mismatch");
        assert!(e.contains("cert.pem") && e.contains("key.pem"), "{e}");
        assert!(!cert_pem.is_empty());
    }
}
