//! `get-node-ip`: with a cluster, every node's addresses as the API
//! server knows them; on a plain device, this host's name and interfaces.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;
use sysinfo::{IpNetwork, Networks, System};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Address {
    pub interface: String,
    pub ip: IpAddr,
    pub prefix: u8,
    pub family: &'static str,
    pub loopback: bool,
}

/// Flattens interfaces and their networks into a sorted address list.
pub fn addresses<'a>(
    interfaces: impl IntoIterator<Item = (&'a str, &'a [IpNetwork])>,
) -> Vec<Address> {
    let mut list: Vec<Address> = interfaces
        .into_iter()
        .flat_map(|(interface, networks)| {
            networks.iter().map(move |network| Address {
                interface: interface.to_owned(),
                ip: network.addr,
                prefix: network.prefix,
                family: if network.addr.is_ipv4() {
                    "ipv4"
                } else {
                    "ipv6"
                },
                loopback: network.addr.is_loopback(),
            })
        })
        .collect();
    list.sort();
    list
}

/// Every node of the cluster with its `InternalIP`, `ExternalIP` and
/// `Hostname` addresses (and any other the node reports).
pub async fn cluster(client: &crate::kubernetes::Client) -> Result<Value, super::ActionError> {
    let nodes = client
        .json(reqwest::Method::GET, "/api/v1/nodes", None)
        .await?;
    let nodes: Vec<Value> = nodes["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|node| {
            serde_json::json!({
                "name": node["metadata"]["name"],
                "addresses": node["status"]["addresses"].as_array().cloned().unwrap_or_default(),
            })
        })
        .collect();
    Ok(serde_json::json!({
        "cluster": client.access().cluster_name,
        "nodes": nodes,
    }))
}

pub fn run() -> Value {
    // sysinfo reads the addresses with getifaddrs, which this crate may not
    // call itself: unsafe code is forbidden in the workspace.
    let networks = Networks::new_with_refreshed_list();
    let addresses = addresses(
        networks
            .iter()
            .map(|(name, data)| (name.as_str(), data.ip_networks())),
    );
    serde_json::json!({
        "hostname": System::host_name(),
        "addresses": addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(addr: &str, prefix: u8) -> IpNetwork {
        IpNetwork {
            addr: addr.parse().expect("an address"),
            prefix,
        }
    }

    #[test]
    fn addresses_are_flattened_sorted_and_flagged() {
        let lo = [net("127.0.0.1", 8), net("::1", 128)];
        let eth = [net("10.0.0.2", 24)];
        let list = addresses([("lo", &lo[..]), ("eth0", &eth[..])]);
        let json = serde_json::to_value(&list).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!([
                {"interface": "eth0", "ip": "10.0.0.2", "prefix": 24, "family": "ipv4", "loopback": false},
                {"interface": "lo", "ip": "127.0.0.1", "prefix": 8, "family": "ipv4", "loopback": true},
                {"interface": "lo", "ip": "::1", "prefix": 128, "family": "ipv6", "loopback": true},
            ])
        );
    }

    #[test]
    fn this_host_reports_its_loopback_address() {
        let response = run();
        let addresses = response["addresses"].as_array().expect("a list");
        assert!(
            addresses
                .iter()
                .any(|a| a["ip"] == "127.0.0.1" && a["loopback"] == true),
            "{response}"
        );
        assert!(response.get("hostname").is_some());
    }
}
