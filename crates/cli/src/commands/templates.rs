//! `tether templates …`: chart templates (seed 002), the charts
//! deployments put on clusters.

use std::path::PathBuf;

use serde_json::{Map, Value};
use tether_proto::desired::resources::{ChartTemplate, ChartTemplateSpec, CreateChartTemplate};

use super::{CommandError, Context, Outcome, read_document};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  # A chart from a Helm repository, with values; \"{{uuid}}\", \"{{name}}\"
  # and \"{{hostname}}\" become the device, the deployment and its node
  tether templates create edge-agent --chart edge-agent \\
      --source https://charts.example.com/ --version 1.4.0 --values values.yaml

  # The whole spec from a file (YAML or JSON: chart, source, version,
  # namespace, values)
  tether templates create edge-agent -f edge-agent.yaml

  # A new spec: every deployment that uses it rolls out a new revision
  tether templates update edge-agent -f edge-agent.yaml";

/// Chart templates: charts deployments can put on clusters.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum Templates {
    /// Create a template.
    #[command(after_long_help = EXAMPLES)]
    Create(Create),
    /// Replace a template's spec; deployments using it roll out again.
    #[command(
        after_long_help = "Examples:\n  tether templates update edge-agent -f edge-agent.yaml"
    )]
    Update {
        name: String,
        /// The spec, YAML or JSON (`-`: stdin).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List the templates.
    #[command(
        after_long_help = "Examples:\n  tether templates list\n  tether templates list -o yaml"
    )]
    List,
    /// Show a template.
    #[command(after_long_help = "Examples:\n  tether templates get edge-agent")]
    Get { name: String },
    /// Delete a template no deployment uses.
    #[command(after_long_help = "Examples:\n  tether templates delete edge-agent")]
    Delete { name: String },
}

#[derive(Debug, clap::Args)]
pub struct Create {
    /// Lowercase letters, digits and '-'.
    name: String,
    /// The whole spec, YAML or JSON (`-`: stdin); instead of the flags below.
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with_all = ["chart", "source", "version", "namespace", "values"])]
    file: Option<PathBuf>,
    /// The chart's name in its repository.
    #[arg(long, required_unless_present = "file")]
    chart: Option<String>,
    /// A Helm repository URL (https://…) or an OCI reference (oci://…).
    #[arg(long, required_unless_present = "file")]
    source: Option<String>,
    /// The chart version; the newest if absent.
    #[arg(long)]
    version: Option<String>,
    /// The namespace releases go into.
    #[arg(long)]
    namespace: Option<String>,
    /// values.yaml (YAML or JSON).
    #[arg(long, value_name = "FILE")]
    values: Option<PathBuf>,
}

impl Create {
    fn spec(self) -> Result<ChartTemplateSpec, CommandError> {
        if let Some(file) = &self.file {
            return read_document(file, "a chart template spec");
        }
        let values: Map<String, Value> = match &self.values {
            Some(file) => read_document(file, "a values object")?,
            None => Map::new(),
        };
        Ok(ChartTemplateSpec {
            chart: self.chart.unwrap_or_default(),
            source: self.source.unwrap_or_default(),
            version: self.version,
            namespace: self.namespace,
            values,
        })
    }
}

impl Templates {
    pub fn description(&self) -> String {
        match self {
            Templates::Create(create) => format!("create template {:?}", create.name),
            Templates::Update { name, .. } => format!("update template {name:?}"),
            Templates::List => "list templates".to_owned(),
            Templates::Get { name } => format!("show template {name:?}"),
            Templates::Delete { name } => format!("delete template {name:?}"),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        match self {
            Templates::Create(create) => {
                let name = create.name.clone();
                let template = client
                    .create_template(&CreateChartTemplate {
                        name,
                        spec: create.spec()?,
                    })
                    .await?;
                output::print(ctx.output, &template, |t: &ChartTemplate| {
                    format!("template/{} created\n\n{}", t.name, describe(t))
                })?;
            }
            Templates::Update { name, file } => {
                let spec = read_document(&file, "a chart template spec")?;
                let template = client.update_template(&name, &spec).await?;
                output::print(ctx.output, &template, |t: &ChartTemplate| {
                    format!("template/{} updated\n\n{}", t.name, describe(t))
                })?;
            }
            Templates::List => {
                let templates = client.list_templates().await?;
                if templates.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!(
                        "No templates; create one with `tether templates create NAME --chart CHART --source URL`."
                    );
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &templates, |t: &Vec<ChartTemplate>| table(t))?;
            }
            Templates::Get { name } => {
                let template = client.get_template(&name).await?;
                output::print(ctx.output, &template, describe)?;
            }
            Templates::Delete { name } => {
                client.delete_template(&name).await?;
                output::emit(&format!("template/{name} deleted"))?;
            }
        }
        Ok(Outcome::Success)
    }
}

fn describe(template: &ChartTemplate) -> String {
    let spec = &template.spec;
    let none = || "-".to_owned();
    format!(
        "Name:       {}\nChart:      {}\nSource:     {}\nVersion:    {}\nNamespace:  {}\nUsed by:    {}\nUpdated:    {}\nValues:\n{}",
        template.name,
        spec.chart,
        spec.source,
        spec.version
            .clone()
            .unwrap_or_else(|| "(newest)".to_owned()),
        spec.namespace.clone().unwrap_or_else(none),
        if template.used_by.is_empty() {
            none()
        } else {
            template.used_by.join(", ")
        },
        output::timestamp(template.updated_at),
        indent(&serde_yaml::to_string(&spec.values).unwrap_or_default()),
    )
}

/// The values as YAML, indented under their heading.
fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn table(templates: &[ChartTemplate]) -> String {
    output::columns(
        ["NAME", "CHART", "VERSION", "SOURCE", "USED BY", "UPDATED"],
        templates
            .iter()
            .map(|t| {
                [
                    t.name.clone(),
                    t.spec.chart.clone(),
                    t.spec.version.clone().unwrap_or_else(|| "-".to_owned()),
                    t.spec.source.clone(),
                    t.used_by.join(","),
                    output::timestamp(t.updated_at),
                ]
            })
            .collect(),
    )
}
