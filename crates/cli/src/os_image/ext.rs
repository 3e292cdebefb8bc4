//! The bundle into an ext2/3/4 boot partition (seed 004's `EDGELQ_BOOT`)
//! with e2fsprogs' `debugfs -w`, which edits a filesystem image without
//! mounting it. debugfs opens the partition in place as
//! `IMAGE?offset=BYTES` (unix_io's option), so nothing is copied; the
//! superblock is checked first to say the filesystem ends inside the
//! partition, so that debugfs cannot write past it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use tether_proto::provisioning::BOOT_BUNDLE_DIR;

use super::{BootFile, ImageError, Partition, debugfs_path};

/// The superblock is 1 KiB into the filesystem.
const SUPERBLOCK: u64 = 1024;
/// `s_feature_incompat` flags: the journal needs replaying; 64-bit block
/// numbers.
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_64BIT: u32 = 0x80;

/// What the superblock says about size and room.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Superblock {
    block_size: u64,
    blocks: u64,
    free_blocks: u64,
    free_inodes: u64,
    needs_recovery: bool,
}

fn parse_superblock(sb: &[u8; 1024]) -> Result<Superblock, String> {
    let u32_at = |offset: usize| {
        u32::from_le_bytes([sb[offset], sb[offset + 1], sb[offset + 2], sb[offset + 3]])
    };
    let log_block_size = u32_at(0x18);
    if log_block_size > 6 {
        return Err(format!(
            "its block size 2^(10+{log_block_size}) is not an ext block size"
        ));
    }
    let incompat = u32_at(0x60);
    let high = |offset: usize| {
        if incompat & INCOMPAT_64BIT != 0 {
            u64::from(u32_at(offset)) << 32
        } else {
            0
        }
    };
    Ok(Superblock {
        block_size: 1024 << log_block_size,
        blocks: u64::from(u32_at(0x04)) | high(0x150),
        free_blocks: u64::from(u32_at(0x0C)) | high(0x158),
        free_inodes: u64::from(u32_at(0x10)),
        needs_recovery: incompat & INCOMPAT_RECOVER != 0,
    })
}

/// The filesystem fits its partition, its journal is clean, it has room,
/// and `/tether` is a directory or absent. Nothing is written.
pub(super) fn check(
    file: &File,
    image: &Path,
    partition: &Partition,
    files: &[BootFile],
) -> Result<(), ImageError> {
    let mut sb = [0; 1024];
    file.read_exact_at(&mut sb, partition.offset + SUPERBLOCK)
        .map_err(ImageError::Read)?;
    let sb = parse_superblock(&sb).map_err(ImageError::Filesystem)?;
    let fs_len = sb.blocks.saturating_mul(sb.block_size);
    if fs_len > partition.len {
        return Err(ImageError::Filesystem(format!(
            "the filesystem is {fs_len} bytes, larger than its partition ({} bytes)",
            partition.len
        )));
    }
    if sb.needs_recovery {
        return Err(ImageError::Filesystem(
            "its journal needs recovery (it was not unmounted cleanly); run e2fsck on it first"
                .into(),
        ));
    }
    // One block per file is enough for a bundle; one more for the
    // directory, and the inodes.
    let needed_blocks = files
        .iter()
        .map(|f| (f.contents.len() as u64).div_ceil(sb.block_size).max(1))
        .sum::<u64>()
        + 1;
    let needed_inodes = files.len() as u64 + 1;
    if sb.free_blocks < needed_blocks || sb.free_inodes < needed_inodes {
        return Err(ImageError::Full(format!(
            "{} free blocks and {} free inodes, the bundle needs {needed_blocks} and {needed_inodes}",
            sb.free_blocks, sb.free_inodes
        )));
    }
    let session = Session::new(image, partition)?;
    let dir = format!("/{BOOT_BUNDLE_DIR}");
    match session.dir_state(&dir)? {
        DirState::Directory | DirState::Absent => Ok(()),
        DirState::NotADirectory => Err(ImageError::Filesystem(format!(
            "{dir} on it is not a directory; remove it first"
        ))),
    }
}

/// debugfs's view of one partition of an image, with a temp dir for its
/// input files.
struct Session {
    temp: tempfile::TempDir,
    device: String,
}

impl Session {
    fn new(image: &Path, partition: &Partition) -> Result<Self, ImageError> {
        let temp = tempfile::tempdir().map_err(ImageError::Temp)?;
        // A link of a plain name: debugfs splits its argument at the first
        // '?', and the image's own path may hold one.
        let link = temp.path().join("image");
        let target = std::fs::canonicalize(image).map_err(ImageError::Read)?;
        std::os::unix::fs::symlink(&target, &link).map_err(ImageError::Temp)?;
        let device = format!("{}?offset={}", link.display(), partition.offset);
        Ok(Session { temp, device })
    }

    fn run(&self, args: &[&str]) -> Result<Output, ImageError> {
        let output = Command::new(debugfs_path())
            .args(args)
            .arg(&self.device)
            .output()
            .map_err(ImageError::NoDebugfs)?;
        if !output.status.success() {
            return Err(ImageError::WriteExt(format!(
                "debugfs exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(output)
    }

    fn dir_state(&self, dir: &str) -> Result<DirState, ImageError> {
        let output = self.run(&["-R", &format!("stat {dir}")])?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stdout.contains("Type: directory") {
            Ok(DirState::Directory)
        } else if stdout.contains("Type: ") {
            Ok(DirState::NotADirectory)
        } else if stderr.contains("File not found") {
            Ok(DirState::Absent)
        } else {
            Err(ImageError::Filesystem(format!(
                "debugfs cannot open it: {}",
                stderr.trim()
            )))
        }
    }
}

enum DirState {
    Directory,
    Absent,
    NotADirectory,
}

pub(super) fn write(
    image: &Path,
    partition: &Partition,
    files: &[BootFile],
) -> Result<(), ImageError> {
    let session = Session::new(image, partition)?;
    let dir = format!("/{BOOT_BUNDLE_DIR}");
    let mut script = String::new();
    if matches!(session.dir_state(&dir)?, DirState::Absent) {
        script.push_str(&format!("mkdir {dir}\n"));
    }
    script.push_str(&format!("cd {dir}\n"));
    for (i, boot_file) in files.iter().enumerate() {
        let source = session.temp.path().join(format!("file-{i}"));
        std::fs::write(&source, &boot_file.contents).map_err(ImageError::Temp)?;
        let name = boot_file.name;
        let mode = if boot_file.secret {
            "0100600"
        } else {
            "0100644"
        };
        // `write` refuses an existing name: remove it first (an error
        // when there is none, which changes nothing). Owner root, as the
        // OS's own files: debugfs would take the caller's uid.
        script.push_str(&format!(
            "rm {name}\nwrite \"{}\" {name}\nsif {name} mode {mode}\nsif {name} uid 0\nsif {name} gid 0\n",
            source.display()
        ));
    }
    let script_path = session.temp.path().join("commands");
    std::fs::write(&script_path, script).map_err(ImageError::Temp)?;
    let output = session.run(&["-w", "-f", &script_path.to_string_lossy()])?;

    // debugfs exits 0 whatever its commands did: read every file back.
    for boot_file in files {
        let path = format!("{dir}/{}", boot_file.name);
        let back = session.run(&["-R", &format!("cat {path}")])?;
        if back.stdout != boot_file.contents {
            return Err(ImageError::WriteExt(format!(
                "{path} does not read back as written; debugfs said: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_superblock_gives_size_room_and_a_dirty_journal() {
        let mut sb = [0_u8; 1024];
        sb[0x04..0x08].copy_from_slice(&4096_u32.to_le_bytes());
        sb[0x0C..0x10].copy_from_slice(&1000_u32.to_le_bytes());
        sb[0x10..0x14].copy_from_slice(&50_u32.to_le_bytes());
        sb[0x18..0x1C].copy_from_slice(&2_u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1_u32.to_le_bytes());
        let parsed = parse_superblock(&sb).expect("valid");
        assert_eq!(
            parsed,
            Superblock {
                block_size: 4096,
                blocks: 4096,
                free_blocks: 1000,
                free_inodes: 50,
                needs_recovery: false
            },
            "the high words count only with the 64bit feature"
        );
        sb[0x60..0x64].copy_from_slice(&(INCOMPAT_64BIT | INCOMPAT_RECOVER).to_le_bytes());
        let parsed = parse_superblock(&sb).expect("valid");
        assert_eq!(parsed.blocks, (1 << 32) + 4096);
        assert!(parsed.needs_recovery);
        sb[0x18] = 9;
        assert!(parse_superblock(&sb).is_err());
    }
}
