//! `tether approvals` against a real tetherd and real agents (ADR 0025):
//! what an operator decides by before approving.

use super::{Tether, tetherd};

/// A machine's agent: a provisioning key and its hardware's facts.
fn machine(dir: &std::path::Path, name: &str, key: &str, facts: &str) -> tether_testkit::Agent {
    let facts_file = dir.join(format!("{name}.facts.json"));
    std::fs::write(&facts_file, facts).expect("writes the facts");
    let facts_file = facts_file.to_string_lossy().into_owned();
    tether_testkit::Agent::unenrolled(
        name,
        &[
            ("TETHER_PROVISIONING_KEY", key),
            ("TETHER_AGENT_FACTS_FILE", facts_file.as_str()),
            ("TETHER_AGENT_REGISTRATION_MAX_WAIT_SECONDS", "1"),
        ],
    )
    .expect("an agent")
}

/// A second board booted from the same image (the same serial, other
/// MACs) while the first is online: the list shows every MAC, the device
/// it matched and that the device is online, and warns that approving
/// takes that device's credential; `get` says why it waits.
#[tokio::test(flavor = "multi_thread")]
async fn approvals_list_shows_every_mac_and_warns_before_taking_an_online_devices_credential() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    tether
        .run_ok(&[
            "policies",
            "create",
            "lab",
            "--mode",
            "UNATTENDED",
            "--identity-field",
            "status.facts.hardwareSerial",
        ])
        .await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let key = dir
        .path()
        .join("lab.key.json")
        .to_string_lossy()
        .into_owned();
    tether
        .run_ok(&["policies", "keys", "create", "lab", "--key-file", &key])
        .await;

    let mut first = machine(
        dir.path(),
        "board-1",
        &key,
        r#"{"hardwareSerial": "PI-SHARED", "macs": {"eth0": "dc:a6:32:00:00:01", "wlan0": "dc:a6:32:00:00:02"}}"#,
    );
    first.start().expect("starts");
    let device = first.wait_device().await.expect("registers");
    tether_testkit::wait_until(
        "the first board online",
        std::time::Duration::from_secs(30),
        || async {
            let shown = tether
                .run_ok(&["devices", "get", &device, "-o", "json"])
                .await;
            let shown: serde_json::Value = serde_json::from_str(&shown)?;
            Ok((shown["presence"] == "online").then_some(()))
        },
    )
    .await
    .expect("online");

    let mut second = machine(
        dir.path(),
        "board-2",
        &key,
        r#"{"hardwareSerial": "PI-SHARED", "macs": {"eth0": "dc:a6:32:00:00:11", "wlan0": "dc:a6:32:00:00:12"}}"#,
    );
    second.start().expect("starts");
    let listed = tether_testkit::wait_until(
        "the second board's request",
        std::time::Duration::from_secs(30),
        || async {
            let listed = tether.run_ok(&["approvals", "list"]).await;
            Ok(listed.contains("PI-SHARED").then_some(listed))
        },
    )
    .await
    .expect("waits for approval");
    for shown in [
        "eth0=dc:a6:32:00:00:11".to_owned(),
        "wlan0=dc:a6:32:00:00:12".to_owned(),
        format!("{device} (online)"),
        "WARNING: approving ".to_owned(),
        format!(
            "gives device/{device}'s credential to the hardware that asked; {device} is online now"
        ),
    ] {
        assert!(listed.contains(&shown), "{shown:?} in:\n{listed}");
    }

    let json = tether.run_ok(&["approvals", "list", "-o", "json"]).await;
    let approvals: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let id = approvals[0]["id"].as_str().expect("an id").to_owned();
    assert_eq!(approvals[0]["deviceOnline"], true, "{approvals}");
    let got = tether.run_ok(&["approvals", "get", &id]).await;
    for shown in [
        "Reason:    2 key pairs claimed this identity within 10 minutes",
        "WARNING: approving",
        "eth0=dc:a6:32:00:00:11",
    ] {
        assert!(got.contains(shown), "{shown:?} in:\n{got}");
    }
    second.stop().await.expect("stops");
    first.stop().await.expect("stops");
}
