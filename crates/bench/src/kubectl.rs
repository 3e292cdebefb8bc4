//! `--mode kubectl`: a real tether-agent in host mode managing the fake
//! Kubernetes API server (`testkit::fake_kube`): its idle RSS, and round
//! trips through tetherd of `send-kubectl` (the agent runs the real
//! `kubectl`, which must be on PATH) and, beside it, `send-kubernetes-api`
//! (the agent's own HTTPS client), one at a time.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::fake_kube::{ADMIN_TOKEN, FakeKubeApi};
use tether_testkit::{Agent, Database, Tetherd};

use crate::{AgentMemory, mib, ms, percentile, round_trip, rss_kib};

pub struct Settings {
    pub database: Database,
    /// Round trips timed per action.
    pub actions: usize,
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let api = FakeKubeApi::start().await?;
    api.add_node("edge-1", &[("InternalIP", "10.0.0.5")])?;
    let dir = tempfile::tempdir().context("creating a dir for the kubeconfig")?;
    let kubeconfig = api.write_kubeconfig(dir.path(), ADMIN_TOKEN)?;
    let kubeconfig = kubeconfig.display().to_string();
    let tetherd = Tetherd::start(settings.database).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_with_env(
        &tetherd,
        &admin,
        "bench-k8s",
        &[
            ("TETHER_AGENT_KUBERNETES", "host"),
            ("TETHER_AGENT_KUBECONFIG", kubeconfig.as_str()),
        ],
    )
    .await?;
    agent.wait_presence(&admin, "online").await?;
    let pid = agent.pid().context("agent runs")?;
    // Idle: after start-up allocations settled, before any action.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = AgentMemory::of(pid)?;

    let actions: [(&str, Value); 2] = [
        (
            "send-kubectl",
            json!({"action": "send-kubectl",
                   "input": {"command": "kubectl", "arguments": ["get", "nodes", "-o", "name"]}}),
        ),
        (
            "send-kubernetes-api",
            json!({"action": "send-kubernetes-api", "input": {"href": "/api/v1/nodes"}}),
        ),
    ];
    println!(
        "tether-bench kubectl: {} round trips each, one at a time, tetherd on {:?}",
        settings.actions, settings.database
    );
    for (name, body) in &actions {
        // One untimed: kubectl's discovery cache and the TLS session warm up.
        round_trip(&admin, &agent.name, body).await?;
        let mut times = Vec::with_capacity(settings.actions);
        for _ in 0..settings.actions {
            times.push(round_trip(&admin, &agent.name, body).await?);
        }
        times.sort();
        println!(
            "  {name:<20} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
            ms(percentile(&times, 50.0)),
            ms(percentile(&times, 99.0)),
            ms(times.last().copied().unwrap_or_default())
        );
    }
    println!(
        "  tether-agent RSS     idle --kubernetes host {:>6.1} MiB   after the actions {:>6.1} MiB",
        mib(idle.rss),
        mib(rss_kib(pid)?)
    );
    println!("  tether-agent idle    {idle}");
    Ok(())
}
