//! The fault matrix: one row per fault that used to stop the whole fleet. Each row runs the
//! same small fleet with the fault forced for good, then checks what an operator checks: the
//! rest of the fleet ends as in a clean run, the fault is named with its AWS code in the step's
//! log line, its metric is emitted, and the messages it cost stay under a bound.
//!
//! Rows (more join them as their faults are contained):
//! - a copy region that refuses every CopySnapshot (a permission, a KMS key, an SCP);
//! - a copy region whose snapshots cannot even be read (a region not enabled);
//! - an instance tag naming a copy region outside `COPY_REGIONS_ALLOWED` (a stray tag).
//! - a snapshot under an EBS Snapshot Lock, and a Recycle Bin rule, met by retention.

use std::time::Duration;

use harness::chaos::{Chaos, ChaosOptions};
use harness::faults::Fault;
use harness::{own_snapshots, scheduled_event, snapshot_tag, Emulator, Metrics, ServerSpec, World};

const HEALTHY: &str = "eu-west-1";
const BROKEN: &str = "us-west-2";

/// One row: the call forced to fail for good in the broken copy region.
struct Row {
    name: &'static str,
    action: &'static str,
}

const ROWS: [Row; 2] = [
    Row {
        name: "CopySnapshot refused in a copy region",
        action: "ec2:CopySnapshot",
    },
    Row {
        name: "a copy region that cannot be read",
        action: "ec2:DescribeSnapshots",
    },
];

/// The run's snapshots this deployment holds in `region`.
async fn run_copies(emulator: &Emulator, region: &str, run_id: &str) -> usize {
    own_snapshots(emulator, region)
        .await
        .expect("DescribeSnapshots")
        .iter()
        .filter(|s| snapshot_tag(s, "ConsistentSnapshot:RunId") == Some(run_id))
        .filter(|s| snapshot_tag(s, "ConsistentSnapshot:ManagedBy") == Some("vss-test"))
        .count()
}

#[tokio::test]
async fn one_broken_copy_region_fails_alone_by_name_and_the_chain_ends() {
    for row in ROWS {
        let world = World::start(1).await.expect("world");
        let emulator = &world.emulator;
        world
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
            &[("COPY_REGIONS", &format!("{HEALTHY},{BROKEN}"))],
            ChaosOptions::calm(5),
        )
        .expect("chaos")
        .with_metrics(&metrics);
        chaos.proxy.force(
            &format!("{}@{BROKEN}", row.action),
            Fault::AccessDenied,
            u32::MAX,
        );
        let (run_id, drained) = chaos
            .night("2026-11-23T00:00:00Z", Duration::from_secs(120))
            .await
            .expect("the night");
        let name = row.name;

        // The fleet: both servers consistent, every snapshot copied to the healthy region.
        let report = world.logs.run_report(&run_id).expect("the run's summary");
        assert!(report.all_consistent(), "{name}: {report:#?}");
        assert_eq!(
            run_copies(emulator, HEALTHY, &run_id).await,
            4,
            "{name}: every snapshot copied to {HEALTHY}"
        );
        assert_eq!(run_copies(emulator, BROKEN, &run_id).await, 0, "{name}");

        // The fault, by name and code, once: the copy step ended rather than retrying for a day.
        let lines = world.logs.messages_starting("copies need attention");
        assert_eq!(lines.len(), 1, "{name}: one copy summary: {lines:#?}");
        let line = lines[0]["message"].as_str().unwrap_or_default();
        assert!(
            line.contains(&format!("{BROKEN} (UnauthorizedOperation)"))
                && line.contains("4 failed"),
            "{name}: {line}"
        );
        let copies = metrics.of("copies", Some(&run_id));
        assert_eq!(copies.len(), 1, "{name}: {copies:#?}");
        assert_eq!(copies[0]["CopiesFailed"], 4, "{name}");
        assert_eq!(copies[0]["SnapshotsCopied"], 4, "{name}");

        // Retention still ran, and the whole chain cost few messages and few refused calls.
        let retention = metrics.of("retention", Some(&run_id));
        assert_eq!(retention.len(), 1, "{name}: retention ran once for the run");
        let unreadable = usize::from(row.action == "ec2:DescribeSnapshots");
        assert_eq!(retention[0]["RegionsUnreadable"], unreadable, "{name}");
        if unreadable > 0 {
            let lines = world.logs.messages_starting("retention:");
            assert!(
                lines.iter().any(|l| l["message"].as_str().is_some_and(|m| {
                    m.contains(&format!(
                        "not readable, left as they are: {BROKEN} (UnauthorizedOperation)"
                    ))
                })),
                "{name}: the retention line names the region: {lines:#?}"
            );
        }
        if unreadable > 0 {
            // The fleet report still answers: the healthy region's copies are counted, the
            // broken one is named with its code, and its copies are not counted as missing.
            let answer = chaos
                .invoke_stopping(
                    serde_json::json!({"action": "report"}),
                    harness::faults::Stop::Never,
                )
                .await
                .expect("report");
            let harness::chaos::Ended::Answered(report) = answer else {
                panic!("{name}: the report failed: {answer:?}");
            };
            assert_eq!(
                report["regions_unreadable"],
                serde_json::json!([format!("{BROKEN} (UnauthorizedOperation)")]),
                "{name}: {report:#}"
            );
            assert_eq!(report["totals"]["within_rpo"], 2, "{name}: {report:#}");
            assert_eq!(report["totals"]["copies_missing"], 0, "{name}: {report:#}");
            let reported = metrics.of("report", None);
            assert_eq!(
                reported.last().map(|m| m["RegionsUnreadable"].clone()),
                Some(1.into())
            );
        }
        let stats = chaos.proxy.stats();
        let refused = stats
            .regional
            .get(&(row.action.to_string(), BROKEN.to_string()))
            .copied()
            .unwrap_or(0);
        println!(
            "{name}: {} deliveries, {refused} refused calls into {BROKEN}",
            drained.messages
        );
        assert!(refused <= 4, "{name}: {refused} refused calls");
        assert!(drained.messages <= 20, "{name}: {drained:?}");
    }
}

#[tokio::test]
async fn a_copy_region_tag_outside_the_allowed_ones_is_refused_for_that_server_alone() {
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            ServerSpec::windows("web01", 1).tag("ConsistentSnapshot:CopyRegions", "me-central-1"),
        ])
        .await
        .expect("seed");
    let metrics = Metrics::default();
    let chaos = Chaos::new(
        emulator,
        &world.queue,
        &[("COPY_REGIONS", HEALTHY), ("COPY_REGIONS_ALLOWED", BROKEN)],
        ChaosOptions::calm(6),
    )
    .expect("chaos")
    .with_metrics(&metrics);
    let (run_id, _) = chaos
        .night("2026-11-23T00:00:00Z", Duration::from_secs(120))
        .await
        .expect("the night");
    let report = world.logs.run_report(&run_id).expect("the run's summary");
    assert!(report.all_consistent(), "{report:#?}");
    // sql01's two snapshots are copied; web01's go nowhere, and its tag is named.
    assert_eq!(run_copies(emulator, HEALTHY, &run_id).await, 2);
    let lines = world.logs.messages_starting("copies need attention");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let copies = lines[0]["copies"].as_str().unwrap_or_default();
    assert!(
        copies.contains(&ids[1]) && copies.contains("me-central-1 not in COPY_REGIONS"),
        "{copies}"
    );
    assert_eq!(metrics.of("copies", Some(&run_id))[0]["CopiesFailed"], 1);
    // Nothing, not even a read, went to the region the tag named.
    let stats = chaos.proxy.stats();
    let there: Vec<_> = stats
        .regional
        .keys()
        .filter(|(_, region)| region == "me-central-1")
        .collect();
    assert!(there.is_empty(), "{there:?}");
}

/// Sets (run id → snapshot ids) of `instance` this deployment holds in `region`, oldest first.
async fn sets_of(
    emulator: &Emulator,
    region: &str,
    instance: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut sets: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for s in own_snapshots(emulator, region)
        .await
        .expect("DescribeSnapshots")
    {
        if snapshot_tag(&s, "ConsistentSnapshot:InstanceId") != Some(instance)
            || snapshot_tag(&s, "ConsistentSnapshot:ManagedBy") != Some("vss-test")
        {
            continue;
        }
        if let (Some(run), Some(id)) = (
            snapshot_tag(&s, "ConsistentSnapshot:RunId"),
            s.snapshot_id(),
        ) {
            sets.entry(run.to_string())
                .or_default()
                .push(id.to_string());
        }
    }
    sets
}

#[tokio::test]
async fn a_locked_set_is_held_and_a_recycle_bin_deletion_is_reported_recoverable() {
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            ServerSpec::windows("files01", 1),
        ])
        .await
        .expect("seed");
    let (sql, files) = (ids[0].clone(), ids[1].clone());
    // Three earlier nights; tonight's run makes four sets each, RETAIN_COUNT=2 deletes two.
    emulator
        .seed_history(&harness::History {
            region: "us-east-1".into(),
            managed_by: "vss-test".into(),
            instance_ids: ids.clone(),
            sets: 3,
            hours_apart: 24.0,
            newest_hours: 24.0,
            copy_region: None,
        })
        .await
        .expect("history");
    let before = sets_of(emulator, "us-east-1", &sql).await;
    let oldest: Vec<String> = before.values().next().cloned().expect("sql01's oldest set");
    // An operator locks one snapshot of sql01's oldest set (compliance, 30 days): EC2 refuses
    // to delete it until then. A Recycle Bin rule keeps every snapshot of files01 for 7 days.
    emulator
        .ec2()
        .lock_snapshot()
        .snapshot_id(&oldest[0])
        .lock_mode(aws_sdk_ec2::types::LockMode::Compliance)
        .lock_duration(30)
        .send()
        .await
        .expect("LockSnapshot");
    emulator
        .recycle_bin_rule("us-east-1", 7, &[("ConsistentSnapshot:InstanceId", &files)])
        .expect("Recycle Bin rule");
    let files_before = sets_of(emulator, "us-east-1", &files).await;

    let metrics = Metrics::default();
    let app = metrics.attach(world.app(&[("RETAIN_COUNT", "2")]).expect("app"));
    let started = world
        .invoke(&app, scheduled_event("nightly", "2026-11-23T00:00:00Z"))
        .await
        .expect("schedule");
    let run_id = started["run_id"].as_str().expect("run id").to_string();
    let drained = world.drain(&app).await.expect("drain");
    assert_eq!(drained.failures, 0, "no message failed: {drained:?}");
    assert!(world
        .logs
        .run_report(&run_id)
        .expect("summary")
        .all_consistent());

    // sql01: the locked set is kept whole, the next oldest deleted, the newest two kept.
    let after = sets_of(emulator, "us-east-1", &sql).await;
    let runs: Vec<&String> = before.keys().collect();
    assert!(
        after.contains_key(runs[0]),
        "the locked set is kept: {after:?}"
    );
    assert_eq!(after[runs[0]].len(), oldest.len(), "kept whole");
    assert!(
        !after.contains_key(runs[1]),
        "the next oldest is deleted: {after:?}"
    );
    assert_eq!(after.len(), 3, "{after:?}");
    // files01: its two oldest sets are gone from DescribeSnapshots, in the bin for 7 days.
    let files_after = sets_of(emulator, "us-east-1", &files).await;
    assert_eq!(files_after.len(), 2, "{files_after:?}");
    let binned: Vec<String> = files_before.values().take(2).flatten().cloned().collect();
    let bin = emulator
        .ec2()
        .list_snapshots_in_recycle_bin()
        .set_snapshot_ids(Some(binned.clone()))
        .send()
        .await
        .expect("ListSnapshotsInRecycleBin");
    assert_eq!(bin.snapshots().len(), binned.len());

    // The retention summary and metrics say so, and nothing is counted deleted that is not.
    let retention = metrics.of("retention", Some(&run_id));
    assert_eq!(retention.len(), 1, "{retention:#?}");
    assert_eq!(retention[0]["SnapshotsDeleted"], 2, "sql01's one set of 2");
    assert_eq!(retention[0]["SnapshotsInRecycleBin"], binned.len());
    assert_eq!(retention[0]["DeletionsLocked"], 1);
    assert_eq!(retention[0]["DeletionsFailed"], 0);
    let lines = world.logs.messages_starting("retention:");
    let line = lines
        .iter()
        .filter_map(|l| l["message"].as_str())
        .find(|m| m.contains("held by a snapshot lock"))
        .unwrap_or_else(|| panic!("no retention line names the lock: {lines:#?}"));
    assert!(line.contains("2 snapshots deleted"), "{line}");
    assert!(
        line.contains(&format!("{} in the Recycle Bin", binned.len())),
        "{line}"
    );
    let summary = lines
        .iter()
        .filter_map(|l| l["retention"].as_str())
        .find(|r| r.contains(&oldest[0]))
        .unwrap_or_else(|| panic!("the summary names the locked snapshot: {lines:#?}"));
    assert!(
        summary.contains("locked (compliance) until 20"),
        "{summary}"
    );
    assert!(summary.contains("recoverable until 20"), "{summary}");

    // An on-demand retention plans the locked set as held, with the lock's end, again.
    let dry = world
        .invoke(
            &app,
            serde_json::json!({"action": "retention", "dry_run": true}),
        )
        .await
        .expect("dry run");
    let held: Vec<&serde_json::Value> = dry["plans"][0]["instances"][&sql]
        .as_array()
        .map(|sets| sets.iter().filter(|s| s["held"] == "lock").collect())
        .unwrap_or_default();
    assert_eq!(held.len(), 1, "{dry:#}");
    assert_eq!(held[0]["action"], "keep");
}

#[tokio::test]
async fn a_refused_deletion_is_named_and_counted_and_the_retention_job_ends() {
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    let ids = world
        .seed(&[ServerSpec::windows("sql01", 1)])
        .await
        .expect("seed");
    emulator
        .seed_history(&harness::History {
            region: "us-east-1".into(),
            managed_by: "vss-test".into(),
            instance_ids: ids.clone(),
            sets: 2,
            hours_apart: 24.0,
            newest_hours: 24.0,
            copy_region: None,
        })
        .await
        .expect("history");
    let metrics = Metrics::default();
    let chaos = Chaos::new(
        emulator,
        &world.queue,
        &[("RETAIN_COUNT", "2")],
        ChaosOptions::calm(7),
    )
    .expect("chaos")
    .with_metrics(&metrics);
    // A permission boundary refuses every DeleteSnapshot.
    chaos.proxy.force(
        "ec2:DeleteSnapshot@us-east-1",
        Fault::AccessDenied,
        u32::MAX,
    );
    let (run_id, drained) = chaos
        .night("2026-11-23T00:00:00Z", Duration::from_secs(120))
        .await
        .expect("the night");
    assert!(world
        .logs
        .run_report(&run_id)
        .expect("summary")
        .all_consistent());
    // The oldest set (2 snapshots) was to go: one refusal, the rest of the set left whole.
    assert_eq!(sets_of(emulator, "us-east-1", &ids[0]).await.len(), 3);
    let retention = metrics.of("retention", Some(&run_id));
    assert_eq!(retention.len(), 1, "retention ended once: {retention:#?}");
    assert_eq!(retention[0]["DeletionsFailed"], 1);
    assert_eq!(retention[0]["SnapshotsDeleted"], 0);
    let lines = world.logs.messages_starting("retention:");
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 failed (first: us-east-1/snap-")
                && m.contains("UnauthorizedOperation"))),
        "{lines:#?}"
    );
    let refused = chaos
        .proxy
        .stats()
        .regional
        .get(&("ec2:DeleteSnapshot".to_string(), "us-east-1".to_string()))
        .copied()
        .unwrap_or(0);
    println!(
        "refused deletion: {} deliveries, {refused} refused calls",
        drained.messages
    );
    assert_eq!(refused, 1, "one try, no retry of a permanent refusal");
    assert!(drained.messages <= 12, "{drained:?}");
}

#[tokio::test]
async fn one_unreachable_instance_in_a_batch_of_fifty_is_the_only_one_unsent() {
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    // 50 servers, one SendCommand; web17's agent was deregistered after SSM's fleet view was
    // last updated: SSM still lists it online, and refuses any call naming it.
    let specs: Vec<ServerSpec> = (0..50)
        .map(|i| {
            let spec = ServerSpec::windows(&format!("web{i:02}"), 0);
            if i == 17 {
                spec.sim(harness::Windows::agent(harness::Agent::Deregistered))
            } else {
                spec
            }
        })
        .collect();
    let ids = world.seed(&specs).await.expect("seed");
    let metrics = Metrics::default();
    let chaos = Chaos::new(emulator, &world.queue, &[], ChaosOptions::calm(8))
        .expect("chaos")
        .with_metrics(&metrics);
    let (run_id, drained) = chaos
        .night("2026-11-23T00:00:00Z", Duration::from_secs(180))
        .await
        .expect("the night");
    let report = world.logs.run_report(&run_id).expect("the run's summary");
    let consistent: Vec<&str> = report
        .outcomes
        .iter()
        .filter(|o| o.kind == consistent_snapshot::OutcomeKind::Consistent)
        .map(|o| o.instance_id.as_str())
        .collect();
    assert_eq!(consistent.len(), 49, "{report:#?}");
    assert!(!consistent.contains(&ids[17].as_str()));
    let bad = report
        .outcomes
        .iter()
        .find(|o| o.instance_id == ids[17])
        .expect("web17 is in the summary");
    assert_eq!(
        bad.kind,
        consistent_snapshot::OutcomeKind::Failed,
        "{bad:?}"
    );
    assert!(
        bad.reason
            .as_deref()
            .is_some_and(|r| r.contains("InvalidInstanceId")),
        "{bad:?}"
    );
    let sends = chaos
        .proxy
        .stats()
        .calls
        .get("ssm:SendCommand")
        .copied()
        .unwrap_or(0);
    println!(
        "InvalidInstanceId in a batch of 50: {sends} SendCommand calls, {} deliveries",
        drained.messages
    );
    // The halving: 1 refused call of 50, then about 2 calls a level down to web17 (log2 50 ≈ 6).
    assert!(sends <= 13, "{sends} SendCommand calls");
}
