//! The Kubernetes proxy's rules (ADR 0022): which devices' API servers a
//! user may reach through tetherd, and what of a client's request goes on
//! to the device. The HTTP side is `api/kubernetes.rs`.
//!
//! Proxied requests act on the cluster as the ServiceAccount
//! `tether-system/tether-kubeconfig` (bound to `cluster-admin`), the
//! identity `retrieve-kubeconfig` hands out: so a device is reachable
//! only where that opt-in action is enabled.

use axum::http::{HeaderMap, HeaderValue, header};
use tether_proto::api::Device;
use tether_proto::spec::ActionSet;

/// The action whose rights the proxy uses, and which enables it.
pub const ENABLING_ACTION: &str = "retrieve-kubeconfig";

/// Why a device's cluster cannot be reached through tetherd.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(
        "device {0} reports no Kubernetes cluster: its agent must run with --kubernetes cluster (in a pod) or --kubernetes host, and be online"
    )]
    NoCluster(String),
    #[error(
        "kubectl through tether acts with the cluster-admin rights of retrieve-kubeconfig, which device {0} does not accept: enable it with `tether devices actions enable {0} retrieve-kubeconfig`"
    )]
    NotEnabled(String),
    #[error("device {0}'s spec cannot be read: {1}")]
    BadSpec(String, String),
}

impl Refusal {
    /// The HTTP status and the Kubernetes `Status` reason.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Refusal::NoCluster(_) => (503, "ServiceUnavailable"),
            Refusal::NotEnabled(_) => (403, "Forbidden"),
            Refusal::BadSpec(..) => (500, "InternalError"),
        }
    }
}

/// Whether `device` (read with its spec and reported status) may be
/// reached: it manages a cluster and accepts [`ENABLING_ACTION`].
pub fn check(device: &Device) -> Result<(), Refusal> {
    let name = || device.name.clone();
    let manages_cluster = device
        .status
        .as_ref()
        .is_some_and(|status| status.facts.kubernetes.is_some());
    if !manages_cluster {
        return Err(Refusal::NoCluster(name()));
    }
    let set = ActionSet::of(&device.spec.clone().unwrap_or_default())
        .map_err(|error| Refusal::BadSpec(name(), error.to_string()))?;
    if set.accepts(ENABLING_ACTION) {
        Ok(())
    } else {
        Err(Refusal::NotEnabled(name()))
    }
}

/// Headers that describe one connection, not the request (RFC 9110
/// 7.6.1), and the client's credentials for tetherd, which must never
/// reach a device.
const NOT_FORWARDED: [&str; 9] = [
    "authorization",
    "proxy-authorization",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether the client asks to switch protocols (`kubectl exec`,
/// `port-forward`, `attach`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        && headers.contains_key(header::UPGRADE)
}

/// The headers sent on to the device: the client's, without its
/// credentials and hop-by-hop headers, then `Connection: close` (one
/// request per tunnel) or the upgrade the client asked for. The agent
/// sets `Host` and the ServiceAccount's token.
pub fn forwarded_headers(client: &HeaderMap) -> HeaderMap {
    let upgrade = is_upgrade(client).then(|| client.get(header::UPGRADE).cloned());
    let mut headers = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in client {
        let hop_by_hop = NOT_FORWARDED.contains(&name.as_str());
        if !hop_by_hop && name != header::HOST {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::HOST, HeaderValue::from_static("kubernetes"));
    match upgrade.flatten() {
        Some(protocol) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
        None => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    headers
}

/// The headers of the device's answer passed to the client: without the
/// hop-by-hop ones (tetherd frames the body itself), except on a switch
/// of protocols, which needs them.
pub fn returned_headers(device: &HeaderMap, switching: bool) -> HeaderMap {
    if switching {
        return device.clone();
    }
    let mut headers = device.clone();
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
    // A device's answer must not send kubectl elsewhere (its credential
    // plugin would hand the next URL the operator's tetherd token) nor set
    // cookies on tetherd's origin.
    headers.remove(header::LOCATION);
    headers.remove(header::SET_COOKIE);
    headers
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn device(spec: Value, kubernetes: bool) -> Device {
        let facts = if kubernetes {
            json!({"kubernetes": {"mode": "cluster", "cluster": "in-cluster"}})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "name": "edge-1", "labels": {}, "presence": "online", "enrolled": true,
            "lastSeen": null, "agentVersion": null, "createdAt": "2026-12-02T00:00:00Z",
            "spec": spec,
            "status": {"specVersion": 1, "errors": [], "facts": facts, "reportedAt": "2026-12-02T00:00:00Z"}
        }))
        .expect("a device")
    }

    #[test]
    fn a_device_is_reachable_with_a_cluster_and_retrieve_kubeconfig_enabled() {
        let enabled = json!({"actions": {"enabled": ["retrieve-kubeconfig"]}});
        assert_eq!(check(&device(enabled.clone(), true)), Ok(()));
        let refused = check(&device(json!({}), true)).expect_err("not enabled");
        assert_eq!(refused.status(), (403, "Forbidden"));
        assert!(
            refused
                .to_string()
                .contains("tether devices actions enable edge-1 retrieve-kubeconfig"),
            "{refused}"
        );
        let refused = check(&device(enabled, false)).expect_err("no cluster");
        assert_eq!(refused.status().0, 503);
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_behind() {
        let mut client = HeaderMap::new();
        client.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer session"),
        );
        client.insert(header::HOST, HeaderValue::from_static("tetherd:8443"));
        client.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, te"),
        );
        client.insert(header::TE, HeaderValue::from_static("trailers"));
        client.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let sent = forwarded_headers(&client);
        assert_eq!(sent.get(header::AUTHORIZATION), None);
        assert_eq!(sent.get(header::TE), None);
        assert_eq!(sent[header::HOST], "kubernetes");
        assert_eq!(sent[header::CONNECTION], "close");
        assert_eq!(sent[header::ACCEPT], "application/json");

        client.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        client.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        assert!(is_upgrade(&client));
        let sent = forwarded_headers(&client);
        assert_eq!(sent[header::CONNECTION], "Upgrade");
        assert_eq!(sent[header::UPGRADE], "SPDY/3.1");
    }
}
