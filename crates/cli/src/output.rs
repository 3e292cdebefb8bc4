//! Rendering for people (`-o table`, kubectl-style columns) and for scripts
//! (`-o json`, `-o yaml`: the API's objects unchanged).

use std::borrow::Cow;
use std::io::Write;

use chrono::{DateTime, Utc};
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;
use tether_proto::api::Labels;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Columns for people.
    #[default]
    Table,
    /// The API's JSON, pretty-printed.
    Json,
    /// The API's objects as YAML.
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot encode the output as JSON")]
    Json(#[source] serde_json::Error),
    #[error("cannot encode the output as YAML")]
    Yaml(#[source] serde_yaml::Error),
    #[error("cannot write to standard output")]
    Write(#[source] std::io::Error),
}

/// Prints `value` as JSON or YAML, or as the table `table` draws.
pub fn print<T: Serialize + ?Sized>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<(), OutputError> {
    let text = match format {
        OutputFormat::Table => printable(&table(value)).into_owned(),
        OutputFormat::Json => {
            json_printable(&serde_json::to_string_pretty(value).map_err(OutputError::Json)?)
                .into_owned()
        }
        // libyaml writes every control character as an escape already;
        // `printable`'s escapes would change the values.
        OutputFormat::Yaml => serde_yaml::to_string(value).map_err(OutputError::Yaml)?,
    };
    write_line(&text)
}

/// Whether a terminal acts on `c` rather than showing it: the control
/// characters (C0, DEL, C1: escape sequences that move the cursor, retitle
/// the window or set the clipboard; a carriage return that overwrites a
/// line) but newline and tab, and the bidirectional-text controls that
/// show what follows them reordered (after U+202E, `txt.exe` shows as
/// `exe.txt`).
fn acts_on(c: char) -> bool {
    let bidi = matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    (c.is_control() && c != '\n' && c != '\t') || bidi
}

/// `text` with each character [`acts_on`] says a terminal would act on
/// replaced by `escape`; borrowed when there is none.
fn escaped(text: &str, escape: impl Fn(char, &mut String)) -> Cow<'_, str> {
    if !text.chars().any(acts_on) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if acts_on(c) {
            escape(c, &mut shown);
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

/// `text` with what a terminal would act on (see [`acts_on`]) shown as
/// escapes, `\u{1b}`: what a device wrote (a log line, an error) reaches
/// the operator's terminal as text. Newlines and tabs stay.
pub fn printable(text: &str) -> Cow<'_, str> {
    escaped(text, |c, shown| shown.extend(c.escape_default()))
}

/// `text` on one line: each newline in it shown as `\n` (a carriage
/// return is [`printable`]'s to escape). For what a device reports where
/// each line is one record or field (a log line, a fact), so that it
/// cannot add a line that reads as another device's or as tetherd's own.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if text.contains('\n') {
        Cow::Owned(text.replace('\n', "\\n"))
    } else {
        Cow::Borrowed(text)
    }
}

/// JSON text (as serde_json writes it) with what a terminal would act on
/// written as JSON's `\uXXXX` escapes: serde_json leaves DEL, the C1
/// controls and the bidirectional controls raw, and [`printable`]'s
/// `\u{7f}` is no JSON escape. Such characters only occur inside JSON
/// strings, so the value read back is the same.
pub fn json_printable(json: &str) -> Cow<'_, str> {
    // Every character `acts_on` is in the Basic Multilingual Plane: one
    // `\uXXXX` each.
    escaped(json, |c, shown| {
        shown.push_str(&format!("\\u{:04x}", u32::from(c)))
    })
}

/// Writes `text` ([`printable`]) and a final newline to standard output.
pub fn emit(text: &str) -> Result<(), OutputError> {
    write_line(&printable(text))
}

/// Writes `text`, made safe to show already, and a final newline.
fn write_line(text: &str) -> Result<(), OutputError> {
    let mut out = std::io::stdout().lock();
    let newline = if text.ends_with('\n') { "" } else { "\n" };
    write!(out, "{text}{newline}")
        .and_then(|()| out.flush())
        .map_err(OutputError::Write)
}

/// A borderless table with upper-case headers, like kubectl's.
pub fn columns<const N: usize>(headers: [&str; N], rows: Vec<[String; N]>) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers);
    for row in rows {
        table.add_row(row);
    }
    // kubectl's columns start flush left, three spaces apart.
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `FIELD: value` lines for one object, aligned, like `kubectl describe`.
pub fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(name, value)| format!("{:width$} {value}", format!("{name}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Time since `then` in kubectl's short form: `45s`, `12m`, `5h`, `3d`.
pub fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// `age` with `<none>` for a time that never happened.
pub fn age_or_none(now: DateTime<Utc>, then: Option<DateTime<Utc>>) -> String {
    then.map_or_else(|| "<none>".to_owned(), |then| age(now, then))
}

/// A timestamp as RFC 3339 in UTC, to the second.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Precision beyond one decimal is noise in a table; f64 is exact enough here.
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Labels as `k=v,k2=v2`, or `<none>`.
pub fn labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return "<none>".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn what_a_terminal_would_act_on_is_shown_as_escapes() {
        assert!(matches!(printable("plain\ttext\n"), Cow::Borrowed(_)));
        assert_eq!(
            printable("ok\u{1b}]52;c;ZWNobyBwd25lZA==\u{7}\rgone\u{9b}2J"),
            "ok\\u{1b}]52;c;ZWNobyBwd25lZA==\\u{7}\\rgone\\u{9b}2J"
        );
        // Right-to-left override and isolate: `evil\u{202e}txt.exe` shows as
        // `evilexe.txt`.
        assert_eq!(
            printable("evil\u{202e}txt.exe \u{2067}x\u{2069}"),
            "evil\\u{202e}txt.exe \\u{2067}x\\u{2069}"
        );
    }

    #[test]
    fn one_line_shows_line_breaks_as_escapes() {
        assert!(matches!(one_line("plain"), Cow::Borrowed(_)));
        assert_eq!(
            one_line("ok\n2026-01-01T00:00:00Z edge-2 err: forged"),
            "ok\\n2026-01-01T00:00:00Z edge-2 err: forged"
        );
    }

    #[test]
    fn json_output_escapes_what_a_terminal_acts_on_and_stays_the_same_json() {
        for text in [
            "del\u{7f}",
            "csi\u{9b}2J",
            "nel\u{85}",
            "rlo\u{202e}txt.exe",
            "esc\u{1b}]52;c;eA==\u{7}",
            "plain é ü 日本",
        ] {
            let value = serde_json::json!({"message": text});
            let json = serde_json::to_string_pretty(&value).expect("json");
            let shown = json_printable(&json);
            assert!(!shown.chars().any(acts_on), "{shown:?}");
            let back: serde_json::Value = serde_json::from_str(&shown).expect("still JSON");
            assert_eq!(back, value, "{shown}");
        }
    }

    #[test]
    fn yaml_output_already_escapes_control_characters() {
        for text in [
            "del\u{7f}",
            "csi\u{9b}2J",
            "nel\u{85}",
            "esc\u{1b}]52;c;eA==\u{7}\r",
        ] {
            let value = serde_json::json!({"message": text});
            let yaml = serde_yaml::to_string(&value).expect("yaml");
            assert!(
                !yaml.chars().any(|c| c.is_control() && c != '\n'),
                "{yaml:?}"
            );
            let back: serde_json::Value = serde_yaml::from_str(&yaml).expect("still YAML");
            assert_eq!(back, value, "{yaml}");
        }
    }

    #[test]
    fn columns_are_flush_left_and_aligned() {
        let text = columns(
            ["NAME", "PRESENCE"],
            vec![
                ["edge-1".into(), "online".into()],
                ["a".into(), "offline".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(lines[1].starts_with("edge-1"), "{text}");
        let column = lines[0].find("PRESENCE").expect("header");
        assert_eq!(lines[1].find("online"), Some(column), "{text}");
        assert_eq!(lines[2].find("offline"), Some(column), "{text}");
        assert!(lines.iter().all(|l| l == &l.trim_end()), "{text}");
    }

    #[test]
    fn fields_are_aligned_after_the_longest_name() {
        assert_eq!(
            fields(&[("ID", "c1".into()), ("STATE", "pending".into())]),
            "ID:    c1\nSTATE: pending"
        );
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        let now = DateTime::from_timestamp(1_000_000, 0).expect("valid");
        let ago = |secs| age(now, now - TimeDelta::seconds(secs));
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(59), "59s");
        assert_eq!(ago(60), "1m");
        assert_eq!(ago(3599), "59m");
        assert_eq!(ago(7200), "2h");
        assert_eq!(ago(3 * 86_400 + 5), "3d");
        assert_eq!(ago(-30), "0s", "clock skew shows as now");
        assert_eq!(age_or_none(now, None), "<none>");
    }

    #[test]
    fn byte_sizes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(8 * 1024 * 1024 * 1024), "8.0 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn labels_render_like_kubectl() {
        let mut l = Labels::new();
        assert_eq!(labels(&l), "<none>");
        l.insert("site".into(), "berlin".into());
        l.insert("env".into(), "prod".into());
        assert_eq!(labels(&l), "env=prod,site=berlin");
    }

    #[test]
    fn json_and_yaml_are_the_objects_themselves() {
        let value = serde_json::json!({"name": "edge-1"});
        // Table output is drawn by the caller; json/yaml never call it.
        let never = |_: &serde_json::Value| -> String { panic!("not a table") };
        let json = serde_json::to_string_pretty(&value).expect("json");
        assert!(json.contains("\"name\": \"edge-1\""));
        print(OutputFormat::Json, &value, never).expect("prints json");
        print(OutputFormat::Yaml, &value, never).expect("prints yaml");
    }
}
