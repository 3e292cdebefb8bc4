//! The kubeconfig that reaches a device's cluster through tetherd
//! (ADR 0022), written by `tether kubeconfig` and by `retrieve-kubeconfig`
//! with `"through": "tether"`: one shape for both.
//!
//! Its server is tetherd's proxy for the device and its CA tetherd's; its
//! user runs `tether kube-credential`, a `client.authentication.k8s.io`
//! exec plugin that hands kubectl the CLI's current session token, so the
//! file holds no secret and stops working when the session ends.

use base64::Engine as _;
use serde_json::{Value, json};

/// The exec plugin protocol version written and answered.
pub const CREDENTIAL_API_VERSION: &str = "client.authentication.k8s.io/v1beta1";
/// The CLI verb kubectl runs for a token.
pub const CREDENTIAL_VERB: &str = "kube-credential";

/// Where tetherd proxies `device`'s API server, under `api_url`
/// (`https://HOST:PORT`).
pub fn proxy_url(api_url: &str, device: &str) -> String {
    format!(
        "{}/api/v1/devices/{device}/kubernetes",
        api_url.trim_end_matches('/')
    )
}

/// A kubeconfig reaching `device` through the tetherd at `api_url`,
/// trusting `ca_pem` (tetherd's CA), whose user runs `command args…` for
/// its token (the `tether` CLI and `kube-credential` with whatever selects
/// its config).
pub fn through_tether(
    api_url: &str,
    device: &str,
    ca_pem: &[u8],
    command: &str,
    args: &[String],
) -> Value {
    let name = format!("tether-{device}");
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": proxy_url(api_url, device),
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca_pem),
        }}],
        "users": [{"name": name, "user": {"exec": {
            "apiVersion": CREDENTIAL_API_VERSION,
            "command": command,
            "args": args,
            "interactiveMode": "Never",
            "provideClusterInfo": false,
            "installHint": "kubectl reaches this cluster through tether: install the tether CLI and run `tether login`",
        }}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    })
}

/// What `kube-credential` prints: the session's bearer token for kubectl.
pub fn exec_credential(token: &str) -> Value {
    json!({
        "apiVersion": CREDENTIAL_API_VERSION,
        "kind": "ExecCredential",
        "status": {"token": token},
    })
}

/// A Kubernetes `Status` object for an error that happened before (or
/// instead of) the API server's answer, so kubectl prints `message`.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
           "status": "Failure", "message": message, "reason": reason, "code": code})
}

/// Whether kubectl reads the answer to `path` (a request target) raw,
/// showing only "unknown" for an error whose body is not text: its
/// discovery of `/api` and `/apis`. An error there is sent as
/// `text/plain`, which kubectl prints; elsewhere as a [`status`].
pub fn error_as_text(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    matches!(path.trim_end_matches('/'), "/api" | "/apis")
}

/// An error answer's content type and body for a request to `path`.
pub fn error_body(path: &str, code: u16, reason: &str, message: &str) -> (&'static str, String) {
    if error_as_text(path) {
        ("text/plain; charset=utf-8", message.to_owned())
    } else {
        (
            "application/json",
            status(code, reason, message).to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_points_at_the_proxy_and_holds_no_secret() {
        let config = through_tether(
            "https://t.example:8443/",
            "edge-1",
            b"PEM",
            "/usr/bin/tether",
            &[CREDENTIAL_VERB.to_owned()],
        );
        assert_eq!(
            config["clusters"][0]["cluster"]["server"],
            "https://t.example:8443/api/v1/devices/edge-1/kubernetes"
        );
        assert_eq!(
            config["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
        let exec = &config["users"][0]["user"]["exec"];
        assert_eq!(exec["command"], "/usr/bin/tether");
        assert_eq!(exec["args"], json!(["kube-credential"]));
        assert_eq!(config["current-context"], "tether-edge-1");
        assert!(!config.to_string().contains("token"), "{config}");
        assert_eq!(exec_credential("t")["status"]["token"], "t");
    }

    #[test]
    fn discovery_errors_are_text_and_others_a_status() {
        assert_eq!(
            error_body("/api?timeout=32s", 403, "Forbidden", "no"),
            ("text/plain; charset=utf-8", "no".to_owned())
        );
        assert!(error_as_text("/apis"));
        let (kind, body) = error_body("/api/v1/nodes", 403, "Forbidden", "no");
        assert_eq!(kind, "application/json");
        assert!(body.contains(r#""kind":"Status""#), "{body}");
    }
}
