//! Config file templates are rendered by the helper binary
//! `tether-agent-render`, one process per deployment version that has
//! config files, as restore-command's work runs in its helper (ADR 0020):
//! the template engine (minijinja) is then not in `tether-agent`'s binary,
//! whose code is most of its idle memory (BENCHMARKS.md). The helper reads
//! a [`Request`] as JSON on stdin and writes a [`Reply`] as JSON on stdout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tether_proto::template;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The helper's file name, installed beside `tether-agent`.
pub const HELPER_NAME: &str = "tether-agent-render";
/// Far more than a render takes: the templates' fuel limit ends loops.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of a failing helper's complaint kept for the reported error.
const STDERR_LIMIT: u64 = 64 * 1024;

/// What to render: each template by config file name, all with `context`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub context: Value,
    pub templates: BTreeMap<String, String>,
}

/// The helper's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    /// Each file's content, by config file name.
    Rendered(BTreeMap<String, String>),
    /// The first template that could not be rendered, and why.
    Failed { name: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The caller names the file: it knows its path.
    #[error("{reason}")]
    Template { name: String, reason: String },
    #[error("the render helper {} {problem} (is it installed beside tether-agent? --render-helper names another)", helper.display())]
    Helper { helper: PathBuf, problem: String },
}

/// Renders every template of `request`, in the helper.
pub fn render_all(request: &Request) -> Reply {
    let mut rendered = BTreeMap::new();
    for (name, source) in &request.templates {
        match template::render(name, source, &request.context) {
            Ok(content) => {
                rendered.insert(name.clone(), content);
            }
            Err(error) => {
                return Reply::Failed {
                    name: name.clone(),
                    reason: error.to_string(),
                };
            }
        }
    }
    Reply::Rendered(rendered)
}

/// Renders `request` by running `helper`.
pub async fn with_helper(
    helper: &Path,
    request: &Request,
) -> Result<BTreeMap<String, String>, RenderError> {
    let failed = |problem: String| RenderError::Helper {
        helper: helper.to_owned(),
        problem,
    };
    let input = serde_json::to_vec(request).map_err(|e| failed(e.to_string()))?;
    let mut child = tokio::process::Command::new(helper)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot be started: {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| failed("has no stdin".into()))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(failed("has no stdout or stderr".into()));
    };
    // What a reply can be at most: every file at its largest, escaped in
    // JSON. The agent reads no more, whatever a broken helper writes.
    let reply_limit = (request.templates.len() as u64)
        .saturating_mul(template::MAX_OUTPUT_BYTES as u64 * 6)
        .saturating_add(64 * 1024);
    let output = async {
        // The helper reads all of its input before it writes: no deadlock.
        stdin.write_all(&input).await?;
        drop(stdin);
        // The complaint is read alongside, so a helper writing to both
        // never blocks on either; it ends when the helper does.
        let complaint = tokio::spawn(async move {
            let mut complaint = Vec::new();
            let _ = stderr.take(STDERR_LIMIT).read_to_end(&mut complaint).await;
            complaint
        });
        let mut reply = Vec::new();
        stdout.take(reply_limit + 1).read_to_end(&mut reply).await?;
        if reply.len() as u64 > reply_limit {
            // Dropping the child kills it (`kill_on_drop`).
            return Ok(Err(format!("answered more than {reply_limit} bytes")));
        }
        let status = child.wait().await?;
        let complaint = complaint.await.unwrap_or_default();
        Ok::<_, std::io::Error>(Ok((status, reply, complaint)))
    };
    let (status, reply, complaint) = tokio::time::timeout(HELPER_TIMEOUT, output)
        .await
        .map_err(|_| failed(format!("did not answer in {} s", HELPER_TIMEOUT.as_secs())))?
        .map_err(|e| failed(format!("failed: {e}")))?
        .map_err(failed)?;
    if !status.success() {
        let stderr = String::from_utf8_lossy(&complaint);
        return Err(failed(format!("failed ({status}): {}", stderr.trim())));
    }
    match serde_json::from_slice(&reply) {
        Ok(Reply::Rendered(rendered)) => Ok(rendered),
        Ok(Reply::Failed { name, reason }) => Err(RenderError::Template { name, reason }),
        Err(e) => Err(failed(format!("answered something else than a reply: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_template_is_rendered_or_the_first_failure_is_named() {
        let request = |templates: &[(&str, &str)]| Request {
            context: json!({"values": {"port": 8080}}),
            templates: templates
                .iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect(),
        };
        assert_eq!(
            render_all(&request(&[("a", "port={{ values.port }}"), ("b", "x")])),
            Reply::Rendered(
                [
                    ("a".to_owned(), "port=8080".to_owned()),
                    ("b".into(), "x".into())
                ]
                .into()
            )
        );
        let Reply::Failed { name, reason } =
            render_all(&request(&[("a", "ok"), ("b", "{{ values.prot }}")]))
        else {
            panic!("rendered an undefined value");
        };
        assert_eq!(name, "b");
        assert!(reason.contains("undefined"), "{reason}");
        let Reply::Failed { reason, .. } = render_all(&request(&[("a", "{% if x %}")])) else {
            panic!("rendered a syntax error");
        };
        assert!(reason.contains("not a valid template"), "{reason}");
    }

    #[tokio::test]
    async fn a_missing_helper_is_named() {
        let request = Request {
            context: json!({}),
            templates: BTreeMap::new(),
        };
        let err = with_helper(Path::new("/nonexistent/tether-agent-render"), &request)
            .await
            .expect_err("no helper");
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/tether-agent-render cannot be started"),
            "{text}"
        );
        assert!(text.contains("--render-helper"), "{text}");
    }

    /// A broken helper flooding its output is cut off at what a reply can
    /// be, not read into the agent's memory.
    #[tokio::test]
    async fn a_helper_answering_more_than_a_reply_can_be_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let helper = dir.path().join("flooding-helper");
        std::fs::write(
            &helper,
            "#!/bin/sh\ncat >/dev/null\nhead -c 1000000 /dev/zero\n",
        )
        .expect("written");
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("mode");
        let request = Request {
            context: json!({}),
            templates: BTreeMap::new(),
        };
        let error = with_helper(&helper, &request).await.expect_err("refused");
        assert!(
            error.to_string().contains("answered more than 65536 bytes"),
            "{error}"
        );
    }
}
