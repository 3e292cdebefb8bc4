//! Desired state (issue 17, ADR 0029): chart templates and deployments,
//! and the controller that puts each deployment's revision into the specs
//! of the devices it targets, batch by batch ([`rollout`]), rendered per
//! device ([`render`]), and puts failed devices back.
//!
//! The controller runs on one replica at a time (a singleton job) every
//! few seconds, and at once when a deployment changes or a device reports
//! on one here. Every step is a conditional write or an idempotent one, so
//! a takeover mid-step by another replica repeats nothing harmful.

pub mod render;
pub mod rollout;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tether_proto::DeviceId;
use tether_proto::api::Labels;
use tether_proto::desired::resources::{
    ChartTemplate, ChartTemplateSpec, CreateChartTemplate, CreateDeployment, Deployment,
    DeploymentRollout, DeploymentSpecification, DeviceRollout, HeldDevice, RolloutPhase, Target,
};
use tether_proto::desired::updates::UpdateHold;
use tether_proto::desired::{self, ChartRelease, DeploymentState, DeploymentStatus};
use tether_proto::labels::LabelSelector;
use tether_proto::spec::SpecError;
use tokio::sync::Notify;

use self::render::{MAX_RELEASE_NAME_BYTES, ReleaseBinaries, RevisionBody};
use self::rollout::DeviceStep;
use crate::registry::{SpecUpdateError, Specs};
use crate::releases::{ReleaseError, Releases};
use crate::store::{
    DeploymentDeviceRecord, DeploymentRecord, DeploymentWrite, Store, StoreError, TemplateRecord,
};

/// How often the controller looks at every deployment when nothing wakes it.
pub const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest hostname of a pinned deployment (a DNS name).
const MAX_HOSTNAME_BYTES: usize = 253;

#[derive(Debug, thiserror::Error)]
pub enum DesiredStateError {
    #[error("chart template {0} not found")]
    TemplateNotFound(String),
    #[error("deployment {0} not found")]
    DeploymentNotFound(String),
    /// A field of the request, by its path, and what is wrong with it.
    #[error("invalid {0}")]
    Invalid(SpecError),
    #[error("{0} already exists; pick another name or delete it first")]
    Exists(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> DesiredStateError {
    DesiredStateError::Invalid(SpecError::new(path, message))
}

#[derive(Clone)]
pub struct DesiredState {
    store: Store,
    specs: Specs,
    /// The agent releases deployments name (issue 19).
    releases: Releases,
    wake: Arc<Notify>,
}

impl DesiredState {
    pub fn new(store: Store, specs: Specs, releases: Releases) -> Self {
        Self {
            store,
            specs,
            releases,
            wake: Arc::new(Notify::new()),
        }
    }

    pub async fn create_template(
        &self,
        request: CreateChartTemplate,
    ) -> Result<ChartTemplate, DesiredStateError> {
        check_template(&request.name, &request.spec)?;
        self.store
            .insert_template(&request.name, &request.spec, Utc::now())
            .await
            .map_err(|e| match e {
                StoreError::Conflict { what } => DesiredStateError::Exists(what),
                other => other.into(),
            })?;
        tracing::info!(template = %request.name, "chart template created");
        self.template(&request.name).await
    }

    /// Replaces a template: every deployment that uses it gets a new
    /// revision, which rolls out.
    pub async fn update_template(
        &self,
        name: &str,
        spec: ChartTemplateSpec,
    ) -> Result<ChartTemplate, DesiredStateError> {
        check_template(name, &spec)?;
        self.store
            .update_template(name, &spec, Utc::now())
            .await
            .map_err(|e| not_found(e, || DesiredStateError::TemplateNotFound(name.to_owned())))?;
        // Every user is tried, whatever fails: one deployment that cannot
        // take the change must not keep the others on the old template.
        let mut not_revised = Vec::new();
        for deployment in self.store.deployments_using(name).await? {
            match self.revise(&deployment, None).await {
                // A concurrent change of the deployment made a revision
                // with the new template already.
                Ok(_) | Err(DesiredStateError::Conflict(_)) => {}
                Err(error) => {
                    tracing::warn!(template = %name, %deployment, error = %crate::error_chain(&error), "a deployment could not take the template's change");
                    not_revised.push(format!("{deployment} ({error})"));
                }
            }
        }
        if !not_revised.is_empty() {
            return Err(DesiredStateError::Conflict(format!(
                "chart template {name} was updated, but these deployments keep the old one: {}; fix them and run `tether deployments update` on each (or update the template again)",
                not_revised.join("; ")
            )));
        }
        tracing::info!(template = %name, "chart template updated");
        self.template(name).await
    }

    pub async fn template(&self, name: &str) -> Result<ChartTemplate, DesiredStateError> {
        self.store
            .list_templates(Some(&[name.to_owned()]), None, 1)
            .await?
            .pop()
            .map(template_to_api)
            .ok_or_else(|| DesiredStateError::TemplateNotFound(name.to_owned()))
    }

    pub async fn templates(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ChartTemplate>, DesiredStateError> {
        Ok(self
            .store
            .list_templates(None, after, limit)
            .await?
            .into_iter()
            .map(template_to_api)
            .collect())
    }

    pub async fn delete_template(&self, name: &str) -> Result<(), DesiredStateError> {
        self.store
            .delete_template(name)
            .await
            .map_err(|e| match e {
                StoreError::Conflict { what } => DesiredStateError::Conflict(format!(
                    "cannot delete {what}; take it out of those deployments first"
                )),
                other => not_found(other, || {
                    DesiredStateError::TemplateNotFound(name.to_owned())
                }),
            })?;
        tracing::info!(template = %name, "chart template deleted");
        Ok(())
    }

    pub async fn create_deployment(
        &self,
        request: CreateDeployment,
    ) -> Result<Deployment, DesiredStateError> {
        let body = self.check_deployment(&request.name, &request.spec).await?;
        self.store
            .write_deployment(
                &DeploymentWrite {
                    name: &request.name,
                    spec: &request.spec,
                    body: &body,
                },
                None,
                Utc::now(),
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict { what } => DesiredStateError::Exists(what),
                other => template_gone(other),
            })?;
        tracing::info!(deployment = %request.name, "deployment created");
        self.wake.notify_one();
        self.deployment(&request.name).await
    }

    /// Makes the deployment's next revision from `spec` (or, `None`, from
    /// its spec with the templates as they are now). `expected`: the
    /// revision the change was made against (`If-Match`).
    pub async fn update_deployment(
        &self,
        name: &str,
        spec: DeploymentSpecification,
        expected: Option<u64>,
    ) -> Result<Deployment, DesiredStateError> {
        let current = self.deployment_record(name).await?;
        if let Some(expected) = expected
            && expected != current.revision
        {
            return Err(DesiredStateError::Conflict(format!(
                "deployment {name} is at revision {}, not {expected}; read it again and retry",
                current.revision
            )));
        }
        self.write_revision(name, &spec, current.revision).await?;
        self.deployment(name).await
    }

    async fn revise(&self, name: &str, expected: Option<u64>) -> Result<u64, DesiredStateError> {
        let current = self.deployment_record(name).await?;
        self.write_revision(name, &current.spec, expected.unwrap_or(current.revision))
            .await
    }

    async fn write_revision(
        &self,
        name: &str,
        spec: &DeploymentSpecification,
        after: u64,
    ) -> Result<u64, DesiredStateError> {
        let body = self.check_deployment(name, spec).await?;
        let revision = self
            .store
            .write_deployment(&DeploymentWrite { name, spec, body: &body }, Some(after), Utc::now())
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => DesiredStateError::Conflict(format!(
                    "deployment {name} changed meanwhile (or is being deleted); read it again and retry"
                )),
                other => template_gone(other),
            })?;
        tracing::info!(deployment = %name, revision, "deployment revised; rolling out");
        self.wake.notify_one();
        Ok(revision)
    }

    pub async fn deployment(&self, name: &str) -> Result<Deployment, DesiredStateError> {
        Ok(deployment_to_api(self.deployment_record(name).await?))
    }

    async fn deployment_record(&self, name: &str) -> Result<DeploymentRecord, DesiredStateError> {
        self.store
            .get_deployment(name)
            .await?
            .ok_or_else(|| DesiredStateError::DeploymentNotFound(name.to_owned()))
    }

    pub async fn deployments(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Deployment>, DesiredStateError> {
        Ok(self
            .store
            .list_deployments(after, limit)
            .await?
            .into_iter()
            .map(deployment_to_api)
            .collect())
    }

    /// Takes the deployment off its devices, then forgets it.
    pub async fn delete_deployment(&self, name: &str) -> Result<(), DesiredStateError> {
        if !self
            .store
            .set_deployment_phase(name, None, RolloutPhase::Deleting, None, Utc::now())
            .await?
        {
            return Err(DesiredStateError::DeploymentNotFound(name.to_owned()));
        }
        tracing::info!(deployment = %name, "deployment being deleted from its devices");
        self.wake.notify_one();
        Ok(())
    }

    /// Goes on with a paused rollout.
    pub async fn resume(&self, name: &str) -> Result<Deployment, DesiredStateError> {
        let current = self.deployment_record(name).await?;
        if current.phase != RolloutPhase::Paused {
            return Err(DesiredStateError::Conflict(format!(
                "deployment {name}'s rollout is {}, not paused",
                current.phase.as_str()
            )));
        }
        self.store
            .set_deployment_phase(
                name,
                Some(current.revision),
                RolloutPhase::Progressing,
                None,
                Utc::now(),
            )
            .await?;
        self.wake.notify_one();
        self.deployment(name).await
    }

    /// The rollout per batch and device.
    pub async fn status(&self, name: &str) -> Result<DeploymentRollout, DesiredStateError> {
        let deployment = self.deployment_record(name).await?;
        let rows = self.store.deployment_devices(name).await?;
        let targeted = match deployment.phase {
            RolloutPhase::Deleting => Vec::new(),
            _ => self.targets(&deployment.spec.target).await?,
        };
        let mut holds = self.store.update_holds().await?;
        // Held and still waiting for this revision: on it, a hold no
        // longer matters to this rollout.
        let held = targeted
            .iter()
            .filter(|device| {
                !rows.iter().any(|r| {
                    &r.device == *device
                        && (r.revision == Some(deployment.revision)
                            || r.rolled_back_from == Some(deployment.revision))
                })
            })
            .filter_map(|device| {
                holds.remove(device).map(|holds| HeldDevice {
                    device: device.to_string(),
                    holds,
                })
            })
            .collect();
        Ok(rollout_view(&deployment, targeted.len() as u64, rows, held))
    }

    /// A device's report of its deployments (ingest hands it here).
    pub async fn record_reports(
        &self,
        device: &DeviceId,
        reports: &BTreeMap<String, DeploymentStatus>,
    ) -> Result<(), StoreError> {
        if reports.is_empty() {
            return Ok(());
        }
        self.store
            .record_deployment_reports(device, reports, Utc::now())
            .await?;
        self.wake.notify_one();
        Ok(())
    }

    /// The controller: every deployment, every [`RECONCILE_EVERY`] and
    /// when woken. Runs as a singleton job.
    pub async fn reconcile(&self, now: DateTime<Utc>) {
        let mut after: Option<String> = None;
        loop {
            let page = match self.store.list_deployments(after.as_deref(), 200).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), "could not list deployments to reconcile; trying again shortly");
                    return;
                }
            };
            let Some(last) = page.last() else { return };
            after = Some(last.name.clone());
            let holds = match self.store.update_holds().await {
                Ok(holds) => holds,
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), "could not read devices' update holds to reconcile; trying again shortly");
                    return;
                }
            };
            for deployment in page {
                if let Err(error) = self.reconcile_one(&deployment, &holds, now).await {
                    tracing::warn!(deployment = %deployment.name, error = %crate::error_chain(&error), "could not reconcile a deployment; trying again shortly");
                }
            }
        }
    }

    /// Waits until something changed that the controller should see, or
    /// the period passed.
    pub async fn woken(&self) {
        let _ = tokio::time::timeout(RECONCILE_EVERY, self.wake.notified()).await;
    }

    async fn reconcile_one(
        &self,
        deployment: &DeploymentRecord,
        holds: &BTreeMap<DeviceId, Vec<UpdateHold>>,
        now: DateTime<Utc>,
    ) -> Result<(), DesiredStateError> {
        let name = deployment.name.as_str();
        let rows = self.store.deployment_devices(name).await?;
        let targeted = match deployment.phase {
            RolloutPhase::Deleting => Vec::new(),
            _ => self.targets(&deployment.spec.target).await?,
        };
        let steps: Vec<DeviceStep> = rows.iter().map(step_of).collect();
        let plan = rollout::plan(
            deployment.revision,
            deployment.phase,
            &deployment.spec.rollout,
            &targeted,
            &steps,
            |device| holds.contains_key(device),
            now,
        );
        let mut bodies = BTreeMap::<u64, Option<RevisionBody>>::new();
        for device in &plan.remove {
            match self.specs.set_deployment(device, name, None).await {
                Ok(_) | Err(SpecUpdateError::Store(StoreError::NotFound { .. })) => {}
                Err(error) => {
                    tracing::warn!(%device, deployment = name, error = %crate::error_chain(&error), "could not take a deployment off a device; trying again");
                    continue;
                }
            }
            self.store.remove_deployment_device(name, device).await?;
        }
        for (device, previous) in &plan.roll_back {
            let Some(row) = rows.iter().find(|r| &r.device == device) else {
                continue;
            };
            let rendered = match previous {
                Some(revision) => self.rendered(name, *revision, device, &mut bodies).await?,
                None => None,
            };
            let why = if plan.timed_out.contains(device) {
                format!(
                    "did not report revision {} ready within {} s",
                    deployment.revision, deployment.spec.rollout.progress_deadline_seconds
                )
            } else {
                row.reason.clone().unwrap_or_else(|| "failed".to_owned())
            };
            // Recorded first, as for an update: the report of the version
            // it goes back to may come back at once.
            self.store
                .put_deployment_device(
                    name,
                    &DeploymentDeviceRecord {
                        revision: *previous,
                        previous_revision: None,
                        version: rendered.as_ref().map(|r| r.version.clone()),
                        rolled_back_from: Some(deployment.revision),
                        assigned_at: now,
                        reported_version: None,
                        state: Some(DeploymentState::Failed),
                        reason: Some(why.clone()),
                        updated_at: now,
                        ..row.clone()
                    },
                )
                .await?;
            match self
                .specs
                .set_deployment(device, name, rendered.as_ref())
                .await
            {
                Ok(_) | Err(SpecUpdateError::Store(StoreError::NotFound { .. })) => {
                    tracing::warn!(%device, deployment = name, revision = deployment.revision, "device failed the revision ({why}); put back on {previous:?}");
                }
                Err(error) => {
                    tracing::warn!(%device, deployment = name, error = %crate::error_chain(&error), "could not put a failed device back on its previous revision; its spec keeps the failed one");
                }
            }
        }
        for device in &plan.update {
            let row = rows.iter().find(|r| &r.device == device);
            let rendered = self
                .rendered(name, deployment.revision, device, &mut bodies)
                .await?;
            let mut record = DeploymentDeviceRecord {
                device: device.clone(),
                revision: Some(deployment.revision),
                previous_revision: row.and_then(|r| r.revision),
                version: rendered.as_ref().map(|r| r.version.clone()),
                batch: Some(plan.batch),
                rolled_back_from: None,
                assigned_at: now,
                reported_version: None,
                state: None,
                reason: None,
                updated_at: now,
            };
            // Recorded before it is sent: the device's report may come
            // back before this step ends, and must find what it is about.
            self.store.put_deployment_device(name, &record).await?;
            match self
                .specs
                .set_deployment(device, name, rendered.as_ref())
                .await
            {
                Ok(_) => {}
                Err(SpecUpdateError::Store(StoreError::NotFound { .. })) => {}
                // The device cannot be sent it (its spec would be too
                // large): it fails the revision, and goes back.
                Err(error) => {
                    record.reported_version = record.version.clone();
                    record.state = Some(DeploymentState::Failed);
                    record.reason = Some(format!("cannot be sent: {}", crate::error_chain(&error)));
                    self.store.put_deployment_device(name, &record).await?;
                }
            }
        }
        if !plan.update.is_empty() {
            tracing::info!(
                deployment = name,
                revision = deployment.revision,
                batch = plan.batch,
                devices = plan.update.len(),
                "batch sent"
            );
        }
        if deployment.phase == RolloutPhase::Deleting {
            if self.store.deployment_devices(name).await?.is_empty() {
                self.store.delete_deployment(name).await?;
                tracing::info!(deployment = name, "deployment deleted from all its devices");
            }
            return Ok(());
        }
        if let Some(phase) = plan.phase
            && (phase != deployment.phase || plan.reason != deployment.reason)
        {
            self.store
                .set_deployment_phase(
                    name,
                    Some(deployment.revision),
                    phase,
                    plan.reason.as_deref(),
                    now,
                )
                .await?;
            match phase {
                RolloutPhase::Paused => tracing::warn!(
                    deployment = name,
                    revision = deployment.revision,
                    reason = plan.reason.as_deref().unwrap_or_default(),
                    "rollout paused"
                ),
                RolloutPhase::Complete => tracing::info!(
                    deployment = name,
                    revision = deployment.revision,
                    "rollout complete"
                ),
                _ => {}
            }
        }
        Ok(())
    }

    /// The devices a target picks now, sorted.
    async fn targets(&self, target: &Target) -> Result<Vec<DeviceId>, DesiredStateError> {
        target_devices(&self.store, target, "spec.target")
            .await
            .map_err(|error| match error {
                TargetError::Invalid(field) => DesiredStateError::Invalid(field),
                TargetError::Store(error) => error.into(),
            })
    }

    /// `revision` of `deployment` rendered for `device` (`None` if the
    /// revision is gone).
    async fn rendered(
        &self,
        deployment: &str,
        revision: u64,
        device: &DeviceId,
        bodies: &mut BTreeMap<u64, Option<RevisionBody>>,
    ) -> Result<Option<desired::DeploymentSpec>, DesiredStateError> {
        if let std::collections::btree_map::Entry::Vacant(entry) = bodies.entry(revision) {
            let body = match self.store.get_revision_body(deployment, revision).await? {
                Some(json) => Some(serde_json::from_str(&json).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "revision {revision} of deployment {deployment}: {e}"
                    ))
                })?),
                None => None,
            };
            entry.insert(body);
        }
        let Some(body) = bodies[&revision].as_ref() else {
            return Ok(None);
        };
        let labels = self.labels_of(device).await?;
        Ok(Some(render::render(
            deployment,
            revision,
            body,
            device,
            &labels,
            self.releases.keys(),
        )))
    }

    /// A device's labels now (none if it is gone): config templates see them.
    async fn labels_of(&self, device: &DeviceId) -> Result<Labels, StoreError> {
        Ok(self
            .store
            .get_device(device)
            .await?
            .map(|d| d.labels)
            .unwrap_or_default())
    }

    /// Checks a deployment and resolves its templates: the revision's body.
    async fn check_deployment(
        &self,
        name: &str,
        spec: &DeploymentSpecification,
    ) -> Result<String, DesiredStateError> {
        desired::check_name("name", name).map_err(DesiredStateError::Invalid)?;
        check_rollout(spec)?;
        if let Some(hostname) = &spec.hostname
            && (hostname.is_empty()
                || hostname.len() > MAX_HOSTNAME_BYTES
                || !hostname
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)))
        {
            return Err(invalid(
                "spec.hostname",
                format!(
                    "{hostname:?} is not a node name: letters, digits, '-' and '.', at most {MAX_HOSTNAME_BYTES} bytes"
                ),
            ));
        }
        let targeted = match (&spec.target.device, &spec.target.selector) {
            (Some(_), Some(_)) => {
                return Err(invalid("spec.target", "give device or selector, not both"));
            }
            (None, None) => {
                return Err(invalid(
                    "spec.target",
                    "targets nothing: give device (one device) or selector (labels)",
                ));
            }
            _ => self.targets(&spec.target).await?,
        };
        if targeted.is_empty() {
            return Err(invalid(
                "spec.target",
                match (&spec.target.device, &spec.target.selector) {
                    (Some(device), _) => format!("device {device} not found"),
                    (_, selector) => format!(
                        "selector {:?} picks no device; label the devices first (`tether devices label`)",
                        selector.as_deref().unwrap_or_default()
                    ),
                },
            ));
        }
        let mut templates = BTreeMap::new();
        for (i, chart) in spec.charts.iter().enumerate() {
            let path = format!("spec.charts[{i}]");
            if templates.contains_key(chart) {
                return Err(invalid(path, format!("{chart} is listed twice")));
            }
            let release = render::release_name(name, chart);
            if release.len() > MAX_RELEASE_NAME_BYTES {
                return Err(invalid(
                    path,
                    format!(
                        "the release {release:?} is longer than Helm's {MAX_RELEASE_NAME_BYTES} characters; shorten the deployment's or the template's name"
                    ),
                ));
            }
            let template = self
                .store
                .list_templates(Some(std::slice::from_ref(chart)), None, 1)
                .await?
                .pop()
                .ok_or_else(|| {
                    invalid(
                        path,
                        format!("unknown chart template {chart:?}; see `tether templates list`"),
                    )
                })?;
            templates.insert(chart.clone(), template.spec);
        }
        let agent = match &spec.agent_release {
            Some(version) => Some(self.release(version).await?),
            None if spec.allow_agent_downgrade => {
                return Err(invalid(
                    "spec.allowAgentDowngrade",
                    "allows a downgrade of the agent release, but the spec names none (agentRelease)",
                ));
            }
            None => None,
        };
        let body = RevisionBody {
            spec: spec.clone(),
            templates,
            agent,
        };
        // What the devices will be sent follows the device contract.
        let labels = self.labels_of(&targeted[0]).await?;
        let rendered = render::render(name, 1, &body, &targeted[0], &labels, self.releases.keys());
        let section = serde_json::json!({ name: rendered });
        desired::validate(desired::SECTION, &section).map_err(|e| {
            DesiredStateError::Invalid(SpecError::new(
                e.path
                    .replacen(&format!("{}.{name}", desired::SECTION), "spec", 1),
                e.message,
            ))
        })?;
        serde_json::to_string(&body).map_err(|e| {
            StoreError::Encode {
                what: "a deployment revision",
                source: e,
            }
            .into()
        })
    }
}

impl DesiredState {
    /// The published binaries of the agent release a spec names.
    async fn release(&self, version: &str) -> Result<ReleaseBinaries, DesiredStateError> {
        const PATH: &str = "spec.agentRelease";
        desired::agent_release::check_version(PATH, version).map_err(DesiredStateError::Invalid)?;
        match self.releases.binaries(version).await {
            Ok(binaries) => Ok(ReleaseBinaries {
                version: version.to_owned(),
                binaries,
            }),
            Err(ReleaseError::NotFound(_)) => Err(invalid(
                PATH,
                format!(
                    "unknown agent release {version:?}; publish it first (`tether releases publish`) or see `tether releases list`"
                ),
            )),
            Err(ReleaseError::Store(error)) => Err(error.into()),
            Err(other) => Err(DesiredStateError::Conflict(other.to_string())),
        }
    }
}

/// Why a target could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("invalid {0}")]
    Invalid(SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The devices a target picks now, sorted: the device if it exists, or
/// every device the selector picks. Deployments and secrets (ADR 0030)
/// target alike; `path` names the target in errors.
pub async fn target_devices(
    store: &Store,
    target: &Target,
    path: &str,
) -> Result<Vec<DeviceId>, TargetError> {
    match (&target.device, &target.selector) {
        (Some(device), _) => {
            let device = DeviceId::new(device.as_str()).map_err(|e| {
                TargetError::Invalid(SpecError::new(format!("{path}.device"), e.to_string()))
            })?;
            Ok(match store.get_device(&device).await? {
                Some(_) => vec![device],
                None => Vec::new(),
            })
        }
        (None, Some(selector)) => {
            let selector = LabelSelector::parse(selector).map_err(|e| {
                TargetError::Invalid(SpecError::new(format!("{path}.selector"), e.to_string()))
            })?;
            Ok(store.device_names(&selector).await?)
        }
        (None, None) => Ok(Vec::new()),
    }
}

fn check_template(name: &str, spec: &ChartTemplateSpec) -> Result<(), DesiredStateError> {
    desired::check_name("name", name).map_err(DesiredStateError::Invalid)?;
    let probe = ChartRelease {
        release: name.to_owned(),
        chart: spec.chart.clone(),
        source: spec.source.clone(),
        version: spec.version.clone(),
        namespace: spec.namespace.clone(),
        hostname: None,
        values: spec.values.clone(),
    };
    desired::chart::validate("spec", std::slice::from_ref(&probe)).map_err(|e| {
        DesiredStateError::Invalid(SpecError::new(
            e.path.replacen("spec[0]", "spec", 1),
            e.message,
        ))
    })
}

fn check_rollout(spec: &DeploymentSpecification) -> Result<(), DesiredStateError> {
    let rollout = &spec.rollout;
    if rollout.batch_size == Some(0) {
        return Err(invalid("spec.rollout.batchSize", "must be 1 or more"));
    }
    if !(1..=100).contains(&rollout.batch_percent) {
        return Err(invalid("spec.rollout.batchPercent", "must be 1–100"));
    }
    if rollout.max_failure_percent > 100 {
        return Err(invalid("spec.rollout.maxFailurePercent", "must be 0–100"));
    }
    if rollout.progress_deadline_seconds == 0 {
        return Err(invalid(
            "spec.rollout.progressDeadlineSeconds",
            "must be 1 or more",
        ));
    }
    Ok(())
}

fn not_found(
    error: StoreError,
    otherwise: impl FnOnce() -> DesiredStateError,
) -> DesiredStateError {
    match error {
        StoreError::NotFound { .. } => otherwise(),
        other => other.into(),
    }
}

/// A template deleted between the check and the write.
/// A template or the agent release the deployment uses, deleted between
/// its check and the write.
fn template_gone(error: StoreError) -> DesiredStateError {
    match error {
        StoreError::NotFound { what } if what.starts_with("agent release") => {
            invalid("spec.agentRelease", format!("{what} was deleted meanwhile"))
        }
        StoreError::NotFound { what } => {
            invalid("spec.charts", format!("{what} was deleted meanwhile"))
        }
        other => other.into(),
    }
}

fn step_of(row: &DeploymentDeviceRecord) -> DeviceStep {
    DeviceStep {
        device: row.device.clone(),
        revision: row.revision,
        previous_revision: row.previous_revision,
        version: row.version.clone(),
        batch: row.batch,
        rolled_back_from: row.rolled_back_from,
        assigned_at: row.assigned_at,
        reported: row.reported_version.clone().zip(row.state),
    }
}

fn template_to_api(record: TemplateRecord) -> ChartTemplate {
    ChartTemplate {
        name: record.name,
        spec: record.spec,
        used_by: record.used_by,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

fn deployment_to_api(record: DeploymentRecord) -> Deployment {
    Deployment {
        name: record.name,
        spec: record.spec,
        revision: record.revision,
        rollout: record.phase,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

/// The status view: counts over the devices' rows.
fn rollout_view(
    deployment: &DeploymentRecord,
    targeted: u64,
    rows: Vec<DeploymentDeviceRecord>,
    held: Vec<HeldDevice>,
) -> DeploymentRollout {
    let revision = deployment.revision;
    let current = |r: &DeploymentDeviceRecord| {
        r.revision == Some(revision) && r.rolled_back_from != Some(revision)
    };
    let state_now = |r: &DeploymentDeviceRecord| {
        r.state
            .filter(|_| r.reported_version.is_some() && r.reported_version == r.version)
    };
    let updated = rows.iter().filter(|r| current(r)).count() as u64;
    let ready = rows
        .iter()
        .filter(|r| current(r) && state_now(r) == Some(DeploymentState::Ready))
        .count() as u64;
    let rolled_back = rows
        .iter()
        .filter(|r| r.rolled_back_from == Some(revision))
        .count() as u64;
    let failed = rows
        .iter()
        .filter(|r| current(r) && state_now(r) == Some(DeploymentState::Failed))
        .count() as u64
        + rolled_back;
    let devices = rows
        .into_iter()
        .map(|r| DeviceRollout {
            state: if r.rolled_back_from.is_some() {
                r.state
            } else {
                state_now(&r)
            },
            device: r.device.to_string(),
            revision: r.revision,
            batch: r.batch,
            reason: r.reason,
            rolled_back: r.rolled_back_from == Some(revision),
            updated_at: r.updated_at,
        })
        .collect();
    DeploymentRollout {
        name: deployment.name.clone(),
        revision,
        phase: deployment.phase,
        reason: deployment.reason.clone(),
        targeted,
        updated,
        ready,
        failed,
        rolled_back,
        devices,
        held,
    }
}
