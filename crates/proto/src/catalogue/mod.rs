//! The action catalogue: which actions exist, what input each takes, and
//! which event answers it.
//!
//! The catalogue is seed 000's schema (`crates/proto/catalogue/management-service-schema.json`,
//! committed unchanged) plus tether's own actions (`catalogue/tether-actions.json`,
//! same shape; an extension of the seed, e.g. `follow-logs`), tightened by
//! `catalogue/constraints.json`: required fields and bounds the seed leaves
//! implicit. Unknown fields are refused, so
//! a misspelt field is a 400 instead of a silently ignored setting.

mod schema;

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

const SEED_SCHEMA: &str = include_str!("../../catalogue/management-service-schema.json");
const CONSTRAINTS: &str = include_str!("../../catalogue/constraints.json");
/// tether's actions beyond the seed's, in the seed's shape.
const TETHER_ACTIONS: &str = include_str!("../../catalogue/tether-actions.json");

/// The most inputs' validation errors reported at once; more only add noise.
const MAX_REPORTED_ERRORS: usize = 10;

pub use schema::unsupported_keywords;

/// One action of the catalogue.
#[derive(Debug)]
pub struct ActionSpec {
    pub name: String,
    pub title: String,
    pub description: String,
    /// The event a device answers this action with.
    pub event: String,
    pub input_schema: Value,
}

/// A problem with one field of an action's input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// JSONPath of the offending field, `$` being the input itself.
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("unknown action {action:?}; known actions: {known}")]
    UnknownAction { action: String, known: String },
    #[error("invalid input for action {action:?}: {}", describe(errors))]
    Invalid {
        action: String,
        errors: Vec<FieldError>,
    },
}

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("the action catalogue is not valid JSON")]
    Json(#[from] serde_json::Error),
    #[error("the action catalogue has no \"actions\" object")]
    NoActions,
    #[error("tether's action {0:?} has the name of one of the seed's")]
    Shadowed(String),
    #[error(
        "the input schema of action {action:?} uses keywords tether does not check: {keywords:?}"
    )]
    Unsupported {
        action: String,
        keywords: Vec<String>,
    },
}

#[derive(Debug)]
pub struct Catalogue {
    actions: BTreeMap<String, ActionSpec>,
}

impl Catalogue {
    /// The built-in catalogue (seed 000 and tether's own actions, plus
    /// tether's constraints).
    pub fn builtin() -> Self {
        let seed = with_extensions(SEED_SCHEMA, TETHER_ACTIONS)
            .expect("the built-in catalogue is checked by this crate's tests");
        Self::from_json(&seed, CONSTRAINTS)
            .expect("the built-in catalogue is checked by this crate's tests")
    }

    pub fn from_json(seed: &str, constraints: &str) -> Result<Self, CatalogueError> {
        let seed: Value = serde_json::from_str(seed)?;
        let constraints: Value = serde_json::from_str(constraints)?;
        let actions = seed
            .get("actions")
            .and_then(Value::as_object)
            .ok_or(CatalogueError::NoActions)?;
        let events = seed.get("events").and_then(Value::as_object);
        let mut specs = BTreeMap::new();
        for (name, definition) in actions {
            let mut schema = normalize_input(definition.get("input"));
            if let Some(extra) = constraints.get(name) {
                merge(&mut schema, extra);
            }
            forbid_unknown_fields(&mut schema);
            let keywords = unsupported_keywords(&schema);
            if !keywords.is_empty() {
                return Err(CatalogueError::Unsupported {
                    action: name.clone(),
                    keywords,
                });
            }
            let event = event_name(name, events);
            let text = |key: &str| {
                definition
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            specs.insert(
                name.clone(),
                ActionSpec {
                    name: name.clone(),
                    title: text("title"),
                    description: text("description"),
                    event,
                    input_schema: schema,
                },
            );
        }
        Ok(Self { actions: specs })
    }

    pub fn get(&self, action: &str) -> Option<&ActionSpec> {
        self.actions.get(action)
    }

    pub fn actions(&self) -> impl Iterator<Item = &ActionSpec> {
        self.actions.values()
    }

    /// The actions' names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.actions.keys().map(String::as_str).collect()
    }

    /// Validates `input` for `action`. A missing input (`null`) counts as `{}`.
    pub fn validate(&self, action: &str, input: &Value) -> Result<(), InputError> {
        let spec = self.get(action).ok_or_else(|| InputError::UnknownAction {
            action: action.to_owned(),
            known: self.names().join(", "),
        })?;
        let empty = json!({});
        let input = if input.is_null() { &empty } else { input };
        let mut errors = Vec::new();
        schema::validate(&spec.input_schema, input, "$", &mut errors);
        errors.truncate(MAX_REPORTED_ERRORS);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(InputError::Invalid {
                action: action.to_owned(),
                errors,
            })
        }
    }
}

/// The seed's catalogue with `extensions`' actions and events added; an
/// extension may not replace one of the seed's.
fn with_extensions(seed: &str, extensions: &str) -> Result<String, CatalogueError> {
    let mut seed: Value = serde_json::from_str(seed)?;
    let extensions: Value = serde_json::from_str(extensions)?;
    for key in ["actions", "events"] {
        let Some(Value::Object(added)) = extensions.get(key) else {
            continue;
        };
        let Some(Value::Object(base)) = seed.get_mut(key) else {
            return Err(CatalogueError::NoActions);
        };
        for (name, definition) in added {
            if base.insert(name.clone(), definition.clone()).is_some() {
                return Err(CatalogueError::Shadowed(name.clone()));
            }
        }
    }
    Ok(seed.to_string())
}

/// The event answering `action`: the seed names `send-kubectl`'s event
/// `kubectl-logs`; every other event shares its action's name.
fn event_name(action: &str, events: Option<&Map<String, Value>>) -> String {
    if action == "send-kubectl" && events.is_some_and(|e| e.contains_key("kubectl-logs")) {
        return "kubectl-logs".to_owned();
    }
    action.to_owned()
}

/// The seed writes "no input" as a missing `input` or as `{}`; both mean an
/// object with no fields.
fn normalize_input(input: Option<&Value>) -> Value {
    let mut schema = json!({"type": "object", "properties": {}});
    if let Some(Value::Object(given)) = input {
        for (key, value) in given {
            schema[key] = value.clone();
        }
    }
    schema
}

/// Deep-merges `extra` into `base`; arrays and scalars in `extra` win.
fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                merge(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, extra) => *base = extra.clone(),
    }
}

fn forbid_unknown_fields(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        for property in properties.values_mut() {
            forbid_unknown_fields(property);
        }
        object
            .entry("additionalProperties")
            .or_insert(Value::Bool(false));
    }
    if let Some(items) = object.get_mut("items") {
        forbid_unknown_fields(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(action: &str, input: Value) -> Vec<FieldError> {
        match Catalogue::builtin().validate(action, &input) {
            Err(InputError::Invalid { errors, .. }) => errors,
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn builtin_catalogue_has_every_seed_action() {
        let catalogue = Catalogue::builtin();
        let names: Vec<_> = catalogue.actions().map(|a| a.name.as_str()).collect();
        for expected in [
            "send-kubectl",
            "send-kubernetes-api",
            "run-stats",
            "stop-stats",
            "send-api",
            "configure-logger",
            "retrieve-kubeconfig",
            "manage-deployment",
            "restore-command",
            "copy-resource",
            "get-node-ip",
            "get-authorization-id",
            "restart-k3s",
        ] {
            assert!(names.contains(&expected), "{expected} missing");
        }
        assert_eq!(
            catalogue.get("send-kubectl").map(|a| a.event.as_str()),
            Some("kubectl-logs")
        );
        assert_eq!(
            catalogue.get("get-node-ip").map(|a| a.event.as_str()),
            Some("get-node-ip")
        );
    }

    #[test]
    fn tether_actions_extend_the_seed_without_replacing_any() {
        let catalogue = Catalogue::builtin();
        let follow = catalogue.get("follow-logs").expect("tether's action");
        assert_eq!(follow.event, "follow-logs");
        assert_eq!(
            catalogue.validate("follow-logs", &json!({"seconds": 30})),
            Ok(())
        );
        for bad in [json!({}), json!({"seconds": 0}), json!({"seconds": 301})] {
            assert!(catalogue.validate("follow-logs", &bad).is_err(), "{bad}");
        }
        let shadowing = r#"{"actions": {"run-stats": {}}}"#;
        assert!(matches!(
            with_extensions(SEED_SCHEMA, shadowing),
            Err(CatalogueError::Shadowed(name)) if name == "run-stats"
        ));
    }

    #[test]
    fn valid_inputs_pass() {
        let catalogue = Catalogue::builtin();
        for (action, input) in [
            ("get-node-ip", Value::Null),
            ("get-node-ip", json!({})),
            ("stop-stats", json!({})),
            ("run-stats", json!({"interval": 5})),
            (
                "configure-logger",
                json!({"level": "debug", "pretty": true, "color": false}),
            ),
            (
                "send-api",
                json!({"href": "http://127.0.0.1/x", "requestMethod": "GET"}),
            ),
            (
                "send-kubectl",
                json!({"command": "kubectl", "arguments": ["get", "pods"]}),
            ),
            (
                "manage-deployment",
                json!({"command": "scale", "parameters": {"deployment": "d", "namespace": "n", "replicas": 2}}),
            ),
        ] {
            assert_eq!(
                catalogue.validate(action, &input),
                Ok(()),
                "{action} {input}"
            );
        }
    }

    #[test]
    fn errors_name_the_json_path_of_the_field() {
        let errors = invalid("run-stats", json!({"interval": "often"}));
        assert_eq!(errors[0].path, "$.interval");
        assert!(
            errors[0].message.contains("integer"),
            "{}",
            errors[0].message
        );

        let errors = invalid(
            "manage-deployment",
            json!({"command": "scale", "parameters": {"replicas": "two"}}),
        );
        assert_eq!(errors[0].path, "$.parameters.replicas");

        let errors = invalid(
            "send-kubectl",
            json!({"command": "kubectl", "arguments": ["get", 3]}),
        );
        assert_eq!(errors[0].path, "$.arguments[1]");

        let errors = invalid("configure-logger", json!({"level": "loud"}));
        assert_eq!(errors[0].path, "$.level");
    }

    #[test]
    fn unknown_fields_and_bad_bounds_are_refused() {
        let errors = invalid("run-stats", json!({"intervall": 5}));
        assert_eq!(errors[0].path, "$");
        assert!(
            errors[0].message.contains("intervall"),
            "{}",
            errors[0].message
        );

        let errors = invalid("run-stats", json!({"interval": 0}));
        assert_eq!(errors[0].path, "$.interval");

        let errors = invalid("send-api", json!({"requestMethod": "GET"}));
        assert!(errors[0].message.contains("href"), "{}", errors[0].message);

        let errors = invalid("get-node-ip", json!([1, 2]));
        assert_eq!(errors[0].path, "$");
    }

    #[test]
    fn copy_resource_copies_only_the_four_types_the_seed_names() {
        let catalogue = Catalogue::builtin();
        let copy = |kind: &str| {
            json!({"command": "copy", "parameters": {"type": kind,
                "from": {"namespace": "a", "name": "x"}, "to": {"namespace": "b", "name": "x"}}})
        };
        for kind in ["secrets", "configmaps", "deployments", "services"] {
            assert_eq!(
                catalogue.validate("copy-resource", &copy(kind)),
                Ok(()),
                "{kind}"
            );
        }
        let errors = invalid("copy-resource", copy("pods"));
        assert_eq!(errors[0].path, "$.parameters.type");
        assert!(
            errors[0].message.contains("secrets"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn restore_command_needs_the_servers_host_key_and_a_real_port() {
        let catalogue = Catalogue::builtin();
        let input = |extra: Value| {
            let mut parameters = json!({"deployment": "web", "host": "h", "user": "u",
                "password": "p", "remotePath": "/b.db", "namespace": "apps",
                "hostKeyFingerprint": "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"});
            for (key, value) in extra.as_object().into_iter().flatten() {
                parameters[key] = value.clone();
            }
            json!({"command": "restore-database", "parameters": parameters})
        };
        assert_eq!(
            catalogue.validate("restore-command", &input(json!({"port": 22}))),
            Ok(())
        );
        let mut without = input(json!({}));
        if let Some(p) = without["parameters"].as_object_mut() {
            p.remove("hostKeyFingerprint");
        }
        let errors = invalid("restore-command", without);
        assert_eq!(errors[0].path, "$.parameters");
        assert!(
            errors[0].message.contains("hostKeyFingerprint"),
            "{}",
            errors[0].message
        );
        for port in [0, 65536] {
            let errors = invalid("restore-command", input(json!({"port": port})));
            assert_eq!(errors[0].path, "$.parameters.port");
        }
        let errors = invalid(
            "restore-command",
            input(json!({"hostKeyFingerprint": "MD5:1"})),
        );
        assert_eq!(errors[0].path, "$.parameters.hostKeyFingerprint");
    }

    #[test]
    fn reboot_and_shutdown_need_a_reason_of_at_most_256_characters() {
        let catalogue = Catalogue::builtin();
        for action in ["reboot", "shutdown"] {
            assert_eq!(
                catalogue.validate(
                    action,
                    &json!({"authorizationId": "a1", "reason": "kernel update", "force": true})
                ),
                Ok(()),
                "{action}"
            );
            // The id is checked by the agent, which answers 401 without one.
            assert_eq!(
                catalogue.validate(action, &json!({"reason": "kernel update"})),
                Ok(())
            );
            assert_eq!(invalid(action, json!({}))[0].path, "$");
            assert_eq!(invalid(action, json!({"reason": ""}))[0].path, "$.reason");
            assert_eq!(
                invalid(action, json!({"reason": "x".repeat(257)}))[0].path,
                "$.reason"
            );
            assert_eq!(
                invalid(action, json!({"reason": "r", "force": "yes"}))[0].path,
                "$.force"
            );
        }
    }

    #[test]
    fn unknown_action_lists_the_known_ones() {
        let err = Catalogue::builtin()
            .validate("reboot-everything", &json!({}))
            .expect_err("unknown");
        let message = err.to_string();
        assert!(message.contains("reboot-everything") && message.contains("get-node-ip"));
    }
}
