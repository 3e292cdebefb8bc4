//! Fetching tetherd's release signing key when none is pinned:
//! `GET /api/v1/device/release-signing-key` on the tetherd the agent
//! enrolled with, its certificate checked against the pinned CA. The key
//! comes from tetherd's key file, not from its database as the spec does
//! (review M5), so whoever can write the database cannot pin a key of
//! their own on the agent.

use std::sync::Arc;

use base64::Engine as _;
use tether_proto::desired::resources::ReleaseSigningKey;

use crate::clock::ServerClock;
use crate::tls::{self, TlsError};

/// tetherd's route for it.
pub const PATH: &str = "/api/v1/device/release-signing-key";

#[derive(Debug, thiserror::Error)]
pub enum FetchKeyError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot reach {url}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} answered with something that is not an Ed25519 public key in base64")]
    BadKey { url: String },
}

/// tetherd's release signing key (base64 of the 32 bytes).
pub async fn fetch(
    api_url: &str,
    ca_pem: &str,
    clock: Arc<ServerClock>,
) -> Result<String, FetchKeyError> {
    let url = format!("{}{PATH}", api_url.trim_end_matches('/'));
    let request = |source| FetchKeyError::Request {
        url: url.clone(),
        source,
    };
    let response = tls::https_client(ca_pem, clock)?
        .get(&url)
        .send()
        .await
        .map_err(request)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(FetchKeyError::Status {
            url,
            status: status.as_u16(),
            body: body.chars().take(200).collect(),
        });
    }
    let key: ReleaseSigningKey = response.json().await.map_err(request)?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.signing_key.trim());
    if decoded.map_or(true, |bytes| bytes.len() != 32) {
        return Err(FetchKeyError::BadKey { url });
    }
    Ok(key.signing_key.trim().to_owned())
}
