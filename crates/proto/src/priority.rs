//! Syslog priorities (severities) as log lines carry them, and the names
//! syslog and journalctl give them: one table for tetherd, which parses
//! them in log queries, and the CLI, which prints them.

use crate::telemetry::MAX_PRIORITY;

/// Names of each priority, most severe first; the first is the one shown.
const NAMES: [&[&str]; 8] = [
    &["emerg", "emergency", "panic"],
    &["alert"],
    &["crit", "critical"],
    &["err", "error"],
    &["warning", "warn"],
    &["notice"],
    &["info"],
    &["debug"],
];

/// The name shown for `priority` (`err`, `warning`, …); `None` past 7.
pub fn name(priority: u8) -> Option<&'static str> {
    NAMES.get(usize::from(priority)).map(|names| names[0])
}

/// A priority given as a number 0–7 or a name (`err`, `warning`, …), in
/// any case.
pub fn parse(text: &str) -> Result<u8, String> {
    let text = text.trim();
    if let Ok(number @ 0..=MAX_PRIORITY) = text.parse::<u8>() {
        return Ok(number);
    }
    NAMES
        .iter()
        .position(|names| names.iter().any(|name| name.eq_ignore_ascii_case(text)))
        .map(|index| index as u8)
        .ok_or_else(|| {
            format!(
                "priority {text:?} is not 0–7 or one of emerg, alert, crit, err, warning, notice, info, debug"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_are_numbers_or_syslog_names() {
        assert_eq!(parse("3"), Ok(3));
        assert_eq!(parse("err"), Ok(3));
        assert_eq!(parse("WARNING"), Ok(4));
        assert_eq!(parse("emerg"), Ok(0));
        assert_eq!(parse("panic"), Ok(0));
        assert_eq!(parse("debug"), Ok(7));
        for bad in ["8", "-1", "loud", ""] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains("0–7"), "{error}");
        }
    }

    #[test]
    fn each_priority_shows_its_first_name_and_reads_back() {
        for priority in 0..=MAX_PRIORITY {
            let shown = name(priority).expect("named");
            assert_eq!(parse(shown), Ok(priority));
        }
        assert_eq!(name(8), None);
    }
}
