//! Alertmanager through its v2 API: `POST {url}/api/v2/alerts` with an
//! array of alerts as Prometheus sends them (`docs/operations/alerts.md`).
//!
//! Alertmanager keeps an alert firing until its `endsAt`: an active alert
//! is sent with `endsAt` four re-send intervals ahead and sent again every
//! interval while it lasts, so it ends on its own if tetherd stops sending
//! (as Prometheus does); a resolved alert is sent with its `endsAt`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tether_proto::alerts::{Alert, AlertState};

use super::retry::Failure;
use crate::metrics::exposition::label_name;

/// The path of the v2 API's alerts, below the configured URL.
pub const ALERTS_PATH: &str = "api/v2/alerts";

/// How many re-send intervals an active alert's `endsAt` lies ahead.
const ENDS_AFTER_RESENDS: u32 = 4;

/// One alert as the v2 API's `postableAlert`.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `alert` as Alertmanager takes it: labels `alertname` (the rule),
/// `device` and `severity`, then the alert's own labels with their names
/// made to fit Prometheus' rules (which cannot replace the first three);
/// `generator_base` is tetherd's API URL.
pub fn postable(
    alert: &Alert,
    generator_base: &str,
    now: DateTime<Utc>,
    resend: Duration,
) -> PostableAlert {
    let mut labels: BTreeMap<String, String> = alert
        .labels
        .iter()
        .map(|(key, value)| (label_name(key), value.clone()))
        .collect();
    labels.insert("alertname".into(), alert.rule.clone());
    labels.insert("device".into(), alert.device.clone());
    labels.insert("severity".into(), alert.severity.as_str().into());
    let mut annotations = BTreeMap::from([
        ("summary".to_owned(), alert.summary.clone()),
        ("tether_state".to_owned(), alert.state.as_str().to_owned()),
    ]);
    if let Some(by) = &alert.acknowledged_by {
        annotations.insert("acknowledged_by".into(), by.clone());
    }
    let ends_at = match (alert.state, alert.resolved_at) {
        (AlertState::Resolved, Some(at)) => at,
        _ => {
            now + chrono::Duration::from_std(resend * ENDS_AFTER_RESENDS)
                .unwrap_or(chrono::Duration::MAX)
        }
    };
    PostableAlert {
        labels,
        annotations,
        starts_at: rfc3339(alert.started_at),
        ends_at: rfc3339(ends_at),
        generator_url: format!(
            "{}/api/v1/alerts/{}",
            generator_base.trim_end_matches('/'),
            alert.id
        ),
    }
}

/// Where alerts are posted below Alertmanager's base `url`.
pub fn alerts_url(url: &reqwest::Url) -> reqwest::Url {
    let mut alerts = url.clone();
    alerts.set_path(&format!(
        "{}/{ALERTS_PATH}",
        url.path().trim_end_matches('/')
    ));
    alerts
}

pub struct Alertmanager {
    pub name: String,
    alerts_url: reqwest::Url,
    pub resend: Duration,
    client: reqwest::Client,
}

impl Alertmanager {
    /// `url` is Alertmanager's base URL (`https://am.example:9093`, or
    /// with a path prefix it is served under).
    pub fn new(
        name: String,
        url: &reqwest::Url,
        resend: Duration,
        client: reqwest::Client,
    ) -> Self {
        Self {
            name,
            alerts_url: alerts_url(url),
            resend,
            client,
        }
    }

    pub async fn send(
        &self,
        alerts: &[Alert],
        generator_base: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Failure> {
        let body: Vec<PostableAlert> = alerts
            .iter()
            .map(|alert| postable(alert, generator_base, now, self.resend))
            .collect();
        super::outcome(
            self.client
                .post(self.alerts_url.clone())
                .json(&body)
                .send()
                .await,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::alerts::Severity;

    fn alert() -> Alert {
        Alert {
            id: 7,
            rule: "device_silent".into(),
            device: "pump-1".into(),
            severity: Severity::Critical,
            state: AlertState::Firing,
            summary: "pump-1 sent nothing for 12 minutes".into(),
            labels: BTreeMap::from([
                ("site".into(), "berlin".into()),
                ("app.kubernetes.io/name".into(), "pump".into()),
                (
                    "severity".into(),
                    "a device cannot lower its severity".into(),
                ),
            ]),
            started_at: DateTime::from_timestamp(1_800_000_000, 0).expect("time"),
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
        }
    }

    #[test]
    fn a_firing_alert_carries_its_labels_and_ends_four_resends_ahead() {
        let now = DateTime::from_timestamp(1_800_000_600, 0).expect("time");
        let sent = postable(
            &alert(),
            "https://tether.example:8443/",
            now,
            Duration::from_secs(60),
        );
        assert_eq!(
            sent.labels,
            BTreeMap::from([
                ("alertname".into(), "device_silent".into()),
                ("device".into(), "pump-1".into()),
                ("severity".into(), "critical".into()),
                ("site".into(), "berlin".into()),
                ("app_kubernetes_io_name".into(), "pump".into()),
            ])
        );
        assert_eq!(sent.starts_at, "2027-01-15T08:00:00.000Z");
        assert_eq!(sent.ends_at, "2027-01-15T08:14:00.000Z");
        assert_eq!(
            sent.generator_url,
            "https://tether.example:8443/api/v1/alerts/7"
        );
        assert_eq!(
            sent.annotations["summary"],
            "pump-1 sent nothing for 12 minutes"
        );
    }

    #[test]
    fn a_resolved_alert_ends_when_it_resolved() {
        let resolved_at = DateTime::from_timestamp(1_800_000_300, 0).expect("time");
        let resolved = Alert {
            state: AlertState::Resolved,
            resolved_at: Some(resolved_at),
            ..alert()
        };
        let sent = postable(&resolved, "https://t", Utc::now(), Duration::from_secs(60));
        assert_eq!(sent.ends_at, "2027-01-15T08:05:00.000Z");
    }

    #[test]
    fn the_api_path_goes_below_the_configured_url() {
        for (base, expected) in [
            ("https://am:9093", "https://am:9093/api/v2/alerts"),
            ("https://am:9093/", "https://am:9093/api/v2/alerts"),
            (
                "https://h/alertmanager",
                "https://h/alertmanager/api/v2/alerts",
            ),
        ] {
            let url = reqwest::Url::parse(base).expect("url");
            assert_eq!(alerts_url(&url).as_str(), expected);
        }
    }
}
