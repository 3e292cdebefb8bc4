//! Sparkplug B northbound (issue 18): one edge node's publisher, then a
//! real tetherd with a real agent, on Debian's mosquitto, read back by a
//! Sparkplug host that decodes the Tahu payloads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use prost::Message;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tether_server::sparkplug::node::{BD_SEQ_METRIC, Metrics, REBIRTH_METRIC, Value};
use tether_server::sparkplug::payload::{MetricValue, Payload};
use tether_server::sparkplug::publisher::{
    BdSeqLedger, BrokerTransport, DeviceUpdate, Publisher, SparkplugBroker,
};
use tether_server::sparkplug::topics::{EdgeDeviceId, EdgeNodeId, GroupId};
use tether_testkit::mosquitto::Mosquitto;
use tokio::sync::mpsc;

/// How long a message may take to arrive from the broker.
const ARRIVAL: Duration = Duration::from_secs(10);

/// A Sparkplug host's view: every message under `spBv1.0/`, decoded.
struct Subscriber {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<(String, Payload)>,
}

impl Subscriber {
    async fn connect(port: u16) -> anyhow::Result<Self> {
        Self::connect_as(port, None).await
    }

    /// Connects with a username and password.
    async fn connect_as(port: u16, credentials: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let mut options = MqttOptions::new("sparkplug-host", "127.0.0.1", port);
        if let Some((username, password)) = credentials {
            options.set_credentials(username, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (subscribed, mut on_suback) = mpsc::unbounded_channel();
        let (forward, received) = mpsc::unbounded_channel();
        client.subscribe("spBv1.0/#", QoS::AtLeastOnce).await?;
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                        // The host's own commands come back through its
                        // wildcard; only the edge node's messages count.
                        if topic.contains("/NCMD/") || topic.contains("/DCMD/") {
                            continue;
                        }
                        match Payload::decode(publish.payload.as_ref()) {
                            Ok(payload) => {
                                let _ = forward.send((topic, payload));
                            }
                            Err(error) => panic!("{topic} is not a Sparkplug B payload: {error}"),
                        }
                    }
                    Ok(_) => {}
                    // The broker stopped (the test is over, or failed):
                    // `next` reports the end.
                    Err(_) => break,
                }
            }
        });
        tokio::time::timeout(ARRIVAL, on_suback.recv())
            .await
            .context("no SUBACK from mosquitto")?;
        Ok(Self { client, received })
    }

    async fn next(&mut self) -> anyhow::Result<(String, Payload)> {
        match tokio::time::timeout(ARRIVAL, self.received.recv()).await {
            Ok(Some(message)) => Ok(message),
            Ok(None) => bail!("the subscriber stopped"),
            Err(_) => bail!("no Sparkplug message within {ARRIVAL:?}"),
        }
    }

    /// The next message, which must be on `topic` with sequence number
    /// `seq` (`None`: no sequence number, as NDEATH).
    async fn expect(&mut self, topic: &str, seq: Option<u64>) -> anyhow::Result<Payload> {
        let (received, payload) = self.next().await?;
        anyhow::ensure!(
            received == topic && payload.seq == seq,
            "expected {topic} with seq {seq:?}, got {received} with seq {:?}: {payload:?}",
            payload.seq
        );
        Ok(payload)
    }
}

fn metric<'a>(payload: &'a Payload, name: &str) -> anyhow::Result<&'a MetricValue> {
    payload
        .metrics
        .iter()
        .find(|metric| metric.name.as_deref() == Some(name))
        .and_then(|metric| metric.value.as_ref())
        .with_context(|| format!("no value for metric {name} in {payload:?}"))
}

fn plain(port: u16, client_id: &str) -> SparkplugBroker {
    SparkplugBroker {
        host: "127.0.0.1".to_owned(),
        port,
        client_id: client_id.to_owned(),
        transport: BrokerTransport::Plain,
        credentials: None,
    }
}

/// The `bdSeq`s a publisher recorded, in order; while `refusing`, each
/// record fails as a store that cannot be reached would.
#[derive(Default)]
struct RecordedBdSeqs {
    recorded: Mutex<Vec<u8>>,
    refused: Mutex<u32>,
    refusing: AtomicBool,
}

impl RecordedBdSeqs {
    fn recorded(&self) -> Vec<u8> {
        self.recorded.lock().expect("not poisoned").clone()
    }

    fn refused(&self) -> u32 {
        *self.refused.lock().expect("not poisoned")
    }
}

impl BdSeqLedger for RecordedBdSeqs {
    fn record(
        &self,
        bd_seq: u8,
    ) -> tether_server::device_link::BoxFuture<'_, Result<(), tether_server::store::StoreError>>
    {
        let outcome = if self.refusing.load(Ordering::SeqCst) {
            *self.refused.lock().expect("not poisoned") += 1;
            Err(tether_server::store::StoreError::Corrupt(
                "the test's store is unreachable".to_owned(),
            ))
        } else {
            self.recorded.lock().expect("not poisoned").push(bd_seq);
            Ok(())
        };
        Box::pin(std::future::ready(outcome))
    }
}

fn metrics(entries: &[(&str, Value)]) -> Metrics {
    entries
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_node_is_born_publishes_answers_rebirth_and_dies_on_mosquitto() -> anyhow::Result<()>
{
    let mut broker = Mosquitto::prepare()?;
    broker.start_plain().await?;
    let mut host = Subscriber::connect(broker.device_port).await?;

    let ledger = Arc::new(RecordedBdSeqs::default());
    let publisher = Publisher::spawn(
        GroupId::new("plant")?,
        EdgeNodeId::new("tetherd-1")?,
        5,
        plain(broker.device_port, "tetherd-sparkplug-1"),
        ledger.clone(),
    );
    let device = EdgeDeviceId::new("pump-7")?;
    publisher
        .update(DeviceUpdate::Birth {
            device: device.clone(),
            metrics: metrics(&[
                ("online", Value::Boolean(true)),
                ("cpu", Value::Double(0.5)),
            ]),
        })
        .await?;

    let nbirth = host
        .expect("spBv1.0/plant/NBIRTH/tetherd-1", Some(0))
        .await?;
    assert_eq!(metric(&nbirth, BD_SEQ_METRIC)?, &MetricValue::LongValue(5));
    assert_eq!(ledger.recorded(), [5], "recorded before it connected");
    assert_eq!(
        metric(&nbirth, REBIRTH_METRIC)?,
        &MetricValue::BooleanValue(false)
    );
    let dbirth = host
        .expect("spBv1.0/plant/DBIRTH/tetherd-1/pump-7", Some(1))
        .await?;
    assert_eq!(metric(&dbirth, "online")?, &MetricValue::BooleanValue(true));
    assert_eq!(metric(&dbirth, "cpu")?, &MetricValue::DoubleValue(0.5));

    publisher
        .update(DeviceUpdate::Data {
            device: device.clone(),
            metrics: metrics(&[("cpu", Value::Double(0.75))]),
        })
        .await?;
    let ddata = host
        .expect("spBv1.0/plant/DDATA/tetherd-1/pump-7", Some(2))
        .await?;
    assert_eq!(ddata.metrics.len(), 1);
    assert_eq!(metric(&ddata, "cpu")?, &MetricValue::DoubleValue(0.75));

    // The host asks for a rebirth: a new NBIRTH of the same session, then
    // the device's birth with its current values.
    let ncmd = Payload {
        metrics: vec![Value::Boolean(true).to_metric(REBIRTH_METRIC, 0)],
        ..Payload::default()
    };
    host.client
        .publish(
            "spBv1.0/plant/NCMD/tetherd-1",
            QoS::AtLeastOnce,
            false,
            ncmd.encode_to_vec(),
        )
        .await?;
    let rebirth = host
        .expect("spBv1.0/plant/NBIRTH/tetherd-1", Some(0))
        .await?;
    assert_eq!(metric(&rebirth, BD_SEQ_METRIC)?, &MetricValue::LongValue(5));
    let dbirth = host
        .expect("spBv1.0/plant/DBIRTH/tetherd-1/pump-7", Some(1))
        .await?;
    assert_eq!(metric(&dbirth, "cpu")?, &MetricValue::DoubleValue(0.75));

    publisher
        .update(DeviceUpdate::Death {
            device: device.clone(),
        })
        .await?;
    host.expect("spBv1.0/plant/DDEATH/tetherd-1/pump-7", Some(2))
        .await?;

    // The connection drops: mosquitto publishes the will, the NDEATH of
    // the session the births named.
    drop(publisher);
    let ndeath = host.expect("spBv1.0/plant/NDEATH/tetherd-1", None).await?;
    assert_eq!(metric(&ndeath, BD_SEQ_METRIC)?, &MetricValue::LongValue(5));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_attempt_is_a_new_session_whose_will_matches_its_births()
-> anyhow::Result<()> {
    // A failed connection attempt ends a session: the next takes a new
    // bdSeq with a new will.
    let mut broker = Mosquitto::prepare()?;
    let first_bd_seq = 254;
    let ledger = Arc::new(RecordedBdSeqs::default());
    let publisher = Publisher::spawn(
        GroupId::new("plant")?,
        EdgeNodeId::new("late")?,
        first_bd_seq,
        plain(broker.device_port, "tetherd-sparkplug-late"),
        ledger.clone(),
    );
    // Its first attempt meets a listener that is no broker and hangs up;
    // then the real broker takes the port.
    let impostor = tokio::net::TcpListener::bind(("127.0.0.1", broker.device_port)).await?;
    let (attempt, _) = tokio::time::timeout(ARRIVAL, impostor.accept())
        .await
        .context("no connection attempt from the publisher")??;
    drop(attempt);
    drop(impostor);
    broker.start_plain().await?;
    let mut host = Subscriber::connect(broker.device_port).await?;

    // The births may have gone out before the host subscribed: it asks for
    // a rebirth until one arrives, as a Sparkplug host does.
    let ncmd = Payload {
        metrics: vec![Value::Boolean(true).to_metric(REBIRTH_METRIC, 0)],
        ..Payload::default()
    }
    .encode_to_vec();
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    let nbirth = loop {
        host.client
            .publish(
                "spBv1.0/plant/NCMD/late",
                QoS::AtLeastOnce,
                false,
                ncmd.clone(),
            )
            .await?;
        match tokio::time::timeout(Duration::from_millis(200), host.received.recv()).await {
            Ok(Some((topic, payload))) if topic == "spBv1.0/plant/NBIRTH/late" => break payload,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => bail!("the subscriber stopped"),
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no NBIRTH within {ARRIVAL:?}"
        );
    };
    let MetricValue::LongValue(bd_seq) = metric(&nbirth, BD_SEQ_METRIC)?.clone() else {
        bail!("bdSeq is not a long value: {nbirth:?}");
    };
    // At least one failed attempt before, wrapping after 255.
    assert!(
        bd_seq == 255 || bd_seq < u64::from(first_bd_seq),
        "bdSeq {bd_seq} did not move on from {first_bd_seq}"
    );
    // Every session's bdSeq was recorded, in order, the born one last: a
    // tetherd that crashed now would continue after it.
    let recorded = ledger.recorded();
    let expected: Vec<u8> = (0..recorded.len())
        .map(|i| first_bd_seq.wrapping_add(u8::try_from(i).expect("few sessions")))
        .collect();
    assert_eq!(recorded, expected);
    assert_eq!(recorded.last().map(|last| u64::from(*last)), Some(bd_seq));

    drop(publisher);
    let ndeath = loop {
        let (topic, payload) = host.next().await?;
        if topic == "spBv1.0/plant/NDEATH/late" {
            break payload;
        }
    };
    assert_eq!(
        metric(&ndeath, BD_SEQ_METRIC)?,
        &MetricValue::LongValue(bd_seq)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_bd_seq_cannot_be_recorded_does_not_connect() -> anyhow::Result<()> {
    // Review M7: a bdSeq used but not recorded would be taken again by the
    // next leader after a crash, and a host would match the old session's
    // NDEATH to the new one.
    let mut broker = Mosquitto::prepare()?;
    broker.start_plain().await?;
    let mut host = Subscriber::connect(broker.device_port).await?;
    let ledger = Arc::new(RecordedBdSeqs::default());
    ledger.refusing.store(true, Ordering::SeqCst);
    let publisher = Publisher::spawn(
        GroupId::new("plant")?,
        EdgeNodeId::new("unrecorded")?,
        9,
        plain(broker.device_port, "tetherd-sparkplug-unrecorded"),
        ledger.clone(),
    );
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while ledger.refused() < 3 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the publisher did not try to record its bdSeq again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        host.received.try_recv().is_err(),
        "nothing is published before the bdSeq is recorded"
    );
    ledger.refusing.store(false, Ordering::SeqCst);
    let nbirth = host
        .expect("spBv1.0/plant/NBIRTH/unrecorded", Some(0))
        .await?;
    assert_eq!(metric(&nbirth, BD_SEQ_METRIC)?, &MetricValue::LongValue(9));
    assert_eq!(ledger.recorded(), [9]);
    drop(publisher);
    Ok(())
}

/// The host's view of one edge node's messages: every message after an
/// NBIRTH must take the next `seq` (mod 256) until the next NBIRTH or
/// NDEATH, whatever the test waits for.
struct NodeWatch {
    subscriber: Subscriber,
    prefix: String,
    last_seq: Option<u64>,
}

/// How long tetherd may take to publish a change: a few passes.
const PUBLISHED: Duration = Duration::from_secs(30);

impl NodeWatch {
    fn new(subscriber: Subscriber, group: &str) -> Self {
        Self {
            subscriber,
            prefix: format!("spBv1.0/{group}/"),
            last_seq: None,
        }
    }

    /// Skips messages until one on `topic`, checking the sequence of all.
    async fn until(&mut self, topic: &str) -> anyhow::Result<Payload> {
        let deadline = tokio::time::Instant::now() + PUBLISHED;
        loop {
            let (received, payload) =
                match tokio::time::timeout_at(deadline, self.subscriber.received.recv()).await {
                    Ok(Some(message)) => message,
                    Ok(None) => bail!("the subscriber stopped"),
                    Err(_) => bail!("no {topic} within {PUBLISHED:?}"),
                };
            if !received.starts_with(&self.prefix) {
                continue;
            }
            if received.contains("/NBIRTH/") {
                anyhow::ensure!(payload.seq == Some(0), "NBIRTH with seq {:?}", payload.seq);
                self.last_seq = Some(0);
            } else if received.contains("/NDEATH/") {
                anyhow::ensure!(payload.seq.is_none(), "NDEATH with a seq: {payload:?}");
                self.last_seq = None;
            } else {
                let expected = self.last_seq.map(|last| (last + 1) % 256);
                anyhow::ensure!(
                    payload.seq.is_some() && payload.seq == expected,
                    "{received} has seq {:?}, expected {expected:?}",
                    payload.seq
                );
                self.last_seq = payload.seq;
            }
            if received == topic {
                return Ok(payload);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tetherd_publishes_the_fleet_over_tls_answers_rebirth_and_continues_bd_seq()
-> anyhow::Result<()> {
    use serde_json::json;
    use tether_testkit::mosquitto::{SPARKPLUG_HOST_PASSWORD, SPARKPLUG_HOST_USER};
    use tether_testkit::{Agent, Database, Tetherd, wait_until};

    let mut broker = Mosquitto::prepare()?;
    let section = broker.start_sparkplug_tls().await?;
    let host = Subscriber::connect_as(
        broker.tetherd_port,
        Some((SPARKPLUG_HOST_USER, SPARKPLUG_HOST_PASSWORD)),
    )
    .await?;
    let mut host = NodeWatch::new(host, "plant");
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        format!("{section}group_id = \"plant\"\nedge_node_id = \"fleet\"\ninterval_seconds = 1\n"),
    )?;
    let config = config.to_string_lossy().into_owned();
    let mut tetherd = Tetherd::start_with(Database::Sqlite, &["--config", &config]).await?;
    let admin = tetherd.admin().await?;
    let mut agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;

    // The node is born with its first device, bdSeq 0 on a new store.
    let nbirth = host.until("spBv1.0/plant/NBIRTH/fleet").await?;
    assert_eq!(metric(&nbirth, BD_SEQ_METRIC)?, &MetricValue::LongValue(0));
    assert_eq!(
        metric(&nbirth, REBIRTH_METRIC)?,
        &MetricValue::BooleanValue(false)
    );
    let dbirth = host.until("spBv1.0/plant/DBIRTH/fleet/edge-1").await?;
    assert!(
        matches!(metric(&dbirth, "Tether/Agent Version")?, MetricValue::StringValue(v) if !v.is_empty()),
        "{dbirth:?}"
    );
    let declared = dbirth
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("Host/cpu_percent"))
        .context("Host/cpu_percent declared in the DBIRTH")?;
    assert_eq!(declared.datatype, Some(10), "Double");

    // Samples every second: DDATA with only the changed values.
    admin
        .patch(
            "/api/v1/devices/edge-1",
            json!({"spec": {"metricsConfig": {"intervalSeconds": 1}}}),
        )
        .await?
        .expect_status(200)?;
    let ddata = host.until("spBv1.0/plant/DDATA/fleet/edge-1").await?;
    assert!(
        !ddata.metrics.is_empty() && ddata.metrics.len() < dbirth.metrics.len(),
        "DDATA carries the changes, not every metric: {ddata:?}"
    );
    let cpu = loop {
        if let Ok(MetricValue::DoubleValue(cpu)) = metric(&ddata, "Host/cpu_percent") {
            break *cpu;
        }
        let ddata = host.until("spBv1.0/plant/DDATA/fleet/edge-1").await?;
        if let Ok(MetricValue::DoubleValue(cpu)) = metric(&ddata, "Host/cpu_percent") {
            break *cpu;
        }
    };
    assert!((0.0..=100.0).contains(&cpu), "cpu {cpu}");

    // A device whose label is no Sparkplug id is left out, with the reason.
    admin
        .post(
            "/api/v1/devices",
            json!({"name": "edge-2", "labels": {"sparkplug.tether.io/node": "line/3"}}),
        )
        .await?
        .expect_status(201)?;
    wait_until("the refused device in the log", PUBLISHED, || async {
        Ok(tetherd
            .log()
            .contains("leaving a device out of Sparkplug")
            .then_some(()))
    })
    .await?;
    let log = tetherd.log();
    let refusal = log
        .lines()
        .find(|line| line.contains("leaving a device out of Sparkplug"))
        .context("the refusal")?;
    assert!(
        refusal.contains("edge-2")
            && refusal.contains("line/3")
            && refusal.contains("contains '/'"),
        "{refusal}"
    );

    // A garbage NCMD is logged and ignored; a Rebirth is answered.
    host.subscriber
        .client
        .publish(
            "spBv1.0/plant/NCMD/fleet",
            QoS::AtLeastOnce,
            false,
            b"\x0a\xff not protobuf".to_vec(),
        )
        .await?;
    wait_until("the ignored NCMD in the log", PUBLISHED, || async {
        Ok(tetherd.log().contains("ignoring an NCMD").then_some(()))
    })
    .await?;
    let ncmd = Payload {
        metrics: vec![Value::Boolean(true).to_metric(REBIRTH_METRIC, 0)],
        ..Payload::default()
    };
    host.subscriber
        .client
        .publish(
            "spBv1.0/plant/NCMD/fleet",
            QoS::AtLeastOnce,
            false,
            ncmd.encode_to_vec(),
        )
        .await?;
    let rebirth = host.until("spBv1.0/plant/NBIRTH/fleet").await?;
    assert_eq!(metric(&rebirth, BD_SEQ_METRIC)?, &MetricValue::LongValue(0));
    // Every device's birth follows, by name, with the node's monitor.
    host.until("spBv1.0/plant/DBIRTH/fleet/edge-1").await?;
    let monitor = host
        .until("spBv1.0/plant/DBIRTH/fleet/fleet:monitor")
        .await?;
    assert_eq!(
        metric(&monitor, "Alerts/Firing")?,
        &MetricValue::LongValue(0)
    );

    // The monitor raises an alert on edge-1 (here straight in tetherd's
    // store): the monitor device is born again with it; resolved, it
    // turns false.
    let store = tether_server::store::Store::connect(&format!(
        "sqlite://{}",
        tetherd.data_dir().join("tether.db").display()
    ))
    .await?;
    let edge_1 = tether_proto::DeviceId::new("edge-1")?;
    store
        .raise_alert(
            &tether_server::store::NewAlert {
                rule: tether_proto::alerts::RULE_DEVICE_SILENT.to_owned(),
                device: edge_1.clone(),
                severity: tether_proto::alerts::Severity::Critical,
                summary: "edge-1 went silent".to_owned(),
                labels: Default::default(),
            },
            chrono::Utc::now(),
        )
        .await?;
    let monitor = host
        .until("spBv1.0/plant/DBIRTH/fleet/fleet:monitor")
        .await?;
    assert_eq!(
        metric(&monitor, "Alerts/device_silent/edge-1")?,
        &MetricValue::BooleanValue(true)
    );
    assert_eq!(
        metric(&monitor, "Alerts/Firing")?,
        &MetricValue::LongValue(1)
    );
    store
        .resolve_alert(
            tether_proto::alerts::RULE_DEVICE_SILENT,
            &edge_1,
            chrono::Utc::now(),
        )
        .await?;
    let monitor = host
        .until("spBv1.0/plant/DDATA/fleet/fleet:monitor")
        .await?;
    assert_eq!(
        metric(&monitor, "Alerts/device_silent/edge-1")?,
        &MetricValue::BooleanValue(false)
    );
    assert_eq!(
        metric(&monitor, "Alerts/Firing")?,
        &MetricValue::LongValue(0)
    );

    // The agent stops: its device dies.
    agent.stop().await?;
    let ddeath = host.until("spBv1.0/plant/DDEATH/fleet/edge-1").await?;
    assert!(ddeath.metrics.is_empty());

    // tetherd is killed: the broker publishes its will, the NDEATH of the
    // session the births named.
    tetherd.kill();
    let ndeath = host.until("spBv1.0/plant/NDEATH/fleet").await?;
    assert_eq!(metric(&ndeath, BD_SEQ_METRIC)?, &MetricValue::LongValue(0));

    // Restarted, it continues bdSeq from the store.
    tetherd.start_again().await?;
    let nbirth = host.until("spBv1.0/plant/NBIRTH/fleet").await?;
    assert_eq!(metric(&nbirth, BD_SEQ_METRIC)?, &MetricValue::LongValue(1));
    tetherd.kill();
    let ndeath = host.until("spBv1.0/plant/NDEATH/fleet").await?;
    assert_eq!(metric(&ndeath, BD_SEQ_METRIC)?, &MetricValue::LongValue(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_over_ten_thousand_devices_sends_only_what_changed() -> anyhow::Result<()> {
    use tether_proto::{DeviceId, Presence};
    use tether_server::cluster::ReplicaId;
    use tether_server::sparkplug::config::{SparkplugAuth, SparkplugConfig};
    use tether_server::sparkplug::service::Northbound;
    use tether_server::store::Store;

    const DEVICES: usize = 10_000;
    let mut broker = Mosquitto::prepare()?;
    broker.start_plain().await?;
    let mut host = Subscriber::connect(broker.device_port).await?;
    let store = Store::connect("sqlite::memory:").await?;
    let now = chrono::Utc::now();
    let names: Vec<DeviceId> = (0..DEVICES)
        .map(|i| DeviceId::new(format!("d-{i:05}")))
        .collect::<Result<_, _>>()?;
    let devices: Vec<_> = names
        .iter()
        .map(|name| (name.clone(), Default::default()))
        .collect();
    store.create_devices(&devices, now).await?;
    for name in &names {
        store.set_presence(name, Presence::Online, now).await?;
    }
    let config = SparkplugConfig {
        host: "127.0.0.1".to_owned(),
        port: broker.device_port,
        ca_file: None,
        auth: SparkplugAuth::Anonymous,
        group: GroupId::new("plant")?,
        node: EdgeNodeId::new("fleet")?,
        group_label: "sparkplug.tether.io/group".to_owned(),
        node_label: "sparkplug.tether.io/node".to_owned(),
        interval: Duration::from_secs(10),
    };
    let data_dir = tempfile::tempdir()?;
    let replica = ReplicaId::load_or_create(data_dir.path())?;
    let northbound = Northbound::new(store.clone(), &config, &replica)?;

    let started = std::time::Instant::now();
    let first = northbound.pass().await?;
    let first_took = started.elapsed();
    assert_eq!(first.devices, DEVICES + 1, "and the monitor device");
    assert_eq!(first.updates, DEVICES + 1, "a birth each");
    let mut births = 0;
    let mut last_seq = 0;
    while births < DEVICES + 1 {
        let (topic, payload) = host.next().await?;
        if topic.contains("/DBIRTH/") {
            births += 1;
            last_seq = payload.seq.context("a seq")?;
        }
    }

    // Nothing changed: nothing is sent.
    let started = std::time::Instant::now();
    let second = northbound.pass().await?;
    let second_took = started.elapsed();
    assert_eq!(second.updates, 0);
    eprintln!(
        "Sparkplug pass over {DEVICES} devices: first (all births) {first_took:?}, unchanged {second_took:?}"
    );

    // One device goes offline: the next message is its death, numbered
    // right after the births (nothing else went out between).
    store
        .set_presence(&names[4_242], Presence::Offline, now)
        .await?;
    let third = northbound.pass().await?;
    assert_eq!(third.updates, 1);
    let ddeath = host
        .expect(
            "spBv1.0/plant/DDEATH/fleet/d-04242",
            Some((last_seq + 1) % 256),
        )
        .await?;
    assert!(ddeath.metrics.is_empty());

    // A label moves a device to another edge node: its death on this one,
    // a new node born with it and its own monitor device.
    store
        .set_labels(
            &names[7],
            &[("sparkplug.tether.io/node".to_owned(), "line-2".to_owned())].into(),
        )
        .await?;
    let moved = northbound.pass().await?;
    assert_eq!(moved.nodes, 2);
    assert_eq!(
        moved.updates, 3,
        "a death, a birth, the new monitor's birth"
    );
    let mut wanted = vec![
        "spBv1.0/plant/DDEATH/fleet/d-00007",
        "spBv1.0/plant/NBIRTH/line-2",
        "spBv1.0/plant/DBIRTH/line-2/d-00007",
        "spBv1.0/plant/DBIRTH/line-2/line-2:monitor",
    ];
    while !wanted.is_empty() {
        let (topic, _) = host.next().await?;
        wanted.retain(|want| *want != topic);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tetherd_refuses_an_insecure_broker_or_a_missing_file_naming_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tetherd = tether_testkit::binaries::binary("tetherd")?;
    let refusal = |section: &str| -> anyhow::Result<String> {
        let config = dir.path().join("tetherd.toml");
        std::fs::write(&config, format!("[sparkplug]\n{section}"))?;
        let output = std::process::Command::new(&tetherd)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-api",
                "127.0.0.1:0",
                "--listen-mqtt",
                "127.0.0.1:0",
            ])
            .output()?;
        anyhow::ensure!(!output.status.success(), "tetherd started with {section}");
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let plain = refusal("url = \"mqtt://192.0.2.1:1883\"\n")?;
    assert!(
        plain.contains("plain mqtt:// is only for a broker on this host (loopback)"),
        "{plain}"
    );
    let missing = refusal("url = \"mqtts://127.0.0.1:8883\"\nca_file = \"/nonexistent/ca.pem\"\n")?;
    assert!(
        missing.contains("could not read /nonexistent/ca.pem (a [sparkplug] file)"),
        "{missing}"
    );
    Ok(())
}
