//! `retrieve-kubeconfig`: a kubeconfig for a local client, in one of two
//! forms (`through`):
//!
//! - `cluster` (the default): straight to the API server, authenticating
//!   as the ServiceAccount `tether-system/tether-kubeconfig` with a token
//!   that expires after 7 days (the seed: "regenerated every week").
//! - `tether` (ADR 0022): through tetherd's proxy for this device, as
//!   `tether kubeconfig DEVICE` writes it: tetherd's URL and CA, and the
//!   `tether kube-credential` exec plugin for the token, so it holds no
//!   secret. Requests through it act as the same account.
//!
//! The token comes from the TokenRequest API, so it is bound to the
//! ServiceAccount's uid: `refresh: true` deletes and recreates the account,
//! and the API server then refuses every token issued before, which is how
//! the old kubeconfig is revoked (and the tunnels' cached token with it).
//! Without `refresh` a new token is issued and earlier ones stay valid
//! until they expire.
//!
//! The account is bound to the `cluster-admin` ClusterRole: the seed's
//! kubeconfig is for a full local client of the cluster.

use serde::Deserialize;
use serde_json::{Value, json};

use super::ActionError;
use crate::kubernetes::Client;
use crate::kubernetes::admin::{self, AdminToken, NAMESPACE, SERVICE_ACCOUNT};
use crate::kubernetes::kubeconfig::{Kubeconfig, User};

/// 7 days.
pub const TOKEN_SECONDS: u64 = 7 * 24 * 3600;
/// The command a kubeconfig through tether runs for its token: the CLI,
/// found on the client's PATH.
const TETHER_COMMAND: &str = "tether";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    refresh: bool,
    #[serde(default)]
    through: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Yaml,
    Json,
}

/// Where the kubeconfig's client connects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Through {
    /// The cluster's API server, with a 7-day token.
    Cluster,
    /// tetherd's proxy for this device.
    Tether,
}

fn parse(input: &Value) -> Result<(Format, bool, Through), ActionError> {
    let input: Input = serde_json::from_value(input.clone())
        .map_err(|e| ActionError::invalid("$", e.to_string()))?;
    let format = match input.format.as_deref() {
        None | Some("yaml") => Format::Yaml,
        Some("json") => Format::Json,
        Some(other) => {
            return Err(ActionError::invalid(
                "$.format",
                format!("{other:?} is not yaml or json"),
            ));
        }
    };
    let through = match input.through.as_deref() {
        None | Some("cluster") => Through::Cluster,
        Some("tether") => Through::Tether,
        Some(other) => {
            return Err(ActionError::invalid(
                "$.through",
                format!("{other:?} is not cluster or tether"),
            ));
        }
    };
    Ok((format, input.refresh, through))
}

/// What a kubeconfig through tether names: this device and the tetherd it
/// enrolled with.
pub struct Tetherd<'a> {
    pub device: &'a str,
    pub api_url: &'a str,
    pub ca_pem: &'a str,
}

pub async fn run(
    input: &Value,
    client: &Client,
    tetherd: Tetherd<'_>,
    tunnels: &AdminToken,
) -> Result<Value, ActionError> {
    let (format, refresh, through) = parse(input)?;
    admin::ensure_account(client, refresh).await?;
    if refresh {
        tunnels.forget();
    }
    let (kubeconfig, expires_at) = match through {
        Through::Cluster => {
            let (token, expires_at) = admin::issue_token(client, TOKEN_SECONDS).await?;
            let access = client.access();
            let kubeconfig = Kubeconfig::single(
                &access.cluster_name,
                access.cluster(),
                User {
                    token: Some(token),
                    ..User::default()
                },
            );
            (
                serde_json::to_value(&kubeconfig).unwrap_or_default(),
                expires_at,
            )
        }
        // Valid while the user's tether session is.
        Through::Tether => (
            tether_proto::kubeconfig::through_tether(
                tetherd.api_url,
                tetherd.device,
                tetherd.ca_pem.as_bytes(),
                TETHER_COMMAND,
                &[tether_proto::kubeconfig::CREDENTIAL_VERB.to_owned()],
            ),
            Value::Null,
        ),
    };
    let (name, text) = match format {
        Format::Yaml => (
            "yaml",
            serde_yaml::to_string(&kubeconfig).unwrap_or_default(),
        ),
        Format::Json => (
            "json",
            serde_json::to_string_pretty(&kubeconfig).unwrap_or_default(),
        ),
    };
    let mut answer = json!({
        "format": name,
        "kubeconfig": text,
        "serviceAccount": format!("{NAMESPACE}/{SERVICE_ACCOUNT}"),
        "refreshed": refresh,
        "through": match through { Through::Cluster => "cluster", Through::Tether => "tether" },
    });
    if !expires_at.is_null() {
        answer["expiresAt"] = expires_at;
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_yaml_and_the_form_direct_unless_asked_otherwise() {
        assert_eq!(
            parse(&json!({})).expect("valid"),
            (Format::Yaml, false, Through::Cluster)
        );
        assert_eq!(
            parse(&json!({"format": "json", "refresh": true, "through": "tether"})).expect("valid"),
            (Format::Json, true, Through::Tether)
        );
        let err = parse(&json!({"format": "toml"})).expect_err("refused");
        assert!(err.to_string().starts_with("$.format"), "{err}");
        let err = parse(&json!({"through": "vpn"})).expect_err("refused");
        assert!(err.to_string().starts_with("$.through"), "{err}");
        let err = parse(&json!({"refresh": "yes"})).expect_err("refused");
        assert_eq!(err.status_code(), 400);
    }
}
