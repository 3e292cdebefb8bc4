//! Fleet-wide jobs: create one over the devices a label selector matches,
//! follow its counts, list its per-device results, cancel it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use tether_proto::ActionState;
use tether_proto::api::{Action, CreateJob, ErrorBody, Job, Page};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::page::{PageQuery, PageRequest, Position};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(job_actions))
        .routes(routes!(cancel_job))
}

/// Creates a job: the input is checked once, as for a single action, then
/// every device the selector matches now gets a queued action, released
/// within `concurrency` and `ratePerSecond`. A selector that matches no
/// device is a 422, and one the action is not enabled on (ADR 0017) a 403;
/// nothing is stored then.
#[utoipa::path(post, path = "/jobs", tag = "jobs", request_body = CreateJob,
    responses((status = 201, body = Job), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_job(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CreateJob>,
) -> Result<(StatusCode, axum::Json<Job>), ApiError> {
    let job = state.jobs.create(request).await?;
    Ok((StatusCode::CREATED, axum::Json(job)))
}

/// Jobs, newest first, with their counts, in pages.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(PageQuery),
    responses((status = 200, body = Page<Job>)))]
async fn list_jobs(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<Job>>, ApiError> {
    let page = PageRequest::new(&query, "jobs".to_owned())?;
    let jobs = state
        .jobs
        .list(page.before()?.as_ref(), page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        jobs,
        |(_, before)| Position::BeforeTimeAndId(before.at.timestamp_millis(), before.id.clone()),
        |(job, _)| job,
    )))
}

/// A job and how many of its actions are in each state.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<Job>, ApiError> {
    Ok(axum::Json(state.jobs.get(&id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResultsQuery {
    /// Only actions in this state, e.g. `failed`.
    state: Option<ActionState>,
    /// At most this many items in this page (default 500).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<u32>,
    /// The `continue` of the previous page, to read the next one (with the
    /// same `state`).
    #[serde(rename = "continue")]
    #[param(rename = "continue", max_length = 2048)]
    continue_token: Option<String>,
}

/// The job's per-device actions by device name, optionally of one outcome,
/// in pages.
#[utoipa::path(get, path = "/jobs/{id}/actions", tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), ResultsQuery),
    responses((status = 200, body = Page<Action>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn job_actions(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ResultsQuery>,
) -> Result<axum::Json<Page<Action>>, ApiError> {
    // A missing job is a 404 whatever the token says.
    state.jobs.ensure_exists(&id).await?;
    let outcome = query.state.map(|s| s.as_str()).unwrap_or_default();
    let page = PageRequest::new(
        &PageQuery {
            limit: query.limit,
            continue_token: query.continue_token,
        },
        format!("jobs/{id}/actions?state={outcome}"),
    )?;
    let actions = state
        .jobs
        .actions(&id, query.state, page.after_name()?, page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        actions,
        |action| Position::After(action.device.clone()),
        |action| action,
    )))
}

/// Cancels the job: its queued and pending actions become `cancelled`;
/// delivered ones finish normally. The job and its counts are kept.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<Job>, ApiError> {
    Ok(axum::Json(state.jobs.cancel(&id).await?))
}
