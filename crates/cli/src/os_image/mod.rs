//! Raw disk images, edited offline without root and without mounting:
//! the partition table is read here ([`table`]), the boot partition found
//! by label, and files written into its filesystem, FAT with the `fatfs`
//! crate through a window that cannot reach outside the partition
//! ([`window`]), ext2/3/4 with e2fsprogs' `debugfs -w` ([`ext`]).
//!
//! Everything that can fail for a reason the user can fix (not a disk
//! image, no boot partition, an unsupported filesystem, no room) is found
//! by [`inspect`], [`find_boot`] and [`check_room`] before anything is
//! written.

mod ext;
mod fat;
pub mod table;
pub mod window;

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use table::{Partition, TableError, TableKind};

/// The GPT partition names (or filesystem labels) of a boot partition,
/// tried in this order: seed 004's, then tether's own.
pub const BOOT_LABELS: [&str; 2] = ["EDGELQ_BOOT", "TETHER_BOOT"];
/// The FAT labels of a Raspberry Pi OS boot partition (`bootfs` since
/// Bookworm, `boot` before), compared without case.
pub const RASPBERRY_PI_LABELS: [&str; 2] = ["bootfs", "boot"];
/// The MBR partition types of FAT32 (CHS and LBA), which Raspberry Pi
/// images give their boot partition.
const MBR_TYPES_FAT32: [u8; 2] = [0x0B, 0x0C];

/// One file to put into the boot partition's `tether/` directory.
#[derive(Debug, Clone)]
pub struct BootFile {
    pub name: &'static str,
    pub contents: Vec<u8>,
    /// Readable by root only where the filesystem has modes (ext4); FAT
    /// has none, and the OS mounts it as it chooses.
    pub secret: bool,
}

/// What a partition holds, as far as tether can tell from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Fat {
        label: String,
    },
    Ext {
        label: String,
    },
    /// A filesystem tether recognises but does not write.
    Other(&'static str),
    Unknown,
}

impl fmt::Display for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Fat { label } => write!(f, "FAT, label {label:?}"),
            Content::Ext { label } => write!(f, "ext2/3/4, label {label:?}"),
            Content::Other(name) => f.write_str(name),
            Content::Unknown => f.write_str("no filesystem tether recognises"),
        }
    }
}

impl Content {
    fn label(&self) -> Option<&str> {
        match self {
            Content::Fat { label } | Content::Ext { label } => Some(label),
            Content::Other(_) | Content::Unknown => None,
        }
    }
}

/// A partition and what is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub partition: Partition,
    pub content: Content,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.partition;
        write!(f, "#{} at byte {} ({} bytes", p.number, p.offset, p.len)?;
        if !p.name.is_empty() {
            write!(f, ", GPT name {:?}", p.name)?;
        }
        if let Some(kind) = p.mbr_type {
            write!(f, ", MBR type 0x{kind:02x}")?;
        }
        write!(f, "): {}", self.content)
    }
}

/// An image's table and partitions.
#[derive(Debug, Clone)]
pub struct Image {
    pub table: TableKind,
    pub partitions: Vec<Found>,
}

/// The partition the bundle goes to, and why it was picked.
#[derive(Debug, Clone)]
pub struct BootPartition {
    pub found: Found,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read the image")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("no boot partition: {wanted}; the image has {}", list(.partitions))]
    NoBoot {
        wanted: String,
        partitions: Vec<Found>,
    },
    #[error(
        "{} partitions could be the boot partition ({reason}): {}; name one with --boot-partition",
        .candidates.len(), list(.candidates)
    )]
    Ambiguous {
        reason: String,
        candidates: Vec<Found>,
    },
    #[error("the boot partition #{number} holds {content}: tether writes FAT and ext2/3/4 only")]
    Unsupported { number: u32, content: Content },
    #[error("the boot partition's filesystem cannot be used: {0}")]
    Filesystem(String),
    #[error("the boot partition has no room: {0}")]
    Full(String),
    #[error("failed to write the bundle into the FAT boot partition")]
    WriteFat(#[source] std::io::Error),
    #[error("failed to write the bundle into the ext boot partition: {0}")]
    WriteExt(String),
    #[error(
        "cannot run debugfs (e2fsprogs), which writes ext2/3/4 without mounting; install e2fsprogs"
    )]
    NoDebugfs(#[source] std::io::Error),
    #[error("cannot make a temp dir for debugfs's input")]
    Temp(#[source] std::io::Error),
}

fn list(found: &[Found]) -> String {
    if found.is_empty() {
        return "no partitions".into();
    }
    found
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads the partition table of `file` and what each partition holds.
pub fn inspect(file: &File) -> Result<Image, ImageError> {
    let image_len = file.metadata().map_err(ImageError::Read)?.len();
    let mut head = vec![0; 512.min(image_len as usize)];
    file.read_exact_at(&mut head, 0).map_err(ImageError::Read)?;
    let (table, partitions) = table::parse(&head, image_len, |offset, len| {
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    })?;
    let partitions = partitions
        .into_iter()
        .map(|partition| {
            let content = content(file, &partition).map_err(ImageError::Read)?;
            Ok(Found { partition, content })
        })
        .collect::<Result<_, ImageError>>()?;
    Ok(Image { table, partitions })
}

/// What the first 4 KiB of `partition` say it holds.
fn content(file: &File, partition: &Partition) -> std::io::Result<Content> {
    let mut head = vec![0; 4096.min(partition.len as usize)];
    file.read_exact_at(&mut head, partition.offset)?;
    Ok(recognise(&head))
}

/// The filesystem whose first bytes are `head` (up to 4 KiB).
fn recognise(head: &[u8]) -> Content {
    let at = |offset: usize, len: usize| head.get(offset..offset + len);
    if at(0x438, 2) == Some(&[0x53, 0xEF]) {
        return Content::Ext {
            label: label_text(at(0x478, 16).unwrap_or_default()),
        };
    }
    let bytes_per_sector = at(11, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if at(510, 2) == Some(&[0x55, 0xAA])
        && matches!(bytes_per_sector, Some(512 | 1024 | 2048 | 4096))
    {
        if at(0x52, 5) == Some(b"FAT32") {
            return Content::Fat {
                label: label_text(at(0x47, 11).unwrap_or_default()),
            };
        }
        if at(0x36, 3) == Some(b"FAT") {
            return Content::Fat {
                label: label_text(at(0x2B, 11).unwrap_or_default()),
            };
        }
    }
    if at(0, 4) == Some(b"XFSB") {
        return Content::Other("XFS");
    }
    if at(0, 4) == Some(b"hsqs") {
        return Content::Other("squashfs");
    }
    if at(0, 6) == Some(b"LUKS\xba\xbe") {
        return Content::Other("LUKS (encrypted)");
    }
    if at(4086, 10) == Some(b"SWAPSPACE2") {
        return Content::Other("swap");
    }
    Content::Unknown
}

/// A label field: up to the first NUL, without FAT's space padding.
fn label_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim_end().to_owned()
}

/// Picks the boot partition. With `wanted`, the one whose GPT name, or
/// else filesystem label, is exactly `wanted`. Without, the first rule
/// that matches: a GPT name in [`BOOT_LABELS`] (in that order), then a
/// filesystem label in [`BOOT_LABELS`], then a FAT filesystem labelled
/// `bootfs` or `boot` (Raspberry Pi; on an MBR only in a FAT32 partition,
/// type 0x0b or 0x0c).
pub fn find_boot(image: &Image, wanted: Option<&str>) -> Result<BootPartition, ImageError> {
    type Rule<'a> = (String, Box<dyn Fn(&Found) -> bool + 'a>);
    let rules: Vec<Rule<'_>> = match wanted {
        Some(label) => vec![
            (
                format!("GPT name {label:?}"),
                Box::new(move |f: &Found| f.partition.name == label),
            ),
            (
                format!("filesystem label {label:?}"),
                Box::new(move |f: &Found| f.content.label() == Some(label)),
            ),
        ],
        None => {
            let mut rules: Vec<Rule<'_>> = Vec::new();
            for label in BOOT_LABELS {
                rules.push((
                    format!("GPT name {label:?}"),
                    Box::new(move |f: &Found| f.partition.name == label),
                ));
            }
            for label in BOOT_LABELS {
                rules.push((
                    format!("filesystem label {label:?}"),
                    Box::new(move |f: &Found| f.content.label() == Some(label)),
                ));
            }
            rules.push((
                "a Raspberry Pi boot partition (FAT labelled bootfs or boot)".into(),
                Box::new(|f: &Found| {
                    let Content::Fat { label } = &f.content else {
                        return false;
                    };
                    f.partition
                        .mbr_type
                        .is_none_or(|kind| MBR_TYPES_FAT32.contains(&kind))
                        && RASPBERRY_PI_LABELS
                            .iter()
                            .any(|pi| label.eq_ignore_ascii_case(pi))
                }),
            ));
            rules
        }
    };
    for (reason, matches) in &rules {
        let candidates: Vec<Found> = image
            .partitions
            .iter()
            .filter(|f| matches(f))
            .cloned()
            .collect();
        match candidates.len() {
            0 => continue,
            1 => {
                let found = candidates.into_iter().next().expect("one candidate");
                return Ok(BootPartition {
                    found,
                    reason: reason.clone(),
                });
            }
            _ => {
                return Err(ImageError::Ambiguous {
                    reason: reason.clone(),
                    candidates,
                });
            }
        }
    }
    let wanted = match wanted {
        Some(label) => format!("none has the GPT name or filesystem label {label:?}"),
        None => format!(
            "none has the GPT name or filesystem label {} or {}, nor is a FAT partition labelled bootfs or boot; \
             name it with --boot-partition LABEL",
            BOOT_LABELS[0], BOOT_LABELS[1]
        ),
    };
    Err(ImageError::NoBoot {
        wanted,
        partitions: image.partitions.clone(),
    })
}

/// Checks, without writing anything, that `files` can be written into the
/// boot partition: a filesystem tether writes, room for them, and no
/// `tether` entry in the way.
pub fn check_room(
    file: &File,
    image_path: &Path,
    boot: &BootPartition,
    files: &[BootFile],
) -> Result<(), ImageError> {
    let found = &boot.found;
    match &found.content {
        Content::Fat { .. } => fat::check(file, &found.partition, files),
        Content::Ext { .. } => ext::check(file, image_path, &found.partition, files),
        content => Err(ImageError::Unsupported {
            number: found.partition.number,
            content: content.clone(),
        }),
    }
}

/// Writes `files` into the boot partition's `tether/` directory, replacing
/// files of the same names.
pub fn write(
    file: &File,
    image_path: &Path,
    boot: &BootPartition,
    files: &[BootFile],
) -> Result<(), ImageError> {
    let found = &boot.found;
    match &found.content {
        Content::Fat { .. } => fat::write(file, &found.partition, files),
        Content::Ext { .. } => ext::write(image_path, &found.partition, files),
        content => Err(ImageError::Unsupported {
            number: found.partition.number,
            content: content.clone(),
        }),
    }
}

/// Where e2fsprogs' debugfs is: on `PATH`, or in the sbin directories a
/// non-root user's `PATH` often lacks.
fn debugfs_path() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("debugfs"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| "debugfs".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(number: u32, name: &str, mbr_type: Option<u8>, content: Content) -> Found {
        Found {
            partition: Partition {
                number,
                offset: u64::from(number) * 1_048_576,
                len: 1_048_576,
                name: name.into(),
                mbr_type,
            },
            content,
        }
    }

    fn fat(label: &str) -> Content {
        Content::Fat {
            label: label.into(),
        }
    }

    fn image(partitions: Vec<Found>) -> Image {
        Image {
            table: TableKind::Gpt,
            partitions,
        }
    }

    #[test]
    fn gpt_names_come_first_then_labels_then_a_raspberry_pi_s_bootfs() {
        let both = image(vec![
            found(1, "", Some(0x0C), fat("bootfs")),
            found(2, "TETHER_BOOT", None, Content::Unknown),
            found(
                3,
                "data",
                None,
                Content::Ext {
                    label: "EDGELQ_BOOT".into(),
                },
            ),
        ]);
        let boot = find_boot(&both, None).expect("found");
        assert_eq!(boot.found.partition.number, 2);
        assert_eq!(boot.reason, "GPT name \"TETHER_BOOT\"");

        let labels = image(vec![
            found(1, "", Some(0x0C), fat("bootfs")),
            found(
                3,
                "",
                Some(0x83),
                Content::Ext {
                    label: "EDGELQ_BOOT".into(),
                },
            ),
        ]);
        assert_eq!(
            find_boot(&labels, None)
                .expect("found")
                .found
                .partition
                .number,
            3
        );

        let pi = image(vec![
            found(1, "", Some(0x0C), fat("BOOTFS")),
            found(
                2,
                "",
                Some(0x83),
                Content::Ext {
                    label: "rootfs".into(),
                },
            ),
        ]);
        assert_eq!(
            find_boot(&pi, None).expect("found").found.partition.number,
            1
        );
        // A FAT16 partition labelled boot is not a Pi's boot partition.
        let not_pi = image(vec![found(1, "", Some(0x06), fat("boot"))]);
        let err = find_boot(&not_pi, None).expect_err("none");
        assert!(err.to_string().contains("MBR type 0x06"), "{err}");
    }

    #[test]
    fn a_named_partition_and_an_ambiguous_one() {
        let two = image(vec![
            found(1, "", Some(0x0C), fat("bootfs")),
            found(2, "", Some(0x0C), fat("boot")),
        ]);
        let err = find_boot(&two, None).expect_err("two");
        assert!(
            err.to_string()
                .starts_with("2 partitions could be the boot partition"),
            "{err}"
        );
        let named = find_boot(&two, Some("boot")).expect("named");
        assert_eq!(named.found.partition.number, 2);
        let err = find_boot(&two, Some("firmware")).expect_err("no such label");
        let message = err.to_string();
        assert!(message.contains("\"firmware\""), "{message}");
        assert!(message.contains("#1 at byte 1048576"), "{message}");
        assert!(message.contains("FAT, label \"bootfs\""), "{message}");
    }

    #[test]
    fn filesystems_are_told_apart_by_their_first_bytes() {
        let mut ext = vec![0; 4096];
        ext[0x438..0x43A].copy_from_slice(&[0x53, 0xEF]);
        ext[0x478..0x483].copy_from_slice(b"EDGELQ_BOOT");
        assert_eq!(
            recognise(&ext),
            Content::Ext {
                label: "EDGELQ_BOOT".into()
            }
        );

        let mut fat32 = vec![0; 512];
        fat32[11..13].copy_from_slice(&512_u16.to_le_bytes());
        fat32[0x47..0x52].copy_from_slice(b"bootfs     ");
        fat32[0x52..0x57].copy_from_slice(b"FAT32");
        fat32[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(recognise(&fat32), fat("bootfs"));

        assert_eq!(recognise(b"XFSB...."), Content::Other("XFS"));
        assert_eq!(recognise(&[0; 4096]), Content::Unknown);
    }
}
