//! The release signing key (Ed25519) and the download-token key (HMAC),
//! held as tetherd holds its CA key: files in the data dir, mode 0600,
//! made on first start. Replicas must share both (the agent pins the
//! signing key; a token made by one replica is checked by another):
//! [`crate::cluster::check_release_keys`] refuses a replica whose keys
//! differ from the cluster's.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::secret_file;

/// The signing key, PKCS#8 (DER) as ring writes it.
pub const SIGNING_KEY_FILE: &str = "release-signing-key.pk8";
/// 32 random bytes: the HMAC key of download tokens.
pub const TOKEN_KEY_FILE: &str = "release-token.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} does not hold a usable {what}; restore it from a backup or another replica (moving it away makes a new one, and agents that pinned the old signing key refuse releases signed by the new)"
    )]
    Bad { path: PathBuf, what: &'static str },
    #[error("could not generate a release signing key")]
    Generate,
}

pub struct ReleaseKeys {
    signing: Ed25519KeyPair,
    public_key: String,
    token_key: ring::hmac::Key,
    token_key_fingerprint: String,
}

impl ReleaseKeys {
    /// Loads both keys from `data_dir`, creating each on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, KeyError> {
        let signing_path = data_dir.join(SIGNING_KEY_FILE);
        if !signing_path.exists() {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| KeyError::Generate)?;
            write(&signing_path, pkcs8.as_ref())?;
            tracing::info!(path = %signing_path.display(), "created the agent release signing key");
        }
        let token_path = data_dir.join(TOKEN_KEY_FILE);
        if !token_path.exists() {
            write(&token_path, &rand::random::<[u8; 32]>())?;
        }
        let pkcs8 = read(&signing_path)?;
        let token_key = read(&token_path)?;
        Self::from_bytes(&pkcs8, &token_key).map_err(|what| KeyError::Bad {
            path: if what == "signing key" {
                signing_path
            } else {
                token_path
            },
            what,
        })
    }

    /// Fresh keys that live in memory only (tests).
    pub fn generate() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .unwrap_or_else(|_| unreachable!("the system's random source works"));
        Self::from_bytes(pkcs8.as_ref(), &rand::random::<[u8; 32]>())
            .unwrap_or_else(|_| unreachable!("keys just made are well formed"))
    }

    fn from_bytes(pkcs8: &[u8], token_key: &[u8]) -> Result<Self, &'static str> {
        let signing = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| "signing key")?;
        if token_key.len() != 32 {
            return Err("download-token key (32 bytes)");
        }
        // A hash under a label of its own tells keys apart and reveals
        // nothing about the key (as the sealing key's fingerprint).
        let mut labelled = b"tether release token key fingerprint\0".to_vec();
        labelled.extend_from_slice(token_key);
        let token_key_fingerprint =
            hex::encode(&ring::digest::digest(&ring::digest::SHA256, &labelled).as_ref()[..16]);
        Ok(Self {
            public_key: STANDARD.encode(signing.public_key().as_ref()),
            signing,
            token_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token_key),
            token_key_fingerprint,
        })
    }

    /// The Ed25519 public key, 32 bytes in base64: what agents pin.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Tells this token key from another without revealing it.
    pub fn token_key_fingerprint(&self) -> &str {
        &self.token_key_fingerprint
    }

    /// The Ed25519 signature of `message`, 64 bytes in base64.
    pub fn sign(&self, message: &[u8]) -> String {
        STANDARD.encode(self.signing.sign(message).as_ref())
    }

    pub(super) fn token_key(&self) -> &ring::hmac::Key {
        &self.token_key
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    secret_file::write(path, bytes).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_and_read_back_the_same() {
        let dir = tempfile::tempdir().expect("dir");
        let first = ReleaseKeys::load_or_create(dir.path()).expect("created");
        let again = ReleaseKeys::load_or_create(dir.path()).expect("loaded");
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(first.token_key_fingerprint(), again.token_key_fingerprint());
        let signature = STANDARD.decode(first.sign(b"m")).expect("base64");
        let public = STANDARD.decode(again.public_key()).expect("base64");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
            .verify(b"m", &signature)
            .expect("verifies with the key read back");
    }

    #[test]
    fn a_damaged_key_file_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        ReleaseKeys::load_or_create(dir.path()).expect("created");
        std::fs::write(dir.path().join(SIGNING_KEY_FILE), b"junk").expect("write");
        let error = ReleaseKeys::load_or_create(dir.path())
            .err()
            .expect("refused");
        assert!(error.to_string().contains(SIGNING_KEY_FILE), "{error}");
    }
}
