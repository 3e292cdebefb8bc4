//! `tether alerts rules …`: operator-defined alert rules (issue 18): a
//! metric threshold or a reported status, held for a while by a device a
//! label selector picks, raises an alert.

use std::path::PathBuf;

use tether_proto::alert_rules::{
    AlertRule, AlertRuleSpec, Comparison, Condition, CreateAlertRule, MetricCondition,
    StatusCondition,
};
use tether_proto::alerts::Severity;

use super::{CommandError, Context, Outcome, read_document};
use crate::labels::{Label, to_map};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  # A disk more than 90 % full for 10 minutes on a device of site a
  tether alerts rules create disk-full --metric disk_used_percent --above 90 \\
      --for 10m -l site=a --severity critical

  # Only the root filesystem, with a summary of its own
  tether alerts rules create root-full --metric disk_used_percent \\
      --series-label mount=/ --above 95 --summary '{{ device }}: / at {{ value }} %'

  # A supervised process (a deployment) that failed, at once
  tether alerts rules create process-failed --status deployment-failed

  # A condition devices report: a clock off by more than spec.time allows
  tether alerts rules create clock-skewed --condition ClockSkewed --for 10m

  # The whole spec from a file (YAML or JSON: selector, severity, for,
  # summary, labels, condition)
  tether alerts rules create tank-high -f tank-high.yaml";

/// Alert rules: when tetherd raises an alert.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum AlertRules {
    /// Create a rule.
    #[command(after_long_help = EXAMPLES)]
    Create(Box<Create>),
    /// Replace a rule's spec.
    #[command(
        after_long_help = "Examples:\n  tether alerts rules update disk-full -f disk-full.yaml"
    )]
    Update {
        name: String,
        /// The spec, YAML or JSON (`-`: stdin).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List the rules.
    #[command(
        after_long_help = "Examples:\n  tether alerts rules list\n  tether alerts rules list -o yaml"
    )]
    List,
    /// Show a rule.
    #[command(after_long_help = "Examples:\n  tether alerts rules get disk-full")]
    Get { name: String },
    /// Delete a rule; its alerts are resolved.
    #[command(after_long_help = "Examples:\n  tether alerts rules delete disk-full")]
    Delete { name: String },
}

/// A reported status a rule can watch.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Status {
    /// A deployment of the device's spec failed (a supervised process, a chart).
    DeploymentFailed,
    /// The device could not apply a section of its spec.
    SpecErrors,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SeverityArg {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, clap::Args)]
pub struct Create {
    /// Lowercase letters, digits and '-'.
    name: String,
    /// The whole spec, YAML or JSON (`-`: stdin); instead of the flags below.
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with_all = [
        "metric", "status", "condition", "selector", "severity", "hold_for", "summary", "alert_labels",
    ])]
    file: Option<PathBuf>,
    /// A metric series of the devices, e.g. disk_used_percent, cpu_percent,
    /// or a custom metric's name.
    #[arg(long, required_unless_present_any = ["file", "status", "condition"], conflicts_with_all = ["status", "condition"], requires = "threshold")]
    metric: Option<String>,
    /// Only the metric's series with this label, KEY=VALUE; repeat for more.
    #[arg(long = "series-label", value_name = "KEY=VALUE", requires = "metric")]
    series_labels: Vec<Label>,
    /// Fires when the value is above this …
    #[arg(
        long,
        group = "threshold",
        requires = "metric",
        conflicts_with = "status",
        allow_negative_numbers = true
    )]
    above: Option<f64>,
    /// … at least this …
    #[arg(
        long,
        group = "threshold",
        requires = "metric",
        conflicts_with = "status",
        allow_negative_numbers = true
    )]
    at_least: Option<f64>,
    /// … below this …
    #[arg(
        long,
        group = "threshold",
        requires = "metric",
        conflicts_with = "status",
        allow_negative_numbers = true
    )]
    below: Option<f64>,
    /// … or at most this.
    #[arg(
        long,
        group = "threshold",
        requires = "metric",
        conflicts_with = "status",
        allow_negative_numbers = true
    )]
    at_most: Option<f64>,
    /// A reported status instead of a metric.
    #[arg(long, value_enum, conflicts_with = "condition")]
    status: Option<Status>,
    /// A condition type devices report (their status's `conditions`),
    /// e.g. ClockSkewed, instead of a metric.
    #[arg(long, value_name = "TYPE")]
    condition: Option<String>,
    /// The devices it watches (key=value,key!=value,…); every device if absent.
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
    #[arg(long, value_enum, default_value = "warning")]
    severity: SeverityArg,
    /// How long the condition must hold before the alert fires: 0s, 90s, 10m, 2h.
    #[arg(long = "for", value_name = "DURATION", default_value = "0s")]
    hold_for: String,
    /// The alert's summary, a template seeing device, value, threshold,
    /// labels, rule and detail.
    #[arg(long)]
    summary: Option<String>,
    /// A label added to the rule's alerts, KEY=VALUE; repeat for more.
    #[arg(long = "alert-label", value_name = "KEY=VALUE")]
    alert_labels: Vec<Label>,
}

impl Create {
    fn spec(&self) -> Result<AlertRuleSpec, CommandError> {
        if let Some(file) = &self.file {
            return read_document(file, "an alert rule spec");
        }
        let condition = match (&self.metric, self.status) {
            (Some(name), _) => {
                let (op, value) = [
                    (Comparison::Above, self.above),
                    (Comparison::AtLeast, self.at_least),
                    (Comparison::Below, self.below),
                    (Comparison::AtMost, self.at_most),
                ]
                .into_iter()
                .find_map(|(op, value)| Some((op, value?)))
                .ok_or_else(|| {
                    CommandError::Usage(
                        "a metric rule needs a threshold: --above, --at-least, --below or --at-most"
                            .to_owned(),
                    )
                })?;
                Condition::Metric(MetricCondition {
                    name: name.clone(),
                    labels: to_map(&self.series_labels),
                    op,
                    value,
                })
            }
            (None, Some(status)) => Condition::Status(match status {
                Status::DeploymentFailed => StatusCondition::DeploymentFailed,
                Status::SpecErrors => StatusCondition::SpecErrors,
            }),
            (None, None) => match &self.condition {
                Some(kind) => Condition::Status(StatusCondition::Condition(kind.clone())),
                None => {
                    return Err(CommandError::Usage(
                        "say what the rule watches: --metric NAME with a threshold, --status, --condition TYPE, or -f FILE"
                            .to_owned(),
                    ));
                }
            },
        };
        Ok(AlertRuleSpec {
            selector: self.selector.clone().unwrap_or_default(),
            severity: match self.severity {
                SeverityArg::Info => Severity::Info,
                SeverityArg::Warning => Severity::Warning,
                SeverityArg::Critical => Severity::Critical,
            },
            hold_for: self.hold_for.clone(),
            summary: self.summary.clone(),
            labels: to_map(&self.alert_labels),
            condition,
        })
    }
}

impl Create {
    async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let spec = self.spec()?;
        let rule = ctx
            .client()?
            .create_alert_rule(&CreateAlertRule {
                name: self.name,
                spec,
            })
            .await?;
        output::print(ctx.output, &rule, |r: &AlertRule| {
            format!("alert-rule/{} created\n\n{}", r.name, describe(r))
        })?;
        Ok(Outcome::Success)
    }
}

impl AlertRules {
    pub fn description(&self) -> String {
        match self {
            AlertRules::Create(create) => format!("create alert rule {:?}", create.name),
            AlertRules::Update { name, .. } => format!("update alert rule {name:?}"),
            AlertRules::List => "list alert rules".to_owned(),
            AlertRules::Get { name } => format!("show alert rule {name:?}"),
            AlertRules::Delete { name } => format!("delete alert rule {name:?}"),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        match self {
            AlertRules::Create(create) => return create.run(ctx).await,
            AlertRules::Update { name, file } => {
                let spec = read_document(&file, "an alert rule spec")?;
                let rule = ctx.client()?.update_alert_rule(&name, &spec).await?;
                output::print(ctx.output, &rule, |r: &AlertRule| {
                    format!("alert-rule/{} updated\n\n{}", r.name, describe(r))
                })?;
            }
            AlertRules::List => {
                let rules = ctx.client()?.list_alert_rules().await?;
                if rules.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!(
                        "No alert rules; create one with `tether alerts rules create NAME --metric disk_used_percent --above 90 --for 10m`."
                    );
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &rules, |r: &Vec<AlertRule>| table(r))?;
            }
            AlertRules::Get { name } => {
                let rule = ctx.client()?.get_alert_rule(&name).await?;
                output::print(ctx.output, &rule, describe)?;
            }
            AlertRules::Delete { name } => {
                ctx.client()?.delete_alert_rule(&name).await?;
                output::emit(&format!("alert-rule/{name} deleted; its alerts resolved"))?;
            }
        }
        Ok(Outcome::Success)
    }
}

/// The condition in one line: `disk_used_percent{mount="/"} > 90`,
/// `status deploymentFailed`.
fn condition(spec: &AlertRuleSpec) -> String {
    match &spec.condition {
        Condition::Metric(metric) => {
            let labels: Vec<String> = metric
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            format!("{}{labels} {} {}", metric.name, metric.op, metric.value)
        }
        Condition::Status(StatusCondition::Condition(kind)) => format!("reported condition {kind}"),
        Condition::Status(status) => format!("status {}", status.as_str()),
    }
}

fn describe(rule: &AlertRule) -> String {
    let spec = &rule.spec;
    let or_none = |text: &str| {
        if text.is_empty() {
            "-".to_owned()
        } else {
            output::printable(text).into_owned()
        }
    };
    output::fields(&[
        ("Name", rule.name.clone()),
        ("Condition", condition(spec)),
        ("For", spec.hold_for.clone()),
        ("Selector", or_none(&spec.selector)),
        ("Severity", spec.severity.as_str().to_owned()),
        ("Summary", or_none(spec.summary.as_deref().unwrap_or(""))),
        ("Labels", or_none(&output::labels(&spec.labels))),
        ("Updated", output::timestamp(rule.updated_at)),
    ])
}

fn table(rules: &[AlertRule]) -> String {
    output::columns(
        [
            "NAME",
            "CONDITION",
            "FOR",
            "SELECTOR",
            "SEVERITY",
            "UPDATED",
        ],
        rules
            .iter()
            .map(|r| {
                [
                    r.name.clone(),
                    condition(&r.spec),
                    r.spec.hold_for.clone(),
                    if r.spec.selector.is_empty() {
                        "(all)".to_owned()
                    } else {
                        r.spec.selector.clone()
                    },
                    r.spec.severity.as_str().to_owned(),
                    output::timestamp(r.updated_at),
                ]
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::Cli;
    use crate::commands::{Command, alerts::Alerts};

    fn spec(args: &[&str]) -> AlertRuleSpec {
        let cli = Cli::try_parse_from(["tether", "alerts", "rules", "create"].iter().chain(args))
            .expect("valid flags");
        let Command::Alerts(Alerts::Rules(AlertRules::Create(create))) = cli.command else {
            panic!("not a create: {:?}", cli.command);
        };
        create.spec().expect("a spec")
    }

    #[test]
    fn flags_make_a_metric_rule() {
        let spec = spec(&[
            "disk-full",
            "--metric",
            "disk_used_percent",
            "--series-label",
            "mount=/",
            "--above",
            "90",
            "--for",
            "10m",
            "-l",
            "site=a",
            "--severity",
            "critical",
            "--alert-label",
            "team=ops",
        ]);
        assert_eq!(spec.selector, "site=a");
        assert_eq!(spec.severity, Severity::Critical);
        assert_eq!(spec.hold_for, "10m");
        assert_eq!(spec.labels.get("team").map(String::as_str), Some("ops"));
        assert_eq!(
            spec.condition,
            Condition::Metric(MetricCondition {
                name: "disk_used_percent".into(),
                labels: [("mount".to_owned(), "/".to_owned())].into(),
                op: Comparison::Above,
                value: 90.0,
            })
        );
        tether_proto::alert_rules::check("disk-full", &spec).expect("a valid rule");
    }

    #[test]
    fn flags_make_a_status_rule_and_refuse_a_threshold_without_a_metric() {
        let clock = spec(&["clock", "--condition", "ClockSkewed"]);
        assert_eq!(
            clock.condition,
            Condition::Status(StatusCondition::Condition("ClockSkewed".into()))
        );
        let spec = spec(&["failed", "--status", "deployment-failed"]);
        assert_eq!(
            spec.condition,
            Condition::Status(StatusCondition::DeploymentFailed)
        );
        assert_eq!(spec.hold_for, "0s");
        for args in [
            &["x", "--condition", "ClockSkewed", "--status", "spec-errors"][..],
            &[
                "x",
                "--condition",
                "ClockSkewed",
                "--metric",
                "load1",
                "--above",
                "1",
            ],
            &["x", "--metric", "load1"],
            &["x", "--status", "spec-errors", "--below", "1"],
            &["x", "--above", "1"],
            &["x"],
        ] {
            let parsed =
                Cli::try_parse_from(["tether", "alerts", "rules", "create"].iter().chain(args));
            assert!(parsed.is_err(), "{args:?} accepted");
        }
    }
}
