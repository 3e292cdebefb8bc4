//! `tether templates` and `tether deployments` against a real tetherd and
//! a simulated device that reports its deployments ready (ADR 0029).

use std::sync::Arc;
use std::time::Duration;

use tether_proto::desired::{DeploymentState, DeploymentStatus};
use tether_proto::spec::ReportedStatus;

use super::{Responder, SimAgent, Tether, enroll_many, tetherd};

#[tokio::test(flavor = "multi_thread")]
async fn a_chart_deployment_is_made_rolled_out_shown_and_taken_off_with_the_cli() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let credentials = enroll_many(
        &admin,
        ["gw-1".to_owned()],
        &serde_json::json!({"site": "berlin"}),
        1,
    )
    .await
    .expect("enrolled");
    let ready = Arc::new(
        |_: &tether_proto::DeviceId, message: &tether_proto::spec::SpecMessage| ReportedStatus {
            spec_version: message.version,
            deployments: message
                .spec
                .get("deployments")
                .and_then(|d| d.as_object())
                .into_iter()
                .flatten()
                .map(|(name, d)| {
                    (
                        name.clone(),
                        DeploymentStatus {
                            version: d["version"].as_str().unwrap_or_default().to_owned(),
                            state: DeploymentState::Ready,
                            reason: None,
                        },
                    )
                })
                .collect(),
            ..ReportedStatus::default()
        },
    );
    let agent = SimAgent::connect_reporting(&credentials[0], Responder::Silent, ready)
        .await
        .expect("connected");

    let files = tempfile::tempdir().expect("temp dir");
    let values = files.path().join("values.yaml");
    std::fs::write(&values, "nodeId: \"{{uuid}}\"\nimage:\n  tag: \"1.0\"\n").expect("written");
    let created = tether
        .run_ok(&[
            "templates",
            "create",
            "edge-agent",
            "--chart",
            "edge-agent",
            "--source",
            "https://charts.example.com/",
            "--values",
            values.to_str().expect("utf-8"),
        ])
        .await;
    assert!(created.contains("template/edge-agent created"), "{created}");
    let over = files.path().join("over.yaml");
    std::fs::write(&over, "image:\n  tag: \"2.0\"\n").expect("written");
    let created = tether
        .run_ok(&[
            "deployments",
            "create",
            "line-1",
            "-l",
            "site=berlin",
            "--chart",
            "edge-agent",
            "--hostname",
            "node-a",
            "--values",
            over.to_str().expect("utf-8"),
        ])
        .await;
    assert!(created.contains("deployment/line-1 created"), "{created}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let json = tether
            .run_ok(&["deployments", "status", "line-1", "-o", "json"])
            .await;
        let status: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        if status["phase"] == "complete" {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never complete: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["ready"], 1, "{status}");
    let table = tether.run_ok(&["deployments", "status", "line-1"]).await;
    assert!(table.contains("gw-1") && table.contains("ready"), "{table}");
    let spec: serde_json::Value = serde_json::from_str(
        &tether
            .run_ok(&["devices", "get", "gw-1", "-o", "json"])
            .await,
    )
    .expect("JSON");
    assert_eq!(
        spec["spec"]["deployments"]["line-1"]["charts"][0]["values"],
        serde_json::json!({"nodeId": "gw-1", "image": {"tag": "2.0"}}),
        "{spec}"
    );

    // A bad revision names its field; the template in use stays.
    let bad = files.path().join("bad.yaml");
    std::fs::write(&bad, "target:\n  selector: site=berlin\ncharts: [nope]\n").expect("written");
    let refused = tether
        .run(&[
            "deployments",
            "update",
            "line-1",
            "-f",
            bad.to_str().expect("utf-8"),
        ])
        .await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("spec.charts[0]"),
        "{}",
        refused.stderr
    );
    let refused = tether.run(&["templates", "delete", "edge-agent"]).await;
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("line-1"), "{}", refused.stderr);

    let deleted = tether.run_ok(&["deployments", "delete", "line-1"]).await;
    assert!(deleted.contains("taken off its devices"), "{deleted}");
    agent.disconnect().await;
}
