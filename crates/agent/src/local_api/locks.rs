//! `/v1/update-locks`: applications hold the device back from new
//! revisions of its deployments while they do something that must not be
//! interrupted ([`crate::updates`]).
//!
//! ```text
//! PUT    /v1/update-locks/NAME  {"reason": "flashing the PLC", "ttlSeconds": 3600}
//! DELETE /v1/update-locks/NAME
//! GET    /v1/update-locks       → {"locks": {NAME: {reason, since, expiresAt, ownerUid}}, "holds": [...]}
//! ```
//!
//! A lock is its taker's: the uid of the client on the socket (the
//! kernel's `SO_PEERCRED`, which a client cannot forge) is recorded as
//! `ownerUid`, and only that uid or root may renew or release it; anyone
//! else gets 403 naming the owner.

use chrono::{DateTime, Utc};

use super::Reply;
use super::view::DeviceView;
use crate::updates::{LockError, TakeLock, UpdateLocks};

/// The collection's path; one lock is `PATH/NAME`.
pub const PATH: &str = "/v1/update-locks";

pub(super) fn route(
    method: &str,
    name: Option<&str>,
    body: &[u8],
    locks: &UpdateLocks,
    view: &DeviceView,
    client_uid: Option<u32>,
    now: DateTime<Utc>,
) -> Reply {
    let unknown_client = || {
        Reply::error(
            403,
            "the agent cannot tell which user is on the socket, and a lock is its taker's; try again",
        )
    };
    match (method, name) {
        ("GET", None) => Reply::ok(serde_json::json!({
            "locks": locks.held(now),
            // As last worked out: a lock just taken shows here a moment
            // after it shows in `locks`.
            "holds": view.status.report().update_holds,
        })),
        ("PUT", Some(name)) => {
            let request: TakeLock = match serde_json::from_slice(body) {
                Ok(request) => request,
                Err(error) => {
                    return Reply::error(
                        400,
                        format!(
                            "the body is not a lock request ({error}): send {{\"reason\": \"why\", \"ttlSeconds\": N}} (ttlSeconds optional)"
                        ),
                    );
                }
            };
            let Some(uid) = client_uid else {
                return unknown_client();
            };
            match locks.take(name, request, uid, now) {
                Ok(lock) => Reply::ok(serde_json::json!({ "name": name, "lock": lock })),
                Err(error) => lock_error(&error),
            }
        }
        ("DELETE", Some(name)) => {
            let Some(uid) = client_uid else {
                return unknown_client();
            };
            match locks.release(name, uid, now) {
                Ok(()) => Reply::ok(serde_json::json!({ "released": name })),
                Err(error) => lock_error(&error),
            }
        }
        (_, None) => Reply {
            allow: Some("GET"),
            ..Reply::error(405, format!("{PATH} takes GET; a lock is {PATH}/NAME"))
        },
        (_, Some(_)) => Reply {
            allow: Some("PUT, DELETE"),
            ..Reply::error(
                405,
                format!("{PATH}/NAME takes PUT or DELETE, not {method}"),
            )
        },
    }
}

fn lock_error(error: &LockError) -> Reply {
    let status = match error {
        LockError::Invalid(_) => 400,
        LockError::NotHeld(_) => 404,
        LockError::NotOwner { .. } => 403,
        LockError::TooMany { .. } | LockError::TooManyForUser { .. } => 409,
        LockError::Save { .. } => 500,
    };
    Reply::error(status, error.to_string())
}
