//! `tether approvals …`: registrations waiting under `MANUAL` policies.

use tether_proto::provisioning::{Approval, ApproveRequest, DenyRequest, RegistrationState};

use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat, printable};

const EXAMPLES: &str = "\
Examples:
  tether approvals list                 # those waiting
  tether approvals list --all
  tether approvals approve 0193a1f2-…   # reuses the device its serial names, or creates one
  tether approvals approve 0193a1f2-… --name line3-gateway
  tether approvals deny 0193a1f2-… --reason \"not one of ours\"";

/// Devices asking to register under a MANUAL policy.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum Approvals {
    /// List registrations with the facts each device sent.
    #[command(
        after_long_help = "Examples:\n  tether approvals list\n  tether approvals list --all -o json"
    )]
    List {
        /// Every registration, not only those waiting.
        #[arg(long)]
        all: bool,
    },
    /// Let a device register: it gets its certificate when it next asks.
    #[command(
        after_long_help = "Examples:\n  tether approvals approve 0193a1f2-…\n  tether approvals approve 0193a1f2-… --name line3-gateway"
    )]
    Approve {
        id: String,
        /// The new device's name [default: the policy's name and a random suffix].
        #[arg(long)]
        name: Option<String>,
    },
    /// Refuse a device: it stops with the reason when it next asks.
    #[command(
        after_long_help = "Examples:\n  tether approvals deny 0193a1f2-… --reason \"not one of ours\""
    )]
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

impl Approvals {
    pub fn description(&self) -> String {
        match self {
            Approvals::List { .. } => "list approvals".to_owned(),
            Approvals::Approve { id, .. } => format!("approve registration {id}"),
            Approvals::Deny { id, .. } => format!("deny registration {id}"),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        match self {
            Approvals::List { all } => {
                let approvals = client.list_approvals((!all).then_some("pending")).await?;
                if approvals.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!("No registrations {}.", if all { "yet" } else { "waiting" });
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &approvals, |a: &Vec<Approval>| table(a))?;
            }
            Approvals::Approve { id, name } => {
                let approval = client.approve(&id, &ApproveRequest { name }).await?;
                output::print(ctx.output, &approval, |a: &Approval| {
                    format!(
                        "registration {} approved as device/{}; it registers when it next asks",
                        a.id,
                        a.device.as_deref().unwrap_or("?")
                    )
                })?;
            }
            Approvals::Deny { id, reason } => {
                let approval = client.deny(&id, &DenyRequest { reason }).await?;
                output::print(ctx.output, &approval, |a: &Approval| {
                    format!("registration {} denied", a.id)
                })?;
            }
        }
        Ok(Outcome::Success)
    }
}

fn state(state: RegistrationState) -> &'static str {
    match state {
        RegistrationState::Pending => "pending",
        RegistrationState::Approved => "approved",
        RegistrationState::Denied => "denied",
        RegistrationState::Registered => "registered",
    }
}

/// The facts an operator decides by, as the device sent them (escaped:
/// a device wrote them).
fn facts(approval: &Approval) -> String {
    let facts = &approval.facts;
    let mut shown = Vec::new();
    if let Some(serial) = &facts.hardware_serial {
        shown.push(format!("serial={}", printable(serial)));
    }
    if let Some(hostname) = &facts.hostname {
        shown.push(format!("hostname={}", printable(hostname)));
    }
    if let Some((interface, mac)) = facts.macs.iter().next() {
        shown.push(format!("{}={}", printable(interface), printable(mac)));
    }
    if let Some(machine_id) = &facts.machine_id {
        shown.push(format!("machine-id={}", printable(machine_id)));
    }
    shown.join(" ")
}

fn table(approvals: &[Approval]) -> String {
    output::columns(
        ["ID", "POLICY", "STATE", "DEVICE", "FACTS", "ASKED"],
        approvals
            .iter()
            .map(|a| {
                [
                    a.id.clone(),
                    a.policy.clone(),
                    state(a.state).to_owned(),
                    a.device.clone().unwrap_or_else(|| "(new)".to_owned()),
                    facts(a),
                    output::timestamp(a.created_at),
                ]
            })
            .collect(),
    )
}
