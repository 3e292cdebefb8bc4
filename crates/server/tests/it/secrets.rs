//! Sealed secrets end to end (ADR 0030): real tetherd, real tether-agents.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tether_proto::sealed::{SealError, SecretKey};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

use crate::support::on_both_databases;

on_both_databases!(
    a_secret_reaches_its_device_only_and_no_route_or_database_shows_it,
    bad_secrets_are_refused_by_field,
    a_set_refused_as_too_large_leaves_no_half_written_secret,
    one_device_reporting_a_low_order_key_does_not_break_sealing_for_the_fleet,
);

const VALUE: &str = "correct-horse-battery-staple-7f3a91";

/// Waits until the device reported a sealing key; returns it.
async fn sealing_key(admin: &ApiClient, device: &str) -> anyhow::Result<String> {
    wait_until(
        "the device's sealing key",
        Duration::from_secs(30),
        || async {
            let device = admin
                .get(&format!("/api/v1/devices/{device}"))
                .await?
                .expect_status(200)?;
            Ok(device["status"]["sealingKey"].as_str().map(str::to_owned))
        },
    )
    .await
}

fn secret_file(agent: &Agent, name: &str) -> std::path::PathBuf {
    agent.state_dir().join("secrets").join(name)
}

fn device_key(agent: &Agent) -> anyhow::Result<SecretKey> {
    let bytes = std::fs::read(agent.state_dir().join("sealing.key"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("the sealing key is not 32 bytes"))?;
    Ok(SecretKey::from_bytes(bytes))
}

/// Asserts that neither the value nor its base64 is in `text`.
fn assert_hidden(what: &str, text: &[u8]) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(VALUE);
    for needle in [VALUE.as_bytes(), encoded.as_bytes()] {
        assert!(
            !text.windows(needle.len()).any(|w| w == needle),
            "{what} shows the secret's value"
        );
    }
}

async fn a_secret_reaches_its_device_only_and_no_route_or_database_shows_it(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let mut first = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    let second = Agent::enroll_online(&tetherd, &admin, "edge-2").await?;
    let first_key = sealing_key(&admin, "edge-1").await?;
    let second_key = sealing_key(&admin, "edge-2").await?;
    assert_ne!(first_key, second_key);
    assert_eq!(
        std::fs::metadata(first.state_dir().join("sealing.key"))?
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let set = admin
        .put_json(
            "/api/v1/secrets/db-password",
            json!({"target": {"device": "edge-1"}, "value": VALUE}),
        )
        .await?
        .expect_status(200)?;
    assert_eq!(set["sealed"], json!(["edge-1"]), "{set}");
    assert_eq!(set["version"], 1, "{set}");
    assert_hidden("the PUT response", set.to_string().as_bytes());

    // The targeted agent opens it into a 0600 file in a 0700 directory.
    let path = secret_file(&first, "db-password");
    wait_until("the secret's file", Duration::from_secs(30), || async {
        Ok(std::fs::read(&path).ok().filter(|v| v == VALUE.as_bytes()))
    })
    .await?;
    assert_eq!(
        std::fs::metadata(&path)?.permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(path.parent().expect("dir"))?
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let device = wait_until("edge-1 in sync", Duration::from_secs(30), || async {
        let device = admin
            .get("/api/v1/devices/edge-1")
            .await?
            .expect_status(200)?;
        Ok((device["specInSync"] == true).then_some(device))
    })
    .await?;
    let ciphertext = device["spec"]["secrets"]["db-password"]["ciphertext"]
        .as_str()
        .expect("ciphertext")
        .to_owned();

    // The other device is not sent it, and its key cannot open edge-1's copy.
    let other = admin
        .get("/api/v1/devices/edge-2")
        .await?
        .expect_status(200)?;
    assert!(other["spec"].get("secrets").is_none(), "{other}");
    assert!(!secret_file(&second, "db-password").exists());
    assert_eq!(
        device_key(&second)?.open(&ciphertext).map(|v| v.to_vec()),
        Err(SealError::Refused)
    );
    assert_eq!(
        &device_key(&first)?.open(&ciphertext)?[..],
        VALUE.as_bytes()
    );

    // No route shows the value.
    for route in [
        "/api/v1/secrets",
        "/api/v1/secrets/db-password",
        "/api/v1/devices",
        "/api/v1/devices/edge-1",
        "/api/v1/devices/edge-2",
        "/api/v1/audit",
    ] {
        let body = admin.get(route).await?.expect_status(200)?;
        assert_hidden(route, body.to_string().as_bytes());
    }
    assert_hidden("the agent's log", first.log().as_bytes());

    // A device whose key changed holds a copy it cannot open: it says so,
    // the secret lists it as stale, and setting the secret again re-seals.
    first.stop().await?;
    std::fs::remove_file(first.state_dir().join("sealing.key"))?;
    first.start()?;
    wait_until("edge-1's new key", Duration::from_secs(30), || async {
        let key = sealing_key(&admin, "edge-1").await?;
        Ok((key != first_key).then_some(()))
    })
    .await?;
    let device = admin
        .get("/api/v1/devices/edge-1")
        .await?
        .expect_status(200)?;
    let errors = &device["status"]["errors"];
    assert!(
        errors.as_array().into_iter().flatten().any(|e| {
            e["path"] == "spec.secrets.db-password"
                && e["message"].as_str().is_some_and(|m| {
                    m.contains("sealed to another key: run `tether secrets set db-password` again")
                })
        }),
        "{device}"
    );
    assert_eq!(device["specInSync"], false, "{device}");
    // The key is recorded just after the report that carries it.
    let stale = wait_until("edge-1 stale", Duration::from_secs(30), || async {
        let secret = admin
            .get("/api/v1/secrets/db-password")
            .await?
            .expect_status(200)?;
        Ok((secret["stale"] == json!(["edge-1"])).then_some(secret))
    })
    .await?;
    assert_eq!(stale["sealed"], json!([]), "{stale}");
    let resealed = admin
        .put_json(
            "/api/v1/secrets/db-password",
            json!({"target": {"device": "edge-1"}, "valueBase64":
                base64::engine::general_purpose::STANDARD.encode(format!("{VALUE}-2"))}),
        )
        .await?
        .expect_status(200)?;
    assert_eq!(resealed["sealed"], json!(["edge-1"]), "{resealed}");
    assert_eq!(resealed["version"], 2, "{resealed}");
    wait_until("the re-sealed value", Duration::from_secs(30), || async {
        Ok(std::fs::read(&path)
            .ok()
            .filter(|v| v == format!("{VALUE}-2").as_bytes()))
    })
    .await?;

    // Deleting takes it off the device.
    admin
        .delete("/api/v1/secrets/db-password")
        .await?
        .expect_status(204)?;
    wait_until("the file removed", Duration::from_secs(30), || async {
        Ok((!path.exists()).then_some(()))
    })
    .await?;
    admin
        .get("/api/v1/secrets/db-password")
        .await?
        .expect_status(404)?;
    assert_hidden(
        "the audit log",
        admin
            .get("/api/v1/audit")
            .await?
            .body
            .to_string()
            .as_bytes(),
    );

    // Nor does the database: every file of SQLite's, WAL included.
    if tetherd.postgres().is_none() {
        for entry in std::fs::read_dir(tetherd.data_dir())? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("tether.db") {
                assert_hidden(
                    &entry.path().display().to_string(),
                    &std::fs::read(entry.path())?,
                );
            }
        }
    }
    Ok(())
}

async fn bad_secrets_are_refused_by_field(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    admin
        .post("/api/v1/devices", json!({"name": "pi-1"}))
        .await?
        .expect_status(201)?;
    let refused = |name: &'static str, body: Value| {
        let admin = &admin;
        async move {
            let reply = admin
                .put_json(&format!("/api/v1/secrets/{name}"), body)
                .await?
                .expect_status(400)?;
            anyhow::Ok(reply["error"]["details"]["fields"][0].clone())
        }
    };
    let target = json!({"device": "pi-1"});
    let field = refused("db", json!({"target": {"device": "nope"}, "value": "x"})).await?;
    assert_eq!(field["path"], "target.device", "{field}");
    assert!(
        field["message"]
            .as_str()
            .is_some_and(|m| m.contains("device nope not found")),
        "{field}"
    );
    let field = refused("db", json!({"target": target, "value": ""})).await?;
    assert_eq!(field["path"], "value", "{field}");
    assert!(
        field["message"]
            .as_str()
            .is_some_and(|m| m.contains("empty")),
        "{field}"
    );
    let field = refused(
        "db",
        json!({"target": target, "value": "x".repeat(16 * 1024 + 1)}),
    )
    .await?;
    assert_eq!(field["path"], "value", "{field}");
    assert!(
        field["message"]
            .as_str()
            .is_some_and(|m| m.contains("16384")),
        "{field}"
    );
    let field = refused("Db_1", json!({"target": target, "value": "x"})).await?;
    assert_eq!(field["path"], "name", "{field}");
    let field = refused(
        "db",
        json!({"target": target, "value": "x", "valueBase64": "eA=="}),
    )
    .await?;
    assert_eq!(field["path"], "value", "{field}");
    let field = refused("db", json!({"target": target, "valueBase64": "%%"})).await?;
    assert_eq!(field["path"], "valueBase64", "{field}");
    let field = refused("db", json!({"target": {}, "value": "x"})).await?;
    assert_eq!(field["path"], "target", "{field}");
    // Nothing was stored.
    let list = admin.get("/api/v1/secrets").await?.expect_status(200)?;
    assert_eq!(list["items"], json!([]), "{list}");

    // The section is tetherd's: an operator's spec write naming it is refused.
    let reply = admin
        .patch(
            "/api/v1/devices/pi-1",
            json!({"spec": {"secrets": {"db": {"version": 1, "ciphertext": "AQ=="}}}}),
        )
        .await?
        .expect_status(400)?;
    assert!(
        reply.to_string().contains("spec.secrets") && reply.to_string().contains("tether secrets"),
        "{reply}"
    );
    // A device without a key yet is listed as such, not sealed.
    let set = admin
        .put_json(
            "/api/v1/secrets/db",
            json!({"target": target, "value": "x"}),
        )
        .await?
        .expect_status(200)?;
    assert_eq!(set["withoutKey"], json!(["pi-1"]), "{set}");
    assert_eq!(set["sealed"], json!([]), "{set}");
    Ok(())
}

/// A set whose sealed copy would not fit a device's spec (64 KiB) is
/// refused before anything is written: no secret claims the device.
async fn a_set_refused_as_too_large_leaves_no_half_written_secret(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let _agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    sealing_key(&admin, "edge-1").await?;
    let big = base64::engine::general_purpose::STANDARD
        .encode(vec![7u8; tether_proto::sealed::MAX_VALUE_BYTES]);
    for name in ["big-1", "big-2"] {
        admin
            .put_json(
                &format!("/api/v1/secrets/{name}"),
                json!({"target": {"device": "edge-1"}, "valueBase64": big}),
            )
            .await?
            .expect_status(200)?;
    }
    // The third sealed copy does not fit the device's spec: refused.
    admin
        .put_json(
            "/api/v1/secrets/big-3",
            json!({"target": {"device": "edge-1"}, "valueBase64": big}),
        )
        .await?
        .expect_status(400)?;
    let device = admin
        .get("/api/v1/devices/edge-1")
        .await?
        .expect_status(200)?;
    assert!(device["spec"]["secrets"].get("big-3").is_none(), "{device}");
    // A refused request must leave nothing behind; if it does, the secret
    // must at least not claim the device has it.
    let reply = admin.get("/api/v1/secrets/big-3").await?;
    if reply.status.as_u16() == 200 {
        let secret = reply.expect_status(200)?;
        assert_eq!(
            secret["sealed"],
            json!([]),
            "a refused set left secret big-3 claiming edge-1 holds it: {secret}"
        );
    }
    Ok(())
}

/// A hostile agent's low-order (all-zero) key is refused as it arrives;
/// one recorded anyway (an older tetherd) leaves that device without the
/// secret and the rest of the fleet with it, never a 500 for everyone.
async fn one_device_reporting_a_low_order_key_does_not_break_sealing_for_the_fleet(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    for name in ["good", "evil"] {
        admin
            .post(
                "/api/v1/devices",
                json!({"name": name, "labels": {"site": "x"}}),
            )
            .await?
            .expect_status(201)?;
    }
    let store = crate::support::store_of(&tetherd).await?;
    let good = SecretKey::generate()?;
    let id = |name: &str| tether_proto::DeviceId::new(name.to_owned()).expect("name");
    // What ingest records from each device's report (after PublicKey::parse).
    store
        .record_sealing_key(&id("good"), &good.public_key().encode(), chrono::Utc::now())
        .await?;
    let low_order = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
    assert!(tether_proto::sealed::PublicKey::parse(&low_order).is_err());
    store
        .record_sealing_key(&id("evil"), &low_order, chrono::Utc::now())
        .await?;
    let reply = admin
        .put_json(
            "/api/v1/secrets/db-password",
            json!({"target": {"selector": "site=x"}, "value": VALUE}),
        )
        .await?;
    let set = reply.expect_status(200)?;
    assert_eq!(set["sealed"], json!(["good"]), "{set}");
    assert_eq!(set["stale"], json!(["evil"]), "{set}");
    Ok(())
}
