//! `tether actions …`: run actions on devices and follow them to their outcome.

mod catalogue;
mod get;
mod list;
pub(crate) mod run;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::ActionState;
use tether_proto::api::Action;
use tokio::time::Instant;

use super::{CommandError, Context, Outcome};
use crate::client::{ApiClient, ClientError};
use crate::output;

/// The longest single long-poll; tetherd may cap it lower, which only costs a loop.
const MAX_LONG_POLL: Duration = Duration::from_secs(50);
/// The least time between two polls, should a tetherd answer without waiting.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Run actions on devices, follow them, and list the catalogue.
#[derive(Debug, clap::Subcommand)]
pub enum Actions {
    Run(run::Run),
    List(list::List),
    Get(get::Get),
    Catalogue(catalogue::Catalogue),
}

impl Actions {
    pub fn description(&self) -> String {
        match self {
            Actions::Run(cmd) => cmd.description(),
            Actions::List(cmd) => cmd.description(),
            Actions::Get(cmd) => cmd.description(),
            Actions::Catalogue(cmd) => cmd.description(),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        match self {
            Actions::Run(cmd) => cmd.run(ctx).await,
            Actions::List(cmd) => cmd.run(ctx).await,
            Actions::Get(cmd) => cmd.run(ctx).await,
            Actions::Catalogue(cmd) => cmd.run(ctx).await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    #[error("cannot read the action input {}", path.display())]
    ReadInput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("the action input in {} is not valid JSON", path.display())]
    ParseInput {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// `--wait` and `--timeout`, shared by `run` and `get`.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Wait until the action has succeeded or failed (with -l: every
    /// device's, with a progress bar); exit 1 unless it succeeded.
    #[arg(long)]
    pub(crate) wait: bool,
    /// How long to wait before giving up (the action goes on), e.g. 30s, 5m.
    #[arg(
        long,
        requires = "wait",
        default_value = "30s",
        value_parser = super::parse_duration,
        value_name = "DURATION"
    )]
    pub(crate) timeout: Duration,
}

impl WaitArgs {
    /// Prints the action, after following it to its end if asked to, and
    /// tells how it went.
    async fn follow_and_print(
        &self,
        ctx: &Context,
        client: &ApiClient,
        action: Action,
    ) -> Result<Outcome, CommandError> {
        if !self.wait {
            print_action(ctx, &action)?;
            return Ok(Outcome::Success);
        }
        let action = wait_until_terminal(client, action, self.timeout).await?;
        print_action(ctx, &action)?;
        Ok(outcome(&action, self.timeout))
    }
}

/// Long-polls tetherd until the action is terminal or `timeout` has passed.
async fn wait_until_terminal(
    client: &ApiClient,
    mut action: Action,
    timeout: Duration,
) -> Result<Action, ClientError> {
    let deadline = Instant::now() + timeout;
    while !action.state.is_terminal() {
        let started = Instant::now();
        let Some(wait) = long_poll_wait(deadline.saturating_duration_since(started)) else {
            break;
        };
        action = client
            .get_action(&action.correlation_id, Some(wait))
            .await?;
        tracing::debug!(state = %action.state, "polled action");
        if !action.state.is_terminal() {
            tokio::time::sleep_until((started + MIN_POLL_INTERVAL).min(deadline)).await;
        }
    }
    Ok(action)
}

/// The `waitSeconds` of the next long-poll, or `None` once time is up.
/// Rounds up: tetherd counts whole seconds, and a last poll of a fraction
/// of a second should still be made rather than skipped.
fn long_poll_wait(remaining: Duration) -> Option<Duration> {
    if remaining.is_zero() {
        return None;
    }
    let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
    Some(Duration::from_secs(secs).min(MAX_LONG_POLL))
}

/// Exit 0 only for an action that succeeded.
fn outcome(action: &Action, timeout: Duration) -> Outcome {
    match action.state {
        ActionState::Succeeded => Outcome::Success,
        ActionState::Queued | ActionState::Pending | ActionState::Delivered => Outcome::Failed {
            reason: format!(
                "still {} after {}; check later with `tether actions get {}`",
                action.state,
                humantime::format_duration(timeout),
                action.correlation_id
            ),
        },
        state => Outcome::Failed {
            reason: format!(
                "action {} on device {:?} {state}{}",
                action.action,
                action.device,
                status(action).map(|s| format!(": {s}")).unwrap_or_default()
            ),
        },
    }
}

/// `200 OK`-style status of a device's answer.
fn status(action: &Action) -> Option<String> {
    match (action.status_code, &action.status_message) {
        (Some(code), Some(message)) => Some(format!("{code} {message}")),
        (Some(code), None) => Some(code.to_string()),
        (None, Some(message)) => Some(message.clone()),
        (None, None) => None,
    }
}

fn print_action(ctx: &Context, action: &Action) -> Result<(), CommandError> {
    let now = Utc::now();
    output::print(ctx.output, action, |action| describe(now, action))?;
    Ok(())
}

/// The key fields of an action, then its response as pretty JSON.
fn describe(now: DateTime<Utc>, action: &Action) -> String {
    let when = |at: Option<DateTime<Utc>>| match at {
        Some(at) => format!("{} ({} ago)", output::timestamp(at), output::age(now, at)),
        None => "<none>".to_owned(),
    };
    let mut text = output::fields(&[
        ("ID", action.correlation_id.clone()),
        ("DEVICE", action.device.clone()),
        ("ACTION", action.action.clone()),
        ("STATE", action.state.to_string()),
        (
            "STATUS",
            status(action).unwrap_or_else(|| "<none>".to_owned()),
        ),
        ("CREATED", when(Some(action.created_at))),
        ("DELIVERED", when(action.delivered_at)),
        ("COMPLETED", when(action.completed_at)),
    ]);
    text.push_str("\nRESPONSE:");
    match &action.response {
        Some(response) if !response.is_null() => {
            let pretty =
                serde_json::to_string_pretty(response).unwrap_or_else(|_| response.to_string());
            text.push('\n');
            text.push_str(&pretty);
        }
        _ => text.push_str(" <none>"),
    }
    text
}

/// The columns of `actions list`.
fn table(now: DateTime<Utc>, actions: &[Action]) -> String {
    output::columns(
        ["ID", "ACTION", "STATE", "STATUS", "AGE"],
        actions
            .iter()
            .map(|a| {
                [
                    a.correlation_id.clone(),
                    a.action.clone(),
                    a.state.to_string(),
                    a.status_code
                        .map_or_else(|| "<none>".to_owned(), |c| c.to_string()),
                    output::age(now, a.created_at),
                ]
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn action(state: ActionState) -> Action {
        let created_at = DateTime::from_timestamp(1_000_000, 0).expect("valid");
        Action {
            correlation_id: "c1".into(),
            device: "local".into(),
            action: "get-node-ip".into(),
            input: serde_json::json!({}),
            state,
            status_code: None,
            status_message: None,
            response: None,
            created_at,
            delivered_at: None,
            completed_at: None,
            expires_at: created_at + TimeDelta::hours(1),
            timeout_seconds: 300,
            job_id: None,
        }
    }

    #[test]
    fn long_polls_round_up_and_are_capped() {
        assert_eq!(long_poll_wait(Duration::ZERO), None);
        assert_eq!(
            long_poll_wait(Duration::from_millis(200)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            long_poll_wait(Duration::from_millis(29_500)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            long_poll_wait(Duration::from_secs(600)),
            Some(MAX_LONG_POLL)
        );
    }

    #[test]
    fn only_success_exits_zero() {
        let timeout = Duration::from_secs(30);
        assert_eq!(
            outcome(&action(ActionState::Succeeded), timeout),
            Outcome::Success
        );
        let mut failed = action(ActionState::Rejected);
        failed.status_code = Some(400);
        failed.status_message = Some("bad input".into());
        assert_eq!(
            outcome(&failed, timeout),
            Outcome::Failed {
                reason: "action get-node-ip on device \"local\" rejected: 400 bad input".into()
            }
        );
        assert_eq!(
            outcome(&action(ActionState::Expired), timeout),
            Outcome::Failed {
                reason: "action get-node-ip on device \"local\" expired".into()
            }
        );
        assert_eq!(
            outcome(&action(ActionState::Delivered), timeout),
            Outcome::Failed {
                reason: "still delivered after 30s; check later with `tether actions get c1`"
                    .into()
            }
        );
    }

    #[test]
    fn an_action_is_described_by_its_key_fields_then_its_response() {
        let mut done = action(ActionState::Succeeded);
        done.status_code = Some(200);
        done.status_message = Some("OK".into());
        done.completed_at = Some(done.created_at + TimeDelta::seconds(2));
        done.response = Some(serde_json::json!({"ip": "10.0.0.2"}));
        let now = done.created_at + TimeDelta::seconds(62);
        let text = describe(now, &done);
        assert!(text.starts_with("ID:        c1\n"), "{text}");
        assert!(text.contains("\nSTATE:     succeeded\n"), "{text}");
        assert!(text.contains("\nSTATUS:    200 OK\n"), "{text}");
        assert!(text.contains("\nDELIVERED: <none>\n"), "{text}");
        assert!(
            text.contains("COMPLETED: 1970-01-12T13:46:42Z (1m ago)"),
            "{text}"
        );
        assert!(
            text.ends_with("RESPONSE:\n{\n  \"ip\": \"10.0.0.2\"\n}"),
            "{text}"
        );
        assert!(describe(now, &action(ActionState::Pending)).ends_with("RESPONSE: <none>"));
    }

    #[test]
    fn the_action_list_shows_state_and_status() {
        let mut done = action(ActionState::Succeeded);
        done.status_code = Some(200);
        let now = done.created_at + TimeDelta::minutes(3);
        let text = table(now, &[done, action(ActionState::Pending)]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[1], vec!["c1", "get-node-ip", "succeeded", "200", "3m"]);
        assert_eq!(
            rows[2],
            vec!["c1", "get-node-ip", "pending", "<none>", "3m"]
        );
    }
}
