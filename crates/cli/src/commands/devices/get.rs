use tether_proto::DeviceId;
use tether_proto::api::Device;
use tether_proto::desired::updates::HoldKind;
use tether_proto::host::{WatchdogMode, WatchdogState};

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether devices get edge-1
  tether devices get edge-1 -o yaml";

/// A value the agent reported, on one line (a line break in it could pass
/// for another fact or for tetherd's own lines), or `none`.
fn reported<'a>(value: Option<&'a str>, none: &'static str) -> std::borrow::Cow<'a, str> {
    value.map_or(none.into(), output::one_line)
}

/// The spec, whether the agent applied it, and what the agent reported.
fn spec_text(now: chrono::DateTime<chrono::Utc>, device: &Device) -> String {
    let version = device.spec_version.unwrap_or_default();
    let spec = device
        .spec
        .as_ref()
        .and_then(|spec| serde_json::to_string_pretty(spec).ok())
        .unwrap_or_else(|| "{}".to_owned());
    let state = match (&device.status, device.spec_in_sync) {
        (None, _) => "not reported by the agent yet".to_owned(),
        (Some(_), Some(true)) => "applied by the agent".to_owned(),
        (Some(status), _) if status.spec_version == version => {
            "applied by the agent with errors".to_owned()
        }
        (Some(status), _) => format!("the agent runs version {}", status.spec_version),
    };
    let mut text = format!("SPEC (version {version}, {state})\n{spec}");
    if let Some(status) = &device.status {
        for error in &status.errors {
            text.push_str(&format!(
                "\nERROR {}: {}",
                output::one_line(&error.path),
                output::one_line(&error.message)
            ));
        }
        let facts = &status.facts;
        let os = facts.os_release.as_ref().map(|os| os.pretty_name.as_str());
        text.push_str(&format!(
            "\n\nFACTS (reported {} ago)\nhostname: {}\nos: {}\nkernel: {}\ncpu: {} x {}\nmemory: {} bytes\nserial: {}\nmachine-id: {}",
            output::age(now, status.reported_at),
            reported(facts.hostname.as_deref(), "<unknown>"),
            reported(os, "<unknown>"),
            reported(facts.kernel.as_deref(), "<unknown>"),
            facts.cpu_cores,
            reported(facts.cpu_model.as_deref(), "<unknown>"),
            facts.memory_total_bytes,
            reported(facts.hardware_serial.as_deref(), "<none>"),
            reported(facts.machine_id.as_deref(), "<none>"),
        ));
        if let Some(kubernetes) = &facts.kubernetes {
            text.push_str(&format!(
                "\nkubernetes: {} mode, cluster {} at {}",
                kubernetes.mode,
                output::one_line(&kubernetes.cluster),
                reported(kubernetes.server.as_deref(), "<credentials unreadable>")
            ));
        }
        if let Some(boot) = &status.boot {
            let booted = boot
                .booted_at
                .map(|at| format!(" (booted {})", output::timestamp(at)))
                .unwrap_or_default();
            text.push_str(&format!("\nboot: {}{booted}", output::one_line(&boot.id)));
        }
        if let Some(watchdog) = &status.watchdog {
            let what = match (&watchdog.mode, &watchdog.device) {
                (WatchdogMode::Device, Some(device)) => output::one_line(device).into_owned(),
                (WatchdogMode::Device, None) => "a device".to_owned(),
                (WatchdogMode::Systemd, _) => "systemd".to_owned(),
            };
            text.push_str(&match (&watchdog.state, &watchdog.reason) {
                (WatchdogState::Feeding, _) => format!("\nwatchdog: feeding {what}"),
                (WatchdogState::Stopped, reason) => format!(
                    "\nWATCHDOG NOT FED ({what}): {}",
                    reported(reason.as_deref(), "no reason given")
                ),
            });
        }
        // Why rollouts pass the device over, as the agent reported it.
        for hold in &status.update_holds {
            let by = match (&hold.kind, &hold.name) {
                (HoldKind::Lock, Some(name)) => format!("lock {}", output::one_line(name)),
                (HoldKind::Lock, None) => "a lock".to_owned(),
                (HoldKind::Spec, _) => "the spec".to_owned(),
                (HoldKind::Window, _) => "its maintenance windows".to_owned(),
            };
            // Whose application took it (older agents do not say).
            let owner = hold
                .owner_uid
                .map(|uid| format!(" of uid {uid}"))
                .unwrap_or_default();
            let until = hold
                .until
                .map(|until| format!(" (until {})", output::timestamp(until)))
                .unwrap_or_default();
            text.push_str(&format!(
                "\nUPDATES HELD by {by}{owner}: {}{until}",
                output::one_line(&hold.reason)
            ));
        }
    }
    text
}

/// Show one device.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Get {
    /// The device's name.
    name: DeviceId,
}

impl Get {
    pub fn description(&self) -> String {
        format!("get device {:?}", self.name.as_str())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let device = ctx.client()?.get_device(self.name.as_str()).await?;
        let now = chrono::Utc::now();
        output::print(ctx.output, &device, |device: &Device| {
            format!(
                "{}\n\n{}",
                super::table(now, std::slice::from_ref(device)),
                spec_text(now, device)
            )
        })?;
        Ok(Outcome::Success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_facts_name_the_cluster_an_agent_manages() {
        let device: Device = serde_json::from_value(serde_json::json!({
            "name": "edge-1",
            "labels": {},
            "presence": "online",
            "enrolled": true,
            "lastSeen": null,
            "agentVersion": "0.1.0",
            "createdAt": "2026-12-01T00:00:00Z",
            "specVersion": 1,
            "status": {
                "specVersion": 1,
                "errors": [],
                "facts": {
                    "kubernetes": {"mode": "host", "cluster": "default", "server": "https://127.0.0.1:6443"}
                },
                "reportedAt": "2026-12-01T00:00:00Z"
            }
        }))
        .expect("a device as the API returns it");
        let now = chrono::Utc::now();
        assert!(
            spec_text(now, &device)
                .contains("\nkubernetes: host mode, cluster default at https://127.0.0.1:6443"),
            "{}",
            spec_text(now, &device)
        );
    }

    #[test]
    fn each_update_hold_is_a_line_saying_what_holds_the_device_and_until_when() {
        let device: Device = serde_json::from_value(serde_json::json!({
            "name": "press-1",
            "labels": {},
            "presence": "online",
            "enrolled": true,
            "lastSeen": null,
            "agentVersion": "0.1.0",
            "createdAt": "2026-12-01T00:00:00Z",
            "specVersion": 1,
            "status": {
                "specVersion": 1,
                "errors": [],
                "facts": {},
                "updateHolds": [
                    {"kind": "lock", "name": "plc-flash", "reason": "flashing\nthe PLC", "ownerUid": 1000},
                    {"kind": "lock", "name": "old", "reason": "an older agent's"},
                    {"kind": "window", "reason": "outside the maintenance windows", "until": "2026-12-04T02:00:00Z"}
                ],
                "reportedAt": "2026-12-01T00:00:00Z"
            }
        }))
        .expect("a device as the API returns it");
        let text = spec_text(chrono::Utc::now(), &device);
        assert!(
            text.contains("\nUPDATES HELD by lock plc-flash of uid 1000: flashing\\nthe PLC\n"),
            "{text}"
        );
        assert!(
            text.contains("\nUPDATES HELD by lock old: an older agent's\n"),
            "{text}"
        );
        assert!(
            text.contains("\nUPDATES HELD by its maintenance windows: outside the maintenance windows (until 2026-12-04"),
            "{text}"
        );
    }

    #[test]
    fn the_boot_and_a_stopped_watchdog_are_lines_of_their_own() {
        let device: Device = serde_json::from_value(serde_json::json!({
            "name": "edge-1",
            "labels": {},
            "presence": "online",
            "enrolled": true,
            "lastSeen": null,
            "agentVersion": "0.1.0",
            "createdAt": "2026-12-01T00:00:00Z",
            "specVersion": 1,
            "status": {
                "specVersion": 1,
                "errors": [],
                "facts": {},
                "boot": {"id": "boot-2", "bootedAt": "2026-12-03T10:00:00Z"},
                "watchdog": {"mode": "device", "device": "/dev/watchdog", "state": "stopped",
                             "reason": "the state directory cannot be written"},
                "reportedAt": "2026-12-03T10:01:00Z"
            }
        }))
        .expect("a device as the API returns it");
        let text = spec_text(chrono::Utc::now(), &device);
        assert!(text.contains("\nboot: boot-2 (booted 2026-12-03"), "{text}");
        assert!(
            text.contains(
                "\nWATCHDOG NOT FED (/dev/watchdog): the state directory cannot be written"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_line_break_in_what_the_agent_reported_adds_no_line() {
        let device: Device = serde_json::from_value(serde_json::json!({
            "name": "edge-1",
            "labels": {},
            "presence": "online",
            "enrolled": true,
            "lastSeen": null,
            "agentVersion": "0.1.0",
            "createdAt": "2026-12-01T00:00:00Z",
            "specVersion": 2,
            "status": {
                "specVersion": 1,
                "errors": [{"path": "$.x", "message": "bad\nSPEC (version 2, applied by the agent)"}],
                "facts": {"hostname": "edge\nos: Trusted OS"},
                "reportedAt": "2026-12-01T00:00:00Z"
            }
        }))
        .expect("a device as the API returns it");
        let text = spec_text(chrono::Utc::now(), &device);
        assert!(
            text.contains("\nERROR $.x: bad\\nSPEC (version 2, applied by the agent)\n"),
            "{text}"
        );
        assert!(
            text.contains("\nhostname: edge\\nos: Trusted OS\n"),
            "{text}"
        );
        assert!(text.contains("\nos: <unknown>\n"), "{text}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("SPEC")).count(),
            1,
            "{text}"
        );
    }
}
