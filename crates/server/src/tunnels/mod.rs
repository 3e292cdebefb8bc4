//! Tunnels (ADR 0021): a client's WebSocket spliced with the one its
//! device dials back to this replica.
//!
//! [`Tunnels`] holds the tunnels waiting for their device: an id, the
//! SHA-256 of a one-time token and where to hand the device's socket.
//! [`splice`] then moves messages between the two sockets one at a time,
//! so a slow reader stops the other side instead of filling tetherd's
//! memory.

pub mod stream;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tether_proto::DeviceId;
use tokio::sync::oneshot;

/// Tunnels waiting for their device on one replica.
pub struct Tunnels<S> {
    waiting: Mutex<HashMap<String, Waiting<S>>>,
    dial_within: Duration,
}

struct Waiting<S> {
    token_sha256: [u8; 32],
    device: DeviceId,
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
pub enum DialError {
    /// Unknown, expired, already dialed, or the token is wrong: one answer
    /// for all, so a guesser learns nothing.
    #[error("no tunnel {0} waits for this token")]
    Refused(String),
}

impl<S> Tunnels<S> {
    pub fn new(dial_within: Duration) -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
            dial_within,
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting<S>>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new tunnel to `device`, waiting until `now` + the dial time.
    pub fn open(&self, device: &DeviceId, now: Instant) -> Opened<S> {
        let id = uuid::Uuid::new_v4().to_string();
        let token = hex::encode(rand::random::<[u8; 32]>());
        let (dialed, arrival) = oneshot::channel();
        let mut waiting = self.waiting();
        // Tunnels whose device never came: their clients were told already.
        waiting.retain(|_, w| w.deadline > now && !w.dialed.is_closed());
        waiting.insert(
            id.clone(),
            Waiting {
                token_sha256: Sha256::digest(token.as_bytes()).into(),
                device: device.clone(),
                deadline: now + self.dial_within,
                dialed,
            },
        );
        Opened {
            id,
            token,
            dialed: arrival,
        }
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
    /// Anything else (pings are answered by the socket itself).
    Other,
}

/// Moves messages both ways until either side ends, then lets the other
/// direction finish for at most [`LINGER`]. Each side is its receiving
/// and its sending half.
pub async fn splice<CR, CW, DR, DW, E>(client: (CR, CW), device: (DR, DW)) -> Traffic
where
    CR: Stream<Item = Result<Message, E>> + Unpin,
    CW: Sink<Message> + Unpin,
    DR: Stream<Item = Result<Message, E>> + Unpin,
    DW: Sink<Message> + Unpin,
{
    let (mut client_rx, mut client_tx) = client;
    let (mut device_rx, mut device_tx) = device;
    let to_device = pump(&mut client_rx, &mut device_tx);
    let from_device = pump(&mut device_rx, &mut client_tx);
    tokio::pin!(to_device, from_device);
    let (to_device, from_device) = tokio::select! {
        sent = &mut to_device => (sent, tokio::time::timeout(LINGER, from_device).await.unwrap_or_default()),
        sent = &mut from_device => (tokio::time::timeout(LINGER, to_device).await.unwrap_or_default(), sent),
    };
    Traffic {
        to_device,
        from_device,
    }
}

/// Copies `from` into `to` one message at a time; the bytes copied.
async fn pump<R, W, E>(from: &mut R, to: &mut W) -> u64
where
    R: Stream<Item = Result<Message, E>> + Unpin,
    W: Sink<Message> + Unpin,
{
    let mut bytes = 0;
    while let Some(Ok(message)) = from.next().await {
        match message {
            Message::Data(data) => {
                bytes += data.len() as u64;
                if to.send(Message::Data(data)).await.is_err() {
                    return bytes;
                }
            }
            Message::Close => break,
            Message::Other => {}
        }
    }
    let _ = to.send(Message::Close).await;
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceId {
        DeviceId::new("edge-1").expect("a name")
    }

    #[test]
    fn a_tunnel_is_dialed_once_with_its_token_before_its_deadline() {
        let tunnels = Tunnels::<()>::new(Duration::from_secs(30));
        let now = Instant::now();
        let opened = tunnels.open(&device(), now);
        assert_eq!(
            tunnels.dial(&opened.id, "wrong", now).err(),
            Some(DialError::Refused(opened.id.clone()))
        );
        let (dialer, _) = tunnels
            .dial(&opened.id, &opened.token, now)
            .expect("dialed");
        assert_eq!(dialer, device());
        assert!(tunnels.dial(&opened.id, &opened.token, now).is_err());

        let late = tunnels.open(&device(), now);
        let after = now + Duration::from_secs(31);
        assert!(tunnels.dial(&late.id, &late.token, after).is_err());
        // Expired and abandoned tunnels are dropped when the next opens.
        let abandoned = tunnels.open(&device(), now);
        drop(abandoned.dialed);
        tunnels.open(&device(), after);
        assert_eq!(tunnels.waiting().len(), 1);
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
        let splice = tokio::spawn(splice(client, device));
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
}
