//! Range queries: reading `since`, `until` and `step`, and choosing the
//! resolution that answers them (raw points, 1-minute or 1-hour rollups).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::MetricsConfig;

/// Most buckets one series of an answer may have (Prometheus' limit too).
pub const MAX_POINTS: i64 = 11_000;
/// Most series one answer holds.
pub const MAX_SERIES: u32 = 100;
/// Buckets a series gets when the query names no step.
const DEFAULT_POINTS: i64 = 240;

/// A query parameter that is wrong, and why; the API answers 400 naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct QueryError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> QueryError {
    QueryError {
        field,
        message: message.into(),
    }
}

/// Where a range's points come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Raw,
    Minute,
    Hour,
}

impl Resolution {
    /// Bucket width in milliseconds; raw points have none (1).
    pub fn width_ms(self) -> i64 {
        match self {
            Resolution::Raw => 1,
            Resolution::Minute => 60_000,
            Resolution::Hour => 3_600_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
        }
    }
}

/// A query read and planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub resolution: Resolution,
    pub step_ms: i64,
}

/// `90`, `90s`, `15m`, `2h`, `7d`: a length of time.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    number.checked_mul(seconds).map(Duration::from_secs)
}

/// An instant: RFC 3339, or a length of time before `now` (`1h`).
pub fn parse_time(now: DateTime<Utc>, text: &str) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text.trim()) {
        return Some(time.with_timezone(&Utc));
    }
    let ago = chrono::Duration::from_std(parse_duration(text)?).ok()?;
    now.checked_sub_signed(ago)
}

/// Plans a query of the window `since`..`until` (defaults: the last hour)
/// in buckets of `step` (default: about 240 buckets). The finest
/// resolution still kept for the whole window answers: raw points for
/// steps under a minute, 1-minute rollups for steps under an hour,
/// 1-hour rollups otherwise; the step is rounded up to a multiple of it.
pub fn plan(
    now: DateTime<Utc>,
    since: Option<&str>,
    until: Option<&str>,
    step: Option<&str>,
    keep: &MetricsConfig,
) -> Result<Plan, QueryError> {
    let time = |field: &'static str, text: &str| {
        parse_time(now, text).ok_or_else(|| {
            invalid(
                field,
                format!("{text:?} is neither RFC 3339 nor a duration like 90s, 15m, 2h or 7d"),
            )
        })
    };
    let until = until.map(|t| time("until", t)).transpose()?.unwrap_or(now);
    let since = match since {
        Some(text) => time("since", text)?,
        None => until - chrono::Duration::hours(1),
    };
    if since >= until {
        return Err(invalid("since", "must be before until"));
    }
    let window = (until - since).num_milliseconds();
    let kept = millis(keep.hourly);
    if window > kept {
        return Err(invalid(
            "since",
            format!(
                "the window is longer than the {} days hourly rollups are kept",
                kept / 86_400_000
            ),
        ));
    }
    let step_ms = match step {
        Some(text) => {
            let step = parse_duration(text).ok_or_else(|| {
                invalid(
                    "step",
                    format!("{text:?} is not a duration like 10s, 1m or 1h"),
                )
            })?;
            if step.is_zero() {
                return Err(invalid("step", "must be at least 1s"));
            }
            millis(step)
        }
        None => ((window + DEFAULT_POINTS - 1) / DEFAULT_POINTS).max(1000),
    };
    let kept_from = |keep: Duration| now - chrono::Duration::milliseconds(millis(keep));
    let resolution = if step_ms < 60_000 && since >= kept_from(keep.raw) {
        Resolution::Raw
    } else if step_ms < 3_600_000 && since >= kept_from(keep.minutely) {
        Resolution::Minute
    } else {
        Resolution::Hour
    };
    let width = resolution.width_ms();
    let step_ms = (step_ms + width - 1) / width * width;
    let buckets = window / step_ms;
    if buckets > MAX_POINTS {
        return Err(invalid(
            "step",
            format!(
                "{buckets} buckets of {} ms in the window, more than {MAX_POINTS}; ask for a larger step",
                step_ms
            ),
        ));
    }
    Ok(Plan {
        since,
        until,
        resolution,
        step_ms,
    })
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid")
    }

    fn keep() -> MetricsConfig {
        MetricsConfig::default()
    }

    fn planned(since: &str, step: Option<&str>) -> Plan {
        plan(now(), Some(since), None, step, &keep()).expect("plans")
    }

    #[test]
    fn durations_and_times_read_as_documented() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1.5h"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(
            parse_time(now(), "1h"),
            Some(now() - chrono::Duration::hours(1))
        );
        assert_eq!(parse_time(now(), "2027-01-15T08:00:00Z"), Some(now()));
    }

    #[test]
    fn the_finest_resolution_kept_for_the_window_answers() {
        let p = planned("1h", Some("10s"));
        assert_eq!((p.resolution, p.step_ms), (Resolution::Raw, 10_000));
        // A minute step reads minute rollups even where raw points exist.
        assert_eq!(planned("1h", Some("1m")).resolution, Resolution::Minute);
        // Raw points are kept a day: older windows read rollups.
        let p = planned("2d", Some("10s"));
        assert_eq!((p.resolution, p.step_ms), (Resolution::Minute, 60_000));
        let p = planned("60d", Some("90m"));
        assert_eq!((p.resolution, p.step_ms), (Resolution::Hour, 7_200_000));
        // Steps round up to a multiple of the resolution.
        assert_eq!(planned("6h", Some("90s")).step_ms, 120_000);
        // Without a step: about 240 buckets.
        let p = planned("1h", None);
        assert_eq!((p.resolution, p.step_ms), (Resolution::Raw, 15_000));
        let p = planned("30d", None);
        assert_eq!((p.resolution, p.step_ms), (Resolution::Hour, 3 * 3_600_000));
    }

    #[test]
    fn bad_input_names_its_field() {
        let err = |since: Option<&str>, until: Option<&str>, step: Option<&str>| {
            plan(now(), since, until, step, &keep()).expect_err("refused")
        };
        assert_eq!(err(None, None, Some("0s")).field, "step");
        assert_eq!(err(None, None, Some("soon")).field, "step");
        assert_eq!(err(Some("yesterday"), None, None).field, "since");
        assert_eq!(err(None, Some("tomorrow"), None).field, "until");
        assert_eq!(err(Some("1h"), Some("2h"), None).field, "since");
        assert_eq!(err(Some("400d"), None, None).field, "since");
        let too_fine = err(Some("30d"), None, Some("1s"));
        assert_eq!(too_fine.field, "step");
        assert!(too_fine.message.contains("11000"), "{too_fine}");
    }
}
