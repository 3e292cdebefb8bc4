//! testkit's sshd fixture driven by OpenSSH's own `sftp` client: key and
//! password logins work, a wrong password and a wrong host key are refused,
//! so the agent's SFTP tests stand on a server that behaves as a real one.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tether_testkit::sshd::{PASSWORD, PASSWORD_USER, Sshd};

struct Run {
    success: bool,
    stderr: String,
}

/// Runs `sftp -b -` with `batch` on stdin, checking the host key against
/// `known_hosts`. A password, when given, is answered through
/// `SSH_ASKPASS` (OpenSSH reads no password from a pipe).
async fn sftp(
    sshd: &Sshd,
    user: &str,
    known_hosts: &Path,
    auth: Auth<'_>,
    batch: &str,
) -> anyhow::Result<Run> {
    use tokio::io::AsyncWriteExt as _;
    let mut command = tokio::process::Command::new("sftp");
    command
        .arg("-P")
        .arg(sshd.port.to_string())
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ]);
    match auth {
        Auth::Key => {
            command
                .arg("-i")
                .arg(sshd.client_key_path())
                .args(["-o", "PasswordAuthentication=no"]);
        }
        Auth::Password(password) => {
            let askpass = sshd
                .files_dir()
                .with_file_name(format!("askpass-{password}"));
            std::fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n"))?;
            std::fs::set_permissions(
                &askpass,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )?;
            // `-b` turns batch mode on, which disables password prompts;
            // ssh takes the first value given, so this goes before `-b`.
            command
                .args(["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no"])
                .args(["-o", "PreferredAuthentications=password"])
                .env("SSH_ASKPASS", &askpass)
                .env("SSH_ASKPASS_REQUIRE", "force");
        }
    }
    let mut child = command
        .args(["-b", "-"])
        .arg(format!("{user}@127.0.0.1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running sftp (apt-get install openssh-client)")?;
    let mut input = child.stdin.take().context("sftp stdin")?;
    input.write_all(batch.as_bytes()).await?;
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("sftp did not finish within 30 s")??;
    Ok(Run {
        success: output.status.success(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Key,
    Password(&'a str),
}

#[tokio::test]
async fn sftp_puts_and_gets_with_a_key_and_with_a_password() -> anyhow::Result<()> {
    let sshd = Sshd::start().await?;
    let known_hosts = sshd.known_hosts()?;
    let work = tempfile::tempdir()?;
    let local = work.path().join("local.db");
    std::fs::write(&local, b"backup bytes")?;
    let files = sshd.files_dir();

    let put = format!("put {} {}/by-root.db\n", local.display(), files.display());
    let run = sftp(&sshd, "root", &known_hosts, Auth::Key, &put).await?;
    anyhow::ensure!(
        run.success,
        "key login: {}\nsshd:\n{}",
        run.stderr,
        sshd.log()
    );
    assert_eq!(std::fs::read(files.join("by-root.db"))?, b"backup bytes");

    let back = work.path().join("back.db");
    let get = format!(
        "put {} {}/by-user.db\nget {}/by-user.db {}\n",
        local.display(),
        files.display(),
        files.display(),
        back.display()
    );
    let run = sftp(
        &sshd,
        PASSWORD_USER,
        &known_hosts,
        Auth::Password(PASSWORD),
        &get,
    )
    .await?;
    anyhow::ensure!(
        run.success,
        "password login: {}\nsshd:\n{}",
        run.stderr,
        sshd.log()
    );
    assert_eq!(std::fs::read(&back)?, b"backup bytes");
    Ok(())
}

#[tokio::test]
async fn sftp_is_refused_a_wrong_password_and_a_wrong_host_key() -> anyhow::Result<()> {
    let sshd = Sshd::start().await?;
    let known_hosts = sshd.known_hosts()?;
    let list = format!("ls {}\n", sshd.files_dir().display());

    let run = sftp(
        &sshd,
        PASSWORD_USER,
        &known_hosts,
        Auth::Password("wrong"),
        &list,
    )
    .await?;
    assert!(!run.success, "a wrong password was accepted");
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);

    // Another server's host key for this address: the client must refuse.
    let other = Sshd::start().await?;
    let other_key = std::fs::read_to_string(other.host_public_key_path())?;
    let wrong_hosts = tempfile::NamedTempFile::new()?;
    std::fs::write(
        wrong_hosts.path(),
        format!("[127.0.0.1]:{} {other_key}", sshd.port),
    )?;
    let run = sftp(&sshd, "root", wrong_hosts.path(), Auth::Key, &list).await?;
    assert!(!run.success, "a wrong host key was accepted");
    assert!(
        run.stderr
            .contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || run.stderr.contains("Host key verification failed"),
        "{}",
        run.stderr
    );

    assert_ne!(sshd.host_key_fingerprint()?, other.host_key_fingerprint()?);
    assert!(sshd.host_key_fingerprint()?.starts_with("SHA256:"));
    Ok(())
}
