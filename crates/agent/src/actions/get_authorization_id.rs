//! `get-authorization-id`: a one-time id that destructive actions require.

use serde_json::{Value, json};

use crate::authorization::AuthorizationGuard;

pub fn run(guard: &AuthorizationGuard) -> Value {
    let authorization = guard.issue();
    json!({
        "authorizationId": authorization.id,
        "expiresAt": authorization.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    #[test]
    fn the_answered_id_can_be_consumed_once() {
        let guard = AuthorizationGuard::default();
        let response = run(&guard);
        let id = response["authorizationId"].as_str().expect("an id");
        let expires: DateTime<Utc> =
            serde_json::from_value(response["expiresAt"].clone()).expect("a timestamp");
        assert!(expires > Utc::now() + chrono::Duration::seconds(100));
        assert_eq!(guard.consume(id), Ok(()));
        assert!(guard.consume(id).is_err());
    }
}
