//! Which boot the machine is in: the kernel's boot id, new at every boot,
//! and when it booted. Reported in the status (`boot`), so tetherd sees a
//! reboot as a new id.
//!
//! Not the birth message's `bootId`: that one is the agent's own, new at
//! every start of the agent process (and so at every reboot too).

use std::path::Path;

use chrono::{DateTime, Utc};
use tether_proto::host::BootReport;

/// Where Linux keeps the boot id. The agent's `--boot-id-file` points
/// elsewhere only for tests, which cannot reboot the machine.
pub const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
const PROC_STAT: &str = "/proc/stat";

/// The current boot, read from `boot_id_file` and `/proc/stat`; `None` if
/// the boot id cannot be read (not Linux), which is logged.
pub fn read(boot_id_file: &Path) -> Option<BootReport> {
    let id = match std::fs::read_to_string(boot_id_file) {
        Ok(text) => text.trim().to_owned(),
        Err(error) => {
            tracing::warn!(path = %boot_id_file.display(), %error, "cannot read the boot id; the status reports no boot");
            return None;
        }
    };
    if id.is_empty() || id.len() > BootReport::MAX_ID_BYTES {
        tracing::warn!(path = %boot_id_file.display(), "the boot id is empty or too long; the status reports no boot");
        return None;
    }
    let booted_at = std::fs::read_to_string(PROC_STAT)
        .ok()
        .and_then(|stat| booted_at(&stat));
    Some(BootReport { id, booted_at })
}

/// The `btime` line of `/proc/stat`: seconds since the epoch at boot.
fn booted_at(stat: &str) -> Option<DateTime<Utc>> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|seconds| seconds.trim().parse::<i64>().ok())
        .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_time_is_btime() {
        let stat = "cpu  1 2 3\nintr 5\nbtime 1764700000\nprocesses 9\n";
        assert_eq!(booted_at(stat), DateTime::from_timestamp(1_764_700_000, 0));
        assert_eq!(booted_at("cpu 1\n"), None);
    }

    #[test]
    fn the_boot_id_is_the_files_trimmed_and_nothing_without_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("boot_id");
        std::fs::write(&file, "3f1c2a9e-5b7d-4e0a-9c1b-2d3e4f5a6b7c\n").expect("writes");
        let boot = read(&file).expect("a boot");
        assert_eq!(boot.id, "3f1c2a9e-5b7d-4e0a-9c1b-2d3e4f5a6b7c");
        assert_eq!(read(&dir.path().join("missing")), None);
        std::fs::write(&file, "\n").expect("writes");
        assert_eq!(read(&file), None);
    }
}
