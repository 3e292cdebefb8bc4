use tether_proto::DeviceId;
use tether_proto::telemetry::DeviceUsage;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether devices usage edge-1
  tether devices usage edge-1 -o json";

/// Show what a device's telemetry streams sent: bytes on the wire, records
/// stored and sent twice, numbers never received, and what its spool
/// dropped when full.
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
    output::columns(
        [
            "STREAM",
            "WIRE",
            "BATCHES",
            "STORED",
            "DUPLICATES",
            "GAP",
            "DROPPED",
        ],
        usage
            .streams
            .iter()
            .map(|stream| {
                [
                    stream.stream.to_string(),
                    output::bytes(stream.wire_bytes),
                    stream.batches.to_string(),
                    stream.stored_records.to_string(),
                    stream.duplicate_records.to_string(),
                    stream.gap.to_string(),
                    stream.dropped.total.to_string(),
                ]
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use tether_proto::telemetry::{Stream, StreamUsage};

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
        };
        let text = table(&usage);
        let row: Vec<&str> = text
            .lines()
            .nth(1)
            .expect("a row")
            .split_whitespace()
            .collect();
        assert_eq!(row[0], "logs", "{text}");
        assert_eq!(
            &row[row.len() - 5..],
            ["3", "2500", "10", "1", "0"],
            "{text}"
        );
    }
}
