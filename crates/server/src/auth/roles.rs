//! Who may call which route: three roles and one table from (method, route
//! template) to the least role allowed (ADR 0026). Pure: the API's bearer
//! middleware asks [`access`] for every request, and a route missing from
//! the table is refused, so a new route cannot be opened by forgetting it.
//!
//! `docs/roles.md` is [`render_matrix`]'s output; a unit test keeps the two equal.

pub use tether_proto::accounts::{Role, UnknownRole};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No login: devices enrolling and dialing back, logging in, health.
    Public,
    /// Every role: the route acts only on the caller's own things.
    Own,
    /// This role and those above it.
    AtLeast(Role),
}

impl Access {
    /// Whether `role` may call a route with this access.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Public | Access::Own => true,
            Access::AtLeast(least) => role >= least,
        }
    }
}

/// The method of a route registered for every method (the Kubernetes proxy).
pub const ANY_METHOD: &str = "ANY";

/// One route: method (`GET`, … or [`ANY_METHOD`]), template as axum's
/// `MatchedPath` gives it, access.
pub type Rule = (&'static str, &'static str, Access);

/// Routes that share a reason, for the matrix in `docs/roles.md`.
pub struct Group {
    pub title: &'static str,
    /// Why these routes have the access they have.
    pub why: &'static str,
    pub rules: &'static [Rule],
}

use Access::{AtLeast, Own, Public};
use Role::{Admin, Operator, Viewer};

/// Every route of tetherd's API. A new route gets one line here; until it
/// has one, it answers 403 to everyone, and the role matrix test fails.
pub const GROUPS: &[Group] = &[
    Group {
        title: "No login",
        why: "Devices enroll, register, renew and dial tunnels back with their own proofs (an enrollment token, a provisioning key, a certificate, a tunnel id); people log in here; probes, and agents reading tetherd's clock or its release signing key (a public key, trusted for the TLS the agent checks against its pinned CA), need no secret.",
        rules: &[
            ("POST", "/api/v1/login", Public),
            ("GET", "/api/v1/ca.pem", Public),
            ("GET", "/api/v1/time", Public),
            ("POST", "/api/v1/enroll", Public),
            ("POST", "/api/v1/renew", Public),
            ("POST", "/api/v1/register", Public),
            ("GET", "/api/v1/join/{token}", Public),
            ("GET", "/api/v1/tunnels/{id}", Public),
            (
                "GET",
                "/api/v1/agent-releases/{version}/{platform}/binary",
                Public,
            ),
            ("GET", "/api/v1/device/release-signing-key", Public),
            ("GET", "/healthz", Public),
            ("GET", "/readyz", Public),
        ],
    },
    Group {
        title: "Your own things",
        why: "Each acts only on the caller: who they are and their role, their session, their SSH keys, their password.",
        rules: &[
            ("GET", "/api/v1/users/me", Own),
            ("POST", "/api/v1/logout", Own),
            ("GET", "/api/v1/users/me/ssh-keys", Own),
            ("POST", "/api/v1/users/me/ssh-keys", Own),
            ("DELETE", "/api/v1/users/me/ssh-keys/{id}", Own),
            ("PUT", "/api/v1/users/me/password", Own),
        ],
    },
    Group {
        title: "Reading the fleet",
        why: "Devices, actions, jobs, logs, metrics, events and the audit log, read only: nothing here changes the fleet, hands out a secret or reaches into a device.",
        rules: &[
            ("GET", "/api/v1/devices", AtLeast(Viewer)),
            ("GET", "/api/v1/devices/summary", AtLeast(Viewer)),
            ("GET", "/api/v1/devices/{name}", AtLeast(Viewer)),
            ("GET", "/api/v1/devices/{name}/actions", AtLeast(Viewer)),
            ("GET", "/api/v1/actions/{correlationId}", AtLeast(Viewer)),
            ("GET", "/api/v1/catalogue", AtLeast(Viewer)),
            ("GET", "/api/v1/jobs", AtLeast(Viewer)),
            ("GET", "/api/v1/jobs/{id}", AtLeast(Viewer)),
            ("GET", "/api/v1/jobs/{id}/actions", AtLeast(Viewer)),
            ("GET", "/api/v1/devices/{name}/logs", AtLeast(Viewer)),
            ("GET", "/api/v1/devices/{name}/logs/follow", AtLeast(Viewer)),
            ("GET", "/api/v1/logs", AtLeast(Viewer)),
            ("GET", "/api/v1/logs/follow", AtLeast(Viewer)),
            ("GET", "/api/v1/devices/{name}/events", AtLeast(Viewer)),
            ("GET", "/api/v1/events/follow", AtLeast(Viewer)),
            ("GET", "/api/v1/devices/{name}/metrics", AtLeast(Viewer)),
            (
                "GET",
                "/api/v1/devices/{name}/metrics/query",
                AtLeast(Viewer),
            ),
            (
                "GET",
                "/api/v1/devices/{name}/metrics/series",
                AtLeast(Viewer),
            ),
            ("GET", "/api/v1/devices/{name}/usage", AtLeast(Viewer)),
            ("GET", "/api/v1/audit", AtLeast(Viewer)),
            ("GET", "/api/v1/alerts", AtLeast(Viewer)),
            ("GET", "/api/v1/alerts/{id}", AtLeast(Viewer)),
        ],
    },
    Group {
        title: "Running the fleet",
        why: "Registering, labelling, configuring and removing devices, running actions and jobs, seeing how alerts were delivered and sending them again: what an operator does all day.",
        rules: &[
            ("POST", "/api/v1/devices", AtLeast(Operator)),
            ("POST", "/api/v1/alerts/{id}/acknowledge", AtLeast(Operator)),
            ("PATCH", "/api/v1/devices/{name}", AtLeast(Operator)),
            ("DELETE", "/api/v1/devices/{name}", AtLeast(Operator)),
            ("POST", "/api/v1/devices/{name}/revoke", AtLeast(Operator)),
            ("POST", "/api/v1/devices/{name}/actions", AtLeast(Operator)),
            (
                "PUT",
                "/api/v1/devices/{name}/action-set/{action}",
                AtLeast(Operator),
            ),
            (
                "DELETE",
                "/api/v1/devices/{name}/action-set/{action}",
                AtLeast(Operator),
            ),
            ("POST", "/api/v1/jobs", AtLeast(Operator)),
            ("POST", "/api/v1/jobs/{id}/cancel", AtLeast(Operator)),
            ("GET", "/api/v1/alerts/deliveries", AtLeast(Operator)),
            (
                "POST",
                "/api/v1/alerts/deliveries/{id}/retry",
                AtLeast(Operator),
            ),
        ],
    },
    Group {
        title: "Secrets and ways into a device",
        why: "An enrollment token makes a device, a shell password opens its console, and a tunnel (exec, ssh, forward, cp) or the Kubernetes proxy reaches inside it: never read only, even as a GET.",
        rules: &[
            (
                "POST",
                "/api/v1/devices/{name}/enrollment-token",
                AtLeast(Operator),
            ),
            (
                "PUT",
                "/api/v1/devices/{name}/shell-password",
                AtLeast(Operator),
            ),
            (
                "DELETE",
                "/api/v1/devices/{name}/shell-password",
                AtLeast(Operator),
            ),
            ("GET", "/api/v1/devices/{name}/tunnel", AtLeast(Operator)),
            (
                "ANY",
                "/api/v1/devices/{name}/kubernetes",
                AtLeast(Operator),
            ),
            (
                "ANY",
                "/api/v1/devices/{name}/kubernetes/{*path}",
                AtLeast(Operator),
            ),
        ],
    },
    Group {
        title: "Provisioning",
        why: "Anyone may see the policies and who asks to register; operators decide registrations, as they add devices (seed 004's device-operator); a policy and its keys let devices in by themselves, so only admins make or revoke them.",
        rules: &[
            ("GET", "/api/v1/provisioning-policies", AtLeast(Viewer)),
            (
                "GET",
                "/api/v1/provisioning-policies/{name}",
                AtLeast(Viewer),
            ),
            ("GET", "/api/v1/approvals", AtLeast(Viewer)),
            ("GET", "/api/v1/approvals/{id}", AtLeast(Viewer)),
            ("POST", "/api/v1/approvals/{id}/approve", AtLeast(Operator)),
            ("POST", "/api/v1/approvals/{id}/deny", AtLeast(Operator)),
            (
                "GET",
                "/api/v1/provisioning-policies/{name}/keys",
                AtLeast(Operator),
            ),
            ("POST", "/api/v1/provisioning-policies", AtLeast(Admin)),
            (
                "DELETE",
                "/api/v1/provisioning-policies/{name}",
                AtLeast(Admin),
            ),
            (
                "POST",
                "/api/v1/provisioning-policies/{name}/keys",
                AtLeast(Admin),
            ),
            (
                "DELETE",
                "/api/v1/provisioning-policies/{name}/keys/{key}",
                AtLeast(Admin),
            ),
        ],
    },
    Group {
        title: "Desired state",
        why: "Anyone may see what runs where and how a rollout stands; operators change it (a deployment changes what devices run, as actions do); templates are shared by deployments, so changing one rolls out to all of them. Secrets likewise: anyone may see where a secret is sealed (never its value, which no route returns), operators set and delete them.",
        rules: &[
            ("GET", "/api/v1/chart-templates", AtLeast(Viewer)),
            ("GET", "/api/v1/chart-templates/{name}", AtLeast(Viewer)),
            ("GET", "/api/v1/deployments", AtLeast(Viewer)),
            ("GET", "/api/v1/deployments/{name}", AtLeast(Viewer)),
            ("GET", "/api/v1/deployments/{name}/status", AtLeast(Viewer)),
            ("POST", "/api/v1/chart-templates", AtLeast(Operator)),
            ("PUT", "/api/v1/chart-templates/{name}", AtLeast(Operator)),
            (
                "DELETE",
                "/api/v1/chart-templates/{name}",
                AtLeast(Operator),
            ),
            ("POST", "/api/v1/deployments", AtLeast(Operator)),
            ("PUT", "/api/v1/deployments/{name}", AtLeast(Operator)),
            ("DELETE", "/api/v1/deployments/{name}", AtLeast(Operator)),
            (
                "POST",
                "/api/v1/deployments/{name}/resume",
                AtLeast(Operator),
            ),
            ("GET", "/api/v1/secrets", AtLeast(Viewer)),
            ("GET", "/api/v1/secrets/{name}", AtLeast(Viewer)),
            ("PUT", "/api/v1/secrets/{name}", AtLeast(Operator)),
            ("DELETE", "/api/v1/secrets/{name}", AtLeast(Operator)),
        ],
    },
    Group {
        title: "Agent releases",
        why: "Anyone may see which agent releases exist, their hashes and signatures, and the key they are signed with; operators publish and delete them, since a release rolled out replaces the agent on devices. Devices download a binary with the token their spec carries, not a login.",
        rules: &[
            ("GET", "/api/v1/agent-releases", AtLeast(Viewer)),
            ("GET", "/api/v1/agent-releases/signing-key", AtLeast(Viewer)),
            ("GET", "/api/v1/agent-releases/{version}", AtLeast(Viewer)),
            (
                "DELETE",
                "/api/v1/agent-releases/{version}",
                AtLeast(Operator),
            ),
            (
                "PUT",
                "/api/v1/agent-releases/{version}/{platform}",
                AtLeast(Operator),
            ),
        ],
    },
    Group {
        title: "Alert rules",
        why: "Anyone may see what the fleet is watched for; operators decide it, since a rule raises alerts that reach people (and deleting one resolves its alerts).",
        rules: &[
            ("GET", "/api/v1/alert-rules", AtLeast(Viewer)),
            ("GET", "/api/v1/alert-rules/{name}", AtLeast(Viewer)),
            ("POST", "/api/v1/alert-rules", AtLeast(Operator)),
            ("PUT", "/api/v1/alert-rules/{name}", AtLeast(Operator)),
            ("DELETE", "/api/v1/alert-rules/{name}", AtLeast(Operator)),
        ],
    },
    Group {
        title: "People and scripts",
        why: "Who may do what: users, their roles, everyone's sessions, service accounts and their API keys. Whoever holds these holds every other right.",
        rules: &[
            ("GET", "/api/v1/sessions", AtLeast(Admin)),
            ("DELETE", "/api/v1/sessions/{id}", AtLeast(Admin)),
            ("GET", "/api/v1/users", AtLeast(Admin)),
            ("POST", "/api/v1/users", AtLeast(Admin)),
            ("DELETE", "/api/v1/users/{username}", AtLeast(Admin)),
            ("PUT", "/api/v1/users/{username}/role", AtLeast(Admin)),
            ("GET", "/api/v1/service-accounts", AtLeast(Admin)),
            ("POST", "/api/v1/service-accounts", AtLeast(Admin)),
            ("DELETE", "/api/v1/service-accounts/{name}", AtLeast(Admin)),
            (
                "GET",
                "/api/v1/service-accounts/{name}/keys",
                AtLeast(Admin),
            ),
            (
                "POST",
                "/api/v1/service-accounts/{name}/keys",
                AtLeast(Admin),
            ),
            (
                "POST",
                "/api/v1/service-accounts/{name}/keys/{id}/revoke",
                AtLeast(Admin),
            ),
        ],
    },
];

/// The access of `method` on `template` (as axum's `MatchedPath` gives it);
/// `None` if the table lacks it, which the caller must refuse. `HEAD` is
/// asked as the `GET` it is answered by.
pub fn access(method: &str, template: &str) -> Option<Access> {
    let method = if method == "HEAD" { "GET" } else { method };
    rules()
        .find(|(m, t, _)| *t == template && (*m == method || *m == ANY_METHOD))
        .map(|(_, _, access)| *access)
}

/// Every rule of every group.
pub fn rules() -> impl Iterator<Item = &'static Rule> {
    GROUPS.iter().flat_map(|group| group.rules.iter())
}

/// Why `role` may not call `method template`: for the 403.
pub fn denial(method: &str, template: &str, role: Role) -> String {
    match access(method, template) {
        Some(Access::AtLeast(least)) => format!(
            "{} role needed for {method} {template}; your role is {role}",
            least.and_above()
        ),
        _ => format!(
            "{method} {template} is not in tetherd's role table, so no role may call it; your role is {role}"
        ),
    }
}

/// `docs/roles.md`: the matrix of every group's routes against the roles.
pub fn render_matrix() -> String {
    let mut out = String::from(
        "# Roles: who may call which route\n\n\
         Generated from `crates/server/src/auth/roles.rs` (ADR 0026); \
         `cargo test -p tether-server --lib roles` fails while this file differs and prints the new text; `TETHER_WRITE_DOCS=1` writes it.\n\n\
         - **admin**: everything.\n\
         - **operator**: runs the fleet (seed 004's device-operator): devices, labels, specs, actions, jobs, tunnels, shells, Kubernetes, logs and metrics.\n\
         - **viewer**: reads the fleet; nothing that changes it, hands out a secret or opens a tunnel.\n\n\
         Users have a role (`tether users create NAME --role R`, `tether users set-role NAME R`); \
         so do service accounts, whose API keys scripts and CI send as `Authorization: Bearer <key>`. \
         A refused call answers 403 naming the role needed and the caller's, and is recorded in the audit log.\n",
    );
    for group in GROUPS {
        out.push_str(&format!("\n## {}\n\n{}\n\n", group.title, group.why));
        out.push_str("| Method | Route | admin | operator | viewer |\n");
        out.push_str("|---|---|---|---|---|\n");
        for (method, template, access) in group.rules {
            let cells: Vec<&str> = Role::ALL
                .iter()
                .map(|role| match access {
                    Access::Public => "no login",
                    Access::Own => "own",
                    _ if access.allows(*role) => "yes",
                    _ => "—",
                })
                .collect();
            out.push_str(&format!(
                "| {method} | `{template}` | {} |\n",
                cells.join(" | ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_may_do_what_the_roles_below_it_may() {
        for (_, _, access) in rules() {
            if access.allows(Role::Viewer) {
                assert!(access.allows(Role::Operator));
            }
            if access.allows(Role::Operator) {
                assert!(access.allows(Role::Admin));
            }
        }
    }

    #[test]
    fn a_route_missing_from_the_table_has_no_access() {
        assert_eq!(access("GET", "/api/v1/nowhere"), None);
        assert_eq!(access("PUT", "/api/v1/devices"), None);
    }

    #[test]
    fn a_viewer_reads_but_cannot_change_open_or_take_a_secret() {
        let viewer = |method, template| {
            access(method, template)
                .expect("in the table")
                .allows(Role::Viewer)
        };
        assert!(viewer("GET", "/api/v1/devices/{name}"));
        assert!(viewer("HEAD", "/api/v1/devices/{name}"));
        assert!(!viewer("POST", "/api/v1/devices/{name}/actions"));
        assert!(!viewer("GET", "/api/v1/devices/{name}/tunnel"));
        assert!(!viewer("POST", "/api/v1/devices/{name}/enrollment-token"));
        assert!(!viewer("GET", "/api/v1/devices/{name}/kubernetes/{*path}"));
        assert!(viewer("DELETE", "/api/v1/users/me/ssh-keys/{id}"));
    }

    #[test]
    fn every_write_is_refused_to_a_viewer_unless_it_is_the_callers_own() {
        for (method, template, access) in rules() {
            if *method != "GET" && !matches!(access, Access::Public | Access::Own) {
                assert!(
                    !access.allows(Role::Viewer),
                    "{method} {template} changes something"
                );
            }
        }
    }

    #[test]
    fn each_route_is_in_the_table_once() {
        let mut seen = std::collections::HashSet::new();
        for (method, template, _) in rules() {
            assert!(seen.insert((method, template)), "{method} {template} twice");
            assert!(
                template.starts_with('/'),
                "{template} is a MatchedPath template"
            );
        }
    }

    #[test]
    fn a_denial_names_the_roles_needed_and_the_callers() {
        assert_eq!(
            denial("POST", "/api/v1/devices/{name}/actions", Role::Viewer),
            "operator or admin role needed for POST /api/v1/devices/{name}/actions; your role is viewer"
        );
        assert_eq!(
            denial("GET", "/api/v1/sessions", Role::Operator),
            "admin role needed for GET /api/v1/sessions; your role is operator"
        );
        assert!(denial("GET", "/api/v1/new", Role::Admin).contains("not in tetherd's role table"));
    }

    #[test]
    fn docs_roles_md_is_the_rendered_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/roles.md");
        let rendered = render_matrix();
        if std::env::var_os("TETHER_WRITE_DOCS").is_some() {
            std::fs::write(path, &rendered).expect("write docs/roles.md");
        }
        let written = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            written == rendered,
            "docs/roles.md differs from the role table; write this text to it \
             (or run this test with TETHER_WRITE_DOCS=1):\n\n{rendered}"
        );
    }
}
