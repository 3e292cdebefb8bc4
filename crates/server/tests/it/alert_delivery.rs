//! Alert delivery against a real tetherd (issue 18): a webhook receiver that
//! checks the signature, answers 500s and sees them retried with growing
//! gaps, then dead letters listed and retried through the API; a fake
//! Alertmanager that gets an alert with its labels, again while it fires,
//! and its resolution. Alerts are raised and resolved through the store on
//! tetherd's own database, as the monitor does.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde_json::Value;
use tether_proto::DeviceId;
use tether_proto::alerts::Severity;
use tether_server::store::{NewAlert, Store};
use tether_testkit::fake_alertmanager::FakeAlertmanager;
use tether_testkit::webhook_receiver::WebhookReceiver;
use tether_testkit::{ApiClient, Database, Tetherd, wait_until};

use crate::support::{on_both_databases, store_of};

on_both_databases!(
    a_webhook_is_signed_retried_with_growing_gaps_and_dead_lettered,
    alertmanager_gets_the_alert_with_its_labels_again_while_it_fires_and_its_resolution,
);

const SECRET: &str = "an-operator's-webhook-secret-of-32b";
const WAIT: Duration = Duration::from_secs(20);

/// A config file with `[alerts]` for `receivers` (TOML tables), retrying
/// fast: first wait 200 ms, four attempts.
fn write_config(dir: &Path, receivers: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("tetherd.toml");
    std::fs::write(
        &path,
        format!(
            "[alerts]\nmax_attempts = 4\nbackoff_initial_ms = 200\nbackoff_max_seconds = 5\n\
             poll_interval_ms = 50\n{receivers}"
        ),
    )?;
    Ok(path)
}

fn write_secret(dir: &Path, mode: u32) -> anyhow::Result<PathBuf> {
    let path = dir.join("ops.secret");
    std::fs::write(&path, format!("{SECRET}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    Ok(path)
}

fn webhook(url: &str, secret: &Path) -> String {
    format!(
        "[[alerts.webhooks]]\nname = \"ops\"\nurl = \"{url}\"\nsecret_file = \"{}\"\n",
        secret.display()
    )
}

fn new_alert(rule: &str, labels: &[(&str, &str)]) -> NewAlert {
    NewAlert {
        rule: rule.to_owned(),
        device: DeviceId::new("pump-1".to_owned()).expect("a device name"),
        severity: Severity::Critical,
        summary: format!("{rule} on pump-1"),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

async fn dead_letters(admin: &ApiClient) -> anyhow::Result<Vec<Value>> {
    let page = admin
        .get("/api/v1/alerts/deliveries?state=dead")
        .await?
        .expect_status(200)?;
    Ok(page["items"].as_array().cloned().unwrap_or_default())
}

async fn scrape(tetherd: &Tetherd) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(tetherd.data_dir().join("metrics-token"))?;
    let scraper = tetherd
        .anonymous()?
        .with_token(Some(token.trim().to_owned()));
    let (status, text) = scraper.get_text("/metrics").await?;
    anyhow::ensure!(status == 200, "scrape answered {status}: {text}");
    Ok(text)
}

async fn a_webhook_is_signed_retried_with_growing_gaps_and_dead_lettered(
    database: Database,
) -> anyhow::Result<()> {
    let receiver = WebhookReceiver::start(SECRET.as_bytes()).await?;
    let dir = tempfile::tempdir()?;
    let secret = write_secret(dir.path(), 0o600)?;
    let config = write_config(dir.path(), &webhook(&receiver.url, &secret))?;
    let tetherd =
        Tetherd::start_with(database, &["--config", config.to_str().context("path")?]).await?;
    let store: Store = store_of(&tetherd).await?;
    let admin = tetherd.admin().await?;

    // Three 500s, then the fourth and last attempt is accepted.
    receiver.fail_next(3, 500);
    let raised = store
        .raise_alert(&new_alert("disk_full", &[("site", "berlin")]), Utc::now())
        .await?
        .context("a new alert")?;
    let arrivals = receiver.wait_for(4, WAIT).await?;
    let statuses: Vec<u16> = arrivals.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [500, 500, 500, 204]);
    assert!(
        arrivals.iter().all(|a| a.verified),
        "every request carries a valid signature: {arrivals:?}"
    );
    assert!(
        arrivals.iter().all(|a| a.delivery == arrivals[0].delivery),
        "a retry is the same delivery"
    );
    let body = &arrivals[3].body;
    assert_eq!(body["event"], "firing");
    assert_eq!(arrivals[3].event, "firing");
    assert_eq!(body["alert"]["id"], raised.id);
    assert_eq!(body["alert"]["rule"], "disk_full");
    assert_eq!(body["alert"]["device"], "pump-1");
    assert_eq!(body["alert"]["labels"]["site"], "berlin");
    assert!(
        body["source"]["replica"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    // Waits of 200 ms doubling, each between half and all of it.
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, least) in gaps.iter().zip([100, 200, 400]) {
        assert!(
            *gap >= Duration::from_millis(least),
            "gaps {gaps:?}: one under {least} ms"
        );
    }
    assert!(gaps[2] > gaps[0], "the gaps grow: {gaps:?}");
    assert!(dead_letters(&admin).await?.is_empty());

    // The resolution fails every time: dead after four attempts, listed.
    receiver.fail_next(usize::MAX, 500);
    store
        .resolve_alert(
            "disk_full",
            &DeviceId::new("pump-1".to_owned())?,
            Utc::now(),
        )
        .await?
        .context("the alert resolves")?;
    let dead = wait_until("the resolution dead-lettered", WAIT, || async {
        Ok(dead_letters(&admin).await?.into_iter().next())
    })
    .await?;
    assert_eq!(
        receiver.arrivals().len(),
        8,
        "four attempts of the resolution"
    );
    assert_eq!(dead["receiver"], "ops");
    assert_eq!(dead["event"], "resolved");
    assert_eq!(dead["alertId"], raised.id);
    assert_eq!(dead["attempts"], 4);
    let error = dead["lastError"].as_str().context("a last error")?;
    assert!(
        error.contains("gave up after 4 attempts") && error.contains("HTTP 500"),
        "{error}"
    );

    // Once the receiver is fixed, the dead letter is sent again on request.
    receiver.fail_next(0, 500);
    let id = dead["id"].as_str().context("an id")?;
    let retried = admin
        .post(
            &format!("/api/v1/alerts/deliveries/{id}/retry"),
            serde_json::json!({}),
        )
        .await?
        .expect_status(200)?;
    assert_eq!(retried["state"], "pending");
    let arrivals = receiver.wait_for(9, WAIT).await?;
    assert_eq!(arrivals[8].status, 204);
    assert_eq!(arrivals[8].event, "resolved");
    assert!(dead_letters(&admin).await?.is_empty());
    let again = admin
        .post(
            &format!("/api/v1/alerts/deliveries/{id}/retry"),
            serde_json::json!({}),
        )
        .await?;
    assert_eq!(again.status, 409, "only a dead delivery is retried");

    // A refusal other than 408/429 is dead at once, with its status.
    receiver.fail_next(1, 410);
    store
        .raise_alert(&new_alert("spool_dropping", &[]), Utc::now())
        .await?
        .context("a second alert")?;
    let dead = wait_until("the refused delivery dead-lettered", WAIT, || async {
        Ok(dead_letters(&admin).await?.into_iter().next())
    })
    .await?;
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["rule"], "spool_dropping");
    assert!(
        dead["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 410")),
        "{dead}"
    );

    let metrics = scrape(&tetherd).await?;
    for line in [
        "tether_alerts_firing{rule=\"spool_dropping\",severity=\"critical\",state=\"firing\"} 1",
        "tether_alert_deliveries_total{receiver=\"ops\",outcome=\"delivered\"} 2",
        "tether_alert_deliveries_total{receiver=\"ops\",outcome=\"failed\"} 6",
        "tether_alert_deliveries_total{receiver=\"ops\",outcome=\"dead\"} 2",
        "tether_alert_deliveries_queued{state=\"dead\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    assert!(
        !metrics.contains("tether_alerts_firing{rule=\"disk_full\""),
        "a resolved alert is not counted:\n{metrics}"
    );
    Ok(())
}

async fn alertmanager_gets_the_alert_with_its_labels_again_while_it_fires_and_its_resolution(
    database: Database,
) -> anyhow::Result<()> {
    let alertmanager = FakeAlertmanager::start().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(
        dir.path(),
        &format!(
            "[[alerts.alertmanagers]]\nurl = \"{}\"\nresend_seconds = 1\n",
            alertmanager.url
        ),
    )?;
    let tetherd =
        Tetherd::start_with(database, &["--config", config.to_str().context("path")?]).await?;
    let store = store_of(&tetherd).await?;
    let device = DeviceId::new("pump-1".to_owned())?;

    let raised = store
        .raise_alert(
            &new_alert(
                "device_silent",
                &[("site", "berlin"), ("app.kubernetes.io/name", "pump")],
            ),
            Utc::now(),
        )
        .await?
        .context("a new alert")?;
    let expected_labels: BTreeMap<String, String> = [
        ("alertname", "device_silent"),
        ("device", "pump-1"),
        ("severity", "critical"),
        ("site", "berlin"),
        ("app_kubernetes_io_name", "pump"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let firing = alertmanager
        .wait_for("the firing alert", WAIT, |alert| {
            alert.labels == expected_labels
        })
        .await?;
    assert!(
        firing.ends_at.is_some_and(|end| end > Utc::now()),
        "a firing alert ends in the future: {firing:?}"
    );
    assert_eq!(
        firing.starts_at.map(|t| t.timestamp_millis()),
        Some(raised.started_at.timestamp_millis())
    );
    assert!(
        firing
            .generator_url
            .as_deref()
            .is_some_and(|url| url.ends_with(&format!("/api/v1/alerts/{}", raised.id))),
        "{firing:?}"
    );
    assert_eq!(firing.annotations["summary"], "device_silent on pump-1");

    // Sent again while it fires, so Alertmanager does not let it expire.
    let first_at = firing.at;
    alertmanager
        .wait_for("the firing alert sent again", WAIT, |alert| {
            alert.labels == expected_labels && alert.at > first_at + Duration::from_millis(500)
        })
        .await?;

    let resolved_at = Utc::now();
    store
        .resolve_alert("device_silent", &device, resolved_at)
        .await?
        .context("the alert resolves")?;
    let resolution = alertmanager
        .wait_for("the resolution", WAIT, |alert| {
            alert.labels == expected_labels && alert.ends_at.is_some_and(|end| end <= Utc::now())
        })
        .await?;
    assert_eq!(
        resolution.ends_at.map(|t| t.timestamp_millis()),
        Some(resolved_at.timestamp_millis())
    );
    assert_eq!(resolution.annotations["tether_state"], "resolved");
    assert!(
        alertmanager.refused().is_empty(),
        "{:?}",
        alertmanager.refused()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tetherd_refuses_a_readable_secret_and_plain_http_to_another_host() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = write_secret(dir.path(), 0o644)?;
    let config = write_config(dir.path(), &webhook("http://127.0.0.1:9/hook", &secret))?;
    let error = Tetherd::start_with(
        Database::Sqlite,
        &["--config", config.to_str().context("path")?],
    )
    .await
    .err()
    .context("tetherd starts with a secret others may read")?;
    let text = format!("{error:#}");
    assert!(
        text.contains("ops.secret") && text.contains("chmod 600"),
        "{text}"
    );

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    let config = write_config(
        dir.path(),
        &webhook("http://hooks.example.com/hook", &secret),
    )?;
    let error = Tetherd::start_with(
        Database::Sqlite,
        &["--config", config.to_str().context("path")?],
    )
    .await
    .err()
    .context("tetherd starts with a plain http receiver")?;
    let text = format!("{error:#}");
    assert!(
        text.contains("alerts.webhooks.url") && text.contains("https://"),
        "{text}"
    );
    Ok(())
}
