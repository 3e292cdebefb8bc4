//! `tether os edit`: writes the boot bundle (credential, tetherd's
//! address and CA fingerprint, console password hash) and the network,
//! NTP and disk configuration into an OS image's boot partition, offline,
//! without root and without mounting (seed 004's `cuttle os edit`).
//!
//! Every input is read and checked, and the boot partition found and
//! checked for room, before the image is opened for a single write: a
//! mistake leaves the image as it was.

use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha_crypt::{PasswordHasher, ShaCrypt};
use tether_proto::DeviceId;
use tether_proto::provisioning::{
    BOOT_BUNDLE_DIR, BOOT_BUNDLE_FILE, BOOT_DISK_MAPPING_FILE, BOOT_NETPLAN_FILE,
    BOOT_TIMESYNCD_FILE, BootBundle, BootCredential, PROVISIONING_KEY_KIND, ProvisioningKey,
};

use crate::boot_files::{Problem, disk_mapping, netplan, timesyncd};
use crate::client;
use crate::commands::login::{LoginError, prompt_hidden, read_line};
use crate::commands::{CommandError, Context, Outcome};
use crate::config::CliConfig;
use crate::os_image::{self, BootFile, BootPartition, ImageError};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  # Devices booted from the image register under the policy of the key
  # (lab-key.json: a provisioning key file made by tetherd)
  tether os edit --image-file edge-os.raw --provisioning-key lab-key.json --password

  # A replacement SD card for an existing device (hardware and media both
  # replaced): detach its old credential, then write one for it
  tether devices detach-credential edge-1
  tether os edit --image-file edge-os.raw --device-name edge-1 --token-ttl 30days

  # Static address, own NTP servers, an extra disk
  tether os edit --image-file edge-os.raw --provisioning-key lab-key.json \\
    --network netplan.yaml --ntp timesyncd.conf --disk-mapping disks.yaml

The boot partition is found by GPT name EDGELQ_BOOT, then TETHER_BOOT, then
by filesystem label EDGELQ_BOOT or TETHER_BOOT, then as a Raspberry Pi's FAT
partition labelled bootfs or boot; --boot-partition LABEL names it instead.
Files go to tether/ on it: bundle.json, netplan.yaml (seed 004's DHCP on
en*/eth* unless --network is given), timesyncd.conf and disk-mapping.yaml
when given. FAT is written in place; ext2/3/4 with e2fsprogs' debugfs.";

/// The most the bundle JSON can take, for the room check made before the
/// credential is fetched.
const BUNDLE_ROOM: usize = 4096;
/// Salt bytes of the console password hash: 12 bytes are crypt(3)'s 16
/// salt characters, the most SHA-crypt reads.
const SALT_BYTES: usize = 12;

/// Customize a raw OS image so that the device booted from it registers.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
#[command(group(clap::ArgGroup::new("credential").required(true).args(["provisioning_key", "device_name"])))]
pub struct Edit {
    /// The raw disk image to edit in place (GPT or MBR).
    #[arg(long, value_name = "FILE")]
    image_file: PathBuf,
    /// A provisioning key file (kind "tether-provisioning-key"): the device
    /// registers under its policy.
    #[arg(long, value_name = "FILE")]
    provisioning_key: Option<PathBuf>,
    /// An existing device the image becomes: a one-time enrollment token
    /// for it is asked from the tetherd you are logged in to.
    #[arg(long, value_name = "NAME")]
    device_name: Option<DeviceId>,
    /// With --device-name: how long the image's enrollment token stays
    /// valid, for an image booted later (at most 90 days) [default:
    /// tetherd's, a day].
    #[arg(long, requires = "device_name", value_parser = crate::commands::parse_duration, value_name = "DURATION")]
    token_ttl: Option<std::time::Duration>,
    /// tetherd's API URL as the device reaches it [default: the key's
    /// `server`, or the URL you are logged in to].
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Ask for a console login password (typed twice, not echoed); it is
    /// stored as a SHA-512 crypt hash.
    #[arg(long, conflicts_with = "password_stdin")]
    password: bool,
    /// Read the console password from the first line of stdin.
    #[arg(long)]
    password_stdin: bool,
    /// Netplan v2 YAML for the device's network [default: DHCP on en* and eth*].
    #[arg(long, value_name = "FILE")]
    network: Option<PathBuf>,
    /// systemd-timesyncd configuration (INI with a [Time] section).
    #[arg(long, value_name = "FILE")]
    ntp: Option<PathBuf>,
    /// Disk mapping YAML (`diskmappings`, `bindmounts`) for disks beyond
    /// the boot media.
    #[arg(long, value_name = "FILE")]
    disk_mapping: Option<PathBuf>,
    /// The GPT name or filesystem label of the boot partition, when it is
    /// not one tether finds by itself.
    #[arg(long, value_name = "LABEL")]
    boot_partition: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OsEditError {
    #[error("cannot read the {option} file {}", path.display())]
    ReadInput {
        option: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {option} file {}: {problem}", path.display())]
    Invalid {
        option: &'static str,
        path: PathBuf,
        problem: Problem,
    },
    #[error("invalid --endpoint {0:?}")]
    Endpoint(String, #[source] client::ClientError),
    #[error("cannot open the image {} for writing", path.display())]
    OpenImage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the image {}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
    #[error("the two passwords differ")]
    PasswordMismatch,
    #[error(
        "no terminal to ask the console password on: pass --password-stdin and the password on stdin"
    )]
    NoTerminal,
    #[error("cannot hash the console password: {0}")]
    Hash(String),
    #[error("cannot encode the bundle")]
    Encode(#[source] serde_json::Error),
}

/// What was written where, for `-o json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Edited {
    image: PathBuf,
    partition: u32,
    found_by: String,
    files: Vec<String>,
    server: String,
    credential: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Edit {
    pub fn description(&self) -> String {
        format!("customize the OS image {}", self.image_file.display())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        // 1. Every input file, checked.
        let mut files = vec![BootFile {
            name: BOOT_NETPLAN_FILE,
            contents: match &self.network {
                Some(path) => read_checked("--network", path, netplan::check)?,
                None => netplan::DEFAULT.as_bytes().to_vec(),
            },
            secret: false,
        }];
        if let Some(path) = &self.ntp {
            files.push(BootFile {
                name: BOOT_TIMESYNCD_FILE,
                contents: read_checked("--ntp", path, timesyncd::check)?,
                secret: false,
            });
        }
        if let Some(path) = &self.disk_mapping {
            files.push(BootFile {
                name: BOOT_DISK_MAPPING_FILE,
                contents: read_checked("--disk-mapping", path, disk_mapping::check)?,
                secret: false,
            });
        }
        let key = self.provisioning_key.as_deref().map(read_key).transpose()?;
        let endpoint = self
            .endpoint
            .as_deref()
            .map(|url| {
                client::parse_server_url(url)
                    .map(|url| url.as_str().trim_end_matches('/').to_owned())
                    .map_err(|err| OsEditError::Endpoint(url.to_owned(), err))
            })
            .transpose()?;

        // 2. The image, its boot partition and the room in it.
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.image_file)
            .map_err(|source| OsEditError::OpenImage {
                path: self.image_file.clone(),
                source,
            })?;
        let boot = self.find_boot(&image, &files)?;

        // 3. The password and the credential.
        let console_password_hash = self
            .console_password()?
            .map(|p| hash_password(&p))
            .transpose()?;
        let (server, ca_sha256, credential, token_expires_at) = match (key, &self.device_name) {
            (Some(key), _) => (
                endpoint.unwrap_or(key.server),
                key.ca_sha256,
                BootCredential::Provisioning {
                    key_id: key.key_id,
                    secret: key.secret,
                },
                None,
            ),
            (None, Some(device)) => {
                let enrollment = ctx
                    .client()?
                    .new_enrollment_token(device.as_str(), self.token_ttl)
                    .await?;
                let server = match endpoint {
                    Some(endpoint) => endpoint,
                    None => logged_in_server(ctx)?,
                };
                (
                    server,
                    enrollment.ca_sha256,
                    BootCredential::Enrollment {
                        device: device.as_str().to_owned(),
                        token: enrollment.token,
                    },
                    Some(enrollment.expires_at),
                )
            }
            (None, None) => unreachable!("clap requires --provisioning-key or --device-name"),
        };
        let credential_kind = match credential {
            BootCredential::Provisioning { .. } => "provisioning",
            BootCredential::Enrollment { .. } => "enrollment",
        };
        let bundle = BootBundle {
            version: 1,
            server: server.clone(),
            ca_sha256,
            credential,
            console_password_hash,
        };
        let mut json = serde_json::to_vec_pretty(&bundle).map_err(OsEditError::Encode)?;
        json.push(b'\n');
        files.insert(
            0,
            BootFile {
                name: BOOT_BUNDLE_FILE,
                contents: json,
                secret: true,
            },
        );

        // 4. The one write.
        os_image::write(&image, &self.image_file, &boot, &files).map_err(|source| {
            OsEditError::Image {
                path: self.image_file.clone(),
                source,
            }
        })?;

        let edited = Edited {
            image: self.image_file.clone(),
            partition: boot.found.partition.number,
            found_by: boot.reason.clone(),
            files: files
                .iter()
                .map(|f| format!("{BOOT_BUNDLE_DIR}/{}", f.name))
                .collect(),
            server,
            credential: credential_kind,
            token_expires_at,
        };
        output::print(ctx.output, &edited, |edited: &Edited| {
            let mut text = format!(
                "Wrote {} to partition #{} ({}) of {}.\nThe device registers with {} at first boot.",
                edited.files.join(", "),
                edited.partition,
                edited.found_by,
                edited.image.display(),
                edited.server
            );
            if let Some(expires) = edited.token_expires_at {
                text.push_str(&format!(
                    "\nIts enrollment token expires {}: boot the image before then, or run this again.",
                    output::timestamp(expires)
                ));
            }
            text
        })?;
        Ok(Outcome::Success)
    }

    /// The boot partition, with room for `files` and a bundle.
    fn find_boot(&self, image: &File, files: &[BootFile]) -> Result<BootPartition, OsEditError> {
        let fail = |source| OsEditError::Image {
            path: self.image_file.clone(),
            source,
        };
        let found = os_image::inspect(image).map_err(fail)?;
        let boot = os_image::find_boot(&found, self.boot_partition.as_deref()).map_err(fail)?;
        let mut planned = files.to_vec();
        planned.push(BootFile {
            name: BOOT_BUNDLE_FILE,
            contents: vec![0; BUNDLE_ROOM],
            secret: true,
        });
        os_image::check_room(image, &self.image_file, &boot, &planned).map_err(fail)?;
        Ok(boot)
    }

    fn console_password(&self) -> Result<Option<String>, CommandError> {
        let password = if self.password_stdin {
            read_line(std::io::stdin().lock())?
        } else if self.password {
            if !std::io::stdin().is_terminal() {
                return Err(OsEditError::NoTerminal.into());
            }
            let first = prompt_hidden("Console password: ")?;
            let again = prompt_hidden("The same again: ")?;
            if first != again {
                return Err(OsEditError::PasswordMismatch.into());
            }
            first
        } else {
            return Ok(None);
        };
        if password.is_empty() {
            return Err(LoginError::EmptyPassword.into());
        }
        Ok(Some(password))
    }
}

/// Reads a file and checks it with `check`.
fn read_checked(
    option: &'static str,
    path: &Path,
    check: fn(&str) -> Result<(), Problem>,
) -> Result<Vec<u8>, OsEditError> {
    let contents = std::fs::read(path).map_err(|source| OsEditError::ReadInput {
        option,
        path: path.to_owned(),
        source,
    })?;
    let invalid = |problem| OsEditError::Invalid {
        option,
        path: path.to_owned(),
        problem,
    };
    let text = std::str::from_utf8(&contents).map_err(|_| {
        invalid(Problem {
            at: String::new(),
            message: "it is not UTF-8 text".into(),
        })
    })?;
    check(text).map_err(invalid)?;
    Ok(contents)
}

/// A provisioning key file, checked: its kind, a server URL, a CA
/// fingerprint and a key.
fn read_key(path: &Path) -> Result<ProvisioningKey, OsEditError> {
    let option = "--provisioning-key";
    let contents = std::fs::read(path).map_err(|source| OsEditError::ReadInput {
        option,
        path: path.to_owned(),
        source,
    })?;
    let invalid = |at: &str, message: String| OsEditError::Invalid {
        option,
        path: path.to_owned(),
        problem: Problem {
            at: at.to_owned(),
            message,
        },
    };
    let value: serde_json::Value = serde_json::from_slice(&contents)
        .map_err(|err| invalid("", format!("it is not JSON: {err}")))?;
    // The kind first: a file of another kind fails on it, by name, rather
    // than on the first field it lacks.
    if value.get("kind").and_then(|kind| kind.as_str()) != Some(PROVISIONING_KEY_KIND) {
        return Err(invalid(
            "kind",
            format!(
                "must be {PROVISIONING_KEY_KIND:?}: this is not a provisioning key file (tetherd makes one per provisioning policy)"
            ),
        ));
    }
    let key: ProvisioningKey = serde_path_to_error::deserialize(value).map_err(|err| {
        let at = err.path().to_string();
        invalid(&at, err.into_inner().to_string())
    })?;
    client::parse_server_url(&key.server).map_err(|err| invalid("server", err.to_string()))?;
    if key.ca_sha256.len() != 64 || !key.ca_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "caSha256",
            "must be 64 hex digits (a SHA-256)".into(),
        ));
    }
    for (field, value) in [
        ("policy", &key.policy),
        ("keyId", &key.key_id),
        ("secret", &key.secret),
    ] {
        if value.trim().is_empty() {
            return Err(invalid(field, "is empty".into()));
        }
    }
    Ok(key)
}

/// The tetherd URL the CLI is logged in to (or `--server`).
fn logged_in_server(ctx: &Context) -> Result<String, CommandError> {
    match &ctx.server_override {
        Some(server) => Ok(server.clone()),
        None => Ok(CliConfig::load(&ctx.config_path)?.server),
    }
}

/// crypt(3)'s SHA-512: `$6$rounds=5000$SALT$HASH`, the default rounds
/// written out, which glibc and musl read as they write it.
fn hash_password(password: &str) -> Result<String, OsEditError> {
    let salt: [u8; SALT_BYTES] = rand::random();
    ShaCrypt::SHA512
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| OsEditError::Hash(err.to_string()))
}

#[cfg(test)]
mod tests {
    use sha_crypt::PasswordVerifier;

    use super::*;

    #[test]
    fn the_console_password_is_a_sha512_crypt_hash_with_a_16_character_salt() {
        let hash = hash_password("correct horse").expect("hashes");
        let fields: Vec<_> = hash.split('$').collect();
        assert_eq!(fields[..3], ["", "6", "rounds=5000"], "{hash}");
        assert_eq!(
            fields[3].len(),
            16,
            "glibc reads at most 16 salt characters: {hash}"
        );
        assert_eq!(fields[4].len(), 86, "{hash}");
        let parsed = sha_crypt::PasswordHashRef::new(&hash).expect("MCF");
        ShaCrypt::SHA512
            .verify_password(b"correct horse", parsed)
            .expect("verifies");
        assert_ne!(
            hash,
            hash_password("correct horse").expect("hashes"),
            "salted"
        );
    }

    #[test]
    fn a_key_file_of_another_kind_is_refused_by_its_kind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("key.json");
        let key = serde_json::json!({"kind": PROVISIONING_KEY_KIND, "server": "https://t.example:8443",
            "caSha256": "ab".repeat(32), "policy": "lab", "keyId": "k1", "secret": "s"});
        std::fs::write(&path, key.to_string()).expect("writes");
        assert_eq!(read_key(&path).expect("valid").key_id, "k1");

        let mut other = key.clone();
        other["kind"] = "service-account".into();
        std::fs::write(&path, other.to_string()).expect("writes");
        let err = read_key(&path).expect_err("kind").to_string();
        assert!(
            err.contains(": kind: must be \"tether-provisioning-key\""),
            "{err}"
        );

        let mut bad = key.clone();
        bad["server"] = "http://t.example".into();
        std::fs::write(&path, bad.to_string()).expect("writes");
        assert!(
            read_key(&path)
                .expect_err("http")
                .to_string()
                .contains(": server: ")
        );

        let mut bad = key;
        bad["extra"] = 1.into();
        std::fs::write(&path, bad.to_string()).expect("writes");
        let err = read_key(&path).expect_err("unknown").to_string();
        assert!(err.contains("unknown field `extra`"), "{err}");
    }
}
