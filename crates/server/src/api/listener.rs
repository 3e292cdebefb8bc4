//! The HTTPS listener's defences against slow and greedy clients (ADR 0008,
//! ADR 0035): a cap on connections in total and per client address,
//! enforced as soon as a connection is accepted (excess ones are closed at
//! once, so the kernel's backlog keeps moving), a TLS handshake timeout, and
//! a timeout for a request's headers that also closes idle keep-alive
//! connections. When the total is reached, a new connection takes the place
//! of the oldest one still in its TLS handshake, so clients that never
//! finish one cannot keep a new client out. A connection that ends lingers
//! over what the client still sends (`linger.rs`), so an answer given
//! before the request's body was read is not lost to a reset.
//!
//! HTTP/1.1 and HTTP/2 are served, as the client and TLS's ALPN agree.
//! Before hyper's own timers start, it waits without one for the bytes
//! that tell the two apart, so a connection must send its opening within
//! the header timeout: an HTTP/1 request's first bytes, or, on a
//! connection that agreed on `h2`, the whole HTTP/2 preface. hyper's header
//! timeout exists for HTTP/1 only; an HTTP/2 connection is closed instead
//! when it has had no request open for that long ([`Activity`]), and hyper
//! pings it to find a peer that went away.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use axum::http::Response;
use axum_server::accept::Accept;
use axum_server::tls_rustls::RustlsConfig;
use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

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
    /// For a request's headers, and for an HTTP/2 connection with none open.
    header_timeout: Duration,
    /// The caller's TLS config (which a certificate renewal swaps) and the
    /// same offering [`ALPN`], made again only when it was swapped.
    offering_alpn: Arc<Mutex<Option<AlpnConfig>>>,
}

/// The protocols offered in TLS's ALPN, the client's choice among them
/// winning: browsers take HTTP/2, so every tab of a console shares one
/// connection (HTTP/1.1 allows a browser 6 per host, which six tabs' live
/// feeds take); tetherd's own clients speak HTTP/1.1.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A TLS config, and the same offering [`ALPN`].
type AlpnConfig = (Arc<ServerConfig>, Arc<ServerConfig>);

impl GuardedTls {
    fn server_config(&self) -> Arc<ServerConfig> {
        let current = self.tls.get_inner();
        let mut cached = self
            .offering_alpn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cached {
            Some((source, offering)) if Arc::ptr_eq(source, &current) => offering.clone(),
            _ => {
                let mut offering = (*current).clone();
                offering.alpn_protocols = ALPN.iter().map(|name| name.to_vec()).collect();
                let offering = Arc::new(offering);
                *cached = Some((current, offering.clone()));
                offering
            }
        }
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for GuardedTls {
    type Stream = LimitedStream;
    type Service = CountingRequests<S>;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

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
        let (handshake_timeout, header_timeout) = (self.handshake_timeout, self.header_timeout);
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
            let http2 = stream.get_ref().1.alpn_protocol() == Some(ALPN[0]);
            let activity = http2.then(|| Arc::new(Activity::default()));
            Ok((
                LimitedStream {
                    open: Some(Open { stream, permit }),
                    opening: Some(Opening::new(header_timeout, http2)),
                    idle: activity
                        .clone()
                        .map(|activity| IdleWatch::new(activity, header_timeout)),
                },
                CountingRequests {
                    inner: service,
                    activity,
                },
            ))
        })
    }
}

/// The HTTP/2 connection preface; hyper reads this many bytes (or up to
/// the first that differs) before it picks HTTP/1 or HTTP/2.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's first bytes, until hyper's HTTP/1 header timer or the
/// HTTP/2 [`IdleWatch`] takes over.
struct Opening {
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// How many bytes read so far, all matching the HTTP/2 preface.
    matched: usize,
    /// The connection chose HTTP/2 in TLS, so it opens with the preface.
    http2: bool,
}

impl Opening {
    fn new(timeout: Duration, http2: bool) -> Self {
        Self {
            deadline: Box::pin(tokio::time::sleep(timeout)),
            matched: 0,
            http2,
        }
    }

    /// Looks at newly read bytes: `Ok(true)` once they show the protocol
    /// the connection chose, an error if they show the other one.
    fn read(&mut self, bytes: &[u8]) -> io::Result<bool> {
        for byte in bytes {
            if HTTP2_PREFACE.get(self.matched) != Some(byte) {
                if self.http2 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a connection that chose HTTP/2 (ALPN h2) must open with its preface",
                    ));
                }
                return Ok(true);
            }
            self.matched += 1;
            if self.matched == HTTP2_PREFACE.len() {
                if self.http2 {
                    return Ok(true);
                }
                // The idle watch is set up from ALPN's choice; HTTP/2
                // without it ("prior knowledge") would go unwatched.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP/2 is served to clients that choose it in TLS (ALPN h2)",
                ));
            }
        }
        Ok(false)
    }
}

/// How many requests an HTTP/2 connection has open, and since when it has
/// none: its service counts a request from its call until its answer's body
/// is sent or dropped, and its stream closes the connection once it has
/// been idle for the header timeout. hyper has no such timer for HTTP/2, and
/// one on the connection's bytes would cut long-polls, which send nothing
/// while they wait (ADR 0008).
#[derive(Debug)]
struct Activity {
    requests: Mutex<OpenRequests>,
    /// The stream's reader, woken when the last open request ends.
    reader: AtomicWaker,
}

#[derive(Debug)]
struct OpenRequests {
    open: usize,
    idle_since: Instant,
    /// Open requests whose answer waits on the client to take what it was
    /// handed (its flow-control window shut), and since when, by request.
    waiting_on_client: HashMap<u64, Instant>,
    next_id: u64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            requests: Mutex::new(OpenRequests {
                open: 0,
                idle_since: Instant::now(),
                waiting_on_client: HashMap::new(),
                next_id: 0,
            }),
            reader: AtomicWaker::new(),
        }
    }
}

impl Activity {
    fn requests(&self) -> std::sync::MutexGuard<'_, OpenRequests> {
        // Plain counters: a panic elsewhere leaves them consistent.
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When the connection is to close, unless a request comes first.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        let requests = self.requests();
        (requests.open == 0).then(|| requests.idle_since + timeout)
    }

    /// When the connection is to close because an answer has waited that
    /// long on a client that does not take it, unless it does first.
    fn stalled_deadline(&self, timeout: Duration) -> Option<Instant> {
        let requests = self.requests();
        requests
            .waiting_on_client
            .values()
            .min()
            .map(|since| *since + timeout)
    }
}

/// One request open on an HTTP/2 connection, until dropped.
struct OpenRequest {
    activity: Arc<Activity>,
    id: u64,
}

impl OpenRequest {
    fn start(activity: Arc<Activity>) -> Self {
        let id = {
            let mut requests = activity.requests();
            requests.open += 1;
            requests.next_id += 1;
            requests.next_id
        };
        Self { activity, id }
    }

    /// Its answer was handed (part of) its body, or is ready to be: until
    /// hyper asks for more, it waits on the client's flow-control window.
    fn waiting_on_client(&self) {
        let mut requests = self.activity.requests();
        let first = requests.waiting_on_client.is_empty();
        requests.waiting_on_client.insert(self.id, Instant::now());
        drop(requests);
        // An earlier stall would already have armed an earlier deadline.
        if first {
            self.activity.reader.wake();
        }
    }

    /// hyper asks for more of the answer: the client took what it had.
    fn progressed(&self) {
        self.activity.requests().waiting_on_client.remove(&self.id);
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let mut requests = self.activity.requests();
        requests.waiting_on_client.remove(&self.id);
        requests.open = requests.open.saturating_sub(1);
        if requests.open == 0 {
            requests.idle_since = Instant::now();
            drop(requests);
            self.activity.reader.wake();
        }
    }
}

/// An HTTP/2 connection's idle timer, polled while its stream waits to read.
struct IdleWatch {
    activity: Arc<Activity>,
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl IdleWatch {
    fn new(activity: Arc<Activity>, timeout: Duration) -> Self {
        Self {
            activity,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// Ready, with the reason, once the connection has had no request open
    /// for the timeout, or an answer has waited that long on a client that
    /// does not open its flow-control window: such a request is "open" for
    /// ever, and each of 200 streams holds its answer in memory.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<&'static str> {
        self.activity.reader.register(cx.waker());
        let (deadline, reason) = match self.activity.idle_deadline(self.timeout) {
            Some(deadline) => (
                deadline,
                "an HTTP/2 connection with no request open for the header timeout",
            ),
            None => match self.activity.stalled_deadline(self.timeout) {
                Some(deadline) => (
                    deadline,
                    "an HTTP/2 client took no part of an answer for the header timeout",
                ),
                None => return Poll::Pending,
            },
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).map(|()| reason)
    }
}

/// A connection's service, counting its requests on HTTP/2 ([`Activity`]).
#[derive(Clone)]
pub struct CountingRequests<S> {
    inner: S,
    activity: Option<Arc<Activity>>,
}

impl<S, R, B> tower::Service<R> for CountingRequests<S>
where
    S: tower::Service<R, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let open = self.activity.clone().map(OpenRequest::start);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // Until hyper first asks for the body, which it does only once
            // the client's window has room for it, the answer waits on the
            // client.
            if let Some(open) = &open {
                open.waiting_on_client();
            }
            Ok(response.map(|inner| CountedBody {
                inner,
                rest: None,
                open,
            }))
        })
    }
}

/// The most of an answer handed to hyper at once on HTTP/2: hyper asks for
/// more only when the client has taken it, so a big answer given whole
/// would wait on the client for as long as all of it takes to send, and
/// look stalled to a slow client's [`IdleWatch`].
const HTTP2_SLICE: usize = 16 * 1024;

/// An answer's body, holding its request open until it is sent or dropped.
pub struct CountedBody<B> {
    inner: B,
    /// What is left of a chunk bigger than [`HTTP2_SLICE`].
    rest: Option<Bytes>,
    open: Option<OpenRequest>,
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(open) = &this.open else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        open.progressed();
        let mut data = match this.rest.take() {
            Some(rest) => rest,
            None => match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                ended => return Poll::Ready(ended),
            },
        };
        if data.len() > HTTP2_SLICE {
            this.rest = Some(data.split_off(HTTP2_SLICE));
        }
        open.waiting_on_client();
        Poll::Ready(Some(Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.as_ref().map_or(0, |rest| rest.len() as u64);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint.set_lower(hint.lower() + rest);
        hint
    }
}

/// A connection that holds its slot for as long as it is open, and ends
/// with a lingering close (see [`super::linger`]).
pub struct LimitedStream {
    /// Taken only by `drop`, which hands it to the lingering close.
    open: Option<Open>,
    /// Until the first bytes show the protocol the connection chose.
    opening: Option<Opening>,
    /// An HTTP/2 connection's idle timer.
    idle: Option<IdleWatch>,
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
            if polled.is_pending()
                && let Some(idle) = &mut this.idle
                && let Poll::Ready(reason) = idle.poll_expired(cx)
            {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, reason)));
            }
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

/// How often an HTTP/2 connection is pinged, and how long its answer may take.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(20);

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
        header_timeout: config.header_read_timeout,
        offering_alpn: Arc::default(),
    };
    let mut server = axum_server::from_tcp(listener)
        .acceptor(acceptor)
        .handle(handle);
    let builder = server.http_builder();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    // Pings find an HTTP/2 peer that went away while a stream (a live
    // feed) was open; hyper's other HTTP/2 limits (200 streams, 16 KiB of
    // headers, reset-flood caps) stay its defaults.
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(HTTP2_PING_INTERVAL)
        .keep_alive_timeout(HTTP2_PING_INTERVAL);
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
        let mut opening = Opening::new(Duration::from_secs(1), false);
        assert!(opening.read(b"GET / HTTP/1.1\r\n").expect("HTTP/1"));
        let mut opening = Opening::new(Duration::from_secs(1), false);
        assert!(!opening.read(b"PRI * HTTP/2.0").expect("undecided"));
        assert!(!opening.read(b"").expect("still undecided"));
        let refused = opening
            .read(b"\r\n\r\nSM\r\n\r\n")
            .expect_err("HTTP/2 without choosing it in TLS");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_connection_that_chose_http2_opens_with_the_whole_preface() {
        let mut opening = Opening::new(Duration::from_secs(1), true);
        assert!(!opening.read(b"PRI * HTTP/2.0\r\n").expect("undecided"));
        assert!(opening.read(b"\r\nSM\r\n\r\n").expect("the preface"));
        let mut opening = Opening::new(Duration::from_secs(1), true);
        let refused = opening
            .read(b"GET / HTTP/1.1\r\n")
            .expect_err("HTTP/1 after choosing HTTP/2");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn an_http2_connection_is_idle_from_the_end_of_its_last_request() {
        let timeout = Duration::from_secs(30);
        let activity = Arc::new(Activity::default());
        let opened_at = Instant::now();
        let first = activity
            .idle_deadline(timeout)
            .expect("idle from the start");
        assert!(first >= opened_at + timeout - Duration::from_secs(1));
        // Requests open for longer than the timeout (a live feed) keep it.
        let feed = OpenRequest::start(activity.clone());
        let call = OpenRequest::start(activity.clone());
        assert_eq!(activity.idle_deadline(timeout), None);
        drop(call);
        assert_eq!(activity.idle_deadline(timeout), None, "the feed is open");
        let ended_at = Instant::now();
        drop(feed);
        let deadline = activity.idle_deadline(timeout).expect("idle again");
        assert!(
            deadline >= ended_at + timeout,
            "idle time counts from the last request's end"
        );
    }

    #[test]
    fn an_answer_waiting_on_the_client_sets_the_connection_a_deadline() {
        let timeout = Duration::from_secs(30);
        let activity = Arc::new(Activity::default());
        let feed = OpenRequest::start(activity.clone());
        let answer = OpenRequest::start(activity.clone());
        assert_eq!(activity.stalled_deadline(timeout), None);
        let handed_at = Instant::now();
        answer.waiting_on_client();
        let deadline = activity
            .stalled_deadline(timeout)
            .expect("the answer waits on the client");
        assert!(deadline >= handed_at + timeout);
        // The feed keeps the connection from being idle, not from this.
        assert_eq!(activity.idle_deadline(timeout), None);
        answer.progressed();
        assert_eq!(
            activity.stalled_deadline(timeout),
            None,
            "the client took it"
        );
        answer.waiting_on_client();
        drop(answer);
        assert_eq!(
            activity.stalled_deadline(timeout),
            None,
            "a finished answer waits on nothing"
        );
        drop(feed);
    }

    #[tokio::test]
    async fn a_big_answer_is_handed_over_in_slices_each_marking_progress() {
        let activity = Arc::new(Activity::default());
        let open = OpenRequest::start(activity.clone());
        open.waiting_on_client();
        let whole = Bytes::from(vec![7u8; 2 * HTTP2_SLICE + 5]);
        let mut body = CountedBody {
            inner: axum::body::Body::from(whole.clone()),
            rest: None,
            open: Some(open),
        };
        assert_eq!(body.size_hint().exact(), Some(whole.len() as u64));
        let mut sizes = Vec::new();
        let mut sent = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let data = frame.expect("a frame").into_data().expect("data");
            sizes.push(data.len());
            sent.extend_from_slice(&data);
            assert!(
                activity.stalled_deadline(Duration::from_secs(1)).is_some(),
                "each slice handed over waits on the client"
            );
            assert_eq!(
                body.size_hint().exact(),
                Some((whole.len() - sent.len()) as u64)
            );
        }
        assert_eq!(sizes, [HTTP2_SLICE, HTTP2_SLICE, 5]);
        assert_eq!(sent, whole);
        assert!(body.is_end_stream());
    }

    #[test]
    fn the_cap_leaves_half_the_file_handles_to_the_rest_of_tetherd() {
        assert_eq!(effective_max_connections(4096, Some(1024)), 512);
        assert_eq!(effective_max_connections(100, Some(1024)), 100);
        assert_eq!(effective_max_connections(4096, None), 4096);
        assert_eq!(effective_max_connections(4096, Some(10)), 16);
    }
}
