//! Which records of a batch to store, given where the batch's spool stands.
//! Pure: the store asks this inside the batch's transaction.
//!
//! A cursor belongs to one spool of one device and stream, so a device whose
//! spool was wiped (a new spool id, numbers from 0 again) gets a new cursor,
//! and a late batch of its old spool still meets the old cursor: stored if
//! new to it, dropped if not. Nothing a device sends can block its stream:
//! a gap (numbers never received, e.g. records its spool dropped when full)
//! is recorded and passed over.

/// Cursors kept per device and stream, the newest used. A device makes a
/// new spool only when its state is wiped; a device that names a new one
/// in every batch would otherwise leave a row per batch, for good, that
/// every read of its usage sums. The counts of those beyond are kept in
/// one row; a late batch of such a spool is stored as if new.
pub const MAX_SPOOLS: u32 = 16;

/// What to do with a batch of `count` records from `first_seq` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every record was stored before: acknowledge, store nothing.
    Duplicate,
    /// Store the records from index `skip` on (those before were stored
    /// already); `gap` numbers between the cursor and the batch never came.
    Store { skip: u64, gap: u64, next_seq: u64 },
}

/// `next_seq` is the cursor's, or `None` for a spool not seen before.
pub fn judge(next_seq: Option<u64>, first_seq: u64, count: u64) -> Verdict {
    let end = first_seq.saturating_add(count);
    match next_seq {
        None => Verdict::Store {
            skip: 0,
            gap: 0,
            next_seq: end,
        },
        Some(next) if end <= next => Verdict::Duplicate,
        Some(next) if first_seq <= next => Verdict::Store {
            skip: next - first_seq,
            gap: 0,
            next_seq: end,
        },
        Some(next) => Verdict::Store {
            skip: 0,
            gap: first_seq - next,
            next_seq: end,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_batch_is_stored_whole() {
        assert_eq!(
            judge(Some(100), 100, 50),
            Verdict::Store {
                skip: 0,
                gap: 0,
                next_seq: 150
            }
        );
    }

    #[test]
    fn a_batch_stored_before_is_dropped() {
        assert_eq!(judge(Some(150), 100, 50), Verdict::Duplicate);
        assert_eq!(judge(Some(150), 0, 10), Verdict::Duplicate);
    }

    #[test]
    fn a_batch_overlapping_what_was_stored_keeps_only_its_new_records() {
        // The spool re-cut its batches after a restart.
        assert_eq!(
            judge(Some(120), 100, 50),
            Verdict::Store {
                skip: 20,
                gap: 0,
                next_seq: 150
            }
        );
    }

    #[test]
    fn a_gap_is_recorded_and_passed_over() {
        assert_eq!(
            judge(Some(100), 130, 10),
            Verdict::Store {
                skip: 0,
                gap: 30,
                next_seq: 140
            }
        );
    }

    #[test]
    fn a_new_spool_starts_where_its_first_batch_does() {
        // Its first numbers may be gone already: the spool counts those.
        assert_eq!(
            judge(None, 4_000, 10),
            Verdict::Store {
                skip: 0,
                gap: 0,
                next_seq: 4_010
            }
        );
        assert_eq!(
            judge(None, 0, 1),
            Verdict::Store {
                skip: 0,
                gap: 0,
                next_seq: 1
            }
        );
    }
}
