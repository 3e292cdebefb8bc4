//! Sends alerts where operators already look: signed webhooks and
//! Alertmanager (issue 18, ADR 0032, `docs/operations/alerts.md`).
//!
//! Every change of an alert is queued per receiver in the transaction of
//! the change (`store::alert_deliveries`). [`Delivery::run`] is one pass of
//! the sender, run by one replica at a time (`cluster::singleton`) with the
//! clock it is given: it takes each due delivery with a conditional update
//! (so an overlapping old leader cannot send the same attempt), sends it,
//! and records the result the pure [`retry::after_attempt`] decides.

pub mod alertmanager;
pub mod config;
pub mod retry;
pub mod webhook;

pub use config::{AlertmanagerConfig, DeliveryConfig, FileAlerts, WebhookConfig};

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tether_proto::alerts::Alert;

use self::alertmanager::Alertmanager;
use self::retry::{Failure, RetryPolicy};
use self::webhook::Webhook;
use crate::observability::Observability;
use crate::store::{AlertFilter, AlertStates, AttemptResult, QueuedDelivery, Store, StoreError};

/// Deliveries one receiver is sent per pass, at most.
const BATCH: u32 = 100;
/// Active alerts per `POST` when they are sent to Alertmanager again.
const RESEND_BATCH: u32 = 500;
/// How long a taken delivery is left to its sender before another pass may
/// try it again (the sender died mid-request): longer than a request lasts.
const LEASE: Duration = Duration::from_secs(60);
/// How long one pass sends to one webhook before it leaves the rest to the
/// next pass: well inside `LEASE`, so no claimed delivery outlives it.
const PASS_BUDGET: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a refusal's body kept as the delivery's error.
const ERROR_BODY_CHARS: usize = 200;
/// The shortest webhook secret accepted.
const MIN_SECRET_BYTES: usize = 16;
/// The system's trusted roots, unless `SSL_CERT_FILE` names others.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("could not read the secret_file {path} of webhook {receiver}")]
    ReadSecret {
        receiver: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the secret_file {path} of webhook {receiver} has mode {mode:03o}: other users may read it; run `chmod 600 {path}`"
    )]
    SecretReadable {
        receiver: String,
        path: PathBuf,
        mode: u32,
    },
    #[error(
        "the secret_file {path} of webhook {receiver} holds fewer than {MIN_SECRET_BYTES} bytes; write a long random secret, e.g. `openssl rand -hex 32 > {path}`"
    )]
    SecretShort { receiver: String, path: PathBuf },
    #[error("could not read the ca_file {path} of alert receiver {receiver}")]
    ReadCa {
        receiver: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ca_file {path} of alert receiver {receiver} holds no PEM certificate")]
    BadCa { receiver: String, path: PathBuf },
    #[error("could not set up the HTTP client of alert receiver {receiver}")]
    Client {
        receiver: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("could not record the configured alert receivers")]
    Store(#[from] StoreError),
}

/// Which tetherd sent a delivery: in every webhook's body, and the base of
/// Alertmanager's `generatorURL`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// The replica's id (`replica-id` in its data dir).
    pub replica: String,
    /// Where its API is reached.
    pub api_url: String,
}

enum Receiver {
    Webhook(Webhook),
    Alertmanager(Alertmanager),
}

impl Receiver {
    fn name(&self) -> &str {
        match self {
            Receiver::Webhook(webhook) => &webhook.name,
            Receiver::Alertmanager(alertmanager) => &alertmanager.name,
        }
    }
}

pub struct Delivery {
    store: Store,
    receivers: Vec<Receiver>,
    retry: RetryPolicy,
    source: Source,
    observability: Arc<Observability>,
    /// When each Alertmanager was last sent the active alerts; empty on a
    /// new leader, which sends them at once.
    resent: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Delivery {
    /// Reads the secrets and CA files, and records the configured
    /// receivers as those later changes are queued for.
    pub async fn start(
        config: &DeliveryConfig,
        store: Store,
        source: Source,
        observability: Arc<Observability>,
        now: DateTime<Utc>,
    ) -> Result<Self, DeliveryError> {
        let mut receivers = Vec::new();
        for webhook in &config.webhooks {
            let secret = read_secret(&webhook.name, &webhook.secret_file)?;
            let client = client(&webhook.name, webhook.ca_file.as_deref())?;
            receivers.push(Receiver::Webhook(Webhook::new(
                webhook.name.clone(),
                webhook.url.clone(),
                secret,
                client,
            )));
        }
        for alertmanager in &config.alertmanagers {
            let client = client(&alertmanager.name, alertmanager.ca_file.as_deref())?;
            receivers.push(Receiver::Alertmanager(Alertmanager::new(
                alertmanager.name.clone(),
                &alertmanager.url,
                alertmanager.resend,
                client,
            )));
        }
        let changed = store
            .set_alert_receivers(&config.receiver_names(), &config.retired_receivers, now)
            .await?;
        if !changed.added.is_empty() || !changed.removed.is_empty() {
            tracing::info!(
                added = ?changed.added,
                removed = ?changed.removed,
                abandoned = changed.abandoned,
                "alert receivers changed: new alert changes go to the receivers now configured"
            );
        }
        Ok(Self {
            store,
            receivers,
            retry: config.retry,
            source,
            observability,
            resent: Mutex::new(HashMap::new()),
        })
    }

    /// One pass: every receiver is sent what is due at `now`, side by side.
    pub async fn run(&self, now: DateTime<Utc>) {
        futures::future::join_all(
            self.receivers
                .iter()
                .map(|receiver| self.serve(receiver, now)),
        )
        .await;
    }

    async fn serve(&self, receiver: &Receiver, now: DateTime<Utc>) {
        let name = receiver.name();
        if let Err(error) = self.send_due(receiver, now).await {
            tracing::warn!(receiver = name, error = %crate::error_chain(&error), "could not send the alert deliveries due");
        }
        if let Receiver::Alertmanager(alertmanager) = receiver {
            self.resend_active(alertmanager, now).await;
        }
    }

    async fn send_due(&self, receiver: &Receiver, now: DateTime<Utc>) -> Result<(), StoreError> {
        // `now` advanced by what this pass has taken so far: when an
        // attempt is sent, and when it ended.
        let began = std::time::Instant::now();
        let at = move || now + chrono::Duration::from_std(began.elapsed()).unwrap_or_default();
        let due = self
            .store
            .due_alert_deliveries(receiver.name(), now, BATCH)
            .await?;
        let lease_until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
        if let Receiver::Webhook(webhook) = receiver {
            return self.send_to_webhook(webhook, due, at, lease_until).await;
        }
        let mut taken = Vec::with_capacity(due.len());
        for delivery in due {
            if self
                .store
                .claim_alert_delivery(&delivery.id, delivery.attempts, lease_until)
                .await?
            {
                taken.push(delivery);
            }
        }
        if let Receiver::Alertmanager(alertmanager) = receiver
            && !taken.is_empty()
        {
            // Alertmanager keeps state, not events: it is sent each alert
            // as it is now, so a late change cannot undo a newer one.
            let mut alerts = Vec::with_capacity(taken.len());
            for delivery in &taken {
                alerts.push(self.store.get_alert(delivery.alert.id).await?);
            }
            let failure = alertmanager
                .send(&alerts, &self.source.api_url, at())
                .await
                .err();
            let ended_at = at();
            for delivery in &taken {
                self.record(receiver.name(), delivery, failure.clone(), ended_at)
                    .await?;
            }
        }
        Ok(())
    }

    /// Sends a webhook its due deliveries one at a time, each claimed just
    /// before it is sent and signed when it is sent. A receiver that fails
    /// for a reason that may pass (down, slow, 5xx) is left until its next
    /// retry instead of being tried with every delivery of the batch, and a
    /// batch stops at `PASS_BUDGET`: a hanging receiver costs one timeout a
    /// pass, and the others' passes are not held up behind it.
    async fn send_to_webhook(
        &self,
        webhook: &Webhook,
        due: Vec<QueuedDelivery>,
        at: impl Fn() -> DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        for delivery in due {
            if started.elapsed() >= PASS_BUDGET {
                break;
            }
            if !self
                .store
                .claim_alert_delivery(&delivery.id, delivery.attempts, lease_until)
                .await?
            {
                continue;
            }
            let failure = webhook.send(&delivery, &self.source, at()).await.err();
            let transient = matches!(failure, Some(Failure::Transient(_)));
            // The wait before a retry counts from the attempt's end: a
            // receiver that took its whole timeout to fail still gets it.
            self.record(&webhook.name, &delivery, failure, at()).await?;
            if transient {
                break;
            }
        }
        Ok(())
    }

    async fn record(
        &self,
        receiver: &str,
        delivery: &QueuedDelivery,
        failure: Option<Failure>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let attempt = delivery.attempts + 1;
        let result = retry::after_attempt(&self.retry, attempt, failure, now, rand::random());
        let outcome = match &result {
            AttemptResult::Delivered => "delivered",
            AttemptResult::RetryAt { at, error } => {
                tracing::info!(receiver, delivery = %delivery.id, attempt, retry_at = %at, error, "an alert delivery failed; retrying later");
                "failed"
            }
            AttemptResult::Dead { error } => {
                tracing::warn!(receiver, delivery = %delivery.id, attempt, error, "gave up an alert delivery; it is listed with GET /api/v1/alerts/deliveries?state=dead");
                "dead"
            }
        };
        self.observability.alert_delivered(receiver, outcome);
        self.store
            .record_alert_attempt(&delivery.id, attempt, &result, now)
            .await
    }

    /// Sends Alertmanager every active alert again once per its resend
    /// interval, so none expires there while it lasts here. A failure is
    /// counted and tried again at the next pass.
    async fn resend_active(&self, alertmanager: &Alertmanager, now: DateTime<Utc>) {
        let due = {
            let resent = self.resent.lock().unwrap_or_else(|e| e.into_inner());
            resent.get(&alertmanager.name).is_none_or(|last| {
                now.signed_duration_since(*last)
                    .to_std()
                    .unwrap_or_default()
                    >= alertmanager.resend
            })
        };
        if !due {
            return;
        }
        match self.send_active(alertmanager, now).await {
            Ok(()) => {
                self.resent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(alertmanager.name.clone(), now);
            }
            Err(error) => {
                self.observability
                    .alert_delivered(&alertmanager.name, "failed");
                tracing::warn!(
                    receiver = alertmanager.name,
                    error,
                    "could not send the active alerts to Alertmanager again; retrying at the next pass"
                );
            }
        }
    }

    async fn send_active(
        &self,
        alertmanager: &Alertmanager,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let active = AlertFilter {
            states: AlertStates::Active,
            device: None,
            rule: None,
        };
        let mut before = None;
        loop {
            let page: Vec<Alert> = self
                .store
                .list_alerts(&active, before, RESEND_BATCH)
                .await
                .map_err(|error| crate::error_chain(&error))?;
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            alertmanager
                .send(&page, &self.source.api_url, now)
                .await
                .map_err(|failure| match failure {
                    Failure::Transient(error) | Failure::Refused(error) => error,
                })?;
            self.observability
                .alert_delivered(&alertmanager.name, "delivered");
            if page.len() < RESEND_BATCH as usize {
                break;
            }
        }
        Ok(())
    }
}

/// The result of a request as a delivery sees it.
async fn outcome(sent: Result<reqwest::Response, reqwest::Error>) -> Result<(), Failure> {
    // reqwest's error names the URL, which may hold a token: left out.
    let response =
        sent.map_err(|error| Failure::Transient(crate::error_chain(&error.without_url())))?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let detail: String = body.trim().chars().take(ERROR_BODY_CHARS).collect();
    match Failure::from_status(status, &detail) {
        None => Ok(()),
        Some(failure) => Err(failure),
    }
}

fn read_secret(receiver: &str, path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, DeliveryError> {
    let read_error = |source| DeliveryError::ReadSecret {
        receiver: receiver.to_owned(),
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(read_error)?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(DeliveryError::SecretReadable {
            receiver: receiver.to_owned(),
            path: path.to_owned(),
            mode,
        });
    }
    let mut contents = zeroize::Zeroizing::new(std::fs::read(path).map_err(read_error)?);
    while contents.last().is_some_and(u8::is_ascii_whitespace) {
        contents.pop();
    }
    if contents.len() < MIN_SECRET_BYTES {
        return Err(DeliveryError::SecretShort {
            receiver: receiver.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(contents)
}

/// An HTTP client trusting the system's roots and the receiver's CA file.
/// Redirects are not followed: a receiver that moved is a refusal with its
/// status, not a silent detour.
fn client(receiver: &str, ca_file: Option<&Path>) -> Result<reqwest::Client, DeliveryError> {
    // reqwest's rustls needs a crypto provider; tetherd picks ring at start
    // already, and an earlier choice stands.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    let system = std::env::var_os("SSL_CERT_FILE").unwrap_or_else(|| SYSTEM_ROOTS.into());
    // A host without a bundle only trusts the receivers' own CA files.
    let system_pem = std::fs::read(&system).unwrap_or_default();
    for cert in reqwest::Certificate::from_pem_bundle(&system_pem).unwrap_or_default() {
        builder = builder.add_root_certificate(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| DeliveryError::ReadCa {
            receiver: receiver.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default();
        if certs.is_empty() {
            return Err(DeliveryError::BadCa {
                receiver: receiver.to_owned(),
                path: path.to_owned(),
            });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|source| DeliveryError::Client {
        receiver: receiver.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_others_may_read_or_too_short_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hook.secret");
        std::fs::write(&path, "0123456789abcdef0123\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = read_secret("ops", &path).expect_err("mode 644");
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            read_secret("ops", &path).expect("mode 600").as_slice(),
            b"0123456789abcdef0123"
        );
        std::fs::write(&path, "short\n").expect("write");
        let error = read_secret("ops", &path).expect_err("too short");
        assert!(error.to_string().contains("openssl rand"), "{error}");
    }
}
