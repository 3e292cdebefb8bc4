//! A simulated agent: a real MQTT 5 session (rumqttc, mutual TLS) with a
//! certificate enrolled through tetherd's API, speaking the device protocol
//! without running actions. The benchmark connects thousands of them; tests
//! use one to see exactly which messages reach a device.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::json;
use tether_proto::telemetry::{self, Stream, TelemetryBatch};
use tether_proto::{
    ActionEvent, ActionRequest, DeviceId, DeviceStatus, DeviceTopic, Presence, TopicKind,
};
use tokio::sync::mpsc;

use crate::api::ApiClient;

/// rumqttc v5 allocates and fills a `Vec<Option<Publish>>` of this many
/// entries per session when it is created; its default (65,535) is about
/// 14 MB per simulated agent, which at 1,000 agents dominated the connect
/// time (page faults) and the bench's memory. Same figure as tether-agent.
const MAX_INFLIGHT: u16 = 32;

/// A device's credentials as issued by tetherd; serialisable, so the
/// benchmark can hand them to simulator processes.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct DeviceCredentials {
    pub device: DeviceId,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub mqtt_url: String,
}

impl DeviceCredentials {
    /// Creates device `name` and enrolls it with a fresh key and CSR.
    pub async fn enroll(admin: &ApiClient, name: &str) -> anyhow::Result<Self> {
        Self::enroll_labelled(admin, name, json!({})).await
    }

    /// Creates device `name` with `labels` and enrolls it.
    pub async fn enroll_labelled(
        admin: &ApiClient,
        name: &str,
        labels: serde_json::Value,
    ) -> anyhow::Result<Self> {
        let created = admin
            .post("/api/v1/devices", json!({"name": name, "labels": labels}))
            .await?
            .expect_status(201)?;
        let token = created["enrollment"]["token"]
            .as_str()
            .context("enrollment token")?;
        Self::enroll_with_token(admin, token).await
    }

    pub async fn enroll_with_token(admin: &ApiClient, token: &str) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate().context("generating a key")?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .context("building a CSR")?
            .pem()
            .context("encoding the CSR")?;
        let enrolled = admin
            .with_token(None)
            .post("/api/v1/enroll", json!({"token": token, "csrPem": csr}))
            .await?
            .expect_status(200)?;
        let text = |field: &str| -> anyhow::Result<String> {
            Ok(enrolled[field]
                .as_str()
                .with_context(|| format!("enroll answer has {field}"))?
                .to_owned())
        };
        Ok(Self {
            device: DeviceId::new(text("device")?)?,
            cert_pem: text("certificatePem")?,
            key_pem: key.serialize_pem(),
            ca_pem: text("caCertificatePem")?,
            mqtt_url: text("mqttUrl")?,
        })
    }

    /// Writes cert.pem, key.pem and ca.pem into `dir` for third-party clients.
    pub fn write_to(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("cert.pem"), &self.cert_pem)?;
        std::fs::write(dir.join("key.pem"), &self.key_pem)?;
        std::fs::write(dir.join("ca.pem"), &self.ca_pem)?;
        Ok(())
    }

    fn host_port(&self) -> anyhow::Result<(String, u16)> {
        let rest = self
            .mqtt_url
            .strip_prefix("mqtts://")
            .context("mqtt url is mqtts://")?;
        let (host, port) = rest.rsplit_once(':').context("mqtt url has a port")?;
        Ok((host.trim_matches(['[', ']']).to_owned(), port.parse()?))
    }
}

/// What a simulated agent reports for each spec tetherd sends it (as
/// tether-agent reports the spec it applied and its deployments' states).
pub type SpecReporter = Arc<
    dyn Fn(&DeviceId, &tether_proto::spec::SpecMessage) -> tether_proto::spec::ReportedStatus
        + Send
        + Sync,
>;

/// How a simulated agent answers actions.
#[derive(Debug, Clone)]
pub enum Responder {
    /// Answer every action at once with statusCode 200, echoing the input.
    Echo,
    /// Never answer; only record what arrives.
    Silent,
    /// Answer with statusCode 200 after `delay`; `in_flight` counts the
    /// actions received and not yet answered, over every agent sharing it.
    Slow {
        delay: Duration,
        in_flight: Arc<InFlight>,
    },
}

/// Actions held by simulated devices, received and not yet answered: what
/// a fleet sees of a concurrency limit.
#[derive(Debug, Default)]
pub struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl InFlight {
    fn start(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    fn end(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    /// The most held at once so far.
    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

/// Creates and enrolls `names` with `labels`, `parallel` at a time.
pub async fn enroll_many(
    admin: &ApiClient,
    names: impl IntoIterator<Item = String>,
    labels: &serde_json::Value,
    parallel: usize,
) -> anyhow::Result<Vec<DeviceCredentials>> {
    futures::stream::iter(names)
        .map(|name| async move {
            DeviceCredentials::enroll_labelled(admin, &name, labels.clone()).await
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Creates devices `names` with `labels` without enrolling them: registered
/// devices that have never connected.
pub async fn register_many(
    admin: &ApiClient,
    names: impl IntoIterator<Item = String>,
    labels: &serde_json::Value,
    parallel: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(names)
        .map(|name| async move {
            admin
                .post("/api/v1/devices", json!({"name": name, "labels": labels}))
                .await?
                .expect_status(201)
                .map(drop)
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Connects a simulated agent for each of `credentials`, `parallel` at a time.
pub async fn connect_many(
    credentials: &[DeviceCredentials],
    responder: &Responder,
    parallel: usize,
) -> anyhow::Result<Vec<SimAgent>> {
    futures::stream::iter(credentials)
        .map(|c| SimAgent::connect(c, responder.clone()))
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Waits until the API shows `expected` devices online.
pub async fn wait_online(
    admin: &ApiClient,
    expected: usize,
    deadline: Duration,
) -> anyhow::Result<()> {
    crate::wait_until(
        &format!("{expected} devices online"),
        deadline,
        || async move {
            let summary = admin
                .get("/api/v1/devices/summary")
                .await?
                .expect_status(200)?;
            let online = summary["total"]["online"].as_u64().unwrap_or_default();
            Ok((online >= expected as u64).then_some(()))
        },
    )
    .await
}

/// How fast [`hold_sessions`] opens sessions.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Connects started a second, at most.
    pub per_second: f64,
    /// Connects (TLS handshake to the birth) under way at once, at most.
    pub in_flight: usize,
}

/// What [`hold_sessions`] has done so far.
#[derive(Debug, Default)]
pub struct SessionCounts {
    /// Sessions established now.
    pub up: AtomicUsize,
    /// Connects tried again after a device's session failed or closed.
    pub retried: AtomicUsize,
    /// Why connects failed or sessions closed, and how often.
    pub why: Mutex<BTreeMap<String, usize>>,
}

impl SessionCounts {
    fn failed(&self, why: String) {
        *self
            .why
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(why)
            .or_default() += 1;
    }
}

/// A session that stayed up this long was healthy: the next reconnect
/// starts again from the shortest delay.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Holds a session for each of `credentials` until it is dropped, as a
/// fleet of tether-agents does: a session that fails or is closed (a birth
/// refused while the store is busy, a replica gone) is opened again after
/// an exponential delay with jitter, so the fleet does not come back in
/// lockstep.
pub async fn hold_sessions(
    credentials: Vec<DeviceCredentials>,
    responder: Responder,
    pace: Pace,
    counts: Arc<SessionCounts>,
) {
    let mut every =
        tokio::time::interval(Duration::from_secs_f64(1.0 / pace.per_second.max(0.001)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pacer = Arc::new(tokio::sync::Mutex::new(every));
    let connecting = Arc::new(tokio::sync::Semaphore::new(pace.in_flight.max(1)));
    let holders: Vec<_> = credentials
        .into_iter()
        .map(|credentials| {
            let (responder, pacer, connecting, counts) = (
                responder.clone(),
                pacer.clone(),
                connecting.clone(),
                counts.clone(),
            );
            tokio::spawn(async move {
                let mut failures = 0u32;
                for attempt in 0usize.. {
                    if attempt > 0 {
                        counts.retried.fetch_add(1, Ordering::SeqCst);
                    }
                    let agent = {
                        let Ok(_permit) = connecting.acquire().await else {
                            return;
                        };
                        pacer.lock().await.tick().await;
                        SimAgent::connect(&credentials, responder.clone()).await
                    };
                    match agent {
                        Ok(agent) => {
                            let started = tokio::time::Instant::now();
                            counts.up.fetch_add(1, Ordering::SeqCst);
                            let why = agent.closed().await;
                            counts.up.fetch_sub(1, Ordering::SeqCst);
                            counts.failed(format!("session closed: {why}"));
                            if started.elapsed() >= HEALTHY_SESSION {
                                failures = 0;
                            }
                        }
                        Err(error) => counts.failed(format!("connect failed: {error:#}")),
                    }
                    tokio::time::sleep(reconnect_delay(failures, random_fraction())).await;
                    failures = failures.saturating_add(1);
                }
            })
        })
        .collect();
    // Aborts every holder (and so closes its session) when dropped.
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.iter().for_each(tokio::task::JoinHandle::abort);
        }
    }
    let _holders = AbortOnDrop(holders);
    std::future::pending::<()>().await;
}

/// Exponential from [`RECONNECT_FIRST`] to [`RECONNECT_MAX`], each delay
/// between half and all of its step ("equal jitter", as tether-agent).
fn reconnect_delay(failures: u32, random: f64) -> Duration {
    let step = RECONNECT_FIRST
        .saturating_mul(1 << failures.min(8))
        .min(RECONNECT_MAX);
    step / 2 + (step / 2).mul_f64(random.clamp(0.0, 1.0))
}

/// A uniform sample in [0, 1) from the OS's randomness: the low 53 bits of
/// a v4 UUID are all random (its version and variant bits are higher up).
fn random_fraction() -> f64 {
    let bits = (uuid::Uuid::new_v4().as_u128() & ((1 << 53) - 1)) as u64;
    bits as f64 / (1u64 << 53) as f64
}

pub struct SimAgent {
    pub device: DeviceId,
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<ActionRequest>,
    /// Ends with why the connection closed.
    task: tokio::task::JoinHandle<String>,
}

impl SimAgent {
    /// Connects, subscribes to its actions, waits for the SUBACK and
    /// publishes its birth, like tether-agent does.
    pub async fn connect(
        credentials: &DeviceCredentials,
        responder: Responder,
    ) -> anyhow::Result<Self> {
        Self::connect_inner(credentials, responder, None).await
    }

    /// As [`Self::connect`], also subscribed to its spec, answering each
    /// spec with the report `reporter` makes of it.
    pub async fn connect_reporting(
        credentials: &DeviceCredentials,
        responder: Responder,
        reporter: SpecReporter,
    ) -> anyhow::Result<Self> {
        Self::connect_inner(credentials, responder, Some(reporter)).await
    }

    async fn connect_inner(
        credentials: &DeviceCredentials,
        responder: Responder,
        reporter: Option<SpecReporter>,
    ) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let (host, port) = credentials.host_port()?;
        let device = credentials.device.clone();
        let status_topic = DeviceTopic::new(device.clone(), TopicKind::Status).to_string();
        let boot_id = uuid::Uuid::new_v4().to_string();
        let status = |state| DeviceStatus {
            state,
            agent_version: "sim".to_owned(),
            capabilities: vec![],
            boot_id: boot_id.clone(),
            seq: 1,
        };
        let mut options = MqttOptions::new(device.as_str(), host, port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_outgoing_inflight_upper_limit(MAX_INFLIGHT);
        options.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: credentials.ca_pem.clone().into_bytes(),
            alpn: None,
            client_auth: Some((
                credentials.cert_pem.clone().into_bytes(),
                credentials.key_pem.clone().into_bytes(),
            )),
        }));
        options.set_last_will(LastWill::new(
            &status_topic,
            serde_json::to_vec(&status(Presence::Offline))?,
            QoS::AtLeastOnce,
            false,
            None,
        ));
        let mut network = options.network_options();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let actions_topic = DeviceTopic::new(device.clone(), TopicKind::Actions).to_string();
        let spec_topic = DeviceTopic::new(device.clone(), TopicKind::Spec).to_string();
        let reported_topic = DeviceTopic::new(device.clone(), TopicKind::Reported).to_string();
        let mut filters = vec![rumqttc::v5::mqttbytes::v5::Filter::new(
            &actions_topic,
            QoS::AtLeastOnce,
        )];
        if reporter.is_some() {
            // First, as tether-agent does: tetherd sends the spec when the
            // actions subscription lands.
            filters.insert(
                0,
                rumqttc::v5::mqttbytes::v5::Filter::new(&spec_topic, QoS::AtLeastOnce),
            );
        }
        client
            .subscribe_many(filters)
            .await
            .context("queueing the subscription")?;
        wait_for_suback(&mut eventloop).await?;
        client
            .publish(
                &status_topic,
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&status(Presence::Online))?,
            )
            .await
            .context("queueing the birth")?;
        let (sender, received) = mpsc::unbounded_channel();
        let events_topic = DeviceTopic::new(device.clone(), TopicKind::Events).to_string();
        let answer_client = client.clone();
        let reported_device = device.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish)))
                        if publish.topic == spec_topic.as_bytes() =>
                    {
                        let (Some(reporter), Ok(message)) = (
                            &reporter,
                            serde_json::from_slice::<tether_proto::spec::SpecMessage>(
                                &publish.payload,
                            ),
                        ) else {
                            continue;
                        };
                        let report = reporter(&reported_device, &message);
                        let _ = answer_client
                            .publish(
                                &reported_topic,
                                QoS::AtLeastOnce,
                                false,
                                serde_json::to_vec(&report).unwrap_or_default(),
                            )
                            .await;
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let Ok(request) = serde_json::from_slice::<ActionRequest>(&publish.payload)
                        else {
                            continue;
                        };
                        let event = ActionEvent::new(
                            &request,
                            request.action.clone(),
                            200,
                            "OK",
                            request.input.clone(),
                        );
                        let payload = serde_json::to_vec(&event).unwrap_or_default();
                        match &responder {
                            Responder::Echo => {
                                let _ = answer_client
                                    .publish(&events_topic, QoS::AtLeastOnce, false, payload)
                                    .await;
                            }
                            Responder::Silent => {}
                            Responder::Slow { delay, in_flight } => {
                                in_flight.start();
                                let (client, topic) = (answer_client.clone(), events_topic.clone());
                                let (delay, in_flight) = (*delay, in_flight.clone());
                                tokio::spawn(async move {
                                    tokio::time::sleep(delay).await;
                                    in_flight.end();
                                    let _ = client
                                        .publish(topic, QoS::AtLeastOnce, false, payload)
                                        .await;
                                });
                            }
                        }
                        let _ = sender.send(request);
                    }
                    Ok(_) => {}
                    Err(error) => break error.to_string(),
                }
            }
        });
        Ok(Self {
            device,
            client,
            received,
            task,
        })
    }

    /// The next action delivered to this device, if one arrives within `within`.
    pub async fn next_action(&mut self, within: Duration) -> Option<ActionRequest> {
        tokio::time::timeout(within, self.received.recv())
            .await
            .ok()
            .flatten()
    }

    /// The actions delivered to this device since the last call, without waiting.
    pub fn drain(&mut self) -> Vec<ActionRequest> {
        std::iter::from_fn(|| self.received.try_recv().ok()).collect()
    }

    /// Publishes an answer as this device.
    pub async fn answer(&self, event: &ActionEvent) -> anyhow::Result<()> {
        let topic = DeviceTopic::new(self.device.clone(), TopicKind::Events).to_string();
        self.client
            .publish(topic, QoS::AtLeastOnce, false, serde_json::to_vec(event)?)
            .await
            .context("publishing an event")
    }

    /// Publishes a telemetry batch (QoS 1) on its stream's topic, as a
    /// device's spool sends it; returns the bytes on the wire.
    pub async fn send_telemetry(&self, batch: &TelemetryBatch) -> anyhow::Result<usize> {
        let kind = match batch.stream() {
            Stream::Logs => TopicKind::Logs,
            Stream::Metrics => TopicKind::Metrics,
        };
        let topic = DeviceTopic::new(self.device.clone(), kind).to_string();
        let payload = telemetry::encode(batch);
        let bytes = payload.len();
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .context("publishing a telemetry batch")?;
        Ok(bytes)
    }

    /// Whether the MQTT connection it opened is still up (it never
    /// reconnects, so a dropped session shows here).
    pub fn is_connected(&self) -> bool {
        !self.task.is_finished()
    }

    /// Returns when the MQTT connection it opened has closed, with why.
    pub async fn closed(self) -> String {
        self.task
            .await
            .unwrap_or_else(|error| format!("the session task ended: {error}"))
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        self.task.abort();
    }
}

async fn wait_for_suback(eventloop: &mut EventLoop) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .context("timed out waiting for the SUBACK")?
            .context("MQTT connection failed")?;
        if let Event::Incoming(Packet::SubAck(suback)) = event {
            if suback.return_codes.iter().all(|code| {
                matches!(
                    code,
                    rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                )
            }) {
                return Ok(());
            }
            bail!("subscription refused: {:?}", suback.return_codes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_to_the_cap_and_never_collapse_to_zero() {
        assert_eq!(reconnect_delay(0, 0.0), Duration::from_millis(500));
        assert_eq!(reconnect_delay(0, 1.0), RECONNECT_FIRST);
        assert_eq!(reconnect_delay(3, 1.0), Duration::from_secs(8));
        assert_eq!(reconnect_delay(40, 1.0), RECONNECT_MAX);
        assert_eq!(reconnect_delay(40, 0.0), RECONNECT_MAX / 2);
    }

    #[test]
    fn random_fractions_stay_in_the_unit_interval() {
        let samples: Vec<f64> = (0..1000).map(|_| random_fraction()).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(samples.iter().any(|x| *x < 0.5) && samples.iter().any(|x| *x >= 0.5));
    }
}
