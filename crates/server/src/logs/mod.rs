//! Logs for the operator: the archive, read in pages with filters, and live
//! following from the moment asked, whichever replica the follower and the
//! device are on.
//!
//! Following rides on what stores the lines: the replica that stores a
//! device's batch announces it on [`Channel::LogsStored`] after the commit;
//! a replica with a follower of that device reads the lines stored after
//! the last it sent (by their per-device number, `pos`, not their time: a
//! spool replayed after an outage brings old times late). A periodic read
//! covers a lost announcement. While a device is followed, tetherd keeps a
//! `follow-logs` action running on it (when its agent has one): the agent
//! then reads its system log even if nothing is configured, and sends at
//! once instead of every second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::DeviceId;
use tether_proto::api::RequestAction;
use tether_proto::telemetry::LogRecord;
use tokio::sync::mpsc;

use crate::actions::ActionService;
use crate::cluster::bus::{Bus, Channel, Heard};
use crate::per_caller::{PerCaller, Place};
use crate::store::{LogLine, LogPosition, LogScan, Store, StoreError};

/// The agent action that makes a device send its system log live.
pub const FOLLOW_ACTION: &str = "follow-logs";
/// How long one `follow-logs` lasts on the device…
const FOLLOW_SECONDS: u64 = 30;
/// …and how often tetherd renews it while someone follows.
const FOLLOW_RENEW: Duration = Duration::from_secs(10);
/// Devices one follower may follow: each is a `follow-logs` action every
/// [`FOLLOW_RENEW`] and a read per stored batch.
pub const MAX_FOLLOWED_DEVICES: usize = 100;
/// Devices one archive read may cover.
pub const MAX_ARCHIVE_DEVICES: usize = 1000;
/// Rows read per statement, and at most per page request: a `grep` that
/// matches little returns a short page (with a continue token) rather
/// than scanning the whole archive in one request.
const SCAN_CHUNK: u32 = 2000;
const SCAN_BUDGET: usize = 20_000;
/// A follower reads its devices' new lines this often even without an
/// announcement (a lost `NOTIFY`), and sends an empty batch (a keepalive)
/// when nothing else went for [`KEEPALIVE`].
const SAFETY_READ: Duration = Duration::from_secs(2);
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Lines read per device per statement while following.
const FOLLOW_CHUNK: u32 = 1000;

/// Which lines an operator wants, beyond devices and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    /// This priority and more severe (0 emergency … 7 debug; 7 is all).
    pub max_priority: u8,
    /// Only these units; none means all.
    pub units: Vec<String>,
    /// Only lines whose message contains this text (case-sensitive).
    pub grep: Option<String>,
}

impl Default for LogFilter {
    fn default() -> Self {
        Self {
            max_priority: 7,
            units: Vec::new(),
            grep: None,
        }
    }
}

impl LogFilter {
    pub fn matches(&self, record: &LogRecord) -> bool {
        record.priority <= self.max_priority
            && (self.units.is_empty() || self.units.contains(&record.unit))
            && self
                .grep
                .as_deref()
                .is_none_or(|text| record.message.contains(text))
    }
}

/// A moment given as seconds before `now` (`60`), a duration before `now`
/// (`90s`, `15m`, `1h`, `7d`) or RFC 3339 (`2026-12-02T06:00:00Z`).
pub fn parse_moment(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let seconds_per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    let ago = number
        .parse::<i64>()
        .ok()
        .filter(|_| seconds_per > 0)
        .and_then(|n| n.checked_mul(seconds_per))
        .and_then(chrono::TimeDelta::try_seconds)
        .ok_or_else(|| {
            format!(
                "{text:?} is not a time: give seconds ago (60), a duration ago (90s, 15m, 1h, 7d) or RFC 3339 (2026-12-02T06:00:00Z)"
            )
        })?;
    now.checked_sub_signed(ago)
        .ok_or_else(|| format!("{text:?} reaches before the calendar's start"))
}

/// One page of the archive: the lines, and where the next page starts if
/// there may be more.
#[derive(Debug, Default)]
pub struct ArchivePage {
    pub lines: Vec<LogLine>,
    pub next: Option<LogPosition>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("{since} is not before {until}: `since` must be earlier than `until`")]
    EmptyWindow {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    #[error(
        "the selector picks more than {max} devices; narrow it (logs are read for at most {max} devices at once)"
    )]
    TooManyDevices { max: usize },
    #[error(
        "{user} already follows logs {limit} times at once, the most one user or API key may (api.max_follows_per_user); close a log view or another follow first"
    )]
    TooManyFollows { user: String, limit: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Logs {
    store: Store,
    bus: Bus,
    actions: Arc<ActionService>,
    /// Log follows held, by user or API key. Each reads its devices every
    /// 2 s and asks them to send live, so one caller may hold only
    /// `api.max_follows_per_user`.
    follows: PerCaller,
}

impl Logs {
    pub fn new(
        store: Store,
        bus: Bus,
        actions: Arc<ActionService>,
        max_follows_per_user: u32,
    ) -> Self {
        Self {
            store,
            bus,
            actions,
            follows: PerCaller::new(max_follows_per_user),
        }
    }

    /// A place among `user`'s log follows, or the refusal once they hold
    /// the most they may.
    fn take_place(&self, user: &str) -> Result<Place, LogsError> {
        self.follows
            .take(user)
            .ok_or_else(|| LogsError::TooManyFollows {
                user: user.to_owned(),
                limit: self.follows.limit(),
            })
    }

    /// Up to `limit` lines of `devices` in `[since, until)` that pass
    /// `filter`, oldest first, after `after`. A page may be short (a
    /// `grep` that matches little): `next` says whether to read on.
    pub async fn archive(
        &self,
        devices: &[DeviceId],
        (since, until): (DateTime<Utc>, DateTime<Utc>),
        filter: &LogFilter,
        mut after: Option<LogPosition>,
        limit: usize,
    ) -> Result<ArchivePage, LogsError> {
        if since >= until {
            return Err(LogsError::EmptyWindow { since, until });
        }
        if devices.len() > MAX_ARCHIVE_DEVICES {
            return Err(LogsError::TooManyDevices {
                max: MAX_ARCHIVE_DEVICES,
            });
        }
        let scan = LogScan {
            devices,
            since,
            until,
            max_priority: filter.max_priority,
            units: &filter.units,
        };
        let mut page = ArchivePage::default();
        let mut scanned = 0;
        loop {
            let rows = self
                .store
                .scan_logs(&scan, after.as_ref(), SCAN_CHUNK)
                .await?;
            let exhausted = rows.len() < SCAN_CHUNK as usize;
            for line in rows {
                scanned += 1;
                after = Some(position(&line));
                if filter.matches(&line.record) {
                    page.lines.push(line);
                    if page.lines.len() == limit {
                        // The next page starts after this line; it may be empty.
                        page.next = after;
                        return Ok(page);
                    }
                }
            }
            if exhausted {
                return Ok(page);
            }
            if scanned >= SCAN_BUDGET {
                page.next = after;
                return Ok(page);
            }
        }
    }

    /// Follows `devices` from now: batches of new lines that pass `filter`,
    /// in the order each device's lines were stored, until the receiver is
    /// dropped. An empty batch is a keepalive.
    pub async fn follow(
        self: &Arc<Self>,
        user: &str,
        devices: Vec<DeviceId>,
        filter: LogFilter,
    ) -> Result<mpsc::Receiver<Result<Vec<LogLine>, StoreError>>, LogsError> {
        if devices.len() > MAX_FOLLOWED_DEVICES {
            return Err(LogsError::TooManyDevices {
                max: MAX_FOLLOWED_DEVICES,
            });
        }
        let place = self.take_place(user)?;
        // Subscribed before reading where the logs end, so a batch stored
        // in between is announced to us.
        let subscription = self.bus.subscribe();
        let ends = self.store.last_log_positions(&devices).await?;
        let positions = devices
            .iter()
            .map(|device| (device.clone(), ends.get(device).copied().unwrap_or(0)))
            .collect();
        let (tx, rx) = mpsc::channel(16);
        let follower = Follower {
            logs: self.clone(),
            positions,
            filter,
            _place: place,
        };
        tokio::spawn(follower.run(subscription, tx));
        Ok(rx)
    }

    /// Keeps `follow-logs` running on the devices whose agent has it.
    async fn ask_devices_to_send_live(&self, devices: impl Iterator<Item = &DeviceId>) {
        for device in devices {
            let supported = match self.store.get_device(device).await {
                Ok(Some(record)) => record.capabilities.iter().any(|c| c == FOLLOW_ACTION),
                Ok(None) => false,
                Err(error) => {
                    tracing::warn!(%device, error = %crate::error_chain(&error), "could not read a followed device");
                    false
                }
            };
            if !supported {
                continue;
            }
            let request = RequestAction {
                action: FOLLOW_ACTION.to_owned(),
                input: serde_json::json!({ "seconds": FOLLOW_SECONDS }),
                // Worth nothing once the follower's renewal is due.
                ttl_seconds: Some(FOLLOW_RENEW.as_secs()),
                timeout_seconds: Some(FOLLOW_SECONDS),
            };
            if let Err(error) = self.actions.request(device, request).await {
                tracing::warn!(%device, error = %crate::error_chain(&error), "could not ask a followed device to send its logs live");
            }
        }
    }
}

fn position(line: &LogLine) -> LogPosition {
    LogPosition {
        at: line.record.at,
        device: line.device.to_string(),
        pos: line.pos,
    }
}

struct Follower {
    logs: Arc<Logs>,
    /// The last line sent (or skipped) of each followed device.
    positions: HashMap<DeviceId, u64>,
    filter: LogFilter,
    _place: Place,
}

type Sender = mpsc::Sender<Result<Vec<LogLine>, StoreError>>;

impl Follower {
    async fn run(mut self, mut subscription: crate::cluster::bus::Subscription, tx: Sender) {
        let mut renew = tokio::time::interval(FOLLOW_RENEW);
        let mut safety = tokio::time::interval(SAFETY_READ);
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.reset();
        loop {
            let due: Vec<DeviceId> = tokio::select! {
                () = tx.closed() => return,
                _ = renew.tick() => {
                    self.logs.ask_devices_to_send_live(self.positions.keys()).await;
                    continue;
                }
                _ = safety.tick() => self.positions.keys().cloned().collect(),
                _ = keepalive.tick() => {
                    if tx.send(Ok(Vec::new())).await.is_err() {
                        return;
                    }
                    continue;
                }
                heard = subscription.next() => match heard {
                    None => return,
                    Some(Heard::MayHaveMissed) => self.positions.keys().cloned().collect(),
                    Some(Heard::Notice(notice)) if notice.channel == Channel::LogsStored => notice
                        .keys
                        .iter()
                        .filter_map(|key| DeviceId::new(key).ok())
                        .filter(|device| self.positions.contains_key(device))
                        .collect(),
                    Some(Heard::Notice(_)) => continue,
                },
            };
            for device in due {
                // A chunk at a time, each sent before the next is read: a
                // device writing faster than the client reads makes the
                // follower wait on the client, never hold more than a chunk.
                loop {
                    match self.read_chunk(&device).await {
                        Ok((lines, complete)) => {
                            if !lines.is_empty() {
                                if tx.send(Ok(lines)).await.is_err() {
                                    return;
                                }
                                keepalive.reset();
                            }
                            if complete {
                                break;
                            }
                        }
                        Err(error) => {
                            // The stream ends with the error; the client follows again.
                            let _ = tx.send(Err(error)).await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The next chunk of lines of `device` stored since the last read,
    /// those that pass the filter, and whether it was the last.
    async fn read_chunk(&mut self, device: &DeviceId) -> Result<(Vec<LogLine>, bool), StoreError> {
        let after = self.positions.get(device).copied().unwrap_or(0);
        let lines = self
            .logs
            .store
            .logs_stored_after(device, after, FOLLOW_CHUNK)
            .await?;
        let complete = lines.len() < FOLLOW_CHUNK as usize;
        if let Some(last) = lines.last() {
            self.positions.insert(device.clone(), last.pos);
        }
        let passed = lines
            .into_iter()
            .filter(|line| self.filter.matches(&line.record))
            .collect();
        Ok((passed, complete))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(priority: u8, unit: &str, message: &str) -> LogRecord {
        LogRecord {
            at: Utc::now(),
            priority,
            unit: unit.into(),
            message: message.into(),
            fields: Default::default(),
        }
    }

    #[test]
    fn moments_are_seconds_or_durations_ago_or_rfc3339() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T06:00:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        let at = |text: &str| parse_moment(text, now).map(|t| t.to_rfc3339());
        assert_eq!(at("60"), Ok("2026-12-02T05:59:00+00:00".into()));
        assert_eq!(at("90s"), Ok("2026-12-02T05:58:30+00:00".into()));
        assert_eq!(at("15m"), Ok("2026-12-02T05:45:00+00:00".into()));
        assert_eq!(at("1h"), Ok("2026-12-02T05:00:00+00:00".into()));
        assert_eq!(at("7d"), Ok("2026-11-25T06:00:00+00:00".into()));
        assert_eq!(
            at("2026-12-01T08:00:00+02:00"),
            Ok("2026-12-01T06:00:00+00:00".into())
        );
        for bad in ["", "1w", "h", "soon", "99999999999999999999d", "-5"] {
            let error = parse_moment(bad, now).expect_err(bad);
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn the_filter_keeps_a_priority_and_the_more_severe() {
        let filter = LogFilter {
            max_priority: 3,
            ..LogFilter::default()
        };
        assert!(filter.matches(&record(0, "a", "x")));
        assert!(filter.matches(&record(3, "a", "x")));
        assert!(!filter.matches(&record(4, "a", "x")));
        assert!(LogFilter::default().matches(&record(7, "a", "x")));
    }

    #[test]
    fn the_filter_keeps_only_the_units_named_and_the_text_grepped() {
        let filter = LogFilter {
            units: vec!["sshd.service".into(), "cron".into()],
            grep: Some("Accepted".into()),
            ..LogFilter::default()
        };
        assert!(filter.matches(&record(6, "cron", "Accepted it")));
        assert!(!filter.matches(&record(6, "kernel", "Accepted it")));
        assert!(!filter.matches(&record(6, "cron", "accepted, but lowercase")));
    }
}
