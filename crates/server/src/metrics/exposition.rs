//! The fleet's latest values in the Prometheus text format (0.0.4):
//! one family per series name, prefixed `tether_device_`, each sample with
//! a `device` label, the series' own labels and the device's labels as
//! `label_<key>`, every name made to fit Prometheus' rules. After them,
//! each device's usage: bytes per feature as both ends counted them, and
//! records dropped per stream and reason.

use std::collections::HashSet;
use std::fmt::Write;

use tether_proto::telemetry::{FeatureUsage, StreamUsage};

use super::series::Labels;

/// Prometheus' text format, which every scraper reads.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Prefix of every family, apart from tetherd's own `tether_` metrics.
pub const PREFIX: &str = "tether_device_";
/// Bytes per device, feature, direction (`from_device`, `to_device`) and
/// end that counted them (`counted_by`: `tetherd` or `device`).
pub const USAGE_BYTES: &str = "tether_device_usage_bytes_total";
/// Records a device's spool dropped, per stream (`feature`) and `reason`
/// (`spool_full`, `over_budget`).
pub const DROPPED_RECORDS: &str = "tether_device_dropped_records_total";

/// A series' newest value, with what labels it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSample {
    pub name: String,
    pub device: String,
    pub labels: Labels,
    pub device_labels: Labels,
    pub value: f64,
}

/// Writes samples that come ordered by name: each family's `# TYPE` line
/// once, before its first sample.
#[derive(Debug, Default)]
pub struct Renderer {
    families: HashSet<String>,
}

impl Renderer {
    pub fn push(&mut self, sample: &FleetSample, out: &mut String) {
        let family = metric_name(&sample.name);
        if self.families.insert(family.clone()) {
            let _ = writeln!(out, "# TYPE {family} gauge");
        }
        out.push_str(&family);
        out.push('{');
        let mut seen = HashSet::new();
        let mut first = true;
        let mut label = |out: &mut String, key: String, value: &str| {
            if !seen.insert(key.clone()) {
                return;
            }
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{key}=\"{}\"", escape(value));
        };
        label(out, "device".to_owned(), &sample.device);
        // The operator's labels before the device's own: a series label
        // named `label_site` must not stand in for the device's `site`.
        for (key, value) in &sample.device_labels {
            label(out, format!("label_{}", label_name(key)), value);
        }
        for (key, value) in &sample.labels {
            let key = label_name(key);
            // `device` and `label_*` are ours; Prometheus renames such
            // clashes of a target's labels the same way.
            let key = if key == "device" || key.starts_with("label_") {
                format!("exported_{key}")
            } else {
                key
            };
            label(out, key, value);
        }
        let _ = writeln!(out, "}} {}", number(sample.value));
    }
}

impl Renderer {
    /// A device's usage; counts of zero are left out.
    pub fn push_usage(
        &mut self,
        device: &str,
        features: &[FeatureUsage],
        streams: &[StreamUsage],
        out: &mut String,
    ) {
        for f in features {
            let feature = f.feature.as_str();
            for (direction, counted_by, value) in [
                ("from_device", "tetherd", Some(f.received_bytes)),
                ("to_device", "tetherd", Some(f.sent_bytes)),
                ("from_device", "device", f.device_sent_bytes),
                ("to_device", "device", f.device_received_bytes),
            ] {
                let Some(value) = value.filter(|&n| n > 0) else {
                    continue;
                };
                self.counter(
                    USAGE_BYTES,
                    &[
                        ("device", device),
                        ("feature", feature),
                        ("direction", direction),
                        ("counted_by", counted_by),
                    ],
                    value,
                    out,
                );
            }
        }
        for s in streams {
            for (reason, value) in [
                ("spool_full", s.dropped.total),
                ("over_budget", s.dropped.over_budget),
            ] {
                if value > 0 {
                    self.counter(
                        DROPPED_RECORDS,
                        &[
                            ("device", device),
                            ("feature", s.stream.as_str()),
                            ("reason", reason),
                        ],
                        value,
                        out,
                    );
                }
            }
        }
    }

    fn counter(&mut self, family: &str, labels: &[(&str, &str)], value: u64, out: &mut String) {
        if self.families.insert(family.to_owned()) {
            let _ = writeln!(out, "# TYPE {family} counter");
        }
        out.push_str(family);
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape(value));
        }
        let _ = writeln!(out, "}} {value}");
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, prefixed: other characters become `_`.
pub fn metric_name(name: &str) -> String {
    let mut out = String::with_capacity(PREFIX.len() + name.len());
    out.push_str(PREFIX);
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
pub fn label_name(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) || out.starts_with("__") {
        out.insert(0, 'x');
    }
    out
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn names_are_made_to_fit_prometheus_rules() {
        assert_eq!(metric_name("cpu_percent"), "tether_device_cpu_percent");
        assert_eq!(metric_name("tank.level-2"), "tether_device_tank_level_2");
        assert_eq!(label_name("site"), "site");
        assert_eq!(
            label_name("app.kubernetes.io/name"),
            "app_kubernetes_io_name"
        );
        assert_eq!(label_name("2fa"), "x2fa");
        assert_eq!(label_name("__name__"), "x__name__");
        assert_eq!(label_name(""), "x");
    }

    #[test]
    fn each_family_is_typed_once_and_labels_are_escaped_and_never_repeated() {
        let mut renderer = Renderer::default();
        let mut out = String::new();
        let sample = |device: &str, cpu: &str, value: f64| FleetSample {
            name: "cpu_percent".into(),
            device: device.into(),
            labels: labels(&[("cpu", cpu)]),
            device_labels: labels(&[
                ("site", "north \"7\"\\"),
                ("zone-a", "first"),
                ("zone_a", "second"),
            ]),
            value,
        };
        renderer.push(&sample("edge-1", "total", 12.5), &mut out);
        renderer.push(&sample("edge-2", "0", 3.0), &mut out);
        renderer.push(
            &FleetSample {
                name: "tank.level".into(),
                device: "edge-1".into(),
                labels: labels(&[("device", "pump")]),
                device_labels: Labels::new(),
                value: 0.25,
            },
            &mut out,
        );
        assert_eq!(
            out,
            "# TYPE tether_device_cpu_percent gauge\n\
             tether_device_cpu_percent{device=\"edge-1\",label_site=\"north \\\"7\\\"\\\\\",label_zone_a=\"first\",cpu=\"total\"} 12.5\n\
             tether_device_cpu_percent{device=\"edge-2\",label_site=\"north \\\"7\\\"\\\\\",label_zone_a=\"first\",cpu=\"0\"} 3\n\
             # TYPE tether_device_tank_level gauge\n\
             tether_device_tank_level{device=\"edge-1\",exported_device=\"pump\"} 0.25\n"
        );
    }

    #[test]
    fn a_device_cannot_stand_in_for_its_operator_labels() {
        let mut renderer = Renderer::default();
        let mut out = String::new();
        renderer.push(
            &FleetSample {
                name: "tank_level".into(),
                device: "edge-1".into(),
                // What a hostile device pushes through its local API.
                labels: labels(&[("label_site", "elsewhere"), ("label.zone", "z9")]),
                device_labels: labels(&[("site", "north")]),
                value: 1.0,
            },
            &mut out,
        );
        assert_eq!(
            out,
            "# TYPE tether_device_tank_level gauge\n\
             tether_device_tank_level{device=\"edge-1\",label_site=\"north\",exported_label_zone=\"z9\",exported_label_site=\"elsewhere\"} 1\n"
        );
    }
}
