use tether_proto::DeviceId;
use tether_proto::api::EnrollmentToken;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  # A new token after the first one expired or the device was reinstalled
  tether devices enrollment-token edge-1
  # For a device that will be installed next month
  tether devices enrollment-token edge-1 --ttl 45days";

/// Issue a new one-time enrollment token for a device.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct EnrollmentTokenCmd {
    /// The device's name.
    name: DeviceId,
    /// How long the token stays valid (at most 90 days) [default:
    /// tetherd's, a day].
    #[arg(long, value_parser = crate::commands::parse_duration, value_name = "DURATION")]
    ttl: Option<std::time::Duration>,
}

impl EnrollmentTokenCmd {
    pub fn description(&self) -> String {
        format!(
            "issue an enrollment token for device {:?}",
            self.name.as_str()
        )
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let enrollment = ctx
            .client()?
            .new_enrollment_token(self.name.as_str(), self.ttl)
            .await?;
        output::print(ctx.output, &enrollment, |enrollment: &EnrollmentToken| {
            super::enrollment_text(self.name.as_str(), enrollment)
        })?;
        Ok(Outcome::Success)
    }
}
