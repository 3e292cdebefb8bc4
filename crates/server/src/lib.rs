//! tetherd, the tether controller.
//!
//! [`run`] wires the pieces: the CA and TLS, the store, the MQTT endpoint
//! behind [`device_link::DeviceLink`], the services, and the HTTPS API.

pub mod actions;
pub mod api;
pub mod auth;
pub mod config;
pub mod device_link;
pub mod ingest;
pub mod pki;
pub mod registry;
pub mod sealing;
pub mod secret_file;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tether_proto::{Catalogue, Presence};

use crate::actions::ActionService;
use crate::api::AppState;
use crate::auth::{ADMIN_CREDENTIALS_FILE, Auth};
use crate::config::{BrokerConfig, RetentionConfig, ServerConfig};
use crate::device_link::external::{ExternalError, ExternalLink};
use crate::device_link::rmqtt::{RmqttConfig, RmqttLink};
use crate::device_link::{DeviceInbox, DeviceLink, LinkError};
use crate::ingest::Ingest;
use crate::pki::server_cert::{ReloadCertificate, ServerCertificateRenewal};
use crate::pki::{CertificateAuthority, PkiError};
use crate::registry::{Registry, StoreCredentials};
use crate::sealing::{SealError, Sealer};
use crate::store::{Store, StoreError};

/// Name of the file tetherd writes once it listens, for scripts and tests.
pub const ENDPOINTS_FILE: &str = "endpoints.json";
/// Largest MQTT packet a device may send: a `send-api` answer carries up to
/// 1 MiB of body, which JSON escaping can grow.
const MAX_MQTT_PACKET: u32 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] secret_file::PrivateDirError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("could not create the admin user")]
    Admin(#[source] auth::AuthError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("could not set up the connection to the external MQTT broker")]
    External(#[from] ExternalError),
    #[error(
        "could not listen for HTTPS on {addr}: is another tetherd running? choose another address with --listen-api"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not load the TLS certificate for HTTPS")]
    Tls(#[source] std::io::Error),
    #[error("could not write {path}")]
    Endpoints {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTPS server failed")]
    Serve(#[source] std::io::Error),
}

/// Runs tetherd until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    // rmqtt links both rustls crypto backends; choosing one up front keeps
    // rustls from refusing to pick. An earlier install (tests) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    secret_file::restrict_new_files();
    secret_file::make_private_dir(&config.data_dir)?;

    let ca = Arc::new(CertificateAuthority::load_or_create(&config.data_dir)?);
    let server_certificate = ServerCertificateRenewal {
        ca: ca.clone(),
        dir: config.data_dir.clone(),
        hosts: config.public_hosts.clone(),
        lifetime: config.pki.server_certificate_lifetime,
    };
    let issued = server_certificate.issue(Utc::now())?;
    let (server_cert, server_key) = (issued.cert_path.clone(), issued.key_path.clone());
    let store = Store::connect(&config.database_url).await?;
    let auth = Auth::new(store.clone(), config.auth.clone());
    if let Some(password) = auth
        .bootstrap_admin(&config.data_dir)
        .await
        .map_err(StartError::Admin)?
    {
        println!(
            "Created the admin user. Username: admin  Password: {password}\n\
             (shown once; also saved in {} with mode 0600)",
            config.data_dir.join(ADMIN_CREDENTIALS_FILE).display()
        );
    }
    let sealer = Arc::new(Sealer::load_or_create(&config.data_dir)?);

    let endpoint = match &config.broker {
        BrokerConfig::Embedded => {
            mark_all_offline(&store).await?;
            let (rmqtt, mqtt_addr) = RmqttLink::bind(
                RmqttConfig {
                    listen: config.listen_mqtt,
                    server_cert_pem: server_cert.clone(),
                    server_key_pem: server_key.clone(),
                    client_ca_pem: ca.cert_path().to_owned(),
                    max_packet_size: MAX_MQTT_PACKET,
                },
                Arc::new(StoreCredentials {
                    store: store.clone(),
                }),
            )
            .await?;
            DeviceEndpoint::Embedded(rmqtt, mqtt_addr)
        }
        BrokerConfig::External(external) => DeviceEndpoint::External(
            ExternalLink::prepare(&config, external, &ca, &store, MAX_MQTT_PACKET).await?,
            external.device_url.to_string(),
        ),
    };
    let link = endpoint.link();

    let registry = Registry::new(
        store.clone(),
        ca.clone(),
        link.clone(),
        config.auth.clone(),
        config.pki.clone(),
    );
    let actions = Arc::new(ActionService::new(
        store.clone(),
        link.clone(),
        Arc::new(Catalogue::builtin()),
        sealer,
        config.actions.clone(),
    ));
    let ingest = Arc::new(Ingest::new(
        store.clone(),
        actions.clone(),
        config.ingest,
        config.retention.metrics,
    ));
    endpoint.serve(ingest.clone());
    if let DeviceEndpoint::External(external, _) = &endpoint {
        tokio::spawn(external.revocation().clone().refresh_forever());
    }
    tokio::spawn(sweep_forever(
        actions.clone(),
        config.actions.sweep_interval,
    ));
    tokio::spawn(prune_telemetry_forever(
        store.clone(),
        config.retention.clone(),
    ));

    let listener =
        std::net::TcpListener::bind(config.listen_api).map_err(|source| StartError::Listen {
            addr: config.listen_api,
            source,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Listen {
            addr: config.listen_api,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen_api,
        source,
    })?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&server_cert, &server_key)
        .await
        .map_err(StartError::Tls)?;
    let mut listeners: Vec<Arc<dyn ReloadCertificate>> =
        vec![Arc::new(HttpsCertificate(tls.clone()))];
    if let DeviceEndpoint::Embedded(rmqtt, _) = &endpoint {
        listeners.push(Arc::new(MqttCertificate(rmqtt.clone())));
    }
    tokio::spawn(server_certificate.run(issued, listeners));
    let state = Arc::new(AppState {
        store,
        auth,
        registry,
        actions,
        ingest,
        ca,
        mqtt_port: endpoint.mqtt_port(),
        device_mqtt_url: endpoint.device_mqtt_url(),
    });
    let handle = axum_server::Handle::new();
    let api_config = config.api.clone();
    let app = api::router(state);
    let serve_handle = handle.clone();
    let server =
        tokio::spawn(
            async move { api::serve(listener, tls, app, serve_handle, &api_config).await },
        );
    let mqtt_url = endpoint.local_mqtt_url();
    write_endpoints(&config.data_dir, api_addr, &mqtt_url)?;
    tracing::info!(api = %format!("https://{api_addr}"), mqtt = %mqtt_url, data_dir = %config.data_dir.display(), "tetherd is ready");

    tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            handle.graceful_shutdown(Some(Duration::from_secs(5)));
        }
        result = server => {
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(StartError::Serve(error)),
                Err(join) => Err(StartError::Serve(std::io::Error::other(join))),
            };
        }
    }
    let _ = std::fs::remove_file(config.data_dir.join(ENDPOINTS_FILE));
    Ok(())
}

/// Where devices connect: the embedded endpoint, or an external broker.
enum DeviceEndpoint {
    Embedded(Arc<RmqttLink>, SocketAddr),
    /// The link, and the URL devices are given.
    External(Arc<ExternalLink>, String),
}

impl DeviceEndpoint {
    fn link(&self) -> Arc<dyn DeviceLink> {
        match self {
            DeviceEndpoint::Embedded(rmqtt, _) => rmqtt.clone(),
            DeviceEndpoint::External(external, _) => external.clone(),
        }
    }

    fn serve(&self, inbox: Arc<dyn DeviceInbox>) {
        match self {
            DeviceEndpoint::Embedded(rmqtt, _) => rmqtt.serve(inbox),
            DeviceEndpoint::External(external, _) => external.serve(inbox),
        }
    }

    fn mqtt_port(&self) -> u16 {
        match self {
            DeviceEndpoint::Embedded(_, addr) => addr.port(),
            DeviceEndpoint::External(..) => 0,
        }
    }

    fn device_mqtt_url(&self) -> Option<String> {
        match self {
            DeviceEndpoint::Embedded(..) => None,
            DeviceEndpoint::External(_, url) => Some(url.clone()),
        }
    }

    /// The URL for `endpoints.json`: a local client's way in.
    fn local_mqtt_url(&self) -> String {
        match self {
            DeviceEndpoint::Embedded(_, addr) if addr.ip().is_unspecified() => {
                format!("mqtts://127.0.0.1:{}", addr.port())
            }
            DeviceEndpoint::Embedded(_, addr) => format!("mqtts://{addr}"),
            DeviceEndpoint::External(_, url) => url.clone(),
        }
    }
}

/// The HTTPS listener's certificate: axum-server swaps the rustls config for
/// new handshakes and keeps established connections.
struct HttpsCertificate(axum_server::tls_rustls::RustlsConfig);

impl ReloadCertificate for HttpsCertificate {
    fn name(&self) -> &'static str {
        "https"
    }

    fn reload<'a>(
        &'a self,
        cert: &'a Path,
        key: &'a Path,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .reload_from_pem_file(cert, key)
                .await
                .map_err(|error| error.to_string())
        })
    }
}

struct MqttCertificate(Arc<RmqttLink>);

impl ReloadCertificate for MqttCertificate {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn reload<'a>(
        &'a self,
        cert: &'a Path,
        key: &'a Path,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(self.0.reload_server_certificate(cert, key))
    }
}

/// A controller that starts holds no device sessions yet; devices become
/// online again when they reconnect.
async fn mark_all_offline(store: &Store) -> Result<(), StoreError> {
    let now = Utc::now();
    for device in store.list_devices().await? {
        if device.presence == Presence::Online {
            store
                .set_presence(&device.name, Presence::Offline, now)
                .await?;
        }
    }
    Ok(())
}

async fn sweep_forever(actions: Arc<ActionService>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(error) = actions.sweep(Utc::now()).await {
            tracing::error!(error = %error_chain(&error), "could not expire or time out actions");
        }
    }
}

/// How often old telemetry is deleted; retention is counted in days.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

async fn prune_telemetry_forever(store: Store, retention: RetentionConfig) {
    let mut ticker = tokio::time::interval(PRUNE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = Utc::now();
        let before = |keep: Duration| {
            now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX)
        };
        if let Err(error) = store.delete_audit_before(before(retention.events)).await {
            tracing::error!(error = %error_chain(&error), "could not delete old audit entries");
        }
        match store.delete_sessions_expired_before(now).await {
            Ok(0) => {}
            Ok(sessions) => tracing::info!(sessions, "deleted expired sessions"),
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "could not delete expired sessions")
            }
        }
        match store
            .delete_finished_actions_before(before(retention.actions))
            .await
        {
            Ok(0) => {}
            Ok(actions) => tracing::info!(actions, "deleted finished actions past their retention"),
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "could not delete old finished actions")
            }
        }
        match store
            .delete_telemetry_before(before(retention.events), before(retention.metrics))
            .await
        {
            Ok((0, 0)) => {}
            Ok((events, metrics)) => {
                tracing::info!(events, metrics, "deleted telemetry past its retention")
            }
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "could not delete old telemetry")
            }
        }
    }
}

fn write_endpoints(dir: &Path, api: SocketAddr, mqtt: &str) -> Result<(), StartError> {
    let local = |addr: SocketAddr| {
        if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        }
    };
    let contents = serde_json::json!({
        "api": format!("https://{}", local(api)),
        "mqtt": mqtt,
        "pid": std::process::id(),
    });
    let path = dir.join(ENDPOINTS_FILE);
    let tmp = dir.join(format!("{ENDPOINTS_FILE}.tmp"));
    std::fs::write(&tmp, contents.to_string())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| StartError::Endpoints { path, source })
}

/// An error and its causes on one line: `a: b: c`. Printed once, at the edge.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
