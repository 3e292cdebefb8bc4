use tether_proto::DeviceId;
use tether_proto::api::DeviceActionSet;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  # Let edge-1 accept manage-deployment requests
  tether devices actions enable edge-1 manage-deployment

  # Refuse a default action on edge-1
  tether devices actions disable edge-1 send-kubectl

  # What edge-1 accepts now
  tether actions catalogue --device edge-1";

/// Enable or disable actions on a device: it accepts the default actions
/// and those enabled here; requests for any other are refused.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum Actions {
    /// Let the device accept an action.
    Enable(Change),
    /// Refuse an action on the device.
    Disable(Change),
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Change {
    /// The device's name.
    name: DeviceId,
    /// An action of the catalogue (`tether actions catalogue`).
    action: String,
}

impl Actions {
    pub fn description(&self) -> String {
        match self {
            Actions::Enable(change) => format!(
                "enable action {:?} on device {:?}",
                change.action,
                change.name.as_str()
            ),
            Actions::Disable(change) => format!(
                "disable action {:?} on device {:?}",
                change.action,
                change.name.as_str()
            ),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let (change, enabled) = match self {
            Actions::Enable(change) => (change, true),
            Actions::Disable(change) => (change, false),
        };
        let set = ctx
            .client()?
            .set_action_enabled(change.name.as_str(), &change.action, enabled)
            .await?;
        output::print(ctx.output, &set, |set: &DeviceActionSet| {
            summary(&change.action, enabled, set)
        })?;
        Ok(Outcome::Success)
    }
}

fn summary(action: &str, enabled: bool, set: &DeviceActionSet) -> String {
    format!(
        "device/{}: action {action} {} (spec version {})\naccepts: {}",
        set.device,
        if enabled { "enabled" } else { "disabled" },
        set.spec_version,
        set.accepted.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_change_and_what_the_device_accepts() {
        let set = DeviceActionSet {
            device: "edge-1".into(),
            accepted: vec!["get-node-ip".into(), "manage-deployment".into()],
            spec_version: 3,
        };
        assert_eq!(
            summary("manage-deployment", true, &set),
            "device/edge-1: action manage-deployment enabled (spec version 3)\naccepts: get-node-ip, manage-deployment"
        );
    }
}
