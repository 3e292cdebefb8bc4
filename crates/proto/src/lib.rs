//! The language tetherd, tether-agent and the tether CLI speak.
//!
//! Everything here is plain data and pure functions: the MQTT topic layout, the
//! messages on those topics, the HTTP API's types, the action catalogue with its
//! input validation, and the action lifecycle. No IO, no async runtime.

pub mod accounts;
pub mod action;
pub mod alert_deliveries;
pub mod alert_rules;
pub mod alerts;
pub mod api;
pub mod ca;
pub mod catalogue;
pub mod certificate;
pub mod conditions;
pub mod control;
pub mod desired;
pub mod device;
pub mod host;
pub mod host_time;
pub mod kubeconfig;
pub mod labels;
pub mod limits;
pub mod metrics;
pub mod network;
pub mod password;
pub mod priority;
pub mod provisioning;
pub mod redact;
pub mod sd_notify;
pub mod sealed;
pub mod secrets;
pub mod spec;
pub mod telemetry;
pub mod template;
pub mod topics;
pub mod tunnel;
pub mod version_stamp;

#[cfg(test)]
mod contract_schemas;

pub use action::{ActionEvent, ActionRequest, ActionState, TransitionError};
pub use catalogue::{Catalogue, InputError};
pub use device::{DeviceId, DeviceStatus, InvalidDeviceId, Presence};
pub use topics::{DeviceTopic, TopicKind};

/// An error and its causes on one line, `a: b: c`: how tetherd, the agent
/// and the CLI print an error, once, at the edge. A cause whose text the
/// line already ends with is skipped (reqwest and hyper repeat their inner
/// message).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Version of the wire protocol; it is part of every topic (`tether/v1/…`).
pub const PROTOCOL_VERSION: &str = "v1";
