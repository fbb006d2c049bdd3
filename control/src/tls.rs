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
/// will load, with the data plane's own loader: both parse and the key is
/// the certificate's. Errors name the file and never quote what is in it.
pub fn check_rtsps_files(cert: &std::path::Path, key: &std::path::Path) -> Result<(), String> {
    revtun_dataplane::video::wire::server_config(cert, key).map(|_| ())
}
