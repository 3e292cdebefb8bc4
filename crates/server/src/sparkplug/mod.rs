//! Sparkplug B northbound (issue 18): tetherd presents the fleet on an
//! external MQTT broker as Sparkplug B edge nodes and devices, so Factory+
//! and other Sparkplug host applications see it.
//!
//! The pure core is the Tahu payload schema ([`payload`]),
//! topic names and ids ([`topics`]), an edge node's session state with
//! the messages it publishes ([`node`]), and the fleet's Sparkplug view
//! with the changes between two passes ([`fleet`]), none of which does IO;
//! the IO shells are the publisher that keeps one edge node's MQTT
//! connection ([`publisher`]) and the pass that reads the store and feeds
//! the publishers ([`service`]), configured by `[sparkplug]` ([`config`]).
//! `docs/operations/sparkplug.md` describes what a host application sees.

pub mod config;
pub mod fleet;
pub mod node;
pub mod payload;
pub mod publisher;
pub mod service;
pub mod topics;
