//! Paging of every listing, as the Kubernetes API pages: `limit` (default
//! 500, at most 5000) and an opaque `continue` token that says where the
//! next page starts. Pages are keyset pages (after a name, before a time
//! and id, …), so a walk returns each item that existed when it started
//! exactly once, also while items are being added.
//!
//! A token is base64url of `JSON ‖ SHA-256(JSON)[..8]`; the JSON names the
//! listing it belongs to (path and label selector) and the position. It is
//! not a secret and not signed: a token edited into a valid one only moves
//! the start of a page, which the caller could do anyway. The checksum
//! makes an accidentally altered or foreign token a clear 400.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tether_proto::api::Page;
use utoipa::IntoParams;

use super::error::ApiError;
use crate::store::{Before, DeviceCursor, LogPosition};

pub const DEFAULT_LIMIT: u32 = 500;
pub const MAX_LIMIT: u32 = 5000;
const VERSION: u8 = 1;

/// A time window `[since, until)`.
pub type LogWindow = (DateTime<Utc>, DateTime<Utc>);
const CHECKSUM_BYTES: usize = 8;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PageQuery {
    /// At most this many items in this page (default 500).
    #[param(minimum = 1, maximum = 5000)]
    pub limit: Option<u32>,
    /// The `continue` of the previous page, to read the next one (with the
    /// same other parameters).
    #[serde(rename = "continue")]
    #[param(rename = "continue", max_length = 2048)]
    pub continue_token: Option<String>,
}

/// Where a page starts, in the order of its listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Position {
    /// After this name (devices by name, in the listing's direction).
    After(String),
    /// After this time last seen in ms (0 for never) and name (devices by
    /// time last seen, in the listing's direction).
    AfterSeen(i64, String),
    /// Before this per-device sequence number (actions, newest first).
    BeforeSeq(u64),
    /// Before this time in ms (metrics, newest first).
    BeforeTime(i64),
    /// Before this time in ms, or at it with a smaller id (events, audit,
    /// sessions, newest first).
    BeforeTimeAndId(i64, String),
    /// After this time in ms, device and line number (logs, oldest first),
    /// in the window `[since, until)` in ms the first page resolved (so a
    /// relative `since` does not move between pages).
    AfterLog(i64, String, u64, i64, i64),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    v: u8,
    /// The listing the token continues.
    of: String,
    at: Position,
}

/// A request for one page of one listing.
#[derive(Debug)]
pub struct PageRequest {
    listing: String,
    pub limit: u32,
    start: Option<Position>,
}

impl PageRequest {
    /// `listing` names the listing with everything that changes its items
    /// (path, device, canonical label selector): a token of another
    /// listing is refused.
    pub fn new(query: &PageQuery, listing: String) -> Result<Self, ApiError> {
        let limit = match query.limit {
            None => DEFAULT_LIMIT,
            Some(limit @ 1..=MAX_LIMIT) => limit,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "limit must be between 1 and {MAX_LIMIT}; got {other}"
                )));
            }
        };
        let start = query
            .continue_token
            .as_deref()
            .map(|token| decode(token, &listing))
            .transpose()?;
        Ok(Self {
            listing,
            limit,
            start,
        })
    }

    /// How many rows to read: one more than the page, to know whether
    /// another page follows.
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }

    pub fn after_name(&self) -> Result<Option<&str>, ApiError> {
        match &self.start {
            None => Ok(None),
            Some(Position::After(name)) => Ok(Some(name)),
            Some(_) => Err(wrong_listing()),
        }
    }

    /// Where a page of devices starts, in any of the device list's orders
    /// (the token's listing names the order).
    pub fn after_device(&self) -> Result<Option<DeviceCursor>, ApiError> {
        match &self.start {
            None => Ok(None),
            Some(Position::After(name)) => Ok(Some(DeviceCursor {
                last_seen: 0,
                name: name.clone(),
            })),
            Some(Position::AfterSeen(last_seen, name)) => Ok(Some(DeviceCursor {
                last_seen: *last_seen,
                name: name.clone(),
            })),
            Some(_) => Err(wrong_listing()),
        }
    }

    pub fn before_seq(&self) -> Result<Option<u64>, ApiError> {
        match &self.start {
            None => Ok(None),
            // The store keeps sequence numbers as i64; a forged larger one
            // would otherwise fail there, as an internal error.
            Some(Position::BeforeSeq(seq)) if i64::try_from(*seq).is_ok() => Ok(Some(*seq)),
            Some(Position::BeforeSeq(_)) => Err(ApiError::bad_request(
                "invalid continue token: its sequence number is out of range",
            )),
            Some(_) => Err(wrong_listing()),
        }
    }

    pub fn before_time(&self) -> Result<Option<DateTime<Utc>>, ApiError> {
        match &self.start {
            None => Ok(None),
            Some(Position::BeforeTime(at)) => time(*at).map(Some),
            Some(_) => Err(wrong_listing()),
        }
    }

    pub fn before(&self) -> Result<Option<Before>, ApiError> {
        match &self.start {
            None => Ok(None),
            Some(Position::BeforeTimeAndId(at, id)) => Ok(Some(Before {
                at: time(*at)?,
                id: id.clone(),
            })),
            Some(_) => Err(wrong_listing()),
        }
    }

    /// Where a page of logs starts, and the window of the listing.
    pub fn after_log(&self) -> Result<Option<(LogPosition, LogWindow)>, ApiError> {
        match &self.start {
            None => Ok(None),
            Some(Position::AfterLog(_, _, pos, _, _)) if i64::try_from(*pos).is_err() => Err(
                ApiError::bad_request("invalid continue token: its line number is out of range"),
            ),
            Some(Position::AfterLog(at, device, pos, since, until)) => Ok(Some((
                LogPosition {
                    at: time(*at)?,
                    device: device.clone(),
                    pos: *pos,
                },
                (time(*since)?, time(*until)?),
            ))),
            Some(_) => Err(wrong_listing()),
        }
    }

    /// A page whose items were chosen already (a scan that may stop short
    /// of `limit`), with a token for `next` if there is one.
    pub fn page_to<T>(&self, items: Vec<T>, next: Option<Position>) -> Page<T> {
        Page {
            items,
            continue_token: next.map(|at| encode(&self.listing, at)),
        }
    }

    /// The page of `rows` (read with [`Self::fetch`]), with a token for the
    /// next one when there is more; `position` says where the page after
    /// an item starts.
    pub fn page<T, U>(
        &self,
        mut rows: Vec<T>,
        position: impl Fn(&T) -> Position,
        to_api: impl FnMut(T) -> U,
    ) -> Page<U> {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let continue_token = match rows.last() {
            Some(last) if more => Some(encode(&self.listing, position(last))),
            _ => None,
        };
        Page {
            items: rows.into_iter().map(to_api).collect(),
            continue_token,
        }
    }
}

fn encode(listing: &str, at: Position) -> String {
    let token = Token {
        v: VERSION,
        of: listing.to_owned(),
        at,
    };
    // A struct of strings and numbers always serializes.
    let mut bytes = serde_json::to_vec(&token).unwrap_or_default();
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum[..CHECKSUM_BYTES]);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode(token: &str, listing: &str) -> Result<Position, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid continue token: it was altered or is not a continue token; \
             pass the `continue` of the previous page unchanged, or start again without it",
        )
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid())?;
    let (json, checksum) = bytes
        .split_at_checked(
            bytes
                .len()
                .checked_sub(CHECKSUM_BYTES)
                .ok_or_else(invalid)?,
        )
        .ok_or_else(invalid)?;
    if Sha256::digest(json)[..CHECKSUM_BYTES] != *checksum {
        return Err(invalid());
    }
    let token: Token = serde_json::from_slice(json).map_err(|_| invalid())?;
    if token.v != VERSION {
        return Err(ApiError::bad_request(format!(
            "invalid continue token: it is of version {} of tetherd's tokens, this one reads {VERSION}; start again without it",
            token.v
        )));
    }
    if token.of != listing {
        return Err(wrong_listing());
    }
    Ok(token.at)
}

fn wrong_listing() -> ApiError {
    ApiError::bad_request(
        "invalid continue token: it continues another listing (another path or label selector); \
         use it with the query it came from, or start again without it",
    )
}

fn time(millis: i64) -> Result<DateTime<Utc>, ApiError> {
    DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| ApiError::bad_request("invalid continue token: its time is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        listing: &str,
        limit: Option<u32>,
        token: Option<String>,
    ) -> Result<PageRequest, ApiError> {
        PageRequest::new(
            &PageQuery {
                limit,
                continue_token: token,
            },
            listing.to_owned(),
        )
    }

    #[test]
    fn a_page_with_more_after_it_carries_a_token_to_the_next() {
        let first = request("devices?labelSelector=a=b", Some(2), None).expect("valid");
        assert_eq!(first.fetch(), 3);
        let page = first.page(
            vec!["a", "b", "c"],
            |s| Position::After((*s).to_owned()),
            str::to_owned,
        );
        assert_eq!(page.items, ["a", "b"]);
        let token = page.continue_token.expect("more follows");
        let next = request("devices?labelSelector=a=b", Some(2), Some(token)).expect("valid");
        assert_eq!(next.after_name().expect("a name"), Some("b"));
        let last = next.page(
            vec!["c"],
            |s| Position::After((*s).to_owned()),
            str::to_owned,
        );
        assert_eq!(last.continue_token, None);
    }

    #[test]
    fn limits_outside_the_range_name_limit() {
        for limit in [0, MAX_LIMIT + 1] {
            let error = request("audit", Some(limit), None).expect_err("out of range");
            assert!(
                error
                    .message
                    .starts_with("limit must be between 1 and 5000"),
                "{}",
                error.message
            );
        }
        assert_eq!(
            request("audit", None, None).expect("default").limit,
            DEFAULT_LIMIT
        );
    }

    #[test]
    fn altered_and_foreign_tokens_are_refused() {
        let token = encode("devices/a/events", Position::BeforeTimeAndId(5, "x".into()));
        assert!(request("devices/a/events", None, Some(token.clone())).is_ok());
        let foreign = request("devices/b/events", None, Some(token.clone())).expect_err("foreign");
        assert!(
            foreign.message.contains("another listing"),
            "{}",
            foreign.message
        );
        let mut altered = token.into_bytes();
        let middle = altered.len() / 2;
        altered[middle] = if altered[middle] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("ascii");
        for bad in [
            altered,
            "not a token!".to_owned(),
            String::new(),
            "QQ".to_owned(),
        ] {
            let error = request("devices/a/events", None, Some(bad.clone())).expect_err(&bad);
            assert!(
                error.message.starts_with("invalid continue token"),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn a_position_the_store_cannot_hold_is_refused() {
        let token = encode("devices/a/actions", Position::BeforeSeq(u64::MAX));
        let page = request("devices/a/actions", None, Some(token)).expect("decodes");
        let error = page.before_seq().expect_err("beyond i64");
        assert!(error.message.contains("out of range"), "{}", error.message);
    }

    #[test]
    fn a_token_of_another_kind_of_position_is_refused() {
        let token = encode("audit", Position::BeforeSeq(3));
        let page = request("audit", None, Some(token)).expect("decodes");
        let error = page.before().expect_err("not a time and id");
        assert!(
            error.message.starts_with("invalid continue token"),
            "{}",
            error.message
        );
    }
}
