//! Keeps the device's client certificate valid: renews it at about two
//! thirds of its life (with jitter, so a fleet enrolled together does not
//! renew together), judged by tetherd's clock. The key stays on the device:
//! the request is the current certificate and a CSR for the same key, signed
//! with it. A certificate that expired while the device was off renews
//! within tetherd's grace period; after it, or once revoked, the agent says
//! it must be enrolled again and only retries slowly.

mod request;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::clock::ServerClock;
use crate::state::{Credentials, StateDir};

pub use request::{RenewError, renew};

/// After a refusal only re-enrollment helps; asking again now and then
/// notices an operator who restored the device instead.
const REFUSED_RETRY: Duration = Duration::from_secs(3600);
/// The wall clock and the offset to tetherd can change while waiting.
const MAX_SLEEP: Duration = Duration::from_secs(600);

/// When the certificate is valid, read from its PEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Reads the first certificate of `cert_pem` with `read`.
fn read_certificate<T>(
    cert_pem: &str,
    read: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> Option<T>,
) -> Option<T> {
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    read(&cert)
}

/// The serial of the certificate in `cert_pem`, as tetherd writes it: the
/// hex of its DER bytes.
pub fn serial_hex(cert_pem: &str) -> Option<String> {
    read_certificate(cert_pem, |cert| Some(hex::encode(cert.raw_serial())))
}

impl Validity {
    pub fn of(cert_pem: &str) -> Option<Self> {
        read_certificate(cert_pem, |cert| {
            let validity = cert.validity();
            Some(Self {
                not_before: DateTime::from_timestamp(validity.not_before.timestamp(), 0)?,
                not_after: DateTime::from_timestamp(validity.not_after.timestamp(), 0)?,
            })
        })
    }

    /// When to renew, `random` in `[0, 1)` choosing the jitter.
    pub fn renew_at(&self, random: f64) -> DateTime<Utc> {
        tether_proto::certificate::renewal_time(self.not_before, self.not_after, random)
    }

    fn life(&self) -> Duration {
        (self.not_after - self.not_before)
            .to_std()
            .unwrap_or_default()
    }
}

/// How long to wait between failed attempts: short against the life so
/// several tries fit before expiry, never spinning.
fn retry_backoff(validity: Validity) -> Backoff {
    let life = validity.life();
    Backoff::new(
        (life / 40).clamp(Duration::from_secs(1), Duration::from_secs(60)),
        (life / 8).clamp(Duration::from_secs(2), Duration::from_secs(3600)),
    )
}

/// Renews the device's certificate whenever it is due, for as long as the
/// agent runs, publishing each renewed set of credentials on `renewed`.
pub struct Renewal {
    pub state: StateDir,
    pub clock: Arc<ServerClock>,
}

impl Renewal {
    /// Renews now if the certificate has expired by tetherd's clock (the
    /// device was off, or its clock is wrong): connecting with it would
    /// fail. Returns once the credentials are usable, retrying meanwhile.
    pub async fn ensure_current(&self, credentials: Credentials) -> Credentials {
        let issued = Validity::of(&credentials.cert_pem).map(|validity| validity.not_before);
        if let Err(error) = crate::tls::learn_server_time(
            &credentials.api_url,
            &credentials.ca_pem,
            issued,
            &self.clock,
        )
        .await
        {
            tracing::warn!(
                "cannot ask tetherd at {} for the time; judging certificates by this device's clock: {}",
                credentials.api_url,
                crate::actions::chain(&error)
            );
        }
        let Some(validity) = Validity::of(&credentials.cert_pem) else {
            return credentials;
        };
        if self.clock.now() < validity.not_after {
            return credentials;
        }
        tracing::warn!(
            "the device certificate expired on {} (tetherd's time); renewing before connecting",
            validity.not_after
        );
        self.renew_until_done(credentials, validity).await
    }

    /// Renews at each due time, forever.
    pub async fn run(&self, mut credentials: Credentials, renewed: watch::Sender<Credentials>) {
        loop {
            let Some(validity) = Validity::of(&credentials.cert_pem) else {
                tracing::error!(
                    "cert.pem in {} holds no readable certificate; cannot schedule its renewal: enroll again",
                    self.state.path().display()
                );
                // The session carries on with the certificate it has.
                return std::future::pending().await;
            };
            let due = validity.renew_at(rand::random());
            tracing::info!(
                "device certificate valid until {}; renewing at {} (tetherd's time)",
                validity.not_after,
                due
            );
            loop {
                let now = self.clock.now();
                if now >= due {
                    break;
                }
                let wait = (due - now).to_std().unwrap_or_default().min(MAX_SLEEP);
                tokio::time::sleep(wait).await;
            }
            credentials = self.renew_until_done(credentials, validity).await;
            // The session is gone only at shutdown, when this task ends too.
            let _ = renewed.send(credentials.clone());
        }
    }

    async fn renew_until_done(&self, credentials: Credentials, validity: Validity) -> Credentials {
        let mut backoff = retry_backoff(validity);
        loop {
            let error = match renew(&credentials, &self.state, &self.clock).await {
                Ok(renewed) => return renewed,
                Err(error) => error,
            };
            let delay = match &error {
                RenewError::Refused { .. } => REFUSED_RETRY,
                RenewError::Limited { retry_after } => *retry_after,
                _ => backoff.next_delay(rand::random()),
            };
            match &error {
                RenewError::Refused { .. } => tracing::error!(
                    "{}; to re-enroll, stop the agent, remove {} and start it with the command `tether devices enrollment-token {}` prints; asking again in {} min",
                    crate::actions::chain(&error),
                    self.state.path().display(),
                    credentials.device,
                    delay.as_secs() / 60
                ),
                _ => tracing::warn!(
                    "cannot renew the device certificate (valid until {}): {}; retrying in {:.1} s",
                    validity.not_after,
                    crate::actions::chain(&error),
                    delay.as_secs_f64()
                ),
            }
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validity_is_read_from_the_certificate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["edge-1".into()]).expect("params");
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1_000).expect("time");
        params.not_after = time::OffsetDateTime::from_unix_timestamp(4_000).expect("time");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0xab, 0xff]));
        let cert = params.self_signed(&key).expect("signs");
        assert_eq!(serial_hex(&cert.pem()).as_deref(), Some("01abff"));
        assert!(serial_hex("not a certificate").is_none());
        let validity = Validity::of(&cert.pem()).expect("readable");
        let at = |s| DateTime::from_timestamp(s, 0).expect("valid");
        assert_eq!(
            validity,
            Validity {
                not_before: at(1_000),
                not_after: at(4_000)
            }
        );
        assert_eq!(validity.renew_at(0.5), at(3_000));
        assert!(Validity::of("not a certificate").is_none());
    }

    #[test]
    fn retries_fit_many_times_into_a_short_life_and_stay_sane_for_a_long_one() {
        let at = |s| DateTime::from_timestamp(s, 0).expect("valid");
        let short = Validity {
            not_before: at(0),
            not_after: at(30),
        };
        assert_eq!(retry_backoff(short).next_delay(1.0), Duration::from_secs(1));
        let year = Validity {
            not_before: at(0),
            not_after: at(365 * 86_400),
        };
        let mut backoff = retry_backoff(year);
        assert_eq!(backoff.next_delay(1.0), Duration::from_secs(60));
        let longest = (0..20)
            .map(|_| backoff.next_delay(1.0))
            .max()
            .expect("some");
        assert_eq!(longest, Duration::from_secs(3600));
    }
}
