//! The lingering close, as Apache and nginx do it. tetherd often answers
//! before it has read a request's body (401 without credentials, 413 from
//! `Content-Length`), and hyper then closes the connection with the rest of
//! the body unread. Closing a socket with unread bytes makes the kernel
//! send a reset instead of a FIN, and a client still sending its body (as
//! Python's `http.client` does before it reads) fails with a reset or a TLS
//! EOF and never sees the answer. So a connection is not closed at once:
//! tetherd ends its side (TLS `close_notify`, TCP FIN) and reads and throws
//! away what still arrives, until the client closes or a bound is reached.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{MsgFlags, recv};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::server::TlsStream;

/// How long, and how much, a closing connection is read before it is closed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Beyond this many bytes the client is sending far more than tetherd
    /// reads, and the connection closes (with a reset).
    pub max_bytes: u64,
    /// A client silent this long is not sending a body any more.
    pub idle: Duration,
    /// At most this long in all, so a trickling client cannot keep the
    /// connection (and its slot) much past the end.
    pub max_time: Duration,
}

/// Twice the largest body tetherd reads (1 MiB): any body it would accept,
/// and one refused for its size up to twice that, gets its answer. Dropped
/// undecrypted and uncopied, which is cheap, but each byte still has to be
/// received: the bound is what one refused request can cost. The times are
/// Apache's (2 s between reads) and well under nginx's.
pub const LIMITS: Limits = Limits {
    max_bytes: 2 * 1024 * 1024,
    idle: Duration::from_secs(2),
    max_time: Duration::from_secs(10),
};

/// Ends a connection: TLS `close_notify` and FIN (when hyper has not sent
/// them already), then what the client still sends is read and discarded
/// within `limits` before the socket is closed.
pub async fn close(mut tls: TlsStream<TcpStream>, limits: Limits) {
    let end = Instant::now() + limits.max_time;
    // A failure here (the client reset the connection, or never reads) only
    // means there is nothing left to be polite to.
    let _ = timeout_at(end, tls.shutdown()).await;
    // The TLS session is over: what arrives now is only to be thrown away.
    let (tcp, _) = tls.into_inner();
    discard(&tcp, limits, end).await;
}

thread_local! {
    /// Where `recv` would put what it drops. With MSG_TRUNC, Linux drops
    /// TCP data without copying it out, so a flood of refused megabytes
    /// costs tetherd system calls, not copies, and one buffer per thread
    /// (its length is the most dropped per call) serves every connection.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Reads and throws away what the client sends until it closes, goes
/// silent for `limits.idle`, passes `limits.max_bytes` or `end` comes;
/// returns how many bytes were thrown away.
async fn discard(tcp: &TcpStream, limits: Limits, end: Instant) -> u64 {
    let mut discarded = 0u64;
    while discarded < limits.max_bytes {
        let deadline = end.min(Instant::now() + limits.idle);
        if !matches!(timeout_at(deadline, tcp.readable()).await, Ok(Ok(()))) {
            break;
        }
        let dropped = tcp.try_io(Interest::READABLE, || {
            SCRATCH.with_borrow_mut(|scratch| {
                recv(tcp.as_raw_fd(), scratch, MsgFlags::MSG_TRUNC).map_err(io::Error::from)
            })
        });
        match dropped {
            Ok(0) => break,
            Ok(dropped) => discarded += dropped as u64,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    discarded
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    const SHORT: Limits = Limits {
        max_bytes: 256 * 1024,
        idle: Duration::from_secs(1),
        max_time: Duration::from_secs(5),
    };

    fn end() -> Instant {
        Instant::now() + SHORT.max_time
    }

    /// A loopback connection: the client's end and tetherd's.
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("bound");
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (client.expect("connect"), accepted.expect("accept").0)
    }

    #[tokio::test]
    async fn what_arrives_before_the_client_closes_is_discarded() {
        let (mut client, server) = connection().await;
        client.write_all(&[7u8; 100_000]).await.expect("sent");
        drop(client);
        let started = Instant::now();
        assert_eq!(discard(&server, SHORT, end()).await, 100_000);
        assert!(
            started.elapsed() < SHORT.idle,
            "the client's close ends the lingering at once"
        );
    }

    #[tokio::test]
    async fn a_client_sending_without_end_is_cut_off_at_the_byte_bound() {
        let (mut client, server) = connection().await;
        let sending =
            tokio::spawn(async move { while client.write_all(&[7u8; 4096]).await.is_ok() {} });
        let discarded = discard(&server, SHORT, end()).await;
        assert!(
            (SHORT.max_bytes..SHORT.max_bytes + 64 * 1024).contains(&discarded),
            "{discarded} bytes"
        );
        // Closing tetherd's end stops the sender.
        drop(server);
        sending.await.expect("the sender stopped");
    }

    #[tokio::test]
    async fn a_silent_client_is_given_up_after_the_idle_time() {
        let (_client, server) = connection().await;
        let started = Instant::now();
        assert_eq!(discard(&server, SHORT, end()).await, 0);
        assert!(started.elapsed() >= SHORT.idle);
        assert!(started.elapsed() < SHORT.max_time);
    }

    #[tokio::test]
    async fn a_trickling_client_is_given_up_at_the_end() {
        let (mut client, server) = connection().await;
        let _sending = tokio::spawn(async move {
            // A byte well within every idle time, for longer than the end.
            while client.write_all(b"x").await.is_ok() {
                tokio::time::sleep(SHORT.idle / 4).await;
            }
        });
        let started = Instant::now();
        let discarded = discard(&server, SHORT, Instant::now() + SHORT.idle * 2).await;
        assert!(discarded > 2, "{discarded} bytes");
        // Neither the idle time nor the byte bound would ever stop it.
        assert!(started.elapsed() < SHORT.max_time);
    }
}
