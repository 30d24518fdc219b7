//! End to end: what an operator reads. The fleet report against the RPO (before any run, and
//! after a run with one server made stale), the EMF metric lines of a run checked against its
//! outcome, the notification of a run that needs attention, and every action's JSON answer.

use std::collections::BTreeMap;

use harness::{
    invoke, readiness_checks, receive, snapshot_tag, Agent, Metrics, ServerSpec, VssOutcome,
    Windows, World, REGION,
};
use serde_json::{json, Value};

const COPY_REGION: &str = "eu-west-1";

/// Every metric a line declares is in it as a number, under the deployment's dimension.
fn assert_valid_emf(line: &Value) {
    let directive = &line["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(
        directive["Namespace"],
        json!("ConsistentSnapshot"),
        "{line}"
    );
    assert_eq!(directive["Dimensions"], json!([["ManagedBy"]]), "{line}");
    assert_eq!(line["ManagedBy"], json!("vss-test"), "{line}");
    assert!(line["_aws"]["Timestamp"].is_i64(), "{line}");
    let metrics = directive["Metrics"].as_array().cloned().unwrap_or_default();
    assert!(!metrics.is_empty(), "{line}");
    for metric in metrics {
        let name = metric["Name"].as_str().unwrap_or_default();
        assert!(line[name].is_u64(), "metric {name} missing from {line}");
    }
}

fn count(line: &Value, name: &str) -> u64 {
    line[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

fn by_name(report: &Value) -> BTreeMap<String, Value> {
    report["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s["name"].as_str().unwrap_or_default().to_string(), s))
        .collect()
}

#[tokio::test]
async fn report_metrics_and_notification_tell_an_operator_what_needs_attention() {
    let world = World::start(2).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    let (topic, inbox) = emulator.topic_with_inbox("ops").await.expect("topic");
    let fleet = [
        ServerSpec::windows("sql01", 2),
        ServerSpec::windows("exch01", 1),
        ServerSpec::windows("files01", 1).sim(Windows::outcome(VssOutcome::VssFailure)),
        ServerSpec::windows("branch01", 1).sim(Windows::agent(Agent::Offline)),
        ServerSpec::windows("stale01", 1),
    ];
    let ids = world.seed(&fleet).await.expect("seed");
    let id_of: BTreeMap<&str, &str> = fleet
        .iter()
        .map(|s| s.name.as_str())
        .zip(ids.iter().map(String::as_str))
        .collect();
    let metrics = Metrics::default();
    let app = metrics.attach(
        emulator
            .app(
                queue,
                &[("COPY_REGIONS", COPY_REGION), ("NOTIFY_TOPIC_ARN", &topic)],
            )
            .expect("app"),
    );

    // Before any run nothing is backed up, and the report says so for every server.
    let before = invoke(&app, json!({"action": "report"}))
        .await
        .expect("report");
    assert_eq!(before["totals"]["never_backed_up"], json!(5), "{before}");
    assert_eq!(before["rpo_hours"], json!(26));
    let first = metrics.of("report", None);
    assert_eq!(first.len(), 1);
    assert_valid_emf(&first[0]);
    assert_eq!(count(&first[0], "InstancesOutOfRpo"), 5);

    // A dry run and a retention dry run answer JSON and change nothing.
    let dry = invoke(&app, json!({"action": "snapshot", "dry_run": true}))
        .await
        .expect("dry run");
    assert_eq!(dry["status"], json!("dry_run"));
    assert_eq!(dry["dispatched"].as_array().map(Vec::len), Some(4));
    assert_eq!(dry["skipped"][0]["instance_id"], json!(id_of["branch01"]));
    let plan = invoke(&app, json!({"action": "retention", "dry_run": true}))
        .await
        .expect("retention dry run");
    let regions: Vec<&str> = plan["plans"]
        .as_array()
        .map(|p| p.iter().filter_map(|r| r["region"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        (plan["dry_run"].clone(), regions),
        (json!(true), vec![REGION, COPY_REGION])
    );
    assert!(emulator.invocations().expect("invocations").is_empty());
    assert!(
        metrics.of("retention", None).is_empty(),
        "a dry run counts nothing"
    );

    // The nightly run.
    let run_id = world
        .nightly(&app, "2026-11-23T02:00:00Z")
        .await
        .expect("the nightly run");
    let report = logs.run_report(&run_id).expect("the run's summary");

    // The run's metrics are the run's outcome.
    let run_lines = metrics.of("run", Some(&run_id));
    assert_eq!(run_lines.len(), 1, "one metric line per run");
    let line = &run_lines[0];
    assert_valid_emf(line);
    use consistent_snapshot::OutcomeKind::*;
    for (name, kind) in [
        ("Consistent", Consistent),
        ("CrashConsistent", CrashConsistent),
        ("Incomplete", Incomplete),
        ("Failed", Failed),
        ("TimedOut", TimedOut),
        ("Skipped", Skipped),
    ] {
        assert_eq!(count(line, name), report.count(kind) as u64, "{name}");
    }
    assert_eq!(
        (count(line, "Dispatched"), count(line, "Consistent")),
        (4, 3)
    );
    assert_eq!(
        (count(line, "CrashConsistent"), count(line, "Skipped")),
        (1, 1)
    );
    assert_eq!(count(line, "NotConsistent"), 1);
    // Copies: the count is what eu-west-1 holds for the run.
    let copies = emulator
        .ec2_in(COPY_REGION)
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .expect("copies");
    let copied = copies
        .snapshots()
        .iter()
        .filter(|s| snapshot_tag(s, "ConsistentSnapshot:RunId") == Some(run_id.as_str()))
        .filter(|s| s.state().map(|v| v.as_str()) == Some("completed"))
        .count();
    let copy_lines = metrics.of("copies", Some(&run_id));
    assert_eq!(copy_lines.len(), 1);
    assert_valid_emf(&copy_lines[0]);
    assert_eq!(count(&copy_lines[0], "SnapshotsCopied"), copied as u64);
    assert_eq!(
        copied, 9,
        "3 + 2 + 2 + 2 snapshots of the four servers that ran"
    );
    let retention_lines = metrics.of("retention", Some(&run_id));
    assert_eq!(retention_lines.len(), 1);
    assert_eq!(count(&retention_lines[0], "SnapshotsDeleted"), 0);

    // files01's VSS failure reached the operator's inbox, once.
    let mail = receive(&emulator.sqs(), &inbox, 10, 1)
        .await
        .expect("inbox");
    assert_eq!(mail.len(), 1, "one notification for the run");
    let envelope: Value =
        serde_json::from_str(mail[0].body().unwrap_or_default()).expect("SNS envelope");
    let subject = envelope["Subject"].as_str().unwrap_or_default();
    let message = envelope["Message"].as_str().unwrap_or_default();
    assert!(
        subject.contains(&run_id) && subject.contains("1 instance(s) not consistent"),
        "{subject}"
    );
    assert!(
        message.contains("files01") && message.contains("Thaw pipe connection timed out"),
        "{message}"
    );

    // A day and a half later for stale01 only: its set is now past the 26 h RPO.
    let stale_snapshots = report
        .outcomes
        .iter()
        .find(|o| o.name == "stale01")
        .map(|o| o.snapshots.clone())
        .expect("stale01 in the run");
    emulator
        .age_snapshots(REGION, &stale_snapshots, 30)
        .await
        .expect("age");

    let after = invoke(&app, json!({"action": "report"}))
        .await
        .expect("report");
    let order: Vec<&str> = after["instances"]
        .as_array()
        .map(|i| i.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        order,
        ["branch01", "files01", "stale01", "exch01", "sql01"],
        "out of RPO first: never backed up, then the oldest"
    );
    let statuses = by_name(&after);
    let branch = &statuses["branch01"];
    assert_eq!(branch["rpo"], json!("never_backed_up"));
    assert!(branch["next_run_skips"]
        .as_str()
        .is_some_and(|r| r.contains("ConnectionLost") || r.contains("not Online")));
    let files = &statuses["files01"];
    assert_eq!(
        files["rpo"],
        json!("never_backed_up"),
        "a crash-consistent set is no backup against the RPO"
    );
    assert_eq!(files["last_failure"]["run_id"], json!(run_id));
    assert_eq!(files["last_failure"]["resolved"], json!(false));
    assert!(files["last_failure"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("crash-consistent") && r.contains("Thaw pipe")));
    let stale = &statuses["stale01"];
    assert_eq!(stale["rpo"], json!("out_of_rpo"));
    assert_eq!(stale["latest_consistent"]["run_id"], json!(run_id));
    assert!(stale["latest_consistent"]["age_hours"]
        .as_f64()
        .is_some_and(|h| (30.0..31.0).contains(&h)));
    let sql = &statuses["sql01"];
    assert_eq!(sql["rpo"], json!("within_rpo"));
    assert_eq!(sql["instance_id"], json!(id_of["sql01"]));
    assert_eq!(sql["latest_consistent"]["volumes"], json!(3));
    assert_eq!(sql["copies"][COPY_REGION], json!({"completed": 3, "of": 3}));
    assert!(sql.get("last_failure").is_none());
    assert_eq!(
        after["totals"],
        json!({
            "instances": 5, "within_rpo": 2, "out_of_rpo": 3, "never_backed_up": 2,
            "unresolved_failures": 1, "not_ready": 1, "copies_missing": 0,
            "causes": {"freeze_timeout": 1, "agent_offline": 1}
        })
    );
    let report_lines = metrics.of("report", None);
    assert_eq!(report_lines.len(), 2);
    assert_eq!(count(&report_lines[1], "InstancesOutOfRpo"), 3);
    assert_eq!(count(&report_lines[1], "InstancesNeverBackedUp"), 2);
    assert!(
        !logs
            .messages_starting("fleet report: 5 instances, 2 within")
            .is_empty(),
        "the report's summary line is logged"
    );

    // Someone mistypes exch01's tag: it is no longer backed up, and the report says so by name
    // (it would otherwise vanish from it as from discovery), with a metric the alarm watches.
    emulator
        .ec2()
        .create_tags()
        .resources(id_of["exch01"])
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("ConsistentSnapshot")
                .value("WindowsVS")
                .build(),
        )
        .send()
        .await
        .expect("CreateTags");
    let lost = invoke(&app, json!({"action": "report"}))
        .await
        .expect("report");
    assert_eq!(lost["totals"]["instances"], json!(4), "{lost}");
    assert_eq!(lost["totals"]["lost_tag"], json!(1), "{lost}");
    assert_eq!(lost["lost_tag"][0]["instance_id"], json!(id_of["exch01"]));
    assert_eq!(lost["lost_tag"][0]["tag_now"], json!("WindowsVS"));
    assert_eq!(
        lost["lost_tag"][0]["latest_consistent"]["run_id"],
        json!(run_id)
    );
    // Read a server at a time (a part of the fleet each, as a catalog of millions of
    // snapshots is read), the report is the same: statuses, copies, failures, totals, and the
    // server that lost its tag.
    let in_parts = emulator
        .app(
            queue,
            &[
                ("COPY_REGIONS", COPY_REGION),
                ("NOTIFY_TOPIC_ARN", &topic),
                ("RETENTION_PART_SNAPSHOTS", "1"),
            ],
        )
        .expect("app");
    let parted = invoke(&in_parts, json!({"action": "report"}))
        .await
        .expect("report in parts");
    assert_eq!(
        harness::report_without_clock(&parted),
        harness::report_without_clock(&lost)
    );
    assert_eq!(
        logs.messages_starting("fleet report: part read").len(),
        5,
        "four tagged servers and exch01, a part each"
    );
    let report_lines = metrics.of("report", None);
    assert_eq!(count(&report_lines[2], "InstancesLostTag"), 1);
    assert_eq!(count(&report_lines[1], "InstancesLostTag"), 0);
    assert!(
        logs.messages_starting("fleet report: 4 instances")
            .iter()
            .any(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.contains("lost their tag") && m.contains("exch01"))),
        "the summary line names it"
    );
}

/// Each way a server fails to get a consistent set, as the Windows side prints it, is named
/// with its one-line fix wherever an operator reads: the run's summary and its log table, the
/// notification, a metric per cause, and the fleet report (from SSM's history and the skips).
#[tokio::test]
async fn each_failure_is_named_with_its_cause_and_fix_wherever_an_operator_reads() {
    use consistent_snapshot::{Cause, OutcomeKind};
    let world = World::start(2).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    let (topic, inbox) = emulator.topic_with_inbox("ops").await.expect("topic");
    let cases: [(&str, Windows, OutcomeKind, Option<Cause>); 10] = [
        ("sql01", Windows::default(), OutcomeKind::Consistent, None),
        (
            "freeze01",
            Windows::outcome(VssOutcome::VssFailure),
            OutcomeKind::CrashConsistent,
            Some(Cause::FreezeTimeout),
        ),
        (
            "writer01",
            Windows::outcome(VssOutcome::WriterFailed),
            OutcomeKind::CrashConsistent,
            Some(Cause::WriterFailed),
        ),
        (
            "lockdown01",
            Windows::outcome(VssOutcome::LanguageMode),
            OutcomeKind::Failed,
            Some(Cause::LanguageMode),
        ),
        (
            "norole01",
            Windows::outcome(VssOutcome::MissingPermission),
            OutcomeKind::Failed,
            Some(Cause::InstanceRolePermission),
        ),
        (
            "private01",
            Windows::outcome(VssOutcome::NoEc2Route),
            OutcomeKind::Failed,
            Some(Cause::NoEc2Route),
        ),
        (
            "novss01",
            Windows::outcome(VssOutcome::ComponentsMissing),
            OutcomeKind::Failed,
            Some(Cause::VssComponents),
        ),
        (
            "lost01",
            Windows {
                outcome: Some(VssOutcome::Undeliverable),
                delivery_timeout: Some(2.0),
                ..Windows::default()
            },
            OutcomeKind::TimedOut,
            Some(Cause::Undeliverable),
        ),
        (
            "offline01",
            Windows::agent(Agent::Offline),
            OutcomeKind::Skipped,
            Some(Cause::AgentOffline),
        ),
        (
            "oldagent01",
            Windows::agent_version("2.2.45.0"),
            OutcomeKind::Skipped,
            Some(Cause::AgentTooOld),
        ),
    ];
    let fleet: Vec<ServerSpec> = cases
        .iter()
        .map(|(name, sim, _, _)| ServerSpec::windows(name, 1).sim(sim.clone()))
        .collect();
    world.seed(&fleet).await.expect("seed");
    let metrics = Metrics::default();
    let app = metrics.attach(
        emulator
            .app(queue, &[("NOTIFY_TOPIC_ARN", &topic)])
            .expect("app"),
    );
    let run_id = world
        .nightly(&app, "2026-11-23T02:00:00Z")
        .await
        .expect("the nightly run");

    // The summary: each server's outcome and cause.
    let report = logs.run_report(&run_id).expect("the run's summary");
    for (name, _, kind, cause) in &cases {
        let outcome = report
            .outcomes
            .iter()
            .find(|o| o.name == *name)
            .unwrap_or_else(|| panic!("{name} missing from {report:#?}"));
        assert_eq!(
            (outcome.kind, outcome.cause),
            (*kind, *cause),
            "{name}: {outcome:?}"
        );
    }
    let named: Vec<Cause> = cases.iter().filter_map(|c| c.3).collect();
    assert_eq!(
        report.causes,
        named.iter().map(|c| (*c, 1)).collect::<BTreeMap<_, _>>()
    );

    // The notification: every cause met, with its fix, before the table.
    let mail = receive(&emulator.sqs(), &inbox, 10, 1)
        .await
        .expect("inbox");
    assert_eq!(mail.len(), 1, "one notification for the run");
    let envelope: Value =
        serde_json::from_str(mail[0].body().unwrap_or_default()).expect("SNS envelope");
    let message = envelope["Message"].as_str().unwrap_or_default();
    for cause in &named {
        let line = format!("{cause} (1): {}", cause.remediation());
        assert!(message.contains(&line), "{line} missing from\n{message}");
    }
    assert!(message.find("Causes and fixes:") < message.find("INSTANCE"));

    // One metric per cause met, and none for a cause that was not.
    let lines = metrics.of("run", Some(&run_id));
    assert_eq!(lines.len(), 1);
    assert_valid_emf(&lines[0]);
    for cause in &named {
        assert_eq!(count(&lines[0], cause.metric()), 1, "{}", cause.metric());
    }
    assert!(lines[0].get(Cause::Cancelled.metric()).is_none());

    // The fleet report, from SSM's history and what the next run would skip.
    let fleet_report = invoke(&app, json!({"action": "report"}))
        .await
        .expect("report");
    let statuses = by_name(&fleet_report);
    for (name, _, kind, cause) in &cases {
        let status = &statuses[*name];
        let (cause_at, fix_at) = if *kind == OutcomeKind::Skipped {
            ("/next_run_cause", "/next_run_fix")
        } else {
            ("/last_failure/cause", "/last_failure/fix")
        };
        assert_eq!(
            status.pointer(cause_at).cloned().unwrap_or(Value::Null),
            serde_json::to_value(cause).expect("cause"),
            "{name}: {status}"
        );
        assert_eq!(
            status.pointer(fix_at).and_then(Value::as_str),
            cause.map(Cause::remediation),
            "{name}: {status}"
        );
    }
    assert_eq!(
        fleet_report["totals"]["causes"],
        serde_json::to_value(named.iter().map(|c| (*c, 1)).collect::<BTreeMap<_, _>>())
            .expect("causes"),
        "{fleet_report}"
    );
}

/// `{"action":"readiness"}` before the night names exactly the servers that then fail, each by
/// the check that says why: agent offline or too old, options the document refuses, no
/// instance profile (the document cannot call EC2), a role IAM's simulator says lacks the
/// document's calls, no route to EC2, Windows older than 2016. A small instance and
/// instance-store volumes are warnings, not failures; the on-instance checks are listed as
/// unknown.
#[tokio::test]
async fn readiness_before_the_night_names_the_servers_that_then_fail_by_their_check() {
    let world = World::start(2).await.expect("world");
    let fleet = [
        ServerSpec::windows("sql01", 1),
        ServerSpec::windows("tiny01", 1).instance_type("t3.micro"),
        ServerSpec::windows("branch01", 1).sim(Windows::agent(Agent::Offline)),
        ServerSpec::windows("oldagent01", 1).sim(Windows::agent_version("2.2.45.0")),
        ServerSpec::windows("both01", 1)
            .tag("ConsistentSnapshot:NoWriters", "true")
            .tag("ConsistentSnapshot:SaveVssMetadata", "true"),
        // The Windows side fails as such servers do: no role to call EC2 with, no way to it.
        ServerSpec::windows("norole01", 1)
            .without_instance_profile()
            .sim(Windows::outcome(VssOutcome::MissingPermission)),
        ServerSpec::windows("private01", 1)
            .in_private_subnet()
            .sim(Windows::outcome(VssOutcome::NoEc2Route)),
        // A profile whose role was made without AWSEC2VssSnapshotPolicy: IAM's simulator says so.
        ServerSpec::windows("weakrole01", 1)
            .with_bare_role()
            .sim(Windows::outcome(VssOutcome::MissingPermission)),
        ServerSpec::windows("legacy2012", 1).sim(Windows::windows_version("6.3.9600")),
        // Instance-store volumes no snapshot protects: a warning.
        ServerSpec::windows("scratch01", 1).instance_type("m5d.large"),
    ];
    let ids = world.seed(&fleet).await.expect("seed");
    let name_of: BTreeMap<&str, &str> = ids
        .iter()
        .map(String::as_str)
        .zip(fleet.iter().map(|s| s.name.as_str()))
        .collect();
    let app = world.app(&[]).expect("app");

    let answer = invoke(&app, json!({"action": "readiness"}))
        .await
        .expect("readiness");
    let servers = answer["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(servers.len(), 10, "{answer:#}");
    let verdicts: BTreeMap<String, (String, Vec<String>)> = servers
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                (
                    s["verdict"].as_str().unwrap_or_default().to_string(),
                    readiness_checks(s, "fail"),
                ),
            )
        })
        .collect();
    let expected: BTreeMap<String, (String, Vec<String>)> = [
        ("sql01", "pass", vec![]),
        ("tiny01", "warn", vec![]),
        ("branch01", "fail", vec!["ssm_agent:agent_offline"]),
        ("oldagent01", "fail", vec!["ssm_agent:agent_too_old"]),
        ("both01", "fail", vec!["options:invalid_option"]),
        (
            "norole01",
            "fail",
            vec!["instance_profile:instance_role_permission"],
        ),
        ("private01", "fail", vec!["ec2_route:no_ec2_route"]),
        (
            "weakrole01",
            "fail",
            vec!["instance_profile:instance_role_permission"],
        ),
        (
            "legacy2012",
            "fail",
            vec!["windows_version:invalid_platform"],
        ),
        ("scratch01", "warn", vec![]),
    ]
    .into_iter()
    .map(|(n, v, f)| {
        (
            n.to_string(),
            (v.to_string(), f.into_iter().map(str::to_string).collect()),
        )
    })
    .collect();
    assert_eq!(verdicts, expected, "{answer:#}");
    assert_eq!(
        (
            answer["fail"].clone(),
            answer["warn"].clone(),
            answer["pass"].clone()
        ),
        (json!(7), json!(2), json!(1))
    );
    // The fleet's role was simulated (AWS's policy document, conditions and all), and the
    // bare role's missing calls are named.
    let profile_check = |name: &str| -> String {
        servers
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["checks"].as_array())
            .into_iter()
            .flatten()
            .find(|c| c["check"] == "instance_profile")
            .map(|c| c["detail"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert!(
        profile_check("sql01").ends_with("allows every call the VSS document makes (simulated)"),
        "{}",
        profile_check("sql01")
    );
    assert!(
        profile_check("weakrole01").contains("does not allow ec2:CreateSnapshots on arn:aws:ec2:"),
        "{}",
        profile_check("weakrole01")
    );
    // What it could not see from here is listed as such, never passed.
    assert!(servers
        .iter()
        .all(|s| s["checks"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["check"] == "on_instance" && c["result"] == "unknown"))));
    assert!(
        invoke(&app, json!({"action": "readiness", "instance_ids": []}))
            .await
            .is_err()
    );
    // The fleet report shows each server's verdict and failing checks too.
    let fleet_report = invoke(&app, json!({"action": "report"}))
        .await
        .expect("report");
    let briefs: BTreeMap<String, Value> = by_name(&fleet_report)
        .into_iter()
        .map(|(name, s)| (name, s["readiness"].clone()))
        .collect();
    assert_eq!(
        briefs["private01"],
        json!({"verdict": "fail", "failing": ["ec2_route"]})
    );
    assert_eq!(briefs["tiny01"], json!({"verdict": "warn"}));
    assert_eq!(briefs["sql01"], json!({"verdict": "pass"}));

    // The night: exactly the servers readiness failed end without a consistent set.
    let failing = expected
        .iter()
        .filter(|(_, (v, _))| v == "fail")
        .map(|(n, _)| n.as_str())
        .collect();
    night_fails_exactly(&world, &app, &name_of, failing).await;
}

/// Runs the night and checks that exactly the servers `failing` (by name) end without a
/// consistent set.
async fn night_fails_exactly(
    world: &World,
    app: &consistent_snapshot::App,
    name_of: &BTreeMap<&str, &str>,
    failing: std::collections::BTreeSet<&str>,
) {
    use consistent_snapshot::OutcomeKind;
    let run_id = world
        .nightly(app, "2026-11-23T02:00:00Z")
        .await
        .expect("the nightly run");
    let report = world.logs.run_report(&run_id).expect("summary");
    let not_consistent: std::collections::BTreeSet<&str> = report
        .outcomes
        .iter()
        .filter(|o| o.kind != OutcomeKind::Consistent)
        .map(|o| name_of[o.instance_id.as_str()])
        .collect();
    assert_eq!(not_consistent, failing, "{report:#?}");
}

/// `{"action":"readiness","probe":true}`: the stack's read-only probe runs on every server
/// whose agent is online and names what only the server knows — PowerShell's language mode, a
/// failed VSS writer, AwsVssComponents missing, a failover cluster node that does not own the
/// cluster's disks (and is not tagged with its cluster) — each as its check and cause; dynamic
/// disks are a warning; a server the probe cannot reach says why. The night then fails exactly the servers the probe failed. The
/// probe sends nothing else and makes no snapshot.
#[tokio::test]
async fn readiness_with_the_probe_names_what_only_the_server_knows() {
    let world = World::start(2).await.expect("world");
    let fleet = [
        ServerSpec::windows("sql01", 1),
        ServerSpec::windows("locked01", 1).sim(Windows::outcome(VssOutcome::LanguageMode)),
        ServerSpec::windows("writer01", 1).sim(Windows::outcome(VssOutcome::WriterFailed)),
        ServerSpec::windows("novss01", 1).sim(Windows::outcome(VssOutcome::ComponentsMissing)),
        ServerSpec::windows("branch01", 1).sim(Windows::agent(Agent::Offline)),
        ServerSpec::windows("dyn01", 2).sim(Windows::dynamic_disks(2)),
        ServerSpec::windows("node1", 1).sim(Windows::cluster_node("SQLCLU", true)),
        ServerSpec::windows("node2", 1).sim(Windows::cluster_node("SQLCLU", false)),
    ];
    let ids = world.seed(&fleet).await.expect("seed");
    let name_of: BTreeMap<&str, &str> = ids
        .iter()
        .map(String::as_str)
        .zip(fleet.iter().map(|s| s.name.as_str()))
        .collect();
    let app = world.app(&[]).expect("app");

    let began = std::time::Instant::now();
    let answer = invoke(&app, json!({"action": "readiness", "probe": true}))
        .await
        .expect("readiness with the probe");
    let took = began.elapsed();
    let servers = answer["instances"].as_array().cloned().unwrap_or_default();
    type Seen = BTreeMap<String, (String, Vec<String>, Vec<String>)>;
    let seen: Seen = servers
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                (
                    s["verdict"].as_str().unwrap_or_default().to_string(),
                    readiness_checks(s, "fail"),
                    readiness_checks(s, "warn"),
                ),
            )
        })
        .collect();
    let expected: Seen = [
        ("sql01", "pass", vec![], vec![]),
        (
            "locked01",
            "fail",
            vec!["language_mode:language_mode"],
            vec![],
        ),
        (
            "writer01",
            "fail",
            vec!["vss_writers:writer_failed"],
            vec![],
        ),
        (
            "novss01",
            "fail",
            vec!["aws_vss_components:vss_components"],
            vec![],
        ),
        ("branch01", "fail", vec!["ssm_agent:agent_offline"], vec![]),
        ("dyn01", "warn", vec![], vec!["dynamic_disks"]),
        ("node1", "pass", vec![], vec![]),
        ("node2", "fail", vec!["cluster:cluster_secondary"], vec![]),
    ]
    .into_iter()
    .map(|(n, v, f, w)| {
        let owned = |l: Vec<&str>| l.into_iter().map(str::to_string).collect();
        (n.to_string(), (v.to_string(), owned(f), owned(w)))
    })
    .collect();
    assert_eq!(seen, expected, "{answer:#}");
    assert_eq!(answer["probe_answered"], json!(7), "{answer:#}");
    // The server the probe could not reach says why, as unknown, never as a pass.
    let branch = servers
        .iter()
        .find(|s| s["name"] == "branch01")
        .expect("branch01");
    let on_instance = branch["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["check"] == "on_instance")
        .expect("branch01's on-instance check");
    assert_eq!(on_instance["result"], "unknown", "{on_instance}");
    assert!(
        on_instance["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ConnectionLost")),
        "{on_instance}"
    );
    // The failures name the server's own words.
    let writer = servers
        .iter()
        .find(|s| s["name"] == "writer01")
        .expect("writer01");
    assert!(writer.to_string().contains("SqlServerWriter"), "{writer}");
    // The probe went to the seven reachable servers, as the stack's document, and nothing
    // else was sent or made.
    let invocations = world.emulator.invocations().expect("invocations");
    let probed: std::collections::BTreeSet<&str> = invocations
        .iter()
        .filter(|i| i["document_name"] == harness::PROBE_DOCUMENT)
        .filter_map(|i| i["instance_id"].as_str())
        .map(|id| name_of[id])
        .collect();
    assert_eq!(
        probed,
        ["dyn01", "locked01", "node1", "node2", "novss01", "sql01", "writer01"]
            .into_iter()
            .collect(),
    );
    assert_eq!(invocations.len(), 7, "{invocations:#?}");
    let ec2 = world.emulator.ec2();
    let volumes = ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("attachment.instance-id")
                .set_values(Some(ids.clone()))
                .build(),
        )
        .send()
        .await
        .expect("the fleet's volumes");
    let volume_ids: Vec<String> = volumes
        .volumes()
        .iter()
        .filter_map(|v| v.volume_id().map(str::to_string))
        .collect();
    assert_eq!(volume_ids.len(), 8 * 2 + 1, "boot and data volumes");
    let snapshots = ec2
        .describe_snapshots()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("volume-id")
                .set_values(Some(volume_ids))
                .build(),
        )
        .send()
        .await
        .expect("snapshots");
    assert!(snapshots.snapshots().is_empty(), "{snapshots:?}");
    assert!(
        took < std::time::Duration::from_secs(60),
        "the probe took {took:?}"
    );

    // A deployment without the probe document refuses to probe, and says how to get it.
    let bare = world.app(&[("PROBE_DOCUMENT", "")]).expect("app");
    let refused = invoke(&bare, json!({"action": "readiness", "probe": true}))
        .await
        .expect_err("no probe document");
    assert!(refused.to_string().contains("PROBE_DOCUMENT"), "{refused}");

    // The night: exactly the servers the probe failed end without a consistent set.
    let failing = expected
        .iter()
        .filter(|(_, (v, _, _))| v == "fail")
        .map(|(n, _)| n.as_str())
        .collect();
    night_fails_exactly(&world, &app, &name_of, failing).await;
}
