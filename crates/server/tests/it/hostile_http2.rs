//! Hostile HTTP/2 clients (ADR 0035, the console's second attack review):
//! what an HTTP/2 client can hold that an HTTP/1.1 one cannot.

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
        let request =
            axum::http::Request::get(format!("https://{api}/api/v1/openapi.json")).body(())?;
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
    let request = axum::http::Request::get(format!("https://{api}/api/v1/openapi.json")).body(())?;
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

type H2Client = h2::client::SendRequest<axum::body::Bytes>;

/// An HTTP/2 connection as a browser opens it, with default windows.
async fn h2_connection(
    tetherd: &Tetherd,
) -> anyhow::Result<(H2Client, tokio::task::JoinHandle<Result<(), h2::Error>>)> {
    let api = api_addr(tetherd)?;
    let tls = tls_from(&offering_h2(tetherd)?, ATTACKER, api).await?;
    let (client, connection) = h2::client::handshake(tls).await?;
    Ok((client, tokio::spawn(connection)))
}

/// Starts a GET (with the token, if any) and waits for its answer's head.
async fn h2_get(
    client: &H2Client,
    tetherd: &Tetherd,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<axum::http::Response<h2::RecvStream>> {
    let mut request = axum::http::Request::get(format!("{}{path}", tetherd.api_url));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let mut client = client.clone().ready().await?;
    let (answer, _) = client.send_request(request.body(())?, true)?;
    Ok(answer.await?)
}

async fn read_all(body: &mut h2::RecvStream) -> anyhow::Result<Vec<u8>> {
    let mut read = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        read.extend_from_slice(&chunk);
    }
    Ok(read)
}

/// A JSON body announced and never finished, over HTTP/2: the extractor's
/// deadline answers 408 as on HTTP/1.1, and the stream no longer counts,
/// so the connection then closes when idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_request_body_over_http2_is_answered_and_does_not_keep_the_connection()
-> anyhow::Result<()> {
    let tetherd = start_with_config("[api]\nheader_read_timeout_seconds = 1\n").await?;
    let (client, mut connection) = h2_connection(&tetherd).await?;
    let mut client = client.ready().await?;
    let login = axum::http::Request::post(format!("{}/api/v1/login", tetherd.api_url))
        .header("content-type", "application/json")
        .header("content-length", "100")
        .body(())?;
    let (answer, mut body) = client.send_request(login, false)?;
    body.send_data(axum::body::Bytes::from_static(b"{\"username\":"), false)?;
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .context("no answer within 5 s to a body that never finished")??;
    assert_eq!(answer.status(), 408);
    let closed = tokio::time::timeout(Duration::from_secs(5), &mut connection).await;
    anyhow::ensure!(
        closed.is_ok(),
        "the connection is still open 5 s after its only stream was answered"
    );
    drop(body);
    Ok(())
}

/// Extended CONNECT is not announced, so a tunnel over HTTP/2 is a plain
/// request: refused with 426 (and a CONNECT with 4xx), the connection
/// going on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_over_http2_is_refused_cleanly() -> anyhow::Result<()> {
    let tetherd = start_with_config("").await?;
    let token = tetherd.admin_token().await?;
    let (client, _connection) = h2_connection(&tetherd).await?;
    let tunnel = "/api/v1/devices/edge-1/tunnel?kind=exec&command=true";
    let refused = h2_get(&client, &tetherd, tunnel, Some(&token)).await?;
    assert_eq!(refused.status(), 426);
    let mut connect = client.clone().ready().await?;
    let request = axum::http::Request::connect(format!("{}{tunnel}", tetherd.api_url))
        .header("authorization", format!("Bearer {token}"))
        .body(())?;
    match connect.send_request(request, true) {
        Ok((answer, _)) => match answer.await {
            Ok(answer) => assert!(
                answer.status().is_client_error(),
                "CONNECT answered {}",
                answer.status()
            ),
            Err(error) => eprintln!("CONNECT's stream was reset: {error}"),
        },
        Err(error) => eprintln!("h2 refused to send a CONNECT: {error}"),
    }
    let ca = h2_get(&client, &tetherd, "/api/v1/ca.pem", None).await?;
    assert_eq!(ca.status(), 200, "the connection goes on");
    Ok(())
}

/// Follows over HTTP/2 count against the per-user cap, and give their
/// place back when their stream is reset or the connection vanishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_over_http2_give_their_places_back_when_reset_or_cut() -> anyhow::Result<()> {
    let tetherd = start_with_config("").await?;
    let token = tetherd.admin_token().await?;
    let (client, connection) = h2_connection(&tetherd).await?;
    let mut feeds = Vec::new();
    for _ in 0..16 {
        let feed = h2_get(&client, &tetherd, "/api/v1/events/follow", Some(&token)).await?;
        assert_eq!(feed.status(), 200);
        feeds.push(feed);
    }
    let mut refused = h2_get(&client, &tetherd, "/api/v1/events/follow", Some(&token)).await?;
    assert_eq!(refused.status(), 429, "the 17th follow of one user");
    read_all(refused.body_mut()).await?;
    // A stream reset (a tab closed) gives its place back.
    feeds.pop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let feed = h2_get(&client, &tetherd, "/api/v1/events/follow", Some(&token)).await?;
        if feed.status() == 200 {
            feeds.push(feed);
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "a reset follow's place did not come back within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The whole connection cut: all 16 places come back.
    connection.abort();
    drop((feeds, client));
    let (client, _connection) = h2_connection(&tetherd).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut feeds = Vec::new();
    while feeds.len() < 16 {
        let feed = h2_get(&client, &tetherd, "/api/v1/events/follow", Some(&token)).await?;
        if feed.status() == 200 {
            feeds.push(feed);
            continue;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of 16 places came back within 5 s of the connection's end",
            feeds.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A follow whose session is logged out sends nothing more, and ends at
/// its next line: at worst the next keepalive (15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_follow_over_http2_ends_by_its_next_keepalive() -> anyhow::Result<()> {
    let tetherd = start_with_config("").await?;
    let token = tetherd.admin_token().await?;
    let (client, _connection) = h2_connection(&tetherd).await?;
    let mut feed = h2_get(&client, &tetherd, "/api/v1/events/follow", Some(&token)).await?;
    assert_eq!(feed.status(), 200);
    tetherd
        .anonymous()?
        .with_token(Some(token.clone()))
        .post("/api/v1/logout", serde_json::json!({}))
        .await?
        .expect_status(204)?;
    let logged_out = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(20), read_all(feed.body_mut()))
        .await
        .context("the follow of a logged-out session is open 20 s later")??;
    let lines = String::from_utf8(read)?;
    eprintln!(
        "the logged-out follow ended {:?} after the logout with {lines:?}",
        logged_out.elapsed()
    );
    assert!(
        lines.trim().ends_with(r#"log in again"}}"#),
        "ends with the session line: {lines}"
    );
    Ok(())
}

/// Finding: log follows have no per-user cap, unlike the fleet feed. Each
/// spawns a follower that reads every followed device's logs every 2 s and
/// asks each device (up to 100) to send its logs live every 10 s. Over
/// HTTP/1.1 one address held at most `max_connections_per_ip` (64) of
/// them; over HTTP/2 each connection carries 200, so a viewer holds
/// 12,800 from one address. Expected: the `api.max_follows_per_user` cap
/// (16) as for `/events/follow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_follows_over_http2_are_capped_per_user() -> anyhow::Result<()> {
    let tetherd = start_with_config("").await?;
    let admin = tetherd.admin().await?;
    tether_testkit::sim_agent::DeviceCredentials::enroll(&admin, "edge-1").await?;
    let token = tetherd.admin_token().await?;
    let (client, _connection) = h2_connection(&tetherd).await?;
    let mut follows = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        let follow = h2_get(
            &client,
            &tetherd,
            "/api/v1/devices/edge-1/logs/follow",
            Some(&token),
        )
        .await?;
        match follow.status().as_u16() {
            200 => follows.push(follow),
            429 => refused += 1,
            other => anyhow::bail!("a log follow answered {other}"),
        }
    }
    anyhow::ensure!(
        follows.len() == 16 && refused == 84,
        "one user holds {} log follows at once over one HTTP/2 connection ({refused} refused); the fleet feed allows 16",
        follows.len()
    );
    // A follow that ends (its stream reset) gives its place back.
    follows.pop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let follow = h2_get(
            &client,
            &tetherd,
            "/api/v1/devices/edge-1/logs/follow",
            Some(&token),
        )
        .await?;
        if follow.status() == 200 {
            break;
        }
        assert_eq!(follow.status(), 429);
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "an ended log follow's place did not come back within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Long-polls (`GET /actions/{id}?waitSeconds=`) re-read their action every
/// few seconds while they wait. Over HTTP/1.1 one address held at most
/// `max_connections_per_ip` of them, a connection each; over HTTP/2 one
/// connection carries 200. So a caller may wait on that many at once, and
/// the next is told 429 at once, naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_over_http2_are_capped_per_caller() -> anyhow::Result<()> {
    const LIMIT: usize = 4;
    let tetherd = start_with_config(&format!("[api]\nmax_connections_per_ip = {LIMIT}\n")).await?;
    let admin = tetherd.admin().await?;
    tether_testkit::sim_agent::DeviceCredentials::enroll(&admin, "edge-1").await?;
    // The device is offline: the action stays queued, its waits wait.
    let queued = admin
        .post(
            "/api/v1/devices/edge-1/actions",
            serde_json::json!({"action": "get-node-ip"}),
        )
        .await?
        .expect_status(202)?;
    let id = queued["correlationId"]
        .as_str()
        .context("an id")?
        .to_owned();
    let token = tetherd.admin_token().await?;
    let (client, _connection) = h2_connection(&tetherd).await?;
    let path = format!("/api/v1/actions/{id}?waitSeconds=60");
    let mut waits = Vec::new();
    for _ in 0..LIMIT + 3 {
        let client = client.clone();
        let (tetherd_url, path, token) = (tetherd.api_url.clone(), path.clone(), token.clone());
        waits.push(tokio::spawn(async move {
            let request = axum::http::Request::get(format!("{tetherd_url}{path}"))
                .header("authorization", format!("Bearer {token}"))
                .body(())?;
            let mut client = client.ready().await?;
            let (answer, _) = client.send_request(request, true)?;
            let mut answer = answer.await?;
            let body = read_all(answer.body_mut()).await?;
            anyhow::Ok((
                answer.status().as_u16(),
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }));
    }
    // Whichever arrive last are refused at once; the others wait.
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused < 3 && tokio::time::Instant::now() < deadline {
        for wait in &mut waits {
            if !wait.is_finished() {
                continue;
            }
            let (status, body) = wait.await??;
            assert_eq!(
                status, 429,
                "only refusals answer before the wait ends: {body}"
            );
            assert!(
                body.contains("too_many_waits")
                    && body.contains(&format!("already waits on {LIMIT} actions at once")),
                "{body}"
            );
            refused += 1;
        }
        waits.retain(|wait| !wait.is_finished());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused, 3, "refused at once: the waits over {LIMIT}");
    assert_eq!(waits.len(), LIMIT, "these still wait");
    Ok(())
}
