//! tetherd's own TLS certificate: issued at every start (so a changed
//! `public_hosts` or a certificate lost or expired while tetherd was down is
//! never served), renewed at two thirds of its life, and handed to every
//! listener, which swaps it without dropping a connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use super::{CertificateAuthority, PkiError, ServerCertificate};

/// A listener that serves the server certificate and can take a new one.
pub trait ReloadCertificate: Send + Sync {
    /// What to call it in the log.
    fn name(&self) -> &'static str;
    /// Starts serving the certificate chain and key now in these files. New
    /// handshakes use them; established connections carry on.
    fn reload<'a>(&'a self, cert: &'a Path, key: &'a Path) -> BoxFuture<'a, Result<(), String>>;
}

/// How long to wait after a failed renewal before trying again: long enough
/// not to spin, short enough to leave many tries before expiry.
fn retry_after(lifetime: Duration) -> Duration {
    (lifetime / 20).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// The wall clock can jump (NTP, suspend): wake at least this often to look.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Issues, reloads and renews the server certificate.
pub struct ServerCertificateRenewal {
    pub ca: Arc<CertificateAuthority>,
    pub dir: PathBuf,
    pub hosts: Vec<String>,
    pub lifetime: Duration,
}

impl ServerCertificateRenewal {
    pub fn issue(&self, now: DateTime<Utc>) -> Result<ServerCertificate, PkiError> {
        let issued =
            self.ca
                .issue_server_certificate(&self.dir, &self.hosts, self.lifetime, now)?;
        tracing::info!(
            not_after = %issued.not_after,
            renew_at = %renewal_due(&issued),
            "issued the server certificate"
        );
        Ok(issued)
    }

    /// Renews `current` at two thirds of its life, and each successor,
    /// reloading `listeners` each time. Runs until the task is dropped.
    pub async fn run(
        self,
        mut current: ServerCertificate,
        listeners: Vec<Arc<dyn ReloadCertificate>>,
    ) {
        loop {
            let due = renewal_due(&current);
            let now = Utc::now();
            if now < due {
                let wait = (due - now).to_std().unwrap_or_default().min(MAX_SLEEP);
                tokio::time::sleep(wait).await;
                continue;
            }
            match self.issue(Utc::now()) {
                Ok(issued) => {
                    for listener in &listeners {
                        match listener.reload(&issued.cert_path, &issued.key_path).await {
                            Ok(()) => tracing::info!(
                                listener = listener.name(),
                                "serving the renewed server certificate"
                            ),
                            Err(error) => tracing::error!(
                                listener = listener.name(),
                                %error,
                                "could not load the renewed server certificate; it keeps serving the previous one"
                            ),
                        }
                    }
                    current = issued;
                }
                Err(error) => {
                    let wait = retry_after(self.lifetime);
                    tracing::error!(
                        error = %crate::error_chain(&error),
                        expires = %current.not_after,
                        "could not renew the server certificate; retrying in {} s",
                        wait.as_secs()
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Two thirds into the certificate's life; tetherd is one process, so no
/// jitter.
fn renewal_due(certificate: &ServerCertificate) -> DateTime<Utc> {
    tether_proto::certificate::renewal_time(certificate.not_before, certificate.not_after, 0.5)
}
