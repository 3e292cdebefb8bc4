//! The `agent_releases` and `agent_release_chunks` tables (issue 19): a
//! release's signed metadata per platform, and its binary in chunks of
//! [`CHUNK_BYTES`] so a ranged download reads only what it sends.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use tether_proto::desired::resources::DeploymentSpecification;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::codec::{from_json, get, limit, millis, time, to_i64, to_u64, violates};
use super::{Store, StoreError};

/// Bytes per stored chunk of a binary (the last one may be shorter).
pub const CHUNK_BYTES: u64 = 1024 * 1024;

/// One platform's binary of a release, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRecord {
    pub version: String,
    pub platform: String,
    pub sha256: String,
    pub size: u64,
    pub signature: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

const COLUMNS: &str = "version, platform, sha256, size, signature, created_at, created_by";

fn query_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

fn record(row: &AnyRow) -> Result<ReleaseRecord, StoreError> {
    let version: String = get(row, "version")?;
    Ok(ReleaseRecord {
        size: to_u64(get(row, "size")?, "an agent release's size")?,
        created_at: time(get(row, "created_at")?, "an agent release's creation")?,
        platform: get(row, "platform")?,
        sha256: get(row, "sha256")?,
        signature: get(row, "signature")?,
        created_by: get(row, "created_by")?,
        version,
    })
}

impl Store {
    /// Takes agent release `version`'s rows to share within `tx`, which
    /// writes a deployment naming it: a delete of the release waits for
    /// `tx`, or `tx` for the delete, which then finds no rows
    /// (`NotFound`). See [`Store::delete_unused_agent_release`].
    pub(super) async fn share_agent_release(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        version: &str,
    ) -> Result<(), StoreError> {
        // SQLite has no row locks: the transaction holds the database's
        // write lock already, since it wrote before.
        let lock = if self.postgres { " FOR SHARE" } else { "" };
        let found = sqlx::query(&format!(
            "SELECT platform FROM agent_releases WHERE version = $1{lock}"
        ))
        .bind(version)
        .fetch_all(&mut **tx)
        .await
        .map_err(query_error("take an agent release for a deployment"))?;
        if found.is_empty() {
            return Err(StoreError::NotFound {
                what: format!("agent release {version}"),
            });
        }
        Ok(())
    }

    /// Stores one platform's binary of a release and its metadata in one
    /// transaction, the bytes read from `binary` chunk by chunk (the
    /// record's `size` of them). `Conflict` if that version and platform
    /// exist.
    pub async fn insert_agent_release(
        &self,
        release: &ReleaseRecord,
        binary: &mut (impl AsyncRead + Unpin),
    ) -> Result<(), StoreError> {
        let context = "store an agent release";
        let mut tx = self.begin(context).await?;
        sqlx::query(&format!(
            "INSERT INTO agent_releases ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&release.version)
        .bind(&release.platform)
        .bind(&release.sha256)
        .bind(to_i64(release.size, "an agent release's size")?)
        .bind(&release.signature)
        .bind(millis(release.created_at))
        .bind(&release.created_by)
        .execute(&mut *tx)
        .await
        .map_err(|error| {
            if violates(&error, ErrorKind::UniqueViolation) {
                StoreError::Conflict {
                    what: format!("agent release {} for {}", release.version, release.platform),
                }
            } else {
                query_error(context)(error)
            }
        })?;
        let mut left = release.size;
        let mut seq: i64 = 0;
        while left > 0 {
            let mut chunk = vec![0; left.min(CHUNK_BYTES) as usize];
            binary.read_exact(&mut chunk).await.map_err(|error| {
                StoreError::Corrupt(format!(
                    "the spooled binary of agent release {} ended early: {error}",
                    release.version
                ))
            })?;
            left -= chunk.len() as u64;
            sqlx::query(
                "INSERT INTO agent_release_chunks (version, platform, seq, data) VALUES ($1, $2, $3, $4)",
            )
            .bind(&release.version)
            .bind(&release.platform)
            .bind(seq)
            .bind(chunk)
            .execute(&mut *tx)
            .await
            .map_err(query_error(context))?;
            seq += 1;
        }
        tx.commit().await.map_err(query_error(context))
    }

    pub async fn agent_release(
        &self,
        version: &str,
        platform: &str,
    ) -> Result<Option<ReleaseRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM agent_releases WHERE version = $1 AND platform = $2"
        ))
        .bind(version)
        .bind(platform)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read an agent release"))?
        .as_ref()
        .map(record)
        .transpose()
    }

    /// Every platform's binary of `version` (none: no such release).
    pub async fn agent_release_binaries(
        &self,
        version: &str,
    ) -> Result<Vec<ReleaseRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM agent_releases WHERE version = $1 ORDER BY platform"
        ))
        .bind(version)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read an agent release"))?
        .iter()
        .map(record)
        .collect()
    }

    /// The binaries of the first `limit` versions after `after`, by
    /// version then platform.
    pub async fn list_agent_releases(
        &self,
        after: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<ReleaseRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM agent_releases WHERE version IN \
             (SELECT version FROM agent_releases WHERE version > $1 \
              GROUP BY version ORDER BY version LIMIT $2) \
             ORDER BY version, platform"
        ))
        .bind(after.unwrap_or(""))
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list agent releases"))?
        .iter()
        .map(record)
        .collect()
    }

    /// Bytes `[seq * CHUNK_BYTES, …)` of a binary (`None`: no such chunk,
    /// e.g. the release was deleted meanwhile).
    pub async fn agent_release_chunk(
        &self,
        version: &str,
        platform: &str,
        seq: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query(
            "SELECT data FROM agent_release_chunks WHERE version = $1 AND platform = $2 AND seq = $3",
        )
        .bind(version)
        .bind(platform)
        .bind(to_i64(seq, "a chunk's index")?)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read a chunk of an agent release"))?;
        row.map(|row| get::<Vec<u8>>(&row, "data")).transpose()
    }

    /// Deletes every platform of `version` unless a deployment names it or
    /// a device's spec carries it, the checks and the delete in one
    /// transaction (review L6): it first takes the release's rows for
    /// writing (a row lock on PostgreSQL, the write lock on SQLite), which
    /// a deployment naming the release takes to share while it is written
    /// ([`Store::write_deployment`]), so one waits for the other and the
    /// checks see what it wrote.
    pub async fn delete_unused_agent_release(
        &self,
        version: &str,
    ) -> Result<ReleaseDeletion, StoreError> {
        let context = "delete an agent release";
        let mut tx = self.begin(context).await?;
        // A write changing nothing, not of a key column (no foreign key
        // check), takes the rows.
        let taken =
            sqlx::query("UPDATE agent_releases SET created_by = created_by WHERE version = $1")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(query_error(context))?;
        // Returning early rolls the transaction back.
        if taken.rows_affected() == 0 {
            return Ok(ReleaseDeletion::NotFound);
        }
        let deployments = deployments_naming_release(&mut tx, version).await?;
        if !deployments.is_empty() {
            return Ok(ReleaseDeletion::NamedBy(deployments));
        }
        let devices = devices_given_release(&mut tx, version, 5).await?;
        if !devices.is_empty() {
            return Ok(ReleaseDeletion::CarriedBy(devices));
        }
        sqlx::query("DELETE FROM agent_release_chunks WHERE version = $1")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(query_error(context))?;
        sqlx::query("DELETE FROM agent_releases WHERE version = $1")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(query_error(context))?;
        tx.commit().await.map_err(query_error(context))?;
        Ok(ReleaseDeletion::Deleted)
    }
}

/// What [`Store::delete_unused_agent_release`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseDeletion {
    Deleted,
    NotFound,
    /// Kept: these deployments name it.
    NamedBy(Vec<String>),
    /// Kept: these devices' specs (up to 5) still carry it.
    CarriedBy(Vec<String>),
}

/// Up to `limit` devices whose spec carries agent release `version` in
/// one of its deployments (still running it, or about to).
async fn devices_given_release(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    version: &str,
    limit_to: usize,
) -> Result<Vec<String>, StoreError> {
    // Specs are JSON text; the LIKEs narrow the rows, the parsed spec decides.
    let rows = sqlx::query(
        "SELECT device, spec FROM device_specs \
         WHERE spec LIKE '%\"agent\"%' AND spec LIKE $1 ORDER BY device",
    )
    .bind(format!("%{version}%"))
    .fetch_all(&mut **tx)
    .await
    .map_err(query_error("find the devices given an agent release"))?;
    let mut devices = Vec::new();
    for row in rows {
        let device: String = get(&row, "device")?;
        let spec: serde_json::Value = from_json(
            &get::<String>(&row, "spec")?,
            &format!("the spec of {device}"),
        )?;
        let carries = spec
            .get(tether_proto::desired::SECTION)
            .and_then(serde_json::Value::as_object)
            .is_some_and(|deployments| {
                deployments
                    .values()
                    .any(|d| d["agent"]["version"].as_str() == Some(version))
            });
        if carries {
            devices.push(device);
            if devices.len() == limit_to {
                break;
            }
        }
    }
    Ok(devices)
}

/// The deployments whose current spec names agent release `version`.
async fn deployments_naming_release(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    version: &str,
) -> Result<Vec<String>, StoreError> {
    // Specs are JSON text; a LIKE narrows the rows, the parsed spec decides.
    let rows = sqlx::query("SELECT name, spec FROM deployments WHERE spec LIKE $1 ORDER BY name")
        .bind(format!("%{version}%"))
        .fetch_all(&mut **tx)
        .await
        .map_err(query_error("find the deployments naming an agent release"))?;
    let mut names = Vec::new();
    for row in rows {
        let name: String = get(&row, "name")?;
        let spec: DeploymentSpecification =
            from_json(&get::<String>(&row, "spec")?, &format!("deployment {name}"))?;
        if spec.agent_release.as_deref() == Some(version) {
            names.push(name);
        }
    }
    Ok(names)
}
