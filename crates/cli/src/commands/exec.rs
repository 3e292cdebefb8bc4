//! `tether exec DEVICE -- CMD ARGS…`: one command on the device through a
//! tunnel (ADR 0021), without a terminal: this process's stdin goes to it,
//! its stdout and stderr come back apart, and its exit status becomes
//! this command's.

use futures::StreamExt as _;

use super::{CommandError, Context, Outcome};
use crate::tunnel as tunnel_io;

/// Run one command on a device, streaming its output.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  tether exec edge-1 -- uname -a\n  tar c ./conf | tether exec edge-1 -- tar x -C /etc/app"
)]
pub struct Exec {
    /// The device.
    pub device: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl Exec {
    pub fn description(&self) -> String {
        format!("run {:?} on {}", self.command.join(" "), self.device)
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        let mut query = vec![("kind", "exec")];
        query.extend(self.command.iter().map(|arg| ("command", arg.as_str())));
        let socket = client.tunnel(&self.device, &query).await?;
        let (sender, receiver) = socket.split();
        // Stdin is read on its own task, dropped once the command ended:
        // a terminal's stdin never ends by itself.
        let input = tokio::spawn(tunnel_io::send_input(tokio::io::stdin(), sender));
        let outcome = tunnel_io::print_until_exit(receiver, "command").await;
        input.abort();
        outcome
    }
}
