//! The host state directory: CA, listener certificate, site store.
//!
//! ```text
//! DIR/            mode 0700
//!   ca.crt        host CA certificate (public; copied into every keyfile)
//!   ca.key        host CA private key (0600)
//!   control.crt   control listener certificate, signed by the CA
//!   control.key   its private key (0600)
//!   sites.db      the site store (SQLite, 0600)
//!   viewer-token.key  key that signs stream tokens (0600, created when
//!                 first needed)
//! ```

use crate::clock::UnixMillis;
use crate::fleet::FleetConfig;
use crate::pki::{self, Ca, PkiError};
use crate::store::{Store, StoreError};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Default host state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/revtun";

/// Errors loading or creating host state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory holds no identity yet.
    #[error("no host identity in {0}: run 'revtun-keytool --state-dir {0} init' first")]
    NotInitialised(String),
    /// `init` would overwrite an identity.
    #[error("{0} already holds a host identity; pass --force to replace it (every issued keyfile and site certificate stops working)")]
    Exists(String),
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// A key or certificate file is damaged.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |error| StateError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Writes a file atomically (temp file, fsync, rename) with `mode`.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

fn read(path: &Path) -> Result<String, StateError> {
    fs::read_to_string(path).map_err(io_err(path))
}

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The directory.
    pub dir: PathBuf,
}

impl Paths {
    /// `ca.crt`
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// `ca.key`
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// `control.crt`
    pub fn listener_cert(&self) -> PathBuf {
        self.dir.join("control.crt")
    }
    /// `control.key`
    pub fn listener_key(&self) -> PathBuf {
        self.dir.join("control.key")
    }
    /// `sites.db`
    pub fn store(&self) -> PathBuf {
        self.dir.join("sites.db")
    }
    /// `viewer-token.key`
    pub fn token_key(&self) -> PathBuf {
        self.dir.join("viewer-token.key")
    }
}

/// Loads the stream-token key, creating it if this state directory has
/// none yet. Creation is atomic (a hard link of a complete file), so
/// control and the keytool starting at once agree on one key.
fn load_or_create_token_key(path: &Path) -> Result<zeroize::Zeroizing<[u8; 32]>, StateError> {
    let parse = |text: &str| {
        revtun_proto::hex::decode_exact::<32>(text.trim()).map(zeroize::Zeroizing::new)
    };
    if !path.exists() {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut key[..]).map_err(|_| StateError::Io {
            path: path.display().to_string(),
            error: std::io::Error::other("no randomness"),
        })?;
        let text = zeroize::Zeroizing::new(format!("{}\n", revtun_proto::hex::encode(&key[..])));
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        write_file(&tmp, text.as_bytes(), 0o600)?;
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    let text = zeroize::Zeroizing::new(read(path)?);
    parse(&text).ok_or_else(|| StateError::Io {
        path: path.display().to_string(),
        error: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a 32-byte hex key; remove it to create a new one (every stream token issued stops working)",
        ),
    })
}

/// The loaded host state.
#[derive(Debug)]
pub struct HostState {
    /// Where it lives.
    pub paths: Paths,
    /// The CA, ready to sign.
    pub ca: Ca,
    /// CA certificate, PEM (goes into keyfiles).
    pub ca_cert_pem: String,
    /// Listener certificate chain, PEM.
    pub listener_cert_pem: String,
    /// Listener key, PEM. Secret.
    listener_key_pem: String,
    /// The site store.
    pub store: Store,
    /// Key that signs stream tokens. Secret.
    token_key: zeroize::Zeroizing<[u8; 32]>,
}

impl HostState {
    /// Creates a new host identity in `dir`. Refuses to replace an existing
    /// one unless `force`.
    pub fn init(dir: &Path, force: bool, now: UnixMillis) -> Result<Self, StateError> {
        let paths = Paths {
            dir: dir.to_path_buf(),
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        let exists = [paths.ca_key(), paths.ca_cert(), paths.store()]
            .iter()
            .any(|p| p.exists());
        if exists && !force {
            return Err(StateError::Exists(dir.display().to_string()));
        }
        if force {
            for p in [
                paths.store(),
                paths.dir.join("sites.db-wal"),
                paths.dir.join("sites.db-shm"),
                paths.token_key(),
            ] {
                let _ = fs::remove_file(p);
            }
        }
        let ca = pki::generate_ca(now, crate::limits::CA_TTL)?;
        write_file(&paths.ca_key(), ca.key_pem.as_bytes(), 0o600)?;
        write_file(&paths.ca_cert(), ca.cert_pem.as_bytes(), 0o644)?;
        let loaded = Ca::load(&ca.cert_pem, &ca.key_pem)?;
        let listener = loaded.issue_listener(now, crate::limits::LISTENER_CERT_TTL)?;
        write_file(&paths.listener_key(), listener.key_pem.as_bytes(), 0o600)?;
        write_file(&paths.listener_cert(), listener.cert_pem.as_bytes(), 0o644)?;
        drop(loaded);
        Self::load(dir)
    }

    /// Loads the identity and opens the store: the fleet's etcd when the
    /// directory has a `fleet.toml`, else `sites.db`.
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        Self::load_with(dir, None)
    }

    /// Like [`HostState::load`], with the fleet given (`--fleet`) instead
    /// of read from `fleet.toml`.
    pub fn load_with(dir: &Path, fleet: Option<FleetConfig>) -> Result<Self, StateError> {
        let paths = Paths {
            dir: dir.to_path_buf(),
        };
        if !paths.ca_key().exists() {
            return Err(StateError::NotInitialised(dir.display().to_string()));
        }
        let ca_cert_pem = read(&paths.ca_cert())?;
        let ca_key_pem = read(&paths.ca_key())?;
        let ca = Ca::load(&ca_cert_pem, &ca_key_pem)?;
        let listener_cert_pem = read(&paths.listener_cert())?;
        let listener_key_pem = read(&paths.listener_key())?;
        let fleet = match fleet {
            Some(f) => Some(f),
            None => FleetConfig::load(dir).map_err(|e| StateError::Io {
                path: FleetConfig::path(dir).display().to_string(),
                error: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
        };
        let store = match fleet {
            Some(cfg) => Store::Fleet(Box::new(crate::fleet::FleetStore::open(cfg)?)),
            None => {
                let db = paths.store();
                let new_db = !db.exists();
                let store = Store::open(&db)?;
                if new_db {
                    fs::set_permissions(&db, fs::Permissions::from_mode(0o600))
                        .map_err(io_err(&db))?;
                }
                store
            }
        };
        let token_key = load_or_create_token_key(&paths.token_key())?;
        Ok(HostState {
            paths,
            ca,
            ca_cert_pem,
            listener_cert_pem,
            listener_key_pem,
            store,
            token_key,
        })
    }

    /// The stream-token key (for the data plane and `viewer token` only).
    pub fn token_key(&self) -> &[u8; 32] {
        &self.token_key
    }

    /// The listener key, PEM (for the TLS configuration only).
    pub fn listener_key_pem(&self) -> &str {
        &self.listener_key_pem
    }
}

/// What a new fleet host needs from an existing one: the CA (certificate
/// and key), the stream-token key and the fleet settings. Secret: written
/// 0600, and zeroed in memory when dropped.
#[derive(serde::Serialize, serde::Deserialize, zeroize::ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct Bundle {
    format: u32,
    #[zeroize(skip)]
    fleet: FleetConfig,
    ca_cert_pem: String,
    ca_key_pem: String,
    viewer_token_key: String,
}

const BUNDLE_FORMAT: u32 = 1;

impl HostState {
    /// `revtun-keytool fleet export`: writes the bundle to `out` (0600,
    /// never over an existing file). The host must be in a fleet.
    pub fn export_fleet(&self, out: &Path) -> Result<(), StateError> {
        let Some(f) = self.store.fleet() else {
            return Err(StateError::Store(StoreError::Refused(format!(
                "{} is not in a fleet: start revtun-control with --fleet first (or pass --fleet to the keytool)",
                self.paths.dir.display()
            ))));
        };
        let bundle = Bundle {
            format: BUNDLE_FORMAT,
            fleet: f.config().clone(),
            ca_cert_pem: self.ca_cert_pem.clone(),
            ca_key_pem: read(&self.paths.ca_key())?,
            viewer_token_key: revtun_proto::hex::encode(&self.token_key[..]),
        };
        let text = zeroize::Zeroizing::new(serde_json::to_string_pretty(&bundle).map_err(|e| {
            StateError::Io {
                path: out.display().to_string(),
                error: std::io::Error::other(e),
            }
        })?);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .map_err(io_err(out))?;
        f.write_all(text.as_bytes()).map_err(io_err(out))?;
        f.sync_all().map_err(io_err(out))
    }

    /// `revtun-keytool fleet import`: makes `dir` a host of the bundle's
    /// fleet: the fleet's CA and stream-token key, a listener certificate
    /// of its own, `fleet.toml`. Refuses a directory that already holds a
    /// host identity.
    pub fn import_fleet(
        dir: &Path,
        bundle_path: &Path,
        now: UnixMillis,
    ) -> Result<Self, StateError> {
        let paths = Paths {
            dir: dir.to_path_buf(),
        };
        let meta = fs::metadata(bundle_path).map_err(io_err(bundle_path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(StateError::Io {
                path: bundle_path.display().to_string(),
                error: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the bundle holds the fleet's CA key: it must be readable by its owner only (chmod 600)",
                ),
            });
        }
        let text = zeroize::Zeroizing::new(read(bundle_path)?);
        let bundle: Bundle = serde_json::from_str(&text).map_err(|e| StateError::Io {
            path: bundle_path.display().to_string(),
            error: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a fleet bundle: {e}"),
            ),
        })?;
        if bundle.format != BUNDLE_FORMAT {
            return Err(StateError::Io {
                path: bundle_path.display().to_string(),
                error: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bundle format {} is not {BUNDLE_FORMAT}", bundle.format),
                ),
            });
        }
        let ca = Ca::load(&bundle.ca_cert_pem, &bundle.ca_key_pem)?;
        revtun_proto::hex::decode_exact::<32>(&bundle.viewer_token_key).ok_or_else(|| {
            StateError::Io {
                path: bundle_path.display().to_string(),
                error: std::io::Error::new(std::io::ErrorKind::InvalidData, "bad viewer token key"),
            }
        })?;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        if [
            paths.ca_key(),
            paths.ca_cert(),
            paths.store(),
            FleetConfig::path(dir),
        ]
        .iter()
        .any(|p| p.exists())
        {
            return Err(StateError::Exists(dir.display().to_string()));
        }
        let listener = ca.issue_listener(now, crate::limits::LISTENER_CERT_TTL)?;
        write_file(&paths.listener_key(), listener.key_pem.as_bytes(), 0o600)?;
        write_file(&paths.listener_cert(), listener.cert_pem.as_bytes(), 0o644)?;
        let key_text = zeroize::Zeroizing::new(format!("{}\n", bundle.viewer_token_key));
        write_file(&paths.token_key(), key_text.as_bytes(), 0o600)?;
        bundle.fleet.save(dir)?;
        write_file(&paths.ca_cert(), bundle.ca_cert_pem.as_bytes(), 0o644)?;
        // Last: the CA key's presence is what makes the directory a host.
        write_file(&paths.ca_key(), bundle.ca_key_pem.as_bytes(), 0o600)?;
        Self::load(dir)
    }
}
