//! Faults of the whole fleet, which `fault_matrix` cannot compare with a clean run, and
//! retention's faults in detail (each is also a row of the matrix): a locked set held whole
//! and planned as held, Recycle Bin deletions reported recoverable, a refusal of every
//! deletion named, counted and ended, a dispatch that fails for good abandoned after its
//! cap, not taken over forever, and a night at EC2's own request rates.

use std::time::Duration;

use consistent_snapshot::App;
use harness::chaos::{Chaos, ChaosOptions, Ended};
use harness::faults::Fault;
use harness::faults::Stop;
use harness::{scheduled_event, sets_of, Metrics, ServerSpec, World};

/// Tonight's run end to end: its id, once the queue is empty, no message failed and every
/// server is reported consistent.
async fn consistent_night(world: &World, app: &App) -> String {
    let started = world
        .invoke(app, scheduled_event("nightly", "2026-11-23T00:00:00Z"))
        .await
        .expect("schedule");
    let run_id = started["run_id"].as_str().expect("run id").to_string();
    let drained = world.drain(app).await.expect("drain");
    assert_eq!(drained.failures, 0, "no message failed: {drained:?}");
    assert!(world
        .logs
        .run_report(&run_id)
        .expect("summary")
        .all_consistent());
    run_id
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
        .seed_history(&harness::History::nightly("us-east-1", &ids, 3))
        .await
        .expect("history");
    let before = sets_of(emulator, "us-east-1", &sql).await;
    let oldest: Vec<String> = before.values().next().cloned().expect("sql01's oldest set");
    // An operator locks one snapshot of sql01's oldest set (compliance, 30 days): EC2 refuses
    // to delete it until then. A Recycle Bin rule keeps every snapshot of files01 for 7 days.
    emulator
        .lock_snapshot(&oldest[0], 30)
        .await
        .expect("LockSnapshot");
    emulator
        .recycle_bin_rule("us-east-1", 7, &[("ConsistentSnapshot:InstanceId", &files)])
        .expect("Recycle Bin rule");
    let files_before = sets_of(emulator, "us-east-1", &files).await;

    let metrics = Metrics::default();
    let app = metrics.attach(world.app(&[("RETAIN_COUNT", "2")]).expect("app"));
    let run_id = consistent_night(&world, &app).await;

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
        .seed_history(&harness::History::nightly("us-east-1", &ids, 2))
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
    .with_metrics(&metrics)
    // Time enough that a loaded machine is not stopped half-way through the pass.
    .with_timeout(Duration::from_secs(30));
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
    // A permanent refusal is not a reason for another pass (a loaded machine may still take
    // more than one for lack of time, and none tries the refused deletion again: above).
    let again = world
        .logs
        .messages_starting("deletions failed for a reason that may pass");
    assert!(again.is_empty(), "{again:#?}");
    // The night's other messages (tracking, copies, watches) depend on the machine's speed
    // (7 here; more polls on a loaded one): bounded, not counted exactly.
    assert!(drained.messages <= 30, "{drained:?}");
}

#[tokio::test]
async fn a_dispatch_that_fails_for_good_is_abandoned_once_not_taken_over_forever() {
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
    let chaos = Chaos::new(emulator, &world.queue, &[], ChaosOptions::calm(11))
        .expect("chaos")
        .with_metrics(&metrics)
        .with_timeout(Duration::from_secs(10));
    // The catalog refuses the run's manifest for good (a permission taken from the role):
    // every dispatch sends (once), then gives up before it can record what it sent.
    chaos
        .proxy
        .force("dynamodb:BatchWriteItem", Fault::AccessDenied, u32::MAX);
    let event = scheduled_event("nightly", "2026-11-23T00:00:00Z");
    let answers = chaos.schedule(&event).await.expect("the schedule");
    let run_id = answers[0]["run_id"].as_str().expect("run id").to_string();
    // Three dispatches give up, the fourth (closing) too; the fifth lease abandons the run.
    let drained = chaos
        .drain(10, Duration::from_secs(300))
        .await
        .expect("the chain ends");

    let abandoned = world
        .logs
        .messages_starting(&format!("run {run_id} abandoned"));
    assert_eq!(abandoned.len(), 1, "abandoned once: {abandoned:#?}");
    let reason = abandoned[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("gave up 4 time(s)") && reason.contains("AccessDeniedException"),
        "{reason}"
    );
    let counted: Vec<_> = metrics.of("dispatch", Some(&run_id));
    assert_eq!(counted.len(), 1, "{counted:#?}");
    assert_eq!(counted[0]["RunsAbandoned"], 1);
    let stats = chaos.proxy.stats();
    let sends = stats.calls_of("ssm:SendCommand");
    assert_eq!(sends, 1, "the servers were frozen once, never again");
    println!(
        "abandoned dispatch: {} deliveries, {} invocations",
        drained.messages,
        chaos.log().invocations
    );
    // Measured: 17 (each failed takeover's watch is delivered twice: it fails, then finds
    // the next lease held and waits for it).
    assert!(drained.messages <= 25, "{drained:?}");

    // A late delivery of the schedule finds the run abandoned, and says why.
    let Ended::Answered(late) = chaos
        .invoke_stopping(event, Stop::Never)
        .await
        .expect("late delivery")
    else {
        panic!("the late delivery was not answered");
    };
    assert_eq!(late["status"], "abandoned", "{late:#}");
    assert!(late["reason"]
        .as_str()
        .is_some_and(|r| r.contains("AccessDeniedException")));
    assert!(harness::queue_is_empty(&emulator.sqs(), &world.queue)
        .await
        .expect("queue"));
}

/// EC2's request buckets (per region, played by the proxy, AWS-FACTS.md): a night whose copies
/// and deletions are more than the buckets' bursts is slowed, never wrong. Every server
/// consistent, each snapshot copied once, exactly the expired sets deleted in both regions, no
/// message failed; every refused attempt retried and counted.
#[tokio::test]
async fn under_ec2_s_request_buckets_a_night_is_slowed_never_wrong() {
    const HOME: &str = "us-east-1";
    const COPY: &str = "eu-west-1";
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    // 30 servers × 2 volumes: 60 copies (the mutating bucket holds 50), and two expired sets
    // of 60 in each region (the DeleteSnapshot bucket holds 100).
    let ids = harness::seed_bulk(emulator, 30, 30, 1)
        .await
        .expect("fleet");
    emulator
        .seed_history(&harness::History {
            copy_region: Some(COPY.into()),
            ..harness::History::nightly(HOME, &ids, 3)
        })
        .await
        .expect("history");
    let (proxy, _endpoint, app) = emulator
        .counted_app(
            &world.queue,
            &[("RETAIN_COUNT", "2"), ("COPY_REGIONS", COPY)],
        )
        .await
        .expect("app");
    let metrics = Metrics::default();
    let app = metrics.attach(app);
    // EC2's buckets (their bursts as AWS's) refilled at a quarter of AWS's rate: the premise,
    // more copies and deletions than the bursts arriving faster than the refill, then holds
    // however slowly a loaded machine starts them (at AWS's refill the 60 copies had to start
    // within 2.2 s, and once did not).
    proxy.throttle(0.25);

    let run_id = consistent_night(&world, &app).await;

    // The buckets were hit: copies and deletions were refused, and retried.
    let stats = proxy.stats();
    let refused = |action: &str| -> u64 {
        stats
            .throttled
            .iter()
            .filter(|((a, _), _)| a == action)
            .map(|(_, n)| n)
            .sum()
    };
    assert!(refused("ec2:CopySnapshot") > 0, "{:?}", stats.throttled);
    assert!(refused("ec2:DeleteSnapshot") > 0, "{:?}", stats.throttled);
    // Each snapshot copied once: no refused copy was made, none made twice.
    let admitted = stats.admitted();
    assert_eq!(
        admitted.get(&("ec2:CopySnapshot".to_string(), COPY.to_string())),
        Some(&60)
    );
    // Every server keeps exactly its two newest sets, tonight's among them, in both regions.
    for region in [HOME, COPY] {
        for id in &ids {
            let sets = sets_of(emulator, region, id).await;
            assert_eq!(sets.len(), 2, "{id} in {region}: {sets:?}");
            assert!(sets.contains_key(&run_id), "{id} in {region}: {sets:?}");
            assert!(sets.values().all(|s| s.len() == 2), "{id} in {region}");
        }
    }
    assert_eq!(
        admitted
            .iter()
            .filter(|((a, _), _)| a == "ec2:DeleteSnapshot")
            .map(|(_, n)| n)
            .sum::<u64>(),
        2 * 2 * 60,
        "each expired snapshot deleted once"
    );
    // What AWS refused is what the function counted (the alarm's metric).
    let counted: u64 = metrics
        .of("aws", None)
        .iter()
        .filter_map(|l| l["ApiThrottled"].as_u64())
        .sum();
    let all_refused: u64 = stats.throttled.values().sum();
    assert_eq!(counted, all_refused, "{:?}", stats.throttled);
}
