//! `tether`, the command-line client of tetherd: devices, actions, events and
//! metrics over tetherd's HTTP API, and `quickstart` for a local fleet of one.

pub mod boot_files;
pub mod client;
pub mod commands;
pub mod config;
pub mod labels;
pub mod os_image;
pub mod output;
pub mod tunnel;

use std::path::PathBuf;

use clap::Parser;

pub use commands::{Command, CommandError, Context, Outcome};
use output::OutputFormat;

const EXAMPLES: &str = "\
Examples:
  # Try it all on this machine: tetherd, an agent and a device called `local`
  tether quickstart

  # Log in to a tetherd, pinning its CA by fingerprint
  tether login https://tether.example:8443 --ca-sha256 3f5a…

  # Register a device and run an action on it
  tether devices add edge-1 -l site=berlin
  tether actions run edge-1 get-node-ip --wait

  # A script or CI job, without logging in: a service account's API key
  TETHER_API_KEY=tether_sa_… TETHER_SERVER=https://tether.example:8443 \\
    TETHER_CA_FILE=ca.pem tether devices list";

/// A service account's API key to use instead of a login session.
pub const API_KEY_ENV: &str = "TETHER_API_KEY";
/// The CA to trust with `TETHER_API_KEY` when there is no config file.
pub const CA_FILE_ENV: &str = "TETHER_CA_FILE";

/// Where the flags every command takes are listed in help.
const GLOBAL: &str = "Global options";

/// Manage a tether fleet: devices, actions, events and metrics.
#[derive(Debug, Parser)]
#[command(name = "tether", version, after_long_help = EXAMPLES)]
pub struct Cli {
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t, help_heading = GLOBAL)]
    pub output: OutputFormat,

    /// CLI config file [default: $XDG_CONFIG_HOME/tether/config.toml, else
    /// ~/.config/tether/config.toml].
    #[arg(long, global = true, env = "TETHER_CLI_CONFIG", value_name = "PATH", help_heading = GLOBAL)]
    pub config: Option<PathBuf>,

    /// Talk to this tetherd instead of the one in the config file (the
    /// config's CA and token still apply).
    #[arg(long, global = true, env = "TETHER_SERVER", value_name = "URL", help_heading = GLOBAL)]
    pub server: Option<String>,

    /// Log filter for the CLI's own diagnostics on stderr, e.g. `debug`.
    #[arg(
        long,
        global = true,
        env = "TETHER_CLI_LOG",
        default_value = "warn",
        value_name = "LEVEL",
        help_heading = GLOBAL
    )]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Runs the command; the caller prints an error as
    /// "failed to <description>: <cause>".
    pub async fn run(self) -> Result<Outcome, CommandError> {
        let config_path = match self.config {
            Some(path) => path,
            None => config::default_path()?,
        };
        let ctx = Context {
            output: self.output,
            config_path,
            server_override: self.server,
            ca_file_override: std::env::var_os(CA_FILE_ENV).map(PathBuf::from),
            // From the environment only: a key on the command line would
            // show in `ps` and shell history.
            api_key: std::env::var(API_KEY_ENV)
                .ok()
                .filter(|key| !key.is_empty()),
        };
        self.command.run(&ctx).await
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_a_description_and_examples() {
        fn check(cmd: &clap::Command, path: &str) {
            let path = format!("{path} {}", cmd.get_name());
            assert!(cmd.get_about().is_some(), "{path} has no description");
            let has_subcommands = cmd.get_subcommands().next().is_some();
            if !has_subcommands {
                let examples = cmd
                    .get_after_long_help()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                assert!(examples.contains("tether "), "{path} has no examples");
            }
            for sub in cmd.get_subcommands() {
                check(sub, &path);
            }
        }
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            check(sub, "tether");
        }
    }
}
