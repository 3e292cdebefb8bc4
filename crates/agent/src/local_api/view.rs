//! `GET /v1/identity`, `/v1/status` and `/v1/spec`: what local
//! applications may read about the device. The local API holds watch
//! receivers only: a read copies the current value and never waits for,
//! or holds up, the session that changes it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use super::Reply;
use crate::renewal::{Validity, serial_hex};
use crate::spec::StatusView;
use crate::state::Credentials;

/// Who the device is and where its controller is: what the agent's
/// credentials say, without the private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub device: String,
    /// tetherd's HTTPS API.
    pub api_url: String,
    /// tetherd's MQTT endpoints, in the order the agent tries them.
    pub mqtt_urls: Vec<String>,
    /// SHA-256 of the pinned CA certificate (DER), hex.
    pub ca_sha256: Option<String>,
    /// The device's client certificate; `None` if `cert.pem` is unreadable.
    pub certificate: Option<Certificate>,
    pub agent_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// Hex of the DER serial, as tetherd names it.
    pub serial: String,
    pub not_before: DateTime<Utc>,
    /// The agent renews it at about two thirds of its life.
    pub not_after: DateTime<Utc>,
}

impl Identity {
    pub fn of(credentials: &Credentials) -> Self {
        let certificate = serial_hex(&credentials.cert_pem)
            .zip(Validity::of(&credentials.cert_pem))
            .map(|(serial, validity)| Certificate {
                serial,
                not_before: validity.not_before,
                not_after: validity.not_after,
            });
        Self {
            device: credentials.device.to_string(),
            api_url: credentials.api_url.clone(),
            mqtt_urls: credentials.mqtt_urls.clone(),
            ca_sha256: tether_proto::ca::ca_fingerprint(&credentials.ca_pem).ok(),
            certificate,
            agent_version: crate::self_update::agent_version().to_owned(),
        }
    }
}

/// Keeps `identity` at the credentials in use: those of the start, then
/// each renewal's. Runs until the agent stops.
pub async fn follow_credentials(
    mut credentials: watch::Receiver<Credentials>,
    identity: watch::Sender<Option<Identity>>,
) {
    loop {
        let current = Identity::of(&credentials.borrow_and_update());
        identity.send_replace(Some(current));
        if credentials.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// What the local API reads from.
#[derive(Clone)]
pub struct DeviceView {
    /// `None` until the agent has enrolled.
    pub identity: watch::Receiver<Option<Identity>>,
    pub status: StatusView,
}

impl DeviceView {
    pub(super) fn identity(&self) -> Reply {
        match self.identity.borrow().clone() {
            Some(identity) => Reply::ok(identity),
            None => Reply::error(
                503,
                "the device has no identity yet: the agent has not enrolled with tetherd (see its log)",
            ),
        }
    }

    /// What the agent reports to tetherd: facts, the applied spec version
    /// and what could not be applied.
    pub(super) fn status(&self) -> Reply {
        Reply::ok(self.status.report())
    }

    /// The spec last received and applied, as tetherd sent it.
    pub(super) fn spec(&self) -> Reply {
        let applied = self.status.applied();
        Reply::ok(serde_json::json!({
            "version": applied.version,
            "spec": applied.spec,
        }))
    }
}
