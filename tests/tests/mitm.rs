//! Threat 4: a man in the middle. The site trusts only the CA in its
//! keyfile; against any other server the handshake fails and no token byte
//! leaves the site, not even inside TLS.

use anyhow::{Context, Result};
use revtun_control::clock::{Clock, SystemClock};
use revtun_control::pki::Ca;
use revtun_dataplane::site::load_keyfile;
use revtun_tests::{keytool, site, stderr, Host};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What the fake server saw: raw bytes on the wire and decrypted plaintext.
struct Recording {
    raw: Vec<u8>,
    plaintext: Vec<u8>,
}

/// Serves one TLS connection with `cert_pem`/`key_pem`, recording everything.
fn fake_server(cert_pem: &str, key_pem: &str) -> Result<(u16, std::thread::JoinHandle<Recording>)> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let handle = std::thread::spawn(move || {
        let mut rec = Recording {
            raw: Vec::new(),
            plaintext: Vec::new(),
        };
        let Ok((mut sock, _)) = listener.accept() else {
            return rec;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
        let Ok(mut conn) = rustls::ServerConnection::new(Arc::new(config)) else {
            return rec;
        };
        let mut buf = [0u8; 16384];
        loop {
            while conn.wants_write() {
                let mut out = Vec::new();
                if conn.write_tls(&mut out).is_err() || sock.write_all(&out).is_err() {
                    break;
                }
            }
            let n = match sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            rec.raw.extend_from_slice(&buf[..n]);
            let mut cur = &buf[..n];
            while !cur.is_empty() {
                if conn.read_tls(&mut cur).is_err() {
                    break;
                }
            }
            if conn.process_new_packets().is_err() {
                // Keep recording raw bytes until the client closes.
                continue;
            }
            let mut plain = [0u8; 4096];
            while let Ok(n) = conn.reader().read(&mut plain) {
                if n == 0 {
                    break;
                }
                rec.plaintext.extend_from_slice(&plain[..n]);
            }
        }
        rec
    });
    Ok((port, handle))
}

/// Issues a real keyfile on `host`, points it at `port`, runs the site
/// against it, and checks that nothing secret escaped.
fn assert_refused(
    host: &Host,
    port: u16,
    rec: std::thread::JoinHandle<Recording>,
    case: &str,
) -> Result<()> {
    let kf = host.issue(&format!("mitm-{}", revtun_tests::unique()), &[])?;
    let text = std::fs::read_to_string(&kf)?.replace(
        &format!("endpoint: 127.0.0.1:{}", host.addr.port()),
        &format!("endpoint: 127.0.0.1:{port}"),
    );
    std::fs::write(&kf, text)?;
    let (parsed, _) = load_keyfile(&kf)?;
    let dir = host.path(&format!("mitm-site-{}", revtun_tests::unique()));
    let o = site(&[
        "enroll",
        "--keyfile",
        &kf.to_string_lossy(),
        "--state-dir",
        &dir.to_string_lossy(),
    ])?;
    assert!(
        !o.status.success(),
        "{case}: enrollment succeeded against a fake server"
    );
    assert!(stderr(&o).contains("not trusted"), "{case}: {}", stderr(&o));
    let rec = rec
        .join()
        .map_err(|_| anyhow::anyhow!("fake server panicked"))?;
    assert!(
        rec.plaintext.is_empty(),
        "{case}: the fake server decrypted {} bytes",
        rec.plaintext.len()
    );
    let secret_hex = revtun_proto::hex::encode(&parsed.token.secret);
    for needle in [
        &parsed.token.secret[..8],
        &parsed.token.id[..8],
        &secret_hex.as_bytes()[..16],
    ] {
        assert!(
            !rec.raw.windows(needle.len()).any(|w| w == needle),
            "{case}: token bytes on the wire"
        );
    }
    assert!(!rec.raw.is_empty(), "{case}: the site never connected");
    assert!(!dir.join("site.crt").exists());
    Ok(())
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| p.display().to_string())
}

#[test]
fn certificate_from_another_hosts_ca_is_refused() -> Result<()> {
    let host = Host::start(&[])?;
    let other = host.path("other-host");
    let o = keytool(&other, &["init"])?;
    assert!(o.status.success(), "{}", stderr(&o));
    let (port, rec) = fake_server(
        &read(&other.join("control.crt"))?,
        &read(&other.join("control.key"))?,
    )?;
    assert_refused(&host, port, rec, "other CA")
}

#[test]
fn self_signed_certificate_is_refused() -> Result<()> {
    let host = Host::start(&[])?;
    let ck =
        rcgen::generate_simple_self_signed(vec![revtun_proto::CONTROL_SERVER_NAME.to_string()])?;
    let (port, rec) = fake_server(&ck.cert.pem(), &ck.signing_key.serialize_pem())?;
    assert_refused(&host, port, rec, "self-signed")
}

#[test]
fn expired_certificate_from_the_right_ca_is_refused() -> Result<()> {
    let host = Host::start(&[])?;
    let ca = Ca::load(
        &read(&host.state().join("ca.crt"))?,
        &read(&host.state().join("ca.key"))?,
    )?;
    let three_years_ago = SystemClock::default().now_ms() - 3 * 365 * 86_400 * 1000;
    let old = ca.issue_listener(three_years_ago, Duration::from_secs(365 * 86_400))?;
    let (port, rec) = fake_server(&old.cert_pem, &old.key_pem)?;
    assert_refused(&host, port, rec, "expired")
}

#[test]
fn a_site_certificate_cannot_pose_as_the_host() -> Result<()> {
    let host = Host::start(&[])?;
    // A certificate from the right CA, but issued to a site (client usage,
    // no host name): an enrolled site must not impersonate the host.
    let ca = Ca::load(
        &read(&host.state().join("ca.crt"))?,
        &read(&host.state().join("ca.key"))?,
    )?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::new(vec![revtun_proto::CONTROL_SERVER_NAME.to_string()])?
        .serialize_request(&key)?;
    let der = ca.sign_site(
        "evil",
        csr.der(),
        &[1, 2, 3],
        SystemClock::default().now_ms(),
        Duration::from_secs(3600),
    )?;
    let pem = pem_of(&der);
    let (port, rec) = fake_server(&pem, &key.serialize_pem())?;
    assert_refused(&host, port, rec, "site certificate")
}

fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}
