//! The spec's `loggingConfig` as a filter over log records (seed 004):
//! `priority` keeps that level and the more severe ones (7 keeps all),
//! `units` keeps only those systemd units (none: all).
//!
//! A journal record's unit is its `_SYSTEMD_UNIT` (else its
//! `SYSLOG_IDENTIFIER`); a syslog record's is its tag, which is usually the
//! unit's name without `.service` (`sshd` for `sshd.service`), so a unit
//! matches both. Files the device names with `--log-file` are kept whatever
//! `units` says: they are no systemd unit, and were chosen on the device;
//! so are supervised processes' lines, which the spec asked for.

use tether_proto::spec::LoggingConfig;
use tether_proto::telemetry::{LogRecord, MAX_PRIORITY};

/// Where a record came from, for the `units` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Journal,
    Syslog,
    File,
    /// A supervised process's output.
    Process,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    priority: u8,
    units: Vec<String>,
}

impl Default for Filter {
    fn default() -> Self {
        Self::new(&LoggingConfig::default())
    }
}

impl Filter {
    pub fn new(config: &LoggingConfig) -> Self {
        Self {
            priority: config.priority.min(MAX_PRIORITY),
            units: config.units.clone(),
        }
    }

    /// Whether `record` from `origin` goes to tetherd.
    pub fn admits(&self, record: &LogRecord, origin: Origin) -> bool {
        if record.priority > self.priority {
            return false;
        }
        if self.units.is_empty() || matches!(origin, Origin::File | Origin::Process) {
            return true;
        }
        self.units.iter().any(|unit| {
            record.unit == *unit || unit.strip_suffix(".service") == Some(record.unit.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(priority: u8, unit: &str) -> LogRecord {
        LogRecord {
            at: chrono::Utc::now(),
            priority,
            unit: unit.into(),
            message: "m".into(),
            fields: Default::default(),
        }
    }

    fn filter(priority: u8, units: &[&str]) -> Filter {
        Filter::new(&LoggingConfig {
            enable_journal_export: true,
            priority,
            units: units.iter().map(|u| (*u).to_owned()).collect(),
        })
    }

    #[test]
    fn the_default_keeps_everything() {
        let all = Filter::default();
        for priority in 0..=7 {
            assert!(all.admits(&record(priority, "x"), Origin::Syslog));
        }
    }

    #[test]
    fn priority_keeps_that_level_and_more_severe() {
        let errors = filter(3, &[]);
        assert!(errors.admits(&record(0, ""), Origin::Journal));
        assert!(errors.admits(&record(3, ""), Origin::Journal));
        assert!(!errors.admits(&record(4, ""), Origin::Journal));
        assert!(!errors.admits(&record(7, ""), Origin::File));
        let emergencies = filter(0, &[]);
        assert!(!emergencies.admits(&record(1, ""), Origin::Syslog));
    }

    #[test]
    fn units_match_journal_units_and_syslog_tags_but_not_files() {
        let ssh = filter(7, &["ssh.service", "cron.timer"]);
        assert!(ssh.admits(&record(6, "ssh.service"), Origin::Journal));
        assert!(ssh.admits(&record(6, "ssh"), Origin::Syslog));
        assert!(ssh.admits(&record(6, "cron.timer"), Origin::Journal));
        assert!(
            !ssh.admits(&record(6, "cron"), Origin::Syslog),
            "only .service drops its suffix"
        );
        assert!(!ssh.admits(&record(6, "nginx.service"), Origin::Journal));
        assert!(!ssh.admits(&record(6, ""), Origin::Syslog));
        assert!(ssh.admits(&record(6, "/var/log/app.log"), Origin::File));
        // Both rules at once.
        let strict = filter(3, &["ssh.service"]);
        assert!(!strict.admits(&record(4, "ssh.service"), Origin::Journal));
        assert!(!strict.admits(&record(6, "/var/log/app.log"), Origin::File));
    }
}
