//! The HTTP contract third parties build on: schemathesis (from PyPI) runs
//! every check against a live tetherd from its own `/api/v1/openapi.json`,
//! once with an admin's token and once without credentials.

use std::path::PathBuf;
use std::process::Output;

use anyhow::Context;
use tether_testkit::{Database, Tetherd};

/// Examples per operation and phase: enough to cover every declared status
/// and constraint, small enough to keep the run near half a minute.
const MAX_EXAMPLES: &str = "15";

/// `$SCHEMATHESIS`, else the venv `scripts/test` installs into, else `PATH`.
fn schemathesis() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return Ok(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/schemathesis-venv/bin/schemathesis");
    if venv.exists() {
        return Ok(venv);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("schemathesis"))
        .find(|candidate| candidate.exists());
    on_path.context(
        "schemathesis is not installed: run ./scripts/test once (it installs schemathesis from \
         PyPI into target/schemathesis-venv), or `pip install schemathesis`, or set SCHEMATHESIS",
    )
}

async fn run_schemathesis(tetherd: &Tetherd, token: Option<&str>) -> anyhow::Result<Output> {
    let work = tempfile::tempdir()?;
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, tetherd.ca_pem())?;
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let mut command = tokio::process::Command::new(schemathesis()?);
    command
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/api/v1/openapi.json", tetherd.api_url)])
        .arg("--tls-verify")
        .arg(&ca)
        .args(["--checks", "all", "--max-examples", MAX_EXAMPLES])
        .arg("--generation-deterministic")
        // One worker: with two threads, hypothesis parses sources with
        // `ast.parse` from both at once, which the CPython 3.11 releases
        // here (3.11.7, Debian 12's 3.11.2) can fail with "AST constructor
        // recursion depth mismatch" (CPython gh-106905), crashing
        // schemathesis mid-run.
        .args(["--workers", "1", "--no-color"])
        // schemathesis writes reports and caches beside itself.
        .current_dir(work.path())
        .kill_on_drop(true)
        // A tunnel is a WebSocket, which schemathesis does not open: its
        // plain GETs are 426 by design. The tunnel tests cover both routes.
        .args(["--exclude-operation-id", "open_tunnel"])
        .args(["--exclude-operation-id", "dial_tunnel"]);
    if let Some(token) = token {
        // Logging out or revoking sessions would end the run's own session
        // halfway; the anonymous run and the API tests cover those routes.
        command
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["--exclude-operation-id", "logout"])
            .args(["--exclude-operation-id", "revoke_session"])
            // A follow stream answers 200 and never ends by design; the
            // log and live-feed tests cover them.
            .args(["--exclude-operation-id", "follow_device_logs"])
            .args(["--exclude-operation-id", "follow_fleet_logs"])
            .args(["--exclude-operation-id", "follow_fleet"])
            // Demoting or deleting users can take the run's own admin
            // rights away halfway (a generated second admin makes it
            // allowed); the role tests cover those routes.
            .args(["--exclude-operation-id", "set_user_role"])
            .args(["--exclude-operation-id", "delete_user"]);
    }
    tokio::time::timeout(std::time::Duration::from_secs(240), command.output())
        .await
        .context("schemathesis did not finish within 4 minutes")?
        .context("running schemathesis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_contract_violation_with_or_without_credentials() -> anyhow::Result<()>
{
    // Generated logins fail by the hundred; the throttle would answer them
    // all 429 (also declared) and leave the login path itself untested.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tetherd.toml");
    std::fs::write(&config, "[auth]\nlogin_failures_before_backoff = 1000000\n")?;
    let config = config.to_string_lossy().into_owned();
    let tetherd = Tetherd::start_with(Database::Sqlite, &["--config", &config]).await?;
    let token = tetherd.admin_token().await?;
    for (who, token) in [("authenticated", Some(token.as_str())), ("anonymous", None)] {
        let output = run_schemathesis(&tetherd, token).await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "schemathesis ({who}) found contract violations:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("passed") && !stdout.contains("Tested: 0"),
            "schemathesis ({who}) tested nothing:\n{stdout}"
        );
    }
    Ok(())
}
