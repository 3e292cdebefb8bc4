//! Which session of each device is the current one.
//!
//! When a device reconnects with the same client id, the broker takes the old
//! session over; the old session's end can be reported after the new one has
//! started. Every session gets a generation when it connects, and only the
//! end of the device's current generation counts as the device going away.

use std::collections::HashMap;

use tether_proto::DeviceId;

/// Number given to a device's session when it connects; later sessions get
/// larger numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Generation(u64);

#[derive(Debug, Default)]
pub(super) struct Presence {
    current: HashMap<DeviceId, Generation>,
    next: u64,
}

impl Presence {
    /// Records a new session of `device` as its current one.
    pub fn connected(&mut self, device: DeviceId) -> Generation {
        self.next += 1;
        let generation = Generation(self.next);
        self.current.insert(device, generation);
        generation
    }

    /// Records the end of the session of `device` with `generation`. Returns
    /// whether that was the current session, i.e. whether the device is now
    /// gone; the end of a superseded session changes nothing.
    pub fn disconnected(&mut self, device: &DeviceId, generation: Generation) -> bool {
        if self.current.get(device) == Some(&generation) {
            self.current.remove(device);
            true
        } else {
            false
        }
    }

    pub fn is_connected(&self, device: &DeviceId) -> bool {
        self.current.contains_key(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> DeviceId {
        DeviceId::new(name).expect("valid id")
    }

    #[test]
    fn a_session_comes_and_goes() {
        let mut presence = Presence::default();
        let a = id("device-a");
        assert!(!presence.is_connected(&a));
        let first = presence.connected(a.clone());
        assert!(presence.is_connected(&a));
        assert!(presence.disconnected(&a, first));
        assert!(!presence.is_connected(&a));
        assert!(!presence.disconnected(&a, first), "reported once");
    }

    #[test]
    fn the_end_of_a_taken_over_session_is_not_a_disconnect() {
        let mut presence = Presence::default();
        let a = id("device-a");
        let old = presence.connected(a.clone());
        let new = presence.connected(a.clone());
        assert!(new > old);
        assert!(!presence.disconnected(&a, old));
        assert!(presence.is_connected(&a));
        assert!(presence.disconnected(&a, new));
        assert!(!presence.is_connected(&a));
    }

    #[test]
    fn devices_are_tracked_apart() {
        let mut presence = Presence::default();
        let a = id("device-a");
        let b = id("device-b");
        let ga = presence.connected(a.clone());
        let gb = presence.connected(b.clone());
        assert!(!presence.disconnected(&b, ga));
        assert!(presence.disconnected(&a, ga));
        assert!(presence.is_connected(&b));
        assert!(presence.disconnected(&b, gb));
    }
}
