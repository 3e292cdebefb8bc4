use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tether_cli::output::printable;
use tether_cli::{Cli, Outcome};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(usage) = cli.command.check_usage() {
        usage
            .format(&mut <Cli as clap::CommandFactory>::command())
            .exit();
    }
    match run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        // Statuses above 255 wrap as a shell's do.
        Ok(Outcome::Exited(code)) => ExitCode::from(code as u8),
        Ok(Outcome::Failed { reason }) => {
            eprintln!("error: {}", printable(&reason));
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {}", printable(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let filter = EnvFilter::try_new(&cli.log_level).with_context(|| {
        format!(
            "invalid --log-level {:?}; try `info` or `debug`",
            cli.log_level
        )
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Before any TLS: reqwest brings no crypto provider of its own.
    tether_cli::client::ensure_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let description = cli.command.description();
    let outcome = runtime.block_on(cli.run());
    // A read of stdin (`exec`, `proxy`) blocks a thread that nothing can
    // cancel: waiting for it would hold the exit until stdin ends.
    runtime.shutdown_background();
    outcome.with_context(|| format!("failed to {description}"))
}
