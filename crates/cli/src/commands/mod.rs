//! One module per verb (group). Each verb is a struct that clap fills in,
//! with a description for "failed to <description>: <cause>" and a `run`.

pub mod actions;
pub mod alert_deliveries;
pub mod alert_rules;
pub mod alerts;
pub mod approvals;
pub mod audit;
pub mod completions;
pub mod cp;
pub mod deployments;
pub mod devices;
pub mod events;
pub mod exec;
pub mod forward_port;
pub mod jobs;
pub mod keys;
pub mod kubeconfig;
pub mod login;
pub mod logout;
pub mod logs;
pub mod metrics;
pub mod os;
pub mod policies;
pub mod proxy;
pub mod quickstart;
pub mod releases;
pub mod secrets;
pub mod service_accounts;
pub mod sessions;
pub mod ssh;
pub mod ssh_config;
pub mod templates;
pub mod users;

use std::path::PathBuf;
use std::time::Duration;

use crate::client::{ApiClient, ClientError};
use crate::config::{CliConfig, ConfigError};
use crate::labels::LabelError;
use crate::output::{OutputError, OutputFormat};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    Login(login::Login),
    Logout(logout::Logout),
    #[command(subcommand)]
    Sessions(sessions::Sessions),
    #[command(subcommand)]
    Users(users::Users),
    #[command(subcommand)]
    ServiceAccounts(service_accounts::ServiceAccounts),
    #[command(subcommand)]
    Devices(devices::Devices),
    #[command(subcommand)]
    Actions(actions::Actions),
    #[command(subcommand)]
    Jobs(jobs::Jobs),
    #[command(subcommand)]
    Keys(keys::Keys),
    #[command(subcommand)]
    Policies(policies::Policies),
    #[command(subcommand)]
    Approvals(approvals::Approvals),
    #[command(subcommand)]
    Alerts(alerts::Alerts),
    #[command(subcommand)]
    Templates(templates::Templates),
    #[command(subcommand)]
    Deployments(deployments::Deployments),
    #[command(subcommand)]
    Secrets(secrets::Secrets),
    #[command(subcommand)]
    Releases(releases::Releases),
    Events(events::Events),
    Exec(exec::Exec),
    Cp(cp::Cp),
    Ssh(ssh::Ssh),
    ForwardPort(forward_port::ForwardPort),
    Proxy(proxy::Proxy),
    SshConfig(ssh_config::SshConfig),
    Kubeconfig(kubeconfig::Kubeconfig),
    KubeCredential(kubeconfig::KubeCredential),
    Logs(logs::Logs),
    Metrics(metrics::Metrics),
    Audit(audit::Audit),
    #[command(subcommand)]
    Os(os::Os),
    Quickstart(quickstart::Quickstart),
    Completions(completions::Completions),
}

impl Command {
    /// Usage rules clap cannot state, checked before anything runs; an
    /// error here is a usage error (exit 2), like clap's own.
    pub fn check_usage(&self) -> Result<(), clap::Error> {
        match self {
            Command::Actions(actions::Actions::Run(run)) => run.target().map(drop),
            Command::Cp(cp) => cp.direction().map(drop),
            _ => Ok(()),
        }
    }

    /// What the command does, as in "failed to <description>".
    pub fn description(&self) -> String {
        match self {
            Command::Login(cmd) => cmd.description(),
            Command::Logout(cmd) => cmd.description(),
            Command::Sessions(cmd) => cmd.description(),
            Command::Users(cmd) => cmd.description(),
            Command::ServiceAccounts(cmd) => cmd.description(),
            Command::Devices(cmd) => cmd.description(),
            Command::Actions(cmd) => cmd.description(),
            Command::Jobs(cmd) => cmd.description(),
            Command::Keys(cmd) => cmd.description(),
            Command::Policies(cmd) => cmd.description(),
            Command::Approvals(cmd) => cmd.description(),
            Command::Alerts(cmd) => cmd.description(),
            Command::Templates(cmd) => cmd.description(),
            Command::Deployments(cmd) => cmd.description(),
            Command::Secrets(cmd) => cmd.description(),
            Command::Releases(cmd) => cmd.description(),
            Command::Events(cmd) => cmd.description(),
            Command::Exec(cmd) => cmd.description(),
            Command::Cp(cmd) => cmd.description(),
            Command::Ssh(cmd) => cmd.description(),
            Command::ForwardPort(cmd) => cmd.description(),
            Command::Proxy(cmd) => cmd.description(),
            Command::SshConfig(cmd) => cmd.description(),
            Command::Kubeconfig(cmd) => cmd.description(),
            Command::KubeCredential(cmd) => cmd.description(),
            Command::Logs(cmd) => cmd.description(),
            Command::Metrics(cmd) => cmd.description(),
            Command::Audit(cmd) => cmd.description(),
            Command::Os(cmd) => cmd.description(),
            Command::Quickstart(cmd) => cmd.description(),
            Command::Completions(cmd) => cmd.description(),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        match self {
            Command::Login(cmd) => cmd.run(ctx).await,
            Command::Logout(cmd) => cmd.run(ctx).await,
            Command::Sessions(cmd) => cmd.run(ctx).await,
            Command::Users(cmd) => cmd.run(ctx).await,
            Command::ServiceAccounts(cmd) => cmd.run(ctx).await,
            Command::Devices(cmd) => cmd.run(ctx).await,
            Command::Actions(cmd) => cmd.run(ctx).await,
            Command::Jobs(cmd) => cmd.run(ctx).await,
            Command::Keys(cmd) => cmd.run(ctx).await,
            Command::Policies(cmd) => cmd.run(ctx).await,
            Command::Approvals(cmd) => cmd.run(ctx).await,
            Command::Alerts(cmd) => cmd.run(ctx).await,
            Command::Templates(cmd) => cmd.run(ctx).await,
            Command::Deployments(cmd) => cmd.run(ctx).await,
            Command::Secrets(cmd) => cmd.run(ctx).await,
            Command::Releases(cmd) => cmd.run(ctx).await,
            Command::Events(cmd) => cmd.run(ctx).await,
            Command::Exec(cmd) => cmd.run(ctx).await,
            Command::Cp(cmd) => cmd.run(ctx).await,
            Command::Ssh(cmd) => cmd.run(ctx).await,
            Command::ForwardPort(cmd) => cmd.run(ctx).await,
            Command::Proxy(cmd) => cmd.run(ctx).await,
            Command::SshConfig(cmd) => cmd.run(ctx).await,
            Command::Kubeconfig(cmd) => cmd.run(ctx).await,
            Command::KubeCredential(cmd) => cmd.run(ctx).await,
            Command::Logs(cmd) => cmd.run(ctx).await,
            Command::Metrics(cmd) => cmd.run(ctx).await,
            Command::Audit(cmd) => cmd.run(ctx).await,
            Command::Os(cmd) => cmd.run(ctx).await,
            Command::Quickstart(cmd) => cmd.run(ctx).await,
            Command::Completions(cmd) => cmd.run(ctx).await,
        }
    }
}

/// How a command that did its job ended, which decides the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1: the request went through, but what it asked for did not
    /// happen (an action failed, or did not finish in time).
    Failed { reason: String },
    /// A remote command's exit status, passed on (`tether exec`, `tether ssh`).
    Exited(i32),
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Labels(#[from] LabelError),
    #[error(transparent)]
    Login(#[from] login::LoginError),
    #[error(transparent)]
    Actions(#[from] actions::ActionsError),
    #[error(transparent)]
    Quickstart(#[from] quickstart::QuickstartError),
    #[error(transparent)]
    Ssh(#[from] ssh::SshError),
    #[error(transparent)]
    OsEdit(#[from] os::OsEditError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write to standard output")]
    Write(#[source] std::io::Error),
    #[error("cannot use {}", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: is the port in use?")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What every command gets from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    pub output: OutputFormat,
    pub config_path: PathBuf,
    pub server_override: Option<String>,
    /// `TETHER_CA_FILE`: the CA to trust instead of the config's.
    pub ca_file_override: Option<PathBuf>,
    /// `TETHER_API_KEY`: a service account's key, used instead of the session.
    pub api_key: Option<String>,
}

impl Context {
    /// A client for the logged-in session of the config file, or for the
    /// API key of `TETHER_API_KEY`: then no login is needed, with the
    /// server from `--server`/`TETHER_SERVER` and the CA from
    /// `TETHER_CA_FILE`, each else from the config file.
    pub fn client(&self) -> Result<ApiClient, CommandError> {
        let Some(key) = &self.api_key else {
            let config = CliConfig::load(&self.config_path)?;
            let ca_pem = config.read_ca()?;
            let server = self.server_override.as_deref().unwrap_or(&config.server);
            return Ok(ApiClient::new(server, &ca_pem, Some(config.token))?);
        };
        let (server, ca_file) = match (self.server_override.clone(), self.ca_file_override.clone())
        {
            (Some(server), Some(ca_file)) => (server, ca_file),
            (server, ca_file) => {
                let config = CliConfig::load(&self.config_path).map_err(|error| match error {
                    ConfigError::NotFound { .. } => CommandError::Usage(
                        "TETHER_API_KEY is set but the server or its CA is not: set TETHER_SERVER and TETHER_CA_FILE, or log in once with `tether login`".to_owned(),
                    ),
                    other => other.into(),
                })?;
                (
                    server.unwrap_or(config.server),
                    ca_file.unwrap_or(config.ca_file),
                )
            }
        };
        let ca_pem = std::fs::read(&ca_file).map_err(|source| CommandError::Local {
            path: ca_file.clone(),
            source,
        })?;
        Ok(ApiClient::new(&server, &ca_pem, Some(key.clone()))?)
    }
}

/// Writes `text` to `path`, readable by its owner only: kubeconfigs and
/// provisioning keys hold secrets.
/// A resource read from a YAML or JSON file (`-`: stdin), with the field
/// that does not fit named by its path.
pub fn read_document<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    what: &str,
) -> Result<T, CommandError> {
    use std::io::Read as _;
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|source| CommandError::Local {
        path: path.to_owned(),
        source,
    })?;
    let document = serde_yaml::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(document).map_err(|err| {
        let at = err.path().to_string();
        CommandError::Usage(format!(
            "{} is not {what}: {}{}",
            path.display(),
            if at == "." {
                String::new()
            } else {
                format!("{at}: ")
            },
            err.into_inner()
        ))
    })
}

pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// Parses `30s`, `5m`, `1h 30m` (humantime); at least one second, because
/// tetherd counts in whole seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(s)
        .map_err(|err| format!("{err}; write a duration such as 30s, 5m or 1h"))?;
    if duration < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_humantime_and_at_least_a_second() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("500ms").is_err());
        let err = parse_duration("soon").expect_err("not a duration");
        assert!(err.contains("30s"), "{err}");
    }
}
