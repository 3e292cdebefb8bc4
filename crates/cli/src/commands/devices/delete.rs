use tether_proto::DeviceId;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether devices delete edge-1";

/// Delete a device; its agent can no longer connect.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Delete {
    /// The device's name.
    name: DeviceId,
}

impl Delete {
    pub fn description(&self) -> String {
        format!("delete device {:?}", self.name.as_str())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        ctx.client()?.delete_device(self.name.as_str()).await?;
        output::emit(&format!("device/{} deleted", self.name))?;
        Ok(Outcome::Success)
    }
}
