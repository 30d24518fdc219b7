//! Retention against AWS: read this deployment's snapshots, the AMIs and the instances of
//! every region it uses, plan with `retention::plan::plan`, and delete what the plan says,
//! logging each deletion with its reason. At the end of every run, and on demand.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::{info, warn};

use crate::app::{dispatched_run, emit_metrics, requeue, App};
use crate::aws::catalog::{CopyKey, RunMarkerStore};
use crate::aws::instances;
use crate::aws::snapshots::{self, Deletion};
use crate::copy::plan::copy_regions_of;
use crate::error::Error;
use crate::jobs::{Job, RetentionJob};
use crate::model::catalog::{admit, CatalogIndex};
use crate::model::snapshot::{SnapshotFacts, SnapshotInfo};
use crate::model::state::SnapshotState;
use crate::model::stop_time;
use crate::model::tags::{TAG_INSTANCE_ID, TAG_SOURCE_SNAPSHOT};
use crate::retention::plan::{
    instance_state, plan, region_policy, Action, RegionPlan, RetentionOutcome, ANSWER_SETS,
    LOG_LINE_SETS,
};
use crate::run::plan::summary::MAX_FOREIGN;

/// The regions retention looks at: the function's own, then the copy regions, then any
/// region of `COPY_REGIONS_ALLOWED` a tagged instance's `ConsistentSnapshot:CopyRegions` adds
/// (a tag naming any other region is refused by the copy step, and read by nobody).
async fn retention_regions(app: &App) -> Result<Vec<String>, Error> {
    let mut regions: Vec<String> = std::iter::once(app.config.region.clone())
        .chain(app.config.copy_regions.iter().cloned())
        .collect();
    for instance in instances::discover(&app.aws.ec2, &app.config, None).await? {
        let permitted: Vec<String> = app
            .config
            .copy_regions
            .iter()
            .chain(&app.config.copy_regions_allowed)
            .cloned()
            .collect();
        let extra = copy_regions_of(&instance.tags, &[], &permitted, &app.config.region)
            .unwrap_or_default();
        for region in extra {
            if !regions.contains(&region) {
                regions.push(region);
            }
        }
    }
    Ok(regions)
}

/// This deployment's snapshots in `region` that the catalog vouches for and EC2 confirms,
/// with the catalog's instance, run and verdict; answers them and how many snapshots carrying
/// the deployment's tag were foreign (each logged, the first `MAX_FOREIGN`).
pub async fn vouched_snapshots(
    app: &App,
    region: &str,
    index: &CatalogIndex,
    skip_imported: bool,
) -> Result<(Vec<SnapshotInfo>, usize), Error> {
    let managed_by = app.config.managed_by.as_str();
    let mut foreign = 0usize;
    let admit_here = |facts: SnapshotFacts| {
        // An imported set is kept whatever retention would decide: never handed to it.
        if skip_imported
            && index
                .get(region, &facts.snapshot_id)
                .is_some_and(|v| v.imported)
        {
            return None;
        }
        match admit(facts, region, index, managed_by) {
            Ok(admitted) => Some(admitted),
            Err(f) => {
                if foreign < MAX_FOREIGN {
                    warn!(region = %region, snapshot_id = %f.snapshot_id, claims_instance = f.claims_instance.as_deref().unwrap_or(""), why = %f.why, "foreign snapshot: carries this deployment's tag, not recorded; never deleted, copied or restored");
                }
                foreign += 1;
                None
            }
        }
    };
    let expected = index.count_in(region);
    let snapshots = snapshots::managed(
        &app.aws.ec2_in(region),
        region,
        managed_by,
        expected,
        admit_here,
    )
    .await?;
    Ok((snapshots, foreign))
}

/// Plans retention in every region, over the snapshots the catalog vouches for (and EC2
/// confirms); every other snapshot carrying this deployment's tag is foreign: logged,
/// counted, never deleted.
/// A region that cannot be read is left as it is and named, with its AWS code, in
/// `unreadable`; the other regions are planned as usual, but a home snapshot with a copy
/// recorded in an unreadable region is kept (that copy may still be being made from it).
pub async fn plan_retention(app: &App) -> Result<(Vec<RegionPlan>, Vec<String>), Error> {
    let now = Utc::now();
    let started = std::time::Instant::now();
    let regions = retention_regions(app).await?;
    let index = app.aws.catalog.index().await?;
    let indexed_ms = started.elapsed().as_millis();
    let mut per_region: Vec<(String, Vec<SnapshotInfo>)> = Vec::new();
    let mut foreign = 0usize;
    let mut unreadable: Vec<String> = Vec::new();
    // A source snapshot with a copy still pending anywhere is kept, and so is one with a copy
    // in a region that cannot be read.
    let mut copying: BTreeMap<String, usize> = BTreeMap::new();
    for region in &regions {
        match region_snapshots(app, region, &index).await {
            Ok((snapshots, foreign_here)) => {
                foreign += foreign_here;
                per_region.push((region.clone(), snapshots));
            }
            Err(err) => {
                let code = err.aws_code().unwrap_or("Unknown").to_string();
                warn!(region = %region, code = %code, error = %err, "region not readable: retention leaves it as it is");
                unreadable.push(format!("{region} ({code})"));
                if *region != app.config.region {
                    for source in index.sources_copied_to(region) {
                        *copying.entry(source.to_string()).or_default() += 1;
                    }
                }
            }
        }
    }
    let home_read = per_region
        .first()
        .is_some_and(|(region, _)| *region == app.config.region);
    for (_, snapshots) in per_region.iter().skip(usize::from(home_read)) {
        for copy in snapshots
            .iter()
            .filter(|s| s.state == SnapshotState::Pending)
        {
            if let Some(source) = copy.tags.get(TAG_SOURCE_SNAPSHOT) {
                *copying.entry(source.to_string()).or_default() += 1;
            }
        }
    }
    if let Some((_, home)) = per_region.first_mut().filter(|_| home_read) {
        for s in home.iter_mut() {
            s.copies_in_progress = copying.get(&s.snapshot_id).copied().unwrap_or(0);
        }
    }
    let ids: BTreeSet<String> = per_region
        .iter()
        .flat_map(|(_, snapshots)| snapshots.iter())
        .filter_map(|s| s.tags.get(TAG_INSTANCE_ID).map(str::to_string))
        .collect();
    // The index has done its work (admitting): its memory goes before the plans take theirs.
    drop(index);
    let facts = instances::by_id(&app.aws.ec2, &app.config, ids.iter().map(String::as_str)).await?;
    let target = (
        app.config.target_tag_key.as_str(),
        app.config.target_tag_value.as_str(),
    );
    if foreign > 0 {
        emit_metrics(
            app,
            &[("ForeignSnapshots", foreign)],
            &[("Event", "retention")],
        );
    }
    let mut plans = Vec::new();
    // Each region's snapshots are dropped once its plan is made.
    for (region, snapshots) in per_region {
        let home = region == app.config.region;
        let policy = region_policy(&app.config, home);
        let instances = ids
            .iter()
            .map(|id| {
                let state = instance_state(
                    facts.get(id),
                    target,
                    policy.retain_count,
                    policy.retain_days,
                    home,
                );
                (id.clone(), state)
            })
            .collect();
        plans.push(plan(&region, &snapshots, &instances, &policy, now));
    }
    info!(
        regions = regions.len(),
        foreign,
        catalog_ms = indexed_ms,
        total_ms = started.elapsed().as_millis(),
        "retention planned"
    );
    Ok((plans, unreadable))
}

/// One region's snapshots that the catalog vouches for, with the AMIs that use them, and how
/// many foreign ones were met.
async fn region_snapshots(
    app: &App,
    region: &str,
    index: &CatalogIndex,
) -> Result<(Vec<SnapshotInfo>, usize), Error> {
    let ec2 = app.aws.ec2_in(region);
    let (mut snapshots, foreign) = vouched_snapshots(app, region, index, true).await?;
    let images = snapshots::used_by_images(&ec2, region).await?;
    for s in &mut snapshots {
        s.used_by_images = images.get(&s.snapshot_id).cloned().unwrap_or_default();
    }
    Ok((snapshots, foreign))
}

/// Deletes what the plans say, one snapshot at a time, each logged with its reason.
///
/// Deletions stop at `stop_at`: those left are counted in `unfinished`, for the next pass
/// (deleting is slow at scale: EC2 allows about 5 DeleteSnapshot calls a second).
pub async fn apply_retention(
    app: &App,
    plans: Vec<RegionPlan>,
    dry_run: bool,
    stop_at: DateTime<Utc>,
) -> RetentionOutcome {
    let mut outcome = RetentionOutcome {
        dry_run,
        ..RetentionOutcome::default()
    };
    let mut tried = 0usize;
    for plan in &plans {
        let ec2 = app.aws.ec2_in(&plan.region);
        let home = plan.region == app.config.region;
        for (instance_id, set) in plan.deletions() {
            let mut gone: Vec<&String> = Vec::new();
            for snapshot_id in &set.snapshots {
                let at = format!("{}/{snapshot_id}", plan.region);
                if dry_run {
                    info!(region = %plan.region, instance_id, run_id = %set.run_id, snapshot_id = %snapshot_id, reason = %set.reason, "would delete (dry run)");
                    continue;
                }
                // At least one deletion a pass, however short: every pass makes progress.
                if tried > 0 && Utc::now() >= stop_at {
                    outcome.unfinished += 1;
                    continue;
                }
                tried += 1;
                let subject = format!("{snapshot_id} of {instance_id} in {}", plan.region);
                match snapshots::delete(&ec2, snapshot_id, &subject).await {
                    Deletion::Deleted => {
                        info!(region = %plan.region, instance_id, run_id = %set.run_id, snapshot_id = %snapshot_id, reason = %set.reason, "snapshot deleted");
                        outcome.deleted.push(at);
                        gone.push(snapshot_id);
                    }
                    Deletion::AlreadyGone => {
                        info!(region = %plan.region, snapshot_id = %snapshot_id, "already deleted");
                        gone.push(snapshot_id);
                    }
                    Deletion::InUse => {
                        warn!(region = %plan.region, instance_id, snapshot_id = %snapshot_id, "kept: in use (by an AMI)");
                        outcome.kept.push(format!("{at}: in use"));
                    }
                    Deletion::Failed(err) => {
                        warn!(error = %err, "snapshot not deleted");
                        outcome.failed.push(format!("{at}: {err}"));
                    }
                }
            }
            // What is deleted leaves the catalog at once (inside the pass's time): a set once
            // all of it is gone, a copy with its snapshot. Should this fail, the records are
            // only stale: nothing is admitted that EC2 no longer lists.
            let forget = if home {
                let whole = gone.len() == set.snapshots.len();
                let sets = [(instance_id.to_string(), set.run_id.clone())];
                (whole, sets.to_vec(), Vec::new())
            } else {
                let copies: Vec<CopyKey> = gone
                    .iter()
                    .map(|snapshot_id| CopyKey {
                        instance_id: instance_id.to_string(),
                        region: plan.region.clone(),
                        run_id: set.run_id.clone(),
                        snapshot_id: snapshot_id.to_string(),
                    })
                    .collect();
                (!copies.is_empty(), Vec::new(), copies)
            };
            if let (true, sets, copies) = forget {
                if let Err(err) = app.aws.catalog.forget(&sets, &copies).await {
                    warn!(error = %err, run_id = %set.run_id, instance_id, "deleted set not removed from the catalog");
                }
            }
        }
        for (instance_id, sets) in &plan.instances {
            for set in sets
                .iter()
                .filter(|s| s.action == Action::Keep && s.reason.contains("AMI"))
            {
                warn!(region = %plan.region, instance_id, run_id = %set.run_id, reason = %set.reason, "set kept: used by an AMI");
                outcome
                    .kept
                    .push(format!("{}/{}: {}", plan.region, set.run_id, set.reason));
            }
        }
    }
    outcome.plans = plans;
    outcome
}

/// `{"action":"retention","dry_run":…}`: the plan, and what was deleted.
/// Deletions stop shortly before `deadline`; the answer says how many are left.
pub async fn on_demand(app: &App, dry_run: bool, deadline: DateTime<Utc>) -> Result<Value, Error> {
    let (plans, unreadable) = plan_retention(app).await?;
    let stop_at = stop_time(Utc::now(), deadline);
    let mut outcome = apply_retention(app, plans, dry_run, stop_at).await;
    outcome.regions_unreadable = unreadable;
    if !dry_run {
        emit_metrics(app, &outcome.metric_counts(), &[("Event", "retention")]);
    }
    info!(dry_run, "{}", outcome.summary_line());
    Ok(outcome.to_bounded_json(ANSWER_SETS))
}

/// The run's last step: retention in every region, then the run's markers are released.
/// One pass: plans, deletes until a few seconds before `deadline`, and if deletions are
/// left, queues the next pass (which plans again, so nothing is deleted twice and nothing
/// the next plan keeps is deleted). The run's retention is over with the last pass.
pub async fn retention_job(
    app: &App,
    job: RetentionJob,
    deadline: DateTime<Utc>,
) -> Result<(), Error> {
    dispatched_run(app, &job.run_id, "retention").await?;
    let (plans, unreadable) = plan_retention(app).await?;
    let stop_at = stop_time(Utc::now(), deadline);
    let mut outcome = apply_retention(app, plans, false, stop_at).await;
    outcome.regions_unreadable = unreadable;
    outcome.deleted_before = job.deleted_before;
    if outcome.unfinished > 0 {
        info!(run_id = %job.run_id, deleted = outcome.deleted.len(), left = outcome.unfinished, "retention continues in the next pass");
        let deleted_before = job.deleted_before + outcome.deleted.len();
        return requeue(
            app,
            Job::Retention(RetentionJob {
                deleted_before,
                ..job
            }),
        )
        .await;
    }
    if !outcome.failed.is_empty() {
        return Err(Error::Retention(format!(
            "run {}: {} deletion(s) failed: {}",
            job.run_id,
            outcome.failed.len(),
            outcome.failed.join("; ")
        )));
    }
    let store = RunMarkerStore::new(&app.aws.catalog, &job.run_id);
    if store.mark_retained().await? {
        emit_metrics(
            app,
            &outcome.metric_counts(),
            &[("RunId", &job.run_id), ("Event", "retention")],
        );
        let summary = outcome.to_bounded_json(LOG_LINE_SETS).to_string();
        if outcome.regions_unreadable.is_empty() {
            info!(run_id = %job.run_id, retention = %summary, "{}", outcome.summary_line());
        } else {
            warn!(run_id = %job.run_id, retention = %summary, "{}", outcome.summary_line());
        }
    }
    store.release_finished().await;
    Ok(())
}
