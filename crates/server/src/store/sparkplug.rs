//! The `sparkplug_nodes` table (issue 18): each Sparkplug edge node's last
//! `bdSeq`, and the reads the northbound pass makes of devices' metrics.

use chrono::{DateTime, Utc};

use super::codec::{from_json, get, millis};
use super::{Store, StoreError};
use tether_proto::api::Labels;

/// The newest value of one of a device's series.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestValue {
    pub device: String,
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

fn query_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

impl Store {
    /// The `bdSeq` the edge node's latest session took, if it ever had one.
    pub async fn sparkplug_bd_seq(
        &self,
        group: &str,
        node: &str,
    ) -> Result<Option<u8>, StoreError> {
        let row = sqlx::query(
            "SELECT bd_seq FROM sparkplug_nodes WHERE group_id = $1 AND edge_node_id = $2",
        )
        .bind(group)
        .bind(node)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read a Sparkplug edge node's bdSeq"))?;
        row.map(|row| {
            let bd_seq: i64 = get(&row, "bd_seq")?;
            u8::try_from(bd_seq).map_err(|_| {
                StoreError::Corrupt(format!(
                    "Sparkplug edge node {group}/{node} has bdSeq {bd_seq}, not 0 to 255"
                ))
            })
        })
        .transpose()
    }

    /// Records the `bdSeq` the edge node's latest session took.
    pub async fn set_sparkplug_bd_seq(
        &self,
        group: &str,
        node: &str,
        bd_seq: u8,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sparkplug_nodes (group_id, edge_node_id, bd_seq, updated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (group_id, edge_node_id) \
             DO UPDATE SET bd_seq = excluded.bd_seq, updated_at = excluded.updated_at",
        )
        .bind(group)
        .bind(node)
        .bind(i64::from(bd_seq))
        .bind(millis(now))
        .execute(&self.pool)
        .await
        .map_err(query_error("record a Sparkplug edge node's bdSeq"))?;
        Ok(())
    }

    /// The newest values of the series named `names` of the devices whose
    /// names are `first..=last` (one page of devices by name): one query
    /// per page instead of one per device.
    pub async fn latest_values_of_devices(
        &self,
        first: &str,
        last: &str,
        names: &[&str],
    ) -> Result<Vec<LatestValue>, StoreError> {
        // The names are constants of tetherd, never input: binding them
        // one by one keeps the query the same on both databases.
        let placeholders: Vec<String> = (0..names.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "SELECT device, name, labels, last_value FROM metric_series \
             WHERE device >= $1 AND device <= $2 AND name IN ({}) ORDER BY device, name",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(first).bind(last);
        for name in names {
            query = query.bind(*name);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("read the newest metrics of a page of devices"))?;
        rows.iter()
            .map(|row| {
                let labels: String = get(row, "labels")?;
                Ok(LatestValue {
                    device: get(row, "device")?,
                    name: get(row, "name")?,
                    labels: from_json(&labels, "series labels")?,
                    value: get(row, "last_value")?,
                })
            })
            .collect()
    }
}
