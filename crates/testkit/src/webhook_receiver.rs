//! A real HTTP server on loopback that receives tetherd's alert webhooks
//! as an operator's receiver should: it checks `X-Tether-Signature` (the
//! HMAC-SHA256 with the shared secret of `<X-Tether-Timestamp>.<body>`)
//! and the timestamp's age, answers 401 to a request that fails either,
//! can be told to answer an error to the next requests, and records every
//! request with its arrival time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

/// Older timestamps are refused as replays, as the operations guide advises.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    /// `X-Tether-Delivery`.
    pub delivery: String,
    /// `X-Tether-Event`.
    pub event: String,
    pub body: Value,
    /// The signature matched the body and timestamp, and the timestamp was fresh.
    pub verified: bool,
    /// What the receiver answered.
    pub status: u16,
}

struct Shared {
    secret: Vec<u8>,
    /// Answers to give before succeeding again: (status, how many left).
    failing: Mutex<(u16, usize)>,
    arrivals: Mutex<Vec<Arrival>>,
}

pub struct WebhookReceiver {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Listens on `127.0.0.1:0` for webhooks signed with `secret`.
    pub async fn start(secret: &[u8]) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the webhook receiver")?;
        let url = format!("http://{}/hooks/tether", listener.local_addr()?);
        let shared = Arc::new(Shared {
            secret: secret.to_vec(),
            failing: Mutex::new((500, 0)),
            arrivals: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/hooks/tether", axum::routing::post(receive))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, shared, task })
    }

    /// Answers `status` to the next `count` correctly signed requests.
    pub fn fail_next(&self, count: usize, status: u16) {
        *self.shared.failing.lock().expect("lock") = (status, count);
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals.lock().expect("lock").clone()
    }

    /// Waits until `count` requests arrived and returns them all.
    pub async fn wait_for(&self, count: usize, deadline: Duration) -> anyhow::Result<Vec<Arrival>> {
        crate::wait_until(
            &format!("{count} webhook request(s) at {}", self.url),
            deadline,
            || {
                let arrivals = self.arrivals();
                async move { Ok((arrivals.len() >= count).then_some(arrivals)) }
            },
        )
        .await
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Whether `signature` is `sha256=<hex>` of `<timestamp>.<body>` with
/// `secret`, compared in constant time, and the timestamp is fresh.
pub fn verify(secret: &[u8], timestamp: &str, signature: &str, body: &[u8]) -> bool {
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return false;
    };
    let age = chrono::Utc::now().timestamp() - seconds;
    if age.unsigned_abs() > MAX_AGE.as_secs() {
        return false;
    }
    let Some(Ok(tag)) = signature.strip_prefix("sha256=").map(hex::decode) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    ring::hmac::verify(&key, &signed, &tag).is_ok()
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Instant::now();
    let verified = verify(
        &shared.secret,
        &header(&headers, "x-tether-timestamp"),
        &header(&headers, "x-tether-signature"),
        &body,
    );
    let status = if !verified {
        StatusCode::UNAUTHORIZED
    } else {
        let mut failing = shared.failing.lock().expect("lock");
        if failing.1 > 0 {
            failing.1 -= 1;
            StatusCode::from_u16(failing.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        } else {
            StatusCode::NO_CONTENT
        }
    };
    shared.arrivals.lock().expect("lock").push(Arrival {
        at,
        delivery: header(&headers, "x-tether-delivery"),
        event: header(&headers, "x-tether-event"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified,
        status: status.as_u16(),
    });
    status
}
