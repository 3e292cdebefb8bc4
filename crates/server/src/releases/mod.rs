//! Agent releases (issue 19, ADR 0033): an operator publishes the agent's
//! binary per platform; tetherd checks it is an executable for that
//! platform, signs its hash ([`keys`]) and stores it in chunks; a
//! deployment naming the release puts it into its devices' specs
//! ([`crate::desired::render`]), each with a download token ([`token`])
//! the device fetches its binary with, resumably.

pub mod keys;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Utc;
use futures::{Stream, StreamExt};
use tether_proto::DeviceId;
use tether_proto::desired::agent_release::{
    self, AgentBinary, MAX_BINARY_BYTES, check_platform, check_version, elf_platform,
    signed_message,
};
use tether_proto::desired::resources::{PublishedBinary, PublishedRelease};
use tether_proto::spec::SpecError;
use tether_proto::version_stamp::StampScan;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

pub use keys::ReleaseKeys;

use crate::store::{CHUNK_BYTES, ReleaseDeletion, ReleaseRecord, Store, StoreError};

/// At most this many downloads of one device at a time (per replica): an
/// agent fetches one binary; more is a loop or a leaked token.
pub const MAX_DOWNLOADS_PER_DEVICE: usize = 2;
/// Where uploads are spooled in the data dir before they are stored.
const SPOOL_DIR: &str = "release-uploads";

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A field of the request, by its path, and what is wrong with it.
    #[error("invalid {0}")]
    Invalid(SpecError),
    #[error(
        "the binary is larger than {limit} bytes, the largest this tetherd takes (releases.max_binary_bytes)"
    )]
    TooLarge { limit: u64 },
    #[error("agent release {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the download token is not valid for this release, or its device was deleted")]
    BadToken,
    #[error(
        "device {0} already downloads {MAX_DOWNLOADS_PER_DEVICE} binaries; retry when one ends"
    )]
    TooManyDownloads(DeviceId),
    #[error("could not read the uploaded binary")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("could not spool the uploaded binary in {path}")]
    Spool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(path: &str, message: impl Into<String>) -> ReleaseError {
    ReleaseError::Invalid(SpecError::new(path, message))
}

/// What a publication did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Created(PublishedRelease),
    /// The same bytes were published before: nothing changed.
    Unchanged(PublishedRelease),
}

/// How tetherd takes agent releases (`[releases]` in its config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasesConfig {
    /// The largest binary a publication takes; larger ones are refused
    /// (413) as they arrive, before more is spooled. At most
    /// [`MAX_BINARY_BYTES`], which agents check.
    pub max_binary_bytes: u64,
}

impl Default for ReleasesConfig {
    fn default() -> Self {
        Self {
            max_binary_bytes: MAX_BINARY_BYTES,
        }
    }
}

#[derive(Clone)]
pub struct Releases {
    store: Store,
    keys: Arc<ReleaseKeys>,
    config: ReleasesConfig,
    spool_dir: PathBuf,
    downloads: Arc<Mutex<HashMap<DeviceId, usize>>>,
}

impl Releases {
    /// Uploads a previous run left spooled (it was killed mid-upload) are
    /// removed: nobody finishes them.
    pub fn new(
        store: Store,
        keys: Arc<ReleaseKeys>,
        config: ReleasesConfig,
        data_dir: &Path,
    ) -> Self {
        let spool_dir = data_dir.join(SPOOL_DIR);
        match std::fs::remove_dir_all(&spool_dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %spool_dir.display(), %error, "could not remove uploads left spooled by a previous run");
            }
            _ => {}
        }
        Self {
            store,
            keys,
            config,
            spool_dir,
            downloads: Arc::default(),
        }
    }

    pub fn keys(&self) -> &Arc<ReleaseKeys> {
        &self.keys
    }

    pub fn config(&self) -> &ReleasesConfig {
        &self.config
    }

    /// Publishes `body` as `platform`'s binary of release `version`:
    /// checked to be an executable for the platform, stamped with
    /// `version` and within the configured size, hashed and signed while
    /// it is spooled to disk (memory stays bounded), then stored in one
    /// transaction. A release is immutable: the same bytes again
    /// change nothing, other bytes are a conflict.
    pub async fn publish<S, B, E>(
        &self,
        version: &str,
        platform: &str,
        body: S,
        by: &str,
    ) -> Result<Published, ReleaseError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::error::Error + Send + Sync + 'static,
    {
        check_version("version", version).map_err(ReleaseError::Invalid)?;
        check_platform("platform", platform).map_err(ReleaseError::Invalid)?;
        let spool = Spool::create(&self.spool_dir).await?;
        let (mut file, sha256, size) = spool
            .fill(body, version, platform, self.config.max_binary_bytes)
            .await?;
        if let Some(existing) = self.store.agent_release(version, platform).await? {
            return self.same_or_conflict(existing, &sha256);
        }
        let record = ReleaseRecord {
            version: version.to_owned(),
            platform: platform.to_owned(),
            signature: self
                .keys
                .sign(&signed_message(version, platform, &sha256, size)),
            sha256,
            size,
            created_at: Utc::now(),
            created_by: by.to_owned(),
        };
        file.rewind().await.map_err(|source| spool.error(source))?;
        match self.store.insert_agent_release(&record, &mut file).await {
            Ok(()) => {}
            // Published at the same time by another request.
            Err(StoreError::Conflict { .. }) => {
                if let Some(existing) = self.store.agent_release(version, platform).await? {
                    return self.same_or_conflict(existing, &record.sha256);
                }
            }
            Err(error) => return Err(error.into()),
        }
        tracing::info!(version, platform, sha256 = %record.sha256, size = record.size, by, "agent release published");
        Ok(Published::Created(self.get(version).await?))
    }

    fn same_or_conflict(
        &self,
        existing: ReleaseRecord,
        sha256: &str,
    ) -> Result<Published, ReleaseError> {
        if existing.sha256 == sha256 {
            return Ok(Published::Unchanged(published(vec![existing]).remove(0)));
        }
        Err(ReleaseError::Conflict(format!(
            "agent release {} for {} is already published with other bytes (sha256 {}); a release never changes: publish a new version",
            existing.version, existing.platform, existing.sha256
        )))
    }

    pub async fn get(&self, version: &str) -> Result<PublishedRelease, ReleaseError> {
        published(self.store.agent_release_binaries(version).await?)
            .pop()
            .ok_or_else(|| ReleaseError::NotFound(version.to_owned()))
    }

    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PublishedRelease>, ReleaseError> {
        Ok(published(
            self.store.list_agent_releases(after, limit).await?,
        ))
    }

    /// Deletes a release that no deployment names and no device's spec
    /// carries any more (409 naming those that do), in one transaction
    /// with those checks, so a rollout starting meanwhile either keeps it
    /// or is refused (review L6).
    pub async fn delete(&self, version: &str) -> Result<(), ReleaseError> {
        match self.store.delete_unused_agent_release(version).await? {
            ReleaseDeletion::Deleted => {
                tracing::info!(version, "agent release deleted");
                Ok(())
            }
            ReleaseDeletion::NotFound => Err(ReleaseError::NotFound(version.to_owned())),
            ReleaseDeletion::NamedBy(users) => Err(ReleaseError::Conflict(format!(
                "agent release {version} is used by deployment(s) {}; change or delete them first",
                users.join(", ")
            ))),
            // A deployment that moved on may not have moved every device
            // yet (a paused rollout, a device put back): they may still
            // download it.
            ReleaseDeletion::CarriedBy(devices) => Err(ReleaseError::Conflict(format!(
                "agent release {version} is still in the spec of device(s) {}; wait until their deployments have moved them off it (`tether deployments status`)",
                devices.join(", ")
            ))),
        }
    }

    /// The binaries of `version`, as a deployment's revision records them
    /// (`NotFound` if it is not published).
    pub async fn binaries(
        &self,
        version: &str,
    ) -> Result<BTreeMap<String, AgentBinary>, ReleaseError> {
        let release = self.get(version).await?;
        Ok(release
            .binaries
            .into_iter()
            .map(|(platform, published)| (platform, published.binary))
            .collect())
    }

    /// Opens a device's download of `platform`'s binary of `version`, if
    /// `token` is that device's for that release and the device exists.
    pub async fn open_download(
        &self,
        token: &str,
        version: &str,
        platform: &str,
    ) -> Result<Download, ReleaseError> {
        let device = token::device_of(&self.keys, token, version).ok_or(ReleaseError::BadToken)?;
        if self.store.get_device(&device).await?.is_none() {
            return Err(ReleaseError::BadToken);
        }
        let release = self
            .store
            .agent_release(version, platform)
            .await?
            .ok_or_else(|| ReleaseError::NotFound(format!("{version} for {platform}")))?;
        let slot = DownloadSlot::take(&self.downloads, &device)?;
        Ok(Download {
            store: self.store.clone(),
            release,
            _slot: slot,
        })
    }
}

/// The API's view of stored binaries, one release per version.
fn published(records: Vec<ReleaseRecord>) -> Vec<PublishedRelease> {
    let mut releases: Vec<PublishedRelease> = Vec::new();
    for record in records {
        if releases.last().is_none_or(|r| r.version != record.version) {
            releases.push(PublishedRelease {
                version: record.version.clone(),
                binaries: BTreeMap::new(),
            });
        }
        if let Some(release) = releases.last_mut() {
            release.binaries.insert(
                record.platform,
                PublishedBinary {
                    binary: AgentBinary {
                        sha256: record.sha256,
                        size: record.size,
                        signature: record.signature,
                    },
                    created_at: record.created_at,
                    created_by: record.created_by,
                },
            );
        }
    }
    releases
}

/// An upload on its way to the store: a file of its own in the spool
/// directory, removed when done with, whatever happened.
struct Spool {
    path: PathBuf,
}

impl Spool {
    async fn create(dir: &Path) -> Result<Self, ReleaseError> {
        let error = |source| ReleaseError::Spool {
            path: dir.to_owned(),
            source,
        };
        tokio::fs::create_dir_all(dir).await.map_err(error)?;
        Ok(Self {
            path: dir.join(format!("{}.upload", uuid::Uuid::new_v4())),
        })
    }

    fn error(&self, source: std::io::Error) -> ReleaseError {
        ReleaseError::Spool {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes `body` to the file, checking its ELF header against
    /// `platform` as soon as it has arrived, its size against `limit` as
    /// it goes, and at the end that it is stamped `version`; returns the
    /// file, the SHA-256 (hex) and the size.
    async fn fill<S, B, E>(
        &self,
        mut body: S,
        version: &str,
        platform: &str,
        limit: u64,
    ) -> Result<(tokio::fs::File, String, u64), ReleaseError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&self.path)
            .await
            .map_err(|source| self.error(source))?;
        // ring's SHA-256 (built optimised even in debug builds; see the
        // workspace's profile) rather than sha2's: a binary is megabytes.
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size: u64 = 0;
        let mut header = Vec::with_capacity(64);
        let mut stamps = StampScan::default();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|error| ReleaseError::Body(Box::new(error)))?;
            let piece = piece.as_ref();
            size += piece.len() as u64;
            if size > limit {
                return Err(ReleaseError::TooLarge { limit });
            }
            if header.len() < 64 {
                let wanted = (64 - header.len()).min(piece.len());
                header.extend_from_slice(&piece[..wanted]);
                if header.len() == 64 {
                    check_elf(&header, platform)?;
                }
            }
            hasher.update(piece);
            stamps.feed(piece);
            file.write_all(piece)
                .await
                .map_err(|source| self.error(source))?;
        }
        if size == 0 {
            return Err(invalid("body", "is empty: send the agent binary"));
        }
        if header.len() < 64 {
            check_elf(&header, platform)?;
        }
        check_stamp(stamps.versions(), version)?;
        file.flush().await.map_err(|source| self.error(source))?;
        Ok((file, hex::encode(hasher.finish()), size))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a spooled upload");
        }
    }
}

/// Refuses a binary that is not an executable for `platform`.
fn check_elf(header: &[u8], platform: &str) -> Result<(), ReleaseError> {
    match elf_platform(header) {
        Ok(found) if found == platform => Ok(()),
        Ok(found) => Err(invalid(
            "body",
            format!("is an executable for {found}, not for {platform}"),
        )),
        Err(problem) => Err(invalid("body", problem)),
    }
}

/// Refuses a binary not stamped with the release's `version`
/// ([`tether_proto::version_stamp`]): swapped in, it would report another
/// version than the release, and the update would never look done.
fn check_stamp(stamped: &[String], version: &str) -> Result<(), ReleaseError> {
    match stamped {
        [one] if one == version => Ok(()),
        [one] => Err(invalid(
            "body",
            format!(
                "is stamped with version {one}, not the release's {version}: publish it as {one}, or stamp the binary with {version} first"
            ),
        )),
        [] => Err(invalid(
            "body",
            format!(
                "carries no version stamp: not a tether-agent binary, or one from before version stamps; publish a tether-agent stamped with {version}"
            ),
        )),
        more => Err(invalid(
            "body",
            format!(
                "holds {} version stamps ({}): a tether-agent has exactly one",
                more.len(),
                more.join(", ")
            ),
        )),
    }
}

/// One device's download in progress; its slot frees when it is dropped.
pub struct Download {
    store: Store,
    release: ReleaseRecord,
    _slot: DownloadSlot,
}

impl Download {
    pub fn release(&self) -> &ReleaseRecord {
        &self.release
    }

    /// Bytes `start..=end` of the binary, chunk by chunk: at most one
    /// stored chunk is in memory at a time.
    pub fn bytes(
        self,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Vec<u8>, ReleaseError>> + Send + 'static {
        futures::stream::try_unfold((self, start), move |(download, at)| async move {
            if at > end {
                return Ok(None);
            }
            let seq = at / CHUNK_BYTES;
            let release = &download.release;
            let chunk = download
                .store
                .agent_release_chunk(&release.version, &release.platform, seq)
                .await?
                .ok_or_else(|| ReleaseError::NotFound(release.version.clone()))?;
            let from = (at - seq * CHUNK_BYTES) as usize;
            let to = ((end - seq * CHUNK_BYTES + 1) as usize).min(chunk.len());
            if from >= to {
                return Err(ReleaseError::Store(StoreError::Corrupt(format!(
                    "chunk {seq} of agent release {} for {} is shorter than its size says",
                    release.version, release.platform
                ))));
            }
            let next = at + (to - from) as u64;
            Ok(Some((chunk[from..to].to_vec(), (download, next))))
        })
    }
}

/// A place among a device's [`MAX_DOWNLOADS_PER_DEVICE`] downloads.
struct DownloadSlot {
    downloads: Arc<Mutex<HashMap<DeviceId, usize>>>,
    device: DeviceId,
}

impl DownloadSlot {
    fn take(
        downloads: &Arc<Mutex<HashMap<DeviceId, usize>>>,
        device: &DeviceId,
    ) -> Result<Self, ReleaseError> {
        let mut counts = downloads.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(device.clone()).or_default();
        if *count >= MAX_DOWNLOADS_PER_DEVICE {
            return Err(ReleaseError::TooManyDownloads(device.clone()));
        }
        *count += 1;
        Ok(Self {
            downloads: downloads.clone(),
            device: device.clone(),
        })
    }
}

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        let mut counts = self
            .downloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.device) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.device);
            }
        }
    }
}

/// The `agent` section a device's deployment carries for `version`;
/// `allow_downgrade` as the deployment says (`allowAgentDowngrade`).
pub fn agent_section(
    keys: &ReleaseKeys,
    device: &DeviceId,
    version: &str,
    binaries: &BTreeMap<String, AgentBinary>,
    allow_downgrade: bool,
) -> agent_release::AgentRelease {
    agent_release::AgentRelease {
        version: version.to_owned(),
        signing_key: keys.public_key().to_owned(),
        binaries: binaries.clone(),
        download_token: token::download_token(keys, device, version),
        allow_downgrade,
    }
}
