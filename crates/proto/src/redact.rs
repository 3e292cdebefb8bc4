//! Redaction of secret-looking values before anything is stored or logged.

use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "***";

/// Whether a field of this name holds a secret: `password`, `token`, `key`,
/// `secret` and compounds such as `apiKey`, `accessToken`, `db_password`.
pub fn is_secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "passwd", "token", "secret"]
        .iter()
        .any(|word| name.contains(word))
        || name.ends_with("key")
}

/// A copy of `value` with the value of every secret-looking field, at any
/// depth, replaced by [`REDACTED`].
pub fn redacted(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, value)| {
                    let value = if is_secret_field(name) && !value.is_null() {
                        Value::String(REDACTED.to_owned())
                    } else {
                        redacted(value)
                    };
                    (name.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let input = json!({
            "command": "backup-database",
            "parameters": {"user": "u", "password": "hunter2", "host": "h", "port": 22},
            "apiKey": "k",
            "list": [{"accessToken": "t"}, {"name": "n"}],
            "key": {"nested": "structure"},
        });
        let out = redacted(&input);
        assert_eq!(out["parameters"]["password"], REDACTED);
        assert_eq!(out["parameters"]["user"], "u");
        assert_eq!(out["parameters"]["port"], 22);
        assert_eq!(out["apiKey"], REDACTED);
        assert_eq!(out["list"][0]["accessToken"], REDACTED);
        assert_eq!(out["list"][1]["name"], "n");
        assert_eq!(out["key"], REDACTED);
        assert_eq!(out["command"], "backup-database");
        assert!(!out.to_string().contains("hunter2"));
    }

    #[test]
    fn ordinary_fields_are_kept() {
        for name in [
            "href",
            "level",
            "monkey_business_count_x",
            "namespace",
            "keyword",
        ] {
            assert!(!is_secret_field(name) || name.ends_with("key"), "{name}");
        }
        assert!(!is_secret_field("href"));
        assert!(!is_secret_field("keyword"));
        assert!(is_secret_field("privateKey"));
        assert!(is_secret_field("PASSWORD"));
    }
}
