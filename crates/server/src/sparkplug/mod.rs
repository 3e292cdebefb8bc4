//! Sparkplug B northbound (issue 18): tetherd presents the fleet on an
//! external MQTT broker as Sparkplug B edge nodes and devices, so Factory+
//! and other Sparkplug host applications see it.
//!
//! This module is the pure core: the Tahu payload schema ([`payload`]),
//! topic names and ids ([`topics`]), and an edge node's session state with
//! the messages it publishes ([`node`]). Nothing here does IO. Nothing in
//! tetherd calls it yet: the fleet monitor wires it to a broker connection
//! and feeds it devices, metrics and alerts.

pub mod node;
pub mod payload;
pub mod topics;
