use std::path::PathBuf;
use std::time::Duration;

use tether_proto::DeviceId;
use tether_proto::api::RequestAction;

use super::{ActionsError, WaitArgs};
use crate::commands::{CommandError, Context, Outcome};

const EXAMPLES: &str = "\
Examples:
  # Ask a device for its IP addresses and wait for the answer
  tether actions run edge-1 get-node-ip --wait

  # Start sampling host metrics every 5 s
  tether actions run edge-1 run-stats --input '{\"interval\":5}' --wait

  # Input from a file (or - for standard input); give up waiting after 2 minutes
  tether actions run edge-1 send-kubectl --input-file cmd.json --wait --timeout 2m

  # Let an action for an offline device wait up to a day
  tether actions run edge-1 get-node-ip --ttl 24h

Exit status: 0 if the action was accepted (or, with --wait, succeeded); 1 if it
failed, was rejected, expired or timed out, or --timeout passed first; 2 for
usage errors. `tether actions catalogue` lists the actions and their inputs.";

/// Run an action on a device, optionally waiting for its outcome.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Run {
    /// The device's name.
    device: DeviceId,
    /// The action's name, e.g. get-node-ip (see `tether actions catalogue`).
    action: String,
    /// The action's input as JSON [default: {}].
    #[arg(long, value_parser = parse_json, conflicts_with = "input_file", value_name = "JSON")]
    input: Option<serde_json::Value>,
    /// Read the input JSON from this file ('-' for standard input).
    #[arg(long, value_name = "PATH")]
    input_file: Option<PathBuf>,
    /// How long the action may wait for an offline device before it expires
    /// [default: tetherd's, 1h].
    #[arg(long, value_parser = crate::commands::parse_duration, value_name = "DURATION")]
    ttl: Option<Duration>,
    #[command(flatten)]
    wait: WaitArgs,
}

impl Run {
    pub fn description(&self) -> String {
        format!(
            "run action {} on device {:?}",
            self.action,
            self.device.as_str()
        )
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let input = match (&self.input, &self.input_file) {
            (Some(input), _) => input.clone(),
            (None, Some(path)) => read_input(path)?,
            (None, None) => serde_json::json!({}),
        };
        let client = ctx.client()?;
        let action = client
            .request_action(
                self.device.as_str(),
                &RequestAction {
                    action: self.action.clone(),
                    input,
                    ttl_seconds: self.ttl.map(|ttl| ttl.as_secs()),
                    timeout_seconds: None,
                },
            )
            .await?;
        self.wait.follow_and_print(ctx, &client, action).await
    }
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|err| format!("not valid JSON: {err}"))
}

fn read_input(path: &PathBuf) -> Result<serde_json::Value, ActionsError> {
    let read_err = |source| ActionsError::ReadInput {
        path: path.clone(),
        source,
    };
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(read_err)?
    } else {
        std::fs::read_to_string(path).map_err(read_err)?
    };
    serde_json::from_str(&text).map_err(|source| ActionsError::ParseInput {
        path: path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::Cli;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["tether", "actions", "run"].iter().chain(args))
    }

    #[test]
    fn input_is_json_from_the_flag_or_a_file_but_not_both() {
        assert!(parse(&["local", "run-stats", "--input", r#"{"interval":5}"#]).is_ok());
        let err = parse(&["local", "run-stats", "--input", "{interval:5}"]).expect_err("not JSON");
        assert_eq!(err.exit_code(), 2);
        let err =
            parse(&["local", "a", "--input", "{}", "--input-file", "x.json"]).expect_err("both");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn timeout_needs_wait() {
        assert!(parse(&["local", "get-node-ip", "--wait", "--timeout", "2m"]).is_ok());
        assert!(parse(&["local", "get-node-ip", "--wait"]).is_ok());
        let err = parse(&["local", "get-node-ip", "--timeout", "2m"]).expect_err("no --wait");
        assert_eq!(err.exit_code(), 2);
        assert!(parse(&["local", "get-node-ip", "--ttl", "0s"]).is_err());
    }

    #[test]
    fn device_names_are_checked_before_anything_is_sent() {
        let err = parse(&["../etc", "get-node-ip"]).expect_err("invalid name");
        assert_eq!(err.exit_code(), 2);
    }
}
