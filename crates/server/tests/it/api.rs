//! The HTTP API on its own: authentication, devices, errors, OpenAPI.

use std::os::unix::fs::PermissionsExt;

use std::time::Duration;

use serde_json::json;
use tether_testkit::{Database, Tetherd, wait_until};

use crate::support::on_both_databases;

on_both_databases!(
    requests_without_valid_credentials_get_401,
    devices_are_created_listed_labelled_and_deleted,
    malformed_and_oversized_requests_get_clear_errors,
    expired_sessions_get_401_and_a_new_login_works,
    changes_logins_and_enrollments_are_audited,
    failed_logins_are_throttled_and_login_fields_bounded,
    sessions_are_listed_revoked_and_ended_by_logout,
    a_device_carries_a_bounded_number_of_labels,
    devices_are_searched_and_sorted_in_pages,
);

async fn requests_without_valid_credentials_get_401(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let anonymous = tetherd.anonymous()?;
    for path in [
        "/api/v1/devices",
        "/api/v1/devices/x/actions",
        "/api/v1/actions/x",
    ] {
        let reply = anonymous.get(path).await?;
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
        assert_eq!(reply.body["error"]["code"], "unauthorized");
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("tether login")
        );
    }
    let forged = anonymous.with_token(Some("forged-token".into()));
    assert_eq!(forged.get("/api/v1/devices").await?.status, 401);

    let wrong = anonymous
        .post(
            "/api/v1/login",
            json!({"username": "admin", "password": "wrong"}),
        )
        .await?;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body["error"]["code"], "bad_credentials");

    let admin = tetherd.admin().await?;
    admin.get("/api/v1/devices").await?.expect_status(200)?;

    let credentials = tetherd.data_dir().join("admin-credentials.toml");
    let mode = std::fs::metadata(&credentials)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin credentials must be private");
    let key_mode = std::fs::metadata(tetherd.data_dir().join("ca-key.pem"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600, "the CA key must be private");

    let openapi = anonymous
        .get("/api/v1/openapi.json")
        .await?
        .expect_status(200)?;
    assert!(
        openapi["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.")
    );
    for path in [
        "/api/v1/devices",
        "/api/v1/devices/{name}/actions",
        "/api/v1/actions/{correlationId}",
        "/api/v1/enroll",
        "/api/v1/time",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }

    // tetherd's clock, for agents to measure theirs against; no login.
    let before = chrono::Utc::now().timestamp_millis();
    let time = anonymous.get("/api/v1/time").await?.expect_status(200)?;
    let after = chrono::Utc::now().timestamp_millis();
    let millis = time["unixMillis"].as_i64().unwrap_or_default();
    assert!((before..=after).contains(&millis), "{time}");
    Ok(())
}

async fn devices_are_created_listed_labelled_and_deleted(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let created = admin
        .post(
            "/api/v1/devices",
            json!({"name": "edge-1", "labels": {"env": "prod", "site": "berlin"}}),
        )
        .await?
        .expect_status(201)?;
    assert_eq!(created["device"]["presence"], "offline");
    assert_eq!(created["device"]["enrolled"], false);
    let command = created["enrollment"]["agentCommand"]
        .as_str()
        .unwrap_or_default();
    assert!(
        command.starts_with(&format!("tether-agent --server {}", tetherd.api_url)),
        "{command}"
    );
    assert!(command.contains("--ca-sha256"));

    let duplicate = admin
        .post("/api/v1/devices", json!({"name": "edge-1"}))
        .await?;
    assert_eq!(duplicate.status, 409);
    let bad_name = admin
        .post("/api/v1/devices", json!({"name": "Edge/1"}))
        .await?;
    assert_eq!(bad_name.status, 400);
    assert!(
        bad_name.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Edge/1")
    );

    admin
        .post(
            "/api/v1/devices",
            json!({"name": "edge-2", "labels": {"env": "dev"}}),
        )
        .await?
        .expect_status(201)?;
    let prod = admin
        .get("/api/v1/devices?labelSelector=env%3Dprod")
        .await?
        .expect_status(200)?;
    let names: Vec<_> = prod["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("edge-1")]);
    let bad_selector = admin.get("/api/v1/devices?labelSelector=%3Dx").await?;
    assert_eq!(bad_selector.status, 400);

    let patched = admin
        .patch(
            "/api/v1/devices/edge-1",
            json!({"labels": {"site": null, "tier": "gold"}}),
        )
        .await?
        .expect_status(200)?;
    assert_eq!(patched["labels"], json!({"env": "prod", "tier": "gold"}));

    assert_eq!(admin.delete("/api/v1/devices/edge-1").await?.status, 204);
    assert_eq!(admin.get("/api/v1/devices/edge-1").await?.status, 404);
    assert_eq!(admin.delete("/api/v1/devices/edge-1").await?.status, 404);
    let all = admin.get("/api/v1/devices").await?.expect_status(200)?;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1));
    Ok(())
}

async fn malformed_and_oversized_requests_get_clear_errors(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let garbage = admin
        .post_raw("/api/v1/devices", b"{not json".to_vec())
        .await?;
    assert_eq!(garbage.status, 400, "{}", garbage.body);
    assert_eq!(garbage.body["error"]["code"], "invalid_json");

    let not_an_object = admin.patch("/api/v1/devices/edge-1", json!([])).await?;
    assert_eq!(not_an_object.status, 400, "{}", not_an_object.body);
    assert_eq!(
        not_an_object.body["error"]["message"],
        "invalid request body: expected a JSON object"
    );

    let wrong_type = admin.post("/api/v1/devices", json!({"name": 42})).await?;
    assert_eq!(wrong_type.status, 400, "{}", wrong_type.body);
    assert!(
        wrong_type.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("name")
    );

    // Just over the 1 MiB limit: tetherd reads and drops the rest before it
    // closes the connection, so the client reads the answer, not a reset.
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(1024 * 1024 + 16 * 1024));
    let oversized = admin.post_raw("/api/v1/devices", huge.into_bytes()).await?;
    assert_eq!(oversized.status, 413, "{}", oversized.body);

    let unknown_device = admin
        .post(
            "/api/v1/devices/ghost/actions",
            json!({"action": "get-node-ip"}),
        )
        .await?;
    assert_eq!(unknown_device.status, 404);
    assert!(
        unknown_device.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ghost")
    );

    assert_eq!(admin.get("/api/v1/no-such-route").await?.status, 404);
    // Nothing half-accepted: the failed requests created no device.
    let all = admin.get("/api/v1/devices").await?.expect_status(200)?;
    assert_eq!(all, json!({"items": []}));
    Ok(())
}

async fn expired_sessions_get_401_and_a_new_login_works(database: Database) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tetherd.toml");
    std::fs::write(&config, "[auth]\nsession_ttl_seconds = 1\n")?;
    let config = config.to_string_lossy().into_owned();
    let tetherd = Tetherd::start_with(database, &["--config", &config]).await?;
    let admin = tetherd.admin().await?;
    admin.get("/api/v1/devices").await?.expect_status(200)?;
    let expired = wait_until(
        "the one-second session to expire",
        Duration::from_secs(10),
        || {
            let admin = admin.clone();
            async move {
                let reply = admin.get("/api/v1/devices").await?;
                Ok((reply.status == 401).then_some(reply.body))
            }
        },
    )
    .await?;
    let message = expired["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("expired") && message.contains("tether login"),
        "{message}"
    );
    let again = tetherd.admin().await?;
    again.get("/api/v1/devices").await?.expect_status(200)?;
    Ok(())
}

async fn changes_logins_and_enrollments_are_audited(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let anonymous = tetherd.anonymous()?;
    let wrong = anonymous
        .post(
            "/api/v1/login",
            json!({"username": "admin", "password": "guess"}),
        )
        .await?;
    assert_eq!(wrong.status, 401);
    let admin = tetherd.admin().await?;
    admin
        .post("/api/v1/devices", json!({"name": "edge-1"}))
        .await?
        .expect_status(201)?;
    tether_testkit::sim_agent::DeviceCredentials::enroll(&admin, "edge-2").await?;
    admin.get("/api/v1/devices").await?.expect_status(200)?;
    assert_eq!(admin.delete("/api/v1/devices/ghost").await?.status, 404);
    assert_eq!(admin.delete("/api/v1/devices/edge-1").await?.status, 204);

    let audit = admin.get("/api/v1/audit").await?.expect_status(200)?;
    let lines: Vec<String> = audit["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["actor"].as_str().unwrap_or(""),
                e["method"].as_str().unwrap_or(""),
                e["path"].as_str().unwrap_or(""),
                e["status"]
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            "admin DELETE /api/v1/devices/edge-1 204",
            "admin DELETE /api/v1/devices/ghost 404",
            "device:edge-2 POST /api/v1/enroll 200",
            "admin POST /api/v1/devices 201",
            "admin POST /api/v1/devices 201",
            "admin POST /api/v1/login 200",
            "admin POST /api/v1/login 401",
        ],
        "reads are not audited; changes, logins and enrollments are, newest first"
    );
    assert_eq!(tetherd.anonymous()?.get("/api/v1/audit").await?.status, 401);
    Ok(())
}

async fn failed_logins_are_throttled_and_login_fields_bounded(
    database: Database,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        "[auth]\nlogin_failures_before_backoff = 3\nlogin_backoff_max_seconds = 60\n",
    )?;
    let config = config.to_string_lossy().into_owned();
    let tetherd = Tetherd::start_with(database, &["--config", &config]).await?;
    let anonymous = tetherd.anonymous()?;
    let login = |username: String, password: String| {
        let anonymous = anonymous.clone();
        async move {
            anonymous
                .post(
                    "/api/v1/login",
                    json!({"username": username, "password": password}),
                )
                .await
        }
    };

    // Too long: refused naming the field, before any password check.
    let long_name = login("u".repeat(129), "x".into()).await?;
    assert_eq!(long_name.status, 400, "{}", long_name.body);
    assert_eq!(long_name.body["error"]["code"], "invalid_field");
    assert_eq!(
        long_name.body["error"]["message"],
        "username is longer than 128 bytes"
    );
    let long_password = login("admin".into(), "p".repeat(1025)).await?;
    assert_eq!(long_password.status, 400, "{}", long_password.body);
    assert_eq!(
        long_password.body["error"]["message"],
        "password is longer than 1024 bytes"
    );
    // A body far beyond any valid login is refused by its size, unread.
    let huge = format!(
        "{{\"username\": \"{}\", \"password\": \"x\"}}",
        "u".repeat(64 * 1024)
    );
    let huge = anonymous
        .post_raw("/api/v1/login", huge.into_bytes())
        .await?;
    assert_eq!(huge.status, 413, "{}", huge.body);

    // Two refusals above count; the third and fourth failures go through,
    // the fourth starts a 1 s wait, a failure after it a 2 s wait, then 4 s.
    // A slow login under load can outlast a 1 s wait, so the right password
    // is tried only once the remaining wait is long enough not to race.
    for _ in 0..2 {
        let wrong = login("admin".into(), "guess".into()).await?;
        assert_eq!(wrong.status, 401, "{}", wrong.body);
    }
    let mut waits = Vec::new();
    loop {
        match refused_login_retry_after(&tetherd).await? {
            Some(retry_after) if retry_after >= 3 => break,
            Some(retry_after) => {
                waits.push(retry_after);
                // What a client is told to do; the wait is tetherd's.
                tokio::time::sleep(Duration::from_secs(retry_after)).await;
            }
            None => {}
        }
        anyhow::ensure!(waits.len() <= 4, "the wait does not grow: {waits:?}");
    }
    assert!(
        waits.first().is_some_and(|first| (1..=2).contains(first)),
        "Retry-After is the remaining wait, 1 s after the free failures: {waits:?}"
    );
    let throttled = anonymous
        .post(
            "/api/v1/login",
            json!({"username": "admin", "password": tetherd.admin_password()}),
        )
        .await?;
    assert_eq!(
        throttled.status, 429,
        "even the right password waits: {}",
        throttled.body
    );
    assert_eq!(throttled.body["error"]["code"], "too_many_requests");
    assert!(
        throttled.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("retry after"),
        "{}",
        throttled.body
    );
    // After the wait the right password works and the streak ends.
    let admin = wait_until("the login wait to pass", Duration::from_secs(10), || {
        let anonymous = anonymous.clone();
        let password = tetherd.admin_password().to_owned();
        async move {
            let reply = anonymous
                .post(
                    "/api/v1/login",
                    json!({"username": "admin", "password": password}),
                )
                .await?;
            Ok((reply.status == 200).then_some(reply.body))
        }
    })
    .await?;
    let token = admin["token"].as_str().map(str::to_owned);
    let audit = anonymous
        .with_token(token)
        .get("/api/v1/audit")
        .await?
        .expect_status(200)?;
    let statuses: Vec<_> = audit["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["path"] == "/api/v1/login")
        .map(|e| e["status"].as_u64().unwrap_or_default())
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 401),
        "refused logins (400, 413, 429) are not audited one by one: {statuses:?}"
    );
    Ok(())
}

/// A wrong login for `admin`: `None` if it was checked (401), else the
/// `Retry-After` of its 429.
async fn refused_login_retry_after(tetherd: &Tetherd) -> anyhow::Result<Option<u64>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tetherd.ca_pem())?)
        .build()?;
    let response = client
        .post(format!("{}/api/v1/login", tetherd.api_url))
        .json(&json!({"username": "admin", "password": "guess"}))
        .send()
        .await?;
    if response.status() == 401 {
        return Ok(None);
    }
    anyhow::ensure!(
        response.status() == 429,
        "expected 401 or 429, got {}",
        response.status()
    );
    let header = response
        .headers()
        .get("retry-after")
        .ok_or_else(|| anyhow::anyhow!("a 429 carries Retry-After"))?;
    Ok(Some(header.to_str()?.parse()?))
}

async fn sessions_are_listed_revoked_and_ended_by_logout(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let first = tetherd.admin().await?;
    let second = tetherd.admin().await?;
    let sessions = first.get("/api/v1/sessions").await?.expect_status(200)?;
    let sessions = sessions["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    for session in &sessions {
        assert_eq!(session["username"], "admin");
        for field in ["id", "createdAt", "expiresAt", "lastUsedAt"] {
            assert!(session[field].is_string(), "{field} in {session}");
        }
        assert!(session.get("token").is_none() && session.get("tokenHash").is_none());
    }
    let own: Vec<_> = sessions.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(own.len(), 1, "exactly the caller's session is marked");
    let other = sessions
        .iter()
        .find(|s| s["current"] == false)
        .and_then(|s| s["id"].as_str())
        .unwrap_or_default()
        .to_owned();

    assert_eq!(
        first
            .delete(&format!("/api/v1/sessions/{other}"))
            .await?
            .status,
        204
    );
    let revoked = second.get("/api/v1/devices").await?;
    assert_eq!(revoked.status, 401, "a revoked token stops working at once");
    let again = first.delete(&format!("/api/v1/sessions/{other}")).await?;
    assert_eq!(again.status, 404, "{}", again.body);

    assert_eq!(first.post("/api/v1/logout", json!({})).await?.status, 204);
    assert_eq!(first.get("/api/v1/devices").await?.status, 401);
    assert_eq!(
        tetherd.anonymous()?.get("/api/v1/sessions").await?.status,
        401
    );
    let audit = tetherd
        .admin()
        .await?
        .get("/api/v1/audit")
        .await?
        .expect_status(200)?;
    assert!(
        audit["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["path"] == "/api/v1/logout" && e["status"] == 204),
        "logouts are audited: {audit}"
    );
    Ok(())
}

async fn a_device_carries_a_bounded_number_of_labels(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let labels = |from: usize, count: usize| {
        (from..from + count)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
    };
    let too_many = admin
        .post(
            "/api/v1/devices",
            json!({"name": "edge-1", "labels": labels(0, 65)}),
        )
        .await?;
    assert_eq!(too_many.status, 400, "{}", too_many.body);
    assert!(
        too_many.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 64 labels"),
        "{}",
        too_many.body
    );
    admin
        .post(
            "/api/v1/devices",
            json!({"name": "edge-1", "labels": labels(0, 64)}),
        )
        .await?
        .expect_status(201)?;
    let over = admin
        .patch("/api/v1/devices/edge-1", json!({"labels": labels(64, 1)}))
        .await?;
    assert_eq!(
        over.status, 400,
        "a patch cannot take it over: {}",
        over.body
    );
    Ok(())
}

/// `search` and `sort` on the device list: combined with a label selector,
/// paged with tokens that hold only for the listing they came from, and
/// bad values refused naming the parameter.
async fn devices_are_searched_and_sorted_in_pages(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    for (name, display, site) in [
        ("edge-berlin-1", None, "berlin"),
        ("edge-berlin-2", Some("Gateway North"), "berlin"),
        ("edge-paris-1", Some("North door"), "paris"),
        ("core-1", None, "berlin"),
        ("edge-x", Some("Door_7"), "paris"),
    ] {
        let mut body = json!({"name": name, "labels": {"site": site}});
        if let Some(display) = display {
            body["displayName"] = json!(display);
        }
        admin
            .post("/api/v1/devices", body)
            .await?
            .expect_status(201)?;
    }
    let names = |page: &serde_json::Value| -> Vec<String> {
        page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|device| device["name"].as_str().map(str::to_owned))
            .collect()
    };
    let get = |path: String| {
        let admin = admin.clone();
        async move { admin.get(&path).await?.expect_status(200) }
    };
    // Case ignored, display names searched, `_` no wildcard.
    assert_eq!(
        names(&get("/api/v1/devices?search=NORTH".into()).await?),
        ["edge-berlin-2", "edge-paris-1"]
    );
    assert_eq!(
        names(&get("/api/v1/devices?search=north&labelSelector=site%3Dberlin".into()).await?),
        ["edge-berlin-2"]
    );
    assert_eq!(
        names(&get("/api/v1/devices?search=_".into()).await?),
        ["edge-x"]
    );
    assert_eq!(
        names(&get("/api/v1/devices?search=%20%20".into()).await?).len(),
        5,
        "blank is no search"
    );

    // Every order, walked two at a time.
    for (sort, expected) in [
        (
            "name",
            vec![
                "core-1",
                "edge-berlin-1",
                "edge-berlin-2",
                "edge-paris-1",
                "edge-x",
            ],
        ),
        (
            "-name",
            vec![
                "edge-x",
                "edge-paris-1",
                "edge-berlin-2",
                "edge-berlin-1",
                "core-1",
            ],
        ),
        // None seen yet: equal times, by name.
        (
            "lastSeen",
            vec![
                "core-1",
                "edge-berlin-1",
                "edge-berlin-2",
                "edge-paris-1",
                "edge-x",
            ],
        ),
        (
            "-lastSeen",
            vec![
                "edge-x",
                "edge-paris-1",
                "edge-berlin-2",
                "edge-berlin-1",
                "core-1",
            ],
        ),
    ] {
        let mut walked = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/devices?sort={sort}&limit=2");
            if let Some(token) = &token {
                path.push_str(&format!("&continue={token}"));
            }
            let page = get(path).await?;
            walked.extend(names(&page));
            match page["continue"].as_str() {
                Some(next) => token = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(walked, expected, "sort={sort}");
    }

    // A token holds for its own listing only.
    let first = get("/api/v1/devices?sort=-name&limit=2".into()).await?;
    let token = first["continue"].as_str().unwrap_or_default().to_owned();
    for other in ["sort=name", "sort=-name&search=edge", "sort=lastSeen"] {
        let reply = admin
            .get(&format!("/api/v1/devices?{other}&limit=2&continue={token}"))
            .await?;
        assert_eq!(reply.status, 400, "{other}: {}", reply.body);
    }

    let long = "x".repeat(129);
    for (query, names_parameter) in [
        (format!("search={long}"), "search"),
        ("search=a%01b".to_owned(), "search"),
        ("sort=age".to_owned(), "sort"),
        ("sort=NAME".to_owned(), "sort"),
    ] {
        let reply = admin.get(&format!("/api/v1/devices?{query}")).await?;
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(names_parameter), "{query}: {message}");
    }
    Ok(())
}
