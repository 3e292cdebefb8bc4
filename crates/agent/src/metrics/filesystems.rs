//! Space on each real mounted file system: the mounts from
//! `/proc/self/mounts`, pseudo and memory file systems left out, each
//! device once, then `statvfs` on each.

use std::collections::HashSet;
use std::path::Path;

use tether_proto::metrics::MountSample;

/// File systems that hold no device's data (kernel interfaces, memory,
/// read-only images).
const PSEUDO: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "fuse.lxcfs",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Kernel trees no real file system is mounted under.
const PSEUDO_TREES: &[&str] = &["/proc", "/sys", "/dev", "/run"];

/// A mount worth measuring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub point: String,
}

/// The real mounts of `/proc/self/mounts`, in order, each device once
/// (bind mounts and a container's mounted files repeat their device: the
/// first, usually `/`, stands for it).
pub fn parse(mounts: &str) -> Vec<Mount> {
    let mut devices = HashSet::new();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let device = unescape(fields.next()?);
            let point = unescape(fields.next()?);
            let fstype = fields.next()?;
            let pseudo = PSEUDO.contains(&fstype)
                || PSEUDO_TREES
                    .iter()
                    .any(|tree| point == *tree || point.starts_with(&format!("{tree}/")));
            (!pseudo).then_some(Mount { device, point })
        })
        .filter(|mount| devices.insert(mount.device.clone()))
        .collect()
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as octal
/// escapes (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|digits| {
                let code = digits
                    .iter()
                    .fold(0u16, |code, digit| code * 8 + u16::from(digit - b'0'));
                u8::try_from(code).ok()
            });
        if let Some(code) = octal {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Space of `mount`, or `None` where the kernel will not say (gone,
/// no permission) or the file system has no blocks.
pub fn measure(mount: &Mount, root: &Path) -> Option<MountSample> {
    let path = root.join(mount.point.trim_start_matches('/'));
    let stat = rustix::fs::statvfs(&path).ok()?;
    let block = stat.f_frsize.max(1);
    let total = stat.f_blocks.saturating_mul(block);
    if total == 0 {
        return None;
    }
    let free = stat.f_bfree.saturating_mul(block);
    Some(MountSample {
        m: mount.point.clone(),
        t: total,
        u: total.saturating_sub(free),
        a: stat.f_bavail.saturating_mul(block),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
overlay / overlay rw,relatime,lowerdir=/a:/b 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /dev tmpfs rw,nosuid,size=65536k,mode=755 0 0
sysfs /sys sysfs ro,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup cgroup2 ro,nosuid 0 0
/dev/sda1 /etc/hosts ext4 rw,relatime 0 0
/dev/sda1 /etc/hostname ext4 rw,relatime 0 0
/dev/sdb1 /mnt/my\\040data ext4 rw,relatime 0 0
/dev/loop0 /snap/core/1 squashfs ro 0 0
/dev/mmcblk0p1 /boot/firmware vfat rw 0 0
tmpfs /run/user/1000 tmpfs rw 0 0
";

    #[test]
    fn real_mounts_each_device_once() {
        let points: Vec<String> = parse(MOUNTS).into_iter().map(|m| m.point).collect();
        assert_eq!(
            points,
            ["/", "/etc/hosts", "/mnt/my data", "/boot/firmware"]
        );
    }

    #[test]
    fn this_hosts_root_can_be_measured() {
        let root = Mount {
            device: "root".into(),
            point: "/".into(),
        };
        let sample = measure(&root, Path::new("/")).expect("/ has space");
        assert!(sample.t > 0 && sample.u <= sample.t && sample.a <= sample.t);
        let gone = Mount {
            device: "x".into(),
            point: "/no/such/mount".into(),
        };
        assert_eq!(measure(&gone, Path::new("/")), None);
    }
}
