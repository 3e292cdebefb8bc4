//! Webhooks: each change of an alert as one signed JSON `POST`
//! (`docs/operations/alerts.md`).
//!
//! The receiver checks `X-Tether-Signature: sha256=<hex>`, the HMAC-SHA256
//! with the webhook's secret of `<X-Tether-Timestamp>.<body>`: the
//! timestamp (Unix seconds) is signed with the body, so a captured request
//! replayed later is recognised by its age, and `X-Tether-Delivery` (the
//! same on every attempt of one delivery) recognises a repeat.

use chrono::{DateTime, Utc};
use ring::hmac;
use serde::Serialize;
use tether_proto::alerts::{Alert, AlertState};

use super::Source;
use super::retry::Failure;
use crate::store::QueuedDelivery;

pub const SIGNATURE_HEADER: &str = "x-tether-signature";
pub const TIMESTAMP_HEADER: &str = "x-tether-timestamp";
pub const DELIVERY_HEADER: &str = "x-tether-delivery";
pub const EVENT_HEADER: &str = "x-tether-event";

/// The JSON body of a webhook.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Body<'a> {
    /// The delivery's id, as in `X-Tether-Delivery`.
    pub delivery: &'a str,
    /// The state the alert entered.
    pub event: AlertState,
    pub alert: &'a Alert,
    /// Which tetherd sent it.
    pub source: &'a Source,
}

/// `sha256=<hex>` of `<timestamp>.<body>` with `secret`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("sha256={}", hex::encode(context.sign().as_ref()))
}

pub struct Webhook {
    pub name: String,
    url: reqwest::Url,
    secret: zeroize::Zeroizing<Vec<u8>>,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(
        name: String,
        url: reqwest::Url,
        secret: zeroize::Zeroizing<Vec<u8>>,
        client: reqwest::Client,
    ) -> Self {
        Self {
            name,
            url,
            secret,
            client,
        }
    }

    /// Sends one delivery, signed at `now`.
    pub async fn send(
        &self,
        delivery: &QueuedDelivery,
        source: &Source,
        now: DateTime<Utc>,
    ) -> Result<(), Failure> {
        let body = serde_json::to_vec(&Body {
            delivery: &delivery.id,
            event: delivery.event,
            alert: &delivery.alert,
            source,
        })
        .map_err(|error| Failure::Refused(format!("could not encode the body: {error}")))?;
        let timestamp = now.timestamp();
        let request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(DELIVERY_HEADER, &delivery.id)
            .header(EVENT_HEADER, delivery.event.as_str())
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature(&self.secret, timestamp, &body))
            .body(body);
        super::outcome(request.send().await).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        // As `printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret` prints it.
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
        assert_ne!(
            signature(b"secret", 1_700_000_001, br#"{"a":1}"#),
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#)
        );
    }
}
