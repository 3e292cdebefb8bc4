//! `upload` and `download` tunnels (`tether cp`): one file each way. An
//! upload is written beside its destination and renamed over it only once
//! every announced byte arrived and reached the disk, so a file is
//! replaced whole or not at all.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use futures::{SinkExt as _, StreamExt as _};
use tether_proto::tunnel::{self, Control};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Socket, binary, failed, incoming};

/// Permission bits of an upload that names none.
const DEFAULT_MODE: u32 = 0o644;

/// Writes the client's `size` bytes to `path` with `mode`.
pub async fn receive(socket: Socket, path: String, size: u64, mode: Option<u32>, max: u64) {
    let (mut sender, receiver) = socket.split();
    let done = match write_file(receiver, Path::new(&path), size, mode, max).await {
        Ok(()) => {
            tracing::info!(%path, size, "tunnel wrote a file");
            binary(tunnel::control(&Control::Exit {
                code: Some(0),
                signal: None,
            }))
        }
        Err(Failure::ClientGone) => return,
        Err(Failure::Refused(status, message)) => failed(status, message),
    };
    let _ = sender.send(done).await;
    let _ = sender.close().await;
}

/// Sends the file at `path`: its size and mode, its bytes, the end.
pub async fn send(socket: Socket, path: String, max: u64) {
    let (mut sender, _receiver) = socket.split();
    let file = match open_regular(Path::new(&path), max).await {
        Ok(file) => file,
        Err((status, message)) => {
            let _ = sender.send(failed(status, message)).await;
            let _ = sender.close().await;
            return;
        }
    };
    let (file, size, mode) = file;
    let header = Control::File { size, mode };
    if sender.send(binary(tunnel::control(&header))).await.is_err() {
        return;
    }
    // A file that grows meanwhile is cut at the announced size; one that
    // shrinks arrives short, and the client says so.
    let mut file = file.take(size);
    let mut buffer = vec![0; tunnel::MAX_PAYLOAD];
    loop {
        match file.read(&mut buffer).await {
            Ok(0) => break,
            Ok(read) => {
                let frame = tunnel::frame(tunnel::STDOUT, &buffer[..read]);
                if sender.send(binary(frame)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = sender
                    .send(failed(500, format!("cannot read {path}: {error}")))
                    .await;
                let _ = sender.close().await;
                return;
            }
        }
    }
    let _ = sender
        .send(binary(tunnel::frame(tunnel::CLOSE, &[tunnel::STDOUT])))
        .await;
    let exit = Control::Exit {
        code: Some(0),
        signal: None,
    };
    let _ = sender.send(binary(tunnel::control(&exit))).await;
    let _ = sender.close().await;
}

/// Why an upload did not replace its file.
enum Failure {
    /// The socket ended before the file: nobody to tell.
    ClientGone,
    /// Told to the client: a status as HTTP's and why.
    Refused(u16, String),
}

async fn write_file(
    receiver: futures::stream::SplitStream<Socket>,
    path: &Path,
    size: u64,
    mode: Option<u32>,
    max: u64,
) -> Result<(), Failure> {
    let shown = path.display();
    if size > max {
        return Err(Failure::Refused(
            413,
            format!(
                "the file is {size} bytes; this device takes at most {max} (tether-agent --max-copy-bytes)"
            ),
        ));
    }
    let (Some(directory), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Failure::Refused(
            400,
            format!("{shown} does not name a file"),
        ));
    };
    if tokio::fs::metadata(path)
        .await
        .is_ok_and(|meta| meta.is_dir())
    {
        return Err(Failure::Refused(
            409,
            format!("{shown} is a directory: name the file, e.g. {shown}/FILE"),
        ));
    }
    let partial = directory.join(format!(
        ".{}.tether-{:016x}",
        name.to_string_lossy(),
        rand::random::<u64>()
    ));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .await
        .map_err(|error| {
            refused_io(
                &error,
                &format!("cannot create a file in {}", directory.display()),
            )
        })?;
    let written = copy_in(receiver, &mut file, size).await;
    let finished = match written {
        Ok(()) => finish(file, &partial, path, mode.unwrap_or(DEFAULT_MODE)).await,
        Err(failure) => Err(failure),
    };
    if finished.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    finished
}

/// The client's bytes into `file`: exactly `size` of them, then the end.
async fn copy_in(
    receiver: futures::stream::SplitStream<Socket>,
    file: &mut tokio::fs::File,
    size: u64,
) -> Result<(), Failure> {
    let mut frames = incoming(receiver);
    let mut written = 0u64;
    while let Some((channel, bytes)) = frames.next().await {
        match (channel, &bytes[..]) {
            (tunnel::STDIN, bytes) => {
                written += bytes.len() as u64;
                if written > size {
                    return Err(Failure::Refused(
                        400,
                        format!("more than the announced {size} bytes arrived"),
                    ));
                }
                file.write_all(bytes)
                    .await
                    .map_err(|error| refused_io(&error, "cannot write the file"))?;
            }
            (tunnel::CLOSE, [tunnel::STDIN]) if written == size => return Ok(()),
            (tunnel::CLOSE, [tunnel::STDIN]) => {
                return Err(Failure::Refused(
                    400,
                    format!("the upload ended after {written} of {size} bytes"),
                ));
            }
            _ => {}
        }
    }
    Err(Failure::ClientGone)
}

/// On disk, then in place: a crash leaves the old file or the new one.
async fn finish(
    file: tokio::fs::File,
    partial: &Path,
    path: &Path,
    mode: u32,
) -> Result<(), Failure> {
    let io =
        |error: std::io::Error| refused_io(&error, &format!("cannot write {}", path.display()));
    // Never setuid, setgid or sticky, whatever the request says.
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
        .await
        .map_err(io)?;
    file.sync_all().await.map_err(io)?;
    drop(file);
    tokio::fs::rename(partial, path).await.map_err(io)?;
    if let Some(directory) = path.parent()
        && let Ok(directory) = tokio::fs::File::open(directory).await
    {
        let _ = directory.sync_all().await;
    }
    Ok(())
}

/// The file at `path` if it is a regular one within `max`: it, its size
/// and permission bits.
async fn open_regular(path: &Path, max: u64) -> Result<(tokio::fs::File, u64, u32), (u16, String)> {
    let shown = path.display();
    let io = |error: std::io::Error| match refused_io(&error, &format!("cannot read {shown}")) {
        Failure::Refused(status, message) => (status, message),
        Failure::ClientGone => (500, String::new()),
    };
    // Checked before opening: opening a FIFO blocks, and opening some
    // devices acts (a watchdog arms).
    if !tokio::fs::metadata(path).await.map_err(io)?.is_file() {
        return Err((400, format!("{shown} is not a regular file")));
    }
    let file = tokio::fs::File::open(path).await.map_err(io)?;
    let meta = file.metadata().await.map_err(io)?;
    if !meta.is_file() {
        return Err((400, format!("{shown} is not a regular file")));
    }
    if meta.len() > max {
        return Err((
            413,
            format!(
                "{shown} is {} bytes; this device sends at most {max} (tether-agent --max-copy-bytes)",
                meta.len()
            ),
        ));
    }
    Ok((file, meta.len(), meta.permissions().mode() & 0o7777))
}

/// An IO error as the client is told it: not found 404, no permission 403,
/// a full disk 507, else 500.
fn refused_io(error: &std::io::Error, what: &str) -> Failure {
    use std::io::ErrorKind;
    let status = match error.kind() {
        ErrorKind::NotFound => 404,
        ErrorKind::PermissionDenied => 403,
        ErrorKind::StorageFull => 507,
        _ => 500,
    };
    Failure::Refused(status, format!("{what}: {error}"))
}
