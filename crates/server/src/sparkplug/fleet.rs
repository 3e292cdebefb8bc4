//! The fleet as Sparkplug sees it, without IO: which edge node each device
//! belongs to, the metrics it publishes, the monitor's child device with
//! the alerts, and the updates that take one view to the next, so a pass
//! sends only what changed.

use std::collections::BTreeMap;

use tether_proto::alerts::{Alert, AlertState};
use tether_proto::api::Labels;

use super::node::{Metrics, Value};
use super::payload::DataType;
use super::publisher::DeviceUpdate;
use super::topics::{EdgeDeviceId, EdgeNodeId, GroupId, IdError};

/// One Sparkplug edge node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeKey {
    pub group: GroupId,
    pub node: EdgeNodeId,
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.group, self.node)
    }
}

/// Each edge node's devices (those online) and their metrics.
pub type FleetView = BTreeMap<NodeKey, BTreeMap<EdgeDeviceId, Metrics>>;

/// Where devices go: the defaults, and the labels that override them.
#[derive(Debug, Clone)]
pub struct Placement {
    pub group: GroupId,
    pub node: EdgeNodeId,
    pub group_label: String,
    pub node_label: String,
}

/// Why a device is left out of Sparkplug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("its label {label} is not a valid Sparkplug id")]
    Label {
        label: String,
        #[source]
        source: IdError,
    },
    #[error("its name is not a valid Sparkplug device id")]
    Name(#[source] IdError),
}

impl Placement {
    /// The device's edge node, and its Sparkplug device id (its name).
    pub fn place(
        &self,
        name: &str,
        labels: &Labels,
    ) -> Result<(NodeKey, EdgeDeviceId), PlacementError> {
        let label_error = |label: &str| {
            let label = label.to_owned();
            move |source| PlacementError::Label { label, source }
        };
        let group = match labels.get(&self.group_label) {
            Some(group) => GroupId::new(group.as_str()).map_err(label_error(&self.group_label))?,
            None => self.group.clone(),
        };
        let node = match labels.get(&self.node_label) {
            Some(node) => EdgeNodeId::new(node.as_str()).map_err(label_error(&self.node_label))?,
            None => self.node.clone(),
        };
        // A tether device name is always a valid Sparkplug id (lowercase
        // letters, digits and '-'); checked all the same.
        let device = EdgeDeviceId::new(name).map_err(PlacementError::Name)?;
        Ok((NodeKey { group, node }, device))
    }
}

/// The device's agent version.
pub const AGENT_VERSION_METRIC: &str = "Tether/Agent Version";

/// The host series published, each as `Host/<series>`: the series name, and
/// the one label value picked when the series has several.
pub const HOST_SERIES: [(&str, Option<(&str, &str)>); 11] = [
    ("cpu_percent", Some(("cpu", "total"))),
    ("memory_used_bytes", None),
    ("memory_available_bytes", None),
    ("memory_total_bytes", None),
    ("disk_used_bytes", Some(("mount", "/"))),
    ("disk_total_bytes", Some(("mount", "/"))),
    ("load1", None),
    ("load5", None),
    ("load15", None),
    ("uptime_seconds", None),
    ("processes", None),
];

/// The series names of [`HOST_SERIES`], for the store's query.
pub fn host_series_names() -> Vec<&'static str> {
    HOST_SERIES.iter().map(|(name, _)| *name).collect()
}

/// Whether a stored series is the one [`HOST_SERIES`] publishes.
fn host_metric_name(series: &str, labels: &Labels) -> Option<String> {
    let (name, pick) = HOST_SERIES.iter().find(|(name, _)| *name == series)?;
    let matches = match pick {
        Some((key, value)) => {
            labels.len() == 1 && labels.get(*key).map(String::as_str) == Some(value)
        }
        None => labels.is_empty(),
    };
    matches.then(|| format!("Host/{name}"))
}

/// A device's metrics: every host metric is declared, null until a value
/// is stored, so the set never changes and updates are DDATA, not births.
pub fn device_metrics<'a>(
    agent_version: Option<&str>,
    values: impl IntoIterator<Item = (&'a str, &'a Labels, f64)>,
) -> Metrics {
    let mut metrics = Metrics::new();
    metrics.insert(
        AGENT_VERSION_METRIC.to_owned(),
        agent_version.map_or(Value::Null(DataType::String), |version| {
            Value::String(version.to_owned())
        }),
    );
    for (name, _) in HOST_SERIES {
        metrics.insert(format!("Host/{name}"), Value::Null(DataType::Double));
    }
    for (series, labels, value) in values {
        if let Some(name) = host_metric_name(series, labels) {
            metrics.insert(name, Value::Double(value));
        }
    }
    metrics
}

/// The monitor's child device of `node`: named after it, with a `:` no
/// tether device name has, so it never meets a real device.
pub fn monitor_device(node: &EdgeNodeId) -> Result<EdgeDeviceId, IdError> {
    EdgeDeviceId::new(format!("{node}:monitor"))
}

pub const FIRING_METRIC: &str = "Alerts/Firing";
pub const ACKNOWLEDGED_METRIC: &str = "Alerts/Acknowledged";

/// The monitor device's metrics: how many of the node's alerts are firing
/// and acknowledged, and `Alerts/<rule>/<device>` true for each of them.
/// An alert that resolved stays, false, from `previous` until the set of
/// alerts grows: that birth leaves it out, so the set stays bounded by the
/// open alerts.
pub fn monitor_metrics(open: &[&Alert], previous: Option<&Metrics>) -> Metrics {
    let count = |state| {
        let n = open.iter().filter(|alert| alert.state == state).count();
        Value::Int64(i64::try_from(n).unwrap_or(i64::MAX))
    };
    let mut metrics = Metrics::new();
    metrics.insert(FIRING_METRIC.to_owned(), count(AlertState::Firing));
    metrics.insert(
        ACKNOWLEDGED_METRIC.to_owned(),
        count(AlertState::Acknowledged),
    );
    for alert in open {
        metrics.insert(
            format!("Alerts/{}/{}", alert.rule, alert.device),
            Value::Boolean(true),
        );
    }
    if let Some(previous) = previous {
        let grows = metrics.keys().any(|name| !previous.contains_key(name));
        if !grows {
            for name in previous.keys() {
                metrics.entry(name.clone()).or_insert(Value::Boolean(false));
            }
        }
    }
    metrics
}

/// The updates that take a node's devices from `previous` to `next`: a
/// birth for a new device or one whose set of metrics changed, data with
/// only the changed values, a death for a device gone.
pub fn device_updates(
    previous: &BTreeMap<EdgeDeviceId, Metrics>,
    next: &BTreeMap<EdgeDeviceId, Metrics>,
) -> Vec<DeviceUpdate> {
    let mut updates = Vec::new();
    for (device, metrics) in next {
        match previous.get(device) {
            None => updates.push(DeviceUpdate::Birth {
                device: device.clone(),
                metrics: metrics.clone(),
            }),
            Some(before) if !same_shape(before, metrics) => updates.push(DeviceUpdate::Birth {
                device: device.clone(),
                metrics: metrics.clone(),
            }),
            Some(before) => {
                let changed: Metrics = metrics
                    .iter()
                    .filter(|(name, value)| before.get(*name) != Some(*value))
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect();
                if !changed.is_empty() {
                    updates.push(DeviceUpdate::Data {
                        device: device.clone(),
                        metrics: changed,
                    });
                }
            }
        }
    }
    for device in previous.keys() {
        if !next.contains_key(device) {
            updates.push(DeviceUpdate::Death {
                device: device.clone(),
            });
        }
    }
    updates
}

/// The same metric names with the same data types: DDATA may carry it.
fn same_shape(a: &Metrics, b: &Metrics) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((name_a, a), (name_b, b))| name_a == name_b && a.data_type() == b.data_type())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use tether_proto::alerts::Severity;

    use super::*;

    fn placement() -> Placement {
        Placement {
            group: GroupId::new("tether").expect("valid"),
            node: EdgeNodeId::new("tetherd").expect("valid"),
            group_label: "sparkplug.tether.io/group".into(),
            node_label: "sparkplug.tether.io/node".into(),
        }
    }

    fn labels(entries: &[(&str, &str)]) -> Labels {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn device(name: &str) -> EdgeDeviceId {
        EdgeDeviceId::new(name).expect("valid")
    }

    fn alert(rule: &str, device: &str, state: AlertState) -> Alert {
        Alert {
            id: 1,
            rule: rule.into(),
            device: device.into(),
            severity: Severity::Warning,
            state,
            summary: String::new(),
            labels: Labels::new(),
            started_at: Utc::now(),
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
        }
    }

    #[test]
    fn labels_override_the_default_group_and_node_and_bad_ids_are_refused() {
        let placement = placement();
        let (key, id) = placement.place("pump-1", &Labels::new()).expect("valid");
        assert_eq!(key.to_string(), "tether/tetherd");
        assert_eq!(id.as_str(), "pump-1");
        let (key, _) = placement
            .place(
                "pump-1",
                &labels(&[
                    ("sparkplug.tether.io/group", "plant-a"),
                    ("sparkplug.tether.io/node", "line-3"),
                ]),
            )
            .expect("valid");
        assert_eq!(key.to_string(), "plant-a/line-3");
        let refused = placement
            .place("pump-1", &labels(&[("sparkplug.tether.io/node", "a+b")]))
            .expect_err("'+' is a wildcard");
        assert_eq!(
            tether_proto::error_chain(&refused),
            "its label sparkplug.tether.io/node is not a valid Sparkplug id: the Sparkplug edge node id \"a+b\" contains '+'; Sparkplug ids may not contain '/', '+', '#' or NUL"
        );
    }

    #[test]
    fn every_host_metric_is_declared_and_only_the_picked_series_fill_them() {
        let none = Labels::new();
        let total = labels(&[("cpu", "total")]);
        let core = labels(&[("cpu", "0")]);
        let root = labels(&[("mount", "/")]);
        let metrics = device_metrics(
            Some("1.2.3"),
            [
                ("cpu_percent", &core, 90.0),
                ("cpu_percent", &total, 12.5),
                ("disk_used_bytes", &root, 4.0),
                ("load1", &none, 0.5),
            ],
        );
        assert_eq!(metrics.len(), 1 + HOST_SERIES.len());
        assert_eq!(
            metrics["Tether/Agent Version"],
            Value::String("1.2.3".into())
        );
        assert_eq!(metrics["Host/cpu_percent"], Value::Double(12.5));
        assert_eq!(metrics["Host/disk_used_bytes"], Value::Double(4.0));
        assert_eq!(metrics["Host/load1"], Value::Double(0.5));
        assert_eq!(metrics["Host/load5"], Value::Null(DataType::Double));
        let unknown = device_metrics(None, []);
        assert_eq!(
            unknown["Tether/Agent Version"],
            Value::Null(DataType::String)
        );
        assert!(
            same_shape(&metrics, &unknown),
            "values never change the shape"
        );
    }

    #[test]
    fn only_changes_are_sent() {
        let a = device_metrics(Some("1"), []);
        let mut a2 = a.clone();
        a2.insert("Host/load1".into(), Value::Double(1.0));
        let previous = BTreeMap::from([(device("a"), a.clone()), (device("gone"), a.clone())]);
        let next = BTreeMap::from([(device("a"), a2), (device("new"), a.clone())]);
        assert_eq!(
            device_updates(&previous, &next),
            [
                DeviceUpdate::Data {
                    device: device("a"),
                    metrics: Metrics::from([("Host/load1".to_owned(), Value::Double(1.0))]),
                },
                DeviceUpdate::Birth {
                    device: device("new"),
                    metrics: a.clone(),
                },
                DeviceUpdate::Death {
                    device: device("gone"),
                },
            ]
        );
        assert_eq!(
            device_updates(&next, &next),
            [],
            "nothing changed, nothing sent"
        );
    }

    #[test]
    fn a_changed_set_of_metrics_is_a_new_birth() {
        let before = Metrics::from([("x".to_owned(), Value::Int64(1))]);
        let after = Metrics::from([("x".to_owned(), Value::Double(1.0))]);
        let updates = device_updates(
            &BTreeMap::from([(device("d"), before)]),
            &BTreeMap::from([(device("d"), after.clone())]),
        );
        assert_eq!(
            updates,
            [DeviceUpdate::Birth {
                device: device("d"),
                metrics: after
            }]
        );
    }

    #[test]
    fn the_monitor_device_counts_alerts_and_keeps_resolved_ones_false_until_the_set_grows() {
        assert_eq!(
            monitor_device(&EdgeNodeId::new("line-3").expect("valid"))
                .expect("valid")
                .as_str(),
            "line-3:monitor"
        );
        let silent = alert("device_silent", "pump-1", AlertState::Firing);
        let drift = alert("config_drift", "pump-2", AlertState::Acknowledged);
        let first = monitor_metrics(&[&silent, &drift], None);
        assert_eq!(first[FIRING_METRIC], Value::Int64(1));
        assert_eq!(first[ACKNOWLEDGED_METRIC], Value::Int64(1));
        assert_eq!(first["Alerts/device_silent/pump-1"], Value::Boolean(true));
        assert_eq!(first["Alerts/config_drift/pump-2"], Value::Boolean(true));

        // pump-1 answered: its alert goes false, as DDATA.
        let resolved = monitor_metrics(&[&drift], Some(&first));
        assert_eq!(
            resolved["Alerts/device_silent/pump-1"],
            Value::Boolean(false)
        );
        assert_eq!(resolved[FIRING_METRIC], Value::Int64(0));
        assert!(same_shape(&first, &resolved));

        // A new alert: a new birth, without the resolved one.
        let disk = alert("disk_full", "pump-3", AlertState::Firing);
        let grown = monitor_metrics(&[&drift, &disk], Some(&resolved));
        assert!(!grown.contains_key("Alerts/device_silent/pump-1"));
        assert_eq!(grown["Alerts/disk_full/pump-3"], Value::Boolean(true));
        assert_eq!(grown.len(), 4);
    }
}
