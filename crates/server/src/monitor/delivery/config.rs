//! `[alerts]`: where alerts are delivered and how failures are retried.
//!
//! Receiver URLs must be `https://`; plain `http://` is accepted only to a
//! loopback address (a relay on the same host), since alerts name devices
//! and sites and a webhook's signature does not hide them. A receiver with
//! a private CA names its certificate in `ca_file`; the system's roots are
//! trusted as well.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::retry::RetryPolicy;
use crate::config::ConfigError;

/// The file's `[alerts]`; every key optional.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAlerts {
    max_attempts: Option<u32>,
    backoff_initial_ms: Option<u64>,
    backoff_max_seconds: Option<u64>,
    poll_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    webhooks: Vec<FileWebhook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    alertmanagers: Vec<FileAlertmanager>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retired_receivers: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    name: String,
    url: String,
    secret_file: PathBuf,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileAlertmanager {
    name: Option<String>,
    url: String,
    ca_file: Option<PathBuf>,
    resend_seconds: Option<u64>,
}

/// Where alerts go and how failures are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    pub webhooks: Vec<WebhookConfig>,
    pub alertmanagers: Vec<AlertmanagerConfig>,
    pub retry: RetryPolicy,
    /// How often the sender looks for deliveries due.
    pub poll_interval: Duration,
    /// Receivers taken out for good: no change is queued for them any more
    /// and their pending deliveries are given up. A receiver only left out
    /// of one replica's configuration keeps its deliveries (a replica
    /// started with an old file must not stop delivery for the cluster).
    pub retired_receivers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub name: String,
    pub url: reqwest::Url,
    /// The HMAC key: the file's contents without trailing whitespace; it
    /// must be readable by its owner only.
    pub secret_file: PathBuf,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertmanagerConfig {
    pub name: String,
    /// Alertmanager's base URL; alerts go to `{url}/api/v2/alerts`.
    pub url: reqwest::Url,
    pub ca_file: Option<PathBuf>,
    /// How often active alerts are sent again.
    pub resend: Duration,
}

/// The default resend interval: a quarter of Alertmanager's default
/// `resolve_timeout` (5 minutes), as Prometheus re-sends every minute.
const DEFAULT_RESEND: Duration = Duration::from_secs(60);
const DEFAULT_POLL: Duration = Duration::from_secs(1);

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            alertmanagers: Vec::new(),
            retry: RetryPolicy::default(),
            poll_interval: DEFAULT_POLL,
            retired_receivers: Vec::new(),
        }
    }
}

fn invalid(key: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        expected: expected.into(),
    }
}

fn within(
    key: &'static str,
    value: u64,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<u64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::OutOfRange {
            key,
            value,
            expected: format!("use {min} to {max}{unit}"),
        })
    }
}

/// A receiver's URL: https, or http to loopback.
fn receiver_url(key: &'static str, text: &str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(text)
        .map_err(|error| invalid(key, text, format!("not a URL ({error})")))?;
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(invalid(
            key,
            text,
            "alerts leave tetherd only over https:// (plain http:// only to a loopback address); \
             for a receiver with a private CA set its ca_file",
        )),
        other => Err(invalid(key, text, format!("use https://, not {other}://"))),
    }
}

/// A receiver's name: what deliveries, the API and `/metrics` call it.
fn receiver_name(key: &'static str, name: &str) -> Result<String, ConfigError> {
    let fits = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if fits {
        Ok(name.to_owned())
    } else {
        Err(invalid(
            key,
            name,
            "use 1 to 63 lowercase letters, digits, '-' or '_'",
        ))
    }
}

impl DeliveryConfig {
    pub fn from_file(file: &FileAlerts) -> Result<Self, ConfigError> {
        let defaults = RetryPolicy::default();
        let max_attempts = within(
            "alerts.max_attempts",
            u64::from(file.max_attempts.unwrap_or(defaults.max_attempts)),
            1,
            1000,
            "",
        )?;
        let initial = within(
            "alerts.backoff_initial_ms",
            file.backoff_initial_ms
                .unwrap_or(defaults.initial.as_millis() as u64),
            10,
            3_600_000,
            " ms",
        )?;
        let max = within(
            "alerts.backoff_max_seconds",
            file.backoff_max_seconds.unwrap_or(defaults.max.as_secs()),
            1,
            86_400,
            " seconds",
        )?;
        if max * 1000 < initial {
            return Err(ConfigError::OutOfRange {
                key: "alerts.backoff_max_seconds",
                value: max,
                expected: "at least alerts.backoff_initial_ms".into(),
            });
        }
        let poll_interval = within(
            "alerts.poll_interval_ms",
            file.poll_interval_ms
                .unwrap_or(DEFAULT_POLL.as_millis() as u64),
            10,
            60_000,
            " ms",
        )?;
        let mut names = Vec::new();
        let mut webhooks = Vec::new();
        for webhook in &file.webhooks {
            let name = receiver_name("alerts.webhooks.name", &webhook.name)?;
            names.push(name.clone());
            webhooks.push(WebhookConfig {
                name,
                url: receiver_url("alerts.webhooks.url", &webhook.url)?,
                secret_file: webhook.secret_file.clone(),
                ca_file: webhook.ca_file.clone(),
            });
        }
        let mut alertmanagers = Vec::new();
        for alertmanager in &file.alertmanagers {
            let name = receiver_name(
                "alerts.alertmanagers.name",
                alertmanager.name.as_deref().unwrap_or("alertmanager"),
            )?;
            names.push(name.clone());
            let resend = within(
                "alerts.alertmanagers.resend_seconds",
                alertmanager
                    .resend_seconds
                    .unwrap_or(DEFAULT_RESEND.as_secs()),
                1,
                3600,
                " seconds",
            )?;
            alertmanagers.push(AlertmanagerConfig {
                name,
                url: receiver_url("alerts.alertmanagers.url", &alertmanager.url)?,
                ca_file: alertmanager.ca_file.clone(),
                resend: Duration::from_secs(resend),
            });
        }
        let mut sorted = names.clone();
        sorted.sort();
        if let Some(twice) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(invalid(
                "alerts.webhooks.name",
                &twice[0],
                "each webhook and Alertmanager needs a name of its own (an Alertmanager without one is \"alertmanager\")",
            ));
        }
        Ok(Self {
            webhooks,
            alertmanagers,
            retry: RetryPolicy {
                max_attempts: max_attempts as u32,
                initial: Duration::from_millis(initial),
                max: Duration::from_secs(max),
            },
            poll_interval: Duration::from_millis(poll_interval),
            retired_receivers: file.retired_receivers.clone(),
        })
    }

    pub fn to_file(&self) -> FileAlerts {
        FileAlerts {
            max_attempts: Some(self.retry.max_attempts),
            backoff_initial_ms: Some(self.retry.initial.as_millis() as u64),
            backoff_max_seconds: Some(self.retry.max.as_secs()),
            poll_interval_ms: Some(self.poll_interval.as_millis() as u64),
            webhooks: self
                .webhooks
                .iter()
                .map(|webhook| FileWebhook {
                    name: webhook.name.clone(),
                    url: webhook.url.to_string(),
                    secret_file: webhook.secret_file.clone(),
                    ca_file: webhook.ca_file.clone(),
                })
                .collect(),
            alertmanagers: self
                .alertmanagers
                .iter()
                .map(|alertmanager| FileAlertmanager {
                    name: Some(alertmanager.name.clone()),
                    url: alertmanager.url.to_string(),
                    ca_file: alertmanager.ca_file.clone(),
                    resend_seconds: Some(alertmanager.resend.as_secs()),
                })
                .collect(),
            retired_receivers: self.retired_receivers.clone(),
        }
    }

    /// Every receiver's name.
    pub fn receiver_names(&self) -> Vec<String> {
        self.webhooks
            .iter()
            .map(|webhook| webhook.name.clone())
            .chain(self.alertmanagers.iter().map(|am| am.name.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DeliveryConfig, ConfigError> {
        let file: FileAlerts = toml::from_str(text).expect("TOML");
        DeliveryConfig::from_file(&file)
    }

    #[test]
    fn receivers_and_retry_bounds_are_read() {
        let config = parse(
            r#"
            max_attempts = 4
            backoff_initial_ms = 200
            backoff_max_seconds = 30
            [[webhooks]]
            name = "ops"
            url = "https://hooks.example.com/tether"
            secret_file = "/etc/tether/ops.secret"
            [[alertmanagers]]
            url = "http://127.0.0.1:9093"
            "#,
        )
        .expect("valid");
        assert_eq!(config.retry.max_attempts, 4);
        assert_eq!(config.retry.initial, Duration::from_millis(200));
        assert_eq!(config.receiver_names(), ["ops", "alertmanager"]);
        assert_eq!(config.alertmanagers[0].resend, DEFAULT_RESEND);
        let again = DeliveryConfig::from_file(&config.to_file()).expect("round trip");
        assert_eq!(again, config);
    }

    #[test]
    fn plain_http_is_refused_except_to_loopback() {
        for url in [
            "http://127.0.0.1:8080/x",
            "http://[::1]:80/",
            "http://localhost/",
        ] {
            assert!(receiver_url("k", url).is_ok(), "{url}");
        }
        let error = parse(
            "[[webhooks]]\nname = \"ops\"\nurl = \"http://hooks.example.com/\"\nsecret_file = \"/s\"\n",
        )
        .expect_err("plain http to another host");
        let text = error.to_string();
        assert!(
            text.contains("alerts.webhooks.url") && text.contains("https://"),
            "{text}"
        );
        assert!(receiver_url("k", "ftp://example.com/").is_err());
    }

    #[test]
    fn two_receivers_cannot_share_a_name() {
        let error = parse(
            "[[webhooks]]\nname = \"alertmanager\"\nurl = \"https://h/\"\nsecret_file = \"/s\"\n\
             [[alertmanagers]]\nurl = \"https://am/\"\n",
        )
        .expect_err("the same name twice");
        assert!(error.to_string().contains("a name of its own"), "{error}");
    }

    #[test]
    fn bad_names_and_bounds_are_named() {
        let error = parse(
            "[[webhooks]]\nname = \"Ops Team\"\nurl = \"https://h/\"\nsecret_file = \"/s\"\n",
        )
        .expect_err("a name with a space");
        assert!(
            error.to_string().contains("alerts.webhooks.name"),
            "{error}"
        );
        let error = parse("max_attempts = 0").expect_err("no attempts");
        assert!(error.to_string().contains("alerts.max_attempts"), "{error}");
        let error = parse("backoff_initial_ms = 5000\nbackoff_max_seconds = 2")
            .expect_err("a cap below the first wait");
        assert!(error.to_string().contains("backoff_max_seconds"), "{error}");
    }
}
