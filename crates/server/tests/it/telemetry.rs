//! Telemetry from a device's spool to tetherd's store: real tetherd, real
//! tether-agent fed through its local API socket, and mosquitto clients
//! holding real device credentials for what a hostile device could send.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tether_proto::DeviceId;
use tether_proto::telemetry::{
    CustomMetric, Dropped, LogRecord, MetricRecord, Records, TelemetryBatch, encode,
};
use tether_server::store::Store;
use tether_testkit::sim_agent::DeviceCredentials;
use tether_testkit::{Agent, ApiClient, Database, Tetherd, post_local, wait_until};

use crate::support::{minutes_ago, mosquitto, on_both_databases, store_of, text};

on_both_databases!(
    records_produced_offline_arrive_once_and_in_order_across_an_agent_restart,
    a_tiny_spool_drops_the_oldest_records_and_reports_exactly_how_many,
    text_the_store_cannot_hold_is_kept_or_refused_by_name,
);

const LOG_LINES: u64 = 10_000;
const METRIC_SAMPLES: u64 = 1_000;

fn line_at(start: DateTime<Utc>, i: u64) -> DateTime<Utc> {
    start + chrono::Duration::milliseconds(i as i64)
}

/// Pushes `LOG_LINES` log lines (priority `i % 8`) and `METRIC_SAMPLES`
/// custom samples through the local API, a thousand per request.
async fn produce(socket: &Path, start: DateTime<Utc>) -> anyhow::Result<()> {
    for chunk in 0..LOG_LINES / 1000 {
        let mut body = String::new();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            body.push_str(
                &json!({"message": format!("line {i:05}"), "priority": i % 8, "unit": "probe",
                    "at": line_at(start, i)})
                .to_string(),
            );
            body.push('\n');
        }
        post_local(socket, "/v1/logs", &body).await?;
    }
    let mut body = String::new();
    for i in 0..METRIC_SAMPLES {
        body.push_str(
            &json!({"name": "probe_value", "value": i, "labels": {"probe": "a"},
                "at": line_at(start, i)})
            .to_string(),
        );
        body.push('\n');
    }
    post_local(socket, "/v1/metrics", &body).await?;
    Ok(())
}

async fn usage(admin: &ApiClient, device: &str, stream: &str) -> anyhow::Result<Value> {
    let usage = admin
        .get(&format!("/api/v1/devices/{device}/usage"))
        .await?
        .expect_status(200)?;
    usage["streams"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["stream"] == stream))
        .cloned()
        .with_context(|| format!("no {stream} usage in {usage}"))
}

async fn stored_messages(store: &Store, device: &DeviceId) -> anyhow::Result<Vec<String>> {
    Ok(store
        .list_logs(device, DateTime::<Utc>::UNIX_EPOCH, 100_000)
        .await?
        .into_iter()
        .map(|log| log.record.message)
        .collect())
}

/// Publishes `payload` on `topic` at QoS 1 as the device whose
/// credentials are in `dir` (MQTT 5, so a refusal's reason is printed).
async fn publish_as(
    port: &str,
    dir: &Path,
    client: &str,
    topic: String,
    payload: Vec<u8>,
    name: &str,
) -> anyhow::Result<std::process::Output> {
    let file = dir.join(name);
    std::fs::write(&file, payload)?;
    let file = file.to_str().context("utf-8 path")?.to_owned();
    let args = ["-V", "mqttv5", "-q", "1", "-t", &topic, "-f", &file];
    mosquitto("mosquitto_pub", port, Some(dir), client, &args).await
}

/// Issue 13's offline acceptance: tetherd down, 10,000 log lines and 1,000
/// samples produced on the device, the agent restarted while disconnected,
/// tetherd back: every line and sample arrives once, in order.
async fn records_produced_offline_arrive_once_and_in_order_across_an_agent_restart(
    database: Database,
) -> anyhow::Result<()> {
    let mut tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let mut agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    let socket = agent.local_api_socket();
    tetherd.stop().await?;

    let start = minutes_ago(30);
    produce(&socket, start).await?;
    // A clean stop flushes what waits in memory; the restart finds it on disk.
    agent.stop().await?;
    agent.start()?;
    wait_until(
        "the restarted agent's local API",
        Duration::from_secs(10),
        || {
            let socket = socket.clone();
            async move {
                Ok(tokio::net::UnixStream::connect(&socket)
                    .await
                    .ok()
                    .map(drop))
            }
        },
    )
    .await?;
    tetherd.start_again().await?;

    let store = store_of(&tetherd).await?;
    let device = DeviceId::new("edge-1")?;
    let admin = tetherd.admin().await?;
    wait_until("every record stored", Duration::from_secs(120), || {
        let admin = admin.clone();
        async move {
            let logs = usage(&admin, "edge-1", "logs").await?;
            let metrics = usage(&admin, "edge-1", "metrics").await?;
            // The agent's own host samples (one a minute) may be among them;
            // the custom ones are checked exactly below.
            Ok((logs["storedRecords"] == LOG_LINES
                && metrics["storedRecords"].as_u64() >= Some(METRIC_SAMPLES))
            .then_some(()))
        }
    })
    .await?;
    let expected: Vec<String> = (0..LOG_LINES).map(|i| format!("line {i:05}")).collect();
    assert_eq!(
        stored_messages(&store, &device).await?,
        expected,
        "once, in order"
    );
    let logs = store
        .list_logs(&device, DateTime::<Utc>::UNIX_EPOCH, 100_000)
        .await?;
    assert!(
        logs.iter()
            .enumerate()
            .all(|(i, log)| log.record.priority == (i % 8) as u8
                && log.record.unit == "probe"
                && log.record.at == line_at(start, i as u64))
    );
    // Custom samples are kept as points of their series, each instant once.
    let series = store.list_series(&device, Some("probe_value"), 10).await?;
    anyhow::ensure!(series.len() == 1, "one series: {series:?}");
    assert_eq!(series[0].labels["probe"], "a");
    let points = store
        .series_buckets(&[series[0].id], 1, 1, start, Utc::now())
        .await?;
    let got: Vec<(i64, f64, u64)> = points
        .iter()
        .map(|p| (p.start_ms, p.sum, p.count))
        .collect();
    let expected: Vec<(i64, f64, u64)> = (0..METRIC_SAMPLES)
        .map(|i| (line_at(start, i).timestamp_millis(), i as f64, 1))
        .collect();
    assert_eq!(got, expected, "every sample once, in order");

    let logs = usage(&admin, "edge-1", "logs").await?;
    assert_eq!(logs["gap"], 0, "{logs}");
    assert_eq!(logs["dropped"]["total"], 0, "{logs}");
    // Every line waited in the spool for the session: all of it a replay.
    assert_eq!(logs["replayBytes"], logs["wireBytes"], "{logs}");
    let wire = logs["wireBytes"].as_u64().unwrap_or(0);
    assert!(
        wire > 0 && wire < LOG_LINES * 40,
        "10,000 lines took {wire} bytes on the wire: batches are compressed"
    );
    Ok(())
}

/// With a spool of 64 KiB the oldest lines go, and the count the agent
/// reports to tetherd is exact: stored + dropped = produced, the stored ones
/// are the newest in order, and the dropped ones are counted by priority.
/// (Issue 13 acceptance, the "tiny spool limit" half.)
async fn a_tiny_spool_drops_the_oldest_records_and_reports_exactly_how_many(
    database: Database,
) -> anyhow::Result<()> {
    let mut tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_with_env(
        &tetherd,
        &admin,
        "edge-1",
        &[("TETHER_AGENT_SPOOL_MAX_BYTES", "65536")],
    )
    .await?;
    agent.wait_presence(&admin, "online").await?;
    let socket = agent.local_api_socket();
    tetherd.stop().await?;

    let start = minutes_ago(30);
    produce(&socket, start).await?;
    tetherd.start_again().await?;
    let admin = tetherd.admin().await?;
    let logs = wait_until(
        "the newest lines and the drop count",
        Duration::from_secs(120),
        || {
            let admin = admin.clone();
            async move {
                let logs = usage(&admin, "edge-1", "logs").await?;
                let stored = logs["storedRecords"].as_u64().unwrap_or(0);
                let dropped = logs["dropped"]["total"].as_u64().unwrap_or(0);
                Ok((stored > 0 && stored + dropped == LOG_LINES).then_some(logs))
            }
        },
    )
    .await?;
    let dropped = logs["dropped"]["total"].as_u64().context("dropped total")?;
    assert!(
        dropped > LOG_LINES / 2,
        "a 64 KiB spool cannot hold 10,000 lines: {logs}"
    );
    // Each line stored is the one its number says, once, in order; the
    // newest are kept. Lines the agent could send before its spool dropped
    // them arrive too, so the dropped ones are exactly the others.
    let store = store_of(&tetherd).await?;
    let stored: Vec<u64> = store
        .list_logs(
            &DeviceId::new("edge-1")?,
            DateTime::<Utc>::UNIX_EPOCH,
            100_000,
        )
        .await?
        .into_iter()
        .map(|log| {
            assert_eq!(log.record.message, format!("line {:05}", log.seq));
            log.seq
        })
        .collect();
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "once, in order");
    assert_eq!(stored.last(), Some(&(LOG_LINES - 1)), "the newest kept");
    assert_eq!(stored.len() as u64 + dropped, LOG_LINES, "{logs}");
    for priority in 0..8u64 {
        let expected = (0..LOG_LINES)
            .filter(|i| i % 8 == priority && stored.binary_search(i).is_err())
            .count();
        assert_eq!(
            logs["dropped"]["byPriority"][priority as usize], expected,
            "priority {priority}: {logs}"
        );
    }
    // What never arrived is what the spool dropped: before its first batch
    // (no gap for tetherd: the cursor starts there) and between batches
    // (a gap).
    let gap = logs["gap"].as_u64().context("gap")?;
    assert_eq!(stored[0] + gap, dropped, "{logs}");
    Ok(())
}

/// What a hostile device can send on the telemetry topics: another device's
/// topic is refused by the ACL, a decompression bomb is refused with the
/// reason, and a batch sent again is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_are_refused_or_stored_once() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let port = tetherd
        .mqtt_url
        .rsplit_once(':')
        .context("mqtt url has a port")?
        .1
        .to_owned();
    DeviceCredentials::enroll(&admin, "victim").await?;
    let credentials = DeviceCredentials::enroll(&admin, "hostile").await?;
    let dir = tempfile::tempdir()?;
    credentials.write_to(dir.path())?;
    let publish = |topic: String, payload: Vec<u8>, name: &'static str| {
        publish_as(&port, dir.path(), "hostile", topic, payload, name)
    };
    let batch = TelemetryBatch {
        spool_id: "hostile-spool".into(),
        first_seq: 0,
        records: Records::Logs(
            (0..100)
                .map(|i| LogRecord {
                    at: Utc::now(),
                    priority: 3,
                    unit: "x".into(),
                    message: format!("hostile {i}"),
                    fields: Default::default(),
                })
                .collect(),
        ),
        dropped: Dropped::default(),
        replay: false,
        usage: Vec::new(),
    };

    // Another device's logs topic: refused by the ACL, nothing stored.
    let output = publish(
        "tether/v1/devices/victim/logs".into(),
        encode(&batch),
        "forged.bin",
    )
    .await?;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Not authorized"),
        "{}",
        text(&output)
    );

    // 64 MiB of JSON in about 64 KiB: refused with the reason, not inflated.
    let mut bomb = batch.clone();
    if let Records::Logs(records) = &mut bomb.records {
        records.truncate(1);
        records[0].message = " ".repeat(64 * 1024 * 1024);
    }
    let bomb = encode(&bomb);
    assert!(bomb.len() < 256 * 1024, "{} bytes", bomb.len());
    let output = publish("tether/v1/devices/hostile/logs".into(), bomb, "bomb.bin").await?;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Payload format invalid"),
        "{}",
        text(&output)
    );
    let reason = wait_until("the refusal recorded", Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            let events = admin
                .get("/api/v1/devices/hostile/events?limit=100")
                .await?
                .expect_status(200)?;
            Ok(events["items"].as_array().and_then(|items| {
                items
                    .iter()
                    .find(|e| e["event"] == "message-rejected")
                    .map(|e| e["statusMessage"].as_str().unwrap_or_default().to_owned())
            }))
        }
    })
    .await?;
    assert!(reason.contains("decompression bomb"), "{reason}");

    // The same batch three times: stored once.
    for name in ["first.bin", "again.bin", "third.bin"] {
        let output = publish(
            "tether/v1/devices/hostile/logs".into(),
            encode(&batch),
            name,
        )
        .await?;
        assert!(output.stderr.is_empty(), "acknowledged: {}", text(&output));
    }
    let store = store_of(&tetherd).await?;
    let stored = stored_messages(&store, &DeviceId::new("hostile")?).await?;
    assert_eq!(stored.len(), 100, "stored once");
    assert!(
        stored_messages(&store, &DeviceId::new("victim")?)
            .await?
            .is_empty()
    );
    let logs = usage(&admin, "hostile", "logs").await?;
    assert_eq!(logs["storedRecords"], 100, "{logs}");
    assert_eq!(logs["duplicateRecords"], 200, "{logs}");
    assert_eq!(logs["batches"], 3, "{logs}");

    // Numbered past where SQL integers end: refused by name, where it
    // would otherwise have stuck the spool's cursor for good. A batch
    // ending on the last number is stored.
    let mut past_the_end = batch.clone();
    past_the_end.first_seq = tether_proto::telemetry::MAX_SEQ - 50;
    let output = publish(
        "tether/v1/devices/hostile/logs".into(),
        encode(&past_the_end),
        "past-the-end.bin",
    )
    .await?;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Payload format invalid"),
        "{}",
        text(&output)
    );
    let reason = rejection(&admin, "hostile", "sequence numbers end").await?;
    assert!(reason.contains("firstSeq 9223372036854775757"), "{reason}");
    past_the_end.first_seq = tether_proto::telemetry::MAX_SEQ - 100;
    let output = publish(
        "tether/v1/devices/hostile/logs".into(),
        encode(&past_the_end),
        "to-the-end.bin",
    )
    .await?;
    assert!(output.stderr.is_empty(), "acknowledged: {}", text(&output));
    let logs = usage(&admin, "hostile", "logs").await?;
    assert_eq!(logs["storedRecords"], 200, "{logs}");
    Ok(())
}

/// The newest `message-rejected` event of `device` whose message holds
/// `needle`.
async fn rejection(admin: &ApiClient, device: &str, needle: &str) -> anyhow::Result<String> {
    wait_until(
        &format!("a rejection naming {needle:?}"),
        Duration::from_secs(10),
        || async move {
            let events = admin
                .get(&format!("/api/v1/devices/{device}/events?limit=100"))
                .await?
                .expect_status(200)?;
            Ok(events["items"].as_array().and_then(|items| {
                items
                    .iter()
                    .filter(|e| e["event"] == "message-rejected")
                    .filter_map(|e| e["statusMessage"].as_str())
                    .find(|m| m.contains(needle))
                    .map(str::to_owned)
            }))
        },
    )
    .await
}

/// Text PostgreSQL cannot hold, from a hostile device or a local program
/// writing to syslog: a log line with NUL characters is kept (they become
/// U+FFFD) instead of failing its transaction on every retry and holding
/// the stream; custom metric names and labels with NUL, or too long to
/// index, or too many, are refused with the reason, and the next batch
/// of the stream is stored.
async fn text_the_store_cannot_hold_is_kept_or_refused_by_name(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let port = tetherd
        .mqtt_url
        .rsplit_once(':')
        .context("mqtt url has a port")?
        .1
        .to_owned();
    let credentials = DeviceCredentials::enroll(&admin, "hostile").await?;
    let dir = tempfile::tempdir()?;
    credentials.write_to(dir.path())?;
    let publish = |topic: &str, payload: Vec<u8>, name: &'static str| {
        publish_as(
            &port,
            dir.path(),
            "hostile",
            topic.to_owned(),
            payload,
            name,
        )
    };
    let line = |message: &str, unit: &str| LogRecord {
        at: minutes_ago(1),
        priority: 6,
        unit: unit.into(),
        message: message.into(),
        fields: [("k\0".to_owned(), "v\0".to_owned())].into(),
    };
    let logs = TelemetryBatch {
        spool_id: "s".into(),
        first_seq: 0,
        records: Records::Logs(vec![line("before\0after", "app\0"), line("plain", "app")]),
        dropped: Dropped::default(),
        replay: false,
        usage: Vec::new(),
    };
    let output = publish("tether/v1/devices/hostile/logs", encode(&logs), "nul.bin").await?;
    assert!(output.stderr.is_empty(), "acknowledged: {}", text(&output));
    let store = store_of(&tetherd).await?;
    let device = DeviceId::new("hostile")?;
    let stored: Vec<(String, String, Option<String>)> = store
        .list_logs(&device, DateTime::<Utc>::UNIX_EPOCH, 10)
        .await?
        .into_iter()
        .map(|log| {
            let field = log.record.fields.get("k\0").cloned();
            (log.record.message, log.record.unit, field)
        })
        .collect();
    let kept =
        |message: &str, unit: &str| (message.to_owned(), unit.to_owned(), Some("v\0".to_owned()));
    assert_eq!(
        stored,
        [
            kept("before\u{fffd}after", "app\u{fffd}"),
            kept("plain", "app")
        ]
    );

    let metrics = |first_seq: u64, name: &str, labels: Vec<(String, String)>| TelemetryBatch {
        spool_id: "m".into(),
        first_seq,
        records: Records::Metrics(vec![MetricRecord::Custom(CustomMetric {
            name: name.into(),
            value: 1.0,
            labels: labels.into_iter().collect(),
            at: minutes_ago(1),
        })]),
        dropped: Dropped::default(),
        replay: false,
        usage: Vec::new(),
    };
    // 4 kB of digits that hardly compress.
    let long: String = (0..512u64)
        .map(|i| format!("{:08x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32))
        .collect();
    let many = (0..100)
        .map(|i| (format!("k{i}"), "v".to_owned()))
        .collect();
    for (batch, file, reason) in [
        (
            metrics(0, "tank\0level", vec![]),
            "nul-name.bin",
            "name holds a NUL",
        ),
        (
            metrics(0, &long, vec![]),
            "long-name.bin",
            "name must be 1 to 128 bytes",
        ),
        (metrics(0, "m", many), "many-labels.bin", "100 labels"),
        (
            metrics(0, "m", vec![("k".into(), "a\0b".into())]),
            "nul-label.bin",
            "label \"k\" holds a NUL",
        ),
    ] {
        let output = publish("tether/v1/devices/hostile/metrics", encode(&batch), file).await?;
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("Payload format invalid"),
            "{file}: {}",
            text(&output)
        );
        rejection(&admin, "hostile", reason).await?;
    }
    // The stream goes on.
    let output = publish(
        "tether/v1/devices/hostile/metrics",
        encode(&metrics(1, "tank_level", vec![("site".into(), "a".into())])),
        "fine.bin",
    )
    .await?;
    assert!(output.stderr.is_empty(), "acknowledged: {}", text(&output));
    let series = store.list_series(&device, None, 10).await?;
    assert_eq!(
        series.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["tank_level"]
    );
    Ok(())
}

/// Issue 13's budgets on a real agent: with a logs budget in the spec, a
/// burst beyond it loses its least severe lines first, errors all go, and
/// every line is either stored or counted as dropped by priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logs_budget_drops_the_least_severe_lines_and_counts_them() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    let socket = agent.local_api_socket();
    // 2.4 MB a day: the bucket holds an hour's worth, 100 KB.
    admin
        .patch(
            "/api/v1/devices/edge-1",
            json!({"spec": {"budgets": {"logs": 2_400_000}}}),
        )
        .await?
        .expect_status(200)?;
    wait_until(
        "the agent to apply the budget",
        Duration::from_secs(30),
        || {
            let admin = admin.clone();
            async move {
                let device = admin
                    .get("/api/v1/devices/edge-1")
                    .await?
                    .expect_status(200)?;
                Ok((device["status"]["specVersion"] == 1).then_some(()))
            }
        },
    )
    .await?;
    // 10,000 lines, priorities 0–7 in turn: ~1.3 MB of JSON.
    produce(&socket, minutes_ago(1)).await?;
    let pushed = LOG_LINES;
    let logs = wait_until(
        "every line stored or dropped",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            async move {
                let logs = usage(&admin, "edge-1", "logs").await?;
                let stored = logs["storedRecords"].as_u64().unwrap_or(0);
                let dropped = logs["dropped"]["overBudget"].as_u64().unwrap_or(0);
                Ok((stored + dropped == pushed).then_some(logs))
            }
        },
    )
    .await?;
    assert_eq!(
        logs["dropped"]["total"], 0,
        "over budget, not for a full spool: {logs}"
    );
    let dropped: Vec<u64> = logs["dropped"]["overBudgetByPriority"]
        .as_array()
        .context("overBudgetByPriority")?
        .iter()
        .map(|n| n.as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        &dropped[..4],
        [0, 0, 0, 0],
        "errors and worse all went: {logs}"
    );
    assert!(dropped[7] > 0, "debug lines were dropped: {logs}");
    assert!(
        dropped[7] >= dropped[6] && dropped[6] >= dropped[5] && dropped[5] >= dropped[4],
        "the least severe first: {logs}"
    );
    assert!(
        logs["wireBytes"].as_u64().unwrap_or(u64::MAX) <= 110_000,
        "within the bucket: {logs}"
    );
    Ok(())
}

/// Issue 13's "both ends count": an action to a real agent is counted by
/// tetherd (its request out, the answer in) and by the agent, which
/// reports its counts on a batch; both show in the device's usage, equal,
/// and in the fleet exposition, which Prometheus' parser reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_count_an_action_s_bytes_and_agree() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let mut agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    let socket = agent.state_dir().join("api.sock");
    let done = crate::support::run(&admin, "edge-1", "get-node-ip", json!({})).await?;
    assert_eq!(done["state"], "succeeded", "{done}");
    let actions = |usage: &Value| {
        usage["features"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["feature"] == "actions"))
            .cloned()
            .unwrap_or_default()
    };
    let get_usage = || {
        let admin = admin.clone();
        async move {
            admin
                .get("/api/v1/devices/edge-1/usage")
                .await?
                .expect_status(200)
        }
    };
    wait_until(
        "the agent to report its counts",
        Duration::from_secs(30),
        || async {
            // A batch carries the agent's counts: the first of a stream in
            // a session, then one every 5 s.
            post_local(
                &socket,
                "/v1/logs",
                &json!({"message": "after the action", "priority": 6}).to_string(),
            )
            .await?;
            let usage = get_usage().await?;
            Ok((actions(&usage)["deviceReceivedBytes"].as_u64() > Some(0)).then_some(()))
        },
    )
    .await?;
    // tetherd writes its action counts with the device's lastSeen, and
    // at the session's end.
    agent.stop().await?;
    let usage = wait_until(
        "tetherd to write its action counts",
        Duration::from_secs(30),
        || async {
            let usage = get_usage().await?;
            Ok((actions(&usage)["sentBytes"].as_u64() > Some(0)).then_some(usage))
        },
    )
    .await?;
    let counted = actions(&usage);
    assert_eq!(
        counted["sentBytes"], counted["deviceReceivedBytes"],
        "the request, as each end counted it: {usage}"
    );
    assert_eq!(
        counted["receivedBytes"], counted["deviceSentBytes"],
        "the answer, as each end counted it: {usage}"
    );
    assert!(counted["receivedBytes"].as_u64() > Some(0), "{usage}");
    assert!(usage["deviceReportedAt"].is_string(), "{usage}");

    let token = std::fs::read_to_string(tetherd.data_dir().join("metrics-token"))?;
    let scraper = tetherd
        .anonymous()?
        .with_token(Some(token.trim().to_owned()));
    let (status, fleet) = scraper.get_text("/metrics/fleet").await?;
    assert_eq!(status, 200, "{fleet}");
    let families = crate::metrics::parse_prometheus(&fleet).await?;
    let bytes = families
        .iter()
        .find(|f| f["type"] == "counter" && f["name"] == "tether_device_usage_bytes")
        .with_context(|| format!("no usage family in {fleet}"))?;
    let sample = |direction: &str, counted_by: &str| {
        bytes["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| {
                s["labels"]
                    == json!({"device": "edge-1", "feature": "actions",
                        "direction": direction, "counted_by": counted_by})
            })
            .map(|s| s["value"].as_f64().unwrap_or(0.0) as u64)
    };
    assert_eq!(
        sample("to_device", "tetherd"),
        counted["sentBytes"].as_u64(),
        "{fleet}"
    );
    assert_eq!(
        sample("to_device", "device"),
        counted["deviceReceivedBytes"].as_u64(),
        "{fleet}"
    );
    assert_eq!(
        sample("from_device", "tetherd"),
        counted["receivedBytes"].as_u64(),
        "{fleet}"
    );
    Ok(())
}
