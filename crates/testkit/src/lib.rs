//! The test harness: real `tetherd` and `tether-agent` processes on loopback,
//! in temp dirs, on free ports, plus a throwaway PostgreSQL.
//!
//! Nothing here is a mock: tests drive the same binaries a user runs.

pub mod agent;
pub mod api;
pub mod binaries;
pub mod browser;
pub mod disk_image;
pub mod fake_alertmanager;
pub mod fake_kube;
pub mod http_target;
pub mod mosquitto;
pub mod netns;
pub mod postgres;
pub mod sandbox;
pub mod seed_schema;
pub mod sim_agent;
pub mod sshd;
pub mod tcp_proxy;
pub mod tetherd;
pub mod wait;
pub mod webhook_receiver;

pub use agent::{Agent, faketime_env, local_api, post_local};
pub use api::ApiClient;
pub use tcp_proxy::TcpProxy;
pub use tetherd::{Database, Tetherd};
pub use wait::wait_until;

/// rustls links two crypto backends here (through rmqtt's and reqwest's
/// dependencies) and refuses to guess; every TLS client of the harness
/// picks ring first. An earlier choice stands.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A port nobody listens on right now. It is released before the caller's
/// server binds it, so callers that cannot bind port 0 themselves retry.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|error| anyhow::anyhow!("failed to find a free port on 127.0.0.1: {error}"))?;
    Ok(listener.local_addr()?.port())
}
