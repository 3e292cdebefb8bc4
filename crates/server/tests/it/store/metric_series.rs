//! Metric series (ADR 0014) on both databases: points, rollups that are
//! exact, idempotent, catch up after downtime and take late points, range
//! queries at each resolution, retention, and the fleet's latest values.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use tether_proto::DeviceId;
use tether_proto::telemetry::{CustomMetric, Dropped, MetricRecord, Records, TelemetryBatch};
use tether_server::metrics::series::{DevicePoints, Point, SeriesKey};
use tether_server::metrics::{Metrics, MetricsConfig, MetricsError};
use tether_server::store::{RefusedSeries, Store};
use tether_server::telemetry::Stored;

use super::{TestDb, at, device, labels, telemetry};

on_both_databases! {
    store: [
        points_roll_up_exactly_and_running_again_changes_nothing,
        late_points_and_downtime_are_caught_up,
        range_queries_say_their_resolution_and_refuse_bad_input,
        each_resolution_is_kept_for_its_own_retention,
        the_fleet_page_holds_fresh_series_by_name_with_device_labels,
        the_fleet_exposition_pages_through_a_fleet_typing_each_family_once,
        points_sent_twice_in_one_write_are_stored_once_across_many_series,
        a_device_creates_at_most_its_series_and_the_refused_are_counted,
        a_batch_sent_again_stores_nothing_and_points_stored_before_are_kept_once,
        a_group_write_keeps_points_stored_before_and_stores_the_rest,
    ],
    db: [],
}

/// Series a device may have, in these tests: more than any makes.
const MAX_SERIES: u64 = 10_000;

fn cpu(at: DateTime<Utc>, value: f64) -> Point {
    Point {
        series: SeriesKey::new("cpu_percent").with("cpu", "total"),
        at,
        value,
    }
}

fn minutes(n: i64) -> Duration {
    Duration::minutes(n)
}

/// Ten points a minute, values `base + i`, over `count` minutes from `from`.
fn ten_a_minute(from: DateTime<Utc>, count: i64, base: f64) -> Vec<Point> {
    (0..count * 10)
        .map(|i| cpu(from + Duration::seconds(i * 6), base + (i % 10) as f64))
        .collect()
}

async fn range(
    metrics: &Metrics,
    device: &DeviceId,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    step: &str,
    now: DateTime<Utc>,
) -> tether_proto::metrics::MetricRange {
    metrics
        .range(
            device,
            "cpu_percent",
            Some(&since.to_rfc3339()),
            Some(&until.to_rfc3339()),
            Some(step),
            now,
        )
        .await
        .expect("a range")
}

/// (avg, min, max, count) of each bucket of the only series.
fn buckets(range: &tether_proto::metrics::MetricRange) -> Vec<(f64, f64, f64, u64)> {
    assert_eq!(range.series.len(), 1, "{range:?}");
    range.series[0]
        .points
        .iter()
        .map(|p| (p.avg, p.min, p.max, p.count))
        .collect()
}

async fn points_roll_up_exactly_and_running_again_changes_nothing(store: Store) {
    let edge = device(&store, "edge-1").await;
    let metrics = Metrics::new(store.clone(), MetricsConfig::default());
    // An hour boundary: at(0) is 22:13:20; start at 23:00 - 2 min.
    let hour = at(0) + minutes(47) - Duration::seconds(20);
    let start = hour - minutes(2);
    let received = start + minutes(4);
    store
        .insert_points(&edge, &ten_a_minute(start, 4, 0.0), received, MAX_SERIES)
        .await
        .expect("stored");
    // The same instants again (a batch sent twice): kept once.
    store
        .insert_points(&edge, &ten_a_minute(start, 1, 100.0), received, MAX_SERIES)
        .await
        .expect("stored again");
    let now = received + Duration::seconds(1);
    let done = metrics.roll_up(now).await.expect("rolls up");
    assert_eq!((done.minute_buckets, done.hour_buckets), (4, 2));
    let again = metrics.roll_up(now).await.expect("rolls up again");
    assert_eq!(
        again.minute_buckets, 4,
        "the overlap recomputes the same buckets"
    );

    let raw = range(&metrics, &edge, start, start + minutes(4), "30s", now).await;
    assert_eq!((raw.resolution.as_str(), raw.step_seconds), ("raw", 30));
    assert_eq!(buckets(&raw)[0], (2.0, 0.0, 4.0, 5));
    let by_minute = range(&metrics, &edge, start, start + minutes(4), "1m", now).await;
    assert_eq!(by_minute.resolution, "1m");
    assert_eq!(buckets(&by_minute), vec![(4.5, 0.0, 9.0, 10); 4]);
    let by_hour = range(&metrics, &edge, start, start + minutes(4), "1h", now).await;
    assert_eq!(by_hour.resolution, "1h");
    assert_eq!(
        buckets(&by_hour),
        vec![(4.5, 0.0, 9.0, 20), (4.5, 0.0, 9.0, 20)],
        "two minutes each side of the hour"
    );
    let series = metrics.series(&edge).await.expect("listed");
    assert_eq!(series.series.len(), 1);
    assert_eq!(series.series[0].labels, labels(&[("cpu", "total")]));
    assert_eq!(series.series[0].value, 9.0, "the newest point");
}

async fn late_points_and_downtime_are_caught_up(store: Store) {
    let edge = device(&store, "edge-1").await;
    let metrics = Metrics::new(store.clone(), MetricsConfig::default());
    let start = at(0) - Duration::seconds(20); // 22:13:00
    store
        .insert_points(
            &edge,
            &ten_a_minute(start, 1, 0.0),
            start + minutes(1),
            MAX_SERIES,
        )
        .await
        .expect("stored");
    metrics.roll_up(start + minutes(1)).await.expect("rolls up");
    // A device that was offline sends the rest of that minute later: the
    // minute and its hour are recomputed with it.
    let late = vec![cpu(start + Duration::seconds(59), 100.0)];
    store
        .insert_points(&edge, &late, start + minutes(30), MAX_SERIES)
        .await
        .expect("stored late");
    // tetherd was down for five hours meanwhile, and more came in.
    let after_downtime = start + minutes(5 * 60);
    store
        .insert_points(
            &edge,
            &ten_a_minute(after_downtime - minutes(10), 1, 50.0),
            after_downtime,
            MAX_SERIES,
        )
        .await
        .expect("stored");
    let now = after_downtime + Duration::seconds(5);
    metrics.roll_up(now).await.expect("catches up");
    let by_minute = range(&metrics, &edge, start, start + minutes(1), "1m", now).await;
    assert_eq!(buckets(&by_minute), vec![(145.0 / 11.0, 0.0, 100.0, 11)]);
    let by_hour = range(&metrics, &edge, start, now, "1h", now).await;
    assert_eq!(by_hour.resolution, "1h");
    let hours = buckets(&by_hour);
    assert_eq!(hours.len(), 2, "{hours:?}");
    assert_eq!(hours[0].3, 11);
    assert_eq!(hours[1], (54.5, 50.0, 59.0, 10));
    assert_eq!(
        store
            .rollup_done_until()
            .await
            .expect("mark")
            .map(|t| t > now),
        Some(true)
    );
}

async fn range_queries_say_their_resolution_and_refuse_bad_input(store: Store) {
    let edge = device(&store, "edge-1").await;
    let metrics = Metrics::new(store.clone(), MetricsConfig::default());
    let now = at(3_600_000);
    store
        .insert_points(
            &edge,
            &ten_a_minute(now - minutes(30), 10, 0.0),
            now,
            MAX_SERIES,
        )
        .await
        .expect("stored");
    let answer = metrics
        .range(&edge, "cpu_percent", None, None, None, now)
        .await
        .expect("defaults: the last hour");
    assert_eq!(
        (answer.resolution.as_str(), answer.step_seconds),
        ("raw", 15)
    );
    assert_eq!(answer.until, now);
    assert_eq!(
        answer.series[0].points.iter().map(|p| p.count).sum::<u64>(),
        100
    );
    let refused = |since: Option<&'static str>, step: Option<&'static str>, metric| {
        let metrics = &metrics;
        let edge = &edge;
        async move {
            metrics
                .range(edge, metric, since, None, step, now)
                .await
                .expect_err("refused")
        }
    };
    assert!(
        matches!(
            refused(None, None, "fan_rpm").await,
            MetricsError::UnknownMetric { .. }
        ),
        "an unknown metric"
    );
    for (since, step, field) in [
        (None, Some("0s"), "step"),
        (Some("2099-01-01T00:00:00Z"), None, "since"),
        (Some("5y"), None, "since"),
        (Some("400d"), None, "since"),
    ] {
        match refused(since, step, "cpu_percent").await {
            MetricsError::Invalid(invalid) => assert_eq!(invalid.field, field, "{invalid}"),
            other => panic!("expected an invalid {field}, got {other}"),
        }
    }
}

async fn each_resolution_is_kept_for_its_own_retention(store: Store) {
    let edge = device(&store, "edge-1").await;
    let metrics = Metrics::new(store.clone(), MetricsConfig::default());
    let start = at(0) - Duration::seconds(20);
    store
        .insert_points(&edge, &ten_a_minute(start, 2, 0.0), start, MAX_SERIES)
        .await
        .expect("stored");
    metrics
        .roll_up(start + Duration::seconds(1))
        .await
        .expect("rolled up");
    // Two days on: raw points are gone, minute rollups answer.
    let later = start + Duration::days(2);
    metrics.roll_up(later).await.expect("pruned");
    let old = range(&metrics, &edge, start, start + minutes(2), "10s", later).await;
    assert_eq!(old.resolution, "1m", "raw points are kept a day");
    assert_eq!(buckets(&old).len(), 2);
    // 40 days on: only the hour remains; the series stays listed.
    let much_later = start + Duration::days(40);
    metrics.roll_up(much_later).await.expect("pruned");
    let hourly = range(&metrics, &edge, start, start + minutes(2), "1m", much_later).await;
    assert_eq!(hourly.resolution, "1h");
    assert_eq!(buckets(&hourly), vec![(4.5, 0.0, 9.0, 20)]);
    // After a year without points, the series goes too.
    metrics
        .roll_up(start + Duration::days(400))
        .await
        .expect("pruned");
    assert!(
        metrics
            .series(&edge)
            .await
            .expect("listed")
            .series
            .is_empty()
    );
}

async fn the_fleet_page_holds_fresh_series_by_name_with_device_labels(store: Store) {
    let edge = device(&store, "edge-1").await;
    let quiet = device(&store, "edge-2").await;
    store
        .set_labels(&edge, &labels(&[("site", "north")]))
        .await
        .expect("labelled");
    let now = at(0);
    let points = vec![
        Point {
            series: SeriesKey::new("load1"),
            at: now,
            value: 0.5,
        },
        cpu(now - Duration::seconds(10), 10.0),
        cpu(now, 20.0),
    ];
    store
        .insert_points(&edge, &points, now, MAX_SERIES)
        .await
        .expect("stored");
    store
        .insert_points(
            &quiet,
            &[cpu(now - Duration::hours(2), 1.0)],
            now,
            MAX_SERIES,
        )
        .await
        .expect("stored");
    let rows = store
        .fleet_latest(None, now - Duration::hours(1), 10)
        .await
        .expect("a page");
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.device.as_str(), r.value))
        .collect();
    assert_eq!(
        got,
        [("cpu_percent", "edge-1", 20.0), ("load1", "edge-1", 0.5)]
    );
    assert_eq!(rows[0].device_labels, labels(&[("site", "north")]));
    let next = store
        .fleet_latest(
            Some((rows[0].name.as_str(), rows[0].id)),
            now - Duration::hours(1),
            10,
        )
        .await
        .expect("the next page");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].name, "load1");
}

async fn the_fleet_exposition_pages_through_a_fleet_typing_each_family_once(store: Store) {
    use tether_server::metrics::exposition::Renderer;
    let now = at(0);
    for name in ["edge-1", "edge-2", "edge-3"] {
        let edge = device(&store, name).await;
        let points: Vec<Point> = ["cpu_percent", "load1", "uptime_seconds"]
            .iter()
            .map(|metric| Point {
                series: SeriesKey::new(*metric),
                at: now,
                value: 1.0,
            })
            .collect();
        store
            .insert_points(&edge, &points, now, MAX_SERIES)
            .await
            .expect("stored");
    }
    // Pages of two series: families straddle pages.
    let metrics = Metrics::new(store.clone(), MetricsConfig::default()).with_fleet_page(2);
    let mut renderer = Renderer::default();
    let mut text = String::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let (page, next, _) = metrics
            .fleet_page(&mut renderer, after, now)
            .await
            .expect("a page");
        text.push_str(&page);
        pages += 1;
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 5, "9 series in pages of 2");
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
    assert_eq!(
        types,
        [
            "# TYPE tether_device_cpu_percent gauge",
            "# TYPE tether_device_load1 gauge",
            "# TYPE tether_device_uptime_seconds gauge",
        ]
    );
    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(samples.len(), 9, "{text}");
    // Each family's samples follow its TYPE line, together.
    let families: Vec<&str> = samples
        .iter()
        .map(|l| l.split('{').next().unwrap_or(""))
        .collect();
    let mut grouped = families.clone();
    grouped.dedup();
    assert_eq!(grouped.len(), 3, "{text}");
}

/// A write of more series and points than one statement holds, with the
/// same instant of a series several times (labels in another order are
/// the same series): each series once, each instant once (the first
/// value), the newest point on the series' row.
async fn points_sent_twice_in_one_write_are_stored_once_across_many_series(store: Store) {
    let edge = device(&store, "edge-1").await;
    let now = at(0);
    let sensor = |i: usize, at: DateTime<Utc>, value: f64| Point {
        series: SeriesKey::new("temperature_celsius")
            .with("sensor", format!("s{i:04}"))
            .with("room", "a"),
        at,
        value,
    };
    let mut points: Vec<Point> = (0..1_200)
        .flat_map(|i| (0..2).map(move |k| sensor(i, now - Duration::seconds(k), k as f64)))
        .collect();
    points.push(Point {
        series: SeriesKey::new("temperature_celsius")
            .with("room", "a")
            .with("sensor", "s0007"),
        at: now,
        value: 99.0,
    });
    points.push(sensor(7, now - Duration::seconds(30), 98.0));
    store
        .insert_points(&edge, &points, now, MAX_SERIES)
        .await
        .expect("stored");
    store
        .insert_points(&edge, &points[..10], now, MAX_SERIES)
        .await
        .expect("stored again");
    let series = store
        .list_series(&edge, Some("temperature_celsius"), 5_000)
        .await
        .expect("series");
    assert_eq!(series.len(), 1_200);
    let s7 = series
        .iter()
        .find(|s| s.labels["sensor"] == "s0007")
        .expect("sensor 7");
    assert_eq!((s7.last_at, s7.last_value), (now, 0.0));
    let buckets = store
        .series_buckets(
            &[s7.id],
            1,
            1,
            now - Duration::minutes(1),
            now + Duration::seconds(1),
        )
        .await
        .expect("points");
    let got: Vec<_> = buckets
        .iter()
        .map(|b| (b.start_ms, b.sum, b.count))
        .collect();
    let ms = |t: DateTime<Utc>| t.timestamp_millis();
    assert_eq!(
        got,
        [
            (ms(now - Duration::seconds(30)), 98.0, 1),
            (ms(now - Duration::seconds(1)), 1.0, 1),
            (ms(now), 0.0, 1),
        ]
    );
    let all = store
        .series_buckets(
            &series.iter().map(|s| s.id).collect::<Vec<_>>(),
            1,
            1,
            now - Duration::minutes(1),
            now + Duration::seconds(1),
        )
        .await
        .expect("points");
    assert_eq!(all.iter().map(|b| b.count).sum::<u64>(), 2_401);
}

/// One device cannot crowd the fleet's series: beyond its limit, new
/// series are refused (the first to come kept) with their points, while
/// its existing series and other devices' go on; the refusals are counted
/// in its usage.
async fn a_device_creates_at_most_its_series_and_the_refused_are_counted(store: Store) {
    let edge = device(&store, "edge-1").await;
    let other = device(&store, "edge-2").await;
    let now = at(0);
    let sensor = |i: usize, at: DateTime<Utc>| Point {
        series: SeriesKey::new("temperature_celsius").with("sensor", format!("s{i}")),
        at,
        value: i as f64,
    };
    let points: Vec<Point> = (0..5)
        .flat_map(|i| [sensor(i, now - Duration::seconds(1)), sensor(i, now)])
        .collect();
    let refused = store
        .insert_points(&edge, &points, now, 3)
        .await
        .expect("stored");
    assert_eq!(
        refused,
        [RefusedSeries {
            device: edge.clone(),
            series: 2,
            points: 4
        }]
    );
    let names = |series: Vec<tether_server::store::StoredSeries>| {
        series
            .into_iter()
            .map(|s| s.labels["sensor"].clone())
            .collect::<Vec<_>>()
    };
    let kept = store.list_series(&edge, None, 10).await.expect("series");
    assert_eq!(names(kept), ["s0", "s1", "s2"], "the first to come");

    // At the limit: an existing series goes on, a new one is refused.
    let later = now + Duration::seconds(1);
    let refused = store
        .insert_points(&edge, &[sensor(0, later), sensor(9, later)], later, 3)
        .await
        .expect("stored");
    assert_eq!((refused[0].series, refused[0].points), (1, 1));
    let kept = store.list_series(&edge, None, 10).await.expect("series");
    assert_eq!(kept.len(), 3);
    assert_eq!(kept[0].last_at, later, "s0 moved on");
    // Another device has its own limit.
    assert!(
        store
            .insert_points(&other, &points, now, 3)
            .await
            .expect("stored")
            .len()
            == 1
    );
    let usage = store.device_usage(&edge).await.expect("usage");
    assert_eq!(
        (usage.metric_series_refused, usage.metric_points_refused),
        (3, 5)
    );
}

fn sensor(sensor: u64, ms: i64, value: f64) -> MetricRecord {
    MetricRecord::Custom(CustomMetric {
        name: "temperature_celsius".into(),
        value,
        labels: [("sensor".to_owned(), format!("s{sensor}"))].into(),
        at: at(ms),
    })
}

fn metric_batch(spool: &str, first_seq: u64, records: Vec<MetricRecord>) -> Arc<TelemetryBatch> {
    Arc::new(TelemetryBatch {
        spool_id: spool.into(),
        first_seq,
        records: Records::Metrics(records),
        dropped: Dropped::default(),
        replay: false,
        usage: Vec::new(),
    })
}

/// (ms since `at(0)`, value) of every raw point of the device's series
/// `s{sensor}`, by time.
async fn sensor_points(store: &Store, device: &DeviceId, sensor: u64) -> Vec<(i64, f64)> {
    let series = store
        .list_series(device, Some("temperature_celsius"), 100)
        .await
        .expect("series");
    let series = series
        .iter()
        .find(|s| s.labels["sensor"] == format!("s{sensor}"))
        .expect("the sensor's series");
    let buckets = store
        .series_buckets(&[series.id], 1, 1, at(-1), at(100_000))
        .await
        .expect("points");
    assert!(buckets.iter().all(|b| b.count == 1), "{buckets:?}");
    buckets
        .iter()
        .map(|b| (b.start_ms - at(0).timestamp_millis(), b.sum))
        .collect()
}

/// Through the writers that store several devices' batches in one
/// transaction: a batch sent again meets its spool's cursor and stores
/// nothing, which is why points are inserted without a per-point conflict
/// check on PostgreSQL (ADR 0018, amendment); each series is created once;
/// an instant repeated within a batch keeps its first value; and a batch
/// of another spool repeating stored instants (an application pushing a
/// sample twice) keeps the stored points and stores its new ones, while
/// another device's batch stored beside it is unharmed.
async fn a_batch_sent_again_stores_nothing_and_points_stored_before_are_kept_once(store: Store) {
    let edge = device(&store, "edge-1").await;
    let other = device(&store, "edge-2").await;
    let telemetry = telemetry(&store, 2);
    // Two sensors, a point each per ms over 0..100, and ms 0 of s0 again.
    let mut records: Vec<MetricRecord> = (0..200)
        .map(|k| sensor(k % 2, (k / 2) as i64, k as f64))
        .collect();
    records.push(sensor(0, 0, 999.0));
    let first = metric_batch("a", 0, records);
    assert_eq!(
        telemetry
            .ingest(&edge, first.clone(), 1)
            .await
            .expect("stored"),
        Stored::New {
            records: 201,
            gap: 0
        }
    );
    assert_eq!(
        telemetry
            .ingest(&edge, first, 1)
            .await
            .expect("acknowledged"),
        Stored::Duplicate
    );
    let repeat = metric_batch("b", 0, (90..110).map(|ms| sensor(0, ms, -1.0)).collect());
    let beside = metric_batch("a", 0, (0..50).map(|ms| sensor(1, ms, 7.0)).collect());
    let (repeat, beside) = tokio::join!(
        telemetry.ingest(&edge, repeat, 1),
        telemetry.ingest(&other, beside, 1)
    );
    assert_eq!(
        repeat.expect("stored"),
        Stored::New {
            records: 20,
            gap: 0
        }
    );
    assert_eq!(
        beside.expect("stored"),
        Stored::New {
            records: 50,
            gap: 0
        }
    );
    let series = store.list_series(&edge, None, 10).await.expect("series");
    assert_eq!(series.len(), 2, "{series:?}");
    let expected: Vec<(i64, f64)> = (0..100)
        .map(|ms| (ms, ms as f64 * 2.0))
        .chain((100..110).map(|ms| (ms, -1.0)))
        .collect();
    assert_eq!(sensor_points(&store, &edge, 0).await, expected);
    let expected: Vec<(i64, f64)> = (0..100).map(|ms| (ms, ms as f64 * 2.0 + 1.0)).collect();
    assert_eq!(sensor_points(&store, &edge, 1).await, expected);
    let expected: Vec<(i64, f64)> = (0..50).map(|ms| (ms, 7.0)).collect();
    assert_eq!(sensor_points(&store, &other, 1).await, expected);
}

/// One transaction storing two devices' points, some of one device's
/// stored before: those keep their values, every other point is stored,
/// and range queries read them all, raw and rolled up.
async fn a_group_write_keeps_points_stored_before_and_stores_the_rest(store: Store) {
    let edge = device(&store, "edge-1").await;
    let other = device(&store, "edge-2").await;
    // A whole minute: at(0) is 22:13:20.
    let start = at(0) + Duration::seconds(40);
    let points = |from: i64, to: i64, value: f64| -> Vec<Point> {
        (from..to)
            .map(|s| cpu(start + Duration::seconds(s), value))
            .collect()
    };
    store
        .insert_points(&edge, &points(0, 60, 1.0), start, MAX_SERIES)
        .await
        .expect("stored");
    let again = DevicePoints::new(&edge, &points(30, 120, 2.0));
    let fresh = DevicePoints::new(&other, &points(0, 120, 3.0));
    let received = start + minutes(2);
    let mut tx = store.begin_telemetry().await.expect("begin");
    let refused = tx
        .insert_points(&[(&again, 0), (&fresh, 0)], received, MAX_SERIES)
        .await
        .expect("stored");
    assert!(refused.is_empty(), "{refused:?}");
    tx.commit().await.expect("committed");
    let metrics = Metrics::new(store.clone(), MetricsConfig::default());
    let now = received + Duration::seconds(1);
    let until = start + minutes(2);
    let raw = range(&metrics, &edge, start, until, "30s", now).await;
    assert_eq!(raw.resolution, "raw");
    assert_eq!(
        buckets(&raw),
        [
            (1.0, 1.0, 1.0, 30),
            (1.0, 1.0, 1.0, 30),
            (2.0, 2.0, 2.0, 30),
            (2.0, 2.0, 2.0, 30)
        ],
        "the first minute as stored before, the second new"
    );
    let raw = range(&metrics, &other, start, until, "30s", now).await;
    assert_eq!(buckets(&raw), vec![(3.0, 3.0, 3.0, 30); 4]);
    metrics.roll_up(now).await.expect("rolls up");
    let by_minute = range(&metrics, &edge, start, until, "1m", now).await;
    assert_eq!(by_minute.resolution, "1m");
    assert_eq!(
        buckets(&by_minute),
        [(1.0, 1.0, 1.0, 60), (2.0, 2.0, 2.0, 60)]
    );
}
