//! `tether events DEVICE`: what a device reported.

use chrono::{DateTime, Utc};
use tether_proto::DeviceId;
use tether_proto::api::Event;

use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  tether events edge-1
  tether events edge-1 --limit 100 -o json";

/// List a device's events (action answers and presence changes), newest first.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Events {
    /// The device's name.
    device: DeviceId,
    /// At most this many events.
    #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    limit: usize,
}

impl Events {
    pub fn description(&self) -> String {
        format!("list the events of device {:?}", self.device.as_str())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let events = ctx
            .client()?
            .events(self.device.as_str(), self.limit)
            .await?;
        if events.is_empty() && ctx.output == OutputFormat::Table {
            eprintln!("No events from device {:?} yet.", self.device.as_str());
            return Ok(Outcome::Success);
        }
        let now = Utc::now();
        output::print(ctx.output, &events, |events: &Vec<Event>| {
            table(now, events)
        })?;
        Ok(Outcome::Success)
    }
}

fn table(now: DateTime<Utc>, events: &[Event]) -> String {
    output::columns(
        ["AGE", "EVENT", "STATUS", "MESSAGE", "ACTION ID"],
        events
            .iter()
            .map(|e| {
                [
                    output::age(now, e.received_at),
                    e.event.clone(),
                    e.status_code.to_string(),
                    e.status_message.clone(),
                    e.correlation_id
                        .clone()
                        .unwrap_or_else(|| "<none>".to_owned()),
                ]
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn the_event_table_shows_status_and_action() {
        let received_at = DateTime::from_timestamp(1_000_000, 0).expect("valid");
        let event = Event {
            id: "e1".into(),
            device: "local".into(),
            correlation_id: Some("c1".into()),
            event: "node-ip".into(),
            status_code: 200,
            status_message: "OK".into(),
            response: serde_json::json!({}),
            received_at,
        };
        let text = table(received_at + TimeDelta::seconds(7), &[event]);
        let row: Vec<&str> = text
            .lines()
            .nth(1)
            .expect("one row")
            .split_whitespace()
            .collect();
        assert_eq!(row, ["7s", "node-ip", "200", "OK", "c1"]);
    }
}
