//! Update control on the device (ADR 0029): applications hold update
//! locks through the local API (`PUT /v1/update-locks/NAME`); with the
//! spec's `updates` section (an operator's lock, maintenance windows) they
//! make the device's holds, which the agent reports so that rollouts pass
//! the device over until they are gone.
//!
//! Locks are kept in the state directory: an application mid-way through
//! a firmware flash keeps its lock across an agent restart. A lock may
//! expire (`ttlSeconds`), so that an application that dies holding one
//! does not hold the device back for ever; one without expiry is released
//! only by its holder (or by deleting the state file).
//!
//! A lock belongs to the user that took it: the local API tells the uid of
//! the client on the socket (`SO_PEERCRED`), and only that uid or root may
//! renew or release the lock, so one application cannot lift another's
//! hold. Locks an older agent saved have no owner and stay releasable by
//! any client (nobody can tell now whose they were); renewing one makes
//! the renewer its owner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tether_proto::desired::updates::{
    self, HoldKind, UpdateHold, UpdatePolicy, WindowCheck, WindowClock,
};
use tokio::sync::watch;

use crate::spec::AppliedSpec;
use crate::state::write_atomic;

/// Where locks are kept in the state directory.
pub const LOCKS_FILE: &str = "update-locks.json";
/// Longest a lock may be asked to last: a week.
pub const MAX_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// An update lock an application holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lock {
    pub reason: String,
    pub since: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The uid of the client that took it; `None` for a lock an older
    /// agent saved, which anyone may release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
}

/// The superuser, who may release any lock.
const ROOT_UID: u32 = 0;
/// Locks one non-root user may hold at once.
const MAX_LOCKS_PER_USER: usize = 4;

impl Lock {
    /// The owner that keeps the user `uid` from renewing or releasing
    /// this lock: none for the owner, root, or a lock without owner.
    fn owner_other_than(&self, uid: u32) -> Option<u32> {
        self.owner_uid
            .filter(|&owner| owner != uid && uid != ROOT_UID)
    }
}

/// What a `PUT /v1/update-locks/NAME` asks for.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TakeLock {
    pub reason: String,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LockError {
    #[error("{0}")]
    Invalid(String),
    #[error("{held} update locks are held already, the most one device keeps; release one first")]
    TooMany { held: usize },
    #[error(
        "uid {uid} holds {held} update locks already, the most one user keeps; release one first"
    )]
    TooManyForUser { uid: u32, held: usize },
    #[error("no update lock named {0} is held")]
    NotHeld(String),
    #[error(
        "update lock {name} was taken by uid {owner}; only uid {owner} or root may renew or release it"
    )]
    NotOwner { name: String, owner: u32 },
    #[error("could not save the update locks to {path}: {message}; the change was not made")]
    Save { path: PathBuf, message: String },
}

/// The device's update locks, shared by the local API and the task that
/// works out the holds.
pub struct UpdateLocks {
    path: PathBuf,
    locks: Mutex<BTreeMap<String, Lock>>,
    changed: watch::Sender<()>,
}

impl UpdateLocks {
    /// The locks kept in `state_dir`; an unreadable file is logged and
    /// read as none (a lock is a courtesy to applications, not a
    /// safety interlock, and must not stop the agent).
    pub fn load(state_dir: &Path) -> Self {
        let path = state_dir.join(LOCKS_FILE);
        let locks = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(path = %path.display(), %error, "the update locks file is not valid; starting with no locks held");
                BTreeMap::new()
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the update locks; starting with no locks held");
                BTreeMap::new()
            }
        };
        Self {
            path,
            locks: Mutex::new(locks),
            changed: watch::channel(()).0,
        }
    }

    /// Takes (or renews) the lock `name` for the user `uid`.
    pub fn take(
        &self,
        name: &str,
        request: TakeLock,
        uid: u32,
        now: DateTime<Utc>,
    ) -> Result<Lock, LockError> {
        updates::check_lock_name(name).map_err(LockError::Invalid)?;
        if request.reason.trim().is_empty() || request.reason.len() > updates::MAX_REASON_BYTES {
            return Err(LockError::Invalid(format!(
                "reason must say why, in 1–{} bytes",
                updates::MAX_REASON_BYTES
            )));
        }
        let expires_at = match request.ttl_seconds {
            None => None,
            Some(ttl) if (1..=MAX_TTL_SECONDS).contains(&ttl) => {
                Some(now + chrono::TimeDelta::seconds(ttl as i64))
            }
            Some(_) => {
                return Err(LockError::Invalid(format!(
                    "ttlSeconds must be 1–{MAX_TTL_SECONDS} (a week), or left out for a lock held until released"
                )));
            }
        };
        let mut locks = self.locks.lock().expect("not poisoned");
        let mut next = locks.clone();
        next.retain(|_, lock| lock.expires_at.is_none_or(|at| at > now));
        let held = next.get(name);
        if let Some(owner) = held.and_then(|held| held.owner_other_than(uid)) {
            return Err(LockError::NotOwner {
                name: name.to_owned(),
                owner,
            });
        }
        let since = held.map_or(now, |held| held.since);
        // Root renewing another user's lock leaves it theirs.
        let owner_uid = held.and_then(|held| held.owner_uid).unwrap_or(uid);
        if held.is_none() && next.len() >= updates::MAX_LOCKS {
            return Err(LockError::TooMany { held: next.len() });
        }
        // One application cannot take every slot and hold the device's
        // updates for everyone; root (the operator on the device) can.
        let own = next
            .values()
            .filter(|lock| lock.owner_uid == Some(uid))
            .count();
        if held.is_none() && uid != ROOT_UID && own >= MAX_LOCKS_PER_USER {
            return Err(LockError::TooManyForUser { uid, held: own });
        }
        let lock = Lock {
            reason: request.reason,
            since,
            expires_at,
            owner_uid: Some(owner_uid),
        };
        next.insert(name.to_owned(), lock.clone());
        self.save(&next)?;
        *locks = next;
        drop(locks);
        tracing::info!(lock = name, reason = %lock.reason, expires_at = ?lock.expires_at, owner_uid, by_uid = uid, "update lock taken");
        self.changed.send_replace(());
        Ok(lock)
    }

    /// Releases the lock `name` for the user `uid`: its owner, or root.
    pub fn release(&self, name: &str, uid: u32, now: DateTime<Utc>) -> Result<(), LockError> {
        let mut locks = self.locks.lock().expect("not poisoned");
        let mut next = locks.clone();
        next.retain(|_, lock| lock.expires_at.is_none_or(|at| at > now));
        let Some(held) = next.remove(name) else {
            return Err(LockError::NotHeld(name.to_owned()));
        };
        if let Some(owner) = held.owner_other_than(uid) {
            return Err(LockError::NotOwner {
                name: name.to_owned(),
                owner,
            });
        }
        self.save(&next)?;
        *locks = next;
        drop(locks);
        tracing::info!(
            lock = name,
            owner_uid = held.owner_uid,
            by_uid = uid,
            "update lock released"
        );
        self.changed.send_replace(());
        Ok(())
    }

    /// The locks held at `now` (expired ones left out).
    pub fn held(&self, now: DateTime<Utc>) -> BTreeMap<String, Lock> {
        let mut locks = self.locks.lock().expect("not poisoned").clone();
        locks.retain(|_, lock| lock.expires_at.is_none_or(|at| at > now));
        locks
    }

    fn save(&self, locks: &BTreeMap<String, Lock>) -> Result<(), LockError> {
        let bytes = serde_json::to_vec_pretty(locks).expect("locks encode");
        write_atomic(&self.path, &bytes, 0o600).map_err(|error| LockError::Save {
            path: self.path.clone(),
            message: error.to_string(),
        })
    }
}

/// The device's holds at `now`, and when they next change by themselves
/// (a lock expires, a window opens or closes). `local` is `now` on the
/// windows' clock; `to_utc` maps that clock back.
pub fn holds(
    locks: &BTreeMap<String, Lock>,
    policy: &UpdatePolicy,
    local: NaiveDateTime,
    to_utc: impl Fn(NaiveDateTime) -> Option<DateTime<Utc>>,
) -> (Vec<UpdateHold>, Option<DateTime<Utc>>) {
    let mut holds = Vec::new();
    let mut next: Option<DateTime<Utc>> = None;
    let mut sooner = |at: Option<DateTime<Utc>>| {
        if let Some(at) = at {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    };
    for (name, lock) in locks {
        holds.push(UpdateHold {
            kind: HoldKind::Lock,
            name: Some(name.clone()),
            reason: lock.reason.clone(),
            until: lock.expires_at,
            owner_uid: lock.owner_uid,
        });
        sooner(lock.expires_at);
    }
    if policy.locked {
        holds.push(UpdateHold {
            kind: HoldKind::Spec,
            name: None,
            reason: policy
                .reason
                .clone()
                .unwrap_or_else(|| "updates are locked in the device's spec".to_owned()),
            until: None,
            owner_uid: None,
        });
    }
    match updates::check_windows(&policy.maintenance_windows, local) {
        None => {}
        Some(WindowCheck::Open { closes }) => sooner(to_utc(closes)),
        Some(WindowCheck::Closed { opens }) => {
            let until = to_utc(opens);
            holds.push(UpdateHold {
                kind: HoldKind::Window,
                name: None,
                reason: format!(
                    "outside the maintenance windows; the next opens {opens} ({} time)",
                    match policy.time_zone {
                        WindowClock::Local => "device",
                        WindowClock::Utc => "UTC",
                    }
                ),
                until,
                owner_uid: None,
            });
            sooner(until);
        }
    }
    (holds, next)
}

/// The first instant at or after the local time `at`: `at` itself, or —
/// when a clock change skips it (spring forward) — the first minute after
/// that the clock shows, so that a window opening in the gap opens when
/// the gap ends. `to_utc` maps a local time that exists.
fn first_instant_at_or_after(
    at: NaiveDateTime,
    to_utc: impl Fn(NaiveDateTime) -> Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    // Clock changes skip at most a few hours.
    (0..=6 * 60).find_map(|minutes| to_utc(at + chrono::TimeDelta::minutes(minutes)))
}

/// Keeps `report` at the device's holds: when a lock is taken or
/// released, the spec changes, or a lock or window runs out. Runs until
/// the agent stops.
pub async fn run(
    locks: std::sync::Arc<UpdateLocks>,
    mut applied: watch::Receiver<AppliedSpec>,
    report: watch::Sender<Vec<UpdateHold>>,
) {
    let mut changed = locks.changed.subscribe();
    loop {
        let now = Utc::now();
        let policy = applied.borrow_and_update().updates.clone();
        let (current, next) = match policy.time_zone {
            WindowClock::Utc => holds(&locks.held(now), &policy, now.naive_utc(), |at| {
                Some(at.and_utc())
            }),
            WindowClock::Local => holds(
                &locks.held(now),
                &policy,
                now.with_timezone(&Local).naive_local(),
                |at| {
                    first_instant_at_or_after(at, |at| {
                        Local
                            .from_local_datetime(&at)
                            .earliest()
                            .map(|at| at.with_timezone(&Utc))
                    })
                },
            ),
        };
        report.send_if_modified(|reported| {
            let modified = *reported != current;
            *reported = current;
            modified
        });
        // Past the change by a little, so that the next pass sees it.
        let wait = next.map_or(std::time::Duration::from_secs(3600), |at| {
            (at - now)
                .to_std()
                .unwrap_or_default()
                .min(std::time::Duration::from_secs(3600))
                + std::time::Duration::from_millis(50)
        });
        tokio::select! {
            changed = changed.changed() => if changed.is_err() { return },
            changed = applied.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::desired::updates::MaintenanceWindow;

    fn t(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").expect("a time")
    }

    fn utc(at: NaiveDateTime) -> Option<DateTime<Utc>> {
        Some(at.and_utc())
    }

    #[test]
    fn each_lock_the_spec_and_a_closed_window_hold_the_device_and_the_soonest_end_is_next() {
        let locks: BTreeMap<String, Lock> = [
            (
                "flash".to_owned(),
                Lock {
                    reason: "flashing the PLC".into(),
                    since: t("2026-12-03 09:00").and_utc(),
                    expires_at: Some(t("2026-12-03 11:00").and_utc()),
                    owner_uid: Some(1000),
                },
            ),
            (
                "batch".to_owned(),
                Lock {
                    reason: "a production batch".into(),
                    since: t("2026-12-03 08:00").and_utc(),
                    expires_at: None,
                    owner_uid: None,
                },
            ),
        ]
        .into();
        let policy = UpdatePolicy {
            locked: true,
            reason: Some("line 3 audit".into()),
            maintenance_windows: vec![MaintenanceWindow {
                days: Vec::new(),
                start: "02:00".into(),
                duration_minutes: 60,
            }],
            time_zone: WindowClock::Utc,
            download_bytes_per_second: None,
        };
        let (held, next) = holds(&locks, &policy, t("2026-12-03 10:00"), utc);
        let kinds: Vec<(HoldKind, Option<&str>)> =
            held.iter().map(|h| (h.kind, h.name.as_deref())).collect();
        assert_eq!(
            kinds,
            [
                (HoldKind::Lock, Some("batch")),
                (HoldKind::Lock, Some("flash")),
                (HoldKind::Spec, None),
                (HoldKind::Window, None),
            ]
        );
        assert_eq!(held[0].owner_uid, None, "saved by an older agent");
        assert_eq!(held[1].owner_uid, Some(1000));
        assert_eq!(held[2].reason, "line 3 audit");
        assert_eq!(held[3].until, utc(t("2026-12-04 02:00")));
        assert_eq!(
            next,
            utc(t("2026-12-03 11:00")),
            "the flash lock expires first"
        );
    }

    #[test]
    fn inside_a_window_and_unlocked_nothing_holds_and_the_window_end_is_next() {
        let policy = UpdatePolicy {
            maintenance_windows: vec![MaintenanceWindow {
                days: Vec::new(),
                start: "02:00".into(),
                duration_minutes: 60,
            }],
            ..UpdatePolicy::default()
        };
        let (held, next) = holds(&BTreeMap::new(), &policy, t("2026-12-03 02:10"), utc);
        assert!(held.is_empty());
        assert_eq!(next, utc(t("2026-12-03 03:00")));
        let (held, next) = holds(
            &BTreeMap::new(),
            &UpdatePolicy::default(),
            t("2026-12-03 02:10"),
            utc,
        );
        assert!(held.is_empty());
        assert_eq!(next, None, "nothing to wait for");
    }

    /// The uid of an application taking locks, and of another one.
    const APP: u32 = 1000;
    const OTHER_APP: u32 = 1001;

    fn take(reason: &str, ttl: Option<u64>) -> TakeLock {
        TakeLock {
            reason: reason.into(),
            ttl_seconds: ttl,
        }
    }

    #[test]
    fn locks_survive_a_restart_expire_and_are_released_by_name() {
        let dir = tempfile::tempdir().expect("temp");
        let now = Utc::now();
        let locks = UpdateLocks::load(dir.path());
        locks
            .take("flash", take("flashing", Some(60)), APP, now)
            .expect("taken");
        locks
            .take("batch", take("a batch", None), APP, now)
            .expect("taken");
        let renewed = locks
            .take(
                "batch",
                take("a longer batch", None),
                APP,
                now + chrono::TimeDelta::seconds(5),
            )
            .expect("renewed");
        assert_eq!(renewed.since, now, "renewing keeps when it was first taken");

        let restarted = UpdateLocks::load(dir.path());
        assert_eq!(restarted.held(now).len(), 2);
        let later = now + chrono::TimeDelta::seconds(61);
        assert_eq!(
            restarted.held(later).keys().collect::<Vec<_>>(),
            ["batch"],
            "the flash lock expired"
        );
        restarted.release("batch", APP, later).expect("released");
        assert_eq!(
            restarted.release("batch", APP, later),
            Err(LockError::NotHeld("batch".into()))
        );
        assert!(UpdateLocks::load(dir.path()).held(later).is_empty());
    }

    #[test]
    fn only_the_owner_or_root_renews_or_releases_a_lock_and_the_owner_is_kept() {
        let dir = tempfile::tempdir().expect("temp");
        let now = Utc::now();
        let locks = UpdateLocks::load(dir.path());
        let taken = locks
            .take("flash", take("flashing", None), APP, now)
            .expect("taken");
        assert_eq!(taken.owner_uid, Some(APP));
        let not_owner = LockError::NotOwner {
            name: "flash".into(),
            owner: APP,
        };
        assert_eq!(
            locks.release("flash", OTHER_APP, now),
            Err(not_owner.clone())
        );
        assert_eq!(
            locks.take("flash", take("mine now", Some(1)), OTHER_APP, now),
            Err(not_owner.clone()),
            "a renewal could cut it short: refused too"
        );
        assert!(
            not_owner.to_string().contains("uid 1000"),
            "names the owner: {not_owner}"
        );
        assert_eq!(locks.held(now)["flash"].reason, "flashing", "unchanged");

        let renewed = locks
            .take("flash", take("flashing again", None), ROOT_UID, now)
            .expect("root renews");
        assert_eq!(renewed.owner_uid, Some(APP), "still the application's");
        let restarted = UpdateLocks::load(dir.path());
        assert_eq!(restarted.held(now)["flash"].owner_uid, Some(APP));
        restarted
            .release("flash", ROOT_UID, now)
            .expect("root releases");

        restarted
            .take("batch", take("a batch", None), OTHER_APP, now)
            .expect("taken");
        restarted
            .release("batch", OTHER_APP, now)
            .expect("its owner releases");
        assert!(restarted.held(now).is_empty());
    }

    /// A lock saved before locks had owners: any client may release it
    /// (nobody can tell whose it was), and renewing it makes it the
    /// renewer's.
    #[test]
    fn a_lock_an_older_agent_saved_has_no_owner_and_anyone_releases_it() {
        let dir = tempfile::tempdir().expect("temp");
        let now = Utc::now();
        std::fs::write(
            dir.path().join(LOCKS_FILE),
            r#"{"old": {"reason": "from before", "since": "2026-12-01T00:00:00Z"},
                "older": {"reason": "from before", "since": "2026-12-01T00:00:00Z"}}"#,
        )
        .expect("writes");
        let locks = UpdateLocks::load(dir.path());
        assert_eq!(locks.held(now)["old"].owner_uid, None);
        locks
            .release("old", OTHER_APP, now)
            .expect("anyone releases it");
        let renewed = locks
            .take("older", take("mine now", None), APP, now)
            .expect("anyone renews it");
        assert_eq!(renewed.owner_uid, Some(APP));
        assert_eq!(
            locks.release("older", OTHER_APP, now),
            Err(LockError::NotOwner {
                name: "older".into(),
                owner: APP
            })
        );
    }

    #[test]
    fn bad_requests_are_refused_naming_the_field_and_change_nothing() {
        let dir = tempfile::tempdir().expect("temp");
        let now = Utc::now();
        let locks = UpdateLocks::load(dir.path());
        let refused = |name: &str, request: TakeLock| {
            locks
                .take(name, request, APP, now)
                .expect_err("refused")
                .to_string()
        };
        assert!(refused("a/b", take("x", None)).contains("not a lock name"));
        assert!(refused("ok", take(" ", None)).contains("reason"));
        assert!(refused("ok", take("x", Some(0))).contains("ttlSeconds"));
        assert!(refused("ok", take("x", Some(MAX_TTL_SECONDS + 1))).contains("ttlSeconds"));
        for i in 0..MAX_LOCKS_PER_USER {
            locks
                .take(&format!("l{i}"), take("x", None), APP, now)
                .expect("taken");
        }
        assert_eq!(
            locks.take("fifth", take("x", None), APP, now),
            Err(LockError::TooManyForUser {
                uid: APP,
                held: MAX_LOCKS_PER_USER
            })
        );
        // Renewing its own is not a new lock.
        locks
            .take("l0", take("x", None), APP, now)
            .expect("renewed");
        for i in MAX_LOCKS_PER_USER..updates::MAX_LOCKS {
            locks
                .take(&format!("l{i}"), take("x", None), ROOT_UID, now)
                .expect("taken");
        }
        assert_eq!(
            locks.take("one-more", take("x", None), ROOT_UID, now),
            Err(LockError::TooMany {
                held: updates::MAX_LOCKS
            })
        );
        assert_eq!(locks.held(now).len(), updates::MAX_LOCKS);
    }

    /// A window opening at a time the clock skips (spring forward) opens
    /// when the gap ends, and the agent wakes then.
    #[test]
    fn a_window_opening_in_a_skipped_hour_opens_when_the_clock_resumes() {
        // A clock that skips 02:00–03:00 on 2026-03-29, an hour ahead of
        // UTC before and two after (Central Europe).
        let to_utc = |at: NaiveDateTime| -> Option<DateTime<Utc>> {
            let gap_start = t("2026-03-29 02:00");
            let gap_end = t("2026-03-29 03:00");
            match at {
                at if at < gap_start => Some((at - chrono::TimeDelta::hours(1)).and_utc()),
                at if at < gap_end => None,
                at => Some((at - chrono::TimeDelta::hours(2)).and_utc()),
            }
        };
        assert_eq!(
            first_instant_at_or_after(t("2026-03-29 02:30"), to_utc),
            Some(t("2026-03-29 01:00").and_utc()),
            "03:00 local, the first time the clock shows"
        );
        assert_eq!(
            first_instant_at_or_after(t("2026-03-29 01:30"), to_utc),
            Some(t("2026-03-29 00:30").and_utc())
        );
        let policy = UpdatePolicy {
            maintenance_windows: vec![MaintenanceWindow {
                days: Vec::new(),
                start: "02:30".into(),
                duration_minutes: 45,
            }],
            ..UpdatePolicy::default()
        };
        let (held, next) = holds(&BTreeMap::new(), &policy, t("2026-03-28 23:30"), |at| {
            first_instant_at_or_after(at, to_utc)
        });
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].until, Some(t("2026-03-29 01:00").and_utc()));
        assert_eq!(next, held[0].until, "the agent wakes when it opens");
    }
}
