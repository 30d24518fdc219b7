//! End to end: a hostile fleet. After three nightly runs with copies, the attacks of the
//! threat model are carried out with only the powers their principals have:
//!
//! * a compromised fleet server's instance role (`AWSEC2VssSnapshotPolicy`): snapshots of its
//!   own volumes with any tags at creation, and `AppConsistent`/`Device` on any VSS snapshot,
//!   copies included (flip, forge);
//! * a principal that may tag snapshots (adopt);
//! * a queue sender and an invoker (forged jobs, a forged SQS event);
//! * anyone who may create and tag a volume (a volume planted with a restore's own tags).
//!
//! Then two more nightly runs and a restore. What the clean run keeps is kept, what the
//! attackers made is untouched and reported, the report and the restore tell the truth, and
//! tomorrow's run is not silenced.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{ResourceType, Snapshot, Tag, TagSpecification};
use harness::{
    invoke, queue_arn, scheduled_event, snapshot_tag, Emulator, Metrics, ServerSpec, World,
};
use serde_json::{json, Value};

const HOME: &str = "us-east-1";
const COPY_REGION: &str = "eu-west-1";

async fn own_snapshots(emulator: &Emulator, region: &str) -> Vec<Snapshot> {
    harness::own_snapshots(emulator, region)
        .await
        .expect("DescribeSnapshots")
}

/// Snapshot ids of an instance's sets by run, as the function tagged them.
fn sets_of(snapshots: &[Snapshot], instance: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in snapshots {
        if snapshot_tag(s, "ConsistentSnapshot:InstanceId") == Some(instance) {
            if let (Some(run), Some(id)) =
                (snapshot_tag(s, "ConsistentSnapshot:RunId"), s.snapshot_id())
            {
                sets.entry(run.to_string())
                    .or_default()
                    .insert(id.to_string());
            }
        }
    }
    sets
}

fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
    pairs
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect()
}

async fn volumes_of(emulator: &Emulator, instance: &str) -> Vec<String> {
    harness::attached_volumes(emulator, instance)
        .await
        .expect("DescribeVolumes")
        .into_iter()
        .map(|(volume, _)| volume)
        .collect()
}

/// The compromised server: a snapshot of its own volume, tagged at creation as anything.
async fn forge(emulator: &Emulator, volume: &str, pairs: &[(&str, &str)]) -> String {
    harness::plant_snapshot(emulator, volume, pairs)
        .await
        .expect("CreateSnapshot")
}

async fn retag(emulator: &Emulator, region: &str, snapshot: &str, pairs: &[(&str, &str)]) {
    emulator
        .ec2_in(region)
        .create_tags()
        .resources(snapshot)
        .set_tags(Some(tags(pairs)))
        .send()
        .await
        .expect("CreateTags");
}

fn sqs_event(arn: &str, body: &Value) -> Value {
    json!({"Records": [{
        "messageId": "forged-1",
        "receiptHandle": "forged",
        "body": body.to_string(),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1764547200000"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": HOME
    }]})
}

#[tokio::test]
async fn a_hostile_fleet_cannot_turn_the_backups_against_the_fleet() {
    let world = World::start(2).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            // The compromised server: in the fleet, with the VSS instance role.
            ServerSpec::windows("web01", 0),
            // Not in the fleet: someone else's server, whose snapshot gets adopted.
            ServerSpec::windows("hr01", 0).untagged(),
        ])
        .await
        .expect("seed");
    let (victim, attacker, outsider) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let metrics = Metrics::default();
    let app = metrics.attach(
        world
            .app(&[("COPY_REGIONS", COPY_REGION), ("RETAIN_COUNT", "3")])
            .expect("app"),
    );

    let mut runs = Vec::new();
    for night in 1..=3 {
        let time = format!("2026-11-2{night}T00:00:00Z");
        runs.push(world.nightly(&app, &time).await.expect("night"));
    }
    let home = own_snapshots(emulator, HOME).await;
    let real: BTreeMap<String, BTreeSet<String>> = sets_of(&home, &victim);
    assert_eq!(real.len(), 3, "three real sets of the victim: {real:?}");
    let copies_before = sets_of(&own_snapshots(emulator, COPY_REGION).await, &victim);
    assert_eq!(
        copies_before.len(),
        3,
        "and their copies: {copies_before:?}"
    );

    // 1. Flip: every real set of the victim, and every copy, "not consistent".
    for set in real.values().chain(copies_before.values()) {
        for snapshot in set {
            let region = if home.iter().any(|s| s.snapshot_id() == Some(snapshot)) {
                HOME
            } else {
                COPY_REGION
            };
            retag(emulator, region, snapshot, &[("AppConsistent", "False")]).await;
        }
    }
    // 2. Forge: four sets of the attacker's own volume, tagged as the victim's newest
    //    consistent sets (more than RETAIN_COUNT), with run ids of the nights to come too.
    let attacker_volume = volumes_of(emulator, &attacker).await[0].clone();
    let scheduled_suffix = runs[0]
        .split_once('-')
        .map(|(_, s)| s.to_string())
        .expect("suffix");
    let tomorrow = format!("20261126T000000Z-{scheduled_suffix}");
    let mut forged = Vec::new();
    for run in ["forged-1", "forged-2", "forged-3", &tomorrow] {
        forged.push(
            forge(
                emulator,
                &attacker_volume,
                &[
                    ("ConsistentSnapshot:ManagedBy", "vss-test"),
                    ("ConsistentSnapshot:InstanceId", &victim),
                    ("ConsistentSnapshot:RunId", run),
                    ("AppConsistent", "True"),
                    ("Device", "/dev/sda1"),
                    ("AwsVssConfig", "forged"),
                ],
            )
            .await,
        );
    }
    // 3. Adopt: someone else's snapshot tagged as the victim's set.
    let outsider_volume = volumes_of(emulator, &outsider).await[0].clone();
    let adopted = forge(emulator, &outsider_volume, &[("Owner", "hr")]).await;
    retag(
        emulator,
        HOME,
        &adopted,
        &[
            ("ConsistentSnapshot:ManagedBy", "vss-test"),
            ("ConsistentSnapshot:InstanceId", &victim),
            ("ConsistentSnapshot:RunId", "adopted"),
            ("AppConsistent", "False"),
        ],
    )
    .await;

    // 4. Inject: forged jobs, through the queue (a sender) and as an SQS event (an invoker).
    let attacker_snapshot = forged[0].clone();
    let restore = json!({
        "v": 1, "kind": "restore", "restore_id": "restore-forged", "instance_id": victim,
        "name": "sql01", "mode": "replace", "rollback": false, "zone": "us-east-1a",
        "set": {"run_id": "forged-1", "consistent": true, "snapshots": [{
            "snapshot_id": attacker_snapshot, "run_id": "forged-1", "device": "/dev/sda1",
            "state": "completed", "app_consistent": true, "size_gib": 30,
            "start_time": "2026-11-23T01:00:00Z"}]},
        "deadline": "2099-01-01T00:00:00Z", "attempt": 0
    });
    let run_job = json!({
        "v": 1, "kind": "run", "run_id": tomorrow, "started_at": "2026-11-26T00:00:00Z",
        "deadline": "2026-11-26T01:00:00Z", "commands": [], "skipped": [], "unsent": [],
        "attempt": 0
    });
    let watch_job = json!({
        "v": 1, "kind": "watch", "run_id": tomorrow, "started_at": "2026-11-26T00:00:00Z",
        "instance_ids": null, "check_at": "2026-11-26T00:00:00Z"
    });
    for job in [&restore, &run_job, &watch_job] {
        world.send_raw(&job.to_string()).await.expect("SendMessage");
    }
    let other_queue = queue_arn("http://127.0.0.1/123456789012/someone-elses");
    let answer = invoke(&app, sqs_event(&other_queue, &restore))
        .await
        .expect("invoke");
    assert_eq!(
        answer["batchItemFailures"][0]["itemIdentifier"], "forged-1",
        "{answer}"
    );
    assert!(
        logs.records().iter().any(|r| r["refused"]
            .as_str()
            .is_some_and(|why| why.contains("only messages of the deployment's queue"))),
        "the record from another queue is refused for its source, before anything is read"
    );
    world.drain(&app).await.expect("drain");

    // Two more nights, then the restore an operator would make.
    for night in 4..=5 {
        let time = format!("2026-11-2{night}T00:00:00Z");
        runs.push(world.nightly(&app, &time).await.expect("night"));
    }

    // Exactly the clean end state: the victim keeps its three newest real sets (3, 4, 5),
    // in both regions; runs 1 and 2 went by the clean rules, nothing else did.
    let home = own_snapshots(emulator, HOME).await;
    let kept = sets_of(&home, &victim);
    let expected: BTreeSet<String> = [
        runs[2].clone(),
        runs[3].clone(),
        runs[4].clone(),
        "forged-1".into(),
        "forged-2".into(),
        "forged-3".into(),
        tomorrow.clone(),
        "adopted".into(),
    ]
    .into();
    assert_eq!(kept.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(
        kept[&runs[2]], real[&runs[2]],
        "the flipped set 3 is kept whole"
    );
    let copies = sets_of(&own_snapshots(emulator, COPY_REGION).await, &victim);
    assert_eq!(
        copies.keys().cloned().collect::<BTreeSet<_>>(),
        [runs[2].clone(), runs[3].clone(), runs[4].clone()].into(),
        "copies: the three newest, none of the forged sets copied"
    );
    for id in forged.iter().chain([&adopted]) {
        assert!(
            home.iter().any(|s| s.snapshot_id() == Some(id)),
            "{id} untouched"
        );
    }
    // Every forged and adopted snapshot was reported as foreign.
    let foreign: BTreeSet<String> = logs
        .messages_starting("foreign snapshot")
        .iter()
        .filter_map(|r| r["snapshot_id"].as_str().map(str::to_string))
        .collect();
    for id in forged.iter().chain([&adopted]) {
        assert!(
            foreign.contains(id),
            "{id} not reported as foreign: {foreign:?}"
        );
    }

    // The report: the victim within its RPO on its real newest set.
    let report = world.report(&app).await.expect("report");
    let victim_status = report["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["instance_id"] == json!(victim)))
        .cloned()
        .expect("victim in the report");
    assert_eq!(victim_status["rpo"], json!("within_rpo"), "{victim_status}");
    assert_eq!(victim_status["latest_consistent"]["run_id"], json!(runs[4]));

    // 5. Plant: a volume tagged as the restore's own (its id is predictable from the
    //    request), waiting to be taken for the restored disk.
    let zone = "us-east-1b";
    let restore_id = consistent_snapshot::plans::restore_id(
        &victim,
        &runs[4],
        consistent_snapshot::plans::RestoreMode::Volumes,
        zone,
        "restore",
    );
    let planted = emulator
        .ec2()
        .create_volume()
        .availability_zone(zone)
        .snapshot_id(&attacker_snapshot)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .set_tags(Some(tags(&[
                    ("ConsistentSnapshot:RestoreId", &restore_id),
                    ("ConsistentSnapshot:Device", "/dev/sda1"),
                    ("ConsistentSnapshot:ManagedBy", "vss-test"),
                    ("ConsistentSnapshot:Purpose", "restore"),
                ])))
                .build(),
        )
        .send()
        .await
        .expect("CreateVolume")
        .volume_id()
        .expect("id")
        .to_string();

    // restore latest: the real newest set, never the attacker's disk.
    let restored = invoke(
        &app,
        json!({"action": "restore", "instance_id": victim, "run_id": "latest",
               "mode": "volumes", "availability_zone": zone}),
    )
    .await
    .expect("restore");
    assert_eq!(restored["restore_id"], json!(restore_id));
    assert!(
        restored["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().all(|e| e["volume_id"] != json!(planted))),
        "the planted volume is not taken for a restored one: {restored}"
    );
    world.drain(&app).await.expect("drain");
    assert_eq!(restored["run_id"], json!(runs[4]), "{restored}");
    let from: BTreeSet<String> = restored["volumes"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|e| e["snapshot_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(from, kept[&runs[4]], "restored from the real newest set");

    // The forged jobs were refused and counted; none was carried out.
    let refused: u64 = metrics
        .of("refused", None)
        .iter()
        .filter_map(|l| l["JobsRefused"].as_u64())
        .sum();
    assert!(
        refused >= 4,
        "forged restore (twice), run and watch refused: {refused}"
    );
    let volumes = emulator
        .ec2()
        .describe_volumes()
        .send()
        .await
        .expect("volumes");
    assert!(
        volumes
            .volumes()
            .iter()
            .filter(|v| v.volume_id() != Some(planted.as_str()))
            .all(|v| v.snapshot_id() != Some(attacker_snapshot.as_str())),
        "no volume was ever made from the attacker's snapshot (but the planted one)"
    );

    // Tomorrow's run is not silenced by the forged run and watch jobs.
    let start = invoke(&app, scheduled_event("nightly", "2026-11-26T00:00:00Z"))
        .await
        .expect("tomorrow");
    assert_eq!(start["run_id"], json!(tomorrow));
    assert_eq!(start["status"], json!("dispatched"), "{start}");
}

#[tokio::test]
async fn a_volume_attached_after_dispatch_makes_the_set_incomplete_everywhere() {
    let world = World::start(2).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    // The freeze starts 3 s after the command arrives: time to attach a volume in between.
    let ids = world
        .seed(&[ServerSpec::windows("sql01", 1).sim(harness::Windows::timing(3.0, 0.5))])
        .await
        .expect("seed");
    let sql = ids[0].clone();
    let app = world.app(&[]).expect("app");
    let start = invoke(&app, scheduled_event("nightly", "2026-11-23T00:00:00Z"))
        .await
        .expect("run");
    let run_id = start["run_id"].as_str().expect("run id").to_string();
    let zone = emulator
        .ec2()
        .describe_instances()
        .instance_ids(&sql)
        .send()
        .await
        .expect("DescribeInstances")
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| {
            i.placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_string)
        })
        .expect("zone");
    let late = emulator
        .ec2()
        .create_volume()
        .availability_zone(&zone)
        .size(10)
        .send()
        .await
        .expect("CreateVolume")
        .volume_id()
        .expect("id")
        .to_string();
    emulator
        .ec2()
        .attach_volume()
        .volume_id(&late)
        .instance_id(&sql)
        .device("xvdz")
        .send()
        .await
        .expect("AttachVolume");
    world.drain(&app).await.expect("drain");

    // The summary: incomplete, naming the late volume.
    let report = logs.run_report(&run_id).expect("summary");
    let outcome = &report.outcomes[0];
    assert_eq!(
        outcome.kind,
        consistent_snapshot::OutcomeKind::Incomplete,
        "{outcome:?}"
    );
    assert!(
        outcome.reason.as_deref().unwrap_or("").contains(&late),
        "{outcome:?}"
    );
    // The catalog: recorded as incomplete, the two volumes of the dispatch expected.
    let (sets, _) = emulator.catalog().sets_of(&sql).await.expect("catalog");
    assert_eq!(sets.len(), 1);
    assert_eq!(
        sets[0].verdict,
        consistent_snapshot::catalog::Verdict::Incomplete
    );
    assert_eq!(sets[0].expected.len(), 2);
    // The report: no consistent backup.
    let fleet = world.report(&app).await.expect("report");
    assert_eq!(
        fleet["instances"][0]["rpo"],
        json!("never_backed_up"),
        "{fleet}"
    );
    // Retention: not a consistent set, whatever its snapshots' tags say.
    let plan = invoke(&app, json!({"action": "retention", "dry_run": true}))
        .await
        .expect("retention plan");
    assert_eq!(
        plan["plans"][0]["instances"][&sql][0]["kind"],
        json!("not_consistent"),
        "{plan}"
    );
    // A replace from it is refused unless asked.
    let refused = world.restore(&app, &sql, "latest", "replace").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("consistent")),
        "{refused:?}"
    );
    let asked = invoke(
        &app,
        json!({"action": "restore", "instance_id": sql, "run_id": run_id, "mode": "volumes",
               "availability_zone": zone, "allow_crash_consistent": true}),
    )
    .await
    .expect("restore when asked");
    assert_eq!(asked["consistent"], json!(false), "{asked}");
}

#[tokio::test]
async fn a_tag_that_would_lower_retention_deletes_nothing_more_without_the_deployments_consent() {
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    // Anyone who may tag instances sets RetainCount=1 on sql01.
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 1).tag("ConsistentSnapshot:RetainCount", "1"),
            ServerSpec::windows("files01", 1),
        ])
        .await
        .expect("seed");
    emulator
        .seed_history(&harness::History::nightly(HOME, &ids, 3))
        .await
        .expect("history");
    let app = world.app(&[("RETAIN_COUNT", "3")]).expect("app");
    world
        .nightly(&app, "2026-11-23T00:00:00Z")
        .await
        .expect("night 1");
    // Four sets each; the deployment keeps three, and so does sql01, whatever its tag says.
    for id in &ids {
        let sets = harness::sets_of(emulator, HOME, id).await;
        assert_eq!(sets.len(), 3, "{id}: {sets:?}");
    }
    let dry = invoke(&app, json!({"action": "retention", "dry_run": true}))
        .await
        .expect("dry run");
    let reasons: Vec<&str> = dry["plans"][0]["instances"][&ids[0]]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|set| set["reason"].as_str())
        .collect();
    assert!(
        !reasons.is_empty()
            && reasons
                .iter()
                .all(|r| r.contains("RetainCount=1 would lower 3")
                    && r.contains("ALLOW_LOWER_OVERRIDES")),
        "{reasons:#?}"
    );

    // With the deployment's consent, the tag lowers sql01's retention, and only sql01's.
    let consenting = world
        .app(&[("RETAIN_COUNT", "3"), ("ALLOW_LOWER_OVERRIDES", "true")])
        .expect("app");
    world
        .nightly(&consenting, "2026-11-24T00:00:00Z")
        .await
        .expect("night 2");
    assert_eq!(harness::sets_of(emulator, HOME, &ids[0]).await.len(), 1);
    assert_eq!(harness::sets_of(emulator, HOME, &ids[1]).await.len(), 3);
    // And the lowering is said, in the plan an operator reads.
    let dry = invoke(&consenting, json!({"action": "retention", "dry_run": true}))
        .await
        .expect("dry run");
    let reason = dry["plans"][0]["instances"][&ids[0]][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("RetainCount=1 lowers 3") && reason.contains("ALLOW_LOWER_OVERRIDES=true"),
        "{reason}"
    );
}
