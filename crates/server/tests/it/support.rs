//! Shared pieces of the integration tests.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::Connection;
use tether_server::store::Store;
use tether_testkit::{ApiClient, Tetherd};

/// Runs each named `async fn(Database) -> anyhow::Result<()>` once on SQLite
/// and once on a throwaway PostgreSQL: the same suite on both stores.
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> anyhow::Result<()> {
                super::$name(tether_testkit::Database::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> anyhow::Result<()> {
                super::$name(tether_testkit::Database::Postgres).await
            }
        }
    )*};
}
pub(crate) use on_both_databases;

/// Whole milliseconds `minutes` ago, as the store keeps times.
pub fn minutes_ago(minutes: i64) -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now() - chrono::Duration::minutes(minutes);
    chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// The store `tetherd` writes, opened beside it.
pub async fn store_of(tetherd: &Tetherd) -> anyhow::Result<Store> {
    let url = match tetherd.postgres() {
        Some(postgres) => postgres.url(),
        None => format!(
            "sqlite://{}",
            tetherd.data_dir().join("tether.db").display()
        ),
    };
    Ok(Store::connect(&url).await?)
}

/// Moves every registration `minutes` into the past, as if that long had
/// passed since they were made (the shared-identity window counts from
/// them).
pub async fn age_registrations(tetherd: &Tetherd, minutes: i64) -> anyhow::Result<()> {
    let url = match tetherd.postgres() {
        Some(postgres) => postgres.url(),
        None => format!(
            "sqlite://{}",
            tetherd.data_dir().join("tether.db").display()
        ),
    };
    sqlx::any::install_default_drivers();
    let mut connection = sqlx::AnyConnection::connect(&url)
        .await
        .context("opening the database beside tetherd")?;
    sqlx::query("UPDATE registrations SET created_at = created_at - $1")
        .bind(minutes * 60_000)
        .execute(&mut connection)
        .await
        .context("ageing the registrations")?;
    Ok(())
}

/// Requests an action and returns the accepted record (expects 202).
pub async fn request(admin: &ApiClient, device: &str, body: Value) -> anyhow::Result<Value> {
    admin
        .post(&format!("/api/v1/devices/{device}/actions"), body)
        .await?
        .expect_status(202)
}

/// Long-polls the action until it is terminal.
pub async fn wait_terminal(admin: &ApiClient, correlation_id: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let action = admin
            .get(&format!("/api/v1/actions/{correlation_id}?waitSeconds=10"))
            .await?
            .expect_status(200)?;
        let state = action["state"].as_str().context("action has a state")?;
        if !matches!(state, "pending" | "delivered") {
            return Ok(action);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "action {correlation_id} still {state} after 60 s"
        );
    }
}

/// Requests an action and waits for its end.
pub async fn run(
    admin: &ApiClient,
    device: &str,
    action: &str,
    input: Value,
) -> anyhow::Result<Value> {
    let accepted = request(admin, device, json!({"action": action, "input": input})).await?;
    let id = accepted["correlationId"]
        .as_str()
        .context("correlationId")?;
    wait_terminal(admin, id).await
}

/// Waits (a minute at most) until every action of `devices` has succeeded;
/// their states by correlation id. Failing, it says how many are in which
/// state.
pub async fn wait_all_succeeded(
    api: &ApiClient,
    devices: &[String],
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    use std::collections::HashMap;
    tether_testkit::wait_until(
        "every action to succeed",
        Duration::from_secs(60),
        || async {
            let mut states: HashMap<String, String> = HashMap::new();
            for device in devices {
                let listed = api
                    .get(&format!("/api/v1/devices/{device}/actions?limit=1000"))
                    .await?
                    .expect_status(200)?;
                for action in listed["items"].as_array().context("a list")? {
                    states.insert(
                        action["correlationId"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        action["state"].as_str().unwrap_or_default().to_owned(),
                    );
                }
            }
            if states.values().all(|state| state == "succeeded") {
                return Ok(Some(states));
            }
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for state in states.values() {
                *counts.entry(state).or_default() += 1;
            }
            anyhow::bail!("actions by state: {counts:?}")
        },
    )
    .await
}

pub fn id(action: &Value) -> anyhow::Result<String> {
    Ok(action["correlationId"]
        .as_str()
        .context("action has a correlationId")?
        .to_owned())
}

/// Runs a mosquitto client with the credentials in `dir` (if any), giving up after 10 s.
pub async fn mosquitto(
    tool: &str,
    port: &str,
    dir: Option<&Path>,
    client_id: &str,
    args: &[&str],
) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(tool);
    command.args(["-h", "127.0.0.1", "-p", port, "-i", client_id]);
    if let Some(dir) = dir {
        command
            .arg("--cafile")
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"));
    }
    command.args(args).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(10), command.output())
        .await
        .with_context(|| format!("{tool} did not finish within 10 s"))?
        .with_context(|| format!("running {tool} (install mosquitto-clients)"))?;
    Ok(output)
}

pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Keeps the SQLite write lock, as another process holding a long write
/// transaction would, until dropped.
pub struct WriteLock(sqlx::SqliteConnection);

impl WriteLock {
    pub async fn take(db: &Path) -> anyhow::Result<Self> {
        let url = format!("sqlite://{}", db.display());
        let mut connection = sqlx::SqliteConnection::connect(&url)
            .await
            .context("opening the database beside tetherd")?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut connection)
            .await
            .context("taking the write lock")?;
        Ok(Self(connection))
    }

    pub async fn release(mut self) -> anyhow::Result<()> {
        sqlx::query("ROLLBACK").execute(&mut self.0).await?;
        Ok(())
    }
}

/// An alert rule that fires on every device `selector` picks which sends
/// host metrics (memory in use is never 0): an alert within seconds when
/// the rules are evaluated every second and the device samples every second.
pub async fn add_memory_alert_rule(admin: &ApiClient, selector: &str) -> anyhow::Result<()> {
    admin
        .post(
            "/api/v1/alert-rules",
            json!({"name": "memory-in-use", "spec": {
                "selector": selector, "severity": "warning", "for": "0s",
                "summary": "memory in use on {{ device }}",
                "condition": {"metric": {"name": "memory_used_bytes", "op": ">", "value": 0}}
            }}),
        )
        .await?
        .expect_status(201)?;
    Ok(())
}

/// Waits until exactly `count` alerts fire.
pub async fn wait_firing(admin: &ApiClient, count: usize) -> anyhow::Result<()> {
    tether_testkit::wait_until(
        &format!("{count} alerts to fire"),
        Duration::from_secs(30),
        || async {
            let firing = admin
                .get("/api/v1/alerts?state=firing")
                .await?
                .expect_status(200)?;
            Ok((firing["items"].as_array().map(Vec::len) == Some(count)).then_some(()))
        },
    )
    .await
}
