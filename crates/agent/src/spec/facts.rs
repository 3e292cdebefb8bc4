//! The facts of the machine the agent reports in its status, gathered once
//! at start from files the kernel and the OS keep. Each parser is a pure
//! function of the file's text; a file that is missing leaves its fact out.

use std::collections::BTreeMap;
use std::path::Path;

use tether_proto::spec::{Facts, OsRelease};

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
        agent_version: crate::actions::AGENT_VERSION.to_owned(),
        kubernetes: None,
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
        assert_eq!(facts.agent_version, crate::actions::AGENT_VERSION);

        write("sys/class/dmi/id/product_serial", "VMware-56 4d\n");
        assert_eq!(
            gather(root.path()).hardware_serial.as_deref(),
            Some("VMware-56 4d")
        );
    }
}
