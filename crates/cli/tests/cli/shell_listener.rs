//! The management shell's own listener (`--shell-listen`, ADR 0023): the
//! stock `ssh` client straight to a real agent's port, as a cluster's
//! Service `management-pod` reaches it, with no tetherd in the path.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tether_testkit::wait_until;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

use super::{Run, run_to_end, tetherd};

/// The TCP ports process `pid` listens on: its socket descriptors matched
/// with the system's listening sockets (state 0A in /proc/net/tcp*).
fn tcp_listeners(pid: u32) -> Vec<u16> {
    let mut listening = std::collections::HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"0A")
                && let (Some(local), Some(inode)) = (fields.get(1), fields.get(9))
                && let Some((_, port)) = local.rsplit_once(':')
                && let Ok(port) = u16::from_str_radix(port, 16)
            {
                listening.insert(format!("socket:[{inode}]"), port);
            }
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the agent's descriptors");
    let mut ports: Vec<u16> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| listening.get(target.to_str()?).copied())
        .collect();
    ports.sort_unstable();
    ports
}

/// The port the agent's listener bound (port 0 asked), from its log.
async fn listening_port(agent: &tether_testkit::Agent) -> u16 {
    wait_until(
        "the listener's address in the log",
        Duration::from_secs(30),
        || {
            let log = agent.log();
            async move {
                Ok(log
                    .lines()
                    .find_map(|line| {
                        line.split("the management shell listens on 127.0.0.1:")
                            .nth(1)
                    })
                    .and_then(|port| port.trim().parse::<u16>().ok()))
            }
        },
    )
    .await
    .expect("listening")
}

/// ssh options that log in with a password only, asked once.
const PASSWORD_ONLY: [&str; 6] = [
    "-o",
    "PubkeyAuthentication=no",
    "-o",
    "PreferredAuthentications=password",
    "-o",
    "NumberOfPasswordPrompts=1",
];

/// The stock `ssh` to 127.0.0.1:`port`, with its own `known_hosts`.
struct Client {
    dir: PathBuf,
    port: u16,
}

impl Client {
    async fn run(&self, options: &[&str], command: &str, env: &[(&str, &str)]) -> Run {
        self.run_with_input(options, Some(command), env, "").await
    }

    /// `ssh` with `command` (none: a shell) and `input` on its stdin.
    async fn run_with_input(
        &self,
        options: &[&str],
        command: Option<&str>,
        env: &[(&str, &str)],
        input: &str,
    ) -> Run {
        let known_hosts = format!(
            "UserKnownHostsFile={}",
            self.dir.join("known_hosts").display()
        );
        run_to_end(
            tokio::process::Command::new("ssh")
                .args(["-F", "/dev/null", "-p", &self.port.to_string()])
                .args(["-o", &known_hosts, "-o", "GlobalKnownHostsFile=/dev/null"])
                .args([
                    "-o",
                    "StrictHostKeyChecking=accept-new",
                    "-o",
                    "LogLevel=ERROR",
                ])
                .args(["-o", "IdentitiesOnly=yes"])
                .args(options)
                .arg("operator@127.0.0.1")
                .args(command)
                .envs(env.iter().copied()),
            input,
        )
        .await
    }

    /// Logs in with `password` only, typed by an askpass program.
    async fn with_password(&self, password: &str, command: &str) -> Run {
        let env = self.askpass(password);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.run(&PASSWORD_ONLY, command, &env).await
    }

    /// A shell in a terminal (`-tt`), logged in with `password`, `input`
    /// typed into it.
    async fn with_password_and_input(&self, password: &str, input: &str) -> Run {
        let env = self.askpass(password);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut options = PASSWORD_ONLY.to_vec();
        options.push("-tt");
        self.run_with_input(&options, None, &env, input).await
    }

    /// The environment that has ssh ask an askpass program answering
    /// `password`.
    fn askpass(&self, password: &str) -> [(&'static str, String); 2] {
        let askpass = self.dir.join("askpass");
        std::fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n")).expect("askpass");
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700))
            .expect("executable");
        [
            ("SSH_ASKPASS", askpass.display().to_string()),
            ("SSH_ASKPASS_REQUIRE", "force".to_owned()),
        ]
    }

    /// Logs in with the key at `key` only.
    async fn with_key(&self, key: &Path, command: &str) -> Run {
        let identity = format!("IdentityFile={}", key.display());
        self.run(&["-o", &identity, "-o", "BatchMode=yes"], command, &[])
            .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stock_ssh_client_logs_in_through_the_agents_own_listener_with_its_files() {
    let tetherd = tetherd().await;
    let admin = tetherd.admin().await.expect("admin");
    let scratch = tempfile::tempdir().expect("a dir");
    let work = scratch.path().join("work").display().to_string();
    let password_file = scratch.path().join("password");
    std::fs::write(&password_file, "correct horse battery\n").expect("password");
    // Absent for now: no key logs in.
    let keys_file = scratch.path().join("authorized_keys");
    let env = [
        ("TETHER_AGENT_SHELL_WORK_DIR", work.as_str()),
        ("TETHER_AGENT_SHELL_LISTEN", "127.0.0.1:0"),
        (
            "TETHER_AGENT_SHELL_PASSWORD_FILE",
            password_file.to_str().expect("utf-8"),
        ),
        (
            "TETHER_AGENT_SHELL_AUTHORIZED_KEYS",
            keys_file.to_str().expect("utf-8"),
        ),
    ];
    let agent = tether_testkit::Agent::enroll_with_env(&tetherd, &admin, "edge-1", &env)
        .await
        .expect("an agent");
    let port = listening_port(&agent).await;
    assert_eq!(
        tcp_listeners(agent.pid().expect("running")),
        [port],
        "the agent listens on that port only"
    );
    let client = Client {
        dir: scratch.path().to_owned(),
        port,
    };

    // The password in the file logs in: the session is the tunnel's, in
    // the work dir with HOME there.
    let run = client
        .with_password("correct horse battery", "pwd; echo $HOME")
        .await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, format!("{work}\n{work}\n").as_str()),
        "{}\n{}",
        run.stderr,
        agent.log()
    );
    // An interactive shell in a terminal prompts with the host name.
    let run = client
        .with_password_and_input("correct horse battery", "echo done-$((1+1))\nexit 5\n")
        .await;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(run.code, 5, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!("{}:", hostname.trim())) && run.stdout.contains("done-2"),
        "{}",
        run.stdout
    );
    let run = client.with_password("correct horse", "true").await;
    assert_eq!(run.code, 255, "{}", run.stdout);
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);
    // Nothing secret in the agent's log.
    assert!(!agent.log().contains("correct horse"), "{}", agent.log());

    // A key works once it is in the file: read at each connection, as a
    // mounted Secret changes under a running pod.
    let key = scratch.path().join("id_ed25519");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "me", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs");
    assert!(keygen.success());
    let run = client.with_key(&key, "true").await;
    assert_eq!(run.code, 255, "no key file yet: {}", run.stdout);
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    std::fs::write(&keys_file, format!("# the operator's\n{public}")).expect("authorized");
    let run = client.with_key(&key, "echo in; exit 4").await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (4, "in\n"),
        "{}",
        run.stderr
    );

    // The password file emptied: password login is off.
    std::fs::write(&password_file, "").expect("emptied");
    let run = client.with_password("", "true").await;
    assert_eq!(run.code, 255, "{}", run.stdout);

    // Without the flag the agent listens on nothing.
    let plain = tether_testkit::Agent::enroll(&tetherd, &admin, "edge-2")
        .await
        .expect("another agent");
    plain.wait_presence(&admin, "online").await.expect("online");
    assert_eq!(
        tcp_listeners(plain.pid().expect("running")),
        Vec::<u16>::new()
    );
    assert!(
        !plain.log().contains("management shell listens"),
        "{}",
        plain.log()
    );
}

/// A TCP connection to the listener on 127.0.0.1:`port` from `source`
/// (the whole of 127.0.0.0/8 is the loopback), and when it was opened.
async fn connect_from(source: Ipv4Addr, port: u16) -> (TcpStream, Instant) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.bind((source, 0).into()).expect("bound");
    let stream = socket
        .connect((Ipv4Addr::LOCALHOST, port).into())
        .await
        .expect("connected");
    (stream, Instant::now())
}

/// The first line the agent sends (a served connection's SSH server
/// identification), or what came before it closed the connection.
async fn first_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let read = async {
        while stream.read_u8().await.map(|byte| line.push(byte)).is_ok() && !line.ends_with(b"\n") {
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a line or the end within 30 s");
    String::from_utf8_lossy(&line).into_owned()
}

/// Reads what the agent sends until it closes the connection; a minute at
/// most.
async fn until_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut rest))
        .await
        .expect("closed within a minute")
        .expect("read to the end");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_that_do_not_log_in_are_closed_and_one_address_takes_half_the_slots() {
    let login_timeout = Duration::from_secs(5);
    let tetherd = tetherd().await;
    let admin = tetherd.admin().await.expect("admin");
    let scratch = tempfile::tempdir().expect("a dir");
    let work = scratch.path().join("work").display().to_string();
    let password_file = scratch.path().join("password");
    std::fs::write(&password_file, "correct horse battery\n").expect("password");
    let env = [
        ("TETHER_AGENT_SHELL_WORK_DIR", work.as_str()),
        ("TETHER_AGENT_SHELL_LISTEN", "127.0.0.1:0"),
        (
            "TETHER_AGENT_SHELL_PASSWORD_FILE",
            password_file.to_str().expect("utf-8"),
        ),
        ("TETHER_AGENT_SHELL_LOGIN_TIMEOUT_SECONDS", "5"),
    ];
    let agent = tether_testkit::Agent::enroll_with_env(&tetherd, &admin, "edge-1", &env)
        .await
        .expect("an agent");
    let port = listening_port(&agent).await;
    let from = |last: u8| Ipv4Addr::new(127, 0, 0, last);

    // Every slot taken by connections that send nothing, four from each of
    // two addresses: each is served (the server's identification comes),
    // a fifth from one address and any from a third are closed at once.
    let mut idle = Vec::new();
    for source in [from(1), from(2)] {
        for _ in 0..4 {
            let (mut stream, opened) = connect_from(source, port).await;
            let line = first_line(&mut stream).await;
            assert!(
                line.starts_with("SSH-2.0-tether-agent-shell"),
                "{line:?}\n{}",
                agent.log()
            );
            idle.push((stream, opened));
        }
        let (mut refused, _) = connect_from(source, port).await;
        assert_eq!(first_line(&mut refused).await, "", "a fifth from {source}");
    }
    let (mut refused, _) = connect_from(from(3), port).await;
    assert_eq!(first_line(&mut refused).await, "", "all eight are taken");

    // The agent closes each once the login timeout passed, and gives its
    // slot back though the client keeps its end open.
    for (stream, opened) in &mut idle {
        until_closed(stream).await;
        assert!(opened.elapsed() >= login_timeout, "{:?}", opened.elapsed());
    }
    wait_until(
        "the eight slots given back",
        Duration::from_secs(30),
        || {
            let ended = agent
                .log()
                .matches("management shell connection ended")
                .count();
            async move { Ok((ended == 8).then_some(())) }
        },
    )
    .await
    .expect("given back");
    let log = agent.log();
    for line in [
        "no login within 5 s",
        "4 are open from this address already",
        "8 are open already",
    ] {
        assert!(log.contains(line), "{line}: {log}");
    }

    // Then a real login gets in, and a session outlives the login timeout.
    let client = Client {
        dir: scratch.path().to_owned(),
        port,
    };
    let run = client
        .with_password("correct horse battery", "sleep 6; echo still here")
        .await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "still here\n"),
        "{}\n{}",
        run.stderr,
        agent.log()
    );
    drop(idle);
}

/// The user the simulated shell container runs as: not the test's (root,
/// standing for the agent's user), as the join manifest runs it.
const SHELL_USER: u32 = 65534;

/// In a cluster (ADR 0028) the agent hands each connection over a Unix
/// socket to `tether-agent-shell serve`, the pod's shell container. Here
/// that container is a second process run as another user, with its own
/// work dir, host key and login file, sharing only the socket's
/// directory with the agent. A session logs in through the agent's
/// listener, runs commands with that user's rights and returns its exit
/// status; it cannot read the agent's state dir, a stand-in for its
/// ServiceAccount token (in the pod neither is mounted in the shell
/// container; here they exist but belong to the agent's user), nor the
/// agent's environment, and its own connection to the socket starts
/// nothing: only the agent's user may.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_handed_to_the_shell_container_run_as_its_user_out_of_the_agents_reach() {
    use std::os::unix::fs::chown;
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("proc")),
        0,
        "the test switches to another user for the shell container: run it as root"
    );
    let tetherd = tetherd().await;
    let admin = tetherd.admin().await.expect("admin");
    let scratch = tempfile::tempdir().expect("a dir");
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
        .expect("traversable");
    // The shell container's own directories.
    let shell_home = scratch.path().join("shell");
    std::fs::create_dir(&shell_home).expect("the shell's dir");
    chown(&shell_home, Some(SHELL_USER), Some(SHELL_USER)).expect("the shell's");
    let password_file = shell_home.join("password");
    std::fs::write(&password_file, "container secret\n").expect("password");
    chown(&password_file, Some(SHELL_USER), Some(SHELL_USER)).expect("the shell's");
    let work = shell_home.join("work");
    // The shared emptyDir (world-writable, as Kubernetes makes it).
    let shared = scratch.path().join("shared");
    std::fs::create_dir(&shared).expect("the shared dir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("shared");
    let socket = shared.join("shell.sock");
    // The agent's token, where only the agent's user may read it.
    let account = scratch.path().join("account");
    std::fs::create_dir(&account).expect("the account's dir");
    std::fs::write(account.join("token"), "the agent's token").expect("a token");
    std::fs::set_permissions(&account, std::fs::Permissions::from_mode(0o700)).expect("private");
    let shell_log = scratch.path().join("shell.log");
    let mut shell = tokio::process::Command::new(
        tether_testkit::binaries::binary("tether-agent-shell").expect("built"),
    );
    shell
        .args(["serve", "--socket"])
        .arg(&socket)
        .args(["--agent-uid", "0"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .uid(SHELL_USER)
        .gid(SHELL_USER)
        .current_dir(&shell_home)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&shell_log).expect("a log"))
        .kill_on_drop(true);
    let _shell = shell.spawn().expect("the shell container's process");
    wait_until("the shell's socket", Duration::from_secs(30), || {
        let exists = socket.exists();
        async move { Ok(exists.then_some(())) }
    })
    .await
    .expect("listening");

    let (work_text, socket_text) = (work.display().to_string(), socket.display().to_string());
    let host_key = shell_home.join("host_key").display().to_string();
    let env = [
        ("TETHER_AGENT_SHELL_LISTEN", "127.0.0.1:0"),
        ("TETHER_AGENT_SHELL_SOCKET", socket_text.as_str()),
        ("TETHER_AGENT_SHELL_WORK_DIR", work_text.as_str()),
        ("TETHER_AGENT_SHELL_HOST_KEY", host_key.as_str()),
        (
            "TETHER_AGENT_SHELL_PASSWORD_FILE",
            password_file.to_str().expect("utf-8"),
        ),
    ];
    let agent = tether_testkit::Agent::enroll_with_env(&tetherd, &admin, "edge-1", &env)
        .await
        .expect("an agent");
    let port = listening_port(&agent).await;
    let client = Client {
        dir: scratch.path().to_owned(),
        port,
    };
    let agent_pid = agent.pid().expect("running");
    let state = agent.state_dir();
    let probes = [
        state.display().to_string(),
        account.join("token").display().to_string(),
        format!("/proc/{agent_pid}/environ"),
    ];
    let command = format!(
        "id -u; pwd; for f in {}; do if cat \"$f\" >/dev/null 2>&1 || ls \"$f\"/ >/dev/null 2>&1; \
         then echo \"read $f\"; else echo \"cannot read $f\"; fi; done; \
         /usr/bin/python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); \
         s.connect(\"{socket_text}\"); print(\"socket:\", s.recv(100))'; \
         exit 3",
        probes.join(" ")
    );
    let run = client.with_password("container secret", &command).await;
    let expected = format!(
        "{SHELL_USER}\n{work_text}\ncannot read {}\ncannot read {}\ncannot read {}\nsocket: b''\n",
        probes[0], probes[1], probes[2]
    );
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (3, expected.as_str()),
        "{}\n{}\n{}",
        run.stderr,
        agent.log(),
        std::fs::read_to_string(&shell_log).unwrap_or_default()
    );
    // The work dir and host key are the shell's user's, made by its
    // helper; the agent's log shows no helper of its own.
    let owner = |path: &Path| {
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path).expect("exists"))
    };
    assert_eq!(owner(&work), SHELL_USER);
    assert_eq!(owner(&shell_home.join("host_key")), SHELL_USER);
    let shell_log = std::fs::read_to_string(&shell_log).unwrap_or_default();
    assert!(
        shell_log.contains(&format!("uid={SHELL_USER}"))
            && shell_log.contains("only the agent's user (0) may start sessions"),
        "the session's own connection was refused: {shell_log}"
    );
}
