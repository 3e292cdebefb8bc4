//! What devices report: events (action answers, presence changes) and host metrics.

use std::sync::Arc;

use axum::extract::{Path, State};
use tether_proto::api::{ErrorBody, Event};
use tether_proto::metrics::HostMetrics;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::actions::LimitQuery;
use super::error::ApiError;
use super::extract::{ApiQuery, device_id};
use crate::actions::event_to_api;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(list_metrics))
}

/// The device's events, newest first.
#[utoipa::path(get, path = "/devices/{name}/events", tag = "telemetry",
    params(("name" = String, Path, description = "Device name"), LimitQuery),
    responses((status = 200, body = [Event]), (status = 404, body = ErrorBody)))]
async fn list_events(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<LimitQuery>,
) -> Result<axum::Json<Vec<Event>>, ApiError> {
    let device = device_id(&name)?;
    state.registry.record(&device).await?;
    let events = state.store.list_events(&device, query.limit()?).await?;
    Ok(axum::Json(events.into_iter().map(event_to_api).collect()))
}

/// The device's host metrics samples (from `run-stats`), newest first.
#[utoipa::path(get, path = "/devices/{name}/metrics", tag = "telemetry",
    params(("name" = String, Path, description = "Device name"), LimitQuery),
    responses((status = 200, body = [HostMetrics]), (status = 404, body = ErrorBody)))]
async fn list_metrics(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<LimitQuery>,
) -> Result<axum::Json<Vec<HostMetrics>>, ApiError> {
    let device = device_id(&name)?;
    state.registry.record(&device).await?;
    Ok(axum::Json(
        state.store.list_metrics(&device, query.limit()?).await?,
    ))
}
