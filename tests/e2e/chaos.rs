//! Chaos: a 50-instance fleet, copied to a second region, run once with no faults and once
//! with a fifth of all AWS calls faulted, every SQS message delivered twice at once, invocations stopped at random AWS calls
//! and the schedule delivered twice. The end state must be the same.
//!
//! Seeded: `CHAOS_SEED`, `CHAOS_FAULT_RATE` and `CHAOS_STOP_SHARE` replay or vary a run;
//! `CHAOS_LOG=<file>` keeps the function's log.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use consistent_snapshot::OutcomeKind;
use harness::chaos::{Chaos, ChaosLog, ChaosOptions};
use harness::faults::{Fault, ProxyStats};
use harness::{
    commands_per_instance, invoke, peek_bodies, queue_depth, run_snapshots, scheduled_event,
    seed_bulk, snapshot_tag, Emulator, Logs, World,
};

const FLEET: usize = 50;
const DATA_VOLUMES: usize = 2;
const COPY_REGION: &str = "eu-west-1";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What an operator checks after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EndState {
    /// Instances the summary accounts for, and how each ended.
    outcomes: BTreeMap<String, OutcomeKind>,
    /// Instances with exactly one SSM command of the run.
    one_command: usize,
    /// The most commands any instance got.
    max_commands: usize,
    /// Instances whose snapshot set covers each volume exactly once.
    one_set: usize,
    snapshots: usize,
    summaries: usize,
    /// Copies of the run's snapshots in the copy region, and the most of one source.
    copies: usize,
    max_copies_of_one: usize,
}

async fn end_state(emulator: &Emulator, logs: &Logs, run_id: &str) -> EndState {
    let per = commands_per_instance(&emulator.invocations().expect("invocations"), run_id);
    let snapshots = run_snapshots(emulator, run_id).await.expect("snapshots");
    let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &snapshots {
        let instance = snapshot_tag(s, "ConsistentSnapshot:InstanceId").unwrap_or("untagged");
        sets.entry(instance.to_string())
            .or_default()
            .push(s.volume_id().unwrap_or_default().to_string());
    }
    let one_set = sets
        .values()
        .filter(|volumes| {
            let distinct: BTreeSet<&String> = volumes.iter().collect();
            volumes.len() == 1 + DATA_VOLUMES && distinct.len() == volumes.len()
        })
        .count();
    let reports = logs.run_reports(run_id);
    let copies = harness::snapshots_where(
        &emulator.ec2_in(COPY_REGION),
        ("tag:ConsistentSnapshot:RunId", run_id),
    )
    .await;
    let mut per_source: BTreeMap<String, usize> = BTreeMap::new();
    for copy in &copies {
        let source = snapshot_tag(copy, "ConsistentSnapshot:SourceSnapshotId").unwrap_or("none");
        *per_source.entry(source.to_string()).or_default() += 1;
    }
    EndState {
        copies: copies.len(),
        max_copies_of_one: per_source.values().copied().max().unwrap_or(0),
        outcomes: reports
            .first()
            .map(|r| {
                r.outcomes
                    .iter()
                    .map(|o| (o.instance_id.clone(), o.kind))
                    .collect()
            })
            .unwrap_or_default(),
        one_command: per.values().filter(|n| **n == 1).count(),
        max_commands: per.values().copied().max().unwrap_or(0),
        one_set,
        snapshots: snapshots.len(),
        summaries: reports.len(),
    }
}

/// Messages handed back untried, and dispatches taken over by a watch, logged so far.
fn recoveries(logs: &Logs) -> (usize, usize) {
    (
        logs.messages_starting("message handed back").len(),
        logs.messages_starting("watch: the run's dispatch was interrupted")
            .len(),
    )
}

fn table(
    calm: &EndState,
    chaos: &EndState,
    times: (Duration, Duration),
    log: &ChaosLog,
    stats: &ProxyStats,
    recoveries: ((usize, usize), (usize, usize)),
) -> String {
    let ((calm_back, calm_takeovers), (handed_back, takeovers)) = recoveries;
    let consistent = |s: &EndState| {
        s.outcomes
            .values()
            .filter(|k| **k == OutcomeKind::Consistent)
            .count()
    };
    let faults = |f: Fault| stats.faults.get(&f).copied().unwrap_or(0);
    let calls: u64 = stats.calls.values().sum();
    let rows: Vec<(&str, String, String)> = vec![
        (
            "instances in the summary",
            calm.outcomes.len().to_string(),
            chaos.outcomes.len().to_string(),
        ),
        (
            "consistent",
            consistent(calm).to_string(),
            consistent(chaos).to_string(),
        ),
        (
            "instances with one SSM command",
            calm.one_command.to_string(),
            chaos.one_command.to_string(),
        ),
        (
            "most commands on one instance",
            calm.max_commands.to_string(),
            chaos.max_commands.to_string(),
        ),
        (
            "instances with one snapshot set",
            calm.one_set.to_string(),
            chaos.one_set.to_string(),
        ),
        (
            "snapshots",
            calm.snapshots.to_string(),
            chaos.snapshots.to_string(),
        ),
        (
            "copies in the copy region",
            calm.copies.to_string(),
            chaos.copies.to_string(),
        ),
        (
            "most copies of one snapshot",
            calm.max_copies_of_one.to_string(),
            chaos.max_copies_of_one.to_string(),
        ),
        (
            "summaries written",
            calm.summaries.to_string(),
            chaos.summaries.to_string(),
        ),
        ("AWS calls by the function", "-".into(), calls.to_string()),
        (
            "faults: throttled / 500 / dropped before / after",
            "-".into(),
            format!(
                "{} / {} / {} / {}",
                faults(Fault::Throttled),
                faults(Fault::ServerError),
                faults(Fault::DroppedBefore),
                faults(Fault::DroppedAfter)
            ),
        ),
        (
            "faults on SendCommand / CopySnapshot / the catalog",
            "-".into(),
            format!(
                "{} / {} / {}",
                stats.send_command_faults, stats.copy_snapshot_faults, stats.catalog_faults
            ),
        ),
        (
            "invocations / stopped / timed out / errors",
            "-".into(),
            format!(
                "{} / {} / {} / {}",
                log.invocations, log.stopped, log.timed_out, log.errors
            ),
        ),
        (
            "messages handed back untried / dispatch takeovers",
            format!("{calm_back} / {calm_takeovers}"),
            format!("{handed_back} / {takeovers}"),
        ),
        (
            "schedule deliveries / message deliveries",
            "1 / -".into(),
            format!("{} / {}", log.schedule_deliveries, log.message_deliveries),
        ),
        (
            "convergence",
            format!("{:.1} s", times.0.as_secs_f64()),
            format!("{:.1} s", times.1.as_secs_f64()),
        ),
    ];
    let mut out = format!("{:<50} {:>12} {:>22}\n", "", "fault-free", "chaos");
    for (name, a, b) in rows {
        out.push_str(&format!("{name:<50} {a:>12} {b:>22}\n"));
    }
    out
}

#[tokio::test]
async fn chaos_ends_in_the_same_state_as_a_fault_free_run() {
    let seed: u64 = env_or("CHAOS_SEED", 20_261_123);
    let options = ChaosOptions {
        fault_rate: env_or("CHAOS_FAULT_RATE", 0.2),
        duplicate_messages: true,
        stop_share: env_or("CHAOS_STOP_SHARE", 0.15),
        max_stop_call: 24,
        seed,
    };
    // CHAOS_LOG=<file> keeps the function's JSON log of the whole test.
    let log_file = std::env::var("CHAOS_LOG")
        .ok()
        .map(std::path::PathBuf::from);
    let world = World::start_logging_to(3, log_file.as_deref())
        .await
        .expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    let ids = seed_bulk(emulator, FLEET, 10, DATA_VOLUMES)
        .await
        .expect("seed");

    // The fault-free run. Retention goes a few servers a part (30 recorded snapshots: 25
    // parts), the path of a large fleet, under the same faults and duplicates as the rest
    // (the other tests run the one-part path); `CHAOS_PART_SNAPSHOTS` changes it.
    let part = std::env::var("CHAOS_PART_SNAPSHOTS").unwrap_or_else(|_| "30".into());
    let settings = [
        ("COPY_REGIONS", COPY_REGION),
        ("RETENTION_PART_SNAPSHOTS", part.as_str()),
    ];
    let app = world.app(&settings).expect("app");
    let started = Instant::now();
    let calm_start = invoke(&app, scheduled_event("nightly", "2026-11-23T00:00:00Z"))
        .await
        .expect("fault-free run");
    let calm_run = calm_start["run_id"].as_str().expect("run id").to_string();
    world.drain(&app).await.expect("fault-free drain");
    let calm_time = started.elapsed();
    let calm = end_state(emulator, logs, &calm_run).await;
    let calm_recoveries = recoveries(logs);

    // The same fleet, the next night, in a hostile world.
    // Each invocation is held to 10 s (a twelfth of the template's 120 s): a deadline every
    // long step meets, short enough that the pacing and the hand-backs are exercised.
    let chaos = Chaos::new(emulator, queue, &settings, options)
        .expect("chaos")
        .with_timeout(Duration::from_secs(10));
    let event = scheduled_event("nightly", "2026-11-24T00:00:00Z");
    let started = Instant::now();
    let answers = chaos
        .schedule(&event)
        .await
        .expect("schedule delivered twice");
    let chaos_run = answers[0]["run_id"].as_str().expect("run id").to_string();
    chaos
        .drain(10, Duration::from_secs(1200))
        .await
        .expect("chaos drain");
    let chaos_time = started.elapsed();
    let hostile = end_state(emulator, logs, &chaos_run).await;

    let stats = chaos.proxy.stats();
    let log = chaos.log();
    let (back, takeovers) = recoveries(logs);
    let chaos_recoveries = (back - calm_recoveries.0, takeovers - calm_recoveries.1);
    println!(
        "chaos: seed {seed}, fault rate {}, stop share {}\n{}",
        options.fault_rate,
        options.stop_share,
        table(
            &calm,
            &hostile,
            (calm_time, chaos_time),
            &log,
            &stats,
            (calm_recoveries, chaos_recoveries)
        )
    );

    // The fault-free run is what an operator expects…
    assert_eq!(calm.outcomes.len(), FLEET);
    assert!(ids
        .iter()
        .all(|id| calm.outcomes.get(id) == Some(&OutcomeKind::Consistent)));
    assert_eq!(calm.one_command, FLEET);
    assert_eq!(calm.one_set, FLEET);
    assert_eq!(calm.summaries, 1);
    assert_eq!((calm.copies, calm.max_copies_of_one), (calm.snapshots, 1));
    // …and chaos changes nothing of it.
    assert_eq!(hostile, calm, "seed {seed}: the end states differ");
    // The hostility was real.
    let faults: u64 = stats.faults.values().sum();
    assert!(
        faults > 0 && log.message_deliveries > 0,
        "{stats:?} {log:?}"
    );
    // The catalog (claims, manifest, set records) was faulted like every other service.
    assert!(stats.catalog_faults > 0, "{stats:?}");
    // Nothing was deleted, the first night's sets are intact, nothing went to the DLQ.
    assert!(!stats.calls.contains_key("ec2:DeleteSnapshot"));
    assert_eq!(
        run_snapshots(emulator, &calm_run)
            .await
            .expect("snapshots")
            .len(),
        calm.snapshots
    );
    let dead = peek_bodies(emulator, "tracking-dlq").await.expect("dlq");
    assert!(dead.is_empty(), "{} in the DLQ: {dead:#?}", dead.len());
    assert_eq!(queue_depth(emulator, "tracking-dlq").await.expect("dlq"), 0);
}
