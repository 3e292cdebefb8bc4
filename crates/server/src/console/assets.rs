//! The console's files, embedded in tetherd when it is built (ADR 0034):
//! `cargo build` alone makes a complete, air-gapped tetherd. A new file
//! under `crates/server/console/` gets a line here; a unit test fails
//! until it has one.

/// One file of the console.
pub struct Asset {
    /// Its path under `crates/server/console/`, as it is served under
    /// `/console/<version>/`.
    pub path: &'static str,
    pub bytes: &'static [u8],
    pub content_type: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $path)),
            content_type: $content_type,
        }
    };
}

/// The page every console URL loads; `%CONSOLE%` in it becomes
/// `/console/<version>` when served.
pub const INDEX_HTML: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/index.html"));

/// Every file but `index.html`.
pub const ASSETS: &[Asset] = &[
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("time.js", JS),
    asset!("login.js", JS),
    asset!("overview.js", JS),
    asset!("devices.js", JS),
    asset!("device.js", JS),
    asset!("action.js", JS),
    asset!("live.js", JS),
    asset!("deployments.js", JS),
    asset!("provisioning.js", JS),
    asset!("access.js", JS),
    asset!("jobs.js", JS),
    asset!("job.js", JS),
    asset!("job-start.js", JS),
    asset!("approvals.js", JS),
    asset!("alerts.js", JS),
    asset!("deliveries.js", JS),
    asset!("audit.js", JS),
    asset!("style.css", CSS),
    asset!("icon.svg", SVG),
    asset!("device_logs.js", JS),
    asset!("device_actions.js", JS),
    asset!("device_metrics.js", JS),
    asset!("chart.js", JS),
    asset!("terminal.js", JS),
    asset!("device_spec.js", JS),
];
