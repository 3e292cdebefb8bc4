//! The configuration files `tether os edit` puts beside the bundle, each
//! checked before anything is written: netplan v2 YAML, seed 004's disk
//! mapping YAML and systemd-timesyncd's INI. A problem names the field
//! (`network.ethernets.eth0.addresses[0]`) or the line.

pub mod disk_mapping;
pub mod netplan;
pub mod timesyncd;

use std::fmt;

/// What is wrong in a file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A field path such as `diskmappings[1].size`, or `line 3`.
    pub at: String,
    pub message: String,
}

impl Problem {
    fn new(at: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            at: at.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.at, self.message)
        }
    }
}

/// Parses YAML into `T`, naming the field a type error or an unknown key
/// is at.
fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Problem> {
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|err| {
        let path = err.path().to_string();
        let at = if path == "." { String::new() } else { path };
        let message = err.into_inner().to_string();
        // serde_yaml names a (shorter) path of its own: say it once.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !at.is_empty() && at.starts_with(prefix) => rest.to_owned(),
            _ => message,
        };
        Problem::new(at, message)
    })
}

/// An absolute path without `..`, as a mount point or device must be.
fn check_absolute(at: &str, path: &str) -> Result<(), Problem> {
    if !path.starts_with('/') {
        return Err(Problem::new(
            at,
            format!("{path:?} is not an absolute path"),
        ));
    }
    if path.split('/').any(|part| part == "..") || path.contains('\0') {
        return Err(Problem::new(
            at,
            format!("{path:?} may not contain '..' or NUL"),
        ));
    }
    Ok(())
}
