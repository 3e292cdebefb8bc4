//! Provisioning (ADR 0025): policies and their keys, a device's
//! registration, and the approvals of `MANUAL` policies.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tether_proto::api::{ErrorBody, Page};
use tether_proto::provisioning::{
    Approval, ApproveRequest, CreateKeyRequest, CreatePolicy, DenyRequest, Policy, ProvisioningKey,
    ProvisioningKeyInfo, RegisterRequest, RegisterResponse, RegistrationState,
};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, ClientHost};
use super::page::{PageQuery, PageRequest, Position};
use crate::auth::Principal;
use crate::provisioning::{KeyRefusal, ProvisioningError, RETRY_AFTER_SECONDS, Registered};

/// Routes for people, behind a session.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_policies, create_policy))
        .routes(routes!(get_policy, delete_policy))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
        .routes(routes!(list_approvals))
        .routes(routes!(get_approval))
        .routes(routes!(approve))
        .routes(routes!(deny))
}

/// Largest registration body: facts (at most 16 KiB of JSON), a CSR and
/// the key; anyone may send one.
const MAX_REGISTER_BODY_BYTES: usize = 32 * 1024;

/// The route a device registers through, with its provisioning key.
pub fn device_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .layer(DefaultBodyLimit::max(MAX_REGISTER_BODY_BYTES))
}

/// Creates a provisioning policy (seed 004): `mode` `UNATTENDED` or
/// `MANUAL`, the identity fields that recognise hardware again, and the
/// template of the devices it creates.
#[utoipa::path(post, path = "/provisioning-policies", tag = "provisioning",
    request_body = CreatePolicy,
    responses((status = 201, body = Policy), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_policy(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CreatePolicy>,
) -> Result<(StatusCode, axum::Json<Policy>), ApiError> {
    let policy = state
        .provisioning
        .create_policy(&request.name, request.spec)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(policy)))
}

/// Lists the policies by name, in pages.
#[utoipa::path(get, path = "/provisioning-policies", tag = "provisioning", params(PageQuery),
    responses((status = 200, body = Page<Policy>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_policies(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<Policy>>, ApiError> {
    let page = PageRequest::new(&query, "provisioning-policies".to_owned())?;
    let policies = state
        .provisioning
        .policies(page.after_name()?, page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        policies,
        |policy| Position::After(policy.name.clone()),
        |policy| policy,
    )))
}

#[utoipa::path(get, path = "/provisioning-policies/{name}", tag = "provisioning",
    params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, body = Policy), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_policy(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<Policy>, ApiError> {
    Ok(axum::Json(state.provisioning.policy(&name).await?))
}

/// Deletes a policy with its keys and registrations; the devices it
/// created stay.
#[utoipa::path(delete, path = "/provisioning-policies/{name}", tag = "provisioning",
    params(("name" = String, Path, description = "Policy name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_policy(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.provisioning.delete_policy(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes a provisioning key: the file an OS image carries (`tether os
/// edit --provisioning-key`) or an agent reads (`--provisioning-key`).
/// It allows nothing but registering under this policy; its secret is in
/// this answer only.
#[utoipa::path(post, path = "/provisioning-policies/{name}/keys", tag = "provisioning",
    params(("name" = String, Path, description = "Policy name")),
    request_body = CreateKeyRequest,
    responses((status = 201, body = ProvisioningKey), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_key(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ClientHost(host): ClientHost,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, axum::Json<ProvisioningKey>), ApiError> {
    let key = state
        .provisioning
        .create_key(
            &name,
            &principal.username,
            request.expires_at,
            &state.endpoints(&host),
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(key)))
}

/// A policy's keys, oldest first, without their secrets.
#[utoipa::path(get, path = "/provisioning-policies/{name}/keys", tag = "provisioning",
    params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, body = Vec<ProvisioningKeyInfo>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_keys(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<Vec<ProvisioningKeyInfo>>, ApiError> {
    Ok(axum::Json(state.provisioning.keys(&name).await?))
}

/// Revokes a key: registrations with it are refused from now on, and its
/// requests still waiting for approval are denied ("provisioning key
/// revoked"); devices that registered with it keep their certificates.
#[utoipa::path(delete, path = "/provisioning-policies/{name}/keys/{key}", tag = "provisioning",
    params(("name" = String, Path, description = "Policy name"), ("key" = String, Path, description = "Key id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_key(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path((name, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .provisioning
        .revoke_key(&name, &key, &principal.username)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A device registers with a provisioning key, its facts and a CSR. An
/// `UNATTENDED` policy answers 200 with the certificate of the device it
/// created or recognised; a `MANUAL` one answers 202 until an operator
/// approves (then 200) or denies (then 403). Asking again with the same
/// key pair is the same registration. After a few unknown keys in a row
/// from one address, further attempts wait (429 with `Retry-After`);
/// revoked and expired keys are refused without counting.
#[utoipa::path(post, path = "/register", tag = "provisioning", security(()),
    request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 202, body = RegisterResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "An operator denied the registration", body = ErrorBody),
        (status = 410, description = "The device it became was deleted, or its certificate was revoked or replaced since (`registration_superseded`): register with a new key pair", body = ErrorBody),
        (status = 413, description = "Body larger than 32 KiB", body = ErrorBody),
        (status = 429, description = "Too many unknown keys from this address, too many registrations of the policy or of the key waiting for approval (`too_many_pending`), the policy's `maxDevices` reached (`max_devices_reached`) or its `maxRegistrationsPerHour` (`registration_rate_exceeded`); see `Retry-After`",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The same key pair, or another claiming the same identity, is registering on another connection (`registration_busy`); ask again after `Retry-After`",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait")))))]
async fn register(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ClientHost(host): ClientHost,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    // Refused keys cost a lookup each and anyone may send one: an address
    // whose attempts keep failing waits, as for enrollment tokens.
    state.auth.enrollment_allowed(client.ip())?;
    let registered = state
        .provisioning
        .register(&request, &state.endpoints(&host))
        .await;
    match registered {
        Ok(Registered::Enrolled(enrollment)) => {
            let actor = format!("device:{}", enrollment.device);
            state.audit(&actor, "POST", "/api/v1/register", 200).await;
            Ok(axum::Json(RegisterResponse {
                state: RegistrationState::Registered,
                approval: None,
                retry_after_seconds: None,
                enrollment: Some(enrollment),
            })
            .into_response())
        }
        Ok(Registered::Waiting { approval }) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(RegisterResponse {
                state: RegistrationState::Pending,
                approval: Some(approval),
                retry_after_seconds: Some(RETRY_AFTER_SECONDS),
                enrollment: None,
            }),
        )
            .into_response()),
        Err(error) => {
            // Only a key that does not exist is a guess. A revoked or
            // expired one was real (its secret matched): a site booting an
            // old image sends it from every board behind one NAT address,
            // and counting those would make the site's valid boards wait.
            if matches!(error, ProvisioningError::KeyRefused(KeyRefusal::Unknown)) {
                state.auth.enrollment_refused(client.ip());
            }
            // Not audited: anyone may post, and a refused request names no
            // device; the log has it.
            let error = ApiError::from(error);
            tracing::info!(client = %client.ip(), status = error.status.as_u16(), reason = %error.message, "registration refused");
            Err(error)
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApprovalsQuery {
    /// Only registrations in this state (`pending`, `approved`, `denied`,
    /// `registered`); all if absent.
    state: Option<RegistrationState>,
    /// At most this many in this page (default 500).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<u32>,
    /// The `continue` of the previous page.
    #[serde(rename = "continue")]
    #[param(rename = "continue", max_length = 2048)]
    continue_token: Option<String>,
}

/// Registrations, oldest first, with the facts each device sent: those
/// `pending` wait for `approve` or `deny`.
#[utoipa::path(get, path = "/approvals", tag = "provisioning", params(ApprovalsQuery),
    responses((status = 200, body = Page<Approval>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_approvals(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<ApprovalsQuery>,
) -> Result<axum::Json<Page<Approval>>, ApiError> {
    let page = PageRequest::new(
        &PageQuery {
            limit: query.limit,
            continue_token: query.continue_token,
        },
        format!("approvals?state={:?}", query.state),
    )?;
    let approvals = state
        .provisioning
        .approvals(query.state, page.after_name()?, page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        approvals,
        |approval| Position::After(approval.id.clone()),
        |approval| approval,
    )))
}

#[utoipa::path(get, path = "/approvals/{id}", tag = "provisioning",
    params(("id" = String, Path, description = "Approval id")),
    responses((status = 200, body = Approval), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_approval(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<Approval>, ApiError> {
    Ok(axum::Json(state.provisioning.approval(&id).await?))
}

/// Approves a pending registration: it reuses the device its identity
/// fields matched, or creates one from the policy's template (named
/// `name` if given). The device gets its certificate when it next asks.
#[utoipa::path(post, path = "/approvals/{id}/approve", tag = "provisioning",
    params(("id" = String, Path, description = "Approval id")),
    request_body = ApproveRequest,
    responses((status = 200, body = Approval), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Decided already, the name is taken, its key was revoked (`provisioning_key_revoked`), or another device holds its identity (`identity_held`)", body = ErrorBody)))]
async fn approve(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ApproveRequest>,
) -> Result<axum::Json<Approval>, ApiError> {
    Ok(axum::Json(
        state
            .provisioning
            .approve(&id, request.name.as_deref(), &principal.username)
            .await?,
    ))
}

/// Denies a pending registration; the device stops with the reason when
/// it next asks.
#[utoipa::path(post, path = "/approvals/{id}/deny", tag = "provisioning",
    params(("id" = String, Path, description = "Approval id")),
    request_body = DenyRequest,
    responses((status = 200, body = Approval), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Decided already", body = ErrorBody)))]
async fn deny(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<DenyRequest>,
) -> Result<axum::Json<Approval>, ApiError> {
    Ok(axum::Json(
        state
            .provisioning
            .deny(&id, request.reason, &principal.username)
            .await?,
    ))
}
