//! The `devices` table.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use tether_proto::api::Labels;
use tether_proto::{DeviceId, Presence};

use super::codec::{
    device_id, from_json, get, millis, optional_time, time, to_i64, to_json, to_u64, violates,
};
use super::{DeviceRecord, Store, StoreError};

const COLUMNS: &str = "name, labels, presence, certificate_serial, last_seen, agent_version, \
                       capabilities, boot_id, status_seq, created_at";

impl Store {
    /// `Conflict` if a device of that name exists.
    pub async fn create_device(
        &self,
        name: &DeviceId,
        labels: &Labels,
        now: DateTime<Utc>,
    ) -> Result<DeviceRecord, StoreError> {
        let sql = format!(
            "INSERT INTO devices (name, labels, presence, status_seq, created_at) \
             VALUES ($1, $2, $3, 0, $4) RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(name.as_str())
            .bind(to_json(labels, "device labels")?)
            .bind(Presence::Offline.as_str())
            .bind(millis(now))
            .fetch_one(&self.pool)
            .await
            .map_err(|source| {
                if violates(&source, ErrorKind::UniqueViolation) {
                    StoreError::Conflict {
                        what: format!("device {name}"),
                    }
                } else {
                    StoreError::Query {
                        context: "create a device",
                        source,
                    }
                }
            })?;
        device_from_row(&row)
    }

    pub async fn get_device(&self, name: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM devices WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "read a device",
                source,
            })?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// All devices, ordered by name.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM devices ORDER BY name");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list devices",
                source,
            })?;
        rows.iter().map(device_from_row).collect()
    }

    /// Replaces the labels; `None` if the device does not exist.
    pub async fn set_labels(
        &self,
        name: &DeviceId,
        labels: &Labels,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let sql = format!("UPDATE devices SET labels = $1 WHERE name = $2 RETURNING {COLUMNS}");
        let row = sqlx::query(&sql)
            .bind(to_json(labels, "device labels")?)
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "set a device's labels",
                source,
            })?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Deletes the device with its tokens, actions, events and metrics
    /// (foreign keys cascade). `false` if it did not exist.
    pub async fn delete_device(&self, name: &DeviceId) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM devices WHERE name = $1")
            .bind(name.as_str())
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "delete a device",
                source,
            })?;
        Ok(result.rows_affected() > 0)
    }

    /// `NotFound` if the device does not exist (deleted while enrolling).
    /// The certificate before it, if any, stops working at once.
    pub async fn set_certificate_serial(
        &self,
        name: &DeviceId,
        serial_hex: &str,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE devices SET certificate_serial = $1, previous_certificate_serial = NULL \
             WHERE name = $2",
        )
        .bind(serial_hex)
        .bind(name.as_str())
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "store a device's certificate serial",
            source,
        })?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("device {name}"),
            });
        }
        Ok(())
    }

    /// A device deleted meanwhile is not an error: its session is on its way
    /// out and there is nothing left to update.
    pub async fn set_presence(
        &self,
        name: &DeviceId,
        presence: Presence,
        last_seen: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET presence = $1, last_seen = $2 WHERE name = $3")
            .bind(presence.as_str())
            .bind(millis(last_seen))
            .bind(name.as_str())
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "set a device's presence",
                source,
            })?;
        Ok(())
    }

    /// Records that the device was heard from, leaving its presence alone.
    /// Like `set_presence`, a device deleted meanwhile is not an error.
    pub async fn touch_last_seen(
        &self,
        name: &DeviceId,
        last_seen: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET last_seen = $1 WHERE name = $2")
            .bind(millis(last_seen))
            .bind(name.as_str())
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "record when a device was last seen",
                source,
            })?;
        Ok(())
    }

    /// What the device's birth says about its agent; an empty version or
    /// boot id (a birth without them) is stored as unknown. Like
    /// `set_presence`, a device deleted meanwhile is not an error.
    pub async fn set_agent_status(
        &self,
        name: &DeviceId,
        agent_version: &str,
        capabilities: &[String],
        boot_id: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE devices SET agent_version = $1, capabilities = $2, boot_id = $3, \
             status_seq = $4 WHERE name = $5",
        )
        .bind((!agent_version.is_empty()).then_some(agent_version))
        .bind(to_json(&capabilities, "device capabilities")?)
        .bind((!boot_id.is_empty()).then_some(boot_id))
        .bind(to_i64(seq, "status sequence number")?)
        .bind(name.as_str())
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "set a device's agent status",
            source,
        })?;
        Ok(())
    }
}

fn device_from_row(row: &AnyRow) -> Result<DeviceRecord, StoreError> {
    let name = device_id(get(row, "name")?)?;
    let labels: String = get(row, "labels")?;
    let presence: String = get(row, "presence")?;
    let presence = match presence.as_str() {
        "online" => Presence::Online,
        "offline" => Presence::Offline,
        other => {
            return Err(StoreError::Corrupt(format!(
                "presence of device {name} is {other:?}, neither online nor offline"
            )));
        }
    };
    Ok(DeviceRecord {
        labels: from_json(&labels, &format!("labels of device {name}"))?,
        presence,
        certificate_serial: get(row, "certificate_serial")?,
        last_seen: optional_time(
            get(row, "last_seen")?,
            &format!("last_seen of device {name}"),
        )?,
        agent_version: get(row, "agent_version")?,
        capabilities: from_json(
            &get::<String>(row, "capabilities")?,
            &format!("capabilities of device {name}"),
        )?,
        boot_id: get(row, "boot_id")?,
        status_seq: to_u64(
            get(row, "status_seq")?,
            &format!("status_seq of device {name}"),
        )?,
        created_at: time(
            get(row, "created_at")?,
            &format!("created_at of device {name}"),
        )?,
        name,
    })
}
