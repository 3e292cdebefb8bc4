//! The store's contract, written once and run on SQLite and on PostgreSQL.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::json;
use sqlx::Executor;
use tempfile::TempDir;
use tether_proto::alerts::{AlertState, RULE_CONFIG_DRIFT, RULE_DEVICE_SILENT, Severity};
use tether_proto::api::JobState;
use tether_proto::api::Labels;
use tether_proto::metrics::HostMetrics;
use tether_proto::{ActionState, DeviceId, Presence};
use tether_server::metrics::series::{Point, SeriesKey};
use tether_server::monitor::silence::Watch;
use tether_server::store::{
    ActionBytes, AlertFilter, AlertStates, AnswerWrite, CursorUpdate, DeviceSession, EventRecord,
    NewAction, NewAlert, NewJob, Outcome, ReplicaRecord, SeenDevice, SessionRecord, SpoolRef,
    Store, StoreError, UserRecord, WatchedDevice,
};
use tether_testkit::postgres::TempPostgres;

/// One cluster per test process: `initdb` takes seconds, a database does not.
/// It is never dropped; its reaper removes it when the process exits.
static CLUSTER: LazyLock<TempPostgres> =
    LazyLock::new(|| TempPostgres::start().expect("start a throwaway PostgreSQL 15"));

/// An empty database for one test, and what keeps it alive.
struct TestDb {
    url: String,
    _dir: Option<TempDir>,
}

impl TestDb {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("create a temp dir for SQLite");
        let url = format!("sqlite://{}", dir.path().join("tether.db").display());
        Self {
            url,
            _dir: Some(dir),
        }
    }

    fn postgres() -> Self {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let url = CLUSTER
            .create_database(&name)
            .expect("create a database for the test");
        Self { url, _dir: None }
    }

    async fn connect(&self) -> Store {
        Store::connect(&self.url).await.expect("connect the store")
    }

    /// A connection beside the store's, to see and spoil what it wrote.
    async fn raw(&self) -> sqlx::AnyPool {
        sqlx::AnyPool::connect(&self.url)
            .await
            .expect("open a raw connection")
    }
}

/// Generates `sqlite::<test>` and `postgres::<test>` for every test; `store`
/// tests get a connected store, `db` tests the database to connect to.
macro_rules! on_both_databases {
    (store: [$($store_test:ident),* $(,)?], db: [$($db_test:ident),* $(,)?] $(,)?) => {
        on_both_databases!(@backend sqlite, sqlite, [$($store_test),*], [$($db_test),*]);
        on_both_databases!(@backend postgres, postgres, [$($store_test),*], [$($db_test),*]);
    };
    (@backend $module:ident, $make:ident, [$($store_test:ident),*], [$($db_test:ident),*]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $store_test() {
                    let db = super::TestDb::$make();
                    super::$store_test(db.connect().await).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $db_test() {
                    let db = super::TestDb::$make();
                    super::$db_test(&db).await;
                }
            )*
        }
    };
}

on_both_databases! {
    store: [
        devices_are_created_once_read_and_listed_by_name,
        labels_are_replaced,
        device_status_is_stored,
        deleting_a_device_removes_everything_it_owns,
        enrollment_token_works_exactly_once,
        concurrent_consumers_of_a_token_have_one_winner,
        expired_enrollment_token_is_refused,
        users_are_upserted_and_sessions_stored,
        finished_actions_are_deleted_after_retention_and_open_ones_kept,
        actions_get_a_seq_per_device_in_order,
        concurrent_inserts_get_distinct_seqs,
        duplicate_correlation_id_is_a_conflict,
        transitions_are_compare_and_set,
        open_actions_are_pending_and_delivered_in_seq_order,
        a_batch_is_marked_delivered_only_where_still_pending,
        an_answer_ends_its_devices_open_action_with_its_event_once,
        answers_in_one_batch_are_each_recorded_once_or_dropped,
        expired_pending_actions_are_selected_by_time,
        overdue_delivered_actions_are_selected_by_time,
        old_telemetry_is_deleted_by_time,
        audit_entries_are_listed_newest_first_and_pruned,
        events_are_listed_newest_first,
        metrics_are_listed_newest_first,
        a_lapsed_replica_is_taken_over_once_and_only_its_sessions_end,
        a_device_session_moves_only_from_what_was_read_to_a_registered_replica,
        leases_are_renewed_until_taken_over_and_selected_by_time,
        cluster_settings_keep_the_first_value,
        job_actions_are_stored_in_batches_after_each_devices_own,
        queued_job_actions_are_released_cancelled_and_counted,
        spec_writes_are_compare_and_set_and_leave_with_their_device,
        usage_adds_both_ends_counts_per_device_and_pages_through_the_fleet,
        a_devices_watch_is_stored_read_with_its_last_seen_and_leaves_with_it,
        an_alert_is_raised_once_per_condition_acknowledged_and_resolved,
    ],
    db: [
        migrations_are_idempotent,
        corrupt_values_are_errors,
        a_device_naming_a_new_spool_per_batch_keeps_a_bounded_number_of_cursors,
    ],
}

mod metric_series;
mod queries;

/// PostgreSQL only (SQLite has one writer and no row locks): a delivery
/// batch and an answer batch over the same actions take their row locks in
/// one order, so they wait for each other instead of deadlocking. Under a
/// fleet-wide job they did deadlock, and PostgreSQL took a second
/// (`deadlock_timeout`) to break each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deliveries_and_answers_lock_actions_in_one_order() {
    use std::time::Duration;
    use tether_testkit::wait::wait_until;

    let db = TestDb::postgres();
    let store = db.connect().await;
    let name = device(&store, "edge-1").await;
    // Stored last to first, so a scan in the table's order meets a1 last.
    for correlation_id in ["a3", "a2", "a1"] {
        store
            .insert_action(&new_action(correlation_id, &name))
            .await
            .expect("insert an action");
    }
    let raw = db.raw().await;
    let mut holder = raw.begin().await.expect("begin");
    holder
        .execute("SELECT correlation_id FROM actions WHERE correlation_id = 'a1' FOR UPDATE")
        .await
        .expect("lock a1");
    let waiting = |expected: i64| {
        let raw = raw.clone();
        async move {
            wait_until(
                "statements waiting for a1's lock",
                Duration::from_secs(20),
                || {
                    let raw = raw.clone();
                    async move {
                        let waiting: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM pg_stat_activity \
                         WHERE wait_event_type = 'Lock' AND datname = current_database()",
                        )
                        .fetch_one(&raw)
                        .await?;
                        Ok((waiting >= expected).then_some(()))
                    }
                },
            )
            .await
            .expect("the batches wait for a1");
        }
    };
    // While a batch waits for a1 it holds neither a2 nor a3: it locks in
    // correlation-id order, as every batch does.
    let later_rows_free = || async {
        let mut probe = raw.begin().await.expect("begin a probe");
        probe
            .execute(
                "SELECT correlation_id FROM actions WHERE correlation_id IN ('a2', 'a3') \
                 FOR UPDATE NOWAIT",
            )
            .await
            .expect("a2 and a3 are not locked by a batch waiting for a1");
        probe.rollback().await.expect("end the probe");
    };

    let ids: Vec<String> = ["a3", "a2", "a1"].map(String::from).into();
    let delivering = tokio::spawn({
        let store = store.clone();
        async move { store.mark_delivered(&ids, at(10)).await }
    });
    waiting(1).await;
    later_rows_free().await;

    let answers: Vec<AnswerWrite> = ["a3", "a2", "a1"]
        .iter()
        .map(|correlation_id| AnswerWrite {
            device: name.clone(),
            correlation_id: (*correlation_id).to_owned(),
            to: ActionState::Succeeded,
            outcome: outcome(20),
            event: EventRecord {
                correlation_id: Some((*correlation_id).to_owned()),
                ..event(&format!("e-{correlation_id}"), &name, 20)
            },
            announcement: None,
        })
        .collect();
    let answering = tokio::spawn({
        let store = store.clone();
        async move { store.record_answers(&answers).await }
    });
    waiting(2).await;
    later_rows_free().await;

    holder.rollback().await.expect("release a1");
    delivering
        .await
        .expect("the delivery batch ran")
        .expect("the delivery batch is recorded, not a deadlock");
    for result in answering.await.expect("the answer batch ran") {
        let action = result
            .expect("the answer is recorded, not a deadlock")
            .expect("the answer ends its action");
        assert_eq!(action.state, ActionState::Succeeded);
    }
    assert_eq!(store.list_events(&name, 10).await.expect("events").len(), 3);
}

// Helpers -----------------------------------------------------------------------

/// A fixed instant plus `millis`: whole milliseconds, as the store keeps them.
fn at(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_700_000_000_000 + millis).expect("a valid instant")
}

fn id(name: &str) -> DeviceId {
    DeviceId::new(name).expect("a valid device name")
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// The telemetry writers on `store` (`writers` of them, one write slot
/// each), records dated up to 5 minutes ahead, 10,000 series a device.
fn telemetry(store: &Store, writers: usize) -> tether_server::telemetry::Telemetry {
    tether_server::telemetry::Telemetry::new(
        store.clone(),
        std::sync::Arc::default(),
        tether_server::cluster::bus::Bus::in_process(),
        tether_server::telemetry::Limits {
            max_ahead: std::time::Duration::from_secs(300),
            max_series: 10_000,
        },
        std::sync::Arc::new(tokio::sync::Semaphore::new(writers)),
        std::time::Duration::from_secs(5),
        writers,
    )
}

async fn device(store: &Store, name: &str) -> DeviceId {
    let name = id(name);
    store
        .create_device(&name, &Labels::new(), at(0))
        .await
        .expect("create a device");
    name
}

fn new_action(correlation_id: &str, device: &DeviceId) -> NewAction {
    NewAction {
        correlation_id: correlation_id.to_owned(),
        device: device.clone(),
        action: "get-node-ip".to_owned(),
        input: json!({"interface": "eth0", "password": "<redacted>"}),
        sealed_input: format!("sealed:{correlation_id}"),
        created_at: at(0),
        expires_at: at(60_000),
        timeout_seconds: 30,
    }
}

fn outcome(millis: i64) -> Outcome {
    Outcome {
        at: at(millis),
        status_code: Some(200),
        status_message: Some("OK".to_owned()),
        response: Some(json!({"ip": "10.0.0.7"})),
    }
}

fn event(id: &str, device: &DeviceId, millis: i64) -> EventRecord {
    EventRecord {
        id: id.to_owned(),
        device: device.clone(),
        correlation_id: Some(format!("c-{id}")),
        event: "get-node-ip".to_owned(),
        status_code: 200,
        status_message: "OK".to_owned(),
        response: json!({"n": millis}),
        received_at: at(millis),
    }
}

fn sample(millis: i64) -> HostMetrics {
    HostMetrics {
        sampled_at: at(millis),
        cpu_percent: 12.5,
        memory_used_bytes: 1 << 30,
        memory_total_bytes: 1 << 33,
        disk_used_bytes: 5_000_000_000,
        disk_total_bytes: 64_000_000_000,
        network_rx_bytes: 1234,
        network_tx_bytes: u64::try_from(millis).expect("a positive offset"),
    }
}

fn correlation_ids(actions: &[tether_server::store::ActionRecord]) -> Vec<&str> {
    actions
        .iter()
        .map(|action| action.correlation_id.as_str())
        .collect()
}

fn new_job(id: &str, devices: &[DeviceId]) -> NewJob {
    NewJob {
        id: id.to_owned(),
        label_selector: "site=berlin".to_owned(),
        action: "get-node-ip".to_owned(),
        input: json!({}),
        sealed_input: "sealed".to_owned(),
        concurrency: Some(2),
        rate_per_second: None,
        ttl_seconds: 60,
        timeout_seconds: 30,
        created_at: at(0),
        actions: devices
            .iter()
            .enumerate()
            .map(|(i, device)| (format!("{id}-{i:04}"), device.clone()))
            .collect(),
        released: false,
    }
}

// Devices -------------------------------------------------------------------------

async fn devices_are_created_once_read_and_listed_by_name(store: Store) {
    let name = id("edge-2");
    let created = store
        .create_device(&name, &labels(&[("site", "berlin")]), at(5))
        .await
        .expect("create edge-2");
    assert_eq!(created.name, name);
    assert_eq!(created.labels, labels(&[("site", "berlin")]));
    assert_eq!(created.presence, Presence::Offline);
    assert_eq!(created.certificate_serial, None);
    assert_eq!(created.last_seen, None);
    assert_eq!(created.status_seq, 0);
    assert_eq!(created.created_at, at(5));

    let again = store.create_device(&name, &Labels::new(), at(6)).await;
    match again {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "device edge-2"),
        other => panic!("expected a conflict, got {other:?}"),
    }

    assert_eq!(
        store.get_device(&name).await.expect("get edge-2"),
        Some(created.clone())
    );
    assert_eq!(store.get_device(&id("nope")).await.expect("get nope"), None);

    device(&store, "edge-1").await;
    device(&store, "a-first").await;
    let names: Vec<String> = store
        .list_devices()
        .await
        .expect("list devices")
        .into_iter()
        .map(|device| device.name.to_string())
        .collect();
    assert_eq!(names, ["a-first", "edge-1", "edge-2"]);
}

async fn labels_are_replaced(store: Store) {
    let name = id("edge-1");
    store
        .create_device(&name, &labels(&[("a", "1"), ("b", "2")]), at(0))
        .await
        .expect("create edge-1");
    let updated = store
        .set_labels(&name, &labels(&[("c", "3")]))
        .await
        .expect("set labels")
        .expect("edge-1 exists");
    assert_eq!(updated.labels, labels(&[("c", "3")]));
    let read = store.get_device(&name).await.expect("get edge-1");
    assert_eq!(
        read.map(|device| device.labels),
        Some(labels(&[("c", "3")]))
    );
    assert_eq!(
        store
            .set_labels(&id("nope"), &Labels::new())
            .await
            .expect("set labels of a missing device"),
        None
    );
}

async fn device_status_is_stored(store: Store) {
    let name = device(&store, "edge-1").await;
    store
        .set_certificate_serial(&name, "0a1b2c")
        .await
        .expect("set serial");
    store
        .set_presence(&name, Presence::Online, at(1_000))
        .await
        .expect("set presence");
    store
        .set_agent_status(&name, "0.1.0", &["send-ping".to_owned()], "boot-1", 7)
        .await
        .expect("set agent status");
    let read = store
        .get_device(&name)
        .await
        .expect("get edge-1")
        .expect("edge-1 exists");
    assert_eq!(read.certificate_serial.as_deref(), Some("0a1b2c"));
    assert_eq!(read.presence, Presence::Online);
    assert_eq!(read.last_seen, Some(at(1_000)));
    assert_eq!(read.agent_version.as_deref(), Some("0.1.0"));
    assert_eq!(read.boot_id.as_deref(), Some("boot-1"));
    assert_eq!(read.capabilities, ["send-ping"]);
    assert_eq!(read.status_seq, 7);

    // Hearing from devices moves their lastSeen, in one statement, and
    // leaves presence alone; a device deleted meanwhile is skipped.
    let other = device(&store, "edge-2").await;
    let seen = |device: &DeviceId, millis| SeenDevice {
        device: device.clone(),
        at: at(millis),
        actions: ActionBytes::default(),
    };
    store
        .touch_last_seen(&[
            seen(&name, 5_000),
            seen(&id("gone"), 5_000),
            seen(&other, 6_000),
        ])
        .await
        .expect("touch last seen");
    let touched = store
        .get_device(&name)
        .await
        .expect("get edge-1")
        .expect("edge-1 exists");
    assert_eq!(touched.last_seen, Some(at(5_000)));
    assert_eq!(touched.presence, Presence::Online);
    let other = store
        .get_device(&other)
        .await
        .expect("get edge-2")
        .expect("edge-2 exists");
    assert_eq!(other.last_seen, Some(at(6_000)));
    assert_eq!(other.presence, Presence::Offline);
    assert_eq!(store.get_device(&id("gone")).await.expect("get"), None);

    let missing = id("gone");
    match store.set_certificate_serial(&missing, "ff").await {
        Err(StoreError::NotFound { what }) => assert_eq!(what, "device gone"),
        other => panic!("expected not found, got {other:?}"),
    }
    // Presence of a device deleted meanwhile is dropped quietly.
    store
        .set_presence(&missing, Presence::Offline, at(2_000))
        .await
        .expect("presence of a missing device");
    match store
        .set_agent_status(&name, "0.1.0", &[], "boot-1", u64::MAX)
        .await
    {
        Err(StoreError::TooLarge { value, .. }) => assert_eq!(value, u64::MAX),
        other => panic!("expected too large, got {other:?}"),
    }
}

async fn deleting_a_device_removes_everything_it_owns(store: Store) {
    let doomed = device(&store, "doomed").await;
    let kept = device(&store, "kept").await;
    for name in [&doomed, &kept] {
        store
            .insert_enrollment_token(name, &format!("token-{name}"), at(60_000))
            .await
            .expect("insert a token");
        store
            .insert_action(&new_action(&format!("action-{name}"), name))
            .await
            .expect("insert an action");
        store
            .insert_event(&event(&format!("event-{name}"), name, 1))
            .await
            .expect("insert an event");
        store
            .insert_metrics(name, &sample(1))
            .await
            .expect("insert metrics");
        let point = Point {
            series: SeriesKey::new("cpu_percent"),
            at: at(1_000),
            value: 1.0,
        };
        store
            .insert_points(name, &[point], at(1_000), 10)
            .await
            .expect("insert a point");
    }
    let series_id = |name: &DeviceId| SeriesKey::new("cpu_percent").id(name);
    let raw_points = |id: i64| {
        let store = store.clone();
        async move {
            store
                .series_buckets(&[id], 1, 1, at(0), at(10_000))
                .await
                .expect("points")
                .len()
        }
    };
    assert_eq!(raw_points(series_id(&doomed)).await, 1);

    assert!(store.delete_device(&doomed).await.expect("delete doomed"));
    assert!(
        !store
            .delete_device(&doomed)
            .await
            .expect("delete doomed again")
    );

    assert_eq!(store.get_device(&doomed).await.expect("get doomed"), None);
    assert_eq!(
        store
            .consume_enrollment_token("token-doomed", at(0))
            .await
            .expect("consume doomed's token"),
        None
    );
    assert_eq!(
        store
            .get_action("action-doomed")
            .await
            .expect("get doomed's action"),
        None
    );
    assert!(
        store
            .list_events(&doomed, 10)
            .await
            .expect("events")
            .is_empty()
    );
    assert!(
        store
            .list_metrics(&doomed, 10)
            .await
            .expect("metrics")
            .is_empty()
    );

    // A device of the same name starts from nothing: no old actions, seq 1,
    // no points of its series (whose ids come from the names).
    let reborn = device(&store, "doomed").await;
    assert_eq!(raw_points(series_id(&reborn)).await, 0);
    assert_eq!(raw_points(series_id(&kept)).await, 1);
    let first = store
        .insert_action(&new_action("action-reborn", &reborn))
        .await
        .expect("insert into the re-created device");
    assert_eq!(first.seq, 1);

    assert_eq!(
        store
            .consume_enrollment_token("token-kept", at(0))
            .await
            .expect("consume kept's token"),
        Some(kept.clone())
    );
    assert!(
        store
            .get_action("action-kept")
            .await
            .expect("get")
            .is_some()
    );
    assert_eq!(store.list_events(&kept, 10).await.expect("events").len(), 1);
    assert_eq!(
        store.list_metrics(&kept, 10).await.expect("metrics").len(),
        1
    );
}

// Enrollment tokens ---------------------------------------------------------------------

async fn enrollment_token_works_exactly_once(store: Store) {
    let name = device(&store, "edge-1").await;
    store
        .insert_enrollment_token(&name, "hash-1", at(60_000))
        .await
        .expect("insert hash-1");
    store
        .insert_enrollment_token(&name, "hash-2", at(60_000))
        .await
        .expect("insert hash-2");
    // Issuing hash-2 revoked the unused hash-1.
    assert_eq!(
        store
            .consume_enrollment_token("hash-1", at(1_000))
            .await
            .expect("use the revoked token"),
        None
    );
    assert_eq!(
        store
            .consume_enrollment_token("hash-2", at(1_001))
            .await
            .expect("first use"),
        Some(name.clone())
    );
    assert_eq!(
        store
            .consume_enrollment_token("hash-2", at(1_002))
            .await
            .expect("second use"),
        None
    );
    // A token issued after enrollment (re-enrollment) works once again.
    store
        .insert_enrollment_token(&name, "hash-renewed", at(60_000))
        .await
        .expect("insert hash-renewed");
    assert_eq!(
        store
            .consume_enrollment_token("hash-renewed", at(1_003))
            .await
            .expect("use hash-renewed"),
        Some(name)
    );
    assert_eq!(
        store
            .consume_enrollment_token("unknown", at(0))
            .await
            .expect("use an unknown token"),
        None
    );
    match store
        .insert_enrollment_token(&id("gone"), "hash-3", at(60_000))
        .await
    {
        Err(StoreError::NotFound { what }) => assert_eq!(what, "device gone"),
        other => panic!("expected not found, got {other:?}"),
    }
}

async fn concurrent_consumers_of_a_token_have_one_winner(store: Store) {
    let name = device(&store, "edge-1").await;
    store
        .insert_enrollment_token(&name, "contested", at(60_000))
        .await
        .expect("insert the token");
    let attempts = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.consume_enrollment_token("contested", at(1)).await })
    });
    let winners: Vec<DeviceId> = join_all(attempts)
        .await
        .into_iter()
        .filter_map(|joined| joined.expect("task finished").expect("consume"))
        .collect();
    assert_eq!(winners, [name]);
}

async fn expired_enrollment_token_is_refused(store: Store) {
    let name = device(&store, "edge-1").await;
    store
        .insert_enrollment_token(&name, "old", at(1_000))
        .await
        .expect("insert the token");
    // Valid strictly before `expires_at`.
    assert_eq!(
        store
            .consume_enrollment_token("old", at(1_000))
            .await
            .expect("use at expiry"),
        None
    );
    assert_eq!(
        store
            .consume_enrollment_token("old", at(999))
            .await
            .expect("use before expiry"),
        Some(name)
    );
}

// Users and sessions ------------------------------------------------------------------

async fn users_are_upserted_and_sessions_stored(store: Store) {
    let mut admin = UserRecord {
        username: "admin".to_owned(),
        password_hash: "sha256:00:11".to_owned(),
        role: "admin".to_owned(),
    };
    store.upsert_user(&admin).await.expect("create admin");
    assert_eq!(
        store.get_user("admin").await.expect("get admin"),
        Some(admin.clone())
    );
    admin.password_hash = "sha256:22:33".to_owned();
    admin.role = "viewer".to_owned();
    store.upsert_user(&admin).await.expect("update admin");
    assert_eq!(
        store.get_user("admin").await.expect("get admin"),
        Some(admin)
    );
    assert_eq!(store.get_user("nobody").await.expect("get nobody"), None);

    let session = |id: &str, username: &str, expires: i64| SessionRecord {
        id: id.to_owned(),
        username: username.to_owned(),
        created_at: at(0),
        expires_at: at(expires),
        last_used_at: at(0),
    };
    let first = session("s1", "admin", 3_600_000);
    store
        .insert_session("session-hash", &first)
        .await
        .expect("insert a session");
    assert_eq!(
        store
            .get_session("session-hash")
            .await
            .expect("get the session"),
        Some((first.clone(), "viewer".to_owned()))
    );
    assert_eq!(store.get_session("other").await.expect("get other"), None);
    match store
        .insert_session("s2-hash", &session("s2", "nobody", 1))
        .await
    {
        Err(StoreError::NotFound { what }) => assert_eq!(what, "user nobody"),
        other => panic!("expected not found, got {other:?}"),
    }
    store.touch_session("s1", at(90_000)).await.expect("touch");
    let expired = session("s3", "admin", 1_000);
    store
        .insert_session("expired-hash", &expired)
        .await
        .expect("insert an expired session");
    let listed: Vec<String> = store
        .list_sessions(None, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|s| {
            format!(
                "{} {}",
                s.id,
                s.last_used_at.timestamp_millis() - at(0).timestamp_millis()
            )
        })
        .collect();
    assert_eq!(
        listed,
        ["s3 0", "s1 90000"],
        "newest first, with the last use"
    );

    assert_eq!(
        store
            .delete_sessions_expired_before(at(2_000))
            .await
            .expect("prune"),
        1
    );
    assert_eq!(store.get_session("expired-hash").await.expect("get"), None);
    store.delete_session("s1").await.expect("revoke");
    assert_eq!(store.get_session("session-hash").await.expect("get"), None);
    match store.delete_session("s1").await {
        Err(StoreError::NotFound { what }) => assert_eq!(what, "session s1"),
        other => panic!("expected not found, got {other:?}"),
    }
}

async fn finished_actions_are_deleted_after_retention_and_open_ones_kept(store: Store) {
    use ActionState::*;
    let name = device(&store, "edge-1").await;
    for id in ["old-done", "new-done", "old-open"] {
        store
            .insert_action(&new_action(id, &name))
            .await
            .expect("insert");
    }
    store
        .transition_action("old-done", &[Pending], Failed, &outcome(1_000))
        .await
        .expect("finish old");
    store
        .transition_action("new-done", &[Pending], Succeeded, &outcome(9_000))
        .await
        .expect("finish new");
    assert_eq!(
        store
            .delete_finished_actions_before(at(5_000))
            .await
            .expect("prune"),
        1
    );
    let left: Vec<String> = store
        .list_actions(&name, 10)
        .await
        .expect("list")
        .into_iter()
        .map(|a| a.correlation_id)
        .collect();
    assert_eq!(
        left,
        ["old-open", "new-done"],
        "the open action stays whatever its age"
    );
}

// Actions ---------------------------------------------------------------------------------

async fn actions_get_a_seq_per_device_in_order(store: Store) {
    let one = device(&store, "one").await;
    let two = device(&store, "two").await;
    let mut seqs = Vec::new();
    for (correlation_id, device) in [
        ("a", &one),
        ("b", &two),
        ("c", &one),
        ("d", &one),
        ("e", &two),
    ] {
        let stored = store
            .insert_action(&new_action(correlation_id, device))
            .await
            .expect("insert an action");
        seqs.push(stored.seq);
    }
    assert_eq!(seqs, [1, 1, 2, 3, 2]);

    let stored = store
        .get_action("a")
        .await
        .expect("get a")
        .expect("a exists");
    assert_eq!(stored.device, one);
    assert_eq!(stored.action, "get-node-ip");
    assert_eq!(
        stored.input,
        json!({"interface": "eth0", "password": "<redacted>"})
    );
    assert_eq!(stored.sealed_input.as_deref(), Some("sealed:a"));
    assert_eq!(stored.state, ActionState::Pending);
    assert_eq!(stored.status_code, None);
    assert_eq!(stored.response, None);
    assert_eq!(stored.created_at, at(0));
    assert_eq!(stored.expires_at, at(60_000));
    assert_eq!(stored.delivered_at, None);
    assert_eq!(stored.completed_at, None);
    assert_eq!(stored.timeout_seconds, 30);
    assert_eq!(store.get_action("zzz").await.expect("get zzz"), None);

    let newest_first = store
        .list_actions(&one, 2)
        .await
        .expect("list one's actions");
    assert_eq!(correlation_ids(&newest_first), ["d", "c"]);
    let all = store
        .list_actions(&one, 10)
        .await
        .expect("list one's actions");
    assert_eq!(correlation_ids(&all), ["d", "c", "a"]);
}

async fn job_actions_are_stored_in_batches_after_each_devices_own(store: Store) {
    // More devices than one INSERT carries, so the batches are crossed.
    let mut devices = Vec::new();
    for i in 0..1_203 {
        devices.push(device(&store, &format!("d-{i:04}")).await);
    }
    store
        .insert_action(&new_action("before", &devices[7]))
        .await
        .expect("an earlier action");
    let job = store
        .insert_job(&new_job("job-1", &devices))
        .await
        .expect("store the job");
    assert_eq!(job.devices, 1_203);
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.concurrency, Some(2));
    let counts = store.job_counts("job-1").await.expect("counts");
    assert_eq!(counts.queued, 1_203);
    assert_eq!(counts.total(), 1_203);
    let seventh = store
        .list_actions(&devices[7], 10)
        .await
        .expect("d-0007's actions");
    assert_eq!(correlation_ids(&seventh), ["job-1-0007", "before"]);
    assert_eq!(seventh[0].seq, 2, "after the device's own action");
    assert_eq!(seventh[0].job_id.as_deref(), Some("job-1"));
    assert_eq!(seventh[0].state, ActionState::Queued);
    assert_eq!(seventh[0].expires_at, at(60_000));
    assert_eq!(
        store.list_actions(&devices[1_202], 10).await.expect("last")[0].seq,
        1
    );
    let page = store
        .list_job_actions("job-1", None, Some("d-0999"), 1000)
        .await
        .expect("a page");
    assert_eq!(page.len(), 203);
    assert_eq!(page[0].device.as_str(), "d-1000");

    // A device that vanished meanwhile fails the whole job, which stores nothing.
    let gone = id("never-created");
    let error = store
        .insert_job(&new_job("job-2", &[devices[0].clone(), gone]))
        .await
        .expect_err("unknown device");
    assert!(matches!(error, StoreError::NotFound { .. }), "{error:?}");
    assert_eq!(store.get_job("job-2").await.expect("read"), None);
    assert_eq!(store.job_counts("job-2").await.expect("counts").total(), 0);
}

async fn queued_job_actions_are_released_cancelled_and_counted(store: Store) {
    let mut devices = Vec::new();
    for name in ["a", "b", "c", "d"] {
        devices.push(device(&store, name).await);
    }
    store
        .set_presence(&devices[1], Presence::Online, at(1))
        .await
        .expect("b online");
    store
        .set_presence(&devices[3], Presence::Online, at(1))
        .await
        .expect("d online");
    store
        .insert_job(&new_job("job", &devices))
        .await
        .expect("store the job");

    let released = store
        .release_queued("job", 1, true)
        .await
        .expect("release one online");
    assert_eq!(released, [id("b")]);
    let released = store
        .release_queued("job", 10, true)
        .await
        .expect("release the other online");
    assert_eq!(released, [id("d")], "offline devices' actions stay queued");
    assert!(
        store
            .release_queued("job", 10, true)
            .await
            .expect("none")
            .is_empty()
    );
    let counts = store.job_counts("job").await.expect("counts");
    assert_eq!((counts.queued, counts.pending), (2, 2));
    store
        .transition_action(
            "job-0001",
            &[ActionState::Pending],
            ActionState::Delivered,
            &outcome(5),
        )
        .await
        .expect("deliver b's");

    let (job, cancelled) = store
        .cancel_job("job", at(10), "cancelled by the test")
        .await
        .expect("cancel")
        .expect("the job exists");
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(job.cancelled_at, Some(at(10)));
    let mut ids = correlation_ids(&cancelled);
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["job-0000", "job-0002", "job-0003"],
        "queued and pending"
    );
    assert!(cancelled.iter().all(|a| a.sealed_input.is_none()));
    let counts = store.job_counts("job").await.expect("counts");
    assert_eq!((counts.cancelled, counts.delivered), (3, 1));
    let (again, none) = store
        .cancel_job("job", at(20), "again")
        .await
        .expect("cancel again")
        .expect("exists");
    assert!(none.is_empty());
    assert_eq!(again.cancelled_at, Some(at(10)), "the first cancel stands");
    assert_eq!(
        store.cancel_job("nope", at(20), "x").await.expect("none"),
        None
    );

    store
        .transition_action(
            "job-0001",
            &[ActionState::Delivered],
            ActionState::Succeeded,
            &outcome(30),
        )
        .await
        .expect("b answers");
    let counts = store.job_counts("job").await.expect("counts");
    store
        .finish_job("job", at(40), &counts)
        .await
        .expect("finish");
    let finished = store.get_job("job").await.expect("read").expect("exists");
    assert_eq!(
        finished.state,
        JobState::Cancelled,
        "a cancelled job stays cancelled"
    );
    assert_eq!(finished.finished_at, Some(at(40)));
    assert_eq!(finished.counts, Some(counts));
    assert!(
        store
            .unfinished_jobs()
            .await
            .expect("unfinished")
            .is_empty()
    );

    // Retention: the job goes once it finished before the cut, and its
    // counts outlive the actions meanwhile.
    assert_eq!(
        store
            .delete_finished_actions_before(at(50))
            .await
            .expect("prune"),
        4
    );
    assert_eq!(
        store
            .get_job("job")
            .await
            .expect("read")
            .and_then(|j| j.counts),
        Some(counts)
    );
    assert_eq!(
        store
            .delete_finished_jobs_before(at(40))
            .await
            .expect("prune"),
        0
    );
    assert_eq!(
        store
            .delete_finished_jobs_before(at(41))
            .await
            .expect("prune"),
        1
    );
    assert_eq!(store.list_jobs(None, 10).await.expect("list"), []);
}

async fn concurrent_inserts_get_distinct_seqs(store: Store) {
    let name = device(&store, "busy").await;
    let inserts = (0..8).map(|i| {
        let store = store.clone();
        let action = new_action(&format!("concurrent-{i}"), &name);
        tokio::spawn(async move { store.insert_action(&action).await })
    });
    let mut seqs: Vec<u64> = join_all(inserts)
        .await
        .into_iter()
        .map(|joined| joined.expect("task finished").expect("insert").seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
}

async fn duplicate_correlation_id_is_a_conflict(store: Store) {
    let one = device(&store, "one").await;
    let two = device(&store, "two").await;
    store
        .insert_action(&new_action("same", &one))
        .await
        .expect("insert the first");
    // Also on another device: correlation ids are global.
    for device in [&one, &two] {
        match store.insert_action(&new_action("same", device)).await {
            Err(StoreError::Conflict { what }) => assert_eq!(what, "action same"),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    match store.insert_action(&new_action("lost", &id("gone"))).await {
        Err(StoreError::NotFound { what }) => assert_eq!(what, "device gone"),
        other => panic!("expected not found, got {other:?}"),
    }
    // The failed attempts did not use up a seq.
    let next = store
        .insert_action(&new_action("next", &one))
        .await
        .expect("insert the next");
    assert_eq!(next.seq, 2);
}

async fn transitions_are_compare_and_set(store: Store) {
    use ActionState::*;
    let name = device(&store, "edge-1").await;
    store
        .insert_action(&new_action("c1", &name))
        .await
        .expect("insert c1");

    // Wrong from-state: nothing changes.
    assert_eq!(
        store
            .transition_action("c1", &[Delivered], Succeeded, &outcome(5))
            .await
            .expect("transition from the wrong state"),
        None
    );
    assert_eq!(
        store
            .transition_action("c1", &[], Delivered, &outcome(5))
            .await
            .expect("transition from no state"),
        None
    );
    assert_eq!(
        store
            .transition_action("missing", &[Pending], Delivered, &outcome(5))
            .await
            .expect("transition a missing action"),
        None
    );

    let delivered = store
        .transition_action("c1", &[Pending, Delivered], Delivered, &outcome(10))
        .await
        .expect("deliver")
        .expect("c1 was pending");
    assert_eq!(delivered.state, Delivered);
    assert_eq!(delivered.delivered_at, Some(at(10)));
    assert_eq!(delivered.sealed_input.as_deref(), Some("sealed:c1"));
    assert_eq!(delivered.status_code, None);
    assert_eq!(delivered.completed_at, None);

    let done = store
        .transition_action("c1", &[Pending, Delivered], Succeeded, &outcome(20))
        .await
        .expect("complete")
        .expect("c1 was delivered");
    assert_eq!(done.state, Succeeded);
    assert_eq!(done.delivered_at, Some(at(10)));
    assert_eq!(done.completed_at, Some(at(20)));
    assert_eq!(done.status_code, Some(200));
    assert_eq!(done.status_message.as_deref(), Some("OK"));
    assert_eq!(done.response, Some(json!({"ip": "10.0.0.7"})));
    assert_eq!(done.sealed_input, None);
    assert_eq!(
        store.get_action("c1").await.expect("get c1"),
        Some(done.clone())
    );

    // Terminal: a late timeout does not overwrite the result.
    assert_eq!(
        store
            .transition_action("c1", &[Pending, Delivered], TimedOut, &outcome(30))
            .await
            .expect("time out a finished action"),
        None
    );
    assert_eq!(store.get_action("c1").await.expect("get c1"), Some(done));

    // A terminal state without a status or response stores NULLs.
    store
        .insert_action(&new_action("c2", &name))
        .await
        .expect("insert c2");
    let expired = store
        .transition_action(
            "c2",
            &[Pending],
            Expired,
            &Outcome {
                at: at(40),
                status_code: None,
                status_message: None,
                response: None,
            },
        )
        .await
        .expect("expire")
        .expect("c2 was pending");
    assert_eq!(expired.state, Expired);
    assert_eq!(expired.completed_at, Some(at(40)));
    assert_eq!(expired.status_code, None);
    assert_eq!(expired.response, None);
    assert_eq!(expired.sealed_input, None);
}

async fn open_actions_are_pending_and_delivered_in_seq_order(store: Store) {
    use ActionState::*;
    let name = device(&store, "edge-1").await;
    let other = device(&store, "edge-2").await;
    for correlation_id in ["a1", "a2", "a3", "a4"] {
        store
            .insert_action(&new_action(correlation_id, &name))
            .await
            .expect("insert an action");
    }
    store
        .insert_action(&new_action("elsewhere", &other))
        .await
        .expect("insert on edge-2");
    store
        .transition_action("a1", &[Pending], Delivered, &outcome(1))
        .await
        .expect("deliver a1")
        .expect("a1 was pending");
    store
        .transition_action("a2", &[Pending], Failed, &outcome(1))
        .await
        .expect("fail a2")
        .expect("a2 was pending");
    let open = store
        .open_actions(std::slice::from_ref(&name))
        .await
        .expect("open actions");
    assert_eq!(correlation_ids(&open), ["a1", "a3", "a4"]);
    assert_eq!(
        open.iter().map(|action| action.state).collect::<Vec<_>>(),
        [Delivered, Pending, Pending]
    );
    let both = store
        .open_actions(&[other, name])
        .await
        .expect("open actions of two devices");
    assert_eq!(
        correlation_ids(&both),
        ["a1", "a3", "a4", "elsewhere"],
        "by device, then seq"
    );
    assert!(
        store
            .open_actions(&[])
            .await
            .expect("open actions of no device")
            .is_empty()
    );
}

async fn a_batch_is_marked_delivered_only_where_still_pending(store: Store) {
    use ActionState::*;
    let name = device(&store, "edge-1").await;
    // More than one statement's worth, so the batch is split.
    let ids: Vec<String> = (0..501).map(|i| format!("a{i:03}")).collect();
    for correlation_id in &ids {
        store
            .insert_action(&new_action(correlation_id, &name))
            .await
            .expect("insert an action");
    }
    // Answered between its publish and the mark; and one never published.
    store
        .transition_action("a001", &[Pending], Succeeded, &outcome(20))
        .await
        .expect("answer a001")
        .expect("a001 was pending");
    let published: Vec<String> = ids.iter().filter(|id| *id != "a500").cloned().collect();
    let marked = store
        .mark_delivered(&published, at(50))
        .await
        .expect("mark delivered");
    assert_eq!(marked, 499, "every published one still pending");

    let answered = store.get_action("a001").await.expect("read").expect("a001");
    assert_eq!(answered.state, Succeeded, "an answer is not overwritten");
    assert_eq!(answered.delivered_at, None);
    let last_marked = store.get_action("a499").await.expect("read").expect("a499");
    assert_eq!(last_marked.state, Delivered);
    assert_eq!(last_marked.delivered_at, Some(at(50)));
    let unpublished = store.get_action("a500").await.expect("read").expect("a500");
    assert_eq!(unpublished.state, Pending);
    assert_eq!(
        store
            .mark_delivered(&published, at(60))
            .await
            .expect("mark again"),
        0,
        "marking twice changes nothing"
    );
    assert_eq!(
        store
            .get_action("a499")
            .await
            .expect("read")
            .expect("a499")
            .delivered_at,
        Some(at(50))
    );
}

async fn answers_in_one_batch_are_each_recorded_once_or_dropped(store: Store) {
    use ActionState::*;
    let name = device(&store, "edge-1").await;
    let other = device(&store, "edge-2").await;
    for (correlation_id, owner) in [("b1", &name), ("b2", &name), ("b3", &other)] {
        store
            .insert_action(&new_action(correlation_id, owner))
            .await
            .expect("insert an action");
    }
    let answer = |event_id: &str, device: &DeviceId, correlation_id: &str, to| AnswerWrite {
        device: device.clone(),
        correlation_id: correlation_id.to_owned(),
        to,
        outcome: outcome(20),
        event: EventRecord {
            correlation_id: Some(correlation_id.to_owned()),
            ..event(event_id, device, 20)
        },
        announcement: None,
    };
    let results = store
        .record_answers(&[
            answer("e1", &name, "b1", Succeeded),
            // A second answer to b1 in the same batch: dropped, no event.
            answer("e2", &name, "b1", Failed),
            // Another device's action: dropped.
            answer("e3", &name, "b3", Succeeded),
            answer("e4", &name, "nope", Succeeded),
            answer("e5", &name, "b2", Failed),
            answer("e6", &other, "b3", Succeeded),
        ])
        .await;
    let states: Vec<Option<ActionState>> = results
        .into_iter()
        .map(|result| result.expect("recorded").map(|action| action.state))
        .collect();
    assert_eq!(
        states,
        [
            Some(Succeeded),
            None,
            None,
            None,
            Some(Failed),
            Some(Succeeded)
        ]
    );
    let mut ids: Vec<String> =
        join_all([&name, &other].map(|device| store.list_events(device, 10)))
            .await
            .into_iter()
            .flat_map(|events| events.expect("events"))
            .map(|event| event.id)
            .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["e1", "e5", "e6"], "one event per recorded answer");
    let b1 = store.get_action("b1").await.expect("read").expect("b1");
    assert_eq!((b1.state, b1.completed_at), (Succeeded, Some(at(20))));
}

async fn an_answer_ends_its_devices_open_action_with_its_event_once(store: Store) {
    use ActionState::*;
    let name = device(&store, "edge-1").await;
    let other = device(&store, "edge-2").await;
    for correlation_id in ["c1", "c2"] {
        store
            .insert_action(&new_action(correlation_id, &name))
            .await
            .expect("insert an action");
    }
    let answer = |id: &str, device: &DeviceId, correlation_id: &str| EventRecord {
        correlation_id: Some(correlation_id.to_owned()),
        ..event(id, device, 20)
    };

    // Another device's answer, or one for no action: nothing written.
    let foreign = store
        .record_answer(
            &other,
            "c1",
            Succeeded,
            &outcome(20),
            &answer("e0", &other, "c1"),
            None,
        )
        .await
        .expect("answer another device's action");
    assert_eq!(foreign, None);
    let missing = store
        .record_answer(
            &name,
            "nope",
            Succeeded,
            &outcome(20),
            &answer("e1", &name, "nope"),
            None,
        )
        .await
        .expect("answer no action");
    assert_eq!(missing, None);
    assert!(
        store
            .list_events(&other, 10)
            .await
            .expect("events")
            .is_empty()
    );
    assert!(
        store
            .list_events(&name, 10)
            .await
            .expect("events")
            .is_empty()
    );

    store
        .transition_action("c1", &[Pending], Delivered, &outcome(10))
        .await
        .expect("deliver c1")
        .expect("c1 was pending");
    let done = store
        .record_answer(
            &name,
            "c1",
            Succeeded,
            &outcome(20),
            &answer("e2", &name, "c1"),
            None,
        )
        .await
        .expect("answer c1")
        .expect("c1 was delivered");
    assert_eq!(done.state, Succeeded);
    assert_eq!(done.delivered_at, Some(at(10)));
    assert_eq!(done.completed_at, Some(at(20)));
    assert_eq!(done.status_code, Some(200));
    assert_eq!(done.response, Some(json!({"ip": "10.0.0.7"})));
    assert_eq!(done.sealed_input, None);
    assert_eq!(
        store.get_action("c1").await.expect("read"),
        Some(done.clone())
    );

    // A repeat of the answer finds the action ended: no second event.
    let repeat = store
        .record_answer(
            &name,
            "c1",
            Failed,
            &outcome(30),
            &answer("e3", &name, "c1"),
            None,
        )
        .await
        .expect("answer c1 again");
    assert_eq!(repeat, None);
    assert_eq!(store.get_action("c1").await.expect("read"), Some(done));

    // An answer straight from pending (it beat the delivery mark) counts.
    let early = store
        .record_answer(
            &name,
            "c2",
            Failed,
            &outcome(25),
            &answer("e4", &name, "c2"),
            None,
        )
        .await
        .expect("answer c2")
        .expect("c2 was pending");
    assert_eq!(early.state, Failed);

    let events = store.list_events(&name, 10).await.expect("events");
    let mut ids: Vec<&str> = events.iter().map(|event| event.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["e2", "e4"], "one event per recorded answer");
}

async fn expired_pending_actions_are_selected_by_time(store: Store) {
    use ActionState::*;
    let name = device(&store, "edge-1").await;
    for (correlation_id, expires_at) in [("early", 1_000), ("on-time", 2_000), ("late", 3_000)] {
        let mut action = new_action(correlation_id, &name);
        action.expires_at = at(expires_at);
        store
            .insert_action(&action)
            .await
            .expect("insert an action");
    }
    let mut delivered = new_action("delivered", &name);
    delivered.expires_at = at(0);
    store.insert_action(&delivered).await.expect("insert");
    store
        .transition_action("delivered", &[Pending], Delivered, &outcome(0))
        .await
        .expect("deliver")
        .expect("was pending");

    let expired = store
        .expired_pending_actions(at(2_000))
        .await
        .expect("expired actions");
    assert_eq!(correlation_ids(&expired), ["early", "on-time"]);
    assert!(
        store
            .expired_pending_actions(at(999))
            .await
            .expect("expired actions")
            .is_empty()
    );
}

async fn overdue_delivered_actions_are_selected_by_time(store: Store) {
    use ActionState::*;
    let name = device(&store, "edge-1").await;
    // Deadlines: quick 1 s after 0 → 1_000; slow 5 s after 0 → 5_000;
    // late-delivery 1 s after 4_000 → 5_000.
    for (correlation_id, timeout_seconds, delivered_at) in
        [("quick", 1, 0), ("slow", 5, 0), ("late-delivery", 1, 4_000)]
    {
        let mut action = new_action(correlation_id, &name);
        action.timeout_seconds = timeout_seconds;
        store.insert_action(&action).await.expect("insert");
        store
            .transition_action(
                correlation_id,
                &[Pending],
                Delivered,
                &outcome(delivered_at),
            )
            .await
            .expect("deliver")
            .expect("was pending");
    }
    // Pending actions never time out, however old.
    let mut pending = new_action("pending", &name);
    pending.timeout_seconds = 0;
    store.insert_action(&pending).await.expect("insert");

    let at_1s = store
        .overdue_delivered_actions(at(1_000))
        .await
        .expect("overdue at 1 s");
    assert_eq!(correlation_ids(&at_1s), ["quick"]);
    let at_5s = store
        .overdue_delivered_actions(at(5_000))
        .await
        .expect("overdue at 5 s");
    assert_eq!(correlation_ids(&at_5s), ["quick", "slow", "late-delivery"]);
    assert!(
        store
            .overdue_delivered_actions(at(999))
            .await
            .expect("overdue before any deadline")
            .is_empty()
    );
}

// Events and metrics ------------------------------------------------------------------

async fn events_are_listed_newest_first(store: Store) {
    let name = device(&store, "edge-1").await;
    let other = device(&store, "edge-2").await;
    for (id, millis) in [("e1", 10), ("e3", 30), ("e2", 20)] {
        store
            .insert_event(&event(id, &name, millis))
            .await
            .expect("insert an event");
    }
    store
        .insert_event(&event("x", &other, 40))
        .await
        .expect("insert on edge-2");
    match store.insert_event(&event("e1", &name, 50)).await {
        Err(StoreError::Conflict { what }) => assert_eq!(what, "event e1"),
        other => panic!("expected a conflict, got {other:?}"),
    }

    let events = store.list_events(&name, 2).await.expect("list events");
    assert_eq!(events, [event("e3", &name, 30), event("e2", &name, 20)]);
    let uncorrelated = EventRecord {
        correlation_id: None,
        ..event("e4", &name, 40)
    };
    store
        .insert_event(&uncorrelated)
        .await
        .expect("insert an uncorrelated event");
    let events = store.list_events(&name, 10).await.expect("list events");
    assert_eq!(events.len(), 4);
    assert_eq!(events[0], uncorrelated);
}

async fn metrics_are_listed_newest_first(store: Store) {
    let name = device(&store, "edge-1").await;
    for millis in [1_000, 3_000, 2_000] {
        store
            .insert_metrics(&name, &sample(millis))
            .await
            .expect("insert a sample");
    }
    // A sample sent twice is stored once.
    store
        .insert_metrics(&name, &sample(3_000))
        .await
        .expect("insert a resent sample");
    let samples = store.list_metrics(&name, 2).await.expect("list metrics");
    assert_eq!(samples, [sample(3_000), sample(2_000)]);
    assert_eq!(store.list_metrics(&name, 10).await.expect("list").len(), 3);
    match store.insert_metrics(&id("gone"), &sample(1)).await {
        Err(StoreError::NotFound { what }) => assert_eq!(what, "device gone"),
        other => panic!("expected not found, got {other:?}"),
    }
}

async fn old_telemetry_is_deleted_by_time(store: Store) {
    let name = device(&store, "edge-1").await;
    for (i, millis) in [1_000, 2_000, 3_000].into_iter().enumerate() {
        store
            .insert_event(&event(&format!("e{i}"), &name, millis))
            .await
            .expect("insert an event");
        store
            .insert_metrics(&name, &sample(millis))
            .await
            .expect("insert a sample");
    }
    let deleted = store
        .delete_telemetry_before(at(2_000), at(3_000))
        .await
        .expect("delete old telemetry");
    assert_eq!(deleted, (1, 2));
    let events = store.list_events(&name, 10).await.expect("list events");
    let kept: Vec<_> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(kept, ["e2", "e1"]);
    assert_eq!(
        store.list_metrics(&name, 10).await.expect("list metrics"),
        [sample(3_000)]
    );
}

async fn audit_entries_are_listed_newest_first_and_pruned(store: Store) {
    for (i, millis) in [1_000, 3_000, 2_000].into_iter().enumerate() {
        store
            .insert_audit(&tether_server::store::AuditRecord {
                id: format!("a{i}"),
                at: at(millis),
                actor: "admin".to_owned(),
                method: "DELETE".to_owned(),
                path: format!("/api/v1/devices/d{i}"),
                status: 204,
                detail: (i == 1).then(|| serde_json::json!({"kind": "exec", "bytesToDevice": 5})),
            })
            .await
            .expect("insert an audit entry");
    }
    let listed = store.list_audit(None, 2).await.expect("list the audit log");
    let ids: Vec<_> = listed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["a1", "a2"]);
    assert_eq!(
        listed[0].detail,
        Some(serde_json::json!({"kind": "exec", "bytesToDevice": 5}))
    );
    assert_eq!(listed[1].detail, None);
    assert_eq!(listed[0].status, 204);
    assert_eq!(
        store
            .delete_audit_before(at(2_000))
            .await
            .expect("prune the audit log"),
        1
    );
    assert_eq!(store.list_audit(None, 10).await.expect("list").len(), 2);
}

// Schema ------------------------------------------------------------------------------------

async fn migrations_are_idempotent(db: &TestDb) {
    let first = db.connect().await;
    let name = device(&first, "edge-1").await;
    // A second store on the same database, while the first is open, as a
    // second replica (or a restarted tetherd) would.
    let second = db.connect().await;
    assert!(
        second
            .get_device(&name)
            .await
            .expect("get edge-1")
            .is_some()
    );
    drop(first);
    drop(second);
    let third = db.connect().await;
    assert!(third.get_device(&name).await.expect("get edge-1").is_some());
    assert_eq!(third.is_postgres(), db.url.starts_with("postgres"));

    if !third.is_postgres() {
        let mode: (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&db.raw().await)
            .await
            .expect("read the journal mode");
        assert_eq!(mode.0, "wal");
    }
}

async fn corrupt_values_are_errors(db: &TestDb) {
    let store = db.connect().await;
    let name = device(&store, "edge-1").await;
    store
        .insert_action(&new_action("c1", &name))
        .await
        .expect("insert c1");
    let raw = db.raw().await;
    raw.execute("UPDATE actions SET state = 'bogus' WHERE correlation_id = 'c1'")
        .await
        .expect("spoil the state");
    match store.get_action("c1").await {
        Err(StoreError::Corrupt(what)) => {
            assert!(
                what.contains("state of action c1") && what.contains("bogus"),
                "{what}"
            )
        }
        other => panic!("expected corrupt, got {other:?}"),
    }

    raw.execute("UPDATE devices SET labels = '{not json' WHERE name = 'edge-1'")
        .await
        .expect("spoil the labels");
    match store.get_device(&name).await {
        Err(StoreError::Corrupt(what)) => {
            assert!(what.contains("labels of device edge-1"), "{what}")
        }
        other => panic!("expected corrupt, got {other:?}"),
    }

    raw.execute("UPDATE devices SET labels = '{}' WHERE name = 'edge-1'")
        .await
        .expect("repair the labels");
    raw.execute(
        "INSERT INTO devices (name, labels, presence, status_seq, created_at) \
         VALUES ('Not Valid', '{}', 'offline', 0, 0)",
    )
    .await
    .expect("insert a bad name");
    match store.list_devices().await {
        Err(StoreError::Corrupt(what)) => assert!(what.contains("Not Valid"), "{what}"),
        other => panic!("expected corrupt, got {other:?}"),
    }
}

/// Through sqlx `Any`, each connection to `sqlite::memory:` would be its own
/// empty database; the store keeps one, so what one call writes the next sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_sqlite_is_one_database() {
    let store = Store::connect("sqlite::memory:")
        .await
        .expect("connect in-memory SQLite");
    let name = device(&store, "edge-1").await;
    let reads = (0..8).map(|_| {
        let store = store.clone();
        let name = name.clone();
        tokio::spawn(async move { store.get_device(&name).await })
    });
    for read in join_all(reads).await {
        let found = read.expect("task finished").expect("get edge-1");
        assert!(found.is_some());
    }
}

// Replicas (issue 12) -------------------------------------------------------------

fn replica(id: &str, renewed_at: i64, lease_expires_at: i64) -> ReplicaRecord {
    ReplicaRecord {
        id: id.to_owned(),
        api_url: format!("https://{id}:8443"),
        mqtt_url: format!("mqtts://{id}:8883"),
        started_at: at(0),
        renewed_at: at(renewed_at),
        lease_expires_at: at(lease_expires_at),
    }
}

fn session(presence: Presence, replica: Option<&str>) -> DeviceSession {
    DeviceSession {
        presence,
        replica: replica.map(str::to_owned),
    }
}

fn offline_event(device: &DeviceId, received_at: DateTime<Utc>) -> EventRecord {
    EventRecord {
        id: uuid::Uuid::now_v7().to_string(),
        device: device.clone(),
        correlation_id: None,
        event: "device-offline".into(),
        status_code: 200,
        status_message: "taken over".into(),
        response: serde_json::Value::Null,
        received_at,
    }
}

/// Connects `device` to `replica` as its first session.
async fn connect(store: &Store, device: &DeviceId, replica: &str) {
    assert!(
        store
            .move_device_session(
                device,
                &session(Presence::Offline, None),
                &session(Presence::Online, Some(replica)),
                at(100),
                &[],
            )
            .await
            .expect("move the session"),
        "{device} connects to {replica}"
    );
}

async fn a_lapsed_replica_is_taken_over_once_and_only_its_sessions_end(store: Store) {
    store
        .register_replica(&replica("a", 500, 1_000))
        .await
        .expect("register a");
    store
        .register_replica(&replica("b", 500, 60_000))
        .await
        .expect("register b");
    let (d1, d2, d3) = (
        device(&store, "d1").await,
        device(&store, "d2").await,
        device(&store, "d3").await,
    );
    connect(&store, &d1, "a").await;
    connect(&store, &d2, "a").await;
    connect(&store, &d3, "b").await;
    assert_eq!(
        store.lapsed_replicas(at(2_000)).await.expect("lapsed"),
        ["a"]
    );

    let takeovers = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .end_replica_sessions("a", Some(at(2_000)), at(2_000), offline_event)
                .await
        })
    });
    let winners: Vec<_> = join_all(takeovers)
        .await
        .into_iter()
        .filter_map(|joined| joined.expect("task finished").expect("take over"))
        .collect();
    assert_eq!(winners.len(), 1, "one replica takes a lapsed one over");
    assert_eq!(winners[0].last_seen, at(500), "as of its last renewal");
    let mut ended = winners[0].devices.clone();
    ended.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(ended, [d1.clone(), d2.clone()]);

    for name in [&d1, &d2] {
        let events = store.list_events(name, 10).await.expect("events");
        assert_eq!(events.len(), 1, "one offline event for {name}");
        let record = store.get_device(name).await.expect("read").expect("device");
        assert_eq!(record.presence, Presence::Offline);
        assert_eq!(record.last_seen, Some(at(500)));
        assert_eq!(
            store.device_session(name).await.expect("session"),
            Some(session(Presence::Offline, None))
        );
    }
    assert_eq!(
        store.device_session(&d3).await.expect("session"),
        Some(session(Presence::Online, Some("b"))),
        "another replica's device stays online"
    );
    assert!(store.list_events(&d3, 10).await.expect("events").is_empty());
    assert!(
        !store
            .renew_replica_lease("a", at(3_000), at(5_000))
            .await
            .expect("renew"),
        "the taken-over replica finds its lease gone"
    );
}

async fn a_device_session_moves_only_from_what_was_read_to_a_registered_replica(store: Store) {
    let d1 = device(&store, "d1").await;
    let online_on_b = session(Presence::Online, Some("b"));
    assert!(
        !store
            .move_device_session(
                &d1,
                &session(Presence::Offline, None),
                &online_on_b,
                at(1),
                &[]
            )
            .await
            .expect("move"),
        "a replica without a lease row holds no session"
    );
    store
        .register_replica(&replica("b", 0, 60_000))
        .await
        .expect("register b");
    store
        .register_replica(&replica("c", 0, 60_000))
        .await
        .expect("register c");
    let moves = ["b", "c"].map(|to| {
        let store = store.clone();
        let d1 = d1.clone();
        tokio::spawn(async move {
            let event = offline_event(&d1, at(1));
            store
                .move_device_session(
                    &d1,
                    &session(Presence::Offline, None),
                    &session(Presence::Online, Some(to)),
                    at(1),
                    &[event],
                )
                .await
        })
    });
    let moved: Vec<bool> = join_all(moves)
        .await
        .into_iter()
        .map(|joined| joined.expect("task finished").expect("move"))
        .collect();
    assert_eq!(
        moved.iter().filter(|m| **m).count(),
        1,
        "from one state, one move wins"
    );
    assert_eq!(
        store.list_events(&d1, 10).await.expect("events").len(),
        1,
        "only the winner's events are recorded"
    );
    assert!(
        !store
            .move_device_session(
                &d1,
                &session(Presence::Offline, None),
                &online_on_b,
                at(2),
                &[]
            )
            .await
            .expect("move"),
        "a move from a state the row no longer has changes nothing"
    );
}

async fn leases_are_renewed_until_taken_over_and_selected_by_time(store: Store) {
    store
        .register_replica(&replica("a", 0, 1_000))
        .await
        .expect("register");
    assert!(
        store
            .renew_replica_lease("a", at(900), at(3_000))
            .await
            .expect("renew")
    );
    assert!(
        store
            .lapsed_replicas(at(2_000))
            .await
            .expect("lapsed")
            .is_empty()
    );
    let live = store.live_replicas(at(2_000)).await.expect("live");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].mqtt_url, "mqtts://a:8883");
    assert_eq!(live[0].renewed_at, at(900));
    assert!(
        store
            .live_replicas(at(3_001))
            .await
            .expect("live")
            .is_empty()
    );
    assert!(
        store
            .end_replica_sessions("a", Some(at(2_000)), at(2_000), offline_event)
            .await
            .expect("take over")
            .is_none(),
        "a replica that renewed in time is not taken over"
    );
    store
        .register_replica(&replica("a", 4_000, 9_000))
        .await
        .expect("register again");
    assert_eq!(
        store.live_replicas(at(5_000)).await.expect("live")[0].renewed_at,
        at(4_000)
    );
}

async fn cluster_settings_keep_the_first_value(store: Store) {
    assert_eq!(
        store
            .claim_cluster_setting("ca_sha256", "first")
            .await
            .expect("claim"),
        "first"
    );
    assert_eq!(
        store
            .claim_cluster_setting("ca_sha256", "second")
            .await
            .expect("claim"),
        "first"
    );
}

/// Singleton jobs rely on it: one session holds an advisory lock at a time,
/// and it is free again once that session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_advisory_locks_have_one_holder_until_its_connection_ends() {
    let db = TestDb::postgres();
    let store = db.connect().await;
    // Keys with the high bit set too: pg_locks shows them split in halves.
    let mut held = store
        .try_advisory_lock(-42, "tetherd-singleton-test")
        .await
        .expect("try")
        .expect("free at first");
    assert!(held.is_held().await);
    assert!(
        store
            .try_advisory_lock(-42, "tetherd-singleton-test")
            .await
            .expect("try")
            .is_none(),
        "held by the first connection"
    );
    let mut other = store
        .try_advisory_lock(43, "tetherd-singleton-test")
        .await
        .expect("try")
        .expect("another key is free");
    assert!(other.is_held().await);
    // The holder's connection dies (as when its replica is killed).
    db.raw()
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND objid = 43",
        )
        .await
        .expect("terminate the holder's backend");
    assert!(!other.is_held().await, "a dead connection holds nothing");
    assert!(
        store
            .try_advisory_lock(43, "tetherd-singleton-test")
            .await
            .expect("try")
            .is_some(),
        "the lock is free again once its holder's connection died"
    );
    other.release().await;
    held.release().await;
    assert!(
        store
            .try_advisory_lock(-42, "tetherd-singleton-test")
            .await
            .expect("try")
            .is_some(),
        "free once the holder's connection closed"
    );
}

/// The takeover of a lapsed replica ends its lock connections by name, and
/// no other session: not another replica's locks, not the pool's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ending_connections_by_name_ends_only_those() {
    let db = TestDb::postgres();
    let store = db.connect().await;
    let mut lapsed = store
        .try_advisory_lock(44, "tetherd-singleton-lapsed")
        .await
        .expect("try")
        .expect("free");
    let mut live = store
        .try_advisory_lock(45, "tetherd-singleton-live")
        .await
        .expect("try")
        .expect("free");
    assert_eq!(
        store
            .end_connections_named("tetherd-singleton-lapsed")
            .await
            .expect("end"),
        1
    );
    assert!(!lapsed.is_held().await, "its lock is released");
    assert!(live.is_held().await, "another replica's lock stays");
    store.ping().await.expect("the pool's sessions live on");
    assert!(
        store
            .try_advisory_lock(44, "tetherd-singleton-other")
            .await
            .expect("try")
            .is_some(),
        "another replica can take the released lock"
    );
    live.release().await;
}

async fn spec_writes_are_compare_and_set_and_leave_with_their_device(store: Store) {
    let device = id("edge-1");
    store
        .create_device(&device, &Labels::new(), at(0))
        .await
        .expect("create");
    let spec = json!({"budgets": {"logs": 10}})
        .as_object()
        .cloned()
        .expect("an object");
    // Of concurrent writers that read version 0, exactly one wins.
    let writes = join_all((0..8).map(|_| store.write_spec(&device, &spec, 0, 1, at(1)))).await;
    let won = writes
        .into_iter()
        .map(|written| written.expect("write"))
        .filter(|won| *won)
        .count();
    assert_eq!(won, 1);
    let reported = tether_proto::spec::ReportedStatus {
        spec_version: 1,
        ..Default::default()
    };
    store
        .set_reported(&device, &reported, at(2))
        .await
        .expect("report");
    let record = store.get_spec(&device).await.expect("read");
    assert_eq!((record.version, &record.spec), (1, &spec));
    assert_eq!(record.reported, Some((reported, at(2))));
    assert!(
        store
            .write_spec(&device, &spec, 1, 2, at(3))
            .await
            .expect("write")
    );
    assert_eq!(
        store.devices_behind_their_spec().await.expect("list"),
        vec![device.clone()]
    );
    assert!(store.delete_device(&device).await.expect("delete"));
    assert_eq!(
        store.get_spec(&device).await.expect("read"),
        Default::default(),
        "the spec went with its device"
    );
}

/// Issue 13's bandwidth counts: the cursors' replay bytes and dropped
/// totals (over budget apart from a full spool's, each only growing), the
/// agent's newest report, and action bytes riding on `lastSeen`.
async fn usage_adds_both_ends_counts_per_device_and_pages_through_the_fleet(store: Store) {
    use tether_proto::telemetry::{Dropped, Feature, FeatureBytes, Stream};
    for name in ["edge-1", "edge-2", "edge-3"] {
        store
            .create_device(&id(name), &Labels::new(), at(0))
            .await
            .expect("create");
    }
    let device = id("edge-1");
    let report = |logs: u64| {
        vec![FeatureBytes {
            feature: Feature::Logs,
            sent_bytes: logs,
            received_bytes: 0,
        }]
    };
    let commit = |spool: &'static str, first: u64, update: CursorUpdate, now| {
        let store = store.clone();
        let device = device.clone();
        async move {
            let spool = SpoolRef {
                device: &device,
                stream: Stream::Logs,
                spool_id: spool,
            };
            let mut tx = store.begin_telemetry().await.expect("begin");
            let taken = tx.take_cursor(spool, first, now).await.expect("cursor");
            tx.move_cursor(spool, taken.next_seq, &update, now)
                .await
                .expect("move");
            tx.commit().await.expect("commit");
        }
    };
    let update = |next_seq, wire_bytes, replay, over_budget, agent_usage| CursorUpdate {
        next_seq,
        gap: 0,
        stored: 10,
        duplicates: 0,
        wire_bytes,
        replay,
        dropped: Dropped {
            total: 1,
            by_priority: [0, 0, 0, 0, 0, 0, 0, 1],
            over_budget,
            over_budget_by_priority: [0, 0, 0, 0, 0, 0, 0, over_budget],
        },
        agent_usage,
    };
    commit("a", 0, update(10, 1_000, true, 5, report(900)), at(1_000)).await;
    // Live, no report, an older over-budget total (sent late): kept.
    commit("a", 10, update(20, 300, false, 2, Vec::new()), at(2_000)).await;
    // Another spool of the device: summed; its newer report wins.
    commit("b", 0, update(10, 50, true, 0, report(1_300)), at(3_000)).await;
    store
        .touch_last_seen(&[SeenDevice {
            device: device.clone(),
            at: at(4_000),
            actions: ActionBytes {
                sent: 200,
                received: 30,
            },
        }])
        .await
        .expect("touch");
    store
        .touch_last_seen(&[SeenDevice {
            device: device.clone(),
            at: at(5_000),
            actions: ActionBytes {
                sent: 100,
                received: 0,
            },
        }])
        .await
        .expect("touch");

    let usage = store.device_usage(&device).await.expect("usage");
    let logs = usage
        .streams
        .iter()
        .find(|s| s.stream == Stream::Logs)
        .expect("logs");
    assert_eq!(
        (logs.spools, logs.wire_bytes, logs.replay_bytes),
        (2, 1_350, 1_050)
    );
    assert_eq!((logs.dropped.total, logs.dropped.over_budget), (2, 5));
    assert_eq!(logs.dropped.over_budget_by_priority[7], 5);
    assert_eq!(
        usage.actions,
        ActionBytes {
            sent: 300,
            received: 30
        }
    );
    assert_eq!(usage.agent, Some((at(3_000), report(1_300))));

    let quiet = store.device_usage(&id("edge-2")).await.expect("usage");
    assert_eq!((quiet.actions, quiet.agent), (ActionBytes::default(), None));
    assert!(matches!(
        store.device_usage(&id("gone")).await,
        Err(StoreError::NotFound { .. })
    ));
    let first = store.fleet_usage(None, 2).await.expect("page");
    assert_eq!(
        first.iter().map(|r| r.device.as_str()).collect::<Vec<_>>(),
        ["edge-1", "edge-2"]
    );
    assert_eq!(first[0], usage);
    let rest = store.fleet_usage(Some("edge-2"), 2).await.expect("page");
    assert_eq!(
        rest.iter().map(|r| r.device.as_str()).collect::<Vec<_>>(),
        ["edge-3"]
    );
}

/// A hostile device that names a new spool in every batch: its cursor rows
/// stay bounded (every read of its usage sums them), and its usage still
/// counts every spool, batch and drop, its gaps summed without overflow.
async fn a_device_naming_a_new_spool_per_batch_keeps_a_bounded_number_of_cursors(db: &TestDb) {
    use std::sync::Arc;
    use tether_proto::telemetry::{Dropped, LogRecord, Records, Stream, TelemetryBatch};
    use tether_server::telemetry::cursor::MAX_SPOOLS;

    let store = db.connect().await;
    let name = device(&store, "edge-1").await;
    let telemetry = telemetry(&store, 1);
    let batch = |spool: String, first_seq: u64| TelemetryBatch {
        spool_id: spool,
        first_seq,
        records: Records::Logs(vec![LogRecord {
            at: Utc::now(),
            priority: 6,
            unit: "app".into(),
            message: "x".into(),
            fields: Default::default(),
        }]),
        dropped: Dropped {
            total: 2,
            by_priority: [0, 0, 0, 0, 0, 0, 1, 1],
            ..Dropped::default()
        },
        replay: false,
        usage: Vec::new(),
    };
    let spools = 3 * u64::from(MAX_SPOOLS);
    for i in 0..spools {
        telemetry
            .ingest(&name, Arc::new(batch(format!("spool-{i}"), 0)), 10)
            .await
            .expect("stored");
    }
    // Three spools with a gap of nearly i64::MAX each.
    let far = i64::MAX as u64 - 10;
    for i in spools - 3..spools {
        telemetry
            .ingest(&name, Arc::new(batch(format!("spool-{i}"), far)), 10)
            .await
            .expect("stored");
    }
    let raw = db.raw().await;
    let rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM telemetry_cursors WHERE device = 'edge-1'")
            .fetch_one(&raw)
            .await
            .expect("count");
    assert!(
        rows <= i64::from(MAX_SPOOLS) + 1,
        "{rows} cursor rows for one device and stream"
    );
    let usage = store.device_usage(&name).await.expect("usage");
    let logs = usage
        .streams
        .iter()
        .find(|s| s.stream == Stream::Logs)
        .expect("logs");
    assert_eq!(
        (
            logs.spools,
            logs.batches,
            logs.stored_records,
            logs.wire_bytes
        ),
        (spools, spools + 3, spools + 3, 10 * (spools + 3))
    );
    assert_eq!(logs.dropped.total, 2 * spools);
    assert_eq!(logs.dropped.by_priority[7], spools);
    assert!(
        logs.gap >= i64::MAX as u64,
        "saturated, not wrapped: {}",
        logs.gap
    );

    // The newest spools keep their cursors: a batch sent again is no new record.
    let again = telemetry
        .ingest(
            &name,
            Arc::new(batch(format!("spool-{}", spools - 1), far)),
            10,
        )
        .await
        .expect("acknowledged");
    assert_eq!(again, tether_server::telemetry::Stored::Duplicate);
}

async fn a_devices_watch_is_stored_read_with_its_last_seen_and_leaves_with_it(store: Store) {
    let quiet = device(&store, "quiet").await;
    let talking = device(&store, "talking").await;
    store
        .touch_last_seen(&[SeenDevice {
            device: talking.clone(),
            at: at(5_000),
            actions: Default::default(),
        }])
        .await
        .expect("seen");
    let watch = Watch {
        rebirths_sent: 2,
        last_request_at: Some(at(9_000)),
        alerting: true,
    };
    store.save_watch(&quiet, &watch).await.expect("saved");
    let watched = store.watched_devices(None, 10).await.expect("read");
    assert_eq!(
        watched,
        [
            WatchedDevice {
                device: quiet.clone(),
                last_seen: None,
                watch,
            },
            WatchedDevice {
                device: talking.clone(),
                last_seen: Some(at(5_000)),
                watch: Watch::default(),
            },
        ]
    );
    // Paged by name.
    let rest = store.watched_devices(Some(&quiet), 10).await.expect("read");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].device, talking);
    // Back to the default is no row; a deleted device takes its row along
    // and a watch saved for it afterwards writes nothing.
    store
        .save_watch(&quiet, &Watch::default())
        .await
        .expect("saved");
    store.save_watch(&talking, &watch).await.expect("saved");
    store.delete_device(&talking).await.expect("deleted");
    store
        .save_watch(&talking, &watch)
        .await
        .expect("nothing to write");
    let watched = store.watched_devices(None, 10).await.expect("read");
    assert_eq!(watched.len(), 1);
    assert_eq!(watched[0].watch, Watch::default());
}

async fn an_alert_is_raised_once_per_condition_acknowledged_and_resolved(store: Store) {
    let edge = device(&store, "edge-1").await;
    let silent = NewAlert {
        rule: RULE_DEVICE_SILENT.into(),
        device: edge.clone(),
        severity: Severity::Critical,
        summary: "no data for 3 minutes".into(),
        labels: [("site".to_owned(), "north".to_owned())].into(),
    };
    // Two leaders overlapping raise it at once: one alert.
    let raised = join_all((0..4).map(|_| store.raise_alert(&silent, at(1_000)))).await;
    let raised: Vec<_> = raised
        .into_iter()
        .filter_map(|r| r.expect("raise"))
        .collect();
    assert_eq!(raised.len(), 1, "{raised:?}");
    let first = &raised[0];
    assert_eq!(first.state, AlertState::Firing);
    assert_eq!(first.labels["site"], "north");
    // Another condition of the same device is another alert.
    let drift = NewAlert {
        rule: RULE_CONFIG_DRIFT.into(),
        ..silent.clone()
    };
    let other = store
        .raise_alert(&drift, at(2_000))
        .await
        .expect("raise")
        .expect("a second condition");
    assert_ne!(other.id, first.id);

    let acknowledged = store
        .acknowledge_alert(first.id, "ann", at(3_000))
        .await
        .expect("ack");
    assert_eq!(acknowledged.state, AlertState::Acknowledged);
    assert_eq!(acknowledged.acknowledged_by.as_deref(), Some("ann"));
    // Twice is the same answer, not a new acknowledgement.
    let again = store
        .acknowledge_alert(first.id, "bob", at(4_000))
        .await
        .expect("ack");
    assert_eq!(again.acknowledged_by.as_deref(), Some("ann"));

    let resolved = store
        .resolve_alert(RULE_DEVICE_SILENT, &edge, at(5_000))
        .await
        .expect("resolve")
        .expect("it was active");
    assert_eq!(resolved.state, AlertState::Resolved);
    assert_eq!(resolved.resolved_at, Some(at(5_000)));
    assert!(
        store
            .resolve_alert(RULE_DEVICE_SILENT, &edge, at(6_000))
            .await
            .expect("resolve")
            .is_none(),
        "resolved once"
    );
    assert!(matches!(
        store.acknowledge_alert(first.id, "ann", at(7_000)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.acknowledge_alert(999, "ann", at(7_000)).await,
        Err(StoreError::NotFound { .. })
    ));
    // The condition again: a new alert, the old one kept.
    let later = store
        .raise_alert(&silent, at(8_000))
        .await
        .expect("raise")
        .expect("a new alert");
    assert!(later.id > other.id);

    let listed = |states, device: Option<&DeviceId>, rule: Option<&str>| AlertFilter {
        states,
        device: device.cloned(),
        rule: rule.map(str::to_owned),
    };
    let ids = |alerts: Vec<tether_proto::alerts::Alert>| -> Vec<u64> {
        alerts.iter().map(|alert| alert.id).collect()
    };
    let firing = store
        .list_alerts(
            &listed(AlertStates::Only(AlertState::Firing), None, None),
            None,
            10,
        )
        .await
        .expect("list");
    assert_eq!(ids(firing), [later.id, other.id], "newest first");
    let page = store
        .list_alerts(&listed(AlertStates::All, None, None), Some(later.id), 1)
        .await
        .expect("list");
    assert_eq!(ids(page), [other.id]);
    let active = store
        .list_alerts(&listed(AlertStates::Active, Some(&edge), None), None, 10)
        .await
        .expect("list");
    assert_eq!(ids(active), [later.id, other.id], "not yet resolved");
    let of_rule = store
        .list_alerts(
            &listed(AlertStates::All, None, Some(RULE_DEVICE_SILENT)),
            None,
            10,
        )
        .await
        .expect("list");
    assert_eq!(
        ids(of_rule),
        [later.id, first.id],
        "the rule's, resolved too"
    );
    let elsewhere = DeviceId::new("elsewhere").expect("name");
    assert!(
        store
            .list_alerts(&listed(AlertStates::All, Some(&elsewhere), None), None, 10)
            .await
            .expect("list")
            .is_empty()
    );
}
