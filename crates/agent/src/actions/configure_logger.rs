//! `configure-logger`: change the agent's log level and format at once.

use serde::Deserialize;
use serde_json::Value;

use super::ActionError;
use crate::logging::{LogChange, LogControl};

#[derive(Debug, Default, Deserialize)]
struct Input {
    level: Option<String>,
    pretty: Option<bool>,
    color: Option<bool>,
}

const LEVELS: [&str; 5] = ["debug", "info", "warning", "error", "critical"];

fn parse(input: &Value) -> Result<LogChange, ActionError> {
    let input: Input = if input.is_null() {
        Input::default()
    } else {
        serde_json::from_value(input.clone())
            .map_err(|e| ActionError::invalid("$", e.to_string()))?
    };
    if let Some(level) = &input.level
        && !LEVELS.contains(&level.as_str())
    {
        return Err(ActionError::invalid(
            "$.level",
            format!("{level:?} is not one of {}", LEVELS.join(", ")),
        ));
    }
    Ok(LogChange {
        level: input.level,
        pretty: input.pretty,
        color: input.color,
    })
}

/// Applies the change and answers with the settings now in force.
pub fn run(input: &Value, logging: &LogControl) -> Result<Value, ActionError> {
    let change = parse(input)?;
    let settings = logging.apply(change).map_err(ActionError::Logging)?;
    tracing::info!(
        "logger reconfigured: level {}, pretty {}, color {}",
        settings.level,
        settings.pretty,
        settings.color
    );
    Ok(serde_json::json!({
        "level": settings.level,
        "pretty": settings.pretty,
        "color": settings.color,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::tests::context;
    use serde_json::json;

    #[test]
    fn answers_with_the_new_settings_and_keeps_unset_ones() {
        let (context, _subscriber) = context();
        let response = run(&json!({"level": "warning"}), &context.logging).expect("applies");
        assert_eq!(
            response,
            json!({"level": "warning", "pretty": true, "color": false})
        );
        let response =
            run(&json!({"pretty": false, "color": true}), &context.logging).expect("applies");
        assert_eq!(
            response,
            json!({"level": "warning", "pretty": false, "color": true})
        );
    }

    #[test]
    fn only_the_seed_level_names_are_accepted() {
        let err = parse(&json!({"level": "trace"})).expect_err("not a seed level");
        assert_eq!(err.status_code(), 400);
        assert!(err.to_string().starts_with("$.level"), "{err}");
        assert!(parse(&json!({"pretty": "yes"})).is_err());
        assert_eq!(parse(&Value::Null).expect("empty"), LogChange::default());
    }
}
