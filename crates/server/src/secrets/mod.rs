//! Sealed secrets (issue 17 item 6, ADR 0030): write-only values sealed to
//! each targeted device's X25519 key and delivered in the device's spec
//! (`secrets` section).
//!
//! tetherd holds a value only while a `set` request seals it: it stores
//! and sends ciphertexts, and no route returns a value. So it cannot seal
//! a secret for a device that matches the target later or changes its
//! key: those are listed as `stale` (or `withoutKey`) until the operator
//! sets the secret again, which seals it for every device targeted then.

use std::collections::BTreeSet;

use base64::Engine;
use chrono::Utc;
use tether_proto::DeviceId;
use tether_proto::desired::check_name;
use tether_proto::desired::resources::Target;
use tether_proto::sealed::{self, MAX_VALUE_BYTES, PublicKey};
use tether_proto::secrets::{SealedSecret, Secret, SetSecret};
use tether_proto::spec::{MAX_SPEC_BYTES, SpecError};
use zeroize::Zeroizing;

use crate::desired::{TargetError, target_devices};
use crate::registry::{SpecUpdateError, Specs};
use crate::store::{Ciphertext, SecretRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secret {0} not found")]
    NotFound(String),
    /// A field of the request, by its path, and what is wrong with it.
    #[error("invalid {0}")]
    Invalid(SpecError),
    #[error("could not put secret {secret} into device {device}'s spec")]
    Spec {
        secret: String,
        device: DeviceId,
        #[source]
        source: SpecUpdateError,
    },
    #[error(
        "sealed for device {device}, the secret would make its spec {size} bytes, more than the {MAX_SPEC_BYTES} a device is sent; nothing was changed (make the value or the device's other secrets smaller)"
    )]
    TooLarge { device: DeviceId, size: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> SecretsError {
    SecretsError::Invalid(SpecError::new(path, message))
}

#[derive(Clone)]
pub struct Secrets {
    store: Store,
    specs: Specs,
}

impl Secrets {
    pub fn new(store: Store, specs: Specs) -> Self {
        Self { store, specs }
    }

    /// Records the sealing key a device reports (ingest hands it here).
    /// The report arrives on the device's own mTLS session, so the key is
    /// that device's; a malformed one is ignored and logged.
    pub async fn record_key(&self, device: &DeviceId, key: &str) -> Result<(), StoreError> {
        let key = match PublicKey::parse(key) {
            Ok(key) => key.encode(),
            Err(error) => {
                tracing::warn!(%device, %error, "ignoring a sealing key the device reported");
                return Ok(());
            }
        };
        if self
            .store
            .record_sealing_key(device, &key, Utc::now())
            .await?
        {
            tracing::info!(%device, "device reported a new sealing key; secrets set before it need setting again");
        }
        Ok(())
    }

    /// Creates or replaces a secret: seals the value to every targeted
    /// device that has a key, stores only the ciphertexts, puts them into
    /// those devices' specs and takes the secret out of the specs of the
    /// devices it no longer targets. The value is zeroed once sealed.
    pub async fn set(&self, name: &str, request: SetSecret) -> Result<Secret, SecretsError> {
        check_name("name", name).map_err(SecretsError::Invalid)?;
        let SetSecret {
            target,
            value,
            value_base64,
        } = request;
        let value = value_bytes(value, value_base64)?;
        let targeted = self.targets(&target, true).await?;
        let keys = self.store.sealing_keys(&targeted).await?;
        let mut ciphertexts = Vec::with_capacity(keys.len());
        for (device, key) in &keys {
            // A key nothing can be sealed to (recorded before keys were
            // checked as they arrive) leaves its device without the
            // secret, as a device without a key: never the whole fleet.
            let sealed = PublicKey::parse(key).and_then(|public| sealed::seal(&public, &value));
            let ciphertext = match sealed {
                Ok(ciphertext) => ciphertext,
                Err(error) => {
                    tracing::warn!(%device, secret = name, %error, "cannot seal to the device's key; it does not get the secret");
                    continue;
                }
            };
            ciphertexts.push(Ciphertext {
                device: device.clone(),
                public_key: key.clone(),
                ciphertext,
            });
        }
        drop(value);
        // Every device's spec must take its copy before anything is
        // written: a set refused half-way would leave a secret claiming
        // devices that never got it.
        for sealed in &ciphertexts {
            self.check_fits(&sealed.device, name, &sealed.ciphertext)
                .await?;
        }
        let previous = self.store.get_secret(name).await?;
        let version = self
            .store
            .write_secret(name, &target, &ciphertexts, Utc::now())
            .await?;
        for sealed in &ciphertexts {
            let section = SealedSecret {
                version,
                ciphertext: sealed.ciphertext.clone(),
            };
            self.put(&sealed.device, name, Some(&section)).await?;
        }
        let now_sealed: BTreeSet<&DeviceId> = ciphertexts.iter().map(|c| &c.device).collect();
        for device in previous.iter().flat_map(|p| p.sealed_to.keys()) {
            if !now_sealed.contains(device) {
                self.put(device, name, None).await?;
            }
        }
        tracing::info!(
            secret = name,
            version,
            sealed = ciphertexts.len(),
            targeted = targeted.len(),
            "secret sealed"
        );
        self.secret(name).await
    }

    /// Whether `device`'s spec stays within [`MAX_SPEC_BYTES`] with
    /// `ciphertext` as secret `name` (a version number's worth of room
    /// left for the section's `version`).
    async fn check_fits(
        &self,
        device: &DeviceId,
        name: &str,
        ciphertext: &str,
    ) -> Result<(), SecretsError> {
        let mut spec = self.store.get_spec(device).await?.spec;
        let section = spec
            .entry(tether_proto::secrets::SECTION)
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if let serde_json::Value::Object(section) = section {
            section.insert(
                name.to_owned(),
                serde_json::json!({"version": u64::MAX, "ciphertext": ciphertext}),
            );
        }
        let size = serde_json::to_vec(&spec).map_or(usize::MAX, |json| json.len());
        if size > MAX_SPEC_BYTES {
            return Err(SecretsError::TooLarge {
                device: device.clone(),
                size,
            });
        }
        Ok(())
    }

    pub async fn secret(&self, name: &str) -> Result<Secret, SecretsError> {
        let record = self
            .store
            .get_secret(name)
            .await?
            .ok_or_else(|| SecretsError::NotFound(name.to_owned()))?;
        self.view(record).await
    }

    pub async fn secrets(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Secret>, SecretsError> {
        let mut secrets = Vec::new();
        for record in self.store.list_secrets(after, limit).await? {
            secrets.push(self.view(record).await?);
        }
        Ok(secrets)
    }

    /// Deletes a secret and takes it out of every device's spec.
    pub async fn delete(&self, name: &str) -> Result<(), SecretsError> {
        let record = self
            .store
            .get_secret(name)
            .await?
            .ok_or_else(|| SecretsError::NotFound(name.to_owned()))?;
        for device in record.sealed_to.keys() {
            self.put(device, name, None).await?;
        }
        self.store.delete_secret(name).await.map_err(|e| match e {
            StoreError::NotFound { .. } => SecretsError::NotFound(name.to_owned()),
            other => other.into(),
        })?;
        tracing::info!(secret = name, "secret deleted");
        Ok(())
    }

    /// Where a secret stands now: sealed to each targeted device's
    /// current key, or not.
    async fn view(&self, record: SecretRecord) -> Result<Secret, SecretsError> {
        let targeted = self.targets(&record.target, false).await?;
        let keys = self.store.sealing_keys(&targeted).await?;
        let (mut sealed, mut without_key, mut stale) = (Vec::new(), Vec::new(), Vec::new());
        for device in targeted {
            match (keys.get(&device), record.sealed_to.get(&device)) {
                (None, _) => without_key.push(device.to_string()),
                (Some(key), Some(sealed_to)) if key == sealed_to => {
                    sealed.push(device.to_string());
                }
                (Some(_), _) => stale.push(device.to_string()),
            }
        }
        Ok(Secret {
            name: record.name,
            target: record.target,
            version: record.version,
            sealed,
            without_key,
            stale,
            created_at: record.created_at,
            updated_at: record.updated_at,
        })
    }

    /// The devices `target` picks now. Setting a secret needs exactly one
    /// of device and selector, and at least one device.
    async fn targets(&self, target: &Target, setting: bool) -> Result<Vec<DeviceId>, SecretsError> {
        if setting {
            match (&target.device, &target.selector) {
                (Some(_), Some(_)) => {
                    return Err(invalid("target", "give device or selector, not both"));
                }
                (None, None) => {
                    return Err(invalid(
                        "target",
                        "targets nothing: give device (one device) or selector (labels)",
                    ));
                }
                _ => {}
            }
        }
        let devices = target_devices(&self.store, target, "target")
            .await
            .map_err(|error| match error {
                TargetError::Invalid(field) => SecretsError::Invalid(field),
                TargetError::Store(error) => error.into(),
            })?;
        if setting && devices.is_empty() {
            return Err(match (&target.device, &target.selector) {
                (Some(device), _) => invalid("target.device", format!("device {device} not found")),
                (_, selector) => invalid(
                    "target.selector",
                    format!(
                        "selector {:?} picks no device; label the devices first (`tether devices label`)",
                        selector.as_deref().unwrap_or_default()
                    ),
                ),
            });
        }
        Ok(devices)
    }

    /// Writes the device's `secrets` section entry; a device deleted
    /// meanwhile has no spec to write, which is fine.
    async fn put(
        &self,
        device: &DeviceId,
        name: &str,
        sealed: Option<&SealedSecret>,
    ) -> Result<(), SecretsError> {
        match self.specs.set_secret(device, name, sealed).await {
            Ok(_) | Err(SpecUpdateError::Store(StoreError::NotFound { .. })) => Ok(()),
            Err(source) => Err(SecretsError::Spec {
                secret: name.to_owned(),
                device: device.clone(),
                source,
            }),
        }
    }
}

/// The value's bytes from exactly one of `value` and `valueBase64`, not
/// empty and at most [`MAX_VALUE_BYTES`]. The request's copies are zeroed.
fn value_bytes(
    value: Option<String>,
    value_base64: Option<String>,
) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
    let (path, bytes) = match (value.map(Zeroizing::new), value_base64.map(Zeroizing::new)) {
        (Some(_), Some(_)) => {
            return Err(invalid("value", "give value or valueBase64, not both"));
        }
        (None, None) => {
            return Err(invalid(
                "value",
                "is missing: give the value as text (value) or as base64 bytes (valueBase64)",
            ));
        }
        (Some(text), None) => ("value", Zeroizing::new(text.as_bytes().to_vec())),
        (None, Some(encoded)) => (
            "valueBase64",
            Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| invalid("valueBase64", "is not base64"))?,
            ),
        ),
    };
    if bytes.is_empty() {
        return Err(invalid(path, "is empty: a secret needs a value"));
    }
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(invalid(
            path,
            format!(
                "is {} bytes, more than the {MAX_VALUE_BYTES} a secret may have (secrets travel in the device's spec, 64 KiB in all)",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}
