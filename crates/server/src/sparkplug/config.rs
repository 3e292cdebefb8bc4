//! `[sparkplug]`: where tetherd publishes the fleet as Sparkplug B, and as
//! which groups and edge nodes. Off unless `url` is set.
//!
//! Secure by default: the broker is `mqtts://` with a CA file to check it
//! by; a plain `mqtt://` URL is accepted only for a broker on this host
//! (loopback), where nothing crosses a network.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::publisher::{BrokerTransport, Credentials, SparkplugBroker};
use super::topics::{EdgeNodeId, GroupId};
use crate::config::ConfigError;

/// The label that puts a device in another Sparkplug group.
pub const DEFAULT_GROUP_LABEL: &str = "sparkplug.tether.io/group";
/// The label that puts a device under another edge node.
pub const DEFAULT_NODE_LABEL: &str = "sparkplug.tether.io/node";
const DEFAULT_GROUP: &str = "tether";
const DEFAULT_NODE: &str = "tetherd";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The `[sparkplug]` section as the file gives it; every key is optional.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSparkplug {
    url: Option<String>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    group_id: Option<String>,
    edge_node_id: Option<String>,
    group_label: Option<String>,
    node_label: Option<String>,
    interval_seconds: Option<u64>,
}

/// How tetherd proves itself to the broker, besides TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SparkplugAuth {
    Anonymous,
    /// A client certificate and key (PEM), over `mqtts://`.
    Certificate {
        cert: PathBuf,
        key: PathBuf,
    },
    /// A username, and the file holding its password (read at start).
    Password {
        username: String,
        file: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugConfig {
    pub host: String,
    pub port: u16,
    /// The CA certificates (PEM) the broker's certificate is checked by;
    /// `None`: plain MQTT to a loopback broker.
    pub ca_file: Option<PathBuf>,
    pub auth: SparkplugAuth,
    /// Where a device without the group label goes.
    pub group: GroupId,
    /// The edge node of a device without the node label.
    pub node: EdgeNodeId,
    pub group_label: String,
    pub node_label: String,
    /// How often the fleet is read and its changes published.
    pub interval: Duration,
}

fn invalid(
    key: &'static str,
    value: impl Into<String>,
    expected: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        expected: expected.into(),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl SparkplugConfig {
    /// The section, checked; `None` when `url` is not set (Sparkplug off).
    pub fn from_file(file: &FileSparkplug) -> Result<Option<Self>, ConfigError> {
        let Some(url) = &file.url else {
            let set = [
                ("sparkplug.ca_file", file.ca_file.is_some()),
                ("sparkplug.client_cert", file.client_cert.is_some()),
                ("sparkplug.client_key", file.client_key.is_some()),
                ("sparkplug.username", file.username.is_some()),
                ("sparkplug.password_file", file.password_file.is_some()),
                ("sparkplug.group_id", file.group_id.is_some()),
                ("sparkplug.edge_node_id", file.edge_node_id.is_some()),
                ("sparkplug.group_label", file.group_label.is_some()),
                ("sparkplug.node_label", file.node_label.is_some()),
                (
                    "sparkplug.interval_seconds",
                    file.interval_seconds.is_some(),
                ),
            ];
            return match set.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(invalid(
                    key,
                    "set",
                    "Sparkplug is off without sparkplug.url; set the broker's mqtts://HOST:PORT",
                )),
                None => Ok(None),
            };
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(invalid(
                "sparkplug.url",
                url,
                "use mqtts://HOST:PORT (or mqtt://127.0.0.1:PORT for a broker on this host)",
            ));
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| invalid("sparkplug.url", url, "no port; use mqtts://HOST:PORT"))?;
        if host.is_empty() || host.contains(['/', '[', ']', '@', ' ']) {
            return Err(invalid(
                "sparkplug.url",
                url,
                "not a host name or IPv4 address; use mqtts://HOST:PORT",
            ));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| invalid("sparkplug.url", url, "the port is not 1 to 65535"))?;
        let ca_file = match (tls, &file.ca_file) {
            (true, Some(ca)) => Some(ca.clone()),
            (true, None) => {
                return Err(invalid(
                    "sparkplug.ca_file",
                    "missing",
                    "an mqtts:// broker needs the CA file (PEM) its certificate is checked by",
                ));
            }
            (false, _) if !is_loopback(host) => {
                return Err(invalid(
                    "sparkplug.url",
                    url,
                    "plain mqtt:// is only for a broker on this host (loopback); use mqtts:// with sparkplug.ca_file",
                ));
            }
            (false, Some(_)) => {
                return Err(invalid(
                    "sparkplug.ca_file",
                    "set",
                    "only used with an mqtts:// sparkplug.url",
                ));
            }
            (false, None) => None,
        };
        let certificate = match (&file.client_cert, &file.client_key) {
            (Some(cert), Some(key)) if tls => Some((cert.clone(), key.clone())),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "sparkplug.client_cert",
                    "set",
                    "a client certificate needs an mqtts:// sparkplug.url",
                ));
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "sparkplug.client_cert",
                    "given alone",
                    "give sparkplug.client_cert and sparkplug.client_key together",
                ));
            }
        };
        let password = match (&file.username, &file.password_file) {
            (Some(username), Some(file)) if !username.is_empty() => {
                Some((username.clone(), file.clone()))
            }
            (Some(_), Some(_)) => {
                return Err(invalid("sparkplug.username", "empty", "give a username"));
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "sparkplug.username",
                    "given alone",
                    "give sparkplug.username and sparkplug.password_file together",
                ));
            }
        };
        let auth = match (certificate, password) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "sparkplug.username",
                    "set with sparkplug.client_cert",
                    "use a client certificate or a username and password, not both",
                ));
            }
            (Some((cert, key)), None) => SparkplugAuth::Certificate { cert, key },
            (None, Some((username, file))) => SparkplugAuth::Password { username, file },
            (None, None) => SparkplugAuth::Anonymous,
        };
        let group_id = file.group_id.as_deref().unwrap_or(DEFAULT_GROUP);
        let group = GroupId::new(group_id)
            .map_err(|error| invalid("sparkplug.group_id", group_id, error.to_string()))?;
        let node_id = file.edge_node_id.as_deref().unwrap_or(DEFAULT_NODE);
        let node = EdgeNodeId::new(node_id)
            .map_err(|error| invalid("sparkplug.edge_node_id", node_id, error.to_string()))?;
        let label = |key: &'static str, value: &Option<String>, default: &str| match value {
            Some(label) if label.is_empty() => Err(invalid(key, "empty", "give a label key")),
            Some(label) => Ok(label.clone()),
            None => Ok(default.to_owned()),
        };
        let interval =
            Duration::from_secs(file.interval_seconds.unwrap_or(DEFAULT_INTERVAL.as_secs()));
        if !(1..=3600).contains(&interval.as_secs()) {
            return Err(ConfigError::OutOfRange {
                key: "sparkplug.interval_seconds",
                value: interval.as_secs(),
                expected: "use 1 to 3600 seconds".into(),
            });
        }
        Ok(Some(Self {
            host: host.to_owned(),
            port,
            ca_file,
            auth,
            group,
            node,
            group_label: label(
                "sparkplug.group_label",
                &file.group_label,
                DEFAULT_GROUP_LABEL,
            )?,
            node_label: label("sparkplug.node_label", &file.node_label, DEFAULT_NODE_LABEL)?,
            interval,
        }))
    }

    /// The section in the file's format, every key filled in.
    pub fn to_file(config: Option<&Self>) -> FileSparkplug {
        let Some(config) = config else {
            return FileSparkplug::default();
        };
        let scheme = if config.ca_file.is_some() {
            "mqtts"
        } else {
            "mqtt"
        };
        let (client_cert, client_key, username, password_file) = match &config.auth {
            SparkplugAuth::Anonymous => (None, None, None, None),
            SparkplugAuth::Certificate { cert, key } => {
                (Some(cert.clone()), Some(key.clone()), None, None)
            }
            SparkplugAuth::Password { username, file } => {
                (None, None, Some(username.clone()), Some(file.clone()))
            }
        };
        FileSparkplug {
            url: Some(format!("{scheme}://{}:{}", config.host, config.port)),
            ca_file: config.ca_file.clone(),
            client_cert,
            client_key,
            username,
            password_file,
            group_id: Some(config.group.to_string()),
            edge_node_id: Some(config.node.to_string()),
            group_label: Some(config.group_label.clone()),
            node_label: Some(config.node_label.clone()),
            interval_seconds: Some(config.interval.as_secs()),
        }
    }

    /// The broker connection, with the files it names read: a missing or
    /// unusable file stops tetherd at start, not at the first pass.
    pub fn broker(&self) -> Result<BrokerSettings, SparkplugFileError> {
        let transport = match &self.ca_file {
            None => BrokerTransport::Plain,
            Some(ca) => BrokerTransport::Tls(Arc::new(tls_config(ca, &self.auth)?)),
        };
        let credentials = match &self.auth {
            SparkplugAuth::Password { username, file } => {
                let password = read(file)?;
                let password = String::from_utf8(password)
                    .map_err(|_| SparkplugFileError::Unusable {
                        path: file.clone(),
                        what: "UTF-8 password",
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                Some(Credentials {
                    username: username.clone(),
                    password,
                })
            }
            SparkplugAuth::Anonymous | SparkplugAuth::Certificate { .. } => None,
        };
        Ok(BrokerSettings {
            host: self.host.clone(),
            port: self.port,
            transport,
            credentials,
        })
    }
}

/// The broker's address and how to connect to it; each edge node's
/// connection adds its own client id.
#[derive(Clone)]
pub struct BrokerSettings {
    host: String,
    port: u16,
    transport: BrokerTransport,
    credentials: Option<Credentials>,
}

impl BrokerSettings {
    pub fn for_client(&self, client_id: String) -> SparkplugBroker {
        SparkplugBroker {
            host: self.host.clone(),
            port: self.port,
            client_id,
            transport: self.transport.clone(),
            credentials: self.credentials.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SparkplugFileError {
    #[error("could not read {path} (a [sparkplug] file)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what} (a [sparkplug] file)")]
    Unusable { path: PathBuf, what: &'static str },
    #[error("could not build the TLS client for the Sparkplug broker")]
    Tls(#[source] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, SparkplugFileError> {
    std::fs::read(path).map_err(|source| SparkplugFileError::Read {
        path: path.to_owned(),
        source,
    })
}

fn tls_config(ca: &Path, auth: &SparkplugAuth) -> Result<rustls::ClientConfig, SparkplugFileError> {
    let unusable = |path: &Path, what| SparkplugFileError::Unusable {
        path: path.to_owned(),
        what,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut read(ca)?.as_slice()) {
        let cert = cert.map_err(|_| unusable(ca, "CA certificate"))?;
        roots
            .add(cert)
            .map_err(|_| unusable(ca, "CA certificate"))?;
    }
    if roots.is_empty() {
        return Err(unusable(ca, "CA certificate"));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(SparkplugFileError::Tls)?
    .with_root_certificates(roots);
    match auth {
        SparkplugAuth::Certificate { cert, key } => {
            let chain = rustls_pemfile::certs(&mut read(cert)?.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|chain| !chain.is_empty())
                .ok_or_else(|| unusable(cert, "client certificate"))?;
            let key_der = rustls_pemfile::private_key(&mut read(key)?.as_slice())
                .ok()
                .flatten()
                .ok_or_else(|| unusable(key, "private key"))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(SparkplugFileError::Tls)
        }
        SparkplugAuth::Anonymous | SparkplugAuth::Password { .. } => {
            Ok(builder.with_no_client_auth())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Option<SparkplugConfig>, ConfigError> {
        let file: FileSparkplug = toml::from_str(toml_text).expect("the section's shape");
        SparkplugConfig::from_file(&file)
    }

    fn refusal(toml_text: &str) -> String {
        parse(toml_text).expect_err("refused").to_string()
    }

    #[test]
    fn off_without_a_url_and_defaults_with_one() {
        assert_eq!(parse("").expect("valid"), None);
        let config = parse("url = \"mqtts://broker.example:8883\"\nca_file = \"/ca.pem\"")
            .expect("valid")
            .expect("on");
        assert_eq!(config.host, "broker.example");
        assert_eq!(config.port, 8883);
        assert_eq!(config.group.as_str(), "tether");
        assert_eq!(config.node.as_str(), "tetherd");
        assert_eq!(config.group_label, DEFAULT_GROUP_LABEL);
        assert_eq!(config.node_label, DEFAULT_NODE_LABEL);
        assert_eq!(config.interval, Duration::from_secs(10));
        assert_eq!(config.auth, SparkplugAuth::Anonymous);
        let again = SparkplugConfig::from_file(&SparkplugConfig::to_file(Some(&config)))
            .expect("valid")
            .expect("on");
        assert_eq!(again, config, "print-config reads back");
    }

    #[test]
    fn plain_mqtt_only_to_this_host() {
        for url in [
            "mqtt://127.0.0.1:1883",
            "mqtt://localhost:1883",
            "mqtt://::1:1883",
        ] {
            let config = parse(&format!("url = \"{url}\""))
                .expect("loopback")
                .expect("on");
            assert_eq!(config.ca_file, None, "{url}");
        }
        assert_eq!(
            refusal("url = \"mqtt://broker.example:1883\""),
            "sparkplug.url = mqtt://broker.example:1883 is not valid: plain mqtt:// is only for a broker on this host (loopback); use mqtts:// with sparkplug.ca_file"
        );
        assert_eq!(
            refusal("url = \"mqtts://broker.example:8883\""),
            "sparkplug.ca_file = missing is not valid: an mqtts:// broker needs the CA file (PEM) its certificate is checked by"
        );
        assert!(refusal("url = \"http://broker:80\"").contains("use mqtts://HOST:PORT"));
        assert!(refusal("url = \"mqtts://broker\"").contains("no port"));
    }

    #[test]
    fn credentials_come_in_pairs() {
        let tls = "url = \"mqtts://b:8883\"\nca_file = \"/ca.pem\"\n";
        assert_eq!(
            parse(&format!("{tls}username = \"t\"\npassword_file = \"/p\""))
                .expect("valid")
                .expect("on")
                .auth,
            SparkplugAuth::Password {
                username: "t".into(),
                file: "/p".into()
            }
        );
        assert!(refusal(&format!("{tls}username = \"t\"")).contains("together"));
        assert!(refusal(&format!("{tls}client_cert = \"/c\"")).contains("together"));
        assert!(
            refusal(&format!(
                "{tls}client_cert = \"/c\"\nclient_key = \"/k\"\nusername = \"t\"\npassword_file = \"/p\""
            ))
            .contains("not both")
        );
    }

    #[test]
    fn ids_follow_the_sparkplug_rules_and_keys_need_a_url() {
        let base = "url = \"mqtt://127.0.0.1:1883\"\n";
        assert_eq!(
            refusal(&format!("{base}group_id = \"a/b\"")),
            "sparkplug.group_id = a/b is not valid: the Sparkplug group id \"a/b\" contains '/'; Sparkplug ids may not contain '/', '+', '#' or NUL"
        );
        assert!(refusal(&format!("{base}edge_node_id = \"\"")).contains("is empty"));
        assert!(refusal(&format!("{base}interval_seconds = 0")).contains("1 to 3600"));
        assert_eq!(
            refusal("group_id = \"plant\""),
            "sparkplug.group_id = set is not valid: Sparkplug is off without sparkplug.url; set the broker's mqtts://HOST:PORT"
        );
    }
}
