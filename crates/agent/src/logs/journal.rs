//! The systemd journal, read with `journalctl -o json`: followed
//! (`--follow`) for the system journal or a journal directory, polled for a
//! single journal file (journalctl cannot follow one: "Failed to get
//! journal fd"). Each entry carries its cursor; the agent keeps the last
//! one it spooled (see [`super::Positions`]) and resumes after it
//! (`--after-cursor`), so a restart neither loses nor repeats entries.
//!
//! Turning an entry into a record is pure and tested here; a real journal
//! written by `systemd-journal-remote` is read in the integration tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tether_proto::telemetry::LogRecord;
use tokio::io::BufReader;
use tokio::process::Command;

use super::filter::Origin;
use super::syslog::read_bounded;
use super::{JournalStart, Positions, Sink, truncate};

/// Longest JSON line taken from journalctl; longer entries are skipped
/// and counted (journald itself cuts messages at 48 KiB).
const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// Pause before journalctl is started again after it ended.
const RESTART_AFTER: Duration = Duration::from_secs(2);
/// How often a journal file is looked at for new entries.
const FILE_POLL: Duration = Duration::from_millis(500);

/// Which journal to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum JournalLocation {
    /// The system's journal, as `journalctl` finds it.
    #[default]
    System,
    /// `journalctl --directory=DIR`.
    Directory(PathBuf),
    /// `journalctl --file=FILE`.
    File(PathBuf),
}

impl JournalLocation {
    /// How the location is written in the saved positions: a cursor from
    /// one journal means nothing in another.
    pub fn key(&self) -> String {
        match self {
            JournalLocation::System => "system".into(),
            JournalLocation::Directory(dir) => format!("directory:{}", dir.display()),
            JournalLocation::File(file) => format!("file:{}", file.display()),
        }
    }

    fn args(&self) -> Vec<String> {
        match self {
            JournalLocation::System => Vec::new(),
            JournalLocation::Directory(dir) => vec![format!("--directory={}", dir.display())],
            JournalLocation::File(file) => vec![format!("--file={}", file.display())],
        }
    }
}

/// journalctl's arguments to read `location` from `start`.
pub fn command_args(location: &JournalLocation, start: &JournalStart, follow: bool) -> Vec<String> {
    let mut args = vec![
        "--output=json".to_owned(),
        "--no-pager".to_owned(),
        "--quiet".to_owned(),
    ];
    if follow {
        args.push("--follow".into());
    }
    args.extend(location.args());
    match start {
        JournalStart::After(cursor) => {
            args.push(format!("--after-cursor={cursor}"));
            args.push("--lines=all".into());
        }
        // Read once, without following: the newest entry, for its cursor only.
        JournalStart::Now if !follow => args.push("--lines=1".into()),
        JournalStart::Now => args.push("--lines=0".into()),
        JournalStart::Beginning => {
            args.push("--lines=all".into());
            // The system journal may hold years; a first start takes this boot.
            if *location == JournalLocation::System {
                args.push("--boot".into());
            }
        }
    }
    args
}

/// A journal entry as a record, and its cursor.
pub fn entry(line: &[u8]) -> Result<(LogRecord, Option<String>), String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| format!("not a journal entry: {e}"))?;
    let Value::Object(entry) = value else {
        return Err("not a journal entry: not a JSON object".into());
    };
    let text = |name: &str| entry.get(name).and_then(field_text);
    let at = text("__REALTIME_TIMESTAMP")
        .and_then(|micros| micros.parse::<i64>().ok())
        .and_then(DateTime::<Utc>::from_timestamp_micros)
        .ok_or("the entry has no __REALTIME_TIMESTAMP")?;
    let priority = text("PRIORITY")
        .and_then(|p| p.parse::<u8>().ok())
        .filter(|p| *p <= 7)
        .unwrap_or(6);
    let identifier = text("SYSLOG_IDENTIFIER");
    let unit = text("_SYSTEMD_UNIT")
        .or_else(|| identifier.clone())
        .or_else(|| text("_COMM"))
        .unwrap_or_default();
    let mut fields = BTreeMap::new();
    for (name, key) in [
        ("_PID", "pid"),
        ("_HOSTNAME", "hostname"),
        ("_BOOT_ID", "bootId"),
        ("_COMM", "comm"),
    ] {
        if let Some(value) = text(name) {
            fields.insert(key.to_owned(), value);
        }
    }
    if let Some(identifier) = identifier.filter(|i| *i != unit) {
        fields.insert("syslogIdentifier".into(), identifier);
    }
    if let Some(facility) = text("SYSLOG_FACILITY")
        .and_then(|f| f.parse::<usize>().ok())
        .and_then(|f| super::syslog::FACILITIES.get(f))
    {
        fields.insert("facility".into(), (*facility).to_owned());
    }
    let message = match entry.get("MESSAGE") {
        // journalctl writes null for a field larger than its threshold.
        Some(Value::Null) => {
            fields.insert(
                "malformed".into(),
                "journalctl left the message out (too large)".into(),
            );
            String::new()
        }
        Some(value) => field_text(value).unwrap_or_default(),
        None => String::new(),
    };
    let (message, cut) = truncate(message);
    if let Some(length) = cut {
        fields.insert("truncated".into(), length.to_string());
    }
    let cursor = text("__CURSOR");
    Ok((
        LogRecord {
            at,
            priority,
            unit,
            message,
            fields,
        },
        cursor,
    ))
}

/// A field's value: a string, bytes written as an array of numbers (not
/// UTF-8 or with control characters), or an array of those for a field
/// that occurs more than once (joined by newlines).
fn field_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(Value::as_u64)
                .map(|b| u8::try_from(b).unwrap_or(b'?'))
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(field_text).collect();
            (!parts.is_empty()).then(|| parts.join("\n"))
        }
        _ => None,
    }
}

/// Reads `location` until dropped, into `sink`, from where `positions`
/// says (or `start` if they say nothing for this journal). `track`: the
/// cursor is saved (the configured journal export) or not (the ephemeral
/// system log of `follow-logs`).
pub async fn run(
    location: JournalLocation,
    mut start: JournalStart,
    sink: Arc<Sink>,
    positions: Option<Arc<Positions>>,
) {
    let key = location.key();
    if let Some(positions) = &positions
        && let Some(saved) = positions.journal(&key)
    {
        start = saved;
    }
    let follow = !matches!(location, JournalLocation::File(_));
    let mut last_seen: Option<(std::time::SystemTime, u64)> = None;
    let mut warned = false;
    loop {
        if let JournalLocation::File(path) = &location {
            // Only run journalctl when the file changed.
            let seen = std::fs::metadata(path)
                .ok()
                .map(|m| (m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len()));
            if seen.is_none() || seen == last_seen {
                tokio::time::sleep(FILE_POLL).await;
                continue;
            }
            last_seen = seen;
        }
        let args = command_args(&location, &start, follow);
        let mut cursor_only = !follow && start == JournalStart::Now;
        tracing::debug!(?args, "starting journalctl");
        let child = Command::new("journalctl")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, "cannot run journalctl to read the journal; trying again every {} s", RESTART_AFTER.as_secs());
                    warned = true;
                }
                tokio::time::sleep(RESTART_AFTER).await;
                continue;
            }
        };
        let Some(stdout) = child.stdout.take() else {
            continue;
        };
        let mut reader = BufReader::with_capacity(16 * 1024, stdout);
        let mut line = Vec::new();
        let mut skipped = 0u64;
        loop {
            line.clear();
            match read_bounded(&mut reader, b'\n', MAX_ENTRY_BYTES + 1, &mut line).await {
                Ok(0) => break,
                Ok(read) if read > MAX_ENTRY_BYTES => {
                    skipped += 1;
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "reading journalctl's output failed");
                    break;
                }
            }
            match entry(&line) {
                Ok((record, cursor)) => {
                    if !std::mem::take(&mut cursor_only) {
                        sink.offer(record, Origin::Journal);
                    }
                    if let Some(cursor) = cursor {
                        if let Some(positions) = &positions {
                            positions.set_journal(&key, &cursor);
                        }
                        start = JournalStart::After(cursor);
                    }
                }
                Err(reason) => tracing::debug!(reason, "skipping a line from journalctl"),
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "skipped journal entries longer than {MAX_ENTRY_BYTES} bytes"
            );
        }
        let stderr = match child.stderr.take() {
            Some(mut stderr) => {
                let mut text = String::new();
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
                text
            }
            None => String::new(),
        };
        let status = child.wait().await;
        if follow {
            tracing::warn!(
                ?status,
                stderr = stderr.trim(),
                "journalctl stopped; starting it again in {} s",
                RESTART_AFTER.as_secs()
            );
            tokio::time::sleep(RESTART_AFTER).await;
        } else if !stderr.trim().is_empty() && !warned {
            tracing::warn!(
                stderr = stderr.trim(),
                "journalctl complained reading the journal file"
            );
            warned = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> (LogRecord, Option<String>) {
        entry(value.to_string().as_bytes()).expect("an entry")
    }

    #[test]
    fn an_entry_gives_priority_unit_message_time_and_useful_fields() {
        let (record, cursor) = parse(json!({
            "__CURSOR": "s=1;i=2",
            "__REALTIME_TIMESTAMP": "1764657000123456",
            "PRIORITY": "3",
            "_SYSTEMD_UNIT": "ssh.service",
            "SYSLOG_IDENTIFIER": "sshd",
            "SYSLOG_FACILITY": "4",
            "MESSAGE": "Accepted publickey",
            "_PID": "42",
            "_HOSTNAME": "dev1",
            "_BOOT_ID": "b0",
            "_SOURCE_MONOTONIC_TIMESTAMP": "1",
        }));
        assert_eq!(cursor.as_deref(), Some("s=1;i=2"));
        assert_eq!(record.priority, 3);
        assert_eq!(record.unit, "ssh.service");
        assert_eq!(record.message, "Accepted publickey");
        assert_eq!(record.at.timestamp_micros(), 1_764_657_000_123_456);
        assert_eq!(record.fields["pid"], "42");
        assert_eq!(record.fields["hostname"], "dev1");
        assert_eq!(record.fields["bootId"], "b0");
        assert_eq!(record.fields["syslogIdentifier"], "sshd");
        assert_eq!(record.fields["facility"], "auth");
        assert_eq!(record.fields.len(), 5, "{:?}", record.fields);
    }

    #[test]
    fn messages_as_bytes_repeated_or_left_out() {
        let (record, _) = parse(json!({
            "__REALTIME_TIMESTAMP": "1",
            "MESSAGE": [104, 105, 27, 255],
            "SYSLOG_IDENTIFIER": "app",
        }));
        assert_eq!(record.message, "hi\u{1b}\u{fffd}");
        assert_eq!((record.unit.as_str(), record.priority), ("app", 6));
        assert!(!record.fields.contains_key("syslogIdentifier"));
        let (record, _) = parse(json!({"__REALTIME_TIMESTAMP": "1", "MESSAGE": ["a", [98]]}));
        assert_eq!(record.message, "a\nb");
        let (record, _) = parse(json!({"__REALTIME_TIMESTAMP": "1", "MESSAGE": null}));
        assert!(record.fields["malformed"].contains("too large"));
        let (record, _) = parse(json!({
            "__REALTIME_TIMESTAMP": "1", "MESSAGE": "x".repeat(20_000), "PRIORITY": "9"
        }));
        assert_eq!(record.fields["truncated"], "20000");
        assert_eq!(record.priority, 6, "an impossible priority counts as info");
    }

    #[test]
    fn what_is_not_an_entry_is_named() {
        assert!(
            entry(b"[1]")
                .expect_err("array")
                .contains("not a JSON object")
        );
        assert!(
            entry(b"{")
                .expect_err("cut")
                .starts_with("not a journal entry")
        );
        assert!(
            entry(br#"{"MESSAGE":"x"}"#)
                .expect_err("no time")
                .contains("__REALTIME_TIMESTAMP")
        );
    }

    #[test]
    fn journalctl_starts_where_asked() {
        let dir = JournalLocation::Directory("/j".into());
        assert_eq!(
            command_args(&dir, &JournalStart::After("c".into()), true),
            [
                "--output=json",
                "--no-pager",
                "--quiet",
                "--follow",
                "--directory=/j",
                "--after-cursor=c",
                "--lines=all"
            ]
        );
        assert_eq!(
            command_args(&JournalLocation::System, &JournalStart::Beginning, true)[4..],
            ["--lines=all", "--boot"]
        );
        assert_eq!(
            command_args(
                &JournalLocation::File("/f.journal".into()),
                &JournalStart::Now,
                false
            )[3..],
            ["--file=/f.journal", "--lines=1"]
        );
    }
}
