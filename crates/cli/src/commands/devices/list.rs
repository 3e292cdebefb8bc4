use tether_proto::api::Device;

use crate::commands::{CommandError, Context, Outcome};
use crate::labels::Selector;
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  tether devices list

  # Only devices that carry all of these labels
  tether devices list -l site=berlin,role=gateway

  tether devices list -o json";

/// List devices with their presence, enrollment and labels.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct List {
    /// Only devices with all of these labels, KEY=VALUE[,KEY=VALUE…].
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    selector: Option<Selector>,
}

impl List {
    pub fn description(&self) -> String {
        "list devices".to_owned()
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        let query = self.selector.as_ref().map(Selector::to_query);
        let devices = client.list_devices(query.as_deref()).await?;
        if devices.is_empty() && ctx.output == OutputFormat::Table {
            eprintln!("No devices found.");
            return Ok(Outcome::Success);
        }
        let now = chrono::Utc::now();
        output::print(ctx.output, &devices, |devices: &Vec<Device>| {
            super::table(now, devices)
        })?;
        Ok(Outcome::Success)
    }
}
