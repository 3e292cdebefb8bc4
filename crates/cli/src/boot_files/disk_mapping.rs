//! Seed 004's disk mapping file: which partitions the OS mounts where
//! (`diskmappings`, formatting them with `size` and `filesystem` if they
//! are blank) and which directories it bind-mounts (`bindmounts`).
//!
//! `size` is in MiB (the seed does not say; tether reads it so). `-1`
//! means all the space left, which seed 004 allows "only for the tailmost
//! partition": the one last on its disk, which the OS grows at start. Where
//! a partition lies on its disk shows only on the device (most entries
//! name a partition label), so the order of entries does not matter — the
//! seed's own default lists its `-1` entry first — but only one entry may
//! ask for it.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{Problem, check_absolute, from_yaml};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskMappingFile {
    #[serde(default)]
    diskmappings: Vec<DiskMapping>,
    #[serde(default)]
    bindmounts: Vec<BindMount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskMapping {
    disk: String,
    mountpoint: String,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)] // checked by its type: one of the four below
    filesystem: Option<Filesystem>,
}

/// The filesystems the OS formats a blank partition with.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Filesystem {
    Ext4,
    Xfs,
    Vfat,
    Btrfs,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindMount {
    mountsource: String,
    mountpoint: String,
}

/// Checks a disk mapping file.
pub fn check(text: &str) -> Result<(), Problem> {
    let file: DiskMappingFile = from_yaml(text)?;
    let mut rest_taken_by: Option<usize> = None;
    let mut mountpoints = BTreeSet::new();
    for (i, mapping) in file.diskmappings.iter().enumerate() {
        let at = format!("diskmappings[{i}]");
        check_absolute(&format!("{at}.disk"), &mapping.disk)?;
        check_absolute(&format!("{at}.mountpoint"), &mapping.mountpoint)?;
        match mapping.size {
            Some(-1) => {
                if let Some(first) = rest_taken_by.replace(i) {
                    return Err(Problem::new(
                        format!("{at}.size"),
                        format!(
                            "-1 (all the space left) is allowed only on the tailmost partition, \
                             and diskmappings[{first}] asks for it already: give one of them a size in MiB"
                        ),
                    ));
                }
            }
            Some(size) if size <= 0 => {
                return Err(Problem::new(
                    format!("{at}.size"),
                    format!(
                        "{size} is not a size: write a positive number of MiB, or -1 (all the space left) on the tailmost partition"
                    ),
                ));
            }
            _ => {}
        }
        if !mountpoints.insert(mapping.mountpoint.as_str()) {
            return Err(Problem::new(
                format!("{at}.mountpoint"),
                format!("{:?} is mounted twice", mapping.mountpoint),
            ));
        }
    }
    for (i, bind) in file.bindmounts.iter().enumerate() {
        let at = format!("bindmounts[{i}]");
        check_absolute(&format!("{at}.mountsource"), &bind.mountsource)?;
        check_absolute(&format!("{at}.mountpoint"), &bind.mountpoint)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 004's default for x86, as the seed lists it.
    const SEED_DEFAULT: &str = "\
diskmappings:
  - disk: /dev/disk/by-partlabel/EDGELQ_DATA
    mountpoint: /isodevice/data
    size: -1
    filesystem: ext4
  - disk: /dev/disk/by-partlabel/EDGELQ_ISOS
    mountpoint: /isodevice/isos
    filesystem: ext4
  - disk: /dev/disk/by-partlabel/EDGELQ_BOOT
    mountpoint: /isodevice/boot
    filesystem: ext4
bindmounts:
  - mountsource: /isodevice/data/docker
    mountpoint: /var/lib/docker
  - mountsource: /isodevice/data/droplet
    mountpoint: /var/lib/droplet
  - mountsource: /isodevice/data/log
    mountpoint: /var/log
";

    fn problem(text: &str) -> String {
        check(text).expect_err(text).to_string()
    }

    #[test]
    fn the_seed_s_mapping_passes() {
        check(SEED_DEFAULT).expect("valid");
        check("diskmappings: []\n").expect("nothing to mount is fine");
    }

    #[test]
    fn problems_name_their_field() {
        let twice = "diskmappings:\n  - {disk: /dev/sdb1, mountpoint: /a, size: -1}\n  - {disk: /dev/sdb2, mountpoint: /b, size: 100}\n  - {disk: /dev/sdb3, mountpoint: /c, size: -1}\n";
        let message = problem(twice);
        assert!(
            message.starts_with("diskmappings[2].size: -1")
                && message.contains("tailmost")
                && message.contains("diskmappings[0] asks for it already"),
            "{message}"
        );
        assert!(
            problem("diskmappings:\n  - {disk: /dev/sdb1, mountpoint: /a, size: 0}\n")
                .starts_with("diskmappings[0].size: 0 is not a size")
        );
        let message = problem("diskmappings:\n  - {disk: sdb1, mountpoint: /a}\n");
        assert!(
            message.starts_with("diskmappings[0].disk: \"sdb1\" is not an absolute path"),
            "{message}"
        );
        let message =
            problem("diskmappings:\n  - {disk: /dev/sdb1, mountpoint: /a, filesystem: ntfs}\n");
        assert!(
            message.starts_with("diskmappings[0].filesystem: unknown variant `ntfs`"),
            "{message}"
        );
        let message = problem("diskmappings:\n  - {disk: /dev/sdb1, mountpoint: /a, sise: 10}\n");
        assert!(
            message.starts_with("diskmappings[0].sise: unknown field `sise`"),
            "{message}"
        );
        let message = problem("bindmounts:\n  - {mountsource: /a/../etc, mountpoint: /b}\n");
        assert!(
            message.starts_with("bindmounts[0].mountsource: "),
            "{message}"
        );
        let message = problem("diskmapings: []\n");
        assert!(message.contains("unknown field `diskmapings`"), "{message}");
        let message = problem(
            "diskmappings:\n  - {disk: /dev/a, mountpoint: /x}\n  - {disk: /dev/b, mountpoint: /x}\n",
        );
        assert!(
            message.starts_with("diskmappings[1].mountpoint: \"/x\" is mounted twice"),
            "{message}"
        );
        assert!(!problem("diskmappings: [").is_empty());
    }
}
