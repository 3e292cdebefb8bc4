//! The `enrollment_tokens` table: one-time tokens, stored as hashes.

use chrono::{DateTime, Utc};
use sqlx::error::ErrorKind;
use tether_proto::DeviceId;

use super::codec::{device_id, get, millis, violates};
use super::{Store, StoreError};

impl Store {
    /// Stores a token's hash; earlier unused tokens of the device stay valid
    /// until they expire. `NotFound` if the device does not exist.
    pub async fn insert_enrollment_token(
        &self,
        device: &DeviceId,
        token_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO enrollment_tokens (token_hash, device, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(token_hash)
        .bind(device.as_str())
        .bind(millis(expires_at))
        .execute(&self.pool)
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
        Ok(())
    }

    /// Atomically marks the token used and returns its device, if the token
    /// exists, is unused and has not expired at `now`. A second call with the
    /// same token returns `None`, also when two race.
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
        row.map(|row| device_id(get(&row, "device")?)).transpose()
    }
}
