//! Sealed secrets (issue 17, ADR 0030): the spec's `secrets` section, which
//! carries each secret sealed to the device's key ([`crate::sealed`]), and
//! the API's secret resources, which show where a secret is sealed and
//! never its value.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::desired::resources::Target;
use crate::sealed::MAX_SEALED_BYTES;
use crate::spec::SpecError;

/// The section's name in the spec.
pub const SECTION: &str = "secrets";
/// At most this many secrets per device.
pub const MAX_SECRETS: usize = 64;

/// The spec section: secret name → the value sealed to this device.
pub type SealedSecrets = BTreeMap<String, SealedSecret>;

/// One secret as one device gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SealedSecret {
    /// Goes up by one with every `set` of the secret.
    pub version: u64,
    /// The value sealed to the device's public key (base64).
    pub ciphertext: String,
}

/// Checks the `secrets` section: names, sizes, fields.
pub fn validate(path: &str, section: &Value) -> Result<(), SpecError> {
    let Value::Object(secrets) = section else {
        return Err(SpecError::new(
            path,
            "must be a JSON object of sealed secrets by name",
        ));
    };
    if secrets.len() > MAX_SECRETS {
        return Err(SpecError::new(
            path,
            format!(
                "has {} secrets, more than the {MAX_SECRETS} allowed",
                secrets.len()
            ),
        ));
    }
    for (name, secret) in secrets {
        let path = format!("{path}.{name}");
        crate::desired::check_name(&path, name)?;
        let secret: SealedSecret = serde_json::from_value(secret.clone())
            .map_err(|e| SpecError::new(&path, e.to_string()))?;
        if secret.ciphertext.is_empty() || secret.ciphertext.len() > MAX_SEALED_BYTES {
            return Err(SpecError::new(
                format!("{path}.ciphertext"),
                format!("must be 1 to {MAX_SEALED_BYTES} bytes of base64"),
            ));
        }
    }
    Ok(())
}

/// The body of `PUT /api/v1/secrets/{name}`: the value as text (`value`)
/// or as bytes (`valueBase64`), exactly one of them. Its `Debug` never
/// shows the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetSecret {
    pub target: Target,
    /// The value as UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value as base64 bytes (a key file, a binary token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl fmt::Debug for SetSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetSecret")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// A secret as the API shows it: where it is sealed, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Secret {
    pub name: String,
    pub target: Target,
    /// Goes up by one with every `set`.
    pub version: u64,
    /// Targeted devices holding the value sealed to their current key.
    pub sealed: Vec<String>,
    /// Targeted devices that have not reported a sealing key (an agent
    /// that has not connected since it was enrolled, or too old): they get
    /// the secret once they have one and the secret is set again.
    pub without_key: Vec<String>,
    /// Targeted devices with a key the value is not sealed to: they
    /// matched the target, or changed their key, after the last `set`.
    /// `tether secrets set NAME` again seals it for them.
    pub stale: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_section_names_what_is_wrong() {
        assert!(
            validate(
                "spec.secrets",
                &json!({"db": {"version": 1, "ciphertext": "AQ=="}})
            )
            .is_ok()
        );
        let err = validate(
            "spec.secrets",
            &json!({"DB": {"version": 1, "ciphertext": "AQ=="}}),
        )
        .expect_err("bad name");
        assert_eq!(err.path, "spec.secrets.DB");
        let err = validate(
            "spec.secrets",
            &json!({"db": {"version": 1, "ciphertext": ""}}),
        )
        .expect_err("empty");
        assert_eq!(err.path, "spec.secrets.db.ciphertext");
        let err = validate("spec.secrets", &json!({"db": {"version": 1, "value": "x"}}))
            .expect_err("unknown field");
        assert!(err.message.contains("value"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_value() {
        let set = SetSecret {
            target: Target {
                device: Some("pi-1".into()),
                selector: None,
            },
            value: Some("hunter2".into()),
            value_base64: Some("aHVudGVyMg==".into()),
        };
        let shown = format!("{set:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("aHVudGVyMg"),
            "{shown}"
        );
    }
}
