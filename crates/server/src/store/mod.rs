//! Persistence: one `Store` over SQLite (default) or PostgreSQL (scale-out),
//! with the same migrations and queries for both (sqlx `Any`).
//!
//! Times are stored as milliseconds since the Unix epoch (`BIGINT`), JSON as
//! `TEXT`, so the schema is portable between the two databases.

use chrono::{DateTime, Utc};
use tether_proto::api::Labels;
use tether_proto::metrics::HostMetrics;
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
    #[error("{what} already exists")]
    Conflict { what: String },
    #[error("database query failed while trying to {context}")]
    Query {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the database holds a value this version cannot read: {0}")]
    Corrupt(String),
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
    pub boot_id: Option<String>,
    pub status_seq: u64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub username: String,
    /// `sha256:<salt hex>:<digest hex>`, see `auth::password`.
    pub password_hash: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub username: String,
    pub expires_at: DateTime<Utc>,
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
}

impl Store {
    /// Opens `url` (`sqlite://…` or `postgres://…`) and applies migrations.
    /// A SQLite file is created if missing and runs in WAL mode.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        todo!("{url}")
    }

    pub fn is_postgres(&self) -> bool {
        todo!()
    }

    // Devices ---------------------------------------------------------------

    /// `Conflict` if a device of that name exists.
    pub async fn create_device(
        &self,
        name: &DeviceId,
        labels: &Labels,
        now: DateTime<Utc>,
    ) -> Result<DeviceRecord, StoreError> {
        todo!("{name}{labels:?}{now}")
    }

    pub async fn get_device(&self, name: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        todo!("{name}")
    }

    /// All devices, ordered by name.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        todo!()
    }

    /// Replaces the labels; `None` if the device does not exist.
    pub async fn set_labels(
        &self,
        name: &DeviceId,
        labels: &Labels,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        todo!("{name}{labels:?}")
    }

    /// Deletes the device with its tokens, actions, events and metrics.
    /// `false` if it did not exist.
    pub async fn delete_device(&self, name: &DeviceId) -> Result<bool, StoreError> {
        todo!("{name}")
    }

    pub async fn set_certificate_serial(
        &self,
        name: &DeviceId,
        serial_hex: &str,
    ) -> Result<(), StoreError> {
        todo!("{name}{serial_hex}")
    }

    pub async fn set_presence(
        &self,
        name: &DeviceId,
        presence: Presence,
        last_seen: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        todo!("{name}{presence:?}{last_seen}")
    }

    pub async fn set_agent_status(
        &self,
        name: &DeviceId,
        agent_version: &str,
        boot_id: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        todo!("{name}{agent_version}{boot_id}{seq}")
    }

    // Enrollment tokens -------------------------------------------------------

    /// Stores a token's hash; earlier unused tokens of the device stay valid
    /// until they expire.
    pub async fn insert_enrollment_token(
        &self,
        device: &DeviceId,
        token_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        todo!("{device}{token_hash}{expires_at}")
    }

    /// Atomically marks the token used and returns its device, if the token
    /// exists, is unused and has not expired at `now`. A second call with the
    /// same token returns `None`, also when two race.
    pub async fn consume_enrollment_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DeviceId>, StoreError> {
        todo!("{token_hash}{now}")
    }

    // Users and sessions ---------------------------------------------------------

    /// Creates the user or replaces its password hash and role.
    pub async fn upsert_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        todo!("{user:?}")
    }

    pub async fn get_user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        todo!("{username}")
    }

    pub async fn insert_session(
        &self,
        token_hash: &str,
        username: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        todo!("{token_hash}{username}{expires_at}")
    }

    pub async fn get_session(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        todo!("{token_hash}")
    }

    // Actions -------------------------------------------------------------------

    /// Stores a new `pending` action with the next per-device `seq`.
    /// `Conflict` if the correlation id is taken.
    pub async fn insert_action(&self, action: &NewAction) -> Result<ActionRecord, StoreError> {
        todo!("{action:?}")
    }

    pub async fn get_action(&self, correlation_id: &str) -> Result<Option<ActionRecord>, StoreError> {
        todo!("{correlation_id}")
    }

    /// The device's actions, newest first, at most `limit`.
    pub async fn list_actions(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        todo!("{device}{limit}")
    }

    /// The device's `pending` and `delivered` actions in `seq` order.
    pub async fn open_actions(&self, device: &DeviceId) -> Result<Vec<ActionRecord>, StoreError> {
        todo!("{device}")
    }

    /// Moves the action to `to` only if its current state is one of `from`
    /// (compare-and-set); returns the updated record, or `None` if the action
    /// does not exist or was in another state.
    pub async fn transition_action(
        &self,
        correlation_id: &str,
        from: &[ActionState],
        to: ActionState,
        outcome: &Outcome,
    ) -> Result<Option<ActionRecord>, StoreError> {
        todo!("{correlation_id}{from:?}{to}{outcome:?}")
    }

    /// `pending` actions whose `expires_at` is at or before `now`.
    pub async fn expired_pending_actions(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        todo!("{now}")
    }

    /// `delivered` actions whose `delivered_at + timeout_seconds` is at or before `now`.
    pub async fn overdue_delivered_actions(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        todo!("{now}")
    }

    // Events and metrics ----------------------------------------------------------

    pub async fn insert_event(&self, event: &EventRecord) -> Result<(), StoreError> {
        todo!("{event:?}")
    }

    /// The device's events, newest first, at most `limit`.
    pub async fn list_events(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        todo!("{device}{limit}")
    }

    pub async fn insert_metrics(
        &self,
        device: &DeviceId,
        metrics: &HostMetrics,
    ) -> Result<(), StoreError> {
        todo!("{device}{metrics:?}")
    }

    /// The device's metrics samples, newest first, at most `limit`.
    pub async fn list_metrics(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<HostMetrics>, StoreError> {
        todo!("{device}{limit}")
    }
}
