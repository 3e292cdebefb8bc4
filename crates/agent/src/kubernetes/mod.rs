//! The Kubernetes cluster the agent manages, if any (ADR 0016): where its
//! API server is and how the agent authenticates, in one of two modes.
//!
//! - `cluster`: the agent runs in the cluster as a pod; the API server is
//!   `KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT` and the credentials
//!   are the pod's ServiceAccount token and CA, mounted under
//!   `/var/run/secrets/kubernetes.io/serviceaccount/`.
//! - `host`: the agent runs on the k3s host; a kubeconfig file names the
//!   API server, its CA and a bearer token or client certificate.
//!
//! Credentials are read when an action needs them, not held: the pod's
//! token is rotated by the kubelet, k3s may write its kubeconfig after the
//! agent started, and the idle agent keeps no certificates in memory.

pub mod admin;
pub mod client;
pub mod identity;
pub mod kubeconfig;
pub mod operator;
pub mod token_cache;

use std::path::{Path, PathBuf};

use tether_proto::spec::KubernetesFacts;

pub use client::{Client, KubeError, Reply};
use kubeconfig::Kubeconfig;

/// Where Kubernetes puts a pod's ServiceAccount credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The agent's namespace when the pod's ServiceAccount does not name one.
pub const DEFAULT_NAMESPACE: &str = "tether-system";
/// Where k3s writes its admin kubeconfig.
pub const K3S_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// In the cluster, with the pod's ServiceAccount.
    Cluster,
    /// On the host, with a kubeconfig file.
    Host,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Cluster => "cluster",
            Mode::Host => "host",
        }
    }
}

/// How to reach the cluster, as configured (see `config.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    pub mode: Mode,
    /// `cluster` mode: `KUBERNETES_SERVICE_HOST` and `_PORT`.
    pub service_host: Option<String>,
    pub service_port: Option<String>,
    /// `cluster` mode: the directory holding `token` and `ca.crt`.
    pub service_account_dir: PathBuf,
    /// `host` mode: the kubeconfig file.
    pub kubeconfig: PathBuf,
    /// The cluster's name in the device's facts and in written kubeconfigs;
    /// default: the kubeconfig's cluster name (`host`), `in-cluster` (`cluster`).
    pub cluster_name: Option<String>,
}

/// How the agent proves who it is to the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Token(String),
    ClientCertificate {
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
    },
    /// Neither: the API server decides (k3s refuses anonymous requests).
    Anonymous,
}

/// Everything needed for one request: read fresh for each action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub mode: Mode,
    pub cluster_name: String,
    /// `https://host:port`, without a trailing slash.
    pub server: String,
    /// PEM; `None` trusts the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    pub auth: Auth,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set: in cluster mode the agent must run in a pod"
    )]
    NotInPod,
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a kubeconfig")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("kubeconfig {path}: {problem}")]
    Kubeconfig { path: PathBuf, problem: String },
}

impl KubernetesConfig {
    /// The agent's namespace: the pod's ServiceAccount's `namespace` file,
    /// else [`DEFAULT_NAMESPACE`].
    pub fn pod_namespace(&self) -> String {
        std::fs::read_to_string(self.service_account_dir.join("namespace"))
            .ok()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
    }

    /// Reads the credentials as they are now.
    pub fn access(&self) -> Result<Access, AccessError> {
        match self.mode {
            Mode::Cluster => self.in_cluster(),
            Mode::Host => self.with_kubeconfig(),
        }
    }

    fn in_cluster(&self) -> Result<Access, AccessError> {
        let (Some(host), Some(port)) = (&self.service_host, &self.service_port) else {
            return Err(AccessError::NotInPod);
        };
        // An IPv6 service address needs brackets in a URL.
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let token = read(&self.service_account_dir.join("token"))?;
        let ca = read(&self.service_account_dir.join("ca.crt"))?;
        Ok(Access {
            mode: Mode::Cluster,
            cluster_name: self
                .cluster_name
                .clone()
                .unwrap_or_else(|| "in-cluster".to_owned()),
            server: format!("https://{host}:{port}"),
            ca_pem: Some(ca),
            auth: Auth::Token(String::from_utf8_lossy(&token).trim().to_owned()),
        })
    }

    fn with_kubeconfig(&self) -> Result<Access, AccessError> {
        let path = &self.kubeconfig;
        let text = read(path)?;
        let config: Kubeconfig =
            serde_yaml::from_slice(&text).map_err(|source| AccessError::Parse {
                path: path.clone(),
                source,
            })?;
        let problem = |problem: String| AccessError::Kubeconfig {
            path: path.clone(),
            problem,
        };
        let (name, cluster, user) = config.current().map_err(problem)?;
        // Settings the agent does not follow are refused by name rather
        // than ignored: ignored, a token would go out in the clear, to an
        // unverified server, or not at all.
        if !cluster.server.starts_with("https://") {
            return Err(problem(format!(
                "the server {:?} is not https: the agent sends its credentials only over TLS",
                cluster.server
            )));
        }
        if cluster.insecure_skip_tls_verify {
            return Err(problem(
                "insecure-skip-tls-verify is not followed: give the cluster's CA (certificate-authority-data) instead".to_owned(),
            ));
        }
        if user.auth_provider.is_some() {
            return Err(problem(
                "credential plugins (auth-provider) are not supported: give the agent a kubeconfig with a token or a client certificate".to_owned(),
            ));
        }
        // Relative file names in a kubeconfig are relative to the file.
        let base = path.parent().unwrap_or(Path::new("/"));
        let data_or_file =
            |data: &Option<String>, file: &Option<String>, field: &str| match (data, file) {
                (Some(data), _) => kubeconfig::decode(field, data).map(Some).map_err(problem),
                (None, Some(file)) => read(&base.join(file)).map(Some),
                (None, None) => Ok(None),
            };
        let ca_pem = data_or_file(
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
            "certificate-authority-data",
        )?;
        let cert = data_or_file(
            &user.client_certificate_data,
            &user.client_certificate,
            "client-certificate-data",
        )?;
        let key = data_or_file(&user.client_key_data, &user.client_key, "client-key-data")?;
        let auth = match (&user.token, &user.token_file, cert, key) {
            (Some(token), _, _, _) => Auth::Token(token.clone()),
            (None, Some(file), _, _) => Auth::Token(
                String::from_utf8_lossy(&read(&base.join(file))?)
                    .trim()
                    .to_owned(),
            ),
            (None, None, Some(cert_pem), Some(key_pem)) => {
                Auth::ClientCertificate { cert_pem, key_pem }
            }
            (None, None, Some(_), None) | (None, None, None, Some(_)) => {
                return Err(problem(
                    "a client certificate needs both certificate and key".to_owned(),
                ));
            }
            (None, None, None, None) if user.exec.is_some() => {
                return Err(problem(
                    "credential plugins (exec) are not supported: give the agent a kubeconfig with a token or a client certificate".to_owned(),
                ));
            }
            (None, None, None, None) => Auth::Anonymous,
        };
        Ok(Access {
            mode: Mode::Host,
            cluster_name: self.cluster_name.clone().unwrap_or_else(|| name.to_owned()),
            server: cluster.server.trim_end_matches('/').to_owned(),
            ca_pem,
            auth,
        })
    }

    /// What the device reports of its cluster; what can be read of it
    /// now (the server is unknown while the credentials are unreadable).
    pub fn facts(&self) -> KubernetesFacts {
        match self.access() {
            Ok(access) => KubernetesFacts {
                mode: self.mode.as_str().to_owned(),
                cluster: access.cluster_name,
                server: Some(access.server),
            },
            Err(e) => {
                tracing::warn!(error = %crate::actions::chain(&e), "cannot read the Kubernetes credentials yet");
                KubernetesFacts {
                    mode: self.mode.as_str().to_owned(),
                    cluster: self.cluster_name.clone().unwrap_or_default(),
                    server: None,
                }
            }
        }
    }
}

impl Access {
    /// A kubeconfig with these credentials inline, for `kubectl`.
    pub fn kubeconfig(&self) -> Kubeconfig {
        let mut user = kubeconfig::User::default();
        match &self.auth {
            Auth::Token(token) => user.token = Some(token.clone()),
            Auth::ClientCertificate { cert_pem, key_pem } => {
                user.client_certificate_data = Some(kubeconfig::encode(cert_pem));
                user.client_key_data = Some(kubeconfig::encode(key_pem));
            }
            Auth::Anonymous => {}
        }
        Kubeconfig::single(&self.cluster_name, self.cluster(), user)
    }

    /// The cluster entry of a kubeconfig for this API server.
    pub fn cluster(&self) -> kubeconfig::Cluster {
        kubeconfig::Cluster {
            server: self.server.clone(),
            certificate_authority_data: self.ca_pem.as_deref().map(kubeconfig::encode),
            certificate_authority: None,
            insecure_skip_tls_verify: false,
        }
    }
}

/// Whether `name` can name an object or namespace (an RFC 1123 subdomain,
/// as the API requires); checked before it goes into a URL path.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, AccessError> {
    std::fs::read(path).map_err(|source| AccessError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(path: &Path) -> KubernetesConfig {
        KubernetesConfig {
            mode: Mode::Host,
            service_host: None,
            service_port: None,
            service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
            kubeconfig: path.to_owned(),
            cluster_name: None,
        }
    }

    #[test]
    fn names_that_could_change_a_url_are_refused() {
        assert_eq!(check_name("web-1.x"), Ok(()));
        for bad in ["", "../x", "a/b", "Web", "-a", "a?b", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn in_cluster_credentials_come_from_the_service_account_dir() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("token"), "tok\n").expect("token");
        std::fs::write(dir.path().join("ca.crt"), "PEM").expect("ca");
        let mut config = host(Path::new("/none"));
        config.mode = Mode::Cluster;
        config.service_account_dir = dir.path().to_owned();
        assert!(matches!(config.access(), Err(AccessError::NotInPod)));
        config.service_host = Some("fd00::1".into());
        config.service_port = Some("443".into());
        let access = config.access().expect("reads");
        assert_eq!(access.server, "https://[fd00::1]:443");
        assert_eq!(access.auth, Auth::Token("tok".into()));
        assert_eq!(access.cluster_name, "in-cluster");
        assert_eq!(access.ca_pem.as_deref(), Some(&b"PEM"[..]));
    }

    #[test]
    fn a_kubeconfig_gives_server_ca_and_user_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("k3s.yaml");
        std::fs::write(dir.path().join("ca.pem"), "CA").expect("ca");
        std::fs::write(
            &path,
            "clusters: [{name: edge, cluster: {server: 'https://h:6443/', certificate-authority: ca.pem}}]
users: [{name: u, user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZ}}]
contexts: [{name: c, context: {cluster: edge, user: u}}]
current-context: c
",
        )
        .expect("writes");
        let access = host(&path).access().expect("reads");
        assert_eq!(access.server, "https://h:6443");
        assert_eq!(access.cluster_name, "edge");
        assert_eq!(access.ca_pem.as_deref(), Some(&b"CA"[..]));
        assert_eq!(
            access.auth,
            Auth::ClientCertificate {
                cert_pem: b"CERT".to_vec(),
                key_pem: b"KEY".to_vec()
            }
        );
        // Written back, it is the same access.
        let written = dir.path().join("written.yaml");
        std::fs::write(
            &written,
            serde_yaml::to_string(&access.kubeconfig()).expect("yaml"),
        )
        .expect("writes");
        assert_eq!(host(&written).access().expect("reads"), access);

        std::fs::write(&path, "users: [{name: u, user: {client-key-data: S0VZ}}]\ncontexts: [{name: c, context: {cluster: edge, user: u}}]\nclusters: [{name: edge, cluster: {server: 'https://h'}}]\n").expect("writes");
        let err = host(&path).access().expect_err("no certificate");
        assert!(
            err.to_string()
                .ends_with("a client certificate needs both certificate and key"),
            "{err}"
        );
        std::fs::write(&path, "users: [{name: u, user: {exec: {command: aws}}}]\ncontexts: [{name: c, context: {cluster: edge, user: u}}]\nclusters: [{name: edge, cluster: {server: 'https://h'}}]\n").expect("writes");
        let err = host(&path).access().expect_err("a plugin");
        assert!(
            err.to_string().contains("(exec) are not supported"),
            "{err}"
        );
        let cluster_user = |cluster: &str, user: &str| {
            format!(
                "users: [{{name: u, user: {user}}}]\ncontexts: [{{name: c, context: {{cluster: edge, user: u}}}}]\nclusters: [{{name: edge, cluster: {cluster}}}]\n"
            )
        };
        for (cluster, user, named) in [
            ("{server: 'http://h:8080'}", "{token: t}", "is not https"),
            (
                "{server: 'https://h', insecure-skip-tls-verify: true}",
                "{token: t}",
                "insecure-skip-tls-verify is not followed",
            ),
            (
                "{server: 'https://h'}",
                "{auth-provider: {name: oidc}}",
                "(auth-provider) are not supported",
            ),
        ] {
            std::fs::write(&path, cluster_user(cluster, user)).expect("writes");
            let err = host(&path).access().expect_err(named);
            assert!(err.to_string().contains(named), "{err}");
        }
        std::fs::write(&path, ": not yaml [").expect("writes");
        assert!(matches!(
            host(&path).access(),
            Err(AccessError::Parse { .. })
        ));
        let err = host(&dir.path().join("missing"))
            .access()
            .expect_err("missing");
        assert!(err.to_string().starts_with("cannot read "), "{err}");
    }
}
