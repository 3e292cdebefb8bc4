//! Device logs: the archive in pages, and live following as a stream of
//! JSON lines (`application/x-ndjson`), for one device or a label selector.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use chrono::{TimeDelta, Utc};
use futures::StreamExt;
use serde::Deserialize;
use tether_proto::DeviceId;
use tether_proto::api::{ErrorBody, LogEntry, Page};
use tether_proto::labels::LabelSelector;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiQuery, device_id};
use super::page::{PageQuery, PageRequest, Position};
use crate::auth::Principal;
use crate::logs::{self, LogFilter, LogsError};
use crate::registry::RegistryError;
use crate::store::LogLine;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(device_logs))
        .routes(routes!(follow_device_logs))
        .routes(routes!(fleet_logs))
        .routes(routes!(follow_fleet_logs))
}

/// Longest `grep` text.
const MAX_GREP_BYTES: usize = 256;
/// Most units one query names.
const MAX_UNITS: usize = 64;
/// Longest `since`/`until` (an RFC 3339 time with nanoseconds and an
/// offset is 35).
const MAX_MOMENT_BYTES: usize = 64;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FilterQuery {
    /// This priority and more severe: 0–7 or a name (`emerg`, `alert`,
    /// `crit`, `err`, `warning`, `notice`, `info`, `debug`). Default all.
    #[param(max_length = 16)]
    priority: Option<String>,
    /// Only lines of these units (systemd unit, syslog tag or file),
    /// comma-separated.
    #[param(max_length = 4096)]
    unit: Option<String>,
    /// Only lines whose message contains this text (case-sensitive).
    #[param(max_length = 256)]
    grep: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ArchiveQuery {
    /// From this moment on: seconds ago (`60`), a duration ago (`90s`,
    /// `15m`, `1h`, `7d`) or RFC 3339. Default 1 hour ago.
    #[param(max_length = 64)]
    since: Option<String>,
    /// Before this moment, in the same forms. Default now.
    #[param(max_length = 64)]
    until: Option<String>,
    #[param(max_length = 16)]
    priority: Option<String>,
    #[param(max_length = 4096)]
    unit: Option<String>,
    #[param(max_length = 256)]
    grep: Option<String>,
    /// Only for `GET /logs`: the devices, as for `GET /devices`.
    #[param(max_length = 4096)]
    label_selector: Option<String>,
    /// At most this many lines in this page (default 500); a page may hold
    /// fewer while `continue` is present (a `grep` that matches little).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<u32>,
    #[serde(rename = "continue")]
    #[param(rename = "continue", max_length = 2048)]
    continue_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FleetFollowQuery {
    /// The devices to follow (at most 100), as for `GET /devices`.
    #[param(max_length = 4096)]
    label_selector: String,
    #[param(max_length = 16)]
    priority: Option<String>,
    #[param(max_length = 4096)]
    unit: Option<String>,
    #[param(max_length = 256)]
    grep: Option<String>,
}

/// The device's stored log lines in a time window, oldest first, in pages.
#[utoipa::path(get, path = "/devices/{name}/logs", tag = "logs",
    params(("name" = String, Path, description = "Device name"), ArchiveQuery),
    responses((status = 200, body = Page<LogEntry>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 414, description = "The query string is longer than the 64 KiB the server reads")))]
async fn device_logs(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<ArchiveQuery>,
) -> Result<axum::Json<Page<LogEntry>>, ApiError> {
    if query.label_selector.is_some() {
        return Err(ApiError::bad_request(
            "labelSelector is for GET /logs; this path names its device",
        ));
    }
    let device = device_id(&name)?;
    state.registry.record(&device).await?;
    archive(&state, &[device], format!("devices/{name}/logs"), query).await
}

/// The stored log lines of the devices a label selector picks (at most
/// 1000), oldest first, in pages.
#[utoipa::path(get, path = "/logs", tag = "logs", params(ArchiveQuery),
    responses((status = 200, body = Page<LogEntry>), (status = 400, body = ErrorBody),
        (status = 414, description = "The query string is longer than the 64 KiB the server reads")))]
async fn fleet_logs(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<ArchiveQuery>,
) -> Result<axum::Json<Page<LogEntry>>, ApiError> {
    let selector = selector(query.label_selector.as_deref().unwrap_or_default())?;
    let devices = select(&state, &selector, logs::MAX_ARCHIVE_DEVICES).await?;
    archive(
        &state,
        &devices,
        format!("logs?labelSelector={selector}"),
        query,
    )
    .await
}

/// Streams the device's log lines from now on, as they are stored, one
/// JSON object (a `LogEntry`) per line; an empty line is a keepalive; a
/// line `{"error": …}` ends the stream. While followed, a device whose
/// agent can sends its system log live (`follow-logs`).
#[utoipa::path(get, path = "/devices/{name}/logs/follow", tag = "logs",
    params(("name" = String, Path, description = "Device name"), FilterQuery),
    responses((status = 200, description = "JSON lines of LogEntry", content_type = "application/x-ndjson", body = LogEntry),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, description = "The caller (a user or an API key) already holds `api.max_follows_per_user` log follows (default 16) at once (`too_many_follows`); close one, then follow again after `Retry-After`",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait")))))]
async fn follow_device_logs(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<FilterQuery>,
) -> Result<Response, ApiError> {
    let filter = filter(query.priority, query.unit, query.grep)?;
    let device = device_id(&name)?;
    state.registry.record(&device).await?;
    follow(&state, &principal.username, vec![device], filter).await
}

/// Streams the log lines of the devices a label selector picks (at most
/// 100), as `GET /devices/{name}/logs/follow` does for one.
#[utoipa::path(get, path = "/logs/follow", tag = "logs", params(FleetFollowQuery),
    responses((status = 200, description = "JSON lines of LogEntry", content_type = "application/x-ndjson", body = LogEntry),
        (status = 400, body = ErrorBody),
        (status = 429, description = "The caller (a user or an API key) already holds `api.max_follows_per_user` log follows (default 16) at once (`too_many_follows`); close one, then follow again after `Retry-After`",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait")))))]
async fn follow_fleet_logs(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiQuery(query): ApiQuery<FleetFollowQuery>,
) -> Result<Response, ApiError> {
    let filter = filter(query.priority, query.unit, query.grep)?;
    let selector = selector(&query.label_selector)?;
    let devices = select(&state, &selector, logs::MAX_FOLLOWED_DEVICES).await?;
    follow(&state, &principal.username, devices, filter).await
}

async fn archive(
    state: &AppState,
    devices: &[DeviceId],
    listing: String,
    query: ArchiveQuery,
) -> Result<axum::Json<Page<LogEntry>>, ApiError> {
    bounded("since", query.since.as_deref(), MAX_MOMENT_BYTES)?;
    bounded("until", query.until.as_deref(), MAX_MOMENT_BYTES)?;
    let filter = filter(query.priority, query.unit, query.grep)?;
    // The query as given names the listing: a token of another query is
    // refused rather than misread. The window is resolved once, by the
    // first page, and travels in the token, so `since=60` does not move
    // while the pages are read.
    let page = PageRequest::new(
        &PageQuery {
            limit: query.limit,
            continue_token: query.continue_token,
        },
        format!(
            "{listing}?since={:?}&until={:?}&filter={filter:?}",
            query.since, query.until
        ),
    )?;
    let (after, (since, until)) = match page.after_log()? {
        Some((after, window)) => (Some(after), window),
        None => {
            let now = Utc::now();
            let moment = |field: &str, text: Option<&str>, default| match text {
                None => Ok(default),
                Some(text) => logs::parse_moment(text, now)
                    .map_err(|message| ApiError::bad_request(format!("{field}: {message}"))),
            };
            let since = moment("since", query.since.as_deref(), now - TimeDelta::hours(1))?;
            (None, (since, moment("until", query.until.as_deref(), now)?))
        }
    };
    let found = state
        .logs
        .archive(devices, (since, until), &filter, after, page.limit as usize)
        .await?;
    let next = found.next.map(|at| {
        Position::AfterLog(
            at.at.timestamp_millis(),
            at.device,
            at.pos,
            since.timestamp_millis(),
            until.timestamp_millis(),
        )
    });
    Ok(axum::Json(page.page_to(
        found.lines.into_iter().map(entry).collect(),
        next,
    )))
}

async fn follow(
    state: &AppState,
    user: &str,
    devices: Vec<DeviceId>,
    filter: LogFilter,
) -> Result<Response, ApiError> {
    let batches = state.logs.follow(user, devices, filter).await?;
    let body = ReceiverStream::new(batches).map(|batch| {
        let mut text = String::new();
        match batch {
            Ok(lines) if lines.is_empty() => text.push('\n'),
            Ok(lines) => {
                for line in lines {
                    // A struct of strings and numbers always serializes.
                    text.push_str(&serde_json::to_string(&entry(line)).unwrap_or_default());
                    text.push('\n');
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "a log follower stopped");
                let error = serde_json::json!({"error": {
                    "code": "database_unavailable",
                    "message": "the controller could not read the logs; follow again",
                }});
                text.push_str(&error.to_string());
                text.push('\n');
            }
        }
        Ok::<_, std::convert::Infallible>(text)
    });
    Ok((
        [(CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Refuses a query parameter longer than the API declares.
fn bounded(field: &str, value: Option<&str>, max: usize) -> Result<(), ApiError> {
    match value {
        Some(value) if value.len() > max => Err(ApiError::bad_request(format!(
            "{field} is {} bytes; at most {max}",
            value.len()
        ))),
        _ => Ok(()),
    }
}

fn filter(
    priority: Option<String>,
    unit: Option<String>,
    grep: Option<String>,
) -> Result<LogFilter, ApiError> {
    bounded("priority", priority.as_deref(), 16)?;
    bounded("unit", unit.as_deref(), 4096)?;
    let max_priority = priority
        .as_deref()
        .map(tether_proto::priority::parse)
        .transpose()
        .map_err(ApiError::bad_request)?
        .unwrap_or(7);
    let units: Vec<String> = unit
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|unit| !unit.is_empty())
        .map(str::to_owned)
        .collect();
    if units.len() > MAX_UNITS {
        return Err(ApiError::bad_request(format!(
            "unit names {} units; at most {MAX_UNITS}",
            units.len()
        )));
    }
    if let Some(grep) = grep.as_deref().filter(|g| g.len() > MAX_GREP_BYTES) {
        return Err(ApiError::bad_request(format!(
            "grep is {} bytes; at most {MAX_GREP_BYTES}",
            grep.len()
        )));
    }
    Ok(LogFilter {
        max_priority,
        units,
        grep: grep.filter(|g| !g.is_empty()),
    })
}

fn selector(text: &str) -> Result<LabelSelector, ApiError> {
    LabelSelector::parse(text).map_err(|error| RegistryError::from(error).into())
}

/// The devices `selector` picks; refused when more than `max`.
async fn select(
    state: &AppState,
    selector: &LabelSelector,
    max: usize,
) -> Result<Vec<DeviceId>, ApiError> {
    let fetch = u32::try_from(max + 1).unwrap_or(u32::MAX);
    let devices = state.registry.list(selector, None, fetch).await?;
    if devices.len() > max {
        return Err(LogsError::TooManyDevices { max }.into());
    }
    devices
        .into_iter()
        .map(|device| device_id(&device.name))
        .collect()
}

fn entry(line: LogLine) -> LogEntry {
    LogEntry {
        device: line.device.to_string(),
        pos: line.pos,
        at: line.record.at,
        priority: line.record.priority,
        unit: line.record.unit,
        message: line.record.message,
        fields: line.record.fields,
    }
}
