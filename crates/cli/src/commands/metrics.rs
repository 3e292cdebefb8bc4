//! `tether metrics DEVICE`: the host metrics a device sampled.

use chrono::{DateTime, Utc};
use tether_proto::DeviceId;
use tether_proto::metrics::HostMetrics;

use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  # Devices sample only while run-stats is on
  tether actions run edge-1 run-stats --input '{\"interval\":5}' --wait
  tether metrics edge-1
  tether metrics edge-1 --limit 1 -o json";

/// Show a device's latest host metrics: CPU, memory, disk and network.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Metrics {
    /// The device's name.
    device: DeviceId,
    /// At most this many samples, newest first.
    #[arg(long, default_value_t = 10, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    limit: usize,
}

impl Metrics {
    pub fn description(&self) -> String {
        format!("get the metrics of device {:?}", self.device.as_str())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let samples = ctx
            .client()?
            .metrics(self.device.as_str(), self.limit)
            .await?;
        if samples.is_empty() && ctx.output == OutputFormat::Table {
            eprintln!(
                "No metrics from device {name:?} yet; start sampling with \
                 `tether actions run {name} run-stats --input '{{\"interval\":5}}' --wait`.",
                name = self.device.as_str()
            );
            return Ok(Outcome::Success);
        }
        let now = Utc::now();
        output::print(ctx.output, &samples, |samples: &Vec<HostMetrics>| {
            table(now, samples)
        })?;
        Ok(Outcome::Success)
    }
}

fn table(now: DateTime<Utc>, samples: &[HostMetrics]) -> String {
    output::columns(
        ["AGE", "CPU", "MEMORY", "DISK", "NET RX", "NET TX"],
        samples
            .iter()
            .map(|m| {
                [
                    output::age(now, m.sampled_at),
                    format!("{:.1}%", m.cpu_percent),
                    used_of(m.memory_used_bytes, m.memory_total_bytes),
                    used_of(m.disk_used_bytes, m.disk_total_bytes),
                    output::bytes(m.network_rx_bytes),
                    output::bytes(m.network_tx_bytes),
                ]
            })
            .collect(),
    )
}

/// `1.5 GiB/8.0 GiB (19%)`, without the share when the total is unknown.
fn used_of(used: u64, total: u64) -> String {
    if total == 0 {
        return output::bytes(used);
    }
    // Display only: a rounded percentage is all a person needs.
    let percent = (used as f64 / total as f64 * 100.0).round();
    format!(
        "{}/{} ({percent}%)",
        output::bytes(used),
        output::bytes(total)
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn usage_shows_used_total_and_share() {
        assert_eq!(
            used_of(2 * 1024 * 1024 * 1024, 8 * 1024 * 1024 * 1024),
            "2.0 GiB/8.0 GiB (25%)"
        );
        assert_eq!(used_of(512, 0), "512 B");
    }

    #[test]
    fn the_metrics_table_is_human_readable() {
        let sampled_at = DateTime::from_timestamp(1_000_000, 0).expect("valid");
        let sample = HostMetrics {
            sampled_at,
            cpu_percent: 12.345,
            memory_used_bytes: 1024 * 1024 * 1024,
            memory_total_bytes: 4 * 1024 * 1024 * 1024,
            disk_used_bytes: 10 * 1024 * 1024 * 1024,
            disk_total_bytes: 40 * 1024 * 1024 * 1024,
            network_rx_bytes: 1536,
            network_tx_bytes: 100,
        };
        let text = table(sampled_at + TimeDelta::seconds(3), &[sample]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("AGE"), "{text}");
        assert_eq!(
            lines[1]
                .split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>(),
            [
                "3s",
                "12.3%",
                "1.0 GiB/4.0 GiB (25%)",
                "10.0 GiB/40.0 GiB (25%)",
                "1.5 KiB",
                "100 B"
            ]
        );
    }
}
