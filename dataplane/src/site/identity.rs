//! The site's own state directory, written at enrollment.
//!
//! ```text
//! DIR/            mode 0700
//!   site.conf     site name and host endpoints (text)
//!   ca.crt        the host CA, pinned from the keyfile
//!   site.crt      the site certificate the host signed
//!   site.key      the site's private key, generated here (0600)
//! ```

use super::SiteError;
use revtun_proto::keyfile::Endpoint;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Default site state directory.
pub const DEFAULT_SITE_STATE_DIR: &str = "/var/lib/revtun-site";

/// An enrolled site's identity.
#[derive(Clone)]
pub struct Identity {
    /// Site name (the certificate's common name).
    pub site: String,
    /// Host endpoints, tried in order.
    pub endpoints: Vec<Endpoint>,
    /// Host CA certificate, DER: the only trust anchor.
    pub ca_der: Vec<u8>,
    /// Site certificate, DER.
    pub cert_der: Vec<u8>,
    /// Site private key, PKCS#8 DER. Secret.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("site", &self.site)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

fn state_err(path: &Path, reason: impl ToString) -> SiteError {
    SiteError::State {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), SiteError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| state_err(&tmp, e))?;
    f.write_all(data).map_err(|e| state_err(&tmp, e))?;
    f.sync_all().map_err(|e| state_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| state_err(path, e))
}

fn pem_of(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

fn read_pem(path: &Path, tag: &str) -> Result<Vec<u8>, SiteError> {
    let text = fs::read_to_string(path).map_err(|e| state_err(path, e))?;
    let p = pem::parse(text).map_err(|e| state_err(path, e))?;
    if p.tag() != tag {
        return Err(state_err(
            path,
            format!("expected a {tag} PEM block, found {}", p.tag()),
        ));
    }
    Ok(p.into_contents())
}

struct Files {
    conf: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn files(dir: &Path) -> Files {
    Files {
        conf: dir.join("site.conf"),
        ca: dir.join("ca.crt"),
        cert: dir.join("site.crt"),
        key: dir.join("site.key"),
    }
}

impl Identity {
    /// True when `dir` holds an identity (complete or not).
    pub fn exists(dir: &Path) -> bool {
        let f = files(dir);
        f.key.exists() || f.cert.exists()
    }

    /// Writes the identity; the key is written last-but-one and the
    /// certificate last, so a crash leaves no certificate without its key.
    pub fn save(&self, dir: &Path) -> Result<(), SiteError> {
        fs::create_dir_all(dir).map_err(|e| state_err(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| state_err(dir, e))?;
        let f = files(dir);
        let mut conf = format!("# revtun site state\nsite: {}\n", self.site);
        for e in &self.endpoints {
            conf.push_str(&format!("endpoint: {e}\n"));
        }
        write(&f.conf, conf.as_bytes(), 0o600)?;
        write(&f.ca, pem_of("CERTIFICATE", &self.ca_der).as_bytes(), 0o600)?;
        write(
            &f.key,
            pem_of("PRIVATE KEY", &self.key_der).as_bytes(),
            0o600,
        )?;
        write(
            &f.cert,
            pem_of("CERTIFICATE", &self.cert_der).as_bytes(),
            0o600,
        )
    }

    /// Loads the identity from `dir`.
    pub fn load(dir: &Path) -> Result<Self, SiteError> {
        let f = files(dir);
        if !Self::exists(dir) {
            return Err(SiteError::NotEnrolled(dir.to_path_buf()));
        }
        let mode = fs::metadata(&f.key)
            .map_err(|e| state_err(&f.key, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(state_err(
                &f.key,
                format!(
                    "readable by group or others (mode {:04o}); chmod 600 it",
                    mode & 0o777
                ),
            ));
        }
        let conf = fs::read_to_string(&f.conf).map_err(|e| state_err(&f.conf, e))?;
        let mut site = None;
        let mut endpoints = Vec::new();
        for (n, line) in conf.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some(("site", v)) => {
                    let v = v.trim();
                    revtun_proto::validate_site_name(v)
                        .map_err(|r| state_err(&f.conf, format!("line {}: {r}", n + 1)))?;
                    site = Some(v.to_string());
                }
                Some(("endpoint", v)) => endpoints.push(
                    Endpoint::parse(v)
                        .map_err(|r| state_err(&f.conf, format!("line {}: {r}", n + 1)))?,
                ),
                _ => return Err(state_err(&f.conf, format!("line {}: unknown line", n + 1))),
            }
        }
        let site = site.ok_or_else(|| state_err(&f.conf, "no 'site' line"))?;
        if endpoints.is_empty() {
            return Err(state_err(&f.conf, "no 'endpoint' line"));
        }
        Ok(Identity {
            site,
            endpoints,
            ca_der: read_pem(&f.ca, "CERTIFICATE")?,
            cert_der: read_pem(&f.cert, "CERTIFICATE")?,
            key_der: read_pem(&f.key, "PRIVATE KEY")?,
        })
    }
}
