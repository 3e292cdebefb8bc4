//! Agent self-update on the device, without tetherd: the version stamp a
//! release script sets, the rollback at start of a trial that ended
//! unwatched, and the guard rolling back an agent that never committed.
//! The whole update through tetherd is in the server's tests
//! (`crates/server/tests/it/agent_update.rs`). Every binary here is a
//! stamped copy in a temp dir: the build's own is never replaced.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tether_testkit::binaries::agent_install;
use tether_testkit::wait_until;

fn version_of(exe: &Path) -> String {
    let out = Command::new(exe)
        .arg("--version")
        .output()
        .expect("runs --version");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn write_trial(state: &Path, exe: &Path, deadline: chrono::DateTime<chrono::Utc>) {
    let dir = state.join("self-update");
    std::fs::create_dir_all(&dir).expect("dir");
    let trial = json!({
        "from": "0.1.0",
        "to": "0.2.0",
        "sha256": "ab".repeat(32),
        "exe": exe,
        "startedAt": deadline - chrono::TimeDelta::seconds(2),
        "deadline": deadline,
        "phase": "trial",
    });
    std::fs::write(dir.join("trial.json"), trial.to_string()).expect("trial written");
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("readable")).expect("JSON")
}

/// `DIR/tether-agent` stamped 0.2.0 with `DIR/tether-agent.previous`
/// stamped 0.1.0, as a swap leaves them.
fn swapped(dir: &Path) -> std::path::PathBuf {
    let previous = agent_install(dir, "0.1.0").expect("0.1.0 installed");
    std::fs::rename(&previous, dir.join("tether-agent.previous")).expect("kept");
    agent_install(dir, "0.2.0").expect("0.2.0 installed")
}

#[test]
fn a_stamped_copy_reports_the_stamped_version() {
    let dir = tempfile::tempdir().expect("dir");
    let exe = agent_install(dir.path(), "9.8.7-rc.1").expect("installed");
    assert_eq!(version_of(&exe), "tether-agent 9.8.7-rc.1");
}

#[test]
fn a_trial_that_ended_unwatched_is_rolled_back_at_the_next_start() {
    let dir = tempfile::tempdir().expect("dir");
    let exe = swapped(dir.path());
    let state = dir.path().join("state");
    write_trial(
        &state,
        &exe,
        chrono::Utc::now() - chrono::TimeDelta::seconds(1),
    );
    // The 0.2.0 agent starts (a reboot during its trial), rolls back and
    // runs 0.1.0, which stops for want of credentials: none in this test.
    let out = Command::new(&exe)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0.2.0 did not report healthy within 2 s; rolled back to 0.1.0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no credentials"),
        "the restored agent ran: {stderr}"
    );
    assert_eq!(version_of(&exe), "tether-agent 0.1.0");
    assert!(!dir.path().join("tether-agent.previous").exists());
    let trial = read_json(&state.join("self-update/trial.json"));
    assert_eq!(trial["phase"], "rolledBack");
    let failed = read_json(&state.join("self-update/failed.json"));
    assert_eq!(failed[0]["version"], "0.2.0");
}

#[tokio::test]
async fn the_guard_rolls_back_an_agent_that_does_not_commit() {
    let dir = tempfile::tempdir().expect("dir");
    let exe = swapped(dir.path());
    let state = dir.path().join("state");
    write_trial(
        &state,
        &exe,
        chrono::Utc::now() + chrono::TimeDelta::seconds(2),
    );
    // Stands in for the new agent that never commits.
    let mut stuck = Command::new("sleep").arg("60").spawn().expect("sleep");
    // The agent's arguments the guard restarts it with: `--version`, so the
    // restored agent says who it is and exits.
    let guard = Command::new(dir.path().join("tether-agent.previous"))
        .arg("update-guard")
        .arg("--state-dir")
        .arg(&state)
        .args(["--pid", &stuck.id().to_string(), "--", "--version"])
        .env_remove("INVOCATION_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guard starts");
    let killed = wait_until(
        "the guard to kill the agent on trial",
        Duration::from_secs(20),
        || {
            let status = stuck.try_wait();
            async move { Ok(status?) }
        },
    )
    .await
    .expect("killed");
    assert!(!killed.success());
    let out = tokio::task::spawn_blocking(move || guard.wait_with_output())
        .await
        .expect("joined")
        .expect("guard output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.trim(), "tether-agent 0.1.0", "{stderr}");
    assert!(
        stderr.contains("0.2.0 did not report healthy within 2 s; rolled back to 0.1.0"),
        "{stderr}"
    );
    assert_eq!(version_of(&exe), "tether-agent 0.1.0");
    let trial = read_json(&state.join("self-update/trial.json"));
    assert_eq!(trial["phase"], "rolledBack");
    let failed = read_json(&state.join("self-update/failed.json"));
    assert!(
        failed[0]["reason"]
            .as_str()
            .context("a reason")
            .expect("a reason")
            .contains("rolled back to 0.1.0")
    );
}

#[tokio::test]
async fn a_start_on_trial_without_its_guard_starts_one_again() {
    // Review H1: a crash or a reboot during the trial takes the guard with
    // it; the binary on trial, started again, must not run unguarded.
    let dir = tempfile::tempdir().expect("dir");
    let exe = swapped(dir.path());
    let state = dir.path().join("state");
    write_trial(
        &state,
        &exe,
        chrono::Utc::now() + chrono::TimeDelta::seconds(3),
    );
    // 0.2.0 starts on trial, finds no guard, starts one from 0.1.0, then
    // stops for want of credentials (none in this test): it never commits.
    let out = Command::new(&exe)
        .arg("--state-dir")
        .arg(&state)
        .env_remove("INVOCATION_ID")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("update guard started"), "{stderr}");
    let trial_path = state.join("self-update/trial.json");
    wait_until(
        "the restarted guard to roll the trial back",
        Duration::from_secs(30),
        || {
            let phase = std::fs::read(&trial_path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
                .map(|trial| trial["phase"].clone());
            async move { Ok((phase == Some(json!("rolledBack"))).then_some(())) }
        },
    )
    .await
    .expect("rolled back");
    assert_eq!(version_of(&exe), "tether-agent 0.1.0");
    let failed = read_json(&state.join("self-update/failed.json"));
    assert_eq!(failed[0]["version"], "0.2.0");
}
