use tether_proto::DeviceId;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether devices revoke edge-1
  tether devices enrollment-token edge-1   # to bring it back later

  # Both the hardware and the media replaced: keep the device
  tether devices detach-credential edge-1
  tether os edit --image-file os.raw --device-name edge-1";

/// Revoke a device's certificates: its session closes and it can neither
/// connect nor renew; the device and its history stay until deleted. As
/// `detach-credential` (seed 004), before writing a credential for the
/// device into a new image with `tether os edit --device-name`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES, visible_alias = "detach-credential")]
pub struct Revoke {
    /// The device's name.
    name: DeviceId,
}

impl Revoke {
    pub fn description(&self) -> String {
        format!("revoke the certificates of device {:?}", self.name.as_str())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        ctx.client()?.revoke_device(self.name.as_str()).await?;
        output::emit(&format!(
            "device/{} revoked; enroll it again with `tether devices enrollment-token {}`",
            self.name, self.name
        ))?;
        Ok(Outcome::Success)
    }
}
