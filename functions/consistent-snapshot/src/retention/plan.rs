//! Retention: which snapshot sets of each instance to keep and which to delete, in one region.
//!
//! `plan` is a pure function of the snapshots, the instances and the policy; every decision
//! carries its reason, and the deletion edge only ever acts on a plan. The rules, in order:
//!
//! 1. Only this deployment's snapshots (`ConsistentSnapshot:ManagedBy`) are considered at all.
//! 2. A set is the snapshots of one instance with one run id. A set with a snapshot still
//!    `pending`, or with a copy still in progress, is kept.
//! 3. The tiers keep what they select (`model::tiers`): the newest `daily` consistent sets
//!    (every snapshot completed and `AppConsistent=True`, or file-system consistent by the
//!    instance's choice), whatever their age, and the first consistent set of each of the newest
//!    `weekly` weeks, `monthly` months and `yearly` years in the schedule's time zone (a period
//!    without one is stood for by its first crash-consistent set); with `days`, every set
//!    younger than that is kept too. A set is deleted only when no tier keeps it.
//! 4. A set that is not consistent (crash-consistent, or with a failed snapshot) is kept while
//!    no newer consistent set exists: it is then the best backup there is.
//! 5. Sets of an instance that is gone or no longer tagged are kept unless the policy says
//!    otherwise; sets of an instance whose override tags are invalid are all kept.
//! 6. A set with a snapshot an AMI uses is kept and reported.
//! 7. A set with a snapshot under an EBS Snapshot Lock is kept, reported with the lock's end,
//!    and deleted by the first retention after it (`hold_locked`, over the locks EC2 reports).
//!
//! With a lock mode (`locks_due`), every backup a tier or its age keeps is locked (EBS Snapshot
//! Lock) until it is expected to be deleted, and the lock is extended whenever that moves later
//! (a set moving to a longer tier); a lock is never shortened.
//!
//! With `archive_after_days`, a kept set is moved to the archive tier (`archive`) when only the
//! monthly or yearly tier keeps it, it is that old, and it is not expected to be deleted within
//! `ARCHIVE_MINIMUM_DAYS` (AWS bills an archived snapshot for at least 90 days): the expected
//! deletion is the earliest it can happen, since periods cannot come faster than the calendar.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;
use crate::jobs::{EarlierPasses, RetentionJob, RETENTION_RETRIES, RETENTION_STALLED_PASSES};
use crate::model::catalog::Missing;
use crate::model::fleet::InstanceFacts;
use crate::model::snapshot::{LockMode, SnapshotInfo, SnapshotLock};
use crate::model::state::{InstanceState, SnapshotState};
use crate::model::tags::{
    is_app_consistent, CONSISTENCY_FILE_SYSTEM, TAG_APP_CONSISTENT, TAG_CONSISTENCY,
    TAG_INSTANCE_ID, TAG_MANAGED_BY, TAG_RETAIN_COUNT, TAG_RETAIN_DAYS, TAG_RETAIN_MONTHLY,
    TAG_RETAIN_WEEKLY, TAG_RETAIN_YEARLY, TAG_RUN_ID,
};
use crate::model::tiers::{
    self, Candidate, CandidateKind, Period, Retain, Standing, Tier, TierChange, Tiers,
};
use chrono_tz::Tz;

/// What the planner knows of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceStanding {
    /// Tagged and present; its own tiers and days (overrides already applied), and what an
    /// override tag that lowers retention did: ignored without the deployment's consent,
    /// applied with it; either way said on every set of the plan.
    Live {
        retain: Retain,
        lowering: Option<String>,
    },
    /// Terminated, not found, or no longer carrying the target tag.
    Orphaned { why: String },
    /// An override tag could not be read: nothing of it is deleted.
    InvalidOverride { why: String },
}

/// Which of an instance's override tags retention applies in a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrides {
    /// None (copy regions keep their own count).
    Not,
    /// Those that raise protection; one that would lower it is ignored, and said so.
    RaiseOnly,
    /// Any (`ALLOW_LOWER_OVERRIDES`).
    Any,
}

/// The deployment-wide policy of one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub managed_by: String,
    pub retain: Retain,
    /// Keep every set of an orphaned instance (the default), or apply the tiers and days to it
    /// as to a live one.
    pub keep_orphans: bool,
    /// The schedule's time zone: where weeks, months and years begin.
    pub zone: Tz,
    /// Archive sets kept only by the monthly or yearly tier once they are this many days old.
    pub archive_after_days: Option<u32>,
    /// Whether the deployment locks what it keeps (`LOCK_MODE`): each kept backup's
    /// `lock_until` is then planned.
    pub lock: bool,
}

/// AWS bills an archived snapshot for at least this many days: a set expected to be deleted
/// sooner is never archived.
pub const ARCHIVE_MINIMUM_DAYS: i64 = 90;

/// Where a set's snapshots are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    #[default]
    Standard,
    /// Every snapshot in the archive tier.
    Archive,
    /// Some in the archive tier, some not (archiving under way, or a partial restore).
    Partial,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    Consistent,
    /// Taken with `NoWriters` (the catalog's verdict): a backup, file-system consistent only.
    FileSystemConsistent,
    /// Completed, but not every snapshot is `AppConsistent=True`, or one of them failed.
    NotConsistent,
    InProgress,
}

impl SetKind {
    /// A backup: application consistent, or file-system consistent by the instance's choice.
    pub fn is_backup(self) -> bool {
        matches!(self, SetKind::Consistent | SetKind::FileSystemConsistent)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Keep,
    Delete,
}

/// What keeps a set that the policy would delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    /// An AMI uses one of its snapshots.
    Image,
    /// One of its snapshots is under an EBS Snapshot Lock.
    Lock,
}

/// One set and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetDecision {
    pub run_id: String,
    pub kind: SetKind,
    pub started_at: DateTime<Utc>,
    pub snapshots: Vec<String>,
    pub action: Action,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
    /// The tiers that keep it (empty: none does).
    pub tiers: Tiers,
    /// The tiers its catalog record holds (as the planner was given them): where they differ
    /// from `tiers`, the record and the snapshots' `ConsistentSnapshot:Tiers` tag are brought up
    /// to date.
    #[serde(skip)]
    pub recorded_tiers: Tiers,
    /// When it is expected to leave its next tier, if a set is taken at the usual pace (a
    /// kept set that a tier or its age keeps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_change: Option<DateTime<Utc>>,
    /// When it is expected to be deleted, if a set is taken at the usual pace and nothing else
    /// keeps it (an estimate for a dry run; every retention plans again from what exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_after: Option<DateTime<Utc>>,
    /// Its snapshots' storage tier, as EC2 reports it.
    pub storage: Storage,
    /// Moved to the archive tier by this retention (its snapshots not archived yet are).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub archive: bool,
    /// Where the deployment locks what it keeps: until when to lock it (when it is expected
    /// to be deleted at the soonest, if a set is taken at the fastest pace seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_until: Option<DateTime<Utc>>,
    /// When the lock of its least locked snapshot ends, as EC2 reported the locks (read where
    /// the deployment locks, or where the set was to be deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<DateTime<Utc>>,
}

impl SetDecision {
    /// A set to delete for `reason`, with nothing else said of it (no tier, lock or archive).
    pub fn deletion(
        run_id: String,
        (kind, started_at): (SetKind, DateTime<Utc>),
        snapshots: Vec<String>,
        reason: String,
    ) -> Self {
        SetDecision {
            run_id,
            kind,
            started_at,
            snapshots,
            action: Action::Delete,
            reason,
            held: None,
            tiers: Tiers::default(),
            recorded_tiers: Tiers::default(),
            next_change: None,
            deleted_after: None,
            storage: Storage::Standard,
            archive: false,
            lock_until: None,
            locked_until: None,
        }
    }
}

/// The plan of one region: per instance, every set with its decision, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegionPlan {
    pub region: String,
    pub instances: BTreeMap<String, Vec<SetDecision>>,
    /// Snapshots of this deployment that carry no run id or instance id: never deleted.
    pub unattributed: Vec<String>,
    /// Locks to lay or extend (`locks_due`), where the deployment locks what it keeps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<LockChange>,
    /// Snapshots the catalog records in this region that EC2 no longer lists: this
    /// deployment deletes only what it forgets at once, so someone else deleted them.
    #[serde(skip)]
    pub missing: Vec<Missing>,
}

/// A lock to lay on a kept set's snapshots in one region, or to extend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockChange {
    pub instance_id: String,
    pub run_id: String,
    /// Its snapshots not locked, or locked for less (the others already are).
    pub snapshot_ids: Vec<String>,
    /// Of those, the ones already locked: their lock is extended.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extended: Vec<String>,
    pub mode: LockMode,
    /// The lock's duration from now, in whole days: it ends at `until`, at most a day before
    /// the set is expected to be deleted (and at most `LOCK_MAX_DAYS` from now).
    pub days: u32,
    pub until: DateTime<Utc>,
}

/// EBS locks a snapshot for a day at the least: a set expected to go sooner is not locked.
pub const LOCK_MINIMUM_DAYS: i64 = 1;

impl RegionPlan {
    pub fn deletions(&self) -> impl Iterator<Item = (&str, &SetDecision)> {
        self.instances.iter().flat_map(|(instance, sets)| {
            sets.iter()
                .filter(|s| s.action == Action::Delete)
                .map(move |s| (instance.as_str(), s))
        })
    }

    pub fn snapshots_to_delete(&self) -> usize {
        self.deletions().map(|(_, s)| s.snapshots.len()).sum()
    }
}

/// A set a pass planned to delete and had no time for (its snapshots not deleted yet): the
/// next pass of the same retention deletes it from the catalog's record of this, without
/// planning again (`left_plans`). What keeps a set that EC2 knows of (a lock, an AMI) is still
/// EC2's to refuse, and is reported as in any pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftDeletion {
    pub region: String,
    pub instance_id: String,
    pub run_id: String,
    pub kind: SetKind,
    pub started_at: DateTime<Utc>,
    pub reason: String,
    /// Its snapshots not deleted yet, in the set's order.
    pub snapshots: Vec<String>,
}

/// One page of the deletions a pass left, as the catalog holds it: page 0 says how many pages
/// this pass wrote (a later delivery of the same pass may write fewer than an earlier one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftPage {
    pub pages: usize,
    pub sets: Vec<LeftDeletion>,
}

/// Left deletions a page of the catalog at a time: a set is some 300 bytes, about 900 with
/// the most volumes an instance takes, and an item at most 400 KB.
pub const LEFT_PAGE_SETS: usize = 200;
/// The most pages of left deletions a pass records (100,000 sets; a pass plans one part of
/// the fleet, `RETENTION_PART_SNAPSHOTS` snapshots, at a time): past it, the next pass plans
/// again.
pub const LEFT_PAGES: usize = 500;

/// The most deletion sets a run's retention pass plans ahead of doing them (`left`, held in
/// memory, some 300 bytes each, and recorded for the next pass if the pass has no time for
/// them): a part is planned ahead only while these and its catalog entries (each at most one
/// set to delete) fit.
pub const PLAN_AHEAD_ROOM: usize = 20_000;

/// The snapshots of these left deletions.
pub fn left_snapshots(left: &[LeftDeletion]) -> usize {
    left.iter().map(|l| l.snapshots.len()).sum()
}

/// `left` in pages of `LEFT_PAGE_SETS`, each saying how many there are; `None` past
/// `LEFT_PAGES`.
pub fn left_pages(left: &[LeftDeletion]) -> Option<Vec<LeftPage>> {
    let pages = left.len().div_ceil(LEFT_PAGE_SETS);
    (pages <= LEFT_PAGES).then(|| {
        left.chunks(LEFT_PAGE_SETS)
            .map(|sets| LeftPage {
                pages,
                sets: sets.to_vec(),
            })
            .collect()
    })
}

/// The deletions a pass left, as plans to apply: per region, in the order they were planned,
/// each set to delete for the reason it was planned; nothing else (no set kept, no lock, no
/// tier to record).
pub fn left_plans(left: Vec<LeftDeletion>) -> Vec<RegionPlan> {
    let mut plans: Vec<RegionPlan> = Vec::new();
    for l in left {
        let at = match plans.iter().position(|p| p.region == l.region) {
            Some(at) => at,
            None => {
                plans.push(RegionPlan {
                    region: l.region.clone(),
                    ..RegionPlan::default()
                });
                plans.len() - 1
            }
        };
        plans[at]
            .instances
            .entry(l.instance_id)
            .or_default()
            .push(SetDecision::deletion(
                l.run_id,
                (l.kind, l.started_at),
                l.snapshots,
                l.reason,
            ));
    }
    plans
}

/// The snapshots of one instance taken by one run: the unit retention keeps or deletes.
#[derive(Debug, Clone)]
pub struct SnapshotSet<'a> {
    pub run_id: &'a str,
    pub snapshots: Vec<&'a SnapshotInfo>,
}

/// This deployment's snapshots grouped per instance into sets, newest first, and the ids of
/// the deployment's snapshots that carry no instance id or run id (never deleted).
pub fn sets_by_instance<'a>(
    snapshots: &'a [SnapshotInfo],
    managed_by: &str,
) -> (BTreeMap<&'a str, Vec<SnapshotSet<'a>>>, Vec<String>) {
    // instance -> run id -> snapshots
    let mut grouped: BTreeMap<&str, BTreeMap<&str, Vec<&SnapshotInfo>>> = BTreeMap::new();
    let mut unattributed = Vec::new();
    for snapshot in snapshots {
        if snapshot.tag(TAG_MANAGED_BY) != Some(managed_by) {
            continue;
        }
        match (snapshot.tag(TAG_INSTANCE_ID), snapshot.tag(TAG_RUN_ID)) {
            (Some(instance), Some(run)) if !instance.is_empty() && !run.is_empty() => grouped
                .entry(instance)
                .or_default()
                .entry(run)
                .or_default()
                .push(snapshot),
            _ => unattributed.push(snapshot.snapshot_id.clone()),
        }
    }
    unattributed.sort();
    let sets = grouped
        .into_iter()
        .map(|(instance, runs)| {
            let mut sets: Vec<SnapshotSet> = runs
                .into_iter()
                .map(|(run_id, snapshots)| SnapshotSet { run_id, snapshots })
                .collect();
            sets.sort_by(|a, b| (b.started_at(), b.run_id).cmp(&(a.started_at(), a.run_id)));
            (instance, sets)
        })
        .collect();
    (sets, unattributed)
}

impl SnapshotSet<'_> {
    /// When the set was taken: its earliest snapshot's start.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.snapshots
            .iter()
            .map(|s| s.start_time)
            .min()
            .unwrap_or_default()
    }

    pub fn kind(&self) -> SetKind {
        if self
            .snapshots
            .iter()
            .any(|s| s.state == SnapshotState::Pending || s.copies_in_progress > 0)
        {
            return SetKind::InProgress;
        }
        let consistent = self.snapshots.iter().all(|s| {
            s.state == SnapshotState::Completed && is_app_consistent(s.tag(TAG_APP_CONSISTENT))
        });
        if consistent
            && self
                .snapshots
                .iter()
                .any(|s| s.tag(TAG_CONSISTENCY) == Some(CONSISTENCY_FILE_SYSTEM))
        {
            SetKind::FileSystemConsistent
        } else if consistent {
            SetKind::Consistent
        } else {
            SetKind::NotConsistent
        }
    }
}

/// Plans retention for one region. `instances` says what is known of each instance id found
/// on the snapshots; an instance missing from it counts as orphaned.
pub fn plan(
    region: &str,
    snapshots: &[SnapshotInfo],
    instances: &BTreeMap<String, InstanceStanding>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> RegionPlan {
    let mut result = RegionPlan {
        region: region.to_string(),
        ..RegionPlan::default()
    };
    let (sets, unattributed) = sets_by_instance(snapshots, &policy.managed_by);
    result.unattributed = unattributed;
    for (instance, sets) in sets {
        let state = instances.get(instance);
        let decisions = decide_instance(&sets, state, policy, now);
        result.instances.insert(instance.to_string(), decisions);
    }
    result
}

fn decide_instance(
    sets: &[SnapshotSet],
    state: Option<&InstanceStanding>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Vec<SetDecision> {
    let keep_all = match state {
        Some(InstanceStanding::InvalidOverride { why }) => {
            Some(format!("{why}: nothing of this instance is deleted"))
        }
        Some(InstanceStanding::Orphaned { why }) if policy.keep_orphans => Some(format!(
            "{why}: its backups are kept (KEEP_ORPHANED_BACKUPS)"
        )),
        None if policy.keep_orphans => {
            Some("instance not found: its backups are kept (KEEP_ORPHANED_BACKUPS)".to_string())
        }
        _ => None,
    };
    let (retain, lowering) = match state {
        Some(InstanceStanding::Live { retain, lowering }) => (*retain, lowering.as_deref()),
        _ => (policy.retain, None),
    };
    let kinds: Vec<SetKind> = sets.iter().map(SnapshotSet::kind).collect();
    let starts: Vec<DateTime<Utc>> = sets.iter().map(SnapshotSet::started_at).collect();
    // A set file-system consistent by the instance's choice (`NoWriters`) is a backup: it
    // counts towards the newest sets kept, and a crash-consistent set older than it goes. The
    // newest application-consistent set is kept whatever the tiers, so that a week of
    // `NoWriters` never leaves a server with no application-consistent backup.
    let newest_consistent = (0..sets.len())
        .filter(|&i| kinds[i].is_backup())
        .map(|i| starts[i])
        .max();
    let newest_app_consistent = (0..sets.len())
        .filter(|&i| kinds[i] == SetKind::Consistent)
        .map(|i| starts[i])
        .max();
    let candidates: Vec<Candidate> = (0..sets.len())
        .map(|i| Candidate {
            started_at: starts[i],
            kind: match kinds[i] {
                SetKind::InProgress => CandidateKind::InProgress,
                k if k.is_backup() => CandidateKind::Backup,
                _ => CandidateKind::CrashConsistent,
            },
        })
        .collect();
    let standings = tiers::select(&candidates, &retain, policy.zone);
    let forecast = Forecast::new(&candidates, &standings, &retain, policy.zone, now);
    let days_text = format!("younger than {} days", retain.days.unwrap_or_default());
    let mut decisions = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let (kind, started_at, standing) = (kinds[i], starts[i], &standings[i]);
        let young = retain
            .days
            .map(|days| now - started_at < Duration::days(i64::from(days)))
            .unwrap_or(false);
        let kept_by = (!standing.is_empty()).then(|| {
            let why: Vec<String> = standing.iter().map(|s| s.describe(&retain)).collect();
            why.join(", ")
        });
        let (mut action, mut reason) = match (kind, kept_by) {
            (SetKind::InProgress, _) => (
                Action::Keep,
                "in progress: a snapshot or one of its copies is not completed".to_string(),
            ),
            (_, Some(kept_by)) => (Action::Keep, format!("kept by {kept_by}")),
            (SetKind::Consistent, None) if newest_app_consistent == Some(started_at) => (
                Action::Keep,
                "the newest application-consistent set (the newer ones are file-system consistent only)"
                    .to_string(),
            ),
            (SetKind::Consistent | SetKind::FileSystemConsistent, None) if young => {
                (Action::Keep, days_text.clone())
            }
            (SetKind::Consistent | SetKind::FileSystemConsistent, None) => (
                Action::Delete,
                if retain.calendar() {
                    format!(
                        "older than the newest {} consistent sets, and standing for no week, month or year kept",
                        retain.daily
                    )
                } else {
                    format!("older than the newest {} consistent sets", retain.daily)
                },
            ),
            (SetKind::NotConsistent, None) => match newest_consistent {
                Some(newest) if newest > started_at && young => (Action::Keep, days_text.clone()),
                Some(newest) if newest > started_at => (
                    Action::Delete,
                    "not consistent, and a newer consistent set exists".to_string(),
                ),
                _ => (
                    Action::Keep,
                    "not consistent, but no newer consistent set exists: the best fallback"
                        .to_string(),
                ),
            },
        };
        // Only what a tier or the set's age keeps has a forecast; anything else is kept until
        // what keeps it changes (a newer consistent set, a copy ending, …).
        let forecast_here = action == Action::Keep
            && kind != SetKind::InProgress
            && (!standing.is_empty() || young);
        let (next_change, deleted_after) = if forecast_here {
            forecast.of(standing, started_at, young, forecast.cadence)
        } else {
            (None, None)
        };
        // Only backups of live instances are locked.
        let lock_until = (policy.lock && kind.is_backup() && forecast_here && keep_all.is_none())
            .then(|| forecast.of(standing, started_at, young, forecast.fastest).1)
            .flatten();
        if let Some(why) = &keep_all {
            action = Action::Keep;
            reason = why.clone();
        }
        let mut held = None;
        if action == Action::Delete {
            let images: BTreeSet<&str> = set
                .snapshots
                .iter()
                .flat_map(|s| s.used_by_images.iter().map(String::as_str))
                .collect();
            if !images.is_empty() {
                action = Action::Keep;
                held = Some(Held::Image);
                reason = format!(
                    "used by AMI {}: kept (deregister the image to release it)",
                    images.into_iter().collect::<Vec<_>>().join(", ")
                );
            }
        }
        if let Some(lowering) = lowering {
            // Said on every set, so that the plan and the dry run show what the tag did.
            reason = format!("{reason} ({lowering})");
        }
        let mut snapshots: Vec<String> = set
            .snapshots
            .iter()
            .map(|s| s.snapshot_id.clone())
            .collect();
        snapshots.sort();
        let archived = set.snapshots.iter().filter(|s| s.archived).count();
        let storage = match archived {
            0 => Storage::Standard,
            n if n == set.snapshots.len() => Storage::Archive,
            _ => Storage::Partial,
        };
        let archive = action == Action::Keep
            && held.is_none()
            && storage != Storage::Archive
            && !young
            && archive_due(
                standing,
                started_at,
                deleted_after,
                policy.archive_after_days,
                now,
                policy.zone,
            );
        if archive {
            reason = format!("{reason}; archived: only the monthly or yearly tier keeps it");
        }
        let recorded_tiers = set
            .snapshots
            .first()
            .map(|s| Tiers::from_bits(s.recorded_tiers))
            .unwrap_or_default();
        decisions.push(SetDecision {
            run_id: set.run_id.to_string(),
            kind,
            started_at,
            snapshots,
            action,
            reason,
            held,
            tiers: Tiers::of(standing.iter().map(|s| s.tier)),
            recorded_tiers,
            next_change: next_change.filter(|_| action == Action::Keep),
            deleted_after: deleted_after.filter(|_| action == Action::Keep),
            storage,
            archive,
            lock_until: lock_until.filter(|_| action == Action::Keep && held.is_none()),
            locked_until: None,
        });
    }
    decisions
}

/// Whether a kept set goes to the archive tier: only the monthly or yearly tier keeps it (a
/// daily or weekly set is read and copied too often), it is at least `after_days` old, and its
/// earliest deletion is `ARCHIVE_MINIMUM_DAYS` away or more. A crash-consistent set standing
/// in for a month or year still under way is not: the first consistent set taken later in it
/// takes its place, and the stand-in would be deleted days after it was archived (and billed
/// the archive tier's 90 days).
fn archive_due(
    standing: &[Standing],
    started_at: DateTime<Utc>,
    deleted_after: Option<DateTime<Utc>>,
    after_days: Option<u32>,
    now: DateTime<Utc>,
    zone: Tz,
) -> bool {
    let Some(after_days) = after_days else {
        return false;
    };
    let open = |s: &Standing| {
        s.period
            .and_then(|p| p.end(zone))
            .is_none_or(|end| end > now)
    };
    !standing.is_empty()
        && standing
            .iter()
            .all(|s| matches!(s.tier, Tier::Monthly | Tier::Yearly))
        && !standing.iter().any(|s| s.stand_in && open(s))
        && now - started_at >= Duration::days(i64::from(after_days))
        && deleted_after.is_some_and(|end| end - now >= Duration::days(ARCHIVE_MINIMUM_DAYS))
}

/// What the dry run says of a kept set's future: when it leaves its next tier and when it
/// would be deleted, if the instance goes on being backed up at its usual pace.
struct Forecast {
    retain: Retain,
    zone: Tz,
    now: DateTime<Utc>,
    cadence: Duration,
    /// The shortest gap between the newest backups: a lock's pace.
    fastest: Duration,
    newest_backup: Option<DateTime<Utc>>,
    /// Per tier, the newest period that has a set standing for it.
    newest_period: BTreeMap<Tier, Period>,
}

impl Forecast {
    fn new(
        candidates: &[Candidate],
        standings: &[Vec<Standing>],
        retain: &Retain,
        zone: Tz,
        now: DateTime<Utc>,
    ) -> Self {
        let backups: Vec<DateTime<Utc>> = candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::Backup)
            .map(|c| c.started_at)
            .collect();
        let mut newest_period: BTreeMap<Tier, Period> = BTreeMap::new();
        for standing in standings.iter().flatten() {
            if let Some(period) = standing.period.filter(|_| standing.rank == 1) {
                newest_period.insert(standing.tier, period);
            }
        }
        Forecast {
            retain: *retain,
            zone,
            now,
            newest_backup: backups.iter().max().copied(),
            fastest: tiers::fastest(backups.clone()),
            cadence: tiers::cadence(backups),
            newest_period,
        }
    }

    fn of(
        &self,
        standing: &[Standing],
        started_at: DateTime<Utc>,
        young: bool,
        cadence: Duration,
    ) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        let mut ends: Vec<DateTime<Utc>> = standing
            .iter()
            .filter_map(|s| {
                tiers::leaves(
                    s,
                    &self.retain,
                    self.newest_backup,
                    self.newest_period.get(&s.tier).copied(),
                    cadence,
                    self.now,
                    self.zone,
                )
            })
            .collect();
        if young {
            if let Some(days) = self.retain.days {
                ends.push(started_at + Duration::days(i64::from(days)));
            }
        }
        (ends.iter().min().copied(), ends.iter().max().copied())
    }
}

/// The kept sets of a region's plan whose tiers differ from those their catalog record holds:
/// each to be recorded again (its home record, or its copies' records in a copy region) and
/// labelled. Only where a weekly, monthly or yearly tier is in use (by the region's `retain`,
/// or on the set): with the daily tier alone a set's tiers say nothing its reason does not, and
/// a deployment keeps its writes to what it uses.
pub fn tier_changes(plan: &RegionPlan, retain: Retain, home: bool) -> Vec<TierChange> {
    let calendar = |tiers: Tiers| tiers.list().iter().any(|t| *t != Tier::Daily);
    plan.instances
        .iter()
        .flat_map(|(instance_id, sets)| {
            sets.iter()
                .filter(|s| s.action == Action::Keep && s.tiers != s.recorded_tiers)
                .filter(|s| retain.calendar() || calendar(s.tiers) || calendar(s.recorded_tiers))
                .map(|s| TierChange {
                    instance_id: instance_id.clone(),
                    run_id: s.run_id.clone(),
                    copy_region: (!home).then(|| plan.region.clone()),
                    snapshot_ids: s.snapshots.clone(),
                    tiers: s.tiers.list(),
                })
        })
        .collect()
}

/// Rule 7: every set `plan` would delete that holds a snapshot under one of `locks` is kept
/// instead, its reason naming the lock that ends last. Answers how many sets were held.
pub fn hold_locked(plan: &mut RegionPlan, locks: &BTreeMap<String, SnapshotLock>) -> usize {
    let mut held = 0;
    for set in plan
        .instances
        .values_mut()
        .flat_map(|sets| sets.iter_mut())
        .filter(|s| s.action == Action::Delete)
    {
        let last = set
            .snapshots
            .iter()
            .filter_map(|id| locks.get(id).map(|lock| (id, lock)))
            .max_by_key(|(_, lock)| lock.until.unwrap_or(DateTime::<Utc>::MAX_UTC));
        if let Some((id, lock)) = last {
            set.action = Action::Keep;
            set.held = Some(Held::Lock);
            set.reason = format!(
                "{id} {}: kept, deleted by the first retention after it ({})",
                lock.describe(),
                set.reason
            );
            held += 1;
        }
    }
    held
}

/// Notes on every set of `plan` when the lock of its least locked snapshot ends (`None`: one
/// of them is not locked), from the locks EC2 reported.
pub fn note_locks(plan: &mut RegionPlan, locks: &BTreeMap<String, SnapshotLock>) {
    for set in plan.instances.values_mut().flat_map(|sets| sets.iter_mut()) {
        set.locked_until = set
            .snapshots
            .iter()
            .map(|id| locks.get(id).and_then(|lock| lock.until))
            .min()
            .flatten();
    }
}

/// The locks to lay or extend in `plan`'s region, in `mode`: every backup (consistent, or
/// file-system consistent by the instance's choice) of a live instance that a tier or its age
/// keeps is locked until it is expected to be deleted at the soonest (`lock_until`: periods
/// cannot come faster than the calendar, nor backups faster than the fastest seen); a
/// snapshot's lock ending sooner is extended to then. A lock is never shortened: one that ends
/// later is left as it is, and so is one ending at most a day sooner while it has two days or
/// more to run (the expectation moves by hours from night to night; the lock need not follow
/// each move). A governance lock is made a compliance lock when the mode is compliance (once
/// that shortens nothing). No lock is laid for more than `max_days`: a longer one is extended
/// as time goes on. Sets
/// of orphaned instances, and sets an AMI or a lock keeps past their tiers, are left as they
/// are (their locks, if any, run out).
pub fn locks_due(
    plan: &RegionPlan,
    locks: &BTreeMap<String, SnapshotLock>,
    (mode, max_days): (LockMode, u32),
    now: DateTime<Utc>,
) -> Vec<LockChange> {
    let mut due = Vec::new();
    for (instance_id, sets) in &plan.instances {
        for set in sets {
            let Some(end) = set.lock_until else {
                continue;
            };
            // LockSnapshot takes whole days (which IAM can bound): a lock laid now ends at
            // most a day before the set is expected to go, never after.
            let days = (end - now).num_days().min(i64::from(max_days));
            if days < LOCK_MINIMUM_DAYS {
                continue;
            }
            let until = now + Duration::days(days);
            let (mut ids, mut extended) = (Vec::new(), Vec::new());
            for id in &set.snapshots {
                let Some(lock) = locks.get(id) else {
                    ids.push(id.clone());
                    continue;
                };
                // A lock whose end EC2 did not say is left alone.
                let Some(current) = lock.until else { continue };
                let upgrade = mode == LockMode::Compliance && lock.state == "governance";
                let slack = if current - now >= Duration::days(2) {
                    Duration::days(1)
                } else {
                    Duration::zero()
                };
                if current + slack < until || (upgrade && current <= until) {
                    ids.push(id.clone());
                    extended.push(id.clone());
                }
            }
            if !ids.is_empty() {
                due.push(LockChange {
                    instance_id: instance_id.clone(),
                    run_id: set.run_id.clone(),
                    snapshot_ids: ids,
                    extended,
                    mode,
                    days: u32::try_from(days).unwrap_or(max_days),
                    until,
                });
            }
        }
    }
    due
}

/// What retention makes of an instance: gone or untagged, an override it cannot read, or live
/// with its tiers and days (`retain` is the region's; the instance's override tags apply as
/// `overrides` says: in the source region, raising only unless the deployment consents to
/// lowering). Anyone who may tag an instance may write these tags, so by default a tag can
/// keep more, never delete more.
pub fn instance_state(
    facts: Option<&InstanceFacts>,
    target: (&str, &str),
    retain: Retain,
    overrides: Overrides,
) -> InstanceStanding {
    let Some(facts) = facts else {
        return InstanceStanding::Orphaned {
            why: "instance not found (terminated long ago)".into(),
        };
    };
    if matches!(
        facts.state,
        InstanceState::Terminated | InstanceState::ShuttingDown
    ) {
        return InstanceStanding::Orphaned {
            why: format!("instance {}", facts.state),
        };
    }
    if facts.tags.get(target.0).map(String::as_str) != Some(target.1) {
        return InstanceStanding::Orphaned {
            why: format!("instance no longer tagged {}={}", target.0, target.1),
        };
    }
    let mut lowered: Vec<String> = Vec::new();
    // `least`: the smallest value the tag may hold (a daily count of 0 would keep nothing new).
    let mut read = |tag: &str, current: Option<u32>, least: u32| -> Result<Option<u32>, String> {
        match facts.tags.get(tag).filter(|_| overrides != Overrides::Not) {
            None => Ok(current),
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if (least..=36_500).contains(&n) => match current {
                    Some(c) if n < c && overrides == Overrides::RaiseOnly => {
                        lowered.push(format!("tag {tag}={n} would lower {c}"));
                        Ok(current)
                    }
                    Some(c) if n < c => {
                        lowered.push(format!("tag {tag}={n} lowers {c}"));
                        Ok(Some(n))
                    }
                    _ => Ok(Some(n)),
                },
                _ => Err(format!(
                    "tag {tag}={v:?} is not a whole number from {least}"
                )),
            },
        }
    };
    let mut own = retain;
    let mut problem = None;
    for (tag, tier, least) in [
        (TAG_RETAIN_COUNT, Tier::Daily, 1),
        (TAG_RETAIN_WEEKLY, Tier::Weekly, 0),
        (TAG_RETAIN_MONTHLY, Tier::Monthly, 0),
        (TAG_RETAIN_YEARLY, Tier::Yearly, 0),
    ] {
        match read(tag, Some(retain.count(tier)), least) {
            Ok(n) => own.set_count(tier, n.unwrap_or(retain.count(tier))),
            Err(why) => problem = problem.or(Some(why)),
        }
    }
    match read(TAG_RETAIN_DAYS, retain.days, 1) {
        Ok(days) => own.days = days,
        Err(why) => problem = problem.or(Some(why)),
    }
    if let Some(why) = problem {
        return InstanceStanding::InvalidOverride { why };
    }
    let lowering = (!lowered.is_empty()).then(|| match overrides {
        Overrides::Any => format!(
            "{}: the deployment allows lowering (ALLOW_LOWER_OVERRIDES=true)",
            lowered.join(", ")
        ),
        _ => format!(
            "{}: ignored, the deployment does not allow lowering (ALLOW_LOWER_OVERRIDES)",
            lowered.join(", ")
        ),
    });
    InstanceStanding::Live {
        retain: own,
        lowering,
    }
}

fn is_zero_count(n: &usize) -> bool {
    *n == 0
}

/// What applying the plans did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionOutcome {
    pub dry_run: bool,
    /// The plans of every part of the fleet planned, merged by region (`absorb`): whole while
    /// they hold at most `ANSWER_SETS` sets, then only their first sets to delete.
    pub plans: Vec<RegionPlan>,
    /// Each region's counts over every part planned.
    #[serde(skip)]
    tallies: Vec<RegionTally>,
    /// `plans` no longer holds every set (see `absorb`).
    #[serde(skip)]
    trimmed: bool,
    /// Instances not planned by this pass: its time ran out first. The next pass begins after
    /// `planned_through`.
    #[serde(skip_serializing_if = "is_zero_count")]
    pub instances_left: usize,
    #[serde(skip)]
    pub planned_through: Option<String>,
    /// Parts of the fleet that could not be planned (`n server(s) first…last: error`): the
    /// next pass, or the next run, plans them again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts_failed: Vec<String>,
    /// The last instance whose part this pass (or an earlier one) looked for snapshots
    /// deleted by someone else: a later pass of the same retention looks only after it.
    #[serde(skip)]
    pub missing_through: Option<String>,
    /// `region/snapshot`: deleted now.
    pub deleted: Vec<String>,
    /// Planned for deletion but kept, with why (an AMI uses it, …).
    pub kept: Vec<String>,
    /// Deletions that failed, with the AWS code; tried again by the next run's retention.
    pub failed: Vec<String>,
    /// Planned for deletion but held by an EBS Snapshot Lock: `region/run: snapshot locked
    /// (mode) until …`. Never counted as deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locked: Vec<String>,
    /// Deleted, but a Recycle Bin rule keeps them (billed, recoverable): `region/snapshot:
    /// recoverable until …`. Never counted as deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recoverable: Vec<String>,
    /// Deletions not tried because the invocation's time ran out: the next pass does them.
    pub unfinished: usize,
    /// `region/snapshot`: moved to the archive tier by this pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub archived: Vec<String>,
    /// `region/snapshot: error`: not archived (tried again by the next retention).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub archive_failed: Vec<String>,
    /// `region/snapshot: locked (mode) until …`: locked, or its lock extended, by this pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locks_laid: Vec<String>,
    /// `region/snapshot: error`: not locked (tried again by the next retention).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lock_failed: Vec<String>,
    /// Locks not laid because the invocation's time ran out: the next pass lays them.
    #[serde(skip_serializing_if = "is_zero_count")]
    pub locks_left: usize,
    /// `region/snapshot (instance, run): …`: recorded in the catalog, no longer in EC2, and
    /// not deleted by this deployment: deleted by someone else (in the Recycle Bin until a
    /// date, or gone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted_outside: Vec<String>,
    /// Sets whose tiers changed and were recorded (catalog and tag) by this pass.
    #[serde(skip_serializing_if = "is_zero_count")]
    pub tiers_labelled: usize,
    /// Of `failed`, those that failed for a reason that may pass (throttling, a 5xx, no
    /// answer): the run's retention makes another pass for them.
    #[serde(skip)]
    pub transient_failures: usize,
    /// Deletions that failed for a reason that may pass and were left, with the rest of their
    /// sets, for the run's next pass to try again (`Pass::retry_failures`): in `unfinished`
    /// and `left`, not in `failed`.
    #[serde(skip)]
    pub retried: usize,
    /// Snapshots deleted by earlier passes of the same retention.
    pub deleted_before: usize,
    /// Locks laid, and recorded backups found deleted by someone else, by earlier passes.
    #[serde(skip)]
    pub locks_laid_before: usize,
    #[serde(skip)]
    pub deleted_outside_before: usize,
    /// What earlier passes did and saw that this one neither does nor sees again.
    #[serde(skip_serializing_if = "EarlierPasses::is_empty")]
    pub earlier: EarlierPasses,
    /// What this pass saw in the parts it planned and applied whole, up to `planned_through`
    /// (`settle`): the next pass, which begins after it, carries it on.
    #[serde(skip)]
    settled: EarlierPasses,
    /// Regions that could not be read (`region (AWS code)`): nothing was deleted there, and
    /// nothing in the home region that has a copy there (it may still be being made).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regions_unreadable: Vec<String>,
    /// Regions where EC2 throttled a deletion (after the SDK's retries): the pass deleted no
    /// more there, and what it left (in `unfinished`) waits for the next pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regions_throttled: Vec<String>,
    /// Sets this pass planned to delete and had no time for, as they are left.
    #[serde(skip)]
    pub left: Vec<LeftDeletion>,
    /// `left` is recorded in the catalog under this pass's number, and the parts it came from
    /// are settled: the next pass deletes them without planning again.
    #[serde(skip)]
    pub left_stored: bool,
}

/// The most sets an on-demand answer lists (Lambda answers at most 6 MB), and the most a log
/// line lists (CloudWatch Logs keeps events of at most 256 KB). Every decision to delete is
/// logged on a line of its own whatever the size of the plan.
pub const ANSWER_SETS: usize = 2_000;
pub const LOG_LINE_SETS: usize = 200;

/// What a run's retention does after one pass: the next pass's job, or `None` when it ends.
/// Deletions and locks left for lack of time go on in the next pass (which does the deletions
/// the pass recorded, `left_from`, and plans again the rest); those that
/// failed for a reason that may pass get one more pass, at most `RETENTION_RETRIES` of them;
/// and `RETENTION_STALLED_PASSES` passes in a row that deleted nothing end the chain, which
/// would otherwise go on for ever where planning alone fills the invocation.
pub fn next_pass(job: &RetentionJob, outcome: &RetentionOutcome) -> Option<RetentionJob> {
    let retry = outcome.unfinished == 0
        && outcome.transient_failures > 0
        && job.retries < RETENTION_RETRIES;
    let left = outcome.unfinished + outcome.locks_left + outcome.instances_left;
    let advanced = outcome.planned_through.is_some() && outcome.planned_through != job.resume_after;
    let stalled =
        if left > 0 && outcome.deleted.is_empty() && outcome.locks_laid.is_empty() && !advanced {
            job.stalled + 1
        } else {
            0
        };
    let go_on = left > 0 && stalled < RETENTION_STALLED_PASSES;
    // Work left goes on after the last part this pass finished; a retry of failures begins
    // again at the first part.
    let resume_after = if go_on {
        outcome.planned_through.clone()
    } else {
        None
    };
    let missing_through =
        std::cmp::max(job.missing_through.clone(), outcome.missing_through.clone());
    (go_on || retry).then(|| RetentionJob {
        earlier: outcome.carried(&job.earlier, go_on),
        pass: job.pass + 1,
        resume_after,
        missing_through,
        deleted_before: job.deleted_before + outcome.deleted.len(),
        locked_before: job.locked_before + outcome.locks_laid.len(),
        deleted_outside_before: Some(
            job.deleted_outside_before.unwrap_or(0) + outcome.deleted_outside.len(),
        ),
        // A pass that left failed deletions to try again spends a retry as one that plans
        // every part again for them: at `RETENTION_RETRIES`, failures are reported instead.
        retries: job.retries + u32::from(retry || outcome.retried > 0),
        stalled,
        throttled: !outcome.regions_throttled.is_empty(),
        left_from: (go_on && outcome.left_stored).then_some(job.pass),
        ..job.clone()
    })
}

/// The policy of one region: the home region keeps `RETAIN_DAILY` (`RETAIN_COUNT`),
/// `RETAIN_WEEKLY`, `RETAIN_MONTHLY` and `RETAIN_YEARLY` sets, a copy region the `COPY_RETAIN_…`
/// counts; both keep `RETAIN_DAYS`, follow `KEEP_ORPHANED_BACKUPS` and count periods in
/// `SCHEDULE_TIMEZONE`.
pub fn region_policy(config: &Config, home: bool) -> Policy {
    Policy {
        managed_by: config.managed_by.clone(),
        retain: if home {
            config.retain
        } else {
            config.copy_retain
        },
        keep_orphans: config.keep_orphaned_backups,
        zone: config.schedule_zone,
        archive_after_days: config.archive_after_days,
        lock: config.lock_mode.is_some(),
    }
}

/// One region's counts over every part of the fleet retention planned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RegionTally {
    region: String,
    instances: usize,
    sets: usize,
    sets_to_delete: usize,
    locks_to_lay: usize,
    snapshots_to_delete: usize,
    unattributed: usize,
}

impl RetentionOutcome {
    pub fn new(dry_run: bool) -> Self {
        RetentionOutcome {
            dry_run,
            ..RetentionOutcome::default()
        }
    }

    /// Takes in what applying one region's plan did, which went into an outcome of its own
    /// (`region`): a part's regions are applied at once. Everything applying touches is
    /// added; the destructuring names every field, so that one added later is decided here.
    pub fn take_applied(&mut self, region: RetentionOutcome) {
        let RetentionOutcome {
            dry_run: _,
            plans: _,
            tallies: _,
            trimmed: _,
            instances_left: _,
            planned_through: _,
            parts_failed,
            missing_through: _,
            deleted,
            kept,
            failed,
            locked,
            recoverable,
            unfinished,
            archived,
            archive_failed,
            locks_laid,
            lock_failed,
            locks_left,
            deleted_outside,
            tiers_labelled,
            transient_failures,
            retried,
            deleted_before: _,
            locks_laid_before: _,
            deleted_outside_before: _,
            earlier: _,
            settled: _,
            regions_unreadable,
            regions_throttled,
            left,
            left_stored: _,
        } = region;
        self.parts_failed.extend(parts_failed);
        self.deleted.extend(deleted);
        self.kept.extend(kept);
        self.failed.extend(failed);
        self.locked.extend(locked);
        self.recoverable.extend(recoverable);
        self.unfinished += unfinished;
        self.archived.extend(archived);
        self.archive_failed.extend(archive_failed);
        self.locks_laid.extend(locks_laid);
        self.lock_failed.extend(lock_failed);
        self.locks_left += locks_left;
        self.deleted_outside.extend(deleted_outside);
        self.tiers_labelled += tiers_labelled;
        self.transient_failures += transient_failures;
        self.retried += retried;
        self.regions_throttled.extend(regions_throttled);
        self.left.extend(left);
        for region in regions_unreadable {
            if !self.regions_unreadable.contains(&region) {
                self.regions_unreadable.push(region);
            }
        }
    }

    /// Takes in what doing the deletions a pass planned ahead did (`done`): the parts they come
    /// from are settled, so what doing them saw is settled with them.
    pub fn take_deferred(&mut self, done: RetentionOutcome) {
        self.settled = self.settled.and(&done.seen());
        self.take_applied(done);
    }

    /// Takes in the plans of one part of the fleet (applied or not): counted per region, and
    /// merged into `plans` while these hold at most `keep_sets` sets. Past that, `plans` keeps
    /// only the first `keep_sets` sets to delete (what an answer lists) and the counts say the
    /// rest, so that a pass over a million snapshots holds one part's plans at a time.
    pub fn absorb(&mut self, plans: Vec<RegionPlan>, keep_sets: usize) {
        for mut plan in plans {
            let tally = match self.tallies.iter_mut().find(|t| t.region == plan.region) {
                Some(tally) => tally,
                None => {
                    self.tallies.push(RegionTally {
                        region: plan.region.clone(),
                        ..RegionTally::default()
                    });
                    let last = self.tallies.len() - 1;
                    &mut self.tallies[last]
                }
            };
            tally.instances += plan.instances.len();
            tally.sets += plan.instances.values().map(Vec::len).sum::<usize>();
            tally.sets_to_delete += plan.deletions().count();
            tally.locks_to_lay += plan
                .locks
                .iter()
                .map(|c| c.snapshot_ids.len())
                .sum::<usize>();
            tally.snapshots_to_delete += plan.snapshots_to_delete();
            tally.unattributed += plan.unattributed.len();
            plan.missing = Vec::new();
            match self.plans.iter_mut().find(|p| p.region == plan.region) {
                Some(merged) => {
                    merged.instances.append(&mut plan.instances);
                    merged.unattributed.append(&mut plan.unattributed);
                    merged.locks.append(&mut plan.locks);
                }
                None => self.plans.push(plan),
            }
        }
        if self.trimmed || self.sets() > keep_sets {
            self.trim(keep_sets);
        }
    }

    /// Keeps of `plans` only their first `keep_sets` sets to delete.
    fn trim(&mut self, keep_sets: usize) {
        self.trimmed = true;
        let mut left = keep_sets;
        for plan in &mut self.plans {
            plan.locks = Vec::new();
            plan.unattributed = Vec::new();
            plan.instances.retain(|_, sets| {
                sets.retain(|s| s.action == Action::Delete);
                sets.truncate(left);
                left -= sets.len();
                !sets.is_empty()
            });
        }
    }

    /// Sets planned, over every part.
    fn sets(&self) -> usize {
        self.tallies.iter().map(|t| t.sets).sum()
    }

    /// The outcome as JSON: the whole plan when it has at most `max_sets` sets; above that,
    /// each region's counts, the first `max_sets` sets to delete and the first `max_sets`
    /// snapshots of each list, with how many were left out.
    pub fn to_bounded_json(&self, max_sets: usize) -> Value {
        if !self.trimmed && self.sets() <= max_sets {
            return serde_json::to_value(self)
                .unwrap_or_else(|e| json!({ "error": e.to_string() }));
        }
        let regions: Vec<Value> = self
            .tallies
            .iter()
            .map(|t| {
                json!({
                    "region": t.region,
                    "instances": t.instances,
                    "sets": t.sets,
                    "sets_to_delete": t.sets_to_delete,
                    "locks_to_lay": t.locks_to_lay,
                    "snapshots_to_delete": t.snapshots_to_delete,
                    "unattributed": t.unattributed,
                })
            })
            .collect();
        let to_delete: usize = self.tallies.iter().map(|t| t.sets_to_delete).sum();
        let deletions: Vec<Value> = self
            .plans
            .iter()
            .flat_map(|p| {
                p.deletions().map(move |(instance_id, set)| {
                    json!({
                        "region": p.region,
                        "instance_id": instance_id,
                        "run_id": set.run_id,
                        "snapshots": set.snapshots,
                        "reason": set.reason,
                    })
                })
            })
            .take(max_sets)
            .collect();
        let first =
            |list: &[String]| -> Vec<String> { list.iter().take(max_sets).cloned().collect() };
        json!({
            "dry_run": self.dry_run,
            "plan_summary": regions,
            "deletions_not_listed": to_delete - deletions.len(),
            "deletions": deletions,
            "deleted_count": self.deleted.len(),
            "deleted": first(&self.deleted),
            "kept_count": self.kept.len(),
            "kept": first(&self.kept),
            "failed_count": self.failed.len(),
            "failed": first(&self.failed),
            "locked_count": self.locked.len(),
            "locked": first(&self.locked),
            "recoverable_count": self.recoverable.len(),
            "recoverable": first(&self.recoverable),
            "locks_laid_count": self.locks_laid.len(),
            "locks_laid": first(&self.locks_laid),
            "lock_failed": first(&self.lock_failed),
            "locks_left": self.locks_left,
            "deleted_outside_count": self.deleted_outside.len(),
            "deleted_outside": first(&self.deleted_outside),
            "unfinished": self.unfinished,
            "instances_left": self.instances_left,
            "parts_failed": first(&self.parts_failed),
            "earlier": (!self.earlier.is_empty()).then_some(&self.earlier),
        })
    }

    /// What this pass did and saw so far, counted.
    fn this_pass(&self) -> EarlierPasses {
        EarlierPasses {
            recoverable: self.recoverable.len(),
            archived: self.archived.len(),
            failed: self.failed.len(),
            first_failed: self.failed.first().cloned(),
            held_back: self.kept.len(),
            locked: self.locked.len(),
            lock_failed: self.lock_failed.len(),
            archive_failed: self.archive_failed.len(),
            regions_unreadable: self.regions_unreadable.clone(),
            sets: self.sets(),
            regions: self.tallies.len(),
        }
    }

    /// What the earlier passes and this one did and saw: the run's retention so far.
    fn so_far(&self) -> EarlierPasses {
        self.earlier.and(&self.this_pass())
    }

    /// Records what this pass has seen so far as settled: called once the parts up to
    /// `planned_through` are planned and applied whole. What was done (deleted into the
    /// Recycle Bin, archived) is carried whatever the next pass plans: not part of it.
    pub fn settle(&mut self) {
        self.settled = self.seen();
    }

    /// What this pass saw, not what it did (deleted into the Recycle Bin, archived: carried
    /// whatever the next pass plans).
    fn seen(&self) -> EarlierPasses {
        EarlierPasses {
            recoverable: 0,
            archived: 0,
            ..self.this_pass()
        }
    }

    /// What the next pass carries on from `earlier` and this pass: what was done always;
    /// what was seen in the settled parts only when the next pass goes on after them
    /// (`continuing`), not when it plans every part again.
    fn carried(&self, earlier: &EarlierPasses, continuing: bool) -> EarlierPasses {
        let before = if continuing {
            earlier.and(&self.settled)
        } else {
            EarlierPasses {
                recoverable: earlier.recoverable,
                archived: earlier.archived,
                ..EarlierPasses::default()
            }
        };
        before.and(&EarlierPasses {
            recoverable: self.recoverable.len(),
            archived: self.archived.len(),
            ..EarlierPasses::default()
        })
    }

    /// The metrics of an applied retention: snapshots deleted, deleted into the Recycle Bin,
    /// planned but kept (by an AMI, by a lock), deletions failed, regions not read.
    pub fn metric_counts(&self) -> [(&'static str, usize); 10] {
        let so_far = self.so_far();
        [
            (
                "SnapshotsLocked",
                self.locks_laid_before + self.locks_laid.len(),
            ),
            ("LocksFailed", so_far.lock_failed),
            (
                "SnapshotsDeletedOutside",
                self.deleted_outside_before + self.deleted_outside.len(),
            ),
            ("SnapshotsArchived", so_far.archived),
            ("SnapshotsDeleted", self.deleted_before + self.deleted.len()),
            ("SnapshotsInRecycleBin", so_far.recoverable),
            ("DeletionsHeldBack", so_far.held_back),
            ("DeletionsLocked", so_far.locked),
            ("DeletionsFailed", so_far.failed),
            ("RegionsUnreadable", so_far.regions_unreadable.len()),
        ]
    }

    /// Whether all this pass left undone are deletions it planned (`left`): no lock, no
    /// tier to record, which only a plan made again can say.
    pub fn only_deletions_left(&self) -> bool {
        self.locks_left == 0 && self.unfinished == left_snapshots(&self.left)
    }

    /// Whether the run's retention so far left something for an operator to look at: a
    /// deletion failed, a region or a part of the fleet not read.
    pub fn needs_attention(&self) -> bool {
        let so_far = self.so_far();
        so_far.failed > 0 || !so_far.regions_unreadable.is_empty() || !self.parts_failed.is_empty()
    }

    pub fn summary_line(&self) -> String {
        let planned: usize = self.tallies.iter().map(|t| t.snapshots_to_delete).sum();
        // The sets of every part the run's retention planned, by this pass or those before.
        let EarlierPasses { sets, regions, .. } = self.so_far();
        let mut not_planned = if self.instances_left > 0 {
            format!(
                "; {} instance(s) not planned (time ran out)",
                self.instances_left
            )
        } else {
            String::new()
        };
        if let Some(first) = self.parts_failed.first() {
            not_planned += &format!(
                "; {} part(s) of the fleet not read (first: {first})",
                self.parts_failed.len()
            );
        }
        if self.dry_run {
            return format!(
                "retention (dry run): {sets} sets in {regions} region(s), {planned} snapshots would be deleted{not_planned}"
            );
        }
        let so_far = self.so_far();
        let unreadable = if so_far.regions_unreadable.is_empty() {
            String::new()
        } else {
            format!(
                "; not readable, left as they are: {}",
                so_far.regions_unreadable.join(", ")
            )
        };
        let mut held = String::new();
        if so_far.locked > 0 {
            held += &format!(", {} held by a snapshot lock", so_far.locked);
        }
        if so_far.recoverable > 0 {
            held += &format!(
                ", {} in the Recycle Bin (billed, recoverable)",
                so_far.recoverable
            );
        }
        let lock_failed = so_far.lock_failed;
        if self.locks_laid_before + self.locks_laid.len() > 0 || lock_failed > 0 {
            held += &format!(
                ", {} locked or their lock extended ({lock_failed} not, {} left)",
                self.locks_laid_before + self.locks_laid.len(),
                self.locks_left
            );
        }
        if !self.deleted_outside.is_empty() {
            held += &format!(
                ", {} recorded snapshot(s) deleted by someone else (first: {})",
                self.deleted_outside.len(),
                self.deleted_outside[0]
            );
        }
        let (archived, archive_failed) = (so_far.archived, so_far.archive_failed);
        if archived > 0 || archive_failed > 0 {
            held += &format!(", {archived} moved to the archive tier ({archive_failed} not)");
        }
        let failed = match &so_far.first_failed {
            Some(first) => format!("{} failed (first: {first})", so_far.failed),
            None => "0 failed".to_string(),
        };
        format!(
            "retention: {sets} sets in {regions} region(s), {} snapshots deleted{held}, {} kept although planned, {failed}, {} left for the next pass{not_planned}{unreadable}",
            self.deleted_before + self.deleted.len(),
            so_far.held_back,
            self.unfinished
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{Job, RETENTION_THROTTLED_WAIT_SECONDS};
    use chrono::{NaiveDate, TimeZone};
    use proptest::prelude::*;

    fn left_deletion(region: &str, instance: &str, run: &str, snapshots: &[&str]) -> LeftDeletion {
        LeftDeletion {
            region: region.into(),
            instance_id: instance.into(),
            run_id: run.into(),
            kind: SetKind::Consistent,
            started_at: Utc.with_ymd_and_hms(2026, 11, 1, 23, 0, 0).unwrap(),
            reason: "older than the 7 newest".into(),
            snapshots: snapshots.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn deletions_left_become_plans_that_delete_them_and_nothing_else() {
        let plans = left_plans(vec![
            left_deletion("us-east-1", "i-1", "r-1", &["snap-2", "snap-3"]),
            left_deletion("eu-west-1", "i-1", "r-1", &["snap-9"]),
            left_deletion("us-east-1", "i-2", "r-1", &["snap-5"]),
            left_deletion("us-east-1", "i-1", "r-2", &["snap-7"]),
        ]);
        let regions: Vec<&str> = plans.iter().map(|p| p.region.as_str()).collect();
        assert_eq!(regions, ["us-east-1", "eu-west-1"]);
        let home = &plans[0];
        let deletions: Vec<(&str, &str, &[String])> = home
            .deletions()
            .map(|(i, s)| (i, s.run_id.as_str(), s.snapshots.as_slice()))
            .collect();
        assert_eq!(
            deletions,
            [
                (
                    "i-1",
                    "r-1",
                    &["snap-2".to_string(), "snap-3".to_string()][..]
                ),
                ("i-1", "r-2", &["snap-7".to_string()][..]),
                ("i-2", "r-1", &["snap-5".to_string()][..]),
            ]
        );
        assert_eq!(home.snapshots_to_delete(), 4);
        // Nothing kept, locked, archived or relabelled: only the deletions.
        for plan in &plans {
            assert!(plan.locks.is_empty() && plan.unattributed.is_empty());
            assert!(plan
                .instances
                .values()
                .flatten()
                .all(|s| s.action == Action::Delete && !s.archive && s.lock_until.is_none()));
            let calendar = Retain {
                daily: 7,
                weekly: 4,
                monthly: 12,
                yearly: 1,
                days: None,
            };
            assert!(tier_changes(plan, calendar, true).is_empty());
        }
        assert_eq!(
            plans[0].instances["i-1"][0].reason,
            "older than the 7 newest"
        );
    }

    #[test]
    fn the_last_pass_s_summary_counts_the_sets_every_pass_planned() {
        let plan = |region: &str, sets: usize| RegionPlan {
            region: region.into(),
            instances: BTreeMap::from([(
                "i-1".to_string(),
                (0..sets)
                    .map(|k| {
                        SetDecision::deletion(
                            format!("r-{k}"),
                            (SetKind::Consistent, Utc::now()),
                            vec![format!("snap-{region}-{k}")],
                            "old".into(),
                        )
                    })
                    .collect(),
            )]),
            ..RegionPlan::default()
        };
        // The first pass plans 10 sets in 2 regions, and leaves some of their deletions.
        let mut first = RetentionOutcome::new(false);
        first.absorb(
            vec![plan("us-east-1", 6), plan("eu-west-1", 4)],
            ANSWER_SETS,
        );
        first.deleted = vec!["us-east-1/snap-us-east-1-0".into()];
        first.unfinished = 9;
        first.left_stored = true;
        first.planned_through = Some("i-1".into());
        first.settle();
        let job = RetentionJob::first("r");
        let second = next_pass(&job, &first).expect("goes on");
        // The last pass does what was left, planning nothing.
        let last = RetentionOutcome {
            earlier: second.earlier.clone(),
            deleted_before: second.deleted_before,
            deleted: (1..10).map(|k| format!("snap-{k}")).collect(),
            ..RetentionOutcome::new(false)
        };
        let line = last.summary_line();
        assert!(
            line.starts_with("retention: 10 sets in 2 region(s), 10 snapshots deleted"),
            "{line}"
        );
    }

    #[test]
    fn what_doing_the_deletions_planned_ahead_saw_is_settled_with_their_parts() {
        // A part planned whole, its deletions planned ahead.
        let mut outcome = RetentionOutcome::new(false);
        outcome.planned_through = Some("i-1".into());
        outcome.settle();
        // A part after it not whole (a lock left for lack of time): the next pass plans it
        // again and sees again what it saw.
        outcome.kept.push("us-east-1/r-9: used by an AMI".into());
        outcome.locks_left = 1;
        // The settled part's deletions, done after: one deleted, one refused for good.
        let done = RetentionOutcome {
            deleted: vec!["us-east-1/snap-1".into()],
            failed: vec!["us-east-1/snap-2: UnauthorizedOperation".into()],
            ..RetentionOutcome::new(false)
        };
        outcome.take_deferred(done);
        assert_eq!((outcome.deleted.len(), outcome.failed.len()), (1, 1));
        let next = next_pass(&RetentionJob::first("r"), &outcome).expect("goes on");
        assert_eq!(next.deleted_before, 1);
        assert_eq!(next.earlier.failed, 1, "the refusal reaches the last pass");
        assert_eq!(
            next.earlier.held_back, 0,
            "the part planned again is not carried"
        );
    }

    #[test]
    fn a_pass_that_left_failed_deletions_to_try_again_spends_a_retry() {
        let job = RetentionJob::first("r");
        let outcome = RetentionOutcome {
            unfinished: 2,
            retried: 1,
            left: vec![left_deletion(
                "us-east-1",
                "i-1",
                "r-1",
                &["snap-1", "snap-2"],
            )],
            left_stored: true,
            ..RetentionOutcome::default()
        };
        let next = next_pass(&job, &outcome).expect("goes on");
        assert_eq!((next.retries, next.left_from), (1, Some(0)));
        let last = RetentionJob {
            retries: RETENTION_RETRIES - 1,
            ..job.clone()
        };
        let next = next_pass(&last, &outcome).expect("goes on");
        assert_eq!(next.retries, RETENTION_RETRIES, "the last retry is spent");
        // A pass that only ran out of time spends none.
        let out_of_time = RetentionOutcome {
            retried: 0,
            ..outcome
        };
        assert_eq!(next_pass(&job, &out_of_time).expect("goes on").retries, 0);
    }

    #[test]
    fn deletions_left_are_paged_each_page_saying_how_many_and_bounded() {
        let set = left_deletion("us-east-1", "i-1", "r-1", &["snap-1"]);
        let pages = left_pages(&vec![set.clone(); LEFT_PAGE_SETS * 2 + 1]).expect("pages");
        assert_eq!(pages.len(), 3);
        assert!(pages.iter().all(|p| p.pages == 3));
        assert_eq!(pages[2].sets.len(), 1);
        // A page round-trips through the catalog's JSON.
        let text = serde_json::to_string(&pages[2]).expect("json");
        assert_eq!(
            serde_json::from_str::<LeftPage>(&text).expect("read"),
            pages[2]
        );
        assert!(left_pages(&[]).expect("none").is_empty());
        assert!(left_pages(&vec![set; LEFT_PAGE_SETS * LEFT_PAGES + 1]).is_none());
    }

    #[test]
    fn a_pass_that_recorded_its_deletions_left_points_the_next_pass_at_them() {
        let job = RetentionJob {
            pass: 3,
            ..RetentionJob::first("r")
        };
        let mut outcome = RetentionOutcome {
            deleted: vec!["us-east-1/snap-1".into()],
            unfinished: 3,
            left: vec![left_deletion(
                "us-east-1",
                "i-1",
                "r-1",
                &["snap-2", "snap-3", "snap-4"],
            )],
            ..RetentionOutcome::default()
        };
        assert!(outcome.only_deletions_left());
        let next = next_pass(&job, &outcome).expect("goes on");
        assert_eq!(next.left_from, None, "not recorded: planned again");
        outcome.left_stored = true;
        let next = next_pass(&job, &outcome).expect("goes on");
        assert_eq!((next.pass, next.left_from), (4, Some(3)));
        // A tier label or a lock left needs the plan again.
        outcome.unfinished = 4;
        assert!(!outcome.only_deletions_left());
        outcome.unfinished = 3;
        outcome.locks_left = 1;
        assert!(!outcome.only_deletions_left());
        // Nothing left: the chain ends, whatever was recorded.
        let done = RetentionOutcome {
            deleted: vec!["us-east-1/snap-1".into()],
            left_stored: true,
            ..RetentionOutcome::default()
        };
        assert_eq!(next_pass(&job, &done), None);
    }

    #[test]
    fn a_run_s_retention_goes_on_while_it_deletes_and_ends_when_it_no_longer_can() {
        let job = RetentionJob::first("r");
        let pass = |deleted: usize, unfinished: usize, transient: usize| RetentionOutcome {
            deleted: (0..deleted).map(|i| format!("snap-{i}")).collect(),
            unfinished,
            transient_failures: transient,
            ..RetentionOutcome::default()
        };
        // Deleting, with deletions left: on and on, however many passes it takes.
        let mut current = job.clone();
        for _ in 0..50 {
            current = next_pass(&current, &pass(500, 10_000, 0)).expect("goes on");
        }
        assert_eq!(current.deleted_before, 25_000);
        // What the earlier passes locked and found deleted by others is carried to the last
        // pass's metrics: looked for once (the first pass), counted once.
        let mut first = pass(10, 5, 0);
        first.locks_laid = vec!["us-east-1/snap-1: locked".into(); 4];
        first.deleted_outside = vec!["us-east-1/snap-2 (i-1, run r): gone".into(); 3];
        let second = next_pass(&job, &first).expect("a second pass");
        assert_eq!(
            (second.locked_before, second.deleted_outside_before),
            (4, Some(3))
        );
        let mut last = pass(5, 0, 0);
        last.locks_laid = vec!["us-east-1/snap-3: locked".into(); 2];
        last.locks_laid_before = second.locked_before;
        last.deleted_outside_before = second.deleted_outside_before.unwrap_or(0);
        let metrics: BTreeMap<&str, usize> = last.metric_counts().into_iter().collect();
        assert_eq!(
            (
                metrics["SnapshotsLocked"],
                metrics["SnapshotsDeletedOutside"]
            ),
            (6, 3)
        );
        assert_eq!(current.stalled, 0);
        // Passes that delete nothing: the third in a row ends the chain; progress resets it.
        let one = next_pass(&current, &pass(0, 9, 0)).expect("a first stalled pass");
        let two = next_pass(&one, &pass(0, 9, 0)).expect("a second");
        assert_eq!(two.stalled, 2);
        assert_eq!(next_pass(&two, &pass(0, 9, 0)), None, "the third ends it");
        assert_eq!(next_pass(&two, &pass(1, 8, 0)).map(|j| j.stalled), Some(0));
        // Done, or failures that may pass: at most RETENTION_RETRIES more passes.
        assert_eq!(next_pass(&job, &pass(3, 0, 0)), None);
        let mut retry = job;
        for n in 1..=RETENTION_RETRIES {
            retry = next_pass(&retry, &pass(0, 0, 2)).expect("another pass");
            assert_eq!(retry.retries, n);
        }
        assert_eq!(next_pass(&retry, &pass(0, 0, 2)), None);
    }

    #[test]
    fn what_an_early_pass_saw_in_parts_it_finished_reaches_the_last_pass_s_metrics_once() {
        let refused = "us-east-1/snap-1: UnauthorizedOperation".to_string();
        // The first pass: a part applied whole (one deletion refused, one held back by an
        // AMI, one into the Recycle Bin), then a part begun but not finished (another refusal).
        let mut first = RetentionOutcome {
            deleted: vec!["us-east-1/snap-0".into()],
            failed: vec![refused.clone()],
            kept: vec!["us-east-1/snap-2: in use".into()],
            recoverable: vec!["us-east-1/snap-3: recoverable until …".into()],
            ..RetentionOutcome::default()
        };
        first.settle();
        first
            .failed
            .push("us-east-1/snap-4: UnauthorizedOperation".into());
        first.unfinished = 7;
        let job = RetentionJob::first("r");
        let second = next_pass(&job, &first).expect("deletions left");
        // The unfinished part is planned again by the next pass, which sees its refusal again:
        // only the finished part's count is carried.
        assert_eq!(second.earlier.failed, 1);
        assert_eq!(second.earlier.held_back, 1);
        assert_eq!(second.earlier.recoverable, 1);
        assert_eq!(second.earlier.first_failed.as_ref(), Some(&refused));
        // The message carries it.
        let body = crate::jobs::Envelope::new(crate::jobs::Job::Retention(second.clone()));
        let read = crate::jobs::Envelope::from_body(&body.to_body()).expect("the job reads back");
        assert_eq!(read, body);
        // The last pass (it sees the unfinished part's refusal again): both refusals, once each.
        let mut last = RetentionOutcome {
            failed: vec!["us-east-1/snap-4: UnauthorizedOperation".into()],
            earlier: second.earlier.clone(),
            ..RetentionOutcome::default()
        };
        last.settle();
        let metrics: BTreeMap<&str, usize> = last.metric_counts().into_iter().collect();
        assert_eq!(
            (
                metrics["DeletionsFailed"],
                metrics["DeletionsHeldBack"],
                metrics["SnapshotsInRecycleBin"]
            ),
            (2, 1, 1)
        );
        let line = last.summary_line();
        assert!(
            line.contains(&format!("2 failed (first: {refused})"))
                && line.contains("1 kept although planned")
                && line.contains("1 in the Recycle Bin"),
            "{line}"
        );
        assert_eq!(last.to_bounded_json(0)["earlier"]["failed"], json!(1));
        // A retry plans every part again and sees what it saw again: only what was done is
        // carried to it.
        let mut retried = RetentionOutcome {
            failed: vec!["us-east-1/snap-5: RequestLimitExceeded".into()],
            transient_failures: 1,
            earlier: second.earlier.clone(),
            ..RetentionOutcome::default()
        };
        retried.settle();
        let retry = next_pass(&second, &retried).expect("a retry");
        assert_eq!(retry.resume_after, None);
        assert_eq!(
            retry.earlier,
            EarlierPasses {
                recoverable: 1,
                ..EarlierPasses::default()
            }
        );
    }

    #[test]
    fn regions_applied_at_once_add_up_to_what_one_after_another_would_have_done() {
        // What the pass had before this part, then what each region did on its own.
        let mut pass = RetentionOutcome {
            deleted: vec!["us-east-1/snap-0".into()],
            unfinished: 1,
            planned_through: Some("i-01".into()),
            ..RetentionOutcome::new(false)
        };
        let home = RetentionOutcome {
            deleted: vec!["us-east-1/snap-1".into(), "us-east-1/snap-2".into()],
            recoverable: vec!["us-east-1/snap-2: recoverable until …".into()],
            locks_laid: vec!["us-east-1/snap-3: locked".into()],
            tiers_labelled: 2,
            ..RetentionOutcome::new(false)
        };
        let copy = RetentionOutcome {
            deleted: vec!["eu-west-1/snap-4".into()],
            failed: vec!["eu-west-1/snap-5: RequestLimitExceeded".into()],
            transient_failures: 1,
            unfinished: 3,
            locks_left: 1,
            regions_throttled: vec!["eu-west-1".into()],
            archived: vec!["eu-west-1/snap-6".into()],
            ..RetentionOutcome::new(false)
        };
        pass.take_applied(home);
        pass.take_applied(copy);
        assert_eq!(
            pass.deleted,
            [
                "us-east-1/snap-0",
                "us-east-1/snap-1",
                "us-east-1/snap-2",
                "eu-west-1/snap-4"
            ]
        );
        assert_eq!(pass.unfinished, 4);
        assert_eq!(pass.locks_left, 1);
        assert_eq!(pass.transient_failures, 1);
        assert_eq!(pass.tiers_labelled, 2);
        assert_eq!(pass.regions_throttled, ["eu-west-1"]);
        assert_eq!(
            (
                pass.recoverable.len(),
                pass.locks_laid.len(),
                pass.archived.len(),
                pass.failed.len()
            ),
            (1, 1, 1, 1)
        );
        // What the pass itself keeps track of is its own.
        assert_eq!(pass.planned_through.as_deref(), Some("i-01"));
        assert!(!pass.dry_run);
    }

    #[test]
    fn a_region_an_early_pass_could_not_read_is_in_the_run_s_metric_and_summary() {
        let unreadable = "eu-west-1 (RequestLimitExceeded)".to_string();
        // The first pass applied a part without eu-west-1 (not readable then), and ran out
        // of time; the next one begins after that part and reads eu-west-1.
        let mut first = RetentionOutcome {
            deleted: vec!["us-east-1/snap-0".into()],
            regions_unreadable: vec![unreadable.clone()],
            planned_through: Some("i-05".into()),
            instances_left: 40,
            ..RetentionOutcome::default()
        };
        first.settle();
        let job = RetentionJob::first("r");
        let second = next_pass(&job, &first).expect("goes on");
        assert_eq!(second.earlier.regions_unreadable, vec![unreadable.clone()]);
        let last = RetentionOutcome {
            deleted: vec!["eu-west-1/snap-1".into()],
            earlier: second.earlier.clone(),
            ..RetentionOutcome::default()
        };
        let metrics: BTreeMap<&str, usize> = last.metric_counts().into_iter().collect();
        assert_eq!(metrics["RegionsUnreadable"], 1);
        assert!(last.needs_attention());
        let line = last.summary_line();
        assert!(
            line.contains(&format!("not readable, left as they are: {unreadable}")),
            "{line}"
        );
        // Unreadable in both: named once.
        let again = RetentionOutcome {
            regions_unreadable: vec![unreadable.clone()],
            earlier: second.earlier.clone(),
            ..RetentionOutcome::default()
        };
        let metrics: BTreeMap<&str, usize> = again.metric_counts().into_iter().collect();
        assert_eq!(metrics["RegionsUnreadable"], 1);
        // A retry reads every region again for every part: nothing of it is carried.
        let mut retried = RetentionOutcome {
            failed: vec!["us-east-1/snap-5: RequestLimitExceeded".into()],
            transient_failures: 1,
            regions_unreadable: vec![unreadable.clone()],
            earlier: second.earlier.clone(),
            ..RetentionOutcome::default()
        };
        retried.settle();
        let retry = next_pass(&second, &retried).expect("a retry");
        assert!(retry.earlier.regions_unreadable.is_empty(), "{retry:?}");
        // Nothing unreadable anywhere: nothing to look at.
        assert!(!RetentionOutcome::default().needs_attention());
    }

    #[test]
    fn a_pass_out_of_time_before_its_last_part_is_followed_by_one_that_begins_after_it() {
        let job = RetentionJob::first("r");
        // Planned through i-05 (nothing to delete there), 40 servers not planned yet.
        let planning = |through: Option<&str>, missing: Option<&str>| RetentionOutcome {
            instances_left: 40,
            planned_through: through.map(str::to_string),
            missing_through: missing.map(str::to_string),
            ..RetentionOutcome::default()
        };
        let second = next_pass(&job, &planning(Some("i-05"), Some("i-05"))).expect("goes on");
        assert_eq!(second.resume_after.as_deref(), Some("i-05"));
        assert_eq!(second.missing_through.as_deref(), Some("i-05"));
        assert_eq!(second.stalled, 0, "planning further is progress");
        // A pass that could not finish even its first part did not advance: stalled.
        let third = next_pass(&second, &planning(Some("i-05"), Some("i-05"))).expect("goes on");
        assert_eq!(
            (third.resume_after.as_deref(), third.stalled),
            (Some("i-05"), 1)
        );
        // Where missing snapshots were looked for is never moved back.
        let fourth = next_pass(&third, &planning(Some("i-09"), None)).expect("goes on");
        assert_eq!(fourth.missing_through.as_deref(), Some("i-05"));
        assert_eq!(fourth.stalled, 0);
        // A retry of failures begins at the first part again.
        let mut failed = planning(Some("i-99"), None);
        failed.instances_left = 0;
        failed.transient_failures = 2;
        let retry = next_pass(&fourth, &failed).expect("a retry");
        assert_eq!(retry.resume_after, None);
        // Every next pass has a number of its own, which one message claims.
        let passes = [&job, &second, &third, &fourth, &retry].map(|j| j.pass);
        assert_eq!(passes, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_pass_ec2_throttled_is_followed_by_one_that_waits_for_the_budget() {
        let job = RetentionJob::first("r");
        let now = t0();
        let delay = |j: &RetentionJob| Job::Retention(j.clone()).delay_seconds(now, 30, 900);
        assert_eq!(delay(&job), 0, "a pass for lack of time comes at once");
        // Throttled in one region after 120 deletions, 480 left there: not failures, not a
        // retry, but the next pass waits for the region's budget.
        let throttled = RetentionOutcome {
            deleted: (0..120).map(|i| format!("snap-{i}")).collect(),
            unfinished: 480,
            regions_throttled: vec!["us-east-1".into()],
            ..RetentionOutcome::default()
        };
        let next = next_pass(&job, &throttled).expect("goes on");
        assert!(next.throttled);
        assert_eq!((next.retries, next.stalled), (0, 0));
        assert_eq!(delay(&next), RETENTION_THROTTLED_WAIT_SECONDS);
        // And the pass after one that was not throttled comes at once again.
        let on = RetentionOutcome {
            deleted: vec!["snap-x".into()],
            unfinished: 10,
            ..RetentionOutcome::default()
        };
        let after = next_pass(&next, &on).expect("goes on");
        assert!(!after.throttled);
        assert_eq!(delay(&after), 0);
        // Throttled from its first deletion, a pass is stalled: such passes end the chain too.
        let nothing = RetentionOutcome {
            unfinished: 600,
            regions_throttled: vec!["us-east-1".into()],
            ..RetentionOutcome::default()
        };
        let one = next_pass(&job, &nothing).expect("a first");
        let two = next_pass(&one, &nothing).expect("a second");
        assert_eq!(next_pass(&two, &nothing), None);
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn retain(count: u32, days: Option<u32>) -> Retain {
        Retain {
            days,
            ..Retain::daily(count)
        }
    }

    fn policy(count: u32, days: Option<u32>) -> Policy {
        Policy {
            managed_by: "prod".into(),
            retain: retain(count, days),
            keep_orphans: true,
            zone: Tz::UTC,
            archive_after_days: None,
            lock: false,
        }
    }

    fn live(count: u32) -> InstanceStanding {
        InstanceStanding::Live {
            retain: Retain::daily(count),
            lowering: None,
        }
    }

    /// One snapshot of `instance` from the run `days_ago` days back.
    fn snap(instance: &str, days_ago: i64, consistent: bool, n: usize) -> SnapshotInfo {
        let run = format!("run-{days_ago:03}");
        SnapshotInfo {
            snapshot_id: format!("snap-{instance}-{days_ago:03}-{n}"),
            state: "completed".into(),
            start_time: t0() - Duration::days(days_ago),
            tags: [
                (TAG_MANAGED_BY, "prod"),
                (TAG_INSTANCE_ID, instance),
                (TAG_RUN_ID, run.as_str()),
                ("AppConsistent", if consistent { "True" } else { "False" }),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            used_by_images: Box::default(),
            copies_in_progress: 0,
            archived: false,
            recorded_tiers: 0,
        }
    }

    fn actions(plan: &RegionPlan, instance: &str) -> Vec<(String, Action)> {
        plan.instances
            .get(instance)
            .map(|sets| sets.iter().map(|s| (s.run_id.clone(), s.action)).collect())
            .unwrap_or_default()
    }

    fn instances(state: InstanceStanding) -> BTreeMap<String, InstanceStanding> {
        [("i-1".to_string(), state)].into()
    }

    /// A server run with `NoWriters` for the last ten nights, after five application-consistent
    /// ones: its file-system-consistent sets are its backups (kept by count, and a crash set
    /// older than them goes), and its newest application-consistent set is kept whatever the
    /// count.
    #[test]
    fn file_system_consistent_sets_count_and_the_newest_application_consistent_one_stays() {
        let mut snaps = Vec::new();
        for day in 1..=10 {
            let mut fs = snap("i-1", day, true, 0);
            fs.tags.insert(TAG_CONSISTENCY, CONSISTENCY_FILE_SYSTEM);
            snaps.push(fs);
        }
        snaps.push(snap("i-1", 11, false, 0));
        for day in 12..=16 {
            snaps.push(snap("i-1", day, true, 0));
        }
        let plan = plan(
            "us-east-1",
            &snaps,
            &instances(live(7)),
            &policy(7, None),
            t0(),
        );
        let kept: Vec<String> = actions(&plan, "i-1")
            .into_iter()
            .filter(|(_, a)| *a == Action::Keep)
            .map(|(run, _)| run)
            .collect();
        let expected: Vec<String> = (1..=7).chain([12]).map(|d| format!("run-{d:03}")).collect();
        assert_eq!(kept, expected);
        let sets = &plan.instances["i-1"];
        assert_eq!(sets[0].kind, SetKind::FileSystemConsistent);
        assert!(sets
            .iter()
            .find(|s| s.run_id == "run-012")
            .is_some_and(|s| s.reason.contains("newest application-consistent")));
    }

    #[test]
    fn keeps_the_newest_consistent_sets_and_deletes_the_rest_whole() {
        let snaps: Vec<SnapshotInfo> = (1..=5)
            .flat_map(|d| [snap("i-1", d, true, 0), snap("i-1", d, true, 1)])
            .collect();
        let plan = plan("r", &snaps, &instances(live(2)), &policy(7, None), t0());
        assert_eq!(
            actions(&plan, "i-1"),
            vec![
                ("run-001".into(), Action::Keep),
                ("run-002".into(), Action::Keep),
                ("run-003".into(), Action::Delete),
                ("run-004".into(), Action::Delete),
                ("run-005".into(), Action::Delete),
            ]
        );
        assert_eq!(plan.snapshots_to_delete(), 6);
    }

    #[test]
    fn days_keep_younger_sets_beyond_the_count() {
        let snaps: Vec<SnapshotInfo> = (1..=5).map(|d| snap("i-1", d, true, 0)).collect();
        let state = InstanceStanding::Live {
            retain: retain(1, Some(3)),
            lowering: None,
        };
        let plan = plan("r", &snaps, &instances(state), &policy(7, None), t0());
        let kept: Vec<_> = actions(&plan, "i-1")
            .into_iter()
            .filter(|(_, a)| *a == Action::Keep)
            .collect();
        // 1 day: the newest; 2 days: younger than 3; 3 days and older: deleted.
        assert_eq!(kept.len(), 2, "{plan:#?}");
    }

    #[test]
    fn a_crash_consistent_set_is_kept_until_a_newer_consistent_one_exists() {
        let snaps = vec![snap("i-1", 1, false, 0), snap("i-1", 2, true, 0)];
        let plan1 = plan("r", &snaps, &instances(live(1)), &policy(1, None), t0());
        assert_eq!(
            actions(&plan1, "i-1"),
            vec![
                ("run-001".into(), Action::Keep),
                ("run-002".into(), Action::Keep)
            ],
            "a failed run does not push out the last consistent set"
        );
        let snaps = vec![snap("i-1", 1, true, 0), snap("i-1", 2, false, 0)];
        let plan2 = plan("r", &snaps, &instances(live(1)), &policy(1, None), t0());
        assert_eq!(
            actions(&plan2, "i-1"),
            vec![
                ("run-001".into(), Action::Keep),
                ("run-002".into(), Action::Delete)
            ]
        );
    }

    #[test]
    fn in_progress_ami_used_orphaned_and_foreign_snapshots_are_never_deleted() {
        let mut pending = snap("i-1", 5, true, 0);
        pending.state = "pending".into();
        let mut copying = snap("i-1", 6, true, 0);
        copying.copies_in_progress = 1;
        let mut ami = snap("i-1", 7, true, 0);
        ami.used_by_images = vec!["ami-1".into()].into();
        let mut foreign = snap("i-1", 8, true, 0);
        foreign.tags.insert(TAG_MANAGED_BY, "another-deployment");
        let mut unmanaged = snap("i-1", 9, true, 0);
        unmanaged.tags.remove(TAG_MANAGED_BY);
        let mut no_instance = snap("i-1", 10, true, 0);
        no_instance.tags.remove(TAG_INSTANCE_ID);
        let snaps = vec![
            snap("i-1", 1, true, 0),
            pending,
            copying,
            ami,
            foreign,
            unmanaged,
            no_instance.clone(),
            snap("i-2", 30, true, 0),
            snap("i-2", 40, true, 0),
        ];
        let mut known = instances(live(1));
        known.insert(
            "i-2".into(),
            InstanceStanding::Orphaned {
                why: "instance terminated".into(),
            },
        );
        let plan = plan("r", &snaps, &known, &policy(1, None), t0());
        assert_eq!(plan.snapshots_to_delete(), 0, "{plan:#?}");
        let reasons: Vec<&str> = plan.instances["i-1"]
            .iter()
            .map(|s| s.reason.as_str())
            .collect();
        assert!(reasons.iter().any(|r| r.contains("in progress")));
        assert!(reasons.iter().any(|r| r.contains("ami-1")));
        assert!(plan.instances["i-2"]
            .iter()
            .all(|s| s.reason.contains("terminated")));
        assert_eq!(plan.unattributed, vec![no_instance.snapshot_id]);
        assert!(!plan
            .instances
            .values()
            .flatten()
            .any(|s| s.run_id == "run-008" || s.run_id == "run-009"));
        // Orphans follow the count when the policy says so.
        let mut strict = policy(1, None);
        strict.keep_orphans = false;
        let plan = plan_fn(&snaps, &known, &strict);
        assert_eq!(
            actions(&plan, "i-2"),
            vec![
                ("run-030".into(), Action::Keep),
                ("run-040".into(), Action::Delete)
            ]
        );
    }

    fn plan_fn(
        snaps: &[SnapshotInfo],
        known: &BTreeMap<String, InstanceStanding>,
        policy: &Policy,
    ) -> RegionPlan {
        plan("r", snaps, known, policy, t0())
    }

    #[test]
    fn an_invalid_override_keeps_everything_of_that_instance() {
        let snaps: Vec<SnapshotInfo> = (1..=4).map(|d| snap("i-1", d, true, 0)).collect();
        let state = InstanceStanding::InvalidOverride {
            why: "tag ConsistentSnapshot:RetainCount=\"many\" is not a number".into(),
        };
        let plan = plan("r", &snaps, &instances(state), &policy(1, None), t0());
        assert_eq!(plan.snapshots_to_delete(), 0);
        assert!(plan.instances["i-1"]
            .iter()
            .all(|s| s.reason.contains("RetainCount")));
    }

    #[test]
    fn instance_state_reads_presence_tag_and_overrides() {
        let mut facts = InstanceFacts {
            instance_id: "i-1".into(),
            name: None,
            state: "running".into(),
            platform: None,
            platform_details: None,
            root_device: None,
            volumes: vec![],
            tags: [("ConsistentSnapshot".to_string(), "WindowsVSS".to_string())].into(),
            host: Default::default(),
        };
        let target = ("ConsistentSnapshot", "WindowsVSS");
        assert_eq!(
            instance_state(Some(&facts), target, retain(7, None), Overrides::Any),
            live(7)
        );
        facts.tags.insert(TAG_RETAIN_COUNT.into(), "3".into());
        facts.tags.insert(TAG_RETAIN_DAYS.into(), "30".into());
        assert_eq!(
            instance_state(Some(&facts), target, retain(7, None), Overrides::Any),
            InstanceStanding::Live {
                retain: retain(3, Some(30)),
                lowering: Some(
                    "tag ConsistentSnapshot:RetainCount=3 lowers 7: the deployment allows lowering (ALLOW_LOWER_OVERRIDES=true)".into()
                ),
            }
        );
        // Without the deployment's consent a tag only raises: RetainCount=3 below the
        // deployment's 7 is ignored and said so; RetainDays=30 over none raises protection.
        let InstanceStanding::Live {
            retain: own,
            lowering,
        } = instance_state(Some(&facts), target, retain(7, None), Overrides::RaiseOnly)
        else {
            panic!("live");
        };
        assert_eq!((own.daily, own.days), (7, Some(30)));
        let lowering = lowering.unwrap_or_default();
        assert!(
            lowering.contains("RetainCount=3 would lower 7")
                && lowering.contains("ALLOW_LOWER_OVERRIDES"),
            "{lowering}"
        );
        assert_eq!(
            instance_state(Some(&facts), target, retain(2, Some(40)), Overrides::RaiseOnly),
            InstanceStanding::Live {
                retain: retain(3, Some(40)),
                lowering: Some(
                    "tag ConsistentSnapshot:RetainDays=30 would lower 40: ignored, the deployment does not allow lowering (ALLOW_LOWER_OVERRIDES)".into()
                ),
            }
        );
        // The plan says it on every set, and keeps at least what the deployment keeps (here
        // all nine: RetainDays=30, which raises protection, applies).
        let snaps: Vec<SnapshotInfo> = (1..=9).map(|d| snap("i-1", d, true, 0)).collect();
        let state = instance_state(Some(&facts), target, retain(7, None), Overrides::RaiseOnly);
        let planned = plan("r", &snaps, &instances(state), &policy(7, None), t0());
        let sets = &planned.instances["i-1"];
        assert_eq!(sets.iter().filter(|d| d.action == Action::Keep).count(), 9);
        assert!(sets.iter().all(|d| d.reason.contains("would lower 7")));
        // Copy regions keep their own count.
        assert_eq!(
            instance_state(Some(&facts), target, retain(4, None), Overrides::Not),
            live(4)
        );
        facts.tags.insert(TAG_RETAIN_COUNT.into(), "lots".into());
        assert!(matches!(
            instance_state(Some(&facts), target, retain(7, None), Overrides::Any),
            InstanceStanding::InvalidOverride { ref why } if why.contains("lots")
        ));
        facts.tags.remove("ConsistentSnapshot");
        assert!(matches!(
            instance_state(Some(&facts), target, retain(7, None), Overrides::Any),
            InstanceStanding::Orphaned { ref why } if why.contains("no longer tagged")
        ));
        facts.state = "terminated".into();
        assert!(matches!(
            instance_state(Some(&facts), target, retain(7, None), Overrides::Any),
            InstanceStanding::Orphaned { ref why } if why.contains("terminated")
        ));
        assert!(matches!(
            instance_state(None, target, retain(7, None), Overrides::Any),
            InstanceStanding::Orphaned { .. }
        ));
    }

    // --- properties ---------------------------------------------------------------------

    fn arb_snapshot() -> impl Strategy<Value = SnapshotInfo> {
        (
            0..4usize, // instance
            0..12i64,  // run (days ago)
            0..3usize, // volume
            prop_oneof!["completed", "pending", "error"],
            any::<bool>(),                                      // app-consistent
            prop_oneof![Just("prod"), Just("other"), Just("")], // managed by
            0..10u8,                                            // AMI use / copies in progress
        )
            .prop_map(|(i, d, v, state, consistent, by, extra)| {
                let mut s = snap(&format!("i-{i}"), d, consistent, v);
                s.state = state.into();
                if by.is_empty() {
                    s.tags.remove(TAG_MANAGED_BY);
                } else {
                    s.tags.insert(TAG_MANAGED_BY, by);
                }
                if extra == 0 {
                    s.used_by_images = vec!["ami-x".into()].into();
                }
                if extra == 1 {
                    s.copies_in_progress = 1;
                }
                s
            })
    }

    fn arb_world() -> impl Strategy<
        Value = (
            Vec<SnapshotInfo>,
            BTreeMap<String, InstanceStanding>,
            Policy,
        ),
    > {
        (
            prop::collection::vec(arb_snapshot(), 0..60),
            prop::collection::vec(0..4u8, 4),
            1..5u32,
            prop::option::of(1..8u32),
            any::<bool>(),
        )
            .prop_map(|(mut snaps, states, count, days, keep_orphans)| {
                snaps.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
                snaps.dedup_by(|a, b| a.snapshot_id == b.snapshot_id);
                let known = states
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        let state = match s {
                            0 => return None,
                            1 => InstanceStanding::Orphaned {
                                why: "terminated".into(),
                            },
                            2 => InstanceStanding::InvalidOverride { why: "bad".into() },
                            _ => InstanceStanding::Live {
                                retain: retain(count, days),
                                lowering: None,
                            },
                        };
                        Some((format!("i-{i}"), state))
                    })
                    .collect();
                let policy = Policy {
                    managed_by: "prod".into(),
                    retain: retain(count, days),
                    keep_orphans,
                    zone: Tz::UTC,
                    archive_after_days: None,
                    lock: false,
                };
                (snaps, known, policy)
            })
    }

    fn consistent_sets(snaps: &[SnapshotInfo], managed_by: &str) -> BTreeMap<String, usize> {
        let p = Policy {
            managed_by: managed_by.into(),
            retain: Retain::daily(u32::MAX),
            keep_orphans: true,
            zone: Tz::UTC,
            archive_after_days: None,
            lock: false,
        };
        plan("r", snaps, &BTreeMap::new(), &p, t0())
            .instances
            .into_iter()
            .map(|(i, sets)| {
                let n = sets
                    .iter()
                    .filter(|s| s.kind == SetKind::Consistent)
                    .count();
                (i, n)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn never_deletes_what_this_deployment_did_not_make((snaps, known, policy) in arb_world()) {
            let plan = plan("r", &snaps, &known, &policy, t0());
            let doomed: BTreeSet<&String> = plan.deletions().flat_map(|(_, s)| &s.snapshots).collect();
            for s in &snaps {
                if doomed.contains(&s.snapshot_id) {
                    prop_assert_eq!(s.tags.get(TAG_MANAGED_BY), Some("prod"));
                    prop_assert!(s.used_by_images.is_empty());
                    prop_assert!(s.state != SnapshotState::Pending && s.copies_in_progress == 0);
                }
            }
        }

        #[test]
        fn never_keeps_fewer_consistent_sets_than_the_count((snaps, known, policy) in arb_world()) {
            let before = consistent_sets(&snaps, "prod");
            let plan = plan("r", &snaps, &known, &policy, t0());
            let doomed: BTreeSet<&String> = plan.deletions().flat_map(|(_, s)| &s.snapshots).collect();
            let after: Vec<SnapshotInfo> = snaps.iter().filter(|s| !doomed.contains(&s.snapshot_id)).cloned().collect();
            let left = consistent_sets(&after, "prod");
            for (instance, existing) in before {
                let count = match known.get(&instance) {
                    Some(InstanceStanding::Live { retain, .. }) => retain.daily,
                    _ => policy.retain.daily,
                } as usize;
                let remaining = left.get(&instance).copied().unwrap_or(0);
                prop_assert!(remaining >= existing.min(count), "{instance}: {remaining} < min({existing}, {count})");
            }
        }

        #[test]
        fn applying_a_plan_and_planning_again_plans_nothing((snaps, known, policy) in arb_world()) {
            let first = plan("r", &snaps, &known, &policy, t0());
            let doomed: BTreeSet<&String> = first.deletions().flat_map(|(_, s)| &s.snapshots).collect();
            let after: Vec<SnapshotInfo> = snaps.iter().filter(|s| !doomed.contains(&s.snapshot_id)).cloned().collect();
            let second = plan("r", &after, &known, &policy, t0());
            prop_assert_eq!(second.snapshots_to_delete(), 0, "{:#?}", second);
        }
    }

    #[test]
    fn a_set_with_a_locked_snapshot_is_kept_until_the_last_lock_ends() {
        // Three sets of two snapshots; the newest is kept by the count, the two older would go.
        let snaps: Vec<SnapshotInfo> = (1..=3)
            .flat_map(|day| [snap("i-1", day, true, 0), snap("i-1", day, true, 1)])
            .collect();
        let mut plan = plan_fn(&snaps, &instances(live(1)), &policy(1, None));
        assert_eq!(plan.snapshots_to_delete(), 4);
        let until = |days: i64| Some(t0() + Duration::days(days));
        let mut locks = BTreeMap::new();
        let old = &plan.instances["i-1"][1];
        locks.insert(
            old.snapshots[0].clone(),
            SnapshotLock {
                state: "governance".into(),
                until: until(3),
            },
        );
        locks.insert(
            old.snapshots[1].clone(),
            SnapshotLock {
                state: "compliance".into(),
                until: until(30),
            },
        );
        // A lock on a snapshot the plan keeps anyway changes nothing.
        locks.insert(
            plan.instances["i-1"][0].snapshots[0].clone(),
            SnapshotLock {
                state: "compliance".into(),
                until: until(9),
            },
        );
        let locked_id = old.snapshots[1].clone();
        assert_eq!(hold_locked(&mut plan, &locks), 1);
        let sets = &plan.instances["i-1"];
        assert_eq!(sets[0].held, None);
        assert_eq!(sets[1].action, Action::Keep);
        assert_eq!(sets[1].held, Some(Held::Lock));
        let end = until(30).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        assert!(
            sets[1].reason.starts_with(&format!(
                "{locked_id} locked (compliance) until {}",
                end.unwrap_or_default()
            )),
            "{}",
            sets[1].reason
        );
        // The whole set is kept (never half of it deleted); the unlocked older set still goes.
        assert_eq!(sets[2].action, Action::Delete);
        assert_eq!(plan.snapshots_to_delete(), 2);
    }

    #[test]
    fn locks_are_laid_until_a_set_is_expected_to_go_extended_never_shortened() {
        let now = t0();
        let at = |hours: i64| now + Duration::hours(hours);
        // Daily 2 with days 10: the newest two sets are kept by the tier, the older ones by
        // their age; the orphan's sets are all kept (KEEP_ORPHANED_BACKUPS) but never locked.
        let snaps: Vec<SnapshotInfo> = (0..4)
            .flat_map(|day| (0..3).map(move |n| snap("i-1", day, true, n)))
            .chain((0..2).map(|day| snap("i-gone", day, true, 0)))
            .collect();
        let mut known = instances(InstanceStanding::Live {
            retain: retain(2, Some(10)),
            lowering: None,
        });
        known.insert(
            "i-gone".into(),
            InstanceStanding::Orphaned {
                why: "instance terminated".into(),
            },
        );
        let mut policy = policy(2, Some(10));
        policy.lock = true;
        let planned = plan("r", &snaps, &known, &policy, now);
        assert!(planned.instances["i-gone"]
            .iter()
            .all(|s| s.lock_until.is_none()));
        let sets = &planned.instances["i-1"];
        // Three days old, kept for its age: until it is ten days old.
        assert_eq!(sets[3].lock_until, Some(now + Duration::days(7)));
        let lock = |state: &str, hours: i64| SnapshotLock {
            state: state.into(),
            until: Some(at(hours)),
        };
        let ids = &sets[3].snapshots;
        let locks: BTreeMap<String, SnapshotLock> = [
            // Ends 5 days sooner than planned: extended.
            (ids[0].clone(), lock("compliance", 2 * 24)),
            // Governance, ending 12 hours before the plan: made compliance and extended.
            (ids[1].clone(), lock("governance", 7 * 24 - 12)),
            // Compliance, 12 hours sooner, with days to run: close enough, left alone.
            (ids[2].clone(), lock("compliance", 7 * 24 - 12)),
        ]
        .into();
        let due = locks_due(&planned, &locks, (LockMode::Compliance, 3650), now);
        let of = |run: &str| due.iter().find(|c| c.run_id == run);
        let change = of(&sets[3].run_id).expect("the oldest set's locks");
        assert_eq!(change.snapshot_ids, vec![ids[0].clone(), ids[1].clone()]);
        assert_eq!(change.extended, change.snapshot_ids);
        assert_eq!((change.days, change.until), (7, now + Duration::days(7)));
        // A set locked for nothing yet: every snapshot, none extended; no orphan's.
        assert_eq!(due.len(), 4, "{due:#?}");
        assert!(due.iter().all(|c| c.instance_id == "i-1"));
        assert!(of(&sets[0].run_id).is_some_and(|c| c.extended.is_empty()));
        // A governance lock that ends later than planned is never shortened to make it
        // compliance; at most LOCK_MAX_DAYS at once.
        let later: BTreeMap<String, SnapshotLock> =
            [(ids[1].clone(), lock("governance", 30 * 24))].into();
        let due = locks_due(&planned, &later, (LockMode::Compliance, 3), now);
        let change = due.iter().find(|c| c.run_id == sets[3].run_id);
        assert!(change.is_some_and(|c| !c.snapshot_ids.contains(&ids[1]) && c.days == 3));
    }

    #[test]
    fn locks_recycle_bin_and_failures_are_named_in_the_summary_and_metrics() {
        let mut outcome = outcome(2, 3);
        outcome.locked = vec!["us-east-1/run-02: snap-1 locked (compliance) until …".into()];
        outcome.recoverable = vec!["us-east-1/snap-0-2: recoverable until …".into()];
        outcome.deleted.retain(|d| !d.ends_with("snap-0-2"));
        outcome.failed = vec!["us-east-1/snap-9: DeleteSnapshot of snap-9: AccessDenied".into()];
        let line = outcome.summary_line();
        assert!(line.contains("1 snapshots deleted"), "{line}");
        assert!(line.contains("1 held by a snapshot lock"), "{line}");
        assert!(line.contains("1 in the Recycle Bin"), "{line}");
        assert!(
            line.contains("1 failed (first: us-east-1/snap-9: DeleteSnapshot"),
            "{line}"
        );
        let metrics: BTreeMap<&str, usize> = outcome.metric_counts().into_iter().collect();
        assert_eq!(metrics["SnapshotsDeleted"], 1);
        assert_eq!(metrics["SnapshotsInRecycleBin"], 1);
        assert_eq!(metrics["DeletionsLocked"], 1);
        assert_eq!(metrics["DeletionsFailed"], 1);
    }

    fn outcome(instances: usize, sets: usize) -> RetentionOutcome {
        let set = |i: usize, k: usize| SetDecision {
            action: if k >= 2 { Action::Delete } else { Action::Keep },
            ..SetDecision::deletion(
                format!("run-{k:02}"),
                (SetKind::Consistent, Utc::now()),
                vec![format!("snap-{i}-{k}")],
                "older than the newest 2 consistent sets".into(),
            )
        };
        let plan = RegionPlan {
            region: "us-east-1".into(),
            instances: (0..instances)
                .map(|i| (format!("i-{i:04}"), (0..sets).map(|k| set(i, k)).collect()))
                .collect(),
            unattributed: vec![],
            locks: vec![],
            missing: vec![],
        };
        let mut outcome = RetentionOutcome {
            deleted: plan
                .deletions()
                .flat_map(|(_, s)| s.snapshots.iter().map(|id| format!("us-east-1/{id}")))
                .collect(),
            ..RetentionOutcome::default()
        };
        outcome.absorb(vec![plan], ANSWER_SETS);
        outcome
    }

    #[test]
    fn parts_absorbed_past_the_answer_keep_their_counts_and_only_the_first_deletions() {
        // Three parts of 100 instances × 4 sets (2 to delete each), kept to 50 sets.
        let mut whole = RetentionOutcome::default();
        for part in 0..3 {
            let mut plan = outcome(100, 4).plans.remove(0);
            plan.instances = std::mem::take(&mut plan.instances)
                .into_iter()
                .map(|(id, sets)| (format!("{id}-{part}"), sets))
                .collect();
            whole.absorb(vec![plan], 50);
        }
        let kept: usize = whole
            .plans
            .iter()
            .map(|p| p.instances.values().map(Vec::len).sum::<usize>())
            .sum();
        assert_eq!(kept, 50, "only the first deletions are held");
        assert!(whole.plans.iter().all(|p| p
            .instances
            .values()
            .flatten()
            .all(|s| s.action == Action::Delete)));
        let answer = whole.to_bounded_json(50);
        assert_eq!(answer["plan_summary"][0]["instances"], json!(300));
        assert_eq!(answer["plan_summary"][0]["sets"], json!(1200));
        assert_eq!(answer["plan_summary"][0]["sets_to_delete"], json!(600));
        assert_eq!(answer["deletions"].as_array().map(Vec::len), Some(50));
        assert_eq!(answer["deletions_not_listed"], json!(550));
        assert!(
            whole.summary_line().contains("1200 sets in 1 region(s)"),
            "{}",
            whole.summary_line()
        );
        // Below the bound, parts merge whole, and the answer is the merged plan.
        let mut small = RetentionOutcome::default();
        small.absorb(outcome(2, 3).plans, ANSWER_SETS);
        small.absorb(
            outcome(1, 3)
                .plans
                .into_iter()
                .map(|mut p| {
                    p.instances = std::mem::take(&mut p.instances)
                        .into_iter()
                        .map(|(id, s)| (format!("{id}-b"), s))
                        .collect();
                    p
                })
                .collect(),
            ANSWER_SETS,
        );
        assert_eq!(small.plans.len(), 1);
        assert_eq!(small.plans[0].instances.len(), 3);
        assert!(small.to_bounded_json(ANSWER_SETS).get("plans").is_some());
    }

    #[test]
    fn a_small_outcome_is_answered_whole() {
        let small = outcome(3, 4);
        assert_eq!(
            small.to_bounded_json(12),
            serde_json::to_value(&small).unwrap_or_default()
        );
    }

    #[test]
    fn a_large_outcome_is_answered_with_counts_and_the_first_deletions() {
        // 100 instances × 4 sets, 2 of them to delete each: 200 sets to delete.
        let large = outcome(100, 4);
        let answer = large.to_bounded_json(50);
        assert!(answer.get("plans").is_none());
        assert_eq!(answer["plan_summary"][0]["sets"], json!(400));
        assert_eq!(answer["plan_summary"][0]["sets_to_delete"], json!(200));
        assert_eq!(answer["plan_summary"][0]["snapshots_to_delete"], json!(200));
        assert_eq!(answer["deletions"].as_array().map(Vec::len), Some(50));
        assert_eq!(answer["deletions_not_listed"], json!(150));
        assert_eq!(answer["deletions"][0]["instance_id"], json!("i-0000"));
        assert_eq!(answer["deleted_count"], json!(200));
        assert_eq!(answer["deleted"].as_array().map(Vec::len), Some(50));
        assert!(answer.to_string().len() < 20_000);
    }

    #[test]
    fn the_home_region_keeps_retain_count_and_copy_regions_copy_retain_count() {
        let config = Config::from_lookup(|name| match name {
            "QUEUE_URL" => Some("q".into()),
            "QUEUE_ARN" => Some("arn:aws:sqs:eu-west-1:123456789012:q".into()),
            "CATALOG_TABLE" => Some("prod-catalog".into()),
            "MANAGED_BY" => Some("prod".into()),
            "RETAIN_COUNT" => Some("7".into()),
            "COPY_RETAIN_COUNT" => Some("3".into()),
            "RETAIN_DAYS" => Some("14".into()),
            _ => None,
        })
        .expect("config");
        let home = region_policy(&config, true);
        let copy = region_policy(&config, false);
        assert_eq!((home.retain.daily, copy.retain.daily), (7, 3));
        assert_eq!((home.retain.days, copy.retain.days), (Some(14), Some(14)));
        assert_eq!(home.managed_by, "prod");
        assert!(home.keep_orphans && copy.keep_orphans);
    }

    // --- tiers over simulated years -------------------------------------------------------

    /// What a night left of an instance in the simulation.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Night {
        Consistent,
        CrashConsistent,
        Missed,
    }

    /// One set a simulation has taken: its run id, when, whether consistent, and its local
    /// week, month and year labels.
    #[derive(Debug, Clone)]
    struct Took {
        run: String,
        at: DateTime<Utc>,
        consistent: bool,
        labels: [String; 3],
    }

    type Taken = Vec<Took>;

    const LABELS: [&str; 3] = ["%G-W%V", "%Y-%m", "%Y"];

    /// What the tiers must keep of everything ever taken, computed apart from `model::tiers`:
    /// periods named by their local calendar labels, the newest `count` labels that have a set,
    /// each stood for by its first consistent set or else its first crash-consistent one; the
    /// newest `daily` consistent sets; and a crash-consistent set with no newer consistent set.
    fn expected_survivors(taken: &Taken, retain: &Retain) -> BTreeSet<String> {
        let mut keep = BTreeSet::new();
        let mut consistent: Vec<&Took> = taken.iter().filter(|t| t.consistent).collect();
        consistent.sort_by_key(|t| std::cmp::Reverse(t.at));
        keep.extend(
            consistent
                .iter()
                .take(retain.daily as usize)
                .map(|t| t.run.clone()),
        );
        let newest_consistent = consistent.first().map(|t| t.at);
        keep.extend(
            taken
                .iter()
                .filter(|t| !t.consistent && newest_consistent.is_none_or(|n| n < t.at))
                .map(|t| t.run.clone()),
        );
        for (k, count) in [retain.weekly, retain.monthly, retain.yearly]
            .into_iter()
            .enumerate()
        {
            let mut periods: BTreeMap<&str, Vec<&Took>> = BTreeMap::new();
            for t in taken {
                periods.entry(t.labels[k].as_str()).or_default().push(t);
            }
            for sets in periods.values().rev().take(count as usize) {
                let first = |consistent: bool| {
                    sets.iter()
                        .filter(|t| t.consistent == consistent)
                        .min_by_key(|t| t.at)
                        .map(|t| t.run.clone())
                };
                keep.extend(first(true).or_else(|| first(false)));
            }
        }
        keep
    }

    fn simulated_set(run: &str, at: DateTime<Utc>, consistent: bool) -> Vec<SnapshotInfo> {
        (0..2)
            .map(|v| {
                let mut s = snap("i-1", 0, consistent, v);
                s.snapshot_id = format!("snap-{run}-{v}");
                s.start_time = at;
                s.tags.insert(TAG_RUN_ID, run);
                s
            })
            .collect()
    }

    const ZONES: [&str; 5] = [
        "UTC",
        "Europe/Paris",
        "America/New_York",
        "Australia/Sydney",
        "Asia/Kolkata",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Every night of a year or two, an instance's run leaves a consistent set, a
        /// crash-consistent one or none, near local midnight (where a DST change moves the
        /// day), and retention applies its plan: what is left is exactly the tiers' selection
        /// of everything ever taken, each tier keeps as many periods as it may, a set a tier
        /// keeps is never deleted, and planning again right after plans nothing.
        #[test]
        fn years_of_nights_keep_exactly_the_tier_selection(
            nights in prop::collection::vec(
                prop_oneof![8 => Just(Night::Consistent), 1 => Just(Night::CrashConsistent), 1 => Just(Night::Missed)],
                200..800,
            ),
            zone in prop::sample::select(ZONES.to_vec()),
            minute in prop::sample::select(vec![-35i64, -5, 10, 95]),
            daily in 1..10u32,
            weekly in 0..6u32,
            monthly in 0..14u32,
            yearly in 0..3u32,
            archive_after_days in prop::option::of(1..60u32),
            locking in any::<bool>(),
        ) {
            let zone = tiers::zone(zone).unwrap_or(Tz::UTC);
            let retain = Retain { daily, weekly, monthly, yearly, days: None };
            let policy = Policy { managed_by: "prod".into(), retain, keep_orphans: true, zone, archive_after_days, lock: locking };
            let known = instances(InstanceStanding::Live { retain, lowering: None });
            let mut archived_at: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
            let first_day = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap_or_default();
            let mut taken: Taken = Vec::new();
            let mut existing: Vec<SnapshotInfo> = Vec::new();
            // The locks laid so far, as EC2 would keep them (a lock past its end is none).
            let mut locks: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
            for (n, night) in nights.iter().enumerate() {
                let day = first_day + Duration::days(n as i64);
                let local = day.and_hms_opt(0, 0, 0).unwrap_or_default() + Duration::minutes(minute);
                let Some(at) = zone.from_local_datetime(&local).earliest() else { continue };
                let at = at.with_timezone(&Utc);
                let now = at + Duration::hours(2);
                if *night != Night::Missed {
                    let run = format!("run-{n:04}");
                    let consistent = *night == Night::Consistent;
                    existing.extend(simulated_set(&run, at, consistent));
                    let labels = LABELS.map(|f| at.with_timezone(&zone).format(f).to_string());
                    taken.push(Took { run, at, consistent, labels });
                }
                let mut planned = plan("r", &existing, &known, &policy, now);
                let in_force: BTreeMap<String, SnapshotLock> = locks
                    .iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(id, until)| (id.clone(), SnapshotLock { state: "compliance".into(), until: Some(*until) }))
                    .collect();
                hold_locked(&mut planned, &in_force);
                let doomed: BTreeSet<&String> = planned.deletions().flat_map(|(_, s)| &s.snapshots).collect();
                if locking {
                    for change in locks_due(&planned, &in_force, (LockMode::Compliance, 36_500), now) {
                        for id in &change.snapshot_ids {
                            let held = locks.get(id).copied().filter(|until| *until > now);
                            prop_assert!(held.is_none_or(|held| change.until >= held), "{id}: a lock shortened");
                            locks.insert(id.clone(), change.until);
                        }
                    }
                    // Every backup a tier keeps, expected to stay a day or more, is locked
                    // until a day before its expected deletion at the earliest.
                    for set in planned.instances.values().flatten() {
                        let Some(end) = set.lock_until else { continue };
                        if end < now + Duration::days(1) { continue; }
                        for id in &set.snapshots {
                            let until = locks.get(id).copied();
                            prop_assert!(until.is_some_and(|u| u >= end - Duration::days(2)), "{} ({id}) kept until {end} but locked until {until:?}", set.run_id);
                        }
                    }
                }
                for (_, set) in planned.deletions() {
                    prop_assert!(set.tiers.is_empty(), "deleting {} which {:?} keep", set.run_id, set.tiers);
                    if let Some(at) = archived_at.get(&set.run_id) {
                        prop_assert!(now - *at >= Duration::days(ARCHIVE_MINIMUM_DAYS), "{} deleted {} days after it was archived", set.run_id, (now - *at).num_days());
                    }
                }
                let archiving: BTreeSet<&String> = planned.instances.values().flatten().filter(|s| s.archive).map(|s| &s.run_id).collect();
                for set in planned.instances.values().flatten().filter(|s| s.archive) {
                    prop_assert!(set.tiers.list().iter().all(|t| matches!(t, Tier::Monthly | Tier::Yearly)), "{:?}", set);
                    prop_assert!(now - set.started_at >= Duration::days(i64::from(archive_after_days.unwrap_or(0))));
                    archived_at.entry(set.run_id.clone()).or_insert(now);
                }
                for s in existing.iter_mut() {
                    if s.tag(TAG_RUN_ID).is_some_and(|run| archiving.contains(&run.to_string())) {
                        s.archived = true;
                    }
                }
                existing.retain(|s| !doomed.contains(&s.snapshot_id));
                let survivors: BTreeSet<String> = existing.iter().filter_map(|s| s.tag(TAG_RUN_ID).map(str::to_string)).collect();
                let expected = expected_survivors(&taken, &retain);
                // A lock holds a set past its tiers only when its expected deletion came
                // sooner than foreseen (a night an hour short at a DST change): by hours.
                let held: BTreeMap<&String, &SetDecision> = planned.instances.values().flatten().filter(|s| s.held == Some(Held::Lock)).map(|s| (&s.run_id, s)).collect();
                for (run, set) in &held {
                    let until = set.snapshots.iter().filter_map(|id| locks.get(id)).max().copied().unwrap_or(now);
                    prop_assert!(until - now <= Duration::days(2), "{run} held by a lock until {until} on night {n}");
                }
                prop_assert!(locking || held.is_empty());
                let extra: BTreeSet<&String> = survivors.difference(&expected).collect();
                prop_assert!(expected.is_subset(&survivors), "night {}: {:?} missing", n, expected.difference(&survivors).collect::<Vec<_>>());
                prop_assert!(extra.iter().all(|run| held.contains_key(run)), "night {}: {:?} kept, not by a lock", n, extra);
                let mut again = plan("r", &existing, &known, &policy, now);
                hold_locked(&mut again, &in_force);
                prop_assert_eq!(again.snapshots_to_delete(), 0, "night {}", n);
                // Each calendar tier stands for as many periods as it may.
                let sets = again.instances.get("i-1").cloned().unwrap_or_default();
                for (k, tier) in [Tier::Weekly, Tier::Monthly, Tier::Yearly].into_iter().enumerate() {
                    let periods: BTreeSet<&str> = taken.iter().map(|t| t.labels[k].as_str()).collect();
                    let standing = sets.iter().filter(|s| s.tiers.contains(tier)).count();
                    prop_assert_eq!(standing, periods.len().min(retain.count(tier) as usize), "{:?} on night {}", tier, n);
                }
            }
        }
    }

    #[test]
    fn a_dry_run_says_which_tiers_keep_a_set_and_when_it_is_expected_to_go() {
        // Nightly consistent sets at 01:00 UTC for 70 days up to 2026-11-18.
        let now = DateTime::parse_from_rfc3339("2026-11-18T03:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let mut snaps = Vec::new();
        for n in 0..70 {
            let at = now - Duration::hours(2) - Duration::days(n);
            snaps.extend(simulated_set(&format!("run-{:04}", 100 - n), at, true));
        }
        let retain = Retain {
            daily: 7,
            weekly: 4,
            monthly: 2,
            yearly: 0,
            days: None,
        };
        let policy = Policy {
            managed_by: "prod".into(),
            retain,
            keep_orphans: true,
            zone: Tz::UTC,
            archive_after_days: None,
            lock: false,
        };
        let known = instances(InstanceStanding::Live {
            retain,
            lowering: None,
        });
        let planned = plan("r", &snaps, &known, &policy, now);
        let sets = &planned.instances["i-1"];
        let kept: Vec<&SetDecision> = sets.iter().filter(|s| s.action == Action::Keep).collect();
        // 7 daily; weeks W47 (Mon 16th: in the daily ones), W46, W45, W44; months 11 (1st)
        // and 10 (1st of October, 48 days back).
        assert_eq!(kept.len(), 7 + 3 + 2, "{kept:#?}");
        let by_day = |day: &str| {
            sets.iter()
                .find(|s| s.started_at.format("%Y-%m-%d").to_string() == day)
                .cloned()
        };
        let oct = by_day("2026-10-01").expect("the first of October");
        assert_eq!(oct.tiers.list(), vec![Tier::Monthly]);
        assert!(
            oct.reason.contains("month 2026-10 (monthly)"),
            "{}",
            oct.reason
        );
        // It goes when December has a set: the month after next begins.
        assert_eq!(
            oct.deleted_after.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-12-01T00:00:00+00:00")
        );
        let monday = by_day("2026-11-16").expect("Monday of W47");
        assert_eq!(monday.tiers.list(), vec![Tier::Daily, Tier::Weekly]);
        // Out of the daily tier after five more nights; out of the weekly one when four newer
        // weeks have a set (W48 to W51): deleted from W51's Monday, 2026-12-14.
        assert_eq!(
            monday.next_change.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-11-23T01:00:00+00:00")
        );
        assert_eq!(
            monday.deleted_after.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-12-14T00:00:00+00:00")
        );
        let gone = by_day("2026-11-10").expect("Tuesday of W46");
        assert_eq!((gone.action, gone.tiers.is_empty()), (Action::Delete, true));
        assert!(
            gone.reason
                .contains("standing for no week, month or year kept"),
            "{}",
            gone.reason
        );
        let json = serde_json::to_value(&oct).unwrap_or_default();
        assert_eq!(json["tiers"], serde_json::json!(["monthly"]));
    }
}
