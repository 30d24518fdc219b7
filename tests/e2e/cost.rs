//! What the kept sets cost (`{"action":"cost"}`), end to end: a server's ten nightly sets in the
//! home region and their copies in a copy region, one set archived. The bytes each snapshot is
//! billed for and would free are checked against the emulator's own blocks (each snapshot's
//! block versions, compared here as sets, apart from the function's arithmetic); the archived
//! one costs its full size at the archive price; a second cost run counts nothing again; and
//! the fleet report shows each instance's cost.

use std::collections::{BTreeMap, BTreeSet};

use harness::{own_snapshots, snapshot_tag, ServerSpec, World};
use serde_json::{json, Value};

const HOME: &str = "us-east-1";
const COPY: &str = "eu-west-1";
const BLOCK: u64 = 512 * 1024;

/// One snapshot as a lineage holds it: when, its run, its id, its blocks' versions.
type Held = (chrono::DateTime<chrono::Utc>, String, String, Vec<i64>);

/// `lineage (region, device) -> [(run, snapshot, block versions)]`, oldest first, of the
/// deployment's snapshots that are not archived.
async fn lineages(
    world: &World,
    instance: &str,
    archived: &BTreeSet<String>,
) -> BTreeMap<(String, String), Vec<(String, String, Vec<i64>)>> {
    let mut found: BTreeMap<(String, String), Vec<Held>> = BTreeMap::new();
    for region in [HOME, COPY] {
        for s in own_snapshots(&world.emulator, region)
            .await
            .expect("DescribeSnapshots")
        {
            if snapshot_tag(&s, "ConsistentSnapshot:InstanceId") != Some(instance) {
                continue;
            }
            let id = s.snapshot_id().unwrap_or_default().to_string();
            if archived.contains(&id) {
                continue;
            }
            let versions = world.emulator.block_versions(region, &id).expect("blocks");
            let start = s
                .start_time()
                .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), 0))
                .unwrap_or_default();
            found
                .entry((
                    region.to_string(),
                    snapshot_tag(&s, "Device").unwrap_or_default().to_string(),
                ))
                .or_default()
                .push((
                    start,
                    snapshot_tag(&s, "ConsistentSnapshot:RunId")
                        .unwrap_or_default()
                        .to_string(),
                    id,
                    versions,
                ));
        }
    }
    found
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            (
                k,
                v.into_iter().map(|(_, run, id, b)| (run, id, b)).collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_cost_of_each_kept_set_is_what_its_blocks_say() {
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    let ids = world
        .seed(&[ServerSpec::windows("sql01", 1)])
        .await
        .expect("seed");
    let sql = &ids[0];
    emulator
        .seed_history(&harness::History {
            hours_apart: 24.0 * 3.0,
            copy_region: Some(COPY.into()),
            ..harness::History::nightly(HOME, &ids, 10)
        })
        .await
        .expect("history");
    let app = world
        .app(&[("COPY_REGIONS", COPY), ("COST_PER_GB_MONTH", "0.05")])
        .expect("app");
    // The oldest set in the home region was archived before any cost run (at once here).
    emulator
        .simulate_ebs(&harness::Ebs {
            archive_seconds: Some(0.0),
            ..harness::Ebs::default()
        })
        .expect("EBS");
    let home = own_snapshots(emulator, HOME).await.expect("snapshots");
    let oldest_run = home
        .iter()
        .filter_map(|s| snapshot_tag(s, "ConsistentSnapshot:RunId"))
        .min()
        .expect("a run")
        .to_string();
    let archived: BTreeSet<String> = home
        .iter()
        .filter(|s| snapshot_tag(s, "ConsistentSnapshot:RunId") == Some(oldest_run.as_str()))
        .filter_map(|s| s.snapshot_id().map(str::to_string))
        .collect();
    for id in &archived {
        emulator
            .ec2()
            .modify_snapshot_tier()
            .snapshot_id(id)
            .storage_tier(aws_sdk_ec2::types::TargetStorageTier::Archive)
            .send()
            .await
            .expect("ModifySnapshotTier");
    }

    // A cost run counts what it can before the invocation's end (6 s here) and says how many
    // counts are left; each call goes on from the counts the catalog keeps.
    let mut answer = Value::Null;
    let mut counted = 0;
    for call in 1..=6 {
        answer = world
            .invoke(&app, json!({"action": "cost"}))
            .await
            .expect("cost");
        counted += answer["counted"].as_u64().unwrap_or(0);
        if answer["left"] == 0 {
            break;
        }
        assert!(call < 6, "still {} left after 6 calls", answer["left"]);
    }
    // Three counts a snapshot at most (its blocks, against the one before, its neighbours
    // against each other), over 9 readable sets × 2 volumes at home and 10 × 2 in the copy region.
    assert!(
        counted > 0 && counted <= 3 * (18 + 20),
        "{counted} counts: {answer:#}"
    );
    let entry = answer["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["instance_id"] == json!(sql)))
        .unwrap_or_else(|| panic!("{sql} in {answer:#}"))
        .clone();
    assert_eq!(entry["complete"], true, "{entry:#}");

    // What the blocks say, per set (region, run): billed = the blocks that differ from the
    // snapshot before (all blocks for the oldest), freed = the blocks no other snapshot of its
    // lineage holds in that version.
    let mut expected: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for ((region, _), line) in lineages(&world, sql, &archived).await {
        for (k, (run, _, blocks)) in line.iter().enumerate() {
            let billed = match k.checked_sub(1) {
                None => blocks.len() as u64,
                Some(p) => blocks
                    .iter()
                    .zip(&line[p].2)
                    .filter(|(a, b)| a != b)
                    .count() as u64,
            };
            let others: BTreeSet<(usize, i64)> = line
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .flat_map(|(_, (_, _, b))| b.iter().copied().enumerate())
                .collect();
            let unique = blocks
                .iter()
                .copied()
                .enumerate()
                .filter(|b| !others.contains(b))
                .count() as u64;
            let set = expected.entry((region.clone(), run.clone())).or_default();
            set.0 += billed * BLOCK;
            set.1 += unique * BLOCK;
        }
    }
    let sets: BTreeMap<(String, String), &Value> = entry["sets"]
        .as_array()
        .expect("sets")
        .iter()
        .map(|s| {
            (
                (
                    s["region"].as_str().unwrap_or_default().to_string(),
                    s["run_id"].as_str().unwrap_or_default().to_string(),
                ),
                s,
            )
        })
        .collect();
    for ((region, run), (billed, unique)) in &expected {
        let got = sets
            .get(&(region.clone(), run.clone()))
            .unwrap_or_else(|| panic!("no cost of {run} in {region}: {entry:#}"));
        assert_eq!(
            got["billed_bytes"],
            json!(billed),
            "{run} in {region}: {got:#}"
        );
        assert_eq!(
            got["unique_bytes"],
            json!(unique),
            "{run} in {region}: {got:#}"
        );
    }
    let standard: u64 = expected.values().map(|(b, _)| b).sum();
    assert_eq!(entry["standard_bytes"], json!(standard), "{entry:#}");
    // Something changed between nights, and not everything: the sets are incremental.
    assert!(
        expected
            .values()
            .any(|(b, _)| *b > 0 && *b < 2 * 2048 * BLOCK),
        "{expected:?}"
    );

    // The archived set: its full size (that of its nearest readable neighbour, estimated) at
    // the archive price.
    let oldest = sets
        .get(&(HOME.to_string(), oldest_run.clone()))
        .unwrap_or_else(|| panic!("the archived set: {entry:#}"));
    assert_eq!(oldest["archived"], true, "{oldest:#}");
    assert_eq!(oldest["estimated"], true, "{oldest:#}");
    let full = archived.len() as u64 * 2048 * BLOCK;
    assert_eq!(oldest["unique_bytes"], json!(full), "{oldest:#}");
    assert_eq!(entry["archive_bytes"], json!(full), "{entry:#}");
    let cost = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let expected_cost = standard as f64 / 1e9 * 0.05 + full as f64 / 1e9 * 0.0125;
    assert!(
        (cost(&entry["monthly_cost"]) - expected_cost).abs() < 1e-9,
        "{} vs {expected_cost}",
        entry["monthly_cost"]
    );

    // Incremental: a second run counts nothing again.
    let again = world
        .invoke(&app, json!({"action": "cost", "instance_ids": [sql]}))
        .await
        .expect("cost again");
    assert_eq!(again["counted"], 0, "{again:#}");
    assert!(again["reused"].as_u64().unwrap_or(0) > 0, "{again:#}");
    assert_eq!(again["instances"][0]["monthly_cost"], entry["monthly_cost"]);

    // The fleet report shows it.
    let report = world.report(&app).await.expect("report");
    let reported = harness::report_entry(&report, sql);
    assert!(
        (cost(&reported["cost"]["monthly_cost"]) - expected_cost).abs() < 1e-9,
        "{reported:#}"
    );
    assert_eq!(reported["cost"]["complete"], true);
}
