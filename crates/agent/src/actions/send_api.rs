//! `send-api`: an HTTP request made from the device, answered with the
//! remote status, headers and (at most 1 MiB of) body.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ActionError;

pub const BODY_LIMIT: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);
/// Debian's and Alpine's bundle; `SSL_CERT_FILE` names another.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    href: String,
    request_method: Option<String>,
    request_body: Option<String>,
}

#[derive(Debug, PartialEq)]
struct Target {
    url: Url,
    method: Method,
    body: Option<String>,
}

fn parse(input: &Value) -> Result<Target, ActionError> {
    let input: Input = serde_json::from_value(input.clone())
        .map_err(|e| ActionError::invalid("$", e.to_string()))?;
    let url = Url::parse(&input.href).map_err(|e| {
        ActionError::invalid("$.href", format!("{:?} is not a URL: {e}", input.href))
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
    let method = match input.request_method.as_deref().unwrap_or("GET") {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        other => {
            return Err(ActionError::invalid(
                "$.requestMethod",
                format!("{other:?} is not one of GET, POST, PUT, PATCH, DELETE"),
            ));
        }
    };
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

/// Sends the request; any answer from the remote, whatever its status, is a
/// 200 event carrying that status. Only a request that failed is an error.
pub async fn run(input: &Value, ca_pem: &str) -> Result<Value, ActionError> {
    let target = parse(input)?;
    let url = target.url.to_string();
    let failed = |source| ActionError::Request {
        url: url.clone(),
        source,
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
    let mut response = request.send().await.map_err(failed)?;
    let status = response.status().as_u16();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        let room = BODY_LIMIT - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(json!({
        "status": status,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "truncated": truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves one canned HTTP response on 127.0.0.1 and hands back the request.
    async fn serve_once(
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
        assert_eq!(response["status"], 404);
        assert_eq!(response["body"], "nope");
        assert_eq!(response["truncated"], false);
        assert_eq!(response["headers"]["x-thing"], "a, b");
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
        let response = run(&json!({"href": url}), "").await.expect("completes");
        assert_eq!(response["status"], 200);
        assert_eq!(response["truncated"], true);
        assert_eq!(response["body"].as_str().expect("text").len(), BODY_LIMIT);

        let (url, _server) = serve_once("HTTP/1.1 200 OK\r\n", vec![b'y'; BODY_LIMIT]).await;
        let response = run(&json!({"href": url}), "").await.expect("completes");
        assert_eq!(response["truncated"], false);
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
