//! The version this agent reports: the stamp in its binary
//! ([`tether_proto::version_stamp`]), so that a copy stamped by a release
//! script reports the stamped version without a rebuild.

use std::cmp::Ordering;
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

/// How release version `a` orders against `b` by semver precedence:
/// dot-separated numbers (any count; missing ones are 0), then a
/// pre-release (`-rc.1`) before the release itself, build metadata
/// (`+…`) ignored. `None` when either is not such a version: nothing
/// tells whether one is older.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (Parsed::of(a)?, Parsed::of(b)?);
    let width = a.core.len().max(b.core.len());
    let number = |core: &[u64], i: usize| core.get(i).copied().unwrap_or(0);
    let core = (0..width)
        .map(|i| number(&a.core, i).cmp(&number(&b.core, i)))
        .find(|order| order.is_ne())
        .unwrap_or(Ordering::Equal);
    Some(core.then_with(|| match (a.pre, b.pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => compare_pre(a, b),
    }))
}

/// A version split into its numbers and its pre-release.
struct Parsed<'a> {
    core: Vec<u64>,
    pre: Option<&'a str>,
}

impl<'a> Parsed<'a> {
    fn of(version: &'a str) -> Option<Self> {
        let version = version.split_once('+').map_or(version, |(v, _)| v);
        let (core, pre) = match version.split_once('-') {
            Some((_, "")) => return None,
            Some((core, pre)) => (core, Some(pre)),
            None => (version, None),
        };
        let core = core
            .split('.')
            .map(|part| {
                (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| part.parse::<u64>().ok())
                    .flatten()
            })
            .collect::<Option<Vec<u64>>>()?;
        Some(Self { core, pre })
    }
}

/// Semver's pre-release precedence: identifier by identifier, numbers
/// numerically and before words, a shorter list first when equal so far.
fn compare_pre(a: &str, b: &str) -> Ordering {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if order.is_ne() {
                    return order;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_semver_precedence_and_others_do_not_order() {
        use Ordering::{Equal, Greater, Less};
        for (a, b, order) in [
            ("0.1.0", "0.2.0", Less),
            ("0.10.0", "0.9.3", Greater),
            ("1.2", "1.2.0", Equal),
            ("1.2.0.1", "1.2.0", Greater),
            ("2024.06.01", "2024.5.30", Greater),
            ("1.0.0-rc.1", "1.0.0", Less),
            ("1.0.0-rc.2", "1.0.0-rc.10", Less),
            ("1.0.0-alpha", "1.0.0-alpha.1", Less),
            ("1.0.0-1", "1.0.0-alpha", Less),
            ("1.0.0+build.5", "1.0.0", Equal),
        ] {
            assert_eq!(compare(a, b), Some(order), "{a} against {b}");
            assert_eq!(compare(b, a), Some(order.reverse()), "{b} against {a}");
        }
        assert_eq!(compare("nightly", "1.0.0"), None);
        assert_eq!(compare("1.0.0", "1..0"), None);
        assert_eq!(compare("1.0.0-", "1.0.0"), None);
    }

    #[test]
    fn an_unstamped_build_reports_its_package_version() {
        assert_eq!(agent_version(), env!("CARGO_PKG_VERSION"));
    }
}
