//! The management shell's own TCP listener (`--shell-listen`, ADR 0023):
//! how a cluster reaches it under the Service `management-pod`, with no
//! tetherd user behind the connection. Off unless configured; logins come
//! from the operator's files only (`--shell-authorized-keys`,
//! `--shell-password-file`, a mounted Secret in the join manifest).
//!
//! Each accepted connection gets a helper of its own, as an `ssh` tunnel
//! does, and the agent carries the bytes between the TCP connection and
//! the helper's socket: the settings line must come first on the helper's
//! stdin, which the client's bytes cannot share. At most
//! [`MAX_CONNECTIONS`] at once, [`MAX_CONNECTIONS_PER_PEER`] of them from
//! one peer; more are closed at once. A connection that does not log in
//! within the login timeout is closed by its helper, which frees its slot:
//! idle connections cannot keep operators out.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::{Settings, ShellConfig, cluster_kubeconfig, start_helper};

/// Concurrent connections the listener serves; each is a process.
pub const MAX_CONNECTIONS: usize = 8;
/// Concurrent connections from one peer ([`peer_key`]), so that one
/// address cannot take every slot. Behind a NAT (a NodePort Service that
/// rewrites source addresses) every client shares this.
pub const MAX_CONNECTIONS_PER_PEER: usize = 4;
/// How long the helper has to end its SSH session once the client left,
/// and to hand over its last bytes once it exited.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Where the listener listens and who may log in through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// An OpenSSH `authorized_keys` file, read at each connection.
    pub authorized_keys_file: Option<PathBuf>,
    /// A file holding the password in clear, read at each connection.
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for management shell connections on {address} (--shell-listen)")]
pub struct ListenError {
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The bound listener, serving once [`Listener::serve`] runs.
pub struct Listener {
    tcp: TcpListener,
    config: ListenerConfig,
}

impl Listener {
    /// Binds `config.address`; the address bound is logged (a port 0 is
    /// chosen by the system).
    pub async fn bind(config: ListenerConfig) -> Result<Self, ListenError> {
        let failed = |source| ListenError {
            address: config.address,
            source,
        };
        let tcp = TcpListener::bind(config.address).await.map_err(failed)?;
        let bound = tcp.local_addr().map_err(failed)?;
        tracing::info!("the management shell listens on {bound}");
        Ok(Self { tcp, config })
    }

    /// Accepts connections until the task is aborted, each served by a
    /// helper of its own.
    pub async fn serve(self, shell: ShellConfig, kubernetes: crate::actions::Kubernetes) {
        let slots = Arc::new(Slots::default());
        loop {
            let (tcp, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, most likely: give them time back.
                    tracing::warn!(%error, "cannot accept a management shell connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let slot = match Slots::take(&slots, peer.ip()) {
                Ok(slot) => slot,
                Err(Full::All) => {
                    tracing::warn!(%peer, "management shell connection refused: {MAX_CONNECTIONS} are open already");
                    continue;
                }
                Err(Full::Peer) => {
                    tracing::warn!(%peer, "management shell connection refused: {MAX_CONNECTIONS_PER_PEER} are open from this address already");
                    continue;
                }
            };
            let settings = Settings {
                authorized_keys_file: self.config.authorized_keys_file.clone(),
                password_file: self.config.password_file.clone(),
                ..Settings::for_shell(&shell)
            };
            let (shell, kubernetes) = (shell.clone(), kubernetes.clone());
            tokio::spawn(async move {
                let settings = Settings {
                    kubeconfig: cluster_kubeconfig(&kubernetes).await,
                    ..settings
                };
                carry(tcp, peer, &shell, &settings).await;
                drop(slot);
                tracing::info!(%peer, "management shell connection ended");
            });
        }
    }
}

/// The connections being served, counted per peer.
#[derive(Debug, Default)]
struct Slots {
    taken: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection gets no slot.
#[derive(Debug, PartialEq, Eq)]
enum Full {
    /// [`MAX_CONNECTIONS`] are served.
    All,
    /// [`MAX_CONNECTIONS_PER_PEER`] are served for this peer.
    Peer,
}

/// A connection's place among [`Slots`], given back when dropped.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    peer: IpAddr,
}

impl Slots {
    /// A slot for a connection from `address`, if both limits allow one.
    fn take(slots: &Arc<Self>, address: IpAddr) -> Result<Slot, Full> {
        let peer = peer_key(address);
        let mut taken = slots.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.values().sum::<usize>() >= MAX_CONNECTIONS {
            return Err(Full::All);
        }
        let count = taken.entry(peer).or_default();
        if *count >= MAX_CONNECTIONS_PER_PEER {
            return Err(Full::Peer);
        }
        *count += 1;
        Ok(Slot {
            slots: slots.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.slots.taken.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = taken.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                taken.remove(&self.peer);
            }
        }
    }
}

/// The peer an address counts as: an IPv4 address (also when mapped into
/// IPv6 by a dual-stack socket), or an IPv6 address's /64, which one host
/// usually has whole to pick source addresses from.
fn peer_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// One connection: the helper started for it, the bytes carried both ways
/// ([`relay`]) until the helper's side ends, and when the agent started
/// the helper itself, until it exits: a helper that closed a connection
/// itself (no login in time) frees its slot even while the client reads
/// nothing and so holds the last bytes back.
async fn carry(mut tcp: TcpStream, peer: SocketAddr, shell: &ShellConfig, settings: &Settings) {
    let _ = tcp.set_nodelay(true);
    let (mut helper, mut stream) = match start_helper(shell, settings).await {
        Ok(started) => started,
        Err(error) => {
            tracing::warn!(%peer, "{}", tether_proto::error_chain(&error));
            return;
        }
    };
    tracing::info!(%peer, %settings, "management shell connection");
    {
        let (from_client, to_client) = tcp.split();
        let (from_helper, to_helper) = stream.split();
        let relayed = relay(from_client, to_client, from_helper, to_helper, EXIT_GRACE);
        tokio::pin!(relayed);
        tokio::select! {
            () = &mut relayed => {}
            () = helper.exited() => {
                let _ = tokio::time::timeout(EXIT_GRACE, relayed).await;
            }
        }
    }
    drop(tcp);
    drop(stream);
    helper.finish(EXIT_GRACE).await;
}

/// Carries bytes between the client and the helper until the helper's
/// side ends, the client's side fails (a reset), or the client has ended
/// its side and the helper then sends nothing for `quiet`: a client that
/// half-closed still gets the answers that keep coming, and a helper that
/// is stuck (neither answers nor closes) cannot hold the connection after
/// the client left.
async fn relay(
    mut from_client: impl AsyncRead + Unpin,
    mut to_client: impl AsyncWrite + Unpin,
    mut from_helper: impl AsyncRead + Unpin,
    mut to_helper: impl AsyncWrite + Unpin,
    quiet: Duration,
) {
    let answered = AtomicU64::new(0);
    let answers = async {
        let mut buffer = vec![0; 8192];
        loop {
            match from_helper.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    if to_client.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                    answered.fetch_add(read as u64, Ordering::Relaxed);
                }
            }
        }
        let _ = to_client.shutdown().await;
    };
    let requests = async {
        if tokio::io::copy(&mut from_client, &mut to_helper)
            .await
            .is_err()
        {
            return;
        }
        let _ = to_helper.shutdown().await;
        loop {
            let before = answered.load(Ordering::Relaxed);
            tokio::time::sleep(quiet).await;
            if answered.load(Ordering::Relaxed) == before {
                return;
            }
        }
    };
    tokio::select! {
        () = answers => {}
        () = requests => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_takes_at_most_half_the_slots_and_gives_them_back() {
        let slots = Arc::new(Slots::default());
        let ip = |text: &str| text.parse::<IpAddr>().expect("an address");
        let first: Vec<Slot> = (0..MAX_CONNECTIONS_PER_PEER)
            .map(|_| Slots::take(&slots, ip("10.0.0.1")).expect("a slot"))
            .collect();
        assert_eq!(Slots::take(&slots, ip("10.0.0.1")).err(), Some(Full::Peer));
        // The same address, mapped into IPv6 by a dual-stack socket.
        assert_eq!(
            Slots::take(&slots, ip("::ffff:10.0.0.1")).err(),
            Some(Full::Peer)
        );
        let second: Vec<Slot> = (1..=MAX_CONNECTIONS_PER_PEER)
            .map(|host| Slots::take(&slots, ip(&format!("2001:db8::{host}"))).expect("a slot"))
            .collect();
        assert_eq!(Slots::take(&slots, ip("10.0.0.3")).err(), Some(Full::All));
        drop(first);
        // One IPv6 /64 counts as one peer.
        assert_eq!(
            Slots::take(&slots, ip("2001:db8::ffff:1")).err(),
            Some(Full::Peer)
        );
        assert!(Slots::take(&slots, ip("10.0.0.1")).is_ok());
        assert!(Slots::take(&slots, ip("2001:db8:0:1::1")).is_ok());
        drop(second);
        assert!(
            slots.taken.lock().expect("unlocked").is_empty(),
            "every slot given back"
        );
    }

    /// Longer than any test waits: only an error may end a relay first.
    const QUIET: Duration = Duration::from_secs(600);

    /// The relay's four ends joined to a client's and a helper's stream.
    fn relayed(
        quiet: Duration,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<()>,
    ) {
        let (client, client_side) = tokio::io::duplex(1024);
        let (helper_side, helper) = tokio::io::duplex(1024);
        let (from_client, to_client) = tokio::io::split(client_side);
        let (from_helper, to_helper) = tokio::io::split(helper_side);
        let task = tokio::spawn(relay(from_client, to_client, from_helper, to_helper, quiet));
        (client, helper, task)
    }

    #[tokio::test]
    async fn the_relay_ends_once_the_client_left_though_the_helper_is_stuck() {
        let (mut client, _stuck_helper, task) = relayed(Duration::from_millis(200));
        client.write_all(b"SSH-2.0-x\r\n").await.expect("written");
        drop(client);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the relay ends")
            .expect("joined");
    }

    #[tokio::test]
    async fn a_client_that_reset_ends_the_relay_at_once() {
        struct Reset;
        impl AsyncRead for Reset {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
            }
        }
        let (_helper_side, helper) = tokio::io::duplex(1024);
        let (from_helper, to_helper) = tokio::io::split(helper);
        tokio::time::timeout(
            EXIT_GRACE,
            relay(Reset, tokio::io::sink(), from_helper, to_helper, QUIET),
        )
        .await
        .expect("ended at once, not after the quiet time");
    }

    #[tokio::test]
    async fn a_client_that_half_closed_gets_the_answers_that_keep_coming() {
        let quiet = Duration::from_secs(2);
        let (client, mut helper, task) = relayed(quiet);
        let (mut from_relay, mut to_relay) = tokio::io::split(client);
        to_relay.write_all(b"question").await.expect("written");
        to_relay.shutdown().await.expect("half-closed");
        let mut asked = Vec::new();
        helper.read_to_end(&mut asked).await.expect("read");
        assert_eq!(asked, b"question");
        for answer in [&b"slow "[..], b"answers"] {
            // Each within the quiet time of the one before.
            tokio::time::sleep(quiet / 2).await;
            helper.write_all(answer).await.expect("answered");
        }
        drop(helper);
        let mut answers = Vec::new();
        from_relay.read_to_end(&mut answers).await.expect("read");
        assert_eq!(answers, b"slow answers");
        task.await.expect("joined");
    }

    #[tokio::test]
    async fn an_address_in_use_is_an_error_naming_the_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let address = taken.local_addr().expect("bound");
        let error = Listener::bind(ListenerConfig {
            address,
            authorized_keys_file: None,
            password_file: Some("/p".into()),
        })
        .await
        .err()
        .expect("in use");
        assert_eq!(
            error.to_string(),
            format!("cannot listen for management shell connections on {address} (--shell-listen)")
        );
    }
}
