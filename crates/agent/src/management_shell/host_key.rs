//! The management shell's host key: ed25519, created once in the agent's
//! state directory (0600) and kept, so a client's `known_hosts` entry stays
//! valid across agent restarts and upgrades.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("cannot read the host key {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the host key {path} is not an OpenSSH private key; remove it to have a new one made (clients will see a new host key)"
    )]
    Parse {
        path: String,
        #[source]
        source: russh::keys::ssh_key::Error,
    },
    #[error("cannot write the host key {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The key at `path`, made first if there is none. Two helpers starting
/// at once end up with the same key: the first to link its file wins.
pub fn load_or_create(path: &Path) -> Result<PrivateKey, HostKeyError> {
    match load(path) {
        Err(HostKeyError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            create(path)
        }
        loaded => loaded,
    }
}

fn load(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let display = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| HostKeyError::Read {
        path: display(),
        source,
    })?;
    PrivateKey::from_openssh(text).map_err(|source| HostKeyError::Parse {
        path: display(),
        source,
    })
}

fn create(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let write_error = |source| HostKeyError::Write {
        path: path.display().to_string(),
        source,
    };
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random()));
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| write_error(std::io::Error::other(e)))?;
    // Written whole under a private name, then linked into place: a
    // reader never sees half a key, and a link that exists already is
    // another helper's key, which wins.
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        });
    if let Err(error) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(write_error(error));
    }
    let linked = std::fs::hard_link(&partial, path);
    let _ = std::fs::remove_file(&partial);
    match linked {
        Ok(()) => Ok(key),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => load(path),
        Err(error) => Err(write_error(error)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_then_kept() {
        let dir = tempfile::tempdir().expect("a dir");
        let path = dir.path().join("shell_host_key");
        let made = load_or_create(&path).expect("made");
        let mode = std::fs::metadata(&path)
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(&path).expect("loaded");
        assert_eq!(made.public_key(), again.public_key());
        assert_eq!(std::fs::read_dir(dir.path()).expect("listed").count(), 1);

        std::fs::write(&path, "not a key").expect("overwritten");
        let error = load_or_create(&path).expect_err("garbage");
        assert!(error.to_string().contains("remove it"), "{error}");
    }
}
