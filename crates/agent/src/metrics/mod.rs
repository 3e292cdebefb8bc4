//! Host metrics: one collector per source, each a pure parser of the
//! kernel's text plus a thin reader, combined into a [`HostSample`] by
//! [`Collector`]. [`schedule`] takes samples always, every
//! `metricsConfig.intervalSeconds` of the spec; `run-stats` takes them
//! faster with the same collector (`actions::run_stats`).

pub mod cpu;
pub mod disk_io;
pub mod filesystems;
pub mod load;
pub mod memory;
pub mod network;
pub mod processes;
pub mod schedule;
pub mod temperature;
pub mod uptime;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tether_proto::metrics::{
    DiskIoSample, HostSample, InterfaceSample, MemorySample, MountSample, TemperatureSample,
};

use cpu::CpuTimes;
use disk_io::IoCounters;
use network::NetCounters;

/// Where samples go; the session spools them.
pub trait MetricsSink: Send + Sync + 'static {
    fn publish_sample(&self, sample: &HostSample);
}

/// Everything read from the host at one instant: gauges as they are,
/// counters since boot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub cpu: Vec<CpuTimes>,
    pub load: Option<[f32; 3]>,
    pub mem: Option<MemorySample>,
    pub fs: Vec<MountSample>,
    pub io: BTreeMap<String, IoCounters>,
    pub net: BTreeMap<String, NetCounters>,
    pub temp: Vec<TemperatureSample>,
    pub procs: Option<u32>,
    pub uptime: Option<u64>,
}

/// The sample of `reading` at `at`; counters as differences since
/// `previous`, taken `elapsed` before. Without a previous reading there
/// are no differences: CPU use, I/O and traffic are left out.
pub fn combine(
    at: DateTime<Utc>,
    reading: &Reading,
    previous: Option<(&Reading, Duration)>,
) -> HostSample {
    let mut sample = HostSample {
        at,
        interval_ms: 0,
        cpu: Vec::new(),
        load: reading.load,
        mem: reading.mem,
        fs: reading.fs.clone(),
        io: Vec::new(),
        net: Vec::new(),
        temp: reading.temp.clone(),
        procs: reading.procs,
        uptime: reading.uptime,
    };
    let Some((before, elapsed)) = previous else {
        return sample;
    };
    sample.interval_ms = u32::try_from(elapsed.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    sample.cpu = cpu::percent(&reading.cpu, &before.cpu);
    // A device or interface that appeared since counts from its own start;
    // a counter that went down was reset and counts nothing.
    sample.io = reading
        .io
        .iter()
        .map(|(name, now)| {
            let was = before.io.get(name).copied().unwrap_or_default();
            DiskIoSample {
                d: name.clone(),
                r: now.read.saturating_sub(was.read),
                w: now.written.saturating_sub(was.written),
            }
        })
        .collect();
    sample.net = reading
        .net
        .iter()
        .map(|(name, now)| {
            let was = before.net.get(name).copied().unwrap_or_default();
            InterfaceSample {
                i: name.clone(),
                rb: now.rx_bytes.saturating_sub(was.rx_bytes),
                tb: now.tx_bytes.saturating_sub(was.tx_bytes),
                rp: now.rx_packets.saturating_sub(was.rx_packets),
                tp: now.tx_packets.saturating_sub(was.tx_packets),
                re: now.rx_errors.saturating_sub(was.rx_errors),
                te: now.tx_errors.saturating_sub(was.tx_errors),
            }
        })
        .collect();
    sample
}

/// Reads the host under `root` (`/` but in tests) and keeps the previous
/// reading for the differences. Reading is blocking file work: call it
/// off the async runtime.
pub struct Collector {
    root: PathBuf,
    previous: Option<(Reading, Instant)>,
}

impl Collector {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            previous: None,
        }
    }

    /// Reads the host without making a sample: the baseline of the next.
    pub fn prime(&mut self) {
        self.previous = Some((read(&self.root), Instant::now()));
    }

    /// A sample dated `at`, with differences since the previous reading.
    pub fn sample(&mut self, at: DateTime<Utc>) -> HostSample {
        let reading = read(&self.root);
        let now = Instant::now();
        let sample = combine(
            at,
            &reading,
            self.previous
                .as_ref()
                .map(|(before, taken)| (before, now.duration_since(*taken))),
        );
        self.previous = Some((reading, now));
        sample
    }
}

/// Reads every source under `root`; a source the host lacks is empty.
pub fn read(root: &Path) -> Reading {
    let text = |path: &str| std::fs::read_to_string(root.join(path)).ok();
    let names = |path: &str| -> Vec<String> {
        std::fs::read_dir(root.join(path))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let disks: HashSet<String> = names("sys/block").into_iter().collect();
    Reading {
        cpu: text("proc/stat")
            .map(|t| cpu::parse(&t))
            .unwrap_or_default(),
        load: text("proc/loadavg").and_then(|t| load::parse(&t)),
        mem: text("proc/meminfo").and_then(|t| memory::parse(&t)),
        fs: text("proc/self/mounts")
            .map(|t| filesystems::parse(&t))
            .unwrap_or_default()
            .iter()
            .filter_map(|mount| filesystems::measure(mount, root))
            .collect(),
        io: text("proc/diskstats")
            .map(|t| disk_io::parse(&t, &disks))
            .unwrap_or_default(),
        net: text("proc/net/dev")
            .map(|t| network::parse(&t))
            .unwrap_or_default(),
        temp: temperature::read(root),
        procs: Some(processes::count(names("proc").iter().map(String::as_str))).filter(|&n| n > 0),
        uptime: text("proc/uptime").and_then(|t| uptime::parse(&t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid")
    }

    /// A fake host: `/proc` files as text under a temp dir.
    fn host(stat: &str, net: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("temp dir");
        let proc = root.path().join("proc");
        std::fs::create_dir_all(proc.join("net")).expect("mkdir");
        std::fs::create_dir_all(proc.join("42")).expect("mkdir");
        std::fs::create_dir_all(proc.join("self")).expect("mkdir");
        std::fs::write(proc.join("stat"), stat).expect("write");
        std::fs::write(proc.join("loadavg"), "1.00 0.50 0.25 1/100 4242\n").expect("write");
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal: 1000 kB\nMemAvailable: 250 kB\n",
        )
        .expect("write");
        std::fs::write(proc.join("uptime"), "100.5 50.0\n").expect("write");
        std::fs::write(
            proc.join("net/dev"),
            format!("h1\nh2\n  eth0: {net} 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"),
        )
        .expect("write");
        std::fs::write(proc.join("self/mounts"), "proc /proc proc rw 0 0\n").expect("write");
        root
    }

    #[test]
    fn a_fake_host_is_read_and_differences_cover_the_interval() {
        let root = host("cpu 10 0 0 90 0 0 0 0\ncpu0 10 0 0 90 0 0 0 0\n", "1000 10");
        let before = read(root.path());
        assert_eq!(before.load, Some([1.0, 0.5, 0.25]));
        assert_eq!(before.mem.map(|m| (m.t, m.a)), Some((1_024_000, 256_000)));
        assert_eq!((before.procs, before.uptime), (Some(1), Some(100)));
        assert!(before.fs.is_empty() && before.temp.is_empty() && before.io.is_empty());
        let first = combine(at(), &before, None);
        assert_eq!(
            (first.interval_ms, first.cpu.len(), first.net.len()),
            (0, 0, 0)
        );

        std::fs::write(
            root.path().join("proc/stat"),
            "cpu 60 0 0 140 0 0 0 0\ncpu0 60 0 0 140 0 0 0 0\n",
        )
        .expect("write");
        std::fs::write(
            root.path().join("proc/net/dev"),
            "h1\nh2\n  eth0: 3000 30 0 0 0 0 0 0 500 5 0 0 0 0 0 0\n",
        )
        .expect("write");
        let after = read(root.path());
        let sample = combine(at(), &after, Some((&before, Duration::from_secs(2))));
        assert_eq!(sample.interval_ms, 2000);
        assert_eq!(sample.cpu, [50.0, 50.0]);
        assert_eq!(
            sample.net,
            [InterfaceSample {
                i: "eth0".into(),
                rb: 2000,
                tb: 500,
                rp: 20,
                tp: 5,
                re: 0,
                te: 0
            }]
        );
    }

    #[test]
    fn this_host_gives_a_full_sample() {
        let mut collector = Collector::new("/");
        collector.prime();
        let sample = collector.sample(Utc::now());
        assert!(sample.interval_ms >= 1);
        assert!(sample.cpu.len() >= 2, "total and at least one core");
        assert!(sample.mem.is_some_and(|m| m.t > 0));
        assert!(!sample.fs.is_empty(), "at least one real mount");
        assert!(sample.procs.is_some_and(|n| n > 0));
        assert!(sample.uptime.is_some());
    }
}
