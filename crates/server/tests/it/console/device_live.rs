//! The device page's live parts against a real agent: logs followed as the
//! agent ships them, a terminal over a tunnel, metrics drawn over a range,
//! the spec editor with tetherd's refusal, and what a viewer is not shown.

use std::time::Duration;

use serde_json::json;
use tether_testkit::browser::Browser;
use tether_testkit::{Agent, ApiClient, Database, Tetherd, post_local, wait_until};

use super::{
    SHOWN, USER_PASSWORD, assert_stayed_home, choose, create_device, create_user, log_in,
    log_in_as_admin, texts, write_doc_screenshot,
};

/// A tunnel waits for the device to dial back; a shell then starts.
const TERMINAL_OPENS: Duration = Duration::from_secs(40);

/// Text no earlier run or other line could hold.
fn marker(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

async fn open_device_page(browser: &Browser, tetherd: &Tetherd, name: &str) -> anyhow::Result<()> {
    browser
        .navigate(&format!("{}/#/devices/{name}", tetherd.api_url))
        .await?;
    browser.wait_for_selector("#logs-title", SHOWN).await
}

/// Scrolls the section titled `title_id` to the top, for a screenshot.
async fn scroll_to(browser: &Browser, title_id: &str) -> anyhow::Result<()> {
    browser
        .evaluate(&format!(
            "document.getElementById({}).scrollIntoView({{block: 'start'}})",
            json!(title_id)
        ))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_the_agent_ships_appear_on_an_open_page_and_metrics_are_drawn() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    let socket = agent.local_api_socket();
    push_tank_levels(&socket).await?;
    let before = marker("archived");
    post_local(
        &socket,
        "/v1/logs",
        &format!(
            "{}\n",
            json!({"message": before, "priority": 6, "unit": "app"})
        ),
    )
    .await?;
    wait_until("the archived line", Duration::from_secs(30), || async {
        let page = admin
            .get("/api/v1/devices/edge-1/logs?since=5m")
            .await?
            .expect_status(200)?;
        Ok(page.to_string().contains(&before).then_some(()))
    })
    .await?;
    metric_points(&admin, "tank_level_percent", 100).await?;

    let browser = Browser::start().await?;
    browser.set_viewport(1200, 900).await?;
    log_in_as_admin(&browser, &tetherd).await?;
    open_device_page(&browser, &tetherd, "edge-1").await?;
    // The recent lines from the archive, then following.
    browser.wait_for_text("#log-lines", &before, SHOWN).await?;
    browser
        .wait_for_text("#log-state", "Following", SHOWN)
        .await?;

    // Lines shipped after the page opened appear without a reload, last.
    let live = marker("live");
    for (i, priority) in [6, 3].into_iter().enumerate() {
        post_local(
            &socket,
            "/v1/logs",
            &format!(
                "{}\n",
                json!({"message": format!("{live} {i}"), "priority": priority, "unit": "app"})
            ),
        )
        .await?;
    }
    browser
        .wait_for_text("#log-lines", &format!("{live} 1"), SHOWN)
        .await?;
    let shown = texts(&browser, "#log-lines li").await?;
    let last = shown.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.contains(&format!("{live} 1")) && last.contains("err"),
        "newest last, with its priority: {shown:?}"
    );
    assert!(
        shown.iter().filter(|line| line.contains(&before)).count() == 1,
        "a line is shown once: {shown:?}"
    );

    // Paused, new lines wait and are counted; resumed, they are shown.
    browser.click("#log-pause").await?;
    let held = marker("held");
    post_local(
        &socket,
        "/v1/logs",
        &format!(
            "{}\n",
            json!({"message": held, "priority": 6, "unit": "app"})
        ),
    )
    .await?;
    browser
        .wait_for_text("#log-state", "1 new line waiting", SHOWN)
        .await?;
    assert!(
        !texts(&browser, "#log-lines li")
            .await?
            .concat()
            .contains(&held)
    );
    browser.click("#log-pause").await?;
    browser.wait_for_text("#log-lines", &held, SHOWN).await?;
    scroll_to(&browser, "logs-title").await?;
    write_doc_screenshot(&browser, "device-logs").await?;

    // The metrics chart: the chosen metric over the chosen range, a line
    // per series.
    browser
        .wait_for_selector("#metric-name option", SHOWN)
        .await?;
    choose(&browser, "#metric-name", "tank_level_percent").await?;
    browser
        .wait_for_text("#metric-chart svg title", "tank_level_percent", SHOWN)
        .await?;
    assert_eq!(
        texts(&browser, "#metric-chart .legend li").await?,
        ["tank=a", "tank=b"]
    );
    let drawn = browser
        .evaluate("document.querySelectorAll('#metric-chart svg path.line').length")
        .await?;
    assert_eq!(drawn, json!(2));
    // Six hours read 1-minute rollups, which a device this new may not
    // have yet: a chart or the empty state, either for the range chosen.
    choose(&browser, "#metric-range", "6h").await?;
    browser
        .wait_for_true(
            "the 6-hour range shown",
            "document.querySelector('#metric-chart svg title')?.textContent.includes('last 6 hours') \
             || document.getElementById('metric-empty')?.textContent.includes('tank_level_percent') || false",
            SHOWN,
        )
        .await?;
    choose(&browser, "#metric-range", "1h").await?;
    browser
        .wait_for_text("#metric-chart svg title", "last hour", SHOWN)
        .await?;
    scroll_to(&browser, "metrics-title").await?;
    write_doc_screenshot(&browser, "device-metrics").await?;

    // Leaving the page ends the follow quietly: no error is logged.
    browser
        .navigate(&format!("{}/#/devices", tetherd.api_url))
        .await?;
    browser.wait_for_selector("table.devices", SHOWN).await?;
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}

/// An hour of an application's metric through the agent's local API: two
/// tanks' levels every 30 s, filling and draining.
async fn push_tank_levels(socket: &std::path::Path) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let mut body = String::new();
    for i in 0..120_i64 {
        let at = now - chrono::Duration::seconds(30 * (120 - i));
        let phase = i as f64 / 12.0;
        for (tank, level) in [
            ("a", 55.0 + 30.0 * phase.sin()),
            ("b", 40.0 + 20.0 * (phase / 2.0).cos()),
        ] {
            body.push_str(
                &json!({"name": "tank_level_percent", "value": (level * 10.0_f64).round() / 10.0,
                    "labels": {"tank": tank}, "at": at})
                .to_string(),
            );
            body.push('\n');
        }
    }
    post_local(socket, "/v1/metrics", &body).await?;
    Ok(())
}

/// Waits until the device has at least `count` points of `metric` in the
/// last hour.
async fn metric_points(admin: &ApiClient, metric: &str, count: usize) -> anyhow::Result<()> {
    wait_until(
        &format!("{count} points of {metric}"),
        Duration::from_secs(90),
        || async {
            let range = admin
                .get(&format!(
                    "/api/v1/devices/edge-1/metrics/query?metric={metric}&since=1h&step=30s"
                ))
                .await?
                .expect_status(200)?;
            let points = range["series"][0]["points"].as_array().map_or(0, Vec::len);
            Ok((points >= count).then_some(()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_command_in_the_terminal_and_sees_its_output() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let _agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    create_user(&admin, "olga", "operator").await?;

    let browser = Browser::start().await?;
    browser.set_viewport(1200, 900).await?;
    log_in(&browser, &tetherd, "olga", USER_PASSWORD).await?;
    browser.wait_for_text("main h1", "Overview", SHOWN).await?;
    open_device_page(&browser, &tetherd, "edge-1").await?;
    browser.click("#terminal-open").await?;
    browser
        .wait_for_text("#terminal-state", "Connected", TERMINAL_OPENS)
        .await?;

    // The shell computes the text, so the typed command (echoed back by
    // the device's terminal) does not contain it: only the output does.
    let id = marker("run");
    browser
        .type_text("#terminal-input", &format!("echo hello-$((6*7))-{id}"))
        .await?;
    browser.press("Enter").await?;
    let output = browser
        .wait_for_text("#terminal-output", &format!("hello-42-{id}"), SHOWN)
        .await?;
    assert!(
        !output.contains('\u{1b}'),
        "control sequences are removed: {output:?}"
    );
    scroll_to(&browser, "terminal-title").await?;
    write_doc_screenshot(&browser, "device-terminal").await?;

    // The shell's end is told; the terminal may be opened again.
    browser.type_text("#terminal-input", "exit 3").await?;
    browser.press("Enter").await?;
    browser
        .wait_for_text("#terminal-state", "exit code 3", SHOWN)
        .await?;
    browser
        .wait_for_text("#terminal-open", "Open again", SHOWN)
        .await?;
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_logs_and_the_spec_but_no_terminal_and_no_spec_editor() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    create_device(&admin, "edge-2", json!({})).await?;
    admin
        .patch(
            "/api/v1/devices/edge-2",
            json!({"spec": {"metricsConfig": {"intervalSeconds": 30}}}),
        )
        .await?
        .expect_status(200)?;
    create_user(&admin, "victor", "viewer").await?;

    let browser = Browser::start().await?;
    log_in(&browser, &tetherd, "victor", USER_PASSWORD).await?;
    browser.wait_for_text("main h1", "Overview", SHOWN).await?;
    open_device_page(&browser, &tetherd, "edge-2").await?;
    browser
        .wait_for_text("#spec-view", "intervalSeconds", SHOWN)
        .await?;
    browser
        .wait_for_text("#log-state", "Following", SHOWN)
        .await?;
    // The empty states of a device that never reported.
    browser
        .wait_for_text("#metric-empty", "No metrics yet", SHOWN)
        .await?;
    browser
        .wait_for_text("#action-history", "No action has been run", SHOWN)
        .await?;
    let absent = browser
        .evaluate(
            "['#terminal-open', '#terminal-output', '#spec-editor', 'form.spec', '#forward-command']\
             .filter((selector) => document.querySelector(selector) !== null)",
        )
        .await?;
    assert_eq!(absent, json!([]), "shown to a viewer");
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_editor_shows_the_field_tetherd_refuses_and_saves_a_good_spec()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    create_device(&admin, "edge-3", json!({})).await?;

    let browser = Browser::start().await?;
    log_in_as_admin(&browser, &tetherd).await?;
    open_device_page(&browser, &tetherd, "edge-3").await?;
    browser.wait_for_selector("#spec-editor", SHOWN).await?;
    let set_spec = |spec: &str| {
        format!(
            "document.getElementById('spec-editor').value = {}",
            json!(spec)
        )
    };

    browser
        .evaluate(&set_spec(r#"{"budgets": {"actions": -1}}"#))
        .await?;
    browser.click("form.spec button[type=submit]").await?;
    let refused = browser
        .wait_for_text("#spec-fields", "spec.budgets.actions", SHOWN)
        .await?;
    assert!(refused.contains(':'), "the field and why: {refused}");
    let invalid = browser
        .evaluate("document.getElementById('spec-editor').getAttribute('aria-invalid')")
        .await?;
    assert_eq!(invalid, json!("true"));

    browser.evaluate(&set_spec("{not json")).await?;
    browser.click("form.spec button[type=submit]").await?;
    browser
        .wait_for_text("#spec-errors", "Not JSON", SHOWN)
        .await?;

    browser
        .evaluate(&set_spec(r#"{"metricsConfig": {"intervalSeconds": 45}}"#))
        .await?;
    browser.click("form.spec button[type=submit]").await?;
    wait_until("the spec saved", SHOWN, || async {
        let device = admin
            .get("/api/v1/devices/edge-3")
            .await?
            .expect_status(200)?;
        Ok((device["spec"]["metricsConfig"]["intervalSeconds"] == 45).then_some(()))
    })
    .await?;
    // The page reloads with the saved version.
    browser
        .wait_for_text("#spec-title + p", "Version 1", SHOWN)
        .await?;
    let help = browser
        .wait_for_text("#forward-command", "tether forward-port edge-3", SHOWN)
        .await?;
    assert_eq!(help, "tether forward-port edge-3 8080 tcp://127.0.0.1:80/");
    // The refused PATCH's 400 is the one error the browser logs.
    let mut record = browser.record();
    record
        .errors
        .retain(|error| !error.contains("/api/v1/devices/edge-3): Failed to load resource: the server responded with a status of 400"));
    assert_stayed_home(&record, &tetherd);
    Ok(())
}
