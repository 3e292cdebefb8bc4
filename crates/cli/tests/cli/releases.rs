//! `tether releases` against a real tetherd (issue 19): a real agent
//! binary published (platform read from its ELF header), listed, shown,
//! rolled out as a deployment, and refusals that say what to do.

use serde_json::Value;

use super::{Tether, tetherd};

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_binary_is_published_listed_and_rolled_out_with_the_cli() {
    let tetherd = tetherd().await;
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    tether_testkit::sim_agent::DeviceCredentials::enroll_labelled(
        &admin,
        "gw-1",
        serde_json::json!({"site": "berlin"}),
    )
    .await
    .expect("enrolled");
    // A build stamped 1.4.0, as a release script makes it: tetherd
    // refuses a binary stamped with another version than the release's.
    let built = tether_testkit::binaries::binary("tether-agent").expect("built");
    let files = tempfile::tempdir().expect("temp dir");
    let stamped = files.path().join("tether-agent");
    tether_testkit::binaries::stamp_agent_binary(&built, &stamped, "1.4.0").expect("stamped");
    let agent = stamped.to_str().expect("utf-8");

    let published = tether
        .run_ok(&["releases", "publish", agent, "--version", "1.4.0"])
        .await;
    assert!(
        published.contains("release/1.4.0 published for linux-x86_64"),
        "{published}"
    );
    let again = tether
        .run_ok(&["releases", "publish", agent, "--version", "1.4.0"])
        .await;
    assert!(again.contains("already published"), "{again}");

    let script = files.path().join("agent.sh");
    std::fs::write(&script, "#!/bin/sh\n").expect("written");
    let refused = tether
        .run(&[
            "releases",
            "publish",
            script.to_str().expect("utf-8"),
            "--version",
            "1.5.0",
        ])
        .await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("is not an ELF executable")
            && refused.stderr.contains("--platform"),
        "{}",
        refused.stderr
    );
    let refused = tether
        .run(&[
            "releases",
            "publish",
            script.to_str().expect("utf-8"),
            "--version",
            "1.5.0",
            "--platform",
            "linux-x86_64",
        ])
        .await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("body"),
        "tetherd names it: {}",
        refused.stderr
    );

    let listed = tether.run_ok(&["releases", "list"]).await;
    assert!(
        listed.contains("1.4.0") && listed.contains("linux-x86_64"),
        "{listed}"
    );
    let shown: Value = serde_json::from_str(
        &tether
            .run_ok(&["releases", "get", "1.4.0", "-o", "json"])
            .await,
    )
    .expect("json");
    let size = std::fs::metadata(agent).expect("exists").len();
    assert_eq!(shown["binaries"]["linux-x86_64"]["size"], size);

    let unknown = tether
        .run(&["releases", "rollout", "9.9.9", "-l", "site=berlin"])
        .await;
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("agentRelease"),
        "{}",
        unknown.stderr
    );
    let rolled = tether
        .run_ok(&[
            "releases",
            "rollout",
            "1.4.0",
            "-l",
            "site=berlin",
            "--batch-size",
            "5",
        ])
        .await;
    assert!(
        rolled.contains("deployment/tether-agent at revision 1"),
        "{rolled}"
    );
    let deployment: Value = serde_json::from_str(
        &tether
            .run_ok(&["deployments", "get", "tether-agent", "-o", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(deployment["spec"]["agentRelease"], "1.4.0");
    assert_eq!(deployment["spec"]["target"]["selector"], "site=berlin");
    assert_eq!(deployment["spec"]["rollout"]["batchSize"], 5);

    // Rolling out again updates the same deployment.
    let again = tether
        .run_ok(&[
            "releases",
            "rollout",
            "1.4.0",
            "-l",
            "site=berlin",
            "--max-failure-percent",
            "5",
        ])
        .await;
    assert!(again.contains("at revision 2"), "{again}");
    assert_eq!(deployment["spec"]["allowAgentDowngrade"], Value::Null);
    // Going back to an older release is said explicitly; each rollout says
    // it again.
    tether
        .run_ok(&[
            "releases",
            "rollout",
            "1.4.0",
            "-l",
            "site=berlin",
            "--allow-downgrade",
        ])
        .await;
    let deployment: Value = serde_json::from_str(
        &tether
            .run_ok(&["deployments", "get", "tether-agent", "-o", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(deployment["spec"]["allowAgentDowngrade"], true);

    let in_use = tether.run(&["releases", "delete", "1.4.0"]).await;
    assert_ne!(in_use.code, 0);
    assert!(in_use.stderr.contains("tether-agent"), "{}", in_use.stderr);
}
