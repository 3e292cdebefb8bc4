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

/// `bytes` stamped with release `version`, as tetherd wants a published
/// binary: an agent's slot set, or, for a test's stand-in that is no
/// agent (an ELF header and filler, `sleep`), a stamp appended, which
/// the executable never reads but the publication's check finds.
pub fn with_version_stamp(mut bytes: Vec<u8>, version: &str) -> anyhow::Result<Vec<u8>> {
    use tether_proto::version_stamp::{StampError, restamp, stamp};
    match restamp(&mut bytes, version) {
        Ok(()) => {}
        Err(StampError::NoSlot) => bytes.extend_from_slice(&stamp(version)),
        Err(error) => return Err(error).context("cannot stamp the binary"),
    }
    Ok(bytes)
}

/// Writes a copy of the agent binary `src` to `dst` (mode 0755) with its
/// version stamp set to `version` ([`tether_proto::version_stamp`]): a
/// "newer build" without a rebuild, as a release script makes one.
pub fn stamp_agent_binary(
    src: &std::path::Path,
    dst: &std::path::Path,
    version: &str,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut bytes = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
    tether_proto::version_stamp::restamp(&mut bytes, version)
        .with_context(|| format!("cannot stamp {}", src.display()))?;
    std::fs::write(dst, &bytes).with_context(|| format!("cannot write {}", dst.display()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A directory with a copy of the agent stamped `version` as
/// `DIR/tether-agent` and links to its helpers beside it: an agent a test
/// may update in place, never touching the build's own binary.
pub fn agent_install(dir: &std::path::Path, version: &str) -> anyhow::Result<PathBuf> {
    let agent = binary("tether-agent")?;
    let exe = dir.join("tether-agent");
    stamp_agent_binary(&agent, &exe, version)?;
    for helper in [
        "tether-agent-render",
        "tether-agent-restore",
        "tether-agent-shell",
    ] {
        if let Ok(path) = binary(helper) {
            let _ = std::os::unix::fs::symlink(path, dir.join(helper));
        }
    }
    Ok(exe)
}
