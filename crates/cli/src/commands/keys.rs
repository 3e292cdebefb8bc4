//! `tether keys add|list|remove`: the SSH public keys that log you in to
//! devices' management shells (ADR 0023), through your own tunnels only.

use std::io::Read as _;
use std::path::PathBuf;

use tether_proto::api::{AddSshKey, SshKey};

use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  tether keys add ~/.ssh/id_ed25519.pub
  tether keys list
  tether keys remove 0193a1f2-…
  ssh -o ProxyCommand='tether proxy --embedded %h' admin@edge-1

ed25519 and ECDSA keys are accepted. A key works for shells opened after it
is added; a removed key no longer works from the next shell on.";
const ADD_EXAMPLES: &str = "\
Examples:
  tether keys add ~/.ssh/id_ed25519.pub
  tether keys add ~/.ssh/id_ecdsa.pub --name laptop
  ssh-add -L | head -1 | tether keys add -";

/// Your SSH public keys for devices' management shells.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum Keys {
    /// Register a public key (a .pub file, or `-` for stdin).
    #[command(after_long_help = ADD_EXAMPLES)]
    Add {
        /// The public key file, or `-` to read it from stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// What to call it [default: the key's comment].
        #[arg(long)]
        name: Option<String>,
    },
    /// List your keys with their fingerprints.
    #[command(after_long_help = "Examples:\n  tether keys list\n  tether keys list -o json")]
    List,
    /// Remove a key: shells opened from now on refuse it.
    #[command(after_long_help = "Examples:\n  tether keys remove 3f2c9a")]
    Remove {
        /// The key's id, from `tether keys list`.
        id: String,
    },
}

impl Keys {
    pub fn description(&self) -> String {
        match self {
            Keys::Add { file, .. } => format!("add the SSH key {}", file.display()),
            Keys::List => "list your SSH keys".to_owned(),
            Keys::Remove { id } => format!("remove SSH key {id}"),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        match self {
            Keys::Add { file, name } => {
                let public_key = read_key(&file)?;
                let key = ctx
                    .client()?
                    .add_ssh_key(&AddSshKey { public_key, name })
                    .await?;
                output::emit(&format!(
                    "Added key {} ({}) with id {}.",
                    key.name, key.fingerprint, key.id
                ))?;
            }
            Keys::List => {
                let keys = ctx.client()?.list_ssh_keys().await?;
                if keys.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!("No SSH keys; add one with `tether keys add ~/.ssh/id_ed25519.pub`.");
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &keys, |keys: &Vec<SshKey>| table(keys))?;
            }
            Keys::Remove { id } => {
                ctx.client()?.remove_ssh_key(&id).await?;
                output::emit(&format!("Removed key {id}."))?;
            }
        }
        Ok(Outcome::Success)
    }
}

fn read_key(file: &PathBuf) -> Result<String, CommandError> {
    let read = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(file)
    };
    read.map_err(|source| {
        CommandError::Usage(format!(
            "cannot read the public key {}: {source}",
            file.display()
        ))
    })
}

fn table(keys: &[SshKey]) -> String {
    output::columns(
        ["ID", "NAME", "FINGERPRINT", "ADDED"],
        keys.iter()
            .map(|key| {
                [
                    key.id.clone(),
                    key.name.clone(),
                    key.fingerprint.clone(),
                    output::timestamp(key.created_at),
                ]
            })
            .collect(),
    )
}
