//! A source's bounded inlet: what a listener receives waits here, as bytes,
//! until the source's drain parses it into the spool. A flood fills it to
//! its bound and no further; what does not fit is counted, and the count
//! reaches tetherd as a warning record of the agent's own, so nothing
//! disappears without a trace.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use tether_proto::telemetry::LogRecord;
use tokio::sync::Notify;

/// Bytes a source may have waiting before it drops what arrives.
pub const INLET_BYTES: usize = 512 * 1024;
/// What a waiting frame costs beside its bytes (its time, its vector,
/// its slot), counted against the bound: a flood of empty datagrams or of
/// `0 ` frames over TCP would otherwise queue without limit.
const FRAME_OVERHEAD: usize = std::mem::size_of::<(DateTime<Utc>, Vec<u8>)>();

#[derive(Debug, Default)]
struct Waiting {
    frames: VecDeque<(DateTime<Utc>, Vec<u8>)>,
    bytes: usize,
}

#[derive(Debug)]
pub struct Inlet {
    name: String,
    max_bytes: usize,
    waiting: Mutex<Waiting>,
    dropped: AtomicU64,
    ready: Notify,
}

impl Inlet {
    pub fn new(name: impl Into<String>, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            max_bytes,
            waiting: Mutex::default(),
            dropped: AtomicU64::new(0),
            ready: Notify::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a received frame, dated now; drops and counts it if the inlet
    /// is full.
    pub fn push_raw(&self, frame: &[u8]) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let cost = frame.len() + FRAME_OVERHEAD;
        if waiting.bytes + cost > self.max_bytes {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        waiting.bytes += cost;
        waiting.frames.push_back((Utc::now(), frame.to_vec()));
        drop(waiting);
        self.ready.notify_one();
    }

    /// Everything waiting, oldest first.
    pub fn take(&self) -> VecDeque<(DateTime<Utc>, Vec<u8>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.bytes = 0;
        std::mem::take(&mut waiting.frames)
    }

    /// Frames dropped since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub async fn ready(&self) {
        self.ready.notified().await;
    }
}

/// The warning that `newly` more frames (`total` since the start) did not
/// fit in `source`'s inlet.
pub fn dropped_record(source: &str, newly: u64, total: u64, at: DateTime<Utc>) -> LogRecord {
    LogRecord {
        at,
        priority: 4,
        unit: "tether-agent".into(),
        message: format!(
            "{source}: dropped {newly} messages that arrived faster than the agent could take them ({total} since the agent started)"
        ),
        fields: [
            ("source".to_owned(), source.to_owned()),
            ("droppedMessages".to_owned(), newly.to_string()),
        ]
        .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_inlet_counts_what_it_drops_and_takes_again_once_drained() {
        let inlet = Inlet::new("test", 100 + 3 * FRAME_OVERHEAD);
        for _ in 0..10 {
            inlet.push_raw(&[b'x'; 30]);
        }
        assert_eq!(inlet.dropped(), 7);
        assert_eq!(inlet.take().len(), 3);
        inlet.push_raw(&[b'x'; 30]);
        assert_eq!((inlet.take().len(), inlet.dropped()), (1, 7));
        let record = dropped_record("syslog UDP 127.0.0.1:5514", 7, 7, Utc::now());
        assert_eq!(record.fields["droppedMessages"], "7");
        assert!(
            record
                .message
                .starts_with("syslog UDP 127.0.0.1:5514: dropped 7 messages")
        );
    }

    #[test]
    fn empty_frames_count_against_the_bound_too() {
        let inlet = Inlet::new("test", 10 * FRAME_OVERHEAD);
        for _ in 0..1_000 {
            inlet.push_raw(b"");
        }
        assert_eq!((inlet.take().len(), inlet.dropped()), (10, 990));
    }
}
