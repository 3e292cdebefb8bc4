//! A device written in Python with paho-mqtt from the device contract alone
//! (`docs/device-contract.md`, `docs/schemas/`) enrolls with its own CSR,
//! goes online, answers an action, and is refused on another device's
//! topics, against a real tetherd.
//!
//! Python comes from the venv `scripts/test` makes under
//! `target/python-device` (paho-mqtt, cryptography); `TETHER_TEST_PYTHON`
//! names another interpreter with both.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tether_testkit::{ApiClient, Database, Tetherd, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn python() -> PathBuf {
    std::env::var_os("TETHER_TEST_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/python-device/bin/python"),
        PathBuf::from,
    )
}

/// The Python device's progress lines, read with a deadline.
struct Steps {
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<Value>,
}

impl Steps {
    /// The next line whose `step` is `step`; earlier lines are kept in `seen`.
    async fn next(&mut self, step: &str) -> anyhow::Result<Value> {
        self.next_any(&[step]).await
    }

    /// The next line whose `step` is one of `wanted`.
    async fn next_any(&mut self, wanted: &[&str]) -> anyhow::Result<Value> {
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = self.lines.next_line().await? {
                let value: Value = serde_json::from_str(&line)
                    .with_context(|| format!("the device printed {line:?}"))?;
                self.seen.push(value.clone());
                if wanted.iter().any(|step| value["step"] == *step) {
                    return Ok(value);
                }
            }
            bail!(
                "the device exited before {wanted:?}; it said {:?}",
                self.seen
            )
        })
        .await;
        found.with_context(|| {
            format!(
                "no {wanted:?} from the device within 30 s; it said {:?}",
                self.seen
            )
        })?
    }
}

async fn wait_for_state(admin: &ApiClient, id: &str) -> anyhow::Result<Value> {
    admin
        .get(&format!("/api/v1/actions/{id}?waitSeconds=30"))
        .await?
        .expect_status(200)
}

// Passes on this branch merged with the ingest branch (checked 2026-12-01):
// drop the `ignore` once both are in main.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paho_device_built_from_the_contract_enrolls_answers_and_is_confined() {
    let tetherd = Tetherd::start(Database::Sqlite)
        .await
        .expect("tetherd starts");
    let admin = tetherd.admin().await.expect("admin logs in");
    let created = admin
        .post("/api/v1/devices", json!({"name": "py-device"}))
        .await
        .and_then(|r| r.expect_status(201))
        .expect("device created");
    admin
        .post("/api/v1/devices", json!({"name": "other-device"}))
        .await
        .and_then(|r| r.expect_status(201))
        .expect("other device created");
    let enrollment = &created["enrollment"];
    let state_dir = tempfile::tempdir().expect("temp dir");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/python_device.py");
    let mut device: Child = Command::new(python())
        .arg(&script)
        .args(["--server", &tetherd.api_url])
        .args(["--token", enrollment["token"].as_str().expect("token")])
        .args(["--ca-sha256", enrollment["caSha256"].as_str().expect("caSha256")])
        .arg("--state-dir")
        .arg(state_dir.path())
        .args(["--other-device", "other-device"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} (run scripts/test, which makes the venv with paho-mqtt and cryptography): {e}",
                python().display()
            )
        });
    let mut steps = Steps {
        lines: BufReader::new(device.stdout.take().expect("stdout")).lines(),
        seen: Vec::new(),
    };

    let enrolled = steps.next("enrolled").await.expect("the device enrolls");
    assert_eq!(enrolled["device"], "py-device");
    steps.next("online").await.expect("the device goes online");
    wait_until(
        "the device online with its birth",
        Duration::from_secs(30),
        || {
            let admin = admin.clone();
            async move {
                let device = admin
                    .get("/api/v1/devices/py-device")
                    .await?
                    .expect_status(200)?;
                Ok((device["presence"] == "online"
                    && device["agentVersion"] == "python-device 1.0")
                    .then_some(()))
            }
        },
    )
    .await
    .expect("tetherd shows the device online with its version");

    // Another device's topics: SUBACK and PUBACK 0x87 (not authorized).
    let mut refusals = Vec::new();
    while refusals.len() < 2 {
        let step = steps
            .next_any(&["subscribe-answer", "publish-answer"])
            .await
            .expect("tetherd answers the foreign subscribe and publish");
        if step["what"] == "foreign-actions" || step["what"] == "foreign-events" {
            refusals.push(step);
        }
    }
    for refusal in &refusals {
        assert_eq!(refusal["reasonCode"], 0x87, "{refusal}");
    }

    let accepted = admin
        .post(
            "/api/v1/devices/py-device/actions",
            json!({"action": "get-node-ip"}),
        )
        .await
        .and_then(|r| r.expect_status(202))
        .expect("action accepted");
    let id = accepted["correlationId"].as_str().expect("correlationId");
    let done = wait_for_state(&admin, id).await.expect("action ends");
    assert_eq!(
        done["state"], "succeeded",
        "{done}; device said {:?}",
        steps.seen
    );
    assert!(done["response"]["addresses"].is_array(), "{done}");

    // A spec: the section it knows applies, the one it does not is reported.
    for (spec, in_sync) in [
        (json!({"metricsConfig": {"intervalSeconds": 5}}), true),
        (json!({"budgets": {"logs": 1000}}), false),
    ] {
        let updated = admin
            .patch("/api/v1/devices/py-device", json!({"spec": spec}))
            .await
            .and_then(|r| r.expect_status(200))
            .expect("spec updated");
        let version = updated["specVersion"].clone();
        let device = wait_until(
            "the device to report the spec",
            Duration::from_secs(30),
            || {
                let admin = admin.clone();
                let version = version.clone();
                async move {
                    let device = admin
                        .get("/api/v1/devices/py-device")
                        .await?
                        .expect_status(200)?;
                    Ok((device["status"]["specVersion"] == version).then_some(device))
                }
            },
        )
        .await
        .expect("the device reports the spec version");
        assert_eq!(device["specInSync"], in_sync, "{device}");
        if !in_sync {
            assert_eq!(
                device["status"]["errors"][0]["path"], "spec.budgets",
                "{device}"
            );
        }
    }

    drop(device.stdin.take()); // the device says goodbye and exits
    steps
        .next("stopped")
        .await
        .expect("the device stops cleanly");
    let status = tokio::time::timeout(Duration::from_secs(10), device.wait())
        .await
        .expect("the device exits")
        .expect("exit status");
    assert!(status.success(), "{status}");
    admin
        .wait_presence("py-device", "offline")
        .await
        .expect("offline after its goodbye");
}
