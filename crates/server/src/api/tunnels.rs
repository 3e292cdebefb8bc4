//! Tunnels (ADR 0021): the client's WebSocket
//! (`GET /devices/{name}/tunnel`) and the device's dial-back
//! (`GET /tunnels/{id}`), mapped onto [`crate::tunnels`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tether_proto::api::{ErrorBody, RequestAction};
use tether_proto::tunnel::{self, Kind, OpenTunnel};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ClientHost, device_id};
use crate::auth::Principal;
use crate::tunnels::{Message, Traffic, splice};

/// A WebSocket message may carry a frame's payload and its channel byte,
/// no more.
const MAX_MESSAGE: usize = tunnel::MAX_PAYLOAD + 1;

pub fn client_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(open_tunnel))
}

pub fn device_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(dial_tunnel))
}

/// What the client asked for, from the query.
fn parse_query(query: Option<&str>) -> Result<(Kind, Vec<String>, Option<String>), ApiError> {
    let mut kind = None;
    let mut command = Vec::new();
    let mut target = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "kind" => {
                kind = Some(
                    serde_json::from_value::<Kind>(Value::String(value.to_string())).map_err(
                        |_| {
                            ApiError::bad_request(format!(
                                "kind {value:?} is not exec, forward or ssh"
                            ))
                        },
                    )?,
                );
            }
            "command" => command.push(value.into_owned()),
            "target" => target = Some(value.into_owned()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    let kind =
        kind.ok_or_else(|| ApiError::bad_request("kind is required: exec, forward or ssh"))?;
    match kind {
        Kind::Exec if command.is_empty() => Err(ApiError::bad_request(
            "exec needs a command: one command=ARG per argument",
        )),
        Kind::Forward if target.is_none() => {
            Err(ApiError::bad_request("forward needs target=HOST:PORT"))
        }
        _ => Ok((kind, command, target)),
    }
}

/// Opens a tunnel to the device and upgrades to a WebSocket carrying it
/// (ADR 0021 frames). Answers only once the device has dialed back: a
/// device that is unknown, does not accept `open-tunnel`, refuses or does
/// not dial within 30 s is an HTTP error, not a WebSocket.
#[utoipa::path(get, path = "/devices/{name}/tunnel", tag = "tunnels",
    params(("name" = String, Path, description = "Device name"),
        ("kind" = String, Query, description = "exec, forward or ssh (the agent's embedded SSH server, ADR 0023)"),
        ("command" = Vec<String>, Query, description = "exec: the argv, one parameter per argument"),
        ("target" = Option<String>, Query, description = "forward: HOST:PORT as the device resolves it")),
    responses((status = 101, description = "The tunnel, as a WebSocket"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 426, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 504, body = ErrorBody)))]
async fn open_tunnel(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ClientHost(host): ClientHost,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(not_a_websocket)?;
    let device = device_id(&name)?;
    let (kind, command, target) = parse_query(query.as_deref())?;
    let what = match kind {
        Kind::Exec => command.join(" "),
        Kind::Forward => target.clone().unwrap_or_default(),
        Kind::Ssh => "management shell".to_owned(),
    };
    let started = chrono::Utc::now();
    let opening = async {
        let login = match kind {
            Kind::Ssh => shell_login(&state, &principal.username, &device).await?,
            Kind::Exec | Kind::Forward => ShellLogin::default(),
        };
        dialed_back(&state, &device, &host, kind, command, target, login).await
    };
    let device_socket = match opening.await {
        Ok(socket) => socket,
        Err(error) => {
            // A tunnel refused (unknown device, action disabled, the
            // device's refusal, no dial-back) is recorded as one that ran.
            let outcome = TunnelOutcome::Refused(&error);
            state
                .audit_tunnel(&principal.username, &device, kind, &what, started, outcome)
                .await;
            return Err(error);
        }
    };
    Ok(upgrade
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |client| async move {
            let traffic = splice(halves(client), halves(device_socket)).await;
            tracing::info!(user = %principal.username, %device, kind = kind.as_str(), target = %what,
                to_device = traffic.to_device, from_device = traffic.from_device, "tunnel closed");
            let outcome = TunnelOutcome::Carried(traffic);
            state
                .audit_tunnel(&principal.username, &device, kind, &what, started, outcome)
                .await;
        }))
}

/// Who may log in to the embedded SSH server through an `ssh` tunnel
/// (ADR 0023).
#[derive(Default)]
struct ShellLogin {
    /// The requesting user's registered keys, as they are now: a key
    /// removed stops working at the next tunnel.
    authorized_keys: Vec<String>,
    /// The device's shell password hash, when password login is on.
    password_hash: Option<String>,
}

async fn shell_login(
    state: &AppState,
    username: &str,
    device: &tether_proto::DeviceId,
) -> Result<ShellLogin, ApiError> {
    let authorized_keys: Vec<String> = state
        .store
        .list_ssh_keys(username)
        .await?
        .into_iter()
        .map(|key| key.public_key)
        .collect();
    let password_hash = state.store.shell_password(device).await?;
    if authorized_keys.is_empty() && password_hash.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_shell_login",
            format!(
                "nobody could log in to {device}'s management shell: register your SSH public key \
                 (`tether keys add ~/.ssh/id_ed25519.pub`) or turn password login on \
                 (`tether devices shell-password {device}`)"
            ),
        ));
    }
    Ok(ShellLogin {
        authorized_keys,
        password_hash,
    })
}

/// Opens the tunnel, asks the device to dial it and waits for its socket.
async fn dialed_back(
    state: &AppState,
    device: &tether_proto::DeviceId,
    host: &str,
    kind: Kind,
    command: Vec<String>,
    target: Option<String>,
    login: ShellLogin,
) -> Result<WebSocket, ApiError> {
    let opened = state.tunnels.open(device, Instant::now());
    let input = OpenTunnel {
        url: format!("wss://{host}/api/v1/tunnels/{}", opened.id),
        token: opened.token,
        kind,
        command,
        target,
        authorized_keys: login.authorized_keys,
        password_hash: login.password_hash,
    };
    let action = state
        .actions
        .submit(
            device,
            RequestAction {
                action: tunnel::OPEN_TUNNEL.to_owned(),
                input: serde_json::to_value(&input).unwrap_or_default(),
                ttl_seconds: Some(tunnel::DIAL_SECONDS),
                timeout_seconds: Some(tunnel::DIAL_SECONDS),
            },
        )
        .await?;
    let refused = refusal(state, &action.correlation_id);
    tokio::select! {
        dialed = opened.dialed => dialed.map_err(|_| ApiError::new(StatusCode::BAD_GATEWAY, "tunnel_failed", "the tunnel was dropped before the device dialed")),
        error = refused => Err(error),
        () = tokio::time::sleep(Duration::from_secs(tunnel::DIAL_SECONDS)) => {
            Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "tunnel_timeout", format!(
                "device {device} did not dial the tunnel back within {} s: is it online and can it reach {host}?",
                tunnel::DIAL_SECONDS)))
        }
    }
}

/// Waits for the `open-tunnel` action to end in anything but success: the
/// device's refusal, as an error. A successful answer waits forever (the
/// dial arrives instead).
async fn refusal(state: &AppState, correlation_id: &str) -> ApiError {
    loop {
        match state
            .actions
            .wait(correlation_id, Duration::from_secs(tunnel::DIAL_SECONDS))
            .await
        {
            Ok(action) if action.state.is_terminal() => {
                let status = action.status_code.unwrap_or(502);
                if (200..300).contains(&status) {
                    return std::future::pending().await;
                }
                let status = StatusCode::from_u16(status)
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                return ApiError::new(
                    status,
                    "tunnel_refused",
                    format!(
                        "the device refused the tunnel ({}): {}",
                        action.state.as_str(),
                        action.status_message.unwrap_or_default()
                    ),
                );
            }
            Ok(_) => {}
            Err(error) => return error.into(),
        }
    }
}

/// The device dials its tunnel back with the one-time token as a bearer
/// token.
#[utoipa::path(get, path = "/tunnels/{id}", tag = "tunnels", security(()),
    params(("id" = String, Path, description = "The tunnel id from `open-tunnel`")),
    responses((status = 101, description = "The device's side of the tunnel"),
        (status = 401, body = ErrorBody), (status = 426, body = ErrorBody)))]
async fn dial_tunnel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(not_a_websocket)?;
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let (device, dialed) = state
        .tunnels
        .dial(&id, token.trim(), Instant::now())
        .map_err(|error| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", error.to_string())
        })?;
    tracing::debug!(%device, tunnel = %id, "device dialed its tunnel");
    Ok(upgrade
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            // The client gave up meanwhile: the socket closes as it drops.
            let _ = dialed.send(socket);
        }))
}

/// A plain request where a WebSocket was expected, as the one error shape.
fn not_a_websocket(rejection: WebSocketUpgradeRejection) -> ApiError {
    ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "upgrade_required",
        format!("a tunnel is a WebSocket (GET with Upgrade: websocket): {rejection}"),
    )
}

/// A WebSocket as the splice's halves.
fn halves(
    socket: WebSocket,
) -> (
    impl futures::Stream<Item = Result<Message, axum::Error>> + Unpin,
    impl futures::Sink<Message> + Unpin,
) {
    let (tx, rx) = socket.split();
    let rx = rx.map(|message| {
        message.map(|message| match message {
            ws::Message::Binary(data) => Message::Data(data.into()),
            ws::Message::Close(_) => Message::Close,
            _ => Message::Other,
        })
    });
    let tx = tx.with(|message: Message| {
        std::future::ready(Ok::<_, axum::Error>(match message {
            Message::Data(data) => ws::Message::Binary(data.into()),
            Message::Close | Message::Other => ws::Message::Close(None),
        }))
    });
    (rx, Box::pin(tx))
}

/// How a tunnel ended, for its audit record.
enum TunnelOutcome<'a> {
    /// It was spliced and carried this much.
    Carried(Traffic),
    /// It never opened: the error the client was given.
    Refused(&'a ApiError),
}

impl AppState {
    /// Records a tunnel that ended or was refused; like every audit
    /// record, a failure to record is logged, not fatal.
    async fn audit_tunnel(
        &self,
        actor: &str,
        device: &tether_proto::DeviceId,
        kind: Kind,
        target: &str,
        started: chrono::DateTime<chrono::Utc>,
        outcome: TunnelOutcome<'_>,
    ) {
        let mut detail = serde_json::json!({
            "device": device, "kind": kind.as_str(), "target": target,
            "startedAt": started, "endedAt": chrono::Utc::now(),
        });
        let status = match outcome {
            TunnelOutcome::Carried(traffic) => {
                detail["bytesToDevice"] = traffic.to_device.into();
                detail["bytesFromDevice"] = traffic.from_device.into();
                101
            }
            TunnelOutcome::Refused(error) => {
                detail["error"] = error.message.clone().into();
                error.status.as_u16()
            }
        };
        self.audit_with(
            actor,
            "TUNNEL",
            &format!("/api/v1/devices/{device}/tunnel"),
            status,
            Some(detail),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_the_kind_and_what_it_runs_or_reaches() {
        let (kind, command, target) =
            parse_query(Some("kind=exec&command=sh&command=-c&command=echo%20hi")).expect("exec");
        assert_eq!(kind, Kind::Exec);
        assert_eq!(command, ["sh", "-c", "echo hi"]);
        assert_eq!(target, None);
        let (kind, _, target) = parse_query(Some("kind=forward&target=10.0.0.5:80")).expect("fwd");
        assert_eq!(
            (kind, target.as_deref()),
            (Kind::Forward, Some("10.0.0.5:80"))
        );
        let (kind, command, target) = parse_query(Some("kind=ssh")).expect("ssh");
        assert_eq!((kind, command.len(), target), (Kind::Ssh, 0, None));
        for (bad, says) in [
            (None, "kind is required"),
            (Some("kind=shell"), "not exec, forward or ssh"),
            (Some("kind=exec"), "needs a command"),
            (Some("kind=forward"), "needs target"),
            (
                Some("kind=exec&command=ls&color=1"),
                "unknown query parameter",
            ),
        ] {
            let error = parse_query(bad).expect_err("refused");
            assert!(error.message.contains(says), "{bad:?}: {}", error.message);
        }
    }
}
