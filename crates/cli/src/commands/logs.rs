//! `tether logs DEVICE` / `tether logs -l SELECTOR`: stored log lines
//! (`--archival`, the default) or live ones from now (`--follow`).

use std::io::Write;

use chrono::SecondsFormat;
use tether_proto::DeviceId;
use tether_proto::api::LogEntry;

use super::{CommandError, Context, Outcome};
use crate::labels::Selector;
use crate::output::OutputFormat;

const EXAMPLES: &str = "\
Examples:
  tether logs edge-1 --follow
  tether logs edge-1 --archival --since 60
  tether logs edge-1 --since 1h --priority err --unit sshd.service
  tether logs edge-1 --since 2026-12-02T06:00:00Z --until 2026-12-02T07:00:00Z --grep timeout
  tether logs -l site=berlin --follow -o json

--since and --until take seconds ago (60), a duration ago (90s, 15m, 1h,
7d) or RFC 3339, judged by tetherd's clock. -o json prints one JSON object
per line.";

/// Show a device's logs: stored ones, or live ones from now with --follow.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Logs {
    /// The device's name (or use -l).
    #[arg(required_unless_present = "selector", conflicts_with = "selector")]
    device: Option<DeviceId>,
    /// The devices whose labels match, e.g. site=berlin,tier!=test.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    selector: Option<Selector>,
    /// Lines as they arrive, from now on, until interrupted.
    #[arg(short = 'f', long, conflicts_with_all = ["archival", "since", "until", "limit"])]
    follow: bool,
    /// Stored lines (the default).
    #[arg(long)]
    archival: bool,
    /// Stored lines from this moment on [default: 1h].
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Stored lines before this moment [default: now].
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// This priority and more severe: 0–7 or emerg, alert, crit, err,
    /// warning, notice, info, debug.
    #[arg(short = 'p', long, value_name = "PRIORITY")]
    priority: Option<String>,
    /// Only lines of this unit (systemd unit, syslog tag or file); repeat
    /// for several.
    #[arg(short = 'u', long = "unit", value_name = "UNIT")]
    units: Vec<String>,
    /// Only lines whose message contains this text (case-sensitive).
    #[arg(long, value_name = "TEXT")]
    grep: Option<String>,
    /// At most this many stored lines.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    limit: Option<usize>,
}

/// Lines per page read from the archive.
const PAGE_SIZE: usize = 1000;

impl Logs {
    pub fn description(&self) -> String {
        let whose = match (&self.device, &self.selector) {
            (Some(device), _) => format!("device {:?}", device.as_str()),
            (None, Some(selector)) => format!("devices {:?}", selector.to_query()),
            (None, None) => "devices".to_owned(),
        };
        if self.follow {
            format!("follow the logs of {whose}")
        } else {
            format!("read the logs of {whose}")
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        if ctx.output == OutputFormat::Yaml {
            return Err(CommandError::Usage(
                "logs print text or, with -o json, one JSON object per line; not YAML".into(),
            ));
        }
        let client = ctx.client()?;
        let mut query = self.filter_query();
        let mut path: Vec<&str> = match &self.device {
            Some(device) => vec!["devices", device.as_str(), "logs"],
            None => vec!["logs"],
        };
        let show_device = self.device.is_none();
        let mut out = std::io::stdout().lock();
        if self.follow {
            path.push("follow");
            let mut stream = client.follow_logs(&path, &query).await?;
            while let Some(entry) = stream.next().await? {
                print(&mut out, ctx.output, show_device, &entry)?;
                out.flush().map_err(CommandError::Write)?;
            }
            return Ok(Outcome::Success);
        }
        if let Some(since) = &self.since {
            query.push(("since", since.clone()));
        }
        if let Some(until) = &self.until {
            query.push(("until", until.clone()));
        }
        let mut printed = 0;
        let mut next: Option<String> = None;
        loop {
            let wanted = self
                .limit
                .map_or(PAGE_SIZE, |limit| (limit - printed).min(PAGE_SIZE));
            let mut page_query = query.clone();
            page_query.push(("limit", wanted.to_string()));
            if let Some(token) = next.take() {
                page_query.push(("continue", token));
            }
            let page = client.logs_page(&path, &page_query).await?;
            for entry in &page.items {
                print(&mut out, ctx.output, show_device, entry)?;
            }
            printed += page.items.len();
            match page.continue_token {
                Some(token) if self.limit.is_none_or(|limit| printed < limit) => next = Some(token),
                _ => break,
            }
        }
        if printed == 0 && ctx.output == OutputFormat::Table {
            eprintln!("No log lines in that window.");
        }
        Ok(Outcome::Success)
    }

    fn filter_query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(selector) = &self.selector {
            query.push(("labelSelector", selector.to_query()));
        }
        if let Some(priority) = &self.priority {
            query.push(("priority", priority.clone()));
        }
        if !self.units.is_empty() {
            query.push(("unit", self.units.join(",")));
        }
        if let Some(grep) = &self.grep {
            query.push(("grep", grep.clone()));
        }
        query
    }
}

fn print(
    out: &mut impl Write,
    format: OutputFormat,
    show_device: bool,
    entry: &LogEntry,
) -> Result<(), CommandError> {
    let line = match format {
        OutputFormat::Json => {
            let json = serde_json::to_string(entry).unwrap_or_default();
            crate::output::json_printable(&json).into_owned()
        }
        _ => crate::output::printable(&text(entry, show_device)).into_owned(),
    };
    writeln!(out, "{line}").map_err(CommandError::Write)
}

/// `TIME PRIORITY UNIT: MESSAGE`, with the device first when several are
/// shown; one line whatever the device sent ([`crate::output::one_line`]).
fn text(entry: &LogEntry, show_device: bool) -> String {
    let at = entry.at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let priority = tether_proto::priority::name(entry.priority).unwrap_or("?");
    let unit = if entry.unit.is_empty() {
        "-".into()
    } else {
        crate::output::one_line(&entry.unit)
    };
    let message = crate::output::one_line(&entry.message);
    if show_device {
        format!("{at} {} {priority} {unit}: {message}", entry.device)
    } else {
        format!("{at} {priority} {unit}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_shows_time_priority_unit_and_message() {
        let entry = LogEntry {
            device: "edge-1".into(),
            pos: 7,
            at: "2026-12-02T06:00:00.5Z".parse().expect("valid"),
            priority: 3,
            unit: "sshd.service".into(),
            message: "Connection closed".into(),
            fields: Default::default(),
        };
        assert_eq!(
            text(&entry, false),
            "2026-12-02T06:00:00.500Z err sshd.service: Connection closed"
        );
        assert_eq!(
            text(&entry, true),
            "2026-12-02T06:00:00.500Z edge-1 err sshd.service: Connection closed"
        );
    }

    #[test]
    fn a_devices_control_characters_are_escaped_and_json_lines_stay_json() {
        let entry = LogEntry {
            device: "edge-1".into(),
            pos: 7,
            at: "2026-12-02T06:00:00.5Z".parse().expect("valid"),
            priority: 3,
            unit: "evil\u{9b}2J".into(),
            message: "gone\u{7f}\u{1b}]52;c;eA==\u{7}\u{202e}txt.exe".into(),
            fields: Default::default(),
        };
        let mut json = Vec::new();
        print(&mut json, OutputFormat::Json, false, &entry).expect("printed");
        let json = String::from_utf8(json).expect("UTF-8");
        assert!(
            !json.contains(['\u{7f}', '\u{9b}', '\u{1b}', '\u{202e}']),
            "{json:?}"
        );
        let back: LogEntry = serde_json::from_str(&json).expect("one JSON object");
        assert_eq!(back.message, entry.message);
        assert_eq!(back.unit, entry.unit);

        let forging = LogEntry {
            message: "ok\n2026-12-02T06:00:01.000Z edge-2 err sshd.service: forged".into(),
            ..entry.clone()
        };
        let mut forged = Vec::new();
        print(&mut forged, OutputFormat::Table, true, &forging).expect("printed");
        assert_eq!(
            String::from_utf8(forged).expect("UTF-8"),
            "2026-12-02T06:00:00.500Z edge-1 err evil\\u{9b}2J: ok\\n2026-12-02T06:00:01.000Z edge-2 err sshd.service: forged\n",
            "one line per log line"
        );

        let mut text = Vec::new();
        print(&mut text, OutputFormat::Table, false, &entry).expect("printed");
        assert_eq!(
            String::from_utf8(text).expect("UTF-8"),
            "2026-12-02T06:00:00.500Z err evil\\u{9b}2J: gone\\u{7f}\\u{1b}]52;c;eA==\\u{7}\\u{202e}txt.exe\n"
        );
    }
}
