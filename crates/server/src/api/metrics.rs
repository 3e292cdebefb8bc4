//! `GET /metrics`: the Prometheus exposition of this replica, for the
//! scrape token in the data dir (see `observability`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::observability::{METRICS_TOKEN_FILE, Snapshot};

/// OpenMetrics text, which Prometheus negotiates and reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn scrape(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !presented.is_some_and(|token| state.scrape_token.admits(token.trim())) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "scraping needs `Authorization: Bearer <token>` with the token in tetherd's data dir, file {METRICS_TOKEN_FILE}"
            ),
        ));
    }
    let open_actions = state.store.open_action_counts().await?;
    let (pool_in_use, pool_idle, pool_max) = state.store.pool_usage();
    let text = state.observability.render(Snapshot {
        sessions: state.actions.ready_count(),
        open_actions,
        pool_in_use,
        pool_idle,
        pool_max,
    });
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}
