//! SSM's completion events (the template's `CompletionEventsRule`, played by the emulator's
//! EventBridge): a run whose servers are done is verified and recorded within seconds, not at
//! its first polling look; each server costs one look at SSM; an event of a command this
//! deployment did not send, or of another account, changes nothing; and with events on but
//! none coming, the polling looks finish the run as before.

use std::time::{Duration, Instant};

use consistent_snapshot::OutcomeKind;
use harness::{
    invoke, queue_depth, scheduled_event, Metrics, ServerSpec, VssOutcome, Windows, World,
};
use serde_json::json;

const NIGHT: &str = "2026-12-06T02:00:00Z";

fn fleet() -> Vec<ServerSpec> {
    vec![
        ServerSpec::windows("sql01", 2),
        ServerSpec::windows("exch01", 1),
        ServerSpec::windows("files01", 1),
        ServerSpec::windows("app01", 1).sim(Windows {
            outcome: Some(VssOutcome::VssFailure),
            ..Windows::default()
        }),
    ]
}

#[tokio::test]
async fn ssm_s_events_finish_a_run_long_before_its_first_polling_look() {
    let world = World::start(3).await.expect("world");
    let (emulator, logs) = (&world.emulator, &world.logs);
    let ids = world.seed(&fleet()).await.expect("seed");
    emulator
        .completion_events(&world.queue)
        .expect("the template's rule");
    // The first polling look comes 20 s after the dispatch.
    let settings = [
        ("COMPLETION_EVENTS", "true"),
        ("TRACK_POLL_INITIAL_SECONDS", "20"),
        ("TRACK_POLL_MAX_SECONDS", "40"),
    ];
    let (proxy, _endpoint, app) = emulator
        .counted_app(&world.queue, &settings)
        .await
        .expect("app");

    let started = Instant::now();
    let answer = invoke(&app, scheduled_event("nightly", NIGHT))
        .await
        .expect("dispatch");
    let run_id = answer["run_id"].as_str().expect("run id").to_string();
    let (_, summarised) = world
        .deliver_until(&app, Duration::from_secs(15), || {
            !logs.run_reports(&run_id).is_empty()
        })
        .await
        .expect("deliver");
    let took = started.elapsed();
    assert!(
        summarised && took < Duration::from_secs(18),
        "the run's summary within seconds of its servers' ends, before any polling look: {took:?}"
    );
    let report = logs.run_report(&run_id).expect("summary");
    assert_eq!(report.count(OutcomeKind::Consistent), 3, "{report:?}");
    let failed = report
        .outcomes
        .iter()
        .find(|o| o.instance_id == ids[3])
        .expect("app01's outcome");
    assert_ne!(failed.kind, OutcomeKind::Consistent, "SSM said it failed");
    let catalog = emulator.catalog();
    for (id, volumes) in ids.iter().zip([3, 2, 2]) {
        let (sets, _) = catalog.sets_of(id).await.expect("catalog");
        let set = sets.iter().find(|s| s.run_id == run_id);
        assert_eq!(
            set.map(|s| s.snapshots.len()),
            Some(volumes),
            "{id}: its set recorded by the early look"
        );
    }
    let looks = proxy.stats().calls_of("ssm:GetCommandInvocation");
    assert_eq!(looks, 4, "one look at SSM per server, the event's");

    // The polling looks come at 20 s and find each end recorded: SSM is not asked again.
    world.drain(&app).await.expect("drain");
    let stats = proxy.stats();
    assert_eq!(stats.calls_of("ssm:GetCommandInvocation"), 4);
    assert_eq!(logs.run_reports(&run_id).len(), 1, "one summary");
    assert_eq!(queue_depth(emulator, "tracking-dlq").await.expect("dlq"), 0);

    // An operator runs the document by hand on sql01: its event is not this deployment's.
    let ssm = aws_sdk_ssm::Client::new(&emulator.sdk);
    ssm.send_command()
        .document_name("AWSEC2-CreateVssSnapshot")
        .instance_ids(&ids[0])
        .send()
        .await
        .expect("an operator's own command");
    let let_go = || {
        !logs
            .messages_starting("SSM event of a command this deployment did not send")
            .is_empty()
    };
    let (_, seen) = world
        .deliver_until(&app, Duration::from_secs(10), let_go)
        .await
        .expect("deliver");
    assert!(seen, "the operator's command's event is let go");

    // A message shaped as SSM's event, of another account, sent by someone who got past the
    // queue's policy: refused, nothing looked at.
    let forged = json!({
        "version": "0", "id": "1", "source": "aws.ssm", "account": "210987654321",
        "detail-type": "EC2 Command Invocation Status-change Notification",
        "time": NIGHT, "region": harness::REGION, "resources": [],
        "detail": {"command-id": "e8d3c0e4-71f7-4491-898f-c9b35bee5f3b",
                   "instance-id": ids[3], "status": "Success",
                   "document-name": "AWSEC2-CreateVssSnapshot"}
    });
    world
        .send_raw(&forged.to_string())
        .await
        .expect("forged message");
    let refused = || !logs.messages_starting("refused").is_empty();
    let (delivered, seen) = world
        .deliver_until(&app, Duration::from_secs(10), refused)
        .await
        .expect("deliver");
    assert!(seen && delivered.failures >= 1, "{delivered:?}");
    assert_eq!(
        proxy.stats().calls_of("ssm:GetCommandInvocation"),
        4,
        "neither event made the function look at SSM"
    );
    let (sets, _) = catalog.sets_of(&ids[0]).await.expect("catalog");
    assert_eq!(sets.len(), 1, "sql01: only the run's set is recorded");
}

#[tokio::test]
async fn with_events_on_but_none_coming_the_polling_looks_finish_the_run() {
    let world = World::start(3).await.expect("world");
    world.seed(&fleet()).await.expect("seed");
    // No rule: the events are lost, as EventBridge may lose them.
    let metrics = Metrics::default();
    let app = metrics.attach(world.app(&[("COMPLETION_EVENTS", "true")]).expect("app"));
    let run_id = world.nightly(&app, NIGHT).await.expect("night");
    let report = world.logs.run_report(&run_id).expect("summary");
    assert_eq!(report.count(OutcomeKind::Consistent), 3, "{report:?}");
    assert_eq!(report.outcomes.len(), 4);
    // Each end found by polling is counted: the rule delivers nothing here.
    let by_polling: u64 = metrics
        .of("ended", Some(&run_id))
        .iter()
        .filter_map(|l| l["EndsFoundByPolling"].as_u64())
        .sum();
    assert_eq!(by_polling, 4);
    assert_eq!(
        queue_depth(&world.emulator, "tracking-dlq")
            .await
            .expect("dlq"),
        0
    );
}
