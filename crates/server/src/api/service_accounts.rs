//! Service accounts and their API keys (ADR 0026), for scripts and CI,
//! mapped onto [`crate::auth::accounts`].

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tether_proto::accounts::{
    ApiKey, ApiKeyCreated, CreateApiKey, CreateServiceAccount, MAX_API_KEY_SECONDS, Role,
    ServiceAccount,
};
use tether_proto::api::ErrorBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::ApiJson;
use crate::auth::Principal;
use crate::store::{ApiKeyRecord, ServiceAccountRecord, StoreError};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_service_accounts, create_service_account))
        .routes(routes!(delete_service_account))
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(revoke_api_key))
}

fn account_to_api(record: ServiceAccountRecord) -> Result<ServiceAccount, ApiError> {
    let role: Role = record.role.parse().map_err(|_| {
        StoreError::Corrupt(format!(
            "unknown role {:?} of service account {}",
            record.role, record.name
        ))
    })?;
    Ok(ServiceAccount {
        name: record.name,
        role,
        created_at: record.created_at,
    })
}

fn key_to_api(record: ApiKeyRecord) -> ApiKey {
    ApiKey {
        id: record.id,
        service_account: record.account,
        created_at: record.created_at,
        expires_at: record.expires_at,
        last_used_at: record.last_used_at,
        revoked_at: record.revoked_at,
    }
}

/// Every service account with its role, by name.
#[utoipa::path(get, path = "/service-accounts", tag = "service-accounts",
    responses((status = 200, body = Vec<ServiceAccount>), (status = 401, body = ErrorBody)))]
async fn list_service_accounts(
    State(state): State<Arc<AppState>>,
) -> Result<axum::Json<Vec<ServiceAccount>>, ApiError> {
    let accounts = state.auth.service_accounts().await?;
    Ok(axum::Json(
        accounts
            .into_iter()
            .map(account_to_api)
            .collect::<Result<_, _>>()?,
    ))
}

/// Creates a service account with a role; give it keys with `POST
/// /service-accounts/{name}/keys`.
#[utoipa::path(post, path = "/service-accounts", tag = "service-accounts",
    request_body = CreateServiceAccount,
    responses((status = 201, body = ServiceAccount),
        (status = 400, description = "An invalid name", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
async fn create_service_account(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<CreateServiceAccount>,
) -> Result<(StatusCode, axum::Json<ServiceAccount>), ApiError> {
    let account = state
        .auth
        .create_service_account(&request.name, request.role)
        .await?;
    tracing::info!(by = %principal.username, account = %request.name, role = %request.role, "service account created");
    Ok((StatusCode::CREATED, axum::Json(account_to_api(account)?)))
}

/// Deletes a service account; its keys stop working at once.
#[utoipa::path(delete, path = "/service-accounts/{name}", tag = "service-accounts",
    params(("name" = String, Path, description = "The service account's name", max_length = 64)),
    responses((status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_service_account(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.delete_service_account(&name).await?;
    tracing::info!(by = %principal.username, account = %name, "service account deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The account's API keys, oldest first, revoked ones included; never their secrets.
#[utoipa::path(get, path = "/service-accounts/{name}/keys", tag = "service-accounts",
    params(("name" = String, Path, description = "The service account's name", max_length = 64)),
    responses((status = 200, body = Vec<ApiKey>),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_api_keys(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<Vec<ApiKey>>, ApiError> {
    let keys = state.auth.api_keys(&name).await?;
    Ok(axum::Json(keys.into_iter().map(key_to_api).collect()))
}

/// A new API key for the account, answered this once (only its hash is
/// kept); send it as `Authorization: Bearer <key>`.
#[utoipa::path(post, path = "/service-accounts/{name}/keys", tag = "service-accounts",
    request_body = CreateApiKey,
    params(("name" = String, Path, description = "The service account's name", max_length = 64)),
    responses((status = 201, body = ApiKeyCreated),
        (status = 400, description = "An expiry out of range", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_api_key(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<CreateApiKey>,
) -> Result<(StatusCode, axum::Json<ApiKeyCreated>), ApiError> {
    let expires_in = match request.expires_in_seconds {
        Some(seconds @ 1..=MAX_API_KEY_SECONDS) => Some(Duration::from_secs(seconds)),
        Some(seconds) => {
            return Err(ApiError::bad_request(format!(
                "expiresInSeconds is {seconds}; it must be from 1 to {MAX_API_KEY_SECONDS} (ten years), or omitted for a key valid until revoked"
            )));
        }
        None => None,
    };
    let created = state.auth.create_api_key(&name, expires_in).await?;
    tracing::info!(by = %principal.username, account = %name, key = %created.record.id, "API key created");
    Ok((
        StatusCode::CREATED,
        axum::Json(ApiKeyCreated {
            key: created.key,
            api_key: key_to_api(created.record),
        }),
    ))
}

/// Revokes an API key: it stops working at once, and using it is answered
/// 401 saying it was revoked. It stays listed.
#[utoipa::path(post, path = "/service-accounts/{name}/keys/{id}/revoke", tag = "service-accounts",
    params(("name" = String, Path, description = "The service account's name", max_length = 64),
        ("id" = String, Path, description = "The key's id, from `GET /service-accounts/{name}/keys`", max_length = 64)),
    responses((status = 204, description = "Revoked"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_api_key(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.auth.revoke_api_key(&name, &id).await?;
    tracing::info!(by = %principal.username, account = %name, key = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
