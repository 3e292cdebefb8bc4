//! The local API's read side on a real enrolled agent: what a local
//! application reads over the socket is what the agent holds and what
//! tetherd sent and was told.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, local_api, wait_until};

/// Updates `mask` of the device's spec through tetherd's API; returns the
/// new spec version.
async fn update_spec(admin: &ApiClient, mask: &str, spec: Value) -> anyhow::Result<u64> {
    let updated = admin
        .patch(
            &format!("/api/v1/devices/pump-7?updateMask={mask}"),
            json!({ "spec": spec }),
        )
        .await?
        .expect_status(200)?;
    updated["specVersion"].as_u64().context("specVersion")
}

/// Waits until the socket answers `path` with `"{field}": version`.
async fn read_at_version(
    agent: &Agent,
    path: &str,
    field: &str,
    version: u64,
) -> anyhow::Result<Value> {
    let socket = agent.local_api_socket();
    let socket = &socket;
    wait_until(
        &format!("{path} to show version {version}"),
        Duration::from_secs(30),
        || async move {
            let (status, body) = local_api(socket, "GET", path, "").await?;
            anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
            Ok((body[field] == version).then_some(body))
        },
    )
    .await
    .with_context(|| agent.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_applications_read_the_identity_and_the_spec_tetherd_sent_as_applied()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_online(&tetherd, &admin, "pump-7").await?;
    let socket = agent.local_api_socket();

    let (status, identity) = local_api(&socket, "GET", "/v1/identity", "").await?;
    assert_eq!(status, 200, "{identity}");
    assert_eq!(identity["device"], "pump-7");
    assert_eq!(identity["apiUrl"], tetherd.api_url.trim_end_matches('/'));
    assert_eq!(
        identity["caSha256"],
        tether_proto::ca::ca_fingerprint(std::str::from_utf8(tetherd.ca_pem())?)?
    );
    let cert_pem = std::fs::read(agent.state_file("cert.pem"))?;
    let der = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .next()
        .context("cert.pem holds a certificate")??;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    assert_eq!(
        identity["certificate"]["serial"],
        hex::encode(cert.raw_serial())
    );
    let not_after: chrono::DateTime<chrono::Utc> = identity["certificate"]["notAfter"]
        .as_str()
        .context("notAfter")?
        .parse()?;
    assert_eq!(not_after.timestamp(), cert.validity().not_after.timestamp());
    let key_pem = std::fs::read_to_string(agent.state_file("key.pem"))?;
    assert!(
        !identity.to_string().contains("PRIVATE KEY") && !identity.to_string().contains(&key_pem),
        "never the key: {identity}"
    );

    // The operator changes the spec; the application reads what the agent
    // applied, with its version, and the status it reported.
    let version = update_spec(
        &admin,
        "spec.metricsConfig",
        json!({"metricsConfig": {"intervalSeconds": 30}}),
    )
    .await?;
    let spec = read_at_version(&agent, "/v1/spec", "version", version).await?;
    assert_eq!(
        spec["spec"],
        json!({"metricsConfig": {"intervalSeconds": 30}})
    );
    let status = read_at_version(&agent, "/v1/status", "specVersion", version).await?;
    assert_eq!(status["errors"], json!([]), "{status}");
    assert_eq!(status["facts"]["agentVersion"], identity["agentVersion"]);
    let device = wait_until(
        "tetherd to hear the report",
        Duration::from_secs(30),
        || async {
            let device = admin
                .get("/api/v1/devices/pump-7")
                .await?
                .expect_status(200)?;
            Ok((device["status"]["specVersion"] == version).then_some(device))
        },
    )
    .await?;
    assert_eq!(device["status"]["facts"], status["facts"], "one status");

    // A section the device cannot apply: the reason reads back too, and the
    // spec shows what tetherd sent.
    let version = update_spec(
        &admin,
        "spec.loggingConfig.units",
        json!({"loggingConfig": {"units": ["not a unit!"]}}),
    )
    .await?;
    let status = read_at_version(&agent, "/v1/status", "specVersion", version).await?;
    assert_eq!(status["errors"][0]["path"], "spec.loggingConfig.units[0]");
    let (_, spec) = local_api(&socket, "GET", "/v1/spec", "").await?;
    assert_eq!(spec["version"], version);
    assert_eq!(spec["spec"]["loggingConfig"]["units"][0], "not a unit!");
    Ok(())
}
