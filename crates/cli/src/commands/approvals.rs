//! `tether approvals …`: registrations waiting under `MANUAL` policies.

use tether_proto::provisioning::{Approval, ApproveRequest, DenyRequest, RegistrationState};

use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat, printable};

const EXAMPLES: &str = "\
Examples:
  tether approvals list                 # those waiting
  tether approvals list --all
  tether approvals get 0193a1f2-…       # the facts, the matched device and why it waits
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
    /// Show one registration: every fact, the device it matched and
    /// whether that device is online, and why it waits.
    #[command(
        after_long_help = "Examples:\n  tether approvals get 0193a1f2-…\n  tether approvals get 0193a1f2-… -o json"
    )]
    Get { id: String },
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
            Approvals::Get { id } => format!("show registration {id}"),
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
                output::print(ctx.output, &approvals, |a: &Vec<Approval>| {
                    let warnings: Vec<String> = a.iter().filter_map(takeover_warning).collect();
                    [table(a)]
                        .into_iter()
                        .chain(warnings)
                        .collect::<Vec<_>>()
                        .join("\n")
                })?;
            }
            Approvals::Get { id } => {
                let approval = client.get_approval(&id).await?;
                output::print(ctx.output, &approval, describe)?;
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
    // Every interface: two boards of one image differ in their MACs.
    for (interface, mac) in &facts.macs {
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
                    matched(a),
                    facts(a),
                    output::timestamp(a.created_at),
                ]
            })
            .collect(),
    )
}

/// The device a registration became or matched, and, while it waits,
/// whether that device is online.
fn matched(approval: &Approval) -> String {
    match (&approval.device, approval.device_online) {
        (None, _) => "(new)".to_owned(),
        (Some(device), None) => device.clone(),
        (Some(device), Some(true)) => format!("{device} (online)"),
        (Some(device), Some(false)) => format!("{device} (offline)"),
    }
}

/// Approving a request that matched an online device moves that device's
/// credential to the hardware that asked: said before anyone approves.
fn takeover_warning(approval: &Approval) -> Option<String> {
    let device = approval.device.as_deref()?;
    (approval.state == RegistrationState::Pending && approval.device_online == Some(true)).then(
        || {
            format!(
                "WARNING: approving {} gives device/{device}'s credential to the hardware that asked; {device} is online now, and its current media loses its credential",
                approval.id
            )
        },
    )
}

fn describe(approval: &Approval) -> String {
    let mut lines = vec![
        format!("ID:        {}", approval.id),
        format!("Policy:    {}", approval.policy),
        format!("State:     {}", state(approval.state)),
        format!("Device:    {}", matched(approval)),
        format!("Facts:     {}", facts(approval)),
        format!(
            "Key:       {}",
            approval.key_id.as_deref().unwrap_or("(not recorded)")
        ),
        format!("Asked:     {}", output::timestamp(approval.created_at)),
    ];
    if let Some(reason) = &approval.reason {
        lines.push(format!("Reason:    {}", printable(reason)));
    }
    if let (Some(at), Some(by)) = (approval.decided_at, &approval.decided_by) {
        lines.push(format!(
            "Decided:   {} by {}",
            output::timestamp(at),
            printable(by)
        ));
    }
    lines.extend(takeover_warning(approval));
    lines.join("\n")
}
