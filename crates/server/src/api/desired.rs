//! `/chart-templates` and `/deployments` (issue 17, ADR 0029): HTTP only;
//! the rules are in [`crate::desired`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header::IF_MATCH;
use axum::http::{HeaderMap, StatusCode};
use tether_proto::api::{ErrorBody, Page};
use tether_proto::desired::resources::{
    ChartTemplate, ChartTemplateSpec, CreateChartTemplate, CreateDeployment, Deployment,
    DeploymentRollout, DeploymentSpecification,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::page::{PageQuery, PageRequest, Position};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create_template, list_templates))
        .routes(routes!(get_template, update_template, delete_template))
        .routes(routes!(create_deployment, list_deployments))
        .routes(routes!(
            get_deployment,
            update_deployment,
            delete_deployment
        ))
        .routes(routes!(deployment_status))
        .routes(routes!(resume_deployment))
}

/// Creates a chart template (seed 002): a chart in a repository and the
/// values it is deployed with.
#[utoipa::path(post, path = "/chart-templates", tag = "desired-state",
    request_body = CreateChartTemplate,
    responses((status = 201, body = ChartTemplate), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_template(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CreateChartTemplate>,
) -> Result<(StatusCode, axum::Json<ChartTemplate>), ApiError> {
    let template = state.desired.create_template(request).await?;
    Ok((StatusCode::CREATED, axum::Json(template)))
}

/// Chart templates by name, each with the deployments that use it.
#[utoipa::path(get, path = "/chart-templates", tag = "desired-state", params(PageQuery),
    responses((status = 200, body = Page<ChartTemplate>), (status = 401, body = ErrorBody)))]
async fn list_templates(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<ChartTemplate>>, ApiError> {
    let page = PageRequest::new(&query, "chart-templates".to_owned())?;
    let templates = state
        .desired
        .templates(page.after_name()?, page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        templates,
        |t| Position::After(t.name.clone()),
        |t| t,
    )))
}

#[utoipa::path(get, path = "/chart-templates/{name}", tag = "desired-state",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, body = ChartTemplate), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_template(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<ChartTemplate>, ApiError> {
    Ok(axum::Json(state.desired.template(&name).await?))
}

/// Replaces a template's spec: every deployment that uses it gets a new
/// revision, which rolls out in stages.
#[utoipa::path(put, path = "/chart-templates/{name}", tag = "desired-state",
    params(("name" = String, Path, description = "Template name")),
    request_body = ChartTemplateSpec,
    responses((status = 200, body = ChartTemplate), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_template(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<ChartTemplateSpec>,
) -> Result<axum::Json<ChartTemplate>, ApiError> {
    Ok(axum::Json(
        state.desired.update_template(&name, spec).await?,
    ))
}

/// Deletes a template no deployment uses (409 naming those that do).
#[utoipa::path(delete, path = "/chart-templates/{name}", tag = "desired-state",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn delete_template(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.desired.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a deployment (seed 002's edge deployment, seed 003's jobs):
/// what runs on the devices its target picks. It rolls out in batches.
#[utoipa::path(post, path = "/deployments", tag = "desired-state",
    request_body = CreateDeployment,
    responses((status = 201, body = Deployment), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_deployment(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CreateDeployment>,
) -> Result<(StatusCode, axum::Json<Deployment>), ApiError> {
    let deployment = state.desired.create_deployment(request).await?;
    Ok((StatusCode::CREATED, axum::Json(deployment)))
}

/// Deployments by name.
#[utoipa::path(get, path = "/deployments", tag = "desired-state", params(PageQuery),
    responses((status = 200, body = Page<Deployment>), (status = 401, body = ErrorBody)))]
async fn list_deployments(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<Deployment>>, ApiError> {
    let page = PageRequest::new(&query, "deployments".to_owned())?;
    let deployments = state
        .desired
        .deployments(page.after_name()?, page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        deployments,
        |d| Position::After(d.name.clone()),
        |d| d,
    )))
}

#[utoipa::path(get, path = "/deployments/{name}", tag = "desired-state",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, body = Deployment), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_deployment(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<Deployment>, ApiError> {
    Ok(axum::Json(state.desired.deployment(&name).await?))
}

/// Replaces a deployment's spec as its next revision, which rolls out in
/// batches; with `If-Match: "N"` only if it is at revision N.
#[utoipa::path(put, path = "/deployments/{name}", tag = "desired-state",
    params(("name" = String, Path, description = "Deployment name"),
        ("If-Match" = Option<String>, Header, description = "The revision the change was made against, in quotes")),
    request_body = DeploymentSpecification,
    responses((status = 200, body = Deployment), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_deployment(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<DeploymentSpecification>,
) -> Result<axum::Json<Deployment>, ApiError> {
    let expected = headers
        .get(IF_MATCH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().trim_matches('"').parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "If-Match must be the deployment's revision in quotes, e.g. If-Match: \"3\"",
                    )
                })
        })
        .transpose()?;
    Ok(axum::Json(
        state
            .desired
            .update_deployment(&name, spec, expected)
            .await?,
    ))
}

/// Takes the deployment off every device it reached, then deletes it
/// (`rollout` is `deleting` meanwhile).
#[utoipa::path(delete, path = "/deployments/{name}", tag = "desired-state",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 202), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_deployment(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.desired.delete_deployment(&name).await?;
    Ok(StatusCode::ACCEPTED)
}

/// The rollout of the current revision: counts, and each device's
/// revision, batch and reported state.
#[utoipa::path(get, path = "/deployments/{name}/status", tag = "desired-state",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, body = DeploymentRollout), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn deployment_status(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<DeploymentRollout>, ApiError> {
    Ok(axum::Json(state.desired.status(&name).await?))
}

/// Goes on with a paused rollout.
#[utoipa::path(post, path = "/deployments/{name}/resume", tag = "desired-state",
    params(("name" = String, Path, description = "Deployment name")),
    responses((status = 200, body = Deployment), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not paused", body = ErrorBody)))]
async fn resume_deployment(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<Deployment>, ApiError> {
    Ok(axum::Json(state.desired.resume(&name).await?))
}
