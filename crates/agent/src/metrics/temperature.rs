//! Temperatures the kernel exposes: thermal zones
//! (`/sys/class/thermal/thermal_zone*/{type,temp}`) and hardware monitors
//! (`/sys/class/hwmon/hwmon*/{name,temp*_input,temp*_label}`). Many hosts
//! (containers, VMs) have neither: then there are none.

use std::path::Path;

use tether_proto::metrics::TemperatureSample;

/// A sysfs temperature: millidegrees Celsius.
pub fn parse_millidegrees(text: &str) -> Option<f32> {
    let milli: i64 = text.trim().parse().ok()?;
    Some((milli as f64 / 1000.0) as f32)
}

/// The sensor's name: `zone:type` for a thermal zone, `chip:label` (or
/// `chip:tempN`) for a hardware monitor.
pub fn sensor_name(device: &str, kind: &str) -> String {
    format!("{}:{}", device.trim(), kind.trim())
}

/// Every temperature under `root`'s `/sys/class`.
pub fn read(root: &Path) -> Vec<TemperatureSample> {
    let mut out = Vec::new();
    let read = |path: &Path| std::fs::read_to_string(path).ok();
    let thermal = root.join("sys/class/thermal");
    for zone in sorted_entries(&thermal, "thermal_zone") {
        let dir = thermal.join(&zone);
        if let (Some(kind), Some(celsius)) = (
            read(&dir.join("type")),
            read(&dir.join("temp"))
                .as_deref()
                .and_then(parse_millidegrees),
        ) {
            out.push(TemperatureSample {
                s: sensor_name(&zone, &kind),
                c: celsius,
            });
        }
    }
    let hwmon = root.join("sys/class/hwmon");
    for monitor in sorted_entries(&hwmon, "hwmon") {
        let dir = hwmon.join(&monitor);
        let chip = read(&dir.join("name")).unwrap_or_else(|| monitor.clone());
        for input in sorted_entries(&dir, "temp") {
            let Some(index) = input.strip_suffix("_input") else {
                continue;
            };
            let Some(celsius) = read(&dir.join(&input))
                .as_deref()
                .and_then(parse_millidegrees)
            else {
                continue;
            };
            let label =
                read(&dir.join(format!("{index}_label"))).unwrap_or_else(|| index.to_owned());
            out.push(TemperatureSample {
                s: sensor_name(&chip, &label),
                c: celsius,
            });
        }
    }
    out
}

fn sorted_entries(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_and_monitors_are_read_and_absence_is_no_error() {
        let root = tempfile::tempdir().expect("temp dir");
        assert!(read(root.path()).is_empty(), "nothing exposed: none");
        let zone = root.path().join("sys/class/thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).expect("mkdir");
        std::fs::write(zone.join("type"), "x86_pkg_temp\n").expect("write");
        std::fs::write(zone.join("temp"), "41500\n").expect("write");
        let chip = root.path().join("sys/class/hwmon/hwmon1");
        std::fs::create_dir_all(&chip).expect("mkdir");
        std::fs::write(chip.join("name"), "coretemp\n").expect("write");
        std::fs::write(chip.join("temp1_input"), "-5000\n").expect("write");
        std::fs::write(chip.join("temp1_label"), "Core 0\n").expect("write");
        std::fs::write(chip.join("temp2_input"), "junk\n").expect("write");
        std::fs::write(chip.join("temp3_input"), "30000\n").expect("write");
        let got: Vec<(String, f32)> = read(root.path()).into_iter().map(|t| (t.s, t.c)).collect();
        assert_eq!(
            got,
            [
                ("thermal_zone0:x86_pkg_temp".to_owned(), 41.5),
                ("coretemp:Core 0".to_owned(), -5.0),
                ("coretemp:temp3".to_owned(), 30.0),
            ]
        );
    }
}
