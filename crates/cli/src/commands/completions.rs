//! `tether completions SHELL`: the shell's completion script for every
//! command and flag, generated from the same definitions that parse them.
//! The Debian package and the tarball install the bash one.

use std::io::Write;

use super::{CommandError, Context, Outcome};
use crate::output::OutputError;

const EXAMPLES: &str = "\
Examples:
  # For this shell session
  source <(tether completions bash)

  # For good (the Debian package does this for bash)
  tether completions bash > /usr/share/bash-completion/completions/tether
  tether completions zsh > \"${fpath[1]}/_tether\"
  tether completions fish > ~/.config/fish/completions/tether.fish";

/// Print a shell completion script.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Completions {
    /// The shell to complete in.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

impl Completions {
    pub fn description(&self) -> String {
        format!("print the {} completion script", self.shell)
    }

    pub async fn run(self, _ctx: &Context) -> Result<Outcome, CommandError> {
        let mut command = <crate::Cli as clap::CommandFactory>::command();
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut command, "tether", &mut script);
        let mut out = std::io::stdout().lock();
        out.write_all(&script)
            .and_then(|()| out.flush())
            .map_err(OutputError::Write)?;
        Ok(Outcome::Success)
    }
}
