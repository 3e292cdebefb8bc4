//! Telling systemd how tetherd is doing, for its `Type=notify` unit: ready
//! once it serves (units ordered after it start then, and `systemctl start`
//! returns then), stopping when it shuts down, and alive every half
//! watchdog interval while its runtime still runs tasks (`WatchdogSec=`
//! restarts a tetherd whose runtime is stuck). Not under systemd, nothing
//! is sent.

use tether_proto::sd_notify::{self, SystemdWatchdog};

pub fn ready() {
    report(sd_notify::send("READY=1"));
}

pub fn stopping() {
    report(sd_notify::send("STOPPING=1"));
}

/// Pings systemd's watchdog from a task of its own, if the unit has one.
/// A task, not a thread: a runtime whose workers are all blocked stops
/// pinging, which is what the watchdog is for.
pub fn feed_the_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let watchdog = SystemdWatchdog::from_env()?;
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(watchdog.interval());
        loop {
            ticks.tick().await;
            report(watchdog.notify());
        }
    }))
}

fn report(sent: Result<(), String>) {
    if let Err(error) = sent {
        tracing::warn!(%error, "could not notify systemd (NOTIFY_SOCKET)");
    }
}
