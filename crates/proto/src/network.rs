//! The device's network (issue 19, scope 5): the spec's `network` section,
//! a netplan v2 document the agent applies `netplan try`-style, and the
//! network the agent reports in its status.
//!
//! The document is checked the same way on tetherd and on the agent, as
//! `tether os edit --network-agent` checks a netplan file: version 2, the
//! keys of the subset tether applies, and every address well formed. A key
//! outside the subset is refused by its path rather than ignored, since a
//! setting silently left out of a network change can cut a device off.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::limits::{self, TooLarge};
use crate::spec::SpecError;

/// The section's name in the spec.
pub const SECTION: &str = "network";
/// How long the agent waits for tetherd after a change before it puts the
/// previous configuration back, unless the section says otherwise
/// (`netplan try`'s default).
pub const DEFAULT_ROLLBACK_SECONDS: u32 = 120;
pub const MAX_ROLLBACK_SECONDS: u32 = 3600;
/// At most this many interfaces, in a document and in a report.
pub const MAX_INTERFACES: usize = 32;
/// At most this many addresses per interface, in a document and a report.
pub const MAX_ADDRESSES: usize = 32;
/// At most this many routes, per interface in a document, in all in a report.
pub const MAX_ROUTES: usize = 64;
/// At most this many name servers and search domains each.
pub const MAX_DNS_ENTRIES: usize = 8;
/// Longest name, address or reason in a report.
pub const MAX_TEXT_BYTES: usize = 256;
/// Longest interface name Linux allows (IFNAMSIZ less the NUL).
pub const MAX_INTERFACE_NAME_BYTES: usize = 15;
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65_535;

/// Top-level keys of a netplan document's `network` mapping tether applies.
pub const NETWORK_KEYS: [&str; 3] = ["version", "renderer", "ethernets"];
/// Keys of an ethernet tether applies.
pub const ETHERNET_KEYS: [&str; 8] = [
    "addresses",
    "dhcp4",
    "dhcp6",
    "gateway4",
    "gateway6",
    "routes",
    "nameservers",
    "mtu",
];
pub const ROUTE_KEYS: [&str; 3] = ["to", "via", "metric"];
pub const NAMESERVER_KEYS: [&str; 2] = ["addresses", "search"];
pub const RENDERERS: [&str; 2] = ["networkd", "NetworkManager"];

/// `spec.network` as written: the netplan document (YAML text or the same
/// as a JSON object) and how long the agent waits for tetherd after
/// applying it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSection {
    pub netplan: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_seconds: Option<u32>,
}

/// A `network` section checked and typed: what the agent applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPlan {
    pub ethernets: BTreeMap<String, Ethernet>,
    pub rollback_seconds: u32,
    /// The netplan document as a JSON value (YAML text parsed), for a
    /// device that applies it with netplan itself.
    pub document: Value,
}

/// One `ethernets` entry, by interface name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ethernet {
    pub addresses: Vec<Cidr>,
    pub dhcp4: bool,
    pub dhcp6: bool,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub routes: Vec<Route>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub mtu: Option<u32>,
}

/// A static route: `to` (a network, or `default`), through `via`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// `default`, or a network in CIDR form.
    pub to: String,
    pub via: Option<IpAddr>,
    pub metric: Option<u32>,
}

/// An address with its prefix length, `10.0.0.2/24` or `fd00::2/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} has no prefix length; write ADDRESS/PREFIX"))?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 or IPv6 address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(prefix) if prefix <= max => Ok(Self { address, prefix }),
            _ => Err(format!("{prefix:?} is not a prefix length 0–{max}")),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Checks `spec.network` (at `path`).
pub fn validate(path: &str, section: &Value) -> Result<(), SpecError> {
    parse(path, section).map(drop)
}

/// Checks `spec.network` (at `path`) and types it. Every refusal names the
/// offending key by its path, through the netplan document
/// (`spec.network.netplan.network.ethernets.eth0.addresses[1]`).
pub fn parse(path: &str, section: &Value) -> Result<NetworkPlan, SpecError> {
    let Value::Object(fields) = section else {
        return Err(SpecError::new(
            path,
            "must be a JSON object with netplan (a netplan v2 document) and optionally rollbackSeconds",
        ));
    };
    for field in fields.keys() {
        if !["netplan", "rollbackSeconds"].contains(&field.as_str()) {
            return Err(SpecError::new(
                format!("{path}.{field}"),
                "unknown field; known fields: netplan, rollbackSeconds",
            ));
        }
    }
    let rollback_seconds = match fields.get("rollbackSeconds") {
        None => DEFAULT_ROLLBACK_SECONDS,
        Some(value) => match value.as_u64() {
            Some(n) if (1..=u64::from(MAX_ROLLBACK_SECONDS)).contains(&n) => n as u32,
            _ => {
                return Err(SpecError::new(
                    format!("{path}.rollbackSeconds"),
                    format!("must be a whole number of seconds 1–{MAX_ROLLBACK_SECONDS}"),
                ));
            }
        },
    };
    let path = format!("{path}.netplan");
    let document = match fields.get("netplan") {
        None => return Err(SpecError::new(path, "is missing: a netplan v2 document")),
        Some(Value::String(yaml)) => serde_yaml::from_str::<Value>(yaml)
            .map_err(|e| SpecError::new(&path, format!("is not a YAML document: {e}")))?,
        Some(object @ Value::Object(_)) => object.clone(),
        Some(_) => {
            return Err(SpecError::new(
                path,
                "must be a netplan v2 document, as YAML text or a JSON object",
            ));
        }
    };
    let Some(top) = document.as_object() else {
        return Err(SpecError::new(
            path,
            "must be a mapping with one key, network",
        ));
    };
    if let Some(other) = top.keys().find(|k| *k != "network") {
        return Err(SpecError::new(
            format!("{path}.{other}"),
            "unknown key; a netplan document has one key, network",
        ));
    }
    let path = format!("{path}.network");
    let network = mapping(&path, top.get("network"), &NETWORK_KEYS)?;
    if network.get("version").and_then(Value::as_u64) != Some(2) {
        return Err(SpecError::new(
            format!("{path}.version"),
            "must be 2 (netplan's only version)",
        ));
    }
    if let Some(renderer) = network.get("renderer")
        && !renderer.as_str().is_some_and(|r| RENDERERS.contains(&r))
    {
        return Err(SpecError::new(
            format!("{path}.renderer"),
            format!("must be one of {}", RENDERERS.join(", ")),
        ));
    }
    let path = format!("{path}.ethernets");
    let mut ethernets = BTreeMap::new();
    if let Some(value) = network.get("ethernets") {
        let Value::Object(entries) = value else {
            return Err(SpecError::new(path, "must be a mapping of interface names"));
        };
        if entries.len() > MAX_INTERFACES {
            return Err(SpecError::new(
                path,
                format!(
                    "has {} interfaces, more than the {MAX_INTERFACES} allowed",
                    entries.len()
                ),
            ));
        }
        for (name, entry) in entries {
            let path = format!("{path}.{name}");
            if !is_interface_name(name) {
                return Err(SpecError::new(
                    path,
                    format!(
                        "{name:?} is not an interface name: 1 to {MAX_INTERFACE_NAME_BYTES} bytes, no /, : or space (match rules are not supported; name the interface)"
                    ),
                ));
            }
            ethernets.insert(name.clone(), ethernet(&path, entry)?);
        }
    }
    Ok(NetworkPlan {
        ethernets,
        rollback_seconds,
        document,
    })
}

fn ethernet(path: &str, entry: &Value) -> Result<Ethernet, SpecError> {
    let fields = mapping(path, Some(entry), &ETHERNET_KEYS)?;
    let mut ethernet = Ethernet::default();
    if let Some(value) = fields.get("addresses") {
        let list = list(&format!("{path}.addresses"), value, MAX_ADDRESSES)?;
        for (i, address) in list.iter().enumerate() {
            ethernet
                .addresses
                .push(cidr(&format!("{path}.addresses[{i}]"), address)?);
        }
    }
    for (key, flag) in [
        ("dhcp4", &mut ethernet.dhcp4),
        ("dhcp6", &mut ethernet.dhcp6),
    ] {
        if let Some(value) = fields.get(key) {
            *flag = boolean(value).ok_or_else(|| {
                SpecError::new(format!("{path}.{key}"), "must be true or false (or yes/no)")
            })?;
        }
    }
    if let Some(value) = fields.get("gateway4") {
        match ip(&format!("{path}.gateway4"), value)? {
            IpAddr::V4(gateway) => ethernet.gateway4 = Some(gateway),
            IpAddr::V6(_) => {
                return Err(SpecError::new(
                    format!("{path}.gateway4"),
                    "must be an IPv4 address (IPv6 goes in gateway6)",
                ));
            }
        }
    }
    if let Some(value) = fields.get("gateway6") {
        match ip(&format!("{path}.gateway6"), value)? {
            IpAddr::V6(gateway) => ethernet.gateway6 = Some(gateway),
            IpAddr::V4(_) => {
                return Err(SpecError::new(
                    format!("{path}.gateway6"),
                    "must be an IPv6 address (IPv4 goes in gateway4)",
                ));
            }
        }
    }
    if let Some(value) = fields.get("routes") {
        let routes = list(&format!("{path}.routes"), value, MAX_ROUTES)?;
        for (i, route) in routes.iter().enumerate() {
            let path = format!("{path}.routes[{i}]");
            let fields = mapping(&path, Some(route), &ROUTE_KEYS)?;
            let to = match fields.get("to") {
                None => return Err(SpecError::new(format!("{path}.to"), "is missing")),
                Some(Value::String(to)) if to == "default" => to.clone(),
                Some(to) => cidr(&format!("{path}.to"), to)?.to_string(),
            };
            let via = fields
                .get("via")
                .map(|via| ip(&format!("{path}.via"), via))
                .transpose()?;
            let metric = match fields.get("metric") {
                None => None,
                Some(value) => Some(
                    value
                        .as_u64()
                        .and_then(|m| u32::try_from(m).ok())
                        .ok_or_else(|| {
                            SpecError::new(
                                format!("{path}.metric"),
                                "must be a whole number 0 or more",
                            )
                        })?,
                ),
            };
            ethernet.routes.push(Route { to, via, metric });
        }
    }
    if let Some(value) = fields.get("nameservers") {
        let path = format!("{path}.nameservers");
        let fields = mapping(&path, Some(value), &NAMESERVER_KEYS)?;
        if let Some(value) = fields.get("addresses") {
            let servers = list(&format!("{path}.addresses"), value, MAX_DNS_ENTRIES)?;
            for (i, server) in servers.iter().enumerate() {
                ethernet
                    .nameservers
                    .push(ip(&format!("{path}.addresses[{i}]"), server)?);
            }
        }
        if let Some(value) = fields.get("search") {
            let domains = list(&format!("{path}.search"), value, MAX_DNS_ENTRIES)?;
            for (i, domain) in domains.iter().enumerate() {
                match domain.as_str() {
                    Some(domain) if is_domain(domain) => ethernet.search.push(domain.to_owned()),
                    _ => {
                        return Err(SpecError::new(
                            format!("{path}.search[{i}]"),
                            "must be a domain name (letters, digits, - and .)",
                        ));
                    }
                }
            }
        }
    }
    if let Some(value) = fields.get("mtu") {
        match value.as_u64() {
            Some(mtu) if (u64::from(MIN_MTU)..=u64::from(MAX_MTU)).contains(&mtu) => {
                ethernet.mtu = Some(mtu as u32);
            }
            _ => {
                return Err(SpecError::new(
                    format!("{path}.mtu"),
                    format!("must be a whole number {MIN_MTU}–{MAX_MTU}"),
                ));
            }
        }
    }
    Ok(ethernet)
}

/// `value` as a mapping whose keys are all in `known`.
fn mapping<'a>(
    path: &str,
    value: Option<&'a Value>,
    known: &[&str],
) -> Result<&'a Map<String, Value>, SpecError> {
    let Some(Value::Object(fields)) = value else {
        return Err(SpecError::new(path, "must be a mapping"));
    };
    if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(SpecError::new(
            format!("{path}.{unknown}"),
            format!(
                "unknown or unsupported key; supported keys here: {}",
                known.join(", ")
            ),
        ));
    }
    Ok(fields)
}

fn list<'a>(path: &str, value: &'a Value, max: usize) -> Result<&'a Vec<Value>, SpecError> {
    let Value::Array(items) = value else {
        return Err(SpecError::new(path, "must be a list"));
    };
    if items.len() > max {
        return Err(SpecError::new(
            path,
            format!("has {} entries, more than the {max} allowed", items.len()),
        ));
    }
    Ok(items)
}

fn cidr(path: &str, value: &Value) -> Result<Cidr, SpecError> {
    value
        .as_str()
        .ok_or_else(|| "must be an address with its prefix length, e.g. 10.0.0.2/24".to_owned())
        .and_then(str::parse)
        .map_err(|message| SpecError::new(path, message))
}

fn ip(path: &str, value: &Value) -> Result<IpAddr, SpecError> {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| SpecError::new(path, "must be an IPv4 or IPv6 address"))
}

/// A boolean as netplan reads YAML 1.1 (`yes`/`no`, `on`/`off`), as
/// `tether os edit` does: serde_yaml reads YAML 1.2, where `yes` is text.
fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) => match text.to_ascii_lowercase().as_str() {
            "yes" | "y" | "on" | "true" => Some(true),
            "no" | "n" | "off" | "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME_BYTES
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"/:".contains(&b))
}

fn is_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The device's network as its agent reads it (`ip -j`, `/etc/resolv.conf`),
/// and how the last network change went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkStatus {
    #[serde(default)]
    pub interfaces: Vec<InterfaceStatus>,
    #[serde(default)]
    pub routes: Vec<RouteStatus>,
    #[serde(default)]
    pub dns: DnsStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_apply: Option<LastApply>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InterfaceStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub state: LinkState,
    #[serde(default)]
    pub mtu: u32,
    /// CIDR form, `10.0.0.2/24`.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// The link's operational state, as the kernel reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum LinkState {
    Up,
    Down,
    #[default]
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteStatus {
    /// `default` or a network in CIDR form.
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DnsStatus {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub search: Vec<String>,
}

/// How the last `network` section the agent applied went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LastApply {
    pub state: ApplyState,
    /// Why it was rolled back or failed; what proved it for a kept one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ApplyState {
    /// Applied; the agent waits for proof that tetherd is still reachable.
    Trying,
    /// Applied, and tetherd was reached afterwards.
    Kept,
    /// tetherd could not be reached in time; the previous configuration
    /// is back.
    RolledBack,
    /// Could not be applied; whatever was applied is undone.
    Failed,
}

impl NetworkStatus {
    /// Checks every field against its limit.
    pub fn check_limits(&self) -> Result<(), TooLarge> {
        let text = |field, value: &str| limits::check(field, value.len(), MAX_TEXT_BYTES);
        limits::check(
            "network.interfaces (entries)",
            self.interfaces.len(),
            MAX_INTERFACES,
        )?;
        for interface in &self.interfaces {
            text("network.interfaces[].name", &interface.name)?;
            text(
                "network.interfaces[].mac",
                interface.mac.as_deref().unwrap_or_default(),
            )?;
            limits::check(
                "network.interfaces[].addresses (entries)",
                interface.addresses.len(),
                MAX_ADDRESSES,
            )?;
            for address in &interface.addresses {
                text("network.interfaces[].addresses[]", address)?;
            }
        }
        limits::check("network.routes (entries)", self.routes.len(), MAX_ROUTES)?;
        for route in &self.routes {
            text("network.routes[].destination", &route.destination)?;
            text(
                "network.routes[].gateway",
                route.gateway.as_deref().unwrap_or_default(),
            )?;
            text(
                "network.routes[].interface",
                route.interface.as_deref().unwrap_or_default(),
            )?;
        }
        limits::check(
            "network.dns.servers (entries)",
            self.dns.servers.len(),
            MAX_DNS_ENTRIES,
        )?;
        limits::check(
            "network.dns.search (entries)",
            self.dns.search.len(),
            MAX_DNS_ENTRIES,
        )?;
        for entry in self.dns.servers.iter().chain(&self.dns.search) {
            text("network.dns entry", entry)?;
        }
        if let Some(last) = &self.last_apply {
            limits::check(
                "network.lastApply.reason",
                last.reason.as_ref().map_or(0, String::len),
                crate::spec::ReportedStatus::MAX_ERROR_BYTES,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PATH: &str = "spec.network";

    fn refused(section: Value) -> SpecError {
        parse(PATH, &section).expect_err("refused")
    }

    #[test]
    fn a_yaml_document_and_its_json_form_give_the_same_plan() {
        let yaml = "network:\n  version: 2\n  renderer: networkd\n  ethernets:\n    eth0:\n      addresses: [10.0.0.2/24, \"fd00::2/64\"]\n      gateway4: 10.0.0.1\n      routes:\n        - to: 192.168.5.0/24\n          via: 10.0.0.254\n          metric: 100\n      nameservers:\n        addresses: [1.1.1.1]\n        search: [example.com]\n      mtu: 1400\n      dhcp4: false\n";
        let from_yaml =
            parse(PATH, &json!({"netplan": yaml, "rollbackSeconds": 5})).expect("valid");
        let document: Value = serde_yaml::from_str(yaml).expect("yaml");
        let from_json =
            parse(PATH, &json!({"netplan": document, "rollbackSeconds": 5})).expect("valid");
        assert_eq!(from_yaml, from_json);
        assert_eq!(from_yaml.rollback_seconds, 5);
        let eth0 = &from_yaml.ethernets["eth0"];
        assert_eq!(
            eth0.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.0.0.2/24", "fd00::2/64"]
        );
        assert_eq!(eth0.gateway4, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(eth0.routes[0].to, "192.168.5.0/24");
        assert_eq!(eth0.routes[0].metric, Some(100));
        assert_eq!(eth0.nameservers, [IpAddr::from([1, 1, 1, 1])]);
        assert_eq!(eth0.search, ["example.com"]);
        assert_eq!(eth0.mtu, Some(1400));
        let yes = parse(
            PATH,
            &json!({"netplan": "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: yes\n      dhcp6: off\n"}),
        )
        .expect("YAML 1.1 booleans, as netplan and os edit read them");
        assert!(yes.ethernets["eth0"].dhcp4 && !yes.ethernets["eth0"].dhcp6);
        let defaults =
            parse(PATH, &json!({"netplan": {"network": {"version": 2}}})).expect("valid");
        assert_eq!(defaults.rollback_seconds, DEFAULT_ROLLBACK_SECONDS);
        assert!(defaults.ethernets.is_empty());
    }

    #[test]
    fn each_refusal_names_the_key_by_its_path() {
        let network = |n: Value| json!({"netplan": {"network": n}});
        let eth0 = |e: Value| network(json!({"version": 2, "ethernets": {"eth0": e}}));
        let cases = [
            (json!("x"), "spec.network"),
            (
                json!({"netplan": {"network": {"version": 2}}, "try": 1}),
                "spec.network.try",
            ),
            (json!({}), "spec.network.netplan"),
            (json!({"netplan": 3}), "spec.network.netplan"),
            (
                json!({"netplan": "network: [unclosed"}),
                "spec.network.netplan",
            ),
            (
                json!({"netplan": {"network": {"version": 2}}, "rollbackSeconds": 0}),
                "spec.network.rollbackSeconds",
            ),
            (
                json!({"netplan": {"network": {"version": 2}}, "rollbackSeconds": 3601}),
                "spec.network.rollbackSeconds",
            ),
            (
                json!({"netplan": {"version": 2}}),
                "spec.network.netplan.version",
            ),
            (
                network(json!({"version": 1})),
                "spec.network.netplan.network.version",
            ),
            (network(json!({})), "spec.network.netplan.network.version"),
            (
                network(json!({"version": 2, "wifis": {}})),
                "spec.network.netplan.network.wifis",
            ),
            (
                network(json!({"version": 2, "renderer": "ifupdown"})),
                "spec.network.netplan.network.renderer",
            ),
            (
                network(json!({"version": 2, "ethernets": []})),
                "spec.network.netplan.network.ethernets",
            ),
            (
                network(json!({"version": 2, "ethernets": {"a/b": {}}})),
                "spec.network.netplan.network.ethernets.a/b",
            ),
            (
                network(json!({"version": 2, "ethernets": {"averyverylongname0": {}}})),
                "spec.network.netplan.network.ethernets.averyverylongname0",
            ),
            (
                eth0(json!({"match": {"name": "en*"}})),
                "spec.network.netplan.network.ethernets.eth0.match",
            ),
            (
                eth0(json!({"addresses": "10.0.0.2/24"})),
                "spec.network.netplan.network.ethernets.eth0.addresses",
            ),
            (
                eth0(json!({"addresses": ["10.0.0.2/24", "10.0.0.3"]})),
                "spec.network.netplan.network.ethernets.eth0.addresses[1]",
            ),
            (
                eth0(json!({"addresses": ["10.0.0.300/24"]})),
                "spec.network.netplan.network.ethernets.eth0.addresses[0]",
            ),
            (
                eth0(json!({"addresses": ["10.0.0.2/33"]})),
                "spec.network.netplan.network.ethernets.eth0.addresses[0]",
            ),
            (
                eth0(json!({"dhcp4": "maybe"})),
                "spec.network.netplan.network.ethernets.eth0.dhcp4",
            ),
            (
                eth0(json!({"gateway4": "fd00::1"})),
                "spec.network.netplan.network.ethernets.eth0.gateway4",
            ),
            (
                eth0(json!({"gateway6": "10.0.0.1"})),
                "spec.network.netplan.network.ethernets.eth0.gateway6",
            ),
            (
                eth0(json!({"routes": [{"via": "10.0.0.1"}]})),
                "spec.network.netplan.network.ethernets.eth0.routes[0].to",
            ),
            (
                eth0(json!({"routes": [{"to": "default", "via": "gw"}]})),
                "spec.network.netplan.network.ethernets.eth0.routes[0].via",
            ),
            (
                eth0(json!({"routes": [{"to": "default", "table": 5}]})),
                "spec.network.netplan.network.ethernets.eth0.routes[0].table",
            ),
            (
                eth0(json!({"routes": [{"to": "default", "metric": -1}]})),
                "spec.network.netplan.network.ethernets.eth0.routes[0].metric",
            ),
            (
                eth0(json!({"nameservers": {"addresses": ["dns.example"]}})),
                "spec.network.netplan.network.ethernets.eth0.nameservers.addresses[0]",
            ),
            (
                eth0(json!({"nameservers": {"search": ["a b"]}})),
                "spec.network.netplan.network.ethernets.eth0.nameservers.search[0]",
            ),
            (
                eth0(json!({"mtu": 67})),
                "spec.network.netplan.network.ethernets.eth0.mtu",
            ),
            (
                eth0(json!({"mtu": 65536})),
                "spec.network.netplan.network.ethernets.eth0.mtu",
            ),
        ];
        for (section, path) in cases {
            assert_eq!(refused(section.clone()).path, path, "{section}");
        }
        let error = refused(eth0(json!({"match": {"name": "en*"}})));
        assert!(
            error.message.contains("supported keys here: addresses"),
            "{error}"
        );
        let error = refused(eth0(json!({"addresses": ["10.0.0.3"]})));
        assert!(error.message.contains("no prefix length"), "{error}");
    }

    #[test]
    fn a_status_is_bounded() {
        let mut status = NetworkStatus {
            interfaces: vec![InterfaceStatus {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                state: LinkState::Up,
                mtu: 1500,
                addresses: vec!["10.0.0.2/24".into()],
            }],
            ..NetworkStatus::default()
        };
        assert!(status.check_limits().is_ok());
        status.routes = vec![RouteStatus::default(); MAX_ROUTES + 1];
        assert_eq!(
            status.check_limits().expect_err("too many").field,
            "network.routes (entries)"
        );
        status.routes.clear();
        status.interfaces[0].name = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(status.check_limits().is_err());
    }

    #[test]
    fn a_status_uses_the_contract_names() {
        let status = NetworkStatus {
            last_apply: Some(LastApply {
                state: ApplyState::RolledBack,
                reason: Some("tetherd unreachable".into()),
                at: DateTime::from_timestamp(1_800_000_000, 0).expect("time"),
            }),
            ..NetworkStatus::default()
        };
        let json = serde_json::to_value(&status).expect("json");
        assert_eq!(json["lastApply"]["state"], "rolledBack");
        assert_eq!(json["dns"], json!({"servers": [], "search": []}));
    }
}
