//! The fleet pages: approving a registration, a fleet-wide job started
//! and followed to its end, acknowledging an alert, the audit log's pages,
//! and what a viewer sees on them (no button it may not use, and the
//! forbidden state where tetherd refuses it the page's data).

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::browser::{Browser, PageRecord};
use tether_testkit::{Agent, ApiClient, Database, Tetherd};

use super::{
    SHOWN, assert_fits_a_phone, assert_stayed_home, choose, create_device, create_user, log_in_as,
    log_in_as_admin, texts, write_doc_screenshot,
};
use crate::provisioning::{Hardware, policy};

/// How long two real agents may take to answer a job.
const ANSWERED: Duration = Duration::from_secs(30);

/// How many controls `main` offers: buttons, forms, inputs.
async fn controls(browser: &Browser) -> anyhow::Result<Value> {
    browser
        .evaluate(
            "document.querySelectorAll('main button, main form, main input, main select').length",
        )
        .await
}

/// The record without the console's log of requests a test made tetherd
/// refuse on purpose (each path in `refused`): every other check stands.
fn without_refusals(mut record: PageRecord, refused: &[&str]) -> PageRecord {
    record
        .errors
        .retain(|error| !refused.iter().any(|path| error.contains(path)));
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_approves_a_pending_registration_and_a_viewer_only_sees_it()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    create_user(&admin, "olga", "operator").await?;
    create_user(&admin, "victor", "viewer").await?;
    let key = policy(
        &admin,
        "gateways",
        json!({"mode": "MANUAL", "identityFieldPaths": ["status.facts.hardwareSerial"],
               "template": {"metadata": {"labels": {"role": "gateway"}}}}),
    )
    .await?;
    let mut approvals = Vec::new();
    for serial in ["GW-7", "GW-8"] {
        let (status, waiting) = Hardware::new(serial)?
            .register(&admin.with_token(None), &key)
            .await?;
        assert_eq!(status, 202, "{waiting}");
        approvals.push(
            waiting["approval"]
                .as_str()
                .context("an approval id")?
                .to_owned(),
        );
    }
    let [approval, unwanted] = &approvals[..] else {
        unreachable!("two registrations")
    };

    // A viewer sees the request and what the device said, and no button.
    let browser = Browser::start().await?;
    log_in_as(&browser, &tetherd, "victor").await?;
    browser
        .click("nav[aria-label=Main] a[href='#/approvals']")
        .await?;
    browser.wait_for_selector("article.approval", SHOWN).await?;
    let cards = texts(&browser, "article.approval").await?;
    assert_eq!(cards.len(), 2, "{cards:?}");
    for shown in ["GW-7", "gateways", "pending", "Hostname", approval] {
        assert!(
            cards[0].contains(shown),
            "the card lacks {shown:?}: {cards:?}"
        );
    }
    assert_eq!(
        controls(&browser).await?,
        json!(0),
        "a viewer may not decide"
    );
    assert_stayed_home(&browser.record(), &tetherd);
    drop(browser);

    // An operator approves it, naming the device.
    let browser = Browser::start().await?;
    log_in_as(&browser, &tetherd, "olga").await?;
    browser
        .click("nav[aria-label=Main] a[href='#/approvals']")
        .await?;
    browser.wait_for_selector("article.approval", SHOWN).await?;
    write_doc_screenshot(&browser, "approvals").await?;
    assert_fits_a_phone(&browser, "the approvals page").await?;
    browser
        .type_text(&format!("#approve-name-{approval}"), "gw-berlin")
        .await?;
    browser
        .click(&format!(
            "article[data-approval='{approval}'] button.approve"
        ))
        .await?;
    browser
        .wait_for_text("#approval-notice", "Approved: it becomes gw-berlin", SHOWN)
        .await?;
    browser
        .wait_for_true(
            "the approved request to leave the list",
            &format!("document.querySelectorAll('article.approval').length === 1 && !document.querySelector(\"article[data-approval='{approval}']\")"),
            SHOWN,
        )
        .await?;
    // The other is denied, with a reason the device is told.
    browser
        .type_text(&format!("#deny-reason-{unwanted}"), "not one of ours")
        .await?;
    browser
        .click(&format!("article[data-approval='{unwanted}'] button.deny"))
        .await?;
    browser
        .wait_for_text("#approval-notice", "told “not one of ours”", SHOWN)
        .await?;
    browser
        .wait_for_text(
            "#approval-results .empty",
            "No registration is waiting for approval.",
            SHOWN,
        )
        .await?;
    let device = admin
        .get("/api/v1/devices/gw-berlin")
        .await?
        .expect_status(200)?;
    assert_eq!(
        device["labels"],
        json!({"role": "gateway"}),
        "made from the template"
    );
    for (id, state) in [(approval, "approved"), (unwanted, "denied")] {
        let decided = admin
            .get(&format!("/api/v1/approvals/{id}"))
            .await?
            .expect_status(200)?;
        assert_eq!(
            (&decided["state"], &decided["decidedBy"]),
            (&json!(state), &json!("olga"))
        );
    }
    // The decided request is under its state; the notice leads to the device.
    browser
        .click("nav.tabs a[href='#/approvals?state=approved']")
        .await?;
    browser
        .wait_for_text("article.approval", "approved", SHOWN)
        .await?;
    browser
        .navigate(&format!("{}/#/approvals", tetherd.api_url))
        .await?;
    browser
        .wait_for_selector("#approval-results .empty", SHOWN)
        .await?;
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}

/// Two real agents labelled `site=berlin`; a device that never connects
/// in `site=paris`.
async fn fleet_for_jobs(tetherd: &Tetherd, admin: &ApiClient) -> anyhow::Result<Vec<Agent>> {
    let mut agents = Vec::new();
    for name in ["edge-berlin-1", "edge-berlin-2"] {
        agents.push(Agent::enroll_online(tetherd, admin, name).await?);
        admin
            .patch(
                &format!("/api/v1/devices/{name}"),
                json!({"labels": {"site": "berlin"}}),
            )
            .await?
            .expect_status(200)?;
    }
    create_device(admin, "edge-paris-1", json!({"site": "paris"})).await?;
    Ok(agents)
}

/// Starts `action` on `selector` from the job form (the page is open).
async fn start_job(browser: &Browser, action: &str, selector: &str) -> anyhow::Result<()> {
    browser.wait_for_selector("#job-selector", SHOWN).await?;
    choose(browser, "#action-name", action).await?;
    browser
        .wait_for_text(
            "form.action button[type=submit]",
            &format!("Start {action}"),
            SHOWN,
        )
        .await?;
    browser.type_text("#job-selector", selector).await?;
    browser.click("form.action button[type=submit]").await?;
    Ok(())
}

/// A fleet-wide `get-node-ip` started from the browser on two real agents
/// selected by label: the job page follows it to "2 succeeded" without a
/// reload; another is cancelled; a refused selector is shown; a viewer
/// sees the jobs with no button and is told it may not start one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_starts_a_fleet_wide_action_and_watches_it_finish() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let _agents = fleet_for_jobs(&tetherd, &admin).await?;
    create_user(&admin, "olga", "operator").await?;
    create_user(&admin, "victor", "viewer").await?;

    let browser = Browser::start().await?;
    log_in_as(&browser, &tetherd, "olga").await?;
    browser
        .click("nav[aria-label=Main] a[href='#/jobs']")
        .await?;
    browser
        .wait_for_text("#job-results .empty", "No job yet.", SHOWN)
        .await?;
    browser.click("#start-job").await?;
    browser.wait_for_selector("#job-selector", SHOWN).await?;
    // One device started a second: the page is shown while it runs.
    browser.type_text("#job-rate", "1").await?;
    start_job(&browser, "get-node-ip", "site=berlin").await?;
    browser.wait_for_selector("#job-counts", SHOWN).await?;
    let job_page = browser.evaluate("location.hash").await?;
    assert!(
        job_page
            .as_str()
            .is_some_and(|hash| hash.starts_with("#/jobs/") && !hash.ends_with("/new")),
        "{job_page}"
    );
    // Gone if the page were loaded again.
    browser.evaluate("window.stillThisPage = true").await?;
    browser
        .wait_for_text("#job-counts", "2 succeeded", ANSWERED)
        .await?;
    browser
        .wait_for_text("#job-state", "completed", SHOWN)
        .await?;
    assert_eq!(
        browser
            .evaluate("[window.stillThisPage === true, location.hash]")
            .await?,
        json!([true, job_page]),
        "the counts came without a reload or navigation"
    );
    assert_eq!(
        texts(&browser, "#job-words").await?,
        ["2 of 2 ended: 2 succeeded"]
    );
    // Released a second apart, the job ran past the page's first load:
    // the page asked for its counts again, by itself.
    let job_url = format!(
        "{}/api/v1{}",
        tetherd.api_url,
        job_page
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('#')
    );
    let reads = browser
        .record()
        .requests
        .iter()
        .filter(|url| **url == job_url)
        .count();
    assert!(reads >= 2, "the job was read {reads} times");
    assert_eq!(
        texts(&browser, "#job-actions tbody th").await?,
        ["edge-berlin-1", "edge-berlin-2"]
    );
    let answers = texts(&browser, "#job-actions code.answer").await?;
    assert!(
        answers.len() == 2 && answers.iter().all(|answer| answer.contains("addresses")),
        "{answers:?}"
    );
    assert_eq!(
        browser
            .evaluate("document.querySelectorAll('svg.counts-bar rect.succeeded').length")
            .await?,
        json!(1)
    );
    assert_eq!(
        browser
            .evaluate("document.getElementById('cancel-job').hidden")
            .await?,
        json!(true),
        "a finished job cannot be cancelled"
    );
    write_doc_screenshot(&browser, "job").await?;
    assert_fits_a_phone(&browser, "the job page").await?;
    browser
        .click("#job-actions a[href='#/devices/edge-berlin-2']")
        .await?;
    browser
        .wait_for_text("main h1", "edge-berlin-2", SHOWN)
        .await?;

    // A job on a device that never connects waits until cancelled.
    browser
        .navigate(&format!("{}/#/jobs/new", tetherd.api_url))
        .await?;
    start_job(&browser, "get-node-ip", "site=paris").await?;
    browser
        .wait_for_text("#job-words", "0 of 1 ended: 1 pending", SHOWN)
        .await?;
    browser
        .wait_for_text("#job-state", "running", SHOWN)
        .await?;
    browser.click("#cancel-job").await?;
    browser
        .wait_for_text("#job-state", "cancelled", SHOWN)
        .await?;
    browser
        .wait_for_text("#job-counts", "1 cancelled", SHOWN)
        .await?;
    let jobs = admin.get("/api/v1/jobs").await?.expect_status(200)?;
    let states: Vec<&Value> = jobs["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|job| &job["state"])
        .collect();
    assert_eq!(states, [&json!("cancelled"), &json!("completed")]);

    browser
        .click("nav[aria-label=Main] a[href='#/jobs']")
        .await?;
    browser.wait_for_selector("table.jobs", SHOWN).await?;
    let rows = texts(&browser, "table.jobs tbody tr").await?;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].contains("site=paris") && rows[0].contains("cancelled"),
        "{rows:?}"
    );
    assert!(
        rows[1].contains("site=berlin") && rows[1].contains("2 of 2 ended: 2 succeeded"),
        "{rows:?}"
    );
    write_doc_screenshot(&browser, "jobs").await?;
    assert_stayed_home(&browser.record(), &tetherd);

    // A selector matching nothing: tetherd's refusal, and no job.
    browser.click("#start-job").await?;
    start_job(&browser, "get-node-ip", "site=nowhere").await?;
    browser
        .wait_for_text("#action-error", "site=nowhere", SHOWN)
        .await?;
    let jobs = admin.get("/api/v1/jobs").await?.expect_status(200)?;
    assert_eq!(jobs["items"].as_array().map(Vec::len), Some(2));
    assert_stayed_home(
        &without_refusals(browser.record(), &["/api/v1/jobs"]),
        &tetherd,
    );
    drop(browser);

    // A viewer: the jobs, a running one's progress, and no button.
    let running = admin
        .post(
            "/api/v1/jobs",
            json!({"labelSelector": "site=paris", "action": "get-node-ip"}),
        )
        .await?
        .expect_status(201)?;
    let running = running["id"].as_str().context("a job id")?.to_owned();
    let browser = Browser::start().await?;
    log_in_as(&browser, &tetherd, "victor").await?;
    browser
        .click("nav[aria-label=Main] a[href='#/jobs']")
        .await?;
    browser.wait_for_selector("table.jobs", SHOWN).await?;
    assert_eq!(texts(&browser, "table.jobs tbody tr").await?.len(), 3);
    assert_eq!(controls(&browser).await?, json!(0));
    assert_eq!(
        browser
            .evaluate("document.getElementById('start-job')")
            .await?,
        Value::Null
    );
    browser
        .click(&format!("table.jobs a[href='#/jobs/{running}']"))
        .await?;
    browser
        .wait_for_text("#job-words", "1 pending", SHOWN)
        .await?;
    assert_eq!(
        controls(&browser).await?,
        json!(0),
        "a viewer may not cancel"
    );
    browser
        .navigate(&format!("{}/#/jobs/new", tetherd.api_url))
        .await?;
    browser
        .wait_for_text(
            ".forbidden",
            "Forbidden: your role viewer may not start jobs.",
            SHOWN,
        )
        .await?;
    assert_eq!(controls(&browser).await?, json!(0));
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}

/// An alert rule that fires within the test (evaluated every second over
/// an agent's memory metric), as in the basics' first test.
async fn firing_alert(tetherd_config: &std::path::Path) -> anyhow::Result<(Tetherd, Agent)> {
    std::fs::write(
        tetherd_config,
        "[alert_rules]\nevaluation_interval_seconds = 1\n",
    )?;
    let config = tetherd_config.to_string_lossy().into_owned();
    let tetherd = Tetherd::start_with(Database::Sqlite, &["--config", &config]).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_online(&tetherd, &admin, "edge-berlin-1").await?;
    admin
        .patch(
            "/api/v1/devices/edge-berlin-1",
            json!({
                "labels": {"site": "berlin"},
                "spec": {"metricsConfig": {"intervalSeconds": 1}}
            }),
        )
        .await?
        .expect_status(200)?;
    crate::support::add_memory_alert_rule(&admin, "site=berlin").await?;
    crate::support::wait_firing(&admin, 1).await?;
    Ok((tetherd, agent))
}

/// A firing alert: a viewer sees it (severity, device, relative time) with
/// no button and is refused the deliveries; an operator acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_acknowledges_a_firing_alert_and_a_viewer_is_refused_its_deliveries()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (tetherd, _agent) = firing_alert(&dir.path().join("tetherd.toml")).await?;
    let admin = tetherd.admin().await?;
    create_user(&admin, "olga", "operator").await?;
    create_user(&admin, "victor", "viewer").await?;

    let browser = Browser::start().await?;
    log_in_as(&browser, &tetherd, "victor").await?;
    // The overview's count of firing alerts leads to them.
    browser
        .wait_for_selector(".cards a[href='#/alerts?state=firing']", SHOWN)
        .await?;
    browser
        .click(".cards a[href='#/alerts?state=firing']")
        .await?;
    browser.wait_for_selector("table.alerts", SHOWN).await?;
    assert_eq!(
        texts(&browser, "nav.tabs a[aria-current=page]").await?,
        ["Firing"]
    );
    let rows = texts(&browser, "table.alerts tbody tr").await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    for shown in [
        "warning",
        "memory in use on edge-berlin-1",
        "firing",
        "memory-in-use",
    ] {
        assert!(rows[0].contains(shown), "the row lacks {shown:?}: {rows:?}");
    }
    let started = browser
        .evaluate("(() => { const time = document.querySelector('table.alerts time'); return [time.textContent, time.title]; })()")
        .await?;
    assert!(
        started[0]
            .as_str()
            .is_some_and(|text| text == "now" || text.ends_with("ago")),
        "relative: {started}"
    );
    assert!(
        started[1]
            .as_str()
            .is_some_and(|title| title.contains("20")),
        "absolute on hover: {started}"
    );
    assert_eq!(
        browser
            .evaluate("document.querySelectorAll('table.alerts a[href=\"#/devices/edge-berlin-1\"]').length")
            .await?,
        json!(1)
    );
    assert_eq!(
        browser
            .evaluate("document.querySelectorAll('main button, main a[href=\"#/alerts/deliveries\"]').length")
            .await?,
        json!(0),
        "a viewer may not acknowledge, nor read deliveries"
    );
    // Deliveries are an operator's: the forbidden state, not an error dump.
    browser
        .navigate(&format!("{}/#/alerts/deliveries", tetherd.api_url))
        .await?;
    let refused = browser
        .wait_for_text(
            ".forbidden",
            "Forbidden: your role viewer may not read alert deliveries.",
            SHOWN,
        )
        .await?;
    assert!(
        refused.contains("operator or admin role needed"),
        "tetherd's words: {refused}"
    );
    // The audit log is every role's to read.
    browser
        .click("nav[aria-label=Main] a[href='#/audit']")
        .await?;
    browser.wait_for_selector("table.audit", SHOWN).await?;
    let audit = texts(&browser, "table.audit tbody tr").await?;
    assert!(
        audit
            .iter()
            .any(|row| row.contains("GET /api/v1/alerts/deliveries") && row.contains("403")),
        "the refusal is audited: {audit:?}"
    );
    assert_stayed_home(
        &without_refusals(browser.record(), &["/api/v1/alerts/deliveries"]),
        &tetherd,
    );
    drop(browser);

    let browser = Browser::start().await?;
    log_in_as(&browser, &tetherd, "olga").await?;
    browser
        .click("nav[aria-label=Main] a[href='#/alerts']")
        .await?;
    browser
        .wait_for_selector("table.alerts button.acknowledge", SHOWN)
        .await?;
    write_doc_screenshot(&browser, "alerts").await?;
    browser.click("table.alerts button.acknowledge").await?;
    browser
        .wait_for_text("table.alerts tbody tr", "acknowledged", SHOWN)
        .await?;
    let row = texts(&browser, "table.alerts tbody tr").await?;
    assert!(row[0].contains("by olga"), "{row:?}");
    assert_eq!(
        browser
            .evaluate("document.querySelectorAll('table.alerts button').length")
            .await?,
        json!(0),
        "an acknowledged alert has no button"
    );
    let alerts = admin
        .get("/api/v1/alerts?state=all")
        .await?
        .expect_status(200)?;
    assert_eq!(
        (
            &alerts["items"][0]["state"],
            &alerts["items"][0]["acknowledgedBy"]
        ),
        (&json!("acknowledged"), &json!("olga"))
    );
    // Nothing firing now; the deliveries open for an operator.
    browser
        .click("nav.tabs a[href='#/alerts?state=firing']")
        .await?;
    browser
        .wait_for_text("#alert-results .empty", "No alert is firing.", SHOWN)
        .await?;
    browser.click("a[href='#/alerts/deliveries']").await?;
    browser
        .wait_for_text(
            "#delivery-results .empty",
            "No alert was sent to a receiver yet.",
            SHOWN,
        )
        .await?;
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_pages_with_the_apis_continue_token() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    for index in 0..55 {
        create_device(&admin, &format!("dev-{index:03}"), json!({})).await?;
    }
    // A refusal, recorded with its reason.
    let viewer = tetherd.user_with_role("viewer").await?;
    viewer.get("/api/v1/users").await?.expect_status(403)?;
    let browser = Browser::start().await?;
    log_in_as_admin(&browser, &tetherd).await?;
    let recorded = admin
        .get("/api/v1/audit?limit=1000")
        .await?
        .expect_status(200)?;
    let recorded = recorded["items"].as_array().context("items")?.len();
    assert!(recorded > 55, "{recorded}");

    browser
        .click("nav[aria-label=Main] a[href='#/audit']")
        .await?;
    browser.wait_for_selector("table.audit", SHOWN).await?;
    let first = texts(&browser, "table.audit tbody tr").await?;
    assert_eq!(first.len(), 50);
    assert!(
        first[0].contains("admin") && first[0].contains("POST /api/v1/login"),
        "newest first: the console's own login {first:?}"
    );
    assert!(
        first.iter().any(|row| row.contains("viewer-user")
            && row.contains("GET /api/v1/users403")
            && row.contains("admin role needed")),
        "the refusal and its reason: {first:?}"
    );
    assert!(
        first
            .iter()
            .any(|row| row.contains("POST /api/v1/devices201")),
        "{first:?}"
    );
    write_doc_screenshot(&browser, "audit").await?;
    browser.click("a[rel=next]").await?;
    browser
        .wait_for_text("table.audit caption", "Page 2", SHOWN)
        .await?;
    let second = texts(&browser, "table.audit tbody tr").await?;
    assert_eq!(second.len(), recorded - 50, "{second:?}");
    assert_eq!(texts(&browser, ".pager").await?, ["First pageLast page"]);
    browser.click(".pager a").await?;
    browser
        .wait_for_text("table.audit caption", "Page 1", SHOWN)
        .await?;
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}
