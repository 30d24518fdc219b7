//! End to end: restores from the sets a nightly run made. `replace` swaps every volume of the
//! set in place and keeps the old ones; `volumes` restores into another zone; a replace stopped
//! half-way and called again ends as an uninterrupted one; a rollback puts the old volumes
//! back; `verify` restores a sample, measures, and leaves no volume behind.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::Volume;
use harness::chaos::{Chaos, ChaosOptions, Ended};
use harness::faults::Stop;
use harness::{
    invoke, run_snapshots, snapshot_tag, Agent, Ebs, Emulator, Metrics, ServerSpec, VssOutcome,
    Windows, World,
};
use serde_json::{json, Value};

/// A slow AWS: every call takes this long, and the function has this timeout (its passes stop
/// 3 s before it).
const SLOW_CALL: Duration = Duration::from_millis(250);
const SLOW_TIMEOUT: Duration = Duration::from_secs(12);

fn tag<'a>(volume: &'a Volume, key: &str) -> Option<&'a str> {
    volume
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

async fn all_volumes(emulator: &Emulator) -> Vec<Volume> {
    emulator
        .ec2()
        .describe_volumes()
        .send()
        .await
        .expect("DescribeVolumes")
        .volumes()
        .to_vec()
}

/// The instance's state and device -> volume id.
async fn instance(emulator: &Emulator, id: &str) -> (String, BTreeMap<String, String>) {
    let out = emulator
        .ec2()
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("DescribeInstances");
    let instance = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .expect("the instance");
    let state = instance
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default();
    let devices = instance
        .block_device_mappings()
        .iter()
        .filter_map(|m| {
            Some((
                m.device_name()?.to_string(),
                m.ebs()?.volume_id()?.to_string(),
            ))
        })
        .collect();
    (state, devices)
}

/// The set's snapshot of each device, from EC2.
async fn set_of(emulator: &Emulator, instance_id: &str, run_id: &str) -> BTreeMap<String, String> {
    run_snapshots(emulator, run_id)
        .await
        .expect("DescribeSnapshots")
        .iter()
        .filter(|s| snapshot_tag(s, "ConsistentSnapshot:InstanceId") == Some(instance_id))
        .filter_map(|s| {
            Some((
                snapshot_tag(s, "Device")?.to_string(),
                s.snapshot_id()?.to_string(),
            ))
        })
        .collect()
}

/// After a replace: running, every device of the set on a volume restored from that device's
/// snapshot by this restore, exactly one restored volume per device, the old volumes kept,
/// detached and tagged.
async fn assert_replaced(
    emulator: &Emulator,
    instance_id: &str,
    set: &BTreeMap<String, String>,
    before: &BTreeMap<String, String>,
    answer: &Value,
) {
    let restore_id = answer["restore_id"].as_str().expect("restore id");
    let (state, now) = instance(emulator, instance_id).await;
    assert_eq!(state, "running", "{answer}");
    let volumes = all_volumes(emulator).await;
    let by_id: BTreeMap<&str, &Volume> = volumes
        .iter()
        .filter_map(|v| Some((v.volume_id()?, v)))
        .collect();
    for (device, snapshot) in set {
        let volume = by_id[now[device].as_str()];
        assert_eq!(
            tag(volume, "ConsistentSnapshot:RestoredFrom"),
            Some(snapshot.as_str()),
            "{device}"
        );
        assert_eq!(volume.snapshot_id(), Some(snapshot.as_str()), "{device}");
        assert_eq!(
            tag(volume, "ConsistentSnapshot:RestoreId"),
            Some(restore_id)
        );
        let old = by_id
            .get(before[device].as_str())
            .unwrap_or_else(|| panic!("old volume of {device} was deleted"));
        assert_eq!(
            old.state().map(|s| s.as_str()),
            Some("available"),
            "{device}"
        );
        assert_eq!(tag(old, "ConsistentSnapshot:ReplacedBy"), Some(restore_id));
        assert_eq!(
            tag(old, "ConsistentSnapshot:DetachedFrom"),
            Some(format!("{instance_id} {device}").as_str())
        );
    }
    let restored = volumes
        .iter()
        .filter(|v| tag(v, "ConsistentSnapshot:RestoreId") == Some(restore_id))
        .count();
    assert_eq!(
        restored,
        set.len(),
        "one restored volume per device, no duplicate"
    );
}

#[tokio::test]
async fn restores_replace_in_place_into_another_zone_resume_roll_back_and_verify() {
    let world = World::start(2).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 2),
            ServerSpec::windows("web01", 1),
            ServerSpec::windows("app01", 2),
            ServerSpec::windows("files01", 1).sim(Windows::outcome(VssOutcome::VssFailure)),
        ])
        .await
        .expect("seed");
    let (sql, web, app_server, files) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let metrics = Metrics::default();
    let app = metrics.attach(world.app(&[]).expect("app"));
    let run_id = world
        .nightly(&app, "2026-11-23T02:00:00Z")
        .await
        .expect("the nightly run");
    // Two nights: "latest" is the second; the first is there for a replace from another set.
    let first_run = run_id;
    let run_id = world
        .nightly(&app, "2026-11-24T02:00:00Z")
        .await
        .expect("the second nightly run");

    // A crash-consistent set is refused unless asked for by name and allowed.
    let refused = invoke(
        &app,
        json!({"action": "restore", "instance_id": files, "run_id": "latest", "mode": "replace"}),
    )
    .await
    .expect_err("no consistent set")
    .to_string();
    assert!(
        refused.contains("none of its 2 sets is consistent"),
        "{refused}"
    );
    let refused = invoke(
        &app,
        json!({"action": "restore", "instance_id": files, "run_id": run_id, "mode": "volumes"}),
    )
    .await
    .expect_err("crash-consistent")
    .to_string();
    assert!(refused.contains("allow_crash_consistent"), "{refused}");

    let refused = invoke(
        &app,
        json!({"action": "restore", "instance_id": sql, "run_id": "latest", "mode": "replace", "availability_zone": "us-east-1c"}),
    )
    .await
    .expect_err("a replace stays in the instance's zone")
    .to_string();
    assert!(refused.contains("own zone"), "{refused}");

    // replace: sql01 on its three restored volumes, the old ones kept. EBS takes 1.5 s to make
    // a volume and the instance as long to stop or start: every wait goes through the queue.
    emulator
        .simulate_ebs(&Ebs {
            volume_seconds: Some(1.5),
            instance_seconds: Some(1.5),
            ..Ebs::default()
        })
        .expect("slow EBS");
    let set = set_of(emulator, sql, &run_id).await;
    assert_eq!(set.len(), 3);
    let (_, before) = instance(emulator, sql).await;
    // Windows does not come back at first: the SSM agent stays offline after the start.
    emulator
        .simulate(&[(sql.clone(), Windows::agent(Agent::Offline))].into())
        .expect("agent offline");
    let request =
        json!({"action": "restore", "instance_id": sql, "run_id": "latest", "mode": "replace"});
    let answer = invoke(&app, request.clone()).await.expect("replace");
    assert_eq!(answer["run_id"], json!(run_id));
    assert_eq!(answer["status"], json!("in_progress"), "{answer}");
    assert!(answer["waiting_for"]
        .as_str()
        .is_some_and(|w| w.contains("to be created")));
    assert_eq!(
        instance(emulator, sql).await,
        ("running".to_string(), before.clone()),
        "nothing is stopped before the new volumes exist"
    );
    let waiting = world
        .drain_within(&app, Duration::from_secs(25))
        .await
        .expect_err("the restore waits for the agent");
    assert!(waiting.to_string().contains("not drained"), "{waiting}");
    let status = invoke(&app, request.clone()).await.expect("status");
    assert_eq!(status["status"], json!("in_progress"), "{status}");
    assert_eq!(
        status["waiting_for"],
        json!("Windows to be back: the SSM agent is ConnectionLost")
    );
    emulator
        .simulate(&[(sql.clone(), Windows::agent(Agent::Online))].into())
        .expect("agent online");
    world
        .drain_within(&app, Duration::from_secs(60))
        .await
        .expect("drain");
    assert_replaced(emulator, sql, &set, &before, &answer).await;
    let again = invoke(
        &app,
        json!({"action": "restore", "instance_id": sql, "run_id": "latest", "mode": "replace"}),
    )
    .await
    .expect("replace again");
    assert_eq!(again["status"], json!("done"), "{again}");
    assert_eq!(
        again["steps"],
        json!([]),
        "calling a finished restore again does nothing"
    );
    assert_eq!(again["replaced"].as_array().map(Vec::len), Some(3));

    // rollback: the old volumes go back, the restored ones are kept.
    invoke(
        &app,
        json!({"action": "restore", "instance_id": sql, "run_id": run_id, "mode": "replace", "rollback": true}),
    )
    .await
    .expect("rollback");
    world
        .drain_within(&app, Duration::from_secs(60))
        .await
        .expect("drain");
    let (state, after_rollback) = instance(emulator, sql).await;
    assert_eq!((state.as_str(), &after_rollback), ("running", &before));
    let restore_id = answer["restore_id"].as_str().unwrap_or_default();
    let kept = all_volumes(emulator)
        .await
        .into_iter()
        .filter(|v| tag(v, "ConsistentSnapshot:RestoreId") == Some(restore_id))
        .filter(|v| v.state().map(|s| s.as_str()) == Some("available"))
        .count();
    assert_eq!(kept, 3, "the restored volumes are detached and kept");

    // volumes: web01's set in another zone, its instance untouched.
    let (_, web_before) = instance(emulator, web).await;
    let answer = invoke(
        &app,
        json!({"action": "restore", "instance_id": web, "run_id": "latest", "mode": "volumes", "availability_zone": "us-east-1c"}),
    )
    .await
    .expect("volumes");
    world
        .drain_within(&app, Duration::from_secs(60))
        .await
        .expect("drain");
    let listed = answer["volumes"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 2, "{answer}");
    let volumes = all_volumes(emulator).await;
    for entry in &listed {
        let volume = volumes
            .iter()
            .find(|v| v.volume_id() == entry["volume_id"].as_str())
            .expect("the listed volume exists");
        assert_eq!(volume.availability_zone(), Some("us-east-1c"));
        assert_eq!(volume.snapshot_id(), entry["snapshot_id"].as_str());
        assert!(volume.attachments().is_empty());
    }
    assert_eq!(
        instance(emulator, web).await,
        ("running".to_string(), web_before)
    );

    // A replace stopped right after its first DetachVolume, then called again.
    emulator
        .simulate_ebs(&Ebs {
            volume_seconds: Some(0.0),
            instance_seconds: Some(0.0),
            ..Ebs::default()
        })
        .expect("fast EBS");
    let chaos = Chaos::new(emulator, queue, &[], ChaosOptions::calm(11)).expect("chaos");
    let app_set = set_of(emulator, app_server, &run_id).await;
    let (_, app_before) = instance(emulator, app_server).await;
    let request = json!({"action": "restore", "instance_id": app_server, "run_id": "latest", "mode": "replace"});
    // On a slow machine an invocation may end (at its deadline) before it detaches: the next
    // one goes on from where it was, until one is stopped right after its first detach.
    let mut ended = Vec::new();
    for _ in 0..5 {
        let once = chaos
            .invoke_stopping(request.clone(), Stop::After("ec2:DetachVolume".into()))
            .await
            .expect("invoke");
        let stopped = matches!(once, Ended::Stopped);
        ended.push(once);
        if stopped {
            break;
        }
    }
    assert!(
        matches!(ended.last(), Some(Ended::Stopped)),
        "never stopped at a detach: {ended:?}"
    );
    let (state, halfway) = instance(emulator, app_server).await;
    assert_eq!(state, "stopped");
    assert!(
        halfway.len() < app_before.len(),
        "stopped with a device detached: {halfway:?}"
    );
    // Meanwhile, a replace of app01 from another set is refused: one replace at a time.
    let other = json!({"action": "restore", "instance_id": app_server, "run_id": first_run, "mode": "replace"});
    let refused = invoke(&app, other.clone())
        .await
        .expect_err("a second replace while one is in progress")
        .to_string();
    assert!(refused.contains("is in progress"), "{refused}");
    assert_eq!(
        instance(emulator, app_server).await.1,
        halfway,
        "nothing done by it"
    );
    let Ended::Answered(answer) = chaos.invoke(request).await.expect("again") else {
        panic!("the second call must answer");
    };
    chaos
        .drain(10, Duration::from_secs(60))
        .await
        .expect("drain");
    assert_replaced(emulator, app_server, &app_set, &app_before, &answer).await;
    // Once it is done, the other replace may go.
    let (_, app_now) = instance(emulator, app_server).await;
    let first_set = set_of(emulator, app_server, &first_run).await;
    let answer = invoke(&app, other)
        .await
        .expect("replace once the first is done");
    assert_eq!(answer["run_id"], json!(first_run), "{answer}");
    world
        .drain_within(&app, Duration::from_secs(60))
        .await
        .expect("drain");
    assert_replaced(emulator, app_server, &first_set, &app_now, &answer).await;

    // On a slow AWS a replace is longer than one invocation: each pass stops stepping before
    // the function's deadline and queues the rest; none is killed by its timeout.
    let slow = Chaos::new(emulator, queue, &[], ChaosOptions::calm(12))
        .expect("chaos")
        .with_timeout(SLOW_TIMEOUT);
    slow.proxy.set_latency(SLOW_CALL);
    let web_set = set_of(emulator, web, &run_id).await;
    let (_, web_before) = instance(emulator, web).await;
    let request =
        json!({"action": "restore", "instance_id": web, "run_id": "latest", "mode": "replace"});
    let started = std::time::Instant::now();
    let Ended::Answered(answer) = slow.invoke(request).await.expect("slow") else {
        panic!("a slow pass answers before its deadline: {:?}", slow.log());
    };
    println!(
        "slow replace: first pass answered after {:?}: {answer}",
        started.elapsed()
    );
    assert_eq!(answer["status"], json!("in_progress"), "{answer}");
    assert_eq!(answer["waiting_for"], json!("the next pass"), "{answer}");
    slow.drain(10, Duration::from_secs(120))
        .await
        .expect("drain");
    println!("slow replace: {:?} in {:?}", slow.log(), started.elapsed());
    assert_eq!(slow.log().timed_out, 0, "{:?}", slow.log());
    assert!(slow.log().invocations >= 2, "{:?}", slow.log());
    assert_replaced(emulator, web, &web_set, &web_before, &answer).await;

    // verify: two instances restorable, one with no consistent set; nothing left behind. Every
    // message is delivered twice at once: one report all the same.
    emulator
        .simulate_ebs(&Ebs {
            volume_seconds: Some(1.5),
            ..Ebs::default()
        })
        .expect("slow EBS");
    let twice = ChaosOptions {
        duplicate_messages: true,
        ..ChaosOptions::calm(11)
    };
    let chaos = Chaos::new(emulator, queue, &[], twice)
        .expect("chaos")
        .with_metrics(&metrics);
    let Ended::Answered(answer) = chaos
        .invoke(json!({"action": "verify", "instance_ids": [sql, web, files]}))
        .await
        .expect("verify")
    else {
        panic!("verify must answer");
    };
    assert_eq!(answer["status"], json!("in_progress"));
    chaos
        .drain(10, Duration::from_secs(60))
        .await
        .expect("drain");
    let verify_id = answer["verify_id"].as_str().expect("verify id");
    let reports: Vec<Value> = logs
        .records()
        .into_iter()
        .filter(|r| r["verify_id"] == verify_id && r.get("verify").is_some())
        .collect();
    assert_eq!(reports.len(), 1, "one report per verification");
    let line = &reports[0];
    let results: Value =
        serde_json::from_str(line["verify"].as_str().unwrap_or_default()).expect("JSON");
    let by_instance: BTreeMap<&str, &Value> = results
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["instance_id"].as_str()?, r)))
        .collect();
    assert_eq!(by_instance[sql.as_str()]["restorable"], json!(true));
    assert_eq!(by_instance[sql.as_str()]["volumes"], json!(3));
    assert!(
        by_instance[web.as_str()]["seconds"]
            .as_i64()
            .is_some_and(|s| s >= 1),
        "the wait for EBS is measured: {results}"
    );
    assert_eq!(by_instance[files.as_str()]["restorable"], json!(false));
    assert!(by_instance[files.as_str()]["error"]
        .as_str()
        .is_some_and(|e| e.contains("consistent")));
    let left = all_volumes(emulator)
        .await
        .into_iter()
        .filter(|v| tag(v, "ConsistentSnapshot:Purpose") == Some("verify"))
        .count();
    assert_eq!(left, 0, "verification leaves no volume behind");
    let emf = metrics.of("verify", None);
    assert_eq!(emf.len(), 1);
    assert_eq!(
        (
            emf[0]["RestoresVerified"].clone(),
            emf[0]["RestoreFailures"].clone()
        ),
        (json!(2), json!(1))
    );
}

#[tokio::test]
async fn a_restore_step_refused_for_good_fails_the_restore_at_once_named_and_counted() {
    let world = World::start(1).await.expect("world");
    let emulator = &world.emulator;
    let ids = world
        .seed(&[ServerSpec::windows("sql01", 2)])
        .await
        .expect("seed");
    let metrics = Metrics::default();
    let chaos = Chaos::new(emulator, &world.queue, &[], ChaosOptions::calm(5))
        .expect("chaos")
        .with_metrics(&metrics);
    chaos
        .night("2026-11-23T02:00:00Z", Duration::from_secs(120))
        .await
        .expect("the night");
    let volumes_before = all_volumes(emulator).await.len();
    // The restore role lost ec2:CreateVolume (an SCP, a permission boundary).
    chaos.proxy.force(
        "ec2:CreateVolume",
        harness::faults::Fault::AccessDenied,
        u32::MAX,
    );
    let Ended::Answered(answer) = chaos
        .invoke_stopping(
            json!({"action": "restore", "instance_id": ids[0], "run_id": "latest", "mode": "volumes"}),
            Stop::Never,
        )
        .await
        .expect("restore")
    else {
        panic!("the restore was not answered");
    };
    assert_eq!(answer["status"], "failed", "{answer:#}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("CreateVolume") && error.contains("UnauthorizedOperation"),
        "{error}"
    );
    // Tried once, not again and again until the queue gives it up; nothing queued, nothing made.
    let tries = chaos.proxy.stats().calls_of("ec2:CreateVolume");
    assert_eq!(tries, 1);
    assert!(harness::queue_is_empty(&emulator.sqs(), &world.queue)
        .await
        .expect("queue"));
    assert_eq!(all_volumes(emulator).await.len(), volumes_before);
    let counted = metrics.of("restore", None);
    assert_eq!(counted.len(), 1, "{counted:#?}");
    assert_eq!(counted[0]["RestoresFailed"], 1);
    let lines = world.logs.messages_starting("restore ");
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains(": failed: ") && m.contains("UnauthorizedOperation"))),
        "{lines:#?}"
    );
}
