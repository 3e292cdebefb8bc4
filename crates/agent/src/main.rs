use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};
use tether_agent::Exit;
use tether_agent::config::Config;
use tether_agent::self_update::{self, guard};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    // Before anything secret is read: a non-dumpable process's /proc
    // files (environ, mem) are root's, and no process of its user may
    // ptrace it, so a management shell session or another program of the
    // agent's user cannot read its enrollment token or keys there.
    // Still one thread: descriptors the agent inherited (a supervisor's,
    // a test harness's) reach none of the commands and helpers it runs.
    close_fds::set_fds_cloexec(3, &[]);
    let dumpable =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    // The update guard (self_update::guard), started by the agent itself:
    // hidden, and before the agent's own flags.
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    if first
        .as_ref()
        .is_some_and(|first| first == guard::BEFORE_START_SUBCOMMAND)
    {
        return match guard::before_start(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tether-agent update-before-start: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if first.is_some_and(|first| first == guard::SUBCOMMAND) {
        return match guard::GuardArgs::parse(args).and_then(guard::run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tether-agent update-guard: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // --version tells the version stamped in this binary.
    let matches = Config::command()
        .version(self_update::agent_version())
        .get_matches();
    let config = Config::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(config, dumpable) {
        Ok(Exit::Stopped) => ExitCode::SUCCESS,
        Ok(Exit::Restart(restart)) => {
            let error = self_update::restart(&restart);
            eprintln!(
                "tether-agent: error: cannot run {}: {error}",
                restart.exe.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tether-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, dumpable: rustix::io::Result<()>) -> anyhow::Result<Exit> {
    dumpable.context("cannot make the agent's process non-dumpable")?;
    let logging = tether_agent::logging::init(&config.log_level)?;
    tether_agent::install_crypto_provider();
    // One thread: the agent mostly waits, and a small footprint matters on devices.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // On the heap: the agent's whole state machine is tens of KB, and each
    // move through block_on would otherwise touch that much more of the
    // main thread's stack, which stays resident while the agent idles.
    // The runtime ends with this function: a restart execs after it.
    runtime.block_on(Box::pin(async {
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
                _ = terminate.recv() => tracing::info!("SIGTERM received; stopping"),
            }
        };
        Ok(tether_agent::run(&config, logging, shutdown).await?)
    }))
}
