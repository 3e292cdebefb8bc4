use tether_proto::api::FleetSummary;
use tether_proto::labels::is_valid_key;

use crate::commands::{CommandError, Context, Outcome};
use crate::labels::Selector;
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether devices summary

  # Online and offline devices per site
  tether devices summary --by site

  # Per site, only gateways
  tether devices summary --by site -l role=gateway -o json";

/// Count devices online and offline, overall and per value of a label.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Summary {
    /// Count per value of this label too; devices without it are "(none)".
    #[arg(long, value_name = "KEY", value_parser = label_key)]
    by: Option<String>,
    /// Count only the devices that meet all of these terms (as for `devices list`).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    selector: Option<Selector>,
}

fn label_key(key: &str) -> Result<String, String> {
    if is_valid_key(key) {
        Ok(key.to_owned())
    } else {
        Err("a label key uses at most 63 letters, digits, '-', '_', '.' and '/', starting with a letter or digit".to_owned())
    }
}

impl Summary {
    pub fn description(&self) -> String {
        "summarize the fleet".to_owned()
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let selector = self.selector.as_ref().map(Selector::to_query);
        let summary = ctx
            .client()?
            .device_summary(self.by.as_deref(), selector.as_deref())
            .await?;
        output::print(ctx.output, &summary, table)?;
        Ok(Outcome::Success)
    }
}

fn table(summary: &FleetSummary) -> String {
    let first = summary
        .by
        .as_deref()
        .map_or_else(|| "DEVICES".to_owned(), str::to_uppercase);
    let mut rows: Vec<[String; 4]> = summary
        .groups
        .iter()
        .map(|group| {
            [
                group.value.clone().unwrap_or_else(|| "(none)".to_owned()),
                group.online.to_string(),
                group.offline.to_string(),
                group.total.to_string(),
            ]
        })
        .collect();
    rows.push([
        "(all)".to_owned(),
        summary.total.online.to_string(),
        summary.total.offline.to_string(),
        summary.total.total.to_string(),
    ]);
    output::columns([first.as_str(), "ONLINE", "OFFLINE", "TOTAL"], rows)
}

#[cfg(test)]
mod tests {
    use tether_proto::api::{PresenceCounts, SummaryGroup};

    use super::*;

    #[test]
    fn the_summary_table_has_a_row_per_value_and_the_total() {
        let summary = FleetSummary {
            by: Some("site".into()),
            total: PresenceCounts {
                online: 3,
                offline: 4,
                total: 7,
            },
            groups: vec![
                SummaryGroup {
                    value: Some("berlin".into()),
                    online: 3,
                    offline: 1,
                    total: 4,
                },
                SummaryGroup {
                    value: None,
                    online: 0,
                    offline: 3,
                    total: 3,
                },
            ],
        };
        let rows: Vec<Vec<String>> = table(&summary)
            .lines()
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
            .collect();
        assert_eq!(
            rows,
            [
                ["SITE", "ONLINE", "OFFLINE", "TOTAL"],
                ["berlin", "3", "1", "4"],
                ["(none)", "0", "3", "3"],
                ["(all)", "3", "4", "7"],
            ]
        );
    }
}
