//! The update guard: the previous (known good) binary, started detached
//! (`tether-agent update-guard`, in a session of its own) just before the
//! agent execs a new binary. It watches the trial record; if the new agent
//! has not committed by the deadline it puts the previous binary back,
//! records why, kills the new agent, and — unless systemd runs the agent
//! (`INVOCATION_ID` set: its `Restart=` starts the restored binary) —
//! execs the previous binary with the agent's original arguments.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chrono::Utc;

use super::failures::{Failure, FailuresFile};
use super::swap;
use super::trial::{GuardStep, TrialFile, guard_step};

/// The hidden subcommand that runs the guard.
pub const SUBCOMMAND: &str = "update-guard";
/// How often the guard looks at the trial record.
const POLL: Duration = Duration::from_millis(200);

/// What the guard is told on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardArgs {
    pub state_dir: PathBuf,
    /// The agent on trial (the exec keeps the pid).
    pub pid: u32,
    /// The agent's arguments after the program name, to run it again.
    pub agent_args: Vec<OsString>,
}

impl GuardArgs {
    /// The guard's arguments after the subcommand.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--state-dir".into(),
            self.state_dir.clone().into(),
            "--pid".into(),
            self.pid.to_string().into(),
            "--".into(),
        ];
        args.extend(self.agent_args.iter().cloned());
        args
    }

    /// Parses what [`Self::to_args`] wrote.
    pub fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Self, String> {
        let usage = "usage: tether-agent update-guard --state-dir DIR --pid PID -- AGENT_ARGS...";
        let mut state_dir = None;
        let mut pid = None;
        loop {
            let arg = args.next().ok_or(usage)?;
            match arg.to_str() {
                Some("--state-dir") => state_dir = Some(PathBuf::from(args.next().ok_or(usage)?)),
                Some("--pid") => {
                    pid = args
                        .next()
                        .and_then(|p| p.to_str().and_then(|p| p.parse().ok()))
                }
                Some("--") => break,
                _ => return Err(format!("unexpected argument {arg:?}; {usage}")),
            }
        }
        Ok(Self {
            state_dir: state_dir.ok_or(usage)?,
            pid: pid.ok_or(usage)?,
            agent_args: args.collect(),
        })
    }
}

/// Runs the guard to its end: returns when there is nothing left to guard
/// (or under systemd after a rollback); otherwise a rollback execs the
/// restored agent and does not return, unless the exec fails.
pub fn run(args: GuardArgs) -> Result<(), String> {
    // Detached: a new session, so the terminal's or the supervisor's
    // signals to the agent's group do not reach the guard.
    if let Err(error) = rustix::process::setsid() {
        eprintln!("update guard: setsid failed ({error}); guarding anyway");
    }
    let trials = TrialFile::new(&args.state_dir);
    eprintln!(
        "update guard {}: watching {} for agent pid {}",
        std::process::id(),
        trials.path().display(),
        args.pid
    );
    let trial = loop {
        let trial = trials
            .load()
            .map_err(|e| format!("cannot read {}: {e}", trials.path().display()))?;
        match guard_step(trial.as_ref(), Utc::now()) {
            GuardStep::Done => {
                eprintln!("update guard: the trial ended; nothing to guard");
                return Ok(());
            }
            #[allow(
                clippy::disallowed_methods,
                reason = "the guard is a plain process without a runtime, polling a file"
            )]
            GuardStep::Wait => std::thread::sleep(POLL),
            GuardStep::RollBack => break trial.ok_or("the trial vanished")?,
        }
    };
    let rolled_back = trial.rolled_back();
    let reason = rolled_back.reason.clone().unwrap_or_default();
    eprintln!("update guard: {reason}");
    swap::restore(&trial.exe).map_err(|e| format!("rollback failed: {e}"))?;
    if let Err(error) = trials.save(&rolled_back) {
        eprintln!("update guard: cannot record the rollback: {error}");
    }
    if let Err(error) = FailuresFile::new(&args.state_dir).record(Failure {
        version: trial.to.clone(),
        sha256: trial.sha256.clone(),
        reason,
    }) {
        eprintln!("update guard: cannot record the failed release: {error}");
    }
    // After the restore: under systemd the agent's death ends the guard
    // too (its cgroup is stopped before the restart).
    let pid = rustix::process::Pid::from_raw(args.pid as i32);
    if let Some(pid) = pid
        && let Err(error) = rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        && error != rustix::io::Errno::SRCH
    {
        eprintln!("update guard: cannot kill agent {}: {error}", args.pid);
    }
    if std::env::var_os("INVOCATION_ID").is_some() {
        eprintln!("update guard: systemd restarts the restored agent");
        return Ok(());
    }
    eprintln!(
        "update guard: starting the restored agent {}",
        trial.exe.display()
    );
    let error = Command::new(&trial.exe).args(&args.agent_args).exec();
    Err(format!("cannot run {}: {error}", trial.exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guards_arguments_round_trip() {
        let args = GuardArgs {
            state_dir: "/var/lib/tether".into(),
            pid: 42,
            agent_args: vec!["--state-dir".into(), "/x".into(), "--".into()],
        };
        assert_eq!(GuardArgs::parse(args.to_args().into_iter()), Ok(args));
        assert!(GuardArgs::parse(["--pid".into()].into_iter()).is_err());
    }
}
