//! End to end: a scheduled run over a mixed fleet, through the real handler and the local
//! event source, checked the way an operator would: snapshots, tags, outcomes, the summary.

use std::collections::BTreeMap;
use std::time::Duration;

use consistent_snapshot::catalog::Verdict;
use consistent_snapshot::OutcomeKind;
use harness::{
    invoke, run_snapshots, scheduled_event, Agent, ServerSpec, VssOutcome, Windows, World,
};
use serde_json::json;

fn tags(snapshot: &aws_sdk_ec2::types::Snapshot) -> BTreeMap<String, String> {
    snapshot
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_outcome_of_a_mixed_fleet() {
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let untagged = ServerSpec::windows("untagged01", 1).untagged();
    let stopped = ServerSpec::windows("stopped01", 1).stopped();
    let linux = ServerSpec::windows("linux01", 1).linux();
    // A Name as long as EC2 allows (256): `<Name> <device>` is longer, and is cut to fit.
    let long_name = format!("file{}", "s".repeat(252));
    let servers = vec![
        ServerSpec::windows(&long_name, 1),
        ServerSpec::windows("sql01", 2),
        ServerSpec::windows("exch01", 3),
        // Not even listed by SSM for 1.5 s, then 3 s in progress: the run must wait for it.
        ServerSpec::windows("slow01", 1).sim(Windows::timing(1.5, 3.0)),
        ServerSpec::windows("vssfail01", 2).sim(Windows::outcome(VssOutcome::VssFailure)),
        ServerSpec::windows("noebs01", 1).sim(Windows::outcome(VssOutcome::NoEbs)),
        ServerSpec::windows("lost01", 1).sim(Windows {
            outcome: Some(VssOutcome::Undeliverable),
            delivery_timeout: Some(2.0),
            ..Windows::default()
        }),
        ServerSpec::windows("offline01", 1).sim(Windows::agent(Agent::Offline)),
        ServerSpec::windows("unmanaged01", 1).sim(Windows::agent(Agent::Unmanaged)),
        ServerSpec::windows("oldagent01", 1).sim(Windows::agent_version("2.2.45.0")),
        untagged,
        stopped,
        linux,
    ];
    let ids = world.seed(&servers).await.expect("seed");
    let id = |name: &str| ids[servers.iter().position(|s| s.name == name).expect("server")].clone();

    let app = world.app(&[]).expect("app");
    let start = invoke(&app, scheduled_event("nightly", "2026-11-23T00:00:00Z"))
        .await
        .expect("run");
    let run_id = start["run_id"].as_str().expect("run id").to_string();
    assert!(run_id.starts_with("20261123T000000Z-"), "{run_id}");
    assert_eq!(
        start["dispatched"].as_array().map(Vec::len),
        Some(7),
        "{start:#}"
    );

    let drained = world
        .drain_within(&app, Duration::from_secs(90))
        .await
        .expect("drain");
    assert_eq!(drained.failures, 0, "{drained:?}");

    let report = logs.run_report(&run_id).expect("the run logs its summary");
    let outcome = |name: &str| {
        report
            .outcomes
            .iter()
            .find(|o| o.instance_id == id(name))
            .unwrap_or_else(|| panic!("{name} missing from {report:#?}"))
            .clone()
    };
    for name in ["sql01", "exch01", "slow01", long_name.as_str()] {
        assert_eq!(
            outcome(name).kind,
            OutcomeKind::Consistent,
            "{name}: {:?}",
            outcome(name)
        );
    }
    assert_eq!(outcome("vssfail01").kind, OutcomeKind::CrashConsistent);
    assert!(outcome("vssfail01")
        .reason
        .unwrap_or_default()
        .contains("Thaw pipe"));
    assert_eq!(outcome("noebs01").kind, OutcomeKind::Failed);
    assert!(outcome("noebs01")
        .reason
        .unwrap_or_default()
        .contains("No EBS volumes"));
    assert_eq!(outcome("lost01").kind, OutcomeKind::TimedOut);
    let skipped = [
        ("offline01", "not Online"),
        ("unmanaged01", "not managed by SSM"),
        ("oldagent01", "older than the minimum 2.2.58.0"),
        ("stopped01", "stopped"),
        ("linux01", "not a Windows instance"),
    ];
    for (name, why) in skipped {
        let o = outcome(name);
        assert_eq!(o.kind, OutcomeKind::Skipped, "{name}");
        assert!(
            o.reason.clone().unwrap_or_default().contains(why),
            "{name}: {o:?}"
        );
    }
    assert!(
        report
            .outcomes
            .iter()
            .all(|o| o.instance_id != id("untagged01")),
        "untagged instances are not part of the fleet"
    );
    assert_eq!(report.outcomes.len(), 12);
    assert_eq!(report.count(OutcomeKind::Consistent), 4);

    // What the operator checks in EC2: one snapshot per volume, with the contract tags.
    let snapshots = run_snapshots(emulator, &run_id)
        .await
        .expect("DescribeSnapshots");
    let per_instance = |name: &str| -> Vec<BTreeMap<String, String>> {
        snapshots
            .iter()
            .map(tags)
            .filter(|t| t.get("ConsistentSnapshot:InstanceId") == Some(&id(name)))
            .collect()
    };
    assert_eq!(per_instance("sql01").len(), 3, "boot + 2 data volumes");
    assert_eq!(per_instance("exch01").len(), 4);
    assert_eq!(per_instance("vssfail01").len(), 3);
    for t in per_instance("sql01") {
        assert_eq!(t.get("AppConsistent").map(String::as_str), Some("True"));
        assert_eq!(
            t.get("ConsistentSnapshot:ManagedBy").map(String::as_str),
            Some("vss-test")
        );
        let device = t.get("Device").cloned().unwrap_or_default();
        assert_eq!(t.get("Name"), Some(&format!("sql01 {device}")));
    }
    let long = per_instance(&long_name);
    assert_eq!(
        long.len(),
        2,
        "boot + 1 data volume, tagged though the name is long"
    );
    for t in long {
        let name = t.get("Name").cloned().unwrap_or_default();
        assert_eq!(name.chars().count(), 256, "{name}");
        assert!(
            name.starts_with(&long_name[..255]) && name.ends_with('…'),
            "{name}"
        );
    }
    assert!(per_instance("vssfail01")
        .iter()
        .all(|t| t.get("AppConsistent").map(String::as_str) == Some("False")));
    // 3 + 4 + 2 (slow01) + 2 (the long name) + 3 (VSS failure): nobody else got a snapshot.
    assert_eq!(snapshots.len(), 14);
    for name in ["untagged01", "stopped01", "offline01", "noebs01", "lost01"] {
        assert!(
            per_instance(name).is_empty(),
            "{name} must have no snapshot"
        );
    }
    // One VSS command per dispatched instance, none to anyone else.
    let invocations = emulator.invocations().expect("invocations");
    assert_eq!(invocations.len(), 7);

    let summary = report.summary_line();
    assert!(
        summary.contains("needs attention") && summary.contains("12 instances"),
        "{summary}"
    );
    assert!(
        logs.records()
            .iter()
            .any(|r| r["message"].as_str() == Some(summary.as_str())),
        "the summary line is logged"
    );
}

#[tokio::test]
async fn a_run_does_not_end_before_ssm_lists_every_instance() {
    let world = World::start(3).await.expect("world");
    let logs = &world.logs;
    // web02's invocation is unknown to SSM for 2.5 s, past the run's first look at ~1 s,
    // while web01 is already final by then.
    let servers = [
        ServerSpec::windows("web01", 1).sim(Windows::timing(0.05, 0.05)),
        ServerSpec::windows("web02", 1).sim(Windows::timing(2.5, 0.1)),
    ];
    let ids = world.seed(&servers).await.expect("seed");
    let app = world.app(&[]).expect("app");
    invoke(
        &app,
        json!({"action": "snapshot", "run_id": "late-listing"}),
    )
    .await
    .expect("run");
    world
        .drain_within(&app, Duration::from_secs(60))
        .await
        .expect("drain");
    let report = logs.run_report("late-listing").expect("report");
    assert_eq!(report.outcomes.len(), 2, "{report:#?}");
    for id in &ids {
        let outcome = report.outcomes.iter().find(|o| &o.instance_id == id);
        assert_eq!(
            outcome.map(|o| o.kind),
            Some(OutcomeKind::Consistent),
            "{id}"
        );
    }
}

/// `CRASH_CONSISTENT_FALLBACK` (a deployment's default): a server VSS left without a set, whether
/// the document could not run (agent offline, too old) or failed before any snapshot (language
/// mode), gets one crash-consistent set by CreateSnapshots: labelled, recorded with its reason
/// and cause, never foreign, counted, and shown in the fleet report. A server VSS already left a
/// crash-consistent set, or a stopped one, gets none; with the fallback off, nothing is made.
#[tokio::test]
async fn a_server_vss_left_without_a_set_gets_a_labelled_crash_consistent_fallback() {
    use consistent_snapshot::Cause;
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let servers = vec![
        ServerSpec::windows("sql01", 1),
        ServerSpec::windows("offline01", 2).sim(Windows::agent(Agent::Offline)),
        ServerSpec::windows("oldagent01", 1).sim(Windows::agent_version("2.2.45.0")),
        ServerSpec::windows("lockdown01", 1).sim(Windows::outcome(VssOutcome::LanguageMode)),
        ServerSpec::windows("vssfail01", 1).sim(Windows::outcome(VssOutcome::VssFailure)),
        ServerSpec::windows("stopped01", 1).stopped(),
    ];
    let ids = world.seed(&servers).await.expect("seed");
    let id = |name: &str| ids[servers.iter().position(|s| s.name == name).expect("server")].clone();
    let metrics = harness::Metrics::default();
    let app = metrics.attach(
        world
            .app(&[("CRASH_CONSISTENT_FALLBACK", "true")])
            .expect("app"),
    );
    let run_id = world
        .nightly(&app, "2026-11-23T02:00:00Z")
        .await
        .expect("the nightly run");
    let report = logs.run_report(&run_id).expect("summary");
    let outcome = |name: &str| {
        report
            .outcomes
            .iter()
            .find(|o| o.instance_id == id(name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let snapshots = run_snapshots(emulator, &run_id)
        .await
        .expect("DescribeSnapshots");
    let of = |name: &str| -> Vec<BTreeMap<String, String>> {
        snapshots
            .iter()
            .map(tags)
            .filter(|t| t.get("ConsistentSnapshot:InstanceId") == Some(&id(name)))
            .collect()
    };
    let (sets, _) = emulator.catalog().all_sets().await.expect("catalog");
    for (name, volumes, cause, why) in [
        ("offline01", 3, Cause::AgentOffline, "not Online"),
        (
            "oldagent01",
            2,
            Cause::AgentTooOld,
            "older than the minimum",
        ),
        ("lockdown01", 2, Cause::LanguageMode, "language mode"),
    ] {
        let o = outcome(name);
        assert_eq!(
            (o.kind, o.fallback, o.cause, o.snapshots.len()),
            (OutcomeKind::CrashConsistent, true, Some(cause), volumes),
            "{name}: {o:?}"
        );
        let reason = o.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with("crash-consistent fallback (CreateSnapshots at")
                && reason.contains(why),
            "{name}: {reason}"
        );
        // In EC2: every volume, labelled, with the deployment's tags from creation.
        let made = of(name);
        assert_eq!(made.len(), volumes, "{name}");
        for t in &made {
            assert_eq!(
                (
                    t.get("ConsistentSnapshot:Consistency").map(String::as_str),
                    t.get("ConsistentSnapshot:ManagedBy").map(String::as_str),
                    t.get("ConsistentSnapshot:RunId")
                ),
                (Some("CrashFallback"), Some("vss-test"), Some(&run_id)),
                "{name}"
            );
        }
        // In the catalog: a crash-consistent set, marked as the fallback.
        let set = sets
            .iter()
            .find(|s| s.instance_id == id(name) && s.run_id == run_id)
            .unwrap_or_else(|| panic!("{name}'s fallback is not recorded"));
        assert_eq!(
            (set.verdict, set.fallback, set.snapshots.len()),
            (Verdict::CrashConsistent, true, volumes),
            "{name}"
        );
    }
    // VSS's own crash-consistent set is the night's set: no second one. Nothing for a stopped
    // server, and the well-behaved one is untouched.
    let vss = outcome("vssfail01");
    assert_eq!(
        (vss.kind, vss.fallback),
        (OutcomeKind::CrashConsistent, false)
    );
    assert_eq!(of("vssfail01").len(), 2);
    assert!(of("stopped01").is_empty());
    assert_eq!(outcome("sql01").kind, OutcomeKind::Consistent);
    assert_eq!(report.foreign_count, 0, "a fallback is never foreign");
    assert_eq!(report.fallbacks(), 3);
    assert!(report
        .summary_line()
        .contains("3 of them a crash-consistent fallback"));
    let line = &metrics.of("run", Some(&run_id))[0];
    assert_eq!(line["CrashConsistentFallbacks"], 3, "{line}");

    // The fleet report: no consistent backup, and the fallback named with its time.
    let fleet = world.report(&app).await.expect("report");
    let status = |name: &str| harness::report_entry(&fleet, &id(name));
    let offline = status("offline01");
    assert_eq!(offline["rpo"], "never_backed_up", "{offline}");
    assert_eq!(
        offline["crash_consistent_fallback"]["run_id"],
        run_id.as_str(),
        "{offline}"
    );
    assert!(status("sql01").get("crash_consistent_fallback").is_none());
    assert_eq!(fleet["totals"]["on_fallback"], 3, "{fleet}");

    // With the fallback off, the next night leaves the offline server with nothing.
    let off = metrics.attach(world.app(&[]).expect("app"));
    let second = world
        .nightly(&off, "2026-11-24T02:00:00Z")
        .await
        .expect("night 2");
    let again = run_snapshots(emulator, &second).await.expect("snapshots");
    assert!(!again
        .iter()
        .map(tags)
        .any(|t| { t.get("ConsistentSnapshot:InstanceId") == Some(&id("offline01")) }));
    let report = logs.run_report(&second).expect("summary");
    assert!(report
        .outcomes
        .iter()
        .any(|o| o.instance_id == id("offline01") && o.kind == OutcomeKind::Skipped));
}

/// `VSS_RETRIES`: a server whose VSS freeze timed out is tried again, after the pause, in a run
/// of its own (`<run>-vss1`): a passing load spike ends with a consistent set there, the failed
/// attempt kept as the night's crash-consistent set; a freeze that always times out is tried
/// as often as allowed and no more; nothing else is sent twice, and a retry message that names
/// a server the catalog does not vouch for sends it nothing.
#[tokio::test]
async fn a_freeze_that_timed_out_is_tried_again_in_a_run_of_its_own() {
    use consistent_snapshot::Cause;
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let servers = vec![
        ServerSpec::windows("sql01", 1),
        ServerSpec::windows("busy01", 2).sim(Windows::freeze_fails(1)),
        ServerSpec::windows("stuck01", 1).sim(Windows::outcome(VssOutcome::VssFailure)),
        ServerSpec::windows("writer01", 1).sim(Windows::outcome(VssOutcome::WriterFailed)),
    ];
    let ids = world.seed(&servers).await.expect("seed");
    let id = |name: &str| ids[servers.iter().position(|s| s.name == name).expect("server")].clone();
    let metrics = harness::Metrics::default();
    let app = metrics.attach(
        world
            .app(&[("VSS_RETRIES", "1"), ("VSS_RETRY_PAUSE_SECONDS", "1")])
            .expect("app"),
    );
    let run_id = world
        .nightly(&app, "2026-11-23T02:00:00Z")
        .await
        .expect("the nightly run");
    let retry_id = format!("{run_id}-vss1");
    let first = logs.run_report(&run_id).expect("the night's summary");
    let kind = |report: &consistent_snapshot::RunSummary, name: &str| {
        report
            .outcomes
            .iter()
            .find(|o| o.instance_id == id(name))
            .map(|o| (o.kind, o.cause))
    };
    assert_eq!(
        kind(&first, "busy01"),
        Some((OutcomeKind::CrashConsistent, Some(Cause::FreezeTimeout)))
    );
    let note = first.retry.clone().expect("the night names its retry");
    assert_eq!(
        (note.run_id.as_str(), note.instances),
        (retry_id.as_str(), 2)
    );
    assert!(
        first.summary_line().contains(&format!(
            "2 whose VSS freeze timed out tried again in run {retry_id}"
        )),
        "{}",
        first.summary_line()
    );
    assert_eq!(metrics.of("run", Some(&run_id))[0]["VssRetried"], 2);

    // The retry: its own run of exactly the two servers whose freeze timed out.
    let retry = logs.run_report(&retry_id).expect("the retry's summary");
    let retried: std::collections::BTreeSet<String> = retry
        .outcomes
        .iter()
        .map(|o| o.instance_id.clone())
        .collect();
    assert_eq!(retried, [id("busy01"), id("stuck01")].into_iter().collect());
    assert_eq!(
        kind(&retry, "busy01"),
        Some((OutcomeKind::Consistent, None))
    );
    assert_eq!(
        kind(&retry, "stuck01"),
        Some((OutcomeKind::CrashConsistent, Some(Cause::FreezeTimeout)))
    );
    // VSS_RETRIES=1: the retry is not retried.
    assert!(retry.retry.is_none(), "{:?}", retry.retry);
    assert!(logs.run_report(&format!("{run_id}-vss2")).is_none());

    // Commands: one each, two for the retried servers, none a third time.
    let invocations = emulator.invocations().expect("invocations");
    let sent = |name: &str| {
        invocations
            .iter()
            .filter(|i| i["instance_id"] == id(name).as_str())
            .count()
    };
    assert_eq!(
        (
            sent("sql01"),
            sent("busy01"),
            sent("stuck01"),
            sent("writer01")
        ),
        (1, 2, 2, 1)
    );

    // The catalog: each attempt is a set of its own. stuck01 keeps both of its crash-consistent
    // attempts (no consistent set exists: they are its best backups); busy01's failed attempt
    // went with the retry's retention, once a newer consistent set stood for the night.
    let (sets, _) = emulator.catalog().all_sets().await.expect("catalog");
    let of = |name: &str, run: &str| {
        sets.iter()
            .find(|s| s.instance_id == id(name) && s.run_id == run)
            .map(|s| (s.verdict, s.snapshots.len()))
    };
    assert_eq!(of("busy01", &retry_id), Some((Verdict::Consistent, 3)));
    assert_eq!(of("busy01", &run_id), None);
    assert_eq!(of("stuck01", &run_id), Some((Verdict::CrashConsistent, 2)));
    assert_eq!(
        of("stuck01", &retry_id),
        Some((Verdict::CrashConsistent, 2))
    );
    let retry_snapshots = run_snapshots(emulator, &retry_id).await.expect("snapshots");
    assert_eq!(
        retry_snapshots.len(),
        3 + 2,
        "busy01's three and stuck01's two"
    );
    let night_snapshots = run_snapshots(emulator, &run_id).await.expect("snapshots");
    assert!(
        night_snapshots
            .iter()
            .all(|s| tags(s).get("ConsistentSnapshot:InstanceId") != Some(&id("busy01"))),
        "busy01's crash-consistent attempt is deleted"
    );

    // The fleet report counts the retry's consistent set.
    let fleet = world.report(&app).await.expect("report");
    let rpo = |name: &str| harness::report_entry(&fleet, &id(name))["rpo"].clone();
    assert_eq!(rpo("busy01"), rpo("sql01"), "{fleet}");
    assert_ne!(rpo("stuck01"), rpo("sql01"), "{fleet}");

    // A retry message naming a server whose set was not a timed-out freeze sends nothing.
    let before = emulator.invocations().expect("invocations").len();
    let forged = json!({
        "v": 1,
        "kind": "retry",
        "parent_run_id": run_id,
        "run_id": retry_id,
        "instance_ids": [id("writer01"), id("sql01")],
        "start_at": "2026-11-23T02:10:00Z",
    });
    world
        .send_raw(&forged.to_string())
        .await
        .expect("SendMessage");
    world.drain(&app).await.expect("drain");
    assert_eq!(emulator.invocations().expect("invocations").len(), before);
    assert!(
        logs.records().iter().any(|r| r["refused"]
            .as_str()
            .is_some_and(|why| why.contains("no server of it has a timed-out freeze"))),
        "the forged retry is refused"
    );
}

/// A failover cluster (`ConsistentSnapshot:Cluster`): the VSS command goes only to the node that
/// owns the cluster's disks, as the nodes' probes agree at the run; the secondary is skipped as
/// such (no failure, no cause). Where the probes do not agree (two nodes claim the disks) or
/// a tagged server says it is in no cluster (a stray tag), every node of that cluster tag gets
/// the command, as without the tag. Without a probe document the secondary is sent the command, and fails.
#[tokio::test]
async fn only_the_node_that_owns_a_clusters_disks_gets_the_vss_command() {
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let cluster = |name: &str, cluster: &str| {
        ServerSpec::windows(name, 1).tag("ConsistentSnapshot:Cluster", cluster)
    };
    let servers = vec![
        ServerSpec::windows("files01", 1),
        cluster("sqlnode1", "SQLCLU").sim(Windows::cluster_node("SQLCLU", true)),
        cluster("sqlnode2", "SQLCLU").sim(Windows::cluster_node("SQLCLU", false)),
        // A stray tag: the server is in no cluster, says its probe.
        cluster("app01", "LONE"),
        // Two nodes that both claim the disks: no agreement.
        cluster("duo1", "DUO").sim(Windows::cluster_node("DUO", true)),
        cluster("duo2", "DUO").sim(Windows::cluster_node("DUO", true)),
    ];
    let ids = world.seed(&servers).await.expect("seed");
    let id = |name: &str| ids[servers.iter().position(|s| s.name == name).expect("server")].clone();
    let app = world.app(&[]).expect("app");
    // Readiness: a secondary already tagged with its cluster is ready.
    let ready = invoke(&app, json!({"action": "readiness", "probe": true}))
        .await
        .expect("readiness");
    let node2 = ready["instances"]
        .as_array()
        .and_then(|i| i.iter().find(|s| s["name"] == "sqlnode2"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(node2["verdict"], "pass", "{node2}");
    let run_id = world
        .nightly(&app, "2026-11-23T02:00:00Z")
        .await
        .expect("the nightly run");
    let vss_sent = |run: &str| {
        let invocations = emulator.invocations().expect("invocations");
        harness::commands_per_instance(&invocations, run)
    };
    let sent = vss_sent(&run_id);
    for (name, n) in [
        ("files01", 1),
        ("sqlnode1", 1),
        ("sqlnode2", 0),
        ("app01", 1),
        ("duo1", 1),
        ("duo2", 1),
    ] {
        assert_eq!(
            sent.get(&id(name)).copied().unwrap_or(0),
            n,
            "{name}: {sent:?}"
        );
    }
    let report = logs.run_report(&run_id).expect("summary");
    let secondary = report
        .outcomes
        .iter()
        .find(|o| o.instance_id == id("sqlnode2"))
        .cloned()
        .expect("sqlnode2");
    assert_eq!(
        (secondary.kind, secondary.cause),
        (OutcomeKind::Skipped, None)
    );
    let reason = secondary.reason.unwrap_or_default();
    assert!(
        reason.contains("secondary node of cluster SQLCLU") && reason.contains(&id("sqlnode1")),
        "{reason}"
    );
    assert_eq!(report.count(OutcomeKind::Consistent), 5, "{report:#?}");
    assert!(report.all_consistent(), "{}", report.summary_line());
    for (cluster, why) in [
        ("DUO", "2 nodes say they own"),
        ("LONE", "not a node of any failover cluster"),
    ] {
        assert!(
            logs.records()
                .iter()
                .any(|r| r["cluster"] == cluster
                    && r["why"].as_str().is_some_and(|w| w.contains(why))),
            "{cluster}: why every node got the command is logged"
        );
    }

    // The fleet report: the secondary is backed up by its owner's set of that run, as the
    // run's record says; the stray-tagged server by its own.
    let fleet = world.report(&app).await.expect("report");
    let status = |name: &str| harness::report_entry(&fleet, &id(name));
    let node2 = status("sqlnode2");
    assert_eq!(node2["rpo"], "within_rpo", "{node2}");
    assert_eq!(
        (
            node2["cluster_secondary"]["owner"].as_str(),
            node2["cluster_secondary"]["set"]["run_id"].as_str()
        ),
        (Some(id("sqlnode1").as_str()), Some(run_id.as_str())),
        "{node2}"
    );
    assert!(status("app01").get("cluster_secondary").is_none());
    assert_eq!(fleet["totals"]["within_rpo"], 6, "{fleet}");
    // Read a part at a time (a server each, a cluster's nodes together): the same report.
    let in_parts = world
        .app(&[("RETENTION_PART_SNAPSHOTS", "1")])
        .expect("app");
    let parted = world.report(&in_parts).await.expect("report in parts");
    assert_eq!(
        harness::report_without_clock(&parted),
        harness::report_without_clock(&fleet)
    );
    assert_eq!(
        logs.messages_starting("fleet report: part read").len(),
        4,
        "files01, app01, and each cluster's nodes together"
    );

    // Without the probe document, the secondary is sent the command and fails there.
    let bare = world.app(&[("PROBE_DOCUMENT", "")]).expect("app");
    let second = world
        .nightly(&bare, "2026-11-24T02:00:00Z")
        .await
        .expect("night 2");
    assert_eq!(vss_sent(&second).get(&id("sqlnode2")).copied(), Some(1));
    let report = logs.run_report(&second).expect("summary");
    assert!(report
        .outcomes
        .iter()
        .any(|o| o.instance_id == id("sqlnode2") && o.kind == OutcomeKind::Failed));
}
