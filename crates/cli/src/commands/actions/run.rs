use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use tether_proto::DeviceId;
use tether_proto::api::{CreateJob, RequestAction};

use super::{ActionsError, WaitArgs};
use crate::commands::{CommandError, Context, Outcome, jobs};
use crate::labels::Selector;
use crate::output;

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

  # Every device in Berlin, 50 at a time, 20 new ones a second, with a progress bar
  tether actions run -l site=berlin get-node-ip --concurrency 50 --rate 20 --wait --timeout 10m

With -l, one job runs the action on every device the selector matches now;
devices offline get theirs when they return, within the TTL. Follow it with
`tether jobs get ID --wait`, list per-device outcomes with `tether jobs results`.

Exit status: 0 if the action was accepted (or, with --wait, succeeded, on every
device); 1 if it failed, was rejected, expired or timed out, or --timeout passed
first; 2 for usage errors. `tether actions catalogue` lists the actions and their inputs.";

/// Run an action on a device, or on every device a label selector matches,
/// optionally waiting for its outcome.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Run {
    /// The device's name, then the action's name, e.g. get-node-ip (see
    /// `tether actions catalogue`); with -l only the action.
    #[arg(value_name = "DEVICE ACTION", num_args = 1..=2, required = true)]
    targets: Vec<String>,
    /// Run on every device whose labels match, e.g. site=berlin,tier!=test.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    selector: Option<Selector>,
    /// With -l: at most this many devices working on it at once [default: unlimited].
    #[arg(long, requires = "selector", value_name = "N")]
    concurrency: Option<u32>,
    /// With -l: at most this many new deliveries a second [default: unlimited].
    #[arg(long, requires = "selector", value_name = "N")]
    rate: Option<u32>,
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

/// What `run` runs the action on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    Device {
        device: DeviceId,
        action: &'a str,
    },
    Selected {
        selector: &'a Selector,
        action: &'a str,
    },
}

impl Run {
    /// One device and an action, or a selector and an action.
    pub fn target(&self) -> Result<Target<'_>, clap::Error> {
        let usage = |message: &str| clap::Error::raw(ErrorKind::WrongNumberOfValues, message);
        match (&self.selector, self.targets.as_slice()) {
            (Some(selector), [action]) => Ok(Target::Selected { selector, action }),
            (Some(_), _) => Err(usage(
                "with -l, name only the action: tether actions run -l SELECTOR ACTION\n",
            )),
            (None, [device, action]) => {
                let device = DeviceId::new(device.as_str()).map_err(|error| {
                    clap::Error::raw(ErrorKind::ValueValidation, format!("{error}\n"))
                })?;
                Ok(Target::Device { device, action })
            }
            (None, _) => Err(usage(
                "name a device and an action (tether actions run DEVICE ACTION), or select devices with -l SELECTOR\n",
            )),
        }
    }

    pub fn description(&self) -> String {
        match self.target() {
            Ok(Target::Device { device, action }) => {
                format!("run action {action} on device {:?}", device.as_str())
            }
            Ok(Target::Selected { selector, action }) => format!(
                "run action {action} on the devices matching {:?}",
                selector.to_query()
            ),
            Err(_) => "run an action".to_owned(),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let input = match (&self.input, &self.input_file) {
            (Some(input), _) => input.clone(),
            (None, Some(path)) => read_input(path)?,
            (None, None) => serde_json::json!({}),
        };
        let client = ctx.client()?;
        let target = self
            .target()
            .map_err(|usage| ActionsError::Usage(usage.to_string()))?;
        match target {
            Target::Device { device, action } => {
                let action = client
                    .request_action(
                        device.as_str(),
                        &RequestAction {
                            action: action.to_owned(),
                            input,
                            ttl_seconds: self.ttl.map(|ttl| ttl.as_secs()),
                            timeout_seconds: None,
                        },
                    )
                    .await?;
                self.wait.follow_and_print(ctx, &client, action).await
            }
            Target::Selected { selector, action } => {
                let job = client
                    .create_job(&CreateJob {
                        label_selector: selector.to_query(),
                        action: action.to_owned(),
                        input,
                        ttl_seconds: self.ttl.map(|ttl| ttl.as_secs()),
                        timeout_seconds: None,
                        concurrency: self.concurrency,
                        rate_per_second: self.rate,
                    })
                    .await?;
                if self.wait.wait {
                    return jobs::follow(ctx, &client, job, self.wait.timeout).await;
                }
                if ctx.output == output::OutputFormat::Table {
                    eprintln!(
                        "Job {} runs {} on {} devices; follow it with `tether jobs get {} --wait`.",
                        job.id, job.action, job.devices, job.id
                    );
                }
                jobs::print_job(ctx, &job)?;
                Ok(Outcome::Success)
            }
        }
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
        let cli = parse(&["../etc", "get-node-ip"]).expect("parses");
        let err = cli.command.check_usage().expect_err("invalid name");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn a_selector_takes_only_the_action_and_the_limits_need_it() {
        let cli = parse(&[
            "-l",
            "site=berlin",
            "get-node-ip",
            "--concurrency",
            "5",
            "--rate",
            "20",
        ])
        .expect("parses");
        assert!(cli.command.check_usage().is_ok());
        let cli = parse(&["-l", "site=berlin", "edge-1", "get-node-ip"]).expect("parses");
        assert_eq!(
            cli.command
                .check_usage()
                .expect_err("two names")
                .exit_code(),
            2
        );
        let cli = parse(&["get-node-ip"]).expect("parses");
        assert!(cli.command.check_usage().is_err(), "no device, no selector");
        assert!(parse(&["edge-1", "get-node-ip", "--concurrency", "5"]).is_err());
        assert!(parse(&["-l", "site=", "get-node-ip"]).is_ok());
        assert!(
            parse(&["-l", "=berlin", "get-node-ip"]).is_err(),
            "bad selector"
        );
    }
}
