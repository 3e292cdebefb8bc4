//! `tether quickstart`: tetherd, an agent and a device `local` on this
//! machine, with the CLI logged in, until Ctrl-C.

use std::ffi::OsString;
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde::Deserialize;
use tether_proto::Presence;
use tether_proto::api::{CreateDevice, EnrollmentToken, LoginRequest};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use super::{CommandError, Context, Outcome};
use crate::client::{ApiClient, ClientError};
use crate::config::{CliConfig, ConfigError};
use crate::output;

/// The device quickstart creates and runs the agent for.
const DEVICE: &str = "local";
/// How long tetherd may take to listen, and the agent to come online.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How often to look again while waiting for either.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How much of a failed child's log to show.
const LOG_TAIL_LINES: usize = 20;

const EXAMPLES: &str = "\
Examples:
  # Start everything; a second shell can then use `tether` right away
  tether quickstart

  # Elsewhere, on other ports
  tether quickstart --data-dir /tmp/tq --api-port 9443 --mqtt-port 9883

A second run with the same data dir reuses the server, the device and the
agent's credentials. Ctrl-C stops tetherd and the agent.";

/// Run tetherd and an agent for device `local` here, logged in, until Ctrl-C.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Quickstart {
    /// Where tetherd and the agent keep their state [default:
    /// $XDG_DATA_HOME/tether/quickstart, else ~/.local/share/tether/quickstart].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// tetherd's HTTPS API port on 127.0.0.1.
    #[arg(long, default_value_t = 8443, value_name = "PORT")]
    api_port: u16,
    /// tetherd's MQTT port on 127.0.0.1.
    #[arg(long, default_value_t = 8883, value_name = "PORT")]
    mqtt_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    #[error("cannot choose a data dir: neither XDG_DATA_HOME nor HOME is set; pass --data-dir DIR")]
    NoDataDir,
    #[error("cannot create {}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find where tether itself is installed")]
    CurrentExe(#[source] std::io::Error),
    #[error(
        "{name} not found next to tether (looked for {}); build all binaries with `cargo build --release`",
        path.display()
    )]
    BinaryMissing { name: &'static str, path: PathBuf },
    #[error("cannot open the log file {}", path.display())]
    OpenLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {name}")]
    Spawn {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("cannot check on {name}")]
    Wait {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("{name} exited before it was ready ({status}); the end of its log {}:\n{tail}", log.display())]
    ExitedEarly {
        name: &'static str,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "gave up after {}s waiting for {what}; see the logs {} and {}",
        START_DEADLINE.as_secs(),
        logs.0.display(),
        logs.1.display()
    )]
    NotReady {
        what: &'static str,
        logs: (PathBuf, PathBuf),
    },
    #[error("cannot read {}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not tetherd's admin credentials file (username, password)", path.display())]
    ParseCredentials {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("cannot move the stale agent state {} aside to {}", from.display(), to.display())]
    MoveAside {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {step}")]
    Step {
        step: &'static str,
        source: ClientError,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen for Ctrl-C and SIGTERM")]
    Signal(#[source] std::io::Error),
}

impl Quickstart {
    pub fn description(&self) -> String {
        "run the quickstart".to_owned()
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let root = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => default_data_dir(
                std::env::var_os("XDG_DATA_HOME").map(PathBuf::from),
                std::env::var_os("HOME").map(PathBuf::from),
            )
            .ok_or(QuickstartError::NoDataDir)?,
        };
        let layout = Layout::new(root);
        let mut shutdown = Shutdown::listen()?;
        let mut fleet = Fleet::default();
        let started = tokio::select! {
            started = self.start(ctx, &layout, &mut fleet) => Some(started),
            () = shutdown.recv() => None,
        };
        let ready = match started {
            Some(Ok(ready)) => ready,
            Some(Err(err)) => {
                fleet.stop().await;
                return Err(err.into());
            }
            None => {
                fleet.stop().await;
                return Ok(Outcome::Failed {
                    reason: "interrupted before the quickstart was ready".to_owned(),
                });
            }
        };
        output::emit(&ready.summary(ctx, &layout))?;
        let outcome = tokio::select! {
            () = shutdown.recv() => Outcome::Success,
            reason = exited(&mut fleet.tetherd) => Outcome::Failed { reason },
            reason = exited(&mut fleet.agent) => Outcome::Failed { reason },
        };
        fleet.stop().await;
        Ok(outcome)
    }

    async fn start(
        &self,
        ctx: &Context,
        layout: &Layout,
        fleet: &mut Fleet,
    ) -> Result<Ready, QuickstartError> {
        let tetherd_bin = sibling_binary("tetherd")?;
        let agent_bin = sibling_binary("tether-agent")?;
        create_private_dir(&layout.server_dir)?;
        create_private_dir(&layout.agent_dir)?;

        eprintln!("Starting tetherd (log: {})…", layout.tetherd_log.display());
        let tetherd = Process::spawn(
            "tetherd",
            &tetherd_bin,
            vec![
                "--data-dir".into(),
                layout.server_dir.clone().into(),
                "--listen-api".into(),
                format!("127.0.0.1:{}", self.api_port).into(),
                "--listen-mqtt".into(),
                format!("127.0.0.1:{}", self.mqtt_port).into(),
            ],
            Vec::new(),
            &layout.tetherd_log,
        )?;
        let tetherd_pid = tetherd.child.id();
        fleet.tetherd = Some(tetherd);
        let endpoints_file = layout.server_dir.join("endpoints.json");
        let endpoints = wait_for("tetherd to listen", layout, fleet, async || {
            Ok(read_endpoints(&endpoints_file, tetherd_pid))
        })
        .await?;

        let client = log_in(ctx, layout, &endpoints.api).await?;
        let enrollment = self.enrollment(&client, layout).await?;

        eprintln!(
            "Starting tether-agent{} (log: {})…",
            if enrollment.is_some() {
                ", enrolling"
            } else {
                ""
            },
            layout.agent_log.display()
        );
        let mut agent_args: Vec<OsString> =
            vec!["--state-dir".into(), layout.agent_dir.clone().into()];
        if let Some(enrollment) = &enrollment {
            // The token goes by environment (TETHER_ENROLL_TOKEN), not argv,
            // which every local user can read in `ps`.
            agent_args.extend([
                "--server".into(),
                endpoints.api.clone().into(),
                "--ca-sha256".into(),
                enrollment.ca_sha256.clone().into(),
            ]);
        }
        let agent_env = enrollment
            .iter()
            .map(|e| ("TETHER_ENROLL_TOKEN", OsString::from(&e.token)))
            .collect();
        fleet.agent = Some(Process::spawn(
            "tether-agent",
            &agent_bin,
            agent_args,
            agent_env,
            &layout.agent_log,
        )?);
        wait_for(
            "device \"local\" to come online",
            layout,
            fleet,
            async || {
                let device =
                    client
                        .get_device(DEVICE)
                        .await
                        .map_err(|source| QuickstartError::Step {
                            step: "check on device \"local\"",
                            source,
                        })?;
                Ok((device.presence == Presence::Online).then_some(()))
            },
        )
        .await?;
        Ok(Ready { api: endpoints.api })
    }

    /// Makes sure device `local` exists and returns the enrollment the agent
    /// needs, or `None` when its state dir holds credentials already: a
    /// second run reuses them rather than enrolling again.
    async fn enrollment(
        &self,
        client: &ApiClient,
        layout: &Layout,
    ) -> Result<Option<EnrollmentToken>, QuickstartError> {
        let created = match client.get_device(DEVICE).await {
            Ok(_) => {
                eprintln!("Reusing device \"{DEVICE}\".");
                None
            }
            Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => {
                let created = client
                    .create_device(&CreateDevice {
                        name: DEVICE.to_owned(),
                        labels: Default::default(),
                        display_name: None,
                    })
                    .await
                    .map_err(|source| QuickstartError::Step {
                        step: "create device \"local\"",
                        source,
                    })?;
                eprintln!("Created device \"{DEVICE}\".");
                Some(created.enrollment)
            }
            Err(source) => {
                return Err(QuickstartError::Step {
                    step: "look up device \"local\"",
                    source,
                });
            }
        };
        // The agent writes agent.toml last: its presence means enrolled.
        let has_credentials = layout.agent_dir.join("agent.toml").exists();
        match (created, has_credentials) {
            (None, true) => Ok(None),
            (Some(enrollment), true) => {
                // A new device (tetherd's data was reset) cannot use the old
                // agent's certificate; keep it for inspection, start afresh.
                layout.move_agent_state_aside()?;
                Ok(Some(enrollment))
            }
            (Some(enrollment), false) => Ok(Some(enrollment)),
            (None, false) => client
                .new_enrollment_token(DEVICE, None)
                .await
                .map(Some)
                .map_err(|source| QuickstartError::Step {
                    step: "issue an enrollment token for device \"local\"",
                    source,
                }),
        }
    }
}

/// Logs in as tetherd's admin and saves the session as the CLI config, so
/// that `tether` in another shell talks to this tetherd.
async fn log_in(ctx: &Context, layout: &Layout, api: &str) -> Result<ApiClient, QuickstartError> {
    let credentials_file = layout.credentials_file();
    let text =
        std::fs::read_to_string(&credentials_file).map_err(|source| QuickstartError::ReadFile {
            path: credentials_file.clone(),
            source,
        })?;
    let credentials: AdminCredentials =
        toml::from_str(&text).map_err(|source| QuickstartError::ParseCredentials {
            path: credentials_file.clone(),
            source,
        })?;
    let ca_file = layout.server_dir.join("ca.pem");
    let ca_pem = std::fs::read(&ca_file).map_err(|source| QuickstartError::ReadFile {
        path: ca_file.clone(),
        source,
    })?;
    let step = |step| move |source| QuickstartError::Step { step, source };
    let session = ApiClient::new(api, &ca_pem, None)
        .map_err(step("connect to tetherd"))?
        .login(&LoginRequest {
            username: credentials.username,
            password: credentials.password,
        })
        .await
        .map_err(step("log in to tetherd as its admin"))?;
    CliConfig::save_session(&ctx.config_path, api, &ca_pem, &session.token)?;
    ApiClient::new(api, &ca_pem, Some(session.token)).map_err(step("connect to tetherd"))
}

/// `admin-credentials.toml` in tetherd's data dir.
#[derive(Deserialize)]
struct AdminCredentials {
    username: String,
    password: String,
}

/// `endpoints.json` in tetherd's data dir.
#[derive(Debug, Deserialize)]
struct Endpoints {
    api: String,
    pid: u32,
}

/// The endpoints of the tetherd with `pid`, once it has written them. A file
/// from an earlier run (another pid), or one being written, is not yet an answer.
fn read_endpoints(path: &Path, pid: Option<u32>) -> Option<Endpoints> {
    let text = std::fs::read_to_string(path).ok()?;
    let endpoints: Endpoints = serde_json::from_str(&text).ok()?;
    (Some(endpoints.pid) == pid).then_some(endpoints)
}

/// Polls `probe` until it gives an answer, a child exits, or the deadline passes.
async fn wait_for<T>(
    what: &'static str,
    layout: &Layout,
    fleet: &mut Fleet,
    mut probe: impl AsyncFnMut() -> Result<Option<T>, QuickstartError>,
) -> Result<T, QuickstartError> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        fleet.check_running()?;
        if let Some(answer) = probe().await? {
            return Ok(answer);
        }
        if Instant::now() >= deadline {
            return Err(QuickstartError::NotReady {
                what,
                logs: (layout.tetherd_log.clone(), layout.agent_log.clone()),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Where everything of a quickstart lives.
#[derive(Debug, Clone)]
struct Layout {
    root: PathBuf,
    server_dir: PathBuf,
    agent_dir: PathBuf,
    tetherd_log: PathBuf,
    agent_log: PathBuf,
}

impl Layout {
    fn new(root: PathBuf) -> Self {
        Layout {
            server_dir: root.join("server"),
            agent_dir: root.join("agent"),
            tetherd_log: root.join("tetherd.log"),
            agent_log: root.join("tether-agent.log"),
            root,
        }
    }

    fn credentials_file(&self) -> PathBuf {
        self.server_dir.join("admin-credentials.toml")
    }

    fn move_agent_state_aside(&self) -> Result<(), QuickstartError> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
        let to = self.root.join(format!("agent.stale-{stamp}"));
        std::fs::rename(&self.agent_dir, &to).map_err(|source| QuickstartError::MoveAside {
            from: self.agent_dir.clone(),
            to: to.clone(),
            source,
        })?;
        eprintln!(
            "The agent's old credentials belong to an earlier tetherd; moved them to {}.",
            to.display()
        );
        create_private_dir(&self.agent_dir)
    }
}

/// `$XDG_DATA_HOME/tether/quickstart`, else `~/.local/share/tether/quickstart`.
fn default_data_dir(xdg_data_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    // The XDG spec says a relative XDG_DATA_HOME is to be ignored.
    let base = match (xdg_data_home, home) {
        (Some(xdg), _) if xdg.is_absolute() => xdg,
        (_, Some(home)) => home.join(".local").join("share"),
        _ => return None,
    };
    Some(base.join("tether").join("quickstart"))
}

fn sibling_binary(name: &'static str) -> Result<PathBuf, QuickstartError> {
    let path = std::env::current_exe()
        .map_err(QuickstartError::CurrentExe)?
        .with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(QuickstartError::BinaryMissing { name, path })
    }
}

fn create_private_dir(path: &Path) -> Result<(), QuickstartError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| QuickstartError::CreateDir {
            path: path.to_owned(),
            source,
        })
}

/// What a ready quickstart tells its user.
struct Ready {
    api: String,
}

impl Ready {
    fn summary(&self, ctx: &Context, layout: &Layout) -> String {
        format!(
            "\n\
             tether quickstart is running.\n\n\
             \x20 API:               {api}\n\
             \x20 web console:       {api}/ (log in as admin)\n\
             \x20 admin credentials: {credentials}\n\
             \x20 CLI config:        {config}\n\
             \x20 logs:              {tetherd_log}, {agent_log}\n\n\
             Try, in another shell:\n\
             \x20 tether devices list\n\
             \x20 tether actions run local get-node-ip --wait\n\
             \x20 tether actions run local run-stats --input '{{\"interval\":5}}' --wait\n\
             \x20 tether metrics local\n\n\
             Press Ctrl-C to stop tetherd and the agent.",
            api = self.api,
            credentials = layout.credentials_file().display(),
            config = ctx.config_path.display(),
            tetherd_log = layout.tetherd_log.display(),
            agent_log = layout.agent_log.display(),
        )
    }
}

/// Ctrl-C (SIGINT), SIGTERM, or the terminal going away (SIGHUP). Listening
/// is set up before the children start, so that none of them can leave the
/// children running in their own process groups.
struct Shutdown {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Shutdown {
    fn listen() -> Result<Self, QuickstartError> {
        Ok(Shutdown {
            interrupt: signal(SignalKind::interrupt()).map_err(QuickstartError::Signal)?,
            terminate: signal(SignalKind::terminate()).map_err(QuickstartError::Signal)?,
            hangup: signal(SignalKind::hangup()).map_err(QuickstartError::Signal)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
            _ = self.hangup.recv() => {},
        }
        eprintln!("\nStopping…");
    }
}

/// tetherd and the agent, as far as they have been started.
#[derive(Default)]
struct Fleet {
    tetherd: Option<Process>,
    agent: Option<Process>,
}

impl Fleet {
    fn check_running(&mut self) -> Result<(), QuickstartError> {
        for process in [&mut self.tetherd, &mut self.agent].into_iter().flatten() {
            process.check_running()?;
        }
        Ok(())
    }

    /// The agent first, so that it can still tell tetherd it goes offline.
    async fn stop(&mut self) {
        for process in [&mut self.agent, &mut self.tetherd].into_iter().flatten() {
            process.stop().await;
        }
    }
}

/// Why a running child stopped on its own; never resolves for one not started.
async fn exited(process: &mut Option<Process>) -> String {
    let Some(process) = process else {
        return std::future::pending().await;
    };
    let status = match process.child.wait().await {
        Ok(status) => status.to_string(),
        Err(err) => format!("its status is unknown: {err}"),
    };
    format!(
        "{} exited unexpectedly ({status}); the end of its log {}:\n{}",
        process.name,
        process.log.display(),
        log_tail(&process.log)
    )
}

/// A child process with its output in a log file.
struct Process {
    name: &'static str,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Process {
    fn spawn(
        name: &'static str,
        program: &Path,
        args: Vec<OsString>,
        envs: Vec<(&'static str, OsString)>,
        log: &Path,
    ) -> Result<Self, QuickstartError> {
        let open_err = |source| QuickstartError::OpenLog {
            path: log.to_owned(),
            source,
        };
        // tetherd prints the admin password at first start: the log is as
        // private as the credentials file.
        let stdout = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)
            .map_err(open_err)?;
        let stderr = stdout.try_clone().map_err(open_err)?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group: Ctrl-C in the terminal reaches only
            // us, and we stop the children in order (agent, then tetherd).
            .process_group(0)
            // Should we die without stopping them, they die with us.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| QuickstartError::Spawn { name, source })?;
        Ok(Process {
            name,
            child,
            log: log.to_owned(),
        })
    }

    fn check_running(&mut self) -> Result<(), QuickstartError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(QuickstartError::ExitedEarly {
                name: self.name,
                status,
                log: self.log.clone(),
                tail: log_tail(&self.log),
            }),
            Err(source) => Err(QuickstartError::Wait {
                name: self.name,
                source,
            }),
        }
    }

    /// SIGTERM, then up to `STOP_GRACE` for a clean exit, then SIGKILL.
    async fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = self.child.id().and_then(|id| i32::try_from(id).ok());
        if let Some(pid) = pid
            && let Err(err) = kill(Pid::from_raw(pid), Signal::SIGTERM)
        {
            tracing::warn!(name = self.name, %err, "cannot send SIGTERM");
        }
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(Ok(status)) => eprintln!("{} stopped ({status}).", self.name),
            Ok(Err(err)) => eprintln!("{} may still run: cannot wait for it: {err}", self.name),
            Err(_) => {
                eprintln!(
                    "{} did not stop within {}s; killing it.",
                    self.name,
                    STOP_GRACE.as_secs()
                );
                if let Err(err) = self.child.kill().await {
                    eprintln!("{} may still run: cannot kill it: {err}", self.name);
                }
            }
        }
    }
}

/// The last lines of a log, indented, for an error message.
fn log_tail(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return "  (the log cannot be read)".to_owned();
    };
    let mut lines: Vec<&str> = text.lines().collect();
    // With RUST_BACKTRACE set, an anyhow error ends in a backtrace that
    // would push the error itself out of the tail; the log keeps it all.
    if let Some(start) = lines.iter().rposition(|l| *l == "Stack backtrace:") {
        lines.truncate(start);
    }
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    if tail.is_empty() {
        return "  (the log is empty)".to_owned();
    }
    tail.iter()
        .map(|line| format!("  {line}").trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dir_follows_xdg() {
        assert_eq!(
            default_data_dir(Some("/xdg".into()), Some("/home/u".into())),
            Some(PathBuf::from("/xdg/tether/quickstart"))
        );
        assert_eq!(
            default_data_dir(None, Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.local/share/tether/quickstart"))
        );
        assert_eq!(default_data_dir(Some("rel".into()), None), None);
    }

    #[test]
    fn endpoints_count_only_when_written_by_this_tetherd() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("endpoints.json");
        assert!(read_endpoints(&path, Some(7)).is_none(), "not written yet");
        std::fs::write(
            &path,
            r#"{"api":"https://127.0.0.1:8443","mqtt":"mqtts://127.0.0.1:8883","pid":7}"#,
        )
        .expect("writes");
        let endpoints = read_endpoints(&path, Some(7)).expect("this tetherd's");
        assert_eq!(endpoints.api, "https://127.0.0.1:8443");
        assert!(read_endpoints(&path, Some(8)).is_none(), "an earlier run's");
        std::fs::write(&path, r#"{"api":"#).expect("writes");
        assert!(read_endpoints(&path, Some(7)).is_none(), "half written");
    }

    #[test]
    fn a_log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.log");
        assert_eq!(log_tail(&path), "  (the log cannot be read)");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("writes");
        let tail = log_tail(&path);
        assert!(tail.starts_with("  line 11\n"), "{tail}");
        assert!(tail.ends_with("  line 30"), "{tail}");
        std::fs::write(&path, "Error: port in use\n\nStack backtrace:\n  0: main\n")
            .expect("writes");
        assert_eq!(log_tail(&path), "  Error: port in use\n");
    }

    #[test]
    fn the_summary_names_the_api_the_credentials_and_what_to_try() {
        let layout = Layout::new("/q".into());
        let ctx = Context {
            output: output::OutputFormat::Table,
            config_path: "/c/config.toml".into(),
            server_override: None,
            ca_file_override: None,
            api_key: None,
        };
        let text = Ready {
            api: "https://127.0.0.1:8443".into(),
        }
        .summary(&ctx, &layout);
        for expected in [
            "  API:               https://127.0.0.1:8443\n",
            "  web console:       https://127.0.0.1:8443/ (log in as admin)\n",
            "/q/server/admin-credentials.toml",
            "/c/config.toml",
            "  tether devices list\n",
            "  tether actions run local get-node-ip --wait\n",
            "  tether actions run local run-stats --input '{\"interval\":5}' --wait\n",
            "  tether metrics local\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
    }
}
