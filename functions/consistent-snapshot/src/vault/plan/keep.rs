//! What a vault deployment (`MODE=vault`) keeps of the fleet's copies in its account, and which
//! set a recovery shares: pure decisions over what EC2 reports in the vault.
//!
//! The fleet account (its function, or whoever holds its role) writes the copies' tags, so a tag
//! never makes a copy deletable: a copy is deleted only when EC2's own start time says it is
//! older than `retain_days`, it is not locked, and it is not among its server's newest
//! `keep_newest` sets. Forged copies can only make more kept, never fewer.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::model::state::SnapshotState;

/// One of the fleet's copies in the vault, as EC2 reports it there (its tags as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub snapshot_id: String,
    pub instance_id: Option<String>,
    pub run_id: Option<String>,
    pub started: Option<DateTime<Utc>>,
    pub state: SnapshotState,
    /// The set's size the copy was tagged with (`TAG_SET_SIZE`).
    pub set_size: Option<usize>,
    /// The source volume's device (`Device`), for the recovery's volumes.
    pub device: Option<String>,
    /// Until when EC2 reports it locked (none: not locked, or the lock is over).
    pub locked_until: Option<DateTime<Utc>>,
}

/// What the vault's retention decides for one copy, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeepDecision {
    pub snapshot_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub delete: bool,
    pub reason: String,
}

/// The newest start of each of the server's runs, newest first.
fn runs_newest_first<'a>(held: &[&'a Held]) -> Vec<&'a str> {
    let mut runs: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    for h in held {
        if let (Some(run), Some(started)) = (h.run_id.as_deref(), h.started) {
            let at = runs.entry(run).or_insert(started);
            *at = (*at).max(started);
        }
    }
    let mut ordered: Vec<(&str, DateTime<Utc>)> = runs.into_iter().collect();
    ordered.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(a.0)));
    ordered.into_iter().map(|(run, _)| run).collect()
}

/// Each copy's decision, in the order given.
pub fn plan_keeping(
    held: &[Held],
    now: DateTime<Utc>,
    retain_days: u32,
    keep_newest: u32,
) -> Vec<KeepDecision> {
    let cutoff = now - Duration::days(i64::from(retain_days));
    let mut by_instance: BTreeMap<&str, Vec<&Held>> = BTreeMap::new();
    for h in held {
        if let Some(instance) = h.instance_id.as_deref() {
            by_instance.entry(instance).or_default().push(h);
        }
    }
    let newest: BTreeSet<(&str, &str)> = by_instance
        .iter()
        .flat_map(|(instance, copies)| {
            runs_newest_first(copies)
                .into_iter()
                .take(keep_newest as usize)
                .map(move |run| (*instance, run))
        })
        .collect();
    held.iter()
        .map(|h| {
            let (delete, reason) = match (h.instance_id.as_deref(), h.run_id.as_deref(), h.started)
            {
                (Some(instance), Some(run), Some(started)) => {
                    if newest.contains(&(instance, run)) {
                        (false, format!("one of the server's {keep_newest} newest sets"))
                    } else if started >= cutoff {
                        (false, format!("younger than {retain_days} days"))
                    } else if let Some(until) = h.locked_until.filter(|u| *u > now) {
                        (false, format!("locked until {}", until.to_rfc3339()))
                    } else {
                        (
                            true,
                            format!(
                                "older than {retain_days} days and not one of the server's {keep_newest} newest sets"
                            ),
                        )
                    }
                }
                _ => (
                    false,
                    "no server, run or start time to keep it by: kept".to_string(),
                ),
            };
            KeepDecision {
                snapshot_id: h.snapshot_id.clone(),
                instance_id: h.instance_id.clone(),
                run_id: h.run_id.clone(),
                delete,
                reason,
            }
        })
        .collect()
}

/// A run of a server whose copies are whole in the vault, as a recovery lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WholeRun {
    pub run_id: String,
    /// When its newest copy was started, as EC2 reports it in the vault.
    pub copied_at: Option<DateTime<Utc>>,
    pub snapshots: usize,
}

/// The server's runs whose copies are whole in the vault, newest first: what an operator
/// chooses from. Nothing is chosen for them: the copies' tags are the fleet's role's, so after
/// a compromise of the fleet account "the newest" may be a forged set; a run copied before the
/// compromise is not.
pub fn whole_runs(held: &[Held], instance_id: &str) -> Vec<WholeRun> {
    let mine: Vec<&Held> = held
        .iter()
        .filter(|h| h.instance_id.as_deref() == Some(instance_id))
        .collect();
    runs_newest_first(&mine)
        .into_iter()
        .filter_map(|run| {
            let copies = recovery_set(held, instance_id, run).ok()?;
            Some(WholeRun {
                run_id: run.to_string(),
                copied_at: copies.iter().filter_map(|h| h.started).max(),
                snapshots: copies.len(),
            })
        })
        .collect()
}

/// The copies a recovery of the server's run `run_id` shares, by device, if they are whole in
/// the vault: every copy completed, as many as each says its set has; else why not.
pub fn recovery_set<'a>(
    held: &'a [Held],
    instance_id: &str,
    run_id: &str,
) -> Result<Vec<&'a Held>, String> {
    let mut copies: Vec<&Held> = held
        .iter()
        .filter(|h| {
            h.instance_id.as_deref() == Some(instance_id) && h.run_id.as_deref() == Some(run_id)
        })
        .collect();
    if copies.is_empty() {
        return Err(format!(
            "the vault holds no copy of run {run_id} of {instance_id}"
        ));
    }
    let sizes: BTreeSet<Option<usize>> = copies.iter().map(|h| h.set_size).collect();
    match sizes.into_iter().collect::<Vec<_>>().as_slice() {
        [Some(n)] if *n == copies.len() => {}
        _ => {
            return Err(format!(
                "run {run_id} of {instance_id} is not whole in the vault ({} copies, their set sizes disagree or differ)",
                copies.len()
            ))
        }
    }
    if let Some(h) = copies.iter().find(|h| h.state != SnapshotState::Completed) {
        return Err(format!(
            "run {run_id} of {instance_id}: copy {} is {}",
            h.snapshot_id,
            h.state.as_str()
        ));
    }
    copies.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days_ago: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default() - Duration::days(days_ago)
    }

    fn held(id: &str, instance: &str, run: &str, days_ago: i64) -> Held {
        Held {
            snapshot_id: id.into(),
            instance_id: Some(instance.into()),
            run_id: Some(run.into()),
            started: Some(at(days_ago)),
            state: SnapshotState::Completed,
            set_size: Some(1),
            device: Some("xvdf".into()),
            locked_until: None,
        }
    }

    fn deleted(decisions: &[KeepDecision]) -> Vec<&str> {
        decisions
            .iter()
            .filter(|d| d.delete)
            .map(|d| d.snapshot_id.as_str())
            .collect()
    }

    #[test]
    fn deletes_only_old_unlocked_copies_beyond_each_servers_newest() {
        let mut locked = held("v-locked", "i-1", "r0", 60);
        locked.locked_until = Some(at(-1));
        let copies = [
            held("v-new", "i-1", "r3", 1),
            held("v-mid", "i-1", "r2", 40),
            held("v-old", "i-1", "r1", 50),
            locked,
            // Another server's only set, however old, is its newest.
            held("v-other", "i-2", "r1", 90),
            Held {
                instance_id: None,
                ..held("v-untagged", "i-1", "r1", 90)
            },
        ];
        let plan = plan_keeping(&copies, at(0), 35, 2);
        assert_eq!(deleted(&plan), ["v-old"]);
        let why: BTreeMap<&str, &str> = plan
            .iter()
            .map(|d| (d.snapshot_id.as_str(), d.reason.as_str()))
            .collect();
        assert!(why["v-locked"].starts_with("locked until"));
        assert!(why["v-untagged"].contains("kept"));
    }

    #[test]
    fn forged_newer_copies_only_keep_more() {
        // Someone with the fleet's role makes ten copies tagged as i-1's newest runs: the real
        // sets are no longer among the newest two, but none is younger than 35 days' cut.
        let mut copies: Vec<Held> = (0..10)
            .map(|i| held(&format!("forged-{i}"), "i-1", &format!("rf{i}"), 0))
            .collect();
        copies.push(held("v-real", "i-1", "r1", 10));
        let plan = plan_keeping(&copies, at(0), 35, 2);
        assert!(deleted(&plan).is_empty(), "{plan:#?}");
    }

    #[test]
    fn a_recovery_lists_the_whole_sets_and_shares_only_the_one_chosen() {
        let mut pending = held("v-b2", "i-1", "r2", 1);
        pending.state = SnapshotState::Pending;
        let two = |mut h: Held, device: &str| {
            h.set_size = Some(2);
            h.device = Some(device.into());
            h
        };
        let copies = [
            two(held("v-a2", "i-1", "r2", 1), "xvda"),
            two(pending, "xvdf"),
            two(held("v-b1", "i-1", "r1", 2), "xvdf"),
            two(held("v-a1", "i-1", "r1", 2), "xvda"),
            // A run with one copy of two: not whole.
            two(held("v-a0", "i-1", "r0", 3), "xvda"),
        ];
        let listed = whole_runs(&copies, "i-1");
        assert_eq!(
            listed,
            [WholeRun {
                run_id: "r1".into(),
                copied_at: Some(at(2)),
                snapshots: 2
            }]
        );
        let set = recovery_set(&copies, "i-1", "r1").expect("whole");
        let ids: Vec<&str> = set.iter().map(|h| h.snapshot_id.as_str()).collect();
        assert_eq!(ids, ["v-a1", "v-b1"]);
        assert!(recovery_set(&copies, "i-1", "r2")
            .expect_err("pending")
            .contains("pending"));
        assert!(recovery_set(&copies, "i-1", "r0").is_err());
        assert!(recovery_set(&copies, "i-9", "r1").is_err());
        let mut forged = copies.to_vec();
        forged.push(two(held("v-forged", "i-1", "r1", 0), "xvdg"));
        assert!(recovery_set(&forged, "i-1", "r1")
            .expect_err("an extra copy")
            .contains("not whole"));
    }
}
