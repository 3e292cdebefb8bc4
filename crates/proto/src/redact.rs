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

/// Whether a field of this name holds a URL, whose credentials and query
/// values are redacted while the rest stays readable.
fn is_url_field(name: &str) -> bool {
    name.eq_ignore_ascii_case("href") || name.eq_ignore_ascii_case("url")
}

/// Whether a field of this name holds a request body (`send-api`'s
/// `requestBody`): free text that may carry anything, so it is redacted whole.
fn is_body_field(name: &str) -> bool {
    name.eq_ignore_ascii_case("requestBody")
}

/// A copy of `value` with, at any depth: the value of every secret-looking
/// field replaced by [`REDACTED`]; the userinfo and query values of every
/// `href`/`url` string replaced (see [`redacted_url`]); and every non-empty
/// `requestBody` replaced.
pub fn redacted(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, value)| (name.clone(), redacted_field(name, value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

fn redacted_field(name: &str, value: &Value) -> Value {
    let empty = match value {
        Value::Null => true,
        Value::String(text) => text.is_empty(),
        _ => false,
    };
    if (is_secret_field(name) && !value.is_null()) || (is_body_field(name) && !empty) {
        return Value::String(REDACTED.to_owned());
    }
    match value {
        Value::String(url) if is_url_field(name) => Value::String(redacted_url(url)),
        value => redacted(value),
    }
}

/// `url` with its userinfo (`user:pass@`) and the value of every query and
/// fragment parameter replaced by [`REDACTED`]; scheme, host, path and
/// parameter names stay, so the record still says where the request went.
/// Split the way a URL parser does: the authority follows `//` and ends at
/// the first `/`, `?` or `#`; its userinfo ends at its last `@`.
pub fn redacted_url(url: &str) -> String {
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (url, None),
    };
    let (before_query, query) = match before_fragment.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (before_fragment, None),
    };
    let mut out = redacted_userinfo(before_query);
    if let Some(query) = query {
        out.push('?');
        out.push_str(&redacted_parameters(query));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(&redacted_parameters(fragment));
    }
    out
}

/// The part of a URL before its query, with the userinfo replaced.
fn redacted_userinfo(url: &str) -> String {
    let Some(authority_start) = url.find("//").map(|at| at + 2) else {
        return url.to_owned();
    };
    let rest = &url[authority_start..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{REDACTED}{}", &url[..authority_start], &rest[at..]),
        None => url.to_owned(),
    }
}

/// `a=1&b=2&c` as `a=***&b=***&c`: values go, names (and bare names) stay.
fn redacted_parameters(parameters: &str) -> String {
    parameters
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{name}={REDACTED}"),
            None => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
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
    fn urls_lose_their_credentials_and_query_values_but_keep_the_rest() {
        let cases = [
            (
                "https://admin:hunter2@api.example:8443/v1/items?token=abc&limit=5",
                "https://***@api.example:8443/v1/items?token=***&limit=***",
            ),
            // The userinfo ends at the authority's last `@`.
            ("http://u:p@ss@h/x@y", "http://***@h/x@y"),
            ("http://token@h", "http://***@h"),
            ("http://h/p?a=&b&c==d", "http://h/p?a=***&b&c=***"),
            (
                "https://h/cb#access_token=xyz&state=1",
                "https://h/cb#access_token=***&state=***",
            ),
            ("https://h:1/p?q", "https://h:1/p?q"),
            ("http://h/a@b", "http://h/a@b"),
            ("http://h?x=@", "http://h?x=***"),
            ("//u:p@h/p", "//***@h/p"),
            ("file:///etc/passwd", "file:///etc/passwd"),
            ("not a url", "not a url"),
            ("", ""),
        ];
        for (url, expected) in cases {
            assert_eq!(redacted_url(url), expected, "{url}");
        }
    }

    #[test]
    fn send_api_inputs_are_redacted_by_url_and_body() {
        let input = json!({
            "href": "https://u:s3cret@h/x?apikey=k3y",
            "requestMethod": "POST",
            "requestBody": "{\"card\": \"4111\"}",
            "nested": [{"URL": "http://h/?sig=abc"}, {"Href": 7}],
        });
        let out = redacted(&input);
        assert_eq!(out["href"], "https://***@h/x?apikey=***");
        assert_eq!(out["requestBody"], REDACTED);
        assert_eq!(out["requestMethod"], "POST");
        assert_eq!(out["nested"][0]["URL"], "http://h/?sig=***");
        assert_eq!(out["nested"][1]["Href"], 7, "only strings are URLs");
        for secret in ["s3cret", "k3y", "4111", "abc"] {
            assert!(!out.to_string().contains(secret), "{secret}: {out}");
        }

        // Nothing to hide in an empty body; it says that none was sent.
        for empty in [json!(""), Value::Null] {
            let out = redacted(&json!({"REQUESTBODY": empty}));
            assert_eq!(out["REQUESTBODY"], empty);
        }
        let out = redacted(&json!({"requestBody": {"password": "p", "n": 1}}));
        assert_eq!(out["requestBody"], REDACTED);
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
