//! `tether policies …`: provisioning policies (seed 004) and their keys.

use std::path::PathBuf;
use std::time::Duration;

use tether_proto::provisioning::{
    CreateKeyRequest, CreatePolicy, DeviceTemplate, Policy, PolicySpec, ProvisioningKeyInfo,
    ProvisioningMode, TemplateMetadata,
};

use super::{CommandError, Context, Outcome, parse_duration};
use crate::labels::{self, Label};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  # Devices booted with this policy's key register themselves; the same
  # hardware (by serial number) registering again keeps its device
  tether policies create lab-pis --mode UNATTENDED \\
      --identity-field status.facts.hardwareSerial \\
      -l device=raspberry-pi --template-spec '{\"loggingConfig\": {\"priority\": 7}}'

  # Seed 004's form: the whole spec as JSON
  tether policies create lab-pis --spec '{\"mode\": \"MANUAL\", \"identityFieldPaths\": [\"status.deviceInfo.hardwareInformation.system.serialNumber\"]}'

  # The key an OS image carries (tether os edit --provisioning-key), or an
  # agent reads (tether-agent --provisioning-key)
  tether policies keys create lab-pis --key-file lab-pis.key.json

Identity fields: status.facts.hardwareSerial, status.facts.machineId,
status.facts.hostname, status.facts.macs.<interface>.";

/// Provisioning policies: how devices register themselves.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum Policies {
    /// Create a policy.
    #[command(after_long_help = EXAMPLES)]
    Create(Create),
    /// List the policies.
    #[command(
        after_long_help = "Examples:\n  tether policies list\n  tether policies list -o json"
    )]
    List,
    /// Show a policy.
    #[command(after_long_help = "Examples:\n  tether policies get lab-pis")]
    Get { name: String },
    /// Delete a policy, its keys and its registrations; its devices stay.
    #[command(after_long_help = "Examples:\n  tether policies delete lab-pis")]
    Delete { name: String },
    /// A policy's provisioning keys.
    #[command(subcommand)]
    Keys(Keys),
}

#[derive(Debug, clap::Args)]
pub struct Create {
    /// Lowercase letters, digits and '-'.
    name: String,
    /// The whole policy spec as JSON (seed 004's form); instead of the
    /// flags below.
    #[arg(long, conflicts_with_all = ["mode", "identity_fields", "labels", "template_spec",
        "max_devices", "max_registrations_per_hour", "shared_identity_window_minutes"])]
    spec: Option<String>,
    /// UNATTENDED registers at once; MANUAL waits for `tether approvals approve`.
    #[arg(long, value_parser = parse_mode, required_unless_present = "spec")]
    mode: Option<ProvisioningMode>,
    /// A status path that identifies the same hardware again; repeat for more.
    #[arg(long = "identity-field", value_name = "PATH")]
    identity_fields: Vec<String>,
    /// A label the created devices get, KEY=VALUE; repeat for more.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    labels: Vec<Label>,
    /// The created devices' spec, as JSON sections.
    #[arg(long, value_name = "JSON")]
    template_spec: Option<String>,
    /// Most devices the policy creates without an operator [default: no cap].
    #[arg(long, value_name = "N")]
    max_devices: Option<u64>,
    /// Most registrations it approves by itself in an hour [default: 1000].
    #[arg(long, value_name = "N")]
    max_registrations_per_hour: Option<u64>,
    /// A second key pair claiming an identity within this many minutes
    /// waits for an operator [default: 10; 0: never].
    #[arg(long, value_name = "MINUTES")]
    shared_identity_window_minutes: Option<u64>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Keys {
    /// Make a key; its secret is shown this once.
    #[command(
        after_long_help = "Examples:\n  tether policies keys create lab-pis --key-file lab-pis.key.json\n  tether policies keys create lab-pis --expires-in 90d > key.json"
    )]
    Create {
        policy: String,
        /// Write the key to this file (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// The key stops working after this long (e.g. 90d); never if absent.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List a policy's keys (never their secrets).
    #[command(after_long_help = "Examples:\n  tether policies keys list lab-pis")]
    List { policy: String },
    /// Revoke a key: devices not yet registered with it are refused.
    #[command(after_long_help = "Examples:\n  tether policies keys revoke lab-pis 0193a1f2-…")]
    Revoke { policy: String, key: String },
}

fn parse_mode(text: &str) -> Result<ProvisioningMode, String> {
    match text.to_ascii_uppercase().as_str() {
        "UNATTENDED" => Ok(ProvisioningMode::Unattended),
        "MANUAL" => Ok(ProvisioningMode::Manual),
        _ => Err("use UNATTENDED or MANUAL".to_owned()),
    }
}

impl Policies {
    pub fn description(&self) -> String {
        match self {
            Policies::Create(create) => format!("create policy {:?}", create.name),
            Policies::List => "list policies".to_owned(),
            Policies::Get { name } => format!("show policy {name:?}"),
            Policies::Delete { name } => format!("delete policy {name:?}"),
            Policies::Keys(Keys::Create { policy, .. }) => {
                format!("create a key of policy {policy:?}")
            }
            Policies::Keys(Keys::List { policy }) => format!("list the keys of policy {policy:?}"),
            Policies::Keys(Keys::Revoke { policy, key }) => {
                format!("revoke key {key} of policy {policy:?}")
            }
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        match self {
            Policies::Create(create) => {
                let name = create.name.clone();
                let policy = client
                    .create_policy(&CreatePolicy {
                        name,
                        spec: create.spec()?,
                    })
                    .await?;
                output::print(ctx.output, &policy, |p: &Policy| {
                    format!("policy/{} created\n\n{}", p.name, describe(p))
                })?;
            }
            Policies::List => {
                let policies = client.list_policies().await?;
                if policies.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!(
                        "No policies; create one with `tether policies create NAME --mode UNATTENDED`."
                    );
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &policies, |p: &Vec<Policy>| table(p))?;
            }
            Policies::Get { name } => {
                let policy = client.get_policy(&name).await?;
                output::print(ctx.output, &policy, describe)?;
            }
            Policies::Delete { name } => {
                client.delete_policy(&name).await?;
                output::emit(&format!("policy/{name} deleted; its devices stay"))?;
            }
            Policies::Keys(Keys::Create {
                policy,
                key_file,
                expires_in,
            }) => {
                let expires_at = expires_in
                    .map(|d| chrono::Duration::from_std(d).map(|d| chrono::Utc::now() + d))
                    .transpose()
                    .map_err(|_| CommandError::Usage("--expires-in is too long".into()))?;
                let key = client
                    .create_provisioning_key(&policy, &CreateKeyRequest { expires_at })
                    .await?;
                let text = serde_json::to_string_pretty(&key)
                    .map_err(|e| CommandError::Usage(format!("cannot encode the key: {e}")))?
                    + "\n";
                match key_file {
                    Some(path) => {
                        super::write_private(&path, &text).map_err(|source| {
                            CommandError::Local {
                                path: path.clone(),
                                source,
                            }
                        })?;
                        output::emit(&format!(
                            "key {} of policy {policy} written to {}; it is shown only this once",
                            key.key_id,
                            path.display()
                        ))?;
                    }
                    None => output::emit(text.trim_end())?,
                }
            }
            Policies::Keys(Keys::List { policy }) => {
                let keys = client.list_provisioning_keys(&policy).await?;
                output::print(ctx.output, &keys, |k: &Vec<ProvisioningKeyInfo>| {
                    key_table(k)
                })?;
            }
            Policies::Keys(Keys::Revoke { policy, key }) => {
                client.revoke_provisioning_key(&policy, &key).await?;
                output::emit(&format!("key {key} of policy {policy} revoked"))?;
            }
        }
        Ok(Outcome::Success)
    }
}

impl Create {
    fn spec(self) -> Result<PolicySpec, CommandError> {
        if let Some(json) = self.spec {
            return serde_json::from_str(&json)
                .map_err(|e| CommandError::Usage(format!("--spec is not a policy spec: {e}")));
        }
        let spec = match self.template_spec {
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                CommandError::Usage(format!("--template-spec is not a JSON object: {e}"))
            })?,
            None => Default::default(),
        };
        Ok(PolicySpec {
            mode: self.mode.unwrap_or(ProvisioningMode::Unattended),
            identity_field_paths: self.identity_fields,
            template: DeviceTemplate {
                metadata: TemplateMetadata {
                    labels: labels::to_map(&self.labels),
                },
                spec,
            },
            max_devices: self.max_devices,
            max_registrations_per_hour: self.max_registrations_per_hour,
            shared_identity_window_minutes: self.shared_identity_window_minutes,
        })
    }
}

fn mode(mode: ProvisioningMode) -> &'static str {
    match mode {
        ProvisioningMode::Unattended => "UNATTENDED",
        ProvisioningMode::Manual => "MANUAL",
    }
}

fn describe(policy: &Policy) -> String {
    let labels: Vec<String> = policy
        .spec
        .template
        .metadata
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let none = || "(none)".to_owned();
    format!(
        "Name:             {}\nMode:             {}\nIdentity fields:  {}\nTemplate labels:  {}\nTemplate spec:    {}\nMax devices:      {}\nRate:             {} registrations/hour\nShared identity:  {}\nDevices:          {}\nPending:          {}\nCreated:          {}",
        policy.name,
        mode(policy.spec.mode),
        if policy.spec.identity_field_paths.is_empty() {
            "(none: every registration is a new device)".to_owned()
        } else {
            policy.spec.identity_field_paths.join(", ")
        },
        if labels.is_empty() {
            none()
        } else {
            labels.join(", ")
        },
        if policy.spec.template.spec.is_empty() {
            none()
        } else {
            serde_json::Value::Object(policy.spec.template.spec.clone()).to_string()
        },
        policy
            .spec
            .max_devices
            .map_or_else(|| "(no cap)".to_owned(), |n| n.to_string()),
        policy.spec.registrations_per_hour(),
        match policy.spec.shared_identity_window_minutes() {
            0 => "(not checked)".to_owned(),
            minutes => format!("a second key pair within {minutes} min waits for approval"),
        },
        policy.devices,
        policy.pending_approvals,
        output::timestamp(policy.created_at),
    )
}

fn table(policies: &[Policy]) -> String {
    output::columns(
        ["NAME", "MODE", "IDENTITY", "DEVICES", "PENDING", "CREATED"],
        policies
            .iter()
            .map(|p| {
                [
                    p.name.clone(),
                    mode(p.spec.mode).to_owned(),
                    p.spec.identity_field_paths.join(","),
                    p.devices.to_string(),
                    p.pending_approvals.to_string(),
                    output::timestamp(p.created_at),
                ]
            })
            .collect(),
    )
}

fn key_table(keys: &[ProvisioningKeyInfo]) -> String {
    let time =
        |at: Option<chrono::DateTime<chrono::Utc>>| at.map_or("-".to_owned(), output::timestamp);
    output::columns(
        ["KEY", "CREATED", "BY", "EXPIRES", "REVOKED", "LAST USED"],
        keys.iter()
            .map(|k| {
                [
                    k.key_id.clone(),
                    output::timestamp(k.created_at),
                    k.created_by.clone(),
                    time(k.expires_at),
                    time(k.revoked_at),
                    time(k.last_used_at),
                ]
            })
            .collect(),
    )
}
