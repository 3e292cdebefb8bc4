//! Queries that scale, over HTTP (issue 12): every listing in pages with
//! `limit` and `continue`, label selectors with set forms, the fleet summary.
//! The store suite (`store::queries`) proves the same on 20,000 devices.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tether_testkit::api::ApiClient;
use tether_testkit::{Database, Tetherd};

use crate::support::on_both_databases;

on_both_databases!(
    listings_are_paged_and_the_fleet_summarized,
    hostile_selectors_and_tokens_are_a_clear_400,
);

/// Follows `continue` from `path` (which has a query already) to the end;
/// every page but the last is full.
async fn walk(admin: &ApiClient, path: &str, limit: usize) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            Some(token) => format!("{path}&limit={limit}&continue={token}"),
            None => format!("{path}&limit={limit}"),
        };
        let page = admin.get(&url).await?.expect_status(200)?;
        let got = page["items"].as_array().cloned().unwrap_or_default();
        assert!(got.len() <= limit, "{url}: {page}");
        items.extend(got.iter().cloned());
        match page["continue"].as_str() {
            Some(token) => {
                assert_eq!(got.len(), limit, "only the last page is short: {page}");
                next = Some(token.to_owned());
            }
            None => return Ok(items),
        }
    }
}

fn names(items: &[Value]) -> Vec<&str> {
    items.iter().filter_map(|d| d["name"].as_str()).collect()
}

fn message(reply: &tether_testkit::api::Reply) -> String {
    reply.body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn listings_are_paged_and_the_fleet_summarized(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let sites = ["berlin", "paris", "", "berlin", "lima", "", "paris"];
    for (i, site) in sites.iter().enumerate() {
        let labels = if site.is_empty() {
            json!({})
        } else {
            json!({"site": site})
        };
        admin
            .post(
                "/api/v1/devices",
                json!({"name": format!("edge-{i}"), "labels": labels}),
            )
            .await?
            .expect_status(201)?;
    }
    let reserved = admin
        .post("/api/v1/devices", json!({"name": "summary"}))
        .await?;
    assert_eq!(reserved.status, 400, "{}", reserved.body);
    assert!(message(&reserved).contains("reserved"), "{}", reserved.body);

    // Every device once, by name, two at a time.
    let all = walk(&admin, "/api/v1/devices?", 2).await?;
    assert_eq!(
        names(&all),
        [
            "edge-0", "edge-1", "edge-2", "edge-3", "edge-4", "edge-5", "edge-6"
        ]
    );
    let picked = walk(
        &admin,
        "/api/v1/devices?labelSelector=site%20in%20(berlin,paris)",
        2,
    )
    .await?;
    assert_eq!(names(&picked), ["edge-0", "edge-1", "edge-3", "edge-6"]);
    let others = walk(
        &admin,
        "/api/v1/devices?labelSelector=site%20notin%20(berlin)",
        3,
    )
    .await?;
    assert_eq!(
        names(&others),
        ["edge-1", "edge-2", "edge-4", "edge-5", "edge-6"],
        "notin also picks the devices without the label"
    );

    // Bad limits name `limit`.
    for limit in ["0", "5001", "-1", "many"] {
        let reply = admin.get(&format!("/api/v1/devices?limit={limit}")).await?;
        assert_eq!(reply.status, 400, "limit={limit}: {}", reply.body);
        assert!(
            message(&reply).contains("limit"),
            "limit={limit}: {}",
            reply.body
        );
    }
    let reply = admin.get("/api/v1/audit?limit=0").await?;
    assert_eq!(reply.status, 400, "{}", reply.body);

    // A token works only unchanged and only for its own listing.
    let first = admin
        .get("/api/v1/devices?labelSelector=site&limit=1")
        .await?
        .expect_status(200)?;
    let token = first["continue"].as_str().unwrap_or_default().to_owned();
    assert!(!token.is_empty(), "{first}");
    let same_query = admin
        .get(&format!(
            "/api/v1/devices?labelSelector=site&limit=1&continue={token}"
        ))
        .await?
        .expect_status(200)?;
    assert_eq!(
        names(
            same_query["items"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
        ),
        ["edge-1"]
    );
    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered)?;
    for bad in [tampered.as_str(), "bm90LWEtdG9rZW4", "%FF%FE"] {
        let reply = admin
            .get(&format!(
                "/api/v1/devices?labelSelector=site&continue={bad}"
            ))
            .await?;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(
            message(&reply).starts_with("invalid continue token"),
            "{}",
            reply.body
        );
    }
    for elsewhere in [
        format!("/api/v1/devices?labelSelector=site%3Dberlin&continue={token}"),
        format!("/api/v1/devices?continue={token}"),
        format!("/api/v1/audit?continue={token}"),
        format!("/api/v1/devices/edge-0/actions?continue={token}"),
    ] {
        let reply = admin.get(&elsewhere).await?;
        assert_eq!(reply.status, 400, "{elsewhere}: {}", reply.body);
        assert!(
            message(&reply).contains("another listing"),
            "{}",
            reply.body
        );
    }
    // The same selector spelled differently is the same listing.
    admin
        .get(&format!(
            "/api/v1/devices?labelSelector=%20site%20&continue={token}"
        ))
        .await?
        .expect_status(200)?;

    // Newest-first listings: a device's actions, the audit log, sessions.
    let mut requested = Vec::new();
    for _ in 0..5 {
        let action = admin
            .post(
                "/api/v1/devices/edge-0/actions",
                json!({"action": "get-node-ip", "input": {}}),
            )
            .await?
            .expect_status(202)?;
        requested.push(
            action["correlationId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let actions = walk(&admin, "/api/v1/devices/edge-0/actions?", 2).await?;
    let listed: Vec<String> = actions
        .iter()
        .filter_map(|a| a["correlationId"].as_str().map(str::to_owned))
        .collect();
    requested.reverse();
    assert_eq!(listed, requested, "newest first, each once");
    let audit = walk(&admin, "/api/v1/audit?", 3).await?;
    let entries: BTreeSet<String> = audit.iter().map(Value::to_string).collect();
    assert!(
        audit.len() >= 13,
        "7 devices, a refusal, 5 actions: {}",
        audit.len()
    );
    assert_eq!(entries.len(), audit.len(), "no entry twice");
    let sessions = admin
        .get("/api/v1/sessions?limit=1")
        .await?
        .expect_status(200)?;
    assert_eq!(
        sessions["items"].as_array().map(Vec::len),
        Some(1),
        "{sessions}"
    );
    let events = admin
        .get("/api/v1/devices/edge-0/events?limit=5000")
        .await?
        .expect_status(200)?;
    assert_eq!(events, json!({"items": []}));

    // Counts per site; devices without the label last, as null.
    let summary = admin
        .get("/api/v1/devices/summary?by=site")
        .await?
        .expect_status(200)?;
    assert_eq!(
        summary,
        json!({
            "by": "site",
            "total": {"online": 0, "offline": 7, "total": 7},
            "groups": [
                {"value": "berlin", "online": 0, "offline": 2, "total": 2},
                {"value": "lima", "online": 0, "offline": 1, "total": 1},
                {"value": "paris", "online": 0, "offline": 2, "total": 2},
                {"value": null, "online": 0, "offline": 2, "total": 2},
            ]
        })
    );
    let berlin = admin
        .get("/api/v1/devices/summary?labelSelector=site%3Dberlin")
        .await?
        .expect_status(200)?;
    assert_eq!(
        berlin,
        json!({"total": {"online": 0, "offline": 2, "total": 2}, "groups": []})
    );
    let bad_key = admin.get("/api/v1/devices/summary?by=no%20key").await?;
    assert_eq!(bad_key.status, 400, "{}", bad_key.body);
    assert!(message(&bad_key).contains("label key"), "{}", bad_key.body);
    Ok(())
}

/// A token as tetherd writes one (base64url of JSON and its SHA-256's first
/// 8 bytes): anyone can make one, so what it says must be checked.
fn forged_token(json: &Value) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut bytes = serde_json::to_vec(json).unwrap_or_default();
    let checksum = sha2::Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum[..8]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn hostile_selectors_and_tokens_are_a_clear_400(database: Database) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    admin
        .post(
            "/api/v1/devices",
            json!({"name": "edge-0", "labels": {"site": "berlin"}}),
        )
        .await?
        .expect_status(201)?;
    admin
        .post(
            "/api/v1/devices/edge-0/actions",
            json!({"action": "get-node-ip", "input": {}}),
        )
        .await?
        .expect_status(202)?;

    let many_terms: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let many_short = vec!["a"; 1000].join(",");
    let many_values: Vec<String> = (0..3000).map(|i| format!("v{i}")).collect();
    let cases = [
        (many_terms.join(","), "at most"),
        (many_short.clone(), "at most"),
        (format!("site in ({})", many_values.join(",")), "at most"),
        ("site in ()".to_owned(), "site in ()"),
        ("site notin ( )".to_owned(), "site notin ( )"),
        ("site=b%C3%A9rlin".to_owned(), "bérlin"),
        ("site=x');DROP%20TABLE%20devices;--".to_owned(), "DROP"),
        ("site%20in%20(a)%20OR%201=1".to_owned(), "OR"),
        ("=berlin".to_owned(), "=berlin"),
        ("!".to_owned(), "!"),
        ("site in ((a))".to_owned(), "((a))"),
    ];
    for (selector, named) in &cases {
        for path in ["/api/v1/devices", "/api/v1/devices/summary"] {
            let reply = admin
                .get(&format!("{path}?labelSelector={selector}"))
                .await?;
            let shown: String = selector.chars().take(60).collect();
            assert_eq!(reply.status, 400, "{path} {shown}: {}", reply.body);
            assert!(
                message(&reply).contains(named),
                "{path} {shown}: {}",
                reply.body
            );
        }
    }
    // Within the bounds, many terms are answered.
    let fine: Vec<String> = (0..64).map(|i| format!("!k{i}")).collect();
    let reply = admin
        .get(&format!("/api/v1/devices?labelSelector={}", fine.join(",")))
        .await?
        .expect_status(200)?;
    assert_eq!(
        names(reply["items"].as_array().map_or(&[][..], Vec::as_slice)),
        ["edge-0"]
    );
    for by in ["", "b%C3%A9", "x')--", "-x"] {
        let reply = admin
            .get(&format!("/api/v1/devices/summary?by={by}"))
            .await?;
        assert_eq!(reply.status, 400, "by={by}: {}", reply.body);
    }

    // Tokens that decode but point nowhere a listing can go.
    let forged = [
        (
            "/api/v1/devices/edge-0/actions",
            json!({"v": 1, "of": "devices/edge-0/actions", "at": {"beforeSeq": u64::MAX}}),
        ),
        (
            "/api/v1/audit",
            json!({"v": 1, "of": "audit", "at": {"beforeTimeAndId": [i64::MAX, "x"]}}),
        ),
        (
            "/api/v1/devices/edge-0/metrics",
            json!({"v": 1, "of": "devices/edge-0/metrics", "at": {"beforeTime": i64::MIN}}),
        ),
        (
            "/api/v1/devices",
            json!({"v": 2, "of": "devices?labelSelector=", "at": {"after": "a"}}),
        ),
        (
            "/api/v1/devices",
            json!({"v": 1, "of": "devices?labelSelector=", "at": {"after": "a"}, "x": 1}),
        ),
        (
            "/api/v1/jobs",
            json!({"v": 1, "of": "jobs", "at": {"after": "a"}}),
        ),
    ];
    for (path, token) in &forged {
        let reply = admin
            .get(&format!("{path}?continue={}", forged_token(token)))
            .await?;
        assert_eq!(reply.status, 400, "{path} {token}: {}", reply.body);
        assert!(
            message(&reply).starts_with("invalid continue token"),
            "{path} {token}: {}",
            reply.body
        );
    }
    // A forged token that only moves the start of a page is a page.
    let moved = json!({"v": 1, "of": "devices?labelSelector=", "at": {"after": "\u{10ffff}"}});
    let page = admin
        .get(&format!(
            "/api/v1/devices?continue={}",
            forged_token(&moved)
        ))
        .await?
        .expect_status(200)?;
    assert_eq!(page, json!({"items": []}));
    // Under hyper's 64 KiB bound on a request line, past which it closes the
    // connection before tetherd sees the request.
    let huge = "A".repeat(60_000);
    let reply = admin.get(&format!("/api/v1/audit?continue={huge}")).await?;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(message(&reply).contains("continue token"), "{}", reply.body);
    Ok(())
}
