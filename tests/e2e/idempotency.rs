//! End to end: duplicated and overlapping runs, a dispatch stopped half-way, an unanswered
//! SendCommand or CopySnapshot. Each must end with one VSS command per instance per run, one
//! copy per snapshot and region, and one summary.

use std::time::Duration;

use consistent_snapshot::OutcomeKind;
use harness::chaos::{Chaos, ChaosOptions, Ended};
use harness::faults::{Fault, Stop};
use harness::{
    commands_per_instance, invoke, own_snapshots, queue_depth, run_snapshots, scheduled_event,
    seed_bulk, snapshot_tag, ServerSpec, Windows, World,
};
use serde_json::{json, Value};

fn status(answer: &Value) -> &str {
    answer["status"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_schedule_delivered_twice_at_once_and_again_later_is_one_run() {
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 2),
            ServerSpec::windows("exch01", 1),
            ServerSpec::windows("files01", 1),
        ])
        .await
        .expect("seed");
    let app = world.app(&[]).expect("app");
    let event = scheduled_event("nightly", "2026-11-23T00:00:00Z");

    let (a, b) = tokio::join!(invoke(&app, event.clone()), invoke(&app, event.clone()));
    let (a, b) = (a.expect("first delivery"), b.expect("second delivery"));
    let mut statuses = vec![status(&a), status(&b)];
    statuses.sort_unstable();
    assert!(
        statuses == ["already_dispatched", "dispatched"]
            || statuses == ["dispatched", "held_by_another"],
        "one delivery dispatches, the other is told so: {statuses:?}"
    );
    let run_id = a["run_id"].as_str().expect("run id").to_string();
    assert_eq!(b["run_id"], a["run_id"]);
    let late = invoke(&app, event.clone()).await.expect("late delivery");
    assert_eq!(status(&late), "already_dispatched");

    world
        .drain_within(&app, Duration::from_secs(90))
        .await
        .expect("drain");
    let after = invoke(&app, event).await.expect("delivery after the run");
    assert_eq!(status(&after), "already_reported");

    let per = commands_per_instance(&emulator.invocations().expect("invocations"), &run_id);
    assert_eq!(per.len(), 3);
    assert!(
        per.values().all(|n| *n == 1),
        "one command per instance: {per:?}"
    );
    let snapshots = run_snapshots(emulator, &run_id).await.expect("snapshots");
    assert_eq!(
        snapshots.len(),
        3 + 2 + 2,
        "one set per instance: boot and data volumes"
    );
    let reports = logs.run_reports(&run_id);
    assert_eq!(reports.len(), 1, "exactly one summary");
    assert_eq!(reports[0].count(OutcomeKind::Consistent), 3);
    assert!(ids
        .iter()
        .all(|id| reports[0].outcomes.iter().any(|o| &o.instance_id == id)));
    assert_eq!(queue_depth(emulator, "tracking-dlq").await.expect("dlq"), 0);
}

#[tokio::test]
async fn an_overlapping_run_does_not_freeze_an_instance_twice() {
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    // Long enough a freeze for the second run to meet it.
    let slow = Windows {
        duration: Some(4.0),
        ..Windows::default()
    };
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 1).sim(slow.clone()),
            ServerSpec::windows("sql02", 1).sim(slow.clone()),
            ServerSpec::windows("files01", 1).sim(slow),
        ])
        .await
        .expect("seed");
    // An operator starts the document by hand on files01.
    let by_hand = aws_sdk_ssm::Client::new(&emulator.sdk)
        .send_command()
        .document_name("AWSEC2-CreateVssSnapshot")
        .instance_ids(&ids[2])
        .comment("before the patch window")
        .send()
        .await
        .expect("SendCommand by hand");
    let by_hand = by_hand
        .command()
        .and_then(|c| c.command_id())
        .expect("command id")
        .to_string();
    let app = world.app(&[]).expect("app");

    let scheduled = invoke(&app, scheduled_event("nightly", "2026-11-23T00:00:00Z"))
        .await
        .expect("scheduled run");
    assert_eq!(status(&scheduled), "dispatched");
    let run_id = scheduled["run_id"].as_str().expect("run id").to_string();
    assert_eq!(scheduled["dispatched"].as_array().map(Vec::len), Some(2));
    assert_eq!(scheduled["skipped"][0]["instance_id"], ids[2].as_str());
    assert_eq!(scheduled["skipped"][0]["reason"]["kind"], "vss_in_progress");
    assert_eq!(
        scheduled["skipped"][0]["reason"]["command_id"],
        by_hand.as_str()
    );
    let command = scheduled["commands"][0]["command_id"].clone();

    let manual = invoke(&app, json!({"action": "snapshot", "run_id": "manual-1"}))
        .await
        .expect("manual run");
    assert_eq!(manual["dispatched"].as_array().map(Vec::len), Some(0));
    let skipped = manual["skipped"].as_array().cloned().unwrap_or_default();
    assert_eq!(skipped.len(), 3, "{manual}");
    assert!(skipped
        .iter()
        .all(|s| s["reason"]["kind"] == "vss_in_progress"));
    assert!(skipped
        .iter()
        .filter(|s| s["reason"]["run_id"] == run_id.as_str())
        .all(|s| s["reason"]["command_id"] == command));

    world
        .drain_within(&app, Duration::from_secs(90))
        .await
        .expect("drain");
    let invocations = emulator.invocations().expect("invocations");
    assert_eq!(
        invocations.len(),
        3,
        "one freeze per instance: {invocations:?}"
    );
    let report = logs.run_report(&run_id).expect("scheduled summary");
    assert_eq!(report.count(OutcomeKind::Consistent), 2);
    assert_eq!(report.count(OutcomeKind::Skipped), 1);
    let manual_report = logs.run_report("manual-1").expect("manual summary");
    assert_eq!(manual_report.count(OutcomeKind::Skipped), 3);
    assert!(manual_report.outcomes.iter().all(|o| o
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("still running"))));
}

/// Drains the queue of a run whose dispatch was stopped after its commands went: its watch
/// must take it over without sending a command again (`sent` in all). Answers the run id.
async fn taken_over_by_its_watch(
    chaos: &Chaos<'_>,
    world: &World,
    sent: usize,
    limit: Duration,
) -> String {
    chaos.drain(10, limit).await.expect("drain");
    assert!(!world
        .logs
        .messages_starting("watch: the run's dispatch was interrupted")
        .is_empty());
    let invocations = world.emulator.invocations().expect("invocations");
    assert_eq!(invocations.len(), sent, "not sent again: {invocations:?}");
    invocations[0]["comment"]
        .as_str()
        .and_then(|c| c.strip_prefix("ConsistentSnapshot run "))
        .expect("run id in the comment")
        .to_string()
}

#[tokio::test]
async fn a_dispatch_stopped_after_sending_is_finished_by_its_watch_without_sending_again() {
    let world = World::start(3).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            ServerSpec::windows("sql02", 1),
            ServerSpec::windows("files01", 2),
        ])
        .await
        .expect("seed");
    let chaos = Chaos::new(emulator, queue, &[], ChaosOptions::calm(7)).expect("chaos");
    let event = scheduled_event("nightly", "2026-11-23T00:00:00Z");

    // The Lambda dies right after SendCommand: no tracking message, no dispatch marker.
    let ended = chaos
        .invoke_stopping(event, Stop::After("ssm:SendCommand".into()))
        .await
        .expect("invoke");
    assert!(matches!(ended, Ended::Stopped), "{ended:?}");
    assert_eq!(emulator.invocations().expect("invocations").len(), 3);

    // Once its lease is over, the watch message takes the run over.
    let run_id = taken_over_by_its_watch(&chaos, &world, 3, Duration::from_secs(90)).await;
    let reports = logs.run_reports(&run_id);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].count(OutcomeKind::Consistent), 3);
    assert_eq!(
        run_snapshots(emulator, &run_id)
            .await
            .expect("snapshots")
            .len(),
        7
    );
}

/// The dispatch queues its tracking messages 8 batches at a time: a Lambda that dies while
/// some batches are answered and the others not yet sent leaves part of the run on the queue
/// and no dispatch marker. The watch finishes it from the command history: nothing frozen
/// twice, every server's set recorded once, one summary.
#[tokio::test]
async fn a_dispatch_stopped_between_its_queue_batches_freezes_each_server_once() {
    const SERVERS: usize = 100;
    let world = World::start(3).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    seed_bulk(emulator, SERVERS, 50, 0).await.expect("seed");
    let chaos = Chaos::new(emulator, queue, &[], ChaosOptions::calm(7))
        .expect("chaos")
        .with_timeout(Duration::from_secs(60));
    // Slow enough that a wave of batches is all in flight when its first answers come; the
    // run's first SendMessageBatch (its watch) goes before them: the stop comes after the
    // second answer of the tracking messages' first wave.
    chaos.proxy.set_latency(Duration::from_millis(100));
    let ended = chaos
        .invoke_stopping(
            scheduled_event("nightly", "2026-11-23T00:00:00Z"),
            Stop::AfterNth("sqs:SendMessageBatch".into(), 3),
        )
        .await
        .expect("invoke");
    assert!(matches!(ended, Ended::Stopped), "{ended:?}");
    let stats = chaos.proxy.stats();
    let batches = stats.calls_of("sqs:SendMessageBatch");
    let at_once = stats.peak_of("sqs:SendMessageBatch");
    assert!(
        at_once >= 2 && (batches as usize) < SERVERS / 10,
        "stopped with batches in flight at once ({at_once}) and some never sent ({batches} of {})",
        SERVERS / 10
    );
    let invocations = emulator.invocations().expect("invocations");
    assert_eq!(invocations.len(), SERVERS);
    chaos.proxy.set_latency(Duration::ZERO);

    let run_id = taken_over_by_its_watch(&chaos, &world, SERVERS, Duration::from_secs(180)).await;
    let per = commands_per_instance(&emulator.invocations().expect("invocations"), &run_id);
    assert!(
        per.len() == SERVERS && per.values().all(|n| *n == 1),
        "{per:?}"
    );
    let reports = logs.run_reports(&run_id);
    assert_eq!(reports.len(), 1, "one summary");
    assert_eq!(reports[0].count(OutcomeKind::Consistent), SERVERS);
    assert_eq!(
        run_snapshots(emulator, &run_id)
            .await
            .expect("snapshots")
            .len(),
        SERVERS,
        "one root volume each, snapshotted once"
    );
}

#[tokio::test]
async fn an_unanswered_or_throttled_send_command_freezes_once() {
    let world = World::start(3).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            ServerSpec::windows("sql02", 1),
        ])
        .await
        .expect("seed");
    // 30 s: the SDK's backoff after the throttled sends, and a loaded machine, can outlast 6 s.
    let chaos = Chaos::new(emulator, queue, &[], ChaosOptions::calm(7))
        .expect("chaos")
        .with_timeout(Duration::from_secs(30));

    // The command reaches SSM, its answer is lost: the history shows it was sent.
    chaos.proxy.force("ssm:SendCommand", Fault::DroppedAfter, 1);
    let Ended::Answered(lost) = chaos
        .invoke(json!({"action": "snapshot", "run_id": "lost-answer"}))
        .await
        .expect("invoke")
    else {
        panic!("the invocation must answer")
    };
    assert_eq!(status(&lost), "dispatched", "{lost}");
    assert!(lost["dispatched"]
        .as_array()
        .is_some_and(|d| d.len() == 2 && d.iter().all(|d| d["reused"] == true)));

    // Throttled twice: not sent, so simply sent again.
    chaos.proxy.force("ssm:SendCommand", Fault::Throttled, 2);
    let Ended::Answered(throttled) = chaos
        .invoke(json!({"action": "snapshot", "run_id": "throttled"}))
        .await
        .expect("invoke")
    else {
        panic!("the invocation must answer")
    };
    assert_eq!(status(&throttled), "dispatched", "{throttled}");
    assert!(throttled["dispatched"]
        .as_array()
        .is_some_and(|d| d.len() == 2 && d.iter().all(|d| d.get("reused").is_none())));

    chaos
        .drain(10, Duration::from_secs(90))
        .await
        .expect("drain");
    let invocations = emulator.invocations().expect("invocations");
    for run in ["lost-answer", "throttled"] {
        let per = commands_per_instance(&invocations, run);
        assert_eq!(per.len(), 2, "{run}: {per:?}");
        assert!(per.values().all(|n| *n == 1), "{run}: {per:?}");
        let reports = logs.run_reports(run);
        assert_eq!(reports.len(), 1, "{run}");
        assert_eq!(reports[0].count(OutcomeKind::Consistent), 2, "{run}");
    }
    assert_eq!(chaos.proxy.stats().send_command_faults, 3);
}

#[tokio::test]
async fn a_batch_that_meets_throttling_goes_back_to_the_queue_at_once() {
    let world = World::start(2).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            ServerSpec::windows("sql02", 1),
            ServerSpec::windows("files01", 1),
        ])
        .await
        .expect("seed");
    let app = world.app(&[]).expect("app");
    let start = invoke(
        &app,
        json!({"action": "snapshot", "run_id": "throttled-batch"}),
    )
    .await
    .expect("run");
    assert_eq!(status(&start), "dispatched");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // SSM throttles every attempt the SDK makes at the first instance's look.
    // A generous timeout: the SDK's five throttled attempts back off for seconds, and on a
    // loaded machine the invocation must not be cut before it answers.
    let chaos = Chaos::new(emulator, queue, &[], ChaosOptions::calm(7))
        .expect("chaos")
        .with_timeout(Duration::from_secs(30));
    chaos
        .proxy
        .force("ssm:GetCommandInvocation", Fault::Throttled, 5);
    let (batch, failed) = chaos.deliver_batch(10).await.expect("one batch");
    assert_eq!(
        batch.len(),
        4,
        "three instance jobs and the run job: {batch:?}"
    );
    // The throttled message failed; the three after it were handed back untried: sent
    // again and acknowledged, so that their redrive budget is not spent.
    assert_eq!(failed.len(), 1, "only the tried message fails: {failed:?}");
    let stats = chaos.proxy.stats();
    assert_eq!(
        stats.calls.get("ssm:GetCommandInvocation"),
        Some(&5),
        "no other instance was looked at once SSM throttled"
    );
    let tried = batch
        .iter()
        .position(|id| *id == failed[0])
        .expect("the failed message is of the batch");
    let handed_back = logs.messages_starting("message handed back to the queue untried");
    assert_eq!(
        handed_back.len(),
        batch.len() - tried - 1,
        "{handed_back:#?}"
    );
    assert!(
        !handed_back.is_empty(),
        "the run job is not first: {batch:?}"
    );
    let throttled = logs
        .messages_starting("step failed")
        .into_iter()
        .filter(|r| r["throttled"] == true)
        .count();
    assert_eq!(throttled, 1);

    chaos
        .drain(10, Duration::from_secs(90))
        .await
        .expect("drain");
    let reports = logs.run_reports("throttled-batch");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].count(OutcomeKind::Consistent), 3);
}

#[tokio::test]
async fn a_copy_whose_answer_was_lost_is_found_and_recorded_not_made_twice() {
    const COPY_REGION: &str = "eu-west-1";
    let world = World::start(2).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    world
        .seed(&[
            ServerSpec::windows("sql01", 2),
            ServerSpec::windows("files01", 1),
        ])
        .await
        .expect("seed");
    let chaos = Chaos::new(
        emulator,
        queue,
        &[("COPY_REGIONS", COPY_REGION)],
        ChaosOptions::calm(7),
    )
    .expect("chaos")
    .with_timeout(Duration::from_secs(30));
    // The first copy reaches EC2, its answer is lost: the pass cannot record it.
    chaos
        .proxy
        .force("ec2:CopySnapshot", Fault::DroppedAfter, 1);
    let Ended::Answered(start) = chaos
        .invoke(json!({"action": "snapshot", "run_id": "lost-copy"}))
        .await
        .expect("invoke")
    else {
        panic!("the invocation must answer")
    };
    assert_eq!(status(&start), "dispatched", "{start}");
    chaos
        .drain(10, Duration::from_secs(120))
        .await
        .expect("drain");

    // One copy of each of the run's five snapshots, none made twice, every one recorded.
    let copies: Vec<_> = own_snapshots(emulator, COPY_REGION)
        .await
        .expect("copies")
        .into_iter()
        .filter(|s| snapshot_tag(s, "ConsistentSnapshot:RunId") == Some("lost-copy"))
        .collect();
    let mut per_source: std::collections::BTreeMap<String, usize> = Default::default();
    for copy in &copies {
        let source = snapshot_tag(copy, "ConsistentSnapshot:SourceSnapshotId").unwrap_or("none");
        *per_source.entry(source.to_string()).or_default() += 1;
    }
    assert_eq!(per_source.len(), 5, "{per_source:?}");
    assert!(per_source.values().all(|n| *n == 1), "{per_source:?}");
    let (_, recorded) = emulator.catalog().all_sets().await.expect("catalog");
    let recorded: Vec<&str> = recorded
        .iter()
        .filter(|c| c.region == COPY_REGION)
        .map(|c| c.snapshot_id.as_str())
        .collect();
    assert_eq!(recorded.len(), 5, "{recorded:?}");
    assert!(copies
        .iter()
        .all(|c| recorded.contains(&c.snapshot_id().unwrap_or_default())));
    let found = logs.messages_starting("a copy whose CopySnapshot answer was lost");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(chaos.proxy.stats().calls_of("ec2:CopySnapshot"), 5);
}

/// CreateSnapshots takes no idempotency token: a crash-consistent fallback whose answer is lost
/// (the snapshots made, the function never told) is found and recorded from what EC2 holds,
/// never taken a second time: one set of the server's volumes, one call.
#[tokio::test]
async fn a_fallback_whose_answer_was_lost_is_recorded_once_never_taken_twice() {
    let world = World::start(3).await.expect("world");
    let (emulator, queue, logs) = (&world.emulator, &world.queue, &world.logs);
    let ids = world
        .seed(&[
            ServerSpec::windows("sql01", 1),
            ServerSpec::windows("branch01", 2).sim(Windows::agent(harness::Agent::Offline)),
        ])
        .await
        .expect("seed");
    let branch = ids[1].clone();
    let chaos = Chaos::new(
        emulator,
        queue,
        &[("CRASH_CONSISTENT_FALLBACK", "true")],
        ChaosOptions::calm(11),
    )
    .expect("chaos")
    .with_timeout(Duration::from_secs(30));
    chaos
        .proxy
        .force("ec2:CreateSnapshots", Fault::DroppedAfter, 1);
    let Ended::Answered(start) = chaos
        .invoke(json!({"action": "snapshot", "run_id": "fallback-lost"}))
        .await
        .expect("invoke")
    else {
        panic!("the invocation must answer")
    };
    assert_eq!(status(&start), "dispatched", "{start}");
    chaos
        .drain(10, Duration::from_secs(120))
        .await
        .expect("drain");

    // EC2: the one call's snapshots, one per volume of the offline server.
    let made: Vec<_> = run_snapshots(emulator, "fallback-lost")
        .await
        .expect("snapshots")
        .into_iter()
        .filter(|s| snapshot_tag(s, "ConsistentSnapshot:InstanceId") == Some(branch.as_str()))
        .collect();
    assert_eq!(made.len(), 3, "boot and two data volumes, once");
    assert!(made
        .iter()
        .all(|s| snapshot_tag(s, "ConsistentSnapshot:Consistency") == Some("CrashFallback")));
    assert_eq!(chaos.proxy.stats().calls_of("ec2:CreateSnapshots"), 1);

    // The summary and the catalog hold that set as the fallback, and nothing is foreign.
    let reports = logs.run_reports("fallback-lost");
    assert_eq!(reports.len(), 1);
    let outcome = reports[0]
        .outcomes
        .iter()
        .find(|o| o.instance_id == branch)
        .cloned()
        .expect("branch01's outcome");
    assert_eq!(
        (outcome.kind, outcome.fallback, outcome.snapshots.len()),
        (OutcomeKind::CrashConsistent, true, 3),
        "{outcome:?}"
    );
    assert_eq!(reports[0].foreign_count, 0);
    let (sets, _) = emulator.catalog().all_sets().await.expect("catalog");
    let recorded: Vec<_> = sets.iter().filter(|s| s.instance_id == branch).collect();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(recorded[0].fallback && recorded[0].snapshots.len() == 3);
}
