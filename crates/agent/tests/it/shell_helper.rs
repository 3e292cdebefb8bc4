//! The management shell's helper `tether-agent-shell` against a hostile
//! client: the real helper on a socket pair, as the agent starts it, and
//! a russh client that asks for everything an SSH server may be asked for
//! (stock `ssh` refuses to send some of it, such as control characters
//! in the user name).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tether_agent::management_shell::Settings;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long a reply may take.
const REPLY: Duration = Duration::from_secs(10);

struct Client;

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A helper serving one connection with `settings` (its log on standard
/// error), the client's end, and the client's socket to shut down as a
/// client that vanished does (its process gone).
async fn connect(
    settings: &Settings,
) -> (
    tokio::process::Child,
    Handle<Client>,
    std::os::unix::net::UnixStream,
) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    let theirs_out = theirs.try_clone().expect("cloned");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether-agent-shell"))
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the helper starts");
    let vanish = ours.try_clone().expect("cloned");
    ours.set_nonblocking(true).expect("non-blocking");
    let mut stream = tokio::net::UnixStream::from_std(ours).expect("a tokio socket");
    let mut line = serde_json::to_vec(settings).expect("serialized");
    line.push(b'\n');
    stream.write_all(&line).await.expect("settings written");
    let session = client::connect_stream(Arc::new(client::Config::default()), stream, Client)
        .await
        .expect("the SSH handshake");
    (child, session, vanish)
}

/// The next reply on `channel`: `Some(true)` for success, `Some(false)`
/// for failure, `None` if none came in time.
async fn reply(channel: &mut russh::Channel<client::Msg>) -> Option<bool> {
    let waited = tokio::time::timeout(REPLY, async {
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => return Some(true),
                Some(ChannelMsg::Failure) => return Some(false),
                Some(_) => {}
                None => return None,
            }
        }
    });
    waited.await.ok().flatten()
}

/// The key [`settings`] authorizes.
fn key() -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]))
}

/// Settings that let [`key`] in, with the work dir and host key in `dir`.
fn settings(dir: &Path) -> Settings {
    Settings {
        authorized_keys: vec![key().public_key().to_openssh().expect("OpenSSH")],
        password_hash: None,
        authorized_keys_file: None,
        password_file: None,
        kubeconfig: None,
        work_dir: dir.join("work"),
        host_key: dir.join("host_key"),
        login_timeout_seconds: 30,
    }
}

/// A helper with [`settings`] and a client logged in with [`key`].
async fn logged_in(
    dir: &Path,
) -> (
    tokio::process::Child,
    Handle<Client>,
    std::os::unix::net::UnixStream,
) {
    let (helper, mut session, vanish) = connect(&settings(dir)).await;
    let login = session
        .authenticate_publickey("me", PrivateKeyWithHashAlg::new(Arc::new(key()), None))
        .await
        .expect("answered");
    assert!(login.success(), "the authorized key logs in");
    (helper, session, vanish)
}

/// What `command` writes on a new channel of `session`, and its status.
async fn run(session: &Handle<Client>, command: &str) -> (String, Option<u32>) {
    let mut channel = session.channel_open_session().await.expect("a session");
    channel.exec(true, command).await.expect("sent");
    let mut output = Vec::new();
    let mut status = None;
    while let Some(message) = tokio::time::timeout(REPLY, channel.wait())
        .await
        .expect("the command ends in time")
    {
        match message {
            ChannelMsg::Data { data } => output.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            _ => {}
        }
    }
    (String::from_utf8_lossy(&output).into_owned(), status)
}

/// The helper's resident memory in KiB.
fn resident_kib(helper: &tokio::process::Child) -> u64 {
    let pid = helper.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_client_gets_sessions_only_and_cannot_forge_the_helpers_log() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let key = key();
    let (mut helper, mut session, _) = connect(&settings(dir.path())).await;

    let none = session.authenticate_none("me").await.expect("answered");
    assert!(!none.success(), "the none method logs nobody in");
    let password = session
        .authenticate_password("me", "")
        .await
        .expect("answered");
    assert!(!password.success(), "password login is off");
    // A user name that would retitle a terminal and forge a log line.
    let user = "me\u{1b}]0;owned\u{7}\n2026-01-01T00:00:00Z  INFO FORGED";
    let login = session
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .expect("answered");
    assert!(login.success(), "the authorized key logs in");

    let target = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bound");
    let port = target.local_addr().expect("an address").port();
    let direct = session
        .channel_open_direct_tcpip("127.0.0.1", port.into(), "127.0.0.1", 1)
        .await;
    assert!(direct.is_err(), "direct-tcpip is refused");
    assert!(
        session.tcpip_forward("127.0.0.1", 0).await.is_err(),
        "tcpip-forward is refused"
    );

    let mut channel = session.channel_open_session().await.expect("a session");
    for (name, accepted) in [
        ("LD_PRELOAD", false),
        ("PATH", false),
        ("BASH_ENV", false),
        ("LANG", true),
    ] {
        channel
            .set_env(true, name, "/tmp/evil")
            .await
            .expect("sent");
        assert_eq!(reply(&mut channel).await, Some(accepted), "env {name}");
    }
    channel.agent_forward(true).await.expect("sent");
    assert_eq!(reply(&mut channel).await, Some(false), "agent forwarding");
    channel
        .request_x11(true, false, "MIT-MAGIC-COOKIE-1", "00", 0)
        .await
        .expect("sent");
    assert_eq!(
        reply(&mut channel).await,
        Some(false),
        "x11 forwarding is refused, not left unanswered"
    );
    channel.request_subsystem(true, "sftp").await.expect("sent");
    assert_eq!(reply(&mut channel).await, Some(false), "no subsystem");

    channel
        .exec(
            true,
            "printf '%s|%s|' \"$LD_PRELOAD\" \"$LANG\"; ls -l /proc/self/fd/",
        )
        .await
        .expect("sent");
    let mut output = Vec::new();
    let mut status = None;
    while let Some(message) = tokio::time::timeout(REPLY, channel.wait())
        .await
        .expect("the command ends in time")
    {
        match message {
            ChannelMsg::Data { data } => output.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            _ => {}
        }
    }
    assert_eq!(status, Some(0));
    let output = String::from_utf8_lossy(&output);
    assert!(
        output.starts_with("|/tmp/evil|"),
        "no variable but LANG set: {output}"
    );
    // The helper's end of the connection stays its own.
    assert!(output.contains("pipe:"), "{output}");
    assert!(!output.contains("socket:"), "{output}");

    drop(channel);
    session
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await
        .expect("disconnected");
    drop(session);
    tokio::time::timeout(REPLY, helper.wait())
        .await
        .expect("the helper ends with its connection")
        .expect("waited");
    let mut log = String::new();
    helper
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut log)
        .await
        .expect("the log");
    assert!(log.contains("management shell runs"), "{log}");
    assert!(!log.contains('\u{1b}'), "a raw escape in the log: {log}");
    assert!(
        !log.lines()
            .any(|line| line.contains("FORGED") && !line.contains("me\\")),
        "a forged log line: {log}"
    );
}

#[tokio::test]
async fn a_channel_flooded_before_it_runs_anything_is_closed_and_the_connection_lives_on() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (mut helper, session, _) = logged_in(dir.path()).await;
    // No reply wanted, as OpenSSH's SendEnv: before the limit, 200 of
    // them filled russh's queue of the channel, and the connection hung
    // for good, the helper too once the client had gone.
    let mut flooded = session.channel_open_session().await.expect("a session");
    for _ in 0..200 {
        flooded.set_env(false, "LANG", "C").await.expect("sent");
    }
    flooded.exec(true, "echo never").await.expect("sent");
    let closed = tokio::time::timeout(REPLY, async {
        loop {
            match flooded.wait().await {
                Some(ChannelMsg::Close) | None => return true,
                Some(ChannelMsg::Data { .. }) => return false,
                Some(_) => {}
            }
        }
    });
    assert!(
        closed.await.expect("an answer in time"),
        "the channel is closed"
    );

    assert_eq!(
        run(&session, "echo fine").await,
        ("fine\n".to_owned(), Some(0))
    );
    drop(flooded);
    drop(session);
    tokio::time::timeout(REPLY, helper.wait())
        .await
        .expect("the helper ends with its connection")
        .expect("waited");
}

#[tokio::test]
async fn channels_closed_before_they_run_anything_are_forgotten() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (helper, session, _) = logged_in(dir.path()).await;
    let open_and_close = async |times: usize| {
        for _ in 0..times {
            let channel = session.channel_open_session().await.expect("a session");
            channel.close().await.expect("closed");
        }
        // A command after them: they have all been handled.
        assert_eq!(
            run(&session, "echo fine").await,
            ("fine\n".to_owned(), Some(0))
        );
    };
    open_and_close(1000).await;
    let before = resident_kib(&helper);
    // Kept, each cost about 3.4 KiB: 68 MB for these.
    open_and_close(20_000).await;
    let grown = resident_kib(&helper).saturating_sub(before);
    assert!(grown < 8 * 1024, "the helper grew by {grown} KiB");
}

#[tokio::test]
async fn at_most_ten_session_channels_wait_to_run_something() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (_helper, session, _) = logged_in(dir.path()).await;
    let mut waiting = Vec::new();
    for _ in 0..10 {
        waiting.push(session.channel_open_session().await.expect("a session"));
    }
    assert!(
        session.channel_open_session().await.is_err(),
        "an eleventh is refused"
    );
    let first = waiting.remove(0);
    first.exec(true, "true").await.expect("sent");
    assert_eq!(
        run(&session, "echo fine").await,
        ("fine\n".to_owned(), Some(0))
    );
}

#[tokio::test]
async fn the_helper_ends_when_the_client_leaves_a_connection_stuck_on_a_command_that_reads_nothing()
{
    let dir = tempfile::tempdir().expect("a temp dir");
    let (mut helper, session, vanish) = logged_in(dir.path()).await;
    let mut channel = session.channel_open_session().await.expect("a session");
    channel.exec(true, "sleep 600").await.expect("sent");
    assert_eq!(reply(&mut channel).await, Some(true));
    // russh takes data faster than the command's stdin (which nothing
    // reads): its queue for the channel fills and the whole connection
    // stops, reading nothing more from the client (a limit of russh's
    // flow control).
    let chunk = vec![0u8; 32 * 1024];
    let flooded = tokio::time::timeout(Duration::from_secs(3), async {
        for _ in 0..400 {
            channel.data(&chunk[..]).await.expect("sent");
        }
    });
    assert!(flooded.await.is_err(), "the connection stopped reading");
    vanish
        .shutdown(std::net::Shutdown::Both)
        .expect("the client vanished");
    tokio::time::timeout(Duration::from_secs(20), helper.wait())
        .await
        .expect("the helper ends once the client has gone")
        .expect("waited");
}

/// A command that is not UTF-8 is refused, saying so on stderr, rather
/// than run with its bytes replaced (another command than the one sent);
/// the connection lives on.
#[tokio::test]
async fn a_command_that_is_not_utf8_is_refused_and_not_run_altered() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (_helper, session, _) = logged_in(dir.path()).await;
    let marker = dir.path().join("ran");
    let mut command = format!("touch {} #", marker.display()).into_bytes();
    command.extend_from_slice(b"\xff\xfe");
    let mut channel = session.channel_open_session().await.expect("a session");
    channel.exec(true, command).await.expect("sent");
    let mut stderr = Vec::new();
    let refused = tokio::time::timeout(REPLY, async {
        loop {
            match channel.wait().await {
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => stderr.extend_from_slice(&data),
                Some(ChannelMsg::Failure) => return true,
                Some(ChannelMsg::Success) | None => return false,
                Some(_) => {}
            }
        }
    })
    .await
    .expect("answered in time");
    assert!(refused, "the request fails");
    assert_eq!(
        String::from_utf8_lossy(&stderr),
        "tether-agent-shell: cannot run the command: it is not valid UTF-8; send the command as UTF-8 text\r\n"
    );
    assert!(!marker.exists(), "nothing ran");
    assert_eq!(
        run(&session, "echo still here").await,
        ("still here\n".to_owned(), Some(0))
    );
}

/// A session's command holds no descriptor of the helper's (its SSH
/// socket, other sessions' terminals, the host key): only its own
/// stdin, stdout and stderr, and what `ls` opens itself.
#[tokio::test]
async fn a_sessions_command_inherits_no_descriptor_but_its_three_streams() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (_helper, session, _) = logged_in(dir.path()).await;
    // Another session with a terminal open meanwhile.
    let mut other = session.channel_open_session().await.expect("a session");
    other
        .request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .expect("a terminal");
    other.request_shell(true).await.expect("a shell");
    assert_eq!(reply(&mut other).await, Some(true));
    assert_eq!(reply(&mut other).await, Some(true));
    let (listed, status) = run(&session, "ls /proc/self/fd | sort -n | tr '\\n' ' '").await;
    assert_eq!((listed.as_str(), status), ("0 1 2 3 ", Some(0)));
}
