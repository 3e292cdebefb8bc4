//! The token Prometheus presents to scrape `/metrics`.
//!
//! A login session expires and belongs to a person; a scraper needs a
//! credential that lasts and can read nothing else. tetherd makes one on
//! first start, in the data dir with mode 0600, for the operator to give
//! Prometheus (`authorization: {credentials_file: …}`); replacing the file
//! and restarting tetherd rotates it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const METRICS_TOKEN_FILE: &str = "metrics-token";

#[derive(Debug, thiserror::Error)]
#[error("could not {action} the metrics scrape token {path}")]
pub struct TokenError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

pub struct ScrapeToken {
    digest: [u8; 32],
}

impl ScrapeToken {
    pub fn load_or_create(data_dir: &Path) -> Result<Self, TokenError> {
        let path = data_dir.join(METRICS_TOKEN_FILE);
        let token = match std::fs::read_to_string(&path) {
            Ok(token) => token,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let token = crate::auth::new_secret();
                crate::secret_file::write(&path, token.as_bytes()).map_err(|source| {
                    TokenError {
                        action: "write",
                        path: path.clone(),
                        source,
                    }
                })?;
                token
            }
            Err(source) => {
                return Err(TokenError {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        Ok(Self::new(token.trim()))
    }

    fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Compares digests, so the time taken says nothing about the token.
    pub fn admits(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented == self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_made_once_private_and_then_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = ScrapeToken::load_or_create(dir.path()).expect("created");
        let path = dir.path().join(METRICS_TOKEN_FILE);
        let written = std::fs::read_to_string(&path).expect("written");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("exists").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(first.admits(&written));
        assert!(!first.admits("guess"));
        let again = ScrapeToken::load_or_create(dir.path()).expect("loaded");
        assert!(again.admits(&written), "a restart keeps the token");
    }
}
