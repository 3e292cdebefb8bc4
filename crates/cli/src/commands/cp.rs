//! `tether cp SOURCE DESTINATION`: one file to or from a device through a
//! tunnel (ADR 0021), with a progress bar on a terminal. Either side is
//! written beside its destination and renamed into place once whole, so
//! a copy that fails leaves the old file as it was.

use std::io::IsTerminal as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures::StreamExt as _;
use tether_proto::tunnel::{self, Control};
use tokio::io::{AsyncRead, AsyncWriteExt as _, ReadBuf};

use super::{CommandError, Context, Outcome};
use crate::tunnel as tunnel_io;

/// Copy a file to or from a device.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
A path on a device is DEVICE:/ABSOLUTE/PATH; a local path with a colon
before its first slash is written ./like:this. A destination that ends in
/ (or is a local directory) gets the source's file name. The device's
agent bounds the size (tether-agent --max-copy-bytes, 1 GiB by default).

Examples:
  tether cp ./app.conf edge-1:/etc/app/app.conf
  tether cp edge-1:/var/log/app.log .")]
pub struct Cp {
    /// The file to copy: a local path or DEVICE:/PATH.
    pub source: String,
    /// Where to copy it: DEVICE:/PATH or a local path (the other side's kind).
    pub destination: String,
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Local(PathBuf),
    Device { device: String, path: String },
}

impl Location {
    /// `DEVICE:/PATH` when a device name (no slash) comes before the first
    /// colon; anything else is local.
    fn parse(spec: &str) -> Location {
        match spec.split_once(':') {
            Some((device, path)) if !device.is_empty() && !device.contains('/') => {
                Location::Device {
                    device: device.to_owned(),
                    path: path.to_owned(),
                }
            }
            _ => Location::Local(PathBuf::from(spec)),
        }
    }
}

/// `path` itself, or `path` + `name` when it names a directory.
fn into_directory(path: &str, name: &str) -> String {
    if path.ends_with('/') {
        format!("{path}{name}")
    } else {
        path.to_owned()
    }
}

impl Cp {
    pub fn description(&self) -> String {
        format!("copy {} to {}", self.source, self.destination)
    }

    /// Which way the file goes: one side must be local, the other on a
    /// device.
    pub fn direction(&self) -> Result<Direction, clap::Error> {
        match (
            Location::parse(&self.source),
            Location::parse(&self.destination),
        ) {
            (Location::Local(source), Location::Device { device, path }) => Ok(Direction::Upload {
                source,
                device,
                path,
            }),
            (Location::Device { device, path }, Location::Local(destination)) => {
                Ok(Direction::Download {
                    device,
                    path,
                    destination,
                })
            }
            _ => Err(clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                "one side must be local and the other DEVICE:/PATH\n",
            )),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        match self
            .direction()
            .map_err(|error| CommandError::Usage(error.to_string()))?
        {
            Direction::Upload {
                source,
                device,
                path,
            } => upload(ctx, &source, &device, &path).await,
            Direction::Download {
                device,
                path,
                destination,
            } => download(ctx, &device, &path, &destination).await,
        }
    }
}

/// A copy's way.
#[derive(Debug)]
pub enum Direction {
    Upload {
        source: PathBuf,
        device: String,
        path: String,
    },
    Download {
        device: String,
        path: String,
        destination: PathBuf,
    },
}

async fn upload(
    ctx: &Context,
    source: &Path,
    device: &str,
    path: &str,
) -> Result<Outcome, CommandError> {
    let local = |error: std::io::Error| CommandError::Local {
        path: source.to_owned(),
        source: error,
    };
    let file = tokio::fs::File::open(source).await.map_err(local)?;
    let meta = file.metadata().await.map_err(local)?;
    if !meta.is_file() {
        return Err(CommandError::Usage(format!(
            "{} is not a regular file",
            source.display()
        )));
    }
    let name = source
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = into_directory(path, &name);
    if !path.starts_with('/') {
        return Err(CommandError::Usage(format!(
            "{device}:{path}: the path on the device must be absolute"
        )));
    }
    let size = meta.len().to_string();
    let mode = format!("{:o}", meta.permissions().mode() & 0o777);
    let query = [
        ("kind", "upload"),
        ("path", path.as_str()),
        ("size", size.as_str()),
        ("mode", mode.as_str()),
    ];
    let socket = ctx.client()?.tunnel(device, &query).await?;
    let bar = progress_bar(meta.len());
    let (sender, receiver) = socket.split();
    let counted = Counted {
        inner: file,
        bar: bar.clone(),
    };
    let input = tokio::spawn(tunnel_io::send_input(counted, sender));
    let mut frames = tunnel_io::incoming(receiver);
    let mut outcome = Outcome::Failed {
        reason: format!("the tunnel closed before {device} confirmed {path}"),
    };
    while let Some((channel, bytes)) = frames.next().await {
        if channel != tunnel::CONTROL {
            continue;
        }
        match serde_json::from_slice(&bytes) {
            Ok(Control::Exit { code: Some(0), .. }) => {
                outcome = Outcome::Success;
                break;
            }
            Ok(Control::Error { status, message }) => {
                outcome = Outcome::Failed {
                    reason: format!("{message} ({status})"),
                };
                break;
            }
            _ => {}
        }
    }
    input.abort();
    finish_bar(bar, &outcome);
    Ok(outcome)
}

async fn download(
    ctx: &Context,
    device: &str,
    path: &str,
    destination: &Path,
) -> Result<Outcome, CommandError> {
    let name = path.rsplit('/').next().unwrap_or_default();
    let destination = if destination.is_dir() {
        destination.join(name)
    } else {
        PathBuf::from(into_directory(&destination.to_string_lossy(), name))
    };
    let socket = ctx
        .client()?
        .tunnel(device, &[("kind", "download"), ("path", path)])
        .await?;
    let (_sender, receiver) = socket.split();
    let mut frames = tunnel_io::incoming(receiver);
    let partial = partial_path(&destination);
    let received = receive(&mut frames, &partial).await;
    let outcome = match received {
        Ok(Some(())) => {
            let local = |error: std::io::Error| CommandError::Local {
                path: destination.clone(),
                source: error,
            };
            tokio::fs::rename(&partial, &destination)
                .await
                .map_err(local)?;
            Outcome::Success
        }
        Ok(None) => Outcome::Failed {
            reason: format!("the tunnel closed before {device} sent all of {path}"),
        },
        Err(failure) => failure,
    };
    if outcome != Outcome::Success {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    Ok(outcome)
}

/// Reads a download into `partial` with the device's mode bits: `Some`
/// once it arrived whole, `None` if the tunnel ended first, or the
/// device's refusal.
async fn receive(
    frames: &mut (impl futures::Stream<Item = (u8, tokio_tungstenite::tungstenite::Bytes)> + Unpin),
    partial: &Path,
) -> Result<Option<()>, Outcome> {
    let local = |error: std::io::Error| Outcome::Failed {
        reason: format!("cannot write {}: {error}", partial.display()),
    };
    let mut file = None;
    let mut announced = (0, 0);
    let mut written = 0u64;
    let mut bar = None;
    while let Some((channel, bytes)) = frames.next().await {
        match channel {
            tunnel::STDOUT => {
                let Some(file) = file.as_mut() else {
                    continue;
                };
                written += bytes.len() as u64;
                // A device sending more than it announced would fill this
                // disk: the announced size was shown and is the limit.
                if written > announced.0 {
                    return Err(Outcome::Failed {
                        reason: format!(
                            "the device sent more than the {} bytes it announced",
                            announced.0
                        ),
                    });
                }
                tokio::io::AsyncWriteExt::write_all(file, &bytes)
                    .await
                    .map_err(local)?;
                if let Some(bar) = &bar {
                    indicatif::ProgressBar::inc(bar, bytes.len() as u64);
                }
            }
            tunnel::CONTROL => match serde_json::from_slice(&bytes) {
                Ok(Control::File { size, mode }) => {
                    announced = (size, mode);
                    bar = progress_bar(size);
                    file = Some(
                        tokio::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(partial)
                            .await
                            .map_err(local)?,
                    );
                }
                Ok(Control::Exit { code: Some(0), .. }) => {
                    let (size, mode) = announced;
                    let Some(mut file) = file.take() else {
                        break;
                    };
                    file.flush().await.map_err(local)?;
                    // On the open file, not by name: the name could be
                    // swapped for a link meanwhile.
                    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
                        .await
                        .map_err(local)?;
                    file.sync_all().await.map_err(local)?;
                    let outcome = if written == size {
                        Outcome::Success
                    } else {
                        Outcome::Failed {
                            reason: format!(
                                "the file changed while it was read: {written} of {size} bytes arrived"
                            ),
                        }
                    };
                    if let Some(bar) = bar.take() {
                        finish_bar(Some(bar), &outcome);
                    }
                    return if outcome == Outcome::Success {
                        Ok(Some(()))
                    } else {
                        Err(outcome)
                    };
                }
                Ok(Control::Error { status, message }) => {
                    let outcome = Outcome::Failed {
                        reason: format!("{message} ({status})"),
                    };
                    finish_bar(bar.take(), &outcome);
                    return Err(outcome);
                }
                _ => {}
            },
            _ => {}
        }
    }
    finish_bar(
        bar,
        &Outcome::Failed {
            reason: String::new(),
        },
    );
    Ok(None)
}

/// Where a download is written until it is whole: beside its destination,
/// hidden.
fn partial_path(destination: &Path) -> PathBuf {
    let name = destination
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    destination.with_file_name(format!(".{name}.tether-partial-{}", std::process::id()))
}

/// A bar of `size` bytes on standard error, if it is a terminal.
fn progress_bar(size: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

fn finish_bar(bar: Option<indicatif::ProgressBar>, outcome: &Outcome) {
    if let Some(bar) = bar {
        if *outcome == Outcome::Success {
            bar.finish();
        } else {
            bar.abandon();
        }
    }
}

/// A reader that moves `bar` by what it reads.
struct Counted<R> {
    inner: R,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(bar) = &self.bar {
            bar.inc((buf.filled().len() - before) as u64);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_side_is_a_name_a_colon_and_a_path() {
        assert_eq!(
            Location::parse("edge-1:/etc/app.conf"),
            Location::Device {
                device: "edge-1".to_owned(),
                path: "/etc/app.conf".to_owned()
            }
        );
        for local in ["./a:b", "/tmp/x:y", "plain", ":/x"] {
            assert!(
                matches!(Location::parse(local), Location::Local(_)),
                "{local}"
            );
        }
        assert_eq!(into_directory("/etc/", "app.conf"), "/etc/app.conf");
        assert_eq!(into_directory("/etc/app", "app.conf"), "/etc/app");
    }
}
