//! `/agent-releases` (issue 19): HTTP only; the rules are in
//! [`crate::releases`]. The binary download is a device's route: it
//! authenticates with the download token its spec carries.

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::{
    ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use tether_proto::api::{ErrorBody, Page};
use tether_proto::desired::resources::{PublishedRelease, ReleaseSigningKey};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::ApiQuery;
use super::page::{PageQuery, PageRequest, Position};
use crate::auth::Principal;
use crate::releases::Published;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_releases))
        .routes(routes!(signing_key))
        .routes(routes!(get_release, delete_release))
        .routes(routes!(publish))
}

/// Routes devices call without a login.
pub fn device_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(download))
        .routes(routes!(device_signing_key))
}

/// Publishes one platform's agent binary of a release: tetherd checks it
/// is an ELF executable for the platform's architecture, hashes and signs
/// it. The same bytes again answer 200 and change nothing; other bytes
/// for a published version and platform are refused (a release never
/// changes).
#[utoipa::path(put, path = "/agent-releases/{version}/{platform}", tag = "agent-releases",
    params(("version" = String, Path, description = "Release version (letters, digits, `.+-_`)",
            pattern = "^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$"),
        ("platform" = String, Path, description = "`linux-x86_64` or `linux-aarch64`",
            pattern = "^[a-z0-9_]+-[a-z0-9_]+$", max_length = 32)),
    request_body(content = String, content_type = "application/octet-stream",
        description = "The agent binary, stamped with the release's version; at most `releases.max_binary_bytes` (256 MiB)"),
    responses((status = 201, description = "Published", body = PublishedRelease),
        (status = 200, description = "Already published with these bytes", body = PublishedRelease),
        (status = 400, description = "Not an executable for the platform, not stamped with the release's version, a bad version or platform, or empty", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "Published before with other bytes", body = ErrorBody),
        (status = 413, description = "Larger than `releases.max_binary_bytes` (256 MiB by default), naming the limit", body = ErrorBody)))]
async fn publish(
    State(state): State<Arc<AppState>>,
    Path((version, platform)): Path<(String, String)>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Refused before a byte is read when announced; otherwise the spool
    // stops at the limit as the body streams in.
    let limit = state.releases.config().max_binary_bytes;
    if announced.is_some_and(|length| length > limit) {
        return Err(crate::releases::ReleaseError::TooLarge { limit }.into());
    }
    let published = state
        .releases
        .publish(
            &version,
            &platform,
            body.into_data_stream(),
            &principal.username,
        )
        .await?;
    Ok(match published {
        Published::Created(release) => (StatusCode::CREATED, axum::Json(release)).into_response(),
        Published::Unchanged(release) => (StatusCode::OK, axum::Json(release)).into_response(),
    })
}

/// Agent releases by version.
#[utoipa::path(get, path = "/agent-releases", tag = "agent-releases", params(PageQuery),
    responses((status = 200, body = Page<PublishedRelease>), (status = 401, body = ErrorBody)))]
async fn list_releases(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<axum::Json<Page<PublishedRelease>>, ApiError> {
    let page = PageRequest::new(&query, "agent-releases".to_owned())?;
    let releases = state
        .releases
        .list(page.after_name()?, page.fetch())
        .await?;
    Ok(axum::Json(page.page(
        releases,
        |r| Position::After(r.version.clone()),
        |r| r,
    )))
}

/// The key agent releases are signed with (Ed25519): agents pin it at
/// enrollment (`releaseSigningKey`).
#[utoipa::path(get, path = "/agent-releases/signing-key", tag = "agent-releases",
    responses((status = 200, body = ReleaseSigningKey), (status = 401, body = ErrorBody)))]
async fn signing_key(State(state): State<Arc<AppState>>) -> axum::Json<ReleaseSigningKey> {
    axum::Json(ReleaseSigningKey {
        signing_key: state.releases.keys().public_key().to_owned(),
    })
}

/// The release signing key for agents that have none pinned (review M5):
/// from tetherd's key file, never from the database the specs are
/// rendered from, so whoever can write the database cannot make agents
/// pin a key of their own. No login: it is a public key, and what makes
/// it trustworthy is the TLS the agent checks against the CA it pinned.
#[utoipa::path(get, path = "/device/release-signing-key", tag = "agent-releases",
    security(()),
    responses((status = 200, body = ReleaseSigningKey)))]
async fn device_signing_key(State(state): State<Arc<AppState>>) -> axum::Json<ReleaseSigningKey> {
    signing_key(State(state)).await
}

/// A release: each platform's SHA-256, size and signature.
#[utoipa::path(get, path = "/agent-releases/{version}", tag = "agent-releases",
    params(("version" = String, Path, description = "Release version")),
    responses((status = 200, body = PublishedRelease), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn get_release(
    State(state): State<Arc<AppState>>,
    Path(version): Path<String>,
) -> Result<axum::Json<PublishedRelease>, ApiError> {
    Ok(axum::Json(state.releases.get(&version).await?))
}

/// Deletes every platform of a release that no deployment names and no
/// device's spec still carries (409 naming those that do).
#[utoipa::path(delete, path = "/agent-releases/{version}", tag = "agent-releases",
    params(("version" = String, Path, description = "Release version")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "A deployment names it, or a device's spec still carries it", body = ErrorBody)))]
async fn delete_release(
    State(state): State<Arc<AppState>>,
    Path(version): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.releases.delete(&version).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A device downloads its binary of a release, with the download token
/// its spec's `agent` section carries as `Authorization: Bearer TOKEN`
/// (not a login). `Range: bytes=N-` or `bytes=N-M` resumes an interrupted
/// download (206).
#[utoipa::path(get, path = "/agent-releases/{version}/{platform}/binary", tag = "agent-releases",
    security(()),
    params(("version" = String, Path, description = "Release version"),
        ("platform" = String, Path, description = "Platform"),
        ("Range" = Option<String>, Header, description = "`bytes=N-` or `bytes=N-M`")),
    responses((status = 200, description = "The whole binary", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked for, with Content-Range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "No token, a token for another device or release, or a deleted device", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 416, description = "The range starts past the end", body = ErrorBody),
        (status = 429, description = "Too many downloads of this device at once", body = ErrorBody)))]
async fn download(
    State(state): State<Arc<AppState>>,
    Path((version, platform)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "send the release's download token as Authorization: Bearer TOKEN",
            )
        })?;
    let download = state
        .releases
        .open_download(token.trim(), &version, &platform)
        .await?;
    let release = download.release().clone();
    let size = release.size;
    let range = headers
        .get(RANGE)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_range);
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, size - 1),
        Some((start, _)) if start >= size => {
            let mut refused = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the binary has {size} bytes; the range starts at byte {start}"),
            )
            .into_response();
            refused.headers_mut().insert(
                CONTENT_RANGE,
                format!("bytes */{size}").parse().expect("a valid header"),
            );
            return Ok(refused);
        }
        Some((start, end)) => (
            StatusCode::PARTIAL_CONTENT,
            start,
            end.map_or(size - 1, |end| end.min(size - 1)),
        ),
    };
    let body = Body::from_stream(download.bytes(start, end).map_ok(Bytes::from));
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        "application/octet-stream".parse().expect("a valid header"),
    );
    headers.insert(ACCEPT_RANGES, "bytes".parse().expect("a valid header"));
    headers.insert(CONTENT_LENGTH, (end - start + 1).into());
    if let Ok(etag) = format!("\"{}\"", release.sha256).parse() {
        headers.insert(ETAG, etag);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(range) = format!("bytes {start}-{end}/{size}").parse()
    {
        headers.insert(CONTENT_RANGE, range);
    }
    Ok(response)
}

/// `bytes=N-` or `bytes=N-M` (M ≥ N): the first byte and the last, if
/// given. Anything else (several ranges, a suffix) is ignored, and the
/// whole binary is sent, as RFC 9110 allows.
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (start, end) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    let start = start.trim().parse::<u64>().ok()?;
    let end = match end.trim() {
        "" => None,
        end => Some(end.parse::<u64>().ok().filter(|end| *end >= start)?),
    };
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_byte_ranges_are_read_and_others_ignored() {
        assert_eq!(parse_range("bytes=10-"), Some((10, None)));
        assert_eq!(parse_range("bytes=0-99"), Some((0, Some(99))));
        assert_eq!(parse_range("bytes=5-4"), None);
        assert_eq!(parse_range("bytes=-100"), None);
        assert_eq!(parse_range("bytes=0-1,5-6"), None);
        assert_eq!(parse_range("items=0-1"), None);
    }
}
