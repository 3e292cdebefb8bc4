//! A series: a device's metric name and labels, and the points it holds.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tether_proto::DeviceId;

/// Labels of a series, kept sorted so the same set is the same series.
pub type Labels = BTreeMap<String, String>;

/// A metric name and its labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub name: String,
    pub labels: Labels,
}

impl SeriesKey {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            labels: Labels::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.labels.insert(key.to_owned(), value.into());
        self
    }

    /// The labels as stored: a JSON object, keys sorted.
    pub fn labels_json(&self) -> String {
        serde_json::to_string(&self.labels).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The series' id for `device`: the first 8 bytes of a SHA-256 over
    /// device, name and labels. Ingest derives it without a lookup; two
    /// series of one fleet sharing an id (odds about n²/2⁶⁵ for n series)
    /// would be merged.
    pub fn id(&self, device: &DeviceId) -> i64 {
        let mut hash = Sha256::new();
        hash.update(device.as_str().as_bytes());
        hash.update([0]);
        hash.update(self.name.as_bytes());
        hash.update([0]);
        hash.update(self.labels_json().as_bytes());
        let digest = hash.finalize();
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(bytes)
    }
}

/// One value of one series at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub series: SeriesKey,
    pub at: DateTime<Utc>,
    pub value: f64,
}

/// A device's points as they are stored: each series named once, each
/// point by its series' id. Made on the device's own task, so the writer
/// that stores several devices' batches together only binds numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePoints {
    pub device: DeviceId,
    pub series: Vec<SeriesRow>,
    pub rows: Vec<PointRow>,
}

/// A series' id, name and labels as stored (JSON, keys sorted).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRow {
    pub id: i64,
    pub name: String,
    pub labels: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointRow {
    pub series_id: i64,
    /// Milliseconds since the epoch.
    pub at: i64,
    pub value: f64,
}

impl DevicePoints {
    pub fn new(device: &DeviceId, points: &[Point]) -> Self {
        // A batch holds many points of few series: hash each series once.
        let mut ids: HashMap<&SeriesKey, i64> = HashMap::new();
        let mut series = Vec::new();
        let rows = points
            .iter()
            .map(|point| {
                let series_id = *ids.entry(&point.series).or_insert_with(|| {
                    let id = point.series.id(device);
                    series.push(SeriesRow {
                        id,
                        name: point.series.name.clone(),
                        labels: point.series.labels_json(),
                    });
                    id
                });
                PointRow {
                    series_id,
                    at: point.at.timestamp_millis(),
                    value: point.value,
                }
            })
            .collect();
        Self {
            device: device.clone(),
            series,
            rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_depends_on_device_name_and_labels_but_not_label_order() {
        let edge = DeviceId::new("edge-1").expect("valid");
        let other = DeviceId::new("edge-2").expect("valid");
        let a = SeriesKey::new("disk_used_bytes")
            .with("mount", "/")
            .with("fs", "ext4");
        let b = SeriesKey::new("disk_used_bytes")
            .with("fs", "ext4")
            .with("mount", "/");
        assert_eq!(a.id(&edge), b.id(&edge));
        assert_eq!(a.labels_json(), r#"{"fs":"ext4","mount":"/"}"#);
        assert_ne!(a.id(&edge), a.id(&other));
        assert_ne!(a.id(&edge), SeriesKey::new("disk_used_bytes").id(&edge));
        // The separator keeps name and labels apart.
        assert_ne!(
            SeriesKey::new("ab").id(&edge),
            SeriesKey::new("a").with("b", "").id(&edge)
        );
    }
}
