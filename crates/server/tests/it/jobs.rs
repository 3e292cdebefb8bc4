//! Fleet-wide jobs (issue 12, item 6) end to end: tetherd, simulated
//! devices over real MQTT/mTLS, and registered devices that never connect.
//!
//! The acceptance's 10,000 connected devices are left to `tether-bench
//! --mode fleet-job`: here a few hundred connect and thousands more are
//! registered but offline, which exercises the same batch insert, release
//! and counting paths at a cost the suite can carry.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::sim_agent::{
    InFlight, Responder, SimAgent, connect_many, enroll_many, register_many, wait_online,
};
use tether_testkit::{ApiClient, Database, Tetherd, wait_until};

use crate::support::on_both_databases;

on_both_databases!(
    a_job_reaches_every_matching_device_and_counts_each_result,
    concurrency_and_rate_limit_deliveries,
    cancel_stops_further_deliveries_and_keeps_the_counts,
    offline_devices_get_theirs_on_return_within_the_ttl,
    bad_job_requests_are_refused_and_nothing_is_stored,
    job_results_page_with_continue_tokens_and_cancel_is_idempotent,
);

const ONLINE: usize = 200;
const OFFLINE: usize = 2_000;

async fn a_job_reaches_every_matching_device_and_counts_each_result(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let berlin = json!({"site": "berlin"});
    let online_names: Vec<String> = (0..ONLINE).map(|i| format!("on-{i:04}")).collect();
    let credentials = enroll_many(&admin, online_names.clone(), &berlin, 16).await?;
    register_many(
        &admin,
        (0..OFFLINE).map(|i| format!("off-{i:05}")),
        &berlin,
        16,
    )
    .await?;
    let paris = enroll_many(&admin, ["paris-1".to_owned()], &json!({"site": "paris"}), 1).await?;
    let mut agents = connect_many(&credentials, &Responder::Echo, 32).await?;
    let mut outsider = SimAgent::connect(&paris[0], Responder::Echo).await?;
    wait_online(&admin, ONLINE + 1, Duration::from_secs(60)).await?;

    let created = admin
        .post(
            "/api/v1/jobs",
            json!({"labelSelector": "site=berlin", "action": "get-node-ip", "ttlSeconds": 3}),
        )
        .await?
        .expect_status(201)?;
    assert_eq!(created["devices"], ONLINE + OFFLINE, "{created}");
    assert_eq!(created["state"], "running");
    assert_eq!(
        (&created["counts"]["pending"], &created["counts"]["queued"]),
        (&json!(ONLINE + OFFLINE), &json!(0)),
        "without limits every action is released as the job is stored: {created}"
    );
    let id = text(&created["id"])?;

    let job = wait_finished(&admin, &id, Duration::from_secs(60)).await?;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["counts"]["succeeded"], ONLINE, "{job}");
    assert_eq!(
        job["counts"]["expired"], OFFLINE,
        "offline devices expire after the TTL: {job}"
    );
    for open in ["queued", "pending", "delivered"] {
        assert_eq!(job["counts"][open], 0, "{job}");
    }

    let succeeded = all_results(&admin, &id, Some("succeeded")).await?;
    let devices: BTreeSet<String> = succeeded
        .iter()
        .map(|a| text(&a["device"]))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(devices, online_names.iter().cloned().collect());
    assert!(succeeded.iter().all(|a| a["jobId"] == id.as_str()));
    assert_eq!(
        all_results(&admin, &id, Some("expired")).await?.len(),
        OFFLINE
    );
    assert_eq!(
        all_results(&admin, &id, None).await?.len(),
        ONLINE + OFFLINE
    );

    // Each job action is a normal action: readable alone and in the device's list.
    let one = admin
        .get(&format!(
            "/api/v1/actions/{}",
            text(&succeeded[0]["correlationId"])?
        ))
        .await?
        .expect_status(200)?;
    assert_eq!(one["state"], "succeeded");
    assert_eq!(one["jobId"], id.as_str());
    let listed = admin
        .get("/api/v1/devices/on-0000/actions")
        .await?
        .expect_status(200)?;
    assert_eq!(listed["items"][0]["jobId"], id.as_str(), "{listed}");

    for agent in &mut agents {
        assert_eq!(
            agent.drain().len(),
            1,
            "{} got its action once",
            agent.device
        );
    }
    assert!(
        outsider.drain().is_empty(),
        "a device the selector does not match gets nothing"
    );
    let listed = admin.get("/api/v1/jobs").await?.expect_status(200)?;
    assert_eq!(listed["items"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed["items"][0]["counts"]["succeeded"], ONLINE);
    Ok(())
}

async fn concurrency_and_rate_limit_deliveries(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let names = (0..20).map(|i| format!("slow-{i:02}"));
    let credentials = enroll_many(&admin, names, &json!({"pool": "slow"}), 8).await?;
    let in_flight = Arc::new(InFlight::default());
    let slow = Responder::Slow {
        delay: Duration::from_millis(300),
        in_flight: in_flight.clone(),
    };
    let _agents = connect_many(&credentials, &slow, 8).await?;
    wait_online(&admin, 20, Duration::from_secs(30)).await?;

    let created = admin
        .post(
            "/api/v1/jobs",
            json!({"labelSelector": "pool=slow", "action": "get-node-ip", "concurrency": 5}),
        )
        .await?
        .expect_status(201)?;
    assert_eq!(created["concurrency"], 5);
    let job = wait_finished(&admin, &text(&created["id"])?, Duration::from_secs(60)).await?;
    assert_eq!(job["counts"]["succeeded"], 20, "{job}");
    assert!(
        in_flight.most() <= 5,
        "at most 5 delivered and unanswered at once, the devices held {}",
        in_flight.most()
    );
    assert_eq!(in_flight.most(), 5, "the limit is used, not just respected");
    let finished = admin
        .post(
            &format!("/api/v1/jobs/{}/cancel", text(&job["id"])?),
            json!({}),
        )
        .await?;
    assert_eq!(
        finished.status, 409,
        "a completed job has nothing to cancel"
    );

    // 10 a second: the first second's worth at once, the other 10 over
    // about a second more.
    let created = admin
        .post(
            "/api/v1/jobs",
            json!({"labelSelector": "pool=slow", "action": "get-node-ip", "ratePerSecond": 10}),
        )
        .await?
        .expect_status(201)?;
    let id = text(&created["id"])?;
    wait_finished(&admin, &id, Duration::from_secs(60)).await?;
    let mut delivered: Vec<chrono::DateTime<chrono::Utc>> = all_results(&admin, &id, None)
        .await?
        .iter()
        .map(|a| Ok(text(&a["deliveredAt"])?.parse()?))
        .collect::<anyhow::Result<_>>()?;
    delivered.sort();
    let spread = delivered[19] - delivered[0];
    assert!(
        spread >= chrono::Duration::milliseconds(800),
        "20 deliveries at 10/s span about a second, not {spread}"
    );
    Ok(())
}

async fn cancel_stops_further_deliveries_and_keeps_the_counts(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let names = (0..20).map(|i| format!("edge-{i:02}"));
    let credentials = enroll_many(&admin, names, &json!({"site": "hamburg"}), 8).await?;
    let in_flight = Arc::new(InFlight::default());
    let slow = Responder::Slow {
        delay: Duration::from_secs(1),
        in_flight: in_flight.clone(),
    };
    let mut agents = connect_many(&credentials, &slow, 8).await?;
    wait_online(&admin, 20, Duration::from_secs(30)).await?;

    let created = admin
        .post(
            "/api/v1/jobs",
            json!({"labelSelector": "site=hamburg", "action": "get-node-ip", "concurrency": 2}),
        )
        .await?
        .expect_status(201)?;
    let id = text(&created["id"])?;
    // Both slots taken and the devices busy for a second: nothing is being
    // released while the cancel lands.
    wait_until(
        "two actions at the devices",
        Duration::from_secs(20),
        || {
            let most = in_flight.most();
            async move { Ok((most >= 2).then_some(())) }
        },
    )
    .await?;
    let cancelled = admin
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await?
        .expect_status(200)?;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert!(cancelled["cancelledAt"].is_string());
    let cancelled_count = cancelled["counts"]["cancelled"].as_u64().context("count")?;
    assert_eq!(
        cancelled_count, 18,
        "all but the two delivered: {cancelled}"
    );

    let job = wait_finished(&admin, &id, Duration::from_secs(30)).await?;
    assert_eq!(job["state"], "cancelled", "a cancelled job stays cancelled");
    assert_eq!(
        job["counts"]["succeeded"], 2,
        "delivered ones finish: {job}"
    );
    assert_eq!(job["counts"]["cancelled"], 18, "{job}");
    let received: usize = agents.iter_mut().map(|a| a.drain().len()).sum();
    assert_eq!(received, 2, "nothing reached a device after the cancel");

    let results = all_results(&admin, &id, Some("cancelled")).await?;
    assert_eq!(results.len(), 18);
    assert!(
        text(&results[0]["statusMessage"])?.contains("cancelled"),
        "{}",
        results[0]
    );
    // Cancelling again changes nothing; the summary stays.
    let again = admin
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await?
        .expect_status(200)?;
    assert_eq!(again["counts"], job["counts"]);
    let audit = admin.get("/api/v1/audit").await?.expect_status(200)?;
    let paths: Vec<&str> = audit["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["method"] == "POST")
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(paths.contains(&"/api/v1/jobs"), "{paths:?}");
    assert!(
        paths.contains(&format!("/api/v1/jobs/{id}/cancel").as_str()),
        "{paths:?}"
    );
    Ok(())
}

async fn offline_devices_get_theirs_on_return_within_the_ttl(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let names = ["late-a", "late-b", "late-c"].map(str::to_owned);
    let credentials = enroll_many(&admin, names, &json!({"wave": "late"}), 3).await?;
    let by_name = |name: &str| {
        credentials
            .iter()
            .find(|c| c.device.as_str() == name)
            .context("enrolled")
    };
    let mut a = SimAgent::connect(by_name("late-a")?, Responder::Echo).await?;
    admin.wait_presence("late-a", "online").await?;

    // With a limit, an offline device's action stays queued (it would only
    // hold a slot) until the device returns.
    let created = admin
        .post(
            "/api/v1/jobs",
            json!({"labelSelector": "wave=late", "action": "get-node-ip",
                   "concurrency": 2, "ttlSeconds": 6}),
        )
        .await?
        .expect_status(201)?;
    let id = text(&created["id"])?;
    assert!(a.next_action(Duration::from_secs(10)).await.is_some());
    let queued = all_results(&admin, &id, Some("queued")).await?;
    let waiting: Vec<&str> = queued.iter().filter_map(|a| a["device"].as_str()).collect();
    assert_eq!(waiting, ["late-b", "late-c"]);

    let mut b = SimAgent::connect(by_name("late-b")?, Responder::Echo).await?;
    let request = b
        .next_action(Duration::from_secs(5))
        .await
        .context("late-b gets its action when it returns")?;
    assert_eq!(request.action, "get-node-ip");

    let job = wait_finished(&admin, &id, Duration::from_secs(30)).await?;
    assert_eq!(job["counts"]["succeeded"], 2, "{job}");
    assert_eq!(job["counts"]["expired"], 1, "late-c never came: {job}");
    let expired = all_results(&admin, &id, Some("expired")).await?;
    assert_eq!(expired[0]["device"], "late-c");
    assert!(
        text(&expired[0]["statusMessage"])?.contains("TTL"),
        "{}",
        expired[0]
    );
    // Coming back after the TTL brings nothing.
    let mut c = SimAgent::connect(by_name("late-c")?, Responder::Echo).await?;
    admin.wait_presence("late-c", "online").await?;
    assert!(c.next_action(Duration::from_millis(500)).await.is_none());
    Ok(())
}

async fn bad_job_requests_are_refused_and_nothing_is_stored(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    admin
        .post(
            "/api/v1/devices",
            json!({"name": "edge-1", "labels": {"site": "berlin"}}),
        )
        .await?
        .expect_status(201)?;
    let good = json!({"labelSelector": "site=berlin", "action": "get-node-ip"});
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let cases = [
        (
            with("action", json!("no-such-action")),
            400,
            "no-such-action",
        ),
        (
            json!({"labelSelector": "site=berlin", "action": "run-stats", "input": {"interval": "often"}}),
            400,
            "interval",
        ),
        (with("labelSelector", json!("=berlin")), 400, "selector"),
        (with("labelSelector", json!(" ")), 400, "labelSelector"),
        (with("concurrency", json!(0)), 400, "concurrency"),
        (with("concurrency", json!(10_001)), 400, "concurrency"),
        (with("concurrency", json!(-1)), 400, "concurrency"),
        (with("ratePerSecond", json!(0)), 400, "ratePerSecond"),
        (with("ttlSeconds", json!(0)), 400, "ttlSeconds"),
        (
            with("timeoutSeconds", json!(100_000)),
            400,
            "timeoutSeconds",
        ),
        (
            with("input", json!({"correlationId": "mine"})),
            400,
            "correlationId",
        ),
        (with("labelSelector", json!("site=berlni")), 422, "berlni"),
        // A misspelled limit must not start an unlimited job.
        (with("concurency", json!(1)), 400, "concurency"),
        (with("rate_per_second", json!(1)), 400, "rate_per_second"),
        (
            with(
                "labelSelector",
                json!(format!("site in ({})", "a,".repeat(3000))),
            ),
            400,
            "at most 4096",
        ),
        (
            with("labelSelector", json!("site in ()")),
            400,
            "site in ()",
        ),
        (with("labelSelector", json!(7)), 400, "labelSelector"),
        (with("action", json!("x".repeat(100_000))), 400, "action"),
    ];
    for (body, status, named) in cases {
        let reply = admin.post("/api/v1/jobs", body.clone()).await?;
        assert_eq!(reply.status, status, "{body} → {}", reply.body);
        let message = text(&reply.body["error"]["message"])?;
        assert!(message.contains(named), "{body}: {message}");
    }
    assert_eq!(
        admin.get("/api/v1/jobs").await?.expect_status(200)?,
        json!({"items": []})
    );
    assert_eq!(
        admin
            .get("/api/v1/devices/edge-1/actions")
            .await?
            .expect_status(200)?,
        json!({"items": []})
    );
    for path in ["/api/v1/jobs/nope", "/api/v1/jobs/nope/actions"] {
        admin.get(path).await?.expect_status(404)?;
    }
    admin
        .post("/api/v1/jobs/nope/cancel", json!({}))
        .await?
        .expect_status(404)?;

    let created = admin.post("/api/v1/jobs", good).await?.expect_status(201)?;
    let id = text(&created["id"])?;
    admin
        .get(&format!("/api/v1/jobs/{id}/actions?state=bogus"))
        .await?
        .expect_status(400)?;
    // No limit: the dispatcher (on whichever replica leads it) releases it
    // at its next round, to wait pending for the offline device.
    let pending_path = format!("/api/v1/jobs/{id}/actions?state=pending");
    let pending = wait_until("the job's action released", Duration::from_secs(10), || {
        let (admin, path) = (admin.clone(), pending_path.clone());
        async move {
            let page = admin.get(&path).await?.expect_status(200)?;
            Ok((page["items"][0]["device"] == "edge-1").then_some(page))
        }
    })
    .await?;
    assert_eq!(
        pending["items"].as_array().map(Vec::len),
        Some(1),
        "{pending}"
    );
    Ok(())
}

/// Pages of a job's results follow the same `continue` tokens as every
/// other listing, and a token continues only its own job and outcome.
/// Held by limits with every device offline, the actions stay queued, so
/// the pages do not move under the walk.
async fn job_results_page_with_continue_tokens_and_cancel_is_idempotent(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let names: Vec<String> = (0..5).map(|i| format!("b-{i}")).collect();
    register_many(&admin, names.clone(), &json!({"site": "berlin"}), 4).await?;
    let held = json!({"labelSelector": "site=berlin", "action": "get-node-ip", "concurrency": 1});
    let first = text(
        &admin
            .post("/api/v1/jobs", held.clone())
            .await?
            .expect_status(201)?["id"],
    )?;
    let second = text(&admin.post("/api/v1/jobs", held).await?.expect_status(201)?["id"])?;

    for state in [None, Some("queued")] {
        let query = state.map_or_else(String::new, |s| format!("&state={s}"));
        let mut devices = Vec::new();
        let mut pages = 0;
        let mut next = String::new();
        loop {
            let path = format!("/api/v1/jobs/{first}/actions?limit=2{query}{next}");
            let page = admin.get(&path).await?.expect_status(200)?;
            pages += 1;
            for action in page["items"].as_array().context("items")? {
                devices.push(text(&action["device"])?);
            }
            match page["continue"].as_str() {
                Some(token) => next = format!("&continue={token}"),
                None => break,
            }
        }
        assert_eq!(devices, names, "state {state:?}: each device once, by name");
        assert_eq!(pages, 3, "state {state:?}");
    }
    let page = admin
        .get(&format!(
            "/api/v1/jobs/{first}/actions?limit=2&state=queued"
        ))
        .await?
        .expect_status(200)?;
    let token = text(&page["continue"])?;
    for elsewhere in [
        format!("/api/v1/jobs/{first}/actions?continue={token}"),
        format!("/api/v1/jobs/{first}/actions?state=failed&continue={token}"),
        format!("/api/v1/jobs/{second}/actions?state=queued&continue={token}"),
        format!("/api/v1/jobs?continue={token}"),
        format!("/api/v1/devices?continue={token}"),
    ] {
        let reply = admin.get(&elsewhere).await?;
        assert_eq!(reply.status, 400, "{elsewhere}: {}", reply.body);
        let message = text(&reply.body["error"]["message"])?;
        assert!(
            message.contains("another listing"),
            "{elsewhere}: {message}"
        );
    }
    for (query, named) in [
        ("after=b-1", "after"),
        ("limit=0", "limit"),
        ("limit=5001", "limit"),
        ("limit=-3", "limit"),
        ("continue=garbage", "continue token"),
    ] {
        let reply = admin
            .get(&format!("/api/v1/jobs/{first}/actions?{query}"))
            .await?;
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        let message = text(&reply.body["error"]["message"])?;
        assert!(message.contains(named), "{query}: {message}");
    }

    // Jobs themselves page newest first.
    let mut listed = Vec::new();
    let mut next = String::new();
    loop {
        let page = admin
            .get(&format!("/api/v1/jobs?limit=1{next}"))
            .await?
            .expect_status(200)?;
        for job in page["items"].as_array().context("items")? {
            listed.push(text(&job["id"])?);
        }
        match page["continue"].as_str() {
            Some(token) => next = format!("&continue={token}"),
            None => break,
        }
    }
    assert_eq!(listed, [second.clone(), first.clone()]);

    // Cancelling twice: the second changes nothing and is no error; once
    // its last action ended, the job stays cancelled.
    let cancelled = admin
        .post(&format!("/api/v1/jobs/{first}/cancel"), json!({}))
        .await?
        .expect_status(200)?;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["counts"]["cancelled"], 5, "{cancelled}");
    let again = admin
        .post(&format!("/api/v1/jobs/{first}/cancel"), json!({}))
        .await?
        .expect_status(200)?;
    assert_eq!(again["cancelledAt"], cancelled["cancelledAt"], "{again}");
    assert_eq!(again["counts"], cancelled["counts"], "{again}");
    let finished = wait_finished(&admin, &first, Duration::from_secs(10)).await?;
    assert_eq!(finished["state"], "cancelled", "{finished}");
    admin
        .post(&format!("/api/v1/jobs/{first}/cancel"), json!({}))
        .await?
        .expect_status(200)?;

    // A device deleted mid-job takes its action with it; the job still
    // ends, with the others' counts.
    admin
        .delete("/api/v1/devices/b-0")
        .await?
        .expect_status(204)?;
    let cancelled = admin
        .post(&format!("/api/v1/jobs/{second}/cancel"), json!({}))
        .await?
        .expect_status(200)?;
    assert_eq!(cancelled["counts"]["cancelled"], 4, "{cancelled}");
    let finished = wait_finished(&admin, &second, Duration::from_secs(10)).await?;
    assert_eq!(finished["counts"]["cancelled"], 4, "{finished}");
    Ok(())
}

/// A bad day: PostgreSQL restarts in the middle of a limited job. While it
/// is down the API says the database is unavailable (503, not an internal
/// error); once it is back the job goes on and ends with one ended action
/// per device. Simulated devices whose answers tetherd could not store may
/// drop out (they do not reconnect), so short TTL and timeout let theirs end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_on_after_a_postgresql_restart() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Postgres).await?;
    let admin = tetherd.admin().await?;
    let names: Vec<String> = (0..12).map(|i| format!("pg-{i:02}")).collect();
    let credentials = enroll_many(&admin, names.clone(), &json!({"pool": "pg"}), 6).await?;
    let in_flight = Arc::new(InFlight::default());
    let slow = Responder::Slow {
        delay: Duration::from_millis(200),
        in_flight: in_flight.clone(),
    };
    let _agents = connect_many(&credentials, &slow, 6).await?;
    wait_online(&admin, names.len(), Duration::from_secs(30)).await?;
    let created = admin
        .post(
            "/api/v1/jobs",
            json!({"labelSelector": "pool=pg", "action": "get-node-ip", "concurrency": 2, "ttlSeconds": 20, "timeoutSeconds": 5}),
        )
        .await?
        .expect_status(201)?;
    let id = text(&created["id"])?;
    let job_path = format!("/api/v1/jobs/{id}");
    wait_until("a few answers", Duration::from_secs(30), || async {
        let job = admin.get(&job_path).await?.expect_status(200)?;
        Ok((job["counts"]["succeeded"].as_u64() >= Some(2)).then_some(()))
    })
    .await?;

    let postgres = tetherd.postgres().context("on PostgreSQL")?;
    postgres.stop()?;
    for reply in [
        admin.get(&job_path).await?,
        admin.get(&format!("{job_path}/actions")).await?,
        admin.post(&format!("{job_path}/cancel"), json!({})).await?,
    ] {
        assert_eq!(reply.status, 503, "{}", reply.body);
        let message = text(&reply.body["error"]["message"])?;
        assert!(message.contains("database"), "{message}");
    }
    postgres.start_again()?;

    let job = wait_finished(&admin, &id, Duration::from_secs(90))
        .await
        .with_context(|| tetherd.log())?;
    assert_eq!(job["state"], "completed", "{job}");
    let count = |state: &str| job["counts"][state].as_u64().unwrap_or_default();
    assert!(count("succeeded") >= 2, "{job}");
    assert_eq!(
        count("succeeded") + count("timedOut") + count("expired"),
        names.len() as u64,
        "every device's action ended: {job}"
    );
    let listed: Vec<String> = all_results(&admin, &id, None)
        .await?
        .iter()
        .map(|a| text(&a["device"]))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(listed, names, "one action per device");
    assert!(in_flight.most() <= 2, "{}", in_flight.most());
    Ok(())
}

fn text(value: &Value) -> anyhow::Result<String> {
    Ok(value
        .as_str()
        .with_context(|| format!("{value} is a string"))?
        .to_owned())
}

/// Polls the job until its last action ended.
async fn wait_finished(admin: &ApiClient, id: &str, deadline: Duration) -> anyhow::Result<Value> {
    wait_until(&format!("job {id} to finish"), deadline, || async move {
        let job = admin
            .get(&format!("/api/v1/jobs/{id}"))
            .await?
            .expect_status(200)?;
        Ok(job["finishedAt"].is_string().then_some(job))
    })
    .await
}

/// Every action of the job (in `state`), following the pages.
async fn all_results(
    admin: &ApiClient,
    id: &str,
    state: Option<&str>,
) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut next = String::new();
    loop {
        let mut path = format!("/api/v1/jobs/{id}/actions?limit=1000{next}");
        if let Some(state) = state {
            path.push_str(&format!("&state={state}"));
        }
        let page = admin.get(&path).await?.expect_status(200)?;
        all.extend(
            page["items"]
                .as_array()
                .context("a page has items")?
                .iter()
                .cloned(),
        );
        match page["continue"].as_str() {
            Some(token) => next = format!("&continue={token}"),
            None => return Ok(all),
        }
    }
}
