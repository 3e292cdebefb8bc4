//! Joining a Kubernetes cluster with one command (issue 14, ADR 0017): the
//! manifest that runs a device's agent in the cluster, and the command
//! that fetches it from tetherd with tetherd's CA pinned and applies it.
//!
//! The agent's rights are exactly what the actions' Kubernetes calls need
//! ([`agent_cluster_rules`], [`agent_namespace_rules`]). The default
//! actions `send-kubectl` and `send-kubernetes-api` do not act with them
//! but as [`OPERATOR_ACCOUNT`], which may read what `view` allows.

use serde_json::{Value, json};

/// Where the agent, its identity and its enrollment token live.
pub const NAMESPACE: &str = "tether-system";
/// The agent's ServiceAccount, ClusterRole, Role, their bindings and its
/// Deployment.
pub const AGENT: &str = "tether-agent";
/// The Secret holding the one-time enrollment token.
pub const ENROLLMENT_SECRET: &str = "tether-enrollment";
/// The Secret the agent keeps its key and certificate in, so a restarted
/// pod is the same device.
pub const IDENTITY_SECRET: &str = "tether-agent-identity";
/// The ServiceAccount `retrieve-kubeconfig` hands out tokens of; the agent
/// creates it and deletes it to revoke them (`refresh`).
pub const KUBECONFIG_ACCOUNT: &str = "tether-kubeconfig";
/// The ClusterRole a `retrieve-kubeconfig` kubeconfig has, bound here so
/// the agent needs no right to write RBAC objects.
pub const KUBECONFIG_ROLE: &str = "cluster-admin";
/// The ServiceAccount the default actions `send-kubectl` and
/// `send-kubernetes-api` act as (the agent requests its tokens), so they
/// never hold the opt-in actions' rights.
pub const OPERATOR_ACCOUNT: &str = "tether-operator";
/// What [`OPERATOR_ACCOUNT`] may do: Kubernetes' built-in read-only role,
/// without Secrets. Binding more to the account widens the default actions.
pub const OPERATOR_ROLE: &str = "view";
/// Where the agent keeps its state in the pod (an `emptyDir`).
const STATE_DIR: &str = "/var/lib/tether-agent";
/// The management shell's in-cluster name (seed 001: `management-pod`,
/// "not the pod name"): a Service selecting the agent's pod.
pub const MANAGEMENT_SERVICE: &str = "management-pod";
/// The PersistentVolumeClaim of the management shell's work dir.
pub const MANAGEMENT_WORK_CLAIM: &str = "tether-management-work";
/// The Secret the operator creates to log in through the Service (keys
/// `authorized_keys` and `password`); optional, and nobody logs in
/// without it.
pub const MANAGEMENT_LOGIN_SECRET: &str = "tether-management-shell";
/// Where the management shell's sessions start, on the claim.
const WORK_DIR: &str = "/work";
/// Where the login Secret is mounted.
const LOGIN_DIR: &str = "/etc/tether/management-shell";
/// The port the agent listens on in the pod (unprivileged, as the pod
/// is), behind the Service's port 22.
const SHELL_PORT: u16 = 2222;

/// What varies between joins.
#[derive(Debug, Clone)]
pub struct Join<'a> {
    pub device: &'a str,
    /// The one-time enrollment token.
    pub token: &'a str,
    /// `https://HOST:PORT` of tetherd's API, as the joining client reached it.
    pub server_url: &'a str,
    /// SHA-256 of tetherd's CA certificate (DER), hex: the agent pins it.
    pub ca_sha256: &'a str,
    /// The agent's container image.
    pub image: &'a str,
    /// With the management shell (ADR 0023): the image the agent runs
    /// from instead, which has a shell and tools for the sessions.
    pub management_shell: Option<&'a str>,
}

/// The cluster-wide rules of the agent's ClusterRole, each for the action
/// that needs it.
pub fn agent_cluster_rules() -> Value {
    json!([
        // get-node-ip: every node's addresses.
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
        // manage-deployment (get, restart by patch) and copy-resource (get, create).
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch", "create"]},
        // manage-deployment: scale.
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]},
        // copy-resource.
        {"apiGroups": [""], "resources": ["secrets", "configmaps", "services"], "verbs": ["get", "create"]},
        // retrieve-kubeconfig: checks that its namespace and binding exist.
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"], "resourceNames": [NAMESPACE]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterrolebindings"], "verbs": ["get"], "resourceNames": [KUBECONFIG_ACCOUNT]},
        // Deployments' charts: k3s's HelmCharts (kube-system) or Flux's
        // HelmReleases and HelmRepositories (flux-system), kept by name and
        // found by label to remove the ones no deployment has any more.
        {"apiGroups": ["helm.cattle.io"], "resources": ["helmcharts"], "verbs": CHART_VERBS},
        {"apiGroups": ["helm.toolkit.fluxcd.io"], "resources": ["helmreleases"], "verbs": CHART_VERBS},
        {"apiGroups": ["source.toolkit.fluxcd.io"], "resources": ["helmrepositories"], "verbs": CHART_VERBS},
        // k3s: a HelmChart is installed when its Job `helm-install-NAME` completed.
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
    ])
}

/// What the agent does with the Helm controllers' objects it keeps.
const CHART_VERBS: [&str; 5] = ["get", "list", "create", "update", "delete"];

/// The rules of the agent's Role in [`NAMESPACE`].
pub fn agent_namespace_rules() -> Value {
    json!([
        // The agent's identity (a Secret cannot be created by name).
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "update"], "resourceNames": [IDENTITY_SECRET]},
        // retrieve-kubeconfig: its ServiceAccount and tokens.
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "delete"], "resourceNames": [KUBECONFIG_ACCOUNT]},
        {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"], "resourceNames": [KUBECONFIG_ACCOUNT]},
        // send-kubectl and send-kubernetes-api act as the operator account.
        {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"], "resourceNames": [OPERATOR_ACCOUNT]},
    ])
}

/// The objects, in the order `kubectl apply` creates them.
pub fn objects(join: &Join<'_>) -> Vec<Value> {
    let labels = json!({"app.kubernetes.io/name": AGENT, "app.kubernetes.io/managed-by": "tether", "tether.dev/device": join.device});
    let meta = |name: &str, namespaced: bool| {
        let mut meta = json!({"name": name, "labels": labels});
        if namespaced {
            meta["namespace"] = json!(NAMESPACE);
        }
        meta
    };
    let account = json!([{"kind": "ServiceAccount", "name": AGENT, "namespace": NAMESPACE}]);
    let env = |name: &str, value: &str| json!({"name": name, "value": value});
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(NAMESPACE, false)}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(AGENT, true)}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(OPERATOR_ACCOUNT, true)}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(AGENT, false),
               "rules": agent_cluster_rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(AGENT, false),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT},
               "subjects": account}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(AGENT, true),
               "rules": agent_namespace_rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(AGENT, true),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": AGENT},
               "subjects": account}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(KUBECONFIG_ACCOUNT, false),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": KUBECONFIG_ROLE},
               "subjects": [{"kind": "ServiceAccount", "name": KUBECONFIG_ACCOUNT, "namespace": NAMESPACE}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(OPERATOR_ACCOUNT, false),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR_ROLE},
               "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": NAMESPACE}]}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta(ENROLLMENT_SECRET, true), "type": "Opaque",
               "stringData": {"token": join.token}}),
    ];
    let mut container = json!({
        "name": "agent",
        "image": join.image,
        "env": [
            env("TETHER_SERVER", join.server_url),
            env("TETHER_CA_SHA256", join.ca_sha256),
            {"name": "TETHER_ENROLL_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": ENROLLMENT_SECRET, "key": "token"}}},
            env("TETHER_AGENT_KUBERNETES", "cluster"),
            env("TETHER_AGENT_KUBERNETES_CLUSTER", join.device),
            env("TETHER_AGENT_STATE_DIR", STATE_DIR),
        ],
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                      "limits": {"memory": "64Mi"}},
        "volumeMounts": [{"name": "state", "mountPath": STATE_DIR}],
    });
    let mut pod = json!({
        "serviceAccountName": AGENT,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "state", "emptyDir": {}}],
    });
    if let Some(image) = join.management_shell {
        objects.extend(management_shell(&meta));
        with_management_shell(&mut container, &mut pod, image);
    }
    pod["containers"] = json!([container]);
    objects.push(
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(AGENT, true),
        "spec": {
            // One pod per device: two would take each other's session
            // (and the work dir's claim is ReadWriteOnce).
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        }}),
    );
    objects
}

/// The management shell's objects (ADR 0023): its stable name and its
/// work dir's volume.
fn management_shell(meta: &dyn Fn(&str, bool) -> Value) -> [Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(MANAGEMENT_SERVICE, true),
               "spec": {"selector": {"app.kubernetes.io/name": AGENT},
                        "ports": [{"name": "ssh", "port": 22, "targetPort": SHELL_PORT, "protocol": "TCP"}]}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(MANAGEMENT_WORK_CLAIM, true),
               "spec": {"accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}}}}),
    ]
}

/// The agent's container with the management shell: the tools image, the
/// listener, the work dir's claim, the optional login Secret, a writable
/// `/tmp` (the root file system stays read-only), and room for sessions'
/// tools (kubectl alone takes tens of MiB).
fn with_management_shell(container: &mut Value, pod: &mut Value, image: &str) {
    let env = |name: &str, value: String| json!({"name": name, "value": value});
    container["image"] = json!(image);
    if let Some(vars) = container["env"].as_array_mut() {
        vars.extend([
            env("TETHER_AGENT_SHELL_LISTEN", format!("0.0.0.0:{SHELL_PORT}")),
            env("TETHER_AGENT_SHELL_WORK_DIR", WORK_DIR.to_owned()),
            env(
                "TETHER_AGENT_SHELL_AUTHORIZED_KEYS",
                format!("{LOGIN_DIR}/authorized_keys"),
            ),
            env(
                "TETHER_AGENT_SHELL_PASSWORD_FILE",
                format!("{LOGIN_DIR}/password"),
            ),
        ]);
    }
    container["ports"] = json!([{"name": "ssh", "containerPort": SHELL_PORT, "protocol": "TCP"}]);
    container["resources"]["limits"]["memory"] = json!("512Mi");
    if let Some(mounts) = container["volumeMounts"].as_array_mut() {
        mounts.extend([
            json!({"name": "work", "mountPath": WORK_DIR}),
            json!({"name": "login", "mountPath": LOGIN_DIR, "readOnly": true}),
            json!({"name": "tmp", "mountPath": "/tmp"}),
        ]);
    }
    // The claim's files belong to the pod's group, so the agent's user
    // may write them.
    pod["securityContext"]["fsGroup"] = json!(65532);
    if let Some(volumes) = pod["volumes"].as_array_mut() {
        volumes.extend([
            json!({"name": "work", "persistentVolumeClaim": {"claimName": MANAGEMENT_WORK_CLAIM}}),
            // Readable by the pod's group only (fsGroup): 0440.
            json!({"name": "login", "secret": {"secretName": MANAGEMENT_LOGIN_SECRET,
                                               "optional": true, "defaultMode": 0o440}}),
            json!({"name": "tmp", "emptyDir": {}}),
        ]);
    }
}

/// The manifest as YAML documents.
pub fn manifest(join: &Join<'_>) -> String {
    let mut text = format!(
        "# tether: joins this cluster as device {:?}. Apply once: the enrollment token is one-time.\n",
        join.device
    );
    for object in objects(join) {
        text.push_str("---\n");
        // A JSON value always renders as YAML.
        text.push_str(&serde_yaml::to_string(&object).unwrap_or_default());
    }
    text
}

/// The one command that joins a cluster: fetches the manifest from
/// `manifest_url` with curl, trusting only tetherd's CA (given inline,
/// base64, as curl reads it from standard input), and applies it with the
/// current kubectl context.
pub fn command(manifest_url: &str, ca_pem: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "echo {ca} | base64 -d | curl -fsS --cacert /dev/stdin {manifest_url} | kubectl apply -f -"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join() -> Join<'static> {
        Join {
            device: "edge-1",
            token: "one-time-token",
            server_url: "https://tether.example:8443",
            ca_sha256: "ab12",
            image: "registry.example/tether-agent:1.2.3",
            management_shell: None,
        }
    }

    fn kinds(objects: &[Value]) -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o["kind"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn the_manifest_has_the_agent_its_rights_and_its_token() {
        let objects = objects(&join());
        assert_eq!(
            kinds(&objects),
            [
                "Namespace tether-system",
                "ServiceAccount tether-agent",
                "ServiceAccount tether-operator",
                "ClusterRole tether-agent",
                "ClusterRoleBinding tether-agent",
                "Role tether-agent",
                "RoleBinding tether-agent",
                "ClusterRoleBinding tether-kubeconfig",
                "ClusterRoleBinding tether-operator",
                "Secret tether-enrollment",
                "Deployment tether-agent",
            ]
        );
        let of_kind = |kind: &str| {
            objects
                .iter()
                .find(|o| o["kind"] == kind)
                .expect("the manifest has one")
        };
        let secret = of_kind("Secret");
        assert_eq!(secret["stringData"]["token"], "one-time-token");
        let deployment = of_kind("Deployment");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "registry.example/tether-agent:1.2.3");
        let env: Vec<(String, Value)> = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_owned(),
                    e["value"].clone(),
                )
            })
            .collect();
        assert!(env.contains(&("TETHER_AGENT_KUBERNETES".into(), json!("cluster"))));
        assert!(env.contains(&("TETHER_SERVER".into(), json!("https://tether.example:8443"))));
        assert!(env.contains(&("TETHER_CA_SHA256".into(), json!("ab12"))));
        // The token only by reference: it is not in the pod spec.
        assert!(!container.to_string().contains("one-time-token"));
        assert_eq!(deployment["spec"]["replicas"], 1);
        for object in &objects[1..] {
            let namespaced = !matches!(
                object["kind"].as_str(),
                Some("ClusterRole" | "ClusterRoleBinding")
            );
            assert_eq!(
                object["metadata"]["namespace"].as_str() == Some(NAMESPACE),
                namespaced,
                "{object}"
            );
        }
    }

    #[test]
    fn the_management_shell_adds_its_service_its_volume_and_the_tools_image() {
        let plain = objects(&join());
        assert!(
            !serde_json::to_string(&plain)
                .expect("json")
                .contains("SHELL"),
            "off unless asked"
        );
        let objects = objects(&Join {
            management_shell: Some("registry.example/tether-agent-tools:1.2.3"),
            ..join()
        });
        let names = kinds(&objects);
        assert_eq!(names.len(), plain.len() + 2);
        assert_eq!(
            names[names.len() - 3..],
            [
                "Service management-pod",
                "PersistentVolumeClaim tether-management-work",
                "Deployment tether-agent"
            ]
        );
        let service = &objects[names.len() - 3];
        assert_eq!(service["metadata"]["namespace"], NAMESPACE);
        assert_eq!(
            service["spec"]["selector"],
            json!({"app.kubernetes.io/name": AGENT})
        );
        let deployment = &objects[names.len() - 1];
        let pod = &deployment["spec"]["template"]["spec"];
        // The Service selects the agent's pod, on the port it listens on.
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"],
            AGENT
        );
        assert_eq!(service["spec"]["ports"][0]["port"], 22);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], 2222);
        let container = &pod["containers"][0];
        assert_eq!(
            container["image"],
            "registry.example/tether-agent-tools:1.2.3"
        );
        let env = |name: &str| {
            container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["name"] == name)
                .map(|e| e["value"].clone())
        };
        assert_eq!(
            env("TETHER_AGENT_SHELL_LISTEN"),
            Some(json!("0.0.0.0:2222"))
        );
        assert_eq!(env("TETHER_AGENT_SHELL_WORK_DIR"), Some(json!("/work")));
        assert_eq!(
            env("TETHER_AGENT_SHELL_PASSWORD_FILE"),
            Some(json!("/etc/tether/management-shell/password"))
        );
        assert_eq!(
            env("TETHER_AGENT_SHELL_AUTHORIZED_KEYS"),
            Some(json!("/etc/tether/management-shell/authorized_keys"))
        );
        let mount = |path: &str| {
            container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["mountPath"] == path)
                .and_then(|m| m["name"].as_str())
                .and_then(|name| {
                    pod["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|v| v["name"] == name)
                })
                .cloned()
        };
        assert_eq!(
            mount("/work").map(|v| v["persistentVolumeClaim"]["claimName"].clone()),
            Some(json!(MANAGEMENT_WORK_CLAIM))
        );
        // Nobody logs in until the operator creates the Secret.
        let login = mount("/etc/tether/management-shell").expect("mounted");
        assert_eq!(login["secret"]["secretName"], MANAGEMENT_LOGIN_SECRET);
        assert_eq!(login["secret"]["optional"], true);
        assert_eq!(login["secret"]["defaultMode"], 0o440);
        assert_eq!(pod["securityContext"]["fsGroup"], 65532);
        assert!(mount("/tmp").is_some());
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    }

    #[test]
    fn the_manifest_is_yaml_of_those_objects() {
        let text = manifest(&join());
        use serde::Deserialize as _;
        let documents: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|document| Value::deserialize(document).expect("a YAML document"))
            .filter(|value| !value.is_null())
            .collect();
        assert_eq!(documents, objects(&join()));
    }

    #[test]
    fn the_agent_may_not_read_every_secret_or_write_rbac() {
        let rules = agent_cluster_rules();
        for rule in rules.as_array().into_iter().flatten() {
            let verbs = rule["verbs"].as_array().cloned().unwrap_or_default();
            // Lists only of nodes and of the Helm objects the agent keeps,
            // never of Secrets.
            assert!(
                !verbs.contains(&json!("*")) && !verbs.contains(&json!("list"))
                    || [
                        json!(["nodes"]),
                        json!(["helmcharts"]),
                        json!(["helmreleases"]),
                        json!(["helmrepositories"])
                    ]
                    .contains(&rule["resources"]),
                "{rule}"
            );
            assert!(
                !verbs.contains(&json!("bind")) && !verbs.contains(&json!("escalate")),
                "{rule}"
            );
            if rule["apiGroups"] == json!(["rbac.authorization.k8s.io"]) {
                assert_eq!(rule["verbs"], json!(["get"]), "{rule}");
            }
        }
    }

    #[test]
    fn the_command_pins_tetherds_ca_and_applies_what_it_fetched() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let command = command("https://h:8443/api/v1/join/t", pem);
        assert_eq!(
            command,
            "echo LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo= | base64 -d | curl -fsS --cacert /dev/stdin https://h:8443/api/v1/join/t | kubectl apply -f -"
        );
    }
}
