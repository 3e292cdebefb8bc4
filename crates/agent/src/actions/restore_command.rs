//! `restore-command` (host mode, ADR 0020): `backup-database` copies a
//! Deployment's SQLite file consistently while the application runs and
//! uploads it over SFTP; `restore-database` downloads a backup, checks it,
//! halts the Deployment, swaps the file in and brings the Deployment back.
//!
//! The input and the mode are checked at once; the rest (the Deployment,
//! where its file is on the node, the transfer, the restore) runs in the
//! background (see `Dispatcher`), one at a time per Deployment (409).
//! The SFTP and SQLite steps run in the `tether-agent-restore` helper
//! ([`helper`]); the Kubernetes steps stay here. The SFTP password goes
//! only to the helper's stdin and into the SSH session ([`sftp::Server`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::manage_deployment::{ROLLOUT_COMPLETE, rollout_status, scale};
use super::{ActionError, Answer, Kubernetes};
use crate::kubernetes::{Client, Mode, check_name};
use crate::restore::helper::{self, HelperError, Step};
use crate::restore::sftp;
use crate::restore::volume::{self, Location, VolumeError};

/// The SFTP port when the request names none.
const DEFAULT_PORT: u16 = 22;
/// How long the Deployment's pods may take to go once scaled to 0: the
/// default termination grace period (30 s) and then some.
const PODS_GONE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the rollout may take once scaled back.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(120);
const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "restore-command runs only in host mode (--kubernetes host): the SQLite file is on the node, out of a pod's reach"
    )]
    NotHostMode,
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("deployment {deployment}'s SQLite file {path} does not exist on this node")]
    NoDatabase { deployment: String, path: String },
    #[error(transparent)]
    Helper(#[from] HelperError),
    #[error("cannot make the temporary directory {dir}")]
    Temp { dir: String, source: std::io::Error },
    #[error(
        "deployment {deployment} still has pods {seconds} s after it was scaled to 0 ({pods}); the database was not replaced"
    )]
    PodsStayed {
        deployment: String,
        seconds: u64,
        pods: String,
    },
    #[error(
        "deployment {deployment}'s rollout did not complete within {seconds} s of scaling it back ({status})"
    )]
    RolloutStuck {
        deployment: String,
        seconds: u64,
        status: String,
    },
}

impl RestoreError {
    pub fn status_code(&self) -> u16 {
        match self {
            RestoreError::NotHostMode => 503,
            RestoreError::Volume(e) => e.status_code(),
            RestoreError::NoDatabase { .. } => 422,
            RestoreError::Helper(e) => e.status_code(),
            RestoreError::Temp { .. } => 500,
            RestoreError::PodsStayed { .. } | RestoreError::RolloutStuck { .. } => 504,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    command: String,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Parameters {
    deployment: Option<String>,
    namespace: Option<String>,
    host: Option<String>,
    port: Option<i64>,
    user: Option<String>,
    password: Option<String>,
    remote_path: Option<String>,
    host_key_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Backup,
    Restore,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Backup => "backup-database",
            Command::Restore => "restore-database",
        }
    }
}

#[derive(Debug)]
struct Request {
    command: Command,
    namespace: String,
    deployment: String,
    server: sftp::Server,
    remote_path: String,
}

fn parse(input: &Value) -> Result<Request, ActionError> {
    let input: Input = serde_json::from_value(input.clone())
        .map_err(|e| ActionError::invalid("$", e.to_string()))?;
    let command = match input.command.as_str() {
        "backup-database" => Command::Backup,
        "restore-database" => Command::Restore,
        other => {
            return Err(ActionError::invalid(
                "$.command",
                format!("{other:?} is not backup-database or restore-database"),
            ));
        }
    };
    let p = input.parameters;
    let required = |value: Option<String>, field: &str| {
        value.filter(|v| !v.is_empty()).ok_or_else(|| {
            ActionError::invalid(format!("$.parameters.{field}"), "missing or empty")
        })
    };
    let deployment = required(p.deployment, "deployment")?;
    check_name(&deployment).map_err(|e| ActionError::invalid("$.parameters.deployment", e))?;
    let namespace = p
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    check_name(&namespace).map_err(|e| ActionError::invalid("$.parameters.namespace", e))?;
    let port = match p.port {
        None => DEFAULT_PORT,
        Some(port) => u16::try_from(port)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| {
                ActionError::invalid("$.parameters.port", format!("{port} is not 1 to 65535"))
            })?,
    };
    let host_key_fingerprint = required(p.host_key_fingerprint, "hostKeyFingerprint")?;
    check_fingerprint(&host_key_fingerprint)
        .map_err(|e| ActionError::invalid("$.parameters.hostKeyFingerprint", e))?;
    Ok(Request {
        command,
        namespace,
        deployment,
        server: sftp::Server {
            host: required(p.host, "host")?,
            port,
            user: required(p.user, "user")?,
            password: required(p.password, "password")?,
            host_key_fingerprint,
        },
        remote_path: required(p.remote_path, "remotePath")?,
    })
}

/// A fingerprint as `ssh-keygen -l -E sha256` prints it: `SHA256:` and the
/// hash in unpadded base64 (43 characters).
fn check_fingerprint(fingerprint: &str) -> Result<(), String> {
    let valid = fingerprint.strip_prefix("SHA256:").is_some_and(|hash| {
        hash.len() == 43
            && hash
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{fingerprint:?} is not a host key fingerprint as `ssh-keygen -l -E sha256 -f KEY.pub` prints it (SHA256: and 43 base64 characters)"
        ))
    }
}

/// What [`prepare`] found out and the background work needs.
struct Job {
    request: Request,
    client: Client,
    deployment: Value,
    /// The SQLite file on the node.
    database: PathBuf,
    /// The agent's state directory, where the transfer's copy is kept.
    temp_dir: PathBuf,
    /// The `tether-agent-restore` binary that does the SFTP and SQLite work.
    helper: PathBuf,
}

/// Checks the input and the mode now, and returns `(what is busy, the
/// work)`: the work, from finding the Deployment and its file on the node
/// on, runs in the background, one per Deployment at a time.
pub fn prepare(
    input: &Value,
    kubernetes: &Kubernetes,
) -> Result<
    (
        String,
        impl Future<Output = Result<Answer, ActionError>> + Send + 'static,
    ),
    ActionError,
> {
    let config = kubernetes.config.as_ref().ok_or(ActionError::NoCluster)?;
    let request = parse(input)?;
    if config.mode != Mode::Host {
        return Err(RestoreError::NotHostMode.into());
    }
    let busy = format!(
        "restore-command for deployment {}/{}",
        request.namespace, request.deployment
    );
    Ok((busy, prepared(request, kubernetes.clone())))
}

async fn prepared(request: Request, kubernetes: Kubernetes) -> Result<Answer, ActionError> {
    let client = kubernetes.client()?;
    let path = deployment_path(&request);
    let deployment = client.json(Method::GET, &path, None).await?;
    let database = on_node(&client, &request.namespace, &deployment).await?;
    let job = Job {
        request,
        client,
        deployment,
        database,
        temp_dir: kubernetes.state_dir.clone(),
        helper: kubernetes.restore_helper.clone(),
    };
    let started = Instant::now();
    let mut response = match job.request.command {
        Command::Backup => backup(&job).await?,
        Command::Restore => restore(&job).await?,
    };
    response["command"] = json!(job.request.command.as_str());
    response["deployment"] = json!(job.request.deployment);
    response["namespace"] = json!(job.request.namespace);
    response["database"] = json!(job.database.display().to_string());
    response["remotePath"] = json!(job.request.remote_path);
    response["tookMs"] = json!(started.elapsed().as_millis() as u64);
    Ok(response.into())
}

fn deployment_path(request: &Request) -> String {
    format!(
        "/apis/apps/v1/namespaces/{}/deployments/{}",
        request.namespace, request.deployment
    )
}

/// Where the Deployment's SQLite file is on this node: through its claim
/// and the bound PersistentVolume when the volume is a claim.
async fn on_node(
    client: &Client,
    namespace: &str,
    deployment: &Value,
) -> Result<PathBuf, ActionError> {
    match volume::locate(deployment).map_err(RestoreError::from)? {
        Location::Node(path) => Ok(path),
        Location::Claim { claim, within } => {
            let claim = client
                .json(
                    Method::GET,
                    &format!("/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}"),
                    None,
                )
                .await?;
            let name = volume::bound_volume(&claim).map_err(RestoreError::from)?;
            let bound = client
                .json(
                    Method::GET,
                    &format!("/api/v1/persistentvolumes/{name}"),
                    None,
                )
                .await?;
            Ok(volume::on_persistent_volume(&bound, &within).map_err(RestoreError::from)?)
        }
    }
}

/// Takes the online backup into a temporary file and uploads it.
async fn backup(job: &Job) -> Result<Value, ActionError> {
    if !job.database.is_file() {
        return Err(RestoreError::NoDatabase {
            deployment: job.request.deployment.clone(),
            path: job.database.display().to_string(),
        }
        .into());
    }
    let temp = TempDir::new(job)?;
    let bytes = run_step(
        job,
        Step::Backup {
            server: job.request.server.clone(),
            database: job.database.clone(),
            copy: temp.path().join("backup.db"),
            remote_path: job.request.remote_path.clone(),
        },
    )
    .await?;
    tracing::info!(
        deployment = job.request.deployment,
        database = %job.database.display(),
        host = job.request.server.host,
        remote_path = job.request.remote_path,
        bytes,
        "database backed up"
    );
    Ok(json!({"bytes": bytes}))
}

/// Downloads and checks the backup, then halts the Deployment, swaps the
/// file in and scales the Deployment back to what it was.
async fn restore(job: &Job) -> Result<Value, ActionError> {
    let temp = TempDir::new(job)?;
    let downloaded = temp.path().join("restore.db");
    // Checked by the helper before the application is stopped: a bad
    // backup costs nothing.
    let bytes = run_step(
        job,
        Step::Fetch {
            server: job.request.server.clone(),
            remote_path: job.request.remote_path.clone(),
            target: downloaded.clone(),
        },
    )
    .await?;

    let path = deployment_path(&job.request);
    let replicas = job.deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    tracing::warn!(
        deployment = job.request.deployment,
        replicas,
        "scaling to 0 to restore its database"
    );
    scale(&job.client, &path, 0).await?;
    let replaced = async {
        pods_gone(job).await?;
        run_step(
            job,
            Step::Replace {
                restored: downloaded.clone(),
                live: job.database.clone(),
            },
        )
        .await
    }
    .await;
    // Scaled back whatever happened: a failed restore leaves the old
    // database in place, and the application must not stay halted.
    let scaled_back = scale(&job.client, &path, replicas).await;
    replaced?;
    scaled_back?;
    let deployment = rolled_out(job, &path).await?;
    tracing::warn!(
        deployment = job.request.deployment,
        database = %job.database.display(),
        bytes,
        "database restored"
    );
    Ok(json!({
        "bytes": bytes,
        "replicas": replicas,
        "rolloutStatus": rollout_status(&deployment),
    }))
}

/// Waits until no pod of the Deployment is left, terminating ones
/// included: only then has the application closed the database.
async fn pods_gone(job: &Job) -> Result<(), ActionError> {
    let selector = label_selector(&job.deployment["spec"]["selector"]);
    let path = format!(
        "/api/v1/namespaces/{}/pods?labelSelector={}",
        job.request.namespace,
        url_encode(&selector)
    );
    let deadline = Instant::now() + PODS_GONE_TIMEOUT;
    loop {
        let pods = job.client.json(Method::GET, &path, None).await?;
        let names: Vec<&str> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pod| pod["metadata"]["name"].as_str())
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(RestoreError::PodsStayed {
                deployment: job.request.deployment.clone(),
                seconds: PODS_GONE_TIMEOUT.as_secs(),
                pods: names.join(", "),
            }
            .into());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits for the rollout after the scale back; the Deployment as it ends.
async fn rolled_out(job: &Job, path: &str) -> Result<Value, ActionError> {
    let deadline = Instant::now() + ROLLOUT_TIMEOUT;
    loop {
        let deployment = job.client.json(Method::GET, path, None).await?;
        let status = rollout_status(&deployment);
        if status == ROLLOUT_COMPLETE {
            return Ok(deployment);
        }
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(RestoreError::RolloutStuck {
                deployment: job.request.deployment.clone(),
                seconds: ROLLOUT_TIMEOUT.as_secs(),
                status: status.to_owned(),
            }
            .into());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A Deployment's `spec.selector` as a label selector query:
/// `matchLabels` as `k=v`, `matchExpressions` in the set-based syntax.
fn label_selector(selector: &Value) -> String {
    let mut terms: Vec<String> = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
        .collect();
    for expression in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = expression["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = expression["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        terms.push(match expression["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "DoesNotExist" => format!("!{key}"),
            _ => key.to_owned(),
        });
    }
    terms.join(",")
}

/// Percent-encodes a query value (label selectors hold `=`, `,`, `!`,
/// spaces and parentheses).
fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs one SFTP or SQLite step in the helper.
async fn run_step(job: &Job, step: Step) -> Result<u64, ActionError> {
    helper::run(&job.helper, &step)
        .await
        .map_err(|e| RestoreError::from(e).into())
}

/// A directory of the agent's own for one Deployment's transfer, holding
/// a copy of its database; removed when dropped. Named after the
/// Deployment (one restore-command each at a time), so what a crash left
/// behind is cleared by the next.
struct TempDir(PathBuf);

impl TempDir {
    fn new(job: &Job) -> Result<Self, ActionError> {
        let dir = job.temp_dir.join(format!(
            "restore-{}-{}",
            job.request.namespace, job.request.deployment
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // Private: it holds the application's data.
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| RestoreError::Temp {
                dir: dir.display().to_string(),
                source,
            })?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";

    fn input(parameters: Value) -> Value {
        let mut all = json!({"deployment": "web", "host": "backup.example", "user": "u",
                             "password": "secret", "remotePath": "/b/web.db",
                             "hostKeyFingerprint": FINGERPRINT});
        for (key, value) in parameters.as_object().into_iter().flatten() {
            all[key] = value.clone();
        }
        json!({"command": "backup-database", "parameters": all})
    }

    #[test]
    fn a_valid_request_defaults_port_and_namespace() -> Result<(), ActionError> {
        let request = parse(&input(json!({})))?;
        assert_eq!(request.command, Command::Backup);
        assert_eq!(request.server.port, 22);
        assert_eq!(request.namespace, "default");
        assert_eq!(request.server.host_key_fingerprint, FINGERPRINT);
        let request = parse(&input(json!({"port": 2222, "namespace": "apps"})))?;
        assert_eq!(
            (request.server.port, request.namespace.as_str()),
            (2222, "apps")
        );
        Ok(())
    }

    #[test]
    fn bad_input_is_refused_naming_the_field_and_never_the_password() {
        let mut wrong_command = input(json!({}));
        wrong_command["command"] = json!("drop-database");
        for (bad, field) in [
            (wrong_command, "$.command"),
            (input(json!({"port": 0})), "$.parameters.port"),
            (input(json!({"port": 65536})), "$.parameters.port"),
            (
                input(json!({"hostKeyFingerprint": null})),
                "$.parameters.hostKeyFingerprint",
            ),
            (
                input(json!({"hostKeyFingerprint": "MD5:12:34"})),
                "$.parameters.hostKeyFingerprint",
            ),
            (
                input(json!({"hostKeyFingerprint": "SHA256:short"})),
                "$.parameters.hostKeyFingerprint",
            ),
            (
                input(json!({"deployment": "Web!"})),
                "$.parameters.deployment",
            ),
            (input(json!({"remotePath": ""})), "$.parameters.remotePath"),
            (input(json!({"password": null})), "$.parameters.password"),
        ] {
            let error = parse(&bad).expect_err("refused");
            assert_eq!(error.status_code(), 400, "{bad}");
            let message = error.to_string();
            assert!(message.starts_with(field), "{bad}: {message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[test]
    fn selectors_read_as_the_api_server_takes_them() {
        let selector = json!({"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "canary", "operator": "DoesNotExist"}]});
        let text = label_selector(&selector);
        assert_eq!(text, "app=web,tier in (a,b),!canary");
        assert_eq!(
            url_encode(&text),
            "app%3Dweb%2Ctier%20in%20%28a%2Cb%29%2C%21canary"
        );
    }
}
