//! Which time service keeps the device's clock, whether it says the clock
//! is synchronized, and which NTP servers it uses: chrony if `chronyc`
//! answers, else systemd-timesyncd if `timedatectl` answers (systemd runs),
//! else timesyncd's config files if there are any (the servers are known,
//! the state is not), else none. The parsers are pure; [`gather`] runs the
//! commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_proto::host_time::{SyncState, TimeSource};

/// Longest a status command may take; a hung daemon is "unknown".
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// What the device's time service says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceState {
    pub source: TimeSource,
    pub sync_state: SyncState,
    pub ntp_servers: Vec<String>,
}

/// Where the agent looks; flags, so tests can point them at stand-ins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesConfig {
    pub chronyc: PathBuf,
    pub timedatectl: PathBuf,
    /// timesyncd's main file; its drop-ins are `<file>.d/*.conf`.
    pub timesyncd_conf: PathBuf,
}

impl Default for SourcesConfig {
    fn default() -> Self {
        Self {
            chronyc: "chronyc".into(),
            timedatectl: "timedatectl".into(),
            timesyncd_conf: "/etc/systemd/timesyncd.conf".into(),
        }
    }
}

/// The NTP servers timesyncd's files configure, read in systemd's order
/// (the main file, then the drop-ins by name): each `NTP=` in `[Time]`
/// adds its space-separated servers, an empty one clears the list. `None`
/// when none of the files exists.
pub fn timesyncd_servers(files: &[String]) -> Option<Vec<String>> {
    if files.is_empty() {
        return None;
    }
    let mut servers: Vec<String> = Vec::new();
    for text in files {
        let mut in_time = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_time = line == "[Time]";
                continue;
            }
            let Some(value) = line.strip_prefix("NTP").map(str::trim_start) else {
                continue;
            };
            let Some(value) = value.strip_prefix('=').filter(|_| in_time) else {
                continue;
            };
            if value.trim().is_empty() {
                servers.clear();
            }
            for server in value.split_whitespace() {
                if !servers.iter().any(|s| s == server) {
                    servers.push(server.to_owned());
                }
            }
        }
    }
    Some(servers)
}

/// The servers in `timedatectl show-timesync`: the configured ones
/// (`SystemNTPServers`, `LinkNTPServers`), else the fallback ones.
pub fn show_timesync_servers(text: &str) -> Vec<String> {
    let property = |name: &str| -> Vec<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .flat_map(str::split_whitespace)
            .map(str::to_owned)
            .collect()
    };
    let mut servers = property("SystemNTPServers");
    servers.extend(property("LinkNTPServers"));
    if servers.is_empty() {
        servers = property("FallbackNTPServers");
    }
    servers
}

/// `timedatectl show --property=NTPSynchronized --value`: `yes` or `no`.
pub fn ntp_synchronized(text: &str) -> SyncState {
    match text.trim() {
        "yes" => SyncState::Synchronized,
        "no" => SyncState::Unsynchronized,
        _ => SyncState::Unknown,
    }
}

/// `chronyc -c tracking`: the leap status (the 14th field) is
/// `Not synchronised` until chrony has a source.
pub fn chrony_tracking(csv: &str) -> SyncState {
    let fields: Vec<&str> = csv.trim().split(',').collect();
    match fields.get(13).map(|s| s.trim()) {
        Some("Not synchronised") => SyncState::Unsynchronized,
        Some("Normal" | "Insert second" | "Delete second") => SyncState::Synchronized,
        _ => SyncState::Unknown,
    }
}

/// `chronyc -c sources`: the servers and peers (`^`, `=`), not reference
/// clocks (`#`).
pub fn chrony_sources(csv: &str) -> Vec<String> {
    csv.lines()
        .filter_map(|line| {
            let mut fields = line.split(',');
            let mode = fields.next()?;
            let _state = fields.next()?;
            let name = fields.next()?;
            (matches!(mode, "^" | "=") && !name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

/// Asks the device's time service, as the module says.
pub async fn gather(config: &SourcesConfig) -> ServiceState {
    if let Some(tracking) = output(&config.chronyc, &["-c", "tracking"]).await {
        let sources = output(&config.chronyc, &["-c", "sources"])
            .await
            .unwrap_or_default();
        return ServiceState {
            source: TimeSource::Chrony,
            sync_state: chrony_tracking(&tracking),
            ntp_servers: chrony_sources(&sources),
        };
    }
    if let Some(timesync) = output(&config.timedatectl, &["show-timesync"]).await {
        let synchronized = output(
            &config.timedatectl,
            &["show", "--property=NTPSynchronized", "--value"],
        )
        .await
        .unwrap_or_default();
        return ServiceState {
            source: TimeSource::Timesyncd,
            sync_state: ntp_synchronized(&synchronized),
            ntp_servers: show_timesync_servers(&timesync),
        };
    }
    match timesyncd_servers(&read_timesyncd_files(&config.timesyncd_conf)) {
        Some(ntp_servers) => ServiceState {
            source: TimeSource::Timesyncd,
            sync_state: SyncState::Unknown,
            ntp_servers,
        },
        None => ServiceState::default(),
    }
}

/// The main file and its drop-ins (`<file>.d/*.conf`, by name), those that
/// can be read.
fn read_timesyncd_files(main: &Path) -> Vec<String> {
    let mut drop_in_dir = main.as_os_str().to_owned();
    drop_in_dir.push(".d");
    let mut drop_ins: Vec<PathBuf> = std::fs::read_dir(PathBuf::from(drop_in_dir))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "conf"))
        .collect();
    drop_ins.sort();
    std::iter::once(main.to_owned())
        .chain(drop_ins)
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect()
}

/// A command's standard output if it ran and succeeded in time.
async fn output(program: &Path, args: &[&str]) -> Option<String> {
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => String::from_utf8(out.stdout).ok(),
        Ok(Ok(out)) => {
            tracing::debug!(program = %program.display(), ?args, status = %out.status, "time service status command failed");
            None
        }
        Ok(Err(error)) => {
            tracing::debug!(program = %program.display(), %error, "time service status command did not run");
            None
        }
        Err(_) => {
            tracing::debug!(program = %program.display(), "time service status command timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesyncd_files_are_read_in_order_and_an_empty_ntp_clears_the_list() {
        let main =
            "[Time]\n#NTP=commented.example\nNTP=a.example b.example\nFallbackNTP=f.example\n";
        let drop_in = "[Time]\nNTP=\nNTP=c.example\n";
        let other_section = "[Other]\nNTP=not-time.example\n";
        assert_eq!(
            timesyncd_servers(&[main.into()]),
            Some(vec!["a.example".into(), "b.example".into()])
        );
        assert_eq!(
            timesyncd_servers(&[main.into(), drop_in.into(), other_section.into()]),
            Some(vec!["c.example".into()])
        );
        assert_eq!(timesyncd_servers(&["[Time]\n".into()]), Some(vec![]));
        assert_eq!(timesyncd_servers(&[]), None);
    }

    #[test]
    fn timedatectl_output_gives_the_servers_and_the_state() {
        let text = "LinkNTPServers=\nSystemNTPServers=a.example b.example\nFallbackNTPServers=ntp.ubuntu.com\nServerName=a.example\n";
        assert_eq!(show_timesync_servers(text), ["a.example", "b.example"]);
        assert_eq!(
            show_timesync_servers("SystemNTPServers=\nFallbackNTPServers=ntp.ubuntu.com\n"),
            ["ntp.ubuntu.com"]
        );
        assert_eq!(ntp_synchronized("yes\n"), SyncState::Synchronized);
        assert_eq!(ntp_synchronized("no\n"), SyncState::Unsynchronized);
        assert_eq!(ntp_synchronized(""), SyncState::Unknown);
    }

    #[test]
    fn chronyc_csv_gives_the_state_and_the_servers() {
        let synced = "A9FEA97B,169.254.169.123,4,1614012345.123,-0.000001,0.000002,0.000003,-1.234,-0.001,0.010,0.000123,0.000456,64.2,Normal\n";
        let unsynced = "00000000,,0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0,1.0,0.0,Not synchronised\n";
        assert_eq!(chrony_tracking(synced), SyncState::Synchronized);
        assert_eq!(chrony_tracking(unsynced), SyncState::Unsynchronized);
        assert_eq!(chrony_tracking("garbage"), SyncState::Unknown);
        let sources = "^,*,a.example,2,6,377,35,-0.000012,-0.000013,0.000432\n\
                       ^,?,192.0.2.1,0,6,0,-,0.0,0.0,0.0\n\
                       #,-,PPS,0,4,377,12,0.0,0.0,0.0\n";
        assert_eq!(chrony_sources(sources), ["a.example", "192.0.2.1"]);
    }

    #[tokio::test]
    async fn without_chrony_or_systemd_the_config_files_say_what_they_can() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing");
        let conf = dir.path().join("timesyncd.conf");
        let config = SourcesConfig {
            chronyc: missing.clone(),
            timedatectl: missing,
            timesyncd_conf: conf.clone(),
        };
        assert_eq!(gather(&config).await, ServiceState::default());
        std::fs::write(&conf, "[Time]\nNTP=a.example\n").expect("write");
        std::fs::create_dir(dir.path().join("timesyncd.conf.d")).expect("mkdir");
        std::fs::write(
            dir.path().join("timesyncd.conf.d/tether.conf"),
            "[Time]\nNTP=b.example\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("timesyncd.conf.d/ignored.bak"),
            "[Time]\nNTP=c.example\n",
        )
        .expect("write");
        assert_eq!(
            gather(&config).await,
            ServiceState {
                source: TimeSource::Timesyncd,
                sync_state: SyncState::Unknown,
                ntp_servers: vec!["a.example".into(), "b.example".into()],
            }
        );
    }
}
