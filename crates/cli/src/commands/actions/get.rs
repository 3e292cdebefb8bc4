use super::WaitArgs;
use crate::commands::{CommandError, Context, Outcome};

const EXAMPLES: &str = "\
Examples:
  tether actions get 0190f5c2-7b1e-7c3a-9d7e-2f1f4c8a9b10

  # Wait up to 5 minutes for it to finish
  tether actions get 0190f5c2-7b1e-7c3a-9d7e-2f1f4c8a9b10 --wait --timeout 5m";

/// Show an action by its id, optionally waiting for its outcome.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Get {
    /// The action's id (its correlationId).
    id: String,
    #[command(flatten)]
    wait: WaitArgs,
}

impl Get {
    pub fn description(&self) -> String {
        format!("get action {}", self.id)
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        let action = client.get_action(&self.id, None).await?;
        self.wait.follow_and_print(ctx, &client, action).await
    }
}
