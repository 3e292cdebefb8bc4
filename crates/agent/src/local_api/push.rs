//! `POST /v1/logs` and `/v1/metrics`: JSON lines from local applications
//! into the spool, taken whole or refused whole (400 naming the line).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tether_proto::telemetry::{CustomMetric, LogRecord, MetricRecord};

use super::Reply;
use crate::spool::{Record, Spools};

/// Priority of a log line that names none: informational.
pub(super) const DEFAULT_PRIORITY: u8 = 6;

/// Log lines, one JSON object per line.
pub(super) fn logs(body: &[u8], spools: &Spools, now: DateTime<Utc>) -> Reply {
    append(lines(body, |line| log(line, now)), spools)
}

/// Custom metric samples, one JSON object per line.
pub(super) fn metrics(body: &[u8], spools: &Spools, now: DateTime<Utc>) -> Reply {
    append(lines(body, |line| metric(line, now)), spools)
}

fn append(records: Result<Vec<Record>, String>, spools: &Spools) -> Reply {
    let records = match records {
        Ok(records) => records,
        Err(message) => return Reply::error(400, message),
    };
    let accepted = records.len();
    for (i, record) in records.into_iter().enumerate() {
        if let Err(error) = spools.append(record) {
            return Reply::error(400, format!("line {}: {error}", i + 1));
        }
    }
    Reply::ok(serde_json::json!({ "accepted": accepted }))
}

/// Every non-empty line of `body` as a record, or the first bad line named.
fn lines(
    body: &[u8],
    parse: impl Fn(&[u8]) -> Result<Record, String>,
) -> Result<Vec<Record>, String> {
    body.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| parse(line).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLine {
    message: String,
    #[serde(default)]
    priority: Option<u8>,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    at: Option<DateTime<Utc>>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

fn log(line: &[u8], now: DateTime<Utc>) -> Result<Record, String> {
    let line: LogLine = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let priority = line.priority.unwrap_or(DEFAULT_PRIORITY);
    if priority > 7 {
        return Err(format!(
            "priority {priority} is not 0 (emergency) to 7 (debug)"
        ));
    }
    Ok(Record::Log(LogRecord {
        at: line.at.unwrap_or(now),
        priority,
        unit: line.unit,
        message: line.message,
        fields: line.fields,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricLine {
    name: String,
    value: f64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    at: Option<DateTime<Utc>>,
}

fn metric(line: &[u8], now: DateTime<Utc>) -> Result<Record, String> {
    let line: MetricLine = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if !line.value.is_finite() {
        return Err("value must be a finite number".into());
    }
    let metric = CustomMetric {
        name: line.name,
        value: line.value,
        labels: line.labels,
        at: line.at.unwrap_or(now),
    };
    // What tetherd would refuse is refused here, to the application,
    // rather than in a batch with the records beside it.
    metric.check()?;
    Ok(Record::Metric(MetricRecord::Custom(metric)))
}
