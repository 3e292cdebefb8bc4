//! What tetherd refuses from a device before touching the store: payloads
//! and fields beyond the limits `tether_proto` declares, and samples dated
//! outside the window the server's clock allows. Pure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::metrics::HostMetrics;
use tether_proto::spec::ReportedStatus;
use tether_proto::{ActionEvent, DeviceStatus};

use crate::device_link::DeviceMessage;

/// Why a message is refused; each maps to an HTTP-like status the operator
/// sees in the rejection event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Clock(String),
}

impl Invalid {
    pub fn status_code(&self) -> u16 {
        match self {
            Invalid::Malformed(_) | Invalid::Clock(_) => 400,
            Invalid::TooLarge(_) => 413,
        }
    }
}

/// How far from the server's clock a device's timestamps may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockWindow {
    /// Ahead of the server's clock.
    pub max_ahead: Duration,
    /// Behind it; older samples would be pruned at once.
    pub max_behind: Duration,
}

/// Checks a parsed message of `size` payload bytes.
pub fn check(
    message: &DeviceMessage,
    size: usize,
    now: DateTime<Utc>,
    window: ClockWindow,
) -> Result<(), Invalid> {
    let too_large = |e: tether_proto::limits::TooLarge| Invalid::TooLarge(e.to_string());
    match message {
        DeviceMessage::Status(status) => {
            payload(size, DeviceStatus::MAX_PAYLOAD_BYTES)?;
            status.check_limits().map_err(too_large)
        }
        DeviceMessage::Event(event) => {
            payload(size, ActionEvent::MAX_PAYLOAD_BYTES)?;
            event.check_limits().map_err(too_large)
        }
        DeviceMessage::Metrics(metrics) => {
            payload(size, HostMetrics::MAX_PAYLOAD_BYTES)?;
            sampled_at(metrics.sampled_at, now, window)
        }
        DeviceMessage::Reported(reported) => {
            payload(size, ReportedStatus::MAX_PAYLOAD_BYTES)?;
            reported.check_limits().map_err(too_large)
        }
        // Decoding checked the batch's bounds; records dated too far ahead
        // are dated when received (`crate::telemetry`), the old ones go
        // with retention.
        DeviceMessage::Telemetry(_) => payload(size, tether_proto::telemetry::MAX_COMPRESSED_BYTES),
    }
}

/// Payloads on a topic the controller does not parse are only bounded.
pub fn payload(size: usize, max: usize) -> Result<(), Invalid> {
    tether_proto::limits::check("the payload", size, max)
        .map_err(|e| Invalid::TooLarge(e.to_string()))
}

fn sampled_at(at: DateTime<Utc>, now: DateTime<Utc>, window: ClockWindow) -> Result<(), Invalid> {
    let chrono = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    if at > now + chrono(window.max_ahead) {
        return Err(Invalid::Clock(format!(
            "sampledAt {at} is more than {} s ahead of the server's clock ({now}); fix the device's clock",
            window.max_ahead.as_secs()
        )));
    }
    if at < now - chrono(window.max_behind) {
        return Err(Invalid::Clock(format!(
            "sampledAt {at} is older than the {} days metrics are kept",
            window.max_behind.as_secs() / 86_400
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::Presence;

    const WINDOW: ClockWindow = ClockWindow {
        max_ahead: Duration::from_secs(300),
        max_behind: Duration::from_secs(30 * 86_400),
    };

    fn sample(at: DateTime<Utc>) -> DeviceMessage {
        DeviceMessage::Metrics(HostMetrics {
            sampled_at: at,
            cpu_percent: 1.0,
            memory_used_bytes: 1,
            memory_total_bytes: 2,
            disk_used_bytes: 3,
            disk_total_bytes: 4,
            network_rx_bytes: 5,
            network_tx_bytes: 6,
        })
    }

    #[test]
    fn samples_must_be_dated_within_the_window() {
        let now = Utc::now();
        assert!(check(&sample(now), 200, now, WINDOW).is_ok());
        assert!(
            check(
                &sample(now + chrono::Duration::seconds(299)),
                200,
                now,
                WINDOW
            )
            .is_ok()
        );
        let future = "2999-01-01T00:00:00Z".parse().expect("time");
        let err = check(&sample(future), 200, now, WINDOW).expect_err("future");
        assert!(matches!(err, Invalid::Clock(_)), "{err}");
        assert!(err.to_string().contains("ahead"), "{err}");
        let old = now - chrono::Duration::days(31);
        assert!(matches!(
            check(&sample(old), 200, now, WINDOW),
            Err(Invalid::Clock(_))
        ));
    }

    #[test]
    fn oversized_payloads_and_fields_are_too_large() {
        let now = Utc::now();
        let status = DeviceMessage::Status(DeviceStatus {
            state: Presence::Online,
            agent_version: "v".repeat(3 * 1024 * 1024),
            capabilities: vec![],
            boot_id: String::new(),
            seq: 0,
        });
        let err = check(&status, 100, now, WINDOW).expect_err("too large");
        assert_eq!(err.status_code(), 413);
        assert!(err.to_string().contains("agentVersion"), "{err}");
        let err = check(
            &sample(now),
            HostMetrics::MAX_PAYLOAD_BYTES + 1,
            now,
            WINDOW,
        )
        .expect_err("payload");
        assert!(err.to_string().contains("payload"), "{err}");
    }
}
