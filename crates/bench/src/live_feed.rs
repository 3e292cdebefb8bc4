//! `--mode live-feed`: what the console's live feed costs tetherd (review
//! M2, ADR 0034's amendment). `--followers` streams of
//! `GET /api/v1/events/follow` stay open on one tetherd (as many console
//! tabs, spread over users within the per-user limit) while this process
//! writes device events straight into tetherd's database at
//! `--events-per-second`, as other replicas would. Prints tetherd's CPU, in
//! percent of one core, with nobody following and with every follower
//! reading, and how many events each follower got.
//!
//! To compare with another tetherd build in one go, put a link to that
//! `tetherd` and one to this `tether-bench` in one directory and run the
//! bench from there: the bench starts the `tetherd` beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde_json::json;
use tether_proto::DeviceId;
use tether_server::store::{EventRecord, Store};
use tether_testkit::{ApiClient, Database, Tetherd};

pub struct Settings {
    pub database: Database,
    pub followers: usize,
    pub events_per_second: u32,
    /// How long each phase is measured.
    pub measure: Duration,
}

/// The default `api.max_follows_per_user`: followers are spread over
/// users so that none goes over it.
const FOLLOWS_PER_USER: usize = 16;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(settings.database).await?;
    let pid = tetherd.pid().context("tetherd's pid")?.to_string();
    let admin = tetherd.admin().await?;
    let database_url = match tetherd.postgres() {
        Some(postgres) => postgres.url(),
        None => format!(
            "sqlite://{}",
            tetherd.data_dir().join("tether.db").display()
        ),
    };
    let store = Store::connect(&database_url)
        .await
        .context("opening tetherd's database beside it")?;
    let device = DeviceId::new("bench-live-1")?;
    store
        .create_device(&device, &Default::default(), Utc::now())
        .await?;

    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write_events(
        store.clone(),
        device,
        settings.events_per_second,
        written.clone(),
    ));
    println!(
        "live feed: {} followers, {} events/s written to {}",
        settings.followers,
        settings.events_per_second,
        if store.is_postgres() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    // Let the writer settle before the first phase.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = cpu_percent(&pid, settings.measure).await?;
    println!("  nobody following      tetherd {idle:>6.1} % of a core");

    let users = settings.followers.div_ceil(FOLLOWS_PER_USER);
    let mut clients = Vec::new();
    for i in 0..users {
        clients.push(viewer(&tetherd, &admin, &format!("bench-viewer-{i}")).await?);
    }
    let heard = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for i in 0..settings.followers {
        let mut stream = clients[i / FOLLOWS_PER_USER]
            .get_json_lines("/api/v1/events/follow")
            .await?;
        anyhow::ensure!(
            stream.status == 200,
            "follow {i} answered {}",
            stream.status
        );
        let heard = heard.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Some(change)) = stream.next(Duration::from_secs(60)).await {
                if change.get("event").is_some() {
                    heard.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written_before = written.load(Ordering::Relaxed);
    let heard_before = heard.load(Ordering::Relaxed);
    let following = cpu_percent(&pid, settings.measure).await?;
    let written_during = written.load(Ordering::Relaxed) - written_before;
    let heard_during = heard.load(Ordering::Relaxed) - heard_before;
    println!(
        "  {:>3} following         tetherd {following:>6.1} % of a core ({:.0} events heard per follower of {written_during} written)",
        settings.followers,
        heard_during as f64 / settings.followers as f64,
    );
    writer.abort();
    for reader in readers {
        reader.abort();
    }
    Ok(())
}

/// A client logged in as a new viewer `name`.
async fn viewer(tetherd: &Tetherd, admin: &ApiClient, name: &str) -> anyhow::Result<ApiClient> {
    let created = admin
        .post("/api/v1/users", json!({"username": name, "role": "viewer"}))
        .await?
        .expect_status(201)?;
    let password = created["password"].as_str().context("a password")?;
    let login = tetherd
        .anonymous()?
        .post(
            "/api/v1/login",
            json!({"username": name, "password": password}),
        )
        .await?
        .expect_status(200)?;
    Ok(admin.with_token(login["token"].as_str().map(str::to_owned)))
}

/// `per_second` events, evenly spaced, until aborted.
async fn write_events(
    store: Store,
    device: DeviceId,
    per_second: u32,
    written: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0_u64.. {
        ticks.tick().await;
        store
            .insert_event(&EventRecord {
                id: format!("bench-live-{n:010}"),
                device: device.clone(),
                correlation_id: None,
                event: "get-node-ip".into(),
                status_code: 200,
                status_message: String::new(),
                response: json!({"ip": "192.0.2.1"}),
                received_at: Utc::now(),
            })
            .await?;
        written.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// tetherd's CPU over `window`, in percent of one core.
async fn cpu_percent(pid: &str, window: Duration) -> anyhow::Result<f64> {
    let before = crate::monitor::process_ticks(pid)?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let ticks = crate::monitor::process_ticks(pid)? - before;
    // Linux reports in USER_HZ, 100 a second on every architecture.
    Ok(ticks as f64 / 100.0 / started.elapsed().as_secs_f64() * 100.0)
}
