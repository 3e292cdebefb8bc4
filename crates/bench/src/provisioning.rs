//! `--mode provisioning`: N simulated devices booting at once from one
//! image register through an UNATTENDED policy with a serial-number
//! identity (each its own TLS connection, key pair and CSR, as real
//! devices), then boot again with new media (new key pairs, the same
//! serials), which reuses their devices. Prints registrations a second
//! and the latency of one registration.

use std::time::Instant;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::{ApiClient, Database, Tetherd};

use crate::{ms, percentile};

pub struct Settings {
    pub database: Database,
    pub devices: usize,
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a dir for tetherd's config")?;
    let config = dir.path().join("tetherd.toml");
    // Booting devices come from as many addresses; here they share one.
    std::fs::write(
        &config,
        format!(
            "[api]\nmax_connections_per_ip = {}\n",
            settings.devices + 64
        ),
    )?;
    let config = config.display().to_string();
    let tetherd = Tetherd::start_with(settings.database, &["--config", &config]).await?;
    let admin = tetherd.admin().await?;
    admin
        .post(
            "/api/v1/provisioning-policies",
            // Both rounds within the hour and within minutes of each
            // other: the rate allows them, and the second round is new
            // media, not boards sharing an image's identity.
            json!({"name": "bench", "spec": {"mode": "UNATTENDED",
                   "identityFieldPaths": ["status.facts.hardwareSerial"],
                   "maxRegistrationsPerHour": 2 * settings.devices.max(1),
                   "sharedIdentityWindowMinutes": 0,
                   "template": {"metadata": {"labels": {"fleet": "bench"}},
                                "spec": {"loggingConfig": {"priority": 6}}}}}),
        )
        .await?
        .expect_status(201)?;
    let key = admin
        .post("/api/v1/provisioning-policies/bench/keys", json!({}))
        .await?
        .expect_status(201)?;
    println!(
        "tether-bench provisioning: {} devices booting at once, tetherd on {:?}",
        settings.devices, settings.database
    );
    for (round, what) in [("first boot", "created"), ("new media", "reused")] {
        let requests = (0..settings.devices)
            .map(|i| request(&key, i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let started = Instant::now();
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|request| {
                let client = ApiClient::new(&tetherd.api_url, tetherd.ca_pem(), None);
                tokio::spawn(async move {
                    let client = client?;
                    let sent = Instant::now();
                    let answer = client
                        .post("/api/v1/register", request)
                        .await?
                        .expect_status(200)?;
                    anyhow::Ok((sent.elapsed(), answer))
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(tasks.len());
        let mut devices = std::collections::BTreeSet::new();
        for task in tasks {
            let (latency, answer) = task.await.context("a registration task")??;
            latencies.push(latency);
            devices.insert(answer["enrollment"]["device"].as_str().map(str::to_owned));
        }
        let elapsed = started.elapsed();
        latencies.sort();
        println!(
            "  {round}: {} registrations in {:.2} s = {:.0}/s ({} devices {what}); one registration p50 {:.1} ms, p99 {:.1} ms",
            latencies.len(),
            elapsed.as_secs_f64(),
            latencies.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
            devices.len(),
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 99.0)),
        );
    }
    let policy = admin
        .get("/api/v1/provisioning-policies/bench")
        .await?
        .expect_status(200)?;
    anyhow::ensure!(
        policy["devices"].as_u64() == Some(settings.devices as u64),
        "new media must reuse the devices: {policy}"
    );
    println!("  policy: {} devices after both rounds", policy["devices"]);
    Ok(())
}

/// Device `i`'s registration: a fresh key pair and CSR, serial `SN-i`.
fn request(key: &Value, i: usize) -> anyhow::Result<Value> {
    let pair = rcgen::KeyPair::generate().context("generating a key")?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&pair)
        .context("building a CSR")?
        .pem()
        .context("encoding the CSR")?;
    Ok(json!({
        "keyId": key["keyId"], "secret": key["secret"], "csrPem": csr,
        "facts": {"hardwareSerial": format!("SN-{i:06}"), "agentVersion": "bench"}
    }))
}
