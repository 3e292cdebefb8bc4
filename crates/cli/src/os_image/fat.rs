//! The bundle into a FAT boot partition (Raspberry Pi), with the `fatfs`
//! crate over a [`PartitionWindow`]: the crate sees the partition alone.

use std::fs::File;
use std::io::{self, Write};

use fatfs::{FileSystem, FsOptions, TimeProvider};
use tether_proto::provisioning::BOOT_BUNDLE_DIR;

use super::window::PartitionWindow;
use super::{BootFile, ImageError, Partition};

/// File times from the system clock in UTC (FAT keeps no zone; without
/// this, fatfs stamps 1980-01-01).
#[derive(Debug)]
struct UtcClock;

static UTC_CLOCK: UtcClock = UtcClock;

impl TimeProvider for UtcClock {
    fn get_current_date(&self) -> fatfs::Date {
        self.get_current_date_time().date
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        use chrono::{Datelike, Timelike};
        let now = chrono::Utc::now();
        // FAT dates run from 1980 to 2107.
        let year = now.year().clamp(1980, 2107) as u16;
        fatfs::DateTime {
            date: fatfs::Date {
                year,
                month: now.month() as u16,
                day: now.day() as u16,
            },
            time: fatfs::Time {
                hour: now.hour() as u16,
                min: now.minute() as u16,
                sec: now.second() as u16,
                millis: 0,
            },
        }
    }
}

fn options() -> FsOptions {
    FsOptions::new()
        .update_accessed_date(false)
        .time_provider(&UTC_CLOCK)
}

/// Room for `files` (and the directory, if it is new), and no file named
/// `tether` in the way. Nothing is written: the window refuses writes.
pub(super) fn check(
    file: &File,
    partition: &Partition,
    files: &[BootFile],
) -> Result<(), ImageError> {
    let window = PartitionWindow::read_only(file, partition.offset, partition.len);
    let fs = FileSystem::new(window, options())
        .map_err(|err| ImageError::Filesystem(format!("fatfs cannot read it: {err}")))?;
    let cluster = u64::from(fs.cluster_size());
    let existing = fs
        .root_dir()
        .iter()
        .filter_map(Result::ok)
        .find(|entry| entry.file_name().eq_ignore_ascii_case(BOOT_BUNDLE_DIR));
    let mut needed: u64 = files
        .iter()
        .map(|f| (f.contents.len() as u64).div_ceil(cluster).max(1))
        .sum();
    match existing {
        Some(entry) if !entry.is_dir() => {
            return Err(ImageError::Filesystem(format!(
                "/{BOOT_BUNDLE_DIR} on it is a file, not a directory; remove it first"
            )));
        }
        Some(_) => {}
        None => needed += 1,
    }
    let free = u64::from(
        fs.stats()
            .map_err(|err| ImageError::Filesystem(format!("cannot count free clusters: {err}")))?
            .free_clusters(),
    );
    if free < needed {
        return Err(ImageError::Full(format!(
            "{free} free clusters of {cluster} bytes, the bundle needs {needed}"
        )));
    }
    // Dropping the filesystem may try to write its bookkeeping back; the
    // read-only window refuses, and nothing changed that needs it.
    drop(fs);
    Ok(())
}

pub(super) fn write(
    file: &File,
    partition: &Partition,
    files: &[BootFile],
) -> Result<(), ImageError> {
    let window = PartitionWindow::new(file, partition.offset, partition.len);
    let fs = FileSystem::new(window, options()).map_err(ImageError::WriteFat)?;
    write_files(&fs, files).map_err(ImageError::WriteFat)?;
    fs.unmount().map_err(ImageError::WriteFat)?;
    file.sync_data().map_err(ImageError::WriteFat)
}

fn write_files(fs: &FileSystem<PartitionWindow<'_>>, files: &[BootFile]) -> io::Result<()> {
    let root = fs.root_dir();
    let dir = match root.open_dir(BOOT_BUNDLE_DIR) {
        Ok(dir) => dir,
        Err(err) if err.kind() == io::ErrorKind::NotFound => root.create_dir(BOOT_BUNDLE_DIR)?,
        Err(err) => return Err(err),
    };
    for boot_file in files {
        let mut out = dir.create_file(boot_file.name)?;
        out.truncate()?;
        out.write_all(&boot_file.contents)?;
        out.flush()?;
    }
    Ok(())
}
