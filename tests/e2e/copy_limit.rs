//! Copies at the destination's limit: a fleet copied to a region that takes at most 20 copies
//! in flight, each taking a while, as EBS does. Every copy is made once and within the copy
//! deadline, never more than 20 at a time; and while a server's copy set is partial (some of
//! its copies done, the others not started yet), it is not counted as a consistent backup
//! there: retention keeps the last complete one.
//!
//! `COPY_LIMIT_FLEET=<n>` runs it on a larger fleet (the 1,500 servers).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use harness::{
    drain_with, invoke_within, own_snapshots, scheduled_event, seed_bulk, snapshot_tag, Ebs,
    Emulator, Metrics, World,
};
use serde_json::{json, Value};

const COPY_REGION: &str = "eu-west-1";
const LIMIT: u32 = 20;
const DATA_VOLUMES: usize = 2;
const DEADLINE_SECONDS: u64 = 7_200;

/// Per instance, its copies of `run_id` in the copy region: (completed, pending).
async fn copies_of_run(emulator: &Emulator, run_id: &str) -> BTreeMap<String, (usize, usize)> {
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for s in own_snapshots(emulator, COPY_REGION).await.expect("copies") {
        if snapshot_tag(&s, "ConsistentSnapshot:RunId") != Some(run_id) {
            continue;
        }
        let instance = snapshot_tag(&s, "ConsistentSnapshot:InstanceId").unwrap_or("untagged");
        let entry = per.entry(instance.to_string()).or_default();
        match s.state().map(|st| st.as_str()) {
            Some("completed") => entry.0 += 1,
            _ => entry.1 += 1,
        }
    }
    per
}

/// What the retention dry run plans for `instance`'s sets in the copy region: (run id, kind,
/// action) of each.
fn copy_region_plan(dry_run: &Value, instance: &str) -> Vec<(String, String, String)> {
    dry_run["plans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["region"] == COPY_REGION)
        .flat_map(|p| {
            p["instances"][instance]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|set| {
            let text = |k: &str| set[k].as_str().unwrap_or_default().to_string();
            (text("run_id"), text("kind"), text("action"))
        })
        .collect()
}

#[tokio::test]
async fn copies_at_the_regions_limit_all_land_and_a_partial_set_never_counts() {
    let fleet: usize = std::env::var("COPY_LIMIT_FLEET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let copies = fleet * (1 + DATA_VOLUMES);
    // The function's timeout: the tests' 6 s up to 100 servers, more beyond (the emulator is
    // slower than EC2 at a large fleet). The copy deadline is two hours (a twelfth of the
    // default day): every copy must land before it, and the drain may take until then.
    let timeout = Duration::from_secs((fleet as u64 / 16).max(6));
    let limit = Duration::from_secs(if fleet > 100 { DEADLINE_SECONDS } else { 600 });
    let world = World::start(3).await.expect("world");
    let (emulator, queue) = (&world.emulator, &world.queue);
    let metrics = Metrics::default();
    let ids = seed_bulk(emulator, fleet, 10, DATA_VOLUMES)
        .await
        .expect("seed");
    let deadline = DEADLINE_SECONDS.to_string();
    // Passes back off to 20 s, one that meets the limit comes back
    // after 3 s; one set a night is kept.
    let settings = [
        ("COPY_REGIONS", COPY_REGION),
        ("RETAIN_COUNT", "1"),
        ("TRACK_POLL_MAX_SECONDS", "20"),
        ("SNAPSHOT_COMPLETION_TIMEOUT_SECONDS", &deadline),
    ];
    let app = metrics.attach(world.app(&settings).expect("app"));

    // The first night copies freely: every server has a complete copy set.
    let night = |time: &'static str| invoke_within(&app, scheduled_event("nightly", time), timeout);
    let first = night("2026-11-23T00:00:00Z").await.expect("first night");
    let first = first["run_id"].as_str().expect("run id").to_string();
    drain_with(emulator, queue, 10, limit, |event| {
        invoke_within(&app, event, timeout)
    })
    .await
    .expect("first night drained");
    let first_copies = copies_of_run(emulator, &first).await;
    assert_eq!(first_copies.len(), fleet);
    assert!(first_copies.values().all(|c| *c == (1 + DATA_VOLUMES, 0)));

    // The second night meets EBS's limit: 20 copies in flight into the region, 1.5 s each.
    emulator
        .simulate_ebs(&Ebs {
            copy_limit: Some(LIMIT),
            copy_seconds: Some(1.5),
            ..Ebs::default()
        })
        .expect("EBS simulation");
    let started = Instant::now();
    let answer = night("2026-11-24T00:00:00Z").await.expect("second night");
    let second = answer["run_id"].as_str().expect("run id").to_string();
    // Before each invocation (the last copies started are completed by then: each takes
    // 1.5 s, and a pass follows the one before after at least 2 s): once some server's copies
    // are partial (some completed, none pending, the others not started), what retention
    // would do then.
    let partial: Mutex<Option<(BTreeSet<String>, Value)>> = Mutex::new(None);
    let drained = drain_with(emulator, queue, 10, limit, |event| {
        let (app, partial, second) = (&app, &partial, &second);
        async move {
            if partial.lock().map(|p| p.is_none()).unwrap_or(false) {
                let partial_now: BTreeSet<String> = copies_of_run(emulator, second)
                    .await
                    .into_iter()
                    .filter(|(_, (done, pending))| {
                        *pending == 0 && *done > 0 && *done < 1 + DATA_VOLUMES
                    })
                    .map(|(instance, _)| instance)
                    .collect();
                if !partial_now.is_empty() {
                    // Those servers' plan: a large fleet's whole plan is cut to its deletions.
                    let dry_run = json!({
                        "action": "retention",
                        "dry_run": true,
                        "instance_ids": partial_now.iter().take(1_000).collect::<Vec<_>>(),
                    });
                    let plan = invoke_within(app, dry_run, timeout).await?;
                    if let Ok(mut p) = partial.lock() {
                        *p = Some((partial_now, plan));
                    }
                }
            }
            invoke_within(app, event, timeout).await
        }
    })
    .await
    .expect("second night drained");
    let took = started.elapsed();

    // Every copy made, once, within the deadline; never more than the limit in flight.
    let second_copies = copies_of_run(emulator, &second).await;
    assert_eq!(second_copies.len(), fleet, "{second_copies:?}");
    assert!(
        second_copies.values().all(|c| *c == (1 + DATA_VOLUMES, 0)),
        "{second_copies:?}"
    );
    let stats = emulator.copy_stats().expect("copy stats");
    let region = stats.get(COPY_REGION).cloned().unwrap_or_default();
    assert!(region.max_in_flight <= LIMIT, "{region:?}");
    assert!(
        region.refused > 0,
        "the limit was met (else this test shows nothing): {region:?}"
    );
    let summary = metrics.of("copies", Some(&second));
    assert_eq!(summary.len(), 1, "one copy summary: {summary:#?}");
    assert_eq!(summary[0]["SnapshotsCopied"], copies);
    assert_eq!(summary[0]["CopiesTimedOut"], 0);
    assert_eq!(summary[0]["CopiesNotStarted"], 0);
    assert_eq!(summary[0]["CopiesFailed"], 0);

    // Half-way, a partial copy set was not a consistent backup: the complete set of the night
    // before was kept for each of those servers.
    let (partial, plan) = partial
        .into_inner()
        .ok()
        .flatten()
        .expect("some server's copies were partial half-way");
    for instance in &partial {
        let sets = copy_region_plan(&plan, instance);
        let of = |run: &str| sets.iter().find(|(r, _, _)| r == run).cloned();
        let (_, kind, _) = of(&second).expect("the partial set is planned");
        assert_ne!(kind, "consistent", "{instance}: {sets:?}");
        let (_, _, action) = of(&first).expect("the first night's set is planned");
        assert_eq!(action, "keep", "{instance}: {sets:?}");
    }

    // At the end, the second night's complete sets replaced the first's everywhere.
    let left = copies_of_run(emulator, &first).await;
    assert!(
        left.is_empty(),
        "the first night's copies are gone: {left:?}"
    );
    println!(
        "copies at the limit: {fleet} servers, {copies} copies, {} refused at the limit, at most {} in flight, {} partial servers half-way, drained in {:.1} s ({} invocations)",
        region.refused,
        region.max_in_flight,
        partial.len(),
        took.as_secs_f64(),
        drained.invocations
    );
    assert!(ids.len() == fleet);
}

/// A large night's copies (more than one DescribeSnapshots call by id holds) are looked at
/// from the run's listing in the copy region; the listing only chooses what is read: a copy
/// whose run tag someone removed while it was pending is still looked at, by its id, seen
/// completed and counted, and never copied a second time.
#[tokio::test]
async fn a_large_nights_copies_are_looked_at_by_the_runs_tag_and_an_untagged_one_by_its_id() {
    // 70 servers × 3 volumes: 210 copies, two calls by id, one page of the listing.
    const FLEET: usize = 70;
    let copies = FLEET * (1 + DATA_VOLUMES);
    let world = World::start(3).await.expect("world");
    let (emulator, queue) = (&world.emulator, &world.queue);
    let metrics = Metrics::default();
    seed_bulk(emulator, FLEET, 10, DATA_VOLUMES)
        .await
        .expect("seed");
    let app = metrics.attach(
        world
            .app(&[("COPY_REGIONS", COPY_REGION), ("RETAIN_COUNT", "1")])
            .expect("app"),
    );
    // Copies stay pending for 4 s: the copy step's looks find them unfinished.
    emulator
        .simulate_ebs(&Ebs {
            copy_seconds: Some(4.0),
            ..Ebs::default()
        })
        .expect("EBS simulation");
    let timeout = Duration::from_secs(20);
    let answer = invoke_within(
        &app,
        scheduled_event("nightly", "2026-11-23T00:00:00Z"),
        timeout,
    )
    .await
    .expect("the night");
    let run_id = answer["run_id"].as_str().expect("run id").to_string();
    // Before each invocation, once: the run tag of one pending copy is removed.
    let untagged: Mutex<Option<String>> = Mutex::new(None);
    drain_with(emulator, queue, 10, Duration::from_secs(300), |event| {
        let (app, untagged, run_id) = (&app, &untagged, &run_id);
        async move {
            if untagged.lock().map(|u| u.is_none()).unwrap_or(false) {
                let pending = own_snapshots(emulator, COPY_REGION)
                    .await?
                    .into_iter()
                    .find(|s| {
                        snapshot_tag(s, "ConsistentSnapshot:RunId") == Some(run_id.as_str())
                            && s.state().map(|st| st.as_str()) == Some("pending")
                    });
                if let Some(id) = pending.and_then(|s| s.snapshot_id().map(str::to_string)) {
                    emulator
                        .ec2_in(COPY_REGION)
                        .delete_tags()
                        .resources(&id)
                        .tags(
                            aws_sdk_ec2::types::Tag::builder()
                                .key("ConsistentSnapshot:RunId")
                                .build(),
                        )
                        .send()
                        .await?;
                    if let Ok(mut u) = untagged.lock() {
                        *u = Some(id);
                    }
                }
            }
            invoke_within(app, event, timeout).await
        }
    })
    .await
    .expect("the night drained");
    let untagged = untagged
        .into_inner()
        .ok()
        .flatten()
        .expect("a copy was still pending when the copy step looked");

    // Every copy made once, the untagged one too; all completed and counted.
    let made: Vec<_> = own_snapshots(emulator, COPY_REGION)
        .await
        .expect("copies")
        .into_iter()
        .filter(|s| snapshot_tag(s, "ConsistentSnapshot:ManagedBy").is_some())
        .collect();
    let sources: BTreeSet<&str> = made
        .iter()
        .filter_map(|s| snapshot_tag(s, "ConsistentSnapshot:SourceSnapshotId"))
        .collect();
    assert_eq!(made.len(), copies, "one copy per snapshot of the night");
    assert_eq!(sources.len(), copies, "no snapshot copied twice");
    let copy = made
        .iter()
        .find(|s| s.snapshot_id() == Some(untagged.as_str()))
        .expect("the untagged copy is kept");
    assert_eq!(snapshot_tag(copy, "ConsistentSnapshot:RunId"), None);
    assert_eq!(copy.state().map(|s| s.as_str()), Some("completed"));
    let summary = metrics.of("copies", Some(&run_id));
    assert_eq!(summary.len(), 1, "one copy summary: {summary:#?}");
    assert_eq!(summary[0]["SnapshotsCopied"], copies);
    assert_eq!(summary[0]["CopiesTimedOut"], 0);
    assert_eq!(summary[0]["CopiesFailed"], 0);
}
