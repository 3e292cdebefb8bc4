//! The device registry: devices, their labels, enrollment with one-time
//! tokens, and the certificates that identify them.

pub mod spec;
mod specs;
mod summary;

pub use specs::{SpecUpdateError, Specs};

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::api::{
    Device, DeviceCreated, EnrollRequest, EnrollResponse, EnrollmentToken, FleetSummary, Labels,
    PatchDevice, RenewRequest, RenewResponse,
};
use tether_proto::{DeviceId, InvalidDeviceId};

use crate::auth::{new_secret, secret_hash};
use crate::cluster::Membership;
use crate::cluster::bus::{Bus, Channel, Heard, Subscription};
use crate::config::{AuthConfig, PkiConfig};
use crate::device_link::{BoxFuture, DeviceCredentials, DeviceLink};
use crate::pki::renewal::{self, Refusal, RenewalLimiter};
use crate::pki::{CertificateAuthority, PkiError};
use crate::store::{DeviceCursor, DeviceListing, DeviceRecord, SpecRecord, Store, StoreError};
use tether_proto::api::DeviceReport;
use tether_proto::labels::{
    LabelSelector, MAX_LABELS, SelectorError, is_valid_key, is_valid_value,
};
use tether_proto::provisioning::RegistrationState;
use tether_proto::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("device {0} not found")]
    NotFound(DeviceId),
    #[error(transparent)]
    InvalidName(#[from] InvalidDeviceId),
    #[error("device {0} already exists; pick another name or delete it first")]
    AlreadyExists(DeviceId),
    #[error("device {0}'s certificate changed meanwhile (revoked or replaced); nothing was issued")]
    CertificateChanged(DeviceId),
    #[error(transparent)]
    InvalidSelector(#[from] SelectorError),
    #[error(
        "invalid label key {0:?} to summarize by: use at most 63 letters, digits, '-', '_', '.' and '/', starting with a letter or digit"
    )]
    InvalidSummaryKey(String),
    #[error(
        "the device name {0} is reserved (`GET /devices/{0}` is the fleet summary); pick another"
    )]
    ReservedName(DeviceId),
    #[error(
        "invalid label {key:?}={value:?}: keys and values use letters, digits, '-', '_', '.', '/' and at most 63 characters"
    )]
    InvalidLabel { key: String, value: String },
    #[error(
        "invalid display name {0:?}: 1 to {MAX_DISPLAY_NAME_CHARS} characters, not blank, no control characters"
    )]
    InvalidDisplayName(String),
    #[error("a device has at most {MAX_LABELS} labels; this one would have {0}")]
    TooManyLabels(usize),
    #[error(
        "the enrollment token is invalid, expired or already used: create a new one with `tether devices enrollment-token NAME`"
    )]
    TokenRefused,
    #[error("the certificate signing request was refused: {0}")]
    BadCsr(#[source] PkiError),
    #[error("could not issue the device certificate")]
    Pki(#[source] PkiError),
    /// The cause is in the message: the device sees only the message.
    #[error(
        "the certificate presented for renewal was refused ({0}): enroll the device again with a token from `tether devices enrollment-token NAME`"
    )]
    BadCertificate(PkiError),
    #[error(transparent)]
    RenewalRefused(#[from] Refusal),
    #[error(
        "device {device} renewed its certificate too often; try again in {} s",
        retry_after.as_secs().max(1)
    )]
    RenewalLimited {
        device: DeviceId,
        retry_after: Duration,
    },
    #[error(
        "device {0}'s certificate changed while it was being renewed (renewed, re-enrolled or revoked meanwhile); renew again"
    )]
    RenewalConflict(DeviceId),
    #[error("invalid spec update: {0}")]
    InvalidSpec(SpecError),
    #[error(transparent)]
    SpecVersionMismatch(#[from] spec::VersionMismatch),
    #[error(
        "device {0}'s spec kept changing while this update was applied; read it again and retry"
    )]
    SpecContended(DeviceId),
    #[error(transparent)]
    Store(StoreError),
}

impl From<SpecUpdateError> for RegistryError {
    fn from(error: SpecUpdateError) -> Self {
        match error {
            SpecUpdateError::Invalid(error) => RegistryError::InvalidSpec(error),
            SpecUpdateError::Stale(mismatch) => RegistryError::SpecVersionMismatch(mismatch),
            SpecUpdateError::Contended(device) => RegistryError::SpecContended(device),
            SpecUpdateError::Store(error) => RegistryError::Store(error),
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        RegistryError::Store(error)
    }
}

/// Where agents reach tetherd, as seen by the client making the request.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub api_url: String,
    pub mqtt_url: String,
}

/// `GET /devices/summary` is the fleet summary, so no device may be named so.
const RESERVED_NAME: &str = "summary";

/// A device renews about every two thirds of a lifetime; a handful within
/// one window leaves room for lost answers and restarts.
const RENEWALS_PER_WINDOW: usize = 5;

#[derive(Clone)]
pub struct Registry {
    store: Store,
    ca: Arc<CertificateAuthority>,
    link: Arc<dyn DeviceLink>,
    config: AuthConfig,
    pki: PkiConfig,
    renewals: Arc<Mutex<RenewalLimiter>>,
    membership: Membership,
    /// Reaches the device's session when another replica holds it.
    bus: Bus,
    specs: Specs,
    /// The agent release signing key (base64), given to every enrolled
    /// device to pin (issue 19).
    release_signing_key: Option<String>,
}

impl Registry {
    pub fn new(
        store: Store,
        ca: Arc<CertificateAuthority>,
        link: Arc<dyn DeviceLink>,
        config: AuthConfig,
        pki: PkiConfig,
        membership: Membership,
        bus: Bus,
    ) -> Self {
        let window = renewal::renewal_window(pki.device_certificate_lifetime);
        let specs = Specs::new(store.clone(), link.clone(), bus.clone());
        Self {
            store,
            ca,
            link,
            config,
            pki,
            renewals: Arc::new(Mutex::new(RenewalLimiter::new(RENEWALS_PER_WINDOW, window))),
            membership,
            specs,
            bus,
            release_signing_key: None,
        }
    }

    /// Gives every enrolling device `key` (the agent release signing key,
    /// base64) to pin.
    pub fn with_release_signing_key(mut self, key: String) -> Self {
        self.release_signing_key = Some(key);
        self
    }

    /// Device specs: updates, delivery, reported status.
    pub fn specs(&self) -> &Specs {
        &self.specs
    }

    /// Closes the device's session wherever it is: here at once, on the
    /// replica that holds it through the bus. Call after the change that
    /// makes its certificate invalid is committed.
    /// SHA-256 of the CA certificate devices pin, hex.
    pub fn ca_sha256(&self) -> &str {
        self.ca.sha256_hex()
    }

    fn disconnect(&self, device: &DeviceId) {
        self.link.disconnect(device);
        self.bus
            .publish(Channel::DisconnectDevice, [device.as_str()]);
    }

    /// Closes the sessions here of devices other replicas deleted, revoked
    /// or re-enrolled. Runs until the bus is gone.
    pub async fn follow(self, mut subscription: Subscription) {
        while let Some(heard) = subscription.next().await {
            let Heard::Notice(notice) = heard else {
                // A missed disconnect leaves a session whose certificate no
                // longer connects; it ends at its next reconnect.
                continue;
            };
            if notice.channel != Channel::DisconnectDevice || notice.from_here {
                continue;
            }
            for key in &notice.keys {
                if let Ok(device) = DeviceId::new(key.as_str())
                    && self.link.is_connected(&device)
                {
                    tracing::info!(%device, "checking the session of a device another replica deleted, revoked or re-enrolled");
                    self.link.disconnect_if_stale(&device);
                }
            }
        }
    }

    pub async fn create(
        &self,
        name: &str,
        labels: Labels,
        display_name: Option<&str>,
        endpoints: &Endpoints,
    ) -> Result<DeviceCreated, RegistryError> {
        let name = DeviceId::new(name)?;
        if name.as_str() == RESERVED_NAME {
            return Err(RegistryError::ReservedName(name));
        }
        validate_labels(&labels)?;
        if let Some(display_name) = display_name {
            check_display_name(display_name)?;
        }
        let created = self
            .store
            .create_named_device(&name, &labels, display_name, Utc::now())
            .await;
        let record = match created {
            Err(StoreError::Conflict { .. }) => return Err(RegistryError::AlreadyExists(name)),
            other => other?,
        };
        let enrollment = self.issue_enrollment_token(&name, endpoints, None).await?;
        Ok(DeviceCreated {
            device: to_api(record),
            enrollment,
        })
    }

    /// One page of the devices `listing` picks, in its order, with the
    /// last one's cursor (where the next page starts).
    pub async fn search(
        &self,
        listing: &DeviceListing<'_>,
        after: Option<&DeviceCursor>,
        limit: u32,
    ) -> Result<Vec<(DeviceCursor, Device)>, RegistryError> {
        Ok(self
            .store
            .search_devices(listing, after, limit)
            .await?
            .into_iter()
            .map(|record| (DeviceCursor::after(&record), to_api(record)))
            .collect())
    }

    /// The devices the selector picks, by name: at most `limit` after `after`.
    pub async fn list(
        &self,
        selector: &LabelSelector,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Device>, RegistryError> {
        Ok(self
            .store
            .list_devices_page(selector, after, limit)
            .await?
            .into_iter()
            .map(to_api)
            .collect())
    }

    /// How many of the devices the selector picks are online and offline,
    /// per value of label `by` if given.
    pub async fn summary(
        &self,
        selector: &LabelSelector,
        by: Option<&str>,
    ) -> Result<FleetSummary, RegistryError> {
        if let Some(key) = by.filter(|key| !is_valid_key(key)) {
            return Err(RegistryError::InvalidSummaryKey(key.to_owned()));
        }
        let counts = self.store.count_devices(selector, by).await?;
        Ok(summary::summarize(by, &counts))
    }

    pub async fn get(&self, name: &DeviceId) -> Result<Device, RegistryError> {
        self.record(name).await.map(to_api)
    }

    /// The device with its spec and what its agent last reported.
    pub async fn get_with_spec(&self, name: &DeviceId) -> Result<Device, RegistryError> {
        let device = self.get(name).await?;
        let spec = self.specs.get(name).await?;
        Ok(with_spec(device, spec))
    }

    pub async fn record(&self, name: &DeviceId) -> Result<DeviceRecord, RegistryError> {
        self.store
            .get_device(name)
            .await?
            .ok_or_else(|| RegistryError::NotFound(name.clone()))
    }

    /// Merges labels and updates the spec (whole, or the fields `mask`
    /// names, made against version `if_match` if given). Labels are checked
    /// before anything is written, and written after the spec.
    pub async fn patch(
        &self,
        name: &DeviceId,
        patch: PatchDevice,
        mask: Option<&str>,
        if_match: Option<&str>,
    ) -> Result<Device, RegistryError> {
        let mask = mask
            .map(spec::UpdateMask::parse)
            .transpose()
            .map_err(RegistryError::InvalidSpec)?;
        let if_match = if_match
            .map(spec::parse_if_match)
            .transpose()
            .map_err(RegistryError::InvalidSpec)?;
        if patch.spec.is_none() && (mask.is_some() || if_match.is_some()) {
            return Err(RegistryError::InvalidSpec(SpecError::new(
                "spec",
                "updateMask and If-Match apply to a spec update; send {\"spec\": {…}}",
            )));
        }
        let mut labels = self.record(name).await?.labels;
        let relabel = !patch.labels.is_empty();
        for (key, value) in patch.labels {
            match value {
                Some(value) => labels.insert(key, value),
                None => labels.remove(&key),
            };
        }
        validate_labels(&labels)?;
        if let Some(request) = &patch.spec {
            let mask = spec::operator_mask(request, mask).map_err(RegistryError::InvalidSpec)?;
            self.specs
                .update(name, request, Some(&mask), if_match)
                .await?;
        }
        if relabel {
            self.store
                .set_labels(name, &labels)
                .await?
                .ok_or_else(|| RegistryError::NotFound(name.clone()))?;
        }
        self.get_with_spec(name).await
    }

    /// Enables or disables `action` on the device (ADR 0017); the new spec
    /// goes to the device like any spec update.
    pub async fn set_action_enabled(
        &self,
        name: &DeviceId,
        action: &str,
        enabled: bool,
    ) -> Result<crate::store::SpecRecord, RegistryError> {
        // An unchanged spec is not written, so the write cannot be what
        // tells that the device is missing.
        self.record(name).await?;
        Ok(self.specs.set_action_enabled(name, action, enabled).await?)
    }

    /// Deletes the device and closes its session: its certificate stops
    /// working at once, since CONNECT checks the registry.
    pub async fn delete(&self, name: &DeviceId) -> Result<(), RegistryError> {
        if !self.store.delete_device(name).await? {
            return Err(RegistryError::NotFound(name.clone()));
        }
        self.disconnect(name);
        Ok(())
    }

    /// A new one-time enrollment token for `name`, valid for `ttl` (the
    /// configured lifetime if `None`; an OS image written today and booted
    /// next month needs longer than a day).
    pub async fn issue_enrollment_token(
        &self,
        name: &DeviceId,
        endpoints: &Endpoints,
        ttl: Option<std::time::Duration>,
    ) -> Result<EnrollmentToken, RegistryError> {
        self.record(name).await?;
        let token = new_secret();
        let expires_at = Utc::now()
            + chrono::Duration::from_std(ttl.unwrap_or(self.config.enrollment_token_ttl))
                .unwrap_or(chrono::Duration::hours(24));
        self.store
            .insert_enrollment_token(name, &secret_hash(&token), expires_at)
            .await?;
        let ca_sha256 = self.ca.sha256_hex().to_owned();
        let agent_command = format!(
            "tether-agent --server {} --enroll-token {token} --ca-sha256 {ca_sha256}",
            endpoints.api_url
        );
        let join_command = crate::join::command(
            &format!("{}/api/v1/join/{token}", endpoints.api_url),
            self.ca.cert_pem(),
        );
        Ok(EnrollmentToken {
            token,
            expires_at,
            ca_sha256,
            agent_command,
            join_command,
        })
    }

    /// The manifest that joins a Kubernetes cluster as the device the
    /// token enrolls, running what `images` says. The token stays unused:
    /// the agent uses it.
    pub async fn join_manifest(
        &self,
        token: &str,
        endpoints: &Endpoints,
        images: &crate::config::KubernetesConfig,
    ) -> Result<String, RegistryError> {
        let device = self
            .store
            .enrollment_token_device(&secret_hash(token), Utc::now())
            .await?
            .ok_or(RegistryError::TokenRefused)?;
        Ok(crate::join::manifest(&crate::join::Join {
            device: device.as_str(),
            token,
            server_url: &endpoints.api_url,
            ca_sha256: self.ca.sha256_hex(),
            image: &images.agent_image,
            management_shell: images.management_shell(),
        }))
    }

    /// Exchanges a one-time token and a CSR for a client certificate. The CSR
    /// is checked before the token is spent, so a malformed request does not
    /// burn the token.
    pub async fn enroll(
        &self,
        request: &EnrollRequest,
        endpoints: &Endpoints,
    ) -> Result<EnrollResponse, RegistryError> {
        rcgen::CertificateSigningRequestParams::from_pem(&request.csr_pem)
            .map_err(|e| RegistryError::BadCsr(PkiError::BadCsr(e)))?;
        let device = self
            .store
            .consume_enrollment_token(&secret_hash(&request.token), Utc::now())
            .await?
            .ok_or(RegistryError::TokenRefused)?;
        let issued = self
            .issue_certificate(&device, &request.csr_pem, endpoints, Replacing::Any)
            .await?;
        Ok(issued.enrollment)
    }

    /// Signs `csr_pem` as the device's certificate, in place of any it
    /// had (whose session is closed), and answers as an enrollment: how
    /// an enrolled or registered (ADR 0025) device gets its identity.
    pub async fn issue_certificate(
        &self,
        device: &DeviceId,
        csr_pem: &str,
        endpoints: &Endpoints,
        replacing: Replacing,
    ) -> Result<IssuedCertificate, RegistryError> {
        let now = Utc::now();
        let issued = self
            .ca
            .sign_device_csr(device, csr_pem, self.pki.device_certificate_lifetime, now)
            .map_err(RegistryError::Pki)?;
        self.store
            .record_issued_certificate(device, &issued.serial_hex, issued.not_after)
            .await?;
        match replacing {
            Replacing::Any => {
                self.store
                    .set_certificate_serial(device, &issued.serial_hex)
                    .await?;
            }
            Replacing::ForRegistration {
                current,
                registration,
                state,
            } => {
                if !self
                    .store
                    .register_certificate(
                        device,
                        current.as_deref(),
                        &issued.serial_hex,
                        &registration,
                        state,
                    )
                    .await?
                {
                    return Err(RegistryError::CertificateChanged(device.clone()));
                }
            }
        }
        // A re-enrolled device's old session holds the replaced certificate.
        self.disconnect(device);
        tracing::info!(%device, serial = %issued.serial_hex, "device certificate issued");
        let mqtt_urls = self.membership.mqtt_urls(&endpoints.mqtt_url, now).await?;
        Ok(IssuedCertificate {
            enrollment: EnrollResponse {
                device: device.to_string(),
                certificate_pem: issued.pem,
                ca_certificate_pem: self.ca.cert_pem().to_owned(),
                mqtt_url: mqtt_urls[0].clone(),
                mqtt_urls,
                server_time: Some(now),
                release_signing_key: self.release_signing_key.clone(),
            },
            serial_hex: issued.serial_hex,
        })
    }

    /// Counts a certificate obtained again by another door than renewal
    /// (a registered key pair asking again, `who` naming it) against the
    /// renewal limit, so one key pair cannot have thousands signed.
    pub fn admit_reissue(&self, device: &DeviceId, who: &str) -> Result<(), RegistryError> {
        self.renewals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(who, Utc::now())
            .map_err(|retry_after| RegistryError::RenewalLimited {
                device: device.clone(),
                retry_after,
            })
    }

    /// Exchanges a device's certificate and a CSR for the same key for a new
    /// certificate. Possession of the key is the proof (the CSR is signed
    /// with it); the certificate must be one this CA issued, with a serial
    /// the registry still accepts, expired at most the grace period ago.
    /// The device's session is left alone: the agent reconnects with the new
    /// certificate when it has stored it.
    pub async fn renew(
        &self,
        request: &RenewRequest,
        endpoints: &Endpoints,
        now: DateTime<Utc>,
    ) -> Result<RenewResponse, RegistryError> {
        let presented = self
            .ca
            .verify_device_certificate(&request.certificate_pem)
            .map_err(RegistryError::BadCertificate)?;
        let csr_key =
            crate::pki::csr_public_key(&request.csr_pem).map_err(RegistryError::BadCsr)?;
        let device = DeviceId::new(presented.device.as_str())?;
        let serials = self.store.certificate_serials(&device).await?;
        renewal::check(
            &presented,
            &csr_key,
            serials.as_ref(),
            now,
            self.pki.renewal_grace,
        )?;
        self.renewals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(device.as_str(), now)
            .map_err(|retry_after| RegistryError::RenewalLimited {
                device: device.clone(),
                retry_after,
            })?;
        let issued = self
            .ca
            .sign_device_csr(
                &device,
                &request.csr_pem,
                self.pki.device_certificate_lifetime,
                now,
            )
            .map_err(RegistryError::Pki)?;
        self.store
            .record_issued_certificate(&device, &issued.serial_hex, issued.not_after)
            .await?;
        let expected = serials
            .and_then(|serials| serials.current)
            .unwrap_or_default();
        if !self
            .store
            .rotate_certificate_serial(
                &device,
                &expected,
                &presented.serial_hex,
                &issued.serial_hex,
            )
            .await?
        {
            return Err(RegistryError::RenewalConflict(device));
        }
        tracing::info!(
            %device,
            old_serial = %presented.serial_hex,
            serial = %issued.serial_hex,
            not_after = %issued.not_after,
            "device certificate renewed"
        );
        let mqtt_urls = self.membership.mqtt_urls(&endpoints.mqtt_url, now).await?;
        Ok(RenewResponse {
            device: device.to_string(),
            certificate_pem: issued.pem,
            not_before: issued.not_before,
            not_after: issued.not_after,
            server_time: now,
            mqtt_urls,
        })
    }

    /// Revokes the device's certificates and closes its session; the device
    /// and its history stay, and it can be enrolled again with a new token.
    pub async fn revoke(&self, name: &DeviceId) -> Result<(), RegistryError> {
        if !self.store.revoke_certificates(name).await? {
            return Err(RegistryError::NotFound(name.clone()));
        }
        self.disconnect(name);
        tracing::info!(device = %name, "device certificates revoked");
        Ok(())
    }
}

/// Which certificate a new one may replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replacing {
    /// Whatever the device has (an enrollment token is proof enough).
    Any,
    /// Only `current` (`None`: none), for the registration `registration`
    /// still in `state`, which records the new serial in the same commit
    /// (ADR 0025): otherwise `CertificateChanged`.
    ForRegistration {
        current: Option<String>,
        registration: String,
        state: RegistrationState,
    },
}

/// A certificate just issued: the answer for the device, and its serial
/// for whoever must recognise it later (a registration, ADR 0025).
#[derive(Debug)]
pub struct IssuedCertificate {
    pub enrollment: EnrollResponse,
    pub serial_hex: String,
}

/// CONNECT-time check for the MQTT endpoint: the certificate must be the
/// device's current one, or the one before its last renewal until the
/// current one has connected (deleted, revoked or re-enrolled devices are
/// refused).
pub struct StoreCredentials {
    pub store: Store,
}

impl DeviceCredentials for StoreCredentials {
    fn certificate_is_current<'a>(
        &'a self,
        device: &'a DeviceId,
        serial_hex: &'a str,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match self.store.certificate_serials(device).await {
                Ok(Some(serials)) if serials.current.as_deref() == Some(serial_hex) => {
                    if serials.previous.is_some()
                        && let Err(error) = self
                            .store
                            .forget_previous_certificate_serial(device, serial_hex)
                            .await
                    {
                        tracing::warn!(%device, error = %crate::error_chain(&error), "could not retire the certificate before the last renewal; it stays usable until the next connect");
                    }
                    true
                }
                Ok(Some(serials)) => serials.previous.as_deref() == Some(serial_hex),
                Ok(None) => false,
                Err(error) => {
                    tracing::error!(%device, error = %crate::error_chain(&error), "could not check a device certificate; refusing the connection");
                    false
                }
            }
        })
    }
}

pub fn to_api(record: DeviceRecord) -> Device {
    Device {
        name: record.name.to_string(),
        display_name: record.display_name,
        policy: record.policy,
        labels: record.labels,
        presence: record.presence,
        enrolled: record.certificate_serial.is_some(),
        last_seen: record.last_seen,
        agent_version: record.agent_version,
        capabilities: record.capabilities,
        created_at: record.created_at,
        ingest: None,
        spec: None,
        spec_version: None,
        status: None,
        spec_in_sync: None,
    }
}

/// Adds the spec, the agent's report and whether they agree.
fn with_spec(device: Device, record: SpecRecord) -> Device {
    let reported = record.reported;
    let in_sync = spec::in_sync(record.version, reported.as_ref().map(|(status, _)| status));
    Device {
        spec: Some(record.spec),
        spec_version: Some(record.version),
        status: reported.map(|(status, reported_at)| DeviceReport {
            spec_version: status.spec_version,
            errors: status.errors,
            facts: status.facts,
            deployments: status.deployments,
            update_holds: status.update_holds,
            sealing_key: status.sealing_key,
            boot: status.boot,
            watchdog: status.watchdog,
            time: status.time,
            conditions: status.conditions,
            network: status.network,
            reported_at,
        }),
        spec_in_sync: Some(in_sync),
        ..device
    }
}

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;

/// A display name is shown in tables and terminals: bounded, and no
/// control characters.
fn check_display_name(display_name: &str) -> Result<(), RegistryError> {
    if display_name.trim().is_empty()
        || display_name.chars().count() > MAX_DISPLAY_NAME_CHARS
        || display_name.chars().any(char::is_control)
    {
        return Err(RegistryError::InvalidDisplayName(
            display_name.chars().take(64).collect(),
        ));
    }
    Ok(())
}

/// A device's labels within their rules.
pub fn validate_labels(labels: &Labels) -> Result<(), RegistryError> {
    if labels.len() > MAX_LABELS {
        return Err(RegistryError::TooManyLabels(labels.len()));
    }
    match labels
        .iter()
        .find(|(key, value)| !is_valid_key(key) || !is_valid_value(value))
    {
        Some((key, value)) => Err(RegistryError::InvalidLabel {
            key: key.clone(),
            value: value.clone(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_renewal_certificate_says_why_and_what_to_do() {
        let message = RegistryError::BadCertificate(PkiError::NotACertificate).to_string();
        assert!(message.contains("not one PEM certificate"), "{message}");
        assert!(message.contains("enrollment-token"), "{message}");
    }
}
