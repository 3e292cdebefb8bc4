//! One deployment's processes as a state machine without IO: events in
//! (a child spawned, exited, passed or failed its health check, time
//! passed, a new spec), [`Command`]s out (spawn this child, stop that
//! one). The runtime ([`super`]) does what the commands say and feeds back
//! what happened; every rule of seed 003's jobs lives here, with tests.
//!
//! A child is known by its process name and a generation that goes up at
//! every spawn, so an exit that arrives after a newer spawn is ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tether_proto::desired::process::{ProcessSpec, RestartPolicy, start_order};
use tether_proto::desired::{DeploymentState, DeploymentStatus};
use tokio::time::Instant;

/// A run at least this long resets the count of restarts in a row.
pub const STEADY_RUN: Duration = Duration::from_secs(60);
/// Failed health checks in a row after which a healthy process is restarted.
pub const FAILED_CHECKS: u32 = 3;
/// The shortest pause before a restart, whatever `restartPauseSeconds`
/// says: a program that cannot start or exits at once does not spin.
pub const MIN_RESTART_PAUSE: Duration = Duration::from_millis(100);

/// What the runtime is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start the process (its files are in place).
    Spawn { process: String, generation: u64 },
    /// Stop the child's process group: SIGTERM, SIGKILL after a grace.
    Stop { process: String, generation: u64 },
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Exit status 0.
    pub success: bool,
    /// `exited with status 1`, `killed by signal 9`, `cannot start: …`.
    pub description: String,
}

/// Where one process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not started: a dependency is not up yet.
    Waiting { dependency: String },
    /// Spawned; waiting for its first passed health check.
    Starting { since: Instant },
    /// Spawned, with no health check to pass.
    Running { since: Instant },
    /// Passed its health check.
    Healthy { since: Instant },
    /// Exited; started again at `until`.
    BackingOff { until: Instant, reason: String },
    /// Being stopped; `then` says what follows.
    Stopping { then: Then },
    /// Not running and not restarted: done, `noAutostart`, or the agent stopping.
    Stopped { reason: String, done: bool },
    /// Given up on; `reason` says why.
    Failed { reason: String },
}

impl Phase {
    /// The phase's name as statuses show it.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Waiting { .. } => "waiting",
            Phase::Starting { .. } => "starting",
            Phase::Running { .. } => "running",
            Phase::Healthy { .. } => "healthy",
            Phase::BackingOff { .. } => "backing-off",
            Phase::Stopping { .. } => "stopping",
            Phase::Stopped { .. } => "stopped",
            Phase::Failed { .. } => "failed",
        }
    }

    fn has_child(&self) -> bool {
        matches!(
            self,
            Phase::Starting { .. }
                | Phase::Running { .. }
                | Phase::Healthy { .. }
                | Phase::Stopping { .. }
        )
    }
}

/// What follows a stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// Start again once its dependencies are up (a new spec, a failed dependency).
    Start,
    /// Count it as a failure with this reason (start timeout, health).
    Fail(String),
    /// Stay stopped.
    Stay(String),
    /// Forget it: the spec no longer has it.
    Remove,
}

#[derive(Debug, Clone)]
struct Process {
    spec: ProcessSpec,
    phase: Phase,
    generation: u64,
    /// Restarts in a row.
    restarts: u32,
    /// When the current or last child was spawned.
    spawned: Option<Instant>,
    failed_checks: u32,
}

/// One deployment's processes.
#[derive(Debug, Default)]
pub struct Machine {
    processes: BTreeMap<String, Process>,
    commands: Vec<Command>,
}

impl Machine {
    /// The commands issued since the last call, in order.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    /// A process's phase.
    pub fn phase(&self, process: &str) -> Option<&Phase> {
        self.processes.get(process).map(|p| &p.phase)
    }

    /// The current generation of `process`'s child.
    pub fn generation(&self, process: &str) -> Option<u64> {
        self.processes.get(process).map(|p| p.generation)
    }

    /// The spec a process runs with.
    pub fn spec(&self, process: &str) -> Option<&ProcessSpec> {
        self.processes.get(process).map(|p| &p.spec)
    }

    /// Whether nothing runs and nothing is left: a removed deployment is gone.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// Whether no child is running.
    pub fn is_idle(&self) -> bool {
        self.processes.values().all(|p| !p.phase.has_child())
    }

    /// Takes a new spec: new processes start (after their dependencies),
    /// removed ones stop, changed ones — their spec, or a name in
    /// `touched` (a config file or artifact they use changed) — restart;
    /// the rest keeps running.
    pub fn update(
        &mut self,
        processes: &BTreeMap<String, ProcessSpec>,
        touched: &BTreeSet<String>,
        now: Instant,
    ) {
        let removed: Vec<String> = self
            .processes
            .keys()
            .filter(|name| !processes.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            self.stop(&name, Then::Remove);
        }
        for (name, spec) in processes {
            let Some(process) = self.processes.get_mut(name) else {
                let phase = if spec.no_autostart {
                    stopped_no_autostart()
                } else {
                    Phase::Waiting {
                        dependency: String::new(),
                    }
                };
                self.processes.insert(
                    name.clone(),
                    Process {
                        spec: spec.clone(),
                        phase,
                        generation: 0,
                        restarts: 0,
                        spawned: None,
                        failed_checks: 0,
                    },
                );
                continue;
            };
            if process.spec == *spec && !touched.contains(name) {
                continue;
            }
            process.spec = spec.clone();
            process.restarts = 0;
            let then = if spec.no_autostart {
                Then::Stay("noAutostart".into())
            } else {
                Then::Start
            };
            self.stop(name, then);
        }
        self.settle(now);
    }

    /// Stops every child (the agent is stopping); nothing starts again.
    pub fn stop_all(&mut self) {
        let names: Vec<String> = self.processes.keys().cloned().collect();
        for name in names {
            self.stop(&name, Then::Stay("the agent stopped".into()));
        }
    }

    /// Stops `name`'s child if it has one, then does `then`; without a
    /// child, does `then` at once.
    fn stop(&mut self, name: &str, then: Then) {
        let Some(process) = self.processes.get_mut(name) else {
            return;
        };
        match &mut process.phase {
            Phase::Stopping { then: pending } => {
                // Removal wins over anything else already asked.
                if *pending != Then::Remove {
                    *pending = then;
                }
            }
            phase if phase.has_child() => {
                process.phase = Phase::Stopping { then };
                self.commands.push(Command::Stop {
                    process: name.to_owned(),
                    generation: process.generation,
                });
            }
            _ => self.after_stop(name, then, None),
        }
    }

    fn after_stop(&mut self, name: &str, then: Then, now: Option<Instant>) {
        match then {
            Then::Remove => {
                self.processes.remove(name);
            }
            Then::Start => {
                if let Some(process) = self.processes.get_mut(name) {
                    process.phase = Phase::Waiting {
                        dependency: String::new(),
                    };
                }
            }
            Then::Stay(reason) => {
                if let Some(process) = self.processes.get_mut(name) {
                    process.phase = Phase::Stopped {
                        reason,
                        done: false,
                    };
                }
            }
            Then::Fail(reason) => {
                let now = now.unwrap_or_else(Instant::now);
                self.failed(name, false, reason, now);
            }
        }
    }

    /// The runtime could not spawn it or it exited: as [`Machine::exited`].
    pub fn spawn_failed(&mut self, name: &str, generation: u64, error: String, now: Instant) {
        self.exited(
            name,
            generation,
            Exit {
                success: false,
                description: format!("cannot start: {error}"),
            },
            now,
        );
    }

    /// A child exited.
    pub fn exited(&mut self, name: &str, generation: u64, exit: Exit, now: Instant) {
        let Some(process) = self.processes.get_mut(name) else {
            return;
        };
        if process.generation != generation || !process.phase.has_child() {
            return;
        }
        if let Phase::Stopping { then } = &process.phase {
            let then = then.clone();
            self.after_stop(name, then, Some(now));
        } else {
            self.failed(name, exit.success, exit.description, now);
        }
        self.settle(now);
    }

    /// A process went down unexpectedly (`success`: with status 0): its
    /// dependents that ask for it are stopped until it is up again, and
    /// it is restarted as its policy says.
    fn failed(&mut self, name: &str, success: bool, reason: String, now: Instant) {
        let dependents: Vec<String> = self
            .processes
            .iter()
            .filter(|(_, p)| {
                p.spec.restart_on_dependency_fail && p.spec.depends_on.iter().any(|d| d == name)
            })
            .map(|(n, _)| n.clone())
            .collect();
        let Some(process) = self.processes.get_mut(name) else {
            return;
        };
        let steady = process
            .spawned
            .is_some_and(|at| now.saturating_duration_since(at) >= STEADY_RUN);
        process.phase = match process.spec.restart {
            RestartPolicy::OnFailure | RestartPolicy::Never if success => Phase::Stopped {
                reason: reason.clone(),
                done: true,
            },
            RestartPolicy::Never => Phase::Failed {
                reason: format!("{reason} (restart: never)"),
            },
            RestartPolicy::Always | RestartPolicy::OnFailure => {
                process.restarts = if steady { 1 } else { process.restarts + 1 };
                match process.spec.restart_limit {
                    Some(limit) if process.restarts > limit => Phase::Failed {
                        reason: format!(
                            "{reason}; gave up after {limit} restarts in a row (restartLimit {limit})"
                        ),
                    },
                    _ => Phase::BackingOff {
                        until: now
                            + Duration::from_secs(process.spec.restart_pause_seconds.into())
                                .max(MIN_RESTART_PAUSE),
                        reason,
                    },
                }
            }
        };
        let done = matches!(process.phase, Phase::Stopped { done: true, .. });
        if !done {
            for dependent in dependents {
                self.stop(&dependent, Then::Start);
            }
        }
    }

    /// A health check ended.
    pub fn checked(
        &mut self,
        name: &str,
        generation: u64,
        passed: bool,
        detail: String,
        now: Instant,
    ) {
        let Some(process) = self.processes.get_mut(name) else {
            return;
        };
        if process.generation != generation {
            return;
        }
        match (&process.phase, passed) {
            (Phase::Starting { .. } | Phase::Running { .. }, true) => {
                process.phase = Phase::Healthy { since: now };
                process.failed_checks = 0;
            }
            (Phase::Healthy { .. }, true) => process.failed_checks = 0,
            (Phase::Healthy { .. }, false) => {
                process.failed_checks += 1;
                if process.failed_checks >= FAILED_CHECKS {
                    let reason = format!("failed {FAILED_CHECKS} health checks in a row: {detail}");
                    self.stop(name, Then::Fail(reason));
                }
            }
            _ => {}
        }
        self.settle(now);
    }

    /// Time passed: pauses end, start timeouts expire.
    pub fn tick(&mut self, now: Instant) {
        let late: Vec<(String, u32)> = self
            .processes
            .iter()
            .filter_map(|(name, p)| match p.phase {
                Phase::Starting { since } if now >= since + start_timeout(&p.spec) => {
                    Some((name.clone(), p.spec.start_timeout_seconds))
                }
                _ => None,
            })
            .collect();
        for (name, seconds) in late {
            self.stop(
                &name,
                Then::Fail(format!("did not pass its health check within {seconds}s")),
            );
        }
        self.settle(now);
    }

    /// When [`Machine::tick`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.processes
            .values()
            .filter_map(|p| match p.phase {
                Phase::BackingOff { until, .. } => Some(until),
                Phase::Starting { since } => Some(since + start_timeout(&p.spec)),
                _ => None,
            })
            .min()
    }

    fn is_up(&self, name: &str) -> bool {
        self.processes.get(name).is_some_and(|p| {
            matches!(
                p.phase,
                Phase::Running { .. } | Phase::Healthy { .. } | Phase::Stopped { done: true, .. }
            )
        })
    }

    /// Starts what may start now, dependencies first.
    fn settle(&mut self, now: Instant) {
        let specs: BTreeMap<String, ProcessSpec> = self
            .processes
            .iter()
            .map(|(n, p)| (n.clone(), p.spec.clone()))
            .collect();
        for name in start_order(&specs) {
            let Some(process) = self.processes.get(&name) else {
                continue;
            };
            let due = match &process.phase {
                Phase::Waiting { .. } => true,
                Phase::BackingOff { until, .. } => now >= *until,
                _ => false,
            };
            if !due {
                continue;
            }
            let missing = process
                .spec
                .depends_on
                .iter()
                .find(|d| !self.is_up(d))
                .cloned();
            let Some(process) = self.processes.get_mut(&name) else {
                continue;
            };
            if let Some(dependency) = missing {
                process.phase = Phase::Waiting { dependency };
                continue;
            }
            process.generation += 1;
            process.spawned = Some(now);
            process.failed_checks = 0;
            process.phase = if process.spec.health_check.is_some() {
                Phase::Starting { since: now }
            } else {
                Phase::Running { since: now }
            };
            self.commands.push(Command::Spawn {
                process: name.clone(),
                generation: process.generation,
            });
        }
    }

    /// The deployment's state from its processes': failed if one failed,
    /// ready when all are up (or done, or not to be started), else progressing.
    pub fn status(&self, version: &str) -> DeploymentStatus {
        let mut progressing = None;
        for (name, process) in &self.processes {
            match &process.phase {
                Phase::Failed { reason } => {
                    return DeploymentStatus {
                        version: version.to_owned(),
                        state: DeploymentState::Failed,
                        reason: Some(format!("process {name} failed: {reason}")),
                    };
                }
                Phase::Running { .. } | Phase::Healthy { .. } | Phase::Stopped { .. } => {}
                phase => {
                    progressing.get_or_insert_with(|| {
                        let detail = match phase {
                            Phase::Waiting { dependency } if !dependency.is_empty() => {
                                format!(" for {dependency}")
                            }
                            Phase::BackingOff { reason, .. } => format!(" ({reason})"),
                            _ => String::new(),
                        };
                        format!("process {name} is {}{detail}", phase.name())
                    });
                }
            }
        }
        DeploymentStatus {
            version: version.to_owned(),
            state: if progressing.is_some() {
                DeploymentState::Progressing
            } else {
                DeploymentState::Ready
            },
            reason: progressing,
        }
    }
}

fn stopped_no_autostart() -> Phase {
    Phase::Stopped {
        reason: "noAutostart".into(),
        done: false,
    }
}

fn start_timeout(spec: &ProcessSpec) -> Duration {
    Duration::from_secs(spec.start_timeout_seconds.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs(value: serde_json::Value) -> BTreeMap<String, ProcessSpec> {
        serde_json::from_value(value).expect("process specs")
    }

    fn spawns(commands: &[Command]) -> Vec<&str> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Spawn { process, .. } => Some(process.as_str()),
                Command::Stop { .. } => None,
            })
            .collect()
    }

    fn stops(commands: &[Command]) -> Vec<&str> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Stop { process, .. } => Some(process.as_str()),
                Command::Spawn { .. } => None,
            })
            .collect()
    }

    fn failure() -> Exit {
        Exit {
            success: false,
            description: "exited with status 1".into(),
        }
    }

    fn success() -> Exit {
        Exit {
            success: true,
            description: "exited with status 0".into(),
        }
    }

    fn exit(machine: &mut Machine, name: &str, exit: Exit, now: Instant) {
        let generation = machine.generation(name).expect("known");
        machine.exited(name, generation, exit, now);
    }

    #[test]
    fn dependencies_start_first_and_a_waiting_process_starts_when_they_are_up() {
        let now = Instant::now();
        let mut machine = Machine::default();
        machine.update(
            &specs(json!({
                "web": {"execCmd": "/w", "dependsOn": ["db"]},
                "db": {"execCmd": "/d", "healthCheck": {"command": ["/bin/true"]}},
                "cache": {"execCmd": "/c"}
            })),
            &BTreeSet::new(),
            now,
        );
        // db must pass its health check before web starts.
        assert_eq!(spawns(&machine.take_commands()), ["cache", "db"]);
        assert_eq!(
            machine.phase("web"),
            Some(&Phase::Waiting {
                dependency: "db".into()
            })
        );
        assert_eq!(machine.status("1").state, DeploymentState::Progressing);
        let generation = machine.generation("db").expect("db");
        machine.checked("db", generation, true, String::new(), now);
        assert_eq!(spawns(&machine.take_commands()), ["web"]);
        assert_eq!(machine.status("1").state, DeploymentState::Ready);
    }

    #[test]
    fn restart_policies_decide_what_an_exit_means() {
        let now = Instant::now();
        let mut machine = Machine::default();
        machine.update(
            &specs(json!({
                "always": {"execCmd": "/a", "restartPauseSeconds": 2},
                "on-failure": {"execCmd": "/b", "restart": "on-failure"},
                "never": {"execCmd": "/c", "restart": "never"},
                "once": {"execCmd": "/d", "restart": "never"}
            })),
            &BTreeSet::new(),
            now,
        );
        machine.take_commands();
        exit(&mut machine, "always", success(), now);
        assert!(matches!(
            machine.phase("always"),
            Some(Phase::BackingOff { .. })
        ));
        assert_eq!(machine.next_deadline(), Some(now + Duration::from_secs(2)));
        machine.tick(now + Duration::from_secs(1));
        assert!(machine.take_commands().is_empty(), "still pausing");
        machine.tick(now + Duration::from_secs(2));
        assert_eq!(spawns(&machine.take_commands()), ["always"]);

        exit(&mut machine, "on-failure", success(), now);
        assert!(matches!(
            machine.phase("on-failure"),
            Some(Phase::Stopped { done: true, .. })
        ));
        exit(&mut machine, "once", success(), now);
        assert_eq!(machine.status("1").state, DeploymentState::Ready);
        exit(&mut machine, "never", failure(), now);
        let status = machine.status("1");
        assert_eq!(status.state, DeploymentState::Failed);
        assert_eq!(
            status.reason.as_deref(),
            Some("process never failed: exited with status 1 (restart: never)")
        );
    }

    #[test]
    fn the_restart_limit_fails_the_process_with_the_reason_and_a_steady_run_resets_it() {
        let start = Instant::now();
        let mut machine = Machine::default();
        machine.update(
            &specs(json!({"p": {"execCmd": "/p", "restartLimit": 2, "restartPauseSeconds": 0}})),
            &BTreeSet::new(),
            start,
        );
        assert_eq!(spawns(&machine.take_commands()), ["p"]);
        let mut now = start;
        let fail = |machine: &mut Machine, now: &mut Instant| {
            exit(machine, "p", failure(), *now);
            assert!(machine.take_commands().is_empty(), "a pause even at 0 s");
            *now += MIN_RESTART_PAUSE;
            machine.tick(*now);
            machine.take_commands()
        };
        for _ in 0..2 {
            assert_eq!(spawns(&fail(&mut machine, &mut now)), ["p"], "restarted");
        }
        // A long run in between: the count starts over.
        now += STEADY_RUN;
        assert_eq!(spawns(&fail(&mut machine, &mut now)), ["p"]);
        assert_eq!(spawns(&fail(&mut machine, &mut now)), ["p"]);
        assert!(fail(&mut machine, &mut now).is_empty(), "given up");
        let status = machine.status("7");
        assert_eq!(status.state, DeploymentState::Failed);
        assert_eq!(
            status.reason.as_deref(),
            Some(
                "process p failed: exited with status 1; gave up after 2 restarts in a row (restartLimit 2)"
            )
        );
    }

    #[test]
    fn dependents_that_ask_are_stopped_and_restarted_when_a_dependency_fails() {
        let now = Instant::now();
        let mut machine = Machine::default();
        machine.update(
            &specs(json!({
                "db": {"execCmd": "/d", "restartPauseSeconds": 1},
                "web": {"execCmd": "/w", "dependsOn": ["db"], "restartOnDependencyFail": true},
                "report": {"execCmd": "/r", "dependsOn": ["db"]}
            })),
            &BTreeSet::new(),
            now,
        );
        assert_eq!(spawns(&machine.take_commands()), ["db", "report", "web"]);
        exit(&mut machine, "db", failure(), now);
        assert_eq!(
            stops(&machine.take_commands()),
            ["web"],
            "report keeps running"
        );
        exit(
            &mut machine,
            "web",
            Exit {
                success: false,
                description: "killed by signal 15".into(),
            },
            now,
        );
        assert_eq!(
            machine.phase("web"),
            Some(&Phase::Waiting {
                dependency: "db".into()
            })
        );
        machine.tick(now + Duration::from_secs(1));
        assert_eq!(spawns(&machine.take_commands()), ["db", "web"]);
        assert_eq!(machine.status("1").state, DeploymentState::Ready);
    }

    #[test]
    fn a_start_timeout_or_failing_health_checks_count_as_failures() {
        let now = Instant::now();
        let mut machine = Machine::default();
        machine.update(
            &specs(json!({"p": {
                "execCmd": "/p",
                "restart": "never",
                "startTimeoutSeconds": 5,
                "healthCheck": {"command": ["/bin/false"], "intervalSeconds": 1, "timeoutSeconds": 1}
            }})),
            &BTreeSet::new(),
            now,
        );
        machine.take_commands();
        let generation = machine.generation("p").expect("p");
        machine.checked("p", generation, false, "exit 1".into(), now);
        assert_eq!(machine.next_deadline(), Some(now + Duration::from_secs(5)));
        machine.tick(now + Duration::from_secs(5));
        assert_eq!(stops(&machine.take_commands()), ["p"]);
        exit(&mut machine, "p", failure(), now + Duration::from_secs(5));
        assert_eq!(
            machine.status("1").reason.as_deref(),
            Some("process p failed: did not pass its health check within 5s (restart: never)")
        );

        let mut machine = Machine::default();
        machine.update(
            &specs(json!({"p": {"execCmd": "/p", "healthCheck": {"command": ["/bin/x"]}}})),
            &BTreeSet::new(),
            now,
        );
        machine.take_commands();
        let generation = machine.generation("p").expect("p");
        machine.checked("p", generation, true, String::new(), now);
        for _ in 0..FAILED_CHECKS {
            assert!(stops(&machine.take_commands()).is_empty());
            machine.checked("p", generation, false, "exit 1".into(), now);
        }
        assert_eq!(stops(&machine.take_commands()), ["p"]);
    }

    #[test]
    fn a_new_spec_touches_only_what_changed() {
        let now = Instant::now();
        let mut machine = Machine::default();
        let first = specs(json!({
            "a": {"execCmd": "/a"},
            "b": {"execCmd": "/b", "configFiles": ["conf"]},
            "c": {"execCmd": "/c"}
        }));
        machine.update(&first, &BTreeSet::new(), now);
        assert_eq!(spawns(&machine.take_commands()), ["a", "b", "c"]);

        // a unchanged, b's config file changed, c's args changed, d new; none removed.
        let mut second = first.clone();
        second.get_mut("c").expect("c").exec_args = vec!["-v".into()];
        second.insert(
            "d".into(),
            serde_json::from_value(json!({"execCmd": "/d"})).expect("d"),
        );
        machine.update(&second, &BTreeSet::from(["b".to_owned()]), now);
        let commands = machine.take_commands();
        assert_eq!(stops(&commands), ["b", "c"]);
        assert_eq!(spawns(&commands), ["d"]);
        exit(&mut machine, "b", failure(), now);
        exit(&mut machine, "c", failure(), now);
        assert_eq!(
            spawns(&machine.take_commands()),
            ["b", "c"],
            "deliberate stops restart at once, not counted as failures"
        );

        // Removed: stopped and forgotten once it exited.
        second.remove("a");
        machine.update(&second, &BTreeSet::new(), now);
        assert_eq!(stops(&machine.take_commands()), ["a"]);
        exit(&mut machine, "a", failure(), now);
        assert_eq!(machine.phase("a"), None);
        assert!(machine.take_commands().is_empty());

        machine.update(&BTreeMap::new(), &BTreeSet::new(), now);
        for name in ["b", "c", "d"] {
            exit(&mut machine, name, failure(), now);
        }
        assert!(machine.is_empty());
    }

    #[test]
    fn stale_exits_are_ignored_and_no_autostart_is_not_started() {
        let now = Instant::now();
        let mut machine = Machine::default();
        machine.update(
            &specs(json!({"p": {"execCmd": "/p"}, "q": {"execCmd": "/q", "noAutostart": true}})),
            &BTreeSet::new(),
            now,
        );
        assert_eq!(spawns(&machine.take_commands()), ["p"]);
        machine.exited("p", 0, failure(), now);
        assert!(matches!(machine.phase("p"), Some(Phase::Running { .. })));
        assert_eq!(machine.status("1").state, DeploymentState::Ready);
        machine.stop_all();
        assert_eq!(stops(&machine.take_commands()), ["p"]);
        exit(&mut machine, "p", failure(), now);
        assert!(machine.is_idle());
        assert!(machine.take_commands().is_empty(), "nothing restarts");
    }
}
