use tether_proto::DeviceId;
use tether_proto::api::SetShellPassword;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether devices shell-password edge-1                  # a random password, shown once
  tether devices shell-password edge-1 --password-stdin < pw.txt
  tether devices shell-password edge-1 --disable
  ssh -o ProxyCommand='tether proxy --embedded %h' admin@edge-1

tetherd keeps only a slow hash; the password is shown this once.";

/// Turn password login to a device's management shell on or off.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct ShellPassword {
    /// The device's name.
    name: DeviceId,
    /// Use this password (at least 12 characters) instead of a random one;
    /// it shows in your shell's history and the process list: prefer
    /// --password-stdin.
    #[arg(long, conflicts_with_all = ["password_stdin", "disable"])]
    password: Option<String>,
    /// Read the password from the first line of stdin.
    #[arg(long, conflicts_with = "disable")]
    password_stdin: bool,
    /// Turn password login off.
    #[arg(long)]
    disable: bool,
}

impl ShellPassword {
    pub fn description(&self) -> String {
        if self.disable {
            format!("turn off password login to {}'s shell", self.name)
        } else {
            format!("set the shell password of {}", self.name)
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        if self.disable {
            client.disable_shell_password(self.name.as_str()).await?;
            output::emit(&format!("Password login to {}'s shell is off.", self.name))?;
            return Ok(Outcome::Success);
        }
        let password = if self.password_stdin {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| {
                CommandError::Usage(format!("cannot read the password from stdin: {e}"))
            })?;
            Some(line.trim_end_matches(['\r', '\n']).to_owned())
        } else {
            self.password
        };
        let chosen = password.is_some();
        let set = client
            .set_shell_password(self.name.as_str(), &SetShellPassword { password })
            .await?;
        if chosen {
            output::emit(&format!(
                "Password login to {}'s shell is on, with your password.",
                self.name
            ))?;
        } else {
            // The password alone on stdout, for scripts; the note on stderr.
            eprintln!(
                "Password login to {}'s shell is on. The password, shown this once:",
                self.name
            );
            output::emit(&set.password)?;
        }
        Ok(Outcome::Success)
    }
}
