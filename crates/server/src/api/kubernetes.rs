//! Kubernetes through tether (ADR 0022): `ANY
//! /devices/{name}/kubernetes/{*path}` is a reverse proxy to the device's
//! API server, one `kube` tunnel per request. tetherd speaks HTTP/1.1 to
//! the agent over the tunnel (hyper's client connection on the tunnel's
//! byte stream), so answers stream with backpressure (`logs -f`,
//! watches) and a switch of protocols (`exec`, `port-forward`) is spliced
//! both ways. The rules are [`crate::kube_proxy`].

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tether_proto::tunnel::Kind;
use utoipa_axum::router::OpenApiRouter;

use super::AppState;
use super::error::ApiError;
use super::extract::{ClientHost, device_id};
use super::tunnels::{self, TunnelOutcome, dialed_back, halves};
use crate::auth::Principal;
use crate::kube_proxy;
use crate::tunnels::stream::TunnelStream;

/// Not in the OpenAPI document: the paths below are the Kubernetes API's.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .route("/devices/{name}/kubernetes", axum::routing::any(proxy))
        .route(
            "/devices/{name}/kubernetes/{*path}",
            axum::routing::any(proxy),
        )
}

/// An error for a request to `path` as kubectl prints it (see
/// [`tether_proto::kubeconfig::error_body`]).
fn kube_error(path: &str, status: StatusCode, reason: &str, message: &str) -> Response {
    let (content_type, body) =
        tether_proto::kubeconfig::error_body(path, status.as_u16(), reason, message);
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn api_error(path: &str, error: &ApiError) -> Response {
    let reason = match error.status {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::GATEWAY_TIMEOUT => "Timeout",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalError",
    };
    kube_error(path, error.status, reason, &error.message)
}

async fn proxy(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ClientHost(host): ClientHost,
    mut request: Request,
) -> Response {
    // Inside the nested router the path is `/devices/{name}/kubernetes…`,
    // still percent-encoded as the client sent it: passed on as it is.
    let path = request.uri().path().to_owned();
    let Some((name, rest)) = path
        .strip_prefix("/devices/")
        .and_then(|tail| tail.split_once("/kubernetes"))
    else {
        return kube_error(&path, StatusCode::NOT_FOUND, "NotFound", "no such route");
    };
    let rest = if rest.is_empty() { "/" } else { rest };
    let target = match request.uri().query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    let what = format!("{} {}", request.method(), target);
    let started = chrono::Utc::now();
    let device = match device_id(name) {
        Ok(device) => device,
        Err(error) => return api_error(&target, &error),
    };
    let refused = |error: ApiError| {
        let state = state.clone();
        let principal = principal.username.clone();
        let device = device.clone();
        let what = what.clone();
        let target = target.clone();
        async move {
            state
                .audit_tunnel(
                    &principal,
                    &device,
                    Kind::Kube,
                    &what,
                    started,
                    TunnelOutcome::Refused(&error),
                )
                .await;
            api_error(&target, &error)
        }
    };
    let checked = match state.registry.get_with_spec(&device).await {
        Ok(record) => kube_proxy::check(&record).map_err(|refusal| {
            let (status, _) = refusal.status();
            ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                "kubernetes_refused",
                refusal.to_string(),
            )
        }),
        Err(error) => Err(error.into()),
    };
    if let Err(error) = checked {
        return refused(error).await;
    }
    let socket = match dialed_back(
        &state,
        &device,
        &principal.username,
        &host,
        tunnels::Request::kube(),
        tunnels::ShellLogin::default(),
    )
    .await
    {
        Ok(socket) => socket,
        Err(error) => return refused(error).await,
    };
    let (receiver, sender) = halves(socket);
    let (stream, finished) = TunnelStream::new(receiver, sender);
    {
        let state = state.clone();
        let user = principal.username.clone();
        let device = device.clone();
        let what = what.clone();
        tokio::spawn(async move {
            let traffic = finished.await.unwrap_or_default();
            tracing::info!(%user, %device, request = %what, to_device = traffic.to_device,
                from_device = traffic.from_device, "kubernetes request proxied");
            state
                .audit_tunnel(
                    &user,
                    &device,
                    Kind::Kube,
                    &what,
                    started,
                    TunnelOutcome::Carried(traffic),
                )
                .await;
        });
    }
    let (mut to_device, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(error) => return bad_gateway(&target, &device, &error),
        };
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(error = %error, "the tunnel's HTTP connection ended with an error");
        }
    });
    let switching = kube_proxy::is_upgrade(request.headers());
    let client_upgrade = switching.then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let mut outgoing = axum::http::Request::builder()
        .method(parts.method)
        .uri(&target)
        .body(body)
        .unwrap_or_default();
    *outgoing.headers_mut() = kube_proxy::forwarded_headers(&parts.headers);
    let mut answer = match to_device.send_request(outgoing).await {
        Ok(answer) => answer,
        Err(error) => return bad_gateway(&target, &device, &error),
    };
    let switched = answer.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switched && let Some(client_upgrade) = client_upgrade {
        let device_upgrade = hyper::upgrade::on(&mut answer);
        tokio::spawn(async move {
            let (Ok(client), Ok(device)) = tokio::join!(client_upgrade, device_upgrade) else {
                return;
            };
            let _ =
                tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(device))
                    .await;
        });
    }
    let (mut parts, body) = answer.into_parts();
    parts.headers = kube_proxy::returned_headers(&parts.headers, switched);
    Response::from_parts(parts, Body::new(body))
}

fn bad_gateway(path: &str, device: &tether_proto::DeviceId, error: &hyper::Error) -> Response {
    kube_error(
        path,
        StatusCode::BAD_GATEWAY,
        "InternalError",
        &format!("the tunnel to device {device} failed before its API server answered: {error}"),
    )
}
