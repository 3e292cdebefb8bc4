//! Extractors whose rejections are [`ApiError`]s, so a malformed body or
//! query gets the same JSON error shape as everything else.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tether_proto::DeviceId;

use super::error::ApiError;

pub struct ApiJson<T>(pub T);

/// How long a request's body may take to arrive, whole; the listener sets it
/// (`api.header_read_timeout_seconds`). hyper times only the headers, so
/// without it a body trickled a byte at a time would hold its connection.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Duration);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let deadline = request.extensions().get::<BodyDeadline>().copied();
        // Read as a value first: serde would also build a struct from a JSON
        // array (`[]` as a patch with no fields), and every body is an object.
        let read = axum::Json::<serde_json::Value>::from_request(request, state);
        let axum::Json(value) = match deadline {
            Some(BodyDeadline(limit)) => {
                tokio::time::timeout(limit, read).await.map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!(
                            "the request body did not arrive within {} s; send it at once",
                            limit.as_secs()
                        ),
                    )
                })??
            }
            None => read.await?,
        };
        if !value.is_object() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "invalid request body: expected a JSON object",
            ));
        }
        serde_path_to_error::deserialize(value)
            .map(Self)
            .map_err(|error| {
                let path = error.path().to_string();
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("invalid request body: {path}: {}", error.inner()),
                )
            })
    }
}

pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// A device name from the path; a name that cannot exist is a 404, like any
/// other missing device.
pub fn device_id(name: &str) -> Result<DeviceId, ApiError> {
    DeviceId::new(name).map_err(|_| ApiError::not_found(format!("device {name} not found")))
}

/// The scheme-less `host[:port]` the client used, from the Host header.
pub struct ClientHost(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientHost {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .ok_or_else(|| ApiError::bad_request("the request has no Host header"))
            .and_then(|host| {
                if is_authority(host) {
                    Ok(Self(host.to_owned()))
                } else {
                    Err(ApiError::bad_request(format!(
                        "the Host header {host:?} is not host[:port] (letters, digits, '.', '-', '_', an [IPv6] address)"
                    )))
                }
            })
    }
}

/// Whether `host` is a plain `host[:port]`: it is written into the
/// commands tetherd prints for a shell and into the join manifest, so a
/// Host header such as `h;rm -rf ~` must not get there.
fn is_authority(host: &str) -> bool {
    !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// `host:port` → `host`, keeping IPv6 brackets: `[::1]:8443` → `[::1]`.
pub fn host_without_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            host
        }
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_host_and_port_is_a_client_host() {
        for fine in [
            "127.0.0.1:8443",
            "tether.example",
            "[::1]:8443",
            "tether_server:8443",
        ] {
            assert!(is_authority(fine), "{fine}");
        }
        for bad in [
            "",
            "h;touch /tmp/p #",
            "h$(id)",
            "h`id`",
            "h|sh",
            "user@h",
            "h/x",
            "h x",
            "h'",
        ] {
            assert!(!is_authority(bad), "{bad}");
        }
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(host_without_port("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(host_without_port("edge.example"), "edge.example");
        assert_eq!(host_without_port("[::1]:8443"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}
