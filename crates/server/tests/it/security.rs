//! Secure by default, shown with third-party clients: Debian's
//! mosquitto_sub/mosquitto_pub holding real device credentials.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tether_testkit::sim_agent::DeviceCredentials;
use tether_testkit::{Database, Tetherd};

use crate::support::{id, mosquitto, on_both_databases, request, text, wait_terminal};

on_both_databases!(
    a_device_is_confined_to_its_own_topics,
    connections_without_valid_credentials_are_refused,
    an_enrollment_token_works_exactly_once,
);

fn mqtt_port(tetherd: &Tetherd) -> anyhow::Result<String> {
    Ok(tetherd
        .mqtt_url
        .rsplit_once(':')
        .context("mqtt url has a port")?
        .1
        .to_owned())
}

async fn a_device_is_confined_to_its_own_topics(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let port = mqtt_port(&tetherd)?;
    let a = DeviceCredentials::enroll(&admin, "device-a").await?;
    DeviceCredentials::enroll(&admin, "device-b").await?;
    let dir = tempfile::tempdir()?;
    a.write_to(dir.path())?;
    let for_b = request(&admin, "device-b", json!({"action": "get-node-ip"})).await?;

    for version in ["mqttv5", "mqttv311"] {
        // Subscribing to B's actions (or to everything) is refused.
        for filter in [
            "tether/v1/devices/device-b/actions",
            "tether/v1/devices/+/actions",
            "#",
        ] {
            let output = mosquitto(
                "mosquitto_sub",
                &port,
                Some(dir.path()),
                "device-a",
                &["-V", version, "-t", filter, "-C", "1", "-W", "3"],
            )
            .await?;
            // mosquitto_sub 2.0.11 exits 0 after printing that the SUBACK denied everything.
            let denied = !output.status.success()
                || String::from_utf8_lossy(&output.stderr).contains("denied");
            assert!(
                denied,
                "{version} subscribe {filter} must be denied: {}",
                text(&output)
            );
            assert!(
                output.stdout.is_empty(),
                "nothing of B may reach A: {}",
                text(&output)
            );
        }
        // Publishing as B is refused and changes nothing.
        let forged = json!({"correlationId": id(&for_b)?, "event": "get-node-ip", "statusCode": 200, "statusMessage": "forged", "response": {}}).to_string();
        let output = mosquitto(
            "mosquitto_pub",
            &port,
            Some(dir.path()),
            "device-a",
            &[
                "-V",
                version,
                "-q",
                "1",
                "-t",
                "tether/v1/devices/device-b/events",
                "-m",
                &forged,
            ],
        )
        .await?;
        let refused = !output.status.success()
            || String::from_utf8_lossy(&output.stderr)
                .to_lowercase()
                .contains("not authorized");
        assert!(
            refused,
            "{version} publish as B must be refused: {}",
            text(&output)
        );
        // Pretending to be B by client id does not work either.
        let output = mosquitto(
            "mosquitto_pub",
            &port,
            Some(dir.path()),
            "device-b",
            &[
                "-V",
                version,
                "-q",
                "1",
                "-t",
                "tether/v1/devices/device-b/events",
                "-m",
                &forged,
            ],
        )
        .await?;
        assert!(
            !output.status.success(),
            "{version} A's certificate with B's client id must be refused: {}",
            text(&output)
        );
    }
    let b_action = admin
        .get(&format!("/api/v1/actions/{}", id(&for_b)?))
        .await?
        .expect_status(200)?;
    assert_eq!(b_action["state"], "pending", "{b_action}");
    let b_events = admin
        .get("/api/v1/devices/device-b/events")
        .await?
        .expect_status(200)?;
    assert_eq!(b_events, json!({"items": []}));

    // A's own topics work with the same client: its answer ends its action.
    let for_a = request(&admin, "device-a", json!({"action": "get-node-ip"})).await?;
    let own = json!({"correlationId": id(&for_a)?, "event": "get-node-ip", "statusCode": 200, "statusMessage": "OK", "response": {}}).to_string();
    let output = mosquitto(
        "mosquitto_pub",
        &port,
        Some(dir.path()),
        "device-a",
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "tether/v1/devices/device-a/events",
            "-m",
            &own,
        ],
    )
    .await?;
    assert!(output.status.success(), "{}", text(&output));
    let done = wait_terminal(&admin, &id(&for_a)?).await?;
    assert_eq!(done["state"], "succeeded", "{done}");
    Ok(())
}

async fn connections_without_valid_credentials_are_refused(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let port = mqtt_port(&tetherd)?;
    let a = DeviceCredentials::enroll(&admin, "device-a").await?;
    let dir = tempfile::tempdir()?;
    a.write_to(dir.path())?;
    let subscribe = [
        "-V",
        "mqttv5",
        "-t",
        "tether/v1/devices/device-a/actions",
        "-C",
        "1",
        "-W",
        "3",
    ];

    // Plain TCP, no TLS.
    let output = mosquitto("mosquitto_sub", &port, None, "device-a", &subscribe).await?;
    assert!(
        !output.status.success(),
        "plain MQTT must be refused: {}",
        text(&output)
    );

    // TLS, but no client certificate.
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-i", "device-a", "--cafile"])
            .arg(dir.path().join("ca.pem"))
            .args(subscribe)
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    assert!(
        !output.status.success(),
        "TLS without a client certificate must be refused: {}",
        text(&output)
    );

    // A certificate whose device was deleted is refused at once.
    let publish = [
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        "tether/v1/devices/device-a/events",
        "-m",
        "{}",
    ];
    let output = mosquitto(
        "mosquitto_pub",
        &port,
        Some(dir.path()),
        "device-a",
        &publish,
    )
    .await?;
    assert!(
        output.status.success(),
        "the valid certificate connects: {}",
        text(&output)
    );
    admin.delete("/api/v1/devices/device-a").await?;
    let output = mosquitto(
        "mosquitto_pub",
        &port,
        Some(dir.path()),
        "device-a",
        &publish,
    )
    .await?;
    assert!(
        !output.status.success(),
        "a deleted device's certificate must be refused: {}",
        text(&output)
    );
    Ok(())
}

async fn an_enrollment_token_works_exactly_once(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let created = admin
        .post("/api/v1/devices", json!({"name": "edge-1"}))
        .await?
        .expect_status(201)?;
    let token = created["enrollment"]["token"].as_str().context("token")?;

    let garbage = admin
        .with_token(None)
        .post(
            "/api/v1/enroll",
            json!({"token": token, "csrPem": "not a csr"}),
        )
        .await?;
    assert_eq!(garbage.status, 400, "{}", garbage.body);

    let first = DeviceCredentials::enroll_with_token(&admin, token).await?;
    assert_eq!(first.device.as_str(), "edge-1");
    let again = DeviceCredentials::enroll_with_token(&admin, token).await;
    let message = format!(
        "{:#}",
        again
            .err()
            .context("a second enrollment with the same token must fail")?
    );
    assert!(message.contains("401"), "{message}");

    let wrong = admin
        .with_token(None)
        .post("/api/v1/enroll", json!({"token": "made-up", "csrPem": "x"}))
        .await?;
    assert_eq!(
        wrong.status, 400,
        "a malformed CSR is named first: {}",
        wrong.body
    );

    // Issuing a token revokes the device's earlier unused one: a token left in
    // a terminal or CI log stops working once a newer one exists.
    let stale = admin
        .post("/api/v1/devices/edge-1/enrollment-token", json!({}))
        .await?
        .expect_status(200)?;
    let renewed = admin
        .post("/api/v1/devices/edge-1/enrollment-token", json!({}))
        .await?
        .expect_status(200)?;
    let refused =
        DeviceCredentials::enroll_with_token(&admin, stale["token"].as_str().context("token")?)
            .await;
    assert!(refused.is_err(), "a superseded token must be refused");

    // The new token re-enrolls; the old certificate stops working.
    let second =
        DeviceCredentials::enroll_with_token(&admin, renewed["token"].as_str().context("token")?)
            .await?;
    let port = mqtt_port(&tetherd)?;
    let old_dir = tempfile::tempdir()?;
    first.write_to(old_dir.path())?;
    let new_dir = tempfile::tempdir()?;
    second.write_to(new_dir.path())?;
    let publish = [
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        "tether/v1/devices/edge-1/events",
        "-m",
        "{}",
    ];
    let old = mosquitto(
        "mosquitto_pub",
        &port,
        Some(old_dir.path()),
        "edge-1",
        &publish,
    )
    .await?;
    assert!(
        !old.status.success(),
        "the replaced certificate must be refused: {}",
        text(&old)
    );
    let new = mosquitto(
        "mosquitto_pub",
        &port,
        Some(new_dir.path()),
        "edge-1",
        &publish,
    )
    .await?;
    assert!(new.status.success(), "{}", text(&new));
    Ok(())
}

/// A tunnel (ADR 0021) opens only for a logged-in user, and a device's
/// dial-back only with the one-time token tetherd sent it: a WebSocket
/// upgrade with a made-up tunnel id or token is refused before it opens.
#[tokio::test]
async fn a_tunnel_needs_a_session_and_a_dial_back_its_one_time_token() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    admin
        .post("/api/v1/devices", json!({"name": "edge-1"}))
        .await?
        .expect_status(201)?;
    let anonymous = tetherd.anonymous()?;
    anonymous
        .get("/api/v1/devices/edge-1/tunnel?kind=exec&command=true")
        .await?
        .expect_status(401)?;

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tetherd.ca_pem())?)
        .tls_built_in_root_certs(false)
        .http1_only()
        .build()?;
    for bearer in ["made-up", ""] {
        let dial = http
            .get(format!("{}/api/v1/tunnels/made-up-id", tetherd.api_url))
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .bearer_auth(bearer)
            .send()
            .await?;
        assert_eq!(dial.status(), 401, "bearer {bearer:?}");
        let body: serde_json::Value = dial.json().await?;
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    Ok(())
}

/// A browser's WebSocket cannot send `Authorization`, so the console names
/// its token as a subprotocol (ADR 0034): on the tunnel route it is the
/// same credential with the same role check, refused as the header is
/// when bad, logged out or a viewer's; tetherd echoes the tunnel protocol,
/// never the token; no other route reads it.
#[tokio::test]
async fn a_tunnel_takes_the_bearer_token_from_a_websocket_subprotocol() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let _agent = tether_testkit::Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    for (username, role) in [("olga", "operator"), ("victor", "viewer")] {
        admin
            .post(
                "/api/v1/users",
                json!({"username": username, "role": role, "password": "correct horse battery"}),
            )
            .await?
            .expect_status(201)?;
    }
    let anonymous = tetherd.anonymous()?;
    let log_in = |username: &'static str| {
        let anonymous = anonymous.clone();
        async move {
            let login = anonymous
                .post(
                    "/api/v1/login",
                    json!({"username": username, "password": "correct horse battery"}),
                )
                .await?
                .expect_status(200)?;
            login["token"]
                .as_str()
                .map(str::to_owned)
                .context("a login gives a token")
        }
    };
    let (operator, viewer, logged_out) = (
        log_in("olga").await?,
        log_in("victor").await?,
        log_in("olga").await?,
    );
    anonymous
        .with_token(Some(logged_out.clone()))
        .post("/api/v1/logout", json!({}))
        .await?
        .expect_status(204)?;

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tetherd.ca_pem())?)
        .tls_built_in_root_certs(false)
        .http1_only()
        .build()?;
    let upgrade = |path: &str, protocols: String| {
        http.get(format!("{}{path}", tetherd.api_url))
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Protocol", protocols)
            .send()
    };
    let tunnel = "/api/v1/devices/edge-1/tunnel?kind=exec&command=true";
    let opened = upgrade(
        tunnel,
        format!("tether.tunnel.v1, tether.bearer.{operator}"),
    )
    .await?;
    assert_eq!(opened.status(), 101, "{:?}", opened.text().await);
    assert_eq!(
        opened.headers()["sec-websocket-protocol"],
        "tether.tunnel.v1",
        "the protocol is echoed, the token is not"
    );
    drop(opened);

    for (token, status, code) in [
        ("made-up", 401, "unauthorized"),
        (logged_out.as_str(), 401, "unauthorized"),
        (viewer.as_str(), 403, "role_denied"),
    ] {
        let refused = upgrade(tunnel, format!("tether.tunnel.v1, tether.bearer.{token}")).await?;
        assert_eq!(refused.status(), status, "token {token:?}");
        let body: serde_json::Value = refused.json().await?;
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    // The header path refuses the viewer the same way.
    anonymous
        .with_token(Some(viewer))
        .get(tunnel)
        .await?
        .expect_status(403)?;
    // Only the tunnel route reads the subprotocol.
    let elsewhere = upgrade("/api/v1/devices", format!("tether.bearer.{operator}")).await?;
    assert_eq!(elsewhere.status(), 401);
    Ok(())
}
