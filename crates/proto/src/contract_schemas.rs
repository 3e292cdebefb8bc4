//! The device contract's JSON Schemas (`docs/schemas/`) against the types
//! tetherd and tether-agent actually put on the wire, so neither can drift:
//! every value serialized from these types validates, every field they
//! write is declared in the schema, and what the schema forbids is refused.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use crate::metrics::{
    DiskIoSample, HostMetrics, HostSample, InterfaceSample, MemorySample, MountSample,
    TemperatureSample,
};
use crate::spec::{Facts, KubernetesFacts, OsRelease, ReportedStatus, SpecError, SpecMessage};
use crate::{ActionEvent, ActionRequest, DeviceStatus, Presence};

fn schema_source(name: &str) -> Value {
    let text = match name {
        "status" => include_str!("../../../docs/schemas/status.schema.json"),
        "actions" => include_str!("../../../docs/schemas/actions.schema.json"),
        "events" => include_str!("../../../docs/schemas/events.schema.json"),
        "metrics" => include_str!("../../../docs/schemas/metrics.schema.json"),
        "host-sample" => include_str!("../../../docs/schemas/host-sample.schema.json"),
        "spec" => include_str!("../../../docs/schemas/spec.schema.json"),
        "reported" => include_str!("../../../docs/schemas/reported.schema.json"),
        "control" => include_str!("../../../docs/schemas/control.schema.json"),
        other => panic!("no schema {other}"),
    };
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{name} schema is not JSON: {e}"))
}

fn schema(name: &str) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema_source(name))
        .unwrap_or_else(|e| panic!("{name} schema is not a valid JSON Schema: {e}"))
}

/// Validates `value` (serialized from a proto type) against schema `name`, and
/// checks that every field it carries is declared there.
fn assert_conforms(name: &str, value: &Value) {
    let validator = schema(name);
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{name}: {value} does not conform: {errors:?}"
    );
    let declared: BTreeSet<String> = schema_source(name)["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} schema declares no properties"))
        .keys()
        .cloned()
        .collect();
    let written: BTreeSet<String> = value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    let undeclared: Vec<&String> = written.difference(&declared).collect();
    assert!(
        undeclared.is_empty(),
        "{name}: fields {undeclared:?} are on the wire but not in docs/schemas/{name}.schema.json"
    );
}

fn refused(name: &str, value: &Value) -> bool {
    !schema(name).is_valid(value)
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).expect("valid")
}

#[test]
fn the_agents_birth_and_death_conform_to_the_status_schema() {
    for state in [Presence::Online, Presence::Offline] {
        let status = DeviceStatus {
            state,
            agent_version: "0.1.0".into(),
            capabilities: vec!["get-node-ip".into(), "run-stats".into()],
            boot_id: "5f0c6c1e-2d7e-4d1a-9a59-3f8e1b2c4d5e".into(),
            seq: 3,
        };
        assert_conforms("status", &serde_json::to_value(&status).expect("JSON"));
    }
    // What a third-party device may send: bootId and seq are optional.
    let minimal = json!({"state": "online", "agentVersion": "acme-1.2", "capabilities": []});
    assert!(!refused("status", &minimal));
    assert!(refused(
        "status",
        &json!({"state": "maybe", "agentVersion": "1"})
    ));
    assert!(
        !refused("status", &json!({"state": "offline"})),
        "only state is required"
    );
    assert!(refused("status", &json!({"agentVersion": "1"})));
    assert!(refused(
        "status",
        &json!({"state": "online", "agentVersion": "v".repeat(65)})
    ));
    assert!(refused(
        "status",
        &json!({"state": "online", "agentVersion": "1", "seq": -1})
    ));
}

#[test]
fn what_tetherd_publishes_conforms_to_the_actions_schema() {
    let request = ActionRequest {
        correlation_id: "0193a4d2-7c1e-7b3a-9f00-2b1c3d4e5f60".into(),
        action: "send-api".into(),
        input: json!({"href": "https://example.com/health"}),
        expires_at: at(1_800_000_030),
        expires_in_ms: None,
        sent_at: None,
    };
    let published = request.stamped(at(1_800_000_000));
    assert_conforms("actions", &serde_json::to_value(&published).expect("JSON"));
    let expired = request.stamped(at(1_800_000_000) + TimeDelta::minutes(5));
    assert_conforms("actions", &serde_json::to_value(&expired).expect("JSON"));
    // An unstamped request never leaves tetherd: the schema requires the TTL.
    assert!(refused(
        "actions",
        &serde_json::to_value(&request).expect("JSON")
    ));
    let mut bad = serde_json::to_value(&published).expect("JSON");
    bad["expiresAt"] = json!("tomorrow");
    assert!(refused("actions", &bad), "expiresAt must be a date-time");
}

#[test]
fn the_agents_answers_conform_to_the_events_schema() {
    let request = ActionRequest {
        correlation_id: "c-1".into(),
        action: "get-node-ip".into(),
        input: Value::Null,
        expires_at: at(1_800_000_030),
        expires_in_ms: None,
        sent_at: None,
    };
    for (code, response) in [
        (200, json!({"addresses": ["192.0.2.1"]})),
        (410, Value::Null),
        (500, Value::Null),
    ] {
        let event = ActionEvent::new(&request, "get-node-ip", code, "message", response);
        assert_conforms("events", &serde_json::to_value(&event).expect("JSON"));
    }
    assert!(refused(
        "events",
        &json!({"correlationId": "c-1", "event": "x", "statusCode": 42, "statusMessage": ""})
    ));
    assert!(refused(
        "events",
        &json!({"correlationId": "c-1", "event": "x", "statusMessage": "no code"})
    ));
}

#[test]
fn the_agents_samples_conform_to_the_metrics_schema() {
    let sample = HostMetrics {
        sampled_at: at(1_800_000_000),
        cpu_percent: 12.5,
        memory_used_bytes: 1 << 30,
        memory_total_bytes: 4 << 30,
        disk_used_bytes: 10 << 30,
        disk_total_bytes: 64 << 30,
        network_rx_bytes: 1_234,
        network_tx_bytes: 0,
    };
    let value = serde_json::to_value(&sample).expect("JSON");
    assert_conforms("metrics", &value);
    let mut bad = value;
    bad["cpuPercent"] = json!(250);
    assert!(refused("metrics", &bad));
}

#[test]
fn the_agents_host_samples_conform_to_the_host_sample_schema() {
    let sample = HostSample {
        at: at(1_800_000_000),
        interval_ms: 60_000,
        cpu: vec![12.5, 20.0, 5.0],
        load: Some([0.5, 0.25, 0.125]),
        mem: Some(MemorySample {
            t: 4 << 30,
            a: 3 << 30,
            st: 1 << 30,
            sf: 1 << 29,
        }),
        fs: vec![MountSample {
            m: "/".into(),
            t: 64 << 30,
            u: 10 << 30,
            a: 50 << 30,
        }],
        io: vec![DiskIoSample {
            d: "mmcblk0".into(),
            r: 4096,
            w: 8192,
        }],
        net: vec![InterfaceSample {
            i: "eth0".into(),
            rb: 1_000,
            tb: 500,
            rp: 10,
            tp: 5,
            re: 0,
            te: 1,
        }],
        temp: vec![TemperatureSample {
            s: "thermal_zone0:cpu-thermal".into(),
            c: 45.5,
        }],
        procs: Some(120),
        uptime: Some(86_400),
    };
    let value = serde_json::to_value(&sample).expect("JSON");
    assert_eq!(value["at"], 1_800_000_000_000_i64, "milliseconds");
    assert_conforms("host-sample", &value);
    // The least an agent may send: the instant.
    let bare = serde_json::to_value(HostSample {
        at: at(1_800_000_000),
        ..HostSample::default()
    })
    .expect("JSON");
    assert_eq!(bare, json!({"at": 1_800_000_000_000_i64, "intervalMs": 0}));
    assert_conforms("host-sample", &bare);
    let mut bad = value;
    bad["cpu"] = json!([250]);
    assert!(refused("host-sample", &bad));
    bad["cpu"] = json!([]);
    bad["net"][0]["bytes"] = json!(1);
    assert!(refused("host-sample", &bad));
}

#[test]
fn what_tetherd_sends_conforms_to_the_spec_schema() {
    let spec = json!({
        "loggingConfig": {"enableJournalExport": true, "priority": 4, "units": ["ssh.service"]},
        "metricsConfig": {"intervalSeconds": 30},
        "budgets": {"logs": 50_000_000, "actions": 0, "spoolReplay": 1},
        "actions": {"enabled": ["manage-deployment"], "disabled": ["send-kubectl"]},
        "secrets": {"db-password": {"version": 2, "ciphertext": "AQ=="}},
        "time": {"ntpServers": ["pool.ntp.org", "192.0.2.1"], "maxOffsetSeconds": 10},
        "network": {
            "netplan": "network:\n  version: 2\n  ethernets:\n    eth0:\n      addresses: [10.0.0.2/24]\n",
            "rollbackSeconds": 60,
        },
        "deployments": {"line-3": {"version": "4-1a2b", "charts": [
            serde_json::to_value(crate::desired::ChartRelease {
                release: "edge-agent".into(),
                chart: "edge-agent".into(),
                source: "https://charts.example.com/stable".into(),
                version: Some("~1.4".into()),
                namespace: Some("factory".into()),
                hostname: Some("node-a.lan".into()),
                values: json!({"nodeId": "line-3", "replicas": 1}).as_object().cloned().expect("object"),
            }).expect("JSON"),
            {"release": "monitor", "chart": "monitor", "source": "oci://registry.example.com:5000/charts"},
        ]}, "tether-agent": {"version": "5-7c1d", "agent":
            serde_json::to_value(crate::desired::agent_release::AgentRelease {
                version: "1.4.0".into(),
                signing_key: "9x1m0ylxHfH4bL1nJ6hGLJ3YhYGBhUaLCm3vCmoN8hw=".into(),
                binaries: [("linux-x86_64".to_owned(), crate::desired::agent_release::AgentBinary {
                    sha256: "ab".repeat(32),
                    size: 6_520_616,
                    signature: format!("{}==", "A".repeat(86)),
                })].into(),
                download_token: "sim-1.1.4.0.9f2c".into(),
                allow_downgrade: true,
            }).expect("JSON"),
        }},
    });
    assert_eq!(crate::spec::validate(&spec), Ok(()));
    let message = SpecMessage {
        version: 7,
        spec: spec.as_object().cloned().expect("object"),
    };
    assert_conforms("spec", &serde_json::to_value(&message).expect("JSON"));
    // What tetherd refuses, the schema refuses too.
    for bad in [
        json!({"loggingConfig": {"priority": 8}}),
        json!({"metricsConfig": {"intervalSeconds": 0}}),
        json!({"budgets": {"video": 1}}),
        json!({"budgets": {"spoolReplay": 0}}),
        json!({"actions": {"enabled": "get-node-ip"}}),
        json!({"actions": {"enabled": ["get-node-ip", "get-node-ip"]}}),
        json!({"actions": {"allowed": []}}),
        json!({"deployments": {"d": {"version": "1", "charts": [
            {"release": "web", "chart": "web", "source": "http://charts.example.com"}]}}}),
        json!({"deployments": {"d": {"version": "1", "agent": {"version": "1.4.0"}}}}),
        json!({"secrets": {"Db": {"version": 1, "ciphertext": "AQ=="}}}),
        json!({"secrets": {"db": {"version": 1, "ciphertext": ""}}}),
        json!({"secrets": {"db": {"version": 1, "ciphertext": "AQ==", "value": "x"}}}),
        json!({"time": {"ntpServers": ["a.example", "a.example"]}}),
        json!({"time": {"maxOffsetSeconds": 0}}),
        json!({"time": {"servers": []}}),
        json!({"time": {"ntpServers": ["a.example", "b", "c", "d", "e", "f", "g", "h", "i"]}}),
        json!({"deployments": {"d": {"version": "1", "charts": [
            {"release": "web", "chart": "web", "source": "oci://registry.example.com"}]}}}),
        json!({"deployments": {"d": {"version": "1", "charts": [
            {"release": "web", "chart": "web", "source": "https://u:p@charts.example.com"}]}}}),
        json!({"deployments": {"d": {"version": "1", "charts": [
            {"release": "Web", "chart": "web", "source": "https://charts.example.com"}]}}}),
        json!({"deployments": {"d": {"version": "1", "charts": [
            {"release": "web", "chart": "../web", "source": "https://charts.example.com"}]}}}),
        json!({"deployments": {"d": {"version": "1", "charts": [
            {"release": "web", "chart": "web", "source": "https://charts.example.com", "hostname": "Node A"}]}}}),
        json!({"deployments": {"d": {"version": "1", "charts": [
            {"release": "web", "chart": "web", "source": "https://charts.example.com", "repo": "x"}]}}}),
    ] {
        assert!(crate::spec::validate(&bad).is_err(), "{bad}");
        assert!(
            refused("spec", &json!({"version": 1, "spec": bad})),
            "{bad}"
        );
    }
}

#[test]
fn the_agents_report_conforms_to_the_reported_schema() {
    let reported = ReportedStatus {
        spec_version: 7,
        errors: vec![SpecError::new(
            "spec.loggingConfig.units[1]",
            "\"x\" is not a systemd unit name",
        )],
        facts: Facts {
            hardware_serial: Some("10000000abcdef".into()),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
            macs: [("eth0".to_owned(), "dc:a6:32:01:02:03".to_owned())].into(),
            cpu_model: Some("Raspberry Pi 4 Model B Rev 1.4".into()),
            cpu_cores: 4,
            memory_total_bytes: 8 << 30,
            os_release: Some(OsRelease {
                pretty_name: "Debian GNU/Linux 13 (trixie)".into(),
                id: "debian".into(),
                version_id: "13".into(),
            }),
            kernel: Some("6.6.31".into()),
            hostname: Some("pi-17".into()),
            agent_version: "0.1.0".into(),
            kubernetes: Some(KubernetesFacts {
                mode: "host".into(),
                cluster: "default".into(),
                server: Some("https://127.0.0.1:6443".into()),
            }),
        },
        deployments: [(
            "web".to_owned(),
            crate::desired::DeploymentStatus {
                version: "3-9f2c".into(),
                state: crate::desired::DeploymentState::Failed,
                reason: Some("process web exited with status 1, 5 times".into()),
            },
        )]
        .into(),
        update_holds: vec![
            crate::desired::updates::UpdateHold {
                kind: crate::desired::updates::HoldKind::Lock,
                name: Some("firmware-flash".into()),
                reason: "flashing the PLC".into(),
                until: None,
                owner_uid: Some(1000),
            },
            crate::desired::updates::UpdateHold {
                kind: crate::desired::updates::HoldKind::Window,
                name: None,
                reason: "outside the maintenance windows".into(),
                until: Some(chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("time")),
                owner_uid: None,
            },
        ],
        sealing_key: Some("9x1m0ylxHfH4bL1nJ6hGLJ3YhYGBhUaLCm3vCmoN8hw=".into()),
        boot: Some(crate::host::BootReport {
            id: "3f1c2a9e-5b7d-4e0a-9c1b-2d3e4f5a6b7c".into(),
            booted_at: Some(at(1_700_000_000)),
        }),
        watchdog: Some(crate::host::WatchdogStatus {
            mode: crate::host::WatchdogMode::Device,
            device: Some("/dev/watchdog".into()),
            state: crate::host::WatchdogState::Stopped,
            reason: Some("the state directory cannot be written".into()),
        }),
        time: Some(crate::host_time::HostTime {
            offset_millis: Some(-600_123),
            measured_at: Some(at(1_800_000_000)),
            sync_state: crate::host_time::SyncState::Unsynchronized,
            source: crate::host_time::TimeSource::Timesyncd,
            ntp_servers: vec!["pool.ntp.org".into()],
        }),
        conditions: vec![crate::conditions::ReportedCondition {
            kind: "ClockSkewed".into(),
            reason: "OffsetBeyondLimit".into(),
            message: "the device's clock is 600.1 s ahead of tetherd's".into(),
            since: at(1_800_000_000),
        }],
        network: Some(crate::network::NetworkStatus {
            interfaces: vec![crate::network::InterfaceStatus {
                name: "eth0".into(),
                mac: Some("dc:a6:32:01:02:03".into()),
                state: crate::network::LinkState::Up,
                mtu: 1500,
                addresses: vec!["10.0.0.2/24".into(), "fd00::2/64".into()],
            }],
            routes: vec![crate::network::RouteStatus {
                destination: "default".into(),
                gateway: Some("10.0.0.1".into()),
                interface: Some("eth0".into()),
            }],
            dns: crate::network::DnsStatus {
                servers: vec!["10.0.0.1".into()],
                search: vec!["example.com".into()],
            },
            last_apply: Some(crate::network::LastApply {
                state: crate::network::ApplyState::RolledBack,
                reason: Some("tetherd was not reached within 120 s".into()),
                at: chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("time"),
            }),
        }),
    };
    assert_conforms("reported", &serde_json::to_value(&reported).expect("JSON"));
    assert!(!refused("reported", &json!({"specVersion": 0})));
    assert!(refused("reported", &json!({"errors": []})));
    assert!(refused("reported", &json!({"specVersion": -1})));
}

#[test]
fn processes_and_config_files_conform_to_the_spec_schema() {
    let deployments = json!({"app": {
        "version": "v1",
        "processes": {
            "db": {"execCmd": "/usr/bin/db", "restartLimit": 3, "healthCheck": {"command": ["/bin/true"]}},
            "web": {
                "execCmd": "server",
                "execArgs": ["--port", "8080"],
                "env": {"MODE": "edge"},
                "inheritEnv": true,
                "restart": "on-failure",
                "restartPauseSeconds": 2,
                "dependsOn": ["db"],
                "restartOnDependencyFail": true,
                "noAutostart": false,
                "healthCheck": {"httpGet": "http://127.0.0.1:8080/healthz", "intervalSeconds": 5, "timeoutSeconds": 2},
                "startTimeoutSeconds": 20,
                "artifacts": [{"url": "https://tetherd.example/a/server", "sha256": "a".repeat(64), "name": "server", "mode": "0750"}],
                "configFiles": ["web-conf"]
            }
        },
        "configFiles": {"web-conf": {"path": "/etc/web.conf", "mode": "0640", "template": "port={{ values.port }}"}},
        "values": {"port": 8080},
        "labels": {"site": "north"}
    }});
    assert_eq!(
        crate::desired::validate("spec.deployments", &deployments),
        Ok(())
    );
    // What the types write back validates too (defaults filled in).
    let typed: crate::desired::Deployments =
        serde_json::from_value(deployments.clone()).expect("typed");
    for spec in [deployments, serde_json::to_value(&typed).expect("JSON")] {
        assert_conforms(
            "spec",
            &json!({"version": 1, "spec": {"deployments": spec}}),
        );
    }
    // What the agent refuses by shape, the schema refuses too.
    for bad in [
        json!({"execCmd": "/a", "restart": "sometimes"}),
        json!({"execCmd": "/a", "healthCheck": {"httpGet": "http://10.0.0.1:80/"}}),
        json!({"execCmd": "/a", "healthCheck": {}}),
        json!({"execCmd": "x", "artifacts": [{"url": "http://h/x", "sha256": "a".repeat(64), "name": "x"}]}),
        json!({"execCmd": "x", "artifacts": [{"url": "https://h/x", "sha256": "ABC", "name": "x"}]}),
        json!({"execCmd": "/a", "restartLimit": 100_000}),
        json!({"execCmd": "/a", "colour": "blue"}),
    ] {
        let deployments = json!({"app": {"version": "1", "processes": {"p": bad}}});
        assert!(
            crate::desired::validate("spec.deployments", &deployments).is_err(),
            "{bad}"
        );
        assert!(
            refused(
                "spec",
                &json!({"version": 1, "spec": {"deployments": deployments}})
            ),
            "{bad}"
        );
    }
    for bad in [
        json!({"path": "/etc/../x", "template": ""}),
        json!({"path": "etc/x", "template": ""}),
        json!({"path": "/etc/x", "mode": "0648", "template": ""}),
    ] {
        let deployments = json!({"app": {"version": "1", "configFiles": {"f": bad}}});
        assert!(
            crate::desired::validate("spec.deployments", &deployments).is_err(),
            "{bad}"
        );
        assert!(
            refused(
                "spec",
                &json!({"version": 1, "spec": {"deployments": deployments}})
            ),
            "{bad}"
        );
    }
}

#[test]
fn the_monitors_requests_conform_to_the_control_schema() {
    for message in [
        crate::control::ControlMessage::Rebirth,
        crate::control::ControlMessage::Reload,
    ] {
        assert_conforms("control", &serde_json::to_value(message).expect("json"));
    }
    assert!(refused("control", &json!({"kind": "reboot"})));
    assert!(refused("control", &json!({})));
}
