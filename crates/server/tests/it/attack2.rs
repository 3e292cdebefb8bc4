//! Attack review 2 (HTTP/2 for browsers, ADR 0035; the live feed): what a
//! hostile HTTP/2 client can hold that an HTTP/1.1 one cannot.

use std::time::Duration;

use anyhow::Context;
use tether_testkit::Tetherd;

use crate::hostile::{ATTACKER, api_addr, offering_h2, start_with_config, tls_from};

/// tetherd's resident memory, in bytes.
fn resident_bytes(tetherd: &Tetherd) -> anyhow::Result<u64> {
    let pid = tetherd.pid().context("tetherd runs")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .context("VmRSS in /proc/pid/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// An HTTP/2 connection from the attacker whose streams' windows stay
/// shut (SETTINGS_INITIAL_WINDOW_SIZE 0): tetherd can send answers'
/// headers but never a byte of their bodies.
async fn shut_window_connection(
    tetherd: &Tetherd,
) -> anyhow::Result<(
    h2::client::SendRequest<axum::body::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
)> {
    let api = api_addr(tetherd)?;
    let tls = tls_from(&offering_h2(tetherd)?, ATTACKER, api).await?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake(tls)
        .await?;
    Ok((client, tokio::spawn(connection)))
}

/// Finding H1: an anonymous HTTP/2 client opens streams and never opens
/// their flow-control window. Each answer's body waits for window that
/// never comes, so its request counts as open (`OpenRequest`) for ever and
/// the idle watch never closes the connection: no timer at all, which ADR
/// 0008 ruled out. And each of up to 200 streams per connection pins a
/// whole answer in memory (the OpenAPI document is copied per request),
/// where an HTTP/1.1 connection pins at most one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_never_opens_its_window_does_not_keep_its_connection()
-> anyhow::Result<()> {
    let tetherd = start_with_config("[api]\nheader_read_timeout_seconds = 1\n").await?;
    let api = api_addr(&tetherd)?;
    let before = resident_bytes(&tetherd)?;
    let (client, mut connection) = shut_window_connection(&tetherd).await?;
    let mut answers = Vec::new();
    for _ in 0..190 {
        let mut client = client.clone().ready().await?;
        let request = axum::http::Request::get(format!("https://{api}/api/v1/openapi.json"))
            .body(())?;
        let (answer, _) = client.send_request(request, true)?;
        answers.push(answer);
    }
    let mut bodies = Vec::new();
    for answer in answers {
        let answer = answer.await?;
        assert_eq!(answer.status(), 200);
        bodies.push(answer.into_body());
    }
    let held = resident_bytes(&tetherd)?.saturating_sub(before);
    eprintln!(
        "tetherd grew by {} KiB for one connection's 190 unread answers",
        held / 1024
    );
    // Five times the header timeout: a connection that makes no progress
    // must not keep its slot (nor its answers) past it.
    let closed = tokio::time::timeout(Duration::from_secs(5), &mut connection).await;
    anyhow::ensure!(
        closed.is_ok(),
        "an HTTP/2 connection whose client never opened its window is still open after 5 s (5 × the header timeout), holding {} KiB",
        held / 1024
    );
    // Before the OpenAPI document was shared, 190 copies took 45 MB.
    anyhow::ensure!(
        held < 16 * 1024 * 1024,
        "190 unread answers took {} KiB of tetherd's memory",
        held / 1024
    );
    drop(bodies);
    Ok(())
}

/// The other side of H1's fix: a slow client that keeps taking an answer,
/// a window's worth at a time, is not cut however long the whole takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http2_client_that_keeps_reading_gets_its_whole_answer() -> anyhow::Result<()> {
    let tetherd = start_with_config("[api]\nheader_read_timeout_seconds = 1\n").await?;
    let api = api_addr(&tetherd)?;
    let tls = tls_from(&offering_h2(&tetherd)?, ATTACKER, api).await?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .handshake::<_, axum::body::Bytes>(tls)
        .await?;
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await?;
    let request =
        axum::http::Request::get(format!("https://{api}/api/v1/openapi.json")).body(())?;
    let (answer, _) = client.send_request(request, true)?;
    let mut body = answer.await?.into_body();
    let started = std::time::Instant::now();
    let mut read = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        // A slow link: 16 KiB every 150 ms.
        tokio::time::sleep(Duration::from_millis(150)).await;
        body.flow_control().release_capacity(chunk.len())?;
        read.extend_from_slice(&chunk);
    }
    let took = started.elapsed();
    anyhow::ensure!(
        took > Duration::from_secs(2),
        "the answer took {took:?}: too fast to show anything"
    );
    serde_json::from_slice::<serde_json::Value>(&read)
        .context("the whole OpenAPI document, over more than twice the timeout")?;
    anyhow::ensure!(!connection.is_finished(), "the connection was closed");
    Ok(())
}
