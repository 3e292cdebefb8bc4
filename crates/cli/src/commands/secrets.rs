//! `tether secrets …`: write-only secrets (seed 002, ADR 0030), sealed by
//! tetherd to each targeted device's key. The value is read from a file,
//! from a pipe, or at a prompt that does not echo; never from the command
//! line (where `ps` and shell history would show it), and never shown.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use base64::Engine;
use tether_proto::desired::resources::Target;
use tether_proto::secrets::{Secret, SetSecret};

use super::login::prompt_hidden;
use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat};

const SET_EXAMPLES: &str = "\
Examples:
  # Typed at a prompt that does not echo it
  tether secrets set db-password --device pi-17

  # From a pipe, byte for byte (printf '%s' leaves out the newline)
  printf '%s' \"$DB_PASSWORD\" | tether secrets set db-password -l site=berlin

  # From a file (a key, a certificate)
  tether secrets set tls-key -l site=berlin --from-file tls.key

  # Setting it again re-seals it for every device targeted now: devices
  # that matched later or changed their key (`stale`) get it too
  tether secrets set db-password -l site=berlin --from-file db-password.txt";

/// Write-only secrets: sealed to each device's key, readable on the device only.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = SET_EXAMPLES)]
pub enum Secrets {
    /// Create or replace a secret: sealed to every targeted device's key.
    #[command(after_long_help = SET_EXAMPLES)]
    Set(Set),
    /// List the secrets and where each is sealed (never the values).
    #[command(after_long_help = "Examples:\n  tether secrets list\n  tether secrets list -o json")]
    List,
    /// Show where a secret is sealed, and which devices need it set again.
    #[command(after_long_help = "Examples:\n  tether secrets get db-password")]
    Get { name: String },
    /// Delete a secret; the devices delete their copies.
    #[command(after_long_help = "Examples:\n  tether secrets delete db-password")]
    Delete { name: String },
}

#[derive(Debug, clap::Args)]
pub struct Set {
    /// Lowercase letters, digits and '-'; the file name on the device.
    name: String,
    /// The one device that gets it.
    #[arg(
        long,
        conflicts_with = "selector",
        required_unless_present = "selector"
    )]
    device: Option<String>,
    /// Every device these labels pick (`site=berlin,tier!=test`).
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
    /// Read the value from this file; else from standard input.
    #[arg(long, value_name = "PATH")]
    from_file: Option<PathBuf>,
}

impl Set {
    /// The value: the file's bytes, stdin's bytes when piped, or a line
    /// typed at a prompt without echo.
    fn value(&self) -> Result<Vec<u8>, CommandError> {
        if let Some(path) = &self.from_file {
            return std::fs::read(path).map_err(|source| CommandError::Local {
                path: path.clone(),
                source,
            });
        }
        if std::io::stdin().is_terminal() {
            return Ok(prompt_hidden(&format!("Value of secret {}: ", self.name))?.into_bytes());
        }
        let mut value = Vec::new();
        std::io::stdin()
            .read_to_end(&mut value)
            .map_err(|source| CommandError::Local {
                path: PathBuf::from("-"),
                source,
            })?;
        Ok(value)
    }
}

impl Secrets {
    pub fn description(&self) -> String {
        match self {
            Secrets::Set(set) => format!("set secret {:?}", set.name),
            Secrets::List => "list secrets".to_owned(),
            Secrets::Get { name } => format!("show secret {name:?}"),
            Secrets::Delete { name } => format!("delete secret {name:?}"),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        match self {
            Secrets::Set(set) => {
                let value = set.value()?;
                if value.is_empty() {
                    return Err(CommandError::Usage(
                        "the value is empty: pipe it in, type it at the prompt or give --from-file"
                            .to_owned(),
                    ));
                }
                let request = SetSecret {
                    target: Target {
                        device: set.device.clone(),
                        selector: set.selector.clone(),
                    },
                    value: None,
                    value_base64: Some(base64::engine::general_purpose::STANDARD.encode(&value)),
                };
                let secret = client.set_secret(&set.name, &request).await?;
                output::print(ctx.output, &secret, |s: &Secret| {
                    format!("secret/{} set\n\n{}", s.name, describe(s))
                })?;
            }
            Secrets::List => {
                let secrets = client.list_secrets().await?;
                if secrets.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!(
                        "No secrets; set one with `tether secrets set NAME --device DEVICE`."
                    );
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &secrets, |s: &Vec<Secret>| table(s))?;
            }
            Secrets::Get { name } => {
                let secret = client.get_secret(&name).await?;
                output::print(ctx.output, &secret, describe)?;
            }
            Secrets::Delete { name } => {
                client.delete_secret(&name).await?;
                output::emit(&format!("secret/{name} deleted"))?;
            }
        }
        Ok(Outcome::Success)
    }
}

fn target(target: &Target) -> String {
    match (&target.device, &target.selector) {
        (Some(device), _) => format!("device {device}"),
        (None, Some(selector)) => format!("-l {selector}"),
        (None, None) => "-".to_owned(),
    }
}

fn list(devices: &[String]) -> String {
    if devices.is_empty() {
        "-".to_owned()
    } else {
        devices.join(", ")
    }
}

fn describe(secret: &Secret) -> String {
    let mut text = format!(
        "Name:         {}\nTarget:       {}\nVersion:      {}\nSealed for:   {}\nWithout key:  {}\nStale:        {}\nUpdated:      {}",
        secret.name,
        target(&secret.target),
        secret.version,
        list(&secret.sealed),
        list(&secret.without_key),
        list(&secret.stale),
        output::timestamp(secret.updated_at),
    );
    if !secret.stale.is_empty() || !secret.without_key.is_empty() {
        text.push_str(&format!(
            "\n\nSome targeted devices do not have it: run `tether secrets set {}` again (devices without a key get it once their agent has reported one).",
            secret.name
        ));
    }
    text
}

fn table(secrets: &[Secret]) -> String {
    output::columns(
        [
            "NAME",
            "TARGET",
            "VERSION",
            "SEALED",
            "WITHOUT KEY",
            "STALE",
            "UPDATED",
        ],
        secrets
            .iter()
            .map(|s| {
                [
                    s.name.clone(),
                    target(&s.target),
                    s.version.to_string(),
                    s.sealed.len().to_string(),
                    s.without_key.len().to_string(),
                    s.stale.len().to_string(),
                    output::timestamp(s.updated_at),
                ]
            })
            .collect(),
    )
}
