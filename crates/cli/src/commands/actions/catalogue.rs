use tether_proto::DeviceId;
use tether_proto::api::CatalogueEntry;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether actions catalogue

  # With each action's input schema
  tether actions catalogue -o yaml

  # Only what edge-1 accepts (its default and enabled actions)
  tether actions catalogue --device edge-1";

/// List the actions devices understand.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Catalogue {
    /// Only the actions this device accepts (`tether devices actions`
    /// enables and disables them).
    #[arg(long, value_name = "NAME")]
    device: Option<DeviceId>,
}

impl Catalogue {
    pub fn description(&self) -> String {
        match &self.device {
            Some(device) => format!("list the actions device {:?} accepts", device.as_str()),
            None => "list the action catalogue".to_owned(),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let device = self.device.as_ref().map(DeviceId::as_str);
        let entries = ctx.client()?.catalogue(device).await?;
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
