//! The sd_notify protocol: a service under systemd tells it that it is
//! ready (`Type=notify`: units ordered after it start then), that it is
//! stopping, and that it is alive (`WatchdogSec=`: systemd restarts it
//! after the timeout without a `WATCHDOG=1`), each a datagram to the
//! socket `NOTIFY_SOCKET` names. tetherd and the agent both speak it.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// `READY=1`, `STOPPING=1`, … to systemd, if it runs this process with a
/// notify socket; nothing otherwise.
pub fn send(state: &str) -> Result<(), String> {
    match std::env::var("NOTIFY_SOCKET") {
        Ok(socket) if !socket.is_empty() => send_to(&socket, state),
        _ => Ok(()),
    }
}

/// `state` to the notify socket `socket`: a path, or `@name` in the
/// abstract namespace.
fn send_to(socket: &str, state: &str) -> Result<(), String> {
    let failed = |error: std::io::Error| format!("cannot notify systemd at {socket}: {error}");
    let datagram = UnixDatagram::unbound().map_err(failed)?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(failed)?;
            datagram.send_to_addr(state.as_bytes(), &address)
        }
        None => datagram.send_to(state.as_bytes(), socket),
    }
    .map(|_| ())
    .map_err(failed)
}

/// systemd's watchdog for this service: where to notify and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdWatchdog {
    /// `NOTIFY_SOCKET`: a path, or `@name` in the abstract namespace.
    pub socket: String,
    /// `WATCHDOG_USEC`: systemd acts after this long without a notification.
    pub timeout: Duration,
}

impl SystemdWatchdog {
    /// From the environment systemd sets, if it set it for this process.
    pub fn from_env() -> Option<Self> {
        let var = |name| std::env::var(name).ok();
        Self::from_vars(
            var("WATCHDOG_USEC").as_deref(),
            var("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// `WATCHDOG_PID`, when set, names the process systemd watches: a
    /// child that inherited the variables is not it.
    pub fn from_vars(
        usec: Option<&str>,
        socket: Option<&str>,
        pid: Option<&str>,
        own_pid: u32,
    ) -> Option<Self> {
        let timeout = usec?.trim().parse::<u64>().ok().filter(|&usec| usec > 0)?;
        let socket = socket.filter(|s| !s.is_empty())?.to_owned();
        if let Some(pid) = pid
            && pid.trim().parse::<u32>().ok() != Some(own_pid)
        {
            return None;
        }
        Some(Self {
            socket,
            timeout: Duration::from_micros(timeout),
        })
    }

    /// Half systemd's timeout, as `sd_watchdog_enabled(3)` advises.
    pub fn interval(&self) -> Duration {
        self.timeout / 2
    }

    /// Sends `WATCHDOG=1`.
    pub fn notify(&self) -> Result<(), String> {
        send_to(&self.socket, "WATCHDOG=1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemds_variables_name_the_socket_and_the_timeout_for_this_process_only() {
        let watchdog =
            SystemdWatchdog::from_vars(Some("20000000"), Some("/run/n"), None, 7).expect("set");
        assert_eq!(watchdog.timeout, Duration::from_secs(20));
        assert_eq!(watchdog.interval(), Duration::from_secs(10));
        assert!(
            SystemdWatchdog::from_vars(Some("20000000"), Some("/run/n"), Some("7"), 7).is_some()
        );
        assert_eq!(
            SystemdWatchdog::from_vars(Some("20000000"), Some("/run/n"), Some("8"), 7),
            None,
            "another process's watchdog"
        );
        assert_eq!(
            SystemdWatchdog::from_vars(Some("0"), Some("/run/n"), None, 7),
            None
        );
        assert_eq!(
            SystemdWatchdog::from_vars(None, Some("/run/n"), None, 7),
            None
        );
        assert_eq!(SystemdWatchdog::from_vars(Some("5"), None, None, 7), None);
    }

    #[test]
    fn a_notification_is_one_watchdog_datagram() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).expect("binds");
        let watchdog = SystemdWatchdog {
            socket: path.display().to_string(),
            timeout: Duration::from_secs(10),
        };
        watchdog.notify().expect("sent");
        let mut buffer = [0u8; 64];
        let n = systemd.recv(&mut buffer).expect("received");
        assert_eq!(&buffer[..n], b"WATCHDOG=1");
    }

    #[test]
    fn a_state_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tether-sd-notify-test-{}", std::process::id());
        let address =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("a name");
        let systemd = UnixDatagram::bind_addr(&address).expect("binds");
        send_to(&format!("@{name}"), "READY=1").expect("sent");
        let mut buffer = [0u8; 64];
        let n = systemd.recv(&mut buffer).expect("received");
        assert_eq!(&buffer[..n], b"READY=1");
    }
}
