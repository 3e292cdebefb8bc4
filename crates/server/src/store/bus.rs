//! PostgreSQL `NOTIFY` for the notification bus (`cluster::bus`).

use super::{Store, StoreError};

/// A notification to send with the statement that commits a change: on
/// PostgreSQL the store adds `pg_notify` to it, so the notification goes
/// out at commit, never for a change that did not commit, and costs no
/// round trip of its own. The bus builds it (`cluster::bus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub channel: &'static str,
    pub payload: String,
}

impl Store {
    /// Sends `payload` to every session listening on `channel`. PostgreSQL
    /// delivers it once the statement's own transaction commits, i.e. at
    /// once here, so call it after the change it announces is committed.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "announce a change to the other replicas (NOTIFY)",
                source,
            })
            .map(drop)
    }
}
