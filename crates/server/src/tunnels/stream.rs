//! A tunnel's two socket halves as one byte stream, for a protocol spoken
//! over the tunnel by tetherd itself (the Kubernetes proxy, ADR 0022):
//! what is written goes to the device as [`tunnel::STDIN`] frames of at
//! most [`tunnel::MAX_PAYLOAD`] bytes, what is read is the payload of its
//! [`tunnel::STDOUT`] frames. The device closing its side, or
//! [`tunnel::CLOSE`] of its output, is the end of the stream.
//!
//! Reads and writes go one message at a time, so the stream buffers at
//! most one received message: a slow reader stops the device.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use futures::{Sink, Stream};
use tether_proto::tunnel;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::{Message, Traffic};

/// The byte stream; when it is dropped, its [`Finished`] learns the
/// bytes it carried.
pub struct TunnelStream<R, W> {
    receiver: R,
    sender: W,
    /// The rest of the last received payload.
    pending: Vec<u8>,
    offset: usize,
    ended: bool,
    counted: Arc<Counters>,
    finished: Option<oneshot::Sender<Traffic>>,
}

#[derive(Default)]
struct Counters {
    to_device: AtomicU64,
    from_device: AtomicU64,
}

/// Resolves to the bytes carried once the stream is dropped.
pub type Finished = oneshot::Receiver<Traffic>;

impl<R, W> TunnelStream<R, W> {
    pub fn new(receiver: R, sender: W) -> (Self, Finished) {
        let (finished, on_finish) = oneshot::channel();
        (
            Self {
                receiver,
                sender,
                pending: Vec::new(),
                offset: 0,
                ended: false,
                counted: Arc::default(),
                finished: Some(finished),
            },
            on_finish,
        )
    }
}

impl<R, W> Drop for TunnelStream<R, W> {
    fn drop(&mut self) {
        if let Some(finished) = self.finished.take() {
            let _ = finished.send(Traffic {
                to_device: self.counted.to_device.load(Ordering::Relaxed),
                from_device: self.counted.from_device.load(Ordering::Relaxed),
                idle: false,
            });
        }
    }
}

impl<R, W, E> AsyncRead for TunnelStream<R, W>
where
    R: Stream<Item = Result<Message, E>> + Unpin,
    W: Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.offset < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.offset);
                buf.put_slice(&this.pending[this.offset..this.offset + n]);
                this.offset += n;
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.receiver).poll_next(cx)) {
                Some(Ok(Message::Data(data))) => {
                    this.counted
                        .from_device
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    match tunnel::split(&data) {
                        Some((tunnel::STDOUT, payload)) => {
                            this.pending = payload.to_vec();
                            this.offset = 0;
                        }
                        Some((tunnel::CLOSE, _)) => this.ended = true,
                        // The device speaks HTTP on STDOUT; nothing else
                        // is expected, and nothing else is passed on.
                        _ => {}
                    }
                }
                Some(Ok(Message::Other | Message::Ping)) => {}
                Some(Ok(Message::Close)) | Some(Err(_)) | None => this.ended = true,
            }
        }
    }
}

impl<R, W> AsyncWrite for TunnelStream<R, W>
where
    R: Unpin,
    W: Sink<Message> + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let gone = |_| io::Error::from(io::ErrorKind::BrokenPipe);
        ready!(Pin::new(&mut this.sender).poll_ready(cx)).map_err(gone)?;
        let n = buf.len().min(tunnel::MAX_PAYLOAD);
        let frame = tunnel::frame(tunnel::STDIN, &buf[..n]);
        this.counted
            .to_device
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        Pin::new(&mut this.sender)
            .start_send(Message::Data(frame))
            .map_err(gone)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().sender)
            .poll_flush(cx)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().sender)
            .poll_close(cx)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

#[cfg(test)]
mod tests {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn bytes_go_out_as_stdin_frames_and_come_back_from_stdout_ones() {
        let (mut incoming, receiver) = futures::channel::mpsc::channel::<Result<Message, ()>>(4);
        let (sender, mut outgoing) = futures::channel::mpsc::channel::<Message>(4);
        let (mut stream, finished) = TunnelStream::new(receiver, sender);
        stream
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("writes");
        let Some(Message::Data(sent)) = outgoing.next().await else {
            panic!("a data message");
        };
        assert_eq!(
            tunnel::split(&sent),
            Some((tunnel::STDIN, &b"GET / HTTP/1.1\r\n\r\n"[..]))
        );
        for message in [
            Message::Data(tunnel::frame(tunnel::STDOUT, b"HTTP/1.1 ")),
            Message::Data(tunnel::frame(tunnel::STDERR, b"not HTTP")),
            Message::Data(tunnel::frame(tunnel::STDOUT, b"200 OK")),
            Message::Data(tunnel::frame(tunnel::CLOSE, &[tunnel::STDOUT])),
        ] {
            incoming.send(Ok(message)).await.expect("queued");
        }
        let mut read = String::new();
        stream
            .read_to_string(&mut read)
            .await
            .expect("reads to the end");
        assert_eq!(read, "HTTP/1.1 200 OK");
        drop(stream);
        let traffic = finished.await.expect("counted");
        assert_eq!(traffic.to_device, 19);
        assert_eq!(traffic.from_device, 10 + 9 + 7 + 2);
    }
}
