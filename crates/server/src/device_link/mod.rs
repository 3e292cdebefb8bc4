//! The link between tetherd and its devices.
//!
//! Domain code sees only this module's trait and message enum; the MQTT server
//! that carries them is an adapter behind it: rmqtt embedded (`rmqtt`), or
//! an MQTT broker the operator runs, which tetherd joins as a privileged
//! client (`external`), chosen by configuration. See
//! `docs/adr/0001-embedded-mqtt-server.md` and
//! `docs/adr/0011-external-mqtt-broker.md`.

mod content;
pub mod external;
mod outbound;
pub mod rmqtt;

use std::future::Future;
use std::pin::Pin;

use tether_proto::control::ControlMessage;
use tether_proto::metrics::HostMetrics;
use tether_proto::spec::{ReportedStatus, SpecMessage};
use tether_proto::telemetry::TelemetryBatch;
use tether_proto::{ActionEvent, ActionRequest, DeviceId, DeviceStatus, TopicKind};

/// What a device's publish on a consumed topic carries.
#[derive(Debug, Clone)]
pub enum DeviceMessage {
    /// Birth or death on the `status` topic.
    Status(DeviceStatus),
    /// An action's answer on the `events` topic.
    Event(ActionEvent),
    /// A host metrics sample on the `metrics` topic, as agents sent them
    /// before batches.
    Metrics(HostMetrics),
    /// The agent's status on the `reported` topic.
    Reported(Box<ReportedStatus>),
    /// A batch of a device's spool on the `metrics` or `logs` topic.
    Telemetry(std::sync::Arc<TelemetryBatch>),
}

/// A device's publish, after the link's topic check, as the link read it.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub device: DeviceId,
    pub topic: String,
    /// Payload size in bytes.
    pub size: usize,
    pub content: Content,
}

#[derive(Debug, Clone)]
pub enum Content {
    Message(DeviceMessage),
    /// On a consumed topic but not the JSON the device contract describes.
    Malformed(String),
    /// On a device topic the controller does not consume (logs, reported).
    NotConsumed,
}

/// Why the controller does not accept a publish; the link tells the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Can never be accepted as sent (MQTT 5 PUBACK 0x99).
    Invalid(String),
    /// Over the device's rate limit; may be sent again later (0x97).
    RateLimited(String),
    /// Not stored now (the store is unavailable): a QoS 1 publish is not
    /// acknowledged and its session ends, so the device sends it again; a
    /// QoS 0 one is dropped.
    Unavailable(String),
    /// End the session: the device keeps exceeding its limits.
    Disconnect(String),
}

/// A change to a device's MQTT session, reported in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// The device's current session is established (TLS and identity checked).
    Connected(DeviceId),
    /// The device's current session ended (a superseded session's end is not reported).
    Disconnected(DeviceId),
    /// The device subscribed to its `actions` topic: actions can reach it
    /// now, and its spec (the agent subscribes to `spec` first).
    SubscribedToActions(DeviceId),
}

/// Where the link hands what devices send. Only traffic the ACL allowed
/// arrives here.
pub trait DeviceInbox: Send + Sync + 'static {
    /// Must return at once: a session change never waits for the store.
    fn session(&self, change: SessionChange);

    /// Handles a publish; the link acknowledges it only after `Ok`, i.e.
    /// once it is durable. Publishes of one device arrive one at a time, in
    /// order; different devices' run concurrently.
    fn publish(&self, inbound: Inbound) -> BoxFuture<'_, Result<(), Refusal>>;
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("device {0} is not connected")]
    NotConnected(DeviceId),
    #[error("could not hand the message for device {device} to the MQTT server: {reason}")]
    Publish { device: DeviceId, reason: String },
    #[error("could not start the MQTT endpoint on {addr}: {reason}")]
    Start { addr: String, reason: String },
}

/// What tetherd sends a device besides actions.
#[derive(Debug, Clone, Copy)]
pub enum ServerMessage<'a> {
    /// The device's spec and its version, on `spec`.
    Spec(&'a SpecMessage),
    /// The monitor's request, on `control`.
    Control(ControlMessage),
}

impl ServerMessage<'_> {
    pub fn topic_kind(self) -> TopicKind {
        match self {
            ServerMessage::Spec(_) => TopicKind::Spec,
            ServerMessage::Control(_) => TopicKind::Control,
        }
    }

    /// The payload, or why it could not be encoded.
    pub fn encode(self) -> Result<Vec<u8>, String> {
        match self {
            ServerMessage::Spec(spec) => serde_json::to_vec(spec),
            ServerMessage::Control(control) => serde_json::to_vec(&control),
        }
        .map_err(|e| format!("could not encode the {}: {e}", self.topic_kind().as_str()))
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Answers whether a presented client certificate is a device's current one.
/// Revoked, replaced or deleted devices' certificates are refused at CONNECT.
pub trait DeviceCredentials: Send + Sync + 'static {
    /// `serial_hex` is the certificate serial, lowercase hex without separators.
    fn certificate_is_current<'a>(
        &'a self,
        device: &'a DeviceId,
        serial_hex: &'a str,
    ) -> BoxFuture<'a, bool>;
}

/// The controller's handle to send to devices.
pub trait DeviceLink: Send + Sync + 'static {
    /// Publishes an action on the device's `actions` topic, QoS 1, with MQTT 5
    /// correlation data and message expiry mirroring the request. Messages to
    /// one device keep the order of the calls. Returns the payload's size
    /// in bytes, which the device's usage counts.
    fn publish_action<'a>(
        &'a self,
        device: &'a DeviceId,
        request: &'a ActionRequest,
    ) -> BoxFuture<'a, Result<usize, LinkError>>;

    /// Publishes `message` on the device's topic for it, QoS 1. Messages
    /// to one device keep the order of the calls.
    fn publish_message<'a>(
        &'a self,
        device: &'a DeviceId,
        message: ServerMessage<'a>,
    ) -> BoxFuture<'a, Result<(), LinkError>>;

    /// Whether the device holds a session on this controller now.
    fn is_connected(&self, device: &DeviceId) -> bool;

    /// Closes the device's session, if any (after deletion or revocation).
    fn disconnect(&self, device: &DeviceId);

    /// Closes the device's session here unless it presents the device's
    /// current certificate: for a change another replica announced, which
    /// a session started after it (with the new certificate of a
    /// re-enrolled device) must survive.
    fn disconnect_if_stale(&self, device: &DeviceId) {
        self.disconnect(device);
    }
}
