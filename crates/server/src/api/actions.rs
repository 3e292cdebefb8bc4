//! Actions: request one for a device, read it (optionally waiting for its
//! end), list a device's actions, and the catalogue of actions.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use tether_proto::api::{Action, CatalogueEntry, DeviceActionSet, ErrorBody, Page, RequestAction};
use tether_proto::spec::ActionSet;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, device_id};
use super::page::{PageQuery, PageRequest, Position};
use crate::auth::Principal;

/// Longest a long-poll may hold a request.
const MAX_WAIT_SECONDS: u64 = 300;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(request_action, list_actions))
        .routes(routes!(get_action))
        .routes(routes!(catalogue))
        .routes(routes!(enable_action, disable_action))
}

/// Requests an action. The input is validated against the catalogue first:
/// a bad input is a 400 naming the field, an action not enabled on the
/// device a 403 saying how to enable it, and nothing is stored or sent.
#[utoipa::path(post, path = "/devices/{name}/actions", tag = "actions", request_body = RequestAction,
    params(("name" = String, Path, description = "Device name")),
    responses((status = 202, body = Action), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn request_action(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<RequestAction>,
) -> Result<(StatusCode, axum::Json<Action>), ApiError> {
    let action = state.actions.request(&device_id(&name)?, request).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(action)))
}

/// The device's actions, newest first, in pages.
#[utoipa::path(get, path = "/devices/{name}/actions", tag = "actions",
    params(("name" = String, Path, description = "Device name"), PageQuery),
    responses((status = 200, body = Page<Action>), (status = 404, body = ErrorBody)))]
async fn list_actions(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<Action>>, ApiError> {
    let device = device_id(&name)?;
    let page = PageRequest::new(&query, format!("devices/{device}/actions"))?;
    let actions = state
        .actions
        .list(&device, page.before_seq()?, page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        actions,
        |action| Position::BeforeSeq(action.seq),
        crate::actions::to_api,
    )))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WaitQuery {
    /// Long-poll: answer as soon as the action is terminal, or after this
    /// many seconds with its current state.
    #[param(minimum = 0, maximum = 300)]
    wait_seconds: Option<u64>,
}

#[utoipa::path(get, path = "/actions/{correlationId}", tag = "actions",
    params(("correlationId" = String, Path, description = "The action's correlation id"), WaitQuery),
    responses((status = 200, body = Action), (status = 404, body = ErrorBody),
        (status = 429, description = "With `waitSeconds`: the caller (a user or an API key) already waits on `api.max_connections_per_ip` actions at once (default 64; `too_many_waits`); read without waiting, or after one ends", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again")))))]
async fn get_action(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(correlation_id): Path<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<axum::Json<Action>, ApiError> {
    let action = match query.wait_seconds {
        Some(seconds) if seconds > MAX_WAIT_SECONDS => {
            return Err(ApiError::bad_request(format!(
                "waitSeconds must be at most {MAX_WAIT_SECONDS}; got {seconds}"
            )));
        }
        Some(seconds) if seconds > 0 => {
            let _place = state.waits.take(&principal.username).ok_or_else(|| {
                ApiError::too_many_waits(&principal.username, state.waits.limit())
            })?;
            let wait = Duration::from_secs(seconds);
            state.actions.wait(&correlation_id, wait).await?
        }
        _ => state.actions.get(&correlation_id).await?,
    };
    Ok(axum::Json(action))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct CatalogueQuery {
    /// Only the actions this device accepts (its action set, ADR 0017).
    device: Option<String>,
}

/// The actions devices understand, with their input schemas; with
/// `device`, only those that device accepts.
#[utoipa::path(get, path = "/catalogue", tag = "actions", params(CatalogueQuery),
    responses((status = 200, body = [CatalogueEntry]), (status = 404, body = ErrorBody)))]
async fn catalogue(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<CatalogueQuery>,
) -> Result<axum::Json<Vec<CatalogueEntry>>, ApiError> {
    let set = match &query.device {
        Some(name) => {
            let device = device_id(name)?;
            state.actions.ensure_device(&device).await?;
            Some(state.actions.action_set(&device).await?)
        }
        None => None,
    };
    Ok(axum::Json(
        state
            .actions
            .catalogue()
            .actions()
            .filter(|spec| set.as_ref().is_none_or(|set| set.accepts(&spec.name)))
            .map(|spec| CatalogueEntry {
                name: spec.name.clone(),
                title: spec.title.clone(),
                description: spec.description.clone(),
                event: spec.event.clone(),
                input_schema: spec.input_schema.clone(),
            })
            .collect(),
    ))
}

/// Enables an action on the device: a change of its spec's `actions`
/// section, sent to the device like any spec update. Enabling an action
/// the device already accepts changes nothing.
#[utoipa::path(put, path = "/devices/{name}/action-set/{action}", tag = "actions",
    params(("name" = String, Path, description = "Device name"), ("action" = String, Path, description = "An action of the catalogue")),
    responses((status = 200, body = DeviceActionSet), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn enable_action(
    State(state): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
) -> Result<axum::Json<DeviceActionSet>, ApiError> {
    set_action_enabled(&state, &name, &action, true).await
}

/// Disables an action on the device; requests for it are refused with 403
/// from then on, and those still waiting for the device end as failed. Disabling an action the device refuses changes nothing.
#[utoipa::path(delete, path = "/devices/{name}/action-set/{action}", tag = "actions",
    params(("name" = String, Path, description = "Device name"), ("action" = String, Path, description = "An action of the catalogue")),
    responses((status = 200, body = DeviceActionSet), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn disable_action(
    State(state): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
) -> Result<axum::Json<DeviceActionSet>, ApiError> {
    set_action_enabled(&state, &name, &action, false).await
}

async fn set_action_enabled(
    state: &AppState,
    name: &str,
    action: &str,
    enabled: bool,
) -> Result<axum::Json<DeviceActionSet>, ApiError> {
    let device = device_id(name)?;
    state.actions.ensure_known(action)?;
    let record = state
        .registry
        .set_action_enabled(&device, action, enabled)
        .await?;
    let set = ActionSet::of(&record.spec).map_err(crate::registry::RegistryError::InvalidSpec)?;
    if !enabled {
        state.actions.withdraw(&device, action).await?;
    }
    Ok(axum::Json(DeviceActionSet {
        device: device.to_string(),
        accepted: state
            .actions
            .catalogue()
            .names()
            .into_iter()
            .filter(|action| set.accepts(action))
            .map(str::to_owned)
            .collect(),
        spec_version: record.version,
    }))
}
