//! tetherd's integration tests, in one binary to keep link time down.

mod actions;
mod api;
mod device_link;
mod ingest;
mod security;
mod store;
mod support;
