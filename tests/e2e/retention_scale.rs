//! End to end: a run's retention with more deletions than one invocation has time for goes on
//! pass after pass, deletes exactly the expired sets, and counts every deletion once.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use consistent_snapshot::{Envelope, Job, RetentionJob};
use harness::chaos::{Chaos, ChaosOptions};
use harness::{seed_bulk, snapshot_tag, Emulator, History, Metrics, World};
use serde_json::json;

const MANAGED_BY: &str = "vss-test";

/// (run id, instance id) of each of the deployment's snapshots.
async fn managed(emulator: &Emulator) -> Vec<(String, String)> {
    let found = emulator
        .ec2()
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            Filter::builder()
                .name("tag:ConsistentSnapshot:ManagedBy")
                .values(MANAGED_BY)
                .build(),
        )
        .send()
        .await
        .expect("DescribeSnapshots");
    found
        .snapshots()
        .iter()
        .map(|s| {
            let tag = |k| snapshot_tag(s, k).unwrap_or_default().to_string();
            (
                tag("ConsistentSnapshot:RunId"),
                tag("ConsistentSnapshot:InstanceId"),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_retention_longer_than_an_invocation_goes_on_in_passes() {
    let world = World::start(2).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    // 100 servers × 3 volumes × 12 nightly sets; RETAIN_COUNT 6 leaves 6 sets to delete:
    // 1,800 DeleteSnapshot calls, more than an invocation of 20 s has time for: each takes at
    // least 20 ms here (EC2 allows about 5 a second), so a pass deletes at most 750 in the
    // 15 s before it stops, however idle the machine (the emulator alone deletes 40 to 150 a
    // second, and an idle machine once did all 1,800 in one pass).
    let ids = seed_bulk(emulator, 100, 100, 2).await.expect("seed");
    let made = emulator
        .seed_history(&History {
            managed_by: MANAGED_BY.into(),
            ..History::nightly("us-east-1", &ids, 12)
        })
        .await
        .expect("history");
    assert_eq!(made, 3600);
    let before: BTreeSet<String> = managed(emulator)
        .await
        .into_iter()
        .map(|(run, _)| run)
        .collect();
    assert_eq!(before.len(), 12);
    let metrics = Metrics::default();
    let chaos = Chaos::new(
        emulator,
        queue,
        &[("RETAIN_COUNT", "6")],
        ChaosOptions::calm(1),
    )
    .expect("chaos")
    .with_metrics(&metrics)
    .with_timeout(Duration::from_secs(20));
    chaos
        .proxy
        .set_latency_of("ec2:DeleteSnapshot", Duration::from_millis(20));
    // The retention of the newest of those nights' runs.
    let newest = before.iter().max().cloned().expect("a run");
    let run_id = newest.as_str();
    let job = Job::Retention(RetentionJob::first(run_id));
    emulator
        .sqs()
        .send_message()
        .queue_url(queue)
        .message_body(Envelope::new(job).to_body())
        .send()
        .await
        .expect("SendMessage");

    let drained = chaos
        .drain(10, Duration::from_secs(300))
        .await
        .expect("drain");
    assert_eq!(drained.failures, 0, "no pass ran out of time: {drained:?}");
    assert!(
        drained.invocations >= 2,
        "1,800 deletions in one pass of 20 s: {drained:?}"
    );
    assert_eq!(
        logs.messages_starting("retention continues in the next pass")
            .len(),
        drained.invocations - 1
    );

    // Exactly the 6 newest sets of every server are left.
    let left = managed(emulator).await;
    assert_eq!(left.len(), 1800);
    let newest: BTreeSet<String> = before.iter().rev().take(6).cloned().collect();
    let runs_left: BTreeSet<String> = left.iter().map(|(run, _)| run.clone()).collect();
    assert_eq!(runs_left, newest);
    for id in &ids {
        let sets = left.iter().filter(|(_, instance)| instance == id).count();
        assert_eq!(sets, 18, "{id}: 6 sets of 3 snapshots");
    }

    // One retention line for the run, counting the deletions of every pass.
    let lines = metrics.of("retention", Some(run_id));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["SnapshotsDeleted"], json!(1800));
}
