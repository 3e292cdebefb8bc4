//! The `issued_certificates` table: which device certificates exist, so
//! those no longer in use can be listed as revoked.

use chrono::{DateTime, Utc};

use super::codec::{get, millis};
use super::{Store, StoreError};

impl Store {
    /// Records a certificate the CA just issued, before it is handed out.
    pub async fn record_issued_certificate(
        &self,
        device: &tether_proto::DeviceId,
        serial_hex: &str,
        not_after: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO issued_certificates (serial, device, not_after) VALUES ($1, $2, $3)",
        )
        .bind(serial_hex)
        .bind(device.as_str())
        .bind(millis(not_after))
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "record an issued certificate",
            source,
        })?;
        Ok(())
    }

    /// Serials (lowercase hex) of unexpired certificates that are neither
    /// their device's current nor its previous one, in serial order.
    pub async fn retired_certificate_serials(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT i.serial FROM issued_certificates i \
             LEFT JOIN devices d ON d.name = i.device \
               AND (d.certificate_serial = i.serial OR d.previous_certificate_serial = i.serial) \
             WHERE d.name IS NULL AND i.not_after > $1 \
             ORDER BY i.serial",
        )
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "list retired certificates",
            source,
        })?;
        rows.iter().map(|row| get(row, "serial")).collect()
    }

    /// Forgets certificates that expired: no TLS stack accepts them anyway.
    pub async fn delete_expired_issued_certificates(
        &self,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM issued_certificates WHERE not_after <= $1")
            .bind(millis(now))
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "delete expired issued certificates",
                source,
            })?;
        Ok(result.rows_affected())
    }
}
