//! An MQTT broker the operator runs (mosquitto 2, or a clustered one),
//! behind [`DeviceLink`]: tetherd is a privileged client of it (rumqttc,
//! MQTT 5, mutual TLS with a certificate whose CN is `tetherd`, which no
//! device can have). See `docs/adr/0011-external-mqtt-broker.md`.
//!
//! The broker authenticates devices (its CA check plus the revocation list
//! tetherd writes, [`revocation`]) and confines them (its per-username ACL,
//! `docs/operations/mosquitto/acl`). tetherd subscribes to the devices'
//! topics with a shared subscription, so with several replicas each
//! publish is handled by exactly one, and acknowledges each publish to the
//! broker only after the [`DeviceInbox`] committed it: the broker resends
//! what tetherd did not acknowledge when tetherd's session resumes.
//!
//! Presence comes from the devices' birth and death (or will) on `status`
//! ([`presence`]); every replica also takes a plain copy of every status,
//! so each knows which devices are online whichever replica handled it.

mod presence;
pub mod revocation;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Packet, Publish, PublishProperties, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{NetworkOptions, Outgoing, TlsConfiguration, Transport};

use tether_proto::{ActionRequest, DeviceId, DeviceTopic, TopicKind};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use self::presence::{StatusPresence, Transition};
use self::revocation::RevocationList;
use super::outbound::ActionPublish;
use super::{
    BoxFuture, Content, DeviceInbox, DeviceLink, DeviceMessage, Inbound, LinkError, Refusal,
    ServerMessage, SessionChange, content,
};
use crate::config::{ExternalBrokerConfig, MqttUrl, ServerConfig};
use crate::pki::CertificateAuthority;
use crate::store::Store;

/// The shared subscription group every replica joins.
const SHARE_GROUP: &str = "tetherd";
/// Subscription identifiers: which subscription a publish came through.
const HANDLED: usize = 1;
const PRESENCE_COPY: usize = 2;
/// The device → tetherd topics tetherd consumes.
const CONSUMED: [TopicKind; 4] = [
    TopicKind::Events,
    TopicKind::Status,
    TopicKind::Metrics,
    TopicKind::Reported,
];

/// How long the broker keeps tetherd's session (and queues devices'
/// messages for it) while tetherd is away: a restart, an upgrade.
const SESSION_EXPIRY: Duration = Duration::from_secs(3600);
/// Unacknowledged publishes the broker may have in flight to tetherd; each
/// waits for its commit, and devices' commits run concurrently.
const RECEIVE_MAXIMUM: u16 = 1000;
/// Actions tetherd may have in flight to the broker.
const OUTGOING_INFLIGHT: u16 = 1000;
const REQUEST_CAPACITY: usize = 1024;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT_SECS: u64 = 10;
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A device's worker ends after this long without a message.
const WORKER_IDLE: Duration = Duration::from_secs(60);
/// How long ending a device's session may take.
const KICK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a publish tetherd could not store it drops its broker
/// connection, so the broker sends what is unacknowledged again.
const RESYNC_AFTER: Duration = Duration::from_secs(1);

/// How tetherd reaches the broker.
#[derive(Debug, Clone)]
pub struct ExternalConfig {
    pub url: MqttUrl,
    /// The tether CA, PEM: the broker's certificate must be signed by it.
    pub ca_pem: PathBuf,
    pub client_cert_pem: PathBuf,
    pub client_key_pem: PathBuf,
    /// This replica's client id: stable across restarts, so its session
    /// (and what the broker queued for it) is found again.
    pub client_id: String,
    /// Largest packet either way.
    pub max_packet_size: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("could not build the TLS client for the broker")]
    Tls(#[source] rustls::Error),
    #[error(transparent)]
    Dir(#[from] crate::secret_file::PrivateDirError),
    #[error("could not issue tetherd's client certificate")]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Revocation(#[from] revocation::RevocationError),
    #[error("could not read the devices' presence")]
    Store(#[from] crate::store::StoreError),
    #[error("could not read or write tetherd's MQTT client id in {path}")]
    ClientId {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct ExternalLink {
    state: Arc<LinkState>,
    /// Keeps concurrent `publish_action` calls in call order.
    publish_order: tokio::sync::Mutex<()>,
    runtime: tokio::runtime::Handle,
    /// Polled once [`ExternalLink::serve`] has the inbox.
    pending_eventloop: Mutex<Option<EventLoop>>,
    event_loop: Mutex<Option<JoinHandle<()>>>,
    revocation: Arc<RevocationList>,
}

struct LinkState {
    client: AsyncClient,
    /// tetherd's listener on the broker, and its TLS settings: also how a
    /// device's session is ended.
    url: MqttUrl,
    tls: Arc<rustls::ClientConfig>,
    inbox: OnceLock<Arc<dyn DeviceInbox>>,
    /// Every status this replica saw: answers `is_connected`.
    seen: Mutex<StatusPresence>,
    /// The statuses this replica handled: the session changes it reports.
    handled: Mutex<StatusPresence>,
    /// One task per device with publishes in progress, so a device's
    /// publishes are handled in order and devices do not wait for each other.
    workers: Mutex<HashMap<DeviceId, mpsc::UnboundedSender<Publish>>>,
    broker_connected: AtomicBool,
    resync: Notify,
}

impl ExternalLink {
    /// Prepares the connection without opening it, so the services that
    /// take the devices' messages can be built with the link first.
    pub fn new(
        config: ExternalConfig,
        revocation: Arc<RevocationList>,
    ) -> Result<Arc<Self>, ExternalError> {
        let tls = Arc::new(tls_config(&config)?);
        let mut options = MqttOptions::new(&config.client_id, &config.url.host, config.url.port);
        options
            .set_keep_alive(KEEP_ALIVE)
            // The session, and what the broker queues in it, outlives a
            // restart of tetherd.
            .set_clean_start(false)
            .set_session_expiry_interval(Some(SESSION_EXPIRY.as_secs() as u32))
            .set_manual_acks(true)
            .set_receive_maximum(Some(RECEIVE_MAXIMUM))
            .set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT)
            .set_max_packet_size(Some(config.max_packet_size))
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        options.set_network_options(network);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        Ok(Arc::new(Self {
            state: Arc::new(LinkState {
                client,
                url: config.url.clone(),
                tls: tls.clone(),
                inbox: OnceLock::new(),
                seen: Mutex::default(),
                handled: Mutex::default(),
                workers: Mutex::default(),
                broker_connected: AtomicBool::new(false),
                resync: Notify::new(),
            }),
            publish_order: tokio::sync::Mutex::new(()),
            runtime: tokio::runtime::Handle::current(),
            pending_eventloop: Mutex::new(Some(eventloop)),
            event_loop: Mutex::new(None),
            revocation,
        }))
    }

    /// Sets up tetherd's side of the broker: its client certificate
    /// (issued into `broker/` in the data dir unless configured), its
    /// client id, the revocation list the broker reads, and which devices
    /// are online. Does not connect yet.
    pub async fn prepare(
        config: &ServerConfig,
        external: &ExternalBrokerConfig,
        ca: &Arc<CertificateAuthority>,
        store: &Store,
        max_packet_size: u32,
    ) -> Result<Arc<Self>, ExternalError> {
        let dir = config.data_dir.join("broker");
        crate::secret_file::make_private_dir(&dir)?;
        let (client_cert_pem, client_key_pem) = match &external.client_identity {
            Some(identity) => identity.clone(),
            None => {
                let issued = ca.issue_controller_client_certificate(
                    &dir,
                    config.pki.device_certificate_lifetime,
                    chrono::Utc::now(),
                )?;
                (issued.cert_path, issued.key_path)
            }
        };
        let revocation = Arc::new(RevocationList::new(
            store.clone(),
            ca.clone(),
            external.crl_path.clone(),
        ));
        revocation.refresh(chrono::Utc::now()).await?;
        let link = Self::new(
            ExternalConfig {
                url: external.url.clone(),
                ca_pem: ca.cert_path().to_owned(),
                client_cert_pem,
                client_key_pem,
                client_id: client_id(&dir)?,
                max_packet_size,
            },
            revocation,
        )?;
        // Devices stay connected to the broker while tetherd restarts; what
        // they said meanwhile waits in tetherd's session.
        link.seed_online(
            store
                .list_devices()
                .await?
                .into_iter()
                .filter(|device| device.presence == tether_proto::Presence::Online)
                .map(|device| {
                    (
                        device.name,
                        device.boot_id.unwrap_or_default(),
                        device.status_seq,
                    )
                }),
        );
        Ok(link)
    }

    /// Connects and hands what devices send to `inbox`. Only the first
    /// call does anything.
    pub fn serve(&self, inbox: Arc<dyn DeviceInbox>) {
        let Some(eventloop) = lock(&self.pending_eventloop).take() else {
            return;
        };
        let _ = self.state.inbox.set(inbox);
        let task = tokio::spawn(run(self.state.clone(), eventloop));
        *lock(&self.event_loop) = Some(task);
    }

    /// The revocation list the broker reads.
    /// Whether tetherd holds its session with the broker now.
    pub fn is_broker_connected(&self) -> bool {
        self.state.broker_connected.load(Ordering::Acquire)
    }

    pub fn revocation(&self) -> &Arc<RevocationList> {
        &self.revocation
    }

    /// Takes devices the store has online, with their last birth, as
    /// online: they stay connected to the broker while tetherd restarts,
    /// and what they said meanwhile is queued in tetherd's session.
    pub fn seed_online(&self, devices: impl IntoIterator<Item = (DeviceId, String, u64)>) {
        let mut seen = lock(&self.state.seen);
        let mut handled = lock(&self.state.handled);
        for (device, boot_id, seq) in devices {
            seen.seed_online(device.clone(), boot_id.clone(), seq);
            handled.seed_online(device, boot_id, seq);
        }
    }
}

impl Drop for ExternalLink {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.event_loop).take() {
            task.abort();
        }
    }
}

impl DeviceLink for ExternalLink {
    fn publish_action<'a>(
        &'a self,
        device: &'a DeviceId,
        request: &'a ActionRequest,
    ) -> BoxFuture<'a, Result<usize, LinkError>> {
        Box::pin(async move {
            if !self.is_connected(device) {
                return Err(LinkError::NotConnected(device.clone()));
            }
            let publish_error = |reason: String| LinkError::Publish {
                device: device.clone(),
                reason,
            };
            if !self.state.broker_connected.load(Ordering::Acquire) {
                return Err(publish_error(
                    "tetherd is not connected to the MQTT broker".into(),
                ));
            }
            let action = ActionPublish::new(device, request, chrono::Utc::now())
                .map_err(|e| publish_error(format!("could not encode the action: {e}")))?;
            let bytes = action.payload.len();
            let properties = PublishProperties {
                correlation_data: Some(action.correlation_data.into()),
                message_expiry_interval: Some(action.expiry.get()),
                ..PublishProperties::default()
            };
            let _order = self.publish_order.lock().await;
            self.state
                .client
                .publish_with_properties(
                    action.topic,
                    QoS::AtLeastOnce,
                    false,
                    action.payload,
                    properties,
                )
                .await
                .map_err(|e| publish_error(format!("could not queue it for the broker: {e}")))?;
            Ok(bytes)
        })
    }

    fn publish_message<'a>(
        &'a self,
        device: &'a DeviceId,
        message: ServerMessage<'a>,
    ) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            if !self.is_connected(device) {
                return Err(LinkError::NotConnected(device.clone()));
            }
            let publish_error = |reason: String| LinkError::Publish {
                device: device.clone(),
                reason,
            };
            if !self.state.broker_connected.load(Ordering::Acquire) {
                return Err(publish_error(
                    "tetherd is not connected to the MQTT broker".into(),
                ));
            }
            let kind = message.topic_kind();
            let payload = message.encode().map_err(publish_error)?;
            let _order = self.publish_order.lock().await;
            self.state
                .client
                .publish(
                    DeviceTopic::new(device.clone(), kind).to_string(),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .map_err(|e| publish_error(format!("could not queue it for the broker: {e}")))
        })
    }

    fn is_connected(&self, device: &DeviceId) -> bool {
        lock(&self.state.seen).is_online(device)
    }

    /// Rewrites the revocation list (the broker refuses the device's
    /// certificate once it has reloaded it) and ends the device's current
    /// session, if it is online, by taking its client id over on tetherd's
    /// listener.
    fn disconnect(&self, device: &DeviceId) {
        let device = device.clone();
        let state = self.state.clone();
        let revocation = self.revocation.clone();
        self.runtime.spawn(async move {
            if let Err(error) = revocation.refresh(chrono::Utc::now()).await {
                tracing::error!(%device, error = %crate::error_chain(&error), "could not update the revocation list; the broker still accepts the device's old certificate");
            }
            let was_online = lock(&state.seen).forget(&device);
            if lock(&state.handled).forget(&device) {
                state.inbox().session(SessionChange::Disconnected(device.clone()));
            }
            // Only a session that said it was online is taken over: a device
            // enrolling for the first time connects right after, and would
            // be the one ended.
            if !was_online {
                return;
            }
            state.end_session(&device).await;
        });
    }
}

impl LinkState {
    fn inbox(&self) -> &dyn DeviceInbox {
        // `serve` sets it before the event loop runs, and only the event
        // loop hands out work.
        self.inbox
            .get()
            .map(Arc::as_ref)
            .expect("the inbox is set before serving")
    }

    /// Subscribes (again) to what tetherd consumes; the broker keeps the
    /// subscriptions in the session, and repeating them is harmless.
    fn subscribe(&self) -> Result<(), String> {
        for kind in CONSUMED {
            self.client
                .try_subscribe_with_properties(
                    format!("$share/{SHARE_GROUP}/{}", device_filter(kind)),
                    QoS::AtLeastOnce,
                    SubscribeProperties {
                        id: Some(HANDLED),
                        user_properties: Vec::new(),
                    },
                )
                .map_err(|e| e.to_string())?;
        }
        self.client
            .try_subscribe_with_properties(
                device_filter(TopicKind::Status),
                QoS::AtMostOnce,
                SubscribeProperties {
                    id: Some(PRESENCE_COPY),
                    user_properties: Vec::new(),
                },
            )
            .map_err(|e| e.to_string())
    }

    /// Devices stay connected to the broker while tetherd is away from it,
    /// so no birth will come to deliver what was requested meanwhile (or
    /// was queued and lost with the connection): their open actions go out
    /// again now, as at a birth.
    fn redeliver_to_online_devices(&self) {
        let online = lock(&self.seen).online();
        if online.is_empty() {
            return;
        }
        tracing::info!(
            devices = online.len(),
            "delivering open actions to the devices online on the broker"
        );
        let inbox = self.inbox();
        for device in online {
            inbox.session(SessionChange::SubscribedToActions(device));
        }
    }

    /// Routes a publish from the broker: a presence copy is read at once;
    /// one to handle goes to its device's worker.
    fn dispatch(self: &Arc<Self>, publish: Publish) {
        let ids = publish
            .properties
            .as_ref()
            .map(|p| p.subscription_identifiers.as_slice())
            .unwrap_or_default();
        // A broker without subscription identifiers sends one copy per
        // subscription, all to be handled as the shared one.
        let presence_copy = ids.contains(&PRESENCE_COPY);
        let handled = ids.contains(&HANDLED) || ids.is_empty();
        if presence_copy && !handled {
            self.observe_copy(&publish);
            return;
        }
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let Some(parsed) = DeviceTopic::parse(&topic) else {
            tracing::warn!(
                topic,
                "the broker delivered a publish outside the device topics; dropped"
            );
            // On the event loop's own task: it must not wait for the queue
            // it empties. A full queue leaves the publish to be sent again.
            if publish.qos != QoS::AtMostOnce {
                let _ = self.client.try_ack(&publish);
            }
            return;
        };
        let mut workers = lock(&self.workers);
        let publish = match workers.get(&parsed.device) {
            Some(worker) => match worker.send(publish) {
                Ok(()) => return,
                Err(mpsc::error::SendError(publish)) => publish,
            },
            None => publish,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        // Sending on a fresh channel whose receiver is held cannot fail.
        let _ = tx.send(publish);
        workers.insert(parsed.device.clone(), tx);
        tokio::spawn(self.clone().work(parsed.device, rx));
    }

    /// Updates the presence this replica answers from with a status copy.
    fn observe_copy(&self, publish: &Publish) {
        let topic = String::from_utf8_lossy(&publish.topic);
        let Some(parsed) = DeviceTopic::parse(&topic) else {
            return;
        };
        if let Content::Message(DeviceMessage::Status(status)) =
            content::content(&parsed.device, &topic, &publish.payload)
        {
            lock(&self.seen).observe(&parsed.device, &status);
        }
    }

    /// Handles one device's publishes in order until it has none for a while.
    async fn work(
        self: Arc<Self>,
        device: DeviceId,
        mut publishes: mpsc::UnboundedReceiver<Publish>,
    ) {
        loop {
            match tokio::time::timeout(WORKER_IDLE, publishes.recv()).await {
                Ok(Some(publish)) => self.handle(&device, publish).await,
                Ok(None) => return,
                Err(_idle) => {
                    let mut workers = lock(&self.workers);
                    // Publishes are sent under this lock: none can arrive
                    // between the check and the removal.
                    match publishes.try_recv() {
                        Ok(publish) => {
                            drop(workers);
                            self.handle(&device, publish).await;
                        }
                        Err(_) => {
                            workers.remove(&device);
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn handle(&self, device: &DeviceId, publish: Publish) {
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let inbound = Inbound {
            content: content::content(device, &topic, &publish.payload),
            device: device.clone(),
            topic,
            size: publish.payload.len(),
        };
        if let Content::Message(DeviceMessage::Status(status)) = &inbound.content {
            lock(&self.seen).observe(device, status);
            let transition = lock(&self.handled).observe(device, status);
            let inbox = self.inbox();
            match transition {
                Transition::Online => {
                    // The device contract has a device subscribe to its
                    // actions before its birth in this mode.
                    inbox.session(SessionChange::Connected(device.clone()));
                    inbox.session(SessionChange::SubscribedToActions(device.clone()));
                }
                Transition::Offline => inbox.session(SessionChange::Disconnected(device.clone())),
                Transition::Unchanged => {}
                Transition::Stale => {
                    tracing::debug!(%device, boot_id = status.boot_id, seq = status.seq, "ignored a status older than the device's latest");
                    self.ack(&publish).await;
                    return;
                }
            }
        }
        match self.inbox().publish(inbound).await {
            Ok(()) => self.ack(&publish).await,
            // The broker acknowledged the device's publish already, so a
            // refusal cannot reach the device; the inbox recorded a
            // `message-rejected` event the operator sees. Acknowledged, so
            // the broker does not send it again.
            Err(Refusal::Invalid(_) | Refusal::RateLimited(_)) => self.ack(&publish).await,
            Err(Refusal::Disconnect(reason)) => {
                tracing::warn!(%device, reason, "ending the session of a device that keeps exceeding its limits");
                self.ack(&publish).await;
                self.end_session(device).await;
            }
            Err(Refusal::Unavailable(reason)) => {
                if publish.qos == QoS::AtMostOnce {
                    return;
                }
                // Not acknowledged: the broker sends it again when the
                // session resumes, which the resync forces.
                tracing::warn!(%device, reason, "not acknowledging a device's message to the broker; it is sent again after a reconnect");
                self.resync.notify_one();
            }
        }
    }

    /// Ends the device's session on the broker by taking its client id over.
    async fn end_session(&self, device: &DeviceId) {
        match kick(&self.url, self.tls.clone(), device).await {
            Ok(()) => tracing::info!(%device, "ended the device's session on the MQTT broker"),
            Err(error) => {
                tracing::warn!(%device, error, "could not end the device's session on the MQTT broker")
            }
        }
    }

    /// Acknowledges a handled publish to the broker, waiting for room in
    /// the request queue (the event loop empties it).
    async fn ack(&self, publish: &Publish) {
        if publish.qos == QoS::AtMostOnce {
            return;
        }
        if let Err(error) = self.client.ack(publish).await {
            tracing::warn!(error = %error, "could not acknowledge a publish to the broker; it is sent again after a reconnect");
        }
    }
}

/// Keeps the connection to the broker: reconnects with backoff,
/// subscribes on each connect, and hands publishes on.
async fn run(state: Arc<LinkState>, mut eventloop: EventLoop) {
    let url = state.url.clone();
    let mut delay = RETRY_FIRST;
    loop {
        let polled = tokio::select! {
            polled = eventloop.poll() => polled,
            () = state.resync.notified() => {
                tokio::time::sleep(RESYNC_AFTER).await;
                tracing::warn!("reconnecting to the MQTT broker so it sends the messages tetherd could not store again");
                state.broker_connected.store(false, Ordering::Release);
                eventloop.clean();
                continue;
            }
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                delay = RETRY_FIRST;
                if let Err(error) = state.subscribe() {
                    tracing::error!(%error, "could not subscribe to the devices' topics");
                }
                state.broker_connected.store(true, Ordering::Release);
                tracing::info!(%url, session_present = ack.session_present, "connected to the external MQTT broker");
                state.redeliver_to_online_devices();
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => state.dispatch(publish),
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(refused) = ack
                    .return_codes
                    .iter()
                    .find(|code| !matches!(code, SubscribeReasonCode::Success(_)))
                {
                    tracing::error!(
                        ?refused,
                        "the MQTT broker refused tetherd's subscription to the devices' topics: check its ACL for user tetherd (docs/operations/external-broker.md)"
                    );
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(disconnect))) => {
                tracing::warn!(reason = ?disconnect.reason_code, "the MQTT broker ended tetherd's session");
            }
            Ok(_) => {}
            Err(error) => {
                state.broker_connected.store(false, Ordering::Release);
                tracing::warn!(%url, error = %error, retry_in_ms = delay.as_millis() as u64, "no connection to the external MQTT broker");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Ends the session of `device` by connecting with its client id (the
/// broker takes the id over and drops the device's connection) and leaving
/// at once. The broker publishes the device's will as for any lost session.
async fn kick(
    url: &MqttUrl,
    tls: Arc<rustls::ClientConfig>,
    device: &DeviceId,
) -> Result<(), String> {
    let mut options = MqttOptions::new(device.as_str(), &url.host, url.port);
    options
        .set_clean_start(true)
        .set_keep_alive(KEEP_ALIVE)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let ended = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        return Err(format!("the broker refused the takeover: {:?}", ack.code));
                    }
                    client.try_disconnect().map_err(|e| e.to_string())?;
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
    };
    tokio::time::timeout(KICK_TIMEOUT, ended)
        .await
        .map_err(|_| {
            format!(
                "no answer from the broker within {} s",
                KICK_TIMEOUT.as_secs()
            )
        })?
}

/// This tetherd's MQTT client id, made on first start and kept, so its
/// broker session is found again after a restart. The `.` keeps it apart
/// from every device name.
fn client_id(dir: &std::path::Path) -> Result<String, ExternalError> {
    let path = dir.join("client-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            Err(ExternalError::ClientId { path, source })
        }
        _ => {
            let id = format!("tetherd.{}", hex::encode(rand::random::<[u8; 8]>()));
            std::fs::write(&path, &id).map_err(|source| ExternalError::ClientId {
                path: path.clone(),
                source,
            })?;
            Ok(id)
        }
    }
}

fn device_filter(kind: TopicKind) -> String {
    format!(
        "{}+/{}",
        tether_proto::topics::DEVICES_PREFIX,
        kind.as_str()
    )
}

fn tls_config(config: &ExternalConfig) -> Result<rustls::ClientConfig, ExternalError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| ExternalError::Read {
            path: path.clone(),
            source,
        })
    };
    let pem_error = |path: &PathBuf, what| ExternalError::Pem {
        path: path.clone(),
        what,
    };
    let ca = read(&config.ca_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        let cert = cert.map_err(|_| pem_error(&config.ca_pem, "CA certificate"))?;
        roots
            .add(cert)
            .map_err(|_| pem_error(&config.ca_pem, "CA certificate"))?;
    }
    let chain = rustls_pemfile::certs(&mut read(&config.client_cert_pem)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|chain| !chain.is_empty())
        .ok_or_else(|| pem_error(&config.client_cert_pem, "client certificate"))?;
    let key = rustls_pemfile::private_key(&mut read(&config.client_key_pem)?.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| pem_error(&config.client_key_pem, "private key"))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(ExternalError::Tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(ExternalError::Tls)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map operation; a panic elsewhere
    // cannot leave one half done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
