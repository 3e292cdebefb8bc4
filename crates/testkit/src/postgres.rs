//! A throwaway PostgreSQL 15 cluster on loopback, in a temp dir, for tests.
//!
//! `initdb` and `postgres` refuse to run as root, so as root the cluster runs
//! as the `postgres` user (via `runuser`) in a directory handed to it.
//!
//! Cleanup does not depend on `Drop`: a small reaper process waits for its
//! stdin to close and then stops the server and deletes the directory. The
//! pipe closes on `Drop` and also when the test process exits without
//! dropping, as a cluster shared through a `static` does.

use crate::free_port;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, bail, ensure};

const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The user (and database superuser) tests connect as, without a password.
const USER: &str = "tether";

/// A port found free can be taken by someone else before postgres binds it.
const START_ATTEMPTS: usize = 5;

/// How long `pg_ctl start` waits for the server to accept connections.
const START_TIMEOUT_SECONDS: &str = "60";

#[derive(Debug)]
pub struct TempPostgres {
    dir: PathBuf,
    port: u16,
    /// `Some` when running as root: the cluster's files and processes then
    /// belong to the `postgres` user.
    owner: Option<Owner>,
    /// Stops the server and deletes `dir` once its stdin closes.
    reaper: Option<Child>,
}

#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl TempPostgres {
    /// Creates a cluster, starts it on a free port of 127.0.0.1 and creates
    /// the database `tether`. Takes about two seconds, mostly `initdb`.
    pub fn start() -> anyhow::Result<TempPostgres> {
        ensure!(
            Path::new(BIN_DIR).join("initdb").exists(),
            "PostgreSQL 15 is not installed: {BIN_DIR}/initdb is missing \
             (install the Debian package `postgresql`)"
        );
        let owner = if running_as_root()? {
            Some(postgres_user()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("tether-pg-")
            .tempdir()
            .context("failed to create a temp dir for PostgreSQL")?
            // The reaper deletes it, also after the process has exited.
            .keep();
        let mut cluster = TempPostgres {
            dir,
            port: 0,
            owner,
            reaper: None,
        };
        // From here on, dropping `cluster` on an error cleans up.
        cluster.reaper = Some(cluster.spawn_reaper()?);
        if let Some(owner) = owner {
            std::os::unix::fs::chown(&cluster.dir, Some(owner.uid), Some(owner.gid)).with_context(
                || {
                    format!(
                        "failed to hand {} to the postgres user",
                        cluster.dir.display()
                    )
                },
            )?;
        }
        cluster.initdb()?;
        cluster.start_server()?;
        cluster.create_database("tether")?;
        Ok(cluster)
    }

    /// The URL of the database `tether`.
    pub fn url(&self) -> String {
        self.url_for("tether")
    }

    /// Creates another database in this cluster and returns its URL, so
    /// tests can share one cluster and still start from an empty database.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let output = Command::new(Path::new(BIN_DIR).join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                name,
            ])
            .output()
            .context("failed to run createdb")?;
        check(&output).with_context(|| format!("failed to create database {name}"))?;
        Ok(self.url_for(name))
    }

    fn url_for(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// A command for a server binary, as the `postgres` user when we are
    /// root. It runs in the cluster's directory, because the postgres user
    /// may not be allowed into the current one.
    fn server_command(&self, program: &str) -> Command {
        let program = Path::new(BIN_DIR).join(program);
        let mut command = match self.owner {
            Some(_) => {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.current_dir(&self.dir);
        command
    }

    fn spawn_reaper(&self) -> anyhow::Result<Child> {
        let mut stop = self.server_command("pg_ctl");
        stop.arg("-D")
            .arg(self.data_dir())
            .args(["stop", "-m", "immediate", "-w"]);
        let stop_argv = std::iter::once(stop.get_program()).chain(stop.get_args());
        Command::new("sh")
            .arg("-c")
            // `cat` returns at EOF, i.e. when every writer of the pipe (only
            // this process: std opens pipes close-on-exec) is gone. Stopping
            // fails harmlessly if the server never started.
            .arg(r#"cat >/dev/null; "$@" >/dev/null 2>&1; rm -rf "$TETHER_PG_DIR""#)
            .arg("tether-pg-reaper")
            .args(stop_argv)
            .env("TETHER_PG_DIR", &self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            // Holding the test's output pipes would make the harness wait
            // for the reaper.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("failed to start the PostgreSQL reaper (sh)")
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let output = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .context("failed to run initdb")?;
        check(&output).context("initdb failed")
    }

    /// Stops the server (fast shutdown: clients are disconnected), as an
    /// outage would. [`TempPostgres::start_again`] brings it back.
    pub fn stop(&self) -> anyhow::Result<()> {
        let output = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["stop", "-m", "fast", "-w"])
            .output()
            .context("failed to run pg_ctl stop")?;
        check(&output).context("PostgreSQL did not stop")
    }

    /// Starts the stopped server again on the same port and data.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let output = self.pg_ctl_start(self.port)?;
        ensure!(
            output.status.success(),
            "PostgreSQL did not start again on port {}: {}\n{}",
            self.port,
            describe(&output),
            fs::read_to_string(self.log_file()).unwrap_or_default()
        );
        Ok(())
    }

    fn pg_ctl_start(&self, port: u16) -> anyhow::Result<Output> {
        let options = format!(
            "-p {port} -k '{}' -c listen_addresses=127.0.0.1 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.dir.display()
        );
        self.server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", START_TIMEOUT_SECONDS, "-o", &options, "start"])
            .output()
            .context("failed to run pg_ctl start")
    }

    fn start_server(&mut self) -> anyhow::Result<()> {
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let output = self.pg_ctl_start(port)?;
            if output.status.success() {
                self.port = port;
                return Ok(());
            }
            let log = fs::read_to_string(self.log_file()).unwrap_or_default();
            if !log.contains("could not bind") {
                bail!("PostgreSQL did not start: {}\n{log}", describe(&output));
            }
            // Someone took the port between our probe and postgres' bind.
            // Empty the log so the next attempt is judged on its own output.
            fs::write(self.log_file(), "").context("failed to reset the PostgreSQL log")?;
        }
        bail!("PostgreSQL did not start: no free port after {START_ATTEMPTS} attempts")
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Some(mut reaper) = self.reaper.take() {
            // Closing its stdin tells the reaper to stop the server and
            // delete the directory; waiting makes both done when drop returns.
            drop(reaper.stdin.take());
            let _ = reaper.wait();
        }
    }
}

pub(crate) fn running_as_root() -> anyhow::Result<bool> {
    // `libc::geteuid` would need `unsafe`, which the workspace forbids.
    let output = Command::new("id")
        .arg("-u")
        .output()
        .context("failed to run `id -u`")?;
    check(&output).context("`id -u` failed")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn postgres_user() -> anyhow::Result<Owner> {
    let passwd = fs::read_to_string("/etc/passwd").context("failed to read /etc/passwd")?;
    let entry = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres"))
        .context("there is no `postgres` user to run PostgreSQL as (running as root)")?;
    let field = |index: usize, name: &str| -> anyhow::Result<u32> {
        entry
            .get(index)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("the postgres entry in /etc/passwd has no valid {name}"))
    };
    Ok(Owner {
        uid: field(2, "uid")?,
        gid: field(3, "gid")?,
    })
}

fn check(output: &Output) -> anyhow::Result<()> {
    ensure!(output.status.success(), "{}", describe(output));
    Ok(())
}

fn describe(output: &Output) -> String {
    format!(
        "{}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    )
    .trim()
    .to_owned()
}
