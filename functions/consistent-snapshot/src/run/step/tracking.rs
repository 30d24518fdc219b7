//! Tracking messages: each look at an instance's (or a whole run's) progress either queues
//! the next look or finishes, and a run finishes with exactly one summary.

use chrono::{Duration, Utc};
use tracing::{info, warn};

use std::collections::HashSet;

use crate::app::{dispatched_run, emit_metrics, enqueue, refuse, requeue, App};
use crate::aws::catalog::RunMarkerStore;
use crate::aws::{commands, notify, snapshots};
use crate::error::Error;
use crate::jobs::{CopyJob, Envelope, InstanceJob, Job, RunJob};
use crate::model::catalog::{reported_snapshots, ForeignSnapshot};
use crate::model::command::Look;
use crate::model::fleet::AttachedVolume;
use crate::model::snapshot::SnapshotFacts;
use crate::run::plan::outcome::{Outcome, OutcomeKind};
use crate::run::plan::record::{outcome_of, verify_set, Verified};
use crate::run::plan::summary::{
    notification_subject, notification_text, run_counts, RunSummary, MAX_FOREIGN,
    NOTIFICATION_MAX_BYTES,
};
use crate::run::plan::track::{
    instance_tags, next_instance_step, next_run_step, run_outcomes, Next, RunCatalog,
    RunInvocations, RunNext, RunWait,
};

/// One look at an instance's invocation (and, once it is final, at the snapshots its document
/// reported). The message is a reference: the command and the volumes are the manifest's.
pub async fn track_instance(app: &App, message: InstanceJob) -> Result<(), Error> {
    let catalog = &app.aws.catalog;
    let manifest = catalog
        .manifest_entry(&message.run_id, &message.instance_id)
        .await?;
    let Some(manifest) = manifest.filter(|m| m.command_id == message.command_id) else {
        return Err(refuse(
            app,
            format!(
                "instance job for {} in run {} (command {}): the run's manifest holds no such dispatch",
                message.instance_id, message.run_id, message.command_id
            ),
        ));
    };
    let job = InstanceJob {
        name: manifest.name.clone(),
        volumes: manifest.volumes.clone(),
        ..message
    };
    let look = commands::look(&app.aws.ssm, &job.command_id, &job.instance_id).await?;
    let snapshots = match &look {
        Look::Final(invocation) => {
            let ids: Vec<String> = reported_snapshots(&invocation.output)
                .into_iter()
                .map(|(snapshot, _)| snapshot)
                .collect();
            let subject = format!("run {} on {}", job.run_id, job.instance_id);
            snapshots::by_ids(&app.aws.ec2, &ids, &subject).await?
        }
        Look::NotYet { .. } => Vec::new(),
    };
    let completion = Duration::seconds(i64::from(app.config.snapshot_completion_timeout_seconds));
    let now = Utc::now();
    match next_instance_step(&job, &look, &snapshots, now, completion) {
        Next::Wait { job, why } => {
            info!(run_id = %job.run_id, instance_id = %job.instance_id, attempt = job.attempt, waiting_for = %why, "not final yet");
            requeue(app, Job::Instance(job)).await
        }
        Next::Finish(outcome) => {
            let Look::Final(invocation) = &look else {
                // Timed out before SSM was final: nothing to record; the run reports it.
                log_outcome(&job.run_id, &outcome, 0);
                return Ok(());
            };
            let verified = verify_set(&manifest, invocation, &snapshots, &app.config.region, now);
            log_foreign(&job.run_id, &verified.foreign);
            let outcome = record(app, &verified).await?;
            let tagged = tag_set(
                app,
                &job.instance_id,
                &job.name,
                &job.volumes,
                &verified.snapshots,
            )
            .await?;
            log_outcome(&job.run_id, &outcome, tagged);
            Ok(())
        }
    }
}

/// Records a verified set with snapshots in the catalog (a set without any has nothing to
/// keep, copy or restore: its outcome is the verification's); answers the outcome of the set
/// as recorded (the first verification's, should another have recorded it first).
async fn record(app: &App, verified: &Verified) -> Result<Outcome, Error> {
    if verified.record.snapshots.is_empty() {
        return Ok(verified.outcome.clone());
    }
    let recorded = app.aws.catalog.record_set(&verified.record).await?;
    Ok(outcome_of(&recorded))
}

fn log_foreign(run_id: &str, foreign: &[ForeignSnapshot]) {
    for f in foreign {
        warn!(run_id, snapshot_id = %f.snapshot_id, claims_instance = f.claims_instance.as_deref().unwrap_or(""), why = %f.why, "foreign snapshot: carries this deployment's tags, not recorded");
    }
}

/// Adds the per-instance contract tags to a set's snapshots that lack them; answers how many
/// snapshots were tagged (already tagged ones cost no call).
async fn tag_set(
    app: &App,
    instance_id: &str,
    name: &str,
    volumes: &[AttachedVolume],
    snapshots: &[SnapshotFacts],
) -> Result<usize, Error> {
    let mut tagged = 0;
    for snapshot in snapshots {
        if let Some(tags) = instance_tags(instance_id, name, volumes, snapshot) {
            let subject = format!("{} of {instance_id}", snapshot.snapshot_id);
            snapshots::tag(&app.aws.ec2, &snapshot.snapshot_id, &tags, &subject).await?;
            tagged += 1;
        }
    }
    Ok(tagged)
}

/// One look at a whole run: wait while any invocation or reported snapshot is not final
/// (until the run's deadline), then write the run's one summary and queue its copy step. The
/// message is a reference: the run's commands, skipped and unsent instances are the catalog's.
pub async fn track_run(app: &App, message: RunJob) -> Result<(), Error> {
    let now = Utc::now();
    let catalog = &app.aws.catalog;
    let dispatched = dispatched_run(app, &message.run_id, "run").await?;
    let job = RunJob {
        attempt: message.attempt,
        ..dispatched
    };
    let mut listed = Vec::new();
    for command in &job.commands {
        let why = format!("run {}", job.run_id);
        let found = commands::invocations(&app.aws.ssm, &command.command_id, true, &why).await?;
        listed.push((command, found));
    }
    let invocations = RunInvocations::gather(&listed);
    // Only what the documents reported can hold the run: a snapshot merely tagged with the
    // run's id (anyone's) cannot keep it waiting.
    let reported: HashSet<String> = invocations
        .by_instance
        .values()
        .filter_map(|(_, fin, _)| fin.as_ref())
        .flat_map(|fin| reported_snapshots(&fin.output))
        .map(|(snapshot, _)| snapshot)
        .collect();
    let mut snapshots: Option<Vec<SnapshotFacts>> = None;
    let mut pending_view: Option<Vec<SnapshotFacts>> = None;
    loop {
        match next_run_step(&job, &invocations, pending_view.as_deref(), now) {
            RunNext::Wait { job, why } => {
                match why {
                    RunWait::Invocations { open } => {
                        info!(run_id = %job.run_id, open, "run not final yet")
                    }
                    RunWait::Snapshots { pending } => {
                        info!(run_id = %job.run_id, pending, "run waiting for snapshots to complete")
                    }
                }
                return requeue(app, Job::Run(job.as_reference())).await;
            }
            RunNext::ReadSnapshots => {
                let all = snapshots::of_run(&app.aws.ec2, &job.run_id, None).await?;
                pending_view = Some(
                    all.iter()
                        .filter(|s| reported.contains(&s.snapshot_id))
                        .cloned()
                        .collect(),
                );
                snapshots = Some(all);
            }
            RunNext::Finish => break,
        }
    }
    let snapshots = snapshots.unwrap_or_default();
    let view = catalog.run_view(&job.run_id).await?;
    let run_catalog = RunCatalog {
        manifest: view
            .manifest
            .into_iter()
            .map(|m| (m.instance_id.clone(), m))
            .collect(),
        sets: view
            .sets
            .into_iter()
            .map(|s| (s.instance_id.clone(), s))
            .collect(),
    };
    let (results, others, foreign) = run_outcomes(
        &job,
        &invocations,
        &run_catalog,
        &snapshots,
        (&app.config.region, now),
    );
    log_foreign(&job.run_id, &foreign[..foreign.len().min(MAX_FOREIGN)]);
    let mut outcomes = Vec::with_capacity(results.len() + others.len());
    for result in results {
        // The instance's own message records and tags its set as soon as it is final;
        // should that message be lost (dead-lettered), the run's does it here.
        let mut outcome = result.outcome;
        if let Some(verified) = result.verified {
            outcome = record(app, &verified).await?;
            let set = &verified.record;
            tag_set(
                app,
                &set.instance_id,
                &set.name,
                &set.expected,
                &verified.snapshots,
            )
            .await?;
        }
        outcomes.push(outcome);
    }
    outcomes.extend(others);
    let summary = RunSummary::new(&job.run_id, job.started_at, now, outcomes).with_foreign(foreign);
    // The copy step is queued before the summary's marker: should this invocation stop
    // between the two, a redelivery queues it again (the step runs under its own lease).
    enqueue(
        app,
        &[Envelope::new(Job::Copy(CopyJob::first(
            &job.run_id,
            Utc::now(),
            app.config.snapshot_completion_timeout_seconds,
        )))],
    )
    .await?;
    // One summary per run, however often this message is delivered.
    let store = RunMarkerStore::new(&app.aws.catalog, &job.run_id);
    if !store.mark_reported().await? {
        info!(run_id = %job.run_id, "the run's summary is already written (a duplicate delivery)");
        return Ok(());
    }
    let line = summary.summary_line();
    let summary_json = serde_json::to_string(&summary).unwrap_or_default();
    emit_metrics(
        app,
        &run_counts(&summary),
        &[("RunId", &job.run_id), ("Event", "run")],
    );
    if summary.all_consistent() {
        info!(run_id = %job.run_id, report = %summary_json, "{line}");
    } else {
        warn!(run_id = %job.run_id, report = %summary_json, "{line}");
        notify_attention(app, &summary).await;
    }
    Ok(())
}

/// Sends the summary of a run that needs attention to `NOTIFY_TOPIC_ARN`, if set. The
/// summary is already logged and counted: a failure here is logged, not retried.
async fn notify_attention(app: &App, summary: &RunSummary) {
    let Some(topic) = &app.config.notify_topic_arn else {
        return;
    };
    let subject = notification_subject(&app.config.managed_by, summary);
    let message = notification_text(summary, NOTIFICATION_MAX_BYTES);
    let about = format!("run {}", summary.run_id);
    match notify::publish(&app.aws.sns, topic, subject, message, &about).await {
        Ok(()) => info!(run_id = %summary.run_id, topic = %topic, "run summary sent"),
        Err(err) => warn!(run_id = %summary.run_id, error = %err, "run summary not sent"),
    }
}

fn log_outcome(run_id: &str, outcome: &Outcome, tagged: usize) {
    let reason = outcome.reason.as_deref().unwrap_or("");
    let snapshots = outcome.snapshots.join(",");
    if outcome.kind == OutcomeKind::Consistent {
        info!(run_id, instance_id = %outcome.instance_id, name = %outcome.name, outcome = %outcome.kind, snapshots = %snapshots, tagged, reason, "instance finished");
    } else {
        warn!(run_id, instance_id = %outcome.instance_id, name = %outcome.name, outcome = %outcome.kind, snapshots = %snapshots, tagged, reason, "instance finished");
    }
}
