//! End to end: three nightly runs copied to two other regions, with `RETAIN_COUNT=2`, next
//! to snapshots that retention must never touch.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Snapshot, Tag};
use std::time::Duration;

use consistent_snapshot::catalog::Verdict;
use harness::chaos::{Chaos, ChaosOptions};
use harness::faults::Fault;
use harness::{
    invoke, scheduled_event, snapshot_tag, Ebs, Emulator, Metrics, ServerSpec, VssOutcome, Windows,
    World,
};
use serde_json::json;

const HOME: &str = "us-east-1";
const COPY_REGIONS: [&str; 2] = ["eu-west-1", "us-west-2"];

async fn snapshots_in(emulator: &Emulator, region: &str) -> Vec<Snapshot> {
    harness::own_snapshots(emulator, region)
        .await
        .expect("DescribeSnapshots")
}

/// Run ids of an instance's sets in a region that are managed by the test deployment.
fn managed_runs(snapshots: &[Snapshot], instance: &str) -> BTreeSet<String> {
    snapshots
        .iter()
        .filter(|s| snapshot_tag(s, "ConsistentSnapshot:ManagedBy") == Some("vss-test"))
        .filter(|s| snapshot_tag(s, "ConsistentSnapshot:InstanceId") == Some(instance))
        .filter_map(|s| snapshot_tag(s, "ConsistentSnapshot:RunId").map(str::to_string))
        .collect()
}

/// Plants a snapshot of `volume` with these tags, as if made earlier.
async fn plant(emulator: &Emulator, volume: &str, tags: &[(&str, &str)]) -> String {
    harness::plant_snapshot(emulator, volume, tags)
        .await
        .expect("CreateSnapshot")
}

async fn data_volume(emulator: &Emulator, instance: &str) -> String {
    harness::attached_volumes(emulator, instance)
        .await
        .expect("DescribeVolumes")
        .into_iter()
        .find(|(_, device)| device != "/dev/sda1")
        .map(|(volume, _)| volume)
        .expect("a data volume")
}

async fn exists(emulator: &Emulator, snapshot: &str) -> bool {
    snapshots_in(emulator, HOME)
        .await
        .iter()
        .any(|s| s.snapshot_id() == Some(snapshot))
}

#[tokio::test]
async fn three_runs_keep_the_two_newest_consistent_sets_in_every_region() {
    let world = World::start(3).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    // Snapshots and copies stay pending for a moment; the first copies into us-west-2 meet
    // the region's concurrent-copy limit.
    emulator
        .simulate_ebs(&Ebs {
            pending_seconds: Some(1.0),
            copy_refusals: [("us-west-2".to_string(), 3)].into(),
            ..Ebs::default()
        })
        .expect("EBS simulation");
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            ServerSpec::windows("files01", 1),
            // Its own copy region, instead of the configured ones.
            ServerSpec::windows("web01", 1).tag("ConsistentSnapshot:CopyRegions", "ap-southeast-2"),
        ])
        .await
        .expect("seed");
    let (sql, files, web) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let sql_volume = data_volume(emulator, &sql).await;

    // What retention must leave alone, or handle by its rules.
    let ours = |run: &'static str, consistent: &'static str| {
        vec![
            ("ConsistentSnapshot:ManagedBy", "vss-test"),
            ("ConsistentSnapshot:RunId", run),
            ("AppConsistent", consistent),
        ]
    };
    let mut crash_tags = ours("planted-crash", "False");
    crash_tags.push(("ConsistentSnapshot:InstanceId", sql.as_str()));
    let planted_crash = plant(emulator, &sql_volume, &crash_tags).await;
    // Recorded by an earlier night as crash-consistent (the catalog, not the tag, says so).
    emulator
        .record_set(
            &sql,
            "planted-crash",
            std::slice::from_ref(&planted_crash),
            Verdict::CrashConsistent,
        )
        .await
        .expect("record");
    // Tagged exactly like one of ours, older than every real set, "not consistent": by its
    // tags retention would delete it; the catalog never recorded it, so it is foreign.
    let mut forged_tags = ours("forged-old-crash", "False");
    forged_tags.push(("ConsistentSnapshot:InstanceId", sql.as_str()));
    let forged = plant(emulator, &sql_volume, &forged_tags).await;
    let unmanaged = plant(
        emulator,
        &sql_volume,
        &[
            ("ConsistentSnapshot:InstanceId", sql.as_str()),
            ("ConsistentSnapshot:RunId", "by-hand"),
            ("AppConsistent", "True"),
        ],
    )
    .await;
    let foreign = plant(
        emulator,
        &sql_volume,
        &[
            ("ConsistentSnapshot:ManagedBy", "another-deployment"),
            ("ConsistentSnapshot:InstanceId", sql.as_str()),
            ("ConsistentSnapshot:RunId", "theirs"),
            ("AppConsistent", "True"),
        ],
    )
    .await;
    // An operator made an AMI from an old set of ours.
    let image = emulator
        .ec2()
        .register_image()
        .name("sql01-restore-point")
        .send()
        .await
        .expect("RegisterImage");
    let image_id = image.image_id().expect("image id").to_string();
    let described = emulator
        .ec2()
        .describe_images()
        .image_ids(&image_id)
        .send()
        .await
        .expect("DescribeImages");
    let ami_snapshot = described
        .images()
        .first()
        .and_then(|i| i.block_device_mappings().first())
        .and_then(|m| m.ebs())
        .and_then(|e| e.snapshot_id())
        .expect("the AMI's snapshot")
        .to_string();
    let mut ami_tags: Vec<Tag> = ours("planted-ami", "True")
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect();
    ami_tags.push(
        Tag::builder()
            .key("ConsistentSnapshot:InstanceId")
            .value(&sql)
            .build(),
    );
    emulator
        .ec2()
        .create_tags()
        .resources(&ami_snapshot)
        .set_tags(Some(ami_tags))
        .send()
        .await
        .expect("CreateTags");
    emulator
        .record_set(
            &sql,
            "planted-ami",
            std::slice::from_ref(&ami_snapshot),
            Verdict::Consistent,
        )
        .await
        .expect("record");

    let app = emulator
        .app(
            queue,
            &[
                ("COPY_REGIONS", "eu-west-1,us-west-2"),
                // web01's own copy region, which its tag may name.
                ("COPY_REGIONS_ALLOWED", "ap-southeast-2"),
                ("RETAIN_COUNT", "2"),
            ],
        )
        .expect("app");
    let mut runs = Vec::new();
    for night in 1..=3 {
        if night == 3 {
            // files01's third freeze fails: a crash-consistent set, its newest.
            let vss_fails = Windows::outcome(VssOutcome::VssFailure);
            emulator
                .simulate(&[(files.clone(), vss_fails)].into())
                .expect("simulate");
        }
        let start = invoke(
            &app,
            scheduled_event("nightly", &format!("2026-11-2{night}T00:00:00Z")),
        )
        .await
        .expect("run");
        runs.push(start["run_id"].as_str().expect("run id").to_string());
        world.drain(&app).await.expect("drain");
    }
    let run = |n: usize| runs[n - 1].clone();

    // The source region: sql01 keeps its two newest consistent sets (and the AMI's); files01
    // its two consistent sets and, newest of all, the crash-consistent fallback.
    let home = snapshots_in(emulator, HOME).await;
    // (The forged set stays: never recorded, it is foreign, whatever its tags say.)
    let expected_sql: BTreeSet<String> = [
        run(2),
        run(3),
        "planted-ami".to_string(),
        "forged-old-crash".to_string(),
    ]
    .into();
    assert_eq!(managed_runs(&home, &sql), expected_sql);
    assert!(
        logs.messages_starting("foreign snapshot")
            .iter()
            .any(|r| r["snapshot_id"] == json!(forged) && r["why"] == json!("not in the catalog")),
        "the forged snapshot is reported as foreign"
    );
    assert_eq!(
        managed_runs(&home, &files),
        [run(1), run(2), run(3)].into_iter().collect()
    );
    assert!(
        !exists(emulator, &planted_crash).await,
        "an older crash-consistent set goes"
    );
    assert_eq!(
        managed_runs(&home, &web),
        [run(2), run(3)].into_iter().collect()
    );
    // web01's copies are in its own region only, pruned there too.
    let web_copies = snapshots_in(emulator, "ap-southeast-2").await;
    assert_eq!(
        managed_runs(&web_copies, &web),
        [run(2), run(3)].into_iter().collect()
    );
    for untouched in [&unmanaged, &foreign, &ami_snapshot, &forged] {
        assert!(
            exists(emulator, untouched).await,
            "{untouched} must be kept"
        );
    }

    // Every copy region: the same sets, one copy per source snapshot, completed, tagged.
    for region in COPY_REGIONS {
        // (The emulator's own AMIs bring untagged snapshots of their own: not ours.)
        let copies: Vec<Snapshot> = snapshots_in(emulator, region)
            .await
            .into_iter()
            .filter(|s| snapshot_tag(s, "ConsistentSnapshot:ManagedBy") == Some("vss-test"))
            .collect();
        assert_eq!(
            managed_runs(&copies, &sql),
            [run(2), run(3)].into_iter().collect(),
            "{region}"
        );
        assert_eq!(
            managed_runs(&copies, &files),
            [run(1), run(2), run(3)].into_iter().collect(),
            "{region}"
        );
        assert!(managed_runs(&copies, &web).is_empty(), "{region}");
        let mut per_source: BTreeMap<String, usize> = BTreeMap::new();
        for copy in &copies {
            assert_eq!(
                snapshot_tag(copy, "ConsistentSnapshot:SourceRegion"),
                Some(HOME)
            );
            assert_eq!(copy.state().map(|s| s.as_str()), Some("completed"));
            let source = snapshot_tag(copy, "ConsistentSnapshot:SourceSnapshotId")
                .expect("source tag")
                .to_string();
            *per_source.entry(source).or_default() += 1;
        }
        assert!(
            per_source.values().all(|n| *n == 1),
            "{region}: {per_source:?}"
        );
        // sql01: 2 sets; files01: 3 sets; 2 volumes each.
        assert_eq!(copies.len(), (2 + 3) * 2, "{region}");
    }

    // Every deletion was logged with its reason; the AMI's set was reported.
    let deleted = logs.messages_starting("snapshot deleted");
    assert!(!deleted.is_empty());
    assert!(deleted
        .iter()
        .all(|r| r["reason"].as_str().is_some_and(|x| !x.is_empty())));
    assert!(!logs
        .messages_starting("set kept: used by an AMI")
        .is_empty());
    assert!(!logs
        .messages_starting("copy limit of the region reached")
        .is_empty());

    // A dry run plans, names the reason, and changes nothing; then the real call deletes.
    let mut old_tags = ours("planted-old", "True");
    old_tags.push(("ConsistentSnapshot:InstanceId", sql.as_str()));
    let old = plant(emulator, &sql_volume, &old_tags).await;
    emulator
        .record_set(
            &sql,
            "planted-old",
            std::slice::from_ref(&old),
            Verdict::Consistent,
        )
        .await
        .expect("record");
    // Planted now, it is sql01's newest consistent set: with RETAIN_COUNT=2, run 2 must go.
    let dry = invoke(&app, json!({"action": "retention", "dry_run": true}))
        .await
        .expect("dry run");
    assert_eq!(dry["dry_run"], true);
    let home_plan = &dry["plans"][0];
    assert_eq!(home_plan["region"], HOME);
    let sql_sets = home_plan["instances"][&sql]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let doomed: Vec<&serde_json::Value> = sql_sets
        .iter()
        .filter(|s| s["action"] == "delete")
        .collect();
    assert_eq!(doomed.len(), 1, "{sql_sets:?}");
    assert_eq!(doomed[0]["run_id"], run(2).as_str());
    assert!(doomed[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("newest 2")));
    assert!(exists(emulator, &old).await);
    assert_eq!(
        managed_runs(&snapshots_in(emulator, HOME).await, &sql),
        [
            run(2),
            run(3),
            "planted-ami".into(),
            "planted-old".into(),
            "forged-old-crash".into()
        ]
        .into()
    );
    let real = invoke(&app, json!({"action": "retention"}))
        .await
        .expect("retention");
    assert_eq!(real["deleted"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        managed_runs(&snapshots_in(emulator, HOME).await, &sql),
        [
            run(3),
            "planted-ami".into(),
            "planted-old".into(),
            "forged-old-crash".into()
        ]
        .into()
    );
}

#[tokio::test]
async fn a_night_whose_copies_were_refused_is_copied_by_the_next_night() {
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            ServerSpec::windows("files01", 1),
        ])
        .await
        .expect("seed");
    let metrics = Metrics::default();
    let chaos = Chaos::new(
        emulator,
        &world.queue,
        &[("COPY_REGIONS", "eu-west-1")],
        ChaosOptions::calm(3),
    )
    .expect("chaos")
    .with_metrics(&metrics);
    // Night 1: the copy region refuses every copy (an SCP, lifted the next day).
    chaos
        .proxy
        .force("ec2:CopySnapshot@eu-west-1", Fault::AccessDenied, u32::MAX);
    let (first, _) = chaos
        .night("2026-11-23T00:00:00Z", Duration::from_secs(120))
        .await
        .expect("night 1");
    let failed = metrics.of("copies", Some(&first));
    assert!(failed[0]["CopiesFailed"].as_u64() >= Some(1), "{failed:#?}");
    let copies = snapshots_in(emulator, "eu-west-1").await;
    assert!(
        managed_runs(&copies, &ids[0]).is_empty(),
        "nothing copied on night 1"
    );
    chaos.proxy.clear();

    // Night 2 copies its own sets, and night 1's, which no step would copy otherwise.
    let (second, _) = chaos
        .night("2026-11-24T00:00:00Z", Duration::from_secs(120))
        .await
        .expect("night 2");
    let copies = snapshots_in(emulator, "eu-west-1").await;
    for id in &ids {
        assert_eq!(
            managed_runs(&copies, id),
            BTreeSet::from([first.clone(), second.clone()]),
            "{id}: both nights copied"
        );
    }
    let counted = metrics.of("copies", Some(&second));
    assert_eq!(counted.len(), 1, "{counted:#?}");
    // Two servers, two sets each, two snapshots a set.
    assert_eq!(counted[0]["SnapshotsCopied"], 8, "{counted:#?}");
    assert_eq!(counted[0]["CopiesFailed"], 0);
    // The copy summary a night's copy step logged.
    let copies_of = |run: &str| -> String {
        world
            .logs
            .messages_starting("copies: ")
            .into_iter()
            .find(|l| l["run_id"] == run)
            .and_then(|l| l["copies"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no copy line of run {run}"))
    };
    let line = copies_of(&second);
    assert!(
        line.contains(&format!("\"backlog\":[\"{first}\"]")),
        "{line}"
    );
    // Night 1's copies are recorded as night 1's, whole: the report misses no copy, and a
    // third night finds no backlog to take on.
    let report = world
        .report(&world.app(&[("COPY_REGIONS", "eu-west-1")]).expect("app"))
        .await
        .expect("report");
    assert_eq!(report["totals"]["copies_missing"], 0, "{report:#}");
    let (third, _) = chaos
        .night("2026-11-25T00:00:00Z", Duration::from_secs(120))
        .await
        .expect("night 3");
    let line = copies_of(&third);
    assert!(!line.contains("backlog"), "{line}");
}

#[tokio::test]
async fn a_region_an_instance_tag_adds_is_caught_up_like_a_configured_one() {
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    // dr02 goes to the configured region and, by its tag, to one of COPY_REGIONS_ALLOWED.
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            ServerSpec::windows("dr02", 1)
                .tag("ConsistentSnapshot:CopyRegions", "eu-west-1,us-west-2"),
        ])
        .await
        .expect("seed");
    let chaos = Chaos::new(
        emulator,
        &world.queue,
        &[
            ("COPY_REGIONS", "eu-west-1"),
            ("COPY_REGIONS_ALLOWED", "us-west-2"),
        ],
        ChaosOptions::calm(3),
    )
    .expect("chaos");
    // Night 1: only the tag's region refuses; the configured one takes every copy.
    chaos
        .proxy
        .force("ec2:CopySnapshot@us-west-2", Fault::AccessDenied, u32::MAX);
    let (first, _) = chaos
        .night("2026-11-23T00:00:00Z", Duration::from_secs(120))
        .await
        .expect("night 1");
    chaos.proxy.clear();
    assert!(managed_runs(&snapshots_in(emulator, "us-west-2").await, &ids[1]).is_empty());

    // Night 2 makes night 1's missing copies in the tag's region too: the set is short
    // there, though complete in every configured region.
    let (second, _) = chaos
        .night("2026-11-24T00:00:00Z", Duration::from_secs(120))
        .await
        .expect("night 2");
    assert_eq!(
        managed_runs(&snapshots_in(emulator, "us-west-2").await, &ids[1]),
        BTreeSet::from([first.clone(), second.clone()]),
        "dr02's both nights in the tag's region"
    );
    for id in &ids {
        assert_eq!(
            managed_runs(&snapshots_in(emulator, "eu-west-1").await, id),
            BTreeSet::from([first.clone(), second.clone()]),
            "{id}: both nights in the configured region"
        );
    }
    // And a night with nothing short takes nothing on.
    let (third, _) = chaos
        .night("2026-11-25T00:00:00Z", Duration::from_secs(120))
        .await
        .expect("night 3");
    let line = world
        .logs
        .messages_starting("copies: ")
        .into_iter()
        .find(|l| l["run_id"] == third.as_str())
        .and_then(|l| l["copies"].as_str().map(str::to_string))
        .unwrap_or_default();
    assert!(!line.is_empty() && !line.contains("backlog"), "{line}");
}

/// The reasons the dry run gives for an instance's sets in the home region.
fn home_reasons(dry: &serde_json::Value, instance: &str) -> Vec<String> {
    dry["plans"][0]["instances"][instance]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|set| set["reason"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_server_untagged_or_terminated_keeps_its_backups_and_the_plan_says_why() {
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            ServerSpec::windows("files01", 1),
            ServerSpec::windows("exch01", 1),
        ])
        .await
        .expect("seed");
    emulator
        .seed_history(&harness::History::nightly(HOME, &ids, 3))
        .await
        .expect("history");
    // files01 leaves the fleet by its tag, exch01 is terminated; sql01 stays.
    let ec2 = emulator.ec2();
    ec2.delete_tags()
        .resources(&ids[1])
        .tags(Tag::builder().key("ConsistentSnapshot").build())
        .send()
        .await
        .expect("DeleteTags");
    ec2.terminate_instances()
        .instance_ids(&ids[2])
        .send()
        .await
        .expect("TerminateInstances");
    let app = world.app(&[("RETAIN_COUNT", "2")]).expect("app");
    world
        .nightly(&app, "2026-11-23T00:00:00Z")
        .await
        .expect("the night");
    // sql01: its new set and the newest earlier one; the others: every set they had.
    let counts: Vec<usize> = {
        let mut counts = Vec::new();
        for id in &ids {
            counts.push(harness::sets_of(emulator, HOME, id).await.len());
        }
        counts
    };
    assert_eq!(counts, vec![2, 3, 3]);
    let dry = invoke(&app, json!({"action": "retention", "dry_run": true}))
        .await
        .expect("dry run");
    let untagged = home_reasons(&dry, &ids[1]);
    assert!(
        untagged.len() == 3
            && untagged
                .iter()
                .all(|r| r.contains("no longer tagged") && r.contains("KEEP_ORPHANED_BACKUPS")),
        "{untagged:#?}"
    );
    let terminated = home_reasons(&dry, &ids[2]);
    assert!(
        terminated.len() == 3
            && terminated
                .iter()
                .all(|r| r.contains("instance terminated") && r.contains("KEEP_ORPHANED_BACKUPS")),
        "{terminated:#?}"
    );

    // A deployment that does not keep orphans' backups applies its count to them too.
    let strict = world
        .app(&[("RETAIN_COUNT", "2"), ("KEEP_ORPHANED_BACKUPS", "false")])
        .expect("app");
    let answer = invoke(&strict, json!({"action": "retention"}))
        .await
        .expect("retention");
    let mut after = Vec::new();
    for id in &ids {
        after.push(harness::sets_of(emulator, HOME, id).await.len());
    }
    assert_eq!(after, vec![2, 2, 2], "{answer:#}");
}
