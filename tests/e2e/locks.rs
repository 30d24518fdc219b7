//! EBS Snapshot Lock laid by retention, end to end. With `LOCK_MODE=compliance`, every backup
//! the tiers keep (home sets and their copies) is locked until it is expected to go; a
//! principal holding every permission of the fleet account then deletes all it can and tries
//! to unlock what it cannot: every locked set survives, what was not locked goes (into the
//! Recycle Bin rule's keeping at home), and the next night's retention reports each deletion
//! it did not make. With `LOCK_MODE=governance`, an operator allowed to unlock removes locks:
//! retention then deletes only what the tiers no longer keep, and locks again what they do.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use harness::{sets_of, Emulator, Metrics, ServerSpec, World};
use serde_json::json;

const HOME: &str = "us-east-1";
const COPY: &str = "eu-west-1";

/// `snapshot -> (state, ends)` of the locks in force in `region`.
async fn locks(emulator: &Emulator, region: &str) -> BTreeMap<String, (String, DateTime<Utc>)> {
    emulator
        .locks_in_force(region)
        .await
        .expect("DescribeLockedSnapshots")
}

/// Every set of every instance in `region`, newest first: `instance -> [(run, snapshots)]`.
async fn sets(
    emulator: &Emulator,
    region: &str,
    ids: &[String],
) -> BTreeMap<String, Vec<(String, Vec<String>)>> {
    let mut found = BTreeMap::new();
    for id in ids {
        let mut sets: Vec<(String, Vec<String>)> =
            sets_of(emulator, region, id).await.into_iter().collect();
        sets.reverse();
        found.insert(id.clone(), sets);
    }
    found
}

/// The `lock_until` the catalog records on each set (home) or copy record.
async fn recorded_locks(emulator: &Emulator) -> BTreeMap<(String, String), String> {
    let out = emulator
        .dynamodb()
        .scan()
        .table_name(harness::CATALOG_TABLE)
        .filter_expression("attribute_exists(lock_until)")
        .send()
        .await
        .expect("Scan");
    out.items()
        .iter()
        .map(|item| {
            let text = |k: &str| {
                item.get(k)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default()
            };
            ((text("pk"), text("sk")), text("lock_until"))
        })
        .collect()
}

/// Ages every snapshot of the deployment in both regions by a day (and their locks with them):
/// the next night comes.
async fn a_day_passes(emulator: &Emulator, ids: &[String]) {
    for region in [HOME, COPY] {
        let all: Vec<String> = sets(emulator, region, ids)
            .await
            .into_values()
            .flatten()
            .flat_map(|(_, snapshots)| snapshots)
            .collect();
        emulator.age_snapshots(region, &all, 24).await.expect("age");
    }
}

#[tokio::test]
async fn a_compromised_fleet_account_cannot_delete_the_locked_sets() {
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            ServerSpec::windows("files01", 0),
        ])
        .await
        .expect("seed");
    emulator
        .seed_history(&harness::History {
            copy_region: Some(COPY.into()),
            ..harness::History::nightly(HOME, &ids, 5)
        })
        .await
        .expect("history");
    // The template's tag-level Recycle Bin rule (RecycleBinDays=7), in the home region.
    emulator
        .recycle_bin_rule(HOME, 7, &[("ConsistentSnapshot:ManagedBy", "vss-test")])
        .expect("Recycle Bin rule");
    let metrics = Metrics::default();
    let app = metrics.attach(
        world
            .app(&[
                ("COPY_REGIONS", COPY),
                ("RETAIN_DAILY", "4"),
                ("LOCK_MODE", "compliance"),
            ])
            .expect("app"),
    );

    // Night one: six sets, four kept in each region. A set goes when four newer ones exist:
    // at a set a day, tonight's is expected to go in four days, the fourth newest tomorrow.
    // Each is locked for the whole days left to then: 3, 2 and 1; tomorrow's goes unlocked.
    let time = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let night = world.nightly(&app, &time).await.expect("night one");
    assert!(world
        .logs
        .run_report(&night)
        .expect("summary")
        .all_consistent());
    let now = Utc::now();
    let recorded = recorded_locks(emulator).await;
    let mut locked: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut unlocked: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for region in [HOME, COPY] {
        let in_force = locks(emulator, region).await;
        for (instance, sets) in sets(emulator, region, &ids).await {
            assert_eq!(sets.len(), 4, "{instance} in {region}: {sets:?}");
            assert_eq!(sets[0].0, night, "tonight's set is the newest");
            for (rank, (run, snapshots)) in sets.iter().enumerate() {
                let days = 3 - rank as i64;
                for id in snapshots {
                    match in_force.get(id) {
                        Some((state, ends)) => {
                            assert!(
                                days > 0,
                                "{region}/{id}, {run}: locked though it goes tomorrow"
                            );
                            assert_eq!(state, "compliance", "{region}/{id}");
                            let off = (*ends - (now + Duration::days(days))).num_seconds().abs();
                            assert!(
                                off < 120,
                                "{region}/{id} ({run}): locked until {ends}, not {days} days"
                            );
                            locked.entry(region).or_default().insert(id.clone());
                        }
                        None => {
                            assert_eq!(
                                days, 0,
                                "{region}/{id} ({run}) kept for {days} more days, not locked"
                            );
                            unlocked.entry(region).or_default().insert(id.clone());
                        }
                    }
                }
                // The catalog records the lock: on the home set, on each copy.
                let keys: Vec<(String, String)> = if region == HOME {
                    vec![(format!("set#{instance}"), format!("run#{run}"))]
                } else {
                    snapshots
                        .iter()
                        .map(|id| (format!("set#{instance}"), format!("copy#{COPY}#{run}#{id}")))
                        .collect()
                };
                for key in keys {
                    assert_eq!(
                        recorded.contains_key(&key),
                        days > 0,
                        "{key:?}: lock recorded in the catalog"
                    );
                }
            }
        }
    }
    let laid: usize = locked.values().map(BTreeSet::len).sum();
    let retention = metrics.of("retention", Some(&night));
    assert_eq!(retention[0]["SnapshotsLocked"], laid, "{retention:#?}");

    // The attacker: every permission of the fleet account. It deletes every snapshot it sees
    // in both regions, and tries to unlock the ones EC2 refuses to delete.
    let mut refused = BTreeMap::new();
    let mut deleted = 0usize;
    for region in [HOME, COPY] {
        let ec2 = emulator.ec2_in(region);
        let all: Vec<String> = sets(emulator, region, &ids)
            .await
            .into_values()
            .flatten()
            .flat_map(|(_, snapshots)| snapshots)
            .collect();
        for id in all {
            match ec2.delete_snapshot().snapshot_id(&id).send().await {
                Ok(_) => deleted += 1,
                Err(_) => {
                    let unlock = ec2.unlock_snapshot().snapshot_id(&id).send().await;
                    assert!(unlock.is_err(), "{region}/{id}: a compliance lock removed");
                    refused.insert(format!("{region}/{id}"), ());
                }
            }
        }
    }
    for region in [HOME, COPY] {
        let left: BTreeSet<String> = sets(emulator, region, &ids)
            .await
            .into_values()
            .flatten()
            .flat_map(|(_, snapshots)| snapshots)
            .collect();
        assert_eq!(
            left, locked[region],
            "{region}: exactly the locked snapshots are left"
        );
    }
    let unlocked_count: usize = unlocked.values().map(BTreeSet::len).sum();
    assert_eq!(deleted, unlocked_count);
    assert_eq!(refused.len(), laid);

    // Night two: the function reports every deletion it did not make: the home ones in the
    // Recycle Bin until a date, the copies gone (and forgotten by the catalog); tonight's set
    // is locked as the others were.
    a_day_passes(emulator, &ids).await;
    let time = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let second = world.nightly(&app, &time).await.expect("night two");
    assert!(world
        .logs
        .run_report(&second)
        .expect("summary")
        .all_consistent());
    let retention = metrics.of("retention", Some(&second));
    assert_eq!(
        retention[0]["SnapshotsDeletedOutside"], deleted,
        "{retention:#?}"
    );
    let reported: Vec<String> = world
        .logs
        .messages_starting("recorded backup deleted by someone else")
        .into_iter()
        .filter_map(|l| l["what"].as_str().map(str::to_string))
        .collect();
    for id in &unlocked[HOME] {
        assert!(
            reported
                .iter()
                .any(|r| r.starts_with(&format!("{HOME}/{id} "))
                    && r.contains("in the Recycle Bin, recoverable until 20")),
            "{id} reported in the bin: {reported:#?}"
        );
    }
    for id in &unlocked[COPY] {
        assert!(
            reported
                .iter()
                .any(|r| r.starts_with(&format!("{COPY}/{id} "))
                    && r.ends_with("gone (not in the Recycle Bin)")),
            "{id} reported gone: {reported:#?}"
        );
    }
    let summary = world.logs.messages_starting("retention:");
    assert!(
        summary
            .iter()
            .filter_map(|l| l["message"].as_str())
            .any(|m| m.contains(&format!(
                "{deleted} recorded snapshot(s) deleted by someone else"
            ))),
        "{summary:#?}"
    );
    // The copies deleted are no longer in the catalog; the home sets in the bin still are.
    let (set_records, copy_records) = emulator.catalog().all_sets().await.expect("catalog");
    for id in &unlocked[COPY] {
        assert!(
            !copy_records.iter().any(|c| c.snapshot_id == *id),
            "{id} still recorded"
        );
    }
    for id in &unlocked[HOME] {
        assert!(
            set_records
                .iter()
                .any(|s| s.snapshots.iter().any(|r| r.snapshot_id == *id)),
            "{id}, in the bin, is still recorded"
        );
    }
    let in_force = locks(emulator, HOME).await;
    let tonight = sets_of(emulator, HOME, &ids[0]).await;
    assert!(
        tonight[&second].iter().all(|id| in_force.contains_key(id)),
        "night two's set is locked"
    );
}

#[tokio::test]
async fn a_governance_lock_removed_by_an_operator_lets_retention_delete_only_what_the_tiers_allow()
{
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    let ids = world
        .seed(&[ServerSpec::windows("app01", 0)])
        .await
        .expect("seed");
    emulator
        .seed_history(&harness::History::nightly(HOME, &ids, 4))
        .await
        .expect("history");
    let metrics = Metrics::default();
    let app = world
        .app(&[("RETAIN_DAILY", "4"), ("LOCK_MODE", "governance")])
        .expect("app");
    let time = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let night = world.nightly(&app, &time).await.expect("night");
    assert!(world
        .logs
        .run_report(&night)
        .expect("summary")
        .all_consistent());
    // Newest first: locked for 3, 2 and 1 days; the fourth is not.
    let kept: Vec<(String, Vec<String>)> = sets(emulator, HOME, &ids).await[&ids[0]].clone();
    assert_eq!(kept.len(), 4);
    let in_force = locks(emulator, HOME).await;
    let is_locked = |set: &(String, Vec<String>),
                     locks: &BTreeMap<String, (String, DateTime<Utc>)>| {
        set.1.iter().all(|id| {
            locks
                .get(id)
                .is_some_and(|(state, _)| state == "governance")
        })
    };
    for (rank, set) in kept.iter().enumerate() {
        assert_eq!(
            is_locked(set, &in_force),
            rank < 3,
            "set {rank}: {in_force:?}"
        );
    }

    // The operator lowers the daily tier to two: the third newest set is locked (held, with
    // the lock's end), the fourth is deleted.
    let lowered = metrics.attach(
        world
            .app(&[("RETAIN_DAILY", "2"), ("LOCK_MODE", "governance")])
            .expect("app"),
    );
    let answer = world
        .invoke(&lowered, json!({"action": "retention"}))
        .await
        .expect("retention");
    assert_eq!(
        answer["deleted"].as_array().map(Vec::len),
        Some(kept[3].1.len()),
        "{answer:#}"
    );
    let held = answer["locked"].as_array().cloned().unwrap_or_default();
    assert!(
        held.len() == 1
            && held[0].as_str().is_some_and(
                |h| h.contains(&kept[2].0) && h.contains("locked (governance) until 20")
            ),
        "the third set is held by its lock: {answer:#}"
    );
    let left = sets(emulator, HOME, &ids).await[&ids[0]].clone();
    assert_eq!(left, kept[..3].to_vec());

    // The operator, allowed ec2:UnlockSnapshot, unlocks the held set and the newest one.
    let ec2 = emulator.ec2();
    for id in kept[2].1.iter().chain(&kept[0].1) {
        ec2.unlock_snapshot()
            .snapshot_id(id)
            .send()
            .await
            .expect("UnlockSnapshot of a governance lock");
    }
    let answer = world
        .invoke(&lowered, json!({"action": "retention"}))
        .await
        .expect("retention");
    // Only what the tiers no longer keep goes; the newest, still kept, is locked again.
    let left = sets(emulator, HOME, &ids).await[&ids[0]].clone();
    assert_eq!(left, kept[..2].to_vec(), "{answer:#}");
    let in_force = locks(emulator, HOME).await;
    assert!(
        is_locked(&kept[0], &in_force),
        "the newest set is locked again"
    );
    assert!(is_locked(&kept[1], &in_force), "the second keeps its lock");
    assert!(
        answer["locked"].as_array().is_none_or(Vec::is_empty),
        "{answer:#}"
    );
}
