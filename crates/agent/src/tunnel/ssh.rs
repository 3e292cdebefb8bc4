//! An `ssh` tunnel (ADR 0023): the tunnel's bytes are one SSH connection
//! to the management shell, served by a `tether-agent-shell` process of
//! its own whose stdin and stdout are one end of a socket pair (in a
//! cluster, one the shell container starts, ADR 0028).

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};

use super::forward::carry;
use super::{Socket, failed};
use crate::management_shell::{Settings, ShellConfig, start_helper};

/// How long the helper has to end its SSH session once the tunnel ended.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Runs the helper for this connection and carries the tunnel to it until
/// either ends; the helper is killed if it outlives the tunnel.
pub async fn serve(socket: Socket, config: ShellConfig, settings: Settings) {
    let (mut sender, receiver) = socket.split();
    let started = start_helper(&config, &settings).await;
    let (helper, stream) = match started {
        Ok(started) => started,
        Err(error) => {
            let message = tether_proto::error_chain(&error);
            tracing::warn!("{message}");
            let _ = sender.send(failed(error.status_code(), message)).await;
            let _ = sender.close().await;
            return;
        }
    };
    tracing::info!(%settings, "management shell tunnel");
    let (from_helper, to_helper) = stream.into_split();
    carry(sender, receiver, from_helper, to_helper).await;
    helper.finish(EXIT_GRACE).await;
}
