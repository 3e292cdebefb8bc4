//! tether-agent: enrolls a device with tetherd once, then keeps an MQTT
//! session open and answers actions with events (docs/interfaces.md).

pub mod actions;
pub mod authorization;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod control;
pub mod dedupe;
pub mod deployments;
pub mod endpoints;
pub mod enroll;
pub mod host;
pub mod kubernetes;
pub mod local_api;
pub mod logging;
pub mod logs;
pub mod management_shell;
pub mod metrics;
pub mod network;
pub mod provisioning;
pub mod queue;
pub mod renewal;
pub mod restore;
pub mod secrets;
pub mod self_update;
pub mod session;
pub mod spec;
pub mod spool;
pub mod state;
pub mod terminal;
pub mod time;
pub mod tls;
pub mod tunnel;
pub mod updates;
pub mod watchdog;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use clock::ServerClock;
use config::{Config, ConfigError, FirstStart};
use enroll::EnrollError;
use logging::LogControl;
use renewal::Renewal;
use session::SessionError;
use spool::Spools;
use spool::disk::DiskError;
use state::{StateDir, StateError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("enrollment failed")]
    Enroll(#[from] EnrollError),
    #[error("registration failed")]
    Register(#[from] provisioning::register::RegisterError),
    #[error(transparent)]
    Facts(#[from] spec::facts::FactsFileError),
    #[error("no credentials in {dir}")]
    NotEnrolled {
        dir: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("cannot open the telemetry spool")]
    Spool(#[from] DiskError),
    #[error(transparent)]
    LocalApi(#[from] local_api::LocalApiError),
    #[error(transparent)]
    Logs(#[from] logs::LogsError),
    #[error(transparent)]
    Identity(#[from] kubernetes::identity::IdentityError),
    #[error(transparent)]
    ShellListener(#[from] management_shell::listener::ListenError),
    #[error(transparent)]
    SealingKey(#[from] secrets::KeyError),
    #[error("cannot find the agent's own executable")]
    Executable(#[source] std::io::Error),
}

/// rustls needs one process-wide crypto provider; the agent uses ring.
/// Called at start and again before building HTTPS clients, since reqwest
/// panics without one (a no-op once installed).
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How the agent ended.
#[derive(Debug)]
pub enum Exit {
    /// Stopped as asked.
    Stopped,
    /// Stopped to run another binary in its place ([`self_update::restart`]).
    Restart(self_update::Restart),
}

/// Enrolls if the state directory has no credentials, then serves actions
/// until `shutdown` resolves, or until it stops to update itself.
pub async fn run(
    config: &Config,
    logging: LogControl,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, AgentError> {
    let state = StateDir::open(config.state_dir()?)?;
    // A trial that ended unwatched (a reboot during it) is rolled back
    // before anything else.
    if let Some(restart) = self_update::at_start(state.path()) {
        return Ok(Exit::Restart(restart));
    }
    let clock = ServerClock::new();
    // Opened before enrollment, so local applications can log from the start.
    let spools = Spools::open(state.path(), config.spool(), clock.clone())?;
    // The spec applied last, in force before tetherd is reached again.
    // The sealing key's public half is in every report (ADR 0030).
    let kubernetes = config.kubernetes();
    let in_cluster = kubernetes
        .clone()
        .filter(|k| k.mode == kubernetes::Mode::Cluster);
    // In a pod the state directory may be new while the device is not:
    // its identity and its sealing key come back from their Secret before
    // a key is made.
    if let Some(cluster) = &in_cluster
        && state.load()?.is_none()
    {
        kubernetes::identity::IdentitySecret::new(cluster)
            .restore(&state)
            .await?;
    }
    let sealing_key = std::sync::Arc::new(secrets::load_or_create_key(state.path())?);
    let applied = spec::SpecHandle::load(state.path());
    // In a pod the secrets are Kubernetes Secrets, for the workloads to
    // mount; a file in the pod's state directory would reach none of them.
    let applied = match &in_cluster {
        Some(_) => {
            secrets::remove_files(state.path());
            applied
        }
        None => applied.with_secrets(secrets::SecretFiles::new(state.path(), sealing_key.clone())),
    };
    let mut facts = spec::facts::gather(std::path::Path::new("/"));
    facts.kubernetes = kubernetes.as_ref().map(kubernetes::KubernetesConfig::facts);
    if let Some(path) = &config.facts_file {
        facts = spec::facts::overlay_file(facts, path)?;
    }
    let status = spec::StatusSource::new(applied.clone(), facts.clone())
        .with_sealing_key(&sealing_key.public_key())
        .with_boot(host::boot::read(&config.boot_id_file));
    let update_locks = Arc::new(updates::UpdateLocks::load(state.path()));
    let power = host::power::Power {
        config: config.power(),
        locks: update_locks.clone(),
        gate: self_update::ActionGate::default(),
    };
    // From the start, enrolling included: systemd's watchdog expects
    // notifications from then on, and a spec applied before keeps the
    // device's watchdog in force offline too.
    let health = watchdog::HealthSources::default();
    let watchdog = watchdog::Watchdog::start(
        config.watchdog(state.path()),
        health.clone(),
        applied.subscribe(),
        status.watchdog.clone(),
    );
    let (identity, identity_view) = tokio::sync::watch::channel(None);
    let local_api = local_api::LocalApi::bind(
        &config.local_api(state.path()),
        spools.clone(),
        local_api::DeviceView {
            identity: identity_view,
            status: status.view(),
        },
        update_locks.clone(),
        clock.clone(),
    )?;
    let sources = logs::Logs::bind(
        config.logs(),
        state.path(),
        spools.clone(),
        clock.clone(),
        &applied,
    )
    .await?;
    let follow = sources.follow();
    let positions = sources.positions();
    let process_logs = sources.sink();
    let _flusher = AbortOnDrop(tokio::spawn(spools.clone().run_flusher()));
    let _budgets = AbortOnDrop(tokio::spawn(follow_budgets(
        applied.subscribe(),
        spools.clone(),
    )));
    let _local_api = AbortOnDrop(tokio::spawn(local_api.serve()));
    let _update_holds = AbortOnDrop(tokio::spawn(updates::run(
        update_locks,
        applied.subscribe(),
        status.update_holds.clone(),
    )));
    let (stop_sources, sources_stopped) = tokio::sync::oneshot::channel::<()>();
    // Stopped, not aborted, at the end: see below.
    let log_sources = tokio::spawn(sources.run(async move {
        let _ = sources_stopped.await;
    }));
    // Desired state runs from the start, offline too: the spec applied
    // last is in force.
    let _charts = AbortOnDrop(match kubernetes.clone() {
        Some(cluster) => tokio::spawn(deployments::charts::run(
            cluster,
            config.charts(),
            applied.subscribe(),
            status.deployments.clone(),
        )),
        None => tokio::spawn(deployments::charts::refuse_without_cluster(
            applied.subscribe(),
            status.deployments.clone(),
        )),
    });
    let _cluster_secrets = in_cluster.map(|cluster| {
        AbortOnDrop(tokio::spawn(
            secrets::cluster::ClusterSecrets::new(&cluster, sealing_key).run(
                config.secret_resync(),
                applied.subscribe(),
                status.secret_errors.clone(),
            ),
        ))
    });
    let kubernetes = actions::Kubernetes {
        config: kubernetes,
        kubectl: config.kubectl(),
        k3s_restart: config.k3s_restart(),
        state_dir: state.path().to_owned(),
        restore_helper: config.restore_helper(),
        operator: Default::default(),
        admin: Default::default(),
    };
    // Needs no enrollment: the cluster reaches it from the pod's start.
    let _shell_listener = match config.shell_listener() {
        Some(listener) => {
            let listener = management_shell::listener::Listener::bind(listener).await?;
            Some(AbortOnDrop(tokio::spawn(listener.serve(
                config.management_shell(state.path()),
                kubernetes.clone(),
            ))))
        }
        None => None,
    };
    let ran = serve(
        config,
        state,
        clock,
        Spooled {
            spools: spools.clone(),
            status,
            facts,
            identity,
            follow,
            process_logs,
            power,
            health,
        },
        kubernetes,
        logging,
        shutdown,
    )
    .await;
    // Stopped on purpose only when the agent stops cleanly; otherwise it
    // is dropped with the device armed.
    if ran.is_ok() {
        watchdog.stop().await;
    }
    // The sources stop, then where they are and what waits in memory
    // reach the disk together: a restart resumes exactly there.
    let _ = stop_sources.send(());
    let _ = log_sources.await;
    let flushing = spools.clone();
    let _ = tokio::task::spawn_blocking(move || {
        flushing.close();
        positions.persist();
    })
    .await;
    ran
}

/// Keeps the spools' daily budgets at the applied spec's.
async fn follow_budgets(
    mut applied: tokio::sync::watch::Receiver<spec::AppliedSpec>,
    spools: Arc<Spools>,
) {
    loop {
        spools.set_budgets(&applied.borrow_and_update().budgets);
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// What runs from the agent's start, before and beside the session.
struct Spooled {
    spools: Arc<Spools>,
    status: spec::StatusSource,
    /// What the device tells of itself when it registers.
    facts: tether_proto::spec::Facts,
    /// What the local API tells of the device, once it has credentials.
    identity: tokio::sync::watch::Sender<Option<local_api::Identity>>,
    follow: logs::FollowHandle,
    /// Where supervised processes' output goes.
    process_logs: Arc<logs::Sink>,
    /// How `reboot` and `shutdown` take the device down.
    power: host::power::Power,
    /// What the watchdog's health checks look at.
    health: watchdog::HealthSources,
}

/// Ends a background task with the scope that started it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve(
    config: &Config,
    state: StateDir,
    clock: Arc<ServerClock>,
    spooled: Spooled,
    kubernetes: actions::Kubernetes,
    logging: LogControl,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, AgentError> {
    let Spooled {
        spools,
        status,
        facts,
        identity,
        follow,
        process_logs,
        power,
        health,
    } = spooled;
    tokio::pin!(shutdown);
    // Restored from it at start (`run`), kept in it from here on.
    let identity_secret = kubernetes
        .config
        .as_ref()
        .filter(|c| c.mode == kubernetes::Mode::Cluster)
        .map(kubernetes::identity::IdentitySecret::new);
    let credentials = match state.load()? {
        Some(credentials) => {
            if config.has_first_start_flags() {
                // A pod's manifest keeps the (spent) flags: it is the usual case there.
                let remove = match &identity_secret {
                    Some(secret) => {
                        format!("delete the Secret {} and restart the pod", secret.name())
                    }
                    None => format!("remove {} first", state.path().display()),
                };
                tracing::warn!(
                    "already enrolled as {}; ignoring the enrollment and registration flags (to enroll again, {remove})",
                    credentials.device
                );
            }
            credentials
        }
        None => {
            let first_start = config
                .first_start()
                .map_err(|source| AgentError::NotEnrolled {
                    dir: state.path().to_owned(),
                    source,
                })?;
            // A stop signal during enrollment or registration (tetherd
            // unreachable, requests waiting on their timeouts, an operator
            // yet to approve) ends it at once. The next start enrolls from
            // scratch, since agent.toml is written last; a registration
            // asks again with the key pair it kept.
            let obtained = async {
                match &first_start {
                    FirstStart::Enroll(options) => {
                        tracing::info!("enrolling with {}", options.server);
                        Ok(enroll::enroll(&state, options, &clock).await?)
                    }
                    FirstStart::Register(options) => {
                        tracing::info!(
                            "registering with {} using provisioning key {}",
                            options.server,
                            options.key_id
                        );
                        Ok::<_, AgentError>(
                            provisioning::register::register(&state, options, &facts, &clock)
                                .await?,
                        )
                    }
                }
            };
            tokio::select! {
                obtained = obtained => obtained?,
                () = &mut shutdown => {
                    tracing::info!("stopped before enrollment or registration finished");
                    return Ok(Exit::Stopped);
                }
            }
        }
    };
    let renewal = Renewal {
        state: state.clone(),
        clock: clock.clone(),
    };
    let credentials = tokio::select! {
        credentials = renewal.ensure_current(credentials) => credentials,
        () = &mut shutdown => {
            tracing::info!("stopped before the certificate was renewed");
            return Ok(Exit::Stopped);
        }
    };
    let (renewed_tx, renewed_rx) = tokio::sync::watch::channel(credentials.clone());
    let _kept = identity_secret
        .map(|secret| AbortOnDrop(tokio::spawn(secret.keep(state.clone(), renewed_rx.clone()))));
    let _identity = AbortOnDrop(tokio::spawn(local_api::follow_credentials(
        renewed_rx.clone(),
        identity,
    )));
    let _time = AbortOnDrop(tokio::spawn(crate::time::run(
        config.time(),
        status.spec.subscribe(),
        renewed_rx.clone(),
        clock.clone(),
        status.host_time.clone(),
    )));
    let version = status.spec.current().version;
    tracing::info!(version, "running with spec version {version}");
    // Supervised processes (issue 17) run from the spec applied last,
    // whether tetherd is reachable or not.
    let supervisor = deployments::supervisor::Supervisor::start(
        deployments::supervisor::SupervisorParts {
            root: state.path().join(deployments::supervisor::DEPLOYMENTS_DIR),
            written: state
                .path()
                .join(deployments::supervisor::written::WRITTEN_FILE),
            device: deployments::supervisor::files::DeviceContext {
                name: credentials.device.to_string(),
                facts: facts.clone(),
            },
            artifacts: deployments::supervisor::files::ArtifactSource {
                allowed_hosts: config.artifact_hosts(&credentials.api_url),
                ca_pem: credentials.ca_pem.clone(),
            },
            sink: process_logs,
            render_helper: config.render_helper(),
            reports: status.deployments.clone(),
        },
        status.spec.subscribe(),
    );
    health.supervisor.send_replace(Some(supervisor.ping()));
    // From here, not from the start: a network change is proved by
    // reaching tetherd, which takes the credentials.
    let _network = AbortOnDrop(tokio::spawn({
        let config = config.network();
        let state_dir = state.path().to_owned();
        let applied = status.spec.subscribe();
        let reach = network::Reach {
            credentials: renewed_rx.clone(),
            clock: clock.clone(),
        };
        let report = status.network.clone();
        async move { network::run(config, &state_dir, applied, reach, report).await }
    }));
    // Before a swap can have happened: the path this process runs from.
    let exe = std::env::current_exe().map_err(AgentError::Executable)?;
    // The power commands' gate: a swap waits for a pending reboot too.
    let gate = power.gate.clone();
    let online = Arc::new(tokio::sync::watch::channel(false).0);
    let (restart_tx, mut restart_rx) = tokio::sync::watch::channel(None);
    let _self_update = AbortOnDrop(tokio::spawn(
        self_update::SelfUpdate {
            config: config.self_update(exe),
            state_dir: state.path().to_owned(),
            api_url: credentials.api_url.clone(),
            ca_pem: credentials.ca_pem.clone(),
            clock: clock.clone(),
        }
        .run(self_update::Links {
            spec: status.spec.subscribe(),
            reports: status.deployments.clone(),
            gate: gate.clone(),
            online: online.subscribe(),
            restart: restart_tx,
        }),
    ));
    // The session stops for a restart on a new binary as for a signal.
    let restart = restart_rx.clone();
    let shutdown = async move {
        tokio::select! {
            () = &mut shutdown => {}
            _ = restart_rx.wait_for(Option::is_some) => {}
        }
    };
    let session = session::run(
        credentials.clone(),
        &state,
        session::SessionParts {
            gate,
            online,
            status,
            logging: Arc::new(logging),
            clock,
            spools,
            follow,
            kubernetes,
            tunnels: config.tunnels(),
            shell: config.management_shell(state.path()),
            power,
            heartbeat: health.heartbeat.clone(),
        },
        renewed_rx,
        shutdown,
    );
    let ended = tokio::select! {
        ended = session => ended,
        () = renewal.run(credentials, renewed_tx) => Ok(()),
    };
    health.supervisor.send_replace(None);
    supervisor.stop().await;
    ended?;
    let restart = restart.borrow().clone();
    Ok(restart.map_or(Exit::Stopped, Exit::Restart))
}
