//! A partition of an image file as a stream of its own: reads, writes and
//! seeks are relative to the partition's first byte, and nothing outside
//! its byte range can be read or written through it, whatever the
//! filesystem code on top asks for.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// `len` bytes of `file` from `offset`.
#[derive(Debug)]
pub struct PartitionWindow<'a> {
    file: &'a File,
    offset: u64,
    len: u64,
    position: u64,
    writable: bool,
}

impl<'a> PartitionWindow<'a> {
    /// A window that can be written.
    pub fn new(file: &'a File, offset: u64, len: u64) -> Self {
        PartitionWindow {
            file,
            offset,
            len,
            position: 0,
            writable: true,
        }
    }

    /// A window that refuses every write: for looking at a filesystem
    /// before anything is written (a filesystem library may want to update
    /// its bookkeeping on the way out).
    pub fn read_only(file: &'a File, offset: u64, len: u64) -> Self {
        PartitionWindow {
            writable: false,
            ..Self::new(file, offset, len)
        }
    }

    /// How many of `wanted` bytes from the current position still lie in
    /// the partition.
    fn room(&self, wanted: usize) -> usize {
        let left = self.len.saturating_sub(self.position);
        usize::try_from(left).map_or(wanted, |left| left.min(wanted))
    }
}

impl Read for PartitionWindow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        let read = self
            .file
            .read_at(&mut buf[..n], self.offset + self.position)?;
        self.position += read as u64;
        Ok(read)
    }
}

impl Write for PartitionWindow<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the partition is only being inspected",
            ));
        }
        if self.room(buf.len()) < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a write of {} bytes at byte {} of the partition would pass its end ({} bytes)",
                    buf.len(),
                    self.position,
                    self.len
                ),
            ));
        }
        let written = self.file.write_at(buf, self.offset + self.position)?;
        self.position += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for PartitionWindow<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
        };
        match target {
            Some(position) => {
                self.position = position;
                Ok(position)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a seek before the partition's start",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_outside_the_window_is_read_or_written() {
        let mut file = tempfile::tempfile().expect("a temp file");
        file.write_all(&[b'.'; 64]).expect("writes");
        let mut window = PartitionWindow::new(&file, 16, 16);

        window.seek(SeekFrom::Start(12)).expect("seeks");
        window.write_all(b"abcd").expect("fits");
        let err = window.write(b"x").expect_err("past the end");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        window.seek(SeekFrom::Start(14)).expect("seeks");
        let err = window.write(b"xyz").expect_err("partly past the end");
        assert!(err.to_string().contains("pass its end"), "{err}");
        assert!(window.seek(SeekFrom::Current(-15)).is_err());

        window.seek(SeekFrom::End(-4)).expect("seeks");
        let mut tail = Vec::new();
        window.read_to_end(&mut tail).expect("reads");
        assert_eq!(tail, b"abcd", "reading stops at the partition's end");

        let mut read_only = PartitionWindow::read_only(&file, 16, 16);
        let err = read_only.write(b"x").expect_err("read-only");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);

        let mut all = Vec::new();
        file.seek(SeekFrom::Start(0)).expect("seeks");
        file.read_to_end(&mut all).expect("reads");
        let mut expected = vec![b'.'; 64];
        expected[28..32].copy_from_slice(b"abcd");
        assert_eq!(all, expected);
    }
}
