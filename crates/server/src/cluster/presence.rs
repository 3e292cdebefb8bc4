//! Who may write a device's presence when several replicas hold sessions.
//!
//! The replica holding a device's session owns its presence: its connect
//! marks the device online and names itself in `session_replica`; only it
//! marks the device offline when that session ends. A device that shows
//! online on another replica when it connects here failed over before that
//! replica noticed: its old session is recorded as ended, then the new one
//! as started, so the operator sees offline then online exactly once.
//!
//! With an external broker no replica holds sessions: the broker does, and
//! any replica may handle a device's birth or will (ADR 0011). Presence then
//! names no replica, so no replica's restart, stop or lapsed lease touches it.

use chrono::{DateTime, Utc};
use tether_proto::{DeviceId, Presence};

use super::ReplicaId;
use crate::store::{DeviceSession, EventRecord};

/// Who holds the device sessions a replica reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOwner {
    /// This replica's embedded endpoint.
    Replica(ReplicaId),
    /// The external broker.
    Broker,
}

impl SessionOwner {
    /// What `session_replica` says for sessions this owner holds.
    pub fn stored(&self) -> Option<&str> {
        match self {
            SessionOwner::Replica(replica) => Some(replica.as_str()),
            SessionOwner::Broker => None,
        }
    }
}

impl std::fmt::Display for SessionOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionOwner::Replica(replica) => write!(f, "replica {replica}"),
            SessionOwner::Broker => f.write_str("the external broker"),
        }
    }
}

/// A session event the operator sees, in the order to record them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A session started on this replica.
    Started,
    /// The session on this replica ended.
    Ended,
    /// The device's session on that replica ended (`None`: a replica
    /// unknown) without that replica recording it.
    EndedOn(Option<String>),
}

/// What to write for a session change: the device's new presence and owner,
/// and the events to record with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionWrite {
    pub session: DeviceSession,
    pub events: Vec<SessionEvent>,
}

/// The device's session on this replica started; `stored` is what its row
/// says now.
pub fn on_connected(stored: &DeviceSession, me: &SessionOwner) -> SessionWrite {
    let here = DeviceSession {
        presence: Presence::Online,
        replica: me.stored().map(str::to_owned),
    };
    let events = match (stored.presence, stored.replica.as_deref()) {
        (Presence::Offline, _) => vec![SessionEvent::Started],
        // Written again (the lease was re-claimed, or a repeated birth
        // through the broker): nothing new happened.
        (Presence::Online, owner) if owner == me.stored() => vec![],
        (Presence::Online, owner) => vec![
            SessionEvent::EndedOn(owner.map(str::to_owned)),
            SessionEvent::Started,
        ],
    };
    SessionWrite {
        session: here,
        events,
    }
}

/// This replica claims again a session it still holds, after another
/// replica took its devices over (its lease lapsed). `None`: leave the row
/// alone, because the device connected to another replica since: that
/// session is the newer one, and the one here is stale (half-open).
pub fn on_reclaimed(stored: &DeviceSession, me: &SessionOwner) -> Option<SessionWrite> {
    let elsewhere = stored.presence == Presence::Online
        && stored
            .replica
            .as_deref()
            .is_some_and(|owner| Some(owner) != me.stored());
    (!elsewhere).then(|| on_connected(stored, me))
}

/// The device's session on this replica ended. `None`: leave the row alone,
/// because the device holds a session elsewhere now or another replica
/// already ended this one (took this replica's devices over).
pub fn on_disconnected(stored: &DeviceSession, me: &SessionOwner) -> Option<SessionWrite> {
    let mine = stored.presence == Presence::Online && stored.replica.as_deref() == me.stored();
    mine.then(|| SessionWrite {
        session: DeviceSession {
            presence: Presence::Offline,
            replica: None,
        },
        events: vec![SessionEvent::Ended],
    })
}

/// Why a replica's sessions all ended at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOfReplica {
    /// Its lease lapsed; another replica took its devices over.
    LeaseLapsed,
    /// It started again (it held them before a crash or a restart).
    Restarted,
    /// It stopped cleanly.
    Stopped,
}

/// The `device-online` / `device-offline` event for `event`.
pub fn session_event(
    device: &DeviceId,
    event: &SessionEvent,
    me: &SessionOwner,
    at: DateTime<Utc>,
    suffix: &str,
) -> EventRecord {
    let (name, message) = match event {
        SessionEvent::Started => (
            "device-online",
            format!("MQTT session established on {me}{suffix}"),
        ),
        SessionEvent::Ended => ("device-offline", format!("MQTT session ended{suffix}")),
        SessionEvent::EndedOn(Some(replica)) => (
            "device-offline",
            format!("session on replica {replica} ended: the device connected to {me}"),
        ),
        SessionEvent::EndedOn(None) => (
            "device-offline",
            format!("session on an unknown replica ended: the device connected to {me}"),
        ),
    };
    event_record(device, name, message, at)
}

/// The `device-offline` event for a device whose replica's sessions ended
/// at once; `last_seen` is when that replica last vouched for it.
pub fn replica_ended_event(
    device: &DeviceId,
    replica: &str,
    why: EndOfReplica,
    last_seen: DateTime<Utc>,
    now: DateTime<Utc>,
) -> EventRecord {
    let message = match why {
        EndOfReplica::LeaseLapsed => format!(
            "session on replica {replica} ended: its lease lapsed (last renewed {})",
            last_seen.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
        EndOfReplica::Restarted => {
            format!("session on replica {replica} ended: the replica restarted")
        }
        EndOfReplica::Stopped => format!("session on replica {replica} ended: the replica stopped"),
    };
    event_record(device, "device-offline", message, now)
}

fn event_record(device: &DeviceId, name: &str, message: String, at: DateTime<Utc>) -> EventRecord {
    EventRecord {
        id: uuid::Uuid::now_v7().to_string(),
        device: device.clone(),
        correlation_id: None,
        event: name.to_owned(),
        status_code: 200,
        status_message: message,
        response: serde_json::Value::Null,
        received_at: at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> SessionOwner {
        SessionOwner::Replica(ReplicaId("b".into()))
    }

    fn stored(presence: Presence, replica: Option<&str>) -> DeviceSession {
        DeviceSession {
            presence,
            replica: replica.map(str::to_owned),
        }
    }

    #[test]
    fn a_reclaim_leaves_a_device_that_connected_elsewhere_meanwhile_alone() {
        let me = SessionOwner::Replica(ReplicaId::parse("a").expect("id"));
        let offline = DeviceSession {
            presence: Presence::Offline,
            replica: None,
        };
        assert_eq!(
            on_reclaimed(&offline, &me).map(|w| w.events),
            Some(vec![SessionEvent::Started]),
            "taken over while held here: online again"
        );
        let elsewhere = DeviceSession {
            presence: Presence::Online,
            replica: Some("b".into()),
        };
        assert_eq!(on_reclaimed(&elsewhere, &me), None);
    }

    #[test]
    fn a_device_connecting_here_while_online_on_another_replica_ends_that_session_first() {
        let write = on_connected(&stored(Presence::Online, Some("a")), &me());
        assert_eq!(write.session, stored(Presence::Online, Some("b")));
        assert_eq!(
            write.events,
            [
                SessionEvent::EndedOn(Some("a".into())),
                SessionEvent::Started
            ]
        );
    }

    #[test]
    fn a_device_connecting_while_offline_starts_one_session() {
        let write = on_connected(&stored(Presence::Offline, None), &me());
        assert_eq!(write.session, stored(Presence::Online, Some("b")));
        assert_eq!(write.events, [SessionEvent::Started]);
    }

    #[test]
    fn writing_a_session_this_replica_holds_again_records_nothing() {
        let write = on_connected(&stored(Presence::Online, Some("b")), &me());
        assert!(write.events.is_empty());
    }

    #[test]
    fn only_the_replica_holding_the_session_marks_the_device_offline() {
        let ended = on_disconnected(&stored(Presence::Online, Some("b")), &me())
            .expect("this replica's session");
        assert_eq!(ended.session, stored(Presence::Offline, None));
        assert_eq!(ended.events, [SessionEvent::Ended]);
        assert_eq!(
            on_disconnected(&stored(Presence::Online, Some("c")), &me()),
            None,
            "the device reconnected elsewhere and stays online"
        );
        assert_eq!(
            on_disconnected(&stored(Presence::Offline, None), &me()),
            None,
            "another replica already took this one's devices over"
        );
    }

    #[test]
    fn events_name_the_replica_whose_session_ended() {
        let device = DeviceId::new("edge-1").expect("name");
        let event = session_event(
            &device,
            &SessionEvent::EndedOn(Some("a".into())),
            &me(),
            Utc::now(),
            "",
        );
        assert_eq!(event.event, "device-offline");
        assert!(
            event
                .status_message
                .starts_with("session on replica a ended"),
            "{}",
            event.status_message
        );
    }

    #[test]
    fn through_an_external_broker_presence_names_no_replica_and_follows_birth_and_will() {
        let broker = SessionOwner::Broker;
        let born = on_connected(&stored(Presence::Offline, None), &broker);
        assert_eq!(born.session, stored(Presence::Online, None));
        assert_eq!(born.events, [SessionEvent::Started]);
        assert!(
            on_connected(&stored(Presence::Online, None), &broker)
                .events
                .is_empty(),
            "a repeated birth is not a new session"
        );
        let died = on_disconnected(&stored(Presence::Online, None), &broker)
            .expect("any replica handles the will");
        assert_eq!(died.session, stored(Presence::Offline, None));
        assert_eq!(died.events, [SessionEvent::Ended]);
    }
}
