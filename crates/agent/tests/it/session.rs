//! The agent's MQTT session as tetherd records it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tether_testkit::{Agent, Database, Tetherd, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the slow link holds back tetherd's first bytes.
const HELD_BACK: Duration = Duration::from_millis(2500);

/// On a slow link the agent's connect takes seconds, while its other work
/// (the time measurement, the network status) changes what it reports. A
/// change must not abandon the connection half made: tetherd would record
/// a session that ended at once, publish its will, and the operator would
/// see the device go offline and online again at every slow start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_connecting_over_a_slow_link_starts_one_session() -> anyhow::Result<()> {
    let slow_link = TcpListener::bind("127.0.0.1:0").await?;
    let slow_port = slow_link.local_addr()?.port();
    let scratch = tempfile::tempdir()?;
    let config = scratch.path().join("slow-link.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nadvertise_mqtt_url = \"mqtts://localhost:{}\"\n",
            slow_port
        ),
    )?;
    let tetherd =
        Tetherd::start_with(Database::Sqlite, &["--config", &config.to_string_lossy()]).await?;
    let upstream = tetherd
        .mqtt_url
        .rsplit(':')
        .next()
        .context("tetherd's MQTT URL has a port")?
        .to_owned();
    let connections = Arc::new(AtomicUsize::new(0));
    tokio::spawn(hold_back_answers(
        slow_link,
        format!("127.0.0.1:{upstream}"),
        connections.clone(),
    ));

    let admin = tetherd.admin().await?;
    let agent = Agent::enroll(&tetherd, &admin, "slow-starter").await?;
    // tetherd records the session at the CONNECT, the agent at the CONNACK.
    wait_until(
        "the agent online over the slow link",
        Duration::from_secs(30),
        || {
            let online = agent.log().contains("online as slow-starter");
            async move { Ok(online.then_some(())) }
        },
    )
    .await
    .with_context(|| agent.log())?;
    assert!(
        agent
            .log()
            .contains(&format!("connected to mqtts://localhost:{slow_port}")),
        "the agent went through the slow link:\n{}",
        agent.log()
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one connection made:\n{}",
        agent.log()
    );
    let events = admin
        .get("/api/v1/devices/slow-starter/events?limit=100")
        .await?
        .expect_status(200)?;
    let sessions: Vec<&str> = events["items"]
        .as_array()
        .context("events are a list")?
        .iter()
        .filter_map(|e| e["event"].as_str())
        .filter(|e| matches!(*e, "device-online" | "device-offline"))
        .collect();
    assert_eq!(sessions, ["device-online"], "{events:#}\n{}", agent.log());
    Ok(())
}

/// Forwards each connection to `upstream`, the device's bytes at once and
/// tetherd's only once the connection is [`HELD_BACK`] old.
async fn hold_back_answers(listener: TcpListener, upstream: String, connections: Arc<AtomicUsize>) {
    while let Ok((device, _)) = listener.accept().await {
        connections.fetch_add(1, Ordering::SeqCst);
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(tetherd) = TcpStream::connect(&upstream).await else {
                return;
            };
            let opened = tokio::time::Instant::now();
            let (mut from_device, mut to_device) = device.into_split();
            let (mut from_tetherd, mut to_tetherd) = tetherd.into_split();
            let up = tokio::io::copy(&mut from_device, &mut to_tetherd);
            let down = async {
                let mut buf = vec![0; 16 * 1024];
                loop {
                    let n = from_tetherd.read(&mut buf).await?;
                    if n == 0 {
                        return std::io::Result::Ok(());
                    }
                    tokio::time::sleep_until(opened + HELD_BACK).await;
                    to_device.write_all(&buf[..n]).await?;
                }
            };
            let _ = tokio::join!(up, down);
        });
    }
}
