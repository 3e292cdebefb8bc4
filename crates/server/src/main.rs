use clap::Parser;
use tether_server::config::{Flags, ServerConfig};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let print_config = flags.print_config;
    let config = ServerConfig::load(flags)?;
    if print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    tracing_subscriber::fmt()
        // Colours for a person at a terminal; none for journald or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_new(format!("{},rmqtt=warn,rmqtt_net=warn", config.log_level))
                .unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    if let Err(error) = tether_server::run(config, shutdown_signal()).await {
        anyhow::bail!("tetherd stopped: {}", tether_server::error_chain(&error));
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
