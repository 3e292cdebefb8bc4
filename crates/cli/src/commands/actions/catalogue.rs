use tether_proto::api::CatalogueEntry;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether actions catalogue

  # With each action's input schema
  tether actions catalogue -o yaml";

/// List the actions devices understand.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Catalogue {}

impl Catalogue {
    pub fn description(&self) -> String {
        "list the action catalogue".to_owned()
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let entries = ctx.client()?.catalogue().await?;
        output::print(ctx.output, &entries, |entries: &Vec<CatalogueEntry>| {
            table(entries)
        })?;
        Ok(Outcome::Success)
    }
}

fn table(entries: &[CatalogueEntry]) -> String {
    output::columns(
        ["NAME", "EVENT", "TITLE"],
        entries
            .iter()
            .map(|e| [e.name.clone(), e.event.clone(), e.title.clone()])
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_table_names_each_action_and_its_event() {
        let entry = CatalogueEntry {
            name: "get-node-ip".into(),
            title: "Get node IP".into(),
            description: "d".into(),
            event: "node-ip".into(),
            input_schema: serde_json::json!({}),
        };
        let text = table(&[entry]);
        let row = text.lines().nth(1).expect("one row");
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["get-node-ip", "node-ip", "Get", "node", "IP"]
        );
    }
}
