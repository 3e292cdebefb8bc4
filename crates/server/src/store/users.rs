//! The `users` and `sessions` tables.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;

use super::codec::{get, limit, millis, time, violates};
use super::telemetry::before_or_newest;
use super::{Before, SessionRecord, Store, StoreError, UserRecord};

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

    /// Every user by name; for listings, so without password hashes.
    pub async fn list_users(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT username, role FROM users ORDER BY username")
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list users",
                source,
            })?;
        rows.iter()
            .map(|row| Ok((get(row, "username")?, get(row, "role")?)))
            .collect()
    }

    pub async fn count_users(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS users FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "count users",
                source,
            })?;
        let users: i64 = get(&row, "users")?;
        Ok(users.unsigned_abs())
    }

    /// Creates a user; `Conflict` if the name is taken.
    pub async fn insert_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3)")
            .bind(&user.username)
            .bind(&user.password_hash)
            .bind(&user.role)
            .execute(&self.pool)
            .await
            .map_err(|source| {
                if violates(&source, ErrorKind::UniqueViolation) {
                    StoreError::Conflict {
                        what: format!("user {}", user.username),
                    }
                } else {
                    StoreError::Query {
                        context: "create a user",
                        source,
                    }
                }
            })?;
        Ok(())
    }

    /// Deletes a user (its sessions and SSH keys go with it), unless it is
    /// the last with the `admin_role`: one statement, so two admins
    /// deleting each other cannot both succeed on SQLite.
    pub async fn delete_user_keeping_an_admin(
        &self,
        username: &str,
        admin_role: &str,
    ) -> Result<AdminGuarded, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM users WHERE username = $1 \
             AND (role <> $2 OR (SELECT COUNT(*) FROM users WHERE role = $2) > 1)",
        )
        .bind(username)
        .bind(admin_role)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "delete a user",
            source,
        })?
        .rows_affected();
        self.admin_guarded(deleted, username).await
    }

    /// Gives a user another role, unless that takes the role `admin_role`
    /// from the last user who has it.
    pub async fn set_user_role_keeping_an_admin(
        &self,
        username: &str,
        role: &str,
        admin_role: &str,
    ) -> Result<AdminGuarded, StoreError> {
        let updated = sqlx::query(
            "UPDATE users SET role = $2 WHERE username = $1 \
             AND (role <> $3 OR role = $2 OR (SELECT COUNT(*) FROM users WHERE role = $3) > 1)",
        )
        .bind(username)
        .bind(role)
        .bind(admin_role)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "change a user's role",
            source,
        })?
        .rows_affected();
        self.admin_guarded(updated, username).await
    }

    async fn admin_guarded(
        &self,
        changed: u64,
        username: &str,
    ) -> Result<AdminGuarded, StoreError> {
        if changed > 0 {
            Ok(AdminGuarded::Done)
        } else if self.get_user(username).await?.is_some() {
            Ok(AdminGuarded::LastAdmin)
        } else {
            Err(StoreError::NotFound {
                what: format!("user {username}"),
            })
        }
    }

    /// Replaces a user's password hash; `NotFound` if there is no such user.
    pub async fn set_password_hash(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query("UPDATE users SET password_hash = $2 WHERE username = $1")
            .bind(username)
            .bind(password_hash)
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "change a password",
                source,
            })?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound {
                what: format!("user {username}"),
            });
        }
        Ok(())
    }

    /// `NotFound` if the user does not exist.
    pub async fn insert_session(
        &self,
        token_hash: &str,
        session: &SessionRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, username, created_at, expires_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&session.id)
        .bind(token_hash)
        .bind(&session.username)
        .bind(millis(session.created_at))
        .bind(millis(session.expires_at))
        .bind(millis(session.last_used_at))
        .execute(&self.pool)
        .await
        .map_err(|source| {
            if violates(&source, ErrorKind::ForeignKeyViolation) {
                StoreError::NotFound {
                    what: format!("user {}", session.username),
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

    /// The session, expired or not (the caller compares `expires_at`), with
    /// its user's role: one query for every authenticated API request.
    pub async fn get_session(
        &self,
        token_hash: &str,
    ) -> Result<Option<(SessionRecord, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT s.id, s.username, s.created_at, s.expires_at, s.last_used_at, u.role \
             FROM sessions s JOIN users u ON u.username = s.username \
             WHERE s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "read a session",
            source,
        })?;
        row.as_ref()
            .map(|row| Ok((session_from_row(row)?, get(row, "role")?)))
            .transpose()
    }

    /// Every session, expired ones included until they are pruned, newest first.
    pub async fn list_sessions(
        &self,
        before: Option<&Before>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let (at, id) = before_or_newest(before);
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE created_at <= $1 \
             AND (created_at < $1 OR id < $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(at)
        .bind(id)
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "list sessions",
            source,
        })?;
        rows.iter().map(session_from_row).collect()
    }

    pub async fn touch_session(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET last_used_at = $1 WHERE id = $2")
            .bind(millis(at))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "record a session's use",
                source,
            })?;
        Ok(())
    }

    /// `NotFound` if there is no such session.
    pub async fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "delete a session",
                source,
            })?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound {
                what: format!("session {id}"),
            });
        }
        Ok(())
    }

    /// Deletes sessions that expired before `now`; returns how many.
    pub async fn delete_sessions_expired_before(
        &self,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.delete_before(
            "DELETE FROM sessions WHERE expires_at < $1",
            now,
            "delete expired sessions",
        )
        .await
    }
}

/// What a change guarded by "one admin must remain" did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminGuarded {
    Done,
    /// Refused: the user is the last admin.
    LastAdmin,
}

const SESSION_COLUMNS: &str = "id, username, created_at, expires_at, last_used_at";

fn session_from_row(row: &AnyRow) -> Result<SessionRecord, StoreError> {
    let username: String = get(row, "username")?;
    let what = |column: &str| format!("{column} of a session of {username}");
    Ok(SessionRecord {
        id: get(row, "id")?,
        created_at: time(get(row, "created_at")?, &what("created_at"))?,
        expires_at: time(get(row, "expires_at")?, &what("expires_at"))?,
        last_used_at: time(get(row, "last_used_at")?, &what("last_used_at"))?,
        username,
    })
}
