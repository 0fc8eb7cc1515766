//! Secret files: the node's identity key and the admin token.
//!
//! Both are created with mode 0600 on first start. A secret file readable by group or others is
//! refused with a message saying how to fix it, never silently used.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p_identity::Keypair;

/// Errors reading or creating secret files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("{path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("identity key file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot read or create {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a secret file after checking that only its owner can read it. `None` if it is missing.
pub fn read_secret(path: &Path) -> Result<Option<Vec<u8>>, KeyFileError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read(path).map(Some).map_err(io_err(path))
}

/// Writes a new secret file with mode 0600 and fsyncs it; fails if it already exists.
pub fn create_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// Loads the node's ed25519 key from `path`, creating it on first start.
pub fn load_or_create_identity(path: &Path) -> Result<(Keypair, bool), KeyFileError> {
    if let Some(bytes) = read_secret(path)? {
        let key = Keypair::from_protobuf_encoding(&bytes).map_err(|e| KeyFileError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if key.clone().try_into_ed25519().is_err() {
            return Err(KeyFileError::Corrupt {
                path: path.to_path_buf(),
                reason: "not an ed25519 key".into(),
            });
        }
        return Ok((key, false));
    }
    let key = Keypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .map_err(|e| KeyFileError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    create_secret(path, &bytes)?;
    Ok((key, true))
}

/// Loads the admin token from `path`, creating a random one on first start.
pub fn load_or_create_token(path: &Path) -> Result<String, KeyFileError> {
    if let Some(bytes) = read_secret(path)? {
        let token = String::from_utf8_lossy(&bytes).trim().to_string();
        if token.len() < 16 {
            return Err(KeyFileError::Corrupt {
                path: path.to_path_buf(),
                reason: "admin token is shorter than 16 characters".into(),
            });
        }
        return Ok(token);
    }
    let raw: [u8; 32] = rand::random();
    let token = voike_protocol::signing::hex(&raw);
    create_secret(path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let (a, created) = load_or_create_identity(&path).expect("create");
        assert!(created);
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = load_or_create_identity(&path).expect("reload");
        assert!(!created);
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
    }

    #[test]
    fn world_readable_identity_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        load_or_create_identity(&path).expect("create");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_or_create_identity(&path).expect_err("must refuse");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn corrupt_identity_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        create_secret(&path, b"not a key").expect("write");
        let err = load_or_create_identity(&path).expect_err("must refuse");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn token_is_random_and_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create_token(&dir.path().join("t1")).expect("t1");
        let b = load_or_create_token(&dir.path().join("t2")).expect("t2");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(
            load_or_create_token(&dir.path().join("t1")).expect("again"),
            a
        );
    }
}
