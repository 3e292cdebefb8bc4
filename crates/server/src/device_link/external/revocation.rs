//! The revocation list an external broker reads: every unexpired device
//! certificate that is no longer its device's current or previous one.
//! Rewritten (whole, by rename) only when that set changes, so a broker
//! reloading on each change (`docs/operations/external-broker.md`) does not
//! reload for nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::pki::{CertificateAuthority, PkiError};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("could not read the retired certificates")]
    Store(#[from] StoreError),
    #[error("could not sign the revocation list")]
    Sign(#[from] PkiError),
    #[error("could not write the revocation list to {path}: check that tetherd may write there")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct RevocationList {
    store: Store,
    ca: Arc<CertificateAuthority>,
    path: PathBuf,
    /// What the file lists now; `None` until the first write.
    written: tokio::sync::Mutex<Option<Vec<String>>>,
}

impl RevocationList {
    pub fn new(store: Store, ca: Arc<CertificateAuthority>, path: PathBuf) -> Self {
        Self {
            store,
            ca,
            path,
            written: tokio::sync::Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the list if what it must hold changed; returns whether it
    /// wrote. Callers are serialized, so a later list never loses to an
    /// earlier one.
    pub async fn refresh(&self, now: DateTime<Utc>) -> Result<bool, RevocationError> {
        let mut written = self.written.lock().await;
        let serials = self.store.retired_certificate_serials(now).await?;
        if written.as_ref() == Some(&serials) && self.path.exists() {
            return Ok(false);
        }
        // Milliseconds make a number that grows across restarts too.
        let number = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        let pem = self.ca.revocation_list(&serials, number, now)?;
        write_whole(&self.path, pem.as_bytes()).map_err(|source| RevocationError::Write {
            path: self.path.clone(),
            source,
        })?;
        tracing::info!(path = %self.path.display(), revoked = serials.len(), "wrote the revocation list for the MQTT broker");
        *written = Some(serials);
        Ok(true)
    }

    /// Forgets expired certificates, which no longer need listing.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.store.delete_expired_issued_certificates(now).await
    }

    /// Keeps the list current: a renewal retires a certificate without
    /// telling the link, and expired ones leave the list.
    pub async fn refresh_forever(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(REFRESH_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = Utc::now();
            if let Err(error) = self.prune(now).await {
                tracing::error!(error = %crate::error_chain(&error), "could not forget expired certificates");
            }
            if let Err(error) = self.refresh(now).await {
                tracing::error!(error = %crate::error_chain(&error), "could not update the revocation list for the MQTT broker");
            }
        }
    }
}

const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes `bytes` to a temporary file beside `path` and renames it over
/// `path`, so a broker reading it never sees half a list. The list is
/// public (serials only) and the broker runs as another user: mode 0644.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
