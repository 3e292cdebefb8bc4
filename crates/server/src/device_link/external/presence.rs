//! Presence from what devices say on their `status` topic, for a broker
//! whose sessions tetherd cannot see: the birth says online, the death (or
//! the will, which the broker publishes when the session drops) says
//! offline.
//!
//! The broker may hand tetherd a will after the birth of the device's next
//! connection (a keep-alive timeout noticed late, or the two landing on
//! different replicas). Each status carries the agent's `bootId` (one per
//! process) and `seq` (one per connection, shared by its birth and its
//! will), so a status older than the latest one known is stale: within one
//! boot a smaller `seq`; across boots, a death from another boot while the
//! device is online from this one.

use std::collections::HashMap;

use tether_proto::{DeviceId, DeviceStatus, Presence};

/// What a status changes about the device's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    /// The device is online now (it was not, or not known).
    Online,
    /// The device is offline now (it was online, or not known).
    Offline,
    /// The device was in this state already (e.g. a redelivered copy).
    Unchanged,
    /// Older than what is known: ignored.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Latest {
    boot_id: String,
    seq: u64,
    online: bool,
}

#[derive(Debug, Default)]
pub(super) struct StatusPresence {
    latest: HashMap<DeviceId, Latest>,
}

impl StatusPresence {
    pub fn observe(&mut self, device: &DeviceId, status: &DeviceStatus) -> Transition {
        let online = status.state == Presence::Online;
        let incoming = Latest {
            boot_id: status.boot_id.clone(),
            seq: status.seq,
            online,
        };
        let Some(known) = self.latest.get_mut(device) else {
            self.latest.insert(device.clone(), incoming);
            return if online {
                Transition::Online
            } else {
                Transition::Offline
            };
        };
        let newer = if known.boot_id == incoming.boot_id {
            incoming.seq >= known.seq
        } else {
            // Boots cannot be ordered: a new boot's birth wins, and a death
            // from another boot only counts while the device is not online.
            online || !known.online
        };
        if !newer {
            return Transition::Stale;
        }
        let was_online = known.online;
        *known = incoming;
        match (was_online, online) {
            (false, true) => Transition::Online,
            (true, false) => Transition::Offline,
            _ => Transition::Unchanged,
        }
    }

    /// Takes an online device's last birth as known, e.g. from the store
    /// when tetherd starts while devices stay connected to the broker.
    pub fn seed_online(&mut self, device: DeviceId, boot_id: String, seq: u64) {
        self.latest.insert(
            device,
            Latest {
                boot_id,
                seq,
                online: true,
            },
        );
    }

    /// Marks the device offline without a status: its session was ended
    /// by tetherd, or the device is gone. Its next birth is taken whatever
    /// its `seq`.
    pub fn forget(&mut self, device: &DeviceId) -> bool {
        self.latest.remove(device).is_some_and(|known| known.online)
    }

    pub fn online(&self) -> Vec<DeviceId> {
        self.latest
            .iter()
            .filter(|(_, known)| known.online)
            .map(|(device, _)| device.clone())
            .collect()
    }

    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.latest.get(device).is_some_and(|known| known.online)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: Presence, boot_id: &str, seq: u64) -> DeviceStatus {
        DeviceStatus {
            state,
            agent_version: "0.1.0".into(),
            capabilities: Vec::new(),
            boot_id: boot_id.into(),
            seq,
        }
    }

    fn id(name: &str) -> DeviceId {
        DeviceId::new(name).expect("valid")
    }

    #[test]
    fn birth_then_death_of_one_connection() {
        let mut presence = StatusPresence::default();
        let a = id("device-a");
        assert!(!presence.is_online(&a));
        assert_eq!(
            presence.observe(&a, &status(Presence::Online, "b1", 1)),
            Transition::Online
        );
        assert!(presence.is_online(&a));
        assert_eq!(
            presence.observe(&a, &status(Presence::Online, "b1", 1)),
            Transition::Unchanged,
            "a redelivered birth"
        );
        assert_eq!(
            presence.observe(&a, &status(Presence::Offline, "b1", 1)),
            Transition::Offline
        );
        assert!(!presence.is_online(&a));
    }

    #[test]
    fn a_will_from_an_earlier_connection_is_stale() {
        let mut presence = StatusPresence::default();
        let a = id("device-a");
        presence.observe(&a, &status(Presence::Online, "b1", 1));
        assert_eq!(
            presence.observe(&a, &status(Presence::Online, "b1", 2)),
            Transition::Unchanged
        );
        assert_eq!(
            presence.observe(&a, &status(Presence::Offline, "b1", 1)),
            Transition::Stale
        );
        assert!(presence.is_online(&a));
        assert_eq!(
            presence.observe(&a, &status(Presence::Offline, "b1", 2)),
            Transition::Offline
        );
    }

    #[test]
    fn a_will_from_an_earlier_boot_is_stale_while_the_new_boot_is_online() {
        let mut presence = StatusPresence::default();
        let a = id("device-a");
        presence.observe(&a, &status(Presence::Online, "old", 7));
        assert_eq!(
            presence.observe(&a, &status(Presence::Online, "new", 1)),
            Transition::Unchanged
        );
        assert_eq!(
            presence.observe(&a, &status(Presence::Offline, "old", 7)),
            Transition::Stale
        );
        assert!(presence.is_online(&a));
        // Once offline, a new boot's birth brings it back at any seq.
        presence.observe(&a, &status(Presence::Offline, "new", 1));
        assert_eq!(
            presence.observe(&a, &status(Presence::Online, "newer", 1)),
            Transition::Online
        );
    }

    #[test]
    fn a_seeded_device_is_online_until_its_death() {
        let mut presence = StatusPresence::default();
        let a = id("device-a");
        presence.seed_online(a.clone(), "b1".into(), 3);
        assert!(presence.is_online(&a));
        assert_eq!(presence.online(), vec![a.clone()]);
        assert_eq!(
            presence.observe(&a, &status(Presence::Offline, "b1", 2)),
            Transition::Stale
        );
        assert_eq!(
            presence.observe(&a, &status(Presence::Offline, "b1", 3)),
            Transition::Offline
        );
    }

    #[test]
    fn devices_without_seq_still_come_and_go() {
        let mut presence = StatusPresence::default();
        let a = id("device-a");
        for _ in 0..2 {
            assert_eq!(
                presence.observe(&a, &status(Presence::Online, "", 0)),
                Transition::Online
            );
            assert_eq!(
                presence.observe(&a, &status(Presence::Offline, "", 0)),
                Transition::Offline
            );
        }
    }

    #[test]
    fn forgetting_takes_the_next_birth_at_any_seq() {
        let mut presence = StatusPresence::default();
        let a = id("device-a");
        presence.observe(&a, &status(Presence::Online, "b1", 5));
        assert!(presence.forget(&a));
        assert!(!presence.is_online(&a));
        assert!(!presence.forget(&a), "reported once");
        assert_eq!(
            presence.observe(&a, &status(Presence::Online, "b1", 1)),
            Transition::Online
        );
    }
}
