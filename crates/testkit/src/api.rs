//! A thin HTTPS client for tetherd's API that trusts only tetherd's CA.

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A response: status and JSON body (`Value::Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// The body, after checking the status; the message shows the body otherwise.
    pub fn expect_status(self, status: u16) -> anyhow::Result<Value> {
        anyhow::ensure!(
            self.status.as_u16() == status,
            "expected HTTP {status}, got {}: {}",
            self.status,
            self.body
        );
        Ok(self.body)
    }
}

impl ApiClient {
    pub fn new(base: &str, ca_pem: &[u8], token: Option<String>) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(ca_pem).context("the CA is not PEM")?;
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .tls_built_in_root_certs(false)
            .build()
            .context("building the HTTPS client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    pub fn with_token(&self, token: Option<String>) -> Self {
        Self {
            token,
            ..self.clone()
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Waits until the API shows `device` with this presence (`online`/`offline`).
    pub async fn wait_presence(&self, device: &str, presence: &str) -> anyhow::Result<()> {
        let path = format!("/api/v1/devices/{device}");
        crate::wait_until(
            &format!("device {device} to be {presence}"),
            std::time::Duration::from_secs(30),
            || {
                let path = path.clone();
                async move {
                    let device = self.get(&path).await?.expect_status(200)?;
                    Ok((device["presence"] == presence).then_some(()))
                }
            },
        )
        .await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    /// A PATCH with `If-Match: "version"`.
    pub async fn patch_if_match(
        &self,
        path: &str,
        body: Value,
        version: u64,
    ) -> anyhow::Result<Reply> {
        let request = self
            .request(Method::PATCH, path)
            .header("if-match", format!("\"{version}\""))
            .json(&body);
        Self::reply(request).await
    }

    /// A PUT without a body.
    pub async fn put(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(Method::PUT, path, None).await
    }

    /// A PUT with a JSON body.
    pub async fn put_json(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.send(Method::PUT, path, Some(body)).await
    }

    /// A PUT with a JSON body and `If-Match: "version"`.
    pub async fn put_if_match(
        &self,
        path: &str,
        body: Value,
        version: u64,
    ) -> anyhow::Result<Reply> {
        let request = self
            .request(Method::PUT, path)
            .header("if-match", format!("\"{version}\""))
            .json(&body);
        Self::reply(request).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(Method::DELETE, path, None).await
    }

    /// Sends raw bytes as a JSON body, for malformed-input tests.
    /// A GET whose answer is not JSON (e.g. `/metrics`): status and text.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<(StatusCode, String)> {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .context("sending the request to tetherd")?;
        let status = response.status();
        let text = response.text().await.context("reading tetherd's answer")?;
        Ok((status, text))
    }

    /// A GET answered with a stream of JSON lines (a log follow): the
    /// status, and the lines as they come. Blank lines (keepalives) are
    /// skipped.
    pub async fn get_json_lines(&self, path: &str) -> anyhow::Result<JsonLines> {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .context("sending the request to tetherd")?;
        Ok(JsonLines {
            status: response.status(),
            response,
            buffer: Vec::new(),
        })
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Reply> {
        let request = self
            .request(Method::POST, path)
            .header("content-type", "application/json")
            .body(body);
        Self::reply(request).await
    }

    /// A PUT of raw bytes sent in `pieces` without a `Content-Length`
    /// (chunked), as a streaming client sends a binary of unknown length.
    pub async fn put_byte_stream(&self, path: &str, pieces: Vec<Vec<u8>>) -> anyhow::Result<Reply> {
        let stream = futures::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
        let request = self
            .request(Method::PUT, path)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream));
        Self::reply(request).await
    }

    /// A PUT of raw bytes (`application/octet-stream`), e.g. a binary.
    pub async fn put_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Reply> {
        let request = self
            .request(Method::PUT, path)
            .header("content-type", "application/octet-stream")
            .body(body);
        Self::reply(request).await
    }

    /// A GET whose answer is bytes (a download), with an optional `Range`
    /// header: status, headers and body.
    pub async fn get_bytes(&self, path: &str, range: Option<&str>) -> anyhow::Result<BytesReply> {
        let mut request = self.request(Method::GET, path);
        if let Some(range) = range {
            request = request.header("range", range);
        }
        let response = request
            .send()
            .await
            .context("sending the request to tetherd")?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .context("reading tetherd's answer")?
            .to_vec();
        Ok(BytesReply {
            status,
            headers,
            body,
        })
    }

    /// A GET whose body is left unread: the caller holds the response
    /// (e.g. a download in progress) as long as it likes.
    pub async fn open(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.request(Method::GET, path)
            .send()
            .await
            .context("sending the request to tetherd")
    }

    /// Any method with a JSON body, its answer read whole.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Reply> {
        self.send(method, path, Some(body)).await
    }

    /// Any method with an optional JSON body; an error's body is read, a
    /// success's is not, so a route that streams (a log follow) answers too.
    pub async fn status_of(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Reply> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .context("sending the request to tetherd")?;
        let status = response.status();
        if !status.is_client_error() && !status.is_server_error() {
            return Ok(Reply {
                status,
                body: Value::Null,
            });
        }
        let bytes = response.bytes().await.context("reading tetherd's answer")?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Reply> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::reply(request).await
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    async fn reply(request: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let response = request
            .send()
            .await
            .context("sending the request to tetherd")?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading tetherd's answer")?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }
}

/// A response read as bytes.
#[derive(Debug)]
pub struct BytesReply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl BytesReply {
    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// A response read as JSON lines.
pub struct JsonLines {
    pub status: StatusCode,
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl JsonLines {
    /// The next JSON line within `within`; `None` if the stream ended.
    pub async fn next(&mut self, within: std::time::Duration) -> anyhow::Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(
                    serde_json::from_slice(&line).context("a line of the stream is not JSON")?,
                ));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .with_context(|| format!("no line within {within:?}"))?
                .context("reading the stream")?;
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}
