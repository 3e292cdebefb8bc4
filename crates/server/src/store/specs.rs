//! `device_specs`: each device's spec with its version, and the status its
//! agent last reported.

use chrono::{DateTime, Utc};
use sqlx::error::ErrorKind;
use tether_proto::DeviceId;
use tether_proto::spec::{DeviceSpec, ReportedStatus};

use super::actions::DEVICES_PER_QUERY;
use super::codec::{
    device_id, from_json, get, millis, optional_time, placeholders, to_i64, to_json, to_u64,
    violates,
};
use super::{Store, StoreError};

/// A device's spec and its agent's last report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecRecord {
    pub spec: DeviceSpec,
    /// 0 before the first update.
    pub version: u64,
    pub reported: Option<(ReportedStatus, DateTime<Utc>)>,
}

impl Store {
    /// The device's spec; the empty spec at version 0 if none was written
    /// (whether the device exists is the caller's to know).
    pub async fn get_spec(&self, device: &DeviceId) -> Result<SpecRecord, StoreError> {
        let context = "read a device's spec";
        let row = sqlx::query(
            "SELECT spec, spec_version, status, status_reported_at FROM device_specs WHERE device = $1",
        )
        .bind(device.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| StoreError::Query { context, source })?;
        let Some(row) = row else {
            return Ok(SpecRecord::default());
        };
        let spec: String = get(&row, "spec")?;
        let status: Option<String> = get(&row, "status")?;
        let reported_at = optional_time(get(&row, "status_reported_at")?, "status_reported_at")?;
        let reported = match (status, reported_at) {
            (Some(status), Some(at)) => Some((from_json(&status, "a reported status")?, at)),
            _ => None,
        };
        Ok(SpecRecord {
            spec: from_json(&spec, "a device spec")?,
            version: to_u64(get(&row, "spec_version")?, "spec_version")?,
            reported,
        })
    }

    /// The specs of those of `devices` that have one written (the others
    /// have the empty spec): one query per [`DEVICES_PER_QUERY`] devices.
    pub async fn get_specs(
        &self,
        devices: &[DeviceId],
    ) -> Result<Vec<(DeviceId, DeviceSpec)>, StoreError> {
        let context = "read devices' specs";
        let mut specs = Vec::new();
        for chunk in devices.chunks(DEVICES_PER_QUERY) {
            let sql = format!(
                "SELECT device, spec FROM device_specs WHERE spec_version > 0 AND device IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for device in chunk {
                query = query.bind(device.as_str());
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(|source| StoreError::Query { context, source })?;
            for row in &rows {
                let spec: String = get(row, "spec")?;
                specs.push((
                    device_id(get(row, "device")?)?,
                    from_json(&spec, "a device spec")?,
                ));
            }
        }
        Ok(specs)
    }

    /// Writes `spec` as `version` if the stored version is still
    /// `expected`; `false` if another write came first. `NotFound` if the
    /// device does not exist.
    pub async fn write_spec(
        &self,
        device: &DeviceId,
        spec: &DeviceSpec,
        expected: u64,
        version: u64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let context = "write a device's spec";
        let result = sqlx::query(
            "INSERT INTO device_specs (device, spec, spec_version, spec_updated_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (device) DO UPDATE SET spec = excluded.spec, \
             spec_version = excluded.spec_version, spec_updated_at = excluded.spec_updated_at \
             WHERE device_specs.spec_version = $5",
        )
        .bind(device.as_str())
        .bind(to_json(spec, "a device spec")?)
        .bind(to_i64(version, "spec version")?)
        .bind(millis(now))
        .bind(to_i64(expected, "spec version")?)
        .execute(&self.pool)
        .await
        .map_err(|source| not_found(source, device, context))?;
        Ok(result.rows_affected() > 0)
    }

    /// Stores what the agent reported, replacing its last report.
    /// `NotFound` if the device does not exist.
    pub async fn set_reported(
        &self,
        device: &DeviceId,
        status: &ReportedStatus,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let context = "store a device's reported status";
        sqlx::query(
            "INSERT INTO device_specs (device, spec, spec_version, status, status_spec_version, status_reported_at, update_holds) \
             VALUES ($1, '{}', 0, $2, $3, $4, $5) \
             ON CONFLICT (device) DO UPDATE SET status = excluded.status, \
             status_spec_version = excluded.status_spec_version, \
             status_reported_at = excluded.status_reported_at, \
             update_holds = excluded.update_holds",
        )
        .bind(device.as_str())
        .bind(to_json(status, "a reported status")?)
        .bind(to_i64(status.spec_version, "reported spec version")?)
        .bind(millis(now))
        .bind(if status.update_holds.is_empty() {
            None
        } else {
            Some(to_json(&status.update_holds, "update holds")?)
        })
        .execute(&self.pool)
        .await
        .map_err(|source| not_found(source, device, context))?;
        Ok(())
    }

    /// Devices whose agent has not reported their current spec version.
    pub async fn devices_behind_their_spec(&self) -> Result<Vec<DeviceId>, StoreError> {
        let context = "list devices behind their spec";
        let rows = sqlx::query(
            "SELECT device FROM device_specs \
             WHERE status_spec_version IS NULL OR status_spec_version < spec_version \
             ORDER BY device",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::Query { context, source })?;
        rows.iter()
            .map(|row| device_id(get(row, "device")?))
            .collect()
    }
}

fn not_found(source: sqlx::Error, device: &DeviceId, context: &'static str) -> StoreError {
    if violates(&source, ErrorKind::ForeignKeyViolation) {
        StoreError::NotFound {
            what: format!("device {device}"),
        }
    } else {
        StoreError::Query { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_spec_write_succeeds_only_against_the_version_it_read() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        let device = DeviceId::new("edge-1").expect("valid");
        store
            .create_device(&device, &Default::default(), Utc::now())
            .await
            .expect("device");
        assert_eq!(
            store.get_spec(&device).await.expect("read"),
            SpecRecord::default()
        );
        let spec = json!({"metricsConfig": {"intervalSeconds": 5}})
            .as_object()
            .cloned()
            .expect("object");
        // A report before any spec creates the row at version 0.
        let reported = ReportedStatus::default();
        store
            .set_reported(&device, &reported, Utc::now())
            .await
            .expect("report");
        assert!(
            store
                .write_spec(&device, &spec, 0, 1, Utc::now())
                .await
                .expect("write")
        );
        assert!(
            !store
                .write_spec(&device, &spec, 0, 1, Utc::now())
                .await
                .expect("stale write")
        );
        let record = store.get_spec(&device).await.expect("read");
        assert_eq!((record.version, &record.spec), (1, &spec));
        assert_eq!(record.reported.map(|(status, _)| status), Some(reported));
        assert_eq!(
            store.devices_behind_their_spec().await.expect("list"),
            vec![device.clone()]
        );

        let ghost = DeviceId::new("ghost").expect("valid");
        assert!(matches!(
            store.write_spec(&ghost, &spec, 0, 1, Utc::now()).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store
                .set_reported(&ghost, &ReportedStatus::default(), Utc::now())
                .await,
            Err(StoreError::NotFound { .. })
        ));
    }
}
