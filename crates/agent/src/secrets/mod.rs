//! Sealed secrets on the device (issue 17, ADR 0030).
//!
//! The agent holds an X25519 key pair in its state directory
//! (`sealing.key`, mode 0600, made at the first start); the private half
//! never leaves the device, the public half goes to tetherd in every
//! reported status. The spec's `secrets` section carries each secret
//! sealed to that key: the agent opens each one into
//! `<state dir>/secrets/<name>` (mode 0600, directory 0700, replaced
//! atomically) and removes the files of secrets no longer listed. A secret
//! it cannot open is reported as a spec error at `spec.secrets.<name>` and
//! its file, if any, is left as it was; the other secrets are written.
//!
//! In cluster mode the secrets are Kubernetes Secrets instead ([`cluster`]).

pub mod cluster;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tether_proto::sealed::{KEY_BYTES, SealError, SecretKey};
use tether_proto::secrets::{SECTION, SealedSecret, SealedSecrets};
use tether_proto::spec::SpecError;

use zeroize::Zeroizing;

use crate::state::write_atomic;

/// The device's private sealing key in the state directory.
pub const KEY_FILE: &str = "sealing.key";
/// Where opened secrets are written in the state directory.
pub const SECRETS_DIR: &str = "secrets";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not read or create the sealing key {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not make a sealing key")]
    Generate(#[source] SealError),
}

/// Loads the device's sealing key, making and saving one if there is none
/// (or if it is damaged: that one is kept aside as `sealing.key.corrupt`).
pub fn load_or_create_key(state_dir: &Path) -> Result<SecretKey, KeyError> {
    let path = state_dir.join(KEY_FILE);
    let io_error = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    match fs::read(&path) {
        Ok(bytes) => {
            if let Ok(bytes) = <[u8; KEY_BYTES]>::try_from(bytes) {
                return Ok(SecretKey::from_bytes(bytes));
            }
            // Only secrets need the key: a damaged one must not stop the
            // agent's actions, telemetry and remote repair. It is kept
            // aside and a new one made; the device reports the new key and
            // its secrets show as stale until set again (ADR 0030).
            let aside = path.with_extension("key.corrupt");
            fs::rename(&path, &aside).map_err(io_error)?;
            tracing::error!(path = %path.display(), kept = %aside.display(), "the sealing key is damaged; making a new one: set this device's secrets again (`tether secrets set`)");
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(error)),
    }
    let key = SecretKey::generate().map_err(KeyError::Generate)?;
    write_atomic(&path, key.as_bytes(), 0o600).map_err(io_error)?;
    tracing::info!(path = %path.display(), "made a sealing key for secrets");
    Ok(key)
}

/// Opens one secret of the spec; what stops it is reported at
/// `spec.secrets.<name>`.
pub fn open(
    key: &SecretKey,
    name: &str,
    sealed: &SealedSecret,
) -> Result<Zeroizing<Vec<u8>>, SpecError> {
    let path = format!("spec.{SECTION}.{name}");
    key.open(&sealed.ciphertext).map_err(|error| match error {
        SealError::Refused => {
            tracing::warn!(secret = %name, "a secret is sealed to another key");
            SpecError::new(
                path,
                format!("sealed to another key: run `tether secrets set {name}` again"),
            )
        }
        error => SpecError::new(path, error.to_string()),
    })
}

/// The `secrets` section as the spec has it (absent: none).
pub fn parse(section: Option<&Value>) -> Result<SealedSecrets, SpecError> {
    match section {
        None => Ok(SealedSecrets::new()),
        Some(section) => serde_json::from_value(section.clone())
            .map_err(|e| SpecError::new(format!("spec.{SECTION}"), e.to_string())),
    }
}

/// Cluster mode writes no files (ADR 0030's amendment): removes those an
/// earlier run in another mode left in the state directory.
pub fn remove_files(state_dir: &Path) {
    let dir = state_dir.join(SECRETS_DIR);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "removed the secret files: in cluster mode secrets are Kubernetes Secrets");
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot remove the secret files an earlier run left");
        }
    }
}

/// Opens the spec's secrets into files.
pub struct SecretFiles {
    dir: PathBuf,
    key: Arc<SecretKey>,
}

impl SecretFiles {
    pub fn new(state_dir: &Path, key: Arc<SecretKey>) -> Self {
        Self {
            dir: state_dir.join(SECRETS_DIR),
            key,
        }
    }

    /// Writes every secret of `section` (absent: none) and removes the
    /// files of the others; returns what could not be done, by path.
    pub fn apply(&self, section: Option<&Value>) -> Vec<SpecError> {
        let secrets = match parse(section) {
            Ok(secrets) => secrets,
            Err(error) => return vec![error],
        };
        if let Err(error) = self.prepare_dir() {
            return vec![SpecError::new(
                format!("spec.{SECTION}"),
                format!("could not make {}: {error}", self.dir.display()),
            )];
        }
        let mut errors = Vec::new();
        for (name, sealed) in &secrets {
            let path = format!("spec.{SECTION}.{name}");
            let value = match open(&self.key, name, sealed) {
                Ok(value) => value,
                Err(error) => {
                    errors.push(error);
                    continue;
                }
            };
            if let Err(error) = write_atomic(&self.dir.join(name), &value, 0o600) {
                errors.push(SpecError::new(
                    path,
                    format!("could not write {}: {error}", self.dir.join(name).display()),
                ));
            } else {
                tracing::debug!(secret = %name, version = sealed.version, "secret written");
            }
        }
        let listed: BTreeSet<&str> = secrets.keys().map(String::as_str).collect();
        if let Err(error) = self.remove_unlisted(&listed) {
            errors.push(SpecError::new(
                format!("spec.{SECTION}"),
                format!(
                    "could not remove the secrets no longer listed from {}: {error}",
                    self.dir.display()
                ),
            ));
        }
        errors
    }

    fn prepare_dir(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
    }

    /// Removes the files of secrets no longer in the spec, and temporary
    /// files a crash mid-write left.
    fn remove_unlisted(&self, listed: &BTreeSet<&str>) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if !listed.contains(name.to_string_lossy().as_ref()) {
                fs::remove_file(entry.path())?;
                tracing::info!(secret = %name.to_string_lossy(), "secret no longer in the spec: removed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::MetadataExt;
    use tether_proto::sealed::PublicKey;

    fn sealed_section(secrets: &[(&str, &PublicKey, &[u8])]) -> Value {
        Value::Object(
            secrets
                .iter()
                .map(|(name, key, value)| {
                    let ciphertext = tether_proto::sealed::seal(key, value).expect("seal");
                    (
                        (*name).to_owned(),
                        json!({"version": 1, "ciphertext": ciphertext}),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn the_key_is_made_once_with_mode_0600_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create_key(dir.path()).expect("key");
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .expect("meta")
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_key(dir.path()).expect("key");
        assert_eq!(first.public_key(), again.public_key());
        // A damaged key is kept aside and replaced: the agent starts.
        fs::write(dir.path().join(KEY_FILE), b"short").expect("write");
        let replaced = load_or_create_key(dir.path()).expect("a new key");
        assert_ne!(replaced.public_key(), first.public_key());
        assert_eq!(
            fs::read(dir.path().join("sealing.key.corrupt")).expect("kept aside"),
            b"short"
        );
        assert_eq!(
            load_or_create_key(dir.path()).expect("key").public_key(),
            replaced.public_key()
        );
    }

    #[test]
    fn secrets_are_written_0600_and_removed_when_no_longer_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_key = Arc::new(SecretKey::generate().expect("key"));
        let files = SecretFiles::new(dir.path(), secret_key.clone());
        let key = secret_key.public_key();
        let errors = files.apply(Some(&sealed_section(&[
            ("db", &key, b"hunter2"),
            ("token", &key, b"abc"),
        ])));
        assert!(errors.is_empty(), "{errors:?}");
        let db = dir.path().join(SECRETS_DIR).join("db");
        assert_eq!(fs::read(&db).expect("read"), b"hunter2");
        assert_eq!(fs::metadata(&db).expect("meta").mode() & 0o777, 0o600);
        let dir_mode = fs::metadata(dir.path().join(SECRETS_DIR))
            .expect("meta")
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert!(
            files
                .apply(Some(&sealed_section(&[("token", &key, b"abc")])))
                .is_empty()
        );
        assert!(!db.exists());
        assert!(files.apply(None).is_empty());
        assert!(!dir.path().join(SECRETS_DIR).join("token").exists());
    }

    #[test]
    fn a_secret_sealed_to_another_key_is_reported_and_the_others_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = Arc::new(SecretKey::generate().expect("key"));
        let files = SecretFiles::new(dir.path(), key.clone());
        let other = SecretKey::generate().expect("key").public_key();
        let errors = files.apply(Some(&sealed_section(&[
            ("db", &other, b"hunter2"),
            ("token", &key.public_key(), b"abc"),
        ])));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "spec.secrets.db");
        assert!(
            errors[0]
                .message
                .contains("sealed to another key: run `tether secrets set db` again"),
            "{}",
            errors[0].message
        );
        assert!(!dir.path().join(SECRETS_DIR).join("db").exists());
        assert_eq!(
            fs::read(dir.path().join(SECRETS_DIR).join("token")).expect("read"),
            b"abc"
        );
    }
}
