//! Device enrollment: a one-time token and a CSR in, a client certificate
//! out; and renewal: the current certificate and a CSR for its key in, a new
//! certificate out.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use tether_proto::api::{EnrollRequest, EnrollResponse, ErrorBody, RenewRequest, RenewResponse};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ClientHost};
use crate::registry::RegistryError;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(enroll))
        .routes(routes!(renew))
}

/// Enrolls a device: the one-time token authenticates the request; the
/// CSR's key never leaves the device. After a few refused attempts in a row
/// from one address, further ones wait (429 with `Retry-After`).
#[utoipa::path(post, path = "/enroll", tag = "devices", security(()),
    request_body = EnrollRequest,
    responses((status = 200, body = EnrollResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, description = "Too many refused attempts from this address; see `Retry-After`",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait")))))]
async fn enroll(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ClientHost(host): ClientHost,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<axum::Json<EnrollResponse>, ApiError> {
    // Each attempt tries to consume a token (a write) and anyone may send
    // one: a client whose attempts keep failing waits.
    state.auth.enrollment_allowed(client.ip())?;
    let endpoints = state.endpoints(&host);
    let enrolled = state
        .registry
        .enroll(&request, &endpoints)
        .await
        .map_err(ApiError::from);
    match &enrolled {
        Ok(response) => {
            let actor = format!("device:{}", response.device);
            state.audit(&actor, "POST", "/api/v1/enroll", 200).await;
        }
        // Refused before any device is known: logged, not audited, or
        // anyone could grow the audit table one row per request.
        Err(error) => {
            state.auth.enrollment_refused(client.ip());
            tracing::info!(client = %client.ip(), status = error.status.as_u16(), reason = %error.message, "enrollment refused");
        }
    }
    Ok(axum::Json(enrolled?))
}

/// Renews a device's client certificate. No session: possession of the
/// certificate's key is the proof, since the CSR is signed with it. A device
/// whose certificate expired may renew within the configured grace; after
/// it, or once revoked, it is refused (403) and must be enrolled again.
/// After a few refused renewals in a row from one address, further ones
/// wait (429 with `Retry-After`), as failed logins do.
#[utoipa::path(post, path = "/renew", tag = "devices", security(()),
    request_body = RenewRequest,
    responses((status = 200, body = RenewResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 429, description = "Renewed too recently, or too many refused renewals from this address; see `Retry-After`",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait")))))]
async fn renew(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ClientHost(host): ClientHost,
    ApiJson(request): ApiJson<RenewRequest>,
) -> Response {
    // Each request costs signature checks and may write an audit row, and
    // certificates are not secret: a client whose renewals keep failing
    // waits before tetherd does that work again.
    if let Err(throttled) = state.auth.begin_proof(client.ip()) {
        tracing::debug!(client = %client.ip(), %throttled, "certificate renewal refused");
        return ApiError::from(throttled).into_response();
    }
    let renewed = state
        .registry
        .renew(&request, &state.endpoints(&host), Utc::now())
        .await;
    if renewed.is_ok() {
        state.auth.proof_accepted(client.ip());
    }
    // Anyone may post; only requests with a certificate of this CA are
    // audited, or anyone could grow the audit log one row per request.
    let device = match &renewed {
        Ok(renewed) => Some(renewed.device.clone()),
        Err(RegistryError::BadCertificate(_)) => None,
        Err(_) => state
            .ca
            .verify_device_certificate(&request.certificate_pem)
            .ok()
            .map(|presented| presented.device),
    };
    let response = match renewed {
        Ok(renewed) => axum::Json(renewed).into_response(),
        Err(error) => {
            let error = ApiError::from(error);
            match &device {
                Some(device) => {
                    tracing::info!(%device, status = error.status.as_u16(), reason = %error.message, "certificate renewal refused")
                }
                None => {
                    tracing::debug!(status = error.status.as_u16(), reason = %error.message, "certificate renewal refused")
                }
            }
            error.into_response()
        }
    };
    if let Some(device) = device {
        state
            .audit(
                &format!("device:{device}"),
                "POST",
                "/api/v1/renew",
                response.status().as_u16(),
            )
            .await;
    }
    response
}
