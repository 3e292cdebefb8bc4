//! One-time authorization ids (seed 000): `get-authorization-id` issues one,
//! and a destructive action such as `restart-k3s` must consume it within two
//! minutes. Whoever can request actions can get an id, so the guard is not
//! authentication; it makes a destructive action a deliberate two-step act.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;

/// How long an id stays valid (seed 000: two minutes).
pub const VALIDITY: Duration = Duration::minutes(2);
/// Used and expired ids are kept this long after expiry, so a late attempt
/// reads "expired" or "already used" rather than "unknown".
const FORGET_AFTER: Duration = Duration::minutes(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    #[error("authorization id {0:?} is unknown: request one with the get-authorization-id action")]
    Unknown(String),
    #[error(
        "authorization id {id:?} expired at {expired_at}: request a new one with get-authorization-id (ids are valid for 2 minutes)"
    )]
    Expired {
        id: String,
        expired_at: DateTime<Utc>,
    },
    #[error(
        "authorization id {0:?} was already used: request a new one with get-authorization-id (each id is good for one action)"
    )]
    AlreadyUsed(String),
}

/// A freshly issued id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub id: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug)]
struct Entry {
    expires_at: DateTime<Utc>,
    used: bool,
}

type Clock = Box<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub struct AuthorizationGuard {
    clock: Clock,
    issued: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for AuthorizationGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationGuard").finish_non_exhaustive()
    }
}

impl Default for AuthorizationGuard {
    fn default() -> Self {
        Self::with_clock(Box::new(Utc::now))
    }
}

impl AuthorizationGuard {
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            clock,
            issued: Mutex::new(HashMap::new()),
        }
    }

    /// Issues a new random id valid for [`VALIDITY`].
    pub fn issue(&self) -> Authorization {
        let now = (self.clock)();
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let id = hex::encode(bytes);
        let expires_at = now + VALIDITY;
        let mut issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        issued.retain(|_, entry| entry.expires_at + FORGET_AFTER > now);
        issued.insert(
            id.clone(),
            Entry {
                expires_at,
                used: false,
            },
        );
        Authorization { id, expires_at }
    }

    /// Uses up `id`: succeeds once, while the id is valid.
    pub fn consume(&self, id: &str) -> Result<(), AuthorizationError> {
        self.with_valid(id, |entry| entry.used = true)
    }

    /// Whether `id` could be used now, without using it: an action that
    /// refuses for another reason after this check leaves the id to retry
    /// with (`reboot` refused for an update lock, then forced).
    pub fn check(&self, id: &str) -> Result<(), AuthorizationError> {
        self.with_valid(id, |_| {})
    }

    fn with_valid(
        &self,
        id: &str,
        then: impl FnOnce(&mut Entry),
    ) -> Result<(), AuthorizationError> {
        let now = (self.clock)();
        let mut issued = self.issued.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = issued
            .get_mut(id)
            .ok_or_else(|| AuthorizationError::Unknown(id.to_owned()))?;
        if entry.used {
            return Err(AuthorizationError::AlreadyUsed(id.to_owned()));
        }
        if now >= entry.expires_at {
            return Err(AuthorizationError::Expired {
                id: id.to_owned(),
                expired_at: entry.expires_at,
            });
        }
        then(entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A guard whose clock the test moves by hand, in seconds from the epoch.
    fn guard() -> (AuthorizationGuard, Arc<AtomicI64>) {
        let seconds = Arc::new(AtomicI64::new(1_000_000));
        let clock = seconds.clone();
        let guard = AuthorizationGuard::with_clock(Box::new(move || {
            DateTime::from_timestamp(clock.load(Ordering::SeqCst), 0).unwrap_or_default()
        }));
        (guard, seconds)
    }

    #[test]
    fn an_id_works_once() {
        let (guard, _) = guard();
        let auth = guard.issue();
        assert_eq!(auth.id.len(), 32);
        assert_eq!(guard.consume(&auth.id), Ok(()));
        assert_eq!(
            guard.consume(&auth.id),
            Err(AuthorizationError::AlreadyUsed(auth.id.clone()))
        );
    }

    #[test]
    fn an_id_expires_after_two_minutes() {
        let (guard, clock) = guard();
        let auth = guard.issue();
        clock.fetch_add(119, Ordering::SeqCst);
        let fresh = guard.issue();
        assert_eq!(guard.consume(&fresh.id), Ok(()));
        clock.fetch_add(1, Ordering::SeqCst);
        let err = guard.consume(&auth.id).expect_err("expired");
        assert_eq!(
            err,
            AuthorizationError::Expired {
                id: auth.id.clone(),
                expired_at: auth.expires_at
            }
        );
        assert!(err.to_string().contains("get-authorization-id"));
    }

    #[test]
    fn unknown_and_long_forgotten_ids_are_unknown() {
        let (guard, clock) = guard();
        assert!(matches!(
            guard.consume("nope"),
            Err(AuthorizationError::Unknown(_))
        ));
        let old = guard.issue();
        clock.fetch_add(3600, Ordering::SeqCst);
        guard.issue();
        assert_eq!(
            guard.consume(&old.id),
            Err(AuthorizationError::Unknown(old.id.clone()))
        );
    }

    #[test]
    fn a_check_leaves_the_id_unspent() {
        let (guard, _) = guard();
        let auth = guard.issue();
        assert_eq!(guard.check(&auth.id), Ok(()));
        assert_eq!(guard.check(&auth.id), Ok(()));
        assert_eq!(guard.consume(&auth.id), Ok(()));
        assert_eq!(
            guard.check(&auth.id),
            Err(AuthorizationError::AlreadyUsed(auth.id.clone()))
        );
    }

    #[test]
    fn ids_are_distinct() {
        let (guard, _) = guard();
        let a = guard.issue();
        let b = guard.issue();
        assert_ne!(a.id, b.id);
    }
}
