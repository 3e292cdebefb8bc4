//! `GET /join/{token}`: the manifest that joins a Kubernetes cluster as the
//! device the enrollment token belongs to (ADR 0017). The token
//! authenticates the request and is left unused for the agent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use tether_proto::api::ErrorBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::ClientHost;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(join_manifest))
}

/// The Kubernetes manifest that runs this device's agent in a cluster:
/// namespace, ServiceAccount, RBAC, the token's Secret and the agent's
/// Deployment, as YAML for `kubectl apply -f -`. Refused attempts count
/// towards the same per-address backoff as enrollments.
#[utoipa::path(get, path = "/join/{token}", tag = "devices", security(()),
    params(("token" = String, Path, description = "The device's one-time enrollment token")),
    responses((status = 200, description = "The manifest", content_type = "application/yaml", body = String),
        (status = 401, body = ErrorBody),
        (status = 429, description = "Too many refused attempts from this address; see `Retry-After`",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait")))))]
async fn join_manifest(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ClientHost(host): ClientHost,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    state.auth.enrollment_allowed(client.ip())?;
    let endpoints = state.endpoints(&host);
    match state
        .registry
        .join_manifest(&token, &endpoints, &state.join)
        .await
    {
        Ok(manifest) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/yaml")],
            manifest,
        )
            .into_response()),
        Err(error) => {
            let error = ApiError::from(error);
            if error.status == axum::http::StatusCode::UNAUTHORIZED {
                state.auth.enrollment_refused(client.ip());
                tracing::info!(client = %client.ip(), "join manifest refused: unknown, used or expired token");
            }
            Err(error)
        }
    }
}
