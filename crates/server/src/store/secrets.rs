//! The `device_sealing_keys`, `secrets` and `secret_ciphertexts` tables
//! (ADR 0030). Only ciphertexts are stored, never a secret's value.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use tether_proto::DeviceId;
use tether_proto::desired::resources::Target;

use super::codec::{device_id, from_json, get, limit, millis, placeholders, time, to_json, to_u64};
use super::{Store, StoreError};

/// A secret's metadata and, per device it was sealed for, the key it was
/// sealed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub name: String,
    pub target: Target,
    pub version: u64,
    pub sealed_to: BTreeMap<DeviceId, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The value sealed to one device's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphertext {
    pub device: DeviceId,
    pub public_key: String,
    pub ciphertext: String,
}

fn query_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

impl Store {
    /// Records the key `device` reports; `true` if it is new or changed.
    pub async fn record_sealing_key(
        &self,
        device: &DeviceId,
        public_key: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let written = sqlx::query(
            "INSERT INTO device_sealing_keys (device, public_key, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (device) DO UPDATE SET public_key = excluded.public_key, \
             updated_at = excluded.updated_at \
             WHERE device_sealing_keys.public_key <> excluded.public_key",
        )
        .bind(device.as_str())
        .bind(public_key)
        .bind(millis(now))
        .execute(&self.pool)
        .await
        .map_err(query_error("record a device's sealing key"))?;
        Ok(written.rows_affected() > 0)
    }

    /// The sealing keys of those of `devices` that reported one.
    pub async fn sealing_keys(
        &self,
        devices: &[DeviceId],
    ) -> Result<BTreeMap<DeviceId, String>, StoreError> {
        let mut keys = BTreeMap::new();
        // A bounded number of binds per query, for PostgreSQL and SQLite alike.
        for chunk in devices.chunks(500) {
            let sql = format!(
                "SELECT device, public_key FROM device_sealing_keys WHERE device IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for device in chunk {
                query = query.bind(device.as_str());
            }
            for row in query
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("read devices' sealing keys"))?
            {
                keys.insert(device_id(get(&row, "device")?)?, get(&row, "public_key")?);
            }
        }
        Ok(keys)
    }

    /// Creates or replaces a secret: its target, and its ciphertexts, which
    /// replace every previous one. Returns the new version (1 when new).
    pub async fn write_secret(
        &self,
        name: &str,
        target: &Target,
        ciphertexts: &[Ciphertext],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let context = "write a secret";
        let mut tx = self.pool.begin().await.map_err(query_error(context))?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO secrets (name, target, version, created_at, updated_at) \
             VALUES ($1, $2, 1, $3, $3) \
             ON CONFLICT (name) DO UPDATE SET target = excluded.target, \
             version = secrets.version + 1, updated_at = excluded.updated_at \
             RETURNING version",
        )
        .bind(name)
        .bind(to_json(target, "a secret's target")?)
        .bind(millis(now))
        .fetch_one(&mut *tx)
        .await
        .map_err(query_error(context))?;
        sqlx::query("DELETE FROM secret_ciphertexts WHERE secret = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(query_error(context))?;
        for sealed in ciphertexts {
            sqlx::query(
                "INSERT INTO secret_ciphertexts (secret, device, public_key, ciphertext) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(name)
            .bind(sealed.device.as_str())
            .bind(&sealed.public_key)
            .bind(&sealed.ciphertext)
            .execute(&mut *tx)
            .await
            .map_err(query_error(context))?;
        }
        tx.commit().await.map_err(query_error(context))?;
        to_u64(version, "a secret's version")
    }

    pub async fn get_secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT name, target, version, created_at, updated_at FROM secrets WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read a secret"))?;
        match row {
            Some(row) => Ok(Some(self.secret_from_row(&row).await?)),
            None => Ok(None),
        }
    }

    /// Secrets by name: at most `limit_to` after `after`.
    pub async fn list_secrets(
        &self,
        after: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<SecretRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, target, version, created_at, updated_at FROM secrets \
             WHERE name > $1 ORDER BY name LIMIT $2",
        )
        .bind(after.unwrap_or_default())
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list secrets"))?;
        let mut secrets = Vec::with_capacity(rows.len());
        for row in &rows {
            secrets.push(self.secret_from_row(row).await?);
        }
        Ok(secrets)
    }

    /// Deletes a secret and its ciphertexts; `NotFound` if there is none.
    pub async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM secrets WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(query_error("delete a secret"))?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("secret {name}"),
            });
        }
        Ok(())
    }

    async fn secret_from_row(&self, row: &AnyRow) -> Result<SecretRecord, StoreError> {
        let name: String = get(row, "name")?;
        let mut sealed_to = BTreeMap::new();
        for row in sqlx::query(
            "SELECT device, public_key FROM secret_ciphertexts WHERE secret = $1 ORDER BY device",
        )
        .bind(&name)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read where a secret is sealed"))?
        {
            sealed_to.insert(device_id(get(&row, "device")?)?, get(&row, "public_key")?);
        }
        Ok(SecretRecord {
            target: from_json(&get::<String>(row, "target")?, &format!("secret {name}"))?,
            version: to_u64(get(row, "version")?, "a secret's version")?,
            sealed_to,
            created_at: time(get(row, "created_at")?, "a secret's created_at")?,
            updated_at: time(get(row, "updated_at")?, "a secret's updated_at")?,
            name,
        })
    }
}
