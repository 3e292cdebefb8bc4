//! tetherd's integration tests, in one binary to keep link time down.

mod action_sets;
mod actions;
mod api;
mod certificates;
mod contract;
mod cross_replica;
mod desired;
mod device_link;
mod external_broker;
mod hostile;
mod ingest;
mod jobs;
mod join;
mod logs;
mod metrics;
mod operations;
mod provisioning;
mod queries;
mod replicas;
mod roles;
mod secrets;
mod security;
mod specs;
mod store;
mod support;
mod telemetry;
