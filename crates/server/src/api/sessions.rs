//! Sessions: log out (end the caller's own), and for admins list and revoke any.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tether_proto::api::{ErrorBody, Page, Session};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::ApiQuery;
use super::page::{PageQuery, PageRequest, Position};
use crate::auth::Principal;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(logout))
        .routes(routes!(list_sessions))
        .routes(routes!(revoke_session))
}

/// Ends the session this request was made with; its token stops working at once.
#[utoipa::path(post, path = "/logout", tag = "session",
    responses(
        (status = 204, description = "Logged out"),
        (status = 400, description = "Sent with an API key, which is no session", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 500, body = ErrorBody),
    ))]
async fn logout(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<StatusCode, ApiError> {
    state.auth.revoke(principal.session()?).await?;
    tracing::info!(user = %principal.username, "logged out");
    Ok(StatusCode::NO_CONTENT)
}

/// Every session, newest first, in pages, without tokens (admins only).
/// Expired sessions are listed until the hourly retention job deletes them.
#[utoipa::path(get, path = "/sessions", tag = "session", params(PageQuery),
    responses(
        (status = 200, body = Page<Session>),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 500, body = ErrorBody),
    ))]
async fn list_sessions(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<Session>>, ApiError> {
    let page = PageRequest::new(&query, "sessions".to_owned())?;
    let sessions = state
        .auth
        .sessions(page.before()?.as_ref(), page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        sessions,
        |record| Position::BeforeTimeAndId(record.created_at.timestamp_millis(), record.id.clone()),
        |record| Session {
            current: principal.session_id.as_ref() == Some(&record.id),
            id: record.id,
            username: record.username,
            created_at: record.created_at,
            expires_at: record.expires_at,
            last_used_at: record.last_used_at,
        },
    )))
}

/// Revokes a session (admins only); its token stops working at once.
#[utoipa::path(delete, path = "/sessions/{id}", tag = "session",
    params(("id" = String, Path, description = "The session's id, from `GET /sessions`", max_length = 64)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody),
    ))]
async fn revoke_session(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.revoke(&id).await?;
    tracing::info!(user = %principal.username, session = %id, "session revoked");
    Ok(StatusCode::NO_CONTENT)
}
