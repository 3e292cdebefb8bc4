//! Provisioning: how an agent without credentials gets them without a
//! token made for it — by registering under a provisioning policy with a
//! provisioning key (`--provisioning-key FILE`), or with the boot bundle
//! `tether os edit` wrote onto the boot partition (`--boot-bundle DIR`),
//! which holds either such a key or an enrollment token for one device.

pub mod register;

use std::path::{Path, PathBuf};

use serde_json::Value;
use tether_proto::provisioning::{
    BOOT_BUNDLE_DIR, BOOT_BUNDLE_FILE, BootBundle, BootCredential, PROVISIONING_KEY_KIND,
    ProvisioningKey,
};

/// The bundle version this agent reads.
const BUNDLE_VERSION: u32 = 1;

/// A provisioning key file or boot bundle that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProvisioningError {
    #[error("cannot read the {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {what} {path} is not usable: {problem}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
}

const KEY: &str = "provisioning key";
const BUNDLE: &str = "boot bundle";

/// Reads and checks the provisioning key file at `path`.
pub fn read_key(path: &Path) -> Result<ProvisioningKey, ProvisioningError> {
    let text = read(KEY, path)?;
    parse_key(&text).map_err(|problem| ProvisioningError::Invalid {
        what: KEY,
        path: path.to_owned(),
        problem,
    })
}

/// Where the boot bundle is under `dir` (the boot partition's root).
pub fn bundle_path(dir: &Path) -> PathBuf {
    dir.join(BOOT_BUNDLE_DIR).join(BOOT_BUNDLE_FILE)
}

/// Reads and checks the boot bundle under `dir`.
pub fn read_bundle(dir: &Path) -> Result<BootBundle, ProvisioningError> {
    let path = bundle_path(dir);
    let text = read(BUNDLE, &path)?;
    parse_bundle(&text).map_err(|problem| ProvisioningError::Invalid {
        what: BUNDLE,
        path,
        problem,
    })
}

fn read(what: &'static str, path: &Path) -> Result<String, ProvisioningError> {
    std::fs::read_to_string(path).map_err(|source| ProvisioningError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A provisioning key from its file's text. The kind is checked first, so
/// that another file given by mistake is named for what it is.
pub fn parse_key(text: &str) -> Result<ProvisioningKey, String> {
    let value = json_object(text)?;
    match value.get("kind") {
        Some(Value::String(kind)) if kind == PROVISIONING_KEY_KIND => {}
        Some(kind) => {
            return Err(format!(
                "its kind is {kind}, not {PROVISIONING_KEY_KIND:?}; `tether policies keys create POLICY` writes a provisioning key"
            ));
        }
        None => {
            return Err(format!(
                "it has no \"kind\"; a provisioning key has kind {PROVISIONING_KEY_KIND:?} (`tether policies keys create POLICY` writes one)"
            ));
        }
    }
    let key: ProvisioningKey = serde_json::from_value(value).map_err(|e| e.to_string())?;
    non_empty(&[
        ("server", &key.server),
        ("caSha256", &key.ca_sha256),
        ("policy", &key.policy),
        ("keyId", &key.key_id),
        ("secret", &key.secret),
    ])?;
    Ok(key)
}

/// A boot bundle from its file's text.
pub fn parse_bundle(text: &str) -> Result<BootBundle, String> {
    let value = json_object(text)?;
    match value.get("version") {
        Some(version) if version.as_u64() == Some(u64::from(BUNDLE_VERSION)) => {}
        Some(version) => {
            return Err(format!(
                "its version is {version}; this agent reads version {BUNDLE_VERSION} (was it written by a newer `tether os edit`?)"
            ));
        }
        None => return Err("it has no \"version\"; `tether os edit` writes one".into()),
    }
    let bundle: BootBundle = serde_json::from_value(value).map_err(|e| e.to_string())?;
    non_empty(&[("server", &bundle.server), ("caSha256", &bundle.ca_sha256)])?;
    match &bundle.credential {
        BootCredential::Provisioning { key_id, secret } => {
            non_empty(&[("credential.keyId", key_id), ("credential.secret", secret)])?
        }
        BootCredential::Enrollment { device, token } => {
            non_empty(&[("credential.device", device), ("credential.token", token)])?
        }
    }
    Ok(bundle)
}

fn json_object(text: &str) -> Result<Value, String> {
    match serde_json::from_str(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("expected a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn non_empty(fields: &[(&str, &String)]) -> Result<(), String> {
    match fields.iter().find(|(_, value)| value.trim().is_empty()) {
        Some((name, _)) => Err(format!("{name} is empty")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key_json() -> Value {
        json!({"kind": PROVISIONING_KEY_KIND, "server": "https://tether.example:8443",
               "caSha256": "ab".repeat(32), "policy": "lab", "keyId": "pk-1", "secret": "s3cret"})
    }

    fn bundle_json(credential: Value) -> Value {
        json!({"version": 1, "server": "https://tether.example:8443",
               "caSha256": "ab".repeat(32), "credential": credential})
    }

    #[test]
    fn a_provisioning_key_file_parses() {
        let key = parse_key(&key_json().to_string()).expect("parses");
        assert_eq!(key.key_id, "pk-1");
        assert_eq!(key.policy, "lab");
    }

    #[test]
    fn a_bad_provisioning_key_file_names_its_problem() {
        let cases = [
            ("{not json".to_owned(), "not JSON"),
            ("[]".to_owned(), "expected a JSON object"),
            (
                json!({"server": "https://h"}).to_string(),
                "it has no \"kind\"",
            ),
            (
                bundle_json(json!({"kind": "provisioning", "keyId": "k", "secret": "s"}))
                    .to_string(),
                "it has no \"kind\"",
            ),
            (
                {
                    let mut key = key_json();
                    key["kind"] = json!("tether-enrollment-token");
                    key.to_string()
                },
                "its kind is \"tether-enrollment-token\", not \"tether-provisioning-key\"",
            ),
            (
                {
                    let mut key = key_json();
                    key.as_object_mut().expect("object").remove("secret");
                    key.to_string()
                },
                "missing field `secret`",
            ),
            (
                {
                    let mut key = key_json();
                    key["keyId"] = json!(" ");
                    key.to_string()
                },
                "keyId is empty",
            ),
            (
                {
                    let mut key = key_json();
                    key["extra"] = json!(1);
                    key.to_string()
                },
                "unknown field `extra`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_key(&text).expect_err(&text);
            assert!(err.contains(expected), "{text}: {err}");
        }
        let temp = tempfile::tempdir().expect("temp dir");
        let path = temp.path().join("key.json");
        std::fs::write(&path, "[]").expect("writes");
        let err = read_key(&path).expect_err("not an object").to_string();
        assert!(
            err.contains("the provisioning key ") && err.contains("key.json is not usable"),
            "{err}"
        );
        let err = read_key(&temp.path().join("none.json"))
            .expect_err("missing")
            .to_string();
        assert!(
            err.contains("cannot read the provisioning key") && err.contains("none.json"),
            "{err}"
        );
    }

    #[test]
    fn a_boot_bundle_holds_a_provisioning_key_or_an_enrollment_token() {
        let temp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(temp.path().join(BOOT_BUNDLE_DIR)).expect("mkdir");
        let bundle = bundle_json(json!({"kind": "provisioning", "keyId": "pk-1", "secret": "s"}));
        std::fs::write(bundle_path(temp.path()), bundle.to_string()).expect("writes");
        let read = read_bundle(temp.path()).expect("reads");
        assert_eq!(
            read.credential,
            BootCredential::Provisioning {
                key_id: "pk-1".into(),
                secret: "s".into()
            }
        );
        let bundle = bundle_json(json!({"kind": "enrollment", "device": "edge-1", "token": "t"}));
        let parsed = parse_bundle(&bundle.to_string()).expect("parses");
        assert!(matches!(
            parsed.credential,
            BootCredential::Enrollment { .. }
        ));

        let err = read_bundle(&temp.path().join("elsewhere"))
            .expect_err("no bundle")
            .to_string();
        assert!(
            err.contains("cannot read the boot bundle")
                && err.contains("elsewhere/tether/bundle.json"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_boot_bundle_names_its_problem() {
        let cases = [
            ("{not json".to_owned(), "not JSON"),
            ("\"bundle\"".to_owned(), "expected a JSON object"),
            (
                json!({"server": "https://h"}).to_string(),
                "it has no \"version\"",
            ),
            (
                {
                    let mut bundle =
                        bundle_json(json!({"kind": "enrollment", "device": "d", "token": "t"}));
                    bundle["version"] = json!(2);
                    bundle.to_string()
                },
                "its version is 2; this agent reads version 1",
            ),
            (
                bundle_json(json!({"kind": "password", "secret": "s"})).to_string(),
                "unknown variant `password`, expected `provisioning` or `enrollment`",
            ),
            (
                bundle_json(json!({"keyId": "k", "secret": "s"})).to_string(),
                "missing field `kind`",
            ),
            (
                bundle_json(json!({"kind": "provisioning", "keyId": "k"})).to_string(),
                "missing field `secret`",
            ),
            (
                bundle_json(json!({"kind": "enrollment", "device": "d", "token": ""})).to_string(),
                "credential.token is empty",
            ),
            (
                {
                    let mut bundle =
                        bundle_json(json!({"kind": "enrollment", "device": "d", "token": "t"}));
                    bundle.as_object_mut().expect("object").remove("caSha256");
                    bundle.to_string()
                },
                "missing field `caSha256`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_bundle(&text).expect_err(&text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
