//! The `ssh_keys` and `shell_passwords` tables (ADR 0023).

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use tether_proto::DeviceId;

use super::codec::{get, millis, time, violates};
use super::{Store, StoreError};

/// One of a user's registered SSH public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKeyRecord {
    pub id: String,
    pub username: String,
    pub name: String,
    /// `type base64`, without a comment.
    pub public_key: String,
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
}

const KEY_COLUMNS: &str = "id, username, name, public_key, fingerprint, created_at";

fn key_from_row(row: &AnyRow) -> Result<SshKeyRecord, StoreError> {
    Ok(SshKeyRecord {
        id: get(row, "id")?,
        username: get(row, "username")?,
        name: get(row, "name")?,
        public_key: get(row, "public_key")?,
        fingerprint: get(row, "fingerprint")?,
        created_at: time(get(row, "created_at")?, "an SSH key's created_at")?,
    })
}

impl Store {
    /// `Conflict` if the user has this key already.
    pub async fn insert_ssh_key(&self, key: &SshKeyRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO ssh_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&key.id)
        .bind(&key.username)
        .bind(&key.name)
        .bind(&key.public_key)
        .bind(&key.fingerprint)
        .bind(millis(key.created_at))
        .execute(&self.pool)
        .await
        .map_err(|source| {
            if violates(&source, ErrorKind::UniqueViolation) {
                StoreError::Conflict {
                    what: format!("SSH key {} of {}", key.fingerprint, key.username),
                }
            } else {
                StoreError::Query {
                    context: "store an SSH key",
                    source,
                }
            }
        })?;
        Ok(())
    }

    /// The user's keys, oldest first.
    pub async fn list_ssh_keys(&self, username: &str) -> Result<Vec<SshKeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM ssh_keys WHERE username = $1 ORDER BY created_at, id"
        ))
        .bind(username)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "list SSH keys",
            source,
        })?;
        rows.iter().map(key_from_row).collect()
    }

    /// `NotFound` unless the user has a key with this id.
    pub async fn delete_ssh_key(&self, username: &str, id: &str) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM ssh_keys WHERE username = $1 AND id = $2")
            .bind(username)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "delete an SSH key",
                source,
            })?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("SSH key {id} of {username}"),
            });
        }
        Ok(())
    }

    /// Sets the device's shell password hash; `NotFound` for an unknown device.
    pub async fn set_shell_password(
        &self,
        device: &DeviceId,
        password_hash: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO shell_passwords (device, password_hash, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (device) DO UPDATE \
             SET password_hash = excluded.password_hash, updated_at = excluded.updated_at",
        )
        .bind(device.as_str())
        .bind(password_hash)
        .bind(millis(at))
        .execute(&self.pool)
        .await
        .map_err(|source| {
            if violates(&source, ErrorKind::ForeignKeyViolation) {
                StoreError::NotFound {
                    what: format!("device {device}"),
                }
            } else {
                StoreError::Query {
                    context: "store a shell password",
                    source,
                }
            }
        })?;
        Ok(())
    }

    /// Turns password login off for the device; whether it was on.
    pub async fn clear_shell_password(&self, device: &DeviceId) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM shell_passwords WHERE device = $1")
            .bind(device.as_str())
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "clear a shell password",
                source,
            })?;
        Ok(deleted.rows_affected() > 0)
    }

    /// The device's shell password hash, if password login is on.
    pub async fn shell_password(&self, device: &DeviceId) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT password_hash FROM shell_passwords WHERE device = $1")
            .bind(device.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "read a shell password",
                source,
            })?;
        row.map(|row| get(&row, "password_hash")).transpose()
    }
}
