//! Provisioning through tetherd's API (ADR 0025): policies, keys, a
//! device's registration under UNATTENDED and MANUAL policies, identity
//! by serial number, and refusals. The agents' side is in the CLI's tests.

use anyhow::Context as _;
use serde_json::{Value, json};
use tether_testkit::api::ApiClient;
use tether_testkit::tetherd::{Database, Tetherd};

use tether_server::auth::secret_hash;
use tether_server::store::ProvisioningKeyRecord;

use crate::support::{age_registrations, minutes_ago, on_both_databases, store_of};

/// A device's key pair and what it says about itself (the console's
/// approval test registers one too).
pub(crate) struct Hardware {
    key: rcgen::KeyPair,
    serial: &'static str,
}

impl Hardware {
    pub(crate) fn new(serial: &'static str) -> anyhow::Result<Self> {
        Ok(Self {
            key: rcgen::KeyPair::generate()?,
            serial,
        })
    }

    fn request(&self, key: &Value) -> anyhow::Result<Value> {
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&self.key)?
            .pem()?;
        Ok(json!({
            "keyId": key["keyId"], "secret": key["secret"], "csrPem": csr,
            "facts": {"hardwareSerial": self.serial, "hostname": "pi", "agentVersion": "test"}
        }))
    }

    pub(crate) async fn register(
        &self,
        anonymous: &ApiClient,
        key: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let reply = anonymous
            .post("/api/v1/register", self.request(key)?)
            .await?;
        let status = reply.status.as_u16();
        Ok((status, reply.body))
    }
}

/// Makes policy `name` with `spec` and answers a new key of it.
pub(crate) async fn policy(admin: &ApiClient, name: &str, spec: Value) -> anyhow::Result<Value> {
    admin
        .post(
            "/api/v1/provisioning-policies",
            json!({"name": name, "spec": spec}),
        )
        .await?
        .expect_status(201)?;
    admin
        .post(
            &format!("/api/v1/provisioning-policies/{name}/keys"),
            json!({}),
        )
        .await?
        .expect_status(201)
}

#[tokio::test]
async fn an_unattended_policy_creates_devices_from_its_template_and_knows_hardware_again()
-> anyhow::Result<()> {
    unattended(Database::Sqlite).await
}

#[tokio::test]
async fn an_unattended_policy_knows_hardware_again_on_postgres() -> anyhow::Result<()> {
    unattended(Database::Postgres).await
}

async fn unattended(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let key = policy(
        &admin,
        "lab-pis",
        json!({"mode": "UNATTENDED",
               "identityFieldPaths": ["status.deviceInfo.hardwareInformation.system.serialNumber"],
               "template": {"metadata": {"labels": {"device": "raspberry-pi"}},
                            "spec": {"loggingConfig": {"priority": 7, "enableJournalExport": true}}}}),
    )
    .await?;
    assert_eq!(key["kind"], "tether-provisioning-key");
    assert_eq!(key["policy"], "lab-pis");
    assert_eq!(key["server"], tetherd.api_url);
    assert!(
        key["caSha256"].as_str().is_some_and(|h| h.len() == 64),
        "{key}"
    );

    let first = Hardware::new("SN-0001")?;
    let (status, answer) = first.register(&anonymous, &key).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "registered");
    let device = answer["enrollment"]["device"]
        .as_str()
        .context("a device name")?
        .to_owned();
    assert!(device.starts_with("lab-pis-"), "{device}");
    assert!(answer["enrollment"]["certificatePem"].is_string());

    // The template's labels and spec are the device's.
    let created = admin
        .get(&format!("/api/v1/devices/{device}"))
        .await?
        .expect_status(200)?;
    assert_eq!(created["labels"]["device"], "raspberry-pi", "{created}");
    assert_eq!(created["policy"], "lab-pis");
    assert_eq!(created["specVersion"], 1);
    assert_eq!(created["spec"]["loggingConfig"]["priority"], 7);

    // The same key pair asking again (its answer was lost) is the same
    // registration, with a new certificate.
    let (status, again) = first.register(&anonymous, &key).await?;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["enrollment"]["device"], device.as_str());
    assert_ne!(
        again["enrollment"]["certificatePem"],
        answer["enrollment"]["certificatePem"]
    );
    // As often as a device may renew, no more: asking again is renewing.
    for _ in 0..4 {
        let (status, again) = first.register(&anonymous, &key).await?;
        assert_eq!(status, 200, "{again}");
    }
    let (status, limited) = first.register(&anonymous, &key).await?;
    assert_eq!(status, 429, "{limited}");
    assert_eq!(limited["error"]["code"], "too_many_renewals", "{limited}");

    // New media on the same hardware, a while later: a new key pair, the
    // same serial. (Within minutes, a second key pair would wait for an
    // operator: shown in
    // concurrent_first_registrations_of_one_identity_make_one_device.)
    age_registrations(&tetherd, 11).await?;
    let reflashed = Hardware::new("SN-0001")?;
    let (status, reused) = reflashed.register(&anonymous, &key).await?;
    assert_eq!(status, 200, "{reused}");
    assert_eq!(reused["enrollment"]["device"], device.as_str(), "reused");
    // The old media cannot take its device back.
    let (status, refused) = first.register(&anonymous, &key).await?;
    assert_eq!(status, 410, "{refused}");
    assert_eq!(refused["error"]["code"], "registration_superseded");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("new key pair"), "{message}");
    // Nor can the new media once its credential is revoked (a stolen
    // device's key pair is as good as its certificate was).
    admin
        .post(&format!("/api/v1/devices/{device}/revoke"), json!({}))
        .await?
        .expect_status(204)?;
    let (status, refused) = reflashed.register(&anonymous, &key).await?;
    assert_eq!(status, 410, "{refused}");
    // New media in the revoked device's hardware waits for an operator,
    // even under an unattended policy: revoked means shut out.
    age_registrations(&tetherd, 11).await?;
    let (status, waiting) = Hardware::new("SN-0001")?.register(&anonymous, &key).await?;
    assert_eq!(status, 202, "{waiting}");
    let approval = waiting["approval"].as_str().context("an approval id")?;
    let shown = admin
        .get(&format!("/api/v1/approvals/{approval}"))
        .await?
        .expect_status(200)?;
    assert_eq!(shown["device"], device.as_str(), "{shown}");
    assert!(
        shown.to_string().contains("was revoked"),
        "the reason is shown: {shown}"
    );

    // Other hardware is another device.
    let (status, other) = Hardware::new("SN-0002")?.register(&anonymous, &key).await?;
    assert_eq!(status, 200, "{other}");
    assert_ne!(other["enrollment"]["device"], device.as_str());
    let policy = admin
        .get("/api/v1/provisioning-policies/lab-pis")
        .await?
        .expect_status(200)?;
    assert_eq!(policy["devices"], 2, "{policy}");
    Ok(())
}

#[tokio::test]
async fn without_identity_fields_every_registration_is_a_new_device() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let key = policy(&admin, "plain", json!({"mode": "UNATTENDED"})).await?;
    let (_, first) = Hardware::new("SN-1")?.register(&anonymous, &key).await?;
    let (_, second) = Hardware::new("SN-1")?.register(&anonymous, &key).await?;
    assert_ne!(
        first["enrollment"]["device"], second["enrollment"]["device"],
        "seed 004: a device per registration"
    );
    Ok(())
}

#[tokio::test]
async fn a_manual_policy_waits_for_approval_and_a_denied_device_is_told_why() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let key = policy(
        &admin,
        "gateways",
        json!({"mode": "MANUAL", "identityFieldPaths": ["status.facts.hardwareSerial"],
               "template": {"metadata": {"labels": {"role": "gateway"}}}}),
    )
    .await?;

    let wanted = Hardware::new("GW-1")?;
    let (status, waiting) = wanted.register(&anonymous, &key).await?;
    assert_eq!(status, 202, "{waiting}");
    assert_eq!(waiting["state"], "pending");
    let approval = waiting["approval"].as_str().context("an approval id")?;
    assert!(waiting["retryAfterSeconds"].as_u64().is_some_and(|s| s > 0));
    // Asking again changes nothing until someone decides.
    let (status, still) = wanted.register(&anonymous, &key).await?;
    assert_eq!((status, &still["approval"]), (202, &waiting["approval"]));

    let pending = admin
        .get("/api/v1/approvals?state=pending")
        .await?
        .expect_status(200)?;
    let items = pending["items"].as_array().context("items")?;
    assert_eq!(items.len(), 1, "{pending}");
    assert_eq!(
        items[0]["facts"]["hardwareSerial"], "GW-1",
        "the facts are shown"
    );

    let approved = admin
        .post(
            &format!("/api/v1/approvals/{approval}/approve"),
            json!({"name": "gw-berlin"}),
        )
        .await?
        .expect_status(200)?;
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["device"], "gw-berlin");
    // A second decision is refused, naming the first.
    let twice = admin
        .post(&format!("/api/v1/approvals/{approval}/deny"), json!({}))
        .await?
        .expect_status(409)?;
    assert!(
        twice["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Approved")),
        "{twice}"
    );
    let (status, registered) = wanted.register(&anonymous, &key).await?;
    assert_eq!(status, 200, "{registered}");
    assert_eq!(registered["enrollment"]["device"], "gw-berlin");
    let device = admin
        .get("/api/v1/devices/gw-berlin")
        .await?
        .expect_status(200)?;
    assert_eq!(device["labels"]["role"], "gateway");
    assert!(device["enrolled"].as_bool().unwrap_or_default(), "{device}");

    // Another device, denied: it is told, with the reason, every time.
    let unwanted = Hardware::new("GW-666")?;
    let (_, waiting) = unwanted.register(&anonymous, &key).await?;
    let approval = waiting["approval"].as_str().context("an approval id")?;
    admin
        .post(
            &format!("/api/v1/approvals/{approval}/deny"),
            json!({"reason": "not one of ours"}),
        )
        .await?
        .expect_status(200)?;
    for _ in 0..2 {
        let (status, denied) = unwanted.register(&anonymous, &key).await?;
        assert_eq!(status, 403, "{denied}");
        let message = denied["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("not one of ours"), "{message}");
        assert!(message.contains(approval), "{message}");
    }
    // New media in the approved gateway: its serial names gw-berlin, so
    // approving reuses it whatever name is asked for.
    let reflashed = Hardware::new("GW-1")?;
    let (_, waiting) = reflashed.register(&anonymous, &key).await?;
    assert_eq!(waiting["state"], "pending");
    let approval = waiting["approval"].as_str().context("an approval id")?;
    let shown = admin
        .get(&format!("/api/v1/approvals/{approval}"))
        .await?
        .expect_status(200)?;
    assert_eq!(shown["device"], "gw-berlin", "the match is shown: {shown}");
    admin
        .post(
            &format!("/api/v1/approvals/{approval}/approve"),
            json!({"name": "ignored"}),
        )
        .await?
        .expect_status(200)?;
    let (_, registered) = reflashed.register(&anonymous, &key).await?;
    assert_eq!(registered["enrollment"]["device"], "gw-berlin");
    // The gateway's old media is out.
    let (status, refused) = wanted.register(&anonymous, &key).await?;
    assert_eq!(status, 410, "{refused}");
    Ok(())
}

#[tokio::test]
async fn revoked_expired_and_made_up_keys_are_refused_by_name() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let key = policy(&admin, "lab", json!({"mode": "UNATTENDED"})).await?;
    let hardware = Hardware::new("SN-9")?;

    let mut wrong = key.clone();
    wrong["secret"] = json!("0".repeat(64));
    let (status, refused) = hardware.register(&anonymous, &wrong).await?;
    assert_eq!(status, 401, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown provisioning key")
    );

    let id = key["keyId"].as_str().context("key id")?;
    admin
        .delete(&format!("/api/v1/provisioning-policies/lab/keys/{id}"))
        .await?
        .expect_status(204)?;
    let (status, refused) = hardware.register(&anonymous, &key).await?;
    assert_eq!(status, 401, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("was revoked")
    );
    let keys = admin
        .get("/api/v1/provisioning-policies/lab/keys")
        .await?
        .expect_status(200)?;
    assert!(keys[0]["revokedAt"].is_string(), "{keys}");
    assert!(keys[0].get("secret").is_none(), "no secret listed: {keys}");
    // A revoked key is no guess: boards of a site booting an old image,
    // all behind one address, are refused without the address having to
    // wait (5 free attempts before the throttle, by default).
    for _ in 0..8 {
        let (status, refused) = hardware.register(&anonymous, &key).await?;
        assert_eq!(status, 401, "{refused}");
    }

    // A key that would be expired already is not made.
    let refused = admin
        .post(
            "/api/v1/provisioning-policies/lab/keys",
            json!({"expiresAt": "2020-01-01T00:00:00Z"}),
        )
        .await?
        .expect_status(400)?;
    assert_eq!(
        refused["error"]["details"]["fields"][0]["path"],
        "expiresAt"
    );
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not in the future"), "{message}");

    // One that expired since, written through the store: no waiting for a
    // clock.
    let secret = "ab".repeat(32);
    store_of(&tetherd)
        .await?
        .insert_provisioning_key(&ProvisioningKeyRecord {
            id: "expired-1".into(),
            policy: "lab".into(),
            secret_hash: secret_hash(&secret),
            created_at: minutes_ago(120),
            created_by: "admin".into(),
            expires_at: Some(minutes_ago(60)),
            revoked_at: None,
            last_used_at: None,
        })
        .await?;
    let expired = json!({"keyId": "expired-1", "secret": secret});
    let (status, refused) = hardware.register(&anonymous, &expired).await?;
    assert_eq!(status, 401, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("expired-1 expired at"), "{message}");
    // Made-up keys are guesses: after a few (the first one above counted
    // too), the address waits.
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(hardware.register(&anonymous, &wrong).await?.0);
    }
    assert_eq!(answers, [401, 401, 401, 401, 401, 429]);

    // Bad policies name their problem.
    let bad = admin
        .post(
            "/api/v1/provisioning-policies",
            json!({"name": "x", "spec": {"mode": "UNATTENDED", "identityFieldPaths": ["status.facts.cpuModel"]}}),
        )
        .await?
        .expect_status(400)?;
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("identityFieldPaths[0]"),
        "{bad}"
    );
    let bad = admin
        .post(
            "/api/v1/provisioning-policies",
            json!({"name": "x", "spec": {"mode": "UNATTENDED", "template": {"spec": {"loggingConfig": {"priority": 9}}}}}),
        )
        .await?
        .expect_status(400)?;
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("loggingConfig.priority"),
        "{bad}"
    );
    Ok(())
}

/// The files a simulated machine gives its agent: the provisioning key
/// and the facts of its hardware.
fn machine_env(
    dir: &std::path::Path,
    key: &Value,
    serial: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let key_file = dir.join("provisioning-key.json");
    std::fs::write(&key_file, serde_json::to_vec(key)?)?;
    let facts_file = dir.join(format!("facts-{serial}.json"));
    std::fs::write(&facts_file, json!({"hardwareSerial": serial}).to_string())?;
    Ok(vec![
        (
            "TETHER_PROVISIONING_KEY".into(),
            key_file.display().to_string(),
        ),
        (
            "TETHER_AGENT_FACTS_FILE".into(),
            facts_file.display().to_string(),
        ),
        (
            "TETHER_AGENT_REGISTRATION_MAX_WAIT_SECONDS".into(),
            "1".into(),
        ),
    ])
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Waits until the device's reported status names `serial`.
async fn wait_serial(admin: &ApiClient, device: &str, serial: &str) -> anyhow::Result<()> {
    tether_testkit::wait_until(
        &format!("{device} to report serial {serial}"),
        std::time::Duration::from_secs(30),
        || async move {
            let got = admin
                .get(&format!("/api/v1/devices/{device}"))
                .await?
                .expect_status(200)?;
            Ok((got["status"]["facts"]["hardwareSerial"] == serial).then_some(()))
        },
    )
    .await
}

/// The id of the oldest registration waiting for approval, once there is one.
async fn pending_approval(admin: &ApiClient) -> anyhow::Result<String> {
    tether_testkit::wait_until(
        "a pending approval",
        std::time::Duration::from_secs(30),
        || async move {
            let page = admin
                .get("/api/v1/approvals?state=pending")
                .await?
                .expect_status(200)?;
            Ok(page["items"][0]["id"].as_str().map(str::to_owned))
        },
    )
    .await
}

/// Another key of `policy`.
async fn new_key(admin: &ApiClient, policy: &str) -> anyhow::Result<Value> {
    admin
        .post(
            &format!("/api/v1/provisioning-policies/{policy}/keys"),
            json!({}),
        )
        .await?
        .expect_status(201)
}

/// Registers `count` new key pairs with `serial`, `concurrency` at a time,
/// the i-th with `keys[i % keys.len()]`: each answer's status and body.
async fn register_many(
    anonymous: &ApiClient,
    keys: &[Value],
    serial: &'static str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<(u16, Value)>> {
    use futures::StreamExt as _;
    futures::stream::iter(0..count)
        .map(|i| {
            let key = &keys[i % keys.len()];
            async move { Hardware::new(serial)?.register(anonymous, key).await }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

fn statuses(answers: &[(u16, Value)]) -> std::collections::BTreeMap<u16, usize> {
    let mut counted = std::collections::BTreeMap::new();
    for (status, _) in answers {
        *counted.entry(*status).or_default() += 1;
    }
    counted
}

/// Leaked MANUAL keys fill the approval queue only up to its cap, even
/// all at once: the count and the insert are one transaction behind the
/// policy's row, so 32 more than the cap through 12 keys (each under its
/// own cap), 32 at a time, leave exactly the cap waiting. A registration
/// body past 32 KiB is refused before it is parsed.
async fn a_policy_keeps_at_most_its_cap_of_pending_registrations(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let mut keys = vec![policy(&admin, "gateways", json!({"mode": "MANUAL"})).await?];
    for _ in 1..12 {
        keys.push(new_key(&admin, "gateways").await?);
    }
    let cap = usize::try_from(tether_server::provisioning::MAX_PENDING_PER_POLICY)?;
    let answers = register_many(&anonymous, &keys, "GW", cap + 32, 32).await?;
    assert_eq!(
        statuses(&answers),
        [(202, cap), (429, 32)].into(),
        "exactly the cap waits"
    );
    for (status, refused) in answers.iter().filter(|(status, _)| *status == 429) {
        assert_eq!(
            refused["error"]["code"], "too_many_pending",
            "{status} {refused}"
        );
        let message = refused["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("tether approvals list"), "{message}");
    }
    let shown = admin
        .get("/api/v1/provisioning-policies/gateways")
        .await?
        .expect_status(200)?;
    assert_eq!(shown["pendingApprovals"], cap, "{shown}");

    // Deciding one makes room.
    let approval = pending_approval(&admin).await?;
    admin
        .post(&format!("/api/v1/approvals/{approval}/deny"), json!({}))
        .await?
        .expect_status(200)?;
    let (status, waiting) = Hardware::new("GW")?.register(&anonymous, &keys[0]).await?;
    assert_eq!(status, 202, "{waiting}");

    let mut oversized = Hardware::new("GW")?.request(&keys[0])?;
    oversized["facts"]["cpuModel"] = json!("x".repeat(40 * 1024));
    let reply = anonymous.post("/api/v1/register", oversized).await?;
    assert_eq!(reply.status.as_u16(), 413, "{}", reply.body);
    Ok(())
}

/// A leaked key fills only its share of the approval queue, and revoking
/// it takes its requests out: they are denied, say why, and can no longer
/// be approved; the policy's other keys are untouched.
async fn one_key_fills_only_its_share_and_revoking_it_denies_its_requests(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let leaked = policy(&admin, "gateways", json!({"mode": "MANUAL"})).await?;
    let other = new_key(&admin, "gateways").await?;
    let per_key = usize::try_from(tether_server::provisioning::MAX_PENDING_PER_KEY)?;
    let answers = register_many(
        &anonymous,
        std::slice::from_ref(&leaked),
        "GW",
        per_key + 8,
        16,
    )
    .await?;
    assert_eq!(statuses(&answers), [(202, per_key), (429, 8)].into());
    let leaked_id = leaked["keyId"].as_str().context("key id")?;
    let (_, refused) = answers
        .iter()
        .find(|(status, _)| *status == 429)
        .context("a refusal")?;
    assert_eq!(refused["error"]["code"], "too_many_pending", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("provisioning key {leaked_id}")),
        "the key is named: {message}"
    );
    let stays = Hardware::new("GW-OK")?;
    let (status, waiting) = stays.register(&anonymous, &other).await?;
    assert_eq!(status, 202, "another key still gets in: {waiting}");

    let polling = Hardware::new("GW")?;
    admin
        .delete(&format!(
            "/api/v1/provisioning-policies/gateways/keys/{leaked_id}"
        ))
        .await?
        .expect_status(204)?;
    let pending = admin
        .get("/api/v1/approvals?state=pending")
        .await?
        .expect_status(200)?;
    let items = pending["items"].as_array().context("items")?;
    assert_eq!(
        items.len(),
        1,
        "only the other key's request waits: {pending}"
    );
    assert_eq!(items[0]["keyId"], other["keyId"]);
    let denied = admin
        .get("/api/v1/approvals?state=denied")
        .await?
        .expect_status(200)?;
    let denied = denied["items"].as_array().context("items")?;
    assert_eq!(denied.len(), per_key);
    for approval in denied {
        assert_eq!(approval["reason"], "provisioning key revoked", "{approval}");
        assert_eq!(approval["keyId"], leaked_id, "{approval}");
        assert_eq!(approval["decidedBy"], "admin", "{approval}");
    }
    let id = denied[0]["id"].as_str().context("an approval id")?;
    let refused = admin
        .post(&format!("/api/v1/approvals/{id}/approve"), json!({}))
        .await?
        .expect_status(409)?;
    assert_eq!(refused["error"]["code"], "already_decided", "{refused}");
    // The devices behind it are told at once that their key is revoked.
    let (status, refused) = polling.register(&anonymous, &leaked).await?;
    assert_eq!(status, 401, "{refused}");
    Ok(())
}

/// An UNATTENDED policy creates no more than `maxDevices`, even from a
/// burst of registrations all at once (counted in the transaction that
/// creates the device), and approves no more than
/// `maxRegistrationsPerHour` by itself (counted in the store, so across
/// replicas); both refusals name the field.
async fn an_unattended_policy_stops_at_max_devices_and_its_hourly_rate(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let burst = policy(
        &admin,
        "burst",
        json!({"mode": "UNATTENDED", "maxDevices": 5}),
    )
    .await?;
    let answers = register_many(&anonymous, &[burst], "SN", 24, 24).await?;
    assert_eq!(statuses(&answers), [(200, 5), (429, 19)].into());
    let (_, refused) = answers
        .iter()
        .find(|(status, _)| *status == 429)
        .context("a refusal")?;
    assert_eq!(refused["error"]["code"], "max_devices_reached", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("maxDevices (5)"), "{message}");
    let shown = admin
        .get("/api/v1/provisioning-policies/burst")
        .await?
        .expect_status(200)?;
    assert_eq!(shown["devices"], 5, "{shown}");

    // Reusing a device creates none: past maxDevices it still registers,
    // until the hour's rate is spent.
    let key = policy(
        &admin,
        "rated",
        json!({"mode": "UNATTENDED", "identityFieldPaths": ["status.facts.hardwareSerial"],
               "maxDevices": 1, "maxRegistrationsPerHour": 3, "sharedIdentityWindowMinutes": 0}),
    )
    .await?;
    let (status, first) = Hardware::new("SN-R")?.register(&anonymous, &key).await?;
    assert_eq!(status, 200, "{first}");
    for _ in 0..2 {
        let (status, reflashed) = Hardware::new("SN-R")?.register(&anonymous, &key).await?;
        assert_eq!(status, 200, "{reflashed}");
        assert_eq!(
            reflashed["enrollment"]["device"],
            first["enrollment"]["device"]
        );
    }
    let (status, refused) = Hardware::new("SN-R")?.register(&anonymous, &key).await?;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "registration_rate_exceeded");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("maxRegistrationsPerHour (3)"), "{message}");

    let bad = admin
        .post(
            "/api/v1/provisioning-policies",
            json!({"name": "none", "spec": {"mode": "UNATTENDED", "maxDevices": 0}}),
        )
        .await?
        .expect_status(400)?;
    let message = bad["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("maxDevices is 0"), "{message}");
    Ok(())
}

/// Two replicas on one database share a policy's limits: registrations
/// sent to both at once create no more than `maxDevices`, and approve no
/// more than `maxRegistrationsPerHour`, counted together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_policys_device_cap_and_hourly_rate() -> anyhow::Result<()> {
    let first = Tetherd::start(Database::Postgres).await?;
    let second = Tetherd::start_replica_of(&first, &[]).await?;
    let admin = first.admin().await?;
    let both = [first.anonymous()?, second.anonymous()?];
    let capped = policy(
        &admin,
        "capped",
        json!({"mode": "UNATTENDED", "maxDevices": 4}),
    )
    .await?;
    let rated = policy(
        &admin,
        "rated",
        json!({"mode": "UNATTENDED", "maxRegistrationsPerHour": 6}),
    )
    .await?;
    for (key, allowed, code) in [
        (&capped, 4, "max_devices_reached"),
        (&rated, 6, "registration_rate_exceeded"),
    ] {
        use futures::StreamExt as _;
        let answers: Vec<(u16, Value)> = futures::stream::iter(0..20)
            .map(|i| {
                let replica = &both[i % 2];
                async move { Hardware::new("SN")?.register(replica, key).await }
            })
            .buffer_unordered(20)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        assert_eq!(
            statuses(&answers),
            [(200, allowed), (429, 20 - allowed)].into(),
            "{answers:?}"
        );
        assert!(
            answers
                .iter()
                .filter(|(status, _)| *status == 429)
                .all(|(_, refused)| refused["error"]["code"] == code),
            "{answers:?}"
        );
    }
    let shown = admin
        .get("/api/v1/provisioning-policies/capped")
        .await?
        .expect_status(200)?;
    assert_eq!(shown["devices"], 4, "{shown}");
    drop(second);
    Ok(())
}

/// Boards booting together from one image (one identity, a key pair
/// each) make one device: the identity's unique key decides which
/// registration creates it, and the others wait for an operator, saying
/// how many key pairs claimed the identity.
async fn concurrent_first_registrations_of_one_identity_make_one_device(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let key = policy(
        &admin,
        "pis",
        json!({"mode": "UNATTENDED", "identityFieldPaths": ["status.facts.hardwareSerial"]}),
    )
    .await?;
    let answers = register_many(&anonymous, std::slice::from_ref(&key), "SN-IMAGE", 8, 8).await?;
    assert_eq!(statuses(&answers), [(200, 1), (202, 7)].into());
    let (_, created) = answers
        .iter()
        .find(|(status, _)| *status == 200)
        .context("the one registered")?;
    let device = &created["enrollment"]["device"];
    let shown = admin
        .get("/api/v1/provisioning-policies/pis")
        .await?
        .expect_status(200)?;
    assert_eq!(shown["devices"], 1, "{shown}");
    assert_eq!(shown["pendingApprovals"], 7, "{shown}");
    let pending = admin
        .get("/api/v1/approvals?state=pending")
        .await?
        .expect_status(200)?;
    for approval in pending["items"].as_array().context("items")? {
        assert_eq!(&approval["device"], device, "{approval}");
        let reason = approval["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("key pairs claimed this identity within 10 minutes"),
            "{reason}"
        );
    }

    // Later boards of the image wait too, counted.
    let (status, later) = Hardware::new("SN-IMAGE")?
        .register(&anonymous, &key)
        .await?;
    assert_eq!(status, 202, "{later}");
    let approval = later["approval"].as_str().context("an approval id")?;
    let shown = admin
        .get(&format!("/api/v1/approvals/{approval}"))
        .await?
        .expect_status(200)?;
    let reason = shown["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("9 key pairs claimed this identity within 10 minutes"),
        "{reason}"
    );
    Ok(())
}

on_both_databases!(
    a_policy_keeps_at_most_its_cap_of_pending_registrations,
    one_key_fills_only_its_share_and_revoking_it_denies_its_requests,
    an_unattended_policy_stops_at_max_devices_and_its_hourly_rate,
    concurrent_first_registrations_of_one_identity_make_one_device,
);

/// A device's report is its word only: an enrolled device claiming the
/// serial of another device does not take that hardware's identity, so the
/// hardware's next registration still finds its own device.
#[tokio::test]
async fn a_device_reporting_another_devices_serial_does_not_take_its_identity() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let key = policy(
        &admin,
        "pis",
        json!({"mode": "UNATTENDED", "identityFieldPaths": [tether_proto::provisioning::SEED_SERIAL_PATH]}),
    )
    .await?;
    let (status, victim) = Hardware::new("SN-V")?.register(&anonymous, &key).await?;
    assert_eq!(status, 200, "{victim}");
    let victim = victim["enrollment"]["device"].clone();

    let files = tempfile::tempdir()?;
    let mut hostile = tether_testkit::Agent::unenrolled(
        "hostile",
        &pairs(&machine_env(files.path(), &key, "SN-H")?),
    )?;
    hostile.start()?;
    let hostile_device = hostile.wait_device().await?;
    hostile.stop().await?;
    hostile.set_env(&pairs(&machine_env(files.path(), &key, "SN-V")?));
    hostile.start()?;
    wait_serial(&admin, &hostile_device, "SN-V").await?;
    tether_testkit::wait_until(
        "tetherd to refuse moving the identity",
        std::time::Duration::from_secs(30),
        || async {
            Ok(tetherd
                .log()
                .contains("the identity stays with")
                .then_some(()))
        },
    )
    .await?;

    // New media in the victim's hardware, a while later, finds the
    // victim's device.
    age_registrations(&tetherd, 11).await?;
    let (status, reflashed) = Hardware::new("SN-V")?.register(&anonymous, &key).await?;
    assert_eq!(status, 200, "{reflashed}");
    assert_eq!(reflashed["enrollment"]["device"], victim);
    hostile.stop().await?;
    Ok(())
}

/// Seed 004's hardware-failure section with real agents: the state dir is
/// the boot media, the facts file the hardware.
#[tokio::test]
async fn the_three_hardware_replacements_of_seed_004_keep_or_make_devices_as_it_says()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let key = policy(
        &admin,
        "pis",
        json!({"mode": "UNATTENDED", "identityFieldPaths": [tether_proto::provisioning::SEED_SERIAL_PATH]}),
    )
    .await?;
    let files = tempfile::tempdir()?;

    // First boot: hardware A, media 1.
    let mut media_1 = tether_testkit::Agent::unenrolled(
        "media-1",
        &pairs(&machine_env(files.path(), &key, "SN-A")?),
    )?;
    media_1.start()?;
    let device = media_1.wait_device().await?;
    assert!(device.starts_with("pis-"), "{device}");
    wait_serial(&admin, &device, "SN-A").await?;
    media_1.stop().await?;

    // 1. New hardware B, same media: the credential on the media wins; the
    //    device's serial becomes B.
    media_1.set_env(&pairs(&machine_env(files.path(), &key, "SN-B")?));
    media_1.start()?;
    wait_serial(&admin, &device, "SN-B").await?;
    assert_eq!(
        media_1.log().matches("registering with").count(),
        1,
        "only the first boot registered; then the media's credential was used: {}",
        media_1.log()
    );
    media_1.stop().await?;

    // 2. Same hardware B, new media 2: no credential; the serial finds the
    //    device, which is reused.
    let mut media_2 = tether_testkit::Agent::unenrolled(
        "media-2",
        &pairs(&machine_env(files.path(), &key, "SN-B")?),
    )?;
    media_2.start()?;
    assert_eq!(
        media_2.wait_device().await?,
        device,
        "same hardware, same device"
    );
    media_2.stop().await?;

    // 3. Both replaced (hardware C, media 3): a new device.
    let mut media_3 = tether_testkit::Agent::unenrolled(
        "media-3",
        &pairs(&machine_env(files.path(), &key, "SN-C")?),
    )?;
    media_3.start()?;
    let other = media_3.wait_device().await?;
    assert_ne!(other, device, "nothing identifies the old device");
    media_3.stop().await?;

    // …unless the operator detaches the old device's credential and writes
    // one for it into the new image (hardware D, media 4).
    admin
        .post(&format!("/api/v1/devices/{device}/revoke"), json!({}))
        .await?
        .expect_status(204)?;
    let token = admin
        .post(
            &format!("/api/v1/devices/{device}/enrollment-token"),
            json!({}),
        )
        .await?;
    anyhow::ensure!(
        token.status.is_success(),
        "enrollment token: {}",
        token.body
    );
    let boot = files.path().join("boot");
    std::fs::create_dir_all(boot.join("tether"))?;
    std::fs::write(
        boot.join("tether/bundle.json"),
        json!({"version": 1, "server": tetherd.api_url, "caSha256": token.body["caSha256"],
               "credential": {"kind": "enrollment", "device": device, "token": token.body["token"]}})
        .to_string(),
    )?;
    let facts_d = files.path().join("facts-SN-D.json");
    std::fs::write(&facts_d, json!({"hardwareSerial": "SN-D"}).to_string())?;
    let (boot, facts_d) = (boot.display().to_string(), facts_d.display().to_string());
    let mut media_4 = tether_testkit::Agent::unenrolled(
        "media-4",
        &[
            ("TETHER_BOOT_BUNDLE", boot.as_str()),
            ("TETHER_AGENT_FACTS_FILE", facts_d.as_str()),
        ],
    )?;
    media_4.start()?;
    assert_eq!(
        media_4.wait_device().await?,
        device,
        "the written credential wins"
    );
    wait_serial(&admin, &device, "SN-D").await?;
    media_4.stop().await?;
    Ok(())
}

/// A MANUAL policy with real agents: one waits and runs once approved,
/// one is denied and stops saying why.
#[tokio::test]
async fn an_agent_waits_for_approval_and_a_denied_one_stops_with_the_reason() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let key = policy(
        &admin,
        "gw",
        json!({"mode": "MANUAL", "identityFieldPaths": ["status.facts.hardwareSerial"],
               "template": {"metadata": {"labels": {"role": "gateway"}}}}),
    )
    .await?;
    let files = tempfile::tempdir()?;
    let mut wanted = tether_testkit::Agent::unenrolled(
        "wanted",
        &pairs(&machine_env(files.path(), &key, "GW-1")?),
    )?;
    wanted.start()?;
    let approval = pending_approval(&admin).await?;
    let waiting = format!("waiting for approval {approval}");
    tether_testkit::wait_until(
        "the agent to say it waits",
        std::time::Duration::from_secs(30),
        || {
            let said = wanted.log().contains(&waiting);
            async move { Ok(said.then_some(())) }
        },
    )
    .await?;
    admin
        .post(
            &format!("/api/v1/approvals/{approval}/approve"),
            json!({"name": "gw-1"}),
        )
        .await?
        .expect_status(200)?;
    assert_eq!(wanted.wait_device().await?, "gw-1");
    tether_testkit::wait_until("gw-1 online", std::time::Duration::from_secs(30), || {
        let admin = admin.clone();
        async move {
            let device = admin
                .get("/api/v1/devices/gw-1")
                .await?
                .expect_status(200)?;
            Ok((device["presence"] == "online").then_some(()))
        }
    })
    .await?;
    let device = admin
        .get("/api/v1/devices/gw-1")
        .await?
        .expect_status(200)?;
    assert_eq!(device["labels"]["role"], "gateway");
    wait_serial(&admin, "gw-1", "GW-1").await?;

    let mut unwanted = tether_testkit::Agent::unenrolled(
        "unwanted",
        &pairs(&machine_env(files.path(), &key, "GW-666")?),
    )?;
    unwanted.start()?;
    let approval = pending_approval(&admin).await?;
    admin
        .post(
            &format!("/api/v1/approvals/{approval}/deny"),
            json!({"reason": "not one of ours"}),
        )
        .await?
        .expect_status(200)?;
    let status = tether_testkit::wait_until(
        "the denied agent to stop",
        std::time::Duration::from_secs(30),
        || {
            let status = unwanted.exit_status();
            async move { Ok(status) }
        },
    )
    .await?;
    assert!(!status.success(), "a denied agent exits non-zero");
    assert!(
        unwanted.log().contains("not one of ours"),
        "{}",
        unwanted.log()
    );
    Ok(())
}

// ---------------------------------------------------------------------
// REVIEW16 (security review of issue 16's provisioning limits). These
// tests show findings: each FAILS on the reviewed code until the finding
// is fixed. See the review report for the suggested fixes.
// ---------------------------------------------------------------------

/// REVIEW16 finding 1: a registration that authenticated before
/// its key was revoked, and writes its request after the revocation
/// committed, leaves a pending request of the revoked key that an operator
/// can approve (ADR 0025: "none of them can be approved later"). The race
/// window is `authenticate` .. `write_registration`; this test takes the
/// registration's write step as that late request would.
async fn a_request_written_after_its_key_was_revoked_cannot_be_approved(
    database: Database,
) -> anyhow::Result<()> {
    use tether_server::store::{Admission, RegistrationRecord, RegistrationWrite};
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let leaked = policy(&admin, "gateways", json!({"mode": "MANUAL"})).await?;
    let leaked_id = leaked["keyId"].as_str().context("key id")?.to_owned();
    admin
        .delete(&format!(
            "/api/v1/provisioning-policies/gateways/keys/{leaked_id}"
        ))
        .await?
        .expect_status(204)?;

    // The in-flight registration's write, after the revocation committed.
    let store = store_of(&tetherd).await?;
    let now = minutes_ago(0);
    let late = RegistrationRecord {
        id: uuid::Uuid::now_v7().to_string(),
        policy: "gateways".into(),
        public_key_sha256: "ab".repeat(32),
        facts: Default::default(),
        state: tether_proto::provisioning::RegistrationState::Pending,
        device: None,
        created_at: now,
        decided_at: None,
        decided_by: None,
        reason: None,
        certificate_serial: None,
        key_id: Some(leaked_id.clone()),
        identity_key: None,
    };
    let written = store
        .write_registration(
            &RegistrationWrite {
                registration: late.clone(),
                expected_state: None,
                new_device: None,
                identity_key: None,
                admission: Some(Admission::Pending {
                    per_policy: 1_000,
                    per_key: 100,
                }),
            },
            now,
        )
        .await;
    if !matches!(written, Ok(Ok(_))) {
        return Ok(()); // refused by the store: fixed
    }
    let reply = admin
        .post(&format!("/api/v1/approvals/{}/approve", late.id), json!({}))
        .await?;
    assert_ne!(
        reply.status.as_u16(),
        200,
        "a request of revoked key {leaked_id} was approved: {}",
        reply.body
    );
    Ok(())
}

/// REVIEW16 finding 1, over HTTP: registrations of a leaked key racing its
/// revocation leave pending requests of the revoked key.
async fn revoking_a_key_while_it_registers_leaves_none_of_its_requests_pending(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let leaked = policy(&admin, "gateways", json!({"mode": "MANUAL"})).await?;
    let leaked_id = leaked["keyId"].as_str().context("key id")?.to_owned();
    let flood = {
        let anonymous = anonymous.clone();
        let leaked = leaked.clone();
        tokio::spawn(async move { register_many(&anonymous, &[leaked], "GW", 90, 32).await })
    };
    pending_approval(&admin).await?;
    admin
        .delete(&format!(
            "/api/v1/provisioning-policies/gateways/keys/{leaked_id}"
        ))
        .await?
        .expect_status(204)?;
    let answers = flood.await??;
    let pending = admin
        .get("/api/v1/approvals?state=pending&limit=500")
        .await?
        .expect_status(200)?;
    let left: Vec<_> = pending["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter(|a| a["keyId"] == leaked_id.as_str())
        .collect();
    assert!(
        left.is_empty(),
        "{} requests of revoked key {leaked_id} still wait to be approved (answers {:?})",
        left.len(),
        statuses(&answers)
    );
    Ok(())
}

/// REVIEW16 finding 2: approving a request made before its
/// identity had a device creates a new device and silently takes the
/// identity from the device approved meanwhile. The approval shows no
/// match, and afterwards new media in that hardware finds the wrong
/// device.
async fn approving_an_older_request_does_not_take_an_identity_another_device_holds(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let key = policy(
        &admin,
        "gateways",
        json!({"mode": "MANUAL", "identityFieldPaths": ["status.facts.hardwareSerial"]}),
    )
    .await?;
    let (status, first) = Hardware::new("GW-X")?.register(&anonymous, &key).await?;
    assert_eq!(status, 202, "{first}");
    let first = first["approval"].as_str().context("approval")?.to_owned();
    let (status, second) = Hardware::new("GW-X")?.register(&anonymous, &key).await?;
    assert_eq!(status, 202, "{second}");
    let second = second["approval"].as_str().context("approval")?.to_owned();
    admin
        .post(
            &format!("/api/v1/approvals/{second}/approve"),
            json!({"name": "gw-two"}),
        )
        .await?
        .expect_status(200)?;

    let shown = admin
        .get(&format!("/api/v1/approvals/{first}"))
        .await?
        .expect_status(200)?;
    let approved = admin
        .post(
            &format!("/api/v1/approvals/{first}/approve"),
            json!({"name": "gw-one"}),
        )
        .await?;
    let facts = tether_proto::spec::Facts {
        hardware_serial: Some("GW-X".into()),
        ..Default::default()
    };
    let identity = tether_proto::provisioning::identity_key(
        &[tether_proto::provisioning::IdentityField::HardwareSerial],
        &facts,
    )
    .map_err(anyhow::Error::msg)?
    .context("an identity")?;
    let holder = store_of(&tetherd)
        .await?
        .device_of_identity("gateways", &identity)
        .await?;
    assert_eq!(
        holder.as_ref().map(|d| d.as_str()),
        Some("gw-two"),
        "approving {first} (shown to the operator as {shown}; answered {} {}) took GW-X's identity from gw-two",
        approved.status,
        approved.body
    );
    Ok(())
}

/// REVIEW16 finding 3: a board waiting for approval when its key
/// expires is refused (401, on which the agent stops for good) even after
/// an operator approves its request: the approval can never be collected,
/// and nothing withdrew it when the key expired.
async fn a_request_made_before_its_key_expired_can_collect_its_approval(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    policy(&admin, "gateways", json!({"mode": "MANUAL"})).await?;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(3);
    let key = admin
        .post(
            "/api/v1/provisioning-policies/gateways/keys",
            json!({"expiresAt": expires.to_rfc3339()}),
        )
        .await?
        .expect_status(201)?;
    let board = Hardware::new("GW-E")?;
    let (status, waiting) = board.register(&anonymous, &key).await?;
    assert_eq!(status, 202, "{waiting}");
    let approval = waiting["approval"].as_str().context("approval")?.to_owned();
    // The board keeps asking while it waits; the key expires meanwhile.
    tether_testkit::wait_until(
        "the key to expire",
        std::time::Duration::from_secs(30),
        || async { Ok((chrono::Utc::now() > expires).then_some(())) },
    )
    .await?;
    admin
        .post(&format!("/api/v1/approvals/{approval}/approve"), json!({}))
        .await?
        .expect_status(200)?;
    let (status, answer) = board.register(&anonymous, &key).await?;
    assert_eq!(
        status, 200,
        "approval {approval} was granted but its board cannot collect it: {answer}"
    );
    Ok(())
}

/// REVIEW16 finding 4 (PostgreSQL, when the race is hit):
/// deleting a policy while it creates devices leaves a device with the
/// deleted policy's name in `policy` (delete_policy clears `devices.policy`
/// before it waits for the policy row the registration holds), so a new
/// policy of the same name inherits it, which ADR 0025 rules out.
async fn a_policy_deleted_while_it_registers_leaves_no_device_to_its_namesake(
    database: Database,
) -> anyhow::Result<()> {
    // A tetherd per round: the keys refused after the deletion throttle
    // the test's address for a while.
    for round in 0..3 {
        let tetherd = Tetherd::start(database).await?;
        let admin = tetherd.admin().await?;
        let anonymous = admin.with_token(None);
        let key = policy(&admin, "lab", json!({"mode": "UNATTENDED"})).await?;
        let flood = {
            let anonymous = anonymous.clone();
            tokio::spawn(async move { register_many(&anonymous, &[key], "SN", 48, 24).await })
        };
        tether_testkit::wait_until(
            "a first device of the policy",
            std::time::Duration::from_secs(30),
            || async {
                let shown = admin
                    .get("/api/v1/provisioning-policies/lab")
                    .await?
                    .expect_status(200)?;
                Ok((shown["devices"].as_u64().unwrap_or_default() > 0).then_some(()))
            },
        )
        .await?;
        admin
            .delete("/api/v1/provisioning-policies/lab")
            .await?
            .expect_status(204)?;
        let answers = flood.await??;
        admin
            .post(
                "/api/v1/provisioning-policies",
                json!({"name": "lab", "spec": {"mode": "UNATTENDED"}}),
            )
            .await?
            .expect_status(201)?;
        let namesake = admin
            .get("/api/v1/provisioning-policies/lab")
            .await?
            .expect_status(200)?;
        assert_eq!(
            namesake["devices"],
            0,
            "round {round}: the new policy lab inherited devices of the deleted one (answers {:?})",
            statuses(&answers)
        );
    }
    Ok(())
}

/// REVIEW16 finding 5 (the cancellation's delay is swept to land in the
/// old gap): a board that gives up on its request (a
/// timeout, a dropped connection) after tetherd set the device's new
/// certificate serial but before it recorded the registration as
/// registered is told 410 ever after: the approved registration is lost.
/// `answer` issued the certificate (one commit) and recorded it on the
/// registration (another); now both are one commit.
#[tokio::test]
async fn a_board_that_drops_its_request_mid_way_can_still_collect_its_approval()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let anonymous = admin.with_token(None);
    let key = policy(&admin, "gateways", json!({"mode": "MANUAL"})).await?;
    for step in 0..400u64 {
        let board = Hardware::new("GW")?;
        let (status, waiting) = board.register(&anonymous, &key).await?;
        anyhow::ensure!(status == 202, "{status} {waiting}");
        let approval = waiting["approval"].as_str().context("approval")?.to_owned();
        let approved = admin
            .post(&format!("/api/v1/approvals/{approval}/approve"), json!({}))
            .await?
            .expect_status(200)?;
        let device = approved["device"].as_str().context("device")?.to_owned();
        // Gives up after a delay that sweeps the handler's duration.
        let delay = std::time::Duration::from_micros(500 + step * 50);
        let _ = tokio::time::timeout(delay, board.register(&anonymous, &key)).await;
        let shown = tether_testkit::wait_until(
            "the handler to finish or stop",
            std::time::Duration::from_secs(10),
            || async {
                let shown = admin
                    .get(&format!("/api/v1/approvals/{approval}"))
                    .await?
                    .expect_status(200)?;
                Ok(Some(shown))
            },
        )
        .await?;
        let enrolled = admin
            .get(&format!("/api/v1/devices/{device}"))
            .await?
            .expect_status(200)?["enrolled"]
            .as_bool()
            .unwrap_or_default();
        if enrolled && shown["state"] == "approved" {
            // A handler still running records it within moments; one
            // that was cancelled never does.
            let settled = tether_testkit::wait_until(
                "the registration to be recorded",
                std::time::Duration::from_secs(3),
                || async {
                    let shown = admin
                        .get(&format!("/api/v1/approvals/{approval}"))
                        .await?
                        .expect_status(200)?;
                    Ok((shown["state"] == "registered").then_some(()))
                },
            )
            .await
            .is_ok();
            let (status, answer) = board.register(&anonymous, &key).await?;
            assert_eq!(
                status, 200,
                "step {step}: approval {approval} was cut between the certificate and its record (recorded later: {settled}); the board is refused for good: {answer}"
            );
            return Ok(());
        }
    }
    Ok(())
}

on_both_databases!(
    a_policy_deleted_while_it_registers_leaves_no_device_to_its_namesake,
    a_request_made_before_its_key_expired_can_collect_its_approval,
    a_request_written_after_its_key_was_revoked_cannot_be_approved,
    revoking_a_key_while_it_registers_leaves_none_of_its_requests_pending,
    approving_an_older_request_does_not_take_an_identity_another_device_holds,
);
