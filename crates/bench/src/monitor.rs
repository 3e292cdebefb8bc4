//! `--mode monitor`: the fleet monitor's cost (issue 18, ADR 0032). N
//! devices (`--agents`, 10,000 for the figure) are written to the
//! store as a fleet that talks and has applied its spec; the monitor's pass
//! runs in this process against it, as the leader replica runs it, with
//! requests to devices counted but not sent. Prints the CPU time of a pass
//! (this process plus PostgreSQL's backends) in each phase: a quiet fleet
//! (the usual case: nothing to do), every device falling silent (a rebirth
//! request, an event and a watch written for each), every device alerting
//! (an alert raised for each), and a fleet still alerting (nothing new).
//! Then the cost per minute at the default settings (a pass every 30 s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tether_proto::DeviceId;
use tether_proto::api::Labels;
use tether_proto::control::ControlMessage;
use tether_proto::spec::ReportedStatus;
use tether_server::monitor::{DeviceRequests, Monitor, MonitorConfig, PassSummary};
use tether_server::store::{ActionBytes, SeenDevice, Store};
use tether_testkit::Database;
use tether_testkit::postgres::TempPostgres;

pub struct Settings {
    pub database: Database,
    pub devices: usize,
}

/// Requests counted, not sent: the bench measures the monitor, not MQTT.
#[derive(Default)]
struct Counted(AtomicU64);

impl DeviceRequests for Counted {
    async fn request(&self, _device: &DeviceId, _message: ControlMessage) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    async fn resend_spec(&self, _device: &DeviceId) {}
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let postgres = match settings.database {
        Database::Sqlite => None,
        Database::Postgres => Some(TempPostgres::start()?),
    };
    let url = match &postgres {
        Some(postgres) => postgres.url(),
        None => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("tether.db").display()
        ),
    };
    let store = Store::connect(&url).await?;
    let start = Utc::now();
    let names: Vec<DeviceId> = (0..settings.devices)
        .map(|i| DeviceId::new(format!("sim-{i:05}")))
        .collect::<Result<_, _>>()?;
    let fleet_label: Labels = [("fleet".to_owned(), "bench".to_owned())]
        .into_iter()
        .collect();
    let rows: Vec<(DeviceId, Labels)> = names
        .iter()
        .map(|name| (name.clone(), fleet_label.clone()))
        .collect();
    store.create_devices(&rows, start).await?;
    let seen: Vec<SeenDevice> = names
        .iter()
        .map(|device| SeenDevice {
            device: device.clone(),
            at: start,
            actions: ActionBytes::default(),
        })
        .collect();
    // As the ingest's writer does: batches well under SQLite's parameter limit.
    for batch in seen.chunks(1000) {
        store.touch_last_seen(batch).await?;
    }
    for device in &names {
        store
            .write_spec(device, &Default::default(), 0, 1, start)
            .await?;
        store
            .set_reported(
                device,
                &ReportedStatus {
                    spec_version: 1,
                    ..Default::default()
                },
                start,
            )
            .await?;
    }
    let config = MonitorConfig::default();
    let requests = Counted::default();
    let monitor = Monitor::new(store, requests, config.clone(), start);
    println!(
        "tether-bench monitor: {} devices on {:?}, silence {} s, pass every {} s",
        settings.devices,
        settings.database,
        config.silence_interval.as_secs(),
        config.pass_interval().as_secs()
    );
    let silence = chrono::Duration::from_std(config.silence_interval)?;
    let quiet = phase(&monitor, "quiet fleet", start, 10).await?;
    // Each request waits an interval: four steps to the alert.
    phase(&monitor, "all silent: 1st rebirth", start + silence, 1).await?;
    phase(&monitor, "all silent: 2nd rebirth", start + silence * 2, 1).await?;
    phase(&monitor, "all silent: 3rd rebirth", start + silence * 3, 1).await?;
    phase(&monitor, "all silent: alert raised", start + silence * 4, 1).await?;
    let alerting = phase(
        &monitor,
        "all alerting, nothing new",
        start + silence * 5,
        10,
    )
    .await?;
    let passes_per_minute = 60.0 / config.pass_interval().as_secs_f64();
    for (what, cpu) in [("quiet", quiet), ("alerting", alerting)] {
        println!(
            "  per minute ({what}, {passes_per_minute:.0} passes): {:.1} ms CPU per {} devices",
            cpu * passes_per_minute,
            settings.devices
        );
    }
    drop(postgres);
    Ok(())
}

/// Runs `passes` passes at `at`; prints and returns the CPU ms of one.
async fn phase(
    monitor: &Monitor<Counted>,
    what: &str,
    at: DateTime<Utc>,
    passes: u32,
) -> anyhow::Result<f64> {
    let cpu_before = cpu_ms()?;
    let started = Instant::now();
    let mut summary = PassSummary::default();
    for _ in 0..passes {
        summary = monitor.pass(at).await.context("a monitor pass")?;
    }
    let wall = started.elapsed() / passes;
    let cpu = (cpu_ms()? - cpu_before) / f64::from(passes);
    println!(
        "  {what:<28} {cpu:>8.1} ms CPU a pass, {:>8.1} ms wall ({} checked, {} rebirths, {} alerts raised)",
        ms(wall),
        summary.devices_checked,
        summary.rebirths_requested,
        summary.alerts_raised
    );
    Ok(cpu)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// CPU time so far of this process and of every `postgres` process, in
/// ms (the bench runs alone; PostgreSQL's backends stay connected in the
/// pool, so their time is not lost when they exit).
fn cpu_ms() -> anyhow::Result<f64> {
    let mut ticks = process_ticks("self")?;
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            ticks += process_ticks(pid).unwrap_or(0);
        }
    }
    // Linux reports in USER_HZ, 100 a second on every architecture.
    Ok(ticks as f64 * 10.0)
}

/// utime + stime of /proc/PID/stat.
pub(crate) fn process_ticks(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command may hold spaces; fields resume after its closing paren.
    let rest = stat.rsplit_once(')').context("a stat line")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}
