//! The Sparkplug B payload: Eclipse Tahu's `sparkplug_b.proto` (package
//! `org.eclipse.tahu.protobuf`, proto2) as prost messages written by hand.
//!
//! Hand-written rather than generated so tetherd needs neither a build
//! script nor protoc; every field keeps the schema's number, wire type and
//! proto2 presence (`Option` for `optional`), and repeated scalars stay
//! unpacked as proto2 encodes them by default. The schema's nested messages
//! (`Payload.Metric`, `Payload.Template.Parameter`, ...) are flattened to
//! one name each here. Fields tether never sets are still declared so a
//! payload from any Sparkplug client decodes whole; extension ranges
//! (`extensions 6 to max`) have no fields, and prost skips unknown fields on
//! decode, as protobuf requires.

/// `Payload`: one Sparkplug message's body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch (UTC) when the message was sent.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// The message's sequence number, 0 to 255 (see [`super::node`]).
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Milliseconds since the Unix epoch (UTC) when the value was taken.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A [`DataType`] number; the schema declares it `uint32`, not the enum.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "8")]
    pub metadata: Option<MetaData>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19")]
    pub value: Option<MetricValue>,
}

/// `Payload.Metric`'s `oneof value`. Signed integers travel as their two's
/// complement in the unsigned fields, as Tahu's clients encode them.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    #[prost(string, tag = "15")]
    StringValue(String),
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
    #[prost(message, tag = "17")]
    DatasetValue(DataSet),
    #[prost(message, tag = "18")]
    TemplateValue(Template),
    #[prost(message, tag = "19")]
    ExtensionValue(MetricValueExtension),
}

/// `Payload.Metric.MetricValueExtension`: only an extension range.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricValueExtension {}

/// `Payload.MetaData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaData {
    #[prost(bool, optional, tag = "1")]
    pub is_multi_part: Option<bool>,
    #[prost(string, optional, tag = "2")]
    pub content_type: Option<String>,
    #[prost(uint64, optional, tag = "3")]
    pub size: Option<u64>,
    #[prost(uint64, optional, tag = "4")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "5")]
    pub file_name: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub file_type: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub md5: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub description: Option<String>,
}

/// `Payload.PropertySet`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

/// `Payload.PropertySetList`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySetList {
    #[prost(message, repeated, tag = "1")]
    pub propertyset: Vec<PropertySet>,
}

/// `Payload.PropertyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    #[prost(oneof = "PropertyValueKind", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub value: Option<PropertyValueKind>,
}

/// `Payload.PropertyValue`'s `oneof value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyValueKind {
    #[prost(uint32, tag = "3")]
    IntValue(u32),
    #[prost(uint64, tag = "4")]
    LongValue(u64),
    #[prost(float, tag = "5")]
    FloatValue(f32),
    #[prost(double, tag = "6")]
    DoubleValue(f64),
    #[prost(bool, tag = "7")]
    BooleanValue(bool),
    #[prost(string, tag = "8")]
    StringValue(String),
    #[prost(message, tag = "9")]
    PropertysetValue(PropertySet),
    #[prost(message, tag = "10")]
    PropertysetsValue(PropertySetList),
    #[prost(message, tag = "11")]
    ExtensionValue(PropertyValueExtension),
}

/// `Payload.PropertyValue.PropertyValueExtension`: only an extension range.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValueExtension {}

/// `Payload.DataSet`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DataSet {
    #[prost(uint64, optional, tag = "1")]
    pub num_of_columns: Option<u64>,
    #[prost(string, repeated, tag = "2")]
    pub columns: Vec<String>,
    /// [`DataType`] numbers, one a column; proto2 repeated scalars are not
    /// packed unless the schema says so, and it does not.
    #[prost(uint32, repeated, packed = "false", tag = "3")]
    pub types: Vec<u32>,
    #[prost(message, repeated, tag = "4")]
    pub rows: Vec<Row>,
}

/// `Payload.DataSet.Row`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Row {
    #[prost(message, repeated, tag = "1")]
    pub elements: Vec<DataSetValue>,
}

/// `Payload.DataSet.DataSetValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DataSetValue {
    #[prost(oneof = "DataSetValueKind", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<DataSetValueKind>,
}

/// `Payload.DataSet.DataSetValue`'s `oneof value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DataSetValueKind {
    #[prost(uint32, tag = "1")]
    IntValue(u32),
    #[prost(uint64, tag = "2")]
    LongValue(u64),
    #[prost(float, tag = "3")]
    FloatValue(f32),
    #[prost(double, tag = "4")]
    DoubleValue(f64),
    #[prost(bool, tag = "5")]
    BooleanValue(bool),
    #[prost(string, tag = "6")]
    StringValue(String),
    #[prost(message, tag = "7")]
    ExtensionValue(DataSetValueExtension),
}

/// `Payload.DataSet.DataSetValue.DataSetValueExtension`: only an extension
/// range.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DataSetValueExtension {}

/// `Payload.Template`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Template {
    #[prost(string, optional, tag = "1")]
    pub version: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    #[prost(message, repeated, tag = "3")]
    pub parameters: Vec<Parameter>,
    #[prost(string, optional, tag = "4")]
    pub template_ref: Option<String>,
    #[prost(bool, optional, tag = "5")]
    pub is_definition: Option<bool>,
}

/// `Payload.Template.Parameter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Parameter {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint32, optional, tag = "2")]
    pub r#type: Option<u32>,
    #[prost(oneof = "ParameterValue", tags = "3, 4, 5, 6, 7, 8, 9")]
    pub value: Option<ParameterValue>,
}

/// `Payload.Template.Parameter`'s `oneof value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ParameterValue {
    #[prost(uint32, tag = "3")]
    IntValue(u32),
    #[prost(uint64, tag = "4")]
    LongValue(u64),
    #[prost(float, tag = "5")]
    FloatValue(f32),
    #[prost(double, tag = "6")]
    DoubleValue(f64),
    #[prost(bool, tag = "7")]
    BooleanValue(bool),
    #[prost(string, tag = "8")]
    StringValue(String),
    #[prost(message, tag = "9")]
    ExtensionValue(ParameterValueExtension),
}

/// `Payload.Template.Parameter.ParameterValueExtension`: only an extension
/// range.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ParameterValueExtension {}

/// The schema's `DataType` enum: what a metric's `datatype` number means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    Unknown = 0,
    Int8 = 1,
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt8 = 5,
    UInt16 = 6,
    UInt32 = 7,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
    DateTime = 13,
    Text = 14,
    Uuid = 15,
    DataSet = 16,
    Bytes = 17,
    File = 18,
    Template = 19,
    PropertySet = 20,
    PropertySetList = 21,
    Int8Array = 22,
    Int16Array = 23,
    Int32Array = 24,
    Int64Array = 25,
    UInt8Array = 26,
    UInt16Array = 27,
    UInt32Array = 28,
    UInt64Array = 29,
    FloatArray = 30,
    DoubleArray = 31,
    BooleanArray = 32,
    StringArray = 33,
    DateTimeArray = 34,
}

impl DataType {
    /// The number a metric's `datatype` field carries.
    pub fn number(self) -> u32 {
        // The enum's numbers are 0..=34: never negative.
        self as u32
    }

    /// The data type a metric's `datatype` number names, if the schema
    /// knows it.
    pub fn from_number(number: u32) -> Option<Self> {
        i32::try_from(number)
            .ok()
            .and_then(|number| Self::try_from(number).ok())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// The payload below as Python's protobuf package (7.36) encodes it from
    /// Tahu's `sparkplug_b.proto` compiled with grpcio-tools' protoc:
    ///
    /// ```python
    /// from sparkplug_b_pb2 import Payload, DataType
    /// p = Payload(timestamp=1764763200123, seq=7, uuid="tether")
    /// p.metrics.add(name="bdSeq", timestamp=1764763200123, datatype=DataType.Int64, long_value=3)
    /// p.metrics.add(name="Node Control/Rebirth", datatype=DataType.Boolean, boolean_value=False)
    /// p.metrics.add(name="cpu", alias=9, datatype=DataType.Double, double_value=0.5)
    /// p.metrics.add(name="temp", datatype=DataType.Float, float_value=-1.25)
    /// p.metrics.add(name="delta", datatype=DataType.Int32, int_value=2**32 - 5)
    /// p.metrics.add(name="version", datatype=DataType.String, string_value="v1", is_transient=True)
    /// p.metrics.add(name="gone", datatype=DataType.String, is_null=True)
    /// p.metrics.add(name="blob", datatype=DataType.Bytes, bytes_value=b"\x00\xff",
    ///     metadata=Payload.MetaData(content_type="application/octet-stream", size=2))
    /// m = p.metrics.add(name="table", datatype=DataType.DataSet)
    /// m.dataset_value.num_of_columns = 2
    /// m.dataset_value.columns.extend(["a", "b"])
    /// m.dataset_value.types.extend([DataType.Int32, DataType.String])
    /// r = m.dataset_value.rows.add()
    /// r.elements.add(int_value=1)
    /// r.elements.add(string_value="x")
    /// m = p.metrics.add(name="unit", datatype=DataType.UInt64, long_value=2**64 - 1)
    /// m.properties.keys.append("engUnit")
    /// m.properties.values.add(type=DataType.String, string_value="%")
    /// print(p.SerializeToString().hex())
    /// ```
    ///
    /// An independent encoder, so a wrong field number, wire type or
    /// packing in the hand-written messages shows as a byte difference (the
    /// dataset's `types` are two `18 xx` entries: unpacked, as proto2 wants).
    const PYTHON_PROTOBUF_HEX: &str = "08fbd4d5a0ae3312120a05626453657118fbd4d5a0ae3320045803121a0a144e6f646520436f6e74726f6c2f52656269727468200b700012120a036370751009200a69000000000000e03f120d0a0474656d702009650000a0bf120f0a0564656c7461200350fbffffff0f12110a0776657273696f6e200c30017a027631120a0a04676f6e65200c3801122b0a04626c6f622011421c12186170706c69636174696f6e2f6f637465742d73747265616d180282010200ff12230a057461626c6520108a011708021201611201621803180c22090a0208010a0332017812250a04756e697420084a100a07656e67556e69741205080c42012558ffffffffffffffffff0118072206746574686572";

    fn metric(name: &str, datatype: DataType, value: Option<MetricValue>) -> Metric {
        Metric {
            name: Some(name.to_owned()),
            datatype: Some(datatype.number()),
            value,
            ..Metric::default()
        }
    }

    fn reference_payload() -> Payload {
        Payload {
            timestamp: Some(1_764_763_200_123),
            seq: Some(7),
            uuid: Some("tether".to_owned()),
            body: None,
            metrics: vec![
                Metric {
                    timestamp: Some(1_764_763_200_123),
                    ..metric("bdSeq", DataType::Int64, Some(MetricValue::LongValue(3)))
                },
                metric(
                    "Node Control/Rebirth",
                    DataType::Boolean,
                    Some(MetricValue::BooleanValue(false)),
                ),
                Metric {
                    alias: Some(9),
                    ..metric("cpu", DataType::Double, Some(MetricValue::DoubleValue(0.5)))
                },
                metric(
                    "temp",
                    DataType::Float,
                    Some(MetricValue::FloatValue(-1.25)),
                ),
                metric(
                    "delta",
                    DataType::Int32,
                    Some(MetricValue::IntValue((-5_i32).cast_unsigned())),
                ),
                Metric {
                    is_transient: Some(true),
                    ..metric(
                        "version",
                        DataType::String,
                        Some(MetricValue::StringValue("v1".to_owned())),
                    )
                },
                Metric {
                    is_null: Some(true),
                    ..metric("gone", DataType::String, None)
                },
                Metric {
                    metadata: Some(MetaData {
                        content_type: Some("application/octet-stream".to_owned()),
                        size: Some(2),
                        ..MetaData::default()
                    }),
                    ..metric(
                        "blob",
                        DataType::Bytes,
                        Some(MetricValue::BytesValue(vec![0x00, 0xff])),
                    )
                },
                metric(
                    "table",
                    DataType::DataSet,
                    Some(MetricValue::DatasetValue(DataSet {
                        num_of_columns: Some(2),
                        columns: vec!["a".to_owned(), "b".to_owned()],
                        types: vec![DataType::Int32.number(), DataType::String.number()],
                        rows: vec![Row {
                            elements: vec![
                                DataSetValue {
                                    value: Some(DataSetValueKind::IntValue(1)),
                                },
                                DataSetValue {
                                    value: Some(DataSetValueKind::StringValue("x".to_owned())),
                                },
                            ],
                        }],
                    })),
                ),
                Metric {
                    properties: Some(PropertySet {
                        keys: vec!["engUnit".to_owned()],
                        values: vec![PropertyValue {
                            r#type: Some(DataType::String.number()),
                            is_null: None,
                            value: Some(PropertyValueKind::StringValue("%".to_owned())),
                        }],
                    }),
                    ..metric(
                        "unit",
                        DataType::UInt64,
                        Some(MetricValue::LongValue(u64::MAX)),
                    )
                },
            ],
        }
    }

    #[test]
    fn encodes_byte_for_byte_as_pythons_protobuf_does() {
        let expected = hex::decode(PYTHON_PROTOBUF_HEX).expect("hex");
        assert_eq!(
            hex::encode(reference_payload().encode_to_vec()),
            hex::encode(&expected)
        );
    }

    #[test]
    fn decodes_what_pythons_protobuf_encoded() {
        let expected = hex::decode(PYTHON_PROTOBUF_HEX).expect("hex");
        let decoded = Payload::decode(expected.as_slice()).expect("decodes");
        assert_eq!(decoded, reference_payload());
    }

    #[test]
    fn a_payload_survives_a_round_trip() {
        let template = Template {
            version: Some("1".to_owned()),
            metrics: vec![metric(
                "inner",
                DataType::Boolean,
                Some(MetricValue::BooleanValue(true)),
            )],
            parameters: vec![Parameter {
                name: Some("p".to_owned()),
                r#type: Some(DataType::UInt32.number()),
                value: Some(ParameterValue::IntValue(4)),
            }],
            template_ref: Some("base".to_owned()),
            is_definition: Some(false),
        };
        let mut payload = reference_payload();
        payload.body = Some(b"raw".to_vec());
        payload.metrics.push(metric(
            "udt",
            DataType::Template,
            Some(MetricValue::TemplateValue(template)),
        ));
        let bytes = payload.encode_to_vec();
        assert_eq!(Payload::decode(bytes.as_slice()).expect("decodes"), payload);
    }

    #[test]
    fn unknown_fields_and_extensions_are_skipped_on_decode() {
        let mut bytes = hex::decode(PYTHON_PROTOBUF_HEX).expect("hex");
        // Field 6 (the payload's extension range) as a varint, and field
        // 1000 as a length-delimited value: what a third party's extension
        // or a newer schema would add.
        bytes.extend_from_slice(&[0x30, 0x01]);
        bytes.extend_from_slice(&[0xc2, 0x3e, 0x02, b'h', b'i']);
        // A metric with an unknown field 99 (varint) beside its name.
        let mut metric_bytes = vec![0x0a, 0x01, b'z', 0x98, 0x06, 0x05];
        bytes.push(0x12);
        bytes.push(u8::try_from(metric_bytes.len()).expect("short"));
        bytes.append(&mut metric_bytes);

        let decoded = Payload::decode(bytes.as_slice()).expect("decodes");
        let mut expected = reference_payload();
        expected.metrics.push(Metric {
            name: Some("z".to_owned()),
            ..Metric::default()
        });
        assert_eq!(decoded, expected);
    }

    #[test]
    fn data_type_numbers_are_the_schemas() {
        assert_eq!(DataType::Int64.number(), 4);
        assert_eq!(DataType::Boolean.number(), 11);
        assert_eq!(DataType::Uuid.number(), 15);
        assert_eq!(DataType::DateTimeArray.number(), 34);
        assert_eq!(DataType::from_number(13), Some(DataType::DateTime));
        assert_eq!(DataType::from_number(35), None);
        assert_eq!(DataType::from_number(u32::MAX), None);
    }
}
