//! Copies of a run's finished snapshot sets in other regions, for disaster recovery.
//!
//! `copy::plan::plan_copies` decides, from the run's recorded sets, where each instance's sets
//! go (decided once and recorded, `CopyTargets`) and the copies already in each region, which
//! copies to start and how far the others are. The copy step runs under a lease of its own
//! (`run::plan::claim`), so two deliveries of the run's message never copy the same snapshot
//! twice. A pass reads the run from the catalog and describes only what is still on its way:
//! the copies not yet seen final (their final state is then recorded) and, right before their
//! copies start, the sources it copies. When every copy looks final, a closing look describes
//! them all once before the step ends. A pass that may leave a copy unrecorded (stopped
//! half-way, a CopySnapshot with no answer or a 5xx) leaves the `copy-unsure` marker: the next
//! looks for such copies in the destinations by the run's tag, and records them rather than
//! making them twice. `ResourceLimitExceeded` (too many copies in flight into a region) and
//! throttling are back-pressure: the step stops starting copies there and looks again later
//! through the queue; up to `UNCONFIRMED_PER_PASS` unconfirmed copies a region, the others go
//! on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tracing::{info, warn};

use crate::app::{dispatched_run, emit_metrics, enqueue, requeue, App};
use crate::aws::catalog::{CopyView, RunMarkerStore, Scanned};
use crate::aws::instances;
use crate::aws::snapshots::{self, CopyRequest};
use crate::copy::plan::{
    copy_description, copy_record, copy_regions_of, copy_tags, existing_copies, lost_answer_copies,
    newly_final, plan_copies, seen_copies, sources_of, Backlog, Carried, CopyPlan, CopySummary,
    ExistingCopy, RegionFault, Source, BACKLOG_RUNS,
};
use crate::error::Error;
use crate::jobs::{CopyJob, Envelope, Job, RetentionJob};
use crate::model::catalog::{admit, CatalogIndex, CopyRecord, CopyTargets};
use crate::model::pace::Pace;
use crate::model::snapshot::SnapshotFacts;
use crate::model::state::SnapshotState;
use crate::model::stop_time;
use crate::model::tags::{TAG_DEVICE, TAG_INSTANCE_ID, TAG_RUN_ID, TAG_SOURCE_SNAPSHOT};
use crate::run::plan::claim::{decide_copy, CopyClaim};

/// Unconfirmed copies (no answer, a 5xx) after which a pass starts no more copies in a region.
const UNCONFIRMED_PER_PASS: usize = 3;
/// Copies a pass starts at once (each a CopySnapshot, then its record in the catalog).
const COPIES_AT_ONCE: usize = 4;

/// One pass of the copy step; see the module documentation.
///
/// Each pass queues the next one before it works, so a pass stopped half-way still has a
/// successor; and only one message per pass goes on (`claim_copy_pass`), so duplicate
/// deliveries do not multiply the step's messages.
pub async fn copy_job(
    app: &App,
    mut job: CopyJob,
    (deadline, lease_until): (DateTime<Utc>, DateTime<Utc>),
    message_id: &str,
) -> Result<(), Error> {
    let run = dispatched_run(app, &job.run_id, "copy").await?;
    let store = RunMarkerStore::new(&app.aws.catalog, &job.run_id);
    let claim = decide_copy(&store.read().await?, Utc::now());
    if claim == CopyClaim::Final {
        info!(run_id = %job.run_id, "copies already final (a duplicate delivery)");
        return Ok(());
    }
    if !store.claim_copy_pass(job.attempt, message_id).await? {
        info!(run_id = %job.run_id, pass = job.attempt, "copy pass already taken by another message");
        return Ok(());
    }
    if job.attempt == 0 {
        // Found once, by the first pass; its successors carry it. Not found, the run's own
        // copies go on without it.
        job.backlog = match backlog_runs(app, &job.run_id, run.started_at).await {
            Ok(runs) => runs,
            Err(err) => {
                warn!(run_id = %job.run_id, error = %err, "earlier runs not looked at for copies left to make: this step copies its own run only");
                Vec::new()
            }
        };
    }
    // Past its deadline the step has no successor: the pass that runs then ends it (copies
    // not final are timed out), and one that keeps failing ends in the dead-letter queue.
    // No chain outlives its deadline, whatever fails.
    if Utc::now() <= job.deadline {
        requeue(app, Job::Copy(job.clone().next())).await?;
    }
    let CopyClaim::Take { epoch } = claim else {
        // Another pass is still working; the successor looks again.
        return Ok(());
    };
    if !store.take_copy_lease(epoch, lease_until).await? {
        return Ok(());
    }
    let stop_at = stop_time(Utc::now(), deadline);
    let pass = async {
        // Read under the lease: did the pass before end without saying that every copy it
        // started is recorded? Then this one looks for such copies first. And should this
        // one stop half-way, the next looks for its own.
        let lost_answers = store.read().await?.copy_unsure;
        store.mark_copy_unsure().await?;
        copy_runs(app, &job, stop_at, lost_answers).await
    }
    .await;
    // Cleared under the lease, so that it never clears the next pass's own.
    if pass.as_ref().is_ok_and(|p| !p.unsure) {
        if let Err(err) = store.clear_copy_unsure().await {
            warn!(run_id = %job.run_id, error = %err, "copy pass not marked clean: the next pass looks for unrecorded copies");
        }
    }
    // Given back at once: the next pass, by this message or a duplicate, need not wait.
    store.drop_copy_lease(epoch).await?;
    let pass = pass?;
    let (plan, started, limited) = (pass.plan, pass.started, pass.limited);
    let timed_out = Utc::now() > job.deadline;
    if (plan.is_final() && started == 0 && !limited) || timed_out {
        enqueue(
            app,
            &[Envelope::new(Job::Retention(RetentionJob::first(
                &job.run_id,
            )))],
        )
        .await?;
        if store.mark_copied().await? {
            report_copies(app, &job, &plan, started, timed_out);
        }
        return Ok(());
    }
    info!(run_id = %job.run_id, started, limited, pending = plan.pending.values().sum::<usize>(), "copies in progress");
    // Copies left that a pass could start as soon as a slot frees: the next pass comes soon
    // (whichever of it and the successor queued above comes first takes the pass).
    let now = Utc::now();
    let (initial, max) = (app.config.poll_initial_seconds, app.config.poll_max_seconds);
    let soon = Job::Copy(job.clone().next_soon());
    let later = Job::Copy(job.clone().next());
    if limited
        && now <= job.deadline
        && soon.delay_seconds(now, initial, max) < later.delay_seconds(now, initial, max)
    {
        requeue(app, soon).await?;
    }
    Ok(())
}

/// The copy step's one summary: a log line and its metrics.
fn report_copies(app: &App, job: &CopyJob, plan: &CopyPlan, started: usize, timed_out: bool) {
    let summary = CopySummary {
        run_id: job.run_id.clone(),
        started_now: started,
        completed: plan.completed.clone(),
        pending: plan.pending.clone(),
        failed: plan.failed.clone(),
        invalid: plan.invalid.clone(),
        regions_failed: plan.regions_failed.clone(),
        not_started: if timed_out { plan.to_start.len() } else { 0 },
        timed_out,
        backlog: job.backlog.clone(),
    };
    let text = serde_json::to_string(&summary).unwrap_or_default();
    let done: usize = plan.completed.values().sum();
    let pending: usize = plan.pending.values().sum();
    emit_metrics(
        app,
        &[
            ("SnapshotsCopied", done),
            ("CopiesFailed", plan.failed_count() + plan.invalid.len()),
            // Not final at the deadline: pending, or never started.
            (
                "CopiesTimedOut",
                if timed_out {
                    pending + summary.not_started
                } else {
                    0
                },
            ),
            ("CopiesNotStarted", summary.not_started),
        ],
        &[("RunId", &job.run_id), ("Event", "copies")],
    );
    let failed = plan.failed_count();
    if failed == 0 && plan.invalid.is_empty() && !timed_out {
        info!(run_id = %job.run_id, copies = %text, "copies: {done} completed");
    } else {
        let regions: Vec<String> = plan
            .regions_failed
            .iter()
            .map(|(region, f)| format!("{region} ({})", f.code))
            .collect();
        warn!(run_id = %job.run_id, copies = %text, "copies need attention: {done} completed, {failed} failed (regions refused: {}), {} not readable, {} not started, timed out: {timed_out}", if regions.is_empty() { "none".to_string() } else { regions.join(", ") }, plan.invalid.len(), summary.not_started);
    }
}

/// Earlier runs whose consistent sets are not all copied to their copy regions (taken in the
/// `BACKLOG_DAYS` before the run started, at most `BACKLOG_RUNS`), from one read of the
/// catalog's sets, copies and each run's decided copy regions.
/// A run whose own copy step is not over yet is left to it, so that no two steps copy the
/// same snapshot at once.
async fn backlog_runs(
    app: &App,
    run_id: &str,
    started_at: DateTime<Utc>,
) -> Result<Vec<String>, Error> {
    if app.config.copy_regions.is_empty() && app.config.copy_regions_allowed.is_empty() {
        return Ok(Vec::new());
    }
    let mut backlog = Backlog::since(started_at);
    app.aws
        .catalog
        .scan_sets_and_targets(|scanned| match scanned {
            Scanned::Set(set) => backlog.add_set(&set),
            Scanned::Copy(copy) => backlog.add_copy(&copy),
            Scanned::Targets(run, targets) => backlog.add_targets(&run, &targets),
        })
        .await?;
    let mut runs = Vec::new();
    let keep = usize::try_from(app.config.copy_retain.daily).unwrap_or(usize::MAX);
    for earlier in backlog.runs(run_id, &app.config.copy_regions, keep) {
        let markers = RunMarkerStore::new(&app.aws.catalog, &earlier)
            .read()
            .await?;
        if markers.copied {
            runs.push(earlier);
        }
    }
    if !runs.is_empty() {
        info!(run_id, backlog = ?runs, "earlier runs have sets not copied yet: this copy step copies them too");
    }
    Ok(runs)
}

/// How a pass looks at the copies already made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    /// Take a copy whose final state the catalog records as it was seen (the step's passes
    /// while copies remain); otherwise describe every recorded copy (the closing look, so
    /// that a copy deleted or failed since is made again rather than counted).
    trust_seen: bool,
    /// Also list the region's copies of the run by tag, for copies whose CopySnapshot answer
    /// was lost: after a pass that did not say every copy it started is recorded.
    lost_answers: bool,
}

/// What a pass did: the plan as it stands, the copies it started, whether copies were left
/// for the next pass (a region's limit, throttling, time up), and whether a copy it started
/// may be unrecorded (no answer, a 5xx, or a region it could not look at for them).
#[derive(Debug, Default)]
struct Pass {
    plan: CopyPlan,
    started: usize,
    limited: bool,
    unsure: bool,
}

impl Pass {
    /// Every copy final, nothing started, nothing left.
    fn is_done(&self) -> bool {
        self.plan.is_final() && self.started == 0 && !self.limited
    }

    fn merge(&mut self, other: Pass) {
        self.plan.merge(other.plan);
        self.started += other.started;
        self.limited |= other.limited;
        self.unsure |= other.unsure;
    }
}

/// The pass over the run and its backlog, as its copies stand; when they look final, a
/// closing look describes every copy once before the step ends on them.
async fn copy_runs(
    app: &App,
    job: &CopyJob,
    stop_at: DateTime<Utc>,
    lost_answers: bool,
) -> Result<Pass, Error> {
    let light = Look {
        trust_seen: true,
        lost_answers,
    };
    let pass = runs_pass(app, job, stop_at, light).await?;
    if !pass.is_done() {
        return Ok(pass);
    }
    let closing = Look {
        trust_seen: false,
        lost_answers: false,
    };
    let mut last = runs_pass(app, job, stop_at, closing).await?;
    last.unsure |= pass.unsure;
    Ok(last)
}

/// One pass over the run's own sets, then over the earlier runs it took on (each on its own:
/// one that cannot be read is named and left for the next pass, never stopping the others).
async fn runs_pass(
    app: &App,
    job: &CopyJob,
    stop_at: DateTime<Utc>,
    look: Look,
) -> Result<Pass, Error> {
    let mut pass = copy_pass(app, &job.run_id, stop_at, look).await?;
    for earlier in job.backlog.iter().take(BACKLOG_RUNS) {
        if Utc::now() >= stop_at {
            pass.limited = true;
            break;
        }
        match copy_pass(app, earlier, stop_at, look).await {
            Ok(more) => pass.merge(more),
            Err(err) => {
                warn!(run_id = %job.run_id, earlier = %earlier, error = %err, "an earlier run's copies could not be looked at in this pass: the next pass tries again");
                pass.limited = true;
                // It may have failed after starting a copy it could not record.
                pass.unsure = true;
            }
        }
    }
    Ok(pass)
}

/// Snapshots a pass describes at once, ahead of the copies it is about to start: as many as
/// one DescribeSnapshots call asks for by id.
const LOOK_AHEAD: usize = snapshots::FILTER_VALUES;

/// Reads the run's recorded sets and copies from the catalog, describes the copies not yet
/// seen final, starts the missing copies until `stop_at` (each source described right before,
/// and copied only if the catalog vouches for it and it is completed); answers what the pass
/// did. Only snapshots the catalog records are copied, and only copies it records count as
/// existing: a snapshot tagged like a set or like a copy is neither.
async fn copy_pass(
    app: &App,
    run_id: &str,
    stop_at: DateTime<Utc>,
    look: Look,
) -> Result<Pass, Error> {
    let home = app.config.region.as_str();
    let view = app.aws.catalog.copy_view(run_id).await?;
    let index = CatalogIndex::new(&view.sets, &view.copies);
    // Each set's verdict and size, carried on its copies' records.
    let verdicts: BTreeMap<(&str, &str), Carried> = view
        .sets
        .iter()
        .map(|s| ((s.instance_id.as_str(), s.run_id.as_str()), Carried::of(s)))
        .collect();
    let targets = copy_targets(app, run_id, &view).await?;
    let sources: Vec<(Source, Result<Vec<String>, String>)> = sources_of(&view.sets)
        .into_iter()
        .map(|s| {
            let regions = targets
                .get(&s.instance_id)
                .cloned()
                .unwrap_or_else(|| Ok(app.config.copy_regions.clone()));
            (s, regions)
        })
        .collect();
    let regions: BTreeSet<String> = sources
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .flatten()
        .cloned()
        .collect();
    let set_snapshots: HashSet<&str> = sources
        .iter()
        .map(|(s, _)| s.snapshot_id.as_str())
        .collect();
    let mut existing = BTreeMap::new();
    let mut faults: BTreeMap<String, RegionFault> = BTreeMap::new();
    let mut seen_now = Vec::new();
    let mut unsure = false;
    for region in &regions {
        let recorded: Vec<&CopyRecord> =
            view.copies.iter().filter(|c| c.region == *region).collect();
        match region_copies(
            app,
            run_id,
            region,
            recorded,
            &set_snapshots,
            &verdicts,
            look,
        )
        .await
        {
            Ok((copies, seen)) => {
                existing.insert(region.clone(), copies);
                seen_now.extend(seen);
            }
            Err(err) => {
                let fault = RegionFault::of(&err);
                warn!(run_id = %run_id, region = %region, code = %fault.code, permanent = fault.permanent, error = %err, "copy region not readable: no copy goes there in this pass");
                faults.insert(region.clone(), fault);
                unsure |= look.lost_answers;
            }
        }
    }
    if !seen_now.is_empty() {
        // Only spares later passes a describe: not written, they describe these again.
        if let Err(err) = app.aws.catalog.record_copy_states(&seen_now).await {
            warn!(run_id = %run_id, copies = seen_now.len(), error = %err, "final states of copies not recorded: the next pass describes them again");
        }
    }
    let mut plan = plan_copies(&sources, &existing).without_regions(&faults);
    let mut started = 0;
    let mut limited: BTreeSet<String> = BTreeSet::new();
    let mut refused: BTreeMap<String, RegionFault> = BTreeMap::new();
    // Pairs this pass is done with: started, or not to copy (a source pending, failed, gone,
    // or one the catalog does not vouch for as EC2 reports it).
    let mut dealt: HashSet<(String, String)> = HashSet::new();
    let mut unconfirmed: BTreeMap<String, usize> = BTreeMap::new();
    let mut pace = Pace::until(stop_at);
    let mut out_of_time = false;
    let mut facts: HashMap<String, Option<SnapshotFacts>> = HashMap::new();
    // Copies are started a few at a time, concurrently: a region's free slots are refilled
    // in a fraction of the time one by one would take, well inside EC2's mutating rate. The
    // first copy into a region goes alone: a region that refuses for good is asked once.
    let mut queue: VecDeque<(String, String)> = plan.to_start.iter().cloned().collect();
    let mut confirmed: HashSet<String> = HashSet::new();
    while !queue.is_empty() {
        let began = Utc::now();
        if started > 0 && !pace.fits(began) {
            info!(run_id = %run_id, started, "copy pass: no time left in this invocation; the next pass goes on");
            out_of_time = true;
            break;
        }
        let mut chunk: Vec<(String, SnapshotFacts)> = Vec::new();
        let mut deferred = Vec::new();
        let mut probing: HashSet<String> = HashSet::new();
        while chunk.len() < COPIES_AT_ONCE {
            let Some(pair) = queue.pop_front() else {
                break;
            };
            let region = pair.0.clone();
            if limited.contains(&region) || refused.contains_key(&region) {
                continue;
            }
            if !confirmed.contains(&region) && probing.contains(&region) {
                deferred.push(pair);
                continue;
            }
            if !facts.contains_key(&pair.1) {
                let ahead: Vec<String> = std::iter::once(&pair)
                    .chain(queue.iter())
                    .map(|(_, id)| id)
                    .filter(|id| !facts.contains_key(*id))
                    .take(LOOK_AHEAD)
                    .cloned()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                described(app, run_id, &index, &ahead, &mut facts).await?;
            }
            match facts.get(&pair.1).cloned().flatten() {
                Some(source) if source.state == SnapshotState::Completed => {
                    probing.insert(region.clone());
                    chunk.push((region, source));
                }
                // Copied once it is completed, by a later pass.
                Some(source) if source.state == SnapshotState::Pending => {
                    *plan.pending.entry(region).or_default() += 1;
                    dealt.insert(pair);
                }
                _ => {
                    dealt.insert(pair);
                }
            }
        }
        for pair in deferred.into_iter().rev() {
            queue.push_front(pair);
        }
        if chunk.is_empty() {
            break;
        }
        let answers = join_all(chunk.iter().map(|(region, source)| {
            let request = CopyRequest {
                source_region: home,
                source_snapshot_id: &source.snapshot_id,
                description: copy_description(source, home),
                tags: copy_tags(source, home),
                kms_key_id: app.config.copy_kms_key_ids.get(region).map(String::as_str),
            };
            async move { snapshots::copy(&app.aws.ec2_in(region), region, request).await }
        }))
        .await;
        for ((region, source), answer) in chunk.into_iter().zip(answers) {
            let source_id = source.snapshot_id.clone();
            match answer {
                Ok(copy_id) => {
                    info!(run_id = %run_id, region = %region, source = %source_id, copy = %copy_id, "copy started");
                    started += 1;
                    confirmed.insert(region.clone());
                    *plan.pending.entry(region.clone()).or_default() += 1;
                    dealt.insert((region.clone(), source_id.clone()));
                    let instance_id = source
                        .tags
                        .get(TAG_INSTANCE_ID)
                        .cloned()
                        .unwrap_or_default();
                    let carried = verdicts
                        .get(&(instance_id.as_str(), run_id))
                        .copied()
                        .unwrap_or_default();
                    app.aws
                        .catalog
                        .record_copy(&copy_record(
                            (run_id, &instance_id),
                            (&region, &source_id, &copy_id),
                            (carried, source.tags.get(TAG_DEVICE).map(String::as_str)),
                            Utc::now(),
                        ))
                        .await?;
                }
                Err(err) if err.aws_code() == Some("ResourceLimitExceeded") => {
                    info!(run_id = %run_id, region = %region, "copy limit of the region reached: the rest waits for the next pass");
                    limited.insert(region);
                }
                // Refused for good (a permission, a key, the region): no copy goes there, this
                // pass or the next; the region is reported failed with the code.
                Err(err) if err.is_permanent() => {
                    warn!(run_id = %run_id, region = %region, source = %source_id, code = err.aws_code().unwrap_or(""), error = %err, "copies into the region refused: it is reported failed");
                    refused.insert(region, RegionFault::of(&err));
                }
                // Throttled: the region's request budget is spent; the next pass goes on there.
                Err(err) if err.is_throttling() => {
                    warn!(run_id = %run_id, region = %region, source = %source_id, error = %err, "copies into the region throttled: the rest waits for the next pass");
                    limited.insert(region);
                }
                // No answer, or a 5xx: whether this copy exists, the next pass sees (it looks
                // for copies by tag); the others go on, unless the region keeps failing.
                Err(err) => {
                    unsure = true;
                    let count = unconfirmed.entry(region.clone()).or_default();
                    *count += 1;
                    warn!(run_id = %run_id, region = %region, source = %source_id, unconfirmed = *count, error = %err, "copy not confirmed: the next pass checks the destination");
                    if *count >= UNCONFIRMED_PER_PASS {
                        limited.insert(region);
                    }
                }
            }
        }
        pace.took(began, Utc::now());
    }
    // What was started is on its way (pending); what a region refused in this pass is failed
    // there.
    plan.to_start.retain(|pair| !dealt.contains(pair));
    if !refused.is_empty() {
        plan = plan.without_regions(&refused);
    }
    Ok(Pass {
        plan,
        started,
        limited: !limited.is_empty() || out_of_time,
        unsure,
    })
}

/// Describes these snapshots of the run's sets in the home region, into `facts`: each as EC2
/// reports it if the catalog vouches for it as such (`admit`), else `None` (gone, or
/// foreign: named in the log).
async fn described(
    app: &App,
    run_id: &str,
    index: &CatalogIndex,
    ids: &[String],
    facts: &mut HashMap<String, Option<SnapshotFacts>>,
) -> Result<(), Error> {
    let home = app.config.region.as_str();
    let found = snapshots::by_ids(&app.aws.ec2, ids, &format!("run {run_id}")).await?;
    for id in ids {
        facts.insert(id.clone(), None);
    }
    for f in found {
        let id = f.snapshot_id.clone();
        match admit(f, home, index, &app.config.managed_by) {
            Ok(admitted) => {
                facts.insert(id, Some(admitted));
            }
            Err(foreign) => {
                warn!(run_id = %run_id, snapshot_id = %foreign.snapshot_id, why = %foreign.why, "foreign snapshot: not copied")
            }
        }
    }
    Ok(())
}

/// Where each instance's sets of the run go: as an earlier pass decided and recorded, else
/// decided now from the instance's override tag (or the configured regions) and recorded.
async fn copy_targets(
    app: &App,
    run_id: &str,
    view: &CopyView,
) -> Result<HashMap<String, Result<Vec<String>, String>>, Error> {
    let mut targets: HashMap<String, Result<Vec<String>, String>> = view
        .targets
        .iter()
        .map(|t| (t.instance_id.clone(), t.regions()))
        .collect();
    let missing: BTreeSet<&str> = view
        .sets
        .iter()
        .map(|s| s.instance_id.as_str())
        .filter(|i| !targets.contains_key(*i))
        .collect();
    if missing.is_empty() {
        return Ok(targets);
    }
    // The run's servers were tagged when it started: read as the tagged fleet when many.
    let facts = instances::by_id_from_fleet(&app.aws.ec2, &app.config, &missing).await?;
    let decided: Vec<CopyTargets> = missing
        .iter()
        .map(|instance_id| {
            let tags = facts
                .get(*instance_id)
                .map(|f| f.tags.clone())
                .unwrap_or_default();
            let regions = copy_regions_of(
                &tags,
                &app.config.copy_regions,
                &app.config.copy_regions_allowed,
                &app.config.region,
            );
            CopyTargets::new(instance_id, regions)
        })
        .collect();
    if let Err(err) = app.aws.catalog.record_copy_targets(run_id, &decided).await {
        warn!(run_id = %run_id, instances = decided.len(), error = %err, "copy regions not recorded: the next pass decides them again");
    }
    targets.extend(decided.into_iter().map(|t| {
        let regions = t.regions();
        (t.instance_id, regions)
    }));
    Ok(targets)
}

/// The run's copies in one destination region, from the copies the catalog records there:
/// those seen final as they were seen (`Look::trust_seen`), the others as EC2 reports them by
/// id; and, after a pass that may have left some unrecorded (`Look::lost_answers`), those
/// whose CopySnapshot answer was lost, found by the run's tag and recorded now rather than
/// made twice. Answers the copies, and the records of those EC2 now reports final.
async fn region_copies(
    app: &App,
    run_id: &str,
    region: &str,
    recorded: Vec<&CopyRecord>,
    set_snapshots: &HashSet<&str>,
    verdicts: &BTreeMap<(&str, &str), Carried>,
    look: Look,
) -> Result<(Vec<ExistingCopy>, Vec<CopyRecord>), Error> {
    let home = app.config.region.as_str();
    let subject = format!("copies of run {run_id} in {region}");
    let (seen, mut unseen): (Vec<&CopyRecord>, Vec<&CopyRecord>) = recorded
        .iter()
        .partition(|c| look.trust_seen && c.seen_final.is_some());
    let ids: Vec<String> = unseen.iter().map(|c| c.snapshot_id.clone()).collect();
    let ec2 = app.aws.ec2_in(region);
    if !look.lost_answers {
        // Many copies not yet seen final (a large night's): listed by the run's tag, 1,000 a
        // page, rather than asked for by id, 200 a call.
        let found =
            snapshots::by_ids_or_tag(&ec2, &ids, (TAG_RUN_ID, run_id), recorded.len(), &subject)
                .await?;
        let mut existing = seen_copies(&seen);
        existing.extend(existing_copies(&unseen, &found));
        return Ok((existing, newly_final(&unseen, &found)));
    }
    let recorded_ids: HashSet<&str> = recorded.iter().map(|c| c.snapshot_id.as_str()).collect();
    let tagged = snapshots::tagged_copies(&ec2, run_id, &subject).await?;
    let listed: Vec<SnapshotFacts> = tagged.iter().map(|(s, _)| s.clone()).collect();
    let mut found = snapshots::with_ids(&ec2, &listed, &ids, &subject).await?;
    let unrecorded: Vec<(SnapshotFacts, String)> = tagged
        .into_iter()
        .filter(|(s, _)| !recorded_ids.contains(s.snapshot_id.as_str()))
        .collect();
    // The sets' snapshots these claim to be copies of, as EC2 reports them at home.
    let claimed: Vec<String> = unrecorded
        .iter()
        .filter_map(|(s, _)| s.tags.get(TAG_SOURCE_SNAPSHOT))
        .filter(|id| set_snapshots.contains(id.as_str()))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let home_sources = snapshots::by_ids(&app.aws.ec2, &claimed, &format!("run {run_id}")).await?;
    let mut adopted = Vec::new();
    for (source_id, copy) in lost_answer_copies(&home_sources, &unrecorded, home) {
        let Some(source) = home_sources.iter().find(|s| s.snapshot_id == source_id) else {
            continue;
        };
        let instance_id = source
            .tags
            .get(TAG_INSTANCE_ID)
            .cloned()
            .unwrap_or_default();
        info!(run_id = %run_id, region = %region, source = %source_id, copy = %copy.snapshot_id, "a copy whose CopySnapshot answer was lost: recorded");
        let carried = verdicts
            .get(&(instance_id.as_str(), run_id))
            .copied()
            .unwrap_or_default();
        let record = copy_record(
            (run_id, &instance_id),
            (region, &source_id, &copy.snapshot_id),
            (carried, source.tags.get(TAG_DEVICE).map(String::as_str)),
            Utc::now(),
        );
        app.aws.catalog.record_copy(&record).await?;
        found.push(copy.clone());
        adopted.push(record);
    }
    unseen.extend(adopted.iter());
    let mut existing = seen_copies(&seen);
    existing.extend(existing_copies(&unseen, &found));
    Ok((existing, newly_final(&unseen, &found)))
}
