//! `tether alerts …`: what the fleet monitor noticed (issue 18).

use tether_proto::alerts::{Alert, AlertState};

use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat, printable};

const EXAMPLES: &str = "\
Examples:
  tether alerts list                       # firing and acknowledged
  tether alerts list --state resolved --device line3-gateway
  tether alerts list --rule device_silent -o json
  tether alerts get 42
  tether alerts ack 42                     # taken on; it resolves when its condition ends";

/// Alerts raised by the fleet monitor and by alert rules.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum Alerts {
    /// List alerts, newest first: by default those not yet resolved.
    #[command(
        after_long_help = "Examples:\n  tether alerts list\n  tether alerts list --state all --limit 50\n  tether alerts list --device line3-gateway --rule config_drift"
    )]
    List {
        /// active (firing or acknowledged), firing, acknowledged, resolved or all.
        #[arg(long, default_value = "active")]
        state: String,
        /// Only this device's alerts.
        #[arg(long)]
        device: Option<String>,
        /// Only this rule's alerts (device_silent, config_drift, or a rule's name).
        #[arg(long)]
        rule: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Show one alert with its labels and history.
    #[command(
        after_long_help = "Examples:\n  tether alerts get 42\n  tether alerts get 42 -o yaml"
    )]
    Get { id: u64 },
    /// Acknowledge a firing alert: it stays listed until its condition ends.
    #[command(after_long_help = "Examples:\n  tether alerts ack 42")]
    Ack { id: u64 },
    /// Alert rules: a metric threshold or a reported status, held for a
    /// while, raises an alert.
    #[command(subcommand)]
    Rules(super::alert_rules::AlertRules),
    /// Alerts on their way to webhooks and Alertmanagers; dead letters.
    #[command(subcommand)]
    Deliveries(super::alert_deliveries::AlertDeliveries),
}

impl Alerts {
    pub fn description(&self) -> String {
        match self {
            Alerts::List { .. } => "list alerts".to_owned(),
            Alerts::Get { id } => format!("show alert {id}"),
            Alerts::Ack { id } => format!("acknowledge alert {id}"),
            Alerts::Rules(rules) => rules.description(),
            Alerts::Deliveries(deliveries) => deliveries.description(),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        match self {
            Alerts::Rules(rules) => return rules.run(ctx).await,
            Alerts::Deliveries(deliveries) => return deliveries.run(ctx).await,
            Alerts::List {
                state,
                device,
                rule,
                limit,
            } => {
                let query: Vec<(&str, String)> = [
                    ("state", Some(state.clone())),
                    ("device", device),
                    ("rule", rule),
                ]
                .into_iter()
                .filter_map(|(key, value)| value.map(|value| (key, value)))
                .collect();
                let alerts = client
                    .list_alerts(&query, usize::try_from(limit).unwrap_or(usize::MAX))
                    .await?;
                if alerts.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!("No {state} alerts.");
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &alerts, |alerts: &Vec<Alert>| table(alerts))?;
            }
            Alerts::Get { id } => {
                let alert = client.get_alert(id).await?;
                output::print(ctx.output, &alert, describe)?;
            }
            Alerts::Ack { id } => {
                let alert = client.acknowledge_alert(id).await?;
                output::print(ctx.output, &alert, |alert: &Alert| {
                    format!(
                        "alert {} ({} on {}) acknowledged by {}",
                        alert.id,
                        alert.rule,
                        alert.device,
                        alert.acknowledged_by.as_deref().unwrap_or("?")
                    )
                })?;
            }
        }
        Ok(Outcome::Success)
    }
}

fn table(alerts: &[Alert]) -> String {
    output::columns(
        [
            "ID", "STATE", "SEVERITY", "RULE", "DEVICE", "SINCE", "SUMMARY",
        ],
        alerts
            .iter()
            .map(|alert| {
                [
                    alert.id.to_string(),
                    alert.state.as_str().to_owned(),
                    alert.severity.as_str().to_owned(),
                    alert.rule.clone(),
                    alert.device.clone(),
                    output::timestamp(alert.started_at),
                    printable(&alert.summary).into_owned(),
                ]
            })
            .collect(),
    )
}

fn describe(alert: &Alert) -> String {
    let mut lines = vec![
        format!("ID:        {}", alert.id),
        format!("Rule:      {}", alert.rule),
        format!("Device:    {}", alert.device),
        format!("Severity:  {}", alert.severity.as_str()),
        format!("State:     {}", alert.state.as_str()),
        format!("Summary:   {}", printable(&alert.summary)),
        format!("Started:   {}", output::timestamp(alert.started_at)),
    ];
    if let Some(at) = alert.acknowledged_at {
        lines.push(format!(
            "Acked:     {} by {}",
            output::timestamp(at),
            alert.acknowledged_by.as_deref().unwrap_or("?")
        ));
    }
    if alert.state == AlertState::Resolved
        && let Some(at) = alert.resolved_at
    {
        lines.push(format!("Resolved:  {}", output::timestamp(at)));
    }
    if !alert.labels.is_empty() {
        let labels: Vec<String> = alert
            .labels
            .iter()
            .map(|(key, value)| format!("{}={}", printable(key), printable(value)))
            .collect();
        lines.push(format!("Labels:    {}", labels.join(",")));
    }
    lines.join("\n")
}
