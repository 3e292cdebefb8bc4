//! The agent's log output on stderr, changeable at run time by the
//! `configure-logger` action through tracing-subscriber's reload layers.
//!
//! The filter is a list of targets and levels (`info,rumqttc=warn`),
//! tracing-subscriber's `Targets`: its `EnvFilter` adds span and field
//! filters through regex-automata and regex-syntax, about 0.2 MB of code
//! the agent maps at start (its idle memory budget, BENCHMARKS.md).

use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use tracing_subscriber::filter::{ParseError, Targets};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry, reload};

type FilteredRegistry = Layered<reload::Layer<Targets, Registry>, Registry>;
type FormatLayer = Box<dyn Layer<FilteredRegistry> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error(
        "invalid log level {given:?}: use debug, info, warning, error or critical, or targets and levels such as \"info,tether_agent=debug\""
    )]
    Level { given: String, source: ParseError },
    #[error(
        "invalid log level {given:?}: {target:?} is not a target (a crate or module path such as tether_agent::session); span and field filters are not supported"
    )]
    Target { given: String, target: String },
    #[error("cannot install the logger: another one is already installed")]
    Install(#[source] tracing_subscriber::util::TryInitError),
    #[error("cannot change the logger: it is no longer installed")]
    Reload(#[source] reload::Error),
}

/// The logger's current settings, as `configure-logger` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogSettings {
    /// As given: a seed level name (`warning`) or a tracing filter.
    pub level: String,
    /// Human-readable lines; otherwise one JSON object per line.
    pub pretty: bool,
    /// ANSI colours in human-readable lines.
    pub color: bool,
}

/// A change requested by `configure-logger`; unset fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogChange {
    pub level: Option<String>,
    pub pretty: Option<bool>,
    pub color: Option<bool>,
}

pub struct LogControl {
    filter: reload::Handle<Targets, Registry>,
    format: reload::Handle<FormatLayer, FilteredRegistry>,
    current: Mutex<LogSettings>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("current", &self.settings())
            .finish_non_exhaustive()
    }
}

/// Installs the global logger at `level`, human-readable, coloured on a terminal.
pub fn init(level: &str) -> Result<LogControl, LoggingError> {
    let settings = LogSettings {
        level: level.to_owned(),
        pretty: true,
        color: std::io::stderr().is_terminal(),
    };
    let (subscriber, control) = build(settings)?;
    subscriber.try_init().map_err(LoggingError::Install)?;
    Ok(control)
}

/// A subscriber with its control, not installed: tests install it locally.
pub fn build(
    settings: LogSettings,
) -> Result<(impl tracing::Subscriber + Send + Sync, LogControl), LoggingError> {
    let (filter, filter_handle) = reload::Layer::new(filter_for(&settings.level)?);
    let (format, format_handle) = reload::Layer::new(format_layer(&settings));
    let subscriber = tracing_subscriber::registry().with(filter).with(format);
    Ok((
        subscriber,
        LogControl {
            filter: filter_handle,
            format: format_handle,
            current: Mutex::new(settings),
        },
    ))
}

impl LogControl {
    pub fn settings(&self) -> LogSettings {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies `change` at once and returns the resulting settings.
    pub fn apply(&self, change: LogChange) -> Result<LogSettings, LoggingError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let next = LogSettings {
            level: change.level.unwrap_or_else(|| current.level.clone()),
            pretty: change.pretty.unwrap_or(current.pretty),
            color: change.color.unwrap_or(current.color),
        };
        let filter = filter_for(&next.level)?;
        self.filter.reload(filter).map_err(LoggingError::Reload)?;
        if next.pretty != current.pretty || next.color != current.color {
            self.format
                .reload(format_layer(&next))
                .map_err(LoggingError::Reload)?;
        }
        *current = next.clone();
        Ok(next)
    }
}

/// Seed 000's level names are Python's; tracing has no `warning` or `critical`.
fn filter_for(level: &str) -> Result<Targets, LoggingError> {
    let directives: Vec<&str> = level
        .split(',')
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
        .map(|directive| match directive {
            "warning" => "warn",
            "critical" => "error",
            other => other,
        })
        .collect();
    let filter: Targets = directives
        .join(",")
        .parse()
        .map_err(|source| LoggingError::Level {
            given: level.to_owned(),
            source,
        })?;
    // `Targets` takes any word without `=` for a target to log at every
    // level, so a typo or an `EnvFilter` span filter would pass unnoticed.
    let is_path = |target: &str| {
        target
            .split("::")
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_'))
    };
    if let Some((target, _)) = filter.iter().find(|(target, _)| !is_path(target)) {
        return Err(LoggingError::Target {
            given: level.to_owned(),
            target: target.to_owned(),
        });
    }
    Ok(filter)
}

fn format_layer(settings: &LogSettings) -> FormatLayer {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if settings.pretty {
        Box::new(layer.with_ansi(settings.color))
    } else {
        Box::new(layer.json().with_ansi(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(level: &str) -> LogSettings {
        LogSettings {
            level: level.into(),
            pretty: true,
            color: false,
        }
    }

    #[test]
    fn a_new_level_takes_effect_immediately() {
        let (subscriber, control) = build(settings("info")).expect("builds");
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::enabled!(tracing::Level::DEBUG));
            let applied = control
                .apply(LogChange {
                    level: Some("debug".into()),
                    ..LogChange::default()
                })
                .expect("applies");
            assert_eq!(applied, settings("debug"));
            assert!(tracing::enabled!(tracing::Level::DEBUG));

            control
                .apply(LogChange {
                    level: Some("critical".into()),
                    pretty: Some(false),
                    color: None,
                })
                .expect("applies");
            assert!(!tracing::enabled!(tracing::Level::WARN));
            assert!(tracing::enabled!(tracing::Level::ERROR));
            assert_eq!(control.settings().level, "critical");
            assert!(!control.settings().pretty);

            control
                .apply(LogChange {
                    level: Some("warning".into()),
                    ..LogChange::default()
                })
                .expect("applies");
            assert!(tracing::enabled!(tracing::Level::WARN));
            assert!(!tracing::enabled!(tracing::Level::INFO));
        });
    }

    #[test]
    fn a_bad_level_changes_nothing() {
        let (_subscriber, control) = build(settings("info")).expect("builds");
        let err = control
            .apply(LogChange {
                level: Some("[[".into()),
                pretty: Some(false),
                color: None,
            })
            .expect_err("invalid");
        assert!(err.to_string().contains("invalid log level"), "{err}");
        assert_eq!(control.settings(), settings("info"));
    }

    #[test]
    fn seed_level_names_are_accepted_at_start() {
        for level in [
            "debug",
            "info",
            "warning",
            "error",
            "critical",
            "info,rumqttc=warn",
            "warning, tether_agent::session=debug,",
        ] {
            assert!(build(settings(level)).is_ok(), "{level}");
        }
        assert!(build(settings("[[")).is_err());
    }

    #[test]
    fn what_is_not_a_target_is_refused_by_name() {
        for (level, target) in [
            ("info,[span]=debug", "[span]"),
            ("info,tether-agent=debug", "tether-agent"),
        ] {
            let Err(err) = build(settings(level)) else {
                panic!("{level:?} accepted");
            };
            assert!(
                err.to_string()
                    .contains(&format!("{target:?} is not a target")),
                "{level:?}: {err}"
            );
        }
        assert!(build(settings("info,rumqttc=loud")).is_err());
    }
}
