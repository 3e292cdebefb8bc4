//! The agent's state directory: its credentials, its `agent.toml` and the
//! record of recent actions. Every file is replaced atomically (temp file,
//! fsync, rename), so a power cut leaves either the old or the new content.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tether_proto::{DeviceId, InvalidDeviceId};

pub const KEY_FILE: &str = "key.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const CA_FILE: &str = "ca.pem";
pub const CONFIG_FILE: &str = "agent.toml";
pub const ACTIONS_DIR: &str = "actions";

/// Only the agent's user may read its private key.
const PRIVATE_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}: check that its parent is writable")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the state directory {dir} has {CONFIG_FILE} but no {missing}: remove the directory and enroll again"
    )]
    Incomplete { dir: PathBuf, missing: &'static str },
    #[error(
        "{path} is not a valid agent configuration: remove the state directory and enroll again"
    )]
    Config {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path} names an invalid device")]
    Device {
        path: PathBuf,
        source: InvalidDeviceId,
    },
}

/// `agent.toml`: who this agent is and where its controller is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub device: String,
    /// The endpoint the agent enrolled through.
    pub mqtt_url: String,
    /// Every MQTT endpoint of the cluster, `mqtt_url` first; absent in a file
    /// written before replicas, which then means `[mqtt_url]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mqtt_urls: Vec<String>,
    pub api_url: String,
}

impl AgentConfig {
    pub fn of(credentials: &Credentials) -> Self {
        Self {
            device: credentials.device.to_string(),
            mqtt_url: credentials.mqtt_urls.first().cloned().unwrap_or_default(),
            mqtt_urls: credentials.mqtt_urls.clone(),
            api_url: credentials.api_url.clone(),
        }
    }
}

/// Everything the agent needs to connect, as stored by enrollment.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub device: DeviceId,
    /// Where to connect, in the order to try: never empty once enrolled.
    pub mqtt_urls: Vec<String>,
    pub api_url: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens the directory, creating it (mode 0700) if needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|source| StateError::CreateDir {
                path: root.clone(),
                source,
            })?;
        Ok(Self { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The stored credentials, or `None` before enrollment. `agent.toml` is
    /// written last, so its presence means enrollment completed.
    pub fn load(&self) -> Result<Option<Credentials>, StateError> {
        let config_path = self.file(CONFIG_FILE);
        let config = match fs::read_to_string(&config_path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: config_path,
                    source,
                });
            }
        };
        let config: AgentConfig = toml::from_str(&config).map_err(|source| StateError::Config {
            path: config_path.clone(),
            source,
        })?;
        let device = DeviceId::new(config.device).map_err(|source| StateError::Device {
            path: config_path,
            source,
        })?;
        let key_path = self.file(KEY_FILE);
        warn_if_readable_by_others(&key_path);
        Ok(Some(Credentials {
            device,
            mqtt_urls: crate::endpoints::failover_list(&config.mqtt_url, &config.mqtt_urls),
            api_url: config.api_url,
            ca_pem: self.read_required(CA_FILE)?,
            cert_pem: self.read_required(CERT_FILE)?,
            key_pem: self.read_required(KEY_FILE)?,
        }))
    }

    fn read_required(&self, name: &'static str) -> Result<String, StateError> {
        let path = self.file(name);
        fs::read_to_string(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                StateError::Incomplete {
                    dir: self.root.clone(),
                    missing: name,
                }
            } else {
                StateError::Read { path, source }
            }
        })
    }

    /// Stores the private key (0600) before it is used in a request, so a
    /// certificate is never issued for a key the device failed to keep.
    pub fn store_key(&self, key_pem: &str) -> Result<(), StateError> {
        self.write(KEY_FILE, key_pem.as_bytes(), PRIVATE_MODE)
    }

    /// Stores what enrollment returned; `agent.toml` last, as the commit mark.
    pub fn store_enrollment(
        &self,
        cert_pem: &str,
        ca_pem: &str,
        config: &AgentConfig,
    ) -> Result<(), StateError> {
        self.write(CERT_FILE, cert_pem.as_bytes(), PUBLIC_MODE)?;
        self.write(CA_FILE, ca_pem.as_bytes(), PUBLIC_MODE)?;
        self.store_config(config)
    }

    /// Rewrites `agent.toml` with a newer endpoint list from tetherd.
    pub fn store_config(&self, config: &AgentConfig) -> Result<(), StateError> {
        let toml = toml::to_string(config).map_err(|e| StateError::Write {
            path: self.file(CONFIG_FILE),
            source: io::Error::other(e),
        })?;
        self.write(CONFIG_FILE, toml.as_bytes(), PUBLIC_MODE)
    }

    /// Replaces the client certificate with a renewed one, atomically: a
    /// power cut leaves the old certificate or the new, never half of one.
    pub fn store_certificate(&self, cert_pem: &str) -> Result<(), StateError> {
        self.write(CERT_FILE, cert_pem.as_bytes(), PUBLIC_MODE)
    }

    fn write(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), StateError> {
        let path = self.file(name);
        write_atomic(&path, bytes, mode).map_err(|source| StateError::Write { path, source })
    }
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{} has mode {mode:o}: other users can read the device's private key; run chmod 600 on it",
                path.display()
            );
        }
    }
}

/// Replaces `path` with `bytes`: a temp file in the same directory, created
/// with `mode`, fsync'd, renamed over `path`, and the directory fsync'd.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("the path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the path has no file name"))?
        .to_string_lossy();
    let temp = dir.join(format!(".{name}.{}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AgentConfig {
        AgentConfig {
            device: "edge-1".into(),
            mqtt_url: "mqtts://127.0.0.1:8883".into(),
            mqtt_urls: Vec::new(),
            api_url: "https://127.0.0.1:8443".into(),
        }
    }

    #[test]
    fn nothing_stored_means_not_enrolled() {
        let temp = tempfile::tempdir().expect("temp dir");
        let state = StateDir::open(temp.path().join("state")).expect("opens");
        assert!(state.load().expect("loads").is_none());
        let mode = fs::metadata(state.path())
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn enrollment_round_trips_with_a_private_key_file() {
        let temp = tempfile::tempdir().expect("temp dir");
        let state = StateDir::open(temp.path()).expect("opens");
        state.store_key("KEY").expect("stores key");
        state
            .store_enrollment("CERT", "CA", &config())
            .expect("stores");
        let creds = state.load().expect("loads").expect("enrolled");
        assert_eq!(creds.device.as_str(), "edge-1");
        assert_eq!(creds.key_pem, "KEY");
        assert_eq!(creds.cert_pem, "CERT");
        assert_eq!(creds.ca_pem, "CA");
        assert_eq!(
            creds.mqtt_urls,
            ["mqtts://127.0.0.1:8883"],
            "a file from before replicas means its one endpoint"
        );
        let mode = fs::metadata(state.file(KEY_FILE))
            .expect("key exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(state.path())
            .expect("lists")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    #[test]
    fn a_newer_endpoint_list_is_kept_across_restarts() {
        let temp = tempfile::tempdir().expect("temp dir");
        let state = StateDir::open(temp.path()).expect("opens");
        state.store_key("KEY").expect("stores key");
        state
            .store_enrollment("CERT", "CA", &config())
            .expect("stores");
        let mut creds = state.load().expect("loads").expect("enrolled");
        creds.mqtt_urls = vec!["mqtts://b:1".into(), "mqtts://a:1".into()];
        state
            .store_config(&AgentConfig::of(&creds))
            .expect("stores");
        let reloaded = state.load().expect("loads").expect("enrolled");
        assert_eq!(reloaded.mqtt_urls, creds.mqtt_urls);
        assert_eq!(reloaded.api_url, creds.api_url);
    }

    #[test]
    fn a_missing_credential_file_says_what_to_do() {
        let temp = tempfile::tempdir().expect("temp dir");
        let state = StateDir::open(temp.path()).expect("opens");
        state
            .store_enrollment("CERT", "CA", &config())
            .expect("stores");
        let err = state.load().expect_err("key is missing");
        let message = err.to_string();
        assert!(message.contains("key.pem"), "{message}");
        assert!(message.contains("enroll again"), "{message}");
    }

    #[test]
    fn a_bad_device_name_in_agent_toml_is_refused() {
        let temp = tempfile::tempdir().expect("temp dir");
        let state = StateDir::open(temp.path()).expect("opens");
        let mut bad = config();
        bad.device = "../x".into();
        state.store_enrollment("C", "CA", &bad).expect("stores");
        assert!(matches!(state.load(), Err(StateError::Device { .. })));
    }
}
