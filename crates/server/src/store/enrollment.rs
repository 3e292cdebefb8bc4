//! The `enrollment_tokens` table: one-time tokens, stored as hashes.

use chrono::{DateTime, Utc};
use sqlx::error::ErrorKind;
use tether_proto::DeviceId;

use super::codec::{device_id, get, millis, violates};
use super::{Store, StoreError};

impl Store {
    /// Stores a token's hash and revokes the device's earlier unused tokens:
    /// a token printed into a terminal or a CI log must stop working once a
    /// newer one is issued. `NotFound` if the device does not exist.
    pub async fn insert_enrollment_token(
        &self,
        device: &DeviceId,
        token_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let query_error = |context| move |source| StoreError::Query { context, source };
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("begin issuing an enrollment token"))?;
        revoke_unused(&mut tx, device).await?;
        sqlx::query(
            "INSERT INTO enrollment_tokens (token_hash, device, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(token_hash)
        .bind(device.as_str())
        .bind(millis(expires_at))
        .execute(&mut *tx)
        .await
        .map_err(|source| {
            if violates(&source, ErrorKind::ForeignKeyViolation) {
                StoreError::NotFound {
                    what: format!("device {device}"),
                }
            } else if violates(&source, ErrorKind::UniqueViolation) {
                StoreError::Conflict {
                    what: "enrollment token".to_owned(),
                }
            } else {
                StoreError::Query {
                    context: "store an enrollment token",
                    source,
                }
            }
        })?;
        tx.commit()
            .await
            .map_err(query_error("commit an enrollment token"))
    }

    /// Atomically marks the token used and returns its device, if the token
    /// exists, is unused and has not expired at `now`. A second call with the
    /// same token returns `None`, also when two race. Any other unused token
    /// of the device is revoked with it.
    pub async fn consume_enrollment_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DeviceId>, StoreError> {
        // One conditional UPDATE: of racing callers only the first to write
        // still sees `used_at IS NULL` (PostgreSQL re-checks the condition
        // after waiting for the row lock; SQLite has a single writer).
        let row = sqlx::query(
            "UPDATE enrollment_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
             RETURNING device",
        )
        .bind(millis(now))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "consume an enrollment token",
            source,
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let device = device_id(get(&row, "device")?)?;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|source| StoreError::Query {
                context: "revoke the other enrollment tokens",
                source,
            })?;
        revoke_unused(&mut conn, &device).await?;
        Ok(Some(device))
    }
}

async fn revoke_unused(
    conn: &mut sqlx::AnyConnection,
    device: &DeviceId,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM enrollment_tokens WHERE device = $1 AND used_at IS NULL")
        .bind(device.as_str())
        .execute(conn)
        .await
        .map_err(|source| StoreError::Query {
            context: "revoke unused enrollment tokens",
            source,
        })?;
    Ok(())
}
