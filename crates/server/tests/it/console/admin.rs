//! Deployments and their rollouts, provisioning policies and their keys,
//! users and API keys, in the browser.

use anyhow::Context;
use serde_json::json;
use tether_testkit::browser::Browser;
use tether_testkit::sim_agent::{self, Responder, SimAgent};
use tether_testkit::{Database, Tetherd};

use super::{
    SHOWN, USER_PASSWORD, assert_stayed_home, create_user, log_in_as, log_in_as_admin, texts,
    write_doc_screenshot,
};

/// Four simulated devices; the revision fails on `d3`, so batches of two
/// with at most 10 % failures pause at the second batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_rollout_shows_where_it_failed_and_only_an_operator_may_resume_it()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let names: Vec<String> = (0..4).map(|i| format!("d{i}")).collect();
    let credentials = sim_agent::enroll_many(&admin, names, &json!({"fleet": "sim"}), 4).await?;
    let reporter = crate::desired::reporter(|device, _| device.as_str() == "d3");
    let mut agents = Vec::new();
    for c in &credentials {
        agents.push(SimAgent::connect_reporting(c, Responder::Silent, reporter.clone()).await?);
    }
    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "web", "spec": {
                "target": {"selector": "fleet=sim"},
                "processes": {"web": {"execCmd": "/usr/bin/web", "execArgs": ["v1"]}},
                "rollout": {"batchSize": 2, "maxFailurePercent": 10}}}),
        )
        .await?
        .expect_status(201)?;
    tether_testkit::wait_until("the rollout to pause", SHOWN * 2, || async {
        let status = admin
            .get("/api/v1/deployments/web/status")
            .await?
            .expect_status(200)?;
        Ok((status["phase"] == "paused").then_some(()))
    })
    .await?;

    create_user(&admin, "olga", "operator").await?;
    let browser = Browser::start().await?;
    log_in_as(&browser, &tetherd, "olga").await?;
    // The overview names the rollout that has not finished.
    browser
        .wait_for_text("ul.rollouts li", "web paused", SHOWN)
        .await?;
    browser
        .navigate(&format!("{}/#/deployments", tetherd.api_url))
        .await?;
    browser
        .wait_for_text("tr[data-deployment=web]", "paused", SHOWN)
        .await?;
    browser.click("tr[data-deployment=web] a").await?;
    browser
        .wait_for_text(".rollout-counts", "3 of 4 ready", SHOWN)
        .await?;
    assert_eq!(
        texts(&browser, "table.rollout tr[data-device=d3] td.state").await?,
        ["failed, rolled back"]
    );
    browser.wait_for_selector("button.resume", SHOWN).await?;
    write_doc_screenshot(&browser, "deployment").await?;
    browser.click("button.resume").await?;
    // Resumed, it goes on from the batch that failed (which fails again on
    // d3 here): the audit log shows who resumed it.
    tether_testkit::wait_until("olga's resume in the audit log", SHOWN, || async {
        let audit = admin.get("/api/v1/audit").await?.expect_status(200)?;
        let resumed = audit["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|entry| {
                entry["actor"] == "olga"
                    && entry["path"] == "/api/v1/deployments/web/resume"
                    && entry["status"] == 200
            });
        Ok(resumed.then_some(()))
    })
    .await
    .context("the resume button resumed the rollout")?;
    assert_stayed_home(&browser.record(), &tetherd);

    // A viewer sees the same rollout and no button.
    create_user(&admin, "victor", "viewer").await?;
    let viewer = Browser::start().await?;
    log_in_as(&viewer, &tetherd, "victor").await?;
    viewer
        .navigate(&format!("{}/#/deployments/web", tetherd.api_url))
        .await?;
    viewer.wait_for_selector(".rollout-counts", SHOWN).await?;
    assert!(texts(&viewer, "button.resume").await?.is_empty());
    assert_stayed_home(&viewer.record(), &tetherd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_makes_a_user_and_an_api_key_shown_once_and_revokes_it() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    admin
        .post(
            "/api/v1/service-accounts",
            json!({"name": "ci", "role": "operator"}),
        )
        .await?
        .expect_status(201)?;

    let browser = Browser::start().await?;
    log_in_as_admin(&browser, &tetherd).await?;
    browser.click("nav a[href='#/access']").await?;
    browser
        .wait_for_selector("div[data-account=ci] button", SHOWN)
        .await?;
    browser.click("div[data-account=ci] button").await?;
    let key = browser
        .wait_for_text("#key-created .secret-value", "", SHOWN)
        .await?;
    let as_ci = admin.with_token(Some(key.clone()));
    as_ci.get("/api/v1/devices").await?.expect_status(200)?;
    write_doc_screenshot(&browser, "access").await?;
    browser
        .click("div[data-account=ci] tr[data-key] button")
        .await?;
    browser
        .wait_for_text("div[data-account=ci] tr[data-key]", "revoked", SHOWN)
        .await?;
    assert_eq!(as_ci.get("/api/v1/devices").await?.status.as_u16(), 401);

    // A user with a password of the admin's choosing, who logs in as a viewer.
    browser.type_text("#new-username", "vera").await?;
    browser.type_text("#new-password", USER_PASSWORD).await?;
    browser.click("#new-username ~ button[type=submit]").await?;
    browser
        .wait_for_text("tr[data-user=vera]", "vera", SHOWN)
        .await?;
    let viewer = Browser::start().await?;
    log_in_as(&viewer, &tetherd, "vera").await?;
    assert!(
        texts(&viewer, "nav a[href='#/access']").await?.is_empty(),
        "a viewer is offered no access page"
    );
    viewer
        .navigate(&format!("{}/#/access", tetherd.api_url))
        .await?;
    viewer
        .wait_for_selector("main .error, main .forbidden", SHOWN)
        .await?;
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_makes_a_provisioning_key_and_a_viewer_only_reads_the_policy() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    admin
        .post(
            "/api/v1/provisioning-policies",
            json!({"name": "line-1", "spec": {"mode": "MANUAL", "identityFieldPaths": [],
                "template": {"metadata": {"labels": {"site": "berlin"}}}}}),
        )
        .await?
        .expect_status(201)?;

    let browser = Browser::start().await?;
    log_in_as_admin(&browser, &tetherd).await?;
    browser
        .navigate(&format!("{}/#/provisioning", tetherd.api_url))
        .await?;
    browser
        .wait_for_text("section[data-policy=line-1]", "site=berlin", SHOWN)
        .await?;
    browser
        .click("section[data-policy=line-1] > button")
        .await?;
    let shown = browser
        .wait_for_text("#provisioning-key-created .secret-value", "secret", SHOWN)
        .await?;
    let key: serde_json::Value = serde_json::from_str(&shown).context("the key file is JSON")?;
    assert_eq!(key["policy"], "line-1");
    let listed = admin
        .get("/api/v1/provisioning-policies/line-1/keys")
        .await?
        .expect_status(200)?;
    assert_eq!(listed[0]["keyId"], key["keyId"]);
    browser
        .wait_for_selector(
            &format!(
                "tr[data-key='{}']",
                key["keyId"].as_str().unwrap_or_default()
            ),
            SHOWN,
        )
        .await?;
    write_doc_screenshot(&browser, "provisioning").await?;
    assert_stayed_home(&browser.record(), &tetherd);

    create_user(&admin, "victor", "viewer").await?;
    let viewer = Browser::start().await?;
    log_in_as(&viewer, &tetherd, "victor").await?;
    viewer
        .navigate(&format!("{}/#/provisioning", tetherd.api_url))
        .await?;
    viewer
        .wait_for_text("section[data-policy=line-1]", "site=berlin", SHOWN)
        .await?;
    assert!(
        texts(&viewer, "section[data-policy=line-1] button")
            .await?
            .is_empty()
    );
    assert_stayed_home(&viewer.record(), &tetherd);
    Ok(())
}
