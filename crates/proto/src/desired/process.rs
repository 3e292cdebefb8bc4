//! Supervised processes and config files a deployment runs on a plain
//! device (seed 003's jobs and config templating).
//!
//! A process is a program the agent starts in its own process group, in
//! its own directory (where its artifacts are downloaded), restarts as its
//! `restart` policy says, and stops with its group. Config files are
//! rendered on the device from templates ([`crate::template`]) and a
//! change restarts only the processes that list them in `configFiles`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::DeploymentSpec;
use crate::spec::SpecError;
use crate::template;

/// At most this many processes, and as many config files, per deployment.
pub const MAX_PROCESSES: usize = 64;
/// Longest `restartPauseSeconds`, `startTimeoutSeconds` and health check interval.
pub const MAX_SECONDS: u32 = 3600;
/// Highest `restartLimit`.
pub const MAX_RESTART_LIMIT: u32 = 10_000;
/// At most this many arguments, environment variables or artifacts.
pub const MAX_ITEMS: usize = 256;

/// One supervised process (seed 003's job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessSpec {
    /// The program: an absolute path, or the name of one of its artifacts.
    pub exec_cmd: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_args: Vec<String>,
    /// Environment variables, over the agent's when `inheritEnv`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Start with the agent's environment (else only `env` and `PATH`).
    #[serde(default)]
    pub inherit_env: bool,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Restarts in a row (runs shorter than a minute) before the process is
    /// failed; none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_limit: Option<u32>,
    /// The pause before a restart.
    #[serde(default = "ProcessSpec::default_restart_pause")]
    pub restart_pause_seconds: u32,
    /// Processes of the same deployment that must be up before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Stop this process when a dependency fails, start it again once the
    /// dependency is up.
    #[serde(default)]
    pub restart_on_dependency_fail: bool,
    /// Not started by the agent (declared, its files kept).
    #[serde(default)]
    pub no_autostart: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// How long a process with a health check may take to pass it first.
    #[serde(default = "ProcessSpec::default_start_timeout")]
    pub start_timeout_seconds: u32,
    /// Files downloaded into the process's directory before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
    /// The deployment's config files this process reads: a change to one
    /// restarts it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_files: Vec<String>,
}

impl ProcessSpec {
    fn default_restart_pause() -> u32 {
        1
    }

    fn default_start_timeout() -> u32 {
        30
    }
}

/// When an exited process is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RestartPolicy {
    /// Whatever its exit status.
    #[default]
    Always,
    /// Unless it exited with status 0.
    OnFailure,
    /// Never: exit 0 is done, anything else failed.
    Never,
}

/// How the agent knows a process works: a command that exits 0, or an
/// HTTP GET on the device itself answered with 2xx. Exactly one of
/// `command` and `httpGet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthCheck {
    /// The program (absolute path) and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `http://127.0.0.1:PORT/PATH` or `http://localhost:PORT/PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<String>,
    #[serde(default = "HealthCheck::default_interval")]
    pub interval_seconds: u32,
    #[serde(default = "HealthCheck::default_timeout")]
    pub timeout_seconds: u32,
}

impl HealthCheck {
    fn default_interval() -> u32 {
        10
    }

    fn default_timeout() -> u32 {
        5
    }
}

/// A file a process needs, downloaded over HTTPS and checked before use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Artifact {
    /// `https://` only; the agent also checks the host against its allowlist.
    pub url: String,
    /// SHA-256 of the file, 64 lowercase hex digits.
    pub sha256: String,
    /// The file's name in the process's directory.
    pub name: String,
    /// Octal permissions, e.g. `"0755"` (the default).
    #[serde(default = "Artifact::default_mode")]
    pub mode: String,
}

impl Artifact {
    fn default_mode() -> String {
        "0755".into()
    }
}

/// One config file rendered on the device from a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigFileSpec {
    /// Where it is written: an absolute, normalized path.
    pub path: String,
    /// Octal permissions, e.g. `"0640"`; `"0644"` when absent.
    #[serde(default = "ConfigFileSpec::default_mode")]
    pub mode: String,
    /// The template (Jinja syntax) with `device`, `labels`, `facts` and
    /// `values` in its context.
    pub template: String,
}

impl ConfigFileSpec {
    fn default_mode() -> String {
        "0644".into()
    }
}

/// Octal permissions as a spec writes them (`"0640"`, `"755"`): 3 or 4
/// octal digits, at most `0o7777`.
pub fn parse_mode(mode: &str) -> Option<u32> {
    if !(3..=4).contains(&mode.len()) || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(mode, 8).ok().filter(|m| *m <= 0o7777)
}

/// The host of an `https://` URL without user info; `None` if it is not one.
pub fn https_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let host = match authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]:443`.
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    (!host.is_empty()).then_some(host)
}

/// Checks a deployment's processes and config files.
pub fn validate(path: &str, deployment: &DeploymentSpec) -> Result<(), SpecError> {
    validate_with(path, deployment, template::check)
}

/// [`validate`], the config files' templates checked by `check_template`.
pub fn validate_with(
    path: &str,
    deployment: &DeploymentSpec,
    check_template: template::TemplateCheck,
) -> Result<(), SpecError> {
    let processes_path = format!("{path}.processes");
    let files_path = format!("{path}.configFiles");
    check_names(&processes_path, &deployment.processes)?;
    check_names(&files_path, &deployment.config_files)?;
    for (what, count, at) in [
        ("processes", deployment.processes.len(), &processes_path),
        ("config files", deployment.config_files.len(), &files_path),
    ] {
        if count > MAX_PROCESSES {
            return Err(SpecError::new(
                at,
                format!("has {count} {what}, more than the {MAX_PROCESSES} allowed"),
            ));
        }
    }
    let mut paths = BTreeMap::new();
    for (name, file) in &deployment.config_files {
        let at = format!("{files_path}.{name}");
        check_config_file(&at, name, file, check_template)?;
        if let Some(other) = paths.insert(file.path.as_str(), name) {
            return Err(SpecError::new(
                format!("{at}.path"),
                format!("{} is config file {other:?}'s path too", file.path),
            ));
        }
    }
    for (name, process) in &deployment.processes {
        check_process(
            &format!("{processes_path}.{name}"),
            name,
            process,
            deployment,
        )?;
    }
    if let Some(cycle) = dependency_cycle(&deployment.processes) {
        return Err(SpecError::new(
            format!("{processes_path}.{}.dependsOn", cycle[0]),
            format!(
                "has a cycle: {}; a process cannot wait for itself",
                cycle.join(" -> ")
            ),
        ));
    }
    Ok(())
}

fn check_names<T>(path: &str, named: &BTreeMap<String, T>) -> Result<(), SpecError> {
    named
        .keys()
        .try_for_each(|name| super::check_name(&format!("{path}.{name}"), name))
}

fn check_config_file(
    at: &str,
    name: &str,
    file: &ConfigFileSpec,
    check_template: template::TemplateCheck,
) -> Result<(), SpecError> {
    check_absolute(&format!("{at}.path"), &file.path)?;
    check_mode(&format!("{at}.mode"), &file.mode)?;
    check_template(name, &file.template)
        .map_err(|e| SpecError::new(format!("{at}.template"), e.to_string()))
}

/// An absolute, normalized path: no `.`, `..` or empty components.
fn check_absolute(at: &str, path: &str) -> Result<(), SpecError> {
    let normalized = path.len() > 1
        && path.starts_with('/')
        && !path.contains('\0')
        && path[1..]
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if normalized {
        Ok(())
    } else {
        Err(SpecError::new(
            at,
            format!(
                "{path:?} is not an absolute, normalized path: start with '/', no '.', '..' or empty components, no trailing '/'"
            ),
        ))
    }
}

fn check_mode(at: &str, mode: &str) -> Result<(), SpecError> {
    parse_mode(mode).map(drop).ok_or_else(|| {
        SpecError::new(
            at,
            format!("{mode:?} is not a file mode: use 3 or 4 octal digits such as \"0640\""),
        )
    })
}

/// An artifact's file name: letters, digits, `.`, `_` and `-`, not
/// starting with `.`.
fn check_file_name(at: &str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= super::MAX_NAME_BYTES
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            at,
            format!(
                "{name:?} is not a file name: use 1 to {} letters, digits, '.', '_' and '-', not starting with '.'",
                super::MAX_NAME_BYTES
            ),
        ))
    }
}

fn check_process(
    at: &str,
    name: &str,
    process: &ProcessSpec,
    deployment: &DeploymentSpec,
) -> Result<(), SpecError> {
    let mut artifact_names = BTreeSet::new();
    if process.artifacts.len() > MAX_ITEMS {
        return Err(SpecError::new(
            format!("{at}.artifacts"),
            format!("has more than {MAX_ITEMS} artifacts"),
        ));
    }
    for (i, artifact) in process.artifacts.iter().enumerate() {
        let at = format!("{at}.artifacts[{i}]");
        check_file_name(&format!("{at}.name"), &artifact.name)?;
        if !artifact_names.insert(artifact.name.as_str()) {
            return Err(SpecError::new(
                format!("{at}.name"),
                format!("{:?} is another artifact's name too", artifact.name),
            ));
        }
        if https_host(&artifact.url).is_none() {
            return Err(SpecError::new(
                format!("{at}.url"),
                format!(
                    "{:?} is not an https:// URL with a host (and no user info)",
                    artifact.url
                ),
            ));
        }
        let hex = artifact.sha256.as_bytes();
        if hex.len() != 64
            || !hex
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            return Err(SpecError::new(
                format!("{at}.sha256"),
                "must be the file's SHA-256: 64 lowercase hex digits",
            ));
        }
        check_mode(&format!("{at}.mode"), &artifact.mode)?;
    }
    if !artifact_names.contains(process.exec_cmd.as_str()) {
        check_absolute(&format!("{at}.execCmd"), &process.exec_cmd).map_err(|e| {
            SpecError::new(
                e.path,
                format!(
                    "{:?} is neither an absolute, normalized path nor the name of one of this process's artifacts",
                    process.exec_cmd
                ),
            )
        })?;
    }
    if process.exec_args.len() > MAX_ITEMS || process.env.len() > MAX_ITEMS {
        return Err(SpecError::new(
            at,
            format!("has more than {MAX_ITEMS} arguments or environment variables"),
        ));
    }
    for (i, arg) in process.exec_args.iter().enumerate() {
        if arg.contains('\0') {
            return Err(SpecError::new(
                format!("{at}.execArgs[{i}]"),
                "contains a NUL byte",
            ));
        }
    }
    for (key, value) in &process.env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(SpecError::new(
                format!("{at}.env.{key}"),
                "is not an environment variable: a non-empty name without '=' and no NUL bytes",
            ));
        }
    }
    if process.restart_limit.is_some_and(|l| l > MAX_RESTART_LIMIT) {
        return Err(SpecError::new(
            format!("{at}.restartLimit"),
            format!("must be at most {MAX_RESTART_LIMIT} (leave it out for no limit)"),
        ));
    }
    if process.restart_pause_seconds > MAX_SECONDS {
        return Err(SpecError::new(
            format!("{at}.restartPauseSeconds"),
            format!("must be at most {MAX_SECONDS}"),
        ));
    }
    if !(1..=MAX_SECONDS).contains(&process.start_timeout_seconds) {
        return Err(SpecError::new(
            format!("{at}.startTimeoutSeconds"),
            format!("must be 1 to {MAX_SECONDS}"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, dependency) in process.depends_on.iter().enumerate() {
        let at = format!("{at}.dependsOn[{i}]");
        if dependency == name {
            return Err(SpecError::new(at, "a process cannot depend on itself"));
        }
        if !deployment.processes.contains_key(dependency) {
            return Err(SpecError::new(
                at,
                format!("{dependency:?} is not a process of this deployment"),
            ));
        }
        if !seen.insert(dependency) {
            return Err(SpecError::new(
                at,
                format!("{dependency:?} is listed twice"),
            ));
        }
    }
    for (i, file) in process.config_files.iter().enumerate() {
        if !deployment.config_files.contains_key(file) {
            return Err(SpecError::new(
                format!("{at}.configFiles[{i}]"),
                format!("{file:?} is not a config file of this deployment"),
            ));
        }
    }
    if let Some(check) = &process.health_check {
        check_health(&format!("{at}.healthCheck"), check)?;
    }
    Ok(())
}

fn check_health(at: &str, check: &HealthCheck) -> Result<(), SpecError> {
    match (&check.command, &check.http_get) {
        (Some(command), None) => {
            let program = command
                .first()
                .ok_or_else(|| SpecError::new(format!("{at}.command"), "must name a program"))?;
            check_absolute(&format!("{at}.command[0]"), program)?;
        }
        (None, Some(url)) => {
            let local = ["http://127.0.0.1:", "http://localhost:"]
                .iter()
                .find_map(|prefix| url.strip_prefix(prefix))
                .and_then(|rest| {
                    let (port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                    port.parse::<u16>().ok().filter(|p| *p > 0)?;
                    (path.is_empty() || path.starts_with('/')).then_some(())
                });
            if local.is_none() || url.contains(char::is_whitespace) {
                return Err(SpecError::new(
                    format!("{at}.httpGet"),
                    format!(
                        "{url:?} is not http://127.0.0.1:PORT/PATH or http://localhost:PORT/PATH: health checks stay on the device"
                    ),
                ));
            }
        }
        _ => {
            return Err(SpecError::new(
                at,
                "must have exactly one of command and httpGet",
            ));
        }
    }
    if !(1..=MAX_SECONDS).contains(&check.interval_seconds) {
        return Err(SpecError::new(
            format!("{at}.intervalSeconds"),
            format!("must be 1 to {MAX_SECONDS}"),
        ));
    }
    if !(1..=check.interval_seconds).contains(&check.timeout_seconds) {
        return Err(SpecError::new(
            format!("{at}.timeoutSeconds"),
            "must be 1 to intervalSeconds",
        ));
    }
    Ok(())
}

/// A cycle in `dependsOn`, as the names along it with the first repeated
/// at the end (`a -> b -> a`); `None` if there is none.
pub fn dependency_cycle(processes: &BTreeMap<String, ProcessSpec>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        processes: &'a BTreeMap<String, ProcessSpec>,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(name) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|n| *n == name).unwrap_or(0);
                let mut cycle: Vec<String> =
                    stack[start..].iter().map(|n| (*n).to_owned()).collect();
                cycle.push(name.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(name, Mark::Visiting);
        stack.push(name);
        for dependency in processes.get(name).map_or(&[][..], |p| &p.depends_on) {
            if processes.contains_key(dependency)
                && let Some(cycle) = visit(dependency, processes, marks, stack)
            {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(name, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    processes
        .keys()
        .find_map(|name| visit(name, processes, &mut marks, &mut Vec::new()))
}

/// The processes in an order that starts every dependency before the
/// processes that depend on it (by name where the order is free). Assumes
/// no cycle ([`validate`] refuses them); a name in a cycle comes last.
pub fn start_order(processes: &BTreeMap<String, ProcessSpec>) -> Vec<String> {
    let mut order: Vec<String> = Vec::with_capacity(processes.len());
    let mut placed = BTreeSet::new();
    while order.len() < processes.len() {
        let ready: Vec<&String> = processes
            .iter()
            .filter(|(name, process)| {
                !placed.contains(*name)
                    && process
                        .depends_on
                        .iter()
                        .all(|d| placed.contains(d) || !processes.contains_key(d))
            })
            .map(|(name, _)| name)
            .collect();
        if ready.is_empty() {
            order.extend(processes.keys().filter(|n| !placed.contains(*n)).cloned());
            break;
        }
        for name in ready {
            placed.insert(name.clone());
            order.push(name.clone());
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn check(deployment: Value) -> Result<(), SpecError> {
        super::super::validate("spec.deployments", &json!({ "app": deployment }))
    }

    fn err(deployment: Value) -> SpecError {
        check(deployment).expect_err("refused")
    }

    #[test]
    fn a_full_process_parses_with_its_defaults() {
        let deployment = json!({
            "version": "v1",
            "processes": {
                "db": {"execCmd": "/usr/bin/db"},
                "web": {
                    "execCmd": "server",
                    "execArgs": ["--port", "8080"],
                    "env": {"MODE": "edge"},
                    "inheritEnv": true,
                    "restart": "on-failure",
                    "restartLimit": 3,
                    "restartPauseSeconds": 2,
                    "dependsOn": ["db"],
                    "restartOnDependencyFail": true,
                    "healthCheck": {"httpGet": "http://127.0.0.1:8080/healthz", "intervalSeconds": 5},
                    "startTimeoutSeconds": 20,
                    "artifacts": [{"url": "https://tetherd.example/a/server", "sha256": "a".repeat(64), "name": "server"}],
                    "configFiles": ["web-conf"]
                }
            },
            "configFiles": {"web-conf": {"path": "/etc/web.conf", "mode": "0640", "template": "port={{ values.port }}"}},
            "values": {"port": 8080}
        });
        check(deployment.clone()).expect("valid");
        let parsed: DeploymentSpec = serde_json::from_value(deployment).expect("parses");
        let db = &parsed.processes["db"];
        assert_eq!(db.restart, RestartPolicy::Always);
        assert_eq!(db.restart_pause_seconds, 1);
        assert_eq!(db.start_timeout_seconds, 30);
        let web = &parsed.processes["web"];
        assert_eq!(web.restart, RestartPolicy::OnFailure);
        assert_eq!(web.artifacts[0].mode, "0755");
        assert_eq!(web.health_check.as_ref().expect("check").timeout_seconds, 5);
        assert_eq!(parsed.config_files["web-conf"].mode, "0640");
        assert_eq!(start_order(&parsed.processes), ["db", "web"]);
    }

    #[test]
    fn a_cycle_in_depends_on_is_named() {
        let e = err(json!({"version": "1", "processes": {
            "a": {"execCmd": "/bin/a", "dependsOn": ["c"]},
            "b": {"execCmd": "/bin/b", "dependsOn": ["a"]},
            "c": {"execCmd": "/bin/c", "dependsOn": ["b"]},
            "d": {"execCmd": "/bin/d"}
        }}));
        assert_eq!(e.path, "spec.deployments.app.processes.a.dependsOn");
        assert!(e.message.contains("a -> c -> b -> a"), "{e}");
    }

    #[test]
    fn dependencies_must_exist_and_not_be_the_process_itself() {
        let e = err(
            json!({"version": "1", "processes": {"a": {"execCmd": "/bin/a", "dependsOn": ["nope"]}}}),
        );
        assert_eq!(e.path, "spec.deployments.app.processes.a.dependsOn[0]");
        assert!(
            e.message.contains("not a process of this deployment"),
            "{e}"
        );
        let e = err(
            json!({"version": "1", "processes": {"a": {"execCmd": "/bin/a", "dependsOn": ["a"]}}}),
        );
        assert!(e.message.contains("itself"), "{e}");
    }

    #[test]
    fn order_starts_dependencies_first() {
        let processes: BTreeMap<String, ProcessSpec> = serde_json::from_value(json!({
            "a": {"execCmd": "/a", "dependsOn": ["c"]},
            "b": {"execCmd": "/b"},
            "c": {"execCmd": "/c", "dependsOn": ["b"]}
        }))
        .expect("parses");
        assert_eq!(start_order(&processes), ["b", "c", "a"]);
        assert_eq!(dependency_cycle(&processes), None);
    }

    #[test]
    fn bad_fields_are_refused_with_their_path() {
        let cases = [
            (
                json!({"a": {"execCmd": "bin/a"}}),
                "processes.a.execCmd",
                "neither an absolute",
            ),
            (
                json!({"a": {"execCmd": "/bin/../a"}}),
                "processes.a.execCmd",
                "absolute",
            ),
            (
                json!({"a": {"execCmd": "/a", "restartLimit": 100000}}),
                "processes.a.restartLimit",
                "at most",
            ),
            (
                json!({"a": {"execCmd": "/a", "restartPauseSeconds": 100000}}),
                "processes.a.restartPauseSeconds",
                "at most",
            ),
            (
                json!({"a": {"execCmd": "/a", "startTimeoutSeconds": 0}}),
                "processes.a.startTimeoutSeconds",
                "1 to",
            ),
            (
                json!({"a": {"execCmd": "x", "artifacts": [{"url": "http://h/x", "sha256": "a".repeat(64), "name": "x"}]}}),
                "processes.a.artifacts[0].url",
                "https://",
            ),
            (
                json!({"a": {"execCmd": "x", "artifacts": [{"url": "https://user@h/x", "sha256": "a".repeat(64), "name": "x"}]}}),
                "processes.a.artifacts[0].url",
                "https://",
            ),
            (
                json!({"a": {"execCmd": "x", "artifacts": [{"url": "https://h/x", "sha256": "ABC", "name": "x"}]}}),
                "processes.a.artifacts[0].sha256",
                "64 lowercase hex",
            ),
            (
                json!({"a": {"execCmd": "x", "artifacts": [{"url": "https://h/x", "sha256": "a".repeat(64), "name": "../x"}]}}),
                "processes.a.artifacts[0].name",
                "not a file name",
            ),
            (
                json!({"a": {"execCmd": "x", "artifacts": [{"url": "https://h/x", "sha256": "a".repeat(64), "name": "x", "mode": "10000"}]}}),
                "processes.a.artifacts[0].mode",
                "octal",
            ),
            (
                json!({"a": {"execCmd": "/a", "configFiles": ["nope"]}}),
                "processes.a.configFiles[0]",
                "not a config file",
            ),
            (
                json!({"a": {"execCmd": "/a", "env": {"A=B": "x"}}}),
                "processes.a.env.A=B",
                "environment variable",
            ),
            (
                json!({"a": {"execCmd": "/a", "restart": "sometimes"}}),
                "",
                "sometimes",
            ),
            (
                json!({"a": {"execCmd": "/a", "healthCheck": {"httpGet": "http://10.0.0.1:80/"}}}),
                "processes.a.healthCheck.httpGet",
                "stay on the device",
            ),
            (
                json!({"a": {"execCmd": "/a", "healthCheck": {}}}),
                "processes.a.healthCheck",
                "exactly one",
            ),
            (
                json!({"a": {"execCmd": "/a", "healthCheck": {"command": ["/bin/true"], "intervalSeconds": 2, "timeoutSeconds": 3}}}),
                "processes.a.healthCheck.timeoutSeconds",
                "intervalSeconds",
            ),
            (
                json!({"A": {"execCmd": "/a"}}),
                "processes.A",
                "not a valid name",
            ),
        ];
        for (processes, path, message) in cases {
            let e = err(json!({"version": "1", "processes": processes}));
            if !path.is_empty() {
                assert_eq!(e.path, format!("spec.deployments.app.{path}"), "{e}");
            }
            assert!(e.message.contains(message), "{e}");
        }
    }

    #[test]
    fn config_files_need_a_normalized_path_a_mode_and_a_template_that_compiles() {
        let cases = [
            (json!({"path": "etc/x", "template": ""}), "path", "absolute"),
            (
                json!({"path": "/etc/../x", "template": ""}),
                "path",
                "normalized",
            ),
            (
                json!({"path": "/etc//x", "template": ""}),
                "path",
                "normalized",
            ),
            (
                json!({"path": "/etc/x/", "template": ""}),
                "path",
                "normalized",
            ),
            (
                json!({"path": "/etc/x", "mode": "rw", "template": ""}),
                "mode",
                "octal",
            ),
            (
                json!({"path": "/etc/x", "mode": 420, "template": ""}),
                "",
                "string",
            ),
            (
                json!({"path": "/etc/x", "template": "{% for %}"}),
                "template",
                "not a valid template",
            ),
            (
                json!({"path": "/etc/x", "template": "x".repeat(template::MAX_TEMPLATE_BYTES + 1)}),
                "template",
                "allowed",
            ),
        ];
        for (file, field, message) in cases {
            let e = err(json!({"version": "1", "configFiles": {"conf": file}}));
            if !field.is_empty() {
                assert_eq!(
                    e.path,
                    format!("spec.deployments.app.configFiles.conf.{field}"),
                    "{e}"
                );
            }
            assert!(e.message.contains(message), "{e}");
        }
        let e = err(json!({"version": "1", "configFiles": {
            "a": {"path": "/etc/x", "template": ""},
            "b": {"path": "/etc/x", "template": ""}
        }}));
        assert_eq!(e.path, "spec.deployments.app.configFiles.b.path");
    }

    #[test]
    fn modes_and_hosts() {
        assert_eq!(parse_mode("0640"), Some(0o640));
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("7777"), Some(0o7777));
        for bad in ["", "64", "0o644", "0648", "17777", "-644"] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
        assert_eq!(
            https_host("https://tetherd.example:8443/a"),
            Some("tetherd.example")
        );
        assert_eq!(https_host("https://[::1]:8443/a"), Some("::1"));
        assert_eq!(https_host("https://127.0.0.1"), Some("127.0.0.1"));
        for bad in ["http://h/a", "https:///a", "https://u:p@h/a", "ftp://h"] {
            assert_eq!(https_host(bad), None, "{bad}");
        }
    }
}
