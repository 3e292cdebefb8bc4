//! What tetherd reports about itself to Prometheus: per replica, the device
//! sessions it holds, the actions still open in the cluster, how long device
//! input takes to be stored, how late cross-replica notifications arrive,
//! how busy its database pool is, the alerts not resolved and how their
//! delivery goes.
//!
//! Counters and histograms are updated where things happen; gauges that
//! mirror state elsewhere (open actions, sessions, pool) are read when
//! Prometheus scrapes, so they are never stale. A scrape authenticates with
//! the token in the data dir's `metrics-token` (see [`ScrapeToken`]).

mod token;

pub use token::{METRICS_TOKEN_FILE, ScrapeToken, TokenError};

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tether_proto::ActionState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabel {
    receiver: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabel {
    rule: String,
    severity: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    state: &'static str,
}

/// Where the scrape-time gauges come from.
pub struct Snapshot {
    /// Device sessions on this replica that can take actions now.
    pub sessions: usize,
    /// Open (not finished) actions in the whole cluster, by state.
    pub open_actions: Vec<(ActionState, u64)>,
    pub pool_in_use: u32,
    pub pool_idle: u32,
    pub pool_max: u32,
    /// Alerts not resolved, in the whole cluster.
    pub active_alerts: Vec<crate::store::ActiveAlertCount>,
    /// Alert deliveries waiting or given up, in the whole cluster.
    pub alert_deliveries: Vec<(tether_proto::alert_deliveries::DeliveryState, u64)>,
}

pub struct Observability {
    registry: Registry,
    sessions: Gauge,
    open_actions: Family<StateLabel, Gauge>,
    finished_actions: Family<StateLabel, Counter>,
    ingest_seconds: Histogram,
    notification_lag_seconds: Histogram,
    pool_connections: Family<PoolLabel, Gauge<u32, std::sync::atomic::AtomicU32>>,
    pool_max: Gauge<u32, std::sync::atomic::AtomicU32>,
    telemetry_bytes: Family<StreamLabel, Counter>,
    telemetry_records: Family<StreamLabel, Counter>,
    telemetry_duplicates: Family<StreamLabel, Counter>,
    alert_deliveries: Family<DeliveryLabel, Counter>,
    alerts_firing: Family<AlertLabel, Gauge>,
    alert_deliveries_queued: Family<StateLabel, Gauge>,
    /// Scrapes rebuild the alert gauges (a rule may vanish); one at a time.
    rendering: std::sync::Mutex<()>,
}

/// Latency buckets from 1 ms to about 16 s: ingest and notifications are
/// milliseconds when healthy, seconds when the database struggles.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

impl Default for Observability {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tether");
        let sessions = Gauge::default();
        registry.register(
            "device_sessions",
            "Device sessions on this replica subscribed to their actions",
            sessions.clone(),
        );
        let open_actions = Family::<StateLabel, Gauge>::default();
        registry.register(
            "open_actions",
            "Actions not finished yet, in the whole cluster, by state",
            open_actions.clone(),
        );
        let finished_actions = Family::<StateLabel, Counter>::default();
        registry.register(
            "actions_finished",
            "Actions this replica finished, by final state",
            finished_actions.clone(),
        );
        let ingest_seconds = Histogram::new(latency_buckets());
        registry.register(
            "ingest_seconds",
            "Time from a device's publish reaching this replica to it being stored",
            ingest_seconds.clone(),
        );
        let notification_lag_seconds = Histogram::new(latency_buckets());
        registry.register(
            "notification_lag_seconds",
            "Time from a replica announcing a change to this replica receiving it",
            notification_lag_seconds.clone(),
        );
        let pool_connections = Family::default();
        registry.register(
            "database_connections",
            "Database connections of this replica's pool, by state",
            pool_connections.clone(),
        );
        let pool_max = Gauge::default();
        registry.register(
            "database_connections_max",
            "Most database connections this replica's pool opens",
            pool_max.clone(),
        );
        let telemetry_bytes = Family::<StreamLabel, Counter>::default();
        registry.register(
            "telemetry_received_bytes",
            "Compressed telemetry batch bytes devices sent to this replica, by stream",
            telemetry_bytes.clone(),
        );
        let telemetry_records = Family::<StreamLabel, Counter>::default();
        registry.register(
            "telemetry_stored_records",
            "Telemetry records this replica stored, by stream",
            telemetry_records.clone(),
        );
        let telemetry_duplicates = Family::<StreamLabel, Counter>::default();
        registry.register(
            "telemetry_duplicate_records",
            "Telemetry records devices sent again that this replica did not store twice, by stream",
            telemetry_duplicates.clone(),
        );
        let alert_deliveries = Family::<DeliveryLabel, Counter>::default();
        registry.register(
            "alert_deliveries",
            "Attempts of this replica to deliver alerts, by receiver and outcome (delivered, failed: retried later, dead: given up)",
            alert_deliveries.clone(),
        );
        let alerts_firing = Family::<AlertLabel, Gauge>::default();
        registry.register(
            "alerts_firing",
            "Alerts not resolved, in the whole cluster, by rule, severity and state (firing or acknowledged)",
            alerts_firing.clone(),
        );
        let alert_deliveries_queued = Family::<StateLabel, Gauge>::default();
        registry.register(
            "alert_deliveries_queued",
            "Alert deliveries in the whole cluster waiting to be sent (pending) or given up (dead)",
            alert_deliveries_queued.clone(),
        );
        Self {
            alert_deliveries,
            alerts_firing,
            alert_deliveries_queued,
            rendering: std::sync::Mutex::new(()),
            telemetry_bytes,
            telemetry_records,
            telemetry_duplicates,
            registry,
            sessions,
            open_actions,
            finished_actions,
            ingest_seconds,
            notification_lag_seconds,
            pool_connections,
            pool_max,
        }
    }
}

impl Observability {
    pub fn action_finished(&self, state: ActionState) {
        self.finished_actions
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .inc();
    }

    pub fn telemetry_received(
        &self,
        stream: tether_proto::telemetry::Stream,
        wire_bytes: u64,
        stored: u64,
        duplicates: u64,
    ) {
        let label = StreamLabel {
            stream: stream.as_str(),
        };
        self.telemetry_bytes
            .get_or_create(&label)
            .inc_by(wire_bytes);
        self.telemetry_records.get_or_create(&label).inc_by(stored);
        self.telemetry_duplicates
            .get_or_create(&label)
            .inc_by(duplicates);
    }

    /// One attempt to deliver alerts to `receiver`.
    pub fn alert_delivered(&self, receiver: &str, outcome: &'static str) {
        self.alert_deliveries
            .get_or_create(&DeliveryLabel {
                receiver: receiver.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn ingested(&self, took: Duration) {
        self.ingest_seconds.observe(took.as_secs_f64());
    }

    pub fn notification_received(&self, lag: Duration) {
        self.notification_lag_seconds.observe(lag.as_secs_f64());
    }

    /// The text exposition format, with the scrape-time gauges set from `now`.
    pub fn render(&self, now: Snapshot) -> String {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        self.alerts_firing.clear();
        for count in &now.active_alerts {
            self.alerts_firing
                .get_or_create(&AlertLabel {
                    rule: count.rule.clone(),
                    severity: count.severity.as_str(),
                    state: count.state.as_str(),
                })
                .set(i64::try_from(count.alerts).unwrap_or(i64::MAX));
        }
        for state in [
            tether_proto::alert_deliveries::DeliveryState::Pending,
            tether_proto::alert_deliveries::DeliveryState::Dead,
        ] {
            let count = now
                .alert_deliveries
                .iter()
                .find(|(counted, _)| *counted == state)
                .map_or(0, |(_, count)| *count);
            self.alert_deliveries_queued
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.sessions
            .set(i64::try_from(now.sessions).unwrap_or(i64::MAX));
        for state in ActionState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            let count = now
                .open_actions
                .iter()
                .find(|(counted, _)| *counted == state)
                .map_or(0, |(_, count)| *count);
            self.open_actions
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for (state, count) in [("in_use", now.pool_in_use), ("idle", now.pool_idle)] {
            self.pool_connections
                .get_or_create(&PoolLabel { state })
                .set(count);
        }
        self.pool_max.set(now.pool_max);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            sessions: 3,
            open_actions: vec![(ActionState::Pending, 7)],
            pool_in_use: 2,
            pool_idle: 1,
            pool_max: 10,
            active_alerts: vec![crate::store::ActiveAlertCount {
                rule: "device_silent".into(),
                severity: tether_proto::alerts::Severity::Critical,
                state: tether_proto::alerts::AlertState::Acknowledged,
                alerts: 2,
            }],
            alert_deliveries: vec![(tether_proto::alert_deliveries::DeliveryState::Dead, 4)],
        }
    }

    #[test]
    fn the_exposition_names_every_figure_an_operator_graphs() {
        let observability = Observability::default();
        observability.action_finished(ActionState::Succeeded);
        observability.action_finished(ActionState::Succeeded);
        observability.ingested(Duration::from_millis(3));
        observability.notification_received(Duration::from_millis(2));
        observability.telemetry_received(tether_proto::telemetry::Stream::Logs, 2048, 1000, 10);
        observability.alert_delivered("ops", "dead");
        let text = observability.render(snapshot());
        for line in [
            "tether_telemetry_received_bytes_total{stream=\"logs\"} 2048",
            "tether_telemetry_stored_records_total{stream=\"logs\"} 1000",
            "tether_telemetry_duplicate_records_total{stream=\"logs\"} 10",
            "tether_device_sessions 3",
            "tether_open_actions{state=\"pending\"} 7",
            "tether_open_actions{state=\"delivered\"} 0",
            "tether_actions_finished_total{state=\"succeeded\"} 2",
            "tether_ingest_seconds_count 1",
            "tether_notification_lag_seconds_count 1",
            "tether_database_connections{state=\"in_use\"} 2",
            "tether_database_connections_max 10",
            "tether_alerts_firing{rule=\"device_silent\",severity=\"critical\",state=\"acknowledged\"} 2",
            "tether_alert_deliveries_total{receiver=\"ops\",outcome=\"dead\"} 1",
            "tether_alert_deliveries_queued{state=\"dead\"} 4",
            "tether_alert_deliveries_queued{state=\"pending\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_state_that_emptied_reads_zero_not_its_last_count() {
        let observability = Observability::default();
        observability.render(snapshot());
        let text = observability.render(Snapshot {
            open_actions: Vec::new(),
            active_alerts: Vec::new(),
            ..snapshot()
        });
        assert!(
            text.contains("tether_open_actions{state=\"pending\"} 0"),
            "{text}"
        );
        // A rule with no alert left is gone, not stuck at its last count.
        assert!(!text.contains("tether_alerts_firing{"), "{text}");
    }
}
