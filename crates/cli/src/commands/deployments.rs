//! `tether deployments …`: what devices run (seed 002's edge deployments,
//! seed 003's supervised processes), rolled out in batches.

use std::path::PathBuf;

use serde_json::{Map, Value};
use tether_proto::desired::resources::{
    CreateDeployment, Deployment, DeploymentRollout, DeploymentSpecification, RolloutPhase,
    RolloutPolicy, Target,
};
use tether_proto::desired::updates::HoldKind;

use super::{CommandError, Context, Outcome, read_document};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  # The edge-agent chart on every device labelled site=berlin, pinned to
  # node-a, 10 devices at a time
  tether deployments create line-1 -l site=berlin --chart edge-agent \\
      --hostname node-a --values values.yaml --batch-size 10

  # Supervised processes and config files: the whole spec from a file
  tether deployments create web -f web.yaml

  # A new revision: rolls out in batches; failed devices go back
  tether deployments update web -f web.yaml
  tether deployments status web";

/// Deployments: what runs on which devices, rolled out in batches.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum Deployments {
    /// Create a deployment; it rolls out in batches.
    #[command(after_long_help = EXAMPLES)]
    Create(Create),
    /// Replace a deployment's spec: its next revision rolls out.
    #[command(after_long_help = "Examples:\n  tether deployments update web -f web.yaml")]
    Update {
        name: String,
        /// The spec, YAML or JSON (`-`: stdin).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List the deployments.
    #[command(
        after_long_help = "Examples:\n  tether deployments list\n  tether deployments list -o json"
    )]
    List,
    /// Show a deployment.
    #[command(after_long_help = "Examples:\n  tether deployments get web -o yaml")]
    Get { name: String },
    /// The rollout: per batch and per device.
    #[command(after_long_help = "Examples:\n  tether deployments status web")]
    Status { name: String },
    /// Go on with a paused rollout.
    #[command(after_long_help = "Examples:\n  tether deployments resume web")]
    Resume { name: String },
    /// Take a deployment off its devices and delete it.
    #[command(after_long_help = "Examples:\n  tether deployments delete web")]
    Delete { name: String },
}

#[derive(Debug, clap::Args)]
pub struct Create {
    /// Lowercase letters, digits and '-'.
    name: String,
    /// The whole spec, YAML or JSON (`-`: stdin); instead of the flags below.
    #[arg(short = 'f', long = "file", value_name = "FILE",
          conflicts_with_all = ["device", "selector", "hostname", "charts", "values"])]
    file: Option<PathBuf>,
    /// The one device it runs on.
    #[arg(long, conflicts_with = "selector")]
    device: Option<String>,
    /// The devices it runs on, by labels (key=value,key!=value,…).
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
    /// The node its charts run on; any node if absent.
    #[arg(long)]
    hostname: Option<String>,
    /// A chart template; repeat for more.
    #[arg(long = "chart", value_name = "TEMPLATE")]
    charts: Vec<String>,
    /// Values over the templates' (YAML or JSON).
    #[arg(long, value_name = "FILE")]
    values: Option<PathBuf>,
    /// Devices per batch (default: a quarter of them).
    #[arg(long)]
    batch_size: Option<u32>,
    /// Pause, and put failed devices back, past this per cent of failures.
    #[arg(long)]
    max_failure_percent: Option<u8>,
}

impl Create {
    fn spec(self) -> Result<DeploymentSpecification, CommandError> {
        let mut spec: DeploymentSpecification = match &self.file {
            Some(file) => read_document(file, "a deployment spec")?,
            None => DeploymentSpecification {
                target: Target {
                    device: self.device,
                    selector: self.selector,
                },
                hostname: self.hostname,
                charts: self.charts,
                values: match &self.values {
                    Some(file) => read_document(file, "a values object")?,
                    None => Map::new(),
                },
                processes: Default::default(),
                config_files: Default::default(),
                rollout: RolloutPolicy::default(),
                agent_release: None,
                allow_agent_downgrade: false,
            },
        };
        if let Some(size) = self.batch_size {
            spec.rollout.batch_size = Some(size);
        }
        if let Some(percent) = self.max_failure_percent {
            spec.rollout.max_failure_percent = percent;
        }
        Ok(spec)
    }
}

impl Deployments {
    pub fn description(&self) -> String {
        match self {
            Deployments::Create(create) => format!("create deployment {:?}", create.name),
            Deployments::Update { name, .. } => format!("update deployment {name:?}"),
            Deployments::List => "list deployments".to_owned(),
            Deployments::Get { name } => format!("show deployment {name:?}"),
            Deployments::Status { name } => format!("show the rollout of deployment {name:?}"),
            Deployments::Resume { name } => format!("resume the rollout of deployment {name:?}"),
            Deployments::Delete { name } => format!("delete deployment {name:?}"),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        match self {
            Deployments::Create(create) => {
                let name = create.name.clone();
                let deployment = client
                    .create_deployment(&CreateDeployment {
                        name,
                        spec: create.spec()?,
                    })
                    .await?;
                output::print(ctx.output, &deployment, |d: &Deployment| {
                    format!(
                        "deployment/{} created; rolling out (tether deployments status {})",
                        d.name, d.name
                    )
                })?;
            }
            Deployments::Update { name, file } => {
                let spec = read_document(&file, "a deployment spec")?;
                let deployment = client.update_deployment(&name, &spec).await?;
                output::print(ctx.output, &deployment, |d: &Deployment| {
                    format!(
                        "deployment/{} at revision {}; rolling out (tether deployments status {})",
                        d.name, d.revision, d.name
                    )
                })?;
            }
            Deployments::List => {
                let deployments = client.list_deployments().await?;
                if deployments.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!(
                        "No deployments; create one with `tether deployments create NAME -l KEY=VALUE --chart TEMPLATE` or `-f FILE`."
                    );
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &deployments, |d: &Vec<Deployment>| table(d))?;
            }
            Deployments::Get { name } => {
                let deployment = client.get_deployment(&name).await?;
                output::print(ctx.output, &deployment, describe)?;
            }
            Deployments::Status { name } => {
                let status = client.deployment_status(&name).await?;
                output::print(ctx.output, &status, rollout)?;
            }
            Deployments::Resume { name } => {
                client.resume_deployment(&name).await?;
                output::emit(&format!("deployment/{name} resumed"))?;
            }
            Deployments::Delete { name } => {
                client.delete_deployment(&name).await?;
                output::emit(&format!(
                    "deployment/{name} is being taken off its devices, then deleted"
                ))?;
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

fn describe(deployment: &Deployment) -> String {
    let spec = &deployment.spec;
    let yaml = |value: &Value| serde_yaml::to_string(value).unwrap_or_default();
    format!(
        "Name:       {}\nTarget:     {}\nHostname:   {}\nCharts:     {}\nProcesses:  {}\nAgent:      {}\nRevision:   {}\nRollout:    {}\nUpdated:    {}\nValues:\n{}",
        deployment.name,
        target(&spec.target),
        spec.hostname
            .clone()
            .unwrap_or_else(|| "(floating)".to_owned()),
        if spec.charts.is_empty() {
            "-".to_owned()
        } else {
            spec.charts.join(", ")
        },
        if spec.processes.is_empty() {
            "-".to_owned()
        } else {
            spec.processes
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        },
        spec.agent_release.as_deref().unwrap_or("-"),
        deployment.revision,
        deployment.rollout.as_str(),
        output::timestamp(deployment.updated_at),
        yaml(&Value::Object(spec.values.clone()))
            .lines()
            .map(|line| format!("  {line}"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

fn table(deployments: &[Deployment]) -> String {
    output::columns(
        ["NAME", "TARGET", "REVISION", "ROLLOUT", "UPDATED"],
        deployments
            .iter()
            .map(|d| {
                [
                    d.name.clone(),
                    target(&d.spec.target),
                    d.revision.to_string(),
                    d.rollout.as_str().to_owned(),
                    output::timestamp(d.updated_at),
                ]
            })
            .collect(),
    )
}

fn rollout(status: &DeploymentRollout) -> String {
    let mut text = format!(
        "Deployment {} revision {}: {}\n{} targeted, {} updated, {} ready, {} failed ({} put back)\n",
        status.name,
        status.revision,
        status.phase.as_str(),
        status.targeted,
        status.updated,
        status.ready,
        status.failed,
        status.rolled_back,
    );
    if let Some(reason) = &status.reason {
        let label = match status.phase {
            RolloutPhase::Paused => "Paused",
            _ => "Waiting",
        };
        text.push_str(&format!("{label}: {}\n", output::printable(reason)));
    }
    text.push('\n');
    text.push_str(&output::columns(
        ["DEVICE", "REVISION", "BATCH", "STATE", "REASON", "UPDATED"],
        status
            .devices
            .iter()
            .map(|d| {
                [
                    d.device.clone(),
                    d.revision.map_or("-".to_owned(), |r| r.to_string()),
                    d.batch.map_or("-".to_owned(), |b| b.to_string()),
                    match (d.rolled_back, d.state) {
                        (true, _) => "put back".to_owned(),
                        (false, Some(state)) => state.as_str().to_owned(),
                        (false, None) => "waiting".to_owned(),
                    },
                    d.reason.clone().unwrap_or_default(),
                    output::timestamp(d.updated_at),
                ]
            })
            .collect(),
    ));
    if !status.held.is_empty() {
        text.push_str("\nWaiting until they take updates:\n");
        text.push_str(&output::columns(
            ["DEVICE", "HELD BY", "REASON", "UNTIL"],
            status
                .held
                .iter()
                .flat_map(|d| {
                    d.holds.iter().map(|hold| {
                        [
                            d.device.clone(),
                            match (&hold.kind, &hold.name) {
                                (HoldKind::Lock, Some(name)) => format!("lock {name}"),
                                (HoldKind::Lock, None) => "lock".to_owned(),
                                (HoldKind::Spec, _) => "spec".to_owned(),
                                (HoldKind::Window, _) => "maintenance window".to_owned(),
                            },
                            output::printable(&hold.reason).into_owned(),
                            hold.until.map_or("-".to_owned(), output::timestamp),
                        ]
                    })
                })
                .collect(),
        ));
    }
    text
}
