//! Bytes per feature as both ends counted them (`tether devices usage`,
//! the fleet exposition): tetherd's counts beside the agent's last report.

use tether_proto::telemetry::{DeviceUsage, Feature, FeatureUsage, Stream};

use crate::store::UsageRecord;

/// The API's view of a device's stored usage.
pub fn device_usage(record: UsageRecord) -> DeviceUsage {
    let features = features(&record);
    DeviceUsage {
        device: record.device,
        streams: record.streams,
        features,
        device_reported_at: record.agent.map(|(at, _)| at),
        metric_series_refused: record.metric_series_refused,
        metric_points_refused: record.metric_points_refused,
    }
}

/// Each feature's bytes: what tetherd received from and sent to the
/// device (action requests are its only sending), and what the device
/// reported for the same. `spoolReplay` is the part of the streams' bytes
/// the device sent from its backlog.
pub fn features(record: &UsageRecord) -> Vec<FeatureUsage> {
    let stream_bytes = |stream: Stream| {
        record
            .streams
            .iter()
            .filter(|s| s.stream == stream)
            .map(|s| s.wire_bytes)
            .sum::<u64>()
    };
    Feature::ALL
        .into_iter()
        .map(|feature| {
            let (received_bytes, sent_bytes) = match feature {
                Feature::Actions => (record.actions.received, record.actions.sent),
                Feature::Metrics => (stream_bytes(Stream::Metrics), 0),
                Feature::Logs => (stream_bytes(Stream::Logs), 0),
                Feature::SpoolReplay => (record.streams.iter().map(|s| s.replay_bytes).sum(), 0),
            };
            let reported = record
                .agent
                .as_ref()
                .and_then(|(_, counts)| counts.iter().find(|c| c.feature == feature));
            FeatureUsage {
                feature,
                received_bytes,
                sent_bytes,
                device_sent_bytes: reported.map(|c| c.sent_bytes),
                device_received_bytes: reported.map(|c| c.received_bytes),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tether_proto::telemetry::{FeatureBytes, StreamUsage};

    use super::*;
    use crate::store::ActionBytes;

    #[test]
    fn each_feature_sets_tetherd_s_counts_beside_the_device_s() {
        let record = UsageRecord {
            device: "edge-1".into(),
            streams: vec![
                StreamUsage {
                    stream: Stream::Metrics,
                    wire_bytes: 500,
                    replay_bytes: 100,
                    ..StreamUsage::default()
                },
                StreamUsage {
                    stream: Stream::Logs,
                    wire_bytes: 7_000,
                    replay_bytes: 2_000,
                    ..StreamUsage::default()
                },
            ],
            actions: ActionBytes {
                sent: 300,
                received: 40,
            },
            agent: Some((
                chrono::Utc::now(),
                vec![FeatureBytes {
                    feature: Feature::Actions,
                    sent_bytes: 40,
                    received_bytes: 290,
                }],
            )),
            metric_series_refused: 0,
            metric_points_refused: 0,
        };
        let features = features(&record);
        let get = |feature| {
            features
                .iter()
                .find(|f| f.feature == feature)
                .expect("every feature")
        };
        assert_eq!(features.len(), 4);
        let actions = get(Feature::Actions);
        assert_eq!(
            (
                actions.received_bytes,
                actions.sent_bytes,
                actions.device_sent_bytes,
                actions.device_received_bytes
            ),
            (40, 300, Some(40), Some(290))
        );
        assert_eq!(get(Feature::Logs).received_bytes, 7_000);
        assert_eq!(get(Feature::Metrics).received_bytes, 500);
        assert_eq!(get(Feature::SpoolReplay).received_bytes, 2_100);
        assert_eq!(
            get(Feature::Logs).device_sent_bytes,
            None,
            "not reported, not zero"
        );
        assert!(
            device_usage(UsageRecord {
                agent: None,
                ..record
            })
            .device_reported_at
            .is_none()
        );
    }
}
