//! The device's network as the kernel has it: `ip -j addr`, `ip -j route`
//! and `ip -j -6 route` from iproute2 (JSON output, present on every
//! device with a network to manage, and the same tool the ip applier uses),
//! and the resolver's `resolv.conf`. The parsers are pure; [`read`] runs
//! the commands.

use std::path::Path;

use serde::Deserialize;
use tether_proto::network::{
    Cidr, DnsStatus, InterfaceStatus, LinkState, MAX_ADDRESSES, MAX_DNS_ENTRIES, MAX_INTERFACES,
    MAX_ROUTES, MAX_TEXT_BYTES, NetworkStatus, RouteStatus,
};

use super::NetworkError;

/// One entry of `ip -j addr`.
#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub operstate: Option<String>,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub link_type: Option<String>,
    #[serde(default)]
    pub addr_info: Vec<AddressInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AddressInfo {
    pub local: String,
    pub prefixlen: u8,
    #[serde(default)]
    pub scope: Option<String>,
}

impl Link {
    /// The addresses a configuration sets: global scope, not the kernel's
    /// link-local ones or loopback's.
    pub fn configured_addresses(&self) -> Vec<Cidr> {
        self.addr_info
            .iter()
            .filter(|a| a.scope.as_deref() == Some("global"))
            .filter_map(|a| format!("{}/{}", a.local, a.prefixlen).parse().ok())
            .collect()
    }
}

/// One entry of `ip -j route` or `ip -j -6 route`.
#[derive(Debug, Clone, Deserialize)]
pub struct RouteEntry {
    pub dst: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dev: Option<String>,
    /// Absent for `boot` (routes added by hand or a script).
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub metric: Option<u32>,
}

impl RouteEntry {
    /// The kernel makes these itself from an interface's addresses; a
    /// configuration never adds or removes them.
    pub fn is_kernel(&self) -> bool {
        self.protocol.as_deref() == Some("kernel")
    }
}

pub fn parse_links(json: &[u8]) -> Result<Vec<Link>, NetworkError> {
    serde_json::from_slice(json).map_err(|e| NetworkError::Output {
        command: "ip -j addr",
        message: e.to_string(),
    })
}

pub fn parse_routes(json: &[u8]) -> Result<Vec<RouteEntry>, NetworkError> {
    // `ip -j route` prints nothing at all for an empty table.
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(json).map_err(|e| NetworkError::Output {
        command: "ip -j route",
        message: e.to_string(),
    })
}

/// `nameserver` and `search` lines of a resolv.conf (the last `search`
/// wins, as for the resolver).
pub fn parse_resolv_conf(text: &str) -> DnsStatus {
    let mut dns = DnsStatus::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.next().map(str::to_owned)),
            Some("search") => dns.search = words.map(str::to_owned).collect(),
            _ => {}
        }
    }
    dns.servers.truncate(MAX_DNS_ENTRIES);
    dns.search.truncate(MAX_DNS_ENTRIES);
    dns.servers.retain(|s| s.len() <= MAX_TEXT_BYTES);
    dns.search.retain(|s| s.len() <= MAX_TEXT_BYTES);
    dns
}

/// The status of `links`, `routes` and `dns`, cut to the report's limits
/// (the first interfaces, addresses and routes the kernel lists).
pub fn status(links: &[Link], routes: &[RouteEntry], dns: DnsStatus) -> NetworkStatus {
    let short = |text: &str| text.len() <= MAX_TEXT_BYTES;
    let interfaces = links
        .iter()
        .filter(|link| short(&link.ifname))
        .take(MAX_INTERFACES)
        .map(|link| InterfaceStatus {
            name: link.ifname.clone(),
            // Loopback's all-zero address is no MAC.
            mac: link
                .address
                .clone()
                .filter(|_| link.link_type.as_deref() != Some("loopback"))
                .filter(|mac| short(mac)),
            state: match link.operstate.as_deref() {
                Some("UP") => LinkState::Up,
                Some("DOWN" | "LOWERLAYERDOWN" | "NOTPRESENT" | "DORMANT") => LinkState::Down,
                _ => LinkState::Unknown,
            },
            mtu: link.mtu,
            addresses: link
                .addr_info
                .iter()
                .map(|a| format!("{}/{}", a.local, a.prefixlen))
                .filter(|a| short(a))
                .take(MAX_ADDRESSES)
                .collect(),
        })
        .collect();
    let routes = routes
        .iter()
        .map(|route| RouteStatus {
            destination: route.dst.clone(),
            gateway: route.gateway.clone(),
            interface: route.dev.clone(),
        })
        .filter(|r| {
            short(&r.destination)
                && r.gateway.as_deref().is_none_or(short)
                && r.interface.as_deref().is_none_or(short)
        })
        .take(MAX_ROUTES)
        .collect();
    NetworkStatus {
        interfaces,
        routes,
        dns,
        last_apply: None,
    }
}

/// Runs `ip ARGS` and returns its standard output.
pub async fn ip(args: &[&str]) -> Result<Vec<u8>, NetworkError> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| NetworkError::Spawn {
            command: format!("ip {}", args.join(" ")),
            source,
        })?;
    if !output.status.success() {
        return Err(NetworkError::Failed {
            command: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

/// Every link with its addresses.
pub async fn links() -> Result<Vec<Link>, NetworkError> {
    parse_links(&ip(&["-j", "addr"]).await?)
}

/// The main table's IPv4 and IPv6 routes.
pub async fn routes() -> Result<Vec<RouteEntry>, NetworkError> {
    let mut routes = parse_routes(&ip(&["-j", "route"]).await?)?;
    routes.extend(parse_routes(&ip(&["-j", "-6", "route"]).await?)?);
    Ok(routes)
}

/// The network now; a resolv.conf that cannot be read means no DNS.
pub async fn read(resolv_conf: &Path) -> Result<NetworkStatus, NetworkError> {
    let dns = tokio::fs::read_to_string(resolv_conf)
        .await
        .map(|text| parse_resolv_conf(&text))
        .unwrap_or_default();
    Ok(status(&links().await?, &routes().await?, dns))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"operstate":"UNKNOWN","link_type":"loopback","address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
        {"ifindex":4,"ifname":"eth0","mtu":1400,"operstate":"UP","link_type":"ether","address":"02:fc:00:00:00:01","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24,"scope":"global"},{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},
        {"ifindex":5,"ifname":"veth1@if6","mtu":1500,"operstate":"LOWERLAYERDOWN","link_type":"ether","address":"02:00:00:00:00:02","addr_info":[]}]"#;
    const ROUTES: &str = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},{"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]}]"#;

    #[test]
    fn ip_json_becomes_the_reported_network() {
        let links = parse_links(ADDR.as_bytes()).expect("parses");
        let routes = parse_routes(ROUTES.as_bytes()).expect("parses");
        let dns = parse_resolv_conf(
            "# x\nnameserver 10.0.0.53\nsearch a.example b.example\nnameserver fd00::53\noptions ndots:2\n",
        );
        let status = status(&links, &routes, dns);
        let eth0 = &status.interfaces[1];
        assert_eq!(eth0.name, "eth0");
        assert_eq!(eth0.mac.as_deref(), Some("02:fc:00:00:00:01"));
        assert_eq!(eth0.state, LinkState::Up);
        assert_eq!(eth0.mtu, 1400);
        assert_eq!(eth0.addresses, ["192.0.2.2/24", "fe80::1/64"]);
        assert_eq!(status.interfaces[0].mac, None, "loopback has no MAC");
        assert_eq!(status.interfaces[0].state, LinkState::Unknown);
        assert_eq!(status.interfaces[2].state, LinkState::Down);
        assert_eq!(status.routes[0].destination, "default");
        assert_eq!(status.routes[0].gateway.as_deref(), Some("192.0.2.1"));
        assert_eq!(status.routes[1].interface.as_deref(), Some("eth0"));
        assert_eq!(status.dns.servers, ["10.0.0.53", "fd00::53"]);
        assert_eq!(status.dns.search, ["a.example", "b.example"]);
        assert!(status.check_limits().is_ok());
        assert_eq!(
            links[1].configured_addresses(),
            ["192.0.2.2/24".parse::<Cidr>().expect("cidr")],
            "link-local addresses are the kernel's"
        );
        assert!(routes[1].is_kernel() && !routes[0].is_kernel());
    }

    #[test]
    fn a_large_network_is_cut_to_the_limits() {
        let links: Vec<Link> = (0..MAX_INTERFACES + 5)
            .map(|i| Link {
                ifname: format!("dummy{i}"),
                address: None,
                operstate: None,
                mtu: 1500,
                link_type: None,
                addr_info: (0..MAX_ADDRESSES + 3)
                    .map(|a| AddressInfo {
                        local: format!("10.{i}.{a}.1"),
                        prefixlen: 24,
                        scope: Some("global".into()),
                    })
                    .collect(),
            })
            .collect();
        let routes: Vec<RouteEntry> = (0..MAX_ROUTES * 2)
            .map(|i| RouteEntry {
                dst: format!("10.99.{i}.0/24"),
                gateway: None,
                dev: Some("dummy0".into()),
                protocol: None,
                metric: None,
            })
            .collect();
        let status = status(&links, &routes, DnsStatus::default());
        assert_eq!(status.interfaces.len(), MAX_INTERFACES);
        assert_eq!(status.interfaces[0].addresses.len(), MAX_ADDRESSES);
        assert_eq!(status.routes.len(), MAX_ROUTES);
        assert!(status.check_limits().is_ok());
        assert!(parse_routes(b"").expect("empty").is_empty());
    }
}
