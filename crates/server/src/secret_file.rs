//! Files only tetherd's user may read: keys, credentials, the data dir and
//! everything in it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` with mode 0600, replacing it atomically so a
/// crash never leaves a half-written key behind. The temporary file is
/// created new (never reusing one a crash left, whose mode could be wider),
/// and the directory is synced so the rename survives a power cut.
pub fn write(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let nonce: u64 = rand::random();
    let tmp = path.with_file_name(format!(".{}.{nonce:016x}.tmp", file_name.to_string_lossy()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Why the data dir cannot be made private.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    #[error("could not create the data dir {path}: check that its parent exists and is writable")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not inspect {path}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} belongs to uid {owner} but tetherd runs as uid {uid}, so it cannot make it private: \
         run `chown -R {uid} {data_dir}` or start tetherd as uid {owner}"
    )]
    NotOwner {
        path: PathBuf,
        data_dir: PathBuf,
        owner: u32,
        uid: u32,
    },
    #[error(
        "{path} is a symbolic link to {target}, which is missing, not owned by uid {uid} or readable by others, \
         so what tetherd writes there could be read or replaced by another user: remove the link, \
         or make its target exist, belong to uid {uid} and be mode 600 (700 for a directory)"
    )]
    OpenLink {
        path: PathBuf,
        target: PathBuf,
        uid: u32,
    },
    #[error(
        "could not restrict {path} to mode {mode:o}: run `chmod -R go-rwx {data_dir}` as its owner"
    )]
    Chmod {
        path: PathBuf,
        data_dir: PathBuf,
        mode: u32,
        #[source]
        source: std::io::Error,
    },
}

/// Makes `dir` private whatever existed before: creates it 0700 if missing,
/// then sets it and every directory below it to 0700 and every file to 0600.
/// A pre-created 0755 dir (systemd's `StateDirectory=` default) would
/// otherwise leave the database and its `-wal`/`-shm` readable by everyone.
/// Anything owned by another user is refused by name, since only its owner
/// (or root) could change it and tetherd should not run as either by accident.
/// Symlinks inside are not changed (chmod would follow them out of the dir)
/// but must be ours and lead to something of ours that is already private:
/// a link planted before the dir was private would otherwise have tetherd
/// write its database or keys wherever it points, even to a file created
/// later. The data dir itself may be one (e.g. onto a data volume).
pub fn make_private_dir(dir: &Path) -> Result<(), PrivateDirError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PrivateDirError::Create {
            path: dir.to_owned(),
            source,
        })?;
    let uid = nix::unistd::geteuid().as_raw();
    restrict(dir, dir, uid)
}

fn restrict(path: &Path, data_dir: &Path, uid: u32) -> Result<(), PrivateDirError> {
    let inspect = |source| PrivateDirError::Inspect {
        path: path.to_owned(),
        source,
    };
    let meta = if path == data_dir {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    }
    .map_err(inspect)?;
    if meta.file_type().is_symlink() {
        return check_link(path, meta.uid(), uid);
    }
    if meta.uid() != uid {
        return Err(PrivateDirError::NotOwner {
            path: path.to_owned(),
            data_dir: data_dir.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    if meta.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(
            |source| PrivateDirError::Chmod {
                path: path.to_owned(),
                data_dir: data_dir.to_owned(),
                mode,
                source,
            },
        )?;
        tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "restricted permissions");
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(inspect)? {
            restrict(&entry.map_err(inspect)?.path(), data_dir, uid)?;
        }
    }
    Ok(())
}

fn check_link(path: &Path, link_owner: u32, uid: u32) -> Result<(), PrivateDirError> {
    let target = std::fs::read_link(path).unwrap_or_default();
    let private = std::fs::metadata(path).is_ok_and(|target| {
        let allowed = if target.is_dir() { 0o700 } else { 0o600 };
        target.uid() == uid && target.permissions().mode() & 0o777 & !allowed == 0
    });
    if link_owner == uid && private {
        return Ok(());
    }
    Err(PrivateDirError::OpenLink {
        path: path.to_owned(),
        target,
        uid,
    })
}

/// Files tetherd creates from now on (SQLite's database, `-wal` and `-shm`
/// among them, which SQLite opens with 0644) are private to its user.
pub fn restrict_new_files() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "old").expect("an older, world-readable file");
        write(&path, b"new secret").expect("writes");
        assert_eq!(std::fs::read(&path).expect("reads"), b"new secret");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers = std::fs::read_dir(dir.path()).expect("lists").count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }

    #[test]
    fn a_pre_created_open_dir_becomes_private_all_the_way_down() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().join("data");
        std::fs::create_dir(&dir).expect("creates");
        std::fs::create_dir(dir.join("sub")).expect("creates");
        for file in ["tether.db", "tether.db-wal", "sub/x"] {
            std::fs::write(dir.join(file), "x").expect("writes");
            std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        make_private_dir(&dir).expect("makes it private");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("sub")), 0o700);
        for file in ["tether.db", "tether.db-wal", "sub/x"] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
    }

    #[test]
    fn a_data_dir_reached_through_a_symlink_is_made_private() {
        let temp = tempfile::tempdir().expect("tempdir");
        let volume = temp.path().join("volume");
        std::fs::create_dir(&volume).expect("creates");
        std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let dir = temp.path().join("data");
        std::os::unix::fs::symlink(&volume, &dir).expect("links");
        make_private_dir(&dir).expect("makes it private");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&volume), 0o700);
    }

    #[test]
    fn links_inside_to_anything_not_already_private_are_refused_and_not_followed() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().join("data");
        std::fs::create_dir(&dir).expect("creates");
        let outside = temp.path().join("outside.txt");
        std::fs::write(&outside, "x").expect("writes");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;

        // Planted while the dir was open: SQLite would create its -wal
        // wherever this points, with whatever mode that place gives it.
        let dangling = dir.join("tether.db-wal");
        std::os::unix::fs::symlink(temp.path().join("later"), &dangling).expect("links");
        let error = make_private_dir(&dir).expect_err("a dangling link");
        assert!(error.to_string().contains("tether.db-wal"), "{error}");
        std::fs::remove_file(&dangling).expect("removes");

        let open = dir.join("tether.db");
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::symlink(&outside, &open).expect("links");
        let error = make_private_dir(&dir).expect_err("a link to a readable file");
        assert!(error.to_string().contains("remove the link"), "{error}");
        assert_eq!(
            mode(&outside),
            0o644,
            "a file outside the dir is not touched"
        );

        // The operator's own link to a private file is fine.
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        make_private_dir(&dir).expect("a link to a private file of ours");
    }

    #[test]
    fn a_missing_dir_is_created_private() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().join("a/b");
        make_private_dir(&dir).expect("creates");
        let mode = std::fs::metadata(&dir)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }
}
