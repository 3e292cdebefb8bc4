//! A real `tether-agent` process with its own state dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::api::ApiClient;
use crate::binaries::binary;
use crate::tetherd::Tetherd;
use crate::wait::wait_until;

pub struct Agent {
    pub name: String,
    child: Option<Child>,
    dir: TempDir,
    /// Extra environment of the agent process, e.g. libfaketime's.
    env: Vec<(String, String)>,
    /// The enrollment it was started with, and tetherd's API URL.
    enrollment: Option<(Value, String)>,
    /// The network namespace it runs in (`ip netns exec`), if not the host's.
    netns: Option<String>,
    /// The executable to run instead of the build's (a stamped copy that
    /// may update itself).
    executable: Option<PathBuf>,
}

impl Agent {
    /// Registers device `name` through the API and enrolls a new agent for
    /// it, without waiting for it to come online.
    pub async fn enroll(tetherd: &Tetherd, admin: &ApiClient, name: &str) -> anyhow::Result<Self> {
        Self::enroll_with_env(tetherd, admin, name, &[]).await
    }

    /// Like [`Agent::enroll`], with extra environment variables for the
    /// agent process (now and on every restart), e.g. [`faketime_env`].
    pub async fn enroll_with_env(
        tetherd: &Tetherd,
        admin: &ApiClient,
        name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let created = admin
            .post("/api/v1/devices", json!({"name": name}))
            .await?
            .expect_status(201)?;
        Self::start_enrolling(tetherd, name, &created["enrollment"], env)
    }

    /// Starts an agent that enrolls as the existing device `name` with
    /// `enrollment` (as `POST /api/v1/devices` answered it), with extra
    /// environment variables.
    pub fn start_enrolling(
        tetherd: &Tetherd,
        name: &str,
        enrollment: &Value,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut agent = Self::new(name)?;
        agent.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        agent.spawn(Some(enrollment), &tetherd.api_url)?;
        agent.enrollment = Some((enrollment.clone(), tetherd.api_url.clone()));
        Ok(agent)
    }

    /// Like [`Agent::enroll_with_env`], the agent running inside network
    /// namespace `netns` (a [`crate::netns::NetNs`]), now and on every
    /// restart.
    pub async fn enroll_in_netns(
        tetherd: &Tetherd,
        admin: &ApiClient,
        name: &str,
        netns: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let created = admin
            .post("/api/v1/devices", json!({"name": name}))
            .await?
            .expect_status(201)?;
        let mut agent = Self::new(name)?;
        agent.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        agent.netns = Some(netns.to_owned());
        agent.spawn(Some(&created["enrollment"]), &tetherd.api_url)?;
        agent.enrollment = Some((created["enrollment"].clone(), tetherd.api_url.clone()));
        Ok(agent)
    }

    /// Like [`Agent::enroll_with_env`] for the device `device` (the body
    /// of `POST /api/v1/devices`: `{"name", "labels"}`), running
    /// `executable` (e.g. from [`crate::binaries::agent_install`]) instead
    /// of the build's binary.
    pub async fn enroll_from(
        tetherd: &Tetherd,
        admin: &ApiClient,
        device: Value,
        executable: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let name = device["name"]
            .as_str()
            .context("the device has a name")?
            .to_owned();
        let created = admin
            .post("/api/v1/devices", device)
            .await?
            .expect_status(201)?;
        let mut agent = Self::new(&name)?;
        agent.executable = Some(executable.to_owned());
        agent.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        agent.spawn(Some(&created["enrollment"]), &tetherd.api_url)?;
        agent.enrollment = Some((created["enrollment"].clone(), tetherd.api_url.clone()));
        Ok(agent)
    }

    /// Enrolls and waits until the device is online.
    pub async fn enroll_online(
        tetherd: &Tetherd,
        admin: &ApiClient,
        name: &str,
    ) -> anyhow::Result<Self> {
        let agent = Self::enroll(tetherd, admin, name).await?;
        agent.wait_presence(admin, "online").await?;
        Ok(agent)
    }

    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tether-agent-")
            .tempdir()
            .context("creating the agent dir")?;
        Ok(Self {
            name: name.to_owned(),
            child: None,
            dir,
            env: Vec::new(),
            enrollment: None,
            netns: None,
            executable: None,
        })
    }

    /// An agent not started yet that finds its credentials by itself
    /// (`env`: a provisioning key, a boot bundle, a facts file), in a
    /// state dir of its own; `name` only names it in test output.
    pub fn unenrolled(name: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut agent = Self::new(name)?;
        agent.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Ok(agent)
    }

    /// Replaces the agent's environment for its next start (other
    /// hardware under the same media, in the provisioning tests).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// The device the agent became, from its `agent.toml`, once it has
    /// credentials: waits up to 30 s for them.
    pub async fn wait_device(&self) -> anyhow::Result<String> {
        let path = self.state_file("agent.toml");
        wait_until(
            &format!("agent {} to get its credentials", self.name),
            Duration::from_secs(30),
            || {
                let path = path.clone();
                async move {
                    let Ok(text) = std::fs::read_to_string(&path) else {
                        return Ok(None);
                    };
                    Ok(text.lines().find_map(|line| {
                        line.strip_prefix("device = \"")
                            .and_then(|rest| rest.strip_suffix('"'))
                            .map(str::to_owned)
                    }))
                }
            },
        )
        .await
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self, enrollment: Option<&Value>, api_url: &str) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("agent {} is already running", self.name);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the agent log")?;
        let agent = match &self.executable {
            Some(executable) => executable.clone(),
            None => binary("tether-agent")?,
        };
        // `ip netns exec` execs the agent: the child's pid is the agent's.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(agent);
                command
            }
            None => Command::new(agent),
        };
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--log-level", "debug"])
            .env_remove("TETHER_SERVER")
            .env_remove("TETHER_ENROLL_TOKEN")
            .env_remove("TETHER_ENROLL_TOKEN_FILE")
            .env_remove("TETHER_CA_SHA256")
            // Not under systemd, whatever runs the tests: an update guard
            // restarts the restored agent itself.
            .env_remove("INVOCATION_ID")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the log handle")?)
            .stderr(log);
        if let Some(enrollment) = enrollment {
            command
                .args(["--server", api_url])
                .arg("--enroll-token")
                .arg(
                    enrollment["token"]
                        .as_str()
                        .context("enrollment has a token")?,
                )
                .arg("--ca-sha256")
                .arg(
                    enrollment["caSha256"]
                        .as_str()
                        .context("enrollment has caSha256")?,
                );
        }
        self.child = Some(command.spawn().context("spawning tether-agent")?);
        Ok(())
    }

    /// Starts the agent again from its state dir (no enrollment).
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.spawn(None, "")
    }

    /// Starts the agent again as a rescheduled pod does: an empty state
    /// directory (an emptyDir) and the enrollment flags of its first start,
    /// whose token is spent by now.
    pub fn start_with_empty_state(&mut self) -> anyhow::Result<()> {
        let (enrollment, api_url) = self
            .enrollment
            .clone()
            .context("the agent was not started with an enrollment")?;
        std::fs::remove_dir_all(self.state_dir()).context("emptying the state dir")?;
        self.spawn(Some(&enrollment), &api_url)
    }

    /// SIGKILL: no clean disconnect, no offline message but the MQTT will.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit.
    pub async fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("agent not running")?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("sending SIGTERM")?;
        wait_until(
            "the agent to exit after SIGTERM",
            Duration::from_secs(15),
            || {
                let status = child.try_wait();
                async move { Ok(status?) }
            },
        )
        .await
    }

    /// Whether the process has exited, and how.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub async fn wait_presence(&self, admin: &ApiClient, presence: &str) -> anyhow::Result<()> {
        admin
            .wait_presence(&self.name, presence)
            .await
            .with_context(|| format!("agent log:\n{}", self.log()))
    }

    pub fn state_file(&self, name: &str) -> PathBuf {
        self.state_dir().join(name)
    }

    /// The agent's local API socket (the default: in its state dir).
    pub fn local_api_socket(&self) -> PathBuf {
        self.state_file("api.sock")
    }
}

/// Sends one request to a local API socket, as `curl --unix-socket` does;
/// returns the status and the JSON body.
pub async fn local_api(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line: {response}"))?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of head: {response}"))?;
    let body = serde_json::from_str(body).with_context(|| format!("not JSON: {response}"))?;
    Ok((status, body))
}

/// POSTs `body` to a local API socket at `path`; expects 200 and returns
/// the answer.
pub async fn post_local(socket: &Path, path: &str, body: &str) -> anyhow::Result<Value> {
    let (status, answer) = local_api(socket, "POST", path, body).await?;
    anyhow::ensure!(status == 200, "POST {path}: {status} {answer}");
    Ok(answer)
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        self.kill_update_guard();
    }
}

impl Agent {
    /// Ends the agent's update guard, or the agent it restored (which runs
    /// as the guard's process outside systemd): not a child of the test.
    /// Only a process whose command line names this agent's state dir.
    pub fn kill_update_guard(&self) {
        let Ok(pid) = std::fs::read_to_string(self.state_file("self-update/guard.pid")) else {
            return;
        };
        let pid = pid.trim();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let state_dir = self.state_dir();
        let names_state_dir = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == state_dir.as_os_str().as_encoded_bytes());
        if names_state_dir {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

/// Makes a fresh state dir for a device's certificate files, for tests that
/// talk MQTT with third-party clients.
pub fn copy_credentials(agent: &Agent, to: &Path) -> anyhow::Result<()> {
    for file in ["cert.pem", "key.pem", "ca.pem"] {
        std::fs::copy(agent.state_file(file), to.join(file))
            .with_context(|| format!("copying {file} of {}", agent.name))?;
    }
    Ok(())
}

/// The environment that runs a process with its wall clock shifted by
/// `offset` (libfaketime syntax, e.g. `+1d`): libfaketime preloaded directly
/// rather than through the `faketime` command, which forks, so the agent's
/// pid stays its own. The monotonic clock is left alone.
pub fn faketime_env(offset: &str) -> anyhow::Result<Vec<(String, String)>> {
    let library = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("faketime/libfaketime.so.1"))
        .find(|path| path.is_file())
        .context("libfaketime is not installed: apt-get install faketime (scripts/test does)")?;
    Ok(vec![
        ("LD_PRELOAD".to_owned(), library.display().to_string()),
        ("FAKETIME".to_owned(), offset.to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
    ])
}
