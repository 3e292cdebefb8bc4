//! `reboot` end to end (issue 19): a real tetherd and agent. The reboot
//! command is the test's (`touch FILE`), so the machine stays up; the boot
//! id file stands in for the kernel's, so the test can "reboot" by writing
//! a new id and restarting the agent.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, local_api, wait_until};

use crate::support::{outcome, request};

const WAIT: Duration = Duration::from_secs(30);

async fn act(
    admin: &ApiClient,
    agent: &Agent,
    action: &str,
    input: Value,
) -> anyhow::Result<Value> {
    let id = request(
        admin,
        &agent.name,
        json!({"action": action, "input": input}),
    )
    .await?;
    let done = outcome(admin, &id).await?;
    ensure!(
        done["statusCode"].is_u64(),
        "{action} got no answer: {done}\n{}",
        agent.log()
    );
    Ok(done)
}

async fn authorization_id(admin: &ApiClient, agent: &Agent) -> anyhow::Result<String> {
    let done = act(admin, agent, "get-authorization-id", json!({})).await?;
    Ok(done["response"]["authorizationId"]
        .as_str()
        .context("an authorizationId")?
        .to_owned())
}

fn code(done: &Value) -> u64 {
    done["statusCode"].as_u64().unwrap_or_default()
}

fn says(done: &Value, text: &str) -> bool {
    done["statusMessage"]
        .as_str()
        .is_some_and(|m| m.contains(text))
}

/// Waits until the device's reported boot id is `id`.
async fn wait_boot(admin: &ApiClient, agent: &Agent, id: &str) -> anyhow::Result<Value> {
    let path = format!("/api/v1/devices/{}", agent.name);
    wait_until(&format!("the device to report boot {id}"), WAIT, || async {
        let device = admin.get(&path).await?.expect_status(200)?;
        let boot = device["status"]["boot"].clone();
        Ok((boot["id"] == id).then_some(boot))
    })
    .await
    .with_context(|| agent.log())
}

fn written(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

#[tokio::test]
async fn reboot_needs_a_fresh_id_and_no_update_lock_and_the_new_boot_is_reported()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rebooted = dir.path().join("rebooted");
    let boot_id = written(dir.path(), "boot_id", "boot-1\n")?;
    // The agent's wall clock follows this file, so the test can let an
    // authorization id expire without waiting two minutes.
    let clock = written(dir.path(), "clock", "+0")?;
    let mut env: Vec<(String, String)> = tether_testkit::faketime_env("+0")?
        .into_iter()
        .filter(|(k, _)| k != "FAKETIME")
        .collect();
    env.extend([
        ("FAKETIME_TIMESTAMP_FILE".to_owned(), clock.clone()),
        ("FAKETIME_NO_CACHE".to_owned(), "1".to_owned()),
        (
            "TETHER_AGENT_REBOOT_COMMAND".to_owned(),
            format!("touch {}", rebooted.display()),
        ),
        ("TETHER_AGENT_BOOT_ID_FILE".to_owned(), boot_id.clone()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let mut agent = Agent::enroll_with_env(&tetherd, &admin, "edge-power", &env).await?;
    agent.wait_presence(&admin, "online").await?;
    let first = wait_boot(&admin, &agent, "boot-1").await?;
    ensure!(first["bootedAt"].is_string(), "{first}");

    // Not a default action (ADR 0017): enabled per device.
    admin
        .post(
            &format!("/api/v1/devices/{}/actions", agent.name),
            json!({"action": "reboot", "input": {"reason": "kernel update"}}),
        )
        .await?
        .expect_status(403)?;
    admin
        .put(&format!("/api/v1/devices/{}/action-set/reboot", agent.name))
        .await?
        .expect_status(200)?;

    // Without an id, and with one nobody issued: 401.
    let done = act(&admin, &agent, "reboot", json!({"reason": "kernel update"})).await?;
    ensure!(
        code(&done) == 401 && says(&done, "get-authorization-id"),
        "{done}"
    );
    let done = act(
        &admin,
        &agent,
        "reboot",
        json!({"authorizationId": "0123456789abcdef", "reason": "kernel update"}),
    )
    .await?;
    ensure!(code(&done) == 401 && says(&done, "unknown"), "{done}");

    // An expired id: 401.
    let old = authorization_id(&admin, &agent).await?;
    std::fs::write(&clock, "+3m")?;
    let done = act(
        &admin,
        &agent,
        "reboot",
        json!({"authorizationId": old, "reason": "kernel update"}),
    )
    .await?;
    ensure!(code(&done) == 401 && says(&done, "expired"), "{done}");
    std::fs::write(&clock, "+0")?;

    // An application holds an update lock: 409 naming it ...
    let (status, taken) = local_api(
        &agent.local_api_socket(),
        "PUT",
        "/v1/update-locks/plc-flash",
        r#"{"reason":"flashing the PLC"}"#,
    )
    .await?;
    ensure!(status == 200, "{taken}");
    let id = authorization_id(&admin, &agent).await?;
    let done = act(
        &admin,
        &agent,
        "reboot",
        json!({"authorizationId": id, "reason": "kernel update"}),
    )
    .await?;
    ensure!(code(&done) == 409, "{done}");
    ensure!(
        says(&done, "plc-flash (flashing the PLC)") && says(&done, "force: true"),
        "{done}"
    );
    ensure!(!rebooted.exists(), "a refused reboot ran the command");

    // ... and forced, with the same id (a refusal does not spend it), it
    // is answered, then the command runs.
    let done = act(
        &admin,
        &agent,
        "reboot",
        json!({"authorizationId": id, "reason": "kernel update", "force": true}),
    )
    .await?;
    ensure!(code(&done) == 200, "{done}\n{}", agent.log());
    ensure!(done["response"]["reason"] == "kernel update", "{done}");
    ensure!(done["response"]["forced"] == true, "{done}");
    ensure!(
        done["response"]["overriddenLocks"] == json!(["plc-flash"]),
        "{done}"
    );
    wait_until("the reboot command to run", WAIT, || {
        let ran = rebooted.exists();
        async move { Ok(ran.then_some(())) }
    })
    .await
    .with_context(|| agent.log())?;
    ensure!(
        agent.log().contains("kernel update"),
        "the reason is in the agent's log"
    );

    // The id is spent: 401.
    let done = act(
        &admin,
        &agent,
        "reboot",
        json!({"authorizationId": id, "reason": "again", "force": true}),
    )
    .await?;
    ensure!(code(&done) == 401 && says(&done, "already used"), "{done}");

    // The machine comes back with a new boot id: reported, and an event.
    std::fs::write(&boot_id, "boot-2\n")?;
    agent.stop().await?;
    agent.start()?;
    wait_boot(&admin, &agent, "boot-2").await?;
    let events = admin
        .get(&format!("/api/v1/devices/{}/events", agent.name))
        .await?
        .expect_status(200)?;
    let rebooted_events: Vec<&Value> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["event"] == "rebooted")
        .collect();
    ensure!(rebooted_events.len() == 1, "{events}");
    ensure!(
        rebooted_events[0]["response"]["previousBootId"] == "boot-1"
            && rebooted_events[0]["response"]["bootId"] == "boot-2",
        "{events}"
    );
    Ok(())
}
