//! Host metrics a device samples: [`HostSample`] always, every
//! `metricsConfig.intervalSeconds` and faster while `run-stats` is on; the
//! older [`HostMetrics`] totals, which agents before host samples sent.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostMetrics {
    pub sampled_at: DateTime<Utc>,
    /// Average CPU use over all cores since the previous sample, 0–100.
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    /// Bytes received on all interfaces since the previous sample.
    pub network_rx_bytes: u64,
    /// Bytes sent on all interfaces since the previous sample.
    pub network_tx_bytes: u64,
}

impl HostMetrics {
    /// Largest `metrics` payload tetherd accepts, in bytes: a sample is a
    /// handful of numbers.
    pub const MAX_PAYLOAD_BYTES: usize = 4 * 1024;
}

/// A host sample of the agents that collect host metrics always
/// (`metricsConfig.intervalSeconds`) and on `run-stats`: every reading the
/// host offers, kept compact for the spool and the wire. Short keys, whole
/// numbers where the kernel gives whole numbers, and counters as
/// differences over `intervalMs` (tetherd turns them into rates per
/// second). Lists name their entity first (`m` mount, `d` device, `i`
/// interface, `s` sensor); an entity the host lacks is simply absent.
///
/// tetherd flattens a sample into named series (docs/device-contract.md §4).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostSample {
    /// Milliseconds since the Unix epoch.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub at: DateTime<Utc>,
    /// Milliseconds the counter differences (`cpu`, `io`, `net`) cover;
    /// 0 for the first sample after a start, which has none.
    #[serde(default)]
    pub interval_ms: u32,
    /// CPU use in percent over the interval, one decimal: the total first,
    /// then core 0, 1, …
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<f32>,
    /// Load averages over 1, 5 and 15 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<[f32; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<MemorySample>,
    /// Space of each real mounted file system.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<MountSample>,
    /// I/O of each block device over the interval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io: Vec<DiskIoSample>,
    /// Traffic of each network interface (not `lo`) over the interval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<InterfaceSample>,
    /// Temperatures the kernel exposes, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub temp: Vec<TemperatureSample>,
    /// Processes running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub procs: Option<u32>,
    /// Seconds since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime: Option<u64>,
}

/// Memory and swap in bytes (`/proc/meminfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemorySample {
    /// Total.
    pub t: u64,
    /// Available to new work without swapping (`MemAvailable`).
    pub a: u64,
    /// Swap total.
    #[serde(default)]
    pub st: u64,
    /// Swap free.
    #[serde(default)]
    pub sf: u64,
}

/// One mounted file system, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MountSample {
    /// Mount point.
    pub m: String,
    /// Total.
    pub t: u64,
    /// Used.
    pub u: u64,
    /// Available to unprivileged users.
    pub a: u64,
}

/// One block device's I/O over the interval.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DiskIoSample {
    /// Device name (`sda`, `nvme0n1`, `mmcblk0`).
    pub d: String,
    /// Bytes read.
    pub r: u64,
    /// Bytes written.
    pub w: u64,
}

/// One network interface's traffic over the interval.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InterfaceSample {
    pub i: String,
    /// Bytes received and sent.
    pub rb: u64,
    pub tb: u64,
    /// Packets received and sent.
    pub rp: u64,
    pub tp: u64,
    /// Receive and send errors.
    #[serde(default)]
    pub re: u64,
    #[serde(default)]
    pub te: u64,
}

/// One temperature sensor, in degrees Celsius.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TemperatureSample {
    /// Sensor name (`thermal_zone0:x86_pkg_temp`, `coretemp:Core 0`).
    pub s: String,
    pub c: f32,
}

impl HostSample {
    /// The summary the `metrics` table and `GET /devices/{name}/metrics`
    /// kept before host samples: totals over cores, mounts and interfaces.
    pub fn summary(&self) -> HostMetrics {
        let (memory_used_bytes, memory_total_bytes) =
            self.mem.map_or((0, 0), |m| (m.t.saturating_sub(m.a), m.t));
        HostMetrics {
            sampled_at: self.at,
            cpu_percent: self.cpu.first().map_or(0.0, |c| f64::from(*c)),
            memory_used_bytes,
            memory_total_bytes,
            disk_used_bytes: self.fs.iter().map(|f| f.u).sum(),
            disk_total_bytes: self.fs.iter().map(|f| f.t).sum(),
            network_rx_bytes: self.net.iter().map(|n| n.rb).sum(),
            network_tx_bytes: self.net.iter().map(|n| n.tb).sum(),
        }
    }
}

/// `GET /api/v1/devices/{name}/metrics/query`: the points of each series
/// of one metric of a device, in buckets of `stepSeconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricRange {
    pub device: String,
    pub metric: String,
    /// Where the points come from: `raw`, `1m` or `1h` rollups.
    pub resolution: String,
    /// The bucket width used: the step asked for, rounded up to a
    /// multiple of the resolution.
    pub step_seconds: u64,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub series: Vec<SeriesPoints>,
    /// More series have this name than one answer holds.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeriesPoints {
    pub labels: std::collections::BTreeMap<String, String>,
    /// Oldest first, one per bucket that has points.
    pub points: Vec<RangePoint>,
}

/// The points of one bucket: their average, minimum, maximum and count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RangePoint {
    /// The bucket's start.
    pub at: DateTime<Utc>,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub count: u64,
}

/// A series of a device and its newest point
/// (`GET /api/v1/devices/{name}/metrics/series`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeriesLatest {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub at: DateTime<Utc>,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeriesList {
    pub device: String,
    /// By name, then labels.
    pub series: Vec<SeriesLatest>,
    #[serde(default)]
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{Dropped, MetricRecord, Records, TelemetryBatch, decode, encode};

    /// A typical small host: 4 cores, 2 mounts, 1 disk, 2 interfaces, 2
    /// sensors; values moving as a real host's do.
    fn sample(i: u64) -> HostSample {
        let wobble = |base: u64, spread: u64| base + (i * 7919 + base) % spread;
        HostSample {
            at: DateTime::from_timestamp_millis(1_800_000_000_000 + i as i64 * 60_013)
                .unwrap_or_default(),
            interval_ms: 60_000 + (i % 7) as u32,
            cpu: (0..5)
                .map(|c| (wobble(c * 13, 900) as f32 / 10.0 * 10.0).round() / 10.0)
                .collect(),
            load: Some([0.52, 0.58, 0.61]),
            mem: Some(MemorySample {
                t: 4_022_345_728,
                a: wobble(2_100_000_000, 50_000_000),
                st: 1_073_737_728,
                sf: wobble(1_000_000_000, 1_000_000),
            }),
            fs: vec![
                MountSample {
                    m: "/".into(),
                    t: 31_250_000_000,
                    u: wobble(12_000_000_000, 4096 * 100),
                    a: 17_600_000_000,
                },
                MountSample {
                    m: "/boot/firmware".into(),
                    t: 535_805_952,
                    u: 63_434_752,
                    a: 472_371_200,
                },
            ],
            io: vec![DiskIoSample {
                d: "mmcblk0".into(),
                r: wobble(0, 40_960),
                w: wobble(1_000_000, 500_000),
            }],
            net: vec![
                InterfaceSample {
                    i: "eth0".into(),
                    rb: wobble(120_000, 90_000),
                    tb: wobble(40_000, 30_000),
                    rp: wobble(400, 300),
                    tp: wobble(200, 150),
                    re: 0,
                    te: 0,
                },
                InterfaceSample {
                    i: "wlan0".into(),
                    rb: wobble(1_000, 900),
                    tb: wobble(600, 500),
                    rp: wobble(10, 9),
                    tp: wobble(8, 7),
                    re: 0,
                    te: 0,
                },
            ],
            temp: vec![
                TemperatureSample {
                    s: "thermal_zone0:cpu-thermal".into(),
                    c: 45.0 + (i % 9) as f32,
                },
                TemperatureSample {
                    s: "rp1_adc:temp1".into(),
                    c: 38.5,
                },
            ],
            procs: Some(wobble(150, 20) as u32),
            uptime: Some(86_400 + i * 60),
        }
    }

    #[test]
    fn a_typical_host_sample_costs_under_200_bytes_compressed_in_a_batch() {
        let records: Vec<MetricRecord> = (0..60).map(|i| MetricRecord::Sample(sample(i))).collect();
        let json = serde_json::to_vec(&records[0]).expect("serializes");
        let batch = TelemetryBatch {
            spool_id: "0123456789abcdef".into(),
            first_seq: 0,
            records: Records::Metrics(records.clone()),
            dropped: Dropped::default(),
            replay: false,
            usage: Vec::new(),
        };
        let wire = encode(&batch);
        let per_sample = wire.len() / 60;
        // Printed for the record (docs/adr/0014): nextest shows it with --nocapture.
        println!(
            "one sample: {} bytes of JSON; 60 in a batch: {} bytes on the wire, {per_sample} per sample",
            json.len(),
            wire.len()
        );
        assert!(json.len() < 900, "{} bytes of JSON", json.len());
        assert!(per_sample < 200, "{per_sample} bytes per sample");
        assert_eq!(
            decode(&wire).expect("decodes").records,
            Records::Metrics(records)
        );
    }

    #[test]
    fn the_summary_keeps_the_old_totals() {
        let summary = sample(0).summary();
        assert_eq!(summary.cpu_percent, f64::from(sample(0).cpu[0]));
        assert_eq!(summary.disk_total_bytes, 31_250_000_000 + 535_805_952);
        assert_eq!(
            summary.memory_used_bytes,
            4_022_345_728 - sample(0).mem.map_or(0, |m| m.a)
        );
        assert_eq!(
            summary.network_rx_bytes,
            sample(0).net.iter().map(|n| n.rb).sum::<u64>()
        );
    }
}
