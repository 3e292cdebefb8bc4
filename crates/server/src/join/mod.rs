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
/// Where Kubernetes clients look for their ServiceAccount's token, CA and
/// namespace; mounted in the agent's container only.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where the enrollment Secret is mounted in the agent's container: a
/// file, not an environment variable (which `/proc/PID/environ` shows).
const ENROLLMENT_DIR: &str = "/etc/tether/enrollment";
/// The agent's user and group, and the pod's `fsGroup`.
const AGENT_UID: u32 = 65532;
/// The user the management shell's container and its sessions run as:
/// not the agent's, so sessions reach none of its files or processes.
pub const SHELL_UID: u32 = 65533;
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
/// The directory the agent and the shell container share: only the
/// socket the agent hands connections to (ADR 0028).
const SHELL_SOCKET_DIR: &str = "/run/tether-shell";
/// The shell container's own state: its host key.
const SHELL_STATE_DIR: &str = "/var/lib/tether-agent-shell";

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
    /// With the management shell (ADR 0023, 0028): the image of the
    /// pod's second container, which runs the sessions with a shell and
    /// tools.
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
        // The agent's identity (IDENTITY_SECRET) and its sealed secrets'
        // Secrets (`tether-secret-NAME`, ADR 0030): kept by name, the
        // latter found by label to remove those of secrets no longer in
        // the spec. RBAC cannot match a name prefix (nor a label, nor a
        // create by name), so this is every Secret of this namespace,
        // which holds tether's own only; the agent touches those with its
        // labels and its identity.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create", "update", "delete"]},
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
            env("TETHER_ENROLL_TOKEN_FILE", &format!("{ENROLLMENT_DIR}/token")),
            env("TETHER_AGENT_KUBERNETES", "cluster"),
            env("TETHER_AGENT_KUBERNETES_CLUSTER", join.device),
            env("TETHER_AGENT_STATE_DIR", STATE_DIR),
        ],
        "securityContext": hardened(),
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                      "limits": {"memory": "64Mi"}},
        "volumeMounts": [
            {"name": "state", "mountPath": STATE_DIR},
            {"name": "service-account", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": true},
            {"name": "enrollment", "mountPath": ENROLLMENT_DIR, "readOnly": true},
        ],
    });
    let mut pod = json!({
        "serviceAccountName": AGENT,
        // The token is the agent's alone: mounted in its container below,
        // in no other.
        "automountServiceAccountToken": false,
        // fsGroup: the agent may read its Secrets' files (0440), and the
        // shell's user the work dir's claim and the login Secret.
        "securityContext": {"runAsNonRoot": true, "runAsUser": AGENT_UID, "runAsGroup": AGENT_UID,
                            "fsGroup": AGENT_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [
            {"name": "state", "emptyDir": {}},
            // What Kubernetes mounts by itself when automounting, so the
            // agent's in-cluster client finds token, CA and namespace
            // where it always does; the token is renewed by the kubelet.
            {"name": "service-account", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}},
            {"name": "enrollment", "secret": {"secretName": ENROLLMENT_SECRET, "defaultMode": 0o440}},
        ],
    });
    let mut containers = vec![];
    if let Some(image) = join.management_shell {
        objects.extend(management_shell(&meta));
        containers.push(with_management_shell(&mut container, &mut pod, image));
    }
    containers.insert(0, container);
    pod["containers"] = json!(containers);
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

/// What every container of the pod runs with.
fn hardened() -> Value {
    json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
           "capabilities": {"drop": ["ALL"]}})
}

/// The management shell (ADR 0023, 0028): the agent's listener handing
/// each connection over a socket in a shared `emptyDir` to the returned
/// second container, which runs the sessions from the tools image as
/// [`SHELL_UID`], with the work dir's claim, the optional login Secret and
/// a writable `/tmp` (the root file system stays read-only), room for the
/// sessions' tools (kubectl alone takes tens of MiB), and neither the
/// agent's token, its enrollment token nor its state.
fn with_management_shell(agent: &mut Value, pod: &mut Value, image: &str) -> Value {
    let env = |name: &str, value: String| json!({"name": name, "value": value});
    let socket = format!("{SHELL_SOCKET_DIR}/shell.sock");
    // The paths are the shell container's: the agent only passes them on.
    if let Some(vars) = agent["env"].as_array_mut() {
        vars.extend([
            env("TETHER_AGENT_SHELL_LISTEN", format!("0.0.0.0:{SHELL_PORT}")),
            env("TETHER_AGENT_SHELL_SOCKET", socket.clone()),
            env("TETHER_AGENT_SHELL_WORK_DIR", WORK_DIR.to_owned()),
            env(
                "TETHER_AGENT_SHELL_HOST_KEY",
                format!("{SHELL_STATE_DIR}/shell_host_key"),
            ),
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
    agent["ports"] = json!([{"name": "ssh", "containerPort": SHELL_PORT, "protocol": "TCP"}]);
    if let Some(mounts) = agent["volumeMounts"].as_array_mut() {
        mounts.push(json!({"name": "shell-socket", "mountPath": SHELL_SOCKET_DIR}));
    }
    if let Some(volumes) = pod["volumes"].as_array_mut() {
        volumes.extend([
            json!({"name": "shell-socket", "emptyDir": {}}),
            json!({"name": "shell-state", "emptyDir": {}}),
            json!({"name": "work", "persistentVolumeClaim": {"claimName": MANAGEMENT_WORK_CLAIM}}),
            // Readable by the pod's group only (fsGroup): 0440.
            json!({"name": "login", "secret": {"secretName": MANAGEMENT_LOGIN_SECRET,
                                               "optional": true, "defaultMode": 0o440}}),
            json!({"name": "tmp", "emptyDir": {}}),
        ]);
    }
    let mut security = hardened();
    security["runAsUser"] = json!(SHELL_UID);
    security["runAsGroup"] = json!(SHELL_UID);
    json!({
        "name": "shell",
        "image": image,
        "command": ["/usr/local/bin/tether-agent-shell", "serve",
                    "--socket", socket, "--agent-uid", AGENT_UID.to_string()],
        "securityContext": security,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                      "limits": {"memory": "512Mi"}},
        "volumeMounts": [
            {"name": "shell-socket", "mountPath": SHELL_SOCKET_DIR},
            {"name": "shell-state", "mountPath": SHELL_STATE_DIR},
            {"name": "work", "mountPath": WORK_DIR},
            {"name": "login", "mountPath": LOGIN_DIR, "readOnly": true},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    })
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
    use tether_testkit::fake_kube::kinds_and_names;

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

    /// The volume `container` mounts at `path`.
    fn mounted(pod: &Value, container: &Value, path: &str) -> Option<Value> {
        let name = container["volumeMounts"]
            .as_array()?
            .iter()
            .find(|m| m["mountPath"] == path)?["name"]
            .clone();
        pod["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
    }

    #[test]
    fn the_manifest_has_the_agent_its_rights_and_its_token() {
        let objects = objects(&join());
        assert_eq!(
            kinds_and_names(&objects),
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
        // The token only by reference: it is not in the pod spec, and it
        // reaches the agent as a file, not in its environment.
        assert!(!container.to_string().contains("one-time-token"));
        assert!(!env.iter().any(|(name, _)| name == "TETHER_ENROLL_TOKEN"));
        assert!(env.contains(&(
            "TETHER_ENROLL_TOKEN_FILE".into(),
            json!("/etc/tether/enrollment/token")
        )));
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            mounted(pod, container, "/etc/tether/enrollment").map(|v| v["secret"].clone()),
            Some(json!({"secretName": ENROLLMENT_SECRET, "defaultMode": 0o440}))
        );
        // The ServiceAccount's token in the agent's container only, where
        // in-cluster clients look for it.
        assert_eq!(pod["automountServiceAccountToken"], false);
        let account = mounted(pod, container, SERVICE_ACCOUNT_DIR).expect("the token mounted");
        let sources = &account["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
        assert_eq!(sources[1]["configMap"]["items"][0]["path"], "ca.crt");
        assert_eq!(sources[2]["downwardAPI"]["items"][0]["path"], "namespace");
        assert_eq!(pod["containers"].as_array().map(Vec::len), Some(1));
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
    fn the_management_shell_adds_a_service_a_claim_and_a_shell_container_without_secrets() {
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
        let names = kinds_and_names(&objects);
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
        // The agent keeps its own image; the sessions run in the second
        // container, from the tools image.
        let (agent, shell) = (&pod["containers"][0], &pod["containers"][1]);
        assert_eq!(pod["containers"].as_array().map(Vec::len), Some(2));
        assert_eq!(agent["image"], "registry.example/tether-agent:1.2.3");
        assert_eq!(shell["image"], "registry.example/tether-agent-tools:1.2.3");
        let env = |name: &str| {
            agent["env"]
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
        assert_eq!(
            env("TETHER_AGENT_SHELL_SOCKET"),
            Some(json!("/run/tether-shell/shell.sock"))
        );
        assert_eq!(env("TETHER_AGENT_SHELL_WORK_DIR"), Some(json!("/work")));
        assert_eq!(
            env("TETHER_AGENT_SHELL_HOST_KEY"),
            Some(json!("/var/lib/tether-agent-shell/shell_host_key"))
        );
        assert_eq!(
            env("TETHER_AGENT_SHELL_PASSWORD_FILE"),
            Some(json!("/etc/tether/management-shell/password"))
        );
        assert_eq!(
            env("TETHER_AGENT_SHELL_AUTHORIZED_KEYS"),
            Some(json!("/etc/tether/management-shell/authorized_keys"))
        );
        // The shell container serves the agent's uid only, runs as another
        // user, and has none of the agent's secrets or state mounted: no
        // ServiceAccount token (none automounted either), no enrollment
        // token, no state dir; only the socket's directory is shared.
        assert_eq!(
            shell["command"],
            json!([
                "/usr/local/bin/tether-agent-shell",
                "serve",
                "--socket",
                "/run/tether-shell/shell.sock",
                "--agent-uid",
                "65532"
            ])
        );
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(shell["securityContext"]["runAsUser"], SHELL_UID);
        assert_ne!(SHELL_UID, 65532);
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert!(shell.get("env").is_none(), "{shell}");
        let shell_mounts: Vec<&str> = shell["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["name"].as_str())
            .collect();
        assert_eq!(
            shell_mounts,
            ["shell-socket", "shell-state", "work", "login", "tmp"]
        );
        assert!(mounted(pod, shell, SERVICE_ACCOUNT_DIR).is_none());
        assert!(mounted(pod, shell, STATE_DIR).is_none());
        assert!(mounted(pod, agent, SERVICE_ACCOUNT_DIR).is_some());
        assert_eq!(
            mounted(pod, agent, "/run/tether-shell"),
            mounted(pod, shell, "/run/tether-shell")
        );
        assert_eq!(
            mounted(pod, shell, "/work").map(|v| v["persistentVolumeClaim"]["claimName"].clone()),
            Some(json!(MANAGEMENT_WORK_CLAIM))
        );
        assert!(mounted(pod, agent, "/work").is_none());
        // Nobody logs in until the operator creates the Secret.
        let login = mounted(pod, shell, "/etc/tether/management-shell").expect("mounted");
        assert_eq!(login["secret"]["secretName"], MANAGEMENT_LOGIN_SECRET);
        assert_eq!(login["secret"]["optional"], true);
        assert_eq!(login["secret"]["defaultMode"], 0o440);
        assert_eq!(pod["securityContext"]["fsGroup"], 65532);
        assert!(mounted(pod, shell, "/tmp").is_some());
        for container in [agent, shell] {
            assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        }
        assert_eq!(agent["resources"]["limits"]["memory"], "64Mi");
        assert_eq!(shell["resources"]["limits"]["memory"], "512Mi");
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
    fn secrets_are_listed_updated_and_deleted_in_the_agents_namespace_only() {
        let on_secrets = |rules: Value| -> Vec<Value> {
            rules
                .as_array()
                .into_iter()
                .flatten()
                .filter(|rule| {
                    rule["resources"]
                        .as_array()
                        .is_some_and(|r| r.contains(&json!("secrets")))
                })
                .cloned()
                .collect()
        };
        assert_eq!(
            on_secrets(agent_namespace_rules()),
            [json!({"apiGroups": [""], "resources": ["secrets"],
                    "verbs": ["get", "list", "create", "update", "delete"]})]
        );
        // Elsewhere, copy-resource's get and create only.
        for rule in on_secrets(agent_cluster_rules()) {
            assert_eq!(rule["verbs"], json!(["get", "create"]), "{rule}");
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
