//! `/alert-rules` (issue 18): HTTP only; the checks and the evaluator are
//! in [`crate::monitor::rules`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use tether_proto::alert_rules::{AlertRule, AlertRuleSpec, CreateAlertRule};
use tether_proto::api::{ErrorBody, Page};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::page::{PageQuery, PageRequest, Position};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(create_rule, list_rules))
        .routes(routes!(get_rule, update_rule, delete_rule))
}

/// Creates an alert rule: a metric threshold or a reported status that,
/// held for `for` on a device the selector picks, raises an alert.
#[utoipa::path(post, path = "/alert-rules", tag = "alerts",
    request_body = CreateAlertRule,
    responses((status = 201, body = AlertRule), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_rule(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CreateAlertRule>,
) -> Result<(StatusCode, axum::Json<AlertRule>), ApiError> {
    let rule = state.alert_rules.create(request, Utc::now()).await?;
    Ok((StatusCode::CREATED, axum::Json(rule)))
}

/// Alert rules by name.
#[utoipa::path(get, path = "/alert-rules", tag = "alerts", params(PageQuery),
    responses((status = 200, body = Page<AlertRule>), (status = 401, body = ErrorBody)))]
async fn list_rules(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<AlertRule>>, ApiError> {
    let page = PageRequest::new(&query, "alert-rules".to_owned())?;
    let rules = state
        .alert_rules
        .list(page.after_name()?, page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        rules,
        |r| Position::After(r.name.clone()),
        |r| r,
    )))
}

#[utoipa::path(get, path = "/alert-rules/{name}", tag = "alerts",
    params(("name" = String, Path, description = "Rule name")),
    responses((status = 200, body = AlertRule), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_rule(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<AlertRule>, ApiError> {
    Ok(axum::Json(state.alert_rules.get(&name).await?))
}

/// Replaces a rule's spec; the next evaluation resolves the alerts whose
/// condition no longer holds.
#[utoipa::path(put, path = "/alert-rules/{name}", tag = "alerts",
    params(("name" = String, Path, description = "Rule name")),
    request_body = AlertRuleSpec,
    responses((status = 200, body = AlertRule), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_rule(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<AlertRuleSpec>,
) -> Result<axum::Json<AlertRule>, ApiError> {
    Ok(axum::Json(
        state.alert_rules.update(&name, spec, Utc::now()).await?,
    ))
}

/// Deletes a rule and resolves the alerts it raised.
#[utoipa::path(delete, path = "/alert-rules/{name}", tag = "alerts",
    params(("name" = String, Path, description = "Rule name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_rule(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.alert_rules.delete(&name, Utc::now()).await?;
    Ok(StatusCode::NO_CONTENT)
}
