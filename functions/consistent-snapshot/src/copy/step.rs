//! Copies of a run's finished snapshot sets in other regions, for disaster recovery.
//!
//! `copy::plan::plan_copies` decides, from the run's recorded sets (confirmed against EC2), each instance's copy regions and
//! the copies already in each region, which copies to start and how far the others are. The
//! copy step runs under a lease of its own (`run::plan::claim`), so two deliveries of the run's
//! message never copy the same snapshot twice, and it checks each destination first.
//! `ResourceLimitExceeded` (too many copies in flight into a region) and throttling are
//! back-pressure: the step stops starting copies there and looks again later through the
//! queue. A copy whose CopySnapshot got no answer, or a 5xx, is checked in the destination by
//! the next pass; the others go on, up to `UNCONFIRMED_PER_PASS` such copies a region.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use tracing::{info, warn};

use crate::app::{dispatched_run, emit_metrics, enqueue, requeue, App};
use crate::aws::catalog::RunMarkerStore;
use crate::aws::instances;
use crate::aws::snapshots::{self, CopyRequest};
use crate::copy::plan::{
    copy_description, copy_regions_of, copy_tags, existing_copies, lost_answer_copies, plan_copies,
    Backlog, CopyPlan, CopySummary, ExistingCopy, RegionFault, BACKLOG_RUNS,
};
use crate::error::Error;
use crate::jobs::{CopyJob, Envelope, Job, RetentionJob};
use crate::model::catalog::{admit, CatalogIndex, CopyRecord};
use crate::model::pace::Pace;
use crate::model::snapshot::SnapshotFacts;
use crate::model::stop_time;
use crate::model::tags::TAG_INSTANCE_ID;
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
    let pass = copy_runs(app, &job, stop_time(Utc::now(), deadline)).await;
    // Given back at once: the next pass, by this message or a duplicate, need not wait.
    store.drop_copy_lease(epoch).await?;
    let (plan, started, limited) = pass?;
    let timed_out = Utc::now() > job.deadline;
    if (plan.is_final() && started == 0 && !limited) || timed_out {
        enqueue(
            app,
            &[Envelope::new(Job::Retention(RetentionJob {
                run_id: job.run_id.clone(),
                deleted_before: 0,
                retries: 0,
                stalled: 0,
            }))],
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

/// Earlier runs whose consistent sets are not all copied to the copy regions (taken in the
/// `BACKLOG_DAYS` before the run started, at most `BACKLOG_RUNS`), from one read of the
/// catalog's sets and copies.
/// A run whose own copy step is not over yet is left to it, so that no two steps copy the
/// same snapshot at once.
async fn backlog_runs(
    app: &App,
    run_id: &str,
    started_at: DateTime<Utc>,
) -> Result<Vec<String>, Error> {
    if app.config.copy_regions.is_empty() {
        return Ok(Vec::new());
    }
    let mut backlog = Backlog::since(started_at);
    app.aws
        .catalog
        .scan_sets(|set, copy| {
            if let Some(set) = set {
                backlog.add_set(&set);
            }
            if let Some(copy) = copy {
                backlog.add_copy(&copy);
            }
        })
        .await?;
    let mut runs = Vec::new();
    let keep = usize::try_from(app.config.copy_retain_count).unwrap_or(usize::MAX);
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

/// One pass over the run's own sets, then over the earlier runs it took on (each on its own:
/// one that cannot be read is named and left for the next pass, never stopping the others).
async fn copy_runs(
    app: &App,
    job: &CopyJob,
    stop_at: DateTime<Utc>,
) -> Result<(CopyPlan, usize, bool), Error> {
    let (mut plan, mut started, mut limited) = copy_pass(app, &job.run_id, stop_at).await?;
    for earlier in job.backlog.iter().take(BACKLOG_RUNS) {
        if Utc::now() >= stop_at {
            limited = true;
            break;
        }
        match copy_pass(app, earlier, stop_at).await {
            Ok((more, n, left)) => {
                plan.merge(more);
                started += n;
                limited |= left;
            }
            Err(err) => {
                warn!(run_id = %job.run_id, earlier = %earlier, error = %err, "an earlier run's copies could not be looked at in this pass: the next pass tries again");
                limited = true;
            }
        }
    }
    Ok((plan, started, limited))
}

/// Reads the run's recorded sets and copies, confirms them against EC2, starts the missing
/// copies until `stop_at`; answers the plan, how many copies were started and whether any
/// were left for the next pass (a region's copy limit met, throttling, or time up). Only
/// snapshots the catalog records are copied, and only copies it records count as existing: a
/// snapshot tagged like a set or like a copy is reported as foreign.
async fn copy_pass(
    app: &App,
    run_id: &str,
    stop_at: DateTime<Utc>,
) -> Result<(CopyPlan, usize, bool), Error> {
    let home = app.config.region.as_str();
    let view = app.aws.catalog.run_view(run_id).await?;
    let (sets, recorded_copies) = (view.sets, view.copies);
    let index = CatalogIndex::new(&sets, &recorded_copies);
    let ids: Vec<String> = sets
        .iter()
        .flat_map(|s| s.snapshots.iter().map(|r| r.snapshot_id.clone()))
        .collect();
    let subject = format!("run {run_id}");
    let listed = snapshots::of_run(&app.aws.ec2, run_id, None).await?;
    let mut snapshots: Vec<SnapshotFacts> = Vec::new();
    for facts in snapshots::with_ids(&app.aws.ec2, &listed, &ids, &subject).await? {
        match admit(facts, home, &index, &app.config.managed_by) {
            Ok(admitted) => snapshots.push(admitted),
            Err(foreign) => {
                warn!(run_id = %run_id, snapshot_id = %foreign.snapshot_id, why = %foreign.why, "foreign snapshot: not copied")
            }
        }
    }
    // Each set's verdict and size, carried on its copies' records.
    let verdicts: BTreeMap<(&str, &str), (bool, u32)> = sets
        .iter()
        .map(|s| {
            (
                (s.instance_id.as_str(), s.run_id.as_str()),
                (
                    s.is_consistent(),
                    u32::try_from(s.snapshots.len()).unwrap_or(u32::MAX),
                ),
            )
        })
        .collect();
    let facts = instances::by_id(
        &app.aws.ec2,
        &app.config,
        snapshots
            .iter()
            .filter_map(|s| s.tags.get(TAG_INSTANCE_ID).map(String::as_str)),
    )
    .await?;
    let sources: Vec<(SnapshotFacts, Result<Vec<String>, String>)> = snapshots
        .into_iter()
        .map(|s| {
            let tags = s
                .tags
                .get(TAG_INSTANCE_ID)
                .and_then(|id| facts.get(id))
                .map(|f| f.tags.clone())
                .unwrap_or_default();
            let regions = copy_regions_of(
                &tags,
                &app.config.copy_regions,
                &app.config.copy_regions_allowed,
                home,
            );
            (s, regions)
        })
        .collect();
    let regions: BTreeSet<String> = sources
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .flatten()
        .cloned()
        .collect();
    let home_sources: Vec<SnapshotFacts> = sources.iter().map(|(s, _)| s.clone()).collect();
    let mut existing = BTreeMap::new();
    let mut faults: BTreeMap<String, RegionFault> = BTreeMap::new();
    for region in &regions {
        match region_copies(
            app,
            run_id,
            region,
            &recorded_copies,
            &home_sources,
            &verdicts,
        )
        .await
        {
            Ok(copies) => {
                existing.insert(region.clone(), copies);
            }
            Err(err) => {
                let fault = region_fault(&err);
                warn!(run_id = %run_id, region = %region, code = %fault.code, permanent = fault.permanent, error = %err, "copy region not readable: no copy goes there in this pass");
                faults.insert(region.clone(), fault);
            }
        }
    }
    let plan = plan_copies(&sources, &existing).without_regions(&faults);
    let by_id: BTreeMap<&str, &SnapshotFacts> = sources
        .iter()
        .map(|(s, _)| (s.snapshot_id.as_str(), s))
        .collect();
    let mut started = 0;
    let mut limited: BTreeSet<String> = BTreeSet::new();
    let mut refused: BTreeMap<String, RegionFault> = BTreeMap::new();
    let mut started_ids: HashSet<(String, String)> = HashSet::new();
    let mut unconfirmed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut pace = Pace::until(stop_at);
    let mut out_of_time = false;
    // Copies are started a few at a time, concurrently: a region's free slots are refilled
    // in a fraction of the time one by one would take, well inside EC2's mutating rate. The
    // first copy into a region goes alone: a region that refuses for good is asked once.
    let mut queue: VecDeque<&(String, String)> = plan.to_start.iter().collect();
    let mut confirmed: HashSet<&str> = HashSet::new();
    while !queue.is_empty() {
        let began = Utc::now();
        if started > 0 && !pace.fits(began) {
            info!(run_id = %run_id, started, "copy pass: no time left in this invocation; the next pass goes on");
            out_of_time = true;
            break;
        }
        let mut chunk: Vec<(&String, &String, &SnapshotFacts)> = Vec::new();
        let mut deferred = Vec::new();
        let mut probing: HashSet<&str> = HashSet::new();
        while chunk.len() < COPIES_AT_ONCE {
            let Some(pair) = queue.pop_front() else {
                break;
            };
            let (region, source_id) = pair;
            if limited.contains(region) || refused.contains_key(region) {
                continue;
            }
            let Some(source) = by_id.get(source_id.as_str()) else {
                continue;
            };
            if !confirmed.contains(region.as_str()) && !probing.insert(region.as_str()) {
                deferred.push(pair);
                continue;
            }
            chunk.push((region, source_id, source));
        }
        for pair in deferred.into_iter().rev() {
            queue.push_front(pair);
        }
        if chunk.is_empty() {
            break;
        }
        let answers = join_all(chunk.iter().map(|(region, _, source)| {
            let request = CopyRequest {
                source_region: home,
                source_snapshot_id: &source.snapshot_id,
                description: copy_description(source, home),
                tags: copy_tags(source, home),
                kms_key_id: app.config.copy_kms_key_ids.get(*region).map(String::as_str),
            };
            async move { snapshots::copy(&app.aws.ec2_in(region), region, request).await }
        }))
        .await;
        for ((region, source_id, source), answer) in chunk.into_iter().zip(answers) {
            match answer {
                Ok(copy_id) => {
                    info!(run_id = %run_id, region = %region, source = %source_id, copy = %copy_id, "copy started");
                    started += 1;
                    confirmed.insert(region.as_str());
                    started_ids.insert((region.clone(), source_id.clone()));
                    let instance_id = source
                        .tags
                        .get(TAG_INSTANCE_ID)
                        .cloned()
                        .unwrap_or_default();
                    let (consistent, set_size) = verdicts
                        .get(&(instance_id.as_str(), run_id))
                        .copied()
                        .unwrap_or((false, 0));
                    app.aws
                        .catalog
                        .record_copy(&CopyRecord {
                            run_id: run_id.to_string(),
                            instance_id,
                            region: region.clone(),
                            source_snapshot_id: source.snapshot_id.clone(),
                            snapshot_id: copy_id,
                            started_at: Utc::now(),
                            consistent,
                            imported: false,
                            set_size,
                        })
                        .await?;
                }
                Err(err) if err.aws_code() == Some("ResourceLimitExceeded") => {
                    info!(run_id = %run_id, region = %region, "copy limit of the region reached: the rest waits for the next pass");
                    limited.insert(region.clone());
                }
                // Refused for good (a permission, a key, the region): no copy goes there, this
                // pass or the next; the region is reported failed with the code.
                Err(err) if err.is_permanent() => {
                    warn!(run_id = %run_id, region = %region, source = %source_id, code = err.aws_code().unwrap_or(""), error = %err, "copies into the region refused: it is reported failed");
                    refused.insert(region.clone(), region_fault(&err));
                }
                // Throttled: the region's request budget is spent; the next pass goes on there.
                Err(err) if err.is_throttling() => {
                    warn!(run_id = %run_id, region = %region, source = %source_id, error = %err, "copies into the region throttled: the rest waits for the next pass");
                    limited.insert(region.clone());
                }
                // No answer, or a 5xx: whether this copy exists, the next pass sees; the others
                // go on, unless the region keeps failing.
                Err(err) => {
                    let count = unconfirmed.entry(region.as_str()).or_default();
                    *count += 1;
                    warn!(run_id = %run_id, region = %region, source = %source_id, unconfirmed = *count, error = %err, "copy not confirmed: the next pass checks the destination");
                    if *count >= UNCONFIRMED_PER_PASS {
                        limited.insert(region.clone());
                    }
                }
            }
        }
        pace.took(began, Utc::now());
    }
    // What a region refused in this pass is failed there; what was started is on its way.
    let mut plan = plan;
    if !refused.is_empty() {
        plan.to_start
            .retain(|pair| !(refused.contains_key(&pair.0) && started_ids.contains(pair)));
        plan = plan.without_regions(&refused);
    }
    Ok((plan, started, !limited.is_empty() || out_of_time))
}

/// How a region's fault reads: its AWS code, and whether it is for good.
fn region_fault(err: &Error) -> RegionFault {
    RegionFault {
        code: err.aws_code().unwrap_or("Unknown").to_string(),
        permanent: err.is_permanent(),
    }
}

/// The run's copies in one destination region: those the catalog records that EC2 still
/// reports, read by the run's tag (by id those the tag does not find), and those whose
/// CopySnapshot answer was lost, recorded now rather than made twice.
async fn region_copies(
    app: &App,
    run_id: &str,
    region: &str,
    recorded_copies: &[CopyRecord],
    home_sources: &[SnapshotFacts],
    verdicts: &BTreeMap<(&str, &str), (bool, u32)>,
) -> Result<Vec<ExistingCopy>, Error> {
    let home = app.config.region.as_str();
    let subject = format!("copies of run {run_id} in {region}");
    let recorded: Vec<&CopyRecord> = recorded_copies
        .iter()
        .filter(|c| c.region == region)
        .collect();
    let ids: Vec<String> = recorded.iter().map(|c| c.snapshot_id.clone()).collect();
    let ec2 = app.aws.ec2_in(region);
    let recorded_ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let tagged = snapshots::tagged_copies(&ec2, run_id, &subject).await?;
    let listed: Vec<SnapshotFacts> = tagged.iter().map(|(s, _)| s.clone()).collect();
    let mut found = snapshots::with_ids(&ec2, &listed, &ids, &subject).await?;
    let unrecorded: Vec<(SnapshotFacts, String)> = tagged
        .into_iter()
        .filter(|(s, _)| !recorded_ids.contains(s.snapshot_id.as_str()))
        .collect();
    let mut adopted_records = Vec::new();
    for (source_id, copy) in lost_answer_copies(home_sources, &unrecorded, home) {
        let Some(source) = home_sources.iter().find(|s| s.snapshot_id == source_id) else {
            continue;
        };
        let instance_id = source
            .tags
            .get(TAG_INSTANCE_ID)
            .cloned()
            .unwrap_or_default();
        info!(run_id = %run_id, region = %region, source = %source_id, copy = %copy.snapshot_id, "a copy whose CopySnapshot answer was lost: recorded");
        let (consistent, set_size) = verdicts
            .get(&(instance_id.as_str(), run_id))
            .copied()
            .unwrap_or((false, 0));
        let record = CopyRecord {
            consistent,
            set_size,
            run_id: run_id.to_string(),
            instance_id,
            region: region.to_string(),
            source_snapshot_id: source_id,
            snapshot_id: copy.snapshot_id.clone(),
            started_at: Utc::now(),
            imported: false,
        };
        app.aws.catalog.record_copy(&record).await?;
        found.push(copy.clone());
        adopted_records.push(record);
    }
    let mut recorded = recorded;
    recorded.extend(adopted_records.iter());
    Ok(existing_copies(&recorded, &found))
}
