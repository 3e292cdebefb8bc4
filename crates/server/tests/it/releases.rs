//! Agent releases through tetherd's API (issue 19): publishing real agent
//! binaries, signatures that verify against the signing key, refusals,
//! the resumable device download with its per-device token, and a
//! deployment rendering the release into its devices' specs.

use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tether_proto::desired::agent_release::signed_message;
use tether_testkit::api::ApiClient;
use tether_testkit::binaries::with_version_stamp;
use tether_testkit::sim_agent::DeviceCredentials;
use tether_testkit::tetherd::{Database, Tetherd};

use crate::support::on_both_databases;

on_both_databases!(a_binary_larger_than_a_chunk_is_read_back_by_any_range);

#[tokio::test]
async fn a_binary_over_the_configured_limit_is_refused_naming_it() -> anyhow::Result<()> {
    let config = tempfile::tempdir()?;
    let file = config.path().join("tetherd.toml");
    std::fs::write(&file, "[releases]\nmax_binary_bytes = 100000\n")?;
    let tetherd = Tetherd::start_with(
        Database::Sqlite,
        &["--config", file.to_str().context("a UTF-8 path")?],
    )
    .await?;
    let admin = tetherd.admin().await?;
    let path = "/api/v1/agent-releases/1.0.0/linux-x86_64";
    let stamp = tether_proto::version_stamp::STAMP_BYTES;
    let over = with_version_stamp(elf_like(62, 100_001 - stamp), "1.0.0")?;
    // Its length announced: refused before the body is read.
    let refused = admin
        .put_bytes(path, over.clone())
        .await?
        .expect_status(413)?;
    assert!(
        message(&refused).contains("larger than 100000 bytes"),
        "{refused}"
    );
    // Streamed without a length: refused once past the limit.
    let pieces = over.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
    let refused = admin
        .put_byte_stream(path, pieces)
        .await?
        .expect_status(413)?;
    assert!(
        message(&refused).contains("larger than 100000 bytes"),
        "{refused}"
    );
    let at_limit = with_version_stamp(elf_like(62, 100_000 - stamp), "1.0.0")?;
    let pieces = at_limit.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
    let published = admin
        .put_byte_stream(path, pieces)
        .await?
        .expect_status(201)?;
    assert_eq!(published["binaries"]["linux-x86_64"]["size"], 100_000);
    Ok(())
}

/// Review L6: a deployment naming a release while it is being deleted.
/// The deployment's transaction (as tetherd writes one: the release's
/// rows taken to share) is held open until the delete waits for it; once
/// it commits, the delete must see it and keep the release. A delete that
/// checked before and deleted after would leave a deployment naming a
/// release that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_deleted_while_a_deployment_starts_naming_it_stays() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Postgres).await?;
    let admin = tetherd.admin().await?;
    admin
        .put_bytes(
            "/api/v1/agent-releases/3.0.0/linux-x86_64",
            with_version_stamp(elf_like(62, 4096), "3.0.0")?,
        )
        .await?
        .expect_status(201)?;
    let url = tetherd.postgres().context("PostgreSQL")?.url();
    let database = sqlx::PgPool::connect(&url).await?;
    let mut rollout = database.begin().await?;
    sqlx::query("SELECT platform FROM agent_releases WHERE version = '3.0.0' FOR SHARE")
        .fetch_all(&mut *rollout)
        .await?;
    sqlx::query(
        "INSERT INTO deployments (name, spec, revision, phase, reason, created_at, updated_at) \
         VALUES ('racer', $1, 1, 'progressing', NULL, 0, 0)",
    )
    .bind(json!({"target": {"selector": "x=y"}, "agentRelease": "3.0.0"}).to_string())
    .execute(&mut *rollout)
    .await?;

    let deleting = tokio::spawn({
        let admin = admin.clone();
        async move { admin.delete("/api/v1/agent-releases/3.0.0").await }
    });
    tether_testkit::wait_until(
        "the delete to wait for the deployment's transaction",
        Duration::from_secs(30),
        || {
            let database = database.clone();
            async move {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND query LIKE '%agent_releases%'",
                )
                .fetch_one(&database)
                .await?;
                Ok((waiting > 0).then_some(()))
            }
        },
    )
    .await?;
    rollout.commit().await?;
    let kept = deleting.await??.expect_status(409)?;
    assert!(message(&kept).contains("racer"), "{kept}");
    admin
        .get("/api/v1/agent-releases/3.0.0")
        .await?
        .expect_status(200)?;
    Ok(())
}

/// The agent binary cargo built, a real x86_64 ELF executable, stamped
/// `version` as a release script does.
fn agent_binary(version: &str) -> anyhow::Result<Vec<u8>> {
    let path = tether_testkit::binaries::binary("tether-agent")?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    with_version_stamp(bytes, version)
}

/// `len` bytes that start with a 64-bit ELF executable header for
/// `machine`, each later byte telling its offset apart.
fn elf_like(machine: u16, len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[4] = 2;
    bytes[5] = 1;
    bytes[16..18].copy_from_slice(&2u16.to_le_bytes());
    bytes[18..20].copy_from_slice(&machine.to_le_bytes());
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

fn message(reply: &Value) -> String {
    reply["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn signing_key(client: &ApiClient) -> anyhow::Result<String> {
    let key = client
        .get("/api/v1/agent-releases/signing-key")
        .await?
        .expect_status(200)?;
    Ok(key["signingKey"]
        .as_str()
        .context("a signing key")?
        .to_owned())
}

/// The `agent` section of `deployment` in `device`'s spec, once there.
async fn agent_section(admin: &ApiClient, device: &str, deployment: &str) -> anyhow::Result<Value> {
    tether_testkit::wait_until(
        &format!("{device}'s spec to carry deployment {deployment}'s agent release"),
        Duration::from_secs(30),
        || async move {
            let shown = admin
                .get(&format!("/api/v1/devices/{device}"))
                .await?
                .expect_status(200)?;
            let agent = &shown["spec"]["deployments"][deployment]["agent"];
            Ok((!agent.is_null()).then(|| agent.clone()))
        },
    )
    .await
}

#[tokio::test]
async fn a_published_agent_is_signed_immutable_and_listed() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let agent = agent_binary("1.2.0")?;
    let path = "/api/v1/agent-releases/1.2.0/linux-x86_64";

    let published = admin
        .put_bytes(path, agent.clone())
        .await?
        .expect_status(201)?;
    let binary = &published["binaries"]["linux-x86_64"];
    assert_eq!(binary["sha256"], sha256_hex(&agent), "{published}");
    assert_eq!(binary["size"], agent.len() as u64);
    assert_eq!(binary["createdBy"], "admin");

    // The signature verifies with the key tetherd shows, over the message
    // the agent checks.
    let key = STANDARD.decode(signing_key(&admin).await?)?;
    let signature = STANDARD.decode(binary["signature"].as_str().context("signature")?)?;
    let signed = signed_message(
        "1.2.0",
        "linux-x86_64",
        &sha256_hex(&agent),
        agent.len() as u64,
    );
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
        .verify(&signed, &signature)
        .map_err(|_| anyhow::anyhow!("the signature does not verify"))?;
    assert!(
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
            .verify(
                &signed_message(
                    "1.2.1",
                    "linux-x86_64",
                    &sha256_hex(&agent),
                    agent.len() as u64
                ),
                &signature
            )
            .is_err(),
        "not as another version"
    );

    // The same bytes again change nothing; other bytes are refused.
    let again = admin
        .put_bytes(path, agent.clone())
        .await?
        .expect_status(200)?;
    assert_eq!(again, published);
    let mut other = agent.clone();
    *other.last_mut().context("not empty")? ^= 0xff;
    let refused = admin.put_bytes(path, other).await?.expect_status(409)?;
    assert!(message(&refused).contains("other bytes"), "{refused}");

    let listed = admin
        .get("/api/v1/agent-releases")
        .await?
        .expect_status(200)?;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(listed["items"][0], published);
    let shown = admin
        .get("/api/v1/agent-releases/1.2.0")
        .await?
        .expect_status(200)?;
    assert_eq!(shown, published);
    admin
        .get("/api/v1/agent-releases/9.9.9")
        .await?
        .expect_status(404)?;

    // What an enrolling agent pins is that same key.
    let created = admin
        .post("/api/v1/devices", json!({"name": "pin-1"}))
        .await?
        .expect_status(201)?;
    let token = created["enrollment"]["token"].as_str().context("token")?;
    let key_pair = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key_pair)?
        .pem()?;
    let enrolled = tetherd
        .anonymous()?
        .post("/api/v1/enroll", json!({"token": token, "csrPem": csr}))
        .await?
        .expect_status(200)?;
    assert_eq!(
        enrolled["releaseSigningKey"].as_str(),
        Some(STANDARD.encode(&key).as_str())
    );
    Ok(())
}

#[tokio::test]
async fn what_is_not_an_agent_for_the_platform_is_refused_naming_the_problem() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let refused = |reply: tether_testkit::api::Reply, needle: &str| -> anyhow::Result<()> {
        let body = reply.expect_status(400)?;
        anyhow::ensure!(message(&body).contains(needle), "{needle:?} not in {body}");
        Ok(())
    };
    let put = |path: &'static str, body: Vec<u8>| {
        let admin = admin.clone();
        async move { admin.put_bytes(path, body).await }
    };
    refused(
        put(
            "/api/v1/agent-releases/1.0/linux-x86_64",
            b"#!/bin/sh\necho not an agent\n".to_vec(),
        )
        .await?,
        "not an ELF executable",
    )?;
    refused(
        put(
            "/api/v1/agent-releases/1.0/linux-aarch64",
            elf_like(62, 4096),
        )
        .await?,
        "is an executable for linux-x86_64, not for linux-aarch64",
    )?;
    refused(
        put(
            "/api/v1/agent-releases/1.0/linux-x86_64",
            elf_like(40, 4096),
        )
        .await?,
        "machine 40",
    )?;
    refused(
        put("/api/v1/agent-releases/1.0/linux-x86_64", Vec::new()).await?,
        "empty",
    )?;
    refused(
        put(
            "/api/v1/agent-releases/-1.0/linux-x86_64",
            elf_like(62, 4096),
        )
        .await?,
        "not a valid release version",
    )?;
    refused(
        put("/api/v1/agent-releases/1.0/Linux", elf_like(62, 4096)).await?,
        "not a platform",
    )?;
    // Not stamped with the release's version: swapped in, the agent would
    // report another version than the one it was sent.
    refused(
        put(
            "/api/v1/agent-releases/1.3.0/linux-x86_64",
            agent_binary("1.2.0")?,
        )
        .await?,
        "is stamped with version 1.2.0, not the release's 1.3.0",
    )?;
    refused(
        put(
            "/api/v1/agent-releases/1.0/linux-x86_64",
            elf_like(62, 4096),
        )
        .await?,
        "carries no version stamp",
    )?;
    let listed = admin
        .get("/api/v1/agent-releases")
        .await?
        .expect_status(200)?;
    assert_eq!(listed["items"], json!([]), "nothing was stored");

    // Viewers see releases; only operators publish and delete.
    let viewer = tetherd.user_with_role("viewer").await?;
    viewer
        .put_bytes(
            "/api/v1/agent-releases/1.0/linux-x86_64",
            elf_like(62, 4096),
        )
        .await?
        .expect_status(403)?;
    viewer
        .get("/api/v1/agent-releases")
        .await?
        .expect_status(200)?;
    signing_key(&viewer).await?;
    let operator = tetherd.user_with_role("operator").await?;
    operator
        .put_bytes(
            "/api/v1/agent-releases/1.0/linux-aarch64",
            with_version_stamp(elf_like(183, 4096), "1.0")?,
        )
        .await?
        .expect_status(201)?;
    viewer
        .delete("/api/v1/agent-releases/1.0")
        .await?
        .expect_status(403)?;
    Ok(())
}

#[tokio::test]
async fn a_deployment_gives_each_device_its_release_and_a_token_that_downloads_only_it()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let agent = agent_binary("1.2.0")?;
    let release = admin
        .put_bytes("/api/v1/agent-releases/1.2.0/linux-x86_64", agent.clone())
        .await?
        .expect_status(201)?;
    admin
        .put_bytes(
            "/api/v1/agent-releases/1.3.0/linux-x86_64",
            with_version_stamp(elf_like(62, 3000), "1.3.0")?,
        )
        .await?
        .expect_status(201)?;
    for name in ["edge-1", "edge-2"] {
        DeviceCredentials::enroll_labelled(&admin, name, json!({"fleet": "a"})).await?;
    }

    let unknown = admin
        .post(
            "/api/v1/deployments",
            json!({"name": "tether-agent",
                   "spec": {"target": {"selector": "fleet=a"}, "agentRelease": "2.0.0"}}),
        )
        .await?
        .expect_status(400)?;
    assert_eq!(
        unknown["error"]["details"]["fields"][0]["path"], "spec.agentRelease",
        "{unknown}"
    );
    assert!(
        message(&unknown).contains("unknown agent release"),
        "{unknown}"
    );
    let pointless = admin
        .post(
            "/api/v1/deployments",
            json!({"name": "tether-agent",
                   "spec": {"target": {"selector": "fleet=a"}, "allowAgentDowngrade": true}}),
        )
        .await?
        .expect_status(400)?;
    assert_eq!(
        pointless["error"]["details"]["fields"][0]["path"], "spec.allowAgentDowngrade",
        "{pointless}"
    );

    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "tether-agent",
                   "spec": {"target": {"selector": "fleet=a"}, "agentRelease": "1.2.0",
                            "rollout": {"batchPercent": 100}}}),
        )
        .await?
        .expect_status(201)?;
    let key = signing_key(&admin).await?;
    let one = agent_section(&admin, "edge-1", "tether-agent").await?;
    let two = agent_section(&admin, "edge-2", "tether-agent").await?;
    assert_eq!(one["version"], "1.2.0");
    assert_eq!(one["signingKey"], key);
    assert!(one["allowDowngrade"].is_null(), "{one}");
    let published = &release["binaries"]["linux-x86_64"];
    assert_eq!(
        one["binaries"]["linux-x86_64"],
        json!({"sha256": published["sha256"], "size": published["size"],
               "signature": published["signature"]}),
        "{one}"
    );
    assert_ne!(
        one["downloadToken"], two["downloadToken"],
        "one token per device"
    );
    let token = one["downloadToken"].as_str().context("a token")?.to_owned();
    let device = tetherd.anonymous()?.with_token(Some(token.clone()));
    let binary = "/api/v1/agent-releases/1.2.0/linux-x86_64/binary";

    let whole = device.get_bytes(binary, None).await?;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-length"), agent.len().to_string());
    assert!(whole.body == agent, "the whole binary comes back");
    // Resuming past the first chunk, and a window across a chunk's end.
    let resumed = device.get_bytes(binary, Some("bytes=1048570-")).await?;
    assert_eq!(resumed.status, 206);
    assert_eq!(
        resumed.header("content-range"),
        format!("bytes 1048570-{}/{}", agent.len() - 1, agent.len())
    );
    assert!(
        resumed.body == agent[1_048_570..],
        "the rest from byte 1048570"
    );
    let window = device
        .get_bytes(binary, Some("bytes=1048000-1049000"))
        .await?;
    assert_eq!(window.status, 206);
    assert!(window.body == agent[1_048_000..=1_049_000]);
    let past = device
        .get_bytes(binary, Some(&format!("bytes={}-", agent.len())))
        .await?;
    assert_eq!(past.status, 416);
    assert_eq!(
        past.header("content-range"),
        format!("bytes */{}", agent.len())
    );

    // Another release, a forged token, none: 401. A platform the release
    // lacks: 404.
    let other_release = device
        .get_bytes("/api/v1/agent-releases/1.3.0/linux-x86_64/binary", None)
        .await?;
    assert_eq!(other_release.status, 401);
    let forged = token.replacen("edge-1", "edge-2", 1);
    for bad in [Some(forged), Some("garbage".to_owned()), None] {
        let reply = device
            .with_token(bad.clone())
            .get_bytes(binary, None)
            .await?;
        assert_eq!(reply.status, 401, "{bad:?}");
    }
    let missing = device
        .get_bytes("/api/v1/agent-releases/1.2.0/linux-aarch64/binary", None)
        .await?;
    assert_eq!(missing.status, 404);

    // Two downloads at once per device; a third waits its turn.
    let first = device.open(binary).await?;
    let second = device.open(binary).await?;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = device.get_bytes(binary, Some("bytes=0-9")).await?;
    assert_eq!(third.status, 429);
    drop((first, second));
    tether_testkit::wait_until(
        "a download slot to be free again",
        Duration::from_secs(10),
        || {
            let device = device.clone();
            async move {
                let reply = device.get_bytes(binary, Some("bytes=0-9")).await?;
                Ok((reply.status == 206).then_some(()))
            }
        },
    )
    .await?;

    // A release a deployment names stays; one no deployment names goes.
    let in_use = admin
        .delete("/api/v1/agent-releases/1.2.0")
        .await?
        .expect_status(409)?;
    assert!(message(&in_use).contains("tether-agent"), "{in_use}");
    admin
        .delete("/api/v1/agent-releases/1.3.0")
        .await?
        .expect_status(204)?;
    admin
        .get("/api/v1/agent-releases/1.3.0")
        .await?
        .expect_status(404)?;

    // Moving the deployment on to another release one device at a time:
    // the device not yet moved still carries 1.2.0, which stays.
    admin
        .put_bytes(
            "/api/v1/agent-releases/1.4.0/linux-x86_64",
            with_version_stamp(elf_like(62, 3000), "1.4.0")?,
        )
        .await?
        .expect_status(201)?;
    admin
        .put_json(
            "/api/v1/deployments/tether-agent",
            json!({"target": {"selector": "fleet=a"}, "agentRelease": "1.4.0",
                   "allowAgentDowngrade": true, "rollout": {"batchSize": 1}}),
        )
        .await?
        .expect_status(200)?;
    tether_testkit::wait_until(
        "one device to be given release 1.4.0",
        Duration::from_secs(30),
        || async {
            let mut moved = 0;
            for device in ["edge-1", "edge-2"] {
                let section = agent_section(&admin, device, "tether-agent").await?;
                if section["version"] == "1.4.0" {
                    // The deployment's permission to downgrade, carried to
                    // the agent, which refuses an older release otherwise.
                    anyhow::ensure!(section["allowDowngrade"] == true, "{section}");
                    moved += 1;
                }
            }
            Ok((moved == 1).then_some(()))
        },
    )
    .await?;
    let carried = admin
        .delete("/api/v1/agent-releases/1.2.0")
        .await?
        .expect_status(409)?;
    assert!(
        message(&carried).contains("still in the spec of device(s) edge-"),
        "{carried}"
    );

    // A deleted device's token is worthless.
    admin
        .delete("/api/v1/devices/edge-1")
        .await?
        .expect_status(204)?;
    let gone = device.get_bytes(binary, Some("bytes=0-9")).await?;
    assert_eq!(gone.status, 401);
    Ok(())
}

/// The chunked storage on both databases: a binary of several chunks
/// published and read back whole and by ranges on and across chunk ends.
async fn a_binary_larger_than_a_chunk_is_read_back_by_any_range(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    const MIB: usize = 1024 * 1024;
    let binary = with_version_stamp(elf_like(183, 2 * MIB + 12_345), "0.9.0")?;
    admin
        .put_bytes("/api/v1/agent-releases/0.9.0/linux-aarch64", binary.clone())
        .await?
        .expect_status(201)?;
    DeviceCredentials::enroll_labelled(&admin, "arm-1", json!({"arch": "arm"})).await?;
    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "agent", "spec": {"target": {"device": "arm-1"}, "agentRelease": "0.9.0"}}),
        )
        .await?
        .expect_status(201)?;
    let section = agent_section(&admin, "arm-1", "agent").await?;
    let device = tetherd
        .anonymous()?
        .with_token(section["downloadToken"].as_str().map(str::to_owned));
    let path = "/api/v1/agent-releases/0.9.0/linux-aarch64/binary";
    let whole = device.get_bytes(path, None).await?;
    assert_eq!(whole.status, 200);
    assert!(whole.body == binary);
    for (start, end) in [
        (0, MIB - 1),
        (MIB - 1, MIB),
        (MIB, 2 * MIB - 1),
        (2 * MIB - 5, binary.len() - 1),
        (binary.len() - 1, binary.len() - 1),
    ] {
        let part = device
            .get_bytes(path, Some(&format!("bytes={start}-{end}")))
            .await?;
        assert_eq!(part.status, 206, "{start}-{end}");
        assert!(part.body == binary[start..=end], "bytes {start}-{end}");
    }
    Ok(())
}

/// Replicas share the release keys as they share the CA: a token one
/// replica rendered downloads from another, and a replica with keys of
/// its own refuses to start, naming the files to copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_release_keys_and_refuse_other_ones() -> anyhow::Result<()> {
    let first = Tetherd::start(Database::Postgres).await?;
    let admin = first.admin().await?;
    let binary = with_version_stamp(elf_like(62, 1_500_000), "2.0.0")?;
    admin
        .put_bytes("/api/v1/agent-releases/2.0.0/linux-x86_64", binary.clone())
        .await?
        .expect_status(201)?;
    DeviceCredentials::enroll_labelled(&admin, "edge-1", json!({})).await?;
    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "agent", "spec": {"target": {"device": "edge-1"}, "agentRelease": "2.0.0"}}),
        )
        .await?
        .expect_status(201)?;
    let section = agent_section(&admin, "edge-1", "agent").await?;

    let second = Tetherd::start_replica_of(&first, &[]).await?;
    assert_eq!(
        signing_key(&second.admin().await?).await?,
        section["signingKey"]
    );
    let download = second
        .anonymous()?
        .with_token(section["downloadToken"].as_str().map(str::to_owned))
        .get_bytes(
            "/api/v1/agent-releases/2.0.0/linux-x86_64/binary",
            Some("bytes=1000000-"),
        )
        .await?;
    assert_eq!(download.status, 206);
    assert!(download.body == binary[1_000_000..]);

    for left_out in ["release-signing-key.pk8", "release-token.key"] {
        let error = match Tetherd::start_replica_without(&first, &[left_out]).await {
            Ok(_) => anyhow::bail!("a replica without {left_out} started"),
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains("this replica's agent release")
                && error.contains("is not the cluster's")
                && error.contains(left_out),
            "{error}"
        );
    }
    Ok(())
}
