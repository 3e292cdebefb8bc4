//! Requests to the API server: plain HTTPS with reqwest, the cluster's CA
//! as the only root, and the bodies as JSON (ADR 0016).

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::{Access, AccessError, Auth};
use crate::actions::send_api::read_capped;

const TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an answer's body kept: more than any one object (etcd's
/// limit is 1.5 MiB) and than `send-kubernetes-api` relays, so a list of a
/// big cluster cannot take the agent past its memory limit.
const RESPONSE_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no Kubernetes credentials")]
    Access(#[from] AccessError),
    #[error("the Kubernetes credentials are not usable")]
    Credentials(#[source] reqwest::Error),
    #[error("request to the Kubernetes API server {server} failed")]
    Request {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API server answered with an error status; `message` is its
    /// `Status` object's message, or the body.
    #[error("the Kubernetes API answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("the Kubernetes API answered {what} with more than {RESPONSE_LIMIT} bytes")]
    TooLarge { what: String },
    #[error("the Kubernetes API answered {what} that is not the JSON expected")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl KubeError {
    /// The action's status: the API's own 4xx (404 unknown, 409 exists,
    /// 403 forbidden, ...), a 502 for an API server that failed or could
    /// not be reached, a 500 for the agent's own credentials.
    pub fn status_code(&self) -> u16 {
        match self {
            KubeError::Access(_) | KubeError::Credentials(_) => 500,
            KubeError::Api { status, .. } if (400..500).contains(status) => *status,
            KubeError::Api { .. }
            | KubeError::Request { .. }
            | KubeError::TooLarge { .. }
            | KubeError::Decode { .. } => 502,
        }
    }
}

/// An answer of the API server, whatever its status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// At most [`RESPONSE_LIMIT`] bytes.
    pub body: Vec<u8>,
    /// Whether the body was longer and cut.
    pub truncated: bool,
}

/// A request's body and how it is encoded.
pub enum Body {
    Json(Value),
    /// A JSON merge patch (RFC 7386).
    MergePatch(Value),
    /// A strategic merge patch, as `kubectl` sends for built-in types.
    StrategicMergePatch(Value),
    /// Text as the caller gave it: JSON if it parses, else sent as is.
    Raw(String),
}

pub struct Client {
    http: reqwest::Client,
    access: Access,
}

impl Client {
    pub fn new(access: Access) -> Result<Self, KubeError> {
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &access.ca_pem {
            // The cluster's CA only: a public root cannot vouch for an API server.
            builder = builder.tls_built_in_root_certs(false);
            for cert in reqwest::Certificate::from_pem_bundle(ca).map_err(KubeError::Credentials)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Auth::ClientCertificate { cert_pem, key_pem } = &access.auth {
            let mut pem = cert_pem.clone();
            pem.push(b'\n');
            pem.extend_from_slice(key_pem);
            builder = builder
                .identity(reqwest::Identity::from_pem(&pem).map_err(KubeError::Credentials)?);
        }
        let http = builder.build().map_err(KubeError::Credentials)?;
        Ok(Self { http, access })
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Sends `method path` (`/api/v1/...`, query included) and returns the
    /// answer whatever its status; only a request that failed is an error.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<Reply, KubeError> {
        let failed = |source: reqwest::Error| KubeError::Request {
            server: self.access.server.clone(),
            source: source.without_url(),
        };
        let url = format!("{}{path}", self.access.server);
        let mut request = self
            .http
            .request(method, &url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Auth::Token(token) = &self.access.auth {
            request = request.bearer_auth(token);
        }
        let json = |request: reqwest::RequestBuilder, kind: &str, value: &Value| {
            request
                .header(reqwest::header::CONTENT_TYPE, kind)
                .body(value.to_string())
        };
        request = match body {
            None => request,
            Some(Body::Json(value)) => json(request, "application/json", &value),
            Some(Body::MergePatch(value)) => json(request, "application/merge-patch+json", &value),
            Some(Body::StrategicMergePatch(value)) => {
                json(request, "application/strategic-merge-patch+json", &value)
            }
            Some(Body::Raw(text)) => {
                if serde_json::from_str::<Value>(&text).is_ok() {
                    request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
                }
                request.body(text)
            }
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let (body, truncated) = read_capped(response, RESPONSE_LIMIT)
            .await
            .map_err(failed)?;
        Ok(Reply {
            status,
            body,
            truncated,
        })
    }

    /// Like [`Self::request`], for an answer that must be a 2xx JSON object;
    /// any other status is a [`KubeError::Api`] with the API's message.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<Value, KubeError> {
        let reply = self.request(method, path, body).await?;
        if !(200..300).contains(&reply.status) {
            return Err(KubeError::Api {
                status: reply.status,
                message: status_message(&reply.body),
            });
        }
        if reply.truncated {
            return Err(KubeError::TooLarge {
                what: path.to_owned(),
            });
        }
        serde_json::from_slice(&reply.body).map_err(|source| KubeError::Decode {
            what: path.to_owned(),
            source,
        })
    }
}

/// The `message` of a `kind: Status` error body, else the body itself (cut short).
fn status_message(body: &[u8]) -> String {
    if let Ok(status) = serde_json::from_slice::<Value>(body)
        && let Some(message) = status["message"].as_str()
    {
        return message.to_owned();
    }
    let text = String::from_utf8_lossy(body);
    text.chars().take(512).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_testkit::fake_kube::{ADMIN_TOKEN, FakeKubeApi};

    fn access(api: &FakeKubeApi, token: &str) -> Access {
        Access {
            mode: super::super::Mode::Host,
            cluster_name: "fake".into(),
            server: api.url.clone(),
            ca_pem: Some(api.ca_pem.as_bytes().to_vec()),
            auth: Auth::Token(token.into()),
        }
    }

    #[tokio::test]
    async fn requests_reach_the_api_with_the_token_and_errors_carry_its_message() {
        let api = FakeKubeApi::start().await.expect("fake API");
        let client = Client::new(access(&api, ADMIN_TOKEN)).expect("client");
        let namespaces = client
            .json(Method::GET, "/api/v1/namespaces", None)
            .await
            .expect("lists");
        assert!(
            namespaces["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|n| n["metadata"]["name"] == "default")),
            "{namespaces}"
        );
        let err = client
            .json(Method::GET, "/api/v1/namespaces/nope", None)
            .await
            .expect_err("unknown");
        assert_eq!(err.status_code(), 404);
        assert_eq!(
            err.to_string(),
            "the Kubernetes API answered 404: namespaces \"nope\" not found"
        );

        let stranger = Client::new(access(&api, "wrong")).expect("client");
        let reply = stranger
            .request(Method::GET, "/api/v1/nodes", None)
            .await
            .expect("answered");
        assert_eq!(reply.status, 401);
    }

    #[tokio::test]
    async fn a_huge_answer_is_cut_not_held_and_is_no_json() {
        let (url, _server) = crate::actions::send_api::tests::serve_once(
            "HTTP/1.1 200 OK\r\n",
            vec![b' '; RESPONSE_LIMIT + 10],
        )
        .await;
        let server = url.trim_end_matches('/').to_owned();
        let client = Client::new(Access {
            mode: super::super::Mode::Host,
            cluster_name: "fake".into(),
            server: server.clone(),
            ca_pem: None,
            auth: Auth::Token("t".into()),
        })
        .expect("client");
        let reply = client
            .request(Method::GET, "/api/v1/pods", None)
            .await
            .expect("answered");
        assert_eq!((reply.body.len(), reply.truncated), (RESPONSE_LIMIT, true));

        let (url, _server) = crate::actions::send_api::tests::serve_once(
            "HTTP/1.1 200 OK\r\n",
            vec![b' '; RESPONSE_LIMIT + 10],
        )
        .await;
        let mut access = client.access().clone();
        access.server = url.trim_end_matches('/').to_owned();
        let err = Client::new(access)
            .expect("client")
            .json(Method::GET, "/api/v1/pods", None)
            .await
            .expect_err("too large");
        assert_eq!(err.status_code(), 502);
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[tokio::test]
    async fn a_server_with_another_ca_is_refused() {
        let api = FakeKubeApi::start().await.expect("fake API");
        let other = FakeKubeApi::start().await.expect("another fake");
        let mut wrong = access(&api, ADMIN_TOKEN);
        wrong.ca_pem = Some(other.ca_pem.as_bytes().to_vec());
        let err = Client::new(wrong)
            .expect("client")
            .request(Method::GET, "/version", None)
            .await
            .expect_err("untrusted");
        assert_eq!(err.status_code(), 502);
        assert!(crate::actions::chain(&err).contains(&api.url), "{err}");
    }
}
