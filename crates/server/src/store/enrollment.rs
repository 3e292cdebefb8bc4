//! The `enrollment_tokens` table: one-time tokens, stored as hashes; and
//! the certificate serials of enrolled devices that renewal rotates.

use chrono::{DateTime, Utc};
use sqlx::error::ErrorKind;
use tether_proto::DeviceId;

use super::codec::{device_id, get, millis, violates};
use super::{Store, StoreError};

/// The serials a device may connect and renew with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateSerials {
    /// `None` before enrollment and after revocation.
    pub current: Option<String>,
    /// The certificate before the last renewal, until `current` connects.
    pub previous: Option<String>,
}

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

    /// The device of a token that is unused and unexpired at `now`, without
    /// using it: the join manifest carries the token to the agent, which
    /// uses it.
    pub async fn enrollment_token_device(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DeviceId>, StoreError> {
        let row = sqlx::query(
            "SELECT device FROM enrollment_tokens \
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(millis(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "look up an enrollment token",
            source,
        })?;
        row.map(|row| device_id(get(&row, "device")?)).transpose()
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

impl Store {
    /// `None` if the device does not exist.
    pub async fn certificate_serials(
        &self,
        device: &DeviceId,
    ) -> Result<Option<CertificateSerials>, StoreError> {
        let row = sqlx::query(
            "SELECT certificate_serial, previous_certificate_serial FROM devices WHERE name = $1",
        )
        .bind(device.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "read a device's certificate serials",
            source,
        })?;
        row.map(|row| {
            Ok(CertificateSerials {
                current: get(&row, "certificate_serial")?,
                previous: get(&row, "previous_certificate_serial")?,
            })
        })
        .transpose()
    }

    /// Records a renewal: `new` becomes current and `presented` (the serial
    /// the device renewed with, which it still holds) stays usable until
    /// `new` connects. Only if the current serial is still `expected`:
    /// `false` if a concurrent renewal, re-enrollment or revocation won.
    pub async fn rotate_certificate_serial(
        &self,
        device: &DeviceId,
        expected: &str,
        presented: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE devices SET certificate_serial = $1, previous_certificate_serial = $2 \
             WHERE name = $3 AND certificate_serial = $4",
        )
        .bind(new)
        .bind(presented)
        .bind(device.as_str())
        .bind(expected)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "store a renewed certificate serial",
            source,
        })?;
        Ok(result.rows_affected() > 0)
    }

    /// The current certificate has connected: the one before it is no
    /// longer needed and stops working.
    pub async fn forget_previous_certificate_serial(
        &self,
        device: &DeviceId,
        current: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE devices SET previous_certificate_serial = NULL \
             WHERE name = $1 AND certificate_serial = $2",
        )
        .bind(device.as_str())
        .bind(current)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "forget a device's previous certificate serial",
            source,
        })?;
        Ok(())
    }

    /// Revokes the device's certificates (current and previous) and keeps
    /// the device, so it can be enrolled again with a new token. `false` if
    /// the device does not exist.
    pub async fn revoke_certificates(&self, device: &DeviceId) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE devices SET certificate_serial = NULL, previous_certificate_serial = NULL \
             WHERE name = $1",
        )
        .bind(device.as_str())
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "revoke a device's certificates",
            source,
        })?;
        Ok(result.rows_affected() > 0)
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
