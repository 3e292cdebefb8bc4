//! Finding the workspace's binaries from a test: cargo builds them into the
//! target dir next to the test executables (`target/debug/deps/..`).

use std::path::PathBuf;

use anyhow::{Context, bail};

/// The path of a workspace binary (`tetherd`, `tether-agent`, `tether`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running test executable")?;
    let mut dir = exe.parent().map(PathBuf::from);
    while let Some(candidate_dir) = dir {
        let candidate = candidate_dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = candidate_dir.parent().map(PathBuf::from);
        if candidate_dir.file_name().is_some_and(|n| n == "target") {
            break;
        }
    }
    bail!(
        "binary {name} not found near {}: build the workspace first (cargo build --workspace)",
        exe.display()
    )
}
