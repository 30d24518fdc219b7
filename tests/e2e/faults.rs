//! The fault matrix: one row per fault that used to stop the whole fleet. Each row runs the
//! same small fleet with the fault forced for good, then checks what an operator checks: the
//! rest of the fleet ends as in a clean run, the fault is named with its AWS code in the step's
//! log line, its metric is emitted, and the messages it cost stay under a bound.
//!
//! Rows (more join them as their faults are contained):
//! - a copy region that refuses every CopySnapshot (a permission, a KMS key, an SCP);
//! - a copy region whose snapshots cannot even be read (a region not enabled);
//! - an instance tag naming a copy region outside `COPY_REGIONS_ALLOWED` (a stray tag).

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
        let started = chaos
            .schedule(&scheduled_event("nightly", "2026-11-23T00:00:00Z"))
            .await
            .expect("schedule");
        let run_id = started[0]["run_id"].as_str().expect("run id").to_string();
        let drained = chaos
            .drain(10, Duration::from_secs(120))
            .await
            .expect("drain");
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
    let started = chaos
        .schedule(&scheduled_event("nightly", "2026-11-23T00:00:00Z"))
        .await
        .expect("schedule");
    let run_id = started[0]["run_id"].as_str().expect("run id").to_string();
    chaos
        .drain(10, Duration::from_secs(120))
        .await
        .expect("drain");
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
