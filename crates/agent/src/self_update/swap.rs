//! Swapping the agent's executable: the new binary is written beside the
//! running one (same directory, so the final rename is atomic), fsync'd
//! and made 0755; the running one is kept as `<exe>.previous`; then the
//! new one is renamed over the executable. At every moment the
//! executable's path holds a whole binary, old or new.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Where the previous binary is kept: `<exe>.previous`.
pub fn previous_path(exe: &Path) -> PathBuf {
    let mut name = exe.file_name().unwrap_or_default().to_os_string();
    name.push(".previous");
    exe.with_file_name(name)
}

fn directory(exe: &Path) -> io::Result<&Path> {
    exe.parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", exe.display())))
}

fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Puts `new_binary` in place of `exe`, keeping the binary that was there
/// as [`previous_path`] (replacing an older one).
pub fn install(exe: &Path, new_binary: &Path) -> io::Result<()> {
    let dir = directory(exe)?;
    let name = exe.file_name().unwrap_or_default().to_string_lossy();
    let staged = dir.join(format!(".{name}.new.{}", rand::random::<u64>()));
    let result = (|| {
        let mut from = File::open(new_binary)?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&staged)?;
        io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        keep_previous(exe)?;
        fs::rename(&staged, exe)?;
        sync_directory(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&staged);
    }
    result
}

/// Keeps the current `exe` as `<exe>.previous`: a hard link (the same
/// file, no copy), or a copy where the file system has no links.
fn keep_previous(exe: &Path) -> io::Result<()> {
    let previous = previous_path(exe);
    match fs::remove_file(&previous) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if fs::hard_link(exe, &previous).is_err() {
        let mut from = File::open(exe)?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&previous)?;
        io::copy(&mut from, &mut to)?;
        to.sync_all()?;
    }
    Ok(())
}

/// Puts the previous binary back over `exe`, atomically. An error if there
/// is none (restored already, or never kept).
pub fn restore(exe: &Path) -> io::Result<()> {
    let previous = previous_path(exe);
    fs::rename(&previous, exe).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot put {} back: {e}", previous.display()),
        )
    })?;
    sync_directory(directory(exe)?)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_swap_keeps_the_previous_binary_and_a_restore_puts_it_back() {
        let dir = tempfile::tempdir().expect("dir");
        let exe = dir.path().join("tether-agent");
        fs::write(&exe, b"old agent").expect("old");
        let download = dir.path().join("download");
        fs::write(&download, b"new agent").expect("new");

        install(&exe, &download).expect("swapped");
        assert_eq!(fs::read(&exe).expect("exe"), b"new agent");
        assert_eq!(
            fs::metadata(&exe).expect("meta").permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read(previous_path(&exe)).expect("previous"),
            b"old agent"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        restore(&exe).expect("restored");
        assert_eq!(fs::read(&exe).expect("exe"), b"old agent");
        assert!(!previous_path(&exe).exists());
        let error = restore(&exe).expect_err("nothing to restore");
        assert!(error.to_string().contains(".previous"), "{error}");
    }

    #[test]
    fn a_failed_swap_leaves_the_executable_alone() {
        let dir = tempfile::tempdir().expect("dir");
        let exe = dir.path().join("tether-agent");
        fs::write(&exe, b"old agent").expect("old");
        assert!(install(&exe, &dir.path().join("missing")).is_err());
        assert_eq!(fs::read(&exe).expect("exe"), b"old agent");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1);
    }
}
