//! A fake Alertmanager on loopback speaking the part of its v2 API tetherd
//! uses, `POST /api/v2/alerts`, and refusing with 400 what the real one
//! refuses: a body that is not an array of alerts, an alert without
//! labels, a label name outside `[a-zA-Z_][a-zA-Z0-9_]*`, a label or
//! annotation that is not a string, a time that is not RFC 3339, an end
//! before the start. Accepted alerts are recorded with their arrival.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// One alert as it was posted.
#[derive(Debug, Clone)]
pub struct PostedAlert {
    pub at: Instant,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub generator_url: Option<String>,
}

#[derive(Default)]
struct Shared {
    alerts: Mutex<Vec<PostedAlert>>,
    /// Refusals, with why, for a test to show.
    refused: Mutex<Vec<String>>,
}

pub struct FakeAlertmanager {
    /// The base URL, as an operator configures it.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAlertmanager {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake Alertmanager")?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/api/v2/alerts", axum::routing::post(post_alerts))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, shared, task })
    }

    /// Every alert accepted so far, in order of arrival.
    pub fn alerts(&self) -> Vec<PostedAlert> {
        self.shared.alerts.lock().expect("lock").clone()
    }

    /// Why requests were refused.
    pub fn refused(&self) -> Vec<String> {
        self.shared.refused.lock().expect("lock").clone()
    }

    /// Waits until an accepted alert satisfies `matches`, and returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        matches: impl Fn(&PostedAlert) -> bool,
    ) -> anyhow::Result<PostedAlert> {
        crate::wait_until(what, deadline, || {
            let found = self.alerts().into_iter().find(|alert| matches(alert));
            let refused = self.refused();
            async move {
                anyhow::ensure!(
                    refused.is_empty(),
                    "the fake Alertmanager refused: {refused:?}"
                );
                Ok(found)
            }
        })
        .await
    }
}

impl Drop for FakeAlertmanager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn strings(value: Option<&Value>, what: &str) -> Result<BTreeMap<String, String>, String> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let object = value
        .as_object()
        .ok_or_else(|| format!("{what} is not an object"))?;
    object
        .iter()
        .map(|(key, value)| {
            let text = value
                .as_str()
                .ok_or_else(|| format!("{what}.{key} is not a string"))?;
            Ok((key.clone(), text.to_owned()))
        })
        .collect()
}

fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn time(value: Option<&Value>, what: &str) -> Result<Option<DateTime<Utc>>, String> {
    match value {
        None => Ok(None),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
            .map(|time| Some(time.with_timezone(&Utc)))
            .map_err(|error| format!("{what} {text:?} is not RFC 3339: {error}")),
        Some(_) => Err(format!("{what} is not a string")),
    }
}

fn parse(body: &[u8], at: Instant) -> Result<Vec<PostedAlert>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|error| format!("not JSON: {error}"))?;
    let items = value
        .as_array()
        .ok_or("the body is not an array of alerts")?;
    items
        .iter()
        .map(|item| {
            let labels = strings(item.get("labels"), "labels")?;
            if labels.is_empty() {
                return Err("at least one label pair required".to_owned());
            }
            if let Some(bad) = labels.keys().find(|name| !valid_label_name(name)) {
                return Err(format!("invalid label name {bad:?}"));
            }
            let starts_at = time(item.get("startsAt"), "startsAt")?;
            let ends_at = time(item.get("endsAt"), "endsAt")?;
            if let (Some(start), Some(end)) = (starts_at, ends_at)
                && end < start
            {
                return Err("start time must be before end time".to_owned());
            }
            let generator_url = match item.get("generatorURL") {
                None => None,
                Some(Value::String(url)) => Some(url.clone()),
                Some(_) => return Err("generatorURL is not a string".to_owned()),
            };
            Ok(PostedAlert {
                at,
                labels,
                annotations: strings(item.get("annotations"), "annotations")?,
                starts_at,
                ends_at,
                generator_url,
            })
        })
        .collect()
}

async fn post_alerts(State(shared): State<Arc<Shared>>, body: Bytes) -> (StatusCode, String) {
    match parse(&body, Instant::now()) {
        Ok(alerts) => {
            shared.alerts.lock().expect("lock").extend(alerts);
            (StatusCode::OK, String::new())
        }
        Err(why) => {
            shared.refused.lock().expect("lock").push(why.clone());
            (StatusCode::BAD_REQUEST, why)
        }
    }
}
