use tether_proto::DeviceId;
use tether_proto::api::{CreateDevice, DeviceCreated};

use crate::commands::{CommandError, Context, Outcome};
use crate::labels::{self, Label};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  # Register a device and get the command line that enrolls its agent
  tether devices add edge-1

  # With labels and the name people know it by
  tether devices add edge-1 -l site=berlin -l role=gateway --display-name \"Line 3 gateway\"

  # A Kubernetes cluster: prints the one command that joins it
  tether devices add edge-1 --kubernetes";

/// Register a device and print its one-time enrollment token and agent command.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Add {
    /// Device name: lowercase letters, digits and '-'.
    name: DeviceId,
    /// A label to set, KEY=VALUE; repeat for more.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    labels: Vec<Label>,
    /// The device is a Kubernetes cluster: print the command that joins it
    /// (the agent runs in the cluster) instead of the agent's command line.
    #[arg(long)]
    kubernetes: bool,
    /// What people call the device, e.g. "Line 3 gateway".
    #[arg(long, value_name = "TEXT")]
    display_name: Option<String>,
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
                display_name: self.display_name,
            })
            .await?;
        let instructions = if self.kubernetes {
            super::join_text
        } else {
            super::enrollment_text
        };
        output::print(ctx.output, &created, |created: &DeviceCreated| {
            format!(
                "device/{} created\n\n{}",
                created.device.name,
                instructions(&created.device.name, &created.enrollment)
            )
        })?;
        Ok(Outcome::Success)
    }
}
