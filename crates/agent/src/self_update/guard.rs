//! The update guard: the previous (known good) binary, started detached
//! (`tether-agent update-guard`, in a session of its own) just before the
//! agent execs a new binary. It watches the trial record; if the new agent
//! has not committed by the deadline it puts the previous binary back,
//! records why, kills the new agent, and — unless systemd runs the agent
//! (`INVOCATION_ID` set: its `Restart=` starts the restored binary) —
//! execs the previous binary with the agent's original arguments.
//!
//! The guard's wait is measured on its own `CLOCK_BOOTTIME` from its
//! start, for the time the trial has left then (review M3: a step of the
//! wall clock neither cuts nor stretches it). The agent is held by a
//! pidfd from the start, so the rollback's kill reaches the agent or
//! nothing, never a process that took its pid (review L1).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal};

use super::download;
use super::failures::{Failure, FailuresFile};
use super::swap;
use super::trial::{self, BeforeStart, GuardStep, Now, Trial, TrialFile, guard_step, since_boot};

/// The hidden subcommand that runs the guard.
pub const SUBCOMMAND: &str = "update-guard";
/// The last guard's log, kept when the next one starts: its tail.
pub const PREVIOUS_LOG: &str = "guard.log.1";
/// How much of the last guard's log is kept.
const PREVIOUS_LOG_BYTES: u64 = 256 * 1024;
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
    // First: the agent may die any moment, and its pid be taken.
    let agent = Agent::hold(args.pid);
    // Its own pid, over the one its starter wrote: under systemd the
    // starter saw systemd-run's, which exits at once, and a start on
    // trial would take the guard for dead and start another (review L1).
    let pid_file = args.state_dir.join(super::DIR).join(super::GUARD_PID);
    if let Err(error) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        eprintln!(
            "update guard: cannot record its pid in {}: {error}",
            pid_file.display()
        );
    }
    let trials = TrialFile::new(&args.state_dir);
    eprintln!(
        "update guard {}: watching {} for agent pid {}",
        std::process::id(),
        trials.path().display(),
        args.pid
    );
    let mut ends = None;
    let trial = loop {
        let trial = trials
            .load()
            .map_err(|e| format!("cannot read {}: {e}", trials.path().display()))?;
        let ends = *ends.get_or_insert_with(|| {
            let now = Now::read();
            let remaining = trial
                .as_ref()
                .map(|trial| trial.remaining(&now))
                .unwrap_or_default();
            eprintln!(
                "update guard: the agent on trial has {} s left to commit",
                remaining.as_secs()
            );
            // From the same reading as the agent's commit check: in one
            // boot both end at the record's instant, so they cannot both
            // act.
            let from = now
                .boot
                .as_ref()
                .map_or_else(since_boot, |boot| Duration::from_millis(boot.since_boot_ms));
            from + remaining
        });
        match guard_step(trial.as_ref(), since_boot() >= ends) {
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
    roll_back(&args.state_dir, &trial, trial.rollback_reason())?;
    // After the restore: under systemd the agent's death ends the guard
    // too (its cgroup is stopped before the restart).
    if let Err(error) = agent.kill() {
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

/// Puts the previous binary back and records why: in the trial record
/// and as the release's failure, so it is not fetched again.
fn roll_back(state_dir: &Path, trial: &Trial, reason: String) -> Result<(), String> {
    eprintln!("update guard: {reason}");
    swap::restore(&trial.exe).map_err(|e| format!("rollback failed: {e}"))?;
    if let Err(error) = TrialFile::new(state_dir).save(&trial.rolled_back_because(reason.clone())) {
        eprintln!("update guard: cannot record the rollback: {error}");
    }
    if let Err(error) = FailuresFile::new(state_dir).record(Failure {
        version: trial.to.clone(),
        sha256: trial.sha256.clone(),
        reason,
    }) {
        eprintln!("update guard: cannot record the failed release: {error}");
    }
    Ok(())
}

/// The hidden subcommand the service runs before each start, from the
/// previous binary (`ExecStartPre=-…/tether-agent.previous
/// update-before-start --state-dir DIR`, packaging/systemd).
pub const BEFORE_START_SUBCOMMAND: &str = "update-before-start";

/// Before the service starts the agent: a trial still pending means the
/// binary on trial stopped before it proved itself — it crashed, was
/// killed, or the device restarted — since a swap execs in the service's
/// own process and never passes here. The previous binary is put back
/// first. Run by the previous (known good) binary, this also covers a new
/// one that cannot start at all (a flag it refuses, a panic, an
/// instruction the CPU lacks) and a device reset by its watchdog during
/// the trial, which the new binary's own start check cannot (second
/// review M1).
pub fn before_start(mut args: impl Iterator<Item = OsString>) -> Result<(), String> {
    let usage = "usage: tether-agent update-before-start --state-dir DIR";
    let state_dir = match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == "--state-dir" => PathBuf::from(dir),
        _ => return Err(usage.to_owned()),
    };
    let trials = TrialFile::new(&state_dir);
    let trial = trials
        .load()
        .map_err(|e| format!("cannot read {}: {e}", trials.path().display()))?;
    let exe_is_new = |trial: &Trial| {
        download::sha256_file(&trial.exe).is_ok_and(|(_, sha256)| sha256 == trial.sha256)
    };
    match (
        trial::before_start(trial.as_ref(), || trial.as_ref().is_some_and(exe_is_new)),
        trial,
    ) {
        (BeforeStart::RollBack, Some(trial)) => {
            roll_back(&state_dir, &trial, trial.stopped_reason())
        }
        _ => Ok(()),
    }
}

/// The log of a guard about to start, in `dir` ([`super::GUARD_LOG`]),
/// emptied (review L7): it grew by a run at every update. The last run's
/// tail is kept as [`PREVIOUS_LOG`]. Opened to append, so a restored agent
/// still writing to it from the last run writes at its end.
pub fn start_log(dir: &Path) -> io::Result<File> {
    let path = dir.join(super::GUARD_LOG);
    let log = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)?;
    let length = log.metadata()?.len();
    if length > 0 {
        let mut tail = Vec::new();
        let mut reader = &log;
        reader.seek(SeekFrom::Start(length.saturating_sub(PREVIOUS_LOG_BYTES)))?;
        reader.read_to_end(&mut tail)?;
        crate::state::write_atomic(&dir.join(PREVIOUS_LOG), &tail, 0o600)?;
        log.set_len(0)?;
    }
    Ok(log)
}

/// The agent on trial, held from the guard's start.
#[derive(Debug)]
enum Agent {
    /// Signals through it reach that process or none.
    Pidfd(OwnedFd),
    /// Kernels before 5.3 have no pidfd: the process's start time, to
    /// tell it from a later process with its pid before the kill.
    Started { pid: Pid, start_time: u64 },
    /// Gone before the guard started, or no pid: nothing to kill.
    Gone,
}

impl Agent {
    fn hold(pid: u32) -> Self {
        let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return Self::Gone;
        };
        match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => Self::Pidfd(fd),
            Err(rustix::io::Errno::SRCH) => Self::Gone,
            Err(error) => match read_start_time(pid) {
                Some(start_time) => {
                    eprintln!(
                        "update guard: no pidfd ({error}); the agent is told by its start time"
                    );
                    Self::Started { pid, start_time }
                }
                None => Self::Gone,
            },
        }
    }

    /// Kills the agent if it still runs; the process that has its pid now
    /// is left alone.
    fn kill(&self) -> rustix::io::Result<()> {
        let result = match self {
            Self::Pidfd(fd) => rustix::process::pidfd_send_signal(fd, Signal::KILL),
            Self::Started { pid, start_time } => {
                if read_start_time(*pid) != Some(*start_time) {
                    eprintln!(
                        "update guard: agent pid {} is another process now; not killed",
                        pid.as_raw_nonzero()
                    );
                    return Ok(());
                }
                rustix::process::kill_process(*pid, Signal::KILL)
            }
            Self::Gone => return Ok(()),
        };
        match result {
            Err(rustix::io::Errno::SRCH) => Ok(()),
            other => other,
        }
    }
}

fn read_start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    start_time(&stat)
}

/// `/proc/PID/stat`'s start time (field 22, in clock ticks since boot).
/// The command name (field 2) may hold spaces and parentheses: the fields
/// are counted from its closing one.
fn start_time(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(19)?.parse().ok()
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

    #[test]
    fn a_new_guard_starts_an_empty_log_keeping_the_last_runs_tail() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(super::super::GUARD_LOG);
        let mut run = vec![b'a'; 300 * 1024];
        run.extend_from_slice(b"rolled back to 0.1.0\n");
        std::fs::write(&path, &run).expect("last run");
        let mut log = start_log(dir.path()).expect("started");
        io::Write::write_all(&mut log, b"next run\n").expect("written");
        assert_eq!(std::fs::read(&path).expect("log"), b"next run\n");
        let kept = std::fs::read(dir.path().join(PREVIOUS_LOG)).expect("kept");
        assert_eq!(kept.len() as u64, PREVIOUS_LOG_BYTES);
        assert!(kept.ends_with(b"rolled back to 0.1.0\n"));
        drop(log);
        start_log(dir.path()).expect("again");
        assert_eq!(
            std::fs::read(dir.path().join(PREVIOUS_LOG)).expect("kept"),
            b"next run\n"
        );
    }

    #[test]
    fn the_start_time_is_read_past_a_command_name_with_spaces() {
        let stat = "4242 (tether) (x y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(start_time(stat), Some(987_654));
        assert_eq!(start_time("4242 (short) S 1"), None);
        assert_eq!(start_time("garbage"), None);
        let own = read_start_time(Pid::from_raw(std::process::id() as i32).expect("pid"));
        assert!(own.is_some(), "this process's own stat reads");
    }

    fn sleeper() -> std::process::Child {
        Command::new("sleep").arg("30").spawn().expect("sleep")
    }

    #[test]
    fn the_agent_held_is_killed_and_a_process_with_its_pid_is_not() {
        // Review L1: a rollback kills the agent, never a process that took
        // its pid after it died.
        let mut agent = sleeper();
        let held = Agent::hold(agent.id());
        assert!(matches!(held, Agent::Pidfd(_)), "{held:?}");
        held.kill().expect("killed");
        assert!(!agent.wait().expect("waited").success());
        held.kill()
            .expect("dead and reaped: nothing to kill, no error");

        let mut other = sleeper();
        let pid = Pid::from_raw(other.id() as i32).expect("pid");
        let start_time = read_start_time(pid).expect("start time");
        let reused = Agent::Started {
            pid,
            start_time: start_time + 1,
        };
        reused.kill().expect("left alone");
        assert!(other.try_wait().expect("status").is_none(), "still runs");
        Agent::Started { pid, start_time }.kill().expect("killed");
        assert!(!other.wait().expect("waited").success());

        let gone = Agent::hold(u32::MAX);
        assert!(matches!(gone, Agent::Gone), "{gone:?}");
        gone.kill().expect("nothing to kill");
    }
}
