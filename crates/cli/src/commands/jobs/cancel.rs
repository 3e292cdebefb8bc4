use crate::commands::{CommandError, Context, Outcome};

const EXAMPLES: &str = "\
Examples:
  tether jobs cancel 0190f5c2-7b1e-7c3a-9d7e-2f1f4c8a9b10";

/// Cancel a job: actions not yet delivered are cancelled; delivered ones
/// finish normally. The job and its counts are kept.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Cancel {
    /// The job's id.
    id: String,
}

impl Cancel {
    pub fn description(&self) -> String {
        format!("cancel job {}", self.id)
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let job = ctx.client()?.cancel_job(&self.id).await?;
        super::print_job(ctx, &job)?;
        Ok(Outcome::Success)
    }
}
