//! End to end: boot-volume exclusion, a fleet larger than one SendCommand, pagination.

use std::collections::HashMap;
use std::time::Duration;

use consistent_snapshot::OutcomeKind;
use harness::{invoke, run_snapshots, scheduled_event, seed_bulk, snapshot_tag, ServerSpec, World};

#[tokio::test]
async fn exclude_boot_volume_by_setting_and_by_instance_tag() {
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let keeps_boot =
        ServerSpec::windows("keepsboot01", 2).tag("ConsistentSnapshot:ExcludeBootVolume", "False");
    let bad_tag =
        ServerSpec::windows("badtag01", 1).tag("ConsistentSnapshot:ExcludeBootVolume", "perhaps");
    let servers = vec![ServerSpec::windows("data01", 2), keeps_boot, bad_tag];
    let ids = world.seed(&servers).await.expect("seed");

    let app = world.app(&[("EXCLUDE_BOOT_VOLUME", "true")]).expect("app");
    let start = invoke(&app, scheduled_event("nightly", "2026-11-23T01:00:00Z"))
        .await
        .expect("run");
    let run_id = start["run_id"].as_str().expect("run id").to_string();
    world
        .drain_within(&app, Duration::from_secs(60))
        .await
        .expect("drain");

    let snapshots = run_snapshots(emulator, &run_id)
        .await
        .expect("DescribeSnapshots");
    let devices = |id: &str| -> Vec<String> {
        let mut d: Vec<String> = snapshots
            .iter()
            .filter(|s| snapshot_tag(s, "ConsistentSnapshot:InstanceId") == Some(id))
            .filter_map(|s| snapshot_tag(s, "Device").map(str::to_string))
            .collect();
        d.sort();
        d
    };
    assert_eq!(
        devices(&ids[0]),
        vec!["xvdf", "xvdg"],
        "boot volume excluded by EXCLUDE_BOOT_VOLUME"
    );
    assert_eq!(
        devices(&ids[1]),
        vec!["/dev/sda1", "xvdf", "xvdg"],
        "the instance tag overrides the setting"
    );
    assert!(devices(&ids[2]).is_empty());

    let report = logs.run_report(&run_id).expect("report");
    let kind = |id: &str| {
        report
            .outcomes
            .iter()
            .find(|o| o.instance_id == id)
            .map(|o| o.kind)
    };
    assert_eq!(kind(&ids[0]), Some(OutcomeKind::Consistent));
    assert_eq!(kind(&ids[1]), Some(OutcomeKind::Consistent));
    assert_eq!(
        kind(&ids[2]),
        Some(OutcomeKind::Skipped),
        "an invalid override is reported, never guessed"
    );
    let reason = report
        .outcomes
        .iter()
        .find(|o| o.instance_id == ids[2])
        .and_then(|o| o.reason.clone());
    assert!(reason.unwrap_or_default().contains("perhaps"));

    // The two parameter sets went out as two commands.
    let invocations = emulator.invocations().expect("invocations");
    let excluded: HashMap<String, String> = invocations
        .iter()
        .map(|i| {
            (
                i["instance_id"].as_str().unwrap_or_default().to_string(),
                i["parameters"]["ExcludeBootVolume"][0]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(excluded.get(&ids[0]).map(String::as_str), Some("True"));
    assert_eq!(excluded.get(&ids[1]).map(String::as_str), Some("False"));
}

#[tokio::test]
async fn a_fleet_of_120_goes_out_in_commands_of_at_most_50_across_paginated_describes() {
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    // 24 reservations of 5 and a page size of 5: DescribeInstances must follow 5 pages (moto
    // pages by reservation), so a run that ignored NextToken would miss 95 instances.
    let ids = seed_bulk(emulator, 120, 5, 1).await.expect("seed");
    let app = world.app(&[("DESCRIBE_PAGE_SIZE", "5")]).expect("app");

    let start = invoke(&app, scheduled_event("nightly", "2026-11-23T02:00:00Z"))
        .await
        .expect("run");
    let run_id = start["run_id"].as_str().expect("run id").to_string();
    assert_eq!(start["dispatched"].as_array().map(Vec::len), Some(120));
    let commands = start["commands"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_default();
    assert_eq!(commands, 3, "⌈120/50⌉ commands");

    let invocations = emulator.invocations().expect("invocations");
    assert_eq!(invocations.len(), 120, "one invocation per instance");
    let mut per_command: HashMap<String, usize> = HashMap::new();
    for i in &invocations {
        *per_command
            .entry(i["command_id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert!(per_command.values().all(|n| *n <= 50), "{per_command:?}");

    let drained = world.drain(&app).await.expect("drain");
    assert_eq!(drained.failures, 0);
    let report = logs.run_report(&run_id).expect("report");
    assert_eq!(
        report.count(OutcomeKind::Consistent),
        120,
        "{}",
        report.summary_line()
    );
    let snapshots = run_snapshots(emulator, &run_id)
        .await
        .expect("DescribeSnapshots");
    assert_eq!(snapshots.len(), 240, "boot + 1 data volume each");
    for id in &ids {
        let n = snapshots
            .iter()
            .filter(|s| snapshot_tag(s, "ConsistentSnapshot:InstanceId") == Some(id.as_str()))
            .count();
        assert_eq!(n, 2, "{id}");
    }
}
