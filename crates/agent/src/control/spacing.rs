//! One kind of control request, done at most once per spacing.
//!
//! A request is never dropped, only held: one that comes within the
//! spacing of the last done waits until the spacing has passed, and those
//! that come meanwhile join it. So every request is answered by something
//! done at or after it (tetherd's monitor counts only what it hears after
//! its request as the answer), and a burst of requests costs one answer.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Spaced {
    spacing: Duration,
    last_done: Option<Instant>,
    /// When the first request not yet done came.
    held_since: Option<Instant>,
}

impl Spaced {
    pub fn new(spacing: Duration) -> Self {
        Self {
            spacing,
            last_done: None,
            held_since: None,
        }
    }

    pub fn request(&mut self, now: Instant) {
        self.held_since.get_or_insert(now);
    }

    /// When the held request is to be done, if one is held.
    pub fn due_at(&self) -> Option<Instant> {
        let held = self.held_since?;
        Some(match self.last_done {
            Some(done) => held.max(done + self.spacing),
            None => held,
        })
    }

    /// Whether the held request is due at `now`; if so it counts as done.
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.due_at().is_none_or(|due| due > now) {
            return false;
        }
        self.held_since = None;
        self.last_done = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACING: Duration = Duration::from_secs(5);

    #[test]
    fn the_first_request_is_done_at_once_and_a_burst_after_it_once_when_the_spacing_ends() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut spaced = Spaced::new(SPACING);
        assert_eq!(spaced.due_at(), None);
        assert!(!spaced.take_due(at(0)), "nothing asked");

        spaced.request(at(0));
        assert_eq!(spaced.due_at(), Some(at(0)));
        assert!(spaced.take_due(at(0)));
        assert!(!spaced.take_due(at(1)), "done once");

        for ms in [1_000, 2_000, 4_000] {
            spaced.request(at(ms));
        }
        assert_eq!(spaced.due_at(), Some(at(5_000)), "held, not dropped");
        assert!(!spaced.take_due(at(4_999)));
        assert!(spaced.take_due(at(5_000)));
        assert_eq!(spaced.due_at(), None, "the burst took one answer");

        // Long after the last one: at once again.
        spaced.request(at(60_000));
        assert!(spaced.take_due(at(60_000)));
    }
}
