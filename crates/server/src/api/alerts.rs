//! Alerts the fleet monitor raised (issue 18, ADR 0032): listed, read and
//! acknowledged. Their rules and delivery live elsewhere.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use serde::Deserialize;
use tether_proto::DeviceId;
use tether_proto::alerts::Alert;
use tether_proto::api::{ErrorBody, Page};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::ApiQuery;
use super::page::{PageQuery, PageRequest, Position};
use crate::auth::Principal;
use crate::store::{AlertFilter, AlertStates};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_alerts))
        .routes(routes!(get_alert))
        .routes(routes!(acknowledge_alert))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AlertsQuery {
    /// `active` (firing or acknowledged: the default), `firing`,
    /// `acknowledged`, `resolved` or `all`.
    state: Option<String>,
    /// Only this device's alerts.
    device: Option<String>,
    /// Only this rule's alerts (`device_silent`, `config_drift`, or an
    /// operator's rule).
    rule: Option<String>,
    /// At most this many in this page (default 500).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<u32>,
    /// The `continue` of the previous page.
    #[serde(rename = "continue")]
    #[param(rename = "continue", max_length = 2048)]
    continue_token: Option<String>,
}

/// Alerts, newest first; by default only those not yet resolved.
#[utoipa::path(get, path = "/alerts", tag = "alerts", params(AlertsQuery),
    responses((status = 200, body = Page<Alert>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_alerts(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<AlertsQuery>,
) -> Result<axum::Json<Page<Alert>>, ApiError> {
    let states = match query.state.as_deref() {
        None => AlertStates::Active,
        Some(name) => AlertStates::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state must be one of active, firing, acknowledged, resolved, all; got {name:?}"
            ))
        })?,
    };
    let device = query
        .device
        .as_deref()
        .map(|name| {
            DeviceId::new(name).map_err(|error| ApiError::bad_request(format!("device: {error}")))
        })
        .transpose()?;
    let filter = AlertFilter {
        states,
        device,
        rule: query.rule,
    };
    let page = PageRequest::new(
        &PageQuery {
            limit: query.limit,
            continue_token: query.continue_token,
        },
        format!("alerts?{filter:?}"),
    )?;
    let alerts = state
        .store
        .list_alerts(&filter, page.before_seq()?, page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        alerts,
        |alert| Position::BeforeSeq(alert.id),
        |alert| alert,
    )))
}

#[utoipa::path(get, path = "/alerts/{id}", tag = "alerts",
    params(("id" = u64, Path, description = "Alert id")),
    responses((status = 200, body = Alert), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_alert(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<Alert>, ApiError> {
    Ok(axum::Json(state.store.get_alert(alert_id(&id)?).await?))
}

/// Takes a firing alert on: it stays until its condition ends, marked with
/// who acknowledged it and when. Acknowledging it again changes nothing.
#[utoipa::path(post, path = "/alerts/{id}/acknowledge", tag = "alerts",
    params(("id" = u64, Path, description = "Alert id")),
    responses((status = 200, body = Alert), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "The alert is resolved", body = ErrorBody)))]
async fn acknowledge_alert(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<axum::Json<Alert>, ApiError> {
    Ok(axum::Json(
        state
            .store
            .acknowledge_alert(alert_id(&id)?, &principal.username, chrono::Utc::now())
            .await?,
    ))
}

fn alert_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("an alert id is a number; got {text:?}")))
}
