//! The agent makes itself non-dumpable (ADR 0028, finding B): another
//! process of its user — a management shell session, say — cannot read
//! its environment in /proc, where `TETHER_ENROLL_TOKEN` may be, while it
//! can read that of an ordinary process of the same user.

use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::time::Duration;

use tether_testkit::binaries::binary;
use tether_testkit::wait_until;

/// A user other than the test's (root, which may read anything).
const USER: u32 = 65534;

/// `cat /proc/PID/environ` as [`USER`]: its output, or its error.
fn read_environ_as_user(pid: u32) -> Result<String, String> {
    let output = std::process::Command::new("cat")
        .arg(format!("/proc/{pid}/environ"))
        .uid(USER)
        .gid(USER)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test]
async fn the_agents_environment_is_not_readable_by_another_process_of_its_user() {
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("proc")),
        0,
        "the test runs the agent as another user: run it as root"
    );
    let dir = tempfile::tempdir().expect("a dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("traversable");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("a state dir");
    chown(&state, Some(USER), Some(USER)).expect("the user's");
    // A server that accepts and never answers: the agent waits there,
    // enrolling, with the token in its environment.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let server = format!("https://{}", silent.local_addr().expect("bound"));
    let log = dir.path().join("agent.log");
    let mut agent = tokio::process::Command::new(binary("tether-agent").expect("built"))
        .arg("--state-dir")
        .arg(&state)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TETHER_SERVER", &server)
        .env("TETHER_ENROLL_TOKEN", "the-enrollment-secret")
        .env("TETHER_CA_SHA256", "00".repeat(32))
        .uid(USER)
        .gid(USER)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("a log"))
        .kill_on_drop(true)
        .spawn()
        .expect("the agent starts");
    let pid = agent.id().expect("running");
    wait_until("the agent enrolling", Duration::from_secs(30), || {
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        async move { Ok(logged.contains("enrolling with").then_some(())) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default()));
    assert!(agent.try_wait().expect("waits").is_none(), "still running");

    // An ordinary process of the same user: its environment is readable,
    // so the refusal below is the agent's doing.
    let mut ordinary = std::process::Command::new("sleep")
        .arg("60")
        .env("ORDINARY", "readable")
        .uid(USER)
        .gid(USER)
        .spawn()
        .expect("sleep starts");
    let control = read_environ_as_user(ordinary.id());
    let _ = ordinary.kill();
    let _ = ordinary.wait();
    assert!(
        control
            .as_ref()
            .is_ok_and(|env| env.contains("ORDINARY=readable")),
        "{control:?}"
    );

    let read = read_environ_as_user(pid);
    assert!(
        read.as_ref()
            .is_err_and(|e| e.contains("Permission denied")),
        "{read:?}"
    );
    let _ = agent.kill().await;
}
