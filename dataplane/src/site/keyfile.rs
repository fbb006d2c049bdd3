//! Loading a keyfile from disk: permissions, size, syntax, fingerprint.

use super::SiteError;
use revtun_proto::keyfile::{Keyfile, MAX_KEYFILE_LEN};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Reads and checks a keyfile. Refuses one that group or others can read
/// (threat 3). Returns the keyfile and its CA certificate, DER, after
/// checking it against the fingerprint.
pub fn load_keyfile(path: &Path) -> Result<(Keyfile, Vec<u8>), SiteError> {
    let io = |error| SiteError::KeyfileIo {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SiteError::KeyfilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEYFILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let kf = Keyfile::parse(&bytes).map_err(|error| SiteError::Keyfile {
        path: path.to_path_buf(),
        error,
    })?;
    let der = CertificateDer::from_pem_slice(kf.ca_cert_pem.as_bytes())
        .map_err(|_| SiteError::BadCaCert(path.to_path_buf()))?
        .to_vec();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    if revtun_proto::hex::fingerprint(digest.as_ref()) != kf.ca_fingerprint {
        return Err(SiteError::Fingerprint(path.to_path_buf()));
    }
    Ok((kf, der))
}
