//! While tetherd is unreachable the agent loses nothing: metrics samples go
//! to its disk spool (bounded; `crates/agent/src/spool`) and reach tetherd
//! once it is back, and so does an answer made meanwhile.
//! (The 30-minute RSS figure is `tether-bench --mode agent-offline`.)

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tether_testkit::http_target::{Behaviour, HttpTarget};
use tether_testkit::{Agent, Database, Tetherd, wait_until};

use crate::support::{newest_sample, outcome, request};

async fn wait_for_log(agent: &Agent, what: &str, needle: &str, count: usize) -> anyhow::Result<()> {
    wait_until(what, Duration::from_secs(30), || {
        let found = agent.log().matches(needle).count() >= count;
        async move { Ok(found.then_some(())) }
    })
    .await
    .with_context(|| format!("agent log:\n{}", agent.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_the_agent_keeps_its_samples_and_its_answers() {
    let mut tetherd = Tetherd::start(Database::Sqlite)
        .await
        .expect("tetherd starts");
    let admin = tetherd.admin().await.expect("admin logs in");
    let agent = Agent::enroll_online(&tetherd, &admin, "offline")
        .await
        .expect("agent online");
    let stats = request(
        &admin,
        "offline",
        json!({"action": "run-stats", "input": {"interval": 1}}),
    )
    .await
    .expect("run-stats accepted");
    assert_eq!(
        outcome(&admin, &stats).await.expect("ends")["state"],
        "succeeded"
    );
    let before = wait_until("a first sample", Duration::from_secs(30), || {
        let admin = admin.clone();
        async move { newest_sample(&admin, "offline").await }
    })
    .await
    .expect("samples arrive while connected");

    // An action in progress when tetherd goes away, answered while it is away.
    let target = HttpTarget::start(Behaviour::Hang).await.expect("target");
    let answered_offline = request(
        &admin,
        "offline",
        json!({"action": "send-api", "input": {"href": target.url}}),
    )
    .await
    .expect("send-api accepted");
    target.wait_for_requests(1).await.expect("agent is busy");
    tetherd.kill();
    let down_from = chrono::Utc::now();
    drop(target);
    wait_for_log(&agent, "the answer made offline", "answered 502", 1)
        .await
        .expect("the agent answers while tetherd is down");
    // A few failed reconnects: samples were due meanwhile.
    wait_for_log(&agent, "failed reconnects", "; trying mqtts://", 3)
        .await
        .expect("the agent keeps trying");

    let down_until = chrono::Utc::now();
    tetherd.start_again().await.expect("tetherd starts again");
    let admin = tetherd.admin().await.expect("admin logs in again");
    let done = outcome(&admin, &answered_offline)
        .await
        .expect("send-api ends");
    assert_eq!(
        done["state"], "failed",
        "the answer made offline arrived: {done}"
    );
    assert_eq!(done["statusCode"], 502, "{done}");

    wait_until(
        "samples taken while tetherd was down",
        Duration::from_secs(30),
        || {
            let admin = admin.clone();
            async move {
                let page = admin
                    .get("/api/v1/devices/offline/metrics?limit=200")
                    .await?
                    .expect_status(200)?;
                let items = page["items"].as_array().cloned().unwrap_or_default();
                Ok(items
                    .iter()
                    .filter_map(|sample| sample["sampledAt"].as_str())
                    .filter_map(|at| at.parse::<chrono::DateTime<chrono::Utc>>().ok())
                    .any(|at| at > down_from && at < down_until)
                    .then_some(()))
            }
        },
    )
    .await
    .expect("samples spooled offline arrive once tetherd is back");
    wait_until("samples after the outage", Duration::from_secs(30), || {
        let admin = admin.clone();
        let before = before.clone();
        async move {
            let newest = newest_sample(&admin, "offline").await?;
            Ok(newest.filter(|newest| *newest > before).map(drop))
        }
    })
    .await
    .expect("samples flow again once tetherd is back");
}

/// A tmpfs of `kib` KiB mounted on `dir` (the tests run as root here),
/// lazily unmounted when dropped.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &std::path::Path, kib: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .status()?;
        anyhow::ensure!(status.success(), "mounting a tmpfs needs root: {status}");
        Ok(Self(dir.to_owned()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Bytes of the files in `dir` and below.
fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        bytes += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(bytes)
}

/// The agent's last log lines but its debug ones.
fn log_tail(agent: &Agent) -> String {
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" DEBUG ")).collect();
    let tail = lines.len().saturating_sub(30);
    format!("agent log:\n{}", lines[tail..].join("\n"))
}

/// Issue 13's bad day: the spool's file system fills while tetherd is
/// away. The agent keeps running and answering, counts every line it
/// could not write, and once tetherd is back (its backlog sent, the space
/// freed) it spools again; tetherd stores every line once, in order, and
/// the lines stored plus those counted as dropped are exactly those sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_spool_drops_and_counts_and_the_agent_recovers() -> anyhow::Result<()>
{
    let mut tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let mut agent = Agent::enroll_online(&tetherd, &admin, "full").await?;
    let socket = agent.local_api_socket();
    agent.stop().await?;
    tetherd.stop().await?;
    // A new, empty spool on 256 KiB.
    let spool = agent.state_dir().join("spool");
    std::fs::remove_dir_all(&spool)?;
    let _fs = SmallFs::mount(&spool, 256)?;
    agent.start()?;
    let api_up = || {
        let socket = socket.clone();
        async move {
            Ok(tokio::net::UnixStream::connect(&socket)
                .await
                .ok()
                .map(drop))
        }
    };
    wait_until("the agent's local API", Duration::from_secs(10), api_up).await?;

    // ~600 KB of lines for 256 KiB.
    let line = |prefix: &str, i: u64| {
        json!({"message": format!("{prefix} {i:05} {}", "x".repeat(120)), "priority": i % 8})
            .to_string()
    };
    const LINES: u64 = 4_000;
    for chunk in 0..LINES / 100 {
        let body: String = (chunk * 100..(chunk + 1) * 100)
            .map(|i| line("before", i) + "\n")
            .collect();
        tether_testkit::post_local(&socket, "/v1/logs", &body).await?;
    }
    wait_for_log(&agent, "a write refused for space", "is its disk full?", 1).await?;
    // Still running and taking lines.
    tether_testkit::post_local(&socket, "/v1/logs", &(line("while", 0) + "\n")).await?;

    tetherd.start_again().await?;
    let admin = tetherd.admin().await?;
    let usage = || {
        let admin = admin.clone();
        async move {
            let usage = admin
                .get("/api/v1/devices/full/usage")
                .await?
                .expect_status(200)?;
            anyhow::Ok(
                usage["streams"]
                    .as_array()
                    .and_then(|s| s.iter().find(|s| s["stream"] == "logs"))
                    .cloned()
                    .unwrap_or_default(),
            )
        }
    };
    let accounted = |lines: u64| {
        move || async move {
            let logs = usage().await?;
            let done = logs["storedRecords"].as_u64().unwrap_or(0)
                + logs["dropped"]["total"].as_u64().unwrap_or(0)
                == lines;
            Ok(done.then_some(logs))
        }
    };
    // The backlog sent and the drops counted, though no record followed
    // the last of them (a batch of counts alone carries them).
    wait_until(
        "every line so far stored or counted",
        Duration::from_secs(30),
        accounted(LINES + 1),
    )
    .await
    .with_context(|| log_tail(&agent))?;
    // Room again once the acknowledged segments are deleted: at least
    // 64 KiB free, four times what the lines after take. (The newest
    // segment stays, with what was written into it once there was room.)
    wait_until("room in the spool", Duration::from_secs(30), || async {
        Ok((dir_bytes(&spool)? < 192 * 1024).then_some(()))
    })
    .await
    .with_context(|| log_tail(&agent))?;
    let after: String = (0..100).map(|i| line("after", i) + "\n").collect();
    tether_testkit::post_local(&socket, "/v1/logs", &after).await?;
    let logs = wait_until(
        "every line stored or counted",
        Duration::from_secs(30),
        accounted(LINES + 101),
    )
    .await
    .with_context(|| log_tail(&agent))?;
    let dropped = logs["dropped"]["total"].as_u64().unwrap_or(0);
    anyhow::ensure!(dropped > 0, "the disk filled: {logs}");
    let by_priority: u64 = logs["dropped"]["byPriority"]
        .as_array()
        .context("byPriority")?
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert_eq!(by_priority, dropped, "{logs}");

    let page = admin
        .get("/api/v1/devices/full/logs?since=1h&limit=5000")
        .await?
        .expect_status(200)?;
    let messages: Vec<String> = page["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|l| l["message"].as_str())
        .map(|m| m.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    let expected_order: Vec<String> = (0..LINES)
        .map(|i| format!("before {i:05}"))
        .chain(["while 00000".to_owned()])
        .chain((0..100).map(|i| format!("after {i:05}")))
        .collect();
    // Every stored line is one that was sent, once, in the order sent.
    let mut sent = expected_order.iter();
    for message in &messages {
        anyhow::ensure!(
            sent.any(|m| m == message),
            "{message} stored out of order or twice"
        );
    }
    assert_eq!(messages.len() as u64 + dropped, LINES + 101);
    assert!(
        messages.ends_with(&expected_order[expected_order.len() - 100..]),
        "the lines after the disk had room again all stored"
    );
    Ok(())
}
