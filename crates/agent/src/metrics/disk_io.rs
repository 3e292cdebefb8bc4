//! Block device I/O from `/proc/diskstats`: bytes read and written since
//! boot, per whole disk; samples carry the differences.

use std::collections::{BTreeMap, HashSet};

/// Bytes read and written since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub read: u64,
    pub written: u64,
}

/// `/proc/diskstats` always counts 512-byte sectors, whatever the device's.
const SECTOR: u64 = 512;

/// The counters of the devices in `disks` (the names in `/sys/block`:
/// whole disks, not partitions), loop and RAM disks left out, as are
/// devices never used.
pub fn parse(diskstats: &str, disks: &HashSet<String>) -> BTreeMap<String, IoCounters> {
    diskstats
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let name = *fields.get(2)?;
            if !disks.contains(name) || name.starts_with("loop") || name.starts_with("ram") {
                return None;
            }
            let sectors_read: u64 = fields.get(5)?.parse().ok()?;
            let sectors_written: u64 = fields.get(9)?.parse().ok()?;
            let reads: u64 = fields.get(3)?.parse().ok()?;
            let writes: u64 = fields.get(7)?.parse().ok()?;
            (reads > 0 || writes > 0).then(|| {
                (
                    name.to_owned(),
                    IoCounters {
                        read: sectors_read.saturating_mul(SECTOR),
                        written: sectors_written.saturating_mul(SECTOR),
                    },
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "\
   8       0 sda 1000 10 2048 500 300 20 4096 600 0 900 1100 0 0 0 0
   8       1 sda1 900 10 2000 450 290 20 4000 590 0 850 1040 0 0 0 0
   7       0 loop0 12 0 24 1 0 0 0 0 0 1 1 0 0 0 0
 179       0 mmcblk0 0 0 0 0 0 0 0 0 0 0 0
 259       0 nvme0n1 5 0 8 1 1 0 8 1 0 2 2
";

    #[test]
    fn whole_used_disks_in_bytes() {
        let disks: HashSet<String> = ["sda", "loop0", "mmcblk0", "nvme0n1"]
            .map(String::from)
            .into();
        let io = parse(STATS, &disks);
        assert_eq!(io.keys().collect::<Vec<_>>(), ["nvme0n1", "sda"]);
        assert_eq!(
            io["sda"],
            IoCounters {
                read: 2048 * 512,
                written: 4096 * 512
            }
        );
    }
}
