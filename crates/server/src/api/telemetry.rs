//! What devices report: events (action answers, presence changes) and host metrics.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use tether_proto::api::{ActiveAlerts, ErrorBody, Event, FleetChange, Page};
use tether_proto::metrics::{HostMetrics, MetricRange, SeriesList};
use tether_proto::telemetry::DeviceUsage;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiQuery, device_id};
use super::page::{PageQuery, PageRequest, Position};
use crate::actions::event_to_api;
use crate::auth::Principal;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(list_metrics))
        .routes(routes!(device_usage))
        .routes(routes!(query_metric))
        .routes(routes!(list_series))
        .routes(routes!(follow_fleet))
}

/// A range query parameters: see [`crate::metrics::query::plan`].
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RangeQuery {
    /// The metric's name, e.g. `cpu_percent` (see `/metrics/series`).
    metric: Option<String>,
    /// Start: RFC 3339, or a duration before now (`90s`, `15m`, `2h`, `7d`).
    /// Default: an hour before `until`.
    since: Option<String>,
    /// End, as `since`. Default: now.
    until: Option<String>,
    /// Bucket width (`10s`, `1m`, `1h`); default about 240 buckets. Under a
    /// minute reads raw points, under an hour 1-minute rollups, else 1-hour
    /// rollups; where raw points or 1-minute rollups are no longer kept for
    /// the whole window, the next coarser resolution answers.
    step: Option<String>,
}

/// One metric of the device over a window: each of its series' points in
/// buckets of `step`, with the resolution that answered. At most 11,000
/// buckets per series and 100 series (then `truncated`).
#[utoipa::path(get, path = "/devices/{name}/metrics/query", tag = "telemetry",
    params(("name" = String, Path, description = "Device name"), RangeQuery),
    responses((status = 200, body = MetricRange), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn query_metric(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<RangeQuery>,
) -> Result<axum::Json<MetricRange>, ApiError> {
    let device = device_id(&name)?;
    state.registry.record(&device).await?;
    let range = state
        .metrics
        .range(
            &device,
            query.metric.as_deref().unwrap_or(""),
            query.since.as_deref(),
            query.until.as_deref(),
            query.step.as_deref(),
            chrono::Utc::now(),
        )
        .await?;
    Ok(axum::Json(range))
}

/// The device's metric series, by name and labels, each with its newest
/// point: which metrics the device has, and their latest values.
#[utoipa::path(get, path = "/devices/{name}/metrics/series", tag = "telemetry",
    params(("name" = String, Path, description = "Device name")),
    responses((status = 200, body = SeriesList), (status = 404, body = ErrorBody)))]
async fn list_series(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<SeriesList>, ApiError> {
    let device = device_id(&name)?;
    state.registry.record(&device).await?;
    Ok(axum::Json(state.metrics.series(&device).await?))
}

/// What the device sent and was sent: per telemetry stream, bytes on the
/// wire (and of them, from the spool's backlog), records stored and sent
/// twice, numbers never received, and what the device's spool dropped when
/// full and over the spec's budget; per feature, the bytes as tetherd
/// counted them beside the device's own last report.
#[utoipa::path(get, path = "/devices/{name}/usage", tag = "telemetry",
    params(("name" = String, Path, description = "Device name")),
    responses((status = 200, body = DeviceUsage), (status = 404, body = ErrorBody)))]
async fn device_usage(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<DeviceUsage>, ApiError> {
    let device = device_id(&name)?;
    let record = state.store.device_usage(&device).await?;
    Ok(axum::Json(crate::telemetry::usage::device_usage(record)))
}

/// The device's events, newest first, in pages.
#[utoipa::path(get, path = "/devices/{name}/events", tag = "telemetry",
    params(("name" = String, Path, description = "Device name"), PageQuery),
    responses((status = 200, body = Page<Event>), (status = 404, body = ErrorBody)))]
async fn list_events(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<Event>>, ApiError> {
    let device = device_id(&name)?;
    let page = PageRequest::new(&query, format!("devices/{device}/events"))?;
    state.registry.record(&device).await?;
    let events = state
        .store
        .list_events_before(&device, page.before()?.as_ref(), page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        events,
        |event| Position::BeforeTimeAndId(event.received_at.timestamp_millis(), event.id.clone()),
        event_to_api,
    )))
}

/// The device's host metrics samples (from `run-stats`), newest first, in pages.
#[utoipa::path(get, path = "/devices/{name}/metrics", tag = "telemetry",
    params(("name" = String, Path, description = "Device name"), PageQuery),
    responses((status = 200, body = Page<HostMetrics>), (status = 404, body = ErrorBody)))]
async fn list_metrics(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<HostMetrics>>, ApiError> {
    let device = device_id(&name)?;
    let page = PageRequest::new(&query, format!("devices/{device}/metrics"))?;
    state.registry.record(&device).await?;
    let samples = state
        .store
        .list_metrics_before(&device, page.before_time()?, page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        samples,
        |sample| Position::BeforeTime(sample.sampled_at.timestamp_millis()),
        |sample| sample,
    )))
}

/// Streams the fleet's changes from now on, whichever replica stores
/// them: each device event (sessions, action answers, tetherd's own events
/// about devices) and the active alerts whenever one is raised,
/// acknowledged or resolved; one JSON object (a `FleetChange`) per line.
/// An empty line is a keepalive; a line `{"error": …}` ends the stream
/// (`too_slow`: the client read too slowly and fell behind;
/// `database_unavailable`); follow again. Read about once a second, by one
/// poller per replica for all its followers (`crate::live`).
#[utoipa::path(get, path = "/events/follow", tag = "telemetry",
    responses((status = 200, description = "JSON lines of FleetChange", content_type = "application/x-ndjson", body = FleetChange),
        (status = 429, description = "The caller (a user or an API key) already holds `api.max_follows_per_user` follows (default 16) at once (`too_many_follows`); close one, then follow again after `Retry-After`",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The fleet's changes cannot be read: the database does not answer (`database_unavailable`); follow again after `Retry-After`",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait")))))]
async fn follow_fleet(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    let follower = state.live.follow(&principal.username).await?;
    let lines = futures::stream::unfold(Some(follower), |follower| async move {
        let mut follower = follower?;
        let (line, follower) = match follower.next().await {
            Ok(change) => (change_line(change), Some(follower)),
            Err(ended) => (ended_line(&ended), None),
        };
        Some((Ok::<_, std::convert::Infallible>(line + "\n"), follower))
    });
    Ok((
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

fn change_line(change: crate::live::Change) -> String {
    match change {
        crate::live::Change::Keepalive => String::new(),
        crate::live::Change::Event(record) => json_line(&FleetChange::Event(event_to_api(record))),
        crate::live::Change::Alerts(mark) => json_line(&FleetChange::Alerts(ActiveAlerts {
            firing: mark.firing,
            acknowledged: mark.acknowledged,
            newest_id: mark.newest,
        })),
    }
}

/// The last line of a follow: why it ended, and that following again helps.
fn ended_line(ended: &crate::live::Ended) -> String {
    let (code, message) = match ended {
        crate::live::Ended::TooSlow { missed } => {
            tracing::info!(missed, "a fleet follower fell behind; its stream ends");
            (
                "too_slow",
                format!(
                    "this stream fell behind the fleet's changes (its client read too slowly) and missed {missed} reads' worth of them; follow again"
                ),
            )
        }
        crate::live::Ended::ReadFailed(error) => {
            tracing::warn!(error = %crate::error_chain(error.as_ref()), "a fleet follower stopped");
            (
                "database_unavailable",
                "the controller could not read the fleet's changes; follow again".to_owned(),
            )
        }
        crate::live::Ended::PollerStopped => (
            "internal",
            "the controller stopped reading the fleet's changes; follow again".to_owned(),
        ),
    };
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}

fn json_line(change: &FleetChange) -> String {
    // Strings, numbers and JSON values always serialize.
    serde_json::to_string(change).unwrap_or_default()
}
