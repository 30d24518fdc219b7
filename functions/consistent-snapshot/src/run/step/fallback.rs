//! The run's last look takes the crash-consistent fallbacks (`run::plan::fallback`) before it
//! writes the summary: one CreateSnapshots per server VSS left without a set, claimed in the
//! catalog before the call (CreateSnapshots has no idempotency token), recorded as a
//! crash-consistent set after it. One server's failure is logged with its AWS code and told
//! in its outcome; the others go on.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::app::App;
use crate::aws::catalog::RunMarkerStore;
use crate::aws::snapshots::CreateFailure;
use crate::aws::{instances, snapshots};
use crate::error::Error;
use crate::jobs::RunJob;
use crate::model::catalog::SetRecord;
use crate::model::fleet::InstanceFacts;
use crate::model::pace::Pace;
use crate::model::snapshot::SnapshotFacts;
use crate::run::plan::fallback::{
    excludes_boot, fallback_description, fallback_set, fallback_tags, fallback_targets,
    left_by_lost_answer, FallbackTarget,
};
use crate::run::plan::outcome::Outcome;
use crate::run::plan::record::outcome_of;

/// What the fallbacks of one look came to.
#[derive(Debug, Default)]
pub struct Fallbacks {
    /// The run's outcomes, a fallback's in place of the outcome it stands for.
    pub outcomes: Vec<Outcome>,
    /// The snapshots of every fallback set of the run (never foreign).
    pub snapshots: HashSet<String>,
    /// Taken (or found after a lost answer) by this look.
    pub taken: usize,
    /// The look's time ran out with fallbacks left, or a CreateSnapshots went unanswered: the
    /// run's next look goes on.
    pub left: bool,
}

/// Takes the fallbacks the run's `outcomes` call for. `instances` are the run's own (dispatched,
/// skipped, unsent); `recorded` its sets so far; `listed` the snapshots carrying its tag.
pub async fn take_fallbacks(
    app: &App,
    job: &RunJob,
    outcomes: Vec<Outcome>,
    (instances, recorded): (&HashSet<&str>, &[SetRecord]),
    listed: &[SnapshotFacts],
    cost_tags: &HashMap<String, Vec<(String, String)>>,
    stop_at: DateTime<Utc>,
) -> Result<Fallbacks, Error> {
    let mut done = Fallbacks::default();
    let by_instance: HashMap<&str, &SetRecord> = recorded
        .iter()
        .map(|s| (s.instance_id.as_str(), s))
        .collect();
    done.snapshots.extend(
        recorded
            .iter()
            .filter(|s| s.fallback)
            .flat_map(|s| s.snapshots.iter().map(|r| r.snapshot_id.clone())),
    );
    // An earlier look's fallback stands for its server's outcome.
    let mut outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| match by_instance.get(o.instance_id.as_str()) {
            Some(set) if set.fallback && o.snapshots.is_empty() => outcome_of(set),
            _ => o,
        })
        .collect();
    let targets = if app.config.crash_consistent_fallback {
        fallback_targets(&outcomes, instances)
    } else {
        Vec::new()
    };
    if targets.is_empty() {
        done.outcomes = outcomes;
        return Ok(done);
    }
    info!(run_id = %job.run_id, servers = targets.len(), "crash-consistent fallbacks: VSS left these servers without a set");
    let facts = instances::by_id(
        &app.aws.ec2,
        &app.config,
        targets.iter().map(|t| t.instance_id.as_str()),
    )
    .await?;
    let store = RunMarkerStore::new(&app.aws.catalog, &job.run_id);
    let mut pace = Pace::until(stop_at);
    for target in &targets {
        let began = Utc::now();
        if done.taken > 0 && !pace.fits(began) {
            done.left = true;
            break;
        }
        // A catalog error ends the look (its redelivery finds what a claimed call left); an
        // EC2 error is this server's alone.
        let result = take_one(app, job, target, &facts, &store, listed, cost_tags).await?;
        pace.took(began, Utc::now());
        let Some(slot) = outcomes
            .iter_mut()
            .find(|o| o.instance_id == target.instance_id)
        else {
            continue;
        };
        match result {
            Took::Set(set) => {
                done.taken += 1;
                done.snapshots
                    .extend(set.snapshots.iter().map(|s| s.snapshot_id.clone()));
                *slot = outcome_of(&set);
            }
            Took::Failed(why) => {
                let reason = slot.reason.take().unwrap_or_default();
                slot.reason = Some(format!("{reason}; no crash-consistent fallback: {why}"));
            }
            Took::Unsure => done.left = true,
        }
    }
    done.outcomes = outcomes;
    Ok(done)
}

/// What one server's fallback came to.
enum Took {
    Set(SetRecord),
    /// Why there is none (EC2's error, with its code).
    Failed(String),
    /// CreateSnapshots went unanswered: the run's next look finds what it left.
    Unsure,
}

/// One server's fallback: claimed, made (or found after a lost answer), recorded.
async fn take_one(
    app: &App,
    job: &RunJob,
    target: &FallbackTarget,
    facts: &HashMap<String, InstanceFacts>,
    store: &RunMarkerStore<'_>,
    listed: &[SnapshotFacts],
    cost_tags: &HashMap<String, Vec<(String, String)>>,
) -> Result<Took, Error> {
    let run_id = job.run_id.as_str();
    let instance_id = target.instance_id.as_str();
    let Some(instance) = facts.get(instance_id) else {
        return Ok(Took::Failed("the instance no longer exists".into()));
    };
    let first = store.claim_fallback(instance_id).await?;
    let mut made = if first {
        Vec::new()
    } else {
        left_by_lost_answer(listed, instance, job.started_at)
    };
    if made.is_empty() {
        let tags = fallback_tags(
            run_id,
            &app.config.managed_by,
            target,
            cost_tags
                .get(instance_id)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        );
        made = match snapshots::create_for_instance(
            &app.aws.ec2,
            instance_id,
            excludes_boot(instance, app.config.exclude_boot_volume),
            &fallback_description(run_id, &app.config.managed_by),
            &tags,
        )
        .await
        {
            Ok(made) => made,
            Err(CreateFailure::Refused(e)) => {
                warn!(run_id, instance_id, error = %e, code = e.aws_code().unwrap_or(""), "crash-consistent fallback failed");
                return Ok(Took::Failed(e.to_string()));
            }
            // The snapshots may exist: the next look finds them by their tags (once; a second
            // unanswered call is a failure).
            Err(CreateFailure::Unknown(e)) => {
                if store.mark_fallback_unsure(instance_id).await? {
                    warn!(run_id, instance_id, error = %e, "crash-consistent fallback unanswered: the run's next look looks for what it left");
                    return Ok(Took::Unsure);
                }
                warn!(run_id, instance_id, error = %e, "crash-consistent fallback unanswered again");
                return Ok(Took::Failed(format!("{e} (unanswered twice)")));
            }
        };
    } else {
        info!(run_id, instance_id, snapshots = made.len(), "crash-consistent fallback whose CreateSnapshots answer was lost: found by its tags and recorded");
    }
    if made.is_empty() {
        warn!(run_id, instance_id, "CreateSnapshots made no snapshot");
        return Ok(Took::Failed("CreateSnapshots made no snapshot".into()));
    }
    let (record, _) = fallback_set(
        run_id,
        target,
        instance,
        &made,
        (&app.config.region, Utc::now()),
    );
    let recorded = app.aws.catalog.record_set(&record).await?;
    info!(run_id, instance_id, name = %target.name, snapshots = recorded.snapshots.len(), reason = recorded.reason.as_deref().unwrap_or(""), "crash-consistent fallback taken");
    Ok(Took::Set(recorded))
}
