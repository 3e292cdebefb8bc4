//! Action inputs hold secrets (passwords for backups, tokens for APIs) that
//! must reach the device but must not sit readable in the database. The full
//! input is sealed with a key kept in the data dir (mode 0600) and dropped
//! once the action is over; the stored record shows a redacted copy.

use std::path::Path;

use base64::Engine;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::secret_file;

pub const SEALING_KEY_FILE: &str = "sealing.key";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("could not read or create the sealing key {path}")]
    Key {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sealing key in {0} is not 32 bytes; restore it from a backup")]
    BadKey(std::path::PathBuf),
    #[error(
        "a sealed action input could not be opened: it was sealed with another key or is damaged"
    )]
    Open,
}

pub struct Sealer {
    key: LessSafeKey,
    fingerprint: String,
}

impl Sealer {
    pub fn load_or_create(data_dir: &Path) -> Result<Self, SealError> {
        let path = data_dir.join(SEALING_KEY_FILE);
        if !path.exists() {
            let key: [u8; 32] = rand::random();
            secret_file::write(&path, &key).map_err(|source| SealError::Key {
                path: path.clone(),
                source,
            })?;
        }
        let bytes = std::fs::read(&path).map_err(|source| SealError::Key {
            path: path.clone(),
            source,
        })?;
        Self::from_key(&bytes).ok_or(SealError::BadKey(path))
    }

    fn from_key(bytes: &[u8]) -> Option<Self> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).ok()?;
        // A hash of the key under a label of its own: it tells keys apart
        // (replicas must share one) and reveals nothing about the key.
        let mut labelled = b"tether sealing key fingerprint\0".to_vec();
        labelled.extend_from_slice(bytes);
        let fingerprint =
            hex::encode(&ring::digest::digest(&ring::digest::SHA256, &labelled).as_ref()[..16]);
        Some(Self {
            key: LessSafeKey::new(key),
            fingerprint,
        })
    }

    /// Tells this key from another without revealing it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// base64(nonce ‖ ciphertext ‖ tag)
    pub fn seal(&self, plaintext: &[u8]) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut buffer = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut buffer,
            )
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 sealing only fails past 256 GiB"));
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buffer);
        base64::engine::general_purpose::STANDARD.encode(sealed)
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SealError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| SealError::Open)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut buffer)
            .map_err(|_| SealError::Open)?;
        Ok(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_inputs_open_only_with_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = Sealer::load_or_create(dir.path()).expect("key");
        let sealed = sealer.seal(b"{\"password\":\"hunter2\"}");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(
            sealer.open(&sealed).expect("opens"),
            b"{\"password\":\"hunter2\"}"
        );

        let again = Sealer::load_or_create(dir.path()).expect("same key from disk");
        assert!(again.open(&sealed).is_ok());

        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = Sealer::load_or_create(other_dir.path()).expect("other key");
        assert!(matches!(other.open(&sealed), Err(SealError::Open)));
        assert!(matches!(sealer.open("not base64!"), Err(SealError::Open)));
    }
}
