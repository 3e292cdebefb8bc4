//! The Sparkplug northbound's pass: reads the fleet from the store, and
//! hands each edge node's publisher what changed since the last pass.
//!
//! It runs as one singleton across replicas, so one tetherd publishes each
//! edge node. Each node's MQTT client id names this replica: when the
//! leadership moves, the new leader's sessions start beside the old ones
//! instead of taking them over (which would make the two replicas kick
//! each other off), and the old leader drops its connections once it
//! misses passes (their NDEATH wills carry older `bdSeq`s, which a host
//! ignores after the new NBIRTH).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sha2::{Digest, Sha256};
use tether_proto::alerts::Alert;
use tether_proto::labels::LabelSelector;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::config::{BrokerSettings, SparkplugConfig};
use super::fleet::{
    FleetView, NodeKey, Placement, device_metrics, device_updates, host_series_names,
    monitor_device, monitor_metrics,
};
use super::node::Metrics;
use super::publisher::{BdSeqLedger, Publisher};
use super::topics::EdgeDeviceId;
use crate::cluster::ReplicaId;
use crate::cluster::singleton::Singleton;
use crate::device_link::BoxFuture;
use crate::store::{AlertFilter, AlertStates, Store, StoreError};

/// Devices and alerts read per query.
const PAGE: u32 = 500;
/// Passes a leader may miss before it drops its connections: it is no
/// longer the leader (or cannot reach the store) and another replica
/// publishes the fleet.
const MISSED_PASSES: u32 = 3;

pub struct Northbound {
    store: Store,
    placement: Placement,
    broker: BrokerSettings,
    interval: Duration,
    /// Starts every MQTT client id of this replica.
    client_prefix: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<NodeKey, RunningNode>,
    /// Devices left out, and why: each is logged when its reason changes,
    /// not every pass.
    refused: BTreeMap<String, String>,
    last_pass: Option<Instant>,
}

struct RunningNode {
    publisher: Publisher,
    /// What the publisher was last given: the next pass sends the changes.
    devices: BTreeMap<EdgeDeviceId, Metrics>,
}

/// An edge node's `bdSeq`s in the store.
struct StoredBdSeq {
    store: Store,
    key: NodeKey,
}

impl BdSeqLedger for StoredBdSeq {
    fn record(&self, bd_seq: u8) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.store.set_sparkplug_bd_seq(
            self.key.group.as_str(),
            self.key.node.as_str(),
            bd_seq,
            Utc::now(),
        ))
    }
}

/// What one pass did, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassSummary {
    pub nodes: usize,
    pub devices: usize,
    pub updates: usize,
}

impl Northbound {
    /// Reads the broker's files, and starts the pass as the singleton
    /// `sparkplug` and the watch that drops the connections when this
    /// replica stops leading it.
    pub fn start(
        store: Store,
        config: &SparkplugConfig,
        replica: &ReplicaId,
    ) -> Result<Arc<Self>, super::config::SparkplugFileError> {
        let northbound = Arc::new(Self::new(store.clone(), config, replica)?);
        let passing = northbound.clone();
        Singleton::spawn(store, replica, "sparkplug", config.interval, move |_now| {
            let northbound = passing.clone();
            async move {
                match northbound.pass().await {
                    Ok(summary) => tracing::debug!(
                        nodes = summary.nodes,
                        devices = summary.devices,
                        updates = summary.updates,
                        "published the fleet's Sparkplug changes"
                    ),
                    Err(error) => tracing::error!(
                        error = %crate::error_chain(&error),
                        "could not read the fleet for Sparkplug; trying again next pass"
                    ),
                }
            }
        });
        tokio::spawn(northbound.clone().stand_down_when_not_leading());
        tracing::info!(
            broker = %format!("{}:{}", config.host, config.port),
            group = %config.group,
            node = %config.node,
            "publishing the fleet as Sparkplug B"
        );
        Ok(northbound)
    }

    /// The pass without its schedule: [`Self::pass`] runs it.
    pub fn new(
        store: Store,
        config: &SparkplugConfig,
        replica: &ReplicaId,
    ) -> Result<Self, super::config::SparkplugFileError> {
        Ok(Self {
            store,
            placement: Placement {
                group: config.group.clone(),
                node: config.node.clone(),
                group_label: config.group_label.clone(),
                node_label: config.node_label.clone(),
            },
            broker: config.broker()?,
            interval: config.interval,
            client_prefix: format!("tetherd-{}", replica.as_str()),
            state: Mutex::new(State::default()),
        })
    }

    /// Reads the fleet and publishes what changed since the last pass.
    pub async fn pass(&self) -> Result<PassSummary, StoreError> {
        let mut state = self.state.lock().await;
        let view = self.read_fleet(&mut state).await?;
        let mut summary = PassSummary {
            nodes: view.len(),
            ..PassSummary::default()
        };
        let gone: Vec<NodeKey> = state
            .nodes
            .keys()
            .filter(|key| !view.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            // Dropping the publisher drops its connection: the broker
            // publishes the node's NDEATH, its will.
            state.nodes.remove(&key);
            tracing::info!(node = %key, "a Sparkplug edge node has no devices left; ending its session");
        }
        for (key, devices) in view {
            summary.devices += devices.len();
            let stopped = state
                .nodes
                .get(&key)
                .is_some_and(|node| !node.publisher.is_running());
            if stopped {
                tracing::error!(node = %key, "a Sparkplug publisher stopped; starting it again");
                state.nodes.remove(&key);
            }
            if !state.nodes.contains_key(&key) {
                let node = self.start_node(&key).await?;
                state.nodes.insert(key.clone(), node);
            }
            let Some(node) = state.nodes.get_mut(&key) else {
                continue;
            };
            for update in device_updates(&node.devices, &devices) {
                summary.updates += 1;
                if node.publisher.update(update).await.is_err() {
                    // Next pass starts it again, with every device.
                    break;
                }
            }
            node.devices = devices;
        }
        state.last_pass = Some(Instant::now());
        Ok(summary)
    }

    /// A publisher for the node, whose first session continues after the
    /// `bdSeq` the store has; the publisher records each session's before
    /// it connects.
    async fn start_node(&self, key: &NodeKey) -> Result<RunningNode, StoreError> {
        let bd_seq = self
            .store
            .sparkplug_bd_seq(key.group.as_str(), key.node.as_str())
            .await?
            .map_or(0, |last| last.wrapping_add(1));
        tracing::info!(node = %key, bd_seq, "starting a Sparkplug edge node");
        let publisher = Publisher::spawn(
            key.group.clone(),
            key.node.clone(),
            bd_seq,
            self.broker.for_client(self.client_id(key)),
            Arc::new(StoredBdSeq {
                store: self.store.clone(),
                key: key.clone(),
            }),
        );
        Ok(RunningNode {
            publisher,
            devices: BTreeMap::new(),
        })
    }

    /// This replica's client id for a node: short and free of the ids'
    /// characters whatever they are.
    fn client_id(&self, key: &NodeKey) -> String {
        let digest = Sha256::digest(format!("{}/{}", key.group, key.node).as_bytes());
        let hex: String = digest[..6]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        format!("{}-sp-{hex}", self.client_prefix)
    }

    /// Every edge node's online devices with their metrics, and its
    /// monitor device with its alerts; a node exists while any device,
    /// online or not, belongs to it.
    async fn read_fleet(&self, state: &mut State) -> Result<FleetView, StoreError> {
        let mut view = FleetView::new();
        let mut node_of: BTreeMap<String, NodeKey> = BTreeMap::new();
        let mut refused = BTreeMap::new();
        let series = host_series_names();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_devices_page(&LabelSelector::default(), after.as_deref(), PAGE)
                .await?;
            let (Some(first), Some(last)) = (page.first(), page.last()) else {
                break;
            };
            let values = self
                .store
                .latest_values_of_devices(first.name.as_str(), last.name.as_str(), &series)
                .await?;
            let mut values_of: BTreeMap<&str, Vec<(&str, &tether_proto::api::Labels, f64)>> =
                BTreeMap::new();
            for value in &values {
                values_of.entry(value.device.as_str()).or_default().push((
                    value.name.as_str(),
                    &value.labels,
                    value.value,
                ));
            }
            for device in &page {
                let name = device.name.as_str();
                let (key, id) = match self.placement.place(name, &device.labels) {
                    Ok(placed) => placed,
                    Err(error) => {
                        refused.insert(name.to_owned(), tether_proto::error_chain(&error));
                        continue;
                    }
                };
                let devices = view.entry(key.clone()).or_default();
                node_of.insert(name.to_owned(), key);
                if device.presence == tether_proto::Presence::Online {
                    let metrics = device_metrics(
                        device.agent_version.as_deref(),
                        values_of.remove(name).unwrap_or_default(),
                    );
                    devices.insert(id, metrics);
                }
            }
            if page.len() < PAGE as usize {
                break;
            }
            after = Some(last.name.as_str().to_owned());
        }
        for (device, reason) in &refused {
            if state.refused.get(device) != Some(reason) {
                tracing::warn!(%device, reason = %reason, "leaving a device out of Sparkplug");
            }
        }
        state.refused = refused;

        let mut alerts_of: BTreeMap<NodeKey, Vec<Alert>> = BTreeMap::new();
        for alert in self.open_alerts().await? {
            // An alert of a deleted device goes to the default node.
            let key = node_of
                .get(&alert.device)
                .cloned()
                .unwrap_or_else(|| NodeKey {
                    group: self.placement.group.clone(),
                    node: self.placement.node.clone(),
                });
            alerts_of.entry(key).or_default().push(alert);
        }
        let keys: BTreeSet<NodeKey> = view.keys().cloned().collect();
        for key in keys {
            let Ok(monitor) = monitor_device(&key.node) else {
                continue;
            };
            let open: Vec<&Alert> = alerts_of
                .get(&key)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let previous = state
                .nodes
                .get(&key)
                .and_then(|node| node.devices.get(&monitor));
            let metrics = monitor_metrics(&open, previous);
            view.entry(key).or_default().insert(monitor, metrics);
        }
        Ok(view)
    }

    /// The alerts firing or acknowledged.
    async fn open_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let filter = AlertFilter {
            states: AlertStates::Active,
            device: None,
            rule: None,
        };
        let mut alerts = Vec::new();
        let mut before = None;
        loop {
            let page = self.store.list_alerts(&filter, before, PAGE).await?;
            before = page.last().map(|alert| alert.id);
            let full = page.len() == PAGE as usize;
            alerts.extend(page);
            if !full {
                return Ok(alerts);
            }
        }
    }

    /// Drops every connection when the passes stop: another replica took
    /// the leadership, or this one lost the store.
    async fn stand_down_when_not_leading(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.interval);
        loop {
            ticker.tick().await;
            let mut state = self.state.lock().await;
            let missed = state
                .last_pass
                .is_some_and(|last| last.elapsed() > self.interval * MISSED_PASSES);
            if missed && !state.nodes.is_empty() {
                tracing::warn!(
                    nodes = state.nodes.len(),
                    "no Sparkplug pass for {MISSED_PASSES} intervals: this replica no longer leads it; ending its sessions"
                );
                state.nodes.clear();
            }
        }
    }
}
