//! The link between tetherd and its devices.
//!
//! Domain code sees only this module's trait and message enum; the MQTT server
//! that carries them (rmqtt, embedded) is one adapter behind it, so an external
//! clustered broker can replace it by configuration without touching the
//! services. See `docs/adr/0001-embedded-mqtt-server.md`.

pub mod rmqtt;

use std::future::Future;
use std::pin::Pin;

use tether_proto::metrics::HostMetrics;
use tether_proto::{ActionEvent, ActionRequest, DeviceId, DeviceStatus};

/// What devices tell the controller. Only traffic the ACL allowed arrives here.
#[derive(Debug, Clone)]
pub enum DeviceMessage {
    /// The device's current session is established (TLS and identity checked).
    Connected { device: DeviceId },
    /// The device's current session ended (a superseded session's end is not reported).
    Disconnected { device: DeviceId },
    /// Birth or death on the `status` topic.
    Status {
        device: DeviceId,
        status: DeviceStatus,
    },
    /// An action's answer on the `events` topic.
    Event {
        device: DeviceId,
        event: ActionEvent,
    },
    /// A host metrics sample on the `metrics` topic.
    Metrics {
        device: DeviceId,
        metrics: HostMetrics,
    },
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
    /// one device keep the order of the calls.
    fn publish_action<'a>(
        &'a self,
        device: &'a DeviceId,
        request: &'a ActionRequest,
    ) -> BoxFuture<'a, Result<(), LinkError>>;

    /// Whether the device holds a session on this controller now.
    fn is_connected(&self, device: &DeviceId) -> bool;

    /// Closes the device's session, if any (after deletion or revocation).
    fn disconnect(&self, device: &DeviceId);
}
