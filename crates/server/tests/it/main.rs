//! tetherd's integration tests, in one binary to keep link time down.

mod actions;
mod api;
mod certificates;
mod contract;
mod device_link;
mod hostile;
mod ingest;
mod jobs;
mod replicas;
mod security;
mod store;
mod support;
