//! Snapshots as plain facts. `SnapshotFacts` is the one type the edge reads from EC2; the other
//! shapes (retention's small `SnapshotInfo`, restore's `SourceSnapshot`, the copy step's
//! `ExistingCopy`) are views derived from it in pure code.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::state::SnapshotState;
use crate::model::tags::{is_app_consistent, TAGS_READ, TAG_APP_CONSISTENT, TAG_TIERS};
use crate::model::tiers::Tier;

/// What EC2 says of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFacts {
    pub snapshot_id: String,
    pub volume_id: String,
    pub state: SnapshotState,
    /// When the snapshot was started (EC2 always says; `None` only for a garbled answer).
    pub start_time: Option<DateTime<Utc>>,
    pub size_gib: Option<i32>,
    pub tags: BTreeMap<String, String>,
    /// Why a snapshot (or copy) is in `error`, as EC2 says ("Given key ID is not accessible").
    pub state_message: Option<String>,
    /// In the archive tier (`StorageTier` archive): it cannot be copied or made into a volume
    /// until restored (a temporarily restored snapshot is `standard` until it is archived
    /// again).
    pub archived: bool,
    /// Encrypted, with this KMS key as EC2 names it (empty when it names none); `None`: not
    /// encrypted.
    pub encrypted_with: Option<String>,
}

impl SnapshotFacts {
    pub fn app_consistent(&self) -> bool {
        is_app_consistent(self.tags.get(TAG_APP_CONSISTENT).map(String::as_str))
    }
}

/// Where a snapshot stands between storage tiers, as DescribeSnapshotTierStatus says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierStatus {
    /// `archive` or `standard`.
    pub storage_tier: String,
    /// `archival-in-progress`, `temporary-restore-in-progress`, `temporary-restore-completed`, …
    pub last_operation: Option<String>,
    pub restore_expiry: Option<DateTime<Utc>>,
    pub last_started: Option<DateTime<Utc>>,
}

impl TierStatus {
    pub fn archived(&self) -> bool {
        self.storage_tier == "archive"
    }

    /// A restore from the archive tier is under way.
    pub fn restoring(&self) -> bool {
        self.last_operation
            .as_deref()
            .is_some_and(|op| op.ends_with("restore-in-progress"))
    }
}

/// The mode of the EBS Snapshot Lock this deployment lays on what it keeps (`LOCK_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Removable by a principal allowed `ec2:UnlockSnapshot`.
    Governance,
    /// Removable by nobody once its cooling-off period is over; only ever extended.
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        }
    }
}

/// A snapshot's EBS Snapshot Lock, as `DescribeLockedSnapshots` reports it (an expired lock is
/// no lock at all and is never made into one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLock {
    /// `governance`, `compliance` or `compliance-cooloff`.
    pub state: String,
    /// When the lock ends (EC2 always says; `None` only for a garbled answer).
    pub until: Option<DateTime<Utc>>,
}

impl SnapshotLock {
    /// `locked (compliance) until 2027-01-01T00:00:00Z`.
    pub fn describe(&self) -> String {
        match self.until {
            Some(until) => format!(
                "locked ({}) until {}",
                self.state,
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => format!("locked ({}), end not reported", self.state),
        }
    }
}

/// A snapshot as retention and the fleet report see it: small, because a plan over 100,000
/// snapshots holds them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub snapshot_id: String,
    pub state: SnapshotState,
    pub start_time: DateTime<Utc>,
    pub tags: SnapshotTags,
    /// AMIs whose block devices use this snapshot.
    pub used_by_images: Box<[String]>,
    /// Copies of this snapshot (in other regions) that are not completed yet.
    pub copies_in_progress: u32,
    /// In the archive tier.
    pub archived: bool,
    /// The retention tiers its catalog record holds (`Tier::bits`; `admit` puts them in the
    /// `ConsistentSnapshot:Tiers` tag of the facts): one byte, not a tag slot, since a plan
    /// over 100,000 snapshots holds them all.
    pub recorded_tiers: u8,
}

impl SnapshotInfo {
    /// The retention view of a snapshot: only the tags it reads (`TAGS_READ`), shared through
    /// `interner`; `None` for a snapshot without a start time.
    pub fn from_facts(facts: SnapshotFacts, interner: &mut TagInterner) -> Option<Self> {
        let tags = interner.tags(
            facts
                .tags
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .filter(|(k, _)| TAGS_READ.contains(k)),
        );
        Some(SnapshotInfo {
            start_time: facts.start_time?,
            snapshot_id: facts.snapshot_id,
            state: facts.state,
            tags,
            used_by_images: Box::default(),
            copies_in_progress: 0,
            archived: facts.archived,
            recorded_tiers: facts
                .tags
                .get(TAG_TIERS)
                .map(|t| Tier::bits(&Tier::parse_list(t)))
                .unwrap_or(0),
        })
    }

    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key)
    }
}

/// A snapshot's tags as retention and the fleet report read them: one slot per key of
/// `TAGS_READ` (any other key is not kept), the values shared strings, so that the snapshots
/// of one set (and of one deployment) share one copy of their instance id, run id and
/// `ManagedBy` when read through a `TagInterner`. Small, and no allocation of its own: a plan
/// over 100,000 snapshots holds 100,000 of them.
/// Each slot is one thin pointer (`Arc<String>`, 8 bytes; `Arc<str>` would take 16): 64
/// bytes a snapshot instead of 128.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotTags([Option<Arc<String>>; TAGS_READ.len()]);

fn slot(key: &str) -> Option<usize> {
    TAGS_READ.iter().position(|k| *k == key)
}

impl SnapshotTags {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0[slot(key)?].as_deref().map(String::as_str)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` (one of `TAGS_READ`; any other is not kept) to `value`.
    pub fn insert(&mut self, key: &str, value: &str) {
        if let Some(i) = slot(key) {
            self.0[i] = Some(Arc::new(value.to_string()));
        }
    }

    pub fn remove(&mut self, key: &str) {
        if let Some(i) = slot(key) {
            self.0[i] = None;
        }
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
pub struct TagInterner(std::collections::HashMap<Box<str>, Arc<String>>);

impl TagInterner {
    pub fn intern(&mut self, text: &str) -> Arc<String> {
        if let Some(found) = self.0.get(text) {
            return found.clone();
        }
        let shared = Arc::new(text.to_string());
        self.0.insert(text.into(), shared.clone());
        shared
    }

    /// These tags (those of `TAGS_READ`), with values shared with earlier ones.
    pub fn tags<'a>(
        &mut self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> SnapshotTags {
        let mut tags = SnapshotTags::default();
        for (k, v) in pairs {
            if let Some(i) = slot(k) {
                tags.0[i] = Some(self.intern(v));
            }
        }
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan over a million catalog entries holds a view of each: its size is a budget.
    #[test]
    fn a_snapshot_view_stays_small() {
        assert_eq!(std::mem::size_of::<SnapshotTags>(), 64);
        let size = std::mem::size_of::<SnapshotInfo>();
        assert!(size <= 152, "SnapshotInfo is {size} bytes");
    }

    #[test]
    fn the_retention_view_keeps_only_the_tags_it_reads_and_shares_them() {
        let facts = |id: &str| SnapshotFacts {
            snapshot_id: id.into(),
            volume_id: "vol-1".into(),
            state: SnapshotState::Completed,
            start_time: DateTime::from_timestamp(1_800_000_000, 0),
            size_gib: Some(8),
            tags: [
                ("ConsistentSnapshot:RunId", "r1"),
                ("Name", "sql01 xvdf"),
                ("AwsVssConfig", "{}"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            state_message: None,
            archived: false,
            encrypted_with: None,
        };
        let mut interner = TagInterner::default();
        let a = SnapshotInfo::from_facts(facts("snap-1"), &mut interner).expect("view");
        let b = SnapshotInfo::from_facts(facts("snap-2"), &mut interner).expect("view");
        assert_eq!(a.tag("ConsistentSnapshot:RunId"), Some("r1"));
        assert!(!a.tags.contains_key("Name") && !a.tags.contains_key("AwsVssConfig"));
        assert_eq!(b.state, SnapshotState::Completed);
        let no_start = SnapshotFacts {
            start_time: None,
            ..facts("snap-3")
        };
        assert!(SnapshotInfo::from_facts(no_start, &mut interner).is_none());
    }
}
