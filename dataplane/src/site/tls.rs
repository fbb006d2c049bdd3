//! The site's TLS client configuration: TLS 1.3 only, the keyfile's CA as
//! the only root (no system roots, no "insecure" switch), and the site
//! certificate for client authentication once enrolled.

use super::SiteError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;

/// Builds the client configuration pinned to `ca_der`.
pub fn client_config(
    ca_der: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, SiteError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| SiteError::Local(format!("the pinned host CA is not usable: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| SiteError::Local(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(cert.to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
            )
            .map_err(|e| SiteError::Local(format!("site certificate or key is not usable: {e}")))?,
    };
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}
