//! `tether os …`: OS images for devices.

mod edit;

use super::{CommandError, Context, Outcome};

pub use edit::OsEditError;

/// Prepare OS images that register with tetherd at first boot.
#[derive(Debug, clap::Subcommand)]
pub enum Os {
    Edit(edit::Edit),
}

impl Os {
    pub fn description(&self) -> String {
        match self {
            Os::Edit(cmd) => cmd.description(),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        match self {
            Os::Edit(cmd) => cmd.run(ctx).await,
        }
    }
}
