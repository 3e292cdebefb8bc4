//! Who may use the API: the admin created on first start, sessions from
//! `login`, and the bearer tokens that carry them. Secrets are stored only
//! as hashes.
//!
//! A login is built to withstand a storm of guesses (ADR 0008): throttled
//! per client address and per username, its password hash computed off the
//! async workers with a bounded number at once, and the same work done
//! whether the user exists or not.

pub mod accounts;
pub mod roles;
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
use crate::store::{ApiKeyRecord, SessionRecord, Store, StoreError, UserRecord};
pub use roles::Role;
use throttle::{LoginThrottle, ThrottleConfig, Throttled, username_key};

pub const ADMIN_USERNAME: &str = "admin";
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
    #[error("the API key is not valid: create one with `tether service-accounts keys create NAME`")]
    UnknownApiKey,
    #[error(
        "the API key {id} of service account {account} expired at {at}; create a new one with `tether service-accounts keys create {account}`"
    )]
    ApiKeyExpired {
        account: String,
        id: String,
        at: DateTime<Utc>,
    },
    #[error(
        "the API key {id} of service account {account} was revoked at {at}; create a new one with `tether service-accounts keys create {account}`"
    )]
    ApiKeyRevoked {
        account: String,
        id: String,
        at: DateTime<Utc>,
    },
    #[error("cannot {what}: {username} is the last admin; give another user the admin role first")]
    LastAdmin {
        what: &'static str,
        username: String,
    },
    #[error(
        "invalid {what} name {name:?}: use 1 to 64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit{reserved}"
    )]
    InvalidName {
        what: &'static str,
        name: String,
        reserved: &'static str,
    },
    #[error(transparent)]
    UnknownRole(#[from] roles::UnknownRole),
    #[error(
        "this needs a person's login session, not an API key; to stop a key, revoke it with `tether service-accounts keys revoke NAME KEY_ID`"
    )]
    NotASession,
    #[error("the current password is wrong")]
    WrongCurrentPassword,
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
    /// Who was refused, when the credential named someone: a known API key
    /// that expired or was revoked (`sa:NAME`). Such refusals are audited;
    /// anonymous ones are not, or a flood of them would grow the table.
    pub fn refused_actor(&self) -> Option<String> {
        match self {
            AuthError::ApiKeyExpired { account, .. } | AuthError::ApiKeyRevoked { account, .. } => {
                Some(service_account_actor(account))
            }
            _ => None,
        }
    }

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

/// API keys start with this, so a token is looked up in one table only.
pub const API_KEY_PREFIX: &str = "tether_sa_";

/// How the audit log and tunnels name a service account: `sa:NAME`.
pub fn service_account_actor(account: &str) -> String {
    format!("sa:{account}")
}

/// Who made a request, and with which session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// A username, or `sa:NAME` for a service account's API key: the name
    /// the audit log gives the caller.
    pub username: String,
    pub role: Role,
    /// The login session; `None` for an API key.
    pub session_id: Option<String>,
}

impl Principal {
    /// The caller's login session, for what only a person's session can do.
    pub fn session(&self) -> Result<&str, AuthError> {
        self.session_id.as_deref().ok_or(AuthError::NotASession)
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
    /// Not once any user exists: an admin may have deleted `admin` after
    /// making another.
    pub async fn bootstrap_admin(&self, data_dir: &Path) -> Result<Option<String>, AuthError> {
        if self.store.count_users().await? > 0 {
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
                role: Role::Admin.as_str().to_owned(),
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

    /// Who sent `token`: a session's user, or a service account for an API key.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if token.starts_with(API_KEY_PREFIX) {
            return self.authenticate_api_key(token).await;
        }
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
            role: stored_role(&role)?,
            session_id: Some(session.id),
        })
    }

    async fn authenticate_api_key(&self, token: &str) -> Result<Principal, AuthError> {
        let (key, role) = self
            .store
            .get_api_key(&secret_hash(token))
            .await?
            .ok_or(AuthError::UnknownApiKey)?;
        let now = Utc::now();
        let ApiKeyRecord {
            id,
            account,
            expires_at,
            revoked_at,
            last_used_at,
            ..
        } = key;
        if let Some(at) = revoked_at {
            return Err(AuthError::ApiKeyRevoked { account, id, at });
        }
        if let Some(at) = expires_at.filter(|at| *at <= now) {
            return Err(AuthError::ApiKeyExpired { account, id, at });
        }
        if last_used_at.is_none_or(|last| needs_touch(last, now)) {
            self.store.touch_api_key(&id, now).await?;
        }
        Ok(Principal {
            username: service_account_actor(&account),
            role: stored_role(&role)?,
            session_id: None,
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

/// A role read from the database; one this version does not know is a
/// corrupt row, never a guess at some access.
fn stored_role(role: &str) -> Result<Role, AuthError> {
    role.parse()
        .map_err(|_| StoreError::Corrupt(format!("unknown role {role:?}")).into())
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
