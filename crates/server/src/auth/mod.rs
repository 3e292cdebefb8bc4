//! Who may use the API: the admin created on first start, sessions from
//! `login`, and the bearer tokens that carry them. Secrets are stored only
//! as hashes.
//!
//! A login is built to withstand a storm of guesses (ADR 0008): throttled
//! per client address and per username, its password hash computed off the
//! async workers with a bounded number at once, and the same work done
//! whether the user exists or not.

pub mod throttle;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tether_proto::api::{LoginResponse, MAX_PASSWORD_LEN, MAX_USERNAME_LEN};
use tokio::sync::Semaphore;

use crate::config::AuthConfig;
use crate::secret_file;
use crate::store::{SessionRecord, Store, StoreError, UserRecord};
use throttle::{LoginThrottle, ThrottleConfig, Throttled, username_key};

pub const ADMIN_USERNAME: &str = "admin";
pub const ADMIN_ROLE: &str = "admin";
pub const ADMIN_CREDENTIALS_FILE: &str = "admin-credentials.toml";
/// Logins that may wait for a password check beyond those running; more
/// are told to come back in a second instead of queueing without bound.
const PASSWORD_CHECK_QUEUE: usize = 64;
/// `last_used_at` is written at most this often per session, so reads stay reads.
const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credentials: send `Authorization: Bearer <token>`; get a token with `tether login`"
    )]
    Missing,
    #[error("the token is not valid: log in again with `tether login`")]
    InvalidToken,
    #[error("the session expired: log in again with `tether login`")]
    Expired,
    #[error("wrong username or password")]
    BadCredentials,
    #[error("{field} is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("too many failed attempts from this address; retry after {} s", whole_seconds(*retry_after))]
    ThrottledAddress { retry_after: Duration },
    #[error("too many failed logins for this user; retry after {} s", whole_seconds(*retry_after))]
    ThrottledUser { retry_after: Duration },
    #[error("too many logins in progress; retry in a second")]
    Busy,
    #[error("only an admin may do this; your role is {role}")]
    Forbidden { role: String },
    #[error("password check failed to run")]
    Hasher(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not write the admin credentials to {path}")]
    WriteCredentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl AuthError {
    /// How long the client should wait before trying again, for `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthError::ThrottledAddress { retry_after }
            | AuthError::ThrottledUser { retry_after } => Some(*retry_after),
            AuthError::Busy => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl From<Throttled> for AuthError {
    fn from(throttled: Throttled) -> Self {
        match throttled.by {
            throttle::ThrottledBy::ClientAddress => AuthError::ThrottledAddress {
                retry_after: throttled.retry_after,
            },
            throttle::ThrottledBy::Username => AuthError::ThrottledUser {
                retry_after: throttled.retry_after,
            },
        }
    }
}

/// Who made a request, and with which session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub username: String,
    pub role: String,
    pub session_id: String,
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), AuthError> {
        if self.role == ADMIN_ROLE {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                role: self.role.clone(),
            })
        }
    }
}

#[derive(Clone)]
pub struct Auth {
    store: Store,
    config: AuthConfig,
    throttle: Arc<Mutex<LoginThrottle>>,
    /// Running password checks.
    hashers: Arc<Semaphore>,
    /// Running plus waiting password checks.
    hash_queue: Arc<Semaphore>,
    /// Checked when the user does not exist, so that costs the same.
    dummy_hash: Arc<str>,
}

impl Auth {
    pub fn new(store: Store, config: AuthConfig) -> Self {
        let running = config.max_concurrent_password_checks as usize;
        let throttle = LoginThrottle::new(ThrottleConfig {
            failures_before_backoff: config.login_failures_before_backoff,
            backoff_max: config.login_backoff_max,
        });
        Self {
            store,
            throttle: Arc::new(Mutex::new(throttle)),
            hashers: Arc::new(Semaphore::new(running)),
            hash_queue: Arc::new(Semaphore::new(running + PASSWORD_CHECK_QUEUE)),
            dummy_hash: hash_password(&new_secret()).into(),
            config,
        }
    }

    /// Creates the admin user on first start, writes its credentials to the
    /// data dir (mode 0600) and returns the password so it can be printed once.
    pub async fn bootstrap_admin(&self, data_dir: &Path) -> Result<Option<String>, AuthError> {
        if self.store.get_user(ADMIN_USERNAME).await?.is_some() {
            return Ok(None);
        }
        let password = new_secret();
        let path = data_dir.join(ADMIN_CREDENTIALS_FILE);
        let contents = format!("username = \"{ADMIN_USERNAME}\"\npassword = \"{password}\"\n");
        secret_file::write(&path, contents.as_bytes())
            .map_err(|source| AuthError::WriteCredentials { path, source })?;
        self.store
            .upsert_user(&UserRecord {
                username: ADMIN_USERNAME.to_owned(),
                password_hash: hash_password(&password),
                role: ADMIN_ROLE.to_owned(),
            })
            .await?;
        Ok(Some(password))
    }

    /// Checks a password for `username`, sent from `client`, and opens a session.
    pub async fn login(
        &self,
        client: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<LoginResponse, AuthError> {
        self.throttle().begin_from(client, Instant::now())?;
        check_length("username", username, MAX_USERNAME_LEN)?;
        check_length("password", password, MAX_PASSWORD_LEN)?;
        let user_key = username_key(username);
        self.throttle()
            .begin_for(client, user_key, Instant::now())?;
        let _queued = self.hash_queue.try_acquire().map_err(|_| AuthError::Busy)?;
        let user = self.store.get_user(username).await?;
        let encoded = user.as_ref().map_or_else(
            || self.dummy_hash.to_string(),
            |user| user.password_hash.clone(),
        );
        let valid = self.check_password(password, encoded).await? && user.is_some();
        if !valid {
            return Err(AuthError::BadCredentials);
        }
        self.throttle().succeeded(client, user_key, Instant::now());
        let token = new_secret();
        let now = Utc::now();
        let expires_at = now
            + chrono::Duration::from_std(self.config.session_ttl)
                .unwrap_or(chrono::Duration::hours(12));
        self.store
            .insert_session(
                &secret_hash(&token),
                &SessionRecord {
                    id: uuid::Uuid::now_v7().to_string(),
                    username: username.to_owned(),
                    created_at: now,
                    expires_at,
                    last_used_at: now,
                },
            )
            .await?;
        Ok(LoginResponse { token, expires_at })
    }

    /// Starts an unauthenticated attempt that costs tetherd work (a
    /// certificate renewal's signature checks) from `client`: the same
    /// per-address streak as logins, so a client sending bad proofs waits
    /// like one sending bad passwords. Counted as failed until
    /// [`Self::proof_accepted`].
    pub fn begin_proof(&self, client: IpAddr) -> Result<(), AuthError> {
        Ok(self.throttle().begin_from(client, Instant::now())?)
    }

    /// The attempt started with [`Self::begin_proof`] succeeded.
    pub fn proof_accepted(&self, client: IpAddr) {
        self.throttle().succeeded_from(client, Instant::now());
    }

    /// Refuses an enrollment from `client` while it waits after refused
    /// attempts; unlike a renewal it is not counted until it fails, since
    /// a fleet may enroll many devices at once from one address.
    pub fn enrollment_allowed(&self, client: IpAddr) -> Result<(), AuthError> {
        Ok(self.throttle().check_from(client, Instant::now())?)
    }

    /// An enrollment from `client` was refused.
    pub fn enrollment_refused(&self, client: IpAddr) {
        self.throttle().failed_from(client, Instant::now());
    }

    /// PBKDF2 on the blocking pool, a bounded number at once.
    async fn check_password(&self, password: &str, encoded: String) -> Result<bool, AuthError> {
        let _running = self.hashers.acquire().await.map_err(|_| AuthError::Busy)?;
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || verify_password(&password, &encoded))
            .await
            .map_err(AuthError::Hasher)
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        // The throttle holds counters only; a panic elsewhere leaves them usable.
        self.throttle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let (session, role) = self
            .store
            .get_session(&secret_hash(token))
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let now = Utc::now();
        if session.expires_at <= now {
            return Err(AuthError::Expired);
        }
        if needs_touch(session.last_used_at, now) {
            self.store.touch_session(&session.id, now).await?;
        }
        Ok(Principal {
            username: session.username,
            role,
            session_id: session.id,
        })
    }

    /// Ends a session; `NotFound` if there is no such session.
    pub async fn revoke(&self, session_id: &str) -> Result<(), AuthError> {
        Ok(self.store.delete_session(session_id).await?)
    }

    /// Sessions newest first: at most `limit`, created before `before` if given.
    pub async fn sessions(
        &self,
        before: Option<&crate::store::Before>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, AuthError> {
        Ok(self.store.list_sessions(before, limit).await?)
    }

    /// Deletes sessions that expired before `now`; returns how many.
    pub async fn prune_expired(&self, now: DateTime<Utc>) -> Result<u64, AuthError> {
        Ok(self.store.delete_sessions_expired_before(now).await?)
    }
}

/// A wait in whole seconds, rounded up: "retry after 0 s" would be refused again.
pub fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

fn check_length(field: &'static str, value: &str, max: usize) -> Result<(), AuthError> {
    if value.len() > max {
        Err(AuthError::TooLong { field, max })
    } else {
        Ok(())
    }
}

fn needs_touch(last_used_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    (now - last_used_at).to_std().unwrap_or_default() >= LAST_USED_RESOLUTION
}

/// 32 random bytes, hex: tokens and generated passwords. Hex, because a
/// base64url secret may start with `-`, which command lines take for a flag
/// (`tether-agent --enroll-token -Ab…` failed one enrollment in sixty-four).
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// How tokens are stored: they are random and long, so a plain SHA-256 is enough.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>` ([`tether_proto::password`]).
pub fn hash_password(password: &str) -> String {
    tether_proto::password::hash(password)
}

pub fn verify_password(password: &str, encoded: &str) -> bool {
    tether_proto::password::verify(password, encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_used_is_written_at_most_once_a_minute() {
        let start = DateTime::from_timestamp(1_000_000, 0).expect("valid");
        assert!(!needs_touch(start, start + chrono::Duration::seconds(59)));
        assert!(needs_touch(start, start + chrono::Duration::seconds(60)));
        assert!(!needs_touch(start, start - chrono::Duration::seconds(5)));
    }

    #[test]
    fn a_principal_without_the_admin_role_is_forbidden_admin_work() {
        let principal = |role: &str| Principal {
            username: "u".into(),
            role: role.into(),
            session_id: "s".into(),
        };
        principal("admin").require_admin().expect("admin");
        let err = principal("viewer").require_admin().expect_err("viewer");
        assert_eq!(
            err.to_string(),
            "only an admin may do this; your role is viewer"
        );
    }

    #[test]
    fn a_throttled_client_is_told_a_wait_it_can_use() {
        let refused = AuthError::ThrottledAddress {
            retry_after: Duration::from_millis(300),
        };
        assert_eq!(
            refused.to_string(),
            "too many failed attempts from this address; retry after 1 s"
        );
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes().all(|b| b.is_ascii_hexdigit()),
            "safe on a command line: {a}"
        );
        assert_eq!(secret_hash(&a).len(), 64);
    }
}
