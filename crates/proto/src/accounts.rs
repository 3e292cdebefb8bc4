//! Roles, users and service accounts on tetherd's HTTP API (ADR 0026),
//! shared by the server and the CLI.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A role, from least to most allowed: each role may do what the ones
/// before it may. `docs/roles.md` lists what each may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Reads the fleet: nothing that changes it, hands out a secret or opens a tunnel.
    Viewer,
    /// Runs the fleet (seed 004's device-operator): devices, labels, specs,
    /// actions, jobs, tunnels, shells, logs and metrics.
    Operator,
    /// Everything, including users, service accounts and sessions.
    Admin,
}

impl Role {
    /// Most allowed first, as the role matrix lists them.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// "operator or admin": this role and those above it, as a refusal names them.
    pub fn and_above(self) -> String {
        let roles: Vec<&str> = Role::ALL
            .iter()
            .rev()
            .filter(|role| **role >= self)
            .map(|role| role.as_str())
            .collect();
        roles.join(" or ")
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: use admin, operator or viewer")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// A user as listed; never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub username: String,
    pub role: Role,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateUser {
    /// 1 to 64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit; not `me`.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9._-]*$")
    )]
    pub username: String,
    pub role: Role,
    /// Omitted: tetherd generates one and answers it once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 1024))]
    pub password: Option<String>,
}

/// The created user, with the generated password if tetherd made one: shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserCreated {
    pub username: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `PUT /api/v1/users/{username}/role`, and a service account's role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetRole {
    pub role: Role,
}

/// `PUT /api/v1/users/me/password`: the caller's new password, with the
/// current one, so a session left open cannot take the account over.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangePassword {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 1024))]
    pub current_password: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 1024))]
    pub new_password: String,
}

/// A script's or CI's identity; its API keys are listed apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceAccount {
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// `POST /api/v1/service-accounts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateServiceAccount {
    /// 1 to 64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9._-]*$")
    )]
    pub name: String,
    pub role: Role,
}

/// The longest an API key may be valid: ten years.
pub const MAX_API_KEY_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// `POST /api/v1/service-accounts/{name}/keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateApiKey {
    /// Omitted: valid until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 315_360_000))]
    pub expires_in_seconds: Option<u64>,
}

/// An API key as listed; its secret is never shown again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKey {
    /// Revoke it with `POST /api/v1/service-accounts/{name}/keys/{id}/revoke`.
    pub id: String,
    pub service_account: String,
    pub created_at: DateTime<Utc>,
    /// Absent: valid until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// To the minute; absent if never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new API key: `key` is shown this once; send it as `Authorization: Bearer <key>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyCreated {
    pub key: String,
    #[serde(flatten)]
    pub api_key: ApiKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse_from_their_names() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(
                serde_json::to_value(role).expect("serializes"),
                serde_json::json!(role.as_str())
            );
        }
        assert_eq!(Role::Operator.and_above(), "operator or admin");
        assert_eq!(Role::Viewer.and_above(), "viewer or operator or admin");
        let err = "root".parse::<Role>().expect_err("not a role");
        assert_eq!(
            err.to_string(),
            "unknown role \"root\": use admin, operator or viewer"
        );
    }
}
