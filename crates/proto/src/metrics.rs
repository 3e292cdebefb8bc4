//! Host metrics a device samples while `run-stats` is on, on its `metrics` topic.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostMetrics {
    pub sampled_at: DateTime<Utc>,
    /// Average CPU use over all cores since the previous sample, 0–100.
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    /// Bytes received on all interfaces since the previous sample.
    pub network_rx_bytes: u64,
    /// Bytes sent on all interfaces since the previous sample.
    pub network_tx_bytes: u64,
}

impl HostMetrics {
    /// Largest `metrics` payload tetherd accepts, in bytes: a sample is a
    /// handful of numbers.
    pub const MAX_PAYLOAD_BYTES: usize = 4 * 1024;
}
