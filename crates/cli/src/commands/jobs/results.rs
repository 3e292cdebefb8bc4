use tether_proto::ActionState;
use tether_proto::api::Action;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether jobs results 0190f5c2-7b1e-7c3a-9d7e-2f1f4c8a9b10

  # Only the devices where it failed, as JSON
  tether jobs results 0190f5c2-7b1e-7c3a-9d7e-2f1f4c8a9b10 --state failed -o json";

/// List each device's action of a job, optionally of one outcome.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Results {
    /// The job's id.
    id: String,
    /// Only actions in this state: queued, pending, delivered, succeeded,
    /// failed, timed-out, expired, rejected or cancelled.
    #[arg(long, value_parser = parse_state, value_name = "STATE")]
    state: Option<ActionState>,
}

fn parse_state(s: &str) -> Result<ActionState, String> {
    ActionState::parse(s).ok_or_else(|| {
        let names: Vec<&str> = ActionState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state; use one of {}", names.join(", "))
    })
}

impl Results {
    pub fn description(&self) -> String {
        format!("list the results of job {}", self.id)
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        let actions = client.job_actions(&self.id, self.state).await?;
        output::print(ctx.output, &actions, |actions: &Vec<Action>| table(actions))?;
        Ok(Outcome::Success)
    }
}

fn table(actions: &[Action]) -> String {
    output::columns(
        ["DEVICE", "STATE", "STATUS", "MESSAGE", "ID"],
        actions
            .iter()
            .map(|a| {
                [
                    a.device.clone(),
                    a.state.to_string(),
                    a.status_code
                        .map_or_else(|| "<none>".to_owned(), |c| c.to_string()),
                    a.status_message.clone().unwrap_or_default(),
                    a.correlation_id.clone(),
                ]
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_their_wire_names() {
        assert_eq!(parse_state("timed-out"), Ok(ActionState::TimedOut));
        assert_eq!(parse_state("cancelled"), Ok(ActionState::Cancelled));
        let err = parse_state("broken").expect_err("unknown");
        assert!(err.contains("failed"), "{err}");
    }
}
