//! The catalog's records as plain data (the store is `aws::catalog`): what a run dispatched
//! (`ManifestEntry`), what each instance's set turned out to be when the function verified it
//! (`SetRecord`), and the copies the function made of it (`CopyRecord`).
//!
//! The catalog, not a tag, decides. A snapshot is acted on only when the catalog records it
//! and EC2 still reports it as recorded (`admit`): another principal can write tags, never
//! the catalog (only the function's role may) nor what EC2 reports of a snapshot (owner,
//! volume id, start time).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::cause::Cause;
use crate::model::command::FinalInvocation;
use crate::model::fleet::AttachedVolume;
use crate::model::snapshot::SnapshotFacts;
use crate::model::state::SnapshotState;
use crate::model::tags::{
    CONSISTENCY_CRASH_FALLBACK, CONSISTENCY_FILE_SYSTEM, TAG_APP_CONSISTENT, TAG_CONSISTENCY,
    TAG_DEVICE, TAG_INSTANCE_ID, TAG_MANAGED_BY, TAG_RUN_ID, TAG_SOURCE_SNAPSHOT, TAG_TIERS,
};
use crate::model::tiers::Tier;

/// One instance of a run, as dispatched: the command sent to it and the volumes its set must
/// contain (the boot volume left out when it was excluded). Written before the instance's
/// tracking message is queued, so a tracking message is only ever a reference to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub run_id: String,
    pub instance_id: String,
    pub name: String,
    pub command_id: String,
    pub volumes: Vec<AttachedVolume>,
    /// When the run started: no snapshot of the set can have started before.
    pub started_at: DateTime<Utc>,
    /// The instance's cost tags at dispatch (`COPY_INSTANCE_TAGS`), written on its snapshots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cost_tags: Vec<(String, String)>,
    /// The command was sent with `NoWriters=True`: its set can be file-system consistent at
    /// best, whatever its snapshots' tags say.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_writers: bool,
}

/// What an instance's own tracking message saw when its invocation was final: SSM's status
/// and the lines of the document's output that matter (the `Created snap-… from vol-…` lines
/// and the failure, if any: `StandardOutputContent`, up to 24,000 characters, where the run's
/// `ListCommandInvocations` has only the first 2,500). The run's look verifies and records the
/// set from it; first write wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub run_id: String,
    pub instance_id: String,
    pub command_id: String,
    pub invocation: FinalInvocation,
}

/// What a recorded set is, fixed when it is recorded: a tag changed later changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every volume expected at dispatch has a completed snapshot that the document reported,
    /// tagged `AppConsistent=True` when verified.
    Consistent,
    /// As `Consistent`, but the command was sent with `NoWriters=True`: the application
    /// writers were left out, so the set is file-system consistent only. A backup (copied,
    /// kept, restorable), never counted as application consistent.
    FileSystemConsistent,
    /// The document reported snapshots, but VSS did not make them application-consistent.
    CrashConsistent,
    /// A volume expected at dispatch has no verified snapshot, or the document snapshotted a
    /// volume the instance did not have at dispatch.
    Incomplete,
    /// No verified snapshot at all.
    Failed,
    /// Recorded by `import` from tags, before the catalog: kept and reported, never deleted
    /// automatically.
    Imported,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Consistent => "consistent",
            Verdict::FileSystemConsistent => "file-system consistent",
            Verdict::CrashConsistent => "crash-consistent",
            Verdict::Incomplete => "incomplete",
            Verdict::Failed => "failed",
            Verdict::Imported => "imported",
        })
    }
}

/// One snapshot of a set, as EC2 reported it when the set was verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedSnapshot {
    pub snapshot_id: String,
    pub volume_id: String,
    pub device: String,
    pub start_time: DateTime<Utc>,
}

/// One instance's set of one run, as verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRecord {
    pub run_id: String,
    pub instance_id: String,
    pub name: String,
    /// The region the set was taken in (the function's own).
    pub region: String,
    pub started_at: DateTime<Utc>,
    pub expected: Vec<AttachedVolume>,
    pub snapshots: Vec<RecordedSnapshot>,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why it is not consistent, named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// Taken by the function itself with CreateSnapshots because VSS gave no set: crash-
    /// consistent, kept while no newer consistent set exists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
    pub verified_at: DateTime<Utc>,
    /// How the snapshots were verified (for an operator reading the record).
    pub verified_by: String,
}

impl SetRecord {
    /// Whether the set is application consistent.
    pub fn is_consistent(&self) -> bool {
        self.verdict == Verdict::Consistent
    }

    /// Whether the set counts as a backup: application consistent, or file-system consistent
    /// as its instance asked (`NoWriters`). Copied, kept by count, restorable.
    pub fn is_backup(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Consistent | Verdict::FileSystemConsistent
        )
    }
}

/// A copy the function started of a recorded snapshot, in another region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    pub run_id: String,
    pub instance_id: String,
    pub region: String,
    pub source_snapshot_id: String,
    pub snapshot_id: String,
    pub started_at: DateTime<Utc>,
    /// The source set's verdict, carried so that the copy stands on its own once retention
    /// has deleted the source set in its region: a backup (`SetRecord::is_backup`), and
    /// whether file-system consistent only.
    pub consistent: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file_system: bool,
    /// A copy recorded by `import`: never deleted automatically.
    #[serde(default)]
    pub imported: bool,
    /// How many snapshots the source set has (0: not recorded, as by earlier versions): a copy
    /// set with fewer copies in its region is partial, and never counts as consistent.
    #[serde(default, skip_serializing_if = "super::is_zero")]
    pub set_size: u32,
    /// How EC2 last reported the copy once it was final (`completed`, or `error` with EC2's
    /// message), as the copy step saw it; absent while it is pending. Kept on the run's own
    /// view of its copies, so that a copy pass describes only the copies still on their way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_final: Option<SeenFinal>,
    /// The device its source's volume had at dispatch, as the catalog recorded the source
    /// (none in records of earlier versions): the copy's volume lineage, for the cost estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A copy of one of a set's snapshots in the vault account, as the vault step made it there
/// (or found it made, its CopySnapshot answer lost). The fleet's record of it: the vault's own
/// deployment keeps and deletes it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRecord {
    pub run_id: String,
    pub instance_id: String,
    /// The vault account and the region of the copy.
    pub account: String,
    pub region: String,
    pub source_snapshot_id: String,
    pub snapshot_id: String,
    pub started_at: DateTime<Utc>,
    /// How the vault last reported the copy once it was final; absent while it is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_final: Option<SeenFinal>,
    /// Until when the step locked it there (none yet: the next pass locks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<DateTime<Utc>>,
}

impl VaultRecord {
    /// Completed in the vault, as last seen.
    pub fn is_completed(&self) -> bool {
        self.seen_final
            .as_ref()
            .is_some_and(|s| s.state == SnapshotState::Completed)
    }
}

/// One of a fleet's copies as a vault deployment (`MODE=vault`) recorded it in its own catalog
/// the first time it saw it completed: what it claimed then (its tags, written by the fleet's
/// role), EC2's start time, and the vault's own clock. Whether it belongs to its run's set is
/// decided once, there (`vault::plan::keep::intake`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRecord {
    pub snapshot_id: String,
    pub instance_id: String,
    pub run_id: String,
    /// How many copies its set has, as its `SetSize` tag said.
    pub set_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_snapshot_id: Option<String>,
    /// When EC2 started the copy in the vault (no tag changes it).
    pub started: DateTime<Utc>,
    /// When the vault deployment first saw it completed.
    pub first_seen: DateTime<Utc>,
    /// Why it is not one of its run's set (it came after the set was whole, or disagrees with
    /// it): kept as any copy, never shared as part of the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intruder: Option<String>,
    /// When the vault deployment found it gone, not having deleted it itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vanished: Option<DateTime<Utc>>,
    /// The recovery accounts it is shared with, and until when (`RECOVERY_SHARE_DAYS`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shared_with: BTreeMap<String, DateTime<Utc>>,
}

/// A vault transit copy: one of the run's encrypted snapshots copied at home, re-encrypted
/// with a key the vault account may use (`VAULT_TRANSIT_KMS_KEY_ID`), shared and copied into
/// the vault in its stead, and deleted when the vault step is over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitRecord {
    pub run_id: String,
    pub source_snapshot_id: String,
    pub snapshot_id: String,
    pub started_at: DateTime<Utc>,
    /// Deleted by the vault step (or found gone) once it was over.
    #[serde(default)]
    pub deleted: bool,
}

/// A copy's final state as the copy step saw it in EC2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenFinal {
    pub state: SnapshotState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where one instance's sets of a run are copied, decided once by the run's copy step (from
/// the instance's override tag or the configured regions) and recorded, so that its later
/// passes neither read the instance again nor follow a tag changed half-way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyTargets {
    pub instance_id: String,
    pub regions: Vec<String>,
    /// Why the instance's override tag cannot be followed: nothing of its sets is copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl CopyTargets {
    pub fn new(instance_id: &str, regions: Result<Vec<String>, String>) -> Self {
        let (regions, refused) = match regions {
            Ok(regions) => (regions, None),
            Err(why) => (Vec::new(), Some(why)),
        };
        CopyTargets {
            instance_id: instance_id.to_string(),
            regions,
            refused,
        }
    }

    /// The regions, or why there are none.
    pub fn regions(&self) -> Result<Vec<String>, String> {
        match &self.refused {
            Some(why) => Err(why.clone()),
            None => Ok(self.regions.clone()),
        }
    }
}

/// A snapshot carrying this deployment's tags that the catalog does not vouch for, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignSnapshot {
    pub snapshot_id: String,
    /// The instance its tags claim, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims_instance: Option<String>,
    pub why: String,
}

/// What the catalog says of one snapshot id, in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    pub instance_id: Arc<str>,
    pub run_id: Arc<str>,
    /// A backup: application consistent, or file-system consistent when `file_system`.
    pub consistent: bool,
    pub file_system: bool,
    /// The function's own crash-consistent fallback set.
    pub fallback: bool,
    /// The source's volume and start time (a copy's own are EC2's to choose: not checked).
    pub volume_id: Option<Arc<str>>,
    pub start_time: Option<DateTime<Utc>>,
    /// The device the snapshot's volume had at dispatch (a copy's is its source's).
    pub device: Option<Arc<str>>,
    /// Recorded by `import` from tags: kept, never deleted automatically.
    pub imported: bool,
    /// For a copy: the recorded snapshot it was copied from.
    pub source_snapshot_id: Option<Arc<str>>,
    /// The retention tiers that kept it when retention last applied a plan (`Tier::bits`).
    pub tiers: u8,
}

/// The snapshots the catalog vouches for, by region and id. Built one record at a time (a
/// page of the catalog is dropped once indexed) into compact entries: a snapshot id of EC2's
/// form is packed into 16 bytes, and instance ids, run ids, volume ids and devices are stored
/// once and referred to by number, so that an index of 100,000 snapshots is a few MiB.
#[derive(Debug, Clone, Default)]
pub struct CatalogIndex {
    by_region: HashMap<String, RegionIndex>,
    names: Vec<Arc<str>>,
    numbers: HashMap<Arc<str>, u32>,
    /// Snapshots of each recorded set (instance, run).
    set_sizes: HashMap<(Name, Name), u32>,
}

#[derive(Debug, Clone, Default)]
struct RegionIndex {
    /// Ids of EC2's form (`snap-` and lowercase hex), packed.
    packed: HashMap<u128, Entry>,
    /// Any other id, as it is.
    other: HashMap<String, Entry>,
    /// Copies recorded in this region of each set (instance, run), and the source set's size
    /// as the copy records give it.
    copy_sets: HashMap<(Name, Name), (u32, u32)>,
}

/// A name's number in `CatalogIndex::names`; `NONE` for no name.
type Name = u32;
const NONE: Name = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    instance_id: Name,
    run_id: Name,
    volume_id: Name,
    device: Name,
    source_snapshot_id: Name,
    start_time: Option<DateTime<Utc>>,
    consistent: bool,
    file_system: bool,
    fallback: bool,
    imported: bool,
    tiers: u8,
}

/// `snap-` and up to 30 lowercase hex digits, as one number with the digits' count on top (so
/// that `snap-0a` and `snap-a` stay two ids); `None` for an id of any other form.
fn packed_id(snapshot_id: &str) -> Option<u128> {
    let hex = snapshot_id.strip_prefix("snap-")?;
    if hex.is_empty()
        || hex.len() > 30
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let value = u128::from_str_radix(hex, 16).ok()?;
    Some(((hex.len() as u128) << 120) | value)
}

/// The id `packed_id` packed.
fn unpacked_id(key: u128) -> String {
    let digits = (key >> 120) as usize;
    let value = key & ((1u128 << 120) - 1);
    format!("snap-{value:0digits$x}")
}

/// A snapshot the catalog records in a region that EC2 no longer lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub snapshot_id: String,
    pub instance_id: Arc<str>,
    pub run_id: Arc<str>,
    /// A copy (its own record), or a snapshot of a home set.
    pub copy: bool,
}

impl CatalogIndex {
    /// Indexes recorded sets (in their own region) and their copies (in theirs).
    pub fn new<'a>(
        sets: impl IntoIterator<Item = &'a SetRecord>,
        copies: impl IntoIterator<Item = &'a CopyRecord>,
    ) -> Self {
        let mut index = CatalogIndex::default();
        for set in sets {
            index.add_set(set);
        }
        for copy in copies {
            index.add_copy(copy);
        }
        index
    }

    fn number(&mut self, text: &str) -> Name {
        if let Some(found) = self.numbers.get(text) {
            return *found;
        }
        let number = Name::try_from(self.names.len()).unwrap_or(NONE);
        if number == NONE {
            // More than 4 billion distinct names: not a catalog of this world.
            return NONE;
        }
        let shared: Arc<str> = text.into();
        self.names.push(shared.clone());
        self.numbers.insert(shared, number);
        number
    }

    fn name(&self, number: Name) -> Option<Arc<str>> {
        self.names.get(usize::try_from(number).ok()?).cloned()
    }

    fn insert(&mut self, region: &str, snapshot_id: &str, entry: Entry) {
        if !self.by_region.contains_key(region) {
            self.by_region
                .insert(region.to_string(), RegionIndex::default());
        }
        let Some(index) = self.by_region.get_mut(region) else {
            return;
        };
        match packed_id(snapshot_id) {
            Some(key) => {
                index.packed.insert(key, entry);
            }
            None => {
                index.other.insert(snapshot_id.to_string(), entry);
            }
        }
    }

    /// Adds a recorded set's snapshots, in the set's region.
    pub fn add_set(&mut self, set: &SetRecord) {
        self.add_set_in_tiers(set, 0);
    }

    /// Adds a recorded set's snapshots, with the tiers its record holds (`Tier::bits`).
    pub fn add_set_in_tiers(&mut self, set: &SetRecord, tiers: u8) {
        let instance_id = self.number(&set.instance_id);
        let run_id = self.number(&set.run_id);
        for s in &set.snapshots {
            let entry = Entry {
                instance_id,
                run_id,
                volume_id: self.number(&s.volume_id),
                device: self.number(&s.device),
                source_snapshot_id: NONE,
                start_time: Some(s.start_time),
                consistent: set.is_backup(),
                file_system: set.verdict == Verdict::FileSystemConsistent,
                fallback: set.fallback,
                imported: set.verdict == Verdict::Imported,
                tiers,
            };
            self.insert(&set.region, &s.snapshot_id, entry);
        }
        let size = u32::try_from(set.snapshots.len()).unwrap_or(u32::MAX);
        self.set_sizes.insert((instance_id, run_id), size);
    }

    /// Adds a recorded copy, in its region.
    pub fn add_copy(&mut self, copy: &CopyRecord) {
        self.add_copy_in_tiers(copy, 0);
    }

    /// Adds a recorded copy, with the tiers its record holds (`Tier::bits`).
    pub fn add_copy_in_tiers(&mut self, copy: &CopyRecord, tiers: u8) {
        let entry = Entry {
            instance_id: self.number(&copy.instance_id),
            run_id: self.number(&copy.run_id),
            volume_id: NONE,
            device: copy.device.as_deref().map_or(NONE, |d| self.number(d)),
            source_snapshot_id: self.number(&copy.source_snapshot_id),
            start_time: None,
            consistent: copy.consistent,
            file_system: copy.file_system,
            fallback: false,
            imported: copy.imported,
            tiers,
        };
        let key = (entry.instance_id, entry.run_id);
        self.insert(&copy.region, &copy.snapshot_id, entry);
        if let Some(index) = self.by_region.get_mut(&copy.region) {
            let (count, size) = index.copy_sets.entry(key).or_default();
            *count += 1;
            *size = (*size).max(copy.set_size);
        }
    }

    /// Whether the copies of set (instance, run) in a region cover it: as many as the copy
    /// records or the set's own record say it has (when neither is known, they are taken to).
    fn copies_cover(&self, index: &RegionIndex, key: (Name, Name)) -> bool {
        let Some((count, recorded)) = index.copy_sets.get(&key) else {
            return true;
        };
        let size = if *recorded > 0 {
            Some(*recorded)
        } else {
            self.set_sizes.get(&key).copied()
        };
        size.is_none_or(|size| *count >= size)
    }

    /// The source snapshots of the copies the catalog records in `region`.
    pub fn sources_copied_to(&self, region: &str) -> HashSet<Arc<str>> {
        let Some(index) = self.by_region.get(region) else {
            return HashSet::new();
        };
        index
            .packed
            .values()
            .chain(index.other.values())
            .filter_map(|e| self.name(e.source_snapshot_id))
            .collect()
    }

    /// How many snapshots the catalog vouches for in `region`.
    pub fn count_in(&self, region: &str) -> usize {
        self.by_region
            .get(region)
            .map(|r| r.packed.len() + r.other.len())
            .unwrap_or(0)
    }

    /// The snapshots the catalog records in `region` that `listed` (what EC2 listed there)
    /// does not hold, in id order; imported ones are left out (they are not listed to
    /// retention). At most `max`.
    pub fn missing_in(&self, region: &str, listed: &HashSet<&str>, max: usize) -> Vec<Missing> {
        let Some(index) = self.by_region.get(region) else {
            return Vec::new();
        };
        let mut missing: Vec<Missing> = index
            .packed
            .iter()
            .map(|(key, e)| (unpacked_id(*key), e))
            .chain(index.other.iter().map(|(id, e)| (id.clone(), e)))
            .filter(|(id, e)| !e.imported && !listed.contains(id.as_str()))
            .filter_map(|(snapshot_id, e)| {
                Some(Missing {
                    snapshot_id,
                    instance_id: self.name(e.instance_id)?,
                    run_id: self.name(e.run_id)?,
                    copy: e.source_snapshot_id != NONE,
                })
            })
            .collect();
        missing.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        missing.truncate(max);
        missing
    }

    /// What the catalog says of `snapshot_id` in `region`.
    pub fn get(&self, region: &str, snapshot_id: &str) -> Option<Vouched> {
        let index = self.by_region.get(region)?;
        let entry = match packed_id(snapshot_id) {
            Some(key) => index.packed.get(&key)?,
            None => index.other.get(snapshot_id)?,
        };
        // A copy of a consistent set is consistent only with every other snapshot of the set
        // copied beside it: one copy of three is not a backup of the instance.
        let consistent = entry.consistent
            && (entry.source_snapshot_id == NONE
                || self.copies_cover(index, (entry.instance_id, entry.run_id)));
        Some(Vouched {
            instance_id: self.name(entry.instance_id)?,
            run_id: self.name(entry.run_id)?,
            consistent,
            file_system: entry.file_system,
            fallback: entry.fallback,
            volume_id: self.name(entry.volume_id),
            start_time: entry.start_time,
            device: self.name(entry.device),
            imported: entry.imported,
            source_snapshot_id: self.name(entry.source_snapshot_id),
            tiers: entry.tiers,
        })
    }
}

/// What the catalog records, in the least memory, for retention to plan a part of the fleet at
/// a time: each region's recorded snapshot ids (an id of EC2's form in 16 bytes, sorted), and
/// how many snapshots each instance has recorded (its sets and its copies, in every region).
/// A million recorded snapshots take some 16 MiB here, where the whole `CatalogIndex` of them
/// would not fit a function of 64 MiB.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    by_region: HashMap<String, RecordedIds>,
    instances: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default)]
struct RecordedIds {
    packed: Vec<u128>,
    other: HashSet<String>,
}

impl Recorded {
    /// A recorded set's snapshots, in its region.
    pub fn add_set(&mut self, set: &SetRecord) {
        self.add(
            &set.instance_id,
            &set.region,
            set.snapshots.iter().map(|s| s.snapshot_id.as_str()),
        );
    }

    /// A recorded copy, in its region.
    pub fn add_copy(&mut self, copy: &CopyRecord) {
        self.add(
            &copy.instance_id,
            &copy.region,
            std::iter::once(copy.snapshot_id.as_str()),
        );
    }

    fn add<'a>(&mut self, instance_id: &str, region: &str, ids: impl Iterator<Item = &'a str>) {
        if !self.by_region.contains_key(region) {
            self.by_region
                .insert(region.to_string(), RecordedIds::default());
        }
        let Some(recorded) = self.by_region.get_mut(region) else {
            return;
        };
        let mut added = 0;
        for id in ids {
            match packed_id(id) {
                Some(key) => recorded.packed.push(key),
                None => {
                    recorded.other.insert(id.to_string());
                }
            }
            added += 1;
        }
        match self.instances.get_mut(instance_id) {
            Some(count) => *count += added,
            None => {
                self.instances.insert(instance_id.to_string(), added);
            }
        }
    }

    /// Sorts the ids for `contains`: once every record is added.
    pub fn finish(&mut self) {
        for recorded in self.by_region.values_mut() {
            recorded.packed.sort_unstable();
            recorded.packed.dedup();
            recorded.packed.shrink_to_fit();
        }
    }

    /// Whether the catalog records `snapshot_id` in `region` (after `finish`).
    pub fn contains(&self, region: &str, snapshot_id: &str) -> bool {
        let Some(recorded) = self.by_region.get(region) else {
            return false;
        };
        match packed_id(snapshot_id) {
            Some(key) => recorded.packed.binary_search(&key).is_ok(),
            None => recorded.other.contains(snapshot_id),
        }
    }

    /// The instances with recorded snapshots, in id order, with how many each has.
    pub fn instances(&self) -> &BTreeMap<String, usize> {
        &self.instances
    }

    /// The instances in parts planned one at a time, in id order: a part holds at most
    /// `max_instances` instances and, unless one instance alone has more, at most
    /// `max_snapshots` recorded snapshots. Only instances after `after` (a pass resumed), and
    /// only those `only` names when given.
    pub fn parts(
        &self,
        (max_snapshots, max_instances): (usize, usize),
        after: Option<&str>,
        only: Option<&[String]>,
    ) -> Vec<Vec<String>> {
        let mut parts: Vec<Vec<String>> = Vec::new();
        let mut current: Vec<String> = Vec::new();
        let mut snapshots = 0usize;
        let wanted = self.instances.iter().filter(|(id, _)| {
            after.is_none_or(|after| id.as_str() > after)
                && only.is_none_or(|only| only.iter().any(|o| o == *id))
        });
        for (id, count) in wanted {
            let full = current.len() >= max_instances.max(1)
                || (!current.is_empty() && snapshots + count > max_snapshots);
            if full {
                parts.push(std::mem::take(&mut current));
                snapshots = 0;
            }
            current.push(id.clone());
            snapshots += count;
        }
        if !current.is_empty() {
            parts.push(current);
        }
        parts
    }
}

/// Admits a snapshot EC2 listed (owner self) in `region` when the catalog vouches for it and
/// EC2 still reports it as recorded; its decision tags (instance, run, deployment,
/// consistency, source) are then the catalog's, whatever the snapshot's own tags say.
/// Anything else is foreign, with the reason.
pub fn admit(
    mut facts: SnapshotFacts,
    region: &str,
    index: &CatalogIndex,
    managed_by: &str,
) -> Result<SnapshotFacts, ForeignSnapshot> {
    let foreign = |facts: &SnapshotFacts, why: String| ForeignSnapshot {
        snapshot_id: facts.snapshot_id.clone(),
        claims_instance: facts.tags.get(TAG_INSTANCE_ID).cloned(),
        why,
    };
    let Some(vouched) = index.get(region, &facts.snapshot_id) else {
        return Err(foreign(&facts, "not in the catalog".into()));
    };
    if let Some(volume) = &vouched.volume_id {
        if **volume != *facts.volume_id {
            return Err(foreign(
                &facts,
                format!(
                    "EC2 reports volume {} where the catalog recorded {volume}",
                    facts.volume_id
                ),
            ));
        }
    }
    if let Some(start) = vouched.start_time {
        if facts.start_time != Some(start) {
            return Err(foreign(
                &facts,
                format!(
                    "EC2 reports a start time of {:?} where the catalog recorded {}",
                    facts.start_time.map(|t| t.to_rfc3339()),
                    start.to_rfc3339()
                ),
            ));
        }
    }
    let truth: BTreeMap<&str, String> = [
        (TAG_INSTANCE_ID, vouched.instance_id.to_string()),
        (TAG_RUN_ID, vouched.run_id.to_string()),
        (TAG_MANAGED_BY, managed_by.to_string()),
        (
            TAG_APP_CONSISTENT,
            if vouched.consistent { "True" } else { "False" }.to_string(),
        ),
    ]
    .into();
    for (key, value) in truth {
        facts.tags.insert(key.to_string(), value);
    }
    if vouched.consistent && vouched.file_system {
        facts
            .tags
            .insert(TAG_CONSISTENCY.to_string(), CONSISTENCY_FILE_SYSTEM.into());
    } else if vouched.fallback && !vouched.consistent {
        facts.tags.insert(
            TAG_CONSISTENCY.to_string(),
            CONSISTENCY_CRASH_FALLBACK.into(),
        );
    } else {
        facts.tags.remove(TAG_CONSISTENCY);
    }
    // `Device` is one of the two tags every fleet server may write on any VSS snapshot.
    match &vouched.device {
        Some(device) => {
            facts
                .tags
                .insert(TAG_DEVICE.to_string(), device.to_string());
        }
        None => {
            facts.tags.remove(TAG_DEVICE);
        }
    }
    // The tiers shown are those the catalog recorded, whatever the snapshot's tag says.
    if vouched.tiers == 0 {
        facts.tags.remove(TAG_TIERS);
    } else {
        facts.tags.insert(
            TAG_TIERS.to_string(),
            Tier::list(&Tier::from_bits(vouched.tiers)),
        );
    }
    match &vouched.source_snapshot_id {
        Some(source) => {
            facts
                .tags
                .insert(TAG_SOURCE_SNAPSHOT.to_string(), source.to_string());
        }
        None => {
            facts.tags.remove(TAG_SOURCE_SNAPSHOT);
        }
    }
    Ok(facts)
}

/// The snapshot ids and volume ids the document's output says it created
/// (`Created snap-… from vol-… device: …`), in order.
pub fn reported_snapshots(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("Created ")?;
            let mut words = rest.split_whitespace();
            let snapshot = words.next().filter(|w| is_id(w, "snap-"))?;
            (words.next()? == "from").then_some(())?;
            let volume = words.next().filter(|w| is_id(w, "vol-"))?;
            Some((snapshot.to_string(), volume.to_string()))
        })
        .collect()
}

fn is_id(word: &str, prefix: &str) -> bool {
    word.strip_prefix(prefix)
        .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::SnapshotState;

    #[test]
    fn recorded_ids_answer_by_region_and_parts_follow_the_snapshot_budget() {
        let mut recorded = Recorded::default();
        let mut add = |instance: &str, region: &str, ids: &[&str]| {
            let mut record = set(true);
            record.instance_id = instance.into();
            record.region = region.into();
            record.snapshots = ids
                .iter()
                .map(|id| RecordedSnapshot {
                    snapshot_id: id.to_string(),
                    volume_id: "vol-1".into(),
                    device: "/dev/sda1".into(),
                    start_time: t(5),
                })
                .collect();
            recorded.add_set(&record);
        };
        add("i-1", "eu-west-1", &["snap-0a", "snap-03"]);
        add("i-2", "eu-west-1", &["snap-0b", "snap-odd-form"]);
        add("i-3", "eu-west-1", &["snap-0c"; 6]);
        add("i-4", "eu-west-1", &["snap-0d"]);
        recorded.add_copy(&CopyRecord {
            run_id: "r1".into(),
            instance_id: "i-5".into(),
            region: "us-east-1".into(),
            source_snapshot_id: "snap-0a".into(),
            snapshot_id: "snap-0e".into(),
            started_at: t(10),
            consistent: true,
            file_system: false,
            imported: false,
            set_size: 1,
            seen_final: None,
            device: None,
        });
        recorded.finish();
        assert!(recorded.contains("eu-west-1", "snap-0a"));
        assert!(recorded.contains("eu-west-1", "snap-odd-form"));
        assert!(
            !recorded.contains("eu-west-1", "snap-a"),
            "snap-a is not snap-0a"
        );
        assert!(
            !recorded.contains("us-east-1", "snap-0a"),
            "recorded in its own region only"
        );
        assert!(recorded.contains("us-east-1", "snap-0e"));
        assert_eq!(recorded.instances().get("i-3"), Some(&6));
        // At most 4 snapshots a part: i-3 alone is more, and takes a part of its own.
        let parts = recorded.parts((4, 200), None, None);
        fn names(parts: &[Vec<String>]) -> Vec<Vec<&str>> {
            parts
                .iter()
                .map(|p| p.iter().map(String::as_str).collect())
                .collect()
        }
        assert_eq!(
            names(&parts),
            vec![vec!["i-1", "i-2"], vec!["i-3"], vec!["i-4", "i-5"]]
        );
        assert_eq!(
            names(&recorded.parts((100, 2), None, None)),
            vec![vec!["i-1", "i-2"], vec!["i-3", "i-4"], vec!["i-5"]]
        );
        assert_eq!(
            names(&recorded.parts((4, 200), Some("i-2"), None)),
            vec![vec!["i-3"], vec!["i-4", "i-5"]]
        );
        let only = ["i-5".to_string(), "i-1".to_string()];
        assert_eq!(
            names(&recorded.parts((4, 200), None, Some(&only))),
            vec![vec!["i-1", "i-5"]]
        );
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn set(consistent: bool) -> SetRecord {
        SetRecord {
            run_id: "r1".into(),
            instance_id: "i-1".into(),
            name: "sql01".into(),
            region: "eu-west-1".into(),
            started_at: t(0),
            expected: vec![AttachedVolume {
                volume_id: "vol-1".into(),
                device: "/dev/sda1".into(),
            }],
            snapshots: vec![RecordedSnapshot {
                snapshot_id: "snap-1".into(),
                volume_id: "vol-1".into(),
                device: "/dev/sda1".into(),
                start_time: t(5),
            }],
            verdict: if consistent {
                Verdict::Consistent
            } else {
                Verdict::CrashConsistent
            },
            reason: None,
            cause: None,
            verified_at: t(60),
            verified_by: "test".into(),
            fallback: false,
        }
    }

    fn facts(id: &str, volume: &str, start: i64, tags: &[(&str, &str)]) -> SnapshotFacts {
        SnapshotFacts {
            snapshot_id: id.into(),
            volume_id: volume.into(),
            state: SnapshotState::Completed,
            start_time: Some(t(start)),
            size_gib: Some(30),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            state_message: None,
            archived: false,
            encrypted_with: None,
        }
    }

    #[test]
    fn the_index_tells_apart_ids_that_pack_alike_and_keeps_ids_of_other_forms() {
        let ids = [
            "snap-0a",
            "snap-a",
            "snap-0123456789abcdef0",
            "snap-0123456789ABCDEF0",
            "snap-",
            "snap-0123456789abcdef0123456789abcdef",
            "not-a-snapshot",
        ];
        let mut index = CatalogIndex::default();
        for (n, id) in ids.iter().enumerate() {
            let mut record = set(n % 2 == 0);
            record.run_id = format!("r{n}");
            record.snapshots[0].snapshot_id = id.to_string();
            record.snapshots[0].volume_id = format!("vol-{n}");
            index.add_set(&record);
        }
        assert_eq!(index.count_in("eu-west-1"), ids.len());
        assert_eq!(index.count_in("us-east-1"), 0);
        for (n, id) in ids.iter().enumerate() {
            let vouched = index.get("eu-west-1", id).expect("indexed");
            assert_eq!(&*vouched.run_id, format!("r{n}"), "{id}");
            assert_eq!(
                vouched.volume_id.as_deref(),
                Some(format!("vol-{n}").as_str())
            );
            assert_eq!(vouched.consistent, n % 2 == 0, "{id}");
            assert_eq!(vouched.device.as_deref(), Some("/dev/sda1"));
            assert_eq!(vouched.source_snapshot_id, None);
            assert!(index.get("us-east-1", id).is_none());
        }
        assert!(index.get("eu-west-1", "snap-00a").is_none());
        assert!(index.get("eu-west-1", "snap-A").is_none());
    }

    #[test]
    fn a_recorded_snapshot_is_admitted_with_the_catalogs_verdict_not_its_tags() {
        let record = set(true);
        let index = CatalogIndex::new([&record], []);
        let flipped = facts(
            "snap-1",
            "vol-1",
            5,
            &[
                (TAG_APP_CONSISTENT, "False"),
                (TAG_INSTANCE_ID, "i-victim"),
                (TAG_DEVICE, "xvdf"),
            ],
        );
        let admitted = admit(flipped, "eu-west-1", &index, "prod").expect("admitted");
        assert_eq!(admitted.tags[TAG_APP_CONSISTENT], "True");
        assert_eq!(admitted.tags[TAG_DEVICE], "/dev/sda1");
        assert_eq!(admitted.tags[TAG_INSTANCE_ID], "i-1");
        assert_eq!(admitted.tags[TAG_MANAGED_BY], "prod");
        let crash = set(false);
        let index = CatalogIndex::new([&crash], []);
        let forged = facts("snap-1", "vol-1", 5, &[(TAG_APP_CONSISTENT, "True")]);
        let admitted = admit(forged, "eu-west-1", &index, "prod").expect("admitted");
        assert_eq!(admitted.tags[TAG_APP_CONSISTENT], "False");
    }

    #[test]
    fn unrecorded_moved_or_other_region_snapshots_are_foreign() {
        let record = set(true);
        let index = CatalogIndex::new([&record], []);
        let cases = [
            (
                facts("snap-9", "vol-1", 5, &[(TAG_INSTANCE_ID, "i-1")]),
                "eu-west-1",
                "not in the catalog",
            ),
            (
                facts("snap-1", "vol-2", 5, &[]),
                "eu-west-1",
                "volume vol-2",
            ),
            (facts("snap-1", "vol-1", 6, &[]), "eu-west-1", "start time"),
            (
                facts("snap-1", "vol-1", 5, &[]),
                "us-east-1",
                "not in the catalog",
            ),
        ];
        for (snapshot, region, why) in cases {
            let err = admit(snapshot, region, &index, "prod").expect_err("foreign");
            assert!(err.why.contains(why), "{err:?}");
        }
        let err = admit(
            facts("snap-9", "vol-1", 5, &[(TAG_INSTANCE_ID, "i-1")]),
            "eu-west-1",
            &index,
            "prod",
        )
        .expect_err("foreign");
        assert_eq!(err.claims_instance.as_deref(), Some("i-1"));
    }

    #[test]
    fn a_recorded_copy_is_vouched_for_with_its_source_sets_verdict() {
        let record = set(true);
        let copy = CopyRecord {
            run_id: "r1".into(),
            instance_id: "i-1".into(),
            region: "us-east-1".into(),
            source_snapshot_id: "snap-1".into(),
            snapshot_id: "snap-c1".into(),
            started_at: t(100),
            consistent: true,
            file_system: false,
            imported: false,
            set_size: 0,
            seen_final: None,
            device: None,
        };
        let index = CatalogIndex::new([&record], [&copy]);
        let admitted = admit(
            facts("snap-c1", "vol-ffffffff", 900, &[]),
            "us-east-1",
            &index,
            "p",
        )
        .expect("a copy keeps EC2's own volume id and start time");
        assert_eq!(admitted.tags[TAG_SOURCE_SNAPSHOT], "snap-1");
        assert_eq!(admitted.tags[TAG_APP_CONSISTENT], "True");
        assert!(admit(facts("snap-c2", "vol-x", 0, &[]), "us-east-1", &index, "p").is_err());
    }

    #[test]
    fn a_copy_set_missing_a_copy_is_never_consistent() {
        // A consistent set of three snapshots; in eu-west-2 one copy of it so far.
        let mut record = set(true);
        for (i, volume) in ["vol-2", "vol-3"].iter().enumerate() {
            record.snapshots.push(RecordedSnapshot {
                snapshot_id: format!("snap-{}", i + 2),
                volume_id: volume.to_string(),
                device: format!("xvd{}", ["f", "g"][i]),
                start_time: t(5),
            });
        }
        let copy = |n: usize, set_size: u32| CopyRecord {
            run_id: "r1".into(),
            instance_id: "i-1".into(),
            region: "eu-west-2".into(),
            source_snapshot_id: format!("snap-{n}"),
            snapshot_id: format!("snap-c{n}"),
            started_at: t(100),
            consistent: true,
            file_system: false,
            imported: false,
            set_size,
            seen_final: None,
            device: None,
        };
        let verdict = |index: &CatalogIndex, id: &str| {
            let facts = facts(id, "vol-ffffffff", 900, &[]);
            admit(facts, "eu-west-2", index, "p").map(|a| a.tags[TAG_APP_CONSISTENT].clone())
        };
        let one = [copy(1, 3)];
        let index = CatalogIndex::new([&record], one.iter());
        assert_eq!(verdict(&index, "snap-c1").as_deref(), Ok("False"));
        // The size comes from the set's record when the copy's does not say it…
        let index = CatalogIndex::new([&record], [copy(1, 0)].iter());
        assert_eq!(verdict(&index, "snap-c1").as_deref(), Ok("False"));
        // …and from the copy's when the set's record is gone (its home set deleted).
        let index = CatalogIndex::new([], one.iter());
        assert_eq!(verdict(&index, "snap-c1").as_deref(), Ok("False"));
        // All three copied: consistent, each of them.
        let all = [copy(1, 3), copy(2, 3), copy(3, 3)];
        let index = CatalogIndex::new([], all.iter());
        for id in ["snap-c1", "snap-c2", "snap-c3"] {
            assert_eq!(verdict(&index, id).as_deref(), Ok("True"));
        }
        // The home set itself is not a copy: its verdict stands.
        let index = CatalogIndex::new([&record], one.iter());
        let home = admit(facts("snap-2", "vol-2", 5, &[]), "eu-west-1", &index, "p");
        assert_eq!(
            home.map(|a| a.tags[TAG_APP_CONSISTENT].clone()).as_deref(),
            Ok("True")
        );
    }

    #[test]
    fn the_documents_created_lines_are_read_and_nothing_else() {
        let output = "Preparing\nCreated snap-0a1 from vol-0b2 device: /dev/sda1\n  Created snap-0c3 from vol-0d4 device: xvdf\nCreated snapshot from vol-1\nCreated snap-; from vol-2\nCreated snap-5 of vol-6\n";
        assert_eq!(
            reported_snapshots(output),
            [
                ("snap-0a1".to_string(), "vol-0b2".to_string()),
                ("snap-0c3".to_string(), "vol-0d4".to_string())
            ]
        );
    }
}
