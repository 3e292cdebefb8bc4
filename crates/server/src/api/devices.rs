//! Devices: create (with an enrollment token), list by label selector and
//! name search (in pages, by name or time last seen), count by presence,
//! get, patch labels, delete.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header::IF_MATCH;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use tether_proto::api::{
    CreateDevice, Device, DeviceCreated, EnrollmentToken, ErrorBody, FleetSummary, Page,
    PatchDevice,
};
use tether_proto::labels::LabelSelector;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, ClientHost, device_id};
use super::page::{PageQuery, PageRequest, Position};
use crate::registry::RegistryError;
use crate::store::{DeviceListing, DeviceOrder};

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_devices, create_device))
        .routes(routes!(device_summary))
        .routes(routes!(get_device, patch_device, delete_device))
        .routes(routes!(new_enrollment_token))
        .routes(routes!(revoke_device))
}

/// Longest `search` text, in characters.
const MAX_SEARCH_CHARS: usize = 128;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListQuery {
    /// `key=value,key!=value,key in (v1,v2),key notin (v1,v2),key,!key`
    #[param(max_length = 4096)]
    label_selector: Option<String>,
    /// Only devices whose name or display name contains this text,
    /// ignoring case (with `labelSelector`, devices matching both).
    #[param(max_length = 128)]
    search: Option<String>,
    /// The order: `name` (the default), `lastSeen` (least recently seen
    /// first, never seen before all), `-` before either for the reverse.
    /// Devices seen at the same time are ordered by name.
    #[param(pattern = "^-?(name|lastSeen)$")]
    sort: Option<String>,
    /// At most this many devices in this page (default 500).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<u32>,
    /// The `continue` of the previous page, to read the next one (with the
    /// same `labelSelector`, `search` and `sort`).
    #[serde(rename = "continue")]
    #[param(rename = "continue", max_length = 2048)]
    continue_token: Option<String>,
}

/// Lists devices, optionally filtered by a label selector and a search of
/// their names, by name or by time last seen, in pages: follow `continue`
/// until it is absent. Sorted by time last seen, a device seen while the
/// walk goes on may move past the page being read (or into a later one).
#[utoipa::path(get, path = "/devices", tag = "devices", params(ListQuery),
    responses((status = 200, body = Page<Device>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_devices(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<axum::Json<Page<Device>>, ApiError> {
    let selector = selector(query.label_selector.as_deref())?;
    let search = search(query.search.as_deref())?;
    let (order, sort) = sort(query.sort.as_deref())?;
    // The listing names every parameter that changes its items or their
    // order, so a token is refused with other ones.
    let mut listing = format!("devices?labelSelector={selector}");
    if let Some(search) = search {
        listing.push_str(&format!("&search={search:?}"));
    }
    if order != DeviceOrder::Name {
        listing.push_str(&format!("&sort={sort}"));
    }
    let page = PageRequest::new(
        &PageQuery {
            limit: query.limit,
            continue_token: query.continue_token,
        },
        listing,
    )?;
    let devices = state
        .registry
        .search(
            &DeviceListing {
                selector: &selector,
                search,
                order,
            },
            page.after_device()?.as_ref(),
            page.fetch(),
        )
        .await?;
    let by_time = matches!(
        order,
        DeviceOrder::LastSeen | DeviceOrder::LastSeenDescending
    );
    Ok(axum::Json(page.page(
        devices,
        |(cursor, _)| {
            if by_time {
                Position::AfterSeen(cursor.last_seen, cursor.name.clone())
            } else {
                Position::After(cursor.name.clone())
            }
        },
        |(_, device)| device,
    )))
}

/// The search text, trimmed (`None` when empty); a 400 naming `search`
/// when too long or holding control characters.
fn search(text: Option<&str>) -> Result<Option<&str>, ApiError> {
    let text = text.map(str::trim).unwrap_or_default();
    let chars = text.chars().count();
    if chars > MAX_SEARCH_CHARS {
        return Err(ApiError::bad_request(format!(
            "search must be at most {MAX_SEARCH_CHARS} characters; got {chars}"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "search must not contain control characters",
        ));
    }
    Ok((!text.is_empty()).then_some(text))
}

/// The order `sort` names, and its canonical text; a 400 naming `sort`
/// for anything else.
fn sort(text: Option<&str>) -> Result<(DeviceOrder, &'static str), ApiError> {
    match text.unwrap_or("name") {
        "name" => Ok((DeviceOrder::Name, "name")),
        "-name" => Ok((DeviceOrder::NameDescending, "-name")),
        "lastSeen" => Ok((DeviceOrder::LastSeen, "lastSeen")),
        "-lastSeen" => Ok((DeviceOrder::LastSeenDescending, "-lastSeen")),
        other => Err(ApiError::bad_request(format!(
            "sort must be one of name, -name, lastSeen, -lastSeen; got {other:?}"
        ))),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SummaryQuery {
    /// A label key: count per value of this label too (devices without it
    /// in a group whose `value` is `null`).
    #[param(max_length = 63)]
    by: Option<String>,
    /// Count only the devices this selector picks (as for `GET /devices`).
    #[param(max_length = 4096)]
    label_selector: Option<String>,
}

/// Counts devices online and offline, overall and per value of a label.
#[utoipa::path(get, path = "/devices/summary", tag = "devices", params(SummaryQuery),
    responses((status = 200, body = FleetSummary), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn device_summary(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<SummaryQuery>,
) -> Result<axum::Json<FleetSummary>, ApiError> {
    let selector = selector(query.label_selector.as_deref())?;
    Ok(axum::Json(
        state
            .registry
            .summary(&selector, query.by.as_deref())
            .await?,
    ))
}

fn selector(text: Option<&str>) -> Result<LabelSelector, ApiError> {
    LabelSelector::parse(text.unwrap_or_default())
        .map_err(|error| RegistryError::from(error).into())
}

/// Registers a device and returns its one-time enrollment token.
#[utoipa::path(post, path = "/devices", tag = "devices", request_body = CreateDevice,
    responses((status = 201, body = DeviceCreated), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_device(
    State(state): State<Arc<AppState>>,
    ClientHost(host): ClientHost,
    ApiJson(request): ApiJson<CreateDevice>,
) -> Result<(StatusCode, axum::Json<DeviceCreated>), ApiError> {
    let created = state
        .registry
        .create(
            &request.name,
            request.labels,
            request.display_name.as_deref(),
            &state.endpoints(&host),
        )
        .await?;
    tracing::info!(device = %created.device.name, "device created");
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[utoipa::path(get, path = "/devices/{name}", tag = "devices",
    params(("name" = String, Path, description = "Device name")),
    responses((status = 200, body = Device), (status = 404, body = ErrorBody)))]
async fn get_device(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<Device>, ApiError> {
    let name = device_id(&name)?;
    let mut device = state.registry.get_with_spec(&name).await?;
    device.ingest = Some(state.ingest.counters(&name));
    Ok(axum::Json(device))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PatchQuery {
    /// The spec fields to update, comma-separated (`spec.loggingConfig`,
    /// `spec.loggingConfig.priority`): taken from the request's `spec`, or
    /// removed if it lacks them; the rest stays. Without it `spec`
    /// replaces the whole spec.
    #[param(max_length = 4096)]
    update_mask: Option<String>,
}

/// Merges labels (a `null` value removes the label) and updates the spec:
/// the whole spec, or the fields `updateMask` names. The version goes up
/// by one if the spec changed; with `If-Match: "N"` only if it was at N
/// (412 otherwise). The new spec is sent to the device.
#[utoipa::path(patch, path = "/devices/{name}", tag = "devices", request_body = PatchDevice,
    params(("name" = String, Path, description = "Device name"), PatchQuery,
        ("If-Match" = Option<String>, Header, description = "The specVersion the update was made against, in quotes")),
    responses((status = 200, body = Device), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 412, body = ErrorBody)))]
async fn patch_device(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<PatchQuery>,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<PatchDevice>,
) -> Result<axum::Json<Device>, ApiError> {
    let if_match = headers
        .get(IF_MATCH)
        .map(|value| {
            value.to_str().map_err(|_| {
                ApiError::bad_request(
                    "If-Match is not text: send the specVersion in quotes, e.g. If-Match: \"3\"",
                )
            })
        })
        .transpose()?;
    Ok(axum::Json(
        state
            .registry
            .patch(
                &device_id(&name)?,
                patch,
                query.update_mask.as_deref(),
                if_match,
            )
            .await?,
    ))
}

/// Deletes the device, its history, and revokes its certificate.
#[utoipa::path(delete, path = "/devices/{name}", tag = "devices",
    params(("name" = String, Path, description = "Device name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_device(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = device_id(&name)?;
    state.registry.delete(&name).await?;
    tracing::info!(device = %name, "device deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenQuery {
    /// How long the token stays valid, in seconds (default: tetherd's
    /// `auth.enrollment_token_ttl_seconds`, a day); at most 90 days, for an
    /// OS image written now and booted later.
    #[param(minimum = 60, maximum = 7_776_000)]
    ttl_seconds: Option<u64>,
}

/// Longest lifetime an enrollment token may be asked for.
const MAX_TOKEN_TTL_SECONDS: u64 = 90 * 24 * 3600;

/// Issues a new one-time enrollment token (to re-enroll or replace hardware).
#[utoipa::path(post, path = "/devices/{name}/enrollment-token", tag = "devices",
    params(("name" = String, Path, description = "Device name"), TokenQuery),
    responses((status = 200, body = EnrollmentToken), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn new_enrollment_token(
    State(state): State<Arc<AppState>>,
    ClientHost(host): ClientHost,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<TokenQuery>,
) -> Result<axum::Json<EnrollmentToken>, ApiError> {
    let ttl = match query.ttl_seconds {
        None => None,
        Some(seconds) if (60..=MAX_TOKEN_TTL_SECONDS).contains(&seconds) => {
            Some(std::time::Duration::from_secs(seconds))
        }
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "ttlSeconds must be 60–{MAX_TOKEN_TTL_SECONDS} (90 days)"
            )));
        }
    };
    let endpoints = state.endpoints(&host);
    Ok(axum::Json(
        state
            .registry
            .issue_enrollment_token(&device_id(&name)?, &endpoints, ttl)
            .await?,
    ))
}

/// Revokes the device's certificates: its session closes, it can neither
/// connect nor renew, and its history stays. Enroll it again with a new
/// token to bring it back.
#[utoipa::path(post, path = "/devices/{name}/revoke", tag = "devices",
    params(("name" = String, Path, description = "Device name")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn revoke_device(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.registry.revoke(&device_id(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
