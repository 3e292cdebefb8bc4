//! `tether releases …`: the agent's own releases (issue 19), published to
//! tetherd, which signs them, and rolled out to devices as a deployment.

use std::path::{Path, PathBuf};

use futures::StreamExt as _;
use tether_proto::desired::agent_release::elf_platform;
use tether_proto::desired::resources::{
    CreateDeployment, Deployment, DeploymentSpecification, PublishedRelease, RolloutPolicy, Target,
};
use tokio::io::AsyncReadExt as _;

use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  # Publish the agent built for this machine's platform (read from the binary)
  tether releases publish target/release/tether-agent --version 1.4.0

  # An arm64 build, platform named
  tether releases publish tether-agent-arm64 --version 1.4.0 --platform linux-aarch64

  # Roll it out to the devices labelled site=berlin, 10 at a time
  tether releases rollout 1.4.0 -l site=berlin --batch-size 10
  tether deployments status tether-agent";

/// Bytes read from the binary per piece of the upload.
const UPLOAD_PIECE: usize = 256 * 1024;

/// Agent releases: publish tether-agent builds and roll them out.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum Releases {
    /// Publish an agent binary as a release; tetherd checks and signs it.
    #[command(after_long_help = EXAMPLES)]
    Publish(Publish),
    /// List the agent releases.
    #[command(
        after_long_help = "Examples:\n  tether releases list\n  tether releases list -o json"
    )]
    List,
    /// Show a release: each platform's SHA-256, size and signature.
    #[command(after_long_help = "Examples:\n  tether releases get 1.4.0 -o yaml")]
    Get { version: String },
    /// Delete a release no deployment names.
    #[command(after_long_help = "Examples:\n  tether releases delete 1.3.0")]
    Delete { version: String },
    /// Roll a release out to devices by label: creates or updates the
    /// deployment that carries it (see `tether deployments status`).
    #[command(after_long_help = "\
Examples:
  tether releases rollout 1.4.0 -l site=berlin
  tether releases rollout 1.4.0 -l fleet=pilot --batch-percent 10 --max-failure-percent 5
  tether deployments status tether-agent

  # Go back to an older release: agents refuse a downgrade unless it is allowed
  tether releases rollout 1.3.2 -l site=berlin --allow-downgrade")]
    Rollout(Rollout),
}

#[derive(Debug, clap::Args)]
pub struct Publish {
    /// The tether-agent binary.
    file: PathBuf,
    /// The release's version: what the binary reports as its version.
    #[arg(long)]
    version: String,
    /// linux-x86_64 or linux-aarch64; read from the binary when absent.
    #[arg(long)]
    platform: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Rollout {
    /// The release's version.
    version: String,
    /// The devices that run it, by labels (key=value,key!=value,…).
    #[arg(short = 'l', long = "selector")]
    selector: String,
    /// The deployment that carries the agent release.
    #[arg(long, default_value = "tether-agent")]
    name: String,
    /// Devices per batch.
    #[arg(long, conflicts_with = "batch_percent")]
    batch_size: Option<u32>,
    /// Per cent of the devices per batch (default 25).
    #[arg(long)]
    batch_percent: Option<u8>,
    /// Pause, and put failed devices back, past this per cent of failures.
    #[arg(long)]
    max_failure_percent: Option<u8>,
    /// Let devices running a newer agent take this older release; without
    /// it they refuse it (an old release may have flaws fixed since).
    /// Each rollout says it again: a later one without it refuses.
    #[arg(long)]
    allow_downgrade: bool,
}

impl Rollout {
    /// `spec` (the deployment's, or a new one) carrying this rollout.
    fn apply_to(&self, spec: Option<DeploymentSpecification>) -> DeploymentSpecification {
        let mut spec = spec.unwrap_or_else(|| DeploymentSpecification {
            target: Target {
                device: None,
                selector: None,
            },
            hostname: None,
            charts: Vec::new(),
            values: Default::default(),
            processes: Default::default(),
            config_files: Default::default(),
            rollout: RolloutPolicy::default(),
            agent_release: None,
            allow_agent_downgrade: false,
        });
        spec.target = Target {
            device: None,
            selector: Some(self.selector.clone()),
        };
        spec.agent_release = Some(self.version.clone());
        spec.allow_agent_downgrade = self.allow_downgrade;
        if let Some(size) = self.batch_size {
            spec.rollout.batch_size = Some(size);
        }
        if let Some(percent) = self.batch_percent {
            spec.rollout.batch_size = None;
            spec.rollout.batch_percent = percent;
        }
        if let Some(percent) = self.max_failure_percent {
            spec.rollout.max_failure_percent = percent;
        }
        spec
    }
}

impl Releases {
    pub fn description(&self) -> String {
        match self {
            Releases::Publish(publish) => format!(
                "publish {} as agent release {:?}",
                publish.file.display(),
                publish.version
            ),
            Releases::List => "list agent releases".to_owned(),
            Releases::Get { version } => format!("show agent release {version:?}"),
            Releases::Delete { version } => format!("delete agent release {version:?}"),
            Releases::Rollout(rollout) => format!(
                "roll agent release {:?} out to -l {}",
                rollout.version, rollout.selector
            ),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        match self {
            Releases::Publish(publish) => {
                let (file, length, platform) = open_binary(&publish.file, publish.platform).await?;
                let pieces = futures::stream::unfold(file, |mut file| async move {
                    let mut piece = vec![0; UPLOAD_PIECE];
                    match file.read(&mut piece).await {
                        Ok(0) => None,
                        Ok(n) => {
                            piece.truncate(n);
                            Some((Ok::<_, std::io::Error>(piece), file))
                        }
                        Err(error) => Some((Err(error), file)),
                    }
                })
                .boxed();
                let (created, release) = client
                    .publish_release(
                        &publish.version,
                        &platform,
                        reqwest::Body::wrap_stream(pieces),
                        length,
                    )
                    .await?;
                output::print(ctx.output, &release, |r: &PublishedRelease| {
                    let sha256 = r
                        .binaries
                        .get(&platform)
                        .map(|b| b.binary.sha256.as_str())
                        .unwrap_or_default();
                    if created {
                        format!(
                            "release/{} published for {platform} (sha256 {sha256}); roll it out with `tether releases rollout {} -l SELECTOR`",
                            r.version, r.version
                        )
                    } else {
                        format!(
                            "release/{} for {platform} was already published with these bytes (sha256 {sha256}); nothing changed",
                            r.version
                        )
                    }
                })?;
            }
            Releases::List => {
                let releases = client.list_releases().await?;
                if releases.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!(
                        "No agent releases; publish one with `tether releases publish FILE --version V`."
                    );
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &releases, |r: &Vec<PublishedRelease>| table(r))?;
            }
            Releases::Get { version } => {
                let release = client.get_release(&version).await?;
                output::print(ctx.output, &release, describe)?;
            }
            Releases::Delete { version } => {
                client.delete_release(&version).await?;
                output::emit(&format!("release/{version} deleted"))?;
            }
            Releases::Rollout(rollout) => {
                let existing = match client.get_deployment(&rollout.name).await {
                    Ok(deployment) => Some(deployment.spec),
                    Err(error) if error.status() == Some(reqwest::StatusCode::NOT_FOUND) => None,
                    Err(error) => return Err(error.into()),
                };
                let deployment = match existing {
                    Some(spec) => {
                        client
                            .update_deployment(&rollout.name, &rollout.apply_to(Some(spec)))
                            .await?
                    }
                    None => {
                        client
                            .create_deployment(&CreateDeployment {
                                name: rollout.name.clone(),
                                spec: rollout.apply_to(None),
                            })
                            .await?
                    }
                };
                output::print(ctx.output, &deployment, |d: &Deployment| {
                    format!(
                        "deployment/{} at revision {} rolls agent release {} out to -l {} (tether deployments status {})",
                        d.name, d.revision, rollout.version, rollout.selector, d.name
                    )
                })?;
            }
        }
        Ok(Outcome::Success)
    }
}

/// The binary opened for upload, its length, and its platform: `given`,
/// or read from its ELF header.
async fn open_binary(
    path: &Path,
    given: Option<String>,
) -> Result<(tokio::fs::File, u64, String), CommandError> {
    let local = |source| CommandError::Local {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
    let length = file.metadata().await.map_err(local)?.len();
    let platform = match given {
        Some(platform) => platform,
        None => {
            let mut header = Vec::with_capacity(64);
            (&mut file)
                .take(64)
                .read_to_end(&mut header)
                .await
                .map_err(local)?;
            // Read from the start again for the upload.
            file = tokio::fs::File::open(path).await.map_err(local)?;
            elf_platform(&header).map_err(|problem| {
                CommandError::Usage(format!(
                    "{} {problem}; give --platform to publish it anyway",
                    path.display()
                ))
            })?
        }
    };
    Ok((file, length, platform))
}

fn describe(release: &PublishedRelease) -> String {
    let mut text = format!("Version:  {}\nBinaries:", release.version);
    for (platform, published) in &release.binaries {
        text.push_str(&format!(
            "\n  {platform}:\n    SHA-256:    {}\n    Size:       {} bytes\n    Signature:  {}\n    Published:  {} by {}",
            published.binary.sha256,
            published.binary.size,
            published.binary.signature,
            output::timestamp(published.created_at),
            published.created_by,
        ));
    }
    text
}

fn table(releases: &[PublishedRelease]) -> String {
    output::columns(
        ["VERSION", "PLATFORMS", "PUBLISHED"],
        releases
            .iter()
            .map(|r| {
                [
                    r.version.clone(),
                    r.binaries.keys().cloned().collect::<Vec<_>>().join(", "),
                    r.binaries
                        .values()
                        .map(|b| b.created_at)
                        .max()
                        .map(output::timestamp)
                        .unwrap_or_default(),
                ]
            })
            .collect(),
    )
}
