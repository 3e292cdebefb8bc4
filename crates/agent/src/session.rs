//! The MQTT session with tetherd: mutual TLS, the birth and will on `status`
//! (not retained: tetherd's endpoint refuses retained messages and serves
//! presence through its API), actions in and events out, the monitor's
//! requests on `control` ([`crate::control`]), reconnecting with backoff.
//!
//! The event loop only moves packets. Actions go over a channel to a worker
//! task that runs them one at a time in arrival order, and everything is
//! published through the `AsyncClient`, so a slow action never stalls pings
//! or acks.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, Packet, PubAck, PubAckReason, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{NetworkOptions, Outgoing, TlsConfiguration, Transport};
use tether_proto::control::ControlMessage;
use tether_proto::metrics::HostSample;
use tether_proto::telemetry::{MetricRecord, Stream};
use tether_proto::{ActionEvent, DeviceId, DeviceStatus, DeviceTopic, Presence, TopicKind};
use tokio::sync::{mpsc, watch};

use crate::actions::expiry::{Delivery, Moment};
use crate::actions::run_stats::StatsRunner;
use crate::actions::{self, Context, Dispatcher, IMPLEMENTED};
use crate::authorization::AuthorizationGuard;
use crate::backoff::Backoff;
use crate::clock::ServerClock;
use crate::dedupe::{DEFAULT_CAPACITY, Dedupe, DedupeError};
use crate::endpoints::{Endpoint, Endpoints};
use crate::logging::LogControl;
use crate::metrics::MetricsSink;
use crate::queue::Queued;
use crate::self_update::ActionGate;
use crate::spec::StatusSource;
use crate::spool::sender::{self, Ack, Answer, BatchOut};
use crate::spool::usage::Usage;
use crate::spool::{Record, Spools};
use crate::state::{ACTIONS_DIR, Credentials, StateDir};
use crate::tls::{self, TlsError};

const DEFAULT_MQTT_PORT: u16 = 8883;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// A connection that lasted this long was healthy: the next failure starts
/// the backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long the goodbye (offline status, DISCONNECT) may take at shutdown.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_CAPACITY: usize = 64;
/// rumqttc sizes per-packet-id tables by this; its default (65,535) alone
/// costs tens of MB of RSS. One action at a time needs only a few in flight.
const MAX_INFLIGHT: u16 = 32;
/// Largest action request accepted (rumqttc's default is 10 KiB, too small
/// for a `send-api` with a request body).
const MAX_INCOMING_PACKET: u32 = 2 * 1024 * 1024;
/// How long an action's event may wait for room in the MQTT client's
/// request channel, trying every [`HANDOVER_RETRY`].
const EVENT_HANDOVER: Duration = Duration::from_secs(60);
const HANDOVER_RETRY: Duration = Duration::from_millis(20);
/// The topics the agent subscribes to, in one SUBSCRIBE: the spec first,
/// since tetherd sends it when the actions subscription lands.
const SUBSCRIBED: [TopicKind; 3] = [TopicKind::Spec, TopicKind::Control, TopicKind::Actions];

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("MQTT URL {url:?} in agent.toml is not of the form mqtts://HOST:PORT")]
    BadUrl { url: String },
    #[error("agent.toml names no MQTT endpoint: enroll the agent again")]
    NoEndpoint,
    #[error(
        "MQTT URL {url:?} names an IPv6 address, which the MQTT client cannot verify: use a host name"
    )]
    Ipv6Host { url: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Dedupe(#[from] DedupeError),
}

/// Host and port of an `mqtts://HOST:PORT` URL; the host is also the TLS name.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), SessionError> {
    let bad = || SessionError::BadUrl {
        url: url.to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
    if parsed.scheme() != "mqtts" {
        return Err(bad());
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(bad)?;
    // rustls cannot take a bracketed IPv6 literal as a server name.
    if host.starts_with('[') {
        return Err(SessionError::Ipv6Host {
            url: url.to_owned(),
        });
    }
    let host = host.to_owned();
    Ok((host, parsed.port().unwrap_or(DEFAULT_MQTT_PORT)))
}

/// Trusts only the controller's CA, judged by tetherd's clock, and presents
/// the device's certificate.
pub fn tls_config(
    credentials: &Credentials,
    clock: Arc<ServerClock>,
) -> Result<rustls::ClientConfig, SessionError> {
    Ok(tls::mutual_tls_config(
        &credentials.ca_pem,
        &credentials.cert_pem,
        &credentials.key_pem,
        clock,
    )?)
}

/// What each publish handed to the MQTT client is, in the order they were
/// handed over. rumqttc reports a publish's packet id only as it sends it
/// (`Outgoing::Publish`), in that same order, and a PUBACK carries only the
/// packet id: this is how a PUBACK finds its telemetry batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Other,
    Batch { stream: Stream, end_seq: u64 },
}

#[derive(Debug, Default)]
struct Tags {
    /// Handed to the client, not sent yet.
    queued: VecDeque<Tag>,
    /// Sent, awaiting their PUBACK, by packet id.
    in_flight: HashMap<u16, Tag>,
}

/// Topics and identity of this session, and the client that publishes.
#[derive(Clone)]
struct Publisher {
    client: AsyncClient,
    device: DeviceId,
    boot_id: String,
    status: StatusSource,
    /// Every publish goes through [`Publisher::send`], which tags it.
    tags: Arc<Mutex<Tags>>,
    /// Whether the session is up (subscribed, birth sent): batches go then.
    online: Arc<watch::Sender<bool>>,
    /// Where tetherd's answers to each stream's batches go.
    acks: Arc<HashMap<Stream, mpsc::UnboundedSender<Ack>>>,
    /// Counts the bytes of actions both ways.
    usage: Arc<Usage>,
}

impl Publisher {
    fn topic(&self, kind: TopicKind) -> String {
        DeviceTopic::new(self.device.clone(), kind).to_string()
    }

    fn status(&self, state: Presence, seq: u64) -> Vec<u8> {
        let status = DeviceStatus {
            state,
            agent_version: crate::self_update::agent_version().to_owned(),
            capabilities: IMPLEMENTED.iter().map(|s| (*s).to_owned()).collect(),
            boot_id: self.boot_id.clone(),
            seq,
        };
        serde_json::to_vec(&status).unwrap_or_default()
    }

    fn will(&self, seq: u64) -> LastWill {
        LastWill::new(
            self.topic(TopicKind::Status),
            self.status(Presence::Offline, seq),
            QoS::AtLeastOnce,
            false,
            None,
        )
    }

    fn tags(&self) -> MutexGuard<'_, Tags> {
        self.tags.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a QoS 1 publish to the client without waiting, and tags it.
    fn send(
        &self,
        tag: Tag,
        kind: TopicKind,
        payload: Vec<u8>,
        properties: Option<PublishProperties>,
    ) -> Result<(), String> {
        let topic = self.topic(kind);
        // Held across the hand-over, so tags keep the client's order.
        let mut tags = self.tags();
        match properties {
            Some(properties) => self.client.try_publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                payload,
                properties,
            ),
            None => self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload),
        }
        .map_err(|e| e.to_string())?;
        tags.queued.push_back(tag);
        Ok(())
    }

    /// Queues a status without waiting: the event loop calls this.
    fn try_publish_status(&self, state: Presence, seq: u64) -> Result<(), String> {
        self.send(Tag::Other, TopicKind::Status, self.status(state, seq), None)
            .map_err(|e| e.to_string())
    }

    /// Queues the reported status (QoS 1) without waiting: the event loop
    /// calls this.
    fn try_publish_reported(&self) -> Result<(), String> {
        let reported = serde_json::to_vec(&self.status.report()).unwrap_or_default();
        self.send(Tag::Other, TopicKind::Reported, reported, None)
            .map_err(|e| format!("cannot publish the reported status: {e}"))
    }

    /// Applies a spec tetherd sent and reports the outcome: the applied
    /// version with the sections that failed, or why nothing was applied.
    /// The spec already applied is not reported again.
    fn apply_spec(&self, payload: &[u8]) -> Result<(), String> {
        match self.status.apply_payload(payload) {
            // The birth's report said so already.
            Ok(None) => {
                tracing::debug!("the spec tetherd sent is the one applied");
                return Ok(());
            }
            Ok(Some(applied)) => {
                if applied.errors.is_empty() {
                    tracing::info!(
                        version = applied.version,
                        "applied spec version {}",
                        applied.version
                    );
                }
                for error in &applied.errors {
                    tracing::warn!(
                        version = applied.version,
                        "could not apply {error}; that section keeps its previous value"
                    );
                }
            }
            Err(failure) => tracing::error!("{failure}"),
        }
        self.try_publish_reported()
    }

    async fn publish_event(&self, event: &ActionEvent) {
        let payload = serde_json::to_vec(event).unwrap_or_default();
        let properties = PublishProperties {
            correlation_data: Some(event.correlation_id.clone().into_bytes().into()),
            content_type: Some("application/json".to_owned()),
            ..PublishProperties::default()
        };
        // The request channel is full only while the event loop is behind:
        // wait for room, as long as an action may take to be answered.
        let deadline = Instant::now() + EVENT_HANDOVER;
        loop {
            let sent = self.send(
                Tag::Other,
                TopicKind::Events,
                payload.clone(),
                Some(properties.clone()),
            );
            match sent {
                Ok(()) => {
                    self.usage.action(chrono::Utc::now(), payload.len(), 0);
                    return;
                }
                Err(e) if Instant::now() >= deadline => {
                    tracing::error!(
                        "cannot publish the event for action {}: {e}",
                        event.correlation_id
                    );
                    return;
                }
                Err(_) => tokio::time::sleep(HANDOVER_RETRY).await,
            }
        }
    }

    /// rumqttc sent the next publish handed to it, as packet `pkid`.
    fn sent(&self, pkid: u16) {
        let mut tags = self.tags();
        if let Some(tag) = tags.queued.pop_front()
            && pkid != 0
            && tag != Tag::Other
        {
            tags.in_flight.insert(pkid, tag);
        }
    }

    /// tetherd answered packet `ack.pkid`.
    fn acked(&self, ack: &PubAck) {
        let Some(Tag::Batch { stream, end_seq }) = self.tags().in_flight.remove(&ack.pkid) else {
            return;
        };
        let reason = || {
            ack.properties
                .as_ref()
                .and_then(|p| p.reason_string.clone())
                .unwrap_or_else(|| format!("{:?}", ack.reason))
        };
        let answer = match ack.reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Answer::Stored,
            PubAckReason::PayloadFormatInvalid
            | PubAckReason::NotAuthorized
            | PubAckReason::TopicNameInvalid => Answer::Refused(reason()),
            _ => Answer::Later(reason()),
        };
        if let Some(route) = self.acks.get(&stream) {
            let _ = route.send(Ack {
                stream,
                end_seq,
                answer,
            });
        }
    }
}

impl BatchOut for Publisher {
    fn publish_batch(&self, stream: Stream, payload: Vec<u8>, end_seq: u64) -> Result<(), String> {
        let kind = match stream {
            Stream::Metrics => TopicKind::Metrics,
            Stream::Logs => TopicKind::Logs,
        };
        self.send(Tag::Batch { stream, end_seq }, kind, payload, None)
    }
}

/// Host samples, always-on and from `run-stats`, go to the spool like
/// every other metric.
struct SpooledSamples {
    spools: Arc<Spools>,
    /// Samples are dated by tetherd's clock, which judges them.
    clock: Arc<ServerClock>,
}

impl MetricsSink for SpooledSamples {
    fn publish_sample(&self, sample: &HostSample) {
        let dated = HostSample {
            at: self.clock.at(sample.at),
            ..sample.clone()
        };
        if let Err(error) = self
            .spools
            .append(Record::Metric(MetricRecord::Sample(dated)))
        {
            tracing::warn!(%error, "metrics sample not spooled");
        }
    }
}

/// What a session reports and serves from, made once at the agent's start.
pub struct SessionParts {
    pub status: StatusSource,
    pub logging: Arc<LogControl>,
    /// tetherd's clock: it judges certificates and dates samples.
    pub clock: Arc<ServerClock>,
    pub spools: Arc<Spools>,
    /// `follow-logs` extends it.
    pub follow: crate::logs::FollowHandle,
    pub kubernetes: crate::actions::Kubernetes,
    pub tunnels: crate::tunnel::TunnelPolicy,
    pub shell: crate::management_shell::ShellConfig,
    pub power: crate::host::power::Power,
    /// Beaten while the session loop waits: the watchdog's sign of life.
    pub heartbeat: Arc<crate::watchdog::health::Heartbeat>,
    /// Closed by a self-update: no new action starts.
    pub gate: ActionGate,
    /// Whether the session is up (subscribed, birth sent): a new agent on
    /// trial commits then.
    pub online: Arc<watch::Sender<bool>>,
}

/// Connects and serves actions until `shutdown` resolves; then says goodbye.
/// Credentials sent on `renewed` replace the connection's at once.
pub async fn run(
    credentials: Credentials,
    state: &StateDir,
    parts: SessionParts,
    renewed: watch::Receiver<Credentials>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SessionError> {
    let SessionParts {
        status,
        logging,
        clock,
        spools,
        follow,
        kubernetes,
        tunnels,
        shell,
        power,
        heartbeat,
        gate,
        online,
    } = parts;
    let endpoints = Endpoints::parse(&credentials.mqtt_urls)?;
    let tls = tls_config(&credentials, clock.clone())?;
    let dedupe = Dedupe::open(state.file(ACTIONS_DIR), DEFAULT_CAPACITY)?;

    let options = mqtt_options(
        &credentials.device,
        endpoints.current(),
        Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))),
    );
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let samples: Arc<dyn MetricsSink> = Arc::new(SpooledSamples {
        spools: spools.clone(),
        clock: clock.clone(),
    });
    // Host samples always, online or not: the spool keeps them.
    let host_metrics = tokio::spawn(crate::metrics::schedule::run(
        status.spec.subscribe(),
        samples.clone(),
        "/".into(),
    ));
    let mut ack_routes = HashMap::new();
    let mut ack_receivers = Vec::new();
    for stream in Stream::ALL {
        let (tx, rx) = mpsc::unbounded_channel();
        ack_routes.insert(stream, tx);
        ack_receivers.push((stream, rx));
    }
    let publisher = Publisher {
        client,
        device: credentials.device.clone(),
        boot_id: uuid::Uuid::new_v4().to_string(),
        status,
        tags: Arc::default(),
        online,
        acks: Arc::new(ack_routes),
        usage: spools.usage().clone(),
    };
    let senders: Vec<_> = ack_receivers
        .into_iter()
        .map(|(stream, acks)| {
            tokio::spawn(sender::run(
                spools.spool(stream).clone(),
                Arc::new(publisher.clone()),
                publisher.online.subscribe(),
                acks,
            ))
        })
        .collect();
    let context = Context {
        logging,
        authorization: Arc::new(AuthorizationGuard::default()),
        stats: StatsRunner::new(samples),
        ca_pem: credentials.ca_pem.clone(),
        device: credentials.device.to_string(),
        api_url: credentials.api_url.clone(),
        clock: clock.clone(),
        follow,
        kubernetes,
        tunnels,
        shell,
        power,
    };
    let (actions_tx, actions_rx) = mpsc::unbounded_channel();
    let queued = Queued::default();
    let worker = tokio::spawn(work(
        Dispatcher::new(dedupe, context),
        actions_rx,
        queued.clone(),
        publisher.clone(),
        gate,
    ));

    let deployments = publisher.status.deployments.subscribe();
    let update_holds = publisher.status.update_holds.subscribe();
    let secret_errors = publisher.status.secret_errors.subscribe();
    let watchdog = publisher.status.watchdog.subscribe();
    let host_time = publisher.status.host_time.subscribe();
    let network = publisher.status.network.subscribe();
    let mut session = Session {
        eventloop,
        publisher,
        endpoints,
        state_dir: state.path().to_owned(),
        actions: actions_tx,
        queued,
        seq: 1,
        connected_at: None,
        clock,
        renewed,
        deployments,
        update_holds,
        secret_errors,
        watchdog,
        heartbeat,
        host_time,
        network,
        control: crate::control::Requests::default(),
    };
    session.serve(shutdown).await;
    // Stop the worker before the goodbye: its abort drops the stats sampler,
    // and an action cut short is answered after restart, never run twice.
    worker.abort();
    host_metrics.abort();
    for sender in senders {
        sender.abort();
    }
    session.goodbye().await;
    Ok(())
}

/// The connection settings for one endpoint; rumqttc reads the address from
/// its options at each connect, so failing over replaces them whole.
fn mqtt_options(device: &DeviceId, endpoint: &Endpoint, transport: Transport) -> MqttOptions {
    let mut options = MqttOptions::new(device.as_str(), endpoint.host.clone(), endpoint.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_start(true)
        .set_outgoing_inflight_upper_limit(MAX_INFLIGHT)
        .set_max_packet_size(Some(MAX_INCOMING_PACKET))
        .set_transport(transport);
    let mut network = NetworkOptions::new();
    // Off by default, Nagle added ~88 ms to every request/answer round trip.
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    options.set_network_options(network);
    options
}

/// Takes up actions one at a time, in arrival order, and publishes their
/// events, and those of actions that went on in the background. Once
/// `gate` closes (a self-update) it takes up no new action; it counts the
/// running ones there, so the update waits for them. If the gate opens
/// again (the swap failed), it goes on.
async fn work(
    mut dispatcher: Dispatcher,
    mut actions: mpsc::UnboundedReceiver<Delivery>,
    queued: Queued,
    publisher: Publisher,
    gate: ActionGate,
) {
    enum Next {
        Action(Delivery),
        Finished(tether_proto::ActionEvent),
        GateClosed,
        GateOpened,
    }
    // An action picked as the gate closed: it runs if the gate opens again.
    let mut held = None;
    loop {
        gate.set_running(dispatcher.running());
        let closed = gate.is_closed();
        let next = match held.take() {
            Some(delivery) if !closed => Next::Action(delivery),
            still_held => {
                held = still_held;
                tokio::select! {
                    // First: an action arriving as the gate closes waits.
                    biased;
                    () = gate.until_closed(), if !closed => Next::GateClosed,
                    () = gate.until_open(), if closed => Next::GateOpened,
                    event = dispatcher.finished() => Next::Finished(event),
                    delivery = actions.recv(), if !closed => match delivery {
                        Some(delivery) => Next::Action(delivery),
                        None => return,
                    },
                }
            }
        };
        let event = match next {
            Next::GateClosed => {
                tracing::info!(
                    "a self-update is due: no new action starts; those waiting run after the restart"
                );
                continue;
            }
            Next::GateOpened => {
                tracing::info!("the self-update did not happen: actions start again");
                continue;
            }
            Next::Action(delivery) => {
                // Admitted and counted in one step (review L5): refused
                // if the gate closed since the pick.
                if !gate.admit(dispatcher.running()) {
                    held = Some(delivery);
                    continue;
                }
                let event = dispatcher.handle(&delivery, Moment::now()).await;
                queued.done(&delivery.payload);
                event
            }
            Next::Finished(event) => Some(dispatcher.complete(event)),
        };
        if let Some(event) = event {
            publisher.publish_event(&event).await;
        }
    }
}

struct Session {
    eventloop: EventLoop,
    publisher: Publisher,
    /// tetherd's endpoints; the one in use is `current()`.
    endpoints: Endpoints,
    /// Named in the hint when tetherd refuses the device.
    state_dir: std::path::PathBuf,
    actions: mpsc::UnboundedSender<Delivery>,
    queued: Queued,
    /// Connection number of this process; the birth and will carry it.
    seq: u64,
    /// Set from CONNACK until the connection fails.
    connected_at: Option<Instant>,
    clock: Arc<ServerClock>,
    /// Renewed credentials; the next connection uses them.
    renewed: watch::Receiver<Credentials>,
    /// Wakes when a deployment's state changes, to report it.
    deployments: watch::Receiver<crate::deployments::PartReports>,
    /// Wakes when the device's update holds change, to report them.
    update_holds: watch::Receiver<Vec<tether_proto::desired::updates::UpdateHold>>,
    /// Wakes when writing the secrets' Kubernetes Secrets fails or
    /// recovers, to report it.
    secret_errors: watch::Receiver<Vec<tether_proto::spec::SpecError>>,
    /// Wakes when the watchdog starts or stops being fed, to report it.
    watchdog: watch::Receiver<Option<tether_proto::host::WatchdogStatus>>,
    /// Beaten whenever this loop waits ([`crate::watchdog::health::Heartbeat`]).
    heartbeat: Arc<crate::watchdog::health::Heartbeat>,
    /// Wakes when the device's clock changes materially, to report it.
    host_time: watch::Receiver<crate::time::TimeReport>,
    /// Wakes when the network or its last change's outcome changes.
    network: watch::Receiver<crate::network::NetworkReport>,
    /// tetherd's rebirth and reload requests not yet done.
    control: crate::control::Requests,
}

impl Session {
    /// The birth: the online status, then the reported status. Published
    /// at every connection and again when tetherd asks (a rebirth).
    fn publish_birth(&self) -> Result<(), String> {
        self.publisher
            .try_publish_status(Presence::Online, self.seq)
            .map_err(|e| format!("cannot publish the online status: {e}"))?;
        self.publisher.try_publish_reported()
    }

    /// Does the control requests that are due. A rebirth offline is
    /// dropped: the next connection publishes the birth anyway.
    fn do_control_requests(&mut self) {
        for request in self.control.take_due(Instant::now()) {
            match request {
                ControlMessage::Reload => {
                    let applied = self.publisher.status.spec.reload();
                    tracing::info!(
                        version = applied.version,
                        "applied spec version {} again in full, as tetherd asked",
                        applied.version
                    );
                    self.report_change("the reloaded spec");
                }
                ControlMessage::Rebirth => {
                    if !*self.publisher.online.borrow() {
                        tracing::debug!(
                            "not online: the next connection's birth answers the rebirth request"
                        );
                        continue;
                    }
                    match self.publish_birth() {
                        Ok(()) => tracing::info!(
                            "published the birth again, as tetherd asked (boot {}, seq {})",
                            self.publisher.boot_id,
                            self.seq
                        ),
                        Err(e) => tracing::warn!("{e}; tetherd asks again if it still needs it"),
                    }
                }
            }
        }
    }

    /// Reports the status after `what` changed; offline, the next birth
    /// reports it.
    fn report_change(&self, what: &str) {
        if *self.publisher.online.borrow()
            && let Err(e) = self.publisher.try_publish_reported()
        {
            tracing::warn!("{e}; the next birth reports {what}");
        }
    }

    async fn serve(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::default();
        self.eventloop
            .options
            .set_last_will(self.publisher.will(self.seq));
        tracing::info!(
            "connecting to {} as {}",
            self.endpoints.current().url,
            self.publisher.device
        );
        loop {
            // rumqttc's `poll` is not cancel-safe while it connects: dropped
            // before the CONNACK, it drops the half-made connection, which
            // tetherd records as a session that ended at once (and whose
            // will it publishes). So what only matters to a session up
            // waits for one; a renewal restarts the connection anyway.
            let connected = self.connected_at.is_some();
            let polled = tokio::select! {
                biased;
                () = &mut shutdown => return,
                Ok(()) = self.renewed.changed() => {
                    self.reconnect_with_renewed_credentials();
                    continue;
                }
                Ok(()) = self.deployments.changed(), if connected => {
                    self.report_change("the deployments");
                    continue;
                }
                Ok(()) = self.update_holds.changed(), if connected => {
                    self.report_change("the update holds");
                    continue;
                }
                Ok(()) = self.secret_errors.changed(), if connected => {
                    self.report_change("the secrets' errors");
                    continue;
                }
                Ok(()) = self.watchdog.changed(), if connected => {
                    self.report_change("the watchdog's state");
                    continue;
                }
                never = self.heartbeat.pulse() => match never {},
                Ok(()) = self.host_time.changed(), if connected => {
                    self.report_change("the device's time");
                    continue;
                }
                Ok(()) = self.network.changed(), if connected => {
                    self.report_change("the network");
                    continue;
                }
                () = crate::control::until(self.control.next_due()), if connected => {
                    self.do_control_requests();
                    continue;
                }
                polled = self.eventloop.poll() => polled,
            };
            let failure = match polled {
                Ok(event) => self.on_event(event).err(),
                Err(e) => Some(describe(&e, &self.state_dir)),
            };
            let Some(failure) = failure else { continue };

            if self
                .connected_at
                .take()
                .is_some_and(|since| since.elapsed() >= STABLE_AFTER)
            {
                backoff.reset();
            }
            let delay = backoff.next_delay(rand::random());
            let failed = self.endpoints.current().url.clone();
            self.fail_over();
            tracing::warn!(
                "MQTT connection to {failed}: {failure}; trying {} in {:.1} s",
                self.endpoints.current().url,
                delay.as_secs_f64()
            );
            // Whatever was half-sent is dropped; the next connection is new.
            // Nothing is lost: an answer (QoS 1 event) is in the action
            // records, and tetherd delivers the unanswered action again
            // after the reconnect, which the agent answers from its record;
            // telemetry batches are sent again from the spool.
            self.drop_unsent();
            self.seq += 1;
            self.eventloop
                .options
                .set_last_will(self.publisher.will(self.seq));
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
                never = self.heartbeat.pulse() => match never {},
            }
        }
    }

    /// Points the next connection at the next endpoint. With one endpoint
    /// this changes nothing; rumqttc keeps the same options then.
    fn fail_over(&mut self) {
        if !self.endpoints.has_alternatives() {
            return;
        }
        let transport = self.eventloop.options.transport();
        let will = self.eventloop.options.last_will();
        let mut options = mqtt_options(
            &self.publisher.device,
            self.endpoints.fail_over(),
            transport,
        );
        if let Some(will) = will {
            options.set_last_will(will);
        }
        self.eventloop.options = options;
    }

    /// Drops the connection and reconnects at once with the renewed
    /// certificate. Unacknowledged answers are lost with the connection as on
    /// any reconnect; tetherd redelivers open actions at the birth, and the
    /// agent answers those from its record without running them again.
    fn reconnect_with_renewed_credentials(&mut self) {
        let credentials = self.renewed.borrow_and_update().clone();
        let tls = match tls_config(&credentials, self.clock.clone()) {
            Ok(tls) => tls,
            Err(error) => {
                tracing::error!(
                    "cannot use the renewed certificate: {}; keeping the current connection",
                    actions::chain(&error)
                );
                return;
            }
        };
        // The renewal may also have brought the cluster's endpoints now.
        match Endpoints::parse(&credentials.mqtt_urls) {
            Ok(endpoints) => self.endpoints.replace(endpoints),
            Err(error) => tracing::warn!(
                "keeping the MQTT endpoints in use: the renewed list is unusable: {error}"
            ),
        }
        self.seq += 1;
        let mut options = mqtt_options(
            &self.publisher.device,
            self.endpoints.current(),
            Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls))),
        );
        options.set_last_will(self.publisher.will(self.seq));
        self.eventloop.options = options;
        tracing::info!(
            "reconnecting to {} with the renewed certificate",
            self.endpoints.current().url
        );
        self.connected_at = None;
        self.drop_unsent();
    }

    /// Ends the connection's traffic: rumqttc's `clean` moves what waited
    /// in the request channel into its pending queue, which a clean-start
    /// CONNACK discards anyway; it has no bound, so it is emptied now
    /// rather than then, and the tags with it, under their lock so that no
    /// publish slips between the two. The senders stop until the session
    /// is up again.
    fn drop_unsent(&mut self) {
        self.publisher.online.send_replace(false);
        let tags = self.publisher.tags.clone();
        let mut tags = tags.lock().unwrap_or_else(PoisonError::into_inner);
        self.eventloop.clean();
        self.eventloop.pending.clear();
        tags.queued.clear();
        tags.in_flight.clear();
    }

    /// Reacts to one event; an error string means the connection is unusable.
    fn on_event(&mut self, event: Event) -> Result<(), String> {
        let packet = match event {
            Event::Incoming(packet) => packet,
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                self.publisher.sent(pkid);
                return Ok(());
            }
            Event::Outgoing(_) => return Ok(()),
        };
        match packet {
            Packet::PubAck(ack) => {
                self.publisher.acked(&ack);
                Ok(())
            }
            Packet::ConnAck(_) => {
                self.connected_at = Some(Instant::now());
                tracing::info!("connected to {}", self.endpoints.current().url);
                // The birth waits for the SUBACK: once tetherd sees the device
                // online, actions it sends must not be lost. The spec comes
                // first: tetherd sends it when the actions subscription lands.
                self.publisher
                    .client
                    .try_subscribe_many(
                        SUBSCRIBED
                            .map(|kind| Filter::new(self.publisher.topic(kind), QoS::AtLeastOnce)),
                    )
                    .map_err(|e| format!("cannot subscribe to the spec, control and actions: {e}"))
            }
            Packet::SubAck(ack) => {
                for (kind, code) in SUBSCRIBED.iter().zip(&ack.return_codes) {
                    if matches!(code, SubscribeReasonCode::Success(_)) {
                        continue;
                    }
                    let topic = self.publisher.topic(*kind);
                    // A tetherd, or a broker's ACL, from before the monitor:
                    // the agent works as before, unasked.
                    if *kind == TopicKind::Control {
                        tracing::warn!(
                            "tetherd refused the subscription to {topic} ({code:?}); \
                             its monitor's rebirth and reload requests cannot reach this agent"
                        );
                        continue;
                    }
                    return Err(format!(
                        "tetherd refused the subscription to {topic}: {code:?}"
                    ));
                }
                self.publish_birth()?;
                tracing::info!(
                    "online as {} (boot {}, seq {})",
                    self.publisher.device,
                    self.publisher.boot_id,
                    self.seq
                );
                self.publisher.online.send_replace(true);
                Ok(())
            }
            Packet::Publish(publish) => {
                if publish.topic == self.publisher.topic(TopicKind::Actions).as_bytes() {
                    self.publisher
                        .usage
                        .action(chrono::Utc::now(), 0, publish.payload.len());
                    if self.queued.admit(&publish.payload) {
                        let delivery = Delivery {
                            payload: publish.payload.to_vec(),
                            arrived: Moment::now(),
                            mqtt_expiry: publish
                                .properties
                                .as_ref()
                                .and_then(|p| p.message_expiry_interval)
                                .map(|seconds| Duration::from_secs(seconds.into())),
                        };
                        // The receiver lives as long as the session loop does.
                        let _ = self.actions.send(delivery);
                    } else {
                        tracing::debug!("dropping a redelivered copy of a queued action");
                    }
                } else if publish.topic == self.publisher.topic(TopicKind::Spec).as_bytes() {
                    self.publisher.apply_spec(&publish.payload)?;
                } else if publish.topic == self.publisher.topic(TopicKind::Control).as_bytes() {
                    match self.control.receive(&publish.payload, Instant::now()) {
                        Ok(request) => tracing::debug!("tetherd asked for a {request:?}"),
                        Err(error) => tracing::warn!("{error}"),
                    }
                    self.do_control_requests();
                } else {
                    tracing::warn!(
                        "ignoring a message on unexpected topic {}",
                        String::from_utf8_lossy(&publish.topic)
                    );
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Publishes `offline` and disconnects cleanly: an MQTT 5 server drops
    /// the will on a normal DISCONNECT, so the death is sent explicitly.
    async fn goodbye(&mut self) {
        self.publisher.online.send_replace(false);
        if self.connected_at.is_none() {
            tracing::info!("stopped");
            return;
        }
        let sent = self
            .publisher
            .try_publish_status(Presence::Offline, self.seq)
            .and_then(|()| {
                self.publisher
                    .client
                    .try_disconnect()
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = sent {
            tracing::warn!("cannot say goodbye to tetherd: {e}");
            return;
        }
        let flushed = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(describe(&e, &self.state_dir)),
                }
            }
        })
        .await;
        match flushed {
            Ok(Ok(())) => tracing::info!("offline status published; disconnected"),
            Ok(Err(e)) => tracing::warn!("disconnect from tetherd was not clean: {e}"),
            Err(_) => tracing::warn!(
                "tetherd did not take the goodbye within {} s",
                GOODBYE_TIMEOUT.as_secs()
            ),
        }
    }
}

/// Says what went wrong with the connection, with a hint where one helps.
fn describe(error: &ConnectionError, state_dir: &std::path::Path) -> String {
    let text = actions::chain(error);
    match error {
        ConnectionError::ConnectionRefused(_) => format!(
            "{text} (tetherd refused the device: was it deleted, or re-enrolled elsewhere? \
             to enroll again, remove {} and run the agent with a new token from \
             `tether devices enrollment-token NAME`)",
            state_dir.display()
        ),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_give_host_and_port() {
        assert_eq!(
            parse_mqtt_url("mqtts://127.0.0.1:18883").expect("valid"),
            ("127.0.0.1".to_owned(), 18883)
        );
        assert_eq!(
            parse_mqtt_url("mqtts://tether.example").expect("valid"),
            ("tether.example".to_owned(), 8883)
        );
        for bad in ["mqtt://h:1", "https://h:1", "h:1", "mqtts://"] {
            assert!(
                matches!(parse_mqtt_url(bad), Err(SessionError::BadUrl { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_mqtt_url("mqtts://[::1]:8883"),
            Err(SessionError::Ipv6Host { .. })
        ));
    }

    fn credentials(ca_pem: String, cert_pem: String, key_pem: String) -> Credentials {
        Credentials {
            device: DeviceId::new("edge-1").expect("valid"),
            mqtt_urls: vec!["mqtts://127.0.0.1:8883".into()],
            api_url: "https://127.0.0.1:8443".into(),
            ca_pem,
            cert_pem,
            key_pem,
        }
    }

    #[test]
    fn tls_config_needs_every_credential() {
        crate::install_crypto_provider();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["edge-1".into()])
            .expect("params")
            .self_signed(&key)
            .expect("signs");
        let good = credentials(cert.pem(), cert.pem(), key.serialize_pem());
        assert!(tls_config(&good, ServerClock::new()).is_ok());

        let no_key = credentials(cert.pem(), cert.pem(), "junk".into());
        let err = tls_config(&no_key, ServerClock::new()).expect_err("no key");
        assert!(err.to_string().contains("key.pem"), "{err}");
        let no_ca = credentials(String::new(), cert.pem(), key.serialize_pem());
        assert!(
            tls_config(&no_ca, ServerClock::new())
                .expect_err("no CA")
                .to_string()
                .contains("ca.pem")
        );
    }

    fn test_publisher(
        client: AsyncClient,
        acks: HashMap<Stream, mpsc::UnboundedSender<Ack>>,
    ) -> Publisher {
        Publisher {
            client,
            device: DeviceId::new("edge-1").expect("valid"),
            boot_id: "boot".into(),
            status: StatusSource::new(
                crate::spec::SpecHandle::load(std::path::Path::new("/nonexistent")),
                Default::default(),
            ),
            tags: Arc::default(),
            online: Arc::new(watch::channel(false).0),
            acks: Arc::new(acks),
            usage: Arc::new(Usage::open(std::path::Path::new("/nonexistent"))),
        }
    }

    #[test]
    fn birth_and_will_carry_identity_and_capabilities() {
        let (client, _eventloop) = AsyncClient::new(MqttOptions::new("edge-1", "localhost", 1), 1);
        let publisher = test_publisher(client, HashMap::new());
        let will = publisher.will(7);
        assert_eq!(&will.topic[..], b"tether/v1/devices/edge-1/status");
        assert!(!will.retain, "tetherd refuses retained messages");
        let status: DeviceStatus = serde_json::from_slice(&will.message).expect("parses");
        assert_eq!(status.state, Presence::Offline);
        assert_eq!(status.seq, 7);
        assert_eq!(status.boot_id, "boot");
        assert!(status.capabilities.contains(&"get-node-ip".to_owned()));
        assert_eq!(status.agent_version, crate::self_update::agent_version());
    }

    #[tokio::test]
    async fn a_puback_reaches_the_sender_of_its_batch_and_no_other() {
        let (client, _eventloop) = AsyncClient::new(MqttOptions::new("edge-1", "localhost", 1), 8);
        let (logs_tx, mut logs_rx) = mpsc::unbounded_channel();
        let publisher = test_publisher(client, HashMap::from([(Stream::Logs, logs_tx)]));
        publisher
            .try_publish_status(Presence::Online, 1)
            .expect("status");
        publisher
            .publish_batch(Stream::Logs, vec![1], 100)
            .expect("first batch");
        publisher
            .publish_batch(Stream::Logs, vec![1], 250)
            .expect("second batch");
        // Sent in the order handed over, as packets 1, 2 and 3.
        for pkid in 1..=3 {
            publisher.sent(pkid);
        }
        publisher.acked(&PubAck::new(1, None));
        let mut refused = PubAck::new(3, None);
        refused.reason = PubAckReason::PayloadFormatInvalid;
        publisher.acked(&refused);
        publisher.acked(&PubAck::new(2, None));
        publisher.acked(&PubAck::new(2, None));
        let mut answers = Vec::new();
        while let Ok(ack) = logs_rx.try_recv() {
            answers.push((ack.end_seq, ack.answer));
        }
        assert_eq!(
            answers,
            [
                (250, Answer::Refused("PayloadFormatInvalid".into())),
                (100, Answer::Stored)
            ]
        );
    }
}
