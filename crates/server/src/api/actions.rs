//! Actions: request one for a device, read it (optionally waiting for its
//! end), list a device's actions, and the catalogue of actions.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use tether_proto::api::{Action, CatalogueEntry, ErrorBody, Page, RequestAction};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, device_id};
use super::page::{PageQuery, PageRequest, Position};

/// Longest a long-poll may hold a request.
const MAX_WAIT_SECONDS: u64 = 300;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(request_action, list_actions))
        .routes(routes!(get_action))
        .routes(routes!(catalogue))
}

/// Requests an action. The input is validated against the catalogue first:
/// a bad input is a 400 naming the field, and nothing is stored or sent.
#[utoipa::path(post, path = "/devices/{name}/actions", tag = "actions", request_body = RequestAction,
    params(("name" = String, Path, description = "Device name")),
    responses((status = 202, body = Action), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
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
    responses((status = 200, body = Action), (status = 404, body = ErrorBody)))]
async fn get_action(
    State(state): State<Arc<AppState>>,
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
            let wait = Duration::from_secs(seconds);
            state.actions.wait(&correlation_id, wait).await?
        }
        _ => state.actions.get(&correlation_id).await?,
    };
    Ok(axum::Json(action))
}

/// The actions devices understand, with their input schemas.
#[utoipa::path(get, path = "/catalogue", tag = "actions",
    responses((status = 200, body = [CatalogueEntry])))]
async fn catalogue(State(state): State<Arc<AppState>>) -> axum::Json<Vec<CatalogueEntry>> {
    axum::Json(
        state
            .actions
            .catalogue()
            .actions()
            .map(|spec| CatalogueEntry {
                name: spec.name.clone(),
                title: spec.title.clone(),
                description: spec.description.clone(),
                event: spec.event.clone(),
                input_schema: spec.input_schema.clone(),
            })
            .collect(),
    )
}
