//! Action sets (ADR 0017): a device accepts the default actions and those
//! enabled in its spec; any other request is refused with 403 and never
//! reaches the device, and a job is refused if one of its devices would
//! refuse it.

use std::time::Duration;

use serde_json::{Value, json};
use tether_testkit::sim_agent::{DeviceCredentials, Responder, SimAgent};
use tether_testkit::{ApiClient, Database, Tetherd};

use crate::support::{id, on_both_databases, request, store_of};

on_both_databases!(
    an_action_not_enabled_is_refused_and_never_sent,
    enabling_and_disabling_changes_what_the_catalogue_shows,
    a_job_is_refused_while_one_of_its_devices_refuses_the_action,
    disabling_an_action_ends_its_requests_waiting_for_the_device,
);

fn restart() -> Value {
    json!({"action": "manage-deployment", "input": {"command": "restart",
        "parameters": {"deployment": "web", "namespace": "default"}}})
}

async fn catalogue_names(admin: &ApiClient, device: &str) -> anyhow::Result<Vec<String>> {
    let entries = admin
        .get(&format!("/api/v1/catalogue?device={device}"))
        .await?
        .expect_status(200)?;
    Ok(entries
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["name"].as_str().map(str::to_owned))
        .collect())
}

async fn an_action_not_enabled_is_refused_and_never_sent(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let credentials = DeviceCredentials::enroll(&admin, "edge-1").await?;
    let mut device = SimAgent::connect(&credentials, Responder::Silent).await?;
    admin.wait_presence("edge-1", "online").await?;

    let refused = admin
        .post("/api/v1/devices/edge-1/actions", restart())
        .await?;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "action_not_enabled");
    let message = refused.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("tether devices actions enable edge-1 manage-deployment"),
        "{message}"
    );
    // Nothing stored, nothing sent.
    let store = store_of(&tetherd).await?;
    let edge = tether_proto::DeviceId::new("edge-1")?;
    assert!(
        store
            .open_actions(std::slice::from_ref(&edge))
            .await?
            .is_empty()
    );
    assert!(
        device
            .next_action(Duration::from_millis(500))
            .await
            .is_none()
    );

    let enabled = admin
        .put("/api/v1/devices/edge-1/action-set/manage-deployment")
        .await?
        .expect_status(200)?;
    assert_eq!(enabled["specVersion"], 1, "{enabled}");
    let accepted = request(&admin, "edge-1", restart()).await?;
    let first = device.next_action(Duration::from_secs(20)).await;
    assert_eq!(first.map(|r| r.correlation_id), Some(id(&accepted)?));

    admin
        .delete("/api/v1/devices/edge-1/action-set/manage-deployment")
        .await?
        .expect_status(200)?;
    let again = admin
        .post("/api/v1/devices/edge-1/actions", restart())
        .await?;
    assert_eq!(again.status, 403, "{}", again.body);
    assert!(
        device
            .next_action(Duration::from_millis(500))
            .await
            .is_none()
    );
    let listed = admin
        .get("/api/v1/devices/edge-1/actions")
        .await?
        .expect_status(200)?;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));

    // A device that does not exist is a 404, not a 403.
    let missing = admin
        .post("/api/v1/devices/edge-9/actions", restart())
        .await?;
    assert_eq!(missing.status, 404, "{}", missing.body);
    device.disconnect().await;
    Ok(())
}

async fn enabling_and_disabling_changes_what_the_catalogue_shows(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    admin
        .post("/api/v1/devices", json!({"name": "edge-1"}))
        .await?
        .expect_status(201)?;

    let defaults = catalogue_names(&admin, "edge-1").await?;
    for default in [
        "send-kubectl",
        "send-kubernetes-api",
        "run-stats",
        "stop-stats",
    ] {
        assert!(defaults.contains(&default.to_owned()), "{default}");
    }
    for opt_in in [
        "restart-k3s",
        "restore-command",
        "manage-deployment",
        "copy-resource",
    ] {
        assert!(!defaults.contains(&opt_in.to_owned()), "{opt_in}");
    }
    let all = admin.get("/api/v1/catalogue").await?.expect_status(200)?;
    assert!(all.as_array().map(Vec::len) > Some(defaults.len()));

    let set = admin
        .put("/api/v1/devices/edge-1/action-set/restart-k3s")
        .await?
        .expect_status(200)?;
    assert!(
        set["accepted"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("restart-k3s")))
    );
    admin
        .delete("/api/v1/devices/edge-1/action-set/send-kubectl")
        .await?
        .expect_status(200)?;
    let names = catalogue_names(&admin, "edge-1").await?;
    assert!(names.contains(&"restart-k3s".to_owned()));
    assert!(!names.contains(&"send-kubectl".to_owned()));
    // The set lives in the spec, where templates and deployments set it.
    let device = admin
        .get("/api/v1/devices/edge-1")
        .await?
        .expect_status(200)?;
    assert_eq!(
        device["spec"]["actions"],
        json!({"enabled": ["restart-k3s"], "disabled": ["send-kubectl"]})
    );
    assert_eq!(device["specVersion"], 2);
    // Enabling what is enabled changes nothing, not even the version.
    let same = admin
        .put("/api/v1/devices/edge-1/action-set/restart-k3s")
        .await?
        .expect_status(200)?;
    assert_eq!(same["specVersion"], 2);
    // Back to the defaults: the section goes.
    admin
        .delete("/api/v1/devices/edge-1/action-set/restart-k3s")
        .await?
        .expect_status(200)?;
    admin
        .put("/api/v1/devices/edge-1/action-set/send-kubectl")
        .await?
        .expect_status(200)?;
    let device = admin
        .get("/api/v1/devices/edge-1")
        .await?
        .expect_status(200)?;
    assert!(device["spec"].get("actions").is_none(), "{device}");

    let unknown = admin
        .put("/api/v1/devices/edge-1/action-set/format-disk")
        .await?;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert_eq!(unknown.body["error"]["code"], "unknown_action");
    assert!(
        unknown.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"format-disk\"")),
        "{}",
        unknown.body
    );
    for missing in [
        admin
            .put("/api/v1/devices/edge-9/action-set/restart-k3s")
            .await?,
        admin.get("/api/v1/catalogue?device=edge-9").await?,
    ] {
        assert_eq!(missing.status, 404, "{}", missing.body);
    }
    // A spec update naming an unknown action is refused like any bad spec.
    let bad = admin
        .patch(
            "/api/v1/devices/edge-1",
            json!({"spec": {"actions": {"enabled": ["format-disk"]}}}),
        )
        .await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    Ok(())
}

async fn a_job_is_refused_while_one_of_its_devices_refuses_the_action(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    for name in ["edge-1", "edge-2"] {
        admin
            .post(
                "/api/v1/devices",
                json!({"name": name, "labels": {"site": "berlin"}}),
            )
            .await?
            .expect_status(201)?;
    }
    admin
        .put("/api/v1/devices/edge-1/action-set/manage-deployment")
        .await?
        .expect_status(200)?;
    let mut job = restart();
    job["labelSelector"] = json!("site=berlin");
    let refused = admin.post("/api/v1/jobs", job.clone()).await?;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let message = refused.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("1 of the 2 matching devices (edge-2)"),
        "{message}"
    );
    let jobs = admin.get("/api/v1/jobs").await?.expect_status(200)?;
    assert_eq!(jobs["items"].as_array().map(Vec::len), Some(0), "{jobs}");

    admin
        .put("/api/v1/devices/edge-2/action-set/manage-deployment")
        .await?
        .expect_status(200)?;
    let created = admin.post("/api/v1/jobs", job).await?.expect_status(201)?;
    assert_eq!(created["devices"], 2, "{created}");
    // A default action needs nothing enabled.
    let stats = admin
        .post(
            "/api/v1/jobs",
            json!({"labelSelector": "site=berlin", "action": "run-stats", "input": {"interval": 5}}),
        )
        .await?;
    assert_eq!(stats.status, 201, "{}", stats.body);
    Ok(())
}

/// A request accepted while the device was offline must not run once the
/// action is disabled: it ends as failed and never reaches the device.
async fn disabling_an_action_ends_its_requests_waiting_for_the_device(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let credentials = DeviceCredentials::enroll(&admin, "edge-1").await?;
    admin
        .put("/api/v1/devices/edge-1/action-set/manage-deployment")
        .await?
        .expect_status(200)?;
    let waiting = request(&admin, "edge-1", restart()).await?;
    let waiting = id(&waiting)?;
    let other = request(
        &admin,
        "edge-1",
        json!({"action": "get-node-ip", "input": {}}),
    )
    .await?;

    admin
        .delete("/api/v1/devices/edge-1/action-set/manage-deployment")
        .await?
        .expect_status(200)?;
    let ended = admin
        .get(&format!("/api/v1/actions/{waiting}"))
        .await?
        .expect_status(200)?;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(
        ended["statusMessage"]
            .as_str()
            .is_some_and(|m| m.contains("manage-deployment was disabled")),
        "{ended}"
    );

    // The device, back online, gets the other action only.
    let mut device = SimAgent::connect(&credentials, Responder::Silent).await?;
    let first = device.next_action(Duration::from_secs(20)).await;
    assert_eq!(first.map(|r| r.correlation_id), Some(id(&other)?));
    assert!(
        device
            .next_action(Duration::from_millis(500))
            .await
            .is_none()
    );
    device.disconnect().await;
    Ok(())
}
