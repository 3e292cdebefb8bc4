//! The alert delivery outbox (migration 0034): changes queued with the
//! change for the receivers configured then, in order per alert, taken
//! once, retried at their time, given up and retried by an operator.

use tether_proto::alert_deliveries::DeliveryState;
use tether_proto::alerts::{AlertState, Severity};
use tether_server::store::{AttemptResult, NewAlert, Store};

use super::{TestDb, at, id};

on_both_databases! {
    store: [
        a_change_is_queued_for_the_receivers_configured_when_it_happens,
        an_alerts_changes_are_due_in_order_and_each_attempt_is_taken_once,
        a_failed_attempt_waits_for_its_time_and_a_dead_one_is_listed_and_retried,
    ],
    db: [],
}

fn alert(rule: &str) -> NewAlert {
    NewAlert {
        rule: rule.into(),
        device: id("pump-1"),
        severity: Severity::Warning,
        summary: format!("{rule} on pump-1"),
        labels: [("site".to_owned(), "north".to_owned())].into(),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

async fn a_change_is_queued_for_the_receivers_configured_when_it_happens(store: Store) {
    // No receiver: nothing is queued.
    store
        .raise_alert(&alert("before"), at(500))
        .await
        .expect("raise")
        .expect("new");
    let changed = store
        .set_alert_receivers(&names(&["ops"]), &[], at(1_000))
        .await
        .expect("receivers");
    assert_eq!(changed.added, ["ops"]);
    assert!(
        store
            .due_alert_deliveries("ops", at(10_000), 10)
            .await
            .expect("due")
            .is_empty()
    );

    let raised = store
        .raise_alert(&alert("disk_full"), at(2_000))
        .await
        .expect("raise")
        .expect("new");
    let due = store
        .due_alert_deliveries("ops", at(2_000), 10)
        .await
        .expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].event, AlertState::Firing);
    assert_eq!(due[0].alert, raised);
    assert_eq!(due[0].attempts, 0);

    // A receiver added later gets the changes made after, not before.
    let changed = store
        .set_alert_receivers(&names(&["ops", "am"]), &[], at(3_000))
        .await
        .expect("receivers");
    assert_eq!(changed.added, ["am"]);
    assert!(
        store
            .due_alert_deliveries("am", at(9_000), 10)
            .await
            .expect("due")
            .is_empty()
    );
    store
        .acknowledge_alert(raised.id, "alice", at(4_000))
        .await
        .expect("acknowledge");
    // Acknowledged again: no second change.
    store
        .acknowledge_alert(raised.id, "bob", at(4_500))
        .await
        .expect("acknowledged already");
    let due = store
        .due_alert_deliveries("am", at(9_000), 10)
        .await
        .expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].event, AlertState::Acknowledged);
    assert_eq!(due[0].alert.acknowledged_by.as_deref(), Some("alice"));

    // A replica started with a configuration that lacks "ops" takes
    // nothing out: the others' deliveries go on.
    let changed = store
        .set_alert_receivers(&names(&["am"]), &[], at(4_800))
        .await
        .expect("receivers");
    assert!(changed.removed.is_empty() && changed.abandoned == 0);
    // Retired: its pending deliveries are given up, listed.
    let changed = store
        .set_alert_receivers(&names(&["am"]), &names(&["ops"]), at(5_000))
        .await
        .expect("receivers");
    assert_eq!(changed.removed, ["ops"]);
    assert_eq!(changed.abandoned, 2, "the firing and the acknowledgement");
    let dead = store
        .list_alert_deliveries(Some(DeliveryState::Dead), None, 10)
        .await
        .expect("list");
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| {
        d.receiver == "ops"
            && d.last_error
                .as_deref()
                .is_some_and(|e| e.contains("[alerts]"))
    }));
    // It cannot be retried while its receiver is gone.
    assert_eq!(
        store
            .retry_alert_delivery(&dead[0].id, at(6_000))
            .await
            .expect("retry"),
        None
    );
    assert!(!store.is_alert_receiver("ops").await.expect("receiver"));
}

async fn an_alerts_changes_are_due_in_order_and_each_attempt_is_taken_once(store: Store) {
    store
        .set_alert_receivers(&names(&["ops"]), &[], at(1_000))
        .await
        .expect("receivers");
    let raised = store
        .raise_alert(&alert("disk_full"), at(2_000))
        .await
        .expect("raise")
        .expect("new");
    store
        .resolve_alert("disk_full", &id("pump-1"), at(3_000))
        .await
        .expect("resolve")
        .expect("resolved");
    let other = store
        .raise_alert(&alert("spool_dropping"), at(3_500))
        .await
        .expect("raise")
        .expect("new");
    // The resolution waits behind the firing of the same alert; another
    // alert's change does not.
    let due = store
        .due_alert_deliveries("ops", at(9_000), 10)
        .await
        .expect("due");
    let seen: Vec<_> = due.iter().map(|d| (d.alert.id, d.event)).collect();
    assert_eq!(
        seen,
        [
            (raised.id, AlertState::Firing),
            (other.id, AlertState::Firing)
        ]
    );

    // Two senders (an old leader overlapping) take the same attempt: one wins.
    let firing = &due[0];
    assert!(
        store
            .claim_alert_delivery(&firing.id, 0, at(69_000))
            .await
            .expect("claim")
    );
    assert!(
        !store
            .claim_alert_delivery(&firing.id, 0, at(69_000))
            .await
            .expect("claim")
    );
    // Taken, it is not due until its lease ends.
    let due = store
        .due_alert_deliveries("ops", at(9_000), 10)
        .await
        .expect("due");
    assert_eq!(due.len(), 1, "only the other alert's firing: {due:?}");
    store
        .record_alert_attempt(&firing.id, 1, &AttemptResult::Delivered, at(9_100))
        .await
        .expect("record");
    let due = store
        .due_alert_deliveries("ops", at(9_200), 10)
        .await
        .expect("due");
    let seen: Vec<_> = due.iter().map(|d| (d.alert.id, d.event)).collect();
    assert_eq!(
        seen,
        [
            (raised.id, AlertState::Resolved),
            (other.id, AlertState::Firing)
        ]
    );
    let delivered = store.get_alert_delivery(&firing.id).await.expect("get");
    assert_eq!(delivered.state, DeliveryState::Delivered);
    assert_eq!(delivered.attempts, 1);
    assert_eq!(delivered.delivered_at, Some(at(9_100)));

    let counts = store.active_alert_counts().await.expect("counts");
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[0].rule, "spool_dropping");
    assert_eq!(counts[0].alerts, 1);
    assert_eq!(
        store
            .delete_delivered_alert_deliveries_before(at(9_101))
            .await
            .expect("delete"),
        1
    );
}

async fn a_failed_attempt_waits_for_its_time_and_a_dead_one_is_listed_and_retried(store: Store) {
    store
        .set_alert_receivers(&names(&["ops"]), &[], at(1_000))
        .await
        .expect("receivers");
    store
        .raise_alert(&alert("disk_full"), at(2_000))
        .await
        .expect("raise")
        .expect("new");
    let queued = store
        .due_alert_deliveries("ops", at(2_000), 10)
        .await
        .expect("due");
    let delivery = &queued[0];
    assert!(
        store
            .claim_alert_delivery(&delivery.id, 0, at(62_000))
            .await
            .expect("claim")
    );
    let retry = AttemptResult::RetryAt {
        at: at(12_000),
        error: "the receiver answered HTTP 503".into(),
    };
    store
        .record_alert_attempt(&delivery.id, 1, &retry, at(2_100))
        .await
        .expect("record");
    assert!(
        store
            .due_alert_deliveries("ops", at(11_999), 10)
            .await
            .expect("due")
            .is_empty()
    );
    let due = store
        .due_alert_deliveries("ops", at(12_000), 10)
        .await
        .expect("due");
    assert_eq!(due[0].attempts, 1);
    let pending = store.get_alert_delivery(&delivery.id).await.expect("get");
    assert_eq!(pending.next_attempt_at, Some(at(12_000)));
    assert_eq!(
        pending.last_error.as_deref(),
        Some("the receiver answered HTTP 503")
    );

    assert!(
        store
            .claim_alert_delivery(&delivery.id, 1, at(72_000))
            .await
            .expect("claim")
    );
    let dead = AttemptResult::Dead {
        error: "the receiver answered HTTP 410".into(),
    };
    store
        .record_alert_attempt(&delivery.id, 2, &dead, at(12_100))
        .await
        .expect("record");
    let listed = store
        .list_alert_deliveries(Some(DeliveryState::Dead), None, 10)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attempts, 2);
    assert_eq!(listed[0].next_attempt_at, None);
    assert_eq!(listed[0].rule, "disk_full");
    assert_eq!(
        store.alert_delivery_counts().await.expect("counts"),
        [(DeliveryState::Dead, 1)]
    );

    let retried = store
        .retry_alert_delivery(&delivery.id, at(20_000))
        .await
        .expect("retry")
        .expect("a dead delivery of a configured receiver");
    assert_eq!(retried.state, DeliveryState::Pending);
    assert_eq!(retried.attempts, 0);
    assert_eq!(
        store
            .retry_alert_delivery(&delivery.id, at(20_000))
            .await
            .expect("retry"),
        None,
        "only a dead one is retried"
    );
    let due = store
        .due_alert_deliveries("ops", at(20_000), 10)
        .await
        .expect("due");
    assert_eq!(due.len(), 1);
    assert!(
        store
            .list_alert_deliveries(Some(DeliveryState::Dead), None, 10)
            .await
            .expect("list")
            .is_empty()
    );

    // Dead again, and meanwhile the alert resolved: retrying the firing
    // would reach the receiver after the resolution, so it is refused.
    store
        .record_alert_attempt(&delivery.id, 1, &dead, at(21_000))
        .await
        .expect("dead again");
    store
        .resolve_alert("disk_full", &id("pump-1"), at(22_000))
        .await
        .expect("resolve")
        .expect("it was active");
    assert_eq!(
        store
            .retry_alert_delivery(&delivery.id, at(23_000))
            .await
            .expect("retry"),
        None,
        "a later change of the alert is on its way"
    );
}
