//! Downloading a release's binary from tetherd's API with the device's
//! download token: into a partial file in the state directory, resumed
//! with `Range: bytes=N-` after an interruption, paced to the spec's rate.
//! The caller checks the finished file ([`super::verify`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use tokio::io::AsyncWriteExt as _;

use crate::clock::ServerClock;
use crate::tls::{self, TlsError};

/// Partial downloads, in [`super::DIR`].
pub const DOWNLOAD_DIR: &str = "download";
const PART_EXTENSION: &str = "part";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte for this long: the download is stalled; it resumes later.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot build the download client")]
    Client(#[source] reqwest::Error),
    #[error("download from {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("download from {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("download from {url} sent more than the release's {size} bytes")]
    TooLong { url: String, size: u64 },
    #[error("cannot write the download to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DownloadError {
    /// Whether trying again later may succeed (a network or server
    /// problem), rather than the release itself being wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            // 401 and 404 too: a replica answering while a release is
            // deleted and published again, or before its keys match the
            // others', must not fail the release for good (review L2).
            Self::Status { status, .. } => {
                *status >= 500 || matches!(*status, 401 | 404 | 408 | 429)
            }
            Self::TooLong { .. } => false,
            _ => true,
        }
    }
}

/// The binary's URL on tetherd's API.
pub fn binary_url(api_url: &str, version: &str, platform: &str) -> String {
    format!(
        "{}/api/v1/agent-releases/{version}/{platform}/binary",
        api_url.trim_end_matches('/')
    )
}

/// How long to wait after `sent` bytes in `elapsed` to keep to `rate`
/// bytes per second on average (none: no wait).
pub fn pace(sent: u64, rate: Option<u64>, elapsed: Duration) -> Duration {
    let Some(rate) = rate.filter(|rate| *rate > 0) else {
        return Duration::ZERO;
    };
    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
    due.saturating_sub(elapsed)
}

/// Where to resume a partial file of `have` bytes of a `size`-byte binary:
/// `None` when it is complete, `Some(0)` to start over (it is too long).
pub fn resume_from(have: u64, size: u64) -> Option<u64> {
    match have {
        have if have == size => None,
        have if have > size => Some(0),
        have => Some(have),
    }
}

/// An HTTPS client for tetherd's API trusting only its CA, with no overall
/// timeout (a paced download of a large binary takes long) but one on
/// connecting and on each read.
pub fn client(ca_pem: &str, clock: Arc<ServerClock>) -> Result<reqwest::Client, DownloadError> {
    let config = tls::server_tls_config(ca_pem, clock)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(DownloadError::Client)
}

/// One binary to fetch into `part`.
pub struct Fetch<'a> {
    pub client: &'a reqwest::Client,
    pub url: String,
    pub token: &'a str,
    pub part: &'a Path,
    pub size: u64,
    pub bytes_per_second: Option<u64>,
}

impl Fetch<'_> {
    /// Fetches what `part` lacks; `progress` hears the bytes it holds.
    pub async fn run(&self, mut progress: impl FnMut(u64)) -> Result<(), DownloadError> {
        let write_error = |source| DownloadError::Write {
            path: self.part.to_owned(),
            source,
        };
        if let Some(dir) = self.part.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(write_error)?;
        }
        let have = match tokio::fs::metadata(self.part).await {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(write_error(e)),
        };
        let Some(mut offset) = resume_from(have, self.size) else {
            return Ok(());
        };
        let mut request = self.client.get(&self.url).bearer_auth(self.token);
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let failed = |source| DownloadError::Request {
            url: self.url.clone(),
            source,
        };
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        match status {
            206 if offset > 0 => {}
            // The whole file: whatever was there is replaced.
            200 => offset = 0,
            _ => {
                if status == 416 {
                    // The partial file is not a prefix the server knows:
                    // start over next time.
                    let _ = tokio::fs::remove_file(self.part).await;
                }
                let body = response.text().await.unwrap_or_default();
                return Err(DownloadError::Status {
                    url: self.url.clone(),
                    status,
                    body: body.chars().take(300).collect(),
                });
            }
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(offset == 0)
            .append(offset > 0)
            .open(self.part)
            .await
            .map_err(write_error)?;
        if offset > 0 {
            tracing::info!(
                offset,
                "resuming the download of {} at byte {offset}",
                self.url
            );
        }
        let started = Instant::now();
        let mut sent = 0u64;
        let mut held = offset;
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            held += chunk.len() as u64;
            if held > self.size {
                drop(file);
                let _ = tokio::fs::remove_file(self.part).await;
                return Err(DownloadError::TooLong {
                    url: self.url.clone(),
                    size: self.size,
                });
            }
            file.write_all(&chunk).await.map_err(write_error)?;
            sent += chunk.len() as u64;
            progress(held);
            let wait = pace(sent, self.bytes_per_second, started.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        file.sync_all().await.map_err(write_error)?;
        Ok(())
    }
}

/// Where `version`'s binary with `sha256` is downloaded to.
pub fn part_path(state_dir: &Path, version: &str, sha256: &str) -> PathBuf {
    let prefix = sha256.get(..16).unwrap_or(sha256);
    state_dir
        .join(super::DIR)
        .join(DOWNLOAD_DIR)
        .join(format!("{version}-{prefix}.{PART_EXTENSION}"))
}

/// Removes the partial downloads in `state_dir` but `keep` (review L7):
/// those of releases no longer wanted would stay for good otherwise.
pub fn remove_parts(state_dir: &Path, keep: Option<&Path>) {
    let dir = state_dir.join(super::DIR).join(DOWNLOAD_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
        if path.extension().is_some_and(|ext| ext == PART_EXTENSION) && Some(path.as_path()) != keep
        {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!("removed the partial download {}", path.display()),
                Err(error) => tracing::warn!(%error, "cannot remove {}", path.display()),
            }
        }
    }
}

/// The file's length and lowercase hex SHA-256.
pub fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let size = io::copy(&mut file, &mut hasher)?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// [`sha256_file`] off the runtime's thread.
pub async fn digest(path: &Path) -> io::Result<(u64, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || sha256_file(&path))
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_answer_about_the_release_itself_fails_it_for_good() {
        let answer = |status| DownloadError::Status {
            url: "u".into(),
            status,
            body: String::new(),
        };
        for passing in [401, 404, 408, 429, 500, 503] {
            assert!(answer(passing).is_transient(), "{passing}");
        }
        for lasting in [400, 403, 416] {
            assert!(!answer(lasting).is_transient(), "{lasting}");
        }
    }

    #[test]
    fn pacing_keeps_the_average_under_the_rate() {
        assert_eq!(pace(1_000_000, None, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            pace(10_000, Some(5_000), Duration::from_millis(500)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            pace(10_000, Some(5_000), Duration::from_secs(3)),
            Duration::ZERO,
            "behind the rate: no wait"
        );
    }

    #[test]
    fn a_partial_file_resumes_where_it_ends() {
        assert_eq!(resume_from(0, 10), Some(0));
        assert_eq!(resume_from(4, 10), Some(4));
        assert_eq!(resume_from(10, 10), None);
        assert_eq!(resume_from(12, 10), Some(0), "too long: start over");
    }

    #[test]
    fn the_binary_url_is_on_tetherds_api() {
        assert_eq!(
            binary_url("https://t:8443/", "0.2.0", "linux-x86_64"),
            "https://t:8443/api/v1/agent-releases/0.2.0/linux-x86_64/binary"
        );
    }

    #[test]
    fn only_the_wanted_partial_download_stays() {
        let dir = tempfile::tempdir().expect("dir");
        let wanted = part_path(dir.path(), "0.3.0", &"cd".repeat(32));
        let stale = part_path(dir.path(), "0.2.0", &"ab".repeat(32));
        let downloads = wanted.parent().expect("dir");
        std::fs::create_dir_all(downloads).expect("dir");
        let other = downloads.join("notes.txt");
        for path in [&wanted, &stale, &other] {
            std::fs::write(path, b"x").expect("written");
        }
        remove_parts(dir.path(), Some(&wanted));
        assert!(wanted.exists());
        assert!(!stale.exists(), "a release no longer wanted");
        assert!(other.exists(), "only partial downloads go");
        remove_parts(dir.path(), None);
        assert!(!wanted.exists(), "nothing wanted: none stays");
        remove_parts(&dir.path().join("none"), None);
    }

    #[tokio::test]
    async fn the_update_task_removes_a_partial_download_no_longer_wanted() {
        // Review L7: the spec names no release (any more); the part of the
        // one it named stays for good otherwise.
        let dir = tempfile::tempdir().expect("dir");
        let stale = part_path(dir.path(), "0.2.0", &"ab".repeat(32));
        std::fs::create_dir_all(stale.parent().expect("dir")).expect("dir");
        std::fs::write(&stale, b"half").expect("written");
        let (_spec, spec_rx) = tokio::sync::watch::channel(crate::spec::AppliedSpec::default());
        let (_online, online_rx) = tokio::sync::watch::channel(false);
        let (restart, _restart_rx) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(
            super::super::SelfUpdate {
                config: super::super::SelfUpdateConfig {
                    exe: dir.path().join("tether-agent"),
                    trial: Duration::from_secs(60),
                },
                state_dir: dir.path().to_owned(),
                api_url: "https://127.0.0.1:1".into(),
                ca_pem: String::new(),
                clock: ServerClock::new(),
            }
            .run(super::super::Links {
                spec: spec_rx,
                reports: Default::default(),
                gate: Default::default(),
                online: online_rx,
                restart,
            }),
        );
        tether_testkit::wait_until("the stale part to go", Duration::from_secs(10), || {
            let gone = !stale.exists();
            async move { Ok(gone.then_some(())) }
        })
        .await
        .expect("removed");
        task.abort();
    }

    #[tokio::test]
    async fn the_digest_is_of_the_whole_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").expect("written");
        let (size, sha) = digest(&path).await.expect("digest");
        assert_eq!(size, 3);
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
