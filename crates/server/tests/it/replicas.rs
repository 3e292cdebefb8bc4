//! Several tetherd replicas on one PostgreSQL (issue 12).

use serde_json::json;
use tether_testkit::{Database, Tetherd};

/// Any replica answers any request: what one replica stored, another serves,
/// and one admin login works on all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_database() -> anyhow::Result<()> {
    let first = Tetherd::start(Database::Postgres).await?;
    let second = Tetherd::start_replica_of(&first, &[]).await?;
    first
        .admin()
        .await?
        .post(
            "/api/v1/devices",
            json!({"name": "edge-1", "labels": {"site": "berlin"}}),
        )
        .await?
        .expect_status(201)?;
    let listed = second
        .admin()
        .await?
        .get("/api/v1/devices/edge-1")
        .await?
        .expect_status(200)?;
    assert_eq!(listed["labels"]["site"], "berlin");
    Ok(())
}

// Membership (issue 12): leases, presence owned per replica, singleton
// jobs, health endpoints, shared secrets.

mod membership {
    use std::path::Path;
    use std::time::Duration;

    use anyhow::Context;
    use chrono::{DateTime, Utc};
    use serde_json::{Value, json};
    use tether_testkit::sim_agent::{DeviceCredentials, Responder, SimAgent};
    use tether_testkit::{ApiClient, Database, Tetherd, wait_until};

    /// A config file giving replicas a short lease, so a dead one is
    /// noticed in seconds.
    pub(super) fn lease_config(dir: &Path, seconds: u64) -> anyhow::Result<String> {
        let path = dir.join(format!("lease-{seconds}.toml"));
        std::fs::write(&path, format!("[cluster]\nlease_seconds = {seconds}\n"))?;
        Ok(path.to_string_lossy().into_owned())
    }

    async fn device(admin: &ApiClient, name: &str) -> anyhow::Result<Value> {
        admin
            .get(&format!("/api/v1/devices/{name}"))
            .await?
            .expect_status(200)
    }

    /// The device's presence events, oldest first, as (event, message).
    pub(super) async fn sessions(
        admin: &ApiClient,
        name: &str,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let events = admin
            .get(&format!("/api/v1/devices/{name}/events?limit=1000"))
            .await?
            .expect_status(200)?;
        let mut sessions: Vec<(String, String)> = events["items"]
            .as_array()
            .context("events are a list")?
            .iter()
            .filter(|e| {
                e["event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("device-"))
            })
            .map(|e| {
                (
                    e["event"].as_str().unwrap_or_default().to_owned(),
                    e["statusMessage"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        sessions.reverse();
        Ok(sessions)
    }

    pub(super) fn names(sessions: &[(String, String)]) -> Vec<&str> {
        sessions.iter().map(|(event, _)| event.as_str()).collect()
    }

    async fn wait_presence_within(
        admin: &ApiClient,
        name: &str,
        presence: &str,
        within: Duration,
    ) -> anyhow::Result<Value> {
        wait_until(&format!("{name} to be {presence}"), within, || async {
            let device = device(admin, name).await?;
            Ok((device["presence"] == presence).then_some(device))
        })
        .await
    }

    pub(super) fn moved_to(
        credentials: &DeviceCredentials,
        replica: &Tetherd,
    ) -> DeviceCredentials {
        DeviceCredentials {
            mqtt_url: replica.mqtt_url.clone(),
            ..credentials.clone()
        }
    }

    /// `kill -9` of the replica holding a device's session: another replica
    /// marks it offline once the lease lapses, as of the dead replica's last
    /// renewal; the device reconnects elsewhere and is online again, each
    /// exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_replicas_devices_go_offline_at_its_last_renewal_and_online_elsewhere()
    -> anyhow::Result<()> {
        let scratch = tempfile::tempdir()?;
        let config = lease_config(scratch.path(), 2)?;
        let mut a = Tetherd::start_with(Database::Postgres, &["--config", &config]).await?;
        let b = Tetherd::start_replica_of(&a, &["--config", &config]).await?;
        let c = Tetherd::start_replica_of(&a, &["--config", &config]).await?;
        let admin_b = b.admin().await?;
        let credentials = DeviceCredentials::enroll(&a.admin().await?, "edge-1").await?;
        let agent = SimAgent::connect(&credentials, Responder::Silent).await?;
        wait_presence_within(&admin_b, "edge-1", "online", Duration::from_secs(10)).await?;

        a.kill();
        let killed_at = Utc::now();
        drop(agent);
        // Lease 2 s, renewed every 0.67 s, takeover checked as often.
        let offline =
            wait_presence_within(&admin_b, "edge-1", "offline", Duration::from_secs(8)).await?;
        let last_seen: DateTime<Utc> = offline["lastSeen"].as_str().context("lastSeen")?.parse()?;
        assert!(
            last_seen <= killed_at && killed_at - last_seen < chrono::Duration::seconds(2),
            "lastSeen {last_seen} is the dead replica's last renewal, shortly before the kill at {killed_at}"
        );

        let _agent = SimAgent::connect(&moved_to(&credentials, &b), Responder::Silent).await?;
        wait_presence_within(&admin_b, "edge-1", "online", Duration::from_secs(10)).await?;
        let sessions = sessions(&c.admin().await?, "edge-1").await?;
        assert_eq!(
            names(&sessions),
            ["device-online", "device-offline", "device-online"],
            "{sessions:?}"
        );
        assert!(
            sessions[1].1.contains("lease lapsed"),
            "the offline event says why: {sessions:?}"
        );
        Ok(())
    }

    /// A device that reconnects to another replica before its old replica's
    /// lease lapses shows its old session ended and the new one started,
    /// once each; the old replica's lapse later changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_that_moves_before_its_replica_lapses_is_offline_then_online_once()
    -> anyhow::Result<()> {
        let scratch = tempfile::tempdir()?;
        // Long enough for the device to reconnect before it lapses.
        let config = lease_config(scratch.path(), 8)?;
        let mut a = Tetherd::start_with(Database::Postgres, &["--config", &config]).await?;
        let b = Tetherd::start_replica_of(&a, &["--config", &config]).await?;
        let admin_b = b.admin().await?;
        let credentials = DeviceCredentials::enroll(&a.admin().await?, "edge-1").await?;
        let agent = SimAgent::connect(&credentials, Responder::Silent).await?;
        wait_presence_within(&admin_b, "edge-1", "online", Duration::from_secs(10)).await?;

        a.kill();
        drop(agent);
        let _agent = SimAgent::connect(&moved_to(&credentials, &b), Responder::Silent).await?;
        wait_until(
            "the device's session to move to the second replica",
            Duration::from_secs(10),
            || async { Ok((sessions(&admin_b, "edge-1").await?.len() == 3).then_some(())) },
        )
        .await?;
        wait_until(
            "the surviving replica to take the dead one over",
            Duration::from_secs(20),
            || async {
                Ok(b.log()
                    .contains("took over a replica whose lease lapsed")
                    .then_some(()))
            },
        )
        .await?;

        assert_eq!(device(&admin_b, "edge-1").await?["presence"], "online");
        let sessions = sessions(&admin_b, "edge-1").await?;
        assert_eq!(
            names(&sessions),
            ["device-online", "device-offline", "device-online"],
            "{sessions:?}"
        );
        assert!(
            sessions[1].1.starts_with("session on replica ")
                && sessions[1].1.contains("the device connected to replica"),
            "{sessions:?}"
        );
        Ok(())
    }

    /// A replica that restarts marks the devices it held offline at once,
    /// and only those: the other replica's devices stay online. One that
    /// stops marks its devices offline as it goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_replica_marks_only_its_own_devices_offline() -> anyhow::Result<()> {
        let mut a = Tetherd::start(Database::Postgres).await?;
        let b = Tetherd::start_replica_of(&a, &[]).await?;
        let admin_b = b.admin().await?;
        let on_a = DeviceCredentials::enroll(&admin_b, "on-a").await?;
        let on_b = DeviceCredentials::enroll(&admin_b, "on-b").await?;
        let agent_a = SimAgent::connect(&moved_to(&on_a, &a), Responder::Silent).await?;
        let _agent_b = SimAgent::connect(&moved_to(&on_b, &b), Responder::Silent).await?;
        for name in ["on-a", "on-b"] {
            wait_presence_within(&admin_b, name, "online", Duration::from_secs(10)).await?;
        }

        // The default lease (15 s) outlasts the restart: what marks the
        // device offline is the restarted replica itself.
        a.restart().await?;
        drop(agent_a);
        assert_eq!(device(&admin_b, "on-a").await?["presence"], "offline");
        assert_eq!(device(&admin_b, "on-b").await?["presence"], "online");
        let sessions = sessions(&admin_b, "on-a").await?;
        assert_eq!(
            names(&sessions),
            ["device-online", "device-offline"],
            "{sessions:?}"
        );
        assert!(
            sessions[1].1.contains("the replica restarted"),
            "{sessions:?}"
        );
        assert_eq!(
            names(&self::sessions(&admin_b, "on-b").await?),
            ["device-online"]
        );

        // A replica stopped cleanly marks its devices offline as it goes,
        // long before its lease (15 s) would lapse.
        let mut b = b;
        let stopped = b.stop().await?;
        assert!(stopped.success(), "tetherd exits cleanly: {stopped}");
        let admin_a = a.admin().await?;
        assert_eq!(device(&admin_a, "on-b").await?["presence"], "offline");
        let sessions = self::sessions(&admin_a, "on-b").await?;
        assert!(
            sessions
                .last()
                .is_some_and(|(event, message)| event == "device-offline"
                    && message.contains("the replica stopped")),
            "{sessions:?}"
        );
        Ok(())
    }

    /// A replica whose devices were taken over while it could not renew
    /// (here: another replica's takeover, run directly on the database)
    /// re-claims the sessions it still holds at its next renewal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_taken_over_while_alive_reclaims_its_sessions() -> anyhow::Result<()> {
        let scratch = tempfile::tempdir()?;
        let config = lease_config(scratch.path(), 2)?;
        let tetherd = Tetherd::start_with(Database::Postgres, &["--config", &config]).await?;
        let admin = tetherd.admin().await?;
        let credentials = DeviceCredentials::enroll(&admin, "edge-1").await?;
        let _agent = SimAgent::connect(&credentials, Responder::Silent).await?;
        wait_presence_within(&admin, "edge-1", "online", Duration::from_secs(10)).await?;

        let replica = std::fs::read_to_string(tetherd.data_dir().join("replica-id"))?;
        let store = tether_server::store::Store::connect(
            &tetherd.postgres().context("on PostgreSQL")?.url(),
        )
        .await?;
        let now = Utc::now();
        let ended = store
            .end_replica_sessions(replica.trim(), None, now, |device, last_seen| {
                tether_server::cluster::presence::replica_ended_event(
                    device,
                    replica.trim(),
                    tether_server::cluster::presence::EndOfReplica::LeaseLapsed,
                    last_seen,
                    now,
                )
            })
            .await?
            .context("the replica had a row")?;
        assert_eq!(ended.devices.len(), 1);

        wait_until(
            "the replica to re-claim its session",
            Duration::from_secs(10),
            || async { Ok((sessions(&admin, "edge-1").await?.len() == 3).then_some(())) },
        )
        .await?;
        assert_eq!(device(&admin, "edge-1").await?["presence"], "online");
        assert_eq!(
            names(&sessions(&admin, "edge-1").await?),
            ["device-online", "device-offline", "device-online"]
        );
        assert!(
            tetherd
                .log()
                .contains("re-claimed the sessions this replica holds")
        );
        Ok(())
    }

    /// Whether the replica's log says it became the action sweeps' leader.
    pub(super) fn led_sweeps(replica: &Tetherd) -> bool {
        replica
            .log()
            .lines()
            .any(|line| line.contains("now the leader") && line.contains("\"action-sweeps\""))
    }

    /// Which of `replicas` leads the action sweeps.
    async fn sweep_leader(replicas: &[&Tetherd]) -> anyhow::Result<usize> {
        wait_until(
            "a replica to lead the action sweeps",
            Duration::from_secs(20),
            || async { Ok(replicas.iter().position(|replica| led_sweeps(replica))) },
        )
        .await
    }

    async fn wait_expired(admin: &ApiClient, correlation_id: &str) -> anyhow::Result<()> {
        let path = format!("/api/v1/actions/{correlation_id}");
        wait_until("the action to expire", Duration::from_secs(20), || async {
            let action = admin.get(&path).await?.expect_status(200)?;
            Ok((action["state"] == "expired").then_some(()))
        })
        .await
    }

    async fn request_short_lived(admin: &ApiClient, device: &str) -> anyhow::Result<String> {
        let accepted = admin
            .post(
                &format!("/api/v1/devices/{device}/actions"),
                json!({"action": "get-node-ip", "ttlSeconds": 1}),
            )
            .await?
            .expect_status(202)?;
        Ok(accepted["correlationId"]
            .as_str()
            .context("correlationId")?
            .to_owned())
    }

    /// Expiry runs on one replica (the leader of the sweeps); when it dies,
    /// a survivor takes the sweeps over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_action_sweeps_move_to_a_survivor_when_their_leader_dies() -> anyhow::Result<()> {
        let scratch = tempfile::tempdir()?;
        let config = lease_config(scratch.path(), 2)?;
        let a = Tetherd::start_with(Database::Postgres, &["--config", &config]).await?;
        let b = Tetherd::start_replica_of(&a, &["--config", &config]).await?;
        let mut replicas = [a, b];
        let leader = sweep_leader(&[&replicas[0], &replicas[1]]).await?;
        let survivor = 1 - leader;
        let admin = replicas[survivor].admin().await?;
        admin
            .post("/api/v1/devices", json!({"name": "edge-1"}))
            .await?
            .expect_status(201)?;
        let first = request_short_lived(&admin, "edge-1").await?;
        wait_expired(&admin, &first).await?;
        assert!(!led_sweeps(&replicas[survivor]), "one leader at a time");

        replicas[leader].kill();
        let second = request_short_lived(&admin, "edge-1").await?;
        wait_expired(&admin, &second).await?;
        assert!(led_sweeps(&replicas[survivor]), "the survivor took over");
        Ok(())
    }

    /// `/healthz` answers while the process runs; `/readyz` is 503 naming
    /// the database while PostgreSQL is down, and 200 again once it is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_follows_the_database_and_healthz_the_process() -> anyhow::Result<()> {
        let scratch = tempfile::tempdir()?;
        let config = lease_config(scratch.path(), 2)?;
        let tetherd = Tetherd::start_with(Database::Postgres, &["--config", &config]).await?;
        let anonymous = tetherd.anonymous()?;
        let health = anonymous.get("/healthz").await?.expect_status(200)?;
        assert_eq!(health, json!({"status": "ok"}));
        anonymous.get("/readyz").await?.expect_status(200)?;

        let postgres = tetherd.postgres().context("on PostgreSQL")?;
        postgres.stop()?;
        let not_ready = wait_until(
            "/readyz to say the database is down",
            Duration::from_secs(20),
            || async {
                let reply = anonymous.get("/readyz").await?;
                Ok((reply.status.as_u16() == 503).then_some(reply.body))
            },
        )
        .await?;
        assert_eq!(not_ready["status"], "not ready");
        assert!(
            not_ready["notReady"]
                .as_array()
                .context("notReady")?
                .iter()
                .any(|what| what == "the database does not answer"),
            "{not_ready}"
        );
        anonymous.get("/healthz").await?.expect_status(200)?;

        postgres.start_again()?;
        wait_until(
            "/readyz to be ready again",
            Duration::from_secs(30),
            || async { Ok((anonymous.get("/readyz").await?.status.as_u16() == 200).then_some(())) },
        )
        .await?;
        Ok(())
    }

    /// A replica whose CA is not the cluster's would issue certificates the
    /// others refuse: it does not start, and says what to copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_with_another_ca_refuses_to_start() -> anyhow::Result<()> {
        let first = Tetherd::start(Database::Postgres).await?;
        let error = match Tetherd::start_on_database_of(&first, &[]).await {
            Ok(_) => anyhow::bail!("a replica with its own CA started"),
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains("failed to join the other replicas: this replica's CA (sha256 ")
                && error.contains("is not the cluster's (")
                && error.contains(
                    "copy ca.pem, ca-key.pem, sealing.key, release-signing-key.pk8 and release-token.key from an existing replica's data dir"
                ),
            "{error}"
        );
        Ok(())
    }

    /// Enrollment hands an agent every live replica's MQTT endpoint, the
    /// one it asked first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn enrollment_lists_every_replicas_mqtt_endpoint() -> anyhow::Result<()> {
        let a = Tetherd::start(Database::Postgres).await?;
        let b = Tetherd::start_replica_of(&a, &[]).await?;
        let admin = b.admin().await?;
        let created = admin
            .post("/api/v1/devices", json!({"name": "edge-1"}))
            .await?
            .expect_status(201)?;
        let token = created["enrollment"]["token"].as_str().context("token")?;
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)?
            .pem()?;
        let enrolled = b
            .anonymous()?
            .post("/api/v1/enroll", json!({"token": token, "csrPem": csr}))
            .await?
            .expect_status(200)?;
        let a_port = a.mqtt_url.rsplit_once(':').context("port")?.1;
        assert_eq!(enrolled["mqttUrl"], b.mqtt_url.as_str());
        assert_eq!(
            enrolled["mqttUrls"],
            json!([b.mqtt_url, format!("mqtts://localhost:{a_port}")]),
            "this replica's endpoint first, then the other's (its first public host)"
        );
        Ok(())
    }
}

// Review of issue 12: the acceptance test of a replica dying under load.

mod failover_under_load {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use serde_json::{Value, json};
    use tether_testkit::sim_agent::{DeviceCredentials, Responder, SimAgent};
    use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

    use super::membership::{lease_config, led_sweeps, moved_to, names, sessions};

    const ACTIONS: usize = 1_000;
    /// Actions per device requested (and delivered) before the kill.
    const BEFORE_KILL: usize = 10;
    /// Devices on the replica that dies: simulated ones, real agents.
    const SIMS_ON_DYING: usize = 12;
    const AGENTS_ON_DYING: usize = 3;
    /// Simulated devices on the survivors.
    const SIMS_ON_SURVIVORS: usize = 15;

    /// Requests one action for `device`; its correlation id.
    async fn request(admin: &ApiClient, device: &str) -> anyhow::Result<String> {
        let accepted = admin
            .post(
                &format!("/api/v1/devices/{device}/actions"),
                json!({"action": "get-node-ip", "input": {}, "timeoutSeconds": 600}),
            )
            .await?
            .expect_status(202)?;
        Ok(accepted["correlationId"]
            .as_str()
            .context("correlationId")?
            .to_owned())
    }

    /// Everything `agent` received so far, in order.
    async fn drain(agent: &mut SimAgent) -> Vec<String> {
        let mut received = Vec::new();
        while let Some(action) = agent.next_action(Duration::ZERO).await {
            received.push(action.correlation_id);
        }
        received
    }

    /// Three replicas; `kill -9` of one while 1,000 actions are queued and
    /// in flight: some delivered to its devices and unanswered, some
    /// requested for them while it dies, some for devices elsewhere. Its
    /// devices reconnect to the survivors (real agents by their endpoint
    /// list, simulated ones by hand); every accepted action succeeds, each
    /// runs once and reaches its device in the order requested, every moved
    /// device shows offline then online once, and the sweeps move to a
    /// survivor.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_killed_under_load_loses_and_repeats_no_action() -> anyhow::Result<()> {
        let scratch = tempfile::tempdir()?;
        let config = lease_config(scratch.path(), 2)?;
        let mut dying = Tetherd::start_with(Database::Postgres, &["--config", &config]).await?;
        let b = Tetherd::start_replica_of(&dying, &["--config", &config]).await?;
        let c = Tetherd::start_replica_of(&dying, &["--config", &config]).await?;
        let admin_dying = dying.admin().await?;
        let survivors = [b.admin().await?, c.admin().await?];
        wait_until(
            "the first replica to lead the sweeps",
            Duration::from_secs(20),
            || async { Ok(led_sweeps(&dying).then_some(())) },
        )
        .await?;

        let mut agents = Vec::new();
        for i in 0..AGENTS_ON_DYING {
            agents.push(Agent::enroll(&dying, &admin_dying, &format!("agent-{i}")).await?);
        }
        let mut moving = Vec::new();
        for i in 0..SIMS_ON_DYING {
            let credentials =
                DeviceCredentials::enroll(&admin_dying, &format!("moving-{i}")).await?;
            let sim = SimAgent::connect(&credentials, Responder::Silent).await?;
            moving.push((credentials, sim));
        }
        let mut staying = Vec::new();
        for i in 0..SIMS_ON_SURVIVORS {
            let replica = if i % 2 == 0 { &b } else { &c };
            let credentials =
                DeviceCredentials::enroll(&survivors[0], &format!("staying-{i}")).await?;
            staying
                .push(SimAgent::connect(&moved_to(&credentials, replica), Responder::Echo).await?);
        }
        for agent in &agents {
            agent
                .wait_presence(&survivors[0], "online")
                .await
                .context("the real agents online")?;
        }
        let devices: Vec<String> = agents
            .iter()
            .map(|a| a.name.clone())
            .chain(moving.iter().map(|(c, _)| c.device.to_string()))
            .chain(staying.iter().map(|s| s.device.to_string()))
            .collect();
        for device in &devices {
            survivors[1]
                .wait_presence(device, "online")
                .await
                .context("every device online before the kill")?;
        }

        // Before the kill: the dying replica's simulated devices hold their
        // actions delivered and unanswered.
        let mut requested: HashMap<String, Vec<String>> = HashMap::new();
        let apis = [&admin_dying, &survivors[0], &survivors[1]];
        for (i, device) in devices.iter().enumerate() {
            for n in 0..BEFORE_KILL {
                let id = request(apis[(i + n) % 3], device).await?;
                requested.entry(device.clone()).or_default().push(id);
            }
        }
        for (credentials, sim) in &mut moving {
            let mut got = Vec::new();
            while got.len() < BEFORE_KILL {
                let action = sim
                    .next_action(Duration::from_secs(20))
                    .await
                    .with_context(|| format!("{} received {got:?}", credentials.device))?;
                got.push(action.correlation_id);
            }
            assert_eq!(got, requested[credentials.device.as_str()]);
        }

        // The rest is requested through the survivors, one task per device
        // (so each device's actions have an order), while the replica dies.
        let per_device = (ACTIONS - BEFORE_KILL * devices.len()) / devices.len();
        let extra = (ACTIONS - BEFORE_KILL * devices.len()) % devices.len();
        let accepted = Arc::new(AtomicUsize::new(BEFORE_KILL * devices.len()));
        let mut requesting = Vec::new();
        for (i, device) in devices.iter().enumerate() {
            let count = per_device + usize::from(i < extra);
            let (device, apis, accepted) = (device.clone(), survivors.clone(), accepted.clone());
            requesting.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..count {
                    ids.push(request(&apis[(i + n) % 2], &device).await?);
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok((device, ids))
            }));
        }
        let third = BEFORE_KILL * devices.len() + (ACTIONS - BEFORE_KILL * devices.len()) / 3;
        wait_until(
            "a third of the rest to be accepted",
            Duration::from_secs(60),
            || {
                let done = accepted.load(Ordering::Relaxed) >= third;
                async move { Ok(done.then_some(())) }
            },
        )
        .await?;
        dying.kill();
        let killed = Instant::now();
        // What the dead replica's devices had open when it died, for the
        // report: delivered and unanswered, or still pending.
        let mut at_kill: HashMap<String, usize> = HashMap::new();
        for device in devices.iter().filter(|d| !d.starts_with("staying-")) {
            let listed = survivors[0]
                .get(&format!("/api/v1/devices/{device}/actions?limit=1000"))
                .await?
                .expect_status(200)?;
            for action in listed["items"].as_array().context("a list")? {
                let state = action["state"].as_str().unwrap_or_default().to_owned();
                *at_kill.entry(state).or_default() += 1;
            }
        }
        // Simulated devices do not fail over by themselves: as an agent
        // would, each reconnects to another endpoint once its session drops.
        let mut moved = Vec::new();
        for (i, (credentials, old)) in moving.into_iter().enumerate() {
            wait_until(
                "the dead replica's session to drop",
                Duration::from_secs(10),
                || {
                    let gone = !old.is_connected();
                    async move { Ok(gone.then_some(())) }
                },
            )
            .await?;
            let replica = if i % 2 == 0 { &b } else { &c };
            moved.push(
                SimAgent::connect(&moved_to(&credentials, replica), Responder::Echo)
                    .await
                    .with_context(|| format!("{} reconnecting", credentials.device))?,
            );
        }
        for task in requesting {
            let (device, ids) = task.await?.context("requesting through the survivors")?;
            requested.entry(device).or_default().extend(ids);
        }
        assert_eq!(requested.values().map(Vec::len).sum::<usize>(), ACTIONS);

        // Every accepted action succeeds: none lost, none left delivered.
        let states = crate::support::wait_all_succeeded(&survivors[0], &devices).await?;
        assert_eq!(states.len(), ACTIONS, "no action but the accepted ones");
        let all_done = killed.elapsed();

        // Each simulated device's current session got each of its actions
        // once, in the order requested (the moved ones: those delivered
        // before the kill again, then the rest).
        for sim in moved.iter_mut().chain(staying.iter_mut()) {
            let received = drain(sim).await;
            let expected = &requested[sim.device.as_str()];
            assert_eq!(&received, expected, "{}", sim.device);
        }
        // Each real agent ran each action once: a redelivery is answered
        // from its record.
        for agent in &agents {
            let log = agent.log();
            for id in &requested[&agent.name] {
                let runs = log.matches(&format!("({id}) answered")).count();
                assert_eq!(runs, 1, "{} ran {id} {runs} times:\n{log}", agent.name);
            }
        }

        // The survivors took the dead replica over; its devices show
        // offline then online once, the others only online.
        wait_until(
            "a survivor to take the dead replica over",
            Duration::from_secs(20),
            || {
                let done = [&b, &c]
                    .iter()
                    .any(|r| r.log().contains("took over a replica whose lease lapsed"));
                async move { Ok(done.then_some(())) }
            },
        )
        .await?;
        for device in &devices {
            let moved = !device.starts_with("staying-");
            survivors[0]
                .wait_presence(device, "online")
                .await
                .context("every device online after the failover")?;
            let sessions = sessions(&survivors[1], device).await?;
            let expected: &[&str] = if moved {
                &["device-online", "device-offline", "device-online"]
            } else {
                &["device-online"]
            };
            let agent_log = agents
                .iter()
                .find(|a| &a.name == device)
                .map(Agent::log)
                .unwrap_or_default();
            assert_eq!(
                names(&sessions),
                expected,
                "{device}: {sessions:?}\n{agent_log}"
            );
        }
        wait_until(
            "a survivor to lead the sweeps",
            Duration::from_secs(10),
            || {
                let led = led_sweeps(&b) || led_sweeps(&c);
                async move { Ok(led.then_some(())) }
            },
        )
        .await?;
        let summary: Value = json!({
            "actions": ACTIONS,
            "devices": devices.len(),
            "the dead replica's devices' actions at the kill": at_kill,
            "all succeeded after the kill (ms)": all_done.as_millis() as u64,
        });
        eprintln!("failover under load: {summary}");
        Ok(())
    }
}

// Review of issue 12: a session superseded on another replica.

mod superseded_session {
    use std::time::Duration;

    use anyhow::Context;
    use serde_json::json;
    use tether_testkit::sim_agent::{DeviceCredentials, Responder, SimAgent};
    use tether_testkit::{Database, Tetherd, wait_until};

    use super::membership::{moved_to, names, sessions};

    /// A device whose connection to one replica went half-open reconnects
    /// to another (a NAT rebinding, a mobile network switch): the first
    /// replica would hold the old session until its keepalive runs out, and
    /// deliver into it every action requested through it, which then waits
    /// for its timeout, never run. The new replica announces the move and
    /// the old one closes the superseded session, so an action requested
    /// through it reaches the device's new session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_action_reaches_the_new_session_not_a_superseded_one() -> anyhow::Result<()> {
        let a = Tetherd::start(Database::Postgres).await?;
        let b = Tetherd::start_replica_of(&a, &[]).await?;
        let (admin_a, admin_b) = (a.admin().await?, b.admin().await?);
        let credentials = DeviceCredentials::enroll(&admin_a, "edge-1").await?;
        // The old session stays open (as a half-open one would, to its
        // replica) and never answers.
        let mut old = SimAgent::connect(&moved_to(&credentials, &a), Responder::Silent).await?;
        admin_b.wait_presence("edge-1", "online").await?;
        let mut new = SimAgent::connect(&moved_to(&credentials, &b), Responder::Echo).await?;
        wait_until(
            "the session to move to the second replica",
            Duration::from_secs(10),
            || async {
                let seen = sessions(&admin_b, "edge-1").await?;
                Ok(
                    (names(&seen) == ["device-online", "device-offline", "device-online"])
                        .then_some(()),
                )
            },
        )
        .await?;
        wait_until(
            "the first replica to close the superseded session",
            Duration::from_secs(10),
            || {
                let closed = !old.is_connected();
                async move { Ok(closed.then_some(())) }
            },
        )
        .await?;

        let accepted = admin_a
            .post(
                "/api/v1/devices/edge-1/actions",
                json!({"action": "get-node-ip", "input": {}, "timeoutSeconds": 600}),
            )
            .await?
            .expect_status(202)?;
        let id = accepted["correlationId"]
            .as_str()
            .context("correlationId")?;
        let answered = wait_until(
            "the action to succeed on the new session",
            Duration::from_secs(15),
            || async {
                let action = admin_a
                    .get(&format!("/api/v1/actions/{id}"))
                    .await?
                    .expect_status(200)?;
                Ok((action["state"] == "succeeded").then_some(action))
            },
        )
        .await;
        let to_old = old.next_action(Duration::ZERO).await;
        answered.with_context(|| {
            format!(
                "the old session got it: {:?}",
                to_old.as_ref().map(|a| &a.correlation_id)
            )
        })?;
        assert!(to_old.is_none(), "the superseded session got the action");
        assert_eq!(
            new.next_action(Duration::ZERO)
                .await
                .map(|a| a.correlation_id),
            Some(id.to_owned())
        );
        assert_eq!(
            names(&sessions(&admin_a, "edge-1").await?),
            ["device-online", "device-offline", "device-online"],
            "closing the superseded session changes nothing in the device's presence"
        );
        assert!(new.is_connected());
        Ok(())
    }
}

// Review of issue 12: a replica cut off from the database without its
// connections closing.

mod partitioned_replica {
    use std::net::SocketAddr;
    use std::time::Duration;

    use anyhow::Context;
    use serde_json::json;
    use tether_testkit::{Database, TcpProxy, Tetherd, wait_until};

    use super::membership::{lease_config, led_sweeps};

    /// The leader of the action sweeps is cut off from PostgreSQL without
    /// its connections closing: PostgreSQL would keep its lock until TCP
    /// keepalive gives up (hours), and no replica would expire or time out
    /// actions meanwhile. The replica that takes the lapsed replica over
    /// ends its lock connections, and leads the sweeps itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sweeps_move_away_from_a_leader_cut_off_from_the_database() -> anyhow::Result<()> {
        let scratch = tempfile::tempdir()?;
        let config = lease_config(scratch.path(), 2)?;
        let mut first = Tetherd::start_with(Database::Postgres, &["--config", &config]).await?;
        let direct = first.postgres().context("on PostgreSQL")?.url();
        let port: u16 = direct
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .context("a port in the URL")?
            .parse()?;
        let partition = TcpProxy::to(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let through = direct.replace(&format!(":{port}/"), &format!(":{}/", partition.port));
        let cut_off =
            Tetherd::start_replica_through(&first, &through, &["--config", &config]).await?;
        // The first replica leads until it dies; the one behind the proxy
        // takes over.
        first.kill();
        wait_until(
            "the replica behind the proxy to lead the sweeps",
            Duration::from_secs(20),
            || async { Ok(led_sweeps(&cut_off).then_some(())) },
        )
        .await?;
        let survivor = Tetherd::start_replica_of(&first, &["--config", &config]).await?;
        let admin = survivor.admin().await?;
        admin
            .post("/api/v1/devices", json!({"name": "edge-1"}))
            .await?
            .expect_status(201)?;
        assert!(!led_sweeps(&survivor), "one leader at a time");

        // From now on nothing is forwarded either way and every connection
        // stays open, as in a network partition (no FIN, no RST).
        partition.pause();
        wait_until(
            "the survivor to lead the sweeps",
            Duration::from_secs(20),
            || async { Ok(led_sweeps(&survivor).then_some(())) },
        )
        .await
        .with_context(|| format!("survivor's log:\n{}", survivor.log()))?;
        let accepted = admin
            .post(
                "/api/v1/devices/edge-1/actions",
                json!({"action": "get-node-ip", "ttlSeconds": 1}),
            )
            .await?
            .expect_status(202)?;
        let path = format!(
            "/api/v1/actions/{}",
            accepted["correlationId"]
                .as_str()
                .context("correlationId")?
        );
        wait_until("the action to expire", Duration::from_secs(10), || async {
            let action = admin.get(&path).await?.expect_status(200)?;
            Ok((action["state"] == "expired").then_some(()))
        })
        .await?;
        Ok(())
    }
}
