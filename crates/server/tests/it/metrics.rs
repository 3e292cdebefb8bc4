//! Metrics end to end: a real tether-agent sends host samples always (no
//! run-stats) at the interval its spec sets; tetherd answers range
//! queries, rolls them up by its job, and serves the fleet's latest values
//! to Prometheus, whose reference parser (prometheus_client, from PyPI)
//! reads both that and tetherd's own `/metrics`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

use crate::support::on_both_databases;

on_both_databases!(host_metrics_arrive_always_roll_up_and_reach_prometheus);

const DEVICE: &str = "/api/v1/devices/edge-1";

/// The venv `scripts/test` installs prometheus_client into.
fn python() -> anyhow::Result<PathBuf> {
    let python =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/prometheus-venv/bin/python");
    anyhow::ensure!(
        python.exists(),
        "prometheus_client is not installed: run ./scripts/test once (it installs \
         prometheus-client from PyPI into target/prometheus-venv)"
    );
    Ok(python)
}

/// The families of a Prometheus text exposition, as the reference parser
/// reads it; an error if it refuses the text.
pub(crate) async fn parse_prometheus(text: &str) -> anyhow::Result<Vec<Value>> {
    use tokio::io::AsyncWriteExt;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/prometheus_parse.py");
    let mut child = tokio::process::Command::new(python()?)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin is piped")?;
    stdin.write_all(text.as_bytes()).await?;
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("the parser finishes within 30 s")??;
    anyhow::ensure!(
        output.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

async fn query(admin: &ApiClient, params: &str) -> anyhow::Result<(u16, Value)> {
    let reply = admin
        .get(&format!("{DEVICE}/metrics/query?{params}"))
        .await?;
    Ok((reply.status.as_u16(), reply.body))
}

async fn host_metrics_arrive_always_roll_up_and_reach_prometheus(
    database: Database,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tetherd.toml");
    // The rollup job every second, so the test sees it run.
    std::fs::write(&config, "[retention]\nmetrics_rollup_seconds = 1\n")?;
    let config = config.to_string_lossy().into_owned();
    let tetherd = Tetherd::start_with(database, &["--config", &config]).await?;
    let admin = tetherd.admin().await?;
    let _agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    admin
        .patch(
            DEVICE,
            json!({"labels": {"site": "north-1", "app.kubernetes.io/name": "pump"}}),
        )
        .await?
        .expect_status(200)?;
    // No run-stats: a sample a second because the spec says so.
    admin
        .patch(
            DEVICE,
            json!({"spec": {"metricsConfig": {"intervalSeconds": 1}}}),
        )
        .await?
        .expect_status(200)?;

    let series = wait_until(
        "host series from the agent",
        Duration::from_secs(30),
        || async {
            let list = admin
                .get(&format!("{DEVICE}/metrics/series"))
                .await?
                .expect_status(200)?;
            let names: Vec<String> = list["series"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect();
            Ok(names.iter().any(|n| n == "cpu_percent").then_some(names))
        },
    )
    .await?;
    for name in [
        "cpu_percent",
        "load1",
        "memory_used_bytes",
        "swap_total_bytes",
        "disk_used_bytes",
        "processes",
        "uptime_seconds",
    ] {
        assert!(series.iter().any(|n| n == name), "no {name} in {series:?}");
    }

    // Raw points, several a window: the interval is one second.
    let raw = wait_until("three raw cpu points", Duration::from_secs(30), || async {
        let (status, body) = query(&admin, "metric=cpu_percent&since=5m&step=1s").await?;
        anyhow::ensure!(status == 200, "{body}");
        let total = body["series"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["labels"]["cpu"] == "total")
            .map(|s| s["points"].as_array().map_or(0, Vec::len))
            .unwrap_or(0);
        Ok((total >= 3).then_some(body))
    })
    .await?;
    assert_eq!(raw["resolution"], "raw", "{raw}");
    assert_eq!(raw["stepSeconds"], 1, "{raw}");
    assert!(
        raw["series"].as_array().map_or(0, Vec::len) >= 2,
        "total and at least one core: {raw}"
    );

    // The job rolls them up: minute buckets with the points counted.
    let rolled = wait_until("a 1-minute rollup", Duration::from_secs(30), || async {
        let (status, body) = query(&admin, "metric=memory_used_bytes&since=10m&step=1m").await?;
        anyhow::ensure!(status == 200, "{body}");
        let counted: u64 = body["series"][0]["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["count"].as_u64())
            .sum();
        Ok((counted >= 3).then_some(body))
    })
    .await?;
    assert_eq!(rolled["resolution"], "1m", "{rolled}");
    let point = &rolled["series"][0]["points"][0];
    assert!(
        point["min"].as_f64() <= point["avg"].as_f64()
            && point["avg"].as_f64() <= point["max"].as_f64(),
        "{point}"
    );

    // Bad input is refused, naming the field.
    for (params, field) in [
        ("metric=cpu_percent&step=0s", "step"),
        ("metric=fan_rpm", "metric"),
        ("metric=cpu_percent&since=1h&until=2h", "since"),
        ("metric=cpu_percent&since=30d&step=1s", "step"),
        ("since=1h", "metric"),
    ] {
        let (status, body) = query(&admin, params).await?;
        assert_eq!(status, 400, "{params}: {body}");
        assert_eq!(
            body["error"]["details"]["fields"][0]["path"], field,
            "{params}: {body}"
        );
    }

    // Prometheus scrapes the fleet with the scrape token, and its parser
    // reads what it gets.
    let anonymous = tetherd.anonymous()?;
    let (status, _) = anonymous.get_text("/metrics/fleet").await?;
    assert_eq!(status, 401);
    let token = std::fs::read_to_string(tetherd.data_dir().join("metrics-token"))?;
    let scraper = anonymous.with_token(Some(token.trim().to_owned()));
    let (status, fleet) = scraper.get_text("/metrics/fleet").await?;
    assert_eq!(status, 200, "{fleet}");
    let families = parse_prometheus(&fleet).await?;
    let cpu = families
        .iter()
        .find(|f| f["name"] == "tether_device_cpu_percent")
        .with_context(|| format!("no CPU family in {fleet}"))?;
    assert_eq!(cpu["type"], "gauge");
    let total = cpu["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["labels"]["cpu"] == "total")
        .with_context(|| format!("no total CPU sample in {cpu}"))?;
    assert_eq!(
        total["labels"],
        json!({
            "device": "edge-1",
            "cpu": "total",
            "label_site": "north-1",
            "label_app_kubernetes_io_name": "pump",
        })
    );
    assert!(
        families
            .iter()
            .any(|f| f["name"] == "tether_device_net_rx_bytes_per_second"
                || f["name"] == "tether_device_memory_used_bytes"),
        "{fleet}"
    );
    // tetherd's own exposition parses too.
    let (status, own) = scraper.get_text("/metrics").await?;
    assert_eq!(status, 200, "{own}");
    let own = parse_prometheus(&own).await?;
    assert!(
        own.iter().any(|f| f["name"] == "tether_device_sessions"),
        "{own:?}"
    );
    Ok(())
}
