//! A real mosquitto broker as tether's external device broker, configured
//! with the files shipped in `docs/operations/mosquitto/` (only their
//! directory and ports are replaced), included from a main file laid out
//! as Debian's, so the documented configuration is the tested one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::free_port;
use crate::tetherd::{Database, Tetherd};
use crate::wait::wait_until;

/// Where the shipped configuration lives.
fn shipped(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/operations/mosquitto")
        .join(file)
}

/// The files tetherd's data dir gives the broker: the CA that signs device
/// certificates, and the server certificate for tetherd's public hosts.
const TLS_FILES: &[&str] = &["ca.pem", "server.pem", "server-key.pem"];

/// tetherd's user on the Sparkplug broker of [`Mosquitto::start_sparkplug_tls`].
pub const SPARKPLUG_USER: &str = "tetherd";
const SPARKPLUG_PASSWORD: &str = "tetherd-secret";
/// The test's Sparkplug host application on that broker.
pub const SPARKPLUG_HOST_USER: &str = "scada";
pub const SPARKPLUG_HOST_PASSWORD: &str = "scada-secret";

pub struct Mosquitto {
    child: Option<Child>,
    dir: TempDir,
    /// The listener for devices.
    pub device_port: u16,
    /// The listener for tetherd.
    pub tetherd_port: u16,
}

impl Mosquitto {
    /// A directory and two free ports, before anything runs.
    pub fn prepare() -> anyhow::Result<Self> {
        Ok(Self {
            child: None,
            dir: tempfile::Builder::new()
                .prefix("mosquitto-")
                .tempdir()
                .context("creating the broker's dir")?,
            device_port: free_port()?,
            tetherd_port: free_port()?,
        })
    }

    /// Where tetherd writes the revocation list this broker reads.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.path().join("crl.pem")
    }

    /// tetherd's `[broker]` section for this broker.
    pub fn tetherd_config(&self) -> String {
        format!(
            "[broker]\nmode = \"external\"\nurl = \"mqtts://127.0.0.1:{}\"\ndevice_url = \"mqtts://127.0.0.1:{}\"\ncrl_path = \"{}\"\n",
            self.tetherd_port,
            self.device_port,
            self.crl_path().display()
        )
    }

    /// The shipped `tether.conf`, pointed at this dir and these ports.
    fn tether_conf(&self) -> anyhow::Result<String> {
        let template = std::fs::read_to_string(shipped("tether.conf"))
            .context("reading docs/operations/mosquitto/tether.conf")?;
        let dir = self.dir.path().display().to_string();
        let mut config = template;
        for (from, to) in [
            ("/etc/mosquitto/tether/".to_owned(), format!("{dir}/")),
            (
                "listener 8883\n".to_owned(),
                format!("listener {} 127.0.0.1\n", self.device_port),
            ),
            (
                "listener 8884 127.0.0.1\n".to_owned(),
                format!("listener {} 127.0.0.1\n", self.tetherd_port),
            ),
        ] {
            anyhow::ensure!(
                config.contains(&from),
                "docs/operations/mosquitto/tether.conf no longer has {from:?}; update the fixture"
            );
            config = config.replace(&from, &to);
        }
        Ok(config)
    }

    /// The main configuration file: Debian 12's `/etc/mosquitto/mosquitto.conf`
    /// with this dir's paths, including `tether.conf` from `conf.d/`.
    fn main_conf(&self) -> anyhow::Result<String> {
        let dir = self.dir.path().display();
        let mut config = format!(
            "pid_file {dir}/mosquitto.pid\npersistence true\npersistence_location {dir}/\nlog_dest file {dir}/mosquitto.log\nlog_type all\n"
        );
        // As root, mosquitto drops to the `mosquitto` user, which cannot
        // read this temp dir.
        if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?) == 0 {
            config.push_str("user root\n");
        }
        config.push_str(&format!("include_dir {dir}/conf.d\n"));
        Ok(config)
    }

    /// Starts mosquitto with the TLS files from `tetherd`'s data dir and the
    /// revocation list tetherd wrote, and waits until devices can connect.
    pub async fn start(&mut self, tetherd: &Tetherd) -> anyhow::Result<()> {
        for file in TLS_FILES {
            std::fs::copy(tetherd.data_dir().join(file), self.dir.path().join(file))
                .with_context(|| format!("copying {file} for the broker"))?;
        }
        std::fs::copy(shipped("acl"), self.dir.path().join("acl"))
            .context("copying docs/operations/mosquitto/acl")?;
        wait_until(
            "tetherd's revocation list",
            Duration::from_secs(10),
            || async { Ok(self.crl_path().exists().then_some(())) },
        )
        .await?;
        let conf_d = self.dir.path().join("conf.d");
        std::fs::create_dir_all(&conf_d).context("creating conf.d")?;
        std::fs::write(conf_d.join("tether.conf"), self.tether_conf()?)
            .context("writing tether.conf")?;
        self.spawn().await
    }

    /// Starts mosquitto with one plain listener on [`Self::device_port`]
    /// that any client may use, and waits until it listens: a broker for
    /// tetherd as a client (the Sparkplug northbound), not for devices.
    pub async fn start_plain(&mut self) -> anyhow::Result<()> {
        let conf_d = self.dir.path().join("conf.d");
        std::fs::create_dir_all(&conf_d).context("creating conf.d")?;
        std::fs::write(
            conf_d.join("plain.conf"),
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\n",
                self.device_port
            ),
        )
        .context("writing plain.conf")?;
        self.spawn().await
    }

    /// Starts mosquitto as a Sparkplug broker as production runs one: a
    /// TLS listener on [`Self::device_port`] with a certificate for
    /// 127.0.0.1 from a CA of its own, and usernames with passwords; plus a
    /// plain loopback listener on [`Self::tetherd_port`] (the same users)
    /// for the test's Sparkplug host. Returns tetherd's `[sparkplug]`
    /// section, without the group and node settings.
    pub async fn start_sparkplug_tls(&mut self) -> anyhow::Result<String> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let dir = self.dir.path().to_owned();
        let ca_key = KeyPair::generate().context("generating the broker CA's key")?;
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sparkplug test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params
            .self_signed(&ca_key)
            .context("signing the broker CA")?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().context("generating the broker's key")?;
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .context("the broker's certificate parameters")?;
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing the broker's certificate")?;
        std::fs::write(dir.join("sparkplug-ca.pem"), ca.pem())?;
        std::fs::write(dir.join("sparkplug-server.pem"), cert.pem())?;
        std::fs::write(dir.join("sparkplug-server-key.pem"), key.serialize_pem())?;
        let passwords = dir.join("sparkplug-passwords");
        for (user, password) in [
            (SPARKPLUG_USER, SPARKPLUG_PASSWORD),
            (SPARKPLUG_HOST_USER, SPARKPLUG_HOST_PASSWORD),
        ] {
            let mut command =
                Command::new(installed("mosquitto_passwd", "/usr/bin/mosquitto_passwd")?);
            if !passwords.exists() {
                command.arg("-c");
            }
            let status = command
                .arg("-b")
                .arg(&passwords)
                .args([user, password])
                .stdout(Stdio::null())
                .status()
                .context("running mosquitto_passwd")?;
            anyhow::ensure!(status.success(), "mosquitto_passwd failed: {status}");
        }
        let password_file = dir.join("tetherd-sparkplug-password");
        std::fs::write(&password_file, format!("{SPARKPLUG_PASSWORD}\n"))?;
        let conf_d = dir.join("conf.d");
        std::fs::create_dir_all(&conf_d).context("creating conf.d")?;
        let d = dir.display();
        std::fs::write(
            conf_d.join("sparkplug.conf"),
            format!(
                "allow_anonymous false\npassword_file {d}/sparkplug-passwords\n\
                 listener {} 127.0.0.1\ncafile {d}/sparkplug-ca.pem\ncertfile {d}/sparkplug-server.pem\nkeyfile {d}/sparkplug-server-key.pem\n\
                 listener {} 127.0.0.1\n",
                self.device_port, self.tetherd_port
            ),
        )
        .context("writing sparkplug.conf")?;
        self.spawn().await?;
        Ok(format!(
            "[sparkplug]\nurl = \"mqtts://127.0.0.1:{}\"\nca_file = \"{d}/sparkplug-ca.pem\"\nusername = \"{SPARKPLUG_USER}\"\npassword_file = \"{}\"\n",
            self.device_port,
            password_file.display()
        ))
    }

    /// Runs mosquitto on the main configuration and `conf.d`, and waits
    /// until the device listener accepts connections.
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let config_path = self.dir.path().join("mosquitto.conf");
        std::fs::write(&config_path, self.main_conf()?).context("writing mosquitto.conf")?;
        let child = Command::new(mosquitto_binary()?)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning mosquitto")?;
        self.child = Some(child);
        let port = self.device_port;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("mosquitto exited with {status}; its log:\n{}", self.log());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "mosquitto did not listen within 20 s; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes mosquitto read its configuration and revocation list again
    /// (SIGHUP), as `systemctl reload mosquitto` does.
    pub fn reload(&self) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .context("mosquitto is not running")?
            .id();
        let sent = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(sent.success(), "could not signal mosquitto: {sent}");
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn port_arg(&self) -> String {
        self.device_port.to_string()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts tetherd in external-broker mode and mosquitto as its broker;
/// returns once tetherd has connected to it. Devices enroll as usual and
/// are given the broker's device listener.
pub async fn start_with_mosquitto(database: Database) -> anyhow::Result<(Tetherd, Mosquitto)> {
    start_with_mosquitto_and(database, "").await
}

/// Like [`start_with_mosquitto`], with more of tetherd's config file (other
/// sections than `[broker]`).
pub async fn start_with_mosquitto_and(
    database: Database,
    more_config: &str,
) -> anyhow::Result<(Tetherd, Mosquitto)> {
    let mut mosquitto = Mosquitto::prepare()?;
    std::fs::write(
        mosquitto.tetherd_config_path(),
        format!("{more_config}\n{}", mosquitto.tetherd_config()),
    )
    .context("writing tetherd.toml")?;
    let config = mosquitto.tetherd_config_path().display().to_string();
    let tetherd = Tetherd::start_with(database, &["--config", &config]).await?;
    mosquitto.start(&tetherd).await?;
    mosquitto.wait_connected(&tetherd).await?;
    Ok((tetherd, mosquitto))
}

impl Mosquitto {
    /// The config file of tetherds using this broker.
    pub fn tetherd_config_path(&self) -> PathBuf {
        self.dir.path().join("tetherd.toml")
    }

    /// Starts another replica of `first` (on PostgreSQL) on this broker;
    /// returns once it has connected.
    pub async fn start_replica(&self, first: &Tetherd) -> anyhow::Result<Tetherd> {
        let config = self.tetherd_config_path().display().to_string();
        let replica = Tetherd::start_replica_of(first, &["--config", &config]).await?;
        self.wait_connected(&replica).await?;
        Ok(replica)
    }

    /// Publishes `payload` on `device`'s `kind` topic as tetherd does
    /// (QoS 1, MQTT 5, on tetherd's listener with the controller
    /// certificate `tetherd` made for itself): what only tetherd may
    /// publish, such as the monitor's requests on `control`.
    pub async fn publish_as_tetherd(
        &self,
        tetherd: &Tetherd,
        device: &str,
        kind: &str,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let broker = tetherd.data_dir().join("broker");
        let mut command = tokio::process::Command::new("mosquitto_pub");
        command
            .args(["-h", "127.0.0.1", "-p", &self.tetherd_port.to_string()])
            .args(["-i", "tether-test-controller", "-V", "mqttv5", "-q", "1"])
            .arg("--cafile")
            .arg(tetherd.ca_path())
            .arg("--cert")
            .arg(broker.join("client.pem"))
            .arg("--key")
            .arg(broker.join("client-key.pem"))
            .args(["-t", &format!("tether/v1/devices/{device}/{kind}"), "-s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .context("running mosquitto_pub (install mosquitto-clients)")?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(payload).await?;
        }
        let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .context("mosquitto_pub did not finish within 10 s")??;
        anyhow::ensure!(
            output.status.success(),
            "mosquitto_pub: {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    async fn wait_connected(&self, tetherd: &Tetherd) -> anyhow::Result<()> {
        wait_until(
            "tetherd to connect to mosquitto",
            Duration::from_secs(30),
            || async {
                Ok(tetherd
                    .log()
                    .contains("connected to the external MQTT broker")
                    .then_some(()))
            },
        )
        .await
        .with_context(|| {
            format!(
                "tetherd log:\n{}\nmosquitto log:\n{}",
                tetherd.log(),
                self.log()
            )
        })
    }
}

fn mosquitto_binary() -> anyhow::Result<PathBuf> {
    installed("mosquitto", "/usr/sbin/mosquitto")
}

/// One of mosquitto's programs, on the PATH or where Debian puts it.
fn installed(program: &str, debian_path: &str) -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(program));
    on_path
        .chain([PathBuf::from(debian_path)])
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{program} is not installed: apt-get install mosquitto"))
}
