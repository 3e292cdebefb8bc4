//! `tether ssh` through a real terminal (tmux) to a real agent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tether_testkit::wait_until;

use super::{Tether, sleeping, tetherd};

/// A tmux server of its own (its socket in a temp dir) with one 80x24
/// session running `command`.
struct Tmux {
    dir: tempfile::TempDir,
}

impl Tmux {
    fn start(command: &str) -> Self {
        let tmux = Tmux {
            dir: tempfile::tempdir().expect("a temp dir for tmux"),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "80",
            "-y",
            "24",
            command,
        ]);
        tmux
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    fn run(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux runs");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Types `keys` (tmux key names, such as `Enter` or `C-c`).
    fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend(keys);
        self.run(&args);
    }

    /// Types a line and Enter.
    fn line(&self, text: &str) {
        self.send(&["-l", text]);
        self.send(&["Enter"]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    /// Waits until the screen shows `wanted` on a line of its own (an
    /// output, not the typed command that made it).
    async fn shows(&self, wanted: &str, within: Duration) {
        wait_until(&format!("{wanted:?} on the screen"), within, || async {
            Ok(self
                .screen()
                .lines()
                .any(|line| line.trim_end() == wanted)
                .then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}; screen:\n{}", self.screen()));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .arg("-S")
            .arg(self.socket())
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}

/// A file's contents once it has any, within 30 s.
async fn written(path: &Path) -> String {
    wait_until(
        &format!("{} to be written", path.display()),
        Duration::from_secs(30),
        || async {
            Ok(std::fs::read_to_string(path)
                .ok()
                .filter(|text| text.ends_with('\n')))
        },
    )
    .await
    .expect("written")
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_gives_an_interactive_shell_in_a_real_terminal() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let agent = tether_testkit::Agent::enroll_online(&tetherd, &admin, "edge-1")
        .await
        .expect("a real agent online");
    let exit = tether.dir.path().join("exit");
    let stty = tether.dir.path().join("stty");
    // After the CLI: its exit status, and this terminal's settings, which
    // must be back from raw.
    let command = format!(
        "TETHER_CLI_CONFIG={config} {tether} ssh edge-1; echo EXIT=$? > {exit}; stty -a > {stty}",
        config = tether.config().display(),
        tether = env!("CARGO_BIN_EXE_tether"),
        exit = exit.display(),
        stty = stty.display(),
    );
    let tmux = Tmux::start(&command);
    // The device's shell: a prompt, then a command and its output.
    wait_until("a prompt", Duration::from_secs(30), || async {
        Ok((!tmux.screen().trim().is_empty()).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; agent log:\n{}", agent.log()));
    tmux.line("echo hello-$((6*7))");
    tmux.shows("hello-42", Duration::from_secs(10)).await;
    tmux.line("stty size");
    tmux.shows("24 80", Duration::from_secs(10)).await;

    // The size follows the local terminal's.
    tmux.run(&["resize-window", "-t", "t", "-x", "100", "-y", "30"]);
    tmux.line("clear; stty size");
    tmux.shows("30 100", Duration::from_secs(10)).await;

    // Ctrl-C reaches the remote terminal, which interrupts its foreground
    // job; the shell lives on.
    let seconds = 200_000 + std::process::id();
    tmux.line(&format!("sleep {seconds}"));
    wait_until("the sleep to start", Duration::from_secs(10), || async {
        Ok(sleeping(seconds).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; screen:\n{}", tmux.screen()));
    tmux.send(&["C-c"]);
    tmux.line("echo after-$((1+1))");
    tmux.shows("after-2", Duration::from_secs(5)).await;
    assert!(!sleeping(seconds), "the sleep was interrupted");

    // The remote exit status becomes the CLI's, and the terminal is
    // cooked again.
    tmux.line("exit 3");
    assert_eq!(written(&exit).await, "EXIT=3\n");
    let settings = written(&stty).await;
    let flags: Vec<&str> = settings.split_whitespace().collect();
    for flag in ["icanon", "echo", "isig", "icrnl", "opost"] {
        assert!(flags.contains(&flag), "{flag} is off: {settings}");
    }
}

/// Whether process `pid` has ended (a zombie left to an init that does
/// not reap counts as ended).
fn ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| stat.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_hangs_up_the_shell_and_what_it_started_when_the_client_goes_away() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let agent = tether_testkit::Agent::enroll_online(&tetherd, &admin, "edge-1")
        .await
        .expect("a real agent online");
    let pids = tether.dir.path().join("pids");
    // The shell, a job of its own that ignores SIGHUP, and a child.
    let script = format!(
        "echo $$ > {pids}; (trap '' HUP; sleep 1000) & echo $! >> {pids}; sleep 1000 & echo $! >> {pids}; echo started; wait",
        pids = pids.display()
    );
    let mut ssh = tether.follow(&["ssh", "edge-1", "--", "sh", "-c", &script]);
    ssh.lines_with("started", 1, "error").await;
    let pids: Vec<u32> = written(&pids)
        .await
        .lines()
        .map(|pid| pid.parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|pid| !ended(*pid)));

    ssh.child.kill().await.expect("the client goes");
    wait_until(
        "the shell and its jobs to end",
        Duration::from_secs(30),
        || async { Ok(pids.iter().all(|pid| ended(*pid)).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}; agent log:\n{}", agent.log()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shell_tunnel_with_a_bad_terminal_is_refused_naming_the_parameter() {
    let tetherd = tetherd().await;
    let admin = tetherd.admin().await.expect("admin");
    for (query, says) in [
        ("term=xterm&cols=0&rows=24", "cols 0 is out of range"),
        ("term=xterm&cols=80&rows=5000", "rows 5000 is out of range"),
        (
            "term=xterm&cols=many&rows=24",
            "cols \"many\" is not a number",
        ),
        ("term=x%1Bterm&cols=80&rows=24", "is not a terminal type"),
        ("cols=80&rows=24", "shell needs its terminal"),
    ] {
        let reply = admin
            .get(&format!("/api/v1/devices/edge-1/tunnel?kind=shell&{query}"))
            .await
            .expect("an answer");
        let body = reply.expect_status(400).expect("refused");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains(says)),
            "{query}: {body}"
        );
    }
}
