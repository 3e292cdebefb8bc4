//! The HTTPS listener's defences against slow and greedy clients (ADR 0008):
//! a cap on connections in total and per client address, enforced as soon
//! as a connection is accepted (excess ones are closed at once, so the
//! kernel's backlog keeps moving), a TLS handshake timeout, and a timeout
//! for a request's headers that also closes idle keep-alive connections.
//! When the total is reached, a new connection takes the place of the
//! oldest one still in its TLS handshake, so clients that never finish one
//! cannot keep a new client out.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum_server::accept::{Accept, DefaultAcceptor};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::config::ApiConfig;

/// Connections held by whom; pure bookkeeping, shared by the accept path
/// and the permits that give slots back when a connection ends.
#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_address: HashMap<IpAddr, u32>,
    /// Connections still in their TLS handshake, oldest first, each with
    /// the signal that closes it to make room.
    handshaking: BTreeMap<u64, Arc<Notify>>,
    next_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerAddress,
}

#[derive(Clone)]
pub struct ConnectionLimiter {
    counts: Arc<Mutex<Counts>>,
    max_total: u32,
    max_per_address: u32,
}

/// A held connection slot; dropping it gives the slot back.
pub struct ConnectionPermit {
    counts: Arc<Mutex<Counts>>,
    address: IpAddr,
    id: u64,
    /// Notified when a newer connection takes this one's place.
    evicted: Arc<Notify>,
}

impl ConnectionLimiter {
    pub fn new(max_total: u32, max_per_address: u32) -> Self {
        Self {
            counts: Arc::default(),
            max_total,
            max_per_address,
        }
    }

    pub fn admit(&self, address: IpAddr) -> Result<ConnectionPermit, Refused> {
        let address = address.to_canonical();
        let mut counts = lock(&self.counts);
        if counts.per_address.get(&address).copied().unwrap_or(0) >= self.max_per_address {
            return Err(Refused::PerAddress);
        }
        if counts.total >= self.max_total {
            // The evicted connection gives its slot back when it closes,
            // a moment later; until then the total is one over.
            let (_, oldest) = counts.handshaking.pop_first().ok_or(Refused::Total)?;
            oldest.notify_one();
        }
        *counts.per_address.entry(address).or_insert(0) += 1;
        counts.total += 1;
        let id = counts.next_id;
        counts.next_id += 1;
        let evicted = Arc::new(Notify::new());
        counts.handshaking.insert(id, evicted.clone());
        Ok(ConnectionPermit {
            counts: self.counts.clone(),
            address,
            id,
            evicted,
        })
    }
}

impl ConnectionPermit {
    /// The TLS handshake finished: from now on the connection keeps its slot.
    pub fn established(&self) {
        lock(&self.counts).handshaking.remove(&self.id);
    }

    async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.handshaking.remove(&self.id);
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.per_address.get_mut(&self.address) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.per_address.remove(&self.address);
            }
        }
    }
}

fn lock(counts: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    // Plain counters: a panic elsewhere leaves them consistent.
    counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every connection: take a slot (or close at once), then the TLS
/// handshake, which a newer connection may cut short when tetherd is full.
#[derive(Clone)]
struct GuardedTls {
    limiter: ConnectionLimiter,
    tls: RustlsAcceptor<DefaultAcceptor>,
}

impl<S: Send + 'static> Accept<TcpStream, S> for GuardedTls {
    type Stream = LimitedStream<tokio_rustls::server::TlsStream<TcpStream>>;
    type Service = S;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream
            .peer_addr()
            .and_then(|peer| match self.limiter.admit(peer.ip()) {
                Ok(permit) => Ok(permit),
                Err(refused) => {
                    tracing::debug!(client = %peer.ip(), ?refused, "connection refused: over the connection cap");
                    Err(io::Error::other("over the connection cap"))
                }
            });
        let tls = self.tls.clone();
        Box::pin(async move {
            // An error drops `stream`, which closes the connection at once.
            let permit = admitted?;
            let (stream, service) = tokio::select! {
                accepted = tls.accept(stream, service) => accepted?,
                () = permit.evicted() => {
                    return Err(io::Error::other("closed to make room for a newer connection"));
                }
            };
            permit.established();
            Ok((
                LimitedStream {
                    stream,
                    _permit: permit,
                },
                service,
            ))
        })
    }
}

/// A connection that holds its slot for as long as it is open.
pub struct LimitedStream<S> {
    stream: S,
    _permit: ConnectionPermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for LimitedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LimitedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The connection cap actually used: the configured one, but at most half
/// the process's file handles, so the MQTT listener, the store and the
/// log always have handles left however many clients connect.
pub fn effective_max_connections(configured: u32, file_handle_limit: Option<u64>) -> u32 {
    match file_handle_limit {
        Some(limit) => {
            let half = u32::try_from(limit / 2).unwrap_or(u32::MAX).max(16);
            configured.min(half)
        }
        None => configured,
    }
}

fn file_handle_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _hard)| soft)
}

/// Serves `app` over TLS on an already bound listener until `handle` shuts it
/// down. `tls` stays the caller's: `RustlsConfig::reload_from_pem_file` on a
/// clone swaps the certificate for new connections without a restart.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    app: axum::Router,
    handle: axum_server::Handle,
    config: &ApiConfig,
) -> io::Result<()> {
    let max_total = effective_max_connections(config.max_connections, file_handle_limit());
    if max_total < config.max_connections {
        tracing::info!(
            configured = config.max_connections,
            max_connections = max_total,
            "the HTTPS connection cap is lowered to half the file-handle limit (ulimit -n)"
        );
    }
    let acceptor = GuardedTls {
        limiter: ConnectionLimiter::new(max_total, config.max_connections_per_ip),
        tls: RustlsAcceptor::new(tls).handshake_timeout(config.tls_handshake_timeout),
    };
    let mut server = axum_server::from_tcp(listener)
        .acceptor(acceptor)
        .handle(handle);
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    server
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let limiter = ConnectionLimiter::new(10, 2);
        let first = limiter.admit(ip(2)).expect("first");
        let _second = limiter.admit(ip(2)).expect("second");
        assert_eq!(limiter.admit(ip(2)).err(), Some(Refused::PerAddress));
        // Another client still gets in.
        let _other = limiter.admit(ip(1)).expect("another address");
        // A closed connection gives its slot back.
        drop(first);
        limiter.admit(ip(2)).expect("a slot was given back");
    }

    #[test]
    fn the_total_is_capped_and_slots_come_back() {
        let limiter = ConnectionLimiter::new(3, 3);
        let held: Vec<_> = (1..=3)
            .map(|i| {
                let permit = limiter.admit(ip(i)).expect("under the cap");
                permit.established();
                permit
            })
            .collect();
        assert_eq!(limiter.admit(ip(9)).err(), Some(Refused::Total));
        drop(held);
        let _again = limiter.admit(ip(9)).expect("slots were given back");
        assert_eq!(
            lock(&limiter.counts).per_address.len(),
            1,
            "no entry is kept for closed clients"
        );
    }

    #[tokio::test]
    async fn when_full_a_new_client_displaces_the_oldest_unfinished_handshake() {
        let limiter = ConnectionLimiter::new(3, 3);
        let stale_one = limiter.admit(ip(2)).expect("first");
        let stale_two = limiter.admit(ip(3)).expect("second");
        let served = limiter.admit(ip(4)).expect("third");
        served.established();
        let newcomer = limiter
            .admit(ip(1))
            .expect("takes the oldest handshake's place");
        // The oldest unfinished handshake is told to close; the next one is not.
        tokio::time::timeout(std::time::Duration::from_secs(1), stale_one.evicted())
            .await
            .expect("the oldest is evicted");
        drop(stale_one);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), stale_two.evicted())
                .await
                .is_err(),
            "only one is evicted per newcomer"
        );
        newcomer.established();
        let also = limiter.admit(ip(5)).expect("evicts the second");
        also.established();
        drop(stale_two);
        // Only established connections left: a newcomer is refused.
        assert_eq!(limiter.admit(ip(6)).err(), Some(Refused::Total));
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_the_ipv4_client() {
        let limiter = ConnectionLimiter::new(10, 1);
        let _held = limiter.admit(ip(2)).expect("first");
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("valid");
        assert_eq!(limiter.admit(mapped).err(), Some(Refused::PerAddress));
    }

    #[test]
    fn the_cap_leaves_half_the_file_handles_to_the_rest_of_tetherd() {
        assert_eq!(effective_max_connections(4096, Some(1024)), 512);
        assert_eq!(effective_max_connections(100, Some(1024)), 100);
        assert_eq!(effective_max_connections(4096, None), 4096);
        assert_eq!(effective_max_connections(4096, Some(10)), 16);
    }
}
