//! `--mode fleet-job`: N simulated agents answer one fleet-wide job; the
//! time from the job's creation to the last device's answer being recorded.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tether_testkit::sim_agent::{Responder, connect_many, enroll_many, register_many, wait_online};
use tether_testkit::{ApiClient, Database, Tetherd};

pub struct Settings {
    pub database: Database,
    pub agents: usize,
    /// Devices registered with the same label that never connect: the job
    /// stores (and counts) their actions too, which they keep queued or
    /// pending.
    pub offline: usize,
    pub concurrency: Option<u32>,
    pub rate_per_second: Option<u32>,
}

/// How often the job's counts are read while it runs.
const POLL: Duration = Duration::from_millis(20);
/// A job slower than this is reported as a failure, not waited for.
const JOB_LIMIT: Duration = Duration::from_secs(600);

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(settings.database).await?;
    let admin = tetherd.admin().await?;
    let names = (0..settings.agents).map(|i| format!("sim-{i}"));
    let started = Instant::now();
    let credentials = enroll_many(&admin, names, &json!({"fleet": "bench"}), 16).await?;
    let enrolled_in = started.elapsed();
    let started = Instant::now();
    let agents = connect_many(&credentials, &Responder::Echo, 32).await?;
    wait_online(&admin, settings.agents, Duration::from_secs(300)).await?;
    let connected_in = started.elapsed();
    let offline = (0..settings.offline).map(|i| format!("offline-{i}"));
    register_many(&admin, offline, &json!({"fleet": "bench"}), 16).await?;

    // Offline devices' actions stay open until their TTL: the job does not
    // finish while they are away.
    let times = time_limited_job(
        &admin,
        "fleet=bench",
        settings.agents,
        settings.offline == 0,
        settings.concurrency,
        settings.rate_per_second,
    )
    .await?;

    let limit =
        |value: Option<u32>| value.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    println!(
        "tether-bench fleet-job: {} simulated agents, concurrency {}, rate {}, {}",
        settings.agents,
        limit(settings.concurrency),
        limit(settings.rate_per_second),
        if settings.database == Database::Postgres {
            "postgres"
        } else {
            "sqlite"
        }
    );
    println!(
        "  enrollment           {:>8.1} s; connect + birth {:>6.1} s",
        enrolled_in.as_secs_f64(),
        connected_in.as_secs_f64()
    );
    println!(
        "  job created (POST)   {:>8.0} ms ({} queued actions stored, {} of them for offline devices)",
        times.created_in.as_secs_f64() * 1000.0,
        times.stored,
        settings.offline
    );
    println!(
        "  half answered        {:>8.2} s after creation",
        times.half_in.as_secs_f64()
    );
    println!(
        "  all online answered  {:>8.2} s after creation (job finished {:.2} s)",
        times.answered_in.as_secs_f64(),
        times.finished_in.as_secs_f64()
    );
    println!("    answered over time: {}", times.timeline_text());
    for agent in agents {
        agent.disconnect().await;
    }
    Ok(())
}

/// How long one fleet-wide job took, from the `POST`.
pub struct JobTimes {
    /// Until the `POST` answered (every action stored).
    pub created_in: Duration,
    /// Actions the job stored.
    pub stored: u64,
    pub half_in: Duration,
    /// Until `answers` devices' answers were recorded.
    pub answered_in: Duration,
    /// Until the job was finished (equal to `answered_in` when not waited for).
    pub finished_in: Duration,
    /// Answers recorded at each poll, to tell a steady job from one that
    /// stalls.
    pub timeline: Vec<(Duration, usize)>,
}

impl JobTimes {
    /// The timeline as "0.30 s 1200, 0.55 s 2600, …": the answers at most
    /// every quarter second, and only when they changed.
    pub fn timeline_text(&self) -> String {
        let mut shown: Option<(Duration, usize)> = None;
        let mut entries = vec![];
        for &(at, answered) in &self.timeline {
            let due = shown.is_none_or(|(when, count)| {
                count != answered && at >= when + Duration::from_millis(250)
            });
            if due {
                shown = Some((at, answered));
                entries.push(format!("{:.2} s {answered}", at.as_secs_f64()));
            }
        }
        entries.join(", ")
    }
}

/// Creates a `get-node-ip` job for `selector` and polls it until `answers`
/// devices have answered (and, with `wait_finished`, until it is finished).
pub async fn time_job(
    admin: &ApiClient,
    selector: &str,
    answers: usize,
    wait_finished: bool,
) -> anyhow::Result<JobTimes> {
    time_limited_job(admin, selector, answers, wait_finished, None, None).await
}

async fn time_limited_job(
    admin: &ApiClient,
    selector: &str,
    answers: usize,
    wait_finished: bool,
    concurrency: Option<u32>,
    rate_per_second: Option<u32>,
) -> anyhow::Result<JobTimes> {
    let started = Instant::now();
    let created = admin
        .post(
            "/api/v1/jobs",
            json!({
                "labelSelector": selector,
                "action": "get-node-ip",
                "concurrency": concurrency,
                "ratePerSecond": rate_per_second,
            }),
        )
        .await?
        .expect_status(201)?;
    let created_in = started.elapsed();
    let id = created["id"].as_str().context("job id")?.to_owned();
    let mut half_in = None;
    let mut timeline = vec![];
    let answered_in = loop {
        let job = admin
            .get(&format!("/api/v1/jobs/{id}"))
            .await?
            .expect_status(200)?;
        let succeeded = job["counts"]["succeeded"].as_u64().unwrap_or(0) as usize;
        timeline.push((started.elapsed(), succeeded));
        if half_in.is_none() && succeeded * 2 >= answers {
            half_in = Some(started.elapsed());
        }
        if succeeded >= answers {
            break started.elapsed();
        }
        anyhow::ensure!(
            job["finishedAt"].is_null(),
            "the job finished without every device succeeding: {}",
            job["counts"]
        );
        anyhow::ensure!(
            started.elapsed() < JOB_LIMIT,
            "the job was not answered within {} s: {}",
            JOB_LIMIT.as_secs(),
            job["counts"]
        );
        tokio::time::sleep(POLL).await;
    };
    let finished_in = loop {
        if !wait_finished {
            break answered_in;
        }
        let job = admin
            .get(&format!("/api/v1/jobs/{id}"))
            .await?
            .expect_status(200)?;
        if job["finishedAt"].is_string() {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < JOB_LIMIT,
            "the job did not finish within {} s",
            JOB_LIMIT.as_secs()
        );
        tokio::time::sleep(POLL).await;
    };
    Ok(JobTimes {
        created_in,
        stored: created["devices"].as_u64().unwrap_or_default(),
        half_in: half_in.unwrap_or(answered_in),
        answered_in,
        finished_in,
        timeline,
    })
}
