//! `restart-k3s` (host mode): consumes a one-time authorization id, runs the
//! configured restart command (an argv, never a shell) and answers when the
//! API server reports ready again at `/readyz`, or 504 at the deadline.
//!
//! It runs in the background (see `Dispatcher`): a restart takes minutes,
//! other actions keep being answered meanwhile, and a second restart while
//! one runs is refused with 409.

use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};

use super::send_api::truncate_encoded;
use super::send_kubectl::STDERR_IN_MESSAGE;
use super::{ActionError, Answer, Kubernetes};
use crate::authorization::AuthorizationGuard;
use crate::kubernetes::Mode;

/// The restart command when none is configured.
pub const DEFAULT_COMMAND: &str = "systemctl restart k3s";
/// How often `/readyz` is asked while k3s comes back.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct RestartConfig {
    /// The argv run; the first word is the program.
    pub command: Vec<String>,
    /// From the command's start until k3s must answer ready.
    pub ready_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error(
        "restart-k3s needs an authorizationId: request one with the get-authorization-id action"
    )]
    MissingAuthorization,
    #[error(transparent)]
    Authorization(#[from] crate::authorization::AuthorizationError),
    #[error(
        "restart-k3s runs only in host mode (--kubernetes host): an agent in a pod cannot restart k3s"
    )]
    NotHostMode,
    #[error("the restart command is empty: set --k3s-restart-command")]
    NoCommand,
    #[error("cannot run the restart command {command:?}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("the restart command {command:?} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(
        "k3s did not answer ready at /readyz within {seconds} s of the restart command ({last})"
    )]
    NotReady { seconds: u64, last: String },
}

impl RestartError {
    pub fn status_code(&self) -> u16 {
        match self {
            RestartError::MissingAuthorization | RestartError::Authorization(_) => 401,
            RestartError::NotHostMode => 503,
            RestartError::NoCommand | RestartError::Spawn { .. } | RestartError::Failed { .. } => {
                500
            }
            RestartError::NotReady { .. } => 504,
        }
    }
}

/// Checks the mode and consumes the authorization id now, in arrival order;
/// the returned future runs the restart.
pub fn prepare(
    input: &Value,
    guard: &AuthorizationGuard,
    kubernetes: &Kubernetes,
) -> Result<impl Future<Output = Result<Answer, ActionError>> + Send + 'static, ActionError> {
    let config = kubernetes.config.as_ref().ok_or(ActionError::NoCluster)?;
    let id = input
        .get("authorizationId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or(RestartError::MissingAuthorization)?;
    // Every refusal that is not about the id comes before it is spent, so
    // a request that could never run does not cost the operator an id.
    if config.mode != Mode::Host {
        return Err(RestartError::NotHostMode.into());
    }
    guard.consume(id).map_err(RestartError::from)?;
    let restart = kubernetes.k3s_restart.clone();
    let kubernetes = kubernetes.clone();
    Ok(async move { run(&restart, &kubernetes).await })
}

async fn run(restart: &RestartConfig, kubernetes: &Kubernetes) -> Result<Answer, ActionError> {
    let started = Instant::now();
    let started_at = Utc::now();
    let deadline = started + restart.ready_timeout;
    let (program, arguments) = restart
        .command
        .split_first()
        .ok_or(RestartError::NoCommand)?;
    let command = restart.command.join(" ");
    tracing::warn!(command, "restarting k3s");
    let output = tokio::time::timeout_at(
        deadline.into(),
        tokio::process::Command::new(program)
            .args(arguments)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| RestartError::NotReady {
        seconds: restart.ready_timeout.as_secs(),
        last: "the restart command was still running".to_owned(),
    })?
    .map_err(|source| RestartError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !output.status.success() {
        let (stderr, _) = truncate_encoded(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            STDERR_IN_MESSAGE,
        );
        return Err(RestartError::Failed {
            command,
            status: output.status,
            stderr,
        }
        .into());
    }
    loop {
        let last = match ready(kubernetes).await {
            Ok(()) => break,
            Err(why) => why,
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(RestartError::NotReady {
                seconds: restart.ready_timeout.as_secs(),
                last,
            }
            .into());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let took = started.elapsed();
    tracing::warn!(
        command,
        took_ms = took.as_millis() as u64,
        "k3s is ready again"
    );
    Ok(json!({
        "command": restart.command,
        "restartedAt": started_at,
        "readyAt": Utc::now(),
        "readyAfterMs": took.as_millis() as u64,
    })
    .into())
}

/// Whether the API server answers 200 at `/readyz`; if not, why. The
/// credentials are read each time: k3s may rewrite its kubeconfig as it starts.
async fn ready(kubernetes: &Kubernetes) -> Result<(), String> {
    let client = kubernetes.client().map_err(|e| super::chain(&e))?;
    let reply = client
        .request(Method::GET, "/readyz", None)
        .await
        .map_err(|e| super::chain(&e))?;
    match reply.status {
        200 => Ok(()),
        status => Err(format!(
            "/readyz answered {status}: {}",
            String::from_utf8_lossy(&reply.body).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::KubernetesConfig;

    /// Host mode with a kubeconfig naming an API server that never answers.
    fn kubernetes(dir: &std::path::Path, mode: Mode, command: &[&str]) -> Kubernetes {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            r#"{"apiVersion": "v1", "kind": "Config", "current-context": "k",
                "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "k", "user": {"token": "t"}}],
                "contexts": [{"name": "k", "context": {"cluster": "k", "user": "k"}}]}"#,
        )
        .expect("writes");
        Kubernetes {
            config: Some(KubernetesConfig {
                mode,
                service_host: None,
                service_port: None,
                service_account_dir: dir.to_owned(),
                kubeconfig,
                cluster_name: None,
            }),
            kubectl: super::super::send_kubectl::KubectlConfig {
                program: "kubectl".into(),
                timeout: Duration::from_secs(5),
            },
            k3s_restart: RestartConfig {
                command: command.iter().map(|w| (*w).to_owned()).collect(),
                ready_timeout: Duration::from_secs(1),
            },
            state_dir: dir.to_owned(),
            restore_helper: crate::restore::helper::HELPER_NAME.into(),
            operator: Default::default(),
            admin: Default::default(),
        }
    }

    async fn restart(kubernetes: &Kubernetes) -> Result<Answer, ActionError> {
        let guard = AuthorizationGuard::default();
        let id = guard.issue().id;
        prepare(&json!({"authorizationId": id}), &guard, kubernetes)?.await
    }

    #[tokio::test]
    async fn a_failing_command_is_a_500_quoting_its_stderr() {
        let dir = tempfile::tempdir().expect("temp dir");
        let k = kubernetes(
            dir.path(),
            Mode::Host,
            &["sh", "-c", "echo unit k3s not found >&2; exit 5"],
        );
        let err = restart(&k).await.expect_err("fails");
        assert_eq!(err.status_code(), 500);
        assert!(err.to_string().contains("unit k3s not found"), "{err}");
    }

    #[tokio::test]
    async fn k3s_not_ready_by_the_deadline_is_a_504() {
        let dir = tempfile::tempdir().expect("temp dir");
        let k = kubernetes(dir.path(), Mode::Host, &["true"]);
        let err = restart(&k).await.expect_err("times out");
        assert_eq!(err.status_code(), 504);
        assert!(err.to_string().contains("within 1 s"), "{err}");
    }

    #[tokio::test]
    async fn no_id_is_a_401_and_cluster_mode_a_503() {
        let dir = tempfile::tempdir().expect("temp dir");
        let guard = AuthorizationGuard::default();
        let k = kubernetes(dir.path(), Mode::Host, &["true"]);
        let err = prepare(&json!({}), &guard, &k).err().expect("refused");
        assert_eq!(err.status_code(), 401);
        let k = kubernetes(dir.path(), Mode::Cluster, &["true"]);
        let id = guard.issue().id;
        let err = prepare(&json!({"authorizationId": id}), &guard, &k)
            .err()
            .expect("refused");
        assert_eq!(err.status_code(), 503);
        assert!(err.to_string().contains("host mode"), "{err}");
        guard
            .consume(&id)
            .expect("a request refused for the mode leaves its id unspent");
    }
}
