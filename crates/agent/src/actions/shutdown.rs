//! `shutdown`: powers the device off on an operator's request
//! ([`crate::host::power`]: one-time authorization id, update locks,
//! the reason recorded, the command run after the answer).

use serde_json::Value;

use super::{ActionError, Answer};
use crate::authorization::AuthorizationGuard;
use crate::host::power::{Power, PowerAction};

pub fn run(
    input: &Value,
    power: &Power,
    guard: &AuthorizationGuard,
) -> Result<Answer, ActionError> {
    Ok(power.request(PowerAction::Shutdown, input, guard)?)
}
