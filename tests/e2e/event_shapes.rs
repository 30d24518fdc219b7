//! End to end: the three event shapes, duplicates of a schedule, dry runs and bad payloads.

use std::time::Duration;

use harness::{invoke, scheduled_event, ServerSpec, World};
use serde_json::json;

#[tokio::test]
async fn scheduler_input_and_rule_event_both_start_a_run_with_a_deterministic_id() {
    let world = World::start(3).await.expect("world");
    let emulator = &world.emulator;
    world
        .seed(&[ServerSpec::windows("web01", 1)])
        .await
        .expect("seed");
    let app = world.app(&[("DRY_RUN", "true")]).expect("app");

    let scheduler = json!({
        "schedule_arn": "arn:aws:scheduler:us-east-1:123456789012:schedule/default/nightly",
        "scheduled_time": "2026-11-23T00:00:00Z",
        "execution_id": "d32c5kddcf5bb8c3"
    });
    let a = invoke(&app, scheduler.clone())
        .await
        .expect("scheduler input");
    let mut retry = scheduler;
    retry["execution_id"] = json!("e0a1b2c3d4e5f6a7");
    let b = invoke(&app, retry).await.expect("redelivery");
    assert_eq!(
        a["run_id"], b["run_id"],
        "a duplicated delivery is the same run"
    );
    let c = invoke(&app, scheduled_event("nightly", "2026-11-23T00:00:00Z"))
        .await
        .expect("rule event");
    assert_ne!(a["run_id"], c["run_id"], "another schedule is another run");
    assert_eq!(c["dispatched"].as_array().map(Vec::len), Some(1));
    assert_eq!(c["dry_run"], json!(true));
    // DRY_RUN: nothing sent, nothing queued.
    assert!(emulator.invocations().expect("invocations").is_empty());
    let drained = world
        .drain_within(&app, Duration::from_secs(10))
        .await
        .expect("drain");
    assert_eq!(drained.messages, 0);
}

#[tokio::test]
async fn on_demand_snapshot_of_chosen_instances() {
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let untagged = ServerSpec::windows("untagged01", 1).untagged();
    let ids = world
        .seed(&[
            ServerSpec::windows("web01", 1),
            ServerSpec::windows("web02", 1),
            untagged,
        ])
        .await
        .expect("seed");
    let app = world.app(&[]).expect("app");

    let dry = invoke(
        &app,
        json!({"action": "snapshot", "instance_ids": [ids[0]], "dry_run": true}),
    )
    .await
    .expect("dry run");
    assert_eq!(dry["dispatched"][0]["instance_id"], json!(ids[0]));
    assert!(
        emulator.invocations().expect("invocations").is_empty(),
        "a dry run sends nothing"
    );

    let answer = invoke(
        &app,
        json!({"action": "snapshot", "instance_ids": [ids[0], ids[2]], "run_id": "manual-1"}),
    )
    .await
    .expect("snapshot");
    assert_eq!(answer["run_id"], json!("manual-1"));
    assert_eq!(answer["dispatched"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        answer["skipped"][0]["instance_id"],
        json!(ids[2]),
        "an untagged instance is refused by name"
    );
    world
        .drain_within(&app, Duration::from_secs(60))
        .await
        .expect("drain");
    let report = logs.run_report("manual-1").expect("report");
    assert!(
        report.outcomes.iter().all(|o| o.instance_id != ids[1]),
        "only the chosen instances"
    );
    let invocations = emulator.invocations().expect("invocations");
    assert_eq!(invocations.len(), 1);
    assert_eq!(
        invocations[0]["comment"],
        json!("ConsistentSnapshot run manual-1")
    );
}

#[tokio::test]
async fn malformed_payloads_are_errors_that_name_the_field() {
    let world = World::start(3).await.expect("world");
    let app = world.app(&[]).expect("app");
    let cases = [
        (
            json!({"action": "snapshot", "instance_ids": "i-0123456789abcdef0"}),
            "instance_ids",
        ),
        (json!({"action": "snapshot", "dry_run": 1}), "dry_run"),
        (json!({"action": "snapshot", "force": true}), "force"),
        (json!({"action": "explode"}), "action"),
        (
            json!({"Records": [{"eventSource": "aws:dynamodb"}]}),
            "eventSource",
        ),
        (json!("snapshot"), "JSON object"),
        (
            json!({"action": "restore", "instance_id": "i-0123456789abcdef0", "run_id": "latest", "mode": "volumes"}),
            "the instance is gone; name the availability_zone",
        ),
        (json!({"action": "report", "rpo": 4}), "rpo"),
        (
            json!({"action": "snapshot", "instance_ids": ["i-0123456789abcdef0", "i-xyz"]}),
            "instance_ids[1]",
        ),
        (
            json!({"action": "retention", "dry_run": "yes"}),
            "field `dry_run`",
        ),
    ];
    for (payload, field) in cases {
        let err = invoke(&app, payload.clone())
            .await
            .expect_err("must be refused")
            .to_string();
        assert!(err.contains(field), "{payload}: {err}");
    }
}

#[tokio::test]
async fn poison_messages_fail_alone_and_the_rest_of_the_batch_goes_on() {
    let world = World::start(1).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    world
        .seed(&[ServerSpec::windows("web01", 1)])
        .await
        .expect("seed");
    let app = world.app(&[]).expect("app");
    for body in [
        "not json",
        r#"{"v":99,"kind":"instance"}"#,
        r#"{"v":1,"kind":"instance"}"#,
    ] {
        world.send_raw(body).await.expect("send");
    }
    invoke(&app, json!({"action": "snapshot", "run_id": "with-poison"}))
        .await
        .expect("run");
    // The poison messages fail each time until the redrive policy (5 receives) moves them to
    // the DLQ; the run's own messages finish meanwhile.
    let drained = world
        .drain_within(&app, Duration::from_secs(60))
        .await
        .expect("drain");
    assert!(drained.failures >= 3, "{drained:?}");
    assert!(
        logs.run_report("with-poison").is_some(),
        "the run finished despite the poison"
    );
    let sqs = emulator.sqs();
    let dlq = sqs
        .get_queue_url()
        .queue_name("tracking-dlq")
        .send()
        .await
        .expect("dlq");
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(dlq.queue_url().unwrap_or_default())
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .expect("attributes");
    let in_dlq = attrs.attributes().and_then(|a| {
        a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .cloned()
    });
    assert_eq!(in_dlq.as_deref(), Some("3"));
    let reasons: Vec<String> = logs
        .records()
        .iter()
        .filter(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("poison message"))
        })
        .filter_map(|r| r["reason"].as_str().map(str::to_string))
        .collect();
    assert!(reasons.iter().any(|r| r.contains("not JSON")));
    assert!(reasons.iter().any(|r| r.contains("version 99")));
    assert!(reasons
        .iter()
        .any(|r| r.contains("run_id") || r.contains("missing")));
}
