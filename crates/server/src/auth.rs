//! Who may use the API: the admin created on first start, sessions from
//! `login`, and the bearer tokens that carry them. Secrets are stored only
//! as hashes.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use chrono::Utc;
use sha2::{Digest, Sha256};
use tether_proto::api::LoginResponse;

use crate::config::AuthConfig;
use crate::secret_file;
use crate::store::{SessionRecord, Store, StoreError, UserRecord};

pub const ADMIN_USERNAME: &str = "admin";
pub const ADMIN_CREDENTIALS_FILE: &str = "admin-credentials.toml";
const PBKDF2_ITERATIONS: u32 = 100_000;

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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not write the admin credentials to {path}")]
    WriteCredentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub username: String,
    pub role: String,
}

#[derive(Clone)]
pub struct Auth {
    store: Store,
    config: AuthConfig,
}

impl Auth {
    pub fn new(store: Store, config: AuthConfig) -> Self {
        Self { store, config }
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
                role: "admin".to_owned(),
            })
            .await?;
        Ok(Some(password))
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<LoginResponse, AuthError> {
        let user = self.store.get_user(username).await?;
        let valid = user
            .as_ref()
            .is_some_and(|u| verify_password(password, &u.password_hash));
        if !valid {
            return Err(AuthError::BadCredentials);
        }
        let token = new_secret();
        let expires_at = Utc::now()
            + chrono::Duration::from_std(self.config.session_ttl)
                .unwrap_or(chrono::Duration::hours(12));
        self.store
            .insert_session(&secret_hash(&token), username, expires_at)
            .await?;
        Ok(LoginResponse { token, expires_at })
    }

    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let SessionRecord {
            username,
            expires_at,
        } = self
            .store
            .get_session(&secret_hash(token))
            .await?
            .ok_or(AuthError::InvalidToken)?;
        if expires_at <= Utc::now() {
            return Err(AuthError::Expired);
        }
        let user = self
            .store
            .get_user(&username)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        Ok(Principal {
            username: user.username,
            role: user.role,
        })
    }
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

/// `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 16] = rand::random();
    let hash = pbkdf2(password, &salt, PBKDF2_ITERATIONS);
    format!(
        "pbkdf2-sha256${PBKDF2_ITERATIONS}${}${}",
        hex::encode(salt),
        hex::encode(hash)
    )
}

pub fn verify_password(password: &str, encoded: &str) -> bool {
    let mut parts = encoded.split('$');
    let (Some("pbkdf2-sha256"), Some(iterations), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(hash)) = (
        iterations.parse::<u32>(),
        hex::decode(salt),
        hex::decode(hash),
    ) else {
        return false;
    };
    let Some(iterations) = NonZeroU32::new(iterations) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

fn pbkdf2(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let encoded = hash_password("correct horse");
        assert!(encoded.starts_with("pbkdf2-sha256$100000$"));
        assert!(verify_password("correct horse", &encoded));
        assert!(!verify_password("wrong horse", &encoded));
        assert!(!verify_password("correct horse", "garbage"));
        assert!(!verify_password("correct horse", "pbkdf2-sha256$0$00$00"));
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
