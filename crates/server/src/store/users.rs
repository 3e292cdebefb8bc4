//! The `users` and `sessions` tables.

use chrono::{DateTime, Utc};
use sqlx::error::ErrorKind;

use super::codec::{get, millis, time, violates};
use super::{SessionRecord, Store, StoreError, UserRecord};

impl Store {
    /// Creates the user or replaces its password hash and role.
    pub async fn upsert_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3) \
             ON CONFLICT (username) DO UPDATE \
             SET password_hash = excluded.password_hash, role = excluded.role",
        )
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(&user.role)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "store a user",
            source,
        })?;
        Ok(())
    }

    pub async fn get_user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let row =
            sqlx::query("SELECT username, password_hash, role FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await
                .map_err(|source| StoreError::Query {
                    context: "read a user",
                    source,
                })?;
        row.map(|row| {
            Ok(UserRecord {
                username: get(&row, "username")?,
                password_hash: get(&row, "password_hash")?,
                role: get(&row, "role")?,
            })
        })
        .transpose()
    }

    /// `NotFound` if the user does not exist.
    pub async fn insert_session(
        &self,
        token_hash: &str,
        username: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO sessions (token_hash, username, expires_at) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(username)
            .bind(millis(expires_at))
            .execute(&self.pool)
            .await
            .map_err(|source| {
                if violates(&source, ErrorKind::ForeignKeyViolation) {
                    StoreError::NotFound {
                        what: format!("user {username}"),
                    }
                } else if violates(&source, ErrorKind::UniqueViolation) {
                    StoreError::Conflict {
                        what: "session token".to_owned(),
                    }
                } else {
                    StoreError::Query {
                        context: "store a session",
                        source,
                    }
                }
            })?;
        Ok(())
    }

    /// The session, expired or not; the caller compares `expires_at`.
    pub async fn get_session(&self, token_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query("SELECT username, expires_at FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "read a session",
                source,
            })?;
        row.map(|row| {
            let username: String = get(&row, "username")?;
            let expires_at = time(
                get(&row, "expires_at")?,
                &format!("expires_at of a session of {username}"),
            )?;
            Ok(SessionRecord {
                username,
                expires_at,
            })
        })
        .transpose()
    }
}
