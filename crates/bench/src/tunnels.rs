//! `--mode tunnels`: a real tether-agent and the real `tether` CLI.
//!
//! - Forward throughput: one connection downloading `--megabytes` from a
//!   server on loopback, directly, through `tether forward-port`, and
//!   through OpenSSH's `ssh -L` to a local sshd, rounds interleaved so the
//!   three share the machine's noise; reported as ratios.
//! - `tether exec` of the same amount to /dev/null: its rate, and tetherd's
//!   and the agent's RSS before and at their peak while it streams.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest as _, Sha256};
use tether_testkit::{Agent, Database, Tetherd, binaries};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::{mib, rss_kib};

pub struct Settings {
    pub database: Database,
    /// Bytes each transfer carries, in MiB.
    pub megabytes: u64,
    /// Rounds of the three forward transfers.
    pub rounds: usize,
}

const DEVICE: &str = "bench-tunnel";

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let bytes = settings.megabytes * 1024 * 1024;
    let source = serve_bytes(bytes).await?;
    let tetherd = Tetherd::start(settings.database).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_online(&tetherd, &admin, DEVICE).await?;
    let cli = Cli::login(&tetherd).await?;

    let forward_port = tether_testkit::free_port()?;
    let mut forward = cli
        .command(&[
            "forward-port",
            DEVICE,
            &forward_port.to_string(),
            &format!("tcp://127.0.0.1:{source}/"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting tether forward-port")?;
    wait_accepting(forward_port).await?;

    let sshd = tether_testkit::sshd::Sshd::start().await?;
    let ssh_port = tether_testkit::free_port()?;
    let mut ssh = ssh_forward(&sshd, ssh_port, source)?;
    wait_accepting(ssh_port).await?;

    println!(
        "tether-bench tunnels: {} MiB per transfer, {} rounds, tetherd on {:?}",
        settings.megabytes, settings.rounds, settings.database
    );
    let mut rates: [Vec<f64>; 3] = Default::default();
    for _ in 0..settings.rounds {
        for (index, port) in [source, forward_port, ssh_port].into_iter().enumerate() {
            let started = Instant::now();
            let received = download(port).await?;
            if received != bytes {
                bail!("port {port} gave {received} of {bytes} bytes");
            }
            rates[index].push(bytes as f64 / started.elapsed().as_secs_f64() / 1_048_576.0);
        }
    }
    let [direct, tether, openssh] = rates.map(median);
    println!("  forward, one connection (median MiB/s):");
    println!("    direct loopback TCP   {direct:>8.1}");
    println!("    tether forward-port   {tether:>8.1}");
    println!("    ssh -L (OpenSSH)      {openssh:>8.1}");
    println!(
        "    tether / ssh -L = {:.2}, tether / direct = {:.3}",
        tether / openssh,
        tether / direct
    );
    let _ = forward.kill().await;
    let _ = ssh.kill().await;

    exec_stream(&cli, &tetherd, &agent, settings.megabytes).await
}

/// `tether exec DEVICE -- head -c N /dev/zero` into /dev/null, sampling
/// tetherd's and the agent's RSS while it runs.
async fn exec_stream(
    cli: &Cli,
    tetherd: &Tetherd,
    agent: &Agent,
    megabytes: u64,
) -> anyhow::Result<()> {
    let tetherd_pid = tetherd.pid().context("tetherd runs")?;
    let agent_pid = agent.pid().context("the agent runs")?;
    let before = (rss_kib(tetherd_pid)?, rss_kib(agent_pid)?);
    let started = Instant::now();
    let mut exec = cli
        .command(&[
            "exec",
            DEVICE,
            "--",
            "head",
            "-c",
            &format!("{megabytes}M"),
            "/dev/zero",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tether exec")?;
    let mut peak = before;
    let status = loop {
        if let Some(status) = exec.try_wait()? {
            break status;
        }
        peak.0 = peak.0.max(rss_kib(tetherd_pid)?);
        peak.1 = peak.1.max(rss_kib(agent_pid)?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("tether exec failed: {status}");
    }
    println!("  tether exec of {megabytes} MiB to /dev/null:");
    println!(
        "    {:.1} MiB/s; tetherd RSS {:.1} → peak {:.1} MiB, agent RSS {:.1} → peak {:.1} MiB",
        megabytes as f64 / elapsed.as_secs_f64(),
        mib(before.0),
        mib(peak.0),
        mib(before.1),
        mib(peak.1)
    );
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// A server that sends `bytes` to each connection and closes it.
async fn serve_bytes(bytes: u64) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![0x5a; 256 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// Reads a connection to `port` to its end; the bytes read.
async fn download(port: u16) -> anyhow::Result<u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut buffer = vec![0; 256 * 1024];
    let mut total = 0;
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(total);
        }
        total += read as u64;
    }
}

async fn wait_accepting(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `ssh -N -L` from `local` through the fixture's sshd to `target`.
fn ssh_forward(
    sshd: &tether_testkit::sshd::Sshd,
    local: u16,
    target: u16,
) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new("ssh")
        .args([
            "-N",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .arg("-i")
        .arg(sshd.client_key_path())
        .args(["-p", &sshd.port.to_string()])
        .args(["-L", &format!("127.0.0.1:{local}:127.0.0.1:{target}")])
        .arg("root@127.0.0.1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting ssh -L (is openssh-client installed?)")
}

/// The `tether` CLI logged in to the bench's tetherd, with its own config.
struct Cli {
    program: PathBuf,
    dir: tempfile::TempDir,
}

impl Cli {
    async fn login(tetherd: &Tetherd) -> anyhow::Result<Self> {
        let cli = Cli {
            program: binaries::binary("tether")?,
            dir: tempfile::tempdir().context("creating the CLI's config dir")?,
        };
        let ca = rustls_pemfile::certs(&mut tetherd.ca_pem())
            .next()
            .context("tetherd's CA file holds no certificate")??;
        let fingerprint = hex::encode(Sha256::digest(&ca));
        let mut login = cli
            .command(&[
                "login",
                &tetherd.api_url,
                "--password-stdin",
                "--ca-sha256",
                &fingerprint,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting tether login")?;
        let mut stdin = login.stdin.take().context("stdin is piped")?;
        stdin
            .write_all(format!("{}\n", tetherd.admin_password()).as_bytes())
            .await?;
        drop(stdin);
        if !login.wait().await?.success() {
            bail!("tether login failed");
        }
        Ok(cli)
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command.args(args).env("TETHER_CLI_CONFIG", self.config());
        command
    }
}
