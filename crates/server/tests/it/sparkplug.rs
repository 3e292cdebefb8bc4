//! Sparkplug B northbound (issue 18): one edge node's publisher on Debian's
//! mosquitto, read back by a Sparkplug subscriber that decodes the Tahu
//! payloads.

use std::time::Duration;

use anyhow::{Context, bail};
use prost::Message;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tether_server::sparkplug::node::{BD_SEQ_METRIC, Metrics, REBIRTH_METRIC, Value};
use tether_server::sparkplug::payload::{MetricValue, Payload};
use tether_server::sparkplug::publisher::{
    BrokerTransport, DeviceUpdate, Publisher, SparkplugBroker,
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
        let options = MqttOptions::new("sparkplug-host", "127.0.0.1", port);
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

    let publisher = Publisher::spawn(
        GroupId::new("plant")?,
        EdgeNodeId::new("tetherd-1")?,
        5,
        plain(broker.device_port, "tetherd-sparkplug-1"),
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
    let publisher = Publisher::spawn(
        GroupId::new("plant")?,
        EdgeNodeId::new("late")?,
        first_bd_seq,
        plain(broker.device_port, "tetherd-sparkplug-late"),
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
