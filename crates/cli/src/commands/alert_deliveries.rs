//! `tether alerts deliveries …`: alerts on their way to webhooks and
//! Alertmanagers (issue 18), the dead letters among them, and retrying one
//! once its receiver is fixed.

use tether_proto::alert_deliveries::AlertDelivery;

use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat, printable};

const EXAMPLES: &str = "\
Examples:
  tether alerts deliveries list                  # dead letters: given up on
  tether alerts deliveries list --state pending  # waiting for their next attempt
  tether alerts deliveries retry 0193a1f2-…      # once the receiver is fixed";

/// Deliveries of alerts to the receivers in `[alerts]`.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum AlertDeliveries {
    /// List deliveries, with why the last attempt failed.
    #[command(
        after_long_help = "Examples:\n  tether alerts deliveries list\n  tether alerts deliveries list --state pending -o json"
    )]
    List {
        /// dead, pending or delivered.
        #[arg(long, default_value = "dead", value_parser = ["dead", "pending", "delivered"])]
        state: String,
    },
    /// Try a dead delivery again at once.
    #[command(after_long_help = "Examples:\n  tether alerts deliveries retry 0193a1f2-…")]
    Retry { id: String },
}

impl AlertDeliveries {
    pub fn description(&self) -> String {
        match self {
            AlertDeliveries::List { state } => format!("list {state} alert deliveries"),
            AlertDeliveries::Retry { id } => format!("retry alert delivery {id}"),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        match self {
            AlertDeliveries::List { state } => {
                let deliveries = client.list_alert_deliveries(&state).await?;
                if deliveries.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!("No {state} deliveries.");
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &deliveries, |d: &Vec<AlertDelivery>| table(d))?;
            }
            AlertDeliveries::Retry { id } => {
                let delivery = client.retry_alert_delivery(&id).await?;
                output::print(ctx.output, &delivery, |d: &AlertDelivery| {
                    format!(
                        "delivery {} of alert {} to {} is due again",
                        d.id, d.alert_id, d.receiver
                    )
                })?;
            }
        }
        Ok(Outcome::Success)
    }
}

fn table(deliveries: &[AlertDelivery]) -> String {
    output::columns(
        [
            "ID",
            "RECEIVER",
            "ALERT",
            "EVENT",
            "ATTEMPTS",
            "CREATED",
            "LAST ERROR",
        ],
        deliveries
            .iter()
            .map(|d| {
                [
                    d.id.clone(),
                    d.receiver.clone(),
                    format!("{} ({} on {})", d.alert_id, d.rule, d.device),
                    d.event.as_str().to_owned(),
                    d.attempts.to_string(),
                    output::timestamp(d.created_at),
                    printable(d.last_error.as_deref().unwrap_or("")).into_owned(),
                ]
            })
            .collect(),
    )
}
