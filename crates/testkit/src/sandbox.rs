//! A throwaway machine for install tests: this host's root filesystem seen
//! through an overlay whose writes land in a temp dir, in a mount namespace
//! and a network namespace of its own with only loopback. What a test
//! installs there (packages, users, files in /usr and /etc) is gone when the
//! sandbox is dropped, and nothing inside can reach another machine: there
//! is no interface but `lo` and no route. Needs root (namespaces, mounts).
//!
//! One holder process keeps the namespaces; commands enter them with
//! `nsenter` and run chrooted into the overlay.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

pub struct Sandbox {
    dir: tempfile::TempDir,
    holder: Child,
}

impl Sandbox {
    pub fn create() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("a temp dir for the sandbox")?;
        for sub in ["upper", "work", "root"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        let d = dir.path().display();
        // /run and /tmp start empty, as on a machine just booted; /dev is
        // the host's (dpkg and the binaries need /dev/null and urandom).
        let script = format!(
            "set -e
ip link set lo up
mount -t overlay overlay -o lowerdir=/,upperdir={d}/upper,workdir={d}/work {d}/root
mount -t proc proc {d}/root/proc
mount --rbind /dev {d}/root/dev
mount -t tmpfs tmpfs {d}/root/run
mount -t tmpfs tmpfs {d}/root/tmp
echo ready
exec sleep infinity"
        );
        let mut holder = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the sandbox's namespaces (unshare)")?;
        let mut ready = String::new();
        BufReader::new(holder.stdout.take().context("the holder's stdout")?)
            .read_line(&mut ready)?;
        if ready.trim() != "ready" {
            let _ = holder.kill();
            let output = holder.wait_with_output()?;
            bail!(
                "failed to make the sandbox: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(Self { dir, holder })
    }

    /// A command that runs `script` with `sh -c` inside, as root.
    pub fn command(&self, script: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.holder.id().to_string(), "-n", "-m", "chroot"])
            .arg(self.dir.path().join("root"))
            .args(["sh", "-c", script])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root");
        command
    }

    /// Runs `script` inside and returns its output; fails with its error
    /// output if it fails.
    pub fn run(&self, script: &str) -> anyhow::Result<String> {
        let output = self
            .command(script)
            .output()
            .with_context(|| format!("running in the sandbox: {script}"))?;
        if !output.status.success() {
            bail!(
                "in the sandbox, `{script}` failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Where a path inside is seen from outside (through the holder's
    /// mount namespace), to read what the sandbox wrote.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root{}/root{inside}",
            self.holder.id(),
            self.dir.path().display()
        ))
    }

    /// Copies a file from outside into `/root` inside, as files are
    /// carried into a site with no network; returns its path inside.
    pub fn carry_in(&self, file: &std::path::Path) -> anyhow::Result<String> {
        let name = file
            .file_name()
            .with_context(|| format!("{} has no file name", file.display()))?;
        let inside = format!("/root/{}", name.to_string_lossy());
        std::fs::copy(file, self.path(&inside))
            .with_context(|| format!("carrying {} into the sandbox", file.display()))?;
        Ok(inside)
    }

    /// Waits for `script` to succeed inside, e.g. a port to answer.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
    ) -> anyhow::Result<()> {
        crate::wait_until(what, timeout, || async move {
            Ok(self
                .command(script)
                .output()?
                .status
                .success()
                .then_some(()))
        })
        .await
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The mounts go with the namespace once its last process is gone;
        // processes a test started inside are its own to kill.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
