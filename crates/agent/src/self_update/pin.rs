//! The release signing key this agent trusts, pinned in its state
//! directory: at enrollment from tetherd's answer when it names one, else
//! fetched from tetherd itself (`GET /api/v1/device/release-signing-key`,
//! its CA pinned) when the first release comes. Never from the spec: the
//! spec is rendered from tetherd's database, and whoever can write that
//! could otherwise name a key of their own (review M5). A release signed
//! by any other key than the pinned one is refused.

use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::state::write_atomic;

/// The pinned key's file in [`super::DIR`]: the key in base64, one line.
pub const KEY_FILE: &str = "signing-key";

/// How a release's key stands against the pinned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The release is signed with the pinned key.
    Pinned,
    /// Nothing is pinned yet: tetherd's key is fetched and pinned first,
    /// and the release checked against it.
    NonePinned,
    /// Signed with another key: refused, naming both.
    Mismatch { pinned: String, offered: String },
}

/// Compares a release's `offered` key with the `pinned` one. Both are
/// base64 as tetherd writes them; compared by their bytes, so padding or
/// whitespace differences do not matter.
pub fn check_key(pinned: Option<&str>, offered: &str) -> KeyCheck {
    let Some(pinned) = pinned else {
        return KeyCheck::NonePinned;
    };
    let bytes = |key: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .ok()
    };
    match (bytes(pinned), bytes(offered)) {
        (Some(a), Some(b)) if a == b => KeyCheck::Pinned,
        _ => KeyCheck::Mismatch {
            pinned: pinned.trim().to_owned(),
            offered: offered.trim().to_owned(),
        },
    }
}

/// The pinned key in `state_dir`.
#[derive(Debug, Clone)]
pub struct PinnedKey {
    path: PathBuf,
}

impl PinnedKey {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(super::DIR).join(KEY_FILE),
        }
    }

    /// The pinned key, if any. An unreadable file is an error, not "none
    /// pinned": that would let any key in on first use.
    pub fn load(&self) -> io::Result<Option<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(Some(text.trim().to_owned()).filter(|k| !k.is_empty())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Pins `key` (base64), replacing what was pinned.
    pub fn pin(&self, key: &str) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_atomic(&self.path, format!("{}\n", key.trim()).as_bytes(), 0o600)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_key_decides_and_a_missing_one_is_fetched_not_taken_from_the_release() {
        let key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let other = base64::engine::general_purpose::STANDARD.encode([2u8; 32]);
        assert_eq!(check_key(None, &key), KeyCheck::NonePinned);
        assert_eq!(check_key(Some(&format!("{key}\n")), &key), KeyCheck::Pinned);
        assert_eq!(
            check_key(Some(&key), &other),
            KeyCheck::Mismatch {
                pinned: key.clone(),
                offered: other
            }
        );
    }

    #[test]
    fn a_pinned_key_survives_in_the_state_dir() {
        let dir = tempfile::tempdir().expect("dir");
        let pinned = PinnedKey::new(dir.path());
        assert_eq!(pinned.load().expect("readable"), None);
        pinned.pin("a2V5\n").expect("pinned");
        assert_eq!(pinned.load().expect("readable").as_deref(), Some("a2V5"));
    }
}
