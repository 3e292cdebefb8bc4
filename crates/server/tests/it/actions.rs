//! The action loop end to end: tetherd, real agents (or simulated ones where
//! a test must see exactly what reaches the device), real MQTT over TLS.

use std::time::Duration;

use serde_json::json;
use tether_testkit::http_target::{Behaviour, HttpTarget};
use tether_testkit::seed_schema::{check_event, check_request};
use tether_testkit::sim_agent::{DeviceCredentials, Responder, SimAgent};
use tether_testkit::{Agent, Database, Tetherd, wait_until};

use crate::support::{id, on_both_databases, request, run, wait_terminal};

on_both_databases!(
    every_agent_action_round_trips,
    invalid_input_is_refused_and_never_sent,
    offline_actions_wait_and_arrive_in_order,
    undelivered_actions_expire_after_their_ttl,
    unanswered_actions_time_out,
    agent_killed_mid_action_ends_it_without_running_it_twice,
    a_device_cannot_answer_for_another,
    secrets_are_redacted_in_records_and_logs_but_reach_the_device,
    a_restarted_agent_taking_over_its_session_stays_online,
    a_controller_crash_loses_no_accepted_action,
);

/// Every action a plain device (no cluster) runs, through tetherd to a real
/// agent: each request and each answer checked against seed 000's schema
/// (the Kubernetes ones: the agent's `kubernetes` tests).
async fn every_agent_action_round_trips(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let _agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    // `run` checked against the seed: the input, and the answer where the
    // seed defines the event.
    let checked = |action: &'static str, input: serde_json::Value| {
        let admin = admin.clone();
        async move {
            check_request(action, &input)?;
            let done = run(&admin, "edge-1", action, input).await?;
            if !matches!(action, "configure-logger" | "run-stats" | "stop-stats") {
                check_event(action, &done)?;
            }
            anyhow::Ok(done)
        }
    };

    let ips = checked("get-node-ip", json!({})).await?;
    assert_eq!(ips["state"], "succeeded", "{ips}");
    assert_eq!(ips["statusCode"], 200);
    let addresses = ips["response"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(addresses.iter().any(|a| a["ip"] == "127.0.0.1"), "{ips}");

    let logger = checked(
        "configure-logger",
        json!({"level": "warning", "pretty": true, "color": false}),
    )
    .await?;
    assert_eq!(logger["state"], "succeeded", "{logger}");

    let authorization = checked("get-authorization-id", json!({})).await?;
    assert_eq!(authorization["state"], "succeeded", "{authorization}");
    assert!(
        authorization["response"]["authorizationId"]
            .as_str()
            .is_some_and(|a| !a.is_empty())
    );

    // send-api passes the remote's status on, and its body as the
    // response string.
    let target = HttpTarget::start(Behaviour::Respond(b"hello from the edge".to_vec())).await?;
    let api = checked(
        "send-api",
        json!({"href": format!("{}/status", target.url), "requestMethod": "GET"}),
    )
    .await?;
    assert_eq!(api["state"], "succeeded", "{api}");
    assert_eq!(
        (&api["statusCode"], &api["response"]),
        (&json!(200), &json!("hello from the edge"))
    );
    assert_eq!(target.requests(), 1);

    let big = HttpTarget::start(Behaviour::Respond(vec![b'x'; 1536 * 1024])).await?;
    let truncated = checked("send-api", json!({"href": big.url})).await?;
    assert_eq!(
        truncated["state"], "succeeded",
        "{}",
        truncated["statusMessage"]
    );
    assert_eq!(
        truncated["statusMessage"],
        "OK (the body is cut to its first MiB)"
    );
    assert_eq!(
        truncated["response"].as_str().map(str::len),
        Some(1024 * 1024)
    );

    let not_http = checked("send-api", json!({"href": "file:///etc/passwd"})).await?;
    assert_eq!(not_http["state"], "rejected", "{not_http}");
    assert_eq!(not_http["statusCode"], 400);

    let stats = checked("run-stats", json!({"interval": 1})).await?;
    assert_eq!(stats["state"], "succeeded", "{stats}");
    let metrics = wait_until("metrics from run-stats", Duration::from_secs(20), || {
        let admin = admin.clone();
        async move {
            let samples = admin
                .get("/api/v1/devices/edge-1/metrics?limit=5")
                .await?
                .expect_status(200)?;
            Ok(samples["items"]
                .as_array()
                .filter(|s| !s.is_empty())
                .cloned())
        }
    })
    .await?;
    assert!(
        metrics[0]["memoryTotalBytes"].as_u64().unwrap_or(0) > 0,
        "{metrics:?}"
    );
    let stop = checked("stop-stats", json!({})).await?;
    assert_eq!(stop["state"], "succeeded", "{stop}");

    // A cluster action on a device that manages no cluster says so; it is
    // not a default action (ADR 0017).
    admin
        .put("/api/v1/devices/edge-1/action-set/retrieve-kubeconfig")
        .await?
        .expect_status(200)?;
    let no_cluster = checked("retrieve-kubeconfig", json!({"format": "yaml"})).await?;
    assert_eq!(no_cluster["statusCode"], 503, "{no_cluster}");
    assert_eq!(no_cluster["state"], "failed");
    assert!(
        no_cluster["statusMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("--kubernetes"),
        "{no_cluster}"
    );

    let events = admin
        .get("/api/v1/devices/edge-1/events?limit=100")
        .await?
        .expect_status(200)?;
    let names: Vec<_> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event"].as_str())
        .collect();
    for expected in [
        "get-node-ip",
        "send-api",
        "retrieve-kubeconfig",
        "device-online",
    ] {
        assert!(
            names.contains(&expected),
            "no {expected} event in {names:?}"
        );
    }
    let listed = admin
        .get("/api/v1/devices/edge-1/actions")
        .await?
        .expect_status(200)?;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(9));
    Ok(())
}

async fn invalid_input_is_refused_and_never_sent(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let credentials = DeviceCredentials::enroll(&admin, "edge-1").await?;
    let mut device = SimAgent::connect(&credentials, Responder::Silent).await?;
    admin.wait_presence("edge-1", "online").await?;

    let bad = admin
        .post(
            "/api/v1/devices/edge-1/actions",
            json!({"action": "run-stats", "input": {"interval": "often"}}),
        )
        .await?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.body["error"]["code"], "invalid_input");
    assert_eq!(
        bad.body["error"]["details"]["fields"][0]["path"],
        "$.interval"
    );
    assert!(
        bad.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("$.interval")
    );

    let unknown = admin
        .post(
            "/api/v1/devices/edge-1/actions",
            json!({"action": "format-disk"}),
        )
        .await?;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert_eq!(unknown.body["error"]["code"], "unknown_action");

    let bad_ttl = admin
        .post(
            "/api/v1/devices/edge-1/actions",
            json!({"action": "get-node-ip", "ttlSeconds": 0}),
        )
        .await?;
    assert_eq!(bad_ttl.status, 400);

    // A tunnel's dial-back is tetherd's to send: an operator cannot make a
    // device dial a URL and token of their choosing, alone or as a job.
    let dial = json!({"action": "open-tunnel", "input": {
        "url": "wss://elsewhere.example:443/api/v1/tunnels/1", "token": "chosen", "kind": "exec",
        "command": ["true"]}});
    let refused = admin
        .post("/api/v1/devices/edge-1/actions", dial.clone())
        .await?;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "sent_by_tetherd_only");
    let mut job = dial;
    job["labelSelector"] = json!("!absent");
    let refused = admin.post("/api/v1/jobs", job).await?;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "sent_by_tetherd_only");

    // The first message the device receives is the valid action: the refused
    // ones were never sent, and none was stored.
    let good = request(&admin, "edge-1", json!({"action": "get-node-ip"})).await?;
    let first = device.next_action(Duration::from_secs(20)).await;
    assert_eq!(first.map(|r| r.correlation_id), Some(id(&good)?));
    let listed = admin
        .get("/api/v1/devices/edge-1/actions")
        .await?
        .expect_status(200)?;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
    assert!(
        device
            .next_action(Duration::from_millis(300))
            .await
            .is_none()
    );
    device.disconnect().await;
    Ok(())
}

async fn offline_actions_wait_and_arrive_in_order(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;

    // Strict order, seen from the device's side.
    let credentials = DeviceCredentials::enroll(&admin, "sim-1").await?;
    let mut expected = Vec::new();
    for level in ["debug", "info", "error"] {
        let accepted = request(
            &admin,
            "sim-1",
            json!({"action": "configure-logger", "input": {"level": level}}),
        )
        .await?;
        assert_eq!(accepted["state"], "pending");
        expected.push(id(&accepted)?);
    }
    let mut device = SimAgent::connect(&credentials, Responder::Echo).await?;
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let action = device.next_action(Duration::from_secs(20)).await;
        received.push(action.map(|a| a.correlation_id).unwrap_or_default());
    }
    assert_eq!(received, expected);
    for correlation_id in &expected {
        assert_eq!(
            wait_terminal(&admin, correlation_id).await?["state"],
            "succeeded"
        );
    }
    device.disconnect().await;

    // And with a real agent that was stopped and starts again.
    let mut agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    agent.stop().await?;
    agent.wait_presence(&admin, "offline").await?;
    let first = request(&admin, "edge-1", json!({"action": "get-authorization-id"})).await?;
    let second = request(&admin, "edge-1", json!({"action": "get-node-ip"})).await?;
    assert_eq!(
        admin
            .get(&format!("/api/v1/actions/{}", id(&first)?))
            .await?
            .expect_status(200)?["state"],
        "pending"
    );
    agent.start()?;
    let first = wait_terminal(&admin, &id(&first)?).await?;
    let second = wait_terminal(&admin, &id(&second)?).await?;
    assert_eq!(first["state"], "succeeded", "{first}");
    assert_eq!(second["state"], "succeeded", "{second}");
    assert!(first["completedAt"].as_str() <= second["completedAt"].as_str());
    Ok(())
}

async fn undelivered_actions_expire_after_their_ttl(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    admin
        .post("/api/v1/devices", json!({"name": "edge-1"}))
        .await?
        .expect_status(201)?;
    let accepted = request(
        &admin,
        "edge-1",
        json!({"action": "get-node-ip", "ttlSeconds": 1}),
    )
    .await?;
    let default_ttl = request(&admin, "edge-1", json!({"action": "get-node-ip"})).await?;
    let expired = wait_terminal(&admin, &id(&accepted)?).await?;
    assert_eq!(expired["state"], "expired", "{expired}");
    assert!(
        expired["statusMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("TTL"),
        "{expired}"
    );
    let still = admin
        .get(&format!("/api/v1/actions/{}", id(&default_ttl)?))
        .await?
        .expect_status(200)?;
    assert_eq!(still["state"], "pending", "the default TTL is an hour");
    Ok(())
}

async fn unanswered_actions_time_out(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let credentials = DeviceCredentials::enroll(&admin, "edge-1").await?;
    let mut device = SimAgent::connect(&credentials, Responder::Silent).await?;
    admin.wait_presence("edge-1", "online").await?;
    let accepted = request(
        &admin,
        "edge-1",
        json!({"action": "get-node-ip", "timeoutSeconds": 1}),
    )
    .await?;
    assert!(device.next_action(Duration::from_secs(20)).await.is_some());
    let ended = wait_terminal(&admin, &id(&accepted)?).await?;
    assert_eq!(ended["state"], "timed-out", "{ended}");
    assert!(ended["deliveredAt"].is_string());
    device.disconnect().await;
    Ok(())
}

async fn agent_killed_mid_action_ends_it_without_running_it_twice(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let mut agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    let target = HttpTarget::start(Behaviour::Hang).await?;
    let accepted = request(
        &admin,
        "edge-1",
        json!({"action": "send-api", "input": {"href": target.url}}),
    )
    .await?;
    // The agent is mid-request.
    target.wait_for_requests(1).await?;

    agent.kill();
    agent.start()?;
    let ended = wait_terminal(&admin, &id(&accepted)?).await?;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["statusCode"], 500);
    assert!(
        ended["statusMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{ended}"
    );
    assert_eq!(
        target.requests(),
        1,
        "the interrupted action must not run again"
    );

    // The agent works normally after the restart.
    let after = run(&admin, "edge-1", "get-node-ip", json!({})).await?;
    assert_eq!(after["state"], "succeeded");
    Ok(())
}

async fn a_device_cannot_answer_for_another(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let a = DeviceCredentials::enroll(&admin, "device-a").await?;
    admin
        .post("/api/v1/devices", json!({"name": "device-b"}))
        .await?
        .expect_status(201)?;
    let for_b = request(&admin, "device-b", json!({"action": "get-node-ip"})).await?;
    let mut device_a = SimAgent::connect(&a, Responder::Silent).await?;
    let forged = tether_proto::ActionEvent {
        correlation_id: id(&for_b)?,
        event: "get-node-ip".into(),
        status_code: 200,
        status_message: "forged".into(),
        response: json!({"addresses": []}),
    };
    device_a.answer(&forged).await?;
    // Then A answers its own action; once that is recorded, the forged answer
    // (ingested before it, in order) has been dealt with.
    let for_a = request(&admin, "device-a", json!({"action": "get-node-ip"})).await?;
    let delivered = device_a.next_action(Duration::from_secs(20)).await;
    assert_eq!(delivered.map(|r| r.correlation_id), Some(id(&for_a)?));
    device_a
        .answer(&tether_proto::ActionEvent {
            correlation_id: id(&for_a)?,
            ..forged.clone()
        })
        .await?;
    assert_eq!(
        wait_terminal(&admin, &id(&for_a)?).await?["state"],
        "succeeded"
    );
    let b_action = admin
        .get(&format!("/api/v1/actions/{}", id(&for_b)?))
        .await?
        .expect_status(200)?;
    assert_eq!(b_action["state"], "pending", "{b_action}");
    device_a.disconnect().await;
    Ok(())
}

async fn secrets_are_redacted_in_records_and_logs_but_reach_the_device(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let credentials = DeviceCredentials::enroll(&admin, "edge-1").await?;
    let secret = "hunter2-very-secret";
    let fingerprint = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
    let input = json!({
        "command": "backup-database",
        "parameters": {"deployment": "db", "host": "127.0.0.1", "port": 22, "user": "backup", "password": secret, "remotePath": "/b",
                       "hostKeyFingerprint": fingerprint}
    });
    // Destructive, so never enabled by default (ADR 0017).
    admin
        .put("/api/v1/devices/edge-1/action-set/restore-command")
        .await?
        .expect_status(200)?;
    // Accepted while the device is offline, so the secret must survive in
    // the store (sealed) until delivery.
    let accepted = request(
        &admin,
        "edge-1",
        json!({"action": "restore-command", "input": input}),
    )
    .await?;
    assert_eq!(accepted["input"]["parameters"]["password"], "***");
    assert_eq!(accepted["input"]["parameters"]["user"], "backup");
    // Public, and what an operator checks: not redacted (ADR 0020).
    assert_eq!(
        accepted["input"]["parameters"]["hostKeyFingerprint"],
        fingerprint
    );

    let mut device = SimAgent::connect(&credentials, Responder::Echo).await?;
    let delivered = device
        .next_action(Duration::from_secs(20))
        .await
        .expect("the action arrives");
    assert_eq!(
        delivered.input["parameters"]["password"], secret,
        "the device gets the real input"
    );
    let done = wait_terminal(&admin, &id(&accepted)?).await?;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["input"]["parameters"]["password"], "***");
    assert!(!tetherd.log().contains(secret), "tetherd logged the secret");
    device.disconnect().await;
    Ok(())
}

/// An agent restarted while its old connection is still open (half-open TCP,
/// a moved pod) takes the session over; the old session's will must not mark
/// the device offline or stop deliveries to the new one.
async fn a_restarted_agent_taking_over_its_session_stays_online(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let credentials = DeviceCredentials::enroll(&admin, "edge-1").await?;
    let old = SimAgent::connect(&credentials, Responder::Silent).await?;
    admin.wait_presence("edge-1", "online").await?;
    let new = SimAgent::connect(&credentials, Responder::Echo).await?;
    // Let the takeover and the old session's will be ingested: an action
    // requested after this answer is handled behind them.
    let probe = run(&admin, "edge-1", "get-node-ip", json!({})).await?;
    assert_eq!(probe["state"], "succeeded", "{probe}");
    let after = run(&admin, "edge-1", "get-node-ip", json!({})).await?;
    assert_eq!(after["state"], "succeeded", "{after}");
    let device = admin
        .get("/api/v1/devices/edge-1")
        .await?
        .expect_status(200)?;
    assert_eq!(device["presence"], "online", "{device}");
    drop(old);
    new.disconnect().await;
    Ok(())
}

/// tetherd killed with SIGKILL while holding accepted actions (one pending
/// for an offline device, one delivered to a device that has not answered
/// yet) and restarted: both end in a definite state, nothing is lost.
async fn a_controller_crash_loses_no_accepted_action(database: Database) -> anyhow::Result<()> {
    let mut tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let mut agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    let target = HttpTarget::start(Behaviour::Hang).await?;
    let in_flight = request(
        &admin,
        "edge-1",
        json!({"action": "send-api", "input": {"href": target.url}, "timeoutSeconds": 600}),
    )
    .await?;
    // The agent is mid-request.
    target.wait_for_requests(1).await?;
    agent.kill();
    agent.wait_presence(&admin, "offline").await?;
    let pending = request(&admin, "edge-1", json!({"action": "get-node-ip"})).await?;

    tetherd.restart().await?;
    let admin = tetherd.admin().await?;
    agent.start()?;
    let pending = wait_terminal(&admin, &id(&pending)?).await?;
    assert_eq!(pending["state"], "succeeded", "{pending}");
    let in_flight = wait_terminal(&admin, &id(&in_flight)?).await?;
    assert_eq!(in_flight["state"], "failed", "{in_flight}");
    assert!(
        in_flight["statusMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{in_flight}"
    );
    assert_eq!(target.requests(), 1, "never run twice");
    Ok(())
}
