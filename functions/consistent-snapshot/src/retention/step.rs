//! Retention against AWS: read this deployment's snapshots, the AMIs and the instances of
//! every region it uses, plan with `retention::plan::plan` a part of the fleet at a time, and
//! delete what the plan says, logging each deletion with its reason. At the end of every run,
//! and on demand.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use futures_util::future::{join_all, try_join};
use serde_json::Value;
use tracing::{error, info, warn};

use crate::app::{dispatched_run, emit_metrics, requeue, App};
use crate::aws::catalog::{CopyKey, RunMarkerStore};
use crate::aws::instances;
use crate::aws::snapshots::{self, Archival, Deletion, FILTER_VALUES};
use crate::copy::plan::copy_regions_of;
use crate::error::Error;
use crate::jobs::{Job, RetentionJob, RETENTION_RETRIES, RETENTION_STALLED_PASSES};
use crate::model::catalog::{admit, CatalogIndex, Missing, Recorded};
use crate::model::fleet::InstanceFacts;
use crate::model::pace::Pace;
use crate::model::snapshot::{SnapshotFacts, SnapshotInfo, SnapshotLock, TagInterner};
use crate::model::state::SnapshotState;
use crate::model::stop_time;
use crate::model::tags::{TAG_INSTANCE_ID, TAG_MANAGED_BY, TAG_SOURCE_SNAPSHOT, TAG_TIERS};
use crate::model::tiers::{Tier, TierChange};
use crate::retention::plan::{
    hold_locked, instance_state, left_pages, left_plans, left_snapshots, locks_due, next_pass,
    note_locks, plan, region_policy, tier_changes, Action, Held, LeftDeletion, LeftPage, Overrides,
    RegionPlan, RetentionOutcome, SetDecision, ANSWER_SETS, LEFT_PAGES, LOG_LINE_SETS,
    PLAN_AHEAD_ROOM,
};
use crate::run::plan::summary::MAX_FOREIGN;

/// The regions retention looks at: the function's own, then the copy regions, then any
/// region of `COPY_REGIONS_ALLOWED` a tagged instance's `ConsistentSnapshot:CopyRegions` adds
/// (a tag naming any other region is refused by the copy step, and read by nobody). Answers
/// the tagged fleet too, which it reads for them (1,000 a page).
async fn retention_regions(app: &App) -> Result<(Vec<String>, Vec<InstanceFacts>), Error> {
    let mut regions: Vec<String> = std::iter::once(app.config.region.clone())
        .chain(app.config.copy_regions.iter().cloned())
        .collect();
    let fleet = instances::discover(&app.aws.ec2, &app.config, None).await?;
    for instance in &fleet {
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
    Ok((regions, fleet))
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
        admitted(facts, (region, index, managed_by), &mut foreign)
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

/// `admit`, with a snapshot it refuses logged as foreign (the first `MAX_FOREIGN` of a
/// region) and counted in `foreign`.
fn admitted(
    facts: SnapshotFacts,
    (region, index, managed_by): (&str, &CatalogIndex, &str),
    foreign: &mut usize,
) -> Option<SnapshotFacts> {
    match admit(facts, region, index, managed_by) {
        Ok(admitted) => Some(admitted),
        Err(f) => {
            if *foreign < MAX_FOREIGN {
                warn!(region = %region, snapshot_id = %f.snapshot_id, claims_instance = f.claims_instance.as_deref().unwrap_or(""), why = %f.why, "foreign snapshot: carries this deployment's tag, not recorded; never deleted, copied or restored");
            }
            *foreign += 1;
            None
        }
    }
}

/// Which parts of a pass look for snapshots deleted by someone else (`report_missing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingLook {
    Everywhere,
    /// Only after this instance: an earlier pass of the same retention looked up to it.
    After(String),
    Nowhere,
}

/// One retention pass, as asked.
#[derive(Debug, Clone)]
pub struct Pass<'a> {
    pub dry_run: bool,
    /// A dry run of these instances only.
    pub only: Option<&'a [String]>,
    /// Begin after this instance, in id order (a run's retention resumed).
    pub resume_after: Option<String>,
    pub missing: MissingLook,
    /// A run's retention: its run id and this pass's number, under which deletions the pass
    /// plans and has no time for are recorded for the next pass (`None`: on demand, where
    /// nothing comes after).
    pub carry: Option<(&'a str, u32)>,
    /// Do first the deletions the pass of this number recorded as left (`LeftDeletion`).
    pub left_from: Option<u32>,
    /// A run's retention with retries left (`RETENTION_RETRIES`): a deletion that fails for a
    /// reason that may pass (a 5xx, no answer) is left, with the rest of its set, for the next
    /// pass to try again, rather than reported failed until the next run.
    pub retry_failures: bool,
}

impl Pass<'_> {
    /// Whether this pass counts (and logs) the snapshots carrying the deployment's tag that
    /// the catalog does not record: a full listing of every region when the catalog is more
    /// than one part, so only the first pass of a retention does it (the one that looks for
    /// missing snapshots everywhere; an on-demand pass is always a first).
    fn counts_foreign(&self) -> bool {
        self.missing == MissingLook::Everywhere
    }

    /// A run's retention that applies (not a dry run): its run id and this pass's number, under
    /// which what it leaves is recorded for the next pass. `None` on demand or for a dry run,
    /// where nothing comes after: nothing is recorded, planned ahead or left to retry.
    fn run(&self) -> Option<(&str, u32)> {
        self.carry.filter(|_| !self.dry_run)
    }
}

/// What a pass reads once, before its parts: the regions, which of them could not be read
/// (`region (AWS code)`), and the AMIs using each region's snapshots.
struct Survey {
    regions: Vec<String>,
    unreadable: BTreeMap<String, String>,
    images: HashMap<String, BTreeMap<String, Vec<String>>>,
    /// Each region's locks in force, read whole (one page) by the first part of the pass that
    /// needs them, for the parts after it; `None` for a region with more (or not readable
    /// then): each part reads its own. Only without `LOCK_MODE` (`None` here): a deployment
    /// that lays locks reads them right before, part by part (a lock laid over one read
    /// earlier could shorten it).
    locks: Option<PassLocks>,
}

/// Each region's locks in force as a pass read them whole, by snapshot id (`None`: more than
/// a page, or not readable).
type PassLocks = Mutex<HashMap<String, Option<BTreeMap<String, SnapshotLock>>>>;

/// One retention pass over every region: the regions surveyed once (their AMIs, their foreign
/// snapshots), then the fleet a part at a time, each part planned over the snapshots the
/// catalog vouches for and EC2 confirms, and applied (`Applying`) before the next part is read.
/// Every snapshot carrying this deployment's tag that the catalog does not vouch for is
/// foreign: logged, counted, never deleted.
/// A region that cannot be read is left as it is and named, with its AWS code, in
/// `regions_unreadable`; the other regions are planned as usual, but a home snapshot with a copy
/// recorded in an unreadable region is kept (that copy may still be being made from it).
/// Parts stop at `stop_at`: the instances not planned are counted in `instances_left`, and a
/// run's next pass begins after `planned_through`.
pub async fn retention_pass(
    app: &App,
    pass: Pass<'_>,
    stop_at: DateTime<Utc>,
) -> Result<RetentionOutcome, Error> {
    let now = Utc::now();
    let started = std::time::Instant::now();
    let mut applying = Applying::new(pass.dry_run, stop_at);
    applying.retry = pass.retry_failures && pass.run().is_some();
    applying.outcome.planned_through = pass.resume_after.clone();
    if !apply_left(app, &pass, &mut applying).await? {
        return Ok(applying.outcome);
    }
    let part_snapshots = app.config.retention_part_snapshots;
    let (recorded, whole) = app.aws.catalog.recorded(part_snapshots).await?;
    let catalog_ms = started.elapsed().as_millis();
    let parts = recorded.parts(
        (part_snapshots, FILTER_VALUES),
        pass.resume_after.as_deref(),
        pass.only,
    );
    if parts.is_empty() && pass.resume_after.is_some() {
        // The passes before planned every part: nothing to read again.
        info!(
            deleted = applying.outcome.deleted.len(),
            catalog_ms, "retention pass done: every part was planned by the passes before"
        );
        return Ok(applying.outcome);
    }
    let (regions, fleet) = retention_regions(app).await?;
    let fleet: HashMap<String, InstanceFacts> = fleet
        .into_iter()
        .map(|f| (f.instance_id.clone(), f))
        .collect();
    // Every recorded server in one part (most deployments): the scan's index serves it, and
    // each region's survey keeps its listing for it, so nothing is read twice.
    let mut whole = whole
        .filter(|_| parts.len() == 1 && parts[0].len() == recorded.instances().len())
        .map(|index| (index, HashMap::new()));
    let mut survey = Survey {
        regions,
        unreadable: BTreeMap::new(),
        images: HashMap::new(),
        locks: app
            .config
            .lock_mode
            .is_none()
            .then(|| Mutex::new(HashMap::new())),
    };
    let mut foreign = 0usize;
    // The regions are read at once: a pass's latency is its slowest region's, not their sum.
    let index = whole.as_ref().map(|(index, _)| index);
    let surveyed = join_all(
        survey
            .regions
            .iter()
            .map(|region| survey_region(app, region, (&recorded, pass.counts_foreign()), index)),
    )
    .await;
    for (region, read) in survey.regions.iter().zip(surveyed) {
        match read {
            Ok((images, foreign_here, listed)) => {
                foreign += foreign_here;
                survey.images.insert(region.clone(), images);
                if let (Some((_, listings)), Some(listed)) = (whole.as_mut(), listed) {
                    listings.insert(region.clone(), listed);
                }
            }
            Err(err) => {
                let code = err.aws_code().unwrap_or("Unknown").to_string();
                warn!(region = %region, code = %code, error = %err, "region not readable: retention leaves it as it is");
                survey.unreadable.insert(region.clone(), code);
            }
        }
    }
    drop(recorded);
    let instances_total: usize = parts.iter().map(Vec::len).sum();
    // Named before any part: each part this pass applies is applied without these regions,
    // which its settling carries to the run's metric.
    for (region, code) in &survey.unreadable {
        applying
            .outcome
            .regions_unreadable
            .push(format!("{region} ({code})"));
    }
    // Every region read has a plan, if only an empty one.
    let readable = survey
        .regions
        .iter()
        .filter(|r| !survey.unreadable.contains_key(*r))
        .map(|region| RegionPlan {
            region: region.clone(),
            ..RegionPlan::default()
        })
        .collect();
    applying.outcome.absorb(readable, ANSWER_SETS);
    let mut planned = 0usize;
    let mut whole_so_far = true;
    // A run's retention plans ahead: each part's deletions wait until the parts this pass
    // has time to plan are planned, so that the fleet, the AMIs and the locks it read serve
    // them all (at AWS's rates a part's deletions alone outlast an invocation, and each part
    // would otherwise be planned by a pass of its own, reading them again).
    applying.defer = pass.run().is_some() && part_snapshots <= PLAN_AHEAD_ROOM;
    // A part is begun only while twice the longest planning of one so far fits.
    let mut pace = Pace::until(stop_at);
    for (n, part) in parts.iter().enumerate() {
        // A part a pass at least, if the survey left any time: every pass makes progress.
        // Once deletions or locks are left for lack of time, planning more would only be done
        // again; deletions planned ahead are not left, they are yet to be done.
        let began = Utc::now();
        let out_of_time = if n == 0 {
            began >= stop_at
        } else {
            !pace.fits(began)
        };
        if out_of_time || (!pass.dry_run && !applying.defer && applying.left() > 0) {
            break;
        }
        if applying.defer && n > 0 && applying.outcome.left.len() + part_snapshots > PLAN_AHEAD_ROOM
        {
            // As many deletions planned ahead as a pass holds and records: the next pass goes
            // on planning after this part, once they are done.
            break;
        }
        let look = !pass.dry_run
            && match &pass.missing {
                MissingLook::Everywhere => true,
                MissingLook::After(after) => part.first().is_some_and(|first| first > after),
                MissingLook::Nowhere => false,
            };
        let planned_part = match plan_part(app, part, &survey, &fleet, (now, look), whole.take())
            .await
        {
            Ok(planned_part) => planned_part,
            Err(err) => {
                // The parts planned so far are whole: their deletions are done (or recorded)
                // before this one is named, and the parts after it are applied as they are
                // planned (they are planned again, after it, by the next pass).
                applying.flush_deferred(app, &pass).await?;
                // One part that cannot be read never stops the others: the next pass (or
                // the next run) plans it again.
                let (first, last) = (part.first(), part.last());
                let named = format!(
                    "{} server(s) {}…{}: {err}",
                    part.len(),
                    first.map_or("", String::as_str),
                    last.map_or("", String::as_str)
                );
                warn!(instances = part.len(), code = err.aws_code().unwrap_or("Unknown"), error = %err, "a part of the fleet not planned: retention tries it again");
                if !err.is_permanent() {
                    applying.outcome.transient_failures += 1;
                }
                applying.outcome.parts_failed.push(named);
                whole_so_far = false;
                continue;
            }
        };
        pace.took(began, Utc::now());
        foreign += planned_part.foreign;
        for region in planned_part.unreadable {
            if !applying.outcome.regions_unreadable.contains(&region) {
                applying.outcome.regions_unreadable.push(region);
            }
        }
        let left_before = applying.left();
        let deferred_before = applying.outcome.left.len();
        applying.apply(app, planned_part.plans).await;
        planned += part.len();
        if look {
            applying.outcome.missing_through = part.last().cloned();
        }
        let deferred_now = applying.deferred_since(deferred_before);
        let whole_before = whole_so_far;
        whole_so_far = whole_so_far && applying.left() == left_before + deferred_now;
        if applying.defer && !whole_so_far {
            // A lock or a tier left for lack of time: this part is planned again by the next
            // pass. The deletions of the parts before it are done (or recorded) first; its
            // own are tried now, as a pass that does not plan ahead tries them.
            let own = applying.outcome.left.split_off(deferred_before);
            applying.outcome.unfinished = applying.outcome.unfinished.saturating_sub(deferred_now);
            applying.flush_deferred(app, &pass).await?;
            applying.apply_planned(app, &left_plans(own)).await;
        }
        // Out of time with only deletions of this part left: recorded for the next pass,
        // which does them without planning this part again; the part is then done.
        if whole_before
            && !whole_so_far
            && left_before == 0
            && applying.outcome.only_deletions_left()
        {
            whole_so_far = carry_left(app, &pass, &mut applying.outcome).await;
        }
        if whole_so_far {
            applying.outcome.planned_through = part.last().cloned();
            applying.outcome.settle();
        }
        info!(
            part = n + 1,
            parts = parts.len(),
            instances = part.len(),
            planned,
            of = instances_total,
            "retention: part planned and applied"
        );
    }
    // The deletions planned ahead, done until the pass's time ends; those left are recorded
    // for the next pass.
    applying.flush_deferred(app, &pass).await?;
    applying.outcome.instances_left = instances_total - planned;
    if pass.counts_foreign() && foreign > 0 {
        emit_metrics(
            app,
            &[("ForeignSnapshots", foreign)],
            &[("Event", "retention")],
        );
    }
    info!(
        regions = survey.regions.len(),
        parts = parts.len(),
        instances = planned,
        instances_left = applying.outcome.instances_left,
        foreign,
        catalog_ms,
        total_ms = started.elapsed().as_millis(),
        "retention pass done"
    );
    Ok(applying.outcome)
}

/// The deletions the pass before recorded as left (`Pass::left_from`), done first, as that
/// pass planned them (EC2 still refuses a locked snapshot or one an AMI uses, reported as in any
/// pass). Answers whether the pass goes on to plan: all were done, or none was recorded. Out of
/// time again, what is still left is recorded under this pass, for the next; should that fail,
/// the error fails the pass, whose message comes back and does them again (those done since
/// are found already deleted).
async fn apply_left(app: &App, pass: &Pass<'_>, applying: &mut Applying) -> Result<bool, Error> {
    let (Some(from), Some((run_id, _))) = (pass.left_from, pass.run()) else {
        return Ok(true);
    };
    let mut left: Vec<LeftDeletion> = Vec::new();
    let mut pages = 1;
    let mut page = 0;
    while page < pages.min(LEFT_PAGES) {
        let Some(read) = app
            .aws
            .catalog
            .retention_left::<LeftPage>(run_id, from, page)
            .await?
        else {
            break;
        };
        if page == 0 {
            pages = read.pages;
        }
        left.extend(read.sets);
        page += 1;
    }
    if left.is_empty() {
        return Ok(true);
    }
    let snapshots = left_snapshots(&left);
    info!(run_id, from_pass = from, sets = left.len(), snapshots, "retention: deleting what the pass before planned and had no time for, without planning again");
    // Counted by the pass that planned them: not taken into this pass's plans again.
    applying.apply_planned(app, &left_plans(left)).await;
    if applying.left() == 0 {
        applying.outcome.settle();
        return Ok(true);
    }
    if !carry_left(app, pass, &mut applying.outcome).await {
        return Err(Error::Catalog(format!(
            "retention of run {run_id}: {} deletion(s) left by pass {from} and not done could not be recorded for the next pass",
            applying.outcome.unfinished
        )));
    }
    applying.outcome.settle();
    Ok(false)
}

/// Records the deletions this pass planned and left (`RetentionOutcome::left`) for the next
/// pass of the run's retention (`Pass::carry`), and marks them recorded; answers whether they
/// are. Not for a dry run or on demand (nothing comes after), nor past `LEFT_PAGES`.
async fn carry_left(app: &App, pass: &Pass<'_>, outcome: &mut RetentionOutcome) -> bool {
    let Some((run_id, this)) = pass.run() else {
        return false;
    };
    let Some(pages) = left_pages(&outcome.left) else {
        info!(
            run_id,
            sets = outcome.left.len(),
            "deletions left are too many to record: the next pass plans their part again"
        );
        return false;
    };
    match app
        .aws
        .catalog
        .put_retention_left(run_id, this, &pages, Utc::now())
        .await
    {
        Ok(()) => {
            info!(
                run_id,
                pass = this,
                sets = outcome.left.len(),
                snapshots = outcome.unfinished,
                "deletions left recorded: the next pass does them without planning again"
            );
            outcome.left_stored = true;
            true
        }
        Err(err) => {
            warn!(run_id, pass = this, code = err.aws_code().unwrap_or("Unknown"), error = %err, "deletions left not recorded: the next pass plans their part again");
            false
        }
    }
}

/// A region read once a pass: the AMIs that use its snapshots, and the snapshots carrying this
/// deployment's tag that the catalog records nowhere in it (foreign: each logged, the first
/// `MAX_FOREIGN`, and counted). The listing is read a page at a time; with the whole catalog's
/// `index` (one part), what it vouches for is kept, as that part's listing.
async fn survey_region(
    app: &App,
    region: &str,
    (recorded, count_foreign): (&Recorded, bool),
    index: Option<&CatalogIndex>,
) -> Result<
    (
        BTreeMap<String, Vec<String>>,
        usize,
        Option<Vec<SnapshotInfo>>,
    ),
    Error,
> {
    let ec2 = app.aws.ec2_in(region);
    let managed_by = app.config.managed_by.as_str();
    if let Some(index) = index {
        let ((listed, foreign), images) = try_join(
            vouched_snapshots(app, region, index, true),
            snapshots::used_by_images(&ec2, region),
        )
        .await?;
        return Ok((images, foreign, Some(listed)));
    }
    if !count_foreign {
        let images = snapshots::used_by_images(&ec2, region).await?;
        return Ok((images, 0, None));
    }
    let mut foreign = 0usize;
    let subject = format!("{managed_by} in {region}");
    let listing = snapshots::own_tagged(
        &ec2,
        (TAG_MANAGED_BY, managed_by),
        None,
        &subject,
        |facts| {
            if !recorded.contains(region, &facts.snapshot_id) {
                if foreign < MAX_FOREIGN {
                    warn!(region = %region, snapshot_id = %facts.snapshot_id, claims_instance = facts.tags.get(TAG_INSTANCE_ID).map(String::as_str).unwrap_or(""), why = "not in the catalog", "foreign snapshot: carries this deployment's tag, not recorded; never deleted, copied or restored");
                }
                foreign += 1;
            }
            None::<()>
        },
    );
    let (_, images) = try_join(listing, snapshots::used_by_images(&ec2, region)).await?;
    Ok((images, foreign, None))
}

/// One part of the fleet, planned in every region.
struct PlannedPart {
    plans: Vec<RegionPlan>,
    /// Recorded snapshots of the part that EC2 reports otherwise than recorded.
    foreign: usize,
    /// Regions not readable for this part (`region (AWS code)`).
    unreadable: Vec<String>,
}

/// Plans one part of the fleet (`part`, instance ids) in every region: what the catalog
/// records of these instances (read by their keys, unless `whole` holds the whole catalog's
/// index and each region's listing), the snapshots EC2 lists of them, and the instances as
/// EC2 describes them. With `look_for_missing`, what the catalog records and EC2 no longer has
/// goes in each plan's `missing`.
async fn plan_part(
    app: &App,
    part: &[String],
    survey: &Survey,
    fleet: &HashMap<String, InstanceFacts>,
    (now, look_for_missing): (DateTime<Utc>, bool),
    whole: Option<(CatalogIndex, HashMap<String, Vec<SnapshotInfo>>)>,
) -> Result<PlannedPart, Error> {
    let (index, mut listings) = match whole {
        Some((index, listings)) => (index, Some(listings)),
        None => (app.aws.catalog.index_of(part).await?, None),
    };
    let mut per_region: Vec<(String, Vec<SnapshotInfo>)> = Vec::new();
    let mut missing: BTreeMap<String, Vec<Missing>> = BTreeMap::new();
    let mut foreign = 0usize;
    let mut unreadable = Vec::new();
    // A source snapshot with a copy still pending anywhere is kept, and so is one with a copy
    // in a region that cannot be read.
    let mut copying: BTreeMap<String, usize> = BTreeMap::new();
    // Every readable region at once, as the survey.
    let reads = join_all(survey.regions.iter().map(|region| {
        let listed = listings.as_mut().and_then(|l| l.remove(region));
        let (index, images) = (&index, survey.images.get(region));
        // None: the survey found the region unreadable (and named it).
        let readable = !survey.unreadable.contains_key(region);
        async move {
            if readable {
                Some(part_snapshots(app, region, (part, listed, true), index, images).await)
            } else {
                None
            }
        }
    }))
    .await;
    for (region, read) in survey.regions.iter().zip(reads) {
        match read {
            Some(Ok((snapshots, gone, foreign_here))) => {
                foreign += foreign_here;
                if look_for_missing && !gone.is_empty() {
                    missing.insert(region.clone(), gone);
                }
                per_region.push((region.clone(), snapshots));
            }
            not_read => {
                if let Some(Err(err)) = not_read {
                    let code = err.aws_code().unwrap_or("Unknown").to_string();
                    warn!(region = %region, code = %code, error = %err, instances = part.len(), "region not readable for a part of the fleet: retention leaves it as it is");
                    unreadable.push(format!("{region} ({code})"));
                }
                if *region != app.config.region {
                    for source in index.sources_copied_to(region) {
                        *copying.entry(source.to_string()).or_default() += 1;
                    }
                }
            }
        }
    }
    drop(index);
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
            s.copies_in_progress = copying
                .get(&s.snapshot_id)
                .map_or(0, |n| u32::try_from(*n).unwrap_or(u32::MAX));
        }
    }
    let ids: BTreeSet<String> = per_region
        .iter()
        .flat_map(|(_, snapshots)| snapshots.iter())
        .filter_map(|s| s.tags.get(TAG_INSTANCE_ID).map(str::to_string))
        .collect();
    // The tagged fleet was read once for the pass: only the servers with snapshots that are
    // not in it (untagged since, terminated) are described by id.
    let others = instances::by_id(
        &app.aws.ec2,
        &app.config,
        ids.iter()
            .map(String::as_str)
            .filter(|id| !fleet.contains_key(*id)),
    )
    .await?;
    let target = (
        app.config.target_tag_key.as_str(),
        app.config.target_tag_value.as_str(),
    );
    let mut plans = Vec::new();
    // Each region's snapshots are dropped once its plan is made.
    for (region, snapshots) in per_region {
        let home = region == app.config.region;
        let policy = region_policy(&app.config, home);
        let overrides = match (home, app.config.allow_lower_overrides) {
            (false, _) => Overrides::Not,
            (true, false) => Overrides::RaiseOnly,
            (true, true) => Overrides::Any,
        };
        let instances = ids
            .iter()
            .map(|id| {
                let facts = fleet.get(id).or_else(|| others.get(id));
                let state = instance_state(facts, target, policy.retain, overrides);
                (id.clone(), state)
            })
            .collect();
        let mut region_plan = plan(&region, &snapshots, &instances, &policy, now);
        drop(snapshots);
        region_plan.missing = missing.remove(&region).unwrap_or_default();
        plans.push(region_plan);
    }
    join_all(
        plans
            .iter_mut()
            .map(|plan| read_locks(app, plan, survey.locks.as_ref(), now)),
    )
    .await;
    Ok(PlannedPart {
        plans,
        foreign,
        unreadable,
    })
}

/// Rule 7 at the edge: reads the locks EC2 reports on what `plan` would delete (from the
/// region's locks read whole once a pass, `few`, when they fit one page) and keeps the sets
/// they hold; where the deployment locks what it keeps (`LOCK_MODE`), reads those too and
/// plans the locks to lay or extend (`locks_due`). Should the locks not be readable, the plan
/// stands (EC2 refuses to delete a locked snapshot, and `apply_retention` reads the lock of any
/// refused deletion again) and no lock is laid this pass: laying one over a lock not read
/// could shorten it.
async fn read_locks(app: &App, plan: &mut RegionPlan, few: Option<&PassLocks>, now: DateTime<Utc>) {
    let mode = app.config.lock_mode;
    let wanted: Vec<String> = plan
        .instances
        .values()
        .flatten()
        .filter(|s| s.action == Action::Delete || (mode.is_some() && s.lock_until.is_some()))
        .flat_map(|set| set.snapshots.iter().cloned())
        .collect();
    if wanted.is_empty() {
        return;
    }
    let read = match few {
        Some(few) => region_locks(app, &plan.region, few, &wanted).await,
        None => None,
    };
    let locks = match read {
        Some(read) => Ok(read),
        None => snapshots::locks(&app.aws.ec2_in(&plan.region), &plan.region, &wanted).await,
    };
    match locks {
        Ok(locks) => {
            let held = hold_locked(plan, &locks);
            if held > 0 {
                info!(region = %plan.region, sets = held, "sets kept: under a snapshot lock");
            }
            note_locks(plan, &locks);
            if let Some(mode) = mode {
                plan.locks = locks_due(plan, &locks, (mode, app.config.lock_max_days), now);
            }
        }
        Err(err) => {
            warn!(region = %plan.region, code = err.aws_code().unwrap_or("Unknown"), error = %err, "snapshot locks not readable: a locked snapshot's deletion will be refused and reported, and no lock is laid or extended this pass");
        }
    }
}

/// The locks in force on `wanted` snapshots of the region, from its locks as the pass read
/// them whole, read now if this is the pass's first part to need them; `None` when they are
/// more than one page or could not be read (the part then reads its own, and names a
/// failure).
async fn region_locks(
    app: &App,
    region: &str,
    few: &PassLocks,
    wanted: &[String],
) -> Option<BTreeMap<String, SnapshotLock>> {
    let known = few.lock().ok()?.contains_key(region);
    if !known {
        let read = snapshots::few_locks(&app.aws.ec2_in(region), region)
            .await
            .ok()
            .flatten();
        few.lock().ok()?.insert(region.to_string(), read);
    }
    let few = few.lock().ok()?;
    let read = few.get(region)?.as_ref()?;
    Some(
        wanted
            .iter()
            .filter_map(|id| Some((id.clone(), read.get(id)?.clone())))
            .collect(),
    )
}

/// Lays the locks `plan` plans (`locks_due`), one LockSnapshot a snapshot, paced with the
/// pass's deletions and stopping at `stop_at` (what is left goes to the next pass); once all
/// of a set's snapshots in the region are locked, the catalog records the lock on the set (or
/// on each copy). A failure is logged and counted, and the next retention tries again.
async fn lay_locks(
    app: &App,
    plan: &RegionPlan,
    (pace, tried): (&mut Pace, &mut usize),
    stop_at: DateTime<Utc>,
    outcome: &mut RetentionOutcome,
) {
    let ec2 = app.aws.ec2_in(&plan.region);
    let home = plan.region == app.config.region;
    for (n, change) in plan.locks.iter().enumerate() {
        let mut whole = true;
        for (k, snapshot_id) in change.snapshot_ids.iter().enumerate() {
            let began = Utc::now();
            if *tried > 0 && (!pace.fits(began) || began >= stop_at) {
                let left = change.snapshot_ids.len() - k
                    + plan.locks[n + 1..]
                        .iter()
                        .map(|c| c.snapshot_ids.len())
                        .sum::<usize>();
                outcome.locks_left += left;
                info!(region = %plan.region, left, "locks left for the next pass");
                return;
            }
            *tried += 1;
            let subject = format!("{snapshot_id} of {} in {}", change.instance_id, plan.region);
            // A cooling-off period is given to a first lock only.
            let cool_off = app
                .config
                .lock_cool_off_hours
                .filter(|_| !change.extended.contains(snapshot_id));
            let until = change.until;
            let laid = snapshots::lock(
                &ec2,
                snapshot_id,
                (change.mode, change.days),
                cool_off,
                &subject,
            )
            .await;
            pace.took(began, Utc::now());
            let at = format!("{}/{snapshot_id}", plan.region);
            let until_text = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            match laid {
                Ok(()) => {
                    info!(region = %plan.region, instance_id = %change.instance_id, run_id = %change.run_id, snapshot_id = %snapshot_id, mode = change.mode.as_str(), until = %until_text, extended = change.extended.contains(snapshot_id), "snapshot locked until it is expected to be deleted");
                    outcome.locks_laid.push(format!(
                        "{at}: locked ({}) until {until_text}",
                        change.mode.as_str()
                    ));
                }
                Err(err) => {
                    whole = false;
                    warn!(region = %plan.region, instance_id = %change.instance_id, snapshot_id = %snapshot_id, code = err.aws_code().unwrap_or("Unknown"), error = %err, "snapshot not locked: the next retention tries again");
                    outcome.lock_failed.push(format!("{at}: {err}"));
                }
            }
        }
        if whole {
            let recorded = app
                .aws
                .catalog
                .record_lock(
                    (&change.instance_id, &change.run_id),
                    (!home).then_some(plan.region.as_str()),
                    &change.snapshot_ids,
                    (change.mode.as_str(), change.until),
                )
                .await;
            if let Err(err) = recorded {
                warn!(region = %plan.region, run_id = %change.run_id, code = err.aws_code().unwrap_or("Unknown"), error = %err, "lock not recorded in the catalog (EC2 holds it)");
            }
        }
    }
}

/// Reports what the catalog records in `plan`'s region and EC2 no longer lists: deleted by
/// someone else, since this deployment forgets what it deletes at once. One in the Recycle Bin
/// is reported with the date it leaves the bin and stays recorded (it can be restored from the
/// bin, and is then a backup again); one gone is reported and forgotten, so that the catalog
/// says what exists. Each is logged; the metric `SnapshotsDeletedOutside` counts them.
async fn report_missing(app: &App, plan: &RegionPlan, outcome: &mut RetentionOutcome) {
    if plan.missing.is_empty() {
        return;
    }
    let ec2 = app.aws.ec2_in(&plan.region);
    let ids: Vec<String> = plan.missing.iter().map(|m| m.snapshot_id.clone()).collect();
    let bin = match snapshots::in_recycle_bin(&ec2, &plan.region, &ids).await {
        Ok(bin) => Some(bin),
        Err(err) => {
            warn!(region = %plan.region, code = err.aws_code().unwrap_or("Unknown"), error = %err, "Recycle Bin not readable: snapshots deleted by someone else are reported, and kept in the catalog");
            None
        }
    };
    let home = plan.region == app.config.region;
    let (mut gone_sets, mut gone_copies) = (BTreeSet::new(), Vec::new());
    for m in &plan.missing {
        let at = format!(
            "{}/{} ({}, run {})",
            plan.region, m.snapshot_id, m.instance_id, m.run_id
        );
        let binned = bin.as_ref().and_then(|b| b.get(&m.snapshot_id));
        let line = match (binned, &bin) {
            (Some(exit), _) => {
                let until = exit
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "a date not reported".to_string());
                format!("{at}: in the Recycle Bin, recoverable until {until}")
            }
            (None, Some(_)) => {
                if home && !m.copy {
                    gone_sets.insert((m.instance_id.to_string(), m.run_id.to_string()));
                } else {
                    gone_copies.push(CopyKey {
                        instance_id: m.instance_id.to_string(),
                        region: plan.region.clone(),
                        run_id: m.run_id.to_string(),
                        snapshot_id: m.snapshot_id.clone(),
                    });
                }
                format!("{at}: gone (not in the Recycle Bin)")
            }
            (None, None) => format!("{at}: not listed by EC2"),
        };
        error!(region = %plan.region, instance_id = %m.instance_id, run_id = %m.run_id, snapshot_id = %m.snapshot_id, what = %line, "recorded backup deleted by someone else");
        outcome.deleted_outside.push(line);
    }
    // A home set leaves the catalog once none of it is in EC2 or the bin: until then what is
    // left of it is still reported.
    let whole: Vec<(String, String)> = gone_sets
        .into_iter()
        .filter(|(instance, run)| {
            !plan.missing.iter().any(|m| {
                *m.instance_id == **instance
                    && *m.run_id == **run
                    && bin.as_ref().is_some_and(|b| b.contains_key(&m.snapshot_id))
            }) && !plan
                .instances
                .get(instance)
                .is_some_and(|sets| sets.iter().any(|s| s.run_id == *run))
        })
        .collect();
    if let Err(err) = app.aws.catalog.forget(&whole, &gone_copies).await {
        warn!(region = %plan.region, error = %err, "records of deleted snapshots not removed from the catalog: reported again by the next retention");
    }
}

/// One part's snapshots in `region` that the catalog vouches for (with `skip_imported`, its
/// imported sets left out: retention never decides on them), with the AMIs that use them
/// (`images`, when given); the part's recorded
/// snapshots EC2 no longer has (at most `MAX_MISSING`); and how many of the part's recorded
/// snapshots EC2 reports otherwise than recorded (foreign, each logged).
/// The snapshots are listed by their instance tag (or were, by the deployment's tag, in the
/// region's survey: `listed`); a recorded one the listing did not find (its tags rewritten or
/// removed by someone else) is read by its id: a tag must not hide a backup from retention,
/// nor make the catalog forget it.
pub async fn part_snapshots(
    app: &App,
    region: &str,
    (part, listed, skip_imported): (&[String], Option<Vec<SnapshotInfo>>, bool),
    index: &CatalogIndex,
    images: Option<&BTreeMap<String, Vec<String>>>,
) -> Result<(Vec<SnapshotInfo>, Vec<Missing>, usize), Error> {
    let ec2 = app.aws.ec2_in(region);
    let managed_by = app.config.managed_by.as_str();
    let mut foreign = 0usize;
    let mut admit_here = |facts: SnapshotFacts| {
        // Not recorded for this part: another part's, or foreign (counted by the survey).
        let vouched = index.get(region, &facts.snapshot_id)?;
        if skip_imported && vouched.imported {
            return None;
        }
        admitted(facts, (region, index, managed_by), &mut foreign)
    };
    let mut snapshots = match listed {
        Some(listed) => listed,
        None => snapshots::managed_of(&ec2, region, managed_by, part, &mut admit_here).await?,
    };
    let listed: HashSet<&str> = snapshots.iter().map(|s| s.snapshot_id.as_str()).collect();
    let unlisted = index.missing_in(region, &listed, usize::MAX);
    drop(listed);
    let mut gone = Vec::new();
    if !unlisted.is_empty() {
        let ids: Vec<String> = unlisted.iter().map(|m| m.snapshot_id.clone()).collect();
        let subject = format!(
            "recorded snapshots of {} instance(s) in {region}",
            part.len()
        );
        let found = snapshots::by_ids(&ec2, &ids, &subject).await?;
        let found_ids: HashSet<String> = found.iter().map(|f| f.snapshot_id.clone()).collect();
        let mut interner = TagInterner::default();
        for facts in found {
            info!(region = %region, snapshot_id = %facts.snapshot_id, "recorded snapshot not listed under its instance's tag (rewritten or removed): read by its id");
            if let Some(info) =
                admit_here(facts).and_then(|a| SnapshotInfo::from_facts(a, &mut interner))
            {
                snapshots.push(info);
            }
        }
        gone = unlisted
            .into_iter()
            .filter(|m| !found_ids.contains(&m.snapshot_id))
            .take(MAX_MISSING)
            .collect();
    }
    if let Some(images) = images {
        for s in &mut snapshots {
            s.used_by_images = images
                .get(&s.snapshot_id)
                .map(|ids| ids.clone().into_boxed_slice())
                .unwrap_or_default();
        }
    }
    Ok((snapshots, gone, foreign))
}

/// A pass's applying, part after part: what it did so far, and the pace and time its
/// deletions and locks share.
struct Applying {
    outcome: RetentionOutcome,
    /// Deletions are planned ahead (a run's retention): each part's go to `outcome.left`
    /// untried, and are done once the pass has planned its parts (`flush_deferred`).
    defer: bool,
    /// A deletion failed for a reason that may pass is left for the next pass
    /// (`Pass::retry_failures`).
    retry: bool,
    /// Deletions and locks tried by the pass.
    tried: usize,
    pace: Pace,
    stop_at: DateTime<Utc>,
    /// Archive operations started by the pass, per region (`ARCHIVE_PER_PASS`).
    archiving: HashMap<String, usize>,
}

impl Applying {
    fn new(dry_run: bool, stop_at: DateTime<Utc>) -> Self {
        Applying {
            outcome: RetentionOutcome::new(dry_run),
            defer: false,
            retry: false,
            tried: 0,
            pace: Pace::until(stop_at),
            stop_at,
            archiving: HashMap::new(),
        }
    }

    /// Deletions and locks left for the next pass so far.
    fn left(&self) -> usize {
        self.outcome.unfinished + self.outcome.locks_left
    }

    /// Deletes what one part's plans say, one snapshot at a time, each logged with its reason.
    ///
    /// Deletions stop at `stop_at`: those left are counted in `unfinished`, for the next pass
    /// (deleting is slow at scale: EC2 allows about 5 DeleteSnapshot calls a second).
    async fn apply(&mut self, app: &App, plans: Vec<RegionPlan>) {
        self.apply_planned(app, &plans).await;
        self.outcome.absorb(plans, ANSWER_SETS);
    }

    /// Applies plans an earlier pass made and counted (`apply` without taking them in).
    async fn apply_planned(&mut self, app: &App, plans: &[RegionPlan]) {
        let Applying {
            outcome,
            defer,
            retry,
            tried,
            pace,
            stop_at,
            archiving,
        } = self;
        let mode = Mode {
            dry_run: outcome.dry_run,
            defer: *defer,
            retry: *retry,
            stop_at: *stop_at,
        };
        apply_plans(app, plans, mode, (pace, tried), archiving, outcome).await;
    }

    /// Snapshots of the deletions planned ahead since `from` (an index of `outcome.left`).
    fn deferred_since(&self, from: usize) -> usize {
        if !self.defer {
            return 0;
        }
        left_snapshots(&self.outcome.left[from..])
    }

    /// Does the deletions planned ahead, until the pass's time ends, and ends planning ahead
    /// for the rest of the pass. What doing them saw is settled with the parts they came from;
    /// what is left is recorded for the next pass, which does it first. Should that record
    /// fail, the pass fails: its message comes back and plans those parts again (what was
    /// deleted since is no longer listed).
    async fn flush_deferred(&mut self, app: &App, pass: &Pass<'_>) -> Result<(), Error> {
        if !self.defer {
            return Ok(());
        }
        self.defer = false;
        let deferred = std::mem::take(&mut self.outcome.left);
        if deferred.is_empty() {
            return Ok(());
        }
        self.outcome.unfinished = self
            .outcome
            .unfinished
            .saturating_sub(left_snapshots(&deferred));
        let planned = std::mem::replace(&mut self.outcome, RetentionOutcome::new(false));
        self.apply_planned(app, &left_plans(deferred)).await;
        let done = std::mem::replace(&mut self.outcome, planned);
        self.outcome.take_deferred(done);
        if self.outcome.left.is_empty() || carry_left(app, pass, &mut self.outcome).await {
            return Ok(());
        }
        Err(Error::Catalog(format!(
            "retention: {} deletion(s) planned by this pass and not done could not be recorded for the next pass",
            self.outcome.unfinished
        )))
    }
}

/// How a pass applies plans: for real or not, deletions done now or planned ahead
/// (`Applying::defer`), failures that may pass left for the next pass (`Applying::retry`),
/// until when.
#[derive(Debug, Clone, Copy)]
struct Mode {
    dry_run: bool,
    defer: bool,
    retry: bool,
    stop_at: DateTime<Utc>,
}

/// Applies one part's plans, its regions at once: EC2's request budgets (DeleteSnapshot's
/// among them) are per region, so a pass deletes at the sum of its regions' rates, not at
/// one region's after another's. Within a region one call at a time, as before; each region
/// applies into an outcome, pace and count of its own, taken into the pass's afterwards.
async fn apply_plans(
    app: &App,
    plans: &[RegionPlan],
    mode: Mode,
    (pace, tried): (&mut Pace, &mut usize),
    archiving: &mut HashMap<String, usize>,
    outcome: &mut RetentionOutcome,
) {
    let (pace_before, tried_before) = (*pace, *tried);
    let applied = join_all(plans.iter().map(|plan| {
        let mut region = RegionApplying {
            outcome: RetentionOutcome::new(mode.dry_run),
            pace: pace_before,
            tried: tried_before,
            archiving: archiving.get(&plan.region).copied().unwrap_or(0),
        };
        async move {
            apply_region(app, plan, mode, &mut region).await;
            region
        }
    }))
    .await;
    for (plan, region) in plans.iter().zip(applied) {
        pace.absorb(&region.pace);
        *tried += region.tried - tried_before;
        archiving.insert(plan.region.clone(), region.archiving);
        outcome.take_applied(region.outcome);
    }
}

/// What applying one region's plan did, and how far it got.
struct RegionApplying {
    outcome: RetentionOutcome,
    pace: Pace,
    /// Deletions and locks tried by the pass, this region's with those of the parts before.
    tried: usize,
    /// Archive operations started in the region by the pass (`ARCHIVE_PER_PASS`).
    archiving: usize,
}

/// Applies one region's plan (`apply_plans`): its locks, its deletions one at a time, each
/// logged with its reason, its tiers and archiving, then what it keeps for a reason.
async fn apply_region(app: &App, plan: &RegionPlan, mode: Mode, region: &mut RegionApplying) {
    let Mode {
        dry_run,
        defer,
        retry,
        stop_at,
    } = mode;
    let RegionApplying {
        outcome,
        pace,
        tried,
        archiving,
    } = region;
    let ec2 = app.aws.ec2_in(&plan.region);
    let home = plan.region == app.config.region;
    if !dry_run {
        report_missing(app, plan, outcome).await;
        // What is kept is locked before anything is deleted: protection first.
        lay_locks(app, plan, (&mut *pace, &mut *tried), stop_at, outcome).await;
        // Then the archive, before the deletions: at most `ARCHIVE_PER_PASS` calls, and what
        // a pass out of time leaves of it waits for the next night, while deletions left go
        // on in the next pass.
        archive_sets(app, plan, (stop_at, &mut *archiving), outcome).await;
    }
    let deleted_from = outcome.deleted.len();
    // EC2 throttled a deletion here (its retries spent): the rest waits for the next pass,
    // which comes once the region's budget has refilled, rather than failing one by one.
    let mut throttled = false;
    for (instance_id, set) in plan.deletions() {
        let mut gone: Vec<&String> = Vec::new();
        // Its snapshots left for lack of time (or because EC2 throttled the region).
        let mut left: Vec<String> = Vec::new();
        // Once one snapshot of a set is refused (locked, in use, an error), the rest of the
        // set is left as it is: a set is deleted whole or kept as whole as it can be.
        let mut refused = false;
        // Once one failed for a reason that may pass, the rest of the set goes with it to the
        // next pass (`Mode::retry`).
        let mut retrying = false;
        for snapshot_id in &set.snapshots {
            let at = format!("{}/{snapshot_id}", plan.region);
            if dry_run {
                info!(region = %plan.region, instance_id, run_id = %set.run_id, snapshot_id = %snapshot_id, reason = %set.reason, "would delete (dry run)");
                continue;
            }
            if refused {
                info!(region = %plan.region, instance_id, run_id = %set.run_id, snapshot_id = %snapshot_id, "kept: another snapshot of its set could not be deleted");
                continue;
            }
            // At least one deletion a pass, however short: every pass makes progress.
            let began = Utc::now();
            if defer || throttled || retrying || (*tried > 0 && !pace.fits(began)) {
                outcome.unfinished += 1;
                left.push(snapshot_id.clone());
                continue;
            }
            *tried += 1;
            let subject = format!("{snapshot_id} of {instance_id} in {}", plan.region);
            let deletion = snapshots::delete(&ec2, snapshot_id, &subject).await;
            pace.took(began, Utc::now());
            match deletion {
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
                    refused = true;
                    warn!(region = %plan.region, instance_id, snapshot_id = %snapshot_id, "kept: in use (by an AMI)");
                    outcome.kept.push(format!("{at}: in use"));
                }
                Deletion::Failed(err) if err.is_throttling() => {
                    warn!(region = %plan.region, instance_id, run_id = %set.run_id, snapshot_id = %snapshot_id, code = err.aws_code().unwrap_or("Unknown"), "deletions in the region throttled: the rest waits for the next pass");
                    throttled = true;
                    outcome.unfinished += 1;
                    left.push(snapshot_id.clone());
                    outcome.regions_throttled.push(plan.region.clone());
                }
                Deletion::Failed(err) => {
                    // Locked since the plan read the locks (or they were not readable)?
                    let ids = [snapshot_id.clone()];
                    let lock = snapshots::locks_by_id(&ec2, &plan.region, &ids).await;
                    let lock = lock.ok().and_then(|mut l| l.remove(snapshot_id));
                    refused = lock.is_some() || !retry || err.is_permanent();
                    match lock {
                        Some(lock) => {
                            let lock = lock.describe();
                            warn!(region = %plan.region, instance_id, run_id = %set.run_id, snapshot_id = %snapshot_id, code = err.aws_code().unwrap_or("Unknown"), "kept: {lock}");
                            outcome.locked.push(format!("{at}: {lock}"));
                        }
                        // Not locked, and a reason that may pass (a 5xx, no answer, after the
                        // SDK's retries): the next pass tries the set again.
                        None if !refused => {
                            warn!(region = %plan.region, instance_id, run_id = %set.run_id, snapshot_id = %snapshot_id, code = err.aws_code().unwrap_or("Unknown"), error = %err, "deletion failed for a reason that may pass: the next pass tries the set again");
                            retrying = true;
                            outcome.retried += 1;
                            outcome.unfinished += 1;
                            left.push(snapshot_id.clone());
                        }
                        None => {
                            warn!(region = %plan.region, instance_id, run_id = %set.run_id, snapshot_id = %snapshot_id, code = err.aws_code().unwrap_or("Unknown"), error = %err, "snapshot not deleted");
                            if !err.is_permanent() {
                                outcome.transient_failures += 1;
                            }
                            outcome.failed.push(format!("{at}: {err}"));
                        }
                    }
                }
            }
        }
        if !left.is_empty() {
            outcome.left.push(LeftDeletion {
                region: plan.region.clone(),
                instance_id: instance_id.to_string(),
                run_id: set.run_id.clone(),
                kind: set.kind,
                started_at: set.started_at,
                reason: set.reason.clone(),
                snapshots: left,
            });
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
    if !dry_run {
        binned(app, &plan.region, outcome, deleted_from).await;
        let home = plan.region == app.config.region;
        let changes = tier_changes(plan, region_policy(&app.config, home).retain, home);
        if !changes.is_empty() {
            // Out of time, what is left is for the next pass, which plans again.
            let (labelled, left) = if Utc::now() < stop_at {
                label_tiers(app, &plan.region, &changes, stop_at).await
            } else {
                (0, changes.len())
            };
            outcome.tiers_labelled += labelled;
            outcome.unfinished += left;
        }
    }
    for (instance_id, sets) in &plan.instances {
        for set in sets.iter().filter(|s| s.action == Action::Keep) {
            let line = format!("{}/{}: {}", plan.region, set.run_id, set.reason);
            match set.held {
                Some(Held::Image) => {
                    warn!(region = %plan.region, instance_id, run_id = %set.run_id, reason = %set.reason, "set kept: used by an AMI");
                    outcome.kept.push(line);
                }
                Some(Held::Lock) => {
                    info!(region = %plan.region, instance_id, run_id = %set.run_id, reason = %set.reason, "set kept: under a snapshot lock");
                    outcome.locked.push(line);
                }
                None => {}
            }
        }
    }
}

/// Brings each kept set's tiers up to date where they changed (`tier_changes`), `LABEL_CHUNK`
/// sets at a time until `stop_at`: first its snapshots' `ConsistentSnapshot:Tiers` tag (one
/// CreateTags per distinct label), then the catalog's record (one write per home set, or per
/// copy). The record is written last, so that an invocation stopped in between leaves it
/// differing and the next pass does both again. Answers how many sets were labelled and how
/// many are left for the next pass; a failure is logged, and the next retention tries again.
async fn label_tiers(
    app: &App,
    region: &str,
    changes: &[TierChange],
    stop_at: DateTime<Utc>,
) -> (usize, usize) {
    let ec2 = app.aws.ec2_in(region);
    let mut labelled = 0;
    for (n, chunk) in changes.chunks(LABEL_CHUNK).enumerate() {
        if n > 0 && Utc::now() >= stop_at {
            return (labelled, changes.len() - labelled);
        }
        let mut by_label: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for change in chunk {
            by_label
                .entry(Tier::list(&change.tiers))
                .or_default()
                .extend(change.snapshot_ids.iter().cloned());
        }
        for (label, ids) in &by_label {
            let subject = format!("{} snapshot(s) kept by {label} in {region}", ids.len());
            if let Err(err) = snapshots::tag_many(&ec2, ids, (TAG_TIERS, label), &subject).await {
                warn!(region = %region, code = err.aws_code().unwrap_or("Unknown"), error = %err, "tier tags not written: the next retention tries again");
                return (labelled, 0);
            }
        }
        if let Err(err) = app.aws.catalog.record_tiers(chunk).await {
            warn!(region = %region, code = err.aws_code().unwrap_or("Unknown"), error = %err, "retention tiers not recorded in the catalog: the next retention tries again");
            return (labelled, 0);
        }
        labelled += chunk.len();
    }
    info!(region = %region, sets = labelled, "retention tiers recorded");
    (labelled, 0)
}

/// Moves the sets the plan archives to the archive tier: at most `ARCHIVE_PER_PASS` archive
/// operations started in a region a pass (AWS runs 25 at once), until `stop_at`; a snapshot
/// already archived or still being archived (which takes AWS hours) is skipped without using
/// that budget. What is left waits for the next pass or night: it is not a deletion left
/// undone, so it neither queues passes nor counts as `unfinished` (whose alarm is about
/// deletions). A refusal for a limit ends the region's archiving until the next retention.
async fn archive_sets(
    app: &App,
    plan: &RegionPlan,
    (stop_at, started): (DateTime<Utc>, &mut usize),
    outcome: &mut RetentionOutcome,
) {
    let wanted: Vec<(&str, &SetDecision)> = plan
        .instances
        .iter()
        .flat_map(|(instance, sets)| {
            sets.iter()
                .filter(|s| s.archive)
                .map(move |s| (instance.as_str(), s))
        })
        .collect();
    if wanted.is_empty() {
        return;
    }
    let ec2 = app.aws.ec2_in(&plan.region);
    for (instance_id, set) in wanted {
        for snapshot_id in &set.snapshots {
            if *started >= ARCHIVE_PER_PASS || Utc::now() >= stop_at {
                info!(region = %plan.region, started, "archiving goes on in the next retention");
                return;
            }
            let subject = format!("{snapshot_id} of {instance_id} in {}", plan.region);
            match snapshots::archive(&ec2, snapshot_id, &subject).await {
                Archival::Started => {
                    *started += 1;
                    info!(region = %plan.region, instance_id, run_id = %set.run_id, snapshot_id = %snapshot_id, reason = %set.reason, "snapshot moved to the archive tier");
                    outcome
                        .archived
                        .push(format!("{}/{snapshot_id}", plan.region));
                }
                Archival::AlreadyMoving => {}
                Archival::Failed(err) if err.aws_code().is_some_and(|c| c.contains("Limit")) => {
                    warn!(region = %plan.region, code = err.aws_code().unwrap_or("Unknown"), "archive limit reached: the next retention archives the rest");
                    return;
                }
                Archival::Failed(err) => {
                    *started += 1;
                    warn!(region = %plan.region, instance_id, snapshot_id = %snapshot_id, code = err.aws_code().unwrap_or("Unknown"), error = %err, "snapshot not archived: the next retention tries again");
                    outcome
                        .archive_failed
                        .push(format!("{}/{snapshot_id}: {err}", plan.region));
                }
            }
        }
    }
}

/// Archive operations started in one region by one pass (a failed call counts too).
const ARCHIVE_PER_PASS: usize = 25;

/// The most snapshots deleted by someone else reported in a region a pass (each is logged and
/// looked up in the Recycle Bin): the rest are reported by the next retention.
const MAX_MISSING: usize = 1_000;

/// Sets labelled between two looks at the clock.
const LABEL_CHUNK: usize = 100;

/// Of the snapshots of `region` deleted by this pass (`outcome.deleted[from..]`), those a
/// Recycle Bin rule keeps move to `outcome.recoverable` with the date they leave the bin: they
/// are still billed and can be restored, so they are not counted as deleted. Should the bin not
/// be readable, they stay counted as deleted and the log says the count may be high.
async fn binned(app: &App, region: &str, outcome: &mut RetentionOutcome, from: usize) {
    let prefix = format!("{region}/");
    let ids: Vec<String> = outcome.deleted[from..]
        .iter()
        .filter_map(|at| at.strip_prefix(&prefix).map(str::to_string))
        .collect();
    if ids.is_empty() {
        return;
    }
    let bin = match snapshots::in_recycle_bin(&app.aws.ec2_in(region), region, &ids).await {
        Ok(bin) => bin,
        Err(err) => {
            warn!(region = %region, code = err.aws_code().unwrap_or("Unknown"), error = %err, "Recycle Bin not readable: deleted snapshots a rule keeps are counted as deleted");
            return;
        }
    };
    if bin.is_empty() {
        return;
    }
    let mut kept_deleted = Vec::with_capacity(outcome.deleted.len());
    for (i, at) in outcome.deleted.drain(..).enumerate() {
        let exit = (i >= from)
            .then(|| at.strip_prefix(&prefix))
            .flatten()
            .and_then(|id| bin.get(id));
        match exit {
            Some(exit) => {
                let until = exit
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "a date not reported".to_string());
                info!(region = %region, snapshot = %at, until = %until, "deleted into the Recycle Bin: billed and recoverable until then");
                outcome
                    .recoverable
                    .push(format!("{at}: recoverable until {until}"));
            }
            None => kept_deleted.push(at),
        }
    }
    outcome.deleted = kept_deleted;
}

/// `{"action":"retention","dry_run":…}`: the plan, and what was deleted; a dry run may be of
/// `only` these instances (the plan is made for the fleet, the answer shows theirs).
/// Deletions stop shortly before `deadline`; the answer says how many are left.
pub async fn on_demand(
    app: &App,
    (dry_run, only): (bool, Option<&[String]>),
    deadline: DateTime<Utc>,
) -> Result<Value, Error> {
    let stop_at = stop_time(Utc::now(), deadline);
    let pass = Pass {
        dry_run,
        only: only.filter(|_| dry_run),
        resume_after: None,
        missing: MissingLook::Everywhere,
        carry: None,
        left_from: None,
        retry_failures: false,
    };
    let outcome = retention_pass(app, pass, stop_at).await?;
    if !dry_run {
        emit_metrics(app, &outcome.metric_counts(), &[("Event", "retention")]);
    }
    info!(dry_run, "{}", outcome.summary_line());
    Ok(outcome.to_bounded_json(ANSWER_SETS))
}

/// The run's last step: retention in every region, then the run's markers are released.
/// One pass: plans, deletes until a few seconds before `deadline`, and if deletions are
/// left, queues the next pass. Deletions it planned and had no time for are recorded in the
/// catalog, and the next pass does them first, without reading EC2 again (a plan is made
/// once a run); anything else left (a lock to lay, a tier to record) is planned again. Each
/// snapshot is deleted once. The run's retention is over with the last pass.
pub async fn retention_job(
    app: &App,
    job: RetentionJob,
    deadline: DateTime<Utc>,
    message_id: &str,
) -> Result<(), Error> {
    dispatched_run(app, &job.run_id, "retention").await?;
    // A duplicate message ends here: after the retention (its markers may be released, so
    // the claim below could be taken again), or when another message took this pass.
    let store = RunMarkerStore::new(&app.aws.catalog, &job.run_id);
    if store.read().await?.retained {
        info!(run_id = %job.run_id, pass = job.pass, "retention already done (a duplicate delivery)");
        // The pass that ended it may have been stopped before it released the run's markers.
        store.release_finished().await;
        return Ok(());
    }
    if !store.claim_retention_pass(job.pass, message_id).await? {
        info!(run_id = %job.run_id, pass = job.pass, "retention pass already taken by another message");
        return Ok(());
    }
    // Snapshots deleted by someone else are looked for once a retention, by its first pass
    // and, where that one did not reach, by the passes that go on from where it stopped
    // (`RetentionJob::missing_through`).
    let missing = match (&job.deleted_outside_before, &job.missing_through) {
        (None, _) => MissingLook::Everywhere,
        (Some(_), Some(after)) => MissingLook::After(after.clone()),
        (Some(_), None) => MissingLook::Nowhere,
    };
    let pass = Pass {
        dry_run: false,
        only: None,
        resume_after: job.resume_after.clone(),
        missing,
        carry: Some((&job.run_id, job.pass)),
        left_from: job.left_from,
        retry_failures: job.retries < RETENTION_RETRIES,
    };
    let stop_at = stop_time(Utc::now(), deadline);
    let mut outcome = retention_pass(app, pass, stop_at).await?;
    outcome.deleted_before = job.deleted_before;
    outcome.locks_laid_before = job.locked_before;
    outcome.deleted_outside_before = job.deleted_outside_before.unwrap_or(0);
    outcome.earlier = job.earlier.clone();
    if let Some(next) = next_pass(&job, &outcome) {
        if next.retries > job.retries {
            info!(run_id = %job.run_id, failed = outcome.transient_failures + outcome.retried, retries = next.retries, "deletions failed for a reason that may pass: retention tries again in the next pass");
        } else {
            info!(run_id = %job.run_id, deleted = outcome.deleted.len(), left = outcome.unfinished, instances_left = outcome.instances_left, stalled = next.stalled, "retention continues in the next pass");
        }
        return requeue(app, Job::Retention(next)).await;
    }
    // A failed deletion is named (with its AWS code) in the summary and counted in the
    // DeletionsFailed metric, which an alarm watches; the next run's retention tries it again.
    // It does not fail the job: five failed tries would only add a DLQ message a night.
    if outcome.unfinished > 0 {
        error!(run_id = %job.run_id, left = outcome.unfinished, "retention stopped: {RETENTION_STALLED_PASSES} passes in a row deleted nothing (planning alone takes the invocation's time, or EC2 throttled every deletion); {} deletions are left for the next run", outcome.unfinished);
    }
    if store.mark_retained().await? {
        let mut counts = outcome.metric_counts().to_vec();
        // Only here: an on-demand retention that leaves deletions says so in its answer.
        counts.push(("DeletionsUnfinished", outcome.unfinished));
        emit_metrics(
            app,
            &counts,
            &[("RunId", &job.run_id), ("Event", "retention")],
        );
        let summary = outcome.to_bounded_json(LOG_LINE_SETS).to_string();
        if !outcome.needs_attention() {
            info!(run_id = %job.run_id, retention = %summary, "{}", outcome.summary_line());
        } else {
            warn!(run_id = %job.run_id, retention = %summary, "{}", outcome.summary_line());
        }
    }
    store.release_finished().await;
    Ok(())
}
