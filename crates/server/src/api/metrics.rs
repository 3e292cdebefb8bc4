//! `GET /metrics`: the Prometheus exposition of this replica, and
//! `GET /metrics/fleet`: the devices' latest metrics; both for the scrape
//! token in the data dir (see `observability`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use futures::StreamExt;

use crate::metrics::FLEET_MAX_SERIES;
use crate::metrics::exposition::{self, Renderer};
use crate::observability::{METRICS_TOKEN_FILE, Snapshot};

/// OpenMetrics text, which Prometheus negotiates and reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Refuses a scrape without the token.
fn check_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
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
    Ok(())
}

pub async fn scrape(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_token(&state, &headers)?;
    let open_actions = state.store.open_action_counts().await?;
    let (pool_in_use, pool_idle, pool_max) = state.store.pool_usage();
    let text = state.observability.render(Snapshot {
        sessions: state.actions.ready_count(),
        open_actions,
        pool_in_use,
        pool_idle,
        pool_max,
        active_alerts: state.store.active_alert_counts().await?,
        alert_deliveries: state.store.alert_delivery_counts().await?,
    });
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// Where a fleet scrape goes on from.
enum Next {
    Series(Option<(String, i64)>),
    Usage(Option<String>),
    Done,
}

/// `GET /metrics/fleet`: the newest value of every series of every device
/// that has one within the last hour, in Prometheus' text format, with
/// `device` and `label_<key>` labels (`crate::metrics::exposition`), then
/// every device's usage (bytes per feature as both ends counted them,
/// records dropped). The body is streamed a page of 5,000 series or
/// devices at a time, so a big fleet costs one page of memory; the series
/// stop after 2,000,000. A store error mid-stream ends the body early,
/// which Prometheus reports as a failed scrape.
pub async fn scrape_fleet(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_token(&state, &headers)?;
    let now = chrono::Utc::now();
    let metrics = state.metrics.clone();
    // The first page before the answer starts: a database that does not
    // answer is an error status, not an empty scrape.
    let mut renderer = Renderer::default();
    let (first, next, served) = metrics.fleet_page(&mut renderer, None, now).await?;
    let next = match next {
        Some(after) => Next::Series(Some(after)),
        None => Next::Usage(None),
    };
    let pages = futures::stream::unfold(
        (metrics, renderer, next, served),
        move |(metrics, mut renderer, next, served)| async move {
            let page = match next {
                Next::Done => return None,
                Next::Series(Some(_)) if served >= FLEET_MAX_SERIES => {
                    tracing::warn!(served, "fleet scrape stopped at its cap of series");
                    Ok((String::new(), Next::Usage(None), 0))
                }
                Next::Series(after) => metrics.fleet_page(&mut renderer, after, now).await.map(
                    |(text, next, count)| {
                        let next = match next {
                            Some(after) => Next::Series(Some(after)),
                            None => Next::Usage(None),
                        };
                        (text, next, count)
                    },
                ),
                Next::Usage(after) => {
                    metrics
                        .usage_page(&mut renderer, after)
                        .await
                        .map(|(text, next)| {
                            (text, next.map_or(Next::Done, |d| Next::Usage(Some(d))), 0)
                        })
                }
            };
            match page {
                Ok((text, next, count)) => Some((
                    Ok::<_, std::io::Error>(text),
                    (metrics, renderer, next, served + count),
                )),
                Err(error) => {
                    tracing::error!(error = %crate::error_chain(&error), "fleet scrape ended early");
                    Some((
                        Err(std::io::Error::other(error.to_string())),
                        (metrics, renderer, Next::Done, served),
                    ))
                }
            }
        },
    );
    let body = futures::stream::once(async move { Ok(first) }).chain(pages);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, exposition::CONTENT_TYPE)],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
