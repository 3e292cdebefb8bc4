//! Conversions between our types and the portable column types: times as
//! milliseconds, JSON as text, unsigned counters as `BIGINT`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use sqlx::{Any, Decode, Row, Type};
use tether_proto::DeviceId;

use super::StoreError;

/// `$first, $first+1, …`, `count` of them.
pub(super) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

pub(super) fn time(millis: i64, what: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "{what} is {millis} ms, outside the range of a date"
        ))
    })
}

pub(super) fn optional_time(
    millis: Option<i64>,
    what: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    millis.map(|millis| time(millis, what)).transpose()
}

/// A `u64` as `BIGINT`, which is signed on both databases.
pub(super) fn to_i64(value: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::TooLarge { what, value })
}

pub(super) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("{what} is {value}, which is negative")))
}

pub(super) fn to_u16(value: i64, what: &str) -> Result<u16, StoreError> {
    u16::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("{what} is {value}, not a status code")))
}

pub(super) fn to_json<T: Serialize>(value: &T, what: &'static str) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { what, source })
}

pub(super) fn from_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|err| StoreError::Corrupt(format!("{what} is not the expected JSON ({err})")))
}

pub(super) fn device_id(name: String) -> Result<DeviceId, StoreError> {
    DeviceId::new(name).map_err(|err| StoreError::Corrupt(err.to_string()))
}

/// One column of a row; a NULL or a value of another type is a `Decode` error
/// naming the column.
pub(super) fn get<'r, T>(row: &'r AnyRow, column: &'static str) -> Result<T, StoreError>
where
    T: Decode<'r, Any> + Type<Any>,
{
    row.try_get(column)
        .map_err(|source| StoreError::Decode { column, source })
}

/// Whether the statement failed on a constraint of this kind, as both
/// databases report it (SQLite extended result codes, PostgreSQL SQLSTATE).
pub(super) fn violates(err: &sqlx::Error, kind: ErrorKind) -> bool {
    match err {
        sqlx::Error::Database(db) => db.kind() == kind,
        _ => false,
    }
}

/// A `LIMIT` value; `u32` always fits.
pub(super) fn limit(limit: u32) -> i64 {
    i64::from(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_from_the_first_given() {
        assert_eq!(placeholders(4, 3), "$4, $5, $6");
        assert_eq!(placeholders(1, 1), "$1");
    }
}
