//! The HTTP API under `/api/v1`: routes, authentication, and the OpenAPI
//! document generated from the handlers' annotations.

mod actions;
mod alert_deliveries;
mod alert_rules;
mod alerts;
mod audit;
mod desired;
mod devices;
mod enroll;
pub mod error;
mod extract;
mod health;
mod jobs;
mod join;
mod kubernetes;
mod linger;
pub mod listener;
mod logs;
mod management_shell;
mod metrics;
mod openapi;
mod page;
mod provisioning;
mod releases;
mod secrets;
mod service_accounts;
mod session;
mod sessions;
mod telemetry;
mod time;
mod tunnels;
mod users;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::actions::ActionService;
use crate::auth::{Auth, AuthError, roles};
use crate::pki::CertificateAuthority;
use crate::registry::{Endpoints, Registry};
use crate::store::Store;
use error::ApiError;
use extract::host_without_port;

/// Largest request body accepted; action inputs are small.
const MAX_BODY_BYTES: usize = 1024 * 1024;

pub struct AppState {
    pub store: Store,
    pub auth: Auth,
    pub registry: Registry,
    /// Policies, keys, registrations and approvals (ADR 0025).
    pub provisioning: crate::provisioning::Provisioning,
    /// Chart templates, deployments and their rollouts (ADR 0029).
    pub desired: crate::desired::DesiredState,
    /// Agent releases (issue 19).
    pub releases: crate::releases::Releases,
    /// Sealed secrets (ADR 0030).
    pub secrets: crate::secrets::Secrets,
    /// Operator-defined alert rules (issue 18).
    pub alert_rules: crate::monitor::rules::AlertRules,
    pub actions: Arc<ActionService>,
    pub jobs: Arc<crate::jobs::JobService>,
    pub logs: Arc<crate::logs::Logs>,
    /// The fleet's changes for `GET /events/follow`: one poller for all
    /// of this replica's followers.
    pub live: crate::live::Feed,
    /// Long-polls (`waitSeconds`) held by each caller: each re-reads its
    /// action every few seconds while it waits.
    pub waits: crate::per_caller::PerCaller,
    /// Metric series: range queries and the fleet exposition.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Per-device input counters for `GET /devices/{name}`.
    pub ingest: Arc<crate::ingest::Ingest>,
    pub ca: Arc<CertificateAuthority>,
    pub observability: Arc<crate::observability::Observability>,
    /// Who may scrape `/metrics`.
    pub scrape_token: crate::observability::ScrapeToken,
    /// The MQTT port devices connect to; the host is the one the client used.
    pub mqtt_port: u16,
    /// Answers `/readyz`.
    pub health: Arc<crate::cluster::Health>,
    /// What the join manifest runs (`[kubernetes]`).
    pub join: crate::config::KubernetesConfig,
    /// With an external broker, the URL devices are given instead.
    pub device_mqtt_url: Option<String>,
    /// Tunnels waiting for their device to dial back (ADR 0021).
    pub tunnels: Arc<crate::tunnels::Tunnels<axum::extract::ws::WebSocket>>,
    /// Where devices dial tunnels back (`cluster.advertise_api_url`).
    pub advertise_api_url: Option<String>,
}

impl AppState {
    /// Records who did what; a failure to record is logged, not fatal, so
    /// the audit table cannot take the API down.
    async fn audit(&self, actor: &str, method: &str, path: &str, status: u16) {
        self.audit_with(actor, method, path, status, None).await;
    }

    /// [`Self::audit`] with a detail.
    async fn audit_with(
        &self,
        actor: &str,
        method: &str,
        path: &str,
        status: u16,
        detail: Option<serde_json::Value>,
    ) {
        let record = crate::store::AuditRecord {
            id: uuid::Uuid::now_v7().to_string(),
            at: chrono::Utc::now(),
            actor: actor.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            status,
            detail,
        };
        if let Err(error) = self.store.insert_audit(&record).await {
            tracing::error!(error = %crate::error_chain(&error), actor, method, path, "could not record an audit entry");
        }
    }

    fn endpoints(&self, client_host: &str) -> Endpoints {
        Endpoints {
            api_url: format!("https://{client_host}"),
            mqtt_url: self.device_mqtt_url.clone().unwrap_or_else(|| {
                format!(
                    "mqtts://{}:{}",
                    host_without_port(client_host),
                    self.mqtt_port
                )
            }),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tether API",
        description = "Enroll devices, run actions on them and read what they report."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn router(state: Arc<AppState>) -> axum::Router {
    let protected = OpenApiRouter::new()
        .merge(devices::routes())
        .merge(actions::routes())
        .merge(jobs::routes())
        .merge(telemetry::routes())
        .merge(logs::routes())
        .merge(audit::routes())
        .merge(alerts::routes())
        .merge(sessions::routes())
        .merge(tunnels::client_routes())
        .merge(kubernetes::routes())
        .merge(management_shell::routes())
        .merge(provisioning::routes())
        .merge(desired::routes())
        .merge(secrets::routes())
        .merge(alert_rules::routes())
        .merge(users::routes())
        .merge(service_accounts::routes())
        .merge(alert_deliveries::routes())
        .merge(releases::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_bearer,
        ));
    let public = OpenApiRouter::new()
        .merge(session::routes())
        .merge(enroll::routes())
        .merge(provisioning::device_routes())
        .merge(join::routes())
        .merge(time::routes())
        .merge(tunnels::device_routes())
        .merge(releases::device_routes());
    let (api, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", protected.merge(public))
        .merge(health::routes())
        .split_for_parts();
    openapi.info.version = env!("CARGO_PKG_VERSION").to_owned();
    openapi::complete(
        &mut openapi,
        state.actions.catalogue(),
        state.actions.max_ttl().as_secs(),
    );
    let document = openapi.to_json().unwrap_or_else(|error| {
        tracing::error!(%error, "could not render the OpenAPI document");
        String::from("{}")
    });
    // Shared, not copied per request: every answer a client leaves unread
    // would otherwise hold its own copy (a quarter of a megabyte).
    let document = axum::body::Bytes::from(document);
    api.route(
        "/api/v1/openapi.json",
        axum::routing::get(move || async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                document,
            )
        }),
    )
    .route("/metrics", axum::routing::get(metrics::scrape))
    .route("/metrics/fleet", axum::routing::get(metrics::scrape_fleet))
    .merge(crate::console::router())
    .fallback(|| async { ApiError::not_found("no such route; see /api/v1/openapi.json") })
    .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
    .layer(axum::middleware::from_fn(close_after_refused_body))
    .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
    .with_state(state)
}

/// The span of a request, as tower-http's default but without the
/// enrollment token of a join URL: a debug log must not enroll a device.
fn request_span(request: &Request) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        uri = %loggable_uri(request.uri()),
        version = ?request.version(),
    )
}

fn loggable_uri(uri: &axum::http::Uri) -> std::borrow::Cow<'_, str> {
    if uri.path().starts_with(JOIN_PATH) {
        return format!("{JOIN_PATH}(token)").into();
    }
    uri.path_and_query()
        .map_or(uri.path(), |p| p.as_str())
        .into()
}

/// Where the join manifest is served; the rest of the path is a token.
const JOIN_PATH: &str = "/api/v1/join/";

/// A request refused before its body was read (401, 413, 415, …) leaves the
/// body on the connection, so hyper closes it after the answer; saying so in
/// the answer keeps clients from sending the next request into a closing
/// connection and failing with a reset. HTTP/2 refuses a stream, not the
/// connection, and has no such header.
async fn close_after_refused_body(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let has_body = headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    let http1 = request.version() < axum::http::Version::HTTP_2;
    let mut response = next.run(request).await;
    if http1
        && has_body
        && (response.status().is_client_error() || response.status().is_server_error())
    {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// The one gate of every route that needs a login: who is calling (a
/// session or an API key), and whether their role may call this route
/// ([`crate::auth::roles`]; a route missing from the table is refused).
/// Every mutating call, every refusal of an authenticated caller and every
/// use of a known but expired or revoked API key is audited; anonymous
/// 401s are not, or a flood of them would grow the table.
async fn require_bearer(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let method = request.method().clone();
    // Inside the nested router the URI lost its `/api/v1` prefix.
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| request.uri().path(), |original| original.path())
        .to_owned();
    let template = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("", |matched| matched.as_str())
        .to_owned();
    let headers = request.headers();
    let token = match headers.get(axum::http::header::AUTHORIZATION) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer ")),
        // A browser's WebSocket cannot set Authorization: the console names
        // its token in a subprotocol instead, on the tunnel route only
        // (ADR 0034).
        None if template == tunnels::CLIENT_ROUTE => tunnels::bearer_subprotocol(headers),
        None => None,
    }
    .ok_or(AuthError::Missing)?;
    let authenticated_at = tokio::time::Instant::now();
    let principal = match state.auth.authenticate(token.trim()).await {
        Ok(principal) => principal,
        Err(error) => {
            audit_refused_credential(&state, &error, &method, &path).await;
            return Err(error.into());
        }
    };
    let allowed = roles::access(method.as_str(), &template)
        .is_some_and(|access| access.allows(principal.role));
    if !allowed {
        let message = roles::denial(method.as_str(), &template, principal.role);
        tracing::info!(user = %principal.username, %method, path, "refused: {message}");
        state
            .audit_with(
                &principal.username,
                method.as_str(),
                &path,
                StatusCode::FORBIDDEN.as_u16(),
                Some(serde_json::json!({ "role": principal.role, "route": template, "error": message })),
            )
            .await;
        return Err(ApiError::new(StatusCode::FORBIDDEN, "role_denied", message));
    }
    tracing::debug!(user = %principal.username, %method, path, "authorized");
    let username = principal.username.clone();
    let token = token.trim().to_owned();
    request.extensions_mut().insert(principal);
    let response = bound_to_session(
        next.run(request).await,
        state.auth.clone(),
        token,
        authenticated_at,
    );
    if !matches!(method, Method::GET | Method::HEAD) {
        state
            .audit(
                &username,
                method.as_str(),
                &path,
                response.status().as_u16(),
            )
            .await;
    }
    Ok(response)
}

/// Audits a refused credential that named someone: a known API key that
/// expired or was revoked.
async fn audit_refused_credential(
    state: &AppState,
    error: &AuthError,
    method: &Method,
    path: &str,
) {
    if let Some(actor) = error.refused_actor() {
        state
            .audit_with(
                &actor,
                method.as_str(),
                path,
                StatusCode::UNAUTHORIZED.as_u16(),
                Some(serde_json::json!({ "error": error.to_string() })),
            )
            .await;
    }
}

pub use listener::serve;

/// How long a stream may send before the session it was opened with is
/// checked again.
const STREAM_REAUTHENTICATE: std::time::Duration = std::time::Duration::from_secs(1);

/// The last line of a stream whose session ended while it was open.
const SESSION_ENDED_LINE: &[u8] = br#"{"error":{"code":"unauthorized","message":"the session ended (logged out, expired, revoked or its user deleted); log in again"}}
"#;

/// A stream of JSON lines (`…/follow`) is authorized when it opens and may
/// stay open for hours: before sending on, at most a second after the last
/// check, it checks that its token still authenticates, and ends with an
/// error line once it does not (logged out, expired, a key revoked, the
/// user deleted), so an ended session hears nothing more. A database that
/// cannot answer the check does not end it: that says nothing about the
/// session. Other answers pass unchanged.
///
/// The second counts from the check at the request, not from the answer: a
/// follow answers after the feed's first read, and counting from then would
/// let its next read's lines out up to a second after a logout unchecked.
fn bound_to_session(
    response: Response,
    auth: Auth,
    token: String,
    authenticated_at: tokio::time::Instant,
) -> Response {
    let streams = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/x-ndjson"));
    if !streams {
        return response;
    }
    struct Bound {
        chunks: axum::body::BodyDataStream,
        auth: Auth,
        token: String,
        checked: tokio::time::Instant,
        ended: bool,
    }
    let (parts, body) = response.into_parts();
    let bound = Bound {
        chunks: body.into_data_stream(),
        auth,
        token,
        checked: authenticated_at,
        ended: false,
    };
    let chunks = futures::stream::unfold(bound, |mut bound| async move {
        if bound.ended {
            return None;
        }
        let chunk = futures::StreamExt::next(&mut bound.chunks).await?;
        if bound.checked.elapsed() >= STREAM_REAUTHENTICATE {
            bound.checked = tokio::time::Instant::now();
            if let Err(error) = bound.auth.authenticate(&bound.token).await
                && !matches!(error, AuthError::Store(_))
            {
                tracing::info!(error = %error, "a stream's session ended; ending the stream");
                bound.ended = true;
                return Some((
                    Ok(axum::body::Bytes::from_static(SESSION_ENDED_LINE)),
                    bound,
                ));
            }
        }
        Some((chunk, bound))
    });
    Response::from_parts(parts, axum::body::Body::from_stream(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_token_stays_out_of_the_request_log() {
        let uri = |text: &str| text.parse::<axum::http::Uri>().expect("a URI");
        assert_eq!(
            loggable_uri(&uri("/api/v1/join/s3cr3t-token")),
            "/api/v1/join/(token)"
        );
        assert_eq!(
            loggable_uri(&uri("/api/v1/devices?limit=5")),
            "/api/v1/devices?limit=5"
        );
    }
}
