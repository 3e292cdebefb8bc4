//! OpenSSH's own `sshd` serving SFTP (its `internal-sftp`, the same code as
//! `/usr/lib/openssh/sftp-server`) on a free loopback port, with a host key
//! generated per test and two ways in: root with a generated client key, and
//! the dedicated user [`PASSWORD_USER`] with [`PASSWORD`].
//!
//! sshd cannot bind port 0 and report it, so a port is found free and then
//! handed to sshd; another process can take it in between, hence
//! `START_ATTEMPTS`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tempfile::TempDir;

use crate::free_port;

/// The system user that logs in with a password. sshd checks passwords
/// against the system's accounts, so the fixture creates it once (as root).
pub const PASSWORD_USER: &str = "tether-sftp";

/// [`PASSWORD_USER`]'s password. The sshd runs only on loopback and only
/// for the length of a test.
pub const PASSWORD: &str = "tether-sftp-test-password";

const SSHD: &str = "/usr/sbin/sshd";

const START_ATTEMPTS: usize = 5;

pub struct Sshd {
    child: Child,
    dir: TempDir,
    pub port: u16,
}

impl Sshd {
    /// Generates the keys and the configuration, then starts sshd and
    /// returns once it answers with its SSH banner.
    pub async fn start() -> anyhow::Result<Self> {
        ensure!(
            Path::new(SSHD).is_file(),
            "OpenSSH's sshd is not installed: {SSHD} is missing (apt-get install openssh-server)"
        );
        ensure_password_user()?;
        // sshd refuses to start without its privilege separation directory,
        // which Debian creates only when the service runs.
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let dir = tempfile::Builder::new()
            .prefix("tether-sshd-")
            .tempdir()
            .context("creating the sshd's dir")?;
        // The password user must reach its files through the temp dir.
        set_mode(dir.path(), 0o755)?;
        keygen(&dir.path().join("host_key"))?;
        keygen(&dir.path().join("client_key"))?;
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .context("writing authorized_keys")?;
        let files = dir.path().join("files");
        std::fs::create_dir(&files).context("creating the SFTP files dir")?;
        chown_to_password_user(&files)?;
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let config = dir.path().join("sshd_config");
            std::fs::write(&config, sshd_config(dir.path(), port))
                .context("writing sshd_config")?;
            let mut child = Command::new(SSHD)
                // -D: stay in the foreground, as the fixture's child;
                // -E: log to a file the test can show.
                .arg("-D")
                .arg("-f")
                .arg(&config)
                .arg("-E")
                .arg(dir.path().join("sshd.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawning sshd")?;
            match wait_listening(&mut child, port).await {
                Ok(()) => return Ok(Sshd { child, dir, port }),
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!(
                        "{error:#}; its log:\n{}",
                        std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default()
                    );
                }
            }
        }
        bail!("sshd did not start in {START_ATTEMPTS} attempts; last: {last_error}")
    }

    /// The directory both users may write to over SFTP.
    pub fn files_dir(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// The private key root logs in with (OpenSSH format, no passphrase).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    pub fn host_public_key_path(&self) -> PathBuf {
        self.dir.path().join("host_key.pub")
    }

    /// The host key's fingerprint as OpenSSH prints it, `SHA256:…`: what a
    /// client is told to expect.
    pub fn host_key_fingerprint(&self) -> anyhow::Result<String> {
        fingerprint(&self.host_public_key_path())
    }

    /// A `known_hosts` file naming this server's host key, for OpenSSH's
    /// clients.
    pub fn known_hosts(&self) -> anyhow::Result<PathBuf> {
        let key = std::fs::read_to_string(self.host_public_key_path())
            .context("reading the host public key")?;
        let path = self.dir.path().join("known_hosts");
        std::fs::write(&path, format!("[127.0.0.1]:{} {}", self.port, key))
            .context("writing known_hosts")?;
        Ok(path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns once sshd on `port` answers with its banner; fails when it
/// exits first (a port taken in between) or stays silent.
async fn wait_listening(child: &mut Child, port: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("sshd exited with {status}");
        }
        if banner(port).await.is_some() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("sshd did not answer on port {port} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first line sshd sends, `SSH-2.0-OpenSSH_…`, once it serves.
async fn banner(port: u16) -> Option<String> {
    use tokio::io::AsyncBufReadExt;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut line = String::new();
    tokio::io::BufReader::new(stream)
        .read_line(&mut line)
        .await
        .ok()?;
    line.starts_with("SSH-2.0-").then_some(line)
}

fn sshd_config(dir: &Path, port: u16) -> String {
    let dir = dir.display();
    format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {dir}/host_key\n\
         PidFile {dir}/sshd.pid\n\
         # The test runs as root, and its temp dirs are not owned the way\n\
         # StrictModes wants.\n\
         PermitRootLogin yes\n\
         StrictModes no\n\
         AuthorizedKeysFile {dir}/authorized_keys\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication yes\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         AllowUsers root {PASSWORD_USER}\n\
         Subsystem sftp internal-sftp\n\
         LogLevel VERBOSE\n"
    )
}

/// An ed25519 key pair at `path` and `path.pub`, without a passphrase.
fn keygen(path: &Path) -> anyhow::Result<()> {
    let output = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tether-test", "-f"])
        .arg(path)
        .output()
        .context("running ssh-keygen (apt-get install openssh-client)")?;
    ensure!(
        output.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `ssh-keygen -l`'s `SHA256:…` field for a public key file.
pub fn fingerprint(public_key: &Path) -> anyhow::Result<String> {
    let output = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(public_key)
        .output()
        .context("running ssh-keygen -l")?;
    ensure!(
        output.status.success(),
        "ssh-keygen -l failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .context("ssh-keygen -l printed no fingerprint")
}

/// Creates [`PASSWORD_USER`] if absent and sets [`PASSWORD`]. Tests running
/// at once may both try: `useradd`'s "already exists" (9) is fine, and they
/// set the same password.
fn ensure_password_user() -> anyhow::Result<()> {
    let exists = Command::new("id")
        .arg(PASSWORD_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running id")?
        .success();
    if !exists {
        let status = Command::new("useradd")
            // No shell: with a password anyone can read here, the account
            // must give nothing through a machine's own sshd, whose sftp
            // subsystem runs through the user's shell. Ours runs
            // internal-sftp, in sshd's process.
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(PASSWORD_USER)
            .status()
            .context("running useradd (the sshd fixture runs as root)")?;
        ensure!(
            status.success() || status.code() == Some(9),
            "useradd {PASSWORD_USER} failed: {status}"
        );
    }
    // An account made by an earlier version of this fixture had a shell.
    let status = Command::new("usermod")
        .args(["--shell", "/usr/sbin/nologin", PASSWORD_USER])
        .status()
        .context("running usermod")?;
    ensure!(status.success(), "usermod {PASSWORD_USER} failed: {status}");
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .context("running chpasswd")?;
    {
        use std::io::Write;
        let mut stdin = chpasswd.stdin.take().context("chpasswd's stdin")?;
        writeln!(stdin, "{PASSWORD_USER}:{PASSWORD}").context("writing to chpasswd")?;
    }
    let status = chpasswd.wait().context("waiting for chpasswd")?;
    ensure!(status.success(), "chpasswd failed: {status}");
    Ok(())
}

fn chown_to_password_user(path: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .arg(PASSWORD_USER)
        .arg(path)
        .status()
        .context("running chown")?;
    ensure!(status.success(), "chown {PASSWORD_USER} failed: {status}");
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}
