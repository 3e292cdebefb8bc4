//! Users and service accounts (ADR 0026): creating them with a role,
//! changing roles while one admin always remains, and service accounts'
//! API keys, whose secrets are shown once and stored as hashes.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::throttle::username_key;
use super::{API_KEY_PREFIX, Auth, AuthError, Role, hash_password, new_secret, secret_hash};
use crate::store::{AdminGuarded, ApiKeyRecord, ServiceAccountRecord, StoreError, UserRecord};
use tether_proto::api::MAX_PASSWORD_LEN;

/// Longest user or service account name.
pub const MAX_NAME_LEN: usize = 64;
/// Names a user cannot have: `/users/me/…` is the caller's own.
const RESERVED_USERNAMES: &[&str] = &["me"];

/// A user as listed: never the password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub role: Role,
}

/// A new API key: its record and the secret, shown once.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApiKey {
    pub record: ApiKeyRecord,
    pub key: String,
}

/// `what` names the kind of account in the error.
pub fn check_name(what: &'static str, name: &str) -> Result<(), AuthError> {
    let mut chars = name.chars();
    let valid = name.len() <= MAX_NAME_LEN
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    let reserved = what == "user" && RESERVED_USERNAMES.contains(&name);
    if valid && !reserved {
        return Ok(());
    }
    Err(AuthError::InvalidName {
        what,
        name: name.to_owned(),
        reserved: if what == "user" {
            "; `me` is reserved"
        } else {
            ""
        },
    })
}

impl Auth {
    /// Creates a user; returns the password when it was generated, to be shown once.
    pub async fn create_user(
        &self,
        username: &str,
        role: Role,
        password: Option<String>,
    ) -> Result<Option<String>, AuthError> {
        check_name("user", username)?;
        if let Some(password) = &password {
            super::check_length("password", password, MAX_PASSWORD_LEN)?;
        }
        let (password, generated) = match password {
            Some(password) => (password, false),
            None => (new_secret(), true),
        };
        let hash = {
            let password = password.clone();
            tokio::task::spawn_blocking(move || hash_password(&password))
                .await
                .map_err(AuthError::Hasher)?
        };
        self.store
            .insert_user(&UserRecord {
                username: username.to_owned(),
                password_hash: hash,
                role: role.as_str().to_owned(),
            })
            .await?;
        Ok(generated.then_some(password))
    }

    pub async fn users(&self) -> Result<Vec<User>, AuthError> {
        self.store
            .list_users()
            .await?
            .into_iter()
            .map(|(username, role)| {
                Ok(User {
                    role: super::stored_role(&role)?,
                    username,
                })
            })
            .collect()
    }

    /// Deletes a user, whose sessions end with it; never the last admin.
    pub async fn delete_user(&self, username: &str) -> Result<(), AuthError> {
        match self
            .store
            .delete_user_keeping_an_admin(username, Role::Admin.as_str())
            .await?
        {
            AdminGuarded::Done => Ok(()),
            AdminGuarded::LastAdmin => Err(AuthError::LastAdmin {
                what: "delete the user",
                username: username.to_owned(),
            }),
        }
    }

    /// Gives a user another role, at once for its open sessions too; never
    /// takes the admin role from the last admin.
    pub async fn set_role(&self, username: &str, role: Role) -> Result<(), AuthError> {
        match self
            .store
            .set_user_role_keeping_an_admin(username, role.as_str(), Role::Admin.as_str())
            .await?
        {
            AdminGuarded::Done => Ok(()),
            AdminGuarded::LastAdmin => Err(AuthError::LastAdmin {
                what: "take the admin role from the user",
                username: username.to_owned(),
            }),
        }
    }

    /// Changes `username`'s password after checking the current one, sent
    /// from `client`: throttled like a login, since a guess here is one.
    pub async fn change_password(
        &self,
        client: IpAddr,
        username: &str,
        current: &str,
        new: &str,
    ) -> Result<(), AuthError> {
        self.throttle().begin_from(client, Instant::now())?;
        super::check_length("currentPassword", current, MAX_PASSWORD_LEN)?;
        super::check_length("newPassword", new, MAX_PASSWORD_LEN)?;
        let user_key = username_key(username);
        self.throttle()
            .begin_for(client, user_key, Instant::now())?;
        let user = self
            .store
            .get_user(username)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("user {username}"),
            })?;
        if !self.check_password(current, user.password_hash).await? {
            return Err(AuthError::WrongCurrentPassword);
        }
        self.throttle().succeeded(client, user_key, Instant::now());
        let new = new.to_owned();
        let hash = tokio::task::spawn_blocking(move || hash_password(&new))
            .await
            .map_err(AuthError::Hasher)?;
        Ok(self.store.set_password_hash(username, &hash).await?)
    }

    pub async fn create_service_account(
        &self,
        name: &str,
        role: Role,
    ) -> Result<ServiceAccountRecord, AuthError> {
        check_name("service account", name)?;
        let account = ServiceAccountRecord {
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            created_at: Utc::now(),
        };
        self.store.insert_service_account(&account).await?;
        Ok(account)
    }

    pub async fn service_accounts(&self) -> Result<Vec<ServiceAccountRecord>, AuthError> {
        Ok(self.store.list_service_accounts().await?)
    }

    /// Deletes the account; its keys stop working at once.
    pub async fn delete_service_account(&self, name: &str) -> Result<(), AuthError> {
        Ok(self.store.delete_service_account(name).await?)
    }

    /// A new key for `account`, valid for `expires_in` if given, else until revoked.
    pub async fn create_api_key(
        &self,
        account: &str,
        expires_in: Option<Duration>,
    ) -> Result<NewApiKey, AuthError> {
        let now = Utc::now();
        let key = format!("{API_KEY_PREFIX}{}", new_secret());
        let record = ApiKeyRecord {
            id: uuid::Uuid::now_v7().to_string(),
            account: account.to_owned(),
            created_at: now,
            // Past chrono's range the key simply does not expire.
            expires_at: expires_in
                .and_then(|ttl| chrono::Duration::from_std(ttl).ok())
                .and_then(|ttl| now.checked_add_signed(ttl)),
            last_used_at: None,
            revoked_at: None,
        };
        self.store
            .insert_api_key(&secret_hash(&key), &record)
            .await?;
        Ok(NewApiKey { record, key })
    }

    pub async fn api_keys(&self, account: &str) -> Result<Vec<ApiKeyRecord>, AuthError> {
        Ok(self.store.list_api_keys(account).await?)
    }

    /// The key stops working at once; it stays listed as revoked.
    pub async fn revoke_api_key(&self, account: &str, id: &str) -> Result<(), AuthError> {
        Ok(self.store.revoke_api_key(account, id, Utc::now()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_and_safe_in_a_path() {
        for good in ["ci", "deploy-bot", "a.b_c", "0ps"] {
            check_name("service account", good).expect(good);
        }
        for bad in ["", "CI", "-x", "a b", "sa:x", "a/b", &"x".repeat(65)] {
            check_name("service account", bad).expect_err(bad);
        }
        let err = check_name("user", "me").expect_err("reserved");
        assert!(err.to_string().contains("`me` is reserved"), "{err}");
        check_name("service account", "me").expect("only users have /users/me");
    }
}
