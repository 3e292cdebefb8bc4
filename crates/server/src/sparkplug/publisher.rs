//! The IO shell around one [`EdgeNode`]: its own MQTT v5 connection to the
//! external Sparkplug broker, with the session's NDEATH as the will, its
//! births on every connect, its NCMD subscription and the device updates it
//! is given.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::{AsyncClient, ClientError, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::device_link::BoxFuture;
use crate::store::StoreError;

use super::node::{EdgeNode, Metrics, NodeCommand, SparkplugMessage, node_commands};
use super::topics::{EdgeDeviceId, EdgeNodeId, GroupId, NodeMessage, Topic};

const KEEP_ALIVE: Duration = Duration::from_secs(30);
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Requests queued between this task and rumqttc's event loop; this task's
/// own queue holds the rest, so a rebirth of many devices never blocks.
const REQUEST_CAPACITY: usize = 64;

/// What this task hands to the MQTT client, in order.
enum Request {
    /// The NCMD subscription, once per connection: through the same queue
    /// as the births, so a full request queue delays it instead of losing it.
    SubscribeCommands,
    Publish(SparkplugMessage),
}

/// Where the Sparkplug broker is, and who this node is to it.
#[derive(Debug, Clone)]
pub struct SparkplugBroker {
    pub host: String,
    pub port: u16,
    /// The MQTT client id; unique per edge node on the broker.
    pub client_id: String,
    pub transport: BrokerTransport,
    pub credentials: Option<Credentials>,
}

/// TCP, or TLS checked by the given client settings.
#[derive(Clone)]
pub enum BrokerTransport {
    Plain,
    Tls(Arc<rustls::ClientConfig>),
}

impl std::fmt::Debug for BrokerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BrokerTransport::Plain => "Plain",
            BrokerTransport::Tls(_) => "Tls",
        })
    }
}

/// A username and password for the broker.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A change to one of the node's devices.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceUpdate {
    /// The device's metrics, all of them (a new device, or new metrics).
    Birth {
        device: EdgeDeviceId,
        metrics: Metrics,
    },
    /// New values of metrics the device's birth declared.
    Data {
        device: EdgeDeviceId,
        metrics: Metrics,
    },
    Death {
        device: EdgeDeviceId,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("the Sparkplug publisher of edge node {node} has stopped")]
pub struct PublisherStopped {
    node: String,
}

/// Where an edge node's `bdSeq`s are kept. Each session's is recorded
/// before its CONNECT goes out (its will names it), so no later start, on
/// this replica or another after a crash, can take it again: a host that
/// saw a `bdSeq` repeated would match an old NDEATH to a live session.
pub trait BdSeqLedger: Send + Sync + 'static {
    fn record(&self, bd_seq: u8) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// One edge node's publisher task. Dropping it drops the connection, and
/// the broker publishes the node's NDEATH.
pub struct Publisher {
    node: String,
    updates: mpsc::Sender<DeviceUpdate>,
    task: JoinHandle<()>,
}

impl Publisher {
    /// Starts the node's first session, with `bdSeq` `first_bd_seq`; it
    /// and every later session's are recorded in `ledger` before use.
    pub fn spawn(
        group: GroupId,
        node: EdgeNodeId,
        first_bd_seq: u8,
        broker: SparkplugBroker,
        ledger: Arc<dyn BdSeqLedger>,
    ) -> Self {
        let name = format!("{group}/{node}");
        let (updates, receiver) = mpsc::channel(REQUEST_CAPACITY);
        let node = EdgeNode::new(group, node, first_bd_seq);
        let task = tokio::spawn(run(node, broker, receiver, ledger));
        Self {
            node: name,
            updates,
            task,
        }
    }

    /// Whether the task still runs; it ends only by a panic.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    pub async fn update(&self, update: DeviceUpdate) -> Result<(), PublisherStopped> {
        self.updates
            .send(update)
            .await
            .map_err(|_| PublisherStopped {
                node: self.node.clone(),
            })
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn will(message: &SparkplugMessage) -> LastWill {
    // Sparkplug: the NDEATH will is QoS 1 and not retained.
    LastWill::new(
        message.topic.to_string(),
        message.encode(),
        QoS::AtLeastOnce,
        false,
        None,
    )
}

/// What the connection task tells the node's task.
enum Connection {
    Connected,
    /// An NCMD's payload.
    Command(Vec<u8>),
    /// The connection failed or dropped: the node's task answers with the
    /// will of the next session before the connection task tries again.
    Lost {
        error: ConnectionError,
        next_will: oneshot::Sender<LastWill>,
    },
}

/// Aborts the connection task with the node's task, so dropping the
/// [`Publisher`] drops the connection.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run(
    mut node: EdgeNode,
    broker: SparkplugBroker,
    mut updates: mpsc::Receiver<DeviceUpdate>,
    ledger: Arc<dyn BdSeqLedger>,
) {
    let first_will = new_recorded_session(&mut node, &*ledger).await;
    let mut options = MqttOptions::new(&broker.client_id, &broker.host, broker.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_start(true)
        .set_last_will(first_will);
    if let BrokerTransport::Tls(tls) = &broker.transport {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    if let Some(credentials) = &broker.credentials {
        options.set_credentials(&credentials.username, &credentials.password);
    }
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let ncmd = Topic::Node {
        group: node.group().clone(),
        message: NodeMessage::Command,
        node: node.node().clone(),
    }
    .to_string();
    let (events, mut connection) = mpsc::channel(REQUEST_CAPACITY);
    // rumqttc's poll is not cancel-safe while it connects (a cancelled
    // poll drops a connection whose CONNECT, will included, was sent), so
    // it runs alone in its own task rather than in this task's select.
    let _connection_task = AbortOnDrop(tokio::spawn(keep_connected(
        eventloop,
        ncmd.clone(),
        events,
    )));
    // Requests in order, handed to rumqttc by a task of their own: a
    // publish cut short by this task's select could have been queued by
    // rumqttc all the same (its request channel may take a message from a
    // sender it then drops), and sending it again would repeat a `seq`.
    let outgoing = Arc::new(Outgoing::default());
    let _sending_task = AbortOnDrop(tokio::spawn(send_in_order(client, ncmd, outgoing.clone())));
    let mut updates_open = true;
    loop {
        tokio::select! {
            biased;
            event = connection.recv() => match event {
                Some(Connection::Connected) => {
                    tracing::info!(node = %node.node(), group = %node.group(), bd_seq = node.bd_seq(), "connected to the Sparkplug broker");
                    outgoing.push(Request::SubscribeCommands);
                    queue_birth(&mut node, &outgoing);
                }
                Some(Connection::Command(payload)) => on_command(&mut node, &payload, &outgoing),
                Some(Connection::Lost { error, next_will }) => {
                    // The next connection is a new session: a new bdSeq,
                    // its own will, and nothing of the old one's queue.
                    tracing::warn!(node = %node.node(), error = %error, "no connection to the Sparkplug broker");
                    node.end_session();
                    outgoing.retain(|_| false);
                    // Nothing is published without a connection: waiting
                    // here for the store delays only the reconnection.
                    let _ = next_will.send(new_recorded_session(&mut node, &*ledger).await);
                }
                None => return,
            },
            update = updates.recv(), if updates_open => match update {
                Some(update) => apply(&mut node, update, &outgoing),
                None => updates_open = false,
            },
        }
    }
}

/// Starts the node's next session and returns its will once the ledger has
/// its `bdSeq`, trying again while the store cannot take it.
async fn new_recorded_session(node: &mut EdgeNode, ledger: &dyn BdSeqLedger) -> LastWill {
    let death = node.new_session();
    let bd_seq = node.bd_seq().expect("a session was just started");
    let mut delay = RETRY_FIRST;
    while let Err(error) = ledger.record(bd_seq).await {
        tracing::warn!(node = %node.node(), bd_seq, error = %crate::error_chain(&error), "could not record a Sparkplug session's bdSeq; connecting once it is recorded");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
    will(&death)
}

/// The requests the node's task queued and the sending task has not yet
/// handed to rumqttc: the node's task may still drop them (a lost session,
/// a rebirth).
#[derive(Default)]
struct Outgoing {
    queue: std::sync::Mutex<VecDeque<Request>>,
    queued: tokio::sync::Notify,
}

impl Outgoing {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Request>> {
        // Every critical section is one VecDeque operation; a panic
        // elsewhere cannot leave one half done.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, request: Request) {
        self.extend([request]);
    }

    fn extend(&self, requests: impl IntoIterator<Item = Request>) {
        self.lock().extend(requests);
        self.queued.notify_one();
    }

    fn retain(&self, keep: impl FnMut(&Request) -> bool) {
        self.lock().retain(keep);
    }

    fn pop(&self) -> Option<Request> {
        self.lock().pop_front()
    }
}

/// Hands the queued requests to rumqttc one by one, each send awaited to
/// its end (waiting for room in rumqttc's request queue).
async fn send_in_order(client: AsyncClient, ncmd: String, outgoing: Arc<Outgoing>) {
    loop {
        let Some(request) = outgoing.pop() else {
            // A push after the pop above left a permit: no wake-up is lost.
            outgoing.queued.notified().await;
            continue;
        };
        if let Err(error) = send(&client, &ncmd, &request).await {
            tracing::warn!(error = %error, "could not hand a Sparkplug request to the MQTT client");
        }
    }
}

/// Polls the connection: reconnects with backoff, each time with the will
/// the node's task gives, and passes on what the node acts on.
async fn keep_connected(mut eventloop: EventLoop, ncmd: String, events: mpsc::Sender<Connection>) {
    let mut delay = RETRY_FIRST;
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                delay = RETRY_FIRST;
                Connection::Connected
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == ncmd.as_bytes() => {
                Connection::Command(publish.payload.to_vec())
            }
            Ok(_) => continue,
            Err(error) => {
                let (next_will, will) = oneshot::channel();
                if events
                    .send(Connection::Lost { error, next_will })
                    .await
                    .is_err()
                {
                    return;
                }
                let Ok(will) = will.await else { return };
                eventloop.options.set_last_will(will);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// Hands one request to the MQTT client, waiting for room.
async fn send(client: &AsyncClient, ncmd: &str, request: &Request) -> Result<(), ClientError> {
    match request {
        Request::SubscribeCommands => client.subscribe(ncmd, QoS::AtLeastOnce).await,
        // Sparkplug: births, data and device deaths at QoS 0, not retained.
        Request::Publish(message) => {
            client
                .publish(
                    message.topic.to_string(),
                    QoS::AtMostOnce,
                    false,
                    message.encode(),
                )
                .await
        }
    }
}

fn on_command(node: &mut EdgeNode, payload: &[u8], outgoing: &Outgoing) {
    let commands = match node_commands(payload) {
        Ok(commands) => commands,
        Err(error) => {
            tracing::warn!(node = %node.node(), error = %tether_proto::error_chain(&error), "ignoring an NCMD");
            return;
        }
    };
    // One birth however many rebirth metrics a payload holds, and one log
    // line however many metrics it names: a host, or anyone allowed to
    // publish NCMD, cannot multiply tetherd's work or its log by padding
    // a payload.
    let mut rebirth = false;
    let mut unsupported = Vec::new();
    for command in commands {
        match command {
            NodeCommand::Rebirth => rebirth = true,
            NodeCommand::Unsupported { metric } => unsupported.push(metric),
        }
    }
    if let Some(first) = unsupported.first() {
        tracing::warn!(node = %node.node(), metric = %first.escape_debug(), count = unsupported.len(), "ignoring NCMD metrics tetherd does not act on");
    }
    if rebirth {
        tracing::info!(node = %node.node(), "a Sparkplug host asked for a rebirth");
        // The births replace the queued messages: they carry the current
        // values.
        outgoing.retain(|request| matches!(request, Request::SubscribeCommands));
        queue_birth(node, outgoing);
    }
}

fn queue_birth(node: &mut EdgeNode, outgoing: &Outgoing) {
    match node.birth(Utc::now()) {
        Ok(messages) => outgoing.extend(messages.into_iter().map(Request::Publish)),
        Err(error) => {
            tracing::error!(node = %node.node(), %error, "could not publish the edge node's birth")
        }
    }
}

fn apply(node: &mut EdgeNode, update: DeviceUpdate, outgoing: &Outgoing) {
    let now = Utc::now();
    let message = match update {
        DeviceUpdate::Birth { device, metrics } => node.device_birth(device, metrics, now),
        DeviceUpdate::Data { device, metrics } => match node.device_data(&device, metrics, now) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(node = %node.node(), %error, "not publishing a device's data");
                None
            }
        },
        DeviceUpdate::Death { device } => node.device_death(&device, now),
    };
    outgoing.extend(message.map(Request::Publish));
}
