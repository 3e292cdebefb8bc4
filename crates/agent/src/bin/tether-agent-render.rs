//! tether-agent-render: renders a deployment's config file templates for
//! tether-agent's supervisor (`deployments::supervisor::render`), so that
//! the template engine is not in tether-agent's idle memory. It reads one
//! JSON request on stdin and prints one JSON reply: every file's content,
//! or the first template that failed and why.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use tether_agent::deployments::supervisor::render::{Request, render_all};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tether-agent-render: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    if std::env::args_os().len() > 1 {
        return Err(
            "takes no arguments: tether-agent writes the templates as JSON on its stdin".into(),
        );
    }
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("cannot read the request on stdin: {e}"))?;
    let request: Request = serde_json::from_slice(&input)
        .map_err(|e| format!("the request on stdin is not one: {e}"))?;
    let reply = serde_json::to_vec(&render_all(&request))
        .map_err(|e| format!("cannot write the reply: {e}"))?;
    std::io::stdout()
        .write_all(&reply)
        .map_err(|e| format!("cannot write the reply: {e}"))
}
