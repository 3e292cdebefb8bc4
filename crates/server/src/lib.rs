//! tetherd, the tether controller.
//!
//! [`run`] wires the pieces: the CA and TLS, the store, the MQTT endpoint
//! behind [`device_link::DeviceLink`], the services, and the HTTPS API.

pub mod actions;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod console;
pub mod desired;
pub mod device_link;
pub mod ingest;
pub mod jobs;
pub mod join;
pub mod kube_proxy;
pub mod live;
pub mod logs;
pub mod management_shell;
pub mod metrics;
pub mod monitor;
pub mod observability;
pub mod per_caller;
pub mod pki;
pub mod provisioning;
pub mod registry;
pub mod releases;
pub mod sealing;
pub mod secret_file;
pub mod secrets;
pub mod service_manager;
pub mod sparkplug;
pub mod store;
pub mod telemetry;
pub mod tunnels;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tether_proto::Catalogue;

use crate::actions::ActionService;
use crate::api::AppState;
use crate::auth::{ADMIN_CREDENTIALS_FILE, Auth};
use crate::cluster::bus::{Bus, BusError};
use crate::cluster::lease::Lease;
use crate::cluster::presence::SessionOwner;
use crate::cluster::singleton::Singleton;
use crate::cluster::{ClusterError, Health, Membership, ReplicaId};
use crate::config::{BrokerConfig, RetentionConfig, ServerConfig};
use crate::device_link::external::{ExternalError, ExternalLink};
use crate::device_link::rmqtt::{RmqttConfig, RmqttLink};
use crate::device_link::{DeviceInbox, DeviceLink, LinkError};
use crate::ingest::{Handlers, Ingest};
use crate::jobs::JobService;
use crate::observability::{Observability, ScrapeToken, TokenError};
use crate::pki::server_cert::{ReloadCertificate, ServerCertificateRenewal};
use crate::pki::{CertificateAuthority, PkiError};
use crate::registry::{Registry, StoreCredentials};
use crate::releases::{ReleaseKeys, Releases};
use crate::sealing::{SealError, Sealer};
use crate::store::{Store, StoreError};

/// Name of the file tetherd writes once it listens, for scripts and tests.
pub const ENDPOINTS_FILE: &str = "endpoints.json";
/// The notification listener's `application_name` in PostgreSQL, followed by
/// tetherd's process id, so operators (and tests) can find its connection.
pub const BUS_APPLICATION_NAME_PREFIX: &str = "tetherd-bus-";
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
    #[error(transparent)]
    ScrapeToken(#[from] TokenError),
    #[error(transparent)]
    ReleaseKeys(#[from] crate::releases::keys::KeyError),
    #[error("failed to join the other replicas")]
    Cluster(#[from] ClusterError),
    #[error("could not create the admin user")]
    Admin(#[source] auth::AuthError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Bus(#[from] BusError),
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
    #[error("could not set up the Sparkplug B northbound")]
    Sparkplug(#[from] sparkplug::config::SparkplugFileError),
    #[error("could not set up the delivery of alerts ([alerts])")]
    Alerts(#[from] monitor::delivery::DeliveryError),
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
    let replica = ReplicaId::load_or_create(&config.data_dir)?;
    let sealer = Arc::new(Sealer::load_or_create(&config.data_dir)?);
    cluster::check_shared_secrets(&store, ca.sha256_hex(), sealer.fingerprint()).await?;
    let release_keys = Arc::new(ReleaseKeys::load_or_create(&config.data_dir)?);
    cluster::check_release_keys(
        &store,
        release_keys.public_key(),
        release_keys.token_key_fingerprint(),
    )
    .await?;
    let releases = Releases::new(
        store.clone(),
        release_keys.clone(),
        config.releases.clone(),
        &config.data_dir,
    );
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
    let scrape_token = ScrapeToken::load_or_create(&config.data_dir)?;
    let observability = Arc::new(Observability::default());
    let bus = Bus::start(
        &store,
        &config.database_url,
        &format!("{BUS_APPLICATION_NAME_PREFIX}{}", std::process::id()),
        observability.clone(),
    )
    .await?;

    let endpoint = match &config.broker {
        BrokerConfig::Embedded => {
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
    // Before accepting devices: the sessions this replica held before it
    // started are over, and its lease names where agents reach it.
    let public_host = config
        .public_hosts
        .first()
        .map_or("localhost", String::as_str);
    let lease = Lease::acquire(
        store.clone(),
        &replica,
        cluster::url("https", public_host, api_addr.port()),
        config
            .cluster
            .advertise_mqtt_url
            .clone()
            .or_else(|| endpoint.device_mqtt_url())
            .unwrap_or_else(|| cluster::url("mqtts", public_host, endpoint.mqtt_port())),
        config.cluster.lease,
    )
    .await?;
    let membership = Membership::new(store.clone(), replica.clone(), &config.cluster);
    let singleton_holder = replica.clone();

    let registry = Registry::new(
        store.clone(),
        ca.clone(),
        link.clone(),
        config.auth.clone(),
        config.pki.clone(),
        membership,
        bus.clone(),
    )
    .with_release_signing_key(release_keys.public_key().to_owned());
    let actions = Arc::new(ActionService::new(
        store.clone(),
        link.clone(),
        Arc::new(Catalogue::builtin()),
        sealer.clone(),
        config.actions.clone(),
        observability.clone(),
        bus.clone(),
    ));
    let jobs = Arc::new(JobService::new(
        store.clone(),
        actions.clone(),
        registry.clone(),
        sealer,
    ));
    // Subscribed before devices connect and before the API answers, so no
    // announcement of this replica's own life is missed.
    tokio::spawn(actions.clone().follow(bus.subscribe()));
    tokio::spawn(registry.clone().follow(bus.subscribe()));
    tokio::spawn(registry.specs().clone().follow(bus.subscribe()));
    // Through an external broker, the broker holds the sessions: any
    // replica may see a device's birth or will, and none owns its presence.
    let owner = match &endpoint {
        DeviceEndpoint::Embedded(..) => SessionOwner::Replica(replica),
        DeviceEndpoint::External(..) => SessionOwner::Broker,
    };
    // The monitor's rebirth and reload requests, whichever replica holds
    // the device's session.
    let device_control = Arc::new(crate::monitor::control::DeviceControl::new(
        link.clone(),
        registry.specs().clone(),
        bus.clone(),
        owner.clone(),
    ));
    tokio::spawn(device_control.clone().follow(bus.subscribe()));
    let desired = crate::desired::DesiredState::new(
        store.clone(),
        registry.specs().clone(),
        releases.clone(),
    );
    let secrets = crate::secrets::Secrets::new(store.clone(), registry.specs().clone());
    let ingest = Arc::new(Ingest::new(
        store.clone(),
        owner,
        Handlers {
            actions: actions.clone(),
            specs: registry.specs().clone(),
            desired: desired.clone(),
            secrets: secrets.clone(),
        },
        config.ingest,
        config.retention.metrics,
        observability.clone(),
        bus.clone(),
    ));
    tokio::spawn(ingest.clone().follow(bus.subscribe()));
    endpoint.serve(ingest.clone());
    if let DeviceEndpoint::External(external, _) = &endpoint {
        tokio::spawn(external.revocation().clone().refresh_forever());
    }
    let reclaiming = ingest.clone();
    let renewing = lease.clone().spawn(move || {
        let sessions = reclaiming.reclaim_sessions();
        tracing::info!(sessions, "re-claimed the sessions this replica holds");
    });
    let sweeping = actions.clone();
    Singleton::spawn(
        store.clone(),
        &singleton_holder,
        "action-sweeps",
        config.actions.sweep_interval,
        move |now| {
            let actions = sweeping.clone();
            async move {
                if let Err(error) = actions.sweep(now).await {
                    tracing::error!(error = %error_chain(&error), "could not expire or time out actions");
                }
            }
        },
    );
    let dispatching = jobs.clone();
    Singleton::spawn(
        store.clone(),
        &singleton_holder,
        "jobs-dispatcher",
        jobs::DISPATCH_INTERVAL,
        move |now| {
            let jobs = dispatching.clone();
            async move {
                if let Err(error) = jobs.tick(now).await {
                    tracing::error!(error = %error_chain(&error), "could not dispatch jobs");
                }
            }
        },
    );
    tokio::spawn(deliver_pending_forever(
        actions.clone(),
        config.cluster.outbox_sweep,
    ));
    let metrics = Arc::new(crate::metrics::Metrics::new(
        store.clone(),
        config.retention.metrics_config(),
    ));
    let rolling = metrics.clone();
    Singleton::spawn(
        store.clone(),
        &singleton_holder,
        "metrics-rollup",
        config.retention.metrics_rollup_interval,
        move |now| {
            let metrics = rolling.clone();
            async move {
                match metrics.roll_up(now).await {
                    Ok(done) => tracing::debug!(
                        minute_buckets = done.minute_buckets,
                        hour_buckets = done.hour_buckets,
                        "rolled up metrics"
                    ),
                    Err(error) => {
                        tracing::error!(error = %error_chain(&error), "could not roll up metrics")
                    }
                }
            }
        },
    );
    let reconciling = desired.clone();
    // Each run reconciles every deployment, then waits to be woken (a
    // deployment changed, a device reported here) or for the period.
    Singleton::spawn(
        store.clone(),
        &singleton_holder,
        "desired-state",
        std::time::Duration::from_millis(100),
        move |now| {
            let desired = reconciling.clone();
            async move {
                desired.reconcile(now).await;
                desired.woken().await;
            }
        },
    );
    let alert_rules =
        crate::monitor::rules::AlertRules::new(store.clone(), config.alert_rules.clone());
    let evaluating = alert_rules.clone();
    Singleton::spawn(
        store.clone(),
        &singleton_holder,
        "alert-rules",
        config.alert_rules.evaluation_interval,
        move |now| {
            let rules = evaluating.clone();
            async move {
                match rules.evaluate(now).await {
                    Ok(done) => tracing::debug!(
                        rules = done.rules,
                        raised = done.raised,
                        resolved = done.resolved,
                        "evaluated the alert rules"
                    ),
                    Err(error) => {
                        tracing::error!(error = %error_chain(&error), "could not evaluate the alert rules")
                    }
                }
            }
        },
    );
    let monitor = Arc::new(crate::monitor::Monitor::new(
        store.clone(),
        device_control,
        config.monitor.clone(),
        Utc::now(),
    ));
    Singleton::spawn(
        store.clone(),
        &singleton_holder,
        "fleet-monitor",
        config.monitor.pass_interval(),
        move |now| {
            let monitor = monitor.clone();
            async move {
                match monitor.pass(now).await {
                    Ok(done) => tracing::debug!(
                        devices = done.devices_checked,
                        rebirths = done.rebirths_requested,
                        reloads = done.reloads_requested,
                        raised = done.alerts_raised,
                        resolved = done.alerts_resolved,
                        "monitor pass done"
                    ),
                    Err(error) => {
                        tracing::error!(error = %error_chain(&error), "could not finish the monitor's pass; the next one goes on")
                    }
                }
            }
        },
    );
    if let Some(sparkplug) = &config.sparkplug {
        sparkplug::service::Northbound::start(store.clone(), sparkplug, &singleton_holder)?;
    }
    let delivery = Arc::new(
        monitor::delivery::Delivery::start(
            &config.alerts,
            store.clone(),
            monitor::delivery::Source {
                replica: singleton_holder.as_str().to_owned(),
                api_url: config
                    .cluster
                    .advertise_api_url
                    .clone()
                    .unwrap_or_else(|| cluster::url("https", public_host, api_addr.port())),
            },
            observability.clone(),
            Utc::now(),
        )
        .await?,
    );
    Singleton::spawn(
        store.clone(),
        &singleton_holder,
        "alert-delivery",
        config.alerts.poll_interval,
        move |now| {
            let delivery = delivery.clone();
            async move { delivery.run(now).await }
        },
    );
    let pruning = store.clone();
    let retention = config.retention.clone();
    Singleton::spawn(
        store.clone(),
        &singleton_holder,
        "telemetry-retention",
        PRUNE_INTERVAL,
        move |now| prune_telemetry(pruning.clone(), retention.clone(), now),
    );
    let accepting = endpoint.accepting();
    let health = Arc::new(Health::new(store.clone(), lease.clone(), accepting));

    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&server_cert, &server_key)
        .await
        .map_err(StartError::Tls)?;
    let mut listeners: Vec<Arc<dyn ReloadCertificate>> =
        vec![Arc::new(HttpsCertificate(tls.clone()))];
    if let DeviceEndpoint::Embedded(rmqtt, _) = &endpoint {
        listeners.push(Arc::new(MqttCertificate(rmqtt.clone())));
    }
    tokio::spawn(server_certificate.run(issued, listeners));
    let logs = Arc::new(logs::Logs::new(
        store.clone(),
        bus.clone(),
        actions.clone(),
        config.api.max_follows_per_user,
    ));
    let live = live::Feed::new(
        store.clone(),
        live::FeedConfig::new(config.api.max_follows_per_user),
    );
    let state = Arc::new(AppState {
        logs,
        live,
        // As many as HTTP/1.1 allowed one address before HTTP/2 (ADR 0035):
        // a connection each.
        waits: crate::per_caller::PerCaller::new(config.api.max_connections_per_ip),
        provisioning: provisioning::Provisioning::new(store.clone(), registry.clone()),
        desired,
        releases,
        secrets,
        alert_rules,
        store,
        auth,
        registry,
        actions,
        jobs,
        metrics,
        ingest,
        ca,
        observability,
        scrape_token,
        mqtt_port: endpoint.mqtt_port(),
        device_mqtt_url: endpoint.device_mqtt_url(),
        tunnels: Arc::new(tunnels::Tunnels::new(
            std::time::Duration::from_secs(tether_proto::tunnel::DIAL_SECONDS),
            config.tunnels.clone(),
        )),
        advertise_api_url: config.cluster.advertise_api_url.clone(),
        health,
        join: config.kubernetes.clone(),
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
    service_manager::ready();
    let watchdog = service_manager::feed_the_watchdog();

    tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            service_manager::stopping();
            if let Some(watchdog) = watchdog {
                watchdog.abort();
            }
            handle.graceful_shutdown(Some(Duration::from_secs(5)));
            // No renewal may register the lease again after it is released.
            renewing.abort();
            if let Err(error) = lease.release().await {
                tracing::warn!(error = %error_chain(&error), "could not mark this replica's devices offline; other replicas do once its lease lapses");
            }
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
#[derive(Clone)]
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

    /// Whether devices can reach tetherd now: the embedded endpoint
    /// listens, or tetherd is connected to the external broker.
    fn accepting(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let endpoint = self.clone();
        move || match &endpoint {
            DeviceEndpoint::Embedded(rmqtt, _) => rmqtt.is_accepting(),
            DeviceEndpoint::External(external, _) => external.is_broker_connected(),
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

/// Runs on every replica: the safety net for a lost announcement of a
/// device's new action (ADR 0010).
async fn deliver_pending_forever(actions: Arc<ActionService>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match actions.deliver_pending(Utc::now()).await {
            Ok(0) => {}
            Ok(delivered) => {
                tracing::info!(
                    actions = delivered,
                    "the outbox sweep delivered actions no notification had"
                )
            }
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "could not look for pending actions to deliver")
            }
        }
    }
}

/// How often old telemetry is deleted; retention is counted in days.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Deletes what is past its retention; one replica at a time runs it.
async fn prune_telemetry(store: Store, retention: RetentionConfig, now: chrono::DateTime<Utc>) {
    let before =
        |keep: Duration| now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
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
    match store
        .delete_delivered_alert_deliveries_before(before(retention.events))
        .await
    {
        Ok(0) => {}
        Ok(deliveries) => {
            tracing::info!(deliveries, "deleted alert deliveries past their retention")
        }
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "could not delete old alert deliveries")
        }
    }
    match store.delete_logs_before(before(retention.logs)).await {
        Ok(0) => {}
        Ok(lines) => tracing::info!(lines, "deleted log lines past their retention"),
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "could not delete old log lines")
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

pub use tether_proto::error_chain;
