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
pub mod jobs;
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
use crate::config::{RetentionConfig, ServerConfig};
use crate::device_link::rmqtt::{RmqttConfig, RmqttLink};
use crate::device_link::{DeviceLink, LinkError};
use crate::ingest::Ingest;
use crate::jobs::JobService;
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
    mark_all_offline(&store).await?;
    let sealer = Arc::new(Sealer::load_or_create(&config.data_dir)?);

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
    let link: Arc<dyn DeviceLink> = rmqtt.clone();

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
        sealer.clone(),
        config.actions.clone(),
    ));
    let jobs = Arc::new(JobService::new(
        store.clone(),
        actions.clone(),
        registry.clone(),
        sealer,
    ));
    let ingest = Arc::new(Ingest::new(
        store.clone(),
        actions.clone(),
        config.ingest,
        config.retention.metrics,
    ));
    rmqtt.serve(ingest.clone());
    tokio::spawn(sweep_forever(
        actions.clone(),
        config.actions.sweep_interval,
    ));
    tokio::spawn(dispatch_jobs_forever(jobs.clone()));
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
    tokio::spawn(server_certificate.run(
        issued,
        vec![
            Arc::new(HttpsCertificate(tls.clone())),
            Arc::new(MqttCertificate(rmqtt.clone())),
        ],
    ));
    let state = Arc::new(AppState {
        store,
        auth,
        registry,
        actions,
        jobs,
        ingest,
        ca,
        mqtt_port: mqtt_addr.port(),
    });
    let handle = axum_server::Handle::new();
    let api_config = config.api.clone();
    let app = api::router(state);
    let serve_handle = handle.clone();
    let server =
        tokio::spawn(
            async move { api::serve(listener, tls, app, serve_handle, &api_config).await },
        );
    write_endpoints(&config.data_dir, api_addr, mqtt_addr)?;
    tracing::info!(api = %format!("https://{api_addr}"), mqtt = %format!("mqtts://{mqtt_addr}"), data_dir = %config.data_dir.display(), "tetherd is ready");

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

/// Releases queued job actions: often while a job is unfinished, rarely
/// otherwise, and at once when a job is created or cancelled here.
async fn dispatch_jobs_forever(jobs: Arc<JobService>) {
    loop {
        let active = match jobs.tick(Utc::now()).await {
            Ok(active) => active,
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "could not dispatch jobs");
                true
            }
        };
        let pause = if active {
            jobs::DISPATCH_INTERVAL
        } else {
            jobs::IDLE_INTERVAL
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = jobs.woken() => {}
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
            .delete_finished_jobs_before(before(retention.actions))
            .await
        {
            Ok(0) => {}
            Ok(jobs) => tracing::info!(jobs, "deleted finished jobs past their retention"),
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "could not delete old finished jobs")
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

fn write_endpoints(dir: &Path, api: SocketAddr, mqtt: SocketAddr) -> Result<(), StartError> {
    let local = |addr: SocketAddr| {
        if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        }
    };
    let contents = serde_json::json!({
        "api": format!("https://{}", local(api)),
        "mqtt": format!("mqtts://{}", local(mqtt)),
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
