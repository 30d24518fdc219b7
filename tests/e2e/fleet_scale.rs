//! End to end: boot-volume exclusion and the document's other options per instance, a fleet
//! larger than one SendCommand, pagination, a dispatch's calls in flight.

use std::collections::HashMap;
use std::time::Duration;

use consistent_snapshot::OutcomeKind;
use harness::faults::{Fault, FaultProxy, Stop};
use harness::{
    commands_per_instance, invoke, invoke_within, own_snapshots, run_snapshots, scheduled_event,
    seed_bulk, snapshot_tag, ServerSpec, World,
};
use serde_json::json;

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
async fn vss_options_by_instance_tag_reach_the_document_one_command_per_parameter_set() {
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let servers = vec![
        ServerSpec::windows("plain01", 1)
            .tag("CostCenter", "finance")
            .tag("Owner", "dba team"),
        ServerSpec::windows("sqlnative01", 1).tag("ConsistentSnapshot:CopyOnly", "true"),
        ServerSpec::windows("sqlnative02", 1).tag("ConsistentSnapshot:CopyOnly", "True"),
        ServerSpec::windows("sqlrestore01", 1)
            .tag("ConsistentSnapshot:CopyOnly", "true")
            .tag("ConsistentSnapshot:SaveVssMetadata", "true"),
        ServerSpec::windows("trouble01", 1).tag("ConsistentSnapshot:CollectDiagnosticLogs", "true"),
        ServerSpec::windows("badopt01", 1).tag("ConsistentSnapshot:SaveVssMetadata", "perhaps"),
    ];
    let ids = world.seed(&servers).await.expect("seed");
    let app = world
        .app(&[
            ("COPY_INSTANCE_TAGS", "CostCenter,Project"),
            ("COPY_REGIONS", "eu-west-1"),
        ])
        .expect("app");
    let start = invoke(&app, scheduled_event("nightly", "2026-11-23T01:30:00Z"))
        .await
        .expect("run");
    let run_id = start["run_id"].as_str().expect("run id").to_string();
    world
        .drain_within(&app, Duration::from_secs(120))
        .await
        .expect("drain");

    // The cost tag named in COPY_INSTANCE_TAGS is on plain01's snapshots and their copies;
    // a tag not named is not, nor on any other server's.
    for region in ["us-east-1", "eu-west-1"] {
        let snapshots: Vec<_> = own_snapshots(emulator, region)
            .await
            .expect("snapshots")
            .into_iter()
            .filter(|s| snapshot_tag(s, "ConsistentSnapshot:RunId") == Some(run_id.as_str()))
            .collect();
        assert_eq!(snapshots.len(), 10, "{region}: five servers' two volumes");
        for s in &snapshots {
            let of_plain =
                snapshot_tag(s, "ConsistentSnapshot:InstanceId") == Some(ids[0].as_str());
            let cost = snapshot_tag(s, "CostCenter");
            assert_eq!(cost, of_plain.then_some("finance"), "{region}: {s:?}");
            assert_eq!(snapshot_tag(s, "Owner"), None, "{region}: {s:?}");
        }
    }

    // What each instance's document got: exactly its options, the others left out.
    let invocations = emulator.invocations().expect("invocations");
    let got = |id: &str| -> (Vec<(String, String)>, String) {
        let i = invocations
            .iter()
            .find(|i| i["instance_id"] == id)
            .unwrap_or_else(|| panic!("no invocation on {id}"));
        let mut params: Vec<(String, String)> = i["parameters"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "CopyOnly" | "SaveVssMetadata" | "CollectDiagnosticLogs" | "NoWriters"
                )
            })
            .map(|(k, v)| (k.clone(), v[0].as_str().unwrap_or_default().to_string()))
            .collect();
        params.sort();
        (
            params,
            i["command_id"].as_str().unwrap_or_default().to_string(),
        )
    };
    let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(got(&ids[0]).0, pairs(&[("CopyOnly", "False")]));
    assert_eq!(got(&ids[1]).0, pairs(&[("CopyOnly", "True")]));
    assert_eq!(got(&ids[2]).0, pairs(&[("CopyOnly", "True")]));
    assert_eq!(
        got(&ids[3]).0,
        pairs(&[("CopyOnly", "True"), ("SaveVssMetadata", "True")])
    );
    assert_eq!(
        got(&ids[4]).0,
        pairs(&[("CollectDiagnosticLogs", "True"), ("CopyOnly", "False")])
    );
    // The two copy-only servers share one command; each other parameter set has its own.
    assert_eq!(got(&ids[1]).1, got(&ids[2]).1);
    let commands: std::collections::BTreeSet<String> =
        ids[..5].iter().map(|id| got(id).1).collect();
    assert_eq!(commands.len(), 4, "{commands:?}");
    assert!(
        !invocations
            .iter()
            .any(|i| i["instance_id"] == ids[5].as_str()),
        "an invalid option is never sent"
    );

    let report = logs.run_report(&run_id).expect("report");
    let outcome = |id: &str| {
        report
            .outcomes
            .iter()
            .find(|o| o.instance_id == id)
            .cloned()
    };
    for id in &ids[..5] {
        assert_eq!(
            outcome(id).map(|o| o.kind),
            Some(OutcomeKind::Consistent),
            "{id}"
        );
    }
    let bad = outcome(&ids[5]).expect("badopt01 is in the summary");
    assert_eq!(bad.kind, OutcomeKind::Skipped);
    let reason = bad.reason.unwrap_or_default();
    assert!(
        reason.contains("ConsistentSnapshot:SaveVssMetadata") && reason.contains("perhaps"),
        "{reason}"
    );
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

/// `ConsistentSnapshot:NoWriters` on a file server for two nights after an ordinary one: the
/// document gets `NoWriters=True`, the set is recorded and reported as file-system consistent
/// (counted apart, never as application consistent), it is copied and labelled, retention
/// counts it as a backup, and keeps the server's newest application-consistent set whatever
/// the count. NoWriters with SaveVssMetadata is refused for that server alone.
#[tokio::test]
async fn no_writers_sets_are_file_system_consistent_labelled_copied_and_kept_as_backups() {
    use aws_sdk_ec2::types::Tag;
    use consistent_snapshot::catalog::Verdict;
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let servers = vec![
        ServerSpec::windows("sql01", 1),
        ServerSpec::windows("files01", 1),
        ServerSpec::windows("both01", 1)
            .tag("ConsistentSnapshot:NoWriters", "true")
            .tag("ConsistentSnapshot:SaveVssMetadata", "true"),
    ];
    let ids = world.seed(&servers).await.expect("seed");
    let (sql, files, both) = (&ids[0], &ids[1], &ids[2]);
    let app = world
        .app(&[("COPY_REGIONS", "eu-west-1"), ("RETAIN_COUNT", "1")])
        .expect("app");

    // Night 1: files01 as every night so far, application consistent.
    let first = world
        .nightly(&app, "2026-11-23T02:00:00Z")
        .await
        .expect("night 1");
    // Then its operator sets NoWriters (a third-party VSS requestor conflicts with the writers).
    emulator
        .ec2()
        .create_tags()
        .resources(files.as_str())
        .tags(
            Tag::builder()
                .key("ConsistentSnapshot:NoWriters")
                .value("true")
                .build(),
        )
        .send()
        .await
        .expect("CreateTags");
    let second = world
        .nightly(&app, "2026-11-24T02:00:00Z")
        .await
        .expect("night 2");
    let third = world
        .nightly(&app, "2026-11-25T02:00:00Z")
        .await
        .expect("night 3");

    // What the document got on night 3, and that both01 was never sent anything.
    let invocations = emulator.invocations().expect("invocations");
    let no_writers = |run: &str, id: &str| {
        invocations
            .iter()
            .find(|i| {
                i["instance_id"] == id && i["comment"].as_str().is_some_and(|c| c.contains(run))
            })
            .map(|i| i["parameters"]["NoWriters"][0].as_str().map(str::to_string))
    };
    assert_eq!(no_writers(&third, files), Some(Some("True".into())));
    assert_eq!(no_writers(&first, files), Some(None), "sent only when on");
    assert_eq!(no_writers(&third, sql), Some(None));
    assert!(
        !invocations
            .iter()
            .any(|i| i["instance_id"] == both.as_str()),
        "NoWriters with SaveVssMetadata is never sent"
    );

    // The summary: file-system consistent, counted apart; the refused server named.
    let report = logs.run_report(&third).expect("night 3's summary");
    let outcome = |id: &str| {
        report
            .outcomes
            .iter()
            .find(|o| o.instance_id == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing"))
    };
    assert_eq!(outcome(files).kind, OutcomeKind::FileSystemConsistent);
    assert!(outcome(files)
        .reason
        .is_some_and(|r| r.contains("NoWriters") && r.contains("not application consistent")));
    assert_eq!(outcome(sql).kind, OutcomeKind::Consistent);
    let refused = outcome(both);
    assert_eq!(
        (refused.kind, refused.cause),
        (
            OutcomeKind::Skipped,
            Some(consistent_snapshot::Cause::InvalidOption)
        )
    );
    assert_eq!(
        (
            report.count(OutcomeKind::Consistent),
            report.count(OutcomeKind::FileSystemConsistent)
        ),
        (1, 1)
    );
    assert!(report.summary_line().contains("1 file-system consistent"));

    // The catalog's verdicts, night by night.
    let (sets, copies) = emulator.catalog().sets_of(files).await.expect("catalog");
    let verdict = |run: &str| sets.iter().find(|s| s.run_id == run).map(|s| s.verdict);
    assert_eq!(verdict(&first), Some(Verdict::Consistent));
    assert_eq!(verdict(&third), Some(Verdict::FileSystemConsistent));

    // EC2: night 3's snapshot of files01 and its copy carry the label; sql01's do not.
    for region in ["us-east-1", "eu-west-1"] {
        let listed = own_snapshots(emulator, region).await.expect("snapshots");
        let label = |id: &str, run: &str| -> Vec<Option<String>> {
            listed
                .iter()
                .filter(|s| {
                    snapshot_tag(s, "ConsistentSnapshot:RunId") == Some(run)
                        && snapshot_tag(s, "ConsistentSnapshot:InstanceId") == Some(id)
                })
                .map(|s| snapshot_tag(s, "ConsistentSnapshot:Consistency").map(str::to_string))
                .collect()
        };
        assert_eq!(
            label(files, &third),
            vec![Some("FileSystem".to_string()); 2],
            "{region}"
        );
        assert_eq!(label(sql, &third), vec![None; 2], "{region}");
    }
    assert!(copies
        .iter()
        .filter(|c| c.run_id == third)
        .all(|c| c.consistent && c.file_system));

    // Retention (RETAIN_COUNT=1): night 3's set is the one kept by count, night 2's goes, and
    // night 1's, files01's newest application-consistent set, stays.
    let left: std::collections::BTreeSet<String> = own_snapshots(emulator, "us-east-1")
        .await
        .expect("snapshots")
        .into_iter()
        .filter(|s| snapshot_tag(s, "ConsistentSnapshot:InstanceId") == Some(files.as_str()))
        .filter_map(|s| snapshot_tag(&s, "ConsistentSnapshot:RunId").map(str::to_string))
        .collect();
    assert_eq!(
        left,
        [first.clone(), third.clone()].into_iter().collect(),
        "night 2 ({second}) deleted"
    );

    // The fleet report: within the RPO, file-system consistent only, counted apart.
    let fleet = world.report(&app).await.expect("report");
    let status = harness::report_entry(&fleet, files);
    assert!(!status.is_null(), "files01 in the report: {fleet}");
    assert_eq!(status["rpo"], "within_rpo");
    assert_eq!(status["latest_consistent"]["run_id"], third.as_str());
    assert_eq!(status["latest_consistent"]["file_system_only"], true);
    assert_eq!(fleet["totals"]["file_system_only"], 1, "{fleet}");

    // A restore of it says what it restores: file-system consistent only.
    let restore = invoke(
        &app,
        serde_json::json!({"action": "restore", "instance_id": files, "run_id": "latest", "mode": "volumes"}),
    )
    .await
    .expect("restore");
    assert_eq!(
        (
            restore["run_id"].as_str(),
            restore["file_system_only"].as_bool()
        ),
        (Some(third.as_str()), Some(true)),
        "{restore}"
    );
}

/// A dispatch of 230 servers, every call 60 ms slow: it keeps a few calls of each kind in
/// flight (SendCommand, SSM's agent reads, the manifest's writes, the tracking messages),
/// never more than its bounds, and still freezes every server once, though in one wave of
/// commands one answer is lost (the history shows the command went) and another is
/// throttled (it did not).
#[tokio::test]
async fn a_large_dispatch_keeps_a_few_calls_in_flight_and_freezes_each_server_once() {
    let world = World::start(3).await.expect("world");
    let emulator = &world.emulator;
    let mut ids = seed_bulk(emulator, 230, 50, 0).await.expect("seed");
    ids.sort();
    let proxy = FaultProxy::new(emulator.port, 0.0, 11);
    let endpoint = proxy.endpoint(Stop::Never).await.expect("proxy");
    let sdk = emulator.sdk_through(endpoint.port);
    let app = emulator.app_as(&sdk, &world.queue, &[]).expect("app");
    proxy.set_latency(Duration::from_millis(60));
    // Commands go out in instance id order, 50 a command: the second and third of the first
    // wave of four.
    proxy.force_matching("ssm:SendCommand", &ids[50], Fault::DroppedAfter, 1);
    proxy.force_matching("ssm:SendCommand", &ids[100], Fault::Throttled, 1);
    let start = invoke_within(
        &app,
        json!({"action": "snapshot", "run_id": "wide"}),
        Duration::from_secs(60),
    )
    .await
    .expect("dispatch");
    let stats = proxy.stats();
    assert_eq!(start["status"], "dispatched", "{start}");
    let dispatched = start["dispatched"].as_array().expect("dispatched");
    assert_eq!(dispatched.len(), 230, "{start}");
    let reused = dispatched.iter().filter(|d| d["reused"] == true).count();
    assert_eq!(
        reused, 50,
        "the lost answer's command is tracked, not sent again"
    );
    assert_eq!(stats.send_command_faults, 2);

    // Bounded, and more than one at a time: what the dispatch keeps in flight per kind.
    for (action, bound) in [
        ("ssm:SendCommand", 4),
        ("ssm:DescribeInstanceInformation", 4),
        ("dynamodb:BatchWriteItem", 8),
        ("sqs:SendMessageBatch", 8),
    ] {
        let at_once = stats.peak_of(action);
        assert!(
            (2..=bound).contains(&at_once),
            "{action}: {at_once} in flight at most (bound {bound}): {:?}",
            stats.peak_in_flight
        );
    }

    proxy.set_latency(Duration::ZERO);
    let drained = world
        .drain_within(&app, Duration::from_secs(180))
        .await
        .expect("drain");
    assert_eq!(drained.failures, 0, "{drained:?}");
    let per = commands_per_instance(&emulator.invocations().expect("invocations"), "wide");
    assert_eq!(per.len(), 230, "{per:?}");
    assert!(per.values().all(|n| *n == 1), "{per:?}");
    let report = world.logs.run_report("wide").expect("report");
    assert_eq!(
        report.count(OutcomeKind::Consistent),
        230,
        "{}",
        report.summary_line()
    );
}
