//! The netplan applier, for devices with netplan and its renderer
//! (systemd-networkd or NetworkManager) running: the document is written
//! to one file of `/etc/netplan` and `netplan apply` makes it so. The
//! snapshot is that file as it was; restoring writes it back (or removes
//! it) and applies again. The agent does the waiting and the way back
//! itself rather than through `netplan try`, which wants a terminal to
//! confirm on, and so that both appliers roll back the same way.

use std::path::PathBuf;

use tether_proto::network::NetworkPlan;

use super::{Applier, FileSnapshot, NetworkError, Snapshot};

/// netplan warns about files others can read: they may hold Wi-Fi keys.
const NETPLAN_FILE_MODE: u32 = 0o600;

pub struct NetplanApplier {
    /// The file the agent owns, e.g. `/etc/netplan/90-tether.yaml`.
    pub file: PathBuf,
    /// The netplan command, `netplan` on the PATH by default.
    pub command: PathBuf,
}

impl NetplanApplier {
    async fn netplan_apply(&self) -> Result<(), NetworkError> {
        let command = format!("{} apply", self.command.display());
        let output = tokio::process::Command::new(&self.command)
            .arg("apply")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| NetworkError::Spawn {
                command: command.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(NetworkError::Failed {
                command,
                message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }
}

impl Applier for NetplanApplier {
    fn name(&self) -> &'static str {
        "netplan"
    }

    async fn snapshot(&self, _plan: &NetworkPlan) -> Result<Snapshot, NetworkError> {
        Ok(Snapshot::Netplan {
            file: FileSnapshot::read(&self.file)?,
        })
    }

    async fn apply(&self, plan: &NetworkPlan) -> Result<(), NetworkError> {
        let yaml = serde_yaml::to_string(&plan.document).map_err(|e| NetworkError::Output {
            command: "the netplan document as YAML",
            message: e.to_string(),
        })?;
        FileSnapshot::Present(yaml).restore(&self.file, NETPLAN_FILE_MODE)?;
        self.netplan_apply().await
    }

    async fn restore(&self, snapshot: &Snapshot) -> Result<(), NetworkError> {
        let Snapshot::Netplan { file } = snapshot else {
            return Err(NetworkError::OtherApplier);
        };
        file.restore(&self.file, NETPLAN_FILE_MODE)?;
        self.netplan_apply().await
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn the_document_goes_to_its_file_and_the_snapshot_puts_the_old_one_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("90-tether.yaml");
        // `true` stands in for `netplan apply`, which needs a renderer running.
        let applier = NetplanApplier {
            file: file.clone(),
            command: "true".into(),
        };
        let plan = tether_proto::network::parse(
            "spec.network",
            &json!({"netplan": "network:\n  version: 2\n  ethernets:\n    eth0:\n      addresses: [10.0.0.2/24]\n"}),
        )
        .expect("valid");
        let snapshot = applier.snapshot(&plan).await.expect("snapshot");
        assert_eq!(
            snapshot,
            Snapshot::Netplan {
                file: FileSnapshot::Absent
            }
        );
        applier.apply(&plan).await.expect("applied");
        let written: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&file).expect("written")).expect("YAML");
        assert_eq!(written, plan.document);
        let mode = std::fs::metadata(&file).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        applier.restore(&snapshot).await.expect("restored");
        assert!(!file.exists(), "there was no file before");

        let failing = NetplanApplier {
            file,
            command: "false".into(),
        };
        let error = failing
            .apply(&plan)
            .await
            .expect_err("netplan apply failed");
        assert!(error.to_string().contains("false apply failed"), "{error}");
    }
}
