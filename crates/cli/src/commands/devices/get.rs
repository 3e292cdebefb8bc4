use tether_proto::DeviceId;
use tether_proto::api::Device;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether devices get edge-1
  tether devices get edge-1 -o yaml";

/// Show one device.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Get {
    /// The device's name.
    name: DeviceId,
}

impl Get {
    pub fn description(&self) -> String {
        format!("get device {:?}", self.name.as_str())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let device = ctx.client()?.get_device(self.name.as_str()).await?;
        let now = chrono::Utc::now();
        output::print(ctx.output, &device, |device: &Device| {
            super::table(now, std::slice::from_ref(device))
        })?;
        Ok(Outcome::Success)
    }
}
