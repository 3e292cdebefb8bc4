//! External-broker mode (issue 12): tetherd behind a real mosquitto 2
//! configured with the files in `docs/operations/mosquitto/`, devices
//! confined by mosquitto's ACL, actions and presence through it.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::mosquitto::{Mosquitto, start_with_mosquitto};
use tether_testkit::sim_agent::{DeviceCredentials, Responder, SimAgent};
use tether_testkit::{Agent, ApiClient, Database, wait_until};

use crate::support::{
    WriteLock, id, mosquitto, on_both_databases, request, run, text, wait_terminal,
};

on_both_databases!(
    actions_round_trip_through_mosquitto_and_wait_for_offline_devices,
    a_device_is_confined_to_its_own_topics_by_mosquitto,
);

/// Publishes `payload` on the device's own `kind` topic with its
/// certificate in `dir`, at QoS 1, MQTT 5; returns mosquitto_pub's output.
async fn publish_as(
    broker: &Mosquitto,
    dir: &std::path::Path,
    device: &str,
    kind: &str,
    payload: &str,
) -> anyhow::Result<std::process::Output> {
    mosquitto(
        "mosquitto_pub",
        &broker.port_arg(),
        Some(dir),
        device,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            &format!("tether/v1/devices/{device}/{kind}"),
            "-m",
            payload,
        ],
    )
    .await
}

async fn presence(admin: &ApiClient, device: &str) -> anyhow::Result<String> {
    let record = admin
        .get(&format!("/api/v1/devices/{device}"))
        .await?
        .expect_status(200)?;
    Ok(record["presence"].as_str().unwrap_or_default().to_owned())
}

async fn events(admin: &ApiClient, device: &str) -> anyhow::Result<Vec<Value>> {
    Ok(admin
        .get(&format!("/api/v1/devices/{device}/events"))
        .await?
        .expect_status(200)?["items"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

async fn actions_round_trip_through_mosquitto_and_wait_for_offline_devices(
    database: Database,
) -> anyhow::Result<()> {
    let (tetherd, _broker) = start_with_mosquitto(database).await?;
    let admin = tetherd.admin().await?;
    let mut agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;

    let ips = run(&admin, "edge-1", "get-node-ip", json!({})).await?;
    assert_eq!(ips["state"], "succeeded", "{ips}");
    assert!(
        ips["response"]["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["ip"] == "127.0.0.1")),
        "{ips}"
    );
    let logger = run(
        &admin,
        "edge-1",
        "configure-logger",
        json!({"level": "warning", "pretty": true, "color": false}),
    )
    .await?;
    assert_eq!(logger["state"], "succeeded", "{logger}");
    let record = admin
        .get("/api/v1/devices/edge-1")
        .await?
        .expect_status(200)?;
    assert!(
        record["agentVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "the birth reached the registry: {record}"
    );
    // The spec reaches the agent through the broker, and its report comes back.
    admin
        .patch(
            "/api/v1/devices/edge-1",
            json!({"spec": {"metricsConfig": {"intervalSeconds": 15}}}),
        )
        .await?
        .expect_status(200)?;
    tether_testkit::wait_until(
        "the agent to report spec version 1 through mosquitto",
        std::time::Duration::from_secs(30),
        || async {
            let device = admin
                .get("/api/v1/devices/edge-1")
                .await?
                .expect_status(200)?;
            Ok(
                (device["specInSync"] == true && device["status"]["specVersion"] == 1)
                    .then_some(()),
            )
        },
    )
    .await?;

    // Offline (its death on `status`), the device's actions wait...
    agent.stop().await?;
    agent.wait_presence(&admin, "offline").await?;
    let first = request(&admin, "edge-1", json!({"action": "get-authorization-id"})).await?;
    let second = request(&admin, "edge-1", json!({"action": "get-node-ip"})).await?;
    assert_eq!(
        admin
            .get(&format!("/api/v1/actions/{}", id(&first)?))
            .await?
            .expect_status(200)?["state"],
        "pending"
    );
    // ...and arrive, in order, when it is back.
    agent.start()?;
    let first = wait_terminal(&admin, &id(&first)?).await?;
    let second = wait_terminal(&admin, &id(&second)?).await?;
    assert_eq!(first["state"], "succeeded", "{first}");
    assert_eq!(second["state"], "succeeded", "{second}");
    assert!(first["completedAt"].as_str() <= second["completedAt"].as_str());
    Ok(())
}

async fn a_device_is_confined_to_its_own_topics_by_mosquitto(
    database: Database,
) -> anyhow::Result<()> {
    let (tetherd, broker) = start_with_mosquitto(database).await?;
    let admin = tetherd.admin().await?;
    let port = broker.port_arg();
    let a = DeviceCredentials::enroll(&admin, "device-a").await?;
    let b = DeviceCredentials::enroll(&admin, "device-b").await?;
    assert_eq!(
        a.mqtt_url,
        format!("mqtts://127.0.0.1:{}", broker.device_port),
        "devices are sent to the broker's device listener"
    );
    let dir = tempfile::tempdir()?;
    a.write_to(dir.path())?;
    let mut device_b = SimAgent::connect(&b, Responder::Silent).await?;
    wait_until("device-b online", Duration::from_secs(20), || async {
        Ok((presence(&admin, "device-b").await? == "online").then_some(()))
    })
    .await?;

    for version in ["mqttv5", "mqttv311"] {
        // A subscribes to B's actions, every device's, and everything,
        // while tetherd sends B an action: only B receives it.
        let mut watchers = Vec::new();
        for filter in [
            "tether/v1/devices/device-b/actions",
            "tether/v1/devices/+/actions",
            "#",
        ] {
            let dir = dir.path().to_owned();
            let port = port.clone();
            watchers.push(tokio::spawn(async move {
                let output = mosquitto(
                    "mosquitto_sub",
                    &port,
                    Some(&dir),
                    "device-a",
                    &["-V", version, "-t", filter, "-C", "1", "-W", "4"],
                )
                .await;
                (filter, output)
            }));
        }
        // mosquitto grants A's SUBSCRIBE and filters each message by the
        // ACL; give the three subscriptions a moment to be in place.
        wait_until("A's subscriptions", Duration::from_secs(10), || async {
            Ok(broker
                .log()
                .matches("Received SUBSCRIBE from device-a")
                .count()
                .ge(&3)
                .then_some(()))
        })
        .await?;
        let for_b = request(&admin, "device-b", json!({"action": "get-node-ip"})).await?;
        let delivered = device_b
            .next_action(Duration::from_secs(20))
            .await
            .with_context(|| {
                format!(
                    "{version}: B receives its own action; tetherd log:\n{}",
                    tetherd.log()
                )
            })?;
        assert_eq!(delivered.correlation_id, id(&for_b)?);
        for watcher in watchers {
            let (filter, output) = watcher.await?;
            let output = output?;
            assert!(
                output.stdout.is_empty(),
                "{version}: nothing of B may reach A through {filter}: {}",
                text(&output)
            );
        }

        // A answering for B, by topic or by claiming B's client id, is
        // refused and changes nothing; B's session stays up.
        let forged = json!({"correlationId": id(&for_b)?, "event": "get-node-ip", "statusCode": 200, "statusMessage": "forged", "response": {}}).to_string();
        for client_id in ["device-a", "device-b"] {
            let output = mosquitto(
                "mosquitto_pub",
                &port,
                Some(dir.path()),
                client_id,
                &[
                    "-V",
                    version,
                    "-q",
                    "1",
                    "-t",
                    "tether/v1/devices/device-b/events",
                    "-m",
                    &forged,
                ],
            )
            .await?;
            if version == "mqttv5" {
                assert!(
                    String::from_utf8_lossy(&output.stderr)
                        .to_lowercase()
                        .contains("not authorized")
                        || !output.status.success(),
                    "{version} publish as B must be refused: {}",
                    text(&output)
                );
            }
        }
        // mosquitto acknowledges a refused 3.1.1 publish and drops it; what
        // counts is that it never reaches tetherd. A's own topic, published
        // after the forgeries, shows they have been handled.
        let for_a = request(&admin, "device-a", json!({"action": "get-node-ip"})).await?;
        let own = json!({"correlationId": id(&for_a)?, "event": "get-node-ip", "statusCode": 200, "statusMessage": "OK", "response": {}}).to_string();
        let output = publish_as(&broker, dir.path(), "device-a", "events", &own).await?;
        assert!(output.status.success(), "{}", text(&output));
        assert_eq!(
            wait_terminal(&admin, &id(&for_a)?).await?["state"],
            "succeeded"
        );
        let b_action = admin
            .get(&format!("/api/v1/actions/{}", id(&for_b)?))
            .await?
            .expect_status(200)?;
        assert_eq!(b_action["state"], "delivered", "{b_action}");
        let answers: Vec<Value> = events(&admin, "device-b")
            .await?
            .into_iter()
            .filter(|e| {
                !e["event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("device-"))
            })
            .collect();
        assert_eq!(
            answers,
            Vec::<Value>::new(),
            "only B's presence is recorded"
        );
        assert!(
            device_b.is_connected(),
            "A claiming B's client id must not take B's session over"
        );
    }

    // A retained message is not kept for anyone.
    let output = mosquitto(
        "mosquitto_pub",
        &port,
        Some(dir.path()),
        "device-a",
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-r",
            "-t",
            "tether/v1/devices/device-a/logs",
            "-m",
            "kept?",
        ],
    )
    .await?;
    let retained = mosquitto(
        "mosquitto_sub",
        &port,
        Some(dir.path()),
        "device-a",
        &[
            "-V",
            "mqttv5",
            "-t",
            "tether/v1/devices/device-a/logs",
            "-C",
            "1",
            "-W",
            "2",
        ],
    )
    .await?;
    assert!(
        retained.stdout.is_empty(),
        "retained messages are off: {} / {}",
        text(&output),
        text(&retained)
    );
    device_b.disconnect().await;
    Ok(())
}

/// Presence follows births and deaths on `status`, and a will of an earlier
/// connection delivered after the newer birth does not take the device
/// offline. Malformed payloads become `message-rejected` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_will_does_not_take_a_reconnected_device_offline() -> anyhow::Result<()> {
    let (tetherd, broker) = start_with_mosquitto(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let a = DeviceCredentials::enroll(&admin, "device-a").await?;
    let dir = tempfile::tempdir()?;
    a.write_to(dir.path())?;
    let status = |state: &str, seq: u64| {
        json!({"state": state, "agentVersion": "1.0.0", "capabilities": [], "bootId": "boot-1", "seq": seq})
            .to_string()
    };
    let publish = |kind: &'static str, payload: String| {
        let dir = dir.path().to_owned();
        let broker = &broker;
        async move {
            let output = publish_as(broker, &dir, "device-a", kind, &payload).await?;
            anyhow::ensure!(output.status.success(), "{}", text(&output));
            anyhow::Ok(())
        }
    };
    let rejections = |admin: ApiClient| async move {
        Ok::<_, anyhow::Error>(
            events(&admin, "device-a")
                .await?
                .into_iter()
                .filter(|e| e["event"] == "message-rejected")
                .count(),
        )
    };

    // Connection 2's birth, then connection 1's will, late.
    publish("status", status("online", 2)).await?;
    wait_until("device-a online", Duration::from_secs(20), || async {
        Ok((presence(&admin, "device-a").await? == "online").then_some(()))
    })
    .await?;
    publish("status", status("offline", 1)).await?;
    // A malformed answer after it: handled after the will (one device's
    // messages are handled in order), and recorded as rejected.
    publish("events", "not json".into()).await?;
    wait_until("the rejection", Duration::from_secs(20), || async {
        Ok((rejections(admin.clone()).await? >= 1).then_some(()))
    })
    .await?;
    assert_eq!(presence(&admin, "device-a").await?, "online");
    let rejected = events(&admin, "device-a").await?;
    assert!(
        rejected.iter().any(|e| e["event"] == "message-rejected"
            && e["statusMessage"]
                .as_str()
                .is_some_and(|m| m.contains("malformed events payload"))),
        "{rejected:?}"
    );

    // More malformed input of each kind: rejected, and tetherd carries on.
    publish("status", "{\"state\":\"sideways\"}".into()).await?;
    publish("metrics", "[]".into()).await?;
    wait_until("three rejections", Duration::from_secs(20), || async {
        Ok((rejections(admin.clone()).await? >= 3).then_some(()))
    })
    .await?;
    assert_eq!(presence(&admin, "device-a").await?, "online");

    // Connection 2's own death does take it offline.
    publish("status", status("offline", 2)).await?;
    wait_until("device-a offline", Duration::from_secs(20), || async {
        Ok((presence(&admin, "device-a").await? == "offline").then_some(()))
    })
    .await?;
    Ok(())
}

/// mosquitto checks only that a certificate was signed by the CA; tetherd
/// lists revoked and replaced ones in the CRL it writes, and mosquitto
/// refuses them once it has reloaded it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_deleted_devices_cannot_connect_after_the_crl_reload() -> anyhow::Result<()> {
    let (tetherd, broker) = start_with_mosquitto(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let mut dirs = Vec::new();
    for device in ["device-a", "device-b"] {
        let credentials = DeviceCredentials::enroll(&admin, device).await?;
        let dir = tempfile::tempdir()?;
        credentials.write_to(dir.path())?;
        let output = publish_as(&broker, dir.path(), device, "logs", "hello").await?;
        assert!(
            output.status.success(),
            "{device} connects: {}",
            text(&output)
        );
        dirs.push((device, credentials, dir));
    }
    // A connected session of device-a, ended by tetherd on revocation.
    let session = SimAgent::connect(&dirs[0].1, Responder::Silent).await?;
    wait_until("device-a online", Duration::from_secs(20), || async {
        Ok((presence(&admin, "device-a").await? == "online").then_some(()))
    })
    .await?;

    let crl_before = std::fs::read(broker.crl_path())?;
    admin
        .post("/api/v1/devices/device-a/revoke", json!({}))
        .await?
        .expect_status(204)?;
    admin.delete("/api/v1/devices/device-b").await?;
    wait_until(
        "the revoked session to end",
        Duration::from_secs(20),
        || async { Ok((!session.is_connected()).then_some(())) },
    )
    .await?;
    assert_eq!(presence(&admin, "device-a").await?, "offline");
    wait_until("the CRL to list both", Duration::from_secs(20), || async {
        let crl = std::fs::read(broker.crl_path())?;
        Ok((crl != crl_before && listed(&crl)? == 2).then_some(()))
    })
    .await?;
    broker.reload()?;
    for (device, _, dir) in &dirs {
        wait_until(
            &format!("{device}'s certificate refused"),
            Duration::from_secs(20),
            || async {
                let output = publish_as(&broker, dir.path(), device, "logs", "hello").await?;
                Ok((!output.status.success()).then_some(()))
            },
        )
        .await
        .with_context(|| broker.log())?;
    }
    // A device enrolled afresh is not caught by the list.
    let c = DeviceCredentials::enroll(&admin, "device-c").await?;
    let dir = tempfile::tempdir()?;
    c.write_to(dir.path())?;
    let output = publish_as(&broker, dir.path(), "device-c", "logs", "hello").await?;
    assert!(output.status.success(), "{}", text(&output));
    Ok(())
}

/// How many certificates a PEM CRL lists, read with openssl.
fn listed(crl: &[u8]) -> anyhow::Result<usize> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("crl.pem");
    std::fs::write(&path, crl)?;
    let output = std::process::Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(&path)
        .output()
        .context("running openssl")?;
    anyhow::ensure!(output.status.success(), "openssl crl: {output:?}");
    Ok(String::from_utf8_lossy(&output.stdout)
        .matches("Serial Number:")
        .count())
}

/// The broker takes the certificate CN as the username, and `tetherd` is
/// the controller's: no device may be named so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_can_take_the_controllers_name() -> anyhow::Result<()> {
    let tetherd = tether_testkit::Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let refused = admin
        .post("/api/v1/devices", json!({"name": "tetherd"}))
        .await?;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.to_string().contains("tetherd"),
        "the error names the reserved name: {}",
        refused.body
    );
    Ok(())
}

/// Devices stay connected to the broker while tetherd restarts: an answer
/// sent meanwhile waits in tetherd's broker session and is stored when it
/// is back, and the device still gets actions without reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_sent_while_tetherd_is_down_are_stored_when_it_is_back() -> anyhow::Result<()> {
    let (mut tetherd, _broker) = start_with_mosquitto(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let credentials = DeviceCredentials::enroll(&admin, "sim-1").await?;
    let mut device = SimAgent::connect(&credentials, Responder::Silent).await?;
    let accepted = request(&admin, "sim-1", json!({"action": "get-node-ip"})).await?;
    let delivered = device
        .next_action(Duration::from_secs(20))
        .await
        .context("the action reaches the device")?;
    assert_eq!(delivered.correlation_id, id(&accepted)?);

    tetherd.kill();
    device
        .answer(&tether_proto::ActionEvent {
            correlation_id: delivered.correlation_id.clone(),
            event: "get-node-ip".into(),
            status_code: 200,
            status_message: "answered while tetherd was down".into(),
            response: json!({}),
        })
        .await?;
    tetherd.start_again().await?;
    let admin = tetherd.admin().await?;
    let done = wait_terminal(&admin, &id(&accepted)?).await?;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["statusMessage"], "answered while tetherd was down");

    assert_eq!(presence(&admin, "sim-1").await?, "online");
    let next = request(&admin, "sim-1", json!({"action": "get-node-ip"})).await?;
    // Delivery is at least once: tetherd sends open actions again when it
    // reconnects to the broker, so the first one may come again first.
    loop {
        let delivered = device
            .next_action(Duration::from_secs(20))
            .await
            .context("a device that stayed connected still gets actions")?;
        if delivered.correlation_id == id(&next)? {
            break;
        }
        assert_eq!(
            delivered.correlation_id,
            id(&accepted)?,
            "only a copy of the first"
        );
    }
    assert!(device.is_connected());
    Ok(())
}

/// The broker acknowledged the device's answer at once; tetherd, unable to
/// store it, does not acknowledge it to the broker, and the broker's
/// redelivery stores it once the store is back: the device answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_store_could_not_take_is_redelivered_by_the_broker() -> anyhow::Result<()> {
    let (tetherd, _broker) = start_with_mosquitto(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let credentials = DeviceCredentials::enroll(&admin, "sim-1").await?;
    let mut device = SimAgent::connect(&credentials, Responder::Silent).await?;
    let accepted = request(&admin, "sim-1", json!({"action": "get-node-ip"})).await?;
    let delivered = device
        .next_action(Duration::from_secs(20))
        .await
        .context("the action reaches the device")?;

    let lock = WriteLock::take(&tetherd.data_dir().join("tether.db")).await?;
    device
        .answer(&tether_proto::ActionEvent {
            correlation_id: delivered.correlation_id.clone(),
            event: "get-node-ip".into(),
            status_code: 200,
            status_message: "answered once".into(),
            response: json!({}),
        })
        .await?;
    wait_until(
        "tetherd to hold back its acknowledgement",
        Duration::from_secs(60),
        || async {
            Ok(tetherd
                .log()
                .contains("not acknowledging a device's message to the broker")
                .then_some(()))
        },
    )
    .await?;
    lock.release().await?;
    let done = wait_terminal(&admin, &id(&accepted)?)
        .await
        .with_context(|| tetherd.log())?;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["statusMessage"], "answered once");
    Ok(())
}

/// Two replicas on one PostgreSQL and one mosquitto: each device message is
/// handled by exactly one of them (the shared subscription), both share
/// the work, and an answer reaches the store whichever replica gets it.
/// (An action requested on the replica that did not handle the device's
/// birth waits for cross-replica delivery, issue 12 item 3: not here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_devices_messages_through_mosquitto() -> anyhow::Result<()> {
    let (first, broker) = start_with_mosquitto(Database::Postgres).await?;
    let second = broker.start_replica(&first).await?;
    let replicas = [first.admin().await?, second.admin().await?];
    let accepted_on = |admin: &ApiClient, name: String| {
        let admin = admin.clone();
        async move {
            let counters = admin
                .get(&format!("/api/v1/devices/{name}"))
                .await?
                .expect_status(200)?["ingest"]
                .clone();
            anyhow::ensure!(counters["duplicatesDropped"] == 0, "{name}: {counters}");
            anyhow::Ok(counters["accepted"].as_u64().unwrap_or_default())
        }
    };
    let mut devices = Vec::new();
    for n in 0..6 {
        let name = format!("sim-{n}");
        let credentials = DeviceCredentials::enroll(&replicas[0], &name).await?;
        devices.push((
            name,
            SimAgent::connect(&credentials, Responder::Echo).await?,
        ));
    }
    let mut handled_by = [0, 0];
    for (name, _) in &devices {
        // Its birth, handled by one replica, which then holds it as ready.
        let owner = wait_until(
            &format!("{name}'s birth"),
            Duration::from_secs(20),
            || async {
                let counts = [
                    accepted_on(&replicas[0], name.clone()).await?,
                    accepted_on(&replicas[1], name.clone()).await?,
                ];
                Ok(match counts {
                    [1, 0] => Some(0),
                    [0, 1] => Some(1),
                    [0, 0] => None,
                    other => anyhow::bail!("{name}'s birth handled {other:?} times"),
                })
            },
        )
        .await?;
        let done = run(&replicas[owner], name, "get-node-ip", json!({})).await?;
        assert_eq!(done["state"], "succeeded", "{name}: {done}");
        // The answer is counted once its write returns, which may be just
        // after the action's end reached the API.
        let counts = wait_until(
            &format!("{name}'s answer counted"),
            Duration::from_secs(20),
            || async {
                let counts = [
                    accepted_on(&replicas[0], name.clone()).await?,
                    accepted_on(&replicas[1], name.clone()).await?,
                ];
                Ok((counts.iter().sum::<u64>() >= 2).then_some(counts))
            },
        )
        .await?;
        assert_eq!(
            counts.iter().sum::<u64>(),
            2,
            "{name}: birth and answer, each once: {counts:?}"
        );
        handled_by[0] += counts[0];
        handled_by[1] += counts[1];
    }
    assert!(
        handled_by.iter().all(|count| *count > 0),
        "both replicas handle device messages: {handled_by:?}"
    );
    for (_, device) in devices {
        device.disconnect().await;
    }
    drop(second);
    Ok(())
}

/// A device that keeps exceeding its rate has its session ended, as in
/// embedded mode, though the refusals before cannot reach it as PUBACK codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_rate_for_long_has_its_session_ended() -> anyhow::Result<()> {
    let (tetherd, _broker) = tether_testkit::mosquitto::start_with_mosquitto_and(
        Database::Sqlite,
        "[ingest]\nmessages_per_second = 1\nmessage_burst = 5\nstrikes_before_disconnect = 5\n",
    )
    .await?;
    let admin = tetherd.admin().await?;
    let credentials = DeviceCredentials::enroll(&admin, "noisy").await?;
    let device = SimAgent::connect(&credentials, Responder::Silent).await?;
    for n in 0..40 {
        device
            .answer(&tether_proto::ActionEvent {
                correlation_id: format!("made-up-{n}"),
                event: "get-node-ip".into(),
                status_code: 200,
                status_message: "noise".into(),
                response: json!({}),
            })
            .await?;
    }
    wait_until(
        "the noisy session to end",
        Duration::from_secs(20),
        || async { Ok((!device.is_connected()).then_some(())) },
    )
    .await
    .with_context(|| tetherd.log())?;
    let counters = admin
        .get("/api/v1/devices/noisy")
        .await?
        .expect_status(200)?["ingest"]
        .clone();
    // Five strikes in a row: four refused as slow, the fifth ends the session.
    assert!(counters["rateLimited"].as_u64() >= Some(4), "{counters}");
    assert!(
        counters["disconnectedForRate"].as_u64() >= Some(1),
        "{counters}"
    );
    assert!(
        events(&admin, "noisy")
            .await?
            .iter()
            .any(|e| e["event"] == "message-rejected" && e["statusCode"] == 429),
        "the operator sees why"
    );
    Ok(())
}

/// A device's publish as large as the broker's packet limit is one the
/// broker cannot forward to tetherd as it is (the subscription identifier
/// makes it longer than tetherd's own limit): it must not stall tetherd's
/// session, so the messages behind it arrive. And an action a device plants
/// as a retained message on its own action topic never reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_at_the_broker_packet_limit_does_not_stall_the_others() -> anyhow::Result<()> {
    let (tetherd, broker) = start_with_mosquitto(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let a = DeviceCredentials::enroll(&admin, "device-a").await?;
    let dir = tempfile::tempdir()?;
    a.write_to(dir.path())?;
    let topic = "tether/v1/devices/device-a/events";
    // Fixed header (5), topic (2 + its length), packet id (2), properties
    // length (1): the largest payloads mosquitto takes, and a few below.
    let largest = 4 * 1024 * 1024 - 5 - (2 + topic.len()) - 2 - 1;
    for payload_len in (largest - 4..=largest).rev() {
        let file = dir.path().join("big");
        std::fs::write(&file, vec![b'x'; payload_len])?;
        let output = mosquitto(
            "mosquitto_pub",
            &broker.port_arg(),
            Some(dir.path()),
            "device-a",
            &[
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                topic,
                "-f",
                &file.to_string_lossy(),
            ],
        )
        .await?;
        tracing::debug!(payload_len, output = %text(&output), "published");
    }
    let accepted = request(&admin, "device-a", json!({"action": "get-node-ip"})).await?;
    let answer = json!({"correlationId": id(&accepted)?, "event": "get-node-ip", "statusCode": 200, "statusMessage": "after the big ones", "response": {}}).to_string();
    let output = publish_as(&broker, dir.path(), "device-a", "events", &answer).await?;
    assert!(output.status.success(), "{}", text(&output));
    let done = wait_terminal(&admin, &id(&accepted)?)
        .await
        .with_context(|| format!("tetherd:\n{}\nbroker:\n{}", tetherd.log(), broker.log()))?;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["statusMessage"], "after the big ones");

    let planted = json!({"correlationId": "planted", "action": "reboot", "input": {}}).to_string();
    let port = broker.port_arg();
    let actions_topic = "tether/v1/devices/device-a/actions";
    mosquitto(
        "mosquitto_pub",
        &port,
        Some(dir.path()),
        "device-a",
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-r",
            "-t",
            actions_topic,
            "-m",
            &planted,
        ],
    )
    .await?;
    let read = mosquitto(
        "mosquitto_sub",
        &port,
        Some(dir.path()),
        "device-a",
        &["-V", "mqttv5", "-t", actions_topic, "-C", "1", "-W", "2"],
    )
    .await?;
    assert!(
        read.stdout.is_empty(),
        "a planted action must not be kept for the device: {}",
        text(&read)
    );
    Ok(())
}
