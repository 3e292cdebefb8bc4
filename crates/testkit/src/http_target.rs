//! A small real HTTP/1.1 server on loopback for actions that make requests
//! from the device (`send-api`): it counts requests and answers with a fixed
//! body, or holds every request open to catch an agent mid-action.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub enum Behaviour {
    /// `200 OK` with this body.
    Respond(Vec<u8>),
    /// Read the request, then never answer.
    Hang,
    /// `200 OK` with this body once the test notifies: an action that
    /// runs until the test lets it finish.
    RespondWhenNotified(Arc<tokio::sync::Notify>, Vec<u8>),
}

pub struct HttpTarget {
    pub url: String,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpTarget {
    pub async fn start(behaviour: Behaviour) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the HTTP target")?;
        let url = format!("http://{}", listener.local_addr()?);
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                match &behaviour {
                    Behaviour::Respond(body) => respond(&mut stream, body).await,
                    Behaviour::Hang => held.push(stream),
                    Behaviour::RespondWhenNotified(release, body) => {
                        let (release, body) = (release.clone(), body.clone());
                        tokio::spawn(async move {
                            release.notified().await;
                            respond(&mut stream, &body).await;
                        });
                    }
                }
            }
        });
        Ok(Self {
            url,
            requests,
            task,
        })
    }

    /// How many requests arrived so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits until `count` requests arrived, e.g. to catch an agent mid-action.
    pub async fn wait_for_requests(&self, count: usize) -> anyhow::Result<()> {
        crate::wait_until(
            &format!("{count} request(s) at {}", self.url),
            std::time::Duration::from_secs(20),
            || {
                let arrived = self.requests();
                async move { Ok((arrived >= count).then_some(())) }
            },
        )
        .await
    }
}

async fn respond(stream: &mut tokio::net::TcpStream, body: &[u8]) {
    let header = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(header.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

impl Drop for HttpTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}
