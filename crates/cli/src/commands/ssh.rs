//! `tether ssh DEVICE [-- COMMAND…]`: an interactive shell on the device
//! through a `shell` tunnel (ADR 0021), in a terminal there. This
//! terminal goes raw while it runs, so every key (Ctrl-C too) reaches the
//! device's terminal as typed; its size follows this one's; the remote
//! exit status becomes this command's.

use std::io::IsTerminal as _;

use futures::{SinkExt as _, StreamExt as _};
use rustix::termios::{self, OptionalActions, Termios};
use tether_proto::tunnel::{self, Control, Terminal};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_tungstenite::tungstenite::Message;

use super::{CommandError, Context, Outcome};
use crate::tunnel::{self as tunnel_io, Sender};

/// The terminal type when this one has none (or one tetherd would refuse).
const DUMB: &str = "dumb";
/// The remote terminal's size when this process has no terminal.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// Open an interactive shell on a device.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  tether ssh edge-1\n  tether ssh edge-1 -- top\n  # Without a terminal here, the device still runs one (80x24)\n  echo 'uptime; exit' | tether ssh edge-1"
)]
pub struct Ssh {
    /// The device.
    pub device: String,
    /// A command to run in the terminal instead of the login shell, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot read this terminal's settings")]
    GetMode(#[source] std::io::Error),
    #[error("cannot put this terminal in raw mode")]
    RawMode(#[source] std::io::Error),
    #[error("cannot watch this terminal's size (SIGWINCH)")]
    Resizes(#[source] std::io::Error),
}

impl Ssh {
    pub fn description(&self) -> String {
        if self.command.is_empty() {
            format!("open a shell on {}", self.device)
        } else {
            format!(
                "run {:?} in a terminal on {}",
                self.command.join(" "),
                self.device
            )
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        let interactive = std::io::stdin().is_terminal();
        let (cols, rows) = if interactive {
            terminal_size().unwrap_or(DEFAULT_SIZE)
        } else {
            DEFAULT_SIZE
        };
        let term = std::env::var("TERM")
            .ok()
            .filter(|term| Terminal::new(term, 1, 1).is_ok())
            .unwrap_or_else(|| DUMB.to_owned());
        let (cols, rows) = (cols.to_string(), rows.to_string());
        let mut query = vec![
            ("kind", "shell"),
            ("term", term.as_str()),
            ("cols", cols.as_str()),
            ("rows", rows.as_str()),
        ];
        query.extend(self.command.iter().map(|arg| ("command", arg.as_str())));
        let socket = client.tunnel(&self.device, &query).await?;
        // Raw only once the tunnel is up: errors until then print as usual.
        // Restored when this returns, whichever way.
        let _raw = if interactive {
            Some(RawMode::enter()?)
        } else {
            None
        };
        let resizes = if interactive {
            Some(signal(SignalKind::window_change()).map_err(SshError::Resizes)?)
        } else {
            None
        };
        let (sender, receiver) = socket.split();
        // Read on its own task, dropped once the shell ended: a terminal's
        // stdin never ends by itself.
        let input = tokio::spawn(send_keys(tokio::io::stdin(), sender, resizes));
        let outcome = tunnel_io::print_until_exit(receiver, "shell").await;
        input.abort();
        outcome
    }
}

/// This terminal's columns and rows, if it has a usable size.
fn terminal_size() -> Option<(u16, u16)> {
    let size = termios::tcgetwinsize(std::io::stdin()).ok()?;
    let cols = tunnel::side("cols", size.ws_col.into()).ok()?;
    let rows = tunnel::side("rows", size.ws_row.into()).ok()?;
    Some((cols, rows))
}

/// Sends what `input` yields as keystrokes and, on each SIGWINCH, this
/// terminal's new size, until `input` ends. Returns the sender still
/// open: the device's output is still to be read.
async fn send_keys(
    mut input: impl AsyncRead + Unpin,
    mut sender: Sender,
    mut resizes: Option<Signal>,
) -> Sender {
    let mut buffer = vec![0; tunnel::MAX_PAYLOAD];
    loop {
        let frame = tokio::select! {
            read = input.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return sender,
                Ok(read) => tunnel::frame(tunnel::STDIN, &buffer[..read]),
            },
            Some(()) = async { resizes.as_mut()?.recv().await } => {
                let Some((cols, rows)) = terminal_size() else {
                    continue;
                };
                tunnel::control(&Control::Resize { cols, rows })
            }
        };
        if sender.send(Message::Binary(frame.into())).await.is_err() {
            return sender;
        }
    }
}

/// This terminal in raw mode (no echo, no line editing, no signals from
/// keys: the device's terminal does all that) until dropped.
struct RawMode {
    original: Termios,
}

impl RawMode {
    fn enter() -> Result<Self, SshError> {
        let stdin = std::io::stdin();
        let original = termios::tcgetattr(&stdin).map_err(|e| SshError::GetMode(e.into()))?;
        let mut raw = original.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)
            .map_err(|e| SshError::RawMode(e.into()))?;
        Ok(RawMode { original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Nothing to do if it fails: the terminal is gone.
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.original);
    }
}
