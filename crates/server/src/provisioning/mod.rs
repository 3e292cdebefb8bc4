//! Provisioning (seed 004, ADR 0025): policies that register devices by
//! themselves, the keys an OS image carries to register under one, the
//! approvals of a `MANUAL` policy, and recognising hardware again by the
//! policy's identity fields.
//!
//! Which device a registration becomes is decided here, in
//! [`decide_new`], a plain function; the rest is reading and writing
//! around it.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tether_proto::DeviceId;
use tether_proto::api::EnrollResponse;
use tether_proto::provisioning::{
    self, Approval, IdentityField, PROVISIONING_KEY_KIND, Policy, PolicySpec, ProvisioningKey,
    ProvisioningKeyInfo, ProvisioningMode, RegisterRequest, RegistrationState,
};
use tether_proto::spec::{DeviceSpec, Facts, SpecError};

use crate::auth::{new_secret, secret_hash};
use crate::registry::{self, Endpoints, Registry, RegistryError, Replacing};
use crate::store::{
    Admission, DeviceRecord, PolicyRecord, ProvisionedDevice, ProvisioningKeyRecord, Refused,
    RegistrationRecord, RegistrationWrite, Store, StoreError,
};

/// Longest key id and secret a registration may send.
const MAX_KEY_FIELD_BYTES: usize = 128;
/// Largest facts a registration may send, as JSON.
const MAX_FACTS_BYTES: usize = 16 * 1024;
/// How long a waiting device is told to wait before asking again.
pub const RETRY_AFTER_SECONDS: u64 = 10;
/// Registrations one policy keeps waiting for a decision: past it, a
/// leaked key fills no approval queue (and no disk), and new ones are
/// told to come back.
pub const MAX_PENDING_PER_POLICY: u64 = 1_000;
/// Registrations one key keeps waiting: a leaked key fills a tenth of
/// its policy's queue, and the keys of other images still get in.
pub const MAX_PENDING_PER_KEY: u64 = 100;
/// Why a revoked key's waiting requests were denied.
pub const REVOKED_KEY_REASON: &str = "provisioning key revoked";
/// How long a device is told to wait when its policy is at a limit.
pub const LIMIT_RETRY_AFTER_SECONDS: u64 = 60;
/// Attempts at a free generated device name.
const NAME_ATTEMPTS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ProvisioningError {
    #[error("policy {0} not found")]
    PolicyNotFound(String),
    #[error("policy {0} already exists; pick another name or delete it first")]
    PolicyExists(String),
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    #[error("invalid policy: template.spec: {0}")]
    InvalidTemplateSpec(SpecError),
    #[error("invalid policy: template.metadata.labels: {0}")]
    InvalidTemplateLabels(RegistryError),
    #[error("invalid registration: {0}")]
    InvalidRegistration(String),
    #[error("{0}")]
    KeyRefused(KeyRefusal),
    #[error(
        "registration {approval} was denied{}; the device stops. Register it again with a new key pair (an empty state dir) once the reason is resolved",
        reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
    )]
    Denied {
        approval: String,
        reason: Option<String>,
    },
    #[error(
        "policy {policy} has {MAX_PENDING_PER_POLICY} registrations waiting for approval, the most it keeps; approve or deny some (`tether approvals list`), or revoke a leaked key; ask again later"
    )]
    TooManyPending { policy: String },
    #[error(
        "provisioning key {key} of policy {policy} has {MAX_PENDING_PER_KEY} registrations waiting for approval, the most one key keeps; approve or deny some (`tether approvals list`), or revoke the key if it leaked; ask again later"
    )]
    TooManyPendingForKey { policy: String, key: String },
    #[error(
        "policy {policy} has created its maxDevices ({max}) devices; delete devices it created or raise the policy's maxDevices; ask again later"
    )]
    MaxDevices { policy: String, max: u64 },
    #[error(
        "policy {policy} registered its maxRegistrationsPerHour ({per_hour}) devices this hour; ask again later, or raise the policy's maxRegistrationsPerHour"
    )]
    RateExceeded { policy: String, per_hour: u64 },
    #[error("invalid provisioning key: {0}")]
    InvalidKey(String),
    #[error("approval {0} not found")]
    ApprovalNotFound(String),
    #[error("approval {id} is {state:?}, not pending: it was decided already")]
    NotPending {
        id: String,
        state: RegistrationState,
    },
    #[error(
        "device {0}, which this registration became, was deleted; register with a new key pair (an empty state dir)"
    )]
    DeviceGone(DeviceId),
    #[error(
        "device {0} no longer holds the certificate this key pair obtained: it was revoked, or the device registered again from other media; this key pair cannot take the device back. Register with a new key pair (an empty state dir)"
    )]
    Superseded(DeviceId),
    #[error(
        "approval {id} was made with provisioning key {key}, which was revoked: a revoked key's requests are not approved; deny it"
    )]
    KeyRevokedBeforeApproval { id: String, key: String },
    #[error(
        "approval {id}'s hardware identity is held by device {holder}, which registered since this request was made: approving it as a new device would take {holder}'s identity. Deny it, or delete {holder} first if this hardware is to be a new device"
    )]
    IdentityHeld { id: String, holder: DeviceId },
    #[error(
        "the same key pair, or another claiming the same identity, is registering on another connection; ask again shortly"
    )]
    Busy,
    #[error("key {key} of policy {policy} not found")]
    KeyNotFound { policy: String, key: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a provisioning key was refused; all are 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error(
        "unknown provisioning key (or a wrong secret): make a new one with `tether policies keys create POLICY`"
    )]
    Unknown,
    #[error(
        "provisioning key {0} was revoked: make a new one with `tether policies keys create POLICY`"
    )]
    Revoked(String),
    #[error(
        "provisioning key {0} expired at {1}: make a new one with `tether policies keys create POLICY`"
    )]
    Expired(String, DateTime<Utc>),
}

/// A registration's outcome for the device.
#[derive(Debug)]
pub enum Registered {
    /// Its certificate: it is the device named in it.
    Enrolled(EnrollResponse),
    /// Waiting for an operator (`MANUAL`).
    Waiting { approval: String },
}

/// What a new registration (no earlier one for its key pair) becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewRegistration {
    /// The device the hardware's identity names, at once.
    Reuse(DeviceId),
    /// A new device from the template, at once.
    Create,
    /// An approval request; approving reuses `matched` if it is there.
    /// `why`: why an unattended policy asks.
    Ask {
        matched: Option<DeviceId>,
        why: Option<String>,
    },
}

/// The device a registration's identity names, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub device: DeviceId,
    /// It has a certificate: not revoked or detached.
    pub has_credential: bool,
    pub online: bool,
}

/// Other key pairs that claimed a registration's identity within the
/// policy's `sharedIdentityWindowMinutes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentClaims {
    pub other_key_pairs: u64,
    pub window_minutes: u64,
}

/// The rule of seed 004: an unattended policy registers at once, reusing
/// the device its identity fields found; a manual one asks first. Taking a
/// device over is only automatic from media that is gone: a match that is
/// online (its media is alive: someone claims its identity) or revoked (an
/// operator shut it out, e.g. stolen) waits for an operator even under an
/// unattended policy. So does a second key pair claiming an identity
/// within minutes of another: boards booted from one image can all report
/// the image's identity facts (a baked machine id, a default hostname),
/// and would otherwise fold into one device.
pub fn decide_new(
    mode: ProvisioningMode,
    matched: Option<Matched>,
    recent: RecentClaims,
) -> NewRegistration {
    if recent.other_key_pairs == 0 {
        return decide_by_match(mode, matched);
    }
    // Before any other reason: a device that seems revoked or offline may
    // be the one this identity's first claim is still registering.
    NewRegistration::Ask {
        why: Some(format!(
            "{} key pairs claimed this identity within {} minutes: boards booted from one image may report the same identity facts; approve only if this is the same hardware{}",
            recent.other_key_pairs + 1,
            recent.window_minutes,
            matched
                .as_ref()
                .map(|m| format!(" (approving moves {} to it)", m.device))
                .unwrap_or_default()
        )),
        matched: matched.map(|m| m.device),
    }
}

/// [`decide_new`] by the matched device alone.
fn decide_by_match(mode: ProvisioningMode, matched: Option<Matched>) -> NewRegistration {
    match (mode, matched) {
        (ProvisioningMode::Unattended, None) => NewRegistration::Create,
        (ProvisioningMode::Unattended, Some(m)) if m.has_credential && !m.online => {
            NewRegistration::Reuse(m.device)
        }
        (ProvisioningMode::Unattended, Some(m)) => NewRegistration::Ask {
            why: Some(if m.has_credential {
                format!(
                    "its identity is {}'s, which is online: approve to move {} to this hardware (its current media loses it)",
                    m.device, m.device
                )
            } else {
                format!(
                    "its identity is {}'s, whose credential was revoked: approve to give it back",
                    m.device
                )
            }),
            matched: Some(m.device),
        },
        (ProvisioningMode::Manual, matched) => NewRegistration::Ask {
            matched: matched.map(|m| m.device),
            why: None,
        },
    }
}

/// Whether a key may register now.
pub fn check_key(key: &ProvisioningKeyRecord, now: DateTime<Utc>) -> Result<(), KeyRefusal> {
    if key.revoked_at.is_some() {
        return Err(KeyRefusal::Revoked(key.id.clone()));
    }
    match key.expires_at {
        Some(at) if at <= now => Err(KeyRefusal::Expired(key.id.clone(), at)),
        _ => Ok(()),
    }
}

/// A name for a device a policy creates: the policy's, then 8 random hex
/// digits, within a device name's 63 characters.
pub fn generated_name(policy: &str) -> DeviceId {
    let suffix = &new_secret()[..8];
    let prefix: String = policy.chars().take(63 - 9).collect();
    let prefix = prefix.trim_end_matches('-');
    DeviceId::new(format!("{prefix}-{suffix}"))
        .or_else(|_| DeviceId::new(format!("device-{suffix}")))
        .expect("a policy name is a device name, and so is the fallback")
}

#[derive(Clone)]
pub struct Provisioning {
    store: Store,
    registry: Registry,
}

impl Provisioning {
    pub fn new(store: Store, registry: Registry) -> Self {
        Self { store, registry }
    }

    /// Checks and stores a new policy.
    pub async fn create_policy(
        &self,
        name: &str,
        spec: PolicySpec,
    ) -> Result<Policy, ProvisioningError> {
        provisioning::check_policy(name, &spec).map_err(ProvisioningError::InvalidPolicy)?;
        registry::validate_labels(&spec.template.metadata.labels)
            .map_err(ProvisioningError::InvalidTemplateLabels)?;
        template_spec(&spec)?;
        match self.store.insert_policy(name, &spec, Utc::now()).await {
            Err(StoreError::Conflict { .. }) => {
                return Err(ProvisioningError::PolicyExists(name.to_owned()));
            }
            other => other?,
        }
        tracing::info!(policy = name, mode = ?spec.mode, "provisioning policy created");
        self.policy(name).await
    }

    pub async fn policy(&self, name: &str) -> Result<Policy, ProvisioningError> {
        self.store
            .get_policy(name)
            .await?
            .map(to_api)
            .ok_or_else(|| ProvisioningError::PolicyNotFound(name.to_owned()))
    }

    pub async fn policies(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Policy>, ProvisioningError> {
        Ok(self
            .store
            .list_policies(after, limit)
            .await?
            .into_iter()
            .map(to_api)
            .collect())
    }

    /// Deletes a policy, its keys and its registrations; the devices it
    /// created stay, and keep their certificates.
    pub async fn delete_policy(&self, name: &str) -> Result<(), ProvisioningError> {
        match self.store.delete_policy(name).await {
            Err(StoreError::NotFound { .. }) => {
                Err(ProvisioningError::PolicyNotFound(name.to_owned()))
            }
            other => Ok(other?),
        }
    }

    /// Makes a key for `policy`: the file an OS image carries, its secret
    /// shown this once.
    pub async fn create_key(
        &self,
        policy: &str,
        created_by: &str,
        expires_at: Option<DateTime<Utc>>,
        endpoints: &Endpoints,
    ) -> Result<ProvisioningKey, ProvisioningError> {
        let now = Utc::now();
        if let Some(at) = expires_at
            && at <= now
        {
            return Err(ProvisioningError::InvalidKey(format!(
                "expiresAt {at} is not in the future; give a later time, or none for a key that lasts until revoked"
            )));
        }
        let secret = new_secret();
        let record = ProvisioningKeyRecord {
            id: uuid::Uuid::now_v7().to_string(),
            policy: policy.to_owned(),
            secret_hash: secret_hash(&secret),
            created_at: now,
            created_by: created_by.to_owned(),
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        match self.store.insert_provisioning_key(&record).await {
            Err(StoreError::NotFound { .. }) => {
                return Err(ProvisioningError::PolicyNotFound(policy.to_owned()));
            }
            other => other?,
        }
        tracing::info!(policy, key = %record.id, "provisioning key created");
        Ok(ProvisioningKey {
            kind: PROVISIONING_KEY_KIND.to_owned(),
            server: endpoints.api_url.clone(),
            ca_sha256: self.registry.ca_sha256().to_owned(),
            policy: policy.to_owned(),
            key_id: record.id,
            secret,
        })
    }

    pub async fn keys(&self, policy: &str) -> Result<Vec<ProvisioningKeyInfo>, ProvisioningError> {
        self.policy(policy).await?;
        Ok(self
            .store
            .list_provisioning_keys(policy)
            .await?
            .into_iter()
            .map(|key| ProvisioningKeyInfo {
                key_id: key.id,
                policy: key.policy,
                created_at: key.created_at,
                created_by: key.created_by,
                expires_at: key.expires_at,
                revoked_at: key.revoked_at,
                last_used_at: key.last_used_at,
            })
            .collect())
    }

    /// Revokes a key: devices not yet registered with it are refused, and
    /// its requests waiting for approval are denied (a leaked key's
    /// requests leave the queue with it); devices registered with it keep
    /// their certificates.
    pub async fn revoke_key(
        &self,
        policy: &str,
        key: &str,
        by: &str,
    ) -> Result<(), ProvisioningError> {
        match self
            .store
            .revoke_provisioning_key(policy, key, by, REVOKED_KEY_REASON, Utc::now())
            .await
        {
            Err(StoreError::NotFound { .. }) => Err(ProvisioningError::KeyNotFound {
                policy: policy.to_owned(),
                key: key.to_owned(),
            }),
            other => {
                let denied = other?;
                tracing::info!(policy, key, by, denied, "provisioning key revoked");
                Ok(())
            }
        }
    }

    /// A device registers, or asks again how its registration stands.
    pub async fn register(
        &self,
        request: &RegisterRequest,
        endpoints: &Endpoints,
    ) -> Result<Registered, ProvisioningError> {
        let now = Utc::now();
        let (key, expired) = self.authenticate(request, now).await?;
        let public_key = crate::pki::csr_public_key(&request.csr_pem)
            .map_err(|e| ProvisioningError::Registry(RegistryError::BadCsr(e)))?;
        let public_key_sha256 = hex::encode(Sha256::digest(&public_key));
        let facts_bytes = serde_json::to_vec(&request.facts).map_or(usize::MAX, |v| v.len());
        if facts_bytes > MAX_FACTS_BYTES {
            return Err(ProvisioningError::InvalidRegistration(format!(
                "facts are {facts_bytes} bytes of JSON, more than the {MAX_FACTS_BYTES} allowed"
            )));
        }
        let spec = self.spec_of(&key.policy).await?;
        // A few times at most: an attempt can lose a race with the same
        // device asking on another connection (then it finds that one's),
        // or with another key pair claiming its identity (then it asks).
        for _ in 0..3 {
            if let Some(existing) = self
                .store
                .registration_of_key(&key.policy, &public_key_sha256)
                .await?
            {
                // An expired key still lets the registrations it made
                // while valid collect their answers: an approval granted
                // after the key expired is not lost.
                if let Some(refusal) = &expired
                    && existing.key_id.as_deref() != Some(key.id.as_str())
                {
                    return Err(ProvisioningError::KeyRefused(refusal.clone()));
                }
                return self.answer(existing, &request.csr_pem, endpoints).await;
            }
            if let Some(refusal) = expired {
                return Err(ProvisioningError::KeyRefused(refusal));
            }
            match self
                .register_new(&key, &spec, &public_key_sha256, &request.facts, now)
                .await
            {
                Err(ProvisioningError::Store(StoreError::Conflict { .. })) => continue,
                Err(error) => return Err(error),
                Ok(registration) => {
                    return self.answer(registration, &request.csr_pem, endpoints).await;
                }
            }
        }
        Err(ProvisioningError::Busy)
    }

    /// A policy's spec, without the counts of [`Self::policy`]: those
    /// scan the fleet, and registering must not, 1,000 devices at once.
    async fn spec_of(&self, policy: &str) -> Result<PolicySpec, ProvisioningError> {
        self.store
            .get_policy_spec(policy)
            .await?
            .ok_or_else(|| ProvisioningError::PolicyNotFound(policy.to_owned()))
    }

    /// The request's key, unless unknown or revoked; and why it admits no
    /// new registration if it expired.
    async fn authenticate(
        &self,
        request: &RegisterRequest,
        now: DateTime<Utc>,
    ) -> Result<(ProvisioningKeyRecord, Option<KeyRefusal>), ProvisioningError> {
        if request.key_id.len() > MAX_KEY_FIELD_BYTES || request.secret.len() > MAX_KEY_FIELD_BYTES
        {
            return Err(ProvisioningError::KeyRefused(KeyRefusal::Unknown));
        }
        let key = self
            .store
            .get_provisioning_key(&request.key_id)
            .await?
            // Hashes compared, as sessions are found by theirs: how long
            // the comparison takes tells nothing about the secret.
            .filter(|key| key.secret_hash == secret_hash(&request.secret))
            .ok_or(ProvisioningError::KeyRefused(KeyRefusal::Unknown))?;
        let expired = match check_key(&key, now) {
            Ok(()) => None,
            Err(expired @ KeyRefusal::Expired(..)) => Some(expired),
            Err(refusal) => return Err(ProvisioningError::KeyRefused(refusal)),
        };
        self.store.touch_provisioning_key(&key.id, now).await?;
        Ok((key, expired))
    }

    /// Records a registration not seen before, creating or reusing its
    /// device at once under an unattended policy.
    async fn register_new(
        &self,
        key: &ProvisioningKeyRecord,
        spec: &PolicySpec,
        public_key_sha256: &str,
        facts: &Facts,
        now: DateTime<Utc>,
    ) -> Result<RegistrationRecord, ProvisioningError> {
        let policy = key.policy.as_str();
        let fields = identity_fields(spec)?;
        let identity_key = provisioning::identity_key(&fields, facts)
            .map_err(ProvisioningError::InvalidRegistration)?;
        let mut matched_record = self.device_of(policy, identity_key.as_deref()).await?;
        let window_minutes = spec.shared_identity_window_minutes();
        let claims_since = (window_minutes > 0).then(|| {
            now - chrono::Duration::minutes(i64::try_from(window_minutes).unwrap_or(i64::MAX))
        });
        let other_key_pairs = match (&identity_key, claims_since) {
            (Some(identity), Some(since)) => {
                self.store.identity_claims(policy, identity, since).await?
            }
            _ => 0,
        };
        // A claim is written with the identity it gave its device: one
        // counted after the identity was read is found by reading again.
        if other_key_pairs > 0 && matched_record.is_none() {
            matched_record = self.device_of(policy, identity_key.as_deref()).await?;
        }
        let matched = matched_record.as_ref().map(|d| Matched {
            device: d.name.clone(),
            has_credential: d.certificate_serial.is_some(),
            online: d.presence == tether_proto::Presence::Online,
        });
        let mut registration = RegistrationRecord {
            id: uuid::Uuid::now_v7().to_string(),
            policy: policy.to_owned(),
            public_key_sha256: public_key_sha256.to_owned(),
            facts: facts.clone(),
            // Approved by the policy: the answer issues the certificate
            // and records it, as for one a person approved.
            state: RegistrationState::Approved,
            device: None,
            created_at: now,
            decided_at: Some(now),
            decided_by: Some(format!("policy {policy}")),
            reason: None,
            certificate_serial: None,
            key_id: Some(key.id.clone()),
            identity_key: identity_key.clone(),
        };
        let recent = RecentClaims {
            other_key_pairs,
            window_minutes,
        };
        let approved = Admission::Approved {
            per_hour: spec.registrations_per_hour(),
            max_devices: spec.max_devices,
            claims_since,
        };
        match decide_new(spec.mode, matched, recent) {
            NewRegistration::Reuse(device) => {
                tracing::info!(policy, %device, "registration reuses the device its identity names");
                registration.certificate_serial = matched_record.and_then(|d| d.certificate_serial);
                registration.device = Some(device);
                self.write(registration, None, false, identity_key, Some(approved), now)
                    .await
            }
            NewRegistration::Create => {
                self.write(registration, None, true, identity_key, Some(approved), now)
                    .await
            }
            NewRegistration::Ask { matched, why } => {
                registration.state = RegistrationState::Pending;
                registration.decided_at = None;
                registration.decided_by = None;
                if let Some(why) = &why {
                    tracing::warn!(policy, approval = %registration.id, "registration waits for approval: {why}");
                }
                registration.reason = why;
                registration.device = matched;
                tracing::info!(policy, approval = %registration.id, "registration waits for approval");
                let pending = Admission::Pending {
                    per_policy: MAX_PENDING_PER_POLICY,
                    per_key: MAX_PENDING_PER_KEY,
                };
                self.write(registration, None, false, None, Some(pending), now)
                    .await
            }
        }
    }

    /// The device `policy` knows by `identity_key`, as it is now.
    async fn device_of(
        &self,
        policy: &str,
        identity_key: Option<&str>,
    ) -> Result<Option<DeviceRecord>, ProvisioningError> {
        let Some(key) = identity_key else {
            return Ok(None);
        };
        Ok(match self.store.device_of_identity(policy, key).await? {
            Some(device) => self.store.get_device(&device).await?,
            None => None,
        })
    }

    /// Writes a registration step, creating its device from the template
    /// if `create` (under a generated name unless it has one).
    async fn write(
        &self,
        mut registration: RegistrationRecord,
        expected_state: Option<RegistrationState>,
        create: bool,
        identity_key: Option<String>,
        admission: Option<Admission>,
        now: DateTime<Utc>,
    ) -> Result<RegistrationRecord, ProvisioningError> {
        let named = registration.device.is_some();
        for _ in 0..NAME_ATTEMPTS {
            let new_device = if create {
                let spec = self.spec_of(&registration.policy).await?;
                let name = match &registration.device {
                    Some(name) if named => name.clone(),
                    _ => generated_name(&registration.policy),
                };
                registration.device = Some(name.clone());
                Some(ProvisionedDevice {
                    name,
                    labels: spec.template.metadata.labels.clone(),
                    spec: template_spec(&spec)?,
                })
            } else {
                None
            };
            let write = RegistrationWrite {
                registration: registration.clone(),
                expected_state,
                new_device,
                identity_key: identity_key.clone(),
                admission,
            };
            match self.store.write_registration(&write, now).await {
                Ok(Err(refused)) => return Err(refusal(refused, &registration)),
                // A generated name someone has: draw another.
                Err(StoreError::Conflict { what })
                    if create && !named && what.starts_with("device ") =>
                {
                    continue;
                }
                Err(StoreError::Conflict { what })
                    if create && named && what.starts_with("device ") =>
                {
                    let name = registration.device.clone().expect("named");
                    return Err(RegistryError::AlreadyExists(name).into());
                }
                Err(error) => return Err(error.into()),
                Ok(Ok(_)) => {
                    if let (true, Some(device)) = (create, &registration.device) {
                        tracing::info!(policy = %registration.policy, %device, "device created by its policy");
                    }
                    return Ok(registration);
                }
            }
        }
        Err(ProvisioningError::InvalidRegistration(
            "no free device name was found; try again".into(),
        ))
    }

    /// Tells the device where its registration stands, issuing its
    /// certificate once it may have one.
    async fn answer(
        &self,
        registration: RegistrationRecord,
        csr_pem: &str,
        endpoints: &Endpoints,
    ) -> Result<Registered, ProvisioningError> {
        match (registration.state, &registration.device) {
            (RegistrationState::Pending, _) => Ok(Registered::Waiting {
                approval: registration.id,
            }),
            (RegistrationState::Denied, _) => Err(ProvisioningError::Denied {
                approval: registration.id,
                reason: registration.reason,
            }),
            (RegistrationState::Approved | RegistrationState::Registered, Some(device)) => {
                // A device of that name made since by hand (or by another
                // policy) is not the one this registration became.
                let device_now = self.store.get_device(device).await?;
                if !made_by(device_now.as_ref(), &registration.policy) {
                    return Err(ProvisioningError::DeviceGone(device.clone()));
                }
                // Asking again is how a device recovers an answer it lost,
                // but only while the certificate it got is still the
                // device's: old media, or a revoked device, stay out.
                // An approval stands only while the device still has the
                // certificate it had when approved.
                let current = device_now.and_then(|d| d.certificate_serial);
                let still_its = current == registration.certificate_serial
                    && (registration.state == RegistrationState::Approved || current.is_some());
                if !still_its {
                    return Err(ProvisioningError::Superseded(device.clone()));
                }
                if registration.state == RegistrationState::Registered {
                    self.registry
                        .admit_reissue(device, &format!("registration {}", registration.id))?;
                }
                // Only over that certificate: a revocation or another
                // registration meanwhile wins. The device's new serial and
                // the registration's are one commit: a board that drops
                // its request half way finds both, or neither, and asks
                // again.
                let issued = self
                    .registry
                    .issue_certificate(
                        device,
                        csr_pem,
                        endpoints,
                        Replacing::ForRegistration {
                            current,
                            registration: registration.id.clone(),
                            state: registration.state,
                        },
                    )
                    .await
                    .map_err(|e| match e {
                        RegistryError::CertificateChanged(device) => {
                            ProvisioningError::Superseded(device)
                        }
                        other => other.into(),
                    })?;
                Ok(Registered::Enrolled(issued.enrollment))
            }
            (state, None) => Err(ProvisioningError::InvalidRegistration(format!(
                "registration {} is {state:?} without a device",
                registration.id
            ))),
        }
    }

    /// Approves a waiting registration: the device its identity matched,
    /// or a new one from the template (named `name` if given).
    pub async fn approve(
        &self,
        id: &str,
        name: Option<&str>,
        by: &str,
    ) -> Result<Approval, ProvisioningError> {
        let registration = self.pending(id).await?;
        // Revoking a key denies its waiting requests; one written as the
        // revocation committed is refused here all the same.
        if let Some(key) = &registration.key_id
            && self
                .store
                .get_provisioning_key(key)
                .await?
                .is_none_or(|key| key.revoked_at.is_some())
        {
            return Err(ProvisioningError::KeyRevokedBeforeApproval {
                id: id.to_owned(),
                key: key.clone(),
            });
        }
        let spec = self.spec_of(&registration.policy).await?;
        let fields = identity_fields(&spec)?;
        let identity_key = provisioning::identity_key(&fields, &registration.facts)
            .map_err(ProvisioningError::InvalidRegistration)?;
        let now = Utc::now();
        let matched = match &registration.device {
            Some(device) => self.store.get_device(device).await?,
            None => None,
        };
        let reuse = made_by(matched.as_ref(), &registration.policy);
        let mut approved = RegistrationRecord {
            state: RegistrationState::Approved,
            decided_at: Some(now),
            decided_by: Some(by.to_owned()),
            // The certificate the device has now: revoking or replacing
            // it before the device collects its own withdraws the approval.
            certificate_serial: matched.filter(|_| reuse).and_then(|d| d.certificate_serial),
            ..registration
        };
        if !reuse {
            if let Some(holder) = self
                .device_of(&approved.policy, identity_key.as_deref())
                .await?
            {
                return Err(ProvisioningError::IdentityHeld {
                    id: id.to_owned(),
                    holder: holder.name,
                });
            }
            approved.device = name
                .map(|name| DeviceId::new(name).map_err(RegistryError::from))
                .transpose()?;
        }
        let approved = match self
            .write(
                approved,
                Some(RegistrationState::Pending),
                !reuse,
                identity_key,
                None,
                now,
            )
            .await
        {
            Ok(approved) => approved,
            Err(error) => return Err(self.already_decided(error, id).await),
        };
        tracing::info!(approval = id, device = ?approved.device, by, "registration approved");
        Ok(approval(approved))
    }

    /// Denies a waiting registration; the device stops when it next asks.
    pub async fn deny(
        &self,
        id: &str,
        reason: Option<String>,
        by: &str,
    ) -> Result<Approval, ProvisioningError> {
        let registration = self.pending(id).await?;
        let denied = RegistrationRecord {
            state: RegistrationState::Denied,
            decided_at: Some(Utc::now()),
            decided_by: Some(by.to_owned()),
            reason,
            ..registration
        };
        let denied = match self
            .write(
                denied,
                Some(RegistrationState::Pending),
                false,
                None,
                None,
                Utc::now(),
            )
            .await
        {
            Ok(denied) => denied,
            Err(error) => return Err(self.already_decided(error, id).await),
        };
        tracing::info!(approval = id, by, "registration denied");
        Ok(approval(denied))
    }

    /// A decision that lost to another one says which came first.
    async fn already_decided(&self, error: ProvisioningError, id: &str) -> ProvisioningError {
        match error {
            ProvisioningError::Store(StoreError::Conflict { what })
                if what.starts_with("registration") =>
            {
                match self.store.get_registration(id).await {
                    Ok(Some(registration)) => ProvisioningError::NotPending {
                        id: id.to_owned(),
                        state: registration.state,
                    },
                    Ok(None) => ProvisioningError::ApprovalNotFound(id.to_owned()),
                    Err(error) => error.into(),
                }
            }
            other => other,
        }
    }

    async fn pending(&self, id: &str) -> Result<RegistrationRecord, ProvisioningError> {
        let registration = self
            .store
            .get_registration(id)
            .await?
            .ok_or_else(|| ProvisioningError::ApprovalNotFound(id.to_owned()))?;
        if registration.state != RegistrationState::Pending {
            return Err(ProvisioningError::NotPending {
                id: id.to_owned(),
                state: registration.state,
            });
        }
        Ok(registration)
    }

    pub async fn approval(&self, id: &str) -> Result<Approval, ProvisioningError> {
        let registration = self
            .store
            .get_registration(id)
            .await?
            .ok_or_else(|| ProvisioningError::ApprovalNotFound(id.to_owned()))?;
        self.shown(registration).await
    }

    /// A registration as operators see it: a waiting one that matched a
    /// device says whether that device is online, which approving takes
    /// its credential from.
    async fn shown(&self, registration: RegistrationRecord) -> Result<Approval, ProvisioningError> {
        let online = match (&registration.device, registration.state) {
            (Some(device), RegistrationState::Pending) => Some(
                self.store
                    .get_device(device)
                    .await?
                    .is_some_and(|d| d.presence == tether_proto::Presence::Online),
            ),
            _ => None,
        };
        Ok(Approval {
            device_online: online,
            ..approval(registration)
        })
    }

    pub async fn approvals(
        &self,
        state: Option<RegistrationState>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Approval>, ProvisioningError> {
        let mut shown = Vec::new();
        for registration in self.store.list_registrations(state, after, limit).await? {
            shown.push(self.shown(registration).await?);
        }
        Ok(shown)
    }
}

/// A device a policy created reported its facts: the hardware it runs on
/// now is the one its identity names (seed 004: new hardware with the old
/// media keeps the device, and its serial is updated).
pub async fn refresh_identity(
    store: &Store,
    device: &DeviceId,
    facts: &Facts,
) -> Result<(), StoreError> {
    let Some((policy, spec)) = store.policy_of_device(device).await? else {
        return Ok(());
    };
    let Ok(fields) = identity_fields(&spec) else {
        return Ok(());
    };
    match provisioning::identity_key(&fields, facts) {
        Ok(Some(key)) => {
            // Every connect reports: a read, and a write only when the
            // hardware changed, so that a fleet reconnecting at once does
            // not rewrite every identity.
            match store.device_of_identity(&policy, &key).await? {
                Some(holder) if &holder == device => return Ok(()),
                // A device's report is its word only: it never takes the
                // identity of another device (a hostile device claiming a
                // serial would be handed that hardware's next
                // registration), revoked or not; deleting the holder frees
                // it.
                Some(holder) => {
                    tracing::warn!(
                        %device, %holder, policy,
                        "{device} reports the identity of {holder}; the identity stays with {holder} (delete {holder} if its hardware moved)"
                    );
                    return Ok(());
                }
                None => {}
            }
            store.set_device_identity(&policy, &key, device).await
        }
        // No identity field reported, or a value too long to be one: the
        // device keeps the identity it had.
        Ok(None) | Err(_) => Ok(()),
    }
}

/// The error a registration over one of its policy's limits gets.
fn refusal(refused: Refused, registration: &RegistrationRecord) -> ProvisioningError {
    let policy = registration.policy.clone();
    match refused {
        Refused::PolicyQueueFull => ProvisioningError::TooManyPending { policy },
        Refused::KeyQueueFull => ProvisioningError::TooManyPendingForKey {
            policy,
            key: registration.key_id.clone().unwrap_or_default(),
        },
        Refused::DeviceCap { max } => ProvisioningError::MaxDevices { policy, max },
        Refused::RateExceeded { per_hour } => ProvisioningError::RateExceeded { policy, per_hour },
        // Another key pair claimed the identity meanwhile: asking
        // again decides with its claim counted.
        Refused::IdentityClaimed { key_pairs } => StoreError::Conflict {
            what: format!("a claim on this identity by {key_pairs} key pairs"),
        }
        .into(),
        Refused::KeyRevoked => ProvisioningError::KeyRefused(KeyRefusal::Revoked(
            registration.key_id.clone().unwrap_or_default(),
        )),
        Refused::KeyExpired { at } => ProvisioningError::KeyRefused(KeyRefusal::Expired(
            registration.key_id.clone().unwrap_or_default(),
            at,
        )),
    }
}

/// Whether `device` is there and was made by `policy`: a registration
/// gets no other device, not even one given its name after it was deleted.
fn made_by(device: Option<&DeviceRecord>, policy: &str) -> bool {
    device.is_some_and(|device| device.policy.as_deref() == Some(policy))
}

fn identity_fields(spec: &PolicySpec) -> Result<Vec<IdentityField>, ProvisioningError> {
    spec.identity_field_paths
        .iter()
        .map(|path| IdentityField::parse(path).map_err(ProvisioningError::InvalidPolicy))
        .collect()
}

/// The template's spec, checked by the same rules as any spec update.
fn template_spec(spec: &PolicySpec) -> Result<DeviceSpec, ProvisioningError> {
    let request = serde_json::Value::Object(spec.template.spec.clone());
    let mask = registry::spec::operator_mask(&request, None)
        .map_err(ProvisioningError::InvalidTemplateSpec)?;
    registry::spec::apply_update(&DeviceSpec::new(), &request, Some(&mask))
        .map_err(ProvisioningError::InvalidTemplateSpec)
}

fn to_api(record: PolicyRecord) -> Policy {
    Policy {
        name: record.name,
        spec: record.spec,
        created_at: record.created_at,
        devices: record.devices,
        pending_approvals: record.pending_approvals,
    }
}

fn approval(record: RegistrationRecord) -> Approval {
    Approval {
        id: record.id,
        policy: record.policy,
        state: record.state,
        facts: record.facts,
        device: record.device.map(|d| d.to_string()),
        device_online: None,
        key_id: record.key_id,
        created_at: record.created_at,
        decided_at: record.decided_at,
        decided_by: record.decided_by,
        reason: record.reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str) -> DeviceId {
        DeviceId::new(name).expect("valid")
    }

    const NO_CLAIMS: RecentClaims = RecentClaims {
        other_key_pairs: 0,
        window_minutes: 10,
    };

    #[test]
    fn a_second_key_pair_claiming_an_identity_within_minutes_waits_even_unattended() {
        use ProvisioningMode::{Manual, Unattended};
        let shared = RecentClaims {
            other_key_pairs: 2,
            window_minutes: 10,
        };
        let offline = Matched {
            device: device("pi-1"),
            has_credential: true,
            online: false,
        };
        for (mode, matched) in [
            (Unattended, None),
            (Unattended, Some(offline.clone())),
            (Manual, Some(offline)),
        ] {
            let expected_match = matched.as_ref().map(|m| m.device.clone());
            let decided = decide_new(mode, matched, shared);
            let NewRegistration::Ask { matched, why } = decided else {
                panic!("asks: {decided:?}");
            };
            assert_eq!(matched, expected_match);
            let why = why.expect("says why");
            assert!(
                why.starts_with("3 key pairs claimed this identity within 10 minutes"),
                "{why}"
            );
        }
    }

    #[test]
    fn unattended_reuses_what_the_identity_found_and_manual_always_asks() {
        use ProvisioningMode::{Manual, Unattended};
        let matched = |has_credential, online| Matched {
            device: device("pi-1"),
            has_credential,
            online,
        };
        assert_eq!(
            decide_new(Unattended, Some(matched(true, false)), NO_CLAIMS),
            NewRegistration::Reuse(device("pi-1"))
        );
        assert_eq!(
            decide_new(Unattended, None, NO_CLAIMS),
            NewRegistration::Create
        );
        assert_eq!(
            decide_new(Manual, Some(matched(true, false)), NO_CLAIMS),
            NewRegistration::Ask {
                matched: Some(device("pi-1")),
                why: None
            }
        );
        assert_eq!(
            decide_new(Manual, None, NO_CLAIMS),
            NewRegistration::Ask {
                matched: None,
                why: None
            }
        );
    }

    #[test]
    fn an_online_or_revoked_match_is_never_taken_over_without_an_operator() {
        use ProvisioningMode::Unattended;
        for (has_credential, online, says) in [(true, true, "online"), (false, false, "revoked")] {
            let decided = decide_new(
                Unattended,
                Some(Matched {
                    device: device("pi-1"),
                    has_credential,
                    online,
                }),
                NO_CLAIMS,
            );
            let NewRegistration::Ask { matched, why } = decided else {
                panic!("asks: {decided:?}");
            };
            assert_eq!(matched, Some(device("pi-1")));
            assert!(why.is_some_and(|w| w.contains(says)));
        }
    }

    #[test]
    fn a_registration_gets_only_a_device_its_policy_made() {
        let mut record = DeviceRecord {
            name: device("kiosk-3"),
            labels: Default::default(),
            presence: tether_proto::Presence::Offline,
            certificate_serial: None,
            last_seen: None,
            agent_version: None,
            capabilities: Vec::new(),
            boot_id: None,
            display_name: None,
            policy: Some("lab".into()),
            status_seq: 0,
            created_at: Utc::now(),
        };
        assert!(made_by(Some(&record), "lab"));
        assert!(!made_by(None, "lab"), "deleted");
        assert!(!made_by(Some(&record), "shop"), "another policy's");
        // Deleted and added again by hand under the same name.
        record.policy = None;
        assert!(!made_by(Some(&record), "lab"));
    }

    #[test]
    fn a_revoked_or_expired_key_is_refused_by_name() {
        let now = Utc::now();
        let mut key = ProvisioningKeyRecord {
            id: "k1".into(),
            policy: "lab".into(),
            secret_hash: String::new(),
            created_at: now,
            created_by: "admin".into(),
            expires_at: Some(now + chrono::Duration::hours(1)),
            revoked_at: None,
            last_used_at: None,
        };
        assert_eq!(check_key(&key, now), Ok(()));
        key.expires_at = Some(now);
        assert_eq!(
            check_key(&key, now),
            Err(KeyRefusal::Expired("k1".into(), now))
        );
        key.revoked_at = Some(now);
        let refusal = check_key(&key, now).expect_err("revoked");
        assert!(refusal.to_string().contains("k1 was revoked"), "{refusal}");
    }

    #[test]
    fn generated_names_are_device_names_even_from_long_policy_names() {
        let name = generated_name("lab");
        assert!(name.as_str().starts_with("lab-"), "{name}");
        assert_eq!(name.as_str().len(), 12);
        let long = format!("{}-x", "a".repeat(53));
        let name = generated_name(&long);
        assert!(name.as_str().len() <= 63, "{name}");
        assert!(!name.as_str().contains("--"), "{name}");
        assert_ne!(generated_name("lab"), generated_name("lab"));
    }
}
