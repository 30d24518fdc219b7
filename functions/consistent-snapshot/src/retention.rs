//! Retention: which snapshot sets of each instance to keep and which to delete, in one region.
//!
//! `plan` is a pure function of the snapshots, the instances and the policy; every decision
//! carries its reason, and the deletion edge only ever acts on a plan. The rules, in order:
//!
//! 1. Only this deployment's snapshots (`ConsistentSnapshot:ManagedBy`) are considered at all.
//! 2. A set is the snapshots of one instance with one run id. A set with a snapshot still
//!    `pending`, or with a copy still in progress, is kept.
//! 3. The newest `retain_count` consistent sets (every snapshot completed and
//!    `AppConsistent=True`) are kept, whatever their age; with `retain_days`, every set younger
//!    than that is kept too.
//! 4. A set that is not consistent (crash-consistent, or with a failed snapshot) is kept while
//!    no newer consistent set exists: it is then the best backup there is.
//! 5. Sets of an instance that is gone or no longer tagged are kept unless the policy says
//!    otherwise; sets of an instance whose override tags are invalid are all kept.
//! 6. A set with a snapshot an AMI uses is kept and reported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::dispatch::{TAG_INSTANCE_ID, TAG_MANAGED_BY, TAG_RUN_ID};

/// A snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub snapshot_id: String,
    pub state: String,
    pub start_time: DateTime<Utc>,
    pub tags: SnapshotTags,
    /// AMIs whose block devices use this snapshot.
    pub used_by_images: Vec<String>,
    /// Copies of this snapshot (in other regions) that are not completed yet.
    pub copies_in_progress: usize,
}

impl SnapshotInfo {
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key)
    }
}

/// A snapshot's tags, small: a plan over 100,000 snapshots holds 600,000 of them. Keys and
/// values are shared strings, so that the snapshots of one set (and of one deployment) share
/// one copy of their instance id, run id and `ManagedBy` when read through a `TagInterner`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotTags(Box<[(Arc<str>, Arc<str>)]>);

impl SnapshotTags {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| &**k == key).map(|(_, v)| &**v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: &str, value: &str) {
        let mut pairs: Vec<(Arc<str>, Arc<str>)> = std::mem::take(&mut self.0).into_vec();
        pairs.retain(|(k, _)| &**k != key);
        pairs.push((key.into(), value.into()));
        self.0 = pairs.into_boxed_slice();
    }

    pub fn remove(&mut self, key: &str) {
        let mut pairs: Vec<(Arc<str>, Arc<str>)> = std::mem::take(&mut self.0).into_vec();
        pairs.retain(|(k, _)| &**k != key);
        self.0 = pairs.into_boxed_slice();
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for SnapshotTags {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut tags = SnapshotTags::default();
        for (k, v) in pairs {
            tags.insert(k.as_ref(), v.as_ref());
        }
        tags
    }
}

/// Hands out one shared copy of each distinct tag text.
#[derive(Debug, Default)]
pub struct TagInterner(std::collections::HashSet<Arc<str>>);

impl TagInterner {
    pub fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(found) = self.0.get(text) {
            return found.clone();
        }
        let shared: Arc<str> = text.into();
        self.0.insert(shared.clone());
        shared
    }

    /// These tags, with keys and values shared with earlier ones.
    pub fn tags<'a>(
        &mut self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> SnapshotTags {
        let pairs: Vec<(Arc<str>, Arc<str>)> = pairs
            .into_iter()
            .map(|(k, v)| (self.intern(k), self.intern(v)))
            .collect();
        SnapshotTags(pairs.into_boxed_slice())
    }
}

/// What the planner knows of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    /// Tagged and present; its own count and days (overrides already applied).
    Live {
        retain_count: u32,
        retain_days: Option<u32>,
    },
    /// Terminated, not found, or no longer carrying the target tag.
    Orphaned { why: String },
    /// An override tag could not be read: nothing of it is deleted.
    InvalidOverride { why: String },
}

/// The deployment-wide policy of one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub managed_by: String,
    pub retain_count: u32,
    pub retain_days: Option<u32>,
    /// Keep every set of an orphaned instance (the default), or apply the count and days to it
    /// as to a live one.
    pub keep_orphans: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    Consistent,
    /// Completed, but not every snapshot is `AppConsistent=True`, or one of them failed.
    NotConsistent,
    InProgress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Keep,
    Delete,
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
}

/// The plan of one region: per instance, every set with its decision, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegionPlan {
    pub region: String,
    pub instances: BTreeMap<String, Vec<SetDecision>>,
    /// Snapshots of this deployment that carry no run id or instance id: never deleted.
    pub unattributed: Vec<String>,
}

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
            .any(|s| s.state == "pending" || s.copies_in_progress > 0)
        {
            return SetKind::InProgress;
        }
        let consistent = self.snapshots.iter().all(|s| {
            s.state == "completed"
                && s.tag("AppConsistent")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        });
        if consistent {
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
    instances: &BTreeMap<String, InstanceState>,
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
    state: Option<&InstanceState>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Vec<SetDecision> {
    let keep_all = match state {
        Some(InstanceState::InvalidOverride { why }) => {
            Some(format!("{why}: nothing of this instance is deleted"))
        }
        Some(InstanceState::Orphaned { why }) if policy.keep_orphans => Some(format!(
            "{why}: its backups are kept (KEEP_ORPHANED_BACKUPS)"
        )),
        None if policy.keep_orphans => {
            Some("instance not found: its backups are kept (KEEP_ORPHANED_BACKUPS)".to_string())
        }
        _ => None,
    };
    let (retain_count, retain_days) = match state {
        Some(InstanceState::Live {
            retain_count,
            retain_days,
        }) => (*retain_count, *retain_days),
        _ => (policy.retain_count, policy.retain_days),
    };
    let newest_consistent = sets
        .iter()
        .filter(|s| s.kind() == SetKind::Consistent)
        .map(SnapshotSet::started_at)
        .max();
    let mut consistent_seen = 0;
    let mut decisions = Vec::new();
    for set in sets {
        let kind = set.kind();
        let started_at = set.started_at();
        let young = retain_days
            .map(|days| now - started_at < Duration::days(i64::from(days)))
            .unwrap_or(false);
        let (mut action, mut reason) = match kind {
            SetKind::InProgress => (
                Action::Keep,
                "in progress: a snapshot or one of its copies is not completed".to_string(),
            ),
            SetKind::Consistent => {
                consistent_seen += 1;
                if consistent_seen <= retain_count {
                    (
                        Action::Keep,
                        format!("one of the newest {retain_count} consistent sets"),
                    )
                } else if young {
                    (
                        Action::Keep,
                        format!("younger than {} days", retain_days.unwrap_or_default()),
                    )
                } else {
                    (
                        Action::Delete,
                        format!("older than the newest {retain_count} consistent sets"),
                    )
                }
            }
            SetKind::NotConsistent => match newest_consistent {
                Some(newest) if newest > started_at => {
                    if young {
                        (
                            Action::Keep,
                            format!("younger than {} days", retain_days.unwrap_or_default()),
                        )
                    } else {
                        (
                            Action::Delete,
                            "not consistent, and a newer consistent set exists".to_string(),
                        )
                    }
                }
                _ => (
                    Action::Keep,
                    "not consistent, but no newer consistent set exists: the best fallback"
                        .to_string(),
                ),
            },
        };
        if let Some(why) = &keep_all {
            action = Action::Keep;
            reason = why.clone();
        }
        if action == Action::Delete {
            let images: BTreeSet<&str> = set
                .snapshots
                .iter()
                .flat_map(|s| s.used_by_images.iter().map(String::as_str))
                .collect();
            if !images.is_empty() {
                action = Action::Keep;
                reason = format!(
                    "used by AMI {}: kept (deregister the image to release it)",
                    images.into_iter().collect::<Vec<_>>().join(", ")
                );
            }
        }
        let mut snapshots: Vec<String> = set
            .snapshots
            .iter()
            .map(|s| s.snapshot_id.clone())
            .collect();
        snapshots.sort();
        decisions.push(SetDecision {
            run_id: set.run_id.to_string(),
            kind,
            started_at,
            snapshots,
            action,
            reason,
        });
    }
    decisions
}

pub const TAG_RETAIN_COUNT: &str = "ConsistentSnapshot:RetainCount";
pub const TAG_RETAIN_DAYS: &str = "ConsistentSnapshot:RetainDays";

/// What retention makes of an instance: gone or untagged, an override it cannot read, or live
/// with its count and days (`count` and `days` are the region's defaults; the instance's
/// override tags apply where `overrides` is true, that is in the source region).
pub fn instance_state(
    facts: Option<&crate::fleet::InstanceFacts>,
    target: (&str, &str),
    count: u32,
    days: Option<u32>,
    overrides: bool,
) -> InstanceState {
    let Some(facts) = facts else {
        return InstanceState::Orphaned {
            why: "instance not found (terminated long ago)".into(),
        };
    };
    if matches!(facts.state.as_str(), "terminated" | "shutting-down") {
        return InstanceState::Orphaned {
            why: format!("instance {}", facts.state),
        };
    }
    if facts.tags.get(target.0).map(String::as_str) != Some(target.1) {
        return InstanceState::Orphaned {
            why: format!("instance no longer tagged {}={}", target.0, target.1),
        };
    }
    let read = |tag: &str, current: Option<u32>| -> Result<Option<u32>, String> {
        match facts.tags.get(tag).filter(|_| overrides) {
            None => Ok(current),
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if (1..=36_500).contains(&n) => Ok(Some(n)),
                _ => Err(format!("tag {tag}={v:?} is not a whole number from 1")),
            },
        }
    };
    match (
        read(TAG_RETAIN_COUNT, Some(count)),
        read(TAG_RETAIN_DAYS, days),
    ) {
        (Ok(count), Ok(days)) => InstanceState::Live {
            retain_count: count.unwrap_or(1),
            retain_days: days,
        },
        (Err(why), _) | (_, Err(why)) => InstanceState::InvalidOverride { why },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn policy(count: u32, days: Option<u32>) -> Policy {
        Policy {
            managed_by: "prod".into(),
            retain_count: count,
            retain_days: days,
            keep_orphans: true,
        }
    }

    fn live(count: u32) -> InstanceState {
        InstanceState::Live {
            retain_count: count,
            retain_days: None,
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
            used_by_images: vec![],
            copies_in_progress: 0,
        }
    }

    fn actions(plan: &RegionPlan, instance: &str) -> Vec<(String, Action)> {
        plan.instances
            .get(instance)
            .map(|sets| sets.iter().map(|s| (s.run_id.clone(), s.action)).collect())
            .unwrap_or_default()
    }

    fn instances(state: InstanceState) -> BTreeMap<String, InstanceState> {
        [("i-1".to_string(), state)].into()
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
        let state = InstanceState::Live {
            retain_count: 1,
            retain_days: Some(3),
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
        ami.used_by_images = vec!["ami-1".into()];
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
            InstanceState::Orphaned {
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
        known: &BTreeMap<String, InstanceState>,
        policy: &Policy,
    ) -> RegionPlan {
        plan("r", snaps, known, policy, t0())
    }

    #[test]
    fn an_invalid_override_keeps_everything_of_that_instance() {
        let snaps: Vec<SnapshotInfo> = (1..=4).map(|d| snap("i-1", d, true, 0)).collect();
        let state = InstanceState::InvalidOverride {
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
        let mut facts = crate::fleet::InstanceFacts {
            instance_id: "i-1".into(),
            name: None,
            state: "running".into(),
            platform: None,
            platform_details: None,
            root_device: None,
            volumes: vec![],
            tags: [("ConsistentSnapshot".to_string(), "WindowsVSS".to_string())].into(),
        };
        let target = ("ConsistentSnapshot", "WindowsVSS");
        assert_eq!(instance_state(Some(&facts), target, 7, None, true), live(7));
        facts.tags.insert(TAG_RETAIN_COUNT.into(), "3".into());
        facts.tags.insert(TAG_RETAIN_DAYS.into(), "30".into());
        assert_eq!(
            instance_state(Some(&facts), target, 7, None, true),
            InstanceState::Live {
                retain_count: 3,
                retain_days: Some(30)
            }
        );
        // Copy regions keep their own count.
        assert_eq!(
            instance_state(Some(&facts), target, 4, None, false),
            live(4)
        );
        facts.tags.insert(TAG_RETAIN_COUNT.into(), "lots".into());
        assert!(matches!(
            instance_state(Some(&facts), target, 7, None, true),
            InstanceState::InvalidOverride { ref why } if why.contains("lots")
        ));
        facts.tags.remove("ConsistentSnapshot");
        assert!(matches!(
            instance_state(Some(&facts), target, 7, None, true),
            InstanceState::Orphaned { ref why } if why.contains("no longer tagged")
        ));
        facts.state = "terminated".into();
        assert!(matches!(
            instance_state(Some(&facts), target, 7, None, true),
            InstanceState::Orphaned { ref why } if why.contains("terminated")
        ));
        assert!(matches!(
            instance_state(None, target, 7, None, true),
            InstanceState::Orphaned { .. }
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
                s.state = state.to_string();
                if by.is_empty() {
                    s.tags.remove(TAG_MANAGED_BY);
                } else {
                    s.tags.insert(TAG_MANAGED_BY, by);
                }
                if extra == 0 {
                    s.used_by_images = vec!["ami-x".into()];
                }
                if extra == 1 {
                    s.copies_in_progress = 1;
                }
                s
            })
    }

    fn arb_world(
    ) -> impl Strategy<Value = (Vec<SnapshotInfo>, BTreeMap<String, InstanceState>, Policy)> {
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
                            1 => InstanceState::Orphaned {
                                why: "terminated".into(),
                            },
                            2 => InstanceState::InvalidOverride { why: "bad".into() },
                            _ => InstanceState::Live {
                                retain_count: count,
                                retain_days: days,
                            },
                        };
                        Some((format!("i-{i}"), state))
                    })
                    .collect();
                let policy = Policy {
                    managed_by: "prod".into(),
                    retain_count: count,
                    retain_days: days,
                    keep_orphans,
                };
                (snaps, known, policy)
            })
    }

    fn consistent_sets(snaps: &[SnapshotInfo], managed_by: &str) -> BTreeMap<String, usize> {
        let p = Policy {
            managed_by: managed_by.into(),
            retain_count: u32::MAX,
            retain_days: None,
            keep_orphans: true,
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
                    prop_assert!(s.state != "pending" && s.copies_in_progress == 0);
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
                    Some(InstanceState::Live { retain_count, .. }) => *retain_count,
                    _ => policy.retain_count,
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
}
