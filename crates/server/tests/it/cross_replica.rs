//! Cross-replica delivery (issue 12, item 3): actions, long-polls and
//! disconnects reach the replica that holds the device or the waiting
//! client, through PostgreSQL LISTEN/NOTIFY (ADR 0010), with the outbox
//! sweep as the safety net.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tether_proto::{ActionState, DeviceId};
use tether_server::cluster::bus::{Bus, Channel, Heard, Subscription};
use tether_server::sealing::Sealer;
use tether_server::store::{EventRecord, NewAction, Outcome, Store};
use tether_testkit::postgres::TempPostgres;
use tether_testkit::sim_agent::{DeviceCredentials, Responder, SimAgent};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

use crate::support::{id, request};

/// Well within what a user sees as "at once", and far below the 5 s a
/// sweep alone would take: a pass proves the notification did it.
const PROMPT: Duration = Duration::from_secs(2);

/// The next notice on `channel`, skipping others.
async fn next_on(subscription: &mut Subscription, channel: Channel) -> anyhow::Result<Heard> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let heard = tokio::time::timeout_at(deadline, subscription.next())
            .await
            .with_context(|| format!("nothing heard on {} within 10 s", channel.name()))?
            .context("the bus is gone")?;
        match &heard {
            Heard::Notice(notice) if notice.channel != channel => continue,
            _ => return Ok(heard),
        }
    }
}

fn keys(heard: &Heard) -> Vec<String> {
    match heard {
        Heard::Notice(notice) => notice.keys.clone(),
        Heard::MayHaveMissed => Vec::new(),
    }
}

/// The bus itself on a real PostgreSQL: two processes' worth of buses hear
/// each other's announcements, a fleet-wide one is batched, and a dropped
/// LISTEN connection is opened again and reported as "may have missed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_carries_notifications_between_replicas_and_reports_a_drop() -> anyhow::Result<()> {
    let postgres = TempPostgres::start()?;
    let url = postgres.url();
    let store = Store::connect(&url).await?;
    let a = Bus::start(&store, &url, "bus-test-a", Default::default()).await?;
    let b = Bus::start(&store, &url, "bus-test-b", Default::default()).await?;
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();

    // One at a time, as single actions are announced: the lag each time.
    const SINGLE: usize = 200;
    for i in 0..SINGLE {
        a.publish(Channel::DeviceOutbox, [format!("edge-{i}")]);
        let heard = next_on(&mut on_b, Channel::DeviceOutbox).await?;
        let Heard::Notice(notice) = &heard else {
            anyhow::bail!("expected a notice, got {heard:?}");
        };
        assert_eq!(notice.keys, [format!("edge-{i}")]);
        assert!(!notice.from_here);
        let own = next_on(&mut on_a, Channel::DeviceOutbox).await?;
        assert!(matches!(&own, Heard::Notice(n) if n.from_here), "{own:?}");
    }
    let lag = b.stats().lag;
    assert_eq!(lag.count, SINGLE as u64);
    eprintln!(
        "notification lag over {SINGLE} single NOTIFYs: mean {:?}, p50 ≤ {:?}, p99 ≤ {:?}, max {:?}",
        lag.sum / SINGLE as u32,
        lag.quantile_bound(0.5),
        lag.quantile_bound(0.99),
        lag.max
    );

    // A fleet-wide job announces thousands of devices in a few NOTIFYs.
    let fleet: Vec<String> = (0..5_000).map(|i| format!("fleet-device-{i:05}")).collect();
    let published_before = a.stats().published;
    let started = Instant::now();
    a.publish(Channel::DeviceOutbox, fleet.clone());
    let mut heard_keys = Vec::new();
    while heard_keys.len() < fleet.len() {
        heard_keys.extend(keys(&next_on(&mut on_b, Channel::DeviceOutbox).await?));
    }
    let notifies = a.stats().published - published_before;
    eprintln!(
        "5,000 devices announced in {notifies} NOTIFYs, all heard in {:?}",
        started.elapsed()
    );
    assert_eq!(heard_keys, fleet);
    assert!(notifies <= 50, "{notifies} NOTIFYs for 5,000 devices");

    // Drop b's LISTEN connection, as a network blip or a restarted
    // PostgreSQL would: b listens again and tells its subscribers to resync.
    let admin = sqlx::PgPool::connect(&url).await?;
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind("bus-test-b")
    .fetch_all(&admin)
    .await?;
    assert_eq!(terminated, [true], "b's listener connection was found");
    let resync = next_on(&mut on_b, Channel::DeviceOutbox).await?;
    assert!(matches!(resync, Heard::MayHaveMissed), "{resync:?}");
    assert_eq!(b.stats().resyncs, 1);
    a.publish(Channel::ActionFinished, ["after-the-drop"]);
    let heard = next_on(&mut on_b, Channel::ActionFinished).await?;
    assert_eq!(keys(&heard), ["after-the-drop"], "b listens again");
    Ok(())
}

/// A change announced with its own statement (`Bus::with_commit`) is heard
/// once it commits, by every replica, and a change that writes nothing is
/// not announced: an action's insert and a device's answer, on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_announced_with_its_statement_is_heard_only_if_it_commits() -> anyhow::Result<()> {
    let postgres = TempPostgres::start()?;
    let url = postgres.url();
    let store = Store::connect(&url).await?;
    let here = Bus::start(&store, &url, "bus-commit-here", Default::default()).await?;
    let there = Bus::start(&store, &url, "bus-commit-there", Default::default()).await?;
    let mut on_there = there.subscribe();
    let device = DeviceId::new("edge-1")?;
    let now = chrono::Utc::now();
    store
        .create_device(&device, &tether_proto::api::Labels::new(), now)
        .await?;
    let action = NewAction {
        correlation_id: "c1".into(),
        device: device.clone(),
        action: "get-node-ip".into(),
        input: json!({}),
        sealed_input: "sealed".into(),
        created_at: now,
        expires_at: now + chrono::Duration::minutes(5),
        timeout_seconds: 60,
    };

    let outbox = here.with_commit(Channel::DeviceOutbox, device.as_str());
    store
        .insert_action_announced(&action, outbox.as_ref())
        .await?;
    let heard = next_on(&mut on_there, Channel::DeviceOutbox).await?;
    assert!(
        matches!(&heard, Heard::Notice(n) if !n.from_here),
        "{heard:?}"
    );
    assert_eq!(keys(&heard), ["edge-1"]);

    let answer = |id: &str| EventRecord {
        id: id.into(),
        device: device.clone(),
        correlation_id: Some("c1".into()),
        event: "get-node-ip".into(),
        status_code: 200,
        status_message: "OK".into(),
        response: json!({"ip": "10.0.0.7"}),
        received_at: now,
    };
    let outcome = Outcome {
        at: now,
        status_code: Some(200),
        status_message: Some("OK".into()),
        response: Some(json!({"ip": "10.0.0.7"})),
    };
    for (event, recorded) in [("e1", true), ("e2", false)] {
        let finished = here.with_commit(Channel::ActionFinished, "c1");
        let answered = store
            .record_answer(
                &device,
                "c1",
                ActionState::Succeeded,
                &outcome,
                &answer(event),
                finished.as_ref(),
            )
            .await?;
        assert_eq!(answered.is_some(), recorded, "answer {event}");
    }
    let finished = next_on(&mut on_there, Channel::ActionFinished).await?;
    assert_eq!(keys(&finished), ["c1"]);
    // The repeat was not announced: the next notice is this marker.
    here.publish(Channel::ActionFinished, ["marker"]);
    let next = next_on(&mut on_there, Channel::ActionFinished).await?;
    assert_eq!(keys(&next), ["marker"]);
    let events = store.list_events(&device, 10).await?;
    assert_eq!(events.len(), 1, "one event for the recorded answer");
    assert_eq!(
        store.get_action("c1").await?.map(|action| action.state),
        Some(ActionState::Succeeded)
    );
    Ok(())
}

/// Three replicas on one PostgreSQL with this outbox sweep period; with a
/// long one only notifications can make things happen promptly.
async fn three_replicas(sweep_seconds: u64) -> anyhow::Result<(tempfile::TempDir, [Tetherd; 3])> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        format!("[cluster]\noutbox_sweep_seconds = {sweep_seconds}\n"),
    )?;
    let config = config.to_str().context("temp path is UTF-8")?.to_owned();
    let args = ["--config", config.as_str()];
    let a = Tetherd::start_with(Database::Postgres, &args).await?;
    let b = Tetherd::start_replica_of(&a, &args).await?;
    let c = Tetherd::start_replica_of(&a, &args).await?;
    Ok((dir, [a, b, c]))
}

/// A simulated device enrolled against `replica`, so its MQTT session is
/// there (the enrollment answer names that replica's MQTT endpoint).
async fn device_on(
    admin: &ApiClient,
    name: &str,
    responder: Responder,
) -> anyhow::Result<SimAgent> {
    let credentials = DeviceCredentials::enroll(admin, name).await?;
    let device = SimAgent::connect(&credentials, responder).await?;
    admin.wait_presence(name, "online").await?;
    Ok(device)
}

async fn get_node_ip(admin: &ApiClient, device: &str) -> anyhow::Result<String> {
    id(&request(admin, device, json!({"action": "get-node-ip"})).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_long_polls_and_disconnects_cross_replicas_by_notification() -> anyhow::Result<()> {
    let (_config, replicas) = three_replicas(600).await?;
    let mut admins = Vec::new();
    for replica in &replicas {
        admins.push(replica.admin().await?);
    }
    let names = ["on-a", "on-b", "on-c"];
    let on_a = device_on(&admins[0], "on-a", Responder::Echo).await?;
    // A real tether-agent, enrolled against b, so its session is there.
    let _on_b = Agent::enroll_online(&replicas[1], &admins[1], "on-b").await?;
    let on_c = device_on(&admins[2], "on-c", Responder::Echo).await?;

    every_replica_runs_actions_on_every_other_replicas_devices(&admins, &names).await?;
    a_long_poll_sees_an_answer_that_arrives_on_another_replica(&admins).await?;
    actions_from_two_replicas_arrive_in_acceptance_order(&admins).await?;
    deleting_revoking_or_reenrolling_closes_the_session_on_another_replica(&admins, &replicas[2])
        .await?;
    on_a.disconnect().await;
    on_c.disconnect().await;
    Ok(())
}

/// All 9 (requesting replica, device's replica) pairs, each answered
/// promptly; the long-poll runs on the requesting replica, so the answer
/// also crosses back.
async fn every_replica_runs_actions_on_every_other_replicas_devices(
    admins: &[ApiClient],
    names: &[&str],
) -> anyhow::Result<()> {
    let mut round_trips = Vec::new();
    for (from, admin) in ["a", "b", "c"].iter().zip(admins) {
        for name in names {
            let started = Instant::now();
            let correlation_id = get_node_ip(admin, name).await?;
            let done = admin
                .get(&format!("/api/v1/actions/{correlation_id}?waitSeconds=20"))
                .await?
                .expect_status(200)?;
            let took = started.elapsed();
            assert_eq!(
                done["state"], "succeeded",
                "requested on {from} for {name}: {done}"
            );
            assert!(
                took < PROMPT,
                "requested on {from} for {name}: answered after {took:?}"
            );
            round_trips.push((format!("{from} → {name}"), took));
        }
    }
    eprintln!("request → answer, long-polled on the requesting replica: {round_trips:?}");
    Ok(())
}

async fn a_long_poll_sees_an_answer_that_arrives_on_another_replica(
    admins: &[ApiClient],
) -> anyhow::Result<()> {
    let (a, b, c) = (&admins[0], &admins[1], &admins[2]);
    let mut device = device_on(a, "silent-on-a", Responder::Silent).await?;
    let correlation_id = get_node_ip(b, "silent-on-a").await?;
    let long_poll = {
        let c = c.clone();
        let path = format!("/api/v1/actions/{correlation_id}?waitSeconds=30");
        tokio::spawn(async move {
            let started = Instant::now();
            let reply = c.get(&path).await;
            (reply, started.elapsed(), Instant::now())
        })
    };
    let request = device
        .next_action(Duration::from_secs(10))
        .await
        .context("the action reached the device on a")?;
    // Not a synchronisation of the outcome (the assertions hold either
    // way): it lets the long-poll on c be waiting before the answer comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answered = Instant::now();
    device
        .answer(&tether_proto::ActionEvent::new(
            &request,
            request.action.clone(),
            200,
            "OK",
            json!({"ip": "192.0.2.1"}),
        ))
        .await?;
    let (reply, waited, returned) = long_poll.await?;
    let action: Value = reply?.expect_status(200)?;
    assert_eq!(action["state"], "succeeded", "{action}");
    assert_eq!(action["response"]["ip"], "192.0.2.1");
    let after_answer = returned.duration_since(answered);
    eprintln!(
        "long-poll on c returned {after_answer:?} after the device answered on a (waited {waited:?})"
    );
    assert!(
        after_answer < Duration::from_millis(1500),
        "the long-poll returned {after_answer:?} after the answer (waitSeconds=30)"
    );
    device.disconnect().await;
    Ok(())
}

async fn actions_from_two_replicas_arrive_in_acceptance_order(
    admins: &[ApiClient],
) -> anyhow::Result<()> {
    let (a, b, c) = (&admins[0], &admins[1], &admins[2]);
    let mut device = device_on(c, "ordered-on-c", Responder::Silent).await?;
    let mut accepted = Vec::new();
    for i in 0..8 {
        let replica = if i % 2 == 0 { a } else { b };
        accepted.push(get_node_ip(replica, "ordered-on-c").await?);
    }
    let mut arrived = Vec::new();
    while arrived.len() < accepted.len() {
        let request = device
            .next_action(Duration::from_secs(10))
            .await
            .with_context(|| format!("only {arrived:?} arrived of {accepted:?}"))?;
        arrived.push(request.correlation_id);
    }
    assert_eq!(arrived, accepted, "arrival order is acceptance order");
    device.disconnect().await;
    Ok(())
}

/// The announcement reaches every replica, also `c` where the re-enrolled
/// device connects with its new certificate at once: that session may start
/// before `c` hears it, and must survive it (it did not: the replica closed
/// whatever session the device had).
async fn deleting_revoking_or_reenrolling_closes_the_session_on_another_replica(
    admins: &[ApiClient],
    c_replica: &Tetherd,
) -> anyhow::Result<()> {
    let (a, b, c) = (&admins[0], &admins[1], &admins[2]);
    let deleted = device_on(b, "deleted-on-a", Responder::Silent).await?;
    let revoked = device_on(c, "revoked-on-a", Responder::Silent).await?;
    let reenrolled = device_on(b, "reenrolled-on-a", Responder::Silent).await?;
    a.delete("/api/v1/devices/deleted-on-a")
        .await?
        .expect_status(204)?;
    a.post("/api/v1/devices/revoked-on-a/revoke", json!({}))
        .await?
        .expect_status(204)?;
    let token = a
        .post(
            "/api/v1/devices/reenrolled-on-a/enrollment-token",
            json!({}),
        )
        .await?
        .expect_status(200)?;
    let fresh =
        DeviceCredentials::enroll_with_token(a, token["token"].as_str().context("a token")?)
            .await?;
    let mut renewed = SimAgent::connect(
        &DeviceCredentials {
            mqtt_url: c_replica.mqtt_url.clone(),
            ..fresh
        },
        Responder::Silent,
    )
    .await?;
    for (device, holder) in [(&deleted, "b"), (&revoked, "c"), (&reenrolled, "b")] {
        wait_until(
            &format!("{}'s session on {holder} to be closed", device.device),
            PROMPT,
            || async { Ok((!device.is_connected()).then_some(())) },
        )
        .await?;
    }
    let id = get_node_ip(a, "reenrolled-on-a").await?;
    let delivered = renewed.next_action(PROMPT).await;
    assert_eq!(
        delivered.map(|action| action.correlation_id),
        Some(id),
        "the session with the new certificate was closed"
    );
    assert!(renewed.is_connected());
    renewed.disconnect().await;
    Ok(())
}

/// The safety nets: an action stored without any announcement (as if its
/// NOTIFY were lost) reaches the device within one outbox sweep period; and
/// when the replica holding the device loses its LISTEN connection while an
/// action is announced, it resyncs as soon as it listens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_whose_notification_is_lost_arrive_within_the_sweep_period() -> anyhow::Result<()> {
    const SWEEP: Duration = Duration::from_secs(2);
    let (_config, [a, _b, c]) = three_replicas(SWEEP.as_secs()).await?;
    let (admin_a, admin_c) = (a.admin().await?, c.admin().await?);
    let mut device = device_on(&admin_c, "edge-on-c", Responder::Silent).await?;
    let postgres = a.postgres().context("a owns the database")?;

    // Stored straight into the database, sealed with the cluster's key:
    // nobody announces it.
    let store = Store::connect(&postgres.url()).await?;
    let sealer = Sealer::load_or_create(&c.data_dir())?;
    let now = chrono::Utc::now();
    let started = Instant::now();
    store
        .insert_action(&NewAction {
            correlation_id: "never-announced".into(),
            device: DeviceId::new("edge-on-c")?,
            action: "get-node-ip".into(),
            input: json!({}),
            sealed_input: sealer.seal(b"{}"),
            created_at: now,
            expires_at: now + chrono::Duration::minutes(5),
            timeout_seconds: 60,
        })
        .await?;
    let arrived = device
        .next_action(SWEEP + Duration::from_secs(2))
        .await
        .with_context(|| format!("not delivered within a sweep period; c's log:\n{}", c.log()))?;
    assert_eq!(arrived.correlation_id, "never-announced");
    eprintln!(
        "an unannounced action arrived after {:?} (sweep every {SWEEP:?})",
        started.elapsed()
    );

    let database = sqlx::PgPool::connect(&postgres.url()).await?;
    let listener = format!(
        "{}{}",
        tether_server::BUS_APPLICATION_NAME_PREFIX,
        c.pid().context("c runs")?
    );
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&listener)
    .fetch_all(&database)
    .await?;
    assert_eq!(terminated, [true], "c's listener connection was found");
    let started = Instant::now();
    let correlation_id = get_node_ip(&admin_a, "edge-on-c").await?;
    let arrived = device
        .next_action(SWEEP + Duration::from_secs(2))
        .await
        .with_context(|| format!("not delivered within a sweep period; c's log:\n{}", c.log()))?;
    assert_eq!(arrived.correlation_id, correlation_id);
    eprintln!(
        "delivered {:?} after the request despite the dropped LISTEN connection",
        started.elapsed()
    );
    wait_until(
        "c to report the dropped listener",
        Duration::from_secs(10),
        || async {
            Ok(c.log()
                .contains("resyncing from the database")
                .then_some(()))
        },
    )
    .await?;
    device.disconnect().await;
    Ok(())
}

/// The next change of a `GET /events/follow` stream that `wanted` picks,
/// skipping the others (the fleet keeps talking meanwhile).
async fn next_change(
    stream: &mut tether_testkit::api::JsonLines,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let change = stream
            .next(left)
            .await
            .with_context(|| format!("waiting for {what}"))?
            .with_context(|| format!("the stream ended before {what}"))?;
        if wanted(&change) {
            return Ok(change);
        }
    }
}

/// A console served by one replica hears what devices on another do: their
/// sessions, their actions' answers, and alerts raised and acknowledged,
/// each once, in the order stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_one_replica_hears_the_fleet_on_another() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tetherd.toml");
    std::fs::write(&config, "[alert_rules]\nevaluation_interval_seconds = 1\n")?;
    let config = config.to_string_lossy().into_owned();
    let serving = Tetherd::start_with(Database::Postgres, &["--config", &config]).await?;
    let holding = Tetherd::start_replica_of(&serving, &["--config", &config]).await?;
    let admin = serving.admin().await?;
    let viewer = serving.user_with_role("viewer").await?;
    let mut stream = viewer.get_json_lines("/api/v1/events/follow").await?;
    assert_eq!(stream.status, 200);

    let on_holding = holding.admin().await?;
    let agent = Agent::enroll_online(&holding, &on_holding, "far-away").await?;
    let online = next_change(&mut stream, "far-away online", |change| {
        change["event"]["event"] == "device-online" && change["event"]["device"] == "far-away"
    })
    .await?;
    let holder = std::fs::read_to_string(holding.data_dir().join("replica-id"))?;
    assert!(
        online["event"]["statusMessage"]
            .as_str()
            .is_some_and(|message| message.contains(holder.trim())),
        "written by the replica holding the session: {online}"
    );

    let accepted = request(
        &on_holding,
        "far-away",
        json!({"action": "get-node-ip", "input": {}}),
    )
    .await?;
    let id = accepted["correlationId"].clone();
    let answer = next_change(&mut stream, "the action's answer", |change| {
        change["event"]["correlationId"] == id
    })
    .await?;
    assert_eq!(answer["event"]["event"], "get-node-ip", "{answer}");

    admin
        .patch(
            "/api/v1/devices/far-away",
            json!({"spec": {"metricsConfig": {"intervalSeconds": 1}}}),
        )
        .await?
        .expect_status(200)?;
    crate::support::add_memory_alert_rule(&admin, "").await?;
    let raised = next_change(&mut stream, "the alert raised", |change| {
        change["alerts"]["firing"] == 1
    })
    .await?;
    let alert = raised["alerts"]["newestId"]
        .as_u64()
        .context("an alert id")?;
    on_holding
        .post(&format!("/api/v1/alerts/{alert}/acknowledge"), json!({}))
        .await?
        .expect_status(200)?;
    next_change(&mut stream, "the alert acknowledged", |change| {
        change["alerts"] == json!({"firing": 0, "acknowledged": 1, "newestId": alert})
    })
    .await?;

    // The agent leaves: its session's end is heard too, once.
    drop(agent);
    next_change(&mut stream, "far-away offline", |change| {
        change["event"]["event"] == "device-offline" && change["event"]["device"] == "far-away"
    })
    .await?;
    let events = admin
        .get("/api/v1/devices/far-away/events?limit=100")
        .await?
        .expect_status(200)?;
    let stored = events["items"].as_array().context("a list")?.len();
    assert!(stored >= 3, "online, the answer, offline: {events}");

    let anonymous = serving.anonymous()?;
    assert_eq!(
        anonymous
            .get_json_lines("/api/v1/events/follow")
            .await?
            .status,
        401
    );
    Ok(())
}
