use tether_proto::api::Device;

use crate::client::PAGE_SIZE;
use crate::commands::{CommandError, Context, Outcome};
use crate::labels::Selector;
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  tether devices list

  # Only devices that meet all of these terms
  tether devices list -l site=berlin,role=gateway
  tether devices list -l 'site in (berlin,paris),tier!=edge,!beta'

  # The first 100 by name
  tether devices list --limit 100

  tether devices list -o json";

/// List devices with their presence, enrollment and labels.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct List {
    /// Only devices that meet all of these terms: KEY=VALUE, KEY!=VALUE,
    /// 'KEY in (V1,V2)', 'KEY notin (V1,V2)', KEY, !KEY, separated by commas.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    selector: Option<Selector>,
    /// At most this many devices (all by default).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    limit: Option<usize>,
    /// Read the listing from tetherd this many devices at a time.
    #[arg(long, default_value_t = PAGE_SIZE, value_parser = clap::value_parser!(u32).range(1..=5000))]
    chunk_size: u32,
}

impl List {
    pub fn description(&self) -> String {
        "list devices".to_owned()
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        let query = self.selector.as_ref().map(Selector::to_query);
        let devices = client
            .list_devices(query.as_deref(), self.limit, self.chunk_size)
            .await?;
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
