//! `tether service-accounts create|list|delete` and `… keys create|list|revoke`:
//! identities for scripts and CI, and their API keys (admins only).

use std::time::Duration;

use chrono::Utc;
use tether_proto::accounts::{ApiKey, CreateApiKey, CreateServiceAccount, Role, ServiceAccount};

use super::{CommandError, Context, Outcome, parse_duration};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  tether service-accounts create ci --role operator
  tether service-accounts keys create ci --expires-in 30d
  TETHER_API_KEY=tether_sa_… tether devices list
  tether service-accounts keys list ci
  tether service-accounts keys revoke ci 0193a1f2-…
  tether service-accounts delete ci

A key is sent as `Authorization: Bearer <key>`. The CLI uses TETHER_API_KEY
instead of a login, with the server and CA of the config file or of
TETHER_SERVER and TETHER_CA_FILE.";

/// Service accounts and their API keys, for scripts and CI (admins only).
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum ServiceAccounts {
    /// Create a service account with a role.
    #[command(after_long_help = "Examples:\n  tether service-accounts create ci --role operator")]
    Create {
        /// The account's name: a-z, 0-9, `.`, `_`, `-`.
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: Role,
    },
    /// List service accounts with their roles.
    #[command(after_long_help = "Examples:\n  tether service-accounts list")]
    List,
    /// Delete a service account: its keys stop working at once.
    #[command(after_long_help = "Examples:\n  tether service-accounts delete ci")]
    Delete {
        /// The account's name.
        name: String,
    },
    /// The account's API keys.
    #[command(subcommand)]
    Keys(Keys),
}

/// API keys of a service account.
#[derive(Debug, clap::Subcommand)]
pub enum Keys {
    /// Create a key, printed once; only its hash is kept.
    #[command(
        after_long_help = "Examples:\n  tether service-accounts keys create ci\n  tether service-accounts keys create ci --expires-in 30d"
    )]
    Create {
        /// The account's name.
        name: String,
        /// How long the key is valid, e.g. 30d or 12h [default: until revoked].
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List the account's keys: id, created, expires, last used, revoked.
    #[command(after_long_help = "Examples:\n  tether service-accounts keys list ci")]
    List {
        /// The account's name.
        name: String,
    },
    /// Revoke a key: it stops working at once and stays listed.
    #[command(
        after_long_help = "Examples:\n  tether service-accounts keys revoke ci 0193a1f2-7c1e-7d3a-9f00-5b6c1d2e3f40"
    )]
    Revoke {
        /// The account's name.
        name: String,
        /// The key's id, from `tether service-accounts keys list`.
        key_id: String,
    },
}

impl ServiceAccounts {
    pub fn description(&self) -> String {
        match self {
            ServiceAccounts::Create { name, .. } => format!("create service account {name}"),
            ServiceAccounts::List => "list service accounts".to_owned(),
            ServiceAccounts::Delete { name } => format!("delete service account {name}"),
            ServiceAccounts::Keys(Keys::Create { name, .. }) => {
                format!("create an API key for service account {name}")
            }
            ServiceAccounts::Keys(Keys::List { name }) => {
                format!("list the API keys of service account {name}")
            }
            ServiceAccounts::Keys(Keys::Revoke { name, key_id }) => {
                format!("revoke API key {key_id} of service account {name}")
            }
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        match self {
            ServiceAccounts::Create { name, role } => {
                client
                    .create_service_account(&CreateServiceAccount {
                        name: name.clone(),
                        role,
                    })
                    .await?;
                output::emit(&format!(
                    "Created service account {name} with role {role}; give it a key with `tether service-accounts keys create {name}`."
                ))?;
            }
            ServiceAccounts::List => {
                let accounts = client.list_service_accounts().await?;
                if accounts.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!("No service accounts.");
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &accounts, |accounts: &Vec<ServiceAccount>| {
                    accounts_table(accounts)
                })?;
            }
            ServiceAccounts::Delete { name } => {
                client.delete_service_account(&name).await?;
                output::emit(&format!(
                    "Deleted service account {name}; its keys stopped working."
                ))?;
            }
            ServiceAccounts::Keys(Keys::Create { name, expires_in }) => {
                let created = client
                    .create_api_key(
                        &name,
                        &CreateApiKey {
                            expires_in_seconds: expires_in.map(|ttl| ttl.as_secs()),
                        },
                    )
                    .await?;
                if ctx.output != OutputFormat::Table {
                    output::print(ctx.output, &created, |_| String::new())?;
                    return Ok(Outcome::Success);
                }
                let expiry = created.api_key.expires_at.map_or_else(
                    || "it does not expire; revoke it when done".to_owned(),
                    |at| format!("it expires at {}", output::timestamp(at)),
                );
                eprintln!(
                    "Created API key {} for service account {name}; {expiry}. The key is shown once:",
                    created.api_key.id
                );
                output::emit(&created.key)?;
            }
            ServiceAccounts::Keys(Keys::List { name }) => {
                let keys = client.list_api_keys(&name).await?;
                if keys.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!(
                        "No API keys; create one with `tether service-accounts keys create {name}`."
                    );
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &keys, |keys: &Vec<ApiKey>| keys_table(keys))?;
            }
            ServiceAccounts::Keys(Keys::Revoke { name, key_id }) => {
                client.revoke_api_key(&name, &key_id).await?;
                output::emit(&format!(
                    "Revoked API key {key_id} of service account {name}."
                ))?;
            }
        }
        Ok(Outcome::Success)
    }
}

fn accounts_table(accounts: &[ServiceAccount]) -> String {
    output::columns(
        ["NAME", "ROLE", "CREATED"],
        accounts
            .iter()
            .map(|account| {
                [
                    account.name.clone(),
                    account.role.to_string(),
                    output::timestamp(account.created_at),
                ]
            })
            .collect(),
    )
}

fn keys_table(keys: &[ApiKey]) -> String {
    let now = Utc::now();
    let or_never = |at: Option<chrono::DateTime<Utc>>, never: &str| {
        at.map_or_else(|| never.to_owned(), output::timestamp)
    };
    output::columns(
        ["ID", "CREATED", "EXPIRES", "LAST USED", "REVOKED"],
        keys.iter()
            .map(|key| {
                [
                    key.id.clone(),
                    output::timestamp(key.created_at),
                    or_never(key.expires_at, "never"),
                    output::age_or_none(now, key.last_used_at),
                    or_never(key.revoked_at, "-"),
                ]
            })
            .collect(),
    )
}
