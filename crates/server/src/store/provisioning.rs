//! The `provisioning_policies`, `provisioning_keys`, `registrations` and
//! `device_identities` tables (ADR 0025).

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use sqlx::{Any, Transaction};
use tether_proto::DeviceId;
use tether_proto::api::Labels;
use tether_proto::provisioning::{PolicySpec, RegistrationState};
use tether_proto::spec::{DeviceSpec, Facts};

use super::codec::{
    device_id, from_json, get, limit, millis, optional_time, time, to_json, to_u64, violates,
};
use super::devices::{NewDevice, insert_device};
use super::{DeviceRecord, Store, StoreError};

/// A policy with how many devices it made and requests waiting.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRecord {
    pub name: String,
    pub spec: PolicySpec,
    pub created_at: DateTime<Utc>,
    pub devices: u64,
    pub pending_approvals: u64,
}

/// A provisioning key, its secret only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningKeyRecord {
    pub id: String,
    pub policy: String,
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// One device's registration under a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationRecord {
    pub id: String,
    pub policy: String,
    pub public_key_sha256: String,
    pub facts: Facts,
    pub state: RegistrationState,
    pub device: Option<DeviceId>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    /// The certificate it last obtained, hex; `None` until it has one.
    pub certificate_serial: Option<String>,
    /// The provisioning key it was made with; `None` for registrations
    /// older than migration 0031.
    pub key_id: Option<String>,
    /// The identity it claimed under its policy, if it reported one.
    pub identity_key: Option<String>,
}

/// A device a policy creates, with its template applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionedDevice {
    pub name: DeviceId,
    pub labels: Labels,
    /// Already checked against the spec's rules; version 1 unless empty.
    pub spec: DeviceSpec,
}

/// What one registration step writes, all or nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationWrite {
    pub registration: RegistrationRecord,
    /// Only if the registration is still in this state (another operator
    /// or replica did not decide first); `None`: a new registration.
    pub expected_state: Option<RegistrationState>,
    /// A device to create first.
    pub new_device: Option<ProvisionedDevice>,
    /// The hardware's identity under the policy, now the device's.
    pub identity_key: Option<String>,
    /// What a new registration must fit within; `None`: no limit (a
    /// decision on one already recorded).
    pub admission: Option<Admission>,
}

/// The limits a new registration must fit within, counted in its own
/// transaction after its policy's row is locked: concurrent registrations,
/// on any replica, are counted one after another, never past a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It waits for an operator: at most `per_policy` requests wait under
    /// its policy and `per_key` under its key.
    Pending { per_policy: u64, per_key: u64 },
    /// Its policy approves it by itself: one of `per_hour` in the policy's
    /// current hour; refused if another key pair claimed its identity
    /// since `claims_since`; if it creates a device, the policy has fewer
    /// than `max_devices`.
    Approved {
        per_hour: u64,
        max_devices: Option<u64>,
        claims_since: Option<DateTime<Utc>>,
    },
}

/// Why a new registration did not fit; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its policy has `per_policy` requests waiting.
    PolicyQueueFull,
    /// Its key has `per_key` requests waiting.
    KeyQueueFull,
    /// Its policy has `max` devices.
    DeviceCap { max: u64 },
    /// Its policy approved `per_hour` registrations this hour.
    RateExceeded { per_hour: u64 },
    /// Other key pairs claimed its identity since `claims_since`: with it,
    /// `key_pairs` of them.
    IdentityClaimed { key_pairs: u64 },
    /// Its key was revoked after the registration checked it.
    KeyRevoked,
    /// Its key expired at `at` after the registration checked it.
    KeyExpired { at: DateTime<Utc> },
}

/// A registration's window of the policy's hourly rate.
const RATE_WINDOW_MILLIS: i64 = 3_600_000;

const POLICY_COLUMNS: &str = "p.name, p.spec, p.created_at, \
     (SELECT COUNT(*) FROM devices d WHERE d.policy = p.name) AS devices, \
     (SELECT COUNT(*) FROM registrations r WHERE r.policy = p.name AND r.state = 'pending') AS pending";
const KEY_COLUMNS: &str =
    "id, policy, secret_hash, created_at, created_by, expires_at, revoked_at, last_used_at";
const REGISTRATION_COLUMNS: &str = "id, policy, public_key_sha256, facts, state, device, \
     created_at, decided_at, decided_by, reason, certificate_serial, key_id, identity_key";

fn query_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

fn policy_from_row(row: &AnyRow) -> Result<PolicyRecord, StoreError> {
    let name: String = get(row, "name")?;
    Ok(PolicyRecord {
        spec: from_json(&get::<String>(row, "spec")?, &format!("policy {name}"))?,
        created_at: time(get(row, "created_at")?, "a policy's created_at")?,
        devices: to_u64(get(row, "devices")?, "a policy's devices")?,
        pending_approvals: to_u64(get(row, "pending")?, "a policy's pending approvals")?,
        name,
    })
}

fn key_from_row(row: &AnyRow) -> Result<ProvisioningKeyRecord, StoreError> {
    Ok(ProvisioningKeyRecord {
        id: get(row, "id")?,
        policy: get(row, "policy")?,
        secret_hash: get(row, "secret_hash")?,
        created_at: time(get(row, "created_at")?, "a key's created_at")?,
        created_by: get(row, "created_by")?,
        expires_at: optional_time(get(row, "expires_at")?, "a key's expires_at")?,
        revoked_at: optional_time(get(row, "revoked_at")?, "a key's revoked_at")?,
        last_used_at: optional_time(get(row, "last_used_at")?, "a key's last_used_at")?,
    })
}

fn state_name(state: RegistrationState) -> &'static str {
    match state {
        RegistrationState::Pending => "pending",
        RegistrationState::Approved => "approved",
        RegistrationState::Denied => "denied",
        RegistrationState::Registered => "registered",
    }
}

fn registration_from_row(row: &AnyRow) -> Result<RegistrationRecord, StoreError> {
    let id: String = get(row, "id")?;
    let state: String = get(row, "state")?;
    let state = [
        RegistrationState::Pending,
        RegistrationState::Approved,
        RegistrationState::Denied,
        RegistrationState::Registered,
    ]
    .into_iter()
    .find(|s| state_name(*s) == state)
    .ok_or_else(|| StoreError::Corrupt(format!("registration {id} has state {state:?}")))?;
    Ok(RegistrationRecord {
        policy: get(row, "policy")?,
        public_key_sha256: get(row, "public_key_sha256")?,
        facts: from_json(&get::<String>(row, "facts")?, &format!("registration {id}"))?,
        state,
        device: get::<Option<String>>(row, "device")?
            .map(device_id)
            .transpose()?,
        created_at: time(get(row, "created_at")?, "a registration's created_at")?,
        decided_at: optional_time(get(row, "decided_at")?, "a registration's decided_at")?,
        decided_by: get(row, "decided_by")?,
        reason: get(row, "reason")?,
        certificate_serial: get(row, "certificate_serial")?,
        key_id: get(row, "key_id")?,
        identity_key: get(row, "identity_key")?,
        id,
    })
}

impl Store {
    /// `Conflict` if a policy of that name exists.
    pub async fn insert_policy(
        &self,
        name: &str,
        spec: &PolicySpec,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO provisioning_policies (name, spec, created_at) VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(to_json(spec, "a policy spec")?)
        .bind(millis(now))
        .execute(&self.pool)
        .await
        .map_err(|source| {
            if violates(&source, ErrorKind::UniqueViolation) {
                StoreError::Conflict {
                    what: format!("policy {name}"),
                }
            } else {
                StoreError::Query {
                    context: "create a provisioning policy",
                    source,
                }
            }
        })?;
        Ok(())
    }

    pub async fn get_policy(&self, name: &str) -> Result<Option<PolicyRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {POLICY_COLUMNS} FROM provisioning_policies p WHERE p.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read a provisioning policy"))?;
        row.as_ref().map(policy_from_row).transpose()
    }

    /// A policy's spec alone: one read by key, where [`Self::get_policy`]
    /// also counts its devices and pending requests.
    pub async fn get_policy_spec(&self, name: &str) -> Result<Option<PolicySpec>, StoreError> {
        let spec: Option<String> =
            sqlx::query_scalar("SELECT spec FROM provisioning_policies WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(query_error("read a provisioning policy"))?;
        spec.map(|spec| from_json(&spec, &format!("policy {name}")))
            .transpose()
    }

    /// Policies by name: at most `limit` after `after`.
    pub async fn list_policies(
        &self,
        after: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<PolicyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {POLICY_COLUMNS} FROM provisioning_policies p \
             WHERE p.name > $1 ORDER BY p.name LIMIT $2"
        ))
        .bind(after.unwrap_or_default())
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list provisioning policies"))?;
        rows.iter().map(policy_from_row).collect()
    }

    /// Deletes a policy with its keys, registrations and identities; its
    /// devices stay, no longer the policy's: a new policy of the same name
    /// must not inherit them (count them, record their identities, let its
    /// keys take them over). `NotFound` if there is none.
    pub async fn delete_policy(&self, name: &str) -> Result<(), StoreError> {
        let context = "delete a provisioning policy";
        let mut tx = self.begin(context).await?;
        // First the lock every registration write takes: one under way
        // commits its device before the devices are let go below, and one
        // after finds the policy gone; none leaves a device to a new
        // policy of this name.
        if !lock_policy(&mut tx, name, context).await? {
            return Err(StoreError::NotFound {
                what: format!("policy {name}"),
            });
        }
        sqlx::query("UPDATE devices SET policy = NULL WHERE policy = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(query_error(context))?;
        let deleted = sqlx::query("DELETE FROM provisioning_policies WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(query_error(context))?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("policy {name}"),
            });
        }
        tx.commit().await.map_err(query_error(context))
    }

    /// `NotFound` if the key's policy does not exist.
    pub async fn insert_provisioning_key(
        &self,
        key: &ProvisioningKeyRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO provisioning_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&key.id)
        .bind(&key.policy)
        .bind(&key.secret_hash)
        .bind(millis(key.created_at))
        .bind(&key.created_by)
        .bind(key.expires_at.map(millis))
        .bind(key.revoked_at.map(millis))
        .bind(key.last_used_at.map(millis))
        .execute(&self.pool)
        .await
        .map_err(|source| {
            if violates(&source, ErrorKind::ForeignKeyViolation) {
                StoreError::NotFound {
                    what: format!("policy {}", key.policy),
                }
            } else {
                StoreError::Query {
                    context: "store a provisioning key",
                    source,
                }
            }
        })?;
        Ok(())
    }

    pub async fn get_provisioning_key(
        &self,
        id: &str,
    ) -> Result<Option<ProvisioningKeyRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM provisioning_keys WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read a provisioning key"))?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// A policy's keys, oldest first.
    pub async fn list_provisioning_keys(
        &self,
        policy: &str,
    ) -> Result<Vec<ProvisioningKeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM provisioning_keys WHERE policy = $1 ORDER BY created_at, id"
        ))
        .bind(policy)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list provisioning keys"))?;
        rows.iter().map(key_from_row).collect()
    }

    /// Revokes a key of `policy`; revoking it again keeps the first time.
    /// In the same transaction the requests made with it that still wait
    /// are denied with `reason`, by `by`: a revoked key's request is never
    /// approved. How many were denied; `NotFound` if the policy has no
    /// such key.
    pub async fn revoke_provisioning_key(
        &self,
        policy: &str,
        id: &str,
        by: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let context = "revoke a provisioning key";
        let mut tx = self.begin(context).await?;
        // The lock every new registration of the policy takes first: one
        // that checked the key before this commit writes after it, and
        // then reads the key revoked (see `admit`).
        lock_policy(&mut tx, policy, context).await?;
        let updated = sqlx::query(
            "UPDATE provisioning_keys SET revoked_at = COALESCE(revoked_at, $1) \
             WHERE policy = $2 AND id = $3",
        )
        .bind(millis(now))
        .bind(policy)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(query_error(context))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("key {id} of policy {policy}"),
            });
        }
        let denied = sqlx::query(
            "UPDATE registrations SET state = 'denied', decided_at = $1, decided_by = $2, \
             reason = $3 WHERE key_id = $4 AND state = 'pending'",
        )
        .bind(millis(now))
        .bind(by)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(query_error(context))?;
        tx.commit().await.map_err(query_error(context))?;
        Ok(denied.rows_affected())
    }

    /// Notes that a key was used, at most once a minute per key.
    pub async fn touch_provisioning_key(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE provisioning_keys SET last_used_at = $1 \
             WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(millis(now))
        .bind(id)
        .bind(millis(now) - 60_000)
        .execute(&self.pool)
        .await
        .map_err(query_error("note a provisioning key's use"))?;
        Ok(())
    }

    /// The registration of `public_key_sha256` under `policy`, if any.
    pub async fn registration_of_key(
        &self,
        policy: &str,
        public_key_sha256: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {REGISTRATION_COLUMNS} FROM registrations \
             WHERE policy = $1 AND public_key_sha256 = $2"
        ))
        .bind(policy)
        .bind(public_key_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read a registration"))?;
        row.as_ref().map(registration_from_row).transpose()
    }

    pub async fn get_registration(
        &self,
        id: &str,
    ) -> Result<Option<RegistrationRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {REGISTRATION_COLUMNS} FROM registrations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read a registration"))?;
        row.as_ref().map(registration_from_row).transpose()
    }

    /// Registrations in `state` (any if `None`), oldest first: at most
    /// `limit` after the id `after` (ids grow with time).
    pub async fn list_registrations(
        &self,
        state: Option<RegistrationState>,
        after: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<RegistrationRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {REGISTRATION_COLUMNS} FROM registrations \
             WHERE ($1 = '' OR state = $1) AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(state.map_or("", state_name))
        .bind(after.unwrap_or_default())
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list registrations"))?;
        rows.iter().map(registration_from_row).collect()
    }

    /// How many key pairs claimed `identity_key` under `policy` since
    /// `since` (one indexed range).
    pub async fn identity_claims(
        &self,
        policy: &str,
        identity_key: &str,
        since: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let claims: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM registrations \
             WHERE policy = $1 AND identity_key = $2 AND created_at > $3",
        )
        .bind(policy)
        .bind(identity_key)
        .bind(millis(since))
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("count an identity's recent claims"))?;
        Ok(claims.unsigned_abs())
    }

    /// The device `policy` knows by `identity_key`, if any.
    pub async fn device_of_identity(
        &self,
        policy: &str,
        identity_key: &str,
    ) -> Result<Option<DeviceId>, StoreError> {
        let device: Option<String> = sqlx::query_scalar(
            "SELECT device FROM device_identities WHERE policy = $1 AND identity_key = $2",
        )
        .bind(policy)
        .bind(identity_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("look a device up by its identity"))?;
        device.map(device_id).transpose()
    }

    /// The policy that created `device` and its spec, if one did and still
    /// exists.
    pub async fn policy_of_device(
        &self,
        device: &DeviceId,
    ) -> Result<Option<(String, PolicySpec)>, StoreError> {
        let row = sqlx::query(
            "SELECT p.name, p.spec FROM devices d JOIN provisioning_policies p ON p.name = d.policy \
             WHERE d.name = $1",
        )
        .bind(device.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read a device's policy"))?;
        row.map(|row| {
            let name: String = get(&row, "name")?;
            let spec = from_json(&get::<String>(&row, "spec")?, &format!("policy {name}"))?;
            Ok((name, spec))
        })
        .transpose()
    }

    /// Makes `identity_key` the device's identity under `policy`, in place
    /// of the one it had; another device holding that identity loses it
    /// (the hardware moved: the newest report wins).
    pub async fn set_device_identity(
        &self,
        policy: &str,
        identity_key: &str,
        device: &DeviceId,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin("set a device's identity").await?;
        put_identity(&mut tx, policy, identity_key, device).await?;
        tx.commit()
            .await
            .map_err(query_error("set a device's identity"))
    }

    /// Makes `serial_hex` the device's certificate in place of `expected`
    /// and records it on the registration (still in `state`) as
    /// registered, in one commit: a request dropped half way leaves both
    /// as they were, or both done. Whether both were still as expected.
    pub async fn register_certificate(
        &self,
        device: &DeviceId,
        expected: Option<&str>,
        serial_hex: &str,
        registration: &str,
        state: RegistrationState,
    ) -> Result<bool, StoreError> {
        let context = "record a registration's certificate";
        let mut tx = self.begin(context).await?;
        let replaced = sqlx::query(
            "UPDATE devices SET certificate_serial = $1, previous_certificate_serial = NULL \
             WHERE name = $2 AND certificate_serial IS NOT DISTINCT FROM $3",
        )
        .bind(serial_hex)
        .bind(device.as_str())
        .bind(expected)
        .execute(&mut *tx)
        .await
        .map_err(query_error(context))?;
        if replaced.rows_affected() != 1 {
            return Ok(false);
        }
        let recorded = sqlx::query(
            "UPDATE registrations SET state = 'registered', certificate_serial = $1 \
             WHERE id = $2 AND state = $3",
        )
        .bind(serial_hex)
        .bind(registration)
        .bind(state_name(state))
        .execute(&mut *tx)
        .await
        .map_err(query_error(context))?;
        if recorded.rows_affected() != 1 {
            return Ok(false);
        }
        tx.commit().await.map_err(query_error(context))?;
        Ok(true)
    }

    /// Writes one step of a registration in a transaction: the device it
    /// creates, its identity, the registration itself, once it fits
    /// within its admission (else nothing is written). `Conflict` if the
    /// registration moved on meanwhile (or a new one exists already), the
    /// device's name is taken, or the device it creates would take an
    /// identity another device holds.
    pub async fn write_registration(
        &self,
        write: &RegistrationWrite,
        now: DateTime<Utc>,
    ) -> Result<Result<Option<DeviceRecord>, Refused>, StoreError> {
        let context = "write a registration";
        let registration = &write.registration;
        let mut tx = self.begin(context).await?;
        // A decision takes the policy's lock as a new registration does
        // (in `admit`): a policy deleted meanwhile is seen gone.
        if write.admission.is_none() && !lock_policy(&mut tx, &registration.policy, context).await?
        {
            return Err(StoreError::NotFound {
                what: format!("policy {}", registration.policy),
            });
        }
        if let Some(admission) = write.admission
            && let Err(refused) = admit(
                &mut tx,
                registration,
                write.new_device.is_some(),
                admission,
                now,
            )
            .await?
        {
            return Ok(Err(refused));
        }
        let created = match &write.new_device {
            Some(device) => {
                Some(create_provisioned(&mut tx, device, &registration.policy, now).await?)
            }
            None => None,
        };
        if let (Some(key), Some(device)) = (&write.identity_key, &registration.device) {
            if created.is_some() {
                // A new device takes only an identity no device holds: of
                // concurrent first registrations of one hardware, the
                // unique key lets one create its device and the others
                // find it; an approval of an older request does not take
                // the identity from the device approved meanwhile.
                claim_identity(&mut tx, &registration.policy, key, device).await?;
            } else {
                put_identity(&mut tx, &registration.policy, key, device).await?;
            }
        }
        let conflict = || StoreError::Conflict {
            what: format!("registration {}", registration.id),
        };
        match write.expected_state {
            None => {
                sqlx::query(&format!(
                    "INSERT INTO registrations ({REGISTRATION_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                ))
                .bind(&registration.id)
                .bind(&registration.policy)
                .bind(&registration.public_key_sha256)
                .bind(to_json(&registration.facts, "a registration's facts")?)
                .bind(state_name(registration.state))
                .bind(registration.device.as_ref().map(DeviceId::as_str))
                .bind(millis(registration.created_at))
                .bind(registration.decided_at.map(millis))
                .bind(registration.decided_by.as_deref())
                .bind(registration.reason.as_deref())
                .bind(registration.certificate_serial.as_deref())
                .bind(registration.key_id.as_deref())
                .bind(registration.identity_key.as_deref())
                .execute(&mut *tx)
                .await
                .map_err(|source| {
                    if violates(&source, ErrorKind::UniqueViolation) {
                        conflict()
                    } else if violates(&source, ErrorKind::ForeignKeyViolation) {
                        // The policy was deleted while the device registered.
                        StoreError::NotFound {
                            what: format!("policy {}", registration.policy),
                        }
                    } else {
                        StoreError::Query { context, source }
                    }
                })?;
            }
            Some(expected) => {
                let updated = sqlx::query(
                    "UPDATE registrations SET state = $1, device = $2, decided_at = $3, \
                     decided_by = $4, reason = $5, certificate_serial = $6 \
                     WHERE id = $7 AND state = $8",
                )
                .bind(state_name(registration.state))
                .bind(registration.device.as_ref().map(DeviceId::as_str))
                .bind(registration.decided_at.map(millis))
                .bind(registration.decided_by.as_deref())
                .bind(registration.reason.as_deref())
                .bind(registration.certificate_serial.as_deref())
                .bind(&registration.id)
                .bind(state_name(expected))
                .execute(&mut *tx)
                .await
                .map_err(query_error(context))?;
                if updated.rows_affected() == 0 {
                    return Err(conflict());
                }
            }
        }
        tx.commit().await.map_err(query_error(context))?;
        Ok(Ok(created))
    }
}

/// Counts a new registration against its admission's limits; the first
/// statement locks the policy's row (PostgreSQL) or the database (SQLite)
/// until the transaction ends, so the counts stay true until it commits.
async fn admit(
    tx: &mut Transaction<'_, Any>,
    registration: &RegistrationRecord,
    creates_device: bool,
    admission: Admission,
    now: DateTime<Utc>,
) -> Result<Result<(), Refused>, StoreError> {
    let context = "count a registration against its policy's limits";
    let policy = &registration.policy;
    let gone = || StoreError::NotFound {
        what: format!("policy {policy}"),
    };
    match admission {
        Admission::Pending {
            per_policy,
            per_key,
        } => {
            if !lock_policy(tx, policy, context).await? {
                return Err(gone());
            }
            if let Some(refused) = key_refusal(tx, registration, now).await? {
                return Ok(Err(refused));
            }
            let waiting = count(
                tx,
                "SELECT COUNT(*) AS n FROM registrations WHERE state = 'pending' AND policy = $1",
                policy,
            )
            .await?;
            if waiting >= per_policy {
                return Ok(Err(Refused::PolicyQueueFull));
            }
            if let Some(key) = &registration.key_id {
                let waiting = count(
                    tx,
                    "SELECT COUNT(*) AS n FROM registrations WHERE state = 'pending' AND key_id = $1",
                    key,
                )
                .await?;
                if waiting >= per_key {
                    return Ok(Err(Refused::KeyQueueFull));
                }
            }
        }
        Admission::Approved {
            per_hour,
            max_devices,
            claims_since,
        } => {
            // A fixed window: the first registration after the last window
            // ended opens the next one.
            let window_over = millis(now) - RATE_WINDOW_MILLIS;
            let counted = sqlx::query(
                "UPDATE provisioning_policies SET \
                 rate_window_start = CASE WHEN rate_window_start <= $1 THEN $2 ELSE rate_window_start END, \
                 rate_window_count = CASE WHEN rate_window_start <= $1 THEN 1 ELSE rate_window_count + 1 END \
                 WHERE name = $3 AND (rate_window_start <= $1 OR rate_window_count < $4)",
            )
            .bind(window_over)
            .bind(millis(now))
            .bind(policy)
            .bind(i64::try_from(per_hour).unwrap_or(i64::MAX))
            .execute(&mut **tx)
            .await
            .map_err(query_error(context))?;
            if counted.rows_affected() == 0 {
                let exists: Option<String> =
                    sqlx::query_scalar("SELECT name FROM provisioning_policies WHERE name = $1")
                        .bind(policy)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(query_error(context))?;
                return match exists {
                    Some(_) => Ok(Err(Refused::RateExceeded { per_hour })),
                    None => Err(gone()),
                };
            }
            if let Some(refused) = key_refusal(tx, registration, now).await? {
                return Ok(Err(refused));
            }
            if let (Some(since), Some(identity)) = (claims_since, &registration.identity_key) {
                let others: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM registrations WHERE policy = $1 AND identity_key = $2 \
                     AND created_at > $3 AND public_key_sha256 <> $4",
                )
                .bind(policy)
                .bind(identity)
                .bind(millis(since))
                .bind(&registration.public_key_sha256)
                .fetch_one(&mut **tx)
                .await
                .map_err(query_error(context))?;
                if others > 0 {
                    return Ok(Err(Refused::IdentityClaimed {
                        key_pairs: others.unsigned_abs() + 1,
                    }));
                }
            }
            if let (true, Some(max)) = (creates_device, max_devices) {
                let devices = count(
                    tx,
                    "SELECT COUNT(*) AS n FROM devices WHERE policy = $1",
                    policy,
                )
                .await?;
                if devices >= max {
                    return Ok(Err(Refused::DeviceCap { max }));
                }
            }
        }
    }
    Ok(Ok(()))
}

/// Locks `policy`'s row until the transaction ends (PostgreSQL; SQLite
/// takes its write lock): new registrations, key revocations, approvals
/// and the policy's deletion go one after another. Whether the policy is
/// there.
async fn lock_policy(
    tx: &mut Transaction<'_, Any>,
    policy: &str,
    context: &'static str,
) -> Result<bool, StoreError> {
    let locked = sqlx::query(
        "UPDATE provisioning_policies SET rate_window_count = rate_window_count WHERE name = $1",
    )
    .bind(policy)
    .execute(&mut **tx)
    .await
    .map_err(query_error(context))?;
    Ok(locked.rows_affected() > 0)
}

/// Why the registration's key no longer admits it, read behind the
/// policy's lock: a revocation that committed after the registration
/// checked its key is seen here.
async fn key_refusal(
    tx: &mut Transaction<'_, Any>,
    registration: &RegistrationRecord,
    now: DateTime<Utc>,
) -> Result<Option<Refused>, StoreError> {
    let Some(key) = &registration.key_id else {
        return Ok(None);
    };
    let row = sqlx::query("SELECT revoked_at, expires_at FROM provisioning_keys WHERE id = $1")
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
        .map_err(query_error("read a registration's provisioning key"))?;
    let Some(row) = row else {
        // Deleted with its policy, which `admit` found locked: cannot be.
        return Ok(Some(Refused::KeyRevoked));
    };
    if get::<Option<i64>>(&row, "revoked_at")?.is_some() {
        return Ok(Some(Refused::KeyRevoked));
    }
    Ok(
        optional_time(get(&row, "expires_at")?, "a key's expires_at")?
            .filter(|at| *at <= now)
            .map(|at| Refused::KeyExpired { at }),
    )
}

/// The `n` of a `SELECT COUNT(*) AS n … $1` query.
async fn count(tx: &mut Transaction<'_, Any>, query: &str, bound: &str) -> Result<u64, StoreError> {
    let row = sqlx::query(query)
        .bind(bound)
        .fetch_one(&mut **tx)
        .await
        .map_err(query_error("count a policy's registrations or devices"))?;
    let n: i64 = get(&row, "n")?;
    Ok(n.unsigned_abs())
}

async fn create_provisioned(
    tx: &mut Transaction<'_, Any>,
    device: &ProvisionedDevice,
    policy: &str,
    now: DateTime<Utc>,
) -> Result<DeviceRecord, StoreError> {
    let record = insert_device(
        tx,
        &NewDevice {
            name: &device.name,
            labels: &device.labels,
            display_name: None,
            policy: Some(policy),
        },
        now,
    )
    .await?;
    if !device.spec.is_empty() {
        sqlx::query(
            "INSERT INTO device_specs (device, spec, spec_version, spec_updated_at) \
             VALUES ($1, $2, 1, $3)",
        )
        .bind(device.name.as_str())
        .bind(to_json(&device.spec, "a device spec")?)
        .bind(millis(now))
        .execute(&mut **tx)
        .await
        .map_err(query_error("write a provisioned device's spec"))?;
    }
    Ok(record)
}

/// Gives `identity_key` to a new device unless a device holds it already
/// (`Conflict`).
async fn claim_identity(
    tx: &mut Transaction<'_, Any>,
    policy: &str,
    identity_key: &str,
    device: &DeviceId,
) -> Result<(), StoreError> {
    let claimed = sqlx::query(
        "INSERT INTO device_identities (policy, identity_key, device) VALUES ($1, $2, $3) \
         ON CONFLICT (policy, identity_key) DO NOTHING",
    )
    .bind(policy)
    .bind(identity_key)
    .bind(device.as_str())
    .execute(&mut **tx)
    .await
    .map_err(query_error("claim an identity for a new device"))?;
    if claimed.rows_affected() == 0 {
        return Err(StoreError::Conflict {
            what: format!("a device of policy {policy} holding the identity {device} was to get"),
        });
    }
    Ok(())
}

async fn put_identity(
    tx: &mut Transaction<'_, Any>,
    policy: &str,
    identity_key: &str,
    device: &DeviceId,
) -> Result<(), StoreError> {
    let context = "set a device's identity";
    sqlx::query("DELETE FROM device_identities WHERE policy = $1 AND device = $2")
        .bind(policy)
        .bind(device.as_str())
        .execute(&mut **tx)
        .await
        .map_err(query_error(context))?;
    // An upsert: two registrations of one identity at once must not fail
    // on the key the other just wrote.
    sqlx::query(
        "INSERT INTO device_identities (policy, identity_key, device) VALUES ($1, $2, $3) \
         ON CONFLICT (policy, identity_key) DO UPDATE SET device = excluded.device",
    )
    .bind(policy)
    .bind(identity_key)
    .bind(device.as_str())
    .execute(&mut **tx)
    .await
    .map_err(query_error(context))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::provisioning::{DeviceTemplate, ProvisioningMode};

    fn unattended() -> PolicySpec {
        PolicySpec {
            mode: ProvisioningMode::Unattended,
            identity_field_paths: vec!["status.facts.hardwareSerial".into()],
            template: DeviceTemplate::default(),
            max_devices: None,
            max_registrations_per_hour: None,
            shared_identity_window_minutes: None,
        }
    }

    /// Registers a new device `name` under `policy` with `identity`.
    async fn provision(store: &Store, policy: &str, name: &str, identity: &str) -> DeviceId {
        let now = Utc::now();
        let device = DeviceId::new(name).expect("valid name");
        let write = RegistrationWrite {
            registration: RegistrationRecord {
                id: format!("r-{name}"),
                policy: policy.into(),
                public_key_sha256: format!("key-{name}"),
                facts: Facts::default(),
                state: RegistrationState::Registered,
                device: Some(device.clone()),
                created_at: now,
                decided_at: None,
                decided_by: None,
                reason: None,
                certificate_serial: Some(format!("serial-{name}")),
                key_id: None,
                identity_key: Some(identity.into()),
            },
            expected_state: None,
            new_device: Some(ProvisionedDevice {
                name: device.clone(),
                labels: Labels::default(),
                spec: DeviceSpec::new(),
            }),
            identity_key: Some(identity.into()),
            admission: None,
        };
        store
            .write_registration(&write, now)
            .await
            .expect("registered")
            .expect("no limits");
        device
    }

    fn serial(serial: &str) -> (Facts, String) {
        let facts = Facts {
            hardware_serial: Some(serial.into()),
            ..Facts::default()
        };
        let fields = [tether_proto::provisioning::IdentityField::HardwareSerial];
        let key = tether_proto::provisioning::identity_key(&fields, &facts)
            .expect("short")
            .expect("not blank");
        (facts, key)
    }

    #[tokio::test]
    async fn a_report_moves_an_identity_only_when_no_device_holds_it() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        store
            .insert_policy("lab", &unattended(), Utc::now())
            .await
            .expect("policy");
        let (facts_a, a) = serial("SN-A");
        let (_, b) = serial("SN-B");
        let first = provision(&store, "lab", "lab-1", &a).await;
        let second = provision(&store, "lab", "lab-2", &b).await;
        let holder = |key: String| {
            let store = store.clone();
            async move { store.device_of_identity("lab", &key).await.expect("reads") }
        };

        // The same hardware reporting again changes nothing.
        crate::provisioning::refresh_identity(&store, &first, &facts_a)
            .await
            .expect("refreshed");
        assert_eq!(holder(a.clone()).await, Some(first.clone()));

        // lab-2 reporting lab-1's serial takes nothing from lab-1: a
        // device's report is only its own word.
        crate::provisioning::refresh_identity(&store, &second, &facts_a)
            .await
            .expect("refreshed");
        assert_eq!(holder(a.clone()).await, Some(first.clone()));
        assert_eq!(holder(b.clone()).await, Some(second.clone()));

        // Once the operator deletes lab-1 (its hardware moved), lab-2's
        // report moves the identity and frees lab-2's old hardware.
        assert!(store.delete_device(&first).await.expect("deletes"));
        crate::provisioning::refresh_identity(&store, &second, &facts_a)
            .await
            .expect("refreshed");
        assert_eq!(holder(a).await, Some(second));
        assert_eq!(holder(b).await, None, "lab-2's old hardware is no one's");
    }

    #[tokio::test]
    async fn a_new_policy_of_a_deleted_ones_name_inherits_none_of_its_devices() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        store
            .insert_policy("lab", &unattended(), Utc::now())
            .await
            .expect("policy");
        assert_eq!(
            store.get_policy_spec("lab").await.expect("reads"),
            Some(unattended())
        );
        let device = provision(&store, "lab", "lab-1", "serial=A").await;
        assert!(
            store
                .policy_of_device(&device)
                .await
                .expect("reads")
                .is_some()
        );

        store.delete_policy("lab").await.expect("deleted");
        store
            .insert_policy("lab", &unattended(), Utc::now())
            .await
            .expect("the name again");

        // Its status reports no longer record identities under the new
        // policy, whose keys could then take the device over.
        assert_eq!(store.policy_of_device(&device).await.expect("reads"), None);
        let policy = store
            .get_policy("lab")
            .await
            .expect("reads")
            .expect("there");
        assert_eq!(policy.devices, 0, "the old policy's device is not counted");
        assert!(
            store.get_device(&device).await.expect("reads").is_some(),
            "the device stays"
        );
        assert!(matches!(
            store.delete_policy("nope").await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn every_state_has_a_stored_name() {
        for state in [
            RegistrationState::Pending,
            RegistrationState::Approved,
            RegistrationState::Denied,
            RegistrationState::Registered,
        ] {
            let json = serde_json::to_value(state).expect("serializes");
            assert_eq!(json, state_name(state));
        }
    }
}
