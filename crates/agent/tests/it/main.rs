//! tether-agent's integration tests against a real tetherd, in one binary to
//! keep link time down.

mod charts;
mod clock;
mod control;
mod dumpable;
mod failover;
mod fake_kube;
mod kubernetes;
mod local_api;
mod logs;
mod network;
mod offline;
mod power;
mod restore;
mod secrets;
mod self_update;
mod session;
mod shell_helper;
mod sshd;
mod supervisor;
mod support;
mod third_party_device;
mod time;
mod update_locks;
mod watchdog;
