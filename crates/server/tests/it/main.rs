//! tetherd's integration tests, in one binary to keep link time down.

mod actions;
mod api;
mod certificates;
mod device_link;
mod security;
mod store;
mod support;
