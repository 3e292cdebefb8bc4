//! `open-tunnel` (tether's own, ADR 0021): dial the tunnel tetherd named
//! and serve it in the background; the event says whether it is up.

use std::future::Future;
use std::sync::Arc;

use serde_json::{Value, json};
use tether_proto::tunnel::{Kind, OpenTunnel};

use super::{ActionError, Answer, Kubernetes};
use crate::clock::ServerClock;
use crate::management_shell::{Settings, ShellConfig};
use crate::tunnel::{self, TunnelPolicy};

fn parse(input: &Value) -> Result<OpenTunnel, ActionError> {
    let open: OpenTunnel = serde_json::from_value(input.clone())
        .map_err(|e| ActionError::invalid("$", e.to_string()))?;
    match open.kind {
        Kind::Exec if open.command.is_empty() => {
            Err(ActionError::invalid("$.command", "exec needs a command"))
        }
        Kind::Forward if open.target.is_none() => {
            Err(ActionError::invalid("$.target", "forward needs HOST:PORT"))
        }
        Kind::Upload | Kind::Download
            if !open
                .path
                .as_deref()
                .is_some_and(|path| path.starts_with('/')) =>
        {
            Err(ActionError::invalid("$.path", "needs an absolute path"))
        }
        Kind::Upload if open.size.is_none() => Err(ActionError::invalid(
            "$.size",
            "upload needs the file's size",
        )),
        Kind::Shell => match &open.terminal {
            None => Err(ActionError::invalid(
                "$.terminal",
                "shell needs its terminal: term, cols and rows",
            )),
            Some(terminal) => terminal
                .validate()
                .map(|()| open.clone())
                .map_err(|e| ActionError::invalid("$.terminal", e.to_string())),
        },
        _ => Ok(open),
    }
}

/// Checks the input and this device's `policy` now; the returned work
/// dials (trusting only tetherd's CA, `ca_pem`), starts serving the tunnel
/// on its own task and answers once the tunnel is up. Tunnels run side by
/// side: each is busy with its own URL only. A `kube` tunnel needs the
/// cluster.
pub fn prepare(
    input: &Value,
    policy: &TunnelPolicy,
    ca_pem: &str,
    clock: &Arc<ServerClock>,
    kubernetes: &Kubernetes,
    shell: &ShellConfig,
) -> Result<
    (
        String,
        impl Future<Output = Result<Answer, ActionError>> + Send + 'static,
    ),
    ActionError,
> {
    let open = parse(input)?;
    policy.permits(open.kind)?;
    // Held from now until the tunnel ends (or fails to open).
    let slot = policy.slots.take()?;
    let max_copy_bytes = policy.max_copy_bytes;
    if open.kind == Kind::Kube && kubernetes.config.is_none() {
        return Err(ActionError::NoCluster);
    }
    let kubernetes = kubernetes.clone();
    let tls = Arc::new(
        crate::tls::server_tls_config(ca_pem, clock.clone()).map_err(ActionError::TunnelTls)?,
    );
    let busy = format!("{} {}", tether_proto::tunnel::OPEN_TUNNEL, open.url);
    let shell = shell.clone();
    Ok((busy, async move {
        let socket = tunnel::dial(&open.url, &open.token, tls).await?;
        let kind = open.kind.as_str();
        let serving: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match open.kind {
            Kind::Exec => Box::pin(tunnel::exec::serve(socket, open.command)),
            Kind::Forward => Box::pin(tunnel::forward::serve(
                socket,
                open.target.unwrap_or_default(),
            )),
            Kind::Upload => Box::pin(tunnel::copy::receive(
                socket,
                open.path.unwrap_or_default(),
                open.size.unwrap_or_default(),
                open.mode,
                max_copy_bytes,
            )),
            Kind::Download => Box::pin(tunnel::copy::send(
                socket,
                open.path.unwrap_or_default(),
                max_copy_bytes,
            )),
            Kind::Shell => {
                // Present: checked by `parse`.
                let Some(terminal) = open.terminal else {
                    return Err(ActionError::invalid(
                        "$.terminal",
                        "shell needs its terminal",
                    ));
                };
                let size = crate::terminal::Size {
                    cols: terminal.cols,
                    rows: terminal.rows,
                };
                Box::pin(tunnel::shell::serve(
                    socket,
                    open.command,
                    terminal.term,
                    size,
                ))
            }
            Kind::Kube => Box::pin(tunnel::kube::serve(socket, kubernetes)),
            Kind::Ssh => {
                let settings = Settings {
                    authorized_keys: open.authorized_keys,
                    password_hash: open.password_hash,
                    kubeconfig: crate::management_shell::cluster_kubeconfig(&kubernetes).await,
                    ..Settings::for_shell(&shell)
                };
                Box::pin(tunnel::ssh::serve(socket, shell, settings))
            }
        };
        tokio::spawn(async move {
            serving.await;
            drop(slot);
        });
        Ok(Answer::from(json!({"kind": kind})))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_needs_what_it_runs_or_reaches() {
        let base = json!({"url": "wss://h:1/api/v1/tunnels/t", "token": "x"});
        let with = |extra: Value| {
            let mut input = base.clone();
            input
                .as_object_mut()
                .expect("an object")
                .extend(extra.as_object().cloned().unwrap_or_default());
            parse(&input)
        };
        assert!(with(json!({"kind": "exec", "command": ["true"]})).is_ok());
        assert!(with(json!({"kind": "forward", "target": "127.0.0.1:80"})).is_ok());
        assert!(with(json!({"kind": "ssh", "authorizedKeys": ["ssh-ed25519 AAAA"]})).is_ok());
        let error = with(json!({"kind": "exec"})).expect_err("no command");
        assert!(error.to_string().starts_with("$.command"), "{error}");
        let error = with(json!({"kind": "forward"})).expect_err("no target");
        assert!(error.to_string().starts_with("$.target"), "{error}");
        let error =
            with(json!({"kind": "upload", "path": "etc/x", "size": 1})).expect_err("relative");
        assert!(error.to_string().starts_with("$.path"), "{error}");
        let error = with(json!({"kind": "upload", "path": "/etc/x"})).expect_err("no size");
        assert!(error.to_string().starts_with("$.size"), "{error}");
        assert!(with(json!({"kind": "download", "path": "/etc/x"})).is_ok());
        let terminal = json!({"term": "xterm", "cols": 80, "rows": 24});
        assert!(with(json!({"kind": "shell", "terminal": terminal})).is_ok());
        let error = with(json!({"kind": "shell"})).expect_err("no terminal");
        assert!(error.to_string().starts_with("$.terminal"), "{error}");
        let tiny = json!({"term": "xterm", "cols": 0, "rows": 24});
        let error = with(json!({"kind": "shell", "terminal": tiny})).expect_err("no columns");
        assert!(error.to_string().contains("cols 0"), "{error}");
        let error = with(json!({"kind": "shel"})).expect_err("unknown kind");
        assert_eq!(error.status_code(), 400);
    }
}
