//! Metrics records as points of named series: what tetherd stores.
//!
//! Counters a host sample carries as differences over its interval become
//! rates per second, so samples of the always-on collector and of the
//! faster `run-stats` stream fit the same series.

use tether_proto::metrics::{HostMetrics, HostSample};
use tether_proto::telemetry::MetricRecord;

use super::series::{Point, SeriesKey};

/// The points of `records`, in order, and the index of each record's
/// first point among them.
pub fn points(records: &[MetricRecord]) -> (Vec<Point>, Vec<usize>) {
    let mut points = Vec::new();
    let mut starts = Vec::with_capacity(records.len());
    for record in records {
        starts.push(points.len());
        record_points(record, &mut points);
    }
    (points, starts)
}

fn record_points(record: &MetricRecord, points: &mut Vec<Point>) {
    match record {
        MetricRecord::Sample(sample) => host_sample(sample, points),
        MetricRecord::Host(metrics) => host_metrics(metrics, points),
        MetricRecord::Custom(metric) => points.push(Point {
            series: SeriesKey {
                name: metric.name.clone(),
                labels: metric.labels.clone(),
            },
            at: metric.at,
            value: metric.value,
        }),
    }
}

/// The points of a bare sample of the agents before host samples. Its
/// network bytes count since a previous sample at an unknown time, so
/// they make no rate and are left out.
pub fn host_metrics(m: &HostMetrics, points: &mut Vec<Point>) {
    let mut push = |series: SeriesKey, value: f64| {
        points.push(Point {
            series,
            at: m.sampled_at,
            value,
        })
    };
    push(
        SeriesKey::new("cpu_percent").with("cpu", "total"),
        m.cpu_percent,
    );
    push(
        SeriesKey::new("memory_used_bytes"),
        m.memory_used_bytes as f64,
    );
    push(
        SeriesKey::new("memory_total_bytes"),
        m.memory_total_bytes as f64,
    );
    push(
        SeriesKey::new("disk_used_bytes").with("mount", "all"),
        m.disk_used_bytes as f64,
    );
    push(
        SeriesKey::new("disk_total_bytes").with("mount", "all"),
        m.disk_total_bytes as f64,
    );
}

/// The points of a host sample (the series are listed in
/// docs/device-contract.md §4).
pub fn host_sample(s: &HostSample, points: &mut Vec<Point>) {
    let mut push = |series: SeriesKey, value: f64| {
        if value.is_finite() {
            points.push(Point {
                series,
                at: s.at,
                value,
            })
        }
    };
    // Differences over the interval, per second; none without an interval.
    let seconds = f64::from(s.interval_ms) / 1000.0;
    let rate = |delta: u64| (seconds > 0.0).then(|| delta as f64 / seconds);

    for (index, percent) in s.cpu.iter().enumerate() {
        let cpu = match index {
            0 => "total".to_owned(),
            core => (core - 1).to_string(),
        };
        push(
            SeriesKey::new("cpu_percent").with("cpu", cpu),
            f64::from(*percent),
        );
    }
    if let Some([one, five, fifteen]) = s.load {
        push(SeriesKey::new("load1"), f64::from(one));
        push(SeriesKey::new("load5"), f64::from(five));
        push(SeriesKey::new("load15"), f64::from(fifteen));
    }
    if let Some(mem) = s.mem {
        push(SeriesKey::new("memory_total_bytes"), mem.t as f64);
        push(SeriesKey::new("memory_available_bytes"), mem.a as f64);
        push(
            SeriesKey::new("memory_used_bytes"),
            mem.t.saturating_sub(mem.a) as f64,
        );
        push(SeriesKey::new("swap_total_bytes"), mem.st as f64);
        push(
            SeriesKey::new("swap_used_bytes"),
            mem.st.saturating_sub(mem.sf) as f64,
        );
    }
    for fs in &s.fs {
        let key = |name: &str| SeriesKey::new(name).with("mount", fs.m.clone());
        push(key("disk_total_bytes"), fs.t as f64);
        push(key("disk_used_bytes"), fs.u as f64);
        push(key("disk_available_bytes"), fs.a as f64);
        // As `df` shows it: of the space users may fill (blocks reserved
        // for root left out), the part used; what alert rules watch.
        let usable = fs.u.saturating_add(fs.a);
        if usable > 0 {
            push(
                key("disk_used_percent"),
                fs.u as f64 * 100.0 / usable as f64,
            );
        }
    }
    for io in &s.io {
        let key = |name: &str| SeriesKey::new(name).with("device", io.d.clone());
        if let Some(read) = rate(io.r) {
            push(key("disk_read_bytes_per_second"), read);
        }
        if let Some(written) = rate(io.w) {
            push(key("disk_written_bytes_per_second"), written);
        }
    }
    for net in &s.net {
        let key = |name: &str| SeriesKey::new(name).with("iface", net.i.clone());
        for (name, delta) in [
            ("net_rx_bytes_per_second", net.rb),
            ("net_tx_bytes_per_second", net.tb),
            ("net_rx_packets_per_second", net.rp),
            ("net_tx_packets_per_second", net.tp),
            ("net_rx_errors_per_second", net.re),
            ("net_tx_errors_per_second", net.te),
        ] {
            if let Some(value) = rate(delta) {
                push(key(name), value);
            }
        }
    }
    for temp in &s.temp {
        push(
            SeriesKey::new("temperature_celsius").with("sensor", temp.s.clone()),
            f64::from(temp.c),
        );
    }
    if let Some(procs) = s.procs {
        push(SeriesKey::new("processes"), f64::from(procs));
    }
    if let Some(uptime) = s.uptime {
        push(SeriesKey::new("uptime_seconds"), uptime as f64);
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use tether_proto::metrics::{
        DiskIoSample, InterfaceSample, MemorySample, MountSample, TemperatureSample,
    };
    use tether_proto::telemetry::CustomMetric;

    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid")
    }

    fn named(points: &[Point]) -> Vec<(String, f64)> {
        points
            .iter()
            .map(|p| {
                let labels: Vec<String> = p
                    .series
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect();
                (
                    format!("{}{{{}}}", p.series.name, labels.join(",")),
                    p.value,
                )
            })
            .collect()
    }

    #[test]
    fn a_host_sample_becomes_labelled_series_with_rates_per_second() {
        let sample = HostSample {
            at: at(),
            interval_ms: 2_000,
            cpu: vec![25.5, 50.0, 1.0],
            load: Some([0.5, 0.25, 0.125]),
            mem: Some(MemorySample {
                t: 8_000,
                a: 6_000,
                st: 100,
                sf: 40,
            }),
            fs: vec![MountSample {
                m: "/".into(),
                t: 100,
                u: 60,
                a: 30,
            }],
            io: vec![DiskIoSample {
                d: "sda".into(),
                r: 4096,
                w: 0,
            }],
            net: vec![InterfaceSample {
                i: "eth0".into(),
                rb: 1000,
                tb: 500,
                rp: 10,
                tp: 4,
                re: 0,
                te: 2,
            }],
            temp: vec![TemperatureSample {
                s: "cpu".into(),
                c: 41.5,
            }],
            procs: Some(120),
            uptime: Some(3600),
        };
        let got = named(&points(&[MetricRecord::Sample(sample)]).0);
        let want: Vec<(String, f64)> = [
            ("cpu_percent{cpu=\"total\"}", 25.5),
            ("cpu_percent{cpu=\"0\"}", 50.0),
            ("cpu_percent{cpu=\"1\"}", 1.0),
            ("load1{}", 0.5),
            ("load5{}", 0.25),
            ("load15{}", 0.125),
            ("memory_total_bytes{}", 8000.0),
            ("memory_available_bytes{}", 6000.0),
            ("memory_used_bytes{}", 2000.0),
            ("swap_total_bytes{}", 100.0),
            ("swap_used_bytes{}", 60.0),
            ("disk_total_bytes{mount=\"/\"}", 100.0),
            ("disk_used_bytes{mount=\"/\"}", 60.0),
            ("disk_available_bytes{mount=\"/\"}", 30.0),
            ("disk_used_percent{mount=\"/\"}", 200.0 / 3.0),
            ("disk_read_bytes_per_second{device=\"sda\"}", 2048.0),
            ("disk_written_bytes_per_second{device=\"sda\"}", 0.0),
            ("net_rx_bytes_per_second{iface=\"eth0\"}", 500.0),
            ("net_tx_bytes_per_second{iface=\"eth0\"}", 250.0),
            ("net_rx_packets_per_second{iface=\"eth0\"}", 5.0),
            ("net_tx_packets_per_second{iface=\"eth0\"}", 2.0),
            ("net_rx_errors_per_second{iface=\"eth0\"}", 0.0),
            ("net_tx_errors_per_second{iface=\"eth0\"}", 1.0),
            ("temperature_celsius{sensor=\"cpu\"}", 41.5),
            ("processes{}", 120.0),
            ("uptime_seconds{}", 3600.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn without_an_interval_counters_make_no_rates() {
        let sample = HostSample {
            at: at(),
            interval_ms: 0,
            net: vec![InterfaceSample {
                i: "eth0".into(),
                rb: 1000,
                ..Default::default()
            }],
            procs: Some(3),
            ..Default::default()
        };
        assert_eq!(
            named(&points(&[MetricRecord::Sample(sample)]).0),
            [("processes{}".to_owned(), 3.0)]
        );
    }

    #[test]
    fn old_totals_and_custom_metrics_join_the_same_model() {
        let old = HostMetrics {
            sampled_at: at(),
            cpu_percent: 12.5,
            memory_used_bytes: 1,
            memory_total_bytes: 2,
            disk_used_bytes: 3,
            disk_total_bytes: 4,
            network_rx_bytes: 5,
            network_tx_bytes: 6,
        };
        let custom = CustomMetric {
            name: "tank_level".into(),
            value: 0.73,
            labels: [("tank".to_owned(), "a".to_owned())].into(),
            at: at(),
        };
        let got = named(&points(&[MetricRecord::Host(old), MetricRecord::Custom(custom)]).0);
        assert_eq!(
            got.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            [
                "cpu_percent{cpu=\"total\"}",
                "memory_used_bytes{}",
                "memory_total_bytes{}",
                "disk_used_bytes{mount=\"all\"}",
                "disk_total_bytes{mount=\"all\"}",
                "tank_level{tank=\"a\"}",
            ]
        );
        assert_eq!(got[5].1, 0.73);
    }
}
