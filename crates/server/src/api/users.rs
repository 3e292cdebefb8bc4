//! Users and their roles (ADR 0026), mapped onto [`crate::auth::accounts`].
//! Who may call these is the role table's business, not these handlers'.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use tether_proto::accounts::{ChangePassword, CreateUser, SetRole, User, UserCreated};
use tether_proto::api::ErrorBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::ApiJson;
use crate::auth::Principal;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(who_am_i))
        .routes(routes!(delete_user))
        .routes(routes!(set_user_role))
        .routes(routes!(change_password))
}

/// Every user with their role, by name.
#[utoipa::path(get, path = "/users", tag = "users",
    responses((status = 200, body = Vec<User>), (status = 401, body = ErrorBody)))]
async fn list_users(State(state): State<Arc<AppState>>) -> Result<axum::Json<Vec<User>>, ApiError> {
    let users = state.auth.users().await?;
    Ok(axum::Json(
        users
            .into_iter()
            .map(|user| User {
                username: user.username,
                role: user.role,
            })
            .collect(),
    ))
}

/// The caller: their name (`sa:NAME` for a service account's API key) and
/// role, so a client such as the web console shows only what the role may do.
#[utoipa::path(get, path = "/users/me", tag = "users",
    responses((status = 200, body = User), (status = 401, body = ErrorBody)))]
async fn who_am_i(Extension(principal): Extension<Principal>) -> axum::Json<User> {
    axum::Json(User {
        username: principal.username,
        role: principal.role,
    })
}

/// Creates a user with a role; without a password, tetherd generates one
/// and answers it this once.
#[utoipa::path(post, path = "/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = UserCreated),
        (status = 400, description = "An invalid name or password", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
async fn create_user(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<CreateUser>,
) -> Result<(StatusCode, axum::Json<UserCreated>), ApiError> {
    let password = state
        .auth
        .create_user(&request.username, request.role, request.password)
        .await?;
    tracing::info!(by = %principal.username, user = %request.username, role = %request.role, "user created");
    Ok((
        StatusCode::CREATED,
        axum::Json(UserCreated {
            username: request.username,
            role: request.role,
            password,
        }),
    ))
}

/// Deletes a user; their sessions end at once. The last admin cannot be deleted.
#[utoipa::path(delete, path = "/users/{username}", tag = "users",
    params(("username" = String, Path, description = "The user's name", max_length = 64)),
    responses((status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The last admin", body = ErrorBody)))]
async fn delete_user(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.delete_user(&username).await?;
    tracing::info!(by = %principal.username, user = %username, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Gives a user another role, for their open sessions too. The last admin
/// keeps the admin role.
#[utoipa::path(put, path = "/users/{username}/role", tag = "users", request_body = SetRole,
    params(("username" = String, Path, description = "The user's name", max_length = 64)),
    responses((status = 200, body = User),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The last admin", body = ErrorBody)))]
async fn set_user_role(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(username): Path<String>,
    ApiJson(request): ApiJson<SetRole>,
) -> Result<axum::Json<User>, ApiError> {
    state.auth.set_role(&username, request.role).await?;
    tracing::info!(by = %principal.username, user = %username, role = %request.role, "role changed");
    Ok(axum::Json(User {
        username,
        role: request.role,
    }))
}

/// Changes the caller's own password, given the current one; their
/// sessions stay open. Throttled like a login.
#[utoipa::path(put, path = "/users/me/password", tag = "users", request_body = ChangePassword,
    responses((status = 204, description = "Changed"),
        (status = 400, description = "The current password is wrong, or the caller is an API key", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn change_password(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    principal.session()?;
    state
        .auth
        .change_password(
            client.ip(),
            &principal.username,
            &request.current_password,
            &request.new_password,
        )
        .await?;
    tracing::info!(user = %principal.username, "password changed");
    Ok(StatusCode::NO_CONTENT)
}
