//! `tether ssh-config`: `Host` blocks for `~/.ssh/config` that send the
//! stock `ssh` to each device through `tether proxy`, so `ssh root@DEVICE`
//! just works.

use super::{CommandError, Context, Outcome};
use crate::client::PAGE_SIZE;

/// Print ~/.ssh/config blocks that reach devices through tether.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  tether ssh-config >> ~/.ssh/config\n  tether ssh-config -l site=berlin --user admin\n  tether ssh-config --embedded edge-1   # the management shell"
)]
pub struct SshConfig {
    /// The devices; default: every device (or those `-l` picks).
    pub devices: Vec<String>,
    /// Only devices matching this label selector.
    #[arg(
        short = 'l',
        long = "selector",
        value_name = "SELECTOR",
        conflicts_with = "devices"
    )]
    pub selector: Option<String>,
    /// The user ssh logs in as.
    #[arg(long)]
    pub user: Option<String>,
    /// The port of the device's sshd, on the device.
    #[arg(long, default_value_t = 22, conflicts_with = "embedded")]
    pub port: u16,
    /// Reach the agent's embedded SSH server, the management shell
    /// (`tether proxy --embedded`), instead of the device's sshd.
    #[arg(long)]
    pub embedded: bool,
}

impl SshConfig {
    pub fn description(&self) -> String {
        "print ssh configuration for the devices".to_owned()
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let devices = if self.devices.is_empty() {
            ctx.client()?
                .list_devices(self.selector.as_deref(), None, PAGE_SIZE)
                .await?
                .into_iter()
                .map(|device| device.name)
                .collect()
        } else {
            self.devices.clone()
        };
        print!("{}", self.blocks(&devices));
        Ok(Outcome::Success)
    }

    fn blocks(&self, devices: &[String]) -> String {
        let port = if self.embedded {
            " --embedded".to_owned()
        } else if self.port == 22 {
            String::new()
        } else {
            format!(" --port {}", self.port)
        };
        devices
            .iter()
            .map(|device| {
                let user = self
                    .user
                    .as_ref()
                    .map(|user| format!("    User {user}\n"))
                    .unwrap_or_default();
                format!("Host {device}\n    ProxyCommand tether proxy %h{port}\n{user}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_gets_a_host_block_through_tether_proxy() {
        let config = SshConfig {
            devices: Vec::new(),
            selector: None,
            user: Some("admin".into()),
            port: 2222,
            embedded: false,
        };
        assert_eq!(
            config.blocks(&["edge-1".into(), "edge-2".into()]),
            "Host edge-1\n    ProxyCommand tether proxy %h --port 2222\n    User admin\n\n\
             Host edge-2\n    ProxyCommand tether proxy %h --port 2222\n    User admin\n"
        );
        let embedded = SshConfig {
            devices: Vec::new(),
            selector: None,
            user: None,
            port: 22,
            embedded: true,
        };
        assert_eq!(
            embedded.blocks(&["edge-1".into()]),
            "Host edge-1\n    ProxyCommand tether proxy %h --embedded\n"
        );
    }
}
