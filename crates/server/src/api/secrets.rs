//! `/secrets` (issue 17, ADR 0030): HTTP only; the rules are in
//! [`crate::secrets`]. No route returns a secret's value: a `set` seals it
//! and forgets it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use tether_proto::api::{ErrorBody, Page};
use tether_proto::secrets::{Secret, SetSecret};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::page::{PageQuery, PageRequest, Position};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_secrets))
        .routes(routes!(get_secret, set_secret, delete_secret))
}

/// Secrets by name: where each is sealed, never its value.
#[utoipa::path(get, path = "/secrets", tag = "secrets", params(PageQuery),
    responses((status = 200, body = Page<Secret>), (status = 401, body = ErrorBody)))]
async fn list_secrets(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<Secret>>, ApiError> {
    let page = PageRequest::new(&query, "secrets".to_owned())?;
    let secrets = state
        .secrets
        .secrets(page.after_name()?, page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        secrets,
        |s| Position::After(s.name.clone()),
        |s| s,
    )))
}

/// Where a secret is sealed: to which devices' current keys, which
/// targeted devices have no key yet, and which need it set again.
#[utoipa::path(get, path = "/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name")),
    responses((status = 200, body = Secret), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_secret(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<Secret>, ApiError> {
    Ok(axum::Json(state.secrets.secret(&name).await?))
}

/// Creates or replaces a secret (write-only, seed 002): the value is
/// sealed to every targeted device's key and only the sealed copies are
/// kept. Setting it again re-seals it for every device targeted now.
#[utoipa::path(put, path = "/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name")),
    request_body = SetSecret,
    responses((status = 200, body = Secret), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn set_secret(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<SetSecret>,
) -> Result<axum::Json<Secret>, ApiError> {
    Ok(axum::Json(state.secrets.set(&name, request).await?))
}

/// Deletes a secret and takes it out of every device's spec; the agents
/// remove their copies.
#[utoipa::path(delete, path = "/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_secret(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.secrets.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
