//! The HTTPS listener's defences against slow and greedy clients (ADR 0008):
//! a cap on connections in total and per client address, enforced as soon
//! as a connection is accepted (excess ones are closed at once, so the
//! kernel's backlog keeps moving), a TLS handshake timeout, and a timeout
//! for a request's headers that also closes idle keep-alive connections.
//! When the total is reached, a new connection takes the place of the
//! oldest one still in its TLS handshake, so clients that never finish one
//! cannot keep a new client out. A connection that ends lingers over what
//! the client still sends (`linger.rs`), so an answer given before the
//! request's body was read is not lost to a reset.
//!
//! Only HTTP/1.1 is served: hyper's header timeout exists for HTTP/1 only,
//! and before it starts hyper waits, without a timer, for the bytes that
//! tell HTTP/1 from HTTP/2. So TLS offers only `http/1.1`, a connection
//! must send its first request's opening bytes within the header timeout,
//! and one that opens with the HTTP/2 preface is closed.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use axum_server::tls_rustls::RustlsConfig;
use futures::future::BoxFuture;
use rustls::ServerConfig;
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
    /// The client's key: the address, or an IPv6 address's /64.
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
        let address = crate::auth::throttle::client_of(address);
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
    tls: RustlsConfig,
    handshake_timeout: Duration,
    first_bytes_timeout: Duration,
    /// The caller's TLS config (which a certificate renewal swaps) and the
    /// same offering only HTTP/1.1, made again only when it was swapped.
    http1_only: Arc<Mutex<Option<Http1Config>>>,
}

/// A TLS config, and the same offering only HTTP/1.1.
type Http1Config = (Arc<ServerConfig>, Arc<ServerConfig>);

impl GuardedTls {
    fn server_config(&self) -> Arc<ServerConfig> {
        let current = self.tls.get_inner();
        let mut cached = self
            .http1_only
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cached {
            Some((source, http1)) if Arc::ptr_eq(source, &current) => http1.clone(),
            _ => {
                let mut http1 = (*current).clone();
                http1.alpn_protocols = vec![b"http/1.1".to_vec()];
                let http1 = Arc::new(http1);
                *cached = Some((current, http1.clone()));
                http1
            }
        }
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for GuardedTls {
    type Stream = LimitedStream;
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
        let tls = tokio_rustls::TlsAcceptor::from(self.server_config());
        let (handshake_timeout, first_bytes_timeout) =
            (self.handshake_timeout, self.first_bytes_timeout);
        Box::pin(async move {
            // An error drops `stream`, which closes the connection at once.
            let permit = admitted?;
            let stream = tokio::select! {
                accepted = tokio::time::timeout(handshake_timeout, tls.accept(stream)) => {
                    accepted.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??
                }
                () = permit.evicted() => {
                    return Err(io::Error::other("closed to make room for a newer connection"));
                }
            };
            permit.established();
            Ok((
                LimitedStream {
                    open: Some(Open { stream, permit }),
                    opening: Some(Opening::new(first_bytes_timeout)),
                },
                service,
            ))
        })
    }
}

/// The HTTP/2 connection preface; hyper reads this many bytes (or up to
/// the first that differs) before it picks HTTP/1 or HTTP/2.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's first bytes, until hyper's HTTP/1 header timer takes over.
struct Opening {
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// How many bytes read so far, all matching the HTTP/2 preface.
    matched: usize,
}

impl Opening {
    fn new(timeout: Duration) -> Self {
        Self {
            deadline: Box::pin(tokio::time::sleep(timeout)),
            matched: 0,
        }
    }

    /// Looks at newly read bytes: `Ok(true)` once they show HTTP/1,
    /// an error if they are the HTTP/2 preface.
    fn read(&mut self, bytes: &[u8]) -> io::Result<bool> {
        for byte in bytes {
            if HTTP2_PREFACE.get(self.matched) != Some(byte) {
                return Ok(true);
            }
            self.matched += 1;
            if self.matched == HTTP2_PREFACE.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP/2 is not served; use HTTP/1.1",
                ));
            }
        }
        Ok(false)
    }
}

/// A connection that holds its slot for as long as it is open, and ends
/// with a lingering close (see [`super::linger`]).
pub struct LimitedStream {
    /// Taken only by `drop`, which hands it to the lingering close.
    open: Option<Open>,
    /// Until the first bytes show an HTTP/1 request.
    opening: Option<Opening>,
}

struct Open {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    permit: ConnectionPermit,
}

impl LimitedStream {
    fn stream(&mut self) -> Pin<&mut tokio_rustls::server::TlsStream<TcpStream>> {
        Pin::new(&mut self.open.as_mut().expect("open until dropped").stream)
    }
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        let Some(Open { stream, permit }) = self.open.take() else {
            return;
        };
        // tetherd drops connections on a runtime; without one, the socket
        // simply closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                super::linger::close(stream, super::linger::LIMITS).await;
                // The slot stays taken until the socket is really closed.
                drop(permit);
            });
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let filled = buf.filled().len();
        let polled = this.stream().poll_read(cx, buf);
        let Some(opening) = &mut this.opening else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                if opening.read(&buf.filled()[filled..])? {
                    this.opening = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match opening.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the header timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
            error => error,
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|open| open.stream.is_write_vectored())
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
        tls,
        handshake_timeout: config.tls_handshake_timeout,
        first_bytes_timeout: config.header_read_timeout,
        http1_only: Arc::default(),
    };
    let mut server = axum_server::from_tcp(listener)
        .acceptor(acceptor)
        .handle(handle);
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let app = app.layer(axum::Extension(super::extract::BodyDeadline(
        config.header_read_timeout,
    )));
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
    fn an_ipv6_client_gets_one_share_for_its_whole_prefix() {
        let limiter = ConnectionLimiter::new(10, 2);
        let host =
            |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 7, 0, 0, 0, last));
        let _first = limiter.admit(host(1)).expect("first");
        let _second = limiter.admit(host(2)).expect("second");
        assert_eq!(
            limiter.admit(host(3)).err(),
            Some(Refused::PerAddress),
            "a third address of the same /64 is the same client"
        );
        let other = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 8, 0, 0, 0, 1));
        limiter.admit(other).expect("another /64");
    }

    #[tokio::test]
    async fn an_opening_is_http1_at_the_first_byte_off_the_http2_preface() {
        let mut opening = Opening::new(Duration::from_secs(1));
        assert!(opening.read(b"GET / HTTP/1.1\r\n").expect("HTTP/1"));
        let mut opening = Opening::new(Duration::from_secs(1));
        assert!(!opening.read(b"PRI * HTTP/2.0").expect("undecided"));
        assert!(!opening.read(b"").expect("still undecided"));
        let refused = opening
            .read(b"\r\n\r\nSM\r\n\r\n")
            .expect_err("the whole HTTP/2 preface");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn the_cap_leaves_half_the_file_handles_to_the_rest_of_tetherd() {
        assert_eq!(effective_max_connections(4096, Some(1024)), 512);
        assert_eq!(effective_max_connections(100, Some(1024)), 100);
        assert_eq!(effective_max_connections(4096, None), 4096);
        assert_eq!(effective_max_connections(4096, Some(10)), 16);
    }
}
