//! `tether proxy DEVICE`: this process's stdin and stdout as a TCP
//! connection to a port on the device itself (22 by default), through a
//! tunnel (ADR 0021) — what OpenSSH's `ProxyCommand` wants, so the stock
//! `ssh` reaches the device's sshd with no inbound port on the device:
//! `ssh -o ProxyCommand='tether proxy %h' root@DEVICE`. With `--embedded`
//! it reaches the agent's own SSH server instead, the management shell
//! (ADR 0023), which needs no sshd on the device.

use super::forward_port::splice;
use super::{CommandError, Context, Outcome};

/// Connect stdin and stdout to a port on the device (for ssh's ProxyCommand).
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  ssh -o ProxyCommand='tether proxy %h' root@edge-1\n  ssh -o ProxyCommand='tether proxy --embedded %h' admin@edge-1   # the management shell\n  tether ssh-config >> ~/.ssh/config   # then: ssh root@edge-1"
)]
pub struct Proxy {
    /// The device.
    pub device: String,
    /// The port on the device (its own loopback).
    #[arg(long, default_value_t = 22, conflicts_with = "embedded")]
    pub port: u16,
    /// Reach the agent's embedded SSH server (the management shell; log
    /// in with a key from `tether keys add`) instead of a port.
    #[arg(long)]
    pub embedded: bool,
}

impl Proxy {
    pub fn description(&self) -> String {
        if self.embedded {
            format!("connect to the management shell of {}", self.device)
        } else {
            format!("connect to port {} of {}", self.port, self.device)
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let target = format!("127.0.0.1:{}", self.port);
        let query: &[(&str, &str)] = if self.embedded {
            &[("kind", "ssh")]
        } else {
            &[("kind", "forward"), ("target", &target)]
        };
        let socket = ctx.client()?.tunnel(&self.device, query).await?;
        match splice(tokio::io::stdin(), tokio::io::stdout(), socket).await {
            Ok(()) => Ok(Outcome::Success),
            Err(reason) => Ok(Outcome::Failed { reason }),
        }
    }
}
