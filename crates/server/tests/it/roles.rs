//! Roles and service accounts against a real tetherd (ADR 0026): every
//! route of the served OpenAPI document is in the role table, each role is
//! refused exactly the routes the table refuses it, API keys that were
//! revoked or expired are refused by name, and every refusal is audited.

use std::collections::BTreeSet;

use anyhow::Context;
use reqwest::Method;
use serde_json::{Value, json};
use tether_server::auth::roles::{self, Access, Role};
use tether_server::auth::secret_hash;
use tether_server::store::ApiKeyRecord;
use tether_testkit::{Database, Tetherd};

use crate::support::{minutes_ago, store_of};

/// Routes served but left out of the OpenAPI document: the Kubernetes
/// proxy's paths are the Kubernetes API's. Sent as a GET.
const UNDOCUMENTED: &[(&str, &str)] = &[
    ("ANY", "/api/v1/devices/{name}/kubernetes"),
    ("ANY", "/api/v1/devices/{name}/kubernetes/{*path}"),
];

const DEVICE: &str = "edge-1";

/// (method, template, the operation's `security`) for every operation of
/// the document tetherd serves: the route table as clients see it.
async fn served_routes(tetherd: &Tetherd) -> anyhow::Result<Vec<(String, String, Value)>> {
    let document = tetherd
        .anonymous()?
        .get("/api/v1/openapi.json")
        .await?
        .expect_status(200)?;
    let mut routes = Vec::new();
    for (path, item) in document["paths"].as_object().context("paths")? {
        for (method, operation) in item.as_object().context("a path item")? {
            if matches!(method.as_str(), "get" | "post" | "put" | "patch" | "delete") {
                routes.push((
                    method.to_uppercase(),
                    path.clone(),
                    operation["security"].clone(),
                ));
            }
        }
    }
    anyhow::ensure!(routes.len() > 40, "too few routes served: {routes:?}");
    Ok(routes)
}

/// The template with its parameters filled: the test's device, an action
/// the catalogue knows, dummies for the rest (a 404 is "allowed past
/// authorization" as much as a 200 is).
fn fill(template: &str) -> String {
    template
        .replace("{name}", DEVICE)
        .replace("{action}", "get-node-ip")
        .replace("{*path}", "api")
        .replace("{correlationId}", "0193a1f2-7c1e-7d3a-9f00-5b6c1d2e3f40")
        .replace("{id}", "0193a1f2-7c1e-7d3a-9f00-5b6c1d2e3f40")
        .replace("{username}", "nobody")
}

fn is_role_refusal(reply: &tether_testkit::api::Reply) -> bool {
    reply.status == 403 && reply.body["error"]["code"] == "role_denied"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_refused_exactly_the_routes_the_table_refuses_it() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    admin
        .post("/api/v1/devices", json!({"name": DEVICE}))
        .await?
        .expect_status(201)?;

    // Every served route has an entry, and public ones are exactly those the
    // document serves without a bearer requirement.
    let mut routes: Vec<(String, String)> = Vec::new();
    for (method, template, security) in served_routes(&tetherd).await? {
        let access = roles::access(&method, &template).with_context(|| {
            format!(
                "{method} {template} is served but has no entry in the role table \
                 (crates/server/src/auth/roles.rs)"
            )
        })?;
        let public = security == json!([{}]);
        assert_eq!(
            access == Access::Public,
            public,
            "{method} {template}: the role table and the document disagree on whether it needs a login"
        );
        routes.push((method, template));
    }
    routes.extend(
        UNDOCUMENTED
            .iter()
            .map(|(method, template)| ((*method).to_owned(), (*template).to_owned())),
    );
    // And the table names nothing that is not served.
    let served: BTreeSet<(&str, &str)> = routes
        .iter()
        .map(|(method, template)| (method.as_str(), template.as_str()))
        .collect();
    for (method, template, _) in roles::rules() {
        assert!(
            served.contains(&(*method, *template)),
            "the role table names {method} {template}, which tetherd does not serve"
        );
    }

    let clients = [
        (
            Role::Viewer,
            tetherd.user_with_role(Role::Viewer.as_str()).await?,
        ),
        (
            Role::Operator,
            tetherd.user_with_role(Role::Operator.as_str()).await?,
        ),
        // Its own session: logging out ends it.
        (Role::Admin, tetherd.admin().await?),
    ];
    // Logging out ends the session the other requests use: last.
    routes.sort_by_key(|(_, template)| template == "/api/v1/logout");
    let mut refusals = 0;
    for (role, client) in &clients {
        for (method, template) in &routes {
            let access = roles::access(method, template).context("checked above")?;
            if access == Access::Public {
                continue;
            }
            let send_method = if method == roles::ANY_METHOD {
                Method::GET
            } else {
                method.parse::<Method>()?
            };
            let body = matches!(send_method, Method::POST | Method::PUT | Method::PATCH)
                .then(|| json!({}));
            let reply = client
                .status_of(send_method.clone(), &fill(template), body)
                .await?;
            let what = format!(
                "{role} {method} {template}: {} {}",
                reply.status, reply.body
            );
            assert_ne!(reply.status, 401, "{what}");
            if access.allows(*role) {
                assert!(!is_role_refusal(&reply), "allowed by the table: {what}");
            } else {
                refusals += 1;
                assert!(is_role_refusal(&reply), "refused by the table: {what}");
                let message = reply.body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains(&format!(
                        "role needed for {send_method} {template}; your role is {role}"
                    )),
                    "{what}"
                );
            }
        }
    }
    assert!(
        refusals > 20,
        "only {refusals} refusals: is the table too open?"
    );

    // Every refusal is in the audit log, GETs too.
    let audit = admin
        .get("/api/v1/audit?limit=1000")
        .await?
        .expect_status(200)?;
    let refused: Vec<&Value> = audit["items"]
        .as_array()
        .context("audit items")?
        .iter()
        .filter(|entry| entry["status"] == 403)
        .collect();
    assert_eq!(refused.len(), refusals, "{refused:#?}");
    assert!(
        refused.iter().any(|entry| entry["actor"] == "viewer-user"
            && entry["method"] == "POST"
            && entry["path"] == format!("/api/v1/devices/{DEVICE}/actions")
            && entry["detail"]["role"] == "viewer"),
        "{refused:#?}"
    );
    assert!(
        refused
            .iter()
            .any(|entry| entry["actor"] == "operator-user" && entry["path"] == "/api/v1/users"),
        "{refused:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_works_until_revoked_or_expired_and_the_refusal_says_which() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    admin
        .post(
            "/api/v1/service-accounts",
            json!({"name": "ci", "role": "operator"}),
        )
        .await?
        .expect_status(201)?;
    let created = admin
        .post(
            "/api/v1/service-accounts/ci/keys",
            json!({"expiresInSeconds": 86_400}),
        )
        .await?
        .expect_status(201)?;
    let key_id = created["id"].as_str().context("a key id")?.to_owned();
    let ci = admin.with_token(created["key"].as_str().map(str::to_owned));

    ci.get("/api/v1/devices").await?.expect_status(200)?;
    ci.post("/api/v1/devices", json!({"name": "made-by-ci"}))
        .await?
        .expect_status(201)?;
    let refused = ci
        .post("/api/v1/users", json!({"username": "x", "role": "admin"}))
        .await?;
    assert!(is_role_refusal(&refused), "{refused:?}");
    assert_eq!(
        refused.body["error"]["message"],
        "admin role needed for POST /api/v1/users; your role is operator"
    );
    let keys = admin
        .get("/api/v1/service-accounts/ci/keys")
        .await?
        .expect_status(200)?;
    assert_eq!(keys[0]["id"], key_id.as_str());
    assert!(keys[0]["lastUsedAt"].is_string(), "{keys}");
    assert!(keys[0]["expiresAt"].is_string(), "{keys}");
    assert!(
        keys[0].get("key").is_none(),
        "the secret is shown once: {keys}"
    );

    admin
        .post(
            &format!("/api/v1/service-accounts/ci/keys/{key_id}/revoke"),
            json!({}),
        )
        .await?
        .expect_status(204)?;
    let revoked = ci.get("/api/v1/devices").await?;
    assert_eq!(revoked.status, 401, "{revoked:?}");
    assert_eq!(revoked.body["error"]["code"], "api_key_revoked");
    let message = revoked.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains(&format!(
            "the API key {key_id} of service account ci was revoked at"
        )) && message.contains("`tether service-accounts keys create ci`"),
        "{message}"
    );

    // An expired key, written through the store: no waiting for a clock.
    let store = store_of(&tetherd).await?;
    let expired_key = format!("{}{}", tether_server::auth::API_KEY_PREFIX, "ab".repeat(32));
    store
        .insert_api_key(
            &secret_hash(&expired_key),
            &ApiKeyRecord {
                id: "expired-1".to_owned(),
                account: "ci".to_owned(),
                created_at: minutes_ago(120),
                expires_at: Some(minutes_ago(60)),
                last_used_at: None,
                revoked_at: None,
            },
        )
        .await?;
    let expired = admin
        .with_token(Some(expired_key))
        .get("/api/v1/devices")
        .await?;
    assert_eq!(expired.status, 401, "{expired:?}");
    assert_eq!(expired.body["error"]["code"], "api_key_expired");
    let message = expired.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("the API key expired-1 of service account ci expired at"),
        "{message}"
    );

    // An unknown key names nobody: refused, not audited.
    let unknown = admin
        .with_token(Some(format!(
            "{}nothing",
            tether_server::auth::API_KEY_PREFIX
        )))
        .get("/api/v1/devices")
        .await?;
    assert_eq!(unknown.status, 401, "{unknown:?}");

    let audit = admin
        .get("/api/v1/audit?limit=1000")
        .await?
        .expect_status(200)?;
    let by_ci: Vec<(u64, String, String)> = audit["items"]
        .as_array()
        .context("audit items")?
        .iter()
        .filter(|entry| entry["actor"] == "sa:ci")
        .map(|entry| {
            (
                entry["status"].as_u64().unwrap_or_default(),
                entry["method"].as_str().unwrap_or_default().to_owned(),
                entry["path"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for expected in [
        (201, "POST", "/api/v1/devices"),
        (403, "POST", "/api/v1/users"),
        (401, "GET", "/api/v1/devices"),
    ] {
        assert!(
            by_ci
                .iter()
                .any(|(s, m, p)| (*s, m.as_str(), p.as_str()) == expected),
            "{expected:?} not audited: {by_ci:?}"
        );
    }
    assert_eq!(
        by_ci.iter().filter(|(status, _, _)| *status == 401).count(),
        2,
        "the revoked and the expired key: {by_ci:?}"
    );
    let anonymous_401s = audit["items"]
        .as_array()
        .context("audit items")?
        .iter()
        .filter(|entry| entry["status"] == 401 && entry["actor"] != "sa:ci")
        .count();
    assert_eq!(anonymous_401s, 0, "{audit}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_admin_always_remains_and_a_deleted_users_session_ends_at_once() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    for what in [
        admin.delete("/api/v1/users/admin").await?,
        admin
            .send_json(
                Method::PUT,
                "/api/v1/users/admin/role",
                json!({"role": "viewer"}),
            )
            .await?,
    ] {
        assert_eq!(what.status, 409, "{what:?}");
        assert_eq!(what.body["error"]["code"], "last_admin");
    }

    let operator = tetherd.user_with_role(Role::Operator.as_str()).await?;
    operator.get("/api/v1/devices").await?.expect_status(200)?;
    // A new role holds for open sessions at once.
    admin
        .send_json(
            Method::PUT,
            "/api/v1/users/operator-user/role",
            json!({"role": "viewer"}),
        )
        .await?
        .expect_status(200)?;
    let refused = operator
        .post("/api/v1/devices", json!({"name": "edge-2"}))
        .await?;
    assert!(is_role_refusal(&refused), "{refused:?}");
    // A second admin may delete the first.
    admin
        .send_json(
            Method::PUT,
            "/api/v1/users/operator-user/role",
            json!({"role": "admin"}),
        )
        .await?
        .expect_status(200)?;
    operator
        .delete("/api/v1/users/admin")
        .await?
        .expect_status(204)?;
    let ended = admin.get("/api/v1/devices").await?;
    assert_eq!(
        ended.status, 401,
        "the deleted user's session ended: {ended:?}"
    );
    let users = operator.get("/api/v1/users").await?.expect_status(200)?;
    assert_eq!(
        users,
        json!([{"username": "operator-user", "role": "admin"}])
    );
    Ok(())
}
