//! Update control: when a device may take a new revision of its
//! deployments. A device is *held* — a rollout passes it over until it is
//! free — while an application on it holds an update lock (the agent's
//! local API), while its spec's `updates` section says `locked`, or while
//! it is outside all of its maintenance windows. The agent works out its
//! holds (only it knows its local time and its applications' locks) and
//! reports them; tetherd's rollout reads the report.
//!
//! A hold defers *new* revisions only: a device that failed goes back to
//! the revision it had, and a deployment that stops targeting it comes
//! off, held or not — both put it back where it was.

use chrono::{DateTime, Datelike, NaiveDateTime, NaiveTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::SpecError;

/// The section's name in the spec.
pub const SECTION: &str = "updates";
/// At most this many maintenance windows per device.
pub const MAX_WINDOWS: usize = 16;
/// Longest window: a week.
pub const MAX_WINDOW_MINUTES: u32 = 7 * 24 * 60;
/// Longest reason or lock name.
pub const MAX_REASON_BYTES: usize = 256;
pub const MAX_LOCK_NAME_BYTES: usize = 63;
/// The slowest download rate the spec may set: below it an agent release
/// of tens of MB would take days.
pub const MIN_DOWNLOAD_BYTES_PER_SECOND: u64 = 1024;
/// At most this many update locks held on one device at once.
pub const MAX_LOCKS: usize = 16;
/// At most this many holds reported: every lock, the spec's, the window's.
pub const MAX_HOLDS: usize = MAX_LOCKS + 2;

/// `spec.updates`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdatePolicy {
    /// No new revision while true (an operator's lock).
    #[serde(default)]
    pub locked: bool,
    /// Why, shown where the device waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// New revisions only inside one of these; none: any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// The clock the windows are read on.
    #[serde(default)]
    pub time_zone: WindowClock,
    /// How fast the agent downloads its own new release, in bytes per
    /// second (issue 19); none: as fast as the link allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_bytes_per_second: Option<u64>,
}

/// The clock maintenance windows are read on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WindowClock {
    /// The device's own time zone (`/etc/localtime`, or `TZ`), daylight
    /// saving included: a window at 02:00 is 02:00 where the device is.
    #[default]
    #[serde(rename = "local")]
    Local,
    #[serde(rename = "UTC")]
    Utc,
}

/// A time of the week when updates may start: from `start` on each of
/// `days` (every day if none), for `durationMinutes`. A window may run
/// past midnight; it belongs to the day it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MaintenanceWindow {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Day>,
    /// `HH:MM`, 24-hour.
    pub start: String,
    pub duration_minutes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    fn of(weekday: chrono::Weekday) -> Self {
        match weekday {
            chrono::Weekday::Mon => Self::Mon,
            chrono::Weekday::Tue => Self::Tue,
            chrono::Weekday::Wed => Self::Wed,
            chrono::Weekday::Thu => Self::Thu,
            chrono::Weekday::Fri => Self::Fri,
            chrono::Weekday::Sat => Self::Sat,
            chrono::Weekday::Sun => Self::Sun,
        }
    }
}

/// Checks `spec.updates`: its fields and types, each window's start and
/// length, the lengths of text.
pub fn validate(path: &str, section: &Value) -> Result<(), SpecError> {
    let policy: UpdatePolicy = serde_json::from_value(section.clone()).map_err(|e| {
        SpecError::new(
            path,
            format!("{e}; fields: locked, reason, maintenanceWindows ({{days, start, durationMinutes}}), timeZone (\"local\" or \"UTC\"), downloadBytesPerSecond"),
        )
    })?;
    if policy
        .reason
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REASON_BYTES)
    {
        return Err(SpecError::new(
            format!("{path}.reason"),
            format!("longer than {MAX_REASON_BYTES} bytes"),
        ));
    }
    if policy
        .download_bytes_per_second
        .is_some_and(|rate| rate < MIN_DOWNLOAD_BYTES_PER_SECOND)
    {
        return Err(SpecError::new(
            format!("{path}.downloadBytesPerSecond"),
            format!("must be at least {MIN_DOWNLOAD_BYTES_PER_SECOND} (1 KiB/s)"),
        ));
    }
    if policy.maintenance_windows.len() > MAX_WINDOWS {
        return Err(SpecError::new(
            format!("{path}.maintenanceWindows"),
            format!("at most {MAX_WINDOWS} windows"),
        ));
    }
    for (i, window) in policy.maintenance_windows.iter().enumerate() {
        let path = format!("{path}.maintenanceWindows[{i}]");
        start_time(&window.start).ok_or_else(|| {
            SpecError::new(
                format!("{path}.start"),
                format!(
                    "{:?} is not a time of day: use HH:MM, 24-hour (e.g. 02:30)",
                    window.start
                ),
            )
        })?;
        if !(1..=MAX_WINDOW_MINUTES).contains(&window.duration_minutes) {
            return Err(SpecError::new(
                format!("{path}.durationMinutes"),
                format!("must be 1–{MAX_WINDOW_MINUTES} (a week)"),
            ));
        }
    }
    Ok(())
}

fn start_time(start: &str) -> Option<NaiveTime> {
    let (hours, minutes) = start.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    NaiveTime::from_hms_opt(hours.parse().ok()?, minutes.parse().ok()?, 0)
}

/// Whether `now` (on the windows' clock) is inside a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowCheck {
    /// Inside one until `closes`.
    Open { closes: NaiveDateTime },
    /// Outside all; the next opens at `opens`.
    Closed { opens: NaiveDateTime },
}

/// Where `now` stands against `windows` (none given: always open, and
/// `None` returned). Windows that fail [`validate`] are passed over.
pub fn check_windows(windows: &[MaintenanceWindow], now: NaiveDateTime) -> Option<WindowCheck> {
    if windows.is_empty() {
        return None;
    }
    let mut closes: Option<NaiveDateTime> = None;
    let mut opens: Option<NaiveDateTime> = None;
    // A window of up to a week may have started on any of the last 7
    // days; the next one starts within 7 days.
    for window in windows {
        let Some(start) = start_time(&window.start) else {
            continue;
        };
        let length = TimeDelta::minutes(i64::from(window.duration_minutes));
        for offset in -7..=7 {
            let day = now.date() + TimeDelta::days(offset);
            if !window.days.is_empty() && !window.days.contains(&Day::of(day.weekday())) {
                continue;
            }
            let from = day.and_time(start);
            let until = from + length;
            if from <= now && now < until {
                closes = Some(closes.map_or(until, |c| c.max(until)));
            } else if from > now {
                opens = Some(opens.map_or(from, |o| o.min(from)));
            }
        }
    }
    match (closes, opens) {
        (Some(closes), _) => Some(WindowCheck::Open { closes }),
        (None, Some(opens)) => Some(WindowCheck::Closed { opens }),
        (None, None) => None,
    }
}

/// Why a device takes no new revision now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateHold {
    pub kind: HoldKind,
    /// The lock's name (a lock's hold only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub reason: String,
    /// When it ends, if known: the lock's expiry, the next window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// The uid of the device's user whose application took the lock (a
    /// lock's hold only); absent from older agents, and from locks an
    /// older agent saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum HoldKind {
    /// An application on the device holds an update lock.
    Lock,
    /// The spec's `updates.locked`.
    Spec,
    /// Outside the maintenance windows.
    Window,
}

/// A lock's or hold's name: what the local API and the spec accept.
pub fn check_lock_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_LOCK_NAME_BYTES
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "{name:?} is not a lock name: 1–{MAX_LOCK_NAME_BYTES} letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").expect("a time")
    }

    fn window(days: &[Day], start: &str, minutes: u32) -> MaintenanceWindow {
        MaintenanceWindow {
            days: days.to_vec(),
            start: start.into(),
            duration_minutes: minutes,
        }
    }

    #[test]
    fn no_windows_means_any_time() {
        assert_eq!(check_windows(&[], at("2026-12-03 12:00")), None);
    }

    #[test]
    fn a_daily_window_is_open_inside_and_names_its_end_and_next_start() {
        let windows = [window(&[], "02:00", 120)];
        assert_eq!(
            check_windows(&windows, at("2026-12-03 02:30")),
            Some(WindowCheck::Open {
                closes: at("2026-12-03 04:00")
            })
        );
        // The end is outside: [start, start + duration).
        assert_eq!(
            check_windows(&windows, at("2026-12-03 04:00")),
            Some(WindowCheck::Closed {
                opens: at("2026-12-04 02:00")
            })
        );
        assert_eq!(
            check_windows(&windows, at("2026-12-03 01:59")),
            Some(WindowCheck::Closed {
                opens: at("2026-12-03 02:00")
            })
        );
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        // 2026-12-05 is a Saturday.
        let windows = [window(&[Day::Sat], "22:00", 240)];
        assert_eq!(
            check_windows(&windows, at("2026-12-06 01:00")),
            Some(WindowCheck::Open {
                closes: at("2026-12-06 02:00")
            }),
            "Sunday 01:00 is inside Saturday's window"
        );
        assert_eq!(
            check_windows(&windows, at("2026-12-06 22:30")),
            Some(WindowCheck::Closed {
                opens: at("2026-12-12 22:00")
            }),
            "Sunday 22:30 is not Saturday"
        );
    }

    #[test]
    fn overlapping_windows_stay_open_until_the_last_ends() {
        let windows = [window(&[], "01:00", 60), window(&[], "01:30", 90)];
        assert_eq!(
            check_windows(&windows, at("2026-12-03 01:45")),
            Some(WindowCheck::Open {
                closes: at("2026-12-03 03:00")
            })
        );
    }

    #[test]
    fn a_week_long_window_is_always_open() {
        let windows = [window(&[Day::Mon], "00:00", MAX_WINDOW_MINUTES)];
        for day in 7..=13 {
            assert!(matches!(
                check_windows(&windows, at(&format!("2026-12-{day:02} 12:00"))),
                Some(WindowCheck::Open { .. })
            ));
        }
    }

    #[test]
    fn the_section_is_checked_field_by_field() {
        assert_eq!(
            validate(
                "spec.updates",
                &json!({"locked": true, "maintenanceWindows": [{"days": ["sat"], "start": "02:00", "durationMinutes": 60}], "timeZone": "UTC"})
            ),
            Ok(())
        );
        let refused = |section: Value| validate("spec.updates", &section).expect_err("refused");
        assert_eq!(
            refused(json!({"maintenanceWindows": [{"start": "2:00", "durationMinutes": 60}]})).path,
            "spec.updates.maintenanceWindows[0].start"
        );
        assert_eq!(
            refused(json!({"maintenanceWindows": [{"start": "24:00", "durationMinutes": 60}]}))
                .path,
            "spec.updates.maintenanceWindows[0].start"
        );
        assert_eq!(
            refused(json!({"maintenanceWindows": [{"start": "02:00", "durationMinutes": 0}]})).path,
            "spec.updates.maintenanceWindows[0].durationMinutes"
        );
        assert!(
            refused(json!({"maintenanceWindows": [{"days": ["someday"], "start": "02:00", "durationMinutes": 5}]}))
                .message
                .contains("someday")
        );
        assert!(refused(json!({"lockd": true})).message.contains("lockd"));
        assert!(
            refused(json!({"timeZone": "Europe/Paris"}))
                .message
                .contains("Europe/Paris")
        );
        assert_eq!(
            refused(json!({"reason": "x".repeat(MAX_REASON_BYTES + 1)})).path,
            "spec.updates.reason"
        );
        assert_eq!(
            validate("spec.updates", &json!({"downloadBytesPerSecond": 65536})),
            Ok(())
        );
        assert_eq!(
            refused(json!({"downloadBytesPerSecond": 10})).path,
            "spec.updates.downloadBytesPerSecond"
        );
    }

    #[test]
    fn lock_names_are_short_plain_words() {
        assert!(check_lock_name("firmware-flash_2.step").is_ok());
        for bad in ["", "has space", "a/b", &"x".repeat(MAX_LOCK_NAME_BYTES + 1)] {
            assert!(check_lock_name(bad).is_err(), "{bad:?}");
        }
    }
}
