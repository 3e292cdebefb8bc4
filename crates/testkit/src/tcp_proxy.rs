//! A TCP proxy on loopback that a test can break: [`TcpProxy::cut`] drops
//! every connection through it and refuses new ones, as a restarted load
//! balancer or a lost network does; [`TcpProxy::pause`] stops forwarding
//! bytes either way and keeps every socket open, as a stalled path does
//! (no FIN, no RST reaches either side). [`TcpProxy::restore`] forwards
//! again. Bytes pass unchanged, so TLS goes through: a client pointed at
//! [`TcpProxy::port`] talks to the upstream server.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forwarding,
    Paused,
    Cut,
}

/// The mode, and how many cuts there were: a connection ends at a cut
/// even when the proxy is restored before its task looks.
#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    cuts: u64,
}

/// The proxy; it stops, closing every connection, when dropped.
pub struct TcpProxy {
    /// Where clients connect (on 127.0.0.1).
    pub port: u16,
    state: watch::Sender<State>,
    accepting: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards each connection to
    /// `upstream`.
    pub async fn to(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy's port")?;
        let port = listener.local_addr()?.port();
        let (state, _) = watch::channel(State {
            mode: Mode::Forwarding,
            cuts: 0,
        });
        let states = state.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let State { mode, cuts } = *states.borrow();
                // Refused: closed at once, before a byte.
                if mode == Mode::Cut {
                    continue;
                }
                tokio::spawn(carry(client, upstream, states.subscribe(), cuts));
            }
        });
        Ok(Self {
            port,
            state,
            accepting,
        })
    }

    /// A proxy to the server of `url` (`https://host:port…`), and `url`
    /// with the proxy's port instead: what a client should be pointed at.
    pub async fn to_url(url: &str) -> anyhow::Result<(Self, String)> {
        let (scheme_host, rest) = url
            .rsplit_once(':')
            .with_context(|| format!("no port in {url}"))?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let port: u16 = rest[..digits]
            .parse()
            .with_context(|| format!("no port in {url}"))?;
        let proxy = Self::to(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let proxied = format!("{scheme_host}:{}{}", proxy.port, &rest[digits..]);
        Ok((proxy, proxied))
    }

    /// Drops every connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.state.send_modify(|state| {
            state.mode = Mode::Cut;
            state.cuts += 1;
        });
    }

    /// Forwards nothing, on open connections and new ones, and closes none,
    /// until [`restore`](Self::restore); what was sent meanwhile is
    /// delivered then.
    pub fn pause(&self) {
        self.state.send_modify(|state| state.mode = Mode::Paused);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.state
            .send_modify(|state| state.mode = Mode::Forwarding);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        // Every connection ends as the state's sender goes.
        self.cut();
    }
}

/// Carries one connection both ways until either side closes it or the
/// proxy is cut (again, after the `cuts` it was accepted at).
async fn carry(
    client: TcpStream,
    upstream: SocketAddr,
    mut state: watch::Receiver<State>,
    cuts: u64,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    let (up, down) = (state.clone(), state.clone());
    let both = async {
        tokio::join!(
            pump(from_client, to_server, up),
            pump(from_server, to_client, down)
        )
    };
    tokio::select! {
        _ = both => {}
        // Dropping the halves closes both sockets.
        _ = state.wait_for(|state| state.cuts != cuts) => {}
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut state: watch::Receiver<State>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        // Held while paused; the sender not reading further either.
        if state
            .wait_for(|state| state.mode != Mode::Paused)
            .await
            .is_err()
        {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
    // The other side hears the end (and may still answer), once forwarding:
    // a stalled path carries no FIN either.
    if state
        .wait_for(|state| state.mode != Mode::Paused)
        .await
        .is_ok()
    {
        let _ = to.shutdown().await;
    }
}
