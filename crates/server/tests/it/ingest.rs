//! What devices send, under a failing store and from hostile or third-party
//! devices: real tetherd, real tether-agent, and mosquitto clients holding
//! real device credentials.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::sim_agent::DeviceCredentials;
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

use crate::support::{
    WriteLock, id, mosquitto, on_both_databases, request, run, text, wait_terminal,
};

on_both_databases!(an_answer_is_not_lost_while_the_store_is_unavailable);

fn mqtt_port(tetherd: &Tetherd) -> anyhow::Result<String> {
    Ok(tetherd
        .mqtt_url
        .rsplit_once(':')
        .context("mqtt url has a port")?
        .1
        .to_owned())
}

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

async fn action_state(admin: &ApiClient, correlation_id: &str) -> anyhow::Result<String> {
    let action = admin
        .get(&format!("/api/v1/actions/{correlation_id}"))
        .await?
        .expect_status(200)?;
    Ok(action["state"].as_str().context("state")?.to_owned())
}

async fn device(admin: &ApiClient, name: &str) -> anyhow::Result<Value> {
    admin
        .get(&format!("/api/v1/devices/{name}"))
        .await?
        .expect_status(200)
}

async fn events(admin: &ApiClient, name: &str) -> anyhow::Result<Vec<Value>> {
    let events = admin
        .get(&format!("/api/v1/devices/{name}/events?limit=1000"))
        .await?
        .expect_status(200)?;
    Ok(events["items"].as_array().context("events array")?.clone())
}

/// The agent's answer arrives while the store cannot take it: tetherd does
/// not acknowledge it, so the action stays open, and once the store is back
/// the redelivered action's answer completes it.
async fn an_answer_is_not_lost_while_the_store_is_unavailable(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    let pid = agent.pid().context("the agent runs")?;
    // Its birth stored first: a birth still being written when the store
    // goes would hold the answer behind it (a device's messages are
    // written in order), and the answer would never be tried.
    wait_until(
        "edge-1's birth to be stored",
        Duration::from_secs(15),
        || {
            let admin = admin.clone();
            async move {
                Ok(device(&admin, "edge-1").await?["agentVersion"]
                    .is_string()
                    .then_some(()))
            }
        },
    )
    .await?;
    let bystander = DeviceCredentials::enroll(&admin, "bystander").await?;
    let bystander_dir = tempfile::tempdir()?;
    bystander.write_to(bystander_dir.path())?;

    // The agent holds its answer until the store is unavailable.
    signal(pid, "STOP")?;
    let accepted = request(&admin, "edge-1", json!({"action": "get-node-ip"})).await?;
    let correlation_id = id(&accepted)?;
    wait_until(
        "the action to be delivered",
        Duration::from_secs(15),
        || {
            let admin = admin.clone();
            let correlation_id = correlation_id.clone();
            async move {
                Ok((action_state(&admin, &correlation_id).await? == "delivered").then_some(()))
            }
        },
    )
    .await?;

    let lock = match database {
        Database::Sqlite => Some(WriteLock::take(&tetherd.data_dir().join("tether.db")).await?),
        Database::Postgres => {
            tetherd.postgres().context("a PostgreSQL cluster")?.stop()?;
            None
        }
    };
    signal(pid, "CONT")?;
    if database == Database::Sqlite {
        // While edge-1's answer waits for the store (up to the 5 s busy
        // timeout), another device connects and is answered at once (its
        // line is no telemetry batch, refused without a write): devices do
        // not queue behind each other's writes.
        let output = mosquitto(
            "mosquitto_pub",
            &mqtt_port(&tetherd)?,
            Some(bystander_dir.path()),
            "bystander",
            &[
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                "tether/v1/devices/bystander/logs",
                "-m",
                "hi",
            ],
        )
        .await?;
        assert!(
            output.status.success()
                && String::from_utf8_lossy(&output.stderr).contains("Payload format invalid"),
            "{}",
            text(&output)
        );
        assert!(
            !tetherd.log().contains("not acknowledged"),
            "the bystander was served before edge-1's write gave up"
        );
    }
    // Longer than SQLite's busy timeout (5 s): the write fails, it does not wait.
    wait_until(
        "tetherd to refuse the answer for want of a store",
        Duration::from_secs(60),
        || {
            let log = tetherd.log();
            async move { Ok(log.contains("not acknowledged").then_some(())) }
        },
    )
    .await
    .with_context(|| format!("tetherd log:\n{}", tetherd.log()))?;
    match lock {
        Some(lock) => lock.release().await?,
        None => tetherd
            .postgres()
            .context("a PostgreSQL cluster")?
            .start_again()?,
    }

    let done = wait_terminal(&admin, &correlation_id)
        .await
        .with_context(|| {
            format!(
                "agent log:\n{}\ntetherd log:\n{}",
                agent.log(),
                tetherd.log()
            )
        })?;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        done["response"]["ip"].is_string() || done["response"].is_object(),
        "the agent's answer is stored: {done}"
    );
    let counters = &device(&admin, "edge-1").await?["ingest"];
    assert!(
        counters["notAcknowledgedStoreUnavailable"].as_u64() >= Some(1),
        "{counters}"
    );
    Ok(())
}

/// A device built from the contract alone: it subscribes to its actions and
/// never sends a birth, or one with only `state`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_device_is_online_from_connect_and_gets_actions_once_subscribed()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let port = mqtt_port(&tetherd)?;
    let credentials = DeviceCredentials::enroll(&admin, "paho-like").await?;
    let dir = tempfile::tempdir()?;
    credentials.write_to(dir.path())?;

    let accepted = request(&admin, "paho-like", json!({"action": "get-node-ip"})).await?;
    let correlation_id = id(&accepted)?;
    let actions = "tether/v1/devices/paho-like/actions";
    let sub = {
        let mut command = tokio::process::Command::new("mosquitto_sub");
        command
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-i",
                "paho-like",
                "-V",
                "mqttv5",
            ])
            .arg("--cafile")
            .arg(dir.path().join("ca.pem"))
            .arg("--cert")
            .arg(dir.path().join("cert.pem"))
            .arg("--key")
            .arg(dir.path().join("key.pem"))
            // Held open a few seconds after the action, so its session is
            // seen online.
            .args(["-q", "1", "-t", actions, "-C", "2", "-W", "6"])
            .kill_on_drop(true);
        command.output()
    };
    let sub = tokio::spawn(sub);
    admin.wait_presence("paho-like", "online").await?;
    let output = sub.await??;
    let first = String::from_utf8_lossy(&output.stdout);
    let first = first.lines().next().unwrap_or_default();
    let delivered: Value = serde_json::from_str(first)
        .with_context(|| format!("the action as JSON: {}", text(&output)))?;
    assert_eq!(delivered["correlationId"], correlation_id.as_str());

    // The connection that answers is a new session; the minimal birth is accepted.
    let answer = json!({"correlationId": correlation_id, "event": "get-node-ip",
        "statusCode": 200, "statusMessage": "OK", "response": {"ip": "192.0.2.1"}});
    for (topic, payload) in [
        (
            "tether/v1/devices/paho-like/status",
            json!({"state": "online"}),
        ),
        ("tether/v1/devices/paho-like/events", answer),
    ] {
        let output = mosquitto(
            "mosquitto_pub",
            &port,
            Some(dir.path()),
            "paho-like",
            &[
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                &payload.to_string(),
            ],
        )
        .await?;
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "{topic}: {}",
            text(&output)
        );
    }
    let done = wait_terminal(&admin, &correlation_id).await?;
    assert_eq!(done["state"], "succeeded", "{done}");
    let shown = device(&admin, "paho-like").await?;
    assert!(shown["agentVersion"].is_null(), "{shown}");
    assert_eq!(shown["capabilities"], json!([]), "{shown}");
    // Three sessions (the subscriber and two publishers), each online from
    // its CONNECT without any birth, and offline once.
    let presence = wait_until("six presence events", Duration::from_secs(15), || {
        let admin = admin.clone();
        async move {
            let presence: Vec<String> = events(&admin, "paho-like")
                .await?
                .iter()
                .filter_map(|e| e["event"].as_str())
                .filter(|e| e.starts_with("device-"))
                .map(str::to_owned)
                .collect();
            Ok((presence.len() >= 6).then_some(presence))
        }
    })
    .await?;
    // Newest first.
    assert_eq!(
        presence,
        ["device-offline", "device-online"].repeat(3),
        "{presence:?}"
    );
    Ok(())
}

/// SQLite's file and its write-ahead log: what the store takes on disk.
/// The database's size with its write-ahead log moved in first: when
/// SQLite checkpoints on its own (every 1000 pages), a page can be counted
/// twice, in the log and in the database, and the growth would depend on
/// where the log stood when the test began.
async fn store_bytes(data_dir: &Path) -> anyhow::Result<u64> {
    use sqlx::Connection as _;
    let url = format!("sqlite://{}", data_dir.join("tether.db").display());
    let mut connection = sqlx::SqliteConnection::connect(&url).await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut connection)
        .await?;
    connection.close().await?;
    Ok(["tether.db", "tether.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data_dir.join(f)).ok())
        .map(|m| m.len())
        .sum())
}

/// Oversized answers and births, answers repeated for a finished action and
/// samples dated in 2999 from an enrolled device: refused or dropped, each
/// refusal visible to the device and the operator, the store bounded, and
/// another device's actions unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_device_cannot_bloat_the_store_or_hurt_others() -> anyhow::Result<()> {
    const MIB: usize = 1024 * 1024;
    // Byte budget above what this test sends (about 30 MiB), so every
    // message meets the checks under test, not the rate limit.
    let config = tempfile::tempdir()?;
    let config_file = config.path().join("tetherd.toml");
    std::fs::write(&config_file, "[ingest]\nbyte_burst = 67108864\n")?;
    let tetherd = Tetherd::start_with(
        Database::Sqlite,
        &["--config", config_file.to_str().context("utf-8 path")?],
    )
    .await?;
    let admin = tetherd.admin().await?;
    let port = mqtt_port(&tetherd)?;
    let _good = Agent::enroll_online(&tetherd, &admin, "good").await?;
    let credentials = DeviceCredentials::enroll(&admin, "hostile").await?;
    let dir = tempfile::tempdir()?;
    credentials.write_to(dir.path())?;
    let publish = |topic: &'static str, file: std::path::PathBuf, repeat: usize| {
        let port = port.clone();
        let dir = dir.path().to_owned();
        async move {
            let repeat = repeat.to_string();
            let file = file.to_str().context("utf-8 path")?.to_owned();
            let args = [
                "-V", "mqttv5", "-q", "1", "-t", topic, "-f", &file, "--repeat", &repeat,
            ];
            mosquitto("mosquitto_pub", &port, Some(&dir), "hostile", &args).await
        }
    };
    let write = |name: &str, value: &Value| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, value.to_string())?;
        Ok(path)
    };

    // One open action, answered once with 1 MiB: that one answer is stored.
    let accepted = request(&admin, "hostile", json!({"action": "get-node-ip"})).await?;
    let correlation_id = id(&accepted)?;
    let answer = |size: usize| {
        json!({"correlationId": correlation_id, "event": "get-node-ip", "statusCode": 200,
            "statusMessage": "OK", "response": {"blob": "x".repeat(size)}})
    };
    let before = store_bytes(&tetherd.data_dir()).await?;
    let output = publish(
        "tether/v1/devices/hostile/events",
        write("one.json", &answer(MIB))?,
        1,
    )
    .await?;
    assert!(output.stderr.is_empty(), "{}", text(&output));
    assert_eq!(
        wait_terminal(&admin, &correlation_id).await?["state"],
        "succeeded"
    );

    // The same answer again and again: acknowledged, dropped, counted.
    let output = publish(
        "tether/v1/devices/hostile/events",
        dir.path().join("one.json"),
        10,
    )
    .await?;
    assert!(
        output.stderr.is_empty(),
        "repeats are acknowledged: {}",
        text(&output)
    );
    // 3 MiB answers: refused (0x99).
    let output = publish(
        "tether/v1/devices/hostile/events",
        write("big.json", &answer(3 * MIB))?,
        5,
    )
    .await?;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Payload format invalid"),
        "{}",
        text(&output)
    );
    // A 3 MiB field in a birth: refused.
    let birth = json!({"state": "online", "agentVersion": "v".repeat(3 * MIB)});
    let output = publish(
        "tether/v1/devices/hostile/status",
        write("birth.json", &birth)?,
        1,
    )
    .await?;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Payload format invalid"),
        "{}",
        text(&output)
    );
    // Samples from the year 2999: refused, never stored.
    let sample = json!({"sampledAt": "2999-01-01T00:00:00Z", "cpuPercent": 1.0,
        "memoryUsedBytes": 1, "memoryTotalBytes": 2, "diskUsedBytes": 3, "diskTotalBytes": 4,
        "networkRxBytes": 5, "networkTxBytes": 6});
    let output = publish(
        "tether/v1/devices/hostile/metrics",
        write("future.json", &sample)?,
        20,
    )
    .await?;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Payload format invalid"),
        "{}",
        text(&output)
    );

    // Another device's actions keep working, and its birth shows.
    let other = run(&admin, "good", "get-node-ip", json!({})).await?;
    assert_eq!(other["state"], "succeeded", "{other}");
    let good = device(&admin, "good").await?;
    assert!(good["agentVersion"].is_string(), "{good}");
    assert!(
        good["capabilities"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("get-node-ip"))),
        "{good}"
    );

    // The store holds the one accepted answer (as event and as the action's
    // response): at most 2 MiB plus 1 MiB of pages, where every message
    // stored would have been more than 60 MiB.
    let grown = store_bytes(&tetherd.data_dir())
        .await?
        .saturating_sub(before);
    assert!(grown < 3 * MIB as u64, "the store grew by {grown} bytes");
    let hostile = device(&admin, "hostile").await?;
    assert!(hostile["agentVersion"].is_null(), "{hostile}");
    let metrics = admin
        .get("/api/v1/devices/hostile/metrics")
        .await?
        .expect_status(200)?;
    assert_eq!(
        metrics["items"].as_array().map(Vec::len),
        Some(0),
        "{metrics}"
    );
    let counters = &hostile["ingest"];
    assert_eq!(counters["duplicatesDropped"], 10, "{counters}");
    assert_eq!(counters["rejectedTooLarge"], 6, "{counters}");
    assert_eq!(counters["rejectedClock"], 20, "{counters}");

    let answers = events(&admin, "hostile")
        .await?
        .into_iter()
        .filter(|e| e["correlationId"] == correlation_id.as_str())
        .count();
    assert_eq!(answers, 1, "the answer is stored once, its repeats never");

    // The operator sees why, and a hostile device cannot fill the events
    // table with rejections either: a burst is recorded, the rest counted.
    let rejected: Vec<Value> = events(&admin, "hostile")
        .await?
        .into_iter()
        .filter(|e| e["event"] == "message-rejected")
        .collect();
    assert_eq!(rejected.len(), 10, "{rejected:?}");
    assert!(rejected.iter().any(|e| {
        e["statusCode"] == 413
            && e["statusMessage"]
                .as_str()
                .is_some_and(|m| m.contains("tether/v1/devices/hostile/events"))
    }));
    assert!(rejected.iter().any(|e| {
        e["statusCode"] == 400
            && e["statusMessage"]
                .as_str()
                .is_some_and(|m| m.contains("sampledAt"))
    }));
    assert_eq!(counters["rejectionEventsSuppressed"], 16, "{counters}");
    Ok(())
}

/// A device over its rate gets 0x97, then loses its session; the operator
/// sees it, and other devices do not notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_rate_is_slowed_then_disconnected() -> anyhow::Result<()> {
    let config = tempfile::tempdir()?;
    let config_file = config.path().join("tetherd.toml");
    std::fs::write(
        &config_file,
        "[ingest]\nmessages_per_second = 1\nmessage_burst = 5\nstrikes_before_disconnect = 5\n",
    )?;
    let tetherd = Tetherd::start_with(
        Database::Sqlite,
        &["--config", config_file.to_str().context("utf-8 path")?],
    )
    .await?;
    let admin = tetherd.admin().await?;
    let port = mqtt_port(&tetherd)?;
    let _good = Agent::enroll_online(&tetherd, &admin, "good").await?;
    let credentials = DeviceCredentials::enroll(&admin, "noisy").await?;
    let dir = tempfile::tempdir()?;
    credentials.write_to(dir.path())?;

    let output = mosquitto(
        "mosquitto_pub",
        &port,
        Some(dir.path()),
        "noisy",
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "tether/v1/devices/noisy/logs",
            "-m",
            "hello",
            "--repeat",
            "40",
        ],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Quota exceeded"), "{}", text(&output));
    let counters = &device(&admin, "noisy").await?["ingest"];
    assert!(
        counters["disconnectedForRate"].as_u64() >= Some(1),
        "{counters}"
    );
    assert!(counters["rateLimited"].as_u64() >= Some(4), "{counters}");
    // The refusal's event is written after the refusal, beside it.
    wait_until(
        "the disconnect's message-rejected event",
        Duration::from_secs(10),
        || async {
            let rejected = events(&admin, "noisy").await?;
            Ok(rejected
                .iter()
                .any(|e| {
                    e["event"] == "message-rejected"
                        && e["statusCode"] == 429
                        && e["statusMessage"]
                            .as_str()
                            .is_some_and(|m| m.contains("disconnected"))
                })
                .then_some(()))
        },
    )
    .await?;

    let other = run(&admin, "good", "get-node-ip", json!({})).await?;
    assert_eq!(other["state"], "succeeded", "{other}");
    Ok(())
}

/// MQTT 3.1.1 has no PUBACK reason codes: a refused publish closes the
/// connection, and the operator still sees why; an MQTT 5 client gets 0x99
/// and keeps its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_closes_an_mqtt_3_connection_and_not_an_mqtt_5_one() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let port = mqtt_port(&tetherd)?;
    let credentials = DeviceCredentials::enroll(&admin, "legacy").await?;
    let dir = tempfile::tempdir()?;
    credentials.write_to(dir.path())?;
    let publish = |version: &'static str| {
        let port = port.clone();
        let dir = dir.path().to_owned();
        async move {
            let args = [
                "-V",
                version,
                "-q",
                "1",
                "-d",
                "-t",
                "tether/v1/devices/legacy/status",
                "-m",
                "not json",
                "--repeat",
                "3",
            ];
            mosquitto("mosquitto_pub", &port, Some(&dir), "legacy", &args).await
        }
    };
    let v5 = publish("mqttv5").await?;
    let v5_text = text(&v5);
    // 0x99, with the reason string for the device's developer.
    assert!(v5_text.contains("RC:153"), "{v5_text}");
    assert!(v5_text.contains("malformed status payload"), "{v5_text}");
    assert_eq!(
        device(&admin, "legacy").await?["ingest"]["rejectedMalformed"],
        3,
        "an MQTT 5 client keeps its session after a refusal: {v5_text}"
    );

    let v3 = publish("mqttv311").await?;
    let v3_text = text(&v3);
    assert!(
        !v3.status.success()
            && v3_text.contains("connection was lost")
            && !v3_text.contains("received PUBACK"),
        "MQTT 3.1.1 cannot be told the reason, so it gets no PUBACK: {v3_text}"
    );
    let counters = &device(&admin, "legacy").await?["ingest"];
    assert!(
        counters["rejectedMalformed"].as_u64() >= Some(4),
        "{counters}"
    );
    let rejected = events(&admin, "legacy").await?;
    assert!(
        rejected
            .iter()
            .any(|e| e["event"] == "message-rejected" && e["statusCode"] == 400),
        "{rejected:?}"
    );
    Ok(())
}
