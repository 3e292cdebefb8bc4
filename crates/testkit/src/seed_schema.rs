//! Actions and their answers checked against seed 000's schema (the
//! catalogue's `management-service-schema.json`): a request's input as the
//! catalogue validates it, and an answer against the `data` schema of the
//! event that answers the action.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tether_proto::Catalogue;

const SEED_SCHEMA: &str = include_str!("../../proto/catalogue/management-service-schema.json");

/// `input` is valid input of `action`.
pub fn check_request(action: &str, input: &Value) -> anyhow::Result<()> {
    Catalogue::builtin()
        .validate(action, input)
        .with_context(|| format!("{action} request {input}"))
}

/// An action's outcome as tetherd stores it (`GET /api/v1/actions/{id}`),
/// as the event the device sent: validated against the seed's `data`
/// schema of the event answering `action`, whose name is returned. A null
/// `response` is an event without one.
pub fn check_event(action: &str, outcome: &Value) -> anyhow::Result<String> {
    let catalogue = Catalogue::builtin();
    let event = catalogue
        .get(action)
        .with_context(|| format!("{action} is not in the catalogue"))?
        .event
        .clone();
    let seed: Value = serde_json::from_str(SEED_SCHEMA)?;
    let schema = seed["events"][&event]["data"].clone();
    if schema.is_null() {
        bail!("the seed has no event {event}");
    }
    let mut data = json!({
        "correlationId": outcome["correlationId"],
        "statusCode": outcome["statusCode"],
        "statusMessage": outcome["statusMessage"],
    });
    if !outcome["response"].is_null() {
        data["response"] = outcome["response"].clone();
    }
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| anyhow::anyhow!("the seed's {event} schema: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&data)
        .map(|e| e.to_string())
        .collect();
    if !errors.is_empty() {
        bail!("{event} event {data} does not conform to the seed: {errors:?}");
    }
    Ok(event)
}
