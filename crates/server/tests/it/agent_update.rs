//! Agent self-update end to end (issue 19): real tetherd, real agents
//! running from stamped copies in temp dirs (the build's binary is never
//! replaced), a release published through the API and rolled out as a
//! deployment. Agents restart on the new version and report it; an action
//! running when the update comes finishes first; a release that cannot
//! connect is rolled back by the agent's guard and reported failed; a
//! release signed by a key the agent did not pin is refused.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::{Value, json};
use tether_proto::desired::agent_release::signed_message;
use tether_testkit::api::ApiClient;
use tether_testkit::binaries::{agent_install, binary, stamp_agent_binary, with_version_stamp};
use tether_testkit::http_target::{Behaviour, HttpTarget};
use tether_testkit::tetherd::{Database, Tetherd};
use tether_testkit::{Agent, wait_until};

const PLATFORM: &str = "linux-x86_64";

/// Publishes `bytes` as agent release `version` for this platform.
async fn publish(admin: &ApiClient, version: &str, bytes: Vec<u8>) -> anyhow::Result<Value> {
    admin
        .put_bytes(
            &format!("/api/v1/agent-releases/{version}/{PLATFORM}"),
            bytes,
        )
        .await?
        .expect_status(201)
}

/// An agent running `0.1.0` from its own temp dir, labelled `fleet`.
async fn agent_at_0_1_0(
    tetherd: &Tetherd,
    admin: &ApiClient,
    dir: &Path,
    name: &str,
    fleet: &str,
    trial_seconds: &str,
) -> anyhow::Result<(Agent, std::path::PathBuf)> {
    let exe = agent_install(dir, "0.1.0")?;
    let agent = Agent::enroll_from(
        tetherd,
        admin,
        json!({"name": name, "labels": {"fleet": fleet}}),
        &exe,
        &[("TETHER_AGENT_UPDATE_TRIAL_SECONDS", trial_seconds)],
    )
    .await?;
    agent.wait_presence(admin, "online").await?;
    Ok((agent, exe))
}

fn version_of(exe: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new(exe).arg("--version").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Waits until `device` is online reporting `version`.
async fn wait_version(admin: &ApiClient, device: &str, version: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("{device} online on agent {version}"),
        Duration::from_secs(90),
        || async move {
            let shown = admin
                .get(&format!("/api/v1/devices/{device}"))
                .await?
                .expect_status(200)?;
            Ok((shown["presence"] == "online" && shown["agentVersion"] == version).then_some(()))
        },
    )
    .await
}

/// `device`'s row in the deployment's status once `done` says so.
async fn wait_device_rollout(
    admin: &ApiClient,
    deployment: &str,
    device: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let done = &done;
    wait_until(
        &format!("{device}'s rollout of {deployment}"),
        Duration::from_secs(90),
        || async move {
            let status = admin
                .get(&format!("/api/v1/deployments/{deployment}/status"))
                .await?
                .expect_status(200)?;
            let row = status["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["device"] == device)
                .cloned();
            Ok(row.filter(|row| done(row)))
        },
    )
    .await
}

fn state_json(agent: &Agent, file: &str) -> anyhow::Result<Value> {
    let path = agent.state_file(&format!("self-update/{file}"));
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_restart_on_a_published_release_after_their_running_action() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a, exe_a) = agent_at_0_1_0(&tetherd, &admin, dir_a.path(), "upd-a", "upd", "60").await?;
    let (b, exe_b) = agent_at_0_1_0(&tetherd, &admin, dir_b.path(), "upd-b", "upd", "60").await?;
    wait_version(&admin, "upd-a", "0.1.0").await?;

    // The newer build: the same binary stamped 0.2.0, as a release script
    // makes it.
    let built = tempfile::tempdir()?;
    let new = built.path().join("tether-agent");
    stamp_agent_binary(&binary("tether-agent")?, &new, "0.2.0")?;
    let bytes = std::fs::read(&new)?;
    let published = publish(&admin, "0.2.0", bytes.clone()).await?;
    let sha256 = published["binaries"][PLATFORM]["sha256"]
        .as_str()
        .context("sha256")?
        .to_owned();

    // a was cut off halfway through an earlier download: it resumes.
    let part = a.state_file(&format!(
        "self-update/download/0.2.0-{}.part",
        &sha256[..16]
    ));
    std::fs::create_dir_all(part.parent().context("dir")?)?;
    std::fs::write(&part, &bytes[..bytes.len() / 2])?;

    // b is busy with an action when the update comes: a send-api whose
    // target answers only when the test says.
    let finish = Arc::new(tokio::sync::Notify::new());
    let slow = HttpTarget::start(Behaviour::RespondWhenNotified(
        finish.clone(),
        b"slow answer".to_vec(),
    ))
    .await?;
    let action = admin
        .post(
            "/api/v1/devices/upd-b/actions",
            json!({"action": "send-api", "input": {"href": slow.url}}),
        )
        .await?
        .expect_status(202)?;
    let action = action["correlationId"].as_str().context("id")?.to_owned();
    slow.wait_for_requests(1).await?;

    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "tether-agent", "spec": {
                "target": {"selector": "fleet=upd"},
                "agentRelease": "0.2.0",
                "rollout": {"batchSize": 2}
            }}),
        )
        .await?
        .expect_status(201)?;

    // b has the new binary and waits: still 0.1.0, no new action taken.
    wait_until(
        "b to wait for its running action",
        Duration::from_secs(90),
        || {
            let waits = b.log().contains("waits for the running actions to finish");
            async move { Ok(waits.then_some(())) }
        },
    )
    .await
    .with_context(|| format!("agent log:\n{}", b.log()))?;
    let shown = admin
        .get("/api/v1/devices/upd-b")
        .await?
        .expect_status(200)?;
    assert_eq!(shown["agentVersion"], "0.1.0");
    let queued = admin
        .post(
            "/api/v1/devices/upd-b/actions",
            json!({"action": "get-node-ip", "input": {}}),
        )
        .await?
        .expect_status(202)?;
    let queued = queued["correlationId"].as_str().context("id")?.to_owned();
    finish.notify_one();

    for (agent, exe) in [(&a, &exe_a), (&b, &exe_b)] {
        wait_version(&admin, &agent.name, "0.2.0")
            .await
            .with_context(|| format!("agent log:\n{}", agent.log()))?;
        let row = wait_device_rollout(&admin, "tether-agent", &agent.name, |row| {
            row["state"] == "ready"
        })
        .await
        .with_context(|| format!("agent log:\n{}", agent.log()))?;
        assert_eq!(row["revision"], 1, "{row}");
        assert_eq!(version_of(exe)?, "tether-agent 0.2.0");
        let previous = exe.with_file_name("tether-agent.previous");
        assert_eq!(version_of(&previous)?, "tether-agent 0.1.0");
        assert_eq!(state_json(agent, "trial.json")?["phase"], "committed");
    }
    assert!(
        a.log().contains("resuming the download"),
        "a resumed its partial download:\n{}",
        a.log()
    );
    // The action answered, not interrupted, and before b restarted.
    let answered = admin
        .get(&format!("/api/v1/actions/{action}?waitSeconds=30"))
        .await?
        .expect_status(200)?;
    assert_eq!(answered["statusCode"], 200, "{answered}");
    let log = b.log();
    let waited = log
        .find("waits for the running actions to finish")
        .context("b waited for its action")?;
    let answered_at = log.find("answered 200").context("the answer in b's log")?;
    let swapped = log.find("swapped agent 0.2.0 in").context("b swapped")?;
    assert!(waited < answered_at && answered_at < swapped, "{log}");
    // The action that arrived while b waited ran on 0.2.0, after the restart.
    let later = admin
        .get(&format!("/api/v1/actions/{queued}?waitSeconds=30"))
        .await?
        .expect_status(200)?;
    assert_eq!(later["statusCode"], 200, "{later}");
    let ran_at = log
        .rfind("action get-node-ip")
        .context("get-node-ip in b's log")?;
    assert!(ran_at > swapped, "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_cannot_connect_is_rolled_back_and_a_foreign_key_is_refused()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let (dir_c, dir_d) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (c, exe_c) = agent_at_0_1_0(&tetherd, &admin, dir_c.path(), "bad-c", "bad", "5").await?;
    let (d, exe_d) = agent_at_0_1_0(&tetherd, &admin, dir_d.path(), "bad-d", "bad", "5").await?;

    // d trusts another key than tetherd's: as if tetherd's key were
    // replaced by someone else's, every release it signs is refused.
    let foreign = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    std::fs::write(
        d.state_file("self-update/signing-key"),
        format!("{foreign}\n"),
    )?;

    // A build that never connects: an ELF executable for this platform
    // that is not an agent (coreutils' sleep, refusing the agent's flags),
    // stamped 0.3.0 as tetherd wants a release's binary.
    let sleep = which("sleep")?;
    publish(
        &admin,
        "0.3.0",
        with_version_stamp(std::fs::read(&sleep)?, "0.3.0")?,
    )
    .await?;
    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "tether-agent", "spec": {
                "target": {"selector": "fleet=bad"},
                "agentRelease": "0.3.0",
                "rollout": {"batchSize": 2, "maxFailurePercent": 100}
            }}),
        )
        .await?
        .expect_status(201)?;

    let guard_log =
        || std::fs::read_to_string(c.state_file("self-update/guard.log")).unwrap_or_default();
    let row = wait_device_rollout(&admin, "tether-agent", "bad-c", |row| {
        row["state"] == "failed"
    })
    .await
    .with_context(|| format!("agent log:\n{}\nguard log:\n{}", c.log(), guard_log()))?;
    assert_eq!(
        row["reason"], "0.3.0 did not report healthy within 5 s; rolled back to 0.1.0",
        "{row}"
    );
    // The guard put 0.1.0 back and started it: online again on 0.1.0.
    wait_version(&admin, "bad-c", "0.1.0").await?;
    assert_eq!(version_of(&exe_c)?, "tether-agent 0.1.0");
    assert_eq!(state_json(&c, "trial.json")?["phase"], "rolledBack");

    let row = wait_device_rollout(&admin, "tether-agent", "bad-d", |row| {
        row["state"] == "failed"
    })
    .await
    .with_context(|| format!("agent log:\n{}", d.log()))?;
    let reason = row["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("pinned key") && reason.contains(&foreign),
        "{row}"
    );
    // d never downloaded nor swapped.
    assert_eq!(version_of(&exe_d)?, "tether-agent 0.1.0");
    assert!(!exe_d.with_file_name("tether-agent.previous").exists());
    c.kill_update_guard();
    Ok(())
}

/// Review M5: an agent with no key pinned (enrolled before tetherd had a
/// release key) whose spec names another key than tetherd's, as whoever
/// can write tetherd's database could render it, with a release signed by
/// that key. The agent fetches tetherd's key from tetherd, pins it and
/// refuses the release, naming both keys; it never pins the spec's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_no_key_pins_tetherds_not_the_one_its_spec_names() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let dir = tempfile::tempdir()?;
    let (mut agent, exe) =
        agent_at_0_1_0(&tetherd, &admin, dir.path(), "tofu-e", "tofu", "60").await?;
    agent.stop().await?;
    std::fs::remove_file(agent.state_file("self-update/signing-key"))?;
    let tetherds_key = admin
        .get("/api/v1/agent-releases/signing-key")
        .await?
        .expect_status(200)?["signingKey"]
        .as_str()
        .context("a key")?
        .to_owned();

    roll_out_0_2_0(&admin, "fleet=tofu").await?;
    // The release signed again with a key of someone else's, written
    // straight into the database tetherd renders specs from.
    let foreign = tether_server::releases::ReleaseKeys::generate();
    rewrite_agent_section(&tetherd, "tofu-e", |section, message| {
        section["signingKey"] = json!(foreign.public_key());
        section["binaries"][PLATFORM]["signature"] = json!(foreign.sign(message));
    })
    .await?;

    agent.start()?;
    let row = wait_device_rollout(&admin, "tether-agent", "tofu-e", |row| {
        row["state"] == "failed"
    })
    .await
    .with_context(|| format!("agent log:\n{}", agent.log()))?;
    let reason = row["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(foreign.public_key()) && reason.contains(&tetherds_key),
        "{row}"
    );
    let pinned = std::fs::read_to_string(agent.state_file("self-update/signing-key"))?;
    assert_eq!(pinned.trim(), tetherds_key);
    assert_eq!(version_of(&exe)?, "tether-agent 0.1.0");
    assert!(!exe.with_file_name("tether-agent.previous").exists());
    Ok(())
}

/// This build stamped 0.2.0, published and rolled out to `selector` in
/// one batch.
async fn roll_out_0_2_0(admin: &ApiClient, selector: &str) -> anyhow::Result<()> {
    let built = tempfile::tempdir()?;
    let new = built.path().join("tether-agent");
    stamp_agent_binary(&binary("tether-agent")?, &new, "0.2.0")?;
    publish(admin, "0.2.0", std::fs::read(&new)?).await?;
    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "tether-agent", "spec": {
                "target": {"selector": selector},
                "agentRelease": "0.2.0"
            }}),
        )
        .await?
        .expect_status(201)?;
    Ok(())
}

/// Rewrites the `agent` section of `device`'s spec straight in tetherd's
/// SQLite database, as someone who can write the database would; `edit`
/// gets the section and the message its binary's signature is over.
async fn rewrite_agent_section(
    tetherd: &Tetherd,
    device: &str,
    edit: impl FnOnce(&mut Value, &[u8]),
) -> anyhow::Result<()> {
    let database = format!(
        "sqlite://{}",
        tetherd.data_dir().join("tether.db").display()
    );
    let database = sqlx::SqlitePool::connect(&database).await?;
    let mut spec: Value = wait_until(
        &format!("{device}'s spec to carry the release"),
        Duration::from_secs(30),
        || {
            let database = database.clone();
            async move {
                let spec: String =
                    sqlx::query_scalar("SELECT spec FROM device_specs WHERE device = $1")
                        .bind(device)
                        .fetch_one(&database)
                        .await?;
                let spec: Value = serde_json::from_str(&spec)?;
                let carried = !spec["deployments"]["tether-agent"]["agent"].is_null();
                Ok(carried.then_some(spec))
            }
        },
    )
    .await?;
    let section = &mut spec["deployments"]["tether-agent"]["agent"];
    let binary = &section["binaries"][PLATFORM];
    let message = signed_message(
        section["version"].as_str().context("version")?,
        PLATFORM,
        binary["sha256"].as_str().context("sha256")?,
        binary["size"].as_u64().context("size")?,
    );
    edit(section, &message);
    sqlx::query("UPDATE device_specs SET spec = $1 WHERE device = $2")
        .bind(spec.to_string())
        .bind(device)
        .execute(&database)
        .await?;
    database.close().await;
    Ok(())
}

/// The acceptance's "a binary with a bad signature is refused", end to
/// end: the key is tetherd's, the signature is not its.
#[tokio::test]
async fn a_release_whose_signature_was_forged_is_refused_and_never_downloaded() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let dir = tempfile::tempdir()?;
    let (mut agent, exe) =
        agent_at_0_1_0(&tetherd, &admin, dir.path(), "forged-f", "forged", "60").await?;
    agent.stop().await?;
    roll_out_0_2_0(&admin, "fleet=forged").await?;
    let forger = tether_server::releases::ReleaseKeys::generate();
    rewrite_agent_section(&tetherd, "forged-f", |section, message| {
        section["binaries"][PLATFORM]["signature"] = json!(forger.sign(message));
    })
    .await?;

    agent.start()?;
    let row = wait_device_rollout(&admin, "tether-agent", "forged-f", |row| {
        row["state"] == "failed"
    })
    .await
    .with_context(|| format!("agent log:\n{}", agent.log()))?;
    let reason = row["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("signature"), "{row}");
    assert_eq!(version_of(&exe)?, "tether-agent 0.1.0");
    assert!(!exe.with_file_name("tether-agent.previous").exists());
    assert!(
        !agent.log().contains("downloaded and verified"),
        "refused before any download"
    );
    Ok(())
}

fn which(program: &str) -> anyhow::Result<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{program} not on PATH"))
}
