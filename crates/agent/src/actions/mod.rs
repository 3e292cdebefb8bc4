//! Action dispatch: parse, deduplicate, check expiry and input, run the
//! handler, and build the event that answers it. One file per action.
//!
//! The dispatcher is driven by the session's worker task, one action at a
//! time in arrival order; it returns events instead of publishing them, so
//! everything here is tested without MQTT.

pub mod configure_logger;
pub mod copy_resource;
pub mod expiry;
pub mod follow_logs;
pub mod get_authorization_id;
pub mod get_node_ip;
pub mod manage_deployment;
pub mod open_tunnel;
pub mod reboot;
pub mod restart_k3s;
pub mod restore_command;
pub mod retrieve_kubeconfig;
pub mod run_stats;
pub mod send_api;
pub mod send_kubectl;
pub mod send_kubernetes_api;
pub mod shutdown;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use tether_proto::redact::redacted;
use tether_proto::{ActionEvent, ActionRequest, Catalogue, InputError};
use tokio::sync::mpsc;

use crate::authorization::AuthorizationGuard;
use crate::dedupe::{Dedupe, Seen};
use crate::kubernetes::admin::AdminToken;
use crate::kubernetes::operator::OperatorToken;
use crate::kubernetes::{Access, Client, KubeError, KubernetesConfig};
use crate::logging::{LogControl, LoggingError};
use expiry::{Deadline, Delivery, Moment};
use run_stats::StatsRunner;

/// The actions this agent runs; the birth message lists them as capabilities.
pub const IMPLEMENTED: [&str; 17] = [
    "configure-logger",
    "copy-resource",
    "follow-logs",
    "get-authorization-id",
    "get-node-ip",
    "manage-deployment",
    "open-tunnel",
    "reboot",
    "restart-k3s",
    "restore-command",
    "retrieve-kubeconfig",
    "run-stats",
    "send-api",
    "send-kubectl",
    "send-kubernetes-api",
    "shutdown",
    "stop-stats",
];

/// The largest event, serialized, that the agent sends. tetherd's MQTT
/// endpoint takes packets up to 4 MiB; a larger one fails the whole
/// connection (rumqttc: OutgoingPacketTooLarge), tetherd redelivers the
/// action after the reconnect, and the same answer fails it again, forever.
/// 3 MiB leaves room for the topic, the packet's header and properties.
pub const MAX_EVENT_BYTES: usize = 3 * 1024 * 1024;

/// Why a handler did not succeed; each maps to the event's status code.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{path}: {message}")]
    InvalidInput { path: String, message: String },
    #[error("request to {url} failed")]
    Request { url: String, source: reqwest::Error },
    #[error("cannot change the logger")]
    Logging(#[source] LoggingError),
    #[error("action {0} is not implemented by tether-agent {version}", version = crate::self_update::agent_version())]
    NotImplemented(String),
    #[error(
        "this agent manages no Kubernetes cluster: start it with --kubernetes cluster (in a pod) or --kubernetes host (with a kubeconfig)"
    )]
    NoCluster,
    #[error(transparent)]
    Kubernetes(#[from] KubeError),
    #[error(transparent)]
    Kubectl(#[from] send_kubectl::KubectlError),
    #[error(transparent)]
    Restart(#[from] restart_k3s::RestartError),
    #[error(transparent)]
    Power(#[from] crate::host::power::PowerError),
    #[error(transparent)]
    Restore(#[from] restore_command::RestoreError),
    #[error(transparent)]
    Tunnel(#[from] crate::tunnel::TunnelError),
    #[error("cannot set up TLS for the tunnel")]
    TunnelTls(#[source] crate::tls::TlsError),
    /// `what`: the action, or the action and what it works on.
    #[error(
        "{what} is already running (correlation id {running}); wait for its event and try again"
    )]
    Busy { what: String, running: String },
}

impl ActionError {
    pub fn status_code(&self) -> u16 {
        match self {
            ActionError::InvalidInput { .. } => 400,
            ActionError::Request { .. } => 502,
            ActionError::Logging(_) => 500,
            ActionError::NotImplemented(_) => 501,
            ActionError::NoCluster => 503,
            ActionError::Kubernetes(e) => e.status_code(),
            ActionError::Kubectl(e) => e.status_code(),
            ActionError::Restart(e) => e.status_code(),
            ActionError::Power(e) => e.status_code(),
            ActionError::Restore(e) => e.status_code(),
            ActionError::Tunnel(e) => e.status_code(),
            ActionError::TunnelTls(_) => 500,
            ActionError::Busy { .. } => 409,
        }
    }

    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ActionError::InvalidInput {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A handler's answer: most are a 200 with a response; some pass on
/// another party's status (the API server's, kubectl's exit).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status_code: u16,
    pub status_message: String,
    pub response: Value,
}

impl From<Value> for Answer {
    fn from(response: Value) -> Self {
        Answer {
            status_code: 200,
            status_message: "OK".to_owned(),
            response,
        }
    }
}

/// The cluster the agent manages, how `send-kubectl` runs and how
/// `restart-k3s` restarts it.
#[derive(Debug, Clone)]
pub struct Kubernetes {
    pub config: Option<KubernetesConfig>,
    pub kubectl: send_kubectl::KubectlConfig,
    pub k3s_restart: restart_k3s::RestartConfig,
    /// The agent's state directory: `send-kubectl` keeps its private
    /// kubeconfig and discovery cache there.
    pub state_dir: std::path::PathBuf,
    /// The `tether-agent-restore` binary restore-command runs.
    pub restore_helper: std::path::PathBuf,
    /// The identity of the default actions `send-kubectl` and
    /// `send-kubernetes-api` in cluster mode.
    pub operator: OperatorToken,
    /// The token `kube` tunnels act with (`tether-kubeconfig`, ADR 0022).
    pub admin: AdminToken,
}

impl Kubernetes {
    /// A client with the credentials as they are now.
    pub fn client(&self) -> Result<Client, ActionError> {
        let config = self.config.as_ref().ok_or(ActionError::NoCluster)?;
        let access = config.access().map_err(KubeError::from)?;
        Ok(Client::new(access)?)
    }

    /// How `kube` tunnels reach the cluster ([`AdminToken`]).
    pub async fn admin_access(&self) -> Result<Access, ActionError> {
        let config = self.config.as_ref().ok_or(ActionError::NoCluster)?;
        Ok(self.admin.access(config).await?)
    }

    /// How the default actions reach the cluster ([`OperatorToken`]).
    pub async fn operator_access(&self) -> Result<Access, ActionError> {
        let config = self.config.as_ref().ok_or(ActionError::NoCluster)?;
        Ok(self.operator.access(config).await?)
    }
}

/// What the handlers share.
pub struct Context {
    pub logging: Arc<LogControl>,
    pub authorization: Arc<AuthorizationGuard>,
    pub stats: StatsRunner,
    /// The controller's CA, trusted by `send-api` next to the system roots.
    pub ca_pem: String,
    /// This device's name and the tetherd it enrolled with, for
    /// `retrieve-kubeconfig`'s kubeconfig through tether.
    pub device: String,
    pub api_url: String,
    /// tetherd's clock as this device sees it; every action carries
    /// tetherd's time, which keeps it current.
    pub clock: Arc<crate::clock::ServerClock>,
    /// `follow-logs` extends it.
    pub follow: crate::logs::FollowHandle,
    pub kubernetes: Kubernetes,
    /// What `open-tunnel` may do on this device.
    pub tunnels: crate::tunnel::TunnelPolicy,
    /// How `ssh` tunnels run the management shell.
    pub shell: crate::management_shell::ShellConfig,
    /// How `reboot` and `shutdown` take the device down.
    pub power: crate::host::power::Power,
}

type Work = Pin<Box<dyn Future<Output = Result<Answer, ActionError>> + Send>>;

/// A handler's work: done at once, or long and run in the background,
/// where at most one work of each `busy` runs ([`not_running`]).
enum Outcome {
    Now(Answer),
    Later { busy: String, work: Work },
}

impl From<Answer> for Outcome {
    fn from(answer: Answer) -> Self {
        Outcome::Now(answer)
    }
}

/// An action running in the background.
struct Running {
    action: String,
    /// What only one action may work on at a time: the action itself
    /// (`restart-k3s`) or the action and its object (`restore-command`).
    busy: String,
}

/// 409 naming the running one if a work of `busy` runs in the background
/// now; `running` is keyed by correlation id.
fn not_running(running: &HashMap<String, Running>, busy: &str) -> Result<(), ActionError> {
    match running.iter().find(|(_, r)| r.busy == busy) {
        Some((correlation_id, _)) => Err(ActionError::Busy {
            what: busy.to_owned(),
            running: correlation_id.clone(),
        }),
        None => Ok(()),
    }
}

pub struct Dispatcher {
    catalogue: Catalogue,
    dedupe: Dedupe,
    context: Context,
    max_event_bytes: usize,
    /// Actions running in the background, by correlation id. At most one
    /// of each `busy` runs; a second is answered 409.
    running: HashMap<String, Running>,
    finished_tx: mpsc::UnboundedSender<ActionEvent>,
    finished_rx: mpsc::UnboundedReceiver<ActionEvent>,
}

impl Dispatcher {
    pub fn new(dedupe: Dedupe, context: Context) -> Self {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        Self {
            catalogue: Catalogue::builtin(),
            dedupe,
            context,
            max_event_bytes: MAX_EVENT_BYTES,
            running: HashMap::new(),
            finished_tx,
            finished_rx,
        }
    }

    /// Sets the largest event sent (default [`MAX_EVENT_BYTES`]); lets tests
    /// reach the limit without megabytes of answer.
    pub fn with_max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit;
        self
    }

    /// Handles one message from the `actions` topic, taken up at `now`,
    /// and returns the event that answers it, if it can be answered at all.
    pub async fn handle(&mut self, delivery: &Delivery, now: Moment) -> Option<ActionEvent> {
        let payload = &delivery.payload[..];
        let request = match serde_json::from_slice::<ActionRequest>(payload) {
            Ok(request) => request,
            Err(e) => return self.malformed(payload, &e),
        };
        if let Some(sent_at) = request.sent_at {
            let arrived = delivery.arrived.wall;
            self.context.clock.learn(sent_at, arrived, arrived);
        }
        tracing::info!(
            "action {} ({}) received, input {}",
            request.action,
            request.correlation_id,
            redacted(&request.input)
        );
        let event = match self.dedupe.lookup(&request.correlation_id) {
            Seen::Done(event) => {
                tracing::info!(
                    "action {} was already answered; sending the same answer again",
                    request.correlation_id
                );
                // A record from before the size limit may hold an answer
                // too large to send; it is replaced once, for good.
                let (event, replaced) = self.within_size_limit(*event);
                if replaced && let Err(e) = self.dedupe.record_done(&event) {
                    tracing::error!("{}", chain(&e));
                }
                return Some(event);
            }
            // Still running in the background: its event follows.
            Seen::Started if self.running.contains_key(&request.correlation_id) => {
                tracing::info!(
                    "action {} is still running; its event follows",
                    request.correlation_id
                );
                return None;
            }
            Seen::Started => self.answer(
                &request,
                500,
                "interrupted: tether-agent restarted while running this action; it was not run again",
                Value::Null,
            ),
            Seen::New => self.run(&request, Deadline::of(&request, delivery), now).await?,
        };
        Some(self.record(&request.action, event))
    }

    /// How many actions run in the background now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// The next event of an action that ran in the background; pending
    /// while none runs.
    pub async fn finished(&mut self) -> ActionEvent {
        match self.finished_rx.recv().await {
            Some(event) => event,
            // The dispatcher holds a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// Records the event of an action that ran in the background, as
    /// [`Self::handle`] does for the others, and returns what to publish.
    pub fn complete(&mut self, event: ActionEvent) -> ActionEvent {
        let action = self
            .running
            .remove(&event.correlation_id)
            .map(|running| running.action)
            .unwrap_or_default();
        self.record(&action, event)
    }

    fn record(&mut self, action: &str, event: ActionEvent) -> ActionEvent {
        // Checked before it is recorded: a redelivery then gets the small
        // replacement, never the answer that cannot be sent.
        let (event, _) = self.within_size_limit(event);
        if let Err(e) = self.dedupe.record_done(&event) {
            tracing::error!("{}", chain(&e));
        }
        tracing::info!(
            "action {action} ({}) answered {}: {}",
            event.correlation_id,
            event.status_code,
            event.status_message
        );
        event
    }

    /// The action's event, or `None` when it went on to run in the
    /// background (its event comes from [`Self::finished`]).
    async fn run(
        &mut self,
        request: &ActionRequest,
        deadline: Deadline,
        now: Moment,
    ) -> Option<ActionEvent> {
        if deadline.passed(now) {
            return Some(self.answer(
                request,
                410,
                "action expired before the agent could start it",
                Value::Null,
            ));
        }
        match self.catalogue.validate(&request.action, &request.input) {
            Ok(()) => {}
            Err(e @ InputError::UnknownAction { .. }) => {
                return Some(self.answer(request, 404, e.to_string(), Value::Null));
            }
            Err(e) => return Some(self.answer(request, 400, e.to_string(), Value::Null)),
        }
        if let Err(e) = self.dedupe.record_started(&request.correlation_id) {
            let message = format!("{}; the action was not run", chain(&e));
            return Some(self.answer(request, 500, message, Value::Null));
        }
        let answer = match self.execute(&request.action, &request.input).await {
            Ok(Outcome::Now(answer)) => Ok(answer),
            Ok(Outcome::Later { busy, work }) => match self.background(request, busy, work) {
                Ok(()) => return None,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        Some(match answer {
            Ok(answer) => self.answer(
                request,
                answer.status_code,
                answer.status_message,
                answer.response,
            ),
            Err(e) => self.answer(request, e.status_code(), chain(&e), Value::Null),
        })
    }

    /// Starts `work` unless a work of the same `busy` runs already ([`not_running`]).
    fn background(
        &mut self,
        request: &ActionRequest,
        busy: String,
        work: Work,
    ) -> Result<(), ActionError> {
        not_running(&self.running, &busy)?;
        self.running.insert(
            request.correlation_id.clone(),
            Running {
                action: request.action.clone(),
                busy,
            },
        );
        let finished = self.finished_tx.clone();
        let request = request.clone();
        let event_name = self.event_name(&request.action);
        tokio::spawn(async move {
            let event = match work.await {
                Ok(answer) => ActionEvent::new(
                    &request,
                    event_name,
                    answer.status_code,
                    answer.status_message,
                    answer.response,
                ),
                Err(e) => ActionEvent::new(
                    &request,
                    event_name,
                    e.status_code(),
                    chain(&e),
                    Value::Null,
                ),
            };
            // The dispatcher is gone only when the session ends; the action
            // is then answered as interrupted after the restart.
            let _ = finished.send(event);
        });
        Ok(())
    }

    async fn execute(&mut self, action: &str, input: &Value) -> Result<Outcome, ActionError> {
        let context = &mut self.context;
        let kubernetes = &context.kubernetes;
        let answer = match action {
            "configure-logger" => configure_logger::run(input, &context.logging)?,
            "copy-resource" => copy_resource::run(input, &kubernetes.client()?).await?,
            "follow-logs" => follow_logs::run(input, &context.follow)?,
            "get-authorization-id" => get_authorization_id::run(&context.authorization),
            "get-node-ip" => match &kubernetes.config {
                Some(_) => get_node_ip::cluster(&kubernetes.client()?).await?,
                None => get_node_ip::run(),
            },
            "manage-deployment" => {
                manage_deployment::run(input, &kubernetes.client()?, chrono::Utc::now()).await?
            }
            "reboot" => {
                return reboot::run(input, &context.power, &context.authorization)
                    .map(Outcome::Now);
            }
            "shutdown" => {
                return shutdown::run(input, &context.power, &context.authorization)
                    .map(Outcome::Now);
            }
            "open-tunnel" => {
                let (busy, work) = open_tunnel::prepare(
                    input,
                    &context.tunnels,
                    &context.ca_pem,
                    &context.clock,
                    kubernetes,
                    &context.shell,
                )?;
                return Ok(Outcome::Later {
                    busy,
                    work: Box::pin(work),
                });
            }
            "restart-k3s" => {
                // Before `prepare` spends the authorization id.
                not_running(&self.running, action)?;
                let work = restart_k3s::prepare(input, &context.authorization, kubernetes)?;
                return Ok(Outcome::Later {
                    busy: action.to_owned(),
                    work: Box::pin(work),
                });
            }
            "restore-command" => {
                let (busy, work) = restore_command::prepare(input, kubernetes)?;
                return Ok(Outcome::Later {
                    busy,
                    work: Box::pin(work),
                });
            }
            "retrieve-kubeconfig" => {
                let tetherd = retrieve_kubeconfig::Tetherd {
                    device: &context.device,
                    api_url: &context.api_url,
                    ca_pem: &context.ca_pem,
                };
                retrieve_kubeconfig::run(input, &kubernetes.client()?, tetherd, &kubernetes.admin)
                    .await?
            }
            "run-stats" => run_stats::run(input, &mut context.stats)?,
            "stop-stats" => run_stats::stop(&mut context.stats),
            "send-api" => {
                return send_api::run(input, &context.ca_pem)
                    .await
                    .map(Outcome::Now);
            }
            "send-kubectl" => return send_kubectl::run(input, kubernetes).await.map(Outcome::Now),
            "send-kubernetes-api" => {
                let client = Client::new(kubernetes.operator_access().await?)?;
                return send_kubernetes_api::run(input, &client)
                    .await
                    .map(Outcome::Now);
            }
            other => return Err(ActionError::NotImplemented(other.to_owned())),
        };
        Ok(Answer::from(answer).into())
    }

    fn answer(
        &self,
        request: &ActionRequest,
        status_code: u16,
        message: impl Into<String>,
        response: Value,
    ) -> ActionEvent {
        ActionEvent::new(
            request,
            self.event_name(&request.action),
            status_code,
            message,
            response,
        )
    }

    /// `event`, or a 500 in its place if it is too large to send; and
    /// whether it was replaced.
    fn within_size_limit(&self, event: ActionEvent) -> (ActionEvent, bool) {
        let size = serialized_len(&event);
        if size <= self.max_event_bytes {
            return (event, false);
        }
        let message = format!(
            "the answer is {size} bytes, more than the {} the controller accepts",
            self.max_event_bytes
        );
        tracing::warn!(
            "action {} answered {} with {size} bytes; sending a 500 instead",
            event.correlation_id,
            event.status_code
        );
        let replacement = ActionEvent {
            correlation_id: event.correlation_id,
            event: event.event,
            status_code: 500,
            status_message: message,
            response: Value::Null,
        };
        (replacement, true)
    }

    fn event_name(&self, action: &str) -> String {
        self.catalogue
            .get(action)
            .map_or_else(|| action.to_owned(), |spec| spec.event.clone())
    }

    /// A payload that is not an `ActionRequest` is answered with a 400 only if
    /// it names a correlation id; otherwise nobody could match the answer.
    fn malformed(&self, payload: &[u8], error: &serde_json::Error) -> Option<ActionEvent> {
        let value: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let Some(correlation_id) = value.get("correlationId").and_then(Value::as_str) else {
            tracing::warn!("ignoring a malformed action request without a correlationId: {error}");
            return None;
        };
        let action = value.get("action").and_then(Value::as_str).unwrap_or("");
        let message = format!("malformed action request: {error}");
        tracing::warn!("action {correlation_id}: {message}");
        Some(ActionEvent {
            correlation_id: correlation_id.to_owned(),
            event: if action.is_empty() {
                "invalid-request".to_owned()
            } else {
                self.event_name(action)
            },
            status_code: 400,
            status_message: message,
            response: Value::Null,
        })
    }
}

/// The length of `event` as JSON, counted without building it.
fn serialized_len(event: &ActionEvent) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing plain data to a writer that never fails cannot fail; if it
    // somehow did, the event is treated as too large to send.
    match serde_json::to_writer(&mut count, event) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

pub use tether_proto::error_chain as chain;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dedupe::DEFAULT_CAPACITY;
    use crate::logging::{self, LogSettings};
    use crate::metrics::MetricsSink;
    use serde_json::json;
    use tether_proto::metrics::HostSample;

    struct NoSink;
    impl MetricsSink for NoSink {
        fn publish_sample(&self, _: &HostSample) {}
    }

    /// The logger's reload handles work only while its subscriber lives.
    pub(crate) type LiveSubscriber = Box<dyn tracing::Subscriber + Send + Sync>;

    pub(crate) fn context() -> (Context, LiveSubscriber) {
        let (subscriber, logging) = logging::build(LogSettings {
            level: "info".into(),
            pretty: true,
            color: false,
        })
        .expect("logger builds");
        let context = Context {
            logging: Arc::new(logging),
            authorization: Arc::new(AuthorizationGuard::default()),
            stats: StatsRunner::new(Arc::new(NoSink)),
            ca_pem: String::new(),
            device: "edge-1".into(),
            api_url: "https://127.0.0.1:8443".into(),
            clock: crate::clock::ServerClock::new(),
            follow: crate::logs::FollowHandle::new(&crate::logs::SystemLog::None),
            kubernetes: Kubernetes {
                config: None,
                kubectl: send_kubectl::KubectlConfig {
                    program: "kubectl".into(),
                    timeout: std::time::Duration::from_secs(60),
                },
                k3s_restart: restart_k3s::RestartConfig {
                    command: vec!["true".into()],
                    ready_timeout: std::time::Duration::from_secs(5),
                },
                state_dir: std::env::temp_dir(),
                restore_helper: crate::restore::helper::HELPER_NAME.into(),
                operator: Default::default(),
                admin: Default::default(),
            },
            tunnels: Default::default(),
            shell: crate::management_shell::ShellConfig {
                helper: crate::management_shell::HELPER_NAME.into(),
                socket: None,
                work_dir: std::env::temp_dir(),
                host_key: std::env::temp_dir().join(crate::management_shell::HOST_KEY_FILE),
                login_timeout: std::time::Duration::from_secs(
                    crate::management_shell::LOGIN_TIMEOUT_SECONDS,
                ),
            },
            power: crate::host::power::Power {
                config: crate::host::power::PowerConfig {
                    reboot: vec!["false".into()],
                    shutdown: vec!["false".into()],
                    delay: std::time::Duration::from_secs(1),
                },
                locks: Arc::new(crate::updates::UpdateLocks::load(std::path::Path::new(
                    "/nonexistent",
                ))),
                gate: crate::self_update::ActionGate::default(),
            },
        };
        (context, Box::new(subscriber))
    }

    fn dispatcher(dir: &std::path::Path) -> (Dispatcher, LiveSubscriber) {
        let dedupe = Dedupe::open(dir, DEFAULT_CAPACITY).expect("dedupe opens");
        let (context, subscriber) = context();
        (Dispatcher::new(dedupe, context), subscriber)
    }

    fn delivered(payload: impl AsRef<[u8]>) -> Delivery {
        Delivery {
            payload: payload.as_ref().to_vec(),
            arrived: Moment::now(),
            mqtt_expiry: None,
        }
    }

    fn request(id: &str, action: &str, input: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "correlationId": id,
            "action": action,
            "input": input,
            "expiresAt": chrono::Utc::now() + chrono::Duration::minutes(5),
            "expiresInMs": 300_000,
        }))
        .expect("serializes")
    }

    #[tokio::test]
    async fn an_implemented_action_answers_200_with_its_event() {
        let temp = tempfile::tempdir().expect("temp dir");
        let (mut dispatcher, _subscriber) = dispatcher(temp.path());
        let event = dispatcher
            .handle(
                &delivered(request("c1", "get-authorization-id", json!({}))),
                Moment::now(),
            )
            .await
            .expect("answered");
        assert_eq!(event.correlation_id, "c1");
        assert_eq!(event.event, "get-authorization-id");
        assert_eq!(event.status_code, 200, "{}", event.status_message);
        assert!(event.response["authorizationId"].is_string());
    }

    #[tokio::test]
    async fn a_redelivered_action_gets_the_same_answer_without_running_again() {
        let temp = tempfile::tempdir().expect("temp dir");
        let (mut dispatcher, _subscriber) = dispatcher(temp.path());
        let payload = request("c1", "get-authorization-id", json!({}));
        let first = dispatcher
            .handle(&delivered(&payload), Moment::now())
            .await
            .expect("answered");
        let again = dispatcher
            .handle(&delivered(&payload), Moment::now())
            .await
            .expect("answered");
        // A second run would have issued a different id.
        assert_eq!(first, again);
    }

    #[tokio::test]
    async fn an_answer_too_large_to_send_is_replaced_by_a_500_also_on_redelivery() {
        let temp = tempfile::tempdir().expect("temp dir");
        let limit = 64 * 1024;
        let (dispatcher, _subscriber) = dispatcher(temp.path());
        let mut dispatcher = dispatcher.with_max_event_bytes(limit);
        let (url, server) =
            send_api::tests::serve_once("HTTP/1.1 200 OK\r\n", vec![b'x'; 100 * 1024]).await;
        let payload = request("c1", "send-api", json!({"href": url}));
        let event = dispatcher
            .handle(&delivered(&payload), Moment::now())
            .await
            .expect("answered");
        assert_eq!(event.correlation_id, "c1");
        assert_eq!(event.event, "send-api");
        assert_eq!(event.status_code, 500);
        assert_eq!(event.response, Value::Null);
        let message = &event.status_message;
        assert!(
            message.starts_with("the answer is 10")
                && message.ends_with(" bytes, more than the 65536 the controller accepts"),
            "{message}"
        );
        assert!(serialized_len(&event) <= limit);
        server.await.expect("the request was made once");

        // What is recorded, and so what a redelivery gets, is the 500.
        let stored = Dedupe::open(temp.path(), DEFAULT_CAPACITY)
            .expect("opens")
            .lookup("c1");
        assert_eq!(stored, Seen::Done(Box::new(event.clone())));
        let again = dispatcher
            .handle(&delivered(&payload), Moment::now())
            .await
            .expect("answered");
        assert_eq!(again, event);
    }

    #[tokio::test]
    async fn an_oversized_answer_recorded_before_the_limit_is_replaced_on_redelivery() {
        let temp = tempfile::tempdir().expect("temp dir");
        let payload = request("c1", "get-node-ip", json!({}));
        let request: ActionRequest = serde_json::from_slice(&payload).expect("parses");
        let huge = ActionEvent::new(&request, "get-node-ip", 200, "OK", json!("x".repeat(2000)));
        Dedupe::open(temp.path(), DEFAULT_CAPACITY)
            .expect("opens")
            .record_done(&huge)
            .expect("records");
        let (dispatcher, _subscriber) = dispatcher(temp.path());
        let mut dispatcher = dispatcher.with_max_event_bytes(1000);
        let event = dispatcher
            .handle(&delivered(&payload), Moment::now())
            .await
            .expect("answered");
        assert_eq!(event.status_code, 500, "{}", event.status_message);
        let stored = Dedupe::open(temp.path(), DEFAULT_CAPACITY)
            .expect("opens")
            .lookup("c1");
        assert_eq!(stored, Seen::Done(Box::new(event)));
    }

    #[test]
    fn the_counted_length_is_the_serialized_length() {
        let event = ActionEvent {
            correlation_id: "c1".into(),
            event: "send-api".into(),
            status_code: 200,
            status_message: "OK".into(),
            response: json!({"body": "\u{0}é\"", "n": [1, 2]}),
        };
        let bytes = serde_json::to_vec(&event).expect("serializes");
        assert_eq!(serialized_len(&event), bytes.len());
    }

    #[tokio::test]
    async fn an_action_interrupted_by_a_restart_is_not_run_again() {
        let temp = tempfile::tempdir().expect("temp dir");
        Dedupe::open(temp.path(), DEFAULT_CAPACITY)
            .expect("opens")
            .record_started("c1")
            .expect("records");
        let (mut dispatcher, _subscriber) = dispatcher(temp.path());
        let event = dispatcher
            .handle(
                &delivered(request("c1", "get-node-ip", json!({}))),
                Moment::now(),
            )
            .await
            .expect("answered");
        assert_eq!(event.status_code, 500);
        assert_eq!(
            event.status_message,
            "interrupted: tether-agent restarted while running this action; it was not run again"
        );
        assert_eq!(event.event, "get-node-ip");
    }

    #[tokio::test]
    async fn an_expired_action_is_not_started() {
        let temp = tempfile::tempdir().expect("temp dir");
        let (mut dispatcher, _subscriber) = dispatcher(temp.path());
        // Its five minutes ran out while it waited behind another action.
        let delivery = delivered(request("c1", "get-node-ip", json!({})));
        let later = delivery.arrived.after(std::time::Duration::from_secs(300));
        let event = dispatcher.handle(&delivery, later).await.expect("answered");
        assert_eq!(event.status_code, 410);
        assert_eq!(
            event.status_message,
            "action expired before the agent could start it"
        );
    }

    #[tokio::test]
    async fn a_device_clock_a_day_off_does_not_change_expiry() {
        let temp = tempfile::tempdir().expect("temp dir");
        let (mut dispatcher, _subscriber) = dispatcher(temp.path());
        for (id, skew) in [("ahead", 1), ("behind", -1)] {
            let mut delivery = delivered(request(id, "get-node-ip", json!({})));
            delivery.arrived.wall += chrono::Duration::days(skew);
            let event = dispatcher
                .handle(
                    &delivery,
                    delivery.arrived.after(std::time::Duration::from_secs(1)),
                )
                .await
                .expect("answered");
            assert_eq!(event.status_code, 200, "{id}: {}", event.status_message);
        }
        let mut late = delivered(request("late", "get-node-ip", json!({})));
        late.arrived.wall -= chrono::Duration::days(1);
        let event = dispatcher
            .handle(
                &late,
                late.arrived.after(std::time::Duration::from_secs(301)),
            )
            .await
            .expect("answered");
        assert_eq!(
            event.status_code, 410,
            "a clock behind does not extend the TTL"
        );
    }

    #[tokio::test]
    async fn bad_input_is_refused_naming_the_json_path() {
        let temp = tempfile::tempdir().expect("temp dir");
        let (mut dispatcher, _subscriber) = dispatcher(temp.path());
        let event = dispatcher
            .handle(
                &delivered(request("c1", "run-stats", json!({"interval": "often"}))),
                Moment::now(),
            )
            .await
            .expect("answered");
        assert_eq!(event.status_code, 400);
        assert!(
            event.status_message.contains("$.interval"),
            "{}",
            event.status_message
        );
        assert_eq!(event.event, "run-stats");
    }

    #[tokio::test]
    async fn unknown_actions_are_refused() {
        let temp = tempfile::tempdir().expect("temp dir");
        let (mut dispatcher, _subscriber) = dispatcher(temp.path());
        let event = dispatcher
            .handle(
                &delivered(request("c2", "self-destruct", json!({}))),
                Moment::now(),
            )
            .await
            .expect("answered");
        assert_eq!(event.status_code, 404);
        assert!(event.status_message.contains("self-destruct"));
    }

    #[tokio::test]
    async fn malformed_requests_are_answered_only_when_they_can_be_matched() {
        let temp = tempfile::tempdir().expect("temp dir");
        let (mut dispatcher, _subscriber) = dispatcher(temp.path());
        assert_eq!(
            dispatcher
                .handle(&delivered(b"not json"), Moment::now())
                .await,
            None
        );
        assert_eq!(
            dispatcher
                .handle(&delivered(b"{\"action\":\"x\"}"), Moment::now())
                .await,
            None
        );
        let event = dispatcher
            .handle(
                &delivered(br#"{"correlationId":"c1","action":"get-node-ip","expiresAt":"soon"}"#),
                Moment::now(),
            )
            .await
            .expect("answered");
        assert_eq!(event.status_code, 400);
        assert_eq!(event.event, "get-node-ip");
        assert!(event.status_message.starts_with("malformed action request"));
    }

    #[tokio::test]
    async fn every_implemented_action_is_in_the_catalogue_and_has_a_handler() {
        let catalogue = Catalogue::builtin();
        let temp = tempfile::tempdir().expect("temp dir");
        let (mut dispatcher, _subscriber) = dispatcher(temp.path());
        for action in IMPLEMENTED {
            assert!(catalogue.get(action).is_some(), "{action}");
            if action == "send-api" {
                continue; // needs a server; covered in send_api's tests
            }
            let input = if action == "follow-logs" {
                json!({"seconds": 1})
            } else {
                json!({})
            };
            let result = dispatcher.execute(action, &input).await;
            match result {
                // Without a cluster the Kubernetes actions say so (or
                // refuse the empty input first).
                Err(ActionError::NoCluster | ActionError::InvalidInput { .. })
                    if CLUSTER_ACTIONS.contains(&action) => {}
                // Tetherd sends it with a tunnel to dial; here it has none.
                Err(ActionError::InvalidInput { .. }) if action == "open-tunnel" => {}
                // Without an authorization id: refused before anything runs.
                Err(ActionError::Power(e)) if e.status_code() == 401 => {}
                result => assert!(result.is_ok(), "{action}: {:?}", result.err()),
            }
        }
        dispatcher.context.stats.stop();
    }

    const CLUSTER_ACTIONS: [&str; 7] = [
        "copy-resource",
        "manage-deployment",
        "restart-k3s",
        "restore-command",
        "retrieve-kubeconfig",
        "send-kubectl",
        "send-kubernetes-api",
    ];

    #[tokio::test]
    async fn kubernetes_actions_without_a_cluster_answer_503_naming_the_flag() {
        let temp = tempfile::tempdir().expect("temp dir");
        let (mut dispatcher, _subscriber) = dispatcher(temp.path());
        let event = dispatcher
            .handle(
                &delivered(request(
                    "c1",
                    "send-kubectl",
                    json!({"command": "kubectl", "arguments": ["version"]}),
                )),
                Moment::now(),
            )
            .await
            .expect("answered");
        assert_eq!(event.status_code, 503, "{}", event.status_message);
        assert!(event.status_message.contains("--kubernetes"));
        assert_eq!(event.event, "kubectl-logs");
    }

    #[test]
    fn error_chains_read_as_one_line() {
        let error = crate::dedupe::DedupeError::List {
            path: "/x".into(),
            source: std::io::Error::other("disk on fire"),
        };
        assert_eq!(
            chain(&error),
            "cannot list the action record directory /x: disk on fire"
        );
    }
}
