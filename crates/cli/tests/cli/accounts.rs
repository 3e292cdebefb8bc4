//! `tether users` and `tether service-accounts` against a real tetherd,
//! and a script using an API key without logging in (ADR 0026).

use super::{Run, Tether, run_to_end, tetherd};

/// The password `users create` printed once.
fn printed_password(stdout: &str) -> String {
    stdout
        .trim()
        .rsplit_once("Password (shown once): ")
        .map(|(_, password)| password.to_owned())
        .unwrap_or_else(|| panic!("no password printed: {stdout}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn users_are_created_with_roles_listed_given_other_roles_and_deleted() {
    let tetherd = tetherd().await;
    let admin = Tether::new();
    admin.login(&tetherd).await;

    let created = admin
        .run_ok(&["users", "create", "alice", "--role", "operator"])
        .await;
    let alice_password = printed_password(&created);
    let created = admin
        .run_with_stdin(
            &[
                "users",
                "create",
                "bob",
                "--role",
                "viewer",
                "--password-stdin",
            ],
            "bobs-own-password\n",
        )
        .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert!(!created.stdout.contains("Password"), "{}", created.stdout);
    let bad = admin
        .run(&["users", "create", "carol", "--role", "root"])
        .await;
    assert_eq!(bad.code, 2, "a usage error: {}", bad.stderr);
    assert!(
        bad.stderr.contains("use admin, operator or viewer"),
        "{}",
        bad.stderr
    );

    let listed = admin.run_ok(&["users", "list", "-o", "json"]).await;
    let users: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(
        users,
        serde_json::json!([
            {"username": "admin", "role": "admin"},
            {"username": "alice", "role": "operator"},
            {"username": "bob", "role": "viewer"},
        ])
    );
    // Bob changes his own password, knowing the current one.
    let bob = Tether::new();
    let login = bob
        .run_with_stdin(
            &[
                "login",
                &tetherd.api_url,
                "--username",
                "bob",
                "--password-stdin",
                "--ca-file",
                &tetherd.ca_path().to_string_lossy(),
            ],
            "bobs-own-password\n",
        )
        .await;
    assert_eq!(login.code, 0, "{}", login.stderr);
    let wrong = bob
        .run_with_stdin(
            &["users", "passwd", "--password-stdin"],
            "not-it\nbobs-new-password\n",
        )
        .await;
    assert_eq!(wrong.code, 1);
    assert!(
        wrong.stderr.contains("the current password is wrong"),
        "{}",
        wrong.stderr
    );
    let changed = bob
        .run_with_stdin(
            &["users", "passwd", "--password-stdin"],
            "bobs-own-password\nbobs-new-password\n",
        )
        .await;
    assert_eq!(changed.code, 0, "{}", changed.stderr);
    let login = Tether::new()
        .run_with_stdin(
            &[
                "login",
                &tetherd.api_url,
                "--username",
                "bob",
                "--password-stdin",
                "--ca-file",
                &tetherd.ca_path().to_string_lossy(),
            ],
            "bobs-new-password\n",
        )
        .await;
    assert_eq!(login.code, 0, "the new password works: {}", login.stderr);

    let table = admin.run_ok(&["users", "list"]).await;
    assert!(
        table.contains("USERNAME") && table.contains("operator"),
        "{table}"
    );

    let alice = Tether::new();
    let login = alice
        .run_with_stdin(
            &[
                "login",
                &tetherd.api_url,
                "--username",
                "alice",
                "--password-stdin",
                "--ca-file",
                &tetherd.ca_path().to_string_lossy(),
            ],
            &format!("{alice_password}\n"),
        )
        .await;
    assert_eq!(login.code, 0, "{}", login.stderr);
    alice.run_ok(&["devices", "add", "edge-1"]).await;

    admin
        .run_ok(&["users", "set-role", "alice", "viewer"])
        .await;
    let refused = alice.run(&["devices", "add", "edge-2"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains(
            "operator or admin role needed for POST /api/v1/devices; your role is viewer"
        ),
        "{}",
        refused.stderr
    );
    let refused = alice.run(&["users", "list"]).await;
    assert!(
        refused
            .stderr
            .contains("admin role needed for GET /api/v1/users; your role is viewer"),
        "{}",
        refused.stderr
    );

    let last = admin.run(&["users", "set-role", "admin", "viewer"]).await;
    assert_eq!(last.code, 1);
    assert!(
        last.stderr.contains("admin is the last admin"),
        "{}",
        last.stderr
    );
    let last = admin.run(&["users", "delete", "admin"]).await;
    assert!(
        last.stderr.contains("admin is the last admin"),
        "{}",
        last.stderr
    );

    admin.run_ok(&["users", "delete", "alice"]).await;
    let ended = alice.run(&["devices", "list"]).await;
    assert_eq!(ended.code, 1);
    assert!(
        ended
            .stderr
            .contains("not logged in or the session expired"),
        "{}",
        ended.stderr
    );

    let audit = admin.run_ok(&["audit", "-o", "json"]).await;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).expect("JSON");
    assert!(
        entries.iter().any(|entry| entry["actor"] == "alice"
            && entry["status"] == 403
            && entry["path"] == "/api/v1/users"),
        "{audit}"
    );
}

/// `tether` with only an API key: no config file, the server and CA from
/// the environment.
async fn with_key(
    tether: &Tether,
    tetherd: &tether_testkit::Tetherd,
    key: &str,
    args: &[&str],
) -> Run {
    run_to_end(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(args)
            .env(
                "TETHER_CLI_CONFIG",
                tether.config().with_extension("absent"),
            )
            .env("TETHER_API_KEY", key)
            .env("TETHER_SERVER", &tetherd.api_url)
            .env("TETHER_CA_FILE", tetherd.ca_path()),
        "",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_uses_a_service_accounts_key_until_it_is_revoked() {
    let tetherd = tetherd().await;
    let admin = Tether::new();
    admin.login(&tetherd).await;

    admin
        .run_ok(&["service-accounts", "create", "ci", "--role", "operator"])
        .await;
    let listed = admin.run_ok(&["service-accounts", "list"]).await;
    assert!(
        listed.contains("ci") && listed.contains("operator"),
        "{listed}"
    );
    let created = admin
        .run(&[
            "service-accounts",
            "keys",
            "create",
            "ci",
            "--expires-in",
            "30d",
        ])
        .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    // Only the key on stdout, so `KEY=$(tether service-accounts keys create ci)` works.
    let key = created.stdout.trim().to_owned();
    assert!(key.starts_with("tether_sa_"), "{}", created.stdout);
    assert!(
        created.stderr.contains("it expires at"),
        "{}",
        created.stderr
    );

    let keys = admin
        .run_ok(&["service-accounts", "keys", "list", "ci", "-o", "json"])
        .await;
    let keys: Vec<serde_json::Value> = serde_json::from_str(&keys).expect("JSON");
    assert_eq!(keys.len(), 1);
    let key_id = keys[0]["id"].as_str().expect("an id").to_owned();
    assert!(keys[0]["expiresAt"].is_string());

    let script = Tether::new();
    let added = with_key(&script, &tetherd, &key, &["devices", "add", "made-by-ci"]).await;
    assert_eq!(added.code, 0, "{}", added.stderr);
    let refused = with_key(&script, &tetherd, &key, &["users", "list"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .contains("admin role needed for GET /api/v1/users; your role is operator"),
        "{}",
        refused.stderr
    );
    let table = admin
        .run_ok(&["service-accounts", "keys", "list", "ci"])
        .await;
    assert!(
        table.contains("LAST USED") && table.contains(&key_id),
        "{table}"
    );

    admin
        .run_ok(&["service-accounts", "keys", "revoke", "ci", &key_id])
        .await;
    let revoked = with_key(&script, &tetherd, &key, &["devices", "list"]).await;
    assert_eq!(revoked.code, 1);
    assert!(
        revoked.stderr.contains(&format!(
            "the API key {key_id} of service account ci was revoked at"
        )) && revoked
            .stderr
            .contains("`tether service-accounts keys create ci`"),
        "{}",
        revoked.stderr
    );

    let audit = admin.run_ok(&["audit"]).await;
    assert!(audit.contains("sa:ci"), "{audit}");
    admin.run_ok(&["service-accounts", "delete", "ci"]).await;
    let gone = admin.run(&["service-accounts", "keys", "list", "ci"]).await;
    assert!(
        gone.stderr.contains("service account ci"),
        "{}",
        gone.stderr
    );
}
