//! The fleet report: per tagged instance, its newest consistent set against the recovery point
//! objective (RPO), the copies of that set, and the last failure; instances out of RPO first.
//!
//! `build` is a pure function of what EC2 and SSM said; `report::step` reads it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::model::catalog::VaultRecord;
use crate::model::cause::{cause_of_invocation, cause_of_skip, Cause};
use crate::model::command::{Invocation, PastCommand};
use crate::model::fleet::{InstanceFacts, SkipReason};
use crate::model::snapshot::SnapshotInfo;
use crate::model::state::{CommandStatus, SnapshotState};
use crate::model::tags::{
    is_app_consistent, CONSISTENCY_CRASH_FALLBACK, TAG_APP_CONSISTENT, TAG_CLUSTER,
    TAG_CONSISTENCY, TAG_DEVICE, TAG_SOURCE_SNAPSHOT,
};
use crate::retention::plan::{sets_by_instance, SetKind, SnapshotSet};
use crate::run::plan::outcome::failure_reason;
use crate::run::plan::readiness::{Readiness, Verdict as ReadinessVerdict};

/// Where an instance stands against the RPO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RpoStatus {
    /// No consistent set of it exists at all.
    NeverBackedUp,
    /// Its newest consistent set is older than the RPO.
    OutOfRpo,
    WithinRpo,
}

/// A VSS command that did not succeed on an instance, from SSM's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedInvocation {
    pub instance_id: String,
    pub command_id: String,
    pub run_id: Option<String>,
    pub at: DateTime<Utc>,
    /// SSM's status and the document's own reason.
    pub reason: String,
    pub cause: Option<Cause>,
}

/// What the report reads, as plain data.
#[derive(Debug, Clone)]
pub struct ReportInput<'a> {
    pub now: DateTime<Utc>,
    pub rpo_hours: u32,
    pub managed_by: &'a str,
    /// The tagged fleet, each with why the next run would skip it (`None`: it would not).
    pub instances: Vec<(&'a InstanceFacts, Option<SkipReason>)>,
    /// This deployment's snapshots in the fleet's region.
    pub snapshots: &'a [SnapshotInfo],
    /// Per instance, the regions its sets are copied to (or why the tag cannot be read).
    pub copy_regions: BTreeMap<String, Result<Vec<String>, String>>,
    /// This deployment's copies, per copy region.
    pub copies: &'a BTreeMap<String, Vec<SnapshotInfo>>,
    pub failures: &'a [FailedInvocation],
    /// Copy regions that could not be read, with the AWS code (`region (code)`): their copies
    /// are reported as unknown, never as missing.
    pub regions_unreadable: &'a BTreeMap<String, String>,
    /// Instances with this deployment's backups that EC2 reports alive but no longer tagged
    /// for it, and the target tag's key (to show what it says now).
    pub lost_tag: Vec<&'a InstanceFacts>,
    pub target_key: &'a str,
    /// Failover cluster nodes the run of their owner's newest set left out as secondaries
    /// (as that run's record in the catalog says), by instance.
    pub secondaries: BTreeMap<String, Secondary>,
    /// With a vault account: its regions, and the vault copies the catalog records, by
    /// instance (`None`: no vault configured, no coverage shown).
    pub vault: Option<VaultInput<'a>>,
}

/// The vault's regions, and the vault copies the catalog records, by instance.
pub type VaultInput<'a> = (&'a [String], &'a BTreeMap<String, Vec<VaultRecord>>);

/// A server's backups in the vault account, as the catalog records the vault copies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VaultStatus {
    /// Every snapshot of the newest consistent set has a completed copy in every vault region.
    pub newest_set_vaulted: bool,
    /// Per vault region, how many of the newest set's snapshots have a completed copy there.
    pub regions: BTreeMap<String, usize>,
    /// The newest run with a completed vault copy, and when that copy was started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_copy_run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_copy_at: Option<DateTime<Utc>>,
}

/// The vault coverage of one server: `newest` its newest consistent set (run, snapshot ids).
pub fn vault_status(
    newest: Option<(&str, Vec<&str>)>,
    regions: &[String],
    copies: &[VaultRecord],
) -> VaultStatus {
    let completed: Vec<&VaultRecord> = copies.iter().filter(|c| c.is_completed()).collect();
    let newest_copy = completed.iter().max_by_key(|c| c.started_at);
    let mut in_region = BTreeMap::new();
    let mut vaulted = newest.is_some();
    for region in regions {
        let n = newest.as_ref().map_or(0, |(run, ids)| {
            ids.iter()
                .filter(|id| {
                    completed.iter().any(|c| {
                        c.region == *region && c.run_id == *run && c.source_snapshot_id == **id
                    })
                })
                .count()
        });
        vaulted &= newest.as_ref().is_some_and(|(_, ids)| n == ids.len());
        in_region.insert(region.clone(), n);
    }
    VaultStatus {
        newest_set_vaulted: vaulted,
        regions: in_region,
        newest_copy_run: newest_copy.map(|c| c.run_id.clone()),
        newest_copy_at: newest_copy.map(|c| c.started_at),
    }
}

/// A node a run left out as a cluster secondary: the cluster, its owner, and the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secondary {
    pub cluster: String,
    pub owner: String,
    pub run_id: String,
}

/// A cluster secondary's backup: its owner's set of the run that left it out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterCover {
    pub cluster: String,
    pub owner: String,
    pub set: SetSummary,
}

/// A server that has this deployment's backups but lost its tag (removed, or mistyped): it is
/// no longer backed up, and would otherwise vanish from the report too.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LostTag {
    pub instance_id: String,
    pub name: String,
    /// The target tag's value now, when the key is still there (a typo).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag_now: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_consistent: Option<SetSummary>,
}

/// Servers listed by name in the report's summary line, at most.
const LOST_TAG_NAMED: usize = 10;

/// A snapshot set, as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetSummary {
    pub run_id: String,
    pub taken_at: DateTime<Utc>,
    pub age_hours: f64,
    pub volumes: usize,
    /// `snap-… (xvdf)`, by device.
    pub snapshots: Vec<String>,
    /// Taken with `NoWriters`: file-system consistent, not application consistent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub file_system_only: bool,
}

/// The copies of the newest consistent set in one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyStatus {
    pub completed: usize,
    pub of: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub reason: String,
    /// The named cause and its fix, when the failure's text is a known one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<&'static str>,
    /// A consistent set was taken after it.
    pub resolved: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceStatus {
    pub instance_id: String,
    pub name: String,
    pub rpo: RpoStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_consistent: Option<SetSummary>,
    /// The function's newest crash-consistent fallback, when it is newer than any consistent
    /// set: "no consistent backup since; crash-consistent fallback at T".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crash_consistent_fallback: Option<SetSummary>,
    /// Copies of the newest consistent set, per copy region.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub copies: BTreeMap<String, CopyStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_regions_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// Why the next run would skip it, if it would, with the named cause and its fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run_skips: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run_cause: Option<Cause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run_fix: Option<&'static str>,
    /// Its readiness (`{"action":"readiness"}` has the whole checklist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReadinessBrief>,
    /// A failover cluster's secondary node: the owner's set that stands for it, when newer
    /// than its own (its RPO status is then that set's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_secondary: Option<ClusterCover>,
    /// Its backups in the vault account, with one configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultStatus>,
}

/// A server's readiness as the report shows it: its verdict and the checks it fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessBrief {
    pub verdict: ReadinessVerdict,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<&'static str>,
}

impl ReadinessBrief {
    pub fn of(readiness: &Readiness) -> Self {
        ReadinessBrief {
            verdict: readiness.verdict,
            failing: readiness
                .checks
                .iter()
                .filter(|c| c.result == ReadinessVerdict::Fail)
                .map(|c| c.check)
                .collect(),
        }
    }
}

impl InstanceStatus {
    /// What stands in the way of its next consistent set: why the next run would skip it, else
    /// its unresolved failure's cause.
    pub fn cause(&self) -> Option<Cause> {
        self.next_run_cause.or_else(|| {
            self.last_failure
                .as_ref()
                .filter(|f| !f.resolved)
                .and_then(|f| f.cause)
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub instances: usize,
    pub within_rpo: usize,
    /// Out of RPO, including those never backed up.
    pub out_of_rpo: usize,
    pub never_backed_up: usize,
    /// With a failure not followed by a consistent set.
    pub unresolved_failures: usize,
    /// The next run would skip them.
    pub not_ready: usize,
    /// Copy regions where the newest consistent set is not fully copied, over all instances.
    pub copies_missing: usize,
    /// Copy regions that could not be read (their copies are not counted either way).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub regions_unreadable: usize,
    /// Servers with backups that lost their tag (`FleetReport::lost_tag`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_tag: usize,
    /// Servers whose newest backup is file-system consistent only (`NoWriters`): within or
    /// out of the RPO as the others, but not application consistent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub file_system_only: usize,
    /// Servers with only a crash-consistent fallback since their last consistent set.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub on_fallback: usize,
    /// With a vault: servers whose newest consistent set is not wholly copied to the vault.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vault_missing: usize,
    /// Servers per named cause standing in the way of their next consistent set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub causes: BTreeMap<Cause, usize>,
}

impl Totals {
    /// Adds another part's counts to these; `regions_unreadable` is the report's, not a
    /// part's (`Gathered::finish` sets it).
    pub fn add(&mut self, other: &Totals) {
        let Totals {
            instances,
            within_rpo,
            out_of_rpo,
            never_backed_up,
            unresolved_failures,
            not_ready,
            copies_missing,
            regions_unreadable: _,
            lost_tag,
            file_system_only,
            on_fallback,
            vault_missing,
            causes,
        } = other;
        self.instances += instances;
        self.within_rpo += within_rpo;
        self.out_of_rpo += out_of_rpo;
        self.never_backed_up += never_backed_up;
        self.unresolved_failures += unresolved_failures;
        self.not_ready += not_ready;
        self.copies_missing += copies_missing;
        self.lost_tag += lost_tag;
        self.file_system_only += file_system_only;
        self.on_fallback += on_fallback;
        self.vault_missing += vault_missing;
        for (cause, n) in causes {
            *self.causes.entry(*cause).or_insert(0) += n;
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    pub generated_at: DateTime<Utc>,
    pub rpo_hours: u32,
    pub totals: Totals,
    /// `region (AWS code)` of each copy region that could not be read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regions_unreadable: Vec<String>,
    /// The servers in the report's order (out of RPO first), at most `REPORT_LISTED`.
    pub instances: Vec<InstanceStatus>,
    /// The servers counted in `totals` but not listed in `instances` (past `REPORT_LISTED`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub instances_left_out: usize,
    /// Servers with backups that are no longer tagged for this deployment, at most
    /// `REPORT_LISTED` (`totals.lost_tag` counts them all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_tag: Vec<LostTag>,
}

impl FleetReport {
    /// One line for the log and the invocation's caller.
    pub fn summary_line(&self) -> String {
        let t = &self.totals;
        let unreadable = if self.regions_unreadable.is_empty() {
            String::new()
        } else {
            format!(
                "; copy regions not readable, their copies unknown: {}",
                self.regions_unreadable.join(", ")
            )
        };
        let lost = if self.lost_tag.is_empty() {
            String::new()
        } else {
            let named: Vec<String> = self
                .lost_tag
                .iter()
                .take(LOST_TAG_NAMED)
                .map(|l| format!("{} ({})", l.name, l.instance_id))
                .collect();
            let more = t.lost_tag.saturating_sub(named.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(
                "; {} server(s) with backups lost their tag and are no longer backed up: {}{more}",
                t.lost_tag,
                named.join(", ")
            )
        };
        let file_system = match t.file_system_only {
            0 => String::new(),
            n => format!(
                "; {n} whose newest backup is file-system consistent only (NoWriters), not application consistent"
            ),
        };
        let file_system = match t.on_fallback {
            0 => file_system,
            n => format!(
                "{file_system}; {n} with no consistent backup since a crash-consistent fallback"
            ),
        };
        let file_system = match t.vault_missing {
            0 => file_system,
            n => format!(
                "{file_system}; {n} whose newest consistent set is not wholly in the vault account"
            ),
        };
        let causes = if t.causes.is_empty() {
            String::new()
        } else {
            let mut named: Vec<(&Cause, &usize)> = t.causes.iter().collect();
            named.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let named: Vec<String> = named.iter().map(|(c, n)| format!("{n} {c}")).collect();
            format!("; causes: {}", named.join(", "))
        };
        format!(
            "fleet report: {} instances, {} within the {} h RPO, {} out of it ({} never backed up), {} with an unresolved failure, {} the next run would skip{file_system}{causes}{unreadable}{lost}",
            t.instances, t.within_rpo, self.rpo_hours, t.out_of_rpo, t.never_backed_up, t.unresolved_failures, t.not_ready
        )
    }
}

/// Builds the report: one status per tagged instance, out of RPO first (never backed up
/// first of all, then oldest first), then by name.
pub fn build(input: &ReportInput) -> FleetReport {
    let (sets, _) = sets_by_instance(input.snapshots, input.managed_by);
    // Each copy region's completed copies by their source, looked up once per source.
    let copied: BTreeMap<&str, HashSet<&str>> = input
        .copies
        .iter()
        .map(|(region, copies)| {
            let sources = copies
                .iter()
                .filter(|c| c.state == SnapshotState::Completed)
                .filter_map(|c| c.tags.get(TAG_SOURCE_SNAPSHOT))
                .collect();
            (region.as_str(), sources)
        })
        .collect();
    let rpo = chrono::Duration::hours(i64::from(input.rpo_hours));
    let mut statuses = Vec::new();
    for (facts, skip) in &input.instances {
        let id = facts.instance_id.as_str();
        let mine = sets.get(id).map(Vec::as_slice).unwrap_or_default();
        // The newest backup: application consistent, or file-system consistent where the
        // instance asked for `NoWriters` (shown as such, and counted apart).
        let newest = mine.iter().find(|s| s.kind().is_backup());
        let latest_consistent = newest.map(|set| set_summary(set, input.now));
        let crash_consistent_fallback = mine
            .iter()
            .filter(|s| {
                s.snapshots
                    .iter()
                    .any(|snap| snap.tag(TAG_CONSISTENCY) == Some(CONSISTENCY_CRASH_FALLBACK))
            })
            .find(|s| newest.is_none_or(|n| s.started_at() > n.started_at()))
            .map(|set| set_summary(set, input.now));
        // A cluster secondary left out by its owner's run is backed up by the owner's set of
        // that run (the run's record says so; a tag alone never does).
        let cluster_secondary = input.secondaries.get(id).and_then(|sec| {
            let set = sets
                .get(sec.owner.as_str())?
                .iter()
                .find(|s| s.kind().is_backup() && s.run_id == sec.run_id)?;
            let set = set_summary(set, input.now);
            let newer = latest_consistent
                .as_ref()
                .is_none_or(|own| set.taken_at > own.taken_at);
            newer.then(|| ClusterCover {
                cluster: sec.cluster.clone(),
                owner: sec.owner.clone(),
                set,
            })
        });
        let standing = cluster_secondary
            .as_ref()
            .map(|c| &c.set)
            .or(latest_consistent.as_ref());
        let rpo_status = match standing {
            None => RpoStatus::NeverBackedUp,
            Some(set) if input.now - set.taken_at > rpo => RpoStatus::OutOfRpo,
            Some(_) => RpoStatus::WithinRpo,
        };
        let (regions, copy_regions_error) = match input.copy_regions.get(id) {
            Some(Ok(regions)) => (regions.clone(), None),
            Some(Err(why)) => (vec![], Some(why.clone())),
            None => (vec![], None),
        };
        let copies = match newest {
            Some(set) => copy_statuses(
                set,
                regions
                    .into_iter()
                    .filter(|r| !input.regions_unreadable.contains_key(r))
                    .collect(),
                &copied,
            ),
            None => BTreeMap::new(),
        };
        let newest_at = latest_consistent.as_ref().map(|s| s.taken_at);
        let vault = input.vault.map(|(regions, copies)| {
            let set = newest.map(|set| {
                let ids = set
                    .snapshots
                    .iter()
                    .map(|s| s.snapshot_id.as_str())
                    .collect();
                (set.run_id, ids)
            });
            let mine = copies.get(id).map(Vec::as_slice).unwrap_or_default();
            vault_status(set, regions, mine)
        });
        statuses.push(InstanceStatus {
            instance_id: id.to_string(),
            name: facts.display_name().to_string(),
            rpo: rpo_status,
            latest_consistent,
            crash_consistent_fallback,
            copies,
            copy_regions_error,
            last_failure: last_failure(id, mine, input.failures, newest_at),
            next_run_skips: skip.as_ref().map(ToString::to_string),
            next_run_cause: skip.as_ref().and_then(cause_of_skip),
            next_run_fix: skip
                .as_ref()
                .and_then(cause_of_skip)
                .map(Cause::remediation),
            readiness: None,
            cluster_secondary,
            vault,
        });
    }
    statuses.sort_by(in_report_order);
    let lost_tag: Vec<LostTag> = input
        .lost_tag
        .iter()
        .map(|facts| {
            let id = facts.instance_id.as_str();
            let newest = sets
                .get(id)
                .and_then(|mine| mine.iter().find(|s| s.kind().is_backup()));
            LostTag {
                instance_id: id.to_string(),
                name: facts.display_name().to_string(),
                tag_now: facts.tags.get(input.target_key).cloned(),
                latest_consistent: newest.map(|set| set_summary(set, input.now)),
            }
        })
        .collect();
    let mut totals = totals(&statuses);
    totals.regions_unreadable = input.regions_unreadable.len();
    totals.lost_tag = lost_tag.len();
    FleetReport {
        generated_at: input.now,
        rpo_hours: input.rpo_hours,
        totals,
        regions_unreadable: input
            .regions_unreadable
            .iter()
            .map(|(region, code)| format!("{region} ({code})"))
            .collect(),
        instances: statuses,
        instances_left_out: 0,
        lost_tag,
    }
}

/// The report's order: never backed up first, then out of RPO, oldest first; then by name.
fn in_report_order(a: &InstanceStatus, b: &InstanceStatus) -> std::cmp::Ordering {
    let taken = |s: &InstanceStatus| s.latest_consistent.as_ref().map(|l| l.taken_at);
    (a.rpo, taken(a), &a.name, &a.instance_id).cmp(&(b.rpo, taken(b), &b.name, &b.instance_id))
}

/// Servers (and servers that lost their tag) a report lists at most, those that need
/// attention first; its totals count every one. A Lambda answer holds at most 6 MB, and what
/// a report holds in memory is bounded by what it lists, not by the fleet.
pub const REPORT_LISTED: usize = 1_000;

/// A fleet report gathered a part of the fleet at a time (`report_parts`): every part's
/// totals added, and of its servers only the first `listed` in the report's order kept.
#[derive(Debug)]
pub struct Gathered {
    listed: usize,
    totals: Totals,
    instances: Vec<InstanceStatus>,
    lost_tag: Vec<LostTag>,
}

impl Gathered {
    pub fn new(listed: usize) -> Self {
        Gathered {
            listed,
            totals: Totals::default(),
            instances: Vec::new(),
            lost_tag: Vec::new(),
        }
    }

    /// One part's report (`build` of that part's servers).
    pub fn add(&mut self, part: FleetReport) {
        self.totals.add(&part.totals);
        self.instances.extend(part.instances);
        self.instances.sort_by(in_report_order);
        self.instances.truncate(self.listed);
        self.lost_tag.extend(part.lost_tag);
        self.lost_tag
            .sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        self.lost_tag.truncate(self.listed);
    }

    /// The report of every part, with the copy regions that could not be read in any of them.
    pub fn finish(
        self,
        now: DateTime<Utc>,
        rpo_hours: u32,
        regions_unreadable: &BTreeMap<String, String>,
    ) -> FleetReport {
        let Gathered {
            mut totals,
            instances,
            lost_tag,
            ..
        } = self;
        totals.regions_unreadable = regions_unreadable.len();
        FleetReport {
            generated_at: now,
            rpo_hours,
            instances_left_out: totals.instances.saturating_sub(instances.len()),
            totals,
            regions_unreadable: regions_unreadable
                .iter()
                .map(|(region, code)| format!("{region} ({code})"))
                .collect(),
            instances,
            lost_tag,
        }
    }
}

/// The tagged fleet's failover clusters (`ConsistentSnapshot:Cluster`, case aside) of more than
/// one node, each with its nodes in id order.
pub fn clusters_of<'a>(
    fleet: impl IntoIterator<Item = &'a InstanceFacts>,
) -> BTreeMap<String, Vec<&'a str>> {
    let mut clusters: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for instance in fleet {
        if let Some(name) = instance.tags.get(TAG_CLUSTER) {
            clusters
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(&instance.instance_id);
        }
    }
    clusters.retain(|_, nodes| nodes.len() > 1);
    for nodes in clusters.values_mut() {
        nodes.sort_unstable();
    }
    clusters
}

/// The report's servers in parts read one at a time, so that its memory is a part's, not the
/// catalog's: each failover cluster's nodes together in one part (a secondary stands on its
/// owner's set), then every other server, tagged (`tagged`) or with snapshots recorded
/// (`recorded`, with how many), in id order. A part holds at most `max_instances` servers and,
/// unless one cluster or server alone has more, at most `max_snapshots` recorded snapshots.
pub fn report_parts<'a>(
    recorded: &'a BTreeMap<String, usize>,
    clusters: &BTreeMap<String, Vec<&'a str>>,
    tagged: impl IntoIterator<Item = &'a str>,
    (max_snapshots, max_instances): (usize, usize),
) -> Vec<Vec<String>> {
    let in_cluster: HashSet<&str> = clusters.values().flatten().copied().collect();
    let others: BTreeSet<&str> = recorded
        .keys()
        .map(String::as_str)
        .chain(tagged)
        .filter(|id| !in_cluster.contains(id))
        .collect();
    let groups = clusters
        .values()
        .map(Vec::as_slice)
        .chain(others.iter().map(std::slice::from_ref));
    let mut parts: Vec<Vec<String>> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut snapshots = 0usize;
    for group in groups {
        let count: usize = group
            .iter()
            .map(|id| recorded.get(*id).copied().unwrap_or(0))
            .sum();
        let full = !current.is_empty()
            && (current.len() + group.len() > max_instances.max(1)
                || snapshots + count > max_snapshots);
        if full {
            parts.push(std::mem::take(&mut current));
            snapshots = 0;
        }
        current.extend(group.iter().map(|id| id.to_string()));
        snapshots += count;
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

/// A consistent set as the report shows it: when it was taken, how old it is, its snapshots.
fn set_summary(set: &SnapshotSet, now: DateTime<Utc>) -> SetSummary {
    let taken_at = set.started_at();
    let mut snapshots: Vec<String> = set
        .snapshots
        .iter()
        .map(|s| match s.tags.get(TAG_DEVICE) {
            Some(device) => format!("{} ({device})", s.snapshot_id),
            None => s.snapshot_id.clone(),
        })
        .collect();
    snapshots.sort();
    SetSummary {
        run_id: set.run_id.to_string(),
        taken_at,
        age_hours: ((now - taken_at).num_seconds() as f64 / 3600.0 * 10.0).round() / 10.0,
        volumes: set.snapshots.len(),
        snapshots,
        file_system_only: set.kind() == SetKind::FileSystemConsistent,
    }
}

/// How many of a set's snapshots have a completed copy in each of its copy regions;
/// `copied`: per region, the sources of its completed copies.
fn copy_statuses(
    set: &SnapshotSet,
    regions: Vec<String>,
    copied: &BTreeMap<&str, HashSet<&str>>,
) -> BTreeMap<String, CopyStatus> {
    let mut statuses = BTreeMap::new();
    for region in regions {
        let completed = copied.get(region.as_str()).map_or(0, |sources| {
            set.snapshots
                .iter()
                .filter(|source| sources.contains(source.snapshot_id.as_str()))
                .count()
        });
        statuses.insert(
            region,
            CopyStatus {
                completed,
                of: set.snapshots.len(),
            },
        );
    }
    statuses
}

/// An instance's newest failure: VSS failures and incomplete sets (from the snapshots), and
/// commands that did not succeed (from SSM); resolved when a consistent set is newer.
fn last_failure(
    id: &str,
    mine: &[SnapshotSet],
    failures: &[FailedInvocation],
    newest_at: Option<DateTime<Utc>>,
) -> Option<Failure> {
    let from_sets = mine
        .iter()
        .filter(|s| s.kind() == SetKind::NotConsistent)
        .map(|s| {
            // The command of the same run says why, in the document's own words.
            let said = failures
                .iter()
                .find(|f| f.instance_id == id && f.run_id.as_deref() == Some(s.run_id));
            let (what, detail) = set_failure(s.snapshots.as_slice());
            let reason = match said {
                Some(f) => format!("{what}: {} (command {})", f.reason, f.command_id),
                None => format!("{what}: {detail}"),
            };
            let cause = said.and_then(|f| f.cause);
            Failure {
                at: s.started_at(),
                run_id: Some(s.run_id.to_string()),
                reason,
                cause,
                fix: cause.map(Cause::remediation),
                resolved: false,
            }
        });
    let merged = |f: &FailedInvocation| {
        mine.iter()
            .any(|s| s.kind() == SetKind::NotConsistent && f.run_id.as_deref() == Some(s.run_id))
    };
    let from_ssm = failures
        .iter()
        .filter(|f| f.instance_id == id && !merged(f))
        .map(|f| Failure {
            at: f.at,
            run_id: f.run_id.clone(),
            reason: format!("command {}: {}", f.command_id, f.reason),
            cause: f.cause,
            fix: f.cause.map(Cause::remediation),
            resolved: false,
        });
    from_sets
        .chain(from_ssm)
        .max_by(|a, b| a.at.cmp(&b.at))
        .map(|mut f| {
            f.resolved = newest_at.is_some_and(|n| n > f.at);
            f
        })
}

fn totals(statuses: &[InstanceStatus]) -> Totals {
    Totals {
        instances: statuses.len(),
        within_rpo: count(statuses, |s| s.rpo == RpoStatus::WithinRpo),
        out_of_rpo: count(statuses, |s| s.rpo != RpoStatus::WithinRpo),
        never_backed_up: count(statuses, |s| s.rpo == RpoStatus::NeverBackedUp),
        unresolved_failures: count(statuses, |s| {
            s.last_failure.as_ref().is_some_and(|f| !f.resolved)
        }),
        not_ready: count(statuses, |s| s.next_run_skips.is_some()),
        copies_missing: statuses
            .iter()
            .flat_map(|s| s.copies.values())
            .filter(|c| c.completed < c.of)
            .count(),
        regions_unreadable: 0,
        lost_tag: 0,
        vault_missing: count(statuses, |s| {
            s.vault.as_ref().is_some_and(|v| !v.newest_set_vaulted)
        }),
        on_fallback: count(statuses, |s| s.crash_consistent_fallback.is_some()),
        file_system_only: count(statuses, |s| {
            s.latest_consistent
                .as_ref()
                .is_some_and(|l| l.file_system_only)
        }),
        causes: statuses.iter().filter_map(InstanceStatus::cause).fold(
            BTreeMap::new(),
            |mut n, c| {
                *n.entry(c).or_insert(0) += 1;
                n
            },
        ),
    }
}

/// SSM keeps command history for 30 days.
const SSM_HISTORY_DAYS: i64 = 30;

/// How far back the report reads failed commands: twice the RPO, at least a week, at most
/// what SSM keeps.
pub fn failures_since(now: DateTime<Utc>, rpo_hours: u32) -> DateTime<Utc> {
    let hours = (2 * i64::from(rpo_hours)).clamp(24 * 7, 24 * SSM_HISTORY_DAYS);
    now - Duration::hours(hours)
}

/// The invocations of a finished command that did not succeed, with the document's own
/// reason (or SSM's status details when the output says nothing).
pub fn failed_invocations(
    command: &PastCommand,
    invocations: Vec<Invocation>,
) -> impl Iterator<Item = FailedInvocation> + '_ {
    invocations
        .into_iter()
        .filter(|i| i.status.is_final() && i.status != CommandStatus::Success)
        .map(move |inv| {
            let reason = failure_reason(&inv.output)
                .map(|r| format!("{}: {r}", inv.status))
                .unwrap_or_else(|| format!("{} ({})", inv.status, inv.status_details));
            FailedInvocation {
                cause: cause_of_invocation(&inv.status_details, &inv.output),
                instance_id: inv.instance_id,
                command_id: command.command_id.clone(),
                run_id: command.run_id.clone(),
                at: command.requested_at,
                reason,
            }
        })
}

fn count(statuses: &[InstanceStatus], pred: impl Fn(&InstanceStatus) -> bool) -> usize {
    statuses.iter().filter(|s| pred(s)).count()
}

/// Why a set that is not consistent is not, read from its snapshots: what it is, and which
/// snapshots say so.
fn set_failure(snapshots: &[&SnapshotInfo]) -> (&'static str, String) {
    let failed: Vec<&str> = snapshots
        .iter()
        .filter(|s| s.state == SnapshotState::Error)
        .map(|s| s.snapshot_id.as_str())
        .collect();
    if !failed.is_empty() {
        return ("snapshot(s) failed", failed.join(", "));
    }
    let crash: Vec<&str> = snapshots
        .iter()
        .filter(|s| !is_app_consistent(s.tags.get(TAG_APP_CONSISTENT)))
        .map(|s| s.snapshot_id.as_str())
        .collect();
    (
        "crash-consistent",
        format!(
            "VSS did not freeze the writers (AppConsistent is not True on {})",
            crash.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tags::{TAG_INSTANCE_ID, TAG_MANAGED_BY, TAG_RUN_ID};
    use chrono::Duration;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn instance(id: &str, name: &str) -> InstanceFacts {
        InstanceFacts {
            instance_id: id.into(),
            name: Some(name.into()),
            state: "running".into(),
            platform: Some("windows".into()),
            platform_details: None,
            root_device: None,
            volumes: vec![],
            tags: BTreeMap::new(),
            host: Default::default(),
        }
    }

    fn snap(id: &str, instance: &str, run: &str, hours_ago: i64, consistent: bool) -> SnapshotInfo {
        let tags = [
            (TAG_MANAGED_BY, "prod"),
            (TAG_INSTANCE_ID, instance),
            (TAG_RUN_ID, run),
            ("AppConsistent", if consistent { "True" } else { "False" }),
            ("Device", "xvdf"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        SnapshotInfo {
            snapshot_id: id.into(),
            state: "completed".into(),
            start_time: now() - Duration::hours(hours_ago),
            tags,
            used_by_images: Box::default(),
            copies_in_progress: 0,
            archived: false,
            recorded_tiers: 0,
        }
    }

    fn copy_of(id: &str, source: &str) -> SnapshotInfo {
        let mut copy = snap(id, "i-1", "r", 1, true);
        copy.tags.insert(TAG_SOURCE_SNAPSHOT, source);
        copy
    }

    #[test]
    fn out_of_rpo_and_never_backed_up_come_first_with_their_reasons() {
        let fresh = instance("i-1", "sql01");
        let stale = instance("i-2", "exch01");
        let never = instance("i-3", "files01");
        // Backed up before, its tag since mistyped.
        let mut lost = instance("i-4", "old01");
        lost.tags
            .insert("ConsistentSnapshot".into(), "WindowsVS".into());
        let snapshots = vec![
            snap("snap-f", "i-4", "r1", 30, true),
            snap("snap-a", "i-1", "r2", 2, true),
            snap("snap-b", "i-1", "r1", 50, true),
            snap("snap-c", "i-2", "r1", 30, true),
            snap("snap-d", "i-2", "r2", 5, false),
            // Another deployment's snapshot of i-3 does not count.
            {
                let mut s = snap("snap-e", "i-3", "r2", 1, true);
                s.tags.insert(TAG_MANAGED_BY, "other");
                s
            },
        ];
        let failures = [
            FailedInvocation {
                instance_id: "i-3".into(),
                command_id: "c-9".into(),
                run_id: Some("r2".into()),
                at: now() - Duration::hours(3),
                reason: "Failed: No EBS volumes are attached".into(),
                cause: Some(Cause::NoEbsVolumes),
            },
            FailedInvocation {
                instance_id: "i-2".into(),
                command_id: "c-8".into(),
                run_id: Some("r2".into()),
                at: now() - Duration::hours(5),
                reason: "Failed: Thaw pipe connection timed out".into(),
                cause: Some(Cause::FreezeTimeout),
            },
        ];
        let copies = BTreeMap::from([("eu-west-1".to_string(), vec![copy_of("snap-x", "snap-a")])]);
        let report = build(&ReportInput {
            now: now(),
            rpo_hours: 26,
            managed_by: "prod",
            instances: vec![
                (&fresh, None),
                (&stale, None),
                (
                    &never,
                    Some(SkipReason::SsmOffline {
                        ping_status: "ConnectionLost".into(),
                    }),
                ),
            ],
            snapshots: &snapshots,
            copy_regions: BTreeMap::from([
                ("i-1".to_string(), Ok(vec!["eu-west-1".to_string()])),
                ("i-2".to_string(), Ok(vec!["eu-west-1".to_string()])),
            ]),
            copies: &copies,
            failures: &failures,
            regions_unreadable: &BTreeMap::new(),
            lost_tag: vec![&lost],
            target_key: "ConsistentSnapshot",
            secondaries: BTreeMap::new(),
            vault: None,
        });
        let order: Vec<(&str, RpoStatus)> = report
            .instances
            .iter()
            .map(|s| (s.instance_id.as_str(), s.rpo))
            .collect();
        assert_eq!(
            order,
            [
                ("i-3", RpoStatus::NeverBackedUp),
                ("i-2", RpoStatus::OutOfRpo),
                ("i-1", RpoStatus::WithinRpo)
            ]
        );
        let [never, stale, fresh] = &report.instances[..] else {
            panic!("three instances expected");
        };
        assert_eq!(never.latest_consistent, None);
        assert!(never.last_failure.as_ref().is_some_and(|f| !f.resolved
            && f.reason.contains("No EBS volumes")
            && f.reason.contains("c-9")));
        assert!(never
            .next_run_skips
            .as_deref()
            .is_some_and(|r| r.contains("ConnectionLost")));
        let stale_set = stale.latest_consistent.as_ref();
        assert_eq!(stale_set.map(|s| s.run_id.as_str()), Some("r1"));
        assert_eq!(stale_set.map(|s| s.age_hours), Some(30.0));
        assert!(stale.last_failure.as_ref().is_some_and(|f| !f.resolved
            && f.run_id.as_deref() == Some("r2")
            && f.reason.contains("crash-consistent")
            && f.reason.contains("crash-consistent: Failed: Thaw pipe")
            && f.reason.contains("(command c-8)")
            && f.cause == Some(Cause::FreezeTimeout)
            && f.fix == Some(Cause::FreezeTimeout.remediation())));
        // The next run's skip outweighs an older failure: it is what stands in the way now.
        assert_eq!(
            (never.next_run_cause, never.cause()),
            (Some(Cause::AgentOffline), Some(Cause::AgentOffline))
        );
        assert!(report
            .summary_line()
            .contains("; causes: 1 VSS freeze timed out, 1 SSM agent offline"));
        assert_eq!(
            stale.copies["eu-west-1"],
            CopyStatus {
                completed: 0,
                of: 1
            }
        );
        assert_eq!(
            fresh.latest_consistent.as_ref().map(|s| s.run_id.as_str()),
            Some("r2")
        );
        assert_eq!(
            fresh
                .latest_consistent
                .as_ref()
                .map(|s| s.snapshots.clone()),
            Some(vec!["snap-a (xvdf)".to_string()])
        );
        assert_eq!(
            fresh.copies["eu-west-1"],
            CopyStatus {
                completed: 1,
                of: 1
            }
        );
        assert_eq!(fresh.last_failure, None);
        assert_eq!(
            report.totals,
            Totals {
                instances: 3,
                within_rpo: 1,
                out_of_rpo: 2,
                never_backed_up: 1,
                unresolved_failures: 2,
                not_ready: 1,
                copies_missing: 1,
                regions_unreadable: 0,
                lost_tag: 1,
                vault_missing: 0,
                file_system_only: 0,
                on_fallback: 0,
                causes: BTreeMap::from([(Cause::FreezeTimeout, 1), (Cause::AgentOffline, 1)]),
            }
        );
        assert!(report
            .summary_line()
            .contains("2 out of it (1 never backed up)"));
        // The server that lost its tag is not among the fleet, but named, with its last set.
        let [old] = &report.lost_tag[..] else {
            panic!("one server lost its tag: {:?}", report.lost_tag);
        };
        assert_eq!(
            (old.instance_id.as_str(), old.tag_now.as_deref()),
            ("i-4", Some("WindowsVS"))
        );
        assert_eq!(
            old.latest_consistent.as_ref().map(|s| s.run_id.as_str()),
            Some("r1")
        );
        assert!(report.summary_line().contains(
            "1 server(s) with backups lost their tag and are no longer backed up: old01 (i-4)"
        ));
    }

    #[test]
    fn a_failure_before_the_newest_consistent_set_is_resolved() {
        let one = instance("i-1", "sql01");
        let snapshots = vec![
            snap("snap-a", "i-1", "r2", 2, true),
            snap("snap-b", "i-1", "r1", 20, false),
        ];
        let report = build(&ReportInput {
            now: now(),
            rpo_hours: 26,
            managed_by: "prod",
            instances: vec![(&one, None)],
            snapshots: &snapshots,
            copy_regions: BTreeMap::new(),
            copies: &BTreeMap::new(),
            failures: &[],
            regions_unreadable: &BTreeMap::new(),
            lost_tag: vec![],
            target_key: "ConsistentSnapshot",
            secondaries: BTreeMap::new(),
            vault: None,
        });
        let status = &report.instances[0];
        assert_eq!(status.rpo, RpoStatus::WithinRpo);
        assert!(status.last_failure.as_ref().is_some_and(|f| f.resolved));
        assert_eq!(report.totals.unresolved_failures, 0);
    }

    #[test]
    fn the_rpo_boundary_is_inclusive() {
        let one = instance("i-1", "sql01");
        let snapshots = vec![snap("snap-a", "i-1", "r1", 26, true)];
        let no_copies = BTreeMap::new();
        let readable = BTreeMap::new();
        let input = |hours| ReportInput {
            now: now(),
            rpo_hours: hours,
            managed_by: "prod",
            instances: vec![(&one, None)],
            snapshots: &snapshots,
            copy_regions: BTreeMap::new(),
            copies: &no_copies,
            failures: &[],
            regions_unreadable: &readable,
            lost_tag: vec![],
            target_key: "ConsistentSnapshot",
            secondaries: BTreeMap::new(),
            vault: None,
        };
        assert_eq!(build(&input(26)).instances[0].rpo, RpoStatus::WithinRpo);
        assert_eq!(build(&input(25)).instances[0].rpo, RpoStatus::OutOfRpo);
    }

    #[test]
    fn a_cluster_secondary_stands_on_its_owners_set_of_the_run_that_left_it_out_only() {
        let (owner, secondary) = (instance("i-1", "node1"), instance("i-2", "node2"));
        let snapshots = vec![snap("snap-a", "i-1", "r2", 2, true)];
        let no_copies = BTreeMap::new();
        let readable = BTreeMap::new();
        let input = |run: &str, by: &str| ReportInput {
            now: now(),
            rpo_hours: 26,
            managed_by: "prod",
            instances: vec![(&owner, None), (&secondary, None)],
            snapshots: &snapshots,
            copy_regions: BTreeMap::new(),
            copies: &no_copies,
            failures: &[],
            regions_unreadable: &readable,
            lost_tag: vec![],
            target_key: "ConsistentSnapshot",
            secondaries: [(
                "i-2".to_string(),
                Secondary {
                    cluster: "SQLCLU".into(),
                    owner: by.into(),
                    run_id: run.into(),
                },
            )]
            .into(),
            vault: None,
        };
        let node2 = |report: &FleetReport| {
            report
                .instances
                .iter()
                .find(|s| s.instance_id == "i-2")
                .cloned()
                .expect("i-2")
        };
        let covered = node2(&build(&input("r2", "i-1")));
        assert_eq!(covered.rpo, RpoStatus::WithinRpo);
        assert_eq!(
            covered.cluster_secondary.map(|c| (c.owner, c.set.run_id)),
            Some(("i-1".into(), "r2".into()))
        );
        // Another run, or an owner without a set of it: never covered.
        for (run, by) in [("r1", "i-1"), ("r2", "i-3")] {
            let alone = node2(&build(&input(run, by)));
            assert_eq!(alone.rpo, RpoStatus::NeverBackedUp, "{run} {by}");
            assert!(alone.cluster_secondary.is_none());
        }
    }

    #[test]
    fn vault_coverage_counts_only_completed_copies_of_the_newest_set() {
        use crate::model::catalog::SeenFinal;
        let copy = |region: &str, run: &str, source: &str, state: Option<&str>| VaultRecord {
            run_id: run.into(),
            instance_id: "i-1".into(),
            account: "222222222222".into(),
            region: region.into(),
            source_snapshot_id: source.into(),
            snapshot_id: format!("v-{region}-{source}"),
            started_at: if run == "r1" {
                now() - Duration::days(1)
            } else {
                now()
            },
            seen_final: state.map(|s| SeenFinal {
                state: s.into(),
                message: None,
            }),
            locked_until: None,
        };
        let regions = ["eu-west-1".to_string(), "us-west-2".to_string()];
        let copies = [
            copy("eu-west-1", "r2", "snap-a", Some("completed")),
            copy("eu-west-1", "r2", "snap-b", Some("completed")),
            copy("us-west-2", "r2", "snap-a", Some("completed")),
            // Pending, failed, or of an older run: none covers the newest set.
            copy("us-west-2", "r2", "snap-b", None),
            copy("us-west-2", "r1", "snap-b", Some("completed")),
        ];
        let newest = Some(("r2", vec!["snap-a", "snap-b"]));
        let status = vault_status(newest.clone(), &regions, &copies);
        assert!(!status.newest_set_vaulted);
        assert_eq!(status.regions["eu-west-1"], 2);
        assert_eq!(status.regions["us-west-2"], 1);
        assert_eq!(status.newest_copy_run.as_deref(), Some("r2"));
        let mut all = copies.to_vec();
        all[3].seen_final = Some(SeenFinal {
            state: "completed".into(),
            message: None,
        });
        assert!(vault_status(newest, &regions, &all).newest_set_vaulted);
        assert!(!vault_status(None, &regions, &all).newest_set_vaulted);
    }

    #[test]
    fn a_report_gathered_in_parts_is_the_report_built_at_once() {
        // 40 servers: every fifth never backed up, every third stale, the others fresh; each
        // with a failure, and copies of half of them.
        let fleet: Vec<InstanceFacts> = (0..40)
            .map(|n| instance(&format!("i-{n:02}"), &format!("srv{:02}", 39 - n)))
            .collect();
        let mut snapshots = Vec::new();
        let mut copies = Vec::new();
        for (n, server) in fleet.iter().enumerate().filter(|(n, _)| n % 5 != 0) {
            let hours = if n % 3 == 0 { 30 + n as i64 } else { n as i64 };
            let id = format!("snap-{n}");
            snapshots.push(snap(&id, &server.instance_id, "r1", hours, n % 7 != 0));
            if n % 2 == 0 {
                copies.push(copy_of(&format!("snap-c{n}"), &id));
            }
        }
        let failures: Vec<FailedInvocation> = fleet
            .iter()
            .map(|server| FailedInvocation {
                instance_id: server.instance_id.clone(),
                command_id: "c-1".into(),
                run_id: Some("r0".into()),
                at: now() - Duration::hours(20),
                reason: "Failed: Thaw pipe connection timed out".into(),
                cause: Some(Cause::FreezeTimeout),
            })
            .collect();
        let lost = instance("i-99", "gone01");
        snapshots.push(snap("snap-99", "i-99", "r1", 3, true));
        let copies = BTreeMap::from([("eu-west-1".to_string(), copies)]);
        let readable = BTreeMap::new();
        let regions: BTreeMap<String, Result<Vec<String>, String>> = fleet
            .iter()
            .map(|i| (i.instance_id.clone(), Ok(vec!["eu-west-1".to_string()])))
            .collect();
        let report_of = |servers: &[InstanceFacts], lost_tag: Vec<&InstanceFacts>| {
            build(&ReportInput {
                now: now(),
                rpo_hours: 26,
                managed_by: "prod",
                instances: servers.iter().map(|i| (i, None)).collect(),
                snapshots: &snapshots,
                copy_regions: regions.clone(),
                copies: &copies,
                failures: &failures,
                regions_unreadable: &readable,
                lost_tag,
                target_key: "ConsistentSnapshot",
                secondaries: BTreeMap::new(),
                vault: None,
            })
        };
        let whole = report_of(&fleet, vec![&lost]);
        assert_eq!(whole.totals.instances, 40);
        assert!(whole.totals.out_of_rpo > 8 && whole.totals.copies_missing > 0);
        for listed in [1_000, 7] {
            let mut gathered = Gathered::new(listed);
            for (n, part) in fleet.chunks(9).enumerate() {
                gathered.add(report_of(part, if n == 2 { vec![&lost] } else { vec![] }));
            }
            let parts = gathered.finish(now(), 26, &readable);
            assert_eq!(parts.totals, whole.totals, "listing {listed}");
            let shown = whole.instances.len().min(listed);
            assert_eq!(
                parts.instances,
                whole.instances[..shown],
                "listing {listed}"
            );
            assert_eq!(parts.instances_left_out, 40 - shown);
            assert_eq!(parts.lost_tag, whole.lost_tag);
            assert_eq!(parts.summary_line(), whole.summary_line());
        }
    }

    #[test]
    fn parts_keep_a_clusters_nodes_together_and_follow_the_snapshot_budget() {
        let mut sqlnode1 = instance("i-5", "sqlnode1");
        sqlnode1.tags.insert(TAG_CLUSTER.into(), "SQLCLU".into());
        let mut sqlnode2 = instance("i-1", "sqlnode2");
        sqlnode2.tags.insert(TAG_CLUSTER.into(), "sqlclu".into());
        let mut lone = instance("i-3", "app01");
        lone.tags.insert(TAG_CLUSTER.into(), "LONE".into());
        let fleet = [sqlnode1, sqlnode2, lone, instance("i-2", "never01")];
        let clusters = clusters_of(&fleet);
        assert_eq!(
            clusters,
            BTreeMap::from([("sqlclu".to_string(), vec!["i-1", "i-5"])]),
            "a cluster of one node is no cluster"
        );
        // Recorded: i-4 lost its tag; i-2 has nothing recorded.
        let recorded: BTreeMap<String, usize> = [("i-1", 2), ("i-3", 4), ("i-4", 3), ("i-5", 6)]
            .into_iter()
            .map(|(id, n)| (id.to_string(), n))
            .collect();
        let tagged = || fleet.iter().map(|i| i.instance_id.as_str());
        let parts = |budget| report_parts(&recorded, &clusters, tagged(), budget);
        assert_eq!(parts((100, 200)), [["i-1", "i-5", "i-2", "i-3", "i-4"]]);
        // A cluster over the budget is still one part; every server is in exactly one part.
        assert_eq!(
            parts((5, 200)),
            vec![vec!["i-1", "i-5"], vec!["i-2", "i-3"], vec!["i-4"]]
        );
        assert_eq!(
            parts((100, 2)),
            vec![vec!["i-1", "i-5"], vec!["i-2", "i-3"], vec!["i-4"]]
        );
    }
}
