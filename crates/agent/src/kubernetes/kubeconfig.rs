//! The kubeconfig file, typed for the fields tether reads and writes:
//! clusters (server, CA), users (bearer token or client certificate) and
//! contexts. Read in host mode (k3s writes `/etc/rancher/k3s/k3s.yaml`),
//! written for `kubectl` and by `retrieve-kubeconfig`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    #[serde(default = "v1", rename = "apiVersion")]
    pub api_version: String,
    #[serde(default = "config_kind")]
    pub kind: String,
    #[serde(default)]
    pub current_context: String,
    #[serde(default)]
    pub clusters: Vec<NamedCluster>,
    #[serde(default)]
    pub users: Vec<NamedUser>,
    #[serde(default)]
    pub contexts: Vec<NamedContext>,
}

fn v1() -> String {
    "v1".to_owned()
}

fn config_kind() -> String {
    "Config".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: Cluster,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    #[serde(default)]
    pub user: User,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: Context,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
    /// Read only to refuse it: the agent always verifies the server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_tls_verify: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct User {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// A credential plugin (cloud clusters); read only to refuse it clearly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<serde_json::Value>,
    /// The older plugin form (`auth-provider`); refused like `exec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_provider: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub cluster: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Kubeconfig {
    /// One cluster, one user, one context, all named `name`.
    pub fn single(name: &str, cluster: Cluster, user: User) -> Self {
        Self {
            api_version: v1(),
            kind: config_kind(),
            current_context: name.to_owned(),
            clusters: vec![NamedCluster {
                name: name.to_owned(),
                cluster,
            }],
            users: vec![NamedUser {
                name: name.to_owned(),
                user,
            }],
            contexts: vec![NamedContext {
                name: name.to_owned(),
                context: Context {
                    cluster: name.to_owned(),
                    user: name.to_owned(),
                    namespace: None,
                },
            }],
        }
    }

    /// The current context's cluster (with its name) and user.
    pub fn current(&self) -> Result<(&str, &Cluster, &User), String> {
        let context = if self.current_context.is_empty() {
            self.contexts.first()
        } else {
            self.contexts
                .iter()
                .find(|c| c.name == self.current_context)
        }
        .ok_or_else(|| format!("no context {:?}", self.current_context))?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == context.context.cluster)
            .ok_or_else(|| format!("no cluster {:?}", context.context.cluster))?;
        let user = self
            .users
            .iter()
            .find(|u| u.name == context.context.user)
            .ok_or_else(|| format!("no user {:?}", context.context.user))?;
        Ok((&cluster.name, &cluster.cluster, &user.user))
    }
}

/// Standard base64, as kubeconfig `*-data` fields hold it.
pub fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode(field: &str, text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("{field} is not base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What k3s writes to /etc/rancher/k3s/k3s.yaml (shortened).
    const K3S_YAML: &str = "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0E=
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
";

    #[test]
    fn k3s_kubeconfig_parses_to_its_current_cluster_and_user() {
        let config: Kubeconfig = serde_yaml::from_str(K3S_YAML).expect("parses");
        let (name, cluster, user) = config.current().expect("complete");
        assert_eq!(name, "default");
        assert_eq!(cluster.server, "https://127.0.0.1:6443");
        assert_eq!(
            decode(
                "ca",
                cluster.certificate_authority_data.as_deref().expect("ca")
            ),
            Ok(b"CA".to_vec())
        );
        assert_eq!(user.client_key_data.as_deref(), Some("S0VZ"));
        assert_eq!(user.token, None);
    }

    #[test]
    fn a_written_kubeconfig_reads_back_the_same_as_yaml_and_json() {
        let config = Kubeconfig::single(
            "edge",
            Cluster {
                server: "https://h:6443".into(),
                certificate_authority_data: Some(encode(b"CA")),
                certificate_authority: None,
                insecure_skip_tls_verify: false,
            },
            User {
                token: Some("t".into()),
                ..User::default()
            },
        );
        let yaml = serde_yaml::to_string(&config).expect("yaml");
        assert!(yaml.contains("current-context: edge"), "{yaml}");
        assert!(yaml.contains("apiVersion: v1"), "{yaml}");
        let back: Kubeconfig = serde_yaml::from_str(&yaml).expect("reads");
        assert_eq!(back, config);
        let json = serde_json::to_string(&config).expect("json");
        assert_eq!(
            serde_json::from_str::<Kubeconfig>(&json).expect("reads"),
            config
        );
    }

    #[test]
    fn a_context_naming_a_missing_cluster_is_named() {
        let mut config: Kubeconfig = serde_yaml::from_str(K3S_YAML).expect("parses");
        config.clusters.clear();
        assert_eq!(
            config.current().map(|_| ()),
            Err("no cluster \"default\"".into())
        );
    }
}
