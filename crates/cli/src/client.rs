//! The one HTTP client of the CLI: tetherd's API over HTTPS, trusting only
//! tetherd's own CA, and the mapping of its answers to errors a person can act on.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tether_proto::accounts::{
    ApiKey, ApiKeyCreated, ChangePassword, CreateApiKey, CreateServiceAccount, CreateUser, Role,
    ServiceAccount, SetRole, User, UserCreated,
};
use tether_proto::alert_deliveries::AlertDelivery;
use tether_proto::alert_rules::{AlertRule, AlertRuleSpec, CreateAlertRule};
use tether_proto::alerts::Alert;
use tether_proto::api::{
    Action, AddSshKey, AuditEntry, CatalogueEntry, CreateDevice, CreateJob, Device,
    DeviceActionSet, DeviceCreated, EnrollmentToken, ErrorBody, Event, FleetSummary, Job, LogEntry,
    LoginRequest, LoginResponse, Page, PatchDevice, RequestAction, Session, SetShellPassword,
    ShellPassword, SshKey,
};
use tether_proto::ca::CaPemError;
use tether_proto::desired::resources::{
    ChartTemplate, ChartTemplateSpec, CreateChartTemplate, CreateDeployment, Deployment,
    DeploymentRollout, DeploymentSpecification, PublishedRelease,
};
use tether_proto::metrics::{HostMetrics, MetricRange, SeriesList};
use tether_proto::provisioning::{
    Approval, ApproveRequest, CreateKeyRequest, CreatePolicy, DenyRequest, Policy, ProvisioningKey,
    ProvisioningKeyInfo,
};
use tether_proto::secrets::{Secret, SetSecret};
use tether_proto::telemetry::DeviceUsage;

/// How long to wait for the TCP and TLS handshake before naming the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an agent binary (up to 256 MiB) may take to upload.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Headroom on top of a long-poll's `waitSeconds` before the client gives up on it.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(15);
/// Items asked for per page when following a listing: tetherd's default.
pub const PAGE_SIZE: u32 = 500;
/// How tetherd's API keys begin (`tether service-accounts keys create`).
pub const API_KEY_PREFIX: &str = "tether_sa_";
/// The most of an unexpected error body worth showing.
const MAX_BODY_SHOWN: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidServerUrl { url: String, reason: String },
    #[error("the CA certificate is not a valid PEM certificate")]
    InvalidCa(#[source] reqwest::Error),
    #[error(
        "refusing the saved CA certificate: log in again with `tether login {server} --ca-file PATH` or `--ca-sha256 HEX`"
    )]
    NotOneCa {
        server: String,
        #[source]
        source: CaPemError,
    },
    #[error("cannot set up the HTTPS client")]
    Build(#[source] reqwest::Error),
    #[error(
        "cannot reach tetherd at {url}: check that tetherd runs, that the URL is right, and that its certificate is signed by the saved CA"
    )]
    Connect { url: String, source: reqwest::Error },
    #[error("request to {url} failed")]
    Request { url: String, source: reqwest::Error },
    #[error("not logged in or the session expired: run `tether login {server}`")]
    Unauthorized { server: String },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{url} answered {status}: {body}")]
    UnexpectedStatus {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("cannot understand the answer of {url}; are the CLI and tetherd the same version?")]
    Decode { url: String, source: reqwest::Error },
    #[error("the stream from {url} ended: {reason}")]
    Stream { url: String, reason: String },
    #[error("the stream from {url} broke")]
    StreamRead { url: String, source: reqwest::Error },
    #[error("cannot open the tunnel at {url}")]
    Tunnel {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ClientError {
    /// The HTTP status tetherd answered with, if it answered at all.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            ClientError::Api(err) => Some(err.status),
            ClientError::UnexpectedStatus { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An error tetherd reported in its `{"error": {…}}` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", describe_fields(fields))]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// The offending fields of an invalid input, if tetherd named them.
    pub fields: Vec<FieldProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub path: String,
    pub message: String,
}

fn describe_fields(fields: &[FieldProblem]) -> String {
    fields
        .iter()
        .map(|f| format!("\n  {}: {}", f.path, f.message))
        .collect()
}

impl ApiError {
    pub fn from_body(status: StatusCode, body: ErrorBody) -> Self {
        let message = body.error.message;
        // tetherd may already name the fields in its message; say it once.
        let fields = field_problems(&body.error.details)
            .into_iter()
            .filter(|f| !message.contains(&format!("{}: {}", f.path, f.message)))
            .collect();
        ApiError {
            status,
            fields,
            code: body.error.code,
            message,
        }
    }
}

/// Finds `{path, message}` entries in an error's details, whether they are
/// the details themselves or under a key such as `errors` or `fields`.
fn field_problems(details: &serde_json::Value) -> Vec<FieldProblem> {
    let entries = match details {
        serde_json::Value::Array(entries) => entries,
        serde_json::Value::Object(map) => match map.values().find_map(|v| v.as_array()) {
            Some(entries) => entries,
            None => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    entries
        .iter()
        .filter_map(|entry| {
            Some(FieldProblem {
                path: entry.get("path")?.as_str()?.to_owned(),
                message: entry.get("message")?.as_str()?.to_owned(),
            })
        })
        .collect()
}

/// tetherd's API, as one signed-in (or not yet signed-in) user.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    /// tetherd's CA (DER), for the tunnels' own TLS; `None` only for the
    /// unverified CA fetch.
    ca_der: Option<Vec<u8>>,
}

/// A tunnel's WebSocket (ADR 0021).
pub type TunnelSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl ApiClient {
    /// A client that trusts only `ca_pem` (tetherd's own CA), never the
    /// system's roots: a public CA has no say over a private controller.
    ///
    /// `ca_pem` must hold exactly that one certificate: reqwest would trust
    /// every certificate in a bundle, pinned or not.
    pub fn new(server: &str, ca_pem: &[u8], token: Option<String>) -> Result<Self, ClientError> {
        let der = std::str::from_utf8(ca_pem)
            .map_err(|_| CaPemError::NoCertificate)
            .and_then(tether_proto::ca::single_certificate)
            .map_err(|source| ClientError::NotOneCa {
                server: server.trim_end_matches('/').to_owned(),
                source,
            })?;
        let ca = reqwest::Certificate::from_der(&der).map_err(ClientError::InvalidCa)?;
        let http = builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .map_err(ClientError::Build)?;
        Ok(ApiClient {
            http,
            base: parse_server_url(server)?,
            token,
            ca_der: Some(der),
        })
    }

    /// Fetches `/api/v1/ca.pem` without verifying the server: only for
    /// trust on first use, where the caller pins the answer by its fingerprint.
    pub async fn fetch_ca_unverified(server: &str) -> Result<Vec<u8>, ClientError> {
        let http = builder()
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(ClientError::Build)?;
        let client = ApiClient {
            http,
            base: parse_server_url(server)?,
            token: None,
            ca_der: None,
        };
        let (url, response) = client
            .send(Method::GET, &["ca.pem"], None::<&()>, REQUEST_TIMEOUT)
            .await?;
        let body = response
            .bytes()
            .await
            .map_err(|source| ClientError::Request { url, source })?;
        Ok(body.to_vec())
    }

    /// Whether the token is a service account's API key: a refusal then
    /// says why (revoked, expired) rather than "log in", which would not help.
    fn uses_api_key(&self) -> bool {
        self.token
            .as_deref()
            .is_some_and(|token| token.starts_with(API_KEY_PREFIX))
    }

    /// The server's base URL as the user should type it.
    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    pub async fn login(&self, request: &LoginRequest) -> Result<LoginResponse, ClientError> {
        self.call(Method::POST, &["login"], Some(request)).await
    }

    /// Ends this client's session on tetherd.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.send(Method::POST, &["logout"], None::<&()>, REQUEST_TIMEOUT)
            .await
            .map(drop)
    }

    pub async fn list_sessions(&self) -> Result<Vec<Session>, ClientError> {
        self.list_all(&["sessions"], &[], None, PAGE_SIZE).await
    }

    pub async fn revoke_session(&self, id: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["sessions", id],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// The devices by name, all of them or the first `cap`, read
    /// `page_size` at a time.
    pub async fn list_devices(
        &self,
        label_selector: Option<&str>,
        cap: Option<usize>,
        page_size: u32,
    ) -> Result<Vec<Device>, ClientError> {
        let query: Vec<(&str, String)> = label_selector
            .map(|s| ("labelSelector", s.to_owned()))
            .into_iter()
            .collect();
        self.list_all(&["devices"], &query, cap, page_size).await
    }

    pub async fn device_summary(
        &self,
        by: Option<&str>,
        label_selector: Option<&str>,
    ) -> Result<FleetSummary, ClientError> {
        let query: Vec<(&str, String)> = [("by", by), ("labelSelector", label_selector)]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?.to_owned())))
            .collect();
        self.call_with_query(Method::GET, &["devices", "summary"], &query)
            .await
    }

    pub async fn create_device(
        &self,
        request: &CreateDevice,
    ) -> Result<DeviceCreated, ClientError> {
        self.call(Method::POST, &["devices"], Some(request)).await
    }

    pub async fn get_device(&self, name: &str) -> Result<Device, ClientError> {
        self.call(Method::GET, &["devices", name], None::<&()>)
            .await
    }

    pub async fn patch_device(
        &self,
        name: &str,
        patch: &PatchDevice,
    ) -> Result<Device, ClientError> {
        self.call(Method::PATCH, &["devices", name], Some(patch))
            .await
    }

    /// Updates the device's spec: the whole spec, or the fields `mask`
    /// names; only if it is at `if_version`, if given.
    pub async fn update_device_spec(
        &self,
        name: &str,
        spec: &serde_json::Value,
        mask: Option<&str>,
        if_version: Option<u64>,
    ) -> Result<Device, ClientError> {
        let mut url = self.url(&["devices", name])?;
        if let Some(mask) = mask {
            url.query_pairs_mut().append_pair("updateMask", mask);
        }
        let mut request = self
            .http
            .request(Method::PATCH, url.clone())
            .timeout(REQUEST_TIMEOUT)
            .json(&serde_json::json!({ "spec": spec }));
        if let Some(version) = if_version {
            request = request.header(reqwest::header::IF_MATCH, format!("\"{version}\""));
        }
        let (url, response) = self.execute(url, request).await?;
        decode(url, response).await
    }

    pub async fn delete_device(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["devices", name],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn revoke_device(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::POST,
            &["devices", name, "revoke"],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// A one-time enrollment token valid for `ttl` (tetherd's default if
    /// `None`).
    pub async fn new_enrollment_token(
        &self,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<EnrollmentToken, ClientError> {
        let query: Vec<(&str, String)> = ttl
            .map(|ttl| ("ttlSeconds", ttl.as_secs().to_string()))
            .into_iter()
            .collect();
        self.call_with_query(Method::POST, &["devices", name, "enrollment-token"], &query)
            .await
    }

    pub async fn request_action(
        &self,
        device: &str,
        request: &RequestAction,
    ) -> Result<Action, ClientError> {
        self.call(Method::POST, &["devices", device, "actions"], Some(request))
            .await
    }

    /// The device's newest `cap` actions, newest first.
    pub async fn list_actions(&self, device: &str, cap: usize) -> Result<Vec<Action>, ClientError> {
        self.list_all(&["devices", device, "actions"], &[], Some(cap), PAGE_SIZE)
            .await
    }

    /// The action now, or with `wait`, as soon as it is terminal but after
    /// `wait` at the latest (tetherd's long-poll).
    pub async fn get_action(
        &self,
        id: &str,
        wait: Option<Duration>,
    ) -> Result<Action, ClientError> {
        let path = ["actions", id];
        let Some(wait) = wait else {
            return self.call(Method::GET, &path, None::<&()>).await;
        };
        let (url, response) = self
            .send_with_query(
                Method::GET,
                &path,
                &[("waitSeconds", wait.as_secs().to_string())],
                wait + LONG_POLL_MARGIN,
            )
            .await?;
        decode(url, response).await
    }

    /// The device's newest `cap` events, newest first.
    pub async fn events(&self, device: &str, cap: usize) -> Result<Vec<Event>, ClientError> {
        self.list_all(&["devices", device, "events"], &[], Some(cap), PAGE_SIZE)
            .await
    }

    /// The newest `cap` audit entries, newest first.
    pub async fn audit(&self, cap: usize) -> Result<Vec<AuditEntry>, ClientError> {
        self.list_all(&["audit"], &[], Some(cap), PAGE_SIZE).await
    }

    /// The device's newest `cap` metrics samples, newest first.
    pub async fn metrics(&self, device: &str, cap: usize) -> Result<Vec<HostMetrics>, ClientError> {
        self.list_all(&["devices", device, "metrics"], &[], Some(cap), PAGE_SIZE)
            .await
    }

    /// The device's metric series and their newest points.
    pub async fn metric_series(&self, device: &str) -> Result<SeriesList, ClientError> {
        self.call(
            Method::GET,
            &["devices", device, "metrics", "series"],
            None::<&()>,
        )
        .await
    }

    /// One metric of the device over a window (`query`: `metric`, and
    /// `since`, `until`, `step` as tetherd reads them).
    pub async fn metric_range(
        &self,
        device: &str,
        query: &[(&str, String)],
    ) -> Result<MetricRange, ClientError> {
        let (url, response) = self
            .send_with_query(
                Method::GET,
                &["devices", device, "metrics", "query"],
                query,
                REQUEST_TIMEOUT,
            )
            .await?;
        decode(url, response).await
    }

    /// A listing followed page by page through its `continue` tokens until
    /// it ends or `cap` items are in.
    async fn list_all<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, String)],
        cap: Option<usize>,
        page_size: u32,
    ) -> Result<Vec<T>, ClientError> {
        let mut items = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let wanted = cap.map_or(page_size, |cap| {
                u32::try_from(cap - items.len()).map_or(page_size, |left| left.min(page_size))
            });
            let mut page_query = query.to_vec();
            page_query.push(("limit", wanted.to_string()));
            if let Some(token) = next.take() {
                page_query.push(("continue", token));
            }
            let page: Page<T> = self.call_with_query(Method::GET, path, &page_query).await?;
            items.extend(page.items);
            match page.continue_token {
                Some(token) if cap.is_none_or(|cap| items.len() < cap) => next = Some(token),
                _ => break,
            }
        }
        if let Some(cap) = cap {
            items.truncate(cap);
        }
        Ok(items)
    }

    pub async fn device_usage(&self, name: &str) -> Result<DeviceUsage, ClientError> {
        self.call(Method::GET, &["devices", name, "usage"], None::<&()>)
            .await
    }

    /// One page of a log archive (`path` is `devices/NAME/logs` or `logs`).
    pub async fn logs_page(
        &self,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<Page<LogEntry>, ClientError> {
        self.call_with_query(Method::GET, path, query).await
    }

    /// Opens a log follow stream (`path` is `devices/NAME/logs/follow` or
    /// `logs/follow`); read it with [`LogFollow::next`].
    pub async fn follow_logs(
        &self,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<LogFollow, ClientError> {
        let mut url = self.url(path)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        // No overall timeout: the stream lasts as long as the operator
        // watches; `LogFollow::next` notices a silent connection instead.
        let request = self.http.request(Method::GET, url.clone());
        let (url, response) = self.execute(url, request).await?;
        Ok(LogFollow {
            url,
            response,
            buffer: Vec::new(),
        })
    }

    pub async fn create_job(&self, request: &CreateJob) -> Result<Job, ClientError> {
        self.call(Method::POST, &["jobs"], Some(request)).await
    }

    /// The newest `cap` jobs, newest first.
    pub async fn list_jobs(&self, cap: usize) -> Result<Vec<Job>, ClientError> {
        self.list_all(&["jobs"], &[], Some(cap), PAGE_SIZE).await
    }

    pub async fn get_job(&self, id: &str) -> Result<Job, ClientError> {
        self.call(Method::GET, &["jobs", id], None::<&()>).await
    }

    pub async fn cancel_job(&self, id: &str) -> Result<Job, ClientError> {
        self.call(
            Method::POST,
            &["jobs", id, "cancel"],
            Some(&serde_json::json!({})),
        )
        .await
    }

    /// Every action of the job (only those in `state`, if given), by
    /// device name, following the pages.
    pub async fn job_actions(
        &self,
        id: &str,
        state: Option<tether_proto::ActionState>,
    ) -> Result<Vec<Action>, ClientError> {
        let query: Vec<(&str, String)> = state
            .map(|state| ("state", state.to_string()))
            .into_iter()
            .collect();
        self.list_all(&["jobs", id, "actions"], &query, None, PAGE_SIZE)
            .await
    }

    /// The catalogue; with `device`, only the actions that device accepts.
    pub async fn catalogue(
        &self,
        device: Option<&str>,
    ) -> Result<Vec<CatalogueEntry>, ClientError> {
        let query: Vec<(&str, String)> = device
            .map(|device| ("device", device.to_owned()))
            .into_iter()
            .collect();
        self.call_with_query(Method::GET, &["catalogue"], &query)
            .await
    }

    /// Enables (`PUT`) or disables (`DELETE`) `action` on the device.
    pub async fn set_action_enabled(
        &self,
        device: &str,
        action: &str,
        enabled: bool,
    ) -> Result<DeviceActionSet, ClientError> {
        let method = if enabled { Method::PUT } else { Method::DELETE };
        self.call(
            method,
            &["devices", device, "action-set", action],
            None::<&()>,
        )
        .await
    }

    /// The caller's SSH public keys for the management shell.
    pub async fn list_ssh_keys(&self) -> Result<Vec<SshKey>, ClientError> {
        self.call(Method::GET, &["users", "me", "ssh-keys"], None::<&()>)
            .await
    }

    pub async fn add_ssh_key(&self, request: &AddSshKey) -> Result<SshKey, ClientError> {
        self.call(Method::POST, &["users", "me", "ssh-keys"], Some(request))
            .await
    }

    pub async fn remove_ssh_key(&self, id: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["users", "me", "ssh-keys", id],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn list_users(&self) -> Result<Vec<User>, ClientError> {
        self.call(Method::GET, &["users"], None::<&()>).await
    }

    pub async fn create_user(&self, request: &CreateUser) -> Result<UserCreated, ClientError> {
        self.call(Method::POST, &["users"], Some(request)).await
    }

    pub async fn delete_user(&self, username: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["users", username],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn set_user_role(&self, username: &str, role: Role) -> Result<User, ClientError> {
        self.call(
            Method::PUT,
            &["users", username, "role"],
            Some(&SetRole { role }),
        )
        .await
    }

    /// Changes the caller's own password.
    pub async fn change_password(&self, request: &ChangePassword) -> Result<(), ClientError> {
        self.send(
            Method::PUT,
            &["users", "me", "password"],
            Some(request),
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn list_service_accounts(&self) -> Result<Vec<ServiceAccount>, ClientError> {
        self.call(Method::GET, &["service-accounts"], None::<&()>)
            .await
    }

    pub async fn create_service_account(
        &self,
        request: &CreateServiceAccount,
    ) -> Result<ServiceAccount, ClientError> {
        self.call(Method::POST, &["service-accounts"], Some(request))
            .await
    }

    pub async fn delete_service_account(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["service-accounts", name],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn create_api_key(
        &self,
        account: &str,
        request: &CreateApiKey,
    ) -> Result<ApiKeyCreated, ClientError> {
        self.call(
            Method::POST,
            &["service-accounts", account, "keys"],
            Some(request),
        )
        .await
    }

    pub async fn list_api_keys(&self, account: &str) -> Result<Vec<ApiKey>, ClientError> {
        self.call(
            Method::GET,
            &["service-accounts", account, "keys"],
            None::<&()>,
        )
        .await
    }

    pub async fn revoke_api_key(&self, account: &str, id: &str) -> Result<(), ClientError> {
        self.send(
            Method::POST,
            &["service-accounts", account, "keys", id, "revoke"],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// Turns password login to the device's management shell on; the
    /// answer holds the password, shown once.
    pub async fn set_shell_password(
        &self,
        device: &str,
        request: &SetShellPassword,
    ) -> Result<ShellPassword, ClientError> {
        self.call(
            Method::PUT,
            &["devices", device, "shell-password"],
            Some(request),
        )
        .await
    }

    pub async fn disable_shell_password(&self, device: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["devices", device, "shell-password"],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn set_secret(&self, name: &str, request: &SetSecret) -> Result<Secret, ClientError> {
        self.call(Method::PUT, &["secrets", name], Some(request))
            .await
    }

    pub async fn list_secrets(&self) -> Result<Vec<Secret>, ClientError> {
        self.list_all(&["secrets"], &[], None, PAGE_SIZE).await
    }

    pub async fn get_secret(&self, name: &str) -> Result<Secret, ClientError> {
        self.call(Method::GET, &["secrets", name], None::<&()>)
            .await
    }

    pub async fn delete_secret(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["secrets", name],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn create_template(
        &self,
        request: &CreateChartTemplate,
    ) -> Result<ChartTemplate, ClientError> {
        self.call(Method::POST, &["chart-templates"], Some(request))
            .await
    }

    pub async fn update_template(
        &self,
        name: &str,
        spec: &ChartTemplateSpec,
    ) -> Result<ChartTemplate, ClientError> {
        self.call(Method::PUT, &["chart-templates", name], Some(spec))
            .await
    }

    pub async fn list_templates(&self) -> Result<Vec<ChartTemplate>, ClientError> {
        self.list_all(&["chart-templates"], &[], None, PAGE_SIZE)
            .await
    }

    pub async fn get_template(&self, name: &str) -> Result<ChartTemplate, ClientError> {
        self.call(Method::GET, &["chart-templates", name], None::<&()>)
            .await
    }

    pub async fn delete_template(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["chart-templates", name],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn create_alert_rule(
        &self,
        request: &CreateAlertRule,
    ) -> Result<AlertRule, ClientError> {
        self.call(Method::POST, &["alert-rules"], Some(request))
            .await
    }

    pub async fn update_alert_rule(
        &self,
        name: &str,
        spec: &AlertRuleSpec,
    ) -> Result<AlertRule, ClientError> {
        self.call(Method::PUT, &["alert-rules", name], Some(spec))
            .await
    }

    pub async fn list_alert_deliveries(
        &self,
        state: &str,
    ) -> Result<Vec<AlertDelivery>, ClientError> {
        self.list_all(
            &["alerts", "deliveries"],
            &[("state", state.to_owned())],
            None,
            PAGE_SIZE,
        )
        .await
    }

    pub async fn retry_alert_delivery(&self, id: &str) -> Result<AlertDelivery, ClientError> {
        self.call(
            Method::POST,
            &["alerts", "deliveries", id, "retry"],
            None::<&()>,
        )
        .await
    }

    pub async fn list_alert_rules(&self) -> Result<Vec<AlertRule>, ClientError> {
        self.list_all(&["alert-rules"], &[], None, PAGE_SIZE).await
    }

    pub async fn get_alert_rule(&self, name: &str) -> Result<AlertRule, ClientError> {
        self.call(Method::GET, &["alert-rules", name], None::<&()>)
            .await
    }

    pub async fn delete_alert_rule(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["alert-rules", name],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn create_deployment(
        &self,
        request: &CreateDeployment,
    ) -> Result<Deployment, ClientError> {
        self.call(Method::POST, &["deployments"], Some(request))
            .await
    }

    pub async fn update_deployment(
        &self,
        name: &str,
        spec: &DeploymentSpecification,
    ) -> Result<Deployment, ClientError> {
        self.call(Method::PUT, &["deployments", name], Some(spec))
            .await
    }

    pub async fn list_deployments(&self) -> Result<Vec<Deployment>, ClientError> {
        self.list_all(&["deployments"], &[], None, PAGE_SIZE).await
    }

    pub async fn get_deployment(&self, name: &str) -> Result<Deployment, ClientError> {
        self.call(Method::GET, &["deployments", name], None::<&()>)
            .await
    }

    pub async fn deployment_status(&self, name: &str) -> Result<DeploymentRollout, ClientError> {
        self.call(Method::GET, &["deployments", name, "status"], None::<&()>)
            .await
    }

    pub async fn resume_deployment(&self, name: &str) -> Result<Deployment, ClientError> {
        self.call(
            Method::POST,
            &["deployments", name, "resume"],
            Some(&serde_json::json!({})),
        )
        .await
    }

    pub async fn delete_deployment(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["deployments", name],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// Uploads `length` bytes of `binary` as `platform`'s binary of agent
    /// release `version`; `true` with the release when it was new, `false`
    /// when these bytes were published before.
    pub async fn publish_release(
        &self,
        version: &str,
        platform: &str,
        binary: reqwest::Body,
        length: u64,
    ) -> Result<(bool, PublishedRelease), ClientError> {
        let url = self.url(&["agent-releases", version, platform])?;
        let request = self
            .http
            .put(url.clone())
            .timeout(PUBLISH_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(binary);
        let (url, response) = self.execute(url, request).await?;
        let created = response.status() == StatusCode::CREATED;
        Ok((created, decode(url, response).await?))
    }

    pub async fn list_releases(&self) -> Result<Vec<PublishedRelease>, ClientError> {
        self.list_all(&["agent-releases"], &[], None, PAGE_SIZE)
            .await
    }

    pub async fn get_release(&self, version: &str) -> Result<PublishedRelease, ClientError> {
        self.call(Method::GET, &["agent-releases", version], None::<&()>)
            .await
    }

    pub async fn delete_release(&self, version: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["agent-releases", version],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn create_policy(&self, request: &CreatePolicy) -> Result<Policy, ClientError> {
        self.call(Method::POST, &["provisioning-policies"], Some(request))
            .await
    }

    pub async fn list_policies(&self) -> Result<Vec<Policy>, ClientError> {
        self.list_all(&["provisioning-policies"], &[], None, PAGE_SIZE)
            .await
    }

    pub async fn get_policy(&self, name: &str) -> Result<Policy, ClientError> {
        self.call(Method::GET, &["provisioning-policies", name], None::<&()>)
            .await
    }

    pub async fn delete_policy(&self, name: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["provisioning-policies", name],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// A new key of the policy, its secret in it this once.
    pub async fn create_provisioning_key(
        &self,
        policy: &str,
        request: &CreateKeyRequest,
    ) -> Result<ProvisioningKey, ClientError> {
        self.call(
            Method::POST,
            &["provisioning-policies", policy, "keys"],
            Some(request),
        )
        .await
    }

    pub async fn list_provisioning_keys(
        &self,
        policy: &str,
    ) -> Result<Vec<ProvisioningKeyInfo>, ClientError> {
        self.call(
            Method::GET,
            &["provisioning-policies", policy, "keys"],
            None::<&()>,
        )
        .await
    }

    pub async fn revoke_provisioning_key(
        &self,
        policy: &str,
        key: &str,
    ) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            &["provisioning-policies", policy, "keys", key],
            None::<&()>,
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// Registrations (only those in `state`, if given), oldest first.
    pub async fn list_approvals(&self, state: Option<&str>) -> Result<Vec<Approval>, ClientError> {
        let query: Vec<(&str, String)> =
            state.map(|s| ("state", s.to_owned())).into_iter().collect();
        self.list_all(&["approvals"], &query, None, PAGE_SIZE).await
    }

    /// Alerts newest first, at most `cap`; `query` filters them.
    pub async fn list_alerts(
        &self,
        query: &[(&str, String)],
        cap: usize,
    ) -> Result<Vec<Alert>, ClientError> {
        self.list_all(&["alerts"], query, Some(cap), PAGE_SIZE)
            .await
    }

    pub async fn get_alert(&self, id: u64) -> Result<Alert, ClientError> {
        self.call(Method::GET, &["alerts", &id.to_string()], None::<&()>)
            .await
    }

    pub async fn acknowledge_alert(&self, id: u64) -> Result<Alert, ClientError> {
        self.call(
            Method::POST,
            &["alerts", &id.to_string(), "acknowledge"],
            None::<&()>,
        )
        .await
    }

    pub async fn get_approval(&self, id: &str) -> Result<Approval, ClientError> {
        self.call(Method::GET, &["approvals", id], None::<&()>)
            .await
    }

    pub async fn approve(
        &self,
        id: &str,
        request: &ApproveRequest,
    ) -> Result<Approval, ClientError> {
        self.call(Method::POST, &["approvals", id, "approve"], Some(request))
            .await
    }

    pub async fn deny(&self, id: &str, request: &DenyRequest) -> Result<Approval, ClientError> {
        self.call(Method::POST, &["approvals", id, "deny"], Some(request))
            .await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let (url, response) = self.send(method, path, body, REQUEST_TIMEOUT).await?;
        decode(url, response).await
    }

    async fn call_with_query<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let (url, response) = self
            .send_with_query(method, path, query, REQUEST_TIMEOUT)
            .await?;
        decode(url, response).await
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<(String, reqwest::Response), ClientError> {
        let url = self.url(path)?;
        let mut request = self.http.request(method, url.clone()).timeout(timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.execute(url, request).await
    }

    async fn send_with_query(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        timeout: Duration,
    ) -> Result<(String, reqwest::Response), ClientError> {
        let mut url = self.url(path)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let request = self.http.request(method, url.clone()).timeout(timeout);
        self.execute(url, request).await
    }

    async fn execute(
        &self,
        url: Url,
        mut request: reqwest::RequestBuilder,
    ) -> Result<(String, reqwest::Response), ClientError> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let url = url.to_string();
        tracing::debug!(%url, "request");
        let response = request.send().await.map_err(|source| {
            if source.is_connect() || source.is_timeout() {
                ClientError::Connect {
                    url: url.clone(),
                    source,
                }
            } else {
                ClientError::Request {
                    url: url.clone(),
                    source,
                }
            }
        })?;
        let status = response.status();
        tracing::debug!(%url, %status, "response");
        if status.is_success() {
            return Ok((url, response));
        }
        if status == StatusCode::UNAUTHORIZED && !self.uses_api_key() {
            return Err(ClientError::Unauthorized {
                server: self.server().to_owned(),
            });
        }
        let body = response.text().await.unwrap_or_default();
        Err(error_from_body(url, status, &body))
    }

    /// `base` + `/api/v1/` + the segments, each percent-encoded, so that a
    /// name can never step into another route.
    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidServerUrl {
                url: self.base.to_string(),
                reason: "it cannot hold a path; use https://HOST:PORT".to_owned(),
            })?
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments);
        Ok(url)
    }
}

/// tetherd sends a keepalive line every 15 s; three missed mean the
/// connection is gone.
const FOLLOW_SILENCE: Duration = Duration::from_secs(45);

/// A stream of log lines as tetherd stores them.
pub struct LogFollow {
    url: String,
    response: reqwest::Response,
    /// Bytes of a line not complete yet.
    buffer: Vec<u8>,
}

impl LogFollow {
    /// The next line; `None` when tetherd ended the stream.
    pub async fn next(&mut self) -> Result<Option<LogEntry>, ClientError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue; // keepalive
                }
                return self.decode(line).map(Some);
            }
            let chunk = tokio::time::timeout(FOLLOW_SILENCE, self.response.chunk())
                .await
                .map_err(|_| {
                    self.broke(format!("nothing heard for {} s", FOLLOW_SILENCE.as_secs()))
                })?
                .map_err(|source| ClientError::StreamRead {
                    url: self.url.clone(),
                    source,
                })?;
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None if self.buffer.is_empty() => return Ok(None),
                None => return Err(self.broke("it stopped in the middle of a line".into())),
            }
        }
    }

    fn decode(&self, line: &[u8]) -> Result<LogEntry, ClientError> {
        let value: serde_json::Value = serde_json::from_slice(line)
            .map_err(|error| self.broke(format!("a line is not JSON: {error}")))?;
        if let Some(error) = value.get("error") {
            let message = error["message"]
                .as_str()
                .unwrap_or("tetherd stopped the stream");
            return Err(self.broke(message.to_owned()));
        }
        serde_json::from_value(value)
            .map_err(|error| self.broke(format!("a line is not a log entry: {error}")))
    }

    fn broke(&self, reason: String) -> ClientError {
        ClientError::Stream {
            url: self.url.clone(),
            reason,
        }
    }
}

/// Installs ring as rustls' process-wide crypto provider unless one is set.
/// reqwest is built without a provider of its own and panics without one.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing one is fine: any will do.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn builder() -> reqwest::ClientBuilder {
    ensure_crypto_provider();
    reqwest::Client::builder()
        .https_only(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("tether-cli/", env!("CARGO_PKG_VERSION")))
}

/// Checks a server URL: HTTPS only, no query or fragment.
pub fn parse_server_url(server: &str) -> Result<Url, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidServerUrl {
        url: server.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(server).map_err(|err| invalid(&err.to_string()))?;
    if url.scheme() != "https" {
        return Err(invalid(
            "tetherd serves its API over HTTPS only; use https://HOST:PORT",
        ));
    }
    if url.host_str().is_none() || url.cannot_be_a_base() {
        return Err(invalid("it names no host; use https://HOST:PORT"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("leave out the query and fragment"));
    }
    Ok(url)
}

async fn decode<T: DeserializeOwned>(
    url: String,
    response: reqwest::Response,
) -> Result<T, ClientError> {
    response
        .json()
        .await
        .map_err(|source| ClientError::Decode { url, source })
}

impl ApiClient {
    /// Opens a tunnel to `device` (`GET /devices/{name}/tunnel` as a
    /// WebSocket, ADR 0021) with `query` as its parameters; tetherd answers
    /// once the device has dialed back, or with the error that kept it.
    pub async fn tunnel(
        &self,
        device: &str,
        query: &[(&str, &str)],
    ) -> Result<TunnelSocket, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut url = self.url(&["devices", device, "tunnel"])?;
        url.query_pairs_mut().extend_pairs(query);
        let shown = url.to_string();
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| ClientError::Tunnel {
            url: shown.clone(),
            source,
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let mut ws_url = url.clone();
        let _ = ws_url.set_scheme("wss");
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| failed(e.into()))?;
        if let Some(token) = &self.token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}")
                    .parse()
                    .map_err(|e: reqwest::header::InvalidHeaderValue| failed(e.into()))?,
            );
        }
        let mut roots = rustls::RootCertStore::empty();
        if let Some(der) = &self.ca_der {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.clone()))
                .map_err(|e| failed(e.into()))?;
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = rustls::pki_types::ServerName::try_from(bare_host.clone())
            .map_err(|e| failed(e.into()))?;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((bare_host.as_str(), port)),
        )
        .await
        .map_err(|e| failed(e.into()))?
        .map_err(|e| failed(e.into()))?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect(server_name, tcp)
            .await
            .map_err(|e| failed(e.into()))?;
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(tether_proto::tunnel::MAX_PAYLOAD + 1))
            .max_frame_size(Some(tether_proto::tunnel::MAX_PAYLOAD + 1));
        match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                if status == StatusCode::UNAUTHORIZED {
                    return Err(ClientError::Unauthorized {
                        server: self.base.to_string(),
                    });
                }
                Err(error_from_body(shown, status, &body))
            }
            Err(e) => Err(failed(e.into())),
        }
    }
}

fn error_from_body(url: String, status: StatusCode, body: &str) -> ClientError {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(body) => ApiError::from_body(status, body).into(),
        Err(_) => ClientError::UnexpectedStatus {
            url,
            status,
            body: body.chars().take(MAX_BODY_SHOWN).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(server: &str) -> ApiClient {
        ensure_crypto_provider();
        ApiClient {
            http: reqwest::Client::new(),
            base: parse_server_url(server).expect("valid URL"),
            token: None,
            ca_der: None,
        }
    }

    #[test]
    fn a_saved_ca_bundle_is_refused_rather_than_trusted_whole() {
        ensure_crypto_provider();
        let one = "-----BEGIN CERTIFICATE-----\nAQIDBA==\n-----END CERTIFICATE-----\n";
        let two = format!("{one}{one}");
        let err = ApiClient::new("https://h:8443/", two.as_bytes(), None).expect_err("two");
        assert!(matches!(
            err,
            ClientError::NotOneCa {
                source: CaPemError::SeveralCertificates { count: 2 },
                ..
            }
        ));
        assert!(
            err.to_string()
                .contains("tether login https://h:8443 --ca-file"),
            "{err}"
        );
    }

    #[test]
    fn urls_are_built_under_api_v1_with_encoded_segments() {
        let c = client("https://127.0.0.1:8443");
        assert_eq!(
            c.url(&["devices", "edge-1", "actions"])
                .expect("valid")
                .as_str(),
            "https://127.0.0.1:8443/api/v1/devices/edge-1/actions"
        );
        assert_eq!(
            c.url(&["actions", "../x?y"]).expect("valid").as_str(),
            "https://127.0.0.1:8443/api/v1/actions/..%2Fx%3Fy"
        );
        let c = client("https://tether.example/prefix/");
        assert_eq!(
            c.url(&["login"]).expect("valid").as_str(),
            "https://tether.example/prefix/api/v1/login"
        );
        assert_eq!(c.server(), "https://tether.example/prefix");
    }

    #[test]
    fn only_https_server_urls_are_accepted() {
        assert!(parse_server_url("https://localhost:8443").is_ok());
        for bad in [
            "http://localhost:8443",
            "localhost:8443",
            "https://h/?q=1",
            "",
        ] {
            let err = parse_server_url(bad).expect_err(bad);
            assert!(matches!(err, ClientError::InvalidServerUrl { .. }), "{bad}");
        }
    }

    #[test]
    fn api_errors_show_the_message_and_each_offending_field() {
        let body = r#"{"error":{"code":"invalid_input","message":"invalid input for action \"run-stats\"",
            "details":{"errors":[{"path":"$.interval","message":"must be at least 1"}]}}}"#;
        let err = error_from_body("u".into(), StatusCode::BAD_REQUEST, body);
        assert_eq!(
            err.to_string(),
            "invalid input for action \"run-stats\"\n  $.interval: must be at least 1"
        );
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));

        let body = r#"{"error":{"code":"invalid_input","message":"bad","details":[{"path":"$","message":"m"}]}}"#;
        let ClientError::Api(api) = error_from_body("u".into(), StatusCode::BAD_REQUEST, body)
        else {
            panic!("an error body is an API error");
        };
        assert_eq!(api.code, "invalid_input");
        assert_eq!(api.fields.len(), 1);
    }

    #[test]
    fn fields_the_message_names_already_are_not_repeated() {
        let body = r#"{"error":{"code":"invalid_input","message":"bad input: $.a: too big",
            "details":{"fields":[{"path":"$.a","message":"too big"},{"path":"$.b","message":"missing"}]}}}"#;
        let err = error_from_body("u".into(), StatusCode::BAD_REQUEST, body);
        assert_eq!(err.to_string(), "bad input: $.a: too big\n  $.b: missing");
    }

    #[test]
    fn api_errors_without_details_show_just_the_message() {
        let body = r#"{"error":{"code":"not_found","message":"device \"x\" not found"}}"#;
        let err = error_from_body("u".into(), StatusCode::NOT_FOUND, body);
        assert_eq!(err.to_string(), "device \"x\" not found");
    }

    #[test]
    fn other_error_bodies_are_shown_with_the_status() {
        let err = error_from_body(
            "https://h/api/v1/x".into(),
            StatusCode::BAD_GATEWAY,
            "<html>proxy error</html>",
        );
        assert_eq!(
            err.to_string(),
            "https://h/api/v1/x answered 502 Bad Gateway: <html>proxy error</html>"
        );
    }

    #[test]
    fn unauthorized_says_how_to_log_in_again() {
        let err = ClientError::Unauthorized {
            server: "https://h:8443".into(),
        };
        assert_eq!(
            err.to_string(),
            "not logged in or the session expired: run `tether login https://h:8443`"
        );
    }
}
