//! One Sparkplug B edge node's session state and the messages it publishes,
//! without IO: the caller connects, publishes what this returns, and tells
//! it when the session ends.
//!
//! The rules kept here (Sparkplug B 3.0, as Tahu's clients implement them):
//! - `bdSeq` (birth/death sequence, 0 to 255, wrapping) counts MQTT
//!   sessions. A session's will NDEATH and every NBIRTH of that session
//!   carry the same `bdSeq` as an Int64 metric, so a host application can
//!   tell a stale will from the death of the current session.
//! - `seq` (0 to 255, wrapping) numbers the messages of a session: NBIRTH
//!   is 0, and every later NDATA, DBIRTH, DDATA or DDEATH takes the next.
//!   NDEATH has none: it is published by the broker, at any point.
//! - A rebirth (asked for by a host's NCMD `Node Control/Rebirth`) is a new
//!   NBIRTH in the same session, then a DBIRTH for every device with its
//!   current values; DDATA may only carry metrics its DBIRTH declared, with
//!   the same data type.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use prost::Message;

use super::payload::{DataType, Metric, MetricValue, Payload};
use super::topics::{DeviceMessage, EdgeDeviceId, EdgeNodeId, GroupId, NodeMessage, Topic};

/// The NBIRTH and NDEATH metric carrying the session's `bdSeq`.
pub const BD_SEQ_METRIC: &str = "bdSeq";
/// The NBIRTH metric a host application sets to true in an NCMD to ask for
/// a rebirth.
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";

/// A metric's value as tether gives it: the variant decides the Sparkplug
/// data type and the payload field.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Boolean(bool),
    Int32(i32),
    Int64(i64),
    UInt32(u32),
    UInt64(u64),
    Float(f32),
    Double(f64),
    String(String),
    DateTime(DateTime<Utc>),
    /// No value now, for a metric of this data type (`is_null`).
    Null(DataType),
}

impl Value {
    pub fn data_type(&self) -> DataType {
        match self {
            Value::Boolean(_) => DataType::Boolean,
            Value::Int32(_) => DataType::Int32,
            Value::Int64(_) => DataType::Int64,
            Value::UInt32(_) => DataType::UInt32,
            Value::UInt64(_) => DataType::UInt64,
            Value::Float(_) => DataType::Float,
            Value::Double(_) => DataType::Double,
            Value::String(_) => DataType::String,
            Value::DateTime(_) => DataType::DateTime,
            Value::Null(data_type) => *data_type,
        }
    }

    /// The metric named `name` with this value, taken at `timestamp`.
    pub fn to_metric(&self, name: &str, timestamp: u64) -> Metric {
        // Signed integers travel as their two's complement in the unsigned
        // fields, as Tahu's clients encode them.
        let value = match self {
            Value::Boolean(value) => Some(MetricValue::BooleanValue(*value)),
            Value::Int32(value) => Some(MetricValue::IntValue(value.cast_unsigned())),
            Value::Int64(value) => Some(MetricValue::LongValue(value.cast_unsigned())),
            Value::UInt32(value) => Some(MetricValue::IntValue(*value)),
            Value::UInt64(value) => Some(MetricValue::LongValue(*value)),
            Value::Float(value) => Some(MetricValue::FloatValue(*value)),
            Value::Double(value) => Some(MetricValue::DoubleValue(*value)),
            Value::String(value) => Some(MetricValue::StringValue(value.clone())),
            Value::DateTime(at) => Some(MetricValue::LongValue(millis(*at))),
            Value::Null(_) => None,
        };
        Metric {
            name: Some(name.to_owned()),
            timestamp: Some(timestamp),
            datatype: Some(self.data_type().number()),
            is_null: matches!(self, Value::Null(_)).then_some(true),
            value,
            ..Metric::default()
        }
    }
}

/// Sparkplug timestamps: milliseconds since the Unix epoch, UTC; a time
/// before the epoch (a broken clock) reads as the epoch.
fn millis(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

/// A device's metrics by name.
pub type Metrics = BTreeMap<String, Value>;

/// A message to publish: where, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct SparkplugMessage {
    pub topic: Topic,
    pub payload: Payload,
}

impl SparkplugMessage {
    pub fn encode(&self) -> Vec<u8> {
        self.payload.encode_to_vec()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeError {
    #[error("no birth has been published for Sparkplug device {device}; publish its DBIRTH first")]
    UnknownDevice { device: EdgeDeviceId },
    #[error(
        "Sparkplug device {device} has no metric {metric:?} in its DBIRTH; publish a new DBIRTH that declares it"
    )]
    MetricNotInBirth {
        device: EdgeDeviceId,
        metric: String,
    },
    #[error(
        "Sparkplug device {device}'s metric {metric:?} was born as {born:?} and cannot change to {now:?}; publish a new DBIRTH"
    )]
    DataTypeChanged {
        device: EdgeDeviceId,
        metric: String,
        born: DataType,
        now: DataType,
    },
    #[error("the edge node has no MQTT session; start one before publishing its birth")]
    NoSession,
}

/// The current MQTT session.
#[derive(Debug, Clone, Copy)]
struct Session {
    bd_seq: u8,
    /// The last `seq` published, once the session's NBIRTH is out; until
    /// then the node is not born and publishes nothing else.
    last_seq: Option<u8>,
}

/// One edge node: its ids, its session and its devices' current metrics,
/// which every rebirth repeats.
#[derive(Debug, Clone)]
pub struct EdgeNode {
    group: GroupId,
    node: EdgeNodeId,
    /// The `bdSeq` the next session takes.
    next_bd_seq: u8,
    session: Option<Session>,
    devices: BTreeMap<EdgeDeviceId, Metrics>,
}

impl EdgeNode {
    /// A node whose first session uses `first_bd_seq` (a node that knows
    /// its last session's `bdSeq` continues after it).
    pub fn new(group: GroupId, node: EdgeNodeId, first_bd_seq: u8) -> Self {
        Self {
            group,
            node,
            next_bd_seq: first_bd_seq,
            session: None,
            devices: BTreeMap::new(),
        }
    }

    pub fn group(&self) -> &GroupId {
        &self.group
    }

    pub fn node(&self) -> &EdgeNodeId {
        &self.node
    }

    /// The current session's `bdSeq`, if there is one.
    pub fn bd_seq(&self) -> Option<u8> {
        self.session.map(|session| session.bd_seq)
    }

    /// Whether the current session has published its NBIRTH.
    pub fn is_born(&self) -> bool {
        self.session
            .is_some_and(|session| session.last_seq.is_some())
    }

    /// Starts an MQTT session with the next `bdSeq`, and returns its
    /// NDEATH: the will to connect with.
    pub fn new_session(&mut self) -> SparkplugMessage {
        let bd_seq = self.next_bd_seq;
        self.next_bd_seq = bd_seq.wrapping_add(1);
        self.session = Some(Session {
            bd_seq,
            last_seq: None,
        });
        self.death_of(bd_seq)
    }

    /// The session ended (the connection dropped or was closed): nothing
    /// more is published until a new session is born.
    pub fn end_session(&mut self) {
        self.session = None;
    }

    /// The current session's NDEATH, to publish before disconnecting on
    /// purpose (the broker publishes it as the will otherwise).
    pub fn death(&self) -> Option<SparkplugMessage> {
        self.bd_seq().map(|bd_seq| self.death_of(bd_seq))
    }

    fn death_of(&self, bd_seq: u8) -> SparkplugMessage {
        SparkplugMessage {
            topic: self.node_topic(NodeMessage::Death),
            payload: Payload {
                metrics: vec![Metric {
                    name: Some(BD_SEQ_METRIC.to_owned()),
                    datatype: Some(DataType::Int64.number()),
                    value: Some(MetricValue::LongValue(u64::from(bd_seq))),
                    ..Metric::default()
                }],
                ..Payload::default()
            },
        }
    }

    /// The session's NBIRTH (`seq` 0), then a DBIRTH for every device with
    /// its current metrics: the first birth of a session and every rebirth.
    pub fn birth(&mut self, now: DateTime<Utc>) -> Result<Vec<SparkplugMessage>, NodeError> {
        let session = self.session.as_mut().ok_or(NodeError::NoSession)?;
        session.last_seq = Some(0);
        let bd_seq = session.bd_seq;
        let timestamp = millis(now);
        let mut messages = vec![SparkplugMessage {
            topic: self.node_topic(NodeMessage::Birth),
            payload: Payload {
                timestamp: Some(timestamp),
                seq: Some(0),
                metrics: vec![
                    Value::Int64(i64::from(bd_seq)).to_metric(BD_SEQ_METRIC, timestamp),
                    Value::Boolean(false).to_metric(REBIRTH_METRIC, timestamp),
                ],
                ..Payload::default()
            },
        }];
        let devices: Vec<EdgeDeviceId> = self.devices.keys().cloned().collect();
        for device in devices {
            if let Some(message) = self.device_birth_message(&device, timestamp) {
                messages.push(message);
            }
        }
        Ok(messages)
    }

    /// Sets a device's metrics, all of them, and returns its DBIRTH; `None`
    /// while the node is not born: the next birth carries it.
    pub fn device_birth(
        &mut self,
        device: EdgeDeviceId,
        metrics: Metrics,
        now: DateTime<Utc>,
    ) -> Option<SparkplugMessage> {
        self.devices.insert(device.clone(), metrics);
        self.device_birth_message(&device, millis(now))
    }

    fn device_birth_message(
        &mut self,
        device: &EdgeDeviceId,
        timestamp: u64,
    ) -> Option<SparkplugMessage> {
        let metrics = self
            .devices
            .get(device)?
            .iter()
            .map(|(name, value)| value.to_metric(name, timestamp))
            .collect();
        let seq = self.next_seq()?;
        Some(self.device_message(DeviceMessage::Birth, device, seq, timestamp, metrics))
    }

    /// Records new values of some of a device's metrics and returns the
    /// DDATA; `None` while the node is not born: the next birth carries the
    /// values.
    pub fn device_data(
        &mut self,
        device: &EdgeDeviceId,
        changed: Metrics,
        now: DateTime<Utc>,
    ) -> Result<Option<SparkplugMessage>, NodeError> {
        let current = self
            .devices
            .get_mut(device)
            .ok_or_else(|| NodeError::UnknownDevice {
                device: device.clone(),
            })?;
        // Checked whole before any value changes: a refused update leaves
        // the device as it was.
        for (name, value) in &changed {
            let born = current
                .get(name)
                .ok_or_else(|| NodeError::MetricNotInBirth {
                    device: device.clone(),
                    metric: name.clone(),
                })?
                .data_type();
            if born != value.data_type() {
                return Err(NodeError::DataTypeChanged {
                    device: device.clone(),
                    metric: name.clone(),
                    born,
                    now: value.data_type(),
                });
            }
        }
        let timestamp = millis(now);
        let metrics = changed
            .iter()
            .map(|(name, value)| value.to_metric(name, timestamp))
            .collect();
        current.extend(changed);
        let Some(seq) = self.next_seq() else {
            return Ok(None);
        };
        Ok(Some(self.device_message(
            DeviceMessage::Data,
            device,
            seq,
            timestamp,
            metrics,
        )))
    }

    /// Forgets a device and returns its DDEATH; `None` if the node is not
    /// born (the next birth simply leaves the device out) or never had the
    /// device.
    pub fn device_death(
        &mut self,
        device: &EdgeDeviceId,
        now: DateTime<Utc>,
    ) -> Option<SparkplugMessage> {
        self.devices.remove(device)?;
        let seq = self.next_seq()?;
        Some(self.device_message(DeviceMessage::Death, device, seq, millis(now), Vec::new()))
    }

    /// The next `seq` of a born session, counting it as published.
    fn next_seq(&mut self) -> Option<u8> {
        let last = self.session.as_mut()?.last_seq.as_mut()?;
        *last = last.wrapping_add(1);
        Some(*last)
    }

    fn node_topic(&self, message: NodeMessage) -> Topic {
        Topic::Node {
            group: self.group.clone(),
            message,
            node: self.node.clone(),
        }
    }

    fn device_message(
        &self,
        message: DeviceMessage,
        device: &EdgeDeviceId,
        seq: u8,
        timestamp: u64,
        metrics: Vec<Metric>,
    ) -> SparkplugMessage {
        SparkplugMessage {
            topic: Topic::Device {
                group: self.group.clone(),
                message,
                node: self.node.clone(),
                device: device.clone(),
            },
            payload: Payload {
                timestamp: Some(timestamp),
                seq: Some(u64::from(seq)),
                metrics,
                ..Payload::default()
            },
        }
    }
}

/// What a host application asks of the node in an NCMD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// `Node Control/Rebirth` = true: publish [`EdgeNode::birth`] again.
    Rebirth,
    /// A metric this node does not act on, by name (or alias, as text, for
    /// a metric sent without a name).
    Unsupported { metric: String },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("the NCMD payload is not a Sparkplug B payload")]
    Decode(#[source] prost::DecodeError),
    #[error("the NCMD's {REBIRTH_METRIC:?} metric is not a boolean value")]
    RebirthNotBoolean,
}

/// Reads an NCMD payload. A rebirth request set to false asks nothing and
/// is left out.
pub fn node_commands(payload: &[u8]) -> Result<Vec<NodeCommand>, CommandError> {
    let payload = Payload::decode(payload).map_err(CommandError::Decode)?;
    let mut commands = Vec::new();
    for metric in payload.metrics {
        match (metric.name.as_deref(), &metric.value) {
            (Some(REBIRTH_METRIC), Some(MetricValue::BooleanValue(true))) => {
                commands.push(NodeCommand::Rebirth)
            }
            (Some(REBIRTH_METRIC), Some(MetricValue::BooleanValue(false))) => {}
            (Some(REBIRTH_METRIC), _) => return Err(CommandError::RebirthNotBoolean),
            (Some(name), _) => commands.push(NodeCommand::Unsupported {
                metric: name.to_owned(),
            }),
            (None, _) => commands.push(NodeCommand::Unsupported {
                metric: metric
                    .alias
                    .map_or_else(|| "(no name)".to_owned(), |alias| format!("alias {alias}")),
            }),
        }
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_764_763_200 + seconds, 0)
            .single()
            .expect("valid time")
    }

    fn edge_node(first_bd_seq: u8) -> EdgeNode {
        EdgeNode::new(
            GroupId::new("plant").expect("valid"),
            EdgeNodeId::new("tetherd").expect("valid"),
            first_bd_seq,
        )
    }

    fn device(name: &str) -> EdgeDeviceId {
        EdgeDeviceId::new(name).expect("valid")
    }

    fn metrics(entries: &[(&str, Value)]) -> Metrics {
        entries
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect()
    }

    fn seq(message: &SparkplugMessage) -> u64 {
        message.payload.seq.expect("a seq")
    }

    /// The `bdSeq` metric's value in an NBIRTH or NDEATH.
    fn bd_seq_of(message: &SparkplugMessage) -> u64 {
        let metric = message
            .payload
            .metrics
            .iter()
            .find(|metric| metric.name.as_deref() == Some(BD_SEQ_METRIC))
            .expect("a bdSeq metric");
        assert_eq!(metric.datatype, Some(DataType::Int64.number()));
        match metric.value {
            Some(MetricValue::LongValue(value)) => value,
            ref other => panic!("bdSeq is not a long value: {other:?}"),
        }
    }

    /// A node born with one device `d` that has a Double metric `x`.
    fn born_with_device() -> EdgeNode {
        let mut node = edge_node(0);
        node.new_session();
        node.device_birth(device("d"), metrics(&[("x", Value::Double(0.0))]), at(0));
        node.birth(at(0)).expect("a session");
        node
    }

    #[test]
    fn the_will_ndeath_carries_only_bd_seq() {
        let mut node = edge_node(42);
        let will = node.new_session();
        assert_eq!(will.topic.to_string(), "spBv1.0/plant/NDEATH/tetherd");
        assert_eq!(will.payload.seq, None);
        assert_eq!(will.payload.timestamp, None);
        assert_eq!(will.payload.metrics.len(), 1);
        assert_eq!(bd_seq_of(&will), 42);
        assert_eq!(node.death(), Some(will));
    }

    #[test]
    fn nbirth_has_seq_zero_bd_seq_and_the_rebirth_control() {
        let mut node = edge_node(0);
        node.new_session();
        let birth = node.birth(at(0)).expect("a session");
        assert_eq!(birth.len(), 1, "no devices yet");
        let nbirth = &birth[0];
        assert_eq!(nbirth.topic.to_string(), "spBv1.0/plant/NBIRTH/tetherd");
        assert_eq!(seq(nbirth), 0);
        assert_eq!(nbirth.payload.timestamp, Some(millis(at(0))));
        assert_eq!(bd_seq_of(nbirth), 0);
        let rebirth = nbirth
            .payload
            .metrics
            .iter()
            .find(|metric| metric.name.as_deref() == Some(REBIRTH_METRIC))
            .expect("the rebirth control");
        assert_eq!(rebirth.datatype, Some(DataType::Boolean.number()));
        assert_eq!(rebirth.value, Some(MetricValue::BooleanValue(false)));
    }

    #[test]
    fn bd_seq_is_the_same_in_a_sessions_ndeath_and_every_nbirth() {
        let mut node = edge_node(7);
        for expected in [7_u64, 8, 9] {
            let will = node.new_session();
            let birth = node.birth(at(0)).expect("a session");
            let rebirth = node.birth(at(1)).expect("a session");
            assert_eq!(bd_seq_of(&will), expected);
            assert_eq!(bd_seq_of(&birth[0]), expected);
            assert_eq!(
                bd_seq_of(&rebirth[0]),
                expected,
                "a rebirth keeps the session's bdSeq"
            );
            assert_eq!(node.death().map(|death| bd_seq_of(&death)), Some(expected));
            node.end_session();
            assert_eq!(node.death(), None);
        }
    }

    #[test]
    fn bd_seq_wraps_from_255_to_0() {
        let mut node = edge_node(255);
        assert_eq!(bd_seq_of(&node.new_session()), 255);
        assert_eq!(bd_seq_of(&node.new_session()), 0);
        assert_eq!(bd_seq_of(&node.birth(at(0)).expect("a session")[0]), 0);
    }

    #[test]
    fn every_message_after_the_nbirth_takes_the_next_seq_wrapping_255_to_0() {
        let mut node = born_with_device();
        let mut seqs = Vec::new();
        for i in 0..300 {
            let data = node
                .device_data(
                    &device("d"),
                    metrics(&[("x", Value::Double(f64::from(i)))]),
                    at(1),
                )
                .expect("a born metric")
                .expect("the node is born");
            seqs.push(seq(&data));
        }
        // The NBIRTH took 0 and the DBIRTH 1: DDATA starts at 2.
        let expected: Vec<u64> = (2..302).map(|n| n % 256).collect();
        assert_eq!(seqs, expected);
        assert_eq!(seqs[253..256], [255, 0, 1]);
        let death = node.device_death(&device("d"), at(2)).expect("born");
        assert_eq!(seq(&death), 302 % 256);
    }

    #[test]
    fn a_rebirth_starts_over_at_seq_zero_with_nbirth_then_every_dbirth() {
        let mut node = born_with_device();
        node.device_birth(
            device("e"),
            metrics(&[
                ("online", Value::Boolean(true)),
                ("v", Value::String("1".into())),
            ]),
            at(1),
        )
        .expect("the node is born");
        node.device_data(&device("d"), metrics(&[("x", Value::Double(2.5))]), at(2))
            .expect("a born metric");

        let rebirth = node.birth(at(3)).expect("a session");
        let shape: Vec<(String, u64)> = rebirth
            .iter()
            .map(|message| (message.topic.to_string(), seq(message)))
            .collect();
        assert_eq!(
            shape,
            [
                ("spBv1.0/plant/NBIRTH/tetherd".to_owned(), 0),
                ("spBv1.0/plant/DBIRTH/tetherd/d".to_owned(), 1),
                ("spBv1.0/plant/DBIRTH/tetherd/e".to_owned(), 2),
            ]
        );
        // The DBIRTH carries the device's current values, not its first.
        assert_eq!(
            rebirth[1].payload.metrics,
            [Value::Double(2.5).to_metric("x", millis(at(3)))]
        );
        assert_eq!(rebirth[2].payload.metrics.len(), 2);
        let after = node
            .device_data(
                &device("e"),
                metrics(&[("online", Value::Boolean(false))]),
                at(4),
            )
            .expect("a born metric")
            .expect("the node is born");
        assert_eq!(seq(&after), 3);
    }

    #[test]
    fn before_the_birth_device_changes_wait_for_it() {
        let mut node = edge_node(0);
        assert_eq!(node.birth(at(0)), Err(NodeError::NoSession));
        assert_eq!(
            node.device_birth(device("d"), metrics(&[("x", Value::Int32(1))]), at(0)),
            None
        );
        assert_eq!(
            node.device_data(&device("d"), metrics(&[("x", Value::Int32(2))]), at(1)),
            Ok(None)
        );
        node.device_birth(device("gone"), Metrics::new(), at(1));
        assert_eq!(node.device_death(&device("gone"), at(2)), None);
        node.new_session();
        assert!(!node.is_born());
        let birth = node.birth(at(3)).expect("a session");
        assert!(node.is_born());
        assert_eq!(birth.len(), 2, "NBIRTH and d's DBIRTH, not gone's");
        assert_eq!(
            birth[1].payload.metrics,
            [Value::Int32(2).to_metric("x", millis(at(3)))]
        );
        // A lost connection: nothing is published until the next birth.
        node.end_session();
        assert_eq!(
            node.device_data(&device("d"), metrics(&[("x", Value::Int32(3))]), at(4)),
            Ok(None)
        );
        assert_eq!(node.birth(at(5)), Err(NodeError::NoSession));
    }

    #[test]
    fn ddata_only_carries_metrics_its_dbirth_declared_with_their_type() {
        let mut node = born_with_device();
        assert_eq!(
            node.device_data(
                &device("nope"),
                metrics(&[("x", Value::Double(1.0))]),
                at(1)
            ),
            Err(NodeError::UnknownDevice {
                device: device("nope")
            })
        );
        let unknown = node
            .device_data(&device("d"), metrics(&[("y", Value::Double(1.0))]), at(1))
            .expect_err("y was not born");
        assert_eq!(
            unknown.to_string(),
            "Sparkplug device d has no metric \"y\" in its DBIRTH; publish a new DBIRTH that declares it"
        );
        assert_eq!(
            node.device_data(&device("d"), metrics(&[("x", Value::Int64(1))]), at(1)),
            Err(NodeError::DataTypeChanged {
                device: device("d"),
                metric: "x".to_owned(),
                born: DataType::Double,
                now: DataType::Int64,
            })
        );
        // A null keeps its type; the refused updates used no seq.
        let null = node
            .device_data(
                &device("d"),
                metrics(&[("x", Value::Null(DataType::Double))]),
                at(2),
            )
            .expect("same type")
            .expect("born");
        assert_eq!(seq(&null), 2);
        assert_eq!(null.payload.metrics[0].is_null, Some(true));
        assert_eq!(null.payload.metrics[0].value, None);
    }

    #[test]
    fn a_dead_device_is_left_out_of_the_next_birth() {
        let mut node = born_with_device();
        let death = node.device_death(&device("d"), at(1)).expect("born");
        assert_eq!(death.topic.to_string(), "spBv1.0/plant/DDEATH/tetherd/d");
        assert_eq!(death.payload.metrics, []);
        assert_eq!(death.payload.timestamp, Some(millis(at(1))));
        assert_eq!(node.device_death(&device("d"), at(2)), None, "already dead");
        assert_eq!(node.birth(at(3)).expect("a session").len(), 1);
    }

    #[test]
    fn values_take_their_sparkplug_type_and_field() {
        let metric = |value: Value| value.to_metric("m", 5);
        let cases = [
            (
                Value::Boolean(true),
                DataType::Boolean,
                Some(MetricValue::BooleanValue(true)),
            ),
            (
                Value::Int32(-5),
                DataType::Int32,
                Some(MetricValue::IntValue(0xffff_fffb)),
            ),
            (
                Value::Int64(-1),
                DataType::Int64,
                Some(MetricValue::LongValue(u64::MAX)),
            ),
            (
                Value::UInt32(7),
                DataType::UInt32,
                Some(MetricValue::IntValue(7)),
            ),
            (
                Value::UInt64(8),
                DataType::UInt64,
                Some(MetricValue::LongValue(8)),
            ),
            (
                Value::Float(1.5),
                DataType::Float,
                Some(MetricValue::FloatValue(1.5)),
            ),
            (
                Value::Double(2.5),
                DataType::Double,
                Some(MetricValue::DoubleValue(2.5)),
            ),
            (
                Value::String("s".into()),
                DataType::String,
                Some(MetricValue::StringValue("s".into())),
            ),
            (
                Value::DateTime(at(0)),
                DataType::DateTime,
                Some(MetricValue::LongValue(1_764_763_200_000)),
            ),
            (Value::Null(DataType::Text), DataType::Text, None),
        ];
        for (value, data_type, field) in cases {
            let metric = metric(value.clone());
            assert_eq!(metric.name.as_deref(), Some("m"));
            assert_eq!(metric.timestamp, Some(5));
            assert_eq!(metric.datatype, Some(data_type.number()), "{value:?}");
            assert_eq!(metric.value, field, "{value:?}");
            assert_eq!(metric.is_null, field.is_none().then_some(true), "{value:?}");
        }
    }

    fn ncmd(metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(1),
            metrics,
            ..Payload::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn an_ncmd_rebirth_set_to_true_asks_for_a_rebirth() {
        let rebirth = |value: bool| Value::Boolean(value).to_metric(REBIRTH_METRIC, 1);
        assert_eq!(
            node_commands(&ncmd(vec![rebirth(true)])),
            Ok(vec![NodeCommand::Rebirth])
        );
        assert_eq!(node_commands(&ncmd(vec![rebirth(false)])), Ok(vec![]));
        assert_eq!(
            node_commands(&ncmd(vec![
                Value::Boolean(true).to_metric("Node Control/Reboot", 1),
                Metric {
                    alias: Some(3),
                    ..Metric::default()
                },
                rebirth(true),
            ])),
            Ok(vec![
                NodeCommand::Unsupported {
                    metric: "Node Control/Reboot".to_owned()
                },
                NodeCommand::Unsupported {
                    metric: "alias 3".to_owned()
                },
                NodeCommand::Rebirth,
            ])
        );
        assert_eq!(
            node_commands(&ncmd(vec![
                Value::String("true".into()).to_metric(REBIRTH_METRIC, 1)
            ])),
            Err(CommandError::RebirthNotBoolean)
        );
        assert!(matches!(
            node_commands(b"\x0a\xff"),
            Err(CommandError::Decode(_))
        ));
    }
}
