//! Tracking messages: each look at an instance's (or a whole run's) progress either queues
//! the next look or finishes, and a run finishes with exactly one summary.

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use std::collections::{HashMap, HashSet};

use crate::app::{dispatched_run, emit_metrics, enqueue, refuse, requeue, App};
use crate::aws::catalog::RunMarkerStore;
use crate::aws::{commands, notify, snapshots};
use crate::error::Error;
use crate::jobs::{
    CopyJob, EndedJob, Envelope, InstanceJob, Job, RetryJob, RunJob, VaultJob, ENDED_ATTEMPTS,
};
use crate::model::catalog::{reported_snapshots, ForeignSnapshot, SetRecord, Verdict};
use crate::model::pace::Pace;
use crate::model::snapshot::SnapshotFacts;
use crate::model::stop_time;
use crate::run::plan::outcome::{Outcome, OutcomeKind};
use crate::run::plan::record::{outcome_of, Verified};
use crate::run::plan::retry::plan_retry;
use crate::run::plan::summary::{
    notification_subject, notification_text, run_counts, RetryNote, RunSummary, MAX_FOREIGN,
    MAX_LOGGED_OUTCOMES, NOTIFICATION_MAX_BYTES, RECORD_PAGE_OUTCOMES,
};
use crate::run::plan::track::{
    instance_tags, next_instance_step, next_run_step, run_outcomes, Next, RunCatalog,
    RunInvocations, RunNext, RunWait,
};
use crate::run::step::fallback::take_fallbacks;

/// One look at an instance's invocation: not final, it looks again later (or, past the
/// command's deadline, ends timed out); final, it records SSM's result in the catalog for the
/// run's look, which verifies and records every set of the run from one read of its snapshots.
/// The message is a reference: the command and the volumes are the manifest's.
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
    if app.config.completion_events
        && catalog
            .has_report(&message.run_id, &message.instance_id)
            .await?
    {
        info!(run_id = %message.run_id, instance_id = %message.instance_id, "invocation's end already recorded from SSM's event");
        return Ok(());
    }
    let job = InstanceJob {
        name: manifest.name,
        volumes: manifest.volumes,
        ..message
    };
    let look = commands::look(&app.aws.ssm, &job.command_id, &job.instance_id).await?;
    match next_instance_step(&job, &look, Utc::now()) {
        Next::Wait { job, why } => {
            info!(run_id = %job.run_id, instance_id = %job.instance_id, attempt = job.attempt, waiting_for = %why, "not final yet");
            requeue(app, Job::Instance(job)).await
        }
        // Nothing to record; the run reports it.
        Next::TimedOut(outcome) => {
            log_outcome(&job.run_id, &outcome);
            Ok(())
        }
        Next::Report(report) => {
            let recorded = record_final(app, &report, "polling").await;
            if app.config.completion_events {
                // SSM's event did not bring this end: a few are expected (best-effort
                // delivery); all of them means the rule delivers nothing.
                emit_metrics(
                    app,
                    &[("EndsFoundByPolling", 1)],
                    &[("RunId", &report.run_id), ("Event", "ended")],
                );
            }
            recorded
        }
    }
}

/// Records an instance's final result (once, whoever sees it first: its polling look or
/// SSM's event) and counts it; the run's last one queues the run's early look.
async fn record_final(
    app: &App,
    report: &crate::model::catalog::InstanceReport,
    seen_by: &str,
) -> Result<(), Error> {
    let new = app.aws.catalog.record_report(report).await?;
    let reported = reported_snapshots(&report.invocation.output).len();
    info!(run_id = %report.run_id, instance_id = %report.instance_id, status = %report.invocation.status, reported, duplicate = !new, seen_by, "invocation final: the run's look verifies and records the set");
    if new {
        count_final(app, &report.run_id).await;
    }
    Ok(())
}

/// Counts one more instance of the run with a recorded end; when it is the last, queues the
/// run's early look, so that a run whose servers are done is verified and recorded at once,
/// not at its next look on the backoff. Best effort: what fails here is logged, and the
/// backoff's looks finish the run as they would without it.
pub async fn count_final(app: &App, run_id: &str) {
    match app.aws.catalog.count_final(run_id).await {
        Ok(finals) if finals.complete() => queue_early_look(app, run_id).await,
        Ok(_) => {}
        Err(err) => {
            warn!(run_id, error = %err, code = err.aws_code().unwrap_or(""), "final result not counted: the run's own looks finish it");
        }
    }
}

/// Queues the run's early look (the run as the catalog holds it, as a reference).
pub async fn queue_early_look(app: &App, run_id: &str) {
    let queued = match app.aws.catalog.run(run_id).await {
        Ok(Some(run)) => {
            let look = RunJob {
                early: true,
                attempt: 0,
                ..run.as_reference()
            };
            enqueue(app, &[Envelope::new(Job::Run(look))]).await
        }
        Ok(None) => Ok(()),
        Err(err) => Err(err),
    };
    match queued {
        Ok(()) => info!(
            run_id,
            "every instance of the run has ended: its look is queued now"
        ),
        Err(err) => {
            warn!(run_id, error = %err, code = err.aws_code().unwrap_or(""), "early look not queued: the run's own looks finish it");
        }
    }
}

/// SSM's event that an instance's invocation ended: a hint. It counts only for a command the
/// catalog records as this deployment's, sent in the run to that instance, and what is
/// recorded is SSM's own answer to one look, as the instance's polling look would record it.
/// The dispatch records a command as soon as SendCommand answers, but its run's manifest only
/// once every command is sent: an event that comes in between is handed back (at most
/// `ENDED_ATTEMPTS` times). An event of any other command (an operator running the document
/// by hand) is let go at once. The instance's polling look goes on either way: an event that
/// never comes costs time, never a result.
pub async fn track_ended(app: &App, ended: EndedJob) -> Result<(), Error> {
    let catalog = &app.aws.catalog;
    let Some(run_id) = catalog.command_run(&ended.command_id).await? else {
        info!(command_id = %ended.command_id, instance_id = %ended.instance_id, "SSM event of a command this deployment did not send: let go");
        emit_metrics(app, &[("EventsNotOurs", 1)], &[("Event", "ended")]);
        return Ok(());
    };
    let manifest = catalog
        .manifest_entry(&run_id, &ended.instance_id)
        .await?
        .filter(|m| m.command_id == ended.command_id);
    let Some(manifest) = manifest else {
        if ended.attempt < ENDED_ATTEMPTS {
            info!(run_id = %run_id, command_id = %ended.command_id, instance_id = %ended.instance_id, attempt = ended.attempt, "SSM event before the run's manifest is written: looked at again later");
            return requeue(
                app,
                Job::Ended(EndedJob {
                    attempt: ended.attempt + 1,
                    ..ended
                }),
            )
            .await;
        }
        info!(run_id = %run_id, command_id = %ended.command_id, instance_id = %ended.instance_id, "SSM event of an instance the run's manifest does not hold: let go, its polling look goes on");
        emit_metrics(app, &[("EventsNotOurs", 1)], &[("Event", "ended")]);
        return Ok(());
    };
    let job = InstanceJob {
        run_id,
        instance_id: ended.instance_id.clone(),
        name: manifest.name,
        command_id: ended.command_id.clone(),
        volumes: manifest.volumes,
        // Only a final look is acted on here; the deadline is the polling look's to keep.
        stage_deadline: Utc::now() + chrono::Duration::days(1),
        attempt: 0,
    };
    let look = commands::look(&app.aws.ssm, &job.command_id, &job.instance_id).await?;
    match next_instance_step(&job, &look, Utc::now()) {
        Next::Report(report) => record_final(app, &report, "event").await,
        Next::Wait { why, .. } => {
            info!(run_id = %job.run_id, instance_id = %job.instance_id, event_status = %ended.status, ssm = %why, "SSM event says ended, SSM's look does not (yet): the polling look goes on");
            Ok(())
        }
        Next::TimedOut(_) => Ok(()),
    }
}

/// Records a verified set with snapshots in the catalog (a set without any has nothing to
/// keep, copy or restore: its outcome is the verification's); answers the outcome of the set
/// as recorded and the record (the first verification's, should another have recorded it
/// first).
async fn record(app: &App, verified: &Verified) -> Result<(Outcome, Option<SetRecord>), Error> {
    if verified.record.snapshots.is_empty() {
        return Ok((verified.outcome.clone(), None));
    }
    let recorded = app.aws.catalog.record_set(&verified.record).await?;
    Ok((outcome_of(&recorded), Some(recorded)))
}

fn log_foreign(run_id: &str, foreign: &[ForeignSnapshot]) {
    for f in foreign {
        warn!(run_id, snapshot_id = %f.snapshot_id, claims_instance = f.claims_instance.as_deref().unwrap_or(""), why = %f.why, "foreign snapshot: carries this deployment's tags, not recorded");
    }
}

/// What tagging the run's sets came to.
#[derive(Debug, Default)]
struct Tagging {
    tagged: usize,
    /// Left for the run's next look (time ran out, or EC2 throttled).
    left: usize,
    /// Refused by EC2 with a code that another try would not change: logged, left untagged.
    failed: usize,
}

/// Adds the per-instance contract tags to the recorded sets' snapshots that lack them, until
/// `stop_at` (already tagged ones cost no call; a snapshot EC2 no longer lists is not tagged).
/// A snapshot EC2 refuses to tag is logged with the code and the rest go on: tags are for
/// operators, and one of them must not hold up the run's summary, copies and retention.
async fn tag_sets(
    app: &App,
    sets: &[SetRecord],
    listed: &HashMap<&str, &SnapshotFacts>,
    cost_tags: &HashMap<String, Vec<(String, String)>>,
    stop_at: DateTime<Utc>,
) -> Tagging {
    let wanted: Vec<(&str, Vec<(String, String)>)> = sets
        .iter()
        .flat_map(|set| {
            let costs = cost_tags
                .get(&set.instance_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            set.snapshots.iter().filter_map(move |recorded| {
                let facts = listed.get(recorded.snapshot_id.as_str())?;
                let tags = instance_tags(
                    (&set.instance_id, &set.name, &recorded.device),
                    costs,
                    set.verdict == Verdict::FileSystemConsistent,
                    facts,
                )?;
                Some((recorded.snapshot_id.as_str(), tags))
            })
        })
        .collect();
    let mut tagging = Tagging::default();
    let mut pace = Pace::until(stop_at);
    for (done, (snapshot_id, tags)) in wanted.iter().enumerate() {
        let began = Utc::now();
        if done > 0 && !pace.fits(began) {
            tagging.left = wanted.len() - done;
            break;
        }
        let tagged = snapshots::tag(&app.aws.ec2, snapshot_id, tags, snapshot_id).await;
        pace.took(began, Utc::now());
        match tagged {
            Ok(()) => tagging.tagged += 1,
            Err(err) if err.is_throttling() => {
                warn!(snapshot_id, error = %err, "tagging throttled: the run's next look goes on");
                tagging.left = wanted.len() - done;
                break;
            }
            Err(err) => {
                warn!(snapshot_id, code = err.aws_code().unwrap_or(""), error = %err, "snapshot not tagged");
                tagging.failed += 1;
            }
        }
    }
    tagging
}

/// What one look of the run read once every invocation was final: the catalog's view, the
/// run's snapshots, and SSM's results with the instances' own reports in place.
struct RunRead {
    catalog: RunCatalog,
    invocations: RunInvocations,
    snapshots: Vec<SnapshotFacts>,
    pending: Vec<SnapshotFacts>,
}

/// Reads what verifying the run's sets needs: the catalog's view of the run (manifest,
/// reports, sets), then the run's snapshots in pages of 1,000 by its tag, and by id those the
/// documents reported that the tag did not find (a tag anyone may rewrite cannot hide one).
async fn read_run(app: &App, run_id: &str, invocations: &RunInvocations) -> Result<RunRead, Error> {
    let view = app.aws.catalog.run_view(run_id).await?;
    let catalog = RunCatalog {
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
    let invocations = invocations
        .clone()
        .with_reports(&view.reports, &catalog.manifest);
    // Only what the documents reported can hold the run: a snapshot merely tagged with the
    // run's id (anyone's) cannot keep it waiting.
    let reported: HashSet<String> = invocations
        .by_instance
        .values()
        .filter_map(|(_, fin, _)| fin.as_ref())
        .flat_map(|fin| reported_snapshots(&fin.output))
        .map(|(snapshot, _)| snapshot)
        .collect();
    let mut snapshots = snapshots::of_run(&app.aws.ec2, run_id, None).await?;
    let listed: HashSet<&str> = snapshots.iter().map(|s| s.snapshot_id.as_str()).collect();
    let mut untagged: Vec<String> = reported
        .iter()
        .filter(|id| !listed.contains(id.as_str()))
        .cloned()
        .collect();
    if !untagged.is_empty() {
        untagged.sort();
        info!(
            run_id,
            snapshots = untagged.len(),
            "reported snapshots the run's tag does not find: read by id"
        );
        let found = snapshots::by_ids(&app.aws.ec2, &untagged, &format!("run {run_id}")).await?;
        snapshots.extend(found);
    }
    let pending = snapshots
        .iter()
        .filter(|s| reported.contains(&s.snapshot_id))
        .cloned()
        .collect();
    Ok(RunRead {
        catalog,
        invocations,
        snapshots,
        pending,
    })
}

/// One look at a whole run: wait while any invocation or reported snapshot is not final
/// (until the run's deadline), then verify, record and tag every set, write the run's one
/// summary and queue its copy step. Recording and tagging stop before `deadline` and go on in
/// the run's next look. The message is a reference: the run's commands, skipped and unsent
/// instances are the catalog's.
///
/// Each look is taken by one message (`message_id`; a redelivery of it goes on): the
/// successors that two deliveries of one look queue do not both go on, so the chain never
/// multiplies; and once the summary is written, a look ends at once.
pub async fn track_run(
    app: &App,
    message: RunJob,
    deadline: DateTime<Utc>,
    message_id: &str,
) -> Result<(), Error> {
    let now = Utc::now();
    let stop_at = stop_time(now, deadline);
    let dispatched = dispatched_run(app, &message.run_id, "run").await?;
    let store = RunMarkerStore::new(&app.aws.catalog, &message.run_id);
    if store.read().await?.reported {
        info!(run_id = %message.run_id, look = message.attempt, "the run's summary is already written (a duplicate delivery)");
        return Ok(());
    }
    let claimed = if message.early {
        store.claim_early_look(message.attempt, message_id).await?
    } else {
        store.claim_run_look(message.attempt, message_id).await?
    };
    if !claimed {
        info!(run_id = %message.run_id, look = message.attempt, "run look already taken by another message");
        return Ok(());
    }
    let job = RunJob {
        attempt: message.attempt,
        early: message.early,
        ..dispatched
    };
    let mut listed = Vec::new();
    for command in &job.commands {
        let why = format!("run {}", job.run_id);
        match commands::invocations(&app.aws.ssm, &command.command_id, true, &why).await {
            Ok(found) => listed.push((command, found)),
            // The command history refused for good (a permission taken from the role): each
            // instance's own look (`GetCommandInvocation`) still reports it to the catalog,
            // and the run goes on from those reports, until its deadline at most.
            Err(err) if err.is_permanent() => {
                warn!(run_id = %job.run_id, command_id = %command.command_id, error = %err, code = err.aws_code().unwrap_or(""), "command history not readable: the run goes on from each instance's own look");
                emit_metrics(
                    app,
                    &[("HistoryUnreadable", 1)],
                    &[("RunId", &job.run_id), ("Event", "history")],
                );
                listed.push((command, Vec::new()));
            }
            Err(err) => return Err(err),
        }
    }
    let mut listed = RunInvocations::gather(&listed);
    if !listed.unlisted.is_empty() {
        // SSM does not list them all (yet, or the history refused): the instances' own
        // reports in the catalog stand for the ones it does not list.
        let view = app.aws.catalog.run_view(&job.run_id).await?;
        let manifest = view
            .manifest
            .into_iter()
            .map(|m| (m.instance_id.clone(), m))
            .collect();
        listed = listed.with_reports(&view.reports, &manifest);
    }
    let mut read: Option<RunRead> = None;
    let read = loop {
        let (invocations, pending) = match &read {
            Some(r) => (&r.invocations, Some(r.pending.as_slice())),
            None => (&listed, None),
        };
        match next_run_step(&job, invocations, pending, now) {
            RunNext::Wait { job, why } if job.early => {
                // The backoff's looks go on; an early look is one more, never a chain.
                info!(run_id = %job.run_id, why = ?why, "early look: the run is not final yet, its own looks go on");
                return Ok(());
            }
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
            RunNext::ReadSnapshots => read = Some(read_run(app, &job.run_id, &listed).await?),
            RunNext::Finish => break read,
        }
    };
    let Some(RunRead {
        catalog: run_catalog,
        invocations,
        snapshots,
        ..
    }) = read
    else {
        return Err(Error::Catalog(format!(
            "run {}: finished without reading its snapshots",
            job.run_id
        )));
    };
    let (results, others, mut foreign) = run_outcomes(
        &job,
        &invocations,
        &run_catalog,
        &snapshots,
        (&app.config.region, now),
    );
    let mut outcomes = Vec::with_capacity(results.len() + others.len());
    let cost_tags: HashMap<String, Vec<(String, String)>> = run_catalog
        .manifest
        .values()
        .filter(|m| !m.cost_tags.is_empty())
        .map(|m| (m.instance_id.clone(), m.cost_tags.clone()))
        .collect();
    let mut sets: Vec<SetRecord> = run_catalog.sets.into_values().collect();
    let mut recorded = 0;
    let mut pace = Pace::until(stop_at);
    for result in results {
        let mut outcome = result.outcome;
        if let Some(verified) = result.verified {
            let began = Utc::now();
            if recorded > 0 && !pace.fits(began) {
                return go_on(app, &job, "recording sets", recorded).await;
            }
            let (kept, record_of) = record(app, &verified).await?;
            pace.took(began, Utc::now());
            outcome = kept;
            sets.extend(record_of);
            recorded += 1;
            log_outcome(&job.run_id, &outcome);
        }
        outcomes.push(outcome);
    }
    let listed_by_id: HashMap<&str, &SnapshotFacts> = snapshots
        .iter()
        .map(|s| (s.snapshot_id.as_str(), s))
        .collect();
    let Tagging {
        tagged,
        left,
        failed,
    } = tag_sets(app, &sets, &listed_by_id, &cost_tags, stop_at).await;
    if left > 0 && now <= job.deadline {
        info!(run_id = %job.run_id, recorded, tagged, left, "snapshots left to tag");
        return go_on(app, &job, "tagging snapshots", tagged).await;
    }
    if left > 0 {
        // Tags are for operators; past the run's deadline its summary does not wait for them.
        warn!(run_id = %job.run_id, left, "past the run's deadline: snapshots left without their Name tag");
    }
    info!(run_id = %job.run_id, recorded, tagged, not_tagged = failed, "sets recorded and tagged");
    outcomes.extend(others);
    // The run's own instances: dispatched, skipped, or never sent the command.
    let instances: HashSet<&str> = run_catalog
        .manifest
        .keys()
        .map(String::as_str)
        .chain(job.skipped.iter().map(|s| s.instance_id.as_str()))
        .chain(job.unsent.iter().map(|u| u.instance_id.as_str()))
        .collect();
    let fallbacks = take_fallbacks(
        app,
        &job,
        outcomes,
        (&instances, &sets),
        &snapshots,
        &cost_tags,
        stop_at,
    )
    .await?;
    if fallbacks.left {
        return go_on(
            app,
            &job,
            "taking crash-consistent fallbacks",
            fallbacks.taken,
        )
        .await;
    }
    let outcomes = fallbacks.outcomes;
    // A fallback's snapshots carry the run's tag without any document reporting them.
    foreign.retain(|f| !fallbacks.snapshots.contains(&f.snapshot_id));
    log_foreign(&job.run_id, &foreign[..foreign.len().min(MAX_FOREIGN)]);
    // The servers whose freeze timed out get another attempt, in a run of their own.
    let retry = plan_retry(&job.run_id, &outcomes, app.config.vss_retries).map(|plan| {
        let start_at =
            now + chrono::Duration::seconds(i64::from(app.config.vss_retry_pause_seconds));
        RetryJob {
            parent_run_id: job.run_id.clone(),
            run_id: plan.run_id,
            instance_ids: plan.instance_ids,
            start_at,
        }
    });
    let summary = RunSummary::new(&job.run_id, job.started_at, now, outcomes)
        .with_foreign(foreign)
        .with_retry(retry.as_ref().map(|r| RetryNote {
            run_id: r.run_id.clone(),
            instances: r.instance_ids.len(),
            at: r.start_at,
        }));
    // The copy step (and the retry) are queued before the summary's marker: should this
    // invocation stop between the two, a redelivery queues them again (the step runs under
    // its own lease; the retry's run is claimed once).
    let mut next = vec![Envelope::new(Job::Copy(CopyJob::first(
        &job.run_id,
        Utc::now(),
        app.config.snapshot_completion_timeout_seconds,
    )))];
    if app.config.vault.is_some() {
        next.push(Envelope::new(Job::Vault(VaultJob::first(
            &job.run_id,
            Utc::now(),
            app.config.snapshot_completion_timeout_seconds,
        ))));
    }
    next.extend(retry.map(|r| Envelope::new(Job::Retry(r))));
    enqueue(app, &next).await?;
    // The full record, before the marker: a redelivery after a stop here writes it again
    // (the same pages), and `{"action":"report","run_id":…}` reads it back.
    app.aws
        .catalog
        .put_run_record(
            &job.run_id,
            &summary.record_pages(RECORD_PAGE_OUTCOMES),
            Utc::now(),
        )
        .await?;
    // One summary per run, however often this message is delivered.
    if !store.mark_reported().await? {
        info!(run_id = %job.run_id, "the run's summary is already written (a duplicate delivery)");
        return Ok(());
    }
    let line = summary.summary_line();
    let summary_json =
        serde_json::to_string(&summary.for_log(MAX_LOGGED_OUTCOMES)).unwrap_or_default();
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
/// summary is already logged and counted: a failure here is logged with its AWS code and
/// counted (`NotificationsFailed`, which an alarm watches), not retried.
async fn notify_attention(app: &App, summary: &RunSummary) {
    let Some(topic) = &app.config.notify_topic_arn else {
        return;
    };
    let subject = notification_subject(&app.config.managed_by, summary);
    let message = notification_text(summary, NOTIFICATION_MAX_BYTES);
    let about = format!("run {}", summary.run_id);
    let failed = match notify::publish(&app.aws.sns, topic, subject, message, &about).await {
        Ok(()) => {
            info!(run_id = %summary.run_id, topic = %topic, "run summary sent");
            0
        }
        Err(err) => {
            warn!(run_id = %summary.run_id, error = %err, code = err.aws_code().unwrap_or(""), "run summary not sent");
            1
        }
    };
    emit_metrics(
        app,
        &[("NotificationsFailed", failed)],
        &[("RunId", &summary.run_id), ("Event", "notify")],
    );
}

/// Ends a look that ran out of time half-way (what it recorded and tagged stays): the run's
/// next look goes on from there. Each look records or tags at least one snapshot set or
/// snapshot, or marks one server's unanswered fallback (once per server), so the chain ends.
async fn go_on(app: &App, job: &RunJob, doing: &str, done: usize) -> Result<(), Error> {
    info!(run_id = %job.run_id, done, "{doing}: the invocation's time is up, the run's next look goes on");
    let next = RunJob {
        attempt: job.attempt + 1,
        ..job.as_reference()
    };
    requeue(app, Job::Run(next)).await
}

fn log_outcome(run_id: &str, outcome: &Outcome) {
    let reason = outcome.reason.as_deref().unwrap_or("");
    let snapshots = outcome.snapshots.join(",");
    if outcome.kind == OutcomeKind::Consistent {
        info!(run_id, instance_id = %outcome.instance_id, name = %outcome.name, outcome = %outcome.kind, snapshots = %snapshots, reason, "instance finished");
    } else {
        warn!(run_id, instance_id = %outcome.instance_id, name = %outcome.name, outcome = %outcome.kind, snapshots = %snapshots, reason, "instance finished");
    }
}
