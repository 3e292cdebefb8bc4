//! `--mode keystrokes`: keystroke echo latency of `tether ssh`. The real
//! CLI runs in a terminal of its own here (as a user's would), with a
//! shell tunnel through tetherd to a real agent whose terminal runs `cat`
//! raw; one byte is typed at a time and timed until it comes back on the
//! CLI's terminal.

use std::time::{Duration, Instant};

use anyhow::Context;
use tether_agent::terminal::{self, Command, Size};
use tether_testkit::{Agent, Database, Tetherd};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{ms, percentile};

/// How long one echo may take before the run is called failed.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Settings {
    pub database: Database,
    /// Keystrokes timed.
    pub keystrokes: usize,
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(settings.database).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_online(&tetherd, &admin, "bench-ssh").await?;
    let tether = tether_testkit::binaries::binary("tether")?;
    let dir = tempfile::tempdir().context("creating a dir for the CLI's config")?;
    let config = dir.path().join("config.toml");
    let mut login = tokio::process::Command::new(&tether)
        .args(["login", &tetherd.api_url, "--password-stdin", "--ca-file"])
        .arg(tetherd.ca_path())
        .env("TETHER_CLI_CONFIG", &config)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("starting tether login")?;
    let mut password = login.stdin.take().context("login's stdin")?;
    password
        .write_all(format!("{}\n", tetherd.admin_password()).as_bytes())
        .await?;
    drop(password);
    anyhow::ensure!(login.wait().await?.success(), "tether login failed");

    // The remote terminal raw, so each byte reaches cat and comes back
    // alone; READY says the tunnel is up.
    let remote = "stty raw -echo; echo READY; exec cat";
    let command = Command::new(
        &tether,
        ["ssh", &agent.name, "--", "sh", "-c", remote]
            .map(String::from)
            .to_vec(),
        Size { cols: 80, rows: 24 },
    )
    .env("TETHER_CLI_CONFIG", config.display().to_string())
    .env("TERM", "xterm");
    let terminal::Terminal {
        mut reader,
        mut writer,
        mut child,
    } = terminal::spawn(command)?;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    // Raw there and here: the line ends in a bare LF.
    while !String::from_utf8_lossy(&seen).contains("READY\n") {
        let read = tokio::time::timeout(Duration::from_secs(60), reader.read(&mut buffer))
            .await
            .context("no READY from the device's shell within 60 s")??;
        anyhow::ensure!(
            read > 0,
            "tether ssh ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..read]);
    }

    println!(
        "tether-bench keystrokes: {} keystrokes, one at a time: tether ssh in a local PTY, tetherd on {:?}, cat in the agent's PTY (raw)",
        settings.keystrokes, settings.database
    );
    let mut times = Vec::with_capacity(settings.keystrokes);
    for i in 0..settings.keystrokes {
        // Printable, and never a key the local raw terminal would act on.
        let key = b'a' + (i % 26) as u8;
        let started = Instant::now();
        writer.write_all(&[key]).await?;
        let read = tokio::time::timeout(ECHO_TIMEOUT, reader.read(&mut buffer))
            .await
            .with_context(|| format!("keystroke {i} not echoed within {ECHO_TIMEOUT:?}"))??;
        times.push(started.elapsed());
        anyhow::ensure!(
            buffer[..read] == [key],
            "keystroke {i}: sent {key:?}, got {:?}",
            &buffer[..read]
        );
    }
    times.sort();
    println!(
        "  echo                 p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 99.0)),
        ms(times.last().copied().unwrap_or_default())
    );
    let _ = child.hang_up().await;
    Ok(())
}
