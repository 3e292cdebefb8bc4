//! tether-bench: starts a real tetherd, connects N simulated agents (real MQTT
//! 5 sessions with mutual TLS), measures action round trips through the API,
//! and reports memory of the controller and of an idle real tether-agent;
//! or (`--mode agent-offline`) the memory of a real tether-agent sending
//! metrics every second while tetherd is unreachable; or (`--mode
//! fleet-job`) the time one fleet-wide job takes to be answered by N; or
//! (`--mode replicas`) several tetherd replicas on PostgreSQL with sessions
//! spread over them; or (`--mode telemetry`) log and metric ingest rates and
//! the live tail's latency; or (`--mode kubectl`) the `send-kubectl` round
//! trip of a real agent managing the fake Kubernetes API server; or (`--mode
//! keystrokes`) the keystroke echo latency of `tether ssh` to a real agent;
//! or (`--mode provisioning`) registrations a second through a policy; or
//! (`--mode rollout`) a deployment's staged rollout to N devices; or
//! (`--mode live-feed`) tetherd's CPU with N console tabs following the
//! fleet's changes.
//!
//! Build everything in release mode first, the agent on its own and last
//! (ADR 0024: built in one cargo invocation with tetherd, the agent gets the
//! dependency features tetherd enables, about 1 MB more binary and 0.9 MiB
//! more idle RSS than the agent that ships):
//! `cargo build --release --workspace && cargo build --release -p tether-agent`,
//! then `target/release/tether-bench`.

mod fleet_job;
mod keystrokes;
mod kubectl;
mod live_feed;
mod monitor;
mod offline;
mod provisioning;
mod release_download;
mod replicas;
mod rollout;
mod telemetry;
mod tunnels;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use serde_json::json;
use tether_testkit::sim_agent::{Responder, connect_many, enroll_many, wait_online};
use tether_testkit::{Agent, ApiClient, Database, Tetherd};

#[derive(Debug, Parser)]
#[command(
    name = "tether-bench",
    about = "Measure tetherd with N simulated agents over real MQTT/TLS sessions"
)]
struct Args {
    /// Simulated agents to connect.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Actions to time (kubectl: per action).
    #[arg(long, default_value_t = 2000)]
    actions: usize,
    /// Actions in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Store to run tetherd on.
    #[arg(long, value_parser = ["sqlite", "postgres"], default_value = "sqlite")]
    database: String,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::RoundTrip)]
    mode: Mode,
    /// fleet-job: devices registered with the job's label that never
    /// connect (their actions are stored and stay open).
    #[arg(long, default_value_t = 0)]
    offline_devices: usize,
    /// fleet-job: the job's concurrency limit [default: unlimited].
    #[arg(long)]
    job_concurrency: Option<u32>,
    /// fleet-job: the job's rate limit, deliveries a second [default: unlimited].
    #[arg(long)]
    job_rate: Option<u32>,
    /// agent-offline: how long tetherd stays unreachable, in seconds.
    #[arg(long, default_value_t = 1800)]
    offline_seconds: u64,
    /// agent-offline: how tetherd becomes unreachable.
    #[arg(long, value_enum, default_value_t = offline::Outage::Kill)]
    outage: offline::Outage,
    /// agent-offline: seconds connected before the outage (RSS is read in
    /// the second half).
    #[arg(long, default_value_t = 60)]
    warm_up_seconds: u64,
    /// replicas: tetherd replicas sharing one PostgreSQL.
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// replicas: processes holding the simulated sessions (each stays under
    /// the open-files cap).
    #[arg(long, default_value_t = 4)]
    simulators: usize,
    /// replicas: sessions opened a second over all simulators (tether-agents
    /// of a fleet coming back spread out the same way with their backoff).
    #[arg(long, default_value_t = 400.0)]
    connect_rate: f64,
    /// replicas: devices in the fleet-wide job (spread over every replica).
    #[arg(long, default_value_t = 10_000)]
    job_devices: usize,
    /// replicas: copy each replica's log into this dir at the end.
    #[arg(long)]
    keep_logs: Option<std::path::PathBuf>,
    /// telemetry: log lines to send over all devices.
    #[arg(long, default_value_t = 1_000_000)]
    log_lines: u64,
    /// telemetry: metric samples to send over all devices.
    #[arg(long, default_value_t = 2_000_000)]
    samples: u64,
    /// telemetry: lines timed through a live follower.
    #[arg(long, default_value_t = 200)]
    tail_lines: usize,
    /// tunnels: MiB each transfer carries.
    #[arg(long, default_value_t = 256)]
    megabytes: u64,
    /// tunnels: rounds of the forward transfers (the median is shown).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// keystrokes: keystrokes timed.
    #[arg(long, default_value_t = 1000)]
    keystrokes: usize,
    /// rollout: each batch's share of the targeted devices, in percent.
    #[arg(long, default_value_t = 25)]
    batch_percent: u8,
    /// live-feed: streams of `GET /events/follow` held open.
    #[arg(long, default_value_t = 60)]
    followers: usize,
    /// live-feed: device events written to the database a second.
    #[arg(long, default_value_t = 200)]
    events_per_second: u32,
    /// live-feed: seconds each phase is measured.
    #[arg(long, default_value_t = 20)]
    measure_seconds: u64,
    /// simulate (internal): the credentials file a simulator process connects.
    #[arg(long, hide = true)]
    credentials: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// N simulated agents, action round trips, controller and idle agent RSS.
    RoundTrip,
    /// One real agent with run-stats at 1 s: RSS connected, offline, back.
    AgentOffline,
    /// R replicas on PostgreSQL, N sessions spread over them by several
    /// simulator processes: connect rate, memory per session per replica,
    /// round trips across replicas.
    Replicas,
    /// Internal: one simulator process of `replicas`.
    #[value(hide = true)]
    Simulate,
    /// N simulated agents: one fleet-wide job, from creation to every answer.
    FleetJob,
    /// N simulated agents send log and metric batches: ingest rates, bytes
    /// on the wire, live tail latency.
    Telemetry,
    /// One real agent in host mode on the fake Kubernetes API server:
    /// send-kubectl and send-kubernetes-api round trips, its idle RSS.
    Kubectl,
    /// One real agent and the real CLI: forward-port throughput beside
    /// direct loopback and `ssh -L`, `tether exec` streaming and RSS.
    Tunnels,
    /// One real agent: `tether ssh` in a local terminal, one byte at a
    /// time to `cat` in the device's terminal and back.
    Keystrokes,
    /// N simulated devices booting at once register through an UNATTENDED
    /// policy, then again with new media: registrations a second.
    Provisioning,
    /// N simulated devices reporting ready: one deployment's staged rollout
    /// to all of them, then its second revision's.
    Rollout,
    /// N devices in the store: the fleet monitor's CPU a pass and a minute,
    /// quiet, falling silent, alerting.
    Monitor,
    /// An agent release published and rolled out to N devices, each
    /// downloading its binary (`--concurrency` at a time): rates and
    /// tetherd's RSS.
    ReleaseDownload,
    /// N followers of the fleet's changes while events are written at a
    /// steady rate: tetherd's CPU.
    LiveFeed,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let database = if args.database == "postgres" {
        Database::Postgres
    } else {
        Database::Sqlite
    };
    match args.mode {
        Mode::Simulate => {
            return replicas::simulate(
                args.credentials
                    .context("--mode simulate needs --credentials")?,
                args.connect_rate,
            )
            .await;
        }
        Mode::Replicas => {
            return replicas::run(replicas::Settings {
                replicas: args.replicas,
                agents: args.agents,
                simulators: args.simulators,
                actions: args.actions,
                concurrency: args.concurrency,
                connect_rate: args.connect_rate,
                job_devices: args.job_devices.min(args.agents),
                keep_logs: args.keep_logs,
            })
            .await;
        }
        Mode::AgentOffline => {
            return offline::run(offline::Settings {
                database,
                outage: args.outage,
                offline: Duration::from_secs(args.offline_seconds),
                warm_up: Duration::from_secs(args.warm_up_seconds),
                sample_every: Duration::from_secs(1),
            })
            .await;
        }
        Mode::FleetJob => {
            return fleet_job::run(fleet_job::Settings {
                database,
                agents: args.agents,
                offline: args.offline_devices,
                concurrency: args.job_concurrency,
                rate_per_second: args.job_rate,
            })
            .await;
        }
        Mode::LiveFeed => {
            return live_feed::run(live_feed::Settings {
                database,
                followers: args.followers,
                events_per_second: args.events_per_second,
                measure: Duration::from_secs(args.measure_seconds),
            })
            .await;
        }
        Mode::Telemetry => {
            return telemetry::run(telemetry::Settings {
                database,
                agents: args.agents,
                log_lines: args.log_lines,
                samples: args.samples,
                tail_lines: args.tail_lines,
            })
            .await;
        }
        Mode::Kubectl => {
            return kubectl::run(kubectl::Settings {
                database,
                actions: args.actions,
            })
            .await;
        }
        Mode::Tunnels => {
            return tunnels::run(tunnels::Settings {
                database,
                megabytes: args.megabytes,
                rounds: args.rounds,
            })
            .await;
        }
        Mode::Keystrokes => {
            return keystrokes::run(keystrokes::Settings {
                database,
                keystrokes: args.keystrokes,
            })
            .await;
        }
        Mode::Provisioning => {
            return provisioning::run(provisioning::Settings {
                database,
                devices: args.agents,
            })
            .await;
        }
        Mode::Rollout => {
            return rollout::run(rollout::Settings {
                database,
                devices: args.agents,
                batch_percent: args.batch_percent,
            })
            .await;
        }
        Mode::Monitor => {
            return monitor::run(monitor::Settings {
                database,
                devices: args.agents,
            })
            .await;
        }
        Mode::ReleaseDownload => {
            return release_download::run(release_download::Settings {
                database,
                devices: args.agents,
                concurrency: args.concurrency,
            })
            .await;
        }
        Mode::RoundTrip => {}
    }
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let pid = tetherd.pid().context("tetherd runs")?;
    let idle_controller = rss_kib(pid)?;

    let started = Instant::now();
    let names = (0..args.agents).map(|i| format!("sim-{i}"));
    let credentials = enroll_many(&admin, names, &json!({}), 16).await?;
    let enrolled_in = started.elapsed();

    let started = Instant::now();
    let agents = connect_many(&credentials, &Responder::Echo, 32).await?;
    wait_online(&admin, args.agents, Duration::from_secs(120)).await?;
    let connected_in = started.elapsed();
    let controller_connected = rss_kib(pid)?;

    let started = Instant::now();
    let mut round_trips: Vec<Duration> = futures::stream::iter(0..args.actions)
        .map(|i| {
            let admin = admin.clone();
            let device = format!("sim-{}", i % args.agents);
            async move { round_trip(&admin, &device, &json!({"action": "get-node-ip"})).await }
        })
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let elapsed = started.elapsed();
    round_trips.sort();
    let controller_loaded = rss_kib(pid)?;

    let agent = Agent::enroll_online(&tetherd, &admin, "real-agent").await?;
    // Let start-up allocations settle before reading the idle figure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let agent_memory = AgentMemory::of(agent.pid().context("agent runs")?)?;
    let logging_agent_rss = idle_with_log_sources(&tetherd, &admin).await?;

    println!(
        "tether-bench: {} simulated agents, {} actions, concurrency {}, {}",
        args.agents, args.actions, args.concurrency, args.database
    );
    println!(
        "  enrollment           {:>8.1} s for {} devices",
        enrolled_in.as_secs_f64(),
        args.agents
    );
    println!(
        "  connect + birth      {:>8.1} s for {} sessions",
        connected_in.as_secs_f64(),
        args.agents
    );
    println!(
        "  action round trip    p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>6.2} ms",
        ms(percentile(&round_trips, 50.0)),
        ms(percentile(&round_trips, 99.0)),
        ms(round_trips.last().copied().unwrap_or_default())
    );
    println!(
        "  throughput           {:>8.0} actions/s",
        args.actions as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  tetherd RSS          idle {:>7.1} MiB   {} sessions {:>7.1} MiB   after actions {:>7.1} MiB",
        mib(idle_controller),
        args.agents,
        mib(controller_connected),
        mib(controller_loaded)
    );
    println!(
        "  tether-agent RSS     idle {:>7.1} MiB   all log sources on {:>7.1} MiB",
        mib(agent_memory.rss),
        mib(logging_agent_rss)
    );
    println!("  tether-agent idle    {agent_memory}");

    for agent in agents {
        agent.disconnect().await;
    }
    Ok(())
}

/// The idle RSS of a real agent with every log source on (issue 13: under
/// 8 MB): syslog on a unix socket, UDP and TCP, a tailed file, and journal
/// export (from an empty journal directory: journalctl is a process of its
/// own, not counted here).
async fn idle_with_log_sources(tetherd: &Tetherd, admin: &ApiClient) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir().context("creating a dir for the log sources")?;
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal)?;
    let file = dir.path().join("app.log");
    std::fs::write(&file, "started\n")?;
    let path = |p: &std::path::Path| p.display().to_string();
    let (socket, file, journal) = (
        path(&dir.path().join("log.sock")),
        path(&file),
        path(&journal),
    );
    let agent = Agent::enroll_with_env(
        tetherd,
        admin,
        "real-agent-logs",
        &[
            ("TETHER_AGENT_SYSLOG_SOCKET", socket.as_str()),
            ("TETHER_AGENT_SYSLOG_UDP", "127.0.0.1:0"),
            ("TETHER_AGENT_SYSLOG_TCP", "127.0.0.1:0"),
            ("TETHER_AGENT_LOG_FILES", file.as_str()),
            ("TETHER_AGENT_JOURNAL_DIRECTORY", journal.as_str()),
        ],
    )
    .await?;
    agent.wait_presence(admin, "online").await?;
    admin
        .patch(
            "/api/v1/devices/real-agent-logs?updateMask=spec.loggingConfig",
            json!({"spec": {"loggingConfig": {"enableJournalExport": true}}}),
        )
        .await?
        .expect_status(200)?;
    tether_testkit::wait_until("journal export on", Duration::from_secs(30), || {
        let log = agent.log();
        async move { Ok(log.contains("exporting the journal").then_some(())) }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rss_kib(agent.pid().context("agent runs")?)
}

/// From the API request (`body`, e.g. `{"action": "get-node-ip"}`) to the
/// device's answer being visible in the API.
async fn round_trip(
    admin: &ApiClient,
    device: &str,
    body: &serde_json::Value,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let accepted = admin
        .post(&format!("/api/v1/devices/{device}/actions"), body.clone())
        .await?
        .expect_status(202)?;
    let id = accepted["correlationId"]
        .as_str()
        .context("correlationId")?;
    let done = admin
        .get(&format!("/api/v1/actions/{id}?waitSeconds=30"))
        .await?
        .expect_status(200)?;
    anyhow::ensure!(
        done["state"] == "succeeded",
        "action did not succeed: {done}"
    );
    Ok(started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS in /proc status")
}

/// An agent's resident memory, split the way ADR 0020 and 0024 read it:
/// the clean pages of its own executable (they grow with the binary, as the
/// kernel maps pages around each one touched) and anonymous memory (heap,
/// stacks, written data).
struct AgentMemory {
    /// The executable, to name the binary measured.
    exe: std::path::PathBuf,
    /// Its size on disk.
    exe_bytes: u64,
    rss: u64,
    /// Resident file-backed pages of the executable, in KiB.
    exe_pages: u64,
    /// Anonymous memory of every mapping, in KiB.
    anonymous: u64,
}

impl AgentMemory {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).context("reading /proc exe")?;
        let exe_bytes = std::fs::metadata(&exe)
            .with_context(|| format!("reading {}", exe.display()))?
            .len();
        let smaps =
            std::fs::read_to_string(format!("/proc/{pid}/smaps")).context("reading /proc smaps")?;
        let (exe_pages, anonymous) = split_smaps(&smaps, &exe.to_string_lossy());
        Ok(Self {
            exe,
            exe_bytes,
            rss: rss_kib(pid)?,
            exe_pages,
            anonymous,
        })
    }
}

/// From `/proc/PID/smaps`: the resident file-backed pages of the mappings
/// of `exe` (written ones are anonymous, counted there) and the anonymous
/// memory of all mappings, in KiB.
fn split_smaps(smaps: &str, exe: &str) -> (u64, u64) {
    let (mut exe_resident, mut exe_anonymous, mut anonymous) = (0, 0, 0);
    let mut in_exe = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(name), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let kib = || value.parse::<u64>().unwrap_or(0);
        match name {
            "Rss:" if in_exe => exe_resident += kib(),
            "Anonymous:" => {
                anonymous += kib();
                if in_exe {
                    exe_anonymous += kib();
                }
            }
            // A mapping's first line: its address range, then its file.
            _ if !name.ends_with(':') => in_exe = line.ends_with(exe),
            _ => {}
        }
    }
    (exe_resident - exe_anonymous, anonymous)
}

impl std::fmt::Display for AgentMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {} kB: its binary's pages {} kB, anonymous {} kB ({}, {} B)",
            self.rss,
            self.exe_pages,
            self.anonymous,
            self.exe.display(),
            self.exe_bytes
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_splits_into_the_executable_s_pages_and_anonymous_memory() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fd:01 42     /opt/tether-agent
Rss:                1000 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
55d0c0200000-55d0c0210000 rw-p 00100000 fd:01 42     /opt/tether-agent
Rss:                  64 kB
Anonymous:            40 kB
55d0c0300000-55d0c0400000 rw-p 00000000 00:00 0      [heap]
Rss:                 500 kB
Anonymous:           500 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 7      /usr/lib/libc.so.6
Rss:                 900 kB
Anonymous:             0 kB
";
        assert_eq!(split_smaps(smaps, "/opt/tether-agent"), (1024, 540));
    }
}
