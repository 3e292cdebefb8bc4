//! Device enrollment: a one-time token and a CSR in, a client certificate out.

use std::sync::Arc;

use axum::extract::State;
use tether_proto::api::{EnrollRequest, EnrollResponse, ErrorBody};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ClientHost};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(enroll))
}

/// Enrolls a device: the one-time token authenticates the request; the
/// CSR's key never leaves the device.
#[utoipa::path(post, path = "/enroll", tag = "devices", security(()),
    request_body = EnrollRequest,
    responses((status = 200, body = EnrollResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn enroll(
    State(state): State<Arc<AppState>>,
    ClientHost(host): ClientHost,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<axum::Json<EnrollResponse>, ApiError> {
    let endpoints = state.endpoints(&host);
    let enrolled = state
        .registry
        .enroll(&request, &endpoints)
        .await
        .map_err(ApiError::from);
    let (actor, status) = match &enrolled {
        Ok(response) => (format!("device:{}", response.device), 200),
        Err(error) => ("device:?".to_owned(), error.status.as_u16()),
    };
    state.audit(&actor, "POST", "/api/v1/enroll", status).await;
    Ok(axum::Json(enrolled?))
}
