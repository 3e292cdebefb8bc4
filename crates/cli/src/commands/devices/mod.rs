//! `tether devices …`: the device registry.

mod actions;
mod add;
mod delete;
mod enrollment_token;
mod get;
mod label;
mod list;
mod revoke;
mod shell_password;
mod summary;
mod update;
mod usage;

use chrono::{DateTime, Utc};
use tether_proto::api::{Device, EnrollmentToken};

use super::{CommandError, Context, Outcome};
use crate::output;

/// Register devices, list them, label them and enroll their agents.
#[derive(Debug, clap::Subcommand)]
pub enum Devices {
    Add(add::Add),
    List(list::List),
    Summary(summary::Summary),
    Get(get::Get),
    Label(label::Label),
    Update(update::Update),
    Delete(delete::Delete),
    Revoke(revoke::Revoke),
    ShellPassword(shell_password::ShellPassword),
    EnrollmentToken(enrollment_token::EnrollmentTokenCmd),
    Usage(usage::Usage),
    /// Enable or disable actions on a device.
    #[command(subcommand)]
    Actions(actions::Actions),
}

impl Devices {
    pub fn description(&self) -> String {
        match self {
            Devices::Add(cmd) => cmd.description(),
            Devices::List(cmd) => cmd.description(),
            Devices::Summary(cmd) => cmd.description(),
            Devices::Usage(cmd) => cmd.description(),
            Devices::Get(cmd) => cmd.description(),
            Devices::Label(cmd) => cmd.description(),
            Devices::Update(cmd) => cmd.description(),
            Devices::Delete(cmd) => cmd.description(),
            Devices::Revoke(cmd) => cmd.description(),
            Devices::ShellPassword(cmd) => cmd.description(),
            Devices::EnrollmentToken(cmd) => cmd.description(),
            Devices::Actions(cmd) => cmd.description(),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        match self {
            Devices::Add(cmd) => cmd.run(ctx).await,
            Devices::List(cmd) => cmd.run(ctx).await,
            Devices::Summary(cmd) => cmd.run(ctx).await,
            Devices::Usage(cmd) => cmd.run(ctx).await,
            Devices::Get(cmd) => cmd.run(ctx).await,
            Devices::Label(cmd) => cmd.run(ctx).await,
            Devices::Update(cmd) => cmd.run(ctx).await,
            Devices::Delete(cmd) => cmd.run(ctx).await,
            Devices::Revoke(cmd) => cmd.run(ctx).await,
            Devices::ShellPassword(cmd) => cmd.run(ctx).await,
            Devices::EnrollmentToken(cmd) => cmd.run(ctx).await,
            Devices::Actions(cmd) => cmd.run(ctx).await,
        }
    }
}

/// The device columns of `list`, `get` and `label`.
fn table(now: DateTime<Utc>, devices: &[Device]) -> String {
    output::columns(
        [
            "NAME",
            "PRESENCE",
            "ENROLLED",
            "AGENT",
            "LAST SEEN",
            "AGE",
            "LABELS",
        ],
        devices
            .iter()
            .map(|d| {
                [
                    d.name.clone(),
                    d.presence.as_str().to_owned(),
                    if d.enrolled { "yes" } else { "no" }.to_owned(),
                    d.agent_version
                        .clone()
                        .unwrap_or_else(|| "<none>".to_owned()),
                    output::age_or_none(now, d.last_seen),
                    output::age(now, d.created_at),
                    output::labels(&d.labels),
                ]
            })
            .collect(),
    )
}

/// How to join a Kubernetes cluster as the device with a fresh enrollment
/// token.
fn join_text(device: &str, enrollment: &EnrollmentToken) -> String {
    format!(
        "Join the Kubernetes cluster as device {device:?} with (kubectl's current context; one-time, expires {}):\n  {}",
        output::timestamp(enrollment.expires_at),
        enrollment.join_command,
    )
}

/// How to start the agent with a fresh enrollment token.
fn enrollment_text(device: &str, enrollment: &EnrollmentToken) -> String {
    format!(
        "Enrollment token for device {device:?} (one-time, expires {}):\n  {}\n\n\
         Start the agent on the device with:\n  {}",
        output::timestamp(enrollment.expires_at),
        enrollment.token,
        enrollment.agent_command,
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use tether_proto::Presence;

    use super::*;

    fn device(name: &str, presence: Presence) -> Device {
        Device {
            name: name.into(),
            display_name: None,
            policy: None,
            labels: [("site".to_owned(), "berlin".to_owned())].into(),
            presence,
            enrolled: presence == Presence::Online,
            last_seen: None,
            agent_version: None,
            capabilities: vec![],
            created_at: DateTime::from_timestamp(1_000_000, 0).expect("valid"),
            ingest: None,
            spec: None,
            spec_version: None,
            status: None,
            spec_in_sync: None,
        }
    }

    #[test]
    fn the_device_table_has_one_row_per_device() {
        let mut online = device("edge-1", Presence::Online);
        let now = online.created_at + TimeDelta::hours(2);
        online.last_seen = Some(now - TimeDelta::seconds(5));
        online.agent_version = Some("0.1.0".into());
        let text = table(now, &[online, device("edge-2", Presence::Offline)]);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            vec![
                vec![
                    "NAME", "PRESENCE", "ENROLLED", "AGENT", "LAST", "SEEN", "AGE", "LABELS"
                ],
                vec![
                    "edge-1",
                    "online",
                    "yes",
                    "0.1.0",
                    "5s",
                    "2h",
                    "site=berlin"
                ],
                vec![
                    "edge-2",
                    "offline",
                    "no",
                    "<none>",
                    "<none>",
                    "2h",
                    "site=berlin"
                ],
            ]
        );
    }

    #[test]
    fn the_enrollment_text_gives_the_token_and_the_agent_command() {
        let enrollment = EnrollmentToken {
            token: "tok".into(),
            expires_at: DateTime::from_timestamp(0, 0).expect("valid"),
            ca_sha256: "ab".into(),
            agent_command: "tether-agent --server https://h:8443 --enroll-token tok --ca-sha256 ab"
                .into(),
            join_command: "echo Q0E= | base64 -d | curl … | kubectl apply -f -".into(),
        };
        let join = join_text("edge-1", &enrollment);
        assert!(
            join.ends_with("\n  echo Q0E= | base64 -d | curl … | kubectl apply -f -"),
            "{join}"
        );
        let text = enrollment_text("edge-1", &enrollment);
        assert!(text.contains("expires 1970-01-01T00:00:00Z"), "{text}");
        assert!(text.contains("\n  tok\n"), "{text}");
        assert!(text.ends_with(
            "\n  tether-agent --server https://h:8443 --enroll-token tok --ca-sha256 ab"
        ));
    }
}
