//! `make demo`: a demo Windows fleet snapshotted end to end on the local emulator.
//!
//! Starts the emulator, seeds a fleet (well-behaved servers, plus one untagged, one stopped, one
//! whose VSS freeze fails and one whose SSM agent is offline), delivers a scheduled event to the
//! real handler, runs the tracking queue to the end, and prints the run's summary as the function
//! logged it.

use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use consistent_snapshot::OutcomeKind;
use harness::{
    demo_fleet, drain, invoke, run_snapshots, scheduled_event, seed, workspace_root, Emulator,
    Logs, Windows,
};
use serde_json::json;

const DR_REGION: &str = "eu-west-1";

#[tokio::main(flavor = "current_thread")]
async fn main() -> harness::Result<()> {
    let started = Instant::now();
    let log_dir = workspace_root().join(".emulator");
    std::fs::create_dir_all(&log_dir)?;
    let log_path = log_dir.join("demo-lambda.log");
    let (logs, _guard) = Logs::capture(Some(&log_path))?;

    println!("==> starting the local AWS emulator (moto + simulated Windows agents) on 127.0.0.1");
    let emulator = Emulator::start().await?;
    let queue = emulator
        .create_queue("consistent-snapshot-tracking", 5)
        .await?;

    let fleet = demo_fleet();
    let ids = seed(&emulator, &fleet).await?;
    println!("==> seeded {} instances:", ids.len());
    for (server, id) in fleet.iter().zip(&ids) {
        let mut notes = vec![format!("{} data volume(s)", server.data_volumes)];
        if !server.tagged {
            notes.push("not tagged".into());
        }
        if server.stopped {
            notes.push("stopped".into());
        }
        if server.sim != Windows::default() {
            let sim = serde_json::to_string(&server.sim).unwrap_or_default();
            notes.push(format!("simulated: {sim}"));
        }
        println!("    {id}  {:<12} {}", server.name, notes.join(", "));
    }

    // As the template deploys it: SSM's completion events reach the tracking queue.
    emulator.completion_events(&queue)?;
    let app = emulator.app(
        &queue,
        &[
            ("MANAGED_BY", "consistent-snapshot-demo"),
            ("COPY_REGIONS", DR_REGION),
            ("COMPLETION_EVENTS", "true"),
            // The deployment's defaults (the harness turns them off for tests about other
            // things); the retry's pause shortened from 120 s for the demo.
            ("CRASH_CONSISTENT_FALLBACK", "true"),
            ("VSS_RETRIES", "1"),
            ("VSS_RETRY_PAUSE_SECONDS", "2"),
        ],
    )?;
    let now = Utc::now()
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or_else(Utc::now);
    // Before the night: which servers will fail, and the check that says why.
    // With the stack's read-only probe: what only the servers can say of themselves.
    println!("==> {{\"action\":\"readiness\",\"probe\":true}}: before the night");
    let readiness = invoke(
        &app,
        serde_json::json!({"action": "readiness", "probe": true}),
    )
    .await?;
    println!("    {}", readiness["summary"].as_str().unwrap_or_default());
    println!(
        "    the probe answered from {} server(s)",
        readiness["probe_answered"].as_u64().unwrap_or_default()
    );
    for server in readiness["instances"].as_array().into_iter().flatten() {
        for check in server["checks"].as_array().into_iter().flatten() {
            if check["result"] == "fail" {
                println!(
                    "    {:<12} {}: {} ({})",
                    server["name"].as_str().unwrap_or_default(),
                    check["check"].as_str().unwrap_or_default(),
                    check["detail"].as_str().unwrap_or_default(),
                    check["fix"].as_str().unwrap_or_default(),
                );
            }
        }
    }
    let event = scheduled_event("consistent-snapshot-nightly", &now.to_rfc3339());
    println!("==> delivering an EventBridge \"Scheduled Event\" to the handler");
    let start = invoke(&app, event.clone()).await?;
    let run_id = start["run_id"].as_str().unwrap_or_default().to_string();
    println!(
        "    run {run_id}: {} dispatched in {} command(s), {} skipped",
        start["dispatched"].as_array().map_or(0, Vec::len),
        start["commands"].as_array().map_or(0, Vec::len),
        start["skipped"].as_array().map_or(0, Vec::len),
    );
    // EventBridge may deliver a schedule twice: the same run, nothing sent again.
    let again = invoke(&app, event).await?;
    println!(
        "    the same event delivered again: run {}, {} (nothing sent twice)",
        again["run_id"].as_str().unwrap_or_default(),
        again["status"].as_str().unwrap_or_default()
    );
    println!(
        "==> tracking through SQS (a local event source plays the Lambda event source mapping)"
    );
    let drained = drain(&emulator, &app, &queue, 10, Duration::from_secs(100)).await?;
    println!(
        "    {} invocations over {} messages, {} failed items",
        drained.invocations, drained.messages, drained.failures
    );

    let report = logs.run_report(&run_id).ok_or_else(|| {
        format!(
            "the function logged no summary for run {run_id}; see {}",
            log_path.display()
        )
    })?;
    println!("\n{}\n", report.table());
    // The servers whose freeze timed out were tried again in a run of their own.
    if let Some(retry) = &report.retry {
        match logs.run_report(&retry.run_id) {
            Some(again) => println!("the retry: {}\n", again.summary_line()),
            None => println!("the retry {} logged no summary\n", retry.run_id),
        }
    }

    // What an operator would check in EC2 itself: the snapshots carrying the run id, and none
    // of an instance that was not (or could not be) backed up.
    let snapshots = run_snapshots(&emulator, &run_id).await?;
    let reported: usize = report.outcomes.iter().map(|o| o.snapshots.len()).sum();
    println!(
        "EC2 check: {} snapshots carry run id {run_id} (the summary counts {reported})",
        snapshots.len()
    );
    let ec2 = emulator.ec2();
    for (server, id) in fleet.iter().zip(&ids) {
        let outcome = report
            .outcomes
            .iter()
            .find(|o| &o.instance_id == id)
            .map(|o| o.kind);
        if matches!(
            outcome,
            Some(OutcomeKind::Consistent | OutcomeKind::CrashConsistent)
        ) {
            continue;
        }
        let described = ec2.describe_instances().instance_ids(id).send().await?;
        let volumes: Vec<String> = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .flat_map(|i| i.block_device_mappings())
            .filter_map(|m| m.ebs().and_then(|e| e.volume_id()).map(str::to_string))
            .collect();
        let taken = snapshots
            .iter()
            .filter(|s| {
                s.volume_id()
                    .is_some_and(|v| volumes.contains(&v.to_string()))
            })
            .count();
        let why = outcome.map_or("not tagged: not part of the fleet".to_string(), |k| {
            k.to_string()
        });
        println!(
            "           {:<12} {taken} snapshots of its {} volumes ({why})",
            server.name,
            volumes.len()
        );
    }
    // The disaster-recovery copies, and what retention did, as the function logged them.
    let copies = emulator
        .ec2_in(DR_REGION)
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:ConsistentSnapshot:RunId")
                .values(&run_id)
                .build(),
        )
        .send()
        .await?;
    println!(
        "           {} copies in {DR_REGION} carry the run id",
        copies.snapshots().len()
    );
    for line in logs
        .records()
        .iter()
        .filter(|r| r["run_id"] == run_id.as_str())
        .filter(|r| r.get("copies").is_some() || r.get("retention").is_some())
    {
        println!("    {}", line["message"].as_str().unwrap_or_default());
    }
    // The fleet report an operator (or the hourly schedule) asks for next.
    let fleet_report = invoke(&app, json!({"action": "report"})).await?;
    println!("\n==> {{\"action\":\"report\"}}: the fleet against its RPO, out of RPO first");
    for status in fleet_report["instances"].as_array().into_iter().flatten() {
        let set = &status["latest_consistent"];
        let copies: Vec<String> = status["copies"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(region, c)| format!("{region} {}/{}", c["completed"], c["of"]))
            .collect();
        // What stands in the way, by its named cause when it has one, else in its own words.
        let note = status["next_run_fix"]
            .as_str()
            .or(status["last_failure"]["fix"].as_str())
            .or(status["next_run_skips"].as_str())
            .or(status["last_failure"]["reason"].as_str())
            .unwrap_or_default();
        let cause = status["next_run_cause"]
            .as_str()
            .or(status["last_failure"]["cause"].as_str())
            .map(|c| format!("{c}: "))
            .unwrap_or_default();
        let fallback = status["crash_consistent_fallback"]["taken_at"]
            .as_str()
            .map(|at| format!("crash-consistent fallback at {}; ", &at[..at.len().min(16)]))
            .unwrap_or_default();
        let note = format!("{fallback}{cause}{note}");
        println!(
            "    {:<12} {:<16} {:>9} {:<16} {}",
            status["name"].as_str().unwrap_or_default(),
            status["rpo"].as_str().unwrap_or_default(),
            set["age_hours"]
                .as_f64()
                .map_or("-".to_string(), |h| format!("{h:.1} h")),
            copies.join(", "),
            note.chars().take(90).collect::<String>()
        );
    }
    let totals = &fleet_report["totals"];
    println!(
        "    {} instances: {} within the {} h RPO, {} out of it ({} never backed up)",
        totals["instances"],
        totals["within_rpo"],
        fleet_report["rpo_hours"],
        totals["out_of_rpo"],
        totals["never_backed_up"]
    );
    println!(
        "function logs (JSON, as CloudWatch receives them): {}",
        log_path.display()
    );
    println!(
        "demo finished in {:.1} s; the emulator is stopped",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
