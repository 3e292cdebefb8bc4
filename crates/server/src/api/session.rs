//! Logging in, and the CA certificate clients pin.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use tether_proto::api::{ErrorBody, LoginRequest, LoginResponse};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::ApiJson;
use crate::auth::AuthError;

/// A login body holds a username and a password within their limits; a
/// larger one is refused from its `Content-Length` before it is read.
const MAX_LOGIN_BODY_BYTES: usize = 4096;
/// The most of a refused username that goes into the log.
const USERNAME_SHOWN_IN_LOG: usize = 64;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .layer(DefaultBodyLimit::max(MAX_LOGIN_BODY_BYTES))
        .routes(routes!(ca_certificate))
}

/// Exchanges a username and password for a bearer token. After a few
/// failures in a row from one address, or for one username, further
/// attempts wait (429 with `Retry-After`).
#[utoipa::path(post, path = "/login", tag = "session", security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 400, description = "Malformed body, or a field longer than its limit", body = ErrorBody),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 413, description = "Body larger than 4 KiB", body = ErrorBody),
        (status = 415, description = "Body not `application/json`", body = ErrorBody),
        (status = 429, description = "Too many failed logins; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, body = ErrorBody),
    ))]
async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<axum::Json<LoginResponse>, ApiError> {
    let response = state
        .auth
        .login(client.ip(), &request.username, &request.password)
        .await;
    let username = shown(&request.username);
    match &response {
        Ok(_) => tracing::info!(username, client = %client.ip(), "login"),
        Err(AuthError::BadCredentials) => {
            tracing::warn!(username, client = %client.ip(), "failed login")
        }
        Err(error) => {
            tracing::debug!(username, client = %client.ip(), %error, "login refused")
        }
    }
    // Only attempts that got as far as a password check are audited: the
    // username is then within its limit, and throttling bounds how many
    // there are. Refused ones would let a flood write the audit table.
    let audited = matches!(response, Ok(_) | Err(AuthError::BadCredentials));
    let response = response.map_err(ApiError::from);
    if audited {
        let status = response
            .as_ref()
            .map_or_else(|e| e.status.as_u16(), |_| 200);
        state
            .audit(&request.username, "POST", "/api/v1/login", status)
            .await;
    }
    Ok(axum::Json(response?))
}

/// A username for the log: cut to a bounded length, escaped by `{:?}`.
fn shown(username: &str) -> String {
    let cut: String = username.chars().take(USERNAME_SHOWN_IN_LOG).collect();
    if cut.len() < username.len() {
        format!("{cut:?}… ({} bytes)", username.len())
    } else {
        format!("{cut:?}")
    }
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

#[cfg(test)]
mod tests {
    use tether_proto::api::MAX_USERNAME_LEN;

    use super::*;

    #[test]
    fn logged_usernames_are_bounded_and_escaped() {
        assert_eq!(shown("admin"), "\"admin\"");
        let long = "x".repeat(1024 * 1024);
        let logged = shown(&long);
        assert!(logged.len() < 100, "{logged}");
        assert!(logged.ends_with("(1048576 bytes)"), "{logged}");
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        const _: () = assert!(USERNAME_SHOWN_IN_LOG < MAX_USERNAME_LEN);
    }
}
