//! Desired state through tetherd's API (ADR 0029): chart templates and
//! deployments rendered into devices' specs, staged rollout with rollback
//! over simulated devices that report like tether-agent, and refusals.
//! The agents' side (charts on a cluster, supervised processes) is in the
//! agent's tests.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tether_proto::DeviceId;
use tether_proto::desired::{DeploymentState, DeploymentStatus};
use tether_proto::spec::{ReportedStatus, SpecMessage};
use tether_testkit::api::ApiClient;
use tether_testkit::sim_agent::{self, Responder, SimAgent, SpecReporter};
use tether_testkit::tetherd::{Database, Tetherd};

/// Reports every deployment of the spec ready, except those `fails` picks.
pub(crate) fn reporter(fails: fn(&DeviceId, &str) -> bool) -> SpecReporter {
    Arc::new(
        move |device: &DeviceId, message: &SpecMessage| ReportedStatus {
            spec_version: message.version,
            deployments: message
                .spec
                .get(tether_proto::desired::SECTION)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(name, deployment)| {
                    let version = deployment["version"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let failed = fails(device, &version);
                    (
                        name.clone(),
                        DeploymentStatus {
                            state: if failed {
                                DeploymentState::Failed
                            } else {
                                DeploymentState::Ready
                            },
                            reason: failed.then(|| "process web exited with status 1".to_owned()),
                            version,
                        },
                    )
                })
                .collect(),
            ..ReportedStatus::default()
        },
    )
}

async fn wait_phase(
    admin: &ApiClient,
    name: &str,
    revision: u64,
    phase: &str,
) -> anyhow::Result<Value> {
    tether_testkit::wait_until(
        &format!("deployment {name} revision {revision} to be {phase}"),
        Duration::from_secs(60),
        || async move {
            let status = admin
                .get(&format!("/api/v1/deployments/{name}/status"))
                .await?
                .expect_status(200)?;
            Ok((status["revision"] == revision && status["phase"] == phase).then_some(status))
        },
    )
    .await
}

async fn device_spec(admin: &ApiClient, device: &str) -> anyhow::Result<Value> {
    Ok(admin
        .get(&format!("/api/v1/devices/{device}"))
        .await?
        .expect_status(200)?["spec"]
        .clone())
}

/// The acceptance's rollout: 100 devices, a revision that fails on a
/// fifth of them, batches of 10, at most 10 % failures.
#[tokio::test]
async fn a_revision_failing_on_a_fifth_of_100_devices_pauses_and_the_failed_go_back()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let names: Vec<String> = (0..100).map(|i| format!("d{i:03}")).collect();
    let credentials =
        sim_agent::enroll_many(&admin, names.clone(), &json!({"fleet": "sim"}), 16).await?;
    // Revision 2 fails on every device whose number ends in 0 or 5.
    let reporter = reporter(|device, version| {
        version.starts_with("2-")
            && (device.as_str().ends_with('0') || device.as_str().ends_with('5'))
    });
    let mut agents = Vec::new();
    for c in &credentials {
        agents.push(SimAgent::connect_reporting(c, Responder::Silent, reporter.clone()).await?);
    }
    let spec = |version: &str| {
        json!({"target": {"selector": "fleet=sim"},
               "processes": {"web": {"execCmd": "/usr/bin/web", "execArgs": [version]}},
               "rollout": {"batchSize": 10, "maxFailurePercent": 10}})
    };
    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "web", "spec": spec("v1")}),
        )
        .await?
        .expect_status(201)?;
    let done = wait_phase(&admin, "web", 1, "complete").await?;
    assert_eq!(done["ready"], 100, "{done}");
    let batches: std::collections::BTreeSet<u64> = done["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["batch"].as_u64())
        .collect();
    assert_eq!(batches.len(), 10, "ten batches of ten: {batches:?}");

    let updated = admin
        .put_if_match("/api/v1/deployments/web", spec("v2"), 1)
        .await?
        .expect_status(200)?;
    assert_eq!(updated["revision"], 2);
    let paused = wait_phase(&admin, "web", 2, "paused").await?;
    assert_eq!(paused["updated"], 8, "{paused}");
    assert_eq!(paused["rolledBack"], 2, "{paused}");
    assert!(
        paused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("2 of the 10")),
        "{paused}"
    );
    let devices = paused["devices"].as_array().cloned().unwrap_or_default();
    let on = |revision: u64| devices.iter().filter(|d| d["revision"] == revision).count();
    assert_eq!(on(2), 8, "the rest of the first batch stays on 2");
    assert_eq!(on(1), 92, "the failed two went back; ninety never left");
    for failed in ["d000", "d005"] {
        let shown = devices
            .iter()
            .find(|d| d["device"] == failed)
            .expect("listed");
        assert_eq!(shown["rolledBack"], true, "{shown}");
        assert_eq!(shown["revision"], 1, "{shown}");
        assert!(
            shown["reason"]
                .as_str()
                .is_some_and(|r| r.contains("exited with status 1")),
            "{shown}"
        );
        // The device's spec has revision 1 again.
        let spec = device_spec(&admin, failed).await?;
        let version = spec["deployments"]["web"]["version"]
            .as_str()
            .unwrap_or_default();
        assert!(version.starts_with("1-"), "{version}");
        assert_eq!(
            spec["deployments"]["web"]["processes"]["web"]["execArgs"][0],
            "v1"
        );
    }
    // Paused: nothing moves. A fixed revision goes on from there.
    admin
        .put_json("/api/v1/deployments/web", spec("v3"))
        .await?
        .expect_status(200)?;
    let done = wait_phase(&admin, "web", 3, "complete").await?;
    assert_eq!(done["ready"], 100, "{done}");
    assert_eq!(done["rolledBack"], 0, "{done}");
    for agent in agents {
        agent.disconnect().await;
    }
    Ok(())
}

/// A chart template becomes a Helm release in each device's spec, with the
/// deployment's values over the template's and the placeholders filled;
/// deleting the deployment takes it off.
#[tokio::test]
async fn a_deployment_renders_its_charts_into_each_devices_spec_and_deleting_takes_them_off()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let credentials =
        sim_agent::enroll_many(&admin, ["gw-1".to_owned()], &json!({"site": "berlin"}), 1).await?;
    let agent =
        SimAgent::connect_reporting(&credentials[0], Responder::Silent, reporter(|_, _| false))
            .await?;
    admin
        .post(
            "/api/v1/chart-templates",
            json!({"name": "edge-agent", "spec": {"chart": "edge-agent", "source": "https://charts.example.com/",
                   "version": "1.4.0", "values": {"nodeId": "{{uuid}}", "name": "{{name}}", "host": "{{hostname}}",
                   "image": {"tag": "1.0", "pull": "always"}}}}),
        )
        .await?
        .expect_status(201)?;
    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "line-1", "spec": {"target": {"device": "gw-1"}, "hostname": "node-a",
                   "charts": ["edge-agent"], "values": {"image": {"tag": "2.0"}}}}),
        )
        .await?
        .expect_status(201)?;
    wait_phase(&admin, "line-1", 1, "complete").await?;
    let spec = device_spec(&admin, "gw-1").await?;
    let release = &spec["deployments"]["line-1"]["charts"][0];
    assert_eq!(release["release"], "line-1-edge-agent", "{spec}");
    assert_eq!(release["chart"], "edge-agent");
    assert_eq!(release["hostname"], "node-a");
    assert_eq!(
        release["values"],
        json!({"nodeId": "gw-1", "name": "line-1", "host": "node-a", "image": {"tag": "2.0", "pull": "always"}})
    );

    // The template is in use: it stays.
    let refused = admin
        .delete("/api/v1/chart-templates/edge-agent")
        .await?
        .expect_status(409)?;
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("line-1")),
        "{refused}"
    );
    // Operators cannot write the section by hand, and replacing the spec
    // keeps it.
    let refused = admin
        .patch("/api/v1/devices/gw-1", json!({"spec": {"deployments": {}}}))
        .await?
        .expect_status(400)?;
    assert_eq!(
        refused["error"]["details"]["fields"][0]["path"],
        "spec.deployments"
    );
    admin
        .patch(
            "/api/v1/devices/gw-1",
            json!({"spec": {"metricsConfig": {"intervalSeconds": 30}}}),
        )
        .await?
        .expect_status(200)?;
    let spec = device_spec(&admin, "gw-1").await?;
    assert!(spec["deployments"]["line-1"].is_object(), "kept: {spec}");

    admin
        .delete("/api/v1/deployments/line-1")
        .await?
        .expect_status(202)?;
    tether_testkit::wait_until("the deployment to be gone", Duration::from_secs(30), || {
        let admin = &admin;
        async move {
            let reply = admin.get("/api/v1/deployments/line-1").await?;
            Ok((reply.status.as_u16() == 404).then_some(()))
        }
    })
    .await?;
    let spec = device_spec(&admin, "gw-1").await?;
    assert_eq!(spec["deployments"], json!({}), "{spec}");
    assert_eq!(spec["metricsConfig"]["intervalSeconds"], 30);
    admin
        .delete("/api/v1/chart-templates/edge-agent")
        .await?
        .expect_status(204)?;
    agent.disconnect().await;
    Ok(())
}

/// Bad deployments are refused naming the field, and what runs stays.
#[tokio::test]
async fn bad_templates_and_deployments_are_refused_by_field_and_change_nothing()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    admin
        .post(
            "/api/v1/devices",
            json!({"name": "pi-1", "labels": {"site": "x"}}),
        )
        .await?
        .expect_status(201)?;
    let refused = |body: Value| {
        let admin = &admin;
        async move {
            let reply = admin
                .post("/api/v1/deployments", body)
                .await?
                .expect_status(400)?;
            anyhow::Ok(reply["error"]["details"]["fields"][0].clone())
        }
    };
    let field =
        refused(json!({"name": "web", "spec": {"target": {"device": "pi-1"}, "charts": ["nope"]}}))
            .await?;
    assert_eq!(field["path"], "spec.charts[0]", "{field}");
    assert!(
        field["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown chart template")),
        "{field}"
    );
    let field = refused(json!({"name": "web", "spec": {"target": {}}})).await?;
    assert_eq!(field["path"], "spec.target", "{field}");
    assert!(
        field["message"]
            .as_str()
            .is_some_and(|m| m.contains("targets nothing")),
        "{field}"
    );
    let field =
        refused(json!({"name": "web", "spec": {"target": {"selector": "site=nowhere"}}})).await?;
    assert!(
        field["message"]
            .as_str()
            .is_some_and(|m| m.contains("picks no device")),
        "{field}"
    );
    let field = refused(json!({"name": "Web!", "spec": {"target": {"device": "pi-1"}}})).await?;
    assert_eq!(field["path"], "name", "{field}");
    let field = refused(json!({"name": "web", "spec": {"target": {"device": "pi-1"}, "rollout": {"batchPercent": 0}}})).await?;
    assert_eq!(field["path"], "spec.rollout.batchPercent", "{field}");
    let refused = admin
        .post(
            "/api/v1/chart-templates",
            json!({"name": "t", "spec": {"chart": "c", "source": "ftp://x"}}),
        )
        .await?
        .expect_status(400)?;
    assert_eq!(
        refused["error"]["details"]["fields"][0]["path"], "spec.source",
        "{refused}"
    );

    // A good one, then a bad revision: refused, the first stays.
    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "web", "spec": {"target": {"device": "pi-1"}}}),
        )
        .await?
        .expect_status(201)?;
    admin
        .put_json(
            "/api/v1/deployments/web",
            json!({"target": {"device": "pi-1"}, "charts": ["nope"]}),
        )
        .await?
        .expect_status(400)?;
    let stale = admin
        .put_if_match(
            "/api/v1/deployments/web",
            json!({"target": {"device": "pi-1"}}),
            7,
        )
        .await?
        .expect_status(409)?;
    assert!(
        stale["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revision 1")),
        "{stale}"
    );
    let web = admin
        .get("/api/v1/deployments/web")
        .await?
        .expect_status(200)?;
    assert_eq!(web["revision"], 1);
    let resumed = admin
        .post("/api/v1/deployments/web/resume", json!({}))
        .await?
        .expect_status(409)?;
    assert!(
        resumed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not paused")),
        "{resumed}"
    );
    Ok(())
}
