//! Rebooting or powering off the device on an operator's request (the
//! `reboot` and `shutdown` actions): guarded by a one-time authorization id
//! like `restart-k3s`, refused while applications hold update locks unless
//! forced, the reason recorded.
//!
//! The action is answered first and the command runs [`PowerConfig::delay`]
//! later: once the machine goes down nothing answers, and the operator
//! must see that the request was taken (and why it may be refused) before
//! that. The command is an argv, never a shell, and configurable, so tests
//! watch it run without the machine going down.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use crate::actions::Answer;
use crate::authorization::{AuthorizationError, AuthorizationGuard};
use crate::self_update::ActionGate;
use crate::self_update::gate::PowerHold;
use crate::updates::UpdateLocks;

/// What `reboot` runs when no command is configured.
pub const DEFAULT_REBOOT_COMMAND: &str = "systemctl reboot";
/// What `shutdown` runs when no command is configured.
pub const DEFAULT_SHUTDOWN_COMMAND: &str = "systemctl poweroff";
/// Between the answer and the command: time for the answer to leave.
pub const DEFAULT_DELAY: Duration = Duration::from_secs(3);
/// Longest `reason`, in bytes.
pub const MAX_REASON_BYTES: usize = 256;

/// Which way the device goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    Shutdown,
}

impl PowerAction {
    pub fn name(self) -> &'static str {
        match self {
            PowerAction::Reboot => "reboot",
            PowerAction::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PowerConfig {
    /// The argv `reboot` runs; the first word is the program.
    pub reboot: Vec<String>,
    /// The argv `shutdown` runs.
    pub shutdown: Vec<String>,
    pub delay: Duration,
}

impl PowerConfig {
    fn command(&self, action: PowerAction) -> &[String] {
        match action {
            PowerAction::Reboot => &self.reboot,
            PowerAction::Shutdown => &self.shutdown,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("{action} needs an authorizationId: request one with the get-authorization-id action")]
    MissingAuthorization { action: &'static str },
    #[error(transparent)]
    Authorization(#[from] AuthorizationError),
    #[error("reason must say why in 1 to {MAX_REASON_BYTES} bytes; it is recorded")]
    BadReason,
    #[error(
        "update locks are held: {locks}; {action} would interrupt them. Wait until they are released, or send force: true to {action} anyway"
    )]
    Locked { action: &'static str, locks: String },
    #[error("the {action} command is empty: set --{action}-command")]
    NoCommand { action: &'static str },
}

impl PowerError {
    pub fn status_code(&self) -> u16 {
        match self {
            PowerError::MissingAuthorization { .. } | PowerError::Authorization(_) => 401,
            PowerError::BadReason => 400,
            PowerError::Locked { .. } => 409,
            PowerError::NoCommand { .. } => 500,
        }
    }
}

/// What the power actions need: their commands, the update locks that
/// hold them back, and the self-update's gate, which they keep busy until
/// their command has run (review L5).
#[derive(Clone)]
pub struct Power {
    pub config: PowerConfig,
    pub locks: Arc<UpdateLocks>,
    pub gate: ActionGate,
}

impl std::fmt::Debug for Power {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Power")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Power {
    /// Checks the request, spends its authorization id, schedules the
    /// command after the delay and answers. Every refusal comes before the
    /// id is spent, so a request refused for a lock can be sent again with
    /// `force` and the same id.
    pub fn request(
        &self,
        action: PowerAction,
        input: &Value,
        guard: &AuthorizationGuard,
    ) -> Result<Answer, PowerError> {
        let name = action.name();
        let id = input
            .get("authorizationId")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or(PowerError::MissingAuthorization { action: name })?;
        let reason = input
            .get("reason")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|reason| !reason.is_empty() && reason.len() <= MAX_REASON_BYTES)
            .ok_or(PowerError::BadReason)?
            .to_owned();
        let force = input.get("force").and_then(Value::as_bool).unwrap_or(false);
        let command = self.config.command(action).to_vec();
        if command.is_empty() {
            return Err(PowerError::NoCommand { action: name });
        }
        guard.check(id)?;
        let held = self.locks.held(Utc::now());
        if !held.is_empty() && !force {
            let locks = held
                .iter()
                .map(|(lock, held)| format!("{lock} ({})", held.reason))
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(
                action = name,
                reason,
                locks,
                "{name} refused: update locks are held"
            );
            return Err(PowerError::Locked {
                action: name,
                locks,
            });
        }
        guard.consume(id)?;
        let overridden: Vec<&String> = held.keys().collect();
        let runs_at =
            Utc::now() + chrono::TimeDelta::from_std(self.config.delay).unwrap_or_default();
        tracing::warn!(
            action = name,
            reason,
            forced = force,
            overridden_locks = ?overridden,
            command = ?command,
            "{name} requested: running the command in {} s",
            self.config.delay.as_secs_f64()
        );
        // Taken while this action runs, so no swap slips in between: a
        // self-update's exec would drop the command.
        let hold = self.gate.hold_power();
        tokio::spawn(run_later(name, command.clone(), self.config.delay, hold));
        Ok(json!({
            "action": name,
            "reason": reason,
            "forced": force,
            "overriddenLocks": overridden,
            "command": command,
            "runsAt": runs_at,
        })
        .into())
    }
}

/// Runs `command` after `delay`, the self-update held back until it has
/// run. Its failure can only be logged: the action was answered already.
async fn run_later(action: &'static str, command: Vec<String>, delay: Duration, _hold: PowerHold) {
    tokio::time::sleep(delay).await;
    let Some((program, arguments)) = command.split_first() else {
        return;
    };
    tracing::warn!(action, command = ?command, "running the {action} command");
    let output = tokio::process::Command::new(program)
        .args(arguments)
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match output {
        Ok(output) if output.status.success() => {
            tracing::info!(action, "the {action} command succeeded");
        }
        Ok(output) => tracing::error!(
            action,
            status = %output.status,
            stderr = %String::from_utf8_lossy(&output.stderr).trim(),
            "the {action} command failed; the device stays up"
        ),
        Err(error) => tracing::error!(
            action,
            program,
            %error,
            "cannot run the {action} command; the device stays up"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::updates::TakeLock;

    fn power(dir: &std::path::Path, marker: &std::path::Path) -> Power {
        let touch = vec!["touch".to_owned(), marker.display().to_string()];
        Power {
            config: PowerConfig {
                reboot: touch.clone(),
                shutdown: touch,
                delay: Duration::from_millis(10),
            },
            locks: Arc::new(UpdateLocks::load(dir)),
            gate: ActionGate::default(),
        }
    }

    async fn wait_for(path: &std::path::Path) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the command never ran"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_lock_refuses_with_409_naming_it_and_keeps_the_id_for_a_forced_retry() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("rebooted");
        let power = power(dir.path(), &marker);
        power
            .locks
            .take(
                "flash",
                TakeLock {
                    reason: "flashing the PLC".into(),
                    ttl_seconds: None,
                },
                1000,
                Utc::now(),
            )
            .expect("locked");
        let guard = AuthorizationGuard::default();
        let id = guard.issue().id;
        let input = json!({"authorizationId": id, "reason": "kernel update"});
        let refused = power
            .request(PowerAction::Reboot, &input, &guard)
            .expect_err("locked");
        assert_eq!(refused.status_code(), 409);
        let message = refused.to_string();
        assert!(message.contains("flash (flashing the PLC)"), "{message}");
        assert!(message.contains("force: true"), "{message}");

        let forced = json!({"authorizationId": id, "reason": "kernel update", "force": true});
        let answer = power
            .request(PowerAction::Reboot, &forced, &guard)
            .expect("forced");
        assert_eq!(answer.status_code, 200);
        assert_eq!(answer.response["forced"], true);
        assert_eq!(answer.response["reason"], "kernel update");
        assert_eq!(answer.response["overriddenLocks"], json!(["flash"]));
        wait_for(&marker).await;
        let again = power
            .request(PowerAction::Reboot, &forced, &guard)
            .expect_err("used");
        assert_eq!(again.status_code(), 401);
    }

    #[tokio::test]
    async fn a_self_update_waits_until_the_power_command_has_run() {
        // Review L5: the command runs seconds after the answer; a swap's
        // exec between the two would drop it.
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("rebooted");
        let mut power = power(dir.path(), &marker);
        power.config.delay = Duration::from_millis(300);
        let guard = AuthorizationGuard::default();
        let input = json!({"authorizationId": guard.issue().id, "reason": "kernel update"});
        power
            .request(PowerAction::Reboot, &input, &guard)
            .expect("answered");
        power.gate.close();
        assert_eq!(power.gate.busy(), 1, "the command is pending");
        tokio::time::timeout(Duration::from_secs(10), power.gate.until_idle())
            .await
            .expect("idle once the command ran");
        assert!(marker.exists(), "the swap waited for the command");
    }

    #[tokio::test]
    async fn no_id_or_an_unknown_one_is_401_and_a_bad_reason_400_without_spending_the_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("off");
        let power = power(dir.path(), &marker);
        let guard = AuthorizationGuard::default();
        let refused = power
            .request(PowerAction::Shutdown, &json!({"reason": "r"}), &guard)
            .expect_err("no id");
        assert_eq!(refused.status_code(), 401);
        assert!(refused.to_string().contains("get-authorization-id"));
        let refused = power
            .request(
                PowerAction::Shutdown,
                &json!({"authorizationId": "nope", "reason": "r"}),
                &guard,
            )
            .expect_err("unknown");
        assert_eq!(refused.status_code(), 401);
        let id = guard.issue().id;
        for reason in [json!("  "), json!("é".repeat(129)), Value::Null] {
            let refused = power
                .request(
                    PowerAction::Shutdown,
                    &json!({"authorizationId": id, "reason": reason}),
                    &guard,
                )
                .expect_err("bad reason");
            assert_eq!(refused.status_code(), 400, "{reason}");
        }
        guard.check(&id).expect("still unspent");
        assert!(!marker.exists());
    }
}
