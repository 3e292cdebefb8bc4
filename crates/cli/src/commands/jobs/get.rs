use std::time::Duration;

use crate::commands::{CommandError, Context, Outcome};

const EXAMPLES: &str = "\
Examples:
  tether jobs get 0190f5c2-7b1e-7c3a-9d7e-2f1f4c8a9b10

  # Follow it with a progress bar until every device has answered
  tether jobs get 0190f5c2-7b1e-7c3a-9d7e-2f1f4c8a9b10 --wait --timeout 10m";

/// Show a job and how many of its devices are in each state.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Get {
    /// The job's id.
    id: String,
    /// Follow the job until its last action has ended; exit 1 unless every
    /// device succeeded.
    #[arg(long)]
    wait: bool,
    /// How long to follow before giving up (the job goes on).
    #[arg(long, requires = "wait", default_value = "10m", value_parser = crate::commands::parse_duration, value_name = "DURATION")]
    timeout: Duration,
}

impl Get {
    pub fn description(&self) -> String {
        format!("get job {}", self.id)
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        let job = client.get_job(&self.id).await?;
        if self.wait {
            return super::follow(ctx, &client, job, self.timeout).await;
        }
        super::print_job(ctx, &job)?;
        Ok(Outcome::Success)
    }
}
