//! The language tetherd, tether-agent and the tether CLI speak.
//!
//! Everything here is plain data and pure functions: the MQTT topic layout, the
//! messages on those topics, the HTTP API's types, the action catalogue with its
//! input validation, and the action lifecycle. No IO, no async runtime.

pub mod action;
pub mod api;
pub mod ca;
pub mod catalogue;
pub mod certificate;
pub mod device;
pub mod labels;
pub mod limits;
pub mod metrics;
pub mod priority;
pub mod redact;
pub mod spec;
pub mod telemetry;
pub mod topics;
pub mod tunnel;

#[cfg(test)]
mod contract_schemas;

pub use action::{ActionEvent, ActionRequest, ActionState, TransitionError};
pub use catalogue::{Catalogue, InputError};
pub use device::{DeviceId, DeviceStatus, InvalidDeviceId, Presence};
pub use topics::{DeviceTopic, TopicKind};

/// Version of the wire protocol; it is part of every topic (`tether/v1/…`).
pub const PROTOCOL_VERSION: &str = "v1";
