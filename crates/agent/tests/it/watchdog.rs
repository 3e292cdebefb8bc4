//! The watchdog end to end (issue 19): a real tetherd and agent, the
//! spec's `watchdog` section pointing at a FIFO the test reads. The FIFO
//! is a test stand-in for `/dev/watchdog`: every write is a feed, as with
//! Linux's watchdog API. The agent feeds it while healthy, stops when it
//! is wedged (SIGSTOP) and when a health check fails while it runs (the
//! state directory's probe cannot be written), and resumes after.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

const WAIT: Duration = Duration::from_secs(30);
/// Three feeding intervals: a feeding agent writes at least twice in it.
const QUIET: Duration = Duration::from_secs(3);

/// Counts the writes to a FIFO, read by a thread of its own.
struct FakeWatchdog {
    feeds: Arc<AtomicUsize>,
}

impl FakeWatchdog {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let made = std::process::Command::new("mkfifo").arg(path).status()?;
        ensure!(made.success(), "mkfifo {}", path.display());
        // Read and write: the agent's non-blocking open finds a reader,
        // and the reads block for data instead of ending when the agent
        // closes its end.
        let mut fifo = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let feeds = Arc::new(AtomicUsize::new(0));
        let counted = feeds.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 64];
            while let Ok(n) = fifo.read(&mut buffer) {
                counted.fetch_add(n, Ordering::SeqCst);
            }
        });
        Ok(Self { feeds })
    }

    fn count(&self) -> usize {
        self.feeds.load(Ordering::SeqCst)
    }

    /// Waits for `more` feeds from now.
    async fn fed(&self, more: usize, what: &str) -> anyhow::Result<()> {
        let target = self.count() + more;
        wait_until(what, WAIT, || {
            let fed = self.count() >= target;
            async move { Ok(fed.then_some(())) }
        })
        .await
    }

    /// Fails at the first feed within `window`: absence can only be
    /// observed over a time, here three feeding intervals.
    async fn not_fed_for(&self, window: Duration, why: &str) -> anyhow::Result<()> {
        let before = self.count();
        let end = Instant::now() + window;
        while Instant::now() < end {
            ensure!(self.count() == before, "fed while {why}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// The device's reported watchdog, once it satisfies `done`.
async fn wait_watchdog(
    admin: &ApiClient,
    agent: &Agent,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let path = format!("/api/v1/devices/{}", agent.name);
    let done = &done;
    wait_until(what, WAIT, || {
        let path = path.clone();
        async move {
            let device = admin.get(&path).await?.expect_status(200)?;
            let watchdog = device["status"]["watchdog"].clone();
            Ok(done(&watchdog).then_some(watchdog))
        }
    })
    .await
    .with_context(|| agent.log())
}

fn signal(agent: &Agent, signal: &str) -> anyhow::Result<()> {
    let pid = agent.pid().context("the agent runs")?;
    let sent = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    ensure!(sent.success(), "kill {signal} {pid}");
    Ok(())
}

/// Whether the process is stopped (state `T` in `/proc/PID/stat`).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        == Some('T')
}

#[tokio::test]
async fn the_watchdog_is_fed_only_while_the_agent_is_healthy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fifo = dir.path().join("watchdog");
    let watchdog = FakeWatchdog::create(&fifo)?;
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_with_env(
        &tetherd,
        &admin,
        "edge-watchdog",
        &[("TETHER_AGENT_WATCHDOG_STORE_PROBE_SECONDS", "1")],
    )
    .await?;
    agent.wait_presence(&admin, "online").await?;
    ensure!(watchdog.count() == 0, "fed before the spec enabled it");

    admin
        .patch(
            &format!("/api/v1/devices/{}?updateMask=spec.watchdog", agent.name),
            json!({"spec": {"watchdog": {"enabled": true, "device": fifo.display().to_string(), "intervalSeconds": 1}}}),
        )
        .await?
        .expect_status(200)?;
    watchdog
        .fed(3, "the agent to feed the watchdog")
        .await
        .with_context(|| agent.log())?;
    let reported = wait_watchdog(&admin, &agent, "the watchdog reported feeding", |w| {
        w["state"] == "feeding"
    })
    .await?;
    ensure!(
        reported["mode"] == "device" && reported["device"] == fifo.display().to_string(),
        "{reported}"
    );

    // Wedged: no feed; the machine would reset.
    let pid = agent.pid().context("the agent runs")?;
    signal(&agent, "-STOP")?;
    wait_until("the agent to stop", WAIT, || {
        let stopped = stopped(pid);
        async move { Ok(stopped.then_some(())) }
    })
    .await?;
    watchdog.not_fed_for(QUIET, "the agent was stopped").await?;
    signal(&agent, "-CONT")?;
    watchdog
        .fed(2, "the agent to feed again once it runs")
        .await
        .with_context(|| agent.log())?;

    // Running, but its state directory cannot be written: the probe's
    // file is a directory now (a failure that holds as root too).
    let probe = agent.state_file("watchdog-probe");
    let _ = std::fs::remove_file(&probe);
    std::fs::create_dir_all(probe.join("in-the-way"))?;
    let reported = wait_watchdog(&admin, &agent, "the watchdog reported stopped", |w| {
        w["state"] == "stopped"
    })
    .await?;
    ensure!(
        reported["reason"]
            .as_str()
            .is_some_and(|r| r.contains("state directory cannot be written")),
        "{reported}"
    );
    watchdog
        .not_fed_for(QUIET, "the state directory could not be written")
        .await
        .with_context(|| agent.log())?;
    std::fs::remove_dir_all(&probe)?;
    watchdog
        .fed(2, "the agent to feed again once the store is writable")
        .await
        .with_context(|| agent.log())?;
    wait_watchdog(&admin, &agent, "the watchdog reported feeding again", |w| {
        w["state"] == "feeding" && w["reason"].is_null()
    })
    .await?;
    Ok(())
}
