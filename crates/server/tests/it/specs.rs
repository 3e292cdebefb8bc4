//! Device spec and status end to end: real tetherd, real tether-agent.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::sim_agent::DeviceCredentials;
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

use crate::support::{mosquitto, on_both_databases, text};

on_both_databases!(
    a_spec_update_reaches_the_agent_and_its_status_comes_back,
    a_device_reports_only_for_itself_and_only_versions_it_was_sent,
);

const DEVICE: &str = "/api/v1/devices/edge-1";

/// Waits until the device's status satisfies `done`; returns the device.
async fn wait_status(
    admin: &ApiClient,
    path: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    wait_until(what, Duration::from_secs(30), || async {
        let device = admin.get(path).await?.expect_status(200)?;
        Ok(done(&device).then_some(device))
    })
    .await
}

async fn a_spec_update_reaches_the_agent_and_its_status_comes_back(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let mut agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;

    // The birth reports the facts and version 0: nothing to apply yet.
    let device = wait_status(&admin, DEVICE, "the first report", |d| {
        d["status"].is_object()
    })
    .await?;
    assert_eq!(device["specVersion"], 0, "{device}");
    assert_eq!(device["spec"], json!({}), "{device}");
    assert_eq!(device["specInSync"], true, "{device}");
    let facts = &device["status"]["facts"];
    assert_eq!(facts["agentVersion"], device["agentVersion"], "{facts}");
    assert!(
        facts["hostname"].as_str().is_some_and(|h| !h.is_empty()),
        "{facts}"
    );
    assert!(
        facts["memoryTotalBytes"].as_u64().is_some_and(|m| m > 0),
        "{facts}"
    );
    assert!(facts["cpuCores"].as_u64().is_some_and(|c| c > 0), "{facts}");
    assert!(facts["kernel"].is_string(), "{facts}");

    // A whole spec, then a masked update of one field.
    let updated = admin
        .patch(
            DEVICE,
            json!({"spec": {
                "loggingConfig": {"priority": 4, "units": ["ssh.service"]},
                "metricsConfig": {"intervalSeconds": 30},
            }}),
        )
        .await?
        .expect_status(200)?;
    assert_eq!(updated["specVersion"], 1, "{updated}");
    let masked = json!({"spec": {
        "loggingConfig": {"priority": 2, "units": ["cron.service"]},
        "metricsConfig": {"intervalSeconds": 5},
    }});
    let path = format!("{DEVICE}?updateMask=spec.loggingConfig.priority");
    let updated = admin
        .patch(&path, masked.clone())
        .await?
        .expect_status(200)?;
    assert_eq!(
        updated["spec"],
        json!({
            "loggingConfig": {"priority": 2, "units": ["ssh.service"]},
            "metricsConfig": {"intervalSeconds": 30},
        }),
        "only the masked field changes"
    );
    assert_eq!(updated["specVersion"], 2);
    // The same write again changes nothing and keeps the version.
    let again = admin.patch(&path, masked).await?.expect_status(200)?;
    assert_eq!(again["specVersion"], 2, "{again}");

    // Optimistic concurrency: a write against an old version is refused.
    let interval = json!({"spec": {"metricsConfig": {"intervalSeconds": 10}}});
    let interval_path = format!("{DEVICE}?updateMask=spec.metricsConfig");
    let stale = admin
        .patch_if_match(&interval_path, interval.clone(), 1)
        .await?
        .expect_status(412)?;
    assert_eq!(stale["error"]["details"]["specVersion"], 2, "{stale}");
    let updated = admin
        .patch_if_match(&interval_path, interval, 2)
        .await?
        .expect_status(200)?;
    assert_eq!(updated["specVersion"], 3);

    // The agent applies it and says so.
    let device = wait_status(&admin, DEVICE, "the agent to apply version 3", |d| {
        d["status"]["specVersion"] == 3
    })
    .await?;
    assert_eq!(device["specInSync"], true, "{device}");
    assert_eq!(device["status"]["errors"], json!([]), "{device}");
    let saved: Value = serde_json::from_slice(&std::fs::read(agent.state_file("spec.json"))?)?;
    assert_eq!(saved["version"], 3, "{saved}");
    assert_eq!(saved["logging"]["priority"], 2, "{saved}");
    assert_eq!(saved["metrics"]["intervalSeconds"], 10, "{saved}");

    // An invalid spec is refused with the field named, and nothing stored.
    for (body, field) in [
        (
            json!({"spec": {"loggingConfig": {"priority": 9}}}),
            "spec.loggingConfig.priority",
        ),
        (
            json!({"spec": {"firmware": {"version": "2"}}}),
            "spec.firmware",
        ),
        (
            json!({"spec": {"metricsConfig": {"intervalSeconds": 0}}}),
            "spec.metricsConfig.intervalSeconds",
        ),
        (
            json!({"spec": {"budgets": {"spoolReplay": 0}}}),
            "spec.budgets.spoolReplay",
        ),
        (
            json!({"spec": {"budgets": {"video": 1_000}}}),
            "spec.budgets.video",
        ),
        (
            json!({"spec": {"budgets": {"actions": -1}}}),
            "spec.budgets.actions",
        ),
    ] {
        let refused = admin.patch(DEVICE, body).await?.expect_status(400)?;
        let message = refused["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{refused}");
        assert_eq!(refused["error"]["details"]["fields"][0]["path"], field);
    }
    let bad_mask = admin
        .patch(&format!("{DEVICE}?updateMask=labels"), json!({"spec": {}}))
        .await?
        .expect_status(400)?;
    assert!(
        bad_mask["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("updateMask")
    );
    let device = admin.get(DEVICE).await?.expect_status(200)?;
    assert_eq!(device["specVersion"], 3, "nothing stored: {device}");

    // A spec tetherd accepts but the device cannot apply: the reason shows.
    let updated = admin
        .patch(
            &format!("{DEVICE}?updateMask=spec.loggingConfig.units"),
            json!({"spec": {"loggingConfig": {"units": ["ssh.service", "not a unit!"]}}}),
        )
        .await?
        .expect_status(200)?;
    assert_eq!(updated["specVersion"], 4);
    let device = wait_status(&admin, DEVICE, "the agent to report version 4", |d| {
        d["status"]["specVersion"] == 4
    })
    .await?;
    assert_eq!(device["specInSync"], false, "{device}");
    let errors = &device["status"]["errors"];
    assert_eq!(errors[0]["path"], "spec.loggingConfig.units[1]", "{errors}");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not a systemd unit name"),
        "{errors}"
    );

    // A restarted agent runs with the spec it applied before it connects,
    // and gets the spec that changed while it was away at its birth.
    agent.stop().await?;
    admin.wait_presence("edge-1", "offline").await?;
    let updated = admin
        .patch(
            &format!("{DEVICE}?updateMask=spec.loggingConfig.units"),
            json!({"spec": {"loggingConfig": {"units": ["ssh.service"]}}}),
        )
        .await?
        .expect_status(200)?;
    assert_eq!(updated["specVersion"], 5);
    agent.start()?;
    wait_until(
        "the restarted agent to load its spec",
        Duration::from_secs(30),
        || async {
            Ok(agent
                .log()
                .contains("running with spec version 4")
                .then_some(()))
        },
    )
    .await?;
    let device = wait_status(
        &admin,
        DEVICE,
        "the agent to apply version 5 at its birth",
        |d| d["status"]["specVersion"] == 5,
    )
    .await?;
    assert_eq!(device["specInSync"], true, "{device}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_update_on_one_replica_reaches_an_agent_on_another() -> anyhow::Result<()> {
    let a = Tetherd::start(Database::Postgres).await?;
    let b = Tetherd::start_replica_of(&a, &[]).await?;
    let admin_a = a.admin().await?;
    let admin_b = b.admin().await?;
    // Enrolled against a, so its session is there.
    let _agent = Agent::enroll_online(&a, &admin_a, "edge-1").await?;
    let updated = admin_b
        .patch(DEVICE, json!({"spec": {"budgets": {"logs": 50_000_000}}}))
        .await?
        .expect_status(200)?;
    assert_eq!(updated["specVersion"], 1);
    let device = wait_status(
        &admin_b,
        DEVICE,
        "the agent on a to apply b's update",
        |d| d["specInSync"] == true && d["status"]["specVersion"] == 1,
    )
    .await?;
    assert_eq!(device["spec"]["budgets"]["logs"], 50_000_000);
    Ok(())
}

async fn a_device_reports_only_for_itself_and_only_versions_it_was_sent(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let port = tetherd
        .mqtt_url
        .rsplit_once(':')
        .context("mqtt url has a port")?
        .1
        .to_owned();
    let a = DeviceCredentials::enroll(&admin, "device-a").await?;
    DeviceCredentials::enroll(&admin, "device-b").await?;
    let dir = tempfile::tempdir()?;
    a.write_to(dir.path())?;
    let publish = |topic: String, payload: String| {
        let port = port.clone();
        let dir = dir.path().to_owned();
        async move {
            mosquitto(
                "mosquitto_pub",
                &port,
                Some(&dir),
                "device-a",
                &["-V", "mqttv5", "-q", "1", "-t", &topic, "-m", &payload],
            )
            .await
        }
    };
    let report = json!({"specVersion": 0, "facts": {"hostname": "forged"}}).to_string();

    // For another device: refused by the ACL, nothing stored.
    let output = publish("tether/v1/devices/device-b/reported".into(), report.clone()).await?;
    let refused = !output.status.success()
        || String::from_utf8_lossy(&output.stderr)
            .to_lowercase()
            .contains("not authorized");
    assert!(
        refused,
        "publishing B's status must be refused: {}",
        text(&output)
    );
    let b = admin
        .get("/api/v1/devices/device-b")
        .await?
        .expect_status(200)?;
    assert!(b["status"].is_null(), "{b}");

    // A version tetherd never sent: refused, nothing stored.
    let lie = json!({"specVersion": 5}).to_string();
    publish("tether/v1/devices/device-a/reported".into(), lie).await?;
    let events = wait_until(
        "the lie to be recorded",
        Duration::from_secs(10),
        || async {
            let events = admin
                .get("/api/v1/devices/device-a/events")
                .await?
                .expect_status(200)?;
            let recorded = events["items"].as_array().is_some_and(|items| {
                items.iter().any(|e| {
                    e["event"] == "message-rejected"
                        && e["statusMessage"]
                            .as_str()
                            .is_some_and(|m| m.contains("specVersion 5"))
                })
            });
            Ok(recorded.then_some(events))
        },
    )
    .await?;
    let a_device = admin
        .get("/api/v1/devices/device-a")
        .await?
        .expect_status(200)?;
    assert!(a_device["status"].is_null(), "{a_device} {events}");

    // Its own status at a version it was sent is stored.
    publish("tether/v1/devices/device-a/reported".into(), report).await?;
    let a_device = wait_status(&admin, "/api/v1/devices/device-a", "A's own report", |d| {
        d["status"].is_object()
    })
    .await?;
    assert_eq!(a_device["status"]["facts"]["hostname"], "forged");
    Ok(())
}
