//! A network namespace joined to the host by a veth pair, for tests that
//! change a device's network: the host side has `10.200.X.1/24`, the
//! device side (inside the namespace) `10.200.X.2/24`. X is picked from
//! the test's process id and moved on while taken, so parallel tests do
//! not collide. Needs root (CAP_NET_ADMIN). The namespace and the veth
//! pair go when the value is dropped, a failed test's too.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

pub struct NetNs {
    /// The namespace's name, for `ip netns exec`.
    pub name: String,
    /// The veth end on the host.
    pub host_interface: String,
    /// The veth end inside the namespace: the device's interface.
    pub device_interface: String,
    /// X of `10.200.X.0/24`.
    pub subnet: u8,
}

/// Runs `ip ARGS`, failing with its error output.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl NetNs {
    /// Builds the namespace and the veth pair, both ends up and addressed.
    pub fn create() -> anyhow::Result<Self> {
        let start = std::process::id() as usize;
        let taken = ip(&["-j", "addr"]).context("listing the host's addresses")?;
        for offset in 0..250 {
            let subnet = ((start + offset) % 250) as u8;
            if taken.contains(&format!("\"10.200.{subnet}.")) {
                continue;
            }
            let name = format!("tether-net-{subnet}");
            // `ip netns add` fails on a name in use: the namespace is the
            // lock on X.
            if ip(&["netns", "add", &name]).is_err() {
                continue;
            }
            let netns = Self {
                name,
                host_interface: format!("tnh{subnet}"),
                device_interface: format!("tnd{subnet}"),
                subnet,
            };
            netns
                .wire()
                .with_context(|| format!("building the veth pair of namespace {}", netns.name))?;
            return Ok(netns);
        }
        bail!("no free 10.200.X.0/24 network and namespace name (is this test running as root?)")
    }

    fn wire(&self) -> anyhow::Result<()> {
        let host = &self.host_interface;
        let device = &self.device_interface;
        let ns = &self.name;
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", device, "netns", ns,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.host_address()),
            "dev",
            host,
        ])?;
        ip(&["link", "set", host, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", self.device_address()),
            "dev",
            device,
        ])?;
        ip(&["-n", ns, "link", "set", device, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.subnet, 1)
    }

    pub fn device_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.subnet, 2)
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; the namespace holds the other.
        let _ = ip(&["link", "del", &self.host_interface]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
