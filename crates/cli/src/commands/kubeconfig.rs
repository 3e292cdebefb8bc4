//! `tether kubeconfig DEVICE`: a kubeconfig whose server is tetherd's
//! proxy for the device's cluster (ADR 0022), and `tether kube-credential`,
//! the exec plugin it names: kubectl asks it for the current session's
//! token on each run, so the file holds no secret and works as long as
//! the CLI is logged in.

use std::io::Write as _;
use std::path::PathBuf;

use super::{CommandError, Context, Outcome};
use crate::config::CliConfig;

/// Write a kubeconfig that reaches a device's cluster through tetherd.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "The device must manage a cluster and accept retrieve-kubeconfig (kubectl acts with its cluster-admin rights):\n  tether devices actions enable edge-1 retrieve-kubeconfig\n\nExamples:\n  tether kubeconfig edge-1 -f edge-1.yaml && kubectl --kubeconfig edge-1.yaml get nodes\n  tether kubeconfig edge-1 > ~/.kube/edge-1"
)]
pub struct Kubeconfig {
    /// The device.
    pub device: String,
    /// Write it to this file (mode 0600) instead of standard output. (`-o`
    /// is the global output format.)
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
}

impl Kubeconfig {
    pub fn description(&self) -> String {
        format!("write a kubeconfig for device {}", self.device)
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let config = CliConfig::load(&ctx.config_path)?;
        let ca_pem = config.read_ca()?;
        let server = ctx.server_override.as_deref().unwrap_or(&config.server);
        // Said now rather than by kubectl later: a wrong name, or a device
        // without a cluster.
        let device = ctx.client()?.get_device(&self.device).await?;
        if device
            .status
            .as_ref()
            .is_none_or(|status| status.facts.kubernetes.is_none())
        {
            return Err(CommandError::Usage(format!(
                "device {} reports no Kubernetes cluster: its agent must run with --kubernetes cluster or host",
                self.device
            )));
        }
        let tether = std::env::current_exe()
            .map_err(|error| {
                CommandError::Usage(format!(
                    "cannot find this tether binary's path for kubectl: {error}"
                ))
            })?
            .to_string_lossy()
            .into_owned();
        let args = [
            tether_proto::kubeconfig::CREDENTIAL_VERB.to_owned(),
            "--config".to_owned(),
            ctx.config_path.to_string_lossy().into_owned(),
        ];
        let kubeconfig =
            tether_proto::kubeconfig::through_tether(server, &self.device, &ca_pem, &tether, &args);
        let text = serde_yaml::to_string(&kubeconfig).unwrap_or_default();
        match &self.file {
            Some(path) => {
                super::write_private(path, &text).map_err(|source| CommandError::Local {
                    path: path.clone(),
                    source,
                })?
            }
            None => std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(CommandError::Write)?,
        }
        Ok(Outcome::Success)
    }
}

/// Print the session's token for kubectl (an exec credential plugin).
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "kubectl runs it as the kubeconfig of `tether kubeconfig` says; by hand:\n  tether kube-credential --config ~/.config/tether/config.toml"
)]
pub struct KubeCredential {}

impl KubeCredential {
    pub fn description(&self) -> String {
        "give kubectl the session's token".to_owned()
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let config = CliConfig::load(&ctx.config_path)?;
        let credential = tether_proto::kubeconfig::exec_credential(&config.token);
        println!("{credential}");
        Ok(Outcome::Success)
    }
}
