//! The device's clock (issue 19, scope 4): its offset from tetherd's clock,
//! measured at start and every `--time-check-seconds` ([`measure`]); what
//! the time service says ([`sources`]); the spec's NTP servers written for
//! timesyncd ([`ntp`]); and the `ClockSkewed` condition while the offset is
//! beyond the spec's `maxOffsetSeconds`. The status is re-reported only
//! when something of it changes materially (see [`material`]).

pub mod measure;
pub mod ntp;
pub mod sources;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::conditions::ReportedCondition;
use tether_proto::host_time::{CLOCK_SKEWED, HostTime, TimeSpec};
use tether_proto::spec::{ReportedStatus, SpecError};
use tokio::sync::watch;

use crate::clock::ServerClock;
use crate::spec::AppliedSpec;
use crate::state::Credentials;

use self::ntp::NtpConfig;
use self::sources::{ServiceState, SourcesConfig};

/// A change of the offset below this is measurement noise or drift, not
/// news: the status is not sent again for it.
pub const MATERIAL_OFFSET_MS: i64 = 1_000;
/// After a failed measurement (tetherd unreachable), the next one comes
/// this soon, or at the interval if that is sooner.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// How the agent keeps track of the device's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeConfig {
    pub sources: SourcesConfig,
    pub ntp: NtpConfig,
    /// Between measurements of the offset.
    pub check_interval: Duration,
}

impl Default for TimeConfig {
    fn default() -> Self {
        Self {
            sources: SourcesConfig::default(),
            ntp: NtpConfig::default(),
            check_interval: Duration::from_secs(600),
        }
    }
}

/// What the reported status carries of the device's time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeReport {
    pub time: Option<HostTime>,
    pub conditions: Vec<ReportedCondition>,
    /// Why the spec's `time` section could not be applied.
    pub errors: Vec<SpecError>,
}

impl TimeReport {
    /// Puts this into `status`, beside what the other parts report.
    pub fn add_to(&self, status: &mut ReportedStatus) {
        status.time = self.time.clone();
        status.conditions.extend(self.conditions.iter().cloned());
        status.errors.extend(self.errors.iter().cloned());
    }
}

/// The `ClockSkewed` condition for `offset_ms` against `max_offset_seconds`,
/// keeping `since` of the one reported before, if it held already.
pub fn skew_condition(
    offset_ms: i64,
    max_offset_seconds: u32,
    before: Option<&ReportedCondition>,
    now: DateTime<Utc>,
) -> Option<ReportedCondition> {
    if offset_ms.unsigned_abs() <= u64::from(max_offset_seconds) * 1000 {
        return None;
    }
    let direction = if offset_ms > 0 { "behind" } else { "ahead of" };
    Some(ReportedCondition {
        kind: CLOCK_SKEWED.to_owned(),
        reason: "OffsetBeyondLimit".to_owned(),
        message: format!(
            "the device's clock is {:.1} s {direction} tetherd's, more than the {max_offset_seconds} s allowed (spec.time.maxOffsetSeconds)",
            offset_ms.unsigned_abs() as f64 / 1000.0
        ),
        since: before.map_or(now, |c| c.since),
    })
}

/// Whether `next` differs from what was `reported` enough to send the
/// status again: the time service, its state or servers, a condition
/// raised or cleared, an error, or the offset by [`MATERIAL_OFFSET_MS`].
pub fn material(reported: &TimeReport, next: &TimeReport) -> bool {
    let kinds =
        |r: &TimeReport| -> Vec<String> { r.conditions.iter().map(|c| c.kind.clone()).collect() };
    if reported.errors != next.errors || kinds(reported) != kinds(next) {
        return true;
    }
    match (&reported.time, &next.time) {
        (Some(before), Some(after)) => {
            before.source != after.source
                || before.sync_state != after.sync_state
                || before.ntp_servers != after.ntp_servers
                || match (before.offset_millis, after.offset_millis) {
                    (Some(a), Some(b)) => (a - b).abs() >= MATERIAL_OFFSET_MS,
                    (a, b) => a.is_some() != b.is_some(),
                }
        }
        (before, after) => before.is_some() != after.is_some(),
    }
}

/// The last measurement: offset and when, by tetherd's clock.
#[derive(Debug, Clone, Copy)]
struct Measured {
    offset_ms: i64,
    at: DateTime<Utc>,
}

/// What the task knows, turned into a report.
fn compose(
    service: &ServiceState,
    measured: Option<Measured>,
    spec: Result<&TimeSpec, &SpecError>,
    ntp_error: Option<&SpecError>,
    before: &TimeReport,
    now: DateTime<Utc>,
) -> TimeReport {
    let max_offset = spec.map_or(TimeSpec::DEFAULT_MAX_OFFSET_SECONDS, |s| {
        s.max_offset_seconds
    });
    let skewed_before = before.conditions.iter().find(|c| c.kind == CLOCK_SKEWED);
    TimeReport {
        time: Some(HostTime {
            offset_millis: measured.map(|m| m.offset_ms),
            measured_at: measured.map(|m| m.at),
            sync_state: service.sync_state,
            source: service.source,
            ntp_servers: service.ntp_servers.clone(),
        }),
        conditions: measured
            .and_then(|m| skew_condition(m.offset_ms, max_offset, skewed_before, now))
            .into_iter()
            .collect(),
        errors: spec.err().into_iter().chain(ntp_error).cloned().collect(),
    }
}

/// Keeps the device's time in the status and the spec's NTP servers in
/// timesyncd's drop-in, until aborted.
pub async fn run(
    config: TimeConfig,
    mut applied: watch::Receiver<AppliedSpec>,
    credentials: watch::Receiver<Credentials>,
    clock: Arc<ServerClock>,
    report: watch::Sender<TimeReport>,
) {
    let mut measured: Option<Measured> = None;
    // The servers last written and whether timesyncd read them; a failed
    // reload is tried again with the next spec or measurement.
    let mut written: Option<Vec<String>> = None;
    let mut ntp_error: Option<SpecError> = None;
    let mut next_measurement = tokio::time::Instant::now();
    loop {
        let spec = TimeSpec::of(&applied.borrow_and_update().spec);
        if let Ok(spec) = &spec
            && (written.as_ref() != Some(&spec.ntp_servers) || ntp_error.is_some())
        {
            ntp_error = match ntp::apply(&config.ntp, &spec.ntp_servers, ntp_error.is_some()).await
            {
                Ok(_) => {
                    written = Some(spec.ntp_servers.clone());
                    None
                }
                Err(error) => {
                    let message = crate::actions::chain(&error);
                    tracing::warn!("cannot apply the spec's NTP servers: {message}");
                    Some(SpecError::new(
                        format!("spec.{}", tether_proto::host_time::SECTION),
                        format!("not applied: {message}"),
                    ))
                }
            };
        }
        if tokio::time::Instant::now() >= next_measurement {
            let api = credentials.borrow().clone();
            let outcome = match crate::tls::https_client(&api.ca_pem, clock.clone()) {
                Ok(client) => measure::measure(&client, &api.api_url)
                    .await
                    .map_err(|e| crate::actions::chain(&e)),
                Err(e) => Err(crate::actions::chain(&e)),
            };
            next_measurement = tokio::time::Instant::now()
                + match outcome {
                    Ok(sample) => {
                        clock.learn(sample.server, sample.sent, sample.received);
                        tracing::debug!(
                            offset_ms = sample.offset_millis(),
                            round_trip_ms = sample.round_trip.as_millis() as u64,
                            "measured the clock's offset from tetherd's"
                        );
                        measured = Some(Measured {
                            offset_ms: sample.offset_millis(),
                            at: sample.server,
                        });
                        config.check_interval
                    }
                    Err(error) => {
                        tracing::debug!("cannot measure the clock's offset: {error}");
                        config.check_interval.min(RETRY_AFTER_FAILURE)
                    }
                };
        }
        let service = sources::gather(&config.sources).await;
        let next = compose(
            &service,
            measured,
            spec.as_ref(),
            ntp_error.as_ref(),
            &report.borrow(),
            clock.now(),
        );
        report.send_if_modified(|reported| {
            let changed = material(reported, &next);
            if changed {
                log_condition_change(reported, &next);
                *reported = next;
            }
            changed
        });
        tokio::select! {
            () = tokio::time::sleep_until(next_measurement) => {}
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

fn log_condition_change(reported: &TimeReport, next: &TimeReport) {
    let skewed = |r: &TimeReport| {
        r.conditions
            .iter()
            .find(|c| c.kind == CLOCK_SKEWED)
            .cloned()
    };
    match (skewed(reported), skewed(next)) {
        (None, Some(condition)) => tracing::warn!("{CLOCK_SKEWED}: {}", condition.message),
        (Some(_), None) => tracing::info!(
            "{CLOCK_SKEWED} cleared: the clock is within the allowed offset of tetherd's"
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use tether_proto::host_time::{SyncState, TimeSource};

    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("valid")
    }

    fn measured(offset_ms: i64) -> Option<Measured> {
        Some(Measured {
            offset_ms,
            at: at(1_000),
        })
    }

    fn service() -> ServiceState {
        ServiceState {
            source: TimeSource::Timesyncd,
            sync_state: SyncState::Unknown,
            ntp_servers: vec!["a.example".into()],
        }
    }

    #[test]
    fn the_condition_holds_beyond_the_limit_and_keeps_its_start() {
        assert_eq!(skew_condition(5_000, 5, None, at(0)), None);
        assert_eq!(skew_condition(-5_000, 5, None, at(0)), None);
        let ahead = skew_condition(-600_000, 5, None, at(10)).expect("skewed");
        assert_eq!(ahead.kind, "ClockSkewed");
        assert_eq!(ahead.since, at(10));
        assert!(
            ahead.message.contains("600.0 s ahead of tetherd's")
                && ahead.message.contains("5 s allowed"),
            "{}",
            ahead.message
        );
        let later = skew_condition(-601_000, 5, Some(&ahead), at(20)).expect("skewed");
        assert_eq!(later.since, at(10));
        let behind = skew_condition(6_000, 5, None, at(0)).expect("skewed");
        assert!(
            behind.message.contains("6.0 s behind"),
            "{}",
            behind.message
        );
    }

    #[test]
    fn only_material_changes_are_reported_again() {
        let spec = TimeSpec::default();
        let report = |offset: Option<i64>, service: &ServiceState| {
            compose(
                service,
                offset.and_then(measured),
                Ok(&spec),
                None,
                &TimeReport::default(),
                at(0),
            )
        };
        let first = report(Some(20), &service());
        assert!(material(&TimeReport::default(), &first));
        assert!(!material(&first, &report(Some(900), &service())));
        assert!(material(&first, &report(Some(1_020), &service())));
        assert!(material(&first, &report(None, &service())));
        // The condition flips even below the material change of the offset.
        let near = report(Some(4_500), &service());
        let over = report(Some(5_100), &service());
        assert!(over.conditions.len() == 1 && near.conditions.is_empty());
        assert!(material(&near, &over));
        let synced = ServiceState {
            sync_state: SyncState::Synchronized,
            ..service()
        };
        assert!(material(&first, &report(Some(20), &synced)));
        let other_servers = ServiceState {
            ntp_servers: vec!["b.example".into()],
            ..service()
        };
        assert!(material(&first, &report(Some(20), &other_servers)));
    }

    #[test]
    fn a_bad_section_or_a_failed_reload_is_a_spec_error_on_time() {
        let bad = SpecError::new("spec.time.ntpServers[0]", "not an NTP server");
        let failed = SpecError::new("spec.time", "not applied: the reload command failed");
        let report = compose(
            &service(),
            measured(-10_000),
            Err(&bad),
            Some(&failed),
            &TimeReport::default(),
            at(0),
        );
        assert_eq!(report.errors, [bad, failed]);
        // The default limit still applies.
        assert_eq!(report.conditions.len(), 1);
        let mut status = ReportedStatus::default();
        report.add_to(&mut status);
        assert_eq!(status.errors.len(), 2);
        assert_eq!(status.conditions, report.conditions);
        assert_eq!(status.time, report.time);
    }
}
