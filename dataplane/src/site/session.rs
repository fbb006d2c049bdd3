//! Dialing the host and the one-message exchange inside TLS.
//!
//! TLS records are read whole (header, then exactly the body), so rustls
//! never holds bytes that follow the host's reply: after `Ready` the socket
//! is positioned exactly at the start of the data channel.

use super::identity::Identity;
use super::keyfile::load_keyfile;
use super::tls::client_config;
use super::SiteError;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use revtun_proto::enroll::{ClientMsg, ServerMsg, MAX_MESSAGE_LEN};
use revtun_proto::keyfile::Endpoint;
use revtun_proto::token::Token;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Total time for TLS plus the exchange, per endpoint.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to wait for one TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest TLS record body accepted (2^14 plus expansion allowance).
const MAX_RECORD_LEN: usize = 16 * 1024 + 256;

/// An authenticated connection to the host, right after `Ready`.
#[derive(Debug)]
pub struct Session {
    /// The endpoint that answered.
    pub endpoint: String,
    /// The TCP socket, positioned at the start of the data channel.
    pub stream: TcpStream,
    /// The TLS session (for the exporter that keys the data channel).
    pub tls: ClientConnection,
    /// Data-channel version the host announced.
    pub data_version: u8,
}

/// Connects to the first endpoint that accepts, in order.
pub fn dial(endpoints: &[Endpoint]) -> Result<(TcpStream, String), SiteError> {
    let mut failures = Vec::new();
    for ep in endpoints {
        let name = ep.to_string();
        let addrs = match (ep.host.as_str(), ep.port).to_socket_addrs() {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => {
                failures.push(format!("{name}: cannot resolve ({e})"));
                continue;
            }
        };
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, name));
                }
                Err(e) => failures.push(format!("{name} ({addr}): {e}")),
            }
        }
    }
    Err(SiteError::Unreachable(failures.join("; ")))
}

struct Exchange<'a> {
    stream: &'a mut TcpStream,
    conn: ClientConnection,
    endpoint: &'a str,
    deadline: Instant,
    /// Asked once the server is verified, before anything is sent.
    gate: Option<Gate<'a>>,
}

/// A check of the verified server before the message goes out (an agent
/// holding several tunnels skips a host it already holds one to).
pub type Gate<'a> = &'a dyn Fn(&ClientConnection, &str) -> Result<(), SiteError>;

impl Exchange<'_> {
    fn proto(&self, reason: impl ToString) -> SiteError {
        SiteError::Protocol {
            endpoint: self.endpoint.to_string(),
            reason: reason.to_string(),
        }
    }

    fn io(&self, e: std::io::Error) -> SiteError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                SiteError::Timeout(self.endpoint.to_string())
            }
            std::io::ErrorKind::UnexpectedEof => self.proto("the host closed the connection"),
            _ => self.proto(e),
        }
    }

    fn tls(&self, e: rustls::Error) -> SiteError {
        match e {
            rustls::Error::InvalidCertificate(reason) => SiteError::ServerNotTrusted {
                endpoint: self.endpoint.to_string(),
                reason: format!(
                    "its certificate is not from the host CA pinned in the keyfile ({reason:?})"
                ),
            },
            other => self.proto(format!("TLS: {other}")),
        }
    }

    fn arm(&mut self) -> Result<(), SiteError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SiteError::Timeout(self.endpoint.to_string()));
        }
        self.stream
            .set_read_timeout(Some(left))
            .map_err(|e| self.io(e))?;
        self.stream
            .set_write_timeout(Some(left))
            .map_err(|e| self.io(e))
    }

    fn flush(&mut self) -> Result<(), SiteError> {
        while self.conn.wants_write() {
            self.arm()?;
            let mut out = Vec::new();
            self.conn.write_tls(&mut out).map_err(|e| self.io(e))?;
            self.stream.write_all(&out).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Reads exactly one TLS record and processes it.
    fn read_record(&mut self) -> Result<(), SiteError> {
        self.arm()?;
        let mut rec = vec![0u8; 5];
        self.stream.read_exact(&mut rec).map_err(|e| self.io(e))?;
        let len = usize::from(u16::from_be_bytes([rec[3], rec[4]]));
        if len > MAX_RECORD_LEN {
            return Err(self.proto(format!("TLS record of {len} bytes")));
        }
        rec.resize(5 + len, 0);
        self.stream
            .read_exact(&mut rec[5..])
            .map_err(|e| self.io(e))?;
        let mut cur = &rec[..];
        while !cur.is_empty() {
            self.conn.read_tls(&mut cur).map_err(|e| self.io(e))?;
        }
        if let Err(e) = self.conn.process_new_packets() {
            let _ = self.flush(); // send our alert
            return Err(self.tls(e));
        }
        Ok(())
    }

    /// TLS handshake, one message out, one message back (raw bytes).
    fn run(mut self, msg: &ClientMsg) -> Result<(ClientConnection, Vec<u8>), SiteError> {
        while self.conn.is_handshaking() {
            self.flush()?;
            if self.conn.is_handshaking() {
                self.read_record()?;
            }
        }
        if let Some(gate) = self.gate {
            gate(&self.conn, self.endpoint)?;
        }
        // The server is verified: only now does anything secret go out.
        self.conn
            .writer()
            .write_all(&msg.encode())
            .map_err(|e| self.io(e))?;
        self.flush()?;
        let mut acc = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            loop {
                match self.conn.reader().read(&mut chunk) {
                    Ok(0) => return Err(self.proto("the host closed the session before replying")),
                    Ok(n) => acc.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(self.io(e)),
                }
            }
            if acc.len() > MAX_MESSAGE_LEN + 5 {
                return Err(self.proto("oversized reply"));
            }
            match ServerMsg::decode(&acc) {
                Ok(Some((_, used))) => {
                    acc.truncate(used);
                    self.stream.set_read_timeout(None).map_err(|e| self.io(e))?;
                    self.stream
                        .set_write_timeout(None)
                        .map_err(|e| self.io(e))?;
                    return Ok((self.conn, acc));
                }
                Ok(None) => self.read_record()?,
                Err(e) => return Err(self.proto(e)),
            }
        }
    }
}

fn exchange(
    stream: &mut TcpStream,
    endpoint: &str,
    config: Arc<ClientConfig>,
    msg: &ClientMsg,
    gate: Option<Gate<'_>>,
) -> Result<(ClientConnection, Vec<u8>), SiteError> {
    let name = ServerName::try_from(revtun_proto::CONTROL_SERVER_NAME)
        .map_err(|e| SiteError::Local(e.to_string()))?;
    let conn = ClientConnection::new(config, name).map_err(|e| SiteError::Local(e.to_string()))?;
    Exchange {
        stream,
        conn,
        endpoint,
        deadline: Instant::now() + HANDSHAKE_TIMEOUT,
        gate,
    }
    .run(msg)
}

fn decode_reply(raw: &[u8], endpoint: &str) -> Result<ServerMsg, SiteError> {
    match ServerMsg::decode(raw) {
        Ok(Some((m, _))) => Ok(m),
        _ => Err(SiteError::Protocol {
            endpoint: endpoint.to_string(),
            reason: "undecodable reply".into(),
        }),
    }
}

/// Sends an enrollment and returns the host's raw reply bytes. For tests
/// that compare replies byte for byte; sites use [`enroll`].
pub fn send_raw_enroll(
    endpoints: &[Endpoint],
    ca_der: &[u8],
    site: &str,
    token: &Token,
    csr_der: &[u8],
) -> Result<Vec<u8>, SiteError> {
    let (mut stream, endpoint) = dial(endpoints)?;
    let msg = ClientMsg::Enroll {
        site: site.to_string(),
        token: token.clone(),
        csr_der: csr_der.to_vec(),
    };
    Ok(exchange(
        &mut stream,
        &endpoint,
        client_config(ca_der, None)?,
        &msg,
        None,
    )?
    .1)
}

/// Makes a fresh P-256 key and a CSR for `site`. Returns (PKCS#8 key, CSR), DER.
pub fn new_key_and_csr(site: &str) -> Result<(Vec<u8>, Vec<u8>), SiteError> {
    let local = |e: rcgen::Error| SiteError::Local(format!("key generation: {e}"));
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(local)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, site);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(local)?;
    Ok((key.serialize_der(), csr.der().to_vec()))
}

/// Enrolls with the keyfile at `keyfile_path`: spends its token, stores the
/// new identity in `state_dir`. `now` is the wall clock (for the expiry
/// check before dialing).
pub fn enroll(
    keyfile_path: &Path,
    state_dir: &Path,
    now: time::OffsetDateTime,
) -> Result<Identity, SiteError> {
    if Identity::exists(state_dir) {
        return Err(SiteError::AlreadyEnrolled(state_dir.to_path_buf()));
    }
    let (kf, ca_der) = load_keyfile(keyfile_path)?;
    if now >= kf.expires {
        let at = kf
            .expires
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        return Err(SiteError::TokenExpired(at));
    }
    let (key_der, csr_der) = new_key_and_csr(&kf.site)?;
    let (mut stream, endpoint) = dial(&kf.endpoints)?;
    let msg = ClientMsg::Enroll {
        site: kf.site.clone(),
        token: kf.token.clone(),
        csr_der,
    };
    let (_, raw) = exchange(
        &mut stream,
        &endpoint,
        client_config(&ca_der, None)?,
        &msg,
        None,
    )?;
    let cert_der = match decode_reply(&raw, &endpoint)? {
        ServerMsg::Enrolled { cert_der } => cert_der,
        ServerMsg::Refused => return Err(SiteError::EnrollRefused),
        ServerMsg::Unavailable => return Err(SiteError::HostUnavailable(endpoint)),
        ServerMsg::Ready { .. } => {
            return Err(SiteError::Protocol {
                endpoint,
                reason: "unexpected Ready to an enrollment".into(),
            })
        }
    };
    check_issued(&cert_der, &key_der, &endpoint)?;
    let id = Identity {
        site: kf.site,
        endpoints: kf.endpoints,
        ca_der,
        cert_der,
        key_der,
    };
    id.save(state_dir)?;
    Ok(id)
}

/// Checks the issued certificate carries our public key.
fn check_issued(cert_der: &[u8], key_der: &[u8], endpoint: &str) -> Result<(), SiteError> {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let bad = |r: &str| SiteError::Protocol {
        endpoint: endpoint.to_string(),
        reason: r.to_string(),
    };
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|_| bad("issued certificate does not parse"))?;
    let key = KeyPair::try_from(key_der).map_err(|e| SiteError::Local(e.to_string()))?;
    if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
        return Err(bad("issued certificate is not for our key"));
    }
    Ok(())
}

/// Authenticates with the site certificate; returns the session after
/// `Ready`, at the start of the data channel. Endpoints are tried in
/// order, and an endpoint that accepts the TCP connection but fails the
/// handshake (a black hole, a stalled path, a broken relay: transient
/// errors) moves on to the next, so a second path is used when the first
/// only half works. A definitive refusal ends the attempt at once.
pub fn hello(id: &Identity) -> Result<Session, SiteError> {
    hello_from(id, 0, None)
}

/// Like [`hello`], trying the endpoints in order from `first` (wrapping),
/// and asking `gate` about each verified server before the hello goes out.
pub fn hello_from(
    id: &Identity,
    first: usize,
    gate: Option<Gate<'_>>,
) -> Result<Session, SiteError> {
    let mut failures = Vec::new();
    let n = id.endpoints.len();
    for k in 0..n {
        let ep = &id.endpoints[(first + k) % n];
        match hello_at(id, std::slice::from_ref(ep), gate) {
            Ok(s) => return Ok(s),
            Err(e) if e.is_transient() => failures.push(e),
            Err(e) => return Err(e),
        }
    }
    match failures.len() {
        0 => Err(SiteError::Unreachable("no endpoints".into())),
        1 => Err(failures.remove(0)),
        _ if failures
            .iter()
            .all(|f| matches!(f, SiteError::HostAlreadyHeld(_))) =>
        {
            Err(failures.remove(0))
        }
        _ => Err(SiteError::Unreachable(
            failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

fn hello_at(
    id: &Identity,
    endpoints: &[Endpoint],
    gate: Option<Gate<'_>>,
) -> Result<Session, SiteError> {
    let config = client_config(&id.ca_der, Some((&id.cert_der, &id.key_der)))?;
    let (mut stream, endpoint) = dial(endpoints)?;
    let (tls, raw) = exchange(
        &mut stream,
        &endpoint,
        config,
        &ClientMsg::Hello {
            site: id.site.clone(),
        },
        gate,
    )?;
    match decode_reply(&raw, &endpoint)? {
        ServerMsg::Ready { data_version } => Ok(Session {
            endpoint,
            stream,
            tls,
            data_version,
        }),
        ServerMsg::Refused => Err(SiteError::HelloRefused),
        ServerMsg::Unavailable => Err(SiteError::HostUnavailable(endpoint)),
        ServerMsg::Enrolled { .. } => Err(SiteError::Protocol {
            endpoint,
            reason: "unexpected Enrolled to a hello".into(),
        }),
    }
}
