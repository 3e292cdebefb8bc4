//! The action service: accept an operator's request, deliver it to the device
//! in order, record the device's answer, and expire or time out what gets no
//! answer. The lifecycle rules live in `tether_proto::ActionState`; this
//! module applies them to the store and the device link.

mod answers;
mod waiters;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::api::{Action, Event, RequestAction};
use tether_proto::catalogue::FieldError;
use tether_proto::redact::redacted;
use tether_proto::spec::ActionSet;
use tether_proto::{ActionEvent, ActionRequest, ActionState, Catalogue, DeviceId, InputError};

use crate::cluster::bus::{Bus, Channel, Heard, Subscription};
use crate::config::ActionsConfig;
use crate::device_link::{DeviceLink, LinkError};
use crate::observability::Observability;
use crate::sealing::Sealer;
use crate::store::{
    ActionBytes, ActionRecord, AnswerWrite, EventRecord, NewAction, Outcome, Store, StoreError,
};
use answers::AnswerWriter;
use waiters::Waiters;

/// Longest a caller-supplied correlation id may be.
const MAX_CORRELATION_ID: usize = 128;

/// A long-poll re-reads its action this often, so a lost announcement of its
/// end delays the answer by at most this much, not until the poll times out.
const WAIT_RECHECK: Duration = Duration::from_secs(3);

/// Devices delivered to together: their open actions are read in one query
/// and marked delivered in one statement, and their delivery locks are held
/// meanwhile, so a batch is a few hundred publishes between two writes.
const DELIVERY_BATCH: usize = 250;

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("device {0} not found")]
    DeviceNotFound(DeviceId),
    #[error("{0}")]
    UnknownAction(String),
    #[error("{message}")]
    InvalidInput {
        message: String,
        errors: Vec<FieldError>,
    },
    #[error(
        "action {action:?} is not enabled on device {device}; enable it with `tether devices actions enable {device} {action}` (PUT /api/v1/devices/{device}/action-set/{action}); nothing was sent"
    )]
    NotEnabled { device: DeviceId, action: String },
    #[error("an action with correlationId {0:?} already exists; use a new correlationId")]
    DuplicateCorrelationId(String),
    #[error("ttlSeconds must be between 1 and {max}; got {given}")]
    BadTtl { given: u64, max: u64 },
    #[error("timeoutSeconds must be between 1 and 86400; got {0}")]
    BadTimeout(u64),
    #[error("action {0} not found")]
    NotFound(String),
    #[error(
        "{0} is sent by tetherd itself when a tunnel opens; open one with `tether exec`, `tether forward-port` or `tether proxy` (GET /api/v1/devices/NAME/tunnel)"
    )]
    SentByTetherdOnly(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request that passed [`ActionService::check`].
#[derive(Debug, Clone)]
pub struct CheckedRequest {
    pub action: String,
    /// The full input, not yet redacted or sealed.
    pub input: serde_json::Value,
    pub ttl: chrono::Duration,
    pub timeout_seconds: u64,
}

/// What became of a device's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The action is finished with this answer.
    Recorded,
    /// The action had finished already: the answer is dropped.
    AlreadyFinished,
    /// No such action: dropped.
    Unknown,
    /// Another device's action: dropped.
    NotYours,
}

pub struct ActionService {
    store: Store,
    /// Records devices' answers in batches.
    answers: AnswerWriter,
    link: Arc<dyn DeviceLink>,
    catalogue: Arc<Catalogue>,
    sealer: Arc<Sealer>,
    config: ActionsConfig,
    observability: Arc<Observability>,
    /// Devices subscribed to their `actions` topic on this controller's link.
    ready: Mutex<HashSet<DeviceId>>,
    /// Serialises delivery per device, so actions reach it in `seq` order.
    delivery_locks: Mutex<HashMap<DeviceId, Arc<tokio::sync::Mutex<()>>>>,
    waiters: Waiters,
    /// Reaches the replicas holding other devices' sessions and waiting clients.
    bus: Bus,
    /// Bytes of each device's actions not yet written: the ingest writes
    /// them with the device's `lastSeen` (`take_bytes`), not a statement
    /// per action.
    unwritten_bytes: Mutex<HashMap<DeviceId, ActionBytes>>,
}

impl ActionService {
    pub fn new(
        store: Store,
        link: Arc<dyn DeviceLink>,
        catalogue: Arc<Catalogue>,
        sealer: Arc<Sealer>,
        config: ActionsConfig,
        observability: Arc<Observability>,
        bus: Bus,
    ) -> Self {
        Self {
            answers: AnswerWriter::spawn(store.clone()),
            store,
            link,
            catalogue,
            sealer,
            config,
            observability,
            ready: Mutex::default(),
            delivery_locks: Mutex::default(),
            waiters: Waiters::default(),
            bus,
            unwritten_bytes: Mutex::default(),
        }
    }

    /// Counts `sent` bytes of requests to `device` and `received` bytes of
    /// its answers.
    pub fn count_bytes(&self, device: &DeviceId, sent: usize, received: usize) {
        self.put_back_bytes(
            device,
            ActionBytes {
                sent: sent as u64,
                received: received as u64,
            },
        );
    }

    /// Adds `bytes` taken with [`ActionService::take_bytes`] back to what
    /// `device` has not written yet.
    pub fn put_back_bytes(&self, device: &DeviceId, bytes: ActionBytes) {
        let mut unwritten = self
            .unwritten_bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let counted = unwritten.entry(device.clone()).or_default();
        counted.sent += bytes.sent;
        counted.received += bytes.received;
    }

    /// The device's bytes counted since the last call: the caller writes
    /// them (and puts them back with `put_back_bytes` if it cannot).
    pub fn take_bytes(&self, device: &DeviceId) -> ActionBytes {
        self.unwritten_bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(device)
            .unwrap_or_default()
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The longest `ttlSeconds` a request may ask for.
    pub fn max_ttl(&self) -> std::time::Duration {
        self.config.max_ttl
    }

    /// An operator's request (the actions API): [`Self::submit`] for any
    /// action but those tetherd sends on its own behalf.
    pub async fn request(
        &self,
        device: &DeviceId,
        request: RequestAction,
    ) -> Result<Action, ActionError> {
        operator_may_request(&request.action)?;
        self.submit(device, request).await
    }

    /// Validates, stores and (if the device is online) delivers an action.
    /// Nothing is stored or sent when the request is refused.
    pub async fn submit(
        &self,
        device: &DeviceId,
        request: RequestAction,
    ) -> Result<Action, ActionError> {
        let CheckedRequest {
            action,
            input,
            ttl,
            timeout_seconds,
        } = self.check(request)?;
        let correlation_id = correlation_id(&input)?;
        if !self.action_set(device).await?.accepts(&action) {
            // A device that does not exist has no spec either.
            self.ensure_device(device).await?;
            return Err(ActionError::NotEnabled {
                device: device.clone(),
                action,
            });
        }
        let now = Utc::now();
        let new = NewAction {
            correlation_id: correlation_id.clone(),
            device: device.clone(),
            action,
            input: redacted(&input),
            sealed_input: self.sealer.seal(input.to_string().as_bytes()),
            created_at: now,
            expires_at: now + ttl,
            timeout_seconds,
        };
        // A device held elsewhere is told with the insert itself (on
        // PostgreSQL): one statement, and the replica holding it hears of
        // the action the moment it commits.
        let announcement = if self.is_ready(device) {
            None
        } else {
            self.bus.with_commit(Channel::DeviceOutbox, device.as_str())
        };
        let record = match self
            .store
            .insert_action_announced(&new, announcement.as_ref())
            .await
        {
            Err(StoreError::Conflict { .. }) => {
                return Err(ActionError::DuplicateCorrelationId(correlation_id));
            }
            // The device is a foreign key of its actions.
            Err(StoreError::NotFound { .. }) => {
                return Err(ActionError::DeviceNotFound(device.clone()));
            }
            other => other?,
        };
        tracing::info!(%device, action = %record.action, correlation_id = %record.correlation_id, input = %record.input, "action accepted");
        match announcement {
            None => self.offer(device).await,
            // Its session came here meanwhile (delivering twice is harmless).
            Some(_) if self.is_ready(device) => {
                self.deliver(std::slice::from_ref(device), false).await;
            }
            Some(_) => {}
        }
        if self.is_ready(device)
            && let Some(current) = self.store.get_action(&correlation_id).await?
        {
            return Ok(to_api(current));
        }
        Ok(to_api(record))
    }

    /// The actions `device` accepts, from its spec (ADR 0017). A device
    /// that does not exist has the defaults: see [`Self::ensure_device`].
    pub async fn action_set(&self, device: &DeviceId) -> Result<ActionSet, ActionError> {
        let record = self.store.get_spec(device).await?;
        ActionSet::of(&record.spec)
            .map_err(|error| StoreError::Corrupt(format!("device {device}'s spec: {error}")).into())
    }

    /// Ends the device's requests of `action` still waiting for it, once
    /// the action is disabled there: "refused from then on" holds for a
    /// device that was offline too. Delivered ones are the device's
    /// already. Returns how many were ended.
    pub async fn withdraw(&self, device: &DeviceId, action: &str) -> Result<usize, ActionError> {
        // The device's delivery lock: a batch being published meanwhile is
        // marked delivered first and left alone, never ended after it went.
        let lock = self
            .delivery_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(device.clone())
            .or_default()
            .clone();
        let _serialised = lock.lock_owned().await;
        let now = Utc::now();
        let mut withdrawn = 0;
        for open in self
            .store
            .open_actions(std::slice::from_ref(device))
            .await?
        {
            if open.action == action && open.state == ActionState::Pending {
                self.finish(
                    &open,
                    ActionState::Failed,
                    now,
                    &format!("{action} was disabled on this device before it was delivered"),
                )
                .await;
                withdrawn += 1;
            }
        }
        Ok(withdrawn)
    }

    /// Refuses an action name the catalogue does not have.
    pub fn ensure_known(&self, action: &str) -> Result<(), ActionError> {
        if self.catalogue.get(action).is_some() {
            return Ok(());
        }
        Err(ActionError::UnknownAction(
            InputError::UnknownAction {
                action: action.to_owned(),
                known: self.catalogue.names().join(", "),
            }
            .to_string(),
        ))
    }

    pub async fn ensure_device(&self, device: &DeviceId) -> Result<(), ActionError> {
        match self.store.get_device(device).await? {
            Some(_) => Ok(()),
            None => Err(ActionError::DeviceNotFound(device.clone())),
        }
    }

    /// The checks every action request gets before anything is stored: the
    /// input against the catalogue (`{}` when left out), the TTL and the
    /// timeout. A fleet-wide job makes them once for all its devices.
    pub fn check(&self, request: RequestAction) -> Result<CheckedRequest, ActionError> {
        let input = if request.input.is_null() {
            serde_json::json!({})
        } else {
            request.input
        };
        if let Err(error) = self.catalogue.validate(&request.action, &input) {
            let message = error.to_string();
            return Err(match error {
                InputError::UnknownAction { .. } => ActionError::UnknownAction(message),
                InputError::Invalid { errors, .. } => ActionError::InvalidInput { message, errors },
            });
        }
        let ttl = self.ttl(request.ttl_seconds)?;
        let timeout_seconds = match request.timeout_seconds {
            None => self.config.default_timeout.as_secs(),
            Some(t @ 1..=86_400) => t,
            Some(t) => return Err(ActionError::BadTimeout(t)),
        };
        Ok(CheckedRequest {
            action: request.action,
            input,
            ttl,
            timeout_seconds,
        })
    }

    /// Actions ended outside this service (a job's cancellation): wakes
    /// whoever waits for them, here and on the other replicas.
    pub fn ended(&self, records: &[ActionRecord]) {
        for record in records {
            self.completed(record);
        }
    }

    /// An action for this device became deliverable: delivers it here if
    /// this replica holds the device's session, else announces it to the
    /// replica that does.
    pub async fn offer(&self, device: &DeviceId) {
        self.offer_many(std::slice::from_ref(device)).await;
    }

    /// [`ActionService::offer`] for many devices at once (a fleet-wide job):
    /// the devices held elsewhere share a few announcements.
    pub async fn offer_many(&self, devices: &[DeviceId]) {
        let (here, elsewhere): (Vec<&DeviceId>, Vec<&DeviceId>) =
            devices.iter().partition(|device| self.is_ready(device));
        self.bus.publish(
            Channel::DeviceOutbox,
            elsewhere.into_iter().map(DeviceId::to_string),
        );
        let here: Vec<DeviceId> = here.into_iter().cloned().collect();
        self.deliver(&here, false).await;
    }

    /// The safety net for lost announcements: delivers the pending actions
    /// of every device whose session this replica holds. Returns how many
    /// actions it delivered.
    pub async fn deliver_pending(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut here = self.store.devices_with_pending_actions(now).await?;
        here.retain(|device| self.is_ready(device));
        Ok(self.deliver(&here, false).await)
    }

    /// Acts on what other replicas announce: delivers to the devices whose
    /// sessions are here, wakes the clients waiting here, and resyncs from
    /// the database when announcements may have been lost. Runs until the
    /// bus is gone.
    pub async fn follow(self: Arc<Self>, mut subscription: Subscription) {
        while let Some(heard) = subscription.next().await {
            match heard {
                Heard::Notice(notice) => match notice.channel {
                    Channel::DeviceOutbox => {
                        let here: Vec<DeviceId> = notice
                            .keys
                            .iter()
                            .filter_map(|key| DeviceId::new(key.as_str()).ok())
                            .filter(|device| self.is_ready(device))
                            .collect();
                        if !here.is_empty() {
                            let actions = self.clone();
                            tokio::spawn(async move {
                                actions.deliver(&here, false).await;
                            });
                        }
                    }
                    Channel::ActionFinished => {
                        let waited: Vec<String> = notice
                            .keys
                            .iter()
                            .filter(|id| self.waiters.is_waited(id))
                            .cloned()
                            .collect();
                        if !waited.is_empty() {
                            let actions = self.clone();
                            tokio::spawn(async move { actions.recheck_waiters(waited).await });
                        }
                    }
                    Channel::DisconnectDevice
                    | Channel::SessionMoved
                    | Channel::DeviceSpec
                    | Channel::LogsStored
                    | Channel::DeviceRebirth
                    | Channel::DeviceReload => {}
                },
                Heard::MayHaveMissed => {
                    let actions = self.clone();
                    tokio::spawn(async move {
                        actions.recheck_waiters(actions.waiters.waited()).await;
                        if let Err(error) = actions.deliver_pending(Utc::now()).await {
                            tracing::error!(error = %crate::error_chain(&error), "could not look for pending actions after missing notifications; the periodic sweep tries again");
                        }
                    });
                }
            }
        }
    }

    /// Wakes the local waiters of those of these actions that are finished.
    async fn recheck_waiters(&self, correlation_ids: Vec<String>) {
        for id in correlation_ids {
            match self.store.get_action(&id).await {
                Ok(Some(record)) if record.state.is_terminal() => self.waiters.completed(&record),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(correlation_id = %id, error = %crate::error_chain(&error), "could not read a finished action for its waiting clients; they re-read it shortly");
                }
            }
        }
    }

    pub async fn get(&self, correlation_id: &str) -> Result<Action, ActionError> {
        self.store
            .get_action(correlation_id)
            .await?
            .map(to_api)
            .ok_or_else(|| ActionError::NotFound(correlation_id.to_owned()))
    }

    /// The action once it is terminal, or as it is after `timeout`.
    pub async fn wait(
        &self,
        correlation_id: &str,
        timeout: Duration,
    ) -> Result<Action, ActionError> {
        let mut waiter = self.waiters.subscribe(correlation_id);
        let current = self.get(correlation_id).await?;
        if current.state.is_terminal() {
            return Ok(current);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let recheck = (tokio::time::Instant::now() + WAIT_RECHECK).min(deadline);
            match tokio::time::timeout_at(recheck, waiter.changed()).await {
                Ok(Some(record)) => return Ok(to_api(record)),
                Ok(None) => {}
                // Timed out: answer with the action as it is now.
                Err(_) if recheck >= deadline => return self.get(correlation_id).await,
                // The announcement of its end may have been lost.
                Err(_) => {
                    let current = self.get(correlation_id).await?;
                    if current.state.is_terminal() {
                        return Ok(current);
                    }
                }
            }
        }
    }

    /// The device's actions, newest first: at most `limit`, accepted before
    /// `before_seq` if given.
    pub async fn list(
        &self,
        device: &DeviceId,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ActionRecord>, ActionError> {
        if self.store.get_device(device).await?.is_none() {
            return Err(ActionError::DeviceNotFound(device.clone()));
        }
        Ok(self
            .store
            .list_actions_before(device, before_seq, limit)
            .await?)
    }

    /// The device subscribed to its actions: deliver everything still open,
    /// including actions delivered to an earlier session that never answered
    /// (the agent answers those from its record instead of running them twice).
    pub async fn device_ready(&self, device: &DeviceId) {
        self.lock_ready().insert(device.clone());
        self.deliver(std::slice::from_ref(device), true).await;
    }

    pub fn device_gone(&self, device: &DeviceId) {
        self.lock_ready().remove(device);
    }

    /// The device's session here is superseded by a newer one on another
    /// replica: nothing more is delivered into it, and it is closed.
    pub fn close_superseded(&self, device: &DeviceId) {
        self.device_gone(device);
        if self.link.is_connected(device) {
            tracing::info!(%device, "closing a session the device replaced with one on another replica");
            self.link.disconnect(device);
        }
    }

    /// How many device sessions on this replica can take actions now.
    pub fn ready_count(&self) -> usize {
        self.lock_ready().len()
    }

    fn is_ready(&self, device: &DeviceId) -> bool {
        self.lock_ready().contains(device)
    }

    /// Sends each device's open actions in `seq` order (with `redeliver`,
    /// the `delivered` ones again too); returns how many pending ones it
    /// delivered.
    async fn deliver(&self, devices: &[DeviceId], redeliver: bool) -> usize {
        let mut delivered = 0;
        for batch in devices.chunks(DELIVERY_BATCH) {
            delivered += self.deliver_batch(batch, redeliver).await;
        }
        delivered
    }

    async fn deliver_batch(&self, devices: &[DeviceId], redeliver: bool) -> usize {
        let mut devices = devices.to_vec();
        devices.sort();
        devices.dedup();
        // Taken in name order, so two batches sharing devices never wait on
        // each other; held until the batch is marked delivered, so a sweep
        // or an announcement meanwhile finds it delivered, not pending.
        let locks: Vec<_> = {
            let mut locks = self
                .delivery_locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            devices
                .iter()
                .map(|device| locks.entry(device.clone()).or_default().clone())
                .collect()
        };
        let mut _serialised = Vec::with_capacity(locks.len());
        for lock in locks {
            _serialised.push(lock.lock_owned().await);
        }
        let open = match self.store.open_actions(&devices).await {
            Ok(open) => open,
            Err(error) => {
                tracing::error!(devices = devices.len(), error = %crate::error_chain(&error), "could not read open actions; they will be delivered at the next reconnect or outbox sweep");
                return 0;
            }
        };
        let now = Utc::now();
        let mut published = Vec::new();
        // A device the link refused gets none of its later actions now, so
        // they still arrive in `seq` order when it is back.
        let mut refused: Option<DeviceId> = None;
        for action in open {
            let device = &action.device;
            if refused.as_ref() == Some(device) {
                continue;
            }
            if action.state == ActionState::Delivered && !redeliver {
                continue;
            }
            if action.state == ActionState::Pending && action.expires_at <= now {
                self.expire(&action, now).await;
                continue;
            }
            let Some(input) = self.unseal(&action) else {
                self.finish(
                    &action,
                    ActionState::Failed,
                    now,
                    "the stored input could not be opened; request the action again",
                )
                .await;
                continue;
            };
            let request = ActionRequest {
                correlation_id: action.correlation_id.clone(),
                action: action.action.clone(),
                input,
                expires_at: action.expires_at,
                expires_in_ms: None,
                sent_at: None,
            };
            match self.link.publish_action(device, &request).await {
                Ok(bytes) => self.count_bytes(device, bytes, 0),
                Err(LinkError::NotConnected(_)) => {
                    self.device_gone(device);
                    refused = Some(device.clone());
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%device, error = %crate::error_chain(&error), "could not deliver an action; it stays open");
                    refused = Some(device.clone());
                    continue;
                }
            }
            tracing::debug!(%device, correlation_id = %action.correlation_id, "action delivered");
            if action.state == ActionState::Pending {
                published.push(action.correlation_id);
            }
        }
        // Marked only after the link took each publish, in one statement for
        // the batch. A crash before this line leaves them `pending`, never
        // `delivered` unsent: the device's next session gets them again and
        // the agent answers a repeat from its record instead of running it
        // twice. Marking first would instead leave an action the link
        // refused `delivered`, waiting out its timeout for an answer that
        // cannot come. An answer that arrives before the mark finishes the
        // action from `pending`, and the mark then leaves it alone.
        if !published.is_empty()
            && let Err(error) = self.store.mark_delivered(&published, Utc::now()).await
        {
            tracing::error!(actions = published.len(), error = %crate::error_chain(&error), "could not mark actions delivered; the outbox sweep sends them again and the agent answers repeats from its record");
        }
        published.len()
    }

    fn unseal(&self, action: &ActionRecord) -> Option<serde_json::Value> {
        let sealed = action.sealed_input.as_deref()?;
        let plain = self.sealer.open(sealed).ok()?;
        serde_json::from_slice(&plain).ok()
    }

    /// Records a device's answer. An answer for another device's action is
    /// refused: a device can never act for another. An answer for no known
    /// action, or for one already finished (a repeat, or late), is dropped,
    /// so a device cannot fill the database with them.
    ///
    /// The action's end and the answer's event are written together, with
    /// the other answers waiting (`answers`): when that fails, neither is
    /// stored, the device's publish is not acknowledged and it sends the
    /// answer again.
    pub async fn handle_event(
        &self,
        device: &DeviceId,
        event: ActionEvent,
    ) -> Result<Answer, StoreError> {
        let now = Utc::now();
        let to = ActionState::from_status_code(event.status_code);
        let outcome = Outcome {
            at: now,
            status_code: Some(event.status_code),
            status_message: Some(event.status_message.clone()),
            response: Some(event.response.clone()),
        };
        let correlation_id = event.correlation_id;
        let record = EventRecord {
            id: uuid::Uuid::now_v7().to_string(),
            device: device.clone(),
            correlation_id: Some(correlation_id.clone()),
            event: event.event,
            status_code: event.status_code,
            status_message: event.status_message,
            response: event.response,
            received_at: now,
        };
        // Waiting clients on other replicas hear of it as it commits.
        let announcement = self
            .bus
            .with_commit(Channel::ActionFinished, &correlation_id);
        if let Some(updated) = self
            .answers
            .record(AnswerWrite {
                device: device.clone(),
                correlation_id: correlation_id.clone(),
                to,
                outcome,
                event: record,
                announcement: announcement.clone(),
            })
            .await?
        {
            tracing::info!(%device, correlation_id = %updated.correlation_id, state = %updated.state, status_code = updated.status_code, "action completed");
            self.observability.action_finished(updated.state);
            match announcement {
                // Announced by the statement (never a job's action).
                Some(_) if updated.job_id.is_none() => self.waiters.completed(&updated),
                _ => self.completed(&updated),
            }
            return Ok(Answer::Recorded);
        }
        // Nothing was written; read why, only for answers that are dropped.
        match self.store.get_action(&correlation_id).await? {
            None => {
                tracing::warn!(%device, %correlation_id, "answer for an unknown action; dropped");
                Ok(Answer::Unknown)
            }
            Some(action) if &action.device != device => {
                tracing::warn!(%device, owner = %action.device, %correlation_id, "a device answered another device's action; dropped");
                Ok(Answer::NotYours)
            }
            Some(action) if action.state.is_terminal() => {
                tracing::info!(%device, %correlation_id, state = %action.state, "answer for a finished action; dropped");
                Ok(Answer::AlreadyFinished)
            }
            Some(action) => {
                tracing::warn!(%device, %correlation_id, state = %action.state, "answer for an action not yet delivered; dropped");
                Ok(Answer::Unknown)
            }
        }
    }

    /// The device answered its open action, but tetherd refused the answer
    /// (over a size limit): the action fails with the reason at once, rather
    /// than waiting for its timeout with the operator none the wiser.
    pub async fn answer_refused(&self, device: &DeviceId, correlation_id: &str, reason: &str) {
        let action = match self.store.get_action(correlation_id).await {
            Ok(Some(action)) if &action.device == device && !action.state.is_terminal() => action,
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%device, correlation_id, error = %crate::error_chain(&error), "could not read the action of a refused answer");
                return;
            }
        };
        let message = format!("the device's answer was refused: {reason}");
        self.finish(&action, ActionState::Failed, Utc::now(), &message)
            .await;
    }

    /// Expires undelivered actions past their TTL and times out delivered
    /// ones past their deadline.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        for action in self.store.expired_pending_actions(now).await? {
            self.expire(&action, now).await;
        }
        for action in self.store.overdue_delivered_actions(now).await? {
            let message = format!(
                "no answer from the device within {} s of delivery",
                action.timeout_seconds
            );
            self.finish(&action, ActionState::TimedOut, now, &message)
                .await;
        }
        Ok(())
    }

    async fn expire(&self, action: &ActionRecord, now: DateTime<Utc>) {
        let ttl = (action.expires_at - action.created_at).num_seconds();
        let message = if action.state == ActionState::Queued {
            format!(
                "not released within its TTL of {ttl} s: the device stayed offline, or the job's concurrency or rate limit did not reach it"
            )
        } else {
            format!("not delivered within its TTL of {ttl} s: the device stayed offline")
        };
        self.finish(action, ActionState::Expired, now, &message)
            .await;
    }

    async fn finish(
        &self,
        action: &ActionRecord,
        to: ActionState,
        now: DateTime<Utc>,
        message: &str,
    ) {
        let outcome = Outcome {
            at: now,
            status_code: None,
            status_message: Some(message.to_owned()),
            response: None,
        };
        match self
            .store
            .transition_action(&action.correlation_id, &[action.state], to, &outcome)
            .await
        {
            Ok(Some(updated)) => {
                tracing::info!(device = %updated.device, correlation_id = %updated.correlation_id, state = %to, reason = message, "action ended without an answer");
                self.observability.action_finished(to);
                self.completed(&updated);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(correlation_id = %action.correlation_id, error = %crate::error_chain(&error), "could not end an action");
            }
        }
    }

    /// The action is finished (committed): wakes the clients waiting here
    /// and announces it to those waiting on other replicas.
    fn completed(&self, record: &ActionRecord) {
        self.waiters.completed(record);
        self.bus
            .publish(Channel::ActionFinished, [record.correlation_id.as_str()]);
    }

    fn ttl(&self, requested: Option<u64>) -> Result<chrono::Duration, ActionError> {
        let max = self.config.max_ttl.as_secs();
        let seconds = match requested {
            None => self.config.default_ttl.as_secs(),
            Some(given) if given == 0 || given > max => {
                return Err(ActionError::BadTtl { given, max });
            }
            Some(given) => given,
        };
        Ok(chrono::Duration::seconds(seconds as i64))
    }

    fn lock_ready(&self) -> std::sync::MutexGuard<'_, HashSet<DeviceId>> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The caller may pick the correlation id (seed 000 puts it in the input);
/// a repeated one is refused with 409, so a retried request never runs an
/// action twice. Otherwise tetherd makes one.
/// Refuses the actions only tetherd sends: `open-tunnel` names a URL and
/// a token the device trusts as tetherd's, which no operator should
/// choose (a tunnel is opened through its own route, and audited there).
pub fn operator_may_request(action: &str) -> Result<(), ActionError> {
    if action == tether_proto::tunnel::OPEN_TUNNEL {
        return Err(ActionError::SentByTetherdOnly(action.to_owned()));
    }
    Ok(())
}

fn correlation_id(input: &serde_json::Value) -> Result<String, ActionError> {
    match input.get("correlationId").and_then(|v| v.as_str()) {
        Some(id)
            if id.is_empty()
                || id.len() > MAX_CORRELATION_ID
                || id.chars().any(char::is_control) =>
        {
            Err(ActionError::InvalidInput {
                message: format!(
                    "invalid input: $.correlationId: must be 1 to {MAX_CORRELATION_ID} printable characters"
                ),
                errors: vec![FieldError {
                    path: "$.correlationId".to_owned(),
                    message: format!("must be 1 to {MAX_CORRELATION_ID} printable characters"),
                }],
            })
        }
        Some(id) => Ok(id.to_owned()),
        None => Ok(uuid::Uuid::now_v7().to_string()),
    }
}

pub fn to_api(record: ActionRecord) -> Action {
    Action {
        correlation_id: record.correlation_id,
        device: record.device.to_string(),
        action: record.action,
        input: record.input,
        state: record.state,
        status_code: record.status_code,
        status_message: record.status_message,
        response: record.response,
        created_at: record.created_at,
        delivered_at: record.delivered_at,
        completed_at: record.completed_at,
        expires_at: record.expires_at,
        timeout_seconds: record.timeout_seconds,
        job_id: record.job_id,
    }
}

pub fn event_to_api(record: EventRecord) -> Event {
    Event {
        id: record.id,
        device: record.device.to_string(),
        correlation_id: record.correlation_id,
        event: record.event,
        status_code: record.status_code,
        status_message: record.status_message,
        response: record.response,
        received_at: record.received_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_link::BoxFuture;
    use serde_json::json;

    /// A link on which every device is connected; it records what it sends.
    /// With `stall_after`, the publishes after that many never return, as
    /// if the process died there.
    #[derive(Default)]
    struct RecordingLink {
        sent: Mutex<Vec<(DeviceId, String)>>,
        stall_after: Option<usize>,
    }

    impl DeviceLink for RecordingLink {
        fn publish_action<'a>(
            &'a self,
            device: &'a DeviceId,
            request: &'a ActionRequest,
        ) -> BoxFuture<'a, Result<usize, LinkError>> {
            let mut sent = self.sent.lock().expect("not poisoned");
            if self.stall_after.is_some_and(|limit| sent.len() >= limit) {
                return Box::pin(std::future::pending());
            }
            sent.push((device.clone(), request.correlation_id.clone()));
            Box::pin(async { Ok(100) })
        }

        fn publish_message<'a>(
            &'a self,
            _device: &'a DeviceId,
            _message: crate::device_link::ServerMessage<'a>,
        ) -> BoxFuture<'a, Result<(), LinkError>> {
            Box::pin(async { Ok(()) })
        }

        fn is_connected(&self, _device: &DeviceId) -> bool {
            true
        }

        fn disconnect(&self, _device: &DeviceId) {}
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        link: Arc<RecordingLink>,
        bus: Bus,
        actions: Arc<ActionService>,
    }

    async fn fixture(devices: &[&str]) -> Fixture {
        fixture_with(devices, RecordingLink::default()).await
    }

    async fn fixture_with(devices: &[&str], link: RecordingLink) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::connect("sqlite::memory:").await.expect("store");
        for name in devices {
            store
                .create_device(&device(name), &Default::default(), Utc::now())
                .await
                .expect("device");
        }
        let link = Arc::new(link);
        let bus = Bus::in_process();
        let actions = restarted(&store, dir.path(), link.clone(), &bus);
        Fixture {
            _dir: dir,
            store,
            link,
            bus,
            actions,
        }
    }

    /// A service over an existing store, as a restarted controller has.
    fn restarted(
        store: &Store,
        dir: &std::path::Path,
        link: Arc<RecordingLink>,
        bus: &Bus,
    ) -> Arc<ActionService> {
        Arc::new(ActionService::new(
            store.clone(),
            link,
            Arc::new(Catalogue::builtin()),
            Arc::new(Sealer::load_or_create(dir).expect("sealer")),
            ActionsConfig::default(),
            Arc::default(),
            bus.clone(),
        ))
    }

    fn device(name: &str) -> DeviceId {
        DeviceId::new(name).expect("valid name")
    }

    /// Stores a pending action without offering it, as if its announcement
    /// had been lost.
    async fn stored_silently(fixture: &Fixture, device: &DeviceId, correlation_id: &str) {
        let now = Utc::now();
        fixture
            .store
            .insert_action(&NewAction {
                correlation_id: correlation_id.into(),
                device: device.clone(),
                action: "get-node-ip".into(),
                input: json!({}),
                sealed_input: fixture.actions.sealer.seal(b"{}"),
                created_at: now,
                expires_at: now + chrono::Duration::minutes(1),
                timeout_seconds: 60,
            })
            .await
            .expect("action");
    }

    fn sent(fixture: &Fixture) -> Vec<(DeviceId, String)> {
        fixture.link.sent.lock().expect("not poisoned").clone()
    }

    #[tokio::test]
    async fn the_outbox_sweep_delivers_what_no_announcement_reached() {
        let fixture = fixture(&["here", "elsewhere"]).await;
        let (here, elsewhere) = (device("here"), device("elsewhere"));
        fixture.actions.device_ready(&here).await;
        stored_silently(&fixture, &here, "lost-1").await;
        stored_silently(&fixture, &here, "lost-2").await;
        stored_silently(&fixture, &elsewhere, "not-mine").await;

        let delivered = fixture.actions.deliver_pending(Utc::now()).await;
        assert_eq!(delivered.expect("swept"), 2);
        assert_eq!(
            sent(&fixture),
            [(here.clone(), "lost-1".into()), (here, "lost-2".into())],
            "in seq order, and only to the device whose session is here"
        );
        let again = fixture.actions.deliver_pending(Utc::now()).await;
        assert_eq!(
            again.expect("swept"),
            0,
            "delivered actions are not sent again"
        );
    }

    #[tokio::test]
    async fn offers_deliver_here_and_announce_the_rest_in_one_notice() {
        let fixture = fixture(&["here", "b", "c"]).await;
        let here = device("here");
        fixture.actions.device_ready(&here).await;
        let mut heard = fixture.bus.subscribe();
        for name in ["here", "b", "c"] {
            stored_silently(&fixture, &device(name), &format!("{name}-1")).await;
        }

        fixture
            .actions
            .offer_many(&[device("b"), here.clone(), device("c")])
            .await;
        assert_eq!(sent(&fixture), [(here, "here-1".into())]);
        let Some(Heard::Notice(notice)) = heard.next().await else {
            panic!("expected an announcement");
        };
        assert_eq!(notice.channel, Channel::DeviceOutbox);
        assert_eq!(notice.keys, ["b", "c"]);
    }

    /// `count` devices, each ready here with one pending action `<name>-1`.
    async fn ready_with_one_action_each(fixture: &Fixture, count: usize) -> Vec<DeviceId> {
        let mut devices = Vec::new();
        for i in 0..count {
            let name = device(&format!("edge-{i:04}"));
            fixture
                .store
                .create_device(&name, &Default::default(), Utc::now())
                .await
                .expect("device");
            stored_silently(fixture, &name, &format!("{name}-1")).await;
            fixture.actions.lock_ready().insert(name.clone());
            devices.push(name);
        }
        devices
    }

    async fn states(fixture: &Fixture, devices: &[DeviceId]) -> HashMap<ActionState, usize> {
        let mut states = HashMap::new();
        for action in fixture.store.open_actions(devices).await.expect("open") {
            *states.entry(action.state).or_default() += 1;
        }
        states
    }

    #[tokio::test]
    async fn a_released_batch_is_marked_delivered_once_and_a_new_session_gets_it_again() {
        let fixture = fixture(&[]).await;
        // More than one delivery batch.
        let devices = ready_with_one_action_each(&fixture, DELIVERY_BATCH + 10).await;

        fixture.actions.offer_many(&devices).await;
        let sent = sent(&fixture);
        assert_eq!(sent.len(), devices.len());
        let distinct: HashSet<_> = sent.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(distinct.len(), devices.len(), "each sent once");
        assert_eq!(
            states(&fixture, &devices).await,
            HashMap::from([(ActionState::Delivered, devices.len())])
        );
        assert_eq!(
            fixture
                .actions
                .deliver_pending(Utc::now())
                .await
                .expect("swept"),
            0,
            "nothing left pending for the sweep to send again"
        );

        // A new session (here: of a restarted controller) gets what it did
        // not answer again; the agent answers that from its record.
        let link = Arc::new(RecordingLink::default());
        let after_restart = restarted(
            &fixture.store,
            fixture._dir.path(),
            link.clone(),
            &fixture.bus,
        );
        after_restart.device_ready(&devices[7]).await;
        let resent = link.sent.lock().expect("not poisoned").clone();
        assert_eq!(resent, [(devices[7].clone(), format!("{}-1", devices[7]))]);
    }

    #[tokio::test]
    async fn a_crash_before_the_batch_is_marked_leaves_it_pending_and_it_is_delivered_again() {
        let link = RecordingLink {
            stall_after: Some(40),
            ..RecordingLink::default()
        };
        let fixture = fixture_with(&[], link).await;
        let devices = ready_with_one_action_each(&fixture, 100).await;

        let actions = fixture.actions.clone();
        let offers = devices.clone();
        let delivery = tokio::spawn(async move { actions.offer_many(&offers).await });
        while sent(&fixture).len() < 40 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The process dies with 40 publishes handed to the link.
        delivery.abort();
        let _ = delivery.await;
        assert_eq!(
            states(&fixture, &devices).await,
            HashMap::from([(ActionState::Pending, devices.len())]),
            "none is delivered whose mark was not written"
        );

        let link = Arc::new(RecordingLink::default());
        let after_restart = restarted(
            &fixture.store,
            fixture._dir.path(),
            link.clone(),
            &fixture.bus,
        );
        for device in &devices {
            after_restart.device_ready(device).await;
        }
        assert_eq!(link.sent.lock().expect("not poisoned").len(), devices.len());
        assert_eq!(
            states(&fixture, &devices).await,
            HashMap::from([(ActionState::Delivered, devices.len())])
        );
    }

    fn answer(correlation_id: &str, status_code: u16) -> ActionEvent {
        ActionEvent {
            correlation_id: correlation_id.into(),
            event: "get-node-ip".into(),
            status_code,
            status_message: "done".into(),
            response: json!({"ip": "10.0.0.7"}),
        }
    }

    #[tokio::test]
    async fn an_answer_is_recorded_once_and_every_other_is_dropped() {
        let fixture = fixture(&["edge-1", "edge-2"]).await;
        let (edge, other) = (device("edge-1"), device("edge-2"));
        fixture.actions.device_ready(&edge).await;
        stored_silently(&fixture, &edge, "a-1").await;
        fixture.actions.offer(&edge).await;

        let answered = fixture
            .actions
            .handle_event(&other, answer("a-1", 200))
            .await;
        assert_eq!(answered.expect("handled"), Answer::NotYours);
        let answered = fixture
            .actions
            .handle_event(&edge, answer("nope", 200))
            .await;
        assert_eq!(answered.expect("handled"), Answer::Unknown);
        let answered = fixture
            .actions
            .handle_event(&edge, answer("a-1", 200))
            .await;
        assert_eq!(answered.expect("handled"), Answer::Recorded);
        let answered = fixture
            .actions
            .handle_event(&edge, answer("a-1", 500))
            .await;
        assert_eq!(
            answered.expect("handled"),
            Answer::AlreadyFinished,
            "a repeat, even with another result, is a duplicate"
        );

        let action = fixture
            .store
            .get_action("a-1")
            .await
            .expect("read")
            .expect("a-1");
        assert_eq!(action.state, ActionState::Succeeded);
        assert_eq!(action.response, Some(json!({"ip": "10.0.0.7"})));
        let events = fixture.store.list_events(&edge, 10).await.expect("events");
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].correlation_id.as_deref(), Some("a-1"));
        assert!(
            fixture
                .store
                .list_events(&other, 10)
                .await
                .expect("events")
                .is_empty()
        );
    }

    /// Finishes the action in the database only, as another replica does.
    async fn finished_elsewhere(fixture: &Fixture, correlation_id: &str) {
        let outcome = Outcome {
            at: Utc::now(),
            status_code: Some(200),
            status_message: Some("OK".into()),
            response: Some(json!({})),
        };
        fixture
            .store
            .transition_action(
                correlation_id,
                &[ActionState::Pending],
                ActionState::Succeeded,
                &outcome,
            )
            .await
            .expect("finished")
            .expect("was pending");
    }

    /// Starts a long-poll and returns once it waits.
    async fn long_poll(
        fixture: &Fixture,
        correlation_id: &'static str,
    ) -> tokio::task::JoinHandle<(Result<Action, ActionError>, std::time::Instant)> {
        let actions = fixture.actions.clone();
        let poll = tokio::spawn(async move {
            let result = actions.wait(correlation_id, Duration::from_secs(30)).await;
            (result, std::time::Instant::now())
        });
        while !fixture.actions.waiters.is_waited(correlation_id) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        poll
    }

    #[tokio::test]
    async fn an_announced_end_wakes_the_long_poll_here() {
        let fixture = fixture(&["edge-1"]).await;
        tokio::spawn(fixture.actions.clone().follow(fixture.bus.subscribe()));
        stored_silently(&fixture, &device("edge-1"), "a-1").await;
        let poll = long_poll(&fixture, "a-1").await;

        finished_elsewhere(&fixture, "a-1").await;
        let announced = std::time::Instant::now();
        fixture.bus.publish(Channel::ActionFinished, ["a-1"]);
        let (result, returned) = poll.await.expect("joined");
        assert_eq!(result.expect("read").state, ActionState::Succeeded);
        let after = returned - announced;
        assert!(
            after < WAIT_RECHECK / 2,
            "woken {after:?} after the announcement"
        );
    }

    #[tokio::test]
    async fn a_long_poll_whose_announcement_is_lost_rereads_its_action() {
        let fixture = fixture(&["edge-1"]).await;
        stored_silently(&fixture, &device("edge-1"), "a-1").await;
        let started = std::time::Instant::now();
        let poll = long_poll(&fixture, "a-1").await;

        finished_elsewhere(&fixture, "a-1").await;
        let (result, returned) = poll.await.expect("joined");
        assert_eq!(result.expect("read").state, ActionState::Succeeded);
        let waited = returned - started;
        assert!(
            waited <= WAIT_RECHECK + Duration::from_secs(2),
            "found after {waited:?}, not at the next re-read"
        );
    }

    #[tokio::test]
    async fn a_finished_action_is_announced() {
        let fixture = fixture(&["edge-1"]).await;
        let edge = device("edge-1");
        stored_silently(&fixture, &edge, "a-1").await;
        let mut heard = fixture.bus.subscribe();
        fixture
            .actions
            .sweep(Utc::now() + chrono::Duration::minutes(2))
            .await
            .expect("swept");
        let Some(Heard::Notice(notice)) = heard.next().await else {
            panic!("expected an announcement");
        };
        assert_eq!(notice.channel, Channel::ActionFinished);
        assert_eq!(notice.keys, ["a-1"]);
    }

    #[test]
    fn caller_correlation_ids_are_checked() {
        assert_eq!(
            correlation_id(&json!({"correlationId": "abc"})).expect("valid"),
            "abc"
        );
        assert!(correlation_id(&json!({"correlationId": ""})).is_err());
        assert!(correlation_id(&json!({"correlationId": "a\nb"})).is_err());
        assert!(correlation_id(&json!({"correlationId": "x".repeat(129)})).is_err());
        let generated = correlation_id(&json!({})).expect("generated");
        assert_eq!(generated.len(), 36);
    }
}
