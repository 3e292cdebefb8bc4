//! The management shell's settings (ADR 0023): the caller's SSH public keys
//! (`/users/me/ssh-keys`) and a device's shell password
//! (`/devices/{name}/shell-password`), mapped onto
//! [`crate::management_shell`] and the store.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tether_proto::api::{AddSshKey, ErrorBody, SetShellPassword, ShellPassword, SshKey};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, device_id};
use crate::auth::{Principal, hash_password};
use crate::management_shell::{choose_password, key_name, parse_public_key};
use crate::store::SshKeyRecord;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_ssh_keys, add_ssh_key))
        .routes(routes!(remove_ssh_key))
        .routes(routes!(set_shell_password, disable_shell_password))
}

fn to_api(record: SshKeyRecord) -> SshKey {
    SshKey {
        id: record.id,
        name: record.name,
        public_key: record.public_key,
        fingerprint: record.fingerprint,
        created_at: record.created_at,
    }
}

/// The caller's SSH public keys, oldest first: those that log in to a
/// device's management shell through the caller's tunnels.
#[utoipa::path(get, path = "/users/me/ssh-keys", tag = "management-shell",
    responses((status = 200, body = Vec<SshKey>), (status = 401, body = ErrorBody)))]
async fn list_ssh_keys(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<axum::Json<Vec<SshKey>>, ApiError> {
    let keys = state.store.list_ssh_keys(&principal.username).await?;
    Ok(axum::Json(keys.into_iter().map(to_api).collect()))
}

/// Registers an SSH public key (ed25519 or ECDSA) for the caller.
#[utoipa::path(post, path = "/users/me/ssh-keys", tag = "management-shell",
    request_body = AddSshKey,
    responses((status = 201, body = SshKey),
        (status = 400, description = "Not an OpenSSH public key, or not one the shell accepts", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_ssh_key(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<AddSshKey>,
) -> Result<(StatusCode, axum::Json<SshKey>), ApiError> {
    let parsed = parse_public_key(&request.public_key)
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let name = key_name(request.name.as_deref(), &parsed)
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let record = SshKeyRecord {
        id: uuid::Uuid::now_v7().to_string(),
        username: principal.username.clone(),
        name,
        public_key: parsed.public_key,
        fingerprint: parsed.fingerprint,
        created_at: chrono::Utc::now(),
    };
    state.store.insert_ssh_key(&record).await?;
    tracing::info!(user = %principal.username, fingerprint = %record.fingerprint, "SSH key added");
    Ok((StatusCode::CREATED, axum::Json(to_api(record))))
}

/// Removes one of the caller's keys; shells opened after this refuse it.
#[utoipa::path(delete, path = "/users/me/ssh-keys/{id}", tag = "management-shell",
    params(("id" = String, Path, description = "The key's id, from `GET /users/me/ssh-keys`")),
    responses((status = 204, description = "Removed"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_ssh_key(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_ssh_key(&principal.username, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Turns password login to the device's management shell on, with the
/// given password or a random one, answered this once. Only a slow hash
/// is kept.
#[utoipa::path(put, path = "/devices/{name}/shell-password", tag = "management-shell",
    params(("name" = String, Path, description = "Device name")),
    request_body = SetShellPassword,
    responses((status = 200, body = ShellPassword),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn set_shell_password(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<SetShellPassword>,
) -> Result<axum::Json<ShellPassword>, ApiError> {
    let device = device_id(&name)?;
    let password = choose_password(request.password)
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    // PBKDF2 takes a while: off the async workers.
    let to_hash = password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&to_hash))
        .await
        .map_err(|error| ApiError::internal(&error))?;
    state
        .store
        .set_shell_password(&device, &hash, chrono::Utc::now())
        .await?;
    Ok(axum::Json(ShellPassword { password }))
}

/// Turns password login to the device's management shell off.
#[utoipa::path(delete, path = "/devices/{name}/shell-password", tag = "management-shell",
    params(("name" = String, Path, description = "Device name")),
    responses((status = 204, description = "Password login is off"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn disable_shell_password(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let device = device_id(&name)?;
    state.store.clear_shell_password(&device).await?;
    Ok(StatusCode::NO_CONTENT)
}
