//! What a feed writes to: a watchdog device (`/dev/watchdog`, Linux's
//! watchdog API: any write but `V` restarts its timer), or systemd's
//! notify socket (`tether_proto::sd_notify`) when systemd runs the agent
//! with `WatchdogSec=`.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Written to the device on each feed.
const FEED: &[u8] = b"\0";
/// Written before closing to disarm the device ("magic close"): drivers
/// without `nowayout` then stop the timer instead of resetting.
const MAGIC_CLOSE: &[u8] = b"V";

/// A watchdog device, opened at the first feed and kept open: closing it
/// without the magic `V` leaves the timer running, which is what a crash
/// should do.
#[derive(Debug)]
pub struct WatchdogDevice {
    path: PathBuf,
    file: Option<File>,
}

impl WatchdogDevice {
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Restarts the device's timer, opening it first if needed. Opened
    /// non-blocking: a FIFO standing in for the device in tests, with no
    /// reader yet, fails the feed instead of blocking the agent.
    pub fn feed(&mut self) -> Result<(), String> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(&self.path)
                .map_err(|error| format!("cannot open {}: {error}", self.path.display()))?;
            // A watchdog is a character device (a FIFO stands in for one in
            // tests): a mistyped path to a regular file must not be
            // overwritten by the feed, as root, every interval.
            let kind = file
                .metadata()
                .map_err(|error| format!("cannot inspect {}: {error}", self.path.display()))?
                .file_type();
            if !(kind.is_char_device() || kind.is_fifo()) {
                return Err(format!(
                    "{} is not a watchdog device (not a character device); nothing written",
                    self.path.display()
                ));
            }
            tracing::info!(device = %self.path.display(), "watchdog device opened: its timer runs from now");
            self.file = Some(file);
        }
        let written = self.file.as_mut().map(|file| file.write_all(FEED));
        match written {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => {
                // Opened again at the next feed.
                self.file = None;
                Err(format!("cannot write to {}: {error}", self.path.display()))
            }
            None => Ok(()),
        }
    }

    /// Closes the device; with `disarm`, writes the magic `V` first so
    /// the timer stops (on purpose only: the spec turned the watchdog off,
    /// or the agent stops and is configured to disarm).
    pub fn close(&mut self, disarm: bool) {
        let Some(mut file) = self.file.take() else {
            return;
        };
        if disarm {
            match file.write_all(MAGIC_CLOSE) {
                Ok(()) => {
                    tracing::info!(device = %self.path.display(), "watchdog device disarmed and closed")
                }
                Err(error) => {
                    tracing::warn!(device = %self.path.display(), %error, "cannot disarm the watchdog device; its timer keeps running")
                }
            }
        } else {
            tracing::warn!(device = %self.path.display(), "watchdog device closed armed: the machine resets unless it is fed again in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_named_as_the_device_is_never_written() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tether-agent");
        std::fs::write(&path, b"a binary").expect("written");
        let mut device = WatchdogDevice::new(path.clone());
        let error = device.feed().expect_err("refused");
        assert!(error.contains("not a watchdog device"), "{error}");
        assert_eq!(std::fs::read(&path).expect("read"), b"a binary");
    }

    #[test]
    fn a_device_is_fed_with_writes_and_disarmed_only_when_asked() {
        use std::io::Read as _;
        let dir = tempfile::tempdir().expect("temp dir");
        // A FIFO stands in for the device; its reader sees every write.
        let path = dir.path().join("watchdog");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&path)
            .expect("the reader opens");
        let mut read = |want: usize| {
            let mut got = vec![0u8; want];
            reader.read_exact(&mut got).expect("written");
            got
        };
        let mut device = WatchdogDevice::new(path.clone());
        device.feed().expect("fed");
        device.feed().expect("fed");
        device.close(false);
        assert_eq!(read(2), b"\0\0");
        device.feed().expect("opened again");
        device.close(true);
        assert_eq!(read(2), b"\0V");
        let mut missing = WatchdogDevice::new(dir.path().join("none"));
        let error = missing.feed().expect_err("no device");
        assert!(error.contains("cannot open"), "{error}");
    }
}
