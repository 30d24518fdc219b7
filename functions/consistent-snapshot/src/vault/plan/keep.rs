//! What a vault deployment (`MODE=vault`) records, keeps and shares of the fleet's copies in
//! its account: pure decisions over its own catalog (`HeldRecord`) and what EC2 reports in the
//! vault (`Held`).
//!
//! The fleet account (its function, or whoever holds its role) writes the copies' tags, so:
//!
//! * **Intake** (`intake`): a completed copy is recorded the first time the vault sees it, with
//!   EC2's start time and the vault's own clock. A server's run takes its copies in the order
//!   EC2 started them, and only up to the first one still pending: the copies that first make it
//!   whole (as many as their set size says, one per device) are its set, once and for all. A
//!   copy claiming that run afterwards, or disagreeing with it (another set size, a device
//!   twice), or started before its scheduled run's time, is an *intruder*: recorded, counted, never shared as part of the set. A recorded
//!   copy EC2 no longer lists, which the vault did not delete, is marked *vanished*, once.
//! * **Retention** (`plan_keeping`): a copy is deleted only when the catalog records it, EC2
//!   still reports the start time recorded and says it is older than `retain_days`, it is not
//!   locked, and it is not one of its server's `keep_newest` newest whole sets. Tags can only
//!   make more kept, never fewer; a copy the catalog does not hold is never deleted.
//! * **Recovery** (`whole_runs`, `recovery_set`): the server's whole sets as recorded, and a
//!   chosen set's own copies, each still in EC2 as recorded.
//! * **Report** (`vault_report`): each server's newest whole set against the RPO.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::model::catalog::HeldRecord;
use crate::model::ids::scheduled_run_time;
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
    pub source_snapshot_id: Option<String>,
    /// Until when EC2 reports it locked (none: not locked, or the lock is over).
    pub locked_until: Option<DateTime<Utc>>,
}

/// What one intake changes in the catalog, and the catalog as it stands after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intake {
    /// Every record, as it stands after this intake.
    pub records: Vec<HeldRecord>,
    /// The records to write: copies seen for the first time, and recorded ones now vanished.
    pub changed: Vec<HeldRecord>,
    /// Of `changed`, how many are new, new intruders, and newly vanished.
    pub recorded: usize,
    pub intruders: usize,
    pub vanished: usize,
    /// Completed copies that cannot be recorded (`snapshot id -> why`): kept, never deleted.
    pub unrecordable: BTreeMap<String, String>,
}

/// Whether a run's members make its set whole: as many as their set size.
fn whole(members: &[&HeldRecord]) -> bool {
    members.first().is_some_and(|m| {
        members.len() == m.set_size && members.iter().all(|r| r.set_size == m.set_size)
    })
}

/// How long before its scheduled run's time a copy may seem to start (clocks): none really
/// does, since a copy is made of the run's own snapshots.
const BEFORE_ITS_RUN: Duration = Duration::minutes(5);

/// Why `copy` cannot join the run whose members (so far) are `members`; `None`: it joins.
fn intruder_why(members: &[&HeldRecord], copy: &HeldRecord) -> Option<String> {
    if let Some(scheduled) = scheduled_run_time(&copy.run_id) {
        if copy.started < scheduled - BEFORE_ITS_RUN {
            return Some(format!(
                "started {} in the vault, before its run {} was scheduled",
                copy.started.to_rfc3339(),
                copy.run_id
            ));
        }
    }
    let first = members.first()?;
    if whole(members) {
        let since = members
            .iter()
            .map(|m| m.first_seen)
            .max()
            .unwrap_or(first.first_seen);
        return Some(format!(
            "seen after run {} of {} was whole in the vault (since {})",
            copy.run_id,
            copy.instance_id,
            since.to_rfc3339()
        ));
    }
    if copy.set_size != first.set_size {
        return Some(format!(
            "claims a set of {}; the run's first copy in the vault, {}, one of {}",
            copy.set_size, first.snapshot_id, first.set_size
        ));
    }
    if copy.device.is_some() && members.iter().any(|m| m.device == copy.device) {
        return Some(format!(
            "a second copy of device {} in run {} of {}",
            copy.device.as_deref().unwrap_or_default(),
            copy.run_id,
            copy.instance_id
        ));
    }
    None
}

/// What the vault's catalog records after seeing `held` now: see the module documentation.
pub fn intake(records: Vec<HeldRecord>, held: &[Held], now: DateTime<Utc>) -> Intake {
    let seen: BTreeSet<&str> = held.iter().map(|h| h.snapshot_id.as_str()).collect();
    let mut out = Intake::default();
    let mut records = records;
    for record in &mut records {
        if record.vanished.is_none() && !seen.contains(record.snapshot_id.as_str()) {
            record.vanished = Some(now);
            out.vanished += 1;
            out.changed.push(record.clone());
        }
    }
    let known: BTreeSet<String> = records.iter().map(|r| r.snapshot_id.clone()).collect();
    // Each server's run takes its copies in the order EC2 started them, up to the first
    // pending one (a copy started later must not make the set whole before it).
    let mut runs: BTreeMap<(&str, &str), Vec<&Held>> = BTreeMap::new();
    for h in held {
        match (
            h.instance_id.as_deref(),
            h.run_id.as_deref(),
            h.set_size,
            h.started,
        ) {
            (Some(instance), Some(run), Some(size), Some(_)) if size > 0 => {
                runs.entry((instance, run)).or_default().push(h);
            }
            _ if h.state == SnapshotState::Completed && !known.contains(&h.snapshot_id) => {
                out.unrecordable.insert(
                    h.snapshot_id.clone(),
                    "no server, run, set size or start time to record it by: kept, never deleted"
                        .to_string(),
                );
            }
            _ => {}
        }
    }
    for ((instance, run), mut copies) in runs {
        copies.sort_by(|a, b| {
            a.started
                .cmp(&b.started)
                .then(a.snapshot_id.cmp(&b.snapshot_id))
        });
        for h in copies {
            match h.state {
                SnapshotState::Pending => break,
                SnapshotState::Completed => {}
                _ => continue,
            }
            if known.contains(&h.snapshot_id) {
                continue;
            }
            let mut copy = HeldRecord {
                snapshot_id: h.snapshot_id.clone(),
                instance_id: instance.to_string(),
                run_id: run.to_string(),
                set_size: h.set_size.unwrap_or_default(),
                device: h.device.clone(),
                source_snapshot_id: h.source_snapshot_id.clone(),
                started: h.started.unwrap_or(now),
                first_seen: now,
                intruder: None,
                vanished: None,
                shared_with: BTreeMap::new(),
            };
            let members: Vec<&HeldRecord> = records
                .iter()
                .filter(|r| r.instance_id == instance && r.run_id == run && r.intruder.is_none())
                .collect();
            copy.intruder = intruder_why(&members, &copy);
            out.recorded += 1;
            if copy.intruder.is_some() {
                out.intruders += 1;
            }
            out.changed.push(copy.clone());
            records.push(copy);
        }
    }
    out.records = records;
    out
}

/// A server's run whose set is whole in the vault, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WholeRun {
    pub run_id: String,
    /// When EC2 started its newest copy in the vault.
    pub copied_at: DateTime<Utc>,
    /// When the vault deployment had first seen all of it.
    pub first_seen: DateTime<Utc>,
    pub snapshots: usize,
    /// Copies claiming this run that are not part of its set (see `intake`).
    pub intruders: usize,
}

/// Every server's whole sets (their present members), newest first by EC2's start times.
fn whole_sets(records: &[HeldRecord]) -> BTreeMap<&str, Vec<(WholeRun, Vec<&HeldRecord>)>> {
    let mut runs: BTreeMap<(&str, &str), (Vec<&HeldRecord>, usize)> = BTreeMap::new();
    for r in records {
        let entry = runs
            .entry((r.instance_id.as_str(), r.run_id.as_str()))
            .or_default();
        if r.intruder.is_some() {
            entry.1 += 1;
        } else {
            entry.0.push(r);
        }
    }
    let mut out: BTreeMap<&str, Vec<(WholeRun, Vec<&HeldRecord>)>> = BTreeMap::new();
    for ((instance, run), (members, intruders)) in runs {
        if !whole(&members) || members.iter().any(|m| m.vanished.is_some()) {
            continue;
        }
        let copied_at = members.iter().map(|m| m.started).max().unwrap_or_default();
        let first_seen = members
            .iter()
            .map(|m| m.first_seen)
            .max()
            .unwrap_or_default();
        let listed = WholeRun {
            run_id: run.to_string(),
            copied_at,
            first_seen,
            snapshots: members.len(),
            intruders,
        };
        out.entry(instance).or_default().push((listed, members));
    }
    for sets in out.values_mut() {
        sets.sort_by(|a, b| {
            b.0.copied_at
                .cmp(&a.0.copied_at)
                .then(b.0.run_id.cmp(&a.0.run_id))
        });
    }
    out
}

/// The server's whole sets, newest first: what an operator chooses from. Nothing is chosen for
/// them: after a compromise of the fleet account a newer set may be forged whole; one copied
/// before the compromise (EC2's time) is not.
pub fn whole_runs(records: &[HeldRecord], instance_id: &str) -> Vec<WholeRun> {
    whole_sets(records)
        .remove(instance_id)
        .unwrap_or_default()
        .into_iter()
        .map(|(run, _)| run)
        .collect()
}

/// The copies a recovery of the server's run `run_id` shares, by device: its set as recorded,
/// each copy still in EC2 as recorded and completed; else why not.
pub fn recovery_set<'a>(
    records: &'a [HeldRecord],
    held: &[Held],
    instance_id: &str,
    run_id: &str,
) -> Result<Vec<&'a HeldRecord>, String> {
    let sets = whole_sets(records);
    let Some((_, members)) = sets
        .get(instance_id)
        .and_then(|sets| sets.iter().find(|(run, _)| run.run_id == run_id))
    else {
        return Err(format!(
            "the vault's catalog holds no whole set of run {run_id} of {instance_id}"
        ));
    };
    let now: BTreeMap<&str, &Held> = held.iter().map(|h| (h.snapshot_id.as_str(), h)).collect();
    for m in members {
        match now.get(m.snapshot_id.as_str()) {
            None => return Err(format!("copy {} is no longer in the vault", m.snapshot_id)),
            Some(h) if h.started != Some(m.started) => {
                return Err(format!(
                    "copy {}: EC2's start time is not the one recorded",
                    m.snapshot_id
                ))
            }
            Some(h) if h.state != SnapshotState::Completed => {
                return Err(format!("copy {} is {}", m.snapshot_id, h.state.as_str()))
            }
            Some(_) => {}
        }
    }
    let mut set = members.clone();
    set.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(set)
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

/// Each copy EC2 lists in the vault, its decision, in the order given.
pub fn plan_keeping(
    records: &[HeldRecord],
    held: &[Held],
    now: DateTime<Utc>,
    retain_days: u32,
    keep_newest: u32,
) -> Vec<KeepDecision> {
    let cutoff = now - Duration::days(i64::from(retain_days));
    let by_id: BTreeMap<&str, &HeldRecord> = records
        .iter()
        .map(|r| (r.snapshot_id.as_str(), r))
        .collect();
    let newest: BTreeSet<&str> = whole_sets(records)
        .into_values()
        .flat_map(|sets| sets.into_iter().take(keep_newest as usize))
        .flat_map(|(_, members)| members.into_iter().map(|m| m.snapshot_id.as_str()))
        .collect();
    held.iter()
        .map(|h| {
            let record = by_id.get(h.snapshot_id.as_str());
            let (delete, reason) = match (record, h.started) {
                (None, _) => (
                    false,
                    "not in the vault's catalog (pending, or not a copy it can record): never deleted"
                        .to_string(),
                ),
                (Some(r), started) if started != Some(r.started) => (
                    false,
                    "EC2's start time is not the one recorded: kept".to_string(),
                ),
                (Some(r), _) if newest.contains(r.snapshot_id.as_str()) => (
                    false,
                    format!("of one of the server's {keep_newest} newest whole sets"),
                ),
                (Some(r), _) if r.started >= cutoff => {
                    (false, format!("younger than {retain_days} days"))
                }
                (Some(_), _) if h.locked_until.is_some_and(|u| u > now) => (
                    false,
                    format!(
                        "locked until {}",
                        h.locked_until.unwrap_or(now).to_rfc3339()
                    ),
                ),
                (Some(r), _) => (
                    true,
                    format!(
                        "older than {retain_days} days and not of one of the server's {keep_newest} newest whole sets{}",
                        if r.intruder.is_some() { " (an intruder)" } else { "" }
                    ),
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

/// The recovery shares whose time is over at `now`: `(snapshot id, account)`, to unshare.
pub fn shares_over(records: &[HeldRecord], now: DateTime<Utc>) -> Vec<(String, String)> {
    records
        .iter()
        .filter(|r| r.vanished.is_none())
        .flat_map(|r| {
            r.shared_with
                .iter()
                .filter(move |(_, until)| **until <= now)
                .map(move |(account, _)| (r.snapshot_id.clone(), account.clone()))
        })
        .collect()
}

/// One server as the vault holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerInVault {
    pub instance_id: String,
    /// Its newest whole set (none: no whole set in the vault).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest: Option<WholeRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_hours: Option<i64>,
    pub within_rpo: bool,
    pub whole_sets: usize,
    pub intruders: usize,
    pub vanished: usize,
}

/// The vault's view of the fleet: each server its catalog holds, its newest whole set against
/// `rpo_hours` (a server whose sets stop arriving, or are made not whole, shows here, whatever
/// the fleet's account reports).
pub fn vault_report(
    records: &[HeldRecord],
    now: DateTime<Utc>,
    rpo_hours: u32,
) -> Vec<ServerInVault> {
    let mut sets = whole_sets(records);
    let mut servers: BTreeMap<&str, ServerInVault> = BTreeMap::new();
    for r in records {
        let server = servers.entry(r.instance_id.as_str()).or_insert_with(|| {
            let whole: Vec<WholeRun> = sets
                .remove(r.instance_id.as_str())
                .unwrap_or_default()
                .into_iter()
                .map(|(run, _)| run)
                .collect();
            let newest = whole.first().cloned();
            let age_hours = newest.as_ref().map(|n| (now - n.copied_at).num_hours());
            ServerInVault {
                instance_id: r.instance_id.clone(),
                within_rpo: age_hours.is_some_and(|h| h <= i64::from(rpo_hours)),
                age_hours,
                newest,
                whole_sets: whole.len(),
                intruders: 0,
                vanished: 0,
            }
        });
        server.intruders += usize::from(r.intruder.is_some());
        server.vanished += usize::from(r.vanished.is_some());
    }
    servers.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days_ago: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default() - Duration::days(days_ago)
    }

    /// A completed copy of a one-snapshot set, started `days_ago`.
    fn held(id: &str, instance: &str, run: &str, days_ago: i64) -> Held {
        Held {
            snapshot_id: id.into(),
            instance_id: Some(instance.into()),
            run_id: Some(run.into()),
            started: Some(at(days_ago)),
            state: SnapshotState::Completed,
            set_size: Some(1),
            device: Some("xvdf".into()),
            source_snapshot_id: None,
            locked_until: None,
        }
    }

    fn of_two(mut h: Held, device: &str) -> Held {
        h.set_size = Some(2);
        h.device = Some(device.into());
        h
    }

    /// The catalog after one intake of `held`.
    fn taken(held: &[Held]) -> Vec<HeldRecord> {
        intake(Vec::new(), held, at(0)).records
    }

    fn deleted(decisions: &[KeepDecision]) -> Vec<&str> {
        decisions
            .iter()
            .filter(|d| d.delete)
            .map(|d| d.snapshot_id.as_str())
            .collect()
    }

    #[test]
    fn deletes_only_recorded_old_unlocked_copies_beyond_each_servers_newest() {
        let mut locked = held("v-locked", "i-1", "r0", 60);
        locked.locked_until = Some(at(-1));
        let mut copies = vec![
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
        let records = taken(&copies);
        // Seen in EC2 after the intake: never recorded, never deleted.
        copies.push(held("v-unrecorded", "i-1", "r0", 90));
        let plan = plan_keeping(&records, &copies, at(0), 35, 2);
        assert_eq!(deleted(&plan), ["v-old"]);
        let why: BTreeMap<&str, &str> = plan
            .iter()
            .map(|d| (d.snapshot_id.as_str(), d.reason.as_str()))
            .collect();
        assert!(why["v-locked"].starts_with("locked until"));
        assert!(why["v-untagged"].contains("never deleted"));
        assert!(why["v-unrecorded"].contains("never deleted"));
    }

    #[test]
    fn forged_newer_copies_only_keep_more() {
        // Someone with the fleet's role makes ten copies tagged as i-1's newest runs: the real
        // set is no longer among the newest two, but none is older than 35 days.
        let mut copies: Vec<Held> = (0..10)
            .map(|i| held(&format!("forged-{i}"), "i-1", &format!("rf{i}"), 0))
            .collect();
        copies.push(held("v-real", "i-1", "r1", 10));
        let plan = plan_keeping(&taken(&copies), &copies, at(0), 35, 2);
        assert!(deleted(&plan).is_empty(), "{plan:#?}");
    }

    #[test]
    fn a_set_is_its_first_whole_copies_and_a_later_one_is_an_intruder() {
        let first = [
            of_two(held("v-a", "i-1", "r1", 2), "xvda"),
            of_two(held("v-b", "i-1", "r1", 2), "xvdf"),
        ];
        let once = intake(Vec::new(), &first, at(1));
        assert_eq!((once.recorded, once.intruders), (2, 0));
        // A copy forged into the sealed run, later: recorded as an intruder; the set is the
        // same two, and shared as such.
        let mut now = first.to_vec();
        now.push(of_two(held("v-forged", "i-1", "r1", 0), "xvdg"));
        let twice = intake(once.records.clone(), &now, at(0));
        assert_eq!((twice.recorded, twice.intruders), (1, 1));
        assert!(twice.changed[0]
            .intruder
            .as_deref()
            .is_some_and(|w| w.contains("was whole")));
        let listed = whole_runs(&twice.records, "i-1");
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].snapshots, listed[0].intruders), (2, 1));
        let set = recovery_set(&twice.records, &now, "i-1", "r1").expect("whole");
        let ids: Vec<&str> = set.iter().map(|r| r.snapshot_id.as_str()).collect();
        assert_eq!(ids, ["v-a", "v-b"]);
        // Seen again, nothing changes.
        let again = intake(twice.records.clone(), &now, at(0));
        assert!(again.changed.is_empty(), "{again:#?}");
    }

    #[test]
    fn a_pending_copy_holds_back_the_copies_started_after_it() {
        let mut pending = of_two(held("v-b", "i-1", "r1", 2), "xvdf");
        pending.state = SnapshotState::Pending;
        let copies = [
            of_two(held("v-a", "i-1", "r1", 3), "xvda"),
            pending.clone(),
            // Started after the pending one: not taken before it, or it would make the set.
            of_two(held("v-late", "i-1", "r1", 1), "xvdg"),
        ];
        let once = intake(Vec::new(), &copies, at(1));
        let ids: Vec<&str> = once
            .records
            .iter()
            .map(|r| r.snapshot_id.as_str())
            .collect();
        assert_eq!(ids, ["v-a"]);
        assert!(whole_runs(&once.records, "i-1").is_empty());
        pending.state = SnapshotState::Completed;
        let done = [copies[0].clone(), pending, copies[2].clone()];
        let twice = intake(once.records, &done, at(0));
        let set = recovery_set(&twice.records, &done, "i-1", "r1").expect("whole");
        let ids: Vec<&str> = set.iter().map(|r| r.snapshot_id.as_str()).collect();
        assert_eq!(ids, ["v-a", "v-b"]);
        assert_eq!(twice.intruders, 1);
    }

    #[test]
    fn a_copy_older_than_its_scheduled_run_is_an_intruder() {
        // Made ahead for a scheduled run that has not happened yet (its id is predictable):
        // the real copies, started after the run, then make the set.
        let run = "20270115T020000Z-00a3b4a6";
        let scheduled = scheduled_run_time(run).expect("a scheduled run's time");
        let copy = |id: &str, started: DateTime<Utc>, device: &str| Held {
            started: Some(started),
            ..of_two(held(id, "i-1", run, 0), device)
        };
        let copies = [
            copy("v-early-a", scheduled - Duration::days(1), "xvda"),
            copy("v-early-b", scheduled - Duration::days(1), "xvdf"),
            copy("v-a", scheduled + Duration::minutes(20), "xvda"),
            copy("v-b", scheduled + Duration::minutes(21), "xvdf"),
        ];
        let taken = intake(Vec::new(), &copies, scheduled + Duration::hours(1));
        assert_eq!(taken.intruders, 2, "{taken:#?}");
        let set = recovery_set(&taken.records, &copies, "i-1", run).expect("whole");
        let ids: Vec<&str> = set.iter().map(|r| r.snapshot_id.as_str()).collect();
        assert_eq!(ids, ["v-a", "v-b"]);
    }

    #[test]
    fn recovery_shares_end_when_their_time_is_over() {
        let copies = [held("v-a", "i-1", "r1", 2), held("v-b", "i-2", "r1", 2)];
        let mut records = taken(&copies);
        records[0].shared_with.insert("333333333333".into(), at(1));
        records[1].shared_with.insert("333333333333".into(), at(-1));
        assert_eq!(
            shares_over(&records, at(0)),
            [("v-a".to_string(), "333333333333".to_string())]
        );
    }

    #[test]
    fn copies_that_disagree_with_their_run_are_intruders() {
        let copies = [
            of_two(held("v-a", "i-1", "r1", 3), "xvda"),
            // The same device twice, then a different set size.
            of_two(held("v-a2", "i-1", "r1", 2), "xvda"),
            held("v-one", "i-1", "r1", 1),
        ];
        let once = intake(Vec::new(), &copies, at(0));
        assert_eq!(once.intruders, 2, "{once:#?}");
        assert!(whole_runs(&once.records, "i-1").is_empty());
        assert!(recovery_set(&once.records, &copies, "i-1", "r1").is_err());
    }

    #[test]
    fn a_copy_gone_without_the_vault_deleting_it_is_vanished_once() {
        let copies = [
            of_two(held("v-a", "i-1", "r1", 2), "xvda"),
            of_two(held("v-b", "i-1", "r1", 2), "xvdf"),
        ];
        let once = intake(Vec::new(), &copies, at(1));
        let twice = intake(once.records, &copies[..1], at(0));
        assert_eq!(twice.vanished, 1);
        assert_eq!(twice.changed[0].snapshot_id, "v-b");
        assert!(recovery_set(&twice.records, &copies[..1], "i-1", "r1").is_err());
        let report = vault_report(&twice.records, at(0), 26);
        assert_eq!(report[0].vanished, 1);
        assert!(!report[0].within_rpo && report[0].newest.is_none());
        let thrice = intake(twice.records, &copies[..1], at(0));
        assert_eq!(thrice.vanished, 0, "reported once");
    }

    #[test]
    fn a_recovery_shares_a_set_only_as_recorded_and_still_in_ec2() {
        let copies = [
            of_two(held("v-b1", "i-1", "r1", 2), "xvdf"),
            of_two(held("v-a1", "i-1", "r1", 2), "xvda"),
            of_two(held("v-a2", "i-1", "r2", 1), "xvda"),
            of_two(held("v-b2", "i-1", "r2", 1), "xvdf"),
        ];
        let records = taken(&copies);
        let runs = whole_runs(&records, "i-1");
        let listed: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(listed, ["r2", "r1"], "newest first");
        let ids: Vec<String> = recovery_set(&records, &copies, "i-1", "r1")
            .expect("whole")
            .iter()
            .map(|r| r.snapshot_id.clone())
            .collect();
        assert_eq!(ids, ["v-a1", "v-b1"], "by device");
        // A copy whose start time EC2 no longer reports as recorded is not shared.
        let mut changed = copies.to_vec();
        changed[0].started = Some(at(0));
        assert!(recovery_set(&records, &changed, "i-1", "r1")
            .expect_err("not as recorded")
            .contains("start time"));
        assert!(recovery_set(&records, &copies, "i-9", "r1").is_err());
        let report = vault_report(&records, at(0), 26);
        assert_eq!(report[0].age_hours, Some(24));
        assert!(report[0].within_rpo);
        assert_eq!(report[0].whole_sets, 2);
    }
}
