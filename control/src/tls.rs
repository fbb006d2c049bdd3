//! TLS configuration of the control listener: TLS 1.3 only, the host CA
//! as the only root for client certificates, which stay optional (a site
//! enrolling has none yet; a hello without one is refused later).

use crate::state::HostState;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::sync::Arc;

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file did not hold what it should.
    #[error("bad PEM in {0}")]
    Pem(&'static str),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The crypto provider everything uses (aws-lc-rs: AES-GCM in hardware).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds the listener's server configuration.
pub fn server_config(state: &HostState) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(state.ca.cert_der.clone()))
        .map_err(|_| TlsSetupError::Pem("ca.crt"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(state.listener_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| TlsSetupError::Pem("control.crt"))?;
    let key = PrivateKeyDer::from_pem_slice(state.listener_key_pem().as_bytes())
        .map_err(|_| TlsSetupError::Pem("control.key"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // No resumption: every connection proves its identity afresh, and no
    // post-handshake ticket records trail the handshake.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// Checks the RTSPS certificate chain and key (PEM files) the data plane
/// will load: both parse and the key is the certificate's. Errors name
/// the file and never quote what is in it.
pub fn check_rtsps_files(cert: &std::path::Path, key: &std::path::Path) -> Result<(), String> {
    use rustls::pki_types::pem::Error as PemError;
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
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
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
    Ok(())
}
