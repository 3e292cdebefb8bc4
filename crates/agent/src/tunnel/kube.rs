//! A `kube` tunnel (ADR 0022): one HTTP request from tetherd's Kubernetes
//! proxy, sent on to the cluster's API server as the ServiceAccount
//! `tether-system/tether-kubeconfig`.
//!
//! The agent reads the request's head only (bounded), puts its own
//! `Host` and the account's token in place of the client's, and then
//! copies bytes both ways without parsing the answer: streams (`logs -f`,
//! watches) and switched protocols pass as they are, one message at a
//! time. An error before the API server answers is sent as an HTTP answer
//! with a Kubernetes `Status`, so kubectl prints it.

use std::sync::Arc;

use futures::stream::SplitSink;
use futures::{SinkExt as _, StreamExt as _};
use tether_proto::tunnel;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{Socket, binary, incoming, send_stdout};
use crate::actions::{ActionError, Kubernetes};
use crate::kubernetes::{Access, Auth};

/// The most a request's head may take: far above what kubectl sends.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 100;

/// An answer the agent gives itself, instead of the API server's.
#[derive(Debug)]
struct Refusal {
    status: u16,
    reason: &'static str,
    message: String,
    /// The request's target, once known: how kubectl reads the answer.
    path: String,
}

impl Refusal {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            path: String::new(),
        }
    }

    fn for_path(self, path: &str) -> Self {
        Self {
            path: path.to_owned(),
            ..self
        }
    }

    /// As HTTP/1.1 on the wire.
    fn to_http(&self) -> Vec<u8> {
        let (content_type, body) = tether_proto::kubeconfig::error_body(
            &self.path,
            self.status,
            self.reason,
            &self.message,
        );
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status,
            self.reason,
            body.len()
        )
        .into_bytes()
    }
}

/// Serves the one request on `socket`.
pub async fn serve(socket: Socket, kubernetes: Kubernetes) {
    let (mut sender, receiver) = socket.split();
    let mut frames = incoming(receiver);
    // The head, and whatever of the body came with it.
    let mut received = Vec::new();
    let head_end = loop {
        if let Some(end) = find_head_end(&received) {
            break end;
        }
        if received.len() > MAX_HEAD {
            let refusal = Refusal::new(
                431,
                "RequestHeaderFieldsTooLarge",
                format!("the request's head is over {MAX_HEAD} bytes"),
            );
            return answer(&mut sender, &refusal).await;
        }
        match frames.next().await {
            Some((tunnel::STDIN, bytes)) => received.extend_from_slice(&bytes),
            Some(_) => {}
            // tetherd went away before sending a request.
            None => return,
        }
    };
    let connected = async {
        let head = rewrite_head(&received[..head_end])?;
        let path = head.path.clone();
        let access = kubernetes
            .admin_access()
            .await
            .map_err(|error| cannot_act(&error).for_path(&path))?;
        let head = with_credentials(head, &access).map_err(|r| r.for_path(&path))?;
        let mut api = connect(&access).await.map_err(|r| r.for_path(&path))?;
        api.write_all(&head)
            .await
            .and(api.write_all(&received[head_end..]).await)
            .map_err(|error| {
                Refusal::new(
                    502,
                    "InternalError",
                    format!("cannot send the request to {}: {error}", access.server),
                )
                .for_path(&path)
            })?;
        Ok::<_, Refusal>(api)
    };
    let api = match connected.await {
        Ok(api) => api,
        Err(refusal) => return answer(&mut sender, &refusal).await,
    };
    let (from_api, mut to_api) = tokio::io::split(api);
    // The rest of the client's bytes (a body, or a switched protocol's
    // stream) until tetherd's side closes: that is the client gone, and
    // the request with it.
    let upstream = async {
        let mut writing = true;
        while let Some((channel, bytes)) = frames.next().await {
            match channel {
                tunnel::STDIN if writing => {
                    writing = to_api.write_all(&bytes).await.is_ok();
                }
                // The client sent all it will: the API server is not told
                // (a Go server would cancel the request on a half-close).
                tunnel::CLOSE => writing = false,
                _ => {}
            }
        }
    };
    let downstream = send_stdout(from_api, &mut sender);
    tokio::select! {
        () = upstream => tracing::debug!("the kube tunnel's client went away"),
        () = downstream => {}
    }
}

/// Sends `refusal` as the answer and ends the tunnel.
async fn answer(sender: &mut SplitSink<Socket, Message>, refusal: &Refusal) {
    tracing::info!(status = refusal.status, message = %refusal.message, "kube tunnel refused");
    let _ = sender
        .send(binary(tunnel::frame(tunnel::STDOUT, &refusal.to_http())))
        .await;
    let _ = sender
        .send(binary(tunnel::frame(tunnel::CLOSE, &[tunnel::STDOUT])))
        .await;
    let _ = sender.close().await;
}

fn cannot_act(error: &ActionError) -> Refusal {
    let status = match error.status_code() {
        status @ 400..=599 => status,
        _ => 502,
    };
    Refusal::new(
        status,
        if status == 503 {
            "ServiceUnavailable"
        } else {
            "InternalError"
        },
        format!(
            "the agent cannot act as tether-system/tether-kubeconfig: {}",
            crate::actions::chain(error)
        ),
    )
}

/// Where the head ends (after its empty line), if it has.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// A request head as the agent forwards it, still without credentials
/// and `Host`: the request line and the client's other headers.
#[derive(Debug, PartialEq)]
struct Head {
    /// The request's target: path and query.
    path: String,
    request_line: String,
    headers: Vec<(String, Vec<u8>)>,
}

/// Parses `head`; the client's `Authorization`, `Proxy-Authorization` and
/// `Host` are dropped (tetherd drops them too; a device does not rely on
/// it).
fn rewrite_head(head: &[u8]) -> Result<Head, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let bad =
        |why: String| Refusal::new(400, "BadRequest", format!("not an HTTP/1.1 request: {why}"));
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("its head is incomplete".to_owned())),
        Err(error) => return Err(bad(error.to_string())),
    }
    let (Some(method), Some(path)) = (request.method, request.path) else {
        return Err(bad("no request line".to_owned()));
    };
    if !path.starts_with('/') {
        return Err(bad(format!("the target {path:?} is not a path")));
    }
    let headers = request
        .headers
        .iter()
        .filter(|header| {
            !["authorization", "proxy-authorization", "host"]
                .iter()
                .any(|dropped| header.name.eq_ignore_ascii_case(dropped))
        })
        .map(|header| (header.name.to_owned(), header.value.to_vec()))
        .collect();
    Ok(Head {
        path: path.to_owned(),
        request_line: format!("{method} {path} HTTP/1.1"),
        headers,
    })
}

/// The head on the wire, with the API server as `Host` and the account's
/// token.
fn with_credentials(head: Head, access: &Access) -> Result<Vec<u8>, Refusal> {
    let Auth::Token(token) = &access.auth else {
        return Err(Refusal::new(
            500,
            "InternalError",
            "the agent holds no token of tether-system/tether-kubeconfig",
        ));
    };
    let host = access
        .server
        .strip_prefix("https://")
        .unwrap_or(&access.server);
    let mut wire = format!(
        "{}\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n",
        head.request_line
    )
    .into_bytes();
    for (name, value) in head.headers {
        wire.extend_from_slice(name.as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(&value);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    Ok(wire)
}

/// TLS to the API server, trusting only the cluster's CA.
async fn connect(access: &Access) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Refusal> {
    let failed = |what: String| Refusal::new(502, "InternalError", what);
    let url = reqwest::Url::parse(&access.server)
        .map_err(|_| failed(format!("the API server {:?} is not a URL", access.server)))?;
    let host = url
        .host_str()
        .ok_or_else(|| failed(format!("the API server {:?} names no host", access.server)))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port().unwrap_or(443);
    let Some(ca_pem) = &access.ca_pem else {
        return Err(failed(
            "the cluster's credentials name no CA: the agent trusts only the cluster's CA for its API server".to_owned(),
        ));
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut ca_pem.as_slice()).filter_map(Result::ok) {
        let _ = roots.add(certificate);
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| failed(format!("cannot set up TLS: {error}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| failed(format!("{host:?} is not a host name")))?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|error| failed(format!("cannot connect to {}: {error}", access.server)))?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|error| failed(format!("TLS with {} failed: {error}", access.server)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::Mode;

    #[test]
    fn the_client_s_credentials_and_host_are_replaced_by_the_account_s() {
        let head = b"GET /api/v1/nodes?limit=500 HTTP/1.1\r\nHost: kubernetes\r\nauthorization: Bearer user\r\nAccept: application/json\r\nConnection: close\r\n\r\n";
        let end = find_head_end(head).expect("a whole head");
        assert_eq!(end, head.len());
        let access = Access {
            mode: Mode::Cluster,
            cluster_name: "in-cluster".into(),
            server: "https://10.43.0.1:443".into(),
            ca_pem: None,
            auth: Auth::Token("account".into()),
        };
        let wire = with_credentials(rewrite_head(&head[..end]).expect("parses"), &access)
            .expect("a token");
        assert_eq!(
            String::from_utf8(wire).expect("text"),
            "GET /api/v1/nodes?limit=500 HTTP/1.1\r\nHost: 10.43.0.1:443\r\nAuthorization: Bearer account\r\n\
             Accept: application/json\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn garbage_is_a_400_naming_the_problem() {
        for garbage in [
            &b"\x16\x03\x01 hello\r\n\r\n"[..],
            b"GET nodes HTTP/1.1\r\n\r\n",
        ] {
            let refusal = rewrite_head(garbage).expect_err("refused");
            assert_eq!(refusal.status, 400);
            assert!(
                refusal.message.starts_with("not an HTTP/1.1 request"),
                "{}",
                refusal.message
            );
            assert!(
                String::from_utf8_lossy(&refusal.to_http())
                    .starts_with("HTTP/1.1 400 BadRequest\r\n")
            );
        }
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
