//! The `service_accounts` and `api_keys` tables (migration 0027).

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;

use super::codec::{get, millis, optional_time, time, violates};
use super::{Store, StoreError};

/// A script's or CI's identity.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceAccountRecord {
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
}

/// An API key of a service account; its secret is stored only as a hash,
/// kept apart from this record so a listing can never show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub account: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const KEY_COLUMNS: &str =
    "k.id, k.account, k.created_at, k.expires_at, k.last_used_at, k.revoked_at";

impl Store {
    /// `Conflict` if the name is taken.
    pub async fn insert_service_account(
        &self,
        account: &ServiceAccountRecord,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO service_accounts (name, role, created_at) VALUES ($1, $2, $3)")
            .bind(&account.name)
            .bind(&account.role)
            .bind(millis(account.created_at))
            .execute(&self.pool)
            .await
            .map_err(|source| {
                if violates(&source, ErrorKind::UniqueViolation) {
                    StoreError::Conflict {
                        what: format!("service account {}", account.name),
                    }
                } else {
                    StoreError::Query {
                        context: "create a service account",
                        source,
                    }
                }
            })?;
        Ok(())
    }

    /// Every service account by name.
    pub async fn list_service_accounts(&self) -> Result<Vec<ServiceAccountRecord>, StoreError> {
        let rows = sqlx::query("SELECT name, role, created_at FROM service_accounts ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list service accounts",
                source,
            })?;
        rows.iter()
            .map(|row| {
                let name: String = get(row, "name")?;
                Ok(ServiceAccountRecord {
                    role: get(row, "role")?,
                    created_at: time(
                        get(row, "created_at")?,
                        &format!("created_at of service account {name}"),
                    )?,
                    name,
                })
            })
            .collect()
    }

    /// Deletes the account and its keys; `NotFound` if there is none.
    pub async fn delete_service_account(&self, name: &str) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM service_accounts WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "delete a service account",
                source,
            })?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound {
                what: format!("service account {name}"),
            });
        }
        Ok(())
    }

    /// `NotFound` if the key's account does not exist.
    pub async fn insert_api_key(
        &self,
        token_hash: &str,
        key: &ApiKeyRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, token_hash, account, created_at, expires_at, last_used_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.id)
        .bind(token_hash)
        .bind(&key.account)
        .bind(millis(key.created_at))
        .bind(key.expires_at.map(millis))
        .bind(key.last_used_at.map(millis))
        .bind(key.revoked_at.map(millis))
        .execute(&self.pool)
        .await
        .map_err(|source| {
            if violates(&source, ErrorKind::ForeignKeyViolation) {
                StoreError::NotFound {
                    what: format!("service account {}", key.account),
                }
            } else {
                StoreError::Query {
                    context: "store an API key",
                    source,
                }
            }
        })?;
        Ok(())
    }

    /// The account's keys, oldest first, revoked ones included;
    /// `NotFound` if there is no such account.
    pub async fn list_api_keys(&self, account: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT a.name, {KEY_COLUMNS} FROM service_accounts a \
             LEFT JOIN api_keys k ON k.account = a.name \
             WHERE a.name = $1 ORDER BY k.created_at, k.id"
        ))
        .bind(account)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "list API keys",
            source,
        })?;
        if rows.is_empty() {
            return Err(StoreError::NotFound {
                what: format!("service account {account}"),
            });
        }
        // The account without keys is one row of NULLs.
        rows.iter()
            .filter(|row| matches!(get::<Option<String>>(row, "id"), Ok(Some(_))))
            .map(key_from_row)
            .collect()
    }

    /// Marks a key revoked at `at` (a second revoke keeps the first time);
    /// `NotFound` if the account has no such key.
    pub async fn revoke_api_key(
        &self,
        account: &str,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let revoked = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) WHERE account = $1 AND id = $2",
        )
        .bind(account)
        .bind(id)
        .bind(millis(at))
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "revoke an API key",
            source,
        })?
        .rows_affected();
        if revoked == 0 {
            return Err(StoreError::NotFound {
                what: format!("API key {id} of service account {account}"),
            });
        }
        Ok(())
    }

    /// The key with this hash, revoked or expired or not (the caller
    /// decides), with its account's role: one query per request.
    pub async fn get_api_key(
        &self,
        token_hash: &str,
    ) -> Result<Option<(ApiKeyRecord, String)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS}, a.role FROM api_keys k \
             JOIN service_accounts a ON a.name = k.account WHERE k.token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "read an API key",
            source,
        })?;
        row.as_ref()
            .map(|row| Ok((key_from_row(row)?, get(row, "role")?)))
            .transpose()
    }

    pub async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(millis(at))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "record an API key's use",
                source,
            })?;
        Ok(())
    }
}

fn key_from_row(row: &AnyRow) -> Result<ApiKeyRecord, StoreError> {
    let id: String = get(row, "id")?;
    let what = |column: &str| format!("{column} of API key {id}");
    Ok(ApiKeyRecord {
        account: get(row, "account")?,
        created_at: time(get(row, "created_at")?, &what("created_at"))?,
        expires_at: optional_time(get(row, "expires_at")?, &what("expires_at"))?,
        last_used_at: optional_time(get(row, "last_used_at")?, &what("last_used_at"))?,
        revoked_at: optional_time(get(row, "revoked_at")?, &what("revoked_at"))?,
        id,
    })
}
