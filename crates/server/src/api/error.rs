//! The one HTTP error type: every failure becomes
//! `{"error": {"code", "message", "details"}}` with the right status. The
//! user sees what failed and what to do; internal detail goes to the log.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tether_proto::api::{ErrorBody, ErrorDetail};

use crate::actions::ActionError;
use crate::auth::AuthError;
use crate::jobs::JobError;
use crate::logs::LogsError;
use crate::pki::renewal::Refusal;
use crate::provisioning::ProvisioningError;
use crate::registry::RegistryError;
use crate::store::StoreError;

/// `Retry-After` while the database does not answer: about a restart's length.
const DATABASE_RETRY_AFTER_SECONDS: u64 = 5;

/// `Retry-After` for a follow over the per-user limit: about as long as a
/// closed tab's stream takes to be noticed.
const FOLLOW_RETRY_AFTER_SECONDS: u64 = 15;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: serde_json::Value,
    /// Seconds for `Retry-After` on a 429 or 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: serde_json::Value::Null,
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A long-poll over what one caller may hold at once
    /// ([`crate::per_caller`]).
    pub fn too_many_waits(caller: &str, limit: u32) -> Self {
        Self {
            retry_after: Some(FOLLOW_RETRY_AFTER_SECONDS),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_waits",
                format!(
                    "{caller} already waits on {limit} actions at once, the most one user or API key may (api.max_connections_per_ip); read the action without waitSeconds, or wait after one of the others ends"
                ),
            )
        }
    }

    /// An error the caller cannot fix: log the whole chain, answer 500.
    pub(super) fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %crate::error_chain(error), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {error}; see tetherd's log for details"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { what } => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} already exists"),
            ),
            StoreError::NotFound { what } => Self::not_found(format!("{what} not found")),
            unavailable if unavailable.is_unavailable() => Self::database_unavailable(&unavailable),
            other => Self::internal(&other),
        }
    }
}

impl ApiError {
    fn database_unavailable(error: &StoreError) -> Self {
        tracing::warn!(error = %crate::error_chain(error), "request failed: the database is unavailable");
        Self {
            retry_after: Some(DATABASE_RETRY_AFTER_SECONDS),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                format!("{error}: the database is not answering; try again shortly"),
            )
        }
    }
}

impl From<crate::live::FollowError> for ApiError {
    fn from(error: crate::live::FollowError) -> Self {
        use crate::live::FollowError;
        match error {
            FollowError::TooMany { .. } => Self {
                retry_after: Some(FOLLOW_RETRY_AFTER_SECONDS),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_follows",
                    error.to_string(),
                )
            },
            // The poller's read failed, now or at its last try: the
            // follower would hear nothing, so it is not told 200.
            FollowError::Read(store) if store.is_unavailable() => {
                Self::database_unavailable(&store)
            }
            FollowError::Read(_) | FollowError::PollerStopped => Self::internal(&error),
        }
    }
}

impl From<crate::desired::DesiredStateError> for ApiError {
    fn from(error: crate::desired::DesiredStateError) -> Self {
        use crate::desired::DesiredStateError;
        let message = error.to_string();
        match error {
            DesiredStateError::TemplateNotFound(_) | DesiredStateError::DeploymentNotFound(_) => {
                Self::not_found(message)
            }
            DesiredStateError::Invalid(field) => Self {
                details: serde_json::json!({ "fields": [{ "path": field.path, "message": field.message }] }),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            DesiredStateError::Exists(_) | DesiredStateError::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            DesiredStateError::Store(error) => error.into(),
        }
    }
}

impl From<crate::releases::ReleaseError> for ApiError {
    fn from(error: crate::releases::ReleaseError) -> Self {
        use crate::releases::ReleaseError;
        let message = error.to_string();
        match error {
            ReleaseError::Invalid(field) => Self {
                details: serde_json::json!({ "fields": [{ "path": field.path, "message": field.message }] }),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            ReleaseError::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            }
            ReleaseError::NotFound(_) => Self::not_found(message),
            ReleaseError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            ReleaseError::BadToken => {
                Self::new(StatusCode::UNAUTHORIZED, "bad_download_token", message)
            }
            ReleaseError::TooManyDownloads(_) => Self {
                retry_after: Some(5),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_downloads", message)
            },
            ReleaseError::Body(_) => Self::bad_request(crate::error_chain(&error)),
            ReleaseError::Spool { .. } => Self::internal(&error),
            ReleaseError::Store(error) => error.into(),
        }
    }
}

impl From<crate::monitor::rules::AlertRuleError> for ApiError {
    fn from(error: crate::monitor::rules::AlertRuleError) -> Self {
        use crate::monitor::rules::AlertRuleError;
        let message = error.to_string();
        match error {
            AlertRuleError::NotFound(_) => Self::not_found(message),
            AlertRuleError::Invalid(field) => Self {
                details: serde_json::json!({ "fields": [{ "path": field.path, "message": field.message }] }),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            AlertRuleError::Exists(_) | AlertRuleError::TooMany => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            AlertRuleError::Store(error) => error.into(),
        }
    }
}

impl From<crate::secrets::SecretsError> for ApiError {
    fn from(error: crate::secrets::SecretsError) -> Self {
        use crate::secrets::SecretsError;
        let message = crate::error_chain(&error);
        match error {
            SecretsError::NotFound(_) => Self::not_found(message),
            SecretsError::Invalid(field) => Self {
                details: serde_json::json!({ "fields": [{ "path": field.path, "message": field.message }] }),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            // The sealed copies would not fit a device's spec: what to
            // change is the value (or the device's other sections).
            SecretsError::Spec {
                source: crate::registry::SpecUpdateError::Invalid(_),
                ..
            } => Self::new(StatusCode::BAD_REQUEST, "spec_too_large", message),
            SecretsError::TooLarge { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "spec_too_large", message)
            }
            SecretsError::Spec { .. } => Self::new(StatusCode::CONFLICT, "conflict", message),
            SecretsError::Store(error) => error.into(),
        }
    }
}

impl From<ProvisioningError> for ApiError {
    fn from(error: ProvisioningError) -> Self {
        let message = error.to_string();
        match error {
            ProvisioningError::PolicyNotFound(_)
            | ProvisioningError::ApprovalNotFound(_)
            | ProvisioningError::KeyNotFound { .. } => Self::not_found(message),
            ProvisioningError::PolicyExists(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            ProvisioningError::NotPending { .. } => {
                Self::new(StatusCode::CONFLICT, "already_decided", message)
            }
            // 503, not 400: the agent stops for good on 400, and asking
            // again is all this needs.
            ProvisioningError::Busy => Self {
                retry_after: Some(crate::provisioning::RETRY_AFTER_SECONDS),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "registration_busy",
                    message,
                )
            },
            ProvisioningError::IdentityHeld { .. } => {
                Self::new(StatusCode::CONFLICT, "identity_held", message)
            }
            ProvisioningError::KeyRevokedBeforeApproval { .. } => {
                Self::new(StatusCode::CONFLICT, "provisioning_key_revoked", message)
            }
            ProvisioningError::InvalidPolicy(_)
            | ProvisioningError::InvalidTemplateLabels(_)
            | ProvisioningError::InvalidRegistration(_) => Self::bad_request(message),
            ProvisioningError::InvalidKey(_) => Self {
                details: serde_json::json!({ "fields": [{ "path": "expiresAt", "message": message }] }),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            ProvisioningError::InvalidTemplateSpec(field) => Self {
                details: serde_json::json!({ "fields": [{ "path": format!("template.{}", field.path), "message": field.message }] }),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            ProvisioningError::KeyRefused(_) => Self::new(
                StatusCode::UNAUTHORIZED,
                "provisioning_key_refused",
                message,
            ),
            ProvisioningError::Denied { .. } => {
                Self::new(StatusCode::FORBIDDEN, "registration_denied", message)
            }
            ProvisioningError::DeviceGone(_) => Self::new(StatusCode::GONE, "device_gone", message),
            ProvisioningError::TooManyPending { .. }
            | ProvisioningError::TooManyPendingForKey { .. } => Self {
                retry_after: Some(crate::provisioning::LIMIT_RETRY_AFTER_SECONDS),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_pending", message)
            },
            ProvisioningError::MaxDevices { .. } => Self {
                retry_after: Some(crate::provisioning::LIMIT_RETRY_AFTER_SECONDS),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "max_devices_reached",
                    message,
                )
            },
            ProvisioningError::RateExceeded { .. } => Self {
                retry_after: Some(crate::provisioning::LIMIT_RETRY_AFTER_SECONDS),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "registration_rate_exceeded",
                    message,
                )
            },
            ProvisioningError::Superseded(_) => {
                Self::new(StatusCode::GONE, "registration_superseded", message)
            }
            ProvisioningError::Registry(error) => error.into(),
            ProvisioningError::Store(error) => error.into(),
        }
    }
}

impl From<LogsError> for ApiError {
    fn from(error: LogsError) -> Self {
        match error {
            LogsError::Store(error) => error.into(),
            LogsError::TooManyFollows { .. } => Self {
                retry_after: Some(FOLLOW_RETRY_AFTER_SECONDS),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_follows",
                    error.to_string(),
                )
            },
            other => Self::bad_request(other.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let message = error.to_string();
        match error {
            RegistryError::NotFound(_) => Self::not_found(message),
            RegistryError::CertificateChanged(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            RegistryError::InvalidName(_)
            | RegistryError::InvalidSelector(_)
            | RegistryError::InvalidSummaryKey(_)
            | RegistryError::ReservedName(_)
            | RegistryError::InvalidLabel { .. }
            | RegistryError::TooManyLabels(_)
            | RegistryError::InvalidDisplayName(_)
            | RegistryError::BadCsr(_) => Self::bad_request(message),
            RegistryError::AlreadyExists(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            RegistryError::TokenRefused => {
                Self::new(StatusCode::UNAUTHORIZED, "enrollment_refused", message)
            }
            RegistryError::Pki(source) => Self::internal(&source),
            RegistryError::BadCertificate(_) => {
                Self::new(StatusCode::UNAUTHORIZED, "certificate_refused", message)
            }
            RegistryError::RenewalRefused(refusal) => match refusal {
                Refusal::KeyMismatch => Self::bad_request(message),
                Refusal::Revoked { .. } | Refusal::Replaced { .. } | Refusal::Deleted { .. } => {
                    Self::new(StatusCode::FORBIDDEN, "certificate_revoked", message)
                }
                Refusal::PastGrace { .. } => {
                    Self::new(StatusCode::FORBIDDEN, "reenrollment_required", message)
                }
            },
            RegistryError::RenewalLimited { retry_after, .. } => Self {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "too_many_renewals",
                message,
                details: serde_json::json!({ "retryAfterSeconds": retry_after.as_secs().max(1) }),
                retry_after: Some(retry_after.as_secs().max(1)),
            },
            RegistryError::RenewalConflict(_) | RegistryError::SpecContended(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            RegistryError::InvalidSpec(field) => Self {
                details: serde_json::json!({ "fields": [{ "path": field.path, "message": field.message }] }),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            RegistryError::SpecVersionMismatch(mismatch) => Self {
                details: serde_json::json!({ "specVersion": mismatch.current }),
                ..Self::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition_failed",
                    message,
                )
            },
            RegistryError::Store(source) => source.into(),
        }
    }
}

impl From<ActionError> for ApiError {
    fn from(error: ActionError) -> Self {
        let message = error.to_string();
        match error {
            ActionError::DeviceNotFound(_) | ActionError::NotFound(_) => Self::not_found(message),
            // The OpenAPI document lists the action names, so a name outside
            // them is a malformed request, not a missing resource.
            ActionError::UnknownAction(_) => {
                Self::new(StatusCode::BAD_REQUEST, "unknown_action", message)
            }
            ActionError::InvalidInput { errors, .. } => Self {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_input",
                message,
                details: serde_json::json!({ "fields": errors }),
                retry_after: None,
            },
            ActionError::DuplicateCorrelationId(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            ActionError::NotEnabled { .. } => {
                Self::new(StatusCode::FORBIDDEN, "action_not_enabled", message)
            }
            ActionError::BadTtl { .. } | ActionError::BadTimeout(_) => Self::bad_request(message),
            ActionError::SentByTetherdOnly(_) => {
                Self::new(StatusCode::BAD_REQUEST, "sent_by_tetherd_only", message)
            }
            ActionError::Store(source) => source.into(),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(error: JobError) -> Self {
        let message = error.to_string();
        let field = |field: &str| serde_json::json!({ "fields": [{ "path": format!("$.{field}"), "message": message }] });
        match error {
            JobError::EmptySelector => Self {
                details: field("labelSelector"),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            JobError::BadConcurrency(_) => Self {
                details: field("concurrency"),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            JobError::BadRate(_) => Self {
                details: field("ratePerSecond"),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            JobError::CorrelationIdInInput => Self {
                details: field("input.correlationId"),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
            },
            // The request is well formed, but there is nothing to run it on:
            // usually a typo in the selector, which a stored empty job hides.
            JobError::NoDevices(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "no_devices", message)
            }
            JobError::NotEnabled { .. } => {
                Self::new(StatusCode::FORBIDDEN, "action_not_enabled", message)
            }
            JobError::NotFound(_) => Self::not_found(message),
            JobError::AlreadyCompleted(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            JobError::Action(source) => source.into(),
            JobError::Registry(RegistryError::InvalidSelector(_)) => Self {
                details: field("labelSelector"),
                ..Self::bad_request(message)
            },
            JobError::Registry(source) => source.into(),
            JobError::Store(source) => source.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let message = error.to_string();
        match error {
            AuthError::Missing
            | AuthError::InvalidToken
            | AuthError::Expired
            | AuthError::UnknownApiKey => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            }
            AuthError::ApiKeyExpired { .. } => {
                Self::new(StatusCode::UNAUTHORIZED, "api_key_expired", message)
            }
            AuthError::ApiKeyRevoked { .. } => {
                Self::new(StatusCode::UNAUTHORIZED, "api_key_revoked", message)
            }
            AuthError::LastAdmin { .. } => Self::new(StatusCode::CONFLICT, "last_admin", message),
            AuthError::InvalidName { .. }
            | AuthError::UnknownRole(_)
            | AuthError::NotASession
            | AuthError::WrongCurrentPassword => Self::bad_request(message),
            AuthError::BadCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "bad_credentials", message)
            }
            AuthError::TooLong { field, .. } => Self {
                details: serde_json::json!({ "fields": [{ "path": field, "message": message }] }),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            AuthError::ThrottledAddress { .. }
            | AuthError::ThrottledUser { .. }
            | AuthError::Busy => Self {
                retry_after: error.retry_after().map(crate::auth::whole_seconds),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
            },
            AuthError::Store(source) => source.into(),
            other => Self::internal(&other),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_json",
        };
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        Self::new(
            status,
            code,
            format!("invalid request body: {}", rejection.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(format!("invalid query: {}", rejection.body_text()))
    }
}

impl From<crate::metrics::MetricsError> for ApiError {
    fn from(error: crate::metrics::MetricsError) -> Self {
        use crate::metrics::MetricsError;
        let message = error.to_string();
        let field =
            |path: &str| serde_json::json!({ "fields": [{ "path": path, "message": message }] });
        match error {
            MetricsError::Invalid(invalid) => Self {
                details: field(invalid.field),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            MetricsError::UnknownMetric { .. } => Self {
                details: field("metric"),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
            },
            MetricsError::Store(source) => source.into(),
        }
    }
}
