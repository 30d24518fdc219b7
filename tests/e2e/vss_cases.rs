//! End to end: what a SQL Server and Exchange operator needs from VSS, one server per case, in
//! one deployment with its defaults (crash-consistent fallback on, one retry of a timed-out
//! freeze, the readiness probe) plus a copy region and a cost tag. Readiness before the night
//! names the servers that then fail, each by its check; the night's summary, metrics and fleet
//! report agree per server; a second night with the fallback off makes nothing for a server
//! VSS cannot reach.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use consistent_snapshot::catalog::Verdict;
use consistent_snapshot::{Cause, OutcomeKind};
use harness::{
    invoke, own_snapshots, readiness_checks, report_entry, snapshot_tag, Agent, Metrics,
    ServerSpec, VssOutcome, Windows, World,
};
use serde_json::{json, Value};

const COPY_REGION: &str = "eu-west-1";

/// A server's outcome as a run's summary gives it: kind, cause, fallback.
type Seen = (OutcomeKind, Option<Cause>, bool);

#[tokio::test]
async fn one_server_per_case_readiness_summary_metrics_and_report_agree() {
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let tag = |name: &str, key: &str| {
        ServerSpec::windows(name, 1).tag(&format!("ConsistentSnapshot:{key}"), "true")
    };
    let servers = vec![
        tag("copyonly01", "CopyOnly"),
        tag("metadata01", "SaveVssMetadata"),
        tag("nowriters01", "NoWriters"),
        tag("both01", "NoWriters").tag("ConsistentSnapshot:SaveVssMetadata", "true"),
        ServerSpec::windows("busy01", 1).sim(Windows::freeze_fails(1)),
        ServerSpec::windows("stuck01", 1)
            .instance_type("t3.micro")
            .sim(Windows::outcome(VssOutcome::VssFailure)),
        ServerSpec::windows("offline01", 1).sim(Windows::agent(Agent::Offline)),
        ServerSpec::windows("oldagent01", 1).sim(Windows::agent_version("2.2.45.0")),
        ServerSpec::windows("locked01", 1).sim(Windows::outcome(VssOutcome::LanguageMode)),
        ServerSpec::windows("norole01", 1)
            .with_bare_role()
            .sim(Windows::outcome(VssOutcome::MissingPermission)),
        ServerSpec::windows("private01", 1)
            .in_private_subnet()
            .sim(Windows::outcome(VssOutcome::NoEc2Route)),
        ServerSpec::windows("node1", 1)
            .tag("ConsistentSnapshot:Cluster", "SQLCLU")
            .sim(Windows::cluster_node("SQLCLU", true)),
        ServerSpec::windows("node2", 1)
            .tag("ConsistentSnapshot:Cluster", "SQLCLU")
            .sim(Windows::cluster_node("SQLCLU", false)),
        ServerSpec::windows("costly01", 1).tag("CostCenter", "finance"),
    ];
    let ids = world.seed(&servers).await.expect("seed");
    let id = |name: &str| ids[servers.iter().position(|s| s.name == name).expect("server")].clone();
    let name_of: BTreeMap<String, String> = ids
        .iter()
        .cloned()
        .zip(servers.iter().map(|s| s.name.clone()))
        .collect();
    let metrics = Metrics::default();
    let app = metrics.attach(
        world
            .app(&[
                ("CRASH_CONSISTENT_FALLBACK", "true"),
                ("VSS_RETRIES", "1"),
                ("VSS_RETRY_PAUSE_SECONDS", "1"),
                ("COPY_REGIONS", COPY_REGION),
                ("COPY_INSTANCE_TAGS", "CostCenter"),
            ])
            .expect("app"),
    );

    // Before the night: readiness with the probe names each server that will not get a
    // consistent set by the check that says why; the freeze risk of a micro instance is a
    // warning (a freeze timing out is not foreseeable).
    let ready = invoke(&app, json!({"action": "readiness", "probe": true}))
        .await
        .expect("readiness");
    let failing: BTreeMap<String, Vec<String>> = ready["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["verdict"] == "fail")
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                readiness_checks(s, "fail"),
            )
        })
        .collect();
    let expected_failing: BTreeMap<String, Vec<String>> = [
        ("both01", "options:invalid_option"),
        ("offline01", "ssm_agent:agent_offline"),
        ("oldagent01", "ssm_agent:agent_too_old"),
        ("locked01", "language_mode:language_mode"),
        ("norole01", "instance_profile:instance_role_permission"),
        ("private01", "ec2_route:no_ec2_route"),
    ]
    .into_iter()
    .map(|(n, c)| (n.to_string(), vec![c.to_string()]))
    .collect();
    assert_eq!(failing, expected_failing, "{ready:#}");
    let stuck = ready["instances"]
        .as_array()
        .and_then(|i| i.iter().find(|s| s["name"] == "stuck01"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(stuck["verdict"], "warn", "{stuck}");

    // The night.
    let run_id = world
        .nightly(&app, "2026-11-23T02:00:00Z")
        .await
        .expect("the nightly run");
    world
        .drain_within(&app, Duration::from_secs(120))
        .await
        .expect("copies and the retry drained");
    let night = logs.run_report(&run_id).expect("the night's summary");
    let retry = logs
        .run_report(&format!("{run_id}-vss1"))
        .expect("the retry's summary");
    let outcome = |report: &consistent_snapshot::RunSummary, name: &str| {
        report
            .outcomes
            .iter()
            .find(|o| o.instance_id == id(name))
            .map(|o| (o.kind, o.cause, o.fallback))
    };
    use OutcomeKind::*;
    let expected: [(&str, Seen); 14] = [
        ("copyonly01", (Consistent, None, false)),
        ("metadata01", (Consistent, None, false)),
        ("nowriters01", (FileSystemConsistent, None, false)),
        ("both01", (Skipped, Some(Cause::InvalidOption), false)),
        (
            "busy01",
            (CrashConsistent, Some(Cause::FreezeTimeout), false),
        ),
        (
            "stuck01",
            (CrashConsistent, Some(Cause::FreezeTimeout), false),
        ),
        (
            "offline01",
            (CrashConsistent, Some(Cause::AgentOffline), true),
        ),
        (
            "oldagent01",
            (CrashConsistent, Some(Cause::AgentTooOld), true),
        ),
        (
            "locked01",
            (CrashConsistent, Some(Cause::LanguageMode), true),
        ),
        (
            "norole01",
            (CrashConsistent, Some(Cause::InstanceRolePermission), true),
        ),
        (
            "private01",
            (CrashConsistent, Some(Cause::NoEc2Route), true),
        ),
        ("node1", (Consistent, None, false)),
        ("node2", (Skipped, None, false)),
        ("costly01", (Consistent, None, false)),
    ];
    for (name, want) in expected {
        assert_eq!(outcome(&night, name), Some(want), "{name}: {night:#?}");
    }
    // The servers that ended without a consistent set are the ones readiness failed, and the
    // freeze the micro instance was warned of (busy01's passing spike too, retried below).
    let not_consistent: BTreeSet<&str> = night
        .outcomes
        .iter()
        .filter(|o| o.kind != Consistent && o.kind != FileSystemConsistent)
        .filter(|o| o.kind != Skipped || o.cause.is_some())
        .map(|o| name_of[&o.instance_id].as_str())
        .collect();
    let mut foreseen: BTreeSet<&str> = expected_failing.keys().map(String::as_str).collect();
    foreseen.extend(["stuck01", "busy01"]);
    assert_eq!(not_consistent, foreseen);
    // The retry: busy01 consistent, stuck01 not, nobody else sent the command again.
    assert_eq!(
        outcome(&retry, "busy01"),
        Some((Consistent, None, false)),
        "{retry:#?}"
    );
    assert_eq!(
        outcome(&retry, "stuck01"),
        Some((CrashConsistent, Some(Cause::FreezeTimeout), false))
    );
    assert_eq!(retry.outcomes.len(), 2);

    // What each document got: exactly its options; nothing for the invalid combination or the
    // cluster's secondary.
    let invocations = emulator.invocations().expect("invocations");
    let vss: Vec<&Value> = invocations
        .iter()
        .filter(|i| i["document_name"] == "AWSEC2-CreateVssSnapshot")
        .collect();
    let param = |name: &str, key: &str| -> Vec<String> {
        vss.iter()
            .filter(|i| i["instance_id"] == id(name).as_str())
            .map(|i| i["parameters"][key][0].as_str().unwrap_or("-").to_string())
            .collect()
    };
    assert_eq!(param("copyonly01", "CopyOnly"), ["True"]);
    assert_eq!(param("copyonly01", "SaveVssMetadata"), ["-"]);
    assert_eq!(param("metadata01", "SaveVssMetadata"), ["True"]);
    assert_eq!(param("metadata01", "CopyOnly"), ["False"]);
    assert_eq!(param("nowriters01", "NoWriters"), ["True"]);
    assert!(param("both01", "CopyOnly").is_empty());
    assert!(param("node2", "CopyOnly").is_empty());
    assert_eq!(
        param("busy01", "CopyOnly").len(),
        2,
        "the night and its retry"
    );

    // The metrics say the same: one count per cause met, the fallbacks, the retry.
    let line = &metrics.of("run", Some(&run_id))[0];
    for (cause, n) in [
        ("CauseFreezeTimeout", 2),
        ("CauseAgentOffline", 1),
        ("CauseAgentTooOld", 1),
        ("CauseLanguageMode", 1),
        ("CauseInstanceRolePermission", 1),
        ("CauseNoEc2Route", 1),
        ("CauseInvalidOption", 1),
        ("CrashConsistentFallbacks", 5),
        ("FileSystemConsistent", 1),
        ("VssRetried", 2),
    ] {
        assert_eq!(line[cause], n, "{cause}: {line}");
    }

    // Cost tags on the snapshots and on their copies.
    for region in [harness::REGION, COPY_REGION] {
        let costly: Vec<_> = own_snapshots(emulator, region)
            .await
            .expect("snapshots")
            .into_iter()
            .filter(|s| {
                snapshot_tag(s, "ConsistentSnapshot:InstanceId") == Some(id("costly01").as_str())
            })
            .collect();
        assert_eq!(
            costly.len(),
            2,
            "{region}: costly01's boot and data volumes"
        );
        assert!(
            costly
                .iter()
                .all(|s| snapshot_tag(s, "CostCenter") == Some("finance")),
            "{region}"
        );
    }

    // The fleet report: the backups that count, the fallbacks named, the secondary covered.
    let fleet = world.report(&app).await.expect("report");
    let status = |name: &str| report_entry(&fleet, &id(name));
    for name in ["copyonly01", "busy01", "node1", "node2", "nowriters01"] {
        assert_eq!(
            status(name)["rpo"],
            "within_rpo",
            "{name}: {}",
            status(name)
        );
    }
    assert_eq!(
        status("nowriters01")["latest_consistent"]["file_system_only"],
        true
    );
    for name in [
        "offline01",
        "oldagent01",
        "locked01",
        "norole01",
        "private01",
    ] {
        let s = status(name);
        assert_eq!(s["rpo"], "never_backed_up", "{name}: {s}");
        assert_eq!(
            s["crash_consistent_fallback"]["run_id"],
            run_id.as_str(),
            "{name}: {s}"
        );
    }
    assert_eq!(status("stuck01")["rpo"], "never_backed_up");
    let (sets, _) = emulator.catalog().all_sets().await.expect("catalog");
    assert!(sets
        .iter()
        .any(|s| s.instance_id == id("nowriters01") && s.verdict == Verdict::FileSystemConsistent));

    // A second night with the fallback off: nothing is made for the server VSS cannot reach.
    let off = metrics.attach(
        world
            .app(&[("CRASH_CONSISTENT_FALLBACK", "false"), ("VSS_RETRIES", "0")])
            .expect("app"),
    );
    let second = world
        .nightly(&off, "2026-11-24T02:00:00Z")
        .await
        .expect("night 2");
    let report = logs.run_report(&second).expect("summary");
    assert_eq!(
        outcome(&report, "offline01"),
        Some((Skipped, Some(Cause::AgentOffline), false))
    );
    let made = harness::run_snapshots(emulator, &second)
        .await
        .expect("snapshots");
    assert!(!made.iter().any(
        |s| snapshot_tag(s, "ConsistentSnapshot:InstanceId") == Some(id("offline01").as_str())
    ));
}
