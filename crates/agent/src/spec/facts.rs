//! The facts of the machine the agent reports in its status, gathered once
//! at start from files the kernel and the OS keep. Each parser is a pure
//! function of the file's text; a file that is missing leaves its fact out.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tether_proto::spec::{Facts, KubernetesFacts, OsRelease};

/// Reads the facts under `root` (`/` on a device; a prepared tree in tests).
pub fn gather(root: &Path) -> Facts {
    let read = |path: &str| std::fs::read_to_string(root.join(path)).ok();
    let cpuinfo = read("proc/cpuinfo").unwrap_or_default();
    Facts {
        hardware_serial: [
            "sys/class/dmi/id/product_serial",
            "proc/device-tree/serial-number",
        ]
        .into_iter()
        .find_map(|path| read(path).and_then(|text| trimmed(&text))),
        machine_id: read("etc/machine-id").and_then(|text| trimmed(&text)),
        macs: macs(&root.join("sys/class/net")),
        cpu_model: cpu_model(&cpuinfo),
        cpu_cores: cpu_cores(&cpuinfo),
        memory_total_bytes: read("proc/meminfo").map_or(0, |text| memory_total_bytes(&text)),
        os_release: read("etc/os-release")
            .or_else(|| read("usr/lib/os-release"))
            .map(|text| os_release(&text)),
        kernel: read("proc/sys/kernel/osrelease").and_then(|text| trimmed(&text)),
        hostname: read("proc/sys/kernel/hostname").and_then(|text| trimmed(&text)),
        agent_version: crate::self_update::agent_version().to_owned(),
        kubernetes: None,
    }
}

/// A `--facts-file` that cannot be laid over the gathered facts.
#[derive(Debug, thiserror::Error)]
pub enum FactsFileError {
    #[error("cannot read the facts file {path}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the facts file {path} is not usable: {problem}")]
    Invalid {
        path: std::path::PathBuf,
        problem: String,
    },
}

/// `facts` with the fields of the `--facts-file` at `path` in place of the
/// gathered ones.
pub fn overlay_file(facts: Facts, path: &Path) -> Result<Facts, FactsFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FactsFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    overlay(facts, &text).map_err(|problem| FactsFileError::Invalid {
        path: path.to_owned(),
        problem,
    })
}

/// `facts` with each field the JSON object `text` names replaced by its
/// value there (a whole field: `macs` replaces every MAC; `null` removes
/// an optional fact). Lets a test, or a machine that hides its serial
/// number, say what the gathered facts cannot.
pub fn overlay(facts: Facts, text: &str) -> Result<Facts, String> {
    let given: serde_json::Map<String, Value> = serde_json::from_str(text).map_err(|e| {
        format!("expected a JSON object of facts such as {{\"hardwareSerial\": \"SN-1\"}}: {e}")
    })?;
    let known = known_fields();
    let Ok(Value::Object(mut merged)) = serde_json::to_value(facts) else {
        return Err("the gathered facts are not a JSON object".into());
    };
    for (name, value) in given {
        if !known.contains(&name) {
            return Err(format!(
                "{name:?} is not a fact; the facts are {}",
                known.join(", ")
            ));
        }
        merged.insert(name, value);
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| e.to_string())
}

/// The JSON names of every fact but `agentVersion`, which is always this
/// agent's. Built from a value with every field set,
/// written out without `..Default::default()`, so a new fact cannot be
/// forgotten here.
fn known_fields() -> Vec<String> {
    let every = Facts {
        hardware_serial: Some(String::new()),
        machine_id: Some(String::new()),
        macs: BTreeMap::new(),
        cpu_model: Some(String::new()),
        cpu_cores: 0,
        memory_total_bytes: 0,
        os_release: Some(OsRelease::default()),
        kernel: Some(String::new()),
        hostname: Some(String::new()),
        agent_version: String::new(),
        kubernetes: Some(KubernetesFacts::default()),
    };
    match serde_json::to_value(every) {
        Ok(Value::Object(fields)) => fields
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name != "agentVersion")
            .collect(),
        _ => Vec::new(),
    }
}

/// The text without surrounding whitespace and NULs (device-tree strings
/// end in one); `None` if nothing is left.
fn trimmed(text: &str) -> Option<String> {
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!text.is_empty()).then(|| text.to_owned())
}

/// `PRETTY_NAME`, `ID` and `VERSION_ID` of an os-release file
/// (`os-release(5)`: shell-style assignments, values optionally quoted).
pub fn os_release(text: &str) -> OsRelease {
    let mut release = OsRelease::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        match key {
            "PRETTY_NAME" => release.pretty_name = value,
            "ID" => release.id = value,
            "VERSION_ID" => release.version_id = value,
            _ => {}
        }
    }
    release
}

fn unquote(value: &str) -> String {
    let inner = ['"', '\'']
        .into_iter()
        .find_map(|q| value.strip_prefix(q).and_then(|v| v.strip_suffix(q)))
        .unwrap_or(value);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                out.push(escaped);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The CPU model from `/proc/cpuinfo`: `model name` on x86, `Model` or
/// `Hardware` on ARM boards, `cpu model` elsewhere.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    let field = |wanted: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == wanted).then(|| value.trim().to_owned())
        })
    };
    ["model name", "Model", "Hardware", "cpu model"]
        .into_iter()
        .find_map(|key| field(key).filter(|value| !value.is_empty()))
}

/// Logical CPUs: one `processor` entry each.
pub fn cpu_cores(cpuinfo: &str) -> u32 {
    let entries = cpuinfo
        .lines()
        .filter(|line| {
            line.split_once(':')
                .is_some_and(|(key, _)| key.trim() == "processor")
        })
        .count();
    u32::try_from(entries).unwrap_or(u32::MAX)
}

/// `MemTotal` of `/proc/meminfo`, in bytes (the file says kB, meaning KiB).
pub fn memory_total_bytes(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("MemTotal:")?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(0)
}

/// Each interface's MAC address, loopback and all-zero addresses left out.
fn macs(class_net: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(class_net) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mac = std::fs::read_to_string(entry.path().join("address")).ok()?;
            let mac = mac.trim().to_owned();
            let real =
                name != "lo" && !mac.is_empty() && mac.bytes().any(|b| b != b'0' && b != b':');
            real.then_some((name, mac))
        })
        .take(tether_proto::spec::ReportedStatus::MAX_MACS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_facts_file_replaces_the_fields_it_names_and_only_those() {
        let gathered = Facts {
            hardware_serial: Some("REAL".into()),
            machine_id: Some("m1".into()),
            macs: [("eth0".to_owned(), "aa:bb".to_owned())].into(),
            cpu_cores: 4,
            hostname: Some("pi".into()),
            agent_version: crate::self_update::agent_version().into(),
            ..Facts::default()
        };
        let facts = overlay(
            gathered.clone(),
            r#"{"hardwareSerial": "SN-1", "macs": {"wlan0": "cc:dd"}, "hostname": null}"#,
        )
        .expect("overlays");
        assert_eq!(facts.hardware_serial.as_deref(), Some("SN-1"));
        assert_eq!(
            facts.macs,
            BTreeMap::from([("wlan0".to_owned(), "cc:dd".to_owned())]),
            "a field is replaced whole"
        );
        assert_eq!(facts.hostname, None, "null removes a fact");
        assert_eq!(facts.machine_id.as_deref(), Some("m1"), "the rest stays");
        assert_eq!(facts.cpu_cores, 4);
        assert_eq!(overlay(gathered.clone(), "{}").expect("empty"), gathered);
        let versioned =
            overlay(gathered.clone(), r#"{"agentVersion": "9"}"#).expect_err("not a fact");
        assert!(
            versioned.contains("\"agentVersion\" is not a fact"),
            "{versioned}"
        );
    }

    #[test]
    fn a_bad_facts_file_says_what_is_wrong() {
        let err = overlay(Facts::default(), r#"{"serial": "SN-1"}"#).expect_err("unknown");
        assert!(err.contains("\"serial\" is not a fact"), "{err}");
        assert!(
            err.contains("hardwareSerial"),
            "the facts are listed: {err}"
        );
        let err = overlay(Facts::default(), r#"["SN-1"]"#).expect_err("not an object");
        assert!(err.contains("expected a JSON object of facts"), "{err}");
        let err = overlay(Facts::default(), "{not json").expect_err("bad JSON");
        assert!(err.contains("expected a JSON object of facts"), "{err}");
        let err = overlay(Facts::default(), r#"{"cpuCores": "four"}"#).expect_err("wrong type");
        assert!(err.contains("invalid type"), "{err}");
        let temp = tempfile::tempdir().expect("temp dir");
        let err =
            overlay_file(Facts::default(), &temp.path().join("none.json")).expect_err("missing");
        assert!(err.to_string().contains("none.json"), "{err}");
    }

    #[test]
    fn os_release_reads_quoted_and_bare_values() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\nID=debian\n# comment\nHOME_URL='https://www.debian.org/'\n";
        assert_eq!(
            os_release(text),
            OsRelease {
                pretty_name: "Debian GNU/Linux 13 (trixie)".into(),
                id: "debian".into(),
                version_id: "13".into(),
            }
        );
        let escaped = os_release("PRETTY_NAME=\"Say \\\"hi\\\"\"\n");
        assert_eq!(escaped.pretty_name, "Say \"hi\"");
        assert_eq!(os_release("garbage"), OsRelease::default());
    }

    #[test]
    fn cpuinfo_gives_model_and_cores_on_x86_and_arm() {
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            cpu_model(x86).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_cores(x86), 2);
        let pi = "processor\t: 0\nBogoMIPS\t: 108.00\nprocessor\t: 1\nprocessor\t: 2\nprocessor\t: 3\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        assert_eq!(
            cpu_model(pi).as_deref(),
            Some("Raspberry Pi 4 Model B Rev 1.4")
        );
        assert_eq!(cpu_cores(pi), 4);
        assert_eq!(cpu_model(""), None);
    }

    #[test]
    fn meminfo_total_is_in_bytes() {
        let text = "MemTotal:        8029784 kB\nMemFree:          123 kB\n";
        assert_eq!(memory_total_bytes(text), 8_029_784 * 1024);
        assert_eq!(memory_total_bytes("nothing"), 0);
    }

    #[test]
    fn facts_come_from_whichever_files_exist() {
        let root = tempfile::tempdir().expect("temp dir");
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, text).expect("write");
        };
        write("proc/device-tree/serial-number", "10000000abcdef\0");
        write("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
        write(
            "etc/os-release",
            "ID=alpine\nVERSION_ID=3.20.0\nPRETTY_NAME=\"Alpine Linux v3.20\"\n",
        );
        write("sys/class/net/lo/address", "00:00:00:00:00:00\n");
        write("sys/class/net/eth0/address", "dc:a6:32:01:02:03\n");
        write("proc/sys/kernel/osrelease", "6.6.31+rpt-rpi-v8\n");
        write("proc/sys/kernel/hostname", "pi-17\n");
        let facts = gather(root.path());
        assert_eq!(facts.hardware_serial.as_deref(), Some("10000000abcdef"));
        assert_eq!(
            facts.machine_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            facts.macs,
            BTreeMap::from([("eth0".to_owned(), "dc:a6:32:01:02:03".to_owned())])
        );
        assert_eq!(facts.os_release.map(|os| os.id).as_deref(), Some("alpine"));
        assert_eq!(facts.kernel.as_deref(), Some("6.6.31+rpt-rpi-v8"));
        assert_eq!(facts.hostname.as_deref(), Some("pi-17"));
        assert_eq!(facts.cpu_model, None);
        assert_eq!(facts.agent_version, crate::self_update::agent_version());

        write("sys/class/dmi/id/product_serial", "VMware-56 4d\n");
        assert_eq!(
            gather(root.path()).hardware_serial.as_deref(),
            Some("VMware-56 4d")
        );
    }
}
