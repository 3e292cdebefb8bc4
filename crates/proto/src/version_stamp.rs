//! The agent's version as a stamp in its binary (issue 19, ADR 0033): a
//! fixed slot after a marker, which a release script (and the tests) set
//! in a copy of a built binary without rebuilding it. The agent reads its
//! version from the slot at run time, so a stamped copy reports the
//! stamped version everywhere (birth, facts, `--version`).
//!
//! Layout: [`MARKER`], then [`SLOT_BYTES`] bytes holding the version
//! padded with NUL bytes.

use crate::desired::agent_release::{MAX_VERSION_BYTES, check_version};

/// Precedes the slot; exactly once in an agent binary.
pub const MARKER: [u8; 27] = *b"\x00tether-agent-version-slot\x01";
/// The slot's size: the longest release version.
pub const SLOT_BYTES: usize = MAX_VERSION_BYTES;
/// The marker and the slot.
pub const STAMP_BYTES: usize = MARKER.len() + SLOT_BYTES;

/// The stamp holding `version`, for a `static` in the agent; evaluated at
/// compile time, where a version longer than the slot stops the build.
pub const fn stamp(version: &str) -> [u8; STAMP_BYTES] {
    let version = version.as_bytes();
    assert!(version.len() <= SLOT_BYTES, "the version exceeds the slot");
    let mut out = [0u8; STAMP_BYTES];
    let mut i = 0;
    while i < MARKER.len() {
        out[i] = MARKER[i];
        i += 1;
    }
    let mut j = 0;
    while j < version.len() {
        out[MARKER.len() + j] = version[j];
        j += 1;
    }
    out
}

/// The version a stamp holds: the slot's bytes up to the first NUL, if
/// they are a valid version.
pub fn read(stamp: &[u8; STAMP_BYTES]) -> Option<&str> {
    let slot = &stamp[MARKER.len()..];
    let end = slot.iter().position(|b| *b == 0).unwrap_or(slot.len());
    let version = std::str::from_utf8(&slot[..end]).ok()?;
    check_version("version", version).ok()?;
    Some(version)
}

/// Why a binary could not be stamped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    #[error("{0}")]
    Version(String),
    #[error("no version slot found: not a tether-agent binary (or one from before version stamps)")]
    NoSlot,
    #[error("{0} version slots found: expected exactly one")]
    ManySlots(usize),
}

/// Sets the version in `binary` (a whole agent executable's bytes) to
/// `version`.
pub fn restamp(binary: &mut [u8], version: &str) -> Result<(), StampError> {
    check_version("version", version).map_err(|e| StampError::Version(e.message))?;
    let slots: Vec<usize> = binary
        .windows(MARKER.len())
        .enumerate()
        .filter(|(at, window)| {
            *window == MARKER && binary.len() >= at + STAMP_BYTES && {
                let slot: &[u8; STAMP_BYTES] = binary[*at..at + STAMP_BYTES]
                    .try_into()
                    .unwrap_or(&[0; STAMP_BYTES]);
                read(slot).is_some()
            }
        })
        .map(|(at, _)| at)
        .collect();
    let at = match slots.as_slice() {
        [] => return Err(StampError::NoSlot),
        [at] => *at,
        more => return Err(StampError::ManySlots(more.len())),
    };
    binary[at..at + STAMP_BYTES].copy_from_slice(&stamp(version));
    Ok(())
}

/// The versions stamped in a binary that arrives piece by piece (an
/// upload), slot by slot as [`restamp`] sees them: a marker followed by a
/// valid version. tetherd refuses a release whose binary is not stamped
/// with the release's version: the agent would swap it in and report
/// another version than the one it was sent.
#[derive(Debug, Default)]
pub struct StampScan {
    /// The end of what came so far, shorter than a stamp: a stamp may
    /// start there and end in the next piece.
    tail: Vec<u8>,
    versions: Vec<String>,
}

impl StampScan {
    pub fn feed(&mut self, piece: &[u8]) {
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(piece);
        // A stamp found here ends in `piece`: the tail alone cannot hold
        // one, so none is counted twice.
        for at in 0..window.len().saturating_sub(STAMP_BYTES - 1) {
            if window[at] == MARKER[0] && window[at..at + MARKER.len()] == MARKER {
                let stamp: &[u8; STAMP_BYTES] = window[at..at + STAMP_BYTES]
                    .try_into()
                    .unwrap_or(&[0; STAMP_BYTES]);
                if let Some(version) = read(stamp) {
                    self.versions.push(version.to_owned());
                }
            }
        }
        let keep = window.len().min(STAMP_BYTES - 1);
        window.drain(..window.len() - keep);
        self.tail = window;
    }

    /// The stamped versions found, in order.
    pub fn versions(&self) -> &[String] {
        &self.versions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_is_restamped_in_place_and_reads_back() {
        let mut binary = b"ELF....".to_vec();
        binary.extend_from_slice(&stamp("0.1.0"));
        binary.extend_from_slice(b"....rest");
        let length = binary.len();
        restamp(&mut binary, "0.2.0-rc.1").expect("stamped");
        assert_eq!(binary.len(), length);
        let at = 7;
        let slot: &[u8; STAMP_BYTES] = binary[at..at + STAMP_BYTES].try_into().expect("slot");
        assert_eq!(read(slot), Some("0.2.0-rc.1"));
        assert!(binary.ends_with(b"....rest"));
    }

    #[test]
    fn a_stamp_is_found_once_whatever_pieces_the_binary_comes_in() {
        let mut binary = b"ELF".repeat(50);
        binary.extend_from_slice(&stamp("1.4.0"));
        binary.extend_from_slice(&b"rest".repeat(40));
        for size in [1, 7, STAMP_BYTES - 1, STAMP_BYTES, STAMP_BYTES + 1, 4096] {
            let mut scan = StampScan::default();
            for piece in binary.chunks(size) {
                scan.feed(piece);
            }
            assert_eq!(scan.versions(), ["1.4.0"], "pieces of {size}");
        }
        let mut bare = StampScan::default();
        bare.feed(&MARKER);
        bare.feed(&[b'/'; SLOT_BYTES]);
        assert!(bare.versions().is_empty());
    }

    #[test]
    fn bad_versions_and_binaries_without_one_slot_are_refused() {
        let mut binary = stamp("0.1.0").to_vec();
        assert!(matches!(
            restamp(&mut binary, "../evil"),
            Err(StampError::Version(_))
        ));
        assert_eq!(
            restamp(&mut b"plain".to_vec(), "1.0"),
            Err(StampError::NoSlot)
        );
        let mut two = [stamp("1"), stamp("2")].concat();
        assert_eq!(restamp(&mut two, "3"), Err(StampError::ManySlots(2)));
        // A bare marker with no valid version after it is not a slot.
        let mut bare = MARKER.to_vec();
        bare.extend_from_slice(&[b'/'; SLOT_BYTES]);
        bare.extend_from_slice(&stamp("1"));
        restamp(&mut bare, "2").expect("the one real slot");
    }
}
