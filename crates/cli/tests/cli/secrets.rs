//! `tether secrets` against a real tetherd and a simulated device that
//! reports a sealing key (ADR 0030): the value goes in through stdin, only
//! the device's key opens what tetherd sends it, and no command shows it.

use std::sync::Arc;
use std::time::Duration;

use tether_proto::sealed::SecretKey;
use tether_proto::spec::ReportedStatus;

use super::{Responder, SimAgent, Tether, enroll_many, tetherd};

const VALUE: &str = "s3cret-from-stdin-9d41\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_set_from_stdin_reaches_the_device_sealed_and_is_never_shown() {
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
    let key = Arc::new(SecretKey::generate().expect("key"));
    let public = key.public_key().encode();
    let reporter = Arc::new(
        move |_: &tether_proto::DeviceId, message: &tether_proto::spec::SpecMessage| {
            ReportedStatus {
                spec_version: message.version,
                sealing_key: Some(public.clone()),
                ..ReportedStatus::default()
            }
        },
    );
    let _agent = SimAgent::connect_reporting(&credentials[0], Responder::Silent, reporter)
        .await
        .expect("connected");
    tether_testkit::wait_until("the device's key", Duration::from_secs(30), || async {
        let device = admin
            .get("/api/v1/devices/gw-1")
            .await?
            .expect_status(200)?;
        Ok(device["status"]["sealingKey"].as_str().map(drop))
    })
    .await
    .expect("a key reported");

    let set = tether
        .run_with_stdin(
            &["secrets", "set", "db-password", "-l", "site=berlin"],
            VALUE,
        )
        .await;
    assert_eq!(set.code, 0, "{}", set.stderr);
    assert!(
        set.stdout.contains("secret/db-password set"),
        "{}",
        set.stdout
    );
    assert!(set.stdout.contains("gw-1"), "{}", set.stdout);

    // Every way of looking at it shows where it is sealed, never the value.
    let list = tether.run_ok(&["secrets", "list"]).await;
    assert!(
        list.contains("db-password") && list.contains("-l site=berlin"),
        "{list}"
    );
    for args in [
        &["secrets", "list", "-o", "json"][..],
        &["secrets", "list", "-o", "yaml"],
        &["secrets", "get", "db-password"],
        &["devices", "get", "gw-1", "-o", "json"],
    ] {
        let shown = tether.run_ok(args).await;
        assert!(
            !shown.contains(VALUE.trim_end()),
            "tether {args:?} shows the value"
        );
    }
    let listed: serde_json::Value =
        serde_json::from_str(&tether.run_ok(&["secrets", "list", "-o", "json"]).await)
            .expect("JSON");
    assert_eq!(listed[0]["sealed"], serde_json::json!(["gw-1"]), "{listed}");

    // The device's spec carries it sealed; its key opens it, byte for byte.
    let device: serde_json::Value = serde_json::from_str(
        &tether
            .run_ok(&["devices", "get", "gw-1", "-o", "json"])
            .await,
    )
    .expect("JSON");
    let sealed = device["spec"]["secrets"]["db-password"]["ciphertext"]
        .as_str()
        .expect("sealed in the spec");
    assert_eq!(&key.open(sealed).expect("opens")[..], VALUE.as_bytes());

    // An empty value is refused before anything is sent.
    let empty = tether
        .run_with_stdin(&["secrets", "set", "db-password", "--device", "gw-1"], "")
        .await;
    assert_ne!(empty.code, 0);
    assert!(empty.stderr.contains("empty"), "{}", empty.stderr);

    let deleted = tether.run_ok(&["secrets", "delete", "db-password"]).await;
    assert!(deleted.contains("secret/db-password deleted"), "{deleted}");
    let gone = tether.run(&["secrets", "get", "db-password"]).await;
    assert_ne!(gone.code, 0);
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);
}
