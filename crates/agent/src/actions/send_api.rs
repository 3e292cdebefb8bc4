//! `send-api`: an HTTP request made from the device, answered as seed 000
//! says: the remote's status code, and its body (at most 1 MiB of
//! JSON-encoded text) as the `response` string.

use std::time::Duration;

use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::Value;
use tether_proto::redact::redacted_url;

use super::{ActionError, Answer};

/// The most body an answer carries, counted as it goes on the wire: the
/// JSON-escaped text between the quotes. Raw bytes would not do: a NUL byte
/// becomes `\u0000`, six bytes, so 1 MiB of raw body could be 6 MiB of event.
pub const BODY_LIMIT: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);
/// Debian's and Alpine's bundle; `SSL_CERT_FILE` names another.
pub(crate) const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The input `send-api` and `send-kubernetes-api` share (seed 000).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Input {
    pub(crate) href: String,
    request_method: Option<String>,
    pub(crate) request_body: Option<String>,
}

impl Input {
    pub(crate) fn read(input: &Value) -> Result<Self, ActionError> {
        serde_json::from_value(input.clone()).map_err(|e| ActionError::invalid("$", e.to_string()))
    }

    /// `requestMethod` (default GET), one of the five the seed names.
    pub(crate) fn method(&self) -> Result<Method, ActionError> {
        match self.request_method.as_deref().unwrap_or("GET") {
            "GET" => Ok(Method::GET),
            "POST" => Ok(Method::POST),
            "PUT" => Ok(Method::PUT),
            "PATCH" => Ok(Method::PATCH),
            "DELETE" => Ok(Method::DELETE),
            other => Err(ActionError::invalid(
                "$.requestMethod",
                format!("{other:?} is not one of GET, POST, PUT, PATCH, DELETE"),
            )),
        }
    }
}

#[derive(Debug, PartialEq)]
struct Target {
    url: Url,
    method: Method,
    body: Option<String>,
}

fn parse(input: &Value) -> Result<Target, ActionError> {
    let input = Input::read(input)?;
    let url = Url::parse(&input.href).map_err(|e| {
        // The status message is stored and shown: no credentials in it.
        let href = redacted_url(&input.href);
        ActionError::invalid("$.href", format!("{href:?} is not a URL: {e}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ActionError::invalid(
            "$.href",
            format!(
                "only http and https URLs are allowed, not {}:",
                url.scheme()
            ),
        ));
    }
    let method = input.method()?;
    Ok(Target {
        url,
        method,
        body: input.request_body,
    })
}

/// The controller's CA plus the system's roots, read per request so the idle
/// agent does not hold them in memory.
fn client(ca_pem: &str) -> Result<reqwest::Client, reqwest::Error> {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .timeout(TIMEOUT)
        // The caller sees a redirect as it is, and decides where to go next.
        .redirect(reqwest::redirect::Policy::none());
    let system = std::env::var_os("SSL_CERT_FILE").unwrap_or_else(|| SYSTEM_ROOTS.into());
    let system_pem = std::fs::read(&system).unwrap_or_default();
    for pem in [ca_pem.as_bytes(), &system_pem] {
        // An unreadable bundle only means fewer trusted roots.
        for cert in reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default() {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build()
}

/// Sends the request; any answer from the remote, whatever its status, is
/// passed on as the event's status ([`relayed`]). Only a request that
/// failed is an error.
pub async fn run(input: &Value, ca_pem: &str) -> Result<Answer, ActionError> {
    let target = parse(input)?;
    // The error becomes the event's status message, stored and shown by
    // tetherd: it names the URL redacted, and reqwest's own copy of the URL
    // (credentials, query and all) is stripped from the cause.
    let url = redacted_url(target.url.as_str());
    let failed = |source: reqwest::Error| ActionError::Request {
        url: url.clone(),
        source: source.without_url(),
    };
    let mut request = client(ca_pem)
        .map_err(failed)?
        .request(target.method, target.url.clone());
    if let Some(body) = target.body {
        if serde_json::from_str::<Value>(&body).is_ok() {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        request = request.body(body);
    }
    let response = request.send().await.map_err(failed)?;
    let status = response.status().as_u16();
    // Every raw byte encodes to at least one byte (an invalid one to the
    // three of U+FFFD), so more than BODY_LIMIT raw bytes are never needed.
    let (body, truncated) = read_capped(response, BODY_LIMIT).await.map_err(failed)?;
    Ok(relayed(status, &body, truncated))
}

/// The first `limit` bytes of a response's body, and whether there was
/// more; the rest is never read, so a huge body costs no memory.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The answer of a request made for the operator (`send-api`,
/// `send-kubernetes-api`): the remote's status code and reason phrase, and
/// its body as text (the seed's `response` is a string), cut to
/// [`BODY_LIMIT`] encoded; a cut, here or by the caller (`truncated`), is
/// said in the status message.
pub(crate) fn relayed(status: u16, body: &[u8], truncated: bool) -> Answer {
    let (text, cut) = truncate_encoded(String::from_utf8_lossy(body).into_owned(), BODY_LIMIT);
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("");
    let status_message = if truncated || cut {
        format!("{reason} (the body is cut to its first MiB)")
    } else {
        reason.to_owned()
    };
    Answer {
        status_code: status,
        status_message,
        response: Value::String(text),
    }
}

/// `text` cut at a character boundary so that its JSON encoding, without
/// the quotes, is at most `limit` bytes; and whether anything was cut.
pub(crate) fn truncate_encoded(mut text: String, limit: usize) -> (String, bool) {
    let mut encoded = 0;
    for (at, c) in text.char_indices() {
        encoded += json_escaped_len(c);
        if encoded > limit {
            text.truncate(at);
            return (text, true);
        }
    }
    (text, false)
}

/// How many bytes serde_json writes for `c` inside a string: `"` and `\`
/// and the control characters with a short escape take two, the other
/// control characters six (`\u001f`), anything else its UTF-8 length.
fn json_escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        '\0'..='\u{1f}' => 6,
        c => c.len_utf8(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves one canned HTTP response on 127.0.0.1 and hands back the request.
    pub(crate) async fn serve_once(
        response_head: &'static str,
        body: Vec<u8>,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accepts");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and any body that came with it.
            loop {
                let n = socket.read(&mut buf).await.expect("reads");
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let head = format!("{response_head}Content-Length: {}\r\n\r\n", body.len());
            socket
                .write_all(head.as_bytes())
                .await
                .expect("writes head");
            // The client stops reading past the limit; a reset is fine then.
            let _ = socket.write_all(&body).await;
            String::from_utf8_lossy(&request).into_owned()
        });
        (format!("http://{addr}"), task)
    }

    #[test]
    fn only_http_and_https_urls_are_allowed() {
        for bad in [
            "file:///etc/passwd",
            "ftp://h/x",
            "unix:/run/x.sock",
            "not a url",
        ] {
            let err = parse(&json!({"href": bad})).expect_err(bad);
            assert_eq!(err.status_code(), 400);
            assert!(err.to_string().starts_with("$.href"), "{err}");
        }
        let target =
            parse(&json!({"href": "https://h:1/p?q", "requestMethod": "DELETE"})).expect("valid");
        assert_eq!(target.method, Method::DELETE);
        assert_eq!(
            parse(&json!({"href": "http://h"})).expect("valid").method,
            Method::GET
        );
        assert!(parse(&json!({"href": "http://h", "requestMethod": "BREW"})).is_err());
    }

    #[tokio::test]
    async fn the_remote_answer_comes_back_whatever_its_status() {
        let (url, server) = serve_once(
            "HTTP/1.1 404 Not Found\r\nX-Thing: a\r\nX-Thing: b\r\n",
            b"nope".to_vec(),
        )
        .await;
        let response = run(
            &json!({"href": format!("{url}/items"), "requestMethod": "POST", "requestBody": "{\"a\":1}"}),
            "",
        )
        .await
        .expect("completes");
        assert_eq!(
            response,
            Answer {
                status_code: 404,
                status_message: "Not Found".into(),
                response: json!("nope"),
            }
        );
        let request = server.await.expect("server ran");
        assert!(request.starts_with("POST /items HTTP/1.1"), "{request}");
        assert!(
            request.contains("content-type: application/json"),
            "{request}"
        );
        assert!(request.ends_with("{\"a\":1}"), "{request}");
    }

    #[tokio::test]
    async fn a_large_body_is_cut_at_one_mebibyte() {
        let (url, _server) = serve_once("HTTP/1.1 200 OK\r\n", vec![b'x'; BODY_LIMIT + 10]).await;
        let answer = run(&json!({"href": url}), "").await.expect("completes");
        assert_eq!(answer.status_code, 200);
        assert_eq!(
            answer.status_message,
            "OK (the body is cut to its first MiB)"
        );
        assert_eq!(answer.response.as_str().expect("text").len(), BODY_LIMIT);

        let (url, _server) = serve_once("HTTP/1.1 200 OK\r\n", vec![b'y'; BODY_LIMIT]).await;
        let answer = run(&json!({"href": url}), "").await.expect("completes");
        assert_eq!(
            answer.status_message, "OK",
            "a body of exactly the limit is whole"
        );
    }

    #[tokio::test]
    async fn a_body_of_nul_bytes_stays_within_the_limit_once_encoded() {
        // Each NUL is six bytes in JSON: the raw cap alone let 1 MiB of them
        // become a 6 MiB event, more than the controller's MQTT endpoint takes.
        let (url, _server) = serve_once("HTTP/1.1 200 OK\r\n", vec![0; BODY_LIMIT + 10]).await;
        let answer = run(&json!({"href": url}), "").await.expect("completes");
        assert!(answer.status_message.contains("cut"), "{answer:?}");
        let body = answer.response.as_str().expect("text");
        assert_eq!(body.len(), BODY_LIMIT / 6, "as many NULs as fit");
        let encoded = serde_json::to_string(&answer.response).expect("encodes");
        assert!(encoded.len() <= BODY_LIMIT + 2, "{}", encoded.len());

        // A short body of them is kept whole.
        let (url, _server) = serve_once("HTTP/1.1 200 OK\r\n", vec![0; 100]).await;
        let answer = run(&json!({"href": url}), "").await.expect("completes");
        assert_eq!(answer.status_message, "OK");
        assert_eq!(answer.response.as_str().map(str::len), Some(100));
    }

    #[test]
    fn the_encoded_length_is_what_serde_json_writes() {
        let samples = (0..=0x7f_u8)
            .map(char::from)
            .chain(['\u{7f}', 'é', '\u{2028}', '\u{fffd}', '🦀']);
        for c in samples {
            let quoted = serde_json::to_string(&c.to_string()).expect("encodes");
            assert_eq!(json_escaped_len(c), quoted.len() - 2, "{c:?}");
        }
    }

    #[test]
    fn text_is_cut_at_a_character_that_would_cross_the_limit() {
        assert_eq!(truncate_encoded("abc".into(), 3), ("abc".into(), false));
        assert_eq!(truncate_encoded("abcd".into(), 3), ("abc".into(), true));
        // `\u0000` is six bytes: two fit in 13, not three.
        assert_eq!(truncate_encoded("\0\0\0".into(), 13), ("\0\0".into(), true));
        // A multi-byte character is never split.
        assert_eq!(truncate_encoded("a🦀".into(), 4), ("a".into(), true));
        assert_eq!(truncate_encoded("a🦀".into(), 5), ("a🦀".into(), false));
        assert_eq!(truncate_encoded(String::new(), 0), (String::new(), false));
    }

    #[tokio::test]
    async fn a_failed_request_names_the_url_without_its_secrets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        let href = format!("http://admin:hunter2@{addr}/x?token=s3cret&limit=5");
        let err = run(&json!({"href": href}), "").await.expect_err("refused");
        assert_eq!(err.status_code(), 502);
        let message = crate::actions::chain(&err);
        assert!(
            message.starts_with(&format!(
                "request to http://***@{addr}/x?token=***&limit=*** failed"
            )),
            "{message}"
        );
        assert!(
            !message.contains("hunter2") && !message.contains("s3cret"),
            "{message}"
        );

        let err = parse(&json!({"href": "http://u:hunter2@h:99999/"})).expect_err("bad port");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("http://***@h:99999/"), "{err}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_502_naming_the_url() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let url = format!("http://{}/x", listener.local_addr().expect("address"));
        drop(listener);
        let err = run(&json!({"href": url}), "").await.expect_err("refused");
        assert_eq!(err.status_code(), 502);
        let message = crate::actions::chain(&err);
        assert!(message.contains(&url), "{message}");
        assert!(message.to_lowercase().contains("refused"), "{message}");
    }
}
