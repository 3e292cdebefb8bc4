//! Logging in, and the CA certificate clients pin.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use tether_proto::api::{ErrorBody, LoginRequest, LoginResponse};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::ApiJson;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(ca_certificate))
}

/// Exchanges a username and password for a bearer token.
#[utoipa::path(post, path = "/login", tag = "session", security(()),
    request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody)))]
async fn login(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<axum::Json<LoginResponse>, ApiError> {
    let response = state.auth.login(&request.username, &request.password).await;
    if response.is_err() {
        tracing::warn!(username = %request.username, "failed login");
    }
    let response = response.map_err(ApiError::from);
    let status = response
        .as_ref()
        .map_or_else(|e| e.status.as_u16(), |_| 200);
    state
        .audit(&request.username, "POST", "/api/v1/login", status)
        .await;
    Ok(axum::Json(response?))
}

/// The CA certificate (PEM) that signs tetherd's and the devices' certificates.
#[utoipa::path(get, path = "/ca.pem", tag = "session", security(()),
    responses((status = 200, description = "PEM certificate", content_type = "application/x-pem-file")))]
async fn ca_certificate(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.cert_pem().to_owned(),
    )
}
