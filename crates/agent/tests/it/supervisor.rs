//! Supervised processes and config files end to end (issue 17): a real
//! tetherd, a real agent, real children (`sh` scripts writing their pid
//! and start order into a temp dir). The spec's `deployments` section is
//! set through tetherd's API, the per-deployment status read back there,
//! and the processes' output found in the device's logs in tetherd.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use sha2::Digest;
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// The test's deployments, each targeting its one device, made through
/// tetherd's deployments API. The tests name versions ("v1"); tetherd
/// numbers revisions: this keeps which is which.
pub(crate) struct Desired<'a> {
    admin: &'a ApiClient,
    device: String,
    revisions: HashMap<(String, String), u64>,
}

impl<'a> Desired<'a> {
    pub(crate) fn new(admin: &'a ApiClient, device: &str) -> Self {
        Self {
            admin,
            device: device.to_owned(),
            revisions: HashMap::new(),
        }
    }

    /// The deployments API's spec for one of the test's deployments
    /// (`version` is the test's label, not sent). A failure puts the
    /// device back at once, and never pauses a one-device rollout.
    fn spec(&self, deployment: &Value) -> Value {
        let mut spec = deployment.clone();
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("version");
            spec.insert("target".into(), json!({"device": self.device}));
            spec.insert(
                "rollout".into(),
                json!({"batchSize": 1, "maxFailurePercent": 100}),
            );
        }
        spec
    }

    /// Creates or revises each deployment of `deployments` (name → the
    /// test's `{"version": LABEL, processes, configFiles, values}`).
    pub(crate) async fn set(&mut self, deployments: Value) -> anyhow::Result<()> {
        for (name, deployment) in deployments.as_object().context("deployments by name")? {
            let reply = self.put(name, deployment).await?;
            anyhow::ensure!(
                reply.status.is_success(),
                "deployment {name}: HTTP {}: {}",
                reply.status,
                reply.body
            );
            let reply = reply.body;
            let label = deployment["version"].as_str().context("a version label")?;
            let revision = reply["revision"].as_u64().context("revision")?;
            self.revisions
                .insert((name.clone(), label.to_owned()), revision);
        }
        Ok(())
    }

    /// Sends one deployment as it is (the caller checks the answer).
    async fn put(
        &self,
        name: &str,
        deployment: &Value,
    ) -> anyhow::Result<tether_testkit::api::Reply> {
        let spec = self.spec(deployment);
        let path = format!("/api/v1/deployments/{name}");
        if self.admin.get(&path).await?.status.as_u16() == 404 {
            self.admin
                .post("/api/v1/deployments", json!({"name": name, "spec": spec}))
                .await
        } else {
            self.admin.put_json(&path, spec).await
        }
    }

    /// Waits until `deployment` at the test's version `label` is `state`:
    /// ready as the device reports it; failed as tetherd's rollout
    /// records it (the device was put back, with the reason). Its status.
    pub(crate) async fn wait(
        &self,
        agent: &Agent,
        deployment: &str,
        label: &str,
        state: &str,
    ) -> anyhow::Result<Value> {
        let revision = *self
            .revisions
            .get(&(deployment.to_owned(), label.to_owned()))
            .with_context(|| format!("{deployment} {label} was never set"))?;
        let (admin, device) = (self.admin, self.device.as_str());
        let waited = wait_until(
            &format!("deployment {deployment} {label} (revision {revision}) to be {state}"),
            WAIT,
            || async move {
                if state == "failed" {
                    let status = admin
                        .get(&format!("/api/v1/deployments/{deployment}/status"))
                        .await?
                        .expect_status(200)?;
                    let row = status["devices"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|d| d["device"] == device && d["rolledBack"] == true)
                        .cloned();
                    return Ok(row.filter(|_| status["revision"] == revision));
                }
                let shown = admin
                    .get(&format!("/api/v1/devices/{device}"))
                    .await?
                    .expect_status(200)?;
                let status = &shown["status"]["deployments"][deployment];
                let at_revision = status["version"]
                    .as_str()
                    .is_some_and(|v| v.starts_with(&format!("{revision}-")));
                Ok((at_revision && status["state"] == state).then(|| status.clone()))
            },
        )
        .await;
        waited.with_context(|| format!("agent log:\n{}", tail(&agent.log(), 4000)))
    }
}

fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A process that records its start and pid in `dir`, says hello, and sleeps.
fn sleeper(dir: &Path, name: &str, extra: Value) -> Value {
    let mut process = json!({
        "execCmd": "/bin/sh",
        "execArgs": ["-c", format!(
            "echo {name} >> \"$DIR/order\"; echo $$ > \"$DIR/{name}.pid\"; echo hello-from-{name}; exec sleep 1000"
        )],
        "env": {"DIR": dir.display().to_string()},
    });
    if let (Some(process), Value::Object(extra)) = (process.as_object_mut(), extra) {
        process.extend(extra);
    }
    process
}

fn pid(dir: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Running, not a zombie: children of a killed agent are reaped by
/// whoever adopts them, if anyone does.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("State:"))
            .is_some_and(|state| !state.trim_start().starts_with('Z'))
    })
}

/// Waits until `name` runs with a pid other than `old`; the new pid.
async fn wait_new_pid(dir: &Path, name: &str, old: Option<u32>) -> anyhow::Result<u32> {
    wait_until(
        &format!("{name} to run with a new pid"),
        WAIT,
        || async move { Ok(pid(dir, name).filter(|p| Some(*p) != old && alive(*p))) },
    )
    .await
}

fn kill(pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill {pid}: {status}");
    Ok(())
}

async fn online_agent(tetherd: &Tetherd, admin: &ApiClient, name: &str) -> anyhow::Result<Agent> {
    let agent = Agent::enroll(tetherd, admin, name).await?;
    agent.wait_presence(admin, "online").await?;
    Ok(agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_start_in_dependency_order_restart_after_a_kill_and_fail_at_their_restart_limit()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let mut agent = online_agent(&tetherd, &admin, "supervised").await?;
    let mut desired = Desired::new(&admin, &agent.name);
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let db_ready = format!("test -s {}/db.pid", dir.display());
    desired.set(json!({
            "app": {"version": "v1", "processes": {
                // web and worker wait for db's health check, which passes
                // once db has written its pid.
                "db": sleeper(dir, "db", json!({
                    "restartPauseSeconds": 1,
                    "healthCheck": {"command": ["/bin/sh", "-c", db_ready], "intervalSeconds": 1, "timeoutSeconds": 1}
                })),
                "web": sleeper(dir, "web", json!({
                    "dependsOn": ["db"], "restartOnDependencyFail": true, "restartPauseSeconds": 1
                })),
                "worker": sleeper(dir, "worker", json!({"dependsOn": ["db"]})),
            }},
            "flaky": {"version": "f1", "processes": {
                "crasher": {
                    "execCmd": "/bin/sh",
                    "execArgs": ["-c", "echo crashing; exit 3"],
                    "restartLimit": 2,
                    "restartPauseSeconds": 0
                }
            }}
        }),
    )
    .await?;
    desired.wait(&agent, "app", "v1", "ready").await?;
    let order = std::fs::read_to_string(dir.join("order"))?;
    let order: Vec<&str> = order.lines().collect();
    ensure!(
        order.len() == 3 && order[0] == "db",
        "start order {order:?}"
    );

    // The crasher exits 3 three times: two restarts, then failed with why.
    let flaky = desired.wait(&agent, "flaky", "f1", "failed").await?;
    let reason = flaky["reason"].as_str().context("a reason")?;
    ensure!(
        reason.contains("process crasher failed: exited with status 3")
            && reason.contains("restartLimit 2"),
        "{reason}"
    );

    // Killed: back within its restartPause (1 s), give or take the polling.
    let web = pid(dir, "web").context("web's pid")?;
    let killed = Instant::now();
    kill(web)?;
    wait_new_pid(dir, "web", Some(web)).await?;
    let took = killed.elapsed();
    ensure!(
        took < Duration::from_secs(4),
        "web came back after {took:?}"
    );

    // db dies: web (restartOnDependencyFail) is stopped and started again
    // once db is healthy again; worker is left alone.
    let (db, web, worker) = (
        pid(dir, "db").context("db")?,
        pid(dir, "web").context("web")?,
        pid(dir, "worker").context("worker")?,
    );
    std::fs::remove_file(dir.join("order"))?;
    kill(db)?;
    wait_new_pid(dir, "db", Some(db)).await?;
    wait_new_pid(dir, "web", Some(web)).await?;
    ensure!(
        pid(dir, "worker") == Some(worker) && alive(worker),
        "worker restarted"
    );
    let order = std::fs::read_to_string(dir.join("order"))?;
    ensure!(
        order.lines().collect::<Vec<_>>() == ["db", "web"],
        "restart order {order:?}"
    );
    desired.wait(&agent, "app", "v1", "ready").await?;

    // What a process prints reaches the device's logs in tetherd, tagged.
    let device = agent.name.clone();
    let logs = &admin;
    wait_until("web's output in tetherd's logs", WAIT, || {
        let device = device.clone();
        async move {
            let page = logs
                .get(&format!(
                    "/api/v1/devices/{device}/logs?grep=hello-from-web"
                ))
                .await?
                .expect_status(200)?;
            Ok(page["items"].as_array().and_then(|items| {
                items
                    .iter()
                    .find(|item| item.to_string().contains("app/web"))
                    .cloned()
            }))
        }
    })
    .await
    .with_context(|| format!("agent log:\n{}", tail(&agent.log(), 3000)))?;

    // An agent killed outright leaves its children; started again, it
    // kills them and starts its own.
    let worker = pid(dir, "worker").context("worker")?;
    agent.kill();
    ensure!(alive(worker), "worker died with the agent's SIGKILL");
    agent.start()?;
    let restarted = wait_new_pid(dir, "worker", Some(worker)).await?;
    wait_until("the old worker to be gone", WAIT, || async move {
        Ok((!alive(worker)).then_some(()))
    })
    .await?;
    ensure!(alive(restarted));
    desired.wait(&agent, "app", "v1", "ready").await?;

    // The agent takes its children with it when it stops.
    let pids: Vec<u32> = ["db", "web", "worker"]
        .iter()
        .filter_map(|name| pid(dir, name))
        .collect();
    agent.stop().await?;
    ensure!(
        pids.iter().all(|p| !alive(*p)),
        "children outlived the agent: {pids:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_restarts_only_its_users_and_a_bad_version_leaves_what_runs_untouched()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let agent = online_agent(&tetherd, &admin, "templated").await?;
    let mut desired = Desired::new(&admin, &agent.name);
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let conf_a = dir.join("etc/a.conf");
    let conf_b = dir.join("etc/b.conf");
    let deployment = |version: &str, port: u32, extra_process: Option<(&str, Value)>| {
        let mut processes = json!({
            "reader-a": sleeper(dir, "reader-a", json!({"configFiles": ["conf-a"]})),
            "reader-b": sleeper(dir, "reader-b", json!({"configFiles": ["conf-b"]})),
            "plain": sleeper(dir, "plain", json!({})),
        });
        if let Some((name, process)) = extra_process {
            processes[name] = process;
        }
        json!({"app": {
            "version": version,
            "processes": processes,
            "configFiles": {
                "conf-a": {
                    "path": conf_a.display().to_string(),
                    "mode": "0640",
                    "template": "port={{ values.port }} device={{ device.name }} cores={{ \"some\" if facts.cpuCores > 0 else \"none\" }}\n"
                },
                "conf-b": {"path": conf_b.display().to_string(), "template": "name={{ values.name }}\n"}
            },
            "values": {"port": port, "name": "b"}
        }})
    };
    desired.set(deployment("v1", 8080, None)).await?;
    desired.wait(&agent, "app", "v1", "ready").await?;
    ensure!(
        std::fs::read_to_string(&conf_a)? == "port=8080 device=templated cores=some\n",
        "a.conf: {:?}",
        std::fs::read_to_string(&conf_a)
    );
    use std::os::unix::fs::PermissionsExt;
    ensure!(std::fs::metadata(&conf_a)?.permissions().mode() & 0o7777 == 0o640);
    let pids = |names: &[&str]| -> anyhow::Result<Vec<u32>> {
        names
            .iter()
            .map(|n| pid(dir, n).with_context(|| format!("{n}'s pid")))
            .collect()
    };
    let [a, b, plain] = pids(&["reader-a", "reader-b", "plain"])?[..] else {
        unreachable!()
    };

    // Only conf-a changes: only reader-a restarts.
    desired.set(deployment("v2", 9090, None)).await?;
    desired.wait(&agent, "app", "v2", "ready").await?;
    let a = wait_new_pid(dir, "reader-a", Some(a)).await?;
    ensure!(std::fs::read_to_string(&conf_a)?.starts_with("port=9090 "));
    ensure!(
        pids(&["reader-b", "plain"])? == [b, plain],
        "others restarted"
    );

    // A cycle in dependsOn: refused by tetherd, naming it; nothing changes.
    let mut cyclic = deployment("v3", 9090, None);
    cyclic["app"]["processes"]["plain"]["dependsOn"] = json!(["reader-b"]);
    cyclic["app"]["processes"]["reader-b"]["dependsOn"] = json!(["plain"]);
    let refused = desired
        .put("app", &cyclic["app"])
        .await?
        .expect_status(400)?;
    ensure!(
        refused.to_string().contains("plain -> reader-b -> plain"),
        "{refused}"
    );

    // An artifact whose checksum does not match: failed for that version,
    // with the reason; what runs keeps running, files as they were.
    let url = format!("{}/api/v1/ca.pem", tetherd.api_url);
    let artifact = |sha256: &str| {
        let script = format!(
            "test -s ca.pem && echo $$ > \"{}/fetcher.pid\"; exec sleep 1000",
            dir.display()
        );
        json!({
            "execCmd": "/bin/sh",
            "execArgs": ["-c", script],
            "artifacts": [{"url": url, "sha256": sha256, "name": "ca.pem", "mode": "0644"}]
        })
    };
    let wrong = hex::encode(sha2::Sha256::digest(b"something else"));
    desired
        .set(deployment("v4", 7070, Some(("fetcher", artifact(&wrong)))))
        .await?;
    let failed = desired.wait(&agent, "app", "v4", "failed").await?;
    let reason = failed["reason"].as_str().context("reason")?;
    ensure!(
        reason.contains("checksum mismatch") && reason.contains(&wrong),
        "{reason}"
    );
    ensure!(pids(&["reader-a", "reader-b", "plain"])? == [a, b, plain]);
    ensure!(std::fs::read_to_string(&conf_a)?.starts_with("port=9090 "));
    ensure!(pid(dir, "fetcher").is_none());

    // With the right checksum it is downloaded, checked and used.
    let (_, served) = admin.get_text("/api/v1/ca.pem").await?;
    let right = hex::encode(sha2::Sha256::digest(served.as_bytes()));
    desired
        .set(deployment("v5", 7070, Some(("fetcher", artifact(&right)))))
        .await?;
    desired.wait(&agent, "app", "v5", "ready").await?;
    wait_new_pid(dir, "fetcher", None).await?;

    // A template naming a value the deployment lacks: failed, naming the file.
    let mut undefined = deployment("v6", 7070, Some(("fetcher", artifact(&right))));
    undefined["app"]["configFiles"]["conf-b"]["template"] = json!("{{ values.missing }}");
    desired.set(undefined).await?;
    let failed = desired.wait(&agent, "app", "v6", "failed").await?;
    let reason = failed["reason"].as_str().context("reason")?;
    ensure!(
        reason.contains("config file conf-b") && reason.contains("undefined"),
        "{reason}"
    );
    ensure!(std::fs::read_to_string(&conf_b)? == "name=b\n");
    Ok(())
}

/// Templates are rendered by the helper `tether-agent-render`: without
/// it, a version with config files fails naming the path and the flag,
/// and a version without any still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_render_helper_config_files_fail_naming_it() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let helper = dir.join("no-such-render-helper");
    let helper_env = helper.display().to_string();
    let agent = Agent::enroll_with_env(
        &tetherd,
        &admin,
        "helperless",
        &[("TETHER_AGENT_RENDER_HELPER", helper_env.as_str())],
    )
    .await?;
    agent.wait_presence(&admin, "online").await?;
    let mut desired = Desired::new(&admin, &agent.name);
    let conf = dir.join("etc/app.conf");
    desired
        .set(json!({"app": {
            "version": "v1",
            "processes": {"plain": sleeper(dir, "plain", json!({"configFiles": ["conf"]}))},
            "configFiles": {"conf": {"path": conf.display().to_string(), "template": "x={{ values.x }}\n"}},
            "values": {"x": 1}
        }}))
        .await?;
    let failed = desired.wait(&agent, "app", "v1", "failed").await?;
    let reason = failed["reason"].as_str().context("reason")?;
    ensure!(
        reason.contains(&helper_env) && reason.contains("--render-helper"),
        "{reason}"
    );
    ensure!(!conf.exists() && pid(dir, "plain").is_none());

    desired
        .set(json!({"app": {"version": "v2", "processes": {"plain": sleeper(dir, "plain", json!({}))}}}))
        .await?;
    desired.wait(&agent, "app", "v2", "ready").await?;
    wait_new_pid(dir, "plain", None).await?;
    Ok(())
}

/// The inode at `path`: the agent writes a config file anew (a new
/// inode) each time it writes it.
fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// Config files leave the device when the spec drops them (one file, or
/// its whole deployment): after the processes started with them have
/// stopped, and only files the agent wrote that are still as it wrote
/// them. The record of what it wrote outlives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_files_the_spec_drops_are_removed_once_their_processes_stopped() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let mut agent = online_agent(&tetherd, &admin, "tidy").await?;
    let mut desired = Desired::new(&admin, &agent.name);
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let conf = |name: &str| dir.join("etc").join(name);
    let file = |name: &str| json!({"path": conf(name).display().to_string(), "template": format!("{name}\n")});
    // A process that, stopped, notes whether its config file is there.
    let user = json!({
        "execCmd": "/bin/sh",
        "execArgs": ["-c", "trap 'if test -f \"$CONF\"; then echo present; else echo absent; fi > \"$DIR/at-stop\"; exit 0' TERM; echo $$ > \"$DIR/user.pid\"; while :; do sleep 0.1; done"],
        "env": {"DIR": dir.display().to_string(), "CONF": conf("used.conf").display().to_string()},
        "configFiles": ["used"],
    });
    let app = |version: &str, files: Value| json!({"version": version, "processes": {"user": user.clone()}, "configFiles": files});
    desired
        .set(json!({
            "app": app("v1", json!({"used": file("used.conf"), "dropped": file("dropped.conf")})),
            "extra": {"version": "v1", "configFiles": {"mine": file("mine.conf"), "by-hand": file("by-hand.conf")}},
        }))
        .await?;
    desired.wait(&agent, "app", "v1", "ready").await?;
    desired.wait(&agent, "extra", "v1", "ready").await?;
    for name in ["used.conf", "dropped.conf", "mine.conf", "by-hand.conf"] {
        ensure!(conf(name).is_file(), "{name} written");
    }
    let user_pid = wait_new_pid(dir, "user", None).await?;

    // One file dropped from a deployment that stays: it goes, the rest
    // stays, nothing restarts.
    desired
        .set(json!({"app": app("v2", json!({"used": file("used.conf")}))}))
        .await?;
    desired.wait(&agent, "app", "v2", "ready").await?;
    wait_until("dropped.conf removed", WAIT, || async {
        Ok((!conf("dropped.conf").exists()).then_some(()))
    })
    .await
    .with_context(|| tail(&agent.log(), 4000).to_owned())?;
    ensure!(conf("used.conf").is_file() && conf("mine.conf").is_file());
    ensure!(pid(dir, "user") == Some(user_pid) && alive(user_pid));

    // A restart: the agent writes its files again at start, and still
    // knows they are its own.
    let before: Vec<Option<u64>> = ["mine.conf", "by-hand.conf"]
        .iter()
        .map(|name| inode(&conf(name)))
        .collect();
    agent.stop().await?;
    std::fs::remove_file(dir.join("at-stop"))?;
    agent.start()?;
    wait_new_pid(dir, "user", Some(user_pid)).await?;
    wait_until("extra's files written again", WAIT, || async {
        let now: Vec<Option<u64>> = ["mine.conf", "by-hand.conf"]
            .iter()
            .map(|name| inode(&conf(name)))
            .collect();
        Ok(now
            .iter()
            .zip(&before)
            .all(|(now, before)| now.is_some() && now != before)
            .then_some(()))
    })
    .await?;
    // Someone replaces one of them by hand: it is theirs now.
    std::fs::write(dir.join("new"), "by hand\n")?;
    std::fs::rename(dir.join("new"), conf("by-hand.conf"))?;

    for deployment in ["app", "extra"] {
        admin
            .delete(&format!("/api/v1/deployments/{deployment}"))
            .await?
            .expect_status(202)?;
    }
    wait_until("used.conf and mine.conf removed", WAIT, || async {
        Ok((!conf("used.conf").exists() && !conf("mine.conf").exists()).then_some(()))
    })
    .await
    .with_context(|| tail(&agent.log(), 4000).to_owned())?;
    ensure!(
        std::fs::read_to_string(dir.join("at-stop"))? == "present\n",
        "the process stopped before its file went"
    );
    ensure!(std::fs::read_to_string(conf("by-hand.conf"))? == "by hand\n");
    // The agent's log is written behind it: waited for.
    wait_until("the file left in place logged", WAIT, || async {
        Ok(agent
            .log()
            .contains("left a config file the spec no longer has in place: it was replaced since the agent wrote it")
            .then_some(()))
    })
    .await
    .with_context(|| tail(&agent.log(), 4000).to_owned())?;
    Ok(())
}
