//! Fleet-wide jobs: one action for every device a label selector matches,
//! stored `queued` and released to `pending` by a dispatcher within the
//! job's concurrency and rate limits. Once released, each is a normal
//! action: delivered, answered, expired or timed out by `ActionService`.
//!
//! With limits, only actions of devices online now are released, so a slot
//! never waits on an offline device; an offline device's action is
//! released when it comes back, or expires after the job's TTL. Without
//! limits everything is released at once, and offline devices get theirs
//! on reconnect like any pending action: a job without limits stores its
//! actions `pending` and offers them as soon as it is stored, not at the
//! dispatcher's next round.

pub mod release;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::api::{Action, CreateJob, Job, JobCounts, JobState, RequestAction};
use tether_proto::labels::LabelSelector;
use tether_proto::redact::redacted;
use tether_proto::spec::ActionSet;
use tether_proto::{ActionState, DeviceId};

use crate::actions::{self, ActionError, ActionService, CheckedRequest};
use crate::registry::{Registry, RegistryError};
use crate::sealing::Sealer;
use crate::store::{Before, JobRecord, NewJob, Store, StoreError};
use release::{Limits, credit_left, release_now};

/// The largest `concurrency` and `ratePerSecond` a job may ask for; more
/// than the controller delivers anyway, and a typo's extra zeros are caught.
pub const MAX_CONCURRENCY: u32 = 10_000;
pub const MAX_RATE_PER_SECOND: u32 = 10_000;

/// How often the dispatcher looks at jobs, on the one replica that runs it
/// (a singleton): a job created on any replica starts within this.
pub const DISPATCH_INTERVAL: Duration = Duration::from_millis(150);

/// Devices read per page while finding a new job's devices.
const MATCH_PAGE: u32 = 5000;

const CANCEL_REASON: &str = "not delivered: its job was cancelled";

/// Devices named in a refusal; the rest are counted.
const NAMED_DEVICES: usize = 10;

fn named(devices: &[DeviceId]) -> String {
    let mut text = devices
        .iter()
        .take(NAMED_DEVICES)
        .map(DeviceId::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if devices.len() > NAMED_DEVICES {
        text.push_str(&format!(" and {} more", devices.len() - NAMED_DEVICES));
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(
        "labelSelector is empty: a job needs at least one requirement, e.g. site=berlin (a label every device carries selects all)"
    )]
    EmptySelector,
    #[error("no device matches labelSelector {0:?}; nothing was created")]
    NoDevices(String),
    #[error("concurrency must be between 1 and {MAX_CONCURRENCY}; got {0}")]
    BadConcurrency(u32),
    #[error("ratePerSecond must be between 1 and {MAX_RATE_PER_SECOND}; got {0}")]
    BadRate(u32),
    #[error("input.correlationId cannot be set for a job: each device's action gets its own id")]
    CorrelationIdInInput,
    #[error(
        "action {action:?} is not enabled on {} of the {matching} matching devices ({}); enable it on each with `tether devices actions enable NAME {action}`, or narrow labelSelector to devices that accept it; nothing was created",
        refusing.len(),
        named(refusing)
    )]
    NotEnabled {
        action: String,
        matching: usize,
        refusing: Vec<DeviceId>,
    },
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {0} has already completed; there is nothing left to cancel")]
    AlreadyCompleted(String),
    #[error(transparent)]
    Action(#[from] ActionError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct JobService {
    store: Store,
    actions: Arc<ActionService>,
    registry: Registry,
    sealer: Arc<Sealer>,
    /// Per job, the instant the rate's credit counts from (in memory: after
    /// a restart a job starts with a second's worth again).
    rate_credit: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl JobService {
    pub fn new(
        store: Store,
        actions: Arc<ActionService>,
        registry: Registry,
        sealer: Arc<Sealer>,
    ) -> Self {
        Self {
            store,
            actions,
            registry,
            sealer,
            rate_credit: Mutex::default(),
        }
    }

    /// Checks the request like a single action's, finds the devices, and
    /// stores the job with a queued action each. Nothing is stored when it
    /// is refused.
    pub async fn create(&self, request: CreateJob) -> Result<Job, JobError> {
        let selector = request.label_selector.trim().to_owned();
        if selector.is_empty() {
            return Err(JobError::EmptySelector);
        }
        match request.concurrency {
            Some(c) if c == 0 || c > MAX_CONCURRENCY => return Err(JobError::BadConcurrency(c)),
            _ => {}
        }
        match request.rate_per_second {
            Some(r) if r == 0 || r > MAX_RATE_PER_SECOND => return Err(JobError::BadRate(r)),
            _ => {}
        }
        crate::actions::operator_may_request(&request.action)?;
        let CheckedRequest {
            action,
            input,
            ttl,
            timeout_seconds,
        } = self.actions.check(RequestAction {
            action: request.action,
            input: request.input,
            ttl_seconds: request.ttl_seconds,
            timeout_seconds: request.timeout_seconds,
        })?;
        if input.get("correlationId").is_some() {
            return Err(JobError::CorrelationIdInInput);
        }
        let devices = self.matching_devices(&selector).await?;
        if devices.is_empty() {
            return Err(JobError::NoDevices(selector));
        }
        self.ensure_enabled(&action, &devices).await?;
        let limits = Limits {
            concurrency: request.concurrency,
            rate_per_second: request.rate_per_second,
        };
        let released = limits.unlimited().then(|| devices.clone());
        let new = NewJob {
            id: uuid::Uuid::now_v7().to_string(),
            label_selector: selector,
            action,
            input: redacted(&input),
            sealed_input: self.sealer.seal(input.to_string().as_bytes()),
            concurrency: request.concurrency,
            rate_per_second: request.rate_per_second,
            ttl_seconds: u64::try_from(ttl.num_seconds()).unwrap_or_default(),
            timeout_seconds,
            created_at: Utc::now(),
            actions: devices
                .into_iter()
                .map(|device| (uuid::Uuid::now_v7().to_string(), device))
                .collect(),
            released: released.is_some(),
        };
        let record = self.store.insert_job(&new).await?;
        tracing::info!(job = %record.id, action = %record.action, selector = %record.label_selector, devices = record.devices, concurrency = ?record.concurrency, rate_per_second = ?record.rate_per_second, "job accepted");
        let counts = match released {
            Some(devices) => {
                // Not awaited: the request answers once the job is stored.
                let actions = self.actions.clone();
                tokio::spawn(async move { actions.offer_many(&devices).await });
                JobCounts {
                    pending: record.devices,
                    ..JobCounts::default()
                }
            }
            None => JobCounts {
                queued: record.devices,
                ..JobCounts::default()
            },
        };
        Ok(to_api(record, counts))
    }

    /// Refuses the whole job if any of its devices does not accept the
    /// action (ADR 0017): checked once, at creation, like the input.
    async fn ensure_enabled(&self, action: &str, devices: &[DeviceId]) -> Result<(), JobError> {
        let specs: HashMap<DeviceId, _> =
            self.store.get_specs(devices).await?.into_iter().collect();
        let mut refusing = Vec::new();
        for device in devices {
            // A device without a written spec accepts the defaults.
            let set = match specs.get(device) {
                Some(spec) => ActionSet::of(spec).map_err(|error| {
                    StoreError::Corrupt(format!("device {device}'s spec: {error}"))
                })?,
                None => ActionSet::default(),
            };
            if !set.accepts(action) {
                refusing.push(device.clone());
            }
        }
        if refusing.is_empty() {
            return Ok(());
        }
        Err(JobError::NotEnabled {
            action: action.to_owned(),
            matching: devices.len(),
            refusing,
        })
    }

    /// The devices a new job runs on. The one place that asks the registry,
    /// so a paged walk can replace the single list.
    async fn matching_devices(&self, selector: &str) -> Result<Vec<DeviceId>, JobError> {
        let selector = LabelSelector::parse(selector).map_err(RegistryError::from)?;
        let mut matching = Vec::new();
        loop {
            let after = matching.last().map(DeviceId::as_str);
            let page = self.registry.list(&selector, after, MATCH_PAGE).await?;
            let done = page.len() < MATCH_PAGE as usize;
            for device in page {
                matching.push(DeviceId::new(device.name).map_err(|error| {
                    JobError::Store(StoreError::Corrupt(format!(
                        "a stored device name: {error}"
                    )))
                })?);
            }
            if done {
                return Ok(matching);
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Job, JobError> {
        let record = self
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
        self.with_counts(record).await
    }

    /// Jobs, newest first.
    /// Jobs newest first, with their counts: at most `limit` created before
    /// `before`, and where the next page starts.
    pub async fn list(
        &self,
        before: Option<&Before>,
        limit: u32,
    ) -> Result<Vec<(Job, Before)>, JobError> {
        let mut jobs = Vec::new();
        for record in self.store.list_jobs(before, limit).await? {
            let position = Before {
                at: record.created_at,
                id: record.id.clone(),
            };
            jobs.push((self.with_counts(record).await?, position));
        }
        Ok(jobs)
    }

    /// `NotFound` unless the job exists.
    pub async fn ensure_exists(&self, id: &str) -> Result<(), JobError> {
        match self.store.get_job(id).await? {
            Some(_) => Ok(()),
            None => Err(JobError::NotFound(id.to_owned())),
        }
    }

    /// The job's actions by device name, a page at a time (none for a job
    /// that does not exist: see [`Self::ensure_exists`]).
    pub async fn actions(
        &self,
        id: &str,
        state: Option<ActionState>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Action>, JobError> {
        Ok(self
            .store
            .list_job_actions(id, state, after, limit)
            .await?
            .into_iter()
            .map(actions::to_api)
            .collect())
    }

    /// Cancels the job's queued and pending actions; delivered ones finish
    /// normally, and the job's counts are kept. Cancelling a cancelled job
    /// again changes nothing.
    pub async fn cancel(&self, id: &str) -> Result<Job, JobError> {
        let (record, cancelled) = self
            .store
            .cancel_job(id, Utc::now(), CANCEL_REASON)
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
        if record.state == JobState::Completed {
            return Err(JobError::AlreadyCompleted(id.to_owned()));
        }
        if !cancelled.is_empty() {
            tracing::info!(job = %record.id, cancelled = cancelled.len(), "job cancelled");
        }
        self.actions.ended(&cancelled);
        self.with_counts(record).await
    }

    async fn with_counts(&self, record: JobRecord) -> Result<Job, JobError> {
        let counts = match record.counts {
            Some(counts) => counts,
            None => self.store.job_counts(&record.id).await?,
        };
        Ok(to_api(record, counts))
    }

    /// One round of the dispatcher: releases what each running job's limits
    /// allow now and offers it for delivery, and records jobs whose actions
    /// have all ended.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let jobs = self.store.unfinished_jobs().await?;
        for job in &jobs {
            if let Err(error) = self.advance(job, now).await {
                tracing::error!(job = %job.id, error = %crate::error_chain(&error), "could not advance a job; trying again shortly");
            }
        }
        Ok(())
    }

    async fn advance(&self, job: &JobRecord, now: DateTime<Utc>) -> Result<(), StoreError> {
        let counts = self.store.job_counts(&job.id).await?;
        let in_flight = counts.pending + counts.delivered;
        if counts.queued + in_flight == 0 {
            self.store.finish_job(&job.id, now, &counts).await?;
            self.lock_credit().remove(&job.id);
            tracing::info!(job = %job.id, succeeded = counts.succeeded, failed = counts.failed + counts.timed_out + counts.rejected, expired = counts.expired, cancelled = counts.cancelled, "job finished");
            return Ok(());
        }
        if job.state != JobState::Running || counts.queued == 0 {
            return Ok(());
        }
        let limits = Limits {
            concurrency: job.concurrency,
            rate_per_second: job.rate_per_second,
        };
        let since = self
            .lock_credit()
            .get(&job.id)
            .map(|from| (now - *from).to_std().unwrap_or_default());
        let count = release_now(limits, in_flight, counts.queued, since);
        if count == 0 {
            return Ok(());
        }
        let devices = self
            .store
            .release_queued(&job.id, count, !limits.unlimited())
            .await?;
        if devices.is_empty() {
            return Ok(());
        }
        let carry = credit_left(limits, since, devices.len() as u64);
        self.lock_credit().insert(
            job.id.clone(),
            now - chrono::Duration::from_std(carry).unwrap_or_default(),
        );
        tracing::debug!(job = %job.id, released = devices.len(), in_flight, "released queued actions");
        self.actions.offer_many(&devices).await;
        Ok(())
    }

    fn lock_credit(&self) -> std::sync::MutexGuard<'_, HashMap<String, DateTime<Utc>>> {
        self.rate_credit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn to_api(record: JobRecord, counts: JobCounts) -> Job {
    Job {
        id: record.id,
        label_selector: record.label_selector,
        action: record.action,
        input: record.input,
        state: record.state,
        devices: record.devices,
        counts,
        concurrency: record.concurrency,
        rate_per_second: record.rate_per_second,
        ttl_seconds: record.ttl_seconds,
        timeout_seconds: record.timeout_seconds,
        created_at: record.created_at,
        cancelled_at: record.cancelled_at,
        finished_at: record.finished_at,
    }
}
