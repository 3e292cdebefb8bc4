//! The CLI config file: which tetherd to talk to, the CA to trust and the
//! session token. Written by `tether login` and `tether quickstart`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name of the copied server CA, next to the config file.
const CA_FILE_NAME: &str = "ca.pem";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CliConfig {
    /// Base URL of tetherd's API, e.g. `https://127.0.0.1:8443`.
    pub server: String,
    /// The CA certificate (PEM) that tetherd's TLS certificate must chain to.
    pub ca_file: PathBuf,
    /// Bearer token of the session.
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot find the CLI config: neither XDG_CONFIG_HOME nor HOME is set; pass --config PATH or set TETHER_CLI_CONFIG"
    )]
    NoHome,
    #[error(
        "no CLI config at {}: run `tether login SERVER_URL` (or `tether quickstart`) first",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error("cannot read the CLI config {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the CLI config {} is not valid; fix it or log in again with `tether login`",
        path.display()
    )]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("cannot write {}; check the directory's permissions", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot read the server CA {} that the CLI config names; log in again with `tether login SERVER_URL --ca-file PATH`",
        path.display()
    )]
    ReadCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the CLI config")]
    Encode(#[source] toml::ser::Error),
}

/// `$XDG_CONFIG_HOME/tether/config.toml`, else `~/.config/tether/config.toml`.
pub fn default_path() -> Result<PathBuf, ConfigError> {
    default_path_from(
        std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn default_path_from(
    xdg_config_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<PathBuf, ConfigError> {
    // The XDG spec says a relative (or empty) XDG_CONFIG_HOME is to be ignored.
    let base = match (xdg_config_home, home) {
        (Some(xdg), _) if xdg.is_absolute() => xdg,
        (_, Some(home)) => home.join(".config"),
        _ => return Err(ConfigError::NoHome),
    };
    Ok(base.join("tether").join("config.toml"))
}

impl CliConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::NotFound {
                    path: path.to_owned(),
                }
            } else {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The PEM of the CA the config trusts.
    pub fn read_ca(&self) -> Result<Vec<u8>, ConfigError> {
        std::fs::read(&self.ca_file).map_err(|source| ConfigError::ReadCa {
            path: self.ca_file.clone(),
            source,
        })
    }

    /// Like [`CliConfig::load`], but a missing file is `None`.
    pub fn load_if_present(path: &Path) -> Result<Option<Self>, ConfigError> {
        match Self::load(path) {
            Ok(config) => Ok(Some(config)),
            Err(ConfigError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Saves a session: copies the CA into the config's directory as
    /// `ca.pem` (so the config keeps working if the original file moves) and
    /// writes the config file, mode 0600 because it holds the token.
    pub fn save_session(
        path: &Path,
        server: &str,
        ca_pem: &[u8],
        token: &str,
    ) -> Result<Self, ConfigError> {
        let dir = parent_dir(path);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ConfigError::Write {
                path: dir.to_owned(),
                source,
            })?;
        let ca_file = ca_file_for(path);
        write_atomically(&ca_file, ca_pem, 0o644)?;
        let config = CliConfig {
            server: server.to_owned(),
            ca_file: absolute(&ca_file),
            token: token.to_owned(),
        };
        let text = toml::to_string(&config).map_err(ConfigError::Encode)?;
        write_atomically(path, text.as_bytes(), 0o600)?;
        Ok(config)
    }
}

/// Where the CA of the config at `path` is kept: `ca.pem` beside
/// `config.toml`, `prod.ca.pem` beside `prod.toml`, so configs for several
/// servers in one directory keep their own CAs.
fn ca_file_for(path: &Path) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("config");
    let name = if stem == "config" {
        CA_FILE_NAME.to_owned()
    } else {
        format!("{stem}.{CA_FILE_NAME}")
    };
    parent_dir(path).join(name)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The config is read from other working directories later, so a relative
/// CA path would break; fall back to the path as given if there is no cwd.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Writes via a temporary file and a rename, so that a crash never leaves a
/// half-written config and the token is never readable by others, not even
/// for a moment.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), ConfigError> {
    let write_err = |source| ConfigError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        // Best effort: the error that matters is the write's, reported below.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

#[cfg(test)]
mod tests {
    #[test]
    fn configs_in_one_directory_keep_their_own_ca() {
        let dir = Path::new("/home/u/.config/tether");
        assert_eq!(ca_file_for(&dir.join("config.toml")), dir.join("ca.pem"));
        assert_eq!(ca_file_for(&dir.join("prod.toml")), dir.join("prod.ca.pem"));
        assert_ne!(
            ca_file_for(&dir.join("prod.toml")),
            ca_file_for(&dir.join("staging.toml"))
        );
    }

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn default_path_prefers_an_absolute_xdg_config_home() {
        let path = default_path_from(Some("/xdg".into()), Some("/home/u".into()))
            .expect("a base directory is known");
        assert_eq!(path, Path::new("/xdg/tether/config.toml"));
        let path = default_path_from(Some("relative".into()), Some("/home/u".into()))
            .expect("HOME is the fallback");
        assert_eq!(path, Path::new("/home/u/.config/tether/config.toml"));
        assert!(matches!(
            default_path_from(None, None),
            Err(ConfigError::NoHome)
        ));
    }

    #[test]
    fn a_saved_session_loads_back_with_private_permissions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested").join("config.toml");
        let saved =
            CliConfig::save_session(&path, "https://127.0.0.1:8443", b"PEM", "tok").expect("saves");
        assert_eq!(saved.ca_file, dir.path().join("nested").join("ca.pem"));
        assert_eq!(
            std::fs::read(&saved.ca_file).expect("the CA was copied"),
            b"PEM"
        );
        let mode = std::fs::metadata(&path)
            .expect("config exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = CliConfig::load(&path).expect("loads");
        assert_eq!(loaded, saved);
    }

    #[test]
    fn a_missing_config_tells_how_to_log_in() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        let err = CliConfig::load(&path).expect_err("nothing saved yet");
        assert!(err.to_string().contains("tether login"), "{err}");
        assert!(
            CliConfig::load_if_present(&path)
                .expect("missing is not an error")
                .is_none()
        );
    }

    #[test]
    fn a_config_without_a_token_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "server = \"https://x\"\nca_file = \"/ca.pem\"\n").expect("writes");
        assert!(matches!(
            CliConfig::load(&path),
            Err(ConfigError::Parse { .. })
        ));
    }
}
