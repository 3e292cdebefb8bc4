//! The ip applier: a netplan document's static settings made with iproute2
//! (`ip addr`, `ip route`, `ip link`) and the nameservers written to
//! resolv.conf, for devices without netplan and a renderer
//! (systemd-networkd or NetworkManager) running. It sets what the document
//! says for each interface it names: those addresses and no other global
//! ones, those routes and no other non-kernel ones, the MTU, the link up.
//! DHCP needs a DHCP client, which is netplan's renderer's job: a document
//! that turns it on is refused here.
//!
//! Applying and restoring are the same move, towards a target: the
//! document's configuration, or the snapshot's. [`commands`] works out that
//! move and is pure.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tether_proto::network::{Cidr, Ethernet, NetworkPlan};

use super::status::{self, Link, RouteEntry};
use super::{Applier, FileSnapshot, NetworkError, Snapshot};

/// The configuration of one interface the ip applier sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceConfig {
    pub name: String,
    pub addresses: Vec<Cidr>,
    /// None: left as it is.
    pub mtu: Option<u32>,
    pub routes: Vec<RouteConfig>,
}

/// A route through an interface: `to` a network or `default`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteConfig {
    pub to: String,
    pub via: Option<IpAddr>,
    pub metric: Option<u32>,
}

impl RouteConfig {
    fn args(&self, verb: &str, interface: &str) -> Vec<String> {
        let mut args = vec!["route".to_owned(), verb.to_owned(), self.to.clone()];
        // The family of `default` is not in the word itself.
        if self.to == "default" && self.via.is_some_and(|via| via.is_ipv6()) {
            args.insert(0, "-6".to_owned());
        }
        if let Some(via) = self.via {
            args.extend(["via".to_owned(), via.to_string()]);
        }
        args.extend(["dev".to_owned(), interface.to_owned()]);
        if let Some(metric) = self.metric {
            args.extend(["metric".to_owned(), metric.to_string()]);
        }
        args
    }
}

/// What `ethernet` asks of interface `name`.
pub fn target(name: &str, ethernet: &Ethernet) -> InterfaceConfig {
    let gateways = ethernet
        .gateway4
        .map(IpAddr::V4)
        .into_iter()
        .chain(ethernet.gateway6.map(IpAddr::V6))
        .map(|via| RouteConfig {
            to: "default".to_owned(),
            via: Some(via),
            metric: None,
        });
    let routes = ethernet.routes.iter().map(|route| RouteConfig {
        to: route.to.clone(),
        via: route.via,
        metric: route.metric,
    });
    InterfaceConfig {
        name: name.to_owned(),
        addresses: ethernet.addresses.clone(),
        mtu: ethernet.mtu,
        routes: gateways.chain(routes).collect(),
    }
}

/// Interface `name` as the kernel has it now.
pub fn current(name: &str, links: &[Link], routes: &[RouteEntry]) -> Option<InterfaceConfig> {
    let link = links.iter().find(|link| link.ifname == name)?;
    let routes = routes
        .iter()
        .filter(|route| route.dev.as_deref() == Some(name) && !route.is_kernel())
        .map(|route| RouteConfig {
            to: route.dst.clone(),
            via: route.gateway.as_deref().and_then(|g| g.parse().ok()),
            // The kernel gives an IPv6 route without a metric 1024.
            metric: route.metric.filter(|m| {
                !(*m == 1024 && route.gateway.as_deref().is_some_and(|g| g.contains(':')))
            }),
        })
        .collect();
    Some(InterfaceConfig {
        name: name.to_owned(),
        addresses: link.configured_addresses(),
        mtu: Some(link.mtu),
        routes,
    })
}

/// The `ip` invocations that take `current` to `target`, in order: the
/// MTU and the link first, new addresses before old ones go (an address
/// moved within its network never leaves the device without one), stale
/// routes out, then every target route replaced (removing an address takes
/// the routes through it along).
pub fn commands(current: &InterfaceConfig, target: &InterfaceConfig) -> Vec<Vec<String>> {
    let name = &target.name;
    let words = |list: &[&str]| list.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    let mut commands = Vec::new();
    if let Some(mtu) = target.mtu
        && current.mtu != Some(mtu)
    {
        commands.push(words(&[
            "link",
            "set",
            "dev",
            name,
            "mtu",
            &mtu.to_string(),
        ]));
    }
    commands.push(words(&["link", "set", "dev", name, "up"]));
    let have: BTreeSet<&Cidr> = current.addresses.iter().collect();
    let want: BTreeSet<&Cidr> = target.addresses.iter().collect();
    for address in want.difference(&have) {
        commands.push(words(&["addr", "add", &address.to_string(), "dev", name]));
    }
    for route in current.routes.iter().filter(|r| !target.routes.contains(r)) {
        commands.push(route.args("del", name));
    }
    for address in have.difference(&want) {
        commands.push(words(&["addr", "del", &address.to_string(), "dev", name]));
    }
    for route in &target.routes {
        commands.push(route.args("replace", name));
    }
    commands
}

/// A resolv.conf naming `servers` and searching `search`.
pub fn resolv_conf(servers: &[IpAddr], search: &[String]) -> String {
    let mut text = String::from("# Written by tether-agent from the spec's network section.\n");
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    text
}

/// Everyone's resolver reads it.
const RESOLV_CONF_MODE: u32 = 0o644;

/// Applies documents with `ip` and writes nameservers to `resolv_conf`.
pub struct IpApplier {
    pub resolv_conf: PathBuf,
}

impl IpApplier {
    async fn converge(&self, targets: &[InterfaceConfig]) -> Result<(), NetworkError> {
        let links = status::links().await?;
        let routes = status::routes().await?;
        for target in targets {
            let current = current(&target.name, &links, &routes)
                .ok_or_else(|| NetworkError::NoInterface(target.name.clone()))?;
            for args in commands(&current, target) {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                match status::ip(&args).await {
                    Ok(_) => {}
                    // The kernel took the route along with its address.
                    Err(NetworkError::Failed { message, .. })
                        if args.contains(&"del") && message.contains("No such process") => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }
}

impl Applier for IpApplier {
    fn name(&self) -> &'static str {
        "ip"
    }

    async fn snapshot(&self, plan: &NetworkPlan) -> Result<Snapshot, NetworkError> {
        if let Some((name, key)) = plan.ethernets.iter().find_map(|(name, e)| {
            (e.dhcp4 || e.dhcp6).then_some((name, if e.dhcp4 { "dhcp4" } else { "dhcp6" }))
        }) {
            return Err(NetworkError::NeedsNetplan(format!(
                "{name}: {key}: true needs a DHCP client, which netplan's renderer runs; this agent applies with ip (set --network-applier netplan on a device with netplan), which sets static configuration only"
            )));
        }
        let links = status::links().await?;
        let routes = status::routes().await?;
        let interfaces = plan
            .ethernets
            .keys()
            .map(|name| {
                current(name, &links, &routes)
                    .ok_or_else(|| NetworkError::NoInterface(name.clone()))
            })
            .collect::<Result<_, _>>()?;
        let touches_dns = plan
            .ethernets
            .values()
            .any(|e| !e.nameservers.is_empty() || !e.search.is_empty());
        let resolv_conf = if touches_dns {
            Some(FileSnapshot::read(&self.resolv_conf)?)
        } else {
            None
        };
        Ok(Snapshot::Ip {
            interfaces,
            resolv_conf,
        })
    }

    async fn apply(&self, plan: &NetworkPlan) -> Result<(), NetworkError> {
        let targets: Vec<InterfaceConfig> = plan
            .ethernets
            .iter()
            .map(|(name, ethernet)| target(name, ethernet))
            .collect();
        self.converge(&targets).await?;
        let mut servers: Vec<IpAddr> = Vec::new();
        let mut search: Vec<String> = Vec::new();
        for ethernet in plan.ethernets.values() {
            for server in &ethernet.nameservers {
                if !servers.contains(server) {
                    servers.push(*server);
                }
            }
            for domain in &ethernet.search {
                if !search.contains(domain) {
                    search.push(domain.clone());
                }
            }
        }
        if !servers.is_empty() || !search.is_empty() {
            FileSnapshot::Present(resolv_conf(&servers, &search))
                .restore(&self.resolv_conf, RESOLV_CONF_MODE)?;
        }
        Ok(())
    }

    async fn restore(&self, snapshot: &Snapshot) -> Result<(), NetworkError> {
        let Snapshot::Ip {
            interfaces,
            resolv_conf,
        } = snapshot
        else {
            return Err(NetworkError::OtherApplier);
        };
        self.converge(interfaces).await?;
        if let Some(file) = resolv_conf {
            file.restore(&self.resolv_conf, RESOLV_CONF_MODE)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().expect("cidr")).collect()
    }

    fn joined(commands: Vec<Vec<String>>) -> Vec<String> {
        commands.into_iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn moving_an_address_adds_the_new_one_before_the_old_goes() {
        let current = InterfaceConfig {
            name: "veth1".into(),
            addresses: cidrs(&["10.200.3.2/24"]),
            mtu: Some(1500),
            routes: vec![RouteConfig {
                to: "default".into(),
                via: Some("10.200.3.1".parse().expect("ip")),
                metric: None,
            }],
        };
        let plan = tether_proto::network::parse(
            "spec.network",
            &json!({"netplan": {"network": {"version": 2, "ethernets": {"veth1": {
                "addresses": ["10.201.3.2/24"],
                "gateway4": "10.201.3.1",
                "routes": [{"to": "192.168.9.0/24", "via": "10.201.3.254", "metric": 50}],
                "mtu": 1400,
            }}}}}),
        )
        .expect("valid");
        let target = target("veth1", &plan.ethernets["veth1"]);
        assert_eq!(
            joined(commands(&current, &target)),
            [
                "link set dev veth1 mtu 1400",
                "link set dev veth1 up",
                "addr add 10.201.3.2/24 dev veth1",
                "route del default via 10.200.3.1 dev veth1",
                "addr del 10.200.3.2/24 dev veth1",
                "route replace default via 10.201.3.1 dev veth1",
                "route replace 192.168.9.0/24 via 10.201.3.254 dev veth1 metric 50",
            ]
        );
        // Restoring is the same move back; the MTU too.
        let back = joined(commands(&target, &current));
        assert_eq!(back[0], "link set dev veth1 mtu 1500");
        assert!(back.contains(&"addr del 10.201.3.2/24 dev veth1".to_owned()));
        assert!(back.contains(&"route replace default via 10.200.3.1 dev veth1".to_owned()));
    }

    #[test]
    fn an_unchanged_interface_is_only_brought_up_and_its_routes_kept() {
        let config = InterfaceConfig {
            name: "eth0".into(),
            addresses: cidrs(&["10.0.0.2/24", "fd00::2/64"]),
            mtu: Some(1500),
            routes: vec![RouteConfig {
                to: "default".into(),
                via: Some("fd00::1".parse().expect("ip")),
                metric: None,
            }],
        };
        assert_eq!(
            joined(commands(&config, &config)),
            [
                "link set dev eth0 up",
                "-6 route replace default via fd00::1 dev eth0"
            ]
        );
    }

    #[test]
    fn the_current_config_leaves_out_what_the_kernel_made() {
        let links = status::parse_links(
            br#"[{"ifname":"eth0","mtu":1400,"addr_info":[{"local":"10.0.0.2","prefixlen":24,"scope":"global"},{"local":"fe80::1","prefixlen":64,"scope":"link"}]}]"#,
        )
        .expect("parses");
        let routes = status::parse_routes(
            br#"[{"dst":"default","gateway":"10.0.0.1","dev":"eth0"},{"dst":"10.0.0.0/24","dev":"eth0","protocol":"kernel"},{"dst":"default","gateway":"fd00::1","dev":"eth0","metric":1024},{"dst":"10.9.0.0/16","dev":"eth1"}]"#,
        )
        .expect("parses");
        let eth0 = current("eth0", &links, &routes).expect("exists");
        assert_eq!(eth0.addresses, cidrs(&["10.0.0.2/24"]));
        assert_eq!(eth0.mtu, Some(1400));
        assert_eq!(
            eth0.routes,
            [
                RouteConfig {
                    to: "default".into(),
                    via: Some("10.0.0.1".parse().expect("ip")),
                    metric: None
                },
                RouteConfig {
                    to: "default".into(),
                    via: Some("fd00::1".parse().expect("ip")),
                    metric: None
                },
            ]
        );
        assert_eq!(current("eth9", &links, &routes), None);
    }

    #[test]
    fn nameservers_and_search_domains_become_a_resolv_conf() {
        assert_eq!(
            resolv_conf(
                &["10.0.0.53".parse().expect("ip")],
                &["a.example".into(), "b.example".into()]
            ),
            "# Written by tether-agent from the spec's network section.\nnameserver 10.0.0.53\nsearch a.example b.example\n"
        );
    }
}
