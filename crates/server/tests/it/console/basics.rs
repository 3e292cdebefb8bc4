//! Logging in, the overview, the device list and page, the action form,
//! the states a session ends in, and the Content-Security-Policy.

use anyhow::Context;
use serde_json::{Value, json};
use tether_server::console::CONTENT_SECURITY_POLICY_VALUE;
use tether_testkit::browser::Browser;
use tether_testkit::{Agent, Database, Tetherd};

use super::{
    SHOWN, USER_PASSWORD, assert_fits_a_phone, assert_stayed_home, choose, create_device,
    create_user, log_in, log_in_as_admin, texts, write_doc_screenshot,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_finds_a_device_by_label_and_opens_it() -> anyhow::Result<()> {
    // Alert rules evaluated every second, so one fires within the test.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tetherd.toml");
    std::fs::write(&config, "[alert_rules]\nevaluation_interval_seconds = 1\n")?;
    let config = config.to_string_lossy().into_owned();
    let tetherd = Tetherd::start_with(Database::Sqlite, &["--config", &config]).await?;
    let admin = tetherd.admin().await?;
    let _agent = Agent::enroll_online(&tetherd, &admin, "edge-berlin-1").await?;
    admin
        .patch(
            "/api/v1/devices/edge-berlin-1",
            json!({
                "labels": {"site": "berlin", "role": "gateway"},
                "spec": {"metricsConfig": {"intervalSeconds": 1}}
            }),
        )
        .await?
        .expect_status(200)?;
    crate::support::add_memory_alert_rule(&admin, "site=berlin").await?;
    crate::support::wait_firing(&admin, 1).await?;
    // The agent's report (its facts) is what the device page shows.
    tether_testkit::wait_until("edge-berlin-1 to report its facts", SHOWN, || async {
        let device = admin
            .get("/api/v1/devices/edge-berlin-1")
            .await?
            .expect_status(200)?;
        Ok(device["status"]["facts"]["hostname"]
            .as_str()
            .map(str::to_owned))
    })
    .await?;
    create_device(
        &admin,
        "edge-berlin-2",
        json!({"site": "berlin", "role": "sensor"}),
    )
    .await?;
    for index in 1..=3 {
        create_device(
            &admin,
            &format!("edge-paris-{index}"),
            json!({"site": "paris"}),
        )
        .await?;
    }
    let browser = Browser::start().await?;

    log_in_as_admin(&browser, &tetherd).await?;
    let cards = browser.wait_for_text(".cards", "devices", SHOWN).await?;
    assert!(
        cards.contains("5devices") && cards.contains("1online") && cards.contains("4offline"),
        "{cards}"
    );
    assert!(cards.contains("1alert firing"), "{cards}");
    let firing = texts(&browser, "ul.alerts li").await?;
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert!(
        firing[0].starts_with("warning edge-berlin-1: memory in use on edge-berlin-1 since"),
        "{firing:?}"
    );
    assert_eq!(texts(&browser, ".who .role").await?, ["admin"]);

    // Grouped by a label the fleet has.
    browser
        .evaluate("(() => { const select = document.querySelector('#group-by'); select.value = 'site'; select.dispatchEvent(new Event('change')); })()")
        .await?;
    browser.wait_for_selector("table.groups", SHOWN).await?;
    let groups = texts(&browser, "table.groups tbody tr").await?;
    assert_eq!(groups, ["berlin112", "paris033"], "{groups:?}");
    write_doc_screenshot(&browser, "overview").await?;

    // The device list, filtered by label from the keyboard.
    browser
        .click("nav[aria-label=Main] a[href='#/devices']")
        .await?;
    browser.wait_for_selector("table.devices", SHOWN).await?;
    assert_eq!(texts(&browser, "table.devices tbody tr").await?.len(), 5);
    browser.type_text("#selector", "site=berlin").await?;
    browser.press("Enter").await?;
    browser
        .wait_for_text("table.devices caption", "matching site=berlin", SHOWN)
        .await?;
    let names = texts(&browser, "table.devices tbody th").await?;
    assert_eq!(names, ["edge-berlin-1", "edge-berlin-2"]);
    let presence = texts(&browser, "table.devices tbody td .badge").await?;
    assert_eq!(presence, ["online", "offline"]);
    browser.type_text("#selector", "").await?;
    browser.press("Enter").await?;
    browser
        .wait_for_text("table.devices caption", "5 devices", SHOWN)
        .await?;
    write_doc_screenshot(&browser, "devices").await?;
    browser.type_text("#selector", "site=berlin").await?;
    browser.press("Enter").await?;
    browser
        .wait_for_text("table.devices caption", "matching site=berlin", SHOWN)
        .await?;

    // Its page: presence, labels, status and facts, times absolute on hover.
    browser.click("a[href='#/devices/edge-berlin-1']").await?;
    browser
        .wait_for_text("main h1", "edge-berlin-1", SHOWN)
        .await?;
    browser.wait_for_selector("#facts-title", SHOWN).await?;
    let labels = texts(&browser, "#device-labels a").await?;
    assert_eq!(labels, ["role=gateway", "site=berlin"]);
    let main = browser
        .evaluate("document.querySelector('main').textContent")
        .await?;
    let main = main.as_str().unwrap_or_default();
    for shown in ["online", "Spec applied", "Hostname", "Kernel", "Memory"] {
        assert!(
            main.contains(shown),
            "the device page lacks {shown:?}: {main}"
        );
    }
    let seen = browser
        .evaluate("(() => { const time = document.querySelector('.facts time[datetime]'); return [time.textContent, time.title, time.dateTime]; })()")
        .await?;
    assert!(
        seen[1].as_str().is_some_and(|title| title.contains("20")),
        "absolute time on hover: {seen}"
    );
    assert!(
        seen[2].as_str().is_some_and(|iso| iso.contains('T')),
        "{seen}"
    );
    write_doc_screenshot(&browser, "device").await?;

    // A phone's width: nothing wider than the screen.
    assert_fits_a_phone(&browser, "the device page").await?;

    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_list_pages_with_the_apis_continue_token_and_is_keyboard_navigable()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    for index in 0..55 {
        create_device(&admin, &format!("dev-{index:03}"), json!({"fleet": "big"})).await?;
    }
    let browser = Browser::start().await?;
    log_in_as_admin(&browser, &tetherd).await?;

    // From the top of a freshly loaded page, Tab reaches the skip link,
    // then the sections.
    browser.navigate(&format!("{}/#/", tetherd.api_url)).await?;
    browser.wait_for_text("main h1", "Overview", SHOWN).await?;
    browser.press("Tab").await?;
    let focused = browser
        .evaluate("document.activeElement.textContent")
        .await?;
    assert_eq!(focused, json!("Skip to content"));
    let mut reached = Vec::new();
    for _ in 0..3 {
        browser.press("Tab").await?;
        reached.push(
            browser
                .evaluate("document.activeElement.textContent")
                .await?,
        );
    }
    assert_eq!(
        reached,
        [json!("tether"), json!("Overview"), json!("Devices")]
    );
    browser.press("Enter").await?;
    browser.wait_for_selector("table.devices", SHOWN).await?;

    let first = texts(&browser, "table.devices tbody th").await?;
    assert_eq!(first.len(), 50);
    assert_eq!(first.first().map(String::as_str), Some("dev-000"));
    browser.click("a[rel=next]").await?;
    browser
        .wait_for_text("table.devices caption", "Page 2", SHOWN)
        .await?;
    let second = texts(&browser, "table.devices tbody th").await?;
    assert_eq!(
        second,
        (50..55)
            .map(|index| format!("dev-{index:03}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(texts(&browser, ".pager").await?, ["First pageLast page"]);
    // At a phone's width the table scrolls within its box, not the page.
    assert_fits_a_phone(&browser, "the device list").await?;

    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_shown_and_no_session_starts() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let browser = Browser::start().await?;
    log_in(&browser, &tetherd, "admin", "not the password").await?;
    let error = browser
        .wait_for_text("#login-error", "wrong username or password", SHOWN)
        .await?;
    assert_eq!(error, "wrong username or password");
    assert_eq!(
        browser
            .evaluate("sessionStorage.getItem('tether.token')")
            .await?,
        Value::Null
    );
    assert_eq!(
        texts(&browser, "main h1").await?,
        ["tether"],
        "still the login page"
    );
    // The 401 of the login is the one error the browser logs.
    let record = browser.record();
    let unexpected: Vec<&String> = record
        .errors
        .iter()
        .filter(|error| !error.contains("/api/v1/login"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_or_invalid_session_returns_to_the_login_page() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let browser = Browser::start().await?;
    log_in_as_admin(&browser, &tetherd).await?;

    // The session ends behind the page's back (revoked, expired).
    let token = browser
        .evaluate("sessionStorage.getItem('tether.token')")
        .await?;
    let session = tetherd
        .anonymous()?
        .with_token(token.as_str().map(str::to_owned));
    session
        .post("/api/v1/logout", json!({}))
        .await?
        .expect_status(204)?;
    browser
        .click("nav[aria-label=Main] a[href='#/devices']")
        .await?;
    browser
        .wait_for_text(".login .notice", "Your session expired", SHOWN)
        .await?;
    assert_eq!(
        browser
            .evaluate("sessionStorage.getItem('tether.token')")
            .await?,
        Value::Null
    );
    assert_eq!(
        browser.evaluate("location.hash").await?,
        json!("#/login?next=%2Fdevices")
    );

    // Logging in again returns to the page the session ended on.
    browser.type_text("#username", "admin").await?;
    browser
        .type_text("#password", tetherd.admin_password())
        .await?;
    browser.press("Enter").await?;
    browser
        .wait_for_selector("table.devices, .results .empty", SHOWN)
        .await?;

    // A token tetherd never issued, found when the page loads.
    browser
        .evaluate("sessionStorage.setItem('tether.token', 'not-a-token')")
        .await?;
    browser.call("Page.reload", json!({})).await?;
    browser
        .wait_for_text(".login .notice", "Your session expired", SHOWN)
        .await?;
    Ok(())
}

/// A fragment naming `..` as a device would have the page call
/// `/api/v1/devices/../…`, which the browser resolves to another route:
/// such names (and broken escapes) are no names, and the page says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dot_or_broken_name_in_the_address_is_not_found_and_calls_nothing() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let browser = Browser::start().await?;
    log_in_as_admin(&browser, &tetherd).await?;
    for fragment in [
        "#/devices/..",
        "#/devices/%2E%2E",
        "#/jobs/.",
        "#/deployments/%E0%A4%A",
    ] {
        browser
            .navigate(&format!("{}/{fragment}", tetherd.api_url))
            .await?;
        browser.wait_for_text("main h1", "Not found", SHOWN).await?;
    }
    let record = browser.record();
    let bent: Vec<&String> = record
        .requests
        .iter()
        .filter(|url| {
            url.contains("/api/v1/metrics")
                || url.contains("/api/v1/devices/..")
                || url.contains("/api/v1/jobs/.")
        })
        .collect();
    assert!(
        bent.is_empty(),
        "the API was called on a bent path: {bent:?}"
    );
    assert_stayed_home(&record, &tetherd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_says_when_tetherd_cannot_be_reached() -> anyhow::Result<()> {
    let mut tetherd = Tetherd::start(Database::Sqlite).await?;
    let browser = Browser::start().await?;
    log_in_as_admin(&browser, &tetherd).await?;
    tetherd.stop().await?;
    browser
        .click("nav[aria-label=Main] a[href='#/devices']")
        .await?;
    browser
        .wait_for_text("main h1", "tetherd cannot be reached", SHOWN)
        .await?;
    tetherd.start_again().await?;
    browser.click("main button").await?;
    browser.wait_for_text("main h1", "Devices", SHOWN).await?;
    Ok(())
}

/// Labels on the device page: an operator sets and removes them, and sees
/// tetherd's refusal of a bad key; a viewer sees the labels and no control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_edits_labels_and_a_viewer_sees_no_controls() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    create_device(
        &admin,
        "edge-1",
        json!({"site": "berlin", "role": "gateway"}),
    )
    .await?;
    create_user(&admin, "olga", "operator").await?;
    create_user(&admin, "victor", "viewer").await?;
    let device_page = format!("{}/#/devices/edge-1", tetherd.api_url);

    let browser = Browser::start().await?;
    log_in(&browser, &tetherd, "victor", USER_PASSWORD).await?;
    browser.wait_for_text("main h1", "Overview", SHOWN).await?;
    assert_eq!(texts(&browser, ".who .role").await?, ["viewer"]);
    browser.navigate(&device_page).await?;
    browser.wait_for_selector("#device-labels", SHOWN).await?;
    assert_eq!(
        texts(&browser, "#device-labels a").await?,
        ["role=gateway", "site=berlin"]
    );
    let controls = browser
        // Pausing the live log changes nothing on the device: a viewer has it.
        .evaluate(
            "document.querySelectorAll('main button:not(#log-pause), main form, main input').length",
        )
        .await?;
    assert_eq!(
        controls,
        json!(0),
        "a viewer is offered no control on the device page"
    );
    assert_stayed_home(&browser.record(), &tetherd);
    drop(browser);

    let browser = Browser::start().await?;
    log_in(&browser, &tetherd, "olga", USER_PASSWORD).await?;
    browser.wait_for_text("main h1", "Overview", SHOWN).await?;
    browser.navigate(&device_page).await?;
    browser.wait_for_selector("#label-key", SHOWN).await?;
    browser.type_text("#label-key", "zone").await?;
    browser.type_text("#label-value", "north").await?;
    browser.press("Enter").await?;
    browser
        .wait_for_text("#device-labels", "zone=north", SHOWN)
        .await?;
    browser
        .click("button[aria-label='Remove label role']")
        .await?;
    browser
        .wait_for_true(
            "the role label to go",
            "!document.querySelector('#device-labels')?.textContent.includes('role=')",
            SHOWN,
        )
        .await?;
    let device = admin
        .get("/api/v1/devices/edge-1")
        .await?
        .expect_status(200)?;
    assert_eq!(device["labels"], json!({"site": "berlin", "zone": "north"}));

    // tetherd's refusal, in its words, beside the form.
    browser.wait_for_selector("#label-key", SHOWN).await?;
    browser.type_text("#label-key", "bad key!").await?;
    browser.type_text("#label-value", "x").await?;
    browser.click(".add-label button[type=submit]").await?;
    let refusal = browser
        .wait_for_text("#label-error", "bad key!", SHOWN)
        .await?;
    assert!(refusal.to_lowercase().contains("label"), "{refusal}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_is_shown_its_role_and_the_api_names_the_caller() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let viewer = tetherd.user_with_role("viewer").await?;
    let me = viewer.get("/api/v1/users/me").await?.expect_status(200)?;
    assert_eq!(me, json!({"username": "viewer-user", "role": "viewer"}));
    tetherd
        .anonymous()?
        .get("/api/v1/users/me")
        .await?
        .expect_status(401)?;
    Ok(())
}

/// The policy and the other headers on every console answer; files cached
/// for good under a versioned path and revalidated by ETag; no cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_answers_carry_a_strict_csp_and_assets_revalidate() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let anonymous = tetherd.anonymous()?;
    let page = anonymous.get_bytes("/", None).await?;
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body.clone())?;
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("index.html loads a module")?
        .to_owned();
    assert!(
        script.starts_with("/console/") && script.ends_with("/app.js"),
        "{script}"
    );
    for (path, reply) in [
        ("/", page),
        (script.as_str(), anonymous.get_bytes(&script, None).await?),
        (
            "/console/0000/app.js",
            anonymous.get_bytes("/console/0000/app.js", None).await?,
        ),
    ] {
        assert_eq!(
            reply.header("content-security-policy"),
            CONTENT_SECURITY_POLICY_VALUE,
            "{path}"
        );
        assert_eq!(reply.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(reply.header("referrer-policy"), "no-referrer", "{path}");
        assert!(reply.headers.get("set-cookie").is_none(), "{path}");
    }
    let asset = anonymous.get_bytes(&script, None).await?;
    assert_eq!(
        asset.header("content-type"),
        "text/javascript; charset=utf-8"
    );
    assert!(asset.header("cache-control").contains("immutable"));
    let etag = asset.header("etag").to_owned();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tetherd.ca_pem())?)
        .build()?;
    let revalidated = client
        .get(format!("{}{script}", tetherd.api_url))
        .header("if-none-match", &etag)
        .send()
        .await?;
    assert_eq!(revalidated.status(), 304);
    assert_eq!(
        anonymous
            .get_bytes("/console/0000/app.js", None)
            .await?
            .status,
        404,
        "another version's file"
    );
    Ok(())
}

/// The violation check is not vacuous: an inline script the page did not
/// ship is refused by the policy and recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_script_is_refused_and_recorded_as_a_violation() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let browser = Browser::start().await?;
    browser.navigate(&format!("{}/", tetherd.api_url)).await?;
    browser.wait_for_selector("#username", SHOWN).await?;
    browser
        .evaluate("(() => { const script = document.createElement('script'); script.textContent = 'window.injected = true'; document.body.append(script); })()")
        .await?;
    tether_testkit::wait_until("a CSP violation to be logged", SHOWN, || async {
        Ok((!browser.record().csp_violations().is_empty()).then_some(()))
    })
    .await?;
    assert_eq!(
        browser.evaluate("window.injected ?? null").await?,
        Value::Null
    );
    Ok(())
}

/// The shared time helper, as the page loads it: relative in words, the
/// absolute time for hover, "never" for none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_read_relative_with_the_absolute_time_on_hover() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let browser = Browser::start().await?;
    browser.navigate(&format!("{}/", tetherd.api_url)).await?;
    browser.wait_for_selector("#username", SHOWN).await?;
    let read = browser
        .evaluate(
            "(async () => { \
               const module = document.querySelector('script[type=module]').src.replace('app.js', 'time.js'); \
               const time = await import(module); \
               const now = Date.parse('2026-12-03T12:00:00Z'); \
               const never = time.timeElement(null); \
               const at = time.timeElement('2026-12-03T11:57:00Z'); \
               return { \
                 justNow: time.relative(now - 4000, now), \
                 minutes: time.relative(now - 3 * 60000, now), \
                 hours: time.relative(now + 2 * 3600000, now), \
                 days: time.relative(now - 3 * 86400000, now), \
                 never: never.textContent, \
                 datetime: at.dateTime, \
                 title: at.title, \
               }; \
             })()",
        )
        .await?;
    assert_eq!(read["justNow"], json!("now"), "{read}");
    assert!(
        read["minutes"]
            .as_str()
            .is_some_and(|text| text.starts_with("3 min") && text.ends_with("ago")),
        "{read}"
    );
    assert!(
        read["hours"]
            .as_str()
            .is_some_and(|text| text.starts_with("in 2 hr")),
        "{read}"
    );
    assert!(
        read["days"]
            .as_str()
            .is_some_and(|text| text.starts_with("3 days ago")),
        "{read}"
    );
    assert_eq!(read["never"], json!("never"));
    assert_eq!(read["datetime"], json!("2026-12-03T11:57:00Z"));
    assert!(
        read["title"]
            .as_str()
            .is_some_and(|title| title.contains("2026")),
        "{read}"
    );
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}

/// The device page's action form, generated from the catalogue's input
/// schema, against a real agent: `get-node-ip` runs and its result shows;
/// a bad input is refused by tetherd with the field named beside it and
/// nothing is sent; a viewer is offered no form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_an_action_from_the_generated_form_and_a_viewer_cannot()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let _agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    create_user(&admin, "olga", "operator").await?;
    create_user(&admin, "victor", "viewer").await?;
    let device_page = format!("{}/#/devices/edge-1", tetherd.api_url);

    let browser = Browser::start().await?;
    log_in(&browser, &tetherd, "olga", USER_PASSWORD).await?;
    browser.wait_for_text("main h1", "Overview", SHOWN).await?;
    browser.navigate(&device_page).await?;
    browser.wait_for_selector("#action-name", SHOWN).await?;
    let offered = browser
        .evaluate(
            "[...document.querySelectorAll('#action-name option')].map((option) => option.value)",
        )
        .await?;
    assert!(
        offered.as_array().is_some_and(
            |names| names.contains(&json!("get-node-ip")) && !names.contains(&json!("reboot"))
        ),
        "the device's action set, not the whole catalogue: {offered}"
    );

    // get-node-ip has no input: a button alone, and its result.
    choose(&browser, "#action-name", "get-node-ip").await?;
    browser
        .wait_for_text("form.action button[type=submit]", "Run get-node-ip", SHOWN)
        .await?;
    browser.click("form.action button[type=submit]").await?;
    browser
        .wait_for_text("#action-state", "succeeded", SHOWN)
        .await?;
    let response = browser
        .wait_for_text("#action-response", "127.0.0.1", SHOWN)
        .await?;
    assert!(response.contains("addresses"), "{response}");
    browser
        .evaluate("document.getElementById('run-title').scrollIntoView({block: 'start'})")
        .await?;
    write_doc_screenshot(&browser, "action").await?;

    // A field per property, typed, the required ones marked.
    choose(&browser, "#action-name", "send-api").await?;
    browser.wait_for_selector("#field-href", SHOWN).await?;
    let form = browser
        .evaluate(
            "(() => { const tag = (id) => document.getElementById(id)?.tagName.toLowerCase(); return { \
               href: [tag('field-href'), document.getElementById('field-href').getAttribute('aria-required')], \
               method: [tag('field-requestMethod'), \
                 [...document.querySelectorAll('#field-requestMethod option')].map((option) => option.textContent)], \
               hrefLabel: document.querySelector('label[for=field-href]').textContent, \
               correlationId: tag('field-correlationId') ?? null }; })()",
        )
        .await?;
    assert_eq!(form["href"], json!(["input", "true"]), "{form}");
    assert_eq!(
        form["method"],
        json!([
            "select",
            ["(not set)", "GET", "POST", "PUT", "PATCH", "DELETE"]
        ]),
        "{form}"
    );
    assert!(
        form["hrefLabel"]
            .as_str()
            .is_some_and(|label| label.contains("required")),
        "{form}"
    );
    assert_eq!(form["correlationId"], Value::Null, "tetherd assigns it");
    choose(&browser, "#action-name", "configure-logger").await?;
    browser.wait_for_selector("#field-pretty", SHOWN).await?;
    assert_eq!(
        browser
            .evaluate("[document.getElementById('field-pretty').tagName, document.getElementById('field-level').tagName]")
            .await?,
        json!(["SELECT", "SELECT"])
    );

    // tetherd's refusal, beside the field its path names; nothing sent.
    choose(&browser, "#action-name", "run-stats").await?;
    browser.wait_for_selector("#field-interval", SHOWN).await?;
    browser.type_text("#field-interval", "0").await?;
    browser.press("Enter").await?;
    let refusal = browser
        .wait_for_text("#field-interval-error", "interval", SHOWN)
        .await?;
    assert!(refusal.starts_with("interval: "), "{refusal}");
    assert_eq!(
        browser
            .evaluate("document.getElementById('field-interval').getAttribute('aria-invalid')")
            .await?,
        json!("true")
    );
    assert!(
        texts(&browser, "#action-error").await?[0].contains("$.interval"),
        "tetherd's message above the button"
    );
    let actions = admin
        .get("/api/v1/devices/edge-1/actions")
        .await?
        .expect_status(200)?;
    let sent: Vec<&Value> = actions["items"]
        .as_array()
        // The page's live log asks the agent to send its log (`follow-logs`).
        .map(|items| {
            items
                .iter()
                .map(|action| &action["action"])
                .filter(|action| *action != "follow-logs")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        sent,
        [&json!("get-node-ip")],
        "the refused input was never stored"
    );

    // At a phone's width the form fits.
    assert_fits_a_phone(&browser, "the action form").await?;
    // The refused request's 400 is the one error the browser logs.
    let record = browser.record();
    let unexpected: Vec<&String> = record
        .errors
        .iter()
        .filter(|error| !error.contains("/api/v1/devices/edge-1/actions"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    drop(browser);

    let browser = Browser::start().await?;
    log_in(&browser, &tetherd, "victor", USER_PASSWORD).await?;
    browser.wait_for_text("main h1", "Overview", SHOWN).await?;
    browser.navigate(&device_page).await?;
    browser
        .wait_for_selector("#capabilities-title", SHOWN)
        .await?;
    assert_eq!(
        browser
            .evaluate("document.querySelectorAll('#run-title, #action-name, form.action, main button:not(#log-pause)').length")
            .await?,
        json!(0),
        "a viewer is offered no way to run an action"
    );
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}

/// Text of the device list's name cells.
async fn listed(browser: &Browser) -> anyhow::Result<Vec<String>> {
    let names = browser
        .evaluate("[...document.querySelectorAll('table.devices tbody th a')].map((link) => link.textContent)")
        .await?;
    Ok(serde_json::from_value(names)?)
}

/// The device list searched as one types (name or display name, ignoring
/// case) and sorted from its column headers with the keyboard: the order
/// in `aria-sort`, focus kept, the fragment following.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_list_is_searched_as_one_types_and_sorted_from_its_headers() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    create_device(&admin, "core-1", json!({"site": "berlin"})).await?;
    create_device(&admin, "edge-berlin-1", json!({"site": "berlin"})).await?;
    admin
        .post(
            "/api/v1/devices",
            json!({"name": "edge-berlin-2", "displayName": "Gateway North", "labels": {"site": "berlin"}}),
        )
        .await?
        .expect_status(201)?;
    // The one device ever seen: first when the most recently seen lead.
    let _agent = Agent::enroll_online(&tetherd, &admin, "edge-paris-1").await?;

    let browser = Browser::start().await?;
    log_in_as_admin(&browser, &tetherd).await?;
    browser
        .click("nav[aria-label=Main] a[href='#/devices']")
        .await?;
    browser.wait_for_selector("table.devices", SHOWN).await?;
    assert_eq!(
        listed(&browser).await?,
        ["core-1", "edge-berlin-1", "edge-berlin-2", "edge-paris-1"]
    );
    assert_eq!(
        browser
            .evaluate("document.querySelector('th[aria-sort]').textContent")
            .await?,
        json!("Name ↑")
    );

    // Typed, not submitted: the display name matches, whatever the case.
    browser.type_text("#search", "NORTH").await?;
    browser
        .wait_for_text("table.devices caption", "containing “NORTH”", SHOWN)
        .await?;
    assert_eq!(listed(&browser).await?, ["edge-berlin-2"]);
    assert_eq!(
        browser.evaluate("document.activeElement.id").await?,
        json!("search"),
        "typing keeps the focus in the search box"
    );
    assert_eq!(
        browser.evaluate("location.hash").await?,
        json!("#/devices?search=NORTH")
    );
    // With a label selector too, and nothing found said so.
    // (The agent's device has no labels.)
    browser.type_text("#selector", "!site").await?;
    browser.press("Enter").await?;
    browser
        .wait_for_text(
            ".results .empty",
            "No device matching !site, containing “NORTH”",
            SHOWN,
        )
        .await?;
    browser.type_text("#search", "edge").await?;
    browser
        .wait_for_text("table.devices caption", "containing “edge”", SHOWN)
        .await?;
    assert_eq!(listed(&browser).await?, ["edge-paris-1"]);
    browser.click(".filter a.button").await?;
    browser
        .wait_for_text("table.devices caption", "4 devices", SHOWN)
        .await?;

    // Sorted from the keyboard: Enter on the focused header's button.
    browser
        .evaluate("document.querySelector('button[data-sort=name]').focus()")
        .await?;
    browser.press("Enter").await?;
    browser
        .wait_for_text("table.devices caption", "Z to A", SHOWN)
        .await?;
    assert_eq!(
        listed(&browser).await?,
        ["edge-paris-1", "edge-berlin-2", "edge-berlin-1", "core-1"]
    );
    let sorted = browser
        .evaluate(
            "[...document.querySelectorAll('thead th')].map((th) => th.getAttribute('aria-sort'))",
        )
        .await?;
    assert_eq!(sorted, json!(["descending", null, null, null, null]));
    assert_eq!(
        browser
            .evaluate("document.activeElement.dataset.sort ?? null")
            .await?,
        json!("name"),
        "focus stays on the header"
    );
    browser.click("button[data-sort=lastSeen]").await?;
    browser
        .wait_for_text("table.devices caption", "most recently seen first", SHOWN)
        .await?;
    let recent = listed(&browser).await?;
    assert_eq!(recent.first().map(String::as_str), Some("edge-paris-1"));
    assert_eq!(
        browser
            .evaluate("[...document.querySelectorAll('thead th')].map((th) => th.getAttribute('aria-sort'))")
            .await?,
        json!([null, null, null, "descending", null])
    );
    assert_eq!(
        browser.evaluate("location.hash").await?,
        json!("#/devices?sort=-lastSeen")
    );
    // A reload shows the same listing, from the fragment.
    browser.call("Page.reload", json!({})).await?;
    browser
        .wait_for_text("table.devices caption", "most recently seen first", SHOWN)
        .await?;
    assert_eq!(listed(&browser).await?, recent);
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}
