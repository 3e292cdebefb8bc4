use tether_proto::DeviceId;
use tether_proto::api::Device;

use crate::commands::{CommandError, Context, Outcome};
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether devices update edge-1 --spec '{\"metricsConfig\": {\"intervalSeconds\": 30}}'
  tether devices update edge-1 --update-mask spec.loggingConfig \\
      --spec '{\"loggingConfig\": {\"priority\": 4, \"units\": [\"ssh.service\"]}}'
  tether devices update edge-1 --update-mask spec.loggingConfig.priority \\
      --spec '{\"loggingConfig\": {\"priority\": 6}}' --if-version 3

Sections: loggingConfig {enableJournalExport, priority 0-7, units},
metricsConfig {intervalSeconds 1-86400}, budgets {actions, metrics, logs,
spoolReplay: bytes a day}. `tether devices get NAME` shows the spec, its
version and whether the agent applied it.";

/// Update a device's spec (its desired configuration); the agent applies
/// it without restarting.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Update {
    /// The device's name.
    name: DeviceId,
    /// The spec as a JSON object of sections. Without --update-mask it
    /// replaces the whole spec.
    #[arg(long, value_parser = parse_spec)]
    spec: serde_json::Value,
    /// Only these fields, comma-separated (spec.loggingConfig,
    /// spec.loggingConfig.priority): set from --spec, or removed if --spec
    /// lacks them; the rest of the spec stays.
    #[arg(long)]
    update_mask: Option<String>,
    /// Update only if the spec is still at this version (the specVersion
    /// `devices get` showed); refused if someone changed it meanwhile.
    #[arg(long)]
    if_version: Option<u64>,
}

fn parse_spec(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str(text) {
        Ok(spec @ serde_json::Value::Object(_)) => Ok(spec),
        Ok(_) => Err("the spec must be a JSON object of sections, e.g. '{\"metricsConfig\": {\"intervalSeconds\": 30}}'".into()),
        Err(e) => Err(format!("not JSON ({e}); quote the spec in single quotes")),
    }
}

impl Update {
    pub fn description(&self) -> String {
        format!("update the spec of device {:?}", self.name.as_str())
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let device = ctx
            .client()?
            .update_device_spec(
                self.name.as_str(),
                &self.spec,
                self.update_mask.as_deref(),
                self.if_version,
            )
            .await?;
        output::print(ctx.output, &device, |device: &Device| {
            format!(
                "device/{} spec at version {}",
                device.name,
                device.spec_version.unwrap_or_default()
            )
        })?;
        Ok(Outcome::Success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_must_be_a_json_object() {
        assert!(parse_spec(r#"{"budgets": {"logs": 5}}"#).is_ok());
        assert!(
            parse_spec("[1]")
                .expect_err("not an object")
                .contains("JSON object")
        );
        assert!(
            parse_spec("{nope")
                .expect_err("not JSON")
                .contains("not JSON")
        );
    }
}
