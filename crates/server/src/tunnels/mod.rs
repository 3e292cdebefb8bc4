//! Tunnels (ADR 0021): a client's WebSocket spliced with the one its
//! device dials back to this replica.
//!
//! [`Tunnels`] holds the tunnels waiting for their device: an id, the
//! SHA-256 of a one-time token and where to hand the device's socket.
//! [`splice`] then moves messages between the two sockets one at a time,
//! so a slow reader stops the other side instead of filling tetherd's
//! memory; it pings an idle side so that proxies and NATs keep the
//! connection, and ends a tunnel idle for longer than the configured time.

pub mod stream;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tether_proto::DeviceId;
use tokio::sync::oneshot;

/// `[tunnels]`: how tunnels are kept alive, ended and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// A side that received nothing for this long gets a WebSocket ping:
    /// load balancers and NATs drop connections idle for a minute or so
    /// (an idle shell is normal).
    pub keepalive: Duration,
    /// A tunnel that carried no data either way for this long is ended;
    /// `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Tunnels one user may have waiting for their device at once: opening
    /// one costs the device an action and a dial, so a client opening them
    /// in a loop is refused instead of flooding its devices. A forward
    /// opens one per accepted connection.
    pub max_waiting_per_user: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(3600)),
            max_waiting_per_user: 64,
        }
    }
}

/// Tunnels waiting for their device on one replica.
pub struct Tunnels<S> {
    waiting: Mutex<HashMap<String, Waiting<S>>>,
    dial_within: Duration,
    config: TunnelConfig,
}

struct Waiting<S> {
    token_sha256: [u8; 32],
    device: DeviceId,
    user: String,
    deadline: Instant,
    dialed: oneshot::Sender<S>,
}

/// A tunnel just opened: what the device is told, and where its socket
/// will arrive.
pub struct Opened<S> {
    pub id: String,
    pub token: String,
    pub dialed: oneshot::Receiver<S>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error(
        "{user} already has {limit} tunnels waiting for their devices; wait for them to open or fail (tunnels.max_waiting_per_user)"
    )]
    TooManyWaiting { user: String, limit: usize },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DialError {
    /// Unknown, expired, already dialed, or the token is wrong: one answer
    /// for all, so a guesser learns nothing.
    #[error("no tunnel {0} waits for this token")]
    Refused(String),
}

impl<S> Tunnels<S> {
    pub fn new(dial_within: Duration, config: TunnelConfig) -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
            dial_within,
            config,
        }
    }

    pub fn config(&self) -> &TunnelConfig {
        &self.config
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting<S>>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new tunnel to `device` for `user`, waiting until `now` + the dial
    /// time.
    pub fn open(
        &self,
        device: &DeviceId,
        user: &str,
        now: Instant,
    ) -> Result<Opened<S>, OpenError> {
        let mut waiting = self.waiting();
        // Tunnels whose device never came: their clients were told already.
        waiting.retain(|_, w| w.deadline > now && !w.dialed.is_closed());
        let limit = self.config.max_waiting_per_user;
        if waiting.values().filter(|w| w.user == user).count() >= limit {
            return Err(OpenError::TooManyWaiting {
                user: user.to_owned(),
                limit,
            });
        }
        let id = uuid::Uuid::new_v4().to_string();
        let token = hex::encode(rand::random::<[u8; 32]>());
        let (dialed, arrival) = oneshot::channel();
        waiting.insert(
            id.clone(),
            Waiting {
                token_sha256: Sha256::digest(token.as_bytes()).into(),
                device: device.clone(),
                user: user.to_owned(),
                deadline: now + self.dial_within,
                dialed,
            },
        );
        Ok(Opened {
            id,
            token,
            dialed: arrival,
        })
    }

    /// The device dialing tunnel `id` with `token`: where to hand its
    /// socket, and which device it is. A tunnel is dialed once.
    pub fn dial(
        &self,
        id: &str,
        token: &str,
        now: Instant,
    ) -> Result<(DeviceId, oneshot::Sender<S>), DialError> {
        let refused = || DialError::Refused(id.to_owned());
        let mut waiting = self.waiting();
        let entry = waiting.get(id).ok_or_else(refused)?;
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Both are digests of the same length: comparing them leaks nothing
        // about the token.
        if presented != entry.token_sha256 || entry.deadline <= now {
            return Err(refused());
        }
        let entry = waiting.remove(id).ok_or_else(refused)?;
        Ok((entry.device, entry.dialed))
    }
}

/// Bytes a tunnel carried: its messages, each with its channel byte.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub to_device: u64,
    pub from_device: u64,
    /// Ended because it carried nothing for the idle timeout.
    pub idle: bool,
}

/// How long the other direction may go on once one has ended (a command
/// exited, the client hung up): long enough for the last messages and the
/// close handshake, short enough that a peer that never closes cannot hold
/// the tunnel.
const LINGER: Duration = Duration::from_secs(5);

/// A message of either socket type, reduced to what the splice needs.
pub enum Message {
    /// Forwarded as is; the length counts as traffic.
    Data(Vec<u8>),
    /// Ends this direction.
    Close,
    /// Sent to an idle side to keep its connection; never forwarded.
    Ping,
    /// Anything else (pings are answered by the socket itself).
    Other,
}

/// Moves messages both ways until either side ends, then lets the other
/// direction finish for at most [`LINGER`]; or until neither carried data
/// for `config`'s idle timeout. Each side is its receiving and its sending
/// half.
pub async fn splice<CR, CW, DR, DW, E>(
    client: (CR, CW),
    device: (DR, DW),
    config: &TunnelConfig,
) -> Traffic
where
    CR: Stream<Item = Result<Message, E>> + Unpin,
    CW: Sink<Message> + Unpin,
    DR: Stream<Item = Result<Message, E>> + Unpin,
    DW: Sink<Message> + Unpin,
{
    let (mut client_rx, mut client_tx) = client;
    let (mut device_rx, mut device_tx) = device;
    let last_data = LastData::now();
    let (to_device, from_device) = (AtomicU64::new(0), AtomicU64::new(0));
    let idle = async {
        match config.idle_timeout {
            Some(timeout) => idle_for(&last_data, timeout).await,
            None => std::future::pending().await,
        }
    };
    let ended_idle = {
        let up = pump(
            &mut client_rx,
            &mut device_tx,
            &to_device,
            &last_data,
            config.keepalive,
        );
        let down = pump(
            &mut device_rx,
            &mut client_tx,
            &from_device,
            &last_data,
            config.keepalive,
        );
        tokio::pin!(up, down, idle);
        tokio::select! {
            () = &mut up => { let _ = tokio::time::timeout(LINGER, down).await; false }
            () = &mut down => { let _ = tokio::time::timeout(LINGER, up).await; false }
            () = &mut idle => true,
        }
    };
    if ended_idle {
        // Both sides are told; one that does not take it is dropped.
        let _ = tokio::time::timeout(LINGER, async {
            tokio::join!(close(&mut device_tx), close(&mut client_tx));
        })
        .await;
    }
    Traffic {
        to_device: to_device.into_inner(),
        from_device: from_device.into_inner(),
        idle: ended_idle,
    }
}

/// Tells a side the tunnel ends; one that cannot be told is dropped anyway.
async fn close<W: Sink<Message> + Unpin>(sink: &mut W) {
    let _ = sink.send(Message::Close).await;
}

/// When either direction last carried data.
struct LastData {
    since: tokio::time::Instant,
    millis: AtomicU64,
}

impl LastData {
    fn now() -> Self {
        Self {
            since: tokio::time::Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let millis = self.since.elapsed().as_millis();
        self.millis
            .store(u64::try_from(millis).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn get(&self) -> tokio::time::Instant {
        self.since + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// Returns once `last_data` is `timeout` in the past.
async fn idle_for(last_data: &LastData, timeout: Duration) {
    loop {
        let deadline = last_data.get() + timeout;
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Copies `from` into `to` one message at a time, counting the bytes in
/// `carried`; pings `to` when nothing was sent to it for `keepalive`.
async fn pump<R, W, E>(
    from: &mut R,
    to: &mut W,
    carried: &AtomicU64,
    last_data: &LastData,
    keepalive: Duration,
) where
    R: Stream<Item = Result<Message, E>> + Unpin,
    W: Sink<Message> + Unpin,
{
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let received = tokio::select! {
            received = from.next() => received,
            () = tokio::time::sleep_until(last_sent + keepalive) => {
                if to.send(Message::Ping).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
                continue;
            }
        };
        match received {
            Some(Ok(Message::Data(data))) => {
                carried.fetch_add(data.len() as u64, Ordering::Relaxed);
                if to.send(Message::Data(data)).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
                last_data.touch();
            }
            Some(Ok(Message::Ping | Message::Other)) => {}
            Some(Ok(Message::Close) | Err(_)) | None => break,
        }
    }
    let _ = to.send(Message::Close).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceId {
        DeviceId::new("edge-1").expect("a name")
    }

    #[test]
    fn a_tunnel_is_dialed_once_with_its_token_before_its_deadline() {
        let tunnels = Tunnels::<()>::new(Duration::from_secs(30), TunnelConfig::default());
        let now = Instant::now();
        let opened = tunnels.open(&device(), "ann", now).expect("opened");
        assert_eq!(
            tunnels.dial(&opened.id, "wrong", now).err(),
            Some(DialError::Refused(opened.id.clone()))
        );
        let (dialer, _) = tunnels
            .dial(&opened.id, &opened.token, now)
            .expect("dialed");
        assert_eq!(dialer, device());
        assert!(tunnels.dial(&opened.id, &opened.token, now).is_err());

        let late = tunnels.open(&device(), "ann", now).expect("opened");
        let after = now + Duration::from_secs(31);
        assert!(tunnels.dial(&late.id, &late.token, after).is_err());
        // Expired and abandoned tunnels are dropped when the next opens.
        let abandoned = tunnels.open(&device(), "ann", now).expect("opened");
        drop(abandoned.dialed);
        let _kept = tunnels.open(&device(), "ann", after).expect("opened");
        assert_eq!(tunnels.waiting().len(), 1);
    }

    #[test]
    fn a_user_may_have_only_so_many_tunnels_waiting() {
        let config = TunnelConfig {
            max_waiting_per_user: 2,
            ..TunnelConfig::default()
        };
        let tunnels = Tunnels::<()>::new(Duration::from_secs(30), config);
        let now = Instant::now();
        let first = tunnels.open(&device(), "ann", now).expect("first");
        let _second = tunnels.open(&device(), "ann", now).expect("second");
        let refused = tunnels.open(&device(), "ann", now).err();
        assert_eq!(
            refused,
            Some(OpenError::TooManyWaiting {
                user: "ann".to_owned(),
                limit: 2
            })
        );
        // Others are not held back by ann's tunnels.
        assert!(tunnels.open(&device(), "bob", now).is_ok());
        // A tunnel dialed stops counting.
        tunnels.dial(&first.id, &first.token, now).expect("dialed");
        assert!(tunnels.open(&device(), "ann", now).is_ok());
    }

    type Incoming = futures::channel::mpsc::Sender<Result<Message, ()>>;
    type Outgoing = futures::channel::mpsc::Receiver<Message>;

    /// A socket made of channels holding `capacity` messages each way:
    /// what the test sends arrives as messages, what the splice sends is
    /// collected.
    fn socket(
        capacity: usize,
    ) -> (
        Incoming,
        (
            impl Stream<Item = Result<Message, ()>> + Unpin,
            impl Sink<Message> + Unpin,
        ),
        Outgoing,
    ) {
        let (incoming_tx, incoming_rx) = futures::channel::mpsc::channel(capacity);
        let (outgoing_tx, outgoing_rx) = futures::channel::mpsc::channel(capacity);
        (incoming_tx, (incoming_rx, outgoing_tx), outgoing_rx)
    }

    #[tokio::test]
    async fn a_slow_reader_stops_the_splice_instead_of_filling_memory() {
        let (mut from_client, client, _to_client) = socket(1);
        let (from_device, device, mut to_device) = socket(1);
        let splice =
            tokio::spawn(async move { splice(client, device, &TunnelConfig::default()).await });
        // Nobody reads the device's side: after the channel's one slot and
        // the message in hand, the splice stops taking the client's.
        let mut accepted = 0;
        for _ in 0..10 {
            match tokio::time::timeout(
                Duration::from_millis(200),
                from_client.send(Ok(Message::Data(vec![0; 1000]))),
            )
            .await
            {
                Ok(Ok(())) => accepted += 1,
                _ => break,
            }
        }
        assert!(accepted <= 4, "{accepted} messages taken with no reader");
        // Reading resumes the flow, and the count is what was carried.
        let mut received = 0;
        while let Ok(Some(Message::Data(data))) =
            tokio::time::timeout(Duration::from_millis(200), to_device.next()).await
        {
            received += data.len();
        }
        // (A send that timed out may have left its message in the
        // channel's per-sender slot.)
        assert!(
            received >= accepted * 1000 && received <= (accepted + 1) * 1000,
            "{received} bytes for {accepted} messages"
        );
        drop(from_client);
        drop(from_device);
        let traffic = splice.await.expect("the splice ends");
        assert_eq!(traffic.to_device, received as u64);
    }

    #[tokio::test]
    async fn an_idle_tunnel_is_pinged_and_then_ended() {
        let config = TunnelConfig {
            keepalive: Duration::from_millis(50),
            idle_timeout: Some(Duration::from_millis(400)),
            ..TunnelConfig::default()
        };
        let started = tokio::time::Instant::now();
        let (mut from_client, client, mut to_client) = socket(8);
        let (_from_device, device, mut to_device) = socket(8);
        let splice = tokio::spawn(async move { splice(client, device, &config).await });
        from_client
            .send(Ok(Message::Data(vec![7; 10])))
            .await
            .expect("sent");
        assert!(matches!(to_device.next().await, Some(Message::Data(_))));
        // Nothing more: each side is pinged, and pongs are not data.
        assert!(matches!(to_device.next().await, Some(Message::Ping)));
        assert!(matches!(to_client.next().await, Some(Message::Ping)));
        from_client.send(Ok(Message::Other)).await.expect("a pong");
        let traffic = splice.await.expect("the splice ends");
        assert!(traffic.idle);
        assert_eq!(traffic.to_device, 10);
        assert!(started.elapsed() >= Duration::from_millis(400));
        let mut last = None;
        while let Some(message) = to_client.next().await {
            last = Some(message);
        }
        assert!(matches!(last, Some(Message::Close)), "the client is told");
    }
}
