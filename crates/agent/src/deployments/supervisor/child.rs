//! One supervised child: spawned in a process group of its own (so a stop
//! reaches whatever it started), its output forwarded to the device's
//! logs, its health checked, and its exit reported. A stop sends SIGTERM
//! to the group and SIGKILL after [`STOP_GRACE`]; when the child exits,
//! what is left of its group is killed.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tether_proto::desired::process::{HealthCheck, ProcessSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::machine::Exit;
use crate::logs::Sink;
use crate::logs::process::{Output, ProcessTag, forward};

/// How long a stopped child has between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often an unhealthy-yet process is checked until it first passes.
const STARTING_CHECK_EVERY: Duration = Duration::from_secs(1);
/// `PATH` of a process that does not inherit the agent's environment.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a child tells the runtime.
#[derive(Debug)]
pub enum ChildEvent {
    Exited(Exit),
    Checked { passed: bool, detail: String },
}

/// Names a child's events.
#[derive(Debug, Clone)]
pub struct ChildKey {
    pub deployment: String,
    pub process: String,
    pub generation: u64,
}

/// A running child: dropping it (or [`Child::stop`]) stops its group.
pub struct Child {
    stop: Option<oneshot::Sender<()>>,
}

impl Child {
    /// Asks the child to stop; its exit is reported as usual.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The program a process runs: its artifact of that name, else the path.
pub fn program(spec: &ProcessSpec, dir: &Path) -> PathBuf {
    if spec.artifacts.iter().any(|a| a.name == spec.exec_cmd) {
        dir.join(&spec.exec_cmd)
    } else {
        PathBuf::from(&spec.exec_cmd)
    }
}

/// Spawns the process in `dir`; its events go to `events`. An error means
/// it could not be started.
pub fn spawn(
    spec: &ProcessSpec,
    dir: &Path,
    key: ChildKey,
    sink: Arc<Sink>,
    events: mpsc::UnboundedSender<(ChildKey, ChildEvent)>,
) -> std::io::Result<Child> {
    let mut command = tokio::process::Command::new(program(spec, dir));
    command
        .args(&spec.exec_args)
        .current_dir(dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if !spec.inherit_env {
        command.env_clear().env("PATH", DEFAULT_PATH);
    }
    command.envs(&spec.env);
    let mut child = command.spawn()?;
    let group = child.id().and_then(|id| Pid::from_raw(id as i32));
    let marker = dir.join(GROUP_FILE);
    if let Some(group) = group {
        // Best effort: without it, only an agent killed outright leaves
        // this child behind.
        let _ = std::fs::write(&marker, group.as_raw_nonzero().to_string());
    }
    let tag = ProcessTag {
        deployment: key.deployment.clone(),
        process: key.process.clone(),
    };
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward(stdout, Output::Stdout, tag.clone(), sink.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward(stderr, Output::Stderr, tag, sink));
    }
    let health = spec.health_check.clone().map(|check| {
        let events = events.clone();
        let key = key.clone();
        let dir = dir.to_owned();
        AbortOnDrop(tokio::spawn(async move {
            check_health(check, &dir, |passed, detail| {
                let _ = events.send((key.clone(), ChildEvent::Checked { passed, detail }));
            })
            .await;
        }))
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            _ = stop_rx => {
                signal(group, Signal::TERM);
                match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        signal(group, Signal::KILL);
                        child.wait().await
                    }
                }
            }
        };
        drop(health);
        // Whatever it left behind in its group goes with it.
        signal(group, Signal::KILL);
        let _ = std::fs::remove_file(&marker);
        let exit = match status {
            Ok(status) => describe(status),
            Err(e) => Exit {
                success: false,
                description: format!("cannot wait for it: {e}"),
            },
        };
        let _ = events.send((key, ChildEvent::Exited(exit)));
    });
    Ok(Child {
        stop: Some(stop_tx),
    })
}

/// The file in a process's directory naming its running child's process
/// group, removed when the child exits.
pub const GROUP_FILE: &str = ".group";

/// Kills the process groups an agent that was killed outright left behind
/// under `root` (`DEPLOYMENT/PROCESS/.group`), so a restarted agent does not
/// run them twice. A group is killed only if its leader still runs in that
/// directory: a pid used again by something else is left alone.
pub fn kill_leftovers(root: &Path) {
    let Ok(deployments) = std::fs::read_dir(root) else {
        return;
    };
    for dir in deployments
        .flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|processes| processes.flatten().map(|p| p.path()))
    {
        let marker = dir.join(GROUP_FILE);
        let Some(group) = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let cwd = std::fs::read_link(format!("/proc/{group}/cwd")).ok();
        if cwd.is_some_and(|cwd| cwd == dir) {
            tracing::warn!(
                dir = %dir.display(),
                group,
                "killing a process group left from before the agent restarted"
            );
            signal(Pid::from_raw(group), Signal::KILL);
        }
        let _ = std::fs::remove_file(&marker);
    }
}

fn signal(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        // ESRCH: the group is gone already.
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

fn describe(status: std::process::ExitStatus) -> Exit {
    let description = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    };
    Exit {
        success: status.success(),
        description,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks every second until the first pass, then every interval; reports each result.
async fn check_health(check: HealthCheck, dir: &Path, mut report: impl FnMut(bool, String)) {
    let interval = Duration::from_secs(check.interval_seconds.into());
    let timeout = Duration::from_secs(check.timeout_seconds.into());
    let mut passed_once = false;
    loop {
        let wait = if passed_once {
            interval
        } else {
            STARTING_CHECK_EVERY.min(interval)
        };
        tokio::time::sleep(wait).await;
        let result = match tokio::time::timeout(timeout, run_check(&check, dir)).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {}s", check.timeout_seconds)),
        };
        passed_once |= result.is_ok();
        match result {
            Ok(()) => report(true, String::new()),
            Err(detail) => report(false, detail),
        }
    }
}

async fn run_check(check: &HealthCheck, dir: &Path) -> Result<(), String> {
    if let Some(command) = &check.command {
        let Some((program, args)) = command.split_first() else {
            return Err("no command".into());
        };
        let status = tokio::process::Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        return if status.success() {
            Ok(())
        } else {
            Err(format!("{program} {}", describe(status).description))
        };
    }
    if let Some(url) = &check.http_get {
        return http_get(url).await;
    }
    Err("no check".into())
}

/// A GET on the device itself (validated: `http://127.0.0.1:PORT/PATH` or
/// `localhost`); a 2xx answer passes.
async fn http_get(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url} is not http://"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{url} has no port"))?;
    let port: u16 = port.parse().map_err(|_| format!("{url} has no port"))?;
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]).await {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("GET {url}: {e}")),
        }
        if head[..read].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let status = line.split_whitespace().nth(1).unwrap_or_default();
    if status.starts_with('2') && status.len() == 3 {
        Ok(())
    } else {
        Err(format!(
            "GET {url} answered {:?}",
            line.lines().next().unwrap_or_default()
        ))
    }
}
