//! Tracking messages: each look at an instance's (or a whole run's) progress either queues
//! the next look or finishes, and a run finishes with exactly one summary.

use chrono::{Duration, Utc};
use tracing::{info, warn};

use crate::app::{emit_metrics, enqueue, requeue, App};
use crate::aws::markers::RunMarkerStore;
use crate::aws::{commands, instances, notify, snapshots};
use crate::error::Error;
use crate::jobs::{CopyJob, Envelope, InstanceJob, Job, RunJob};
use crate::model::command::Look;
use crate::model::fleet::AttachedVolume;
use crate::model::snapshot::SnapshotFacts;
use crate::run::plan::outcome::{Outcome, OutcomeKind};
use crate::run::plan::summary::{
    notification_subject, notification_text, run_counts, RunSummary, NOTIFICATION_MAX_BYTES,
};
use crate::run::plan::track::{
    instance_tags, next_instance_step, next_run_step, run_outcomes, Next, RunInvocations, RunNext,
    RunWait,
};

/// One look at an instance's invocation (and, once it is final, at its snapshots).
pub async fn track_instance(app: &App, job: InstanceJob) -> Result<(), Error> {
    let look = commands::look(&app.aws.ssm, &job.command_id, &job.instance_id).await?;
    let snapshots = match look {
        Look::Final(_) => {
            let volumes = job.volumes.iter().map(|v| v.volume_id.clone()).collect();
            snapshots::of_run(&app.aws.ec2, &job.run_id, Some(volumes)).await?
        }
        Look::NotYet { .. } => Vec::new(),
    };
    let completion = Duration::seconds(i64::from(app.config.snapshot_completion_timeout_seconds));
    match next_instance_step(&job, &look, &snapshots, Utc::now(), completion) {
        Next::Wait { job, why } => {
            info!(run_id = %job.run_id, instance_id = %job.instance_id, attempt = job.attempt, waiting_for = %why, "not final yet");
            requeue(app, Job::Instance(job)).await
        }
        Next::Finish(outcome) => {
            let tagged =
                tag_set(app, &job.instance_id, &job.name, &job.volumes, &snapshots).await?;
            log_outcome(&job.run_id, &outcome, tagged);
            Ok(())
        }
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

/// One look at a whole run: wait while any invocation or snapshot is not final (until the
/// run's deadline), then write the run's one summary and queue its copy step.
pub async fn track_run(app: &App, job: RunJob) -> Result<(), Error> {
    let now = Utc::now();
    let mut listed = Vec::new();
    for command in &job.commands {
        let why = format!("run {}", job.run_id);
        let found = commands::invocations(&app.aws.ssm, &command.command_id, true, &why).await?;
        listed.push((command, found));
    }
    let invocations = RunInvocations::gather(&listed);
    let mut snapshots: Option<Vec<SnapshotFacts>> = None;
    loop {
        match next_run_step(&job, &invocations, snapshots.as_deref(), now) {
            RunNext::Wait { job, why } => {
                match why {
                    RunWait::Invocations { open } => {
                        info!(run_id = %job.run_id, open, "run not final yet")
                    }
                    RunWait::Snapshots { pending } => {
                        info!(run_id = %job.run_id, pending, "run waiting for snapshots to complete")
                    }
                }
                return requeue(app, Job::Run(job)).await;
            }
            RunNext::ReadSnapshots => {
                snapshots = Some(snapshots::of_run(&app.aws.ec2, &job.run_id, None).await?);
            }
            RunNext::Finish => break,
        }
    }
    let snapshots = snapshots.unwrap_or_default();
    let instances = instances::by_id(
        &app.aws.ec2,
        &app.config,
        invocations.by_instance.keys().map(String::as_str),
    )
    .await?;
    let (results, others) = run_outcomes(&job, &invocations, &snapshots, &instances);
    let mut outcomes = Vec::with_capacity(results.len() + others.len());
    for result in results {
        // The instance's own message tags its set as soon as it is final; should that
        // message be lost (dead-lettered), the run's tags it here. Tagged snapshots cost
        // no call.
        let outcome = result.outcome;
        tag_set(
            app,
            &outcome.instance_id,
            &outcome.name,
            &result.expected,
            &result.snapshots,
        )
        .await?;
        outcomes.push(outcome);
    }
    outcomes.extend(others);
    let summary = RunSummary::new(&job.run_id, job.started_at, now, outcomes);
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
    let store = RunMarkerStore::new(&app.aws.ssm, &app.config.managed_by, &job.run_id);
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
