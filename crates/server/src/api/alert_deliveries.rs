//! The alert delivery outbox (issue 18): what was sent to which receiver,
//! what is still trying, and what was given up (dead letters), which an
//! operator can send again once the receiver is fixed.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use tether_proto::alert_deliveries::{AlertDelivery, DeliveryState};
use tether_proto::api::{ErrorBody, Page};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::ApiQuery;
use super::page::{PageQuery, PageRequest, Position};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeliveriesQuery {
    /// Only deliveries in this state, e.g. `dead` for those given up.
    state: Option<DeliveryState>,
    /// At most this many items in this page (default 500).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<u32>,
    /// The `continue` of the previous page, to read the next one (with the
    /// same `state`).
    #[serde(rename = "continue")]
    #[param(rename = "continue", max_length = 2048)]
    continue_token: Option<String>,
}

/// Alert deliveries newest first, with why the last attempt failed, in
/// pages; `state=dead` lists the dead letters.
#[utoipa::path(get, path = "/alerts/deliveries", tag = "alerts", params(DeliveriesQuery),
    responses((status = 200, body = Page<AlertDelivery>), (status = 400, body = ErrorBody)))]
async fn list_deliveries(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> Result<axum::Json<Page<AlertDelivery>>, ApiError> {
    let filter = query.state.map(DeliveryState::as_str).unwrap_or_default();
    let page = PageRequest::new(
        &PageQuery {
            limit: query.limit,
            continue_token: query.continue_token,
        },
        format!("alerts/deliveries?state={filter}"),
    )?;
    let deliveries = state
        .store
        .list_alert_deliveries(query.state, page.before()?.as_ref(), page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        deliveries,
        |delivery| {
            Position::BeforeTimeAndId(delivery.created_at.timestamp_millis(), delivery.id.clone())
        },
        |delivery| delivery,
    )))
}

/// Sends a dead delivery again: it is queued at once with its attempts
/// counted afresh. Only a dead delivery of a receiver still configured
/// can be retried (409 otherwise).
#[utoipa::path(post, path = "/alerts/deliveries/{id}/retry", tag = "alerts",
    params(("id" = String, Path, description = "The delivery's id")),
    responses((status = 200, body = AlertDelivery), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn retry_delivery(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<AlertDelivery>, ApiError> {
    if let Some(queued) = state
        .store
        .retry_alert_delivery(&id, chrono::Utc::now())
        .await?
    {
        return Ok(axum::Json(queued));
    }
    let delivery = state.store.get_alert_delivery(&id).await?;
    let why = if delivery.state != DeliveryState::Dead {
        format!(
            "delivery {id} is {}; only a dead delivery can be retried",
            delivery.state.as_str()
        )
    } else if state.store.is_alert_receiver(&delivery.receiver).await? {
        // Sent now, it would reach the receiver after a later change of the
        // same alert and undo it there (a firing after its resolution).
        format!(
            "delivery {id} ({}) is older than a change of alert {} already sent or on its way to {}; retrying it would deliver them out of order",
            delivery.event.as_str(),
            delivery.alert_id,
            delivery.receiver
        )
    } else {
        format!(
            "delivery {id} is for receiver {}, which is retired ([alerts] retired_receivers)",
            delivery.receiver
        )
    };
    Err(ApiError::new(StatusCode::CONFLICT, "conflict", why))
}
