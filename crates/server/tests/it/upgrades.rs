//! Upgrades and downgrades of tetherd's database (issue 21, ADR 0036).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tether_testkit::postgres::TempPostgres;
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

crate::support::on_both_databases!(a_database_migrated_by_a_newer_tetherd_is_refused_by_name);

/// An older tetherd on a database a newer one migrated would run on a
/// schema it does not know: it refuses to start, and says what to do.
async fn a_database_migrated_by_a_newer_tetherd_is_refused_by_name(
    database: Database,
) -> anyhow::Result<()> {
    let mut tetherd = Tetherd::start(database).await?;
    tetherd.stop().await?;
    let (url, checksum) = match tetherd.postgres() {
        Some(postgres) => (postgres.url(), "'\\x00'::bytea"),
        None => (
            format!(
                "sqlite://{}",
                tetherd.data_dir().join("tether.db").display()
            ),
            "X'00'",
        ),
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await?;
    sqlx::query(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from a newer tetherd', TRUE, {checksum}, 1)"
    ))
    .execute(&pool)
    .await?;
    pool.close().await;

    let error = match tetherd.start_again().await {
        Ok(()) => anyhow::bail!("tetherd started on a database from a newer version"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("the database was migrated by a newer tetherd (its schema is at migration 99990101000000, this tetherd knows up to ")
            && error.contains("run that version or a newer one; going back needs the backup taken before the upgrade"),
        "{error}"
    );
    Ok(())
}

/// The schema of the release a cluster upgrades from: every migration up
/// to this one (the last before commit 9238c26's 0039, the build
/// `scripts/previous-release` makes).
const PREVIOUS_RELEASE_SCHEMA: i64 = 38;

/// `postgres` at the previous release's schema, as that release left it:
/// its migration files, applied by sqlx as tetherd applies them.
async fn migrate_to_previous_release(postgres: &TempPostgres) -> anyhow::Result<()> {
    let previous = tempfile::tempdir()?;
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&migrations)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .context("a migration file")?
            .to_string_lossy();
        let version: i64 = name
            .split('_')
            .next()
            .and_then(|number| number.parse().ok())
            .with_context(|| format!("{name} is numbered"))?;
        if version <= PREVIOUS_RELEASE_SCHEMA {
            std::fs::copy(&path, previous.path().join(&*name))?;
        }
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&postgres.url()).await?;
    sqlx::migrate::Migrator::new(previous.path())
        .await?
        .run(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

/// Requests `get-node-ip` for the devices in turn, through one replica or,
/// while it is down, the other (as a load balancer would), until `stop`;
/// the correlation id of each action accepted, by device.
async fn request_until(
    apis: [ApiClient; 2],
    devices: Vec<String>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let mut requested: HashMap<String, Vec<String>> = HashMap::new();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        pace.tick().await;
        let device = &devices[n % devices.len()];
        let path = format!("/api/v1/devices/{device}/actions");
        let body = json!({"action": "get-node-ip", "input": {}, "timeoutSeconds": 600});
        for api in [&apis[n % 2], &apis[(n + 1) % 2]] {
            let Ok(response) = api.post(&path, body.clone()).await else {
                continue;
            };
            if response.status == 503 {
                continue;
            }
            let accepted_action = response.expect_status(202)?;
            let id = accepted_action["correlationId"]
                .as_str()
                .context("correlationId")?;
            requested
                .entry(device.clone())
                .or_default()
                .push(id.to_owned());
            accepted.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    Ok(requested)
}

/// A rolling upgrade: two replicas of the previous release on its
/// database, agents connected and actions requested all along; each
/// replica in turn stopped as a supervisor stops it, and started as this
/// build on the same data dir and ports. The first one back migrates the
/// schema while the other still runs the previous release; every action
/// accepted before, during and after succeeds, and each agent runs each of
/// its actions once.
///
/// The previous release is the tetherd binary `TETHER_PREVIOUS_TETHERD`
/// names (`scripts/previous-release` builds it). Without it (CI has no
/// earlier build), this build starts on a database at the previous
/// release's schema, so the migration and the roll are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_of_two_replicas_loses_no_action() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let config = scratch.path().join("cluster.toml");
    std::fs::write(&config, "[cluster]\nlease_seconds = 2\n")?;
    let config = config.to_str().context("a UTF-8 path")?;
    let postgres = TempPostgres::start()?;
    let previous = std::env::var_os("TETHER_PREVIOUS_TETHERD");
    let mut a = match &previous {
        Some(binary) => {
            Tetherd::start_release(Path::new(binary), postgres, &["--config", config]).await?
        }
        None => {
            migrate_to_previous_release(&postgres).await?;
            Tetherd::start_on_postgres(postgres, &["--config", config]).await?
        }
    };
    let mut b = Tetherd::start_replica_of(&a, &["--config", config]).await?;
    let apis = [a.admin().await?, b.admin().await?];
    let mut agents = Vec::new();
    for i in 0..4 {
        let (replica, api) = if i % 2 == 0 {
            (&a, &apis[0])
        } else {
            (&b, &apis[1])
        };
        agents.push(Agent::enroll(replica, api, &format!("agent-{i}")).await?);
    }
    for agent in &agents {
        agent.wait_presence(&apis[0], "online").await?;
    }

    let devices: Vec<String> = agents.iter().map(|agent| agent.name.clone()).collect();
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let requesting = tokio::spawn(request_until(
        apis.clone(),
        devices.clone(),
        accepted.clone(),
        stop.clone(),
    ));
    let more_accepted = |what: &'static str| {
        let (accepted, from) = (accepted.clone(), accepted.load(Ordering::Relaxed));
        wait_until(what, Duration::from_secs(60), move || {
            let done = accepted.load(Ordering::Relaxed) >= from + 40;
            async move { Ok(done.then_some(())) }
        })
    };
    more_accepted("actions accepted before the upgrade").await?;
    for (name, replica) in [("first", &mut a), ("second", &mut b)] {
        replica.stop().await?;
        replica.upgrade_to_this_build()?;
        replica
            .start_again()
            .await
            .with_context(|| format!("the {name} replica on this build"))?;
        for agent in &agents {
            agent.wait_presence(&apis[0], "online").await?;
        }
        more_accepted("actions accepted after a replica's upgrade").await?;
    }
    stop.store(true, Ordering::Relaxed);
    let requested = requesting.await??;
    let total: usize = requested.values().map(Vec::len).sum();

    // The first replica back migrated the schema from the previous
    // release's; the second found it done.
    let migrated = format!("migrated the database schema from=Some({PREVIOUS_RELEASE_SCHEMA})");
    assert!(
        a.log().contains(&migrated) && !b.log().contains("migrated the database schema"),
        "the first replica migrates, the second does not:\n{}\n{}",
        a.log(),
        b.log()
    );

    // Every accepted action succeeds, and no other action exists.
    let states = crate::support::wait_all_succeeded(&apis[1], &devices).await?;
    assert_eq!(states.len(), total, "no action but the accepted ones");
    eprintln!(
        "{total} actions, all succeeded, upgrading from {}",
        previous.map_or("this build on the previous schema".into(), |binary| {
            binary.to_string_lossy().into_owned()
        })
    );
    for agent in &agents {
        let log = agent.log();
        for id in &requested[&agent.name] {
            let runs = log.matches(&format!("({id}) answered")).count();
            assert_eq!(runs, 1, "{} ran {id} {runs} times:\n{log}", agent.name);
        }
    }
    Ok(())
}
