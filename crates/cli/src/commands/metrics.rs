//! `tether metrics DEVICE`: the latest value of each of a device's metric
//! series, or with `--metric` one metric over a window, drawn as a chart.

use chrono::{DateTime, Utc};
use tether_proto::DeviceId;
use tether_proto::metrics::{MetricRange, SeriesLatest, SeriesPoints};

use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  # The latest value of every series (agents send host metrics every
  # metricsConfig.intervalSeconds of the device's spec, 60 s by default)
  tether metrics edge-1
  # One metric over the last 6 hours, in 5-minute buckets, as a chart
  tether metrics edge-1 --metric cpu_percent --since 6h --step 5m
  # The points themselves
  tether metrics edge-1 --metric net_rx_bytes_per_second --since 1d -o json";

/// Chart width in columns when the terminal's is unknown.
const DEFAULT_WIDTH: usize = 60;

/// Show a device's metrics: the latest values, or one metric over time.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Metrics {
    /// The device's name.
    device: DeviceId,
    /// The metric to chart, e.g. cpu_percent (the table without it lists them).
    #[arg(long)]
    metric: Option<String>,
    /// Start of the window: a duration before now (90s, 15m, 1h, 7d) or RFC 3339.
    #[arg(long, default_value = "1h", requires = "metric")]
    since: String,
    /// End of the window, as --since. Default: now.
    #[arg(long, requires = "metric")]
    until: Option<String>,
    /// Bucket width (10s, 1m, 1h). Default: about 240 buckets.
    #[arg(long, requires = "metric")]
    step: Option<String>,
    /// Without --metric: at most this many series in the table.
    #[arg(long, conflicts_with = "metric", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    limit: Option<usize>,
}

impl Metrics {
    pub fn description(&self) -> String {
        match &self.metric {
            Some(metric) => format!("get metric {metric:?} of device {:?}", self.device.as_str()),
            None => format!("get the metrics of device {:?}", self.device.as_str()),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        let Some(metric) = &self.metric else {
            let mut list = client.metric_series(self.device.as_str()).await?;
            if let Some(limit) = self.limit {
                list.series.truncate(limit);
            }
            if list.series.is_empty() && ctx.output == OutputFormat::Table {
                eprintln!(
                    "No metrics from device {:?} yet; its agent sends host metrics every \
                     metricsConfig.intervalSeconds of its spec (60 s by default).",
                    self.device.as_str()
                );
                return Ok(Outcome::Success);
            }
            let now = Utc::now();
            output::print(ctx.output, &list.series, |series: &Vec<SeriesLatest>| {
                table(now, series)
            })?;
            return Ok(Outcome::Success);
        };
        let mut query = vec![("metric", metric.clone()), ("since", self.since.clone())];
        if let Some(until) = &self.until {
            query.push(("until", until.clone()));
        }
        if let Some(step) = &self.step {
            query.push(("step", step.clone()));
        }
        let range = client.metric_range(self.device.as_str(), &query).await?;
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .map_or(DEFAULT_WIDTH, |c| c.saturating_sub(50).clamp(10, 200));
        output::print(ctx.output, &range, |range: &MetricRange| {
            chart(range, width)
        })?;
        Ok(Outcome::Success)
    }
}

fn table(now: DateTime<Utc>, series: &[SeriesLatest]) -> String {
    output::columns(
        ["METRIC", "LABELS", "VALUE", "AGE"],
        series
            .iter()
            .map(|s| {
                [
                    s.name.clone(),
                    labels(&s.labels),
                    value(&s.name, s.value),
                    output::age(now, s.at),
                ]
            })
            .collect(),
    )
}

fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A value as a person reads it: bytes in binary units, percentages with
/// a sign, rates per second, other numbers to three significant places.
fn value(name: &str, value: f64) -> String {
    if name.ends_with("_bytes") && value >= 0.0 {
        return output::bytes(value.round() as u64);
    }
    if name.ends_with("_bytes_per_second") && value >= 0.0 {
        return format!("{}/s", output::bytes(value.round() as u64));
    }
    if name.ends_with("_percent") {
        return format!("{value:.1}%");
    }
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return format!("{value:.0}");
    }
    let digits = if value.abs() >= 100.0 { 1 } else { 2 };
    format!("{value:.digits$}")
}

const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The sparkline of `series` over `since..until` in `width` columns: each
/// column the average of the buckets in it, scaled from the series' min
/// to its max; a blank where there are no points.
pub fn sparkline(
    series: &SeriesPoints,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    width: usize,
) -> String {
    let span = (until - since).num_milliseconds().max(1) as f64;
    let mut sums = vec![(0.0f64, 0u64); width];
    for point in &series.points {
        let offset = (point.at - since).num_milliseconds() as f64 / span;
        let column = ((offset * width as f64).floor().max(0.0) as usize).min(width - 1);
        sums[column].0 += point.avg;
        sums[column].1 += 1;
    }
    let (lo, hi) = series
        .points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.avg), hi.max(p.avg))
        });
    sums.iter()
        .map(|&(sum, n)| {
            if n == 0 {
                return ' ';
            }
            let avg = sum / n as f64;
            let level = if hi > lo {
                ((avg - lo) / (hi - lo) * 7.0).round() as usize
            } else {
                3
            };
            BLOCKS[level.min(7)]
        })
        .collect()
}

/// The chart of a range: a heading, one sparkline per series with its
/// min, max and last value, and a time axis.
pub fn chart(range: &MetricRange, width: usize) -> String {
    let width = width.max(10);
    let mut out = format!(
        "{} of {} ({} points, {}s buckets)\n",
        range.metric, range.device, range.resolution, range.step_seconds
    );
    let names: Vec<String> = range
        .series
        .iter()
        .map(|s| {
            let l = labels(&s.labels);
            if l.is_empty() { "-".to_owned() } else { l }
        })
        .collect();
    let pad = names.iter().map(|n| n.chars().count()).max().unwrap_or(1);
    for (name, series) in names.iter().zip(&range.series) {
        let line = sparkline(series, range.since, range.until, width);
        let stats = match (series.points.first(), series.points.last()) {
            (Some(_), Some(last)) => {
                let min = series
                    .points
                    .iter()
                    .map(|p| p.min)
                    .fold(f64::INFINITY, f64::min);
                let max = series
                    .points
                    .iter()
                    .map(|p| p.max)
                    .fold(f64::NEG_INFINITY, f64::max);
                format!(
                    "min {}  max {}  last {}",
                    value(&range.metric, min),
                    value(&range.metric, max),
                    value(&range.metric, last.avg)
                )
            }
            _ => "no points in the window".to_owned(),
        };
        out.push_str(&format!("{name:<pad$}  {line}  {stats}\n"));
    }
    let time = |t: DateTime<Utc>| {
        if range.until - range.since > chrono::Duration::days(1) {
            t.format("%m-%d %H:%M").to_string()
        } else {
            t.format("%H:%M:%S").to_string()
        }
    };
    let (start, end) = (time(range.since), format!("{} UTC", time(range.until)));
    let gap = width
        .saturating_sub(start.chars().count() + end.chars().count())
        .max(1);
    out.push_str(&format!("{:pad$}  {start}{:gap$}{end}\n", "", ""));
    if range.truncated {
        out.push_str("(more series than shown; the first 100 by labels)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use tether_proto::metrics::RangePoint;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("valid")
    }

    fn point(seconds: i64, avg: f64) -> RangePoint {
        RangePoint {
            at: at(seconds),
            avg,
            min: avg - 1.0,
            max: avg + 1.0,
            count: 4,
        }
    }

    #[test]
    fn a_sparkline_scales_from_min_to_max_and_leaves_gaps_blank() {
        let series = SeriesPoints {
            labels: Default::default(),
            points: vec![
                point(0, 0.0),
                point(10, 50.0),
                point(20, 100.0),
                point(50, 100.0),
            ],
        };
        assert_eq!(sparkline(&series, at(0), at(60), 6), "▁▅█  █");
        let flat = SeriesPoints {
            labels: Default::default(),
            points: vec![point(0, 7.0), point(30, 7.0)],
        };
        assert_eq!(sparkline(&flat, at(0), at(60), 4), "▄ ▄ ");
    }

    #[test]
    fn a_chart_has_a_line_per_series_with_its_range_and_a_time_axis() {
        let range = MetricRange {
            device: "edge-1".into(),
            metric: "cpu_percent".into(),
            resolution: "raw".into(),
            step_seconds: 10,
            since: at(0),
            until: at(60),
            series: vec![
                SeriesPoints {
                    labels: [("cpu".to_owned(), "total".to_owned())].into(),
                    points: vec![point(0, 10.0), point(30, 20.0)],
                },
                SeriesPoints {
                    labels: [("cpu".to_owned(), "0".to_owned())].into(),
                    points: vec![],
                },
            ],
            truncated: false,
        };
        let text = chart(&range, 12);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "cpu_percent of edge-1 (raw points, 10s buckets)");
        assert_eq!(
            lines[1],
            "cpu=total  ▁     █       min 9.0%  max 21.0%  last 20.0%"
        );
        assert_eq!(lines[2], "cpu=0                    no points in the window");
        assert_eq!(lines[3], "           08:00:00 08:01:00 UTC");
    }

    #[test]
    fn the_latest_values_table_is_human_readable() {
        let now = at(0);
        let series = vec![
            SeriesLatest {
                name: "memory_used_bytes".into(),
                labels: Default::default(),
                at: now - TimeDelta::seconds(3),
                value: 1024.0 * 1024.0 * 1024.0,
            },
            SeriesLatest {
                name: "net_rx_bytes_per_second".into(),
                labels: [("iface".to_owned(), "eth0".to_owned())].into(),
                at: now,
                value: 1536.4,
            },
            SeriesLatest {
                name: "load1".into(),
                labels: Default::default(),
                at: now,
                value: 0.523,
            },
        ];
        let text = table(now, &series);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            rows,
            [
                vec!["memory_used_bytes", "1.0 GiB", "3s"],
                vec!["net_rx_bytes_per_second", "iface=eth0", "1.5 KiB/s", "0s"],
                vec!["load1", "0.52", "0s"],
            ]
        );
    }
}
