//! Sparkplug B northbound (issue 18): tetherd presents the fleet on an
//! external MQTT broker as Sparkplug B edge nodes and devices, so Factory+
//! and other Sparkplug host applications see it.
//!
//! The pure core is the Tahu payload schema ([`payload`]),
//! topic names and ids ([`topics`]), and an edge node's session state with
//! the messages it publishes ([`node`]), none of which does IO; and the
//! thin IO shell that keeps one edge node's MQTT connection ([`publisher`]).
//! Nothing in tetherd calls it yet: the fleet monitor wires it in, with its
//! configuration, and feeds it devices, metrics and alerts.

pub mod node;
pub mod payload;
pub mod publisher;
pub mod topics;
