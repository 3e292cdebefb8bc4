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
use tether_proto::tunnel::{self, Kind, OpenTunnel, Terminal};
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

/// The client's tunnel route, as the router matches it.
pub(super) const CLIENT_ROUTE: &str = "/api/v1/devices/{name}/tunnel";
/// The subprotocol tetherd answers a WebSocket client that asks for one:
/// the frames below, as `tether ssh` speaks them without asking.
const TUNNEL_PROTOCOL: &str = "tether.tunnel.v1";
/// A browser's WebSocket cannot send `Authorization`, so the console names
/// its bearer token as a subprotocol, `tether.bearer.<token>`, beside
/// [`TUNNEL_PROTOCOL`] (as Kubernetes' `base64url.bearer.authorization.k8s.io.`);
/// it is never echoed back (ADR 0034).
const BEARER_PROTOCOL_PREFIX: &str = "tether.bearer.";

/// The bearer token a WebSocket client named in `Sec-WebSocket-Protocol`.
pub(super) fn bearer_subprotocol(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|protocol| protocol.trim().strip_prefix(BEARER_PROTOCOL_PREFIX))
}

pub fn client_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(open_tunnel))
}

pub fn device_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(dial_tunnel))
}

/// What the client asked for, from the query.
#[derive(Debug, PartialEq)]
pub(super) struct Request {
    kind: Kind,
    command: Vec<String>,
    target: Option<String>,
    terminal: Option<Terminal>,
    path: Option<String>,
    size: Option<u64>,
    mode: Option<u32>,
}

impl Request {
    /// One request of the Kubernetes proxy (ADR 0022).
    pub(super) fn kube() -> Self {
        Request {
            kind: Kind::Kube,
            command: Vec::new(),
            target: None,
            terminal: None,
            path: None,
            size: None,
            mode: None,
        }
    }

    /// What the tunnel runs or reaches, for the log and the audit record.
    fn what(&self) -> String {
        match self.kind {
            Kind::Exec => self.command.join(" "),
            Kind::Forward => self.target.clone().unwrap_or_default(),
            Kind::Shell if self.command.is_empty() => "login shell".to_owned(),
            Kind::Shell => self.command.join(" "),
            Kind::Upload | Kind::Download => self.path.clone().unwrap_or_default(),
            Kind::Kube => String::new(),
            Kind::Ssh => "management shell".to_owned(),
        }
    }
}

const KINDS: &str = "exec, forward, shell, upload, download or ssh";

fn parse_query(query: Option<&str>) -> Result<Request, ApiError> {
    let mut kind = None;
    let mut command = Vec::new();
    let (mut target, mut path, mut size, mut mode) = (None, None, None, None);
    let (mut term, mut cols, mut rows) = (None, None, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "kind" => {
                kind = Some(
                    serde_json::from_value::<Kind>(Value::String(value.to_string())).map_err(
                        |_| ApiError::bad_request(format!("kind {value:?} is not {KINDS}")),
                    )?,
                );
            }
            "command" => command.push(value.into_owned()),
            "target" => target = Some(value.into_owned()),
            "term" => term = Some(value.into_owned()),
            "cols" => cols = Some(terminal_side("cols", &value)?),
            "rows" => rows = Some(terminal_side("rows", &value)?),
            "path" => path = Some(value.into_owned()),
            "size" => {
                size = Some(value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("size {value:?} is not a number of bytes"))
                })?);
            }
            "mode" => {
                let bits = u32::from_str_radix(&value, 8)
                    .ok()
                    // No setuid, setgid or sticky bits from afar.
                    .filter(|bits| *bits <= 0o777)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "mode {value:?} is not octal permission bits from 0 to 777 such as 644"
                        ))
                    })?;
                mode = Some(bits);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )));
            }
        }
    }
    let kind = kind.ok_or_else(|| ApiError::bad_request(format!("kind is required: {KINDS}")))?;
    let terminal = match (kind, term, cols, rows) {
        (Kind::Shell, Some(term), Some(cols), Some(rows)) => Some(
            Terminal::new(&term, cols.into(), rows.into())
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
        (Kind::Shell, ..) => {
            return Err(ApiError::bad_request(
                "shell needs its terminal: term=TYPE&cols=N&rows=N (1 to 1000 each)",
            ));
        }
        (_, None, None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "term, cols and rows are for kind=shell only",
            ));
        }
    };
    let absolute = path.as_deref().is_some_and(|path| path.starts_with('/'));
    match kind {
        Kind::Exec if command.is_empty() => Err(ApiError::bad_request(
            "exec needs a command: one command=ARG per argument",
        )),
        Kind::Forward if target.is_none() => {
            Err(ApiError::bad_request("forward needs target=HOST:PORT"))
        }
        Kind::Upload | Kind::Download if !absolute => Err(ApiError::bad_request(format!(
            "{} needs path=, an absolute path on the device",
            kind.as_str()
        ))),
        Kind::Upload if size.is_none() => Err(ApiError::bad_request(
            "upload needs size=, the file's length in bytes",
        )),
        // Only the Kubernetes proxy opens these, after its own checks
        // (ADR 0022): a raw one would skip them.
        Kind::Kube => Err(ApiError::bad_request(
            "kube tunnels are opened by /devices/{name}/kubernetes (`tether kubeconfig`), not here",
        )),
        _ => Ok(Request {
            kind,
            command,
            target,
            terminal,
            path,
            size,
            mode,
        }),
    }
}

fn terminal_side(name: &'static str, value: &str) -> Result<u16, ApiError> {
    let parsed = value.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "{name} {value:?} is not a number: a terminal has 1 to {} {name}",
            tunnel::MAX_TERMINAL_SIDE
        ))
    })?;
    tunnel::side(name, parsed).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Opens a tunnel to the device and upgrades to a WebSocket carrying it
/// (ADR 0021 frames). Answers only once the device has dialed back: a
/// device that is unknown, does not accept `open-tunnel`, refuses or does
/// not dial within 30 s is an HTTP error, not a WebSocket. A browser,
/// whose WebSocket cannot send `Authorization`, may name its token as the
/// subprotocol `tether.bearer.<token>` beside `tether.tunnel.v1`, which is
/// answered (ADR 0034).
#[utoipa::path(get, path = "/devices/{name}/tunnel", tag = "tunnels",
    params(("name" = String, Path, description = "Device name"),
        ("kind" = String, Query, description = "exec, forward, shell, upload, download or ssh (the agent's embedded SSH server, ADR 0023)"),
        ("command" = Vec<String>, Query, description = "exec: the argv, one parameter per argument; shell: the same, or none for the login shell"),
        ("target" = Option<String>, Query, description = "forward: HOST:PORT as the device resolves it"),
        ("term" = Option<String>, Query, description = "shell: the terminal type (TERM)"),
        ("cols" = Option<u16>, Query, description = "shell: the terminal's columns, 1 to 1000"),
        ("rows" = Option<u16>, Query, description = "shell: the terminal's rows, 1 to 1000"),
        ("path" = Option<String>, Query, description = "upload, download: the file on the device, an absolute path"),
        ("size" = Option<u64>, Query, description = "upload: the file's length in bytes"),
        ("mode" = Option<String>, Query, description = "upload: permission bits in octal, e.g. 644")),
    responses((status = 101, description = "The tunnel, as a WebSocket"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 426, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 504, body = ErrorBody)))]
async fn open_tunnel(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ClientHost(host): ClientHost,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // A bad query is named even on a plain GET.
    let device = device_id(&name)?;
    let request = parse_query(query.as_deref())?;
    let upgrade = upgrade.map_err(not_a_websocket)?;
    let (kind, what) = (request.kind, request.what());
    let started = chrono::Utc::now();
    let user = &principal.username;
    let opening = async {
        let login = match kind {
            Kind::Ssh => shell_login(&state, user, &device).await?,
            _ => ShellLogin::default(),
        };
        dialed_back(&state, &device, user, &host, request, login).await
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
        .protocols([TUNNEL_PROTOCOL])
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |client| async move {
            let config = state.tunnels.config();
            let traffic = splice(halves(client), halves(device_socket), config).await;
            tracing::info!(user = %principal.username, %device, kind = kind.as_str(), target = %what,
                to_device = traffic.to_device, from_device = traffic.from_device, idle = traffic.idle,
                "tunnel closed");
            let outcome = TunnelOutcome::Carried(traffic);
            state
                .audit_tunnel(&principal.username, &device, kind, &what, started, outcome)
                .await;
        }))
}

/// Who may log in to the embedded SSH server through an `ssh` tunnel
/// (ADR 0023).
#[derive(Default)]
pub(super) struct ShellLogin {
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
pub(super) async fn dialed_back(
    state: &AppState,
    device: &tether_proto::DeviceId,
    user: &str,
    host: &str,
    request: Request,
    login: ShellLogin,
) -> Result<WebSocket, ApiError> {
    let opened = state
        .tunnels
        .open(device, user, Instant::now())
        .map_err(|error| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_tunnels",
                error.to_string(),
            )
        })?;
    let input = OpenTunnel {
        url: dial_url(state.advertise_api_url.as_deref(), host, &opened.id),
        token: opened.token,
        kind: request.kind,
        command: request.command,
        target: request.target,
        terminal: request.terminal,
        path: request.path,
        size: request.size,
        mode: request.mode,
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

/// Where the device dials tunnel `id`: this replica as configured for
/// devices (`cluster.advertise_api_url`), else as the client reached it.
fn dial_url(advertised: Option<&str>, client_host: &str, id: &str) -> String {
    let base = match advertised {
        Some(url) => url.trim_end_matches('/').replacen("https://", "wss://", 1),
        None => format!("wss://{client_host}"),
    };
    format!("{base}/api/v1/tunnels/{id}")
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
pub(super) fn halves(
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
            Message::Ping => ws::Message::Ping(Default::default()),
            Message::Close | Message::Other => ws::Message::Close(None),
        }))
    });
    (rx, Box::pin(tx))
}

/// How a tunnel ended, for its audit record.
pub(super) enum TunnelOutcome<'a> {
    /// It was spliced and carried this much.
    Carried(Traffic),
    /// It never opened: the error the client was given.
    Refused(&'a ApiError),
}

impl AppState {
    /// Records a tunnel that ended or was refused; like every audit
    /// record, a failure to record is logged, not fatal.
    pub(super) async fn audit_tunnel(
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
                if traffic.idle {
                    detail["endedIdle"] = true.into();
                }
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
            &match kind {
                Kind::Kube => format!("/api/v1/devices/{device}/kubernetes"),
                _ => format!("/api/v1/devices/{device}/tunnel"),
            },
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
    fn a_bearer_token_is_read_from_its_subprotocol_only() {
        let with = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(
                    axum::http::header::SEC_WEBSOCKET_PROTOCOL,
                    value.parse().expect("a header value"),
                );
            }
            headers
        };
        let both = with(&["tether.tunnel.v1, tether.bearer.abc123"]);
        assert_eq!(bearer_subprotocol(&both), Some("abc123"));
        let separate = with(&["tether.tunnel.v1", "tether.bearer.tether_sa_k"]);
        assert_eq!(bearer_subprotocol(&separate), Some("tether_sa_k"));
        assert_eq!(bearer_subprotocol(&with(&["tether.tunnel.v1"])), None);
        assert_eq!(bearer_subprotocol(&with(&[])), None);
        assert_eq!(bearer_subprotocol(&with(&["bearer.abc"])), None);
    }

    #[test]
    fn devices_dial_the_advertised_address_else_the_clients() {
        assert_eq!(
            dial_url(None, "tether.example:8443", "t1"),
            "wss://tether.example:8443/api/v1/tunnels/t1"
        );
        assert_eq!(
            dial_url(
                Some("https://node1.internal:8443/"),
                "tether.example:8443",
                "t1"
            ),
            "wss://node1.internal:8443/api/v1/tunnels/t1"
        );
    }

    #[test]
    fn the_query_names_the_kind_and_what_it_runs_or_reaches() {
        let request =
            parse_query(Some("kind=exec&command=sh&command=-c&command=echo%20hi")).expect("exec");
        assert_eq!(request.kind, Kind::Exec);
        assert_eq!(request.command, ["sh", "-c", "echo hi"]);
        assert_eq!(request.target, None);
        let request = parse_query(Some("kind=forward&target=10.0.0.5:80")).expect("fwd");
        assert_eq!(
            (request.kind, request.target.as_deref()),
            (Kind::Forward, Some("10.0.0.5:80"))
        );
        let shell = parse_query(Some("kind=shell&term=xterm-256color&cols=120&rows=40"))
            .expect("a login shell");
        assert_eq!(
            shell,
            Request {
                kind: Kind::Shell,
                command: Vec::new(),
                target: None,
                terminal: Some(Terminal::new("xterm-256color", 120, 40).expect("valid")),
                path: None,
                size: None,
                mode: None,
            }
        );
        assert_eq!(shell.what(), "login shell");
        let top = parse_query(Some("kind=shell&term=dumb&cols=80&rows=24&command=top"))
            .expect("a command in a terminal");
        assert_eq!(top.what(), "top");
        let upload =
            parse_query(Some("kind=upload&path=/etc/app.conf&size=12&mode=640")).expect("upload");
        assert_eq!(
            (upload.path.as_deref(), upload.size, upload.mode),
            (Some("/etc/app.conf"), Some(12), Some(0o640))
        );
        assert_eq!(upload.what(), "/etc/app.conf");
        let ssh = parse_query(Some("kind=ssh")).expect("ssh");
        assert_eq!((ssh.kind, ssh.command.len()), (Kind::Ssh, 0));
        for (bad, says) in [
            (None, "kind is required"),
            (Some("kind=shel"), "not exec, forward, shell"),
            (Some("kind=exec"), "needs a command"),
            (Some("kind=forward"), "needs target"),
            (Some("kind=kube"), "tether kubeconfig"),
            (
                Some("kind=exec&command=ls&color=1"),
                "unknown query parameter",
            ),
            (Some("kind=download&path=etc/x"), "an absolute path"),
            (Some("kind=upload&path=/x"), "needs size="),
            (
                Some("kind=upload&path=/x&size=-1"),
                "size \"-1\" is not a number of bytes",
            ),
            (Some("kind=upload&path=/x&size=1&mode=999"), "not octal"),
            (Some("kind=upload&path=/x&size=1&mode=4755"), "0 to 777"),
            (Some("kind=shell"), "shell needs its terminal"),
            (
                Some("kind=shell&term=xterm&cols=80"),
                "shell needs its terminal",
            ),
            (
                Some("kind=exec&command=ls&term=xterm&cols=80&rows=24"),
                "for kind=shell only",
            ),
            (
                Some("kind=shell&term=xterm&cols=0&rows=24"),
                "cols 0 is out of range",
            ),
            (
                Some("kind=shell&term=xterm&cols=80&rows=1001"),
                "rows 1001 is out of range",
            ),
            (
                Some("kind=shell&term=xterm&cols=wide&rows=24"),
                "cols \"wide\" is not a number",
            ),
            (
                Some("kind=shell&term=xterm%20-e&cols=80&rows=24"),
                "term \"xterm -e\" is not a terminal type",
            ),
        ] {
            let error = parse_query(bad).expect_err("refused");
            assert!(error.message.contains(says), "{bad:?}: {}", error.message);
        }
    }
}
