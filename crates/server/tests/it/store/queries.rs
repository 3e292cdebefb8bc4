//! Queries that scale (issue 12): label selectors answered in SQL over
//! `device_labels`, keyset pages, grouped counts. Each checked on 20,000
//! devices against the in-memory rules of `LabelSelector::matches`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sqlx::{Executor, Row};
use tether_proto::Presence;
use tether_proto::api::Labels;
use tether_proto::labels::LabelSelector;
use tether_server::store::{DeviceCursor, DeviceListing, DeviceOrder, DeviceRecord, Store};

use super::{TestDb, at, id, labels};

on_both_databases! {
    store: [
        label_changes_and_deletions_are_seen_by_selectors,
    ],
    db: [
        selectors_in_sql_pick_what_the_in_memory_rules_pick,
        a_paged_walk_returns_each_device_once_while_devices_are_added,
        labels_stored_before_the_index_are_indexed_at_start,
        searched_and_sorted_pages_walk_an_index_and_agree_with_memory,
    ],
}

const FLEET: usize = 20_000;
const SITES: [&str; 6] = ["berlin", "paris", "tokyo", "lima", "oslo", "cairo"];

/// Device `i`'s labels: several keys, each missing on some devices, the
/// values mixed so that keys do not follow one another.
fn fleet_labels(i: usize) -> Labels {
    let mix = (i as u64).wrapping_mul(2_654_435_761) >> 7;
    let mut labels = Labels::new();
    if !mix.is_multiple_of(7) {
        labels.insert("site".into(), SITES[(mix % 7 - 1) as usize].into());
    }
    labels.insert("env".into(), ["prod", "staging", "dev"][i % 3].into());
    match (mix >> 5) % 5 {
        0 => labels.insert("tier".into(), "edge".into()),
        1 => labels.insert("tier".into(), "core".into()),
        _ => None,
    };
    if (mix >> 9).is_multiple_of(11) {
        labels.insert("gpu".into(), String::new());
    }
    labels.insert("rack".into(), ((mix >> 13) % 13).to_string());
    labels
}

fn fleet_name(i: usize) -> String {
    format!("dev-{i:05}")
}

/// 20,000 devices, every tenth online.
async fn fleet(db: &TestDb) -> (Store, Vec<DeviceRecord>) {
    let store = db.connect().await;
    let started = Instant::now();
    let devices: Vec<_> = (0..FLEET)
        .map(|i| (id(&fleet_name(i)), fleet_labels(i)))
        .collect();
    store
        .create_devices(&devices, at(0))
        .await
        .expect("create the fleet");
    // In one statement: devices come online one by one in real life.
    db.raw()
        .await
        .execute("UPDATE devices SET presence = 'online' WHERE name LIKE '%0'")
        .await
        .expect("set every tenth device online");
    let all = store
        .list_devices_page(&LabelSelector::default(), None, FLEET as u32 + 1)
        .await
        .expect("list the fleet");
    let mut names: Vec<String> = (0..FLEET).map(fleet_name).collect();
    names.sort();
    assert!(
        all.iter().map(|d| d.name.to_string()).eq(names),
        "the empty selector lists every device by name"
    );
    eprintln!("created {FLEET} devices in {:?}", started.elapsed());
    (store, all)
}

fn select(selector: &str) -> LabelSelector {
    LabelSelector::parse(selector).expect("a valid selector")
}

/// The empty selector is `fleet`'s own listing.
const SELECTORS: &[&str] = &[
    "site=berlin",
    "site==paris",
    "site!=berlin",
    "site in (berlin,tokyo)",
    "site notin (berlin,tokyo)",
    "site",
    "!site",
    "gpu",
    "!gpu",
    "gpu=",
    "env=prod,tier=edge",
    "env in (prod,dev),!gpu,tier!=core",
    "site notin (lima),env!=dev,rack in (1,2,3)",
    "tier in (edge),tier notin (edge)",
    "site=nowhere",
    "nokey!=x,nokey notin (y)",
];

async fn selectors_in_sql_pick_what_the_in_memory_rules_pick(db: &TestDb) {
    let (store, fleet) = fleet(db).await;
    for text in SELECTORS {
        let selector = select(text);
        let started = Instant::now();
        let found: Vec<String> = store
            .list_devices_page(&selector, None, FLEET as u32 + 1)
            .await
            .expect("list by selector")
            .into_iter()
            .map(|device| device.name.to_string())
            .collect();
        let elapsed = started.elapsed();
        let expected: Vec<String> = fleet
            .iter()
            .filter(|device| selector.matches(&device.labels))
            .map(|device| device.name.to_string())
            .collect();
        assert_eq!(found.len(), expected.len(), "{text:?}");
        assert!(found == expected, "{text:?}: SQL and memory disagree");
        eprintln!("{text:?}: {} devices in {elapsed:?}", found.len());

        // A key no device has puts every device in the `None` group.
        let by_keys: &[&str] = if text.contains("nokey") {
            &["site", "nokey"]
        } else {
            &["site"]
        };
        for by in by_keys {
            let counts = store
                .count_devices(&selector, Some(*by))
                .await
                .expect("count devices");
            let mut from_sql = BTreeMap::new();
            for count in counts {
                from_sql.insert((count.label_value, count.presence.as_str()), count.devices);
            }
            let mut in_memory = BTreeMap::new();
            for device in fleet.iter().filter(|d| selector.matches(&d.labels)) {
                *in_memory
                    .entry((device.labels.get(*by).cloned(), device.presence.as_str()))
                    .or_insert(0u64) += 1;
            }
            assert_eq!(from_sql, in_memory, "{text:?} by {by}");
        }
    }
    let totals = store
        .count_devices(&LabelSelector::default(), None)
        .await
        .expect("count all");
    let online: u64 = totals
        .iter()
        .filter(|c| c.presence == Presence::Online)
        .map(|c| c.devices)
        .sum();
    assert_eq!(online, (FLEET / 10) as u64);
    assert!(totals.iter().all(|c| c.label_value.is_none()));
}

async fn a_paged_walk_returns_each_device_once_while_devices_are_added(db: &TestDb) {
    let (store, fleet) = fleet(db).await;
    let (progress, mut added) = tokio::sync::watch::channel(0usize);
    let adder = {
        let store = store.clone();
        tokio::spawn(async move {
            // New names fall between and after the existing ones, so some
            // land ahead of the walk and some behind it.
            for n in 0.. {
                let name = format!("{}-new{n}", fleet_name((n * 7919) % (FLEET + 500)));
                store
                    .create_device(&id(&name), &fleet_labels(n), at(2))
                    .await
                    .expect("add a device during the walk");
                if progress.send(n + 1).is_err() {
                    return n + 1;
                }
            }
            unreachable!("the walk ends")
        })
    };
    let selector = LabelSelector::default();
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    let started = Instant::now();
    loop {
        // Each page is read after at least one more device was added.
        let before = *added.borrow();
        tokio::time::timeout(Duration::from_secs(10), added.wait_for(|n| *n > before))
            .await
            .expect("the adder keeps adding")
            .expect("the adder is running");
        let page = store
            .list_devices_page(&selector, after.as_deref(), 500)
            .await
            .expect("read a page");
        pages += 1;
        seen.extend(page.iter().map(|device| device.name.to_string()));
        match page.last() {
            Some(last) if page.len() == 500 => after = Some(last.name.to_string()),
            _ => break,
        }
    }
    drop(added);
    let added = adder.await.expect("the adder ends");
    eprintln!(
        "walked {} devices in {pages} pages in {:?}, {added} added meanwhile",
        seen.len(),
        started.elapsed()
    );
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a device was listed twice");
    let missing: Vec<String> = fleet
        .iter()
        .map(|device| device.name.to_string())
        .filter(|name| !unique.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "{} devices missed: {missing:?}",
        missing.len()
    );
    assert!(
        seen.len() > FLEET,
        "some devices added during the walk are listed too"
    );
}

async fn label_changes_and_deletions_are_seen_by_selectors(store: Store) {
    let names = |devices: Vec<DeviceRecord>| -> Vec<String> {
        devices.into_iter().map(|d| d.name.to_string()).collect()
    };
    let edge = id("edge-1");
    store
        .create_device(
            &edge,
            &labels(&[("site", "berlin"), ("tier", "edge")]),
            at(0),
        )
        .await
        .expect("create edge-1");
    let other = id("edge-2");
    store
        .create_device(&other, &labels(&[("site", "paris")]), at(0))
        .await
        .expect("create edge-2");
    let berlin = select("site=berlin");
    assert_eq!(
        names(
            store
                .list_devices_page(&berlin, None, 10)
                .await
                .expect("list")
        ),
        ["edge-1"]
    );
    store
        .set_labels(&edge, &labels(&[("site", "paris")]))
        .await
        .expect("relabel")
        .expect("edge-1 exists");
    assert!(
        store
            .list_devices_page(&berlin, None, 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .list_devices_page(&select("tier"), None, 10)
            .await
            .expect("list")
            .is_empty(),
        "a removed label is gone from the index"
    );
    assert_eq!(
        names(
            store
                .list_devices_page(&select("site=paris"), None, 10)
                .await
                .expect("list")
        ),
        ["edge-1", "edge-2"]
    );
    assert!(store.delete_device(&edge).await.expect("delete edge-1"));
    assert_eq!(
        names(
            store
                .list_devices_page(&select("site=paris"), None, 10)
                .await
                .expect("list")
        ),
        ["edge-2"]
    );
    // The same name created again starts without the old labels.
    store
        .create_device(&edge, &Labels::new(), at(3))
        .await
        .expect("create edge-1 again");
    assert_eq!(
        names(
            store
                .list_devices_page(&select("!site"), None, 10)
                .await
                .expect("list")
        ),
        ["edge-1"]
    );
    // A batch with a taken name adds none of its devices.
    let batch = vec![
        (id("edge-3"), labels(&[("site", "lima")])),
        (edge.clone(), Labels::new()),
    ];
    assert!(store.create_devices(&batch, at(4)).await.is_err());
    assert!(
        store
            .list_devices_page(&select("site=lima"), None, 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(store.get_device(&id("edge-3")).await.expect("get"), None);
}

async fn labels_stored_before_the_index_are_indexed_at_start(db: &TestDb) {
    let store = db.connect().await;
    store
        .create_device(&id("old-1"), &labels(&[("site", "berlin")]), at(0))
        .await
        .expect("create old-1");
    store
        .create_device(&id("old-2"), &Labels::new(), at(0))
        .await
        .expect("create old-2");
    // As a device stored by a tetherd before migration 0010 looks.
    db.raw()
        .await
        .execute("DELETE FROM device_labels")
        .await
        .expect("empty the label index");
    let berlin = select("site=berlin");
    assert!(
        store
            .list_devices_page(&berlin, None, 10)
            .await
            .expect("list")
            .is_empty()
    );
    drop(store);
    let restarted = db.connect().await;
    let found: Vec<String> = restarted
        .list_devices_page(&berlin, None, 10)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.name.to_string())
        .collect();
    assert_eq!(found, ["old-1"]);
    // A second start finds nothing left to do and changes nothing.
    let again = db.connect().await;
    assert_eq!(
        again
            .list_devices_page(&select("site"), None, 10)
            .await
            .expect("list")
            .len(),
        1
    );
}

/// The device list searched by name and sorted by name or time last seen,
/// both ways, walked in keyset pages: each walk lists what filtering and
/// sorting the whole fleet in memory gives, each device once. Times repeat
/// (many devices seen at once, some never), so pages break inside ties.
/// Each order is served by an index, not a sort of every matching row.
async fn searched_and_sorted_pages_walk_an_index_and_agree_with_memory(db: &TestDb) {
    const DEVICES: usize = 2_000;
    const PAGE: u32 = 97;
    let store = db.connect().await;
    let devices: Vec<_> = (0..DEVICES)
        .map(|i| (id(&fleet_name(i)), fleet_labels(i)))
        .collect();
    store
        .create_devices(&devices, at(0))
        .await
        .expect("create the fleet");
    let raw = db.raw().await;
    // Seen at one of 40 instants, every fifth never; some display names.
    raw.execute(
        "UPDATE devices SET last_seen = \
         (CAST(SUBSTR(name, 5) AS BIGINT) * 7919 % 40) * 1000 + 1700000000000 \
         WHERE CAST(SUBSTR(name, 5) AS BIGINT) % 5 <> 0",
    )
    .await
    .expect("set times last seen");
    raw.execute("UPDATE devices SET display_name = 'Gateway at Berlin 0' || SUBSTR(name, 9) WHERE name LIKE '%3'")
        .await
        .expect("set display names");
    let all = store
        .list_devices_page(&LabelSelector::default(), None, DEVICES as u32 + 1)
        .await
        .expect("list the fleet");
    assert_eq!(all.len(), DEVICES);
    let seen = |device: &DeviceRecord| DeviceCursor::after(device).last_seen;

    let orders = [
        DeviceOrder::Name,
        DeviceOrder::NameDescending,
        DeviceOrder::LastSeen,
        DeviceOrder::LastSeenDescending,
    ];
    // "berlin 0" is in display names only; "_" and "%" are text, not wildcards.
    for search in [
        None,
        Some("DEV-001"),
        Some("berlin 0"),
        Some("7"),
        Some("_"),
        Some("%"),
    ] {
        for order in orders {
            for selector in ["", "env=prod"] {
                let selector = LabelSelector::parse(selector).expect("a valid selector");
                let mut expected: Vec<&DeviceRecord> = all
                    .iter()
                    .filter(|device| selector.matches(&device.labels))
                    .filter(|device| {
                        search.is_none_or(|search| {
                            let search = search.to_lowercase();
                            device.name.as_str().to_lowercase().contains(&search)
                                || device
                                    .display_name
                                    .as_deref()
                                    .is_some_and(|name| name.to_lowercase().contains(&search))
                        })
                    })
                    .collect();
                expected.sort_by(|a, b| match order {
                    DeviceOrder::Name => a.name.as_str().cmp(b.name.as_str()),
                    DeviceOrder::NameDescending => b.name.as_str().cmp(a.name.as_str()),
                    DeviceOrder::LastSeen => {
                        (seen(a), a.name.as_str()).cmp(&(seen(b), b.name.as_str()))
                    }
                    DeviceOrder::LastSeenDescending => {
                        (seen(b), b.name.as_str()).cmp(&(seen(a), a.name.as_str()))
                    }
                });
                let listing = DeviceListing {
                    selector: &selector,
                    search,
                    order,
                };
                let mut walked: Vec<String> = Vec::new();
                let mut after: Option<DeviceCursor> = None;
                loop {
                    let page = store
                        .search_devices(&listing, after.as_ref(), PAGE)
                        .await
                        .expect("read a page");
                    walked.extend(page.iter().map(|device| device.name.to_string()));
                    match page.last() {
                        Some(last) if page.len() == PAGE as usize => {
                            after = Some(DeviceCursor::after(last));
                        }
                        _ => break,
                    }
                }
                let expected: Vec<String> = expected
                    .iter()
                    .map(|device| device.name.to_string())
                    .collect();
                assert!(
                    walked == expected,
                    "{search:?} {order:?} {selector}: walked {} devices, memory picks {}",
                    walked.len(),
                    expected.len()
                );
            }
        }
    }
    let searched: usize = all
        .iter()
        .filter(|device| device.display_name.is_some())
        .count();
    assert!(searched > 100, "display names were set: {searched}");

    // The plans: an index walked in order, no sort of the matching rows.
    let postgres = db.url.starts_with("postgres");
    if postgres {
        raw.execute("ANALYZE devices").await.expect("analyze");
    }
    // The cursor conditions as `search_devices` writes them: each starts
    // a range of the index, so a late page does not scan the ones before.
    const SEEN: &str = "COALESCE(d.last_seen, 0)";
    let after_seen = |compare: &str| {
        format!(
            "{SEEN} {compare}= 1700000020000 AND ({SEEN} {compare} 1700000020000 \
             OR d.name {compare} 'dev-01000')"
        )
    };
    for (order, after, index) in [
        ("d.name", "d.name > 'dev-01000'".to_owned(), None),
        ("d.name DESC", "d.name < 'dev-01000'".to_owned(), None),
        (
            "COALESCE(d.last_seen, 0), d.name",
            after_seen(">"),
            Some("devices_last_seen_name"),
        ),
        (
            "COALESCE(d.last_seen, 0) DESC, d.name DESC",
            after_seen("<"),
            Some("devices_last_seen_name"),
        ),
    ] {
        let query = format!("SELECT d.name FROM devices d WHERE {after} ORDER BY {order} LIMIT 50");
        let plan: Vec<String> = if postgres {
            sqlx::query(&format!("EXPLAIN {query}"))
                .fetch_all(&raw)
                .await
                .expect("explain")
                .iter()
                .map(|row| row.get::<String, _>(0))
                .collect()
        } else {
            sqlx::query(&format!("EXPLAIN QUERY PLAN {query}"))
                .fetch_all(&raw)
                .await
                .expect("explain")
                .iter()
                .map(|row| row.get::<String, _>("detail"))
                .collect()
        };
        let plan = plan.join("\n");
        eprintln!("ORDER BY {order}:\n{plan}");
        let ranged = if postgres {
            plan.contains("Index Cond")
        } else {
            plan.contains("SEARCH")
        };
        assert!(
            ranged,
            "ORDER BY {order} scans the index from its start:\n{plan}"
        );
        let sorts = if postgres {
            plan.lines().any(|line| {
                line.trim_start()
                    .trim_start_matches("->  ")
                    .starts_with("Sort")
            })
        } else {
            plan.contains("TEMP B-TREE")
        };
        assert!(
            !sorts,
            "ORDER BY {order} sorts instead of walking an index:\n{plan}"
        );
        if let Some(index) = index {
            assert!(
                plan.contains(index),
                "ORDER BY {order} does not use {index}:\n{plan}"
            );
        }
    }
}
