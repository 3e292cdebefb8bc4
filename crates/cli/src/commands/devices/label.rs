use tether_proto::DeviceId;
use tether_proto::api::{Device, PatchDevice};

use crate::commands::{CommandError, Context, Outcome};
use crate::labels::{self, LabelChange};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  # Set two labels
  tether devices label edge-1 site=berlin role=gateway

  # Remove a label (a trailing '-') and change another
  tether devices label edge-1 role- site=hamburg";

/// Set (KEY=VALUE) or remove (KEY-) labels of a device.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Label {
    /// The device's name.
    name: DeviceId,
    /// KEY=VALUE to set a label, KEY- to remove it.
    #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
    changes: Vec<LabelChange>,
}

impl Label {
    pub fn description(&self) -> String {
        format!("label device {:?}", self.name.as_str())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let patch = PatchDevice {
            labels: labels::merge_patch(&self.changes)?,
            spec: None,
        };
        let device = ctx
            .client()?
            .patch_device(self.name.as_str(), &patch)
            .await?;
        output::print(ctx.output, &device, |device: &Device| {
            format!("device/{} labeled", device.name)
        })?;
        Ok(Outcome::Success)
    }
}
