//! End to end: a run's retention with more deletions than one invocation has time for goes on
//! pass after pass, deletes exactly the expired sets, and counts every deletion once.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use consistent_snapshot::{Envelope, Job, RetentionJob};
use harness::chaos::{Chaos, ChaosOptions, Ended};
use harness::{seed_bulk, snapshot_tag, Drained, Emulator, History, Metrics, World};
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

/// `servers` servers of 3 volumes, each with `nights` nightly sets of this deployment in the
/// home region; answers their instance ids.
async fn nightly_sets(emulator: &Emulator, servers: usize, nights: u64) -> Vec<String> {
    let ids = seed_bulk(emulator, servers, servers, 2)
        .await
        .expect("seed");
    let made = emulator
        .seed_history(&History {
            managed_by: MANAGED_BY.into(),
            ..History::nightly("us-east-1", &ids, nights)
        })
        .await
        .expect("history");
    assert_eq!(made, servers as u64 * nights * 3);
    ids
}

/// 40 servers × 3 volumes × 12 nightly sets of the deployment, as `nightly_sets` makes them:
/// their ids, every snapshot as (run id, instance id), and the 6 newest runs (what
/// `RETAIN_COUNT=6` keeps).
struct FortyServers {
    ids: Vec<String>,
    before: Vec<(String, String)>,
    runs: BTreeSet<String>,
    newest: BTreeSet<String>,
}

async fn forty_servers(emulator: &Emulator) -> FortyServers {
    let ids = nightly_sets(emulator, 40, 12).await;
    let before = managed(emulator).await;
    let runs: BTreeSet<String> = before.iter().map(|(run, _)| run.clone()).collect();
    let newest: BTreeSet<String> = runs.iter().rev().take(6).cloned().collect();
    FortyServers {
        ids,
        before,
        runs,
        newest,
    }
}

/// Asserts that the function logged a retention line beginning with `wanted`.
fn assert_retention_line(logs: &harness::Logs, wanted: &str) {
    let summary = logs.messages_starting("retention: ");
    assert!(
        summary
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.starts_with(wanted))),
        "{wanted}: {summary:#?}"
    );
}

/// A calm event source with `settings`, each invocation `timeout` long, every DeleteSnapshot
/// at least `deletion` slow (EC2 allows about 5 a second), its metrics in `metrics`.
fn slow_deletions<'a>(
    (emulator, queue): (&'a Emulator, &str),
    settings: &[(&str, &str)],
    (deletion, timeout): (Duration, Duration),
    metrics: &Metrics,
) -> Chaos<'a> {
    let chaos = Chaos::new(emulator, queue, settings, ChaosOptions::calm(3))
        .expect("chaos")
        .with_metrics(metrics)
        .with_timeout(timeout);
    chaos.proxy.set_latency_of("ec2:DeleteSnapshot", deletion);
    chaos
}

/// Queues the first pass of the retention of `run_id`, as the run's end queues it.
async fn queue_retention(emulator: &Emulator, queue: &str, run_id: &str) {
    let body = Envelope::new(Job::Retention(RetentionJob::first(run_id))).to_body();
    emulator
        .sqs()
        .send_message()
        .queue_url(queue)
        .message_body(body)
        .send()
        .await
        .expect("SendMessage");
}

/// The lowest snapshot id of `instance`'s set of `run` in the home region, by its tags.
async fn a_snapshot_of(emulator: &Emulator, run: &str, instance: &str) -> String {
    emulator
        .ec2()
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            Filter::builder()
                .name("tag:ConsistentSnapshot:RunId")
                .values(run)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("tag:ConsistentSnapshot:InstanceId")
                .values(instance)
                .build(),
        )
        .send()
        .await
        .expect("DescribeSnapshots")
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id().map(str::to_string))
        .min()
        .expect("a snapshot of the set")
}

/// Queues the retention of `run_id` as the run's end queues it, `sends` times (more than once:
/// a send whose answer was lost, sent again), and runs the event source until the queue is
/// empty (at most 300 s).
async fn retention_of(
    emulator: &Emulator,
    queue: &str,
    chaos: &Chaos<'_>,
    (run_id, sends): (&str, usize),
) -> Drained {
    for _ in 0..sends {
        queue_retention(emulator, queue, run_id).await;
    }
    chaos
        .drain(10, Duration::from_secs(300))
        .await
        .expect("drain")
}

#[tokio::test]
async fn a_retention_longer_than_an_invocation_goes_on_in_passes() {
    let world = World::start(2).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    // 100 servers × 3 volumes × 12 nightly sets; RETAIN_COUNT 6 leaves 6 sets to delete:
    // 1,800 DeleteSnapshot calls, more than an invocation of 20 s has time for: each takes at
    // least 20 ms here (EC2 allows about 5 a second), so a pass deletes at most 750 in the
    // 15 s before it stops, however idle the machine (the emulator alone deletes 40 to 150 a
    // second, and an idle machine once did all 1,800 in one pass). Parts of 360 recorded
    // snapshots are 10 servers: the first pass finishes its first part before its time ends.
    let ids = nightly_sets(emulator, 100, 12).await;
    let before: BTreeSet<String> = managed(emulator)
        .await
        .into_iter()
        .map(|(run, _)| run)
        .collect();
    assert_eq!(before.len(), 12);
    let metrics = Metrics::default();
    let chaos = slow_deletions(
        (emulator, queue),
        &[("RETAIN_COUNT", "6"), ("RETENTION_PART_SNAPSHOTS", "360")],
        (Duration::from_millis(20), Duration::from_secs(20)),
        &metrics,
    );
    // The first deletion of the first pass is refused for good (a permission boundary on
    // that snapshot): the rest of its set is left whole, and no later pass tries it again.
    chaos.proxy.force(
        "ec2:DeleteSnapshot",
        harness::faults::Fault::AccessDenied,
        1,
    );
    // The retention of the newest of those nights' runs.
    let newest = before.iter().max().cloned().expect("a run");
    let run_id = newest.as_str();
    let drained = retention_of(emulator, queue, &chaos, (run_id, 1)).await;
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

    // Exactly the 6 newest sets of every server are left, and the refused set whole.
    let left = managed(emulator).await;
    assert_eq!(left.len(), 1803);
    let newest: BTreeSet<String> = before.iter().rev().take(6).cloned().collect();
    let refused: BTreeSet<(String, String)> = left
        .iter()
        .filter(|(run, _)| !newest.contains(run))
        .cloned()
        .collect();
    assert_eq!(refused.len(), 1, "one set of 3 snapshots: {refused:?}");
    for id in &ids {
        let sets = left.iter().filter(|(_, instance)| instance == id).count();
        let expected = if refused.iter().any(|(_, i)| i == id) {
            21
        } else {
            18
        };
        assert_eq!(sets, expected, "{id}: 6 sets of 3 snapshots (7 if refused)");
    }
    // Each deletion tried once: the refused one is not tried again by the later passes.
    let tried = chaos.proxy.stats().calls_of("ec2:DeleteSnapshot");
    assert_eq!(tried, 1798, "1,797 deleted and 1 refused");

    // One retention line for the run, counting the deletions of every pass, and the refusal
    // of the first pass, which the last pass never saw.
    let lines = metrics.of("retention", Some(run_id));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["SnapshotsDeleted"], json!(1797));
    assert_eq!(lines[0]["DeletionsFailed"], json!(1));
    let summary = logs.messages_starting("retention: ");
    assert!(
        summary
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| {
                m.contains("1797 snapshots deleted")
                    && m.contains("1 failed (first: us-east-1/snap-")
                    && m.contains("UnauthorizedOperation")
            })),
        "{summary:#?}"
    );
}

/// The deployment's snapshots in `region` as (snapshot id, run id) pairs, by the catalog's
/// records of `instance` (not by tags, which this test rewrites).
async fn recorded_of(emulator: &Emulator, instance: &str, region: &str) -> BTreeSet<String> {
    let (sets, copies) = emulator.catalog().sets_of(instance).await.expect("catalog");
    sets.iter()
        .filter(|s| s.region == region)
        .flat_map(|s| s.snapshots.iter().map(|x| x.snapshot_id.clone()))
        .chain(
            copies
                .iter()
                .filter(|c| c.region == region)
                .map(|c| c.snapshot_id.clone()),
        )
        .collect()
}

/// Every snapshot id of the account in `region`.
async fn existing(emulator: &Emulator, region: &str) -> BTreeSet<String> {
    harness::own_snapshots(emulator, region)
        .await
        .expect("DescribeSnapshots")
        .iter()
        .filter_map(|s| s.snapshot_id().map(str::to_string))
        .collect()
}

/// `servers` servers of one volume with 5 nightly sets each, every snapshot copied to `copy`;
/// answers their instance ids.
async fn copied_nights(emulator: &Emulator, servers: usize, copy: &str) -> Vec<String> {
    let ids = seed_bulk(emulator, servers, servers, 0)
        .await
        .expect("seed");
    let made = emulator
        .seed_history(&History {
            copy_region: Some(copy.into()),
            ..History::nightly("us-east-1", &ids, 5)
        })
        .await
        .expect("history");
    assert_eq!(
        made,
        servers as u64 * 10,
        "5 snapshots a server and their copies"
    );
    ids
}

#[tokio::test]
async fn retention_a_part_of_the_fleet_at_a_time_deletes_exactly_and_a_rewritten_tag_hides_nothing()
{
    const COPY: &str = "us-west-2";
    let world = World::start(1).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    // 12 servers × 5 nightly sets × 1 volume, each copied to us-west-2: 10 recorded snapshots
    // a server, so with parts of at most 4 snapshots every server is a part of its own.
    let ids = copied_nights(emulator, 12, COPY).await;
    let runs: BTreeSet<String> = managed(emulator)
        .await
        .into_iter()
        .map(|(run, _)| run)
        .collect();
    let (oldest, newest) = (
        runs.iter().next().cloned().expect("runs"),
        runs.iter().next_back().cloned().expect("runs"),
    );
    let of_run = |instance: &str, run: &str| {
        let (instance, run) = (instance.to_string(), run.to_string());
        async move {
            let (sets, _) = emulator
                .catalog()
                .sets_of(&instance)
                .await
                .expect("catalog");
            sets.into_iter()
                .find(|s| s.run_id == run)
                .map(|s| s.snapshots[0].snapshot_id.clone())
                .expect("a recorded set")
        }
    };
    // Someone rewrites the oldest set of server 0 as server 11's (another part), and strips
    // the deployment's tags from the newest set of server 5: neither may change what
    // retention does with them.
    let moved = of_run(&ids[0], &oldest).await;
    let stripped = of_run(&ids[5], &newest).await;
    let ec2 = emulator.ec2();
    ec2.create_tags()
        .resources(&moved)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("ConsistentSnapshot:InstanceId")
                .value(&ids[11])
                .build(),
        )
        .send()
        .await
        .expect("CreateTags");
    ec2.delete_tags()
        .resources(&stripped)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("ConsistentSnapshot:ManagedBy")
                .build(),
        )
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("ConsistentSnapshot:InstanceId")
                .build(),
        )
        .send()
        .await
        .expect("DeleteTags");
    // And two snapshots nobody recorded carry the deployment's tag: one claims a recorded
    // server, one a server the catalog never heard of.
    let volume = harness::attached_volumes(emulator, &ids[3])
        .await
        .expect("volumes")
        .into_iter()
        .next()
        .map(|(v, _)| v)
        .expect("a volume");
    let mut foreign = Vec::new();
    for claims in [ids[3].as_str(), "i-0123456789abcdef0"] {
        foreign.push(
            harness::plant_snapshot(
                emulator,
                &volume,
                &[
                    ("ConsistentSnapshot:ManagedBy", MANAGED_BY),
                    ("ConsistentSnapshot:InstanceId", claims),
                    ("ConsistentSnapshot:RunId", &oldest),
                    ("AppConsistent", "True"),
                ],
            )
            .await
            .expect("CreateSnapshot"),
        );
    }
    let metrics = Metrics::default();
    let app = metrics.attach(
        world
            .app(&[
                ("RETAIN_COUNT", "2"),
                ("COPY_REGIONS", COPY),
                ("RETENTION_PART_SNAPSHOTS", "4"),
            ])
            .expect("app"),
    );
    let home_before = existing(emulator, "us-east-1").await;
    let copy_before = existing(emulator, COPY).await;

    // The dry run plans every server once, the moved and stripped snapshots as recorded.
    let dry = world
        .invoke(&app, json!({"action": "retention", "dry_run": true}))
        .await
        .expect("dry run");
    let plans = dry["plans"]
        .as_array()
        .expect("whole plans under 2,000 sets");
    assert_eq!(plans.len(), 2, "{dry}");
    for plan in plans {
        let instances = plan["instances"].as_object().expect("instances");
        assert_eq!(instances.len(), 12, "every server, once: {plan}");
        for (id, sets) in instances {
            let deleting: Vec<&str> = sets
                .as_array()
                .expect("sets")
                .iter()
                .filter(|s| s["action"] == "delete")
                .filter_map(|s| s["run_id"].as_str())
                .collect();
            assert_eq!(deleting.len(), 3, "{id}: the 3 oldest of 5 sets: {sets}");
        }
    }
    assert_eq!(
        logs.messages_starting("retention: part planned and applied")
            .len(),
        12,
        "one part a server"
    );
    assert_eq!(
        existing(emulator, "us-east-1").await,
        home_before,
        "a dry run deletes nothing"
    );

    let answer = world
        .invoke(&app, json!({"action": "retention"}))
        .await
        .expect("retention");
    assert_eq!(
        answer["deleted"].as_array().map(Vec::len),
        Some(72),
        "{answer}"
    );
    assert_eq!(
        answer["deleted_outside"],
        json!(null),
        "nothing deleted outside: {answer}"
    );
    assert_eq!(answer["instances_left"], json!(null), "{answer}");
    // Exactly the 3 oldest sets of every server are gone, at home and in the copy region.
    let home_after = existing(emulator, "us-east-1").await;
    let copy_after = existing(emulator, COPY).await;
    for id in &ids {
        assert_eq!(
            recorded_of(emulator, id, "us-east-1").await.len(),
            2,
            "{id}"
        );
        assert_eq!(recorded_of(emulator, id, COPY).await.len(), 2, "{id}");
    }
    assert_eq!(home_before.len() - home_after.len(), 36);
    assert_eq!(copy_before.len() - copy_after.len(), 36);
    assert!(
        !home_after.contains(&moved),
        "server 0's oldest set is deleted, its tag moved or not"
    );
    assert!(
        home_after.contains(&stripped),
        "server 5's newest set is kept without its tags"
    );
    assert!(
        recorded_of(emulator, &ids[5], "us-east-1")
            .await
            .contains(&stripped),
        "and still recorded: not forgotten as deleted by someone else"
    );
    for f in &foreign {
        assert!(
            home_after.contains(f),
            "a foreign snapshot is never deleted"
        );
    }
    // The two foreign snapshots are counted by both passes (the dry run emits no metrics).
    let counted: Vec<u64> = metrics
        .of("retention", None)
        .iter()
        .filter_map(|l| l["ForeignSnapshots"].as_u64())
        .collect();
    assert_eq!(counted, vec![2, 2], "{:?}", metrics.lines());
}

#[tokio::test]
async fn a_run_s_retention_out_of_time_between_parts_goes_on_after_the_last_part_it_finished_once()
{
    let world = World::start(2).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    // 16 servers × 4 sets, RETAIN_COUNT 2, parts of one server each; every DescribeSnapshots
    // takes 1.5 s, so a part takes at least that and a pass of 12 s cannot plan them all.
    let ids = seed_bulk(emulator, 16, 16, 0).await.expect("seed");
    emulator
        .seed_history(&History {
            managed_by: MANAGED_BY.into(),
            ..History::nightly("us-east-1", &ids, 4)
        })
        .await
        .expect("history");
    let runs: BTreeSet<String> = managed(emulator)
        .await
        .into_iter()
        .map(|(run, _)| run)
        .collect();
    let metrics = Metrics::default();
    let chaos = Chaos::new(
        emulator,
        queue,
        &[("RETAIN_COUNT", "2"), ("RETENTION_PART_SNAPSHOTS", "1")],
        ChaosOptions::calm(1),
    )
    .expect("chaos")
    .with_metrics(&metrics)
    .with_timeout(Duration::from_secs(12));
    chaos
        .proxy
        .set_latency_of("ec2:DescribeSnapshots", Duration::from_millis(1500));
    let newest = runs.iter().max().cloned().expect("a run");
    // The retention is queued twice: the second chain of passes ends at its first pass.
    let drained = retention_of(emulator, queue, &chaos, (&newest, 2)).await;
    assert_eq!(drained.failures, 0, "no pass ran out of time: {drained:?}");
    assert!(
        drained.invocations >= 2,
        "16 parts in one pass of 12 s: {drained:?}"
    );
    // Every server's part was planned once: a pass goes on after the last part finished.
    let planned: usize = logs
        .messages_starting("retention: part planned and applied")
        .len();
    assert_eq!(
        planned, 16,
        "each part once over {} passes",
        drained.invocations
    );
    assert_eq!(
        logs.messages_starting("retention pass already taken").len(),
        1,
        "the duplicate's chain ended at once"
    );
    let left = managed(emulator).await;
    for id in &ids {
        let sets = left.iter().filter(|(_, instance)| instance == id).count();
        assert_eq!(sets, 2, "{id}: its 2 newest sets");
    }
    let lines = metrics.of("retention", Some(&newest));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["SnapshotsDeleted"], json!(32));
}

/// A pass applies its regions at once (EC2's DeleteSnapshot budget is per region): with each
/// deletion 150 ms slow, the home region's deletions and the copy region's are in flight
/// together, one at a time in each, and exactly the expired sets go in both.
#[tokio::test]
async fn a_pass_deletes_in_every_region_at_once_one_snapshot_at_a_time_in_each() {
    const COPY: &str = "us-west-2";
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    // 10 servers × 5 nightly sets × 1 volume, each copied: RETAIN_COUNT 2 deletes 3 sets of
    // every server in each region, 30 snapshots a region.
    let ids = copied_nights(emulator, 10, COPY).await;
    let chaos = Chaos::new(
        emulator,
        &world.queue,
        &[("RETAIN_COUNT", "2"), ("COPY_REGIONS", COPY)],
        ChaosOptions::calm(5),
    )
    .expect("chaos")
    .with_timeout(Duration::from_secs(60));
    chaos
        .proxy
        .set_latency_of("ec2:DeleteSnapshot", Duration::from_millis(150));
    let home_before = existing(emulator, "us-east-1").await;
    let copy_before = existing(emulator, COPY).await;

    let Ended::Answered(answer) = chaos
        .invoke(json!({"action": "retention"}))
        .await
        .expect("retention")
    else {
        panic!("the retention must answer")
    };
    assert_eq!(
        answer["deleted"].as_array().map(Vec::len),
        Some(60),
        "{answer}"
    );
    assert_eq!(answer["unfinished"], json!(0), "{answer}");
    assert_eq!(
        home_before.len() - existing(emulator, "us-east-1").await.len(),
        30
    );
    assert_eq!(copy_before.len() - existing(emulator, COPY).await.len(), 30);
    for id in &ids {
        assert_eq!(
            recorded_of(emulator, id, "us-east-1").await.len(),
            2,
            "{id}"
        );
        assert_eq!(recorded_of(emulator, id, COPY).await.len(), 2, "{id}");
    }
    let stats = chaos.proxy.stats();
    assert_eq!(
        stats.calls_of("ec2:DeleteSnapshot"),
        60,
        "each deletion once"
    );
    assert_eq!(
        stats.peak_of("ec2:DeleteSnapshot"),
        2,
        "one at a time in each of the 2 regions, both at once: {:?}",
        stats.peak_in_flight
    );
}

/// A run's retention is planned once: a pass out of time records the deletions it planned and
/// did not do, and the passes after it do them without reading EC2 again (no describe of
/// snapshots, instances, AMIs or locks), each once. What EC2 knows better still wins: a snapshot
/// an operator locks between two passes is refused by EC2, kept, and reported as locked.
#[tokio::test]
async fn later_passes_delete_what_the_first_planned_without_reading_ec2_again() {
    let world = World::start(2).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    // 40 servers × 3 volumes × 12 nightly sets; RETAIN_COUNT 6 deletes 6 sets of each: 720
    // DeleteSnapshot calls of at least 20 ms, more than a pass of 12 s has time for. The whole
    // catalog is one part.
    let FortyServers { before, newest, .. } = forty_servers(emulator).await;
    let metrics = Metrics::default();
    let chaos = slow_deletions(
        (emulator, queue),
        &[("RETAIN_COUNT", "6")],
        (Duration::from_millis(20), Duration::from_secs(12)),
        &metrics,
    );
    let run_id = newest.iter().max().cloned().expect("a run");
    queue_retention(emulator, queue, &run_id).await;

    // The first pass: plans, deletes until its time ends, records what it left.
    let (delivered, failed) = chaos.deliver_batch(10).await.expect("first pass");
    assert_eq!((delivered.len(), failed.len()), (1, 0));
    assert_eq!(
        logs.messages_starting("deletions left recorded").len(),
        1,
        "the first pass must run out of time with deletions left"
    );
    let reads = [
        "ec2:DescribeSnapshots",
        "ec2:DescribeInstances",
        "ec2:DescribeImages",
        "ec2:DescribeLockedSnapshots",
    ];
    let first = chaos.proxy.stats();
    let read_by_first: Vec<u64> = reads.iter().map(|a| first.calls_of(a)).collect();
    assert!(read_by_first[0] > 0, "{:?}", first.calls);

    // An operator locks a snapshot of a set the first pass left whole.
    let after_first = managed(emulator).await;
    let old_sets_left: BTreeSet<(String, String)> = after_first
        .iter()
        .filter(|(run, _)| !newest.contains(run))
        .cloned()
        .collect();
    let whole = old_sets_left
        .iter()
        .find(|set| after_first.iter().filter(|s| s == set).count() == 3)
        .cloned()
        .expect("a set the first pass did not reach");
    let locked_id = a_snapshot_of(emulator, &whole.0, &whole.1).await;
    emulator
        .lock_snapshot(&locked_id, 1)
        .await
        .expect("LockSnapshot");

    let drained = chaos
        .drain(10, Duration::from_secs(300))
        .await
        .expect("drain");
    assert_eq!(drained.failures, 0, "{drained:?}");
    assert!(!logs
        .messages_starting("retention: deleting what the pass before planned")
        .is_empty());

    // Nothing read again after the first pass, but the one lock looked up on EC2's refusal.
    let stats = chaos.proxy.stats();
    let read_after: Vec<u64> = reads
        .iter()
        .zip(&read_by_first)
        .map(|(a, n)| stats.calls_of(a) - n)
        .collect();
    assert_eq!(read_after, vec![0, 0, 0, 1], "{:?}", stats.calls);

    // Exactly the 6 newest sets of every server are left, and what the lock holds.
    let left = managed(emulator).await;
    assert!(
        left.iter().all(|s| newest.contains(&s.0) || *s == whole),
        "{left:?}"
    );
    assert_eq!(
        left.iter().filter(|s| newest.contains(&s.0)).count(),
        720,
        "6 sets of 3 snapshots of 40 servers"
    );
    let held = left.iter().filter(|s| **s == whole).count();
    assert!((1..=3).contains(&held), "{held}");
    assert!(
        emulator
            .ec2()
            .describe_snapshots()
            .snapshot_ids(&locked_id)
            .send()
            .await
            .is_ok(),
        "the locked snapshot is kept"
    );
    // Each deletion tried once: those done, and the one EC2 refused.
    let deleted = before.len() - left.len();
    assert_eq!(stats.calls_of("ec2:DeleteSnapshot"), deleted as u64 + 1);
    let lines = metrics.of("retention", Some(&run_id));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["SnapshotsDeleted"], json!(deleted));
    assert_eq!(lines[0]["DeletionsLocked"], json!(1), "{lines:?}");
    // The last pass's summary counts what the first planned (40 servers × 12 sets), not the
    // few sets it did itself.
    assert_retention_line(
        logs,
        &format!("retention: 480 sets in 1 region(s), {deleted} snapshots deleted, 1 held by a snapshot lock"),
    );
}

/// A run's retention plans its parts ahead of their deletions: the first pass plans every part
/// of the fleet over one read of the instances, the AMIs and the locks, and the deletions
/// (more than a pass has time for) follow pass after pass from the record, each once, without
/// any of them read again. Planned and deleted part by part, each part would wait for the
/// deletions of the one before and be planned by a pass of its own, reading them again.
#[tokio::test]
async fn a_run_s_retention_plans_every_part_before_deleting_and_reads_the_fleet_once() {
    let world = World::start(2).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    // 40 servers × 3 volumes × 12 nightly sets in parts of 360 recorded snapshots (10
    // servers): 4 parts. RETAIN_COUNT 6 deletes 6 sets of each: 720 DeleteSnapshot calls of
    // at least 50 ms, 36 s, three times a pass of 12 s.
    let FortyServers {
        ids,
        before,
        newest,
        ..
    } = forty_servers(emulator).await;
    let metrics = Metrics::default();
    let chaos = slow_deletions(
        (emulator, queue),
        &[("RETAIN_COUNT", "6"), ("RETENTION_PART_SNAPSHOTS", "360")],
        (Duration::from_millis(50), Duration::from_secs(12)),
        &metrics,
    );
    let run_id = newest.iter().max().cloned().expect("a run");
    queue_retention(emulator, queue, &run_id).await;

    // The first pass plans the 4 parts, then deletes until its time ends.
    let (delivered, failed) = chaos.deliver_batch(10).await.expect("first pass");
    assert_eq!((delivered.len(), failed.len()), (1, 0));
    assert_eq!(
        logs.messages_starting("retention: part planned and applied")
            .len(),
        4,
        "every part planned by the first pass"
    );
    assert_eq!(
        logs.messages_starting("deletions left recorded").len(),
        1,
        "the first pass must run out of time with deletions left"
    );
    let drained = chaos
        .drain(10, Duration::from_secs(300))
        .await
        .expect("drain");
    assert_eq!(drained.failures, 0, "{drained:?}");
    assert!(drained.invocations >= 2, "{drained:?}");

    // Each part planned once, and the fleet, the AMIs and the locks read once: by the first
    // pass, for all of them.
    assert_eq!(
        logs.messages_starting("retention: part planned and applied")
            .len(),
        4
    );
    let stats = chaos.proxy.stats();
    let reads: Vec<u64> = [
        "ec2:DescribeInstances",
        "ec2:DescribeImages",
        "ec2:DescribeLockedSnapshots",
    ]
    .iter()
    .map(|a| stats.calls_of(a))
    .collect();
    assert_eq!(reads, vec![1, 1, 1], "{:?}", stats.calls);

    // Exactly the 6 newest sets of every server are left, each deletion tried once.
    let left = managed(emulator).await;
    assert!(left.iter().all(|s| newest.contains(&s.0)), "{left:?}");
    for id in &ids {
        let sets = left.iter().filter(|(_, instance)| instance == id).count();
        assert_eq!(sets, 18, "{id}: 6 sets of 3 snapshots");
    }
    assert_eq!(before.len() - left.len(), 720);
    assert_eq!(
        stats.calls_of("ec2:DeleteSnapshot"),
        720,
        "each deletion once"
    );
    let lines = metrics.of("retention", Some(&run_id));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["SnapshotsDeleted"], json!(720));
    assert_eq!(lines[0]["DeletionsFailed"], json!(0));
    assert_retention_line(
        logs,
        "retention: 480 sets in 1 region(s), 720 snapshots deleted",
    );
}

/// A deletion that fails for a reason that may pass (EC2 answers 500 through every attempt of
/// the SDK) in a pass that leaves deletions for the next is tried again by that next pass, with
/// the rest of its set: every expired set goes, the run's retention counts nothing failed, and
/// no one waits for the next night (before, it was counted in the alarmed `DeletionsFailed` and
/// its set kept, part deleted, until the next run).
#[tokio::test]
async fn a_deletion_that_fails_for_a_reason_that_may_pass_is_tried_again_by_the_next_pass() {
    let world = World::start(2).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    // 40 servers × 3 volumes × 12 nightly sets; RETAIN_COUNT 6 deletes 720 snapshots of at
    // least 20 ms each, more than a pass of 20 s has time for.
    let FortyServers {
        ids, runs, newest, ..
    } = forty_servers(emulator).await;
    let oldest = runs.iter().min().cloned().expect("a run");
    let first = ids.iter().min().cloned().expect("a server");
    // A snapshot of the first server's oldest set: EC2 answers 500 to its deletion through
    // the SDK's 5 attempts, once.
    let failing = a_snapshot_of(emulator, &oldest, &first).await;
    let metrics = Metrics::default();
    let chaos = slow_deletions(
        (emulator, queue),
        &[("RETAIN_COUNT", "6")],
        (Duration::from_millis(20), Duration::from_secs(20)),
        &metrics,
    );
    chaos.proxy.force_matching(
        "ec2:DeleteSnapshot",
        &failing,
        harness::faults::Fault::ServerError,
        5,
    );
    let run_id = newest.iter().max().cloned().expect("a run");
    let drained = retention_of(emulator, queue, &chaos, (&run_id, 1)).await;
    assert_eq!(drained.failures, 0, "{drained:?}");

    // Every expired set is gone, the failed one's too; each deletion done once, the failing
    // one after its 5 refused attempts.
    let left = managed(emulator).await;
    assert!(left.iter().all(|s| newest.contains(&s.0)), "{left:?}");
    assert_eq!(left.len(), 720, "6 sets of 3 snapshots of 40 servers");
    assert_eq!(chaos.proxy.stats().calls_of("ec2:DeleteSnapshot"), 720 + 5);
    let lines = metrics.of("retention", Some(&run_id));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["SnapshotsDeleted"], json!(720));
    assert_eq!(lines[0]["DeletionsFailed"], json!(0), "{lines:?}");
    assert_eq!(
        logs.messages_starting("deletion failed for a reason that may pass")
            .len(),
        1
    );
}
