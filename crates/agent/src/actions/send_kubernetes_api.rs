//! `send-kubernetes-api`: a request to the cluster's API server as the default
//! actions' identity (`crate::kubernetes::operator`); the event carries the
//! API's status code and body.

use reqwest::Method;
use serde_json::Value;

use super::send_api::{Input, relayed};
use super::{ActionError, Answer};
use crate::kubernetes::Client;
use crate::kubernetes::client::Body;

/// The method and the API path; `href` is a path on the API server
/// (`/api/v1/nodes`) or a full URL on it, whose path is taken.
fn parse(input: &Value, server: &str) -> Result<(Method, String, Option<String>), ActionError> {
    let input = Input::read(input)?;
    let path = match input.href.strip_prefix(server) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.to_owned(),
        _ => input.href.clone(),
    };
    if !path.starts_with('/') {
        return Err(ActionError::invalid(
            "$.href",
            format!(
                "{:?} is neither a path on the API server (such as /api/v1/nodes) nor a URL under {server}",
                input.href
            ),
        ));
    }
    let method = input.method()?;
    Ok((method, path, input.request_body))
}

pub async fn run(input: &Value, client: &Client) -> Result<Answer, ActionError> {
    let (method, path, body) = parse(input, &client.access().server)?;
    let reply = client.request(method, &path, body.map(Body::Raw)).await?;
    Ok(relayed(reply.status, &reply.body, reply.truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn href_is_a_path_or_a_url_on_the_api_server() {
        let server = "https://10.43.0.1:443";
        let path = |href: &str| parse(&json!({"href": href}), server).map(|(_, p, _)| p);
        assert_eq!(path("/api/v1/nodes").expect("path"), "/api/v1/nodes");
        assert_eq!(
            path("https://10.43.0.1:443/apis/apps/v1/deployments?limit=1").expect("url"),
            "/apis/apps/v1/deployments?limit=1"
        );
        for bad in [
            "https://example.com/api",
            "api/v1",
            "https://10.43.0.1:4430/x",
        ] {
            let err = path(bad).expect_err(bad);
            assert_eq!(err.status_code(), 400);
            assert!(err.to_string().starts_with("$.href"), "{err}");
        }
        let err =
            parse(&json!({"href": "/x", "requestMethod": "BREW"}), server).expect_err("bad method");
        assert!(err.to_string().starts_with("$.requestMethod"), "{err}");
        let err = parse(&json!({"requestMethod": "GET"}), server).expect_err("no href");
        assert!(err.to_string().contains("href"), "{err}");
    }
}
