//! Sparkplug B topic names: `spBv1.0/{group}/{type}/{node}[/{device}]`, and
//! the ids that go into them.

use std::fmt;

/// The Sparkplug B namespace, the first level of every topic.
pub const NAMESPACE: &str = "spBv1.0";

/// Which id an [`IdError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Group,
    EdgeNode,
    Device,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Group => "group id",
            IdKind::EdgeNode => "edge node id",
            IdKind::Device => "device id",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("the Sparkplug {kind} is empty")]
    Empty { kind: IdKind },
    /// `/` separates topic levels, `+` and `#` are MQTT wildcards, and MQTT
    /// forbids NUL in topic names: any of them would break the topic.
    #[error(
        "the Sparkplug {kind} {id:?} contains {character:?}; Sparkplug ids may not contain '/', '+', '#' or NUL"
    )]
    Reserved {
        kind: IdKind,
        id: String,
        character: char,
    },
}

/// The characters no Sparkplug id may contain.
const RESERVED: [char; 4] = ['/', '+', '#', '\0'];

fn validate(kind: IdKind, id: String) -> Result<String, IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { kind });
    }
    match id.chars().find(|c| RESERVED.contains(c)) {
        Some(character) => Err(IdError::Reserved {
            kind,
            id,
            character,
        }),
        None => Ok(id),
    }
}

macro_rules! sparkplug_id {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The id, if it can stand as one level of a topic.
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                validate($kind, id.into()).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

sparkplug_id!(
    /// A Sparkplug group id: a set of edge nodes.
    GroupId,
    IdKind::Group
);
sparkplug_id!(
    /// A Sparkplug edge node id, unique within its group.
    EdgeNodeId,
    IdKind::EdgeNode
);
sparkplug_id!(
    /// A Sparkplug device id, unique within its edge node.
    EdgeDeviceId,
    IdKind::Device
);

/// The message types about an edge node itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeMessage {
    Birth,
    Death,
    Data,
    Command,
}

/// The message types about one of an edge node's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceMessage {
    Birth,
    Death,
    Data,
    Command,
}

impl NodeMessage {
    pub const ALL: [Self; 4] = [Self::Birth, Self::Death, Self::Data, Self::Command];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeMessage::Birth => "NBIRTH",
            NodeMessage::Death => "NDEATH",
            NodeMessage::Data => "NDATA",
            NodeMessage::Command => "NCMD",
        }
    }
}

impl DeviceMessage {
    pub const ALL: [Self; 4] = [Self::Birth, Self::Death, Self::Data, Self::Command];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceMessage::Birth => "DBIRTH",
            DeviceMessage::Death => "DDEATH",
            DeviceMessage::Data => "DDATA",
            DeviceMessage::Command => "DCMD",
        }
    }
}

/// A Sparkplug B topic of an edge node or of one of its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    Node {
        group: GroupId,
        message: NodeMessage,
        node: EdgeNodeId,
    },
    Device {
        group: GroupId,
        message: DeviceMessage,
        node: EdgeNodeId,
        device: EdgeDeviceId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("the topic is not UTF-8, which Sparkplug requires")]
    NotUtf8,
    #[error("the topic {topic:?} is not in the Sparkplug B namespace ({NAMESPACE}/...)")]
    Namespace { topic: String },
    #[error(
        "the topic {topic:?} has no Sparkplug message type at its third level (NBIRTH, NDEATH, NDATA, NCMD, DBIRTH, DDEATH, DDATA or DCMD)"
    )]
    MessageType { topic: String },
    #[error("the topic {topic:?} has {found} levels; {message_type} topics have {expected}")]
    Levels {
        topic: String,
        message_type: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("the topic {topic:?} has an invalid id")]
    Id {
        topic: String,
        #[source]
        source: IdError,
    },
}

impl Topic {
    /// Reads a topic as received from the broker.
    pub fn parse(topic: &[u8]) -> Result<Self, TopicError> {
        let topic = std::str::from_utf8(topic).map_err(|_| TopicError::NotUtf8)?;
        let levels: Vec<&str> = topic.split('/').collect();
        if levels.first() != Some(&NAMESPACE) {
            return Err(TopicError::Namespace {
                topic: topic.to_owned(),
            });
        }
        let message_type = levels.get(2).copied().unwrap_or_default();
        let kind = NodeMessage::ALL
            .into_iter()
            .find(|message| message.as_str() == message_type)
            .map(MessageKind::Node)
            .or_else(|| {
                DeviceMessage::ALL
                    .into_iter()
                    .find(|message| message.as_str() == message_type)
                    .map(MessageKind::Device)
            })
            .ok_or_else(|| TopicError::MessageType {
                topic: topic.to_owned(),
            })?;
        let (message_type, expected) = match kind {
            MessageKind::Node(message) => (message.as_str(), 4),
            MessageKind::Device(message) => (message.as_str(), 5),
        };
        if levels.len() != expected {
            return Err(TopicError::Levels {
                topic: topic.to_owned(),
                message_type,
                found: levels.len(),
                expected,
            });
        }
        let id_error = |source| TopicError::Id {
            topic: topic.to_owned(),
            source,
        };
        let group = GroupId::new(levels[1]).map_err(id_error)?;
        let node = EdgeNodeId::new(levels[3]).map_err(id_error)?;
        Ok(match kind {
            MessageKind::Node(message) => Topic::Node {
                group,
                message,
                node,
            },
            MessageKind::Device(message) => Topic::Device {
                group,
                message,
                node,
                device: EdgeDeviceId::new(levels[4]).map_err(id_error)?,
            },
        })
    }
}

enum MessageKind {
    Node(NodeMessage),
    Device(DeviceMessage),
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Node {
                group,
                message,
                node,
            } => write!(f, "{NAMESPACE}/{group}/{}/{node}", message.as_str()),
            Topic::Device {
                group,
                message,
                node,
                device,
            } => write!(
                f,
                "{NAMESPACE}/{group}/{}/{node}/{device}",
                message.as_str()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> GroupId {
        GroupId::new("plant-1").expect("valid")
    }

    fn node() -> EdgeNodeId {
        EdgeNodeId::new("gateway 7").expect("valid")
    }

    #[test]
    fn topics_name_namespace_group_type_node_and_device() {
        let node_topic = Topic::Node {
            group: group(),
            message: NodeMessage::Birth,
            node: node(),
        };
        assert_eq!(node_topic.to_string(), "spBv1.0/plant-1/NBIRTH/gateway 7");
        let device_topic = Topic::Device {
            group: group(),
            message: DeviceMessage::Data,
            node: node(),
            device: EdgeDeviceId::new("sensor-ä").expect("valid"),
        };
        assert_eq!(
            device_topic.to_string(),
            "spBv1.0/plant-1/DDATA/gateway 7/sensor-ä"
        );
    }

    #[test]
    fn every_message_type_parses_back() {
        let device = EdgeDeviceId::new("d").expect("valid");
        let mut topics: Vec<Topic> = NodeMessage::ALL
            .into_iter()
            .map(|message| Topic::Node {
                group: group(),
                message,
                node: node(),
            })
            .collect();
        topics.extend(DeviceMessage::ALL.into_iter().map(|message| Topic::Device {
            group: group(),
            message,
            node: node(),
            device: device.clone(),
        }));
        let names: Vec<String> = topics.iter().map(ToString::to_string).collect();
        for (topic, name) in topics.iter().zip(&names) {
            assert_eq!(&Topic::parse(name.as_bytes()).expect(name), topic);
        }
        let types: Vec<&str> = names
            .iter()
            .map(|name| name.split('/').nth(2).expect("a type"))
            .collect();
        assert_eq!(
            types,
            [
                "NBIRTH", "NDEATH", "NDATA", "NCMD", "DBIRTH", "DDEATH", "DDATA", "DCMD"
            ]
        );
    }

    #[test]
    fn ids_refuse_empty_and_reserved_characters_naming_which_id() {
        assert_eq!(
            GroupId::new(""),
            Err(IdError::Empty {
                kind: IdKind::Group
            })
        );
        assert_eq!(
            EdgeNodeId::new("").expect_err("empty").to_string(),
            "the Sparkplug edge node id is empty"
        );
        for (id, character) in [("a/b", '/'), ("a+", '+'), ("#", '#'), ("a\0b", '\0')] {
            assert_eq!(
                EdgeDeviceId::new(id),
                Err(IdError::Reserved {
                    kind: IdKind::Device,
                    id: id.to_owned(),
                    character
                })
            );
        }
        assert_eq!(
            GroupId::new("line/2").expect_err("slash").to_string(),
            "the Sparkplug group id \"line/2\" contains '/'; Sparkplug ids may not contain '/', '+', '#' or NUL"
        );
        // Any other UTF-8 is fine, spaces and dots included.
        assert!(EdgeNodeId::new("Node 1.ü").is_ok());
    }

    #[test]
    fn parse_refuses_what_is_not_a_sparkplug_topic() {
        assert_eq!(
            Topic::parse(b"spBv1.0/g/NCMD/\xff"),
            Err(TopicError::NotUtf8)
        );
        assert!(matches!(
            Topic::parse(b"spAv1.0/g/NCMD/n"),
            Err(TopicError::Namespace { .. })
        ));
        assert!(matches!(
            Topic::parse(b"spBv1.0/STATE/host"),
            Err(TopicError::MessageType { .. })
        ));
        assert!(matches!(
            Topic::parse(b"spBv1.0"),
            Err(TopicError::MessageType { .. })
        ));
        let error = Topic::parse(b"spBv1.0/g/NCMD/n/d").expect_err("a device level");
        assert_eq!(
            error.to_string(),
            "the topic \"spBv1.0/g/NCMD/n/d\" has 5 levels; NCMD topics have 4"
        );
        assert!(matches!(
            Topic::parse(b"spBv1.0/g/DCMD/n"),
            Err(TopicError::Levels {
                found: 4,
                expected: 5,
                ..
            })
        ));
        assert_eq!(
            Topic::parse(b"spBv1.0//NCMD/n"),
            Err(TopicError::Id {
                topic: "spBv1.0//NCMD/n".to_owned(),
                source: IdError::Empty {
                    kind: IdKind::Group
                }
            })
        );
        assert!(matches!(
            Topic::parse(b"spBv1.0/g/DDATA/n/+"),
            Err(TopicError::Id {
                source: IdError::Reserved {
                    kind: IdKind::Device,
                    ..
                },
                ..
            })
        ));
    }
}
