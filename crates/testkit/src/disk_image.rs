//! Raw disk images for `tether os edit`'s tests: partition tables laid out
//! here byte by byte from the UEFI and MBR specifications (so the CLI's
//! parser is checked against the layout, not against itself), filesystems
//! made and read back with the real tools: mtools for FAT, e2fsprogs for
//! ext4.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Sector size of the images built here.
pub const SECTOR: u64 = 512;

/// A disk of `sectors` sectors, every byte a pattern (so that a test can
/// tell untouched bytes from zeroed ones), with a protective MBR and a
/// primary GPT of 128 entries holding `parts`: (name, first LBA, last LBA).
pub fn gpt(sectors: u64, parts: &[(&str, u64, u64)]) -> Vec<u8> {
    let mut disk = patterned(sectors);
    disk[..512].fill(0);
    disk[446 + 4] = 0xEE;
    disk[446 + 8..446 + 12].copy_from_slice(&1_u32.to_le_bytes());
    let rest = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    disk[446 + 12..446 + 16].copy_from_slice(&rest.to_le_bytes());
    disk[510..512].copy_from_slice(&[0x55, 0xAA]);
    let mut entries = vec![0_u8; 128 * 128];
    for (i, (name, first, last)) in parts.iter().enumerate() {
        let entry = &mut entries[i * 128..(i + 1) * 128];
        // Linux filesystem data's type GUID, as bytes on disk.
        entry[..16].copy_from_slice(&[
            0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
            0x7D, 0xE4,
        ]);
        entry[16..32].copy_from_slice(&[i as u8 + 1; 16]);
        entry[32..40].copy_from_slice(&first.to_le_bytes());
        entry[40..48].copy_from_slice(&last.to_le_bytes());
        for (j, unit) in name.encode_utf16().enumerate() {
            entry[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let mut header = vec![0_u8; 512];
    header[..8].copy_from_slice(b"EFI PART");
    header[8..12].copy_from_slice(&0x0001_0000_u32.to_le_bytes());
    header[12..16].copy_from_slice(&92_u32.to_le_bytes());
    header[24..32].copy_from_slice(&1_u64.to_le_bytes());
    header[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
    header[40..48].copy_from_slice(&34_u64.to_le_bytes());
    header[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
    header[72..80].copy_from_slice(&2_u64.to_le_bytes());
    header[80..84].copy_from_slice(&128_u32.to_le_bytes());
    header[84..88].copy_from_slice(&128_u32.to_le_bytes());
    header[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
    let crc = crc32(&header[..92]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    disk[512..1024].copy_from_slice(&header);
    disk[1024..1024 + entries.len()].copy_from_slice(&entries);
    disk
}

/// A patterned disk with an MBR holding `parts`: (type, first LBA,
/// sectors).
pub fn mbr(sectors: u64, parts: &[(u8, u32, u32)]) -> Vec<u8> {
    let mut disk = patterned(sectors);
    disk[..512].fill(0);
    for (i, (kind, first, count)) in parts.iter().enumerate() {
        let entry = &mut disk[446 + 16 * i..446 + 16 * (i + 1)];
        entry[4] = *kind;
        entry[8..12].copy_from_slice(&first.to_le_bytes());
        entry[12..16].copy_from_slice(&count.to_le_bytes());
    }
    disk[510..512].copy_from_slice(&[0x55, 0xAA]);
    disk
}

fn patterned(sectors: u64) -> Vec<u8> {
    (0..sectors * SECTOR)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// CRC-32 (IEEE), as the GPT uses; bitwise, which is fast enough for a
/// test's few kilobytes.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0_u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A tool from e2fsprogs or mtools: on `PATH`, or in the sbin directories
/// a non-root `PATH` may lack.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| name.into())
}

fn run(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let output = command
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .with_context(|| format!("cannot run {command:?}: install mtools and e2fsprogs"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// mtools' name for a partition of `image`: `IMAGE@@OFFSET`.
fn at(image: &Path, offset: u64) -> String {
    format!("{}@@{offset}", image.display())
}

/// Makes a FAT filesystem labelled `label` in the `sectors` sectors of
/// `image` from byte `offset` (mformat).
pub fn format_fat(image: &Path, offset: u64, sectors: u64, label: &str) -> anyhow::Result<()> {
    run(Command::new(tool("mformat")).args([
        "-i",
        &at(image, offset),
        "-T",
        &sectors.to_string(),
        "-v",
        label,
        "::",
    ]))
    .map(drop)
}

/// Reads `path` (e.g. `tether/bundle.json`) from the FAT filesystem at
/// `offset` (mcopy).
pub fn fat_read(image: &Path, offset: u64, path: &str) -> anyhow::Result<Vec<u8>> {
    run(Command::new(tool("mcopy")).args(["-i", &at(image, offset), &format!("::{path}"), "-"]))
}

/// Makes an ext4 filesystem labelled `label` of `bytes` bytes in `image`
/// from byte `offset` (mke2fs).
pub fn format_ext4(image: &Path, offset: u64, bytes: u64, label: &str) -> anyhow::Result<()> {
    run(Command::new(tool("mke2fs")).args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        label,
        "-E",
        &format!("offset={offset}"),
        &image.to_string_lossy(),
        &format!("{}k", bytes / 1024),
    ]))
    .map(drop)
}

/// Runs the debugfs request `request` (read-only) on the ext filesystem
/// at `offset`: `cat /tether/bundle.json`, `stat /tether/bundle.json`.
pub fn debugfs(image: &Path, offset: u64, request: &str) -> anyhow::Result<Vec<u8>> {
    run(Command::new(tool("debugfs")).args([
        "-R",
        request,
        &format!("{}?offset={offset}", image.display()),
    ]))
}
