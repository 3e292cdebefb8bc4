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
use tokio::io::AsyncWriteExt;

/// The helper's file name, installed beside `tether-agent`.
pub const HELPER_NAME: &str = "tether-agent-render";
/// Far more than a render takes: the templates' fuel limit ends loops.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

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
    let output = async {
        // The helper reads all of its input before it writes: no deadlock.
        stdin.write_all(&input).await?;
        drop(stdin);
        child.wait_with_output().await
    };
    let output = tokio::time::timeout(HELPER_TIMEOUT, output)
        .await
        .map_err(|_| failed(format!("did not answer in {} s", HELPER_TIMEOUT.as_secs())))?
        .map_err(|e| failed(format!("failed: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(format!(
            "failed ({}): {}",
            output.status,
            stderr.trim()
        )));
    }
    match serde_json::from_slice(&output.stdout) {
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
}
