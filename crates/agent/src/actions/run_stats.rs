//! `run-stats` / `stop-stats`: a background sampler that publishes
//! `HostMetrics` on the device's `metrics` topic every interval.
//!
//! Reading the host (sysinfo) is kept apart from turning readings into
//! metrics, which is pure and tested with made-up numbers.

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sysinfo::{Disks, Networks, System};
use tether_proto::metrics::HostMetrics;
use tokio::task::JoinHandle;

use super::ActionError;

/// Seconds between samples when `run-stats` names no interval.
pub const DEFAULT_INTERVAL: u64 = 10;

/// Where samples go; the session publishes them on MQTT.
pub trait MetricsSink: Send + Sync + 'static {
    fn publish_metrics(&self, metrics: &HostMetrics);
}

/// Counters as read from the host at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reading {
    pub cpu_percent: f32,
    pub memory_used: u64,
    pub memory_total: u64,
    pub disk_used: u64,
    pub disk_total: u64,
    /// Bytes since the interfaces came up; samples report differences.
    pub network_rx_total: u64,
    pub network_tx_total: u64,
}

/// The sample published for `reading`; network traffic counts since `previous`.
pub fn to_metrics(now: DateTime<Utc>, reading: &Reading, previous: &Reading) -> HostMetrics {
    HostMetrics {
        sampled_at: now,
        cpu_percent: f64::from(reading.cpu_percent).clamp(0.0, 100.0),
        memory_used_bytes: reading.memory_used,
        memory_total_bytes: reading.memory_total,
        disk_used_bytes: reading.disk_used,
        disk_total_bytes: reading.disk_total,
        // A counter that went down was reset (interface re-created): count nothing.
        network_rx_bytes: reading
            .network_rx_total
            .saturating_sub(previous.network_rx_total),
        network_tx_bytes: reading
            .network_tx_total
            .saturating_sub(previous.network_tx_total),
    }
}

/// Used and total bytes over disks `(device name, total, available)`; a device
/// mounted several times (bind mounts, overlays) counts once.
pub fn disk_totals(disks: impl IntoIterator<Item = (OsString, u64, u64)>) -> (u64, u64) {
    let mut seen = HashSet::new();
    disks
        .into_iter()
        .filter(|(name, _, _)| seen.insert(name.clone()))
        .fold((0, 0), |(used, total), (_, disk_total, available)| {
            (
                used + disk_total.saturating_sub(available),
                total + disk_total,
            )
        })
}

/// The host's counters; exists only while stats run, to keep the idle agent small.
struct Sampler {
    system: System,
    disks: Disks,
    networks: Networks,
}

impl Sampler {
    fn new() -> Self {
        Self {
            system: System::new(),
            disks: Disks::new_with_refreshed_list(),
            networks: Networks::new_with_refreshed_list(),
        }
    }

    /// Reads the host; blocking file-system work, so run it off the runtime.
    fn read(&mut self) -> Reading {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        self.networks.refresh(true);
        let (disk_used, disk_total) = disk_totals(self.disks.iter().map(|disk| {
            (
                disk.name().to_owned(),
                disk.total_space(),
                disk.available_space(),
            )
        }));
        let (network_rx_total, network_tx_total) =
            self.networks.values().fold((0u64, 0u64), |(rx, tx), data| {
                (
                    rx.saturating_add(data.total_received()),
                    tx.saturating_add(data.total_transmitted()),
                )
            });
        Reading {
            cpu_percent: self.system.global_cpu_usage(),
            memory_used: self.system.used_memory(),
            memory_total: self.system.total_memory(),
            disk_used,
            disk_total,
            network_rx_total,
            network_tx_total,
        }
    }
}

async fn read_off_runtime(mut sampler: Sampler) -> Option<(Sampler, Reading)> {
    tokio::task::spawn_blocking(move || {
        let reading = sampler.read();
        (sampler, reading)
    })
    .await
    .inspect_err(|e| tracing::error!("host sampling failed: {e}; stats stopped"))
    .ok()
}

async fn sample_every(interval: Duration, sink: Arc<dyn MetricsSink>) {
    let Some((mut sampler, mut previous)) = read_off_runtime(Sampler::new()).await else {
        return;
    };
    // The first sample comes one interval after the baseline, so CPU use and
    // traffic cover a whole interval.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some((next_sampler, reading)) = read_off_runtime(sampler).await else {
            return;
        };
        sampler = next_sampler;
        sink.publish_metrics(&to_metrics(Utc::now(), &reading, &previous));
        previous = reading;
    }
}

/// The one background sampler, if running.
pub struct StatsRunner {
    sink: Arc<dyn MetricsSink>,
    running: Option<(u64, JoinHandle<()>)>,
}

impl StatsRunner {
    pub fn new(sink: Arc<dyn MetricsSink>) -> Self {
        Self {
            sink,
            running: None,
        }
    }

    /// Starts sampling every `interval_secs`, replacing a running sampler.
    pub fn start(&mut self, interval_secs: u64) {
        self.stop();
        let task = tokio::spawn(sample_every(
            Duration::from_secs(interval_secs),
            self.sink.clone(),
        ));
        self.running = Some((interval_secs, task));
        tracing::info!("stats started: a sample every {interval_secs} s");
    }

    /// Stops sampling; whether it was running.
    pub fn stop(&mut self) -> bool {
        match self.running.take() {
            Some((_, task)) => {
                task.abort();
                tracing::info!("stats stopped");
                true
            }
            None => false,
        }
    }

    pub fn interval(&self) -> Option<u64> {
        self.running.as_ref().map(|(interval, _)| *interval)
    }
}

impl Drop for StatsRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Default, Deserialize)]
struct Input {
    interval: Option<u64>,
}

fn parse(input: &Value) -> Result<u64, ActionError> {
    let input: Input = if input.is_null() {
        Input::default()
    } else {
        serde_json::from_value(input.clone())
            .map_err(|e| ActionError::invalid("$.interval", e.to_string()))?
    };
    match input.interval.unwrap_or(DEFAULT_INTERVAL) {
        0 => Err(ActionError::invalid(
            "$.interval",
            "must be at least 1 second",
        )),
        interval => Ok(interval),
    }
}

/// `run-stats`: (re)starts the sampler.
pub fn run(input: &Value, runner: &mut StatsRunner) -> Result<Value, ActionError> {
    let interval = parse(input)?;
    runner.start(interval);
    Ok(json!({"interval": interval, "running": true}))
}

/// `stop-stats`: stops the sampler; stopping a stopped sampler is fine.
pub fn stop(runner: &mut StatsRunner) -> Value {
    runner.stop();
    json!({"running": false})
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    struct ChannelSink(mpsc::UnboundedSender<HostMetrics>);
    impl MetricsSink for ChannelSink {
        fn publish_metrics(&self, metrics: &HostMetrics) {
            let _ = self.0.send(metrics.clone());
        }
    }

    #[test]
    fn metrics_report_traffic_since_the_previous_reading() {
        let previous = Reading {
            network_rx_total: 1_000,
            network_tx_total: 5_000,
            ..Reading::default()
        };
        let reading = Reading {
            cpu_percent: 12.5,
            memory_used: 3,
            memory_total: 8,
            disk_used: 10,
            disk_total: 100,
            network_rx_total: 1_500,
            network_tx_total: 4_000,
        };
        let now = Utc::now();
        let metrics = to_metrics(now, &reading, &previous);
        assert_eq!(
            metrics,
            HostMetrics {
                sampled_at: now,
                cpu_percent: 12.5,
                memory_used_bytes: 3,
                memory_total_bytes: 8,
                disk_used_bytes: 10,
                disk_total_bytes: 100,
                network_rx_bytes: 500,
                // The tx counter went down: reset, so nothing is counted.
                network_tx_bytes: 0,
            }
        );
        let wild = Reading {
            cpu_percent: 250.0,
            ..Reading::default()
        };
        assert_eq!(to_metrics(now, &wild, &previous).cpu_percent, 100.0);
    }

    #[test]
    fn a_disk_mounted_twice_counts_once() {
        let (used, total) = disk_totals([
            (OsString::from("/dev/sda1"), 100, 40),
            (OsString::from("/dev/sda1"), 100, 40),
            (OsString::from("/dev/sdb1"), 50, 50),
        ]);
        assert_eq!((used, total), (60, 150));
    }

    #[test]
    fn this_host_can_be_read() {
        let reading = Sampler::new().read();
        assert!(reading.memory_total > 0);
        assert!(reading.memory_used <= reading.memory_total);
        assert!(reading.disk_used <= reading.disk_total);
    }

    #[test]
    fn the_interval_defaults_to_ten_seconds_and_must_be_positive() {
        assert_eq!(parse(&Value::Null).expect("default"), 10);
        assert_eq!(parse(&json!({})).expect("default"), 10);
        assert_eq!(parse(&json!({"interval": 3})).expect("given"), 3);
        let err = parse(&json!({"interval": 0})).expect_err("zero");
        assert!(err.to_string().starts_with("$.interval"), "{err}");
        assert!(parse(&json!({"interval": "often"})).is_err());
    }

    #[tokio::test]
    async fn samples_flow_until_stopped_and_a_restart_takes_the_new_interval() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut runner = StatsRunner::new(Arc::new(ChannelSink(tx)));
        let answer = run(&json!({"interval": 60}), &mut runner).expect("starts");
        assert_eq!(answer, json!({"interval": 60, "running": true}));
        run(&json!({"interval": 1}), &mut runner).expect("restarts");
        assert_eq!(runner.interval(), Some(1));
        let sample = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a sample within 5 s")
            .expect("channel open");
        assert!(sample.memory_total_bytes > 0);
        assert_eq!(stop(&mut runner), json!({"running": false}));
        assert_eq!(runner.interval(), None);
        // Let an in-flight sample land, then expect silence.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        let quiet = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await;
        assert!(quiet.is_err(), "a sample arrived after stop-stats");
    }
}
