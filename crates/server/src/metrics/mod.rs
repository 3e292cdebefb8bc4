//! Device metrics as series (ADR 0014): records flattened into named,
//! labelled series ([`flatten`]), raw points rolled up into 1-minute and
//! 1-hour buckets by a singleton job ([`Metrics::roll_up`]), range queries
//! that pick the resolution ([`query`]), and the fleet's latest values for
//! Prometheus ([`exposition`]).
//!
//! Every operation takes the time as a parameter: the job and the tests
//! choose the clock.

pub mod exposition;
pub mod flatten;
pub mod query;
pub mod series;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::DeviceId;
use tether_proto::metrics::{MetricRange, RangePoint, SeriesLatest, SeriesList, SeriesPoints};

use crate::store::{RolledUp, Store, StoreError};
use query::QueryError;

/// Points received this long before the rollup's mark are rolled up
/// again: a batch whose transaction took its arrival time before the
/// mark but committed after it is not missed. Recomputing is harmless.
const ROLLUP_OVERLAP: chrono::Duration = chrono::Duration::minutes(2);
/// One rollup transaction covers at most this much arrival time, so a
/// replica catching up after downtime works in bounded steps.
const ROLLUP_CHUNK: chrono::Duration = chrono::Duration::hours(1);
/// Most series a device's listing returns.
pub const MAX_LISTED_SERIES: u32 = 2_000;
/// The fleet exposition leaves out series with no point this recent.
pub const FLEET_FRESH: chrono::Duration = chrono::Duration::hours(1);
/// Series per page the fleet exposition reads from the store.
pub const FLEET_PAGE: u32 = 5_000;
/// Most series one fleet scrape serves.
pub const FLEET_MAX_SERIES: usize = 2_000_000;

/// What is kept, and how often the rollup job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Raw points, from their arrival.
    pub raw: Duration,
    /// 1-minute rollups.
    pub minutely: Duration,
    /// 1-hour rollups (and series with no newer point).
    pub hourly: Duration,
    pub rollup_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        crate::config::RetentionConfig::default().metrics_config()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Invalid(#[from] QueryError),
    #[error(
        "the device has no metric {metric:?}; list its metrics with GET /api/v1/devices/{device}/metrics/series"
    )]
    UnknownMetric { device: String, metric: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Metrics {
    store: Store,
    config: MetricsConfig,
    fleet_page: u32,
}

impl Metrics {
    pub fn new(store: Store, config: MetricsConfig) -> Self {
        Self {
            store,
            config,
            fleet_page: FLEET_PAGE,
        }
    }

    /// Reads the fleet exposition `series` series per page (tests page
    /// small fleets).
    pub fn with_fleet_page(mut self, series: u32) -> Self {
        self.fleet_page = series.max(1);
        self
    }

    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// The rollup job: rolls up what arrived since its last run (all of
    /// it after downtime, in chunks), then deletes what is past its
    /// retention. Idempotent: a run repeated or overlapping another
    /// recomputes the same buckets to the same values.
    pub async fn roll_up(&self, now: DateTime<Utc>) -> Result<RolledUp, StoreError> {
        let mut total = RolledUp::default();
        let mark = self
            .store
            .rollup_done_until()
            .await?
            .map_or(DateTime::<Utc>::MIN_UTC, |done| done - ROLLUP_OVERLAP);
        // The end is inclusive: a point that arrived at `now` is rolled up.
        let end = now + chrono::Duration::milliseconds(1);
        let mut from = mark;
        loop {
            // Skip arrival time with nothing in it (downtime, quiet fleets).
            let first = self.store.first_point_received(from).await?;
            let Some(first) = first.filter(|first| *first < end) else {
                self.store
                    .roll_up_received(from.max(now - ROLLUP_OVERLAP), end)
                    .await?;
                break;
            };
            let to = (first + ROLLUP_CHUNK).min(end);
            let done = self.store.roll_up_received(first, to).await?;
            total.minute_buckets += done.minute_buckets;
            total.hour_buckets += done.hour_buckets;
            if to >= end {
                break;
            }
            from = to;
        }
        let before = |keep: Duration| {
            now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX)
        };
        let deleted = self
            .store
            .prune_metrics(
                before(self.config.raw),
                before(self.config.minutely),
                before(self.config.hourly),
            )
            .await?;
        if deleted > 0 {
            tracing::info!(rows = deleted, "deleted metrics past their retention");
        }
        Ok(total)
    }

    /// The device's series and their newest points.
    pub async fn series(&self, device: &DeviceId) -> Result<SeriesList, StoreError> {
        let mut series = self
            .store
            .list_series(device, None, MAX_LISTED_SERIES + 1)
            .await?;
        let truncated = series.len() > MAX_LISTED_SERIES as usize;
        series.truncate(MAX_LISTED_SERIES as usize);
        Ok(SeriesList {
            device: device.to_string(),
            series: series
                .into_iter()
                .map(|s| SeriesLatest {
                    name: s.name,
                    labels: s.labels,
                    at: s.last_at,
                    value: s.last_value,
                })
                .collect(),
            truncated,
        })
    }

    /// Answers a range query of `metric` of `device` at `now`.
    pub async fn range(
        &self,
        device: &DeviceId,
        metric: &str,
        since: Option<&str>,
        until: Option<&str>,
        step: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<MetricRange, MetricsError> {
        if metric.is_empty() {
            return Err(QueryError {
                field: "metric",
                message: "name the metric: metric=cpu_percent".into(),
            }
            .into());
        }
        let plan = query::plan(now, since, until, step, &self.config)?;
        let mut series = self
            .store
            .list_series(device, Some(metric), query::MAX_SERIES + 1)
            .await?;
        if series.is_empty() {
            return Err(MetricsError::UnknownMetric {
                device: device.to_string(),
                metric: metric.to_owned(),
            });
        }
        let truncated = series.len() > query::MAX_SERIES as usize;
        series.truncate(query::MAX_SERIES as usize);
        let ids: Vec<i64> = series.iter().map(|s| s.id).collect();
        let buckets = self
            .store
            .series_buckets(
                &ids,
                plan.resolution.width_ms(),
                plan.step_ms,
                plan.since,
                plan.until,
            )
            .await?;
        let mut points: HashMap<i64, Vec<RangePoint>> = HashMap::new();
        for bucket in buckets {
            let Some(at) = DateTime::from_timestamp_millis(bucket.start_ms) else {
                continue;
            };
            points
                .entry(bucket.series_id)
                .or_default()
                .push(RangePoint {
                    at,
                    avg: if bucket.count > 0 {
                        bucket.sum / bucket.count as f64
                    } else {
                        0.0
                    },
                    min: bucket.min,
                    max: bucket.max,
                    count: bucket.count,
                });
        }
        Ok(MetricRange {
            device: device.to_string(),
            metric: metric.to_owned(),
            resolution: plan.resolution.as_str().to_owned(),
            step_seconds: u64::try_from(plan.step_ms / 1000).unwrap_or(0),
            since: plan.since,
            until: plan.until,
            series: series
                .into_iter()
                .map(|s| SeriesPoints {
                    points: points.remove(&s.id).unwrap_or_default(),
                    labels: s.labels,
                })
                .collect(),
            truncated,
        })
    }

    /// One page of the fleet's usage, the devices after `after` in name
    /// order: its text, and the device the next page starts after (`None`:
    /// that was the last).
    pub async fn usage_page(
        &self,
        renderer: &mut exposition::Renderer,
        after: Option<String>,
    ) -> Result<(String, Option<String>), StoreError> {
        let records = self
            .store
            .fleet_usage(after.as_deref(), self.fleet_page)
            .await?;
        let mut text = String::with_capacity(records.len() * 256);
        for record in &records {
            let features = crate::telemetry::usage::features(record);
            renderer.push_usage(&record.device, &features, &record.streams, &mut text);
        }
        let next = (records.len() == self.fleet_page as usize)
            .then(|| records.last().map(|r| r.device.clone()))
            .flatten();
        Ok((text, next))
    }

    /// One page of the fleet exposition after `after`: its text, and where
    /// the next page starts (`None`: that was the last). `renderer` carries
    /// which families are typed already.
    pub async fn fleet_page(
        &self,
        renderer: &mut exposition::Renderer,
        after: Option<(String, i64)>,
        now: DateTime<Utc>,
    ) -> Result<(String, Option<(String, i64)>, usize), StoreError> {
        let rows = self
            .store
            .fleet_latest(
                after.as_ref().map(|(name, id)| (name.as_str(), *id)),
                now - FLEET_FRESH,
                self.fleet_page,
            )
            .await?;
        let mut text = String::with_capacity(rows.len() * 96);
        for row in &rows {
            renderer.push(
                &exposition::FleetSample {
                    name: row.name.clone(),
                    device: row.device.clone(),
                    labels: row.labels.clone(),
                    device_labels: row.device_labels.clone(),
                    value: row.value,
                },
                &mut text,
            );
        }
        let next = (rows.len() == self.fleet_page as usize)
            .then(|| rows.last().map(|r| (r.name.clone(), r.id)))
            .flatten();
        Ok((text, next, rows.len()))
    }
}
