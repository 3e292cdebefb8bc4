//! Completes the generated OpenAPI document with what holds for every
//! route alike, so no route's annotation can forget it: the answers the
//! shared layers give (401 from the bearer check, 400/413/415 from body and
//! query parsing, 500, 403 from the role table), and the action names the
//! catalogue knows.

use crate::auth::roles::{self, Access};
use tether_proto::Catalogue;
use tether_proto::accounts::Role;
use tether_proto::labels::{MAX_LABEL_LEN, MAX_LABELS};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder, Schema};

/// The answers every operation of the document can give besides its own.
pub fn complete(openapi: &mut OpenApi, catalogue: &Catalogue, max_ttl_seconds: u64) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        for (method, operation) in [
            ("GET", &mut item.get),
            ("POST", &mut item.post),
            ("PUT", &mut item.put),
            ("PATCH", &mut item.patch),
            ("DELETE", &mut item.delete),
        ] {
            if let Some(operation) = operation {
                add_shared_responses(operation);
                add_role_refusal(method, path, operation);
            }
        }
    }
    declare_action_request_rules(openapi, catalogue, max_ttl_seconds);
    declare_label_rules(openapi);
}

fn add_shared_responses(operation: &mut Operation) {
    // Public routes opt out of the document's bearer requirement with an
    // empty one; every other route passes the bearer check first.
    let authenticated = operation.security.is_none();
    let has_body = operation.request_body.is_some();
    let has_query = operation
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    let mut add = |status: &str, description: &str| {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
    };
    if authenticated {
        add(
            "401",
            "No valid bearer token: log in with `POST /api/v1/login`",
        );
    }
    if has_body {
        add("400", "The body is not valid JSON of the expected shape");
        add(
            "408",
            "The body did not arrive within the header read timeout",
        );
        add("413", "The body is larger than this route accepts");
        add("415", "The body is not `application/json`");
    }
    if has_query {
        add("400", "A query parameter is not valid");
    }
    add("500", "Internal error; tetherd's log has the details");
}

/// A route some role may not call answers that role 403, from the role
/// table (`docs/roles.md`), so the document and the gate cannot disagree.
fn add_role_refusal(method: &str, path: &str, operation: &mut Operation) {
    let Some(Access::AtLeast(least)) = roles::access(method, path) else {
        return;
    };
    if least > Role::Viewer {
        operation
            .responses
            .responses
            .entry("403".to_owned())
            .or_insert_with(|| {
                error_response(&format!(
                    "The caller's role may not call this route: {} role needed (docs/roles.md)",
                    least.and_above()
                ))
            });
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// `action` of a `RequestAction` or a `CreateJob` may only name an action
/// of the catalogue, and `ttlSeconds` is at most the configured maximum.
fn declare_action_request_rules(openapi: &mut OpenApi, catalogue: &Catalogue, max_ttl: u64) {
    let names: Vec<serde_json::Value> = catalogue
        .actions()
        .map(|spec| serde_json::Value::String(spec.name.clone()))
        .collect();
    // The action a device's action set enables or disables, in its path.
    for item in openapi.paths.paths.values_mut() {
        for operation in [&mut item.put, &mut item.delete].into_iter().flatten() {
            for parameter in operation.parameters.iter_mut().flatten() {
                if parameter.name == "action"
                    && matches!(parameter.parameter_in, ParameterIn::Path)
                    && let Some(RefOr::T(Schema::Object(schema))) = parameter.schema.as_mut()
                {
                    schema.enum_values = Some(names.clone());
                }
            }
        }
    }
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    for schema in ["RequestAction", "CreateJob"] {
        let Some(RefOr::T(Schema::Object(request))) = components.schemas.get_mut(schema) else {
            continue;
        };
        if let Some(RefOr::T(Schema::Object(action))) = request.properties.get_mut("action") {
            action.enum_values = Some(names.clone());
        }
        if let Some(RefOr::T(Schema::Object(ttl))) = request.properties.get_mut("ttlSeconds") {
            ttl.maximum = Some(utoipa::Number::UInt(max_ttl as usize));
        }
    }
}

/// Label keys and values in the requests that set them follow
/// `tether_proto::labels`: a key starts with a letter or digit; both use
/// letters, digits, `-`, `_`, `.`, `/`, at most 63 characters; at most 64
/// labels in a request (a patch may still add up to more, which is a 400).
fn declare_label_rules(openapi: &mut OpenApi) {
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!(
            "^[A-Za-z0-9][-A-Za-z0-9_./]{{0,{}}}$",
            MAX_LABEL_LEN - 1
        )))
        .build();
    let value = |nullable: bool| {
        let schema_type = if nullable {
            utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null])
        } else {
            utoipa::openapi::schema::SchemaType::Type(Type::String)
        };
        ObjectBuilder::new()
            .schema_type(schema_type)
            .max_length(Some(MAX_LABEL_LEN))
            .pattern(Some(format!("^[-A-Za-z0-9_./]{{0,{MAX_LABEL_LEN}}}$")))
            .build()
    };
    for (schema, nullable) in [("CreateDevice", false), ("PatchDevice", true)] {
        let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) else {
            continue;
        };
        let mut labels = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(if nullable {
                "Labels to set; a `null` value removes the label."
            } else {
                "The device's labels."
            }))
            .max_properties(Some(MAX_LABELS))
            .build();
        labels.property_names = Some(Box::new(Schema::Object(key.clone())));
        labels.additional_properties = Some(Box::new(AdditionalProperties::RefOr(RefOr::T(
            Schema::Object(value(nullable)),
        ))));
        object
            .properties
            .insert("labels".to_owned(), RefOr::T(Schema::Object(labels)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_enum_is_the_catalogue() {
        use utoipa::OpenApi as _;
        #[derive(utoipa::OpenApi)]
        #[openapi(components(schemas(tether_proto::api::RequestAction)))]
        struct Doc;
        let mut doc = Doc::openapi();
        let catalogue = Catalogue::builtin();
        complete(&mut doc, &catalogue, 3600);
        let json = serde_json::to_value(&doc).expect("serializes");
        let names = &json["components"]["schemas"]["RequestAction"]["properties"]["action"]["enum"];
        assert!(
            names
                .as_array()
                .is_some_and(|n| n.len() == catalogue.actions().count()),
            "{names}"
        );
        assert!(
            names
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n == "get-node-ip")
        );
    }
}
