//! Certificates renew themselves: tetherd's own (hot-reloaded by both
//! listeners), the devices' (through `POST /api/v1/renew`), also with a
//! device clock a day off; expired and revoked devices are told what to do.
//! And the data dir is private whatever existed before.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tether_testkit::sim_agent::{DeviceCredentials, Responder, SimAgent};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, faketime_env, local_api, wait_until};

use crate::support::{on_both_databases, run};

on_both_databases!(a_device_renews_with_the_old_certificate_until_the_new_one_connects);

/// tetherd with certificate lifetimes and grace in seconds, from the
/// `[pki]` section of the `tetherd.toml` in its data dir.
async fn tetherd_with_lifetimes(
    database: Database,
    server: u64,
    device: u64,
    grace: u64,
) -> anyhow::Result<Tetherd> {
    Tetherd::start_prepared(database, &[], |dir| {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("tetherd.toml"),
            format!(
                "[pki]\nserver_certificate_lifetime_seconds = {server}\n\
                 device_certificate_lifetime_seconds = {device}\nrenewal_grace_seconds = {grace}\n"
            ),
        )?;
        Ok(())
    })
    .await
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// `notAfter` and the serial (hex) of the first certificate in a PEM file.
fn certificate(path: &Path) -> anyhow::Result<(DateTime<Utc>, String)> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .context("a certificate")??;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).context("parsing")?;
    let not_after = DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .context("a valid time")?;
    Ok((not_after, hex::encode(cert.raw_serial())))
}

/// The serial of the certificate a new TLS connection to `addr` is served.
fn served_serial(addr: &str, client: &Path) -> anyhow::Result<String> {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -cert {c}/cert.pem -key {c}/key.pem -CAfile {c}/ca.pem </dev/null 2>/dev/null | openssl x509 -noout -serial",
            c = client.display()
        ))
        .output()
        .context("running openssl")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .strip_prefix("serial=")
        .map(str::to_lowercase)
        .with_context(|| format!("openssl printed no serial: {text:?}"))
}

fn authority(url: &str) -> anyhow::Result<String> {
    Ok(url.split_once("://").context("a URL")?.1.to_owned())
}

async fn wait_for_log(agent: &Agent, needle: &str, within: Duration) -> anyhow::Result<()> {
    wait_until(&format!("agent log to say {needle:?}"), within, || {
        let found = agent.log().contains(needle);
        async move { Ok(found.then_some(())) }
    })
    .await
    .with_context(|| format!("agent log:\n{}", agent.log()))
}

/// Runs `get-node-ip` on `device` again and again until `stop`, counting
/// the actions; any action that does not succeed fails the test.
async fn keep_running_actions(
    admin: ApiClient,
    device: &'static str,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let action = run(&admin, device, "get-node-ip", json!({})).await?;
        anyhow::ensure!(
            action["state"] == "succeeded",
            "action on {device}: {action}"
        );
        done.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The acceptance run: 15 s lifetimes, two real agents, actions all the
/// time, for three lifetimes and until tetherd renewed its certificate three
/// times (each reloaded by HTTPS and MQTT) and each device three times.
/// Nothing is done by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_runs_through_three_certificate_lifetimes_without_losing_an_action()
-> anyhow::Result<()> {
    const LIFETIME: u64 = 15;
    let tetherd = tetherd_with_lifetimes(Database::Sqlite, LIFETIME, LIFETIME, 3600).await?;
    let started = tokio::time::Instant::now();
    let admin = tetherd.admin().await?;
    let edge_1 = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    let edge_2 = Agent::enroll_online(&tetherd, &admin, "edge-2").await?;
    let (_, first_serial) = certificate(&edge_1.state_file("cert.pem"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let loops = ["edge-1", "edge-2"].map(|device| {
        tokio::spawn(keep_running_actions(
            admin.clone(),
            device,
            stop.clone(),
            done.clone(),
        ))
    });
    let renewed = wait_until(
        "three server and three device certificate renewals each",
        Duration::from_secs(100),
        || {
            let server = tetherd.log();
            let refused = server.contains("could not load the renewed server certificate");
            // Each renewal is reloaded by two listeners, HTTPS and MQTT.
            let counts = (
                count(&server, "serving the renewed server certificate") / 2,
                count(&edge_1.log(), "renewed the device certificate"),
                count(&edge_2.log(), "renewed the device certificate"),
            );
            let finished = loops.iter().any(|l| l.is_finished());
            let three_lifetimes = started.elapsed() >= Duration::from_secs(3 * LIFETIME);
            async move {
                anyhow::ensure!(!refused, "a listener refused the renewed certificate");
                anyhow::ensure!(!finished, "an action loop ended early");
                let renewed = counts.0 >= 3 && counts.1 >= 3 && counts.2 >= 3;
                Ok((renewed && three_lifetimes).then_some(counts))
            }
        },
    )
    .await
    .with_context(|| {
        format!(
            "tetherd log:\n{}\nedge-1 log:\n{}",
            tetherd.log(),
            edge_1.log()
        )
    });
    stop.store(true, Ordering::Relaxed);
    for action_loop in loops {
        action_loop.await??;
    }
    let (server, device_1, device_2) = renewed?;
    let actions = done.load(Ordering::Relaxed);
    eprintln!(
        "server renewals {server}, edge-1 {device_1}, edge-2 {device_2}, actions {actions} all succeeded"
    );
    assert!(actions >= 20, "only {actions} actions ran");

    // A local application reading the identity on the agent's socket sees
    // the certificate in use, not the one the device enrolled with.
    let socket = edge_1.local_api_socket();
    let cert_file = edge_1.state_file("cert.pem");
    let (socket, cert_file) = (&socket, &cert_file);
    let serial = wait_until(
        "edge-1's local API to name its current certificate",
        Duration::from_secs(15),
        || async move {
            let (_, identity) = local_api(socket, "GET", "/v1/identity", "").await?;
            let (not_after, serial) = certificate(cert_file)?;
            let shown = &identity["certificate"];
            let shown_not_after = shown["notAfter"].as_str().map(str::parse::<DateTime<Utc>>);
            Ok((shown["serial"] == serial.as_str()
                && matches!(shown_not_after, Some(Ok(at)) if at == not_after))
            .then_some(serial))
        },
    )
    .await?;
    assert_ne!(serial, first_serial, "renewed: {}", edge_1.log());

    // Still usable by a fresh client (a new TLS handshake with the current
    // certificate) and a fresh action after all that.
    let admin = tetherd.admin().await?;
    let action = run(&admin, "edge-2", "get-node-ip", json!({})).await?;
    assert_eq!(action["state"], "succeeded", "{action}");
    let audit = admin
        .get("/api/v1/audit?limit=1000")
        .await?
        .expect_status(200)?;
    let renewals = audit["items"]
        .as_array()
        .context("audit entries")?
        .iter()
        .filter(|e| e["path"] == "/api/v1/renew" && e["status"] == 200)
        .count();
    assert!(renewals >= 6, "{renewals} renewals audited");
    Ok(())
}

/// The MQTT listener swaps its certificate without dropping a session: a
/// device connected before the renewal stays connected and answers, and a
/// new connection is served the new certificate (a new serial); so is a new
/// HTTPS connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_server_certificate_reaches_new_connections_and_keeps_old_ones()
-> anyhow::Result<()> {
    let tetherd = tetherd_with_lifetimes(Database::Sqlite, 12, 3600, 3600).await?;
    let admin = tetherd.admin().await?;
    let credentials = DeviceCredentials::enroll(&admin, "sim-1").await?;
    let dir = tempfile::tempdir()?;
    credentials.write_to(dir.path())?;
    let mqtt = authority(&tetherd.mqtt_url)?;
    let api = authority(&tetherd.api_url)?;
    let first_mqtt = served_serial(&mqtt, dir.path())?;
    let first_api = served_serial(&api, dir.path())?;
    assert_eq!(
        first_mqtt, first_api,
        "both listeners serve one certificate"
    );

    let sim = SimAgent::connect(&credentials, Responder::Echo).await?;
    admin.wait_presence("sim-1", "online").await?;
    let renewed = wait_until(
        "a new server certificate on MQTT",
        Duration::from_secs(30),
        || {
            let serial = served_serial(&mqtt, dir.path());
            let first = first_mqtt.clone();
            async move { Ok(serial.ok().filter(|s| *s != first)) }
        },
    )
    .await
    .with_context(|| tetherd.log())?;
    let (_, on_disk) = certificate(&tetherd.data_dir().join("server.pem"))?;
    let second_api = served_serial(&api, dir.path())?;
    assert!(
        [renewed.as_str(), second_api.as_str()]
            .iter()
            .all(|s| *s != first_mqtt),
        "new connections see a new certificate: {first_mqtt} -> mqtt {renewed}, https {second_api} (file {on_disk})"
    );

    assert!(
        sim.is_connected(),
        "the session from before the renewal was dropped"
    );
    let action = run(&admin, "sim-1", "get-node-ip", json!({})).await?;
    assert_eq!(action["state"], "succeeded", "{action}");
    assert!(sim.is_connected());
    Ok(())
}

/// A device whose certificate expired while it was off renews before it
/// connects, within the grace; past the grace it is told to re-enroll, says
/// so clearly, and stays offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stopped_past_expiry_renews_within_grace_and_must_re_enroll_after_it()
-> anyhow::Result<()> {
    let tetherd = tetherd_with_lifetimes(Database::Sqlite, 3600, 10, 8).await?;
    let admin = tetherd.admin().await?;
    let mut agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;

    agent.stop().await?;
    let (expires, _) = certificate(&agent.state_file("cert.pem"))?;
    wait_until(
        "the certificate to expire",
        Duration::from_secs(20),
        || async { Ok((Utc::now() > expires + chrono::Duration::seconds(1)).then_some(())) },
    )
    .await?;
    agent.start()?;
    agent.wait_presence(&admin, "online").await?;
    let log = agent.log();
    assert!(log.contains("renewing before connecting"), "{log}");
    assert!(log.contains("renewed the device certificate"), "{log}");

    agent.stop().await?;
    agent.wait_presence(&admin, "offline").await?;
    let (expires, _) = certificate(&agent.state_file("cert.pem"))?;
    wait_until("the grace to end", Duration::from_secs(30), || async {
        Ok((Utc::now() > expires + chrono::Duration::seconds(9)).then_some(()))
    })
    .await?;
    agent.start()?;
    wait_for_log(
        &agent,
        "re-enroll it with a token from",
        Duration::from_secs(20),
    )
    .await?;
    let log = agent.log();
    let refusal = log
        .lines()
        .rfind(|line| line.contains("re-enroll"))
        .context("a refusal line")?;
    assert!(refusal.contains("expired on"), "{refusal}");
    assert!(refusal.contains("asking again in 60 min"), "{refusal}");
    assert!(
        refusal.contains(&agent.state_dir().display().to_string()),
        "names what to remove: {refusal}"
    );
    let device = admin
        .get("/api/v1/devices/edge-1")
        .await?
        .expect_status(200)?;
    assert_eq!(device["presence"], "offline", "{device}");
    Ok(())
}

/// A CSR for the key in `dir`/key.pem, as the agent sends it.
fn csr_for(key_pem: &str) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::from_pem(key_pem)?;
    Ok(rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?)
}

async fn renew(
    anonymous: &ApiClient,
    cert_pem: &str,
    csr_pem: &str,
) -> anyhow::Result<(u16, Value)> {
    let reply = anonymous
        .post(
            "/api/v1/renew",
            json!({"certificatePem": cert_pem, "csrPem": csr_pem}),
        )
        .await?;
    Ok((reply.status.as_u16(), reply.body))
}

/// An answer to a renewal lost on its way back must not strand the device:
/// the certificate it still holds renews (and connects) again, until a
/// newer one has connected. Renewals are rate limited, audited, and refused
/// for a foreign key or a revoked device.
async fn a_device_renews_with_the_old_certificate_until_the_new_one_connects(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = tetherd_with_lifetimes(database, 3600, 3600, 3600).await?;
    let admin = tetherd.admin().await?;
    let anonymous = tetherd.anonymous()?;
    let credentials = DeviceCredentials::enroll(&admin, "sim-1").await?;
    let csr = csr_for(&credentials.key_pem)?;

    // Two renewals whose answers "never arrive": the old certificate works.
    for _ in 0..2 {
        let (status, body) = renew(&anonymous, &credentials.cert_pem, &csr).await?;
        assert_eq!(status, 200, "{body}");
        assert!(body["serverTime"].is_string(), "{body}");
    }
    let old = SimAgent::connect(&credentials, Responder::Echo).await?;
    admin.wait_presence("sim-1", "online").await?;
    old.disconnect().await;

    // A third renewal arrives; its certificate connects, and from then on
    // the old one neither connects nor renews.
    let (status, body) = renew(&anonymous, &credentials.cert_pem, &csr).await?;
    assert_eq!(status, 200, "{body}");
    let renewed = DeviceCredentials {
        cert_pem: body["certificatePem"]
            .as_str()
            .context("a certificate")?
            .to_owned(),
        ..credentials.clone()
    };
    let new = SimAgent::connect(&renewed, Responder::Echo).await?;
    new.disconnect().await;
    let (status, body) = renew(&anonymous, &credentials.cert_pem, &csr).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("certificate_revoked")),
        "{body}"
    );
    assert!(
        SimAgent::connect(&credentials, Responder::Echo)
            .await
            .is_err()
    );

    // A CSR for another key proves nothing.
    let stranger = csr_for(&rcgen::KeyPair::generate()?.serialize_pem())?;
    let (status, body) = renew(&anonymous, &renewed.cert_pem, &stranger).await?;
    assert_eq!(status, 400, "{body}");

    // Five renewals per lifetime, then 429 with Retry-After.
    for _ in 0..2 {
        let (status, body) = renew(&anonymous, &renewed.cert_pem, &csr).await?;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = renew(&anonymous, &renewed.cert_pem, &csr).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_renewals")),
        "{body}"
    );

    // Revoked: refused with a reason that says what to do.
    admin
        .post("/api/v1/devices/sim-1/revoke", json!({}))
        .await?
        .expect_status(204)?;
    let (status, body) = renew(&anonymous, &renewed.cert_pem, &csr).await?;
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("revoked") && message.contains("enrollment-token"),
        "{message}"
    );

    // Anyone can send garbage; it is refused without a row in the audit
    // log each (that would let anyone grow the store), and after a few
    // refusals in a row from this address, without being checked (429).
    for _ in 0..20 {
        let (status, body) = renew(&anonymous, "not a certificate", &csr).await?;
        assert!(matches!(status, 401 | 429), "{status} {body}");
    }

    let audit = admin
        .get("/api/v1/audit?limit=1000")
        .await?
        .expect_status(200)?;
    let renewals: Vec<(String, i64)> = audit["items"]
        .as_array()
        .context("audit entries")?
        .iter()
        .filter(|e| e["path"] == "/api/v1/renew")
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_owned(),
                e["status"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(renewals.len(), 9, "{renewals:?}");
    assert!(
        renewals.iter().all(|(actor, _)| actor == "device:sim-1"),
        "{renewals:?}"
    );
    for status in [200, 400, 403, 429] {
        assert!(
            renewals.iter().any(|(_, s)| *s == status),
            "{status} in {renewals:?}"
        );
    }
    Ok(())
}

/// An agent whose clock is a day ahead or behind enrolls, connects (judging
/// tetherd's 60-second certificate by tetherd's clock) and keeps renewing
/// its 10-second certificate, reconnecting with each. (Running actions under
/// skew is the relative-TTL work's test: today an action to a device a day
/// ahead expires on the device.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_its_clock_a_day_off_connects_and_renews() -> anyhow::Result<()> {
    let tetherd = tetherd_with_lifetimes(Database::Sqlite, 60, 10, 3600).await?;
    let admin = tetherd.admin().await?;
    for (name, skew, direction) in [("ahead", "+1d", "ahead of"), ("behind", "-1d", "behind")] {
        let env = faketime_env(skew)?;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let agent = Agent::enroll_with_env(&tetherd, &admin, name, &env).await?;
        agent.wait_presence(&admin, "online").await?;
        wait_until("two renewals", Duration::from_secs(40), || {
            let renewals = count(&agent.log(), "renewed the device certificate");
            async move { Ok((renewals >= 2).then_some(())) }
        })
        .await
        .with_context(|| agent.log())?;
        wait_for_log(&agent, "reconnecting to", Duration::from_secs(5)).await?;
        agent.wait_presence(&admin, "online").await?;
        let log = agent.log();
        assert!(!log.contains("cannot renew"), "{log}");
        assert!(
            log.contains("this device's clock is 86") && log.contains(direction),
            "the offset is logged: {log}"
        );
    }
    Ok(())
}

/// tetherd started on a data dir someone pre-created 0755 with a 0644 file
/// in it (systemd's `StateDirectory=` default) leaves nothing readable by
/// others: not the old file, not the database with its -wal and -shm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_created_open_data_dir_is_made_private() -> anyhow::Result<()> {
    let tetherd = Tetherd::start_prepared(Database::Sqlite, &[], |dir| {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(dir.join("notes.txt"), "left by a packager")?;
        std::fs::set_permissions(
            dir.join("notes.txt"),
            std::fs::Permissions::from_mode(0o644),
        )?;
        Ok(())
    })
    .await?;
    let admin = tetherd.admin().await?;
    // A write, so the database has its WAL and shared-memory files.
    let _agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;

    let data_dir = tetherd.data_dir();
    let mode = |path: &Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(&data_dir)?, 0o700);
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&data_dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = std::fs::symlink_metadata(&path)?;
        assert_eq!(
            meta.mode() & 0o077,
            0,
            "{name} is readable by others: {:o}",
            meta.mode()
        );
        seen.push(name);
    }
    for expected in [
        "notes.txt",
        "tether.db",
        "tether.db-wal",
        "tether.db-shm",
        "ca-key.pem",
        "server-key.pem",
    ] {
        assert!(
            seen.iter().any(|n| n == expected),
            "{expected} not in {seen:?}"
        );
    }
    Ok(())
}

/// A data dir owned by another user cannot be made private: tetherd refuses
/// to start, naming the path and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_owned_by_someone_else_is_refused_with_the_fix() -> anyhow::Result<()> {
    if !nix_is_root() {
        eprintln!("skipped: only root can hand a directory to another user");
        return Ok(());
    }
    let started = Tetherd::start_prepared(Database::Sqlite, &[], |dir| {
        std::fs::create_dir_all(dir)?;
        std::os::unix::fs::chown(dir, Some(65534), Some(65534))?;
        Ok(())
    })
    .await;
    let Err(error) = started else {
        anyhow::bail!("tetherd started on a data dir owned by uid 65534");
    };
    let message = format!("{error:#}");
    assert!(message.contains("belongs to uid 65534"), "{message}");
    assert!(message.contains("chown -R"), "{message}");
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}
