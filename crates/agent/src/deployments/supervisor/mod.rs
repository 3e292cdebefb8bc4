//! Supervised processes and config files on a plain device (issue 17,
//! seed 003's jobs): the deployments' `processes` and `configFiles`,
//! reconciled as the applied spec changes and reported per deployment
//! through [`DeploymentReports`] ([`Part::Processes`]).
//!
//! Each deployment's processes are a [`machine::Machine`] (every rule, no
//! IO); this runtime does what it commands with real children
//! ([`child`]) and files ([`files`]), and feeds back what happened. A new
//! version of a deployment is prepared whole first (templates rendered,
//! artifacts downloaded and checked); if that fails, the deployment is
//! reported failed for that version with the reason, and what runs keeps
//! running as it was. Otherwise only what changed is touched.
//!
//! Processes run in `STATE_DIR/deployments/DEPLOYMENT/PROCESS/`, their
//! working directory, where their artifacts are. The agent stops them
//! all when it stops; a restarted agent starts them again from the spec
//! it applied last, after killing what an agent killed outright left
//! running ([`child::kill_leftovers`]).
//!
//! Config files that leave the spec (their deployment removed, or the
//! file dropped from it) are removed once no process that was started
//! with them runs: only files the agent wrote and that are still as it
//! wrote them, known from a record in the state directory ([`written`]).

pub mod child;
pub mod files;
pub mod machine;
pub mod render;
pub mod written;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tether_proto::desired::{DeploymentSpec, DeploymentState, DeploymentStatus, Deployments};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{DeploymentReports, Part};
use crate::logs::Sink;
use crate::spec::AppliedSpec;
use child::{Child, ChildEvent, ChildKey};
use files::{ArtifactSource, DeviceContext, Rendered, Staged};
use machine::{Command, Machine};
use written::{Swept, Written};

/// The processes' directories, in the state directory.
pub const DEPLOYMENTS_DIR: &str = "deployments";

/// What the supervisor needs from the agent.
pub struct SupervisorParts {
    /// Where processes' directories go ([`DEPLOYMENTS_DIR`] in the state directory).
    pub root: PathBuf,
    /// Where the record of the config files written is kept
    /// ([`written::WRITTEN_FILE`] in the state directory).
    pub written: PathBuf,
    pub device: DeviceContext,
    pub artifacts: ArtifactSource,
    /// Where the processes' output goes.
    pub sink: Arc<Sink>,
    /// `tether-agent-render`, which renders config files ([`render`]).
    pub render_helper: PathBuf,
    pub reports: DeploymentReports,
}

/// The running supervisor; [`Supervisor::stop`] stops its children.
pub struct Supervisor {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    /// Answered by the supervisor's loop between two steps (the watchdog's
    /// health check).
    pings: mpsc::Sender<oneshot::Sender<()>>,
}

impl Supervisor {
    /// Starts reconciling to `spec` (the applied spec, followed).
    pub fn start(parts: SupervisorParts, spec: watch::Receiver<AppliedSpec>) -> Self {
        let (stop, stopped) = oneshot::channel();
        let (pings, pinged) = mpsc::channel(1);
        let task = tokio::spawn(run(parts, spec, stopped, pinged));
        Self {
            stop: Some(stop),
            task,
            pings,
        }
    }

    /// A way to ask whether the supervisor's loop still answers.
    pub fn ping(&self) -> crate::watchdog::health::SupervisorPing {
        crate::watchdog::health::SupervisorPing(self.pings.clone())
    }

    /// Stops every child (SIGTERM, then SIGKILL after a grace) and waits.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Not stopped cleanly: the children die with their handles.
        self.task.abort();
    }
}

/// One deployment as it runs.
struct Running {
    spec: DeploymentSpec,
    machine: Machine,
    files: BTreeMap<String, Rendered>,
    children: BTreeMap<String, Started>,
}

/// A child, and the config files it was started with (kept until it
/// exits, whatever the spec says by then).
struct Started {
    child: Child,
    files: BTreeSet<PathBuf>,
}

/// A version being prepared, or that could not be.
enum Pending {
    Preparing {
        spec: DeploymentSpec,
        _task: AbortOnDrop,
    },
    Failed {
        spec: DeploymentSpec,
        reason: String,
    },
}

impl Pending {
    fn spec(&self) -> &DeploymentSpec {
        match self {
            Pending::Preparing { spec, .. } | Pending::Failed { spec, .. } => spec,
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A prepared version: its files rendered, its artifacts staged.
struct Prepared {
    name: String,
    spec: DeploymentSpec,
    result: Result<(BTreeMap<String, Rendered>, Staged), String>,
}

struct Runtime {
    parts: Arc<SupervisorParts>,
    running: BTreeMap<String, Running>,
    pending: BTreeMap<String, Pending>,
    /// What the spec asks for now.
    desired: Deployments,
    /// The config files written, to remove once unwanted.
    written: Written,
    events: mpsc::UnboundedSender<(ChildKey, ChildEvent)>,
    prepared: mpsc::UnboundedSender<Prepared>,
}

/// The most a stop at shutdown waits for children, beyond their grace.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(2);

async fn run(
    parts: SupervisorParts,
    mut spec: watch::Receiver<AppliedSpec>,
    mut stop: oneshot::Receiver<()>,
    mut pings: mpsc::Receiver<oneshot::Sender<()>>,
) {
    child::kill_leftovers(&parts.root);
    let (events, mut child_events) = mpsc::unbounded_channel();
    let (prepared, mut prepared_rx) = mpsc::unbounded_channel();
    let mut runtime = Runtime {
        written: Written::load(parts.written.clone()),
        parts: Arc::new(parts),
        running: BTreeMap::new(),
        pending: BTreeMap::new(),
        desired: Deployments::new(),
        events,
        prepared,
    };
    let mut follow = true;
    // At start everything is prepared anyway: only later reloads count.
    let mut reloads = spec.borrow().reloads;
    'supervise: loop {
        if follow {
            let (desired, reloaded) = {
                let applied = spec.borrow_and_update();
                let reloaded = applied.reloads != reloads;
                reloads = applied.reloads;
                (applied.deployments.clone(), reloaded)
            };
            runtime.apply(desired, reloaded);
            follow = false;
        }
        runtime.act();
        // Version 0 is no spec at all (none received yet, or the saved one
        // unreadable): that is not a spec dropping every file, so nothing
        // is removed until a real one arrives.
        if spec.borrow().version != 0 {
            runtime.sweep_files();
        }
        runtime.report();
        let deadline = runtime
            .running
            .values()
            .filter_map(|r| r.machine.next_deadline())
            .min();
        // A ping is answered without a pass over the deployments.
        loop {
            tokio::select! {
                Some(answer) = pings.recv() => {
                    let _ = answer.send(());
                    continue;
                }
                _ = &mut stop => break 'supervise,
                changed = spec.changed() => match changed {
                    Ok(()) => follow = true,
                    Err(_) => break 'supervise,
                },
                Some((key, event)) = child_events.recv() => runtime.child_event(key, event),
                Some(prepared) = prepared_rx.recv() => runtime.prepared(prepared),
                () = sleep_until(deadline) => {
                    let now = Instant::now();
                    for running in runtime.running.values_mut() {
                        running.machine.tick(now);
                    }
                }
            }
            break;
        }
    }
    // Stopping: every child gets its grace, then the agent goes on stopping.
    runtime.pending.clear();
    for running in runtime.running.values_mut() {
        running.machine.stop_all();
    }
    runtime.act();
    let give_up = Instant::now() + child::STOP_GRACE + SHUTDOWN_SLACK;
    while runtime.running.values().any(|r| !r.machine.is_idle()) {
        tokio::select! {
            Some((key, event)) = child_events.recv() => runtime.child_event(key, event),
            () = tokio::time::sleep_until(give_up) => break,
        }
        runtime.act();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Runtime {
    /// Takes the spec's deployments: removed ones stop, new and changed
    /// ones are prepared; `again` (a reload) prepares the unchanged ones
    /// too, as at start, so config files edited since are written again
    /// (restarting their users) and a version that failed is tried again.
    fn apply(&mut self, desired: Deployments, again: bool) {
        let now = Instant::now();
        for (name, running) in &mut self.running {
            if !desired.contains_key(name) {
                running
                    .machine
                    .update(&BTreeMap::new(), &BTreeSet::new(), now);
            }
        }
        self.pending.retain(|name, _| desired.contains_key(name));
        for (name, spec) in &desired {
            let has_work = !spec.processes.is_empty() || !spec.config_files.is_empty();
            let again = again && has_work;
            let current = self.running.get(name).map(|r| &r.spec);
            if (current == Some(spec) && !again) || (current.is_none() && !has_work) {
                // Back to what runs (a rollback before the new one applied).
                self.pending.remove(name);
                continue;
            }
            let retry = |pending: &Pending| again && matches!(pending, Pending::Failed { .. });
            if self
                .pending
                .get(name)
                .is_some_and(|p| p.spec() == spec && !retry(p))
            {
                continue;
            }
            let task = self.prepare(name.clone(), spec.clone());
            self.pending.insert(
                name.clone(),
                Pending::Preparing {
                    spec: spec.clone(),
                    _task: task,
                },
            );
        }
        self.desired = desired;
    }

    fn prepare(&self, name: String, spec: DeploymentSpec) -> AbortOnDrop {
        let parts = self.parts.clone();
        let done = self.prepared.clone();
        AbortOnDrop(tokio::spawn(async move {
            let rendered =
                files::render(&parts.device, &spec, &parts.root, &parts.render_helper).await;
            let result = match rendered {
                Ok(rendered) => files::stage(&parts.artifacts, &parts.root, &name, &spec)
                    .await
                    .map(|staged| (rendered, staged)),
                Err(reason) => Err(reason),
            };
            let _ = done.send(Prepared { name, spec, result });
        }))
    }

    /// A version is ready (or not): put it in place and hand it to its machine.
    fn prepared(&mut self, prepared: Prepared) {
        let Prepared { name, spec, result } = prepared;
        if self.pending.get(&name).map(Pending::spec) != Some(&spec) {
            return;
        }
        let installed = result.and_then(|(rendered, staged)| {
            let previous = self.running.get(&name).map(|r| &r.files);
            let changed_files = files::write(
                &name,
                &rendered,
                previous.unwrap_or(&BTreeMap::new()),
                &mut self.written,
            );
            self.save_written();
            let changed_files = changed_files?;
            let changed_artifacts = staged.commit()?;
            Ok((rendered, changed_files, changed_artifacts))
        });
        let (rendered, changed_files, mut touched) = match installed {
            Ok(installed) => installed,
            Err(reason) => {
                tracing::warn!(
                    deployment = name,
                    version = spec.version,
                    "cannot apply: {reason}"
                );
                self.pending.insert(name, Pending::Failed { spec, reason });
                return;
            }
        };
        self.pending.remove(&name);
        touched.extend(
            spec.processes
                .iter()
                .filter(|(_, p)| p.config_files.iter().any(|f| changed_files.contains(f)))
                .map(|(n, _)| n.clone()),
        );
        tracing::info!(
            deployment = name,
            version = spec.version,
            restarted = ?touched,
            "applying"
        );
        let running = self.running.entry(name).or_insert_with(|| Running {
            spec: DeploymentSpec::default(),
            machine: Machine::default(),
            files: BTreeMap::new(),
            children: BTreeMap::new(),
        });
        running
            .machine
            .update(&spec.processes, &touched, Instant::now());
        running.spec = spec;
        running.files = rendered;
    }

    fn child_event(&mut self, key: ChildKey, event: ChildEvent) {
        let Some(running) = self.running.get_mut(&key.deployment) else {
            return;
        };
        let now = Instant::now();
        match event {
            ChildEvent::Exited(exit) => {
                if running.machine.generation(&key.process) == Some(key.generation) {
                    // Its config files may go now, if the spec dropped them.
                    running.children.remove(&key.process);
                }
                tracing::info!(
                    deployment = key.deployment,
                    process = key.process,
                    "{}",
                    exit.description
                );
                running
                    .machine
                    .exited(&key.process, key.generation, exit, now);
            }
            ChildEvent::Checked { passed, detail } => {
                running
                    .machine
                    .checked(&key.process, key.generation, passed, detail, now);
            }
        }
    }

    /// Does what the machines command, until they command nothing more.
    fn act(&mut self) {
        let parts = self.parts.clone();
        for (name, running) in &mut self.running {
            loop {
                let commands = running.machine.take_commands();
                if commands.is_empty() {
                    break;
                }
                for command in commands {
                    match command {
                        Command::Spawn {
                            process,
                            generation,
                        } => {
                            let Some(spec) = running.machine.spec(&process).cloned() else {
                                continue;
                            };
                            let used = spec
                                .config_files
                                .iter()
                                .filter_map(|file| running.files.get(file))
                                .map(|file| file.path.clone())
                                .collect();
                            let dir = files::process_dir(&parts.root, name, &process);
                            let key = ChildKey {
                                deployment: name.clone(),
                                process: process.clone(),
                                generation,
                            };
                            let spawned = std::fs::create_dir_all(&dir).and_then(|()| {
                                child::spawn(
                                    &spec,
                                    &dir,
                                    key,
                                    parts.sink.clone(),
                                    self.events.clone(),
                                )
                            });
                            match spawned {
                                Ok(child) => {
                                    tracing::info!(deployment = name, process, "started");
                                    running
                                        .children
                                        .insert(process, Started { child, files: used });
                                }
                                Err(e) => {
                                    let program = child::program(&spec, &dir);
                                    running.machine.spawn_failed(
                                        &process,
                                        generation,
                                        format!("{}: {e}", program.display()),
                                        Instant::now(),
                                    );
                                }
                            }
                        }
                        Command::Stop { process, .. } => {
                            if let Some(started) = running.children.get_mut(&process) {
                                started.child.stop();
                            }
                        }
                    }
                }
            }
        }
        // A removed deployment is forgotten once its last process is.
        let desired = &self.desired;
        self.running
            .retain(|name, running| desired.contains_key(name) || !running.machine.is_empty());
    }

    /// Removes the config files the agent wrote that nothing wants now:
    /// not in a desired deployment's spec, nor in the version of one
    /// still running (a new one being prepared, or one that failed),
    /// nor among the files a running child was started with (a removed
    /// deployment's, stopping). The children stop first: a file goes
    /// only once the last child started with it has exited.
    fn sweep_files(&mut self) {
        let mut wanted: BTreeSet<&Path> = BTreeSet::new();
        for (name, spec) in &self.desired {
            wanted.extend(spec.config_files.values().map(|file| Path::new(&file.path)));
            if let Some(running) = self.running.get(name) {
                wanted.extend(running.files.values().map(|file| file.path.as_path()));
            }
        }
        for running in self.running.values() {
            for started in running.children.values() {
                wanted.extend(started.files.iter().map(PathBuf::as_path));
            }
        }
        if self
            .written
            .entries()
            .keys()
            .all(|path| wanted.contains(path.as_path()))
        {
            return;
        }
        for (path, entry, swept) in self.written.sweep(|path| wanted.contains(path)) {
            let (path, deployment, file) = (path.display(), entry.deployment, entry.file);
            match swept {
                Swept::Removed => {
                    tracing::info!(%path, deployment, file, "removed a config file the spec no longer has");
                }
                Swept::Gone => {
                    tracing::debug!(%path, deployment, file, "a config file the spec no longer has was gone already");
                }
                Swept::Left(reason) => {
                    tracing::warn!(%path, deployment, file, "left a config file the spec no longer has in place: {reason}");
                }
            }
        }
        self.save_written();
    }

    /// Saves the record of written files; a failure is logged (the next
    /// save tries again; until then a restarted agent may leave a file).
    fn save_written(&mut self) {
        if let Err(error) = self.written.save() {
            tracing::warn!(%error, "cannot save the record of written config files");
        }
    }

    /// Each deployment with processes or config files: failed for a
    /// version that could not be applied, progressing while one is
    /// prepared, else as its processes are.
    fn report(&self) {
        let mut statuses = BTreeMap::new();
        for name in self.desired.keys() {
            let status = match (self.pending.get(name), self.running.get(name)) {
                (Some(Pending::Failed { spec, reason }), _) => DeploymentStatus {
                    version: spec.version.clone(),
                    state: DeploymentState::Failed,
                    reason: Some(cut(reason)),
                },
                // What runs prepared again (a reload): it still runs as it did.
                (Some(Pending::Preparing { spec, .. }), Some(running)) if running.spec == *spec => {
                    let mut status = running.machine.status(&running.spec.version);
                    status.reason = status.reason.as_deref().map(cut);
                    status
                }
                (Some(Pending::Preparing { spec, .. }), _) => DeploymentStatus {
                    version: spec.version.clone(),
                    state: DeploymentState::Progressing,
                    reason: Some("rendering config files and downloading artifacts".into()),
                },
                (None, Some(running)) => {
                    let mut status = running.machine.status(&running.spec.version);
                    status.reason = status.reason.as_deref().map(cut);
                    status
                }
                (None, None) => continue,
            };
            statuses.insert(name.clone(), status);
        }
        self.parts.reports.set(Part::Processes, statuses);
    }
}

/// A reason as long as the status takes.
fn cut(reason: &str) -> String {
    let mut end = reason.len().min(DeploymentStatus::MAX_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}
