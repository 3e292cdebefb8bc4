//! `tether audit`: who changed what through the API.

use chrono::{DateTime, Utc};
use tether_proto::api::AuditEntry;

use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  tether audit
  tether audit --limit 200 -o json";

/// List the audit log, newest first: every change made through the API,
/// every login and enrollment attempt, and every call a role refused.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Audit {
    /// At most this many entries.
    #[arg(long, default_value_t = 50, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    limit: usize,
}

impl Audit {
    pub fn description(&self) -> String {
        "list the audit log".to_owned()
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let entries = ctx.client()?.audit(self.limit).await?;
        if entries.is_empty() && ctx.output == OutputFormat::Table {
            eprintln!("The audit log is empty.");
            return Ok(Outcome::Success);
        }
        let now = Utc::now();
        output::print(ctx.output, &entries, |entries: &Vec<AuditEntry>| {
            table(now, entries)
        })?;
        Ok(Outcome::Success)
    }
}

fn table(now: DateTime<Utc>, entries: &[AuditEntry]) -> String {
    output::columns(
        ["AGE", "ACTOR", "METHOD", "PATH", "STATUS", "DETAIL"],
        entries
            .iter()
            .map(|e| {
                [
                    output::age(now, e.at),
                    e.actor.clone(),
                    e.method.clone(),
                    e.path.clone(),
                    e.status.to_string(),
                    e.detail.as_ref().map(detail).unwrap_or_default(),
                ]
            })
            .collect(),
    )
}

/// A record's detail as `key=value` pairs (a tunnel's kind, target and
/// bytes), by key.
fn detail(detail: &serde_json::Value) -> String {
    match detail.as_object() {
        Some(fields) => fields
            .iter()
            .map(|(key, value)| match value {
                serde_json::Value::String(text) => format!("{key}={text}"),
                other => format!("{key}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn the_audit_table_shows_who_did_what() {
        let at = DateTime::from_timestamp(1_000_000, 0).expect("valid");
        let entry = AuditEntry {
            at,
            actor: "admin".into(),
            method: "DELETE".into(),
            path: "/api/v1/devices/edge-1".into(),
            status: 204,
            detail: None,
        };
        let tunnel = AuditEntry {
            method: "TUNNEL".into(),
            status: 101,
            detail: Some(serde_json::json!({"kind": "exec", "bytesToDevice": 9})),
            ..entry.clone()
        };
        let rendered = table(at + TimeDelta::seconds(90), &[entry, tunnel]);
        assert!(rendered.contains("bytesToDevice=9 kind=exec"), "{rendered}");
        assert!(rendered.contains("ACTOR"), "{rendered}");
        assert!(rendered.contains("admin"), "{rendered}");
        assert!(rendered.contains("/api/v1/devices/edge-1"), "{rendered}");
        assert!(rendered.contains("204"), "{rendered}");
        assert!(rendered.contains("1m"), "{rendered}");
    }
}
