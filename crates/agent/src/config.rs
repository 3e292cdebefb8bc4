//! Command-line flags and environment variables (docs/interfaces.md).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::enroll::EnrollOptions;
use crate::kubernetes::{K3S_KUBECONFIG, KubernetesConfig, Mode, SERVICE_ACCOUNT_DIR};
use crate::local_api::LocalApiConfig;
use crate::logs::{JournalLocation, LogsConfig, SyslogConfig, SystemLog};
use crate::management_shell::ShellConfig;
use crate::management_shell::listener::ListenerConfig;
use crate::provisioning::register::RegisterOptions;
use crate::provisioning::{self, ProvisioningError};
use crate::spool::SpoolConfig;
use tether_proto::provisioning::BootCredential;

/// File name of the local API's socket in the state directory.
pub const LOCAL_API_SOCKET: &str = "api.sock";

#[derive(Debug, Clone, Parser)]
#[command(group(clap::ArgGroup::new("shell_login").multiple(true)))]
#[command(
    name = "tether-agent",
    version,
    about = "The on-device agent of tether: enrolls once, then serves actions from tetherd over MQTT"
)]
pub struct Config {
    /// Where the agent keeps its key, certificates and recent actions
    /// [default: $XDG_STATE_HOME/tether-agent, else ~/.local/state/tether-agent]
    #[arg(long, env = "TETHER_AGENT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// tetherd's API URL, e.g. https://tether.example:8443 (to enroll)
    #[arg(long, env = "TETHER_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// One-time enrollment token from `tether devices add` (to enroll)
    #[arg(
        long,
        env = "TETHER_ENROLL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub enroll_token: Option<String>,

    /// A file holding the one-time enrollment token (a mounted Secret):
    /// unlike --enroll-token's environment variable, not readable in
    /// /proc/PID/environ; read only when enrolling
    #[arg(
        long,
        env = "TETHER_ENROLL_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "enroll_token"
    )]
    pub enroll_token_file: Option<PathBuf>,

    /// SHA-256 of tetherd's CA certificate, hex (to enroll)
    #[arg(long, env = "TETHER_CA_SHA256", value_name = "HEX")]
    pub ca_sha256: Option<String>,

    /// Register under a provisioning policy with this key file, from
    /// `tether policies keys create POLICY` (its server and CA fingerprint
    /// unless --server and --ca-sha256 are given); --enroll-token wins
    #[arg(long, env = "TETHER_PROVISIONING_KEY", value_name = "FILE")]
    pub provisioning_key: Option<PathBuf>,

    /// Register or enroll with the boot bundle `tether os edit` wrote: DIR
    /// is the boot partition, read at DIR/tether/bundle.json;
    /// --enroll-token and --provisioning-key win
    #[arg(long, env = "TETHER_BOOT_BUNDLE", value_name = "DIR")]
    pub boot_bundle: Option<PathBuf>,

    /// A JSON object of facts (e.g. {"hardwareSerial": "SN-1"}) put in
    /// place of the gathered ones, field by field, in the registration and
    /// every status report
    #[arg(long, env = "TETHER_AGENT_FACTS_FILE", value_name = "FILE")]
    pub facts_file: Option<PathBuf>,

    /// The longest wait between two registration requests while an
    /// operator decides, whatever tetherd asks
    #[arg(
        long,
        env = "TETHER_AGENT_REGISTRATION_MAX_WAIT_SECONDS",
        value_name = "SECONDS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub registration_max_wait_seconds: u64,

    /// Log level: debug, info, warning, error, critical, or targets and
    /// levels such as info,rumqttc=warn
    #[arg(
        long,
        env = "TETHER_AGENT_LOG",
        value_name = "LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Most disk space the telemetry spool (metrics and logs kept until
    /// tetherd has them) may take, in bytes; the oldest records are dropped
    /// beyond it, and counted
    #[arg(
        long,
        env = "TETHER_AGENT_SPOOL_MAX_BYTES",
        value_name = "BYTES",
        default_value_t = SpoolConfig::default().max_bytes,
        value_parser = clap::value_parser!(u64).range(64 * 1024..)
    )]
    pub spool_max_bytes: u64,

    /// Unix socket of the local API, where applications on the device push
    /// metrics and log lines [default: STATE_DIR/api.sock]
    #[arg(long, env = "TETHER_AGENT_LOCAL_API_SOCKET", value_name = "PATH")]
    pub local_api_socket: Option<PathBuf>,

    /// Give the local API's socket to this group (name or number), so that
    /// its members' applications may use it [default: the agent's group]
    #[arg(long, env = "TETHER_AGENT_LOCAL_API_GROUP", value_name = "GROUP")]
    pub local_api_group: Option<String>,

    /// Take syslog messages on this unix datagram socket, as syslogd does
    /// on /dev/log (created mode 0666; a socket left there is replaced)
    #[arg(long, env = "TETHER_AGENT_SYSLOG_SOCKET", value_name = "PATH")]
    pub syslog_socket: Option<PathBuf>,

    /// Take syslog messages over UDP on this address, e.g. 0.0.0.0:514
    #[arg(long, env = "TETHER_AGENT_SYSLOG_UDP", value_name = "ADDR")]
    pub syslog_udp: Option<SocketAddr>,

    /// Take syslog messages over TCP on this address (RFC 6587 octet
    /// counting or newline framing), e.g. 0.0.0.0:601
    #[arg(long, env = "TETHER_AGENT_SYSLOG_TCP", value_name = "ADDR")]
    pub syslog_tcp: Option<SocketAddr>,

    /// Tail this file through rotation, from where the agent left it
    /// (repeat the flag for more files; comma-separated in the variable)
    #[arg(
        long = "log-file",
        env = "TETHER_AGENT_LOG_FILES",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub log_files: Vec<PathBuf>,

    /// Read the journal from this directory (journalctl --directory)
    /// rather than the system's, when the spec enables journal export
    #[arg(
        long,
        env = "TETHER_AGENT_JOURNAL_DIRECTORY",
        value_name = "DIR",
        conflicts_with = "journal_file"
    )]
    pub journal_directory: Option<PathBuf>,

    /// Read the journal from this one file (journalctl --file), polled
    #[arg(long, env = "TETHER_AGENT_JOURNAL_FILE", value_name = "FILE")]
    pub journal_file: Option<PathBuf>,

    /// The system log that `tether logs DEVICE --follow` shows when no
    /// configured source covers it: auto (the journal where journald runs,
    /// else /var/log/syslog, else /var/log/messages), journal, none, or a
    /// file's path
    #[arg(
        long,
        env = "TETHER_AGENT_SYSTEM_LOG",
        value_name = "auto|journal|none|PATH",
        default_value = "auto"
    )]
    pub system_log: String,

    /// Manage a Kubernetes cluster: `cluster` when the agent runs in it as
    /// a pod (its ServiceAccount), `host` when it runs on the k3s host (a
    /// kubeconfig file) [default: no cluster]
    #[arg(long, env = "TETHER_AGENT_KUBERNETES", value_name = "MODE")]
    pub kubernetes: Option<Mode>,

    /// The kubeconfig file of host mode
    #[arg(
        long,
        env = "TETHER_AGENT_KUBECONFIG",
        value_name = "PATH",
        default_value = K3S_KUBECONFIG
    )]
    pub kubeconfig: PathBuf,

    /// The cluster's name, reported and written into kubeconfigs
    /// [default: the kubeconfig's cluster name; in-cluster in cluster mode]
    #[arg(long, env = "TETHER_AGENT_KUBERNETES_CLUSTER", value_name = "NAME")]
    pub kubernetes_cluster: Option<String>,

    /// Where cluster mode reads the pod's ServiceAccount `token` and `ca.crt`
    #[arg(
        long,
        env = "TETHER_AGENT_KUBERNETES_SERVICE_ACCOUNT_DIR",
        value_name = "DIR",
        default_value = SERVICE_ACCOUNT_DIR
    )]
    pub kubernetes_service_account_dir: PathBuf,

    /// The API server's address in cluster mode, set by Kubernetes in every pod
    #[arg(long, env = "KUBERNETES_SERVICE_HOST", hide = true)]
    pub kubernetes_service_host: Option<String>,

    #[arg(long, env = "KUBERNETES_SERVICE_PORT", hide = true)]
    pub kubernetes_service_port: Option<String>,

    /// The `kubectl` that `send-kubectl` runs (a name is looked up in PATH)
    #[arg(
        long,
        env = "TETHER_AGENT_KUBECTL",
        value_name = "PATH",
        default_value = "kubectl"
    )]
    pub kubectl: PathBuf,

    /// How long one `send-kubectl` may run before it is killed (answered 504)
    #[arg(
        long,
        env = "TETHER_AGENT_KUBECTL_TIMEOUT_SECONDS",
        value_name = "SECONDS",
        default_value_t = 120,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub kubectl_timeout_seconds: u64,

    /// Which Helm controller deployments' charts are written for: `auto`
    /// (Flux's HelmRelease where the cluster serves Flux's API, else k3s's
    /// HelmChart), `k3s` or `flux`
    #[arg(
        long,
        env = "TETHER_AGENT_CHART_CONTROLLER",
        value_name = "auto|k3s|flux",
        default_value = "auto"
    )]
    pub chart_controller: crate::deployments::charts::ControllerChoice,

    /// How often the cluster's Helm releases are reconciled in full (an
    /// object edited or deleted by hand is restored by the next one)
    #[arg(
        long,
        env = "TETHER_AGENT_CHART_RESYNC_SECONDS",
        value_name = "SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub chart_resync_seconds: u64,

    /// Cluster mode: how often the secrets' Kubernetes Secrets are
    /// reconciled in full (one edited or deleted by hand is restored by the
    /// next one; after a failure, every 10 s at most)
    #[arg(
        long,
        env = "TETHER_AGENT_SECRET_RESYNC_SECONDS",
        value_name = "SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub secret_resync_seconds: u64,

    /// The command `restart-k3s` runs in host mode: words separated by
    /// spaces, run as an argv (not through a shell)
    #[arg(
        long,
        env = "TETHER_AGENT_K3S_RESTART_COMMAND",
        value_name = "COMMAND",
        default_value = crate::actions::restart_k3s::DEFAULT_COMMAND
    )]
    pub k3s_restart_command: String,

    /// How long `restart-k3s` waits, from running the command, for k3s to
    /// answer ready at /readyz before answering 504
    #[arg(
        long,
        env = "TETHER_AGENT_K3S_READY_TIMEOUT_SECONDS",
        value_name = "SECONDS",
        default_value_t = 240,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub k3s_ready_timeout_seconds: u64,

    /// The command `reboot` runs, once answered: words separated by
    /// spaces, run as an argv (not through a shell)
    #[arg(
        long,
        env = "TETHER_AGENT_REBOOT_COMMAND",
        value_name = "COMMAND",
        default_value = crate::host::power::DEFAULT_REBOOT_COMMAND
    )]
    pub reboot_command: String,

    /// The command `shutdown` runs, once answered: words separated by
    /// spaces, run as an argv (not through a shell)
    #[arg(
        long,
        env = "TETHER_AGENT_SHUTDOWN_COMMAND",
        value_name = "COMMAND",
        default_value = crate::host::power::DEFAULT_SHUTDOWN_COMMAND
    )]
    pub shutdown_command: String,

    /// Where the kernel's boot id is read, reported as the status's boot;
    /// only tests point it elsewhere (a test seam: they cannot reboot)
    #[arg(
        long,
        env = "TETHER_AGENT_BOOT_ID_FILE",
        value_name = "FILE",
        default_value = crate::host::boot::KERNEL_BOOT_ID
    )]
    pub boot_id_file: PathBuf,

    /// How often the watchdog's health check writes, syncs and renames a
    /// probe file in the state directory: more often finds a failing
    /// store sooner, and wears flash more
    #[arg(
        long,
        env = "TETHER_AGENT_WATCHDOG_STORE_PROBE_SECONDS",
        value_name = "SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub watchdog_store_probe_seconds: u64,

    /// When the agent stops on purpose (SIGTERM), disarm the watchdog
    /// device (write the magic 'V' before closing it); by default it stays
    /// armed, so a device whose agent does not come back resets
    #[arg(
        long,
        env = "TETHER_AGENT_WATCHDOG_DISARM_ON_STOP",
        value_name = "BOOL",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub watchdog_disarm_on_stop: bool,

    /// The helper binary that restore-command runs for its SFTP and SQLite
    /// work [default: tether-agent-restore beside this executable]
    #[arg(long, env = "TETHER_AGENT_RESTORE_HELPER", value_name = "PATH")]
    pub restore_helper: Option<PathBuf>,

    /// The helper binary that renders deployments' config file templates
    /// [default: tether-agent-render beside this executable]
    #[arg(long, env = "TETHER_AGENT_RENDER_HELPER", value_name = "PATH")]
    pub render_helper: Option<PathBuf>,

    /// Whether operators may run commands and copy files here through
    /// tunnels (`tether exec`, `tether cp`), whatever tetherd asks
    #[arg(
        long,
        env = "TETHER_AGENT_ALLOW_REMOTE_SHELL",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub allow_remote_shell: bool,

    /// Whether operators may reach this device's network through it
    /// (`tether forward-port`, `tether proxy`), whatever tetherd asks
    #[arg(
        long,
        env = "TETHER_AGENT_ALLOW_PORT_FORWARD",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub allow_port_forward: bool,

    /// The largest file `tether cp` may copy to or from this device, in bytes
    #[arg(
        long,
        env = "TETHER_AGENT_MAX_COPY_BYTES",
        value_name = "BYTES",
        default_value_t = 1 << 30
    )]
    pub max_copy_bytes: u64,

    /// Tunnels (exec, shell, forwarded connections, copies, kubectl
    /// requests, management shell connections) open at once on this device;
    /// more are refused with 429
    #[arg(
        long,
        env = "TETHER_AGENT_MAX_TUNNELS",
        value_name = "N",
        default_value_t = crate::tunnel::DEFAULT_MAX_TUNNELS,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub max_tunnels: u16,

    /// A host supervised processes' artifacts may be downloaded from, over
    /// HTTPS (repeat the flag for more; comma-separated in the variable)
    /// [default: tetherd's API host]
    #[arg(
        long = "artifact-host",
        env = "TETHER_AGENT_ARTIFACT_HOSTS",
        value_name = "HOST",
        value_delimiter = ','
    )]
    pub artifact_hosts: Vec<String>,
    /// The helper binary that serves the management shell's SSH
    /// connections [default: tether-agent-shell beside this executable]
    #[arg(long, env = "TETHER_AGENT_SHELL_HELPER", value_name = "PATH")]
    pub shell_helper: Option<PathBuf>,

    /// Hand management shell connections to `tether-agent-shell serve`
    /// listening on this Unix socket (another user's, in a cluster the
    /// shell container: ADR 0028) instead of starting the helper here
    #[arg(long, env = "TETHER_AGENT_SHELL_SOCKET", value_name = "PATH")]
    pub shell_socket: Option<PathBuf>,

    /// The management shell's host key, as the helper sees the path
    /// (created on first use) [default: shell_host_key in the state
    /// directory]
    #[arg(long, env = "TETHER_AGENT_SHELL_HOST_KEY", value_name = "FILE")]
    pub shell_host_key: Option<PathBuf>,

    /// Where management shell sessions start and HOME of their commands
    /// (created 0700 if missing; keep it on persistent storage)
    #[arg(
        long,
        env = "TETHER_AGENT_SHELL_WORK_DIR",
        value_name = "DIR",
        default_value = crate::management_shell::DEFAULT_WORK_DIR
    )]
    pub shell_work_dir: PathBuf,

    /// Seconds a management shell connection (tunnel or --shell-listen)
    /// may take to log in before it is closed and its process ends
    #[arg(
        long,
        env = "TETHER_AGENT_SHELL_LOGIN_TIMEOUT_SECONDS",
        value_name = "SECONDS",
        default_value_t = crate::management_shell::LOGIN_TIMEOUT_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..=600)
    )]
    pub shell_login_timeout_seconds: u64,

    /// Also serve the management shell on this TCP address, e.g.
    /// 0.0.0.0:2222 for the cluster's Service `management-pod` (off unless
    /// given; needs --shell-authorized-keys or --shell-password-file)
    #[arg(
        long,
        env = "TETHER_AGENT_SHELL_LISTEN",
        value_name = "ADDR:PORT",
        requires = "shell_login"
    )]
    pub shell_listen: Option<SocketAddr>,

    /// The OpenSSH authorized_keys file whose keys may log in through
    /// --shell-listen, read at each connection
    #[arg(
        long,
        env = "TETHER_AGENT_SHELL_AUTHORIZED_KEYS",
        value_name = "FILE",
        group = "shell_login"
    )]
    pub shell_authorized_keys: Option<PathBuf>,

    /// A file holding the password that may log in through --shell-listen
    /// (in clear, one line), read at each connection; missing or empty:
    /// no password login
    #[arg(
        long,
        env = "TETHER_AGENT_SHELL_PASSWORD_FILE",
        value_name = "FILE",
        group = "shell_login"
    )]
    pub shell_password_file: Option<PathBuf>,

    /// How often the clock's offset from tetherd's is measured
    #[arg(
        long,
        env = "TETHER_AGENT_TIME_CHECK_SECONDS",
        value_name = "SECONDS",
        default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub time_check_seconds: u64,

    /// Where the spec's NTP servers are written, as a systemd-timesyncd drop-in
    #[arg(
        long,
        env = "TETHER_AGENT_NTP_DROP_IN",
        value_name = "FILE",
        default_value = crate::time::ntp::DEFAULT_DROP_IN
    )]
    pub ntp_drop_in: PathBuf,

    /// The command that makes timesyncd read the drop-in: words separated
    /// by spaces, run as an argv (not through a shell)
    #[arg(
        long,
        env = "TETHER_AGENT_NTP_RELOAD_COMMAND",
        value_name = "COMMAND",
        default_value = crate::time::ntp::DEFAULT_RELOAD_COMMAND
    )]
    pub ntp_reload_command: String,

    /// timesyncd's config file, read (with its `.d/*.conf` drop-ins) for the
    /// NTP servers when timedatectl cannot answer
    #[arg(
        long,
        env = "TETHER_AGENT_TIMESYNCD_CONF",
        value_name = "FILE",
        default_value = "/etc/systemd/timesyncd.conf"
    )]
    pub timesyncd_conf: PathBuf,

    /// The chronyc asked for chrony's state and sources
    #[arg(
        long,
        env = "TETHER_AGENT_CHRONYC",
        value_name = "PATH",
        default_value = "chronyc"
    )]
    pub chronyc: PathBuf,

    /// The timedatectl asked for timesyncd's state and servers
    #[arg(
        long,
        env = "TETHER_AGENT_TIMEDATECTL",
        value_name = "PATH",
        default_value = "timedatectl"
    )]
    pub timedatectl: PathBuf,
    /// How the spec's network section is applied: ip (iproute2 and
    /// resolv.conf, static settings) or netplan (`netplan apply`, on a
    /// device running netplan with systemd-networkd or NetworkManager)
    #[arg(
        long,
        env = "TETHER_AGENT_NETWORK_APPLIER",
        value_name = "APPLIER",
        value_enum,
        default_value_t = crate::network::ApplierKind::Ip
    )]
    pub network_applier: crate::network::ApplierKind,

    /// The resolver file the ip applier writes nameservers to, and the
    /// status reads DNS from
    #[arg(
        long,
        env = "TETHER_AGENT_RESOLV_CONF",
        value_name = "FILE",
        default_value = "/etc/resolv.conf"
    )]
    pub resolv_conf: PathBuf,

    /// The netplan file the netplan applier writes the spec's document to
    #[arg(
        long,
        env = "TETHER_AGENT_NETPLAN_FILE",
        value_name = "FILE",
        default_value = "/etc/netplan/90-tether.yaml"
    )]
    pub netplan_file: PathBuf,

    /// How often the network is read again for the status (reported only
    /// when it changed)
    #[arg(
        long,
        env = "TETHER_AGENT_NETWORK_STATUS_INTERVAL_SECONDS",
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub network_status_interval_seconds: u64,

    /// How long a new agent release has, after the agent restarts on it,
    /// to connect to tetherd and report; past it the previous binary is
    /// put back and the release reported failed
    #[arg(
        long,
        env = "TETHER_AGENT_UPDATE_TRIAL_SECONDS",
        value_name = "SECONDS",
        default_value_t = crate::self_update::DEFAULT_TRIAL.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub update_trial_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot choose a state directory: neither XDG_STATE_HOME nor HOME is set; pass --state-dir"
    )]
    NoStateDir,
    #[error(
        "not enrolled yet and {missing} missing: to enroll, pass --server, --enroll-token and --ca-sha256 (`tether devices add NAME` prints the command); or register with --provisioning-key FILE (`tether policies keys create POLICY` makes one) or --boot-bundle DIR (the boot partition `tether os edit` wrote)"
    )]
    Enrollment { missing: String },
    #[error("cannot read the enrollment token from {path} (--enroll-token-file)")]
    EnrollTokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the enrollment token file {path} (--enroll-token-file) is empty: put the token from `tether devices add NAME` in it"
    )]
    EmptyEnrollTokenFile { path: String },
    #[error(transparent)]
    Provisioning(#[from] ProvisioningError),
}

/// How an agent without credentials gets them.
#[derive(Debug, Clone)]
pub enum FirstStart {
    /// With a one-time token for a device (`--enroll-token`, or a boot
    /// bundle's enrollment credential).
    Enroll(EnrollOptions),
    /// Under a provisioning policy (`--provisioning-key`, or a boot
    /// bundle's provisioning credential).
    Register(RegisterOptions),
}

impl Config {
    pub fn state_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.state_dir {
            Some(dir) => Ok(dir.clone()),
            None => default_state_dir(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
                .ok_or(ConfigError::NoStateDir),
        }
    }

    /// How the agent updates itself; `exe` is the running executable.
    pub fn self_update(&self, exe: PathBuf) -> crate::self_update::SelfUpdateConfig {
        crate::self_update::SelfUpdateConfig {
            exe,
            trial: std::time::Duration::from_secs(self.update_trial_seconds),
        }
    }

    pub fn spool(&self) -> SpoolConfig {
        SpoolConfig {
            max_bytes: self.spool_max_bytes,
            ..SpoolConfig::default()
        }
    }

    pub fn local_api(&self, state_dir: &std::path::Path) -> LocalApiConfig {
        LocalApiConfig {
            socket: self
                .local_api_socket
                .clone()
                .unwrap_or_else(|| state_dir.join(LOCAL_API_SOCKET)),
            group: self.local_api_group.clone(),
        }
    }

    /// The log sources the flags name.
    pub fn logs(&self) -> LogsConfig {
        LogsConfig {
            syslog: SyslogConfig {
                socket: self.syslog_socket.clone(),
                udp: self.syslog_udp,
                tcp: self.syslog_tcp,
            },
            files: self.log_files.clone(),
            journal: match (&self.journal_directory, &self.journal_file) {
                (Some(dir), _) => JournalLocation::Directory(dir.clone()),
                (None, Some(file)) => JournalLocation::File(file.clone()),
                (None, None) => JournalLocation::System,
            },
            system_log: SystemLog::from_setting(&self.system_log),
        }
    }

    /// The cluster the agent manages, if `--kubernetes` names a mode.
    pub fn kubernetes(&self) -> Option<KubernetesConfig> {
        Some(KubernetesConfig {
            mode: self.kubernetes?,
            service_host: self.kubernetes_service_host.clone(),
            service_port: self.kubernetes_service_port.clone(),
            service_account_dir: self.kubernetes_service_account_dir.clone(),
            kubeconfig: self.kubeconfig.clone(),
            cluster_name: self.kubernetes_cluster.clone(),
        })
    }

    /// How the charts of deployments are kept on the cluster; polled at
    /// least every 5 s while a release is progressing.
    pub fn charts(&self) -> crate::deployments::charts::ChartsConfig {
        let resync = std::time::Duration::from_secs(self.chart_resync_seconds);
        crate::deployments::charts::ChartsConfig {
            controller: self.chart_controller,
            resync,
            poll: resync.min(std::time::Duration::from_secs(5)),
        }
    }

    /// Cluster mode: between full reconciles of the secrets' Secrets.
    pub fn secret_resync(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.secret_resync_seconds)
    }

    /// How `send-kubectl` runs `kubectl`.
    pub fn kubectl(&self) -> crate::actions::send_kubectl::KubectlConfig {
        crate::actions::send_kubectl::KubectlConfig {
            program: self.kubectl.clone(),
            timeout: std::time::Duration::from_secs(self.kubectl_timeout_seconds),
        }
    }

    /// How `restart-k3s` restarts k3s.
    pub fn k3s_restart(&self) -> crate::actions::restart_k3s::RestartConfig {
        crate::actions::restart_k3s::RestartConfig {
            command: self
                .k3s_restart_command
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            ready_timeout: std::time::Duration::from_secs(self.k3s_ready_timeout_seconds),
        }
    }

    /// How `reboot` and `shutdown` take the device down.
    pub fn power(&self) -> crate::host::power::PowerConfig {
        let argv = |command: &str| command.split_whitespace().map(str::to_owned).collect();
        crate::host::power::PowerConfig {
            reboot: argv(&self.reboot_command),
            shutdown: argv(&self.shutdown_command),
            delay: crate::host::power::DEFAULT_DELAY,
        }
    }

    /// How the watchdog checks the agent and what it does at a stop.
    pub fn watchdog(&self, state_dir: &std::path::Path) -> crate::watchdog::WatchdogOptions {
        crate::watchdog::WatchdogOptions {
            probe_file: state_dir.join(crate::watchdog::health::PROBE_FILE),
            store_probe_every: std::time::Duration::from_secs(self.watchdog_store_probe_seconds),
            disarm_on_stop: self.watchdog_disarm_on_stop,
            systemd: tether_proto::sd_notify::SystemdWatchdog::from_env(),
        }
    }

    /// The `tether-agent-restore` that restore-command runs: the flag's,
    /// else the one beside this executable (installed together).
    pub fn restore_helper(&self) -> PathBuf {
        self.restore_helper
            .clone()
            .unwrap_or_else(|| beside_this_executable(crate::restore::helper::HELPER_NAME))
    }

    /// The `tether-agent-render` that renders config files: the flag's,
    /// else the one beside this executable (installed together).
    pub fn render_helper(&self) -> PathBuf {
        self.render_helper.clone().unwrap_or_else(|| {
            beside_this_executable(crate::deployments::supervisor::render::HELPER_NAME)
        })
    }

    /// How `ssh` tunnels run the management shell: the helper beside this
    /// executable unless named, its host key in the state directory.
    pub fn management_shell(&self, state_dir: &std::path::Path) -> ShellConfig {
        ShellConfig {
            helper: self
                .shell_helper
                .clone()
                .unwrap_or_else(|| beside_this_executable(crate::management_shell::HELPER_NAME)),
            socket: self.shell_socket.clone(),
            work_dir: self.shell_work_dir.clone(),
            host_key: self
                .shell_host_key
                .clone()
                .unwrap_or_else(|| state_dir.join(crate::management_shell::HOST_KEY_FILE)),
            login_timeout: std::time::Duration::from_secs(self.shell_login_timeout_seconds),
        }
    }

    /// The management shell's TCP listener, if `--shell-listen` asks for one.
    pub fn shell_listener(&self) -> Option<ListenerConfig> {
        Some(ListenerConfig {
            address: self.shell_listen?,
            authorized_keys_file: self.shell_authorized_keys.clone(),
            password_file: self.shell_password_file.clone(),
        })
    }

    /// The hosts supervised processes' artifacts may come from: the
    /// `--artifact-host` flags, else the host of tetherd's API (`api_url`).
    pub fn artifact_hosts(&self, api_url: &str) -> Vec<String> {
        let hosts = if self.artifact_hosts.is_empty() {
            tether_proto::desired::process::https_host(api_url)
                .map(str::to_owned)
                .into_iter()
                .collect()
        } else {
            self.artifact_hosts.clone()
        };
        hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect()
    }

    /// How the device's time is kept track of and set.
    pub fn time(&self) -> crate::time::TimeConfig {
        crate::time::TimeConfig {
            sources: crate::time::sources::SourcesConfig {
                chronyc: self.chronyc.clone(),
                timedatectl: self.timedatectl.clone(),
                timesyncd_conf: self.timesyncd_conf.clone(),
            },
            ntp: crate::time::ntp::NtpConfig {
                drop_in: self.ntp_drop_in.clone(),
                reload: self
                    .ntp_reload_command
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            },
            check_interval: std::time::Duration::from_secs(self.time_check_seconds),
        }
    }

    /// How the spec's network section is applied and the network read.
    pub fn network(&self) -> crate::network::NetworkConfig {
        crate::network::NetworkConfig {
            applier: self.network_applier,
            resolv_conf: self.resolv_conf.clone(),
            netplan_file: self.netplan_file.clone(),
            netplan_command: "netplan".into(),
            status_interval: std::time::Duration::from_secs(self.network_status_interval_seconds),
        }
    }

    /// What tunnels may do on this device.
    pub fn tunnels(&self) -> crate::tunnel::TunnelPolicy {
        crate::tunnel::TunnelPolicy {
            allow_remote_shell: self.allow_remote_shell,
            allow_port_forward: self.allow_port_forward,
            max_copy_bytes: self.max_copy_bytes,
            slots: crate::tunnel::TunnelSlots::new(usize::from(self.max_tunnels)),
        }
    }

    /// Whether any flag says how to get credentials: all are ignored once
    /// the agent has them.
    pub fn has_first_start_flags(&self) -> bool {
        self.server.is_some()
            || self.enroll_token.is_some()
            || self.enroll_token_file.is_some()
            || self.ca_sha256.is_some()
            || self.provisioning_key.is_some()
            || self.boot_bundle.is_some()
    }

    /// How to get credentials: `--enroll-token` (with `--server` and
    /// `--ca-sha256`), else `--provisioning-key`, else `--boot-bundle`;
    /// `--server` and `--ca-sha256` stand in for a key's or bundle's.
    pub fn first_start(&self) -> Result<FirstStart, ConfigError> {
        if self.enroll_token.is_some() || self.enroll_token_file.is_some() {
            return self.enroll_options().map(FirstStart::Enroll);
        }
        let max_wait = std::time::Duration::from_secs(self.registration_max_wait_seconds);
        if let Some(path) = &self.provisioning_key {
            let key = provisioning::read_key(path)?;
            return Ok(FirstStart::Register(RegisterOptions {
                server: self.server.clone().unwrap_or(key.server),
                ca_sha256: self.ca_sha256.clone().unwrap_or(key.ca_sha256),
                key_id: key.key_id,
                secret: key.secret,
                policy: Some(key.policy),
                max_wait,
            }));
        }
        if let Some(dir) = &self.boot_bundle {
            let bundle = provisioning::read_bundle(dir)?;
            let server = self.server.clone().unwrap_or(bundle.server);
            let ca_sha256 = self.ca_sha256.clone().unwrap_or(bundle.ca_sha256);
            return Ok(match bundle.credential {
                BootCredential::Provisioning { key_id, secret } => {
                    FirstStart::Register(RegisterOptions {
                        server,
                        ca_sha256,
                        key_id,
                        secret,
                        policy: None,
                        max_wait,
                    })
                }
                BootCredential::Enrollment { token, .. } => FirstStart::Enroll(EnrollOptions {
                    server,
                    token,
                    ca_sha256,
                }),
            });
        }
        self.enroll_options().map(FirstStart::Enroll)
    }

    /// The enrollment token: --enroll-token's, or the content of
    /// --enroll-token-file without its line end.
    fn enroll_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.enroll_token_file else {
            return Ok(self.enroll_token.clone());
        };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::EnrollTokenFile {
                path: path.display().to_string(),
                source,
            })?;
        let token = text.trim_end_matches(['\n', '\r']);
        if token.is_empty() {
            return Err(ConfigError::EmptyEnrollTokenFile {
                path: path.display().to_string(),
            });
        }
        Ok(Some(token.to_owned()))
    }

    /// The enrollment flags, all three or an error naming the missing ones.
    fn enroll_options(&self) -> Result<EnrollOptions, ConfigError> {
        let token = self.enroll_token()?;
        match (&self.server, &token, &self.ca_sha256) {
            (Some(server), Some(token), Some(ca_sha256)) => Ok(EnrollOptions {
                server: server.clone(),
                token: token.clone(),
                ca_sha256: ca_sha256.clone(),
            }),
            _ => {
                let missing: Vec<&str> = [
                    ("--server", self.server.is_none()),
                    ("--enroll-token", token.is_none()),
                    ("--ca-sha256", self.ca_sha256.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, absent)| absent.then_some(flag))
                .collect();
                let verb = if missing.len() == 1 { "is" } else { "are" };
                Err(ConfigError::Enrollment {
                    missing: format!("{} {verb}", missing.join(", ")),
                })
            }
        }
    }
}

/// A helper binary installed next to this executable.
fn beside_this_executable(name: &str) -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(std::path::Path::to_path_buf));
    beside.unwrap_or_default().join(name)
}

/// The XDG base directory spec: `$XDG_STATE_HOME` if absolute, else `~/.local/state`.
fn default_state_dir(xdg_state_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let base = xdg_state_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            home.map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/state"))
        })?;
    Some(base.join("tether-agent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_systemd_unit_runs_host_mode_with_flags_the_agent_takes() {
        let unit = include_str!("../../../packaging/systemd/tether-agent-k3s.service");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("an ExecStart line");
        let config = Config::try_parse_from(exec.split_whitespace()).expect("the flags parse");
        assert_eq!(config.kubernetes, Some(Mode::Host));
        assert_eq!(config.kubeconfig, PathBuf::from(K3S_KUBECONFIG));
        assert_eq!(
            config.k3s_restart().command,
            ["systemctl", "restart", "k3s"]
        );
    }

    #[test]
    fn the_time_flags_default_to_the_devices_own_timesyncd() {
        let config = Config::try_parse_from(["tether-agent"]).expect("parses");
        assert_eq!(config.time(), crate::time::TimeConfig::default());
        let config = Config::try_parse_from([
            "tether-agent",
            "--ntp-reload-command",
            "/usr/local/bin/reload-ntp  now",
            "--time-check-seconds",
            "60",
        ])
        .expect("parses");
        assert_eq!(
            config.time().ntp.reload,
            ["/usr/local/bin/reload-ntp", "now"]
        );
        assert_eq!(config.time().check_interval.as_secs(), 60);
        assert!(Config::try_parse_from(["tether-agent", "--time-check-seconds", "0"]).is_err());
    }

    #[test]
    fn the_state_dir_follows_xdg() {
        assert_eq!(
            default_state_dir(Some("/xdg".into()), Some("/home/u".into())),
            Some(PathBuf::from("/xdg/tether-agent"))
        );
        assert_eq!(
            default_state_dir(Some("relative".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.local/state/tether-agent"))
        );
        assert_eq!(default_state_dir(None, None), None);
    }

    #[test]
    fn flags_parse_and_missing_enrollment_flags_are_named() {
        let config = Config::try_parse_from([
            "tether-agent",
            "--state-dir",
            "/s",
            "--server",
            "https://h:8443",
        ])
        .expect("parses");
        assert_eq!(config.log_level, "info");
        assert_eq!(config.state_dir().expect("given"), PathBuf::from("/s"));
        let err = config.first_start().expect_err("incomplete");
        let message = err.to_string();
        assert!(
            message.contains("--enroll-token, --ca-sha256 are missing"),
            "{message}"
        );

        let config = Config::try_parse_from([
            "tether-agent",
            "--server",
            "https://h:8443",
            "--enroll-token",
            "t",
            "--ca-sha256",
            "ab",
        ])
        .expect("parses");
        let Ok(FirstStart::Enroll(options)) = config.first_start() else {
            panic!("enrolls");
        };
        assert_eq!(options.token, "t");
    }

    #[test]
    fn with_nothing_given_every_way_to_get_credentials_is_named() -> anyhow::Result<()> {
        let config = Config::try_parse_from(["tether-agent"])?;
        assert!(!config.has_first_start_flags());
        let message = config.first_start().expect_err("nothing").to_string();
        for way in [
            "--server, --enroll-token, --ca-sha256 are missing",
            "--provisioning-key FILE",
            "--boot-bundle DIR",
            "tether policies keys create POLICY",
            "tether os edit",
        ] {
            assert!(message.contains(way), "{way}: {message}");
        }
        Ok(())
    }

    /// A temp dir with a provisioning key file and a boot bundle holding
    /// an enrollment token.
    fn credentials_on_disk() -> anyhow::Result<(tempfile::TempDir, String, String)> {
        let temp = tempfile::tempdir()?;
        let key = temp.path().join("key.json");
        std::fs::write(
            &key,
            serde_json::json!({"kind": "tether-provisioning-key", "server": "https://key:8443",
                "caSha256": "11".repeat(32), "policy": "lab", "keyId": "pk-1", "secret": "s"})
            .to_string(),
        )?;
        let boot = temp.path().join("boot");
        std::fs::create_dir_all(boot.join("tether"))?;
        std::fs::write(
            boot.join("tether/bundle.json"),
            serde_json::json!({"version": 1, "server": "https://bundle:8443", "caSha256": "22".repeat(32),
                "credential": {"kind": "enrollment", "device": "edge-1", "token": "bundle-token"}})
            .to_string(),
        )?;
        let key = key.to_string_lossy().into_owned();
        let boot = boot.to_string_lossy().into_owned();
        Ok((temp, key, boot))
    }

    #[test]
    fn the_enrollment_token_may_come_from_a_file_read_when_enrolling() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("token");
        let flags = |file: &std::path::Path| {
            Config::try_parse_from([
                "tether-agent",
                "--server",
                "https://s:8443",
                "--ca-sha256",
                "33",
                "--enroll-token-file",
                file.to_str().unwrap_or_default(),
            ])
        };
        let config = flags(&file)?;
        assert!(config.has_first_start_flags());
        let error = config.first_start().err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                format!(
                    "cannot read the enrollment token from {} (--enroll-token-file)",
                    file.display()
                )
                .as_str()
            )
        );
        std::fs::write(&file, "\n")?;
        let error = flags(&file)?.first_start().err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("is empty")));
        std::fs::write(&file, "from-the-secret\n")?;
        let Ok(FirstStart::Enroll(options)) = flags(&file)?.first_start() else {
            panic!("enrolls");
        };
        assert_eq!(options.token, "from-the-secret");
        let both = Config::try_parse_from([
            "tether-agent",
            "--enroll-token",
            "t",
            "--enroll-token-file",
            "/f",
        ]);
        assert!(both.is_err(), "one or the other");
        Ok(())
    }

    #[test]
    fn an_enroll_token_wins_over_a_provisioning_key_which_wins_over_a_boot_bundle()
    -> anyhow::Result<()> {
        let (_temp, key, boot) = credentials_on_disk()?;
        let all = Config::try_parse_from([
            "tether-agent",
            "--server",
            "https://flag:8443",
            "--ca-sha256",
            "33",
            "--enroll-token",
            "flag-token",
            "--provisioning-key",
            &key,
            "--boot-bundle",
            &boot,
        ])?;
        assert!(all.has_first_start_flags());
        let Ok(FirstStart::Enroll(options)) = all.first_start() else {
            panic!("the token wins");
        };
        assert_eq!(options.token, "flag-token");

        let config = Config::try_parse_from([
            "tether-agent",
            "--provisioning-key",
            &key,
            "--boot-bundle",
            &boot,
        ])?;
        let Ok(FirstStart::Register(options)) = config.first_start() else {
            panic!("the key wins");
        };
        assert_eq!(
            (
                options.server.as_str(),
                options.key_id.as_str(),
                options.policy.as_deref()
            ),
            ("https://key:8443", "pk-1", Some("lab"))
        );
        assert_eq!(options.ca_sha256, "11".repeat(32));
        assert_eq!(options.max_wait, std::time::Duration::from_secs(300));

        let config = Config::try_parse_from([
            "tether-agent",
            "--provisioning-key",
            &key,
            "--server",
            "https://flag:8443",
            "--registration-max-wait-seconds",
            "2",
        ])?;
        let Ok(FirstStart::Register(options)) = config.first_start() else {
            panic!("registers");
        };
        assert_eq!(
            options.server, "https://flag:8443",
            "--server wins over the file's"
        );
        assert_eq!(options.ca_sha256, "11".repeat(32));
        assert_eq!(options.max_wait, std::time::Duration::from_secs(2));

        let config = Config::try_parse_from(["tether-agent", "--boot-bundle", &boot])?;
        let Ok(FirstStart::Enroll(options)) = config.first_start() else {
            panic!("the bundle's token enrolls");
        };
        assert_eq!(
            (options.server.as_str(), options.token.as_str()),
            ("https://bundle:8443", "bundle-token")
        );
        assert!(
            Config::try_parse_from(["tether-agent", "--registration-max-wait-seconds", "0"])
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn an_unusable_key_file_or_bundle_is_named() -> anyhow::Result<()> {
        let (temp, _key, _boot) = credentials_on_disk()?;
        let missing = temp.path().join("nothing");
        let missing = missing.to_string_lossy();
        let config = Config::try_parse_from(["tether-agent", "--provisioning-key", &missing])?;
        let message = config.first_start().expect_err("no key").to_string();
        assert!(
            message.contains("cannot read the provisioning key"),
            "{message}"
        );
        let config = Config::try_parse_from(["tether-agent", "--boot-bundle", &missing])?;
        let message = config.first_start().expect_err("no bundle").to_string();
        assert!(
            message.contains("cannot read the boot bundle")
                && message.contains("nothing/tether/bundle.json"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn the_local_api_lives_in_the_state_dir_unless_told_and_may_name_a_group() {
        let config = Config::try_parse_from(["tether-agent"]).expect("parses");
        assert_eq!(
            config.local_api(std::path::Path::new("/s")),
            LocalApiConfig {
                socket: PathBuf::from("/s/api.sock"),
                group: None
            }
        );
        let config = Config::try_parse_from([
            "tether-agent",
            "--local-api-socket",
            "/run/tether/api.sock",
            "--local-api-group",
            "tether",
        ])
        .expect("parses");
        assert_eq!(
            config.local_api(std::path::Path::new("/s")),
            LocalApiConfig {
                socket: PathBuf::from("/run/tether/api.sock"),
                group: Some("tether".into())
            }
        );
    }

    #[test]
    fn the_chart_controller_is_auto_unless_told_and_unknown_ones_are_refused() {
        use crate::deployments::charts::ControllerChoice;
        let config = Config::try_parse_from(["tether-agent"]).expect("parses");
        let charts = config.charts();
        assert_eq!(charts.controller, ControllerChoice::Auto);
        assert_eq!(charts.resync, std::time::Duration::from_secs(60));
        assert_eq!(charts.poll, std::time::Duration::from_secs(5));
        let config = Config::try_parse_from([
            "tether-agent",
            "--chart-controller",
            "flux",
            "--chart-resync-seconds",
            "2",
        ])
        .expect("parses");
        assert_eq!(config.charts().controller, ControllerChoice::Flux);
        assert_eq!(config.charts().poll, std::time::Duration::from_secs(2));
        let err = Config::try_parse_from(["tether-agent", "--chart-controller", "argo"])
            .expect_err("unknown");
        assert!(err.to_string().contains("--chart-controller"), "{err}");
        assert!(Config::try_parse_from(["tether-agent", "--chart-resync-seconds", "0"]).is_err());
    }

    #[test]
    fn kubernetes_flags_make_a_cluster_config_only_with_a_mode() {
        let config = Config::try_parse_from(["tether-agent"]).expect("parses");
        assert_eq!(config.kubernetes(), None);
        let config = Config::try_parse_from([
            "tether-agent",
            "--kubernetes",
            "host",
            "--kubeconfig",
            "/k.yaml",
            "--kubernetes-cluster",
            "edge-1",
        ])
        .expect("parses");
        let kubernetes = config.kubernetes().expect("configured");
        assert_eq!(kubernetes.mode, Mode::Host);
        assert_eq!(kubernetes.kubeconfig, PathBuf::from("/k.yaml"));
        assert_eq!(kubernetes.cluster_name.as_deref(), Some("edge-1"));
        assert_eq!(
            kubernetes.service_account_dir,
            PathBuf::from(SERVICE_ACCOUNT_DIR)
        );
        let err = Config::try_parse_from(["tether-agent", "--kubernetes", "cloud"])
            .expect_err("no such mode");
        assert!(err.to_string().contains("--kubernetes"), "{err}");
        assert!(
            Config::try_parse_from(["tether-agent", "--kubectl-timeout-seconds", "0"]).is_err()
        );
    }

    #[test]
    fn log_source_flags() {
        let config = Config::try_parse_from([
            "tether-agent",
            "--syslog-socket",
            "/dev/log",
            "--syslog-udp",
            "127.0.0.1:5514",
            "--log-file",
            "/var/log/a.log",
            "--log-file",
            "/var/log/b.log",
            "--journal-directory",
            "/var/log/journal",
            "--system-log",
            "none",
        ])
        .expect("parses");
        let logs = config.logs();
        assert_eq!(logs.syslog.socket, Some(PathBuf::from("/dev/log")));
        assert_eq!(
            logs.syslog.udp,
            Some("127.0.0.1:5514".parse().expect("addr"))
        );
        assert_eq!(logs.syslog.tcp, None);
        assert_eq!(logs.files.len(), 2);
        assert_eq!(
            logs.journal,
            JournalLocation::Directory("/var/log/journal".into())
        );
        assert_eq!(logs.system_log, SystemLog::None);

        let err = Config::try_parse_from(["tether-agent", "--syslog-udp", "port 514"])
            .expect_err("not an address");
        assert!(err.to_string().contains("--syslog-udp"), "{err}");
        assert!(
            Config::try_parse_from([
                "tether-agent",
                "--journal-file",
                "/x.journal",
                "--journal-directory",
                "/d"
            ])
            .is_err(),
            "one journal location"
        );
    }

    #[test]
    fn the_shell_listener_is_off_unless_asked_and_needs_a_login() -> anyhow::Result<()> {
        let config = Config::try_parse_from(["tether-agent"])?;
        assert_eq!(config.shell_listener(), None);
        let error = Config::try_parse_from(["tether-agent", "--shell-listen", "0.0.0.0:2222"])
            .expect_err("no way to log in");
        assert!(
            error.to_string().contains("--shell-authorized-keys"),
            "{error}"
        );
        let error = Config::try_parse_from([
            "tether-agent",
            "--shell-listen",
            "port 22",
            "--shell-password-file",
            "/p",
        ])
        .expect_err("not an address");
        assert!(error.to_string().contains("--shell-listen"), "{error}");
        let config = Config::try_parse_from([
            "tether-agent",
            "--shell-listen",
            "0.0.0.0:2222",
            "--shell-password-file",
            "/login/password",
        ])?;
        assert_eq!(
            config.shell_listener(),
            Some(ListenerConfig {
                address: "0.0.0.0:2222".parse()?,
                authorized_keys_file: None,
                password_file: Some("/login/password".into()),
            })
        );
        Ok(())
    }

    #[test]
    fn a_shell_connection_has_30_seconds_to_log_in_unless_told() -> anyhow::Result<()> {
        let state = std::path::Path::new("/state");
        let config = Config::try_parse_from(["tether-agent"])?;
        assert_eq!(
            config.management_shell(state).login_timeout,
            std::time::Duration::from_secs(30)
        );
        let config =
            Config::try_parse_from(["tether-agent", "--shell-login-timeout-seconds", "5"])?;
        assert_eq!(
            config.management_shell(state).login_timeout,
            std::time::Duration::from_secs(5)
        );
        let error = Config::try_parse_from(["tether-agent", "--shell-login-timeout-seconds", "0"])
            .expect_err("no time to log in");
        assert!(
            error.to_string().contains("--shell-login-timeout-seconds"),
            "{error}"
        );
        Ok(())
    }

    #[test]
    fn the_restore_helper_is_beside_the_agent_unless_named() -> anyhow::Result<()> {
        let config = Config::try_parse_from(["tether-agent"])?;
        let exe = std::env::current_exe()?;
        assert_eq!(
            Some(config.restore_helper().as_path()),
            exe.parent()
                .map(|dir| dir.join("tether-agent-restore"))
                .as_deref()
        );
        let config = Config::try_parse_from(["tether-agent", "--restore-helper", "/opt/t/helper"])?;
        assert_eq!(config.restore_helper(), PathBuf::from("/opt/t/helper"));
        Ok(())
    }
}
