//! `/healthz` and `/readyz`, for load balancers and supervisors; no
//! credentials. The readiness rule is `crate::cluster::Readiness`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthStatus {
    /// `ok`, `ready` or `not ready`.
    status: &'static str,
    /// What is not ready, in words for an operator.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_ready: Vec<&'static str>,
}

/// Whether the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "The process answers", body = HealthStatus)))]
async fn healthz() -> axum::Json<HealthStatus> {
    axum::Json(HealthStatus {
        status: "ok",
        not_ready: Vec::new(),
    })
}

/// Whether this replica should get traffic: its database answers, its
/// lease is current and its MQTT endpoint is listening.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses(
        (status = 200, description = "Ready for devices and operators", body = HealthStatus),
        (status = 503, description = "Not ready; `notReady` says what is not", body = HealthStatus),
    ))]
async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, axum::Json<HealthStatus>) {
    let not_ready = state.health.readiness().await.not_ready();
    if not_ready.is_empty() {
        let ready = HealthStatus {
            status: "ready",
            not_ready,
        };
        return (StatusCode::OK, axum::Json(ready));
    }
    tracing::debug!(?not_ready, "not ready");
    let status = HealthStatus {
        status: "not ready",
        not_ready,
    };
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(status))
}
