use tether_proto::api::Job;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether jobs list
  tether jobs list --limit 5 -o json";

/// List fleet-wide jobs, newest first, with their progress.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct List {
    /// At most this many jobs.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

impl List {
    pub fn description(&self) -> String {
        "list jobs".to_owned()
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let jobs = ctx.client()?.list_jobs(self.limit).await?;
        if jobs.is_empty() && super::for_people(ctx) {
            eprintln!("No jobs yet; start one with `tether actions run -l SELECTOR ACTION`.");
            return Ok(Outcome::Success);
        }
        let now = chrono::Utc::now();
        output::print(ctx.output, &jobs, |jobs: &Vec<Job>| super::table(now, jobs))?;
        Ok(Outcome::Success)
    }
}
