//! Where a Deployment's SQLite file is on the node (host mode, ADR 0020).
//!
//! The Deployment names the file as its container sees it, in the
//! annotation [`SQLITE_PATH_ANNOTATION`] (e.g. `/data/app.db`). The
//! container's volume mount with the longest matching `mountPath` gives the
//! volume and the path within it (after the mount's `subPath`). Supported
//! volumes:
//! - `hostPath`: the file is under its `path`;
//! - `persistentVolumeClaim`: the claim's bound PersistentVolume, which must
//!   be a `hostPath` or `local` volume: k3s's local-path provisioner makes
//!   `hostPath` volumes under `/var/lib/rancher/k3s/storage/<pv>_<ns>_<pvc>`.
//!
//! Anything else (network volumes, `emptyDir`, CSI drivers) has no file on
//! this node that the agent could copy, and is refused naming the type.
//!
//! The path is checked here only as text: it stays under the volume's
//! directory (no `..`, no absolute `subPath`, a volume other than `/`).
//! What the application made inside its volume (a symlink pointing out of
//! it) is checked on the node, when the file is opened ([`super::sqlite`]).

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

pub const SQLITE_PATH_ANNOTATION: &str = "tether.dev/sqlite-path";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "deployment {deployment} has no annotation {SQLITE_PATH_ANNOTATION} naming its SQLite file"
    )]
    NoAnnotation { deployment: String },
    #[error(
        "{SQLITE_PATH_ANNOTATION} of deployment {deployment} must be an absolute path without `..`, not {path:?}"
    )]
    BadPath { deployment: String, path: String },
    #[error("no container of deployment {deployment} mounts a volume at or above {path}")]
    NotMounted { deployment: String, path: String },
    #[error("deployment {deployment} mounts {volume}, which its pod template does not declare")]
    UndeclaredVolume { deployment: String, volume: String },
    #[error(
        "{what} is a {kind} volume; only hostPath, local and local-path volumes have a file on the node"
    )]
    Unsupported { what: String, kind: String },
    #[error("persistent volume claim {claim} is not bound to a volume yet")]
    Unbound { claim: String },
    #[error(
        "subPath {sub_path:?} of volume {volume} in deployment {deployment} must be a relative path without `..`"
    )]
    BadSubPath {
        deployment: String,
        volume: String,
        sub_path: String,
    },
    #[error(
        "{what} is the node's directory {path:?}; restore-command needs an absolute directory other than / without `..`"
    )]
    BadRoot { what: String, path: String },
}

impl VolumeError {
    pub fn status_code(&self) -> u16 {
        // The request is well formed; the cluster is not set up for it.
        422
    }
}

/// Where the file is, from the Deployment alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On the node, final.
    Node(PathBuf),
    /// In the volume bound to this claim (of the Deployment's namespace),
    /// at this relative path: see [`on_persistent_volume`].
    Claim { claim: String, within: PathBuf },
}

/// Reads the annotation and the pod template of `deployment` (a Deployment
/// object as the API server returns it).
pub fn locate(deployment: &Value) -> Result<Location, VolumeError> {
    let name = deployment["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let path = deployment["metadata"]["annotations"][SQLITE_PATH_ANNOTATION]
        .as_str()
        .ok_or_else(|| VolumeError::NoAnnotation {
            deployment: name.clone(),
        })?;
    let file = Path::new(path);
    if !file.is_absolute() || file.components().any(|c| c == Component::ParentDir) {
        return Err(VolumeError::BadPath {
            deployment: name,
            path: path.to_owned(),
        });
    }
    let spec = &deployment["spec"]["template"]["spec"];
    let mounts = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|container| container["volumeMounts"].as_array().into_iter().flatten());
    let (mount, rest) = mounts
        .filter_map(|mount| {
            let rest = file.strip_prefix(mount["mountPath"].as_str()?).ok()?;
            Some((mount, rest))
        })
        // The deepest mount wins, as in the container's view.
        .min_by_key(|(_, rest)| rest.components().count())
        .ok_or_else(|| VolumeError::NotMounted {
            deployment: name.clone(),
            path: path.to_owned(),
        })?;
    let volume_name = mount["name"].as_str().unwrap_or_default();
    let sub_path = mount["subPath"].as_str().unwrap_or_default();
    // An absolute subPath would replace the volume's directory in `join`.
    if !is_beneath(Path::new(sub_path)) {
        return Err(VolumeError::BadSubPath {
            deployment: name,
            volume: volume_name.to_owned(),
            sub_path: sub_path.to_owned(),
        });
    }
    let within = Path::new(sub_path).join(rest);
    let volume = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|volume| volume["name"] == volume_name)
        .ok_or_else(|| VolumeError::UndeclaredVolume {
            deployment: name.clone(),
            volume: volume_name.to_owned(),
        })?;
    if let Some(host) = volume["hostPath"]["path"].as_str() {
        let what = format!("volume {volume_name} of deployment {name}");
        return Ok(Location::Node(under_root(&what, host, &within)?));
    }
    if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
        return Ok(Location::Claim {
            claim: claim.to_owned(),
            within,
        });
    }
    Err(VolumeError::Unsupported {
        what: format!("volume {volume_name} of deployment {name}"),
        kind: volume_kind(volume),
    })
}

/// The claim's bound volume name (`spec.volumeName`), from the claim object.
pub fn bound_volume(claim: &Value) -> Result<String, VolumeError> {
    claim["spec"]["volumeName"]
        .as_str()
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| VolumeError::Unbound {
            claim: claim["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        })
}

/// The file on the node, `within` the PersistentVolume `volume`.
pub fn on_persistent_volume(volume: &Value, within: &Path) -> Result<PathBuf, VolumeError> {
    let spec = &volume["spec"];
    let what = format!(
        "persistent volume {}",
        volume["metadata"]["name"].as_str().unwrap_or_default()
    );
    let root = spec["hostPath"]["path"]
        .as_str()
        .or_else(|| spec["local"]["path"].as_str())
        .ok_or_else(|| VolumeError::Unsupported {
            what: what.clone(),
            kind: volume_kind(spec),
        })?;
    under_root(&what, root, within)
}

/// `within` (relative, no `..`) under the volume's directory `root` on the
/// node. A volume of `/` is the whole node: the application's own path
/// would then name any file of the host (k3s's datastore, /etc).
fn under_root(what: &str, root: &str, within: &Path) -> Result<PathBuf, VolumeError> {
    let dir = Path::new(root);
    let whole_node = dir.components().all(|c| c == Component::RootDir);
    if !dir.is_absolute() || whole_node || dir.components().any(|c| c == Component::ParentDir) {
        return Err(VolumeError::BadRoot {
            what: what.to_owned(),
            path: root.to_owned(),
        });
    }
    if !is_beneath(within) {
        return Err(VolumeError::BadRoot {
            what: what.to_owned(),
            path: dir.join(within).display().to_string(),
        });
    }
    Ok(dir.join(within))
}

/// Whether `path` names something at or below where it is joined: relative
/// and without `..`.
fn is_beneath(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The volume source's key (`nfs`, `emptyDir`, `csi`…), to name it.
fn volume_kind(source: &Value) -> String {
    const NOT_SOURCES: [&str; 9] = [
        "name",
        "accessModes",
        "capacity",
        "claimRef",
        "persistentVolumeReclaimPolicy",
        "storageClassName",
        "volumeMode",
        "nodeAffinity",
        "mountOptions",
    ];
    source
        .as_object()
        .and_then(|fields| {
            fields
                .keys()
                .find(|key| !NOT_SOURCES.contains(&key.as_str()))
        })
        .cloned()
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(path: Option<&str>, mounts: Value, volumes: Value) -> Value {
        let annotations = match path {
            Some(path) => json!({ SQLITE_PATH_ANNOTATION: path }),
            None => json!({}),
        };
        json!({
            "metadata": {"name": "app", "annotations": annotations},
            "spec": {"template": {"spec": {
                "containers": [{"name": "app", "volumeMounts": mounts}],
                "volumes": volumes,
            }}}
        })
    }

    #[test]
    fn a_host_path_volume_is_the_file_on_the_node() -> Result<(), VolumeError> {
        let d = deployment(
            Some("/data/db/app.db"),
            json!([{"name": "data", "mountPath": "/data"}]),
            json!([{"name": "data", "hostPath": {"path": "/srv/app"}}]),
        );
        assert_eq!(locate(&d)?, Location::Node("/srv/app/db/app.db".into()));
        Ok(())
    }

    #[test]
    fn the_deepest_mount_and_its_sub_path_win() -> Result<(), VolumeError> {
        let d = deployment(
            Some("/data/db/app.db"),
            json!([
                {"name": "outer", "mountPath": "/data"},
                {"name": "inner", "mountPath": "/data/db", "subPath": "tenant-1"}
            ]),
            json!([
                {"name": "outer", "hostPath": {"path": "/srv/outer"}},
                {"name": "inner", "persistentVolumeClaim": {"claimName": "app-data"}}
            ]),
        );
        assert_eq!(
            locate(&d)?,
            Location::Claim {
                claim: "app-data".into(),
                within: "tenant-1/app.db".into()
            }
        );
        Ok(())
    }

    #[test]
    fn a_local_path_provisioner_volume_resolves_under_k3s_storage() -> Result<(), VolumeError> {
        let claim = json!({"metadata": {"name": "app-data"}, "spec": {"volumeName": "pvc-1234"}});
        assert_eq!(bound_volume(&claim)?, "pvc-1234");
        // As k3s's local-path provisioner creates them.
        let pv = json!({
            "metadata": {"name": "pvc-1234"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": "/var/lib/rancher/k3s/storage/pvc-1234_default_app-data", "type": "DirectoryOrCreate"},
                "storageClassName": "local-path"
            }
        });
        assert_eq!(
            on_persistent_volume(&pv, Path::new("app.db"))?,
            PathBuf::from("/var/lib/rancher/k3s/storage/pvc-1234_default_app-data/app.db")
        );
        let local =
            json!({"metadata": {"name": "pv-local"}, "spec": {"local": {"path": "/mnt/disk1"}}});
        assert_eq!(
            on_persistent_volume(&local, Path::new("app.db"))?,
            PathBuf::from("/mnt/disk1/app.db")
        );
        Ok(())
    }

    #[test]
    fn what_cannot_be_resolved_is_named() {
        let none = deployment(None, json!([]), json!([]));
        assert!(
            locate(&none)
                .expect_err("refused")
                .to_string()
                .contains(SQLITE_PATH_ANNOTATION)
        );

        let relative = deployment(Some("data/app.db"), json!([]), json!([]));
        assert!(matches!(
            locate(&relative),
            Err(VolumeError::BadPath { .. })
        ));
        let escaping = deployment(Some("/data/../etc/passwd"), json!([]), json!([]));
        assert!(matches!(
            locate(&escaping),
            Err(VolumeError::BadPath { .. })
        ));

        let unmounted = deployment(
            Some("/var/app.db"),
            json!([{"name": "data", "mountPath": "/data"}]),
            json!([{"name": "data", "hostPath": {"path": "/srv"}}]),
        );
        let error = locate(&unmounted).expect_err("refused");
        assert!(error.to_string().contains("/var/app.db"), "{error}");

        let empty_dir = deployment(
            Some("/data/app.db"),
            json!([{"name": "data", "mountPath": "/data"}]),
            json!([{"name": "data", "emptyDir": {}}]),
        );
        let error = locate(&empty_dir).expect_err("refused");
        assert!(error.to_string().contains("emptyDir"), "{error}");
        assert_eq!(error.status_code(), 422);

        let unbound = json!({"metadata": {"name": "app-data"}, "spec": {}});
        assert!(
            bound_volume(&unbound)
                .expect_err("refused")
                .to_string()
                .contains("app-data")
        );

        let nfs = json!({"metadata": {"name": "pv-nfs"}, "spec": {"accessModes": ["ReadWriteMany"], "nfs": {"server": "s", "path": "/x"}}});
        let error = on_persistent_volume(&nfs, Path::new("app.db")).expect_err("refused");
        assert!(error.to_string().contains("nfs"), "{error}");
        assert!(error.to_string().contains("pv-nfs"), "{error}");
    }

    #[test]
    fn a_sub_path_cannot_leave_the_volume() {
        for sub_path in ["/etc", "../../etc", "db/../../etc"] {
            let d = deployment(
                Some("/data/shadow"),
                json!([{"name": "data", "mountPath": "/data", "subPath": sub_path}]),
                json!([{"name": "data", "hostPath": {"path": "/srv/app"}}]),
            );
            let error = locate(&d).expect_err("refused");
            assert!(
                matches!(error, VolumeError::BadSubPath { .. }),
                "{sub_path}: {error}"
            );
            assert!(error.to_string().contains(sub_path), "{error}");
            assert_eq!(error.status_code(), 422);
        }
    }

    #[test]
    fn a_volume_of_the_whole_node_is_refused() {
        for root in ["/", "//", "/srv/../", "srv"] {
            let d = deployment(
                Some("/host/var/lib/rancher/k3s/server/db/state.db"),
                json!([{"name": "host", "mountPath": "/host"}]),
                json!([{"name": "host", "hostPath": {"path": root}}]),
            );
            let error = locate(&d).expect_err("refused");
            assert!(
                matches!(error, VolumeError::BadRoot { .. }),
                "{root}: {error}"
            );
            assert!(error.to_string().contains("volume host"), "{error}");

            let pv = json!({"metadata": {"name": "pv-root"}, "spec": {"local": {"path": root}}});
            let error = on_persistent_volume(&pv, Path::new("etc/shadow")).expect_err("refused");
            assert!(error.to_string().contains("pv-root"), "{error}");
        }
        let pv = json!({"metadata": {"name": "pv"}, "spec": {"hostPath": {"path": "/srv/pv"}}});
        assert!(matches!(
            on_persistent_volume(&pv, Path::new("../../etc/shadow")),
            Err(VolumeError::BadRoot { .. })
        ));
    }
}
