use tether_proto::DeviceId;
use tether_proto::api::{CreateDevice, DeviceCreated};

use crate::commands::{CommandError, Context, Outcome};
use crate::labels::{self, Label};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  # Register a device and get the command line that enrolls its agent
  tether devices add edge-1

  # With labels
  tether devices add edge-1 -l site=berlin -l role=gateway";

/// Register a device and print its one-time enrollment token and agent command.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Add {
    /// Device name: lowercase letters, digits and '-'.
    name: DeviceId,
    /// A label to set, KEY=VALUE; repeat for more.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    labels: Vec<Label>,
}

impl Add {
    pub fn description(&self) -> String {
        format!("add device {:?}", self.name.as_str())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        let created = client
            .create_device(&CreateDevice {
                name: self.name.to_string(),
                labels: labels::to_map(&self.labels),
            })
            .await?;
        output::print(ctx.output, &created, |created: &DeviceCreated| {
            format!(
                "device/{} created\n\n{}",
                created.device.name,
                super::enrollment_text(&created.device.name, &created.enrollment)
            )
        })?;
        Ok(Outcome::Success)
    }
}
