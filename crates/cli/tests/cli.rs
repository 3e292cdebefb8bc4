//! The `tether` binary against a real tetherd (testkit), with simulated
//! devices where an action needs an answer.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tether_proto::api::{Action, Device, Job};
use tether_testkit::sim_agent::{
    DeviceCredentials, Responder, SimAgent, connect_many, enroll_many, wait_online,
};
use tether_testkit::{Database, Tetherd};
use tokio::io::AsyncWriteExt;

// In a folder of its own so that cargo does not take it for a test binary.
#[path = "cli/accounts.rs"]
mod accounts;
#[path = "cli/alerts.rs"]
mod alerts;
#[path = "cli/approvals.rs"]
mod approvals;
#[path = "cli/desired.rs"]
mod desired;
#[path = "cli/kube.rs"]
mod kube;
#[path = "cli/os_edit.rs"]
mod os_edit;
#[path = "cli/releases.rs"]
mod releases;
#[path = "cli/secrets.rs"]
mod secrets;
#[path = "cli/shell_listener.rs"]
mod shell_listener;
#[path = "cli/ssh.rs"]
mod ssh;

/// What one run of `tether` did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `command` with `stdin` as its input until it exits (a minute at
/// most), its output kept.
async fn run_to_end(command: &mut tokio::process::Command, stdin: &str) -> Run {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the program starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("writes stdin");
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the program finishes within a minute")
        .expect("the program's output");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `tether` with its own config file.
struct Tether {
    dir: TempDir,
}

impl Tether {
    fn new() -> Self {
        Tether {
            dir: tempfile::tempdir().expect("a temp dir for the CLI config"),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, "").await
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        run_to_end(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
                .args(args)
                .env("TETHER_CLI_CONFIG", self.config())
                .env_remove("TETHER_PASSWORD"),
            stdin,
        )
        .await
    }

    /// Starts a `tether` that keeps running (`logs --follow`), its stdout
    /// read line by line.
    fn follow(&self, args: &[&str]) -> Following {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(args)
            .env("TETHER_CLI_CONFIG", self.config())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("tether starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut stdout = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Following { child, lines }
    }

    async fn run_ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert_eq!(run.code, 0, "tether {args:?} failed: {}", run.stderr);
        run.stdout
    }

    async fn login(&self, tetherd: &Tetherd) {
        let fingerprint = hex::encode(Sha256::digest(ca_der(tetherd)));
        let run = self
            .run_with_stdin(
                &[
                    "login",
                    &tetherd.api_url,
                    "--password-stdin",
                    "--ca-sha256",
                    &fingerprint,
                ],
                &format!("{}\n", tetherd.admin_password()),
            )
            .await;
        assert_eq!(run.code, 0, "login failed: {}", run.stderr);
    }
}

/// A running `tether logs --follow`.
struct Following {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Following {
    /// The next line it printed, or `None` if none came within `wait`.
    async fn next_line(&mut self, wait: Duration) -> Option<String> {
        tokio::time::timeout(wait, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next `n` lines that contain `wanted`, each within 30 s; no line
    /// until then may contain `unwanted`.
    async fn lines_with(&mut self, wanted: &str, n: usize, unwanted: &str) -> Vec<String> {
        let mut found = Vec::new();
        while found.len() < n {
            let line = self
                .next_line(Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("no line with {wanted:?} within 30 s: {found:?}"));
            assert!(!line.contains(unwanted), "{line}");
            if line.contains(wanted) {
                found.push(line);
            }
        }
        found
    }
}

fn ca_der(tetherd: &Tetherd) -> Vec<u8> {
    rustls_pemfile::certs(&mut tetherd.ca_pem())
        .next()
        .expect("tetherd's CA file holds a certificate")
        .expect("the CA certificate is valid base64")
        .to_vec()
}

async fn tetherd() -> Tetherd {
    Tetherd::start(Database::Sqlite)
        .await
        .expect("tetherd starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn login_pins_the_ca_and_saves_a_private_config() {
    let tetherd = tetherd().await;
    let tether = Tether::new();

    let run = tether
        .run_with_stdin(
            &[
                "login",
                &tetherd.api_url,
                "--password-stdin",
                "--ca-sha256",
                &"ab".repeat(32),
            ],
            "x\n",
        )
        .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("has SHA-256"), "{}", run.stderr);

    let run = tether.run(&["login", &tetherd.api_url]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("--ca-file"), "{}", run.stderr);

    // A CA file with more certificates after tetherd's CA (here server.pem:
    // the server's own and the CA again) would make them trusted roots too.
    let server_pem = std::fs::read_to_string(tetherd.data_dir().join("server.pem"))
        .expect("tetherd wrote server.pem");
    let bundle = tether.dir.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        format!("{}{server_pem}", String::from_utf8_lossy(tetherd.ca_pem())),
    )
    .expect("writes the bundle");
    let bundle_arg = bundle.to_string_lossy();
    let run = tether
        .run_with_stdin(
            &[
                "login",
                &tetherd.api_url,
                "--password-stdin",
                "--ca-file",
                &bundle_arg,
            ],
            &format!("{}\n", tetherd.admin_password()),
        )
        .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("refusing the CA file")
            && run.stderr.contains("it holds 3 certificates, not one"),
        "{}",
        run.stderr
    );
    assert!(!tether.config().exists(), "nothing was saved");

    tether.login(&tetherd).await;
    let mode = std::fs::metadata(tether.config())
        .expect("the config was written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Logging in again reuses the saved CA; a wrong password is named as such.
    let run = tether
        .run_with_stdin(&["login", &tetherd.api_url, "--password-stdin"], "wrong\n")
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("wrong username or password"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_are_added_listed_labeled_and_deleted() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;

    let added = tether
        .run_ok(&["devices", "add", "edge-1", "-l", "site=berlin"])
        .await;
    assert!(added.contains("tether-agent"), "{added}");
    assert!(added.contains("--enroll-token"), "{added}");
    tether.run_ok(&["devices", "add", "edge-2"]).await;

    let listed = tether
        .run_ok(&["devices", "list", "-l", "site=berlin", "-o", "json"])
        .await;
    let devices: Vec<Device> = serde_json::from_str(&listed).expect("a JSON device list");
    assert_eq!(
        devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["edge-1"]
    );

    let table = tether.run_ok(&["devices", "list"]).await;
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    tether
        .run_ok(&["devices", "label", "edge-1", "role=gw", "site-"])
        .await;
    let got = tether
        .run_ok(&["devices", "get", "edge-1", "-o", "json"])
        .await;
    let device: Device = serde_json::from_str(&got).expect("a JSON device");
    assert_eq!(device.labels, [("role".to_owned(), "gw".to_owned())].into());

    let revoked = tether.run_ok(&["devices", "revoke", "edge-1"]).await;
    assert!(revoked.contains("enrollment-token edge-1"), "{revoked}");
    let got = tether
        .run_ok(&["devices", "get", "edge-1", "-o", "json"])
        .await;
    let device: Device = serde_json::from_str(&got).expect("a JSON device");
    assert!(!device.enrolled, "revoked, kept: {got}");

    tether.run_ok(&["devices", "delete", "edge-2"]).await;
    let run = tether.run(&["devices", "get", "edge-2"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not found"), "{}", run.stderr);

    // Every change above is in the audit log, newest first.
    let audit = tether.run_ok(&["audit", "-o", "json"]).await;
    let audit: Vec<tether_proto::api::AuditEntry> =
        serde_json::from_str(&audit).expect("a JSON audit log");
    let changes: Vec<_> = audit
        .iter()
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    assert_eq!(
        changes[..5],
        [
            "DELETE /api/v1/devices/edge-2",
            "POST /api/v1/devices/edge-1/revoke",
            "PATCH /api/v1/devices/edge-1",
            "POST /api/v1/devices",
            "POST /api/v1/devices",
        ],
        "{changes:?}"
    );
    let table = tether.run_ok(&["audit"]).await;
    assert!(table.starts_with("AGE"), "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_devices_spec_is_updated_with_a_mask_and_shown_with_get() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    tether.run_ok(&["devices", "add", "edge-1"]).await;

    let spec = r#"{"loggingConfig": {"priority": 4, "units": ["ssh.service"]}, "metricsConfig": {"intervalSeconds": 30}}"#;
    let updated = tether
        .run_ok(&["devices", "update", "edge-1", "--spec", spec])
        .await;
    assert!(updated.contains("spec at version 1"), "{updated}");
    tether
        .run_ok(&[
            "devices",
            "update",
            "edge-1",
            "--update-mask",
            "spec.loggingConfig.priority",
            "--spec",
            r#"{"loggingConfig": {"priority": 2}}"#,
            "--if-version",
            "1",
        ])
        .await;
    let yaml = tether
        .run_ok(&["devices", "get", "edge-1", "-o", "yaml"])
        .await;
    let device: Device = serde_yaml::from_str(&yaml).expect("a YAML device");
    assert_eq!(device.spec_version, Some(2), "{yaml}");
    let spec = serde_json::Value::Object(device.spec.expect("a spec"));
    assert_eq!(
        spec,
        serde_json::json!({
            "loggingConfig": {"priority": 2, "units": ["ssh.service"]},
            "metricsConfig": {"intervalSeconds": 30},
        }),
        "{yaml}"
    );
    let table = tether.run_ok(&["devices", "get", "edge-1"]).await;
    assert!(
        table.contains("SPEC (version 2, not reported by the agent yet)"),
        "{table}"
    );

    let run = tether
        .run(&[
            "devices",
            "update",
            "edge-1",
            "--spec",
            r#"{"loggingConfig": {"priority": 9}}"#,
        ])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("spec.loggingConfig.priority"),
        "{}",
        run.stderr
    );
    let run = tether
        .run(&[
            "devices",
            "update",
            "edge-1",
            "--spec",
            r#"{"budgets": {}}"#,
            "--if-version",
            "1",
        ])
        .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("version 2"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_are_enabled_and_disabled_per_device_and_the_catalogue_shows_them() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    tether.run_ok(&["devices", "add", "edge-1"]).await;
    let names = |table: &str| -> Vec<String> {
        table
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect()
    };

    let before = tether
        .run_ok(&["actions", "catalogue", "--device", "edge-1"])
        .await;
    assert!(
        names(&before).contains(&"send-kubectl".to_owned()),
        "{before}"
    );
    assert!(
        !names(&before).contains(&"manage-deployment".to_owned()),
        "{before}"
    );
    let run = tether
        .run(&[
            "actions",
            "run",
            "edge-1",
            "manage-deployment",
            "--input",
            r#"{"command": "restart", "parameters": {"deployment": "web"}}"#,
        ])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("tether devices actions enable edge-1 manage-deployment"),
        "{}",
        run.stderr
    );

    let enabled = tether
        .run_ok(&[
            "devices",
            "actions",
            "enable",
            "edge-1",
            "manage-deployment",
        ])
        .await;
    assert!(
        enabled.starts_with("device/edge-1: action manage-deployment enabled (spec version 1)"),
        "{enabled}"
    );
    tether
        .run_ok(&["devices", "actions", "disable", "edge-1", "send-kubectl"])
        .await;
    let after = names(
        &tether
            .run_ok(&["actions", "catalogue", "--device", "edge-1"])
            .await,
    );
    assert!(after.contains(&"manage-deployment".to_owned()), "{after:?}");
    assert!(!after.contains(&"send-kubectl".to_owned()), "{after:?}");
    let all = names(&tether.run_ok(&["actions", "catalogue"]).await);
    assert!(all.contains(&"send-kubectl".to_owned()), "{all:?}");

    let joining = tether
        .run_ok(&["devices", "add", "cluster-1", "--kubernetes"])
        .await;
    let command = joining.lines().last().unwrap_or_default().trim();
    assert!(
        command.starts_with("echo ")
            && command.contains("| curl -fsS --cacert /dev/stdin https://")
            && command.ends_with("| kubectl apply -f -"),
        "{joining}"
    );

    let run = tether
        .run(&["devices", "actions", "enable", "edge-1", "format-disk"])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("unknown action \"format-disk\""),
        "{}",
        run.stderr
    );
    let run = tether
        .run(&["actions", "catalogue", "--device", "edge-9"])
        .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("edge-9"), "{}", run.stderr);
}

/// A real agent sampling every second (set through the spec): the latest
/// values as a table, one metric as a chart, and its points as JSON.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_the_latest_values_and_chart_one_metric() {
    let tetherd = tetherd().await;
    let admin = tetherd.admin().await.expect("admin");
    let _agent = tether_testkit::Agent::enroll_online(&tetherd, &admin, "edge-1")
        .await
        .expect("a real agent online");
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let empty = tether
        .run(&["metrics", "edge-1", "--metric", "fan_rpm"])
        .await;
    assert_eq!(empty.code, 1, "{}", empty.stdout);
    assert!(
        empty.stderr.contains("no metric \"fan_rpm\""),
        "{}",
        empty.stderr
    );
    tether
        .run_ok(&[
            "devices",
            "update",
            "edge-1",
            "--spec",
            r#"{"metricsConfig": {"intervalSeconds": 1}}"#,
        ])
        .await;
    let json = tether_testkit::wait_until("three CPU points", Duration::from_secs(30), || async {
        let out = tether
            .run(&[
                "metrics",
                "edge-1",
                "--metric",
                "cpu_percent",
                "--since",
                "5m",
                "--step",
                "1s",
                "-o",
                "json",
            ])
            .await;
        if out.code != 0 {
            return Ok(None);
        }
        let range: serde_json::Value = serde_json::from_str(&out.stdout)?;
        let points = range["series"][0]["points"].as_array().map_or(0, Vec::len);
        Ok((points >= 3).then_some(range))
    })
    .await
    .expect("points arrive");
    assert_eq!(json["resolution"], "raw", "{json}");

    let chart = tether
        .run_ok(&[
            "metrics",
            "edge-1",
            "--metric",
            "cpu_percent",
            "--since",
            "2m",
        ])
        .await;
    let lines: Vec<&str> = chart.lines().collect();
    assert!(
        lines[0].starts_with("cpu_percent of edge-1 (raw points"),
        "{chart}"
    );
    let total = lines
        .iter()
        .find(|l| l.starts_with("cpu=total "))
        .unwrap_or_else(|| panic!("no total line in:\n{chart}"));
    assert!(
        total.chars().any(|c| ('▁'..='█').contains(&c)),
        "a sparkline: {chart}"
    );
    assert!(total.contains("min ") && total.contains("last "), "{chart}");
    assert!(lines.last().is_some_and(|l| l.ends_with(" UTC")), "{chart}");

    let table = tether.run_ok(&["metrics", "edge-1"]).await;
    assert!(table.starts_with("METRIC"), "{table}");
    for row in ["cpu_percent", "memory_used_bytes", "uptime_seconds"] {
        assert!(table.contains(row), "no {row} in:\n{table}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_say_what_failed_and_what_to_do() {
    let tetherd = tetherd().await;
    let tether = Tether::new();

    let run = tether.run(&["devices", "list"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("tether login"), "{}", run.stderr);

    tether.login(&tetherd).await;
    tether.run_ok(&["devices", "add", "edge-1"]).await;
    let run = tether
        .run(&[
            "actions",
            "run",
            "edge-1",
            "run-stats",
            "--input",
            r#"{"interval":"soon"}"#,
        ])
        .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("$.interval"), "{}", run.stderr);

    let run = tether
        .run(&["actions", "run", "edge-1", "x", "--timeout", "1s"])
        .await;
    assert_eq!(run.code, 2, "a usage error: {}", run.stderr);

    let config = std::fs::read_to_string(tether.config()).expect("config");
    let tampered: String = config
        .lines()
        .map(|l| {
            if l.starts_with("token") {
                "token = \"stale\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(tether.config(), tampered).expect("writes the config");
    let run = tether.run(&["devices", "list"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("not logged in or the session expired: run `tether login"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_wait_exits_by_the_actions_outcome() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin client");

    let echo = DeviceCredentials::enroll(&admin, "echo")
        .await
        .expect("enrolls echo");
    let echo = SimAgent::connect(&echo, Responder::Echo)
        .await
        .expect("echo connects");
    let out = tether
        .run_ok(&[
            "actions",
            "run",
            "echo",
            "get-node-ip",
            "--wait",
            "--timeout",
            "30s",
            "-o",
            "json",
        ])
        .await;
    let action: Action = serde_json::from_str(&out).expect("a JSON action");
    assert_eq!(action.state.as_str(), "succeeded");
    assert_eq!(action.status_code, Some(200));
    let table = tether
        .run_ok(&["actions", "get", &action.correlation_id])
        .await;
    assert!(table.contains("STATE:     succeeded"), "{table}");
    let events = tether.run_ok(&["events", "echo"]).await;
    assert!(events.contains(&action.correlation_id), "{events}");

    let silent = DeviceCredentials::enroll(&admin, "silent")
        .await
        .expect("enrolls silent");
    let silent = SimAgent::connect(&silent, Responder::Silent)
        .await
        .expect("silent connects");
    let run = tether
        .run(&[
            "actions",
            "run",
            "silent",
            "get-node-ip",
            "--wait",
            "--timeout",
            "2s",
        ])
        .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("after 2s"), "{}", run.stderr);
    assert!(
        run.stderr.contains("check later with `tether actions get"),
        "{}",
        run.stderr
    );

    echo.disconnect().await;
    silent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_a_selector_runs_a_job_and_follows_its_progress() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin client");
    let names = ["b-1", "b-2", "b-3"].map(str::to_owned);
    let credentials = enroll_many(&admin, names, &serde_json::json!({"site": "berlin"}), 3)
        .await
        .expect("enrolls");
    let _agents = connect_many(&credentials, &Responder::Echo, 3)
        .await
        .expect("connect");
    wait_online(&admin, 3, Duration::from_secs(30))
        .await
        .expect("online");
    admin
        .post(
            "/api/v1/devices",
            serde_json::json!({"name": "b-away", "labels": {"site": "berlin"}}),
        )
        .await
        .expect("registers")
        .expect_status(201)
        .expect("created");

    let run = tether
        .run(&[
            "actions",
            "run",
            "-l",
            "site=berlin",
            "get-node-ip",
            "--concurrency",
            "2",
            "--ttl",
            "2s",
            "--wait",
            "--timeout",
            "30s",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(run.code, 1, "one device never answered: {}", run.stderr);
    let job: Job = serde_json::from_str(&run.stdout).expect("a JSON job");
    assert_eq!(job.devices, 4);
    assert_eq!(job.counts.succeeded, 3);
    assert_eq!(job.counts.expired, 1);
    assert!(
        run.stderr.contains("4/4 succeeded 3, expired 1"),
        "not a terminal: a progress line a second: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 of 4 devices did not succeed"),
        "{}",
        run.stderr
    );
    let expired = tether
        .run_ok(&[
            "jobs", "results", &job.id, "--state", "expired", "-o", "json",
        ])
        .await;
    let expired: Vec<Action> = serde_json::from_str(&expired).expect("JSON actions");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].device, "b-away");
    let table = tether.run_ok(&["jobs", "list"]).await;
    assert!(
        table.contains(&job.id) && table.contains("completed"),
        "{table}"
    );
    let run = tether.run(&["jobs", "cancel", &job.id]).await;
    assert_eq!(run.code, 1, "a completed job: {}", run.stderr);
    assert!(run.stderr.contains("already completed"), "{}", run.stderr);
    let usage = tether
        .run(&[
            "actions",
            "run",
            "-l",
            "site=berlin",
            "edge-1",
            "get-node-ip",
        ])
        .await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
}

/// A port that was free a moment ago; quickstart needs the same ports on
/// both runs, because the agent keeps the MQTT address it enrolled with.
/// The bash completion script the packages install completes commands,
/// subcommands and flags in a real bash, with no tetherd and no login; an
/// unknown shell is refused naming the ones there are.
#[tokio::test]
async fn bash_completes_commands_and_flags_from_the_generated_script() {
    let tether = Tether::new();
    let script = tether.dir.path().join("tether.bash");
    std::fs::write(&script, tether.run_ok(&["completions", "bash"]).await).expect("written");
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source {script}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
             COMP_POINT={point}; _tether tether '{current}' '{previous}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script = script.display(),
            words = words.join(" "),
            cword = words.len() - 1,
            point = line.len(),
            current = words[words.len() - 1],
            previous = words[words.len() - 2],
        );
        let output = std::process::Command::new("bash")
            .args(["-c", &program])
            .output()
            .expect("bash runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(complete("tether dev").trim(), "devices");
    let subcommands = complete("tether devices ");
    for subcommand in ["add", "list", "label", "delete"] {
        assert!(
            subcommands.lines().any(|s| s == subcommand),
            "{subcommands}"
        );
    }
    let flags = complete("tether actions run --");
    assert!(flags.lines().any(|f| f == "--wait"), "{flags}");

    let refused = tether.run(&["completions", "tcsh"]).await;
    assert_eq!(refused.code, 2);
    assert!(
        refused.stderr.contains("invalid value 'tcsh'") && refused.stderr.contains("bash"),
        "{}",
        refused.stderr
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

struct Quickstart {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Quickstart {
    async fn start(tether: &Tether, data_dir: &std::path::Path, api: u16, mqtt: u16) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("quickstart")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--api-port",
                &api.to_string(),
                "--mqtt-port",
                &mqtt.to_string(),
            ])
            .env("TETHER_CLI_CONFIG", tether.config())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("quickstart starts");
        let stdout =
            tokio::io::BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut quickstart = Self { child, stdout };
        quickstart
            .wait_for_line("tether quickstart is running")
            .await;
        quickstart
    }

    async fn wait_for_line(&mut self, wanted: &str) {
        let found = tokio::time::timeout(Duration::from_secs(90), async {
            while let Some(line) = self
                .stdout
                .next_line()
                .await
                .expect("reads quickstart's output")
            {
                if line.contains(wanted) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "quickstart never printed {wanted:?}");
    }

    /// Ctrl-C (`-INT`) or a closed terminal (`-HUP`); quickstart must stop
    /// both children and exit 0.
    async fn stop_with(mut self, signal: &str) {
        let pid = self.child.id().expect("quickstart runs").to_string();
        let sent = tokio::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .await
            .expect("kill runs");
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("quickstart stops within 30 s")
            .expect("quickstart's exit status");
        assert!(status.success(), "quickstart exited with {status}");
    }
}

fn processes_using(data_dir: &std::path::Path) -> Vec<String> {
    let needle = data_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&needle) && !cmdline.contains(" quickstart "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_runs_tetherd_and_a_local_agent_and_stops_them_on_ctrl_c() {
    let tether = Tether::new();
    let data_dir = tempfile::tempdir().expect("a data dir");
    let (api, mqtt) = (free_port(), free_port());

    let quickstart = Quickstart::start(&tether, data_dir.path(), api, mqtt).await;
    let devices = tether.run_ok(&["devices", "list", "-o", "json"]).await;
    let devices: Vec<Device> = serde_json::from_str(&devices).expect("a JSON device list");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].name, "local");
    assert_eq!(devices[0].presence.as_str(), "online");

    let out = tether
        .run_ok(&["actions", "run", "local", "get-node-ip", "--wait"])
        .await;
    assert!(out.contains("STATUS:    200"), "{out}");
    assert!(out.contains("127.0.0.1"), "{out}");

    let stats = tether
        .run_ok(&[
            "actions",
            "run",
            "local",
            "run-stats",
            "--input",
            r#"{"interval":1}"#,
            "--wait",
        ])
        .await;
    assert!(stats.contains("succeeded"), "{stats}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = tether.run_ok(&["metrics", "local", "-o", "json"]).await;
        let samples: serde_json::Value = serde_json::from_str(&metrics).expect("JSON metrics");
        if samples.as_array().is_some_and(|s| !s.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no metrics after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    quickstart.stop_with("-INT").await;
    assert_eq!(
        processes_using(data_dir.path()),
        Vec::<String>::new(),
        "children left running"
    );

    // A second run reuses the data dir and the same device.
    let quickstart = Quickstart::start(&tether, data_dir.path(), api, mqtt).await;
    let devices = tether.run_ok(&["devices", "list", "-o", "json"]).await;
    let devices: Vec<Device> = serde_json::from_str(&devices).expect("a JSON device list");
    assert_eq!(devices.len(), 1, "still the one device");
    assert_eq!(devices[0].presence.as_str(), "online");
    // Closing the terminal stops the children too.
    quickstart.stop_with("-HUP").await;
    assert_eq!(
        processes_using(data_dir.path()),
        Vec::<String>::new(),
        "children left running"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_listed_and_revoked_and_logout_ends_the_session() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let other = tetherd.admin().await.expect("a second session");

    let listed = tether.run_ok(&["sessions", "list", "-o", "json"]).await;
    let sessions: Vec<serde_json::Value> = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(sessions.len(), 2, "{listed}");
    assert!(
        !listed.contains("token"),
        "tokens are never shown: {listed}"
    );
    let other_id = sessions
        .iter()
        .find(|s| s["current"] == false)
        .and_then(|s| s["id"].as_str())
        .expect("the other session")
        .to_owned();
    let table = tether.run_ok(&["sessions", "list"]).await;
    assert!(table.contains(" *"), "the caller's own is marked: {table}");

    let revoked = tether.run_ok(&["sessions", "revoke", &other_id]).await;
    assert!(revoked.contains(&other_id), "{revoked}");
    assert_eq!(
        other.get("/api/v1/devices").await.expect("request").status,
        401,
        "the revoked token stops working"
    );

    let out = tether.run_ok(&["logout"]).await;
    assert!(out.contains("Logged out"), "{out}");
    let after = tether.run(&["devices", "list"]).await;
    assert_ne!(after.code, 0);
    assert!(after.stderr.contains("tether login"), "{}", after.stderr);
    // The server and CA stay saved: logging in again needs no CA flag.
    let again = tether
        .run_with_stdin(
            &["login", &tetherd.api_url, "--password-stdin"],
            &format!("{}\n", tetherd.admin_password()),
        )
        .await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    tether.run_ok(&["devices", "list"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_longer_than_a_page_are_shown_whole_and_summarized() {
    let tetherd = tetherd().await;
    let admin = tetherd.admin().await.expect("log in as admin");
    for (i, site) in ["berlin", "paris", "berlin", "", "lima", "berlin", ""]
        .iter()
        .enumerate()
    {
        let labels = if site.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({ "site": site })
        };
        admin
            .post(
                "/api/v1/devices",
                serde_json::json!({"name": format!("edge-{i}"), "labels": labels}),
            )
            .await
            .expect("create a device")
            .expect_status(201)
            .expect("created");
    }
    let tether = Tether::new();
    tether.login(&tetherd).await;

    let names = |json: &str| -> Vec<String> {
        let devices: Vec<Device> = serde_json::from_str(json).expect("a JSON device list");
        devices.into_iter().map(|d| d.name).collect()
    };
    // Four pages of two.
    let all = tether
        .run_ok(&["devices", "list", "--chunk-size", "2", "-o", "json"])
        .await;
    assert_eq!(
        names(&all),
        [
            "edge-0", "edge-1", "edge-2", "edge-3", "edge-4", "edge-5", "edge-6"
        ]
    );
    let table = tether
        .run_ok(&["devices", "list", "--chunk-size", "3"])
        .await;
    assert_eq!(
        table.lines().count(),
        8,
        "a header and every device: {table}"
    );
    let capped = tether
        .run_ok(&[
            "devices",
            "list",
            "--chunk-size",
            "2",
            "--limit",
            "3",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(names(&capped), ["edge-0", "edge-1", "edge-2"]);
    let berlin = tether
        .run_ok(&[
            "devices",
            "list",
            "-l",
            "site in (berlin,lima)",
            "--chunk-size",
            "1",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(names(&berlin), ["edge-0", "edge-2", "edge-4", "edge-5"]);

    let summary = tether.run_ok(&["devices", "summary", "--by", "site"]).await;
    let rows: Vec<Vec<&str>> = summary
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["SITE", "ONLINE", "OFFLINE", "TOTAL"],
            vec!["berlin", "0", "3", "3"],
            vec!["lima", "0", "1", "1"],
            vec!["paris", "0", "1", "1"],
            vec!["(none)", "0", "2", "2"],
            vec!["(all)", "0", "7", "7"],
        ]
    );
    let run = tether.run(&["devices", "list", "--limit", "0"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--limit"), "{}", run.stderr);
}

/// A batch of log lines `{prefix} {i}` for `range`, priority `i % 8`, unit
/// `app`, one second apart from `start`.
fn log_batch(
    prefix: &str,
    range: std::ops::Range<u64>,
    start: chrono::DateTime<chrono::Utc>,
) -> tether_proto::telemetry::TelemetryBatch {
    use tether_proto::telemetry::{LogRecord, Records, TelemetryBatch};
    TelemetryBatch {
        spool_id: "cli-test".into(),
        first_seq: range.start,
        records: Records::Logs(
            range
                .map(|i| LogRecord {
                    at: start + chrono::Duration::seconds(i as i64),
                    priority: (i % 8) as u8,
                    unit: "app".into(),
                    message: format!("{prefix} {i}"),
                    fields: Default::default(),
                })
                .collect(),
        ),
        dropped: Default::default(),
        replay: false,
        usage: Vec::new(),
    }
}

/// Issue 13's bad day: `tether logs --follow` on replica A of two, the
/// device on B, and A killed (SIGKILL): the follower ends with an error
/// naming the broken stream rather than waiting silently, and B goes on
/// storing the device's lines, which a follower on B sees.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_on_a_replica_that_dies_ends_with_an_error_and_nothing_is_lost() {
    let mut a = Tetherd::start(Database::Postgres)
        .await
        .expect("replica A starts");
    let b = Tetherd::start_replica_of(&a, &[])
        .await
        .expect("replica B starts");
    let tether = Tether::new();
    tether.login(&a).await;
    let admin_b = b.admin().await.expect("admin on B");
    let credentials = DeviceCredentials::enroll(&admin_b, "edge-1")
        .await
        .expect("enrolls");
    let device = SimAgent::connect(&credentials, Responder::Silent)
        .await
        .expect("connects to B");
    let mut follow = tether.follow(&["logs", "edge-1", "--follow"]);
    // `log_batch` dates line `i` `i` s after its start: each is dated now.
    let now_for = |i: u64| chrono::Utc::now() - chrono::Duration::seconds(i as i64);
    let mut seq = 0;
    let first = loop {
        device
            .send_telemetry(&log_batch("probe", seq..seq + 1, now_for(seq)))
            .await
            .expect("sends");
        seq += 1;
        if let Some(line) = follow.next_line(Duration::from_millis(500)).await {
            break line;
        }
    };
    assert!(first.contains("probe"), "{first}");

    a.kill();
    let exited = tokio::time::timeout(Duration::from_secs(30), follow.child.wait())
        .await
        .expect("the follower ends within 30 s of its replica's death")
        .expect("waits");
    assert_eq!(exited.code(), Some(1), "an error, not a clean end");

    // B stores what the device sends meanwhile, and serves it.
    let switch = seq;
    let on_b = Tether::new();
    on_b.login(&b).await;
    let mut follow = on_b.follow(&["logs", "edge-1", "--follow"]);
    let line = loop {
        device
            .send_telemetry(&log_batch("after", seq..seq + 1, now_for(seq)))
            .await
            .expect("B stores");
        seq += 1;
        if let Some(line) = follow.next_line(Duration::from_millis(500)).await {
            break line;
        }
    };
    assert!(line.contains("after"), "{line}");
    let stored = on_b.run_ok(&["logs", "edge-1", "--since", "10m"]).await;
    for i in 0..seq {
        let prefix = if i < switch { "probe" } else { "after" };
        assert!(
            stored.contains(&format!("{prefix} {i}\n")),
            "{prefix} {i} kept: {stored}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_read_from_the_archive_and_followed_live() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let credentials = DeviceCredentials::enroll(&admin, "edge-1")
        .await
        .expect("enrolls");
    let device = SimAgent::connect(&credentials, Responder::Silent)
        .await
        .expect("connects");
    let start = chrono::Utc::now() - chrono::Duration::minutes(5);
    device
        .send_telemetry(&log_batch("stored", 0..16, start))
        .await
        .expect("sends");
    tether_testkit::wait_until("the lines stored", Duration::from_secs(30), || {
        let admin = admin.clone();
        async move {
            let page = admin
                .get("/api/v1/devices/edge-1/logs?since=10m")
                .await?
                .expect_status(200)?;
            Ok((page["items"].as_array().map(Vec::len) == Some(16)).then_some(()))
        }
    })
    .await
    .expect("stored");

    let text = tether
        .run_ok(&[
            "logs",
            "edge-1",
            "--archival",
            "--since",
            "600",
            "--priority",
            "err",
        ])
        .await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert!(lines[0].ends_with(" emerg app: stored 0"), "{text}");
    assert!(lines[3].ends_with(" err app: stored 3"), "{text}");
    let json = tether
        .run_ok(&[
            "logs", "edge-1", "--since", "10m", "--grep", "stored 1", "-o", "json",
        ])
        .await;
    let messages: Vec<String> = json
        .lines()
        .map(|line| {
            let entry: tether_proto::api::LogEntry =
                serde_json::from_str(line).expect("a LogEntry");
            entry.message
        })
        .collect();
    assert_eq!(
        messages,
        [
            "stored 1",
            "stored 10",
            "stored 11",
            "stored 12",
            "stored 13",
            "stored 14",
            "stored 15"
        ]
    );

    // --follow shows what is stored from now on, not what was before.
    let mut follow = tether.follow(&["logs", "edge-1", "--follow", "--unit", "app"]);
    // The follow has begun once tetherd serves it; lines sent until then
    // would be old to it. A line sent repeatedly until one shows up says so.
    let mut seq = 16;
    let first = loop {
        device
            .send_telemetry(&log_batch("probe", seq..seq + 1, chrono::Utc::now()))
            .await
            .expect("sends");
        seq += 1;
        if let Some(line) = follow.next_line(Duration::from_millis(500)).await {
            break line;
        }
    };
    assert!(first.contains("probe"), "{first}");
    device
        .send_telemetry(&log_batch("live", seq..seq + 3, chrono::Utc::now()))
        .await
        .expect("sends");
    let live = follow.lines_with("live", 3, "stored").await;
    assert!(live[0].contains(&format!("live {seq}")), "{live:?}");
    follow.child.kill().await.expect("stops");

    let run = tether.run(&["logs", "edge-1", "--since", "soon"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("since"), "{}", run.stderr);
    let run = tether
        .run(&["logs", "edge-1", "--follow", "--since", "1h"])
        .await;
    assert_eq!(run.code, 2, "--follow reads from now: {}", run.stderr);
    let run = tether.run(&["logs"]).await;
    assert_eq!(run.code, 2, "a device or a selector: {}", run.stderr);
    let run = tether.run(&["logs", "nobody", "--follow"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("nobody"), "{}", run.stderr);

    let usage = tether.run_ok(&["devices", "usage", "edge-1"]).await;
    let logs_row: Vec<&str> = usage
        .lines()
        .find(|line| line.starts_with("logs"))
        .expect("a logs row")
        .split_whitespace()
        .collect();
    let stored: u64 = logs_row[logs_row.len() - 5].parse().expect("a count");
    assert_eq!(stored, seq + 3, "every line sent was stored once: {usage}");
    device.disconnect().await;
}

/// Seed 004: `tether logs DEVICE --follow` shows the device's system log
/// from the command on, with nothing configured on the device: a real
/// agent whose system log is a file (`/var/log/syslog` on a device without
/// journald). Once the CLI is gone, tetherd stops renewing `follow-logs`
/// and the agent stops reading the system log when the last one lapses.
#[tokio::test(flavor = "multi_thread")]
async fn follow_shows_a_real_agents_system_log_from_the_command_on_with_nothing_configured() {
    let tetherd = tetherd().await;
    let admin = tetherd.admin().await.expect("admin");
    let dir = tempfile::tempdir().expect("temp dir");
    let syslog = dir.path().join("syslog");
    let append = |message: &str| {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&syslog)
            .expect("opens the system log");
        let now = chrono::Local::now().format("%b %e %H:%M:%S");
        writeln!(file, "{now} edge sshd[7]: {message}").expect("appends");
    };
    append("written before the command");
    let system_log = syslog.display().to_string();
    let agent = tether_testkit::Agent::enroll_with_env(
        &tetherd,
        &admin,
        "edge-1",
        &[("TETHER_AGENT_SYSTEM_LOG", &system_log)],
    )
    .await
    .expect("enrolls");
    agent
        .wait_presence(&admin, "online")
        .await
        .expect("a real agent online");
    let device = admin
        .get("/api/v1/devices/edge-1")
        .await
        .and_then(|reply| reply.expect_status(200))
        .expect("the device");
    assert!(
        device["spec"]
            .as_object()
            .is_none_or(|spec| spec.is_empty()),
        "nothing configured: {device}"
    );
    let tether = Tether::new();
    tether.login(&tetherd).await;

    let mut follow = tether.follow(&["logs", "edge-1", "--follow"]);
    // The agent reads its system log from when `follow-logs` reaches it,
    // just after the command: a line appended until one shows up says so.
    let mut probes = 0;
    let first = loop {
        append(&format!("probe {probes}"));
        probes += 1;
        if let Some(line) = follow.next_line(Duration::from_millis(500)).await {
            break line;
        }
        assert!(
            probes < 60,
            "nothing on stdout after {probes} probes; agent log:\n{}",
            agent.log()
        );
    };
    assert!(first.contains("sshd: probe "), "{first}");
    for i in 0..3 {
        append(&format!("live {i}"));
    }
    let live = follow.lines_with("live", 3, "before the command").await;
    assert!(
        live[0].ends_with("sshd: live 0") && live[2].ends_with("sshd: live 2"),
        "in order: {live:?}"
    );
    // The line from before the command never left the device.
    let archive = tether.run_ok(&["logs", "edge-1", "--since", "1h"]).await;
    assert!(
        archive.contains("live 2") && !archive.contains("before the command"),
        "{archive}"
    );

    // The follower's end stops the renewals: the agent's last window
    // lapses (30 s at most) and it stops reading its system log.
    let before_kill = agent.log().len();
    follow.child.kill().await.expect("stops");
    tether_testkit::wait_until(
        "the agent to stop reading its system log",
        Duration::from_secs(90),
        || {
            let log = agent.log();
            async move {
                Ok(log
                    .get(before_kill..)
                    .is_some_and(|after| after.contains("nobody follows the logs any more"))
                    .then_some(()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}; agent log:\n{}", agent.log()));
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_a_command_on_a_real_agent_with_its_streams_apart_and_its_exit_status() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let agent = tether_testkit::Agent::enroll_online(&tetherd, &admin, "edge-1")
        .await
        .expect("a real agent online");

    let run = tether
        .run_with_stdin(
            &[
                "exec",
                "edge-1",
                "--",
                "sh",
                "-c",
                "read line; echo out:$line; echo err >&2; exit 3",
            ],
            "hello\n",
        )
        .await;
    assert_eq!(run.code, 3, "{}\n{}", run.stderr, agent.log());
    assert_eq!(run.stdout, "out:hello\n");
    assert_eq!(run.stderr, "err\n");

    let run = tether
        .run(&["exec", "edge-1", "--", "/no/such/program"])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("cannot run /no/such/program") && run.stderr.contains("(404)"),
        "{}",
        run.stderr
    );
    let run = tether.run(&["exec", "edge-9", "--", "true"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("device edge-9 not found"),
        "{}",
        run.stderr
    );

    // Each tunnel is in the audit log: who, the device, what ran, bytes.
    let audit = admin
        .get("/api/v1/audit?limit=50")
        .await
        .expect("audit")
        .expect_status(200)
        .expect("listed");
    let tunnels: Vec<&serde_json::Value> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|entry| entry["method"] == "TUNNEL")
        .collect();
    assert_eq!(tunnels.len(), 3, "{audit}");
    // A refused tunnel is recorded too, with the client's error.
    let refused = tunnels.first().expect("the last tunnel");
    assert_eq!(refused["status"], 404, "{refused}");
    assert_eq!(refused["detail"]["device"], "edge-9");
    assert!(
        refused["detail"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not found")),
        "{refused}"
    );
    assert!(
        refused["detail"].get("bytesToDevice").is_none(),
        "{refused}"
    );
    let first = tunnels.last().expect("the first tunnel");
    assert_eq!(first["actor"], "admin");
    assert_eq!(first["detail"]["device"], "edge-1");
    assert_eq!(first["detail"]["kind"], "exec");
    assert!(
        first["detail"]["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("sh -c read line")),
        "{first}"
    );
    // "hello\n" and the end of stdin, each with its channel byte.
    assert_eq!(first["detail"]["bytesToDevice"], 7 + 2);
    assert!(
        first["detail"]["bytesFromDevice"].as_u64() > Some(10),
        "{first}"
    );
}

/// Whether a process runs `sleep SECONDS` on this host (the agent's).
fn sleeping(seconds: u32) -> bool {
    let cmdline = format!("sleep\0{seconds}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == cmdline.as_bytes())
        })
}

/// A client that goes away mid-command takes the command with it, and
/// what the command started: a shell's `sleep` must not outlive it.
#[tokio::test(flavor = "multi_thread")]
async fn exec_kills_the_command_and_what_it_started_when_the_client_goes_away() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let agent = tether_testkit::Agent::enroll_online(&tetherd, &admin, "edge-1")
        .await
        .expect("a real agent online");
    // This test's own sleep, told apart by its length.
    let seconds = 100_000 + std::process::id();
    let script = format!("echo started; sleep {seconds}; echo done");
    let mut exec = tether.follow(&["exec", "edge-1", "--", "sh", "-c", &script]);
    exec.lines_with("started", 1, "done").await;
    tether_testkit::wait_until("the sleep to start", Duration::from_secs(30), || async {
        Ok(sleeping(seconds).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; agent log:\n{}", agent.log()));

    exec.child.kill().await.expect("the client goes");
    tether_testkit::wait_until(
        "the command's sleep to be killed",
        Duration::from_secs(30),
        || async { Ok((!sleeping(seconds)).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}; agent log:\n{}", agent.log()));
}

/// A process's resident memory (VmRSS), in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// A client that stops reading while the command writes 100 MB: the
/// bytes wait in the command's pipe, not in tetherd's or the agent's memory.
#[tokio::test(flavor = "multi_thread")]
async fn exec_with_a_client_that_stops_reading_keeps_tetherd_and_the_agent_flat() {
    use tokio::io::AsyncReadExt as _;
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let agent = tether_testkit::Agent::enroll_online(&tetherd, &admin, "edge-1")
        .await
        .expect("a real agent online");
    let mut exec = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "exec",
            "edge-1",
            "--",
            "head",
            "-c",
            "100000000",
            "/dev/zero",
        ])
        .env("TETHER_CLI_CONFIG", tether.config())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("tether starts");
    let mut stdout = exec.stdout.take().expect("stdout is piped");
    // The first MiB read: the tunnel is up and carrying.
    let mut first = vec![0; 1 << 20];
    tokio::time::timeout(Duration::from_secs(30), stdout.read_exact(&mut first))
        .await
        .expect("1 MiB within 30 s")
        .expect("read");
    let pids = [
        ("tetherd", tetherd.pid().expect("tetherd runs")),
        ("the agent", agent.pid().expect("the agent runs")),
    ];
    let before = pids.map(|(_, pid)| rss_kib(pid));
    // Then nobody reads: sampled for 3 s, in which an unbounded buffer
    // would take in tens of MB.
    let mut peak = before;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (i, (_, pid)) in pids.iter().enumerate() {
            peak[i] = peak[i].max(rss_kib(*pid));
        }
    }
    assert!(
        exec.try_wait().expect("tether's status").is_none(),
        "the command is held back, not done"
    );
    for (i, (name, _)) in pids.iter().enumerate() {
        eprintln!(
            "{name}: VmRSS {} KiB with the tunnel up, {} KiB at most while stalled",
            before[i], peak[i]
        );
        assert!(
            peak[i] < before[i] + 16 * 1024,
            "{name}'s VmRSS grew from {} KiB to {} KiB with a stalled reader",
            before[i],
            peak[i]
        );
    }
    exec.kill().await.expect("the client goes");
}

/// The device going away mid-command ends the client with an error, not a
/// hang.
#[tokio::test(flavor = "multi_thread")]
async fn exec_ends_with_an_error_when_the_device_goes_away_mid_command() {
    use tokio::io::AsyncBufReadExt as _;
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let mut agent = tether_testkit::Agent::enroll_online(&tetherd, &admin, "edge-1")
        .await
        .expect("a real agent online");
    // `cat` ends with the agent (its stdin closes): nothing outlives the test.
    let mut exec = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["exec", "edge-1", "--", "sh", "-c", "echo started; exec cat"])
        .env("TETHER_CLI_CONFIG", tether.config())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tether starts");
    let mut stdout = tokio::io::BufReader::new(exec.stdout.take().expect("piped")).lines();
    let started = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await;
    assert!(
        matches!(&started, Ok(Ok(Some(line))) if line == "started"),
        "{started:?}; agent log:\n{}",
        agent.log()
    );

    agent.kill();
    let output = tokio::time::timeout(Duration::from_secs(30), exec.wait_with_output())
        .await
        .expect("tether ends within 30 s of the device")
        .expect("tether's output");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the tunnel closed before the command ended"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_tunnel_works_when_the_client_and_the_device_are_on_different_replicas() {
    let a = Tetherd::start(Database::Postgres)
        .await
        .expect("replica a starts");
    let b = Tetherd::start_replica_of(&a, &[])
        .await
        .expect("replica b starts");
    // The device enrolls through b, so its session is on b; the CLI talks
    // to a, which holds the tunnel and is the replica the agent dials.
    let admin_b = b.admin().await.expect("admin on b");
    let agent = tether_testkit::Agent::enroll_online(&b, &admin_b, "edge-1")
        .await
        .expect("a real agent online on b");
    let tether = Tether::new();
    tether.login(&a).await;
    let run = tether
        .run_with_stdin(&["exec", "edge-1", "--", "cat"], "through a\n")
        .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, agent.log());
    assert_eq!(run.stdout, "through a\n");
    let b_port = b.mqtt_url.rsplit(':').next().expect("a port");
    let log = agent.log();
    let session = log
        .lines()
        // The session's line, not an HTTPS client's (the clock check's).
        .rfind(|line| line.contains("connecting to mqtts://"))
        .expect("the agent logs its session");
    assert!(session.contains(b_port), "not on b: {session}");

    // A shell: without a terminal here, the device still gives one.
    let run = tether
        .run(&[
            "ssh",
            "edge-1",
            "--",
            "sh",
            "-c",
            "test -t 0 && echo in a terminal; exit 4",
        ])
        .await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stdout.contains("in a terminal"), "{}", run.stdout);

    // A forward, as OpenSSH's ProxyCommand uses it: an HTTP server on the
    // device's loopback.
    let beside = tether_testkit::http_target::HttpTarget::start(
        tether_testkit::http_target::Behaviour::Respond(b"beside b's device".to_vec()),
    )
    .await
    .expect("an HTTP server beside the device");
    let port = beside
        .url
        .rsplit(':')
        .next()
        .expect("a port")
        .trim_end_matches('/');
    let run = tether
        .run_with_stdin(
            &["proxy", "edge-1", "--port", port],
            "GET / HTTP/1.0\r\n\r\n",
        )
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("beside b's device"), "{}", run.stdout);

    // A file there and back.
    let dir = tempfile::tempdir().expect("a dir");
    let local = dir.path().join("conf");
    std::fs::write(&local, b"replicated\n").expect("written");
    let remote = format!("edge-1:{}/on-device", dir.path().display());
    let run = tether.run(&["cp", &local.to_string_lossy(), &remote]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let back = dir.path().join("back");
    let run = tether.run(&["cp", &remote, &back.to_string_lossy()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(std::fs::read(&back).expect("back"), b"replicated\n");
    drop(b);
}

/// An HTTP/1.0 GET of `/` on `port` at 127.0.0.1; the whole answer.
async fn http_get(port: u16) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt as _;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_port_reaches_a_server_beside_the_device_for_many_connections_at_once() {
    use tokio::io::AsyncBufReadExt as _;
    // Here the CLI's tunnels and the agent's dials all come from
    // 127.0.0.1: two connections per forwarded one, past the default 64
    // per address that a client and a device apart each stay under.
    let config = tempfile::tempdir().expect("a config dir");
    let path = config.path().join("tetherd.toml");
    std::fs::write(&path, "[api]\nmax_connections_per_ip = 256\n").expect("config");
    let tetherd = Tetherd::start_with(Database::Sqlite, &["--config", &path.to_string_lossy()])
        .await
        .expect("tetherd starts");
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let agent = tether_testkit::Agent::enroll_online(&tetherd, &admin, "edge-1")
        .await
        .expect("a real agent online");
    let beside = tether_testkit::http_target::HttpTarget::start(
        tether_testkit::http_target::Behaviour::Respond(b"the gateway's page".to_vec()),
    )
    .await
    .expect("an HTTP server beside the device");
    let target = format!("tcp://{}/", beside.url.trim_start_matches("http://"));
    let refused_port = free_port();
    let (port, dead_port) = (free_port(), free_port());
    let start = |local: u16, target: String| {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["forward-port", "edge-1", &local.to_string(), &target])
            .env("TETHER_CLI_CONFIG", tether.config())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("tether starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stderr = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                let _ = tx.send(line);
            }
        });
        Following { child, lines }
    };
    let mut forward = start(port, target);
    let listening = forward
        .next_line(Duration::from_secs(30))
        .await
        .expect("tether says it listens");
    assert!(
        listening.starts_with("Forwarding 127.0.0.1:"),
        "{listening}"
    );

    let gets: Vec<_> = (0..50).map(|_| tokio::spawn(http_get(port))).collect();
    for get in gets {
        let answer = match get.await.expect("joined") {
            Ok(answer) => answer,
            Err(error) => {
                let said = forward.next_line(Duration::from_secs(5)).await;
                panic!("{error}: tether said {said:?}");
            }
        };
        assert!(
            answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("the gateway's page"),
            "{answer}\n{}",
            agent.log()
        );
    }
    assert_eq!(beside.requests(), 50);

    // A target nobody listens on: that connection ends, and says why.
    let mut refused = start(dead_port, format!("tcp://127.0.0.1:{refused_port}/"));
    refused
        .next_line(Duration::from_secs(30))
        .await
        .expect("listening");
    let answer = http_get(dead_port).await.unwrap_or_default();
    assert_eq!(answer, "");
    let reason = refused
        .next_line(Duration::from_secs(30))
        .await
        .expect("the refusal is reported");
    assert!(
        reason.contains(&format!("cannot connect to 127.0.0.1:{refused_port}"))
            && reason.contains("(502)"),
        "{reason}"
    );
    let _ = forward.child.kill().await;
    let _ = refused.child.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stock_ssh_client_reaches_the_devices_sshd_through_tether_proxy() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let agent = tether_testkit::Agent::enroll_online(&tetherd, &admin, "edge-1")
        .await
        .expect("a real agent online");
    // The device's own sshd, on its loopback (OpenSSH's, on a free port).
    let sshd = tether_testkit::sshd::Sshd::start()
        .await
        .expect("sshd starts");
    let port = sshd.port.to_string();
    let blocks = tether
        .run_ok(&["ssh-config", "edge-1", "--user", "root", "--port", &port])
        .await;
    assert!(blocks.starts_with("Host edge-1\n"), "{blocks}");
    // `ssh edge-1` with that block, the fixture's key and host key, and
    // `tether` found on PATH as a user's shell would.
    let dir = tempfile::tempdir().expect("a dir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tether"), bin.join("tether")).expect("link");
    let config = dir.path().join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "{blocks}    IdentityFile {}\n    IdentitiesOnly yes\n    UserKnownHostsFile {}\n    \
             HostKeyAlias [127.0.0.1]:{port}\n    StrictHostKeyChecking yes\n    BatchMode yes\n",
            sshd.client_key_path().display(),
            sshd.known_hosts().expect("known_hosts").display(),
        ),
    )
    .expect("ssh config");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let ssh = tokio::process::Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["edge-1", "echo through tether; exit 3"])
        .env("PATH", path)
        .env("TETHER_CLI_CONFIG", tether.config())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), ssh)
        .await
        .expect("ssh finishes")
        .expect("ssh runs");
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        sshd.log(),
        agent.log()
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "through tether\n");
}

/// tetherd, a logged-in `tether`, and a real agent `edge-1` online, run
/// with `env` on top of its usual settings.
async fn online_edge_1(
    env: &[(&str, &str)],
) -> (
    Tetherd,
    Tether,
    tether_testkit::ApiClient,
    tether_testkit::Agent,
) {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let agent = tether_testkit::Agent::enroll_with_env(&tetherd, &admin, "edge-1", env)
        .await
        .expect("a real agent");
    agent.wait_presence(&admin, "online").await.expect("online");
    (tetherd, tether, admin, agent)
}

#[tokio::test]
async fn cp_copies_files_both_ways_whole_and_refuses_what_the_device_does_not_take() {
    let (_tetherd, tether, admin, agent) =
        online_edge_1(&[("TETHER_AGENT_MAX_COPY_BYTES", "4000000")]).await;
    let local = tempfile::tempdir().expect("a local dir");
    let remote = tempfile::tempdir().expect("the device's dir");
    // 3 MB: many tunnel messages, not a multiple of one.
    let content: Vec<u8> = (0..3_000_017u32).map(|i| (i * 7 % 251) as u8).collect();
    let source = local.path().join("app.bin");
    std::fs::write(&source, &content).expect("written");
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o640)).expect("mode");

    // Up, into a directory named with a trailing slash.
    let target = format!("edge-1:{}/", remote.path().display());
    let run = tether
        .run(&["cp", &source.to_string_lossy(), &target])
        .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, agent.log());
    let uploaded = remote.path().join("app.bin");
    assert_eq!(std::fs::read(&uploaded).expect("uploaded"), content);
    let mode = std::fs::metadata(&uploaded)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);

    // Down again, into a local directory; nothing partial is left behind.
    let back = local.path().join("back");
    std::fs::create_dir(&back).expect("a dir");
    let source = format!("edge-1:{}", uploaded.display());
    let run = tether.run(&["cp", &source, &back.to_string_lossy()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(std::fs::read(back.join("app.bin")).expect("back"), content);
    assert_eq!(std::fs::read_dir(&back).expect("listed").count(), 1);

    // Refusals name the problem and leave the old file whole.
    let big = local.path().join("big.bin");
    std::fs::write(&big, vec![0u8; 4_000_001]).expect("written");
    let target = format!("edge-1:{}", uploaded.display());
    let run = tether.run(&["cp", &big.to_string_lossy(), &target]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("at most 4000000") && run.stderr.contains("(413)"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(&uploaded).expect("kept"), content);
    let missing = format!("edge-1:{}/no/such/dir/x", remote.path().display());
    let small = local.path().join("small.bin");
    std::fs::write(&small, b"x").expect("written");
    let run = tether
        .run(&["cp", &small.to_string_lossy(), &missing])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("cannot create a file in") && run.stderr.contains("(404)"),
        "{}",
        run.stderr
    );
    let missing = format!("edge-1:{}/nothing-here", remote.path().display());
    let run = tether
        .run(&["cp", &missing, &local.path().to_string_lossy()])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("nothing-here") && run.stderr.contains("(404)"),
        "{}",
        run.stderr
    );
    let run = tether.run(&["cp", "./a", "./b"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("DEVICE:/PATH"), "{}", run.stderr);
    // Only the device's temp files would show a failed upload.
    assert_eq!(std::fs::read_dir(remote.path()).expect("listed").count(), 1);

    // What tunnels run never sees the agent's own variables (its
    // enrollment token among them).
    let run = tether.run(&["exec", "edge-1", "--", "env"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.contains("TETHER_"), "{}", run.stdout);

    // Each copy is audited with its path and bytes.
    let audit = admin
        .get("/api/v1/audit?limit=50")
        .await
        .expect("audit")
        .expect_status(200)
        .expect("listed");
    let uploaded_path = uploaded.to_string_lossy();
    let records = audit["items"].as_array().expect("items");
    assert!(
        records.iter().any(|entry| {
            let detail = &entry["detail"];
            entry["method"] == "TUNNEL"
                && detail["kind"] == "upload"
                && detail["target"] == *uploaded_path
                && detail["bytesToDevice"].as_u64() > Some(3_000_017)
        }),
        "{audit}"
    );
}

#[tokio::test]
async fn a_device_that_refuses_shells_refuses_exec_and_cp() {
    let (_tetherd, tether, _admin, _agent) =
        online_edge_1(&[("TETHER_AGENT_ALLOW_REMOTE_SHELL", "false")]).await;
    let run = tether.run(&["exec", "edge-1", "--", "true"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("--allow-remote-shell false"),
        "{}",
        run.stderr
    );
    let run = tether.run(&["cp", "edge-1:/etc/hostname", "/tmp/"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("refuses download tunnels"),
        "{}",
        run.stderr
    );
}

/// A device allows so many tunnels open at once (`--max-tunnels`): one more
/// is refused with 429 naming the flag, and a slot comes back when its
/// tunnel ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_at_its_tunnel_limit_refuses_one_more_until_one_ends() {
    use tokio::io::AsyncBufReadExt as _;
    let (_tetherd, tether, _admin, _agent) =
        online_edge_1(&[("TETHER_AGENT_MAX_TUNNELS", "1")]).await;

    let mut holding = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["exec", "edge-1", "--", "sh", "-c", "echo open; cat"])
        .env("TETHER_CLI_CONFIG", tether.config())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tether starts");
    let mut stdout = tokio::io::BufReader::new(holding.stdout.take().expect("piped")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .expect("the first tunnel opens within 30 s")
        .expect("reads");
    assert_eq!(first.as_deref(), Some("open"));

    let refused = tether.run(&["exec", "edge-1", "--", "true"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("as many tunnels open as it allows (1, tether-agent --max-tunnels)"),
        "{}",
        refused.stderr
    );

    drop(holding.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(30), holding.wait())
        .await
        .expect("the first tunnel ends with its stdin")
        .expect("waits");
    assert!(status.success(), "{status}");
    tether_testkit::wait_until("a free slot again", Duration::from_secs(30), || async {
        Ok((tether.run(&["exec", "edge-1", "--", "true"]).await.code == 0).then_some(()))
    })
    .await
    .expect("the slot comes back once its tunnel ended");
}

/// A command `tether exec` runs inherits no descriptor the agent got from
/// whoever started it (here the test harness's, which the agent inherits):
/// only its three streams, and what `ls` opens itself.
#[tokio::test(flavor = "multi_thread")]
async fn an_exec_command_inherits_no_descriptor_but_its_three_streams() {
    let (_tetherd, tether, _admin, _agent) = online_edge_1(&[]).await;
    let run = tether
        .run(&[
            "exec",
            "edge-1",
            "--",
            "sh",
            "-c",
            "ls /proc/self/fd | sort -n | tr '\\n' ' '",
        ])
        .await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "0 1 2 3 "),
        "{}",
        run.stderr
    );
}

/// A forwarded connection to a target that accepts and then neither reads
/// nor writes ends once the tunnel's client (`tether forward-port`) has
/// left: the device's only slot (`--max-tunnels 1`) comes back, where
/// before the agent kept waiting for the target's answer forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_connection_to_a_stuck_target_ends_when_its_client_leaves() {
    use tokio::io::AsyncBufReadExt as _;
    let (_tetherd, tether, _admin, agent) =
        online_edge_1(&[("TETHER_AGENT_MAX_TUNNELS", "1")]).await;
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let target = format!("tcp://{}/", stuck.local_addr().expect("bound"));
    let (accepted, mut held) = tokio::sync::mpsc::unbounded_channel();
    let _stuck = tokio::spawn(async move {
        // Accepted and kept open, never read nor written.
        while let Ok((stream, _)) = stuck.accept().await {
            let _ = accepted.send(stream);
        }
    });
    let local = free_port();
    let mut forward = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["forward-port", "edge-1", &local.to_string(), &target])
        .env("TETHER_CLI_CONFIG", tether.config())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tether starts");
    let mut said = tokio::io::BufReader::new(forward.stderr.take().expect("piped")).lines();
    let listening = tokio::time::timeout(Duration::from_secs(30), said.next_line())
        .await
        .expect("tether says it listens")
        .expect("reads");
    assert!(
        listening
            .as_deref()
            .is_some_and(|l| l.starts_with("Forwarding")),
        "{listening:?}"
    );
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", local))
        .await
        .expect("connects");
    client.write_all(b"anyone there?").await.expect("writes");
    let _target_side = tokio::time::timeout(Duration::from_secs(30), held.recv())
        .await
        .expect("the agent reaches the target")
        .expect("accepted");
    let refused = tether.run(&["exec", "edge-1", "--", "true"]).await;
    assert!(
        refused.stderr.contains("as many tunnels open as it allows"),
        "the forwarded connection holds the slot: {}",
        refused.stderr
    );
    let _ = forward.kill().await;
    drop(client);
    tether_testkit::wait_until("a free slot again", Duration::from_secs(30), || async {
        Ok((tether.run(&["exec", "edge-1", "--", "true"]).await.code == 0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: the relay did not end\n{}", agent.log()));
}

/// The stock `ssh` with a config file from `tether ssh-config --embedded`,
/// `tether` found on PATH as a user's shell would, and its own
/// `known_hosts`.
struct EmbeddedSsh {
    dir: TempDir,
    path: String,
    cli_config: PathBuf,
}

impl EmbeddedSsh {
    async fn new(tether: &Tether, device: &str) -> Self {
        let blocks = tether
            .run_ok(&["ssh-config", device, "--embedded", "--user", "operator"])
            .await;
        assert!(
            blocks.contains("ProxyCommand tether proxy %h --embedded"),
            "{blocks}"
        );
        let dir = tempfile::tempdir().expect("a dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tether"), bin.join("tether")).expect("link");
        for name in ["id_ed25519", "stranger"] {
            let keygen = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(dir.path().join(name))
                .status()
                .expect("ssh-keygen runs");
            assert!(keygen.success());
        }
        std::fs::write(
            dir.path().join("ssh_config"),
            format!(
                "{blocks}    UserKnownHostsFile {}\n    GlobalKnownHostsFile /dev/null\n    \
                 IdentitiesOnly yes\n    LogLevel ERROR\n",
                dir.path().join("known_hosts").display(),
            ),
        )
        .expect("ssh config");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        EmbeddedSsh {
            dir,
            path,
            cli_config: tether.config(),
        }
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ssh -F CONFIG OPTIONS… DEVICE COMMAND`: its exit code, stdout and stderr.
    async fn run(&self, options: &[&str], device: &str, command: &str) -> Run {
        self.run_with_env(options, device, command, &[]).await
    }

    async fn run_with_env(
        &self,
        options: &[&str],
        device: &str,
        command: &str,
        env: &[(&str, &str)],
    ) -> Run {
        let ssh = tokio::process::Command::new("ssh")
            .arg("-F")
            .arg(self.dir.path().join("ssh_config"))
            .args(options)
            .args([device, command])
            .env("PATH", &self.path)
            .env("TETHER_CLI_CONFIG", &self.cli_config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(60), ssh)
            .await
            .expect("ssh finishes within a minute")
            .expect("ssh runs");
        Run {
            code: output.status.code().expect("exited"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Logs in with the key `name` only.
    async fn with_key(&self, name: &str, device: &str, command: &str) -> Run {
        let identity = format!("IdentityFile={}", self.key(name).display());
        self.run(
            &[
                "-o",
                &identity,
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=accept-new",
            ],
            device,
            command,
        )
        .await
    }

    /// Logs in with `password` only, typed by an askpass program.
    async fn with_password(&self, password: &str, device: &str, command: &str) -> Run {
        let askpass = self.dir.path().join("askpass");
        std::fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n")).expect("askpass");
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700))
            .expect("executable");
        let askpass = askpass.display().to_string();
        self.run_with_env(
            &[
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "StrictHostKeyChecking=accept-new",
            ],
            device,
            command,
            &[
                ("SSH_ASKPASS", askpass.as_str()),
                ("SSH_ASKPASS_REQUIRE", "force"),
            ],
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stock_ssh_client_logs_in_to_the_embedded_server_with_a_registered_key_or_the_password()
{
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let scratch = tempfile::tempdir().expect("a dir");
    // Missing: the agent creates it, private.
    let work_dir = scratch.path().join("work");
    let work = work_dir.display().to_string();
    let mut agent = tether_testkit::Agent::enroll_with_env(
        &tetherd,
        &admin,
        "edge-1",
        &[("TETHER_AGENT_SHELL_WORK_DIR", work.as_str())],
    )
    .await
    .expect("an agent");
    agent.wait_presence(&admin, "online").await.expect("online");
    let ssh = EmbeddedSsh::new(&tether, "edge-1").await;

    // Garbage is refused, naming what is wrong.
    let run = tether
        .run_with_stdin(&["keys", "add", "-"], "ssh-ed25519 not-a-key me@laptop\n")
        .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("not one line of an OpenSSH public key"),
        "{}",
        run.stderr
    );
    // Nobody can log in yet: said before the device is asked.
    let run = ssh.with_key("id_ed25519", "edge-1", "true").await;
    assert_eq!(run.code, 255);
    assert!(run.stderr.contains("tether keys add"), "{}", run.stderr);

    let public = ssh.key("id_ed25519.pub").display().to_string();
    let added = tether.run_ok(&["keys", "add", &public]).await;
    let fingerprint = String::from_utf8(
        std::process::Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f", &public])
            .output()
            .expect("ssh-keygen")
            .stdout,
    )
    .expect("utf-8");
    let fingerprint = fingerprint
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint");
    assert!(added.contains(fingerprint), "{added} / {fingerprint}");
    let listed = tether.run_ok(&["keys", "list"]).await;
    assert!(listed.contains(fingerprint), "{listed}");

    // A registered key runs commands, in the work dir, with HOME there.
    let run = ssh
        .with_key(
            "id_ed25519",
            "edge-1",
            "hostname; pwd; echo $HOME; echo kept > note.txt",
        )
        .await;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, format!("{}\n{work}\n{work}\n", hostname.trim()).as_str()),
        "{}\n{}",
        run.stderr,
        agent.log()
    );
    let mode = std::fs::metadata(&work_dir)
        .expect("created")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    // Its exit status is ssh's.
    let run = ssh.with_key("id_ed25519", "edge-1", "exit 3").await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    // Another key is refused.
    let run = ssh.with_key("stranger", "edge-1", "true").await;
    assert_eq!(run.code, 255, "{}", run.stdout);
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);

    // Password login: off until set; then the password shown once works,
    // another does not.
    let run = ssh.with_password("guess", "edge-1", "true").await;
    assert_eq!(run.code, 255);
    let password = tether
        .run_ok(&["devices", "shell-password", "edge-1"])
        .await
        .trim()
        .to_owned();
    assert!(password.len() >= 20, "{password}");
    let run = ssh.with_password(&password, "edge-1", "cat note.txt").await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "kept\n"),
        "{}",
        run.stderr
    );
    let run = ssh
        .with_password("not-the-password", "edge-1", "true")
        .await;
    assert_eq!(run.code, 255, "{}", run.stdout);
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);
    // The password is in no record in clear.
    let audit = admin
        .get("/api/v1/audit?limit=50")
        .await
        .expect("audit")
        .expect_status(200)
        .expect("listed");
    assert!(!audit.to_string().contains(&password), "{audit}");
    let actions = admin
        .get("/api/v1/devices/edge-1/actions?limit=50")
        .await
        .expect("actions")
        .expect_status(200)
        .expect("listed");
    assert!(!actions.to_string().contains("pbkdf2"), "{actions}");
    tether
        .run_ok(&["devices", "shell-password", "edge-1", "--disable"])
        .await;
    let run = ssh.with_password(&password, "edge-1", "true").await;
    assert_eq!(run.code, 255, "{}", run.stdout);

    // The work dir and the host key outlive the agent: the same
    // known_hosts entry, now strictly checked, still matches.
    agent.stop().await.expect("the agent stops");
    agent
        .wait_presence(&admin, "offline")
        .await
        .expect("offline");
    agent.start().expect("the agent starts again");
    agent.wait_presence(&admin, "online").await.expect("online");
    let identity = format!("IdentityFile={}", ssh.key("id_ed25519").display());
    let run = ssh
        .run(
            &[
                "-o",
                &identity,
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ],
            "edge-1",
            "cat note.txt",
        )
        .await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "kept\n"),
        "{}",
        run.stderr
    );

    // A removed key stops working at the next session; the user's other
    // key goes on working.
    let stranger = ssh.key("stranger.pub").display().to_string();
    tether
        .run_ok(&["keys", "add", &stranger, "--name", "second"])
        .await;
    let id = listed
        .lines()
        .find(|line| line.contains(fingerprint))
        .and_then(|line| line.split_whitespace().next())
        .expect("the key's id")
        .to_owned();
    tether.run_ok(&["keys", "remove", &id]).await;
    let run = ssh.with_key("id_ed25519", "edge-1", "true").await;
    assert_eq!(run.code, 255, "{}", run.stdout);
    assert!(run.stderr.contains("Permission denied"), "{}", run.stderr);
    let run = ssh.with_key("stranger", "edge-1", "echo second").await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "second\n"),
        "{}",
        run.stderr
    );
}
