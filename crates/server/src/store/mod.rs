//! Persistence: one `Store` over SQLite (default) or PostgreSQL (scale-out),
//! with the same migrations and queries for both (sqlx `Any`).
//!
//! Times are stored as milliseconds since the Unix epoch (`BIGINT`), JSON as
//! `TEXT`, so the schema is portable between the two databases.

mod actions;
mod alert_deliveries;
mod alert_rules;
mod audit;
mod bus;
mod certificates;
mod cluster;
mod codec;
mod desired;
mod devices;
mod enrollment;
mod jobs;
mod logs;
mod management_shell;
mod metrics;
mod monitor;
mod provisioning;
mod releases;
mod secrets;
mod selector;
mod service_accounts;
mod sparkplug;
mod specs;
mod telemetry;
mod users;

pub use alert_deliveries::{ActiveAlertCount, AttemptResult, QueuedDelivery, ReceiversChanged};
pub use alert_rules::{AlertRuleRecord, ReportedCandidate, SeriesBeyond};
pub use bus::Announcement;
pub use cluster::{AdvisoryLock, DeviceSession, EndedSessions, ReplicaRecord};
pub use desired::{DeploymentDeviceRecord, DeploymentRecord, DeploymentWrite, TemplateRecord};
pub use devices::{ActionBytes, DeviceCursor, DeviceListing, DeviceOrder, SeenDevice};
pub use enrollment::CertificateSerials;
pub use jobs::{JobRecord, NewJob};
pub use logs::{LogLine, LogPosition, LogScan};
pub use management_shell::SshKeyRecord;
pub use metrics::{Bucket, FleetRow, RefusedSeries, RolledUp, StoredSeries};
pub use monitor::{AlertFilter, AlertStates, AlertsMark, DriftingDevice, NewAlert, WatchedDevice};
pub use provisioning::{
    Admission, PolicyRecord, ProvisionedDevice, ProvisioningKeyRecord, Refused, RegistrationRecord,
    RegistrationWrite,
};
pub use releases::{CHUNK_BYTES, ReleaseDeletion, ReleaseRecord};
pub use secrets::{Ciphertext, SecretRecord};
pub use service_accounts::{ApiKeyRecord, ServiceAccountRecord};
pub use sparkplug::LatestValue;
pub use specs::SpecRecord;
pub use telemetry::{CursorUpdate, SpoolRef, StoredLog, TelemetryTx, UsageRecord};
pub use users::AdminGuarded;

use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::Executor;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use tether_proto::api::Labels;
use tether_proto::{ActionState, DeviceId, Presence};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not open the database at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("could not apply the database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error(
        "the database was migrated by a newer tetherd (its schema is at migration {database}, this tetherd knows up to {binary}): run that version or a newer one; going back needs the backup taken before the upgrade"
    )]
    NewerSchema { database: i64, binary: i64 },
    #[error("{what} already exists")]
    Conflict { what: String },
    #[error("database query failed while trying to {context}")]
    Query {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("{what} does not exist")]
    NotFound { what: String },
    #[error("could not read column {column} of a stored row")]
    Decode {
        column: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("could not encode {what} as JSON")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} {value} is too large to store (at most {max})", max = i64::MAX)]
    TooLarge { what: &'static str, value: u64 },
    #[error("tetherd is shutting down; nothing more is written")]
    ShuttingDown,
    #[error("the database holds a value this version cannot read: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database could not be reached (down, restarting, the
    /// pool exhausted), as opposed to refusing or failing the query: the
    /// same request may succeed shortly.
    pub fn is_unavailable(&self) -> bool {
        let source = match self {
            StoreError::Connect { source, .. } | StoreError::Query { source, .. } => source,
            _ => return false,
        };
        match source {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // PostgreSQL's connection exceptions (08…) and its shutting
            // down or starting up (57P01–57P03).
            sqlx::Error::Database(error) => error
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub name: DeviceId,
    pub labels: Labels,
    pub presence: Presence,
    /// Serial (lowercase hex) of the device's current client certificate.
    pub certificate_serial: Option<String>,
    pub last_seen: Option<DateTime<Utc>>,
    pub agent_version: Option<String>,
    /// The actions the agent's last birth named.
    pub capabilities: Vec<String>,
    pub boot_id: Option<String>,
    /// What people call the device.
    pub display_name: Option<String>,
    /// The provisioning policy that created it.
    pub policy: Option<String>,
    pub status_seq: u64,
    pub created_at: DateTime<Utc>,
}

/// How many devices of one presence carry one value of the label counted
/// by (`None`: without the label, or no label asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCount {
    pub label_value: Option<String>,
    pub presence: Presence,
    pub devices: u64,
}

/// Where a newest-first listing goes on: with the items older than this
/// time, or as old with a smaller id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Before {
    pub at: DateTime<Utc>,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub username: String,
    /// `sha256:<salt hex>:<digest hex>`, see `auth::password`.
    pub password_hash: String,
    pub role: String,
}

/// A login session. Its token is stored only as a hash, kept apart from
/// this record so a listing can never show it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub username: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
}

/// An action to store. `input` is already redacted; `sealed_input` is the full
/// input encrypted for delivery, dropped once the action is terminal.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAction {
    pub correlation_id: String,
    pub device: DeviceId,
    pub action: String,
    pub input: serde_json::Value,
    pub sealed_input: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub timeout_seconds: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActionRecord {
    pub correlation_id: String,
    pub device: DeviceId,
    /// Per-device order of acceptance, starting at 1.
    pub seq: u64,
    pub action: String,
    pub input: serde_json::Value,
    pub sealed_input: Option<String>,
    pub state: ActionState,
    pub status_code: Option<u16>,
    pub status_message: Option<String>,
    pub response: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub timeout_seconds: u64,
    /// The fleet-wide job this action is part of.
    pub job_id: Option<String>,
}

/// What a transition writes besides the state. For `Delivered` only `at` is
/// used (as `delivered_at`); for a terminal state `at` is `completed_at` and
/// `sealed_input` is cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub status_message: Option<String>,
    pub response: Option<serde_json::Value>,
}

/// A device's answer to its action, to record ([`Store::record_answers`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerWrite {
    pub device: DeviceId,
    pub correlation_id: String,
    /// The state the answer ends the action in.
    pub to: ActionState,
    pub outcome: Outcome,
    pub event: EventRecord,
    /// Sent at commit (PostgreSQL), unless the action is a job's.
    pub announcement: Option<Announcement>,
}

/// One change made through the API, or one login or enrollment attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: String,
    pub at: DateTime<Utc>,
    /// A username, or `device:<name>` for an enrollment.
    pub actor: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// What else there is to say, as JSON (a tunnel's device, kind and bytes).
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: String,
    pub device: DeviceId,
    pub correlation_id: Option<String>,
    pub event: String,
    pub status_code: u16,
    pub status_message: String,
    pub response: serde_json::Value,
    pub received_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: sqlx::AnyPool,
    postgres: bool,
}

/// The one set of migrations, for SQLite and PostgreSQL alike.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The newest migration the database has (none on a new database). A
/// downgrade is refused before anything runs: an older tetherd does not
/// know what a newer one's migrations changed (sqlx would refuse too, but
/// naming only a "missing" migration).
async fn schema_not_newer(pool: &sqlx::AnyPool, postgres: bool) -> Result<Option<i64>, StoreError> {
    let context = "read which migrations the database has";
    let exists = if postgres {
        "SELECT COUNT(*) FROM pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema()"
    } else {
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
    };
    let tables: i64 = sqlx::query_scalar(exists)
        .fetch_one(pool)
        .await
        .map_err(|source| StoreError::Query { context, source })?;
    if tables == 0 {
        return Ok(None);
    }
    let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(pool)
        .await
        .map_err(|source| StoreError::Query { context, source })?;
    let known = MIGRATOR.iter().map(|migration| migration.version).max();
    match (newest, known) {
        (Some(database), Some(binary)) if database > binary => {
            Err(StoreError::NewerSchema { database, binary })
        }
        _ => Ok(newest),
    }
}

/// SQLite has one writer at a time; in WAL mode readers run beside it. A few
/// connections let reads proceed while a write is in flight, and every write
/// is a single statement, so a waiting writer queues on the busy timeout
/// instead of failing on a lock upgrade.
const SQLITE_MAX_CONNECTIONS: u32 = 4;

/// The ingest's 8 write slots, the answer writer, and two for reads (the
/// API, certificate checks at CONNECT).
const POSTGRES_MAX_CONNECTIONS: u32 = 11;

/// How long a query waits for a PostgreSQL connection, e.g. while the server
/// is down, before it fails: as long as SQLite's busy timeout, so a device's
/// unacknowledged publish fails over in seconds (ADR 0006), not sqlx's 30 s.
const POSTGRES_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Store {
    /// Opens `url` (`sqlite://…` or `postgres://…`) and applies migrations.
    /// A SQLite file is created if missing and runs in WAL mode.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let mut options =
            AnyConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
                url: without_password(url),
                source,
            })?;
        let postgres = matches!(options.database_url.scheme(), "postgres" | "postgresql");
        let pool_options = if postgres {
            AnyPoolOptions::new()
                .max_connections(POSTGRES_MAX_CONNECTIONS)
                .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
        } else {
            sqlite_pool_options(&mut options)
        };
        let pool =
            pool_options
                .connect_with(options)
                .await
                .map_err(|source| StoreError::Connect {
                    url: without_password(url),
                    source,
                })?;
        if !postgres {
            // The journal mode is stored in the file, so once is enough; it
            // is set before migrations, while the pool has one connection,
            // because switching needs the database to itself.
            pool.execute("PRAGMA journal_mode = WAL")
                .await
                .map_err(|source| StoreError::Query {
                    context: "switch SQLite to WAL mode",
                    source,
                })?;
        }
        let before = schema_not_newer(&pool, postgres).await?;
        // On PostgreSQL sqlx holds an advisory lock while it migrates, so
        // replicas starting together (or rolling) apply each migration once.
        MIGRATOR.run(&pool).await.map_err(StoreError::Migrate)?;
        let now = MIGRATOR.iter().map(|migration| migration.version).max();
        if before != now {
            tracing::info!(from = ?before, to = ?now, "migrated the database schema");
        }
        let store = Self { pool, postgres };
        store.index_unindexed_labels().await?;
        Ok(store)
    }

    async fn begin(
        &self,
        context: &'static str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        self.pool
            .begin()
            .await
            .map_err(|source| StoreError::Query { context, source })
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// Connections of the pool: (in use, idle, most it opens).
    pub fn pool_usage(&self) -> (u32, u32, u32) {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        let open = self.pool.size();
        (
            open.saturating_sub(idle),
            idle,
            self.pool.options().get_max_connections(),
        )
    }
}

fn sqlite_pool_options(options: &mut AnyConnectOptions) -> AnyPoolOptions {
    let pool_options = AnyPoolOptions::new().after_connect(|conn, _meta| {
        Box::pin(async move {
            // sqlx sets the first two by default today; delete_device relies
            // on cascades and concurrent writers on the timeout, so they are
            // stated here rather than inherited. In WAL mode, NORMAL cannot
            // corrupt the database; it only lets a power cut lose the last
            // commits, and it spares an fsync per commit (ADR 0002).
            conn.execute(
                "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL",
            )
            .await
            .map(drop)
        })
    });
    let url = &mut options.database_url;
    if url.as_str().contains(":memory:") {
        // Through `Any`, every new connection to `sqlite::memory:` opens a
        // fresh empty database, so there must be exactly one, kept forever.
        return pool_options
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    }
    // Create the file on first start, unless the URL chose a mode itself.
    if !url.query_pairs().any(|(key, _)| key == "mode") {
        url.query_pairs_mut().append_pair("mode", "rwc");
    }
    pool_options.max_connections(SQLITE_MAX_CONNECTIONS)
}

/// The URL for error messages, with any password masked.
fn without_password(url: &str) -> String {
    match AnyConnectOptions::from_str(url) {
        Ok(mut options) if options.database_url.password().is_some() => {
            // Fails only for URLs that cannot have a password, and this one has.
            let _ = options.database_url.set_password(Some("***"));
            options.database_url.to_string()
        }
        Ok(_) => url.to_owned(),
        // An unparsable URL may still contain a secret; show only its scheme.
        Err(_) => format!("{}:…", url.split(':').next().unwrap_or_default()),
    }
}
