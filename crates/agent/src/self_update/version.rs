//! The version this agent reports: the stamp in its binary
//! ([`tether_proto::version_stamp`]), so that a copy stamped by a release
//! script reports the stamped version without a rebuild.

use std::sync::OnceLock;

use tether_proto::version_stamp::{self, STAMP_BYTES};

/// The built version, stamped at compile time; a release script may
/// overwrite it in a copy of the binary.
static STAMP: [u8; STAMP_BYTES] = version_stamp::stamp(env!("CARGO_PKG_VERSION"));

/// The agent's version, as its binary's stamp holds it.
pub fn agent_version() -> &'static str {
    static VERSION: OnceLock<&'static str> = OnceLock::new();
    VERSION.get_or_init(|| {
        // Read through black_box: the compiler must not fold the slot into
        // the value it was built with, since the file may say otherwise.
        let stamp: &'static [u8; STAMP_BYTES] = std::hint::black_box(&STAMP);
        version_stamp::read(stamp).unwrap_or(env!("CARGO_PKG_VERSION"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unstamped_build_reports_its_package_version() {
        assert_eq!(agent_version(), env!("CARGO_PKG_VERSION"));
    }
}
