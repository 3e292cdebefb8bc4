//! tether-agent-shell: the management shell's SSH server (ADR 0023), run
//! by tether-agent once per SSH connection. Its stdin is a socket: the
//! first line is the connection's settings as JSON
//! (`management_shell::Settings`), then the client's SSH bytes, answered
//! on the same socket. Errors go to stderr, the agent's log.
//!
//! `tether-agent-shell serve --socket PATH --agent-uid UID` is the
//! cluster's shell container (ADR 0028): it runs itself that way for each
//! connection the agent makes to PATH.

use std::os::fd::AsFd as _;
use std::process::ExitCode;

use tether_agent::management_shell::handoff::{self, HandoffConfig};
use tether_agent::management_shell::{MAX_SETTINGS_BYTES, Settings, host_key, server};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

fn main() -> ExitCode {
    // Before any thread: descriptors inherited from the agent's side (its
    // supervisor's, a test harness's) beyond the connection on stdin and
    // stdout and the log on stderr reach no session's command.
    close_fds::set_fds_cloexec(3, &[]);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
    let handoff = match handoff_config(std::env::args().skip(1).collect()) {
        Ok(handoff) => handoff,
        Err(usage) => {
            eprintln!("tether-agent-shell: {usage}");
            return ExitCode::from(2);
        }
    };
    // One connection: one thread is plenty.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tether-agent-shell: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let served = match handoff {
        Some(config) => runtime
            .block_on(handoff::serve(config))
            .map_err(|e| tether_proto::error_chain(&e)),
        None => runtime.block_on(run()),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tether-agent-shell: {error}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: tether-agent-shell (tether-agent runs it with a socket as stdin), or tether-agent-shell serve --socket PATH --agent-uid UID";

/// `serve`'s settings, or none for one connection on stdin.
fn handoff_config(args: Vec<String>) -> Result<Option<HandoffConfig>, String> {
    let Some((command, flags)) = args.split_first() else {
        return Ok(None);
    };
    if command != "serve" {
        return Err(format!("unknown argument {command:?}; {USAGE}"));
    }
    let (mut socket, mut agent_uid) = (None, None);
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        let value = flags
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--socket" => socket = Some(value.into()),
            "--agent-uid" => {
                agent_uid = Some(value.parse::<u32>().map_err(|_| {
                    format!("--agent-uid {value:?} is not a user id (a number); {USAGE}")
                })?);
            }
            _ => return Err(format!("unknown flag {flag:?}; {USAGE}")),
        }
    }
    let helper = std::env::current_exe()
        .map_err(|e| format!("cannot tell where this executable is: {e}"))?;
    match (socket, agent_uid) {
        (Some(socket), Some(agent_uid)) => Ok(Some(HandoffConfig {
            socket,
            agent_uid,
            helper,
        })),
        _ => Err(format!("serve needs --socket and --agent-uid; {USAGE}")),
    }
}

async fn run() -> Result<(), String> {
    let stdin = std::io::stdin();
    let watched = stdin
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("stdin is not a socket: {e}"))?;
    let socket = stdin
        .as_fd()
        .try_clone_to_owned()
        .map(std::os::unix::net::UnixStream::from)
        .and_then(|socket| {
            socket.set_nonblocking(true)?;
            tokio::net::UnixStream::from_std(socket)
        })
        .map_err(|e| format!("stdin is not a socket: {e}"))?;
    let mut stream = BufReader::new(socket);
    let mut line = String::new();
    (&mut stream)
        .take(MAX_SETTINGS_BYTES)
        .read_line(&mut line)
        .await
        .map_err(|e| format!("cannot read the settings line: {e}"))?;
    // Only where it went wrong: the line holds the password hash.
    let settings: Settings = serde_json::from_str(&line).map_err(|e| {
        format!(
            "the first line on stdin is not the shell's settings ({:?} error at column {})",
            e.classify(),
            e.column()
        )
    })?;
    tracing::info!(%settings, "management shell connection");
    let key =
        host_key::load_or_create(&settings.host_key).map_err(|e| tether_proto::error_chain(&e))?;
    tokio::select! {
        served = server::serve(stream, settings, key) => {
            served.map_err(|e| tether_proto::error_chain(&e))
        }
        () = server::client_gone(watched) => {
            tracing::info!("the client has gone and the connection did not end: ended");
            Ok(())
        }
    }
}
