//! Validation of action inputs against the catalogue's schemas.
//!
//! The catalogue uses a small, fixed part of JSON Schema; this interprets
//! exactly that part. A general validator (the `jsonschema` crate) cost
//! 13 MiB of resident memory for its meta-schemas, more than the whole agent
//! may use (ADR 0005). [`unsupported_keywords`] guards the boundary: the
//! catalogue's tests fail if a schema uses a keyword this does not check.

use serde_json::Value;

use super::FieldError;

/// Keywords that only describe and never constrain.
const ANNOTATIONS: [&str; 3] = ["title", "description", "default"];
const CHECKED: [&str; 11] = [
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
];

/// Every keyword in `schema` (at any depth) that is neither checked nor an
/// annotation, as JSON pointers into the schema.
pub fn unsupported_keywords(schema: &Value) -> Vec<String> {
    let mut found = Vec::new();
    collect_unsupported(schema, "", &mut found);
    found
}

fn collect_unsupported(schema: &Value, at: &str, found: &mut Vec<String>) {
    let Some(object) = schema.as_object() else {
        found.push(format!("{at} (not an object)"));
        return;
    };
    for (keyword, value) in object {
        let here = format!("{at}/{keyword}");
        match keyword.as_str() {
            "properties" => {
                for (name, property) in value.as_object().into_iter().flatten() {
                    collect_unsupported(property, &format!("{here}/{name}"), found);
                }
            }
            "items" => collect_unsupported(value, &here, found),
            "additionalProperties" if !value.is_boolean() => found.push(here),
            k if CHECKED.contains(&k) || ANNOTATIONS.contains(&k) => {}
            _ => found.push(here),
        }
    }
}

/// Appends a [`FieldError`] for every way `instance` breaks `schema`.
pub fn validate(schema: &Value, instance: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let mut fail = |message: String| {
        errors.push(FieldError {
            path: path.to_owned(),
            message,
        })
    };
    if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !has_type(instance, expected)
    {
        fail(format!("{instance} is not of type \"{expected}\""));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(instance)
    {
        fail(format!(
            "{instance} is not one of {}",
            Value::Array(allowed.clone())
        ));
    }
    if let Some(constant) = schema.get("const")
        && constant != instance
    {
        fail(format!("{constant} was expected, not {instance}"));
    }
    if let Some(number) = instance.as_f64() {
        if let Some(minimum) = schema.get("minimum").and_then(Value::as_f64)
            && number < minimum
        {
            fail(format!(
                "{instance} is less than the minimum of {}",
                schema["minimum"]
            ));
        }
        if let Some(maximum) = schema.get("maximum").and_then(Value::as_f64)
            && number > maximum
        {
            fail(format!(
                "{instance} is greater than the maximum of {}",
                schema["maximum"]
            ));
        }
    }
    if let Some(text) = instance.as_str() {
        let length = text.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && length < min
        {
            fail(format!("{instance} is shorter than {min} characters"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && length > max
        {
            fail(format!("the value is longer than {max} characters"));
        }
    }
    if let Some(object) = instance.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(required) {
                fail(format!("\"{required}\" is a required property"));
            }
        }
        if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
            let unexpected: Vec<_> = object
                .keys()
                .filter(|key| !properties.is_some_and(|p| p.contains_key(*key)))
                .map(|key| format!("'{key}'"))
                .collect();
            if !unexpected.is_empty() {
                let known: Vec<_> = properties
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.as_str())
                    .collect();
                fail(format!(
                    "unknown field {}; known fields: {}",
                    unexpected.join(", "),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        for (name, value) in object {
            if let Some(property) = properties.and_then(|p| p.get(name)) {
                validate(property, value, &format!("{path}.{name}"), errors);
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), instance.as_array()) {
        for (index, item) in array.iter().enumerate() {
            validate(items, item, &format!("{path}[{index}]"), errors);
        }
    }
}

fn has_type(instance: &Value, expected: &str) -> bool {
    match expected {
        "object" => instance.is_object(),
        "array" => instance.is_array(),
        "string" => instance.is_string(),
        "boolean" => instance.is_boolean(),
        "null" => instance.is_null(),
        "number" => instance.is_number(),
        "integer" => {
            instance.is_i64()
                || instance.is_u64()
                || instance.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(schema: Value, instance: Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        validate(&schema, &instance, "$", &mut errors);
        errors
    }

    #[test]
    fn each_keyword_is_checked() {
        assert_eq!(errors(json!({"type": "integer"}), json!(3)), vec![]);
        assert_eq!(errors(json!({"type": "integer"}), json!(3.0)), vec![]);
        assert_eq!(errors(json!({"type": "integer"}), json!(3.5)).len(), 1);
        assert_eq!(
            errors(json!({"type": "string"}), json!(1))[0].message,
            "1 is not of type \"string\""
        );
        assert_eq!(errors(json!({"enum": ["a", "b"]}), json!("c")).len(), 1);
        assert_eq!(errors(json!({"const": "kubectl"}), json!("sh")).len(), 1);
        assert_eq!(errors(json!({"minimum": 1}), json!(0)).len(), 1);
        assert_eq!(errors(json!({"maximum": 10}), json!(11)).len(), 1);
        assert_eq!(errors(json!({"minLength": 1}), json!("")).len(), 1);
        assert_eq!(errors(json!({"maxLength": 2}), json!("abc")).len(), 1);
        let required = errors(json!({"required": ["href"]}), json!({}));
        assert!(
            required[0]
                .message
                .contains("\"href\" is a required property")
        );
    }

    #[test]
    fn nested_errors_carry_their_path() {
        let schema = json!({
            "type": "object",
            "properties": {
                "parameters": {"type": "object", "properties": {"replicas": {"type": "integer"}}, "additionalProperties": false},
                "arguments": {"type": "array", "items": {"type": "string"}}
            },
            "additionalProperties": false
        });
        let found = errors(
            schema.clone(),
            json!({"parameters": {"replicas": "2"}, "arguments": ["a", 1]}),
        );
        let paths: Vec<_> = found.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["$.arguments[1]", "$.parameters.replicas"]);
        let unknown = errors(schema, json!({"parameterz": {}}));
        assert_eq!(unknown[0].path, "$");
        assert!(
            unknown[0].message.contains("'parameterz'") && unknown[0].message.contains("arguments")
        );
    }

    #[test]
    fn unsupported_keywords_are_reported() {
        let schema = json!({"type": "object", "properties": {"a": {"pattern": "x", "title": "A"}}, "oneOf": []});
        assert_eq!(
            unsupported_keywords(&schema),
            vec!["/oneOf", "/properties/a/pattern"]
        );
    }
}
