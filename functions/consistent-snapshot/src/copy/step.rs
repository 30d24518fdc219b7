//! Copies of a run's finished snapshot sets in other regions, for disaster recovery.
//!
//! `copy::plan::plan_copies` decides, from the run's recorded sets (confirmed against EC2), each instance's copy regions and
//! the copies already in each region, which copies to start and how far the others are. The
//! copy step runs under a lease of its own (`run::plan::claim`), so two deliveries of the run's
//! message never copy the same snapshot twice, and it checks each destination first.
//! `ResourceLimitExceeded` (too many copies in flight into a region) is back-pressure: the
//! step stops starting copies there and looks again later through the queue.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::app::{dispatched_run, emit_metrics, enqueue, requeue, App};
use crate::aws::catalog::RunMarkerStore;
use crate::aws::instances;
use crate::aws::snapshots::{self, CopyRequest};
use crate::copy::plan::{
    copy_description, copy_regions_of, copy_tags, existing_copies, lost_answer_copies, plan_copies,
    CopyPlan, CopySummary, ExistingCopy, RegionFault,
};
use crate::error::Error;
use crate::jobs::{CopyJob, Envelope, Job, RetentionJob};
use crate::model::catalog::{admit, CatalogIndex, CopyRecord};
use crate::model::snapshot::SnapshotFacts;
use crate::model::tags::TAG_INSTANCE_ID;
use crate::run::plan::claim::{decide_copy, CopyClaim};

/// One pass of the copy step; see the module documentation.
///
/// Each pass queues the next one before it works, so a pass stopped half-way still has a
/// successor; and only one message per pass goes on (`claim_copy_pass`), so duplicate
/// deliveries do not multiply the step's messages.
pub async fn copy_job(
    app: &App,
    job: CopyJob,
    lease_until: DateTime<Utc>,
    message_id: &str,
) -> Result<(), Error> {
    dispatched_run(app, &job.run_id, "copy").await?;
    let store = RunMarkerStore::new(&app.aws.catalog, &job.run_id);
    let claim = decide_copy(&store.read().await?, Utc::now());
    if claim == CopyClaim::Final {
        info!(run_id = %job.run_id, "copies already final (a duplicate delivery)");
        return Ok(());
    }
    let token = if message_id.is_empty() {
        store.token.clone()
    } else {
        message_id.to_string()
    };
    if !store.claim_copy_pass(job.attempt, &token).await? {
        info!(run_id = %job.run_id, pass = job.attempt, "copy pass already taken by another message");
        return Ok(());
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
    let pass = copy_pass(app, &job).await;
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
            }))],
        )
        .await?;
        if store.mark_copied().await? {
            report_copies(app, &job, &plan, started, timed_out);
        }
        return Ok(());
    }
    info!(run_id = %job.run_id, started, limited, pending = plan.pending.values().sum::<usize>(), "copies in progress");
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

/// Reads the run's recorded sets and copies, confirms them against EC2, starts the missing
/// copies; answers the plan, how many copies were started and whether a region's copy limit
/// was met. Only snapshots the catalog records are copied, and only copies it records count
/// as existing: a snapshot tagged like a set or like a copy is reported as foreign.
async fn copy_pass(app: &App, job: &CopyJob) -> Result<(CopyPlan, usize, bool), Error> {
    let home = app.config.region.as_str();
    let view = app.aws.catalog.run_view(&job.run_id).await?;
    let (sets, recorded_copies) = (view.sets, view.copies);
    let index = CatalogIndex::new(&sets, &recorded_copies);
    let ids: Vec<String> = sets
        .iter()
        .flat_map(|s| s.snapshots.iter().map(|r| r.snapshot_id.clone()))
        .collect();
    let subject = format!("run {}", job.run_id);
    let listed = snapshots::of_run(&app.aws.ec2, &job.run_id, None).await?;
    let mut snapshots: Vec<SnapshotFacts> = Vec::new();
    for facts in snapshots::with_ids(&app.aws.ec2, &listed, &ids, &subject).await? {
        match admit(facts, home, &index, &app.config.managed_by) {
            Ok(admitted) => snapshots.push(admitted),
            Err(foreign) => {
                warn!(run_id = %job.run_id, snapshot_id = %foreign.snapshot_id, why = %foreign.why, "foreign snapshot: not copied")
            }
        }
    }
    let verdicts: BTreeMap<(&str, &str), bool> = sets
        .iter()
        .map(|s| {
            (
                (s.instance_id.as_str(), s.run_id.as_str()),
                s.is_consistent(),
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
        match region_copies(app, job, region, &recorded_copies, &home_sources, &verdicts).await {
            Ok(copies) => {
                existing.insert(region.clone(), copies);
            }
            Err(err) => {
                let fault = region_fault(&err);
                warn!(run_id = %job.run_id, region = %region, code = %fault.code, permanent = fault.permanent, error = %err, "copy region not readable: no copy goes there in this pass");
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
    for (region, source_id) in &plan.to_start {
        if limited.contains(region) || refused.contains_key(region) {
            continue;
        }
        let Some(source) = by_id.get(source_id.as_str()) else {
            continue;
        };
        let request = CopyRequest {
            source_region: home,
            source_snapshot_id: &source.snapshot_id,
            description: copy_description(source, home),
            tags: copy_tags(source, home),
            kms_key_id: app.config.copy_kms_key_ids.get(region).map(String::as_str),
        };
        match snapshots::copy(&app.aws.ec2_in(region), region, request).await {
            Ok(copy_id) => {
                info!(run_id = %job.run_id, region = %region, source = %source_id, copy = %copy_id, "copy started");
                started += 1;
                started_ids.insert((region.clone(), source_id.clone()));
                let instance_id = source
                    .tags
                    .get(TAG_INSTANCE_ID)
                    .cloned()
                    .unwrap_or_default();
                let consistent = verdicts
                    .get(&(instance_id.as_str(), job.run_id.as_str()))
                    .copied()
                    .unwrap_or(false);
                app.aws
                    .catalog
                    .record_copy(&CopyRecord {
                        run_id: job.run_id.clone(),
                        instance_id,
                        region: region.clone(),
                        source_snapshot_id: source.snapshot_id.clone(),
                        snapshot_id: copy_id,
                        started_at: Utc::now(),
                        consistent,
                        imported: false,
                    })
                    .await?;
            }
            Err(err) if err.aws_code() == Some("ResourceLimitExceeded") => {
                info!(run_id = %job.run_id, region = %region, "copy limit of the region reached: the rest waits for the next pass");
                limited.insert(region.clone());
            }
            // Refused for good (a permission, a key, the region): no copy goes there, this
            // pass or the next; the region is reported failed with the code.
            Err(err) if err.is_permanent() => {
                warn!(run_id = %job.run_id, region = %region, source = %source_id, code = err.aws_code().unwrap_or(""), error = %err, "copies into the region refused: it is reported failed");
                refused.insert(region.clone(), region_fault(&err));
            }
            // Throttled, or no answer: whether the copy exists, the next pass will see.
            Err(err) => {
                warn!(run_id = %job.run_id, region = %region, source = %source_id, error = %err, "copy not confirmed: the next pass checks the destination");
                limited.insert(region.clone());
            }
        }
    }
    // What a region refused in this pass is failed there; what was started is on its way.
    let mut plan = plan;
    if !refused.is_empty() {
        plan.to_start
            .retain(|pair| !(refused.contains_key(&pair.0) && started_ids.contains(pair)));
        plan = plan.without_regions(&refused);
    }
    Ok((plan, started, !limited.is_empty()))
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
    job: &CopyJob,
    region: &str,
    recorded_copies: &[CopyRecord],
    home_sources: &[SnapshotFacts],
    verdicts: &BTreeMap<(&str, &str), bool>,
) -> Result<Vec<ExistingCopy>, Error> {
    let home = app.config.region.as_str();
    let subject = format!("copies of run {} in {region}", job.run_id);
    let recorded: Vec<&CopyRecord> = recorded_copies
        .iter()
        .filter(|c| c.region == region)
        .collect();
    let ids: Vec<String> = recorded.iter().map(|c| c.snapshot_id.clone()).collect();
    let ec2 = app.aws.ec2_in(region);
    let recorded_ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let tagged = snapshots::tagged_copies(&ec2, &job.run_id, &subject).await?;
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
        info!(run_id = %job.run_id, region = %region, source = %source_id, copy = %copy.snapshot_id, "a copy whose CopySnapshot answer was lost: recorded");
        let record = CopyRecord {
            consistent: verdicts
                .get(&(instance_id.as_str(), job.run_id.as_str()))
                .copied()
                .unwrap_or(false),
            run_id: job.run_id.clone(),
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
