//! The device's network end to end (issue 19, scope 5): a real agent in a
//! network namespace the test builds, joined to the host by a veth pair,
//! and a real tetherd listening on the host end only. The agent reports
//! its interfaces, routes and DNS; a netplan document that cuts it off
//! from tetherd is rolled back by the agent itself within rollbackSeconds
//! and the reason shows in its status; a valid one is kept. The agent
//! applies with `ip` (netplan.io installs here, but `netplan apply` needs
//! systemd-networkd or NetworkManager running, which this machine has not).

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::netns::NetNs;
use tether_testkit::{Agent, ApiClient, Tetherd, wait_until};

const WAIT: Duration = Duration::from_secs(60);
const ROLLBACK_SECONDS: i64 = 4;

/// A device in its own network namespace and the tetherd it reaches.
/// Fields drop in order: the agent first, the namespace last.
struct Rig {
    agent: Agent,
    admin: ApiClient,
    _tetherd: Tetherd,
    resolv_conf: tempfile::TempDir,
    netns: NetNs,
}

impl Rig {
    async fn start(name: &str) -> anyhow::Result<Self> {
        let netns = NetNs::create()?;
        let tetherd = Tetherd::start_on_host(&netns.host_address().to_string(), &[]).await?;
        let admin = tetherd.admin().await?;
        // The agent's resolv.conf: never the host's.
        let resolv_conf = tempfile::tempdir()?;
        let path = resolv_conf.path().join("resolv.conf");
        std::fs::write(&path, format!("nameserver {}\n", netns.host_address()))?;
        let path = path.to_str().context("UTF-8 path")?;
        let agent = Agent::enroll_in_netns(
            &tetherd,
            &admin,
            name,
            &netns.name,
            &[
                ("TETHER_AGENT_RESOLV_CONF", path),
                ("TETHER_AGENT_NETWORK_STATUS_INTERVAL_SECONDS", "1"),
            ],
        )
        .await?;
        agent.wait_presence(&admin, "online").await?;
        Ok(Self {
            agent,
            admin,
            _tetherd: tetherd,
            resolv_conf,
            netns,
        })
    }

    fn subnet(&self) -> u8 {
        self.netns.subnet
    }

    /// The device's interface inside the namespace, as its status reports it.
    fn interface<'a>(&self, status: &'a Value) -> Option<&'a Value> {
        status["network"]["interfaces"]
            .as_array()?
            .iter()
            .find(|i| i["name"] == self.netns.device_interface.as_str())
    }

    /// Waits until the device's status, through tetherd's API, satisfies
    /// `done`; returns it.
    async fn wait_status(
        &self,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let done = &done;
        let path = format!("/api/v1/devices/{}", self.agent.name);
        wait_until(what, WAIT, || {
            let path = path.clone();
            async move {
                let device = self.admin.get(&path).await?.expect_status(200)?;
                Ok(done(&device["status"]).then(|| device["status"].clone()))
            }
        })
        .await
        .with_context(|| format!("agent log:\n{}", self.agent.log()))
    }

    async fn set_network(&self, section: Value) -> anyhow::Result<tether_testkit::api::Reply> {
        self.admin
            .patch(
                &format!(
                    "/api/v1/devices/{}?updateMask=spec.network",
                    self.agent.name
                ),
                json!({"spec": {"network": section}}),
            )
            .await
    }
}

fn addresses(interface: &Value) -> Vec<&str> {
    interface["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cuts_the_device_off_is_rolled_back_and_the_status_says_why()
-> anyhow::Result<()> {
    let rig = Rig::start("netns-cut").await?;
    let x = rig.subnet();
    let home = format!("10.200.{x}.2/24");

    // The network as the device has it: its veth, its route, its DNS.
    rig.wait_status("the device to report its network", |status| {
        rig.interface(status).is_some_and(|i| {
            addresses(i).contains(&home.as_str()) && i["state"] == "up" && i["mac"].is_string()
        }) && status["network"]["routes"]
            .as_array()
            .is_some_and(|routes| {
                routes.iter().any(|r| {
                    r["destination"] == format!("10.200.{x}.0/24")
                        && r["interface"] == rig.netns.device_interface.as_str()
                })
            })
            && status["network"]["dns"]["servers"] == json!([format!("10.200.{x}.1")])
    })
    .await?;

    // Moving the device to another network leaves tetherd out of reach.
    let yaml = format!(
        "network:\n  version: 2\n  ethernets:\n    {}:\n      addresses: [10.201.{x}.2/24]\n      gateway4: 10.201.{x}.1\n",
        rig.netns.device_interface
    );
    let sent = chrono::Utc::now();
    rig.set_network(json!({"netplan": yaml, "rollbackSeconds": ROLLBACK_SECONDS}))
        .await?
        .expect_status(200)?;
    let status = rig
        .wait_status("the change to be rolled back and reported", |status| {
            status["network"]["lastApply"]["state"] == "rolledBack"
        })
        .await?;
    let last = &status["network"]["lastApply"];
    let reason = last["reason"].as_str().context("a reason")?;
    assert!(
        reason.contains(&format!("not reachable within {ROLLBACK_SECONDS} s")),
        "{reason}"
    );
    let at: chrono::DateTime<chrono::Utc> = serde_json::from_value(last["at"].clone())?;
    let took = at - sent;
    assert!(
        took <= chrono::TimeDelta::seconds(ROLLBACK_SECONDS + 5),
        "rolled back {took} after the change, for a {ROLLBACK_SECONDS} s deadline"
    );
    assert!(
        status["errors"]
            .as_array()
            .context("errors")?
            .iter()
            .any(|e| e["path"] == "spec.network" && e["message"] == reason),
        "the rollback is the network section's error: {}",
        status["errors"]
    );
    let back = addresses(rig.interface(&status).context("the interface")?);
    assert!(
        back.contains(&home.as_str()) && !back.iter().any(|a| a.starts_with("10.201.")),
        "the old address is back, the new one gone: {back:?}"
    );
    let inside = rig.netns.ip(&["-j", "route"])?;
    assert!(
        !inside.contains("10.201."),
        "the new gateway is gone: {inside}"
    );

    // A restart does not try the same document again.
    let mut agent = rig.agent;
    agent.stop().await?;
    let saved = std::fs::read_to_string(agent.state_file("network.json"))?;
    assert!(saved.contains("rolledBack"), "{saved}");
    agent.start()?;
    agent.wait_presence(&rig.admin, "online").await?;
    let rig = Rig { agent, ..rig };
    let again = rig
        .wait_status("the restarted agent to report the same outcome", |status| {
            status["network"]["lastApply"] == *last
        })
        .await?;
    let still = addresses(rig.interface(&again).context("the interface")?);
    assert!(
        still.contains(&home.as_str()) && !still.iter().any(|a| a.starts_with("10.201.")),
        "{still:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_keeps_tetherd_in_reach_is_kept_and_shows_in_the_status() -> anyhow::Result<()>
{
    let rig = Rig::start("netns-keep").await?;
    let x = rig.subnet();
    let device = rig.netns.device_interface.clone();

    // tetherd refuses a malformed document, naming the key.
    let refused = rig
        .set_network(json!({"netplan": {"network": {"version": 2, "ethernets": {
            &device: {"addresses": [format!("10.200.{x}.2")]},
        }}}}))
        .await?
        .expect_status(400)?;
    assert!(
        refused.to_string().contains(&format!(
            "spec.network.netplan.network.ethernets.{device}.addresses[0]"
        )),
        "{refused}"
    );

    // A second address, a smaller MTU and a search domain, as a JSON object.
    rig.set_network(json!({
        "netplan": {"network": {"version": 2, "renderer": "networkd", "ethernets": {
            &device: {
                "addresses": [format!("10.200.{x}.2/24"), format!("10.210.{x}.2/24")],
                "mtu": 1400,
                "nameservers": {"addresses": [format!("10.200.{x}.1")], "search": ["tether.test"]},
            },
        }}},
        "rollbackSeconds": ROLLBACK_SECONDS,
    }))
    .await?
    .expect_status(200)?;
    let status = rig
        .wait_status("the change to be kept and reported", |status| {
            status["network"]["lastApply"]["state"] == "kept"
                && rig.interface(status).is_some_and(|i| i["mtu"] == 1400)
        })
        .await?;
    let interface = rig.interface(&status).context("the interface")?;
    let addresses = addresses(interface);
    for address in [format!("10.200.{x}.2/24"), format!("10.210.{x}.2/24")] {
        assert!(addresses.contains(&address.as_str()), "{addresses:?}");
    }
    assert_eq!(status["network"]["dns"]["search"], json!(["tether.test"]));
    let reason = status["network"]["lastApply"]["reason"]
        .as_str()
        .context("a reason")?;
    assert!(reason.contains("TLS handshake with tetherd"), "{reason}");
    assert!(
        !status["errors"]
            .as_array()
            .context("errors")?
            .iter()
            .any(|e| e["path"] == "spec.network"),
        "{}",
        status["errors"]
    );
    let resolv = std::fs::read_to_string(rig.resolv_conf.path().join("resolv.conf"))?;
    assert!(
        resolv.contains(&format!("nameserver 10.200.{x}.1\nsearch tether.test\n")),
        "{resolv}"
    );
    let link = rig.netns.ip(&["-j", "link", "show", &device])?;
    assert!(link.contains("\"mtu\":1400"), "{link}");
    Ok(())
}
