//! The `audit` table: who changed what through the API.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;

use super::codec::{get, limit, millis, time, to_u16};
use super::telemetry::before_or_newest;
use super::{AuditRecord, Before, Store, StoreError};

impl Store {
    pub async fn insert_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (id, at, actor, method, path, status, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&record.id)
        .bind(millis(record.at))
        .bind(&record.actor)
        .bind(&record.method)
        .bind(&record.path)
        .bind(i64::from(record.status))
        .bind(record.detail.as_ref().map(serde_json::Value::to_string))
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "record an audit entry",
            source,
        })?;
        Ok(())
    }

    /// The newest entries first, at most `limit`, those before `before` if given.
    pub async fn list_audit(
        &self,
        before: Option<&Before>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let (at, id) = before_or_newest(before);
        let rows = sqlx::query(
            "SELECT id, at, actor, method, path, status, detail FROM audit WHERE at <= $1 AND (at < $1 OR id < $2) \
             ORDER BY at DESC, id DESC LIMIT $3",
        )
        .bind(at)
        .bind(id)
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "list the audit log",
            source,
        })?;
        rows.iter().map(audit_from_row).collect()
    }

    /// Deletes entries older than `before`; returns how many.
    pub async fn delete_audit_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.delete_before(
            "DELETE FROM audit WHERE at < $1",
            before,
            "delete old audit entries",
        )
        .await
    }
}

fn audit_from_row(row: &AnyRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        id: get(row, "id")?,
        at: time(get(row, "at")?, "audit.at")?,
        actor: get(row, "actor")?,
        method: get(row, "method")?,
        path: get(row, "path")?,
        status: to_u16(get(row, "status")?, "audit.status")?,
        detail: get::<Option<String>>(row, "detail")?
            .and_then(|text| serde_json::from_str(&text).ok()),
    })
}
