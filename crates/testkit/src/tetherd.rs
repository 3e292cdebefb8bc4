//! A real `tetherd` in a temp data dir, listening on free loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::api::ApiClient;
use crate::binaries::binary;
use crate::postgres::TempPostgres;

/// Which store a test runs tetherd on; integration suites run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Sqlite,
    Postgres,
}

/// What replicas of one cluster share besides the database: the CA that
/// issues device certificates, the key that seals action inputs, the agent
/// release signing and download-token keys, and the admin credentials the
/// first one created.
const REPLICA_SHARED_FILES: &[&str] = &[
    "ca.pem",
    "ca-key.pem",
    "sealing.key",
    "release-signing-key.pk8",
    "release-token.key",
    "admin-credentials.toml",
];

pub struct Tetherd {
    /// The tetherd binary it runs: this build's, or an earlier release's
    /// ([`Tetherd::start_release`]) until [`Tetherd::upgrade_to_this_build`].
    executable: PathBuf,
    child: Option<Child>,
    dir: TempDir,
    database_url: Option<String>,
    extra_args: Vec<String>,
    /// The address both listeners bind (loopback unless a test gives one
    /// of a network it built, [`Tetherd::start_on_host`]).
    listen_host: String,
    pub api_url: String,
    pub mqtt_url: String,
    ca_pem: Vec<u8>,
    admin_password: String,
    // Dropped after the child is killed (fields drop in order).
    postgres: Option<TempPostgres>,
}

impl Tetherd {
    pub async fn start(database: Database) -> anyhow::Result<Self> {
        Self::start_with(database, &[]).await
    }

    /// Starts tetherd with extra flags, e.g. a config file.
    pub async fn start_with(database: Database, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_prepared(database, extra_args, |_| Ok(())).await
    }

    /// Starts tetherd on SQLite listening on `host` only (an address of a
    /// network the test built, e.g. a veth's [`crate::netns::NetNs`]),
    /// with `host` first in its certificate and in the URLs it gives
    /// devices.
    pub async fn start_on_host(host: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        let public_hosts = format!("{host},localhost,127.0.0.1");
        let mut args = vec!["--public-host", &public_hosts];
        args.extend_from_slice(extra_args);
        let dir = tempfile::Builder::new()
            .prefix("tetherd-")
            .tempdir()
            .context("creating the data dir")?;
        let mut tetherd = Self::unstarted(binary("tetherd")?, dir, None, &args, host, None);
        tetherd.spawn().await?;
        Ok(tetherd)
    }

    /// Starts tetherd after `prepare` has had the (not yet existing) data
    /// dir path, e.g. to pre-create it as a packager would.
    pub async fn start_prepared(
        database: Database,
        extra_args: &[&str],
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let postgres = match database {
            Database::Sqlite => None,
            Database::Postgres => Some(TempPostgres::start().context("starting PostgreSQL")?),
        };
        Self::start_executable(binary("tetherd")?, postgres, extra_args, prepare).await
    }

    /// Starts tetherd on a PostgreSQL cluster the test prepared (e.g. at
    /// an earlier release's schema).
    pub async fn start_on_postgres(
        postgres: TempPostgres,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_executable(binary("tetherd")?, Some(postgres), extra_args, |_| Ok(())).await
    }

    /// Starts an earlier release's tetherd binary on `postgres`, as a
    /// cluster ran before an upgrade; [`Tetherd::upgrade_to_this_build`]
    /// replaces it.
    pub async fn start_release(
        executable: &Path,
        postgres: TempPostgres,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_executable(
            executable.to_owned(),
            Some(postgres),
            extra_args,
            |_| Ok(()),
        )
        .await
    }

    async fn start_executable(
        executable: PathBuf,
        postgres: Option<TempPostgres>,
        extra_args: &[&str],
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tetherd-")
            .tempdir()
            .context("creating the data dir")?;
        let database_url = postgres.as_ref().map(TempPostgres::url);
        let mut tetherd = Self::unstarted(
            executable,
            dir,
            database_url,
            extra_args,
            LOOPBACK,
            postgres,
        );
        prepare(&tetherd.data_dir())?;
        tetherd.spawn().await?;
        Ok(tetherd)
    }

    /// Starts another replica beside `first` (which must run on PostgreSQL):
    /// its own data dir and ports, the same database, and copies of the
    /// secrets replicas share (the CA and the sealing key), as an operator
    /// sets up a second replica. Drop replicas before `first`, which owns
    /// the database.
    pub async fn start_replica_of(first: &Tetherd, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_beside(first, extra_args, REPLICA_SHARED_FILES).await
    }

    /// [`Tetherd::start_replica_of`] reaching the database by `database_url`
    /// instead (e.g. through a proxy a test can cut).
    pub async fn start_replica_through(
        first: &Tetherd,
        database_url: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_beside_on(first, Some(database_url), extra_args, REPLICA_SHARED_FILES).await
    }

    /// [`Tetherd::start_replica_of`] with the shared files but `left_out`
    /// copied, as an operator who forgot those would.
    pub async fn start_replica_without(first: &Tetherd, left_out: &[&str]) -> anyhow::Result<Self> {
        let shared: Vec<&str> = REPLICA_SHARED_FILES
            .iter()
            .copied()
            .filter(|file| !left_out.contains(file))
            .collect();
        Self::start_beside(first, &[], &shared).await
    }

    /// Starts a tetherd on `first`'s database with its own CA and sealing
    /// key, as an operator who forgot to copy them would.
    pub async fn start_on_database_of(
        first: &Tetherd,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_beside(first, extra_args, &[]).await
    }

    async fn start_beside(
        first: &Tetherd,
        extra_args: &[&str],
        shared_files: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_beside_on(first, None, extra_args, shared_files).await
    }

    async fn start_beside_on(
        first: &Tetherd,
        database_url: Option<&str>,
        extra_args: &[&str],
        shared_files: &[&str],
    ) -> anyhow::Result<Self> {
        let first_url = first
            .database_url
            .clone()
            .context("replicas share a PostgreSQL database; start the first one on Postgres")?;
        let database_url = database_url.map_or(first_url, str::to_owned);
        let dir = tempfile::Builder::new()
            .prefix("tetherd-replica-")
            .tempdir()
            .context("creating the data dir")?;
        // A replica runs the release the first one runs.
        let mut replica = Self::unstarted(
            first.executable.clone(),
            dir,
            Some(database_url),
            extra_args,
            LOOPBACK,
            None,
        );
        let data_dir = replica.data_dir();
        std::fs::create_dir_all(&data_dir).context("creating the replica's data dir")?;
        std::fs::set_permissions(
            &data_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .context("restricting the replica's data dir")?;
        for shared in shared_files {
            std::fs::copy(first.data_dir().join(shared), data_dir.join(shared))
                .with_context(|| format!("copying {shared} to the replica"))?;
        }
        replica.spawn().await?;
        Ok(replica)
    }

    fn unstarted(
        executable: PathBuf,
        dir: TempDir,
        database_url: Option<String>,
        extra_args: &[&str],
        listen_host: &str,
        postgres: Option<TempPostgres>,
    ) -> Self {
        Self {
            executable,
            child: None,
            database_url,
            dir,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            listen_host: listen_host.to_owned(),
            api_url: String::new(),
            mqtt_url: String::new(),
            ca_pem: Vec::new(),
            admin_password: String::new(),
            postgres,
        }
    }

    /// The next start (after [`Tetherd::stop`]) runs this build's tetherd
    /// on the same data dir, database and ports: an upgrade in place.
    pub fn upgrade_to_this_build(&mut self) -> anyhow::Result<()> {
        self.executable = binary("tetherd")?;
        Ok(())
    }

    /// The throwaway PostgreSQL cluster, on `Database::Postgres`.
    pub fn postgres(&self) -> Option<&TempPostgres> {
        self.postgres.as_ref()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    /// A scratch dir that lives as long as this tetherd.
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data_dir().join("ca.pem")
    }

    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// What tetherd printed and logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tetherd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let data_dir = self.data_dir();
        let endpoints_path = data_dir.join("endpoints.json");
        let _ = std::fs::remove_file(&endpoints_path);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tetherd.log"))
            .context("opening the tetherd log")?;
        let mut command = Command::new(&self.executable);
        command
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-api", &listen(&self.api_url, &self.listen_host)])
            .args(["--listen-mqtt", &listen(&self.mqtt_url, &self.listen_host)])
            .args(["--log-level", "info,tether_server=debug"])
            .args(&self.extra_args)
            .env_remove("TETHER_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the log handle")?)
            .stderr(log);
        if let Some(url) = &self.database_url {
            command.arg("--database-url").arg(url);
        }
        self.child = Some(command.spawn().context("spawning tetherd")?);
        // Not `wait_until`: a tetherd that exited fails at once, not after
        // the deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let endpoints: Value = loop {
            if let Some(status) = self.exited() {
                bail!("tetherd exited with {status}; its log:\n{}", self.log());
            }
            if let Some(endpoints) = std::fs::read(&endpoints_path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            {
                break endpoints;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "tetherd did not write endpoints.json within 60 s; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.api_url = endpoints["api"]
            .as_str()
            .context("endpoints.json has no api")?
            .to_owned();
        self.mqtt_url = endpoints["mqtt"]
            .as_str()
            .context("endpoints.json has no mqtt")?
            .to_owned();
        self.ca_pem = std::fs::read(self.ca_path()).context("reading the CA")?;
        let credentials = std::fs::read_to_string(data_dir.join("admin-credentials.toml"))
            .context("reading the admin credentials")?;
        let credentials: toml::Table = credentials.parse().context("admin credentials are TOML")?;
        self.admin_password = credentials
            .get("password")
            .and_then(|p| p.as_str())
            .context("admin credentials have a password")?
            .to_owned();
        Ok(())
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills tetherd (SIGKILL) and starts it again on the same data dir,
    /// database and ports, as a crashed controller restarted by its
    /// supervisor: agents reconnect to the address they enrolled with.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Starts tetherd again after [`Tetherd::kill`], on the same data dir,
    /// database and ports.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn().await
    }

    /// SIGTERM, as a supervisor stops it, then waits for it to exit.
    pub async fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("tetherd is not running")?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("sending SIGTERM")?;
        crate::wait_until(
            "tetherd to exit after SIGTERM",
            Duration::from_secs(15),
            || {
                let status = child.try_wait();
                async move { Ok(status?) }
            },
        )
        .await
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client without credentials.
    pub fn anonymous(&self) -> anyhow::Result<ApiClient> {
        ApiClient::new(&self.api_url, &self.ca_pem, None)
    }

    /// A client logged in as a new user `{role}-user` with `role`
    /// (`viewer`, `operator`, `admin`).
    pub async fn user_with_role(&self, role: &str) -> anyhow::Result<ApiClient> {
        let admin = self.admin().await?;
        let username = format!("{role}-user");
        let created = admin
            .post("/api/v1/users", json!({"username": username, "role": role}))
            .await?
            .expect_status(201)?;
        let password = created["password"]
            .as_str()
            .context("a generated password")?;
        let login = self
            .anonymous()?
            .post(
                "/api/v1/login",
                json!({"username": username, "password": password}),
            )
            .await?
            .expect_status(200)?;
        Ok(admin.with_token(login["token"].as_str().map(str::to_owned)))
    }

    /// A client logged in as the admin created on first start.
    pub async fn admin(&self) -> anyhow::Result<ApiClient> {
        let token = self.admin_token().await?;
        Ok(self.anonymous()?.with_token(Some(token)))
    }

    /// A new session token of the admin created on first start, for
    /// clients other than [`ApiClient`] (HTTP/2, schemathesis).
    pub async fn admin_token(&self) -> anyhow::Result<String> {
        let login = self
            .anonymous()?
            .post(
                "/api/v1/login",
                json!({"username": "admin", "password": self.admin_password}),
            )
            .await?
            .expect_status(200)?;
        Ok(login["token"]
            .as_str()
            .context("login gives a token")?
            .to_owned())
    }
}

/// The address to listen on: a free port the first time, the same one
/// after a restart (`url` is empty before the first start).
fn listen(url: &str, host: &str) -> String {
    match url.rsplit_once("//") {
        Some((_, authority)) => authority.to_owned(),
        None => format!("{host}:0"),
    }
}

const LOOPBACK: &str = "127.0.0.1";

impl Drop for Tetherd {
    fn drop(&mut self) {
        self.kill();
    }
}
