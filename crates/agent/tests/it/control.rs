//! The monitor's requests on a device's `control` topic (issue 18, ADR
//! 0032) reaching a real agent: tetherd in external-broker mode behind a
//! real mosquitto, the requests published on the device's `control` topic
//! with tetherd's own controller certificate, as tetherd's `DeviceControl`
//! does (its choice of replica and its bus crossing are unit-tested in
//! `tether-server`'s `monitor::control`). What the agent does is seen at
//! tetherd: its reported status arrives again.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::mosquitto::{Mosquitto, start_with_mosquitto};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

use crate::supervisor::Desired;

const WAIT: Duration = Duration::from_secs(30);
const BIRTH_AGAIN: &str = "published the birth again";

/// When tetherd stored the device's last reported status.
async fn reported_at(admin: &ApiClient, device: &str) -> anyhow::Result<Option<String>> {
    let shown = admin
        .get(&format!("/api/v1/devices/{device}"))
        .await?
        .expect_status(200)?;
    Ok(shown["status"]["reportedAt"].as_str().map(str::to_owned))
}

/// Waits until tetherd stored a reported status after `since`; the new time.
async fn reported_after(
    admin: &ApiClient,
    agent: &Agent,
    since: Option<&str>,
) -> anyhow::Result<String> {
    wait_until("a reported status at tetherd", WAIT, || async {
        Ok(reported_at(admin, &agent.name)
            .await?
            .filter(|at| Some(at.as_str()) != since))
    })
    .await
    .with_context(|| format!("agent log:\n{}", agent.log()))
}

struct Fleet {
    tetherd: Tetherd,
    broker: Mosquitto,
    admin: ApiClient,
    agent: Agent,
}

impl Fleet {
    async fn start(device: &str) -> anyhow::Result<Self> {
        let (tetherd, broker) = start_with_mosquitto(Database::Sqlite).await?;
        let admin = tetherd.admin().await?;
        let agent = Agent::enroll_online(&tetherd, &admin, device).await?;
        Ok(Self {
            tetherd,
            broker,
            admin,
            agent,
        })
    }

    async fn control(&self, payload: &[u8]) -> anyhow::Result<()> {
        self.broker
            .publish_as_tetherd(&self.tetherd, &self.agent.name, "control", payload)
            .await
    }

    fn count(&self, line: &str) -> usize {
        self.agent.log().matches(line).count()
    }

    async fn wait_log(&self, what: &str, line: &str, count: usize) -> anyhow::Result<()> {
        wait_until(what, WAIT, || async {
            Ok((self.count(line) >= count).then_some(()))
        })
        .await
        .with_context(|| format!("agent log:\n{}", self.agent.log()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebirth_request_brings_the_birth_and_status_again_and_a_burst_only_one_more()
-> anyhow::Result<()> {
    let fleet = Fleet::start("reborn").await?;
    let first = reported_after(&fleet.admin, &fleet.agent, None).await?;

    fleet.control(br#"{"kind":"rebirth"}"#).await?;
    fleet.wait_log("the rebirth", BIRTH_AGAIN, 1).await?;
    let second = reported_after(&fleet.admin, &fleet.agent, Some(&first)).await?;
    assert!(second > first, "{second} after {first}");
    let shown = fleet
        .admin
        .get("/api/v1/devices/reborn")
        .await?
        .expect_status(200)?;
    assert_eq!(shown["presence"], "online", "{shown}");

    // A burst within the spacing: held and answered once, when the
    // spacing has passed, never dropped and never once each.
    for _ in 0..3 {
        fleet.control(br#"{"kind":"rebirth"}"#).await?;
    }
    fleet
        .wait_log("the burst's one rebirth", BIRTH_AGAIN, 2)
        .await?;
    reported_after(&fleet.admin, &fleet.agent, Some(&second)).await?;
    // Requests are taken in order: once this one is refused, every
    // rebirth of the burst has been taken, and it held no other.
    fleet.control(b"marker").await?;
    fleet
        .wait_log("the marker", "is not one this agent knows", 1)
        .await?;
    assert_eq!(fleet.count(BIRTH_AGAIN), 2, "{}", fleet.agent.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_request_restores_a_config_file_edited_by_hand_and_reports() -> anyhow::Result<()>
{
    let fleet = Fleet::start("reloaded").await?;
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("etc/app.conf");
    let mut desired = Desired::new(&fleet.admin, &fleet.agent.name);
    desired
        .set(json!({"app": {
            "version": "v1",
            "configFiles": {"conf": {"path": conf.display().to_string(), "template": "port={{ values.port }}\n"}},
            "values": {"port": 8080},
        }}))
        .await?;
    desired.wait(&fleet.agent, "app", "v1", "ready").await?;
    assert_eq!(std::fs::read_to_string(&conf)?, "port=8080\n");

    // Edited in place by hand: the agent has no reason to look at it...
    std::fs::write(&conf, "port=1\n")?;
    let before = reported_at(&fleet.admin, &fleet.agent.name).await?;
    // ...until tetherd asks for a reload.
    fleet.control(br#"{"kind":"reload"}"#).await?;
    wait_until("the config file to be written again", WAIT, || async {
        Ok((std::fs::read_to_string(&conf)? == "port=8080\n").then_some(()))
    })
    .await
    .with_context(|| format!("agent log:\n{}", fleet.agent.log()))?;
    fleet
        .wait_log("the reload", "again in full, as tetherd asked", 1)
        .await?;
    reported_after(&fleet.admin, &fleet.agent, before.as_deref()).await?;
    let shown = fleet
        .admin
        .get("/api/v1/devices/reloaded")
        .await?
        .expect_status(200)?;
    assert_eq!(
        shown["status"]["deployments"]["app"]["state"], "ready",
        "{shown}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_control_topic_is_logged_ignored_and_the_agent_stays_connected()
-> anyhow::Result<()> {
    let fleet = Fleet::start("steady").await?;
    let pid = fleet.agent.pid();
    let garbage: [(&[u8], &str); 3] = [
        (b"\x00\xffnot json", "expected value"),
        (br#"{"kind":"reboot"}"#, "unknown variant `reboot`"),
        (br#"{"kind":42}"#, "invalid type: integer `42`"),
    ];
    for (payload, reason) in garbage {
        fleet.control(payload).await?;
        fleet.wait_log("the refusal", reason, 1).await?;
    }
    assert_eq!(
        fleet.count("is not one this agent knows"),
        3,
        "each logged once: {}",
        fleet.agent.log()
    );
    // Still the same process on the same connection, and it still listens.
    assert_eq!(fleet.agent.pid(), pid);
    assert_eq!(
        fleet.count("session: connected to "),
        1,
        "{}",
        fleet.agent.log()
    );
    fleet.control(br#"{"kind":"rebirth"}"#).await?;
    fleet.wait_log("the rebirth", BIRTH_AGAIN, 1).await?;
    let shown: Value = fleet
        .admin
        .get("/api/v1/devices/steady")
        .await?
        .expect_status(200)?;
    assert_eq!(shown["presence"], "online", "{shown}");
    Ok(())
}
