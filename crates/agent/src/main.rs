use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tether_agent::config::Config;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let config = Config::parse();
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let logging = tether_agent::logging::init(&config.log_level)?;
    tether_agent::install_crypto_provider();
    // One thread: the agent mostly waits, and a small footprint matters on devices.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
                _ = terminate.recv() => tracing::info!("SIGTERM received; stopping"),
            }
        };
        tether_agent::run(&config, logging, shutdown).await?;
        Ok(())
    })
}
