use tether_proto::DeviceId;
use tether_proto::api::Action;

use crate::commands::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  tether actions list edge-1
  tether actions list edge-1 --limit 5 -o json";

/// List a device's actions, newest first.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct List {
    /// The device's name.
    device: DeviceId,
    /// At most this many actions.
    #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    limit: usize,
}

impl List {
    pub fn description(&self) -> String {
        format!("list the actions of device {:?}", self.device.as_str())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let actions = ctx
            .client()?
            .list_actions(self.device.as_str(), self.limit)
            .await?;
        if actions.is_empty() && ctx.output == OutputFormat::Table {
            eprintln!("No actions for device {:?} yet.", self.device.as_str());
            return Ok(Outcome::Success);
        }
        let now = chrono::Utc::now();
        output::print(ctx.output, &actions, |actions: &Vec<Action>| {
            super::table(now, actions)
        })?;
        Ok(Outcome::Success)
    }
}
