//! tether-agent-shell: the management shell's SSH server (ADR 0023), run
//! by tether-agent once per SSH connection. Its stdin is a socket: the
//! first line is the connection's settings as JSON
//! (`management_shell::Settings`), then the client's SSH bytes, answered
//! on the same socket. Errors go to stderr, the agent's log.

use std::os::fd::AsFd as _;
use std::process::ExitCode;

use tether_agent::management_shell::{MAX_SETTINGS_BYTES, Settings, host_key, server};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
    if std::env::args_os().len() > 1 {
        eprintln!(
            "tether-agent-shell takes no arguments: tether-agent runs it with a socket as stdin"
        );
        return ExitCode::from(2);
    }
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
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tether-agent-shell: {error}");
            ExitCode::FAILURE
        }
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
