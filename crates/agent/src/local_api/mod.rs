//! The local API: HTTP/1.1 over a unix socket (mode 0660), where
//! applications on the device push log lines and metrics into the spool
//! (`push`) and read the device's identity, status and spec (`view`).
//!
//! ```text
//! curl --unix-socket /var/lib/tether-agent/api.sock -X POST \
//!      --data-binary $'{"message":"pump started","priority":5,"unit":"pump"}\n' \
//!      http://localhost/v1/logs
//! curl --unix-socket /var/lib/tether-agent/api.sock -X POST \
//!      --data-binary '{"name":"tank_level","value":0.73,"labels":{"tank":"a"}}' \
//!      http://localhost/v1/metrics
//! curl --unix-socket /var/lib/tether-agent/api.sock http://localhost/v1/identity
//! curl --unix-socket /var/lib/tether-agent/api.sock http://localhost/v1/status
//! curl --unix-socket /var/lib/tether-agent/api.sock http://localhost/v1/spec
//! curl --unix-socket /var/lib/tether-agent/api.sock -X PUT \
//!      --data '{"reason":"flashing the PLC","ttlSeconds":3600}' \
//!      http://localhost/v1/update-locks/plc-flash
//! curl --unix-socket /var/lib/tether-agent/api.sock -X DELETE \
//!      http://localhost/v1/update-locks/plc-flash
//! ```
//!
//! Answers are JSON; errors are `{"error": "..."}` naming what was wrong.
//! One request per connection; a body needs a `Content-Length`.

mod locks;
mod push;
mod view;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::clock::ServerClock;
use crate::spool::Spools;
use crate::updates::UpdateLocks;

pub use view::{Certificate, DeviceView, Identity, follow_credentials};

/// Owner and group may write; others may not reach the agent.
const SOCKET_MODE: u32 = 0o660;
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. Each may hold a body of
/// [`MAX_BODY_BYTES`], so this bounds what local clients can make the
/// agent hold (32 MiB); more wait in the socket's backlog.
const MAX_CONNECTIONS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    #[error(
        "cannot listen on the local API socket {path}: check that its directory exists and is writable, or choose another with --local-api-socket"
    )]
    Bind { path: PathBuf, source: io::Error },
    #[error("--local-api-group {group:?} is neither a group number nor a group in /etc/group")]
    UnknownGroup { group: String },
    #[error(
        "cannot give the local API socket {path} to group {group}: the agent must run as root or as a member of that group"
    )]
    Group {
        path: PathBuf,
        group: String,
        source: io::Error,
    },
}

/// Where the local API listens, and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalApiConfig {
    pub socket: PathBuf,
    /// The group that may use the socket besides the agent's user, by name
    /// or number; `None` leaves the agent's group.
    pub group: Option<String>,
}

pub struct LocalApi {
    listener: UnixListener,
    served: Arc<Served>,
    clock: Arc<ServerClock>,
}

impl LocalApi {
    /// Listens on the configured socket, replacing a socket a previous run
    /// left behind.
    pub fn bind(
        config: &LocalApiConfig,
        spools: Arc<Spools>,
        view: DeviceView,
        updates: Arc<UpdateLocks>,
        clock: Arc<ServerClock>,
    ) -> Result<Self, LocalApiError> {
        let path = config.socket.as_path();
        let gid = match &config.group {
            Some(group) => Some(group_id(group, &read_etc_group()).ok_or_else(|| {
                LocalApiError::UnknownGroup {
                    group: group.clone(),
                }
            })?),
            None => None,
        };
        let bind = || -> io::Result<UnixListener> {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(path)?;
            }
            let listener = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
            Ok(listener)
        };
        let listener = bind().map_err(|source| LocalApiError::Bind {
            path: path.to_owned(),
            source,
        })?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| {
                LocalApiError::Group {
                    path: path.to_owned(),
                    group: config.group.clone().unwrap_or_default(),
                    source,
                }
            })?;
        }
        tracing::info!(socket = %path.display(), gid, "local API listening");
        Ok(Self {
            listener,
            served: Arc::new(Served {
                spools,
                view,
                updates,
            }),
            clock,
        })
    }

    pub async fn serve(self) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let served = self.served.clone();
                    let clock = self.clock.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        if let Err(error) = answer(stream, &served, &clock).await {
                            tracing::debug!(%error, "local API connection ended early");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "local API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

fn read_etc_group() -> String {
    std::fs::read_to_string("/etc/group").unwrap_or_default()
}

/// The number of `group`: given as a number, or looked up in the text of
/// `/etc/group` (`name:password:gid:members`).
fn group_id(group: &str, etc_group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    etc_group.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(group))
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

/// An HTTP answer: status code and JSON body.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    body: serde_json::Value,
    /// The method a 405 names in its `Allow` header.
    allow: Option<&'static str>,
}

impl Reply {
    fn ok(body: impl Serialize) -> Self {
        match serde_json::to_value(body) {
            Ok(body) => Self {
                status: 200,
                body,
                allow: None,
            },
            Err(error) => Self::error(500, format!("cannot encode the answer: {error}")),
        }
    }

    fn error(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": message.into() }),
            allow: None,
        }
    }
}

async fn answer(stream: UnixStream, served: &Served, clock: &ServerClock) -> io::Result<()> {
    // Who is on the other end, as the kernel saw it at connect.
    let client_uid = match stream.peer_cred() {
        Ok(credentials) => Some(credentials.uid()),
        Err(error) => {
            tracing::warn!(%error, "cannot read the local API client's credentials");
            None
        }
    };
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let reply = match tokio::time::timeout(READ_TIMEOUT, request(&mut read)).await {
        Err(_) => Reply::error(408, "the request did not arrive in time"),
        Ok(Err(reply)) => reply,
        Ok(Ok((method, path, body))) => route(
            &method,
            &path,
            &body,
            served,
            client_uid,
            clock.at(Utc::now()),
        ),
    };
    let body = reply.body.to_string();
    let allow = reply
        .allow
        .map(|method| format!("Allow: {method}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        reply.status,
        reason(reply.status),
        body.len() + 1
    );
    write.write_all(head.as_bytes()).await?;
    write.write_all(body.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// Reads a request's method, path and body.
async fn request(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<(String, String, Vec<u8>), Reply> {
    let bad = |message: &str| Reply::error(400, message);
    let mut head = 0;
    let mut line = String::new();
    let mut next_line = async |line: &mut String| -> Result<(), Reply> {
        line.clear();
        // Bounded as read: a line without end must not grow past the head.
        let room = (MAX_HEAD_BYTES + 1).saturating_sub(head) as u64;
        let n = (&mut *read)
            .take(room)
            .read_line(line)
            .await
            .map_err(|_| bad("the request head is not text"))?;
        head += n;
        if n == 0 || head > MAX_HEAD_BYTES {
            return Err(bad("the request head is incomplete or too long"));
        }
        Ok(())
    };
    next_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(bad("the request line is not METHOD PATH HTTP/1.1"));
    };
    let (method, path) = (method.to_owned(), path.to_owned());
    let mut length = None;
    loop {
        next_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(bad("a header line has no colon"));
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| bad("Content-Length is not a number"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Reply::error(
                411,
                "send the body with a Content-Length, not chunked",
            ));
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY_BYTES {
        return Err(Reply::error(
            413,
            format!("the body is {length} bytes, more than the {MAX_BODY_BYTES} allowed"),
        ));
    }
    let mut body = vec![0; length];
    read.read_exact(&mut body)
        .await
        .map_err(|_| bad("the body is shorter than its Content-Length"))?;
    Ok((method, path, body))
}

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Identity,
    Status,
    Spec,
    Logs,
    Metrics,
}

/// Every endpoint: what it is, its one method, its path.
const ENDPOINTS: [(Endpoint, &str, &str); 5] = [
    (Endpoint::Identity, "GET", "/v1/identity"),
    (Endpoint::Status, "GET", "/v1/status"),
    (Endpoint::Spec, "GET", "/v1/spec"),
    (Endpoint::Logs, "POST", "/v1/logs"),
    (Endpoint::Metrics, "POST", "/v1/metrics"),
];

/// What a request is answered from.
struct Served {
    spools: Arc<Spools>,
    view: DeviceView,
    updates: Arc<UpdateLocks>,
}

/// Answers one request; `client_uid` is the uid of the client on the
/// socket (`None`: unknown), which owns the update locks it takes.
fn route(
    method: &str,
    path: &str,
    body: &[u8],
    served: &Served,
    client_uid: Option<u32>,
    now: DateTime<Utc>,
) -> Reply {
    if let Some(rest) = path.strip_prefix(locks::PATH)
        && (rest.is_empty() || rest.starts_with('/'))
    {
        let name = rest.strip_prefix('/');
        return locks::route(
            method,
            name,
            body,
            &served.updates,
            &served.view,
            client_uid,
            now,
        );
    }
    let Some(&(endpoint, allowed, _)) = ENDPOINTS.iter().find(|(_, _, p)| *p == path) else {
        let known: Vec<String> = ENDPOINTS
            .iter()
            .map(|(_, method, path)| format!("{method} {path}"))
            .chain([format!("GET {0}, PUT|DELETE {0}/NAME", locks::PATH)])
            .collect();
        return Reply::error(
            404,
            format!(
                "no such endpoint {path}: the local API has {}",
                known.join(", ")
            ),
        );
    };
    if method != allowed {
        return Reply {
            allow: Some(allowed),
            ..Reply::error(405, format!("{path} takes {allowed}, not {method}"))
        };
    }
    match endpoint {
        Endpoint::Identity => served.view.identity(),
        Endpoint::Status => served.view.status(),
        Endpoint::Spec => served.view.spec(),
        Endpoint::Logs => push::logs(body, &served.spools, now),
        Endpoint::Metrics => push::metrics(body, &served.spools, now),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use super::*;
    use crate::spec::{SpecHandle, StatusSource};
    use crate::spool::SpoolConfig;
    use tether_proto::spec::{Facts, SpecMessage};
    use tether_proto::telemetry::{Records, Stream};
    use tokio::sync::watch;

    async fn send(socket: &Path, request: &str) -> String {
        let mut stream = UnixStream::connect(socket).await.expect("connects");
        stream.write_all(request.as_bytes()).await.expect("writes");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reads");
        response
    }

    fn http(path: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// The status and JSON body of a GET, as curl sends it.
    async fn get(socket: &Path, path: &str) -> (u16, serde_json::Value) {
        let response = send(
            socket,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"),
        )
        .await;
        status_and_body(&response)
    }

    fn status_and_body(response: &str) -> (u16, serde_json::Value) {
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {response}"));
        let (_, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        (status, serde_json::from_str(body).expect("a JSON body"))
    }

    /// A local API on a temp socket, with what it serves from.
    struct Running {
        _temp: tempfile::TempDir,
        socket: PathBuf,
        spools: Arc<Spools>,
        status: StatusSource,
        identity: watch::Sender<Option<Identity>>,
        /// What the socket serves from, for requests routed without it
        /// (as another user than the test's).
        served: Served,
    }

    fn running(group: Option<String>) -> Result<Running, LocalApiError> {
        let temp = tempfile::tempdir().expect("temp");
        let spools =
            Spools::open(temp.path(), SpoolConfig::default(), ServerClock::new()).expect("opens");
        let socket = temp.path().join("api.sock");
        let facts = Facts {
            hostname: Some("pump-7".into()),
            ..Facts::default()
        };
        let status = StatusSource::new(SpecHandle::load(temp.path()), facts);
        let (identity, identity_rx) = watch::channel(None);
        let view = DeviceView {
            identity: identity_rx,
            status: status.view(),
        };
        let config = LocalApiConfig {
            socket: socket.clone(),
            group,
        };
        let locks = Arc::new(UpdateLocks::load(temp.path()));
        tokio::spawn(crate::updates::run(
            locks.clone(),
            status.spec.subscribe(),
            status.update_holds.clone(),
        ));
        let served = Served {
            spools: spools.clone(),
            view: view.clone(),
            updates: locks.clone(),
        };
        let api = LocalApi::bind(&config, spools.clone(), view, locks, ServerClock::new())?;
        tokio::spawn(api.serve());
        Ok(Running {
            _temp: temp,
            socket,
            spools,
            status,
            identity,
            served,
        })
    }

    /// A client that sends a head line without end: the agent stops
    /// reading at its bound and answers, instead of growing the line
    /// until the client stops (gigabytes, in the seconds it is given).
    #[tokio::test]
    async fn a_head_line_without_end_is_cut_at_its_bound() {
        let api = running(None).expect("binds");
        let stream = UnixStream::connect(&api.socket).await.expect("connects");
        let (mut read, mut write) = stream.into_split();
        const FLOOD: usize = 64 * 1024 * 1024;
        let writer = tokio::spawn(async move {
            let chunk = vec![b'a'; 64 * 1024];
            let mut sent = write.write_all(b"GET /").await.map(|()| 0);
            while let Ok(n) = sent {
                if n >= FLOOD {
                    break;
                }
                sent = write.write_all(&chunk).await.map(|()| n + chunk.len());
            }
            sent
        });
        // The answer, unless the close with the flood unread resets the
        // connection first.
        let mut response = String::new();
        if read.read_to_string(&mut response).await.is_ok() {
            assert!(response.starts_with("HTTP/1.1 400"), "{response}");
            assert!(response.contains("too long"), "{response}");
        }
        let sent = writer.await.expect("writer");
        assert!(
            sent.is_err(),
            "the agent read all {FLOOD} bytes of one head line"
        );
    }

    /// Clients that each announce a 4 MiB body and hold it back: only
    /// [`MAX_CONNECTIONS`] are read at once (each may hold its body in
    /// memory); the next is answered once one of them ends.
    #[tokio::test]
    async fn connections_are_served_a_bounded_number_at_a_time() {
        let api = running(None).expect("binds");
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut stream = UnixStream::connect(&api.socket).await.expect("connects");
            let head =
                format!("POST /v1/logs HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES}\r\n\r\n{{");
            stream.write_all(head.as_bytes()).await.expect("writes");
            held.push(stream);
        }
        let mut next = tokio::spawn({
            let socket = api.socket.clone();
            async move { get(&socket, "/v1/spec").await }
        });
        // Not answered while every slot is held (a bounded look: the
        // answer would come within milliseconds if it were served).
        let waited = tokio::time::timeout(Duration::from_millis(500), &mut next).await;
        assert!(waited.is_err(), "a connection beyond the bound was served");
        drop(held.pop());
        let (status, _) = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("served once a slot is free")
            .expect("task");
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn lines_posted_on_the_socket_reach_the_spool_and_bad_ones_are_named() {
        let api = running(None).expect("binds");
        let (socket, spools) = (&api.socket, &api.spools);
        let mode = std::fs::metadata(socket)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);

        let response = send(
            socket,
            &http(
                "/v1/logs",
                "{\"message\":\"one\",\"priority\":3,\"unit\":\"pump\"}\n\n{\"message\":\"two\"}\n",
            ),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("\"accepted\":2"), "{response}");
        let response = send(
            socket,
            &http(
                "/v1/metrics",
                r#"{"name":"tank","value":0.5,"labels":{"t":"a"}}"#,
            ),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");

        let response = send(
            socket,
            &http(
                "/v1/logs",
                "{\"message\":\"ok\"}\n{\"message\":\"x\",\"priority\":9}\n",
            ),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(response.contains("line 2: priority 9"), "{response}");
        // A sample tetherd would refuse (with the records batched beside
        // it) is refused here.
        let response = send(
            socket,
            &http(
                "/v1/metrics",
                "{\"name\":\"ok\",\"value\":1}\n{\"name\":\"tank\",\"value\":1,\"labels\":{\"k\":\"a\\u0000b\"}}\n",
            ),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(
            response.contains("line 2: label \\\"k\\\" holds a NUL character"),
            "{response}"
        );
        let response = send(socket, &http("/v1/other", "")).await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        let response = send(
            socket,
            "POST /v1/logs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 411"), "{response}");

        spools.flush();
        let logs = spools
            .spool(Stream::Logs)
            .next_batch()
            .expect("reads")
            .expect("batch");
        let Records::Logs(logs) = logs.records else {
            panic!("logs expected");
        };
        let messages: Vec<_> = logs
            .iter()
            .map(|l| (l.message.as_str(), l.priority))
            .collect();
        assert_eq!(
            messages,
            [("one", 3), ("two", push::DEFAULT_PRIORITY)],
            "the refused request added nothing"
        );
        assert_eq!(logs[0].unit, "pump");
        let metrics = spools
            .spool(Stream::Metrics)
            .next_batch()
            .expect("reads")
            .expect("batch");
        assert_eq!(metrics.records.len(), 1);
    }

    #[tokio::test]
    async fn identity_status_and_spec_are_read_as_the_agent_has_them() {
        let api = running(None).expect("binds");
        let socket = &api.socket;

        let (status, body) = get(socket, "/v1/identity").await;
        assert_eq!(status, 503, "not enrolled yet: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("enrolled")
        );
        let (status, body) = get(socket, "/v1/spec").await;
        assert_eq!(status, 200);
        assert_eq!(body, serde_json::json!({"version": 0, "spec": {}}));
        let (status, body) = get(socket, "/v1/status").await;
        assert_eq!(status, 200);
        assert_eq!(body["specVersion"], 0);
        assert_eq!(body["facts"]["hostname"], "pump-7");

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["edge-1".into()]).expect("params");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x2a, 0x01]));
        let cert = params.self_signed(&key).expect("signs");
        let credentials = crate::state::Credentials {
            device: tether_proto::DeviceId::new("edge-1").expect("valid"),
            mqtt_urls: vec!["mqtts://tether.example:8883".into()],
            api_url: "https://tether.example:8443".into(),
            ca_pem: cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        api.identity.send_replace(Some(Identity::of(&credentials)));
        let response = send(
            socket,
            "GET /v1/identity HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await;
        assert!(
            !response.contains("PRIVATE KEY") && !response.contains(&credentials.key_pem),
            "never the key: {response}"
        );
        let (status, body) = status_and_body(&response);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["device"], "edge-1");
        assert_eq!(body["apiUrl"], "https://tether.example:8443");
        assert_eq!(body["mqttUrls"][0], "mqtts://tether.example:8883");
        assert_eq!(body["certificate"]["serial"], "2a01");
        assert!(body["certificate"]["notAfter"].is_string(), "{body}");
        assert_eq!(
            body["caSha256"],
            tether_proto::ca::ca_fingerprint(&cert.pem()).expect("fingerprint")
        );
        assert_eq!(body["agentVersion"], crate::self_update::agent_version());

        // A spec applied, one section of it refused: both read back.
        let message = SpecMessage {
            version: 3,
            spec: serde_json::json!({
                "metricsConfig": {"intervalSeconds": 5},
                "firmware": {},
            })
            .as_object()
            .cloned()
            .expect("object"),
        };
        api.status
            .apply_payload(&serde_json::to_vec(&message).expect("serializes"))
            .expect("applies");
        let (_, body) = get(socket, "/v1/spec").await;
        assert_eq!(body["version"], 3);
        assert_eq!(body["spec"]["metricsConfig"]["intervalSeconds"], 5);
        let (_, body) = get(socket, "/v1/status").await;
        assert_eq!(body["specVersion"], 3);
        assert_eq!(body["errors"][0]["path"], "spec.firmware", "{body}");
        assert_eq!(
            body,
            serde_json::to_value(api.status.report()).expect("json"),
            "what tetherd is told"
        );
    }

    #[tokio::test]
    async fn a_wrong_method_or_path_is_named() {
        let api = running(None).expect("binds");
        let socket = &api.socket;
        let response = send(socket, &http("/v1/spec", "")).await;
        assert!(
            response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{response}"
        );
        assert!(response.contains("\r\nAllow: GET\r\n"), "{response}");
        let (_, body) = status_and_body(&response);
        assert_eq!(body["error"], "/v1/spec takes GET, not POST");
        let (status, body) = get(socket, "/v1/logs").await;
        assert_eq!(status, 405);
        assert_eq!(body["error"], "/v1/logs takes POST, not GET");
        let (status, body) = get(socket, "/v1/identity/").await;
        assert_eq!(status, 404);
        assert_eq!(
            body["error"],
            "no such endpoint /v1/identity/: the local API has GET /v1/identity, \
             GET /v1/status, GET /v1/spec, POST /v1/logs, POST /v1/metrics, \
             GET /v1/update-locks, PUT|DELETE /v1/update-locks/NAME"
        );
    }

    #[test]
    fn groups_are_numbers_or_names_in_etc_group() {
        let etc_group = "root:x:0:\nadm:x:4:syslog\ntether:x:997:app,pump\nbroken:x\n";
        assert_eq!(group_id("tether", etc_group), Some(997));
        assert_eq!(group_id("adm", etc_group), Some(4));
        assert_eq!(group_id("1234", etc_group), Some(1234));
        assert_eq!(group_id("broken", etc_group), None);
        assert_eq!(group_id("nobody-here", etc_group), None);
        assert_eq!(group_id("x", etc_group), None, "a field is not a name");
    }

    #[tokio::test]
    async fn the_socket_goes_to_the_configured_group() {
        // The group a new file gets: the agent's own, which it may always give.
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let gid = file.as_file().metadata().expect("metadata").gid();
        let api = running(Some(gid.to_string())).expect("binds");
        assert_eq!(std::fs::metadata(&api.socket).expect("socket").gid(), gid);

        let error = running(Some("no-such-group-here".into()))
            .err()
            .expect("an unknown group is refused");
        assert!(
            error.to_string().contains("\"no-such-group-here\""),
            "{error}"
        );
    }

    fn request(method: &str, path: &str, body: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// An application takes a lock, the status reports it as a hold (what
    /// rollouts read), a bad request changes nothing, and releasing it
    /// clears the hold.
    #[tokio::test]
    async fn an_update_lock_taken_through_the_socket_is_reported_until_released() {
        let api = running(None).expect("binds");
        let socket = &api.socket;
        let reported_holds = || {
            let status = api.status.clone();
            async move { anyhow::Ok(Some(status.report().update_holds)) }
        };
        let response = send(
            socket,
            &request(
                "PUT",
                "/v1/update-locks/plc-flash",
                r#"{"reason":"flashing the PLC","ttlSeconds":600}"#,
            ),
        )
        .await;
        let (status, body) = status_and_body(&response);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["lock"]["reason"], "flashing the PLC");
        let holds = tether_testkit::wait::wait_until(
            "the lock reported as a hold",
            Duration::from_secs(10),
            || async {
                let holds = reported_holds().await?.unwrap_or_default();
                Ok((!holds.is_empty()).then_some(holds))
            },
        )
        .await
        .expect("reported");
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].name.as_deref(), Some("plc-flash"));
        assert_eq!(holds[0].reason, "flashing the PLC");
        assert!(holds[0].until.is_some(), "it expires");
        let test_uid = rustix::process::getuid().as_raw();
        assert_eq!(holds[0].owner_uid, Some(test_uid), "the socket's client");

        for (request_text, code, says) in [
            (
                request("PUT", "/v1/update-locks/a/b", r#"{"reason":"x"}"#),
                400,
                "lock",
            ),
            (
                request("PUT", "/v1/update-locks/other", r#"{"reasn":"x"}"#),
                400,
                "reasn",
            ),
            (
                request(
                    "PUT",
                    "/v1/update-locks/other",
                    r#"{"reason":"x","ttlSeconds":0}"#,
                ),
                400,
                "ttlSeconds",
            ),
            (
                request("DELETE", "/v1/update-locks/other", ""),
                404,
                "no update lock named other",
            ),
            (request("POST", "/v1/update-locks", ""), 405, "GET"),
        ] {
            let (status, body) = status_and_body(&send(socket, &request_text).await);
            assert_eq!(status, code, "{request_text}: {body}");
            assert!(
                body["error"].as_str().unwrap_or_default().contains(says),
                "{body}"
            );
        }
        let (_, listed) = get(socket, "/v1/update-locks").await;
        assert_eq!(
            listed["locks"]
                .as_object()
                .map(|locks| locks.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["plc-flash".to_owned()]),
            "{listed}"
        );
        assert_eq!(listed["locks"]["plc-flash"]["ownerUid"], test_uid);

        let (status, _) = status_and_body(
            &send(socket, &request("DELETE", "/v1/update-locks/plc-flash", "")).await,
        );
        assert_eq!(status, 200);
        tether_testkit::wait::wait_until("the hold cleared", Duration::from_secs(10), || async {
            Ok(reported_holds().await?.filter(Vec::is_empty))
        })
        .await
        .expect("cleared");
    }

    /// Requests as other users than the test's, routed as the socket
    /// routes them: another user's lock is refused naming its owner;
    /// root releases any; a client whose uid is unknown takes none.
    #[tokio::test]
    async fn a_lock_is_released_only_by_its_owner_or_root() {
        let api = running(None).expect("binds");
        let now = Utc::now();
        let as_uid = |uid: Option<u32>, method: &str, name: &str| {
            let body = if method == "PUT" {
                r#"{"reason":"flashing the PLC"}"#
            } else {
                ""
            };
            route(
                method,
                &format!("{}/{name}", locks::PATH),
                body.as_bytes(),
                &api.served,
                uid,
                now,
            )
        };
        assert_eq!(as_uid(Some(1000), "PUT", "plc-flash").status, 200);
        for (uid, method) in [(1001, "DELETE"), (1001, "PUT")] {
            let refused = as_uid(Some(uid), method, "plc-flash");
            assert_eq!(refused.status, 403, "{method}: {refused:?}");
            assert_eq!(
                refused.body["error"],
                "update lock plc-flash was taken by uid 1000; only uid 1000 or root may renew or release it"
            );
        }
        let refused = as_uid(None, "PUT", "other");
        assert_eq!(refused.status, 403);
        assert!(
            refused.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot tell which user")),
            "{refused:?}"
        );
        let listed = route("GET", locks::PATH, b"", &api.served, None, now);
        assert_eq!(listed.status, 200, "reading needs no owner");
        assert_eq!(listed.body["locks"]["plc-flash"]["ownerUid"], 1000);
        assert_eq!(as_uid(Some(0), "DELETE", "plc-flash").status, 200, "root");

        assert_eq!(as_uid(Some(1001), "PUT", "batch").status, 200);
        assert_eq!(
            as_uid(Some(1001), "DELETE", "batch").status,
            200,
            "its owner"
        );
    }
}
