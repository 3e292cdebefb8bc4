//! `--mode telemetry`: N simulated devices send their spools' batches
//! (1,000 records each, zlib JSON, QoS 1, as tether-agent's spool sends
//! them) as fast as tetherd acknowledges them: log lines, then metric
//! samples, each timed from the first batch to the last record stored
//! (tetherd's own counters). Then one device's lines are followed through
//! the API while the device sends one line at a time: device publish to
//! line read by the follower.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use tether_proto::telemetry::{CustomMetric, LogRecord, MetricRecord, Records, TelemetryBatch};
use tether_testkit::sim_agent::{Responder, SimAgent, connect_many, enroll_many, wait_online};
use tether_testkit::{ApiClient, Database, Tetherd, wait_until};

use crate::{ms, percentile};

pub struct Settings {
    pub database: Database,
    pub agents: usize,
    pub log_lines: u64,
    pub samples: u64,
    pub tail_lines: usize,
}

/// Records per batch, as tether-agent's spool sends at most.
const BATCH: u64 = 1000;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(settings.database).await?;
    let admin = tetherd.admin().await?;
    let scrape_token = std::fs::read_to_string(tetherd.data_dir().join("metrics-token"))
        .context("reading tetherd's scrape token")?;
    let scraper = admin.with_token(Some(scrape_token.trim().to_owned()));
    let names = (0..settings.agents).map(|i| format!("sim-{i}"));
    let credentials = enroll_many(&admin, names, &serde_json::json!({}), 16).await?;
    let devices = connect_many(&credentials, &Responder::Silent, 32).await?;
    wait_online(&admin, settings.agents, Duration::from_secs(120)).await?;
    println!(
        "tether-bench telemetry: {} simulated devices, {:?}, batches of {BATCH} records",
        settings.agents, settings.database
    );

    let per_device = settings.log_lines / settings.agents as u64 / BATCH;
    let (lines, elapsed, wire) =
        send_all(&devices, &scraper, "logs", per_device, log_batch).await?;
    println!(
        "  log lines            {lines} stored in {:.2} s = {:.0} lines/s; {:.0} bytes on the wire per 1,000 lines",
        elapsed.as_secs_f64(),
        lines as f64 / elapsed.as_secs_f64(),
        wire as f64 / lines as f64 * 1000.0
    );
    let per_device = settings.samples / settings.agents as u64 / BATCH;
    let (samples, elapsed, wire) =
        send_all(&devices, &scraper, "metrics", per_device, metric_batch).await?;
    println!(
        "  metric samples       {samples} stored in {:.2} s = {:.0} samples/s; {:.0} bytes on the wire per 1,000 samples",
        elapsed.as_secs_f64(),
        samples as f64 / elapsed.as_secs_f64(),
        wire as f64 / samples as f64 * 1000.0
    );

    let mut tail = live_tail(&admin, &devices[0], settings.tail_lines).await?;
    tail.sort();
    println!(
        "  live tail            p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>6.2} ms   ({} lines, device publish to follower)",
        ms(percentile(&tail, 50.0)),
        ms(percentile(&tail, 99.0)),
        ms(tail.last().copied().unwrap_or_default()),
        tail.len()
    );
    for device in devices {
        device.disconnect().await;
    }
    Ok(())
}

/// Every device sends `batches` batches made by `make(device, n)`; returns
/// records stored, time to the last stored, and bytes sent.
async fn send_all(
    devices: &[SimAgent],
    scraper: &ApiClient,
    stream: &str,
    batches: u64,
    make: fn(usize, u64) -> TelemetryBatch,
) -> anyhow::Result<(u64, Duration, u64)> {
    let before = stored(scraper, stream).await?;
    let expected = before + batches * BATCH * devices.len() as u64;
    let started = Instant::now();
    let wire: Vec<usize> = futures::stream::iter(devices.iter().enumerate())
        .map(|(d, device)| async move {
            let mut bytes = 0;
            for n in 0..batches {
                bytes += device.send_telemetry(&make(d, n)).await?;
            }
            anyhow::Ok(bytes)
        })
        .buffer_unordered(devices.len())
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    wait_until(
        &format!("every {stream} record stored"),
        Duration::from_secs(600),
        || async move { Ok((stored(scraper, stream).await? >= expected).then_some(())) },
    )
    .await?;
    Ok((
        expected - before,
        started.elapsed(),
        wire.iter().sum::<usize>() as u64,
    ))
}

/// `tether_telemetry_stored_records_total{stream}` from tetherd's `/metrics`.
async fn stored(scraper: &ApiClient, stream: &str) -> anyhow::Result<u64> {
    let (status, text) = scraper.get_text("/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {text}");
    let name = format!("tether_telemetry_stored_records_total{{stream=\"{stream}\"}} ");
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(&name))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// Log lines as a busy host writes them: a few units, numbers that vary.
fn log_batch(device: usize, n: u64) -> TelemetryBatch {
    let now = Utc::now();
    let records = (0..BATCH)
        .map(|i| {
            let k = n * BATCH + i;
            let (unit, priority, message) = match k % 4 {
                0 => (
                    "sshd.service",
                    6,
                    format!(
                        "Accepted publickey for deploy{} from 10.{}.{}.{} port {} ssh2",
                        k % 7,
                        k % 250,
                        (k / 3) % 250,
                        (k * 7) % 250,
                        40_000 + k % 20_000
                    ),
                ),
                1 => (
                    "kernel",
                    4,
                    format!(
                        "eth0: link up, 1000Mbps, full-duplex, lpa 0x{:04X}",
                        (k * 31) % 65_536
                    ),
                ),
                2 => (
                    "app.service",
                    6,
                    format!(
                        "request id={} path=/api/v1/items/{} status=200 duration_ms={}",
                        k,
                        k % 977,
                        k % 113
                    ),
                ),
                _ => (
                    "cron",
                    5,
                    format!(
                        "(root) CMD (/usr/lib/sysstat/sa1 1 1) pid {}",
                        1000 + k % 30_000
                    ),
                ),
            };
            LogRecord {
                at: now,
                priority,
                unit: unit.to_owned(),
                message,
                fields: Default::default(),
            }
        })
        .collect();
    TelemetryBatch {
        spool_id: format!("bench-logs-{device}"),
        first_seq: n * BATCH,
        records: Records::Logs(records),
        dropped: Default::default(),
        replay: false,
        usage: Vec::new(),
    }
}

/// Sensors each simulated device reads.
const SENSORS: u64 = 8;

/// Named values as applications push them: a few sensors, each read every
/// millisecond from the bench's start. Every sample is a point of its own:
/// samples of one series at one instant would be stored once.
fn metric_batch(device: usize, n: u64) -> TelemetryBatch {
    static START: std::sync::OnceLock<chrono::DateTime<Utc>> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Utc::now);
    let records = (0..BATCH)
        .map(|i| {
            let k = n * BATCH + i;
            MetricRecord::Custom(CustomMetric {
                name: "temperature_celsius".to_owned(),
                value: 20.0 + (k % 100) as f64 / 10.0,
                labels: [("sensor".to_owned(), format!("s{}", k % SENSORS))].into(),
                at: start + chrono::Duration::milliseconds((k / SENSORS) as i64),
            })
        })
        .collect();
    TelemetryBatch {
        spool_id: format!("bench-metrics-{device}"),
        first_seq: n * BATCH,
        records: Records::Metrics(records),
        dropped: Default::default(),
        replay: false,
        usage: Vec::new(),
    }
}

/// One line at a time from `device`, each read back through a follower.
async fn live_tail(
    admin: &ApiClient,
    device: &SimAgent,
    lines: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut follow = admin
        .get_json_lines(&format!("/api/v1/devices/{}/logs/follow", device.device))
        .await?;
    anyhow::ensure!(follow.status == 200, "follow answered {}", follow.status);
    let mut latencies = Vec::with_capacity(lines);
    // The follow has begun once a line sent after it shows up.
    let mut seq = 1_000_000_000;
    loop {
        device.send_telemetry(&one_line(seq, "warm-up")).await?;
        seq += 1;
        if let Ok(Some(_)) = follow.next(Duration::from_millis(500)).await {
            break;
        }
    }
    while let Ok(Some(_)) = follow.next(Duration::from_millis(300)).await {}
    for i in 0..lines {
        let message = format!("tail {i}");
        let sent = Instant::now();
        device.send_telemetry(&one_line(seq, &message)).await?;
        seq += 1;
        loop {
            let line = follow
                .next(Duration::from_secs(10))
                .await?
                .context("the follow stream ended")?;
            if line["message"] == message.as_str() {
                break;
            }
        }
        latencies.push(sent.elapsed());
    }
    Ok(latencies)
}

fn one_line(seq: u64, message: &str) -> TelemetryBatch {
    TelemetryBatch {
        spool_id: "bench-tail".to_owned(),
        first_seq: seq,
        records: Records::Logs(vec![LogRecord {
            at: Utc::now(),
            priority: 6,
            unit: "bench".to_owned(),
            message: message.to_owned(),
            fields: Default::default(),
        }]),
        dropped: Default::default(),
        replay: false,
        usage: Vec::new(),
    }
}
