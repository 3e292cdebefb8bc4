//! Kubernetes through tether (ADR 0022): the real `kubectl` with the
//! output of `tether kubeconfig`, through a real tetherd and a real agent
//! in cluster mode, against testkit's fake API server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tether_testkit::api::ApiClient;
use tether_testkit::fake_kube::{ADMIN_TOKEN, FakeKubeApi};
use tether_testkit::wait::wait_until;
use tether_testkit::{Agent, Tetherd};
use tokio::io::AsyncBufReadExt as _;

use super::{Tether, tetherd};

/// Who the proxied requests act as.
const ACCOUNT: &str = "system:serviceaccount:tether-system:tether-kubeconfig";

/// tetherd, a logged-in CLI, the fake API server with a node and a pod,
/// and an agent in cluster mode whose pod account is the fake's admin.
struct Cluster {
    tetherd: Tetherd,
    tether: Tether,
    admin: ApiClient,
    api: FakeKubeApi,
    agent: Agent,
    _account: tempfile::TempDir,
}

impl Cluster {
    async fn start(device: &str) -> Self {
        let api = FakeKubeApi::start().await.expect("the fake API server");
        api.add_node("edge-node-1", &[("InternalIP", "10.0.0.5")])
            .expect("a node");
        api.add_pod("default", "web-1").expect("a pod");
        let account = tempfile::tempdir().expect("a pod's account dir");
        std::fs::write(account.path().join("token"), format!("{ADMIN_TOKEN}\n")).expect("token");
        std::fs::write(account.path().join("ca.crt"), &api.ca_pem).expect("ca");
        let port = api.url.rsplit(':').next().expect("a port").to_owned();
        let tetherd = tetherd().await;
        let tether = Tether::new();
        tether.login(&tetherd).await;
        let admin = tetherd.admin().await.expect("admin");
        let account_dir = account.path().to_string_lossy().into_owned();
        let agent = Agent::enroll_with_env(
            &tetherd,
            &admin,
            device,
            &[
                ("TETHER_AGENT_KUBERNETES", "cluster"),
                ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
                ("KUBERNETES_SERVICE_PORT", &port),
                ("TETHER_AGENT_KUBERNETES_SERVICE_ACCOUNT_DIR", &account_dir),
            ],
        )
        .await
        .expect("an agent enrolls");
        // The cluster is known once the agent reported its facts.
        wait_until(
            "the device to report its cluster",
            Duration::from_secs(30),
            || {
                let admin = &admin;
                async move {
                    let device = admin
                        .get(&format!("/api/v1/devices/{device}"))
                        .await?
                        .expect_status(200)?;
                    Ok(
                        (device["status"]["facts"]["kubernetes"]["mode"] == "cluster")
                            .then_some(()),
                    )
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
        Cluster {
            tetherd,
            tether,
            admin,
            api,
            agent,
            _account: account,
        }
    }

    /// `tether kubeconfig DEVICE -f DIR/kubeconfig`.
    async fn kubeconfig(&self, device: &str) -> PathBuf {
        let path = self.tether.dir.path().join(format!("{device}.kubeconfig"));
        self.tether
            .run_ok(&["kubeconfig", device, "-f", &path.to_string_lossy()])
            .await;
        path
    }
}

/// The real kubectl with `kubeconfig`, and the CLI's config beside it.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("kubectl");
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout", "60s"])
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn run_kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    let cache = kubeconfig.with_extension("cache");
    let mut all = vec!["--cache-dir", cache.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    tokio::time::timeout(Duration::from_secs(90), kubectl(kubeconfig, &all).output())
        .await
        .expect("kubectl ends within 90 s")
        .expect("kubectl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_lists_nodes_through_tether_as_the_kubeconfig_account_once_enabled() {
    let c = Cluster::start("edge-k8s").await;
    let kubeconfig = c.kubeconfig("edge-k8s").await;
    let written = std::fs::read_to_string(&kubeconfig).expect("the kubeconfig");
    assert!(
        written.contains("/api/v1/devices/edge-k8s/kubernetes")
            && written.contains("kube-credential")
            && !written.contains("token:"),
        "{written}"
    );

    // Not enabled: kubectl prints tetherd's reason and the way out.
    let refused = run_kubectl(&kubeconfig, &["get", "nodes"]).await;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("Forbidden")
            && text(&refused.stderr)
                .contains("tether devices actions enable edge-k8s retrieve-kubeconfig"),
        "{}",
        text(&refused.stderr)
    );
    assert!(
        c.api.requests().is_empty()
            || c.api
                .requests()
                .iter()
                .all(|r| r.user.as_deref() != Some(ACCOUNT)),
        "nothing reached the cluster as the account"
    );

    c.tether
        .run_ok(&[
            "devices",
            "actions",
            "enable",
            "edge-k8s",
            "retrieve-kubeconfig",
        ])
        .await;
    let nodes = run_kubectl(&kubeconfig, &["get", "nodes"]).await;
    assert!(
        nodes.status.success(),
        "{}\n{}",
        text(&nodes.stderr),
        c.agent.log()
    );
    assert!(
        text(&nodes.stdout).contains("edge-node-1"),
        "{}",
        text(&nodes.stdout)
    );
    let nodes = run_kubectl(&kubeconfig, &["get", "node", "edge-node-1", "-o", "json"]).await;
    let node: Value = serde_json::from_slice(&nodes.stdout).expect("a node as JSON");
    assert_eq!(node["status"]["addresses"][0]["address"], "10.0.0.5");

    // The cluster saw the account's token, never the user's session token
    // (which it would not know: `user` would be None).
    let proxied: Vec<_> = c
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/v1/nodes"))
        .collect();
    assert!(proxied.len() >= 2, "{proxied:?}");
    assert!(
        proxied.iter().all(|r| r.user.as_deref() == Some(ACCOUNT)),
        "{proxied:?}"
    );

    // `refresh` recreates the account, revoking its tokens: the agent's
    // cached one too, so it requests a new one and kubectl goes on.
    let accepted = c
        .admin
        .post(
            "/api/v1/devices/edge-k8s/actions",
            json!({"action": "retrieve-kubeconfig", "input": {"refresh": true}}),
        )
        .await
        .expect("requested")
        .expect_status(202)
        .expect("accepted");
    let id = accepted["correlationId"].as_str().expect("an id");
    let done = c
        .admin
        .get(&format!("/api/v1/actions/{id}?waitSeconds=30"))
        .await
        .expect("waited")
        .expect_status(200)
        .expect("the action");
    assert_eq!(done["statusCode"], 200, "{done}");
    let nodes = run_kubectl(&kubeconfig, &["get", "nodes"]).await;
    assert!(
        nodes.status.success(),
        "after refresh: {}\n{}",
        text(&nodes.stderr),
        c.agent.log()
    );

    // A token tetherd does not know is kubectl's 401.
    let bogus = run_kubectl(&kubeconfig, &["--token", "not-a-session", "get", "nodes"]).await;
    assert!(!bogus.status.success());
    let stderr = text(&bogus.stderr);
    assert!(
        stderr.contains("Unauthorized") || stderr.contains("provide credentials"),
        "{stderr}"
    );

    // Each proxied request is a tunnel in the audit log, with its method
    // and path.
    let audit = c
        .admin
        .get("/api/v1/audit?limit=200")
        .await
        .expect("audit")
        .expect_status(200)
        .expect("listed");
    let kube: Vec<&Value> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|entry| entry["method"] == "TUNNEL" && entry["detail"]["kind"] == "kube")
        .collect();
    assert!(
        kube.iter().any(|entry| entry["status"] == 403),
        "the refused request is recorded: {kube:?}"
    );
    let carried = kube
        .iter()
        .find(|entry| {
            entry["path"] == "/api/v1/devices/edge-k8s/kubernetes"
                && entry["detail"]["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("GET /api/v1/nodes/edge-node-1?"))
        })
        .unwrap_or_else(|| panic!("{kube:?}"));
    assert_eq!(carried["actor"], "admin");
    assert!(
        carried["detail"]["bytesFromDevice"].as_u64() > Some(100),
        "{carried}"
    );
    drop(c.tetherd);
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_logs_follow_streams_lines_appended_after_it_started() {
    let c = Cluster::start("edge-logs").await;
    c.tether
        .run_ok(&[
            "devices",
            "actions",
            "enable",
            "edge-logs",
            "retrieve-kubeconfig",
        ])
        .await;
    let kubeconfig = c.kubeconfig("edge-logs").await;
    c.api.append_log("default", "web-1", "before kubectl");
    let cache = kubeconfig.with_extension("cache");
    let mut follower = kubectl(
        &kubeconfig,
        &[
            "--cache-dir",
            cache.to_str().expect("utf-8"),
            "logs",
            "-f",
            "web-1",
        ],
    )
    .spawn()
    .expect("kubectl logs -f starts");
    let mut lines = tokio::io::BufReader::new(follower.stdout.take().expect("stdout")).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("a line within 60 s")
            .expect("reads")
            .expect("not the end")
    };
    assert_eq!(next().await, "before kubectl");
    // Appended while kubectl runs: streamed, not fetched again.
    c.api.append_log("default", "web-1", "while following 1");
    assert_eq!(next().await, "while following 1");
    c.api.append_log("default", "web-1", "while following 2");
    assert_eq!(next().await, "while following 2");
    let log_requests = c
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/pods/web-1/log"))
        .count();
    assert_eq!(log_requests, 1, "one streamed request");
    follower.kill().await.expect("kubectl is killed");
    drop(c.tetherd);
}

#[tokio::test(flavor = "multi_thread")]
async fn retrieve_kubeconfig_through_tether_returns_the_proxy_form() {
    let c = Cluster::start("edge-rk").await;
    c.tether
        .run_ok(&[
            "devices",
            "actions",
            "enable",
            "edge-rk",
            "retrieve-kubeconfig",
        ])
        .await;
    let accepted = c
        .admin
        .post(
            "/api/v1/devices/edge-rk/actions",
            json!({"action": "retrieve-kubeconfig", "input": {"through": "tether", "format": "json"}}),
        )
        .await
        .expect("requested")
        .expect_status(202)
        .expect("accepted");
    let id = accepted["correlationId"].as_str().expect("an id");
    let done = c
        .admin
        .get(&format!("/api/v1/actions/{id}?waitSeconds=30"))
        .await
        .expect("waited")
        .expect_status(200)
        .expect("the action");
    assert_eq!(done["statusCode"], 200, "{done}\n{}", c.agent.log());
    assert_eq!(done["response"]["through"], "tether");
    let kubeconfig: Value =
        serde_json::from_str(done["response"]["kubeconfig"].as_str().expect("text")).expect("JSON");
    let server = kubeconfig["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("a server");
    assert!(
        server.starts_with("https://") && server.ends_with("/api/v1/devices/edge-rk/kubernetes"),
        "{server}"
    );
    assert_eq!(kubeconfig["users"][0]["user"]["exec"]["command"], "tether");
    assert!(
        !done["response"]["kubeconfig"]
            .as_str()
            .unwrap_or_default()
            .contains("fake-sa-")
    );
    // An option it does not know is refused by tetherd, naming it.
    let refused = c
        .admin
        .post(
            "/api/v1/devices/edge-rk/actions",
            json!({"action": "retrieve-kubeconfig", "input": {"through": "vpn"}}),
        )
        .await
        .expect("requested")
        .expect_status(400)
        .expect("refused");
    assert!(refused.to_string().contains("through"), "{refused}");
    drop(c.tetherd);
}
