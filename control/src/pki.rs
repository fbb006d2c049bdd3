//! Certificates: the host CA, the listener certificate, site certificates
//! signed from a site's CSR. ECDSA P-256 throughout (threat 6: cheap
//! handshakes).

use crate::clock::{to_datetime, UnixMillis};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateSigningRequestDer;
use std::time::Duration;

/// Errors while making or signing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused (bad key, bad parameters).
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The site's request is not a valid, self-signed PKCS#10 request.
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(rcgen::Error),
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
}

/// A freshly generated certificate and its key, both PEM.
#[derive(Clone)]
pub struct Generated {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM. Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generated")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Fills a buffer from the system's secure random generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| PkiError::Random)?;
    Ok(out)
}

/// A positive 128-bit random serial number.
pub fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut s = random_bytes::<16>()?;
    s[0] &= 0x7f;
    s[0] |= 0x01; // keep it positive and 16 bytes long in DER
    Ok(s.to_vec())
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn validity(params: &mut CertificateParams, now: UnixMillis, ttl: Duration) {
    // Five minutes of slack for clocks that disagree a little.
    params.not_before = to_datetime(now - 5 * 60 * 1000);
    params.not_after = to_datetime(now.saturating_add(ttl.as_millis() as i64));
}

/// Generates the host CA.
pub fn generate_ca(now: UnixMillis, ttl: Duration) -> Result<Generated, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let tag = revtun_proto::hex::encode(&random_bytes::<6>()?);
    dn.push(DnType::CommonName, format!("revtun host CA {tag}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    validity(&mut params, now, ttl);
    let cert = params.self_signed(&key)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The host CA loaded for signing.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// CA certificate, DER (what sites pin).
    pub cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from its certificate and key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let cert_der =
            pem_to_der(cert_pem).ok_or(PkiError::Rcgen(rcgen::Error::CouldNotParseCertificate))?;
        Ok(Ca { issuer, cert_der })
    }

    /// `sha256:<hex>` of the CA certificate.
    pub fn fingerprint(&self) -> String {
        revtun_proto::hex::fingerprint(&sha256(&self.cert_der))
    }

    /// Issues the control listener certificate (name [`revtun_proto::CONTROL_SERVER_NAME`],
    /// server authentication only).
    pub fn issue_listener(&self, now: UnixMillis, ttl: Duration) -> Result<Generated, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params =
            CertificateParams::new(vec![revtun_proto::CONTROL_SERVER_NAME.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, revtun_proto::CONTROL_SERVER_NAME);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, ttl);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Generated {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues this fleet host's peer-link certificate: common name the
    /// host id, DNS name [`revtun_proto::PEER_SERVER_NAME`] (no other
    /// certificate the CA signs carries it), server and client
    /// authentication. Returns (certificate DER, PKCS#8 key DER); the key
    /// lives only in this process's memory.
    pub fn issue_host(
        &self,
        host_id: &str,
        now: UnixMillis,
        ttl: Duration,
    ) -> Result<(Vec<u8>, zeroize::Zeroizing<Vec<u8>>), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![revtun_proto::PEER_SERVER_NAME.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host_id);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, ttl);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            cert.der().to_vec(),
            zeroize::Zeroizing::new(key.serialize_der()),
        ))
    }

    /// Signs a site's CSR. Only the public key is taken from the request:
    /// the name, usages and validity come from the host. Returns the DER.
    pub fn sign_site(
        &self,
        site: &str,
        csr_der: &[u8],
        serial: &[u8],
        now: UnixMillis,
        ttl: Duration,
    ) -> Result<Vec<u8>, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(PkiError::BadCsr)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, site);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from_slice(serial));
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, ttl);
        Ok(params
            .signed_by(&csr.public_key, &self.issuer)?
            .der()
            .to_vec())
    }
}

/// Decodes the first PEM certificate block to DER.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// What control reads from a presented site certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteCertInfo {
    /// Serial number bytes (big-endian, no sign padding).
    pub serial: Vec<u8>,
    /// Subject common name: the site.
    pub site: String,
}

/// Reads serial and common name from a DER certificate.
pub fn site_cert_info(der: &[u8]) -> Option<SiteCertInfo> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let site = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(SiteCertInfo {
        serial: normalize_serial(cert.raw_serial()),
        site,
    })
}

/// The host id of a fleet host's peer certificate: its common name, if
/// the certificate carries the DNS name [`revtun_proto::PEER_SERVER_NAME`]
/// (site and listener certificates do not), else `None`.
pub fn host_cert_id(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let named = san
        .value
        .general_names
        .iter()
        .any(|n| matches!(n, GeneralName::DNSName(d) if *d == revtun_proto::PEER_SERVER_NAME));
    if !named {
        return None;
    }
    let id = cert.subject().iter_common_name().next()?.as_str().ok()?;
    revtun_proto::validate_host_id(id).ok()?;
    Some(id.to_string())
}

/// Strips DER sign padding so serials compare equal however they were read.
pub fn normalize_serial(raw: &[u8]) -> Vec<u8> {
    let mut s = raw;
    while s.len() > 1 && s[0] == 0 {
        s = &s[1..];
    }
    s.to_vec()
}
