//! The web console (ADR 0034) in a real headless Chromium against a real
//! tetherd: logging in, finding a device by label, paging, the states a
//! session ends in, and the Content-Security-Policy: every request stays
//! on tetherd's origin and nothing is refused.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::browser::{Browser, PageRecord};
use tether_testkit::{ApiClient, Tetherd};

mod admin;
mod basics;
mod device_live;
mod fleet;
mod live;
mod reconnect;
mod scale;

/// How long a page may take to show what a test waits for.
const SHOWN: Duration = Duration::from_secs(15);

/// Opens the console and logs in as `username`.
async fn log_in(
    browser: &Browser,
    tetherd: &Tetherd,
    username: &str,
    password: &str,
) -> anyhow::Result<()> {
    log_in_at(browser, &tetherd.api_url, username, password).await
}

/// Opens the console at `url` (tetherd's, or a proxy's to it) and logs in
/// as `username`.
async fn log_in_at(
    browser: &Browser,
    url: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<()> {
    browser.navigate(&format!("{url}/")).await?;
    browser.wait_for_selector("#username", SHOWN).await?;
    browser.type_text("#username", username).await?;
    browser.type_text("#password", password).await?;
    browser.click("form.login button[type=submit]").await?;
    Ok(())
}

/// Logs in as `username` (of [`create_user`]) and waits for the overview's
/// counts: the page has finished loading.
async fn log_in_as(browser: &Browser, tetherd: &Tetherd, username: &str) -> anyhow::Result<()> {
    log_in(browser, tetherd, username, USER_PASSWORD).await?;
    browser.wait_for_selector(".cards", SHOWN).await?;
    Ok(())
}

async fn log_in_as_admin(browser: &Browser, tetherd: &Tetherd) -> anyhow::Result<()> {
    log_in(browser, tetherd, "admin", tetherd.admin_password()).await?;
    // The counts, not only the heading: the page has finished loading.
    browser.wait_for_selector(".cards", SHOWN).await?;
    Ok(())
}

/// Every request went to tetherd (or was the page's own `data:`/`about:`),
/// and the console logged no error: no CSP violation, no failed load.
fn assert_stayed_home(record: &PageRecord, tetherd: &Tetherd) {
    assert_stayed_at(record, &tetherd.api_url);
}

/// [`assert_stayed_home`] for a console opened at `url` (a proxy's).
fn assert_stayed_at(record: &PageRecord, url: &str) {
    let origin = format!("{url}/");
    let elsewhere: Vec<&String> = record
        .requests
        .iter()
        .filter(|url| {
            !url.starts_with(&origin) && !url.starts_with("data:") && url.as_str() != "about:blank"
        })
        .collect();
    assert!(
        elsewhere.is_empty(),
        "requests left for another origin: {elsewhere:?}"
    );
    assert!(
        record.requests.iter().any(|url| url.contains("/console/")),
        "the record holds the page's requests: {:?}",
        record.requests
    );
    assert!(
        record.errors.is_empty(),
        "the console logged errors (CSP violations among them): {:#?}",
        record.errors
    );
}

/// With `TETHER_WRITE_DOCS` set, saves the page as `docs/console/{name}.png`
/// (linked from the README), as `docs/roles.md` is written.
async fn write_doc_screenshot(browser: &Browser, name: &str) -> anyhow::Result<()> {
    if std::env::var_os("TETHER_WRITE_DOCS").is_none() {
        return Ok(());
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console");
    std::fs::create_dir_all(&dir).context("creating docs/console")?;
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, browser.screenshot().await?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Text of every element matching `selector`.
async fn texts(browser: &Browser, selector: &str) -> anyhow::Result<Vec<String>> {
    let found = browser
        .evaluate(&format!(
            "[...document.querySelectorAll({})].map((element) => element.textContent.trim())",
            json!(selector)
        ))
        .await?;
    Ok(serde_json::from_value(found)?)
}

async fn create_device(admin: &ApiClient, name: &str, labels: Value) -> anyhow::Result<()> {
    admin
        .post("/api/v1/devices", json!({"name": name, "labels": labels}))
        .await?
        .expect_status(201)?;
    Ok(())
}

const USER_PASSWORD: &str = "correct horse battery staple";

/// Creates a user with `role` and a password of the test's choosing.
async fn create_user(admin: &ApiClient, username: &str, role: &str) -> anyhow::Result<()> {
    admin
        .post(
            "/api/v1/users",
            json!({"username": username, "role": role, "password": USER_PASSWORD}),
        )
        .await?
        .expect_status(201)?;
    Ok(())
}

/// Picks `value` in the `<select>` matching `selector`, as a person choosing
/// from the list would (the page hears a `change`).
async fn choose(browser: &Browser, selector: &str, value: &str) -> anyhow::Result<()> {
    let chosen = browser
        .evaluate(&format!(
            "(() => {{ const select = document.querySelector({}); if (!select) return false; \
             select.focus(); select.value = {}; select.dispatchEvent(new Event('change')); \
             return select.value === {}; }})()",
            json!(selector),
            json!(value),
            json!(value)
        ))
        .await?;
    anyhow::ensure!(chosen == json!(true), "cannot choose {value} in {selector}");
    Ok(())
}

/// At a phone's width (390 px) nothing on the page is wider than the
/// screen (`page` names it in the failure); then the browser's own width
/// is back and laid out, so a click after this aims where things are.
async fn assert_fits_a_phone(browser: &Browser, page: &str) -> anyhow::Result<()> {
    browser.set_viewport(390, 844).await?;
    let fits = browser
        .evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        .await?;
    assert_eq!(fits, json!(true), "{page} scrolls sideways at 390 px");
    browser
        .call("Emulation.clearDeviceMetricsOverride", json!({}))
        .await?;
    browser
        .wait_for_true(
            "the page laid out at its own width again",
            "window.innerWidth > 390",
            SHOWN,
        )
        .await
}
