//! The fleet summary: device counts by presence, overall and per value of
//! one label, from the store's grouped counts.

use std::collections::BTreeMap;

use tether_proto::Presence;
use tether_proto::api::{FleetSummary, PresenceCounts, SummaryGroup};

use crate::store::DeviceCount;

pub fn summarize(by: Option<&str>, counts: &[DeviceCount]) -> FleetSummary {
    let mut total = PresenceCounts::default();
    // `None` sorts first in a BTreeMap; the devices without the label go last.
    let mut groups: BTreeMap<Option<&str>, PresenceCounts> = BTreeMap::new();
    for count in counts {
        for counts in [
            &mut total,
            groups.entry(count.label_value.as_deref()).or_default(),
        ] {
            match count.presence {
                Presence::Online => counts.online += count.devices,
                Presence::Offline => counts.offline += count.devices,
            }
            counts.total += count.devices;
        }
    }
    let group = |(value, counts): (Option<&str>, PresenceCounts)| SummaryGroup {
        value: value.map(str::to_owned),
        online: counts.online,
        offline: counts.offline,
        total: counts.total,
    };
    let mut ordered: Vec<SummaryGroup> = Vec::new();
    if by.is_some() {
        let without = groups.remove(&None);
        ordered.extend(groups.into_iter().map(group));
        ordered.extend(without.map(|counts| group((None, counts))));
    }
    FleetSummary {
        by: by.map(str::to_owned),
        total,
        groups: ordered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(value: Option<&str>, presence: Presence, devices: u64) -> DeviceCount {
        DeviceCount {
            label_value: value.map(str::to_owned),
            presence,
            devices,
        }
    }

    #[test]
    fn groups_are_by_value_with_the_unlabelled_last() {
        let counts = [
            count(None, Presence::Online, 1),
            count(Some("paris"), Presence::Offline, 4),
            count(Some("berlin"), Presence::Online, 2),
            count(Some("berlin"), Presence::Offline, 3),
        ];
        let summary = summarize(Some("site"), &counts);
        assert_eq!(
            summary.total,
            PresenceCounts {
                online: 3,
                offline: 7,
                total: 10
            }
        );
        let groups: Vec<(Option<&str>, u64, u64, u64)> = summary
            .groups
            .iter()
            .map(|g| (g.value.as_deref(), g.online, g.offline, g.total))
            .collect();
        assert_eq!(
            groups,
            [
                (Some("berlin"), 2, 3, 5),
                (Some("paris"), 0, 4, 4),
                (None, 1, 0, 1)
            ]
        );
    }

    #[test]
    fn without_a_label_there_are_only_totals() {
        let counts = [
            count(None, Presence::Online, 2),
            count(None, Presence::Offline, 5),
        ];
        let summary = summarize(None, &counts);
        assert_eq!(summary.total.total, 7);
        assert!(summary.groups.is_empty() && summary.by.is_none());
        assert_eq!(summarize(Some("x"), &[]).total, PresenceCounts::default());
    }
}
