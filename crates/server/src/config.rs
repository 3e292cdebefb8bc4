//! tetherd's configuration: defaults, overridden by a TOML file, overridden by
//! environment variables, overridden by flags. The one loader is [`ServerConfig::load`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(
    name = "tetherd",
    version,
    about = "tether controller: devices connect over MQTT with mutual TLS, operators over HTTPS",
    long_about = "tether controller: devices connect over MQTT with mutual TLS, operators over HTTPS.\n\n\
        Settings come from flags, then environment variables, then the config file (TOML, keys as \
        below in snake_case), then defaults. On first start tetherd creates its CA, its TLS \
        certificate and the admin credentials in the data dir and prints the password once."
)]
pub struct Flags {
    /// Config file (TOML). Default: tetherd.toml in the data dir, if present.
    #[arg(long, env = "TETHER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where tetherd keeps its CA, keys, credentials and SQLite database.
    /// Default: $XDG_DATA_HOME/tether (else ~/.local/share/tether).
    #[arg(long, env = "TETHER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTPS API address. Default: 0.0.0.0:8443. Port 0 picks a free port.
    #[arg(long, env = "TETHER_LISTEN_API", value_name = "ADDR")]
    pub listen_api: Option<SocketAddr>,
    /// MQTT (TLS, client certificates) address for devices. Default: 0.0.0.0:8883.
    #[arg(long, env = "TETHER_LISTEN_MQTT", value_name = "ADDR")]
    pub listen_mqtt: Option<SocketAddr>,
    /// sqlite://PATH or postgres://USER@HOST:PORT/DB. Default: sqlite in the data dir.
    #[arg(long, env = "TETHER_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Host names and addresses devices and operators reach tetherd by; they go
    /// into the TLS certificate. Repeat or separate with commas.
    /// Default: localhost, 127.0.0.1, ::1 and this host's name.
    #[arg(
        long = "public-host",
        env = "TETHER_PUBLIC_HOST",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    pub public_hosts: Vec<String>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive.
    #[arg(long, env = "TETHER_LOG", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Print the effective configuration as a config file and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The file's shape; every key is optional.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen_api: Option<SocketAddr>,
    listen_mqtt: Option<SocketAddr>,
    database_url: Option<String>,
    public_hosts: Option<Vec<String>>,
    log_level: Option<String>,
    #[serde(default)]
    actions: FileActions,
    #[serde(default)]
    api: FileApi,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    retention: FileRetention,
    #[serde(default)]
    pki: FilePki,
    #[serde(default)]
    ingest: FileIngest,
    #[serde(default)]
    cluster: FileCluster,
    #[serde(default)]
    broker: FileBroker,
    #[serde(default)]
    kubernetes: FileKubernetes,
    #[serde(default)]
    tunnels: FileTunnels,
    #[serde(default)]
    alert_rules: FileAlertRules,
    #[serde(default)]
    monitor: FileMonitor,
    #[serde(default)]
    sparkplug: crate::sparkplug::config::FileSparkplug,
    #[serde(default)]
    alerts: crate::monitor::delivery::FileAlerts,
    #[serde(default)]
    releases: FileReleases,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileReleases {
    /// The largest agent binary `PUT /api/v1/agent-releases/…` takes.
    max_binary_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileAlertRules {
    evaluation_interval_seconds: Option<u64>,
    stale_after_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileMonitor {
    silence_seconds: Option<u64>,
    drift_grace_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileTunnels {
    keepalive_seconds: Option<u64>,
    /// 0: tunnels are never ended for being idle.
    idle_timeout_seconds: Option<u64>,
    max_waiting_per_user: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileKubernetes {
    agent_image: Option<String>,
    management_shell: Option<bool>,
    management_shell_image: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    lease_seconds: Option<u64>,
    advertise_mqtt_url: Option<String>,
    advertise_api_url: Option<String>,
    outbox_sweep_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileBroker {
    mode: Option<String>,
    url: Option<String>,
    device_url: Option<String>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    crl_path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FilePki {
    server_certificate_lifetime_seconds: Option<u64>,
    device_certificate_lifetime_seconds: Option<u64>,
    renewal_grace_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileIngest {
    messages_per_second: Option<u64>,
    message_burst: Option<u64>,
    bytes_per_second: Option<u64>,
    byte_burst: Option<u64>,
    strikes_before_disconnect: Option<u32>,
    max_clock_ahead_seconds: Option<u64>,
    max_series_per_device: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileRetention {
    events_days: Option<u64>,
    actions_days: Option<u64>,
    /// 1-minute metric rollups (and the older `metrics` table).
    metrics_days: Option<u64>,
    logs_days: Option<u64>,
    /// Raw metric points, counted from their arrival.
    metrics_raw_hours: Option<u64>,
    /// 1-hour metric rollups.
    metrics_hourly_days: Option<u64>,
    /// How often the rollup job computes rollups and prunes metrics.
    metrics_rollup_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileActions {
    default_ttl_seconds: Option<u64>,
    max_ttl_seconds: Option<u64>,
    default_timeout_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    session_ttl_seconds: Option<u64>,
    enrollment_token_ttl_seconds: Option<u64>,
    login_failures_before_backoff: Option<u32>,
    login_backoff_max_seconds: Option<u64>,
    max_concurrent_password_checks: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    max_connections: Option<u32>,
    max_connections_per_ip: Option<u32>,
    max_follows_per_user: Option<u32>,
    tls_handshake_timeout_seconds: Option<u64>,
    header_read_timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen_api: SocketAddr,
    pub listen_mqtt: SocketAddr,
    pub database_url: String,
    pub public_hosts: Vec<String>,
    pub log_level: String,
    pub actions: ActionsConfig,
    pub api: ApiConfig,
    pub auth: AuthConfig,
    pub retention: RetentionConfig,
    pub pki: PkiConfig,
    pub ingest: crate::ingest::IngestConfig,
    pub cluster: crate::cluster::ClusterConfig,
    pub broker: BrokerConfig,
    pub kubernetes: KubernetesConfig,
    pub tunnels: crate::tunnels::TunnelConfig,
    pub alert_rules: crate::monitor::rules::AlertRulesConfig,
    pub monitor: crate::monitor::MonitorConfig,
    /// `[sparkplug]`; `None`: off.
    pub sparkplug: Option<crate::sparkplug::config::SparkplugConfig>,
    /// `[alerts]`: webhooks and Alertmanagers alerts are delivered to.
    pub alerts: crate::monitor::delivery::DeliveryConfig,
    pub releases: crate::releases::ReleasesConfig,
}

/// `[kubernetes]`: what the join manifest runs (ADR 0017, ADR 0023).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// The agent's container image, as the cluster pulls it.
    pub agent_image: String,
    /// Whether the manifest runs the management shell (the Service
    /// `management-pod`, a volume for `/work`); off by default.
    pub management_shell: bool,
    /// The image the agent runs from with the management shell: the
    /// agent's, plus a shell and tools for the sessions.
    pub management_shell_image: String,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            agent_image: format!("tether-agent:{}", env!("CARGO_PKG_VERSION")),
            management_shell: false,
            management_shell_image: format!("tether-agent-tools:{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl KubernetesConfig {
    /// The tools image when the management shell is on.
    pub fn management_shell(&self) -> Option<&str> {
        self.management_shell
            .then_some(self.management_shell_image.as_str())
    }
}

/// `[kubernetes]`: an image reference is one token, without spaces or
/// quotes that would break the manifest's meaning.
fn kubernetes_config(file: &FileKubernetes) -> Result<KubernetesConfig, ConfigError> {
    let defaults = KubernetesConfig::default();
    let image = |key: &'static str, value: &Option<String>, default: String| {
        match value {
        None => Ok(default),
        Some(image)
            if !image.is_empty()
                && image.len() <= 512
                && image.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\'') =>
        {
            Ok(image.clone())
        }
        Some(image) => Err(ConfigError::Invalid {
            key,
            value: image.clone(),
            expected: "an image reference such as registry.example/tether-agent:1.0 (1–512 printable characters, no spaces or quotes)".to_owned(),
        }),
    }
    };
    Ok(KubernetesConfig {
        agent_image: image(
            "kubernetes.agent_image",
            &file.agent_image,
            defaults.agent_image,
        )?,
        management_shell: file.management_shell.unwrap_or(defaults.management_shell),
        management_shell_image: image(
            "kubernetes.management_shell_image",
            &file.management_shell_image,
            defaults.management_shell_image,
        )?,
    })
}

/// `[alert_rules]`: how often rules are evaluated, and how old a metric
/// value may be and still count.
fn alert_rules_config(
    file: &FileAlertRules,
) -> Result<crate::monitor::rules::AlertRulesConfig, ConfigError> {
    let defaults = crate::monitor::rules::AlertRulesConfig::default();
    let evaluation_interval = secs(
        file.evaluation_interval_seconds,
        defaults.evaluation_interval,
    );
    check_range(
        "alert_rules.evaluation_interval_seconds",
        evaluation_interval,
        1,
        3600,
    )?;
    let stale_after = secs(file.stale_after_seconds, defaults.stale_after);
    check_range("alert_rules.stale_after_seconds", stale_after, 1, 7 * DAY)?;
    Ok(crate::monitor::rules::AlertRulesConfig {
        evaluation_interval,
        stale_after,
    })
}

/// `[tunnels]`: keepalive, idle timeout and the waiting cap (ADR 0021).
fn tunnel_config(file: &FileTunnels) -> Result<crate::tunnels::TunnelConfig, ConfigError> {
    let defaults = crate::tunnels::TunnelConfig::default();
    let keepalive = secs(file.keepalive_seconds, defaults.keepalive);
    // Below a few seconds pings cost more than they keep; above ten
    // minutes most load balancers have dropped the connection already.
    check_range("tunnels.keepalive_seconds", keepalive, 5, 600)?;
    let idle_timeout = match file.idle_timeout_seconds {
        None => defaults.idle_timeout,
        Some(0) => None,
        Some(seconds) => {
            let timeout = Duration::from_secs(seconds);
            check_range("tunnels.idle_timeout_seconds", timeout, 60, 30 * DAY)?;
            Some(timeout)
        }
    };
    let max_waiting_per_user = file
        .max_waiting_per_user
        .unwrap_or(defaults.max_waiting_per_user as u32);
    check_count(
        "tunnels.max_waiting_per_user",
        max_waiting_per_user,
        1,
        10_000,
    )?;
    Ok(crate::tunnels::TunnelConfig {
        keepalive,
        idle_timeout,
        max_waiting_per_user: max_waiting_per_user as usize,
    })
}

/// Where devices connect: tetherd's embedded MQTT endpoint, or an MQTT
/// broker the operator runs (`docs/operations/external-broker.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerConfig {
    Embedded,
    External(ExternalBrokerConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalBrokerConfig {
    /// Where tetherd connects, `mqtts://HOST:PORT`: the broker's listener
    /// for tetherd.
    pub url: MqttUrl,
    /// What devices are told at enrollment: the broker's listener for devices.
    pub device_url: MqttUrl,
    /// tetherd's client certificate and key (PEM); `None`: tetherd issues
    /// its own from its CA into the data dir at every start.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Where tetherd writes the revocation list the broker reads.
    pub crl_path: PathBuf,
}

/// An `mqtts://HOST:PORT` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub host: String,
    pub port: u16,
}

impl MqttUrl {
    pub fn parse(key: &'static str, url: &str) -> Result<Self, ConfigError> {
        let bad = |problem: &str| ConfigError::Invalid {
            key,
            value: url.to_owned(),
            expected: format!("{problem}; use mqtts://HOST:PORT"),
        };
        let rest = url
            .strip_prefix("mqtts://")
            .ok_or_else(|| bad("not an mqtts:// URL (the broker must speak TLS)"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.is_empty() || host.contains(['/', '[', ']', '@', ' ']) {
            return Err(bad("not a host name or IPv4 address"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| bad("the port is not 1 to 65535"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mqtts://{}:{}", self.host, self.port)
    }
}

/// The `[broker]` section.
fn broker_config(file: &FileBroker, data_dir: &Path) -> Result<BrokerConfig, ConfigError> {
    let external_only = [
        ("broker.url", file.url.is_some()),
        ("broker.device_url", file.device_url.is_some()),
        ("broker.client_cert", file.client_cert.is_some()),
        ("broker.client_key", file.client_key.is_some()),
        ("broker.crl_path", file.crl_path.is_some()),
    ];
    match file.mode.as_deref().unwrap_or("embedded") {
        "embedded" => match external_only.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(ConfigError::Invalid {
                key,
                value: "set".into(),
                expected: "only used with broker.mode = \"external\"".into(),
            }),
            None => Ok(BrokerConfig::Embedded),
        },
        "external" => {
            let url = file.url.as_deref().ok_or(ConfigError::Invalid {
                key: "broker.url",
                value: "missing".into(),
                expected:
                    "broker.mode = \"external\" needs the broker's mqtts://HOST:PORT for tetherd"
                        .into(),
            })?;
            let url = MqttUrl::parse("broker.url", url)?;
            let device_url = match &file.device_url {
                Some(device_url) => MqttUrl::parse("broker.device_url", device_url)?,
                None => url.clone(),
            };
            let client_identity = match (&file.client_cert, &file.client_key) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                (None, None) => None,
                (Some(_), None) | (None, Some(_)) => {
                    return Err(ConfigError::Invalid {
                        key: "broker.client_cert",
                        value: "given alone".into(),
                        expected: "give broker.client_cert and broker.client_key together, or neither to let tetherd issue its own".into(),
                    });
                }
            };
            Ok(BrokerConfig::External(ExternalBrokerConfig {
                url,
                device_url,
                client_identity,
                crl_path: file
                    .crl_path
                    .clone()
                    .unwrap_or_else(|| data_dir.join("broker").join("crl.pem")),
            }))
        }
        other => Err(ConfigError::Invalid {
            key: "broker.mode",
            value: other.to_owned(),
            expected: "use \"embedded\" or \"external\"".into(),
        }),
    }
}

impl BrokerConfig {
    fn to_file(&self) -> FileBroker {
        match self {
            BrokerConfig::Embedded => FileBroker {
                mode: Some("embedded".into()),
                ..FileBroker::default()
            },
            BrokerConfig::External(external) => FileBroker {
                mode: Some("external".into()),
                url: Some(external.url.to_string()),
                device_url: Some(external.device_url.to_string()),
                client_cert: external
                    .client_identity
                    .as_ref()
                    .map(|(cert, _)| cert.clone()),
                client_key: external
                    .client_identity
                    .as_ref()
                    .map(|(_, key)| key.clone()),
                crl_path: Some(external.crl_path.clone()),
            },
        }
    }
}

/// Certificate lifetimes. Both kinds renew at about two thirds of their life;
/// a device whose certificate expired may still renew within the grace.
#[derive(Debug, Clone)]
pub struct PkiConfig {
    pub server_certificate_lifetime: Duration,
    pub device_certificate_lifetime: Duration,
    pub renewal_grace: Duration,
}

impl Default for PkiConfig {
    fn default() -> Self {
        Self {
            server_certificate_lifetime: Duration::from_secs(90 * DAY),
            device_certificate_lifetime: Duration::from_secs(365 * DAY),
            renewal_grace: Duration::from_secs(90 * DAY),
        }
    }
}

/// How the HTTPS listener protects itself from slow and greedy clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Connections held at once; more are accepted and closed at once. Also
    /// capped at half the process's file-handle limit, so the MQTT listener
    /// and the store always have handles left.
    pub max_connections: u32,
    /// Connections one client address may hold at once.
    pub max_connections_per_ip: u32,
    /// `GET /events/follow` streams one user or API key may hold at once
    /// (a console tab holds one), and as many log follows; one more is
    /// answered 429.
    pub max_follows_per_user: u32,
    /// A client that has not finished the TLS handshake by then is dropped.
    pub tls_handshake_timeout: Duration,
    /// Time to send a request's headers, counted from the connection's start
    /// or the previous answer: also how long an idle keep-alive connection stays.
    pub header_read_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_ip: 64,
            max_follows_per_user: 16,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Shorter lifetimes leave too little time to renew across a reconnect.
const MIN_CERTIFICATE_LIFETIME: u64 = 10;

/// How long device telemetry is kept; older rows are deleted hourly.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Seed 004 keeps logs 90 days; events and the audit log get the same.
    pub events: Duration,
    /// Finished actions (succeeded, failed, timed out, expired, rejected),
    /// counted from their completion.
    pub actions: Duration,
    /// 1-minute metric rollups, and the host samples of the older
    /// `metrics` table.
    pub metrics: Duration,
    /// Log lines, by the time the device gave them (seed 004: 90 days).
    pub logs: Duration,
    /// Raw metric points, from their arrival.
    pub metrics_raw: Duration,
    /// 1-hour metric rollups.
    pub metrics_hourly: Duration,
    /// How often the metrics rollup job runs.
    pub metrics_rollup_interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            events: Duration::from_secs(90 * 24 * 3600),
            actions: Duration::from_secs(90 * 24 * 3600),
            metrics: Duration::from_secs(30 * 24 * 3600),
            logs: Duration::from_secs(90 * 24 * 3600),
            metrics_raw: Duration::from_secs(24 * 3600),
            metrics_hourly: Duration::from_secs(365 * 24 * 3600),
            metrics_rollup_interval: Duration::from_secs(60),
        }
    }
}

impl RetentionConfig {
    /// What the metrics service keeps, and how often it rolls up.
    pub fn metrics_config(&self) -> crate::metrics::MetricsConfig {
        crate::metrics::MetricsConfig {
            raw: self.metrics_raw,
            minutely: self.metrics,
            hourly: self.metrics_hourly,
            rollup_interval: self.metrics_rollup_interval,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ActionsConfig {
    /// How long an action waits for an offline device (seed: 1 h).
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    /// How long a delivered action may take before it is `timed-out`.
    pub default_timeout: Duration,
    /// How often expiry and time-outs are checked.
    pub sweep_interval: Duration,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            default_timeout: Duration::from_secs(300),
            sweep_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub session_ttl: Duration,
    pub enrollment_token_ttl: Duration,
    /// Failed logins a client address, or a username, may have in a row
    /// before each further attempt waits (1 s, doubling).
    pub login_failures_before_backoff: u32,
    /// The longest such wait; a streak is forgotten after this long without failures.
    pub login_backoff_max: Duration,
    /// Password hashes computed at once, off the async workers; a login
    /// storm waits for these and cannot starve other requests.
    pub max_concurrent_password_checks: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            enrollment_token_ttl: Duration::from_secs(24 * 3600),
            login_failures_before_backoff: 5,
            login_backoff_max: Duration::from_secs(300),
            max_concurrent_password_checks: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no data dir given and neither XDG_DATA_HOME nor HOME is set: pass --data-dir")]
    NoDataDir,
    #[error("{key} = {value} is not valid: {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error("{key} = {value} is out of range: {expected}")]
    OutOfRange {
        key: &'static str,
        value: u64,
        expected: String,
    },
}

const DAY: u64 = 24 * 3600;

/// The longest TTL an operator may configure; beyond it time arithmetic and
/// any sensible use end.
const MAX_CONFIGURABLE_TTL: u64 = 366 * 24 * 3600;

fn check_range(key: &'static str, value: Duration, min: u64, max: u64) -> Result<(), ConfigError> {
    let seconds = value.as_secs();
    if (min..=max).contains(&seconds) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            key,
            value: seconds,
            expected: format!("use {min} to {max} seconds"),
        })
    }
}

fn check_count(key: &'static str, value: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            key,
            value: u64::from(value),
            expected: format!("use {min} to {max}"),
        })
    }
}

impl ServerConfig {
    pub fn load(flags: Flags) -> Result<Self, ConfigError> {
        let explicit_file = flags.config.clone();
        let data_dir_hint = flags.data_dir.clone();
        let file = match &explicit_file {
            Some(path) => read_file(path)?,
            None => {
                let data_dir = match &data_dir_hint {
                    Some(dir) => Some(dir.clone()),
                    None => default_data_dir().ok(),
                };
                match data_dir.map(|dir| dir.join("tetherd.toml")) {
                    Some(path) if path.exists() => read_file(&path)?,
                    _ => FileConfig::default(),
                }
            }
        };
        Self::merge(flags, file)
    }

    fn merge(flags: Flags, file: FileConfig) -> Result<Self, ConfigError> {
        let data_dir = match flags.data_dir.or(file.data_dir) {
            Some(dir) => dir,
            None => default_data_dir()?,
        };
        let database_url = flags
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("tether.db").display()));
        let public_hosts = if !flags.public_hosts.is_empty() {
            flags.public_hosts
        } else {
            file.public_hosts.unwrap_or_else(default_public_hosts)
        };
        let defaults = ActionsConfig::default();
        let actions = ActionsConfig {
            default_ttl: secs(file.actions.default_ttl_seconds, defaults.default_ttl),
            max_ttl: secs(file.actions.max_ttl_seconds, defaults.max_ttl),
            default_timeout: secs(
                file.actions.default_timeout_seconds,
                defaults.default_timeout,
            ),
            sweep_interval: defaults.sweep_interval,
        };
        let auth_defaults = AuthConfig::default();
        let auth = AuthConfig {
            session_ttl: secs(file.auth.session_ttl_seconds, auth_defaults.session_ttl),
            enrollment_token_ttl: secs(
                file.auth.enrollment_token_ttl_seconds,
                auth_defaults.enrollment_token_ttl,
            ),
            login_failures_before_backoff: file
                .auth
                .login_failures_before_backoff
                .unwrap_or(auth_defaults.login_failures_before_backoff),
            login_backoff_max: secs(
                file.auth.login_backoff_max_seconds,
                auth_defaults.login_backoff_max,
            ),
            max_concurrent_password_checks: file
                .auth
                .max_concurrent_password_checks
                .unwrap_or(auth_defaults.max_concurrent_password_checks),
        };
        let api_defaults = ApiConfig::default();
        let api = ApiConfig {
            max_connections: file
                .api
                .max_connections
                .unwrap_or(api_defaults.max_connections),
            max_connections_per_ip: file
                .api
                .max_connections_per_ip
                .unwrap_or(api_defaults.max_connections_per_ip),
            max_follows_per_user: file
                .api
                .max_follows_per_user
                .unwrap_or(api_defaults.max_follows_per_user),
            tls_handshake_timeout: secs(
                file.api.tls_handshake_timeout_seconds,
                api_defaults.tls_handshake_timeout,
            ),
            header_read_timeout: secs(
                file.api.header_read_timeout_seconds,
                api_defaults.header_read_timeout,
            ),
        };
        check_count("api.max_connections", api.max_connections, 16, 1_000_000)?;
        check_count(
            "api.max_connections_per_ip",
            api.max_connections_per_ip,
            1,
            api.max_connections,
        )?;
        check_count(
            "api.max_follows_per_user",
            api.max_follows_per_user,
            1,
            api.max_connections,
        )?;
        check_range(
            "api.tls_handshake_timeout_seconds",
            api.tls_handshake_timeout,
            1,
            300,
        )?;
        check_range(
            "api.header_read_timeout_seconds",
            api.header_read_timeout,
            1,
            3600,
        )?;
        check_count(
            "auth.login_failures_before_backoff",
            auth.login_failures_before_backoff,
            1,
            1_000_000,
        )?;
        check_range(
            "auth.login_backoff_max_seconds",
            auth.login_backoff_max,
            1,
            86_400,
        )?;
        check_count(
            "auth.max_concurrent_password_checks",
            auth.max_concurrent_password_checks,
            1,
            256,
        )?;
        let retention_defaults = RetentionConfig::default();
        let days = |value: Option<u64>| value.map(|d| Duration::from_secs(d.saturating_mul(DAY)));
        let retention = RetentionConfig {
            events: days(file.retention.events_days).unwrap_or(retention_defaults.events),
            actions: days(file.retention.actions_days).unwrap_or(retention_defaults.actions),
            metrics: days(file.retention.metrics_days).unwrap_or(retention_defaults.metrics),
            logs: days(file.retention.logs_days).unwrap_or(retention_defaults.logs),
            metrics_raw: file
                .retention
                .metrics_raw_hours
                .map(|h| Duration::from_secs(h.saturating_mul(3600)))
                .unwrap_or(retention_defaults.metrics_raw),
            metrics_hourly: days(file.retention.metrics_hourly_days)
                .unwrap_or(retention_defaults.metrics_hourly),
            metrics_rollup_interval: file
                .retention
                .metrics_rollup_seconds
                .map(Duration::from_secs)
                .unwrap_or(retention_defaults.metrics_rollup_interval),
        };
        let pki_defaults = PkiConfig::default();
        let pki = PkiConfig {
            server_certificate_lifetime: secs(
                file.pki.server_certificate_lifetime_seconds,
                pki_defaults.server_certificate_lifetime,
            ),
            device_certificate_lifetime: secs(
                file.pki.device_certificate_lifetime_seconds,
                pki_defaults.device_certificate_lifetime,
            ),
            renewal_grace: secs(file.pki.renewal_grace_seconds, pki_defaults.renewal_grace),
        };
        // The server certificate's limit is the public web's (398 days); a
        // device certificate may not outlive the CA's ten years.
        check_range(
            "pki.server_certificate_lifetime_seconds",
            pki.server_certificate_lifetime,
            MIN_CERTIFICATE_LIFETIME,
            398 * DAY,
        )?;
        check_range(
            "pki.device_certificate_lifetime_seconds",
            pki.device_certificate_lifetime,
            MIN_CERTIFICATE_LIFETIME,
            5 * 366 * DAY,
        )?;
        check_range(
            "pki.renewal_grace_seconds",
            pki.renewal_grace,
            0,
            5 * 366 * DAY,
        )?;
        let monitor = monitor_config(&file.monitor)?;
        let ingest = crate::ingest::IngestConfig {
            last_seen_resolution: monitor.last_seen_resolution(),
            ..ingest_config(&file.ingest)?
        };
        let cluster = cluster_config(file.cluster)?;
        let broker = broker_config(&file.broker, &data_dir)?;
        let kubernetes = kubernetes_config(&file.kubernetes)?;
        let tunnels = tunnel_config(&file.tunnels)?;
        let sparkplug = crate::sparkplug::config::SparkplugConfig::from_file(&file.sparkplug)?;
        let alerts = crate::monitor::delivery::DeliveryConfig::from_file(&file.alerts)?;
        let alert_rules = alert_rules_config(&file.alert_rules)?;
        let releases = releases_config(&file.releases)?;
        check_range("retention.events_days", retention.events, DAY, 3660 * DAY)?;
        check_range("retention.actions_days", retention.actions, DAY, 3660 * DAY)?;
        check_range("retention.metrics_days", retention.metrics, DAY, 3660 * DAY)?;
        check_range("retention.logs_days", retention.logs, DAY, 3660 * DAY)?;
        check_range(
            "retention.metrics_raw_hours",
            retention.metrics_raw,
            3600,
            90 * DAY,
        )?;
        check_range(
            "retention.metrics_hourly_days",
            retention.metrics_hourly,
            DAY,
            3660 * DAY,
        )?;
        check_range(
            "retention.metrics_rollup_seconds",
            retention.metrics_rollup_interval,
            1,
            3600,
        )?;
        check_range(
            "actions.max_ttl_seconds",
            actions.max_ttl,
            1,
            MAX_CONFIGURABLE_TTL,
        )?;
        check_range(
            "actions.default_ttl_seconds",
            actions.default_ttl,
            1,
            actions.max_ttl.as_secs(),
        )?;
        check_range(
            "actions.default_timeout_seconds",
            actions.default_timeout,
            1,
            86_400,
        )?;
        check_range(
            "auth.session_ttl_seconds",
            auth.session_ttl,
            1,
            MAX_CONFIGURABLE_TTL,
        )?;
        check_range(
            "auth.enrollment_token_ttl_seconds",
            auth.enrollment_token_ttl,
            1,
            MAX_CONFIGURABLE_TTL,
        )?;
        Ok(Self {
            data_dir,
            listen_api: flags
                .listen_api
                .or(file.listen_api)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8443))),
            listen_mqtt: flags
                .listen_mqtt
                .or(file.listen_mqtt)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8883))),
            database_url,
            public_hosts,
            log_level: flags
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_owned()),
            actions,
            api,
            auth,
            retention,
            pki,
            ingest,
            cluster,
            broker,
            kubernetes,
            tunnels,
            alert_rules,
            monitor,
            sparkplug,
            alerts,
            releases,
        })
    }
}

impl ServerConfig {
    /// The configuration in the config file's format, every key filled in.
    pub fn to_toml(&self) -> String {
        let file = FileConfig {
            data_dir: Some(self.data_dir.clone()),
            listen_api: Some(self.listen_api),
            listen_mqtt: Some(self.listen_mqtt),
            database_url: Some(self.database_url.clone()),
            public_hosts: Some(self.public_hosts.clone()),
            log_level: Some(self.log_level.clone()),
            actions: FileActions {
                default_ttl_seconds: Some(self.actions.default_ttl.as_secs()),
                max_ttl_seconds: Some(self.actions.max_ttl.as_secs()),
                default_timeout_seconds: Some(self.actions.default_timeout.as_secs()),
            },
            api: FileApi {
                max_connections: Some(self.api.max_connections),
                max_connections_per_ip: Some(self.api.max_connections_per_ip),
                max_follows_per_user: Some(self.api.max_follows_per_user),
                tls_handshake_timeout_seconds: Some(self.api.tls_handshake_timeout.as_secs()),
                header_read_timeout_seconds: Some(self.api.header_read_timeout.as_secs()),
            },
            auth: FileAuth {
                session_ttl_seconds: Some(self.auth.session_ttl.as_secs()),
                enrollment_token_ttl_seconds: Some(self.auth.enrollment_token_ttl.as_secs()),
                login_failures_before_backoff: Some(self.auth.login_failures_before_backoff),
                login_backoff_max_seconds: Some(self.auth.login_backoff_max.as_secs()),
                max_concurrent_password_checks: Some(self.auth.max_concurrent_password_checks),
            },
            retention: FileRetention {
                events_days: Some(self.retention.events.as_secs() / (24 * 3600)),
                actions_days: Some(self.retention.actions.as_secs() / (24 * 3600)),
                metrics_days: Some(self.retention.metrics.as_secs() / (24 * 3600)),
                logs_days: Some(self.retention.logs.as_secs() / (24 * 3600)),
                metrics_raw_hours: Some(self.retention.metrics_raw.as_secs() / 3600),
                metrics_hourly_days: Some(self.retention.metrics_hourly.as_secs() / (24 * 3600)),
                metrics_rollup_seconds: Some(self.retention.metrics_rollup_interval.as_secs()),
            },
            pki: FilePki {
                server_certificate_lifetime_seconds: Some(
                    self.pki.server_certificate_lifetime.as_secs(),
                ),
                device_certificate_lifetime_seconds: Some(
                    self.pki.device_certificate_lifetime.as_secs(),
                ),
                renewal_grace_seconds: Some(self.pki.renewal_grace.as_secs()),
            },
            ingest: FileIngest {
                messages_per_second: Some(self.ingest.rate.messages_per_second),
                message_burst: Some(self.ingest.rate.message_burst),
                bytes_per_second: Some(self.ingest.rate.bytes_per_second),
                byte_burst: Some(self.ingest.rate.byte_burst),
                strikes_before_disconnect: Some(self.ingest.rate.strikes_before_disconnect),
                max_clock_ahead_seconds: Some(self.ingest.max_clock_ahead.as_secs()),
                max_series_per_device: Some(self.ingest.max_series_per_device),
            },
            cluster: FileCluster {
                lease_seconds: Some(self.cluster.lease.as_secs()),
                advertise_mqtt_url: self.cluster.advertise_mqtt_url.clone(),
                advertise_api_url: self.cluster.advertise_api_url.clone(),
                outbox_sweep_seconds: Some(self.cluster.outbox_sweep.as_secs()),
            },
            broker: self.broker.to_file(),
            kubernetes: FileKubernetes {
                agent_image: Some(self.kubernetes.agent_image.clone()),
                management_shell: Some(self.kubernetes.management_shell),
                management_shell_image: Some(self.kubernetes.management_shell_image.clone()),
            },
            tunnels: FileTunnels {
                keepalive_seconds: Some(self.tunnels.keepalive.as_secs()),
                idle_timeout_seconds: Some(self.tunnels.idle_timeout.map_or(0, |t| t.as_secs())),
                max_waiting_per_user: Some(self.tunnels.max_waiting_per_user as u32),
            },
            alert_rules: FileAlertRules {
                evaluation_interval_seconds: Some(self.alert_rules.evaluation_interval.as_secs()),
                stale_after_seconds: Some(self.alert_rules.stale_after.as_secs()),
            },
            monitor: FileMonitor {
                silence_seconds: Some(self.monitor.silence_interval.as_secs()),
                drift_grace_seconds: Some(self.monitor.drift_grace.as_secs()),
            },
            sparkplug: crate::sparkplug::config::SparkplugConfig::to_file(self.sparkplug.as_ref()),
            alerts: self.alerts.to_file(),
            releases: FileReleases {
                max_binary_bytes: Some(self.releases.max_binary_bytes),
            },
        };
        toml::to_string(&file).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
    }
}

/// `[releases]`: at most the device contract's limit, which agents check.
fn releases_config(file: &FileReleases) -> Result<crate::releases::ReleasesConfig, ConfigError> {
    use tether_proto::desired::agent_release::MAX_BINARY_BYTES;
    let max_binary_bytes = file.max_binary_bytes.unwrap_or(MAX_BINARY_BYTES);
    if !(1..=MAX_BINARY_BYTES).contains(&max_binary_bytes) {
        return Err(ConfigError::OutOfRange {
            key: "releases.max_binary_bytes",
            value: max_binary_bytes,
            expected: format!("use 1 to {MAX_BINARY_BYTES} bytes"),
        });
    }
    Ok(crate::releases::ReleasesConfig { max_binary_bytes })
}

/// `[ingest]`: per-device rate limits and the clock window for samples.
fn ingest_config(file: &FileIngest) -> Result<crate::ingest::IngestConfig, ConfigError> {
    let defaults = crate::ingest::IngestConfig::default();
    let within = |key: &'static str, value: Option<u64>, default: u64, min: u64, max: u64| {
        let value = value.unwrap_or(default);
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::OutOfRange {
                key,
                value,
                expected: format!("use {min} to {max}"),
            })
        }
    };
    // A burst below the largest answer (3 MiB) would refuse it for ever.
    let min_byte_burst = tether_proto::ActionEvent::MAX_PAYLOAD_BYTES as u64;
    let rate = crate::ingest::rate::RateLimits {
        messages_per_second: within(
            "ingest.messages_per_second",
            file.messages_per_second,
            defaults.rate.messages_per_second,
            1,
            1_000_000,
        )?,
        message_burst: within(
            "ingest.message_burst",
            file.message_burst,
            defaults.rate.message_burst,
            1,
            1_000_000,
        )?,
        bytes_per_second: within(
            "ingest.bytes_per_second",
            file.bytes_per_second,
            defaults.rate.bytes_per_second,
            1024,
            1 << 40,
        )?,
        byte_burst: within(
            "ingest.byte_burst",
            file.byte_burst,
            defaults.rate.byte_burst,
            min_byte_burst,
            1 << 40,
        )?,
        strikes_before_disconnect: within(
            "ingest.strikes_before_disconnect",
            file.strikes_before_disconnect.map(u64::from),
            u64::from(defaults.rate.strikes_before_disconnect),
            1,
            1_000_000,
        )? as u32,
    };
    let max_clock_ahead = secs(file.max_clock_ahead_seconds, defaults.max_clock_ahead);
    check_range("ingest.max_clock_ahead_seconds", max_clock_ahead, 0, DAY)?;
    let max_series_per_device = within(
        "ingest.max_series_per_device",
        file.max_series_per_device,
        defaults.max_series_per_device,
        1,
        crate::metrics::FLEET_MAX_SERIES as u64,
    )?;
    Ok(crate::ingest::IngestConfig {
        rate,
        max_clock_ahead,
        max_series_per_device,
        last_seen_resolution: defaults.last_seen_resolution,
    })
}

/// `[monitor]`: how long a device may stay silent or behind its spec
/// (ADR 0032).
fn monitor_config(file: &FileMonitor) -> Result<crate::monitor::MonitorConfig, ConfigError> {
    let defaults = crate::monitor::MonitorConfig::default();
    let silence_interval = secs(file.silence_seconds, defaults.silence_interval);
    check_range("monitor.silence_seconds", silence_interval, 1, DAY)?;
    let drift_grace = secs(file.drift_grace_seconds, defaults.drift_grace);
    check_range("monitor.drift_grace_seconds", drift_grace, 1, DAY)?;
    Ok(crate::monitor::MonitorConfig {
        silence_interval,
        drift_grace,
    })
}

/// `[cluster]`: the replica's lease and the MQTT URL agents are given.
fn cluster_config(file: FileCluster) -> Result<crate::cluster::ClusterConfig, ConfigError> {
    let defaults = crate::cluster::ClusterConfig::default();
    let lease = secs(file.lease_seconds, defaults.lease);
    // Renewed every third: one second leaves a renewal a few hundred ms;
    // beyond five minutes a crashed replica's devices show online too long.
    check_range("cluster.lease_seconds", lease, 1, 300)?;
    if let Some(url) = &file.advertise_mqtt_url {
        let authority = url.strip_prefix("mqtts://").unwrap_or_default();
        if authority.is_empty() || authority.contains('/') {
            return Err(ConfigError::Invalid {
                key: "cluster.advertise_mqtt_url",
                value: url.clone(),
                expected: "use mqtts://HOST:PORT, where devices reach this replica (or a load balancer in front of all)".into(),
            });
        }
    }
    if let Some(url) = &file.advertise_api_url {
        let authority = url.strip_prefix("https://").unwrap_or_default();
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(ConfigError::Invalid {
                key: "cluster.advertise_api_url",
                value: url.clone(),
                expected: "use https://HOST:PORT, where devices reach this replica's API (they dial tunnels back to it)".into(),
            });
        }
    }
    let outbox_sweep = secs(file.outbox_sweep_seconds, defaults.outbox_sweep);
    check_range("cluster.outbox_sweep_seconds", outbox_sweep, 1, 3600)?;
    Ok(crate::cluster::ClusterConfig {
        lease,
        advertise_mqtt_url: file.advertise_mqtt_url,
        advertise_api_url: file.advertise_api_url,
        outbox_sweep,
    })
}

fn secs(value: Option<u64>, default: Duration) -> Duration {
    value.map(Duration::from_secs).unwrap_or(default)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn default_data_dir() -> Result<PathBuf, ConfigError> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("tether"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".local/share/tether"))
        .ok_or(ConfigError::NoDataDir)
}

fn default_public_hosts() -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(name) = std::fs::read_to_string("/etc/hostname") {
        let name = name.trim();
        if !name.is_empty() && !hosts.iter().any(|h| h == name) {
            hosts.push(name.to_owned());
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("tetherd").chain(args.iter().copied()))
            .expect("valid flags")
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file: FileConfig = toml::from_str(
            "listen_api = \"127.0.0.1:9000\"\nlisten_mqtt = \"127.0.0.1:9001\"\ndata_dir = \"/srv/tether\"\n[actions]\ndefault_ttl_seconds = 60\n",
        )
        .expect("valid toml");
        let config =
            ServerConfig::merge(flags(&["--listen-api", "127.0.0.1:7000"]), file).expect("config");
        assert_eq!(config.listen_api, "127.0.0.1:7000".parse().expect("addr"));
        assert_eq!(config.listen_mqtt, "127.0.0.1:9001".parse().expect("addr"));
        assert_eq!(config.data_dir, PathBuf::from("/srv/tether"));
        assert_eq!(config.database_url, "sqlite:///srv/tether/tether.db");
        assert_eq!(config.actions.default_ttl, Duration::from_secs(60));
        assert_eq!(config.actions.default_timeout, Duration::from_secs(300));
    }

    #[test]
    fn the_printed_config_reads_back_as_the_same_config() {
        let config = ServerConfig::merge(flags(&["--data-dir", "/srv/t"]), FileConfig::default())
            .expect("config");
        let printed = config.to_toml();
        let file: FileConfig = toml::from_str(&printed).expect("the printed config parses");
        let again = ServerConfig::merge(flags(&[]), file).expect("config");
        assert_eq!(again.to_toml(), printed);
        assert!(printed.contains("[actions]") && printed.contains("default_ttl_seconds = 3600"));
        assert!(printed.contains("[pki]") && printed.contains("renewal_grace_seconds = 7776000"));
        assert!(printed.contains("[cluster]") && printed.contains("lease_seconds = 15"));
    }

    #[test]
    fn alert_rule_evaluation_is_configurable_and_checked() {
        let config = ServerConfig::merge(flags(&["--data-dir", "/d"]), FileConfig::default())
            .expect("config");
        assert_eq!(
            config.alert_rules.evaluation_interval,
            Duration::from_secs(30)
        );
        let file: FileConfig = toml::from_str(
            "[alert_rules]\nevaluation_interval_seconds = 1\nstale_after_seconds = 60\n",
        )
        .expect("valid toml");
        let config = ServerConfig::merge(flags(&["--data-dir", "/d"]), file).expect("config");
        assert_eq!(
            config.alert_rules.evaluation_interval,
            Duration::from_secs(1)
        );
        assert_eq!(config.alert_rules.stale_after, Duration::from_secs(60));
        let file: FileConfig =
            toml::from_str("[alert_rules]\nevaluation_interval_seconds = 0\n").expect("valid toml");
        let error = ServerConfig::merge(flags(&["--data-dir", "/d"]), file)
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("alert_rules.evaluation_interval_seconds"),
            "{error}"
        );
    }

    #[test]
    fn the_agent_image_of_the_join_manifest_is_configurable_and_checked() {
        let config = ServerConfig::merge(flags(&["--data-dir", "/d"]), FileConfig::default())
            .expect("config");
        assert!(config.kubernetes.agent_image.starts_with("tether-agent:"));
        let file: FileConfig =
            toml::from_str("[kubernetes]\nagent_image = \"registry.example/tether-agent:1.0\"\n")
                .expect("valid toml");
        let config = ServerConfig::merge(flags(&["--data-dir", "/d"]), file).expect("config");
        assert_eq!(
            config.kubernetes.agent_image,
            "registry.example/tether-agent:1.0"
        );
        assert!(
            config
                .to_toml()
                .contains("[kubernetes]\nagent_image = \"registry.example/tether-agent:1.0\"")
        );
        for bad in ["", "a b", "x\"y"] {
            let file = FileConfig {
                kubernetes: FileKubernetes {
                    agent_image: Some(bad.to_owned()),
                    ..FileKubernetes::default()
                },
                ..FileConfig::default()
            };
            let error = ServerConfig::merge(flags(&["--data-dir", "/d"]), file).expect_err(bad);
            assert!(
                error.to_string().starts_with("kubernetes.agent_image = "),
                "{error}"
            );
        }
    }

    #[test]
    fn the_management_shell_is_off_unless_asked_and_its_image_is_checked() {
        let config = ServerConfig::merge(flags(&["--data-dir", "/d"]), FileConfig::default())
            .expect("config");
        assert_eq!(config.kubernetes.management_shell(), None);
        assert!(
            config
                .kubernetes
                .management_shell_image
                .starts_with("tether-agent-tools:")
        );
        let file: FileConfig = toml::from_str(
            "[kubernetes]\nmanagement_shell = true\nmanagement_shell_image = \"registry.example/tools:1\"\n",
        )
        .expect("valid toml");
        let config = ServerConfig::merge(flags(&["--data-dir", "/d"]), file).expect("config");
        assert_eq!(
            config.kubernetes.management_shell(),
            Some("registry.example/tools:1")
        );
        assert!(config.to_toml().contains("management_shell = true"));
        let file: FileConfig =
            toml::from_str("[kubernetes]\nmanagement_shell_image = \"a b\"\n").expect("toml");
        let error = ServerConfig::merge(flags(&["--data-dir", "/d"]), file).expect_err("spaces");
        assert!(
            error
                .to_string()
                .starts_with("kubernetes.management_shell_image = "),
            "{error}"
        );
    }

    #[test]
    fn durations_out_of_range_are_named() {
        for (file, key) in [
            (
                "[actions]\ndefault_ttl_seconds = 0\n",
                "actions.default_ttl_seconds",
            ),
            (
                "[actions]\nmax_ttl_seconds = 99999999999\n",
                "actions.max_ttl_seconds",
            ),
            (
                "[actions]\nmax_ttl_seconds = 60\ndefault_ttl_seconds = 120\n",
                "actions.default_ttl_seconds",
            ),
            (
                "[auth]\nsession_ttl_seconds = 0\n",
                "auth.session_ttl_seconds",
            ),
            (
                "[pki]\nserver_certificate_lifetime_seconds = 5\n",
                "pki.server_certificate_lifetime_seconds",
            ),
            (
                "[pki]\ndevice_certificate_lifetime_seconds = 999999999\n",
                "pki.device_certificate_lifetime_seconds",
            ),
            (
                "[pki]\nrenewal_grace_seconds = 999999999\n",
                "pki.renewal_grace_seconds",
            ),
            (
                "[releases]\nmax_binary_bytes = 268435457\n",
                "releases.max_binary_bytes",
            ),
            (
                "[auth]\nmax_concurrent_password_checks = 0\n",
                "auth.max_concurrent_password_checks",
            ),
            ("[api]\nmax_connections = 1\n", "api.max_connections"),
            (
                "[api]\nmax_connections = 100\nmax_connections_per_ip = 101\n",
                "api.max_connections_per_ip",
            ),
            (
                "[api]\nmax_follows_per_user = 0\n",
                "api.max_follows_per_user",
            ),
            (
                "[api]\nheader_read_timeout_seconds = 0\n",
                "api.header_read_timeout_seconds",
            ),
            (
                "[ingest]\nmessages_per_second = 0\n",
                "ingest.messages_per_second",
            ),
            ("[ingest]\nbyte_burst = 1024\n", "ingest.byte_burst"),
            ("[cluster]\nlease_seconds = 0\n", "cluster.lease_seconds"),
            ("[cluster]\nlease_seconds = 301\n", "cluster.lease_seconds"),
            (
                "[cluster]\nadvertise_mqtt_url = \"https://x:1\"\n",
                "cluster.advertise_mqtt_url",
            ),
            (
                "[cluster]\nadvertise_api_url = \"wss://x:1/api\"\n",
                "cluster.advertise_api_url",
            ),
            (
                "[tunnels]\nkeepalive_seconds = 1\n",
                "tunnels.keepalive_seconds",
            ),
            (
                "[tunnels]\nidle_timeout_seconds = 5\n",
                "tunnels.idle_timeout_seconds",
            ),
            (
                "[tunnels]\nmax_waiting_per_user = 0\n",
                "tunnels.max_waiting_per_user",
            ),
            (
                "[ingest]\nmax_clock_ahead_seconds = 999999\n",
                "ingest.max_clock_ahead_seconds",
            ),
            (
                "[ingest]\nmax_series_per_device = 0\n",
                "ingest.max_series_per_device",
            ),
            (
                "[ingest]\nmax_series_per_device = 2000001\n",
                "ingest.max_series_per_device",
            ),
            (
                "[cluster]\noutbox_sweep_seconds = 0\n",
                "cluster.outbox_sweep_seconds",
            ),
        ] {
            let file: FileConfig = toml::from_str(file).expect("valid toml");
            let err = ServerConfig::merge(flags(&["--data-dir", "/d"]), file).expect_err(key);
            assert!(err.to_string().starts_with(key), "{err}");
        }
    }

    #[test]
    fn an_external_broker_reads_back_from_the_printed_config() {
        let file: FileConfig = toml::from_str(
            "[broker]\nmode = \"external\"\nurl = \"mqtts://127.0.0.1:8884\"\ndevice_url = \"mqtts://mqtt.example:8883\"\n",
        )
        .expect("valid toml");
        let config = ServerConfig::merge(flags(&["--data-dir", "/srv/t"]), file).expect("config");
        let BrokerConfig::External(external) = &config.broker else {
            panic!("external: {:?}", config.broker);
        };
        assert_eq!(external.url.to_string(), "mqtts://127.0.0.1:8884");
        assert_eq!(external.device_url.host, "mqtt.example");
        assert_eq!(external.crl_path, PathBuf::from("/srv/t/broker/crl.pem"));
        assert_eq!(external.client_identity, None);
        let printed = config.to_toml();
        let again = ServerConfig::merge(
            flags(&[]),
            toml::from_str(&printed).expect("the printed config parses"),
        )
        .expect("config");
        assert_eq!(again.broker, config.broker);
        assert_eq!(again.to_toml(), printed);

        let embedded = ServerConfig::merge(flags(&["--data-dir", "/d"]), FileConfig::default())
            .expect("config");
        assert_eq!(embedded.broker, BrokerConfig::Embedded);
        assert!(embedded.to_toml().contains("[broker]\nmode = \"embedded\""));
    }

    #[test]
    fn broker_settings_of_the_wrong_shape_are_named() {
        for (file, key, hint) in [
            ("mode = \"rmqtt\"", "broker.mode", "\"external\""),
            ("mode = \"external\"", "broker.url", "needs"),
            (
                "mode = \"external\"\nurl = \"mqtt://h:1883\"",
                "broker.url",
                "TLS",
            ),
            (
                "mode = \"external\"\nurl = \"mqtts://h\"",
                "broker.url",
                "no port",
            ),
            (
                "mode = \"external\"\nurl = \"mqtts://h:0\"",
                "broker.url",
                "1 to 65535",
            ),
            (
                "mode = \"external\"\nurl = \"mqtts://[::1]:8883\"",
                "broker.url",
                "host",
            ),
            (
                "mode = \"external\"\nurl = \"mqtts://h:1\"\ndevice_url = \"h:2\"",
                "broker.device_url",
                "mqtts://",
            ),
            (
                "mode = \"external\"\nurl = \"mqtts://h:1\"\nclient_cert = \"/c.pem\"",
                "broker.client_cert",
                "together",
            ),
            ("url = \"mqtts://h:1\"", "broker.url", "only used with"),
        ] {
            let file: FileConfig =
                toml::from_str(&format!("[broker]\n{file}\n")).expect("valid toml");
            let err = ServerConfig::merge(flags(&["--data-dir", "/d"]), file).expect_err(key);
            let message = err.to_string();
            assert!(message.starts_with(key), "{message}");
            assert!(message.contains(hint), "{message}");
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tetherd.toml");
        std::fs::write(&path, "listen_apii = \"127.0.0.1:1\"\n").expect("write");
        let err = read_file(&path).expect_err("unknown key");
        assert!(err.to_string().contains("listen_apii"), "{err}");
    }

    #[test]
    fn public_hosts_split_on_commas() {
        let config = ServerConfig::merge(
            flags(&["--public-host", "edge.example,10.0.0.1", "--data-dir", "/d"]),
            FileConfig::default(),
        )
        .expect("config");
        assert_eq!(config.public_hosts, vec!["edge.example", "10.0.0.1"]);
    }
}
