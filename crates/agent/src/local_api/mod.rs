//! The local API: HTTP/1.1 over a unix socket (mode 0660), where
//! applications on the device push log lines and metrics into the spool.
//!
//! ```text
//! curl --unix-socket /var/lib/tether-agent/api.sock -X POST \
//!      --data-binary $'{"message":"pump started","priority":5,"unit":"pump"}\n' \
//!      http://localhost/v1/logs
//! curl --unix-socket /var/lib/tether-agent/api.sock -X POST \
//!      --data-binary '{"name":"tank_level","value":0.73,"labels":{"tank":"a"}}' \
//!      http://localhost/v1/metrics
//! ```
//!
//! A body is JSON lines, one record per line; a request is taken whole or
//! refused whole (400 naming the line), and answered with how many records
//! it added. One request per connection; the body needs a `Content-Length`.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tether_proto::telemetry::{CustomMetric, LogRecord, MetricRecord};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::clock::ServerClock;
use crate::spool::{Record, Spools};

/// Owner and group may write; others may not reach the agent.
const SOCKET_MODE: u32 = 0o660;
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_METRIC_NAME_BYTES: usize = 128;
/// Priority of a log line that names none: informational.
const DEFAULT_PRIORITY: u8 = 6;

#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    #[error(
        "cannot listen on the local API socket {path}: check that its directory exists and is writable, or choose another with --local-api-socket"
    )]
    Bind { path: PathBuf, source: io::Error },
}

pub struct LocalApi {
    listener: UnixListener,
    spools: Arc<Spools>,
    clock: Arc<ServerClock>,
}

impl LocalApi {
    /// Listens on `path`, replacing a socket a previous run left behind.
    pub fn bind(
        path: &Path,
        spools: Arc<Spools>,
        clock: Arc<ServerClock>,
    ) -> Result<Self, LocalApiError> {
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
        tracing::info!(socket = %path.display(), "local API listening");
        Ok(Self {
            listener,
            spools,
            clock,
        })
    }

    pub async fn serve(self) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let spools = self.spools.clone();
                    let clock = self.clock.clone();
                    tokio::spawn(async move {
                        if let Err(error) = answer(stream, &spools, &clock).await {
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

/// An HTTP answer: status code and JSON body.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    body: serde_json::Value,
}

impl Reply {
    fn error(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": message.into() }),
        }
    }
}

async fn answer(stream: UnixStream, spools: &Spools, clock: &ServerClock) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let reply = match tokio::time::timeout(READ_TIMEOUT, request(&mut read)).await {
        Err(_) => Reply::error(408, "the request did not arrive in time"),
        Ok(Err(reply)) => reply,
        Ok(Ok((method, path, body))) => route(&method, &path, &body, spools, clock.at(Utc::now())),
    };
    let body = reply.body.to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
        let n = read
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

fn route(method: &str, path: &str, body: &[u8], spools: &Spools, now: DateTime<Utc>) -> Reply {
    let records = match path {
        "/v1/logs" | "/v1/metrics" if method != "POST" => {
            return Reply::error(405, format!("{path} takes POST"));
        }
        "/v1/logs" => lines(body, |line| log(line, now)),
        "/v1/metrics" => lines(body, |line| metric(line, now)),
        _ => {
            return Reply::error(
                404,
                format!("no such endpoint {path}: POST /v1/logs or /v1/metrics"),
            );
        }
    };
    let records = match records {
        Ok(records) => records,
        Err(message) => return Reply::error(400, message),
    };
    let accepted = records.len();
    for (i, record) in records.into_iter().enumerate() {
        if let Err(error) = spools.append(record) {
            return Reply::error(400, format!("line {}: {error}", i + 1));
        }
    }
    Reply {
        status: 200,
        body: serde_json::json!({ "accepted": accepted }),
    }
}

/// Every non-empty line of `body` as a record, or the first bad line named.
fn lines(
    body: &[u8],
    parse: impl Fn(&[u8]) -> Result<Record, String>,
) -> Result<Vec<Record>, String> {
    body.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| parse(line).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLine {
    message: String,
    #[serde(default)]
    priority: Option<u8>,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    at: Option<DateTime<Utc>>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

fn log(line: &[u8], now: DateTime<Utc>) -> Result<Record, String> {
    let line: LogLine = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let priority = line.priority.unwrap_or(DEFAULT_PRIORITY);
    if priority > 7 {
        return Err(format!(
            "priority {priority} is not 0 (emergency) to 7 (debug)"
        ));
    }
    Ok(Record::Log(LogRecord {
        at: line.at.unwrap_or(now),
        priority,
        unit: line.unit,
        message: line.message,
        fields: line.fields,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricLine {
    name: String,
    value: f64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    at: Option<DateTime<Utc>>,
}

fn metric(line: &[u8], now: DateTime<Utc>) -> Result<Record, String> {
    let line: MetricLine = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if line.name.is_empty() || line.name.len() > MAX_METRIC_NAME_BYTES {
        return Err(format!("name must be 1 to {MAX_METRIC_NAME_BYTES} bytes"));
    }
    if !line.value.is_finite() {
        return Err("value must be a finite number".into());
    }
    Ok(Record::Metric(MetricRecord::Custom(CustomMetric {
        name: line.name,
        value: line.value,
        labels: line.labels,
        at: line.at.unwrap_or(now),
    })))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SpoolConfig;
    use tether_proto::telemetry::{Records, Stream};

    async fn post(socket: &Path, request: &str) -> String {
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

    #[tokio::test]
    async fn lines_posted_on_the_socket_reach_the_spool_and_bad_ones_are_named() {
        let temp = tempfile::tempdir().expect("temp");
        let spools = Spools::open(temp.path(), SpoolConfig::default()).expect("opens");
        let socket = temp.path().join("api.sock");
        let api = LocalApi::bind(&socket, spools.clone(), ServerClock::new()).expect("binds");
        let mode = std::fs::metadata(&socket)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);
        tokio::spawn(api.serve());

        let response = post(
            &socket,
            &http(
                "/v1/logs",
                "{\"message\":\"one\",\"priority\":3,\"unit\":\"pump\"}\n\n{\"message\":\"two\"}\n",
            ),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("\"accepted\":2"), "{response}");
        let response = post(
            &socket,
            &http(
                "/v1/metrics",
                r#"{"name":"tank","value":0.5,"labels":{"t":"a"}}"#,
            ),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");

        let response = post(
            &socket,
            &http(
                "/v1/logs",
                "{\"message\":\"ok\"}\n{\"message\":\"x\",\"priority\":9}\n",
            ),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(response.contains("line 2: priority 9"), "{response}");
        let response = post(&socket, &http("/v1/other", "")).await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        let response = post(
            &socket,
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
            [("one", 3), ("two", DEFAULT_PRIORITY)],
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
}
