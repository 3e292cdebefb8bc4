//! Telemetry batches: the records a device's spool carries to tetherd on
//! its `metrics` and `logs` topics (QoS 1), and their wire encoding.
//!
//! A batch holds consecutive records of one stream of one spool: record `i`
//! has sequence number `firstSeq + i`. The spool id is random and made with
//! the spool, so a device whose spool was wiped starts a new sequence that
//! tetherd cannot mistake for a replay of the old one. `dropped` carries the
//! spool's running totals of records it dropped for lack of space; totals,
//! not deltas, so a batch that is lost or sent twice cannot make them wrong.
//!
//! On the wire a batch is one format byte ([`FORMAT_ZLIB_JSON`]) followed by
//! the batch's JSON compressed with deflate in a zlib stream (RFC 1950/1951).
//! Both sizes are bounded, and decoding stops reading as soon as the JSON
//! grows past its bound, so a small payload that inflates to gigabytes (a
//! "zip bomb") costs the reader no more than the bound.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::metrics::{HostMetrics, HostSample};

/// First byte of an encoded batch: JSON, deflate-compressed in a zlib
/// stream. Other values are reserved for later encodings. A payload whose
/// first byte is `{` is a bare [`HostMetrics`] sample of the agents before
/// batches (`metrics` topic only).
pub const FORMAT_ZLIB_JSON: u8 = 0x01;

/// Most records in one batch.
pub const MAX_RECORDS: usize = 2_000;
/// Largest encoded batch (format byte and compressed JSON), in bytes.
pub const MAX_COMPRESSED_BYTES: usize = 256 * 1024;
/// Largest JSON a batch may inflate to, in bytes.
pub const MAX_DECOMPRESSED_BYTES: usize = 4 * 1024 * 1024;
/// Longest spool id, in bytes.
pub const MAX_SPOOL_ID_BYTES: usize = 64;
/// Where a spool's sequence numbers end: `firstSeq` plus the batch's
/// records may reach it, not pass it (tetherd stores them as SQL integers).
pub const MAX_SEQ: u64 = i64::MAX as u64;
/// Longest log message, in bytes; the spool cuts longer ones.
pub const MAX_LOG_MESSAGE_BYTES: usize = 16 * 1024;
/// Most significant syslog priority number: 0 emergency … 7 debug.
pub const MAX_PRIORITY: u8 = 7;
/// Longest custom metric name, in bytes. PostgreSQL indexes series by
/// name, and a btree entry holds at most about 2.7 kB.
pub const MAX_METRIC_NAME_BYTES: usize = 128;
/// Most labels of one custom metric sample …
pub const MAX_METRIC_LABELS: usize = 32;
/// … and the longest of their names and values, in bytes: tetherd keeps
/// them with each series and writes them in every fleet scrape.
pub const MAX_LABEL_NAME_BYTES: usize = 128;
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;

/// Which spool a batch comes from; each has its own topic and sequence.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Stream {
    #[default]
    Metrics,
    Logs,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Metrics, Stream::Logs];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Metrics => "metrics",
            Stream::Logs => "logs",
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One metrics record: a host sample, or a named value an application on
/// the device pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MetricRecord {
    /// The totals agents sent before host samples; still read.
    Host(HostMetrics),
    Custom(CustomMetric),
    /// A host sample (`{"sample": {...}}`).
    Sample(HostSample),
}

impl MetricRecord {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            MetricRecord::Host(sample) => sample.sampled_at,
            MetricRecord::Custom(metric) => metric.at,
            MetricRecord::Sample(sample) => sample.at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomMetric {
    pub name: String,
    pub value: f64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub at: DateTime<Utc>,
}

impl CustomMetric {
    /// Whether tetherd takes this sample: its name and labels within the
    /// bounds above and free of NUL characters, which PostgreSQL's text
    /// cannot hold. The agent's local API asks the same, so a sample
    /// tetherd would refuse is refused to the application that pushed it.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > MAX_METRIC_NAME_BYTES {
            return Err(format!(
                "name must be 1 to {MAX_METRIC_NAME_BYTES} bytes, not {}",
                self.name.len()
            ));
        }
        if self.name.contains('\0') {
            return Err("name holds a NUL character".into());
        }
        if self.labels.len() > MAX_METRIC_LABELS {
            return Err(format!(
                "{} labels, more than the {MAX_METRIC_LABELS} allowed",
                self.labels.len()
            ));
        }
        for (key, value) in &self.labels {
            if key.len() > MAX_LABEL_NAME_BYTES || value.len() > MAX_LABEL_VALUE_BYTES {
                return Err(format!(
                    "label names are at most {MAX_LABEL_NAME_BYTES} bytes and values {MAX_LABEL_VALUE_BYTES}; label {:?} is {} and its value {}",
                    key.chars().take(32).collect::<String>(),
                    key.len(),
                    value.len()
                ));
            }
            if key.contains('\0') || value.contains('\0') {
                return Err(format!(
                    "label {:?} holds a NUL character",
                    key.chars().take(32).collect::<String>()
                ));
            }
        }
        Ok(())
    }
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRecord {
    pub at: DateTime<Utc>,
    /// Syslog severity, 0 (emergency) to 7 (debug).
    pub priority: u8,
    /// The systemd unit, syslog tag or file the line came from.
    #[serde(default)]
    pub unit: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// The records of a batch; the tag is the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stream", content = "records", rename_all = "lowercase")]
pub enum Records {
    Metrics(Vec<MetricRecord>),
    Logs(Vec<LogRecord>),
}

impl Records {
    pub fn stream(&self) -> Stream {
        match self {
            Records::Metrics(_) => Stream::Metrics,
            Records::Logs(_) => Stream::Logs,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Records::Metrics(records) => records.len(),
            Records::Logs(records) => records.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Records the spool dropped since it was made: totals. `total` and
/// `byPriority` are those a full spool dropped (the oldest first);
/// `overBudget` and `overBudgetByPriority` those the spec's budget for the
/// stream did not let through (the least severe first). Agents before
/// budgets were counted apart counted both in `total`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dropped {
    pub total: u64,
    /// Log records by priority, index 0 (emergency) to 7 (debug); all zero
    /// for metrics.
    #[serde(default)]
    pub by_priority: [u64; 8],
    #[serde(default)]
    pub over_budget: u64,
    /// As `byPriority`, for `overBudget`.
    #[serde(default)]
    pub over_budget_by_priority: [u64; 8],
}

/// A feature whose bytes are counted, and which the spec's `budgets` may
/// limit. `spoolReplay` is the part of `metrics` and `logs` sent from the
/// spool's backlog after a reconnect: those bytes count in their stream's
/// feature too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Feature {
    Actions,
    Metrics,
    Logs,
    SpoolReplay,
}

impl Feature {
    pub const ALL: [Feature; 4] = [
        Feature::Actions,
        Feature::Metrics,
        Feature::Logs,
        Feature::SpoolReplay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Actions => "actions",
            Feature::Metrics => "metrics",
            Feature::Logs => "logs",
            Feature::SpoolReplay => "spoolReplay",
        }
    }
}

impl From<Stream> for Feature {
    fn from(stream: Stream) -> Self {
        match stream {
            Stream::Metrics => Feature::Metrics,
            Stream::Logs => Feature::Logs,
        }
    }
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent's own count of one feature's bytes since its state directory
/// was made: MQTT payload bytes it sent to tetherd and received from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeatureBytes {
    pub feature: Feature,
    #[serde(default)]
    pub sent_bytes: u64,
    #[serde(default)]
    pub received_bytes: u64,
}

/// Most features in a batch's `usage`.
pub const MAX_USAGE_FEATURES: usize = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryBatch {
    pub spool_id: String,
    /// Sequence number of the first record; the others follow one by one.
    pub first_seq: u64,
    #[serde(flatten)]
    pub records: Records,
    #[serde(default)]
    pub dropped: Dropped,
    /// Sent from the spool's backlog after a reconnect, not live.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
    /// The agent's own counts, every feature, as of this batch (its own
    /// bytes not included); sent now and then, not in every batch.
    /// Features this side does not know are passed over, so a newer agent
    /// that counts more of them is not refused for it.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "known_features"
    )]
    pub usage: Vec<FeatureBytes>,
}

fn known_features<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<FeatureBytes>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Known(FeatureBytes),
        Other(serde::de::IgnoredAny),
    }
    Ok(Vec::<Entry>::deserialize(deserializer)?
        .into_iter()
        .filter_map(|entry| match entry {
            Entry::Known(feature) => Some(feature),
            Entry::Other(_) => None,
        })
        .collect())
}

impl TelemetryBatch {
    pub fn stream(&self) -> Stream {
        self.records.stream()
    }

    /// Sequence number after the last record.
    pub fn end_seq(&self) -> u64 {
        self.first_seq.saturating_add(self.records.len() as u64)
    }
}

/// What one stream of a device has sent, summed over its spools
/// (`GET /api/v1/devices/{name}/usage`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamUsage {
    pub stream: Stream,
    /// Spools seen: more than one means the device's spool was wiped.
    pub spools: u64,
    /// Compressed batch bytes as received, batches sent twice included.
    pub wire_bytes: u64,
    pub batches: u64,
    pub stored_records: u64,
    /// Records received again and not stored twice.
    pub duplicate_records: u64,
    /// Sequence numbers never received (skipped by a later batch).
    pub gap: u64,
    /// Of `wireBytes`, what came from the spool's backlog after a
    /// reconnect (batches the device marked `replay`).
    #[serde(default)]
    pub replay_bytes: u64,
    /// What the device's spools dropped, when full and over the spec's
    /// budget, as they reported it.
    pub dropped: Dropped,
}

/// One feature's bytes as each end counted them: tetherd, of the MQTT
/// payloads it received from and sent to the device; the device, as its
/// agent last reported (absent if it never did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeatureUsage {
    pub feature: Feature,
    /// Device → tetherd, as tetherd received it.
    pub received_bytes: u64,
    /// tetherd → device, as tetherd sent it (action requests).
    pub sent_bytes: u64,
    /// Device → tetherd, as the device counted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_sent_bytes: Option<u64>,
    /// tetherd → device, as the device counted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_received_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceUsage {
    pub device: String,
    pub streams: Vec<StreamUsage>,
    /// Bytes per feature, as both ends counted them.
    #[serde(default)]
    pub features: Vec<FeatureUsage>,
    /// When the device's agent last reported its counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_reported_at: Option<DateTime<Utc>>,
    /// New metric series tetherd refused because the device had as many
    /// as it may (`ingest.max_series_per_device`), counted in each batch
    /// that brought them …
    #[serde(default)]
    pub metric_series_refused: u64,
    /// … and their points, not stored.
    #[serde(default)]
    pub metric_points_refused: u64,
}

/// Why a payload is not a batch tetherd accepts; the device sees this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the payload is empty")]
    Empty,
    #[error(
        "unknown batch format {0:#04x}: this controller reads format 0x01 (zlib-compressed JSON)"
    )]
    UnknownFormat(u8),
    #[error("the batch is {actual} bytes compressed, more than the {max} allowed")]
    TooLarge { actual: usize, max: usize },
    #[error(
        "the batch inflates to more than {max} bytes (a decompression bomb?); send smaller batches"
    )]
    Bomb { max: usize },
    #[error("the batch is not a valid zlib stream: {0}")]
    Compression(String),
    #[error("malformed batch: {0}")]
    Json(String),
    #[error("invalid batch: {0}")]
    Invalid(String),
}

/// The wire form of `batch`.
pub fn encode(batch: &TelemetryBatch) -> Vec<u8> {
    let json = serde_json::to_vec(batch).unwrap_or_default();
    let mut encoder =
        flate2::write::ZlibEncoder::new(vec![FORMAT_ZLIB_JSON], flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(&json);
    encoder.finish().unwrap_or_default()
}

/// Reads and checks a batch, within every bound of this module.
pub fn decode(payload: &[u8]) -> Result<TelemetryBatch, BatchError> {
    let (&format, compressed) = payload.split_first().ok_or(BatchError::Empty)?;
    if format != FORMAT_ZLIB_JSON {
        return Err(BatchError::UnknownFormat(format));
    }
    if payload.len() > MAX_COMPRESSED_BYTES {
        return Err(BatchError::TooLarge {
            actual: payload.len(),
            max: MAX_COMPRESSED_BYTES,
        });
    }
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(compressed)
        .take(MAX_DECOMPRESSED_BYTES as u64 + 1)
        .read_to_end(&mut json)
        .map_err(|e| BatchError::Compression(e.to_string()))?;
    if json.len() > MAX_DECOMPRESSED_BYTES {
        return Err(BatchError::Bomb {
            max: MAX_DECOMPRESSED_BYTES,
        });
    }
    let batch: TelemetryBatch =
        serde_json::from_slice(&json).map_err(|e| BatchError::Json(e.to_string()))?;
    check(&batch)?;
    Ok(batch)
}

/// The rules a decoded batch must follow.
pub fn check(batch: &TelemetryBatch) -> Result<(), BatchError> {
    let invalid = |reason: String| Err(BatchError::Invalid(reason));
    if batch.spool_id.is_empty() || batch.spool_id.len() > MAX_SPOOL_ID_BYTES {
        return invalid(format!("spoolId must be 1 to {MAX_SPOOL_ID_BYTES} bytes"));
    }
    // A batch of no records carries only the counts: drops that no record
    // followed would otherwise never reach tetherd.
    let count = batch.records.len();
    if count > MAX_RECORDS {
        return invalid(format!(
            "a batch holds 0 to {MAX_RECORDS} records, not {count}"
        ));
    }
    // Sequence numbers are stored as SQL integers: a spool that reached
    // the end of them could never move its cursor again.
    if batch
        .first_seq
        .checked_add(count as u64)
        .is_none_or(|end| end > MAX_SEQ)
    {
        return invalid(format!(
            "firstSeq {} leaves no room for the batch's {count} records: sequence numbers end at {MAX_SEQ}",
            batch.first_seq
        ));
    }
    if let Records::Logs(logs) = &batch.records {
        for (i, log) in logs.iter().enumerate() {
            if log.priority > MAX_PRIORITY {
                return invalid(format!(
                    "record {i}: priority {} is not 0 to {MAX_PRIORITY}",
                    log.priority
                ));
            }
            if log.message.len() > MAX_LOG_MESSAGE_BYTES {
                return invalid(format!(
                    "record {i}: message is {} bytes, more than the {MAX_LOG_MESSAGE_BYTES} allowed",
                    log.message.len()
                ));
            }
        }
    }
    if let Records::Metrics(metrics) = &batch.records {
        for (i, metric) in metrics.iter().enumerate() {
            if let MetricRecord::Custom(custom) = metric {
                custom
                    .check()
                    .map_err(|e| BatchError::Invalid(format!("record {i}: {e}")))?;
            }
        }
    }
    if batch.stream() == Stream::Metrics
        && (batch.dropped.by_priority.iter().any(|&n| n > 0)
            || batch.dropped.over_budget_by_priority.iter().any(|&n| n > 0))
    {
        return invalid(
            "dropped.byPriority and dropped.overBudgetByPriority are for logs only".into(),
        );
    }
    if batch.usage.len() > MAX_USAGE_FEATURES {
        return invalid(format!(
            "usage has {} features, more than the {MAX_USAGE_FEATURES} allowed",
            batch.usage.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(n: usize) -> TelemetryBatch {
        TelemetryBatch {
            spool_id: "spool-1".into(),
            first_seq: 41,
            records: Records::Logs(
                (0..n)
                    .map(|i| LogRecord {
                        at: "2026-12-02T04:00:00Z".parse().expect("time"),
                        priority: 6,
                        unit: "sshd.service".into(),
                        message: format!("line {i}"),
                        fields: BTreeMap::from([("pid".into(), "42".into())]),
                    })
                    .collect(),
            ),
            dropped: Dropped {
                total: 3,
                by_priority: [0, 0, 0, 0, 0, 0, 1, 2],
                over_budget: 4,
                over_budget_by_priority: [0, 0, 0, 0, 0, 1, 1, 2],
            },
            replay: true,
            usage: vec![FeatureBytes {
                feature: Feature::SpoolReplay,
                sent_bytes: 9,
                received_bytes: 0,
            }],
        }
    }

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::ZlibEncoder::new(vec![FORMAT_ZLIB_JSON], flate2::Compression::best());
        encoder.write_all(bytes).expect("compresses");
        encoder.finish().expect("compresses")
    }

    #[test]
    fn batches_round_trip_and_compress() {
        let batch = logs(500);
        let wire = encode(&batch);
        assert_eq!(wire[0], FORMAT_ZLIB_JSON);
        let json = serde_json::to_vec(&batch).expect("json");
        assert!(
            wire.len() * 5 < json.len(),
            "{} bytes compressed from {}",
            wire.len(),
            json.len()
        );
        assert_eq!(decode(&wire).expect("decodes"), batch);
        assert_eq!(batch.end_seq(), 541);

        let metrics = TelemetryBatch {
            spool_id: "s".into(),
            first_seq: 0,
            records: Records::Metrics(vec![MetricRecord::Custom(CustomMetric {
                name: "queue_depth".into(),
                value: 3.5,
                labels: BTreeMap::from([("queue".into(), "in".into())]),
                at: Utc::now(),
            })]),
            dropped: Dropped::default(),
            replay: false,
            usage: Vec::new(),
        };
        assert_eq!(decode(&encode(&metrics)).expect("decodes"), metrics);
    }

    #[test]
    fn the_wire_names_fields_as_the_contract_does() {
        let json = serde_json::to_value(logs(1)).expect("json");
        assert_eq!(json["stream"], "logs");
        assert_eq!(json["spoolId"], "spool-1");
        assert_eq!(json["firstSeq"], 41);
        assert_eq!(json["records"][0]["unit"], "sshd.service");
        assert_eq!(json["dropped"]["byPriority"][7], 2);
        assert_eq!(json["dropped"]["overBudgetByPriority"][5], 1);
        assert_eq!(json["replay"], true);
        assert_eq!(json["usage"][0]["feature"], "spoolReplay");
        assert_eq!(json["usage"][0]["sentBytes"], 9);
    }

    /// A batch of an agent before replay marks, usage reports and budget
    /// drops counted apart still reads, as live and with nothing over
    /// budget; one of a newer agent's, with features not known here, too.
    #[test]
    fn an_older_agent_s_batch_still_reads() {
        let batch: TelemetryBatch = serde_json::from_value(serde_json::json!({
            "stream": "logs", "spoolId": "s", "firstSeq": 0,
            "records": [{"at": "2026-12-02T04:00:00Z", "priority": 6, "message": "m"}],
            "dropped": {"total": 2, "byPriority": [0, 0, 0, 0, 0, 0, 0, 2]}
        }))
        .expect("reads");
        assert!(!batch.replay);
        assert!(batch.usage.is_empty());
        let newer: TelemetryBatch = serde_json::from_value(serde_json::json!({
            "stream": "logs", "spoolId": "s", "firstSeq": 0,
            "records": [{"at": "2026-12-02T04:00:00Z", "priority": 6, "message": "m"}],
            "usage": [{"feature": "tunnels", "sentBytes": 5},
                      {"feature": "logs", "sentBytes": 7}]
        }))
        .expect("a feature this side does not know is passed over");
        assert_eq!(newer.usage.len(), 1);
        assert_eq!(newer.usage[0].feature, Feature::Logs);
        assert_eq!((batch.dropped.total, batch.dropped.over_budget), (2, 0));
        let json = serde_json::to_value(TelemetryBatch {
            replay: false,
            usage: Vec::new(),
            ..batch
        })
        .expect("json");
        assert!(json.get("replay").is_none() && json.get("usage").is_none());
    }

    #[test]
    fn a_decompression_bomb_is_refused_without_inflating_it() {
        // 64 MiB of spaces inside a JSON string compress to about 64 KiB.
        let mut json = br#"{"stream":"logs","spoolId":"s","firstSeq":0,"records":[{"at":"2026-12-02T04:00:00Z","priority":6,"message":""#.to_vec();
        json.extend(std::iter::repeat_n(b' ', 64 * 1024 * 1024));
        json.extend(br#""}]}"#);
        let wire = zlib(&json);
        assert!(wire.len() < MAX_COMPRESSED_BYTES, "{}", wire.len());
        let err = decode(&wire).expect_err("bomb");
        assert_eq!(
            err,
            BatchError::Bomb {
                max: MAX_DECOMPRESSED_BYTES
            }
        );
        assert!(err.to_string().contains("decompression bomb"), "{err}");
    }

    #[test]
    fn oversized_and_overfull_batches_are_refused() {
        let mut big = vec![FORMAT_ZLIB_JSON];
        big.extend(
            (0..MAX_COMPRESSED_BYTES as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8),
        );
        assert!(matches!(decode(&big), Err(BatchError::TooLarge { .. })));
        let err = decode(&encode(&logs(MAX_RECORDS + 1))).expect_err("too many");
        assert!(err.to_string().contains("records"), "{err}");
    }

    #[test]
    fn a_batch_of_no_records_carries_only_the_counts() {
        let mut batch = logs(0);
        batch.dropped.total = 7;
        let decoded = decode(&encode(&batch)).expect("a batch of counts only");
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.records.stream(), Stream::Logs);
        assert_eq!(decoded.dropped.total, 7);
    }

    #[test]
    fn malformed_payloads_say_what_is_wrong() {
        assert_eq!(decode(b""), Err(BatchError::Empty));
        assert_eq!(decode(b"{\"x\":1}"), Err(BatchError::UnknownFormat(b'{')));
        assert!(matches!(
            decode(&[FORMAT_ZLIB_JSON, 1, 2, 3]),
            Err(BatchError::Compression(_))
        ));
        assert!(matches!(
            decode(&zlib(b"not json")),
            Err(BatchError::Json(_))
        ));
        let mut bad = logs(2);
        if let Records::Logs(records) = &mut bad.records {
            records[1].priority = 8;
        }
        let err = decode(&encode(&bad)).expect_err("priority");
        assert!(err.to_string().contains("record 1: priority 8"), "{err}");
        bad = logs(1);
        bad.first_seq = u64::MAX;
        assert!(matches!(decode(&encode(&bad)), Err(BatchError::Invalid(_))));
        // The last record may take the last number, not one beyond it.
        bad = logs(2);
        bad.first_seq = MAX_SEQ - 1;
        let err = decode(&encode(&bad)).expect_err("past the end");
        assert!(
            err.to_string().contains("firstSeq 9223372036854775806"),
            "{err}"
        );
        bad.first_seq = MAX_SEQ - 2;
        decode(&encode(&bad)).expect("the last numbers");
        bad = logs(1);
        bad.usage = vec![bad.usage[0]; MAX_USAGE_FEATURES + 1];
        assert!(
            decode(&encode(&bad))
                .expect_err("usage")
                .to_string()
                .contains("usage has 17 features")
        );
        bad = logs(1);
        bad.spool_id = String::new();
        assert!(
            decode(&encode(&bad))
                .expect_err("id")
                .to_string()
                .contains("spoolId")
        );
        // Cut short, the stream inflates to JSON that ends too early.
        let whole = encode(&logs(3));
        assert!(matches!(
            decode(&whole[..whole.len() / 2]),
            Err(BatchError::Json(_) | BatchError::Compression(_))
        ));
        // JSON with bytes that are not UTF-8 inside a string.
        let mut json = br#"{"stream":"logs","spoolId":"s","firstSeq":0,"records":[{"at":"2026-12-02T04:00:00Z","priority":6,"message":""#.to_vec();
        json.extend([0xff, 0xfe]);
        json.extend(br#""}]}"#);
        let err = decode(&zlib(&json)).expect_err("not UTF-8");
        assert!(
            matches!(&err, BatchError::Json(m) if m.contains("invalid unicode")),
            "{err}"
        );
    }

    fn custom(name: &str, labels: &[(&str, &str)]) -> TelemetryBatch {
        TelemetryBatch {
            spool_id: "m".into(),
            first_seq: 0,
            records: Records::Metrics(vec![MetricRecord::Custom(CustomMetric {
                name: name.into(),
                value: 1.0,
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                at: Utc::now(),
            })]),
            dropped: Dropped::default(),
            replay: false,
            usage: Vec::new(),
        }
    }

    /// Names and labels PostgreSQL cannot index or hold, or that would
    /// bloat every series row and fleet scrape, are refused by name.
    #[test]
    fn custom_metric_names_and_labels_are_bounded_and_free_of_nul() {
        let refused =
            |batch: TelemetryBatch| decode(&encode(&batch)).expect_err("refused").to_string();
        assert!(decode(&encode(&custom("tank_level", &[("site", "a")]))).is_ok());
        let long = "n".repeat(MAX_METRIC_NAME_BYTES + 1);
        assert!(
            refused(custom(&long, &[])).contains("record 0: name must be 1 to 128 bytes, not 129")
        );
        assert!(refused(custom("", &[])).contains("name must be"));
        assert!(refused(custom("tank\0level", &[])).contains("name holds a NUL"));
        let many: Vec<(String, String)> = (0..=MAX_METRIC_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(refused(custom("m", &many)).contains("33 labels"));
        let value = "v".repeat(MAX_LABEL_VALUE_BYTES + 1);
        assert!(refused(custom("m", &[("path", &value)])).contains("label \"path\""));
        let key = "k".repeat(MAX_LABEL_NAME_BYTES + 1);
        assert!(refused(custom("m", &[(&key, "v")])).contains("label names are at most"));
        assert!(refused(custom("m", &[("k", "a\0b")])).contains("label \"k\" holds a NUL"));
    }
}
