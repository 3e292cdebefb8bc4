//! Update locks end to end (issue 17): a real tetherd, two real agents
//! running a supervised process. A device whose application holds an
//! update lock through the local API, or whose spec an operator locked, is
//! passed over by the rollout — the other device goes ahead — until the
//! lock is released; `deployments/NAME/status` says who waits and why. A
//! maintenance window not yet open holds the device the same way.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, local_api, wait_until};

const WAIT: Duration = Duration::from_secs(30);
const PATH: &str = "/api/v1/deployments/line-app";

fn deployment(seconds: &str) -> Value {
    json!({
        "target": {"selector": "line=3"},
        "processes": {"app": {"execCmd": "/bin/sleep", "execArgs": [seconds]}},
        "rollout": {"batchSize": 1, "progressDeadlineSeconds": 60},
    })
}

/// Waits until the device's reported update holds satisfy `done`.
async fn wait_holds(
    admin: &ApiClient,
    device: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<()> {
    let done = &done;
    wait_until(what, WAIT, || async move {
        let device = admin
            .get(&format!("/api/v1/devices/{device}"))
            .await?
            .expect_status(200)?;
        let holds = device["status"]["updateHolds"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(done(&holds).then_some(()))
    })
    .await
}

/// Waits until the rollout's status satisfies `done`; returns it.
async fn wait_rollout(
    admin: &ApiClient,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let done = &done;
    wait_until(what, WAIT, || async move {
        let status = admin
            .get(&format!("{PATH}/status"))
            .await?
            .expect_status(200)?;
        Ok(done(&status).then_some(status))
    })
    .await
}

fn device_row<'a>(status: &'a Value, device: &str) -> Option<&'a Value> {
    status["devices"]
        .as_array()?
        .iter()
        .find(|d| d["device"] == device)
}

fn ready_on(status: &Value, device: &str, revision: u64) -> bool {
    device_row(status, device).is_some_and(|d| d["revision"] == revision && d["state"] == "ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_locked_or_outside_its_window_is_passed_over_until_it_takes_updates()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let press_1 = Agent::enroll_online(&tetherd, &admin, "press-1").await?;
    let press_2 = Agent::enroll_online(&tetherd, &admin, "press-2").await?;
    for device in ["press-1", "press-2"] {
        admin
            .patch(
                &format!("/api/v1/devices/{device}"),
                json!({"labels": {"line": "3"}}),
            )
            .await?
            .expect_status(200)?;
    }

    // press-1's application is flashing a PLC: it holds a lock.
    let socket = press_1.local_api_socket();
    let (status, taken) = local_api(
        &socket,
        "PUT",
        "/v1/update-locks/plc-flash",
        r#"{"reason":"flashing the PLC"}"#,
    )
    .await?;
    anyhow::ensure!(status == 200, "{taken}");
    wait_holds(&admin, "press-1", "press-1 to report its lock", |holds| {
        holds.iter().any(|h| h["name"] == "plc-flash")
    })
    .await?;

    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "line-app", "spec": deployment("600")}),
        )
        .await?
        .expect_status(201)?;
    // The rollout does not complete: it says who it waits for.
    let waiting = wait_rollout(&admin, "press-2 ready, press-1 waiting", |s| {
        ready_on(s, "press-2", 1)
            && s["held"][0]["device"] == "press-1"
            && s["reason"]
                .as_str()
                .is_some_and(|r| r.contains("1 device(s) wait"))
    })
    .await
    .with_context(|| press_2.log())?;
    assert_eq!(waiting["phase"], "progressing", "{waiting}");
    assert_eq!(waiting["held"][0]["holds"][0]["kind"], "lock");
    assert_eq!(waiting["held"][0]["holds"][0]["reason"], "flashing the PLC");
    assert!(
        device_row(&waiting, "press-1").is_none(),
        "never sent: {waiting}"
    );
    let spec = admin
        .get("/api/v1/devices/press-1")
        .await?
        .expect_status(200)?;
    assert!(
        spec["spec"]["deployments"].get("line-app").is_none(),
        "{spec}"
    );

    // The flash is done: the lock goes, and so does the wait.
    let (status, released) = local_api(&socket, "DELETE", "/v1/update-locks/plc-flash", "").await?;
    anyhow::ensure!(status == 200, "{released}");
    let complete = wait_rollout(&admin, "the rollout to complete", |s| {
        s["phase"] == "complete"
    })
    .await
    .with_context(|| press_1.log())?;
    assert!(ready_on(&complete, "press-1", 1), "{complete}");
    assert!(complete.get("held").is_none(), "{complete}");

    // An operator locks press-2 in its spec: revision 2 goes to press-1
    // only.
    admin
        .patch(
            "/api/v1/devices/press-2?updateMask=spec.updates",
            json!({"spec": {"updates": {"locked": true, "reason": "line 3 audit"}}}),
        )
        .await?
        .expect_status(200)?;
    wait_holds(
        &admin,
        "press-2",
        "press-2 to report its spec lock",
        |holds| holds.iter().any(|h| h["kind"] == "spec"),
    )
    .await?;
    admin
        .put_json(PATH, deployment("700"))
        .await?
        .expect_status(200)?;
    let waiting = wait_rollout(&admin, "press-1 on revision 2, press-2 waiting", |s| {
        ready_on(s, "press-1", 2) && s["held"][0]["device"] == "press-2"
    })
    .await?;
    assert_eq!(waiting["held"][0]["holds"][0]["reason"], "line 3 audit");
    assert!(
        ready_on(&waiting, "press-2", 1),
        "still on revision 1: {waiting}"
    );

    admin
        .patch(
            "/api/v1/devices/press-2?updateMask=spec.updates",
            json!({"spec": {"updates": {"locked": false}}}),
        )
        .await?
        .expect_status(200)?;
    let complete = wait_rollout(&admin, "revision 2 everywhere", |s| {
        s["phase"] == "complete" && s["revision"] == 2
    })
    .await?;
    assert!(ready_on(&complete, "press-2", 2), "{complete}");

    // Maintenance windows, read on UTC here: one that opens in 12 hours
    // holds the device until then; one it is inside holds nothing.
    let hour = |offset: i64| {
        (chrono::Utc::now() + chrono::TimeDelta::hours(offset))
            .format("%H:00")
            .to_string()
    };
    let window = |start: String| {
        json!({"spec": {"updates": {"timeZone": "UTC", "maintenanceWindows": [
            {"start": start, "durationMinutes": 120}
        ]}}})
    };
    admin
        .patch(
            "/api/v1/devices/press-2?updateMask=spec.updates",
            window(hour(12)),
        )
        .await?
        .expect_status(200)?;
    wait_holds(&admin, "press-2", "press-2 outside its window", |holds| {
        holds
            .iter()
            .any(|h| h["kind"] == "window" && h["until"].is_string())
    })
    .await?;
    admin
        .patch(
            "/api/v1/devices/press-2?updateMask=spec.updates",
            window(hour(0)),
        )
        .await?
        .expect_status(200)?;
    wait_holds(
        &admin,
        "press-2",
        "press-2 inside its window",
        <[Value]>::is_empty,
    )
    .await?;
    Ok(())
}

/// The uid (and gid) of the other local user in the ownership test:
/// `nobody`, present on every Linux.
const NOBODY: u32 = 65534;

/// Sends one request to the local API as `curl` run by the user `uid`
/// (the test runs as root and drops to it); the status and JSON body.
async fn local_api_as(
    uid: u32,
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--unix-socket"])
        .arg(socket)
        .args(["-X", method, "--write-out", "\n%{http_code}"])
        .args(if body.is_empty() {
            Vec::new()
        } else {
            vec!["--data", body]
        })
        .arg(format!("http://localhost{path}"))
        .uid(uid)
        .gid(uid)
        .output()
        .await
        .context("running curl")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "curl as uid {uid}: {}: {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, status) = stdout
        .trim_end()
        .rsplit_once('\n')
        .with_context(|| format!("no status after the body: {stdout}"))?;
    Ok((status.parse()?, serde_json::from_str(body)?))
}

/// Update locks belong to the local user that took them (the socket's
/// peer credentials): an application running as `nobody` cannot release
/// root's lock, and is told whose it is, but takes and releases its own;
/// the owners reach tetherd in the device's holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_release_a_lock_but_takes_and_releases_its_own() -> anyhow::Result<()> {
    anyhow::ensure!(
        rustix::process::getuid().is_root(),
        "this test runs as root, to run a client as another user"
    );
    use std::os::unix::fs::PermissionsExt;
    // The socket where nobody can reach it: a directory it may enter, the
    // socket in its group (the agent's --local-api-group).
    let socket_dir = tempfile::tempdir()?;
    std::fs::set_permissions(socket_dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let socket = socket_dir.path().join("api.sock");
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_with_env(
        &tetherd,
        &admin,
        "press-9",
        &[
            (
                "TETHER_AGENT_LOCAL_API_SOCKET",
                &socket.display().to_string(),
            ),
            ("TETHER_AGENT_LOCAL_API_GROUP", &NOBODY.to_string()),
        ],
    )
    .await?;
    agent.wait_presence(&admin, "online").await?;

    let (status, taken) = local_api(
        &socket,
        "PUT",
        "/v1/update-locks/plc-flash",
        r#"{"reason":"flashing the PLC"}"#,
    )
    .await?;
    anyhow::ensure!(status == 200, "{taken}");
    assert_eq!(taken["lock"]["ownerUid"], 0, "{taken}");

    let (status, refused) =
        local_api_as(NOBODY, &socket, "DELETE", "/v1/update-locks/plc-flash", "").await?;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        refused["error"],
        "update lock plc-flash was taken by uid 0; only uid 0 or root may renew or release it"
    );
    let (status, refused) = local_api_as(
        NOBODY,
        &socket,
        "PUT",
        "/v1/update-locks/plc-flash",
        r#"{"reason":"mine now","ttlSeconds":1}"#,
    )
    .await?;
    assert_eq!(status, 403, "a renewal could cut it short: {refused}");

    let (status, taken) = local_api_as(
        NOBODY,
        &socket,
        "PUT",
        "/v1/update-locks/batch",
        r#"{"reason":"a production batch"}"#,
    )
    .await?;
    assert_eq!(status, 200, "{taken}");
    assert_eq!(taken["lock"]["ownerUid"], NOBODY);
    let (_, listed) = local_api_as(NOBODY, &socket, "GET", "/v1/update-locks", "").await?;
    assert_eq!(listed["locks"]["plc-flash"]["ownerUid"], 0, "{listed}");
    assert_eq!(listed["locks"]["batch"]["ownerUid"], NOBODY, "{listed}");
    // What tetherd shows (and `tether devices get` prints): whose each is.
    wait_holds(
        &admin,
        "press-9",
        "both locks reported with owners",
        |holds| {
            let owner = |name: &str| {
                holds
                    .iter()
                    .find(|h| h["name"] == name)
                    .map(|h| h["ownerUid"].clone())
            };
            owner("plc-flash") == Some(json!(0)) && owner("batch") == Some(json!(NOBODY))
        },
    )
    .await
    .with_context(|| agent.log())?;

    let (status, released) =
        local_api_as(NOBODY, &socket, "DELETE", "/v1/update-locks/batch", "").await?;
    assert_eq!(status, 200, "{released}");
    let (status, released) = local_api(&socket, "DELETE", "/v1/update-locks/plc-flash", "").await?;
    assert_eq!(status, 200, "root releases its own: {released}");
    wait_holds(&admin, "press-9", "no holds left", <[Value]>::is_empty).await?;
    Ok(())
}
