//! What a deployment's processes need on disk before they start: config
//! files rendered from their templates and written atomically with their
//! mode, and artifacts downloaded over HTTPS from allowed hosts and checked
//! against their SHA-256 before anything uses them.
//!
//! A new version is prepared whole first (templates rendered in memory,
//! artifacts downloaded beside their targets under temporary names); only
//! when everything is in hand is it put in place, so a bad template or a
//! checksum mismatch leaves the running version as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tether_proto::desired::DeploymentSpec;
use tether_proto::desired::process::{Artifact, https_host, parse_mode};
use tether_proto::spec::Facts;

use super::render::{self, RenderError};
use super::written::{Written, read_regular, write_file};

/// Largest artifact downloaded.
pub const MAX_ARTIFACT_BYTES: u64 = 2 << 30;
/// How long one artifact's download may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Who the device is, for templates (`device.name`, `device.id`).
#[derive(Debug, Clone)]
pub struct DeviceContext {
    pub name: String,
    pub facts: Facts,
}

/// A config file as rendered for a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub path: PathBuf,
    pub mode: u32,
    pub content: String,
}

/// What templates see: `device`, `labels`, `facts`, `values`.
pub fn context(device: &DeviceContext, deployment: &DeploymentSpec) -> Value {
    json!({
        "device": {"name": device.name, "id": device.name},
        "labels": deployment.labels,
        "facts": device.facts,
        "values": deployment.values,
    })
}

/// Renders every config file of `deployment` with the render helper
/// ([`render`]); the first that cannot be rendered is the error, naming
/// the file. No file may go into the agent's state directory (its key,
/// its credentials) but under `root`, the processes' directories.
pub async fn render(
    device: &DeviceContext,
    deployment: &DeploymentSpec,
    root: &Path,
    helper: &Path,
) -> Result<BTreeMap<String, Rendered>, String> {
    let request = render_request(device, deployment, root)?;
    if request.templates.is_empty() {
        return Ok(BTreeMap::new());
    }
    let contents = render::with_helper(helper, &request).await;
    rendered(deployment, contents)
}

/// What the render helper is asked, once every file's path is checked.
pub fn render_request(
    device: &DeviceContext,
    deployment: &DeploymentSpec,
    root: &Path,
) -> Result<render::Request, String> {
    let state_dir = root.parent().unwrap_or(root);
    let templates = deployment
        .config_files
        .iter()
        .map(|(name, file)| {
            let path = Path::new(&file.path);
            if path.starts_with(state_dir) && !path.starts_with(root) {
                return Err(format!(
                    "config file {name}: {} is in the agent's state directory, which holds its credentials; choose another path",
                    file.path
                ));
            }
            Ok((name.clone(), file.template.clone()))
        })
        .collect::<Result<_, _>>()?;
    Ok(render::Request {
        context: context(device, deployment),
        templates,
    })
}

/// The config files of `deployment` with the contents the helper rendered.
pub fn rendered(
    deployment: &DeploymentSpec,
    contents: Result<BTreeMap<String, String>, RenderError>,
) -> Result<BTreeMap<String, Rendered>, String> {
    let mut contents = contents.map_err(|error| match &error {
        RenderError::Template { name, .. } => {
            let path = deployment
                .config_files
                .get(name)
                .map_or("", |file| file.path.as_str());
            format!("config file {name} ({path}) {error}")
        }
        RenderError::Helper { .. } => format!("cannot render the config files: {error}"),
    })?;
    deployment
        .config_files
        .iter()
        .map(|(name, file)| {
            let content = contents.remove(name).ok_or_else(|| {
                format!("config file {name}: the render helper did not render it")
            })?;
            let mode = parse_mode(&file.mode)
                .ok_or_else(|| format!("config file {name}: mode {:?} is not octal", file.mode))?;
            Ok((
                name.clone(),
                Rendered {
                    path: PathBuf::from(&file.path),
                    mode,
                    content,
                },
            ))
        })
        .collect()
}

/// Writes `deployment`'s files that differ from `previous` (or from what
/// is on disk), recording each in `written`; returns the names of those
/// that changed.
pub fn write(
    deployment: &str,
    rendered: &BTreeMap<String, Rendered>,
    previous: &BTreeMap<String, Rendered>,
    written: &mut Written,
) -> Result<BTreeSet<String>, String> {
    let mut changed = BTreeSet::new();
    for (name, file) in rendered {
        // Read without following a link and bounded: the path may be in a
        // directory a local user can write.
        let (on_disk, mode_on_disk) = read_regular(&file.path, file.content.len()).unzip();
        if previous.get(name) == Some(file)
            && on_disk.as_deref() == Some(file.content.as_bytes())
            && mode_on_disk == Some(file.mode)
        {
            continue;
        }
        let failed = |e: std::io::Error| {
            format!(
                "config file {name}: failed to write {}: {e}",
                file.path.display()
            )
        };
        if let Some(dir) = file.path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let outcome = write_file(&file.path, file.content.as_bytes(), file.mode).map_err(failed)?;
        written.wrote(deployment, name, &file.path, &outcome);
        if previous.get(name).map(|p| &p.content) != Some(&file.content)
            || on_disk.as_deref() != Some(file.content.as_bytes())
        {
            changed.insert(name.clone());
        }
    }
    Ok(changed)
}

/// Where and from whom artifacts come.
#[derive(Debug, Clone)]
pub struct ArtifactSource {
    /// Hosts downloads may come from (lowercase).
    pub allowed_hosts: Vec<String>,
    /// tetherd's CA, trusted beside the system's roots.
    pub ca_pem: String,
}

/// Artifacts downloaded and checked, waiting under temporary names;
/// dropped without [`Staged::commit`], they are removed.
#[derive(Debug, Default)]
pub struct Staged {
    /// (temporary file, target, process)
    moves: Vec<(PathBuf, PathBuf, String)>,
}

impl Staged {
    /// Puts every artifact in place; returns the processes whose files changed.
    pub fn commit(mut self) -> Result<BTreeSet<String>, String> {
        let mut changed = BTreeSet::new();
        for (temp, target, process) in std::mem::take(&mut self.moves) {
            std::fs::rename(&temp, &target).map_err(|e| {
                let _ = std::fs::remove_file(&temp);
                format!("failed to put artifact {} in place: {e}", target.display())
            })?;
            changed.insert(process);
        }
        Ok(changed)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (temp, _, _) in &self.moves {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// The directory of a deployment's process: its working directory, where
/// its artifacts are.
pub fn process_dir(root: &Path, deployment: &str, process: &str) -> PathBuf {
    root.join(deployment).join(process)
}

fn sha256_of(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(hex::encode(hasher.finalize()))
}

/// Downloads what is missing or different for every process of
/// `deployment` under `root`, checking each against its SHA-256.
pub async fn stage(
    source: &ArtifactSource,
    root: &Path,
    name: &str,
    deployment: &DeploymentSpec,
) -> Result<Staged, String> {
    let mut staged = Staged::default();
    let mut client = None;
    for (process, spec) in &deployment.processes {
        let dir = process_dir(root, name, process);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
        for artifact in &spec.artifacts {
            let target = dir.join(&artifact.name);
            let mode = parse_mode(&artifact.mode).unwrap_or(0o755);
            if sha256_of(&target).as_deref() == Some(artifact.sha256.as_str()) {
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("failed to set the mode of {}: {e}", target.display()))?;
                continue;
            }
            check_host(source, artifact)?;
            let client = match &client {
                Some(client) => client,
                None => client.insert(
                    https_client(&source.ca_pem)
                        .map_err(|e| format!("cannot make an HTTPS client: {e}"))?,
                ),
            };
            let temp = dir.join(format!(".{}.{}.part", artifact.name, rand::random::<u64>()));
            staged.moves.push((temp.clone(), target, process.clone()));
            download(client, artifact, &temp, mode)
                .await
                .map_err(|e| format!("process {process}: artifact {}: {e}", artifact.name))?;
        }
    }
    Ok(staged)
}

fn check_host(source: &ArtifactSource, artifact: &Artifact) -> Result<(), String> {
    let host = https_host(&artifact.url)
        .ok_or_else(|| {
            format!(
                "artifact {}: {:?} is not an https:// URL",
                artifact.name, artifact.url
            )
        })?
        .to_ascii_lowercase();
    if source.allowed_hosts.contains(&host) {
        Ok(())
    } else {
        Err(format!(
            "artifact {}: host {host} is not one this agent downloads from ({}); add it with --artifact-host",
            artifact.name,
            source.allowed_hosts.join(", ")
        ))
    }
}

/// tetherd's CA and the system's roots; redirects are not followed, so a
/// download cannot leave the allowed hosts.
fn https_client(ca_pem: &str) -> Result<reqwest::Client, reqwest::Error> {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .timeout(DOWNLOAD_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    let system = std::env::var_os("SSL_CERT_FILE")
        .unwrap_or_else(|| crate::actions::send_api::SYSTEM_ROOTS.into());
    let system_pem = std::fs::read(&system).unwrap_or_default();
    for pem in [ca_pem.as_bytes(), &system_pem] {
        // An unreadable bundle only means fewer trusted roots.
        for cert in reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default() {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build()
}

async fn download(
    client: &reqwest::Client,
    artifact: &Artifact,
    temp: &Path,
    mode: u32,
) -> Result<(), String> {
    let mut response = client.get(&artifact.url).send().await.map_err(|e| {
        format!(
            "cannot download {}: {}",
            artifact.url,
            tether_proto::error_chain(&e)
        )
    })?;
    if !response.status().is_success() {
        return Err(format!(
            "cannot download {}: tetherd or the host answered {}",
            artifact.url,
            response.status()
        ));
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .map_err(|e| format!("failed to create {}: {e}", temp.display()))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("download of {} broke off: {e}", artifact.url))?
    {
        size += chunk.len() as u64;
        if size > MAX_ARTIFACT_BYTES {
            return Err(format!(
                "{} is larger than {MAX_ARTIFACT_BYTES} bytes",
                artifact.url
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| format!("failed to write {}: {e}", temp.display()))?;
    }
    let got = hex::encode(hasher.finalize());
    if got != artifact.sha256 {
        return Err(format!(
            "checksum mismatch: {} has SHA-256 {got}, the spec says {}; not used",
            artifact.url, artifact.sha256
        ));
    }
    file.sync_all()
        .and_then(|()| std::fs::set_permissions(temp, std::fs::Permissions::from_mode(mode)))
        .map_err(|e| format!("failed to write {}: {e}", temp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(value: serde_json::Value) -> DeploymentSpec {
        serde_json::from_value(value).expect("deployment")
    }

    /// [`super::render`] with the helper's work done in this process.
    fn render(
        device: &DeviceContext,
        deployment: &DeploymentSpec,
        root: &Path,
    ) -> Result<BTreeMap<String, Rendered>, String> {
        let request = render_request(device, deployment, root)?;
        let contents = match render::render_all(&request) {
            render::Reply::Rendered(contents) => Ok(contents),
            render::Reply::Failed { name, reason } => Err(RenderError::Template { name, reason }),
        };
        rendered(deployment, contents)
    }

    #[test]
    fn templates_see_the_device_labels_facts_and_values_and_undefined_names_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("etc/app.conf");
        let device = DeviceContext {
            name: "pump-1".into(),
            facts: Facts {
                cpu_cores: 4,
                ..Facts::default()
            },
        };
        let spec = deployment(json!({
            "version": "1",
            "configFiles": {"conf": {
                "path": path.display().to_string(),
                "mode": "0640",
                "template": "{{ device.name }} {{ labels.site }} {{ facts.cpuCores }} {{ values.port }}"
            }},
            "values": {"port": 8080},
            "labels": {"site": "north"}
        }));
        let rendered =
            render(&device, &spec, &dir.path().join("state/deployments")).expect("renders");
        assert_eq!(rendered["conf"].content, "pump-1 north 4 8080");
        let mut written = Written::load(dir.path().join(super::super::written::WRITTEN_FILE));
        let changed = write("app", &rendered, &BTreeMap::new(), &mut written).expect("writes");
        assert!(written.entries().contains_key(&path), "recorded");
        assert_eq!(changed, BTreeSet::from(["conf".to_owned()]));
        assert_eq!(
            std::fs::metadata(&path)
                .expect("written")
                .permissions()
                .mode()
                & 0o7777,
            0o640
        );
        assert!(
            write("app", &rendered, &rendered, &mut written)
                .expect("writes")
                .is_empty(),
            "unchanged"
        );

        let mut broken = spec.clone();
        broken.config_files.get_mut("conf").expect("conf").template = "{{ values.prot }}".into();
        let error = render(&device, &broken, dir.path()).expect_err("undefined");
        assert!(error.starts_with("config file conf ("), "{error}");
        assert!(error.contains("undefined"), "{error}");

        // Not into the agent's own files.
        let root = dir.path().join("deployments");
        let mut key = spec.clone();
        key.config_files.get_mut("conf").expect("conf").path =
            dir.path().join("key.pem").display().to_string();
        let error = render(&device, &key, &root).expect_err("the state dir");
        assert!(error.contains("state directory"), "{error}");
        key.config_files.get_mut("conf").expect("conf").path =
            root.join("app/web/app.conf").display().to_string();
        assert!(
            render(&device, &key, &root).is_ok(),
            "a process's own directory"
        );
    }

    #[test]
    fn only_allowed_hosts_are_asked() {
        let source = ArtifactSource {
            allowed_hosts: vec!["tetherd.example".into()],
            ca_pem: String::new(),
        };
        let artifact = |url: &str| Artifact {
            url: url.into(),
            sha256: "a".repeat(64),
            name: "x".into(),
            mode: "0755".into(),
        };
        assert!(check_host(&source, &artifact("https://TETHERD.example:8443/x")).is_ok());
        let error = check_host(&source, &artifact("https://evil.example/x")).expect_err("refused");
        assert!(error.contains("--artifact-host"), "{error}");
    }
}
