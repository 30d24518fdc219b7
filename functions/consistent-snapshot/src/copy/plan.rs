//! Copies of a run's finished snapshot sets in other regions, for disaster recovery, as pure
//! decisions: each instance's copy regions, which copies to start from the run's snapshots and
//! the copies already in each region, and what a copy carries.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::catalog::{CopyRecord, CopyTargets, SeenFinal, SetRecord, Verdict};
use crate::model::snapshot::SnapshotFacts;
use crate::model::state::SnapshotState;
use crate::model::tags::{
    cut_chars, DESCRIPTION_MAX_CHARS, TAG_NAME, TAG_RUN_ID, TAG_SOURCE_REGION, TAG_SOURCE_SNAPSHOT,
};

/// A copy already in a destination region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingCopy {
    pub source_snapshot_id: String,
    pub snapshot_id: String,
    pub state: SnapshotState,
    /// Why it is in `error`, as EC2 says ("Given key ID is not accessible").
    pub state_message: Option<String>,
}

/// Copies whose CopySnapshot answer was lost (the call took effect, the function never learnt
/// the copy's id): in the destination, not recorded, tagged as a copy of one of `sources`,
/// with exactly the description this function gives that copy, started after its source. A
/// description is fixed when a snapshot is created, so tagging a snapshot cannot make it one
/// of these. Answers (source id, copy facts).
pub fn lost_answer_copies<'a>(
    sources: &[SnapshotFacts],
    unrecorded: &'a [(SnapshotFacts, String)],
    home: &str,
) -> Vec<(String, &'a SnapshotFacts)> {
    unrecorded
        .iter()
        .filter_map(|(copy, description)| {
            let source_id = copy.tags.get(TAG_SOURCE_SNAPSHOT)?;
            let source = sources.iter().find(|s| &s.snapshot_id == source_id)?;
            let after = match (source.start_time, copy.start_time) {
                (Some(source), Some(copy)) => copy >= source,
                _ => false,
            };
            (after && *description == copy_description(source, home))
                .then(|| (source_id.clone(), copy))
        })
        .collect()
}

/// The copies already in a destination region: those the catalog records that EC2 still
/// reports. A snapshot merely tagged as a copy (`SourceSnapshotId`) is not one: were it, a
/// tag would be enough to keep a set from ever being copied.
pub fn existing_copies(recorded: &[&CopyRecord], found: &[SnapshotFacts]) -> Vec<ExistingCopy> {
    found
        .iter()
        .filter_map(|f| {
            let record = recorded.iter().find(|c| c.snapshot_id == f.snapshot_id)?;
            Some(ExistingCopy {
                source_snapshot_id: record.source_snapshot_id.clone(),
                snapshot_id: f.snapshot_id.clone(),
                state: f.state.clone(),
                state_message: f.state_message.clone(),
            })
        })
        .collect()
}

/// What the copy step does now, and where the copies stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CopyPlan {
    /// (region, source snapshot) pairs to copy now.
    pub to_start: Vec<(String, String)>,
    /// Copies still pending, by region.
    pub pending: BTreeMap<String, usize>,
    pub completed: BTreeMap<String, usize>,
    /// Copies that ended in `error`: `region/copy (source)`.
    pub failed: Vec<String>,
    /// Instances whose copy-region override cannot be read: nothing of theirs is copied.
    pub invalid: Vec<String>,
    /// Regions that refused the copy step for good (a permission, a region not enabled, a
    /// key): the AWS code and how many copies were not made there.
    pub regions_failed: BTreeMap<String, RegionFailure>,
}

/// A region that refused the copy step for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionFailure {
    pub code: String,
    pub copies_not_made: usize,
}

/// Why a pass cannot work in a region: AWS's code, and whether another try could succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionFault {
    pub code: String,
    pub permanent: bool,
}

impl RegionFault {
    /// How an error reads as a region's fault: its AWS code, and whether it is for good.
    pub fn of(err: &crate::error::Error) -> Self {
        RegionFault {
            code: err.aws_code().unwrap_or("Unknown").to_string(),
            permanent: err.is_permanent(),
        }
    }
}

impl CopyPlan {
    /// Every copy exists and is final (or its region refused it for good).
    pub fn is_final(&self) -> bool {
        self.to_start.is_empty() && self.pending.values().all(|n| *n == 0)
    }

    /// Takes out of `to_start` the copies into regions the pass cannot work in: into a region
    /// that refused for good they are failed there, with the code (final: no later pass tries
    /// again); into one that did not answer they are pending, for the next pass. One region
    /// never holds up the others.
    pub fn without_regions(mut self, faults: &BTreeMap<String, RegionFault>) -> Self {
        let (blocked, go): (Vec<_>, Vec<_>) = self
            .to_start
            .into_iter()
            .partition(|(region, _)| faults.contains_key(region));
        self.to_start = go;
        for (region, _) in blocked {
            let Some(fault) = faults.get(&region) else {
                continue;
            };
            if fault.permanent {
                self.regions_failed
                    .entry(region)
                    .or_insert_with(|| RegionFailure {
                        code: fault.code.clone(),
                        copies_not_made: 0,
                    })
                    .copies_not_made += 1;
            } else {
                *self.pending.entry(region).or_default() += 1;
            }
        }
        self
    }

    /// Adds another run's plan (a copy step that also copies earlier runs).
    pub fn merge(&mut self, other: CopyPlan) {
        self.to_start.extend(other.to_start);
        for (region, n) in other.pending {
            *self.pending.entry(region).or_default() += n;
        }
        for (region, n) in other.completed {
            *self.completed.entry(region).or_default() += n;
        }
        self.failed.extend(other.failed);
        for why in other.invalid {
            if !self.invalid.contains(&why) {
                self.invalid.push(why);
            }
        }
        for (region, failure) in other.regions_failed {
            self.regions_failed
                .entry(region)
                .or_insert_with(|| RegionFailure {
                    code: failure.code.clone(),
                    copies_not_made: 0,
                })
                .copies_not_made += failure.copies_not_made;
        }
    }

    /// Copies that failed: those in `error`, and those a region refused for good.
    pub fn failed_count(&self) -> usize {
        self.failed.len()
            + self
                .regions_failed
                .values()
                .map(|f| f.copies_not_made)
                .sum::<usize>()
    }
}

pub use crate::model::tags::copy_regions_of;

/// How far back a run's copy step looks for earlier sets that are not copied yet.
pub const BACKLOG_DAYS: i64 = 7;
/// How many earlier runs one copy step takes on, newest first.
pub const BACKLOG_RUNS: usize = 7;

/// A set as the backlog sees it: when it was taken, its run, how many snapshots it has.
type SetTaken<'a> = (DateTime<Utc>, &'a str, usize);

/// The earlier runs a copy step takes on: a run whose copy step ended with copies not made (a
/// region at its limit until the deadline, one that refused that night, a function stopped
/// for a day) would otherwise never be copied, since each step copied only its own run.
/// Built from the catalog's records one at a time, keeping only those of the last
/// `BACKLOG_DAYS`: consistent sets, and how many copies each has in each region.
#[derive(Debug, Default)]
pub struct Backlog {
    since: Option<DateTime<Utc>>,
    /// (instance, run) -> when the set was taken, and its snapshots.
    sets: BTreeMap<(String, String), (DateTime<Utc>, usize)>,
    /// (instance, run, region) -> copies recorded there.
    copies: HashMap<(String, String, String), usize>,
    /// (instance, run) -> the regions that run's copy step decided the set goes to.
    targets: HashMap<(String, String), Vec<String>>,
}

impl Backlog {
    /// A backlog of the sets taken since `BACKLOG_DAYS` before `start` (the run's start).
    pub fn since(start: DateTime<Utc>) -> Self {
        Backlog {
            since: Some(start - chrono::Duration::days(BACKLOG_DAYS)),
            ..Backlog::default()
        }
    }

    pub fn add_set(&mut self, set: &SetRecord) {
        if set.is_backup() && self.since.is_none_or(|since| set.started_at >= since) {
            self.sets.insert(
                (set.instance_id.clone(), set.run_id.clone()),
                (set.started_at, set.snapshots.len()),
            );
        }
    }

    pub fn add_copy(&mut self, copy: &CopyRecord) {
        self.add_copy_at(
            (&copy.instance_id, &copy.run_id, &copy.region),
            copy.started_at,
        );
    }

    /// A copy of the instance's set of the run in the region, started then (the copy step's,
    /// or a vault copy).
    pub fn add_copy_at(
        &mut self,
        (instance, run, region): (&str, &str, &str),
        started_at: DateTime<Utc>,
    ) {
        // A copy is started after its set: an older copy is of an older set.
        if self.since.is_none_or(|since| started_at >= since) {
            *self
                .copies
                .entry((instance.to_string(), run.to_string(), region.to_string()))
                .or_default() += 1;
        }
    }

    /// Where a run's copy step decided an instance's sets go (its override tag's regions,
    /// none if the tag was refused): that set is short of copies only there.
    pub fn add_targets(&mut self, run_id: &str, targets: &CopyTargets) {
        self.targets.insert(
            (targets.instance_id.clone(), run_id.to_string()),
            targets.regions().unwrap_or_default(),
        );
    }

    /// The runs other than `this_run` with a consistent set that has fewer copies than
    /// snapshots in one of its regions (as its copy step decided them, else `regions`),
    /// newest first, at most `BACKLOG_RUNS`. Only each
    /// instance's newest `keep` consistent sets count (`COPY_RETAIN_COUNT`): an older one's
    /// copies are what retention deletes in the copy regions, and copying it again would only
    /// be deleted again. Only a hint of where to look: each run's copy pass decides from EC2
    /// and the instance's own regions.
    pub fn runs(&self, this_run: &str, regions: &[String], keep: usize) -> Vec<String> {
        let mut by_instance: BTreeMap<&str, Vec<SetTaken<'_>>> = BTreeMap::new();
        for ((instance, run), (taken, size)) in &self.sets {
            by_instance
                .entry(instance.as_str())
                .or_default()
                .push((*taken, run.as_str(), *size));
        }
        let mut missing: Vec<(DateTime<Utc>, &str)> = Vec::new();
        for (instance, mut sets) in by_instance {
            sets.sort_by(|a, b| b.cmp(a));
            for (taken, run, size) in sets.into_iter().take(keep) {
                let decided = self.targets.get(&(instance.to_string(), run.to_string()));
                let short = decided.map_or(regions, Vec::as_slice).iter().any(|region| {
                    let key = (instance.to_string(), run.to_string(), region.clone());
                    self.copies.get(&key).copied().unwrap_or(0) < size
                });
                if run != this_run && short {
                    missing.push((taken, run));
                }
            }
        }
        missing.sort_by(|a, b| b.cmp(a));
        let mut runs: Vec<String> = Vec::new();
        for (_, run) in missing {
            if !runs.iter().any(|r| r == run) {
                runs.push(run.to_string());
            }
            if runs.len() == BACKLOG_RUNS {
                break;
            }
        }
        runs
    }
}

/// A snapshot of a recorded set, as the copy step plans from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub snapshot_id: String,
    pub instance_id: String,
    /// Its state when EC2 was asked; `None` until it is (it is asked right before its copy
    /// starts, so a pass describes only the snapshots it copies).
    pub state: Option<SnapshotState>,
}

/// What a copy carries of its source set, so that it stands on its own once retention has
/// deleted the set at home: whether the set is a backup, whether file-system consistent only,
/// and how many snapshots it has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    pub consistent: bool,
    pub file_system: bool,
    pub set_size: u32,
}

impl Carried {
    pub fn of(set: &SetRecord) -> Self {
        Carried {
            consistent: set.is_backup(),
            file_system: set.verdict == Verdict::FileSystemConsistent,
            set_size: u32::try_from(set.snapshots.len()).unwrap_or(u32::MAX),
        }
    }
}

/// The catalog's record of a copy the function started, or found started (a lost answer).
pub fn copy_record(
    (run_id, instance_id): (&str, &str),
    (region, source_snapshot_id, snapshot_id): (&str, &str, &str),
    (carried, device): (Carried, Option<&str>),
    started_at: DateTime<Utc>,
) -> CopyRecord {
    CopyRecord {
        run_id: run_id.to_string(),
        instance_id: instance_id.to_string(),
        region: region.to_string(),
        source_snapshot_id: source_snapshot_id.to_string(),
        snapshot_id: snapshot_id.to_string(),
        started_at,
        consistent: carried.consistent,
        file_system: carried.file_system,
        imported: false,
        set_size: carried.set_size,
        seen_final: None,
        device: device.map(str::to_string),
    }
}

/// The snapshots of a run's recorded sets, set by set (so that a set's copies start
/// together, and a region's limit leaves as few sets partial as it can).
pub fn sources_of(sets: &[SetRecord]) -> Vec<Source> {
    let mut sets: Vec<&SetRecord> = sets.iter().collect();
    sets.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    sets.iter()
        .flat_map(|set| {
            set.snapshots.iter().map(|r| Source {
                snapshot_id: r.snapshot_id.clone(),
                instance_id: set.instance_id.clone(),
                state: None,
            })
        })
        .collect()
}

/// The copies whose final state the catalog records (`CopyRecord::seen_final`): a pass
/// takes them as they were seen, and describes only the others.
pub fn seen_copies(recorded: &[&CopyRecord]) -> Vec<ExistingCopy> {
    recorded
        .iter()
        .filter_map(|c| {
            let seen = c.seen_final.as_ref()?;
            Some(ExistingCopy {
                source_snapshot_id: c.source_snapshot_id.clone(),
                snapshot_id: c.snapshot_id.clone(),
                state: seen.state.clone(),
                state_message: seen.message.clone(),
            })
        })
        .collect()
}

/// The records of copies that EC2 now reports final (completed, or in error) and whose
/// record does not say so yet, with the state seen.
pub fn newly_final(recorded: &[&CopyRecord], found: &[SnapshotFacts]) -> Vec<CopyRecord> {
    found
        .iter()
        .filter(|f| matches!(f.state, SnapshotState::Completed | SnapshotState::Error))
        .filter_map(|f| {
            let record = recorded.iter().find(|c| c.snapshot_id == f.snapshot_id)?;
            let seen = SeenFinal {
                state: f.state.clone(),
                message: f.state_message.clone(),
            };
            (record.seen_final.as_ref() != Some(&seen)).then(|| CopyRecord {
                seen_final: Some(seen),
                ..(*record).clone()
            })
        })
        .collect()
}

/// Decides which copies to start. `sources` are the run's snapshots with the regions their
/// instance's sets go to (or why that cannot be read); only `completed` ones are copied (one
/// whose state is not known yet is planned, and checked before its copy starts).
pub fn plan_copies(
    sources: &[(Source, Result<Vec<String>, String>)],
    existing: &BTreeMap<String, Vec<ExistingCopy>>,
) -> CopyPlan {
    let mut plan = CopyPlan::default();
    let mut invalid = BTreeSet::new();
    for (source, regions) in sources {
        let regions = match regions {
            Ok(regions) => regions,
            Err(why) => {
                invalid.insert(format!("{}: {why}", source.instance_id));
                continue;
            }
        };
        for region in regions {
            let copy = existing.get(region).and_then(|copies| {
                copies
                    .iter()
                    .find(|c| c.source_snapshot_id == source.snapshot_id)
            });
            match (copy, &source.state) {
                (None, None | Some(SnapshotState::Completed)) => plan
                    .to_start
                    .push((region.clone(), source.snapshot_id.clone())),
                // Not completed yet: copied once it is; a failed snapshot is not copied.
                (None, Some(SnapshotState::Pending)) => {
                    *plan.pending.entry(region.clone()).or_default() += 1
                }
                (None, Some(_)) => {}
                (Some(c), _) if c.state == SnapshotState::Completed => {
                    *plan.completed.entry(region.clone()).or_default() += 1
                }
                (Some(c), _) if c.state == SnapshotState::Error => {
                    plan.failed.push(match &c.state_message {
                        Some(why) => format!(
                            "{region}/{} (copy of {}): {why}",
                            c.snapshot_id, source.snapshot_id
                        ),
                        None => format!(
                            "{region}/{} (copy of {})",
                            c.snapshot_id, source.snapshot_id
                        ),
                    })
                }
                (Some(_), _) => *plan.pending.entry(region.clone()).or_default() += 1,
            }
        }
    }
    plan.invalid = invalid.into_iter().collect();
    plan
}

/// The copy step's result, logged once per run.
#[derive(Debug, Clone, Serialize)]
pub struct CopySummary {
    pub run_id: String,
    pub started_now: usize,
    pub completed: BTreeMap<String, usize>,
    pub pending: BTreeMap<String, usize>,
    pub failed: Vec<String>,
    pub invalid: Vec<String>,
    /// Regions that refused for good, with the AWS code and the copies not made there.
    pub regions_failed: BTreeMap<String, RegionFailure>,
    /// Copies never started before the step's deadline.
    pub not_started: usize,
    pub timed_out: bool,
    /// Earlier runs whose missing copies this step took on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backlog: Vec<String>,
}

/// The tags of a copy: the source's own (but AWS's reserved `aws:` ones), and where it was
/// copied from. CopySnapshot copies no tags by itself.
pub fn copy_tags(source: &SnapshotFacts, home: &str) -> Vec<(String, String)> {
    let mut tags: Vec<(String, String)> = source
        .tags
        .iter()
        .filter(|(k, _)| !k.starts_with("aws:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tags.push((TAG_SOURCE_SNAPSHOT.into(), source.snapshot_id.clone()));
    tags.push((TAG_SOURCE_REGION.into(), home.to_string()));
    tags
}

/// The description of a copy: what it is a copy of, and of which run.
pub fn copy_description(source: &SnapshotFacts, home: &str) -> String {
    let name = source.tags.get(TAG_NAME).map(String::as_str).unwrap_or("-");
    let run = source
        .tags
        .get(TAG_RUN_ID)
        .map(String::as_str)
        .unwrap_or("-");
    cut_chars(
        &format!(
            "Copy of {} ({name}) from {home}, consistent-snapshot run {run}",
            source.snapshot_id
        ),
        DESCRIPTION_MAX_CHARS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::catalog::{CopyTargets, RecordedSnapshot, Verdict};
    use crate::model::tags::{TAG_COPY_REGIONS, TAG_INSTANCE_ID};

    /// A set's snapshot as planned, in this state (`""` for not described yet).
    fn planned(id: &str, state: &str) -> Source {
        Source {
            snapshot_id: id.into(),
            instance_id: "i-1".into(),
            state: (!state.is_empty()).then(|| state.into()),
        }
    }

    fn source(id: &str, state: &str) -> SnapshotFacts {
        SnapshotFacts {
            snapshot_id: id.into(),
            volume_id: "vol-1".into(),
            state: state.into(),
            tags: [(TAG_INSTANCE_ID.to_string(), "i-1".to_string())].into(),
            ..Default::default()
        }
    }

    fn set(instance: &str, run: &str, days_ago: i64, verdict: Verdict, size: usize) -> SetRecord {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let taken = now - chrono::Duration::days(days_ago);
        SetRecord {
            run_id: run.into(),
            instance_id: instance.into(),
            name: instance.into(),
            region: "us-east-1".into(),
            started_at: taken,
            expected: Vec::new(),
            snapshots: (0..size)
                .map(|i| RecordedSnapshot {
                    snapshot_id: format!("snap-{instance}-{run}-{i}"),
                    volume_id: format!("vol-{i}"),
                    device: format!("xvd{i}"),
                    start_time: taken,
                })
                .collect(),
            verdict,
            reason: None,
            cause: None,
            verified_at: taken,
            verified_by: "test".into(),
            fallback: false,
        }
    }

    fn copied(set: &SetRecord, region: &str, n: usize) -> Vec<CopyRecord> {
        (0..n)
            .map(|i| CopyRecord {
                run_id: set.run_id.clone(),
                instance_id: set.instance_id.clone(),
                region: region.into(),
                source_snapshot_id: set.snapshots[i].snapshot_id.clone(),
                snapshot_id: format!("copy-{i}"),
                started_at: set.started_at,
                consistent: true,
                file_system: false,
                imported: false,
                set_size: set.snapshots.len() as u32,
                seen_final: None,
                device: None,
            })
            .collect()
    }

    #[test]
    fn the_backlog_is_the_recent_consistent_sets_missing_a_copy_newest_first() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let regions = vec!["eu-west-1".to_string(), "us-west-2".to_string()];
        let tonight = set("i-1", "r0", 0, Verdict::Consistent, 2);
        let whole = set("i-1", "r1", 1, Verdict::Consistent, 2);
        let partial = set("i-1", "r2", 2, Verdict::Consistent, 2);
        let none = set("i-2", "r3", 3, Verdict::Consistent, 3);
        let crash = set("i-2", "r4", 1, Verdict::CrashConsistent, 3);
        let old = set("i-2", "r5", BACKLOG_DAYS + 1, Verdict::Consistent, 3);
        let mut backlog = Backlog::since(now);
        for s in [&tonight, &whole, &partial, &none, &crash, &old] {
            backlog.add_set(s);
        }
        let mut copies = copied(&whole, "eu-west-1", 2);
        copies.extend(copied(&whole, "us-west-2", 2));
        // One of two copied in one region: a partial copy set is not a backup there.
        copies.extend(copied(&partial, "eu-west-1", 2));
        copies.extend(copied(&partial, "us-west-2", 1));
        for c in &copies {
            backlog.add_copy(c);
        }
        // Not tonight's (the step's own), not a complete one, not a crash-consistent one, not
        // one older than the window; newest first.
        assert_eq!(backlog.runs("r0", &regions, 7), vec!["r2", "r3"]);
        // A set whose run sent it elsewhere by tag is short only there: r2's copies into
        // eu-west-1 are complete, and r1's tag named a region of COPY_REGIONS_ALLOWED.
        let mut decided = Backlog::since(now);
        for s in [&whole, &partial] {
            decided.add_set(s);
        }
        for c in &copies {
            decided.add_copy(c);
        }
        decided.add_targets("r2", &CopyTargets::new("i-1", Ok(vec!["eu-west-1".into()])));
        decided.add_targets(
            "r1",
            &CopyTargets::new("i-1", Ok(vec!["ap-south-1".into()])),
        );
        assert_eq!(decided.runs("r0", &regions, 7), vec!["r1"]);
        // No copy region: nothing to take on.
        assert!(backlog.runs("r0", &[], 7).is_empty());
        // Only the sets the copy regions keep: with COPY_RETAIN_COUNT=2, i-1's newest two are
        // tonight's and r1 (whole); r2's copies would be retention's to delete.
        assert_eq!(backlog.runs("r0", &regions, 2), vec!["r3"]);
        // At most BACKLOG_RUNS, the newest.
        let mut many = Backlog::since(now);
        for day in 0..BACKLOG_DAYS {
            many.add_set(&set("i-1", &format!("d{day}"), day, Verdict::Consistent, 1));
        }
        let runs = many.runs("tonight", &regions, 100);
        assert_eq!(runs.len(), BACKLOG_RUNS.min(BACKLOG_DAYS as usize));
        assert_eq!(runs[0], "d0");
    }

    #[test]
    fn plans_of_several_runs_add_up() {
        let failure = |n| RegionFailure {
            code: "UnauthorizedOperation".into(),
            copies_not_made: n,
        };
        let mut plan = CopyPlan {
            to_start: vec![("eu-west-1".into(), "snap-a".into())],
            pending: [("eu-west-1".to_string(), 1)].into(),
            completed: [("eu-west-1".to_string(), 2)].into(),
            failed: vec!["eu-west-1/snap-x".into()],
            invalid: vec!["i-1: bad tag".into()],
            regions_failed: [("us-west-2".to_string(), failure(2))].into(),
        };
        plan.merge(CopyPlan {
            to_start: vec![("eu-west-1".into(), "snap-b".into())],
            pending: [("us-west-2".to_string(), 4)].into(),
            completed: [("eu-west-1".to_string(), 3)].into(),
            failed: Vec::new(),
            invalid: vec!["i-1: bad tag".into()],
            regions_failed: [("us-west-2".to_string(), failure(1))].into(),
        });
        assert_eq!(plan.to_start.len(), 2);
        assert_eq!(plan.completed["eu-west-1"], 5);
        assert_eq!(
            (plan.pending["eu-west-1"], plan.pending["us-west-2"]),
            (1, 4)
        );
        assert_eq!(plan.invalid.len(), 1, "the same instance named once");
        assert_eq!(plan.failed_count(), 1 + 3);
        assert!(!plan.is_final());
    }

    fn copy(source: &str, state: &str) -> ExistingCopy {
        ExistingCopy {
            source_snapshot_id: source.into(),
            snapshot_id: format!("copy-{source}"),
            state: state.into(),
            state_message: None,
        }
    }

    #[test]
    fn a_pass_plans_from_the_catalog_set_by_set_and_describes_only_what_is_not_seen_final() {
        // Sources come set by set, whatever order the catalog answers in.
        let sets = vec![
            set("i-b", "r1", 0, Verdict::Consistent, 2),
            set("i-a", "r1", 0, Verdict::Consistent, 2),
        ];
        let order: Vec<(String, String)> = sources_of(&sets)
            .into_iter()
            .map(|s| (s.instance_id, s.snapshot_id))
            .collect();
        assert_eq!(
            order,
            vec![
                ("i-a".to_string(), "snap-i-a-r1-0".to_string()),
                ("i-a".to_string(), "snap-i-a-r1-1".to_string()),
                ("i-b".to_string(), "snap-i-b-r1-0".to_string()),
                ("i-b".to_string(), "snap-i-b-r1-1".to_string()),
            ]
        );
        // A source not described yet is planned (checked before its copy starts).
        let regions = Ok(vec!["eu-west-1".to_string()]);
        let plan = plan_copies(&[(planned("snap-a", ""), regions)], &BTreeMap::new());
        assert_eq!(
            plan.to_start,
            vec![("eu-west-1".to_string(), "snap-a".to_string())]
        );
        // A copy seen completed is taken as seen; one EC2 now reports final is recorded so,
        // once; one still pending is not.
        let mut records = copied(&sets[1], "eu-west-1", 2);
        records[0].seen_final = Some(SeenFinal {
            state: "completed".into(),
            message: None,
        });
        let refs: Vec<&CopyRecord> = records.iter().collect();
        let seen = seen_copies(&refs);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].snapshot_id, "copy-0");
        assert_eq!(seen[0].state, SnapshotState::Completed);
        let described = |id: &str, state: &str| SnapshotFacts {
            snapshot_id: id.into(),
            state: state.into(),
            state_message: (state == "error").then(|| "Given key ID is not accessible".into()),
            ..Default::default()
        };
        let now = newly_final(
            &refs,
            &[
                described("copy-0", "completed"),
                described("copy-1", "pending"),
            ],
        );
        assert!(now.is_empty(), "{now:?}");
        let now = newly_final(&refs, &[described("copy-1", "error")]);
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].snapshot_id, "copy-1");
        assert_eq!(
            now[0].seen_final,
            Some(SeenFinal {
                state: SnapshotState::Error,
                message: Some("Given key ID is not accessible".into())
            })
        );
        // Regions decided once read back as decided, a refused tag with its reason.
        let refused = CopyTargets::new("i-a", Err("tag CopyRegions=mars".into()));
        assert_eq!(refused.regions(), Err("tag CopyRegions=mars".to_string()));
        let to = CopyTargets::new("i-a", Ok(vec!["eu-west-1".into()]));
        let back: CopyTargets =
            serde_json::from_str(&serde_json::to_string(&to).unwrap_or_default())
                .unwrap_or(refused);
        assert_eq!(back.regions(), Ok(vec!["eu-west-1".to_string()]));
    }

    #[test]
    fn copies_start_once_per_region_and_only_from_completed_snapshots() {
        let regions = Ok(vec!["eu-west-1".to_string(), "us-west-2".to_string()]);
        let sources = vec![
            (planned("snap-a", "completed"), regions.clone()),
            (planned("snap-b", "completed"), regions.clone()),
            (planned("snap-c", "pending"), regions),
        ];
        let existing: BTreeMap<String, Vec<ExistingCopy>> = [
            (
                "eu-west-1".to_string(),
                vec![copy("snap-a", "completed"), copy("snap-b", "pending")],
            ),
            ("us-west-2".to_string(), vec![copy("snap-a", "error")]),
        ]
        .into();
        let plan = plan_copies(&sources, &existing);
        assert_eq!(
            plan.to_start,
            vec![("us-west-2".to_string(), "snap-b".to_string())]
        );
        assert_eq!(plan.completed.get("eu-west-1"), Some(&1));
        // eu-west-1: snap-b's copy is pending and snap-c is not completed yet.
        assert_eq!(plan.pending.get("eu-west-1"), Some(&2));
        assert_eq!(plan.pending.get("us-west-2"), Some(&1));
        assert_eq!(
            plan.failed,
            vec!["us-west-2/copy-snap-a (copy of snap-a)".to_string()]
        );
        assert!(!plan.is_final());
        // Everything copied and completed: final, nothing to start.
        let existing: BTreeMap<String, Vec<ExistingCopy>> =
            [("eu-west-1".to_string(), vec![copy("snap-a", "completed")])].into();
        let plan = plan_copies(
            &[(planned("snap-a", "completed"), Ok(vec!["eu-west-1".into()]))],
            &existing,
        );
        assert!(plan.is_final() && plan.to_start.is_empty());
    }

    #[test]
    fn a_region_refused_for_good_fails_its_copies_and_one_not_answering_holds_them() {
        let both = || Ok(vec!["eu-west-1".to_string(), "us-west-2".to_string()]);
        let sources = vec![
            (planned("snap-a", "completed"), both()),
            (planned("snap-b", "completed"), both()),
        ];
        let plan = plan_copies(&sources, &BTreeMap::new());
        assert_eq!(plan.to_start.len(), 4);
        let denied: BTreeMap<String, RegionFault> = [(
            "us-west-2".to_string(),
            RegionFault {
                code: "UnauthorizedOperation".into(),
                permanent: true,
            },
        )]
        .into();
        let refused = plan.clone().without_regions(&denied);
        assert!(refused.to_start.iter().all(|(r, _)| r == "eu-west-1"));
        assert_eq!(refused.to_start.len(), 2);
        assert_eq!(
            refused.regions_failed.get("us-west-2"),
            Some(&RegionFailure {
                code: "UnauthorizedOperation".into(),
                copies_not_made: 2
            })
        );
        assert_eq!(refused.failed_count(), 2);
        // Once eu-west-1's copies exist, the step is final: the refused region holds nothing.
        let done = CopyPlan {
            to_start: vec![],
            ..refused
        };
        assert!(done.is_final());
        // A region that did not answer keeps its copies pending for the next pass.
        let silent: BTreeMap<String, RegionFault> = [(
            "us-west-2".to_string(),
            RegionFault {
                code: "Unavailable".into(),
                permanent: false,
            },
        )]
        .into();
        let waiting = plan.without_regions(&silent);
        assert_eq!(waiting.pending.get("us-west-2"), Some(&2));
        assert!(waiting.regions_failed.is_empty());
        assert!(!CopyPlan {
            to_start: vec![],
            ..waiting
        }
        .is_final());
    }

    #[test]
    fn an_instance_tag_overrides_the_regions_and_a_bad_one_copies_nothing() {
        let configured = vec!["eu-west-1".to_string()];
        let allowed = vec!["ap-southeast-2".to_string()];
        let mut tags = BTreeMap::new();
        assert_eq!(
            copy_regions_of(&tags, &configured, &allowed, "us-east-1"),
            Ok(configured.clone())
        );
        tags.insert(
            TAG_COPY_REGIONS.to_string(),
            "ap-southeast-2, us-east-1".into(),
        );
        assert_eq!(
            copy_regions_of(&tags, &configured, &allowed, "us-east-1"),
            Ok(vec!["ap-southeast-2".to_string()])
        );
        // A region outside the configured and allowed ones is refused, by name.
        tags.insert(
            TAG_COPY_REGIONS.to_string(),
            "eu-west-1,me-central-1".into(),
        );
        let outside = copy_regions_of(&tags, &configured, &allowed, "us-east-1");
        assert!(
            outside
                .as_ref()
                .is_err_and(|e| e.contains("me-central-1 not in COPY_REGIONS")),
            "{outside:?}"
        );
        tags.insert(TAG_COPY_REGIONS.to_string(), "mars".into());
        let bad = copy_regions_of(&tags, &configured, &allowed, "us-east-1");
        assert!(bad.as_ref().is_err_and(|e| e.contains("mars")));
        let plan = plan_copies(&[(planned("snap-a", "completed"), bad)], &BTreeMap::new());
        assert!(plan.to_start.is_empty());
        assert_eq!(plan.invalid.len(), 1);
    }

    #[test]
    fn a_copy_carries_its_sources_tags_and_where_it_came_from() {
        let mut snapshot = source("snap-a", "completed");
        snapshot.tags.insert("Name".into(), "sql01 xvdf".into());
        snapshot.tags.insert(TAG_RUN_ID.into(), "r1".into());
        snapshot.tags.insert("aws:backup:source".into(), "x".into());
        let tags = copy_tags(&snapshot, "us-east-1");
        assert!(tags.iter().all(|(k, _)| !k.starts_with("aws:")), "{tags:?}");
        assert!(tags.contains(&(TAG_SOURCE_SNAPSHOT.to_string(), "snap-a".to_string())));
        assert!(tags.contains(&(TAG_SOURCE_REGION.to_string(), "us-east-1".to_string())));
        assert!(tags.contains(&("Name".to_string(), "sql01 xvdf".to_string())));
        assert_eq!(
            copy_description(&snapshot, "us-east-1"),
            "Copy of snap-a (sql01 xvdf) from us-east-1, consistent-snapshot run r1"
        );
        let copy_of = SnapshotFacts {
            snapshot_id: "snap-copy".into(),
            state: "pending".into(),
            tags: tags.clone().into_iter().collect(),
            ..SnapshotFacts::default()
        };
        let look_alike = SnapshotFacts {
            snapshot_id: "snap-tagged-by-hand".into(),
            state: "completed".into(),
            tags: tags.into_iter().collect(),
            ..SnapshotFacts::default()
        };
        let record = CopyRecord {
            run_id: "r1".into(),
            instance_id: "i-1".into(),
            region: "us-west-2".into(),
            source_snapshot_id: "snap-a".into(),
            snapshot_id: "snap-copy".into(),
            started_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
            consistent: true,
            file_system: false,
            imported: false,
            set_size: 1,
            seen_final: None,
            device: None,
        };
        // A copy whose answer was lost has the function's own description; a look-alike
        // tagged by hand has another one (descriptions are set at creation only).
        let mut source = snapshot.clone();
        source.start_time = chrono::DateTime::from_timestamp(1_800_000_000, 0);
        let mut lost = copy_of.clone();
        lost.snapshot_id = "snap-lost".into();
        lost.start_time = chrono::DateTime::from_timestamp(1_800_000_100, 0);
        let mut early = lost.clone();
        early.start_time = chrono::DateTime::from_timestamp(1_700_000_000, 0);
        let described = [
            (lost.clone(), copy_description(&source, "us-east-1")),
            (look_alike.clone(), "Copy of snap-a".to_string()),
            (early, copy_description(&source, "us-east-1")),
        ];
        let adopted = lost_answer_copies(&[source], &described, "us-east-1");
        assert_eq!(adopted.len(), 1, "{adopted:?}");
        assert_eq!(adopted[0].0, "snap-a");
        assert_eq!(adopted[0].1.snapshot_id, "snap-lost");
        assert_eq!(
            existing_copies(&[&record], &[copy_of, look_alike]),
            [ExistingCopy {
                source_snapshot_id: "snap-a".into(),
                snapshot_id: "snap-copy".into(),
                state: "pending".into(),
                state_message: None,
            }],
            "only the recorded copy exists, however the other is tagged"
        );
    }
}
