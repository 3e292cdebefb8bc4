//! The device's time end to end (issue 19, scope 4): a real tetherd and
//! real agents. An agent whose clock libfaketime (Debian's `faketime`) puts
//! ten minutes ahead reports the offset and the `ClockSkewed` condition,
//! and a rule on that condition raises an alert; a normal agent reports a
//! small offset and no condition, and writes the spec's NTP servers to a
//! timesyncd drop-in (in a temp dir) and runs the reload command (a script
//! that counts its runs). The time service is a timesyncd config file in the
//! temp dir, chronyc and timedatectl absent: what a device without systemd
//! running looks like.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, faketime_env, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// A device's stand-ins for its time service, and the reload script.
struct TimeService {
    dir: tempfile::TempDir,
}

impl TimeService {
    fn new(image_servers: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("timesyncd.conf"),
            format!("[Time]\nNTP={image_servers}\n"),
        )?;
        let script = dir.path().join("reload-timesyncd");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho reloaded >> {}\n",
                dir.path().join("reloads").display()
            ),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { dir })
    }

    fn drop_in(&self) -> PathBuf {
        self.dir.path().join("timesyncd.conf.d/tether.conf")
    }

    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("reloads"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn env(&self) -> Vec<(String, String)> {
        let path = |p: &Path| p.display().to_string();
        let missing = path(&self.dir.path().join("not-installed"));
        vec![
            ("TETHER_AGENT_CHRONYC".into(), missing.clone()),
            ("TETHER_AGENT_TIMEDATECTL".into(), missing),
            (
                "TETHER_AGENT_TIMESYNCD_CONF".into(),
                path(&self.dir.path().join("timesyncd.conf")),
            ),
            ("TETHER_AGENT_NTP_DROP_IN".into(), path(&self.drop_in())),
            (
                "TETHER_AGENT_NTP_RELOAD_COMMAND".into(),
                path(&self.dir.path().join("reload-timesyncd")),
            ),
        ]
    }
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Waits until the device's reported status satisfies `done`; returns it.
async fn wait_status(
    admin: &ApiClient,
    agent: &Agent,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let done = &done;
    let device = &agent.name;
    wait_until(what, WAIT, || async move {
        let device = admin
            .get(&format!("/api/v1/devices/{device}"))
            .await?
            .expect_status(200)?;
        Ok(done(&device["status"]).then(|| device["status"].clone()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()))
}

fn condition_types(status: &Value) -> Vec<String> {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["type"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_ten_minutes_ahead_reports_the_offset_and_a_rule_on_its_condition_alerts() {
    a_skewed_agent_reports_the_offset_and_alerts("+10m", -600_000, "ahead of").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_ten_minutes_behind_reports_the_offset_and_a_rule_on_its_condition_alerts() {
    a_skewed_agent_reports_the_offset_and_alerts("-10m", 600_000, "behind").await;
}

/// An agent whose clock libfaketime shifts by `shift`: its TLS checks are
/// judged by tetherd's clock, so it connects all the same.
async fn a_skewed_agent_reports_the_offset_and_alerts(
    shift: &str,
    expected_ms: i64,
    direction: &str,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tetherd.toml");
    std::fs::write(&config, "[alert_rules]\nevaluation_interval_seconds = 1\n").expect("config");
    let config = config.to_string_lossy().into_owned();
    let tetherd = Tetherd::start_with(Database::Sqlite, &["--config", &config])
        .await
        .expect("tetherd starts");
    let admin = tetherd.admin().await.expect("admin logs in");
    admin
        .post(
            "/api/v1/alert-rules",
            json!({"name": "clock-skewed", "spec": {
                "severity": "warning",
                "condition": {"status": {"condition": "ClockSkewed"}}
            }}),
        )
        .await
        .expect("request")
        .expect_status(201)
        .expect("rule created");

    let service = TimeService::new("image.example").expect("time service");
    let mut env = faketime_env(shift).expect("libfaketime is installed");
    env.extend(service.env());
    let agent = Agent::enroll_with_env(&tetherd, &admin, "skewed", &borrowed(&env))
        .await
        .expect("agent enrolls");
    agent
        .wait_presence(&admin, "online")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));

    let status = wait_status(&admin, &agent, "the offset and the condition", |s| {
        s["time"]["offsetMillis"].is_i64() && condition_types(s) == ["ClockSkewed"]
    })
    .await;
    let offset = status["time"]["offsetMillis"].as_i64().expect("offset");
    assert!((offset - expected_ms).abs() < 5_000, "{shift}: {status}");
    assert_eq!(status["time"]["source"], "timesyncd", "{status}");
    assert_eq!(status["time"]["syncState"], "unknown", "{status}");
    assert_eq!(status["time"]["ntpServers"], json!(["image.example"]));
    let condition = &status["conditions"][0];
    assert_eq!(condition["reason"], "OffsetBeyondLimit", "{condition}");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("{direction} tetherd's"))),
        "{condition}"
    );
    // Dated by tetherd's clock, not the device's.
    let since: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(condition["since"].clone()).expect("a time");
    assert!(
        (chrono::Utc::now() - since).num_seconds().abs() < 60,
        "{condition}"
    );

    let alert = wait_until("the rule's alert", WAIT, || async {
        let page = admin
            .get("/api/v1/alerts?device=skewed&rule=clock-skewed")
            .await?
            .expect_status(200)?;
        Ok(page["items"].as_array().and_then(|a| a.first()).cloned())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", tetherd.log()));
    assert_eq!(alert["severity"], "warning", "{alert}");
    assert!(
        alert["summary"]
            .as_str()
            .is_some_and(|s| s.contains("ClockSkewed (OffsetBeyondLimit)")),
        "{alert}"
    );

    // A limit above the offset clears the condition, and the rule's alert.
    admin
        .patch(
            "/api/v1/devices/skewed",
            json!({"spec": {"time": {"maxOffsetSeconds": 3600}}}),
        )
        .await
        .expect("request")
        .expect_status(200)
        .expect("spec set");
    wait_status(&admin, &agent, "the condition cleared", |s| {
        condition_types(s).is_empty() && s["time"]["offsetMillis"].is_i64()
    })
    .await;
    wait_until("the alert resolved", WAIT, || async {
        let page = admin
            .get("/api/v1/alerts?device=skewed&rule=clock-skewed&state=all")
            .await?
            .expect_status(200)?;
        Ok(page["items"]
            .as_array()
            .and_then(|a| a.first())
            .filter(|a| a["state"] == "resolved")
            .cloned())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", tetherd.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_agent_reports_a_small_offset_and_writes_the_specs_ntp_servers() {
    let tetherd = Tetherd::start(Database::Sqlite)
        .await
        .expect("tetherd starts");
    let admin = tetherd.admin().await.expect("admin logs in");
    let service = TimeService::new("image.example").expect("time service");
    let agent = Agent::enroll_with_env(&tetherd, &admin, "on-time", &borrowed(&service.env()))
        .await
        .expect("agent enrolls");
    let status = wait_status(&admin, &agent, "a measured offset", |s| {
        s["time"]["offsetMillis"].is_i64()
    })
    .await;
    let offset = status["time"]["offsetMillis"].as_i64().expect("offset");
    assert!(offset.abs() < 1_000, "{status}");
    assert_eq!(condition_types(&status), Vec::<String>::new(), "{status}");
    assert_eq!(status["time"]["ntpServers"], json!(["image.example"]));
    assert_eq!(
        service.reloads(),
        0,
        "nothing to write without a time section"
    );

    // Bad servers are refused, naming the field.
    for (servers, path) in [
        (
            json!(["pool.ntp.org", "bad host"]),
            "spec.time.ntpServers[1]",
        ),
        (
            json!(["a.example\nNTP=evil.example"]),
            "spec.time.ntpServers[0]",
        ),
        (json!("pool.ntp.org"), "spec.time.ntpServers"),
    ] {
        let reply = admin
            .patch(
                "/api/v1/devices/on-time",
                json!({"spec": {"time": {"ntpServers": servers}}}),
            )
            .await
            .expect("request");
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert!(
            reply.body.to_string().contains(path),
            "{path}: {}",
            reply.body
        );
    }

    // The spec's servers replace the image's: written, reloaded, reported.
    admin
        .patch(
            "/api/v1/devices/on-time",
            json!({"spec": {"time": {"ntpServers": ["ntp.example.org", "192.0.2.1"]}}}),
        )
        .await
        .expect("request")
        .expect_status(200)
        .expect("spec set");
    let status = wait_status(&admin, &agent, "the spec's servers in use", |s| {
        s["time"]["ntpServers"] == json!(["ntp.example.org", "192.0.2.1"])
    })
    .await;
    assert_eq!(status["errors"], json!([]), "{status}");
    let drop_in = std::fs::read_to_string(service.drop_in()).expect("the drop-in is written");
    assert!(
        drop_in.ends_with("[Time]\nNTP=\nNTP=ntp.example.org 192.0.2.1\n"),
        "{drop_in}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(service.drop_in())
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    assert_eq!(service.reloads(), 1);

    // Without servers the drop-in goes and the image's are back.
    admin
        .patch(
            "/api/v1/devices/on-time",
            json!({"spec": {"time": {"maxOffsetSeconds": 10}}}),
        )
        .await
        .expect("request")
        .expect_status(200)
        .expect("spec set");
    wait_status(&admin, &agent, "the image's servers again", |s| {
        s["time"]["ntpServers"] == json!(["image.example"])
    })
    .await;
    assert!(!service.drop_in().exists());
    assert_eq!(service.reloads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reload_command_is_a_spec_error_on_time() {
    let tetherd = Tetherd::start(Database::Sqlite)
        .await
        .expect("tetherd starts");
    let admin = tetherd.admin().await.expect("admin logs in");
    let service = TimeService::new("image.example").expect("time service");
    let mut env = service.env();
    env.retain(|(k, _)| k != "TETHER_AGENT_NTP_RELOAD_COMMAND");
    env.push(("TETHER_AGENT_NTP_RELOAD_COMMAND".into(), "false".into()));
    let agent = Agent::enroll_with_env(&tetherd, &admin, "no-timesyncd", &borrowed(&env))
        .await
        .expect("agent enrolls");
    agent
        .wait_presence(&admin, "online")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    admin
        .patch(
            "/api/v1/devices/no-timesyncd",
            json!({"spec": {"time": {"ntpServers": ["ntp.example.org"]}}}),
        )
        .await
        .expect("request")
        .expect_status(200)
        .expect("spec set");
    let status = wait_status(&admin, &agent, "the reload's failure", |s| {
        s["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["path"] == "spec.time"))
    })
    .await;
    let message = status["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the reload command `false` failed"),
        "{status}"
    );
}
