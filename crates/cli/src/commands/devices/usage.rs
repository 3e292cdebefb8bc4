use tether_proto::DeviceId;
use tether_proto::telemetry::DeviceUsage;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether devices usage edge-1
  tether devices usage edge-1 -o json";

/// Show what a device sent and was sent. Per telemetry stream: bytes on
/// the wire (REPLAY: of them, from its spool's backlog after a
/// reconnect), records stored and sent twice, numbers never received,
/// records its spool dropped when full and over the spec's budget. Per
/// feature: bytes device → tetherd (IN) and tetherd → device (OUT) as
/// tetherd counted them beside the device's own last report ("-": none);
/// and new metric series refused at the device's limit, if any.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Usage {
    /// The device's name.
    device: DeviceId,
}

impl Usage {
    pub fn description(&self) -> String {
        format!("show the usage of device {:?}", self.device.as_str())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let usage = ctx.client()?.device_usage(self.device.as_str()).await?;
        output::print(ctx.output, &usage, table)?;
        Ok(Outcome::Success)
    }
}

fn table(usage: &DeviceUsage) -> String {
    let streams = output::columns(
        [
            "STREAM",
            "WIRE",
            "REPLAY",
            "BATCHES",
            "STORED",
            "DUPLICATES",
            "GAP",
            "DROPPED-FULL",
            "DROPPED-BUDGET",
        ],
        usage
            .streams
            .iter()
            .map(|stream| {
                [
                    stream.stream.to_string(),
                    output::bytes(stream.wire_bytes),
                    output::bytes(stream.replay_bytes),
                    stream.batches.to_string(),
                    stream.stored_records.to_string(),
                    stream.duplicate_records.to_string(),
                    stream.gap.to_string(),
                    stream.dropped.total.to_string(),
                    stream.dropped.over_budget.to_string(),
                ]
            })
            .collect(),
    );
    let reported = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), output::bytes);
    let features = output::columns(
        ["FEATURE", "IN", "DEVICE-OUT", "OUT", "DEVICE-IN"],
        usage
            .features
            .iter()
            .map(|f| {
                [
                    f.feature.to_string(),
                    output::bytes(f.received_bytes),
                    reported(f.device_sent_bytes),
                    output::bytes(f.sent_bytes),
                    reported(f.device_received_bytes),
                ]
            })
            .collect(),
    );
    let as_of = usage.device_reported_at.map_or_else(
        || "the device has not reported its own counts yet".to_owned(),
        |at| format!("the device's counts as of {}", at.to_rfc3339()),
    );
    let refused = if usage.metric_series_refused > 0 {
        format!(
            "\n{} new metric series refused at the device's limit (ingest.max_series_per_device), {} points not stored",
            usage.metric_series_refused, usage.metric_points_refused
        )
    } else {
        String::new()
    };
    format!("{streams}\n\n{features}\n{as_of}{refused}")
}

#[cfg(test)]
mod tests {
    use tether_proto::telemetry::{Feature, FeatureUsage, Stream, StreamUsage};

    use super::*;

    #[test]
    fn the_usage_table_has_a_row_per_stream() {
        let usage = DeviceUsage {
            device: "edge-1".into(),
            streams: vec![StreamUsage {
                stream: Stream::Logs,
                wire_bytes: 2048,
                batches: 3,
                stored_records: 2500,
                duplicate_records: 10,
                gap: 1,
                ..StreamUsage::default()
            }],
            features: vec![FeatureUsage {
                feature: Feature::Actions,
                received_bytes: 10,
                sent_bytes: 20,
                device_sent_bytes: None,
                device_received_bytes: Some(20),
            }],
            device_reported_at: None,
            metric_series_refused: 2,
            metric_points_refused: 40,
        };
        let text = table(&usage);
        assert!(
            text.ends_with("2 new metric series refused at the device's limit (ingest.max_series_per_device), 40 points not stored"),
            "{text}"
        );
        let row: Vec<&str> = text
            .lines()
            .nth(1)
            .expect("a row")
            .split_whitespace()
            .collect();
        assert_eq!(row[0], "logs", "{text}");
        assert_eq!(
            &row[row.len() - 6..],
            ["3", "2500", "10", "1", "0", "0"],
            "{text}"
        );
        let feature = text
            .lines()
            .find(|line| line.starts_with("actions"))
            .expect("a feature row");
        assert_eq!(
            feature.split_whitespace().collect::<Vec<_>>(),
            ["actions", "10", "B", "-", "20", "B", "20", "B"],
            "{text}"
        );
        assert!(text.contains("not reported its own counts"), "{text}");
    }
}
