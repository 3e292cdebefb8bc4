//! Agent self-update on the device, without tetherd: the version stamp a
//! release script sets, the rollback at start of a trial that ended
//! unwatched, a staged trial settled at start, and the guard rolling back
//! an agent that never committed, timed by the boot clock, and the
//! previous binary rolling back a trial whose agent stopped.
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
    write_record(
        state,
        json!({
            "from": "0.1.0",
            "to": "0.2.0",
            "sha256": "ab".repeat(32),
            "exe": exe,
            "startedAt": deadline - chrono::TimeDelta::seconds(2),
            "deadline": deadline,
            "phase": "trial",
        }),
    );
}

fn write_record(state: &Path, trial: Value) {
    let dir = state.join("self-update");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("trial.json"), trial.to_string()).expect("trial written");
}

fn sha256_of(path: &Path) -> String {
    tether_agent::self_update::download::sha256_file(path)
        .expect("readable")
        .1
}

async fn wait_for_phase(state: &Path, phase: &str) {
    let trial_path = state.join("self-update/trial.json");
    wait_until(
        &format!("the trial to be {phase}"),
        Duration::from_secs(30),
        || {
            let found = std::fs::read(&trial_path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
                .map(|trial| trial["phase"].clone());
            async move { Ok((found == Some(json!(phase))).then_some(())) }
        },
    )
    .await
    .expect("the phase");
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("readable")).expect("JSON")
}

/// 0.1.0 is back in `exe`'s place (nothing kept beside it), the trial is
/// recorded rolled back and 0.2.0 as a failed release, not fetched again.
fn assert_rolled_back_to_0_1_0(exe: &Path, state: &Path) {
    assert_eq!(version_of(exe), "tether-agent 0.1.0");
    assert!(!exe.with_file_name("tether-agent.previous").exists());
    let trial = read_json(&state.join("self-update/trial.json"));
    assert_eq!(trial["phase"], "rolledBack");
    let failed = read_json(&state.join("self-update/failed.json"));
    assert_eq!(failed[0]["version"], "0.2.0", "not fetched again");
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
    assert_rolled_back_to_0_1_0(&exe, &state);
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
    let guard = guard(dir.path(), &state, stuck.id());
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

/// The guard from `DIR/tether-agent.previous` for agent `pid`, with
/// `--version` as the agent's arguments: the restored agent says who it
/// is and exits.
fn guard(dir: &Path, state: &Path, pid: u32) -> std::process::Child {
    Command::new(dir.join("tether-agent.previous"))
        .arg("update-guard")
        .arg("--state-dir")
        .arg(state)
        .args(["--pid", &pid.to_string(), "--", "--version"])
        .env_remove("INVOCATION_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guard starts")
}

#[tokio::test]
async fn the_guard_times_the_trial_by_the_boot_clock_not_the_wall_clock() {
    // Review M3: the wall clock was set back a day after the trial was
    // recorded (its deadline a day ahead now); the boot clock says 2 s.
    let dir = tempfile::tempdir().expect("dir");
    let exe = swapped(dir.path());
    let state = dir.path().join("state");
    let boot = tether_agent::self_update::trial::BootInstant::read().expect("a boot id");
    let started = chrono::Utc::now() + chrono::TimeDelta::days(1);
    write_record(
        &state,
        json!({
            "from": "0.1.0",
            "to": "0.2.0",
            "sha256": "ab".repeat(32),
            "exe": exe,
            "startedAt": started,
            "deadline": started + chrono::TimeDelta::seconds(2),
            "ends": {"bootId": boot.boot_id, "sinceBootMs": boot.since_boot_ms + 2000},
            "phase": "trial",
        }),
    );
    let mut stuck = Command::new("sleep").arg("60").spawn().expect("sleep");
    let guard = guard(dir.path(), &state, stuck.id());
    wait_until(
        "the guard to kill the agent on trial",
        Duration::from_secs(20),
        || {
            let status = stuck.try_wait();
            async move { Ok(status?) }
        },
    )
    .await
    .expect("killed");
    let out = tokio::task::spawn_blocking(move || guard.wait_with_output())
        .await
        .expect("joined")
        .expect("guard output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0.2.0 did not report healthy within 2 s; rolled back to 0.1.0"),
        "{stderr}"
    );
    assert_eq!(version_of(&exe), "tether-agent 0.1.0");
}

#[test]
fn a_staged_trial_whose_rename_happened_is_a_trial_at_the_next_start() {
    // Review M2: the record is written staged before the rename; a stop
    // right after the rename leaves it so. The new binary, started again,
    // runs on trial, its end on this boot's clock, under a guard.
    let dir = tempfile::tempdir().expect("dir");
    let exe = swapped(dir.path());
    let state = dir.path().join("state");
    let sha256 = sha256_of(&exe);
    let now = chrono::Utc::now();
    // Long: the agent hashes its (debug, large) executable first.
    write_record(
        &state,
        json!({
            "from": "0.1.0",
            "to": "0.2.0",
            "sha256": sha256,
            "exe": exe,
            "startedAt": now,
            "deadline": now + chrono::TimeDelta::seconds(600),
            "phase": "staged",
        }),
    );
    let out = Command::new(&exe)
        .arg("--state-dir")
        .arg(&state)
        .env_remove("INVOCATION_ID")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let guard_pid = std::fs::read_to_string(state.join("self-update/guard.pid"));
    if let Some(pid) = guard_pid
        .as_deref()
        .ok()
        .and_then(|pid| pid.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        // Its rollback is the other tests' business.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    assert!(stderr.contains("update guard started"), "{stderr}");
    assert!(stderr.contains("agent 0.2.0 on trial"), "{stderr}");
    let trial = read_json(&state.join("self-update/trial.json"));
    assert_eq!(trial["phase"], "trial");
    assert_eq!(trial["sha256"], json!(sha256));
    assert!(trial["ends"]["bootId"].is_string(), "{trial}");
    assert_eq!(version_of(&exe), "tether-agent 0.2.0");
}

#[test]
fn a_staged_trial_whose_rename_never_happened_is_dropped_at_the_next_start() {
    let dir = tempfile::tempdir().expect("dir");
    let exe = agent_install(dir.path(), "0.1.0").expect("0.1.0 installed");
    let left = dir.path().join(".tether-agent.new.42");
    std::fs::write(&left, b"half a binary").expect("left over");
    let state = dir.path().join("state");
    let now = chrono::Utc::now();
    write_record(
        &state,
        json!({
            "from": "0.1.0",
            "to": "0.2.0",
            "sha256": "ab".repeat(32),
            "exe": exe,
            "startedAt": now - chrono::TimeDelta::seconds(300),
            "deadline": now - chrono::TimeDelta::seconds(180),
            "phase": "staged",
        }),
    );
    let out = Command::new(&exe)
        .arg("--state-dir")
        .arg(&state)
        .env_remove("INVOCATION_ID")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("never swapped in"), "{stderr}");
    assert!(stderr.contains("no credentials"), "runs on: {stderr}");
    assert!(!stderr.contains("update guard started"), "{stderr}");
    assert!(!state.join("self-update/trial.json").exists());
    assert!(
        !state.join("self-update/failed.json").exists(),
        "nothing ran, nothing failed"
    );
    assert!(!left.exists(), "the unfinished copy is removed");
    assert_eq!(version_of(&exe), "tether-agent 0.1.0");
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
    wait_for_phase(&state, "rolledBack").await;
    assert_eq!(version_of(&exe), "tether-agent 0.1.0");
    let failed = read_json(&state.join("self-update/failed.json"));
    assert_eq!(failed[0]["version"], "0.2.0");
}

/// Under systemd, the previous binary checks the trial before every start
/// of the service (`ExecStartPre`): a binary on trial that stopped — here
/// one that cannot start at all — is rolled back before it runs again,
/// however much of its trial was left (second review M1).
#[test]
fn the_previous_binary_rolls_back_a_trial_whose_agent_stopped_before_the_next_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("dir");
    let exe = swapped(dir.path());
    std::fs::write(&exe, "#!/bin/sh\nexit 2\n").expect("a binary that cannot start");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("mode");
    let state = dir.path().join("state");
    write_trial(
        &state,
        &exe,
        chrono::Utc::now() + chrono::TimeDelta::minutes(10),
    );
    let before_start = || {
        Command::new(dir.path().join("tether-agent.previous"))
            .arg("update-before-start")
            .arg("--state-dir")
            .arg(&state)
            .output()
            .expect("runs")
    };
    let out = before_start();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("0.2.0 stopped during its trial"),
        "{stderr}"
    );
    assert_rolled_back_to_0_1_0(&exe, &state);

    // The next start finds nothing pending: the restored agent starts.
    let out = Command::new(&exe)
        .arg("update-before-start")
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(version_of(&exe), "tether-agent 0.1.0");
    let refused = Command::new(&exe)
        .args(["update-before-start", "--state"])
        .output()
        .expect("runs");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("usage: tether-agent update-before-start")
    );
}
