//! One renewal request: the current certificate and a CSR signed with its
//! key to `POST /api/v1/renew`; the new certificate replaces `cert.pem`
//! atomically before anything uses it.

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use tether_proto::api::{ErrorBody, RenewRequest, RenewResponse};

use crate::clock::ServerClock;
use crate::state::{AgentConfig, Credentials, StateDir, StateError};
use crate::tls::{self, TlsError};

/// The CN is a placeholder: tetherd names the certificate after the device.
const CSR_COMMON_NAME: &str = "tether-agent";

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("key.pem holds no usable private key: enroll again")]
    Key(#[source] rcgen::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot reach {url}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Revoked, replaced, expired beyond the grace, or not a certificate
    /// tetherd issued: only a new enrollment helps.
    #[error("tetherd refused to renew the device certificate: {message}")]
    Refused { message: String },
    #[error("tetherd limits how often a device renews")]
    Limited { retry_after: Duration },
    #[error("{url} answered HTTP {status}: {message}")]
    Failed {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("{url} answered with something that is not a RenewResponse")]
    BadResponse {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot store the renewed certificate")]
    Store(#[from] StateError),
}

/// Renews the certificate in `credentials` and stores the new one in
/// `state`; returns the credentials with it.
pub async fn renew(
    credentials: &Credentials,
    state: &StateDir,
    clock: &std::sync::Arc<ServerClock>,
) -> Result<Credentials, RenewError> {
    let key = rcgen::KeyPair::from_pem(&credentials.key_pem).map_err(RenewError::Key)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CSR_COMMON_NAME);
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(RenewError::Key)?;
    let client = tls::https_client(&credentials.ca_pem, clock.clone())?;
    let url = format!("{}/api/v1/renew", credentials.api_url);
    let sent = Utc::now();
    let response = client
        .post(&url)
        .json(&RenewRequest {
            certificate_pem: credentials.cert_pem.clone(),
            csr_pem,
        })
        .send()
        .await
        .map_err(|source| RenewError::Connect {
            url: url.clone(),
            source,
        })?;
    let received = Utc::now();
    clock.learn_from_date_header(response.headers(), sent, received);
    let status = response.status();
    if !status.is_success() {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        return Err(refusal(url, status, &body, retry_after));
    }
    let renewed: RenewResponse =
        response
            .json()
            .await
            .map_err(|source| RenewError::BadResponse {
                url: url.clone(),
                source,
            })?;
    clock.learn(renewed.server_time, sent, received);
    state.store_certificate(&renewed.certificate_pem)?;
    tracing::info!(
        "renewed the device certificate; valid until {} (tetherd's time)",
        renewed.not_after
    );
    let mut updated = Credentials {
        cert_pem: renewed.certificate_pem,
        ..credentials.clone()
    };
    if !renewed.mqtt_urls.is_empty() && renewed.mqtt_urls != credentials.mqtt_urls {
        updated.mqtt_urls = renewed.mqtt_urls;
        // The certificate is stored already; an old list only delays failover.
        if let Err(error) = state.store_config(&AgentConfig::of(&updated)) {
            tracing::warn!(
                "cannot store the cluster's MQTT endpoints: {}",
                crate::actions::chain(&error)
            );
        }
        tracing::info!(endpoints = ?updated.mqtt_urls, "learned the cluster's MQTT endpoints");
    }
    Ok(updated)
}

/// Maps a non-2xx answer to what the agent should do about it.
fn refusal(
    url: String,
    status: StatusCode,
    body: &str,
    retry_after: Option<Duration>,
) -> RenewError {
    let message = serde_json::from_str::<ErrorBody>(body)
        .map(|e| e.error.message)
        .unwrap_or_else(|_| body.chars().take(200).collect());
    match status {
        // 401: the certificate itself was refused (not this CA's, not a
        // device's); asking again with it cannot help either.
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => RenewError::Refused { message },
        StatusCode::TOO_MANY_REQUESTS => RenewError::Limited {
            retry_after: retry_after.unwrap_or(Duration::from_secs(60)),
        },
        _ => RenewError::Failed {
            url,
            status,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_tetherds_reason_and_a_limit_its_delay() {
        let body = r#"{"error":{"code":"reenrollment_required","message":"device edge-1's certificate expired on 2026-01-01 00:00:00 UTC and the renewal grace ended on 2026-04-01 00:00:00 UTC: re-enroll it with a token from `tether devices enrollment-token edge-1`"}}"#;
        let error = refusal("u".into(), StatusCode::FORBIDDEN, body, None);
        let message = error.to_string();
        assert!(message.contains("expired on 2026-01-01"), "{message}");
        assert!(message.contains("re-enroll"), "{message}");
        assert!(matches!(
            refusal("u".into(), StatusCode::TOO_MANY_REQUESTS, "", Some(Duration::from_secs(7))),
            RenewError::Limited { retry_after } if retry_after == Duration::from_secs(7)
        ));
        assert!(matches!(
            refusal("u".into(), StatusCode::UNAUTHORIZED, "", None),
            RenewError::Refused { .. }
        ));
        assert!(matches!(
            refusal("u".into(), StatusCode::BAD_GATEWAY, "oops", None),
            RenewError::Failed { .. }
        ));
    }
}
