//! Where a run's backups stand in the vault account, and what the vault step does next: pure
//! decisions over the catalog's records and what the vault reports.
//!
//! Only the run's backups (consistent or file-system consistent sets, as the catalog records
//! them) go to the vault. A copy counts only once the catalog records it: found in the vault by
//! the run's tag with no record (a CopySnapshot whose answer was lost), it is recorded when its
//! source tag names one of the run's snapshots and its description is the one this function
//! writes; anything else there is not this function's and is left alone.

pub mod keep;
pub mod transit;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::catalog::{SeenFinal, SetRecord, VaultRecord};
use crate::model::snapshot::SnapshotFacts;
use crate::model::state::SnapshotState;
use crate::model::tags::{cut_chars, DESCRIPTION_MAX_CHARS, TAG_SOURCE_SNAPSHOT};

/// One snapshot of the run's backups, to be copied to every vault region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultSource {
    pub snapshot_id: String,
    pub instance_id: String,
    /// How many snapshots its set has (tagged on the vault copy: `TAG_SET_SIZE`).
    pub set_size: usize,
}

/// The snapshots of the run's backups (consistent or file-system consistent sets), by
/// instance; a set that is not a backup is never copied to the vault.
pub fn vault_sources(sets: &[SetRecord]) -> Vec<VaultSource> {
    let mut sources: Vec<VaultSource> = sets
        .iter()
        .filter(|set| set.is_backup())
        .flat_map(|set| {
            set.snapshots.iter().map(|r| VaultSource {
                snapshot_id: r.snapshot_id.clone(),
                instance_id: set.instance_id.clone(),
                set_size: set.snapshots.len(),
            })
        })
        .collect();
    sources.sort_by(|a, b| (&a.instance_id, &a.snapshot_id).cmp(&(&b.instance_id, &b.snapshot_id)));
    sources
}

/// The description of a vault copy: what it is a copy of, from which account and region.
pub fn vault_description(source_snapshot_id: &str, home: &str, run_id: &str) -> String {
    cut_chars(
        &format!(
            "Vault copy of {source_snapshot_id} from {home}, consistent-snapshot run {run_id}"
        ),
        DESCRIPTION_MAX_CHARS,
    )
}

/// What the vault step does in one pass, and how the run's vault copies stand.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VaultPlan {
    /// Copies to start: the vault region and the source.
    pub to_copy: Vec<(String, VaultSource)>,
    /// Copies found in the vault with no record (a lost answer): recorded now.
    pub adopted: Vec<VaultRecord>,
    /// Recorded copies whose state changed to final, as now seen: recorded again.
    pub newly_final: Vec<VaultRecord>,
    /// Copies not locked yet (`VaultRecord::locked_until` none), to lock.
    pub to_lock: Vec<VaultRecord>,
    pub completed: BTreeMap<String, usize>,
    pub pending: BTreeMap<String, usize>,
    /// Copies the vault reports failed: region, source, EC2's message.
    pub failed: Vec<(String, String, String)>,
}

impl VaultPlan {
    /// Nothing to start and nothing on its way.
    pub fn is_final(&self) -> bool {
        self.to_copy.is_empty() && self.pending.values().all(|n| *n == 0)
    }
}

/// The run's vault copies in every vault region: `recorded` as the catalog has them, `found`
/// as each region's listing by the run's tag reports them (a region absent: not read in this
/// pass, its copies left as they stand and none started there).
///
/// A recorded copy the listing does not show is counted pending, never copied again: a copy
/// just started may not be listed yet, and two copies of one snapshot are waste, not safety.
/// The step's deadline ends such a wait.
pub fn plan_vault(
    (run_id, home, account): (&str, &str, &str),
    sources: &[VaultSource],
    recorded: &[VaultRecord],
    found: &BTreeMap<String, Vec<(SnapshotFacts, String)>>,
    now: DateTime<Utc>,
) -> VaultPlan {
    let mut plan = VaultPlan::default();
    for (region, listed) in found {
        for source in sources {
            let record = recorded
                .iter()
                .find(|r| r.region == *region && r.source_snapshot_id == source.snapshot_id);
            let (record, seen) = match record {
                Some(record) => {
                    let seen = listed
                        .iter()
                        .find(|(f, _)| f.snapshot_id == record.snapshot_id);
                    (record.clone(), seen.map(|(f, _)| f))
                }
                None => {
                    let description = vault_description(&source.snapshot_id, home, run_id);
                    let lost = listed.iter().find(|(f, d)| {
                        f.tags.get(TAG_SOURCE_SNAPSHOT) == Some(&source.snapshot_id)
                            && *d == description
                    });
                    match lost {
                        Some((copy, _)) => {
                            let record = VaultRecord {
                                run_id: run_id.to_string(),
                                instance_id: source.instance_id.clone(),
                                account: account.to_string(),
                                region: region.clone(),
                                source_snapshot_id: source.snapshot_id.clone(),
                                snapshot_id: copy.snapshot_id.clone(),
                                started_at: copy.start_time.unwrap_or(now),
                                seen_final: None,
                                locked_until: None,
                            };
                            plan.adopted.push(record.clone());
                            (record, Some(copy))
                        }
                        None => {
                            plan.to_copy.push((region.clone(), source.clone()));
                            continue;
                        }
                    }
                }
            };
            let state = seen.map(|f| f.state.clone());
            match state {
                Some(SnapshotState::Completed) => {
                    *plan.completed.entry(region.clone()).or_default() += 1;
                }
                Some(SnapshotState::Error) => {
                    let message = seen
                        .and_then(|f| f.state_message.clone())
                        .unwrap_or_else(|| "no message".to_string());
                    plan.failed
                        .push((region.clone(), source.snapshot_id.clone(), message));
                }
                _ => {
                    *plan.pending.entry(region.clone()).or_default() += 1;
                }
            }
            let final_state =
                state.filter(|s| matches!(s, SnapshotState::Completed | SnapshotState::Error));
            let mut updated = record.clone();
            if let (Some(state), None) = (final_state, &record.seen_final) {
                updated.seen_final = Some(SeenFinal {
                    message: seen.and_then(|f| f.state_message.clone()),
                    state,
                });
                if !plan
                    .adopted
                    .iter()
                    .any(|a| a.snapshot_id == record.snapshot_id)
                {
                    plan.newly_final.push(updated.clone());
                } else if let Some(a) = plan
                    .adopted
                    .iter_mut()
                    .find(|a| a.snapshot_id == record.snapshot_id)
                {
                    a.seen_final = updated.seen_final.clone();
                }
            }
            let failed = updated
                .seen_final
                .as_ref()
                .is_some_and(|s| s.state == SnapshotState::Error);
            if updated.locked_until.is_none() && !failed {
                plan.to_lock.push(updated);
            }
        }
    }
    plan
}

/// The vault step's one summary.
#[derive(Debug, Clone, Serialize)]
pub struct VaultSummary {
    pub run_id: String,
    pub account: String,
    pub completed: BTreeMap<String, usize>,
    pub pending: BTreeMap<String, usize>,
    pub failed: Vec<(String, String, String)>,
    /// Regions the vault's role could not read or copy into, with AWS's code.
    pub regions_failed: BTreeMap<String, String>,
    pub not_locked: usize,
    /// Transit copies the step could not delete (each named in the log).
    pub transits_left: usize,
    pub timed_out: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::catalog::{RecordedSnapshot, Verdict};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    fn set(instance: &str, verdict: Verdict, snapshots: &[&str]) -> SetRecord {
        SetRecord {
            run_id: "r1".into(),
            instance_id: instance.into(),
            name: instance.into(),
            region: "us-east-1".into(),
            started_at: at(0),
            expected: Vec::new(),
            snapshots: snapshots
                .iter()
                .map(|id| RecordedSnapshot {
                    snapshot_id: id.to_string(),
                    volume_id: "vol-1".into(),
                    device: "xvdf".into(),
                    start_time: at(0),
                })
                .collect(),
            verdict,
            reason: None,
            cause: None,
            verified_at: at(1),
            verified_by: "test".into(),
            fallback: false,
        }
    }

    fn snapshot(id: &str, state: &str, source: &str) -> SnapshotFacts {
        SnapshotFacts {
            snapshot_id: id.into(),
            state: state.into(),
            tags: [(TAG_SOURCE_SNAPSHOT.to_string(), source.to_string())].into(),
            start_time: Some(at(10)),
            ..Default::default()
        }
    }

    fn record(region: &str, source: &str, copy: &str) -> VaultRecord {
        VaultRecord {
            run_id: "r1".into(),
            instance_id: "i-1".into(),
            account: "222222222222".into(),
            region: region.into(),
            source_snapshot_id: source.into(),
            snapshot_id: copy.into(),
            started_at: at(5),
            seen_final: None,
            locked_until: Some(at(100)),
        }
    }

    const WHO: (&str, &str, &str) = ("r1", "us-east-1", "222222222222");

    #[test]
    fn only_backups_go_to_the_vault() {
        let sets = [
            set("i-1", Verdict::Consistent, &["snap-a", "snap-b"]),
            set("i-2", Verdict::CrashConsistent, &["snap-c"]),
            set("i-3", Verdict::FileSystemConsistent, &["snap-d"]),
        ];
        let ids: Vec<String> = vault_sources(&sets)
            .into_iter()
            .map(|s| s.snapshot_id)
            .collect();
        assert_eq!(ids, ["snap-a", "snap-b", "snap-d"]);
    }

    #[test]
    fn copies_what_no_region_holds_and_waits_for_what_is_on_its_way() {
        let sources = vault_sources(&[set("i-1", Verdict::Consistent, &["snap-a", "snap-b"])]);
        let recorded = [record("eu-west-1", "snap-a", "snap-va")];
        let found = BTreeMap::from([
            (
                "eu-west-1".to_string(),
                vec![(snapshot("snap-va", "pending", "snap-a"), String::new())],
            ),
            ("us-east-1".to_string(), vec![]),
        ]);
        let plan = plan_vault(WHO, &sources, &recorded, &found, at(20));
        let starts: Vec<(&str, &str)> = plan
            .to_copy
            .iter()
            .map(|(r, s)| (r.as_str(), s.snapshot_id.as_str()))
            .collect();
        assert_eq!(
            starts,
            [
                ("eu-west-1", "snap-b"),
                ("us-east-1", "snap-a"),
                ("us-east-1", "snap-b")
            ]
        );
        assert_eq!(plan.pending.get("eu-west-1"), Some(&1));
        assert!(!plan.is_final());
    }

    #[test]
    fn a_recorded_copy_not_listed_yet_is_never_copied_again() {
        let sources = vault_sources(&[set("i-1", Verdict::Consistent, &["snap-a"])]);
        let recorded = [record("eu-west-1", "snap-a", "snap-va")];
        let found = BTreeMap::from([("eu-west-1".to_string(), vec![])]);
        let plan = plan_vault(WHO, &sources, &recorded, &found, at(20));
        assert!(plan.to_copy.is_empty());
        assert_eq!(plan.pending.get("eu-west-1"), Some(&1));
    }

    #[test]
    fn a_lost_answer_is_recorded_only_with_this_functions_description() {
        let sources = vault_sources(&[set("i-1", Verdict::Consistent, &["snap-a", "snap-b"])]);
        let ours = vault_description("snap-a", "us-east-1", "r1");
        let found = BTreeMap::from([(
            "eu-west-1".to_string(),
            vec![
                (snapshot("snap-va", "completed", "snap-a"), ours),
                // Tagged as a copy of snap-b by someone else: not a copy of it.
                (
                    snapshot("snap-x", "completed", "snap-b"),
                    "made by hand".to_string(),
                ),
            ],
        )]);
        let plan = plan_vault(WHO, &sources, &[], &found, at(20));
        assert_eq!(plan.adopted.len(), 1);
        assert_eq!(plan.adopted[0].snapshot_id, "snap-va");
        assert!(plan.adopted[0].is_completed());
        assert_eq!(plan.to_lock.len(), 1, "an adopted copy is locked too");
        assert_eq!(plan.to_copy.len(), 1);
        assert_eq!(plan.to_copy[0].1.snapshot_id, "snap-b");
    }

    #[test]
    fn final_states_are_recorded_once_and_failed_copies_are_not_locked() {
        let sources = vault_sources(&[set("i-1", Verdict::Consistent, &["snap-a", "snap-b"])]);
        let mut unlocked = record("eu-west-1", "snap-b", "snap-vb");
        unlocked.locked_until = None;
        let recorded = [record("eu-west-1", "snap-a", "snap-va"), unlocked];
        let mut failed = snapshot("snap-vb", "error", "snap-b");
        failed.state_message = Some("Given key ID is not accessible".into());
        let found = BTreeMap::from([(
            "eu-west-1".to_string(),
            vec![
                (snapshot("snap-va", "completed", "snap-a"), String::new()),
                (failed, String::new()),
            ],
        )]);
        let plan = plan_vault(WHO, &sources, &recorded, &found, at(20));
        assert!(plan.is_final());
        assert_eq!(plan.completed.get("eu-west-1"), Some(&1));
        assert_eq!(plan.failed.len(), 1);
        assert_eq!(plan.newly_final.len(), 2);
        assert!(plan.to_lock.is_empty());
        // Seen final and recorded so: nothing to record the next time.
        let again = plan_vault(WHO, &sources, &plan.newly_final, &found, at(30));
        assert!(again.newly_final.is_empty());
    }
}
