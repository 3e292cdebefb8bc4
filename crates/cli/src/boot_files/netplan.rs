//! Netplan v2 YAML: the network the OS brings up at first boot. The keys
//! checked are the ones an edge device uses (ethernets, wifis, bonds,
//! bridges and VLANs with DHCP, static addresses, routes, name servers);
//! anything else is refused by name rather than passed on unread.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

use super::{Problem, from_yaml};

/// Seed 004's default: DHCP on every `en*` and `eth*` interface.
pub const DEFAULT: &str = "\
network:
  version: 2
  renderer: networkd
  ethernets:
    default-en:
      match:
        name: en*
      dhcp4: yes
    default-eth:
      match:
        name: eth*
      dhcp4: yes
";

/// Linux's limit on an interface name.
const MAX_INTERFACE_NAME: usize = 15;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetplanFile {
    network: Network,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Network {
    version: u32,
    #[serde(default)]
    #[allow(dead_code)] // checked by its type
    renderer: Option<Renderer>,
    #[serde(default)]
    ethernets: BTreeMap<String, Device>,
    #[serde(default)]
    wifis: BTreeMap<String, Device>,
    #[serde(default)]
    bonds: BTreeMap<String, Device>,
    #[serde(default)]
    bridges: BTreeMap<String, Device>,
    #[serde(default)]
    vlans: BTreeMap<String, Device>,
}

#[derive(Debug, Deserialize)]
enum Renderer {
    #[serde(rename = "networkd")]
    Networkd,
    NetworkManager,
}

/// The keys of every device kind; the kind-specific ones (access points,
/// member interfaces, VLAN id and link) are checked against the section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(dead_code)] // the flags and enums are checked by their types
struct Device {
    #[serde(rename = "match")]
    matching: Option<Match>,
    set_name: Option<String>,
    renderer: Option<Renderer>,
    dhcp4: Option<Flag>,
    dhcp6: Option<Flag>,
    dhcp4_overrides: Option<DhcpOverrides>,
    dhcp6_overrides: Option<DhcpOverrides>,
    dhcp_identifier: Option<DhcpIdentifier>,
    accept_ra: Option<Flag>,
    link_local: Option<Vec<LinkLocal>>,
    addresses: Option<Vec<String>>,
    gateway4: Option<String>,
    gateway6: Option<String>,
    nameservers: Option<Nameservers>,
    routes: Option<Vec<Route>>,
    mtu: Option<u32>,
    macaddress: Option<String>,
    optional: Option<Flag>,
    critical: Option<Flag>,
    wakeonlan: Option<Flag>,
    ipv6_privacy: Option<Flag>,
    // wifis
    access_points: Option<BTreeMap<String, AccessPoint>>,
    // bonds and bridges
    interfaces: Option<Vec<String>>,
    parameters: Option<BTreeMap<String, serde_yaml::Value>>,
    // vlans
    id: Option<u32>,
    link: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Match {
    name: Option<String>,
    macaddress: Option<String>,
    driver: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(dead_code)] // checked by their types
struct DhcpOverrides {
    use_dns: Option<Flag>,
    use_ntp: Option<Flag>,
    use_hostname: Option<Flag>,
    use_routes: Option<Flag>,
    use_domains: Option<Flag>,
    use_mtu: Option<Flag>,
    send_hostname: Option<Flag>,
    hostname: Option<String>,
    route_metric: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DhcpIdentifier {
    Mac,
    Duid,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LinkLocal {
    Ipv4,
    Ipv6,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Nameservers {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)] // any domain names
    search: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(dead_code)] // checked by their types
struct Route {
    to: String,
    via: Option<String>,
    from: Option<String>,
    on_link: Option<Flag>,
    metric: Option<u32>,
    table: Option<u32>,
    #[serde(rename = "type")]
    kind: Option<RouteType>,
    scope: Option<RouteScope>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RouteType {
    Unicast,
    Anycast,
    Blackhole,
    Broadcast,
    Local,
    Multicast,
    Nat,
    Prohibit,
    Throw,
    Unreachable,
    Xresolve,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RouteScope {
    Global,
    Link,
    Host,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // checked by their types
struct AccessPoint {
    password: Option<String>,
    mode: Option<ApMode>,
    hidden: Option<Flag>,
    bssid: Option<String>,
    band: Option<String>,
    channel: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ApMode {
    Infrastructure,
    Ap,
    Adhoc,
}

/// A YAML 1.1 boolean as netplan reads it: `yes`/`no`, `on`/`off`,
/// `true`/`false` (serde_yaml reads YAML 1.2, where `yes` is a string).
#[derive(Debug)]
struct Flag(#[allow(dead_code)] bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bool(value) => Ok(Flag(value)),
            Raw::Text(text) => match text.to_ascii_lowercase().as_str() {
                "yes" | "y" | "on" | "true" => Ok(Flag(true)),
                "no" | "n" | "off" | "false" => Ok(Flag(false)),
                _ => Err(serde::de::Error::custom(format!(
                    "{text:?} is not a boolean: write true/false or yes/no"
                ))),
            },
        }
    }
}

/// The bond parameters netplan knows, and the bridge parameters.
const BOND_PARAMETERS: [&str; 19] = [
    "mode",
    "lacp-rate",
    "mii-monitor-interval",
    "min-links",
    "transmit-hash-policy",
    "ad-select",
    "all-slaves-active",
    "arp-interval",
    "arp-ip-targets",
    "arp-validate",
    "arp-all-targets",
    "up-delay",
    "down-delay",
    "fail-over-mac-policy",
    "gratuitous-arp",
    "packets-per-slave",
    "primary-reselect-policy",
    "learn-packet-interval",
    "primary",
];
const BRIDGE_PARAMETERS: [&str; 8] = [
    "ageing-time",
    "priority",
    "port-priority",
    "forward-delay",
    "hello-time",
    "max-age",
    "path-cost",
    "stp",
];
const BOND_MODES: [&str; 7] = [
    "balance-rr",
    "active-backup",
    "balance-xor",
    "broadcast",
    "802.3ad",
    "balance-tlb",
    "balance-alb",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ethernet,
    Wifi,
    Bond,
    Bridge,
    Vlan,
}

/// Checks a netplan file.
pub fn check(text: &str) -> Result<(), Problem> {
    let file: NetplanFile = from_yaml(text)?;
    let network = &file.network;
    if network.version != 2 {
        return Err(Problem::new(
            "network.version",
            format!(
                "{} is not supported: tether takes netplan version 2",
                network.version
            ),
        ));
    }
    let sections = [
        ("ethernets", Kind::Ethernet, &network.ethernets),
        ("wifis", Kind::Wifi, &network.wifis),
        ("bonds", Kind::Bond, &network.bonds),
        ("bridges", Kind::Bridge, &network.bridges),
        ("vlans", Kind::Vlan, &network.vlans),
    ];
    if sections.iter().all(|(_, _, devices)| devices.is_empty()) {
        return Err(Problem::new(
            "network",
            "no interface is configured: the device could not reach tetherd",
        ));
    }
    let defined: Vec<&str> = sections
        .iter()
        .flat_map(|(_, _, devices)| devices.keys().map(String::as_str))
        .collect();
    for (section, kind, devices) in sections {
        for (name, device) in devices {
            let at = format!("network.{section}.{name}");
            check_device(&at, name, kind, device, &defined)?;
        }
    }
    Ok(())
}

fn check_device(
    at: &str,
    name: &str,
    kind: Kind,
    device: &Device,
    defined: &[&str],
) -> Result<(), Problem> {
    let field = |key: &str| format!("{at}.{key}");
    // A physical device without `match` is named by its key; virtual ones
    // always are.
    if (device.matching.is_none() || kind != Kind::Ethernet && kind != Kind::Wifi)
        && (name.is_empty() || name.len() > MAX_INTERFACE_NAME || name.contains(['/', ' ']))
    {
        return Err(Problem::new(
            at,
            format!(
                "{name:?} is not an interface name (1 to {MAX_INTERFACE_NAME} characters, no '/' or space); \
                 for a physical interface add `match`"
            ),
        ));
    }
    if let Some(matching) = &device.matching {
        if matching.name.is_none() && matching.macaddress.is_none() && matching.driver.is_none() {
            return Err(Problem::new(
                field("match"),
                "names nothing to match: give name, macaddress or driver",
            ));
        }
        if let Some(mac) = &matching.macaddress {
            check_mac(&field("match.macaddress"), mac)?;
        }
    }
    if let Some(mac) = &device.macaddress {
        check_mac(&field("macaddress"), mac)?;
    }
    for (i, address) in device.addresses.iter().flatten().enumerate() {
        check_cidr(&format!("{at}.addresses[{i}]"), address)?;
    }
    if let Some(gateway) = &device.gateway4 {
        check_ip(&field("gateway4"), gateway, Some(false))?;
    }
    if let Some(gateway) = &device.gateway6 {
        check_ip(&field("gateway6"), gateway, Some(true))?;
    }
    if let Some(nameservers) = &device.nameservers {
        for (i, address) in nameservers.addresses.iter().enumerate() {
            check_ip(&format!("{at}.nameservers.addresses[{i}]"), address, None)?;
        }
    }
    for (i, route) in device.routes.iter().flatten().enumerate() {
        let route_at = format!("{at}.routes[{i}]");
        if route.to != "default" && route.to.parse::<IpAddr>().is_err() {
            check_cidr(&format!("{route_at}.to"), &route.to)?;
        }
        if let Some(via) = &route.via {
            check_ip(&format!("{route_at}.via"), via, None)?;
        }
        if let Some(from) = &route.from {
            check_ip(&format!("{route_at}.from"), from, None)?;
        }
    }
    if let Some(mtu) = device.mtu
        && !(68..=65535).contains(&mtu)
    {
        return Err(Problem::new(
            field("mtu"),
            format!("{mtu} is not an MTU (68 to 65535)"),
        ));
    }

    let only = |present: bool, key: &str, kinds: &str| {
        if present {
            Err(Problem::new(
                field(key),
                format!("is allowed only under {kinds}"),
            ))
        } else {
            Ok(())
        }
    };
    only(
        kind != Kind::Wifi && device.access_points.is_some(),
        "access-points",
        "wifis",
    )?;
    let bond_or_bridge = matches!(kind, Kind::Bond | Kind::Bridge);
    only(
        !bond_or_bridge && device.interfaces.is_some(),
        "interfaces",
        "bonds and bridges",
    )?;
    only(
        !bond_or_bridge && device.parameters.is_some(),
        "parameters",
        "bonds and bridges",
    )?;
    only(kind != Kind::Vlan && device.id.is_some(), "id", "vlans")?;
    only(kind != Kind::Vlan && device.link.is_some(), "link", "vlans")?;

    match kind {
        Kind::Ethernet => {}
        Kind::Wifi => check_access_points(at, device)?,
        Kind::Bond | Kind::Bridge => {
            for (i, member) in device.interfaces.iter().flatten().enumerate() {
                if !defined.contains(&member.as_str()) || member == name {
                    return Err(Problem::new(
                        format!("{at}.interfaces[{i}]"),
                        format!("{member:?} is not an interface defined in this file"),
                    ));
                }
            }
            let (known, what): (&[&str], _) = if kind == Kind::Bond {
                (&BOND_PARAMETERS, "bond")
            } else {
                (&BRIDGE_PARAMETERS, "bridge")
            };
            for (key, value) in device.parameters.iter().flatten() {
                if !known.contains(&key.as_str()) {
                    return Err(Problem::new(
                        format!("{at}.parameters.{key}"),
                        format!("is not a {what} parameter netplan knows"),
                    ));
                }
                if key == "mode"
                    && !value
                        .as_str()
                        .is_some_and(|mode| BOND_MODES.contains(&mode))
                {
                    return Err(Problem::new(
                        format!("{at}.parameters.mode"),
                        format!("must be one of {}", BOND_MODES.join(", ")),
                    ));
                }
            }
        }
        Kind::Vlan => {
            match device.id {
                Some(id) if id <= 4094 => {}
                Some(id) => {
                    return Err(Problem::new(
                        field("id"),
                        format!("{id} is not a VLAN id (0 to 4094)"),
                    ));
                }
                None => return Err(Problem::new(at, "a VLAN needs an id")),
            }
            match &device.link {
                Some(link) if defined.contains(&link.as_str()) && link != name => {}
                Some(link) => {
                    return Err(Problem::new(
                        field("link"),
                        format!("{link:?} is not an interface defined in this file"),
                    ));
                }
                None => return Err(Problem::new(at, "a VLAN needs a link")),
            }
        }
    }
    Ok(())
}

fn check_access_points(at: &str, device: &Device) -> Result<(), Problem> {
    let points = device
        .access_points
        .as_ref()
        .filter(|points| !points.is_empty());
    let Some(points) = points else {
        return Err(Problem::new(
            at,
            "a wifi needs access-points (the networks to join)",
        ));
    };
    for (ssid, point) in points {
        let point_at = format!("{at}.access-points.{ssid}");
        if ssid.is_empty() || ssid.len() > 32 {
            return Err(Problem::new(point_at, "an SSID is 1 to 32 bytes"));
        }
        if let Some(password) = &point.password {
            let hex_key = password.len() == 64 && password.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_key && !(8..=63).contains(&password.len()) {
                return Err(Problem::new(
                    format!("{point_at}.password"),
                    "a WPA passphrase is 8 to 63 characters (or a 64-digit hex key)",
                ));
            }
        }
        if let Some(bssid) = &point.bssid {
            check_mac(&format!("{point_at}.bssid"), bssid)?;
        }
    }
    Ok(())
}

fn check_ip(at: &str, text: &str, want_v6: Option<bool>) -> Result<(), Problem> {
    match (text.parse::<IpAddr>(), want_v6) {
        (Ok(ip), Some(v6)) if ip.is_ipv6() != v6 => Err(Problem::new(
            at,
            format!("{text:?} is not an IPv{} address", if v6 { 6 } else { 4 }),
        )),
        (Ok(_), _) => Ok(()),
        (Err(_), _) => Err(Problem::new(at, format!("{text:?} is not an IP address"))),
    }
}

fn check_cidr(at: &str, text: &str) -> Result<(), Problem> {
    let valid = text.split_once('/').is_some_and(|(ip, prefix)| {
        match (ip.parse::<IpAddr>(), prefix.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(prefix)) => prefix <= 32,
            (Ok(IpAddr::V6(_)), Ok(prefix)) => prefix <= 128,
            _ => false,
        }
    });
    if valid {
        Ok(())
    } else {
        Err(Problem::new(
            at,
            format!("{text:?} is not an address with a prefix length, such as 192.168.1.30/24"),
        ))
    }
}

fn check_mac(at: &str, text: &str) -> Result<(), Problem> {
    let parts: Vec<_> = text.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        Ok(())
    } else {
        Err(Problem::new(
            at,
            format!("{text:?} is not a MAC address such as 00:11:22:33:44:55"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> String {
        check(text).expect_err(text).to_string()
    }

    #[test]
    fn the_seed_s_examples_pass() {
        check(DEFAULT).expect("the default");
        check(
            "network:\n  version: 2\n  renderer: networkd\n  ethernets:\n    enp2s0:\n      dhcp4: no\n      \
             addresses: [192.168.1.30/24]\n      gateway4: 192.168.1.1\n      nameservers:\n        addresses: [192.168.1.1]\n",
        )
        .expect("static");
        check(
            "network:\n  version: 2\n  renderer: networkd\n  wifis:\n    wlan0:\n      dhcp4: yes\n      \
             access-points:\n        \"NTT-WIFI\":\n          password: \"WIFI-PASSWORD\"\n",
        )
        .expect("wifi");
        check(
            "network:\n  version: 2\n  ethernets:\n    eth0: {dhcp4: false}\n    eth1: {}\n  \
             bonds:\n    bond0:\n      interfaces: [eth0, eth1]\n      parameters: {mode: active-backup}\n  \
             vlans:\n    vlan10: {id: 10, link: bond0, addresses: [\"2001:db8::2/64\"], gateway6: \"2001:db8::1\",\n      \
             routes: [{to: default, via: \"2001:db8::1\"}, {to: 10.0.0.0/8, via: 192.0.2.1, metric: 100}]}\n",
        )
        .expect("bond and vlan");
    }

    #[test]
    fn problems_name_their_field() {
        let head = "network:\n  version: 2\n  ethernets:\n    eth0:\n";
        let cases = [
            (
                "      addresses: [192.168.1.300/24]\n",
                "network.ethernets.eth0.addresses[0]: \"192.168.1.300/24\"",
            ),
            (
                "      addresses: [192.168.1.3]\n",
                "network.ethernets.eth0.addresses[0]: ",
            ),
            (
                "      gateway4: \"2001:db8::1\"\n",
                "network.ethernets.eth0.gateway4: \"2001:db8::1\" is not an IPv4",
            ),
            (
                "      dhcp4: maybe\n",
                "network.ethernets.eth0.dhcp4: \"maybe\" is not a boolean",
            ),
            (
                "      dhcp: yes\n",
                "network.ethernets.eth0.dhcp: unknown field `dhcp`",
            ),
            (
                "      mtu: 20\n",
                "network.ethernets.eth0.mtu: 20 is not an MTU",
            ),
            (
                "      access-points: {x: {}}\n",
                "network.ethernets.eth0.access-points: is allowed only under wifis",
            ),
            (
                "      routes: [{to: 10.0.0.0/33}]\n",
                "network.ethernets.eth0.routes[0].to: ",
            ),
            (
                "      nameservers: {addresses: [dns.example]}\n",
                "network.ethernets.eth0.nameservers.addresses[0]: ",
            ),
        ];
        for (tail, expected) in cases {
            let message = problem(&format!("{head}{tail}"));
            assert!(message.starts_with(expected), "{tail}: {message}");
        }
        assert!(
            problem("network:\n  version: 1\n  ethernets: {eth0: {}}\n")
                .starts_with("network.version: 1")
        );
        assert!(
            problem("network:\n  version: 2\n  renderer: systemd\n  ethernets: {eth0: {}}\n")
                .starts_with("network.renderer: unknown variant `systemd`")
        );
        assert!(problem("network:\n  version: 2\n").starts_with("network: no interface"));
        assert!(problem("network:\n  version: 2\n  wifis: {wlan0: {access-points: {lab: {password: short}}}}\n")
            .starts_with("network.wifis.wlan0.access-points.lab.password: "));
        assert!(
            problem("network:\n  version: 2\n  bonds: {bond0: {interfaces: [eth9]}}\n")
                .starts_with("network.bonds.bond0.interfaces[0]: \"eth9\" is not an interface")
        );
        assert!(problem("network:\n  version: 2\n  ethernets: {eth0: {}}\n  vlans: {v: {id: 5000, link: eth0}}\n")
            .starts_with("network.vlans.v.id: 5000"));
        assert!(
            problem("network:\n  version: 2\n  ethernets: {a-very-long-interface-name: {}}\n")
                .contains("is not an interface name")
        );
        assert!(problem("network: [").contains("line"));
    }
}
